/*
 * plan_schema.c - kvx plans in memory: the table of fields that drives
 * loading, validation and saving, validation itself, and the arithmetic
 * of a plan against a model (kept tokens, bytes, identity).  The file
 * format is described in kvx-plan(5).
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "plan_schema.h"
#include "select.h"
#include "util.h"

/*
 * Limits keep every byte count below 2^64 (layers * kv_heads * head_dim *
 * 2 * 8 bytes * context < 2^63) and reject absurd values early.
 */
#define PLAN_MAX_LAYERS		1024
#define PLAN_MAX_HEADS		4096
#define PLAN_MAX_HEAD_DIM	4096
#define PLAN_MAX_POOL_KERNEL	255
#define PLAN_MAX_BYTES_PER_ELEM	8
#define PLAN_DEFAULT_CONTEXT	4096

static const char *const method_names[] = {
	"uniform", "pyramid", "ada", "layer", "kvx", "full", NULL
};
static const char *const mode_names[] = { "static", "hybrid", NULL };
static const char *const pool_names[] = { "max", "avg", "none", NULL };
static const char *const gqa_names[] = { "mean", "max", NULL };
static const char *const scorer_names[] = {
	"snapkv", "expected-attention", "kvzip", NULL
};
static const char *const cov_names[] = { "full", "diagonal", "none", NULL };
static const char *const kz_prompt_names[] = { "chat", "plain", NULL };
static const char *const bool_names[] = { "false", "true", NULL };
/* --- the schema ---------------------------------------------------------- */

#define OFF(m)	offsetof(struct kvx_plan, m)
#define SZ(m)	sizeof(((struct kvx_plan *)0)->m)

