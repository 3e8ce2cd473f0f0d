/*
 * kvx-eval - measure how much KV-cache plans cost in quality against the
 * full cache: continuation perplexity, KL divergence and top-1 agreement
 * on real text under teacher forcing, and pass-key retrieval in prose.
 * SPDX-License-Identifier: MIT
 *
 * Every text is prefilled once with a full cache; each plan then
 * compresses that prefill (kvx_compress_from) and runs the continuation,
 * so a plan costs its compression and its continuation only, and every
 * plan sees exactly the same prefill.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvx.h"
#include "plan.h"
#include "util.h"

/* exit codes, documented in kvx-eval(1) */
#define EXIT_RUN	1	/* inference failed */
#define EXIT_USAGE	2	/* bad command line */
#define EXIT_MODEL	3	/* model missing, unreadable or malformed */
#define EXIT_PLAN	4	/* plan missing, malformed or for another model */
#define EXIT_TEXT	5	/* text missing, unreadable or too short */
#define EXIT_OUTPUT	6	/* CSV or plot could not be written */

#define MAX_LIST	16	/* entries of --passkey-lengths / -depths */
#define ANSWER_TOKENS	6	/* greedy tokens decoded for a pass key */

static const char *progname = "kvx-eval";
static int show_progress;

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

/* Print the option summary. */
static void
usage(FILE *f)
{
	fprintf(f,
"usage: kvx-eval -m MODEL --text FILE [--text FILE ...] [--plan PLAN ...]\n"
"                [options]\n"
"  -m, --model FILE          GGUF model\n"
"      --plan FILE           a kvx plan to evaluate (repeatable)\n"
"      --text FILE           an evaluation text (repeatable)\n"
"      --context N           context tokens per text (default 4096)\n"
"      --continuation M      teacher-forced tokens per text (default 256)\n"
"      --csv FILE            write the results as CSV\n"
"      --plot FILE.svg       plot quality against KV memory\n"
"      --passkey             also run pass-key retrieval\n"
"      --passkey-lengths L   comma-separated lengths (default "
"1024,2048,4096,8192)\n"
"      --passkey-depths D    comma-separated depths in %% (default "
"0,25,50,75,100)\n"
"      --seed S              seed of the pass keys (default 1)\n"
"  -c, --ctx N               context size in tokens (default: the model's)\n"
"  -t, --threads N           worker threads (default: all CPUs)\n"
"      --print-fingerprint   print the model's fingerprint and exit\n"
"  -q, --quiet               no progress on standard error\n"
"  -h, --help                show this help\n"
"  -V, --version             show the version\n");
}

/* Print "kvx-eval: message" and exit with code. */
static void
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
static void
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

/* Parse an integer option in [lo, hi] or exit with a usage error. */
static long
num(const char *s, const char *opt, long lo, long hi)
{
	long v;

	if (kvx__parse_long(s, lo, hi, &v) != 0)
		fail(EXIT_USAGE, "%s: '%s' is not an integer in [%ld, %ld]",
		    opt, s, lo, hi);
	return v;
}

/* Parse a comma-separated list of integers in [lo, hi]; returns the count. */
static int
num_list(const char *s, const char *opt, long lo, long hi, int *out)
{
	char buf[256], *tok, *save;
	int n = 0;

	if (strlen(s) >= sizeof buf)
		fail(EXIT_USAGE, "%s: list too long", opt);
	strcpy(buf, s);
	for (tok = strtok_r(buf, ",", &save); tok != NULL;
	    tok = strtok_r(NULL, ",", &save)) {
		if (n == MAX_LIST)
			fail(EXIT_USAGE, "%s: more than %d entries", opt,
			    MAX_LIST);
		out[n++] = (int)num(tok, opt, lo, hi);
	}
	if (n == 0)
		fail(EXIT_USAGE, "%s: '%s' is an empty list", opt, s);
	return n;
}

/* Tokenize text (no special tokens); *out is malloc'd. */
static kvx_status
tokenize(const kvx_model *m, const char *s, size_t len, int32_t **out,
    int *n)
{
	int cap = (int)(len + 16);
	kvx_status rc;

	if (len > (size_t)INT32_MAX - 16)
		fail(EXIT_TEXT, "text of %zu bytes is too large", len);
	if ((*out = malloc(sizeof **out * (size_t)cap)) == NULL)
		fail(EXIT_RUN, "out of memory");
	if ((rc = kvx_tokenize(m, s, len, 0, *out, cap, n)) != KVX_OK) {
		free(*out);
		*out = NULL;
	}
	return rc;
}

/* The plan's short name: its file name without directory or extension. */
static void
entry_label(struct entry *e)
{
	const char *b = strrchr(e->path, '/');
	char *dot;

	snprintf(e->name, sizeof e->name, "%s", b != NULL ? b + 1 : e->path);
	if ((dot = strrchr(e->name, '.')) != NULL && dot != e->name)
		*dot = '\0';
	snprintf(e->method, sizeof e->method, "%s",
	    e->plan->method[0] != '\0' ? e->plan->method : "unknown");
	if (e->plan->budget_kind == PLAN_BUDGET_TOKENS)
		snprintf(e->budget, sizeof e->budget, "%.0ft",
		    e->plan->budget);
	else
		snprintf(e->budget, sizeof e->budget, "%.4g", e->plan->budget);
}

