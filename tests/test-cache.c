/*
 * test-cache.c - the compressed KV cache and the context API on the real
 * model: a 100% plan equals the full cache, batches equal single runs,
 * kvx_compress_from equals a compressed prefill, the allocated bytes match
 * the plan, decode appends in place, and misuse is rejected.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "kvx.h"
#include "plan.h"
#include "tap.h"

static kvx_model *M;
static const kvx_model_info *INFO;

/* Greedy-decode steps tokens from the logits in lg; record the tokens and
 * the final logits. */
static int
decode_greedy(kvx_ctx *c, int seq, float *lg, int steps, int32_t *toks)
{
	int i;

	for (i = 0; i < steps; i++) {
		toks[i] = tap_argmax(lg, INFO->n_vocab);
		if (kvx_decode(c, 1, &seq, &toks[i], lg) != KVX_OK)
			return 0;
	}
	return 1;
}

static kvx_plan *
make_plan(int mode, double f)
{
	kvx_plan *p = NULL;

	if (plan_new(INFO, mode, f, &p) != KVX_OK)
		return NULL;
	return p;
}

int
main(void)
{
	kvx_model_params mp;
	const char *path = tap_model_path();
	const char *text = "/usr/share/common-licenses/GPL-3";
	int32_t ids[1200], t_full[8], t_100[8], t_a[8], t_b[8];
	int n, V, i, l, h, ok_all;
	float *lf, *lp, *la, *lb, *lbatch;
	kvx_ctx *cf = NULL, *cp = NULL, *cc = NULL, *cb = NULL;
	kvx_ctx_params prm;
	kvx_plan *p100, *p25, *ph;
	kvx_memory mem, mem2;
	const kv_cache *kv;

	if (path == NULL)
		tap_skip_all("model not present (set KVX_MODEL)");
	kvx_model_params_init(&mp);
	mp.n_threads = 2;
	if (kvx_model_open(path, &mp, &M) != KVX_OK) {
		ok(0, "open model: %s", kvx_errmsg());
		return tap_done();
	}
	INFO = kvx_model_get_info(M);
	V = INFO->n_vocab;
	n = tap_load_tokens(M, text, ids, 700);
	if (!ok(n == 700, "tokenized %d tokens of %s", n, text))
		return tap_done();
	lf = malloc(sizeof(float) * V);
	lp = malloc(sizeof(float) * V);
	la = malloc(sizeof(float) * V);
	lb = malloc(sizeof(float) * V);
	lbatch = malloc(sizeof(float) * V * 3);

	// 100% plan == full cache
	p100 = make_plan(KVX_PLAN_STATIC, 1.0);
	kvx_ctx_params_init(&prm);
	prm.n_ctx = 1024;
	ok(kvx_ctx_new(M, NULL, &prm, &cf) == KVX_OK, "full context");
	ok(kvx_ctx_new(M, p100, &prm, &cp) == KVX_OK, "100%% context");
	ok(kvx_prefill(cf, 0, ids, n, lf) == KVX_OK, "full prefill");
	ok(kvx_prefill(cp, 0, ids, n, lp) == KVX_OK, "100%% prefill");
	ok(tap_rel_diff(lp, lf, V) < 1e-5, "100%% plan: prefill logits equal "
	    "the full cache (rel %.2g)", tap_rel_diff(lp, lf, V));
	ok(decode_greedy(cf, 0, lf, 8, t_full) &&
	    decode_greedy(cp, 0, lp, 8, t_100), "8 decode steps each");
	ok(memcmp(t_full, t_100, sizeof t_full) == 0, "100%% plan: same 8 "
	    "greedy tokens");
	ok(tap_rel_diff(lp, lf, V) < 1e-5, "100%% plan: decode logits equal "
	    "(rel %.2g)", tap_rel_diff(lp, lf, V));
	kvx_ctx_memory(cf, &mem);
	ok(mem.kv_bytes_full == (uint64_t)(n + 8) * INFO->n_layer *
	    INFO->n_head_kv * INFO->head_dim * 2 * sizeof(float),
	    "kv_bytes_full counts every token (%llu)",
	    (unsigned long long)mem.kv_bytes_full);
	ok(mem.n_kept == (int64_t)(n + 8) * INFO->n_layer * INFO->n_head_kv,
	    "full cache keeps every token");
	kvx_ctx_free(&cp);

	// a 25% static plan: kept counts, allocation, ordering
	p25 = make_plan(KVX_PLAN_STATIC, 0.25);
	prm.decode_headroom = 32;
	ok(kvx_ctx_new(M, p25, &prm, &cp) == KVX_OK, "25%% context");
	ok(kvx_prefill(cp, 0, ids, n, lp) == KVX_OK, "25%% prefill");
	kv = ctx_kv(cp);
	ok_all = 1;
	for (l = 0; l < INFO->n_layer; l++)
		for (h = 0; h < INFO->n_head_kv; h++) {
			const kv_seg *s = kv_seg_cget(kv, 0, l, h);
			int want = plan_tokens(p25, l, h, n);

			if (s->len != want || s->cap != want + 32)
				ok_all = 0;
			for (i = 1; i < s->len; i++)
				if (s->pos[i] <= s->pos[i - 1])
					ok_all = 0;
			/* sinks and the window are always kept */
			if (s->pos[0] != 0 || s->pos[s->len - 1] != n - 1 ||
			    s->pos[s->len - p25->window] != n - p25->window)
				ok_all = 0;
		}
	ok(ok_all, "every segment keeps its planned count (%d of %d), in "
	    "order, with sinks and window", plan_tokens(p25, 0, 0, n), n);
	kvx_ctx_memory(cp, &mem);
	ok(mem.kv_bytes == (uint64_t)INFO->n_layer * INFO->n_head_kv *
	    (plan_tokens(p25, 0, 0, n) + 32) * INFO->head_dim * 2 *
	    sizeof(float), "allocated bytes are the sum of the capacities");
	diag("25%% plan: kv_bytes %llu, full %llu, ratio %.3f",
	    (unsigned long long)mem.kv_bytes,
	    (unsigned long long)mem.kv_bytes_full,
	    (double)mem.kv_bytes / mem.kv_bytes_full);
	ok((double)mem.kv_bytes / mem.kv_bytes_full < 0.32,
	    "25%% plan allocates under 32%% of the full cache with headroom");
	{
		const float *k0 = kv_seg_cget(kv, 0, 5, 1)->k;

		ok(decode_greedy(cp, 0, lp, 8, t_a), "decode over the "
		    "compressed cache");
		ok(kv_seg_cget(kv, 0, 5, 1)->k == k0 &&
		    kv_seg_cget(kv, 0, 5, 1)->len == plan_tokens(p25, 5, 1, n) +
		    8, "decode appends in place within the headroom");
	}
	kvx_ctx_memory(cp, &mem2);
	ok(mem2.kv_bytes == mem.kv_bytes, "no allocation during decode");

	// compress_from(full prefill) == compressed prefill
	ok(kvx_ctx_new(M, p25, &prm, &cc) == KVX_OK, "second 25%% context");
	kvx_ctx_free(&cf);
	prm.decode_headroom = 256;
	ok(kvx_ctx_new(M, NULL, &prm, &cf) == KVX_OK, "fresh full context");
	ok(kvx_prefill(cf, 0, ids, n, lf) == KVX_OK, "full prefill again");
	ok(kvx_compress_from(cc, 0, cf, 0) == KVX_OK, "compress_from: %s",
	    kvx_errmsg());
	memcpy(lb, lf, sizeof(float) * V);
	ok(decode_greedy(cc, 0, lb, 8, t_b), "decode after compress_from");
	ok(memcmp(t_a, t_b, sizeof t_a) == 0 && tap_rel_diff(lb, lp, V) < 1e-5,
	    "compress_from matches a compressed prefill (rel %.2g)",
	    tap_rel_diff(lb, lp, V));
	ok(kvx_compress_from(cc, 0, cf, 0) == KVX_ERR_ARG,
	    "compress_from into a non-empty sequence is refused");
	ok(kvx_compress_from(cf, 0, cc, 0) == KVX_ERR_ARG,
	    "compress_from a compressed source is refused");

	// hybrid: per-layer totals
	ph = make_plan(KVX_PLAN_HYBRID, 0.2);
	ph->alpha = 0.2;
	kvx_ctx_free(&cp);
	ok(kvx_ctx_new(M, ph, &prm, &cp) == KVX_OK, "hybrid context");
	ok(kvx_prefill(cp, 0, ids, n, lp) == KVX_OK, "hybrid prefill");
	kv = ctx_kv(cp);
	ok_all = 1;
	{
		int differ = 0;

		for (l = 0; l < INFO->n_layer; l++) {
			int sum = 0, want = plan_tokens(ph, l, -1, n);

			for (h = 0; h < INFO->n_head_kv; h++) {
				sum += kv_seg_cget(kv, 0, l, h)->len;
				if (kv_seg_cget(kv, 0, l, h)->len !=
				    kv_seg_cget(kv, 0, l, 0)->len)
					differ = 1;
			}
			if (sum != want * INFO->n_head_kv)
				ok_all = 0;
		}
		ok(ok_all, "hybrid: each layer's heads share exactly the "
		    "layer's budget");
		ok(differ, "hybrid: heads of a layer get different shares");
	}

	// batches: three sequences decoded together == one by one
	{
		kvx_ctx *c1 = NULL;
		int seqs[3] = { 0, 1, 2 }, lens[3] = { 300, 180, 420 }, s;
		int32_t nxt[3];
		float *single = malloc(sizeof(float) * V * 3);
		double worst = 0.0;

		prm.n_seq = 3;
		kvx_ctx_free(&cb);
		ok(kvx_ctx_new(M, p25, &prm, &cb) == KVX_OK, "3-sequence "
		    "context");
		prm.n_seq = 1;
		for (s = 0; s < 3; s++) {
			kvx_prefill(cb, s, ids + 50 * s, lens[s],
			    lbatch + (size_t)s * V);
			nxt[s] = tap_argmax(lbatch + (size_t)s * V, V);
		}
		ok(kvx_decode(cb, 3, seqs, nxt, lbatch) == KVX_OK,
		    "batched decode of 3 sequences");
		for (s = 0; s < 3; s++) {
			int z = 0;

			kvx_ctx_free(&c1);
			kvx_ctx_new(M, p25, &prm, &c1);
			kvx_prefill(c1, 0, ids + 50 * s, lens[s], la);
			kvx_decode(c1, 1, &z, &nxt[s], single +
			    (size_t)s * V);
			if (tap_rel_diff(lbatch + (size_t)s * V, single +
			    (size_t)s * V, V) > worst)
				worst = tap_rel_diff(lbatch + (size_t)s * V,
				    single + (size_t)s * V, V);
		}
		ok(worst < 1e-4, "batch logits equal single-sequence logits "
		    "(worst rel %.2g)", worst);
		kvx_ctx_free(&c1);
		free(single);
	}

	// misuse
	ok(kvx_prefill(cb, 0, ids, 10, NULL) == KVX_ERR_ARG,
	    "prefill of a non-empty sequence is refused");
	ok(kvx_prefill(cb, 7, ids, 10, NULL) == KVX_ERR_ARG,
	    "sequence out of range is refused");
	{
		int dup[2] = { 0, 0 };

		ok(kvx_decode(cb, 2, dup, ids, NULL) == KVX_ERR_ARG,
		    "a sequence twice in one decode batch is refused");
	}
	ok(kvx_seq_clear(cb, 1) == KVX_OK && kvx_seq_len(cb, 1) == 0,
	    "seq_clear empties a sequence");
	ok(kvx_prefill(cb, 1, ids, 1100, NULL) == KVX_ERR_CAPACITY,
	    "a prompt beyond n_ctx is refused: %s", kvx_errmsg());
	{
		kvx_plan *bad = make_plan(KVX_PLAN_STATIC, 0.5);
		kvx_ctx *cx = NULL;

		bad->n_head_kv = 4;
		ok(kvx_ctx_new(M, bad, &prm, &cx) == KVX_ERR_MISMATCH &&
		    strstr(kvx_errmsg(), "kv_heads") != NULL,
		    "a plan for another model is refused: %s", kvx_errmsg());
		kvx_plan_free(&bad);
	}

	kvx_ctx_free(&cf);
	kvx_ctx_free(&cp);
	kvx_ctx_free(&cc);
	kvx_ctx_free(&cb);
	kvx_plan_free(&p100);
	kvx_plan_free(&p25);
	kvx_plan_free(&ph);
	free(lf);
	free(lp);
	free(la);
	free(lb);
	free(lbatch);
	kvx_model_close(&M);
	return tap_done();
}
