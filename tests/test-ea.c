/*
 * test-ea.c - contexts under expected-attention and kvzip plans on the
 * real model (CPU): each segment keeps its planned count, in order, with
 * the sinks and the window; a hybrid layer keeps its planned total; the
 * tokens kept are not those SnapKV keeps; kvx_compress_from, which scores
 * from what a full prefill saved (its window queries, its queries'
 * statistics for a span of the whole prompt, or its prompt for kvzip's
 * repeat pass), equals a compressed prefill.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "kvcache.h"
#include "kvx.h"
#include "plan.h"
#include "select.h"
#include "tap.h"

#define NTOK	400
#define NSTEP	6

static kvx_model *M;
static const kvx_model_info *INFO;

/* NSTEP greedy steps from logits lg; the tokens go to tok. */
static int
decode_greedy(kvx_ctx *c, float *lg, int32_t *tok)
{
	int s, z = 0;

	for (s = 0; s < NSTEP; s++) {
		tok[s] = tap_argmax(lg, INFO->n_vocab);
		if (kvx_decode(c, 1, &z, &tok[s], lg) != KVX_OK)
			return 0;
	}
	return 1;
}

/*
 * The rows a compressed prefill of n tokens kept: static, each head its
 * plan_tokens; hybrid, each layer its heads' sum; every head its sinks
 * and window, positions increasing.
 */
static int
counts_hold(const kvx_ctx *c, const kvx_plan *p, int n)
{
	const kv_cache *kv = ctx_kv(c);
	int l, h, i, sum, w = p->window, okay = 1;

	for (l = 0; l < INFO->n_layer; l++) {
		sum = 0;
		for (h = 0; h < INFO->n_head_kv; h++) {
			const kv_seg *sg = kv_seg_cget(kv, 0, l, h);

			sum += sg->len;
			if (p->mode != KVX_PLAN_HYBRID &&
			    sg->len != plan_tokens(p, l, h, n))
				okay = 0;
			for (i = 0; i < p->sinks; i++)
				okay &= sg->pos[i] == i;
			for (i = 0; i < w; i++)
				okay &= sg->pos[sg->len - w + i] == n - w + i;
			for (i = 1; i < sg->len; i++)
				okay &= sg->pos[i] > sg->pos[i - 1];
		}
		if (p->mode == KVX_PLAN_HYBRID &&
		    sum != plan_tokens(p, l, -1, n) * INFO->n_head_kv)
			okay = 0;
	}
	return okay;
}

/* Segments whose kept positions differ between two contexts. */
static int
segments_differ(const kvx_ctx *a, const kvx_ctx *b)
{
	const kv_cache *ka = ctx_kv(a), *kb = ctx_kv(b);
	int l, h, d = 0;

	for (l = 0; l < INFO->n_layer; l++)
		for (h = 0; h < INFO->n_head_kv; h++) {
			const kv_seg *x = kv_seg_cget(ka, 0, l, h);
			const kv_seg *y = kv_seg_cget(kb, 0, l, h);

			d += x->len != y->len || memcmp(x->pos, y->pos,
			    sizeof *x->pos * (size_t)x->len) != 0;
		}
	return d;
}

