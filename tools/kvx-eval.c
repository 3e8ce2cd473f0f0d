/*
 * kvx-eval - measure how much KV-cache plans cost in quality against the
 * full cache: continuation perplexity, KL divergence and top-1 agreement
 * on real text under teacher forcing, pass-key retrieval in prose, and a
 * RULER-style task suite with the question after or inside the context.
 * SPDX-License-Identifier: MIT
 *
 * This file is the command line: the table of options, and main, which
 * reads and checks every input before the long work starts.  What is
 * computed lives in eval.c, how it is written in report.c.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eval.h"
#include "opt.h"
#include "report.h"

static const char *progname = "kvx-eval";
static int show_progress;

/* The command line's settings, written by the option table. */
struct args {
	const char		*model, *csv, *plot;
	struct opt_files	 plans, texts, hay;
	int			 N, M, n_ctx, n_threads, weights;
	int			 passkey, print_fp, quiet, help, version;
	struct opt_ints		 lens, depths;
	int			 lens_given;
	uint64_t		 seed;
	const char		*tasks, *words, *dump, *base;
	struct opt_ints		 tlens;
	int			 samples, inside, plain, dump_only;
	enum task_kind		 kinds[TASK_N];
	int			 n_kinds;
};

static const char *const question_modes[] = { "after", "inside", NULL };
static const char *const formats[] = { "chat", "plain", NULL };
#define FORMAT_PLAIN	1	/* formats[] index of plain */
/* --weights, in the order of KVX_WEIGHTS_AUTO, _MMAP, _HUGEPAGES */
static const char *const weights_modes[] = { "auto", "mmap", "huge", NULL };

#define OFF(m)	offsetof(struct args, m)

