/*
 * gpu_impl.h - what the parts of the CUDA back end share: the context,
 * its K/V arena and the forward's layers.  gpu_arena.c holds the weights
 * and the arena, gpu_prefill.c the prefill and its compression,
 * gpu_decode.c the batched decode steps, gpu.c the context's life, the
 * layers both passes run and the sequences.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_GPU_IMPL_H
#define KVX_GPU_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "../kernels/kvx_cuda.h"
#include "gpu.h"
#include "kvzip.h"
#include "model.h"
#include "select.h"
#include "worklist.h"

/* Query rows per block of the prefill attention. */
#define QBLK 1024
/* Bytes of each half (K, V) of an arena chunk, at least. */
#define CHUNK_HALF ((size_t)64 << 20)
/* Scoring scratch that may hold the window logits (else computed twice) */
#define SCORE_KEEP ((size_t)256 << 20)
/* cuBLAS workspace bytes (its advice for Hopper) */
#define BLAS_WS ((size_t)32 << 20)

typedef struct gseg {
	long long	off;	/* element offset of row 0 from the K base */
	int		len, cap;
} gseg;

typedef struct gblk {
	int		chunk;	/* -1: none */
	size_t		at, bytes;
} gblk;

typedef struct gchunk {
	char		*base;	/* K half; V half at base + half */
	size_t		 top, live;
} gchunk;

/*
 * KVzip's scores that the repeat pass's attention max-merges (gpu__attn):
 * KV head h's at score + h*hstride, for the first n key rows, the
 * weights of the batch's last w queries; scr is kvx_cuda_kvzip_max's
 * scratch.
 */
typedef struct gpu_kzs {
	float		*score;
	long long	 hstride;
	int		 n, w;
	void		*scr;
} gpu_kzs;

/*
 * A layer's prompt K/V where its selection reads them: rows
 * [row][Hkv][D] of fp16, row 0 the token at position row0 (the first
 * rows a sliding-window layer may not hold), and, for a kvzip plan, the
 * scores of those rows (KV head h's at kz + h*kzs).  SnapKV and Expected
 * Attention read the rotated queries of the prompt's last tokens: token
 * t's at q + (t - qrow0)*H*D, from token qrow0 on; Expected Attention
 * over the whole prompt reads the moments of all its queries at mom
 * (kvx_cuda_ea_moments, cov 0) where they are kept, else (mom NULL)
 * computes them from q.
 */
typedef struct gpu_src {
	const char	*k, *v;
	int		 row0;
	const float	*kz;
	long long	 kzs;
	const float	*q;
	int		 qrow0;
	const double	*mom;
} gpu_src;

typedef struct glayer {
	void		*wqkv, *wo, *wgu, *wd;	/* fp16 */
	float		*an, *fn;
	float		*bqkv;		/* Q, K and V biases, or NULL */
	float		*qn, *kn;	/* per-head Q/K norms, or NULL */
	float		*pan, *pfn;	/* post-norms, or NULL */
} glayer;

/*
 * Where the rows of a sliding-window layer's segment sit in the sequence,
 * so that a decode step skips those that left the window and a full
 * segment drops them: row r < nkept is the prompt token pos[r] (token
 * p0 + r when pos is NULL), row r >= nkept the token base + r - nkept.
 */
typedef struct gwin {
	int		*pos;
	int		 nkept, p0, base;
} gwin;

