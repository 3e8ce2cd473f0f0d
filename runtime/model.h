/*
 * model.h - the Llama-family model (llama, qwen2, gemma3; arch.h): weights
 * mapped from GGUF and the forward pass over a batch of tokens against a
 * kv_cache.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_MODEL_H
#define KVX_MODEL_H

#include <pthread.h>
#include <stdint.h>

#include "kvx.h"
#include "arch.h"
#include "gguf.h"
#include "kvcache.h"
#include "pool.h"
#include "tokenizer.h"

/* A weight matrix of rows x cols (cols contiguous) as stored, plus an f32
 * copy made on first use by the GEMM path. */
typedef struct mat {
	const void	*q;
	int		 type;
	int		 rows, cols;
	float		*f;
} mat;

typedef struct layer_w {
	mat		 wq, wk, wv, wo, wg, wu, wd;
	const float	*attn_norm, *ffn_norm;
	const float	*bq, *bk, *bv;	/* Q/K/V biases, NULL without */
	const float	*q_norm, *k_norm;	/* per-head norms, or NULL */
	const float	*post_attn_norm, *post_ffn_norm;	/* or NULL */
	int		 window;	/* sliding window (keys seen by a query,
					   itself included), 0: global */
	float		 theta;		/* RoPE base of this layer */
} layer_w;

struct kvx_model {
	gguf_file	*gf;
	kvx_model_info	 info;
	char		 arch[32];
	const arch_desc	*desc;		/* what differs from llama */
	char		 name[128];
	kvx_tokenizer	*tok;
	layer_w		*L;
	mat		 embd;		/* n_vocab x n_embd */
	mat		 out;		/* LM head (tied to embd when absent) */
	const float	*out_norm;
	int		 n_threads;	/* contexts' default worker count */
	int		 weights;	/* KVX_WEIGHTS_MMAP or _HUGEPAGES: what
					   the first CPU forward asks for */
	int		 weights_anon;	/* 1 once gguf_load_anon moved them
					   (read with acquire loads) */
	int		 weights_tried;	/* under lazy_mu: the move was done */
	pthread_mutex_t	 lazy_mu;	/* guards making the lazy f32 copies;
					   they are published with release
					   stores and read with acquire loads,
					   so contexts on other threads see a
					   whole copy or none */
};

/*
 * Selection hook: called by the forward pass right after layer l's
 * attention has run over a whole prefill (so that layer's cache holds
 * every prompt token), with that layer's last-w post-RoPE queries for the
 * sequence: wq[head][w][d] for all n_head query heads, and xw, the
 * layer's input residual stream at those w tokens (w x n_embd).
 */
typedef kvx_status (*fw_layer_hook)(void *arg, int seq, int layer,
    const float *wq, int w, const float *xw);

typedef struct fw_batch {
	int		 n;		/* tokens */
	const int32_t	*ids;
	const int	*seq;		/* sequence of each token */
	const int	*pos;		/* position of each token */
	int		 logits;	/* 0 none, 1 last token, 2 all */
	float		*out;		/* logits destination */
	/* for a single-sequence prefill: window queries and the hook */
	int		 window;
	fw_layer_hook	 hook;
	void		*hook_arg;
	/* profiling: when set, stop after the last layer's hook and skip the
	 * LM head (the lightweight variant of kvx-plan) */
	int		 no_head;
	/* profiling: queries before the last window tokens attend to the
	 * last span keys only (0: full causal attention) */
	int		 span;
} fw_batch;

/* Forward scratch sized for up to max_tokens per batch.  It runs its work
 * on pool, which the caller owns and which must outlive it: each context
 * has its own pool and scratch, so contexts of one model run in parallel. */
typedef struct fw_scratch fw_scratch;

/* Making one moves the weights to huge pages first, when the model asks
 * for it (model_weights_cpu). */
kvx_status	 fw_scratch_new(const kvx_model *, kvx_pool *pool,
		     int max_tokens, int max_ctx, fw_scratch **out);
/* Places the weights as the model's weights mode says, once: called before
 * the CPU first reads them; safe from several threads. */
void		 model_weights_cpu(const kvx_model *);
void		 fw_scratch_free(fw_scratch **);
/* The post-RoPE queries of the layer the forward ran last, a row of
 * n_head x head_dim per token of the batch: inside a layer hook, that
 * layer's queries of the whole prompt. */
const float	*fw_scratch_queries(const fw_scratch *);
kvx_status	 model_forward(kvx_model *, kv_cache *, fw_scratch *,
		     const fw_batch *);
/* f32 copy of a matrix, made once, safe to call from several threads. */
kvx_status	 model_mat_f32(kvx_model *, mat *);
/* The matrix's f32 copy, or NULL before model_mat_f32 made it. */
const float	*model_mat_f32_get(const mat *);

#endif