/* One plan: compressed prefill, its counts, compress_from, decode. */
static void
run_plan(const char *what, const kvx_plan *p, const kvx_plan *snap,
    const int32_t *ids, int n)
{
	kvx_ctx_params prm, pf;
	kvx_ctx *cp = NULL, *cf = NULL, *cc = NULL, *cs = NULL;
	float *lp, *lf, *ls;
	int32_t ta[NSTEP], tb[NSTEP];
	int nd;

	lp = malloc(sizeof(float) * INFO->n_vocab);
	lf = malloc(sizeof(float) * INFO->n_vocab);
	ls = malloc(sizeof(float) * INFO->n_vocab);
	kvx_ctx_params_init(&prm);
	prm.n_ctx = n + NSTEP + 8;
	prm.device = KVX_DEVICE_CPU;
	prm.decode_headroom = NSTEP + 8;
	/* the full prefill keeps what a span of the whole prompt needs */
	pf = prm;
	pf.query_stats = 1;
	if (!ok(kvx_ctx_new(M, p, &prm, &cp) == KVX_OK &&
	    kvx_ctx_new(M, NULL, &pf, &cf) == KVX_OK &&
	    kvx_ctx_new(M, p, &prm, &cc) == KVX_OK &&
	    kvx_ctx_new(M, snap, &prm, &cs) == KVX_OK, "%s: contexts: %s",
	    what, kvx_errmsg()))
		goto out;
	ok(kvx_prefill(cp, 0, ids, n, lp) == KVX_OK &&
	    kvx_prefill(cs, 0, ids, n, ls) == KVX_OK, "%s: prefill: %s", what,
	    kvx_errmsg());
	ok(counts_hold(cp, p, n), "%s: planned counts, sinks, window, order",
	    what);
	nd = segments_differ(cp, cs);
	ok(nd > INFO->n_layer, "%s: %d of %d segments keep other tokens than "
	    "SnapKV's", what, nd, INFO->n_layer * INFO->n_head_kv);
	ok(kvx_prefill(cf, 0, ids, n, lf) == KVX_OK &&
	    kvx_compress_from(cc, 0, cf, 0) == KVX_OK,
	    "%s: compress_from a full prefill: %s", what, kvx_errmsg());
	ok(segments_differ(cp, cc) == 0, "%s: compress_from keeps the tokens "
	    "a compressed prefill keeps", what);
	ok(decode_greedy(cp, lp, ta) && decode_greedy(cc, lf, tb),
	    "%s: decode", what);
	ok(memcmp(ta, tb, sizeof ta) == 0 && tap_rel_diff(lf, lp,
	    INFO->n_vocab) < 1e-5, "%s: the same tokens and logits after %d "
	    "steps (rel %.2g)", what, NSTEP,
	    tap_rel_diff(lf, lp, INFO->n_vocab));
out:
	kvx_ctx_free(&cp);
	kvx_ctx_free(&cf);
	kvx_ctx_free(&cc);
	kvx_ctx_free(&cs);
	free(lp);
	free(lf);
	free(ls);
}

/*
 * A span of the whole prompt: the statistics of all n queries keep other
 * tokens than those of the last 128 (window), and a full context that did
 * not keep them (query_stats 0) cannot be compressed from.
 */
static void
run_span(kvx_plan *p, const kvx_plan *window, const int32_t *ids, int n)
{
	kvx_ctx_params prm;
	kvx_ctx *ca = NULL, *cw = NULL, *cf = NULL, *cc = NULL;
	int nd;

	kvx_ctx_params_init(&prm);
	prm.n_ctx = n + 8;
	prm.device = KVX_DEVICE_CPU;
	if (!ok(kvx_ctx_new(M, p, &prm, &ca) == KVX_OK &&
	    kvx_ctx_new(M, window, &prm, &cw) == KVX_OK &&
	    kvx_ctx_new(M, NULL, &prm, &cf) == KVX_OK &&
	    kvx_ctx_new(M, p, &prm, &cc) == KVX_OK, "span: contexts: %s",
	    kvx_errmsg()))
		goto out;
	ok(kvx_prefill(ca, 0, ids, n, NULL) == KVX_OK &&
	    kvx_prefill(cw, 0, ids, n, NULL) == KVX_OK &&
	    kvx_prefill(cf, 0, ids, n, NULL) == KVX_OK, "span: prefills: %s",
	    kvx_errmsg());
	nd = segments_differ(ca, cw);
	ok(nd > INFO->n_layer, "span: %d of %d segments keep other tokens "
	    "with the statistics of all %d queries than with the last %d",
	    nd, INFO->n_layer * INFO->n_head_kv, n, window->ea_queries);
	ok(kvx_compress_from(cc, 0, cf, 0) == KVX_ERR_UNSUPPORTED &&
	    strstr(kvx_errmsg(), "query_stats") != NULL &&
	    kvx_seq_len(cc, 0) == 0, "span: compress_from a context that did "
	    "not keep the statistics is refused: %s", kvx_errmsg());
out:
	kvx_ctx_free(&ca);
	kvx_ctx_free(&cw);
	kvx_ctx_free(&cf);
	kvx_ctx_free(&cc);
}