/* Index of the largest of n logits. */
static int
argmax(const float *x, int n)
{
	int i, best = 0;

	for (i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

/* log sum exp of n logits, in double. */
static double
logsumexp(const float *x, int n)
{
	double s = 0.0, mx = x[argmax(x, n)];
	int i;

	for (i = 0; i < n; i++)
		s += exp((double)x[i] - mx);
	return mx + log(s);
}

/* KL(p || q) between the softmax distributions of two logit rows. */
static double
kl_rows(const float *p, const float *q, int n)
{
	double lp = logsumexp(p, n), lq = logsumexp(q, n), kl = 0.0, a;
	int i;

	for (i = 0; i < n; i++) {
		a = (double)p[i] - lp;
		kl += exp(a) * (a - ((double)q[i] - lq));
	}
	return kl > 0.0 ? kl : 0.0;
}

/* The logits predicting continuation token i: the prefill's last row for
 * the first token, then row i - 1 of the teacher-forced rows. */
static const float *
pred_row(const float *last, const float *rows, int i, int V)
{
	return i == 0 ? last : rows + (size_t)(i - 1) * V;
}

/*
 * Compress the shared prefill in src into e's context, teacher-force the
 * continuation, and leave its M - 1 logit rows in rows.
 */
static void
run_continuation(struct entry *e, kvx_ctx *src, const int32_t *cont, int M,
    float *rows, struct result *r)
{
	kvx_memory mem;

	kvx_seq_clear(e->ctx, 0);
	if (kvx_compress_from(e->ctx, 0, src, 0) != KVX_OK)
		fail(EXIT_RUN, "%s: %s", e->name, kvx_errmsg());
	if (kvx_ctx_memory(e->ctx, &mem) != KVX_OK)
		fail(EXIT_RUN, "%s", kvx_errmsg());
	r->kv_bytes = mem.kv_bytes;
	/* the last continuation token predicts nothing we score */
	if (M > 1 && kvx_extend(e->ctx, 0, cont, M - 1, rows) != KVX_OK)
		fail(EXIT_RUN, "%s: %s", e->name, kvx_errmsg());
	kvx_seq_clear(e->ctx, 0);
}

/* Perplexity, KL from the full cache and top-1 agreement of one plan. */
static void
score(const float *last, const float *rows, const float *frows,
    const int32_t *cont, int M, int V, int is_full, struct result *r)
{
	const float *p, *f;
	double nll = 0.0, kl = 0.0;
	int i, agree = 0;

	for (i = 0; i < M; i++) {
		p = pred_row(last, rows, i, V);
		nll += logsumexp(p, V) - (double)p[cont[i]];
		if (is_full) {
			agree++;
			continue;
		}
		f = pred_row(last, frows, i, V);
		kl += kl_rows(f, p, V);
		agree += argmax(f, V) == argmax(p, V);
	}
	r->ppl = exp(nll / M);
	r->kl = kl / M;
	r->top1 = (double)agree / M;
}

/* Evaluate every entry on one text; res gets one result per entry. */
static void
eval_text(kvx_model *m, kvx_ctx *src, struct entry *ents, int n_ent,
    const struct text *t, int ti, int n_text, int N, int M,
    struct result *res)
{
	const kvx_model_info *mi = kvx_model_get_info(m);
	int V = mi->n_vocab, i;
	size_t rowsz = (size_t)(M > 1 ? M - 1 : 1) * V;
	float *last, *frows, *rows;
	const int32_t *cont = t->ids + N;

	last = malloc(sizeof *last * (size_t)V);
	frows = malloc(sizeof *frows * rowsz);
	rows = malloc(sizeof *rows * rowsz);
	if (last == NULL || frows == NULL || rows == NULL)
		fail(EXIT_RUN, "out of memory");
	progress("text %d/%d: prefill of %d tokens", ti + 1, n_text, N);
	kvx_seq_clear(src, 0);
	if (kvx_prefill(src, 0, t->ids, N, last) != KVX_OK)
		fail(EXIT_RUN, "%s: %s", t->path, kvx_errmsg());
	for (i = 0; i < n_ent; i++) {
		progress("text %d/%d: %s", ti + 1, n_text, ents[i].name);
		run_continuation(&ents[i], src, cont, M, i == 0 ? frows : rows,
		    &res[i]);
		score(last, i == 0 ? frows : rows, frows, cont, M, V, i == 0,
		    &res[i]);
		res[i].kv_bytes_full = res[0].kv_bytes;
	}
	kvx_seq_clear(src, 0);
	free(last);
	free(frows);
	free(rows);
}

// --- pass key ------------------------------------------------------------------

/* 1 when token id ends a sentence or a line, a good place for a needle. */
static int
ends_sentence(const kvx_model *m, int32_t id)
{
	char piece[64];
	size_t len;

	if (kvx_token_piece(m, id, piece, sizeof piece, &len) != KVX_OK ||
	    len == 0)
		return 0;
	return strchr(".!?\n", piece[len - 1]) != NULL;
}

/*
 * Build a prompt of prose with the needle at depth percent: f prose
 * tokens, the needle inserted after the sentence end nearest before the
 * depth, then the question if q != NULL.  Returns the prompt length.
 */
static int
build_haystack(const kvx_model *m, const int32_t *prose, int f,
    const int32_t *needle, int nn, const int32_t *q, int nq, int depth,
    int32_t *out)
{
	int at = (int)((long long)f * depth / 100), j, n = 0;

	if (at > 0 && at < f)
		for (j = at - 1; j >= 0 && j >= at - 128; j--)
			if (ends_sentence(m, prose[j])) {
				at = j + 1;
				break;
			}
	memcpy(out, prose, sizeof *out * (size_t)at);
	n = at;
	memcpy(out + n, needle, sizeof *out * (size_t)nn);
	n += nn;
	memcpy(out + n, prose + at, sizeof *out * (size_t)(f - at));
	n += f - at;
	if (q != NULL) {
		memcpy(out + n, q, sizeof *out * (size_t)nq);
		n += nq;
	}
	return n;
}

/*
 * Greedy-decode ANSWER_TOKENS tokens from first's logits in e's context and
 * write the first run of digits of the text into answer.
 */
static void
decode_answer(const kvx_model *m, struct entry *e, float *logits, int V,
    char *answer, size_t size)
{
	char text[256], piece[64];
	size_t tl = 0, pl;
	int32_t tok;
	int i, seq = 0, k = 0;
	const char *p;

	text[0] = '\0';
	for (i = 0; i < ANSWER_TOKENS; i++) {
		tok = argmax(logits, V);
		if (kvx_token_is_eog(m, tok))
			break;
		if (kvx_token_piece(m, tok, piece, sizeof piece, &pl) ==
		    KVX_OK && tl + pl < sizeof text) {
			memcpy(text + tl, piece, pl);
			text[tl += pl] = '\0';
		}
		if (i + 1 < ANSWER_TOKENS &&
		    kvx_decode(e->ctx, 1, &seq, &tok, logits) != KVX_OK)
			fail(EXIT_RUN, "%s: %s", e->name, kvx_errmsg());
	}
	for (p = text; *p != '\0' && !isdigit((unsigned char)*p); p++)
		;
	while (isdigit((unsigned char)*p) && (size_t)k + 1 < size)
		answer[k++] = *p++;
	answer[k] = '\0';
}

/*
 * Run the pass-key trials: for each length and depth, a question-agnostic
 * prefill (question after compression) and a question-aware one (question
 * inside the prefill); *out gets n_ent rows per trial.
 */
static int
passkey(kvx_model *m, kvx_ctx *src, struct entry *ents, int n_ent,
    const int32_t *prose, int n_prose, const int *lens, int n_len,
    const int *depths, int n_depth, uint64_t seed, struct pk_row **out)
{
	static const char *question = "\nWhat is the pass key? The pass key is";
	const kvx_model_info *mi = kvx_model_get_info(m);
	int V = mi->n_vocab, li, di, aware, i, nq, nn, f, n, nrow = 0, key;
	int32_t *q, *needle, *ids;
	float *last, *qrows, *logits;
	char ntext[128], want[16];
	struct pk_row *rows, *r;
	uint64_t rng = seed;

	if (tokenize(m, question, strlen(question), &q, &nq) != KVX_OK)
		fail(EXIT_RUN, "%s", kvx_errmsg());
	rows = calloc((size_t)n_len * n_depth * 2 * n_ent, sizeof *rows);
	ids = malloc(sizeof *ids * (size_t)(lens[n_len - 1] + 64));
	last = malloc(sizeof *last * (size_t)V);
	logits = malloc(sizeof *logits * (size_t)V);
	qrows = malloc(sizeof *qrows * (size_t)nq * V);
	if (rows == NULL || ids == NULL || last == NULL || logits == NULL ||
	    qrows == NULL)
		fail(EXIT_RUN, "out of memory");
	for (li = 0; li < n_len; li++)
		for (di = 0; di < n_depth; di++) {
			key = 10000 + (int)(kvx__splitmix64(&rng) % 90000);
			snprintf(want, sizeof want, "%d", key);
			snprintf(ntext, sizeof ntext, " The pass key is %d. "
			    "Remember it. %d is the pass key.", key, key);
			if (tokenize(m, ntext, strlen(ntext), &needle, &nn) !=
			    KVX_OK)
				fail(EXIT_RUN, "%s", kvx_errmsg());
			/* the length covers prose, needle, question, answer */
			f = lens[li] - nn - nq - ANSWER_TOKENS;
			if (f < 1 || f > n_prose)
				fail(EXIT_TEXT, "pass key: %d prose tokens "
				    "cannot fill a context of %d tokens",
				    n_prose, lens[li]);
			for (aware = 0; aware < 2; aware++) {
				progress("pass key: length %d, depth %d%%, "
				    "%s", lens[li], depths[di], aware ?
				    "question-aware" : "question-agnostic");
				n = build_haystack(m, prose, f, needle, nn,
				    aware ? q : NULL, nq, depths[di], ids);
				kvx_seq_clear(src, 0);
				if (kvx_prefill(src, 0, ids, n, last) != KVX_OK)
					fail(EXIT_RUN, "pass key: %s",
					    kvx_errmsg());
				for (i = 0; i < n_ent; i++) {
					struct entry *e = &ents[i];

					kvx_seq_clear(e->ctx, 0);
					if (kvx_compress_from(e->ctx, 0, src,
					    0) != KVX_OK)
						fail(EXIT_RUN, "%s: %s",
						    e->name, kvx_errmsg());
					if (aware)
						memcpy(logits, last,
						    sizeof *logits * V);
					else {
						if (kvx_extend(e->ctx, 0, q, nq,
						    qrows) != KVX_OK)
							fail(EXIT_RUN, "%s: %s",
							    e->name,
							    kvx_errmsg());
						memcpy(logits, qrows +
						    (size_t)(nq - 1) * V,
						    sizeof *logits * V);
					}
					r = &rows[nrow++];
					r->plan = i;
					r->length = lens[li];
					r->depth = depths[di];
					r->aware = aware;
					r->key = key;
					decode_answer(m, e, logits, V,
					    r->answer, sizeof r->answer);
					r->match = strcmp(r->answer, want) == 0;
					kvx_seq_clear(e->ctx, 0);
				}
			}
			free(needle);
		}
	kvx_seq_clear(src, 0);
	free(q);
	free(ids);
	free(last);
	free(logits);
	free(qrows);
	*out = rows;
	return nrow;
}

// --- output --------------------------------------------------------------------

/* Share of the full cache's bytes that a result's cache allocates. */
static double
kv_frac(const struct result *r)
{
	return r->kv_bytes_full ? (double)r->kv_bytes / r->kv_bytes_full : 0.0;
}

/* Print one table of results, one row per entry. */
static void
print_table(FILE *f, const struct entry *ents, int n_ent,
    const struct result *res)
{
	int i;

	fprintf(f, "%-20s %-9s %7s %8s %10s %9s %10s %7s\n", "plan", "method",
	    "budget", "kv_frac", "ppl", "ppl/full", "kl", "top1");
	for (i = 0; i < n_ent; i++)
		fprintf(f, "%-20s %-9s %7s %8.4f %10.4f %9.4f %10.6f %7.4f\n",
		    ents[i].name, ents[i].method, ents[i].budget,
		    kv_frac(&res[i]), res[i].ppl, res[i].ppl / res[0].ppl,
		    res[i].kl, res[i].top1);
}

/* Mean over texts of each entry's results. */
static void
mean_results(const struct result *res, int n_text, int n_ent,
    struct result *mean)
{
	int t, i;

	for (i = 0; i < n_ent; i++) {
		double ppl = 0, kl = 0, top1 = 0, kb = 0, kf = 0;

		for (t = 0; t < n_text; t++) {
			const struct result *r = &res[(size_t)t * n_ent + i];

			ppl += r->ppl;
			kl += r->kl;
			top1 += r->top1;
			kb += (double)r->kv_bytes;
			kf += (double)r->kv_bytes_full;
		}
		mean[i].ppl = ppl / n_text;
		mean[i].kl = kl / n_text;
		mean[i].top1 = top1 / n_text;
		mean[i].kv_bytes = (uint64_t)llround(kb / n_text);
		mean[i].kv_bytes_full = (uint64_t)llround(kf / n_text);
	}
}

/* Print the pass-key scores: per entry and variant, hits per length. */
static void
print_passkey(FILE *f, const struct entry *ents, int n_ent,
    const struct pk_row *rows, int nrow, const int *lens, int n_len,
    int n_depth)
{
	int i, aware, li, k, hit, all;
	char head[32];

	fprintf(f, "\npass key: exact match of the 5 digits, %d depths per "
	    "length\n%-20s %-9s %7s %-8s", n_depth, "plan", "method", "budget",
	    "variant");
	for (li = 0; li < n_len; li++) {
		snprintf(head, sizeof head, "@%d", lens[li]);
		fprintf(f, " %6s", head);
	}
	fprintf(f, " %7s\n", "all");
	for (i = 0; i < n_ent; i++)
		for (aware = 0; aware < 2; aware++) {
			fprintf(f, "%-20s %-9s %7s %-8s", ents[i].name,
			    ents[i].method, ents[i].budget,
			    aware ? "aware" : "agnostic");
			all = 0;
			for (li = 0; li < n_len; li++) {
				hit = 0;
				for (k = 0; k < nrow; k++)
					if (rows[k].plan == i &&
					    rows[k].aware == aware &&
					    rows[k].length == lens[li])
						hit += rows[k].match;
				all += hit;
				snprintf(head, sizeof head, "%d/%d", hit,
				    n_depth);
				fprintf(f, " %6s", head);
			}
			fprintf(f, " %7.3f\n", (double)all / (n_len * n_depth));
		}
}

/* Write CSV rows of one result group. */
static void
csv_rows(FILE *f, const struct entry *ents, int n_ent,
    const struct result *res)
{
	int i;

	for (i = 0; i < n_ent; i++)
		fprintf(f, "%s,%s,%s,%llu,%llu,%.6f,%.6f,%.9f,%.6f\n",
		    ents[i].name, ents[i].method, ents[i].budget,
		    (unsigned long long)res[i].kv_bytes,
		    (unsigned long long)res[i].kv_bytes_full, res[i].ppl,
		    res[0].ppl, res[i].kl, res[i].top1);
}

/* Write the CSV file described in kvx-eval(1). */
static void
write_csv(FILE *f, const char *path, const struct entry *ents, int n_ent,
    const struct text *texts, int n_text, const struct result *res,
    const struct result *mean, const struct pk_row *pk, int npk)
{
	int t, k;

	fprintf(f, "plan,method,budget,kv_bytes,kv_bytes_full,ppl,ppl_full,"
	    "kl,top1\n");
	for (t = 0; t < n_text; t++) {
		fprintf(f, "# text: %s\n", texts[t].path);
		csv_rows(f, ents, n_ent, res + (size_t)t * n_ent);
	}
	if (n_text > 1) {
		fprintf(f, "# mean over %d texts\n", n_text);
		csv_rows(f, ents, n_ent, mean);
	}
	if (npk > 0)
		fprintf(f, "# passkey,plan,method,budget,length,depth,"
		    "variant,key,answer,match\n");
	for (k = 0; k < npk; k++) {
		const struct entry *e = &ents[pk[k].plan];

		fprintf(f, "passkey,%s,%s,%s,%d,%d,%s,%d,%s,%d\n", e->name,
		    e->method, e->budget, pk[k].length, pk[k].depth,
		    pk[k].aware ? "aware" : "agnostic", pk[k].key,
		    pk[k].answer, pk[k].match);
	}
	if (fclose(f) != 0)
		fail(EXIT_OUTPUT, "%s: %s", path, strerror(errno));
}

// --- plot ----------------------------------------------------------------------

#define PLOT_W		440	/* one panel */
#define PLOT_H		330
#define PLOT_L		64	/* margins inside a panel */
#define PLOT_R		16
#define PLOT_T		36
#define PLOT_B		48

/* A step of 1, 2 or 5 times a power of ten giving about 5 ticks. */
static double
nice_step(double range)
{
	double raw = range / 5.0, p = pow(10.0, floor(log10(raw))), r = raw / p;

	return (r < 1.5 ? 1.0 : r < 3.5 ? 2.0 : r < 7.5 ? 5.0 : 10.0) * p;
}

/* Write text with the XML special characters escaped. */
static void
xml_text(FILE *f, const char *s)
{
	for (; *s != '\0'; s++)
		switch (*s) {
		case '<': fputs("&lt;", f); break;
		case '>': fputs("&gt;", f); break;
		case '&': fputs("&amp;", f); break;
		case '"': fputs("&quot;", f); break;
		default: fputc(*s, f);
		}
}

/*
 * One panel at x offset ox: metric (0 = ppl ratio, 1 = KL) of each entry
 * against its KV memory fraction, one colour and line per method.
 */
static void
plot_panel(FILE *f, int ox, int metric, const struct entry *ents, int n_ent,
    const struct result *mean, const char **methods, int n_meth,
    const char **colours)
{
	double y0, y1, step, v, x, y;
	int i, k, j, first, w = PLOT_W - PLOT_L - PLOT_R;
	int h = PLOT_H - PLOT_T - PLOT_B, *ord, tmp;

	y0 = metric == 0 ? 1.0 : 0.0;
	y1 = y0;
	for (i = 0; i < n_ent; i++) {
		v = metric == 0 ? mean[i].ppl / mean[0].ppl : mean[i].kl;
		if (v < y0)
			y0 = v;
		if (v > y1)
			y1 = v;
	}
	if (y1 - y0 < 1e-9)
		y1 = y0 + (metric == 0 ? 0.01 : 1e-3);
	step = nice_step(y1 - y0);
	y0 = floor(y0 / step) * step;
	y1 = ceil(y1 / step) * step;

#define PX(xv) (ox + PLOT_L + (xv) * w)
#define PY(yv) (PLOT_T + h - ((yv) - y0) / (y1 - y0) * h)
	fprintf(f, "<g font-family=\"sans-serif\" font-size=\"11\">\n");
	fprintf(f, "<text x=\"%d\" y=\"20\" font-size=\"13\" text-anchor="
	    "\"middle\">%s</text>\n", ox + PLOT_L + w / 2, metric == 0 ?
	    "continuation perplexity / full cache" :
	    "mean KL(full || plan), nats");
	fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
	    "fill=\"none\" stroke=\"#444\"/>\n", ox + PLOT_L, PLOT_T, w, h);
	for (k = 0; k <= 4; k++) {
		x = PX(k * 0.25);
		fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" "
		    "stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%d\" text-anchor="
		    "\"middle\">%.2f</text>\n", x, PLOT_T, x, PLOT_T + h, x,
		    PLOT_T + h + 14, k * 0.25);
	}
	for (v = y0; v <= y1 + step / 2; v += step) {
		y = PY(v);
		fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" "
		    "stroke=\"#ddd\"/><text x=\"%d\" y=\"%.1f\" text-anchor="
		    "\"end\">%.4g</text>\n", ox + PLOT_L, y, ox + PLOT_L + w,
		    y, ox + PLOT_L - 4, y + 4, fabs(v) < step / 1e6 ? 0.0 : v);
	}
	fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">KV memory "
	    "allocated / full cache</text>\n", ox + PLOT_L + w / 2,
	    PLOT_H - 10);

	if ((ord = malloc(sizeof *ord * (size_t)n_ent)) == NULL)
		fail(EXIT_RUN, "out of memory");
	for (k = 0; k < n_meth; k++) {
		int n = 0;

		for (i = 0; i < n_ent; i++)
			if (strcmp(ents[i].method, methods[k]) == 0 || i == 0)
				ord[n++] = i;
		/* insertion sort by memory, so the line runs left to right */
		for (i = 1; i < n; i++)
			for (j = i; j > 0 && kv_frac(&mean[ord[j]]) <
			    kv_frac(&mean[ord[j - 1]]); j--) {
				tmp = ord[j];
				ord[j] = ord[j - 1];
				ord[j - 1] = tmp;
			}
		fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" "
		    "stroke-width=\"1.5\" points=\"", colours[k]);
		for (first = 1, i = 0; i < n; i++, first = 0) {
			const struct result *r = &mean[ord[i]];

			v = metric == 0 ? r->ppl / mean[0].ppl : r->kl;
			fprintf(f, "%s%.1f,%.1f", first ? "" : " ",
			    PX(kv_frac(r)), PY(v));
		}
		fprintf(f, "\"/>\n");
		for (i = 0; i < n; i++) {
			const struct result *r = &mean[ord[i]];

			if (ord[i] == 0)
				continue;
			v = metric == 0 ? r->ppl / mean[0].ppl : r->kl;
			fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" "
			    "fill=\"%s\"><title>", PX(kv_frac(r)), PY(v),
			    colours[k]);
			xml_text(f, ents[ord[i]].name);
			fprintf(f, "</title></circle>\n");
		}
	}
	v = metric == 0 ? 1.0 : 0.0;
	fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#000\">"
	    "<title>full cache</title></circle>\n</g>\n", PX(1.0), PY(v));
