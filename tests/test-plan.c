/*
 * test-plan.c - kvx plan files: round trips, fixtures, validation errors,
 * model checks, token counts and saving rules.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plan.h"
#include "tap.h"

static char tmpdir[] = "/tmp/kvx-test-plan-XXXXXX";
static const char *srcdir;

/* Path of a fixture in tests/data. */
static const char *
fixture(const char *name)
{
	static char buf[1024];

	snprintf(buf, sizeof buf, "%s/tests/data/%s", srcdir, name);
	return buf;
}

/* Path of a scratch file. */
static const char *
scratch(const char *name, char *buf, size_t size)
{
	snprintf(buf, size, "%s/%s", tmpdir, name);
	return buf;
}

/* Whole file into a malloc'd buffer. */
static char *
slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	buf = malloc((size_t)n + 1);
	*len = fread(buf, 1, (size_t)n, f);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

/* Deterministic uniform numbers in [0, 1). */
static double
rnd(uint64_t *s)
{
	*s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
	return (double)(*s >> 11) / 9007199254740992.0;
}

/* Field-by-field equality; names the first difference in why. */
static int
plans_equal(const kvx_plan *a, const kvx_plan *b, char *why, size_t size)
{
	int i, n;

#define DIFF(cond, name) do { if (cond) { \
	snprintf(why, size, "%s differs", name); return 0; } } while (0)
	DIFF(a->version != b->version, "version");
	DIFF(strcmp(a->method, b->method), "method");
	DIFF(strcmp(a->arch, b->arch), "arch");
	DIFF(strcmp(a->name, b->name), "name");
	DIFF(a->n_layer != b->n_layer, "n_layer");
	DIFF(a->n_head != b->n_head, "n_head");
	DIFF(a->n_head_kv != b->n_head_kv, "n_head_kv");
	DIFF(a->head_dim != b->head_dim, "head_dim");
	DIFF(strcmp(a->fingerprint, b->fingerprint), "fingerprint");
	DIFF(a->budget_kind != b->budget_kind, "budget_kind");
	DIFF(a->budget != b->budget, "budget");
	DIFF(a->ref_context != b->ref_context, "ref_context");
	DIFF(a->ref_bytes != b->ref_bytes, "ref_bytes");
	DIFF(a->ref_bytes_full != b->ref_bytes_full, "ref_bytes_full");
	DIFF(a->window != b->window, "window");
	DIFF(a->pool != b->pool, "pool");
	DIFF(a->pool_kernel != b->pool_kernel, "pool_kernel");
	DIFF(a->gqa != b->gqa, "gqa");
	DIFF(a->sinks != b->sinks, "sinks");
	DIFF(a->min_tokens != b->min_tokens, "min_tokens");
	DIFF(a->scorer != b->scorer, "scorer");
	DIFF(a->ea_queries != b->ea_queries, "ea_queries");
	DIFF(a->ea_future != b->ea_future, "ea_future");
	DIFF(a->ea_cov != b->ea_cov, "ea_cov");
	DIFF(a->ea_vnorm != b->ea_vnorm, "ea_vnorm");
	DIFF(a->kz_chunk != b->kz_chunk, "kz_chunk");
	DIFF(a->kz_prompt != b->kz_prompt, "kz_prompt");
	DIFF(a->mode != b->mode, "mode");
	DIFF(a->alpha != b->alpha, "alpha");
	DIFF(strcmp(a->solver, b->solver), "solver");
	DIFF(a->objective != b->objective, "objective");
	DIFF(a->predicted_retention != b->predicted_retention,
	    "predicted_retention");
	DIFF(a->uniform_retention != b->uniform_retention,
	    "uniform_retention");
	DIFF(strcmp(a->corpus, b->corpus), "corpus");
	DIFF(a->samples != b->samples, "samples");
	DIFF(a->sample_tokens != b->sample_tokens, "sample_tokens");
	DIFF(a->seed != b->seed, "seed");
	DIFF(strcmp(a->tool_version, b->tool_version), "tool_version");
	DIFF(strcmp(a->created_by, b->created_by), "created_by");
#undef DIFF
	n = plan_n_budgets(a);
	for (i = 0; i < n; i++)
		if (a->budgets[i] != b->budgets[i]) {
			snprintf(why, size, "budgets[%d] %.17g != %.17g", i,
			    a->budgets[i], b->budgets[i]);
			return 0;
		}
	return 1;
}

/* A model identity to plan for, without opening a model. */
static void
toy_info(kvx_model_info *info)
{
	memset(info, 0, sizeof *info);
	info->arch = "llama";
	info->name = "toy";
	info->n_layer = 5;
	info->n_head = 12;
	info->n_head_kv = 4;
	info->head_dim = 64;
	snprintf(info->fingerprint, sizeof info->fingerprint, "%s",
	    "3f2a9c0b1d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeef");
}

