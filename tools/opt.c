/*
 * opt.c - parse a command line by a table of options (opt.h).
 * SPDX-License-Identifier: MIT
 *
 * getopt_long does the scanning (short letters, bundles, long names and
 * their unique prefixes, "--name=value"); the table says what each
 * option's argument is and where it goes.  Scanning stops at the first
 * argument that belongs to no option ('+'), so that a stray word is
 * reported instead of silently moved to the end.
 */
#include "config.h"

#include <getopt.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "opt.h"
#include "util.h"

#define HELP_COL	28	/* where the help text starts */
#define FIRST_VAL	256	/* getopt value of the first table entry */

/* The setting of the given type at offset off of the settings set. */
#define AT(set, off, type)	((type *)(void *)((char *)(set) + (off)))

/* A table bound as a long; a bound past LONG_MAX means none. */
static long
bound(double v)
{
	if (v >= (double)LONG_MAX)
		return LONG_MAX;
	if (v <= (double)LONG_MIN)
		return LONG_MIN;
	return (long)v;
}

/* One integer of o's range into *v; -1 with the reason in err if not. */
static int
parse_int(const struct opt *o, const char *s, long *v, char *err,
    size_t size)
{
	long lo = bound(o->lo), hi = bound(o->hi);

	if (kvx__parse_long(s, lo, hi, v) == 0 &&
	    (!(o->flags & OPT_ODD) || *v % 2 != 0))
		return 0;
	if (hi == LONG_MAX)
		snprintf(err, size, "--%s: '%s' is not an integer of %ld or "
		    "more", o->name, s, lo);
	else
		snprintf(err, size, "--%s: '%s' is not %s integer in [%ld, "
		    "%ld]", o->name, s, o->flags & OPT_ODD ? "an odd" : "an",
		    lo, hi);
	return -1;
}

/* A comma-separated list of integers of o's range into l. */
static int
parse_ints(const struct opt *o, const char *s, struct opt_ints *l,
    char *err, size_t size)
{
	char buf[256], *tok, *save;
	long v;

	if (strlen(s) >= sizeof buf) {
		snprintf(err, size, "--%s: list too long", o->name);
		return -1;
	}
	strcpy(buf, s);
	l->n = 0;
	for (tok = strtok_r(buf, ",", &save); tok != NULL;
	    tok = strtok_r(NULL, ",", &save)) {
		if (l->n == OPT_MAX_INTS) {
			snprintf(err, size, "--%s: more than %d entries",
			    o->name, OPT_MAX_INTS);
			return -1;
		}
		if (parse_int(o, tok, &v, err, size) != 0)
			return -1;
		l->v[l->n++] = (int)v;
	}
	if (l->n == 0) {
		snprintf(err, size, "--%s: '%s' is an empty list", o->name, s);
		return -1;
	}
	return 0;
}

/* The index of s in o's words; -1 with the words listed in err if none. */
static int
parse_word(const struct opt *o, const char *s, int *v, char *err,
    size_t size)
{
	size_t len;
	int i;

	for (i = 0; o->names[i] != NULL; i++)
		if (strcmp(s, o->names[i]) == 0) {
			*v = i;
			return 0;
		}
	snprintf(err, size, "unknown %s '%s' (", o->noun != NULL ? o->noun :
	    o->name, s);
	for (i = 0; o->names[i] != NULL; i++) {
		len = strlen(err);
		snprintf(err + len, size - len, "%s%s", i == 0 ? "" :
		    o->names[i + 1] == NULL ? " or " : ", ", o->names[i]);
	}
	len = strlen(err);
	snprintf(err + len, size - len, ")");
	return -1;
}

/*
 * Append first and every following argument that is not an option to
 * o's file list, as a shell expands "-c corpus/ *.txt" into several
 * words; "-" (standard input) counts as a file.
 */
