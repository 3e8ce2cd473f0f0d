#!/usr/bin/env python3
"""Write a small qwen2 GGUF with random weights, and the logits a plain
numpy implementation of the Qwen2 forward pass (transformers' modeling_qwen2
written out: Q/K/V biases, rotate-half RoPE, GQA, RMSNorm, SwiGLU, separate
output matrix) computes for it, so that the tests check kvx's qwen2 path
without the real model.

Regenerate (from the top of the source tree; needs numpy and gguf 0.19):

    python3 tools/make-tiny-qwen2.py tests/data/tiny-qwen2.gguf \\
        tests/golden/tiny-qwen2-logits.txt

The weights use the types of the real Qwen2.5-Coder file (Q4_K, Q5_0,
Q6_K, Q8_0, F32).  K-quant blocks are random bytes with small scales
(gguf-py cannot quantise to them); the reference reads every weight back
through gguf-py's dequantiser, not kvx's.  Seeded: the output is the same
on every run.
"""
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import quants

N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, N_FF = 2, 256, 4, 2, 256
HEAD_DIM = N_EMBD // N_HEAD
N_CTX, THETA, EPS = 512, 1000000.0, 1e-6
PROMPTS = [
    ("short", [5, 77, 300, 12, 250, 99, 3]),
    ("long", [(i * 37 + 11) % 280 + 3 for i in range(40)]),
]
N_TOP = 5
rng = np.random.default_rng(20261130)


def byte_vocab():
    """GPT-2's printable stand-ins for the 256 bytes, in byte order."""
    bs = (list(range(ord("!"), ord("~") + 1)) +
          list(range(ord("\u00a1"), ord("\u00ac") + 1)) +
          list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def tokenizer():
    """256 byte tokens, a few merges, three special tokens."""
    toks = byte_vocab()
    types = [1] * 256
    merges = []
    for a, b in [("h", "e"), ("l", "l"), ("he", "ll"), ("\u0120", "t"),
                 ("\u0120t", "he"), ("o", "r"), ("1", "2")]:
        merges.append("%s %s" % (a, b))
        toks.append(a + b)
        types.append(1)
    while len(toks) < 300:
        toks.append("<extra_%d>" % len(toks))
        types.append(4)
    for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]:
        toks.append(s)
        types.append(3)
    return toks, types, merges


def kquant_random(rows, cols, qtype):
    """Random K-quant blocks with finite small scales, as raw bytes."""
    nb = cols // 256
    bsz = 144 if qtype == Q.Q4_K else 210
    raw = rng.integers(0, 256, size=(rows, nb, bsz), dtype=np.uint8)
    if qtype == Q.Q4_K:
        d = rng.uniform(0.002, 0.006, size=(rows, nb)).astype(np.float16)
        dmin = rng.uniform(0.001, 0.004, size=(rows, nb)).astype(np.float16)
        raw[:, :, 0:2] = d.view(np.uint8).reshape(rows, nb, 2)
        raw[:, :, 2:4] = dmin.view(np.uint8).reshape(rows, nb, 2)
    else:
        d = rng.uniform(0.0002, 0.0006, size=(rows, nb)).astype(np.float16)
        raw[:, :, 208:210] = d.view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, nb * bsz)


def weight(rows, cols, qtype, scale=0.08):
    """(stored array, float64 matrix that gguf-py reads back from it)."""
    if qtype in (Q.Q4_K, Q.Q6_K):
        raw = kquant_random(rows, cols, qtype)
    else:
        f = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        raw = f if qtype == Q.F32 else quants.quantize(f, qtype)
    back = raw if qtype == Q.F32 else quants.dequantize(raw, qtype)
    return raw, np.asarray(back, dtype=np.float64).reshape(rows, cols)


