#!/usr/bin/env python3
"""Write a small gemma3 GGUF with random weights, and the logits a plain
numpy implementation of the Gemma 3 forward pass (transformers'
modeling_gemma3 written out: scaled embeddings, per-head Q/K RMSNorm,
rotate-half RoPE with a local and a global base, sliding-window layers,
norms before and after attention and the MLP, GELU-gated MLP, tied output
matrix) computes for it, so that the tests check kvx's gemma3 path, on the
CPU and on the GPU, without the real model.

Regenerate (from the top of the source tree; needs numpy and gguf 0.19):

    python3 tools/make-tiny-gemma3.py tests/data/tiny-gemma3.gguf \\
        tests/golden/tiny-gemma3-logits.txt

Six layers, so that layer 5 is global and layers 0-4 local as in Gemma 3
(five local layers to each global one), a 24-token window, and Gemma 3
270M's head size (256) and weight types (Q4_K, Q5_0, Q6_K, Q8_0, F32).
The norm weights are stored as llama.cpp reads them (Gemma's 1 + w
already added).  K-quant blocks are random bytes with small scales
(gguf-py cannot quantise to them); the reference reads every weight back
through gguf-py's dequantiser, not kvx's.  The vocabulary is a small
SentencePiece one: control tokens, the 256 byte tokens, printable ASCII
and the escaped space.  Seeded: the output is the same on every run.
"""
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import quants

N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF = 6, 256, 2, 1, 256, 256
N_CTX, EPS, WINDOW, PERIOD = 2048, 1e-6, 24, 6
THETA_GLOBAL, THETA_LOCAL = 1000000.0, 10000.0
PROMPTS = [
    ("short", [5, 77, 300, 12, 250, 99, 3]),
    ("long", [(i * 37 + 11) % 330 + 4 for i in range(60)]),
]
N_TOP = 5
rng = np.random.default_rng(20261130)


def tokenizer():
    """Control tokens, <0xXX> byte tokens, single characters, a few
    pieces; (tokens, types, scores)."""
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
    for text, score in [("\u2581t", -1.0), ("he", -1.5), ("\u2581the", -0.5),
                        ("in", -2.0), ("er", -2.0), ("\u2581a", -2.5),
                        ("on", -3.0), ("an", -2.2), ("nd", -2.2),
                        ("\u2581and", -0.8)]:
        toks.append(text)
        types.append(1)
        scores.append(score)
    toks.append("<start_of_turn>")
    types.append(3)
    scores.append(-1000.0)
    toks.append("<end_of_turn>")
    types.append(3)
    scores.append(-1000.0)
    return toks, types, scores


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


def rope(x, pos, theta):
    """x: (T, heads, D); transformers' apply_rotary_pos_emb."""
    inv = theta ** (-np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM)
    ang = np.outer(pos, inv)
    emb = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    return x * cos + rotate_half(x) * sin


def gelu_tanh(a):
    return 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))


