/*
 * test-kvzip.c - KVzip scoring: kvzip_score against a naive softmax in
 * double on random inputs (causal rows, sliding windows, query groups);
 * on the real model, the requests of both prompt kinds and the repeat
 * pass, which leaves the cache as it found it and scores every key; a
 * kvzip context runs on the CPU and its statistics count the pass;
 * compressions from one prefill share its scores.
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
#include "kvzip.h"
#include "model.h"
#include "plan.h"
#include "pool.h"
#include "tap.h"

#define NTOK	300

/*
 * The reference: for each head and query, the softmax over the rows the
 * query sees, in double; each key's largest weight over queries and
 * heads, merged into ref.
 */
static void
naive(const float *q, const float *k, int m, int n, int w, int g, int d,
    int win, double *ref)
{
	double *s = malloc(sizeof(double) * (size_t)m), mx, sum;
	int h, j, t, r, lo, i;

	for (h = 0; h < g; h++)
		for (j = 0; j < w; j++) {
			r = m - w + j;
			lo = win > 0 && r - win + 1 > 0 ? r - win + 1 : 0;
			mx = -INFINITY;
			for (t = lo; t <= r; t++) {
				s[t] = 0;
				for (i = 0; i < d; i++)
					s[t] += (double)q[((size_t)h * w + j) *
					    d + i] * k[(size_t)t * d + i];
				s[t] /= sqrt((double)d);
				if (s[t] > mx)
					mx = s[t];
			}
			sum = 0;
			for (t = lo; t <= r; t++)
				sum += exp(s[t] - mx);
			for (t = lo; t <= r && t < n; t++)
				if (exp(s[t] - mx) / sum > ref[t])
					ref[t] = exp(s[t] - mx) / sum;
		}
	free(s);
}

/* kvzip_score and the reference on one random shape. */
static void
score_case(int m, int n, int w, int g, int d, int win, float amp)
{
	float *q, *k, *tmp, *sc;
	double *ref, err = 0, top = 0;
	int i, t;

	q = malloc(sizeof(float) * (size_t)g * w * d);
	k = malloc(sizeof(float) * (size_t)m * d);
	tmp = malloc(sizeof(float) * (size_t)w * m);
	sc = calloc((size_t)n, sizeof(float));
	ref = calloc((size_t)n, sizeof(double));
	for (i = 0; i < g * w * d; i++)
		q[i] = amp * (2 * tap_frand() - 1);
	for (i = 0; i < m * d; i++)
		k[i] = amp * (2 * tap_frand() - 1);
	kvzip_score(q, k, m, n, w, g, d, win, 1.0f / sqrtf((float)d), tmp,
	    sc);
	naive(q, k, m, n, w, g, d, win, ref);
	for (t = 0; t < n; t++) {
		if (fabs(sc[t] - ref[t]) > err)
			err = fabs(sc[t] - ref[t]);
		if (ref[t] > top)
			top = ref[t];
	}
	ok(err <= 1e-5 * (top > 1e-3 ? top : 1e-3) + 1e-7 && top > 0,
	    "score m %d n %d w %d g %d d %d win %d: max error %.2g (largest "
	    "%.3g)", m, n, w, g, d, win, err, top);
	free(q);
	free(k);
	free(tmp);
	free(sc);
	free(ref);
}

/* Random shapes, from one query to a full chunk, with and without a
 * sliding window, and keys far enough apart that the softmax is sharp. */
static void
test_score(void)
{
	score_case(5, 3, 1, 1, 4, 0, 1);
	score_case(40, 20, 12, 3, 16, 0, 1);
	score_case(300, 200, 64, 3, 64, 0, 2);
	score_case(300, 200, 64, 2, 64, 90, 2);
	score_case(177, 33, 128, 1, 8, 0, 3);
	score_case(260, 100, 100, 4, 32, 70, 1);
	score_case(129, 1, 128, 2, 12, 0, 4);
}

/*
 * The requests: with a chat template the chat ones carry its special
 * tokens and are longer than the plain ones, which hold no special token; without a
 * template chat falls back to plain.  Both fit a batch with a chunk.
 */
