/*
 * test-gpu.c - whole-model logits of GPU contexts against CPU contexts of
 * the same model: full cache and a 25% plan (static and hybrid, scored by
 * SnapKV, also with the largest window and sinks, by Expected Attention,
 * or by KVzip, whose kept rows are compared too), after the prefill and
 * after greedy decode steps, batched
 * decode of several sequences, extend, the calls
 * the GPU path refuses, and decode steps replayed from the captured graph
 * against direct launches.  kvx_compress_from between GPU contexts, under
 * SnapKV, Expected Attention (its statistics from the last queries or
 * the whole prompt) and KVzip plans, is checked against a GPU context
 * that prefills the same tokens itself and against the CPU's
 * kvx_compress_from (compare_from_gpu, compare_from).  Contexts reused as
 * kvx-eval reuses them, without decode headroom, filled again with longer
 * prompts and decoded past the sliding windows, are checked against the
 * CPU too (compare_reuse).  A TAP line shows an error only where the call
 * it reports failed.
 * SPDX-License-Identifier: MIT
 *
 * Models: the default one (llama) when present, and the random-weight
 * files of tests/data for the other architectures, which always run:
 * tiny-qwen2.gguf (Q/K/V biases, rotate-half RoPE, a separate output
 * matrix) and tiny-gemma3.gguf (head size 256, per-head Q/K norms,
 * post-norms, the GELU gate, scaled embeddings, five 24-token
 * sliding-window layers with their own RoPE base to a global one).  Their
 * prompts (the long text is about 1000 tokens in their byte-level
 * vocabularies) run far past the window, and their decode steps with
 * them, after a full and a compressed prefill; an auto context takes the
 * GPU for them.  The tolerances below hold for the default model and the
 * gemma3 file as they are; the qwen2 file's decode steps get three times
 * theirs.  Its random Q and K biases (0.5 a dimension) make its attention
 * logits large, so fp16 keys move them more: rounding only K and V to
 * fp16 in the CPU path moves its decode logits by up to 8.6e-3 (the
 * gemma3 file's by 8e-4), and the GPU's fp16 weights and GEMM inputs come
 * on top (2.2e-2 seen on an H200, full cache, long prompt).
 *
 * Tolerances.  The GPU keeps weights, K/V and GEMM inputs in fp16 (fp32
 * accumulation and activations elsewhere), the CPU computes in f32: the
 * logits' relative error ||gpu - cpu|| / ||cpu|| must stay under 1e-2
 * and the top-1 token must agree.  Decode steps feed both sides the CPU's
 * greedy token, so that errors do not compound through different texts.
 * Under a plan the kept counts follow from the plan alone and must match
 * exactly; which tokens are kept may differ where fp16 scores tie, so
 * steps after a compressed prefill get 2e-2, and 3e-2 under a hybrid
 * plan, whose split of a layer's budget over its heads compares scores
 * across heads and so moves more tokens on such ties (2.1e-2 was seen on
 * an H100).
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "gpu.h"
#include "kvcache.h"
#include "kvx.h"
#include "plan.h"
#include "tap.h"

#define NSTEP 8
#define MAXTOK 2048
#define NREUSE 48	/* decode steps a round of compare_reuse */

static kvx_model *M;
static int NV;
static double DEC_SCALE = 1.0;	/* the model's factor on decode tolerances */
static int DEC_CHECK = 1;	/* 0: decode steps run, their errors are
				   reported but not checked */
static double KEPT_NEED = 0.0;	/* > 0: the share of the GPU's kept rows
				   that the CPU must keep too */
static int HEADROOM = 4;	/* new contexts' decode_headroom */

static const char *LONG_TEXT =
    "The history of the city begins with a small settlement on the river, "
    "where fishermen and traders met to exchange salt, grain and cloth. "
    "Over the centuries the settlement grew into a market town, then into "
    "a walled city with a cathedral, a university and a harbour that "
    "welcomed ships from every coast of the sea. Its scholars wrote about "
    "astronomy, medicine and law; its merchants kept careful books of "
    "every sale, and its painters filled the churches with bright scenes "
    "of saints and kings. In the nineteenth century railways reached the "
    "city, factories rose along the canals, and the population tripled "
    "within fifty years. Today visitors walk through the old streets, "
    "climb the bell tower for a view over the red roofs, and taste the "
    "famous almond cakes sold at the market square every Saturday "
    "morning. The museum holds maps drawn by the first harbour masters, "
    "letters from the university's founders, and a collection of clocks "
    "that still strike the hour together. Question: what did the "
    "fishermen and traders exchange? Answer:";

/* The start of LONG_TEXT. */
static const char *MID_TEXT =
    "The history of the city begins with a small settlement on the river, "
    "where fishermen and traders met to exchange salt, grain and cloth. "
    "Over the centuries the settlement grew into a market town.";

/* ||a - b|| / ||b||; infinite when a holds a NaN. */
static double
relerr(const float *a, const float *b, int n)
{
	double num = 0.0, den = 0.0;
	int i;

	for (i = 0; i < n; i++) {
		if (a[i] != a[i])
			return INFINITY;
		num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		den += (double)b[i] * b[i];
	}
	return sqrt(num / (den > 0.0 ? den : 1.0));
}

/*
 * 1 when the GPU's greedy token is the CPU's, or the CPU's logits of the
 * two differ by at most tol times their root mean square: within the
 * logits' stated error either token is a correct greedy choice.
 */
static int
same_top(const float *lc, const float *lg, double tol)
{
	int tc = tap_argmax(lc, NV), tg = tap_argmax(lg, NV), i;
	double ms = 0.0;

	if (tc == tg)
		return 1;
	for (i = 0; i < NV; i++)
		ms += (double)lc[i] * lc[i];
	return lc[tc] - lc[tg] <= tol * sqrt(ms / NV);
}

/* A context of plan p; query_stats as kvx_ctx_params has it. */
static kvx_ctx *
new_ctx_qs(const kvx_plan *p, int device, int n_seq, int query_stats)
{
	kvx_ctx_params cp;
	kvx_ctx *c = NULL;
	kvx_status rc;

	kvx_ctx_params_init(&cp);
	cp.n_seq = n_seq;
	cp.query_stats = query_stats;
	cp.n_ctx = MAXTOK;
	cp.decode_headroom = HEADROOM;	/* decode outgrows it: segments
					   move */
	cp.device = device;
	if ((rc = kvx_ctx_new(M, p, &cp, &c)) != KVX_OK) {
		ok(0, "kvx_ctx_new(device %d): %s", device, kvx_errmsg());
		return NULL;
	}
	return c;
}

static kvx_ctx *
new_ctx(const kvx_plan *p, int device, int n_seq)
{
	return new_ctx_qs(p, device, n_seq, 0);
}

/*
 * ": " and the text of the last error when failed is set, else "": a
 * TAP line shows an error only where the call it reports failed, never
 * the stale message of an earlier one.
 */