#undef PX
#undef PY
	free(ord);
}

/* Write the two-panel SVG plot of mean quality against KV memory. */
static void
write_plot(FILE *f, const char *path, const struct entry *ents, int n_ent,
    const struct result *mean, int n_text, int N, int M)
{
	static const char *palette[] = { "#1f77b4", "#d62728", "#2ca02c",
	    "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf" };
	const char *methods[64], *colours[64];
	int n_meth = 0, i, k;

	for (i = 1; i < n_ent && n_meth < 64; i++) {
		for (k = 0; k < n_meth; k++)
			if (strcmp(methods[k], ents[i].method) == 0)
				break;
		if (k == n_meth) {
			colours[n_meth] = palette[n_meth % 8];
			methods[n_meth++] = ents[i].method;
		}
	}
	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns="
	    "\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
	    "viewBox=\"0 0 %d %d\">\n<rect width=\"100%%\" height=\"100%%\" "
	    "fill=\"#fff\"/>\n", 2 * PLOT_W, PLOT_H + 40, 2 * PLOT_W,
	    PLOT_H + 40);
	plot_panel(f, 0, 0, ents, n_ent, mean, methods, n_meth, colours);
	plot_panel(f, PLOT_W, 1, ents, n_ent, mean, methods, n_meth, colours);
	fprintf(f, "<g font-family=\"sans-serif\" font-size=\"11\">\n");
	for (k = 0; k < n_meth; k++) {
		fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" "
		    "fill=\"%s\"/><text x=\"%d\" y=\"%d\">", PLOT_L + k * 120,
		    PLOT_H + 8, colours[k], PLOT_L + k * 120 + 16, PLOT_H + 18);
		xml_text(f, methods[k]);
		fprintf(f, "</text>\n");
	}
	fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">mean of %d "
	    "text(s), context %d, continuation %d</text>\n</g>\n</svg>\n",
	    2 * PLOT_W - PLOT_R, PLOT_H + 18, n_text, N, M);
	if (fclose(f) != 0)
		fail(EXIT_OUTPUT, "%s: %s", path, strerror(errno));
}

