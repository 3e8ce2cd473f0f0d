/*
 * test-window.c - sliding-window layers: the plan's model.sliding_window
 * (round trip, strict loading, the check against the model), the caps of
 * plan_tokens and the selection rule, the honest full-cache bytes, and on
 * tests/data/tiny-gemma3.gguf (five local layers with a 24-token window
 * to each global one) the CPU cache that never keeps more than a window
 * plus the tokens being decoded, with decode logits equal to a fresh
 * prefill's; and, where Gemma 3 270M is present, its shipped 20% kvx plan
 * allocating at its reference context exactly the bytes the plan states.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctx.h"
#include "kvx.h"
#include "plan.h"
#include "select.h"
#include "tap.h"

static char tmpdir[] = "/tmp/kvx-test-window-XXXXXX";

/* A six-layer toy model with gemma3's pattern: layer 5 is global. */
static void
toy_info(kvx_model_info *mi)
{
	memset(mi, 0, sizeof *mi);
	mi->arch = "gemma3";
	mi->name = "toy";
	mi->n_layer = 6;
	mi->n_head = 2;
	mi->n_head_kv = 1;
	mi->head_dim = 8;
	memset(mi->fingerprint, 'a', 64);
}

static const int toy_w[6] = { 24, 24, 24, 24, 24, 0 };

/* Writes text to a scratch file and returns its path. */
static const char *
scratch(const char *name, const char *text)
{
	static char path[512];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	if ((f = fopen(path, "w")) == NULL)
		return path;
	fputs(text, f);
	fclose(f);
	return path;
}

/* Windows survive save and load; a plan without them writes no key. */
static void
test_format(void)
{
	kvx_model_info mi;
	kvx_plan *p, *q = NULL;
	char path[512], *text;
	size_t len;
	int l, same;

	toy_info(&mi);
	if (!ok(plan_new(&mi, KVX_PLAN_STATIC, 0.3, &p) == KVX_OK,
	    "plan_new"))
		return;
	ok(plan_emit(p, &text, &len) == KVX_OK &&
	    strstr(text, "sliding_window") == NULL,
	    "a plan without windows writes no model.sliding_window");
	free(text);
	ok(plan_set_windows(p, toy_w) == KVX_OK && p->windows != NULL,
	    "windows set");
	plan_update_bytes(p, 4);
	ok(plan_emit(p, &text, &len) == KVX_OK && strstr(text,
	    "  sliding_window: [24, 24, 24, 24, 24, 0]\n") != NULL,
	    "model.sliding_window is one flow sequence, a window per layer");
	free(text);
	snprintf(path, sizeof path, "%s/rt.yaml", tmpdir);
	ok(kvx_plan_save(p, path, 1) == KVX_OK &&
	    kvx_plan_load(path, &q) == KVX_OK, "save and load: %s",
	    kvx_errmsg());
	for (same = q != NULL && q->windows != NULL, l = 0; same && l < 6; l++)
		same = q->windows[l] == toy_w[l] &&
		    kvx_plan_get_window(q, l) == toy_w[l];
	ok(same && q->ref_bytes == p->ref_bytes &&
	    q->ref_bytes_full == p->ref_bytes_full,
	    "round trip: windows and reference bytes");
	ok(kvx_plan_get_window(q, -1) == 0 && kvx_plan_get_window(q, 6) == 0 &&
	    kvx_plan_get_window(NULL, 0) == 0, "window of no layer is 0");
	kvx_plan_free(&q);
	/* all global: the same as none */
	{
		int zero[6] = { 0 };

		ok(plan_set_windows(p, zero) == KVX_OK && p->windows == NULL,
		    "all-global windows are dropped");
	}
	kvx_plan_free(&p);
}

/* A plan's text with the model section's last line replaced by extra. */
static void
plan_text(char *buf, size_t size, const char *extra, const char *bytes)
{
	snprintf(buf, size,
	    "kvx_plan: 1\n"
	    "method: uniform\n"
	    "model:\n"
	    "  arch: gemma3\n"
	    "  layers: 3\n"
	    "  heads: 2\n"
	    "  kv_heads: 1\n"
	    "  head_dim: 8\n"
	    "  fingerprint: %.64s\n"
	    "%s"
	    "budget:\n"
	    "  fraction: 0.5\n"
	    "  reference_context: 100\n"
	    "%s"
	    "selection:\n"
	    "  window: 4\n"
	    "  pool: max\n"
	    "  pool_kernel: 3\n"
	    "  gqa: mean\n"
	    "  sinks: 2\n"
	    "  min_tokens: 0\n"
	    "mode: static\n"
	    "budgets:\n"
	    "- [0.5]\n"
	    "- [0.5]\n"
	    "- [0.5]\n",
	    "abababababababababababababababababababababababababababababababab",
	    extra, bytes);
}