static const char *
why(int failed)
{
	static char buf[512];

	if (!failed)
		return "";
	snprintf(buf, sizeof buf, ": %s", kvx_errmsg());
	return buf;
}

static int
tokenize(const char *text, int32_t *ids)
{
	int n = 0;

	if (kvx_tokenize(M, text, strlen(text), 0, ids, MAXTOK, &n) != KVX_OK)
		return 0;
	return n;
}

/*
 * The share of the rows that GPU context gc keeps of sequence 0 that CPU
 * context cc keeps too, over every layer and KV head: a GPU row (fp16
 * key) is the CPU's kept row whose key is nearest to it, and counts when
 * that key is within 5% of its norm (one position's key differs from
 * another's by the order of its norm; fp16 and the GPU's fp16 weights
 * move it by about 1e-3).
 */
static double
kept_share(kvx_ctx *cc, kvx_ctx *gc, int *moved)
{
#ifdef HAVE_CUDA
	const kvx_model_info *mi = kvx_model_get_info(M);
	const kv_cache *kv = ctx_kv(cc);
	struct gpu_ctx *g = ctx_gpu(gc);
	int D = mi->head_dim, l, h, i, j, e, len;
	long same = 0, all = 0;
	double best, dist, nrm, x;
	float *gk;

	*moved = 0;
	if (kv == NULL || g == NULL ||
	    (gk = malloc(sizeof(float) * MAXTOK * D)) == NULL)
		return -1.0;
	for (l = 0; l < mi->n_layer; l++)
		for (h = 0; h < mi->n_head_kv; h++) {
			const kv_seg *ss = kv_seg_cget(kv, 0, l, h);

			if (gpu_seg_keys(g, 0, l, h, gk, MAXTOK, &len) !=
			    KVX_OK) {
				free(gk);
				return -1.0;
			}
			if (len != ss->len)
				(*moved)++;
			for (i = 0; i < len && i < MAXTOK; i++, all++) {
				const float *a = gk + (size_t)i * D;

				for (nrm = 0.0, e = 0; e < D; e++)
					nrm += (double)a[e] * a[e];
				for (best = INFINITY, j = 0; j < ss->len; j++) {
					const float *b = ss->k + (size_t)j * D;

					for (dist = 0.0, e = 0; e < D; e++) {
						x = (double)a[e] - b[e];
						dist += x * x;
					}
					if (dist < best)
						best = dist;
				}
				if (best <= 0.05 * 0.05 * nrm)
					same++;
			}
		}
	free(gk);
	return all > 0 ? (double)same / all : 1.0;
#else
	(void)cc;
	(void)gc;
	*moved = 0;
	return -1.0;
#endif
}

/*
 * The share of the rows that sequence sa of GPU context ga keeps that
 * sequence sb of GPU context gb keeps too, over every layer and KV head:
 * a row of gb whose key is within 1% of the norm of ga's (two GPU
 * contexts that run the same prompt hold the same fp16 keys, and rows
 * of different positions differ by the order of their norm).  *moved
 * counts the heads whose kept counts differ, *bits the rows whose key
 * is the same to the bit.  -1 when the keys cannot be read.
 */
static double
gpu_same_rows(kvx_ctx *ga, int sa, kvx_ctx *gb, int sb, int *moved,
    long *bits)
{
#ifdef HAVE_CUDA
	const kvx_model_info *mi = kvx_model_get_info(M);
	struct gpu_ctx *a = ctx_gpu(ga), *b = ctx_gpu(gb);
	int D = mi->head_dim, l, h, i, j, e, la, lb;
	long same = 0, all = 0;
	double nrm, dist, x;
	float *ka, *kb;

	*moved = 0;
	*bits = 0;
	ka = malloc(sizeof(float) * MAXTOK * D);
	kb = malloc(sizeof(float) * MAXTOK * D);
	if (a == NULL || b == NULL || ka == NULL || kb == NULL) {
		free(ka);
		free(kb);
		return -1.0;
	}
	for (l = 0; l < mi->n_layer; l++)
		for (h = 0; h < mi->n_head_kv; h++) {
			if (gpu_seg_keys(a, sa, l, h, ka, MAXTOK, &la) !=
			    KVX_OK || gpu_seg_keys(b, sb, l, h, kb, MAXTOK,
			    &lb) != KVX_OK) {
				free(ka);
				free(kb);
				return -1.0;
			}
			if (la != lb)
				(*moved)++;
			for (i = 0; i < la && i < MAXTOK; i++, all++) {
				const float *r = ka + (size_t)i * D;

				for (nrm = 0.0, e = 0; e < D; e++)
					nrm += (double)r[e] * r[e];
				for (j = 0; j < lb && j < MAXTOK; j++) {
					const float *t = kb + (size_t)j * D;

					for (dist = 0.0, e = 0; e < D; e++) {
						x = (double)r[e] - t[e];
						dist += x * x;
					}
					if (dist <= 1e-4 * nrm) {
						same++;
						*bits += dist == 0.0;
						break;
					}
				}
			}
		}
	free(ka);
	free(kb);
	return all > 0 ? (double)same / all : 1.0;
#else
	(void)ga;
	(void)sa;
	(void)gb;
	(void)sb;
	*moved = 0;
	*bits = 0;
	return -1.0;
#endif
}

/*
 * Prefill then NSTEP greedy steps on a CPU and a GPU context with the
 * same plan; tol_dec applies to the steps.  With KEPT_NEED set, the rows
 * kept after the prefill are compared too (kept_share).
 */
/*
 * NSTEP greedy decode steps of sequence 0 in the CPU context cc and the
 * GPU context gc from token tok, both fed the CPU's choice; *worst gets
 * the largest relative error of the GPU's logits, *same is cleared where
 * the top tokens differ by more than tol.  -1 (a failed check) when a
 * step fails.
 */
static int
decode_both(const char *what, kvx_ctx *cc, kvx_ctx *gc, int32_t tok,
    float *lc, float *lg, double tol, double *worst, int *same)
{
	double e;
	int s, z = 0;

	for (s = 0; s < NSTEP; s++) {
		if (kvx_decode(cc, 1, &z, &tok, lc) != KVX_OK ||
		    kvx_decode(gc, 1, &z, &tok, lg) != KVX_OK) {
			ok(0, "%s: decode step %d: %s", what, s, kvx_errmsg());
			return -1;
		}
		e = relerr(lg, lc, NV);
		if (e > *worst)
			*worst = e;
		if (e > tol / 4)	/* where an error builds up */
			printf("# %s: decode step %d (token %d): relative "
			    "error %.2e\n", what, s, (int)tok, e);
		if (!same_top(lc, lg, tol))
			*same = 0;
		tok = tap_argmax(lc, NV);
	}
	return 0;
}