/*
 * Build a plan with random budgets and awkward strings, save, load, save
 * again: both files byte-identical, every field equal.
 */
static void
test_round_trip(int mode, int kind, uint64_t seed)
{
	static const char *corpora[] = {
		"null", "yes", "0.25", "a: b # c", "it's \"quoted\"",
		"Wikipedia (de) \xc3\xa4\xc3\xb6\xc3\xbc", "~", "1e5"
	};
	kvx_model_info info;
	kvx_plan *p, *q = NULL;
	char a[512], b[512], why[128];
	char *ta, *tb;
	size_t la, lb;
	kvx_status st;
	int i, n, k = (int)(seed % 8);

	toy_info(&info);
	st = plan_new(&info, mode, 0.25, &p);
	if (!ok(st == KVX_OK, "plan_new mode %d: %s", mode, kvx_errmsg()))
		return;
	n = plan_n_budgets(p);
	ok(n == (mode == KVX_PLAN_HYBRID ? 5 : 20), "plan_n_budgets %d", n);
	for (i = 0; i < n; i++)
		p->budgets[i] = i % 7 == 0 ? 1.0 / 3 : rnd(&seed);
	p->budgets[n - 1] = 0;
	if (kind == PLAN_BUDGET_TOKENS) {
		p->budget_kind = PLAN_BUDGET_TOKENS;
		p->budget = 777;
		p->ref_context = 8192;
	}
	p->alpha = mode == KVX_PLAN_HYBRID ? 0.1 : 0;
	snprintf(p->method, sizeof p->method, "%s",
	    mode == KVX_PLAN_HYBRID ? "ada" : "kvx");
	snprintf(p->solver, sizeof p->solver, "greedy");
	p->objective = -rnd(&seed) * 1e6;
	p->predicted_retention = rnd(&seed);
	p->uniform_retention = 0.1 + 0.2;
	snprintf(p->corpus, sizeof p->corpus, "%s", corpora[k]);
	snprintf(p->tool_version, sizeof p->tool_version, "%s",
	    corpora[(k + 1) % 8]);
	p->samples = 8;
	p->sample_tokens = 2048;
	p->seed = seed;
	snprintf(p->created_by, sizeof p->created_by, "test-plan");
	snprintf(p->name, sizeof p->name, "%s", corpora[(k + 2) % 8]);
	/* seeds 4 to 7 cover every scorer and each parameter's range */
	if (k >= 4)
		plan_set_scorer(p, k % 3);
	if (p->scorer == PLAN_SCORER_EA) {
		/* and seed 15 the whole prompt, written "all" */
		p->ea_queries = k == 4 ? 2 : seed == 15 ? PLAN_EA_ALL :
		    KVX_WINDOW_MAX;
		p->ea_future = k == 4 ? 1 : PLAN_EA_MAX_FUTURE;
		p->ea_cov = k == 4 ? PLAN_COV_NONE : PLAN_COV_DIAG;
		p->ea_vnorm = k == 4 ? 0 : 1;
	}
	if (p->scorer == PLAN_SCORER_KVZIP) {
		p->kz_chunk = k == 5 ? 1 : KVX_WINDOW_MAX;
		p->kz_prompt = k == 5 ? PLAN_KVZIP_PLAIN : PLAN_KVZIP_CHAT;
	}
	plan_update_bytes(p, 2);

	snprintf(why, sizeof why, "rt-%d-%d-%d-a.yaml", mode, kind, k);
	st = kvx_plan_save(p, scratch(why, a, sizeof a), 0);
	ok(st == KVX_OK, "save %s: %s", a, kvx_errmsg());
	st = kvx_plan_load(a, &q);
	ok(st == KVX_OK, "load it back: %s", kvx_errmsg());
	if (q != NULL)
		ok(plans_equal(p, q, why, sizeof why),
		    "every field survives the round trip (%s)",
		    plans_equal(p, q, why, sizeof why) ? "equal" : why);
	snprintf(why, sizeof why, "rt-%d-%d-%d-b.yaml", mode, kind, k);
	st = q ? kvx_plan_save(q, scratch(why, b, sizeof b), 0) : KVX_ERR_ARG;
	ta = slurp(a, &la);
	tb = slurp(b, &lb);
	ok(st == KVX_OK && ta && tb && la == lb && memcmp(ta, tb, la) == 0,
	    "second save is byte-identical (%zu bytes)", la);
	free(ta);
	free(tb);
	kvx_plan_free(&p);
	kvx_plan_free(&q);
	ok(p == NULL && q == NULL, "kvx_plan_free clears the handle");
}

