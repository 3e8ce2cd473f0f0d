#!/usr/bin/env python3
# bench/peers/kvpress_eval.py - NVIDIA kvpress on kvx-eval's work: the
# perplexity protocol on the same texts, and the task items that
# kvx-eval --dump-tasks wrote, with kvpress's presses and with kvx plans
# applied through kvpress (KvxPlanPress); output in kvx-eval's CSV formats.
# SPDX-License-Identifier: MIT
#
# Runs on the GPU machine (see bench/peers/README.md for the one command);
# --dry-run lists the work without torch.
import argparse
import copy
import math
import os
import re
import sys
import tempfile
import types

PRESSES = ["snapkv", "snapkv-kvx", "ada-snapkv", "criticalada-snapkv",
           "expected-attention", "ada-expected-attention", "kvzip",
           "pyramidkv", "streamingllm", "tova", "knorm"]
# a check of the AdaKV wrapper, not run by default: with a safeguard of 1
# every head keeps its even share, so it must answer as snapkv does
CHECKS = ["ada-snapkv-alpha1"]


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="kvpress presses and kvx plans on kvx-eval's protocol")
    p.add_argument("--model", required=True,
                   help="GGUF file, loaded by transformers in float32")
    p.add_argument("--text", nargs="+", default=[],
                   help="texts for the perplexity protocol")
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--continuation", type=int, default=256)
    p.add_argument("--items", help="JSON lines from kvx-eval --dump-tasks")
    p.add_argument("--question", choices=["after", "inside"],
                   default="after")
    p.add_argument("--presses", default=",".join(PRESSES),
                   help="comma-separated, of: " + ", ".join(PRESSES + CHECKS))
    p.add_argument("--kept", default="0.1,0.2,0.5",
                   help="shares of the cache kept, comma-separated")
    p.add_argument("--plan", nargs="+", default=[],
                   help="kvx plans to apply through kvpress")
    p.add_argument("--ppl-csv", help="write the perplexity rows here")
    p.add_argument("--tasks-csv", help="write the task rows here")
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit", type=int, default=0,
                   help="answer only the first N items (0: all)")
    p.add_argument("--no-full", action="store_true",
                   help="task items only: leave out the full-cache run "
                   "(another process answers it); kv_bytes_full is then "
                   "computed from the model's shape")
    p.add_argument("--dry-run", action="store_true",
                   help="list the work and exit, without torch")
    a = p.parse_args(argv)
    a.presses = [s for s in a.presses.split(",") if s]
    for s in a.presses:
        if s not in PRESSES + CHECKS:
            p.error("unknown press '%s' (%s)" % (s, ", ".join(PRESSES +
                                                            CHECKS)))
    try:
        a.kept = [float(x) for x in a.kept.split(",") if x]
    except ValueError:
        p.error("--kept: numbers in (0, 1] separated by commas")
    if not a.kept or any(not 0 < k <= 1 for k in a.kept):
        p.error("--kept: numbers in (0, 1] separated by commas")
    if not a.text and not a.items:
        p.error("nothing to do: give --text or --items")
    if a.text and not a.ppl_csv:
        p.error("--text needs --ppl-csv")
    if a.items and not a.tasks_csv:
        p.error("--items needs --tasks-csv")
    if a.no_full and a.text:
        p.error("--no-full: the perplexity protocol needs the full cache "
                "as its reference")
    for f in [a.model] + a.text + a.plan + ([a.items] if a.items else []):
        if not os.path.isfile(f):
            p.error("%s: no such file" % f)
    return a


# --- kvx plans ----------------------------------------------------------------

