#!/usr/bin/env python3
# listsim.py - a fluid model of kvx-bench-attn's chunked work lists on the
# skewed shapes: resident blocks share the copy bandwidth, each reads at
# most BLOCK_RATE, an item costs START seconds before its bytes, and a
# free slot takes the next item in list order.  Prints the modelled share
# of bandwidth for the list in segment order and longest item first.
# SPDX-License-Identifier: MIT
#
# usage: python3 bench/listsim.py    (the lengths are kvx-bench-attn's:
# glibc's rand seeded as it seeds it)
import ctypes

HKV, ROW_BYTES = 8, 512          # K + V of a row at d = 128, fp16
BW, BLOCK_RATE, START = 4.25e12, 32e9, 1.0e-6

libc = ctypes.CDLL("libc.so.6")


def lengths(batch, ctx, seed):
    """kvx-bench-attn's skewed lengths: ctx u^2, at least 64."""
    libc.srand(seed)
    out = []
    for _ in range(batch * HKV):
        u = (libc.rand() + 1.0) / (2147483647 + 1.0)
        out.append(max(64, int(ctx * u * u)))
    out[0] = ctx
    return out


def wl_chunk(rows, res):
    """runtime/worklist.c's item size for whole waves."""
    waves = max(1, (rows + res * 256) // (res * 512))
    return max(16, (rows + res * waves - 1) // (res * waves))


def chunked(lens, chunk):
    """wl_chunked's items: round(len / chunk) equal parts a segment."""
    items = []
    for n in lens:
        parts = max(1, (n + chunk // 2) // chunk)
        items += [n * (p + 1) // parts - n * p // parts for p in range(parts)]
    return items


def makespan(items, slots):
    """Seconds until the last item ends, items taken in list order."""
    left = {}
    nxt, t = 0, 0.0
    work = [r * ROW_BYTES + START * BLOCK_RATE for r in items]
    while nxt < len(work) and len(left) < slots:
        left[nxt] = work[nxt]
        nxt += 1
    while left:
        rate = min(BLOCK_RATE, BW / len(left))
        dt = min(left.values()) / rate
        t += dt
        for k in list(left):
            left[k] -= rate * dt
            if left[k] <= 1e-6:
                del left[k]
                if nxt < len(work):
                    left[nxt] = work[nxt]
                    nxt += 1
    return t


def main():
    for batch, ctx in ((4, 4096), (16, 4096), (4, 32768), (64, 4096)):
        lens = lengths(batch, ctx, 1000 + batch + ctx)
        ideal = sum(lens) * ROW_BYTES / BW
        for slots in (264, 396):      # deep and wide resident blocks
            items = chunked(lens, wl_chunk(sum(lens), slots))
            print(f"{batch}x{ctx} skewed, {slots} slots, {len(items)} items:"
                  f" segment order {100 * ideal / makespan(items, slots):.0f}%,"
                  f" longest first "
                  f"{100 * ideal / makespan(sorted(items, reverse=True), slots):.0f}%")


if __name__ == "__main__":
    main()
