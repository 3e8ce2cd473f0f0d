/*
 * test-tokenizer.c - the BPE tokenizer against llama.cpp's ids
 * (tests/golden/tokens.txt and logits.txt, written by
 * tools/make-goldens.py), a brute-force BPE on a synthetic vocabulary,
 * round trips, special tokens, the chat format and speed.  With
 * Qwen2.5-Coder's file present (KVX_QWEN2_MODEL, else models/ under
 * top_srcdir), its tokenizer against llama.cpp's ids
 * (tests/golden/qwen2-tokens.txt, qwen2-logits.txt) and its chat format;
 * the qwen2 pre-tokenizer also runs on SmolLM2's vocabulary
 * (tokens-qwen2.txt) and on the small tests/data/tiny-qwen2.gguf.  With
 * Gemma 3's file present (KVX_GEMMA3_MODEL, else models/), its
 * SentencePiece tokenizer against llama.cpp (gemma3-tokens.txt); always,
 * a small SentencePiece vocabulary (tests/data/tiny-spm.gguf) against
 * llama.cpp (tiny-spm-tokens.txt, tools/make-tiny-spm.py).
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tap.h"
#include "tokenizer.h"
#include "unicode.h"
#include "util.h"

#define MAXIDS	4096
#define QWEN2_FILE "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
#define GEMMA3_FILE "gemma-3-270m-q4_k_m.gguf"

static uint64_t rng = 0x9E3779B97F4A7C15ull;

/* xorshift64*, fixed seed: the random cases are the same on every run. */
static uint32_t
rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return (uint32_t)((rng * 2685821657736338717ull) >> 32);
}

