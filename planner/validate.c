/*
 * validate.c - a solved plan checked against uniform budgets on retrieval
 * probes run through the runtime (validate.h says why).
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * One full-cache context prefills each probe's context; every blend's
 * context compresses it (kvx_compress_from, so the blends share the
 * prefill and, under KVzip, score it the same way), then extends it by
 * the rest of the probe, the answer teacher-forced, and the answer's
 * tokens are read off the logits.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "probe.h"
#include "profile.h"
#include "util.h"
#include "validate.h"

void
val_blend(const kvx_plan *plan, const kvx_plan *base, double a,
    kvx_plan *out)
{
	int i, n = plan_n_budgets(plan);

	for (i = 0; i < n; i++)
		out->budgets[i] = base->budgets[i] + a *
		    (plan->budgets[i] - base->budgets[i]);
}

/* log softmax(row)[tok], and whether tok is row's largest (the first of
 * equals, as greedy decoding takes it). */
static double
token_logp(const float *row, int V, int32_t tok, int *top)
{
	float mx = row[0];
	double z = 0;
	int i, best = 0;

	for (i = 1; i < V; i++)
		if (row[i] > mx) {
			mx = row[i];
			best = i;
		}
	for (i = 0; i < V; i++)
		z += exp((double)row[i] - mx);
	*top = best == tok;
	return (double)row[tok] - mx - log(z);
}

/* What the probe pr scores under context ctx, whose sequence 0 holds the
 * compressed context (the first nc tokens): the rest extended, the
 * answer's log-probability and whether each of its tokens came first.
 * first: the logits that predict the answer's first token when the whole
 * prompt was the context (question inside), else NULL. */
static kvx_status
score_probe(kvx_ctx *ctx, const probe *pr, int nc, const float *first,
    int V, float *logits, double *lp, int *found)
{
	int n = pr->n_ids - 1 - nc, j, top, all = 1;
	kvx_status rc;

	*lp = 0;
	if (n > 0 && (rc = kvx_extend(ctx, 0, pr->ids + nc, n, logits)) !=
	    KVX_OK)
		return rc;
	for (j = 0; j < pr->n_answer; j++) {
		/* answer token j sits at n_prompt + j; the row before it
		 * predicts it */
		int at = pr->n_prompt + j - 1 - nc;
		const float *row = at < 0 ? first : logits + (size_t)at * V;

		*lp += token_logp(row, V, pr->ids[pr->n_prompt + j], &top);
		all &= top;
	}
	*found = all;
	return kvx_seq_clear(ctx, 0);
}

kvx_status
val_run(kvx_model *m, const int32_t *hay, int64_t n_hay,
    const kvx_plan *plan, const kvx_plan *base, const val_opts *o,
    val_report *rep)
{
	const kvx_model_info *mi = kvx_model_get_info(m);
	kvx_ctx *src = NULL, *ctx[VAL_LEVELS] = { NULL };
	kvx_plan *blend = NULL;
	kvx_ctx_params cp;
	float *logits = NULL, *first = NULL;
	uint64_t s = o->seed ^ 0x76616c6964617465ULL, ps;
	double t0 = kvx__now(), lp;
	kvx_status rc;
	probe pr;
	int i, k, nc, found, V = mi->n_vocab;

	memset(rep, 0, sizeof *rep);
	memset(&pr, 0, sizeof pr);
	if (o->probes < 1 || o->tokens < 2)
		return kvx__fail(KVX_ERR_ARG, "%d probes of %d tokens: nothing "
		    "to run", o->probes, o->tokens);
	if (n_hay < o->tokens)
		return kvx__fail(KVX_ERR_ARG, "the calibration text holds %lld "
		    "tokens, fewer than a probe's %d", (long long)n_hay,
		    o->tokens);
	rep->probes = o->probes;
	for (k = 0; k < VAL_LEVELS; k++)
		rep->alpha[k] = 1.0 - (double)k / (VAL_LEVELS - 1);
	kvx_ctx_params_init(&cp);
	cp.n_ctx = o->tokens;
	cp.device = o->device;
	if ((rc = kvx_ctx_new(m, NULL, &cp, &src)) != KVX_OK ||
	    (rc = plan_copy(plan, &blend)) != KVX_OK)
		goto done;
	for (k = 0; k < VAL_LEVELS; k++) {
		val_blend(plan, base, rep->alpha[k], blend);
		if ((rc = kvx_ctx_new(m, blend, &cp, &ctx[k])) != KVX_OK) {
			rc = kvx__fail(rc, "blend %.2f: %s", rep->alpha[k],
			    kvx_errmsg());
			goto done;
		}
	}
	logits = kvx__malloc_array((size_t)o->tokens * V, sizeof(float));
	first = kvx__malloc_array((size_t)V, sizeof(float));
	if (logits == NULL || first == NULL) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory for the logits");
		goto done;
	}
	ps = s ^ 0x70726f6265ULL;
	for (i = 0; i < o->probes; i++) {
		int rep_span = o->hay == PROF_HAY_REPEAT ||
		    (o->hay == PROF_HAY_MIXED && i % 2 == 1) ?
		    PROBE_REPEAT_SPAN : 0;
		int64_t off = (int64_t)(kvx__splitmix64(&s) %
		    (uint64_t)(n_hay - o->tokens + 1));

		if (o->progress)
			fprintf(stderr, "\rkvx-plan: validating, probe %d/%d "
			    "(%.0f s)", i + 1, o->probes, kvx__now() - t0);
		probe_free(&pr);
		if ((rc = probe_make(m, hay + off, o->tokens, o->tokens,
		    o->statements, rep_span, &ps, &pr)) != KVX_OK)
			goto done;
		nc = o->after ? pr.n_prompt - pr.n_question : pr.n_prompt;
		if ((rc = kvx_prefill(src, 0, pr.ids, nc, first)) != KVX_OK)
			goto done;
		for (k = 0; k < VAL_LEVELS; k++) {
			if ((rc = kvx_compress_from(ctx[k], 0, src, 0)) !=
			    KVX_OK || (rc = score_probe(ctx[k], &pr, nc,
			    first, V, logits, &lp, &found)) != KVX_OK)
				goto done;
			rep->logp[k] += lp / o->probes;
			rep->found[k] += found;
		}
		if ((rc = kvx_seq_clear(src, 0)) != KVX_OK)
			goto done;
	}
	if (o->progress)
		fprintf(stderr, "\rkvx-plan: validated on %d probes in %.1f s"
		    "\n", o->probes, kvx__now() - t0);
	for (k = 0; k < VAL_LEVELS - 1; k++)
		if (rep->logp[k] >= rep->logp[VAL_LEVELS - 1] &&
		    rep->found[k] >= rep->found[VAL_LEVELS - 1])
			break;
	rep->chosen = k;
	rep->seconds = kvx__now() - t0;
done:
	if (rc != KVX_OK && o->progress)
		fputc('\n', stderr);
	probe_free(&pr);
	free(logits);
	free(first);
	for (k = 0; k < VAL_LEVELS; k++)
		kvx_ctx_free(&ctx[k]);
	kvx_ctx_free(&src);
	kvx_plan_free(&blend);
	return rc;
}
