/*
 * backend.h - what a context asks of the device it runs on: one table of
 * operations, filled by the CPU back end (cpu.c) and the CUDA one
 * (gpu.c).  ctx.c checks the caller's arguments and dispatches through
 * it; a back end's state is opaque to ctx.c.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_BACKEND_H
#define KVX_BACKEND_H

#include <stdint.h>

#include "kvx.h"
#include "kvcache.h"
#include "model.h"

typedef struct ctx_ops {
	const char	*name;
	/* 1 when the device can be used */
	int		 (*available)(void);
	/* 1 when the back end runs this model (architecture, shapes) */
	int		 (*runs)(const kvx_model *);
	/* plan (NULL: full cache) is borrowed and outlives the state */
	kvx_status	 (*create)(kvx_model *, const kvx_plan *,
			     const kvx_ctx_params *, void **out);
	void		 (*destroy)(void **);
	kvx_status	 (*prefill)(void *, int seq, const int32_t *ids, int n,
			     float *logits);
	kvx_status	 (*extend)(void *, int seq, const int32_t *ids, int n,
			     float *logits);
	kvx_status	 (*decode)(void *, int n, const int *seqs,
			     const int32_t *ids, float *logits);
	/* NULL where the device cannot compress from another context */
	kvx_status	 (*compress_from)(void *dst, int dseq, const void *src,
			     int sseq);
	kvx_status	 (*seq_clear)(void *, int seq);
	int		 (*seq_len)(const void *, int seq);
	kvx_status	 (*memory)(const void *, kvx_memory *);
	/* seconds the prefills spent scoring and selecting for the plan;
	   NULL where the device does not measure it */
	double		 (*select_seconds)(const void *);
	/* kvx-plan's lightweight variant of one sequence at positions 0 ..
	   b->n - 1 (model_forward's batch with its hook, window, span and
	   no_head; no logits): each layer's K/V go into kv's empty
	   segments of sequence b->seq[0] and the hook reads them there, as
	   after model_forward's layers.  NULL where the device does not
	   profile */
	kvx_status	 (*profile)(void *, const fw_batch *b, kv_cache *kv);
} ctx_ops;

extern const ctx_ops cpu_ops;
/* The CUDA back end, or NULL when libkvx was built without CUDA. */
const ctx_ops	*gpu_ops_get(void);

/* The CPU back end's cache, for tests. */
const kv_cache	*cpu_kv(const void *);

#endif