static void
compare_run(const char *what, const kvx_plan *p, const char *text,
    double tol_dec)
{
	static int32_t ids[MAXTOK];
	float *lc, *lg;
	kvx_ctx *cc, *gc;
	kvx_memory mc, mg;
	double e, worst = 0.0;
	int n, s, same = 1, tc, tg, good;

	n = tokenize(text, ids);
	if (!ok(n > 0, "%s: tokenized %d tokens", what, n))
		return;
	cc = new_ctx(p, KVX_DEVICE_CPU, 1);
	gc = new_ctx(p, KVX_DEVICE_GPU, 1);
	lc = malloc((size_t)NV * sizeof(float));
	lg = malloc((size_t)NV * sizeof(float));
	if (cc == NULL || gc == NULL || lc == NULL || lg == NULL)
		goto out;
	for (s = 0; s < NV; s++)
		lg[s] = NAN;
	good = kvx_prefill(cc, 0, ids, n, lc) == KVX_OK;
	if (!ok(good, "%s: CPU prefill%s", what, why(!good)))
		goto out;
	good = kvx_prefill(gc, 0, ids, n, lg) == KVX_OK;
	if (!ok(good, "%s: GPU prefill%s", what, why(!good)))
		goto out;
	e = relerr(lg, lc, NV);
	ok(e < 1e-2, "%s: prefill logits, relative error %.2e < 1e-2", what, e);
	tc = tap_argmax(lc, NV);
	tg = tap_argmax(lg, NV);
	ok(tc == tg, "%s: prefill top-1 %d (GPU %d)", what, tc, tg);
	kvx_ctx_memory(cc, &mc);
	kvx_ctx_memory(gc, &mg);
	ok(mc.n_kept == mg.n_kept && mc.n_tokens == mg.n_tokens,
	    "%s: %lld token slots kept for %lld tokens (GPU %lld for %lld)",
	    what,
	    (long long)mc.n_kept, (long long)mc.n_tokens,
	    (long long)mg.n_kept, (long long)mg.n_tokens);
	ok(kvx_seq_len(gc, 0) == n, "%s: GPU sequence length %d", what,
	    kvx_seq_len(gc, 0));
	if (KEPT_NEED > 0.0) {
		int moved;

		e = kept_share(cc, gc, &moved);
		ok(e >= KEPT_NEED, "%s: %.4f of the GPU's kept rows are the "
		    "CPU's (at least %.2f); %d heads keep another count",
		    what, e, KEPT_NEED, moved);
	}
	if (p != NULL && p->scorer == PLAN_SCORER_KVZIP) {
		kvx_ctx_stats st;
		kvx_status rs = kvx_ctx_get_stats(gc, &st);

		ok(rs == KVX_OK && st.select_s > 0 &&
		    st.select_s < st.prefill_s, "%s: the GPU's repeat pass and "
		    "selection take %.4f of %.4f s of prefill", what,
		    st.select_s, st.prefill_s);
	}
	if (decode_both(what, cc, gc, tc, lc, lg, tol_dec * DEC_SCALE, &worst,
	    &same) != 0)
		goto out;
	tol_dec *= DEC_SCALE;
	if (!DEC_CHECK)
		printf("# %s: %d decode steps, worst relative error %.2e, same "
		    "greedy tokens %d (not checked)\n", what, NSTEP, worst,
		    same);
	else {
		ok(worst < tol_dec, "%s: %d decode steps, worst relative "
		    "error %.2e < %.0e", what, NSTEP, worst, tol_dec);
		ok(same, "%s: same greedy tokens for %d steps (or within the "
		    "tolerance of each other)", what, NSTEP);
	}
	kvx_ctx_memory(cc, &mc);
	kvx_ctx_memory(gc, &mg);
	ok(mg.n_tokens == n + NSTEP && kvx_seq_len(gc, 0) == n + NSTEP,
	    "%s: GPU holds %lld tokens after the steps", what,
	    (long long)mg.n_tokens);
	/* the CPU stores K and V as f32, the GPU as fp16 */
	ok(mc.n_kept == mg.n_kept && mc.kv_bytes_full * sizeof(uint16_t) ==
	    mg.kv_bytes_full * sizeof(float), "%s: %lld token slots kept "
	    "after the steps (GPU %lld), a full cache of %llu bytes (GPU %llu "
	    "in fp16)", what, (long long)mc.n_kept, (long long)mg.n_kept,
	    (unsigned long long)mc.kv_bytes_full,
	    (unsigned long long)mg.kv_bytes_full);
out:
	free(lc);
	free(lg);
	kvx_ctx_free(&cc);
	kvx_ctx_free(&gc);
}

/*
 * kvx_compress_from on the GPU under the kvzip plan p: a full-cache GPU
 * context's prefill of text compressed into a GPU context of p, against
 * a CPU context of p that prefills text itself: the kept counts, the
 * kept rows (kept_share) and NSTEP decode steps as compare_run checks
 * them.  A GPU context refuses to compress from a compressed source; one
 * of another scorer compresses from the same full cache.
 */
static void
compare_from(const char *what, const kvx_plan *p, const kvx_plan *other,
    const char *text, double tol_dec)
{
	static int32_t ids[MAXTOK];
	float *lc, *lg;
	kvx_ctx *cc, *gf, *gz, *go;
	kvx_memory mc, mg;
	double e, worst = 0.0;
	int n, same = 1, moved, good;
	kvx_status rc;

	n = tokenize(text, ids);
	cc = new_ctx(p, KVX_DEVICE_CPU, 1);
	gf = new_ctx(NULL, KVX_DEVICE_GPU, 1);
	gz = new_ctx(p, KVX_DEVICE_GPU, 2);
	go = new_ctx(other, KVX_DEVICE_GPU, 1);
	lc = malloc((size_t)NV * sizeof(float));
	lg = malloc((size_t)NV * sizeof(float));
	if (cc == NULL || gf == NULL || gz == NULL || go == NULL ||
	    lc == NULL || lg == NULL)
		goto out;
	good = kvx_prefill(cc, 0, ids, n, lc) == KVX_OK &&
	    kvx_prefill(gf, 0, ids, n, lg) == KVX_OK;
	if (!ok(good, "%s: prefills%s", what, why(!good)))
		goto out;
	rc = kvx_compress_from(go, 0, gf, 0);
	ok(rc == KVX_OK && kvx_seq_len(go, 0) == n, "%s: a GPU context of "
	    "another scorer (SnapKV) compresses the same prefill%s", what,
	    why(rc != KVX_OK));
	rc = kvx_compress_from(gz, 0, gf, 0);
	if (!ok(rc == KVX_OK, "%s: compress from a GPU full cache of %d "
	    "tokens%s", what, n, why(rc != KVX_OK)))
		goto out;
	rc = kvx_compress_from(gz, 1, gz, 0);
	ok(rc == KVX_ERR_ARG, "%s: a compressed source is refused%s", what,
	    why(rc != KVX_OK));
	kvx_ctx_memory(cc, &mc);
	kvx_ctx_memory(gz, &mg);
	ok(mc.n_kept == mg.n_kept && kvx_seq_len(gz, 0) == n, "%s: %lld "
	    "token slots kept (GPU %lld), length %d", what,
	    (long long)mc.n_kept, (long long)mg.n_kept, kvx_seq_len(gz, 0));
	e = kept_share(cc, gz, &moved);
	ok(e >= KEPT_NEED, "%s: %.4f of the GPU's kept rows are the CPU's (at "
	    "least %.2f); %d heads keep another count", what, e, KEPT_NEED,
	    moved);
	if (decode_both(what, cc, gz, tap_argmax(lc, NV), lc, lg, tol_dec,
	    &worst, &same) != 0)
		goto out;
	ok(worst < tol_dec, "%s: %d decode steps after the compression, "
	    "worst relative error %.2e < %.0e", what, NSTEP, worst, tol_dec);
	ok(same, "%s: same greedy tokens for %d steps", what, NSTEP);
out:
	free(lc);
	free(lg);
	kvx_ctx_free(&cc);
	kvx_ctx_free(&gf);
	kvx_ctx_free(&gz);
	kvx_ctx_free(&go);
}

