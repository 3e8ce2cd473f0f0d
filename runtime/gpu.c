/*
 * gpu.c - contexts on a CUDA device: their creation and release, the
 * layers of the forward that prefill and decode share, and the
 * sequences' bookkeeping.
 * SPDX-License-Identifier: MIT
 *
 * Every linear layer is one cuBLAS GEMM with fp32 accumulation and
 * output over fp16 weights (gpu_arena.c); the output and down
 * projections accumulate into the residual stream with beta = 1, or,
 * where the architecture norms a block's output (Gemma 3's post-norms),
 * go to a scratch row that the norm adds to it.  What sets an
 * architecture apart comes from its description (arch.h) and the
 * model's layers, as on the CPU: biases, head norms, RoPE layout and
 * base, activation, embedding scale and sliding windows.
 * Prefill is in gpu_prefill.c, decode in gpu_decode.c.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "backend.h"
#include "gpu_impl.h"
#include "plan.h"
#include "util.h"

// --- streams -----------------------------------------------------------------

/*
 * The streams of freed contexts, kept for later ones.  On the H200 a
 * process's fourth and later streams run every kernel of a captured
 * graph ~0.18 us later than its first ones (bench/kvx-bench-streams:
 * whatever the handles and allocations, not when one stream is
 * reused), ~5% of a small model's decode step; a context made after
 * another is freed takes its streams back.  The oldest stream of the
 * device goes first.  Guarded by spool_mu, as contexts are made and
 * freed on any thread.
 */
#define SPOOL_KEEP 8
static pthread_mutex_t spool_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
	cudaStream_t	 s;
	int		 dev;
	unsigned long	 seq;	/* creation order */
} spool[SPOOL_KEEP];
static int spool_n;
static unsigned long spool_seq;

/* A non-blocking stream of the current device, a kept one if there is
 * one, else a new one; *seq gets its creation order, for
 * gpu__stream_give.  Returns cudaSuccess or the creation's error. */
int
gpu__stream_take(cudaStream_t *s, unsigned long *seq)
{
	int dev = -1, i, best = -1, rc;

	if (cudaGetDevice(&dev) != cudaSuccess) {
		cudaGetLastError();
		dev = -1;
	}
	pthread_mutex_lock(&spool_mu);
	for (i = 0; i < spool_n; i++)
		if (spool[i].dev == dev && (best < 0 ||
		    spool[i].seq < spool[best].seq))
			best = i;
	if (best >= 0) {
		*s = spool[best].s;
		*seq = spool[best].seq;
		spool[best] = spool[--spool_n];
		pthread_mutex_unlock(&spool_mu);
		return cudaSuccess;
	}
	*seq = ++spool_seq;
	pthread_mutex_unlock(&spool_mu);
	rc = cudaStreamCreateWithFlags(s, cudaStreamNonBlocking);
	if (rc != cudaSuccess)
		*s = NULL;
	return rc;
}

/* Gives back a stream of gpu__stream_take once its work is done: kept
 * when there is room and it still works, else destroyed. */
void
gpu__stream_give(cudaStream_t s, unsigned long seq)
{
	int dev = -1, keep;

	if (s == NULL)
		return;
	keep = cudaStreamSynchronize(s) == cudaSuccess &&
	    cudaGetDevice(&dev) == cudaSuccess;
	cudaGetLastError();
	pthread_mutex_lock(&spool_mu);
	if (keep && spool_n < SPOOL_KEEP) {
		spool[spool_n].s = s;
		spool[spool_n].dev = dev;
		spool[spool_n].seq = seq;
		spool_n++;
		s = NULL;
	}
	pthread_mutex_unlock(&spool_mu);
	if (s != NULL)
		cudaStreamDestroy(s);
}

// --- errors ------------------------------------------------------------------

/* A failed CUDA call or kernel launch, with where it happened. */
kvx_status
gpu__cuda_fail(int code, const char *file, int line, const char *what)
{
	return kvx__fail(KVX_ERR_DEVICE, "%s:%d: %s: %s", file, line, what,
	    kvx_cuda_strerror(code));
}

/* A failed cuBLAS call, with where it happened. */
kvx_status
gpu__blas_fail(int code, const char *file, int line)
{
	return kvx__fail(KVX_ERR_DEVICE, "%s:%d: cuBLAS status %d", file,
	    line, code);
}

