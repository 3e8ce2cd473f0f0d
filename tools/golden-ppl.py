#!/usr/bin/env python3
# golden-ppl.py - reference continuation perplexity of a text under the full
# KV cache, computed with llama.cpp (llama-cpp-python), for tests/test-eval.sh.
# SPDX-License-Identifier: MIT
#
# The protocol is kvx-eval's: tokenize the text without BOS or special
# tokens, run the first N tokens as context and score the next M tokens by
# teacher forcing: the logits of position i predict token i + 1.
#
# Regenerate:
#   python3 tools/golden-ppl.py models/SmolLM2-135M-Instruct.Q4_1.gguf \
#       /usr/share/common-licenses/GPL-3 512 32 > tests/golden/ppl.txt
import hashlib
import math
import sys

import llama_cpp
import numpy as np


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: golden-ppl.py MODEL TEXT CONTEXT CONTINUATION")
    model, path, n, m = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
        int(sys.argv[4])
    with open(path, "rb") as f:
        text = f.read()
    llm = llama_cpp.Llama(model_path=model, n_ctx=n + m + 16, n_batch=512,
                          logits_all=True, n_threads=2, verbose=False)
    ids = llm.tokenize(text, add_bos=False, special=False)
    if len(ids) < n + m:
        sys.exit("%s: %d tokens, need %d" % (path, len(ids), n + m))
    total = len(ids)
    ids = ids[:n + m]
    llm.eval(ids[:n + m - 1])
    logits = np.asarray(llm.scores[:n + m - 1], dtype=np.float64)
    nll = 0.0
    for i in range(n, n + m):
        row = logits[i - 1]
        mx = row.max()
        lse = mx + math.log(np.exp(row - mx).sum())
        nll += lse - row[ids[i]]
    ppl = math.exp(nll / m)
    name = path.rsplit("/", 1)[-1]
    print("# Continuation perplexity under the full cache, by llama.cpp "
          "(llama-cpp-python %s)." % llama_cpp.__version__)
    print("# Regenerate: python3 tools/golden-ppl.py "
          "models/SmolLM2-135M-Instruct.Q4_1.gguf %s %d %d "
          "> tests/golden/ppl.txt" % (path, n, m))
    print("text %s" % name)
    print("context %d" % n)
    print("continuation %d" % m)
    print("sha256 %s" % hashlib.sha256(text).hexdigest())
    print("tokens %d" % total)
    print("first_ids %s" % ",".join(str(t) for t in ids[:8]))
    print("ppl %.6f" % ppl)


if __name__ == "__main__":
    main()
