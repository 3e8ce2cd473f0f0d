#!/usr/bin/env python3
"""trace.py - sums a kvx-trace file (bench/kvx-trace.c) range by range.

usage: trace.py TRACE.tsv [LABEL ...]

For each profiled range (kvx-bench-e2e: one timed decode step per
configuration, in its order; LABELs name them): the span from the first
record's start to the last one's end, the time the device was busy with
kernels or copies, and the idle rest; the kernels by family (count, sum
of their times, the idle time right before them); the copies by
direction.  Times in microseconds.
SPDX-License-Identifier: MIT
"""
import collections
import sys

FAMILIES = [
    ("attention partial", ("attn_partial",)),
    ("attention combine", ("attn_combine",)),
    ("RMS norm", ("rmsnorm",)),
    ("QK RoPE + K/V store", ("qk_rope",)),
    ("GLU", ("glu_k",)),
    ("embedding", ("embed_k",)),
    ("conversions", ("f2h_k", "bias_k")),
]


def family(name):
    for fam, keys in FAMILIES:
        if any(k in name for k in keys):
            return fam
    if "gemm" in name or "gemv" in name or "cutlass" in name or \
            "xmma" in name or "sm90" in name:
        return "cuBLAS GEMM"
    return "other: " + name[:40]


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: trace.py TRACE.tsv [LABEL ...]")
    labels = sys.argv[2:]
    recs = collections.defaultdict(list)
    with open(sys.argv[1]) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 6:
                continue
            recs[int(p[0])].append((int(p[2]), int(p[3]), p[1], int(p[4]),
                                    p[5]))
    for r in sorted(recs):
        ev = sorted(recs[r])
        label = labels[r - 1] if r - 1 < len(labels) else "range %d" % r
        span = (ev[-1][1] - ev[0][0]) / 1e3
        fam = collections.OrderedDict()
        busy_end = ev[0][0]
        busy = idle = 0.0
        for s, e, kind, nbytes, name in ev:
            key = family(name) if kind == "kernel" else "copy " + name
            gap = max(0, s - busy_end) / 1e3
            idle += gap
            busy += max(0, e - max(s, busy_end)) / 1e3
            busy_end = max(busy_end, e)
            c = fam.setdefault(key, [0, 0.0, 0.0, 0])
            c[0] += 1
            c[1] += (e - s) / 1e3
            c[2] += gap
            c[3] += nbytes
        print("%s: span %.1f us, busy %.1f, idle %.1f (%d records)" %
              (label, span, busy, idle, len(ev)))
        print("  %-24s %6s %10s %10s %10s" % ("family", "count", "sum us",
                                             "idle before", "bytes"))
        for key, (n, t, g, b) in sorted(fam.items(), key=lambda x: -x[1][1]):
            print("  %-24s %6d %10.1f %10.1f %10s" % (key, n, t, g,
                                                     b if b else ""))


if __name__ == "__main__":
    main()
