/*
 * plan_schema.h - what loading, validating and saving a plan share: the
 * table of its fields (kvx-plan(5) in the order a plan is written), and
 * the checks and names that go with it.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_PLAN_SCHEMA_H
#define KVX_PLAN_SCHEMA_H

#include <locale.h>
#include <stddef.h>

#include "plan.h"

/* The largest context, sinks and min_tokens a plan may name. */
#define PLAN_MAX_CONTEXT	(1 << 26)

enum fkind {
	F_SECTION,	/* a nested mapping of the fields with this sect */
	F_SPECIAL,	/* handled by code: version, budget, alpha, budgets,
			   sliding windows */
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
#define FL_EA		0x10	/* read, checked and written only when
				   selection.scorer is expected-attention */
#define FL_KVZIP	0x20	/* likewise, when it is kvzip */
#define FL_ALL		0x40	/* F_INT that may be the word all, held as
				   0 (below its range) */

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

/* The fields, in file order: the emitter walks the table, the loader and
 * plan_validate check it. */
#define PLAN_NFIELDS	48
extern const struct field plan_fields[];

/* Index of field sect.key in plan_fields, or -1. */
int		 plan_field_find(const char *sect, const char *key);
/* The scorer (enum plan_scorer) whose section holds the field, or -1
 * for a field of every plan; and whether plan p reads and writes it. */
int		 plan_field_scorer(const struct field *);
int		 plan_field_applies(const struct field *, const kvx_plan *);
/* "model.layers" or "method": how messages name a field. */
const char	*plan_field_path(const struct field *, char *buf,
		     size_t size);
/* Position of s in a NULL-terminated list of names, or -1. */
int		 plan_name_index(const char *const *names, const char *s);
/* "a | b | c" for messages. */
const char	*plan_names_join(const char *const *names, char *buf,
		     size_t size);
/* Range check of one field of p alone: -1 with why filled (without the
 * field's name) when the value is not allowed. */
int		 plan_field_check(const struct field *, const kvx_plan *,
		     char *why, size_t size);
/* Checks across fields: -1 with why, the field to blame (*fi) and a
 * budgets index or -1 (*at). */
int		 plan_cross_check(const kvx_plan *, int *fi, int *at,
		     char *why, size_t size);
/* Switch this thread to the "C" locale for numbers, and back. */
locale_t	 plan_locale_enter(locale_t *old);
void		 plan_locale_leave(locale_t c, locale_t old);

#endif