static void
test_requests(kvx_model *m)
{
	kvzip_req rc, rp;
	char piece[64], *tpl = NULL;
	size_t len;
	int i, sp = 0, chat;

	chat = kvx_chat_format(m, NULL, "x", &tpl) == KVX_OK;
	free(tpl);
	if (!ok(kvzip_req_new(m, PLAN_KVZIP_CHAT, &rc) == KVX_OK &&
	    kvzip_req_new(m, PLAN_KVZIP_PLAIN, &rp) == KVX_OK,
	    "requests: %s", kvx_errmsg()))
		return;
	for (i = 0; i < rc.n_first; i++)
		if (kvx_token_piece(m, rc.first[i], piece, sizeof piece,
		    &len) == KVX_OK && strchr(piece, '<') != NULL)
			sp++;
	if (chat)
		ok(sp >= 2 && rc.n_tail > 0 && rc.n_head > 0 &&
		    rp.n_first < rc.n_first, "chat request: %d template "
		    "tokens, head %d, tail %d tokens", sp, rc.n_head, rc.n_tail);
	else
		ok(rc.n_first == rp.n_first && memcmp(rc.first, rp.first,
		    sizeof *rc.first * (size_t)rp.n_first) == 0 &&
		    rc.n_head == rp.n_head && rc.n_tail == rp.n_tail,
		    "no chat template: the chat request is the plain one");
	for (sp = 0, i = 0; i < rp.n_first; i++)
		if (kvx_token_piece(m, rp.first[i], piece, sizeof piece,
		    &len) == KVX_OK && strchr(piece, '<') != NULL)
			sp++;
	ok(sp == 0 && rp.n_first > 4, "plain request: %d tokens, no specials",
	    rp.n_first);
	ok(kvzip_batch_max(&rc, 128) == 128 + (rc.n_first > rc.n_head +
	    KVZIP_QUOTE + rc.n_tail ? rc.n_first : rc.n_head + KVZIP_QUOTE +
	    rc.n_tail), "a batch holds the longer request and the chunk");
	kvzip_req_free(&rc);
	kvzip_req_free(&rp);
	ok(rc.first == NULL && rc.n_first == 0, "free empties the requests");
}

/* A kvzip plan for m at share f, with the model's sliding windows. */
static kvx_plan *
kvzip_plan(kvx_model *m, int mode, double f)
{
	const kvx_model_info *mi = kvx_model_get_info(m);
	kvx_plan *p = NULL;
	int *w, l;

	if (plan_new(mi, mode, f, &p) != KVX_OK)
		return NULL;
	plan_set_scorer(p, PLAN_SCORER_KVZIP);
	if ((w = calloc((size_t)mi->n_layer, sizeof *w)) == NULL) {
		kvx_plan_free(&p);
		return NULL;
	}
	for (l = 0; l < mi->n_layer; l++)
		w[l] = kvx_model_get_window(m, l);
	if (plan_set_windows(p, w) != KVX_OK)
		kvx_plan_free(&p);
	free(w);
	return p;
}

/*
 * The repeat pass over a full prefill: the cache keeps every row and
 * value it had, every score lies in [0, 1], and every key that some
 * chunk query sees scores above 0.
 */