def read_plan(path):
    """The fields of a kvx plan (kvx-plan(5)) that selection needs."""
    text = open(path).read()
    try:
        import yaml
        d = yaml.safe_load(text)
    except ImportError:
        d = None
    if d is None:
        d = {"budget": {}, "selection": {}, "budgets": []}
        sect = None
        for line in text.splitlines():
            m = re.match(r"^(\w+):\s*(.*)$", line)
            if m:
                sect = m.group(1)
                if m.group(2):
                    d[sect] = m.group(2)
                else:
                    d.setdefault(sect, {})
                continue
            m = re.match(r"^- \[?([^]]*)\]?$", line)
            if m and sect == "budgets":
                d["budgets"].append([float(x) for x in m.group(1).split(",")])
                continue
            m = re.match(r"^  (\w+):\s*(.*)$", line)
            if m and isinstance(d.get(sect), dict):
                d[sect][m.group(1)] = m.group(2)
    b, s = d["budget"], d["selection"]
    plan = {
        "name": os.path.splitext(os.path.basename(path))[0],
        "method": str(d.get("method", "kvx")),
        "mode": str(d.get("mode", "static")),
        "fraction": float(b["fraction"]) if "fraction" in b else None,
        "tokens": int(b["tokens"]) if "tokens" in b else None,
        "ref_context": int(b.get("reference_context", 0)),
        "window": int(s.get("window", 32)),
        "pool": str(s.get("pool", "max")),
        "kernel": int(s.get("pool_kernel", 7)),
        "gqa": str(s.get("gqa", "mean")),
        "sinks": int(s.get("sinks", 0)),
        "min_tokens": int(s.get("min_tokens", 0)),
        "alpha": float(s.get("alpha", d.get("alpha", 0.0)) or 0.0),
        "budgets": [[float(x) for x in (r if isinstance(r, list) else [r])]
                    for r in d["budgets"]],
        "scorer": str(s.get("scorer", "snapkv")),
    }
    if plan["scorer"] == "expected-attention":
        e = d.get("expected_attention") or {}
        plan["ea_queries"] = int(e.get("queries", 128))
        plan["ea_future"] = int(e.get("future", 512))
        plan["ea_cov"] = str(e.get("covariance", "full"))
        plan["ea_vnorm"] = str(e.get("value_norm", True)).lower() in (
            "true", "1", "yes")
        if plan["ea_cov"] == "diagonal":
            raise SystemExit("%s: a diagonal covariance does not run "
                             "through kvpress" % path)
    elif plan["scorer"] != "snapkv":
        raise SystemExit("%s: %s plans do not run through kvpress" % (
            path, plan["scorer"]))
    return plan


def plan_tokens(p, layer, head, n):
    """runtime/plan_schema.c's plan_tokens: a head's kept tokens."""
    row = p["budgets"][layer]
    f = row[0] if head < 0 or len(row) == 1 else row[head]
    base = p["ref_context"] if p["tokens"] is not None else n
    r = math.floor(f * base + 0.5)
    fl = min(max(p["window"] + p["sinks"], p["min_tokens"]), n)
    return max(min(r, n), fl)


def ea_scores(p, torch, F, module, hidden_states, keys, values, pw, s):
    """kvx's Expected Attention scores (kvx-plan(5)) in PyTorch, with
    kvpress's pre-RoPE queries and averaged rotation: the statistics of
    the last `queries` queries (at most 128), the expected logits
    mu.k/sqrt(d) + k'Sigma k/2d, a softmax over the keys past the sinks,
    the query group reduced, times the value's norm; the n - pw - s
    scores after the sinks, before the window."""
    from kvpress.presses.expected_attention_press import \
        ExpectedAttentionPress
    from kvpress.utils import get_prerope_query_states
    bsz, hkv, n, d = keys.shape
    nq = min(p["ea_queries"], n, 128)
    q = get_prerope_query_states(module, hidden_states[:, n - nq:])
    q = q.double()
    mu = q.mean(dim=2)
    cov = None
    if p["ea_cov"] == "full":
        c = q - mu[:, :, None]
        cov = torch.einsum("bhsi,bhsj->bhij", c, c) / nq
    ea = ExpectedAttentionPress(n_future_positions=p["ea_future"])
    mu, cov = ea.apply_avg_rope(module, mu, cov, n)
    h = mu.shape[1]
    g = h // hkv
    k = keys.double().repeat_interleave(g, dim=1)
    lg = torch.einsum("bhi,bhni->bhn", mu, k) / math.sqrt(d)
    if cov is not None:
        lg = lg + torch.einsum("bhni,bhij,bhnj->bhn", k, cov, k) / d / 2
    w = F.softmax(lg[..., s:], dim=-1).view(bsz, hkv, g, n - s)
    w = w.max(2).values if p["gqa"] == "max" else w.mean(2)
    if p["ea_vnorm"]:
        w = w * values[:, :, s:].double().norm(dim=-1)
    return w[..., :n - pw - s].float()


