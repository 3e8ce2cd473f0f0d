#!/usr/bin/env python3
# sdpa.py - PyTorch scaled_dot_product_attention (enable_gqa=True) on the
# decode shapes of kvx-bench-attn, on equal bytes and on a cache padded to
# the longest head, and the comparison table with the kvx kernel; then
# each batch over 16 rows a head, the fixed cost a layer (the floor).
# SPDX-License-Identifier: MIT
#
# usage: python3 bench/sdpa.py kvx-bench-attn.tsv
import statistics
import sys

import torch
import torch.nn.functional as F

NLAYER, HKV, G, D = 32, 8, 4, 128


def copy_bw():
    """Device-to-device copy, bytes read plus written per second."""
    a = torch.empty(1 << 30, dtype=torch.float16, device="cuda").fill_(1)
    b = torch.empty_like(a)
    ts = []
    for i in range(13):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        b.copy_(a)
        e1.record()
        e1.synchronize()
        if i >= 3:
            ts.append(e0.elapsed_time(e1) * 1e-3)
    del a, b
    return 2 * (1 << 30) * 2 / statistics.median(ts)


def step_time(batch, ctx):
    """Median time of 32 layers of SDPA over a dense [batch, 8, ctx, 128]."""
    per = batch * HKV * ctx * D * 2 * 2
    free = torch.cuda.mem_get_info()[0]
    nl = max(1, min(NLAYER, (free - (6 << 30)) // per))
    gen = torch.Generator(device="cuda").manual_seed(batch * 7 + ctx)
    ks = [torch.randn(batch, HKV, ctx, D, dtype=torch.float16, device="cuda",
                      generator=gen) for _ in range(nl)]
    vs = [torch.randn_like(k) for k in ks]
    qs = [torch.randn(batch, HKV * G, 1, D, dtype=torch.float16,
                      device="cuda", generator=gen) for _ in range(nl)]
    outs = [None] * NLAYER

    def step():
        for i in range(NLAYER):
            j = i % nl
            outs[i] = F.scaled_dot_product_attention(qs[j], ks[j], vs[j],
                                                     enable_gqa=True)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    ts = []
    for i in range(23):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        if i >= 3:
            ts.append(e0.elapsed_time(e1) * 1e-3)
    del ks, vs, qs, outs, g
    torch.cuda.empty_cache()
    return statistics.median(ts), nl


def main():
    rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
    bw = float(rows[0][1])
    tbw = copy_bw()
    print(f"torch {torch.__version__}; copy bandwidth kvx run "
          f"{bw / 1e9:.0f} GB/s, torch {tbw / 1e9:.0f} GB/s")
    hdr = ("batch", "ctx", "lens", "kvx", "best", "sdpa=", "kvx/sdpa=",
           "padded/rag", "sdpa-pad", "speed-up", "1-item")
    print("%-5s %-6s %-6s %8s %8s %7s %9s %10s %8s %8s %7s" % hdr)
    print("# kvx (the library's list: b balanced, c chunked, 1 one item "
          "a segment; and variant: d deep, w wide), "
          "best (the best of the lists and variants), "
          "sdpa=, sdpa-pad, 1-item: KV bytes read per second as a "
          "share of copy bandwidth; sdpa= on the same bytes as kvx, "
          "sdpa-pad on every head padded to the longest; speed-up = "
          "sdpa-pad time / kvx time")
    for r in rows[1:]:
        b, ctx, skew = int(r[1]), int(r[2]), int(r[3])
        nbytes, t, t1 = float(r[4]), float(r[5]), float(r[6])
        lens = [int(x) for x in r[8].split(",")]
        t2 = min(float(r[9]), float(r[10])) if len(r) > 10 else t
        if t1 > 0:
            t2 = min(t2, t1)
        bal = {"1": "b", "2": "1"}.get(r[11], "c") if len(r) > 11 else "c"
        if len(r) > 13:
            bal += "w" if r[13] == "1" else "d"
        teq = max(1, round(sum(lens) / len(lens)))
        tmax = max(lens)
        eq_bytes = b * HKV * teq * D * 4 * NLAYER
        t_eq, _ = step_time(b, teq)
        if tmax != teq:
            t_pad, _ = step_time(b, tmax)
        else:
            t_pad = t_eq
        share = nbytes / t / bw
        share_eq = eq_bytes / t_eq / bw
        share_pad = b * HKV * tmax * D * 4 * NLAYER / t_pad / bw
        print("%-5d %-6d %-6s %6.1f%%%s %7.1f%% %6.1f%% %9.2f %10.2f %7.1f%% "
              "%8.2f %6s"
              % (b, ctx, "skewed" if skew else "equal", 100 * share, bal,
                 100 * nbytes / t2 / bw,
                 100 * share_eq, share / share_eq, tmax * len(lens) /
                 sum(lens), 100 * share_pad, t_pad / t,
                 "%.1f%%" % (100 * nbytes / t1 / bw) if t1 > 0 else "-"),
              flush=True)
    # the fixed cost a layer: the same batches over 16 rows a head
    for b in sorted({int(r[1]) for r in rows[1:]}):
        t16, _ = step_time(b, 16)
        print(f"# floor, batch {b}, 16 rows a head: {t16 / NLAYER * 1e6:.2f} "
              f"us a layer")


if __name__ == "__main__":
    main()