/* 1 when a CUDA device is usable. */
int
gpu_available(void)
{
	return kvx_cuda_available();
}

// --- creation ----------------------------------------------------------------

/* Release a context and everything it holds on the device; clears *pg. */
void
gpu_ctx_free(gpu_ctx **pg)
{
	gpu_ctx *g = *pg;
	int l, c;

	if (g == NULL)
		return;
	if (g->lw != NULL)
		for (l = 0; l < g->L; l++) {
			cudaFree(g->lw[l].wqkv);
			cudaFree(g->lw[l].wo);
			cudaFree(g->lw[l].wgu);
			cudaFree(g->lw[l].wd);
			cudaFree(g->lw[l].an);
			cudaFree(g->lw[l].fn);
			cudaFree(g->lw[l].bqkv);
			cudaFree(g->lw[l].qn);
			cudaFree(g->lw[l].kn);
			cudaFree(g->lw[l].pan);
			cudaFree(g->lw[l].pfn);
		}
	if (g->out != g->embd)
		cudaFree(g->out);
	cudaFree(g->embd);
	cudaFree(g->onorm);
	for (c = 0; c < g->nch; c++)
		cudaFree(g->ch[c].base);
	cudaFree(g->x);
	cudaFree(g->qkv);
	cudaFree(g->q);
	cudaFree(g->att);
	cudaFree(g->gu);
	cudaFree(g->y);
	cudaFree(g->logits);
	cudaFree(g->xh);
	cudaFree(g->ids);
	cudaFree(g->pos);
	cudaFree(g->qh);
	cudaFree(g->kt);
	cudaFree(g->vt);
	cudaFree(g->P);
	cudaFree(g->S);
	cudaFree(g->score);
	cudaFree(g->pooled);
	cudaFree(g->sscr);
	cudaFree(g->idx);
	cudaFree(g->cnt);
	cudaFree(g->widx);
	cudaFree(g->tab);
	gpu__kvzip_free(g);
	gpu__keep_free(g);
	/* a look-ahead upload may still read h_pre: given back once its
	   work is done */
	gpu__stream_give(g->cstream, g->cstream_seq);
	if (g->ev_pre != NULL)
		cudaEventDestroy(g->ev_pre);
	if (g->ev_used != NULL)
		cudaEventDestroy(g->ev_used);
	cudaFree(g->d_pre);
	cudaFree(g->d_step);
	cudaFree(g->pm);
	cudaFree(g->pl);
	cudaFree(g->pacc);
	cudaFreeHost(g->h_step);
	cudaFreeHost(g->h_pre);
	free(g->pre_seqs);
	if (g->gx != NULL)
		cudaGraphExecDestroy(g->gx);
	cudaFree(g->blas_ws);
	if (g->ev != NULL)
		for (l = 0; l < 4 * g->L; l++)
			cudaEventDestroy(g->ev[l]);
	free(g->ev);
	if (g->blas != NULL)
		cublasDestroy(g->blas);
	/* last, once nothing of the context can touch it */
	gpu__stream_give(g->stream, g->stream_seq);
	free(g->lw);
	free(g->ch);
	free(g->seg);
	free(g->blk);
	if (g->win != NULL)
		for (c = 0; c < g->p.n_seq; c++)
			gpu__win_clear(g, c);
	free(g->win);
	free(g->npos);
	kvx_plan_free(&g->plan);
	free(g);
	*pg = NULL;
}

/* KVX_OK when the GPU forward runs this model, else why not. */
static kvx_status
gpu_runs(const kvx_model *m)
{
	const kvx_model_info *mi = &m->info;

	/* every architecture of arch.c: the layers take what differs from
	   the description; the decode attention instantiates these sizes */
	if (mi->head_dim != 64 && mi->head_dim != 128 && mi->head_dim != 256)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "the GPU path needs "
		    "head_dim 64, 128 or 256, not %d", mi->head_dim);
	if (mi->n_head / mi->n_head_kv > 8 || mi->n_head_kv > SEL_MAX_KV_HEADS)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "the GPU path needs at "
		    "most 8 query heads per KV head and 64 KV heads");
	return KVX_OK;
}

/* A context on the device for plan (NULL: the full cache): its stream,
 * cuBLAS handle, the weights and the first arena chunk. */