def make_plan_press(p, torch, F, SnapKVPress, BasePress):
    """A kvpress press that enforces a kvx plan: kvx's SnapKV or Expected
    Attention scores, the plan's kept counts per (layer, KV head), the
    dropped keys masked as AdaKVPress masks them."""

    class KvxPlanPress(BasePress):
        def __init__(self):
            self.plan = p
            self.kept = 0

        def compress(self, module, hidden_states, keys, values, attentions,
                     kwargs):
            bsz, hkv, n, d = keys.shape
            layer = module.layer_idx
            pw = min(p["window"], n - 1)
            s = min(p["sinks"], n - pw)
            nc = n - pw - s
            if layer == 0:
                self.kept = 0
            if nc <= 0:
                self.kept += hkv * n
                return keys, values
            if p["scorer"] == "expected-attention":
                sc = ea_scores(p, torch, F, module, hidden_states, keys,
                               values, pw, s)
            else:
                w = SnapKVPress.compute_window_attention(
                    module, hidden_states, keys, pw,
                    kwargs["position_embeddings"])
                g = w.shape[1] // hkv
                sc = w.mean(dim=-2).view(bsz, hkv, g, n - pw)
                sc = sc.max(2).values if p["gqa"] == "max" else sc.mean(2)
                sc = sc[..., s:]
            k = p["kernel"]
            if p["pool"] == "max" and k > 1:
                sc = F.max_pool1d(sc, k, stride=1, padding=k // 2)
            elif p["pool"] == "avg" and k > 1:
                sc = F.avg_pool1d(sc, k, stride=1, padding=k // 2,
                                  count_include_pad=False)
            fixed = pw + s
            if p["mode"] == "hybrid":
                tot = max(0, min((plan_tokens(p, layer, -1, n) - fixed) * hkv,
                                 nc * hkv))
                fl = int(math.floor(p["alpha"] * tot / hkv))
                sc = sc.clone()
                if fl > 0:
                    top = torch.topk(sc, fl, dim=-1).indices
                    sc.scatter_(-1, top, float("inf"))
                keep = torch.zeros_like(sc, dtype=torch.bool).view(bsz, -1)
                keep.scatter_(1, torch.topk(sc.reshape(bsz, -1), tot,
                                            dim=-1).indices, True)
                keep = keep.view(bsz, hkv, nc)
            else:
                keep = torch.zeros_like(sc, dtype=torch.bool)
                for h in range(hkv):
                    c = min(max(plan_tokens(p, layer, h, n), fixed), n) - fixed
                    if c > 0:
                        keep[:, h].scatter_(
                            -1, torch.topk(sc[:, h], c, dim=-1).indices, True)
            drop = (~keep).nonzero(as_tuple=True)
            module.masked_key_indices = (drop[0], drop[1], drop[2] + s)
            self.kept += hkv * n - drop[0].numel()
            return keys, values

    return KvxPlanPress()


# --- the runs -----------------------------------------------------------------

def load(a):
    """transformers, kvpress and the model, as ../shared/PEERS.md says."""
    def offline(*args, **kwargs):
        raise RuntimeError("needs a download; not available offline")

    def stub_attr(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return offline

    # kvpress imports these at module level for presses that need a
    # download (DuoAttention, Expected Attention's stats); any name taken
    # from them is a function that says so if called
    for name in ("datasets", "fire"):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__getattr__ = stub_attr
            sys.modules[name] = mod
    import torch
    import torch.nn.functional as F
    import transformers
    import kvpress
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, name = os.path.split(os.path.abspath(a.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32,
        attn_implementation="sdpa").to(a.device).eval()
    # KVzip reloads the tokenizer by the model's name
    tdir = tempfile.mkdtemp(prefix="kvpress-tokenizer-")
    tok.save_pretrained(tdir)
    model.config.name_or_path = tdir
    print("# torch %s, transformers %s, kvpress %s" % (
        torch.__version__, transformers.__version__,
        getattr(kvpress, "__version__", "0.5.5")), file=sys.stderr)
    return torch, F, kvpress, tok, model


def make_press(K, name, r):
    """The kvpress press called name, removing the share r."""
    if name == "snapkv":
        return K.SnapKVPress(compression_ratio=r)
    if name == "snapkv-kvx":
        return K.SnapKVPress(compression_ratio=r, window_size=32,
                             kernel_size=7)
    if name == "ada-snapkv":
        return K.AdaKVPress(K.SnapKVPress(compression_ratio=r))
    if name == "ada-snapkv-alpha1":
        return K.AdaKVPress(K.SnapKVPress(compression_ratio=r),
                            alpha_safeguard=1.0)
    if name == "criticalada-snapkv":
        return K.CriticalAdaKVPress(K.SnapKVPress(compression_ratio=r))
    if name == "expected-attention":
        return K.ExpectedAttentionPress(compression_ratio=r)
    if name == "ada-expected-attention":
        return K.AdaKVPress(K.ExpectedAttentionPress(compression_ratio=r))
    if name == "kvzip":
        return K.KVzipPress(compression_ratio=r)
    if name == "pyramidkv":
        return K.PyramidKVPress(compression_ratio=r)
    if name == "streamingllm":
        return K.StreamingLLMPress(compression_ratio=r)
    if name == "tova":
        return K.TOVAPress(compression_ratio=r)
    return K.KnormPress(compression_ratio=r)


def presses(a, torch, F, kvpress):
    """(name, method, budget, press) for every press, share and plan;
    the full cache first with press None."""
    out = [] if a.no_full else [("full", "full", "1", None)]
    for kept in a.kept:
        r = round(1.0 - kept, 6)
        for s in a.presses:
            out.append(("kvpress-%s-%d" % (s, round(kept * 100)),
                        "kvpress-" + s, "%g" % kept,
                        lambda s=s, r=r: make_press(kvpress, s, r)))
    for path in a.plan:
        p = read_plan(path)
        from kvpress.presses.snapkv_press import SnapKVPress
        from kvpress.presses.base_press import BasePress
        out.append((p["name"] + "-in-kvpress", p["method"] + "-in-kvpress",
                    "%g" % (p["fraction"] or 0),
                    lambda p=p: make_plan_press(p, torch, F, SnapKVPress,
                                                BasePress)))
    return out


def kv_bytes(cache, model, press):
    """K+V bytes the compressed cache holds, float32, masked keys not
    counted (kvx-eval's kv_bytes)."""
    n = 0
    for layer in cache.layers:
        n += layer.keys.shape[1] * layer.keys.shape[2]
    for m in model.modules():
        idx = getattr(m, "masked_key_indices", None)
        if idx is not None:
            n -= idx[0].numel()
    d = model.config.hidden_size // model.config.num_attention_heads
    d = getattr(model.config, "head_dim", None) or d
    return n * d * 2 * 4


def kv_bytes_full(model, n):
    """K+V bytes of n tokens in every layer, float32, as kv_bytes counts
    the full cache."""
    c = model.config
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kvh = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return n * c.num_hidden_layers * kvh * d * 2 * 4


def prefill(torch, model, ids, press):
    """Run ids into a new DynamicCache under press; the cache and the
    last logits."""
    from transformers import DynamicCache
    cache = DynamicCache()
    x = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        if press is None:
            out = model(x, past_key_values=cache, use_cache=True)
        else:
            with press(model):
                out = model(x, past_key_values=cache, use_cache=True)
    return cache, out.logits[0, -1].float()


def extend(torch, model, cache, ids, pos):
    """Append ids at positions pos.. over the cache; their logits.
    transformers sizes one attention mask for every layer from the first
    layer's length, which is wrong after a press that keeps a different
    number of tokens per layer (PyramidKV): then one token at a time,
    which needs no mask."""
    lens = {layer.keys.shape[-2] for layer in cache.layers}
    if len(lens) > 1 and len(ids) > 1:
        return torch.cat([extend(torch, model, cache, [t], pos + i)
                          for i, t in enumerate(ids)])
    x = torch.tensor([ids], device=model.device)
    p = torch.arange(pos, pos + len(ids), device=model.device)[None]
    with torch.no_grad():
        out = model(x, past_key_values=cache, position_ids=p,
                    use_cache=True)
    return out.logits[0].float()


def run_ppl(a, torch, F, tok, model, runs):
    """kvx-eval's perplexity protocol; rows in its CSV format."""
    N, M = a.context, a.continuation
    rows = []
    for path in a.text:
        # kvx reads bytes; a text with a byte that is not UTF-8 (one of
        # perl-doc's pages) is read here with U+FFFD in its place
        text = open(path, encoding="utf-8", errors="replace").read()
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) < N + M:
            raise SystemExit("%s: %d tokens, fewer than %d" % (
                path, len(ids), N + M))
        cont = ids[N:N + M]
        ref = None
        group = []
        for name, method, budget, make in runs:
            press = make() if make else None
            cache, last = prefill(torch, model, ids[:N], press)
            kb = kv_bytes(cache, model, press)
            lg = torch.cat([last[None], extend(torch, model, cache,
                                               cont[:-1], N)])
            lp = F.log_softmax(lg, -1)
            t = torch.tensor(cont, device=lg.device)
            nll = -lp.gather(1, t[:, None]).mean().item()
            if ref is None:
                ref, kb_full = lp, kb
            kl = (ref.exp() * (ref - lp)).sum(-1).clamp(min=0).mean().item()
            top1 = (ref.argmax(-1) == lp.argmax(-1)).float().mean().item()
            group.append((name, method, budget, kb, kb_full, math.exp(nll),
                          kl, top1))
            print("# %s %s ppl %.4f" % (os.path.basename(path), name,
                                        math.exp(nll)), file=sys.stderr)
        rows.append((path, group))
    with open(a.ppl_csv, "w") as f:
        f.write("plan,method,budget,kv_bytes,kv_bytes_full,ppl,ppl_full,"
                "kl,top1\n")
        for path, group in rows:
            f.write("# text: %s\n" % path)
            for g in group:
                f.write("%s,%s,%s,%d,%d,%.6f,%.6f,%.9f,%.6f\n" % (
                    g[0], g[1], g[2], g[3], g[4], g[5], group[0][5], g[6],
                    g[7]))


def score(refs, answer):
    """RULER's string match, as kvx-eval's task_score."""
    a = answer.lower()
    return sum(r.lower() in a for r in refs) / len(refs) if refs else 0.0


def decode(torch, tok, model, cache, logits, pos, refs, budget, eog):
    """Greedy answer from logits at position pos, stopping as kvx-eval
    does: end of turn, budget spent, or every reference found."""
    out = []
    for i in range(budget):
        t = int(logits.argmax())
        if t in eog:
            break
        out.append(t)
        if score(refs, tok.decode(out)) == 1.0 or i + 1 == budget:
            break
        logits = extend(torch, model, cache, [t], pos + i)[-1]
    return tok.decode(out)


def run_tasks(a, torch, tok, model, runs):
    """The dumped items, every run, the chosen question mode."""
    import json
    items = [json.loads(l) for l in open(a.items)]
    if a.limit:
        items = items[:a.limit]
    eog = {tok.eos_token_id}
    for s in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>"):
        i = tok.convert_tokens_to_ids(s)
        if isinstance(i, int) and i >= 0 and i != tok.unk_token_id:
            eog.add(i)
    f = open(a.tasks_csv, "w")
    f.write("plan,method,budget,question,task,length,sample,score,"
            "kv_bytes,kv_bytes_full,answer\n")
    for it in items:
        ctx = tok(it["context"], add_special_tokens=False)["input_ids"]
        qs = [tok(q, add_special_tokens=False)["input_ids"]
              for q in it["questions"]]
        kb_full = None
        for name, method, budget, make in runs:
            hits, total, answers, kb = 0.0, 0, [], None
            if a.question == "after":
                base, _ = prefill(torch, model, ctx, make() if make else None)
                kb = kv_bytes(base, model, None)
            for q, refs in zip(qs, it["references"]):
                if a.question == "after":
                    cache = copy.deepcopy(base)
                    lg = extend(torch, model, cache, q, len(ctx))[-1]
                else:
                    cache, lg = prefill(torch, model, ctx + q,
                                        make() if make else None)
                    if kb is None:
                        kb = kv_bytes(cache, model, None)
                ans = decode(torch, tok, model, cache, lg, len(ctx) + len(q),
                             refs, it["answer_tokens"], eog)
                hits += score(refs, ans) * len(refs)
                total += len(refs)
                answers.append(ans)
            if kb_full is None:
                kb_full = kb if make is None else kv_bytes_full(
                    model, len(ctx) + (len(qs[0]) if a.question == "inside"
                                       else 0))
            ans = " | ".join(answers).replace("\n", " ").replace('"', '""')
            f.write('%s,%s,%s,%s,%s,%d,%d,%.6f,%d,%d,"%s"\n' % (
                name, method, budget, a.question, it["task"], it["length"],
                it["sample"], hits / total if total else 0.0, kb, kb_full,
                ans))
            f.flush()
        print("# %s done" % it["id"], file=sys.stderr)
    f.close()


def main(argv):
    a = parse_args(argv)
    if a.dry_run:
        n = len(a.presses) * len(a.kept) + len(a.plan) + 1
        for p in a.plan:
            read_plan(p)
        items = sum(1 for _ in open(a.items)) if a.items else 0
        print("runs per text and item: %d (full cache, %d presses x %d "
              "shares, %d plans)" % (n, len(a.presses), len(a.kept),
                                     len(a.plan)))
        print("texts: %d, items: %d, question %s" % (
            len(a.text), items, a.question))
        return 0
    torch, F, kvpress, tok, model = load(a)
    runs = presses(a, torch, F, kvpress)
    if a.text:
        run_ppl(a, torch, F, tok, model, runs)
    if a.items:
        run_tasks(a, torch, tok, model, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
