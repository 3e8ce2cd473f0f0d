/*
 * plan.c - kvx plans: load (strict), validate, save and check against a
 * model.  The file format is described in kvx-plan(5); parsing and
 * emitting go through libyaml's document loader and event emitter.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#include "plan.h"
#include "util.h"

/*
 * Limits keep every byte count below 2^64 (layers * kv_heads * head_dim *
 * 2 * 8 bytes * context < 2^63) and reject absurd values early.
 */
#define PLAN_MAX_LAYERS		1024
#define PLAN_MAX_HEADS		4096
#define PLAN_MAX_HEAD_DIM	4096
#define PLAN_MAX_CONTEXT	(1 << 26)
#define PLAN_MAX_POOL_KERNEL	255
#define PLAN_MAX_BYTES_PER_ELEM	8
#define PLAN_MAX_FILE		(16 << 20)
#define PLAN_DEFAULT_CONTEXT	4096

static const char *const method_names[] = {
	"uniform", "pyramid", "ada", "layer", "kvx", "full", NULL
};
static const char *const mode_names[] = { "static", "hybrid", NULL };
static const char *const pool_names[] = { "max", "avg", "none", NULL };
static const char *const gqa_names[] = { "mean", "max", NULL };

/* --- the schema ---------------------------------------------------------- */

enum fkind {
	F_SECTION,	/* a nested mapping of the fields with this sect */
	F_SPECIAL,	/* handled by code: version, budget, alpha, budgets */
	F_STR,		/* char[size] */
	F_ENUM,		/* int, one of names */
	F_INT,		/* int */
	F_I64,		/* int64_t */
	F_U64,		/* uint64_t */
	F_NUM		/* double, finite */
};

#define FL_OPTIONAL	0x01	/* may be absent; 0 or "" then */
#define FL_ODD		0x02	/* integer must be odd */
#define FL_HEX64	0x04	/* 64 hex digits */
#define FL_WORDS	0x08	/* F_STR limited to names */

struct field {
	const char		*sect;	/* "" for the top level */
	const char		*key;
	enum fkind		 kind;
	size_t			 off;	/* offsetof(kvx_plan, ...) */
	size_t			 size;	/* F_STR buffer size */
	double			 lo, hi;
	int			 flags;
	const char *const	*names;
};

#define OFF(m)	offsetof(struct kvx_plan, m)
#define SZ(m)	sizeof(((struct kvx_plan *)0)->m)

/* In file order: the emitter walks this table, the loader checks it. */
static const struct field fields[] = {
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
};
#define NFIELDS	((int)(sizeof fields / sizeof fields[0]))
#define MAXKEYS	16

/* Index of field sect.key, or -1. */
static int
field_find(const char *sect, const char *key)
{
	int i;

	for (i = 0; i < NFIELDS; i++)
		if (strcmp(fields[i].sect, sect) == 0 &&
		    strcmp(fields[i].key, key) == 0)
			return i;
	return -1;
}

/* "model.layers" or "method": how messages name a field. */
static const char *
field_path(const struct field *f, char *buf, size_t size)
{
	if (f->sect[0] == '\0')
		snprintf(buf, size, "%s", f->key);
	else
		snprintf(buf, size, "%s.%s", f->sect, f->key);
	return buf;
}

/* Position of s in a NULL-terminated list of names, or -1. */
static int
name_index(const char *const *names, const char *s)
{
	int i;

	for (i = 0; names[i] != NULL; i++)
		if (strcmp(names[i], s) == 0)
			return i;
	return -1;
}

