/*
 * kvcache.h - the KV cache as ragged per-(sequence, layer, KV head)
 * segments.  A full cache is the same object with segments that grow with
 * the sequence; a compressed one holds each head's kept tokens in a
 * segment sized to its budget plus decode headroom.  The bytes allocated
 * are the sum of the capacities: nothing is masked.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_KVCACHE_H
#define KVX_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "kvx.h"

typedef struct kv_seg {
	float		*k;	/* cap x head_dim, RoPE applied */
	float		*v;	/* cap x head_dim */
	int32_t		*pos;	/* absolute position of each row */
	int		 len;
	int		 cap;
} kv_seg;

typedef struct kv_cache {
	int		 n_seq, n_layer, n_head_kv, head_dim;
	int		 n_ctx;		/* max positions per sequence */
	kv_seg		*segs;		/* [seq][layer][head] */
	int		*n_pos;		/* next position of each sequence */
	int		*compressed;	/* per sequence: cache was compressed */
	uint64_t	 bytes;		/* allocated, all segments */
} kv_cache;

kvx_status	 kv_new(int n_seq, int n_layer, int n_head_kv, int head_dim,
		     int n_ctx, kv_cache **out);
void		 kv_free(kv_cache **);
kv_seg		*kv_seg_at(kv_cache *, int seq, int layer, int head);
const kv_seg	*kv_seg_cget(const kv_cache *, int seq, int layer, int head);
/* Make room for at least need rows, growing by half again when short. */
kvx_status	 kv_reserve(kv_cache *, kv_seg *, int need);
/* Set a segment's capacity to exactly cap rows (>= len). */
kvx_status	 kv_fit(kv_cache *, kv_seg *, int cap);
/* Replace a segment's storage with exactly the given rows of src (which
 * may be the same segment), capacity keep + headroom. */
kvx_status	 kv_compact(kv_cache *, kv_seg *dst, const kv_seg *src,
		     const int *rows, int n, int headroom);
void		 kv_seq_clear(kv_cache *, int seq);
/* Free one segment's rows (its block) and empty it. */
void		 kv_seg_release(kv_cache *, kv_seg *);
/* Drop the rows before position pos (the rows are in position order),
 * keeping the capacity; returns how many went. */
int		 kv_seg_drop_before(kv_cache *, kv_seg *, int32_t pos);
/* Bytes per row of one segment (K and V). */
size_t		 kv_row_bytes(const kv_cache *);

#endif
