/*
 * select.h - token scoring (SnapKV, Expected Attention) and selection (CPU
 * reference; the CUDA kernels in kernels/ are checked against these
 * functions).
 * SPDX-License-Identifier: MIT
 *
 * Layout: for one KV head with a GQA group of g query heads and head
 * dimension d, K is n x d (row t = key of position t), the window queries
 * Q are g x w x d (query head, window position, dim); window position j
 * sits at absolute position n - w + j and sees keys 0 .. n - w + j.
 */
#ifndef KVX_SELECT_H
#define KVX_SELECT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "kvx.h"

/* KV heads of one layer that sel_counts holds. */
#define SEL_MAX_KV_HEADS 64

/*
 * How a plan turns into the rows each KV head of one layer keeps after a
 * prompt of n tokens: sel_rule fills it, and the CPU and GPU paths take
 * their counts from it.  A sliding-window layer selects among its last
 * sel_window_rows(window, n) rows only, from row first on: the earlier
 * ones lie outside every later query's window and are dropped, and its
 * selection sees that span as the whole prompt.  Every head keeps its
 * sinks first tokens of the span and its pw last ones; the ncand
 * candidates between them compete by score.
 */
typedef struct sel_counts {
	int	first;		/* rows before it are dropped: n less the
				   layer's sel_window_rows, 0 for a global
				   layer */
	int	pw;		/* window tokens kept; their queries score the
				   rest: min(plan window, w, n - first - 1) */
	int	sinks;		/* leading tokens kept: the plan's sinks
				   clamped to [0, n - first - pw]; none when
				   first > 0 (the sequence's first tokens
				   are out of the layer's sight) */
	int	fixed;		/* pw + sinks: rows a head keeps whatever
				   its scores */
	int	ncand;		/* candidates per head: n - first - fixed */
	int	hybrid;		/* 1: the heads split total at run time */
	int	total;		/* hybrid: candidate rows the heads share, at
				   most n_head_kv * ncand (plan_hybrid_share);
				   static: 0 */
	int	floor;		/* hybrid: each head's least share of total;
				   static: 0 */
	int	keep[SEL_MAX_KV_HEADS];
				/* rows each head keeps, in [fixed,
				   n - first]:
				   static, plan_tokens; hybrid, fixed plus an
				   even split of total, which sums as any
				   split does (sel_keep gives a head's rows
				   once the split is known) */
} sel_counts;

/*
 * Rows of a sequence's last n tokens that a layer may keep when each of
 * its queries sees window keys, its own included (0: every key, a global
 * layer): min(n, window).  Rows before the last that many lie outside the
 * window of every later query, so a sliding-window layer never holds more
 * than this after a prefill, plus the tokens being decoded.  The CPU and
 * GPU caches, sel_rule and the memory accounting all take it from here.
 */
int		 sel_window_rows(int window, int n);

/*
 * Fill c for layer of plan P after a prompt of n >= 2 tokens, with the
 * last w window queries at hand (w >= 1); the layer's sliding window is
 * the plan's (plan_layer_window), which kvx_plan_check has matched with
 * the model's.  Returns -1, filling nothing, when n_head_kv is not in
 * [1, SEL_MAX_KV_HEADS].
 */
int		 sel_rule(const kvx_plan *P, int layer, int n, int w,
		     int n_head_kv, sel_counts *c);
/* Rows a hybrid head keeps given its share of total (from
 * sel_hybrid_split): share plus the fixed rows. */
int		 sel_keep(const sel_counts *c, int share);

/*
 * score[t] for t in [0, n - w): softmax attention of each window query
 * over its causal prefix, taken at key t, averaged over the w queries and
 * (gqa == PLAN_GQA_MEAN) averaged, or (PLAN_GQA_MAX) maximised, over the g
 * heads.  scale is 1/sqrt(d).  Needs n > w >= 1.
 */
void		 sel_score(const float *q, const float *k, int n, int w, int g,
		     int d, float scale, int gqa, float *score);
/*
 * 1-D pooling of in[0..n) with odd kernel ks, same length, zero-free
 * edges (window clipped at the borders).  pool: enum plan_pool, or
 * SEL_POOL_LOGAVG: in holds logarithms and out receives the logarithm of
 * the average of their exponentials (-inf where all are -inf).
 */
void		 sel_pool(const float *in, int n, int ks, int pool, float *out);
#define SEL_POOL_LOGAVG	3
/*
 * The pooling kind for scorer's scores under pool (enum plan_pool), the
 * one rule of the CPU, the GPU and the planner: Expected Attention's
 * scores are logarithms, so its average pools their exponentials
 * (SEL_POOL_LOGAVG); max and none are the same in either domain.
 */
int		 sel_pool_kind(int scorer, int pool);
/* log(exp(a) + exp(b)) without overflow or underflow: the one formula of
 * the CPU and GPU Expected Attention scores. */
