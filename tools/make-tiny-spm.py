#!/usr/bin/env python3
"""Write a small SentencePiece vocabulary as a tensor-free GGUF, and the
token ids llama.cpp (llama-cpp-python, vocab_only) gives for the texts of
tools/make-goldens.py with it, so that the tests check kvx's SPM tokenizer
without a real model.

Regenerate (from the top of the source tree; needs gguf 0.19 and
llama-cpp-python):

    python3 tools/make-tiny-spm.py tests/data/tiny-spm.gguf \\
        tests/golden/tiny-spm-tokens.txt

The vocabulary: four control tokens, the 256 <0xXX> byte tokens, the
printable ASCII characters and U+2581 (the escaped space), and some
longer pieces with scores chosen so that merges compete (two pairs share
a score, so the leftmost-first rule decides), plus a user-defined token.
"""
import importlib.util
import os
import sys

import gguf

import llama_cpp

PIECES = [
    # (text, score); higher scores merge first
    ("\u2581t", -1.0), ("he", -1.5), ("\u2581the", -0.5), ("in", -2.0),
    ("er", -2.0), ("\u2581a", -2.5), ("on", -3.0), ("re", -3.0),
    ("\u2581th", -4.0), ("ing", -1.2), ("\u2581and", -0.8), ("or", -3.5),
    ("an", -2.2), ("nd", -2.2), ("\u2581\u2581", -5.0),
    ("\u2581\u2581\u2581\u2581", -4.5), ("12", -6.0), ("123", -5.5),
    ("\u00e9", -7.0), ("\u6771\u4eac", -6.5), ("\u6771", -9.0),
    ("ll", -2.8), ("llo", -2.7), ("\u2581he", -3.3), ("\u2581hello", -0.2),
    ("<", -8.0), ("<b", -8.5), ("os", -8.4),
]


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make-tiny-spm.py OUT.gguf OUT-tokens.txt")
    gpath, tpath = sys.argv[1], sys.argv[2]
    toks = ["<pad>", "<eos>", "<bos>", "<unk>"]
    types = [3, 3, 3, 2]
    scores = [-1000.0] * 4
    for b in range(256):
        toks.append("<0x%02X>" % b)
        types.append(6)
        scores.append(0.0)
    for c in ["\u2581"] + [chr(c) for c in range(33, 127)]:
        toks.append(c)
        types.append(1)
        scores.append(-10.0 - len(toks) / 1000.0)
    for text, score in PIECES:
        if text not in toks:
            toks.append(text)
            types.append(1)
            scores.append(score)
    toks.append("<start_of_turn>")
    types.append(3)
    scores.append(-1000.0)
    toks.append("[tool]")
    types.append(4)
    scores.append(-1000.0)

    w = gguf.GGUFWriter(gpath, arch="llama")
    w.add_name("tiny-spm")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        "make_goldens", os.path.join(here, "make-goldens.py"))
    mg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mg)
    mg.TEXTS.append(("pieces", False,
                     "hello the and theing  thing    orange 12312 "
                     "\u6771\u4eac\u6771 caf\u00e9 <bos> [tool]x"))
    llm = llama_cpp.Llama(model_path=gpath, vocab_only=True, verbose=False)
    mg.write_tokens(llm, gpath, tpath)
    with open(tpath) as f:
        lines = f.read().split("\n")
    lines[1] = ("# Regenerate: python3 tools/make-tiny-spm.py "
                "tests/data/tiny-spm.gguf tests/golden/tiny-spm-tokens.txt")
    with open(tpath, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
