/*
 * plan_load.c - reading a plan: libyaml's document loader, then a strict
 * walk of the document by the field table, every error with its
 * file:line:column.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#include "plan_schema.h"
#include "util.h"

/* The largest plan file read. */
#define PLAN_MAX_FILE		(16 << 20)

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

	for (i = 0; i < PLAN_NFIELDS; i++)
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
		i = plan_field_find(sect, kb);
		if (i < 0) {
			list[0] = '\0';
			n = 0;
			for (i = 0; i < PLAN_NFIELDS && n < sizeof list; i++)
				if (strcmp(plan_fields[i].sect, sect) == 0)
					n += snprintf(list + n,
					    sizeof list - n, "%s%s",
					    n ? ", " : "", plan_fields[i].key);
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
	for (i = 0; i < PLAN_NFIELDS; i++) {
		f = &plan_fields[i];
		if (strcmp(f->sect, sect) != 0 || f->kind == F_SECTION ||
		    f->kind == F_SPECIAL)
			continue;
		plan_field_path(f, path, sizeof path);
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
			    (e = plan_name_index(f->names, tmp)) < 0)
				st = ld_fail(ld, vals[i], "%s must be one of "
				    "%s, got '%s'", path,
				    plan_names_join(f->names, why, sizeof why),
				    tmp);
			else if (st == KVX_OK)
				*(int *)base = e;
			break;
		case F_INT:
		case F_I64:
			if ((f->flags & FL_ALL) && scalar_is(vals[i], "all")) {
				*(int *)base = 0;
				break;
			}
			if ((f->flags & FL_ALL) && vals[i]->type ==
			    YAML_SCALAR_NODE && (vals[i]->data.scalar.length ==
			    0 || strchr("+-0123456789",
			    vals[i]->data.scalar.value[0]) == NULL)) {
				st = ld_fail(ld, vals[i], "%s must be an "
				    "integer or all, got '%s'", path,
				    node_show(vals[i], why, sizeof why));
				break;
			}
			st = ld_integer(ld, vals[i], path, 1, &sv, NULL);
			if (st == KVX_OK && ((double)sv < f->lo ||
			    (double)sv > f->hi))
				st = ld_fail(ld, vals[i], "%s must be in "
				    "[%.0f, %.0f]%s, got %" PRId64, path, f->lo,
				    f->hi, f->flags & FL_ALL ? " or all" : "",
				    sv);
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
		if (plan_field_check(f, ld->p, why, sizeof why) != 0)
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
			return ld_fail(ld, row, "budgets[%d] must be a "
			    "sequence of %d fractions, not %s (a static plan "
			    "gives one row per layer)", l, p->n_head_kv,
			    node_kind(row));
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
				return ld_fail(ld, cell, "%s must be in "
				    "[0, 1], got %g", what, *d);
		}
	}
	return KVX_OK;
}