/* Fixtures that must load, with values read by hand from the files. */
static void
test_valid_fixtures(void)
{
	kvx_plan *p;
	kvx_status st;

	st = kvx_plan_load(fixture("plan-static-fraction.yaml"), &p);
	if (ok(st == KVX_OK, "static fraction fixture loads: %s",
	    kvx_errmsg())) {
		ok(kvx_plan_get_mode(p) == KVX_PLAN_STATIC &&
		    p->n_layer == 4 && p->n_head == 4 && p->n_head_kv == 2 &&
		    p->head_dim == 8 && strcmp(p->arch, "llama") == 0,
		    "static fixture: identity");
		ok(p->budget_kind == PLAN_BUDGET_FRACTION && p->budget == 0.4 &&
		    p->ref_context == 100 && p->ref_bytes == 10624 &&
		    p->ref_bytes_full == 25600, "static fixture: budget");
		ok(p->window == 4 && p->pool == PLAN_POOL_MAX &&
		    p->pool_kernel == 3 && p->gqa == PLAN_GQA_MEAN &&
		    p->sinks == 2 && p->min_tokens == 0,
		    "static fixture: selection");
		ok(kvx_plan_get_budget(p, 2, 1) == 0.375 &&
		    kvx_plan_get_budget(p, 1, 0) == 1.0 &&
		    kvx_plan_get_budget(p, 3, 1) == 0.7 &&
		    kvx_plan_get_budget(p, 4, 0) == -1 &&
		    kvx_plan_get_budget(p, 0, 2) == -1,
		    "static fixture: budgets by (layer, head)");
		ok(p->seed == UINT64_MAX && p->samples == 8 &&
		    strcmp(p->corpus, "tests: toy corpus") == 0 &&
		    strcmp(p->solver, "dp") == 0 && p->objective == 12.5,
		    "static fixture: provenance");
		/* By hand: tokens at 100 are 50 25 100 6 13 38 30 70 = 332,
		 * times head_dim 8, K and V, 2 bytes. */
		p->ref_bytes = p->ref_bytes_full = 0;
		plan_update_bytes(p, 2);
		ok(p->ref_bytes == 332 * 8 * 2 * 2 &&
		    p->ref_bytes_full == 4 * 2 * 100 * 8 * 2 * 2,
		    "plan_update_bytes static: %llu / %llu",
		    (unsigned long long)p->ref_bytes,
		    (unsigned long long)p->ref_bytes_full);
		kvx_plan_free(&p);
	}

	st = kvx_plan_load(fixture("plan-hybrid-tokens.yaml"), &p);
	if (ok(st == KVX_OK, "hybrid tokens fixture loads: %s",
	    kvx_errmsg())) {
		ok(kvx_plan_get_mode(p) == KVX_PLAN_HYBRID &&
		    p->alpha == 0.25 && p->budget_kind == PLAN_BUDGET_TOKENS &&
		    p->budget == 20 && p->pool == PLAN_POOL_AVG &&
		    p->gqa == PLAN_GQA_MAX && p->min_tokens == 8 &&
		    strcmp(p->method, "ada") == 0,
		    "hybrid fixture: fields");
		ok(kvx_plan_get_budget(p, 3, -1) == 0.4 &&
		    kvx_plan_get_budget(p, 3, 1) == 0.4 &&
		    kvx_plan_get_budget(p, -1, 0) == -1,
		    "hybrid fixture: one budget per layer");
		/* Token budgets are planned at reference_context 100 and
		 * do not grow with n; floor is max(8, 4 + 2) = 8. */
		ok(plan_tokens(p, 0, -1, 1000) == 20 &&
		    plan_tokens(p, 1, -1, 1000) == 10 &&
		    plan_tokens(p, 2, -1, 1000) == 8 &&
		    plan_tokens(p, 3, -1, 1000) == 40,
		    "hybrid tokens plan: fixed counts 20 10 8 40");
		ok(plan_tokens(p, 0, -1, 15) == 15 &&
		    plan_tokens(p, 1, -1, 15) == 10 &&
		    plan_tokens(p, 2, -1, 5) == 5,
		    "hybrid tokens plan: clamped to the prompt");
		p->ref_bytes = p->ref_bytes_full = 0;
		plan_update_bytes(p, 4);
		ok(p->ref_bytes == (20 + 10 + 8 + 40) * 2 * 8 * 2 * 4 &&
		    p->ref_bytes_full == 4 * 2 * 100 * 8 * 2 * 4,
		    "plan_update_bytes hybrid: %llu / %llu",
		    (unsigned long long)p->ref_bytes,
		    (unsigned long long)p->ref_bytes_full);
		kvx_plan_free(&p);
	}

	st = kvx_plan_load(fixture("plan-static-tokens.yaml"), &p);
	if (ok(st == KVX_OK, "static tokens fixture loads: %s",
	    kvx_errmsg())) {
		ok(p->budget_kind == PLAN_BUDGET_TOKENS && p->budget == 512 &&
		    p->pool == PLAN_POOL_NONE && p->pool_kernel == 1 &&
		    p->n_head_kv == 3 && p->ref_bytes == 0 &&
		    plan_tokens(p, 1, 2, 100000) == 512 &&
		    plan_tokens(p, 1, 2, 300) == 300,
		    "static tokens fixture: 512 tokens at any long prompt");
		kvx_plan_free(&p);
	}

	st = kvx_plan_load(fixture("plan-hybrid-fraction.yaml"), &p);
	if (ok(st == KVX_OK, "hybrid fraction fixture loads: %s",
	    kvx_errmsg())) {
		ok(p->alpha == 0 && p->n_layer == 3 &&
		    kvx_plan_get_budget(p, 0, -1) == 0.75 &&
		    plan_tokens(p, 0, -1, 1000) == 750 &&
		    plan_tokens(p, 2, -1, 1000) == 250,
		    "hybrid fraction fixture: budgets scale with n");
		kvx_plan_free(&p);
	}
}

