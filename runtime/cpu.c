/*
 * cpu.c - the CPU back end of contexts: the f32 KV cache in ragged
 * per-(sequence, layer, KV head) segments, prefill with per-layer
 * compression to the plan, extend, batched decode, compression from
 * another context's prefill, memory accounting.
 * SPDX-License-Identifier: MIT
 *
 * Compression happens inside the prefill, one layer at a time, right after
 * that layer's attention has seen the whole prompt (as SnapKV does): the
 * full cache of the prompt exists for one layer at a time only, so the peak
 * memory is the compressed cache plus one layer.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "backend.h"
#include "kvcache.h"
#include "kvzip.h"
#include "model.h"
#include "plan.h"
#include "select.h"
#include "util.h"

/* Window queries kept per sequence so that another context can compress
 * from this one's prefill (kvx_compress_from): as many as any plan uses. */
#define WIN_SAVE KVX_WINDOW_MAX

typedef struct cpu_ctx {
	kvx_model	*m;
	const kvx_plan	*plan;		/* NULL: full cache; the context's */
	kvx_ctx_params	 p;
	kv_cache	*kv;
	fw_scratch	*s;
	kvx_pool	*pool;		/* workers; made with the scratch */
	int		 s_tokens;	/* scratch capacity in tokens */
	float		*winq;		/* [seq][layer][head][WIN_SAVE][D] */
	int		*winq_n;	/* per seq: saved window length */
	/* query_stats: every prompt query's pre-RoPE mean and covariance,
	   [seq][layer] of H x D means then H x D x D covariances, for a
	   plan whose Expected Attention statistics span the prompt */
	double		*qst;
	int		*qst_n;		/* per seq: their prompt's length, 0
					   none */
	double		*qtmp;		/* such a plan's own: one layer's */
	int32_t		*qpos;		/* 0 .. n_ctx - 1 */
	int		 pre_n;		/* the prefill's prompt length */
	int32_t		*ids;		/* [seq][n_ctx]: the prompt, which a
					   kvzip plan repeats, here or in a
					   context compressing from this one */
	/* selection scratch */
	float		*score, *pooled, *wtmp;
	float		*ea;		/* expected-attention: a group's means
					   and covariances, then n_ctx + 1
					   logits */
	const float	*kz;		/* kvzip: the repeat pass's scores,
					   [layer][head][n], while selecting */
	/* kvzip scores of one of this context's uncompressed prefills, for
	   the next context that compresses from it by a plan with the same
	   chunk and prompt: the repeat pass depends on nothing else */
	float		*kzc;		/* [layer][head][n_ctx] */
	int		 kzc_seq;	/* -1: none held */
	int		 kzc_n, kzc_chunk, kzc_prompt;
	int		*idx;
	double		 select_s;	/* scoring and selection, prefills */
} cpu_ctx;

/* Frees the state and clears the caller's pointer. */
static void
cpu_destroy(void **pc)
{
	cpu_ctx *c = *pc;

	if (c == NULL)
		return;
	kv_free(&c->kv);
	fw_scratch_free(&c->s);
	pool_free(&c->pool);
	free(c->winq);
	free(c->winq_n);
	free(c->qst);
	free(c->qst_n);
	free(c->qtmp);
	free(c->qpos);
	free(c->ids);
	free(c->score);
	free(c->pooled);
	free(c->wtmp);
	free(c->ea);
	free(c->kzc);
	free(c->idx);
	free(c);
	*pc = NULL;
}

/* The CPU is always there. */
static int
cpu_available(void)
{
	return 1;
}

/* The CPU forward runs every model that opens. */
static int
cpu_runs(const kvx_model *m)
{
	return 1;
}

/* Doubles of one layer's query statistics: H means and H covariances. */
static size_t
qstats_layer(const kvx_model_info *mi)
{
	return (size_t)mi->n_head * mi->head_dim * (1 + (size_t)mi->head_dim);
}

/* The query statistics' buffers, where the context needs them: a full
 * cache that keeps them (query_stats), a plan whose Expected Attention
 * statistics span the prompt. */
