/*
 * select.h - SnapKV-style token scoring and selection (CPU reference; the
 * CUDA kernels in kernels/ are checked against these functions).
 * SPDX-License-Identifier: MIT
 *
 * Layout: for one KV head with a GQA group of g query heads and head
 * dimension d, K is n x d (row t = key of position t), the window queries
 * Q are g x w x d (query head, window position, dim); window position j
 * sits at absolute position n - w + j and sees keys 0 .. n - w + j.
 */
#ifndef KVX_SELECT_H
#define KVX_SELECT_H

#include <stddef.h>

/*
 * score[t] for t in [0, n - w): softmax attention of each window query
 * over its causal prefix, taken at key t, averaged over the w queries and
 * (gqa == PLAN_GQA_MEAN) averaged, or (PLAN_GQA_MAX) maximised, over the g
 * heads.  scale is 1/sqrt(d).  Needs n > w >= 1.
 */
void		 sel_score(const float *q, const float *k, int n, int w, int g,
		     int d, float scale, int gqa, float *score);
/* 1-D pooling of in[0..n) with odd kernel ks, same length, zero-free
 * edges (window clipped at the borders).  pool: enum plan_pool. */
void		 sel_pool(const float *in, int n, int ks, int pool, float *out);
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

#endif
