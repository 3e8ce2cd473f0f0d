#!/usr/bin/env python3
"""Time llama.cpp (through llama-cpp-python) on a prompt: prefill and
greedy decode tokens/s, printed as key: value lines like kvx-run --stats.

usage: llamacpp.py MODEL PROMPT_FILE N_PREDICT THREADS
"""
import sys
import time

import llama_cpp
import numpy as np

model, prompt_file, n_predict, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(model_path=model, n_ctx=8192, n_batch=512, n_threads=threads,
                      n_threads_batch=threads, logits_all=False, verbose=False)
text = open(prompt_file, encoding="utf-8").read()
# BOS where the file asks for one (tokenizer.ggml.add_bos_token: Gemma 3), as
# kvx-run adds it, so that both time the same tokens
ids = llm.tokenize(text.encode(), add_bos=True, special=False)
t0 = time.perf_counter()
llm.eval(ids)
t1 = time.perf_counter()
n = 0
for _ in range(n_predict):
    row = llama_cpp.llama_get_logits(llm.ctx)
    tok = int(np.ctypeslib.as_array(row, shape=(llm.n_vocab(),)).argmax())
    llm.eval([tok])
    n += 1
t2 = time.perf_counter()
print(f"prompt_tokens: {len(ids)}")
print(f"generated_tokens: {n}")
print(f"prefill_tok_s: {len(ids) / (t1 - t0):.1f}")
print(f"decode_tok_s: {n / (t2 - t1):.1f}")
print(f"llama_cpp_version: {llama_cpp.__version__}")