/*
 * kvx_plan_get_info: every field of two fixtures as the files give them,
 * strings that live in the plan, and the model's name as plan_new keeps
 * it.
 */
static void
test_info(void)
{
	kvx_model_info mi;
	kvx_plan_info in;
	kvx_plan *p;
	char name[80];
	size_t len;
	int i, zero;

	if (!ok(kvx_plan_load(fixture("plan-static-fraction.yaml"), &p) ==
	    KVX_OK, "info: static fixture loads: %s", kvx_errmsg()))
		return;
	memset(&in, 0xff, sizeof in);
	ok(kvx_plan_get_info(p, &in) == KVX_OK &&
	    strcmp(in.method, "kvx") == 0 && in.mode == KVX_PLAN_STATIC &&
	    in.budget_kind == KVX_BUDGET_FRACTION && in.budget == 0.4 &&
	    in.window == 4 && in.sinks == 2 && strcmp(in.pool, "max") == 0 &&
	    in.pool_kernel == 3 && strcmp(in.gqa, "mean") == 0 &&
	    in.alpha == 0 && in.min_tokens == 0 && in.ref_context == 100 &&
	    in.ref_bytes == 10624 && in.ref_bytes_full == 25600,
	    "info: static fixture's method, budget and selection");
	ok(strcmp(in.arch, "llama") == 0 &&
	    strcmp(in.name, "Toy LM: 4 layers") == 0 && in.n_layer == 4 &&
	    in.n_head == 4 && in.n_head_kv == 2 && in.head_dim == 8 &&
	    strcmp(in.fingerprint, "0123456789abcdef0123456789abcdef"
	    "0123456789abcdef0123456789abcdef") == 0 &&
	    in.method == p->method && in.fingerprint == p->fingerprint,
	    "info: static fixture's model, strings inside the plan");
	for (zero = 1, i = 0; i < 11; i++)
		zero &= in.reserved[i] == 0;
	ok(zero, "info: reserved is zero");
	ok(strcmp(in.scorer, "snapkv") == 0 && in.ea_queries == 0 &&
	    in.ea_future == 0 && in.ea_covariance == NULL &&
	    in.ea_value_norm == 0 && in.kvzip_chunk == 0 &&
	    in.kvzip_prompt == NULL,
	    "info: a plan without a scorer reads as snapkv, no parameters");
	kvx_plan_free(&p);

	if (!ok(kvx_plan_load(fixture("plan-hybrid-tokens.yaml"), &p) ==
	    KVX_OK, "info: hybrid fixture loads: %s", kvx_errmsg()))
		return;
	ok(kvx_plan_get_info(p, &in) == KVX_OK &&
	    strcmp(in.method, "ada") == 0 && in.mode == KVX_PLAN_HYBRID &&
	    in.budget_kind == KVX_BUDGET_TOKENS && in.budget == 20 &&
	    in.alpha == 0.25 && strcmp(in.pool, "avg") == 0 &&
	    in.pool_kernel == 5 && strcmp(in.gqa, "max") == 0 &&
	    in.min_tokens == 8 && in.ref_bytes == 9984 &&
	    in.ref_bytes_full == 51200 && strcmp(in.name, "") == 0 &&
	    strcmp(in.fingerprint, "fedcba9876543210fedcba9876543210"
	    "fedcba9876543210fedcba9876543210") == 0,
	    "info: hybrid tokens fixture, no model name");
	kvx_plan_free(&p);

	if (!ok(kvx_plan_load(fixture("plan-expected-attention.yaml"), &p) ==
	    KVX_OK, "info: expected-attention fixture loads: %s",
	    kvx_errmsg()))
		return;
	memset(&in, 0xff, sizeof in);
	ok(kvx_plan_get_info(p, &in) == KVX_OK &&
	    strcmp(in.scorer, "expected-attention") == 0 &&
	    in.ea_queries == 64 && in.ea_future == 256 &&
	    strcmp(in.ea_covariance, "diagonal") == 0 &&
	    in.ea_value_norm == 0 && in.window == 4,
	    "info: expected-attention fixture's scorer and parameters");
	ok(kvx_plan_get_info(NULL, &in) == KVX_ERR_ARG &&
	    kvx_plan_get_info(p, NULL) == KVX_ERR_ARG,
	    "info: a NULL plan or info is refused");
	kvx_plan_free(&p);

	if (!ok(kvx_plan_load(fixture("plan-kvzip.yaml"), &p) == KVX_OK,
	    "info: kvzip fixture loads: %s", kvx_errmsg()))
		return;
	memset(&in, 0xff, sizeof in);
	ok(kvx_plan_get_info(p, &in) == KVX_OK &&
	    strcmp(in.scorer, "kvzip") == 0 && in.kvzip_chunk == 64 &&
	    strcmp(in.kvzip_prompt, "plain") == 0 && in.ea_queries == 0 &&
	    in.ea_covariance == NULL,
	    "info: kvzip fixture's scorer and parameters");
	kvx_plan_free(&p);

	/* a name that does not fit is cut before the character that
	   crosses the end (here a two-byte one at bytes 63 and 64) */
	toy_info(&mi);
	memset(name, 'a', 62);
	snprintf(name + 62, sizeof name - 62, "\xc3\xa4 tail");
	mi.name = name;
	len = 0;
	if (plan_new(&mi, KVX_PLAN_STATIC, 0.5, &p) == KVX_OK &&
	    kvx_plan_get_info(p, &in) == KVX_OK &&
	    strncmp(in.name, name, 62) == 0)
		len = strlen(in.name);
	ok(len == 62, "info: a long name is cut at a character boundary "
	    "(%zu bytes)", len);
	kvx_plan_free(&p);
	mi.name = "two\nlines";
	ok(plan_new(&mi, KVX_PLAN_STATIC, 0.5, &p) == KVX_OK &&
	    kvx_plan_get_info(p, &in) == KVX_OK && in.name[0] == '\0',
	    "info: a name with a control character is left out");
	kvx_plan_free(&p);
}

