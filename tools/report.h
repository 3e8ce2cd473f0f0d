/*
 * report.h - kvx-eval's output: the tables on standard output, the CSV
 * file and the SVG plot, in the formats kvx-eval(1) documents.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_REPORT_H
#define KVX_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "eval.h"

/* One table of results, one row per entry. */
void	report_table(FILE *, const struct entry *ents, int n_ent,
	    const struct result *res);
/* The pass-key scores: per entry and variant, hits per length. */
void	report_passkey(FILE *, const struct entry *ents, int n_ent,
	    const struct pk_row *rows, int nrow, const int *lens, int n_len,
	    int n_depth);
/* Write the CSV file and close f; exits with EXIT_OUTPUT on failure. */
void	report_csv(FILE *f, const char *path, const struct entry *ents,
	    int n_ent, const struct text *texts, int n_text,
	    const struct result *res, const struct result *mean,
	    const struct pk_row *pk, int npk);
/* Write the two-panel SVG plot of mean quality against KV memory and
 * close f; exits with EXIT_OUTPUT on failure. */
void	report_plot(FILE *f, const char *path, const struct entry *ents,
	    int n_ent, const struct result *mean, int n_text, int N, int M);

/*
 * The task scores: per task and length, each entry's mean and 95%
 * bootstrap interval over the samples, the mean over tasks, and with a
 * baseline (base >= 0) each entry's paired difference from it.
 */
void	report_tasks(FILE *, const struct entry *ents, int n_ent,
	    const struct task_item *items, int n_items,
	    const struct task_row *rows, int inside, int chat, int prose,
	    int base, uint64_t seed);
/* Write the task rows as CSV and close f; exits with EXIT_OUTPUT on
 * failure. */
void	report_tasks_csv(FILE *f, const char *path, const struct entry *ents,
	    int n_ent, const struct task_item *items, int n_items,
	    const struct task_row *rows, int inside);
/* Plot each entry's mean score against its KV memory, one panel per
 * task family, and close f; exits with EXIT_OUTPUT on failure. */
void	report_tasks_plot(FILE *f, const char *path,
	    const struct entry *ents, int n_ent,
	    const struct task_item *items, int n_items,
	    const struct task_row *rows, int inside);

#endif