/* In file order: the emitter walks this table, the loader checks it. */
const struct field plan_fields[] = {
	{ "", "kvx_plan", F_SPECIAL, 0, 0, 0, 0, 0, NULL },
	{ "", "method", F_STR, OFF(method), SZ(method), 0, 0, FL_WORDS,
	    method_names },
	{ "", "model", F_SECTION, 0, 0, 0, 0, 0, NULL },
	{ "model", "arch", F_STR, OFF(arch), SZ(arch), 0, 0, 0, NULL },
	{ "model", "name", F_STR, OFF(name), SZ(name), 0, 0, FL_OPTIONAL,
	    NULL },
	{ "model", "layers", F_INT, OFF(n_layer), 0, 1, PLAN_MAX_LAYERS, 0,
	    NULL },
	{ "model", "heads", F_INT, OFF(n_head), 0, 1, PLAN_MAX_HEADS, 0,
	    NULL },
	{ "model", "kv_heads", F_INT, OFF(n_head_kv), 0, 1, PLAN_MAX_HEADS, 0,
	    NULL },
	{ "model", "head_dim", F_INT, OFF(head_dim), 0, 1, PLAN_MAX_HEAD_DIM,
	    0, NULL },
	{ "model", "fingerprint", F_STR, OFF(fingerprint), SZ(fingerprint),
	    0, 0, FL_HEX64, NULL },
	{ "model", "sliding_window", F_SPECIAL, 0, 0, 0, 0, FL_OPTIONAL,
	    NULL },
	{ "", "budget", F_SECTION, 0, 0, 0, 0, 0, NULL },
	{ "budget", "fraction", F_SPECIAL, 0, 0, 0, 0, FL_OPTIONAL, NULL },
	{ "budget", "tokens", F_SPECIAL, 0, 0, 0, 0, FL_OPTIONAL, NULL },
	{ "budget", "reference_context", F_I64, OFF(ref_context), 0, 1,
	    PLAN_MAX_CONTEXT, 0, NULL },
	{ "budget", "reference_bytes", F_U64, OFF(ref_bytes), 0, 0, 0,
	    FL_OPTIONAL, NULL },
	{ "budget", "reference_bytes_full", F_U64, OFF(ref_bytes_full), 0, 0,
	    0, FL_OPTIONAL, NULL },
	{ "", "selection", F_SECTION, 0, 0, 0, 0, 0, NULL },
	{ "selection", "window", F_INT, OFF(window), 0, 1, KVX_WINDOW_MAX, 0,
	    NULL },
	{ "selection", "pool", F_ENUM, OFF(pool), 0, 0, 0, 0, pool_names },
	{ "selection", "pool_kernel", F_INT, OFF(pool_kernel), 0, 1,
	    PLAN_MAX_POOL_KERNEL, FL_ODD, NULL },
	{ "selection", "gqa", F_ENUM, OFF(gqa), 0, 0, 0, 0, gqa_names },
	{ "selection", "sinks", F_INT, OFF(sinks), 0, 0, PLAN_MAX_CONTEXT, 0,
	    NULL },
	{ "selection", "min_tokens", F_INT, OFF(min_tokens), 0, 0,
	    PLAN_MAX_CONTEXT, 0, NULL },
	{ "selection", "scorer", F_ENUM, OFF(scorer), 0, 0, 0, FL_OPTIONAL,
	    scorer_names },
	{ "", "expected_attention", F_SECTION, 0, 0, 0, 0,
	    FL_OPTIONAL | FL_EA, NULL },
	{ "expected_attention", "queries", F_INT, OFF(ea_queries), 0, 2,
	    KVX_WINDOW_MAX, FL_EA | FL_ALL, NULL },
	{ "expected_attention", "future", F_INT, OFF(ea_future), 0, 1,
	    PLAN_EA_MAX_FUTURE, FL_EA, NULL },
	{ "expected_attention", "covariance", F_ENUM, OFF(ea_cov), 0, 0, 0,
	    FL_EA, cov_names },
	{ "expected_attention", "value_norm", F_ENUM, OFF(ea_vnorm), 0, 0, 0,
	    FL_EA, bool_names },
	{ "", "kvzip", F_SECTION, 0, 0, 0, 0, FL_OPTIONAL | FL_KVZIP, NULL },
	{ "kvzip", "chunk", F_INT, OFF(kz_chunk), 0, 1, KVX_WINDOW_MAX,
	    FL_KVZIP, NULL },
	{ "kvzip", "prompt", F_ENUM, OFF(kz_prompt), 0, 0, 0, FL_KVZIP,
	    kz_prompt_names },
	{ "", "mode", F_ENUM, OFF(mode), 0, 0, 0, 0, mode_names },
	{ "", "alpha", F_SPECIAL, 0, 0, 0, 0, FL_OPTIONAL, NULL },
	{ "", "budgets", F_SPECIAL, 0, 0, 0, 0, 0, NULL },
	{ "", "provenance", F_SECTION, 0, 0, 0, 0, FL_OPTIONAL, NULL },
	{ "provenance", "solver", F_STR, OFF(solver), SZ(solver), 0, 0,
	    FL_OPTIONAL, NULL },
	{ "provenance", "objective", F_NUM, OFF(objective), 0, -DBL_MAX,
	    DBL_MAX, FL_OPTIONAL, NULL },
	{ "provenance", "predicted_retention", F_NUM, OFF(predicted_retention),
	    0, 0, 1, FL_OPTIONAL, NULL },
	{ "provenance", "uniform_retention", F_NUM, OFF(uniform_retention),
	    0, 0, 1, FL_OPTIONAL, NULL },
	{ "provenance", "corpus", F_STR, OFF(corpus), SZ(corpus), 0, 0,
	    FL_OPTIONAL, NULL },
	{ "provenance", "samples", F_INT, OFF(samples), 0, 0, INT_MAX,
	    FL_OPTIONAL, NULL },
	{ "provenance", "sample_tokens", F_INT, OFF(sample_tokens), 0, 0,
	    INT_MAX, FL_OPTIONAL, NULL },
	{ "provenance", "seed", F_U64, OFF(seed), 0, 0, 0, FL_OPTIONAL, NULL },
	{ "provenance", "tool_version", F_STR, OFF(tool_version),
	    SZ(tool_version), 0, 0, FL_OPTIONAL, NULL },
	{ "provenance", "created_by", F_STR, OFF(created_by), SZ(created_by),
	    0, 0, FL_OPTIONAL, NULL },
	{ "provenance", "validation", F_STR, OFF(validation), SZ(validation),
	    0, 0, FL_OPTIONAL, NULL },
};
_Static_assert(sizeof plan_fields / sizeof plan_fields[0] == PLAN_NFIELDS,
    "PLAN_NFIELDS counts the fields");

/* Index of field sect.key, or -1. */
int
plan_field_find(const char *sect, const char *key)
{
	int i;

	for (i = 0; i < PLAN_NFIELDS; i++)
		if (strcmp(plan_fields[i].sect, sect) == 0 &&
		    strcmp(plan_fields[i].key, key) == 0)
			return i;
	return -1;
}

/* The scorer whose section holds the field, or -1 for every scorer. */
int
plan_field_scorer(const struct field *f)
{
	if (f->flags & FL_EA)
		return PLAN_SCORER_EA;
	if (f->flags & FL_KVZIP)
		return PLAN_SCORER_KVZIP;
	return -1;
}