/* One invalid fixture per error class: code, position and keyword. */
static void
test_invalid_fixtures(void)
{
	static const struct {
		const char	*file;
		kvx_status	 code;
		const char	*where;
		const char	*word;
	} bad[] = {
		{ "syntax", KVX_ERR_FORMAT, ":28:5:", "syntax" },
		{ "utf8", KVX_ERR_FORMAT, ":5:11:", "UTF-8" },
		{ "unknown-key", KVX_ERR_PLAN, ":17:3:", "unknown key 'windw'" },
		{ "type-string", KVX_ERR_PLAN, ":6:11:", "must be an integer" },
		{ "type-mapping", KVX_ERR_PLAN, ":25:3:", "not a mapping" },
		{ "sequence-for-mapping", KVX_ERR_PLAN, ":16:12:",
		    "must be a mapping" },
		{ "missing-key", KVX_ERR_PLAN, ":5:3:",
		    "missing key 'head_dim'" },
		{ "rows", KVX_ERR_PLAN, ":25:3:", "has 3 rows" },
		{ "columns", KVX_ERR_PLAN, ":26:5:", "has 3 entries" },
		{ "hybrid-rows", KVX_ERR_PLAN, ":26:5:", "not a sequence" },
		{ "range", KVX_ERR_PLAN, ":27:13:", "[0, 1]" },
		{ "nan", KVX_ERR_PLAN, ":28:6:", "finite" },
		{ "inf", KVX_ERR_PLAN, ":12:13:", "finite" },
		{ "not-a-number", KVX_ERR_PLAN, ":25:11:", "'0x10'" },
		{ "negative", KVX_ERR_PLAN, ":21:10:", "got -2" },
		{ "zero", KVX_ERR_PLAN, ":9:13:", "got 0" },
		{ "even-kernel", KVX_ERR_PLAN, ":19:16:", "odd" },
		{ "window", KVX_ERR_PLAN, ":15:11:", "[1, 128], got 129" },
		{ "duplicate", KVX_ERR_PLAN, ":8:3:", "duplicate key 'layers'" },
		{ "version", KVX_ERR_PLAN, ":2:11:", "version 2" },
		{ "both-budgets", KVX_ERR_PLAN, ":13:3:", "exactly one" },
		{ "tokens-range", KVX_ERR_PLAN, ":12:11:", "reference_context" },
		{ "alpha-static", KVX_ERR_PLAN, ":24:1:", "hybrid" },
		{ "enum", KVX_ERR_PLAN, ":18:9:", "'median'" },
		{ "fingerprint", KVX_ERR_PLAN, ":10:16:", "64" },
		{ "kv-heads", KVX_ERR_PLAN, ":8:13:", "does not divide" },
		{ "bytes", KVX_ERR_PLAN, ":14:20:", "expected 10624" },
		{ "two-docs", KVX_ERR_PLAN, ":30:1:", "more than one" },
		{ "empty", KVX_ERR_PLAN, ":1:1:", "empty" },
		{ "scorer", KVX_ERR_PLAN, ":21:11:", "'h2o'" },
		{ "ea-missing", KVX_ERR_PLAN, ":2:1:",
		    "missing key 'expected_attention'" },
		{ "ea-key", KVX_ERR_PLAN, ":23:3:", "missing key 'future'" },
		{ "ea-range", KVX_ERR_PLAN, ":23:12:",
		    "[2, 128] or all, got 129" },
		{ "ea-word", KVX_ERR_PLAN, ":23:12:",
		    "an integer or all, got 'every'" },
		{ "ea-unused", KVX_ERR_PLAN, ":21:1:", "only read when" },
		{ "ea-enum", KVX_ERR_PLAN, ":25:15:", "'low-rank'" },
		{ "kvzip-missing", KVX_ERR_PLAN, ":2:1:",
		    "missing key 'kvzip'" },
		{ "kvzip-key", KVX_ERR_PLAN, ":24:3:", "missing key 'prompt'" },
		{ "kvzip-range", KVX_ERR_PLAN, ":24:10:", "[1, 128], got 129" },
		{ "kvzip-unused", KVX_ERR_PLAN, ":21:1:", "is kvzip" },
		{ "kvzip-enum", KVX_ERR_PLAN, ":25:11:", "'verbatim'" },
	};
	char name[128], path[1024];
	const char *msg;
	kvx_plan *p;
	kvx_status st;
	size_t i;

	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		snprintf(name, sizeof name, "plan-bad-%s.yaml", bad[i].file);
		snprintf(path, sizeof path, "%s", fixture(name));
		p = (kvx_plan *)&p;
		st = kvx_plan_load(path, &p);
		msg = kvx_errmsg();
		ok(st == bad[i].code && p == NULL &&
		    strncmp(msg, path, strlen(path)) == 0 &&
		    strstr(msg, bad[i].where) != NULL &&
		    strstr(msg, bad[i].word) != NULL &&
		    strchr(msg, '\n') == NULL,
		    "%s: code %d, '%s' and '%s' in \"%s\"", bad[i].file, st,
		    bad[i].where, bad[i].word, msg);
	}
}