struct gpu_ctx {
	const kvx_model	*m;	/* read only: its weights go up once */
	kvx_plan	*plan;
	kvx_ctx_params	 p;
	int		 E, H, Hkv, D, F, V, L, NQKV;
	cublasHandle_t	 blas;
	int		 sm;
	/* weights */
	glayer		*lw;
	void		*embd, *out;	/* fp16; out may alias embd */
	float		*onorm;
	/* K/V arena */
	gchunk		*ch;
	int		 nch, capch;
	size_t		 half;
	char		*kbase, *vbase;
	gseg		*seg;		/* [seq][layer][head] */
	gblk		*blk;		/* [seq][layer] */
	int		*npos;
	gwin		*win;		/* [seq][layer][head], NULL without
					   sliding-window layers */
	/* forward scratch, for up to tmax tokens */
	int		 tmax, lrows;
	float		*x, *qkv, *q, *att, *gu, *logits;
	float		*y;		/* a block's output before its
					   post-norm */
	void		*xh;
	int		*ids, *pos;
	/* prefill scratch, for up to pmax tokens */
	int		 pmax;
	void		*qh, *kt, *vt, *P;
	float		*S, *score, *pooled;
	void		*sscr;
	size_t		 sscr_bytes;
	int		*idx, *cnt;	/* kept rows, their counts */
	int		*widx;		/* kept rows of the sliding-window
					   layers, Hkv * pmax each */
	int		*split, *split_scr;	/* in cnt: hybrid layers'
						   counts, their scratch */
	void		*tab;		/* small per-layer tables */
	int		 tab_first, tab_nv;	/* the first row they
					   score (of the keys' source) and
					   their count */
	/* profiling (gpu_profile.c): the rows before span_to attend to
	   their last span keys only; 0 outside it */
	int		 span, span_to;
	/* kvzip: every layer's prompt K/V and the repeat pass's rows,
	   [layer][zrows][Hkv][D] fp16, the scores [layer][Hkv][zrows], the
	   requests, the batches' ids, the kernel's scratch */
	void		*zk, *zv, *zst;
	float		*zs;
	int		*zid;
	int		 zrows, zid_n, zreq_ok;
	kvzip_req	 zreq;
	int32_t		**pids;		/* per sequence: its prefill's ids, for
					   kvx_compress_from from it */
	int		*pids_n;	/* and their count */
	/* a full-cache context's prefills, for kvx_compress_from from them
	   under SnapKV and Expected Attention plans: per sequence, each
	   layer's rotated queries of the last min(n, KVX_WINDOW_MAX)
	   prompt tokens, [layer][KVX_WINDOW_MAX][H][D] floats, and with
	   query_stats the moments of all its queries, [layer] of
	   kvx_cuda_ea_moments_bytes(H, D); allocated at the sequence's
	   first prefill, never in a context with a plan */
	float		**wq;
	double		**qst;
	int		*wq_n;		/* per sequence: queries kept (0:
					   none; qst holds moments too) */
	double		 kz_s;		/* wall seconds of kvzip passes and
					   their selection */
	/* decode step tables */
	char		*h_step, *d_step;
	size_t		 step_cap, dstep_room;	/* bytes of h_step, d_step */
	/* the next step's tables, laid out while a step runs (decode_step) */
	char		*h_pre;
	size_t		 pre_room;
	int		*pre_seqs, pre_max, pre_n, pre_cap, pre_head, pre_ok;
	/* ... and sent to the device while that step runs, on cstream:
	   d_pre receives h_pre (ev_pre: the copy done; ev_used: the next
	   step's copy out of d_pre done; pre_dev: d_pre holds the
	   tables; pre_busy: a copy from h_pre may still run;
	   pre_nodev: the stream or events could not be made, so the
	   tables go up with each step) */
	char		*d_pre;
	size_t		 dpre_room;
	cudaStream_t	 cstream;
	unsigned long	 cstream_seq;	/* gpu__stream_take's */
	cudaEvent_t	 ev_pre, ev_used;
	int		 pre_dev, pre_busy, pre_nodev;
	unsigned long	 gen, pre_gen;	/* gen: bumped by every change of
					   blocks */
	float		*pm, *pl, *pacc;
	int		 part_cap;	/* items the partial buffers hold */
	int		 timing, head;
	/* all the context's device work, decode steps as one CUDA graph */
	cudaStream_t	 stream;	/* its own, non-blocking */
	unsigned long	 stream_seq;	/* gpu__stream_take's */
	void		*blas_ws;	/* cuBLAS workspace, fixed for graphs */
	cudaGraphExec_t	 gx;
	int		 gx_n, gx_cap, gx_head, gx_var, nograph;
	/* bumped by every regrowth of a buffer a decode step names (the
	   forward's, the logits, the step tables, the partial buffers):
	   a graph made before it is void.  Comparing the buffers' addresses
	   instead misses a regrowth that gives one of them its old address
	   back while another moves */
	unsigned long	 bgen, gx_bgen;
	cudaEvent_t	*ev;		/* 4 a layer, timing the compression;
					   the first two also a decode step
					   (gpu__events makes them) */
	gpu_stats	 st;
};