int
main(void)
{
	const char *path = tap_model_path();
	static int32_t ids[NTOK];
	kvx_plan *ps = NULL, *ph = NULL, *ss = NULL, *sh = NULL, *pw = NULL;
	int n;

	if (path == NULL)
		tap_skip_all("no model (set KVX_MODEL)");
	if (kvx_model_open(path, NULL, &M) != KVX_OK)
		tap_skip_all("model does not open");
	INFO = kvx_model_get_info(M);
	n = tap_load_tokens(M, "/usr/share/common-licenses/GPL-3", ids, NTOK);
	if (n < NTOK) {
		kvx_model_close(&M);
		tap_skip_all("/usr/share/common-licenses/GPL-3 missing");
	}
	if (plan_new(INFO, KVX_PLAN_STATIC, 0.25, &ss) != KVX_OK ||
	    plan_new(INFO, KVX_PLAN_HYBRID, 0.25, &sh) != KVX_OK ||
	    plan_copy(ss, &ps) != KVX_OK || plan_copy(sh, &ph) != KVX_OK)
		return ok(0, "plans: %s", kvx_errmsg()), tap_done();
	plan_set_scorer(ps, PLAN_SCORER_EA);
	plan_set_scorer(ph, PLAN_SCORER_EA);
	run_plan("static", ps, ss, ids, n);
	run_plan("hybrid", ph, sh, ids, n);
	ps->ea_cov = PLAN_COV_DIAG;
	ps->gqa = ss->gqa = PLAN_GQA_MAX;
	run_plan("static, diagonal, max", ps, ss, ids, n);
	ph->ea_cov = PLAN_COV_NONE;
	ph->ea_vnorm = 0;
	ph->ea_queries = 2;
	run_plan("hybrid, mean only, 2 queries", ph, sh, ids, n);
	ph->ea_queries = PLAN_EA_ALL;
	run_plan("hybrid, mean only, the whole prompt", ph, sh, ids, n);
	ps->ea_cov = PLAN_COV_FULL;
	ps->gqa = ss->gqa = PLAN_GQA_MEAN;
	if (plan_copy(ps, &pw) != KVX_OK)
		return ok(0, "plans: %s", kvx_errmsg()), tap_done();
	ps->ea_queries = PLAN_EA_ALL;
	run_plan("static, the whole prompt", ps, ss, ids, n);
	ps->ea_cov = PLAN_COV_DIAG;
	run_plan("static, diagonal, the whole prompt", ps, ss, ids, n);
	ps->ea_cov = PLAN_COV_FULL;
	run_span(ps, pw, ids, n);

	plan_set_scorer(ps, PLAN_SCORER_KVZIP);
	plan_set_scorer(ph, PLAN_SCORER_KVZIP);
	run_plan("kvzip static", ps, ss, ids, n);
	run_plan("kvzip hybrid", ph, sh, ids, n);
	ps->kz_chunk = 50;
	ps->kz_prompt = PLAN_KVZIP_PLAIN;
	run_plan("kvzip static, plain, chunks of 50", ps, ss, ids, n);

	kvx_plan_free(&ps);
	kvx_plan_free(&ph);
	kvx_plan_free(&ss);
	kvx_plan_free(&sh);
	kvx_plan_free(&pw);
	kvx_model_close(&M);
	return tap_done();
}