static void
test_pass(kvx_model *m, const int32_t *ids, int n)
{
	const kvx_model_info *mi = kvx_model_get_info(m);
	kvx_ctx_params prm;
	kvx_ctx *c = NULL;
	kvx_plan *p = NULL;
	kv_cache *kv;
	kvx_pool *pool = NULL;
	float *sc = NULL, *k0 = NULL;
	size_t row = (size_t)mi->head_dim, cnt;
	int l, h, same = 1, range = 1, zero = 0;
	long i;

	kvx_ctx_params_init(&prm);
	prm.n_ctx = n + 8;
	prm.device = KVX_DEVICE_CPU;
	if (!ok(kvx_ctx_new(m, NULL, &prm, &c) == KVX_OK &&
	    kvx_prefill(c, 0, ids, n, NULL) == KVX_OK &&
	    plan_new(mi, KVX_PLAN_STATIC, 0.2, &p) == KVX_OK &&
	    (pool = pool_new(2)) != NULL, "a full prefill: %s", kvx_errmsg()))
		goto out;
	plan_set_scorer(p, PLAN_SCORER_KVZIP);
	p->kz_chunk = 64;
	kv = (kv_cache *)ctx_kv(c);
	cnt = (size_t)mi->n_layer * mi->n_head_kv;
	sc = malloc(sizeof(float) * cnt * n);
	k0 = malloc(sizeof(float) * cnt * n * row * 2);
	for (l = 0; l < mi->n_layer; l++)
		for (h = 0; h < mi->n_head_kv; h++) {
			const kv_seg *sg = kv_seg_cget(kv, 0, l, h);
			float *dk = k0 + ((size_t)l * mi->n_head_kv + h) * n *
			    row * 2;

			memcpy(dk, sg->k, sizeof(float) * n * row);
			memcpy(dk + n * row, sg->v, sizeof(float) * n * row);
		}
	if (!ok(kvzip_pass(m, kv, pool, p, 0, ids, n, sc) == KVX_OK,
	    "repeat pass: %s", kvx_errmsg()))
		goto out;
	for (l = 0; l < mi->n_layer; l++)
		for (h = 0; h < mi->n_head_kv; h++) {
			const kv_seg *sg = kv_seg_cget(kv, 0, l, h);
			float *dk = k0 + ((size_t)l * mi->n_head_kv + h) * n *
			    row * 2;

			same &= sg->len == n && memcmp(dk, sg->k,
			    sizeof(float) * n * row) == 0 && memcmp(dk + n *
			    row, sg->v, sizeof(float) * n * row) == 0 &&
			    sg->pos[n - 1] == n - 1;
		}
	ok(same, "the pass leaves every layer's rows as they were");
	for (i = 0; i < (long)(cnt * n); i++) {
		range &= sc[i] >= 0 && sc[i] <= 1;
		zero += sc[i] == 0;
	}
	ok(range && zero == 0, "scores in [0, 1], %d of %ld at 0", zero,
	    (long)(cnt * n));
	ok(kvzip_pass(m, kv, pool, p, 0, ids, n - 1, sc) == KVX_ERR_ARG,
	    "a pass over a length the cache does not hold is refused");
out:
	free(sc);
	free(k0);
	pool_free(&pool);
	kvx_plan_free(&p);
	kvx_ctx_free(&c);
}

/*
 * A kvzip plan's context: auto picks the device a context without a plan
 * gets (the GPU runs kvzip plans too, test-gpu compares the two), and
 * kvx_ctx_get_stats counts the repeat pass within the prefill's time.
 */
static void
test_ctx(kvx_model *m, const int32_t *ids, int n)
{
	kvx_ctx_params prm;
	kvx_ctx_stats st;
	kvx_ctx *c = NULL;
	kvx_plan *p = NULL;
	kvx_status rc;
	int dev;

	if (!ok((p = kvzip_plan(m, KVX_PLAN_STATIC, 0.2)) != NULL,
	    "a kvzip plan"))
		return;
	kvx_ctx_params_init(&prm);
	prm.n_ctx = n + 8;
	rc = kvx_ctx_new(m, NULL, &prm, &c);
	dev = rc == KVX_OK ? kvx_ctx_get_device(c) : -1;
	kvx_ctx_free(&c);
	rc = kvx_ctx_new(m, p, &prm, &c);
	ok(rc == KVX_OK && kvx_ctx_get_device(c) == dev, "auto runs a kvzip "
	    "plan on device %d, as a full cache", dev);
	kvx_ctx_free(&c);
	prm.device = KVX_DEVICE_CPU;
	rc = kvx_ctx_new(m, p, &prm, &c);
	if (!ok(rc == KVX_OK, "a CPU context for a kvzip plan"))
		goto out;
	ok(kvx_ctx_get_stats(c, &st) == KVX_OK && st.prefill_s == 0 &&
	    st.select_s == 0, "no time before a prefill");
	memset(&st, 0, sizeof st);
	rc = kvx_prefill(c, 0, ids, n, NULL);
	if (rc == KVX_OK)
		rc = kvx_ctx_get_stats(c, &st);
	ok(rc == KVX_OK && st.select_s > 0 && st.select_s < st.prefill_s,
	    "the pass is %.3f of %.3f s of prefill", st.select_s,
	    st.prefill_s);
	ok(kvx_ctx_get_stats(NULL, &st) == KVX_ERR_ARG &&
	    kvx_ctx_get_stats(c, NULL) == KVX_ERR_ARG,
	    "stats refuse a NULL argument");
out:
	kvx_ctx_free(&c);
	kvx_plan_free(&p);
}

