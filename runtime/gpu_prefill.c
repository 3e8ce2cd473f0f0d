/*
 * gpu_prefill.c - prefill of one sequence on the device, with per-layer
 * compression to the plan.
 * SPDX-License-Identifier: MIT
 *
 * Each layer's K/V of the whole prompt go to a scratch buffer, causal
 * attention runs on them with batched GEMMs, then the layer is scored,
 * selected and gathered into blocks sized to the plan (kept rows plus
 * decode headroom), so the full cache exists for one layer at a time.
 * Hybrid plans split each layer's budget over its heads on the device
 * too; the host reads the heads' counts once, after the last layer, so
 * the prefill never waits.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "gpu_impl.h"
#include "plan.h"
#include "util.h"

/*
 * The table of a layer's compression on the device (g->tab), per KV
 * head: koff, soff and n go up once a prefill, at layer 0; lay each
 * static layer, or the hybrid split writes it.
 */
struct ptab {
	/* its keys in the K scratch; its scores, pooled scores and kept
	   rows; its rows (the prompt) */
	long long	koff[SEL_MAX_KV_HEADS];
	long long	soff[SEL_MAX_KV_HEADS];
	int		n[SEL_MAX_KV_HEADS];
	/* its segment, and the rows it keeps */
	struct ptab_lay {
		long long	dst[SEL_MAX_KV_HEADS];
		int		keep[SEL_MAX_KV_HEADS];
	} lay;
};

/* Device address of member f of the table. */
#define PTAB(g, f) ((void *)((char *)(g)->tab + offsetof(struct ptab, f)))

/* Window queries the selection takes after a prompt of n tokens. */
static int
window(int n)
{
	return n < KVX_WINDOW_MAX ? n : KVX_WINDOW_MAX;
}

/*
 * Floats of the Expected Attention scratch, within g->sscr: each query
 * head's mean and covariance, the statistics' scratch (a window's
 * pre-RoPE queries, or the whole prompt's sums), then the scores' logits.
 */
static size_t
ea_floats(const gpu_ctx *g, int n, size_t *cov_at, size_t *u_at,
    size_t *lg_at)
{
	const kvx_plan *P = g->plan;
	size_t D = (size_t)g->D, H = (size_t)g->H, nq, cs;

	nq = (size_t)sel_ea_nq(P, n);
	cs = P->ea_cov == PLAN_COV_DIAG ? D : P->ea_cov == PLAN_COV_NONE ? 0 :
	    D * D;
	*cov_at = H * D;
	*u_at = *cov_at + H * cs;
	*lg_at = *u_at + (kvx_cuda_ea_stats_scratch((int)H, (int)nq,
	    (int)D) + sizeof(float) - 1) / sizeof(float);
	return *lg_at + kvx_cuda_ea_scratch(g->Hkv, g->H / g->Hkv, n,
	    g->D) / sizeof(float);
}

/* Prefill buffers for n prompt tokens. */
kvx_status
gpu__ensure_prefill(gpu_ctx *g, int n)
{
	size_t N = (size_t)n, qb = N < QBLK ? N : QBLK, G = g->H / g->Hkv;
	size_t kvr = N * g->Hkv * g->D * 2, sbytes, a, b, c;
	int w = g->plan != NULL ? g->plan->window : 1;
	kvx_status rc;

	if (n <= g->pmax)
		return KVX_OK;
	g->pmax = 0;
	/* the scoring keeps its logits between passes up to SCORE_KEEP */
	w = w < 1 ? 1 : (w > KVX_WINDOW_MAX ? KVX_WINDOW_MAX : w);
	sbytes = kvx_cuda_score_scratch(g->Hkv, (int)G, w, n, 1);
	if (sbytes > SCORE_KEEP)
		sbytes = kvx_cuda_score_scratch(g->Hkv, (int)G, w, n, 0);
	if (g->plan != NULL && g->plan->scorer == PLAN_SCORER_EA &&
	    ea_floats(g, n, &a, &b, &c) * sizeof(float) > sbytes)
		sbytes = ea_floats(g, n, &a, &b, &c) * sizeof(float);
	if ((rc = gpu__regrow(&g->qh, N * g->H * g->D * 2)) != KVX_OK ||
	    (rc = gpu__regrow(&g->kt, kvr)) != KVX_OK ||
	    (rc = gpu__regrow(&g->vt, kvr)) != KVX_OK ||
	    (rc = gpu__regrow((void **)&g->S, G * qb * N * 4)) != KVX_OK ||
	    (rc = gpu__regrow(&g->P, G * qb * N * 2)) != KVX_OK ||
	    (rc = gpu__regrow((void **)&g->score, (size_t)g->Hkv * N * 4)) !=
	    KVX_OK ||
	    (rc = gpu__regrow((void **)&g->pooled, (size_t)g->Hkv * N * 4)) !=
	    KVX_OK ||
	    (rc = gpu__regrow(&g->sscr, sbytes)) != KVX_OK ||
	    (rc = gpu__regrow((void **)&g->idx, (size_t)g->Hkv * N * 4)) !=
	    KVX_OK ||
	    (rc = gpu__regrow((void **)&g->cnt, (size_t)(g->L + 3) * g->Hkv *
	    sizeof(int))) != KVX_OK ||
	    (rc = gpu__regrow(&g->tab, sizeof(struct ptab))) != KVX_OK)
		return rc;
	if (g->win != NULL && g->plan != NULL && (rc = gpu__regrow((void **)
	    &g->widx, (size_t)g->L * g->Hkv * N * sizeof(int))) != KVX_OK)
		return rc;
	/* after the selection's counts: each layer's split, its scratch */
	g->split = g->cnt + g->Hkv;
	g->split_scr = g->split + (size_t)g->L * g->Hkv;
	g->sscr_bytes = sbytes;
	g->pmax = n;
	return KVX_OK;
}