/* In --help order. */
static const struct opt options[] = {
	{ .key = 'm', .name = "model", .kind = OPT_STR, .arg = "FILE",
	    .dst = OFF(model), .help = "GGUF model" },
	{ .name = "plan", .kind = OPT_FILES, .arg = "FILE", .dst = OFF(plans),
	    .help = "kvx plans to evaluate (repeatable)" },
	{ .name = "text", .kind = OPT_FILES, .arg = "FILE", .dst = OFF(texts),
	    .help = "evaluation texts (repeatable)" },
	{ .name = "context", .kind = OPT_INT, .arg = "N", .lo = 2,
	    .hi = 1 << 20, .dst = OFF(N),
	    .help = "context tokens per text (default 4096)" },
	{ .name = "continuation", .kind = OPT_INT, .arg = "M", .lo = 1,
	    .hi = 1 << 16, .dst = OFF(M),
	    .help = "teacher-forced tokens per text (default 256)" },
	{ .name = "csv", .kind = OPT_STR, .arg = "FILE", .dst = OFF(csv),
	    .help = "write the results as CSV" },
	{ .name = "plot", .kind = OPT_STR, .arg = "FILE.svg", .dst = OFF(plot),
	    .help = "plot quality against KV memory" },
	{ .name = "passkey", .kind = OPT_FLAG, .dst = OFF(passkey),
	    .help = "also run pass-key retrieval" },
	{ .name = "passkey-lengths", .kind = OPT_INTS, .arg = "L", .lo = 64,
	    .hi = 1 << 20, .dst = OFF(lens), .flags = OPT_GIVEN,
	    .given = OFF(lens_given),
	    .help = "comma-separated lengths\n(default 1024,2048,4096,8192)" },
	{ .name = "passkey-depths", .kind = OPT_INTS, .arg = "D", .lo = 0,
	    .hi = 100, .dst = OFF(depths),
	    .help = "comma-separated depths in %\n(default 0,25,50,75,100)" },
	{ .name = "tasks", .kind = OPT_STR, .arg = "LIST", .dst = OFF(tasks),
	    .help = "comma-separated tasks: niah_single, niah_multikey,\n"
	    "niah_multivalue, niah_multiquery, vt, cwe, fwe,\npasskey; "
	    "ruler for all" },
	{ .name = "task-lengths", .kind = OPT_INTS, .arg = "L", .lo = 64,
	    .hi = 1 << 20, .dst = OFF(tlens),
	    .help = "comma-separated prompt lengths in tokens\n"
	    "(default 2048)" },
	{ .name = "task-samples", .kind = OPT_INT, .arg = "N", .lo = 1,
	    .hi = 100000, .dst = OFF(samples),
	    .help = "items per task and length (default 20)" },
	{ .name = "question", .kind = OPT_WORD, .arg = "MODE",
	    .dst = OFF(inside), .names = question_modes,
	    .noun = "question mode",
	    .help = "after (default): compress the context, then ask;\n"
	    "inside: the question ends the prompt" },
	{ .name = "format", .kind = OPT_WORD, .arg = "F", .dst = OFF(plain),
	    .names = formats, .noun = "format",
	    .help = "plain (default): the text alone;\n"
	    "chat: the model's chat template" },
	{ .name = "haystack", .kind = OPT_FILES, .arg = "FILE", .dst = OFF(hay),
	    .help = "prose for the needle tasks (repeatable;\n"
	    "default: a repeated noise sentence)" },
	{ .name = "words", .kind = OPT_STR, .arg = "FILE", .dst = OFF(words),
	    .help = "word list, one a line (default\n"
	    "/usr/share/dict/words, else generated words)" },
	{ .name = "baseline-plan", .kind = OPT_STR, .arg = "P", .dst = OFF(base),
	    .help = "report each plan's paired difference from P\n"
	    "(a --plan file, its name, or full)" },
	{ .name = "dump-tasks", .kind = OPT_STR, .arg = "FILE", .dst = OFF(dump),
	    .help = "write the task items as JSON lines" },
	{ .name = "dump-only", .kind = OPT_FLAG, .dst = OFF(dump_only),
	    .help = "write --dump-tasks and answer nothing" },
	{ .name = "seed", .kind = OPT_U64, .arg = "S", .lo = 0,
	    .hi = 0x7fffffff, .dst = OFF(seed),
	    .help = "seed of the pass keys and tasks (default 1)" },
	{ .key = 'c', .name = "ctx", .kind = OPT_INT, .arg = "N", .lo = 16,
	    .hi = 1 << 20, .dst = OFF(n_ctx),
	    .help = "context size in tokens (default: the model's)" },
	{ .key = 't', .name = "threads", .kind = OPT_INT, .arg = "N", .lo = 1,
	    .hi = 256, .dst = OFF(n_threads),
	    .help = "worker threads (default: all CPUs)" },
	{ .name = "weights", .kind = OPT_WORD, .arg = "W",
	    .dst = OFF(weights), .names = weights_modes, .noun = "weights mode",
	    .help = "huge: the weights on 2 MiB pages (the default, unless\n"
	    "the environment sets KVX_WEIGHTS=mmap); mmap: the mapped file" },
	{ .name = "print-fingerprint", .kind = OPT_FLAG, .dst = OFF(print_fp),
	    .help = "print the model's fingerprint and exit" },
	{ .key = 'q', .name = "quiet", .kind = OPT_FLAG, .dst = OFF(quiet),
	    .help = "no progress on standard error" },
	{ .key = 'h', .name = "help", .kind = OPT_EXIT, .dst = OFF(help),
	    .help = "show this help" },
	{ .key = 'V', .name = "version", .kind = OPT_EXIT, .dst = OFF(version),
	    .help = "show the version" },
};

static const struct opt_cmd cmd = {
	"kvx-eval",
	"kvx-eval -m MODEL {--text FILE ... | --tasks LIST} [--plan PLAN ...] "
	    "[options]",
	options, (int)(sizeof options / sizeof options[0])
};

/* Everything one evaluation holds, from the model to the results. */
struct run {
	kvx_model		*model;
	const kvx_model_info	*info;
	int			 n_ctx;
	kvx_ctx			*src;		/* the shared full prefill */
	struct entry		*ents;		/* the full cache, then plans */
	int			 n_ent;
	struct text		*texts;
	int			 n_text, n_prose;
	struct result		*res, *mean;	/* [n_text][n_ent], [n_ent] */
	struct pk_row		*pk;
	int			 npk;
	struct task_env		 env;
	struct task_item	*items;
	int			 n_items, base;
	struct task_row		*rows;		/* [n_items][n_ent] */
	FILE			*csv, *plot, *dump;
};

