#!/usr/bin/env python3
# golden-dequant.py - regenerate tests/golden/gguf-dequant.txt.
# SPDX-License-Identifier: MIT
#
# The values come from the gguf Python package (gguf.quants.dequantize), an
# implementation independent of runtime/quant.c.  Two kinds of records:
#   block TYPE NBYTES HEX NELEM v...   random blocks of every type it knows
#   row TENSOR ROW NELEM v...          rows of the default model
#   sum TENSOR NELEM SUM SUMSQ         whole-tensor sums (float64)
# Usage: tools/golden-dequant.py MODEL.gguf > tests/golden/gguf-dequant.txt
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

# Offsets of the half-precision scale fields of each block type; random
# bytes there could be inf or NaN, so they are overwritten with finite ones.
HALVES = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2],
    T.Q8_0: [0], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def fmt(vals):
    return " ".join("%.9g" % v for v in np.asarray(vals, dtype=np.float32))


def blocks(out, rng):
    for t, offs in HALVES.items():
        _, size = gguf.GGML_QUANT_SIZES[t]
        for k in range(4):
            raw = rng.integers(0, 256, size, dtype=np.uint8)
            for j, o in enumerate(offs):
                # Edge cases: a zero scale, a negative scale, a large min.
                v = [0.0, -0.02, 3.5, rng.normal(0, 0.05)][(k + j) % 4]
                raw[o:o + 2] = np.frombuffer(np.float16(v).tobytes(),
                                             dtype=np.uint8)
            vals = gguf.quants.dequantize(raw, t)
            out.write("block %d %d %s %d %s\n" % (int(t), size, raw.tobytes().hex(),
                                                  vals.size, fmt(vals)))
    for t, dt in ((T.F16, np.float16), (T.BF16, None)):
        f = rng.normal(0, 2, 16).astype(np.float32)
        f[0], f[1] = 0.0, -65504.0
        if dt is None:
            raw = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        else:
            raw = f.astype(dt).view(np.uint8)
        vals = gguf.quants.dequantize(raw, t)
        out.write("block %d %d %s %d %s\n" % (int(t), raw.size, raw.tobytes().hex(),
                                              vals.size, fmt(vals)))


def model(out, path):
    r = gguf.GGUFReader(path)
    tens = {t.name: t for t in r.tensors}
    rows = [("token_embd.weight", 0), ("token_embd.weight", 1),
            ("token_embd.weight", 49151), ("blk.0.attn_k.weight", 0),
            ("blk.0.attn_k.weight", 191), ("blk.29.ffn_down.weight", 575),
            ("output_norm.weight", 0)]
    deq = {}
    for name in {n for n, _ in rows} | {"blk.15.ffn_gate.weight"}:
        t = tens[name]
        deq[name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(
            -1, int(t.shape[0]))
    for name, row in rows:
        v = deq[name][row]
        out.write("row %s %d %d %s\n" % (name, row, v.size, fmt(v)))
    for name in sorted(deq):
        v = deq[name].astype(np.float64)
        out.write("sum %s %d %.17g %.17g\n" % (name, v.size, v.sum(),
                                               (v * v).sum()))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: golden-dequant.py MODEL.gguf")
    out = sys.stdout
    out.write("# gguf-dequant.txt: written by tools/golden-dequant.py "
              "(gguf %s)\n" % getattr(gguf, "__version__", "?"))
    blocks(out, np.random.default_rng(20240611))
    model(out, sys.argv[1])


if __name__ == "__main__":
    main()