/*
 * kvx_compress_from between GPU contexts under the SnapKV or Expected
 * Attention plan p.  A full-cache GPU context that keeps its query
 * statistics (query_stats) prefills text, and a GPU context of p
 * compresses that prefill from the full cache's K/V and the window
 * queries (and moments) it kept.  Checked against
 *  (a) a GPU context of p that prefilled text itself: the same kept
 *      counts, at least 99% of the same rows (keys within 1% of their
 *      norm; bit-identical ones are counted too, all of them expected),
 *      and NSTEP decode steps within tol_dec of it;
 *  (b) the CPU's kvx_compress_from from a CPU full cache: the same kept
 *      counts, at least 97% of the GPU's kept rows among the CPU's
 *      (kept_share, as for KVzip), and the decode steps within tol_dec
 *      times the model's factor, as compare_run checks a GPU prefill.
 * Then a full-cache GPU context filled by kvx_compress_from serves as a
 * source in turn (the same rows again), a source decoded since its
 * prefill is refused (KVX_ERR_ARG), and, for statistics of the whole
 * prompt past KVX_WINDOW_MAX tokens, a source without query_stats is
 * refused (KVX_ERR_UNSUPPORTED).
 */
static void
compare_from_gpu(const char *what, const kvx_plan *p, const char *text,
    double tol_dec)
{
	static int32_t ids[MAXTOK];
	float *lc, *lg, *lr;
	kvx_ctx *gf, *gz, *gp, *cf, *cz, *gf2, *gn = NULL;
	kvx_memory ma, mb, mc;
	double e, ea = 0.0, eb = 0.0, tol_cpu = tol_dec * DEC_SCALE;
	long bits;
	int n, st, z = 0, same_a = 1, same_b = 1, moved, good;
	int all = p->scorer == PLAN_SCORER_EA && p->ea_queries == PLAN_EA_ALL;
	int32_t tok;
	kvx_status rc;

	n = tokenize(text, ids);
	gf = new_ctx_qs(NULL, KVX_DEVICE_GPU, 1, 1);
	gz = new_ctx(p, KVX_DEVICE_GPU, 2);
	gp = new_ctx(p, KVX_DEVICE_GPU, 1);
	cf = new_ctx_qs(NULL, KVX_DEVICE_CPU, 1, 1);
	cz = new_ctx(p, KVX_DEVICE_CPU, 1);
	gf2 = new_ctx_qs(NULL, KVX_DEVICE_GPU, 1, 1);
	lc = malloc((size_t)NV * sizeof(float));
	lg = malloc((size_t)NV * sizeof(float));
	lr = malloc((size_t)NV * sizeof(float));
	if (gf == NULL || gz == NULL || gp == NULL || cf == NULL ||
	    cz == NULL || gf2 == NULL || lc == NULL || lg == NULL ||
	    lr == NULL)
		goto out;
	good = kvx_prefill(gf, 0, ids, n, lg) == KVX_OK &&
	    kvx_prefill(gp, 0, ids, n, lr) == KVX_OK &&
	    kvx_prefill(cf, 0, ids, n, lc) == KVX_OK;
	if (!ok(good, "%s: prefills of %d tokens (GPU and CPU full caches, "
	    "GPU plan)%s", what, n, why(!good)))
		goto out;
	good = kvx_compress_from(gz, 0, gf, 0) == KVX_OK;
	if (!ok(good, "%s: GPU compress_from a GPU full cache%s", what,
	    why(!good)))
		goto out;
	good = kvx_compress_from(cz, 0, cf, 0) == KVX_OK;
	if (!ok(good, "%s: CPU compress_from a CPU full cache%s", what,
	    why(!good)))
		goto out;

	/* (a) the GPU's own prefill under p */
	kvx_ctx_memory(gp, &ma);
	kvx_ctx_memory(gz, &mb);
	kvx_ctx_memory(cz, &mc);
	ok(ma.n_kept == mb.n_kept && kvx_seq_len(gz, 0) == n, "%s: "
	    "compress_from vs the GPU's prefill: %lld token slots kept (the "
	    "prefill %lld), length %d", what, (long long)mb.n_kept,
	    (long long)ma.n_kept, kvx_seq_len(gz, 0));
	e = gpu_same_rows(gz, 0, gp, 0, &moved, &bits);
	ok(e >= 0.99, "%s: compress_from vs the GPU's prefill: %.4f of the "
	    "kept rows are the prefill's (at least 0.99), %ld of %lld "
	    "identical to the bit; %d heads keep another count", what, e,
	    bits, (long long)mb.n_kept, moved);
	/* (b) the CPU's compress_from */
	ok(mc.n_kept == mb.n_kept, "%s: compress_from, GPU vs CPU: %lld "
	    "token slots kept (CPU %lld)", what, (long long)mb.n_kept,
	    (long long)mc.n_kept);
	e = kept_share(cz, gz, &moved);
	ok(e >= 0.97, "%s: compress_from, GPU vs CPU: %.4f of the GPU's "
	    "kept rows are the CPU's (at least 0.97); %d heads keep another "
	    "count", what, e, moved);
	/* where that fails, this tells fp16 scoring from compress_from */
	e = kept_share(cz, gp, &moved);
	printf("# %s: the GPU's own prefill: %.4f of its kept rows are the "
	    "CPU compress_from's; %d heads keep another count\n", what, e,
	    moved);

	/* a full cache filled by compress_from is a source in turn */
	good = kvx_compress_from(gf2, 0, gf, 0) == KVX_OK &&
	    kvx_compress_from(gz, 1, gf2, 0) == KVX_OK;
	if (ok(good, "%s: compress_from a GPU full cache that compress_from "
	    "filled%s", what, why(!good))) {
		e = gpu_same_rows(gz, 1, gz, 0, &moved, &bits);
		ok(e >= 0.99 && moved == 0, "%s: compress_from via a second "
		    "full cache: %.4f of the kept rows are the first "
		    "compression's (at least 0.99); %d heads keep another "
		    "count", what, e, moved);
	}

	/* decode steps fed the CPU's greedy tokens, from its prefill's */
	tok = tap_argmax(lc, NV);
	for (st = 0; st < NSTEP; st++) {
		if (kvx_decode(cz, 1, &z, &tok, lc) != KVX_OK ||
		    kvx_decode(gz, 1, &z, &tok, lg) != KVX_OK ||
		    kvx_decode(gp, 1, &z, &tok, lr) != KVX_OK) {
			ok(0, "%s: decode step %d after compress_from: %s",
			    what, st, kvx_errmsg());
			goto out;
		}
		if ((e = relerr(lg, lr, NV)) > ea)
			ea = e;
		if ((e = relerr(lg, lc, NV)) > eb)
			eb = e;
		if (!same_top(lr, lg, tol_dec))
			same_a = 0;
		if (!same_top(lc, lg, tol_cpu))
			same_b = 0;
		tok = tap_argmax(lc, NV);
	}
	ok(ea < tol_dec && same_a, "%s: %d decode steps after compress_from "
	    "vs after the GPU's prefill: worst relative error %.2e < %.0e, "
	    "same greedy tokens %d", what, NSTEP, ea, tol_dec, same_a);
	ok(eb < tol_cpu && same_b, "%s: %d decode steps after compress_from, "
	    "GPU vs CPU: worst relative error %.2e < %.0e, same greedy tokens "
	    "%d", what, NSTEP, eb, tol_cpu, same_b);

	/* refusals */
	tok = tap_argmax(lr, NV);
	good = kvx_seq_clear(gz, 1) == KVX_OK &&
	    kvx_decode(gf, 1, &z, &tok, lg) == KVX_OK;
	rc = good ? kvx_compress_from(gz, 1, gf, 0) : KVX_OK;
	ok(good && rc == KVX_ERR_ARG, "%s: compress_from refuses a source "
	    "decoded since its prefill%s", what, why(!good || rc != KVX_OK));
	if (all && n > KVX_WINDOW_MAX) {
		gn = new_ctx_qs(NULL, KVX_DEVICE_GPU, 1, 0);
		good = gn != NULL && kvx_prefill(gn, 0, ids, n, NULL) ==
		    KVX_OK;
		rc = good ? kvx_compress_from(gz, 1, gn, 0) : KVX_OK;
		ok(good && rc == KVX_ERR_UNSUPPORTED && kvx_seq_len(gz, 1) ==
		    0, "%s: compress_from of %d tokens refuses a source "
		    "without query_stats%s", what, n, why(!good ||
		    rc != KVX_OK));
	}
out:
	free(lc);
	free(lg);
	free(lr);
	kvx_ctx_free(&gf);
	kvx_ctx_free(&gz);
	kvx_ctx_free(&gp);
	kvx_ctx_free(&cf);
	kvx_ctx_free(&cz);
	kvx_ctx_free(&gf2);
	kvx_ctx_free(&gn);
}

