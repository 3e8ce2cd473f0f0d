/*
 * kvx_cuda.h - C interface to the kvx CUDA kernels.
 * SPDX-License-Identifier: MIT
 *
 * Every kernel works on a batch of segments, one per (sequence, KV head)
 * of one layer.  Pointers named d_* are device pointers; per-segment
 * tables (offsets, lengths) live on the device too.  Calls are
 * asynchronous on the given stream and return 0, KVX_CUDA_EINVAL for bad
 * arguments, or a cudaError_t code from the launch.  Each kernel has a CPU
 * twin in runtime/select.c or runtime/attn.c that tests compare it with.
 */
#ifndef KVX_CUDA_H
#define KVX_CUDA_H

#include <stddef.h>
#include <cuda_runtime_api.h>

#include "worklist.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVX_CUDA_EINVAL (-1)

/* Element type of K/V storage. */
enum kvx_cuda_dtype {
	KVX_CUDA_F32 = 0,
	KVX_CUDA_F16 = 1,
	KVX_CUDA_BF16 = 2
};

/* --- helpers ------------------------------------------------------------ */
/* 1 when a CUDA device is usable, else 0. */
int	 kvx_cuda_available(void);
/* Message for a code returned by these calls. */
const char *kvx_cuda_strerror(int code);
int	 kvx_cuda_malloc(void **p, size_t bytes);
int	 kvx_cuda_free(void *p);
int	 kvx_cuda_h2d(void *d_dst, const void *src, size_t bytes);
int	 kvx_cuda_d2h(void *dst, const void *d_src, size_t bytes);
/* Fill bytes with one byte value (tests poison outputs with 0xff: NaN). */
int	 kvx_cuda_memset(void *d_p, int byte, size_t bytes);
/* Wait for all work on the device; returns the first pending error. */
int	 kvx_cuda_sync(void);
/* Multiprocessor count of the current device (0 on error). */
int	 kvx_cuda_sm_count(void);

/* --- 1. observation-window scoring and pooling ------------------------- */
/*
 * Twin of sel_score for nseg segments.  Segment s has n[s] > w key rows
 * starting at element koff[s] of d_k (rows ld elements apart, type
 * dtype), and its g x w x d window queries (float) at d_q + s*g*w*d.
 * Writes n[s] - w scores at d_score + soff[s].  d_scratch holds
 * scratch_bytes, at least kvx_cuda_score_scratch(nseg, g, w, max_n, 0);
 * with kvx_cuda_score_scratch(..., 1) or more the logits of the first
 * pass are kept there for the last, which then reads them instead of
 * computing them again (faster; the same scores).
 */
size_t	 kvx_cuda_score_scratch(int nseg, int g, int w, int max_n,
	    int logits);
int	 kvx_cuda_score(const float *d_q, const void *d_k, int dtype,
	    const long long *d_koff, const int *d_n, int nseg, int max_n,
	    int g, int w, int d, int ld, float scale, int gqa,
	    const long long *d_soff, void *d_scratch, size_t scratch_bytes,
	    float *d_score, cudaStream_t stream);
/*
 * The same with the window queries anywhere: query (segment s, head h,
 * window position p) at d_q + (s*g + h)*qhs + p*qps elements
 * (kvx_cuda_score is qhs = w*d, qps = d).  The GPU forward passes its
 * rotated queries of the last w tokens in place.
 */
int	 kvx_cuda_score_q(const float *d_q, long long qhs, long long qps,
	    const void *d_k, int dtype, const long long *d_koff, const int *d_n,
	    int nseg, int max_n, int g, int w, int d, int ld, float scale,
	    int gqa, const long long *d_soff, void *d_scratch,
	    size_t scratch_bytes, float *d_score, cudaStream_t stream);
/*
 * Twin of sel_pool: pools the n[s] - w scores of each segment (at
 * d_in + soff[s]) with odd kernel ks into d_out + soff[s]; pool is enum
 * plan_pool or SEL_POOL_LOGAVG (3).  d_in and d_out must not overlap.
 */
int	 kvx_cuda_pool(const float *d_in, const long long *d_soff,
	    const int *d_n, int nseg, int max_n, int w, int ks, int pool,
	    float *d_out, cudaStream_t stream);