static int
take_files(const struct opt *o, void *set, const char *first, int argc,
    char **argv)
{
	struct opt_files *l = AT(set, o->dst, struct opt_files);

	/* all the files of all the options fit in argc entries */
	if (l->v == NULL && (l->v = calloc((size_t)argc,
	    sizeof *l->v)) == NULL)
		return OPT_NOMEM;
	l->v[l->n++] = first;
	while (optind < argc && (argv[optind][0] != '-' ||
	    strcmp(argv[optind], "-") == 0))
		l->v[l->n++] = argv[optind++];
	return OPT_OK;
}

/*
 * Store option o with argument arg (NULL for a flag) in set; argv from
 * optind on holds the words after it.  Returns OPT_OK, or OPT_BAD with the
 * reason in err, or OPT_NOMEM.
 */
static int
take(const struct opt *o, void *set, const char *arg, int argc,
    char **argv, char *err, size_t size)
{
	double d;
	long v;

	switch (o->kind) {
	case OPT_FLAG:
	case OPT_EXIT:
		*AT(set, o->dst, int) = 1;
		break;
	case OPT_STR:
		*AT(set, o->dst, const char *) = arg;
		break;
	case OPT_INT:
	case OPT_I64:
	case OPT_U64:
		if (parse_int(o, arg, &v, err, size) != 0)
			return OPT_BAD;
		if (o->kind == OPT_INT)
			*AT(set, o->dst, int) = (int)v;
		else if (o->kind == OPT_I64)
			*AT(set, o->dst, int64_t) = v;
		else
			*AT(set, o->dst, uint64_t) = (uint64_t)v;
		break;
	case OPT_NUM:
		if (kvx__parse_double(arg, o->lo, o->hi, &d) != 0) {
			snprintf(err, size, "--%s: '%s' is not a number in "
			    "[%g, %g]", o->name, arg, o->lo, o->hi);
			return OPT_BAD;
		}
		*AT(set, o->dst, double) = d;
		break;
	case OPT_WORD:
		if (parse_word(o, arg, AT(set, o->dst, int), err, size) != 0)
			return OPT_BAD;
		break;
	case OPT_INTS:
		if (parse_ints(o, arg, AT(set, o->dst, struct opt_ints), err,
		    size) != 0)
			return OPT_BAD;
		break;
	case OPT_FUNC:
		if (o->fn(set, arg, err, size) != 0)
			return OPT_BAD;
		break;
	case OPT_FILES:
		if (take_files(o, set, arg, argc, argv) != OPT_OK)
			return OPT_NOMEM;
		break;
	}
	if (o->flags & OPT_GIVEN)
		*AT(set, o->given, int) = 1;
	return OPT_OK;
}

/* How many long names start with the name in "--name[=value]"; 1 for an
 * exact match, which getopt_long takes whatever else it prefixes. */
static int
prefix_matches(const struct opt_cmd *cmd, const char *as)
{
	size_t len = strcspn(as + 2, "=");
	int i, n = 0;

	for (i = 0; i < cmd->n_opts; i++) {
		if (strncmp(cmd->opts[i].name, as + 2, len) != 0)
			continue;
		if (cmd->opts[i].name[len] == '\0')
			return 1;
		n++;
	}
	return n;
}

/* Describe the option getopt_long could not take (it returned ch). */
static void
scan_error(const struct opt_cmd *cmd, int ch, char **argv, char *err,
    size_t size)
{
	const char *as = argv[optind - 1];

	if (ch == ':')
		snprintf(err, size, "option %s needs a value (see %s --help)",
		    as, cmd->prog);
	else if (optopt >= FIRST_VAL)
		snprintf(err, size, "option --%s takes no value (see %s "
		    "--help)", cmd->opts[optopt - FIRST_VAL].name, cmd->prog);
	else if (optopt != 0)
		snprintf(err, size, "unknown option -%c (see %s --help)",
		    optopt, cmd->prog);
	else if (strncmp(as, "--", 2) == 0 && prefix_matches(cmd, as) > 1)
		snprintf(err, size, "option %.*s is ambiguous (see %s --help)",
		    (int)strcspn(as, "="), as, cmd->prog);
	else
		snprintf(err, size, "unknown option %s (see %s --help)", as,
		    cmd->prog);
}