def rmsnorm(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope(x, pos):
    """x: (T, heads, D); transformers' apply_rotary_pos_emb."""
    inv = THETA ** (-np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM)
    ang = np.outer(pos, inv)
    emb = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    return x * cos + rotate_half(x) * sin


def forward(W, ids):
    """Logits at every position of ids (float64)."""
    T = len(ids)
    x = W["token_embd.weight"][ids]
    pos = np.arange(T, dtype=np.float64)
    g = N_HEAD // N_HEAD_KV
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(N_LAYER):
        p = "blk.%d." % l
        h = rmsnorm(x, W[p + "attn_norm.weight"])
        q = h @ W[p + "attn_q.weight"].T + W[p + "attn_q.bias"]
        k = h @ W[p + "attn_k.weight"].T + W[p + "attn_k.bias"]
        v = h @ W[p + "attn_v.weight"].T + W[p + "attn_v.bias"]
        q = rope(q.reshape(T, N_HEAD, HEAD_DIM), pos)
        k = rope(k.reshape(T, N_HEAD_KV, HEAD_DIM), pos)
        v = v.reshape(T, N_HEAD_KV, HEAD_DIM)
        o = np.empty((T, N_HEAD, HEAD_DIM))
        for hq in range(N_HEAD):
            s = q[:, hq] @ k[:, hq // g].T / np.sqrt(HEAD_DIM) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            o[:, hq] = (s / s.sum(axis=1, keepdims=True)) @ v[:, hq // g]
        x = x + o.reshape(T, N_EMBD) @ W[p + "attn_output.weight"].T
        h = rmsnorm(x, W[p + "ffn_norm.weight"])
        a = h @ W[p + "ffn_gate.weight"].T
        b = h @ W[p + "ffn_up.weight"].T
        x = x + (a / (1 + np.exp(-a)) * b) @ W[p + "ffn_down.weight"].T
    return rmsnorm(x, W["output_norm.weight"]) @ W["output.weight"].T


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make-tiny-qwen2.py OUT.gguf OUT-logits.txt")
    gpath, lpath = sys.argv[1], sys.argv[2]
    toks, types, merges = tokenizer()
    V = len(toks)
    w = gguf.GGUFWriter(gpath, arch="qwen2")
    w.add_name("tiny-qwen2")
    w.add_block_count(N_LAYER)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(THETA)
    w.add_layer_norm_rms_eps(EPS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(V - 3)
    w.add_eos_token_id(V - 1)
    w.add_add_bos_token(False)

    W = {}

    def put(name, rows, cols, qtype, scale=0.08):
        raw, back = weight(rows, cols, qtype, scale)
        w.add_tensor(name, raw, raw_dtype=qtype)
        W[name] = back

    def vec(name, n, center, scale):
        f = (center + rng.standard_normal(n) * scale).astype(np.float32)
        w.add_tensor(name, f)
        W[name] = f.astype(np.float64)

    put("token_embd.weight", V, N_EMBD, Q.Q5_0, 0.5)
    put("output.weight", V, N_EMBD, Q.Q8_0, 0.1)
    vec("output_norm.weight", N_EMBD, 1.0, 0.1)
    kv = N_HEAD_KV * HEAD_DIM
    for l in range(N_LAYER):
        p = "blk.%d." % l
        vec(p + "attn_norm.weight", N_EMBD, 1.0, 0.1)
        put(p + "attn_q.weight", N_EMBD, N_EMBD, [Q.Q4_K, Q.Q5_0][l % 2])
        vec(p + "attn_q.bias", N_EMBD, 0.0, 0.5)
        put(p + "attn_k.weight", kv, N_EMBD, Q.Q8_0)
        vec(p + "attn_k.bias", kv, 0.0, 0.5)
        put(p + "attn_v.weight", kv, N_EMBD, [Q.Q8_0, Q.F32][l % 2])
        vec(p + "attn_v.bias", kv, 0.0, 0.1)
        put(p + "attn_output.weight", N_EMBD, N_EMBD, Q.Q5_0)
        vec(p + "ffn_norm.weight", N_EMBD, 1.0, 0.1)
        put(p + "ffn_gate.weight", N_FF, N_EMBD, Q.Q5_0)
        put(p + "ffn_up.weight", N_FF, N_EMBD, [Q.Q5_0, Q.Q4_K][l % 2])
        put(p + "ffn_down.weight", N_EMBD, N_FF, Q.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    out = [
        "# Generated by tools/make-tiny-qwen2.py (numpy %s, gguf-py); do "
        "not edit." % np.__version__,
        "# Regenerate: python3 tools/make-tiny-qwen2.py "
        "tests/data/tiny-qwen2.gguf tests/golden/tiny-qwen2-logits.txt",
        "# Reference logits of tests/data/tiny-qwen2.gguf from a float64",
        "# numpy Qwen2 forward pass.  Lines, fields separated by one space:",
        "#   prompt NAME N ID...     token ids, positions 0..N-1",
        "#   top NAME K ID LOGIT...  the K largest logits after the last id",
        "#   logits NAME V L...      all V logits after the last id (%.6f)",
    ]
    for name, ids in PROMPTS:
        lg = forward(W, ids)[-1]
        top = np.argsort(-lg, kind="stable")[:N_TOP]
        out.append("prompt %s %d%s" % (name, len(ids),
                   "".join(" %d" % i for i in ids)))
        out.append("top %s %d%s" % (name, N_TOP, "".join(
            " %d %.6f" % (int(i), lg[i]) for i in top)))
        out.append("logits %s %d%s" % (name, V, "".join(
            " %.6f" % v for v in lg)))
    with open(lpath, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