kvx_status
gpu_ctx_new(kvx_model *m, const kvx_plan *plan, const kvx_ctx_params *p,
    gpu_ctx **out)
{
	const kvx_model_info *mi = &m->info;
	size_t nsl, i, rows;
	kvx_status rc;
	gpu_ctx *g;
	int l, swa = 0;

	*out = NULL;
	if (!kvx_cuda_available())
		return kvx__fail(KVX_ERR_DEVICE, "no CUDA device is usable");
	if ((rc = gpu_runs(m)) != KVX_OK)
		return rc;
	if (plan != NULL && plan->window > KVX_WINDOW_MAX)
		return kvx__fail(KVX_ERR_PLAN, "plan window %d exceeds the "
		    "runtime's limit %d", plan->window, KVX_WINDOW_MAX);
	if ((g = calloc(1, sizeof *g)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	g->m = m;
	g->p = *p;
	g->E = mi->n_embd;
	g->H = mi->n_head;
	g->Hkv = mi->n_head_kv;
	g->D = mi->head_dim;
	g->F = mi->n_ff;
	g->V = mi->n_vocab;
	g->L = mi->n_layer;
	g->NQKV = (g->H + 2 * g->Hkv) * g->D;
	g->sm = kvx_cuda_sm_count();
	if (plan != NULL && (rc = plan_copy(plan, &g->plan)) != KVX_OK)
		goto fail;
	if (cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS) {
		g->blas = NULL;
		rc = kvx__fail(KVX_ERR_DEVICE, "cannot create a cuBLAS handle");
		goto fail;
	}
	/*
	 * One stream for all of the context's work, so that its order is
	 * the order of the calls; non-blocking, so that nothing on the
	 * legacy default stream (another context's, or the embedder's)
	 * waits for it or breaks its graph captures.  cuBLAS keeps one
	 * workspace, as graph capture needs.
	 */
	if (gpu__stream_take(&g->stream, &g->stream_seq) != cudaSuccess ||
	    cudaMalloc(&g->blas_ws, BLAS_WS) != cudaSuccess) {
		/* a stream taken goes back with the context */
		cudaGetLastError();
		rc = kvx__fail(KVX_ERR_DEVICE, "cannot create the context's "
		    "stream");
		goto fail;
	}
	if (cublasSetStream(g->blas, g->stream) != CUBLAS_STATUS_SUCCESS ||
	    cublasSetWorkspace(g->blas, g->blas_ws, BLAS_WS) !=
	    CUBLAS_STATUS_SUCCESS) {
		rc = kvx__fail(KVX_ERR_DEVICE, "cannot set the cuBLAS stream");
		goto fail;
	}
	g->nograph = getenv("KVX_GPU_NOGRAPH") != NULL;
	nsl = (size_t)g->p.n_seq * g->L;
	g->lw = kvx__calloc((size_t)g->L, sizeof *g->lw);
	g->seg = kvx__calloc(nsl * g->Hkv, sizeof *g->seg);
	g->blk = kvx__calloc(nsl, sizeof *g->blk);
	g->npos = kvx__calloc((size_t)g->p.n_seq, sizeof *g->npos);
	g->pre_seqs = kvx__calloc((size_t)g->p.n_seq, sizeof *g->pre_seqs);
	g->pre_max = g->p.n_seq;
	for (l = 0; l < g->L; l++)
		if (m->L[l].window > 0)
			swa = 1;
	if (swa)
		g->win = kvx__calloc(nsl * g->Hkv, sizeof *g->win);
	if (!g->lw || !g->seg || !g->blk || !g->npos || !g->pre_seqs ||
	    (swa && !g->win)) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory");
		goto fail;
	}
	for (i = 0; i < nsl; i++)
		g->blk[i].chunk = -1;
	/* a chunk holds at least one layer of a full-length sequence */
	rows = (size_t)g->Hkv * ((size_t)g->p.n_ctx + g->p.decode_headroom +
	    64) * g->D * sizeof(uint16_t);
	g->half = rows > CHUNK_HALF ? (rows + 255) & ~(size_t)255 : CHUNK_HALF;
	if ((rc = gpu__chunk_add(g)) != KVX_OK ||
	    (rc = gpu__upload_weights(g)) != KVX_OK)
		goto fail;
	*out = g;
	return KVX_OK;
fail:
	gpu_ctx_free(&g);
	return rc;
}

/* Benchmarks: timing on or off, and the LM head on every decode step. */
void
gpu_set_options(gpu_ctx *g, int timing, int head)
{
	g->timing = timing;
	g->head = head;
}

/* The timing events (4 a layer), made on first use. */
kvx_status
gpu__events(gpu_ctx *g)
{
	int l;

	if (g->ev != NULL)
		return KVX_OK;
	if ((g->ev = kvx__calloc((size_t)4 * g->L, sizeof *g->ev)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	for (l = 0; l < 4 * g->L; l++)
		if (cudaEventCreate(&g->ev[l]) != cudaSuccess) {
			while (l-- > 0)
				cudaEventDestroy(g->ev[l]);
			free(g->ev);
			g->ev = NULL;
			return kvx__fail(KVX_ERR_DEVICE, "%s:%d: cannot create "
			    "the timing events", __FILE__, __LINE__);
		}
	return KVX_OK;
}

/* The times gathered while timing is on. */
const gpu_stats *
gpu_get_stats(const gpu_ctx *g)
{
	return &g->st;
}

// --- layers ------------------------------------------------------------------

/* Forward buffers for t tokens. */
kvx_status
gpu__ensure_fw(gpu_ctx *g, int t)
{
	size_t T, xw;
	kvx_status rc;

	if (t <= g->tmax)
		return KVX_OK;
	T = (size_t)(t < 16 ? 16 : t);
	xw = (size_t)g->E;
	if ((size_t)g->H * g->D > xw)
		xw = (size_t)g->H * g->D;
	if ((size_t)g->F > xw)
		xw = (size_t)g->F;
	g->tmax = 0;
	g->bgen++;
	if ((rc = gpu__regrow((void **)&g->x, T * g->E * 4)) != KVX_OK ||
	    (rc = gpu__regrow((void **)&g->qkv, T * g->NQKV * 4)) != KVX_OK ||
	    (rc = gpu__regrow((void **)&g->q, T * g->H * g->D * 4)) != KVX_OK ||
	    (rc = gpu__regrow((void **)&g->att, T * g->H * g->D * 4)) !=
	    KVX_OK ||
	    (rc = gpu__regrow((void **)&g->gu, T * 2 * g->F * 4)) != KVX_OK ||
	    (rc = gpu__regrow((void **)&g->y, T * g->E * 4)) != KVX_OK ||
	    (rc = gpu__regrow(&g->xh, T * xw * 2)) != KVX_OK ||
	    (rc = gpu__regrow((void **)&g->ids, T * sizeof(int))) != KVX_OK ||
	    (rc = gpu__regrow((void **)&g->pos, T * sizeof(int))) != KVX_OK)
		return rc;
	g->tmax = (int)T;
	return KVX_OK;
}

/* Y[T][rows] (ld ldy) = X[T][cols] W^T + beta Y; W fp16 rows x cols. */
kvx_status
gpu__gemm(gpu_ctx *g, const void *W, int rows, int cols, const void *X, int T,
    float *Y, int ldy, float beta)
{
	float alpha = 1.0f;

	CB(cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, T, cols,
	    &alpha, W, CUDA_R_16F, cols, X, CUDA_R_16F, cols, &beta, Y,
	    CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
	return KVX_OK;
}

/* Norm, QKV projection, biases, head norms and RoPE of T tokens at
 * layer l: q gets the rotated queries [T][H][D], qkv keeps the rotated
 * keys and the values, and with kd and vd set the keys and values also
 * go to the cache as fp16 (kvx_cuda_qk_rope: at off, or packed when off
 * is NULL). */
kvx_status
gpu__qkv_rope(gpu_ctx *g, int l, int T, const long long *off, void *kd,
    void *vd)
{
	glayer *w = &g->lw[l];
	const kvx_model_info *mi = &g->m->info;
	float theta = g->m->L[l].theta;
	int halves = g->m->desc->rope == ROPE_HALVES;
	kvx_status rc;

	CK(kvx_cuda_rmsnorm(g->x, g->E, w->an, T, g->E, mi->rms_eps, g->xh,
	    KVX_CUDA_F16, g->E, g->stream));
	if ((rc = gpu__gemm(g, w->wqkv, g->NQKV, g->E, g->xh, T, g->qkv,
	    g->NQKV, 0.0f)) != KVX_OK)
		return rc;
	if (w->bqkv != NULL)
		CK(kvx_cuda_bias(g->qkv, g->NQKV, T, g->NQKV, w->bqkv,
		    g->stream));
	CK(kvx_cuda_qk_rope(g->qkv, g->NQKV, g->q, g->H * g->D, T, g->H,
	    g->Hkv, g->D, w->qn, w->kn, mi->rms_eps, g->pos, theta, halves,
	    off, kd, vd, g->stream));
	return KVX_OK;
}

/*
 * Y = X W^T of T rows added to the residual stream x: directly (beta 1)
 * or, with a post-norm pn, through y and the norm.
 */
static kvx_status
residual_gemm(gpu_ctx *g, const void *W, int cols, const float *pn, int T)
{
	kvx_status rc;

	if (pn == NULL)
		return gpu__gemm(g, W, g->E, cols, g->xh, T, g->x, g->E, 1.0f);
	if ((rc = gpu__gemm(g, W, g->E, cols, g->xh, T, g->y, g->E, 0.0f)) !=
	    KVX_OK)
		return rc;
	CK(kvx_cuda_rmsnorm_add(g->y, pn, T, g->E, g->m->info.rms_eps, g->x,
	    g->stream));
	return KVX_OK;
}

/* Output projection and feed-forward block of T tokens at layer l, the
 * attention output in att (floats), or already in xh as fp16 when
 * xh_ready is set. */
kvx_status
gpu__out_ffn(gpu_ctx *g, int l, int T, int xh_ready)
{
	glayer *w = &g->lw[l];
	kvx_status rc;

	if (!xh_ready)
		CK(kvx_cuda_f2h(g->att, g->xh, (size_t)T * g->H * g->D,
		    g->stream));
	if ((rc = residual_gemm(g, w->wo, g->H * g->D, w->pan, T)) != KVX_OK)
		return rc;
	CK(kvx_cuda_rmsnorm(g->x, g->E, w->fn, T, g->E, g->m->info.rms_eps,
	    g->xh, KVX_CUDA_F16, g->E, g->stream));
	if ((rc = gpu__gemm(g, w->wgu, 2 * g->F, g->E, g->xh, T, g->gu,
	    2 * g->F, 0.0f)) != KVX_OK)
		return rc;
	CK(kvx_cuda_glu(g->gu, T, g->F, g->m->desc->gelu, g->xh, g->stream));
	return residual_gemm(g, w->wd, g->F, w->pfn, T);
}

/* Device logits for n rows. */
kvx_status
gpu__ensure_logits(gpu_ctx *g, int n)
{
	kvx_status rc;

	if (n > g->lrows) {
		g->lrows = 0;
		g->bgen++;
		if ((rc = gpu__regrow((void **)&g->logits, (size_t)n * g->V *
		    4)) != KVX_OK)
			return rc;
		g->lrows = n;
	}
	return KVX_OK;
}

/* Final norm and LM head of n rows of x starting at row r0, into the
 * device logits buffer. */
kvx_status
gpu__lm_head(gpu_ctx *g, int r0, int n)
{
	kvx_status rc;

	if ((rc = gpu__ensure_logits(g, n)) != KVX_OK)
		return rc;
	CK(kvx_cuda_rmsnorm(g->x + (size_t)r0 * g->E, g->E, g->onorm, n, g->E,
	    g->m->info.rms_eps, g->xh, KVX_CUDA_F16, g->E, g->stream));
	return gpu__gemm(g, g->out, g->V, g->E, g->xh, n, g->logits, g->V,
	    0.0f);
}

// --- sequences -----------------------------------------------------------------

/* Empty sequence s, releasing its blocks. */
kvx_status
gpu_seq_clear(gpu_ctx *g, int s)
{
	int l;

	for (l = 0; l < g->L; l++)
		gpu__blk_free(g, s, l);
	gpu__win_clear(g, s);
	g->npos[s] = 0;
	return KVX_OK;
}

/* Forget where the sliding-window rows of sequence s sit. */
void
gpu__win_clear(gpu_ctx *g, int s)
{
	int l, h;

	if (g->win == NULL)
		return;
	for (l = 0; l < g->L; l++)
		for (h = 0; h < g->Hkv; h++) {
			gwin *w = win_at(g, s, l, h);

			free(w->pos);
			memset(w, 0, sizeof *w);
		}
}

/*
 * Rows at the front of segment (s, l, h) that a query at position p
 * does not see: those that left layer l's sliding window (positions up
 * to p - window), 0 for a global layer.  Rows are in position order.
 */
int
gpu__win_skip(const gpu_ctx *g, int s, int l, int h, int p)
{
	int wl = g->m->L[l].window, lim = p - wl, lo, hi, mid;
	const gwin *w;

	if (wl <= 0 || lim < 0)
		return 0;
	w = win_at(g, s, l, h);
	if (lim >= w->base)
		return w->nkept + (lim - w->base + 1);
	if (w->pos == NULL) {
		if (lim < w->p0)
			return 0;
		return lim - w->p0 + 1 < w->nkept ? lim - w->p0 + 1 : w->nkept;
	}
	lo = 0;
	hi = w->nkept;
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (w->pos[mid] <= lim)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The first d rows of segment (s, l, h) were dropped: its rows'
 * positions move up. */
void
gpu__win_drop(gpu_ctx *g, int s, int l, int h, int d)
{
	gwin *w;

	if (g->win == NULL || d <= 0)
		return;
	w = win_at(g, s, l, h);
	if (d >= w->nkept) {
		w->base += d - w->nkept;
		w->nkept = 0;
		return;
	}
	if (w->pos != NULL)
		memmove(w->pos, w->pos + d, (size_t)(w->nkept - d) *
		    sizeof(int));
	else
		w->p0 += d;
	w->nkept -= d;
}

/* Positions sequence s holds. */
int
gpu_seq_len(const gpu_ctx *g, int s)
{
	return g->npos[s];
}

/* The K rows of segment (s, l, h) as floats, at most cap of them. */
kvx_status
gpu_seg_keys(gpu_ctx *g, int s, int l, int h, float *k, int cap, int *len)
{
	const gseg *sg = seg_at(g, s, l, h);
	size_t i, n = (size_t)(sg->len < cap ? sg->len : cap) * g->D;
	uint16_t *hk;

	*len = sg->len;
	if ((hk = kvx__malloc_array(n + 1, sizeof(uint16_t))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	if (cudaStreamSynchronize(g->stream) != cudaSuccess ||
	    cudaMemcpy(hk, g->kbase + sg->off * 2, n * 2,
	    cudaMemcpyDeviceToHost) != cudaSuccess) {
		free(hk);
		return kvx__fail(KVX_ERR_DEVICE, "%s:%d: segment copy failed",
		    __FILE__, __LINE__);
	}
	for (i = 0; i < n; i++)
		k[i] = kvx__h2f(hk[i]);
	free(hk);
	return KVX_OK;
}

/* Copy sequence src's cache into the empty sequence dst. */
kvx_status
gpu_seq_copy(gpu_ctx *g, int dst, int src)
{
	size_t rb = (size_t)g->D * 2;
	int caps[SEL_MAX_KV_HEADS], l, h;
	kvx_status rc;

	if (dst == src || g->npos[dst] != 0)
		return kvx__fail(KVX_ERR_ARG, "gpu_seq_copy: sequence %d is "
		    "not an empty other sequence", dst);
	for (l = 0; l < g->L; l++) {
		for (h = 0; h < g->Hkv; h++)
			caps[h] = seg_at(g, src, l, h)->cap;
		if ((rc = gpu__blk_alloc(g, dst, l, caps)) != KVX_OK)
			return rc;
		for (h = 0; h < g->Hkv; h++) {
			gseg *a = seg_at(g, src, l, h), *b = seg_at(g, dst, l,
			    h);

			CK(cudaMemcpyAsync(g->kbase + b->off * 2, g->kbase +
			    a->off * 2, (size_t)a->len * rb,
			    cudaMemcpyDeviceToDevice, g->stream));
			CK(cudaMemcpyAsync(g->vbase + b->off * 2, g->vbase +
			    a->off * 2, (size_t)a->len * rb,
			    cudaMemcpyDeviceToDevice, g->stream));
			b->len = a->len;
			if (g->win != NULL) {
				gwin *wa = win_at(g, src, l, h);
				gwin *wb = win_at(g, dst, l, h);

				*wb = *wa;
				wb->pos = NULL;
				if (wa->pos != NULL && (wb->pos =
				    kvx__malloc_array((size_t)wa->nkept,
				    sizeof(int))) == NULL)
					return kvx__fail(KVX_ERR_NOMEM,
					    "out of memory");
				if (wa->pos != NULL)
					memcpy(wb->pos, wa->pos,
					    (size_t)wa->nkept * sizeof(int));
			}
		}
	}
	g->npos[dst] = g->npos[src];
	CK(cudaStreamSynchronize(g->stream));
	return KVX_OK;
}

/*
 * K/V rows and bytes held, used and a full cache would take, as the CPU
 * counts them: a sliding-window layer's full cache is its window
 * (sel_window_rows), and of its rows only those the next query may see
 * count as kept; rows past them wait in the segment until it needs their
 * room.
 */
kvx_status
gpu_memory(const gpu_ctx *g, kvx_memory *mem)
{
	size_t row = (size_t)2 * g->D * sizeof(uint16_t);
	uint64_t full = 0;
	int s, l, h, cap;

	memset(mem, 0, sizeof *mem);
	for (s = 0; s < g->p.n_seq; s++) {
		mem->n_tokens += g->npos[s];
		for (l = 0; l < g->L; l++) {
			cap = sel_window_rows(g->m->L[l].window, g->npos[s]);
			full += (uint64_t)cap * g->Hkv;
			for (h = 0; h < g->Hkv; h++) {
				const gseg *sg = seg_at(g, s, l, h);

				mem->n_kept += sg->len < cap ? sg->len : cap;
				mem->kv_bytes += (uint64_t)sg->cap * row;
			}
		}
	}
	mem->kv_bytes_used = (uint64_t)mem->n_kept * row;
	mem->kv_bytes_full = full * row;
	return KVX_OK;
}

// --- the back end of GPU contexts (backend.h) -----------------------------

/* Adapters from the back-end table's opaque state to the GPU context. */
static kvx_status
ops_create(kvx_model *m, const kvx_plan *plan, const kvx_ctx_params *p,
    void **out)
{
	gpu_ctx *g = NULL;
	kvx_status rc;

	rc = gpu_ctx_new(m, plan, p, &g);
	*out = g;
	return rc;
}

static void
ops_destroy(void **pg)
{
	gpu_ctx *g = *pg;

	gpu_ctx_free(&g);
	*pg = NULL;
}

static kvx_status
ops_prefill(void *g, int seq, const int32_t *ids, int n, float *logits)
{
	return gpu_prefill(g, seq, ids, n, logits);
}

static kvx_status
ops_extend(void *g, int seq, const int32_t *ids, int n, float *logits)
{
	return gpu_extend(g, seq, ids, n, logits);
}

static kvx_status
ops_decode(void *g, int n, const int *seqs, const int32_t *ids,
    float *logits)
{
	return gpu_decode(g, n, seqs, ids, logits);
}

static kvx_status
ops_compress_from(void *g, int seq, const void *src, int sseq)
{
	return gpu_compress_from(g, seq, src, sseq);
}

static kvx_status
ops_seq_clear(void *g, int seq)
{
	return gpu_seq_clear(g, seq);
}

static int
ops_seq_len(const void *g, int seq)
{
	return gpu_seq_len(g, seq);
}

static kvx_status
ops_memory(const void *g, kvx_memory *mem)
{
	return gpu_memory(g, mem);
}

static int
ops_runs(const kvx_model *m)
{
	if (gpu_runs(m) == KVX_OK)
		return 1;
	/* not a failure of the caller's: auto contexts fall back */
	kvx__clear_error();
	return 0;
}

/* Seconds of the kvzip passes and their selection (the prefills' only
 * selection measured without synchronising every layer), else -1. */
static double
ops_select_seconds(const void *g)
{
	const gpu_ctx *c = g;

	if (c->plan == NULL || c->plan->scorer != PLAN_SCORER_KVZIP)
		return -1.0;
	return c->kz_s;
}

static kvx_status
ops_profile(void *g, const fw_batch *b, kv_cache *kv)
{
	return gpu__profile(g, b, kv);
}

static const ctx_ops gpu_ops = {
	.name = "gpu",
	.available = gpu_available,
	.runs = ops_runs,
	.create = ops_create,
	.destroy = ops_destroy,
	.prefill = ops_prefill,
	.extend = ops_extend,
	.decode = ops_decode,
	.compress_from = ops_compress_from,
	.seq_clear = ops_seq_clear,
	.seq_len = ops_seq_len,
	.memory = ops_memory,
	.profile = ops_profile,
	.select_seconds = ops_select_seconds,
};

const ctx_ops *
gpu_ops_get(void)
{
	return &gpu_ops;
}