/* Each identity field, changed alone, is named in the mismatch. */
static void
test_check_info(void)
{
	kvx_model_info info, m;
	kvx_plan *p;
	int i;
	static const char *want[] = {
		"arch llama, model has gemma3", "layers 5, model has 6",
		"heads 12, model has 8", "kv_heads 4, model has 2",
		"head_dim 64, model has 128", "fingerprint 3f2a9c0b1d4e"
	};

	toy_info(&info);
	if (plan_new(&info, KVX_PLAN_STATIC, 0.5, &p) != KVX_OK) {
		ok(0, "plan_new: %s", kvx_errmsg());
		return;
	}
	ok(plan_check_info(p, &info) == KVX_OK, "same model: no mismatch");
	for (i = 0; i < 6; i++) {
		m = info;
		switch (i) {
		case 0: m.arch = "gemma3"; break;
		case 1: m.n_layer = 6; break;
		case 2: m.n_head = 8; break;
		case 3: m.n_head_kv = 2; break;
		case 4: m.head_dim = 128; break;
		case 5: m.fingerprint[0] = '0'; break;
		}
		ok(plan_check_info(p, &m) == KVX_ERR_MISMATCH &&
		    strstr(kvx_errmsg(), want[i]) != NULL,
		    "mismatch names '%s': \"%s\"", want[i], kvx_errmsg());
	}
	m = info;
	m.n_head_kv = 2;
	m.n_layer = 7;
	ok(plan_check_info(p, &m) == KVX_ERR_MISMATCH &&
	    strstr(kvx_errmsg(), "layers 5") != NULL,
	    "the first differing field is named");
	ok(kvx_plan_check(p, NULL) == KVX_ERR_ARG, "kvx_plan_check(NULL model)");
	plan_set_scorer(p, PLAN_SCORER_EA);
	ok(plan_check_info(p, &info) == KVX_OK, "expected-attention runs");
	kvx_plan_free(&p);

	if (!ok(kvx_plan_load(fixture("plan-kvzip.yaml"), &p) == KVX_OK,
	    "kvzip fixture loads: %s", kvx_errmsg()))
		return;
	m = info;
	m.n_layer = 4;
	m.n_head = 4;
	m.n_head_kv = 2;
	m.head_dim = 8;
	snprintf(m.fingerprint, sizeof m.fingerprint, "%s", p->fingerprint);
	ok(plan_check_info(p, &m) == KVX_OK, "kvzip runs: %s", kvx_errmsg());
	kvx_plan_free(&p);
}

