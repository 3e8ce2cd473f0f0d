/*
 * encode.c - the tokenizer's encoding stage: text to token ids.
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

#include "tokenizer.h"
#include "tokenizer_impl.h"
#include "unicode.h"
#include "util.h"

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