/* --- 1b. Expected Attention scoring ------------------------------------ */
/*
 * Twin of sel_ea_stats for h query heads: head i's nq post-RoPE queries
 * (float) at d_q + i*qhs + j*qps elements, j = 0 .. nq - 1 at positions
 * p0 + j, after a prompt of n tokens, RoPE pairs as sel_ea's halves.
 * Writes head i's rotated mean at d_mu + i*d and, by cov (enum plan_cov:
 * 0 full, 1 diagonal, 2 none), its rotated covariance at d_cov + i*d*d or
 * its diagonal at d_cov + i*d.  d_scratch holds
 * kvx_cuda_ea_stats_scratch(h, nq, d) bytes.  d even.  Up to 256
 * queries (a window) take one block a head, and with cov 0 leave in the
 * scratch head i's nq centred queries under the mean's rotation at
 * d_scratch + i*nq*d, the w_j whose outer products average to the
 * covariance (kvx_cuda_ea_score can use them in its place); d_cov may
 * then be NULL, and the covariance is not formed.  More queries (a span
 * of the whole prompt, d <= 256) are summed over up to 32 blocks a head
 * into the scratch first, and always form the covariance.
 */
int	 kvx_cuda_ea_stats(const float *d_q, long long qhs, long long qps,
	    int h, int nq, int p0, int n, int future, float theta, int halves,
	    int d, int cov, float *d_mu, float *d_cov, float *d_scratch,
	    cudaStream_t stream);
/* Scratch bytes of kvx_cuda_ea_stats. */
size_t	 kvx_cuda_ea_stats_scratch(int h, int nq, int d);
/*
 * The two halves of kvx_cuda_ea_stats past 256 queries, for statistics
 * kept between calls.  kvx_cuda_ea_moments writes the sums of h query
 * heads' nq queries (post-RoPE, laid out as kvx_cuda_ea_stats takes them,
 * at positions p0 + j), rotated back, and of their products as cov needs
 * them (cov 0, every product, serves any cov of the carry), into d_acc
 * (kvx_cuda_ea_moments_bytes(h, d) bytes, d <= 256).
 * kvx_cuda_ea_carry turns such sums into the statistics after a prompt
 * of n tokens, as kvx_cuda_ea_stats writes them (d_cov may be NULL only
 * with cov 2).  Twins: sel_ea_moments and sel_ea_carry.
 */
size_t	 kvx_cuda_ea_moments_bytes(int h, int d);
int	 kvx_cuda_ea_moments(const float *d_q, long long qhs, long long qps,
	    int h, int nq, int p0, float theta, int halves, int d, int cov,
	    double *d_acc, cudaStream_t stream);
int	 kvx_cuda_ea_carry(const double *d_acc, int h, int nq, int n,
	    int future, float theta, int halves, int d, int cov, float *d_mu,
	    float *d_cov, cudaStream_t stream);
/* Scratch bytes of kvx_cuda_ea_score. */
size_t	 kvx_cuda_ea_scratch(int nseg, int g, int n, int d);
/*
 * Twin of sel_ea_score for nseg segments of n keys each: segment s's key
 * and value rows at d_k + s*d and d_v + s*d elements, rows ld apart (type
 * dtype), and its g query heads' statistics as kvx_cuda_ea_stats wrote
 * them for heads s*g .. s*g + g - 1.  Writes the nc scores of segment s
 * at d_score + s*sstride.  d <= 256, g <= 256.  With cov 0 and d_w not
 * NULL, the quadratic form k' Sigma k is taken as the mean of (w_j . k)^2
 * over the nq vectors that kvx_cuda_ea_stats left at d_w (d_cov unused):
 * nq d products a key and query head instead of d^2.
 */
int	 kvx_cuda_ea_score(const float *d_mu, const float *d_cov, int cov,
	    const float *d_w, int nq, const void *d_k, const void *d_v,
	    int dtype, int nseg, int n, int nc, int s0, int g, int d, int ld,
	    int vnorm, int gqa, void *d_scratch, float *d_score,
	    long long sstride, cudaStream_t stream);

/* --- 1c. KVzip scoring -------------------------------------------------- */
/*
 * Twin of kvzip_score (runtime/kvzip.c) from the logits of the repeat
 * pass's attention: nmat matrices (a KV head's query group) of rows x
 * ncol scaled logits, matrix i at d_s + i*rows*ncol, where row r sees
 * columns up to col0 + r and, with win > 0, only the last win of them,
 * as kvx_cuda_softmax_causal masks them.  For each column c < n,
 * max-merges into d_score[c] (which holds a weight, >= 0) the largest
 * softmax weight (over the row's visible columns) that rows r0 .. rows -
 * 1 of any matrix give it.  d_scratch holds kvx_cuda_kvzip_scratch(nmat,
 * rows) bytes.
 */
size_t	 kvx_cuda_kvzip_scratch(int nmat, int rows);
int	 kvx_cuda_kvzip_max(const float *d_s, int nmat, int rows, int ncol,
	    int col0, int win, int r0, int n, void *d_scratch, float *d_score,
	    cudaStream_t stream);