/* plan_tokens: b = clamp(round(f n), floor, n). */
static void
test_tokens(void)
{
	kvx_model_info info;
	kvx_plan *p;

	toy_info(&info);
	if (plan_new(&info, KVX_PLAN_STATIC, 0.25, &p) != KVX_OK) {
		ok(0, "plan_new: %s", kvx_errmsg());
		return;
	}
	p->budgets[0] = 0;
	/* window 32 + sinks 4: floor 36 */
	ok(plan_tokens(p, 0, 0, 1000) == 36, "f = 0 keeps the floor: %d",
	    plan_tokens(p, 0, 0, 1000));
	p->budgets[1] = 1;
	ok(plan_tokens(p, 0, 1, 1000) == 1000 && plan_tokens(p, 0, 1, 1) == 1,
	    "f = 1 keeps everything");
	ok(plan_tokens(p, 0, 0, 10) == 10 && plan_tokens(p, 0, 0, 1) == 1 &&
	    plan_tokens(p, 0, 0, 0) == 0 && plan_tokens(p, 0, 0, -5) == 0,
	    "tiny n: the floor is limited to n");
	p->budgets[2] = 0.5;
	ok(plan_tokens(p, 0, 2, 101) == 51 && plan_tokens(p, 0, 2, 100) == 50,
	    "rounding: 50.5 -> 51");
	p->min_tokens = 60;
	ok(plan_tokens(p, 0, 2, 100) == 60 && plan_tokens(p, 0, 2, 59) == 59,
	    "min_tokens above window + sinks sets the floor");
	ok(plan_tokens(p, 5, 0, 100) == 0 && plan_tokens(p, 0, 4, 100) == 0 &&
	    plan_tokens(p, 0, -1, 100) == 0 && plan_tokens(NULL, 0, 0, 9) == 0,
	    "out-of-range layer or head gives 0");
	kvx_plan_free(&p);
}

/* Saving never clobbers by accident and leaves no temporaries. */
static void
test_save_rules(void)
{
	kvx_model_info info;
	kvx_plan *p, *q = NULL;
	char path[512], *text;
	struct dirent *de;
	size_t len;
	DIR *d;
	int n;

	toy_info(&info);
	if (plan_new(&info, KVX_PLAN_HYBRID, 0.5, &p) != KVX_OK) {
		ok(0, "plan_new: %s", kvx_errmsg());
		return;
	}
	scratch("exists.yaml", path, sizeof path);
	text = "precious\n";
	{
		FILE *f = fopen(path, "w");
		fputs(text, f);
		fclose(f);
	}
	ok(kvx_plan_save(p, path, 0) == KVX_ERR_IO &&
	    strstr(kvx_errmsg(), "exists (use --force to overwrite)") != NULL,
	    "refuses to overwrite: \"%s\"", kvx_errmsg());
	text = slurp(path, &len);
	ok(text && strcmp(text, "precious\n") == 0, "file left untouched");
	free(text);
	ok(kvx_plan_save(p, path, 1) == KVX_OK &&
	    kvx_plan_load(path, &q) == KVX_OK && q->mode == KVX_PLAN_HYBRID,
	    "overwrite when asked: %s", kvx_errmsg());
	kvx_plan_free(&q);

	p->budgets[2] = 1.5;
	ok(kvx_plan_save(p, scratch("invalid.yaml", path, sizeof path), 0) ==
	    KVX_ERR_PLAN && access(path, F_OK) != 0,
	    "an invalid plan is not written: \"%s\"", kvx_errmsg());
	kvx_plan_free(&p);

	n = 0;
	if ((d = opendir(tmpdir)) != NULL) {
		while ((de = readdir(d)) != NULL)
			if (strstr(de->d_name, ".tmp.") != NULL)
				n++;
		closedir(d);
	}
	ok(n == 0, "no temporary files left behind (%d)", n);

	ok(kvx_plan_load(scratch("missing.yaml", path, sizeof path), &q) ==
	    KVX_ERR_IO && q == NULL && strstr(kvx_errmsg(), path) != NULL,
	    "missing file: KVX_ERR_IO \"%s\"", kvx_errmsg());
}