/* Strict loading: count, type and range of the windows, and the full
 * bytes that must count a local layer at its window. */
static void
test_bad(void)
{
	static const struct {
		const char	*name, *line, *bytes, *where, *word;
	} bad[] = {
		{ "count", "  sliding_window: [10, 0]\n", "", ":10:19:",
		    "has 2 entries, model.layers is 3" },
		{ "one", "  sliding_window: [10, 1, 0]\n", "", ":10:24:",
		    "sliding_window[1] must be 0 (a global layer) or in [2," },
		{ "negative", "  sliding_window: [-5, 10, 0]\n", "", ":10:20:",
		    "got -5" },
		{ "scalar", "  sliding_window: 10\n", "", ":10:19:",
		    "must be a sequence" },
		{ "text", "  sliding_window: [10, x, 0]\n", "", ":10:24:",
		    "integer" },
		/* 100 tokens in every layer is the full cache without the
		 * windows: with them it is 10 + 10 + 100 */
		{ "bytes", "  sliding_window: [10, 10, 0]\n",
		    "  reference_bytes: 6400\n  reference_bytes_full: 12800\n",
		    ":15:", "summed over the layers (1920)" },
	};
	char text[2048], name[64];
	const char *path, *msg;
	kvx_plan *p;
	size_t i;

	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		plan_text(text, sizeof text, bad[i].line, bad[i].bytes);
		snprintf(name, sizeof name, "bad-%s.yaml", bad[i].name);
		path = scratch(name, text);
		p = NULL;
		msg = kvx_plan_load(path, &p) == KVX_ERR_PLAN ? kvx_errmsg() :
		    "";
		ok(p == NULL && strstr(msg, bad[i].where) != NULL &&
		    strstr(msg, bad[i].word) != NULL && strchr(msg, '\n') ==
		    NULL, "bad %s: '%s' and '%s' in \"%s\"", bad[i].name,
		    bad[i].where, bad[i].word, msg);
	}
	plan_text(text, sizeof text, "  sliding_window: [10, 10, 0]\n",
	    "  reference_bytes: 2240\n  reference_bytes_full: 3840\n");
	path = scratch("good.yaml", text);
	ok(kvx_plan_load(path, &p) == KVX_OK && kvx_plan_get_window(p, 0) ==
	    10 && kvx_plan_get_window(p, 2) == 0,
	    "windows and honest bytes load: %s", kvx_errmsg());
	kvx_plan_free(&p);
}

/* plan_tokens and the reference bytes count a local layer at its window. */
static void
test_tokens(void)
{
	kvx_model_info mi;
	kvx_plan *p;
	uint64_t row = 8 * 2 * 4;

	toy_info(&mi);
	if (plan_new(&mi, KVX_PLAN_STATIC, 0.5, &p) != KVX_OK ||
	    plan_set_windows(p, toy_w) != KVX_OK) {
		ok(0, "plan_new");
		return;
	}
	p->window = 4;
	p->sinks = 2;
	ok(plan_tokens(p, 0, 0, 1000) == 24 && plan_tokens(p, 5, 0, 1000) ==
	    500 && plan_tokens(p, 0, 0, 40) == 20,
	    "tokens: a local layer capped at its window, a global one not");
	p->budgets[0] = 0;
	p->min_tokens = 30;
	ok(plan_tokens(p, 0, 0, 1000) == 24 && plan_tokens(p, 0, 0, 10) == 10,
	    "tokens: the floor (min_tokens) is capped too");
	p->ref_context = 1000;
	plan_update_bytes(p, 4);
	ok(p->ref_bytes_full == (5 * 24 + 1000) * row &&
	    p->ref_bytes == (5 * 24 + 500) * row,
	    "bytes: the full cache holds %d rows, the plan %d",
	    (int)(p->ref_bytes_full / row), (int)(p->ref_bytes / row));
	kvx_plan_free(&p);
}

/*
 * sel_rule on windowed layers: the span starts n - min(n, W) rows in, no
 * sinks past the window, keeps within the span, and a hybrid layer's keeps
 * sum to its capped budget.
 */
