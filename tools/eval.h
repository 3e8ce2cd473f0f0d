/*
 * eval.h - what kvx-eval computes: continuation perplexity, KL divergence
 * and top-1 agreement of KV-cache plans against the full cache under
 * teacher forcing, pass-key retrieval in prose, and the task suite
 * (tasks.h) in either question mode; the results it
 * reports (report.c) and how the program shows errors and progress.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_EVAL_H
#define KVX_EVAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kvx.h"
#include "tasks.h"
#include "util.h"

/* exit codes, documented in kvx-eval(1) */
#define EXIT_RUN	1	/* inference failed */
#define EXIT_USAGE	2	/* bad command line */
#define EXIT_MODEL	3	/* model missing, unreadable or malformed */
#define EXIT_PLAN	4	/* plan missing, malformed, for another model */
#define EXIT_TEXT	5	/* text missing, unreadable or too short */
#define EXIT_OUTPUT	6	/* CSV or plot could not be written */

#define ANSWER_TOKENS	6	/* greedy tokens decoded for a pass key */

/* One column of the evaluation: the full cache (plan NULL) or a plan. */
struct entry {
	const char	*path;
	char		 name[64];
	char		 method[32];
	char		 budget[32];
	kvx_plan	*plan;
	kvx_ctx		*ctx;
};

/* Quality of one plan on one text. */
struct result {
	double		 ppl, kl, top1;
	uint64_t	 kv_bytes, kv_bytes_full;
};

/* One evaluation text and its tokens. */
struct text {
	const char	*path;
	int32_t		*ids;
	int		 n;
};

/* One pass-key trial of one plan. */
struct pk_row {
	int		 plan, length, depth, aware, key, match;
	char		 answer[16];
};

/* One plan's answer to one task item. */
struct task_row {
	int		 plan, item;
	double		 score;		/* share of the item's references */
	uint64_t	 kv_bytes, kv_bytes_full;
	char		*answer;	/* the answers, joined by " | " */
};

/* Print "kvx-eval: message" and exit with code (kvx-eval.c). */
void		 fail(int code, const char *fmt, ...) KVX_PRINTF(2, 3);
/* Show what is running on a terminal; "" clears the line (kvx-eval.c). */
void		 progress(const char *fmt, ...);

/* Tokenize text without special tokens; *out is malloc'd. */
void		 eval_add_bos(const kvx_model *, int32_t **ids, int *n);
kvx_status	 eval_tokenize(const kvx_model *, const char *s, size_t len,
		     int32_t **out, int *n);
/* Fill an entry's name, method and budget columns from its plan. */
void		 eval_label(struct entry *);
/*
 * Prefill text t once into src with the full cache, then compress it
 * into each entry's context and teacher-force its continuation, the M
 * tokens after the first N; res gets one result per entry.  Entry 0 is
 * the full cache.
 */
void		 eval_text(kvx_model *, kvx_ctx *src, struct entry *ents,
		     int n_ent, const struct text *t, int ti, int n_text,
		     int N, int M, struct result *res);
/*
 * The pass-key trials, lengths ascending: for each length and depth a
 * question-agnostic and a question-aware prefill of the prose; *out gets
 * n_ent rows per trial.  Returns the number of rows.
 */
int		 eval_passkey(kvx_model *, kvx_ctx *src, struct entry *ents,
		     int n_ent, const int32_t *prose, int n_prose,
		     const int *lens, int n_len, const int *depths,
		     int n_depth, uint64_t seed, struct pk_row **out);
/*
 * Answer every question of every item with every entry, greedily; rows
 * gets n_items * n_ent rows, item-major.  With inside, the question ends
 * the prefill (inside the observation window); otherwise the context is
 * prefilled and compressed alone, and each question is appended to the
 * compressed cache, which is rebuilt from the prefill before the next.
 */
void		 eval_tasks(kvx_model *, kvx_ctx *src, struct entry *ents,
		     int n_ent, const struct task_item *items, int n_items,
		     int inside, struct task_row *rows);
/* Mean over the texts of each entry's results. */
void		 eval_mean(const struct result *res, int n_text, int n_ent,
		     struct result *mean);

#endif