/* Hex string to bytes; returns the length or -1. */
static long
unhex(const char *h, char *out, size_t cap)
{
	size_t n = strlen(h), i;

	if (strcmp(h, "-") == 0)
		return 0;
	if (n % 2 || n / 2 > cap)
		return -1;
	for (i = 0; i < n / 2; i++) {
		unsigned v;

		if (sscanf(h + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (char)v;
	}
	return (long)(n / 2);
}

/* Concatenated pieces of ids, malloc'd, length in *len. */
static char *
detok(const kvx_tokenizer *t, const int32_t *ids, int n, size_t *len)
{
	size_t cap = 64, o = 0, k;
	char *s = malloc(cap), piece[512];

	for (int i = 0; i < n && s != NULL; i++) {
		if (tok_piece(t, ids[i], piece, sizeof piece, &k) != KVX_OK) {
			free(s);
			return NULL;
		}
		if (o + k + 1 > cap) {
			char *q;

			while (o + k + 1 > cap)
				cap *= 2;
			if ((q = realloc(s, cap)) == NULL) {
				free(s);
				return NULL;
			}
			s = q;
		}
		memcpy(s + o, piece, k);
		o += k;
	}
	*len = o;
	return s;
}

/* Encode and decode; 1 when the bytes come back unchanged. */
static int
round_trip(const kvx_tokenizer *t, const char *s, size_t n, int special)
{
	static int32_t ids[MAXIDS * 4];
	size_t m;
	char *back;
	int k, good;

	if (tok_encode(t, s, n, special, ids, MAXIDS * 4, &k) != KVX_OK)
		return 0;
	if ((back = detok(t, ids, k, &m)) == NULL)
		return 0;
	good = m == n && memcmp(back, s, n) == 0;
	free(back);
	return good;
}

/* Directory of the golden files: $top_srcdir/tests/golden, else next
 * to the model's directory. */
static void
golden_path(const char *model, const char *name, char *out, size_t size)
{
	const char *top = getenv("top_srcdir");
	char dir[1024];
	char *slash;

	if (top != NULL && *top != '\0') {
		snprintf(out, size, "%s/tests/golden/%s", top, name);
		return;
	}
	snprintf(dir, sizeof dir, "%s", model);
	if ((slash = strrchr(dir, '/')) != NULL)
		*slash = '\0';
	else
		snprintf(dir, sizeof dir, ".");
	snprintf(out, size, "%s/../tests/golden/%s", dir, name);
}

/* Every case of tokens.txt: exact ids, and decoding as the reference. */
static void
check_tokens_golden(const kvx_tokenizer *t, const char *path)
{
	static char line[65536], text[32768], dtext[32768];
	static char hex[sizeof line], dhex[sizeof line];
	static int32_t want[MAXIDS], got[MAXIDS];
	FILE *f = fopen(path, "r");
	const char *file = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	int cases = 0, lossless = 0;

	if (!ok(f != NULL, "open %s", path))
		return;
	while (fgets(line, sizeof line, f) != NULL) {
		char name[64], *back;
		int special, nwant, ngot, off, pos, i, same;
		long len, dlen;
		size_t blen;
		kvx_status st;

		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (sscanf(line, "%63s %d %s %s %d%n", name, &special, hex, dhex,
		    &nwant, &pos) != 5 || nwant < 0 || nwant > MAXIDS) {
			ok(0, "tokens.txt: bad line %.40s", line);
			continue;
		}
		for (i = 0; i < nwant; i++) {
			if (sscanf(line + pos, "%d%n", &want[i], &off) != 1)
				break;
			pos += off;
		}
		len = unhex(hex, text, sizeof text);
		dlen = unhex(dhex, dtext, sizeof dtext);
		if (!ok(i == nwant && len >= 0 && dlen >= 0,
		    "%s: golden line parses", name))
			continue;
		cases++;
		st = tok_encode(t, text, (size_t)len, special, got, MAXIDS,
		    &ngot);
		same = st == KVX_OK && ngot == nwant;
		for (i = 0; same && i < nwant; i++)
			same = got[i] == want[i];
		if (!ok(same, "%s %s (special %d): %d ids as llama.cpp", file,
		    name, special, nwant)) {
			diag("status %d n %d vs %d: %s", st, ngot, nwant,
			    kvx_errmsg());
			for (i = 0; i < nwant && i < ngot; i++)
				if (got[i] != want[i]) {
					diag("first difference at %d: %d vs %d",
					    i, got[i], want[i]);
					break;
				}
		}
		back = detok(t, got, same ? ngot : 0, &blen);
		ok(back != NULL && blen == (size_t)dlen &&
		    memcmp(back, dtext, blen) == 0,
		    "%s: decodes to the reference's %ld bytes%s", name, dlen,
		    dlen == len && memcmp(dtext, text, (size_t)len) == 0 ?
		    " (the input)" : "");
		lossless += dlen == len && memcmp(dtext, text, (size_t)len) == 0
		    && round_trip(t, text, (size_t)len, special);
		free(back);
	}
	fclose(f);
	ok(cases >= 10, "%s has %d cases", file, cases);
	ok(lossless >= cases - 1,
	    "decode(encode(x)) == x for %d valid-UTF-8 cases", lossless);
}

/* The prompts of logits.txt tokenize to the ids the reference fed its
 * forward pass; the chatml prompt's text is copied to chatml. */
static void
check_logits_prompts(const kvx_tokenizer *t, const char *path,
    char *chatml, size_t chatcap)
{
	static char line[65536], text[32768];
	static int32_t want[MAXIDS], got[MAXIDS];
	char name[64], kind[16], hex[sizeof line];
	FILE *f = fopen(path, "r");
	long len = -1;
	int prompts = 0;

	if (!ok(f != NULL, "open %s", path))
		return;
	while (fgets(line, sizeof line, f) != NULL) {
		int n, ngot, pos, off, i, same;

		if (line[0] == '#')
			continue;
		if (sscanf(line, "%15s %63s%n", kind, name, &pos) != 2)
			continue;
		if (strcmp(kind, "text") == 0) {
			if (sscanf(line + pos, "%s", hex) == 1)
				len = unhex(hex, text, sizeof text);
			if (strcmp(name, "chatml") == 0 && len >= 0 &&
			    (size_t)len < chatcap) {
				memcpy(chatml, text, (size_t)len);
				chatml[len] = '\0';
			}
			continue;
		}
		if (strcmp(kind, "prompt") != 0 || len < 0)
			continue;
		if (sscanf(line + pos, "%d%n", &n, &off) != 1 || n > MAXIDS)
			continue;
		pos += off;
		for (i = 0; i < n; i++) {
			if (sscanf(line + pos, "%d%n", &want[i], &off) != 1)
				break;
			pos += off;
		}
		prompts++;
		same = tok_encode(t, text, (size_t)len, 1, got, MAXIDS,
		    &ngot) == KVX_OK && ngot == n && i == n;
		for (i = 0; same && i < n; i++)
			same = got[i] == want[i];
		ok(same, "logits.txt prompt %s: %d ids as llama.cpp", name, n);
		len = -1;
	}
	fclose(f);
	ok(prompts == 3, "logits.txt has 3 prompts (%d)", prompts);
}

/* A random code point from ranges that exercise every class. */
static uint32_t
random_cp(void)
{
	static const uint32_t pick[][2] = {
		{ 0x20, 0x7E }, { 0x20, 0x7E }, { 0x20, 0x7E }, { 'a', 'z' },
		{ '0', '9' }, { 0x09, 0x0D }, { 0xA0, 0x17F }, { 0x370, 0x3FF },
		{ 0x400, 0x4FF }, { 0x660, 0x669 }, { 0x2000, 0x206F },
		{ 0x3000, 0x303F }, { 0x4E00, 0x9FFF }, { 0xAC00, 0xD7A3 },
		{ 0x1F300, 0x1FAFF }, { 0x10000, 0x3FFFF }
	};
	uint32_t r = rnd() % (sizeof pick / sizeof pick[0]), c;

	do
		c = pick[r][0] + rnd() % (pick[r][1] - pick[r][0] + 1);
	while (c >= 0xD800 && c <= 0xDFFF);
	return c;
}

/*
 * Round trips of random valid UTF-8 (code points below U+40000: this
 * vocabulary has no tokens for the lead bytes 0xF1 and 0xF2).  Random
 * bytes cannot round-trip (stray bytes become U+FFFD, bytes without a
 * token are dropped; the "invalid" golden case checks that against the
 * reference); here they must encode to valid ids, the same with and
 * without room for the output.
 */
static void
check_random_round_trips(const kvx_tokenizer *t)
{
	static char s[4096];
	int good = 0, bytes_good = 0, n_cases = 300;

	for (int c = 0; c < n_cases; c++) {
		size_t n = 0, want = 1 + rnd() % 200;

		while (n + 4 < sizeof s && want-- > 0)
			n += uc_encode(random_cp(), s + n);
		good += round_trip(t, s, n, c & 1);
	}
	ok(good == n_cases, "random UTF-8: %d/%d round trips", good, n_cases);
	for (int c = 0; c < n_cases; c++) {
		static int32_t a[1024];
		size_t n = 1 + rnd() % 300;
		int na, nq, good = 1;

		for (size_t i = 0; i < n; i++)
			s[i] = (char)rnd();
		if (tok_encode(t, s, n, c & 1, a, 1024, &na) != KVX_OK ||
		    tok_encode(t, s, n, c & 1, NULL, 0, &nq) !=
		    (na ? KVX_ERR_CAPACITY : KVX_OK) || nq != na)
			continue;
		for (int i = 0; i < na; i++)
			good &= a[i] >= 0 && a[i] < tok_n_vocab(t);
		bytes_good += good;
	}
	ok(bytes_good == n_cases,
	    "random bytes: valid ids, count independent of room: %d/%d",
	    bytes_good, n_cases);
}

/* Special-token texts become their ids only with parse_special. */
static void
check_special(const kvx_tokenizer *t)
{
	static const char s[] = "a<|im_start|>b<|im_end|><|endoftext|>";
	int32_t ids[64];
	int n, i, found = 0;
	kvx_status st;

	ok(tok_encode(t, s, strlen(s), 1, ids, 64, &n) == KVX_OK && n == 5 &&
	    ids[1] == 1 && ids[3] == 2 && ids[4] == 0,
	    "special on: <|im_start|> <|im_end|> <|endoftext|> are 1 2 0");
	st = tok_encode(t, s, strlen(s), 0, ids, 64, &n);
	ok(st == KVX_OK && n > 5,
	    "special off: texts are split into ordinary tokens (%d)", n);
	for (i = 0; i < n; i++)
		found |= ids[i] <= 16;
	ok(!found, "special off: no control token ids");
}

/* Exact ChatML rendering, and its tokens as the reference's. */
static void
check_chat(const kvx_tokenizer *t, const char *chatml_golden)
{
	static const char want_default[] =
	    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
	    "trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
	    "What is the capital of France?<|im_end|>\n"
	    "<|im_start|>assistant\n";
	static const char want_sys[] =
	    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
	    "Hi\n<|im_end|>\n<|im_start|>assistant\n";
	char *out = NULL;

	ok(tok_chat_format(t, NULL, "What is the capital of France?",
	    &out) == KVX_OK && out != NULL && strcmp(out, want_default) == 0,
	    "chat format, default system: exact text");
	ok(out != NULL && strcmp(out, chatml_golden) == 0,
	    "chat format equals the golden chatml prompt");
	free(out);
	out = NULL;
	ok(tok_chat_format(t, "Be brief.", "Hi\n", &out) == KVX_OK &&
	    out != NULL && strcmp(out, want_sys) == 0,
	    "chat format, given system: exact text");
	free(out);
	ok(tok_chat_format(t, NULL, NULL, &out) == KVX_ERR_ARG,
	    "chat format without user message: KVX_ERR_ARG");
}

/* Capacity and argument handling of encode and piece. */
static void
check_contracts(const kvx_tokenizer *t)
{
	static const char s[] = "The quick brown fox jumps over the lazy dog.";
	int32_t ids[4];
	char buf[4];
	size_t len;
	kvx_status st;
	int n;

	st = tok_encode(t, s, strlen(s), 0, NULL, 0, &n);
	ok(st == KVX_ERR_CAPACITY && n == 10,
	    "size query: KVX_ERR_CAPACITY with n = 10 (%d)", n);
	ok(tok_encode(t, s, strlen(s), 0, ids, 4, &n) == KVX_ERR_CAPACITY &&
	    n == 10 && ids[0] == 504 && ids[3] == 16438,
	    "short buffer: first ids written, full count returned");
	ok(tok_encode(t, "", 0, 0, ids, 4, &n) == KVX_OK && n == 0,
	    "empty text: no tokens");
	ok(tok_piece(t, 504, buf, sizeof buf, &len) == KVX_OK && len == 3 &&
	    strcmp(buf, "The") == 0, "piece 504 = \"The\"");
	ok(tok_piece(t, 2365, buf, sizeof buf, &len) == KVX_ERR_CAPACITY &&
	    len == 6 && buf[0] == '\0',
	    "piece too long for buffer: KVX_ERR_CAPACITY, needed length");
	ok(tok_piece(t, 49152, buf, sizeof buf, &len) == KVX_ERR_ARG &&
	    tok_piece(t, -1, buf, sizeof buf, &len) == KVX_ERR_ARG,
	    "piece of an id outside the vocabulary: KVX_ERR_ARG");
}

/* --- synthetic GGUF ------------------------------------------------- */

struct wbuf {
	unsigned char	*p;
	size_t		 n, cap;
};

/* Append bytes to a growing buffer. */
static void
wput(struct wbuf *b, const void *p, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		if (b->p == NULL)
			abort();
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

/* Append a u32 / u64 / GGUF string. */
static void
wu32(struct wbuf *b, uint32_t v)
{
	wput(b, &v, 4);
}

static void
wu64(struct wbuf *b, uint64_t v)
{
	wput(b, &v, 8);
}

static void
wstr(struct wbuf *b, const char *s, size_t n)
{
	wu64(b, n);
	wput(b, s, n);
}

/* Key with a string value. */
static void
wkv_str(struct wbuf *b, const char *key, const char *v)
{
	wstr(b, key, strlen(key));
	wu32(b, GGUF_STR);
	wstr(b, v, strlen(v));
}

/* Key with an array of n strings, given as (pointer, length) pairs. */
static void
wkv_strs(struct wbuf *b, const char *key, char **v, size_t *len, size_t n)
{
	wstr(b, key, strlen(key));
	wu32(b, GGUF_ARR);
	wu32(b, GGUF_STR);
	wu64(b, n);
	for (size_t i = 0; i < n; i++)
		wstr(b, v[i], len[i]);
}

/* Header of a GGUF v3 file without tensors. */
static void
whead(struct wbuf *b, uint64_t n_kv)
{
	wput(b, "GGUF", 4);
	wu32(b, 3);
	wu64(b, 0);
	wu64(b, n_kv);
}

/* Pad to the default alignment, where the (empty) data section starts. */
static void
wpad(struct wbuf *b)
{
	static const char z[32];

	wput(b, z, (32 - b->n % 32) % 32);
}

/* Copy a string-array or 32-bit-integer-array kv of another file. */
static void
wkv_copy(struct wbuf *b, const gguf_kv *kv)
{
	wstr(b, kv->key.p, kv->key.len);
	wu32(b, GGUF_ARR);
	wu32(b, (uint32_t)kv->arr_type);
	wu64(b, kv->n);
	for (uint64_t i = 0; i < kv->n; i++) {
		if (kv->arr_type == GGUF_STR)
			wstr(b, kv->strs[i].p, kv->strs[i].len);
		else
			wput(b, kv->data + 4 * i, 4);
	}
}

/*
 * The model's tokenizer with another pre-tokenizer, against the ids
 * llama.cpp gives for the same change (tests/golden/tokens-PRE.txt).
 */
static void
check_pre_variants(const gguf_file *model, const char *model_path)
{
	static const char *pres[] = { "llama-bpe", "gpt-2", "default",
	    "qwen2" };
	const char *keys[] = { "tokenizer.ggml.tokens",
	    "tokenizer.ggml.token_type", "tokenizer.ggml.merges" };

	for (size_t v = 0; v < sizeof pres / sizeof pres[0]; v++) {
		struct wbuf b = { 0 };
		gguf_file *g = NULL;
		kvx_tokenizer *t = NULL;
		char name[64], path[2048];
		int good = 1;

		whead(&b, 5);
		wkv_str(&b, "tokenizer.ggml.model", "gpt2");
		wkv_str(&b, "tokenizer.ggml.pre", pres[v]);
		for (int k = 0; k < 3; k++) {
			const gguf_kv *kv = gguf_find(model, keys[k]);

			if (kv == NULL || kv->type != GGUF_ARR ||
			    (kv->arr_type != GGUF_STR &&
			    kv->arr_type != GGUF_I32 &&
			    kv->arr_type != GGUF_U32))
				good = 0;
			else
				wkv_copy(&b, kv);
		}
		wpad(&b);
		if (!ok(good && gguf_open_mem(b.p, b.n, &g) == KVX_OK &&
		    tok_new(g, &t) == KVX_OK, "tokenizer with pre %s loads",
		    pres[v]))
			diag("%s", kvx_errmsg());
		else {
			snprintf(name, sizeof name, "tokens-%s.txt", pres[v]);
			golden_path(model_path, name, path, sizeof path);
			check_tokens_golden(t, path);
		}
		tok_free(&t);
		gguf_close(&g);
		free(b.p);
	}
}

/* The qwen2 pre-tokenizer on the tiny vocabulary: digits stay single
 * even where a merge joins them, words still merge. */
static void
check_tiny_qwen2(void)
{
	const char *top = getenv("top_srcdir");
	char path[1024];
	gguf_file *g = NULL;
	kvx_tokenizer *t = NULL;
	int32_t ids[16];
	int n = 0;

	snprintf(path, sizeof path, "%s/tests/data/tiny-qwen2.gguf",
	    top ? top : ".");
	if (!ok(gguf_open(path, &g) == KVX_OK && tok_new(g, &t) == KVX_OK,
	    "tiny qwen2 tokenizer loads")) {
		diag("%s", kvx_errmsg());
		gguf_close(&g);
		return;
	}
	/* ids: bytes in order, then the merges of make-tiny-qwen2.py */
	ok(tok_encode(t, "12", 2, 0, ids, 16, &n) == KVX_OK && n == 2 &&
	    ids[0] == '1' && ids[1] == '2',
	    "tiny qwen2: \"12\" is two digits despite the merge (1 2)");
	ok(tok_encode(t, " the hell", 9, 0, ids, 16, &n) == KVX_OK &&
	    n == 3 && ids[0] == 260 && ids[1] == ' ' && ids[2] == 258,
	    "tiny qwen2: \" the hell\" is \" the\", \" \", \"hell\" (no "
	    "merge joins a space to \"hell\")");
	tok_free(&t);
	gguf_close(&g);
}

/* Qwen2.5-Coder's tokenizer: ids, prompts and chat format as llama.cpp. */
static void
check_qwen2(void)
{
	static const char want_default[] =
	    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You "
	    "are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
	    "What is the capital of France?<|im_end|>\n"
	    "<|im_start|>assistant\n";
	const char *env = getenv("KVX_QWEN2_MODEL");
	char path[1024], gpath[2048], chatml[4096] = "", *out = NULL;
	gguf_file *g = NULL;
	kvx_tokenizer *t = NULL;
	FILE *f;

	if (env != NULL && *env != '\0')
		snprintf(path, sizeof path, "%s", env);
	else
		snprintf(path, sizeof path, "%s/models/" QWEN2_FILE,
		    getenv("top_srcdir") ? getenv("top_srcdir") : ".");
	if ((f = fopen(path, "rb")) == NULL) {
		ok(1, "qwen2 tokenizer # SKIP Qwen2.5-Coder not present "
		    "(tools/fetch-model --model qwen2.5-coder-0.5b)");
		return;
	}
	fclose(f);
	if (!ok(gguf_open(path, &g) == KVX_OK && tok_new(g, &t) == KVX_OK,
	    "qwen2: tok_new")) {
		diag("%s", kvx_errmsg());
		gguf_close(&g);
		return;
	}
	ok(tok_n_vocab(t) == 151936 && tok_bos(t) == 151643 &&
	    tok_eos(t) == 151645, "qwen2: vocabulary 151936, bos 151643, "
	    "eos 151645");
	ok(tok_is_eog(t, 151645) && tok_is_eog(t, 151643) &&
	    !tok_is_eog(t, 151644), "qwen2: eog <|im_end|>, <|endoftext|>");
	golden_path(path, "qwen2-tokens.txt", gpath, sizeof gpath);
	check_tokens_golden(t, gpath);
	golden_path(path, "qwen2-logits.txt", gpath, sizeof gpath);
	check_logits_prompts(t, gpath, chatml, sizeof chatml);
	ok(tok_chat_format(t, NULL, "What is the capital of France?",
	    &out) == KVX_OK && out != NULL && strcmp(out, want_default) == 0,
	    "qwen2: chat format, Qwen's default system message");
	ok(out != NULL && strcmp(out, chatml) == 0,
	    "qwen2: chat format equals the golden chatml prompt");
	free(out);
	tok_free(&t);
	gguf_close(&g);
}

/* The small SentencePiece vocabulary: ids as llama.cpp. */
static void
check_tiny_spm(void)
{
	const char *top = getenv("top_srcdir");
	char path[1024];
	gguf_file *g = NULL;
	kvx_tokenizer *t = NULL;

	snprintf(path, sizeof path, "%s/tests/data/tiny-spm.gguf",
	    top ? top : ".");
	if (!ok(gguf_open(path, &g) == KVX_OK && tok_new(g, &t) == KVX_OK,
	    "tiny SentencePiece vocabulary loads")) {
		diag("%s", kvx_errmsg());
		gguf_close(&g);
		return;
	}
	snprintf(path, sizeof path, "%s/tests/golden/tiny-spm-tokens.txt",
	    top ? top : ".");
	check_tokens_golden(t, path);
	tok_free(&t);
	gguf_close(&g);
}

/*
 * Gemma's chat turns against llama.cpp's (gemma3-chat.txt, written by
 * tools/make-chat-goldens.py): the exact text for each (system, user),
 * and BOS plus its ids as llama.cpp tokenizes the prompt.
 */
static void
check_chat_golden(const kvx_tokenizer *t, const char *path)
{
	static char line[65536], sys[8192], user[8192], text[16384];
	static int32_t want[MAXIDS], got[MAXIDS];
	char name[64], hs[16384], hu[16384], ht[32768];
	int cases = 0, bad = 0, n, i, off, k;
	char *out;
	FILE *f;

	if ((f = fopen(path, "r")) == NULL) {
		ok(0, "chat golden %s opens", path);
		return;
	}
	while (fgets(line, sizeof line, f) != NULL) {
		long ls, lu, lt;
		char *p;

		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (sscanf(line, "%63s %16383s %16383s %32767s %d%n", name, hs,
		    hu, ht, &n, &off) != 5 || n > MAXIDS) {
			bad++;
			continue;
		}
		cases++;
		ls = unhex(hs, sys, sizeof sys - 1);
		lu = unhex(hu, user, sizeof user - 1);
		lt = unhex(ht, text, sizeof text - 1);
		if (ls < 0 || lu < 0 || lt < 0) {
			bad++;
			continue;
		}
		sys[ls] = user[lu] = text[lt] = '\0';
		for (p = line + off, i = 0; i < n; i++)
			want[i] = (int32_t)strtol(p, &p, 10);
		out = NULL;
		if (tok_chat_format(t, strcmp(hs, "-") ? sys : NULL, user,
		    &out) != KVX_OK || strcmp(out, text) != 0) {
			diag("%s: text \"%s\"", name, out ? out : kvx_errmsg());
			bad++;
			free(out);
			continue;
		}
		k = 0;
		if (tok_add_bos(t))
			got[k++] = tok_bos(t);
		if (tok_encode(t, out, strlen(out), 1, got + k, MAXIDS - k,
		    &i) != KVX_OK || i + k != n ||
		    memcmp(got, want, sizeof *got * (size_t)n) != 0) {
			diag("%s: %d ids, want %d", name, i + k, n);
			bad++;
		}
		free(out);
	}
	fclose(f);
	ok(cases >= 5 && bad == 0, "gemma3 chat: %d prompts as llama.cpp "
	    "renders and tokenizes them, BOS first (%d bad)", cases, bad);
}

/* Gemma 3's SentencePiece tokenizer: ids as llama.cpp. */
static void
check_gemma3(void)
{
	const char *env = getenv("KVX_GEMMA3_MODEL");
	char path[1024], gpath[2048];
	gguf_file *g = NULL;
	kvx_tokenizer *t = NULL;
	int32_t ids[8];
	int n = 0;
	FILE *f;

	if (env != NULL && *env != '\0')
		snprintf(path, sizeof path, "%s", env);
	else
		snprintf(path, sizeof path, "%s/models/" GEMMA3_FILE,
		    getenv("top_srcdir") ? getenv("top_srcdir") : ".");
	if ((f = fopen(path, "rb")) == NULL) {
		ok(1, "gemma3 tokenizer # SKIP Gemma 3 not present "
		    "(tools/fetch-model --model gemma3-270m)");
		return;
	}
	fclose(f);
	if (!ok(gguf_open(path, &g) == KVX_OK && tok_new(g, &t) == KVX_OK,
	    "gemma3: tok_new (SentencePiece)")) {
		diag("%s", kvx_errmsg());
		gguf_close(&g);
		return;
	}
	ok(tok_n_vocab(t) == 262144 && tok_bos(t) == 2 && tok_eos(t) == 1,
	    "gemma3: vocabulary 262144, bos 2, eos 1");
	ok(tok_add_bos(t) == 1, "gemma3: texts start with BOS "
	    "(tokenizer.ggml.add_bos_token)");
	ok(tok_encode(t, "<end_of_turn>", 13, 1, ids, 8, &n) == KVX_OK &&
	    n == 1 && tok_is_eog(t, ids[0]) && tok_is_eog(t, 1) &&
	    !tok_is_eog(t, 2), "gemma3: eog <eos>, <end_of_turn>");
	golden_path(path, "gemma3-tokens.txt", gpath, sizeof gpath);
	check_tokens_golden(t, gpath);
	golden_path(path, "gemma3-chat.txt", gpath, sizeof gpath);
	check_chat_golden(t, gpath);
	tok_free(&t);
	gguf_close(&g);
}

/* Unsupported tokenizer model or pre-tokenizer: named in the message. */
static void
check_unsupported(void)
{
	const char *models[] = { "bert", "gpt2" };
	const char *pres[] = { "smollm", "no-such-pre" };
	const char *want[] = { "bert", "no-such-pre" };

	for (int c = 0; c < 2; c++) {
		struct wbuf b = { 0 };
		gguf_file *g = NULL;
		kvx_tokenizer *t = NULL;
		kvx_status st;

		whead(&b, 2);
		wkv_str(&b, "tokenizer.ggml.model", models[c]);
		wkv_str(&b, "tokenizer.ggml.pre", pres[c]);
		wpad(&b);
		if (!ok(gguf_open_mem(b.p, b.n, &g) == KVX_OK,
		    "synthetic gguf %d opens", c)) {
			diag("%s", kvx_errmsg());
			free(b.p);
			continue;
		}
		st = tok_new(g, &t);
		ok(st == KVX_ERR_UNSUPPORTED && t == NULL &&
		    strstr(kvx_errmsg(), want[c]) != NULL,
		    "tokenizer %s/%s: KVX_ERR_UNSUPPORTED naming '%s' (%s)",
		    models[c], pres[c], want[c], kvx_errmsg());
		gguf_close(&g);
		free(b.p);
	}
}

/* Reference BPE: repeatedly merge the adjacent pair of lowest rank,
 * leftmost first, by scanning every pair; ranks from a linear search. */
static int
brute_bpe(char **tok, size_t *tlen, int ntok, char **ma, char **mb,
    int nmerge, const char *w, size_t n, int *out)
{
	int ids[256], nid = (int)n;

	for (size_t i = 0; i < n; i++)
		ids[i] = (unsigned char)w[i] - 'a';
	for (;;) {
		int best = -1, at = -1;

		for (int i = 0; i + 1 < nid; i++)
			for (int r = 0; r < nmerge; r++)
				if (strcmp(tok[ids[i]], ma[r]) == 0 &&
				    strcmp(tok[ids[i + 1]], mb[r]) == 0) {
					if (best < 0 || r < best) {
						best = r;
						at = i;
					}
					break;
				}
		if (best < 0)
			break;
		{
			char cat[128];
			int id = -1;

			snprintf(cat, sizeof cat, "%s%s", ma[best], mb[best]);
			for (int k = 0; k < ntok; k++)
				if (strlen(cat) == tlen[k] &&
				    strcmp(tok[k], cat) == 0) {
					id = k;
					break;
				}
			ids[at] = id;
			memmove(ids + at + 1, ids + at + 2,
			    (size_t)(nid - at - 2) * sizeof(int));
			nid--;
		}
	}
	memcpy(out, ids, (size_t)nid * sizeof(int));
	return nid;
}

/*
 * A small vocabulary (bytes 'a'..'e' as the first tokens, then every
 * other byte, then random merges) against the brute-force BPE on random
 * words of a..e, which the pre-tokenizer keeps whole.
 */
static void
check_bpe_brute_force(void)
{
	enum { NMERGE = 120, NCASE = 300 };
	char *tok[256 + NMERGE], *ma[NMERGE], *mb[NMERGE], *mstr[NMERGE];
	size_t tlen[256 + NMERGE], mlen[NMERGE];
	int ntok = 0, nmerge = 0, good = 0;
	struct wbuf b = { 0 };
	gguf_file *g = NULL;
	kvx_tokenizer *t = NULL;

	/* Byte-level stand-ins: 'a'..'e' map to themselves. */
	for (int c = 0; c < 5; c++) {
		tok[ntok] = malloc(2);
		tok[ntok][0] = (char)('a' + c);
		tok[ntok][1] = '\0';
		tlen[ntok++] = 1;
	}
	for (int byte = 0, n = 0; byte < 256; byte++) {
		uint32_t cp;
		char u[5];
		size_t k;

		if (byte >= 'a' && byte <= 'e')
			continue;
		if ((byte >= 0x21 && byte <= 0x7E) ||
		    (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE)
			cp = (uint32_t)byte;
		else
			cp = 256 + (uint32_t)n++;
		k = uc_encode(cp, u);
		u[k] = '\0';
		tok[ntok] = strdup(u);
		tlen[ntok++] = k;
	}
	/* The first merges overlap with themselves ("aaa", "bbb"), so that
	 * the leftmost-first rule decides ties. */
	while (nmerge < NMERGE) {
		int x = (int)(rnd() % (5 + nmerge)), y = (int)(rnd() %
		    (5 + nmerge)), dup = 0;
		char cat[128];

		if (nmerge < 2)
			x = y = nmerge;
		x = x < 5 ? x : 256 + (x - 5);
		y = y < 5 ? y : 256 + (y - 5);
		if (tlen[x] + tlen[y] > 24)
			continue;
		snprintf(cat, sizeof cat, "%s%s", tok[x], tok[y]);
		for (int k = 0; k < ntok && !dup; k++)
			dup = strcmp(tok[k], cat) == 0;
		if (dup)
			continue;
		ma[nmerge] = tok[x];
		mb[nmerge] = tok[y];
		mstr[nmerge] = malloc(strlen(cat) + 2);
		snprintf(mstr[nmerge], strlen(cat) + 2, "%s %s", tok[x],
		    tok[y]);
		mlen[nmerge] = strlen(mstr[nmerge]);
		tok[ntok] = strdup(cat);
		tlen[ntok++] = strlen(cat);
		nmerge++;
	}
	whead(&b, 4);
	wkv_str(&b, "tokenizer.ggml.model", "gpt2");
	wkv_str(&b, "tokenizer.ggml.pre", "gpt-2");
	wkv_strs(&b, "tokenizer.ggml.tokens", tok, tlen, (size_t)ntok);
	wkv_strs(&b, "tokenizer.ggml.merges", mstr, mlen, (size_t)nmerge);
	wpad(&b);
	if (!ok(gguf_open_mem(b.p, b.n, &g) == KVX_OK &&
	    tok_new(g, &t) == KVX_OK, "synthetic BPE vocabulary loads"))
		diag("%s", kvx_errmsg());
	else {
		for (int c = 0; c < NCASE; c++) {
			char w[200];
			int32_t got[200];
			int want[200], nw, ng, same;
			size_t n = 1 + rnd() % 60;

			for (size_t i = 0; i < n; i++)
				w[i] = (char)('a' + rnd() % 5);
			nw = brute_bpe(tok, tlen, ntok, ma, mb, nmerge, w, n,
			    want);
			same = tok_encode(t, w, n, 0, got, 200, &ng) ==
			    KVX_OK && ng == nw;
			for (int i = 0; same && i < nw; i++)
				same = got[i] == want[i];
			good += same;
		}
		ok(good == NCASE, "BPE merges as brute force: %d/%d words",
		    good, NCASE);
	}
	tok_free(&t);
	gguf_close(&g);
	free(b.p);
	for (int i = 0; i < ntok; i++)
		free(tok[i]);
	for (int i = 0; i < nmerge; i++)
		free(mstr[i]);
}

/* About 200 KB of mixed text must tokenize in well under two seconds. */
static void
check_speed(const kvx_tokenizer *t)
{
	static const char *parts[] = {
		"The lighthouse stood on a spit of black rock at the mouth of "
		    "the bay, and for ninety years its keepers had written. ",
		"def f(x):\n    return [i**2 for i in range(x)]\n",
		"Caf\xc3\xa9 na\xc3\xafve \xe6\x9d\xb1\xe4\xba\xac "
		    "\xf0\x9f\x98\x80 1234567 3.14159\t\t\n",
		"don't I'll we've <|im_start|>user\n  trailing   \n"
	};
	size_t cap = 200 * 1024, n = 0;
	char *s = malloc(cap + 256);
	int32_t *ids;
	int k = 0;
	double t0, dt;
	kvx_status st;

	while (n < cap) {
		const char *p = parts[rnd() % 4];
		size_t l = strlen(p);

		memcpy(s + n, p, l);
		n += l;
	}
	ids = malloc(n * sizeof(int32_t));
	t0 = kvx__now();
	st = tok_encode(t, s, n, 1, ids, (int)n, &k);
	dt = kvx__now() - t0;
	diag("tokenized %zu bytes into %d tokens in %.3f s (%.0f tokens/s, "
	    "%.1f MB/s)", n, k, dt, k / (dt > 0 ? dt : 1e-9),
	    n / 1e6 / (dt > 0 ? dt : 1e-9));
	ok(st == KVX_OK && dt < 2.0, "200 KB in under 2 s (%.3f s)", dt);
	ok(round_trip(t, s, n > 8000 ? 8000 : n, 1),
	    "the mixed text round-trips");
	free(ids);
	free(s);
}

int
main(void)
{
	const char *model = tap_model_path();
	gguf_file *g = NULL;
	kvx_tokenizer *t = NULL;
	char path[2048], chatml[4096] = "";

	check_tiny_qwen2();
	check_tiny_spm();
	check_qwen2();
	check_gemma3();
	if (model == NULL) {
		ok(1, "SmolLM2 tokenizer # SKIP model not found (set "
		    "KVX_MODEL)");
		return tap_done();
	}
	check_unsupported();
	check_bpe_brute_force();
	if (!ok(gguf_open(model, &g) == KVX_OK, "open %s", model)) {
		diag("%s", kvx_errmsg());
		return tap_done();
	}
	if (!ok(tok_new(g, &t) == KVX_OK, "tok_new")) {
		diag("%s", kvx_errmsg());
		gguf_close(&g);
		return tap_done();
	}
	ok(tok_n_vocab(t) == 49152 && tok_bos(t) == 1 && tok_eos(t) == 2,
	    "vocabulary 49152, bos 1, eos 2");
	ok(tok_add_bos(t) == 0, "no BOS before a text (add_bos_token false)");
	ok(tok_is_eog(t, 2) && tok_is_eog(t, 0) && !tok_is_eog(t, 1) &&
	    !tok_is_eog(t, 504), "eog: <|im_end|> and <|endoftext|> only");

	golden_path(model, "tokens.txt", path, sizeof path);
	check_tokens_golden(t, path);
	golden_path(model, "logits.txt", path, sizeof path);
	check_logits_prompts(t, path, chatml, sizeof chatml);
	check_special(t);
	check_chat(t, chatml);
	check_contracts(t);
	check_random_round_trips(t);
	check_speed(t);
	check_pre_variants(g, model);

	tok_free(&t);
	ok(t == NULL, "tok_free clears the handle");
	gguf_close(&g);
	return tap_done();
}