static void
test_rule(void)
{
	kvx_model_info mi;
	kvx_plan *P;
	sel_counts c;
	int rep, l, h, n, W, nv, sum, bad = 0, nwin = 0;
	int w[6];

	toy_info(&mi);
	for (rep = 0; rep < 2000; rep++) {
		mi.n_head_kv = tap_irand(1, 4);
		mi.n_head = mi.n_head_kv * 2;
		if (plan_new(&mi, rep & 1, tap_frand() * 0.5 + 0.5, &P) !=
		    KVX_OK)
			break;
		W = tap_irand(2, 300);
		for (l = 0; l < 6; l++)
			w[l] = l == 5 ? 0 : W;
		plan_set_windows(P, w);
		P->window = tap_irand(1, 64);
		P->sinks = tap_irand(0, 8);
		for (h = 0; h < plan_n_budgets(P); h++)
			P->budgets[h] = tap_frand() * 0.5 + 0.5;
		n = tap_irand(2, 1000);
		l = tap_irand(0, 5);
		nv = sel_window_rows(w[l], n);
		if (sel_rule(P, l, n, 64, mi.n_head_kv, &c) != 0) {
			bad++;
			kvx_plan_free(&P);
			continue;
		}
		nwin += c.first > 0;
		if (c.first != n - nv || (c.first > 0 && c.sinks != 0) ||
		    c.pw + c.sinks + c.ncand != nv)
			bad++;
		for (sum = h = 0; h < mi.n_head_kv; h++) {
			if (c.keep[h] < c.fixed || c.keep[h] > nv)
				bad++;
			sum += c.keep[h];
		}
		if (c.hybrid && sum != plan_tokens(P, l, -1, n) *
		    mi.n_head_kv)
			bad++;
		if (!c.hybrid && c.keep[0] != (plan_tokens(P, l, 0, n) <
		    c.fixed ? c.fixed : plan_tokens(P, l, 0, n)))
			bad++;
		kvx_plan_free(&P);
	}
	ok(rep == 2000 && bad == 0 && nwin > 100, "rule: %d windowed layers "
	    "past their window of %d, %d bad", nwin, rep, bad);
}

/* Path of tests/data/tiny-gemma3.gguf. */
static const char *
tiny_path(void)
{
	static char buf[1024];
	const char *top = getenv("top_srcdir");

	snprintf(buf, sizeof buf, "%s/tests/data/tiny-gemma3.gguf",
	    top ? top : ".");
	return buf;
}

/* Last-token logits of a fresh full-cache prefill of ids[0..n). */
static int
fresh(kvx_model *m, const int32_t *ids, int n, float *out)
{
	kvx_ctx_params prm;
	kvx_ctx *c = NULL;
	int r;

	kvx_ctx_params_init(&prm);
	prm.n_ctx = 512;
	prm.device = KVX_DEVICE_CPU;
	r = kvx_ctx_new(m, NULL, &prm, &c) == KVX_OK &&
	    kvx_prefill(c, 0, ids, n, out) == KVX_OK;
	kvx_ctx_free(&c);
	return r;
}

