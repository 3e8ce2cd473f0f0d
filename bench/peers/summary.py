#!/usr/bin/env python3
# bench/peers/summary.py - the one table of bench/RESULTS.md: for every
# method (kvx plans and kvpress presses) and share kept, the perplexity
# protocol (ratio of mean perplexities to the full cache's, mean KL) and
# the mean task score with the question after and inside the context,
# each with its 95% bootstrap interval over the items and the item count.
# Input: the CSV files of kvx-eval and kvpress_eval.py (merge.py's).
# SPDX-License-Identifier: MIT
#
# usage: summary.py --ppl F... --after F... --inside F... [--boot N]
import argparse
import random
import sys

sys.path.insert(0, __import__("os").path.dirname(__file__))
from merge import mean, read  # noqa: E402


def key(r):
    """(method, share) of a row; kvx plans are named METHOD-PCT."""
    if r["method"] == "full":
        return ("full", 1.0)
    b = float(r["budget"])
    m = r["method"]
    if not m.startswith("kvpress-"):
        # the plan's name says its method (kvx-hybrid, ea-kvx, ...)
        name = r["plan"]
        for pre in ("smollm2-135m-", "qwen2.5-coder-0.5b-", "gemma3-270m-"):
            if name.startswith(pre):
                name = name[len(pre):]
        suf = "-in-kvpress" if name.endswith("-in-kvpress") else ""
        name = name[:-len(suf)] if suf else name
        m = "kvx " + name.rsplit("-", 1)[0] + (" in kvpress" if suf else "")
    return (m, b)


def boot(xs, n, rng):
    """Mean and 95% percentile interval of the mean over xs."""
    if not xs:
        return float("nan"), float("nan"), float("nan")
    ms = sorted(mean([xs[rng.randrange(len(xs))] for _ in xs])
                for _ in range(n))
    return mean(xs), ms[int(0.025 * n)], ms[int(0.975 * n) - 1]


def tasks(paths):
    """Item scores by (method, share); an item is (task, length, sample)."""
    out = {}
    if not paths:
        return out
    _, rows = read(paths)
    for r in rows:
        out.setdefault(key(r), {})[(r["task"], r["length"], r["sample"])] = \
            float(r["score"])
    return out


def ppl(paths):
    """(ratio of mean ppl to the full's, mean KL, texts) by (method, share)."""
    out = {}
    if not paths:
        return out
    _, rows = read(paths)
    acc = {}
    for r in rows:
        a = acc.setdefault(key(r), ([], [], []))
        a[0].append(float(r["ppl"]))
        a[1].append(float(r["ppl_full"]))
        a[2].append(float(r["kl"]))
    for k, (p, f, kl) in acc.items():
        out[k] = (mean(p) / mean(f), mean(kl), len(p))
    return out


def main(argv):
    p = argparse.ArgumentParser(description="one row per method and share")
    p.add_argument("--ppl", nargs="*", default=[])
    p.add_argument("--after", nargs="*", default=[])
    p.add_argument("--inside", nargs="*", default=[])
    p.add_argument("--boot", type=int, default=2000)
    a = p.parse_args(argv)
    P, A, I = ppl(a.ppl), tasks(a.after), tasks(a.inside)
    rng = random.Random(1)
    keys = sorted(set(P) | set(A) | set(I), key=lambda k: (-k[1], k[0]))
    print("| method | kept | ppl / full | KL | question after | "
          "question inside |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k in keys:
        cells = []
        if k in P:
            cells += ["%.4f" % P[k][0], "%.4f" % P[k][1]]
        else:
            cells += ["", ""]
        for d in (A, I):
            if k in d:
                xs = list(d[k].values())
                m, lo, hi = boot(xs, a.boot, rng)
                cells.append("%.3f [%.2f, %.2f] (%d)" % (m, lo, hi, len(xs)))
            else:
                cells.append("")
        print("| %s | %d%% | %s |" % (k[0], round(k[1] * 100),
                                      " | ".join(cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
