#!/usr/bin/env python3
# bench/peers/merge.py - one table and one plot from the CSV files of
# kvx-eval and of kvpress_eval.py: task rows (score per task, against KV
# memory) or perplexity rows (ppl ratio, KL, top-1), every plan and press
# side by side.  The full cache of the first file is the reference.
# SPDX-License-Identifier: MIT
import argparse
import csv
import sys
from collections import OrderedDict

TASK_HEAD = ["plan", "method", "budget", "question", "task", "length",
             "sample", "score", "kv_bytes", "kv_bytes_full", "answer"]
PPL_HEAD = ["plan", "method", "budget", "kv_bytes", "kv_bytes_full", "ppl",
            "ppl_full", "kl", "top1"]
FAMILY = {"vt": "tracing", "cwe": "aggregation", "fwe": "aggregation"}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#17becf", "#7f7f7f", "#bcbd22", "#393b79", "#ad494a"]


def read(paths):
    """Rows of every file, by kind; a plan seen in an earlier file (the
    full cache, most often) is taken from there only."""
    kind, rows, owner = None, [], {}
    for path in paths:
        with open(path) as f:
            lines = [l for l in f if l.strip()]
        head = lines[0].rstrip("\n").split(",")
        k = "tasks" if head == TASK_HEAD else "ppl" if head == PPL_HEAD \
            else None
        if k is None:
            sys.exit("merge.py: %s: not a kvx-eval CSV header" % path)
        if kind not in (None, k):
            sys.exit("merge.py: %s: task and perplexity files mixed" % path)
        kind = k
        text = None
        for r in csv.reader(lines[1:]):
            if r[0].startswith("#"):
                text = r[0][len("# text: "):] if r[0].startswith(
                    "# text: ") else None
                continue
            if k == "ppl" and (text is None or r[0] == "passkey"):
                continue
            if owner.setdefault(r[0], path) != path:
                continue
            d = dict(zip(head, r))
            d["text"] = text
            rows.append(d)
    return kind, rows


def frac(d):
    f = float(d["kv_bytes_full"])
    return float(d["kv_bytes"]) / f if f else 0.0


def mean(x):
    return sum(x) / len(x) if x else float("nan")


def task_table(rows):
    """Mean score per plan and task, and the plan's memory."""
    plans = OrderedDict()
    tasks = list(OrderedDict.fromkeys(r["task"] for r in rows))
    for r in rows:
        p = plans.setdefault(r["plan"], {"method": r["method"],
                                          "budget": r["budget"],
                                          "frac": [], "t": {}})
        p["frac"].append(frac(r))
        p["t"].setdefault(r["task"], []).append(float(r["score"]))
    print("| plan | method | kept | kv_frac | " + " | ".join(tasks) +
          " | mean |")
    print("|" + " --- |" * (len(tasks) + 5))
    for name, p in plans.items():
        s = [mean(p["t"].get(t, [])) for t in tasks]
        print("| %s | %s | %s | %.3f | %s | %.3f |" % (
            name, p["method"], p["budget"], mean(p["frac"]),
            " | ".join("%.3f" % v for v in s), mean(s)))
    return plans, tasks