/* --- 2. per-head top-k selection ---------------------------------------- */
/*
 * Twin of sel_select: for each segment, from its pooled scores at
 * d_pooled + soff[s] (positions 0 .. n[s] - w - 1), keeps the sinks
 * first positions, the top candidates (ties to the lower index) and the
 * w window positions, keep[s] clamped as sel_select does.  Writes the
 * kept positions in increasing order at d_idx + ioff[s] and their count
 * to d_count[s].
 */
int	 kvx_cuda_select(const float *d_pooled, const long long *d_soff,
	    const int *d_n, const int *d_keep, int nseg, int w, int sinks,
	    const long long *d_ioff, int *d_idx, int *d_count,
	    cudaStream_t stream);

/*
 * Twin of sel_hybrid_split: splits total kept candidates over the h (at
 * most 64) heads of one layer, head i's n_cand candidates at d_pooled +
 * soff[i] + c0, each head first reserving its top floor; writes the
 * heads' counts to d_counts.  d_scratch holds 2h ints.  With lay, also
 * lays the heads out in one block, in head order: keep[i] =
 * min(counts[i] + add, nmax) (the keep kvx_cuda_select takes) and
 * d_dst[i] = base + row * (sum over j < i of max(keep[j], minc) +
 * headroom).  The floors run a block per head, the shared rest one
 * block.
 */
struct kvx_cuda_hlayout {
	int		add, nmax, minc, headroom;
	long long	base, row;
};
int	 kvx_cuda_hybrid_split(const float *d_pooled, const long long *d_soff,
	    int c0, int h, int n_cand, int total, int floor,
	    int *d_counts, int *d_scratch, const struct kvx_cuda_hlayout *lay,
	    long long *d_dst, int *d_keep, cudaStream_t stream);

/* --- 3. gather / compaction ------------------------------------------- */
/*
 * Copies, for each segment, rows idx[ioff[s] + i] (i < count[s]) of K and
 * V (rows of d elements of dtype, rows ld_src apart, from element
 * src_off[s]) to consecutive rows at dst_off[s] (rows ld_dst apart).
 * Sources and destinations must not overlap.  max_count bounds count[].
 */
int	 kvx_cuda_gather(const void *d_ksrc, const void *d_vsrc, void *d_kdst,
	    void *d_vdst, int dtype, int d, int ld_src, int ld_dst,
	    const long long *d_src_off, const long long *d_dst_off,
	    const int *d_idx, const long long *d_ioff, const int *d_count,
	    int nseg, int max_count, cudaStream_t stream);

/* --- 4. ragged split-K decode attention -------------------------------- */
/* The work lists come from runtime/worklist.h (wl_plan and its parts). */
/*
 * Variants of the partial kernel.  DEEP: each warp copies K/V two tiles
 * ahead of its arithmetic, two blocks a multiprocessor at d = 128.
 * WIDE: one tile ahead, three blocks a multiprocessor; built for fp16
 * K/V at d = 128 only (elsewhere it runs DEEP, and the two are one).
 * Both give the same bits.
 */
enum kvx_cuda_attn_variant {
	KVX_CUDA_ATTN_DEEP = 0,
	KVX_CUDA_ATTN_WIDE = 1
};
/* Segments a layer from which kvx_cuda_attn_variant takes WIDE (H200:
 * faster from batch 4 of 8 KV heads, slower at batch 1). */
#define KVX_CUDA_ATTN_WIDE_SEGS 32
/* The variant the library runs for nseg segments a layer of (g, d,
 * dtype) on a split list: WIDE where it is built and nseg >=
 * KVX_CUDA_ATTN_WIDE_SEGS, else DEEP.  Lists of one item a segment
 * (wl_one) run on DEEP. */
int	 kvx_cuda_attn_variant(int g, int d, int dtype, int nseg);
/* Blocks of the partial kernel's variant resident at once (0 on
 * error). */
int	 kvx_cuda_attn_blocks(int g, int d, int dtype, int variant);
/*
 * Partial attention of each item: queries d_q + seg*g*d (float), K and V
 * rows of d elements (F16 or BF16) ld apart from element off[seg]
 * (ld and off[] multiples of 8, for 16-byte loads).  Runs nblocks
 * blocks: block b does items d_bfirst[b] .. d_bfirst[b + 1] - 1, or item
 * b when d_bfirst is NULL.  Writes per item and query head the max m
 * (log2 units), the sum l and the unnormalised output acc (g x d).
 * With d_out (then d_first is the list's first[], and required), an
 * item that is its segment's only one writes the segment's output to
 * d_out + seg*g*d instead, as the combine would, and no partial.
 * Items of seg < 0 are skipped (padding).  d is 64, 128 or 256,
 * 1 <= g <= 8; variant is a KVX_CUDA_ATTN_* (the list's blocks sized by
 * kvx_cuda_attn_blocks of the same variant).
 */
