/*
 * gpu.c - contexts on a CUDA device: fp16 weights, fp16 ragged KV
 * segments, prefill with per-layer SnapKV compression, batched decode.
 * SPDX-License-Identifier: MIT
 *
 * Weights are dequantised on the host once, at context creation, and kept
 * as fp16; every linear layer is one cuBLAS GEMM with fp32 accumulation
 * and output (Q, K, V fused into one matrix, gate and up into another;
 * the output and down projections accumulate into the residual stream
 * with beta = 1).
 *
 * K/V live in arena chunks of fixed size, each one allocation holding a K
 * half and a V half: a row's V sits a constant distance after its K, so
 * the attention kernel addresses every segment of every chunk through one
 * K base, one V base and per-segment element offsets.  The segments of a
 * (sequence, layer) are one block of a chunk; a chunk is reused once all
 * its blocks are freed.
 *
 * Prefill runs one sequence: each layer's K/V of the whole prompt go to a
 * scratch buffer, causal attention runs on them with batched GEMMs, then
 * the layer is scored, selected and gathered into blocks sized to the
 * plan (kept rows plus decode headroom), so the full cache exists for one
 * layer at a time.  Hybrid plans split each layer's budget over its heads
 * on the device too; the host reads the heads' counts once, after the
 * last layer, so the prefill never waits.  Decode builds, per step, each
 * layer's segment table and split-K work list on the host and uploads
 * them in one copy.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "../kernels/kvx_cuda.h"
#include "gpu.h"
#include "model.h"
#include "plan.h"
#include "quant.h"
#include "select.h"
#include "util.h"
#include "worklist.h"

/* Window queries available to the selection, as on the CPU path. */
#define WIN_MAX 64
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

typedef struct glayer {
	void		*wqkv, *wo, *wgu, *wd;	/* fp16 */
	float		*an, *fn;
} glayer;

struct gpu_ctx {
	kvx_model	*m;
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
	/* forward scratch, for up to tmax tokens */
	int		 tmax, lrows;
	float		*x, *qkv, *q, *att, *gu, *logits;
	void		*xh;
	int		*ids, *pos;
	/* prefill scratch, for up to pmax tokens */
	int		 pmax;
	void		*qh, *kt, *vt, *P;
	float		*S, *score, *pooled;
	void		*sscr;
	size_t		 sscr_bytes;
	int		*idx, *cnt;
	void		*tab;		/* small per-layer tables */
	/* decode step tables */
	char		*h_step, *d_step;
	size_t		 step_cap, dstep_room;	/* bytes of h_step, d_step */
	/* the next step's tables, laid out while a step runs (decode_step) */
	char		*h_pre;
	size_t		 pre_room;
	int		*pre_seqs, pre_max, pre_n, pre_cap, pre_head, pre_ok;
	unsigned long	 gen, pre_gen;	/* gen: bumped by every change of
					   blocks */
	float		*pm, *pl, *pacc;
	int		 part_cap;	/* items the partial buffers hold */
	int		 timing, head;
	/* decode steps run as one CUDA graph on their own stream */
	cudaStream_t	 ds, cs;	/* decode stream; stream in use */
	void		*blas_ws;	/* cuBLAS workspace, fixed for graphs */
	cudaGraphExec_t	 gx;
	int		 gx_n, gx_cap, gx_head, nograph;
	const void	*gx_key[8];	/* buffers the graph was made with */
	cudaEvent_t	*ev;		/* 4 a layer, timing the compression */
	gpu_stats	 st;
};

// --- errors ------------------------------------------------------------------

/* A failed CUDA call or kernel launch, with where it happened. */
static kvx_status
cuda_fail(int code, const char *file, int line, const char *what)
{
	return kvx__fail(KVX_ERR_DEVICE, "%s:%d: %s: %s", file, line, what,
	    kvx_cuda_strerror(code));
}

static kvx_status
blas_fail(int code, const char *file, int line)
{
	return kvx__fail(KVX_ERR_DEVICE, "%s:%d: cuBLAS status %d", file,
	    line, code);
}

#define CK(x) do {							\
	int ck_ = (int)(x);						\
	if (ck_ != 0)							\
		return cuda_fail(ck_, __FILE__, __LINE__, #x);		\
} while (0)
#define CB(x) do {							\
	cublasStatus_t cb_ = (x);					\
	if (cb_ != CUBLAS_STATUS_SUCCESS)				\
		return blas_fail((int)cb_, __FILE__, __LINE__);		\
} while (0)

int
gpu_available(void)
{
	return kvx_cuda_available();
}

// --- weights -----------------------------------------------------------------

/* Dequantise a matrix on the host and store it as fp16 at d_dst. */
static kvx_status
upload_mat(const mat *w, void *d_dst, float *d_tmp, float *h_tmp)
{
	size_t n = (size_t)w->rows * w->cols;
	kvx_status rc;

	if ((rc = quant_dequant(w->type, w->q, h_tmp, n)) != KVX_OK)
		return rc;
	CK(cudaMemcpy(d_tmp, h_tmp, n * sizeof(float),
	    cudaMemcpyHostToDevice));
	CK(kvx_cuda_f2h(d_tmp, d_dst, n, 0));
	return KVX_OK;
}

static kvx_status
upload_vec(const float *v, int n, float **d)
{
	CK(cudaMalloc((void **)d, (size_t)n * sizeof(float)));
	CK(cudaMemcpy(*d, v, (size_t)n * sizeof(float),
	    cudaMemcpyHostToDevice));
	return KVX_OK;
}