/* The table entry getopt_long's value ch stands for. */
static const struct opt *
lookup(const struct opt_cmd *cmd, int ch)
{
	int i;

	if (ch >= FIRST_VAL)
		return &cmd->opts[ch - FIRST_VAL];
	for (i = 0; i < cmd->n_opts; i++)
		if (cmd->opts[i].key == ch)
			return &cmd->opts[i];
	return NULL;
}

/* Parse argv by cmd's table into set; see opt.h. */
int
opt_parse(const struct opt_cmd *cmd, void *set, int argc, char **argv,
    char *err, size_t size)
{
	const struct opt *o;
	struct option *lopts;
	char *shorts, *p;
	int i, ch, has_arg, rc = OPT_OK;

	lopts = calloc((size_t)cmd->n_opts + 1, sizeof *lopts);
	shorts = malloc((size_t)cmd->n_opts * 2 + 3);
	if (lopts == NULL || shorts == NULL) {
		free(lopts);
		free(shorts);
		return OPT_NOMEM;
	}
	/* '+': stop at a stray word; ':': report a missing value as ':' */
	p = shorts;
	*p++ = '+';
	*p++ = ':';
	for (i = 0; i < cmd->n_opts; i++) {
		o = &cmd->opts[i];
		has_arg = o->kind != OPT_FLAG && o->kind != OPT_EXIT;
		lopts[i].name = o->name;
		lopts[i].has_arg = has_arg ? required_argument : no_argument;
		lopts[i].val = FIRST_VAL + i;
		if (o->key != 0) {
			*p++ = (char)o->key;
			if (has_arg)
				*p++ = ':';
		}
	}
	*p = '\0';
	opterr = 0;
	while (rc == OPT_OK &&
	    (ch = getopt_long(argc, argv, shorts, lopts, NULL)) != -1) {
		if ((o = lookup(cmd, ch)) == NULL) {
			scan_error(cmd, ch, argv, err, size);
			rc = OPT_BAD;
		} else if ((rc = take(o, set, optarg, argc, argv, err,
		    size)) == OPT_OK && o->kind == OPT_EXIT)
			rc = OPT_STOP;
	}
	if (rc == OPT_OK && optind < argc) {
		snprintf(err, size, "unexpected argument '%s' (see %s --help)",
		    argv[optind], cmd->prog);
		rc = OPT_BAD;
	}
	free(lopts);
	free(shorts);
	return rc;
}

/* Free the file lists opt_parse allocated in set. */
void
opt_free(const struct opt_cmd *cmd, void *set)
{
	struct opt_files *l;
	int i;

	for (i = 0; i < cmd->n_opts; i++)
		if (cmd->opts[i].kind == OPT_FILES) {
			l = AT(set, cmd->opts[i].dst, struct opt_files);
			free(l->v);
			l->v = NULL;
			l->n = 0;
		}
}

/* Print "usage: " and the synopsis, then each option and its help. */
void
opt_usage(const struct opt_cmd *cmd, FILE *f)
{
	const struct opt *o;
	const char *h;
	char head[80];
	int i, len;

	fprintf(f, "usage: %s\n", cmd->synopsis);
	for (i = 0; i < cmd->n_opts; i++) {
		o = &cmd->opts[i];
		len = snprintf(head, sizeof head, "  %c%c%c --%s%s%s%s",
		    o->key != 0 ? '-' : ' ', o->key != 0 ? o->key : ' ',
		    o->key != 0 ? ',' : ' ', o->name, o->arg != NULL ? " " :
		    "", o->arg != NULL ? o->arg : "", o->kind == OPT_FILES ?
		    " ..." : "");
		fputs(head, f);
		if (len >= HELP_COL - 1)
			fprintf(f, "\n%*s", HELP_COL, "");
		else
			fprintf(f, "%*s", HELP_COL - len, "");
		for (h = o->help; *h != '\0'; h++) {
			fputc(*h, f);
			if (*h == '\n')
				fprintf(f, "%*s", HELP_COL, "");
		}
		fputc('\n', f);
	}
}