/* 1 when the plan reads and writes the field: it belongs to no scorer,
 * or to the plan's. */
int
plan_field_applies(const struct field *f, const kvx_plan *p)
{
	int s = plan_field_scorer(f);

	return s < 0 || s == p->scorer;
}

/* "model.layers" or "method": how messages name a field. */
const char *
plan_field_path(const struct field *f, char *buf, size_t size)
{
	if (f->sect[0] == '\0')
		snprintf(buf, size, "%s", f->key);
	else
		snprintf(buf, size, "%s.%s", f->sect, f->key);
	return buf;
}

/* Position of s in a NULL-terminated list of names, or -1. */
int
plan_name_index(const char *const *names, const char *s)
{
	int i;

	for (i = 0; names[i] != NULL; i++)
		if (strcmp(names[i], s) == 0)
			return i;
	return -1;
}

/* "a | b | c" for messages. */
const char *
plan_names_join(const char *const *names, char *buf, size_t size)
{
	size_t n = 0;
	int i;

	buf[0] = '\0';
	for (i = 0; names[i] != NULL && n < size; i++)
		n += snprintf(buf + n, size - n, "%s%s", i ? " | " : "",
		    names[i]);
	return buf;
}

/*
 * Range check of one scalar field of p.  Fills why (without the field's
 * name) and returns -1 when the value is not allowed.
 */
int
plan_field_check(const struct field *f, const kvx_plan *p, char *why,
    size_t size)
{
	const char *base = (const char *)p + f->off;
	char list[128];
	size_t i, len;
	double d;
	int64_t v;

	if (!plan_field_applies(f, p))
		return 0;
	switch (f->kind) {
	case F_STR:
		len = strnlen(base, f->size);
		if (len == f->size) {
			snprintf(why, size, "is not terminated");
			return -1;
		}
		if (len == 0 && !(f->flags & FL_OPTIONAL)) {
			snprintf(why, size, "is empty");
			return -1;
		}
		for (i = 0; i < len; i++)
			if ((unsigned char)base[i] < 0x20 || base[i] == 0x7f) {
				snprintf(why, size,
				    "contains a control character");
				return -1;
			}
		if ((f->flags & FL_WORDS) &&
		    plan_name_index(f->names, base) < 0) {
			snprintf(why, size, "must be one of %s, got '%s'",
			    plan_names_join(f->names, list, sizeof list), base);
			return -1;
		}
		if (f->flags & FL_HEX64) {
			for (i = 0; i < len; i++)
				if (!((base[i] >= '0' && base[i] <= '9') ||
				    (base[i] >= 'a' && base[i] <= 'f')))
					break;
			if (len != 64 || i != len) {
				snprintf(why, size, "must be 64 lower-case "
				    "hex digits (the model's sha256 "
				    "fingerprint)");
				return -1;
			}
		}
		return 0;
	case F_ENUM:
		v = *(const int *)base;
		for (i = 0; f->names[i] != NULL; i++)
			;
		if (v < 0 || v >= (int64_t)i) {
			snprintf(why, size, "must be one of %s",
			    plan_names_join(f->names, list, sizeof list));
			return -1;
		}
		return 0;
	case F_INT:
	case F_I64:
		v = f->kind == F_INT ? *(const int *)base :
		    *(const int64_t *)base;
		if ((f->flags & FL_ALL) && v == 0)
			return 0;
		if ((double)v < f->lo || (double)v > f->hi) {
			snprintf(why, size, "must be in [%.0f, %.0f]%s, got %"
			    PRId64, f->lo, f->hi, f->flags & FL_ALL ?
			    " or all" : "", v);
			return -1;
		}
		if ((f->flags & FL_ODD) && v % 2 == 0) {
			snprintf(why, size, "must be odd, got %" PRId64
			    " (the pooling window is centred on the token)",
			    v);
			return -1;
		}
		return 0;
	case F_NUM:
		d = *(const double *)base;
		if (!isfinite(d)) {
			snprintf(why, size, "must be a finite number");
			return -1;
		}
		if (d < f->lo || d > f->hi) {
			snprintf(why, size, "must be in [%g, %g], got %g",
			    f->lo, f->hi, d);
			return -1;
		}
		return 0;
	case F_U64:
	case F_SECTION:
	case F_SPECIAL:
		return 0;
	}
	return 0;
}

/*
 * Checks that involve several fields (everything plan_field_check cannot
 * see alone).  On failure fills why, sets *fi to the field to blame (index in
 * plan_fields[]) and *at to a budgets index or -1, and returns -1.
 */