/* fp16 copies of all weights; fused QKV and gate-up matrices. */
static kvx_status
upload_weights(gpu_ctx *g)
{
	kvx_model *m = g->m;
	size_t big = (size_t)g->V * g->E, h2 = sizeof(uint16_t);
	float *h_tmp = NULL, *d_tmp = NULL;
	kvx_status rc = KVX_OK;
	int l;

	if ((size_t)g->F * 2 * g->E > big)
		big = (size_t)g->F * 2 * g->E;
	if ((h_tmp = kvx__malloc_array(big, sizeof(float))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	if (cudaMalloc((void **)&d_tmp, big * sizeof(float)) != cudaSuccess) {
		free(h_tmp);
		return kvx__fail(KVX_ERR_DEVICE, "cannot allocate %zu bytes "
		    "on the device", big * sizeof(float));
	}
#define UP(w, dst) if ((rc = upload_mat(w, dst, d_tmp, h_tmp)) != KVX_OK) \
	goto out
#define AL(p, n) if (cudaMalloc(&(p), (n) * h2) != cudaSuccess) { \
	rc = kvx__fail(KVX_ERR_DEVICE, "cannot allocate weights"); goto out; }
	AL(g->embd, (size_t)g->V * g->E);
	UP(&m->embd, g->embd);
	if (m->out.q == m->embd.q)
		g->out = g->embd;
	else {
		AL(g->out, (size_t)g->V * g->E);
		UP(&m->out, g->out);
	}
	if ((rc = upload_vec(m->out_norm, g->E, &g->onorm)) != KVX_OK)
		goto out;
	for (l = 0; l < g->L; l++) {
		layer_w *w = &m->L[l];
		glayer *d = &g->lw[l];
		size_t E = g->E;

		AL(d->wqkv, (size_t)g->NQKV * E);
		AL(d->wo, (size_t)g->E * g->H * g->D);
		AL(d->wgu, (size_t)2 * g->F * E);
		AL(d->wd, (size_t)g->E * g->F);
		UP(&w->wq, d->wqkv);
		UP(&w->wk, (char *)d->wqkv + (size_t)g->H * g->D * E * h2);
		UP(&w->wv, (char *)d->wqkv + (size_t)(g->H + g->Hkv) * g->D *
		    E * h2);
		UP(&w->wo, d->wo);
		UP(&w->wg, d->wgu);
		UP(&w->wu, (char *)d->wgu + (size_t)g->F * E * h2);
		UP(&w->wd, d->wd);
		if ((rc = upload_vec(w->attn_norm, g->E, &d->an)) != KVX_OK ||
		    (rc = upload_vec(w->ffn_norm, g->E, &d->fn)) != KVX_OK)
			goto out;
	}
#undef UP
#undef AL
	if (cudaDeviceSynchronize() != cudaSuccess)
		rc = kvx__fail(KVX_ERR_DEVICE, "weight upload failed");
out:
	cudaFree(d_tmp);
	free(h_tmp);
	return rc;
}

// --- K/V arena -----------------------------------------------------------------

static gseg *
seg_at(const gpu_ctx *g, int s, int l, int h)
{
	return &g->seg[((size_t)s * g->L + l) * g->Hkv + h];
}

static gblk *
blk_at(const gpu_ctx *g, int s, int l)
{
	return &g->blk[(size_t)s * g->L + l];
}

/* A new chunk of the arena. */
static kvx_status
chunk_add(gpu_ctx *g)
{
	gchunk *nc;
	void *p;

	if (g->nch == g->capch) {
		int cap = g->capch ? 2 * g->capch : 16;

		if ((nc = realloc(g->ch, (size_t)cap * sizeof *nc)) == NULL)
			return kvx__fail(KVX_ERR_NOMEM, "out of memory");
		g->ch = nc;
		g->capch = cap;
	}
	if (cudaMalloc(&p, 2 * g->half) != cudaSuccess) {
		cudaGetLastError();
		return kvx__fail(KVX_ERR_NOMEM, "device out of memory for the "
		    "KV cache (%d chunks of %zu MiB held)", g->nch,
		    2 * g->half >> 20);
	}
	g->ch[g->nch].base = p;
	g->ch[g->nch].top = 0;
	g->ch[g->nch].live = 0;
	if (g->nch == 0) {
		g->kbase = p;
		g->vbase = (char *)p + g->half;
	}
	g->nch++;
	return KVX_OK;
}

/* Release the block of (s, l), its segments emptied. */
static void
blk_free(gpu_ctx *g, int s, int l)
{
	gblk *b = blk_at(g, s, l);
	int h;

	g->gen++;
	if (b->chunk >= 0) {
		gchunk *c = &g->ch[b->chunk];

		c->live -= b->bytes;
		if (c->live == 0)
			c->top = 0;
	}
	b->chunk = -1;
	b->bytes = 0;
	for (h = 0; h < g->Hkv; h++) {
		gseg *sg = seg_at(g, s, l, h);

		sg->len = sg->cap = 0;
		sg->off = 0;
	}
}

/*
 * Take a block for (s, l) with capacities caps[h]; fills in the segments'
 * offsets and capacities (lengths 0).  The old block, if any, must have
 * been released or be kept by the caller in *old.
 */
static kvx_status
blk_alloc(gpu_ctx *g, int s, int l, const int *caps)
{
	size_t rows = 0, bytes, rb = (size_t)g->D * sizeof(uint16_t);
	long long base;
	gblk *b = blk_at(g, s, l);
	kvx_status rc;
	int c, h;

	g->gen++;
	for (h = 0; h < g->Hkv; h++)
		rows += (size_t)caps[h];
	bytes = (rows * rb + 255) & ~(size_t)255;
	if (bytes == 0)
		bytes = 256;
	if (bytes > g->half)
		return kvx__fail(KVX_ERR_CAPACITY, "a layer of %zu rows "
		    "exceeds the arena chunk", rows);
	for (c = 0; c < g->nch; c++)
		if (g->ch[c].top + bytes <= g->half)
			break;
	if (c == g->nch && (rc = chunk_add(g)) != KVX_OK)
		return rc;
	b->chunk = c;
	b->at = g->ch[c].top;
	b->bytes = bytes;
	g->ch[c].top += bytes;
	g->ch[c].live += bytes;
	base = ((long long)((uintptr_t)g->ch[c].base - (uintptr_t)g->kbase) +
	    (long long)b->at) / (long long)sizeof(uint16_t);
	for (h = 0; h < g->Hkv; h++) {
		gseg *sg = seg_at(g, s, l, h);

		sg->off = base;
		sg->len = 0;
		sg->cap = caps[h];
		base += (long long)caps[h] * g->D;
	}
	return KVX_OK;
}

/* Move (s, l) to a block of capacities caps[h] >= the lengths. */
static kvx_status
blk_move(gpu_ctx *g, int s, int l, const int *caps)
{
	gblk old = *blk_at(g, s, l);
	gseg was[64];
	size_t rb = (size_t)g->D * sizeof(uint16_t);
	kvx_status rc;
	int h;

	for (h = 0; h < g->Hkv; h++)
		was[h] = *seg_at(g, s, l, h);
	if ((rc = blk_alloc(g, s, l, caps)) != KVX_OK) {
		*blk_at(g, s, l) = old;
		for (h = 0; h < g->Hkv; h++)
			*seg_at(g, s, l, h) = was[h];
		return rc;
	}
	for (h = 0; h < g->Hkv; h++) {
		gseg *sg = seg_at(g, s, l, h);

		if (was[h].len > 0) {
			CK(cudaMemcpyAsync(g->kbase + sg->off * 2, g->kbase +
			    was[h].off * 2, (size_t)was[h].len * rb,
			    cudaMemcpyDeviceToDevice, 0));
			CK(cudaMemcpyAsync(g->vbase + sg->off * 2, g->vbase +
			    was[h].off * 2, (size_t)was[h].len * rb,
			    cudaMemcpyDeviceToDevice, 0));
		}
		sg->len = was[h].len;
	}
	if (old.chunk >= 0) {
		gchunk *c = &g->ch[old.chunk];

		c->live -= old.bytes;
		if (c->live == 0)
			c->top = 0;
	}
	return KVX_OK;
}

// --- creation ----------------------------------------------------------------

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
	cudaFree(g->tab);
	cudaFree(g->d_step);
	cudaFree(g->pm);
	cudaFree(g->pl);
	cudaFree(g->pacc);
	cudaFreeHost(g->h_step);
	cudaFreeHost(g->h_pre);
	free(g->pre_seqs);
	if (g->gx != NULL)
		cudaGraphExecDestroy(g->gx);
	if (g->ds != NULL)
		cudaStreamDestroy(g->ds);
	cudaFree(g->blas_ws);
	if (g->ev != NULL)
		for (l = 0; l < 4 * g->L; l++)
			cudaEventDestroy(g->ev[l]);
	free(g->ev);
	if (g->blas != NULL)
		cublasDestroy(g->blas);
	free(g->lw);
	free(g->ch);
	free(g->seg);
	free(g->blk);
	free(g->npos);
	kvx_plan_free(&g->plan);
	free(g);
	*pg = NULL;
}