/* The CPU context on the tiny gemma3 model. */
static void
test_model(void)
{
	const char *path = tiny_path();
	const kvx_model_info *mi;
	const kv_cache *kv;
	kvx_model *m = NULL;
	kvx_ctx_params prm;
	kvx_ctx *c = NULL;
	kvx_plan *p = NULL, *p0 = NULL;
	kvx_memory mem;
	int32_t ids[400];
	float *lg, *ref;
	double worst = 0;
	int i, l, h, V, W, n0 = 40, steps = 340, okw = 1, bounded = 1;
	int64_t kept;
	uint64_t row, bytes0 = 0;

	if (access(path, R_OK) != 0) {
		ok(1, "tiny gemma3 model # SKIP %s is absent", path);
		return;
	}
	if (!ok(kvx_model_open(path, NULL, &m) == KVX_OK, "open %s", path))
		return;
	mi = kvx_model_get_info(m);
	V = mi->n_vocab;
	W = kvx_model_get_window(m, 0);
	for (l = 0; l < mi->n_layer; l++)
		okw &= kvx_model_get_window(m, l) == ((l + 1) % 6 ? W : 0);
	ok(W == 24 && okw && kvx_model_get_window(m, -1) == 0 &&
	    kvx_model_get_window(m, mi->n_layer) == 0,
	    "model: five local layers of window 24 to a global one");
	for (i = 0; i < 400; i++)
		ids[i] = 4 + (i * 37 + 11) % (V - 4);
	lg = malloc(sizeof(float) * V);
	ref = malloc(sizeof(float) * V);
	row = (uint64_t)mi->head_dim * 2 * sizeof(float);

	/* the full cache: decode far past the window and the headroom */
	kvx_ctx_params_init(&prm);
	prm.n_ctx = 512;
	prm.device = KVX_DEVICE_CPU;
	prm.decode_headroom = 64;
	if (!ok(kvx_ctx_new(m, NULL, &prm, &c) == KVX_OK &&
	    kvx_prefill(c, 0, ids, n0, lg) == KVX_OK, "full cache prefill"))
		goto out;
	kv = ctx_kv(c);
	for (i = n0; i < n0 + steps; i++) {
		int s = 0;

		if (kvx_decode(c, 1, &s, &ids[i], lg) != KVX_OK)
			break;
		for (l = 0; l < mi->n_layer; l++)
			for (h = 0; h < mi->n_head_kv; h++)
				if (kvx_model_get_window(m, l) > 0 &&
				    kv_seg_cget(kv, 0, l, h)->len > W +
				    prm.decode_headroom)
					bounded = 0;
		if (i == n0 + 100)
			bytes0 = kv->bytes;
		if (i % 60 == 0 || i == n0 + steps - 1) {
			if (!fresh(m, ids, i + 1, ref))
				break;
			if (tap_rel_diff(lg, ref, V) > worst)
				worst = tap_rel_diff(lg, ref, V);
		}
	}
	ok(i == n0 + steps && worst < 1e-4, "full cache: %d decode steps "
	    "past the window, logits as a fresh prefill's (worst rel %.2g)",
	    steps, worst);
	ok(bounded, "full cache: a local layer holds at most its window plus "
	    "the headroom");
	kvx_ctx_memory(c, &mem);
	ok(mem.kv_bytes_full == (5 * (uint64_t)W + (uint64_t)(n0 + steps)) *
	    mi->n_head_kv * row && mem.kv_bytes_used <= mem.kv_bytes_full,
	    "full cache: kv_bytes_full counts a local layer at its window "
	    "(%llu)", (unsigned long long)mem.kv_bytes_full);
	ok(bytes0 > 0 && kv->bytes < bytes0 + 2 * (uint64_t)(steps - 100) *
	    row, "full cache: the local layers' bytes stay put while the "
	    "global layer grows (%llu, then %llu)",
	    (unsigned long long)bytes0, (unsigned long long)kv->bytes);
	kvx_ctx_free(&c);

	/* a plan without the model's windows is refused */
	if (plan_new(mi, KVX_PLAN_STATIC, 0.5, &p0) == KVX_OK) {
		ok(kvx_ctx_new(m, p0, &prm, &c) == KVX_ERR_MISMATCH &&
		    strstr(kvx_errmsg(), "sliding window of 0 on layer 0, "
		    "model has 24") != NULL, "a plan without windows is "
		    "refused: %s", kvx_errmsg());
		kvx_ctx_free(&c);
	}

	/* a compressed cache keeps what the plan says, within the window */
	if (plan_new(mi, KVX_PLAN_STATIC, 0.5, &p) != KVX_OK) {
		ok(0, "plan_new");
		goto out;
	}
	{
		int w[64];

		for (l = 0; l < mi->n_layer && l < 64; l++)
			w[l] = kvx_model_get_window(m, l);
		plan_set_windows(p, w);
	}
	p->window = 8;
	if (!ok(kvx_ctx_new(m, p, &prm, &c) == KVX_OK &&
	    kvx_prefill(c, 0, ids, 200, lg) == KVX_OK, "plan prefill: %s",
	    kvx_errmsg()))
		goto out;
	kv = ctx_kv(c);
	kvx_ctx_memory(c, &mem);
	for (kept = 0, okw = 1, l = 0; l < mi->n_layer; l++)
		for (h = 0; h < mi->n_head_kv; h++) {
			const kv_seg *sg = kv_seg_cget(kv, 0, l, h);

			kept += plan_tokens(p, l, h, 200);
			if (sg->len != plan_tokens(p, l, h, 200) || (l % 6 != 5 &&
			    (sg->len > W || sg->pos[0] < 200 - W)))
				okw = 0;
		}
	ok(okw && mem.n_kept == kept && mem.kv_bytes_full == (5 *
	    (uint64_t)W + 200) * mi->n_head_kv * row,
	    "plan: each layer keeps plan_tokens, a local one from its last "
	    "%d positions (%lld kept)", W, (long long)mem.n_kept);
	for (i = 200; i < 260; i++) {
		int s = 0;

		if (kvx_decode(c, 1, &s, &ids[i], lg) != KVX_OK)
			break;
	}
	ok(i == 260 && isfinite(lg[tap_argmax(lg, V)]),
	    "plan: decode runs past the compressed window");
out:
	kvx_ctx_free(&c);
	kvx_plan_free(&p);
	kvx_plan_free(&p0);
	free(lg);
	free(ref);
	kvx_model_close(&m);
}

