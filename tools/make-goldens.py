#!/usr/bin/env python3
"""Write the reference values in tests/golden/ from an independent
implementation: llama.cpp, through its Python binding llama-cpp-python.

Regenerate with (from the top of the source tree):

    python3 tools/make-goldens.py models/SmolLM2-135M-Instruct.Q4_1.gguf tests/golden
    python3 tools/make-goldens.py --prefix qwen2- \
        models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf tests/golden
    python3 tools/make-goldens.py --prefix gemma3- \
        models/gemma-3-270m-q4_k_m.gguf tests/golden

The files in tests/golden/ were made with llama-cpp-python 0.3.36 (built
from its PyPI sdist, CPU only) and the model whose sha256 each file's
header records.  Files written:

  tokens.txt  token ids of a set of texts (tests/test-tokenizer.c)
  tokens-PRE.txt  the same with the model's vocabulary but another
              pre-tokenizer (tokenizer.ggml.pre = PRE), for PRE in
              PRE_VARIANTS; made through vocabulary-only copies of the
              model's metadata (needs the gguf Python package)
  logits.txt  prompt ids, top logits after the prompt, and a greedy
              continuation (the forward-pass tests)

With --prefix P (another model) the files are Ptokens.txt and
Plogits.txt, without the pre-tokenizer variants, and the ChatML prompt
carries that model's default system message (SYSTEM below).  Gemma 3's
file has no chat template and wants a BOS: its prompts are GEMMA_PROMPTS,
BOS first, the last one longer than its 512-token sliding window.

Both are line based; each file's header documents its format.
"""
import hashlib
import os
import sys
import tempfile

import numpy as np

import llama_cpp

# (name, parse_special, text).  Names are single words; a text given as
# bytes need not be valid UTF-8.
TEXTS = [
    ("hello", False, "Hello world"),
    ("sentence", False, "The quick brown fox jumps over the lazy dog."),
    ("unicode", False,
     "Caf\u00e9 na\u00efve fa\u00e7ade \u2014 \u6771\u4eac\u30bf\u30ef\u30fc "
     "\u4f60\u597d\u4e16\u754c \U0001F600\U0001F389 \u00dcn\u00efc\u00f6d\u00e9 "
     "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439 "
     "\u03b1\u03b2\u03b3 \u00bd \u2153"),
    ("digits", False,
     "1234567 and 3.14159, 42nd, 2024-06-01, 0x1F, 1e-9, "
     "\u0661\u0662\u0663 \u2167 $1,000,000.00"),
    ("whitespace", False,
     "  leading\tand\t\ttabs\n\nnew  lines   \n\t trailing   "),
    ("unispace", False,
     "a\u00a0b\u3000c\u2003 d\u2028e \u001cf\u001fg\r\n\r\nh \u0085i"),
    ("python", False,
     "def f(x):\n    return [i**2 for i in range(x) if i % 2 == 0]\n\n"
     "class A(object):\n    '''doc'''\n    pass\n"),
    ("c", False,
     "int\nmain(void)\n{\n\tprintf(\"%d\\n\", 0x1F);\n\treturn 0;\n}\n"),
    ("contractions", False,
     "don't I'll we've they're she'd it's You'RE O'Neil's 'tis rock'n'roll"),
    ("punct", False,
     "$$$ ++ --> <= >= ~~ ||| ... !? ?! (a) [b] {c} <d> @e #f %g ^h &i *j"),
    ("special_on", True,
     "<|im_start|>user\nHi there<|im_end|>\n<|endoftext|>"
     "<repo_name>kvx<file_sep>x<|im_start|><|im_start|>end"),
    ("special_off", False,
     "<|im_start|>user\nHi there<|im_end|>\n<|endoftext|>"
     "<repo_name>kvx<file_sep>x<|im_start|><|im_start|>end"),
    ("empty", False, ""),
    ("invalid", False,
     b"a\x04b\x00c\xf5x\xff \x80\xc0\x80 \xed\xa0\x80 \xe6\x9d ok\xf0\x9f\x98"),
]

# Each chat template's default system message, by general.architecture.
SYSTEM = {
    "llama": "You are a helpful AI assistant named SmolLM, trained by "
             "Hugging Face",
    "qwen2": "You are Qwen, created by Alibaba Cloud. You are a helpful "
             "assistant.",
}
CHATML = ("<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n"
          "What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")