/* Three prompts of different lengths, prefilled as sequences 0-2. */
static const char *texts3[3] = {
	"The capital of France is",
	"Water boils at a temperature of",
	"def fibonacci(n):\n    if n < 2:\n        return n\n",
};

/*
 * Prefills texts3 into contexts a and b (logits to la and lb); tok[i] is
 * the greedy next token of sequence i by a.  0 on success.
 */
static int
prefill3(kvx_ctx *a, kvx_ctx *b, float *la, float *lb, int32_t *tok,
    const char *what)
{
	static int32_t ids[MAXTOK];
	int i, n;

	for (i = 0; i < 3; i++) {
		n = tokenize(texts3[i], ids);
		if (kvx_prefill(a, i, ids, n, la) != KVX_OK ||
		    kvx_prefill(b, i, ids, n, lb) != KVX_OK) {
			ok(0, "%s: prefill %d: %s", what, i, kvx_errmsg());
			return -1;
		}
		tok[i] = tap_argmax(la, NV);
	}
	return 0;
}

/* Three sequences of different lengths decoded in one batch, then an
 * extend of one of them. */
static void
compare_batch(const kvx_plan *p)
{
	int seqs[3] = { 0, 1, 2 }, i, ok_all = 1, good;
	int32_t tok[3], ext[3] = { 13 % NV, 330 % NV, 1183 % NV };
	float *lc, *lg;
	kvx_ctx *cc, *gc;
	double e = 0.0;
	kvx_status rc;

	cc = new_ctx(p, KVX_DEVICE_CPU, 3);
	gc = new_ctx(p, KVX_DEVICE_GPU, 3);
	lc = malloc((size_t)3 * NV * sizeof(float));
	lg = malloc((size_t)3 * NV * sizeof(float));
	if (cc == NULL || gc == NULL || lc == NULL || lg == NULL)
		goto out;
	if (prefill3(cc, gc, lc, lg, tok, "batch") != 0)
		goto out;
	for (i = 0; i < 3 * NV; i++)
		lg[i] = NAN;
	good = kvx_decode(cc, 3, seqs, tok, lc) == KVX_OK &&
	    kvx_decode(gc, 3, seqs, tok, lg) == KVX_OK;
	if (!ok(good, "batch: decode of 3 sequences%s", why(!good)))
		goto out;
	for (i = 0; i < 3; i++) {
		double ei = relerr(lg + (size_t)i * NV, lc + (size_t)i * NV,
		    NV);

		if (ei > e)
			e = ei;
		if (tap_argmax(lg + (size_t)i * NV, NV) != tap_argmax(lc + (size_t)i *
		    NV, NV))
			ok_all = 0;
	}
	ok(e < 1e-2 && ok_all, "batch: 3 sequences, worst relative error "
	    "%.2e < 1e-2, same top-1 %d", e, ok_all);
	good = kvx_extend(cc, 1, ext, 3, lc) == KVX_OK &&
	    kvx_extend(gc, 1, ext, 3, lg) == KVX_OK;
	if (!ok(good, "extend of 3 tokens%s", why(!good)))
		goto out;
	e = relerr(lg, lc, 3 * NV);
	ok(e < 1e-2, "extend: logits of 3 tokens, relative error %.2e < 1e-2",
	    e);
	ok(kvx_seq_len(gc, 1) == kvx_seq_len(cc, 1), "extend: length %d",
	    kvx_seq_len(gc, 1));
	ok(kvx_seq_clear(gc, 1) == KVX_OK && kvx_seq_len(gc, 1) == 0,
	    "seq_clear empties a GPU sequence");
	rc = kvx_compress_from(gc, 1, cc, 0);
	ok(rc == KVX_ERR_UNSUPPORTED, "compress_from refuses a CPU source for "
	    "a GPU context%s", why(rc != KVX_OK));
out:
	free(lc);
	free(lg);
	kvx_ctx_free(&cc);
	kvx_ctx_free(&gc);
}