static kvx_status
qstats_new(cpu_ctx *c)
{
	const kvx_model_info *mi = &c->m->info;
	const kvx_plan *P = c->plan;
	int own = P != NULL && P->scorer == PLAN_SCORER_EA &&
	    P->ea_queries == PLAN_EA_ALL, i;

	if (P == NULL && c->p.query_stats) {
		c->qst = kvx__malloc_array((size_t)c->p.n_seq * mi->n_layer *
		    qstats_layer(mi), sizeof(double));
		c->qst_n = kvx__calloc((size_t)c->p.n_seq, sizeof(int));
		if (c->qst == NULL || c->qst_n == NULL)
			return KVX_ERR_NOMEM;
	}
	if (own && (c->qtmp = kvx__malloc_array(qstats_layer(mi),
	    sizeof(double))) == NULL)
		return KVX_ERR_NOMEM;
	if (c->qst != NULL || own) {
		if ((c->qpos = kvx__malloc_array((size_t)c->p.n_ctx,
		    sizeof(int32_t))) == NULL)
			return KVX_ERR_NOMEM;
		for (i = 0; i < c->p.n_ctx; i++)
			c->qpos[i] = i;
	}
	return KVX_OK;
}

/* A CPU context: the cache and the selection scratch; the forward scratch
 * and the workers come with the first batch. */