/* A failed CUDA call or kernel launch, or cuBLAS call, with where it
 * happened. */
kvx_status	 gpu__cuda_fail(int code, const char *file, int line,
		     const char *what);
kvx_status	 gpu__blas_fail(int code, const char *file, int line);
/* Streams: kept from freed contexts for later ones (gpu.c). */
int		 gpu__stream_take(cudaStream_t *s, unsigned long *seq);
void		 gpu__stream_give(cudaStream_t s, unsigned long seq);

#define CK(x) do {							\
	int ck_ = (int)(x);						\
	if (ck_ != 0)							\
		return gpu__cuda_fail(ck_, __FILE__, __LINE__, #x);	\
} while (0)
#define CB(x) do {							\
	cublasStatus_t cb_ = (x);					\
	if (cb_ != CUBLAS_STATUS_SUCCESS)				\
		return gpu__blas_fail((int)cb_, __FILE__, __LINE__);	\
} while (0)

/* The segment of (sequence s, layer l, KV head h) and the block of
 * (s, l). */
static inline gseg *
seg_at(const gpu_ctx *g, int s, int l, int h)
{
	return &g->seg[((size_t)s * g->L + l) * g->Hkv + h];
}

static inline gblk *
blk_at(const gpu_ctx *g, int s, int l)
{
	return &g->blk[(size_t)s * g->L + l];
}

/* The sliding-window rows of (s, l, h); only where g->win is set. */
static inline gwin *
win_at(const gpu_ctx *g, int s, int l, int h)
{
	return &g->win[((size_t)s * g->L + l) * g->Hkv + h];
}

/* gpu_arena.c */
kvx_status	 gpu__upload_weights(gpu_ctx *);
kvx_status	 gpu__chunk_add(gpu_ctx *);
void		 gpu__blk_free(gpu_ctx *, int s, int l);
kvx_status	 gpu__blk_alloc(gpu_ctx *, int s, int l, const int *caps);
kvx_status	 gpu__blk_move(gpu_ctx *, int s, int l, const int *caps);
kvx_status	 gpu__regrow(void **p, size_t bytes);

/* gpu_prefill.c */
kvx_status	 gpu__ensure_prefill(gpu_ctx *, int n);
void		 gpu__keep_free(gpu_ctx *);
kvx_status	 gpu__attn(gpu_ctx *, int l, const void *kt, const void *vt,
		     int p0, int T, const gpu_kzs *);

/* gpu_kvzip.c */
kvx_status	 gpu__kvzip_ensure(gpu_ctx *, int n);
kvx_status	 gpu__kvzip_pass(gpu_ctx *, const int32_t *ids, int n,
		     const int *np);
void		 gpu__kvzip_src(const gpu_ctx *, int l, int n, int np,
		     gpu_src *);
void		 gpu__kvzip_free(gpu_ctx *);
kvx_status	 gpu__kvzip_keep_ids(gpu_ctx *, int s, const int32_t *ids,
		     int n);
kvx_status	 gpu__kvzip_load(gpu_ctx *, const gpu_ctx *src, int ss, int n,
		     int *np);

/* gpu_profile.c */
kvx_status	 gpu__profile(gpu_ctx *, const fw_batch *, kv_cache *);

/* gpu.c: the forward's buffers and layers */
kvx_status	 gpu__ensure_fw(gpu_ctx *, int t);
kvx_status	 gpu__ensure_logits(gpu_ctx *, int n);
kvx_status	 gpu__gemm(gpu_ctx *, const void *W, int rows, int cols,
		     const void *X, int T, float *Y, int ldy, float beta);
kvx_status	 gpu__events(gpu_ctx *);
kvx_status	 gpu__qkv_rope(gpu_ctx *, int l, int T, const long long *off,
		     void *kd, void *vd);
kvx_status	 gpu__out_ffn(gpu_ctx *, int l, int T, int xh_ready);
kvx_status	 gpu__lm_head(gpu_ctx *, int r0, int n);
void		 gpu__win_clear(gpu_ctx *, int s);
int		 gpu__win_skip(const gpu_ctx *, int s, int l, int h, int p);
void		 gpu__win_drop(gpu_ctx *, int s, int l, int h, int d);

#endif