/* A plan held in memory, with and without a name. */
static void
test_load_mem(void)
{
	const char *yaml = "kvx_plan: 1\nmethod: [kvx]\n";
	kvx_plan *p;

	ok(kvx_plan_load_mem(yaml, strlen(yaml), NULL, &p) == KVX_ERR_PLAN &&
	    strncmp(kvx_errmsg(), "<memory>:2:9:", 13) == 0,
	    "unnamed buffer: \"%s\"", kvx_errmsg());
	ok(kvx_plan_load_mem(yaml, 0, "x.yaml", &p) == KVX_ERR_PLAN &&
	    strstr(kvx_errmsg(), "x.yaml:1:1: empty") != NULL,
	    "empty buffer: \"%s\"", kvx_errmsg());
}

/*
 * The plans in kvx-plan(5)'s EXAMPLES load, and the numbers the page
 * states for them hold.
 */
static void
test_man_examples(void)
{
	static const int want[] = { 50, 25, 100, 6, 13, 38, 30, 70 };
	char path[1024], *text, *line, *save, ex[2][4096];
	size_t len, n[2] = { 0, 0 };
	int in = 0, k = -1, i, good;
	kvx_plan *p;

	snprintf(path, sizeof path, "%s/man/kvx-plan.5", srcdir);
	if (!ok((text = slurp(path, &len)) != NULL, "read %s", path))
		return;
	for (line = strtok_r(text, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save)) {
		if (strcmp(line, ".Bd -literal -offset indent") == 0) {
			in = 1;
			continue;
		}
		if (strcmp(line, ".Ed") == 0) {
			in = 0;
			continue;
		}
		if (in == 1 && strcmp(line, "kvx_plan: 1") == 0 && k < 1)
			in = 2, k++;
		if (in == 2 && n[k] + strlen(line) + 2 < sizeof ex[k]) {
			memcpy(ex[k] + n[k], line, strlen(line));
			n[k] += strlen(line);
			ex[k][n[k]++] = '\n';
		}
		in = in == 1 ? 3 : in;
	}
	free(text);
	if (!ok(k == 1, "two example plans in the man page"))
		return;
	if (ok(kvx_plan_load_mem(ex[0], n[0], "example 1", &p) == KVX_OK,
	    "example 1 loads: %s", kvx_errmsg())) {
		for (i = 0, good = 1; i < 8; i++)
			good &= plan_tokens(p, i / 2, i % 2, 100) == want[i];
		p->ref_bytes = 0;
		plan_update_bytes(p, 2);
		ok(good && p->ref_bytes == 10624 && p->ref_bytes_full == 25600,
		    "example 1: tokens and bytes as the page states");
		kvx_plan_free(&p);
	}
	if (ok(kvx_plan_load_mem(ex[1], n[1], "example 2", &p) == KVX_OK,
	    "example 2 loads: %s", kvx_errmsg())) {
		ok(plan_tokens(p, 0, -1, 40) == 20 &&
		    plan_tokens(p, 1, -1, 40) == 10 &&
		    plan_tokens(p, 2, -1, 40) == 8 &&
		    plan_tokens(p, 3, -1, 40) == 40 &&
		    plan_tokens(p, 3, -1, 5000) == 40 &&
		    plan_tokens(p, 3, -1, 39) == 39,
		    "example 2: 20 10 8 40 tokens from 40 tokens on");
		kvx_plan_free(&p);
	}
}

/* Removes the scratch directory. */
static void
cleanup(void)
{
	struct dirent *de;
	char path[1024];
	DIR *d;

	if ((d = opendir(tmpdir)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "%s/%s", tmpdir, de->d_name);
		unlink(path);
	}
	closedir(d);
	rmdir(tmpdir);
}

/* Runs every group of checks in a scratch directory. */
int
main(void)
{
	if ((srcdir = getenv("top_srcdir")) == NULL)
		srcdir = ".";
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	test_round_trip(KVX_PLAN_STATIC, PLAN_BUDGET_FRACTION, 0);
	test_round_trip(KVX_PLAN_STATIC, PLAN_BUDGET_FRACTION, 1);
	test_round_trip(KVX_PLAN_HYBRID, PLAN_BUDGET_FRACTION, 2);
	test_round_trip(KVX_PLAN_STATIC, PLAN_BUDGET_TOKENS, 3);
	test_round_trip(KVX_PLAN_HYBRID, PLAN_BUDGET_TOKENS, 4);
	test_round_trip(KVX_PLAN_STATIC, PLAN_BUDGET_FRACTION, 5);
	test_round_trip(KVX_PLAN_HYBRID, PLAN_BUDGET_FRACTION, 6);
	test_round_trip(KVX_PLAN_STATIC, PLAN_BUDGET_TOKENS, 7);
	test_round_trip(KVX_PLAN_HYBRID, PLAN_BUDGET_FRACTION, 15);
	test_valid_fixtures();
	test_info();
	test_invalid_fixtures();
	test_check_info();
	test_tokens();
	test_save_rules();
	test_load_mem();
	test_man_examples();
	cleanup();
	return tap_done();
}