// --- main ----------------------------------------------------------------------

int
main(int argc, char **argv)
{
	kvx_model_params mp;
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "plan", required_argument, NULL, 'P' },
		{ "text", required_argument, NULL, 'T' },
		{ "context", required_argument, NULL, 'N' },
		{ "continuation", required_argument, NULL, 'M' },
		{ "csv", required_argument, NULL, 'C' },
		{ "plot", required_argument, NULL, 'G' },
		{ "passkey", no_argument, NULL, 'K' },
		{ "passkey-lengths", required_argument, NULL, 'L' },
		{ "passkey-depths", required_argument, NULL, 'D' },
		{ "seed", required_argument, NULL, 'S' },
		{ "ctx", required_argument, NULL, 'c' },
		{ "threads", required_argument, NULL, 't' },
		{ "print-fingerprint", no_argument, NULL, 'F' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	const char *model_path = NULL, *csv = NULL, *plot = NULL;
	const char **plan_paths, **text_paths;
	int n_plan = 0, n_text = 0, N = 4096, M = 256, n_ctx = 0, n_threads = 0;
	int do_pk = 0, print_fp = 0, quiet = 0, lens_given = 0, ch, i, t;
	int lens[MAX_LIST] = { 1024, 2048, 4096, 8192 }, n_len = 4;
	int depths[MAX_LIST] = { 0, 25, 50, 75, 100 }, n_depth = 5, need;
	int n_ent, n_prose = 0, npk = 0, keep;
	uint64_t seed = 1;
	kvx_model *model = NULL;
	const kvx_model_info *info;
	kvx_ctx *src = NULL;
	kvx_ctx_params cp;
	struct entry *ents;
	struct text *texts;
	struct result *res, *mean;
	struct pk_row *pk = NULL;
	int32_t *prose = NULL;
	FILE *csv_f = NULL, *plot_f = NULL;
	char *buf;
	size_t len;

	plan_paths = calloc((size_t)argc, sizeof *plan_paths);
	text_paths = calloc((size_t)argc, sizeof *text_paths);
	if (plan_paths == NULL || text_paths == NULL)
		fail(EXIT_RUN, "out of memory");
	while ((ch = getopt_long(argc, argv, "m:c:t:qhV", opts, NULL)) != -1) {
		switch (ch) {
		case 'm': model_path = optarg; break;
		case 'P': plan_paths[n_plan++] = optarg; break;
		case 'T': text_paths[n_text++] = optarg; break;
		case 'N': N = (int)num(optarg, "--context", 2, 1 << 20); break;
		case 'M':
			M = (int)num(optarg, "--continuation", 1, 1 << 16);
			break;
		case 'C': csv = optarg; break;
		case 'G': plot = optarg; break;
		case 'K': do_pk = 1; break;
		case 'L':
			n_len = num_list(optarg, "--passkey-lengths", 64,
			    1 << 20, lens);
			lens_given = 1;
			break;
		case 'D':
			n_depth = num_list(optarg, "--passkey-depths", 0, 100,
			    depths);
			break;
		case 'S':
			seed = (uint64_t)num(optarg, "--seed", 0, 0x7fffffffL);
			break;
		case 'c': n_ctx = (int)num(optarg, "--ctx", 16, 1 << 20); break;
		case 't':
			n_threads = (int)num(optarg, "--threads", 1, 256);
			break;
		case 'F': print_fp = 1; break;
		case 'q': quiet = 1; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("kvx-eval %s\n", kvx_version()); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind < argc)
		fail(EXIT_USAGE, "unexpected argument '%s' (see --help)",
		    argv[optind]);
	if (model_path == NULL)
		fail(EXIT_USAGE, "no model given (-m MODEL)");
	if (n_text == 0 && !print_fp)
		fail(EXIT_USAGE, "no text given (--text FILE)");
	show_progress = !quiet && isatty(STDERR_FILENO);

	kvx_model_params_init(&mp);
	mp.n_threads = n_threads;
	if (kvx_model_open(model_path, &mp, &model) != KVX_OK)
		fail(EXIT_MODEL, "%s", kvx_errmsg());
	info = kvx_model_get_info(model);
	if (print_fp) {
		printf("%s\n", info->fingerprint);
		kvx_model_close(&model);
		return 0;
	}
	if (n_ctx == 0)
		n_ctx = info->n_ctx_train;
	if (N + M > n_ctx)
		fail(EXIT_USAGE, "--context %d + --continuation %d exceeds the "
		    "context size of %d tokens (use --ctx)", N, M, n_ctx);
	if (do_pk) {
		/* sort the lengths: the largest sizes the prompt buffer */
		for (i = 1; i < n_len; i++)
			for (t = i; t > 0 && lens[t] < lens[t - 1]; t--) {
				keep = lens[t];
				lens[t] = lens[t - 1];
				lens[t - 1] = keep;
			}
		for (keep = 0, i = 0; i < n_len; i++) {
			if (lens[i] <= n_ctx) {
				lens[keep++] = lens[i];
				continue;
			}
			if (lens_given)
				fail(EXIT_USAGE, "--passkey-lengths: %d exceeds "
				    "the context size of %d tokens (use --ctx)",
				    lens[i], n_ctx);
			fprintf(stderr, "%s: pass key: skipping length %d, "
			    "beyond the context size of %d tokens\n",
			    progname, lens[i], n_ctx);
		}
		if ((n_len = keep) == 0)
			fail(EXIT_USAGE, "no pass-key length fits the "
			    "context size of %d tokens", n_ctx);
	}

	/* entry 0 is the full cache; then the plans in command-line order */
	n_ent = n_plan + 1;
	if ((ents = calloc((size_t)n_ent, sizeof *ents)) == NULL)
		fail(EXIT_RUN, "out of memory");
	ents[0].path = "full";
	snprintf(ents[0].name, sizeof ents[0].name, "full");
	snprintf(ents[0].method, sizeof ents[0].method, "full");
	snprintf(ents[0].budget, sizeof ents[0].budget, "1");
	for (i = 0; i < n_plan; i++) {
		struct entry *e = &ents[i + 1];

		e->path = plan_paths[i];
		if (kvx_plan_load(e->path, &e->plan) != KVX_OK)
			fail(EXIT_PLAN, "%s", kvx_errmsg());
		if (kvx_plan_check(e->plan, model) != KVX_OK)
			fail(EXIT_PLAN, "%s: %s", e->path, kvx_errmsg());
		entry_label(e);
	}

	/* all texts are read and checked before any inference */
	if ((texts = calloc((size_t)n_text, sizeof *texts)) == NULL)
		fail(EXIT_RUN, "out of memory");
	for (t = 0; t < n_text; t++) {
		texts[t].path = text_paths[t];
		if (kvx__read_file(texts[t].path, 0, &buf, &len) != KVX_OK)
			fail(EXIT_TEXT, "%s", kvx_errmsg());
		if (tokenize(model, buf, len, &texts[t].ids, &texts[t].n) !=
		    KVX_OK)
			fail(EXIT_TEXT, "%s: %s", texts[t].path, kvx_errmsg());
		free(buf);
		if (texts[t].n < N + M)
			fail(EXIT_TEXT, "%s: %d tokens, fewer than --context "
			    "%d + --continuation %d = %d", texts[t].path,
			    texts[t].n, N, M, N + M);
		n_prose += texts[t].n;
	}

	/* outputs are opened before the long work, so a bad path fails fast */
	if (csv != NULL && (csv_f = fopen(csv, "w")) == NULL)
		fail(EXIT_OUTPUT, "%s: %s", csv, strerror(errno));
	if (plot != NULL && (plot_f = fopen(plot, "w")) == NULL)
		fail(EXIT_OUTPUT, "%s: %s", plot, strerror(errno));

	kvx_ctx_params_init(&cp);
	cp.n_ctx = n_ctx;
	/*
	 * No decode headroom: kv_bytes, read right after compression, is then
	 * the compressed cache alone, comparable with the plan's own byte
	 * counts; the continuation grows the segments afterwards.
	 */
	cp.decode_headroom = 0;
	for (i = 0; i < n_ent; i++)
		if (kvx_ctx_new(model, ents[i].plan, &cp, &ents[i].ctx) !=
		    KVX_OK)
			fail(ents[i].plan != NULL ? EXIT_PLAN : EXIT_RUN,
			    "%s: %s", ents[i].path, kvx_errmsg());
	if (kvx_ctx_new(model, NULL, &cp, &src) != KVX_OK)
		fail(EXIT_RUN, "%s", kvx_errmsg());

	res = calloc((size_t)n_text * n_ent, sizeof *res);
	mean = calloc((size_t)n_ent, sizeof *mean);
	if (res == NULL || mean == NULL)
		fail(EXIT_RUN, "out of memory");
	for (t = 0; t < n_text; t++)
		eval_text(model, src, ents, n_ent, &texts[t], t, n_text, N, M,
		    res + (size_t)t * n_ent);
	mean_results(res, n_text, n_ent, mean);

	if (do_pk) {
		/* the texts, one after another, are the haystack's prose */
		need = 0;
		if ((prose = malloc(sizeof *prose * (size_t)n_prose)) == NULL)
			fail(EXIT_RUN, "out of memory");
		for (t = 0; t < n_text; t++) {
			memcpy(prose + need, texts[t].ids,
			    sizeof *prose * (size_t)texts[t].n);
			need += texts[t].n;
		}
		npk = passkey(model, src, ents, n_ent, prose, n_prose, lens,
		    n_len, depths, n_depth, seed, &pk);
	}
	progress("");

	printf("model: %s (%s), context %d, continuation %d\n", model_path,
	    info->fingerprint, N, M);
	for (t = 0; t < n_text; t++) {
		printf("\ntext: %s (%d tokens)\n", texts[t].path, texts[t].n);
		print_table(stdout, ents, n_ent, res + (size_t)t * n_ent);
	}
	if (n_text > 1) {
		printf("\nmean over %d texts\n", n_text);
		print_table(stdout, ents, n_ent, mean);
	}
	if (npk > 0)
		print_passkey(stdout, ents, n_ent, pk, npk, lens, n_len,
		    n_depth);
	fflush(stdout);
	if (csv_f != NULL)
		write_csv(csv_f, csv, ents, n_ent, texts, n_text, res, mean, pk, npk);
	if (plot_f != NULL)
		write_plot(plot_f, plot, ents, n_ent, mean, n_text, N, M);

	for (i = 0; i < n_ent; i++) {
		kvx_ctx_free(&ents[i].ctx);
		kvx_plan_free(&ents[i].plan);
	}
	for (t = 0; t < n_text; t++)
		free(texts[t].ids);
	kvx_ctx_free(&src);
	kvx_model_close(&model);
	free(texts);
	free(ents);
	free(res);
	free(mean);
	free(pk);
	free(prose);
	free(plan_paths);
	free(text_paths);
	return 0;
}