int	 kvx_cuda_attn_partial(const float *d_q, const void *d_k,
	    const void *d_v, int dtype, const long long *d_off, int g, int d,
	    int ld, float scale, const struct wl_item *d_items,
	    const int *d_bfirst, int nblocks, const int *d_first, float *d_m,
	    float *d_l, float *d_acc, float *d_out, int variant,
	    cudaStream_t stream);
/*
 * Log-sum-exp merge of each segment's items into d_out + s*g*d (zeros
 * for a segment of no items), floats, or fp16 when out_dtype is
 * KVX_CUDA_F16; d is 64, 128 or 256.  solo (float output only): the
 * partial kernel was given d_out, so segments of one item are left alone
 * (when every segment has one, wl_solo, the combine need not run at
 * all).  most: the most items a segment has, a hint (0: unknown): from
 * 1 to 32/(d/32) (16 at d = 64) one warp merges a (segment, head),
 * four a block, else a block of four warps does; either form gives the
 * same bits for any counts.
 */
int	 kvx_cuda_attn_combine(const int *d_first, int nseg, int g, int d,
	    const float *d_m, const float *d_l, const float *d_acc,
	    void *d_out, int out_dtype, int solo, int most,
	    cudaStream_t stream);

/* --- 5. model layers (the GPU forward of runtime/gpu*.c) ----------------- */
/*
 * Rows ids[t] of an fp16 table of rows of e elements, as floats times
 * scale (Gemma's sqrt(n_embd), else 1), to x + t*e, for t < T.
 */
int	 kvx_cuda_embed(const void *d_table, int e, const int *d_ids, int T,
	    float scale, float *d_x, cudaStream_t stream);
/*
 * RMS norm of each of T rows of e floats (x rows ld_x apart) times the
 * weights w: out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, written as
 * dtype (F32 or F16) rows of e elements, ld_out apart.
 */
int	 kvx_cuda_rmsnorm(const float *d_x, int ld_x, const float *d_w, int T,
	    int e, float eps, void *d_out, int out_dtype, int ld_out,
	    cudaStream_t stream);
/* The same norm of T rows of e floats at d_y, added to the rows of d_x
 * (both rows e apart): a post-norm before the residual add. */
int	 kvx_cuda_rmsnorm_add(const float *d_y, const float *d_w, int T, int e,
	    float eps, float *d_x, cudaStream_t stream);
/* Adds the bias b (n floats) to each of T rows of n floats, ld apart. */
int	 kvx_cuda_bias(float *d_y, int ld, int T, int n, const float *d_b,
	    cudaStream_t stream);
/*
 * The Q and K heads of T rows of a fused QKV projection (rows ld floats
 * apart, each nq Q heads, nk K heads, then nk V heads, of d floats):
 * each Q and K head's RMS norm with d_qw or d_kw when set (per-head Q/K
 * norms), then the rotary embedding at position pos[t] with base theta,
 * pairs (2j, 2j+1) (the GGUF llama layout) or, with halves, (j, j + d/2).
 * Q heads go to d_q (rows ld_q apart), K heads back in place.  With
 * d_kdst and d_vdst set, each K head (rotated) and V head of token t is
 * also stored as fp16: head h to element d_dst_off[t*nk + h] of d_kdst
 * and d_vdst, or, when d_dst_off is NULL, to element (t*nk + h)*d.
 */
int	 kvx_cuda_qk_rope(float *d_qkv, int ld, float *d_q, int ld_q, int T,
	    int nq, int nk, int d, const float *d_qw, const float *d_kw,
	    float eps, const int *d_pos, float theta, int halves,
	    const long long *d_dst_off, void *d_kdst, void *d_vdst,
	    cudaStream_t stream);
/*
 * Gated MLP activation of T rows holding the gate (f elements) then the
 * up projection (f elements): out[t][i] = act(gate) * up, as fp16, rows
 * f apart; act is SiLU, or GELU (tanh form) when gelu is set.
 */
int	 kvx_cuda_glu(const float *d_gu, int T, int f, int gelu, void *d_out,
	    cudaStream_t stream);
/* n floats to fp16. */
int	 kvx_cuda_f2h(const float *d_in, void *d_out, size_t n,
	    cudaStream_t stream);
/*
 * Causal softmax of nmat matrices of rows x ncol logits (float, rows of
 * ncol): row r sees columns 0 .. col0 + r, and with a sliding window of
 * win > 0 keys only the last win of them; writes the probabilities, and
 * zeros elsewhere, as fp16 in the same layout to d_p.
 */
int	 kvx_cuda_softmax_causal(const float *d_s, int nmat, int rows,
	    int ncol, int col0, int win, void *d_p, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