def ppl_table(rows):
    """Ratio of mean perplexities to the full cache's, KL, top-1."""
    plans = OrderedDict()
    for r in rows:
        p = plans.setdefault(r["plan"], {"method": r["method"],
                                          "budget": r["budget"],
                                          "frac": [], "ppl": [], "full": [],
                                          "kl": [], "top1": []})
        p["frac"].append(frac(r))
        p["ppl"].append(float(r["ppl"]))
        p["full"].append(float(r["ppl_full"]))
        p["kl"].append(float(r["kl"]))
        p["top1"].append(float(r["top1"]))
    print("| plan | method | kept | kv_frac | ppl/full | KL | top-1 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, p in plans.items():
        p["ratio"] = mean(p["ppl"]) / mean(p["full"])
        print("| %s | %s | %s | %.3f | %.4f | %.5f | %.4f |" % (
            name, p["method"], p["budget"], mean(p["frac"]), p["ratio"],
            mean(p["kl"]), mean(p["top1"])))
    return plans


def svg(path, panels, methods):
    """Panels of (title, {method: [(x, y, label)]}), y in their own
    range, x the KV memory share."""
    W, H, L, R, T, B = 420, 320, 56, 14, 34, 46
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d">'
           % (W * len(panels), H + 24 + 16 * ((len(methods) + 3) // 4)),
           '<rect width="100%" height="100%" fill="#fff"/>',
           '<g font-family="sans-serif" font-size="11">']
    for i, (title, series) in enumerate(panels):
        ox, w, h = i * W, W - L - R, H - T - B
        ys = [y for pts in series.values() for _, y, _ in pts]
        y0, y1 = min(ys + [0.0]), max(ys + [1.0])
        if y1 - y0 < 1e-9:
            y1 = y0 + 1.0

        def px(x):
            return ox + L + x * w

        def py(y):
            return T + h - (y - y0) / (y1 - y0) * h
        out.append('<text x="%d" y="20" font-size="13" text-anchor="middle">'
                   '%s</text>' % (ox + L + w // 2, title))
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" '
                   'stroke="#444"/>' % (ox + L, T, w, h))
        for k in range(5):
            out.append('<text x="%.1f" y="%d" text-anchor="middle">%.2f'
                       '</text>' % (px(k / 4), T + h + 14, k / 4))
            v = y0 + (y1 - y0) * k / 4
            out.append('<text x="%d" y="%.1f" text-anchor="end">%.3g</text>'
                       % (ox + L - 4, py(v) + 4, v))
        out.append('<text x="%d" y="%d" text-anchor="middle">KV memory / '
                   'full cache</text>' % (ox + L + w // 2, H - 10))
        for m, pts in series.items():
            c = PALETTE[methods.index(m) % len(PALETTE)]
            pts = sorted(pts)
            out.append('<polyline fill="none" stroke="%s" stroke-width="1.5" '
                       'points="%s"/>' % (c, " ".join(
                           "%.1f,%.1f" % (px(x), py(y)) for x, y, _ in pts)))
            for x, y, lab in pts:
                out.append('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s">'
                           '<title>%s</title></circle>' % (px(x), py(y), c,
                                                           lab))
    for k, m in enumerate(methods):
        x, y = 10 + (k % 4) * 200, H + 12 + 16 * (k // 4)
        out.append('<rect x="%d" y="%d" width="10" height="10" fill="%s"/>'
                   '<text x="%d" y="%d">%s</text>' % (
                       x, y, PALETTE[k % len(PALETTE)], x + 14, y + 9, m))
    out += ["</g>", "</svg>"]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main(argv):
    p = argparse.ArgumentParser(description="merge kvx-eval and kvpress CSVs")
    p.add_argument("csv", nargs="+")
    p.add_argument("--plot", help="write an SVG plot here")
    a = p.parse_args(argv)
    kind, rows = read(a.csv)
    if not rows:
        sys.exit("merge.py: no rows")
    methods = list(OrderedDict.fromkeys(r["method"] for r in rows
                                        if r["method"] != "full"))
    panels = []
    if kind == "tasks":
        plans, tasks = task_table(rows)
        for fam in ("retrieval", "tracing", "aggregation"):
            ts = [t for t in tasks if FAMILY.get(t, "retrieval") == fam]
            if not ts:
                continue
            series = {}
            for name, q in plans.items():
                y = mean([v for t in ts for v in q["t"].get(t, [])])
                for m in methods if q["method"] == "full" else [q["method"]]:
                    series.setdefault(m, []).append(
                        (mean(q["frac"]), y, name))
            panels.append((fam + ": mean score", series))
    else:
        plans = ppl_table(rows)
        series = {}
        for name, q in plans.items():
            for m in methods if q["method"] == "full" else [q["method"]]:
                series.setdefault(m, []).append((mean(q["frac"]), q["ratio"],
                                                 name))
        panels.append(("perplexity / full cache", series))
    if a.plot:
        svg(a.plot, panels, methods)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
