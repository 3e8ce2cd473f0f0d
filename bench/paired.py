#!/usr/bin/env python3
"""paired.py - paired differences between plans of kvx-eval task CSVs,
also across runs.

usage: paired.py BASE PLAN [PLAN ...] -- FILE.csv [FILE.csv ...]

Reads the task rows (kvx-eval --csv) of every FILE, checks that the
items agree across files (the full cache's answer to each (task, length,
sample) is the same wherever it appears, so the runs drew the same
items), and prints for each PLAN, task by task, the mean of PLAN - BASE
over the items both have, with a 95% percentile bootstrap interval
(2000 resamples of the items, seeded), and marks a task where the whole
interval lies below zero (PLAN shown worse) or above it (shown better).
Plans are named as in the CSV's plan column.
SPDX-License-Identifier: MIT
"""
import collections
import csv
import random
import sys


def boot(d, rng, n=2000):
    means = []
    for _ in range(n):
        means.append(sum(d[rng.randrange(len(d))] for _ in d) / len(d))
    means.sort()
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def main():
    a = sys.argv[1:]
    if "--" not in a or a.index("--") < 2:
        sys.exit("usage: paired.py BASE PLAN [PLAN ...] -- FILE.csv ...")
    k = a.index("--")
    base, plans, files = a[0], a[1:k], a[k + 1:]
    score = collections.defaultdict(dict)   # plan -> item -> score
    answer = {}
    for f in files:
        with open(f) as fh:
            for r in csv.DictReader(fh):
                if "task" not in r or r.get("sample", "") == "":
                    continue
                item = (r["task"], r["length"], int(r["sample"]))
                if r["plan"] == "full":
                    if item in answer and answer[item] != r["answer"]:
                        sys.exit("paired.py: %s: item %s differs from an "
                                 "earlier file's" % (f, item))
                    answer[item] = r["answer"]
                score[r["plan"]][item] = float(r["score"])
    if base not in score:
        sys.exit("paired.py: no plan %s in the files" % base)
    tasks = sorted({i[0] for i in score[base]},
                   key=lambda t: min(j for j, i in enumerate(score[base])
                                     if i[0] == t))
    rng = random.Random(1)
    for p in plans:
        if p not in score:
            sys.exit("paired.py: no plan %s in the files" % p)
        print("%s - %s, mean [95%% paired bootstrap]" % (p, base))
        worse = better = 0
        for t in tasks + ["mean"]:
            items = [i for i in score[base] if i in score[p] and
                     (t == "mean" or i[0] == t)]
            if not items:
                continue
            d = [score[p][i] - score[base][i] for i in items]
            lo, hi = boot(d, rng)
            mark = ""
            if hi < 0:
                mark = "  shown worse"
                worse += t != "mean"
            elif lo > 0:
                mark = "  shown better"
                better += t != "mean"
            print("  %-16s %4d items %+.3f [%+.3f, %+.3f]%s" %
                  (t, len(items), sum(d) / len(d), lo, hi, mark))
        print("  tasks shown worse: %d, shown better: %d" % (worse, better))


if __name__ == "__main__":
    main()