/* 1 when sequence 0 keeps the same positions in every segment of both. */
static int
same_rows(const kvx_ctx *a, const kvx_ctx *b, const kvx_model_info *mi)
{
	const kv_cache *ka = ctx_kv(a), *kb = ctx_kv(b);
	int l, h, same = 1;

	for (l = 0; l < mi->n_layer; l++)
		for (h = 0; h < mi->n_head_kv; h++) {
			const kv_seg *x = kv_seg_cget(ka, 0, l, h);
			const kv_seg *y = kv_seg_cget(kb, 0, l, h);

			same &= x->len == y->len && memcmp(x->pos, y->pos,
			    sizeof *x->pos * (size_t)x->len) == 0;
		}
	return same;
}

/*
 * kvx_compress_from a full prefill by kvzip plans: the second context of
 * the same chunk and prompt takes the first one's scores instead of
 * repeating the pass, and keeps the same tokens; after the source is
 * filled with another prompt, its scores are those of the new prompt (a
 * compressed prefill of it keeps the same tokens).
 */
static void
test_from(kvx_model *m, const int32_t *ids, int n)
{
	const kvx_model_info *mi = kvx_model_get_info(m);
	kvx_ctx_params prm;
	kvx_ctx_stats sa, sb;
	kvx_ctx *cf = NULL, *ca = NULL, *cb = NULL, *cd = NULL, *ce = NULL;
	kvx_plan *p = NULL;
	int32_t *rev;
	int i, z = 0;

	rev = malloc(sizeof *rev * (size_t)n);
	for (i = 0; i < n; i++)
		rev[i] = ids[n - 1 - i];
	kvx_ctx_params_init(&prm);
	prm.n_ctx = n + 8;
	prm.device = KVX_DEVICE_CPU;
	if (!ok((p = kvzip_plan(m, KVX_PLAN_HYBRID, 0.3)) != NULL &&
	    kvx_ctx_new(m, NULL, &prm, &cf) == KVX_OK, "contexts"))
		goto out;
	p->kz_chunk = 100;
	if (!ok(kvx_ctx_new(m, p, &prm, &ca) == KVX_OK &&
	    kvx_ctx_new(m, p, &prm, &cb) == KVX_OK &&
	    kvx_ctx_new(m, p, &prm, &cd) == KVX_OK &&
	    kvx_ctx_new(m, p, &prm, &ce) == KVX_OK &&
	    kvx_prefill(cf, 0, ids, n, NULL) == KVX_OK &&
	    kvx_compress_from(ca, 0, cf, 0) == KVX_OK &&
	    kvx_compress_from(cb, 0, cf, 0) == KVX_OK,
	    "two compressions from one full prefill"))
		goto out;
	kvx_ctx_get_stats(ca, &sa);
	kvx_ctx_get_stats(cb, &sb);
	ok(same_rows(ca, cb, mi) && sb.select_s < 0.5 * sa.select_s,
	    "the second keeps the same tokens in %.3f s, the first took %.3f s",
	    sb.select_s, sa.select_s);
	if (!ok(kvx_seq_clear(cf, z) == KVX_OK &&
	    kvx_prefill(cf, 0, rev, n, NULL) == KVX_OK &&
	    kvx_compress_from(cd, 0, cf, 0) == KVX_OK &&
	    kvx_prefill(ce, 0, rev, n, NULL) == KVX_OK, "another prompt"))
		goto out;
	ok(same_rows(cd, ce, mi) && !same_rows(ca, cd, mi),
	    "another prompt in the source is scored anew");
out:
	free(rev);
	kvx_ctx_free(&cf);
	kvx_ctx_free(&ca);
	kvx_ctx_free(&cb);
	kvx_ctx_free(&cd);
	kvx_ctx_free(&ce);
	kvx_plan_free(&p);
}

int
main(void)
{
	const char *path = tap_model_path();
	static int32_t ids[NTOK];
	kvx_model *m = NULL;
	int n;

	test_score();
	if (path == NULL || kvx_model_open(path, NULL, &m) != KVX_OK) {
		diag("no model (set KVX_MODEL): the pass is not run");
		return tap_done();
	}
	test_requests(m);
	n = tap_load_tokens(m, "/usr/share/common-licenses/GPL-3", ids, NTOK);
	if (n == NTOK) {
		test_pass(m, ids, n);
		test_ctx(m, ids, n);
		test_from(m, ids, n);
	} else
		diag("/usr/share/common-licenses/GPL-3 missing");
	kvx_model_close(&m);
	return tap_done();
}