int
plan_cross_check(const kvx_plan *p, int *fi, int *at, char *why, size_t size)
{
	uint64_t full, cells, bpe, want;
	kvx_plan tmp;
	int i, n;

	*at = -1;
	if (p->n_head % p->n_head_kv != 0) {
		*fi = plan_field_find("model", "kv_heads");
		snprintf(why, size, "%d does not divide model.heads %d "
		    "(each KV head serves a whole group of query heads)",
		    p->n_head_kv, p->n_head);
		return -1;
	}
	if (p->budget_kind == PLAN_BUDGET_FRACTION &&
	    !(p->budget > 0 && p->budget <= 1)) {
		*fi = plan_field_find("budget", "fraction");
		snprintf(why, size, "must be in (0, 1], got %g", p->budget);
		return -1;
	}
	if (p->budget_kind == PLAN_BUDGET_TOKENS &&
	    !(p->budget >= 1 && p->budget <= (double)p->ref_context &&
	    p->budget == floor(p->budget))) {
		*fi = plan_field_find("budget", "tokens");
		snprintf(why, size, "must be a whole number in [1, "
		    "reference_context %" PRId64 "], got %g", p->ref_context,
		    p->budget);
		return -1;
	}
	if (p->budget_kind != PLAN_BUDGET_FRACTION &&
	    p->budget_kind != PLAN_BUDGET_TOKENS) {
		*fi = plan_field_find("", "budget");
		snprintf(why, size, "has an unknown kind %d", p->budget_kind);
		return -1;
	}
	if (p->mode == KVX_PLAN_HYBRID && !(p->alpha >= 0 && p->alpha <= 1)) {
		*fi = plan_field_find("", "alpha");
		snprintf(why, size, "must be in [0, 1], got %g", p->alpha);
		return -1;
	}
	if (p->budgets == NULL) {
		*fi = plan_field_find("", "budgets");
		snprintf(why, size, "are missing");
		return -1;
	}
	n = plan_n_budgets(p);
	for (i = 0; i < n; i++)
		if (!(p->budgets[i] >= 0 && p->budgets[i] <= 1)) {
			*fi = plan_field_find("", "budgets");
			*at = i;
			snprintf(why, size, "must be in [0, 1], got %g",
			    p->budgets[i]);
			return -1;
		}

	/*
	 * The byte counts are derived data.  Both or neither are given; when
	 * given, the element size they imply must reproduce them exactly,
	 * so a hand edit of the budgets cannot leave them stale.
	 */
	if ((p->ref_bytes == 0) != (p->ref_bytes_full == 0)) {
		*fi = plan_field_find("budget", p->ref_bytes == 0 ?
		    "reference_bytes" : "reference_bytes_full");
		snprintf(why, size, "is 0 while its partner is not (give "
		    "both reference_bytes and reference_bytes_full, or "
		    "neither)");
		return -1;
	}
	for (i = 0; p->windows != NULL && i < p->n_layer; i++)
		if (p->windows[i] < 0 || p->windows[i] == 1 ||
		    p->windows[i] > PLAN_MAX_CONTEXT) {
			*fi = plan_field_find("model", "sliding_window");
			snprintf(why, size, "[%d] must be 0 (a global layer) "
			    "or in [2, %d], got %d", i, PLAN_MAX_CONTEXT,
			    p->windows[i]);
			return -1;
		}
	if (p->ref_bytes_full == 0)
		return 0;
	/* a full cache holds each layer's window of the context */
	for (cells = 0, i = 0; i < p->n_layer; i++)
		cells += (uint64_t)p->n_head_kv * (uint64_t)p->head_dim * 2 *
		    (uint64_t)sel_window_rows(plan_layer_window(p, i),
		    (int)p->ref_context);
	full = p->ref_bytes_full;
	if (full % cells != 0 || full / cells == 0 ||
	    full / cells > PLAN_MAX_BYTES_PER_ELEM) {
		*fi = plan_field_find("budget", "reference_bytes_full");
		snprintf(why, size, "%" PRIu64 " is not kv_heads * head_dim * "
		    "2 times reference_context (a sliding-window layer's "
		    "window if smaller) summed over the layers (%" PRIu64
		    ") times an element size of 1 to %d bytes", full, cells,
		    PLAN_MAX_BYTES_PER_ELEM);
		return -1;
	}
	bpe = full / cells;
	tmp = *p;
	plan_update_bytes(&tmp, (int)bpe);
	want = tmp.ref_bytes;
	if (p->ref_bytes != want) {
		*fi = plan_field_find("budget", "reference_bytes");
		snprintf(why, size, "%" PRIu64 " does not match the budgets "
		    "(expected %" PRIu64 " at %d bytes per element; "
		    "regenerate the plan or drop both reference_bytes keys)",
		    p->ref_bytes, want, (int)bpe);
		return -1;
	}
	return 0;
}