/*
 * Causal attention at layer l of the T queries in q, at rows p0 .. p0 +
 * T - 1 of the keys and values kt, vt (rows [row][Hkv][D], fp16), over
 * the rows up to their own, into att.  A sliding-window layer's block of
 * queries from row a0 multiplies only the keys from a0 - window + 1 on,
 * and the softmax masks each row to its window; so do the rows before
 * g->span_to with a window of g->span keys.  With kz, the softmax
 * weights that the last kz->w queries give the first kz->n rows are
 * max-merged into KVzip's scores (kvx_cuda_kvzip_max).
 */
kvx_status
gpu__attn(gpu_ctx *g, int l, const void *kt, const void *vt, int p0, int T,
    const gpu_kzs *kz)
{
	int G = g->H / g->Hkv, D = g->D, lw = g->m->L[l].window, win;
	int t0, a0, k0, rows, nk, j, r0;
	float scale = 1.0f / sqrtf((float)D), one = 1.0f, zero = 0.0f;
	long long sS;

	CK(kvx_cuda_f2h(g->q, g->qh, (size_t)T * g->H * D, g->stream));
	for (t0 = 0; t0 < T; t0 += rows) {
		rows = T - t0 < QBLK ? T - t0 : QBLK;
		a0 = p0 + t0;
		win = lw;
		/* profiling's local attention: the blocks of rows before
		   span_to see their last span keys at most */
		if (g->span > 0 && a0 < g->span_to) {
			if (a0 + rows > g->span_to)
				rows = g->span_to - a0;
			win = lw > 0 && lw < g->span ? lw : g->span;
		}
		k0 = win > 0 && a0 - win + 1 > 0 ? a0 - win + 1 : 0;
		nk = a0 + rows - k0;
		sS = (long long)rows * nk;
		/* the rows of this block that score, and the columns of
		   the rows they score */
		r0 = kz != NULL ? T - kz->w - t0 : rows;
		r0 = r0 < 0 ? 0 : r0;
		for (j = 0; j < g->Hkv; j++) {
			const char *kj = (const char *)kt + ((size_t)k0 *
			    g->Hkv + j) * D * 2;
			const char *vj = (const char *)vt + ((size_t)k0 *
			    g->Hkv + j) * D * 2;
			const char *qj = (const char *)g->qh +
			    ((size_t)t0 * g->H + (size_t)j * G) * D * 2;

			CB(cublasGemmStridedBatchedEx(g->blas, CUBLAS_OP_T,
			    CUBLAS_OP_N, nk, rows, D, &scale, kj, CUDA_R_16F,
			    g->Hkv * D, 0, qj, CUDA_R_16F, g->H * D, D, &zero,
			    g->S, CUDA_R_32F, nk, sS, G, CUBLAS_COMPUTE_32F,
			    CUBLAS_GEMM_DEFAULT));
			CK(kvx_cuda_softmax_causal(g->S, G, rows, nk, a0 - k0,
			    win, g->P, g->stream));
			if (r0 < rows && kz->n - k0 > 0)
				CK(kvx_cuda_kvzip_max(g->S, G, rows, nk,
				    a0 - k0, win, r0, kz->n - k0 < nk ?
				    kz->n - k0 : nk, kz->scr, kz->score +
				    j * kz->hstride + k0, g->stream));
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
	if (g->timing && g->ev != NULL)
		CK(cudaEventRecord(g->ev[4 * l + i], g->stream));
	return KVX_OK;
}

/*
 * Expected Attention scores of the layer's candidates into g->score (KV
 * head h's at h*n, as the table's soff): statistics of the last queries
 * of the prompt, as select_layer takes them on the CPU, or carried from
 * the moments of all of them where src holds those, then one pass over
 * the keys.
 */
static kvx_status
ea_score(gpu_ctx *g, int l, int n, const sel_counts *sc, const gpu_src *src)
{
	const kvx_plan *P = g->plan;
	int D = g->D, H = g->H, G = H / g->Hkv;
	int nq = sel_ea_nq(P, n);
	float *base = (float *)g->sscr, *w;
	size_t cov_at, u_at, lg_at;

	ea_floats(g, n, &cov_at, &u_at, &lg_at);
	/* a full covariance from fewer queries than dimensions is cheaper
	 * applied as the queries themselves (kvx_cuda_ea_score) */
	w = P->ea_cov == PLAN_COV_FULL && nq <= D && src->mom == NULL ?
	    base + u_at : NULL;
	if (src->mom != NULL)
		CK(kvx_cuda_ea_carry(src->mom, H, nq, n, P->ea_future,
		    g->m->L[l].theta, g->m->desc->rope == ROPE_HALVES, D,
		    P->ea_cov, base, base + cov_at, g->stream));
	else
		/* query head i of token t at q + (t - qrow0)*H*D + i*D */
		CK(kvx_cuda_ea_stats(src->q + (size_t)(n - nq - src->qrow0) *
		    H * D, D, (long long)H * D, H, nq, n - nq, n,
		    P->ea_future, g->m->L[l].theta, g->m->desc->rope ==
		    ROPE_HALVES, D, P->ea_cov, base, w != NULL ? NULL : base +
		    cov_at, base + u_at, g->stream));
	/* the keys the layer may keep, from row sc->first */
	CK(kvx_cuda_ea_score(base, base + cov_at, P->ea_cov, w, nq,
	    src->k + (size_t)(sc->first - src->row0) * g->Hkv * D * 2,
	    src->v + (size_t)(sc->first - src->row0) * g->Hkv * D * 2,
	    KVX_CUDA_F16, g->Hkv, n - sc->first, n - sc->first - sc->pw,
	    sc->sinks, G, D, g->Hkv * D, P->ea_vnorm, P->gqa, base + lg_at,
	    g->score, n, g->stream));
	return KVX_OK;
}

/*
 * KVzip's scores of the layer's candidates into g->score (KV head h's at
 * h*n, as the table's soff): those of the repeat pass, from the first row
 * the layer keeps, with the sinks' set to 0 as cpu.c's select_layer does
 * (they are kept whatever their score).
 */
static kvx_status
kz_score(gpu_ctx *g, const sel_counts *sc, int n, const gpu_src *src)
{
	size_t pitch = (size_t)n * sizeof(float);

	CK(cudaMemcpy2DAsync(g->score, pitch, src->kz + (sc->first -
	    src->row0), (size_t)src->kzs * sizeof(float), (size_t)(n -
	    sc->first - sc->pw) * sizeof(float), g->Hkv,
	    cudaMemcpyDeviceToDevice, g->stream));
	if (sc->sinks > 0)
		CK(cudaMemset2DAsync(g->score, pitch, 0, (size_t)sc->sinks *
		    sizeof(float), g->Hkv, g->stream));
	return KVX_OK;
}

/*
 * Compress layer l of sequence s (its n rows in src, the rotated queries
 * in q) to the plan, into a new block: all rows without a plan, else the
 * selection with the counts of sel_rule, scored by the plan's scorer, as
 * cpu.c's select_layer.  Scoring reads the window
 * queries where src has them; the table entries that depend only on n go up once, at layer 0,
 * and each static layer adds one upload of its budgets and offsets.  A
 * hybrid layer's budgets and offsets come from kvx_cuda_hybrid_split
 * instead, and its segments' lengths from hybrid_finish.
 */
static kvx_status
prefill_select(gpu_ctx *g, int s, int l, int n, const gpu_src *src)
{
	const kvx_plan *P = g->plan;
	int Hkv = g->Hkv, D = g->D, G = g->H / Hkv, hr = g->p.decode_headroom;
	int caps[SEL_MAX_KV_HEADS] = { 0 }, cnt[SEL_MAX_KV_HEADS], h, maxc = 0;
	int nv;
	long long tl[2][SEL_MAX_KV_HEADS];
	struct ptab_lay lt;
	sel_counts sc;
	size_t rb = (size_t)D * 2;
	kvx_status rc;

	if ((rc = mark(g, l, 0)) != KVX_OK)
		return rc;
	if (P == NULL || n <= 1) {
		/* the full cache, too, keeps a sliding-window layer's window
		   only: rows from first on */
		int nv = sel_window_rows(g->m->L[l].window, n);
		int first = n - nv - src->row0;

		for (h = 0; h < Hkv; h++)
			caps[h] = nv + hr;
		if ((rc = gpu__blk_alloc(g, s, l, caps)) != KVX_OK)
			return rc;
		for (h = 0; h < Hkv; h++) {
			gseg *sg = seg_at(g, s, l, h);

			CK(cudaMemcpy2DAsync(g->kbase + sg->off * 2, rb,
			    src->k + ((size_t)first * Hkv + h) * rb,
			    Hkv * rb, rb, nv, cudaMemcpyDeviceToDevice,
			    g->stream));
			CK(cudaMemcpy2DAsync(g->vbase + sg->off * 2, rb,
			    src->v + ((size_t)first * Hkv + h) * rb,
			    Hkv * rb, rb, nv, cudaMemcpyDeviceToDevice,
			    g->stream));
			sg->len = nv;
		}
		if ((rc = mark(g, l, 1)) != KVX_OK ||
		    (rc = mark(g, l, 2)) != KVX_OK)
			return rc;
		return mark(g, l, 3);
	}

	if (sel_rule(P, l, n, window(n), Hkv, &sc) != 0)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "%d KV heads", Hkv);
	/* a sliding-window layer scores and keeps its last nv rows, from
	   row sc.first (of src, row sc.first - src->row0): their keys'
	   offsets and count go up when either differs from the last
	   layer's.  Both are compared: where src holds a windowed layer's
	   window only (kvx_compress_from), its rows start at src row 0 as
	   a global layer's do, with fewer of them */
	nv = n - sc.first;
	if (l == 0 || sc.first - src->row0 != g->tab_first ||
	    nv != g->tab_nv) {
		for (h = 0; h < Hkv; h++) {
			tl[0][h] = ((long long)(sc.first - src->row0) * Hkv +
			    h) * D;
			tl[1][h] = (long long)h * n;
			cnt[h] = nv;
		}
		CK(cudaMemcpyAsync(PTAB(g, koff), tl[0], Hkv *
		    sizeof(long long), cudaMemcpyHostToDevice, g->stream));
		if (l == 0)
			CK(cudaMemcpyAsync(PTAB(g, soff), tl[1], Hkv *
			    sizeof(long long), cudaMemcpyHostToDevice,
			    g->stream));
		CK(cudaMemcpyAsync(PTAB(g, n), cnt, Hkv * sizeof(int),
		    cudaMemcpyHostToDevice, g->stream));
		g->tab_first = sc.first - src->row0;
		g->tab_nv = nv;
	}
	/* the last pw queries: head h of KV head s at q + (s*G + h)*D,
	   positions H*D apart, token t at row t - qrow0 */
	if (P->scorer == PLAN_SCORER_EA) {
		if ((rc = ea_score(g, l, n, &sc, src)) != KVX_OK)
			return rc;
	} else if (P->scorer == PLAN_SCORER_KVZIP) {
		if ((rc = kz_score(g, &sc, n, src)) != KVX_OK)
			return rc;
	} else
		CK(kvx_cuda_score_q(src->q + (size_t)(n - sc.pw - src->qrow0) *
		    g->H * D, D, (long long)g->H * D, src->k, KVX_CUDA_F16,
		    PTAB(g, koff), PTAB(g, n), Hkv, nv, G, sc.pw, D, Hkv * D,
		    1.0f / sqrtf((float)D), P->gqa, PTAB(g, soff), g->sscr,
		    g->sscr_bytes, g->score, g->stream));
	CK(kvx_cuda_pool(g->score, PTAB(g, soff), PTAB(g, n), Hkv, nv, sc.pw,
	    P->pool_kernel, sel_pool_kind(P->scorer, P->pool), g->pooled,
	    g->stream));
	if ((rc = mark(g, l, 1)) != KVX_OK)
		return rc;

	/* a hybrid layer's block is sized by the even split of its total,
	   which sums as any split does, and the split kernel places the
	   heads in it; hybrid_finish reads their counts back */
	for (h = 0; h < Hkv; h++) {
		caps[h] = sc.keep[h] + hr;
		if (sc.keep[h] > maxc)
			maxc = sc.keep[h];
	}
	if ((rc = gpu__blk_alloc(g, s, l, caps)) != KVX_OK)
		return rc;
	if (sc.hybrid) {
		struct kvx_cuda_hlayout hl;

		/* keep = sel_keep(&sc, share) */
		hl.add = sc.fixed;
		hl.nmax = sc.fixed + sc.ncand;
		hl.minc = sc.fixed;
		hl.headroom = hr;
		hl.base = seg_at(g, s, l, 0)->off;
		hl.row = D;
		maxc = sel_keep(&sc, sc.total < sc.ncand ? sc.total : sc.ncand);
		CK(kvx_cuda_hybrid_split(g->pooled, PTAB(g, soff), sc.sinks,
		    Hkv, sc.ncand, sc.total, sc.floor, g->split + (size_t)Hkv *
		    l, g->split_scr, &hl, PTAB(g, lay.dst), PTAB(g, lay.keep),
		    g->stream));
	} else {
		for (h = 0; h < Hkv; h++) {
			lt.dst[h] = seg_at(g, s, l, h)->off;
			lt.keep[h] = sc.keep[h];
		}
		CK(cudaMemcpyAsync(PTAB(g, lay), &lt, sizeof lt,
		    cudaMemcpyHostToDevice, g->stream));
	}
	CK(kvx_cuda_select(g->pooled, PTAB(g, soff), PTAB(g, n),
	    PTAB(g, lay.keep), Hkv, sc.pw, sc.sinks, PTAB(g, soff), g->idx,
	    g->cnt, g->stream));
	if ((rc = mark(g, l, 2)) != KVX_OK)
		return rc;
	/* a sliding-window layer's kept positions, read after the prefill */
	if (g->win != NULL && g->m->L[l].window > 0)
		CK(cudaMemcpyAsync(g->widx + (size_t)l * Hkv * n, g->idx,
		    (size_t)Hkv * n * sizeof(int), cudaMemcpyDeviceToDevice,
		    g->stream));
	CK(kvx_cuda_gather(src->k, src->v, g->kbase, g->vbase, KVX_CUDA_F16, D,
	    Hkv * D, D, PTAB(g, koff), PTAB(g, lay.dst), g->idx,
	    PTAB(g, soff), g->cnt, Hkv, maxc, g->stream));
	if ((rc = mark(g, l, 3)) != KVX_OK)
		return rc;
	/* hybrid layers' lengths come with hybrid_finish */
	for (h = 0; h < Hkv; h++)
		seg_at(g, s, l, h)->len = sc.hybrid ? 0 : sc.keep[h];
	return KVX_OK;
}

/*
 * After a compressed prefill of n tokens with a hybrid plan (the device
 * idle): each layer's split counts, read back at once, give its heads'
 * kept rows (sel_keep) and their places in the block, as the split
 * kernel laid them out.
 */
static kvx_status
hybrid_finish(gpu_ctx *g, int s, int n)
{
	const kvx_plan *P = g->plan;
	int Hkv = g->Hkv, hr = g->p.decode_headroom, l, h;
	int *c;
	long long at, was, now;
	sel_counts sc;

	if (P == NULL || P->mode != KVX_PLAN_HYBRID || n <= 1)
		return KVX_OK;
	if ((c = kvx__malloc_array((size_t)g->L * Hkv, sizeof(int))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	if (cudaMemcpyAsync(c, g->split, (size_t)g->L * Hkv * sizeof(int),
	    cudaMemcpyDeviceToHost, g->stream) != cudaSuccess ||
	    cudaStreamSynchronize(g->stream) != cudaSuccess) {
		free(c);
		return kvx__fail(KVX_ERR_DEVICE, "%s:%d: split counts copy "
		    "failed", __FILE__, __LINE__);
	}
	for (l = 0; l < g->L; l++) {
		if (sel_rule(P, l, n, window(n), Hkv, &sc) != 0) {
			free(c);
			return kvx__fail(KVX_ERR_UNSUPPORTED, "%d KV heads",
			    Hkv);
		}
		at = seg_at(g, s, l, 0)->off;
		was = now = 0;
		for (h = 0; h < Hkv; h++) {
			gseg *sg = seg_at(g, s, l, h);
			int k = sel_keep(&sc, c[l * Hkv + h]);

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

/*
 * After a prefill of n tokens into sequence s (the device idle and the
 * segments' lengths known): where each sliding-window layer's kept rows
 * sit, its last sel_window_rows prompt tokens without compression, else
 * the rows the selection kept of them (in g->widx, in increasing order,
 * counted from the first of those tokens).
 */
static kvx_status
win_record(gpu_ctx *g, int s, int n)
{
	int Hkv = g->Hkv, l, h, sel = g->plan != NULL && n > 1;
	int *all = NULL;

	if (g->win == NULL)
		return KVX_OK;
	gpu__win_clear(g, s);
	if (sel) {
		if ((all = kvx__malloc_array((size_t)g->L * Hkv * n,
		    sizeof(int))) == NULL)
			return kvx__fail(KVX_ERR_NOMEM, "out of memory");
		if (cudaMemcpy(all, g->widx, (size_t)g->L * Hkv * n *
		    sizeof(int), cudaMemcpyDeviceToHost) != cudaSuccess) {
			free(all);
			return kvx__fail(KVX_ERR_DEVICE, "%s:%d: kept positions "
			    "copy failed", __FILE__, __LINE__);
		}
	}
	for (l = 0; l < g->L; l++) {
		if (g->m->L[l].window <= 0)
			continue;
		for (h = 0; h < Hkv; h++) {
			gwin *w = win_at(g, s, l, h);
			int i, *ix = all + ((size_t)l * Hkv + h) * n;

			w->nkept = seg_at(g, s, l, h)->len;
			w->p0 = n - sel_window_rows(g->m->L[l].window, n);
			w->base = n;
			if (!sel)
				continue;
			if ((w->pos = kvx__malloc_array((size_t)w->nkept + 1,
			    sizeof(int))) == NULL) {
				free(all);
				return kvx__fail(KVX_ERR_NOMEM, "out of memory");
			}
			for (i = 0; i < w->nkept; i++)
				w->pos[i] = w->p0 + ix[i];
		}
	}
	free(all);
	return KVX_OK;
}

/* Floats of one layer's kept window queries. */
static size_t
wq_layer(const gpu_ctx *g)
{
	return (size_t)KVX_WINDOW_MAX * g->H * g->D;
}

/* Doubles of one layer's kept moments. */
static size_t
qst_layer(const gpu_ctx *g)
{
	return kvx_cuda_ea_moments_bytes(g->H, g->D) / sizeof(double);
}

/* Frees what the full cache keeps of its prefills for kvx_compress_from. */
void
gpu__keep_free(gpu_ctx *g)
{
	int i;

	for (i = 0; i < g->p.n_seq; i++) {
		if (g->wq != NULL)
			cudaFree(g->wq[i]);
		if (g->qst != NULL)
			cudaFree(g->qst[i]);
	}
	free(g->wq);
	free(g->qst);
	free(g->wq_n);
	g->wq = NULL;
	g->qst = NULL;
	g->wq_n = NULL;
}

/*
 * Room for what the full cache g keeps of sequence s's prefill for
 * kvx_compress_from (SnapKV's and Expected Attention's plans score with
 * it): each layer's window queries, KVX_WINDOW_MAX rows of H x D floats
 * (the largest window a plan may have: 288 KiB a layer for the default
 * model), and with query_stats the moments of all its queries, H x (2D +
 * D(D+1)/2) doubles (155 KiB a layer).  Made at the sequence's first
 * prefill, then reused; what it held is void until the next one ends.
 */
static kvx_status
keep_alloc(gpu_ctx *g, int s)
{
	if (g->wq == NULL) {
		g->wq = kvx__calloc((size_t)g->p.n_seq, sizeof *g->wq);
		g->qst = kvx__calloc((size_t)g->p.n_seq, sizeof *g->qst);
		g->wq_n = kvx__calloc((size_t)g->p.n_seq, sizeof *g->wq_n);
		if (g->wq == NULL || g->qst == NULL || g->wq_n == NULL) {
			gpu__keep_free(g);
			return kvx__fail(KVX_ERR_NOMEM, "out of memory");
		}
	}
	g->wq_n[s] = 0;
	if (g->wq[s] == NULL && gpu__regrow((void **)&g->wq[s],
	    (size_t)g->L * wq_layer(g) * sizeof(float)) != KVX_OK)
		return KVX_ERR_NOMEM;
	if (g->p.query_stats && g->qst[s] == NULL &&
	    gpu__regrow((void **)&g->qst[s], (size_t)g->L * qst_layer(g) *
	    sizeof(double)) != KVX_OK)
		return KVX_ERR_NOMEM;
	return KVX_OK;
}

/*
 * During a full cache's prefill of n tokens into sequence s, after layer
 * l's attention: its rotated queries of the last min(n, KVX_WINDOW_MAX)
 * tokens, and with query_stats the moments of all n (every product, so
 * that a plan of any covariance carries them).
 */
static kvx_status
keep_layer(gpu_ctx *g, int s, int l, int n)
{
	size_t row = (size_t)g->H * g->D;
	int w = window(n);

	CK(cudaMemcpyAsync(g->wq[s] + (size_t)l * wq_layer(g), g->q +
	    (size_t)(n - w) * row, (size_t)w * row * sizeof(float),
	    cudaMemcpyDeviceToDevice, g->stream));
	if (g->qst[s] != NULL)
		CK(kvx_cuda_ea_moments(g->q, g->D, (long long)row, g->H, n, 0,
		    g->m->L[l].theta, g->m->desc->rope == ROPE_HALVES, g->D,
		    PLAN_COV_FULL, g->qst[s] + (size_t)l * qst_layer(g),
		    g->stream));
	return KVX_OK;
}

/*
 * A kvzip plan's compression of sequence s after the prefill of the n
 * tokens ids, layer l's last np[l] in the pass's buffers: the repeat pass
 * scores them, then each layer is selected from there.  Its wall time,
 * the device synchronised around it, is the prefill's selection time
 * (g->kz_s), as the CPU counts it.
 */
static kvx_status
kvzip_compress(gpu_ctx *g, int s, const int32_t *ids, int n, const int *np)
{
	double t0;
	kvx_status rc;
	gpu_src src = { 0 };
	int l;

	CK(cudaStreamSynchronize(g->stream));
	t0 = kvx__now();
	if ((rc = gpu__kvzip_pass(g, ids, n, np)) != KVX_OK)
		return rc;
	for (l = 0; l < g->L; l++) {
		gpu__kvzip_src(g, l, n, np[l], &src);
		if ((rc = prefill_select(g, s, l, n, &src)) != KVX_OK)
			return rc;
	}
	CK(cudaStreamSynchronize(g->stream));
	g->kz_s += kvx__now() - t0;
	return KVX_OK;
}

/*
 * The forward of the n prompt tokens through every layer: each layer's
 * K/V go to the scratch and are compressed right after its attention,
 * or, for a kvzip plan (kz set), go to the repeat pass's buffers, which
 * keep every layer's.  A full cache keeps each layer's window queries
 * (keep_layer).
 */
static kvx_status
prefill_layers(gpu_ctx *g, int s, int n, int kz)
{
	gpu_src src = { (const char *)g->kt, (const char *)g->vt, 0, NULL, 0,
	    g->q, 0, NULL };
	kvx_status rc;
	int l;

	for (l = 0; l < g->L; l++) {
		if (kz)
			gpu__kvzip_src(g, l, n, n, &src);
		if ((rc = gpu__qkv_rope(g, l, n, NULL, (void *)src.k,
		    (void *)src.v)) != KVX_OK)
			return rc;
		if ((rc = gpu__attn(g, l, src.k, src.v, 0, n, NULL)) != KVX_OK)
			return rc;
		if (g->plan == NULL && (rc = keep_layer(g, s, l, n)) != KVX_OK)
			return rc;
		if (!kz && (rc = prefill_select(g, s, l, n, &src)) != KVX_OK)
			return rc;
		if ((rc = gpu__out_ffn(g, l, n, 0)) != KVX_OK)
			return rc;
	}
	return KVX_OK;
}

/* The prefill of gpu_prefill, without the bookkeeping on failure. */
static kvx_status
prefill_run(gpu_ctx *g, int s, const int32_t *ids, int n, float *logits)
{
	int *pos, *np, l, i;
	int kz = g->plan != NULL && g->plan->scorer == PLAN_SCORER_KVZIP &&
	    n > 1;
	double t0 = 0.0;
	float ms[3];
	kvx_status rc;

	if ((rc = gpu__ensure_fw(g, n)) != KVX_OK ||
	    (rc = gpu__ensure_prefill(g, n)) != KVX_OK ||
	    (kz && (rc = gpu__kvzip_ensure(g, n)) != KVX_OK))
		return rc;
	if ((pos = kvx__malloc_array((size_t)n, sizeof(int))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	for (i = 0; i < n; i++)
		pos[i] = i;
	if (g->timing) {
		if ((rc = gpu__events(g)) != KVX_OK) {
			free(pos);
			return rc;
		}
		CK(cudaStreamSynchronize(g->stream));
		t0 = kvx__now();
	}
	if (cudaMemcpyAsync(g->pos, pos, (size_t)n * 4, cudaMemcpyHostToDevice,
	    g->stream) != cudaSuccess ||
	    cudaMemcpyAsync(g->ids, ids, (size_t)n * 4, cudaMemcpyHostToDevice,
	    g->stream) != cudaSuccess ||
	    cudaStreamSynchronize(g->stream) != cudaSuccess) {
		free(pos);
		return kvx__fail(KVX_ERR_DEVICE, "%s:%d: token upload failed",
		    __FILE__, __LINE__);
	}
	free(pos);
	CK(kvx_cuda_embed(g->embd, g->E, g->ids, n, g->m->desc->embd_scale ?
	    sqrtf((float)g->E) : 1.0f, g->x, g->stream));
	if ((rc = prefill_layers(g, s, n, kz)) != KVX_OK)
		return rc;
	if (logits != NULL) {
		if ((rc = gpu__lm_head(g, n - 1, 1)) != KVX_OK)
			return rc;
		CK(cudaMemcpyAsync(logits, g->logits, (size_t)g->V * 4,
		    cudaMemcpyDeviceToHost, g->stream));
	}
	/* every layer holds the whole prompt */
	if (kz) {
		if ((np = kvx__malloc_array((size_t)g->L, sizeof(int))) ==
		    NULL)
			return kvx__fail(KVX_ERR_NOMEM, "out of memory");
		for (l = 0; l < g->L; l++)
			np[l] = n;
		rc = kvzip_compress(g, s, ids, n, np);
		free(np);
		if (rc != KVX_OK)
			return rc;
	}
	CK(cudaStreamSynchronize(g->stream));
	if ((rc = hybrid_finish(g, s, n)) != KVX_OK ||
	    (rc = win_record(g, s, n)) != KVX_OK)
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

/* Prefill of sequence s with n tokens; on failure the sequence is left
 * empty. */
kvx_status
gpu_prefill(gpu_ctx *g, int s, const int32_t *ids, int n, float *logits)
{
	kvx_status rc;
	int i;

	for (i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= g->V)
			return kvx__fail(KVX_ERR_ARG, "token id %d out of range "
			    "[0, %d)", ids[i], g->V);
	/* a full cache's prompt, which kvx_compress_from repeats, and room
	   for its window queries */
	if ((g->plan == NULL &&
	    ((rc = gpu__kvzip_keep_ids(g, s, ids, n)) != KVX_OK ||
	    (rc = keep_alloc(g, s)) != KVX_OK)) ||
	    (rc = prefill_run(g, s, ids, n, logits)) != KVX_OK) {
		gpu_seq_clear(g, s);
		return rc;
	}
	if (g->plan == NULL)
		g->wq_n[s] = window(n);
	g->npos[s] = n;
	return KVX_OK;
}

/* gpu_compress_from by a kvzip plan, without the bookkeeping on
 * failure. */
static kvx_status
kvzip_from(gpu_ctx *g, int s, const gpu_ctx *src, int ss, int n)
{
	kvx_status rc;
	gpu_src zs = { 0 };
	int *np, l;

	if ((rc = gpu__ensure_fw(g, n)) != KVX_OK ||
	    (rc = gpu__ensure_prefill(g, n)) != KVX_OK ||
	    (rc = gpu__kvzip_ensure(g, n)) != KVX_OK)
		return rc;
	if ((np = kvx__malloc_array((size_t)g->L, sizeof(int))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	if ((rc = gpu__kvzip_load(g, src, ss, n, np)) == KVX_OK) {
		if (n > 1)
			rc = kvzip_compress(g, s, src->pids[ss], n, np);
		for (l = 0; n <= 1 && rc == KVX_OK && l < g->L; l++) {
			gpu__kvzip_src(g, l, n, np[l], &zs);
			rc = prefill_select(g, s, l, n, &zs);
		}
	}
	free(np);
	return rc;
}

/*
 * KVX_ERR_UNSUPPORTED unless sequence ss of src kept what g's plan
 * scores n tokens with: SnapKV's window queries, Expected Attention's
 * last queries, or, when its statistics span the prompt, the moments of
 * all of them (or all of them, when the window holds the prompt).
 */
static kvx_status
window_check(const gpu_ctx *g, const gpu_ctx *src, int ss, int n)
{
	const kvx_plan *P = g->plan;
	int w = src->wq != NULL ? src->wq_n[ss] : 0, need;

	if (P == NULL || n <= 1)
		return KVX_OK;
	if (P->scorer == PLAN_SCORER_EA && P->ea_queries == PLAN_EA_ALL) {
		if (n <= w || src->qst[ss] != NULL)
			return KVX_OK;
		return kvx__fail(KVX_ERR_UNSUPPORTED, "kvx_compress_from: the "
		    "plan's Expected Attention statistics span the whole "
		    "prompt (queries: all), which the source context did not "
		    "keep (kvx_ctx_params.query_stats)");
	}
	need = P->scorer == PLAN_SCORER_EA ? sel_ea_nq(P, n) :
	    P->window < n ? P->window : n;
	if (need > w)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "kvx_compress_from: the "
		    "plan scores with the last %d queries, the source kept %d",
		    need, w);
	return KVX_OK;
}

/*
 * gpu_compress_from by a SnapKV or Expected Attention plan, or none,
 * without the bookkeeping on failure: each layer's rows of src go to
 * g's K/V scratch, laid out as g's prefill leaves them there, and are
 * selected by prefill_select with the queries (and moments) src kept,
 * so that the same kernels see the same inputs as in a prefill by g.
 */
static kvx_status
window_from(gpu_ctx *g, int s, const gpu_ctx *src, int ss, int n)
{
	const kvx_plan *P = g->plan;
	size_t rb = (size_t)g->D * 2, row = rb * g->Hkv;
	int all = P != NULL && P->scorer == PLAN_SCORER_EA &&
	    P->ea_queries == PLAN_EA_ALL && n > src->wq_n[ss];
	gpu_src in = { NULL, NULL, 0, NULL, 0, NULL, n - src->wq_n[ss], NULL };
	kvx_status rc;
	int l, h, np;

	/* the scratch may move here: its address is taken after */
	if ((rc = gpu__ensure_prefill(g, n)) != KVX_OK)
		return rc;
	in.k = (const char *)g->kt;
	in.v = (const char *)g->vt;
	CK(cudaStreamSynchronize(src->stream));
	for (l = 0; l < g->L; l++) {
		np = sel_window_rows(g->m->L[l].window, n);
		for (h = 0; h < g->Hkv; h++) {
			const gseg *sg = seg_at(src, ss, l, h);

			if (sg->len != np)
				return kvx__fail(KVX_ERR_ARG, "kvx_compress_"
				    "from: source sequence %d holds no "
				    "uncompressed prefill", ss);
			CK(cudaMemcpy2DAsync((char *)g->kt + h * rb, row,
			    src->kbase + sg->off * 2, rb, rb, np,
			    cudaMemcpyDeviceToDevice, g->stream));
			CK(cudaMemcpy2DAsync((char *)g->vt + h * rb, row,
			    src->vbase + sg->off * 2, rb, rb, np,
			    cudaMemcpyDeviceToDevice, g->stream));
		}
		in.row0 = n - np;
		in.q = src->wq[ss] + (size_t)l * wq_layer(src);
		in.mom = all ? src->qst[ss] + (size_t)l * qst_layer(src) : NULL;
		if ((rc = prefill_select(g, s, l, n, &in)) != KVX_OK)
			return rc;
	}
	return KVX_OK;
}

/*
 * A full-cache destination keeps what its source kept of the prefill,
 * so that it serves kvx_compress_from in turn: the ids, the window
 * queries, the moments where both keep them.
 */
static kvx_status
keep_copy(gpu_ctx *g, int s, const gpu_ctx *src, int ss, int n)
{
	kvx_status rc;

	if ((rc = gpu__kvzip_keep_ids(g, s, src->pids[ss], n)) != KVX_OK ||
	    (rc = keep_alloc(g, s)) != KVX_OK)
		return rc;
	CK(cudaMemcpyAsync(g->wq[s], src->wq[ss], (size_t)g->L * wq_layer(g) *
	    sizeof(float), cudaMemcpyDeviceToDevice, g->stream));
	if (g->qst[s] != NULL && src->qst[ss] != NULL)
		CK(cudaMemcpyAsync(g->qst[s], src->qst[ss], (size_t)g->L *
		    qst_layer(g) * sizeof(double), cudaMemcpyDeviceToDevice,
		    g->stream));
	else if (g->qst[s] != NULL) {
		/* the moments are void: a plan that needs them is refused */
		cudaFree(g->qst[s]);
		g->qst[s] = NULL;
	}
	g->wq_n[s] = src->wq_n[ss];
	return KVX_OK;
}

/* The compression of gpu_compress_from, without the bookkeeping on
 * failure. */
static kvx_status
compress_run(gpu_ctx *g, int s, const gpu_ctx *src, int ss, int n)
{
	const kvx_plan *P = g->plan;
	kvx_status rc;

	if (P != NULL && P->scorer == PLAN_SCORER_KVZIP)
		rc = kvzip_from(g, s, src, ss, n);
	else if ((rc = window_check(g, src, ss, n)) == KVX_OK)
		rc = window_from(g, s, src, ss, n);
	if (rc != KVX_OK)
		return rc;
	CK(cudaStreamSynchronize(g->stream));
	if ((rc = hybrid_finish(g, s, n)) != KVX_OK ||
	    (rc = win_record(g, s, n)) != KVX_OK)
		return rc;
	if (P == NULL && (rc = keep_copy(g, s, src, ss, n)) != KVX_OK)
		return rc;
	CK(cudaStreamSynchronize(g->stream));
	return KVX_OK;
}

/*
 * Sequence ss of src, a full cache's prefill (neither extended nor
 * decoded since), compressed into the empty sequence s of g by g's plan,
 * as a prefill by g would compress it.  A kvzip plan copies the prompt's
 * K/V into g's pass buffers and runs the repeat pass there; SnapKV and
 * Expected Attention score src's K/V with the window queries src kept
 * (and, for statistics of the whole prompt, the moments src kept with
 * query_stats); without a plan the rows are copied.  On failure sequence
 * s is left empty.
 */
kvx_status
gpu_compress_from(gpu_ctx *g, int s, const gpu_ctx *src, int ss)
{
	int n = src->npos[ss];
	kvx_status rc;

	if (src->plan != NULL || n < 1 || src->pids == NULL ||
	    src->pids_n[ss] != n || src->wq == NULL || src->wq_n[ss] < 1)
		return kvx__fail(KVX_ERR_ARG, "kvx_compress_from: source "
		    "sequence %d holds no uncompressed prefill", ss);
	if (g->npos[s] != 0)
		return kvx__fail(KVX_ERR_ARG, "kvx_compress_from: sequence %d "
		    "is not empty", s);
	if (n > g->p.n_ctx)
		return kvx__fail(KVX_ERR_CAPACITY, "source holds %d tokens, "
		    "beyond the context size %d", n, g->p.n_ctx);
	if ((rc = compress_run(g, s, src, ss, n)) != KVX_OK) {
		gpu_seq_clear(g, s);
		return rc;
	}
	g->npos[s] = n;
	return KVX_OK;
}
