/*
 * plan_save.c - writing a plan: the field table walked in file order
 * through libyaml's event emitter, then an atomic replace of the file.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#include "plan_schema.h"
#include "util.h"

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

	if (s[0] == '\0' || plan_name_index(words, s) >= 0)
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
		if ((f->flags & FL_ALL) && *(const int *)base == 0)
			return em_scalar(e, "all", 0);
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

/* Emits the special keys: version, budget kind, alpha, sliding windows
 * and budgets. */
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
	if (strcmp(f->key, "sliding_window") == 0) {
		if (p->windows == NULL)
			return 1;
		ok = em_scalar(e, f->key, 1) && em_start(e, 1, 1);
		for (l = 0; ok && l < p->n_layer; l++) {
			snprintf(buf, sizeof buf, "%d", p->windows[l]);
			ok = em_scalar(e, buf, 0);
		}
		return ok && em_end(e, 1);
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
	for (i = 0; ok && i < PLAN_NFIELDS; i++) {
		f = &plan_fields[i];
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
			if (!plan_field_applies(f, p))
				continue;
			for (j = 0; !any && j < PLAN_NFIELDS; j++)
				if (strcmp(plan_fields[j].sect, f->key) == 0 &&
				    !field_empty(&plan_fields[j], p))
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
	c = plan_locale_enter(&old);
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
	plan_locale_leave(c, old);
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