kvx_status
gpu_ctx_new(kvx_model *m, const kvx_plan *plan, const kvx_ctx_params *p,
    gpu_ctx **out)
{
	const kvx_model_info *mi = &m->info;
	size_t nsl, i, rows;
	kvx_status rc;
	gpu_ctx *g;

	*out = NULL;
	if (!kvx_cuda_available())
		return kvx__fail(KVX_ERR_DEVICE, "no CUDA device is usable");
	if (mi->head_dim != 64 && mi->head_dim != 128)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "the GPU path needs "
		    "head_dim 64 or 128, not %d", mi->head_dim);
	if (mi->n_head / mi->n_head_kv > 8 || mi->n_head_kv > 64)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "the GPU path needs at "
		    "most 8 query heads per KV head and 64 KV heads");
	if (plan != NULL && plan->window > WIN_MAX)
		return kvx__fail(KVX_ERR_PLAN, "plan window %d exceeds the "
		    "runtime's limit %d", plan->window, WIN_MAX);
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
	/* a blocking stream: ordered with the prefill's work on stream 0 */
	if (cudaStreamCreate(&g->ds) != cudaSuccess ||
	    cudaMalloc(&g->blas_ws, BLAS_WS) != cudaSuccess) {
		cudaGetLastError();
		rc = kvx__fail(KVX_ERR_DEVICE, "cannot create the decode "
		    "stream");
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
	if (!g->lw || !g->seg || !g->blk || !g->npos || !g->pre_seqs) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory");
		goto fail;
	}
	for (i = 0; i < nsl; i++)
		g->blk[i].chunk = -1;
	/* a chunk holds at least one layer of a full-length sequence */
	rows = (size_t)g->Hkv * ((size_t)g->p.n_ctx + g->p.decode_headroom +
	    64) * g->D * sizeof(uint16_t);
	g->half = rows > CHUNK_HALF ? (rows + 255) & ~(size_t)255 : CHUNK_HALF;
	if ((rc = chunk_add(g)) != KVX_OK ||
	    (rc = upload_weights(g)) != KVX_OK)
		goto fail;
	*out = g;
	return KVX_OK;
fail:
	gpu_ctx_free(&g);
	return rc;
}

void
gpu_set_options(gpu_ctx *g, int timing, int head)
{
	g->timing = timing;
	g->head = head;
}

const gpu_stats *
gpu_get_stats(const gpu_ctx *g)
{
	return &g->st;
}

// --- scratch -----------------------------------------------------------------

/* Replace *p by a device buffer of bytes. */
static kvx_status
regrow(void **p, size_t bytes)
{
	cudaFree(*p);
	*p = NULL;
	if (cudaMalloc(p, bytes ? bytes : 16) != cudaSuccess) {
		cudaGetLastError();
		*p = NULL;
		return kvx__fail(KVX_ERR_NOMEM, "cannot allocate %zu bytes on "
		    "the device", bytes);
	}
	return KVX_OK;
}

/* Forward buffers for t tokens. */
static kvx_status
ensure_fw(gpu_ctx *g, int t)
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
	if ((rc = regrow((void **)&g->x, T * g->E * 4)) != KVX_OK ||
	    (rc = regrow((void **)&g->qkv, T * g->NQKV * 4)) != KVX_OK ||
	    (rc = regrow((void **)&g->q, T * g->H * g->D * 4)) != KVX_OK ||
	    (rc = regrow((void **)&g->att, T * g->H * g->D * 4)) != KVX_OK ||
	    (rc = regrow((void **)&g->gu, T * 2 * g->F * 4)) != KVX_OK ||
	    (rc = regrow(&g->xh, T * xw * 2)) != KVX_OK ||
	    (rc = regrow((void **)&g->ids, T * sizeof(int))) != KVX_OK ||
	    (rc = regrow((void **)&g->pos, T * sizeof(int))) != KVX_OK)
		return rc;
	g->tmax = (int)T;
	return KVX_OK;
}

/* Prefill buffers for n prompt tokens. */
static kvx_status
ensure_prefill(gpu_ctx *g, int n)
{
	size_t N = (size_t)n, qb = N < QBLK ? N : QBLK, G = g->H / g->Hkv;
	size_t kvr = N * g->Hkv * g->D * 2, tabb, sbytes;
	kvx_status rc;

	if (n <= g->pmax)
		return KVX_OK;
	g->pmax = 0;
	tabb = (size_t)320 * 8;
	/* the scoring keeps its logits between passes up to SCORE_KEEP */
	sbytes = kvx_cuda_score_scratch(g->Hkv, (int)G, WIN_MAX, n, 1);
	if (sbytes > SCORE_KEEP)
		sbytes = kvx_cuda_score_scratch(g->Hkv, (int)G, WIN_MAX, n, 0);
	if ((rc = regrow(&g->qh, N * g->H * g->D * 2)) != KVX_OK ||
	    (rc = regrow(&g->kt, kvr)) != KVX_OK ||
	    (rc = regrow(&g->vt, kvr)) != KVX_OK ||
	    (rc = regrow((void **)&g->S, G * qb * N * 4)) != KVX_OK ||
	    (rc = regrow(&g->P, G * qb * N * 2)) != KVX_OK ||
	    (rc = regrow((void **)&g->score, (size_t)g->Hkv * N * 4)) !=
	    KVX_OK ||
	    (rc = regrow((void **)&g->pooled, (size_t)g->Hkv * N * 4)) !=
	    KVX_OK ||
	    (rc = regrow(&g->sscr, sbytes)) != KVX_OK ||
	    (rc = regrow((void **)&g->idx, (size_t)g->Hkv * N * 4)) !=
	    KVX_OK ||
	    (rc = regrow((void **)&g->cnt, (size_t)(g->L + 3) * g->Hkv *
	    4)) != KVX_OK ||
	    (rc = regrow(&g->tab, tabb)) != KVX_OK)
		return rc;
	g->sscr_bytes = sbytes;
	g->pmax = n;
	return KVX_OK;
}

// --- layers ------------------------------------------------------------------