static inline float
sel_logaddexp(float a, float b)
{
	float hi = a > b ? a : b, lo = a > b ? b : a;

	if (hi == -INFINITY)
		return hi;
	return hi + log1pf(expf(lo - hi));
}
/*
 * Indices of the k largest of score[0..n), ties to the lower index,
 * written in increasing index order.  0 <= k <= n.
 */
void		 sel_topk(const float *score, int n, int k, int *idx);
/*
 * Full selection for one head: keeps the sinks first tokens, the w window
 * tokens, and the top (keep - w - sinks) pooled scores among the rest.
 * keep is clamped to [min(n, w + sinks), n].  Writes the kept positions in
 * increasing order to idx and returns their count.
 */
int		 sel_select(const float *pooled, int n, int w, int sinks,
		     int keep, int *idx);
/*
 * Hybrid (AdaKV) split of a layer's budget over h heads: given each head's
 * pooled scores over its n - w candidate positions (pooled[h][...]),
 * choose per-head counts summing to total (candidates only, window and
 * sinks excluded) by a top-k over all heads' scores, with at least floor
 * per head.  counts[h] receives each head's share.
 */
void		 sel_hybrid_split(const float *const *pooled, int h, int n_cand,
		     int total, int floor, int *counts);

/*
 * Expected Attention (arXiv 2510.00636): how a plan's expected-attention
 * section and the model's RoPE turn into scoring settings.
 */
typedef struct sel_ea {
	int	future;		/* positions RoPE is averaged over */
	int	cov;		/* enum plan_cov: full, diagonal, none */
	int	vnorm;		/* 1: scores times the value's norm */
	float	theta;		/* RoPE base: pair j of d/2 turns at
				   frequency theta^(-2j/d) */
	int	halves;		/* 0: pair j is dims (2j, 2j + 1), the
				   GGUF llama layout; 1: (j, j + d/2),
				   rotate-half */
} sel_ea;

/*
 * Statistics of one query head for a prompt of n tokens: q holds w >= 1
 * post-RoPE queries (rows of d) at positions pos[0..w).  Each is rotated
 * back to its pre-RoPE value; their mean and (cov != none) covariance
 * (divided by w) are then carried by R, the RoPE rotation averaged over
 * positions n .. n + future - 1, as R mu and R Sigma R^T.  mu receives d
 * floats, cov d x d (full) or the d diagonal entries of R Sigma R^T
 * (diagonal); with none cov is not touched.  Needs d even.
 */
void		 sel_ea_stats(const float *q, const int32_t *pos, int w,
		     int d, int n, const sel_ea *e, float *mu, float *cov);
/*
 * The two halves of sel_ea_stats, for nh query heads at once: the
 * pre-RoPE mean (m, nh x d) and, unless cov is PLAN_COV_NONE, the
 * covariance divided by w (S, nh x d x d, whole even for a diagonal plan,
 * whose pairs need their 2 x 2 blocks) of w queries; head h's query j is
 * at q + j ld + h d, at position pos[j].  These do not depend on the
 * prompt's length, so a context can keep them for a later compression
 * (kvx_compress_from).  KVX_ERR_NOMEM or KVX_ERR_ARG, with the message
 * set, on failure.
 */
kvx_status	 sel_ea_moments(const float *q, size_t ld, int nh,
		     const int32_t *pos, int w, int d, const sel_ea *e,
		     int cov, double *m, double *S);
/* The moments of one head carried to a prompt of n tokens: mu and cov as
 * sel_ea_stats gives them (S unused when e->cov is PLAN_COV_NONE). */
void		 sel_ea_carry(const double *m, const double *S, int d, int n,
		     const sel_ea *e, float *mu, float *cov);
/*
 * Prompt queries Expected Attention's statistics take after a prompt of
 * n tokens under plan P: all n when its span is the whole prompt
 * (expected_attention.queries: all), else the last
 * min(queries, n, KVX_WINDOW_MAX).  The CPU and the GPU take it here.
 */
int		 sel_ea_nq(const kvx_plan *P, int n);
/*
 * score[t] for t in [0, nc): the logarithm of the expected softmax
 * weight of key t under a Gaussian query of each of the g heads'
 * statistics (mu g x d, cov as sel_ea_stats gives it, per head), the
 * log-normal moment exp(mu.k / sqrt(d) + k^T Sigma k / (2 d)), normalised
 * over the keys [s0, n) (the sinks before s0 would dominate the sum);
 * averaged (PLAN_GQA_MEAN, by sel_logaddexp) or maximised over the g
 * heads, then times |v_t| when vnorm.  Logarithms, because the weights
 * of keys far from the query's mean underflow in a float (a logit
 * spread past 87), and their order, which selection needs, would be lost
 * to ties at the underflow.  The sinks t < s0 score -inf.  K and V are n
 * x d; tmp holds n floats.  Needs 0 <= s0 < n and nc <= n.
 */
void		 sel_ea_score(const float *mu, const float *cov,
		     const float *k, const float *v, int n, int nc, int s0,
		     int g, int d, const sel_ea *e, int gqa, float *tmp,
		     float *score);

#endif