/*
 * Gemma 3 270M's shipped 20% kvx plan after a prompt of its reference
 * context: the cache holds exactly the plan's reference_bytes, and the
 * full cache its reference_bytes_full, which counts a local layer at its
 * window of 512.
 */
static void
test_gemma_plan(void)
{
	const char *top = getenv("top_srcdir"), *env = getenv("KVX_GEMMA3_MODEL");
	char mpath[1024], ppath[1024], tpath[1024];
	kvx_model *m = NULL;
	kvx_plan *p = NULL;
	kvx_ctx *c = NULL;
	kvx_ctx_params prm;
	kvx_memory mem;
	int32_t *ids = NULL;
	int n;

	top = top ? top : ".";
	if (env != NULL && *env != '\0')
		snprintf(mpath, sizeof mpath, "%s", env);
	else
		snprintf(mpath, sizeof mpath,
		    "%s/models/gemma-3-270m-q4_k_m.gguf", top);
	snprintf(ppath, sizeof ppath, "%s/plans/gemma3-270m-kvx-20.yaml", top);
	snprintf(tpath, sizeof tpath, "%s/evaltext/perlretut.txt", top);
	if (access(mpath, R_OK) != 0 || access(ppath, R_OK) != 0 ||
	    access(tpath, R_OK) != 0) {
		ok(1, "gemma3-270m 20%% plan # SKIP model, plan or text absent "
		    "(tools/fetch-model --model gemma3-270m, "
		    "tools/fetch-evaltext)");
		return;
	}
	if (kvx_model_open(mpath, NULL, &m) != KVX_OK ||
	    kvx_plan_load(ppath, &p) != KVX_OK || kvx_plan_check(p, m) !=
	    KVX_OK) {
		ok(0, "gemma3-270m: the 20%% kvx plan loads and fits the "
		    "model: %s", kvx_errmsg());
		goto out;
	}
	n = (int)p->ref_context;
	ids = malloc(sizeof *ids * (size_t)n);
	kvx_ctx_params_init(&prm);
	prm.n_ctx = n;
	prm.decode_headroom = 0;
	prm.device = KVX_DEVICE_CPU;
	if (!ok(ids != NULL && tap_load_tokens(m, tpath, ids, n) == n &&
	    kvx_ctx_new(m, p, &prm, &c) == KVX_OK &&
	    kvx_prefill(c, 0, ids, n, NULL) == KVX_OK &&
	    kvx_ctx_memory(c, &mem) == KVX_OK, "gemma3-270m: prefill of "
	    "%d tokens under the plan", n))
		goto out;
	ok(mem.kv_bytes == p->ref_bytes && mem.kv_bytes_used ==
	    p->ref_bytes && mem.kv_bytes_full == p->ref_bytes_full,
	    "gemma3-270m: %d tokens allocate the plan's %llu bytes of a full "
	    "%llu (%.1f%%; got %llu of %llu)", n,
	    (unsigned long long)p->ref_bytes,
	    (unsigned long long)p->ref_bytes_full,
	    100.0 * (double)mem.kv_bytes / (double)mem.kv_bytes_full,
	    (unsigned long long)mem.kv_bytes,
	    (unsigned long long)mem.kv_bytes_full);
out:
	free(ids);
	kvx_ctx_free(&c);
	kvx_plan_free(&p);
	kvx_model_close(&m);
}

int
main(void)
{
	char cmd[600];

	if (mkdtemp(tmpdir) == NULL)
		tap_skip_all("no scratch directory");
	test_format();
	test_bad();
	test_tokens();
	test_rule();
	test_model();
	test_gemma_plan();
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		diag("could not remove %s", tmpdir);
	return tap_done();
}