/* "a | b | c" for messages. */
static const char *
names_join(const char *const *names, char *buf, size_t size)
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
static int
field_check(const struct field *f, const kvx_plan *p, char *why,
    size_t size)
{
	const char *base = (const char *)p + f->off;
	char list[128];
	size_t i, len;
	double d;
	int64_t v;

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
		    name_index(f->names, base) < 0) {
			snprintf(why, size, "must be one of %s, got '%s'",
			    names_join(f->names, list, sizeof list), base);
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
			    names_join(f->names, list, sizeof list));
			return -1;
		}
		return 0;
	case F_INT:
	case F_I64:
		v = f->kind == F_INT ? *(const int *)base :
		    *(const int64_t *)base;
		if ((double)v < f->lo || (double)v > f->hi) {
			snprintf(why, size, "must be in [%.0f, %.0f], got %"
			    PRId64, f->lo, f->hi, v);
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
 * Checks that involve several fields (everything field_check cannot see
 * alone).  On failure fills why, sets *fi to the field to blame (index in
 * fields[]) and *at to a budgets index or -1, and returns -1.
 */
static int
plan_cross_check(const kvx_plan *p, int *fi, int *at, char *why, size_t size)
{
	uint64_t full, cells, bpe, want;
	kvx_plan tmp;
	int i, n;

	*at = -1;
	if (p->n_head % p->n_head_kv != 0) {
		*fi = field_find("model", "kv_heads");
		snprintf(why, size, "%d does not divide model.heads %d "
		    "(each KV head serves a whole group of query heads)",
		    p->n_head_kv, p->n_head);
		return -1;
	}
	if (p->budget_kind == PLAN_BUDGET_FRACTION &&
	    !(p->budget > 0 && p->budget <= 1)) {
		*fi = field_find("budget", "fraction");
		snprintf(why, size, "must be in (0, 1], got %g", p->budget);
		return -1;
	}
	if (p->budget_kind == PLAN_BUDGET_TOKENS &&
	    !(p->budget >= 1 && p->budget <= (double)p->ref_context &&
	    p->budget == floor(p->budget))) {
		*fi = field_find("budget", "tokens");
		snprintf(why, size, "must be a whole number in [1, "
		    "reference_context %" PRId64 "], got %g", p->ref_context,
		    p->budget);
		return -1;
	}
	if (p->budget_kind != PLAN_BUDGET_FRACTION &&
	    p->budget_kind != PLAN_BUDGET_TOKENS) {
		*fi = field_find("", "budget");
		snprintf(why, size, "has an unknown kind %d", p->budget_kind);
		return -1;
	}
	if (p->mode == KVX_PLAN_HYBRID && !(p->alpha >= 0 && p->alpha <= 1)) {
		*fi = field_find("", "alpha");
		snprintf(why, size, "must be in [0, 1], got %g", p->alpha);
		return -1;
	}
	if (p->budgets == NULL) {
		*fi = field_find("", "budgets");
		snprintf(why, size, "are missing");
		return -1;
	}
	n = plan_n_budgets(p);
	for (i = 0; i < n; i++)
		if (!(p->budgets[i] >= 0 && p->budgets[i] <= 1)) {
			*fi = field_find("", "budgets");
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
		*fi = field_find("budget", p->ref_bytes == 0 ?
		    "reference_bytes" : "reference_bytes_full");
		snprintf(why, size, "is 0 while its partner is not (give "
		    "both reference_bytes and reference_bytes_full, or "
		    "neither)");
		return -1;
	}
	if (p->ref_bytes_full == 0)
		return 0;
	cells = (uint64_t)p->n_layer * (uint64_t)p->n_head_kv *
	    (uint64_t)p->head_dim * 2 * (uint64_t)p->ref_context;
	full = p->ref_bytes_full;
	if (full % cells != 0 || full / cells == 0 ||
	    full / cells > PLAN_MAX_BYTES_PER_ELEM) {
		*fi = field_find("budget", "reference_bytes_full");
		snprintf(why, size, "%" PRIu64 " is not layers * kv_heads * "
		    "head_dim * 2 * reference_context (%" PRIu64 ") times "
		    "an element size of 1 to %d bytes", full, cells,
		    PLAN_MAX_BYTES_PER_ELEM);
		return -1;
	}
	bpe = full / cells;
	tmp = *p;
	plan_update_bytes(&tmp, (int)bpe);
	want = tmp.ref_bytes;
	if (p->ref_bytes != want) {
		*fi = field_find("budget", "reference_bytes");
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
	for (i = 0; i < NFIELDS; i++)
		if (field_check(&fields[i], p, why, sizeof why) != 0)
			return kvx__fail(KVX_ERR_PLAN, "plan: %s %s",
			    field_path(&fields[i], path, sizeof path), why);
	if (plan_cross_check(p, &fi, &at, why, sizeof why) != 0) {
		if (at >= 0)
			return kvx__fail(KVX_ERR_PLAN, "plan: budgets[%d] %s",
			    at, why);
		return kvx__fail(KVX_ERR_PLAN, "plan: %s %s",
		    field_path(&fields[fi], path, sizeof path), why);
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
	*out = p;
	return KVX_OK;
}

/* Frees a plan and clears the caller's handle. */
void
kvx_plan_free(kvx_plan **pp)
{
	if (pp == NULL || *pp == NULL)
		return;
	free((*pp)->budgets);
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
	return KVX_OK;
}

/* Kept tokens for a head (or a hybrid layer, per head) after n tokens. */
int
plan_tokens(const kvx_plan *p, int layer, int head, int n)
{
	double f, base, r;
	int64_t fl, b;

	if (p == NULL || n <= 0)
		return 0;
	if ((f = kvx_plan_get_budget(p, layer, head)) < 0)
		return 0;
	base = p->budget_kind == PLAN_BUDGET_TOKENS ? (double)p->ref_context :
	    (double)n;
	r = floor(f * base + 0.5);
	fl = (int64_t)p->window + p->sinks;
	if (fl < p->min_tokens)
		fl = p->min_tokens;
	if (fl > n)
		fl = n;
	b = r >= (double)n ? n : (int64_t)r;
	if (b < fl)
		b = fl;
	return (int)b;
}

/* The hybrid split's candidates, shared total and per-head floor. */
void
plan_hybrid_share(const kvx_plan *p, int layer, int n, int w, int n_head_kv,
    int *ncand, int *total, int *floor_share)
{
	int fixed = w + p->sinks, t;

	if (fixed > n)
		fixed = n;
	*ncand = n - w - p->sinks < 0 ? 0 : n - w - p->sinks;
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
	p->ref_bytes_full = (uint64_t)p->n_layer * (uint64_t)p->n_head_kv *
	    (uint64_t)p->ref_context * per_token;
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

	if (p == NULL || m == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_plan_check: NULL argument");
	if ((info = kvx_model_get_info(m)) == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_plan_check: model has no "
		    "info");
	return plan_check_info(p, info);
}

/* --- loading ------------------------------------------------------------- */

struct ld {
	const char	*name;
	yaml_document_t	 doc;
	kvx_plan	*p;
};

/* Records "NAME:LINE:COL: message" for node n (1-based positions). */
static kvx_status
ld_fail(struct ld *ld, const yaml_node_t *n, const char *fmt, ...)
    KVX_PRINTF(3, 4);
static kvx_status
ld_fail(struct ld *ld, const yaml_node_t *n, const char *fmt, ...)
{
	char msg[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return kvx__fail(KVX_ERR_PLAN, "%s:%zu:%zu: %s", ld->name,
	    n ? n->start_mark.line + 1 : 1, n ? n->start_mark.column + 1 : 1,
	    msg);
}

/* Node of the loaded document by index (NULL if out of range). */
static yaml_node_t *
ld_node(struct ld *ld, int index)
{
	return yaml_document_get_node(&ld->doc, index);
}

/* "a mapping", "a sequence" or "a string" for type errors. */
static const char *
node_kind(const yaml_node_t *n)
{
	switch (n->type) {
	case YAML_MAPPING_NODE:
		return "a mapping";
	case YAML_SEQUENCE_NODE:
		return "a sequence";
	case YAML_SCALAR_NODE:
		if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
			return "a quoted string";
		return "a string";
	default:
		return "nothing";
	}
}

/* A printable excerpt of a scalar for messages. */
static const char *
node_show(const yaml_node_t *n, char *buf, size_t size)
{
	size_t i, len;

	len = n->data.scalar.length;
	if (len > size - 4)
		len = size - 4;
	for (i = 0; i < len; i++) {
		unsigned char c = n->data.scalar.value[i];
		buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	if (len < n->data.scalar.length)
		memcpy(buf + len, "...", 3), len += 3;
	buf[len] = '\0';
	return buf;
}

/* 1 when scalar n's text is exactly s. */
static int
scalar_is(const yaml_node_t *n, const char *s)
{
	size_t len = strlen(s);

	return n->type == YAML_SCALAR_NODE && n->data.scalar.length == len &&
	    memcmp(n->data.scalar.value, s, len) == 0;
}

/*
 * Is n a scalar that may be read as a number?  Plain scalars with the
 * default tag, or ones tagged !!int / !!float explicitly.
 */
static int
scalar_numeric(const yaml_node_t *n)
{
	const char *tag = (const char *)n->tag;

	if (n->type != YAML_SCALAR_NODE)
		return 0;
	if (tag != NULL && (strcmp(tag, YAML_INT_TAG) == 0 ||
	    strcmp(tag, YAML_FLOAT_TAG) == 0))
		return 1;
	return n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
	    (tag == NULL || strcmp(tag, YAML_STR_TAG) == 0);
}

/* Text of a scalar as a NUL-terminated string in buf, or -1 if too long
 * or holding a NUL. */
static int
scalar_text(const yaml_node_t *n, char *buf, size_t size)
{
	size_t len = n->data.scalar.length;

	if (len >= size || memchr(n->data.scalar.value, '\0', len) != NULL)
		return -1;
	memcpy(buf, n->data.scalar.value, len);
	buf[len] = '\0';
	return 0;
}

/* Reads a decimal integer scalar (no sign when !is_signed). */
static kvx_status
ld_integer(struct ld *ld, const yaml_node_t *n, const char *what,
    int is_signed, int64_t *sv, uint64_t *uv)
{
	char buf[32], show[48];
	const char *s;
	char *end;
	size_t i;

	if (!scalar_numeric(n))
		return ld_fail(ld, n, "%s must be an integer, not %s%s", what,
		    node_kind(n), n->type == YAML_SCALAR_NODE ?
		    " (remove the quotes)" : "");
	if (scalar_text(n, buf, sizeof buf) != 0)
		return ld_fail(ld, n, "%s must be an integer, got '%s'", what,
		    node_show(n, show, sizeof show));
	s = buf;
	i = (*s == '-' || *s == '+') && is_signed ? 1 : 0;
	if (s[i] == '\0')
		return ld_fail(ld, n, "%s has no value (expected an integer)",
		    what);
	for (; s[i] != '\0'; i++)
		if (s[i] < '0' || s[i] > '9')
			return ld_fail(ld, n, "%s must be a decimal integer, "
			    "got '%s'", what, node_show(n, show, sizeof show));
	errno = 0;
	if (is_signed)
		*sv = strtoll(s, &end, 10);
	else
		*uv = strtoull(s, &end, 10);
	if (errno == ERANGE)
		return ld_fail(ld, n, "%s is out of range: %s", what, s);
	return KVX_OK;
}

/* Reads a finite decimal number scalar. */
static kvx_status
ld_number(struct ld *ld, const yaml_node_t *n, const char *what, double *out)
{
	char buf[64], show[48];
	const char *s;
	size_t i = 0, digits = 0;
	char *end;

	if (!scalar_numeric(n))
		return ld_fail(ld, n, "%s must be a number, not %s%s", what,
		    node_kind(n), n->type == YAML_SCALAR_NODE ?
		    " (remove the quotes)" : "");
	if (scalar_text(n, buf, sizeof buf) != 0)
		return ld_fail(ld, n, "%s must be a number, got '%s'", what,
		    node_show(n, show, sizeof show));
	s = buf;
	if (s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0)
		return ld_fail(ld, n, "%s has no value (expected a number)",
		    what);
	if (strchr(s, 'n') || strchr(s, 'N') || strchr(s, 'i') ||
	    strchr(s, 'I'))
		return ld_fail(ld, n, "%s must be a finite number, got '%s'",
		    what, s);
	/* [-+]? (digits [. digits?] | . digits) ([eE] [-+]? digits)? */
	if (s[i] == '-' || s[i] == '+')
		i++;
	for (; s[i] >= '0' && s[i] <= '9'; i++)
		digits++;
	if (s[i] == '.')
		for (i++; s[i] >= '0' && s[i] <= '9'; i++)
			digits++;
	if (digits > 0 && (s[i] == 'e' || s[i] == 'E')) {
		i++;
		if (s[i] == '-' || s[i] == '+')
			i++;
		if (s[i] < '0' || s[i] > '9')
			digits = 0;
		while (s[i] >= '0' && s[i] <= '9')
			i++;
	}
	if (digits == 0 || s[i] != '\0')
		return ld_fail(ld, n, "%s must be a number, got '%s'", what,
		    s);
	errno = 0;
	*out = strtod(s, &end);
	if (!isfinite(*out))
		return ld_fail(ld, n, "%s must be a finite number, got '%s'",
		    what, s);
	return KVX_OK;
}

/* Reads a string scalar into buf. */
static kvx_status
ld_string(struct ld *ld, const yaml_node_t *n, const char *what, char *buf,
    size_t size)
{
	if (n->type != YAML_SCALAR_NODE)
		return ld_fail(ld, n, "%s must be a string, not %s", what,
		    node_kind(n));
	if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
	    (n->data.scalar.length == 0 || scalar_is(n, "~") ||
	    scalar_is(n, "null")))
		return ld_fail(ld, n, "%s has no value (quote it to give an "
		    "empty string)", what);
	if (n->data.scalar.length >= size)
		return ld_fail(ld, n, "%s is too long (at most %zu bytes)",
		    what, size - 1);
	if (scalar_text(n, buf, size) != 0)
		return ld_fail(ld, n, "%s contains a NUL character", what);
	return KVX_OK;
}

/*
 * Collects the values of mapping node map whose keys are the fields of
 * section sect: vals[i] and keys[i] for field i (NULL when absent).
 * Rejects non-mappings, non-string keys, unknown and duplicate keys.
 */
static kvx_status
ld_map(struct ld *ld, yaml_node_t *map, const char *sect,
    yaml_node_t **vals, yaml_node_t **keys)
{
	char list[512], show[48], kb[64];
	yaml_node_pair_t *pr;
	yaml_node_t *k;
	size_t n = 0;
	int i;

	for (i = 0; i < NFIELDS; i++)
		vals[i] = keys[i] = NULL;
	if (map->type != YAML_MAPPING_NODE)
		return ld_fail(ld, map, "%s%s must be a mapping, not %s",
		    sect[0] ? "" : "a plan", sect, node_kind(map));
	for (pr = map->data.mapping.pairs.start;
	    pr < map->data.mapping.pairs.top; pr++) {
		k = ld_node(ld, pr->key);
		if (k == NULL || k->type != YAML_SCALAR_NODE ||
		    scalar_text(k, kb, sizeof kb) != 0)
			return ld_fail(ld, k, "%s%skeys must be short plain "
			    "names, not %s", sect, sect[0] ? " " : "",
			    k ? node_kind(k) : "nothing");
		i = field_find(sect, kb);
		if (i < 0) {
			list[0] = '\0';
			n = 0;
			for (i = 0; i < NFIELDS && n < sizeof list; i++)
				if (strcmp(fields[i].sect, sect) == 0)
					n += snprintf(list + n,
					    sizeof list - n, "%s%s",
					    n ? ", " : "", fields[i].key);
			return ld_fail(ld, k, "unknown key '%s'%s%s (expected "
			    "one of: %s)", node_show(k, show, sizeof show),
			    sect[0] ? " in " : "", sect, list);
		}
		if (keys[i] != NULL)
			return ld_fail(ld, k, "duplicate key '%s' (first given "
			    "at line %zu)", kb, keys[i]->start_mark.line + 1);
		keys[i] = k;
		vals[i] = ld_node(ld, pr->value);
		if (vals[i] == NULL)
			return ld_fail(ld, k, "key '%s' has no value", kb);
	}
	return KVX_OK;
}

/* Fails for a missing required key of section sect (node map). */
static kvx_status
ld_missing(struct ld *ld, yaml_node_t *map, const char *sect,
    const char *key, const char *hint)
{
	return ld_fail(ld, map, "missing key '%s'%s%s (%s)", key,
	    sect[0] ? " in " : "", sect, hint);
}

/* Reads every plain field of one section into the plan. */
static kvx_status
ld_section(struct ld *ld, yaml_node_t *map, const char *sect,
    yaml_node_t **vals, yaml_node_t **keys)
{
	char path[64], why[256], tmp[256];
	const struct field *f;
	kvx_status st;
	char *base;
	int64_t sv;
	uint64_t uv;
	int i, e;

	if ((st = ld_map(ld, map, sect, vals, keys)) != KVX_OK)
		return st;
	for (i = 0; i < NFIELDS; i++) {
		f = &fields[i];
		if (strcmp(f->sect, sect) != 0 || f->kind == F_SECTION ||
		    f->kind == F_SPECIAL)
			continue;
		field_path(f, path, sizeof path);
		if (vals[i] == NULL) {
			if (f->flags & FL_OPTIONAL)
				continue;
			return ld_missing(ld, map, sect, f->key, "it is "
			    "required");
		}
		base = (char *)ld->p + f->off;
		switch (f->kind) {
		case F_STR:
			st = ld_string(ld, vals[i], path, base, f->size);
			break;
		case F_ENUM:
			st = ld_string(ld, vals[i], path, tmp, sizeof tmp);
			if (st == KVX_OK &&
			    (e = name_index(f->names, tmp)) < 0)
				st = ld_fail(ld, vals[i], "%s must be one of "
				    "%s, got '%s'", path, names_join(f->names,
				    why, sizeof why), tmp);
			else if (st == KVX_OK)
				*(int *)base = e;
			break;
		case F_INT:
		case F_I64:
			st = ld_integer(ld, vals[i], path, 1, &sv, NULL);
			if (st == KVX_OK && ((double)sv < f->lo ||
			    (double)sv > f->hi))
				st = ld_fail(ld, vals[i], "%s must be in "
				    "[%.0f, %.0f], got %" PRId64, path, f->lo,
				    f->hi, sv);
			else if (st == KVX_OK && f->kind == F_INT)
				*(int *)base = (int)sv;
			else if (st == KVX_OK)
				*(int64_t *)base = sv;
			break;
		case F_U64:
			st = ld_integer(ld, vals[i], path, 0, NULL, &uv);
			if (st == KVX_OK)
				*(uint64_t *)base = uv;
			break;
		case F_NUM:
			st = ld_number(ld, vals[i], path, (double *)base);
			break;
		default:
			break;
		}
		if (st != KVX_OK)
			return st;
		if (field_check(f, ld->p, why, sizeof why) != 0)
			return ld_fail(ld, vals[i], "%s %s", path, why);
	}
	return KVX_OK;
}

/* Reads budgets: n_layer rows of n_head_kv fractions, or n_layer
 * fractions for a hybrid plan. */
static kvx_status
ld_budgets(struct ld *ld, yaml_node_t *seq)
{
	kvx_plan *p = ld->p;
	yaml_node_t *row, *cell;
	char what[48];
	kvx_status st;
	int l, h, nrow, ncol, hybrid = p->mode == KVX_PLAN_HYBRID;

	if (seq->type != YAML_SEQUENCE_NODE)
		return ld_fail(ld, seq, "budgets must be a sequence, not %s "
		    "(%s)", node_kind(seq), hybrid ? "one fraction per layer" :
		    "one row of per-KV-head fractions per layer");
	nrow = (int)(seq->data.sequence.items.top -
	    seq->data.sequence.items.start);
	if (nrow != p->n_layer)
		return ld_fail(ld, seq, "budgets has %d %s, model.layers is "
		    "%d (one per layer)", nrow, hybrid ? "entries" : "rows",
		    p->n_layer);
	p->budgets = kvx__malloc_array(plan_n_budgets(p), sizeof *p->budgets);
	if (p->budgets == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "%s: out of memory", ld->name);
	for (l = 0; l < nrow; l++) {
		row = ld_node(ld, seq->data.sequence.items.start[l]);
		if (hybrid) {
			snprintf(what, sizeof what, "budgets[%d]", l);
			if (row->type == YAML_SEQUENCE_NODE)
				return ld_fail(ld, row, "%s must be a number, "
				    "not a sequence (a hybrid plan gives one "
				    "fraction per layer)", what);
			if ((st = ld_number(ld, row, what, &p->budgets[l])) !=
			    KVX_OK)
				return st;
			if (!(p->budgets[l] >= 0 && p->budgets[l] <= 1))
				return ld_fail(ld, row, "%s must be in [0, 1], "
				    "got %g", what, p->budgets[l]);
			continue;
		}
		if (row->type != YAML_SEQUENCE_NODE)
			return ld_fail(ld, row, "budgets[%d] must be a sequence "
			    "of %d fractions, not %s (a static plan gives one "
			    "row per layer)", l, p->n_head_kv, node_kind(row));
		ncol = (int)(row->data.sequence.items.top -
		    row->data.sequence.items.start);
		if (ncol != p->n_head_kv)
			return ld_fail(ld, row, "budgets[%d] has %d entries, "
			    "model.kv_heads is %d (one per KV head)", l, ncol,
			    p->n_head_kv);
		for (h = 0; h < ncol; h++) {
			double *d = &p->budgets[(size_t)l * p->n_head_kv + h];

			cell = ld_node(ld, row->data.sequence.items.start[h]);
			snprintf(what, sizeof what, "budgets[%d][%d]", l, h);
			if ((st = ld_number(ld, cell, what, d)) != KVX_OK)
				return st;
			if (!(*d >= 0 && *d <= 1))
				return ld_fail(ld, cell, "%s must be in [0, 1], "
				    "got %g", what, *d);
		}
	}
	return KVX_OK;
}

/* Reads the whole document into ld->p. */
static kvx_status
ld_plan(struct ld *ld)
{
	yaml_node_t *root, *top[NFIELDS], *topk[NFIELDS];
	yaml_node_t *sv[NFIELDS], *sk[NFIELDS];
	yaml_node_t *fr, *tk, *bl = NULL;
	yaml_node_pair_t *pr;
	kvx_plan *p = ld->p;
	char why[256], path[64];
	kvx_status st;
	int64_t v;
	int fi, at, i;

	if ((root = yaml_document_get_root_node(&ld->doc)) == NULL)
		return ld_fail(ld, NULL, "empty plan (a plan is a mapping "
		    "that starts with 'kvx_plan: 1')");
	if (root->type != YAML_MAPPING_NODE)
		return ld_fail(ld, root, "a plan must be a mapping, not %s",
		    node_kind(root));

	/* The version comes first so that a newer file gets a clear
	 * message instead of complaints about keys this reader lacks. */
	for (pr = root->data.mapping.pairs.start;
	    pr < root->data.mapping.pairs.top; pr++)
		if (scalar_is(ld_node(ld, pr->key), "kvx_plan"))
			break;
	if (pr == root->data.mapping.pairs.top)
		return ld_fail(ld, root, "not a kvx plan: no 'kvx_plan' key "
		    "(a plan starts with 'kvx_plan: %d')",
		    KVX_PLAN_FORMAT_VERSION);
	if ((st = ld_integer(ld, ld_node(ld, pr->value), "kvx_plan", 1, &v,
	    NULL)) != KVX_OK)
		return st;
	if (v != KVX_PLAN_FORMAT_VERSION)
		return ld_fail(ld, ld_node(ld, pr->value), "unsupported plan "
		    "format version %" PRId64 " (this kvx reads version %d)",
		    v, KVX_PLAN_FORMAT_VERSION);
	p->version = KVX_PLAN_FORMAT_VERSION;

	if ((st = ld_section(ld, root, "", top, topk)) != KVX_OK)
		return st;
	for (i = 0; i < NFIELDS; i++) {
		if (fields[i].kind != F_SECTION || fields[i].sect[0] != '\0')
			continue;
		if (top[i] == NULL) {
			if (fields[i].flags & FL_OPTIONAL)
				continue;
			return ld_missing(ld, root, "", fields[i].key,
			    "it is required");
		}
		if ((st = ld_section(ld, top[i], fields[i].key, sv, sk)) !=
		    KVX_OK)
			return st;
		if (strcmp(fields[i].key, "budget") != 0)
			continue;
		bl = top[i];
		fr = sv[field_find("budget", "fraction")];
		tk = sv[field_find("budget", "tokens")];
		if (fr != NULL && tk != NULL)
			return ld_fail(ld, sk[field_find("budget", "tokens")],
			    "budget has both fraction and tokens (give "
			    "exactly one)");
		if (fr == NULL && tk == NULL)
			return ld_missing(ld, top[i], "budget", "fraction",
			    "give fraction or tokens");
		if (fr != NULL) {
			p->budget_kind = PLAN_BUDGET_FRACTION;
			if ((st = ld_number(ld, fr, "budget.fraction",
			    &p->budget)) != KVX_OK)
				return st;
		} else {
			p->budget_kind = PLAN_BUDGET_TOKENS;
			if ((st = ld_integer(ld, tk, "budget.tokens", 1, &v,
			    NULL)) != KVX_OK)
				return st;
			if (v < 1 || v > PLAN_MAX_CONTEXT)
				return ld_fail(ld, tk, "budget.tokens must be "
				    "in [1, %d], got %" PRId64,
				    PLAN_MAX_CONTEXT, v);
			p->budget = (double)v;
		}
	}

	fi = field_find("", "alpha");
	if (p->mode == KVX_PLAN_HYBRID) {
		if (top[fi] == NULL)
			return ld_missing(ld, root, "", "alpha", "a hybrid "
			    "plan needs the per-head floor alpha");
		if ((st = ld_number(ld, top[fi], "alpha", &p->alpha)) !=
		    KVX_OK)
			return st;
	} else if (top[fi] != NULL)
		return ld_fail(ld, topk[fi], "alpha is only used by hybrid "
		    "plans (remove it, or set mode: hybrid)");

	fi = field_find("", "budgets");
	if (top[fi] == NULL)
		return ld_missing(ld, root, "", "budgets", "it is required");
	if ((st = ld_budgets(ld, top[fi])) != KVX_OK)
		return st;

	if (plan_cross_check(p, &fi, &at, why, sizeof why) != 0) {
		const struct field *f = &fields[fi];
		yaml_node_t *n;

		if (f->sect[0] == '\0')
			n = top[fi];
		else {
			/* Re-collect the section to find the culprit node. */
			ld_map(ld, top[field_find("", f->sect)], f->sect, sv,
			    sk);
			n = sv[fi];
			if (n == NULL && strcmp(f->sect, "budget") == 0)
				n = bl;
		}
		return ld_fail(ld, n, "%s %s", field_path(f, path,
		    sizeof path), why);
	}
	return KVX_OK;
}

/* Line and column (1-based) of byte off in buf. */
static void
buf_position(const char *buf, size_t len, size_t off, size_t *line,
    size_t *col)
{
	size_t i;

	*line = 1;
	*col = 1;
	for (i = 0; i < off && i < len; i++) {
		if (buf[i] == '\n')
			(*line)++, *col = 1;
		else
			(*col)++;
	}
}

/* Fails with the parser's own account of a YAML error. */
static kvx_status
ld_yaml_error(const yaml_parser_t *ps, const char *name, const char *buf,
    size_t len)
{
	size_t line, col;

	if (ps->error == YAML_MEMORY_ERROR)
		return kvx__fail(KVX_ERR_NOMEM, "%s: out of memory", name);
	if (ps->error == YAML_READER_ERROR) {
		buf_position(buf, len, ps->problem_offset, &line, &col);
		return kvx__fail(KVX_ERR_FORMAT, "%s:%zu:%zu: YAML error: %s "
		    "(a plan is UTF-8 text)", name, line, col,
		    ps->problem ? ps->problem : "unreadable input");
	}
	return kvx__fail(KVX_ERR_FORMAT, "%s:%zu:%zu: YAML syntax error: %s "
	    "(%s)", name, ps->problem_mark.line + 1,
	    ps->problem_mark.column + 1,
	    ps->problem ? ps->problem : "unknown problem",
	    ps->context ? ps->context : "check the indentation and quoting");
}

/*
 * Number parsing and formatting must not follow the caller's locale (a
 * decimal comma would corrupt plans); these switch this thread to "C".
 */
static locale_t
c_locale_enter(locale_t *old)
{
	locale_t c = newlocale(LC_ALL_MASK, "C", (locale_t)0);

	*old = c != (locale_t)0 ? uselocale(c) : (locale_t)0;
	return c;
}

/* Restores the locale that c_locale_enter replaced. */
static void
c_locale_leave(locale_t c, locale_t old)
{
	if (c != (locale_t)0) {
		uselocale(old);
		freelocale(c);
	}
}

/* Parses and validates a plan held in memory. */
kvx_status
kvx_plan_load_mem(const char *buf, size_t len, const char *name,
    kvx_plan **out)
{
	yaml_parser_t ps;
	yaml_document_t extra;
	yaml_node_t *n2;
	struct ld ld;
	locale_t c, old;
	kvx_status st;

	if (out == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_plan_load_mem: out is NULL");
	*out = NULL;
	if (buf == NULL && len > 0)
		return kvx__fail(KVX_ERR_ARG, "kvx_plan_load_mem: no buffer");
	memset(&ld, 0, sizeof ld);
	ld.name = name != NULL ? name : "<memory>";
	if (len > PLAN_MAX_FILE)
		return kvx__fail(KVX_ERR_PLAN, "%s: %zu bytes is too large for "
		    "a plan (at most %d)", ld.name, len, PLAN_MAX_FILE);
	if ((ld.p = kvx__calloc(1, sizeof *ld.p)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "%s: out of memory", ld.name);
	if (!yaml_parser_initialize(&ps)) {
		free(ld.p);
		return kvx__fail(KVX_ERR_NOMEM, "%s: out of memory", ld.name);
	}
	yaml_parser_set_input_string(&ps, (const unsigned char *)(buf ? buf :
	    ""), len);
	if (!yaml_parser_load(&ps, &ld.doc)) {
		st = ld_yaml_error(&ps, ld.name, buf, len);
		yaml_parser_delete(&ps);
		free(ld.p);
		return st;
	}
	c = c_locale_enter(&old);
	st = ld_plan(&ld);
	c_locale_leave(c, old);

	/* A second document would be ignored silently otherwise. */
	if (st == KVX_OK) {
		if (!yaml_parser_load(&ps, &extra))
			st = ld_yaml_error(&ps, ld.name, buf, len);
		else {
			if ((n2 = yaml_document_get_root_node(&extra)) != NULL)
				st = ld_fail(&ld, n2, "more than one YAML "
				    "document (a plan file holds one plan)");
			yaml_document_delete(&extra);
		}
	}
	yaml_document_delete(&ld.doc);
	yaml_parser_delete(&ps);
	if (st != KVX_OK) {
		kvx_plan_free(&ld.p);
		return st;
	}
	*out = ld.p;
	return KVX_OK;
}

/* Reads a plan file; see kvx_plan_load_mem. */
kvx_status
kvx_plan_load(const char *path, kvx_plan **out)
{
	struct stat sb;
	kvx_status st;
	char *buf;
	size_t len;
	FILE *f;

	if (out == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_plan_load: out is NULL");
	*out = NULL;
	if (path == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_plan_load: path is NULL");
	if ((f = fopen(path, "rb")) == NULL)
		return kvx__fail(KVX_ERR_IO, "%s: %s", path, strerror(errno));
	if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
		fclose(f);
		return kvx__fail(KVX_ERR_IO, "%s: not a regular file", path);
	}
	if (sb.st_size > PLAN_MAX_FILE) {
		fclose(f);
		return kvx__fail(KVX_ERR_PLAN, "%s: %lld bytes is too large for "
		    "a plan (at most %d)", path, (long long)sb.st_size,
		    PLAN_MAX_FILE);
	}
	if ((buf = malloc((size_t)sb.st_size + 1)) == NULL) {
		fclose(f);
		return kvx__fail(KVX_ERR_NOMEM, "%s: out of memory", path);
	}
	len = fread(buf, 1, (size_t)sb.st_size, f);
	if (ferror(f)) {
		free(buf);
		fclose(f);
		return kvx__fail(KVX_ERR_IO, "%s: read error", path);
	}
	fclose(f);
	buf[len] = '\0';
	st = kvx_plan_load_mem(buf, len, path, out);
	free(buf);
	return st;
}

/* --- saving -------------------------------------------------------------- */

struct obuf {
	char	*p;
	size_t	 n, cap;
	int	 oom;
};

/* libyaml write handler appending to an obuf. */
static int
obuf_write(void *data, unsigned char *s, size_t size)
{
	struct obuf *o = data;
	size_t cap;
	char *np;

	if (o->n + size + 1 > o->cap) {
		cap = o->cap ? o->cap : 1024;
		while (cap < o->n + size + 1)
			cap *= 2;
		if ((np = realloc(o->p, cap)) == NULL) {
			o->oom = 1;
			return 0;
		}
		o->p = np;
		o->cap = cap;
	}
	memcpy(o->p + o->n, s, size);
	o->n += size;
	o->p[o->n] = '\0';
	return 1;
}

/*
 * Would a plain s read as something other than a string (null, a boolean
 * or a number) to this or another YAML reader?
 */
static int
str_needs_quotes(const char *s)
{
	static const char *const words[] = {
		"~", "null", "Null", "NULL", "true", "True", "TRUE", "false",
		"False", "FALSE", "yes", "Yes", "YES", "no", "No", "NO", "on",
		"On", "ON", "off", "Off", "OFF", "y", "Y", "n", "N", NULL
	};
	char *end;

	if (s[0] == '\0' || name_index(words, s) >= 0)
		return 1;
	(void)strtod(s, &end);
	return end != s && *end == '\0';
}

/* Emits one scalar: numbers plain, strings in a style that keeps them
 * strings. */
static int
em_scalar(yaml_emitter_t *e, const char *s, int is_string)
{
	yaml_scalar_style_t style = YAML_PLAIN_SCALAR_STYLE;
	yaml_event_t ev;

	if (is_string)
		style = str_needs_quotes(s) ? YAML_SINGLE_QUOTED_SCALAR_STYLE :
		    YAML_ANY_SCALAR_STYLE;
	if (!yaml_scalar_event_initialize(&ev, NULL, NULL,
	    (yaml_char_t *)s, (int)strlen(s), 1, 1, style))
		return 0;
	return yaml_emitter_emit(e, &ev);
}

/* Starts a block mapping (flow 0) or sequence (seq 1, flow as asked). */
static int
em_start(yaml_emitter_t *e, int seq, int flow)
{
	yaml_event_t ev;
	int r;

	if (seq)
		r = yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1,
		    flow ? YAML_FLOW_SEQUENCE_STYLE :
		    YAML_BLOCK_SEQUENCE_STYLE);
	else
		r = yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1,
		    YAML_BLOCK_MAPPING_STYLE);
	return r && yaml_emitter_emit(e, &ev);
}

/* Ends the innermost sequence (seq 1) or mapping. */
static int
em_end(yaml_emitter_t *e, int seq)
{
	yaml_event_t ev;
	int r;

	if (seq)
		r = yaml_sequence_end_event_initialize(&ev);
	else
		r = yaml_mapping_end_event_initialize(&ev);
	return r && yaml_emitter_emit(e, &ev);
}

/*
 * Shortest "%.Ng" that reads back as exactly d, always with a '.' or an
 * exponent so that other YAML readers see a float.
 */
static void
fmt_double(char *buf, size_t size, double d)
{
	char tmp[40], *e;
	int prec;

	for (prec = 1; prec < 17; prec++) {
		snprintf(tmp, sizeof tmp, "%.*g", prec, d);
		if (strtod(tmp, NULL) == d)
			break;
	}
	if (prec == 17)
		snprintf(tmp, sizeof tmp, "%.17g", d);
	if (strchr(tmp, '.') != NULL) {
		snprintf(buf, size, "%s", tmp);
		return;
	}
	if ((e = strchr(tmp, 'e')) != NULL) {
		snprintf(buf, size, "%.*s.0%s", (int)(e - tmp), tmp, e);
		return;
	}
	snprintf(buf, size, "%s.0", tmp);
}

/* Emits a number that reads back exactly. */
static int
em_double(yaml_emitter_t *e, double d)
{
	char buf[48];

	fmt_double(buf, sizeof buf, d);
	return em_scalar(e, buf, 0);
}

/* 1 when field f holds its "absent" value (0 or ""). */
static int
field_empty(const struct field *f, const kvx_plan *p)
{
	const char *base = (const char *)p + f->off;

	switch (f->kind) {
	case F_STR:
		return base[0] == '\0';
	case F_INT:
	case F_ENUM:
		return *(const int *)base == 0;
	case F_I64:
		return *(const int64_t *)base == 0;
	case F_U64:
		return *(const uint64_t *)base == 0;
	case F_NUM:
		return *(const double *)base == 0;
	default:
		return 0;
	}
}

/* Emits the value of one plain field. */
static int
em_field(yaml_emitter_t *e, const struct field *f, const kvx_plan *p)
{
	const char *base = (const char *)p + f->off;
	char buf[32];

	switch (f->kind) {
	case F_STR:
		return em_scalar(e, base, 1);
	case F_ENUM:
		return em_scalar(e, f->names[*(const int *)base], 0);
	case F_INT:
		snprintf(buf, sizeof buf, "%d", *(const int *)base);
		return em_scalar(e, buf, 0);
	case F_I64:
		snprintf(buf, sizeof buf, "%" PRId64, *(const int64_t *)base);
		return em_scalar(e, buf, 0);
	case F_U64:
		snprintf(buf, sizeof buf, "%" PRIu64,
		    *(const uint64_t *)base);
		return em_scalar(e, buf, 0);
	case F_NUM:
		return em_double(e, *(const double *)base);
	default:
		return 0;
	}
}

/* Emits the special keys: version, budget kind, alpha and budgets. */
static int
em_special(yaml_emitter_t *e, const struct field *f, const kvx_plan *p)
{
	char buf[32];
	int ok = 1, l, h;

	if (strcmp(f->key, "kvx_plan") == 0) {
		snprintf(buf, sizeof buf, "%d", KVX_PLAN_FORMAT_VERSION);
		return em_scalar(e, f->key, 1) && em_scalar(e, buf, 0);
	}
	if (strcmp(f->key, "fraction") == 0) {
		if (p->budget_kind != PLAN_BUDGET_FRACTION)
			return 1;
		return em_scalar(e, f->key, 1) && em_double(e, p->budget);
	}
	if (strcmp(f->key, "tokens") == 0) {
		if (p->budget_kind != PLAN_BUDGET_TOKENS)
			return 1;
		snprintf(buf, sizeof buf, "%.0f", p->budget);
		return em_scalar(e, f->key, 1) && em_scalar(e, buf, 0);
	}
	if (strcmp(f->key, "alpha") == 0) {
		if (p->mode != KVX_PLAN_HYBRID)
			return 1;
		return em_scalar(e, f->key, 1) && em_double(e, p->alpha);
	}
	ok = em_scalar(e, f->key, 1) && em_start(e, 1, 0);
	for (l = 0; ok && l < p->n_layer; l++) {
		if (p->mode == KVX_PLAN_HYBRID) {
			ok = em_double(e, p->budgets[l]);
			continue;
		}
		ok = em_start(e, 1, 1);
		for (h = 0; ok && h < p->n_head_kv; h++)
			ok = em_double(e, p->budgets[(size_t)l * p->n_head_kv +
			    h]);
		ok = ok && em_end(e, 1);
	}
	return ok && em_end(e, 1);
}

/* Emits the fields of section sect (the top level when ""). */
static int
em_section(yaml_emitter_t *e, const char *sect, const kvx_plan *p)
{
	const struct field *f;
	int i, j, ok, any;

	ok = em_start(e, 0, 0);
	for (i = 0; ok && i < NFIELDS; i++) {
		f = &fields[i];
		if (strcmp(f->sect, sect) != 0)
			continue;
		if (f->kind == F_SPECIAL) {
			ok = em_special(e, f, p);
			continue;
		}
		if (f->kind == F_SECTION) {
			/* An optional section with nothing in it is left
			 * out, like an optional field left at 0 or "". */
			any = !(f->flags & FL_OPTIONAL);
			for (j = 0; !any && j < NFIELDS; j++)
				if (strcmp(fields[j].sect, f->key) == 0 &&
				    !field_empty(&fields[j], p))
					any = 1;
			if (any)
				ok = em_scalar(e, f->key, 1) &&
				    em_section(e, f->key, p);
			continue;
		}
		if ((f->flags & FL_OPTIONAL) && field_empty(f, p))
			continue;
		ok = em_scalar(e, f->key, 1) && em_field(e, f, p);
	}
	return ok && em_end(e, 0);
}

/* Renders a valid plan as YAML text in memory. */
kvx_status
plan_emit(const kvx_plan *p, char **out, size_t *len)
{
	yaml_emitter_t e;
	yaml_event_t ev;
	struct obuf o;
	locale_t c, old;
	kvx_status st;
	int ok;

	if (out == NULL || len == NULL)
		return kvx__fail(KVX_ERR_ARG, "plan_emit: NULL argument");
	*out = NULL;
	*len = 0;
	if ((st = plan_validate(p)) != KVX_OK)
		return st;
	memset(&o, 0, sizeof o);
	if (!yaml_emitter_initialize(&e))
		return kvx__fail(KVX_ERR_NOMEM, "plan_emit: out of memory");
	yaml_emitter_set_output(&e, obuf_write, &o);
	yaml_emitter_set_unicode(&e, 1);
	yaml_emitter_set_width(&e, -1);
	yaml_emitter_set_indent(&e, 2);
	c = c_locale_enter(&old);
	ok = yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) &&
	    yaml_emitter_emit(&e, &ev) &&
	    yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1) &&
	    yaml_emitter_emit(&e, &ev) &&
	    em_section(&e, "", p) &&
	    yaml_document_end_event_initialize(&ev, 1) &&
	    yaml_emitter_emit(&e, &ev) &&
	    yaml_stream_end_event_initialize(&ev) &&
	    yaml_emitter_emit(&e, &ev) &&
	    yaml_emitter_flush(&e);
	c_locale_leave(c, old);
	if (!ok) {
		st = o.oom || e.error == YAML_MEMORY_ERROR ?
		    kvx__fail(KVX_ERR_NOMEM, "plan_emit: out of memory") :
		    kvx__fail(KVX_ERR_PLAN, "plan_emit: %s", e.problem ?
		    e.problem : "YAML emitter error");
		yaml_emitter_delete(&e);
		free(o.p);
		return st;
	}
	yaml_emitter_delete(&e);
	*out = o.p;
	*len = o.n;
	return KVX_OK;
}

/* Writes all of buf to fd. */
static int
write_all(int fd, const char *buf, size_t len)
{
	ssize_t w;

	while (len > 0) {
		if ((w = write(fd, buf, len)) < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Writes a plan atomically, refusing to replace a file unless asked. */
kvx_status
kvx_plan_save(const kvx_plan *p, const char *path, int overwrite)
{
	static unsigned serial;
	char *text, *tmp;
	size_t len, tlen;
	kvx_status st;
	int fd = -1, tries, err;

	if (path == NULL || *path == '\0')
		return kvx__fail(KVX_ERR_ARG, "kvx_plan_save: no path");
	if (!overwrite && access(path, F_OK) == 0)
		return kvx__fail(KVX_ERR_IO, "%s exists (use --force to "
		    "overwrite)", path);
	if ((st = plan_emit(p, &text, &len)) != KVX_OK)
		return st;

	/* Write a sibling temporary and move it into place, so a reader
	 * never sees half a plan. */
	tlen = strlen(path) + 64;
	if ((tmp = malloc(tlen)) == NULL) {
		free(text);
		return kvx__fail(KVX_ERR_NOMEM, "%s: out of memory", path);
	}
	for (tries = 0; tries < 100 && fd < 0; tries++) {
		snprintf(tmp, tlen, "%s.tmp.%ld.%u", path, (long)getpid(),
		    __atomic_fetch_add(&serial, 1, __ATOMIC_RELAXED));
		fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
		if (fd < 0 && errno != EEXIST)
			break;
	}
	if (fd < 0) {
		st = kvx__fail(KVX_ERR_IO, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	if (write_all(fd, text, len) != 0 || fsync(fd) != 0) {
		err = errno;
		close(fd);
		unlink(tmp);
		st = kvx__fail(KVX_ERR_IO, "%s: %s", tmp, strerror(err));
		goto out;
	}
	if (close(fd) != 0) {
		err = errno;
		unlink(tmp);
		st = kvx__fail(KVX_ERR_IO, "%s: %s", tmp, strerror(err));
		goto out;
	}
	if (overwrite) {
		if (rename(tmp, path) != 0) {
			err = errno;
			unlink(tmp);
			st = kvx__fail(KVX_ERR_IO, "%s: %s", path,
			    strerror(err));
			goto out;
		}
	} else {
		/*
		 * link() fails if path appeared meanwhile: no clobbering.
		 * Where hard links are not supported, fall back to rename
		 * after the check above.
		 */
		err = link(tmp, path) != 0 ? errno : 0;
		if (err == EPERM || err == ENOTSUP || err == EOPNOTSUPP ||
		    err == EMLINK || err == ENOSYS) {
			if (access(path, F_OK) != 0 && errno == ENOENT)
				err = rename(tmp, path) != 0 ? errno : 0;
			else
				err = EEXIST;
		} else if (err == 0)
			unlink(tmp);
		if (err != 0) {
			unlink(tmp);
			st = err == EEXIST ? kvx__fail(KVX_ERR_IO, "%s exists "
			    "(use --force to overwrite)", path) :
			    kvx__fail(KVX_ERR_IO, "%s: %s", path,
			    strerror(err));
			goto out;
		}
	}
	st = KVX_OK;
out:
	free(tmp);
	free(text);
	return st;
}