/* Reads model.sliding_window: one window per layer, 0 for a global one. */
static kvx_status
ld_windows(struct ld *ld, yaml_node_t *seq)
{
	kvx_plan *p = ld->p;
	yaml_node_t *cell;
	char what[48];
	kvx_status st;
	int64_t v;
	int l, n, *w;

	if (seq->type != YAML_SEQUENCE_NODE)
		return ld_fail(ld, seq, "model.sliding_window must be a "
		    "sequence, not %s (one window per layer, 0 for a global "
		    "layer)", node_kind(seq));
	n = (int)(seq->data.sequence.items.top -
	    seq->data.sequence.items.start);
	if (n != p->n_layer)
		return ld_fail(ld, seq, "model.sliding_window has %d entries, "
		    "model.layers is %d (one per layer)", n, p->n_layer);
	if ((w = kvx__malloc_array(n, sizeof *w)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "%s: out of memory", ld->name);
	for (l = 0; l < n; l++) {
		cell = ld_node(ld, seq->data.sequence.items.start[l]);
		snprintf(what, sizeof what, "model.sliding_window[%d]", l);
		if ((st = ld_integer(ld, cell, what, 1, &v, NULL)) != KVX_OK) {
			free(w);
			return st;
		}
		if (v < 0 || v == 1 || v > PLAN_MAX_CONTEXT) {
			free(w);
			return ld_fail(ld, cell, "%s must be 0 (a global "
			    "layer) or in [2, %d], got %" PRId64, what,
			    PLAN_MAX_CONTEXT, v);
		}
		w[l] = (int)v;
	}
	st = plan_set_windows(p, w);
	free(w);
	return st;
}

/* Reads the whole document into ld->p. */
static kvx_status
ld_plan(struct ld *ld)
{
	yaml_node_t *root, *top[PLAN_NFIELDS], *topk[PLAN_NFIELDS];
	yaml_node_t *sv[PLAN_NFIELDS], *sk[PLAN_NFIELDS];
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
	for (i = 0; i < PLAN_NFIELDS; i++) {
		if (plan_fields[i].kind != F_SECTION ||
		    plan_fields[i].sect[0] != '\0')
			continue;
		if (top[i] == NULL) {
			if (plan_field_scorer(&plan_fields[i]) >= 0 &&
			    plan_field_applies(&plan_fields[i], p)) {
				snprintf(why, sizeof why, "the scorer %s "
				    "needs its parameters",
				    plan_scorer_name(p->scorer));
				return ld_missing(ld, root, "",
				    plan_fields[i].key, why);
			}
			if (plan_fields[i].flags & FL_OPTIONAL)
				continue;
			return ld_missing(ld, root, "", plan_fields[i].key,
			    "it is required");
		}
		/* selection comes first in the table: the scorer is known */
		if (!plan_field_applies(&plan_fields[i], p))
			return ld_fail(ld, topk[i], "%s is only read when "
			    "selection.scorer is %s (remove it, or set the "
			    "scorer)", plan_fields[i].key, plan_scorer_name(
			    plan_field_scorer(&plan_fields[i])));
		if ((st = ld_section(ld, top[i], plan_fields[i].key, sv, sk)) !=
		    KVX_OK)
			return st;
		fi = plan_field_find("model", "sliding_window");
		if (strcmp(plan_fields[i].key, "model") == 0 &&
		    sv[fi] != NULL && (st = ld_windows(ld, sv[fi])) != KVX_OK)
			return st;
		if (strcmp(plan_fields[i].key, "budget") != 0)
			continue;
		bl = top[i];
		fr = sv[plan_field_find("budget", "fraction")];
		tk = sv[plan_field_find("budget", "tokens")];
		if (fr != NULL && tk != NULL)
			return ld_fail(ld,
			    sk[plan_field_find("budget", "tokens")],
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

	fi = plan_field_find("", "alpha");
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

	fi = plan_field_find("", "budgets");
	if (top[fi] == NULL)
		return ld_missing(ld, root, "", "budgets", "it is required");
	if ((st = ld_budgets(ld, top[fi])) != KVX_OK)
		return st;

	if (plan_cross_check(p, &fi, &at, why, sizeof why) != 0) {
		const struct field *f = &plan_fields[fi];
		yaml_node_t *n;

		if (f->sect[0] == '\0')
			n = top[fi];
		else {
			/* Re-collect the section to find the culprit node. */
			ld_map(ld, top[plan_field_find("", f->sect)], f->sect,
			    sv, sk);
			n = sv[fi];
			if (n == NULL && strcmp(f->sect, "budget") == 0)
				n = bl;
		}
		return ld_fail(ld, n, "%s %s", plan_field_path(f, path,
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
	c = plan_locale_enter(&old);
	st = ld_plan(&ld);
	plan_locale_leave(c, old);

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
		return kvx__fail(KVX_ERR_PLAN, "%s: %lld bytes is too large "
		    "for a plan (at most %d)", path, (long long)sb.st_size,
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