/*
 * Decode steps replayed from the captured graph against the same steps
 * issued launch by launch (a context made with KVX_GPU_NOGRAPH set): the
 * same kernels in the same order, so the logits must agree to rounding
 * (bit for bit where cuBLAS picks the same algorithms) while the batch
 * changes (3, 1, 2 sequences), the positions advance and segments move.
 * A graph that replayed stale tables would differ by far more.
 */
static void
compare_graph(const kvx_plan *p)
{
	static const int nb[6] = { 3, 3, 1, 1, 2, 3 };
	int seqs[3], i, j, st, same = 1, lens = 1;
	int32_t tok[3];
	float *la, *lb;
	kvx_ctx *ga, *gb;
	double e = 0.0;

	ga = new_ctx(p, KVX_DEVICE_GPU, 3);
	setenv("KVX_GPU_NOGRAPH", "1", 1);
	gb = new_ctx(p, KVX_DEVICE_GPU, 3);
	unsetenv("KVX_GPU_NOGRAPH");
	la = malloc((size_t)3 * NV * sizeof(float));
	lb = malloc((size_t)3 * NV * sizeof(float));
	if (ga == NULL || gb == NULL || la == NULL || lb == NULL)
		goto out;
	if (prefill3(gb, ga, lb, la, tok, "graph") != 0)
		goto out;
	for (st = 0; st < 6; st++) {
		/* rotate which sequences the step takes */
		for (j = 0; j < nb[st]; j++)
			seqs[j] = (st + j) % 3;
		for (j = 0; j < 3 * NV; j++)
			la[j] = lb[j] = NAN;
		if (kvx_decode(ga, nb[st], seqs, (const int32_t *)tok, la) !=
		    KVX_OK || kvx_decode(gb, nb[st], seqs,
		    (const int32_t *)tok, lb) != KVX_OK) {
			ok(0, "graph: decode step %d: %s", st, kvx_errmsg());
			goto out;
		}
		for (j = 0; j < nb[st] * NV; j++)
			if (!(la[j] == lb[j]))
				same = 0;
		{
			double ej = relerr(la, lb, nb[st] * NV);

			if (ej > e)
				e = ej;
		}
		for (j = 0; j < nb[st]; j++)
			tok[j] = tap_argmax(lb + (size_t)j * NV, NV);
	}
	for (i = 0; i < 3; i++)
		if (kvx_seq_len(ga, i) != kvx_seq_len(gb, i))
			lens = 0;
	ok(e <= 1e-6, "graph: %s, 6 steps of 3/1/2 sequences replayed from "
	    "the graph against direct launches: relative error %.2e <= 1e-6 "
	    "(bit-identical: %d)", p != NULL ? "25% plan" : "full cache", e,
	    same);
	ok(lens, "graph: sequence lengths agree");
out:
	free(la);
	free(lb);
	kvx_ctx_free(&ga);
	kvx_ctx_free(&gb);
}

/*
 * Fills sequence 0 of g with the first m tokens of ids: by its own
 * prefill (own set), else by kvx_compress_from from the full cache gf,
 * which prefills them first.  logits gets the prompt's last row.
 */
static kvx_status
reuse_fill(kvx_ctx *g, kvx_ctx *gf, int own, const int32_t *ids, int m,
    float *logits)
{
	kvx_status rc;

	kvx_seq_clear(g, 0);
	if (own)
		return kvx_prefill(g, 0, ids, m, logits);
	kvx_seq_clear(gf, 0);
	if ((rc = kvx_prefill(gf, 0, ids, m, logits)) != KVX_OK)
		return rc;
	return kvx_compress_from(g, 0, gf, 0);
}

/*
 * What kvx-eval's task runs do to a GPU context of plan p: a context
 * without decode headroom, as kvx-eval makes them, reused for five
 * rounds of a prompt (a prefix of LONG_TEXT, a little or much longer
 * each round): its sequence cleared, filled again (own set: by its own
 * prefill, else by kvx_compress_from from a GPU full cache) and decoded
 * NREUSE greedy steps.  A round's fill regrows the forward's buffers (a
 * prefill, and KVzip's repeat pass, size them to the prompt) after the
 * decode graph of the round before was made over the old ones: that
 * graph must not replay.  The reference is a context made anew for
 * each round and filled and fed alike: the same kernels on the same
 * inputs, so the reused context's logits must be its own to 1e-5
 * (relative), with the same lengths.  Every segment is full from the
 * first step, so every step makes room; the steps run far past the tiny
 * gemma3 file's 24-token windows, so those layers drop rows as they go.
 * The GPU's distance from the CPU over the same steps is printed
 * (compare_run checks it, on shorter runs, with the tolerances).
 */
static void
compare_reuse(const char *what, const kvx_plan *p, int own)
{
	static const int cut[5] = { 25, 26, 50, 52, 100 };	/* percent */
	static int32_t ids[MAXTOK];
	float *lc, *lg, *lf;
	kvx_ctx *gf, *gz, *cc, *g1 = NULL;
	double e, worst = 0.0, cpu = 0.0;
	int n, m, r, st, z = 0, lens = 1, good;
	int32_t tok;

	n = tokenize(LONG_TEXT, ids);
	HEADROOM = 0;
	gf = new_ctx(NULL, KVX_DEVICE_GPU, 1);
	gz = new_ctx(p, KVX_DEVICE_GPU, 1);
	cc = new_ctx(p, KVX_DEVICE_CPU, 1);
	lc = malloc((size_t)NV * sizeof(float));
	lg = malloc((size_t)NV * sizeof(float));
	lf = malloc((size_t)NV * sizeof(float));
	if (n < 8 || gf == NULL || gz == NULL || cc == NULL || lc == NULL ||
	    lg == NULL || lf == NULL)
		goto out;
	for (r = 0; r < 5; r++) {
		m = n * cut[r] / 100;
		kvx_ctx_free(&g1);
		if ((g1 = new_ctx(p, KVX_DEVICE_GPU, 1)) == NULL)
			goto out;
		kvx_seq_clear(cc, 0);
		good = kvx_prefill(cc, 0, ids, m, lc) == KVX_OK &&
		    reuse_fill(g1, gf, own, ids, m, lf) == KVX_OK &&
		    reuse_fill(gz, gf, own, ids, m, lg) == KVX_OK;
		if (!ok(good, "%s: round %d: %d tokens %s%s", what, r, m,
		    own ? "prefilled" : "compressed from a full cache",
		    why(!good)))
			goto out;
		tok = tap_argmax(lf, NV);
		for (st = 0; st < NREUSE; st++) {
			if (kvx_decode(g1, 1, &z, &tok, lf) != KVX_OK ||
			    kvx_decode(gz, 1, &z, &tok, lg) != KVX_OK ||
			    kvx_decode(cc, 1, &z, &tok, lc) != KVX_OK) {
				ok(0, "%s: round %d (%d tokens): decode step "
				    "%d: %s", what, r, m, st, kvx_errmsg());
				goto out;
			}
			if ((e = relerr(lg, lf, NV)) > worst)
				worst = e;
			if ((e = relerr(lg, lc, NV)) > cpu)
				cpu = e;
			tok = tap_argmax(lf, NV);
		}
		if (kvx_seq_len(gz, 0) != m + NREUSE ||
		    kvx_seq_len(g1, 0) != m + NREUSE)
			lens = 0;
	}
	ok(worst <= 1e-5, "%s: 5 rounds of %d to %d tokens, %d decode steps "
	    "each: the reused context against one made anew each round, "
	    "worst relative error %.2e <= 1e-5", what, n * cut[0] / 100, n,
	    NREUSE, worst);
	ok(lens, "%s: lengths of %d more than each round's prompt", what,
	    NREUSE);
	printf("# %s: the same steps against the CPU: worst relative error "
	    "%.2e\n", what, cpu);
out:
	HEADROOM = 4;
	free(lc);
	free(lg);
	free(lf);
	kvx_ctx_free(&g1);
	kvx_ctx_free(&gf);
	kvx_ctx_free(&gz);
	kvx_ctx_free(&cc);
}