PARAGRAPH = (
    "The lighthouse stood on a spit of black rock at the mouth of the bay, "
    "and for ninety years its keepers had written the weather into a ledger "
    "that now filled a whole shelf of the little stone office. Each morning "
    "the keeper climbed the spiral stair, wiped the salt from the great lens, "
    "trimmed the wick, and noted the wind, the swell, and the ships that had "
    "passed in the night. Most entries were brief: a schooner bound for the "
    "south, fog until noon, gulls on the gallery rail. But in the winter of "
    "the great storm the handwriting changed. The lines grew long and "
    "crowded, the ink ran where spray had reached the page, and for three "
    "days there was no entry at all. When the record resumed, it said only "
    "that the lamp had never gone out, that the boat from the village had "
    "come at last with bread and oil, and that the keeper's daughter had "
    "kept the light burning alone while her father lay ill below. Her name "
    "appears nowhere else in the ledgers, yet every keeper who came after "
    "her read that page, and some of them wrote beside it, in pencil, a "
    "small mark of thanks.")

PROMPTS = [
    ("france", True, "The capital of France is"),
    ("chatml", True, CHATML),
    ("paragraph", True, PARAGRAPH),
]
GEMMA_PROMPTS = [
    ("france", True, "<bos>The capital of France is"),
    ("paragraph", True, "<bos>" + PARAGRAPH),
    ("long", True, "<bos>" + " ".join([PARAGRAPH] * 3) +
     " The keeper's daughter"),
]
# Extra cases for --prefix runs: code and number-heavy text, where the
# Qwen2 pre-tokenizer (single digits) differs most from the others.
MORE_TEXTS = [
    ("numbers", False,
     "In 1969, 3 astronauts flew 384400 km; pi=3.14159265, e=2.71828, "
     "x\u00b2+y\u00b2=z\u00b2, 10^12, 0b1010, \uff11\uff12\uff13."),
    ("rust", False,
     "fn main() {\n    let v: Vec<u32> = (1..=10).map(|x| x * x).collect();"
     "\n    println!(\"{:?}\", v);\n}\n"),
    ("mixed", False,
     "   \n\n  \t\u00a0x \r\n\r\n\r\n  y  z\t\t \n   "),
]
PRE_VARIANTS = ["llama-bpe", "gpt-2", "default", "qwen2"]
N_TOP = 5
N_GREEDY = 20


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


PREFIX = ""


def header(model):
    return [
        "# Generated by tools/make-goldens.py with llama-cpp-python %s; do "
        "not edit." % llama_cpp.__version__,
        "# Regenerate: python3 tools/make-goldens.py %s%s tests/golden"
        % ("--prefix %s " % PREFIX if PREFIX else "",
           os.path.join("models", os.path.basename(model))),
        "# model: %s sha256 %s" % (os.path.basename(model), sha256(model)),
    ]


def last_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.ctypeslib.as_array(llm._ctx.get_logits(),
                                 shape=(llm.n_vocab(),)).copy()