/* Print "kvx-eval: message" and exit with code. */
void
fail(int code, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", progname);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

/* Show what is running on a terminal; an empty message clears the line. */
void
progress(const char *fmt, ...)
{
	va_list ap;

	if (!show_progress)
		return;
	fputs("\r\033[K", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fflush(stderr);
}

/* Parse the command line into a, or exit: help, version, usage error. */
static void
parse_args(struct args *a, int argc, char **argv)
{
	static const struct opt_ints lens = { { 1024, 2048, 4096, 8192 }, 4 };
	static const struct opt_ints depths = { { 0, 25, 50, 75, 100 }, 5 };
	static const struct opt_ints tlens = { { 2048 }, 1 };
	char err[256];
	int rc;

	memset(a, 0, sizeof *a);
	a->N = 4096;
	a->M = 256;
	a->lens = lens;
	a->depths = depths;
	a->seed = 1;
	a->tlens = tlens;
	a->samples = 20;
	/* the default model answers more items without its template */
	a->plain = FORMAT_PLAIN;
	rc = opt_parse(&cmd, a, argc, argv, err, sizeof err);
	if (rc == OPT_STOP) {
		if (a->help)
			opt_usage(&cmd, stdout);
		else
			printf("kvx-eval %s\n", kvx_version());
		exit(0);
	}
	if (rc == OPT_NOMEM)
		fail(EXIT_RUN, "out of memory");
	if (rc != OPT_OK)
		fail(EXIT_USAGE, "%s", err);
	if (a->model == NULL)
		fail(EXIT_USAGE, "no model given (-m MODEL)");
	if (a->tasks != NULL && (a->n_kinds = task_parse_list(a->tasks,
	    a->kinds, err, sizeof err)) < 0)
		fail(EXIT_USAGE, "%s", err);
	if (a->texts.n == 0 && a->tasks == NULL && !a->print_fp)
		fail(EXIT_USAGE, "no text given (--text FILE)");
	if (a->texts.n > 0 && a->tasks != NULL)
		fail(EXIT_USAGE, "--text and --tasks: one or the other in one "
		    "run (the CSV holds one kind of row)");
	if (a->passkey && a->texts.n == 0)
		fail(EXIT_USAGE, "--passkey needs --text (the prose it hides "
		    "keys in)");
	if (a->dump_only && a->dump == NULL)
		fail(EXIT_USAGE, "--dump-only needs --dump-tasks");
	if (a->tasks == NULL && (a->base != NULL || a->dump != NULL))
		fail(EXIT_USAGE, "--%s needs --tasks", a->base != NULL ?
		    "baseline-plan" : "dump-tasks");
	show_progress = !a->quiet && isatty(STDERR_FILENO);
}

/*
 * Check the lengths against the context size n_ctx and sort the pass-key
 * lengths ascending (the largest sizes the prompt buffer); default
 * lengths that do not fit are skipped with a note.
 */
static void
fit_lengths(struct args *a, int n_ctx)
{
	int *lens = a->lens.v, i, t, keep;

	for (i = 1; i < a->tlens.n; i++)
		for (t = i; t > 0 && a->tlens.v[t] < a->tlens.v[t - 1]; t--) {
			keep = a->tlens.v[t];
			a->tlens.v[t] = a->tlens.v[t - 1];
			a->tlens.v[t - 1] = keep;
		}

	for (i = 0; i < a->tlens.n; i++)
		if (a->tlens.v[i] > n_ctx)
			fail(EXIT_USAGE, "--task-lengths: %d exceeds the "
			    "context size of %d tokens (use --ctx)",
			    a->tlens.v[i], n_ctx);
	if (a->tasks == NULL && a->N + a->M > n_ctx)
		fail(EXIT_USAGE, "--context %d + --continuation %d exceeds the "
		    "context size of %d tokens (use --ctx)", a->N, a->M, n_ctx);
	if (!a->passkey)
		return;
	for (i = 1; i < a->lens.n; i++)
		for (t = i; t > 0 && lens[t] < lens[t - 1]; t--) {
			keep = lens[t];
			lens[t] = lens[t - 1];
			lens[t - 1] = keep;
		}
	for (keep = 0, i = 0; i < a->lens.n; i++) {
		if (lens[i] <= n_ctx) {
			lens[keep++] = lens[i];
			continue;
		}
		if (a->lens_given)
			fail(EXIT_USAGE, "--passkey-lengths: %d exceeds the "
			    "context size of %d tokens (use --ctx)", lens[i],
			    n_ctx);
		fprintf(stderr, "%s: pass key: skipping length %d, beyond the "
		    "context size of %d tokens\n", progname, lens[i], n_ctx);
	}
	if ((a->lens.n = keep) == 0)
		fail(EXIT_USAGE, "no pass-key length fits the context size of "
		    "%d tokens", n_ctx);
}

/* Load and check every plan; entry 0 is the full cache, then the plans
 * in command-line order. */
static void
open_entries(struct run *r, const struct args *a)
{
	struct entry *e;
	int i;

	r->n_ent = a->plans.n + 1;
	if ((r->ents = calloc((size_t)r->n_ent, sizeof *r->ents)) == NULL)
		fail(EXIT_RUN, "out of memory");
	e = &r->ents[0];
	e->path = "full";
	snprintf(e->name, sizeof e->name, "full");
	snprintf(e->method, sizeof e->method, "full");
	snprintf(e->budget, sizeof e->budget, "1");
	for (i = 0; i < a->plans.n; i++) {
		e = &r->ents[i + 1];
		e->path = a->plans.v[i];
		if (kvx_plan_load(e->path, &e->plan) != KVX_OK)
			fail(EXIT_PLAN, "%s", kvx_errmsg());
		if (kvx_plan_check(e->plan, r->model) != KVX_OK)
			fail(EXIT_PLAN, "%s: %s", e->path, kvx_errmsg());
		eval_label(e);
	}
}

/* Read and tokenize every text, and check that each is long enough. */
static void
read_texts(struct run *r, const struct args *a)
{
	struct text *t;
	size_t len;
	char *buf;
	int i;

	r->n_text = a->texts.n;
	if ((r->texts = calloc((size_t)r->n_text, sizeof *r->texts)) == NULL)
		fail(EXIT_RUN, "out of memory");
	for (i = 0; i < r->n_text; i++) {
		t = &r->texts[i];
		t->path = a->texts.v[i];
		if (kvx__read_file(t->path, 0, &buf, &len) != KVX_OK)
			fail(EXIT_TEXT, "%s", kvx_errmsg());
		if (eval_tokenize(r->model, buf, len, &t->ids, &t->n) !=
		    KVX_OK)
			fail(EXIT_TEXT, "%s: %s", t->path, kvx_errmsg());
		eval_add_bos(r->model, &t->ids, &t->n);
		free(buf);
		if (t->n < a->N + a->M)
			fail(EXIT_TEXT, "%s: %d tokens, fewer than --context "
			    "%d + --continuation %d = %d", t->path, t->n, a->N,
			    a->M, a->N + a->M);
		r->n_prose += t->n;
	}
}

/* Open the output files, before the long work, so a bad path fails fast. */
static void
open_outputs(struct run *r, const struct args *a)
{
	if (a->csv != NULL && (r->csv = fopen(a->csv, "w")) == NULL)
		fail(EXIT_OUTPUT, "%s: %s", a->csv, strerror(errno));
	if (a->plot != NULL && (r->plot = fopen(a->plot, "w")) == NULL)
		fail(EXIT_OUTPUT, "%s: %s", a->plot, strerror(errno));
	if (a->dump != NULL && (r->dump = fopen(a->dump, "w")) == NULL)
		fail(EXIT_OUTPUT, "%s: %s", a->dump, strerror(errno));
}

/*
 * The baseline of --baseline-plan: the full cache, or the entry whose
 * path or name is P; -1 without one.
 */
static int
find_base(const struct run *r, const char *p)
{
	int i;

	if (p == NULL)
		return -1;
	for (i = 0; i < r->n_ent; i++)
		if (strcmp(r->ents[i].path, p) == 0 ||
		    strcmp(r->ents[i].name, p) == 0)
			return i;
	fail(EXIT_USAGE, "--baseline-plan: %s is neither full nor one of the "
	    "--plan files", p);
	return -1;
}

/*
 * Make every task item, task by task, each length ascending, and write
 * them to the dump; every length must hold the task.
 */
static void
make_items(struct run *r, const struct args *a)
{
	char err[256];
	int k, l, s, n = 0;

	if (task_env_init(&r->env, r->model, !a->plain,
	    (const char *const *)a->hay.v, a->hay.n, a->words, err,
	    sizeof err) != 0)
		fail(EXIT_TEXT, "%s", err);
	r->n_items = a->n_kinds * a->tlens.n * a->samples;
	if ((r->items = calloc((size_t)r->n_items, sizeof *r->items)) == NULL)
		fail(EXIT_RUN, "out of memory");
	for (k = 0; k < a->n_kinds; k++)
		for (l = 0; l < a->tlens.n; l++)
			for (s = 0; s < a->samples; s++) {
				progress("tasks: making %s at %d (%d/%d)",
				    task_name(a->kinds[k]), a->tlens.v[l],
				    n + 1, r->n_items);
				if (task_make(&r->env, a->kinds[k],
				    a->tlens.v[l], s, a->samples, a->seed,
				    &r->items[n], err, sizeof err) != 0)
					fail(EXIT_USAGE, "%s", err);
				if (r->dump != NULL && task_dump(r->dump,
				    &r->items[n], !a->plain) != 0)
					fail(EXIT_OUTPUT, "%s: %s", a->dump,
					    strerror(errno));
				n++;
			}
	if (r->dump != NULL && fclose(r->dump) != 0)
		fail(EXIT_OUTPUT, "%s: %s", a->dump, strerror(errno));
	r->dump = NULL;
}

/* Every entry's answers to every item. */
static void
run_tasks(struct run *r, const struct args *a)
{
	r->rows = calloc((size_t)r->n_items * r->n_ent, sizeof *r->rows);
	if (r->rows == NULL)
		fail(EXIT_RUN, "out of memory");
	eval_tasks(r->model, r->src, r->ents, r->n_ent, r->items, r->n_items,
	    a->inside, r->rows);
}

/* 1 when an entry's plan takes Expected Attention's statistics from
 * every query of the prompt, which the shared prefill must then keep. */
static int
spans_prompt(const struct run *r)
{
	kvx_plan_info pi;
	int i;

	for (i = 0; i < r->n_ent; i++)
		if (r->ents[i].plan != NULL &&
		    kvx_plan_get_info(r->ents[i].plan, &pi) == KVX_OK &&
		    strcmp(pi.scorer, "expected-attention") == 0 &&
		    pi.ea_queries == 0)
			return 1;
	return 0;
}

/* A context per entry, and the full one that holds the shared prefill. */
static void
new_contexts(struct run *r)
{
	kvx_ctx_params cp;
	struct entry *e;
	int i;

	kvx_ctx_params_init(&cp);
	cp.n_ctx = r->n_ctx;
	/*
	 * No decode headroom: kv_bytes, read right after compression, is then
	 * the compressed cache alone, comparable with the plan's own byte
	 * counts; the continuation grows the segments afterwards.
	 */
	cp.decode_headroom = 0;
	for (i = 0; i < r->n_ent; i++) {
		e = &r->ents[i];
		if (kvx_ctx_new(r->model, e->plan, &cp, &e->ctx) != KVX_OK)
			fail(e->plan != NULL ? EXIT_PLAN : EXIT_RUN, "%s: %s",
			    e->path, kvx_errmsg());
	}
	cp.query_stats = spans_prompt(r);
	if (kvx_ctx_new(r->model, NULL, &cp, &r->src) != KVX_OK)
		fail(EXIT_RUN, "%s", kvx_errmsg());
}

/* Perplexity, KL and top-1 of every entry on every text, and the means. */
static void
run_texts(struct run *r, const struct args *a)
{
	int t;

	r->res = calloc((size_t)r->n_text * r->n_ent, sizeof *r->res);
	r->mean = calloc((size_t)r->n_ent, sizeof *r->mean);
	if (r->res == NULL || r->mean == NULL)
		fail(EXIT_RUN, "out of memory");
	for (t = 0; t < r->n_text; t++)
		eval_text(r->model, r->src, r->ents, r->n_ent, &r->texts[t], t,
		    r->n_text, a->N, a->M, r->res + (size_t)t * r->n_ent);
	eval_mean(r->res, r->n_text, r->n_ent, r->mean);
}

/* The pass-key trials, in the texts' prose, one text after another. */
static void
run_passkey(struct run *r, const struct args *a)
{
	int32_t *prose;
	int t, n = 0;

	if ((prose = malloc(sizeof *prose * (size_t)r->n_prose)) == NULL)
		fail(EXIT_RUN, "out of memory");
	for (t = 0; t < r->n_text; t++) {
		memcpy(prose + n, r->texts[t].ids,
		    sizeof *prose * (size_t)r->texts[t].n);
		n += r->texts[t].n;
	}
	r->npk = eval_passkey(r->model, r->src, r->ents, r->n_ent, prose,
	    r->n_prose, a->lens.v, a->lens.n, a->depths.v, a->depths.n,
	    a->seed, &r->pk);
	free(prose);
}

/* The tables on standard output, then the CSV file and the plot. */
static void
report(struct run *r, const struct args *a)
{
	int t;

	if (r->n_items > 0) {
		printf("model: %s (%s)\n", a->model, r->info->fingerprint);
		report_tasks(stdout, r->ents, r->n_ent, r->items, r->n_items,
		    r->rows, a->inside, !a->plain, r->env.prose != NULL,
		    r->base, a->seed);
		fflush(stdout);
		if (r->csv != NULL)
			report_tasks_csv(r->csv, a->csv, r->ents, r->n_ent,
			    r->items, r->n_items, r->rows, a->inside);
		if (r->plot != NULL)
			report_tasks_plot(r->plot, a->plot, r->ents, r->n_ent,
			    r->items, r->n_items, r->rows, a->inside);
		return;
	}
	printf("model: %s (%s), context %d, continuation %d\n", a->model,
	    r->info->fingerprint, a->N, a->M);
	for (t = 0; t < r->n_text; t++) {
		printf("\ntext: %s (%d tokens)\n", r->texts[t].path,
		    r->texts[t].n);
		report_table(stdout, r->ents, r->n_ent,
		    r->res + (size_t)t * r->n_ent);
	}
	if (r->n_text > 1) {
		printf("\nmean over %d texts\n", r->n_text);
		report_table(stdout, r->ents, r->n_ent, r->mean);
	}
	if (r->npk > 0)
		report_passkey(stdout, r->ents, r->n_ent, r->pk, r->npk,
		    a->lens.v, a->lens.n, a->depths.n);
	fflush(stdout);
	if (r->csv != NULL)
		report_csv(r->csv, a->csv, r->ents, r->n_ent, r->texts,
		    r->n_text, r->res, r->mean, r->pk, r->npk);
	if (r->plot != NULL)
		report_plot(r->plot, a->plot, r->ents, r->n_ent, r->mean,
		    r->n_text, a->N, a->M);
}

/* Free everything r holds; contexts go before the model they came from. */
static void
run_free(struct run *r)
{
	int i;

	for (i = 0; i < r->n_ent; i++) {
		kvx_ctx_free(&r->ents[i].ctx);
		kvx_plan_free(&r->ents[i].plan);
	}
	for (i = 0; i < r->n_text; i++)
		free(r->texts[i].ids);
	kvx_ctx_free(&r->src);
	kvx_model_close(&r->model);
	free(r->texts);
	free(r->ents);
	free(r->res);
	free(r->mean);
	free(r->pk);
	for (i = 0; i < r->n_items; i++)
		task_item_free(&r->items[i]);
	for (i = 0; i < r->n_items * r->n_ent && r->rows != NULL; i++)
		free(r->rows[i].answer);
	free(r->items);
	free(r->rows);
	task_env_free(&r->env);
}

/* Check every input, then evaluate, then report. */
int
main(int argc, char **argv)
{
	kvx_model_params mp;
	struct args a;
	struct run r;

	parse_args(&a, argc, argv);
	memset(&r, 0, sizeof r);
	kvx_model_params_init(&mp);
	mp.n_threads = a.n_threads;
	mp.weights = a.weights;
	if (kvx_model_open(a.model, &mp, &r.model) != KVX_OK)
		fail(EXIT_MODEL, "%s", kvx_errmsg());
	r.info = kvx_model_get_info(r.model);
	if (a.print_fp) {
		printf("%s\n", r.info->fingerprint);
		kvx_model_close(&r.model);
		opt_free(&cmd, &a);
		return 0;
	}
	r.n_ctx = a.n_ctx > 0 ? a.n_ctx : r.info->n_ctx_train;
	fit_lengths(&a, r.n_ctx);
	open_entries(&r, &a);
	read_texts(&r, &a);
	open_outputs(&r, &a);
	r.base = find_base(&r, a.base);
	if (a.tasks != NULL)
		make_items(&r, &a);
	if (a.dump_only) {
		progress("");
		run_free(&r);
		opt_free(&cmd, &a);
		return 0;
	}
	new_contexts(&r);

	if (a.tasks != NULL)
		run_tasks(&r, &a);
	else
		run_texts(&r, &a);
	if (a.passkey)
		run_passkey(&r, &a);
	progress("");
	report(&r, &a);

	run_free(&r);
	opt_free(&cmd, &a);
	return 0;
}