/* A plan for M of mode keeping fraction, with the model's sliding
 * windows, as kvx-plan writes them. */
static kvx_status
model_plan(int mode, double fraction, kvx_plan **p)
{
	const kvx_model_info *mi = kvx_model_get_info(M);
	kvx_status rc;
	int *w, l;

	if ((rc = plan_new(mi, mode, fraction, p)) != KVX_OK)
		return rc;
	if ((w = malloc((size_t)mi->n_layer * sizeof *w)) == NULL)
		return KVX_ERR_NOMEM;
	for (l = 0; l < mi->n_layer; l++)
		w[l] = kvx_model_get_window(M, l);
	rc = plan_set_windows(*p, w);
	free(w);
	return rc;
}

/* Every comparison on the model at path; name prefixes the lines. */
static void
run_model(const char *path, const char *name, double dec_scale,
    int kz_hybrid_dec)
{
	kvx_plan *p25 = NULL, *h25 = NULL, *pw = NULL, *hw = NULL;
	kvx_plan *pe = NULL, *he = NULL, *pz = NULL, *hz = NULL;
	kvx_ctx_params cp;
	kvx_ctx *c = NULL;
	char w[128];
	int good;

#define W(s) (snprintf(w, sizeof w, "%s: %s", name, s), w)
	good = kvx_model_open(path, NULL, &M) == KVX_OK;
	if (!ok(good, "%s: open %s%s", name, path, why(!good)))
		return;
	NV = kvx_model_get_info(M)->n_vocab;
	printf("# %s: %s\n", name, path);
	DEC_SCALE = dec_scale;
	kvx_ctx_params_init(&cp);
	cp.n_ctx = 64;
	/* the environment may steer auto contexts */
	if (getenv("KVX_DEVICE") == NULL || *getenv("KVX_DEVICE") == '\0')
		ok(kvx_ctx_new(M, NULL, &cp, &c) == KVX_OK &&
		    kvx_ctx_get_device(c) == KVX_DEVICE_GPU, "%s: an auto "
		    "context runs on the GPU (%s)", name,
		    kvx_model_get_info(M)->arch);
	kvx_ctx_free(&c);
	if (model_plan(KVX_PLAN_STATIC, 0.25, &p25) != KVX_OK ||
	    model_plan(KVX_PLAN_HYBRID, 0.25, &h25) != KVX_OK) {
		ok(0, "%s: plan_new: %s", name, kvx_errmsg());
		goto out;
	}

	compare_run(W("full, short"), NULL, "The capital of France is", 1e-2);
	compare_run(W("full, long"), NULL, LONG_TEXT, 1e-2);
	compare_run(W("25% static"), p25, LONG_TEXT, 2e-2);
	compare_run(W("25% hybrid"), h25, LONG_TEXT, 3e-2);
	compare_from_gpu(W("25% static, snapkv"), p25, LONG_TEXT, 2e-2);
	compare_from_gpu(W("25% hybrid, snapkv"), h25, LONG_TEXT, 3e-2);
	/* the largest window: all its queries score, and sinks stay */
	if (plan_copy(p25, &pw) != KVX_OK || plan_copy(h25, &hw) != KVX_OK) {
		ok(0, "%s: plan_copy: %s", name, kvx_errmsg());
		goto out;
	}
	pw->window = hw->window = KVX_WINDOW_MAX;
	pw->sinks = hw->sinks = 4;
	compare_run(W("25% static, largest window"), pw, LONG_TEXT, 2e-2);
	compare_run(W("25% hybrid, largest window"), hw, LONG_TEXT, 3e-2);
	compare_from_gpu(W("25% static, snapkv, largest window"), pw,
	    LONG_TEXT, 2e-2);
	/* Expected Attention, each covariance kind, static and hybrid */
	if (plan_copy(p25, &pe) != KVX_OK || plan_copy(h25, &he) != KVX_OK) {
		ok(0, "%s: plan_copy: %s", name, kvx_errmsg());
		goto out;
	}
	plan_set_scorer(pe, PLAN_SCORER_EA);
	plan_set_scorer(he, PLAN_SCORER_EA);
	compare_run(W("25% static, expected attention"), pe, LONG_TEXT, 2e-2);
	compare_run(W("25% hybrid, expected attention"), he, LONG_TEXT, 3e-2);
	compare_from_gpu(W("25% static, expected attention"), pe, LONG_TEXT,
	    2e-2);
	compare_from_gpu(W("25% hybrid, expected attention"), he, LONG_TEXT,
	    3e-2);
	pe->ea_cov = PLAN_COV_DIAG;
	he->ea_cov = PLAN_COV_NONE;
	he->ea_vnorm = 0;
	he->gqa = PLAN_GQA_MAX;
	compare_run(W("25% static, expected attention, diagonal"), pe,
	    LONG_TEXT, 2e-2);
	compare_run(W("25% hybrid, expected attention, no covariance, max"),
	    he, LONG_TEXT, 3e-2);
	/* the statistics of every prompt query: past 256 queries (the
	 * random-weight files' prompts of about 900 tokens) the GPU sums
	 * them over several blocks a head (ea_moments_k) */
	pe->ea_queries = PLAN_EA_ALL;
	he->ea_queries = PLAN_EA_ALL;
	compare_run(W("25% static, expected attention, diagonal, the whole "
	    "prompt"), pe, LONG_TEXT, 2e-2);
	compare_from_gpu(W("25% static, expected attention, diagonal, the "
	    "whole prompt"), pe, LONG_TEXT, 2e-2);
	pe->ea_cov = PLAN_COV_FULL;
	compare_run(W("25% static, expected attention, the whole prompt"), pe,
	    LONG_TEXT, 2e-2);
	compare_from_gpu(W("25% static, expected attention, the whole "
	    "prompt"), pe, LONG_TEXT, 2e-2);
	/* a prompt of about 40 tokens for the default model, inside the
	 * kept window: the statistics come from its queries, as in a
	 * prefill; about 170 in the byte-level files' vocabularies: from
	 * the moments, where the prefill takes its one-block statistics */
	compare_from_gpu(W("25% static, expected attention, the whole "
	    "prompt, medium"), pe, MID_TEXT, 2e-2);
	compare_run(W("25% hybrid, expected attention, no covariance, max, "
	    "the whole prompt"), he, LONG_TEXT, 3e-2);
	compare_from_gpu(W("25% hybrid, expected attention, no covariance, "
	    "max, the whole prompt"), he, LONG_TEXT, 3e-2);
	/*
	 * KVzip: the repeat pass on each device.  Its scores come from
	 * softmax weights over fp16 keys and GEMM inputs on the GPU, f32 on
	 * the CPU, so a token whose score ties another's within about 1e-3
	 * may swap places with it at the budget's edge; at least 97% of the
	 * kept rows must agree (99.9% and more seen on the default model).
	 * The qwen2 file's first layer gives 192 of its 1878 (token, head)
	 * pairs a weight of 1 to float precision, 120 of them exactly equal
	 * scores: a hybrid plan, which splits the layer's budget by
	 * comparing scores across heads, then gives a few rows to another
	 * head on either device (2 of its 4 heads seen), and that file's decode
	 * logits, driven by a handful of keys, move by more than any
	 * tolerance (1.4 seen), so kz_hybrid_dec 0 leaves them unchecked
	 * there; the kept rows are still compared.
	 */
	if (plan_copy(p25, &pz) != KVX_OK || plan_copy(h25, &hz) != KVX_OK) {
		ok(0, "%s: plan_copy: %s", name, kvx_errmsg());
		goto out;
	}
	plan_set_scorer(pz, PLAN_SCORER_KVZIP);
	plan_set_scorer(hz, PLAN_SCORER_KVZIP);
	if (getenv("KVX_DEVICE") == NULL || *getenv("KVX_DEVICE") == '\0') {
		ok(kvx_ctx_new(M, pz, &cp, &c) == KVX_OK &&
		    kvx_ctx_get_device(c) == KVX_DEVICE_GPU, "%s: an auto "
		    "context runs a kvzip plan on the GPU", name);
		kvx_ctx_free(&c);
	}
	KEPT_NEED = 0.97;
	compare_run(W("25% static, kvzip"), pz, LONG_TEXT, 2e-2);
	compare_from(W("25% static, kvzip, from a full cache"), pz, p25,
	    LONG_TEXT, 2e-2 * DEC_SCALE);
	DEC_CHECK = kz_hybrid_dec;
	compare_run(W("25% hybrid, kvzip"), hz, LONG_TEXT, 3e-2);
	DEC_CHECK = 1;
	pz->kz_prompt = PLAN_KVZIP_PLAIN;
	pz->kz_chunk = 50;
	pz->sinks = 4;
	compare_run(W("25% static, kvzip, plain request, chunks of 50, 4 "
	    "sinks"), pz, LONG_TEXT, 2e-2);
	KEPT_NEED = 0.0;
	compare_batch(NULL);
	compare_batch(p25);
	compare_graph(NULL);
	compare_graph(p25);
	compare_reuse(W("reuse, 25% static, own prefill"), p25, 1);
	compare_reuse(W("reuse, 25% static, compress_from"), p25, 0);
	compare_reuse(W("reuse, 25% static, kvzip, compress_from"), pz, 0);
#undef W
out:
	kvx_plan_free(&p25);
	kvx_plan_free(&h25);
	kvx_plan_free(&pw);
	kvx_plan_free(&hw);
	kvx_plan_free(&pe);
	kvx_plan_free(&he);
	kvx_plan_free(&pz);
	kvx_plan_free(&hz);
	kvx_model_close(&M);
}

