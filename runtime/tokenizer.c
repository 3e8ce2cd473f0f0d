/*
 * tokenizer.c - byte-level BPE (GPT-2 style) and SentencePiece (SPM)
 * tokenizers built from GGUF metadata.
 * SPDX-License-Identifier: MIT
 *
 * Encoding runs in three stages, matching llama.cpp's reading of the same
 * metadata:
 *   1. special-token texts are cut out of the raw text, longest first;
 *   2. each remaining fragment is split into words by the pre-tokenizer
 *      the model names (tokenizer.ggml.pre), hand-written matchers that
 *      behave like its regular expressions over code points;
 *   3. each word's bytes are mapped to their printable stand-ins and
 *      merged by BPE, lowest merge rank first, leftmost on ties.
 * Like llama.cpp, a byte that is not part of a UTF-8 sequence becomes
 * U+FFFD, and a byte the vocabulary has no token for is dropped; valid
 * UTF-8 whose bytes all have tokens decodes back to itself.
 *
 * An SPM vocabulary (tokenizer.ggml.model "llama", as Gemma's) keeps
 * stage 1, then runs llama.cpp's SPM algorithm on each fragment: spaces
 * become U+2581, the fragment is split into UTF-8 characters, and the
 * adjacent pair whose joined text is the token of highest score is
 * merged, leftmost on ties, until no pair forms a token; a character that
 * is no token becomes its bytes' <0xXX> tokens.
 */
#include "config.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "tokenizer.h"
#include "unicode.h"
#include "util.h"

/* tokenizer.ggml.token_type values */
enum {
	TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4,
	TT_UNUSED = 5, TT_BYTE = 6
};

enum pre_kind {
	PRE_DEFAULT,	/* punctuation runs, GPT-2, number runs, 3 digits */
	PRE_GPT2,	/* the GPT-2 expression alone */
	PRE_STARCODER,	/* single numbers, then GPT-2 */
	PRE_LLAMA3,	/* the Llama 3 expression, whole-word lookup first */
	PRE_QWEN2	/* the Llama 3 expression with single digits */
};

static const struct {
	const char	*name;
	int		 kind;
} pre_names[] = {
	{ "default", PRE_DEFAULT },
	{ "gpt-2", PRE_GPT2 }, { "gpt2", PRE_GPT2 }, { "phi-2", PRE_GPT2 },
	{ "roberta-bpe", PRE_GPT2 }, { "mpt", PRE_GPT2 }, { "olmo", PRE_GPT2 },
	{ "jais", PRE_GPT2 },
	{ "smollm", PRE_STARCODER }, { "starcoder", PRE_STARCODER },
	{ "refact", PRE_STARCODER }, { "command-r", PRE_STARCODER },
	{ "codeshell", PRE_STARCODER }, { "exaone", PRE_STARCODER },
	{ "minerva-7b", PRE_STARCODER },
	{ "llama3", PRE_LLAMA3 }, { "llama-v3", PRE_LLAMA3 },
	{ "llama-bpe", PRE_LLAMA3 },
	{ "qwen2", PRE_QWEN2 }, { "deepseek-r1-qwen", PRE_QWEN2 }
};

enum chat_kind { CHAT_NONE, CHAT_CHATML };

/* Texts of tokens that end a turn in the common chat formats. */
static const char *const eog_texts[] = {
	"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>",
	"<|end|>", "<end_of_turn>", "<EOT>", "_<EOT>"
};
#define MAX_EOG	16

struct merge_slot {
	uint32_t	a, b;		/* left and right token ids */
	int32_t		rank;		/* -1: empty slot */
	int32_t		res;		/* the merged token */
};

struct kvx_tokenizer {
	int		 n_vocab;
	char		*text;		/* token texts, each NUL-terminated */
	uint32_t	*text_off;
	uint32_t	*text_len;
	char		*piece;		/* bytes each token decodes to */
	uint32_t	*piece_off;
	uint32_t	*piece_len;
	uint8_t		*type;
	int32_t		*vtab;		/* text -> id, open addressing */
	uint32_t	 vmask;
	struct merge_slot *mtab;	/* (left, right) -> rank, result */
	uint32_t	 mmask;
	int32_t		 byte_tok[256];	/* token of each single byte, or -1 */
	uint16_t	 byte_cp[256];	/* printable stand-in of each byte */
	int		 spm;		/* SentencePiece vocabulary */
	float		*score;		/* SPM: each token's merge score */
	int		 pre;
	int32_t		*special;	/* matched in raw text, longest first */
	int		 n_special;
	int32_t		 bos, eos;
	int32_t		 eog[MAX_EOG];
	int		 n_eog;
	int		 chat;
	char		*chat_system;	/* template's default system text */
};

/* ------------------------------------------------------------------ */
/* hashing */

/* FNV-1a over a byte string. */
static uint32_t
hash_bytes(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint32_t h = 2166136261u;

	while (n-- > 0)
		h = (h ^ *s++) * 16777619u;
	return h;
}

/* Mix of a token pair for the merge table. */
static uint32_t
hash_pair(uint32_t a, uint32_t b)
{
	uint64_t x = ((uint64_t)a << 32 | b) * 0x9E3779B97F4A7C15ull;

	return (uint32_t)(x >> 32);
}

/* Id of the token whose text is s[0..n), or -1. */
static int32_t
vocab_find(const kvx_tokenizer *t, const char *s, size_t n)
{
	uint32_t i = hash_bytes(s, n) & t->vmask;
	int32_t id;

	while ((id = t->vtab[i]) >= 0) {
		if (t->text_len[id] == n &&
		    memcmp(t->text + t->text_off[id], s, n) == 0)
			return id;
		i = (i + 1) & t->vmask;
	}
	return -1;
}

/* Slot of the pair (a, b): the matching one, or the empty one that ends
 * its probe sequence. */
static struct merge_slot *
merge_slot(const kvx_tokenizer *t, uint32_t a, uint32_t b)
{
	uint32_t i = hash_pair(a, b) & t->mmask;
	struct merge_slot *m;

	for (;;) {
		m = &t->mtab[i];
		if (m->rank < 0 || (m->a == a && m->b == b))
			return m;
		i = (i + 1) & t->mmask;
	}
}

/* Smallest power of two >= 2n, at least 16. */
static uint32_t
table_size(size_t n)
{
	uint32_t s = 16;

	while (s < 2 * n)
		s <<= 1;
	return s;
}

/* ------------------------------------------------------------------ */
/* loading */

/* The GPT-2 byte <-> printable code point table: printable Latin-1 bytes
 * stand for themselves, the rest take U+0100 onwards in byte order. */
static void
init_byte_map(kvx_tokenizer *t)
{
	int n = 0;

	for (int b = 0; b < 256; b++) {
		if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) ||
		    (b >= 0xAE && b <= 0xFF))
			t->byte_cp[b] = (uint16_t)b;
		else
			t->byte_cp[b] = (uint16_t)(256 + n++);
	}
}

