/*
 * gpu.h - the CUDA back end of contexts: the model's weights as fp16 on
 * the device, fp16 K/V in ragged per-(sequence, layer, KV head) segments
 * sized to the plan, prefill with per-layer compression on the device and
 * batched decode over the split-K attention kernel.  Built with
 * --with-cuda only; ctx.c dispatches to it for contexts on the GPU.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_GPU_H
#define KVX_GPU_H

#include <stdint.h>

#include "kvx.h"

typedef struct gpu_ctx gpu_ctx;

/* Time spent, measured only when timing is on: wall time for whole
 * prefills and decode steps (synchronising the device around each), and
 * device time between events for the compression inside prefills. */
typedef struct gpu_stats {
	double		prefill_s;	/* whole prefills */
	double		select_s;	/* scoring, selection and compaction */
	double		score_s;	/* of which scoring and pooling */
	double		topk_s;		/* top-k selection (and its upload) */
	double		gather_s;	/* compaction into the segments */
	double		decode_s;	/* decode steps */
	double		decode_host_s;	/* of which building their tables on
					   the host, the device idle */
	double		decode_ahead_s;	/* building the next step's tables
					   while the device runs a step */
	double		decode_dev_s;	/* device time of the steps, from
					   their tables' upload to their
					   last kernel */
	int64_t		prefill_tokens;
	int64_t		decode_tokens;
} gpu_stats;

/* 1 when a CUDA device is usable. */
int		 gpu_available(void);
kvx_status	 gpu_ctx_new(kvx_model *, const kvx_plan *,
		     const kvx_ctx_params *, gpu_ctx **out);
void		 gpu_ctx_free(gpu_ctx **);
kvx_status	 gpu_prefill(gpu_ctx *, int seq, const int32_t *ids, int n,
		     float *logits);
kvx_status	 gpu_extend(gpu_ctx *, int seq, const int32_t *ids, int n,
		     float *logits);
kvx_status	 gpu_decode(gpu_ctx *, int n, const int *seqs,
		     const int32_t *ids, float *logits);
kvx_status	 gpu_compress_from(gpu_ctx *, int seq, const gpu_ctx *src,
		     int sseq);
kvx_status	 gpu_seq_clear(gpu_ctx *, int seq);
int		 gpu_seq_len(const gpu_ctx *, int seq);
kvx_status	 gpu_memory(const gpu_ctx *, kvx_memory *);

/* Tests: the K rows of segment (s, l, h) as floats, at most cap rows of
 * head_dim, and how many it holds in *len. */
kvx_status	 gpu_seg_keys(gpu_ctx *, int s, int l, int h, float *k,
		     int cap, int *len);
/* Benchmarks: copy sequence src's cache into the empty sequence dst. */
kvx_status	 gpu_seq_copy(gpu_ctx *, int dst, int src);
/* Benchmarks: timing on or off; head != 0 runs the LM head on decode even
 * when no logits are asked for (they stay on the device). */
void		 gpu_set_options(gpu_ctx *, int timing, int head);
const gpu_stats	*gpu_get_stats(const gpu_ctx *);

#endif