def vocab_variant(model, pre, path):
    """Write the model's metadata, with tokenizer.ggml.pre = pre and no
    tensors, to path."""
    import gguf

    r = gguf.GGUFReader(model)
    w = gguf.GGUFWriter(path, arch=None)
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        value = pre if key == "tokenizer.ggml.pre" else field.contents()
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, vtype, sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_tokens(llm, model, path, pre=None):
    out = header(model) + [
        "#",
        "# One case per non-comment line, fields separated by one space:",
        "#   NAME SPECIAL HEX DHEX N ID...",
        "# NAME is a label, SPECIAL is 1 when special-token texts are parsed",
        "# (llama_tokenize parse_special), HEX the text's bytes in lower-case",
        "# hex (\"-\" when empty), DHEX the bytes the ids decode to",
        "# (llama_token_to_piece, special tokens rendered as text), N the",
        "# number of ids that follow.  DHEX differs from HEX only where the",
        "# text is not valid UTF-8 (U+FFFD replaces stray bytes) or holds a",
        "# byte the vocabulary has no token for (dropped).  No BOS is added.",
        "# The comment above each case shows its text.",
    ]
    if pre is not None:
        out[3:3] = ["# pre-tokenizer: %s (the model's vocabulary and merges)"
                    % pre]
    for name, special, text in TEXTS + (MORE_TEXTS if PREFIX else []):
        raw = text if isinstance(text, bytes) else text.encode()
        ids = llm.tokenize(raw, add_bos=False, special=special)
        back = llm.detokenize(ids, special=True)
        out.append("# %s" % ascii(text))
        out.append("%s %d %s %s %d%s" % (name, int(special),
                   raw.hex() or "-", back.hex() or "-", len(ids),
                   "".join(" %d" % i for i in ids)))
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def write_logits(llm, model, path, system, prompts=PROMPTS):
    out = header(model) + [
        "#",
        "# Lines, fields separated by one space (logits as %.6f):",
        "#   text NAME HEX           the prompt as UTF-8 hex",
        "#   prompt NAME N ID...     its ids (special texts parsed, no BOS)",
        "#   top NAME K ID LOGIT...  the K largest logits after the last",
        "#                           prompt token, largest first",
        "#   lse NAME VALUE          log-sum-exp of all %d logits there, so"
        % llm.n_vocab(),
        "#                           that LOGIT - VALUE is a log-probability",
        "#   greedy NAME N ID...     N tokens generated by argmax after the",
        "#                           prompt (no sampling, no penalties)",
        "#   runnerup NAME N ID GAP...  at each greedy step, the second",
        "#                           largest logit's id and its distance",
        "#                           below the largest (a small GAP is a",
        "#                           near-tie that rounding can flip)",
        "# Logits come from llama.cpp's CPU forward pass (n_ctx 2048, two",
        "# threads).  Another implementation rounds activations differently,",
        "# so compare logits with a tolerance and ids exactly.",
    ]
    for name, special, text in prompts:
        if name == "chatml":
            text = text % system
        ids = llm.tokenize(text.encode(), add_bos=False, special=special)
        logits = last_logits(llm, ids)
        top = np.argsort(-logits, kind="stable")[:N_TOP]
        m = float(np.max(logits))
        lse = m + float(np.log(np.sum(np.exp(logits.astype(np.float64) - m))))
        out.append("text %s %s" % (name, text.encode().hex()))
        out.append("prompt %s %d%s" % (name, len(ids),
                   "".join(" %d" % i for i in ids)))
        out.append("top %s %d%s" % (name, N_TOP, "".join(
            " %d %.6f" % (int(i), float(logits[i])) for i in top)))
        out.append("lse %s %.6f" % (name, lse))
        if name == "france":
            gen, run = [], []
            cur = logits
            for _ in range(N_GREEDY):
                tok = int(np.argmax(cur))
                two = np.argsort(-cur, kind="stable")[:2]
                gen.append(tok)
                run.append((int(two[1]), float(cur[two[0]] - cur[two[1]])))
                llm.eval([tok])
                cur = np.ctypeslib.as_array(llm._ctx.get_logits(),
                                            shape=(llm.n_vocab(),)).copy()
            out.append("greedy %s %d%s" % (name, len(gen),
                       "".join(" %d" % i for i in gen)))
            out.append("runnerup %s %d%s" % (name, len(run), "".join(
                " %d %.6f" % r for r in run)))
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    global PREFIX
    args = sys.argv[1:]
    if len(args) == 4 and args[0] == "--prefix":
        PREFIX, args = args[1], args[2:]
    if len(args) != 2:
        sys.exit("usage: make-goldens.py [--prefix P] MODEL.gguf OUTDIR")
    model, outdir = args
    llm = llama_cpp.Llama(model_path=model, logits_all=False, n_ctx=2048,
                          n_threads=2, verbose=False)
    arch = llm.metadata.get("general.architecture", "llama")
    os.makedirs(outdir, exist_ok=True)
    write_tokens(llm, model, os.path.join(outdir, PREFIX + "tokens.txt"))
    if PREFIX:
        write_logits(llm, model, os.path.join(outdir, PREFIX + "logits.txt"),
                     SYSTEM.get(arch),
                     GEMMA_PROMPTS if arch == "gemma3" else PROMPTS)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRE_VARIANTS:
            vpath = os.path.join(tmp, "vocab-%s.gguf" % pre)
            vocab_variant(model, pre, vpath)
            vllm = llama_cpp.Llama(model_path=vpath, vocab_only=True,
                                   verbose=False)
            write_tokens(vllm, model,
                         os.path.join(outdir, "tokens-%s.txt" % pre), pre)
            del vllm
    write_logits(llm, model, os.path.join(outdir, "logits.txt"),
                 SYSTEM[arch])


if __name__ == "__main__":
    main()