/* Value of the scalar integer kv (any integer type), or def. */
static int64_t
kv_int(const gguf_file *f, const char *key, int64_t def)
{
	const gguf_kv *kv = gguf_find(f, key);

	if (kv == NULL)
		return def;
	switch (kv->type) {
	case GGUF_U8: case GGUF_U16: case GGUF_U32: case GGUF_U64:
		return kv->v.u > INT32_MAX ? def : (int64_t)kv->v.u;
	case GGUF_I8: case GGUF_I16: case GGUF_I32: case GGUF_I64:
		return kv->v.i;
	}
	return def;
}

/* Element i of an integer array kv. */
static int64_t
arr_int(const gguf_kv *kv, uint64_t i)
{
	const uint8_t *p = kv->data;
	uint32_t u32;
	uint16_t u16;
	uint64_t u64;

	switch (kv->arr_type) {
	case GGUF_U8:	return p[i];
	case GGUF_I8:	return (int8_t)p[i];
	case GGUF_U16:	memcpy(&u16, p + 2 * i, 2); return u16;
	case GGUF_I16:	memcpy(&u16, p + 2 * i, 2); return (int16_t)u16;
	case GGUF_U32:	memcpy(&u32, p + 4 * i, 4); return u32;
	case GGUF_I32:	memcpy(&u32, p + 4 * i, 4); return (int32_t)u32;
	case GGUF_U64: case GGUF_I64:
		memcpy(&u64, p + 8 * i, 8);
		return (int64_t)u64;
	}
	return TT_NORMAL;
}

/* Bytes a token of the given type and text decodes to, written to out
 * (room for n bytes always suffices); returns the length. */
static size_t
decode_text(const int16_t *cp_byte, int spm, int type,
    const char *s, size_t n, char *out)
{
	size_t i = 0, o = 0, k;
	uint32_t cp;

	if (type == TT_UNUSED)
		return 0;
	if (type == TT_BYTE && n == 6 && memcmp(s, "<0x", 3) == 0 &&
	    s[5] == '>') {
		char hex[3] = { s[3], s[4], 0 }, *end;
		long v = strtol(hex, &end, 16);

		if (*end == '\0') {
			out[0] = (char)v;
			return 1;
		}
	}
	if (type != TT_NORMAL) {
		memcpy(out, s, n);
		return n;
	}
	/* SPM texts are the bytes, with U+2581 standing for a space */
	while (spm && i < n) {
		if (i + 3 <= n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
			out[o++] = ' ';
			i += 3;
		} else
			out[o++] = s[i++];
	}
	while (i < n) {
		k = uc_decode((const unsigned char *)s + i, n - i, &cp);
		if (cp < 0x144 && cp_byte[cp] >= 0)
			out[o++] = (char)cp_byte[cp];
		else {
			memcpy(out + o, s + i, k);
			o += k;
		}
		i += k;
	}
	return o;
}

/* Copy the vocabulary, build the text -> id table and the pieces. */
static kvx_status
load_vocab(kvx_tokenizer *t, const gguf_file *f)
{
	const gguf_kv *tok = gguf_find(f, "tokenizer.ggml.tokens");
	const gguf_kv *typ = gguf_find(f, "tokenizer.ggml.token_type");
	int16_t cp_byte[0x144];
	size_t total = 0, o = 0, po = 0;
	int n;

	if (tok == NULL || tok->type != GGUF_ARR || tok->strs == NULL)
		return kvx__fail(KVX_ERR_FORMAT,
		    "tokenizer.ggml.tokens missing or not a string array");
	if (tok->n == 0 || tok->n > INT32_MAX / 2)
		return kvx__fail(KVX_ERR_FORMAT,
		    "tokenizer.ggml.tokens: bad size %llu",
		    (unsigned long long)tok->n);
	if (typ != NULL && (typ->type != GGUF_ARR || typ->n != tok->n ||
	    typ->arr_type == GGUF_STR || typ->arr_type == GGUF_F32 ||
	    typ->arr_type == GGUF_F64 || typ->arr_type == GGUF_BOOL ||
	    typ->arr_type == GGUF_ARR))
		return kvx__fail(KVX_ERR_FORMAT,
		    "tokenizer.ggml.token_type is not an integer array of "
		    "%llu entries", (unsigned long long)tok->n);
	n = t->n_vocab = (int)tok->n;
	for (int i = 0; i < n; i++) {
		if (tok->strs[i].len > UINT32_MAX / 4)
			return kvx__fail(KVX_ERR_FORMAT,
			    "token %d: text too long", i);
		total += tok->strs[i].len + 1;
	}
	if (total > UINT32_MAX / 2)
		return kvx__fail(KVX_ERR_FORMAT, "token texts too large");
	t->text = malloc(total);
	t->piece = malloc(total);
	t->text_off = kvx__malloc_array(n, sizeof(uint32_t));
	t->text_len = kvx__malloc_array(n, sizeof(uint32_t));
	t->piece_off = kvx__malloc_array(n, sizeof(uint32_t));
	t->piece_len = kvx__malloc_array(n, sizeof(uint32_t));
	t->type = kvx__malloc_array(n, 1);
	t->vmask = table_size(n) - 1;
	t->vtab = kvx__malloc_array((size_t)t->vmask + 1, sizeof(int32_t));
	if (!t->text || !t->piece || !t->text_off || !t->text_len ||
	    !t->piece_off || !t->piece_len || !t->type || !t->vtab)
		return kvx__fail(KVX_ERR_NOMEM, "tokenizer: out of memory");
	memset(t->vtab, 0xFF, ((size_t)t->vmask + 1) * sizeof(int32_t));

	init_byte_map(t);
	memset(cp_byte, 0xFF, sizeof cp_byte);
	for (int b = 0; b < 256; b++)
		cp_byte[t->byte_cp[b]] = (int16_t)b;

	for (int i = 0; i < n; i++) {
		const gguf_str *s = &tok->strs[i];
		int64_t ty = typ ? arr_int(typ, i) : TT_NORMAL;
		uint32_t h;

		t->type[i] = (ty >= TT_NORMAL && ty <= TT_BYTE) ?
		    (uint8_t)ty : TT_NORMAL;
		t->text_off[i] = (uint32_t)o;
		t->text_len[i] = (uint32_t)s->len;
		if (s->len > 0)
			memcpy(t->text + o, s->p, s->len);
		t->text[o + s->len] = '\0';
		t->piece_off[i] = (uint32_t)po;
		t->piece_len[i] = (uint32_t)decode_text(cp_byte, t->spm,
		    t->type[i], s->p, s->len, t->piece + po);
		po += t->piece_len[i];
		o += s->len + 1;
		/* The first of duplicate texts wins, as in llama.cpp. */
		if (vocab_find(t, s->p, s->len) >= 0)
			continue;
		h = hash_bytes(s->p, s->len) & t->vmask;
		while (t->vtab[h] >= 0)
			h = (h + 1) & t->vmask;
		t->vtab[h] = i;
	}

	for (int b = 0; b < 256; b++) {
		char u[8];
		size_t k = uc_encode(t->byte_cp[b], u);

		/* SPM falls back on the <0xXX> tokens */
		if (t->spm)
			k = (size_t)snprintf(u, sizeof u, "<0x%02X>", b);
		t->byte_tok[b] = vocab_find(t, u, k);
	}
	return KVX_OK;
}