def forward(W, ids):
    """Logits at every position of ids (float64)."""
    T = len(ids)
    x = W["token_embd.weight"][ids] * np.sqrt(N_EMBD)
    pos = np.arange(T, dtype=np.float64)
    g = N_HEAD // N_HEAD_KV
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    causal = np.where(j <= i, 0.0, -np.inf)
    local = np.where((j <= i) & (i - j < WINDOW), 0.0, -np.inf)
    for l in range(N_LAYER):
        p = "blk.%d." % l
        is_local = (l + 1) % PERIOD != 0
        theta = THETA_LOCAL if is_local else THETA_GLOBAL
        mask = local if is_local else causal
        h = rmsnorm(x, W[p + "attn_norm.weight"])
        q = (h @ W[p + "attn_q.weight"].T).reshape(T, N_HEAD, HEAD_DIM)
        k = (h @ W[p + "attn_k.weight"].T).reshape(T, N_HEAD_KV, HEAD_DIM)
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, N_HEAD_KV, HEAD_DIM)
        q = rope(rmsnorm(q, W[p + "attn_q_norm.weight"]), pos, theta)
        k = rope(rmsnorm(k, W[p + "attn_k_norm.weight"]), pos, theta)
        o = np.empty((T, N_HEAD, HEAD_DIM))
        for hq in range(N_HEAD):
            s = q[:, hq] @ k[:, hq // g].T / np.sqrt(HEAD_DIM) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            o[:, hq] = (s / s.sum(axis=1, keepdims=True)) @ v[:, hq // g]
        a = o.reshape(T, N_HEAD * HEAD_DIM) @ W[p + "attn_output.weight"].T
        x = x + rmsnorm(a, W[p + "post_attention_norm.weight"])
        h = rmsnorm(x, W[p + "ffn_norm.weight"])
        f = (gelu_tanh(h @ W[p + "ffn_gate.weight"].T) *
             (h @ W[p + "ffn_up.weight"].T)) @ W[p + "ffn_down.weight"].T
        x = x + rmsnorm(f, W[p + "post_ffw_norm.weight"])
    return rmsnorm(x, W["output_norm.weight"]) @ W["token_embd.weight"].T


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make-tiny-gemma3.py OUT.gguf OUT-logits.txt")
    gpath, lpath = sys.argv[1], sys.argv[2]
    toks, types, scores = tokenizer()
    V = len(toks)
    w = gguf.GGUFWriter(gpath, arch="gemma3")
    w.add_name("tiny-gemma3")
    w.add_block_count(N_LAYER)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_freq_base(THETA_GLOBAL)
    w.add_layer_norm_rms_eps(EPS)
    w.add_sliding_window(WINDOW)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)

    W = {}

    def put(name, rows, cols, qtype, scale=0.08):
        raw, back = weight(rows, cols, qtype, scale)
        w.add_tensor(name, raw, raw_dtype=qtype)
        W[name] = back

    def vec(name, n, center, scale):
        f = (center + rng.standard_normal(n) * scale).astype(np.float32)
        w.add_tensor(name, f)
        W[name] = f.astype(np.float64)

    put("token_embd.weight", V, N_EMBD, Q.Q8_0, 0.05)
    vec("output_norm.weight", N_EMBD, 1.0, 0.1)
    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    for l in range(N_LAYER):
        p = "blk.%d." % l
        vec(p + "attn_norm.weight", N_EMBD, 1.0, 0.1)
        put(p + "attn_q.weight", q, N_EMBD, [Q.Q4_K, Q.Q5_0][l % 2])
        put(p + "attn_k.weight", kv, N_EMBD, [Q.Q8_0, Q.Q4_K][l % 2])
        put(p + "attn_v.weight", kv, N_EMBD, Q.F32 if l == 1 else Q.Q8_0)
        vec(p + "attn_q_norm.weight", HEAD_DIM, 1.0, 0.2)
        vec(p + "attn_k_norm.weight", HEAD_DIM, 1.0, 0.2)
        put(p + "attn_output.weight", N_EMBD, q, [Q.Q5_0, Q.Q4_K][l % 2])
        vec(p + "post_attention_norm.weight", N_EMBD, 1.0, 0.1)
        vec(p + "ffn_norm.weight", N_EMBD, 1.0, 0.1)
        put(p + "ffn_gate.weight", N_FF, N_EMBD, Q.Q5_0)
        put(p + "ffn_up.weight", N_FF, N_EMBD, [Q.Q5_0, Q.Q4_K][l % 2])
        put(p + "ffn_down.weight", N_EMBD, N_FF, Q.Q6_K)
        vec(p + "post_ffw_norm.weight", N_EMBD, 1.0, 0.1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    out = [
        "# Generated by tools/make-tiny-gemma3.py (numpy %s, gguf-py); do "
        "not edit." % np.__version__,
        "# Regenerate: python3 tools/make-tiny-gemma3.py "
        "tests/data/tiny-gemma3.gguf tests/golden/tiny-gemma3-logits.txt",
        "# Reference logits of tests/data/tiny-gemma3.gguf from a float64",
        "# numpy Gemma 3 forward pass.  Lines, fields separated by one space:",
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