/* Checks every field of a plan built in memory. */
kvx_status
plan_validate(const kvx_plan *p)
{
	char why[256], path[64];
	int i, fi, at;

	if (p == NULL)
		return kvx__fail(KVX_ERR_ARG, "plan is NULL");
	if (p->version != KVX_PLAN_FORMAT_VERSION)
		return kvx__fail(KVX_ERR_PLAN, "plan: kvx_plan version %d is "
		    "not %d", p->version, KVX_PLAN_FORMAT_VERSION);
	for (i = 0; i < PLAN_NFIELDS; i++)
		if (plan_field_check(&plan_fields[i], p, why, sizeof why) != 0)
			return kvx__fail(KVX_ERR_PLAN, "plan: %s %s",
			    plan_field_path(&plan_fields[i], path,
			    sizeof path), why);
	if (plan_cross_check(p, &fi, &at, why, sizeof why) != 0) {
		if (at >= 0)
			return kvx__fail(KVX_ERR_PLAN, "plan: budgets[%d] %s",
			    at, why);
		return kvx__fail(KVX_ERR_PLAN, "plan: %s %s",
		    plan_field_path(&plan_fields[fi], path, sizeof path), why);
	}
	return KVX_OK;
}

/* --- plans in memory ----------------------------------------------------- */

/*
 * The model's name as a plan holds it: cut at a character boundary to
 * fit, and left out when it holds a control character, which a plan's
 * strings may not.
 */
static void
copy_name(char *dst, size_t size, const char *name)
{
	size_t n, i;

	dst[0] = '\0';
	if (name == NULL)
		return;
	for (i = 0; name[i] != '\0'; i++)
		if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
			return;
	n = i < size - 1 ? i : size - 1;
	if (n < i)
		while (n > 0 && ((unsigned char)name[n] & 0xc0) == 0x80)
			n--;
	memcpy(dst, name, n);
	dst[n] = '\0';
}