/* SPM: the merge score of every token (tokenizer.ggml.scores). */
static kvx_status
load_scores(kvx_tokenizer *t, const gguf_file *f)
{
	const gguf_kv *kv = gguf_find(f, "tokenizer.ggml.scores");

	if (kv == NULL || kv->type != GGUF_ARR || kv->arr_type != GGUF_F32 ||
	    kv->n != (uint64_t)t->n_vocab)
		return kvx__fail(KVX_ERR_FORMAT, "tokenizer.ggml.scores "
		    "missing or not %d floats", t->n_vocab);
	if ((t->score = kvx__malloc_array(t->n_vocab, sizeof(float))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "tokenizer: out of memory");
	memcpy(t->score, kv->data, (size_t)t->n_vocab * sizeof(float));
	return KVX_OK;
}

/* Build the (left, right) -> rank table from tokenizer.ggml.merges. */
static kvx_status
load_merges(kvx_tokenizer *t, const gguf_file *f)
{
	const gguf_kv *kv = gguf_find(f, "tokenizer.ggml.merges");
	char *buf = NULL;
	size_t bufsz = 0;

	if (kv == NULL || kv->type != GGUF_ARR || kv->strs == NULL)
		return kvx__fail(KVX_ERR_FORMAT,
		    "tokenizer.ggml.merges missing or not a string array");
	if (kv->n > INT32_MAX / 4)
		return kvx__fail(KVX_ERR_FORMAT, "too many merges");
	t->mmask = table_size(kv->n) - 1;
	t->mtab = kvx__malloc_array((size_t)t->mmask + 1, sizeof(*t->mtab));
	if (t->mtab == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "tokenizer: out of memory");
	for (size_t i = 0; i <= t->mmask; i++)
		t->mtab[i].rank = -1;

	for (uint64_t r = 0; r < kv->n; r++) {
		const gguf_str *s = &kv->strs[r];
		const char *sp = s->len > 1 ? memchr(s->p + 1, ' ',
		    s->len - 1) : NULL;
		size_t la, lb;
		int32_t a, b, res;
		struct merge_slot *m;

		if (sp == NULL)
			continue;
		la = (size_t)(sp - s->p);
		lb = s->len - la - 1;
		if (la + lb > bufsz) {
			free(buf);
			bufsz = 2 * (la + lb);
			if ((buf = malloc(bufsz)) == NULL)
				return kvx__fail(KVX_ERR_NOMEM,
				    "tokenizer: out of memory");
		}
		memcpy(buf, s->p, la);
		memcpy(buf + la, sp + 1, lb);
		a = vocab_find(t, s->p, la);
		b = vocab_find(t, sp + 1, lb);
		res = vocab_find(t, buf, la + lb);
		/* A merge whose parts or result are not tokens can never
		 * produce a token; the first of duplicate merges wins. */
		if (a < 0 || b < 0 || res < 0)
			continue;
		m = merge_slot(t, (uint32_t)a, (uint32_t)b);
		if (m->rank >= 0)
			continue;
		m->a = (uint32_t)a;
		m->b = (uint32_t)b;
		m->rank = (int32_t)r;
		m->res = res;
	}
	free(buf);
	return KVX_OK;
}

struct special_key {
	uint32_t	len;
	int32_t		id;
};

/* Order of special tokens: longer texts first, then lower ids. */
static int
special_cmp(const void *x, const void *y)
{
	const struct special_key *a = x, *b = y;

	if (a->len != b->len)
		return a->len > b->len ? -1 : 1;
	return (a->id > b->id) - (a->id < b->id);
}

/* Special tokens, end-of-generation set, BOS/EOS. */
static kvx_status
load_specials(kvx_tokenizer *t, const gguf_file *f)
{
	static const char *const eog_keys[] = {
		"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
		"tokenizer.ggml.eom_token_id"
	};
	struct special_key *keys;
	int n = 0;

	for (int i = 0; i < t->n_vocab; i++)
		if ((t->type[i] == TT_CONTROL || t->type[i] == TT_USER ||
		    t->type[i] == TT_UNKNOWN) && t->text_len[i] > 0)
			n++;
	t->special = kvx__malloc_array(n, sizeof(int32_t));
	keys = kvx__malloc_array(n, sizeof(*keys));
	if (t->special == NULL || keys == NULL) {
		free(keys);
		return kvx__fail(KVX_ERR_NOMEM, "tokenizer: out of memory");
	}
	for (int i = 0, k = 0; i < t->n_vocab; i++)
		if ((t->type[i] == TT_CONTROL || t->type[i] == TT_USER ||
		    t->type[i] == TT_UNKNOWN) && t->text_len[i] > 0) {
			keys[k].len = t->text_len[i];
			keys[k++].id = i;
		}
	qsort(keys, n, sizeof(*keys), special_cmp);
	for (int k = 0; k < n; k++)
		t->special[k] = keys[k].id;
	t->n_special = n;
	free(keys);

	t->bos = (int32_t)kv_int(f, "tokenizer.ggml.bos_token_id", -1);
	t->eos = (int32_t)kv_int(f, "tokenizer.ggml.eos_token_id", -1);
	if (t->bos >= t->n_vocab)
		t->bos = -1;
	if (t->eos >= t->n_vocab)
		t->eos = -1;
	for (size_t k = 0; k < sizeof eog_keys / sizeof eog_keys[0]; k++) {
		int64_t id = kv_int(f, eog_keys[k], -1);

		if (id >= 0 && id < t->n_vocab && t->n_eog < MAX_EOG)
			t->eog[t->n_eog++] = (int32_t)id;
	}
	for (size_t k = 0; k < sizeof eog_texts / sizeof eog_texts[0]; k++) {
		int32_t id = vocab_find(t, eog_texts[k], strlen(eog_texts[k]));

		if (id >= 0 && t->type[id] == TT_CONTROL &&
		    t->n_eog < MAX_EOG)
			t->eog[t->n_eog++] = id;
	}
	return KVX_OK;
}

/* Find needle in hay, or NULL. */
static const char *
find_bytes(const char *hay, size_t n, const char *needle, size_t k)
{
	const char *p = hay, *end = hay + n;

	if (k == 0 || k > n)
		return NULL;
	while ((size_t)(end - p) >= k &&
	    (p = memchr(p, needle[0], (size_t)(end - p) - k + 1)) != NULL) {
		if (memcmp(p, needle, k) == 0)
			return p;
		p++;
	}
	return NULL;
}

/* The literal default system message of a ChatML template: the first
 * text between "<|im_start|>system" plus a newline and "<|im_end|>" that
 * is plain text rather than an expression (Qwen's template writes the
 * system turn three times, and only the last is a literal). */
static kvx_status
chatml_default_system(kvx_tokenizer *t, const char *tpl, size_t n)
{
	static const char head[] = "<|im_start|>system";
	static const char tail[] = "<|im_end|>";
	const char *end = tpl + n, *at = tpl, *p, *q = NULL, *s;
	size_t o = 0;

	for (; (p = find_bytes(at, (size_t)(end - at), head,
	    sizeof head - 1)) != NULL; at = p) {
		p += sizeof head - 1;
		if (p < end && *p == '\n')
			p++;
		else if (p + 1 < end && p[0] == '\\' && p[1] == 'n')
			p += 2;
		else
			continue;
		if ((q = find_bytes(p, (size_t)(end - p), tail,
		    sizeof tail - 1)) == NULL)
			return KVX_OK;
		for (s = p; s < q; s++)
			if (*s == '\'' || *s == '"' || *s == '{' || *s == '}' ||
			    *s == '+')
				break;
		if (s == q)
			break;
	}
	if (p == NULL)
		return KVX_OK;
	if ((t->chat_system = malloc((size_t)(q - p) + 1)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "tokenizer: out of memory");
	for (s = p; s < q; s++) {
		if (s[0] == '\\' && s + 1 < q && s[1] == 'n') {
			t->chat_system[o++] = '\n';
			s++;
		} else
			t->chat_system[o++] = *s;
	}
	t->chat_system[o] = '\0';
	return KVX_OK;
}

/* Recognise the chat template. */
static kvx_status
load_chat(kvx_tokenizer *t, const gguf_file *f)
{
	const gguf_kv *kv = gguf_find(f, "tokenizer.chat_template");
	const char *s;
	size_t n;

	t->chat = CHAT_NONE;
	if (kv == NULL || kv->type != GGUF_STR)
		return KVX_OK;
	s = kv->v.s.p;
	n = kv->v.s.len;
	if (find_bytes(s, n, "<|im_start|>", 12) != NULL &&
	    find_bytes(s, n, "<|im_end|>", 10) != NULL) {
		t->chat = CHAT_CHATML;
		return chatml_default_system(t, s, n);
	}
	return KVX_OK;
}

/* Build a tokenizer from the model's metadata. */
kvx_status
tok_new(const gguf_file *f, kvx_tokenizer **out)
{
	const gguf_kv *model, *pre;
	kvx_tokenizer *t;
	kvx_status st;
	size_t i;

	if (f == NULL || out == NULL)
		return kvx__fail(KVX_ERR_ARG, "tok_new: NULL argument");
	*out = NULL;
	model = gguf_find(f, "tokenizer.ggml.model");
	if (model == NULL || model->type != GGUF_STR)
		return kvx__fail(KVX_ERR_FORMAT,
		    "tokenizer.ggml.model missing or not a string");
	if (!gguf_str_eq(model->v.s, "gpt2") &&
	    !gguf_str_eq(model->v.s, "llama"))
		return kvx__fail(KVX_ERR_UNSUPPORTED,
		    "tokenizer model '%.*s' is not supported ('gpt2', "
		    "byte-level BPE, or 'llama', SentencePiece)",
		    (int)(model->v.s.len > 64 ? 64 : model->v.s.len),
		    model->v.s.p);
	if ((t = calloc(1, sizeof *t)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "tokenizer: out of memory");
	t->spm = gguf_str_eq(model->v.s, "llama");
	t->pre = PRE_DEFAULT;
	/* llama.cpp splits SPM text on nothing but special tokens */
	pre = t->spm ? NULL : gguf_find(f, "tokenizer.ggml.pre");
	if (pre != NULL && pre->type == GGUF_STR) {
		for (i = 0; i < sizeof pre_names / sizeof pre_names[0]; i++)
			if (gguf_str_eq(pre->v.s, pre_names[i].name))
				break;
		if (i == sizeof pre_names / sizeof pre_names[0]) {
			tok_free(&t);
			return kvx__fail(KVX_ERR_UNSUPPORTED,
			    "pre-tokenizer '%.*s' is not supported (known: "
			    "default, gpt-2, smollm, starcoder, llama3, qwen2 "
			    "and their aliases)", (int)(pre->v.s.len > 64 ? 64 :
			    pre->v.s.len), pre->v.s.p);
		}
		t->pre = pre_names[i].kind;
	}
	if ((st = load_vocab(t, f)) != KVX_OK ||
	    (st = (t->spm ? load_scores(t, f) : load_merges(t, f))) !=
	    KVX_OK ||
	    (st = load_specials(t, f)) != KVX_OK ||
	    (st = load_chat(t, f)) != KVX_OK) {
		tok_free(&t);
		return st;
	}
	*out = t;
	return KVX_OK;
}

/* Free the tokenizer and clear the caller's pointer. */
void
tok_free(kvx_tokenizer **tp)
{
	kvx_tokenizer *t;

	if (tp == NULL || (t = *tp) == NULL)
		return;
	free(t->text);
	free(t->text_off);
	free(t->text_len);
	free(t->piece);
	free(t->piece_off);
	free(t->piece_len);
	free(t->type);
	free(t->vtab);
	free(t->mtab);
	free(t->special);
	free(t->chat_system);
	free(t->score);
	free(t);
	*tp = NULL;
}

/* Number of tokens. */
int
tok_n_vocab(const kvx_tokenizer *t)
{
	return t->n_vocab;
}

/* Beginning-of-sequence token, or -1. */
int32_t
tok_bos(const kvx_tokenizer *t)
{
	return t->bos;
}

/* End-of-sequence token, or -1. */
int32_t
tok_eos(const kvx_tokenizer *t)
{
	return t->eos;
}

/* Whether id ends a turn or the text. */
int
tok_is_eog(const kvx_tokenizer *t, int32_t id)
{
	for (int i = 0; i < t->n_eog; i++)
		if (t->eog[i] == id)
			return 1;
	return 0;
}

/* ------------------------------------------------------------------ */
/* encoding */

struct span {
	uint32_t	a, b;		/* code point range [a, b) */
};

struct sym {
	int32_t		id, prev, next;
};

struct heap_ent {
	int32_t		rank;
	uint32_t	left;		/* index of the left symbol */
	int32_t		lid, rid;	/* the pair's tokens when pushed */
};

/* SPM: a run of bytes of the escaped fragment, linked to its neighbours. */
struct spm_sym {
	uint32_t	off, n;		/* n 0: merged into its left */
	int32_t		prev, next;
};

/* SPM: a candidate merge of symbol left with the next one. */
struct spm_pair {
	float		score;
	uint32_t	left, size;	/* size: the joined bytes when pushed */
};

/* Scratch state of one tok_encode call. */
struct enc {
	const kvx_tokenizer *t;
	int32_t		*ids;
	int		 cap;
	long long	 n;
	/* code points of the current fragment, the fragment re-encoded from
	 * them, and each code point's offset there */
	uint32_t	*cp;
	char		*u8;
	uint32_t	*pos;
	size_t		 capcp, capu8, cappos;
	struct span	*sa, *sb;
	size_t		 na, nb, capsa, capsb;
	/* BPE symbols of the current word: token, neighbours */
	struct sym	*sym;
	size_t		 capsym;
	struct heap_ent	*heap;
	size_t		 nheap, capheap;
	char		*wbuf;
	size_t		 capw;
	/* SPM symbols and candidate merges */
	struct spm_sym	*ss;
	size_t		 capss;
	struct spm_pair	*sq;
	size_t		 nsq, capsq;
};

/* Grow *p to hold at least n elements of size sz. */
static int
grow(void *pp, size_t *cap, size_t n, size_t sz)
{
	void **p = pp, *q;
	size_t c = *cap ? *cap : 64;

	if (n <= *cap)
		return 0;
	while (c < n)
		c *= 2;
	if ((q = kvx__malloc_array(c, sz)) == NULL)
		return -1;
	if (*p != NULL && *cap > 0)
		memcpy(q, *p, *cap * sz);
	free(*p);
	*p = q;
	*cap = c;
	return 0;
}

/* Append one id to the output, counting past the capacity. */
static void
put_id(struct enc *E, int32_t id)
{
	if (E->n < E->cap)
		E->ids[E->n] = id;
	E->n++;
}

/* Whether heap entry x comes before y: lower rank, then further left. */
static int
heap_less(const struct heap_ent *x, const struct heap_ent *y)
{
	return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

/* Queue the merge of symbol l with its right neighbour, if one exists. */
static int
heap_push_pair(struct enc *E, int32_t l)
{
	const struct merge_slot *m;
	struct heap_ent e;
	size_t i;
	int32_t r;

	if (l < 0 || (r = E->sym[l].next) < 0 || E->sym[l].id < 0 ||
	    E->sym[r].id < 0)
		return 0;
	m = merge_slot(E->t, (uint32_t)E->sym[l].id, (uint32_t)E->sym[r].id);
	if (m->rank < 0)
		return 0;
	if (grow(&E->heap, &E->capheap, E->nheap + 1, sizeof(*E->heap)))
		return -1;
	e.rank = m->rank;
	e.left = (uint32_t)l;
	e.lid = E->sym[l].id;
	e.rid = E->sym[r].id;
	i = E->nheap++;
	while (i > 0 && heap_less(&e, &E->heap[(i - 1) / 2])) {
		E->heap[i] = E->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	E->heap[i] = e;
	return 0;
}

/* Remove the first heap entry into *out. */
static void
heap_pop(struct enc *E, struct heap_ent *out)
{
	struct heap_ent last;
	size_t i = 0, c;

	*out = E->heap[0];
	last = E->heap[--E->nheap];
	while ((c = 2 * i + 1) < E->nheap) {
		if (c + 1 < E->nheap && heap_less(&E->heap[c + 1], &E->heap[c]))
			c++;
		if (!heap_less(&E->heap[c], &last))
			break;
		E->heap[i] = E->heap[c];
		i = c;
	}
	E->heap[i] = last;
}

/* BPE-encode one word (raw bytes) and append its ids. */
static kvx_status
bpe_word(struct enc *E, const unsigned char *w, size_t n)
{
	const kvx_tokenizer *t = E->t;
	struct heap_ent e;
	int32_t i;

	if (n == 0)
		return KVX_OK;
	if (t->pre == PRE_LLAMA3) {
		size_t o = 0;
		int32_t id;

		if (grow(&E->wbuf, &E->capw, 2 * n, 1))
			return kvx__fail(KVX_ERR_NOMEM, "tokenize: out of memory");
		for (size_t k = 0; k < n; k++)
			o += uc_encode(t->byte_cp[w[k]], E->wbuf + o);
		if ((id = vocab_find(t, E->wbuf, o)) >= 0) {
			put_id(E, id);
			return KVX_OK;
		}
	}
	if (n == 1) {
		if (t->byte_tok[w[0]] >= 0)
			put_id(E, t->byte_tok[w[0]]);
		return KVX_OK;
	}
	if (grow(&E->sym, &E->capsym, n, sizeof(*E->sym)))
		return kvx__fail(KVX_ERR_NOMEM, "tokenize: out of memory");
	for (i = 0; i < (int32_t)n; i++) {
		E->sym[i].id = t->byte_tok[w[i]];
		E->sym[i].prev = i - 1;
		E->sym[i].next = i + 1 < (int32_t)n ? i + 1 : -1;
	}
	E->nheap = 0;
	for (i = 0; i + 1 < (int32_t)n; i++)
		if (heap_push_pair(E, i))
			return kvx__fail(KVX_ERR_NOMEM, "tokenize: out of memory");
	while (E->nheap > 0) {
		const struct merge_slot *m;
		int32_t l, r;

		heap_pop(E, &e);
		l = (int32_t)e.left;
		r = E->sym[l].next;
		/* Stale when either side has been merged since the push. */
		if (E->sym[l].id != e.lid || r < 0 || E->sym[r].id != e.rid)
			continue;
		m = merge_slot(t, (uint32_t)e.lid, (uint32_t)e.rid);
		E->sym[l].id = m->res;
		E->sym[r].id = -1;
		E->sym[l].next = E->sym[r].next;
		if (E->sym[r].next >= 0)
			E->sym[E->sym[r].next].prev = l;
		if (heap_push_pair(E, E->sym[l].prev) || heap_push_pair(E, l))
			return kvx__fail(KVX_ERR_NOMEM, "tokenize: out of memory");
	}
	for (i = 0; i >= 0; i = E->sym[i].next)
		if (E->sym[i].id >= 0)
			put_id(E, E->sym[i].id);
	return KVX_OK;
}

#define C_END	0x100		/* class of positions past the span */
#define IS_OTHER(k) (!((k) & (UC_LETTER | UC_NUMBER | UC_SPACE | C_END)))

/* Class bits of code point p, or C_END outside [., end). */
static inline unsigned
cls_at(const uint32_t *cp, size_t p, size_t end)
{
	return p < end ? uc_class(cp[p]) : C_END;
}

/* Append [*prev, p) to the span list when not empty. */
static inline void
emit(struct enc *E, size_t *prev, size_t p)
{
	if (p > *prev) {
		E->sb[E->nb].a = (uint32_t)*prev;
		E->sb[E->nb].b = (uint32_t)p;
		E->nb++;
	}
	*prev = p;
}

/* ASCII lower case, enough for the contraction suffixes. */
static inline uint32_t
lower(uint32_t c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/*
 * 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * over [ini, end); with ndig > 0, the Llama 3 family's expression
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,ndig}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * where Llama 3 takes numbers three digits at a time and Qwen2 one.
 */
static void
split_words(struct enc *E, size_t ini, size_t end, int ndig)
{
	const uint32_t *cp = E->cp;
	size_t pos = ini, prev = ini;

	while (pos < end) {
		uint32_t c = cp[pos], c1, c2;
		unsigned k = uc_class(c), k2;
		size_t nws, last_nl;

		if (c == '\'' && pos + 1 < end) {
			c1 = ndig ? lower(cp[pos + 1]) : cp[pos + 1];
			if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
				emit(E, &prev, pos += 2);
				continue;
			}
			if (pos + 2 < end) {
				c2 = ndig ? lower(cp[pos + 2]) : cp[pos + 2];
				if ((c1 == 'r' && c2 == 'e') ||
				    (c1 == 'v' && c2 == 'e') ||
				    (c1 == 'l' && c2 == 'l')) {
					emit(E, &prev, pos += 3);
					continue;
				}
			}
		}
		if (ndig) {
			if (c != '\r' && c != '\n' && !(k & UC_NUMBER) &&
			    ((k & UC_LETTER) ||
			    (cls_at(cp, pos + 1, end) & UC_LETTER))) {
				pos++;
				while (cls_at(cp, pos, end) & UC_LETTER)
					pos++;
				emit(E, &prev, pos);
				continue;
			}
			if (k & UC_NUMBER) {
				size_t i0 = pos;

				while (cls_at(cp, pos, end) & UC_NUMBER)
					if (++pos - i0 >= (size_t)ndig) {
						emit(E, &prev, pos);
						i0 = pos;
					}
				emit(E, &prev, pos);
				continue;
			}
		}
		k2 = c == ' ' ? cls_at(cp, pos + 1, end) : k;
		if (!ndig && (k2 & (UC_LETTER | UC_NUMBER))) {
			unsigned want = k2 & UC_LETTER ? UC_LETTER : UC_NUMBER;

			pos += c == ' ';
			while (cls_at(cp, pos, end) & want)
				pos++;
			emit(E, &prev, pos);
			continue;
		}
		if (IS_OTHER(k2)) {
			pos += c == ' ';
			while (IS_OTHER(cls_at(cp, pos, end)))
				pos++;
			if (ndig)
				while (pos < end &&
				    (cp[pos] == '\r' || cp[pos] == '\n'))
					pos++;
			emit(E, &prev, pos);
			continue;
		}
		nws = 0;
		last_nl = 0;
		while (cls_at(cp, pos + nws, end) & UC_SPACE) {
			if (cp[pos + nws] == '\r' || cp[pos + nws] == '\n')
				last_nl = pos + nws + 1;
			nws++;
		}
		if (ndig && last_nl > 0) {
			emit(E, &prev, pos = last_nl);
			continue;
		}
		if (nws > 1 && pos + nws < end) {
			emit(E, &prev, pos += nws - 1);
			continue;
		}
		if (nws > 0) {
			emit(E, &prev, pos += nws);
			continue;
		}
		emit(E, &prev, ++pos);
	}
}

enum run_class { RUN_NUMBER, RUN_PUNCT, RUN_DIGIT };

/* Whether code point c belongs to the run class. */
static inline int
in_run(uint32_t c, int rc)
{
	switch (rc) {
	case RUN_NUMBER:
		return (uc_class(c) & UC_NUMBER) != 0;
	case RUN_PUNCT:
		return (uc_class(c) & UC_PUNCT) || (c < 128 &&
		    strchr("$+<=>^~|", (int)c) != NULL && c != 0);
	default:
		return c >= '0' && c <= '9';
	}
}

/* Split [ini, end) at runs of the class, each run cut into pieces of at
 * most maxrun (0: unbounded); the text between runs stays whole. */
static void
split_runs(struct enc *E, size_t ini, size_t end, int rc, size_t maxrun)
{
	size_t pos = ini, prev = ini;

	while (pos < end) {
		size_t r0;

		if (!in_run(E->cp[pos], rc)) {
			pos++;
			continue;
		}
		emit(E, &prev, pos);
		r0 = pos;
		while (pos < end && in_run(E->cp[pos], rc) &&
		    (maxrun == 0 || pos - r0 < maxrun))
			pos++;
		emit(E, &prev, pos);
	}
	emit(E, &prev, end);
}

/* Swap the span lists so that the output of one pass feeds the next. */
static void
next_pass(struct enc *E)
{
	struct span *s = E->sa;
	size_t c = E->capsa;

	E->sa = E->sb;
	E->capsa = E->capsb;
	E->na = E->nb;
	E->sb = s;
	E->capsb = c;
	E->nb = 0;
}

/* Whether SPM pair x is taken before y: higher score, then further left. */
static int
spm_before(const struct spm_pair *x, const struct spm_pair *y)
{
	return x->score > y->score || (x->score == y->score &&
	    x->left < y->left);
}

/* Queue the merge of SPM symbol l with its right neighbour when the
 * joined text is a token. */
static int
spm_push(struct enc *E, int32_t l)
{
	const struct spm_sym *a, *b;
	struct spm_pair e;
	int32_t id;
	size_t i;

	if (l < 0 || E->ss[l].next < 0)
		return 0;
	a = &E->ss[l];
	b = &E->ss[a->next];
	if ((id = vocab_find(E->t, E->u8 + a->off, a->n + b->n)) < 0)
		return 0;
	if (grow(&E->sq, &E->capsq, E->nsq + 1, sizeof *E->sq))
		return -1;
	e.score = E->t->score[id];
	e.left = (uint32_t)l;
	e.size = a->n + b->n;
	for (i = E->nsq++; i > 0 && spm_before(&e, &E->sq[(i - 1) / 2]);
	    i = (i - 1) / 2)
		E->sq[i] = E->sq[(i - 1) / 2];
	E->sq[i] = e;
	return 0;
}

/* Take the first SPM pair off the queue. */
static struct spm_pair
spm_pop(struct enc *E)
{
	struct spm_pair top = E->sq[0], last = E->sq[--E->nsq];
	size_t i = 0, c;

	while ((c = 2 * i + 1) < E->nsq) {
		if (c + 1 < E->nsq && spm_before(&E->sq[c + 1], &E->sq[c]))
			c++;
		if (!spm_before(&E->sq[c], &last))
			break;
		E->sq[i] = E->sq[c];
		i = c;
	}
	if (E->nsq > 0)
		E->sq[i] = last;
	return top;
}

/* SPM-encode one fragment: escape spaces, merge characters by score,
 * fall back on byte tokens. */
static kvx_status
spm_fragment(struct enc *E, const unsigned char *s, size_t len)
{
	static const unsigned char u8len[16] = {
		1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4
	};
	const kvx_tokenizer *t = E->t;
	size_t i, o = 0, n = 0;
	int32_t k, id;

	if (len >= UINT32_MAX / 3)
		return kvx__fail(KVX_ERR_ARG, "tokenize: text too long");
	if (grow(&E->u8, &E->capu8, 3 * len + 4, 1) ||
	    grow(&E->ss, &E->capss, len, sizeof *E->ss))
		return kvx__fail(KVX_ERR_NOMEM, "tokenize: out of memory");
	for (i = 0; i < len; i++) {
		if (s[i] == ' ') {
			memcpy(E->u8 + o, "\xe2\x96\x81", 3);
			o += 3;
		} else
			E->u8[o++] = (char)s[i];
	}
	/* one symbol per UTF-8 character, by its lead byte as llama.cpp */
	for (i = 0; i < o; i += E->ss[n++].n) {
		E->ss[n].off = (uint32_t)i;
		E->ss[n].n = u8len[(unsigned char)E->u8[i] >> 4];
		if (E->ss[n].n > o - i)
			E->ss[n].n = (uint32_t)(o - i);
		E->ss[n].prev = (int32_t)n - 1;
		E->ss[n].next = n + 1 < o ? (int32_t)n + 1 : -1;
	}
	E->ss[n - 1].next = -1;
	E->nsq = 0;
	for (k = 0; k + 1 < (int32_t)n; k++)
		if (spm_push(E, k))
			return kvx__fail(KVX_ERR_NOMEM, "tokenize: out of memory");
	while (E->nsq > 0) {
		struct spm_pair e = spm_pop(E);
		struct spm_sym *a = &E->ss[e.left], *b;

		/* stale when either side changed since the push */
		if (a->n == 0 || a->next < 0)
			continue;
		b = &E->ss[a->next];
		if (b->n == 0 || a->n + b->n != e.size)
			continue;
		a->n += b->n;
		b->n = 0;
		a->next = b->next;
		if (b->next >= 0)
			E->ss[b->next].prev = (int32_t)e.left;
		if (spm_push(E, a->prev) || spm_push(E, (int32_t)e.left))
			return kvx__fail(KVX_ERR_NOMEM, "tokenize: out of memory");
	}
	for (k = 0; k >= 0; k = E->ss[k].next) {
		const struct spm_sym *a = &E->ss[k];

		if ((id = vocab_find(t, E->u8 + a->off, a->n)) >= 0) {
			put_id(E, id);
			continue;
		}
		for (i = 0; i < a->n; i++)
			if (t->byte_tok[(unsigned char)E->u8[a->off + i]] >= 0)
				put_id(E, t->byte_tok[(unsigned char)
				    E->u8[a->off + i]]);
	}
	return KVX_OK;
}

/* Pre-tokenize and BPE-encode one fragment without special tokens. */
static kvx_status
encode_fragment(struct enc *E, const unsigned char *s, size_t len)
{
	const kvx_tokenizer *t = E->t;
	size_t n = 0, i = 0, o = 0;
	kvx_status st;

	if (len == 0)
		return KVX_OK;
	if (t->spm)
		return spm_fragment(E, s, len);
	if (len >= UINT32_MAX / 3)
		return kvx__fail(KVX_ERR_ARG, "tokenize: text too long");
	if (grow(&E->cp, &E->capcp, len + 1, sizeof(uint32_t)) ||
	    grow(&E->u8, &E->capu8, 3 * len + 4, 1) ||
	    grow(&E->pos, &E->cappos, len + 1, sizeof(uint32_t)) ||
	    grow(&E->sa, &E->capsa, len + 1, sizeof(struct span)) ||
	    grow(&E->sb, &E->capsb, len + 1, sizeof(struct span)))
		return kvx__fail(KVX_ERR_NOMEM, "tokenize: out of memory");
	/* Re-encoding turns invalid bytes into U+FFFD, as the reference
	 * does; valid text comes out unchanged. */
	while (i < len) {
		E->pos[n] = (uint32_t)o;
		i += uc_decode(s + i, len - i, &E->cp[n]);
		o += uc_encode(E->cp[n], E->u8 + o);
		n++;
	}
	E->pos[n] = (uint32_t)o;

	E->na = 1;
	E->sa[0].a = 0;
	E->sa[0].b = (uint32_t)n;
	E->nb = 0;
	switch (t->pre) {
	case PRE_DEFAULT:
		for (size_t k = 0; k < E->na; k++)
			split_runs(E, E->sa[k].a, E->sa[k].b, RUN_PUNCT, 0);
		next_pass(E);
		for (size_t k = 0; k < E->na; k++)
			split_words(E, E->sa[k].a, E->sa[k].b, 0);
		next_pass(E);
		for (size_t k = 0; k < E->na; k++)
			split_runs(E, E->sa[k].a, E->sa[k].b, RUN_NUMBER, 0);
		next_pass(E);
		for (size_t k = 0; k < E->na; k++)
			split_runs(E, E->sa[k].a, E->sa[k].b, RUN_DIGIT, 3);
		break;
	case PRE_GPT2:
		split_words(E, 0, n, 0);
		break;
	case PRE_STARCODER:
		split_runs(E, 0, n, RUN_NUMBER, 1);
		next_pass(E);
		for (size_t k = 0; k < E->na; k++)
			split_words(E, E->sa[k].a, E->sa[k].b, 0);
		break;
	case PRE_LLAMA3:
		split_words(E, 0, n, 3);
		break;
	case PRE_QWEN2:
		split_words(E, 0, n, 1);
		break;
	}
	next_pass(E);
	for (size_t k = 0; k < E->na; k++) {
		size_t a = E->pos[E->sa[k].a], b = E->pos[E->sa[k].b];

		if ((st = bpe_word(E, (const unsigned char *)E->u8 + a,
		    b - a)) != KVX_OK)
			return st;
	}
	return KVX_OK;
}

struct frag {
	size_t		off, len;
	int32_t		id;		/* special token, or -1 for text */
};

/* Cut the special tokens' texts out of the text, longest first, as
 * llama.cpp does; control tokens only with parse_special. */
static kvx_status
partition(const kvx_tokenizer *t, const char *text, size_t len,
    int parse_special, struct frag **out, size_t *nout)
{
	struct frag *a = NULL, *b = NULL;
	size_t na = 0, nb, capa = 0, capb = 0;

	if (grow(&a, &capa, 1, sizeof *a))
		return kvx__fail(KVX_ERR_NOMEM, "tokenize: out of memory");
	a[0].off = 0;
	a[0].len = len;
	a[0].id = -1;
	na = 1;
	for (int s = 0; s < t->n_special; s++) {
		int32_t id = t->special[s];
		const char *st = t->text + t->text_off[id];
		size_t sl = t->text_len[id];
		int hit = 0;

		if (!parse_special && t->type[id] != TT_USER)
			continue;
		for (size_t k = 0; k < na && !hit; k++)
			hit = a[k].id < 0 && find_bytes(text + a[k].off,
			    a[k].len, st, sl) != NULL;
		if (!hit)
			continue;
		nb = 0;
		for (size_t k = 0; k < na; k++) {
			size_t off = a[k].off, end = off + a[k].len;
			const char *p;

			/* At most two new fragments per match, plus the rest. */
			if (grow(&b, &capb, nb + 1 + (a[k].id < 0 ?
			    2 * (a[k].len / sl) : 0), sizeof *b))
				goto nomem;
			if (a[k].id >= 0) {
				b[nb++] = a[k];
				continue;
			}
			while ((p = find_bytes(text + off, end - off, st,
			    sl)) != NULL) {
				size_t at = (size_t)(p - text);

				if (at > off) {
					b[nb].off = off;
					b[nb].len = at - off;
					b[nb++].id = -1;
				}
				b[nb].off = at;
				b[nb].len = sl;
				b[nb++].id = id;
				off = at + sl;
			}
			if (end > off) {
				b[nb].off = off;
				b[nb].len = end - off;
				b[nb++].id = -1;
			}
		}
		{
			struct frag *tmp = a;
			size_t tc = capa;

			a = b;
			capa = capb;
			na = nb;
			b = tmp;
			capb = tc;
		}
	}
	free(b);
	*out = a;
	*nout = na;
	return KVX_OK;
nomem:
	free(a);
	free(b);
	return kvx__fail(KVX_ERR_NOMEM, "tokenize: out of memory");
}

/* Encode UTF-8 text into token ids. */
kvx_status
tok_encode(const kvx_tokenizer *t, const char *text, size_t len,
    int parse_special, int32_t *ids, int cap, int *n)
{
	struct enc E;
	struct frag *fr = NULL;
	size_t nfr = 0;
	kvx_status st;

	if (n != NULL)
		*n = 0;
	if (t == NULL || n == NULL || (text == NULL && len > 0) ||
	    cap < 0 || (ids == NULL && cap > 0))
		return kvx__fail(KVX_ERR_ARG, "tokenize: bad argument");
	if (len == 0)
		return KVX_OK;
	memset(&E, 0, sizeof E);
	E.t = t;
	E.ids = ids;
	E.cap = cap;
	if ((st = partition(t, text, len, parse_special, &fr, &nfr)) != KVX_OK)
		return st;
	for (size_t k = 0; k < nfr && st == KVX_OK; k++) {
		if (fr[k].id >= 0)
			put_id(&E, fr[k].id);
		else
			st = encode_fragment(&E, (const unsigned char *)text +
			    fr[k].off, fr[k].len);
	}
	free(fr);
	free(E.cp);
	free(E.u8);
	free(E.pos);
	free(E.sa);
	free(E.sb);
	free(E.sym);
	free(E.heap);
	free(E.wbuf);
	free(E.ss);
	free(E.sq);
	if (st != KVX_OK)
		return st;
	if (E.n > INT_MAX)
		return kvx__fail(KVX_ERR_CAPACITY,
		    "tokenize: more than %d tokens", INT_MAX);
	*n = (int)E.n;
	if (E.n > cap)
		return kvx__fail(KVX_ERR_CAPACITY,
		    "tokenize: %lld tokens do not fit in %d", E.n, cap);
	return KVX_OK;
}

/* ------------------------------------------------------------------ */
/* decoding and chat */

/* Bytes of one token, NUL-terminated in buf. */
kvx_status
tok_piece(const kvx_tokenizer *t, int32_t id, char *buf, size_t size,
    size_t *len)
{
	size_t n;

	if (len != NULL)
		*len = 0;
	if (t == NULL || (buf == NULL && size > 0))
		return kvx__fail(KVX_ERR_ARG, "token_piece: bad argument");
	if (id < 0 || id >= t->n_vocab)
		return kvx__fail(KVX_ERR_ARG,
		    "token_piece: id %d outside vocabulary of %d", (int)id,
		    t->n_vocab);
	n = t->piece_len[id];
	if (len != NULL)
		*len = n;
	if (n + 1 > size) {
		if (size > 0)
			buf[0] = '\0';
		return kvx__fail(KVX_ERR_CAPACITY,
		    "token_piece: token %d needs %zu bytes, buffer has %zu",
		    (int)id, n + 1, size);
	}
	memcpy(buf, t->piece + t->piece_off[id], n);
	buf[n] = '\0';
	return KVX_OK;
}

/* One user turn in the model's chat format, ready for generation. */
kvx_status
tok_chat_format(const kvx_tokenizer *t, const char *system,
    const char *user, char **out)
{
	static const char ims[] = "<|im_start|>", ime[] = "<|im_end|>\n";
	size_t n;
	char *s;

	if (out != NULL)
		*out = NULL;
	if (t == NULL || user == NULL || out == NULL)
		return kvx__fail(KVX_ERR_ARG, "chat_format: NULL argument");
	if (t->chat != CHAT_CHATML)
		return kvx__fail(KVX_ERR_UNSUPPORTED,
		    "chat_format: the model's chat template is %s",
		    t->chat == CHAT_NONE ? "missing or not ChatML" :
		    "not supported");
	if (system == NULL)
		system = t->chat_system;
	n = strlen(user) + 128;
	if (system != NULL)
		n += strlen(system);
	if ((s = malloc(n)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "chat_format: out of memory");
	if (system != NULL)
		snprintf(s, n, "%ssystem\n%s%s%suser\n%s%s%sassistant\n", ims,
		    system, ime, ims, user, ime, ims);
	else
		snprintf(s, n, "%suser\n%s%s%sassistant\n", ims, user, ime,
		    ims);
	*out = s;
	return KVX_OK;
}

// --- the public calls, on a model's tokenizer ----------------------------

kvx_status
kvx_tokenize(const kvx_model *m, const char *text, size_t len,
    int parse_special, int32_t *ids, int cap, int *n)
{
	if (m == NULL || (text == NULL && len > 0) || n == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_tokenize: NULL argument");
	return tok_encode(m->tok, text, len, parse_special, ids, cap, n);
}

kvx_status
kvx_token_piece(const kvx_model *m, int32_t id, char *buf, size_t size,
    size_t *len)
{
	if (m == NULL || buf == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_token_piece: NULL argument");
	return tok_piece(m->tok, id, buf, size, len);
}

int32_t
kvx_token_bos(const kvx_model *m)
{
	return m == NULL ? -1 : tok_bos(m->tok);
}

int32_t
kvx_token_eos(const kvx_model *m)
{
	return m == NULL ? -1 : tok_eos(m->tok);
}

int
kvx_token_is_eog(const kvx_model *m, int32_t id)
{
	return m != NULL && tok_is_eog(m->tok, id);
}

kvx_status
kvx_chat_format(const kvx_model *m, const char *system, const char *user,
    char **out)
{
	if (m == NULL || user == NULL || out == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_chat_format: NULL argument");
	return tok_chat_format(m->tok, system, user, out);
}
