/*
 * tasks.h - kvx-eval's long-context task suite: RULER-style synthetic
 * items (needles in a haystack, variable tracking, common and frequent
 * words, pass key) fitted to a length in tokens, RULER's string-match
 * score and bootstrap intervals, and the JSON-lines dump of the items.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_TASKS_H
#define KVX_TASKS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kvx.h"

enum task_kind {
	TASK_NIAH_SINGLE,
	TASK_NIAH_MULTIKEY,
	TASK_NIAH_MULTIVALUE,
	TASK_NIAH_MULTIQUERY,
	TASK_VT,
	TASK_CWE,
	TASK_FWE,
	TASK_PASSKEY,
	TASK_N
};

#define TASK_MAX_Q	4	/* questions of one item */
#define TASK_MAX_REF	10	/* reference strings of one question */
#define TASK_MAX_NEEDLE	5	/* inserted statements of one item */
#define TASK_BOOT_REPS	1000	/* bootstrap resamples */

/* One question: the text that follows the context, and its answers. */
struct task_question {
	char		*text;		/* question and answer prefix */
	char		*refs[TASK_MAX_REF];
	int		 n_ref;
	int32_t		*ids;
	int		 n_ids;
};

/* One item: a context, the questions about it, and where it hid what. */
struct task_item {
	enum task_kind	 kind;
	int		 length, sample;
	char		 id[64];
	char		*context;	/* everything before a question */
	int32_t		*ids;		/* the context's tokens */
	int		 n_ids;
	struct task_question q[TASK_MAX_Q];
	int		 n_q;
	int		 answer_tokens;	/* greedy tokens decoded at most */
	/* the haystack's bytes in context, and each needle's text and the
	 * depth in percent it was asked for (needle tasks and vt) */
	size_t		 hay_begin, hay_end;
	char		*needle[TASK_MAX_NEEDLE];
	double		 depth[TASK_MAX_NEEDLE];
	int		 n_needle;
};

/* What items are made from: the model's tokenizer, the prose, words. */
struct task_env {
	const kvx_model	*model;
	int		 chat;		/* wrap in the model's chat template */
	char		*chat_pre, *chat_post;
	char		*prose;		/* haystack text, or NULL: noise */
	size_t		*sent;		/* sentence starts in prose */
	int		 n_sent;
	char		*words_buf;	/* the word list */
	char		**words;
	int		 n_words;
	int		 words_generated;
};

/* The task's name as --tasks spells it. */
const char	*task_name(enum task_kind);
/* Its family in the plot and the table: retrieval, tracing, aggregation */
const char	*task_family(enum task_kind);
/*
 * Parse a comma-separated list of task names ("ruler" is all of them)
 * into kinds, without repeats; returns the count, or -1 with the reason
 * in err.
 */
int		 task_parse_list(const char *s, enum task_kind *kinds,
		     char *err, size_t size);
/*
 * Make env from the model, the haystack files (none: RULER's noise for
 * every task) and the word file (NULL: /usr/share/dict/words if
 * readable, else generated words).  0, or -1 with the reason in err.
 */
int		 task_env_init(struct task_env *, const kvx_model *,
		     int chat, const char *const *hay, int n_hay,
		     const char *words, char *err, size_t size);
void		 task_env_free(struct task_env *);
/*
 * Make sample s of n_samples of a task at length tokens: the context,
 * the questions and the longest question's tokens plus answer_tokens
 * fill at most length tokens, and one more haystack unit would not fit.
 * Deterministic for seed.  0, or -1 with the reason in err.
 */
int		 task_make(const struct task_env *, enum task_kind, int length,
		     int s, int n_samples, uint64_t seed,
		     struct task_item *, char *err, size_t size);
void		 task_item_free(struct task_item *);
/* Tokens the item's longest prompt takes with its answer budget. */
int		 task_item_tokens(const struct task_item *);
/* Share of refs found in answer, case-insensitive (RULER's string
 * match); 0 without references. */
double		 task_score(char *const *refs, int n_ref, const char *answer);
/* Mean of x[0..n-1]. */
double		 task_mean(const double *x, int n);
/* Percentile 95% bootstrap interval of the mean of x, seeded. */
void		 task_bootstrap(const double *x, int n, uint64_t seed,
		     double *lo, double *hi);
/* Write the item as one JSON line; -1 on a write error. */
int		 task_dump(FILE *, const struct task_item *, int chat);

#endif
