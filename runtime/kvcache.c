/*
 * kvcache.c - ragged per-head KV segments.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache.h"
#include "util.h"

kvx_status
kv_new(int n_seq, int n_layer, int n_head_kv, int head_dim, int n_ctx,
    kv_cache **out)
{
	kv_cache *c;

	*out = NULL;
	if (n_seq < 1 || n_layer < 1 || n_head_kv < 1 || head_dim < 1)
		return kvx__fail(KVX_ERR_ARG, "kv cache: bad shape");
	if ((c = calloc(1, sizeof *c)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "kv cache: out of memory");
	c->n_seq = n_seq;
	c->n_layer = n_layer;
	c->n_head_kv = n_head_kv;
	c->head_dim = head_dim;
	c->n_ctx = n_ctx;
	c->segs = kvx__calloc((size_t)n_seq * n_layer * n_head_kv,
	    sizeof *c->segs);
	c->n_pos = kvx__calloc((size_t)n_seq, sizeof *c->n_pos);
	c->compressed = kvx__calloc((size_t)n_seq, sizeof *c->compressed);
	if (c->segs == NULL || c->n_pos == NULL || c->compressed == NULL) {
		kv_free(&c);
		return kvx__fail(KVX_ERR_NOMEM, "kv cache: out of memory");
	}
	*out = c;
	return KVX_OK;
}

void
kv_seg_release(kv_cache *c, kv_seg *s)
{
	c->bytes -= (uint64_t)s->cap * kv_row_bytes(c);
	free(s->k);		/* one block holds k, v and pos */
	memset(s, 0, sizeof *s);
}

/* Slides a sliding-window layer's segment: the rows that no later query
 * sees go, the rest move to the front. */
int
kv_seg_drop_before(kv_cache *c, kv_seg *s, int32_t pos)
{
	size_t D = (size_t)c->head_dim;
	int d = 0;

	while (d < s->len && s->pos[d] < pos)
		d++;
	if (d == 0)
		return 0;
	memmove(s->k, s->k + (size_t)d * D, (size_t)(s->len - d) * D *
	    sizeof(float));
	memmove(s->v, s->v + (size_t)d * D, (size_t)(s->len - d) * D *
	    sizeof(float));
	memmove(s->pos, s->pos + d, (size_t)(s->len - d) * sizeof(int32_t));
	s->len -= d;
	return d;
}

void
kv_free(kv_cache **pc)
{
	kv_cache *c = *pc;
	size_t i, n;

	if (c == NULL)
		return;
	if (c->segs != NULL) {
		n = (size_t)c->n_seq * c->n_layer * c->n_head_kv;
		for (i = 0; i < n; i++)
			kv_seg_release(c, &c->segs[i]);
	}
	free(c->segs);
	free(c->n_pos);
	free(c->compressed);
	free(c);
	*pc = NULL;
}

size_t
kv_row_bytes(const kv_cache *c)
{
	return 2 * sizeof(float) * (size_t)c->head_dim;
}

kv_seg *
kv_seg_at(kv_cache *c, int seq, int layer, int head)
{
	return &c->segs[((size_t)seq * c->n_layer + layer) * c->n_head_kv +
	    head];
}

const kv_seg *
kv_seg_cget(const kv_cache *c, int seq, int layer, int head)
{
	return &c->segs[((size_t)seq * c->n_layer + layer) * c->n_head_kv +
	    head];
}

/*
 * Resize a segment to cap rows, keeping the first len.  K, V and the
 * positions share one block, so a segment costs one allocation, and a
 * failure leaves it exactly as it was.
 */
static kvx_status
seg_resize(kv_cache *c, kv_seg *s, int cap)
{
	size_t d = (size_t)c->head_dim, n = (size_t)cap;
	float *blk;

	if (n > SIZE_MAX / (2 * d * sizeof(float) + sizeof(int32_t)))
		return kvx__fail(KVX_ERR_NOMEM, "kv cache: a segment of %d "
		    "rows does not fit in memory", cap);
	blk = malloc(n * (2 * d * sizeof(float) + sizeof(int32_t)));
	if (blk == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "kv cache: out of memory "
		    "growing a segment to %d rows", cap);
	if (s->len > 0) {
		memcpy(blk, s->k, (size_t)s->len * d * sizeof(float));
		memcpy(blk + n * d, s->v, (size_t)s->len * d * sizeof(float));
		memcpy(blk + 2 * n * d, s->pos, (size_t)s->len *
		    sizeof(int32_t));
	}
	free(s->k);
	s->k = blk;
	s->v = blk + n * d;
	s->pos = (int32_t *)(blk + 2 * n * d);
	c->bytes += ((uint64_t)cap - (uint64_t)s->cap) * kv_row_bytes(c);
	s->cap = cap;
	return KVX_OK;
}

kvx_status
kv_reserve(kv_cache *c, kv_seg *s, int need)
{
	int cap;

	if (need <= s->cap)
		return KVX_OK;
	cap = s->cap + s->cap / 2;
	if (cap < need)
		cap = need;
	if (cap < 16)
		cap = 16;
	return seg_resize(c, s, cap);
}

kvx_status
kv_fit(kv_cache *c, kv_seg *s, int cap)
{
	if (cap < s->len)
		return kvx__fail(KVX_ERR_ARG, "kv_fit: capacity %d below the "
		    "%d rows held", cap, s->len);
	if (cap == s->cap || cap == 0)
		return KVX_OK;
	return seg_resize(c, s, cap);
}

kvx_status
kv_compact(kv_cache *c, kv_seg *dst, const kv_seg *src, const int *rows,
    int n, int headroom)
{
	size_t d = (size_t)c->head_dim;
	kv_seg t;
	int i;

	memset(&t, 0, sizeof t);
	if (seg_resize(c, &t, n + headroom) != KVX_OK) {
		kv_seg_release(c, &t);
		return KVX_ERR_NOMEM;
	}
	for (i = 0; i < n; i++) {
		memcpy(t.k + i * d, src->k + (size_t)rows[i] * d,
		    d * sizeof(float));
		memcpy(t.v + i * d, src->v + (size_t)rows[i] * d,
		    d * sizeof(float));
		t.pos[i] = src->pos[rows[i]];
	}
	t.len = n;
	if (dst == src || dst->cap > 0)
		kv_seg_release(c, dst);
	*dst = t;
	return KVX_OK;
}

void
kv_seq_clear(kv_cache *c, int seq)
{
	int l, h;

	for (l = 0; l < c->n_layer; l++)
		for (h = 0; h < c->n_head_kv; h++)
			kv_seg_release(c, kv_seg_at(c, seq, l, h));
	c->n_pos[seq] = 0;
	c->compressed[seq] = 0;
}