/* The path of a file of the source tree. */
static void
src_path(char *out, size_t size, const char *rel)
{
	const char *top = getenv("top_srcdir");

	snprintf(out, size, "%s/%s", top ? top : ".", rel);
}

int
main(void)
{
	const char *path = tap_model_path(), *env;
	char qwen2[1024], gemma3[1024];
	kvx_ctx_params cp;
	kvx_ctx *c = NULL;

#ifndef HAVE_CUDA
	tap_skip_all("libkvx built without CUDA");
#endif
	src_path(qwen2, sizeof qwen2, "tests/data/tiny-qwen2.gguf");
	src_path(gemma3, sizeof gemma3, "tests/data/tiny-gemma3.gguf");
	if (kvx_model_open(qwen2, NULL, &M) != KVX_OK)
		tap_skip_all("tests/data/tiny-qwen2.gguf does not open");
	kvx_ctx_params_init(&cp);
	cp.n_ctx = 64;
	cp.device = KVX_DEVICE_GPU;
	if (kvx_ctx_new(M, NULL, &cp, &c) != KVX_OK) {
		printf("# %s\n", kvx_errmsg());
		kvx_model_close(&M);
		tap_skip_all("no usable CUDA device");
	}
	kvx_ctx_free(&c);
	kvx_model_close(&M);

	if (path != NULL)
		run_model(path, "default model", 1.0, 1);
	else
		printf("# the default model is absent (KVX_MODEL): its checks "
		    "do not run\n");
	/* the qwen2 file's KVzip scores tie across heads (run_model) */
	run_model(qwen2, "tiny qwen2", 3.0, 0);
	run_model(gemma3, "tiny gemma3", 1.0, 1);
	/* the real files of the other architectures, when given */
	if ((env = getenv("KVX_QWEN2_MODEL")) != NULL && *env != '\0')
		run_model(env, "qwen2.5-coder-0.5b", 1.0, 1);
	/* Gemma 3 270M's decode tolerances twice the others': one step of
	   the short prompt ("The capital of France is", step 1 of 8)
	   came 1.84e-2 from the CPU on the H200, the steps before and after
	   it 4e-3 to 7e-3, its prefill logits 1.1e-3; one token's own
	   forward, in fp16 products, not its cache rows */
	if ((env = getenv("KVX_GEMMA3_MODEL")) != NULL && *env != '\0')
		run_model(env, "gemma3-270m", 2.0, 1);
	return tap_done();
}
