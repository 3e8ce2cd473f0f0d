/*
 * tokenizer.c - byte-level BPE (GPT-2 style) and SentencePiece (SPM)
 * tokenizers built from GGUF metadata: loading the vocabulary, merges,
 * specials and chat template; token pieces and chat formatting; the
 * public tokenizer calls.  Text to ids is encode.c.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "tokenizer.h"
#include "tokenizer_impl.h"
#include "unicode.h"
#include "util.h"

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

/* Texts of tokens that end a turn in the common chat formats. */
static const char *const eog_texts[] = {
	"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>",
	"<|end|>", "<end_of_turn>", "<EOT>", "_<EOT>"
};
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
	/* llama.cpp's defaults when the key is absent: SentencePiece
	 * vocabularies start a text with BOS, byte-level BPE ones do not */
	{
		const gguf_kv *ab = gguf_find(f,
		    "tokenizer.ggml.add_bos_token");

		t->add_bos = ab != NULL && ab->type == GGUF_BOOL ?
		    ab->v.u != 0 : t->spm;
		if (t->bos < 0)
			t->add_bos = 0;
	}
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

/* Whether text is a control token of the vocabulary. */
static int
has_control(const kvx_tokenizer *t, const char *text)
{
	int32_t id = vocab_find(t, text, strlen(text));

	return id >= 0 && t->type[id] == TT_CONTROL;
}

/*
 * Recognise the chat template.  Gemma's turns are recognised by the
 * template, or without one by the vocabulary's turn tokens: Gemma 3's
 * pretrained GGUFs carry no template, and its instruction-tuned ones
 * write these turns.
 */
static kvx_status
load_chat(kvx_tokenizer *t, const gguf_file *f)
{
	const gguf_kv *kv = gguf_find(f, "tokenizer.chat_template");
	const char *s;
	size_t n;

	t->chat = CHAT_NONE;
	if ((kv == NULL || kv->type != GGUF_STR) &&
	    has_control(t, "<start_of_turn>") &&
	    has_control(t, "<end_of_turn>"))
		t->chat = CHAT_GEMMA;
	if (kv == NULL || kv->type != GGUF_STR)
		return KVX_OK;
	s = kv->v.s.p;
	n = kv->v.s.len;
	if (find_bytes(s, n, "<|im_start|>", 12) != NULL &&
	    find_bytes(s, n, "<|im_end|>", 10) != NULL) {
		t->chat = CHAT_CHATML;
		return chatml_default_system(t, s, n);
	}
	if (find_bytes(s, n, "<start_of_turn>", 15) != NULL)
		t->chat = CHAT_GEMMA;
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

/* 1 when a text starts with the BOS token. */
int
tok_add_bos(const kvx_tokenizer *t)
{
	return t->add_bos;
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

/* The length of s without the white space at either end; *p gets its
 * first byte that is not. */
static size_t
trimmed(const char *s, const char **p)
{
	size_t n;

	while (*s == ' ' || (*s >= '\t' && *s <= '\r'))
		s++;
	n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || (s[n - 1] >= '\t' &&
	    s[n - 1] <= '\r')))
		n--;
	*p = s;
	return n;
}

/*
 * Gemma's turns, as llama.cpp writes them: the system text, which Gemma
 * has no turn for, opens the user's turn followed by a blank line, and
 * both are trimmed of white space.  The BOS token is not part of the
 * text (kvx_token_add_bos).
 */
static kvx_status
gemma_format(const char *system, const char *user, char **out)
{
	const char *u, *sy = "";
	size_t nu, ns = 0, n;
	char *s;

	nu = trimmed(user, &u);
	if (system != NULL)
		ns = trimmed(system, &sy);
	n = nu + ns + 80;
	if ((s = malloc(n)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "chat_format: out of memory");
	snprintf(s, n, "<start_of_turn>user\n%.*s%s%.*s<end_of_turn>\n"
	    "<start_of_turn>model\n", (int)ns, sy, ns > 0 ? "\n\n" : "",
	    (int)nu, u);
	*out = s;
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
	if (t->chat == CHAT_GEMMA)
		return gemma_format(system, user, out);
	if (t->chat != CHAT_CHATML)
		return kvx__fail(KVX_ERR_UNSUPPORTED,
		    "chat_format: the model's chat template is %s",
		    t->chat == CHAT_NONE ? "missing, or neither ChatML nor "
		    "Gemma's" : "not supported");
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

int
kvx_token_add_bos(const kvx_model *m)
{
	return m != NULL && tok_add_bos(m->tok);
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