/* Allocates a plan for info with default selection settings. */
kvx_status
plan_new(const kvx_model_info *info, int mode, double fraction,
    kvx_plan **out)
{
	kvx_plan *p;
	kvx_status st;
	int i, n;

	if (out == NULL)
		return kvx__fail(KVX_ERR_ARG, "plan_new: out is NULL");
	*out = NULL;
	if (info == NULL || info->arch == NULL)
		return kvx__fail(KVX_ERR_ARG, "plan_new: no model info");
	if (mode != KVX_PLAN_STATIC && mode != KVX_PLAN_HYBRID)
		return kvx__fail(KVX_ERR_ARG, "plan_new: mode %d", mode);
	if (info->n_layer < 1 || info->n_layer > PLAN_MAX_LAYERS ||
	    info->n_head_kv < 1 || info->n_head_kv > PLAN_MAX_HEADS)
		return kvx__fail(KVX_ERR_ARG, "plan_new: %d layers, %d KV "
		    "heads", info->n_layer, info->n_head_kv);
	if ((p = kvx__calloc(1, sizeof *p)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "plan_new: out of memory");
	p->version = KVX_PLAN_FORMAT_VERSION;
	snprintf(p->method, sizeof p->method, "kvx");
	snprintf(p->arch, sizeof p->arch, "%s", info->arch);
	copy_name(p->name, sizeof p->name, info->name);
	p->n_layer = info->n_layer;
	p->n_head = info->n_head;
	p->n_head_kv = info->n_head_kv;
	p->head_dim = info->head_dim;
	memcpy(p->fingerprint, info->fingerprint, sizeof p->fingerprint);
	p->fingerprint[sizeof p->fingerprint - 1] = '\0';
	p->budget_kind = PLAN_BUDGET_FRACTION;
	p->budget = fraction;
	p->ref_context = PLAN_DEFAULT_CONTEXT;
	p->window = 32;
	p->pool = PLAN_POOL_MAX;
	p->pool_kernel = 7;
	p->gqa = PLAN_GQA_MEAN;
	p->sinks = 4;
	p->min_tokens = 0;
	p->mode = mode;
	p->alpha = mode == KVX_PLAN_HYBRID ? 0.2 : 0;
	n = plan_n_budgets(p);
	if ((p->budgets = kvx__malloc_array(n, sizeof *p->budgets)) == NULL) {
		free(p);
		return kvx__fail(KVX_ERR_NOMEM, "plan_new: out of memory");
	}
	for (i = 0; i < n; i++)
		p->budgets[i] = fraction;
	if ((st = plan_validate(p)) != KVX_OK) {
		kvx_plan_free(&p);
		return st;
	}
	*out = p;
	return KVX_OK;
}

/* Deep copy of a plan. */
kvx_status
plan_copy(const kvx_plan *src, kvx_plan **out)
{
	kvx_plan *p;
	int n;

	if (out == NULL)
		return kvx__fail(KVX_ERR_ARG, "plan_copy: out is NULL");
	*out = NULL;
	if (src == NULL || src->budgets == NULL)
		return kvx__fail(KVX_ERR_ARG, "plan_copy: no plan");
	if ((p = kvx__calloc(1, sizeof *p)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "plan_copy: out of memory");
	*p = *src;
	n = plan_n_budgets(src);
	if ((p->budgets = kvx__malloc_array(n, sizeof *p->budgets)) == NULL) {
		free(p);
		return kvx__fail(KVX_ERR_NOMEM, "plan_copy: out of memory");
	}
	memcpy(p->budgets, src->budgets, (size_t)n * sizeof *p->budgets);
	p->windows = NULL;
	if (plan_set_windows(p, src->windows) != KVX_OK) {
		kvx_plan_free(&p);
		return kvx__fail(KVX_ERR_NOMEM, "plan_copy: out of memory");
	}
	*out = p;
	return KVX_OK;
}

/* The layer's sliding window, 0 when global. */
int
plan_layer_window(const kvx_plan *p, int layer)
{
	if (p == NULL || p->windows == NULL || layer < 0 ||
	    layer >= p->n_layer)
		return 0;
	return p->windows[layer];
}

/* Public form of plan_layer_window. */
int
kvx_plan_get_window(const kvx_plan *p, int layer)
{
	return plan_layer_window(p, layer);
}

/* Replaces the plan's windows; an all-global model keeps none, so that
 * its plans read and write as they did before windows existed. */
kvx_status
plan_set_windows(kvx_plan *p, const int *w)
{
	int l, any = 0;

	free(p->windows);
	p->windows = NULL;
	for (l = 0; w != NULL && l < p->n_layer; l++)
		any |= w[l] != 0;
	if (!any)
		return KVX_OK;
	if ((p->windows = kvx__malloc_array(p->n_layer,
	    sizeof *p->windows)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	memcpy(p->windows, w, (size_t)p->n_layer * sizeof *p->windows);
	return KVX_OK;
}

/* Sets the scorer, and its parameters to their defaults. */
void
plan_set_scorer(kvx_plan *p, int scorer)
{
	p->scorer = scorer;
	p->ea_queries = p->ea_future = p->ea_cov = p->ea_vnorm = 0;
	p->kz_chunk = p->kz_prompt = 0;
	if (scorer == PLAN_SCORER_KVZIP) {
		p->kz_chunk = PLAN_KVZIP_CHUNK;
		p->kz_prompt = PLAN_KVZIP_CHAT;
		return;
	}
	if (scorer != PLAN_SCORER_EA)
		return;
	p->ea_queries = PLAN_EA_QUERIES;
	p->ea_future = PLAN_EA_FUTURE;
	p->ea_cov = PLAN_COV_FULL;
	p->ea_vnorm = 1;
}

/* The scorer's name, or NULL when out of range. */
const char *
plan_scorer_name(int scorer)
{
	if (scorer < 0 || scorer > PLAN_SCORER_KVZIP)
		return NULL;
	return scorer_names[scorer];
}

/* The scorer named name, or -1. */
int
plan_scorer_parse(const char *name)
{
	return plan_name_index(scorer_names, name);
}

/* Frees a plan and clears the caller's handle. */
void
kvx_plan_free(kvx_plan **pp)
{
	if (pp == NULL || *pp == NULL)
		return;
	free((*pp)->budgets);
	free((*pp)->windows);
	free(*pp);
	*pp = NULL;
}

/* Entries in budgets: one per (layer, KV head), or one per layer. */
int
plan_n_budgets(const kvx_plan *p)
{
	if (p == NULL)
		return 0;
	return p->mode == KVX_PLAN_HYBRID ? p->n_layer :
	    p->n_layer * p->n_head_kv;
}

/* Static or hybrid; a NULL plan reads as static. */
kvx_plan_mode
kvx_plan_get_mode(const kvx_plan *p)
{
	if (p == NULL)
		return KVX_PLAN_STATIC;
	return p->mode == KVX_PLAN_HYBRID ? KVX_PLAN_HYBRID : KVX_PLAN_STATIC;
}

/* The planned fraction, or -1 when layer or head is out of range. */
double
kvx_plan_get_budget(const kvx_plan *p, int layer, int head)
{
	if (p == NULL || p->budgets == NULL || layer < 0 ||
	    layer >= p->n_layer)
		return -1;
	if (p->mode == KVX_PLAN_HYBRID)
		return p->budgets[layer];
	if (head < 0 || head >= p->n_head_kv)
		return -1;
	return p->budgets[(size_t)layer * p->n_head_kv + head];
}

/* Everything but the budgets, for tools that report on a plan. */
kvx_status
kvx_plan_get_info(const kvx_plan *p, kvx_plan_info *info)
{
	if (p == NULL || info == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_plan_get_info: no %s",
		    p == NULL ? "plan" : "info");
	memset(info, 0, sizeof *info);
	info->method = p->method;
	info->mode = kvx_plan_get_mode(p);
	info->budget_kind = p->budget_kind == PLAN_BUDGET_TOKENS ?
	    KVX_BUDGET_TOKENS : KVX_BUDGET_FRACTION;
	info->budget = p->budget;
	info->window = p->window;
	info->sinks = p->sinks;
	info->pool = pool_names[p->pool];
	info->pool_kernel = p->pool_kernel;
	info->gqa = gqa_names[p->gqa];
	info->alpha = p->alpha;
	info->min_tokens = p->min_tokens;
	info->ref_context = p->ref_context;
	info->ref_bytes = p->ref_bytes;
	info->ref_bytes_full = p->ref_bytes_full;
	info->arch = p->arch;
	info->name = p->name;
	info->n_layer = p->n_layer;
	info->n_head = p->n_head;
	info->n_head_kv = p->n_head_kv;
	info->head_dim = p->head_dim;
	info->fingerprint = p->fingerprint;
	info->scorer = scorer_names[p->scorer];
	if (p->scorer == PLAN_SCORER_EA) {
		info->ea_queries = p->ea_queries;
		info->ea_future = p->ea_future;
		info->ea_covariance = cov_names[p->ea_cov];
		info->ea_value_norm = p->ea_vnorm;
	}
	if (p->scorer == PLAN_SCORER_KVZIP) {
		info->kvzip_chunk = p->kz_chunk;
		info->kvzip_prompt = kz_prompt_names[p->kz_prompt];
	}
	return KVX_OK;
}

/* Kept tokens for a head (or a hybrid layer, per head) after n tokens. */
int
plan_tokens(const kvx_plan *p, int layer, int head, int n)
{
	double f, base, r;
	int64_t fl, b;
	int cap;

	if (p == NULL || n <= 0)
		return 0;
	if ((f = kvx_plan_get_budget(p, layer, head)) < 0)
		return 0;
	base = p->budget_kind == PLAN_BUDGET_TOKENS ? (double)p->ref_context :
	    (double)n;
	r = floor(f * base + 0.5);
	/* a sliding-window layer's later queries see no more than this */
	cap = sel_window_rows(plan_layer_window(p, layer), n);
	fl = (int64_t)p->window + p->sinks;
	if (fl < p->min_tokens)
		fl = p->min_tokens;
	if (fl > cap)
		fl = cap;
	b = r >= (double)cap ? cap : (int64_t)r;
	if (b < fl)
		b = fl;
	return (int)b;
}

/* The hybrid split's candidates, shared total and per-head floor. */
void
plan_hybrid_share(const kvx_plan *p, int layer, int n, int w, int n_head_kv,
    int *ncand, int *total, int *floor_share)
{
	int nv = sel_window_rows(plan_layer_window(p, layer), n);
	int sinks = nv < n ? 0 : p->sinks, fixed = w + sinks, t;

	/* past its window a layer's first tokens are no sinks: no later
	 * query sees them */
	if (fixed > nv)
		fixed = nv;
	*ncand = nv - w - sinks < 0 ? 0 : nv - w - sinks;
	t = (plan_tokens(p, layer, -1, n) - fixed) * n_head_kv;
	if (t < 0)
		t = 0;
	if (t > *ncand * n_head_kv)
		t = *ncand * n_head_kv;
	*total = t;
	*floor_share = (int)floor(p->alpha * t / n_head_kv);
}

/* Recomputes the planned and full K+V bytes at ref_context. */
void
plan_update_bytes(kvx_plan *p, int bytes_per_elem)
{
	uint64_t per_token, sum = 0;
	int l, h;

	if (p == NULL || p->budgets == NULL || p->ref_context <= 0 ||
	    p->ref_context > INT_MAX)
		return;
	per_token = (uint64_t)p->head_dim * 2 * (uint64_t)bytes_per_elem;
	for (l = 0; l < p->n_layer; l++) {
		if (p->mode == KVX_PLAN_HYBRID) {
			sum += (uint64_t)plan_tokens(p, l, -1,
			    (int)p->ref_context) * (uint64_t)p->n_head_kv;
			continue;
		}
		for (h = 0; h < p->n_head_kv; h++)
			sum += (uint64_t)plan_tokens(p, l, h,
			    (int)p->ref_context);
	}
	p->ref_bytes = sum * per_token;
	/* a full cache holds a sliding-window layer's window, no more */
	for (sum = 0, l = 0; l < p->n_layer; l++)
		sum += (uint64_t)sel_window_rows(plan_layer_window(p, l),
		    (int)p->ref_context) * (uint64_t)p->n_head_kv;
	p->ref_bytes_full = sum * per_token;
}

/* --- checking against a model -------------------------------------------- */

/* Compares the plan's model identity with info, field by field. */
kvx_status
plan_check_info(const kvx_plan *p, const kvx_model_info *info)
{
	static const char *const names[] = {
		"layers", "heads", "kv_heads", "head_dim"
	};
	int want[4], have[4], i;

	if (p == NULL || info == NULL)
		return kvx__fail(KVX_ERR_ARG, "plan check: no plan or model");
	if (info->arch == NULL || strcmp(p->arch, info->arch) != 0)
		return kvx__fail(KVX_ERR_MISMATCH, "plan was made for arch "
		    "%s, model has %s", p->arch,
		    info->arch ? info->arch : "none");
	want[0] = p->n_layer, have[0] = info->n_layer;
	want[1] = p->n_head, have[1] = info->n_head;
	want[2] = p->n_head_kv, have[2] = info->n_head_kv;
	want[3] = p->head_dim, have[3] = info->head_dim;
	for (i = 0; i < 4; i++)
		if (want[i] != have[i])
			return kvx__fail(KVX_ERR_MISMATCH, "plan was made for "
			    "%s %d, model has %d", names[i], want[i],
			    have[i]);
	if (strncasecmp(p->fingerprint, info->fingerprint, 64) != 0)
		return kvx__fail(KVX_ERR_MISMATCH, "plan was made for "
		    "fingerprint %.12s..., model has %.12s... (same shape, "
		    "different weights: make a plan for this model)",
		    p->fingerprint, info->fingerprint);
	return KVX_OK;
}

/* Refuses a plan made for another model than m. */
kvx_status
kvx_plan_check(const kvx_plan *p, const kvx_model *m)
{
	const kvx_model_info *info;
	kvx_status st;
	int l;

	if (p == NULL || m == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_plan_check: NULL argument");
	if ((info = kvx_model_get_info(m)) == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_plan_check: model has no "
		    "info");
	if ((st = plan_check_info(p, info)) != KVX_OK)
		return st;
	/* selection caps a layer at its window: a plan made without the
	 * model's windows would count and keep the wrong rows */
	for (l = 0; l < p->n_layer; l++)
		if (plan_layer_window(p, l) != kvx_model_get_window(m, l))
			return kvx__fail(KVX_ERR_MISMATCH, "plan was made for "
			    "a sliding window of %d on layer %d, model has %d "
			    "(%s; make a plan for this model)",
			    plan_layer_window(p, l), l,
			    kvx_model_get_window(m, l), p->windows == NULL ?
			    "the plan has no model.sliding_window" : "0 is a "
			    "global layer");
	return KVX_OK;
}

/* --- locale -------------------------------------------------------------- */

/*
 * Number parsing and formatting must not follow the caller's locale (a
 * decimal comma would corrupt plans); these switch this thread to "C".
 */
locale_t
plan_locale_enter(locale_t *old)
{
	locale_t c = newlocale(LC_ALL_MASK, "C", (locale_t)0);

	*old = c != (locale_t)0 ? uselocale(c) : (locale_t)0;
	return c;
}

/* Restores the locale that plan_locale_enter replaced. */
void
plan_locale_leave(locale_t c, locale_t old)
{
	if (c != (locale_t)0) {
		uselocale(old);
		freelocale(c);
	}
}
