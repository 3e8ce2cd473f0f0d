/*
 * opt.h - command-line options described by a table: each option's
 * names, argument kind, range, destination and help line.  One loop
 * parses a command line into a program's settings, and the help text
 * comes from the same table, as runtime/plan.c's fields[] drives the plan
 * format.  Shared by kvx-plan, kvx-run and kvx-eval; not part of libkvx.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_OPT_H
#define KVX_OPT_H

#include <stddef.h>
#include <stdio.h>

enum opt_kind {
	OPT_FLAG,	/* no argument: the int at dst becomes 1 */
	OPT_EXIT,	/* as OPT_FLAG, and parsing stops there (-h, -V) */
	OPT_STR,	/* one argument: a const char * at dst */
	OPT_FILES,	/* one or more files: the argument and every one
			   after it that is not an option; a struct
			   opt_files at dst, appended to when repeated */
	OPT_INT,	/* an integer in [lo, hi]: an int at dst */
	OPT_I64,	/* an integer in [lo, hi]: an int64_t at dst */
	OPT_U64,	/* an integer in [lo, hi], lo >= 0: a uint64_t */
	OPT_NUM,	/* a finite number in [lo, hi]: a double at dst */
	OPT_WORD,	/* one of names: its index, an int at dst */
	OPT_INTS,	/* integers in [lo, hi] separated by commas: a
			   struct opt_ints at dst */
	OPT_FUNC	/* parsed by fn */
};

#define OPT_ODD		0x1	/* OPT_INT: odd values only */
#define OPT_GIVEN	0x2	/* the int at given becomes 1 when it appears */

#define OPT_MAX_INTS	16	/* entries of an OPT_INTS list */

struct opt_files {
	const char	**v;	/* argv's strings; freed by opt_free */
	int		  n;
};

struct opt_ints {
	int		 v[OPT_MAX_INTS];
	int		 n;
};

struct opt {
	int		 key;		/* short option letter, or 0 */
	const char	*name;		/* long name, without "--" */
	enum opt_kind	 kind;
	const char	*arg;		/* the argument in the help, or NULL */
	double		 lo, hi;	/* range of a number */
	size_t		 dst;		/* offsetof the setting */
	size_t		 given;		/* OPT_GIVEN: offsetof an int flag */
	int		 flags;
	const char *const *names;	/* OPT_WORD: NULL-terminated */
	const char	*noun;		/* OPT_WORD: what the words name */
	/* OPT_FUNC: 0, or -1 with the reason in err */
	int		(*fn)(void *set, const char *arg, char *err,
			    size_t size);
	const char	*help;		/* lines separated by '\n' */
};

/* A program's options. */
struct opt_cmd {
	const char		*prog;
	const char		*synopsis;	/* after "usage: " */
	const struct opt	*opts;
	int			 n_opts;
};

/* What opt_parse found. */
enum {
	OPT_OK = 0,		/* every argument parsed */
	OPT_STOP = 1,		/* an OPT_EXIT option ended the parse */
	OPT_BAD = -1,		/* a usage error, described in err */
	OPT_NOMEM = -2		/* out of memory */
};

/*
 * Parse argv into the settings at set by cmd's table, in order; every
 * argument must belong to an option.  Returns one of the codes above.
 */
int	opt_parse(const struct opt_cmd *cmd, void *set, int argc,
	    char **argv, char *err, size_t size);
/* Free what opt_parse allocated in set (the file lists). */
void	opt_free(const struct opt_cmd *cmd, void *set);
/* Print the synopsis and one line per option. */
void	opt_usage(const struct opt_cmd *cmd, FILE *f);

#endif
