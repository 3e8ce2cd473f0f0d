/*
 * tokenizer_impl.h - what the tokenizer's two stages share: the vocabulary,
 * merges and specials that tokenizer.c loads from GGUF metadata, and the
 * hash lookups that encode.c uses to turn text into ids.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_TOKENIZER_IMPL_H
#define KVX_TOKENIZER_IMPL_H

#include <stdint.h>
#include <string.h>

#include "tokenizer.h"

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

enum chat_kind {
	CHAT_NONE,
	CHAT_CHATML,	/* <|im_start|>role ... <|im_end|> */
	CHAT_GEMMA	/* <start_of_turn>user ... <end_of_turn>, the reply
			   "model"; no system turn */
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
	int		 add_bos;	/* a text starts with bos */
	int32_t		 eog[MAX_EOG];
	int		 n_eog;
	int		 chat;
	char		*chat_system;	/* template's default system text */
};

/* ------------------------------------------------------------------ */
/* hashing */

/* FNV-1a over a byte string. */
static inline uint32_t
hash_bytes(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint32_t h = 2166136261u;

	while (n-- > 0)
		h = (h ^ *s++) * 16777619u;
	return h;
}

/* Mix of a token pair for the merge table. */
static inline uint32_t
hash_pair(uint32_t a, uint32_t b)
{
	uint64_t x = ((uint64_t)a << 32 | b) * 0x9E3779B97F4A7C15ull;

	return (uint32_t)(x >> 32);
}

/* Id of the token whose text is s[0..n), or -1. */
static inline int32_t
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
static inline struct merge_slot *
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
static inline uint32_t
table_size(size_t n)
{
	uint32_t s = 16;

	while (s < 2 * n)
		s <<= 1;
	return s;
}

/* Find needle in hay, or NULL. */
static inline const char *
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

#endif