/* Y[T][rows] (ld ldy) = X[T][cols] W^T + beta Y; W fp16 rows x cols. */
static kvx_status
gemm(gpu_ctx *g, const void *W, int rows, int cols, const void *X, int T,
    float *Y, int ldy, float beta)
{
	float alpha = 1.0f;

	CB(cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, T, cols,
	    &alpha, W, CUDA_R_16F, cols, X, CUDA_R_16F, cols, &beta, Y,
	    CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
	return KVX_OK;
}

/* Norm, QKV projection and RoPE of T tokens at layer l: q gets the
 * rotated queries [T][H][D], qkv keeps the rotated keys and the values. */
static kvx_status
qkv_rope(gpu_ctx *g, int l, int T)
{
	glayer *w = &g->lw[l];
	const kvx_model_info *mi = &g->m->info;
	kvx_status rc;

	CK(kvx_cuda_rmsnorm(g->x, g->E, w->an, T, g->E, mi->rms_eps, g->xh,
	    KVX_CUDA_F16, g->E, g->cs));
	if ((rc = gemm(g, w->wqkv, g->NQKV, g->E, g->xh, T, g->qkv, g->NQKV,
	    0.0f)) != KVX_OK)
		return rc;
	CK(kvx_cuda_rope(g->qkv, g->NQKV, g->q, g->H * g->D, T, g->H, g->D,
	    g->pos, mi->rope_theta, g->cs));
	CK(kvx_cuda_rope(g->qkv + g->H * g->D, g->NQKV, g->qkv + g->H * g->D,
	    g->NQKV, T, g->Hkv, g->D, g->pos, mi->rope_theta, g->cs));
	return KVX_OK;
}

/* Output projection and feed-forward block of T tokens at layer l, the
 * attention output in att. */
static kvx_status
out_ffn(gpu_ctx *g, int l, int T)
{
	glayer *w = &g->lw[l];
	kvx_status rc;

	CK(kvx_cuda_f2h(g->att, g->xh, (size_t)T * g->H * g->D, g->cs));
	if ((rc = gemm(g, w->wo, g->E, g->H * g->D, g->xh, T, g->x, g->E,
	    1.0f)) != KVX_OK)
		return rc;
	CK(kvx_cuda_rmsnorm(g->x, g->E, w->fn, T, g->E, g->m->info.rms_eps,
	    g->xh, KVX_CUDA_F16, g->E, g->cs));
	if ((rc = gemm(g, w->wgu, 2 * g->F, g->E, g->xh, T, g->gu, 2 * g->F,
	    0.0f)) != KVX_OK)
		return rc;
	CK(kvx_cuda_swiglu(g->gu, T, g->F, g->xh, g->cs));
	return gemm(g, w->wd, g->E, g->F, g->xh, T, g->x, g->E, 1.0f);
}

/* Device logits for n rows. */
static kvx_status
ensure_logits(gpu_ctx *g, int n)
{
	kvx_status rc;

	if (n > g->lrows) {
		g->lrows = 0;
		if ((rc = regrow((void **)&g->logits, (size_t)n * g->V * 4)) !=
		    KVX_OK)
			return rc;
		g->lrows = n;
	}
	return KVX_OK;
}

/* Final norm and LM head of n rows of x starting at row r0, into the
 * device logits buffer. */
static kvx_status
lm_head(gpu_ctx *g, int r0, int n)
{
	kvx_status rc;

	if ((rc = ensure_logits(g, n)) != KVX_OK)
		return rc;
	CK(kvx_cuda_rmsnorm(g->x + (size_t)r0 * g->E, g->E, g->onorm, n, g->E,
	    g->m->info.rms_eps, g->xh, KVX_CUDA_F16, g->E, g->cs));
	return gemm(g, g->out, g->V, g->E, g->xh, n, g->logits, g->V, 0.0f);
}

// --- prefill -----------------------------------------------------------------

/* Causal attention of the n prompt tokens at the current layer, over the
 * K/V scratch, into att. */
static kvx_status
prefill_attn(gpu_ctx *g, int n)
{
	int G = g->H / g->Hkv, D = g->D, t0, rows, nk, j;
	float scale = 1.0f / sqrtf((float)D), one = 1.0f, zero = 0.0f;
	long long sS;

	CK(kvx_cuda_f2h(g->q, g->qh, (size_t)n * g->H * D, 0));
	for (t0 = 0; t0 < n; t0 += QBLK) {
		rows = n - t0 < QBLK ? n - t0 : QBLK;
		nk = t0 + rows;
		sS = (long long)rows * nk;
		for (j = 0; j < g->Hkv; j++) {
			const char *kj = (const char *)g->kt + (size_t)j * D * 2;
			const char *vj = (const char *)g->vt + (size_t)j * D * 2;
			const char *qj = (const char *)g->qh +
			    ((size_t)t0 * g->H + (size_t)j * G) * D * 2;

			CB(cublasGemmStridedBatchedEx(g->blas, CUBLAS_OP_T,
			    CUBLAS_OP_N, nk, rows, D, &scale, kj, CUDA_R_16F,
			    g->Hkv * D, 0, qj, CUDA_R_16F, g->H * D, D, &zero,
			    g->S, CUDA_R_32F, nk, sS, G, CUBLAS_COMPUTE_32F,
			    CUBLAS_GEMM_DEFAULT));
			CK(kvx_cuda_softmax_causal(g->S, G, rows, nk, t0, g->P,
			    0));
			CB(cublasGemmStridedBatchedEx(g->blas, CUBLAS_OP_N,
			    CUBLAS_OP_N, D, rows, nk, &one, vj, CUDA_R_16F,
			    g->Hkv * D, 0, g->P, CUDA_R_16F, nk, sS, &zero,
			    g->att + ((size_t)t0 * g->H + (size_t)j * G) * D,
			    CUDA_R_32F, g->H * D, D, G, CUBLAS_COMPUTE_32F,
			    CUBLAS_GEMM_DEFAULT));
		}
	}
	return KVX_OK;
}

/* Event i of layer l's compression, when timing (0: start, 1: scored,
 * 2: selected, 3: gathered). */
static kvx_status
mark(gpu_ctx *g, int l, int i)
{
	if (g->timing)
		CK(cudaEventRecord(g->ev[4 * l + i], 0));
	return KVX_OK;
}

/*
 * Compress layer l of sequence s (its n rows in the K/V scratch, the
 * rotated queries in q) to the plan, into a new block: all rows without
 * a plan, else the SnapKV selection of ctx.c's select_layer.  Scoring
 * reads the window queries where they are; the tables that depend only
 * on n go up once, at layer 0, and each static layer adds one upload of
 * its budgets and offsets.  A hybrid layer's budgets and offsets come
 * from kvx_cuda_hybrid_split instead, and its segments' lengths from
 * hybrid_finish.
 */
static kvx_status
prefill_select(gpu_ctx *g, int s, int l, int n)
{
	const kvx_plan *P = g->plan;
	int Hkv = g->Hkv, D = g->D, G = g->H / Hkv, hr = g->p.decode_headroom;
	int caps[64] = { 0 }, keep[64], cnt[64], w, pw, sinks, h, wv, sk;
	int maxc = 0, hyb, total = 0, ncand = 0, fl = 0;
	long long tl[2][64];
	struct { long long dst[64]; int keep[64]; } lt;
	size_t rb = (size_t)D * 2;
	char *dt = g->tab;
	kvx_status rc;

	if ((rc = mark(g, l, 0)) != KVX_OK)
		return rc;
	if (P == NULL || n <= 1) {
		for (h = 0; h < Hkv; h++)
			caps[h] = n + hr;
		if ((rc = blk_alloc(g, s, l, caps)) != KVX_OK)
			return rc;
		for (h = 0; h < Hkv; h++) {
			gseg *sg = seg_at(g, s, l, h);

			CK(cudaMemcpy2DAsync(g->kbase + sg->off * 2, rb,
			    (char *)g->kt + h * rb, Hkv * rb, rb, n,
			    cudaMemcpyDeviceToDevice, 0));
			CK(cudaMemcpy2DAsync(g->vbase + sg->off * 2, rb,
			    (char *)g->vt + h * rb, Hkv * rb, rb, n,
			    cudaMemcpyDeviceToDevice, 0));
			sg->len = n;
		}
		if ((rc = mark(g, l, 1)) != KVX_OK ||
		    (rc = mark(g, l, 2)) != KVX_OK)
			return rc;
		return mark(g, l, 3);
	}

	w = n < WIN_MAX ? n : WIN_MAX;
	pw = P->window < w ? P->window : w;
	if (pw >= n)
		pw = n - 1;
	sinks = P->sinks;
	/* tables: koff, soff (= ioff), n; then per layer the destination
	   offsets and the budgets */
	if (l == 0) {
		for (h = 0; h < Hkv; h++) {
			tl[0][h] = (long long)h * D;
			tl[1][h] = (long long)h * n;
			cnt[h] = n;
		}
		CK(cudaMemcpyAsync(dt, tl[0], Hkv * 8, cudaMemcpyHostToDevice,
		    0));
		CK(cudaMemcpyAsync(dt + 64 * 8, tl[1], Hkv * 8,
		    cudaMemcpyHostToDevice, 0));
		CK(cudaMemcpyAsync(dt + 128 * 8, cnt, Hkv * 4,
		    cudaMemcpyHostToDevice, 0));
	}
	/* the last pw queries: head h of KV head s at q + (s*G + h)*D,
	   positions H*D apart */
	CK(kvx_cuda_score_q(g->q + (size_t)(n - pw) * g->H * D, D,
	    (long long)g->H * D, g->kt, KVX_CUDA_F16, (const long long *)dt,
	    (const int *)(dt + 128 * 8), Hkv, n, G, pw, D, Hkv * D,
	    1.0f / sqrtf((float)D), P->gqa, (const long long *)(dt + 64 * 8),
	    g->sscr, g->sscr_bytes, g->score, 0));
	CK(kvx_cuda_pool(g->score, (const long long *)(dt + 64 * 8),
	    (const int *)(dt + 128 * 8), Hkv, n, pw, P->pool_kernel, P->pool,
	    g->pooled, 0));
	if ((rc = mark(g, l, 1)) != KVX_OK)
		return rc;

	hyb = P->mode == KVX_PLAN_HYBRID;
	if (hyb) {
		/* the split itself runs on the device; the block is sized
		   here, by any split of the same total (no head reaches n,
		   so caps sum the same), and the heads are placed in it by
		   the split kernel; hybrid_finish reads the counts back */
		plan_hybrid_share(P, l, n, pw, Hkv, &ncand, &total, &fl);
		for (h = 0; h < Hkv; h++)
			keep[h] = total / Hkv + (h < total % Hkv) + pw + sinks;
	} else
		for (h = 0; h < Hkv; h++)
			keep[h] = plan_tokens(P, l, h, n);
	/* the count sel_select arrives at */
	wv = pw;
	sk = sinks < 0 ? 0 : (sinks > n - wv ? n - wv : sinks);
	for (h = 0; h < Hkv; h++) {
		if (keep[h] > n)
			keep[h] = n;
		cnt[h] = keep[h] < wv + sk ? wv + sk : keep[h];
		caps[h] = cnt[h] + hr;
		if (cnt[h] > maxc)
			maxc = cnt[h];
	}
	if ((rc = blk_alloc(g, s, l, caps)) != KVX_OK)
		return rc;
	if (hyb) {
		struct kvx_cuda_hlayout hl;

		hl.add = pw + sinks;
		hl.nmax = n;
		hl.minc = wv + sk;
		hl.headroom = hr;
		hl.base = seg_at(g, s, l, 0)->off;
		hl.row = D;
		maxc = pw + sinks + (total < ncand ? total : ncand);
		maxc = maxc > n ? n : (maxc < wv + sk ? wv + sk : maxc);
		CK(kvx_cuda_hybrid_split(g->pooled, (const long long *)(dt +
		    64 * 8), sinks < n - pw ? sinks : n - pw, Hkv, ncand, total,
		    fl, g->cnt + (size_t)Hkv * (1 + l), g->cnt + (size_t)Hkv *
		    (1 + g->L), &hl,
		    (long long *)(dt + 192 * 8), (int *)(dt + 256 * 8), 0));
	} else {
		for (h = 0; h < Hkv; h++) {
			lt.dst[h] = seg_at(g, s, l, h)->off;
			lt.keep[h] = keep[h];
		}
		CK(cudaMemcpyAsync(dt + 192 * 8, &lt, sizeof lt,
		    cudaMemcpyHostToDevice, 0));
	}
	CK(kvx_cuda_select(g->pooled, (const long long *)(dt + 64 * 8),
	    (const int *)(dt + 128 * 8), (const int *)(dt + 256 * 8), Hkv, pw,
	    sinks, (const long long *)(dt + 64 * 8), g->idx, g->cnt, 0));
	if ((rc = mark(g, l, 2)) != KVX_OK)
		return rc;
	CK(kvx_cuda_gather(g->kt, g->vt, g->kbase, g->vbase, KVX_CUDA_F16, D,
	    Hkv * D, D, (const long long *)dt, (const long long *)(dt + 192 *
	    8), g->idx, (const long long *)(dt + 64 * 8), g->cnt, Hkv, maxc,
	    0));
	if ((rc = mark(g, l, 3)) != KVX_OK)
		return rc;
	/* hybrid layers' lengths come with hybrid_finish */
	for (h = 0; h < Hkv; h++)
		seg_at(g, s, l, h)->len = hyb ? 0 : cnt[h];
	return KVX_OK;
}

/*
 * After a compressed prefill of n tokens with a hybrid plan (the device
 * idle): each layer's split counts, read back at once, give its heads'
 * kept rows and their places in the block, as the split kernel laid
 * them out.
 */
static kvx_status
hybrid_finish(gpu_ctx *g, int s, int n)
{
	const kvx_plan *P = g->plan;
	int Hkv = g->Hkv, hr = g->p.decode_headroom, w, pw, sinks, sk, l, h;
	int *c;
	long long at, was, now;

	if (P == NULL || P->mode != KVX_PLAN_HYBRID || n <= 1)
		return KVX_OK;
	w = n < WIN_MAX ? n : WIN_MAX;
	pw = P->window < w ? P->window : w;
	if (pw >= n)
		pw = n - 1;
	sinks = P->sinks;
	sk = sinks < 0 ? 0 : (sinks > n - pw ? n - pw : sinks);
	if ((c = kvx__malloc_array((size_t)g->L * Hkv, sizeof(int))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	if (cudaMemcpy(c, g->cnt + Hkv, (size_t)g->L * Hkv * sizeof(int),
	    cudaMemcpyDeviceToHost) != cudaSuccess) {
		free(c);
		return kvx__fail(KVX_ERR_DEVICE, "%s:%d: split counts copy "
		    "failed", __FILE__, __LINE__);
	}
	for (l = 0; l < g->L; l++) {
		at = seg_at(g, s, l, 0)->off;
		was = now = 0;
		for (h = 0; h < Hkv; h++) {
			gseg *sg = seg_at(g, s, l, h);
			int k = c[l * Hkv + h] + pw + sinks;

			k = k > n ? n : k;
			k = k < pw + sk ? pw + sk : k;
			was += sg->cap;
			sg->off = at;
			sg->len = k;
			sg->cap = k + hr;
			now += sg->cap;
			at += (long long)sg->cap * g->D;
		}
		if (now != was) {
			free(c);
			return kvx__fail(KVX_ERR_DEVICE, "layer %d: the heads' "
			    "split (%lld rows) does not fill its block (%lld)",
			    l, now, was);
		}
	}
	free(c);
	return KVX_OK;
}

/* The prefill of gpu_prefill, without the bookkeeping on failure. */
static kvx_status
prefill_run(gpu_ctx *g, int s, const int32_t *ids, int n, float *logits)
{
	int *pos, l, i;
	double t0 = 0.0;
	float ms[3];
	kvx_status rc;

	if ((rc = ensure_fw(g, n)) != KVX_OK ||
	    (rc = ensure_prefill(g, n)) != KVX_OK)
		return rc;
	if ((pos = kvx__malloc_array((size_t)n, sizeof(int))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	for (i = 0; i < n; i++)
		pos[i] = i;
	if (g->timing) {
		if (g->ev == NULL) {
			if ((g->ev = kvx__calloc((size_t)4 * g->L,
			    sizeof *g->ev)) == NULL) {
				free(pos);
				return kvx__fail(KVX_ERR_NOMEM, "out of memory");
			}
			for (l = 0; l < 4 * g->L; l++)
				CK(cudaEventCreate(&g->ev[l]));
		}
		CK(cudaDeviceSynchronize());
		t0 = kvx__now();
	}
	if (cudaMemcpy(g->pos, pos, (size_t)n * 4, cudaMemcpyHostToDevice) !=
	    cudaSuccess ||
	    cudaMemcpy(g->ids, ids, (size_t)n * 4, cudaMemcpyHostToDevice) !=
	    cudaSuccess) {
		free(pos);
		return kvx__fail(KVX_ERR_DEVICE, "%s:%d: token upload failed",
		    __FILE__, __LINE__);
	}
	free(pos);
	CK(kvx_cuda_embed(g->embd, g->E, g->ids, n, g->x, 0));
	for (l = 0; l < g->L; l++) {
		if ((rc = qkv_rope(g, l, n)) != KVX_OK)
			return rc;
		CK(kvx_cuda_kv_store(g->qkv + g->H * g->D, g->qkv + (g->H +
		    g->Hkv) * g->D, g->NQKV, n, g->Hkv, g->D, NULL, g->kt,
		    g->vt, 0));
		if ((rc = prefill_attn(g, n)) != KVX_OK)
			return rc;
		if ((rc = prefill_select(g, s, l, n)) != KVX_OK)
			return rc;
		if ((rc = out_ffn(g, l, n)) != KVX_OK)
			return rc;
	}
	if (logits != NULL) {
		if ((rc = lm_head(g, n - 1, 1)) != KVX_OK)
			return rc;
		CK(cudaMemcpy(logits, g->logits, (size_t)g->V * 4,
		    cudaMemcpyDeviceToHost));
	}
	CK(cudaDeviceSynchronize());
	if ((rc = hybrid_finish(g, s, n)) != KVX_OK)
		return rc;
	if (g->timing) {
		g->st.prefill_s += kvx__now() - t0;
		g->st.prefill_tokens += n;
		for (l = 0; l < g->L; l++) {
			for (i = 0; i < 3; i++)
				CK(cudaEventElapsedTime(&ms[i],
				    g->ev[4 * l + i], g->ev[4 * l + i + 1]));
			g->st.score_s += ms[0] * 1e-3;
			g->st.topk_s += ms[1] * 1e-3;
			g->st.gather_s += ms[2] * 1e-3;
			g->st.select_s += (ms[0] + ms[1] + ms[2]) * 1e-3;
		}
	}
	return KVX_OK;
}

kvx_status
gpu_prefill(gpu_ctx *g, int s, const int32_t *ids, int n, float *logits)
{
	kvx_status rc;
	int i;

	for (i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= g->V)
			return kvx__fail(KVX_ERR_ARG, "token id %d out of range "
			    "[0, %d)", ids[i], g->V);
	if ((rc = prefill_run(g, s, ids, n, logits)) != KVX_OK) {
		gpu_seq_clear(g, s);
		return rc;
	}
	g->npos[s] = n;
	return KVX_OK;
}

// --- decode ------------------------------------------------------------------

/* Round up to 16 bytes. */
static size_t
a16(size_t n)
{
	return (n + 15) & ~(size_t)15;
}

/*
 * The device work of one decode step on stream g->cs, over the tables at
 * g->d_step laid out by lo[]: embedding, the layers (the split-K partial
 * attention over a fixed grid of cap items a layer, the surplus empty,
 * then the combine), and the LM head when head is set.  Issued directly
 * or captured.
 */
static kvx_status
step_issue(gpu_ctx *g, int n, int cap, const size_t *lo, int head)
{
	int Hkv = g->Hkv, D = g->D, G = g->H / Hkv, nseg = n * Hkv, l, e;
	char *d = g->d_step;
	kvx_status rc;

	CK(kvx_cuda_embed(g->embd, g->E, g->ids, n, g->x, g->cs));
	for (l = 0; l < g->L; l++) {
		if ((rc = qkv_rope(g, l, n)) != KVX_OK)
			return rc;
		if ((e = kvx_cuda_kv_store(g->qkv + g->H * D, g->qkv + (g->H +
		    Hkv) * D, g->NQKV, n, Hkv, D,
		    (const long long *)(d + lo[l * 4 + 1]), g->kbase, g->vbase,
		    g->cs)) != 0 ||
		    (e = kvx_cuda_attn_partial(g->q, g->kbase, g->vbase,
		    KVX_CUDA_F16, (const long long *)(d + lo[l * 4]), G, D, D,
		    1.0f / sqrtf((float)D), (const struct wl_item *)(d +
		    lo[l * 4 + 3]), NULL, cap, g->pm, g->pl, g->pacc,
		    g->cs)) != 0 ||
		    (e = kvx_cuda_attn_combine((const int *)(d + lo[l * 4 + 2]),
		    nseg, G, D, g->pm, g->pl, g->pacc, g->att, g->cs)) != 0)
			return cuda_fail(e, __FILE__, __LINE__,
			    "decode attention");
		if ((rc = out_ffn(g, l, n)) != KVX_OK)
			return rc;
	}
	return head ? lm_head(g, 0, n) : KVX_OK;
}

/* Points cuBLAS at stream st with the fixed workspace. */
static kvx_status
blas_stream(gpu_ctx *g, cudaStream_t st)
{
	CB(cublasSetStream(g->blas, st));
	/* setting the stream resets the workspace to the library's pool */
	CB(cublasSetWorkspace(g->blas, g->blas_ws, BLAS_WS));
	g->cs = st;
	return KVX_OK;
}

/*
 * Captures the step into g->gx (replacing the old graph) for batch n and
 * cap items a layer; the buffers it names are remembered so that a
 * regrown buffer forces a new capture.
 */
static kvx_status
step_capture(gpu_ctx *g, int n, int cap, const size_t *lo, int head)
{
	cudaGraph_t gr = NULL;
	kvx_status rc, rc2;
	int e;

	if (g->gx != NULL) {
		cudaGraphExecDestroy(g->gx);
		g->gx = NULL;
	}
	if ((rc = blas_stream(g, g->ds)) != KVX_OK)
		return rc;
	if ((e = cudaStreamBeginCapture(g->ds,
	    cudaStreamCaptureModeThreadLocal)) != cudaSuccess) {
		blas_stream(g, 0);
		return cuda_fail(e, __FILE__, __LINE__, "graph capture");
	}
	rc = step_issue(g, n, cap, lo, head);
	e = cudaStreamEndCapture(g->ds, &gr);
	rc2 = blas_stream(g, 0);
	if (rc == KVX_OK && e != cudaSuccess)
		rc = cuda_fail(e, __FILE__, __LINE__, "graph capture");
	if (rc == KVX_OK && rc2 != KVX_OK)
		rc = rc2;
	if (rc == KVX_OK && (e = cudaGraphInstantiate(&g->gx, gr, 0)) !=
	    cudaSuccess) {
		g->gx = NULL;
		rc = cuda_fail(e, __FILE__, __LINE__, "graph instantiation");
	}
	if (gr != NULL)
		cudaGraphDestroy(gr);
	if (rc != KVX_OK) {
		cudaGetLastError();
		return rc;
	}
	g->gx_n = n;
	g->gx_cap = cap;
	g->gx_head = head;
	g->gx_key[0] = g->d_step;
	g->gx_key[1] = g->pm;
	g->gx_key[2] = g->x;
	g->gx_key[3] = g->logits;
	g->gx_key[4] = g->ids;
	return KVX_OK;
}

/* 1 when the captured graph fits a step of batch n, cap items a layer. */
static int
graph_fits(const gpu_ctx *g, int n, int cap, int head)
{
	return g->gx != NULL && g->gx_n == n && g->gx_cap >= cap &&
	    g->gx_head == head && g->gx_key[0] == g->d_step &&
	    g->gx_key[1] == g->pm && g->gx_key[2] == g->x &&
	    g->gx_key[3] == g->logits && g->gx_key[4] == g->ids;
}

/*
 * Item capacity a layer of a step over seqs whose segments will hold
 * len + 1 + ahead rows, and each layer's chunk: the graph's capacity
 * when the graph fits, else the need plus room to grow, so that a graph
 * outlives many steps.  Per layer at most nseg + rows / chunk + 1 items.
 */
static int
step_items(gpu_ctx *g, int n, const int *seqs, int ahead, int head,
    int *chunk)
{
	int Hkv = g->Hkv, nseg = n * Hkv, i, l, h, cap = 0;

	for (l = 0; l < g->L; l++) {
		long long rows = 0;

		for (i = 0; i < n; i++)
			for (h = 0; h < Hkv; h++)
				rows += seg_at(g, seqs[i], l, h)->len + 1 +
				    ahead;
		chunk[l] = wl_chunk(rows, g->sm);
		if ((int)(rows / chunk[l]) + nseg + 1 > cap)
			cap = (int)(rows / chunk[l]) + nseg + 1;
	}
	if (graph_fits(g, n, cap, head))
		return g->gx_cap;
	return cap + cap / 4 + 16;
}

/* Table offsets of a step of batch n and cap items a layer: layer l's
 * four tables at lo[l * 4 + i]; returns the bytes. */
static size_t
step_layout(const gpu_ctx *g, int n, int cap, size_t *lo)
{
	size_t f[4], stride;
	int nseg = n * g->Hkv, l, i;

	f[0] = a16((size_t)n * 4) * 2;
	f[1] = f[0] + a16((size_t)nseg * 8);
	f[2] = f[1] + a16((size_t)nseg * 8);
	f[3] = f[2] + a16((size_t)(nseg + 1) * 4);
	stride = f[3] - f[0] + a16((size_t)cap * sizeof(struct wl_item));
	for (l = 0; l < g->L; l++)
		for (i = 0; i < 4; i++)
			lo[l * 4 + i] = f[i] + (size_t)l * stride;
	return f[0] + stride * (size_t)g->L;
}

/*
 * The tables of that step in buf (all but the token ids): positions, and
 * per layer the segment offsets, the append offsets, each segment's
 * first item and the split-K items, padded to cap with empty items past
 * every segment's range (never combined).  len: nseg ints of scratch.
 */
static kvx_status
step_fill(gpu_ctx *g, int n, const int *seqs, int ahead, int cap,
    const int *chunk, const size_t *lo, char *buf, int *len)
{
	int Hkv = g->Hkv, D = g->D, nseg = n * Hkv, i, l, h, nit;

	for (i = 0; i < n; i++)
		((int *)(buf + a16((size_t)n * 4)))[i] = g->npos[seqs[i]] +
		    ahead;
	for (l = 0; l < g->L; l++) {
		long long *off = (long long *)(buf + lo[l * 4]);
		long long *app = (long long *)(buf + lo[l * 4 + 1]);
		int *first = (int *)(buf + lo[l * 4 + 2]);
		struct wl_item *items = (struct wl_item *)(buf +
		    lo[l * 4 + 3]);

		for (i = 0; i < n; i++)
			for (h = 0; h < Hkv; h++) {
				gseg *sg = seg_at(g, seqs[i], l, h);

				off[i * Hkv + h] = sg->off;
				app[i * Hkv + h] = sg->off +
				    (long long)(sg->len + ahead) * D;
				len[i * Hkv + h] = sg->len + 1 + ahead;
			}
		nit = wl_chunked(len, nseg, chunk[l], items, cap, first);
		if (nit < 0)
			return kvx__fail(KVX_ERR_DEVICE, "work list overflow");
		memset(items + nit, 0, (size_t)(cap - nit) * sizeof *items);
	}
	return KVX_OK;
}

/* Pinned host buffer *p of at least need bytes (*have its size). */
static kvx_status
host_room(char **p, size_t *have, size_t need)
{
	if (need <= *have)
		return KVX_OK;
	cudaFreeHost(*p);
	*p = NULL;
	*have = 0;
	if (cudaMallocHost((void **)p, need) != cudaSuccess) {
		cudaGetLastError();
		*p = NULL;
		return kvx__fail(KVX_ERR_NOMEM, "cannot allocate the decode "
		    "tables");
	}
	*have = need;
	return KVX_OK;
}

/*
 * One token for each of n distinct sequences.  Grows full segments
 * first; then the step's tables, laid out on the host (step_fill), go up
 * in one upload and the graph runs (captured again only when the batch,
 * the item count or a buffer changes).  While it runs, the host lays
 * out the tables of the next step of the same batch (every segment one
 * row longer), which that step uses unless the batch or any segment
 * changed in between (g->gen), so that the host's part of a step
 * overlaps the device's.
 */
static kvx_status
decode_step(gpu_ctx *g, int n, const int *seqs, const int32_t *ids,
    float *logits)
{
	int Hkv = g->Hkv, D = g->D, G = g->H / Hkv, nseg = n * Hkv;
	int i, l, h, cap, caps[64] = { 0 }, *len = NULL, *chunk = NULL;
	int head = logits != NULL || g->head, pre;
	size_t need, *ll = NULL;
	double t0 = 0.0, t1;
	kvx_status rc;

	if ((rc = ensure_fw(g, n)) != KVX_OK ||
	    (head && (rc = ensure_logits(g, n)) != KVX_OK))
		return rc;
	for (i = 0; i < n; i++)
		for (l = 0; l < g->L; l++) {
			int grow = 0;

			for (h = 0; h < Hkv; h++) {
				gseg *sg = seg_at(g, seqs[i], l, h);

				caps[h] = sg->cap;
				if (sg->len + 1 > sg->cap) {
					int add = sg->cap / 2 > 64 ? sg->cap /
					    2 : 64;

					/* a segment never needs more than
					   n_ctx rows: stay inside a chunk */
					caps[h] = sg->cap + add;
					if (caps[h] > g->p.n_ctx + 64)
						caps[h] = g->p.n_ctx + 64;
					grow = 1;
				}
			}
			if (grow && (rc = blk_move(g, seqs[i], l, caps)) !=
			    KVX_OK)
				return rc;
		}
	if (g->timing) {
		CK(cudaDeviceSynchronize());
		t0 = kvx__now();
	}
	len = kvx__malloc_array((size_t)nseg, sizeof(int));
	chunk = kvx__malloc_array((size_t)g->L, sizeof(int));
	ll = kvx__malloc_array((size_t)g->L * 4, sizeof(size_t));
	if (len == NULL || chunk == NULL || ll == NULL) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* the tables laid out during the last step, if still right */
	pre = g->pre_ok && g->pre_n == n && g->pre_gen == g->gen &&
	    g->pre_head == head && memcmp(g->pre_seqs, seqs, (size_t)n *
	    sizeof(int)) == 0 && graph_fits(g, n, g->pre_cap, head) &&
	    g->gx_cap == g->pre_cap;
	g->pre_ok = 0;
	if (pre) {
		char *t = g->h_step;
		size_t tc = g->step_cap;

		g->h_step = g->h_pre;
		g->step_cap = g->pre_room;
		g->h_pre = t;
		g->pre_room = tc;
		cap = g->pre_cap;
		need = step_layout(g, n, cap, ll);
	} else {
		cap = step_items(g, n, seqs, 0, head, chunk);
		need = step_layout(g, n, cap, ll);
		if ((rc = host_room(&g->h_step, &g->step_cap, need)) != KVX_OK)
			goto out;
		if ((rc = step_fill(g, n, seqs, 0, cap, chunk, ll, g->h_step,
		    len)) != KVX_OK)
			goto out;
	}
	memcpy(g->h_step, ids, (size_t)n * 4);
	if (g->timing)
		g->st.decode_host_s += kvx__now() - t0;
	if (need > g->dstep_room) {
		g->dstep_room = 0;
		if ((rc = regrow((void **)&g->d_step, need)) != KVX_OK)
			goto out;
		g->dstep_room = need;
	}
	if (cap > g->part_cap) {
		g->part_cap = 0;
		if ((rc = regrow((void **)&g->pm, (size_t)cap * G * 4)) !=
		    KVX_OK ||
		    (rc = regrow((void **)&g->pl, (size_t)cap * G * 4)) !=
		    KVX_OK ||
		    (rc = regrow((void **)&g->pacc, (size_t)cap * G * D * 4)) !=
		    KVX_OK)
			goto out;
		g->part_cap = cap;
	}
	if (cudaMemcpyAsync(g->d_step, g->h_step, need,
	    cudaMemcpyHostToDevice, g->ds) != cudaSuccess ||
	    cudaMemcpyAsync(g->ids, g->d_step, (size_t)n * 4,
	    cudaMemcpyDeviceToDevice, g->ds) != cudaSuccess ||
	    cudaMemcpyAsync(g->pos, g->d_step + a16((size_t)n * 4),
	    (size_t)n * 4, cudaMemcpyDeviceToDevice, g->ds) != cudaSuccess) {
		rc = kvx__fail(KVX_ERR_DEVICE, "%s:%d: decode table upload "
		    "failed", __FILE__, __LINE__);
		goto out;
	}
	if (g->nograph) {
		if ((rc = blas_stream(g, g->ds)) == KVX_OK) {
			rc = step_issue(g, n, cap, ll, head);
			if (blas_stream(g, 0) != KVX_OK && rc == KVX_OK)
				rc = kvx__fail(KVX_ERR_DEVICE, "cannot reset "
				    "the cuBLAS stream");
		}
	} else {
		if (!graph_fits(g, n, cap, head))
			rc = step_capture(g, n, cap, ll, head);
		if (rc == KVX_OK && cudaGraphLaunch(g->gx, g->ds) !=
		    cudaSuccess)
			rc = kvx__fail(KVX_ERR_DEVICE, "%s:%d: graph launch "
			    "failed", __FILE__, __LINE__);
	}
	if (rc != KVX_OK)
		goto out;
	if (logits != NULL && cudaMemcpyAsync(logits, g->logits, (size_t)n *
	    g->V * 4, cudaMemcpyDeviceToHost, g->ds) != cudaSuccess) {
		rc = kvx__fail(KVX_ERR_DEVICE, "%s:%d: logits copy failed",
		    __FILE__, __LINE__);
		goto out;
	}
	/* meanwhile, the next step's tables: only when no segment will
	   need to grow and the graph will still fit */
	t1 = kvx__now();
	for (i = 0, pre = 1; i < n && pre; i++)
		for (l = 0; l < g->L && pre; l++)
			for (h = 0; h < Hkv; h++)
				if (seg_at(g, seqs[i], l, h)->len + 2 >
				    seg_at(g, seqs[i], l, h)->cap)
					pre = 0;
	if (pre && n <= g->pre_max &&
	    (cap = step_items(g, n, seqs, 1, head, chunk)) == g->gx_cap &&
	    graph_fits(g, n, cap, head) && step_layout(g, n, cap, ll) ==
	    need && host_room(&g->h_pre, &g->pre_room, need) == KVX_OK &&
	    step_fill(g, n, seqs, 1, cap, chunk, ll, g->h_pre, len) ==
	    KVX_OK) {
		memcpy(g->pre_seqs, seqs, (size_t)n * sizeof(int));
		g->pre_n = n;
		g->pre_cap = cap;
		g->pre_head = head;
		g->pre_gen = g->gen;
		g->pre_ok = 1;
	}
	if (g->timing)
		g->st.decode_ahead_s += kvx__now() - t1;
	/* the tables stay in use until the step ends */
	if (cudaStreamSynchronize(g->ds) != cudaSuccess) {
		g->pre_ok = 0;
		rc = kvx__fail(KVX_ERR_DEVICE, "%s:%d: decode step failed: %s",
		    __FILE__, __LINE__, cudaGetErrorString(cudaGetLastError()));
		goto out;
	}
	for (i = 0; i < n; i++) {
		for (l = 0; l < g->L; l++)
			for (h = 0; h < Hkv; h++)
				seg_at(g, seqs[i], l, h)->len++;
		g->npos[seqs[i]]++;
	}
	if (g->timing) {
		g->st.decode_s += kvx__now() - t0;
		g->st.decode_tokens += n;
	}
out:
	free(len);
	free(chunk);
	free(ll);
	return rc;
}

kvx_status
gpu_decode(gpu_ctx *g, int n, const int *seqs, const int32_t *ids,
    float *logits)
{
	int i;

	for (i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= g->V)
			return kvx__fail(KVX_ERR_ARG, "token id %d out of range "
			    "[0, %d)", ids[i], g->V);
	return decode_step(g, n, seqs, ids, logits);
}

kvx_status
gpu_extend(gpu_ctx *g, int s, const int32_t *ids, int n, float *logits)
{
	kvx_status rc;
	int i;

	/* token by token: each sees the cache and the tokens before it */
	for (i = 0; i < n; i++)
		if ((rc = gpu_decode(g, 1, &s, ids + i, logits != NULL ?
		    logits + (size_t)i * g->V : NULL)) != KVX_OK)
			return rc;
	return KVX_OK;
}

// --- sequences -----------------------------------------------------------------

kvx_status
gpu_seq_clear(gpu_ctx *g, int s)
{
	int l;

	for (l = 0; l < g->L; l++)
		blk_free(g, s, l);
	g->npos[s] = 0;
	return KVX_OK;
}

int
gpu_seq_len(const gpu_ctx *g, int s)
{
	return g->npos[s];
}

kvx_status
gpu_seq_copy(gpu_ctx *g, int dst, int src)
{
	size_t rb = (size_t)g->D * 2;
	int caps[64], l, h;
	kvx_status rc;

	if (dst == src || g->npos[dst] != 0)
		return kvx__fail(KVX_ERR_ARG, "gpu_seq_copy: sequence %d is "
		    "not an empty other sequence", dst);
	for (l = 0; l < g->L; l++) {
		for (h = 0; h < g->Hkv; h++)
			caps[h] = seg_at(g, src, l, h)->cap;
		if ((rc = blk_alloc(g, dst, l, caps)) != KVX_OK)
			return rc;
		for (h = 0; h < g->Hkv; h++) {
			gseg *a = seg_at(g, src, l, h), *b = seg_at(g, dst, l,
			    h);

			CK(cudaMemcpyAsync(g->kbase + b->off * 2, g->kbase +
			    a->off * 2, (size_t)a->len * rb,
			    cudaMemcpyDeviceToDevice, 0));
			CK(cudaMemcpyAsync(g->vbase + b->off * 2, g->vbase +
			    a->off * 2, (size_t)a->len * rb,
			    cudaMemcpyDeviceToDevice, 0));
			b->len = a->len;
		}
	}
	g->npos[dst] = g->npos[src];
	CK(cudaDeviceSynchronize());
	return KVX_OK;
}

kvx_status
gpu_memory(const gpu_ctx *g, kvx_memory *mem)
{
	size_t row = (size_t)2 * g->D * sizeof(uint16_t);
	int s, l, h;

	memset(mem, 0, sizeof *mem);
	for (s = 0; s < g->p.n_seq; s++) {
		mem->n_tokens += g->npos[s];
		for (l = 0; l < g->L; l++)
			for (h = 0; h < g->Hkv; h++) {
				const gseg *sg = seg_at(g, s, l, h);

				mem->n_kept += sg->len;
				mem->kv_bytes += (uint64_t)sg->cap * row;
			}
	}
	mem->kv_bytes_used = (uint64_t)mem->n_kept * row;
	mem->kv_bytes_full = (uint64_t)mem->n_tokens * g->L * g->Hkv * row;
	return KVX_OK;
}