static kvx_status
cpu_create(kvx_model *m, const kvx_plan *plan, const kvx_ctx_params *p,
    void **out)
{
	const kvx_model_info *mi = &m->info;
	cpu_ctx *c;
	kvx_status rc;
	size_t nw, nctx;

	*out = NULL;
	/* the weights' placement is paid here, not in the first prefill */
	model_weights_cpu(m);
	if ((c = calloc(1, sizeof *c)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	c->m = m;
	c->plan = plan;
	c->p = *p;
	c->kzc_seq = -1;
	if ((rc = kv_new(c->p.n_seq, mi->n_layer, mi->n_head_kv, mi->head_dim,
	    c->p.n_ctx, &c->kv)) != KVX_OK) {
		cpu_destroy((void **)&c);
		return rc;
	}
	nw = (size_t)mi->n_layer * mi->n_head * WIN_SAVE * mi->head_dim;
	nctx = (size_t)c->p.n_ctx + 1;
	c->winq = kvx__malloc_array((size_t)c->p.n_seq * nw, sizeof(float));
	c->winq_n = kvx__calloc((size_t)c->p.n_seq, sizeof(int));
	c->ids = kvx__malloc_array((size_t)c->p.n_seq * c->p.n_ctx,
	    sizeof(int32_t));
	c->score = kvx__malloc_array(nctx, sizeof(float));
	c->pooled = kvx__malloc_array(nctx * mi->n_head_kv, sizeof(float));
	c->wtmp = kvx__malloc_array((size_t)mi->n_head * WIN_SAVE *
	    mi->head_dim, sizeof(float));
	c->idx = kvx__malloc_array(nctx, sizeof(int));
	if (plan != NULL && plan->scorer == PLAN_SCORER_EA)
		c->ea = kvx__malloc_array((size_t)(mi->n_head / mi->n_head_kv) *
		    mi->head_dim * (mi->head_dim + 1) + nctx, sizeof(float));
	if (!c->winq || !c->winq_n || !c->ids || !c->score || !c->pooled ||
	    !c->wtmp || !c->idx || (plan != NULL && plan->scorer == PLAN_SCORER_EA &&
	    c->ea == NULL) || qstats_new(c) != KVX_OK) {
		cpu_destroy((void **)&c);
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	}
	*out = c;
	return KVX_OK;
}

/* Make sure the forward scratch holds n tokens. */
static kvx_status
ensure_scratch(cpu_ctx *c, int n)
{
	kvx_status rc;
	int want;

	if (c->s != NULL && c->s_tokens >= n)
		return KVX_OK;
	want = n < 64 ? 64 : n;
	if (c->pool == NULL && (c->pool = pool_new(c->p.n_threads > 0 ?
	    c->p.n_threads : c->m->n_threads)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "cannot start the context's "
		    "threads");
	fw_scratch_free(&c->s);
	c->s_tokens = 0;
	if ((rc = fw_scratch_new(c->m, c->pool, want, c->p.n_ctx, &c->s)) !=
	    KVX_OK)
		return rc;
	c->s_tokens = want;
	return KVX_OK;
}

/*
 * Undo a batch that failed part of the way through the layers: drop the
 * rows at or past each of its sequences' next position, which only the
 * batch can have appended, so the context is as it was before the call.
 */
static void
rollback(cpu_ctx *c, int n, const int *seqs)
{
	kv_cache *kv = c->kv;
	int i, l, h;

	for (i = 0; i < n; i++)
		for (l = 0; l < kv->n_layer; l++)
			for (h = 0; h < kv->n_head_kv; h++) {
				kv_seg *sg = kv_seg_at(kv, seqs[i], l, h);

				while (sg->len > 0 && sg->pos[sg->len - 1] >=
				    kv->n_pos[seqs[i]])
					sg->len--;
			}
}

// --- selection -----------------------------------------------------------------

/* Expected Attention's settings of plan P on layer l. */
static void
ea_settings(const kvx_model *m, const kvx_plan *P, int l, sel_ea *e)
{
	e->future = P != NULL ? P->ea_future : 1;
	e->cov = P != NULL ? P->ea_cov : PLAN_COV_FULL;
	e->vnorm = P != NULL ? P->ea_vnorm : 0;
	e->theta = m->L[l].theta;
	e->halves = m->desc->rope == ROPE_HALVES;
}

/*
 * Expected Attention scores of layer l's KV head h's candidates (the pw
 * window tokens excluded) into dst->score: statistics of the last of the
 * w window queries, which sit at the rows n - w .. n - 1 of the prompt,
 * or, when the plan's span is the whole prompt, the layer's moments of
 * every query (mom: H x D means, then H x D x D covariances), with the
 * layer's RoPE base.  Only the last nv rows are scored and the softmax
 * is normalised over them: a sliding-window layer's later queries see no
 * others.
 */
static void
ea_head(cpu_ctx *dst, const kv_seg *ss, int n, int nv, int l, int h,
    const float *wq, int w, const double *mom, int pw, int sinks)
{
	const kvx_model_info *mi = &dst->m->info;
	const kvx_plan *P = dst->plan;
	int D = mi->head_dim, H = mi->n_head, g = H / mi->n_head_kv, q;
	int nq = P->ea_queries < w ? P->ea_queries : w;
	size_t cs = P->ea_cov == PLAN_COV_DIAG ? (size_t)D : (size_t)D * D;
	float *mu = dst->ea, *cov = mu + (size_t)g * D;
	sel_ea e;

	ea_settings(dst->m, P, l, &e);
	for (q = 0; q < g; q++)
		if (P->ea_queries == PLAN_EA_ALL)
			sel_ea_carry(mom + (size_t)(h * g + q) * D, mom +
			    (size_t)H * D + (size_t)(h * g + q) * D * D, D,
			    n, &e, mu + (size_t)q * D, cov + q * cs);
		else
			sel_ea_stats(wq + ((size_t)(h * g + q) * w +
			    (w - nq)) * D, ss->pos + n - nq, nq, D, n, &e,
			    mu + (size_t)q * D, cov + q * cs);
	sel_ea_score(mu, cov, ss->k + (size_t)(n - nv) * D,
	    ss->v + (size_t)(n - nv) * D, nv, nv - pw, sinks, g, D, &e,
	    P->gqa, cov + g * cs, dst->score);
}

/*
 * Compress layer l of sequence sseq in src, which holds all n prompt
 * tokens, into sequence dseq of dst (the two may be the same), by dst's
 * plan, given that layer's window queries wq[H][w][D] and the moments of
 * all its prompt queries (mom, as ea_head takes them; NULL where none
 * are kept).  Without a plan the rows are copied whole.  A sliding-window layer's source may hold
 * the whole prompt or, from a full-cache prefill, its last
 * sel_window_rows only; either way only those rows are scored and kept.
 */
static kvx_status
select_layer(cpu_ctx *dst, int dseq, const kv_cache *src, int sseq, int n,
    int l, const float *wq, int w, const double *mom)
{
	const kvx_model_info *mi = &dst->m->info;
	const kvx_plan *P = dst->plan;
	int Hkv = mi->n_head_kv, D = mi->head_dim, g = mi->n_head / Hkv;
	int nv = sel_window_rows(dst->m->L[l].window, n);
	int h, i, cnt, pw, off;
	int counts[SEL_MAX_KV_HEADS];
	const float *pp[SEL_MAX_KV_HEADS];
	sel_counts sc;
	kvx_status rc;

	if (Hkv > SEL_MAX_KV_HEADS)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "more than %d KV heads",
		    SEL_MAX_KV_HEADS);
	for (h = 0; h < Hkv; h++) {
		int len = kv_seg_cget(src, sseq, l, h)->len;

		if (len != n && len != nv)
			return kvx__fail(KVX_ERR_ARG, "sequence %d was already "
			    "compressed", sseq);
	}
	if (P == NULL || n <= 1) {
		for (h = 0; h < Hkv; h++) {
			const kv_seg *ss = kv_seg_cget(src, sseq, l, h);

			/* a full cache, too, keeps a layer's window only */
			for (i = 0; i < nv; i++)
				dst->idx[i] = ss->len - nv + i;
			if ((rc = kv_compact(dst->kv, kv_seg_at(dst->kv, dseq,
			    l, h), ss, dst->idx, nv,
			    dst->p.decode_headroom)) != KVX_OK)
				return rc;
		}
		return KVX_OK;
	}

	if (P->scorer == PLAN_SCORER_EA && P->ea_queries == PLAN_EA_ALL &&
	    mom == NULL)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "kvx_compress_from: the "
		    "plan's Expected Attention statistics span the whole "
		    "prompt (queries: all), which the source context did not "
		    "keep (kvx_ctx_params.query_stats)");
	sel_rule(P, l, n, w, Hkv, &sc);
	pw = sc.pw;
	for (h = 0; h < Hkv; h++) {
		const kv_seg *ss = kv_seg_cget(src, sseq, l, h);
		float *pooled = dst->pooled + (size_t)h * (n + 1);
		int j, q;

		off = ss->len - nv;
		if (P->scorer == PLAN_SCORER_EA) {
			ea_head(dst, ss, ss->len, nv, l, h, wq, w, mom, pw,
			    sc.sinks);
			sel_pool(dst->score, nv - pw, P->pool_kernel,
			    sel_pool_kind(P->scorer, P->pool), pooled);
			continue;
		}
		if (P->scorer == PLAN_SCORER_KVZIP) {
			/* the sinks are kept whatever their score: 0 keeps
			 * their large attention from spreading through the
			 * pooling */
			memcpy(dst->score, dst->kz + ((size_t)l * Hkv + h) * n +
			    off, (size_t)(nv - pw) * sizeof(float));
			for (j = 0; j < sc.sinks; j++)
				dst->score[j] = 0.0f;
			sel_pool(dst->score, nv - pw, P->pool_kernel, P->pool,
			    pooled);
			continue;
		}
		for (q = 0; q < g; q++)
			for (j = 0; j < pw; j++)
				memcpy(dst->wtmp + ((size_t)q * pw + j) * D,
				    wq + (((size_t)(h * g + q)) * w + (w - pw +
				    j)) * D, (size_t)D * sizeof(float));
		/* the window queries' softmax over the keys the layer's later
		 * queries can see */
		sel_score(dst->wtmp, ss->k + (size_t)off * D, nv, pw, g, D,
		    1.0f / sqrtf((float)D), P->gqa, dst->score);
		sel_pool(dst->score, nv - pw, P->pool_kernel, P->pool, pooled);
	}

	if (sc.hybrid) {
		for (h = 0; h < Hkv; h++)
			pp[h] = dst->pooled + (size_t)h * (n + 1) + sc.sinks;
		if (sc.ncand > 0)
			sel_hybrid_split(pp, Hkv, sc.ncand, sc.total, sc.floor,
			    counts);
		else
			for (h = 0; h < Hkv; h++)
				counts[h] = 0;
		for (h = 0; h < Hkv; h++)
			sc.keep[h] = sel_keep(&sc, counts[h]);
	}

	for (h = 0; h < Hkv; h++) {
		const kv_seg *ss = kv_seg_cget(src, sseq, l, h);

		cnt = sel_select(dst->pooled + (size_t)h * (n + 1), nv, pw,
		    sc.sinks, sc.keep[h], dst->idx);
		for (off = ss->len - nv, i = 0; i < cnt; i++)
			dst->idx[i] += off;
		if ((rc = kv_compact(dst->kv, kv_seg_at(dst->kv, dseq, l, h),
		    ss, dst->idx, cnt, dst->p.decode_headroom)) != KVX_OK)
			return rc;
	}
	return KVX_OK;
}

/* The moments of layer l's queries of the whole prompt (c->pre_n tokens,
 * in the forward's scratch) into out, with covariances unless cov is
 * PLAN_COV_NONE. */
static kvx_status
qstats_layer_run(cpu_ctx *c, int l, int cov, double *out)
{
	const kvx_model_info *mi = &c->m->info;
	size_t H = (size_t)mi->n_head, D = (size_t)mi->head_dim;
	sel_ea e;

	ea_settings(c->m, NULL, l, &e);
	return sel_ea_moments(fw_scratch_queries(c->s), H * D, (int)H,
	    c->qpos, c->pre_n, (int)D, &e, cov, out, out + H * D);
}

/* Forward hook: save the window queries, then compress the layer. */
static kvx_status
prefill_hook(void *arg, int seq, int l, const float *wq, int w,
    const float *xw)
{
	cpu_ctx *c = arg;
	const kvx_model_info *mi = &c->m->info;
	size_t per = (size_t)mi->n_head * WIN_SAVE * mi->head_dim;
	float *dst = c->winq + ((size_t)seq * mi->n_layer + l) * per;
	const double *mom = NULL;
	kvx_status st;
	double t0;

	memcpy(dst, wq, (size_t)mi->n_head * w * mi->head_dim * sizeof(float));
	c->winq_n[seq] = w;
	/* a full cache's statistics, for plans that compress from it */
	if (c->qst != NULL) {
		if ((st = qstats_layer_run(c, l, PLAN_COV_FULL, c->qst +
		    ((size_t)seq * mi->n_layer + l) * qstats_layer(mi))) !=
		    KVX_OK)
			return st;
		c->qst_n[seq] = c->pre_n;
	}
	/* kvzip scores once every layer holds the prompt */
	if (c->plan != NULL && c->plan->scorer == PLAN_SCORER_KVZIP)
		return KVX_OK;
	if (c->plan == NULL && c->m->L[l].window == 0) {
		int h;
		kvx_status rc;

		/* the full cache, too, keeps the prompt plus the headroom */
		for (h = 0; h < mi->n_head_kv; h++) {
			kv_seg *sg = kv_seg_at(c->kv, seq, l, h);

			if ((rc = kv_fit(c->kv, sg, sg->len +
			    c->p.decode_headroom)) != KVX_OK)
				return rc;
		}
		return KVX_OK;
	}
	/* the forward has appended the whole prompt to this layer */
	t0 = kvx__now();
	st = KVX_OK;
	if (c->qtmp != NULL && (st = qstats_layer_run(c, l, c->plan->ea_cov,
	    c->qtmp)) == KVX_OK)
		mom = c->qtmp;
	if (st == KVX_OK)
		st = select_layer(c, seq, c->kv, seq, kv_seg_cget(c->kv, seq,
		    l, 0)->len, l, wq, w, mom);
	c->select_s += kvx__now() - t0;
	return st;
}

/*
 * The kvzip scores of sequence seq of c, which holds its n > 1 prompt
 * tokens ids uncompressed in every layer, into out (n_layer x n_head_kv x
 * n floats): the repeat pass by c's plan.
 */
static kvx_status
kvzip_run(cpu_ctx *c, int seq, const int32_t *ids, int n, float *out)
{
	kvx_status rc;

	if ((rc = ensure_scratch(c, 1)) != KVX_OK)
		return rc;
	return kvzip_pass(c->m, c->kv, c->pool, c->plan, seq, ids, n, out);
}

/*
 * Compress every layer of sequence sseq of src (n prompt tokens) into
 * sequence dseq of c (the two may be the same) by c's kvzip plan, given
 * the scores sc (NULL when n <= 1) and the window queries winq (w per
 * head).
 */
static kvx_status
kvzip_select(cpu_ctx *c, int dseq, const kv_cache *src, int sseq, int n,
    const float *sc, const float *winq, int w)
{
	const kvx_model_info *mi = &c->m->info;
	size_t per = (size_t)mi->n_head * WIN_SAVE * mi->head_dim;
	kvx_status rc = KVX_OK;
	int l;

	c->kz = sc;
	for (l = 0; rc == KVX_OK && l < mi->n_layer; l++)
		rc = select_layer(c, dseq, src, sseq, n, l,
		    winq + (size_t)l * per, w, NULL);
	c->kz = NULL;
	return rc;
}

/* A kvzip plan's compression of sequence seq after its prefill of ids:
 * the repeat pass scores it, then each layer is compressed in place. */
static kvx_status
kvzip_compress(cpu_ctx *c, int seq, const int32_t *ids, int n)
{
	const kvx_model_info *mi = &c->m->info;
	size_t per = (size_t)mi->n_head * WIN_SAVE * mi->head_dim;
	double t0 = kvx__now();
	float *sc = NULL;
	kvx_status rc = KVX_OK;

	if (n > 1) {
		if ((sc = kvx__malloc_array((size_t)mi->n_layer *
		    mi->n_head_kv * n, sizeof(float))) == NULL)
			return kvx__fail(KVX_ERR_NOMEM, "out of memory");
		rc = kvzip_run(c, seq, ids, n, sc);
	}
	if (rc == KVX_OK)
		rc = kvzip_select(c, seq, c->kv, seq, n, sc, c->winq +
		    (size_t)seq * mi->n_layer * per, c->winq_n[seq]);
	free(sc);
	c->select_s += kvx__now() - t0;
	return rc;
}

// --- inference -----------------------------------------------------------------

/*
 * Before n tokens of sequence seq are appended from position p0: a
 * sliding-window layer's segment that lacks room for them first drops the
 * rows no query from p0 on sees, so that it holds at most its window plus
 * the tokens being decoded instead of growing with the sequence.  Those
 * rows are lost for good, which a failed batch's rollback does not mind:
 * no later query could see them either.
 */
static void
slide_windows(cpu_ctx *c, int seq, int p0, int n)
{
	const kvx_model_info *mi = &c->m->info;
	int l, h, W;

	for (l = 0; l < mi->n_layer; l++) {
		if ((W = c->m->L[l].window) == 0)
			continue;
		for (h = 0; h < mi->n_head_kv; h++) {
			kv_seg *sg = kv_seg_at(c->kv, seq, l, h);

			if (sg->len + n > sg->cap)
				kv_seg_drop_before(c->kv, sg, p0 - W + 1);
		}
	}
}

/*
 * Run n tokens of one sequence from position p0 through the CPU forward:
 * a prefill (hook set: save window queries, compress each layer) or an
 * extend.  logits: 1 the last token's, 2 every token's, into out if set.
 */
static kvx_status
run_seq(cpu_ctx *c, int seq, const int32_t *ids, int n, int p0,
    int logits, float *out, fw_layer_hook hook)
{
	int *sq, *pos, i;
	kvx_status rc;
	fw_batch b;

	if ((rc = ensure_scratch(c, n)) != KVX_OK)
		return rc;
	sq = kvx__malloc_array((size_t)n, sizeof(int));
	pos = kvx__malloc_array((size_t)n, sizeof(int));
	if (sq == NULL || pos == NULL) {
		free(sq);
		free(pos);
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < n; i++) {
		sq[i] = seq;
		pos[i] = p0 + i;
	}
	if (hook == NULL)
		slide_windows(c, seq, p0, n);
	memset(&b, 0, sizeof b);
	b.n = n;
	b.ids = ids;
	b.seq = sq;
	b.pos = pos;
	b.logits = out != NULL ? logits : 0;
	b.out = out;
	if (hook != NULL) {
		b.window = WIN_SAVE;
		b.hook = hook;
		b.hook_arg = c;
	}
	rc = model_forward(c->m, c->kv, c->s, &b);
	free(sq);
	free(pos);
	return rc;
}

/* Prefill: full attention over the prompt, each layer compressed as soon
 * as it has seen it.  On failure the sequence is empty again. */
static kvx_status
cpu_prefill(void *be, int seq, const int32_t *ids, int n, float *logits)
{
	cpu_ctx *c = be;
	kvx_status rc;

	if (c->kzc_seq == seq)
		c->kzc_seq = -1;
	memcpy(c->ids + (size_t)seq * c->p.n_ctx, ids,
	    (size_t)n * sizeof(int32_t));
	c->pre_n = n;
	if (c->qst_n != NULL)
		c->qst_n[seq] = 0;
	rc = run_seq(c, seq, ids, n, 0, 1, logits, prefill_hook);
	if (rc == KVX_OK && c->plan != NULL &&
	    c->plan->scorer == PLAN_SCORER_KVZIP)
		rc = kvzip_compress(c, seq, ids, n);
	if (rc != KVX_OK) {
		kv_seq_clear(c->kv, seq);
		c->winq_n[seq] = 0;
		if (c->qst_n != NULL)
			c->qst_n[seq] = 0;
		return rc;
	}
	c->kv->n_pos[seq] = n;
	c->kv->compressed[seq] = c->plan != NULL;
	return KVX_OK;
}

/* Tokens appended without compression; on failure the sequence is as it
 * was. */
static kvx_status
cpu_extend(void *be, int seq, const int32_t *ids, int n, float *logits)
{
	cpu_ctx *c = be;
	int p0 = c->kv->n_pos[seq];
	kvx_status rc;

	if (c->kzc_seq == seq)
		c->kzc_seq = -1;
	memcpy(c->ids + (size_t)seq * c->p.n_ctx + p0, ids,
	    (size_t)n * sizeof(int32_t));
	if ((rc = run_seq(c, seq, ids, n, p0, 2, logits, NULL)) != KVX_OK) {
		rollback(c, 1, &seq);
		return rc;
	}
	c->kv->n_pos[seq] = p0 + n;
	return KVX_OK;
}

/* One token for each of n sequences; on failure every sequence is as it
 * was. */
static kvx_status
cpu_decode(void *be, int n, const int *seqs, const int32_t *ids,
    float *logits)
{
	cpu_ctx *c = be;
	int *pos, i;
	kvx_status rc;
	fw_batch b;

	if ((rc = ensure_scratch(c, n)) != KVX_OK)
		return rc;
	if ((pos = kvx__malloc_array((size_t)n, sizeof(int))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	for (i = 0; i < n; i++) {
		pos[i] = c->kv->n_pos[seqs[i]];
		slide_windows(c, seqs[i], pos[i], 1);
	}
	memset(&b, 0, sizeof b);
	b.n = n;
	b.ids = ids;
	b.seq = seqs;
	b.pos = pos;
	b.logits = logits != NULL ? 2 : 0;
	b.out = logits;
	rc = model_forward(c->m, c->kv, c->s, &b);
	if (rc == KVX_OK)
		for (i = 0; i < n; i++) {
			c->ids[(size_t)seqs[i] * c->p.n_ctx + pos[i]] = ids[i];
			if (c->kzc_seq == seqs[i])
				c->kzc_seq = -1;
			c->kv->n_pos[seqs[i]]++;
		}
	else
		rollback(c, n, seqs);
	free(pos);
	return rc;
}

/* Copy every row of sequence sseq of src into the empty sequence dseq of
 * dst, layer by layer and head by head. */
static kvx_status
copy_seq(cpu_ctx *dst, int dseq, const kv_cache *src, int sseq)
{
	kvx_status rc;
	int l, h, i;

	for (l = 0; l < src->n_layer; l++)
		for (h = 0; h < src->n_head_kv; h++) {
			const kv_seg *ss = kv_seg_cget(src, sseq, l, h);

			for (i = 0; i < ss->len; i++)
				dst->idx[i] = i;
			if ((rc = kv_compact(dst->kv, kv_seg_at(dst->kv, dseq,
			    l, h), ss, dst->idx, ss->len, 0)) != KVX_OK)
				return rc;
		}
	return KVX_OK;
}

/*
 * kvx_compress_from under a kvzip plan: sequence sseq of src, an
 * uncompressed prefill of n tokens, into the empty sequence dseq of dst.
 * The repeat pass appends to the cache it reads, so it runs on a whole
 * copy in dst; its scores stay with src, whose next compression by a
 * plan of the same chunk and prompt takes them instead of repeating the
 * pass (the cache is src's only state this writes: src is in use by the
 * caller's thread, as every context is).
 */
static kvx_status
kvzip_from(cpu_ctx *dst, int dseq, const void *sbe, int sseq, int n)
{
	cpu_ctx *src = (cpu_ctx *)sbe;
	const kvx_model_info *mi = &dst->m->info;
	const kvx_plan *P = dst->plan;
	size_t per = (size_t)mi->n_head * WIN_SAVE * mi->head_dim;
	double t0 = kvx__now();
	kvx_status rc = KVX_OK;

	if (n > 1 && !(src->kzc_seq == sseq && src->kzc_n == n &&
	    src->kzc_chunk == P->kz_chunk && src->kzc_prompt == P->kz_prompt)) {
		src->kzc_seq = -1;
		if (src->kzc == NULL && (src->kzc = kvx__malloc_array(
		    (size_t)mi->n_layer * mi->n_head_kv * src->p.n_ctx,
		    sizeof(float))) == NULL)
			return kvx__fail(KVX_ERR_NOMEM, "out of memory");
		if ((rc = copy_seq(dst, dseq, src->kv, sseq)) == KVX_OK)
			rc = kvzip_run(dst, dseq, src->ids + (size_t)sseq *
			    src->p.n_ctx, n, src->kzc);
		if (rc == KVX_OK) {
			src->kzc_seq = sseq;
			src->kzc_n = n;
			src->kzc_chunk = P->kz_chunk;
			src->kzc_prompt = P->kz_prompt;
		}
	}
	if (rc == KVX_OK)
		rc = kvzip_select(dst, dseq, src->kv, sseq, n, n > 1 ?
		    src->kzc : NULL, src->winq + (size_t)sseq * mi->n_layer *
		    per, src->winq_n[sseq]);
	dst->select_s += kvx__now() - t0;
	return rc;
}

/* Compress sequence sseq of src, an uncompressed prefill, into the empty
 * sequence dseq of dst, by dst's plan. */
static kvx_status
cpu_compress_from(void *dbe, int dseq, const void *sbe, int sseq)
{
	cpu_ctx *dst = dbe;
	const cpu_ctx *src = sbe;
	const kvx_model_info *mi = &dst->m->info;
	size_t per;
	kvx_status rc;
	double t0;
	int l, n;

	if (src->kv->compressed[sseq] || src->winq_n[sseq] == 0)
		return kvx__fail(KVX_ERR_ARG, "kvx_compress_from: source "
		    "sequence %d holds no uncompressed prefill", sseq);
	if (dst->kv->n_pos[dseq] != 0)
		return kvx__fail(KVX_ERR_ARG, "kvx_compress_from: sequence %d "
		    "is not empty", dseq);
	if (src->kv->n_pos[sseq] > dst->p.n_ctx)
		return kvx__fail(KVX_ERR_CAPACITY, "source holds %d tokens, "
		    "beyond the context size %d", src->kv->n_pos[sseq],
		    dst->p.n_ctx);
	per = (size_t)mi->n_head * WIN_SAVE * mi->head_dim;
	n = src->kv->n_pos[sseq];
	memcpy(dst->ids + (size_t)dseq * dst->p.n_ctx, src->ids +
	    (size_t)sseq * src->p.n_ctx, (size_t)n * sizeof(int32_t));
	if (dst->plan != NULL && dst->plan->scorer == PLAN_SCORER_KVZIP)
		rc = kvzip_from(dst, dseq, sbe, sseq, n);
	else {
		t0 = kvx__now();
		for (rc = KVX_OK, l = 0; rc == KVX_OK && l < mi->n_layer; l++)
			rc = select_layer(dst, dseq, src->kv, sseq, n, l,
			    src->winq + ((size_t)sseq * mi->n_layer + l) * per,
			    src->winq_n[sseq], src->qst != NULL &&
			    src->qst_n[sseq] == n ? src->qst + ((size_t)sseq *
			    mi->n_layer + l) * qstats_layer(mi) : NULL);
		dst->select_s += kvx__now() - t0;
	}
	if (rc != KVX_OK) {
		kv_seq_clear(dst->kv, dseq);
		return rc;
	}
	memcpy(dst->winq + (size_t)dseq * mi->n_layer * per,
	    src->winq + (size_t)sseq * mi->n_layer * per,
	    mi->n_layer * per * sizeof(float));
	dst->winq_n[dseq] = src->winq_n[sseq];
	dst->kv->n_pos[dseq] = src->kv->n_pos[sseq];
	dst->kv->compressed[dseq] = dst->plan != NULL;
	return KVX_OK;
}

/* Forget a sequence's tokens and its saved window. */
static kvx_status
cpu_seq_clear(void *be, int seq)
{
	cpu_ctx *c = be;

	kv_seq_clear(c->kv, seq);
	c->winq_n[seq] = 0;
	if (c->qst_n != NULL)
		c->qst_n[seq] = 0;
	if (c->kzc_seq == seq)
		c->kzc_seq = -1;
	return KVX_OK;
}

/* Tokens the sequence has seen. */
static int
cpu_seq_len(const void *be, int seq)
{
	const cpu_ctx *c = be;

	return c->kv->n_pos[seq];
}

/*
 * Bytes allocated and held, against a full cache of the same tokens.  A
 * sliding-window layer's full cache is its window (sel_window_rows), and
 * its rows kept are those the next query sees at most: rows past it wait
 * in the segment only until slide_windows needs their room.
 */
static kvx_status
cpu_memory(const void *be, kvx_memory *mem)
{
	const cpu_ctx *c = be;
	const kv_cache *kv = c->kv;
	size_t row = kv_row_bytes(kv);
	int64_t full = 0;
	int s, l, h, cap, len;

	memset(mem, 0, sizeof *mem);
	mem->kv_bytes = kv->bytes;
	for (s = 0; s < kv->n_seq; s++) {
		mem->n_tokens += kv->n_pos[s];
		for (l = 0; l < kv->n_layer; l++) {
			cap = sel_window_rows(c->m->L[l].window, kv->n_pos[s]);
			full += (int64_t)cap * kv->n_head_kv;
			for (h = 0; h < kv->n_head_kv; h++) {
				len = kv_seg_cget(kv, s, l, h)->len;
				mem->n_kept += len < cap ? len : cap;
			}
		}
	}
	mem->kv_bytes_used = (uint64_t)mem->n_kept * row;
	mem->kv_bytes_full = (uint64_t)full * row;
	return KVX_OK;
}

/* Seconds the prefills spent scoring and selecting. */
static double
cpu_select_seconds(const void *be)
{
	const cpu_ctx *c = be;

	return c->select_s;
}

const kv_cache *
cpu_kv(const void *be)
{
	const cpu_ctx *c = be;

	return c->kv;
}

const ctx_ops cpu_ops = {
	.name = "cpu",
	.available = cpu_available,
	.runs = cpu_runs,
	.create = cpu_create,
	.destroy = cpu_destroy,
	.prefill = cpu_prefill,
	.extend = cpu_extend,
	.decode = cpu_decode,
	.compress_from = cpu_compress_from,
	.seq_clear = cpu_seq_clear,
	.seq_len = cpu_seq_len,
	.memory = cpu_memory,
	.select_seconds = cpu_select_seconds,
};
