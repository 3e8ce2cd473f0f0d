/*
 * report.c - kvx-eval's output: a table per text and of the means, the
 * pass-key scores, the CSV file and the SVG plot of quality against KV
 * memory.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "report.h"

// --- tables ----------------------------------------------------------------

/* Share of the full cache's bytes that a result's cache allocates. */
static double
kv_frac(const struct result *r)
{
	return r->kv_bytes_full ? (double)r->kv_bytes / r->kv_bytes_full : 0.0;
}

/* Print one table of results, one row per entry. */
void
report_table(FILE *f, const struct entry *ents, int n_ent,
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

/* Print the pass-key scores: per entry and variant, hits per length. */
void
report_passkey(FILE *f, const struct entry *ents, int n_ent,
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
void
report_csv(FILE *f, const char *path, const struct entry *ents, int n_ent,
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

// --- plot ------------------------------------------------------------------

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
 * One panel at x offset ox: ys[i] of each entry against its KV memory
 * fraction xs[i], one colour and line per method; the y range holds
 * [lo, hi] and every value.
 */
static void
plot_panel(FILE *f, int ox, const char *title, const double *xs,
    const double *ys, double lo, double hi, const struct entry *ents,
    int n_ent, const char **methods, int n_meth, const char **colours)
{
	double y0 = lo, y1 = hi, step, v, x, y;
	int i, k, j, first, w = PLOT_W - PLOT_L - PLOT_R;
	int h = PLOT_H - PLOT_T - PLOT_B, *ord, tmp;

	for (i = 0; i < n_ent; i++) {
		if (ys[i] < y0)
			y0 = ys[i];
		if (ys[i] > y1)
			y1 = ys[i];
	}
	if (y1 - y0 < 1e-9)
		y1 = y0 + (fabs(y0) > 0.1 ? 0.01 : 1e-3);
	step = nice_step(y1 - y0);
	y0 = floor(y0 / step) * step;
	y1 = ceil(y1 / step) * step;

#define PX(xv) (ox + PLOT_L + (xv) * w)
#define PY(yv) (PLOT_T + h - ((yv) - y0) / (y1 - y0) * h)
	fprintf(f, "<g font-family=\"sans-serif\" font-size=\"11\">\n");
	fprintf(f, "<text x=\"%d\" y=\"20\" font-size=\"13\" text-anchor="
	    "\"middle\">", ox + PLOT_L + w / 2);
	xml_text(f, title);
	fprintf(f, "</text>\n");
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
			for (j = i; j > 0 && xs[ord[j]] < xs[ord[j - 1]]; j--) {
				tmp = ord[j];
				ord[j] = ord[j - 1];
				ord[j - 1] = tmp;
			}
		fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" "
		    "stroke-width=\"1.5\" points=\"", colours[k]);
		for (first = 1, i = 0; i < n; i++, first = 0)
			fprintf(f, "%s%.1f,%.1f", first ? "" : " ",
			    PX(xs[ord[i]]), PY(ys[ord[i]]));
		fprintf(f, "\"/>\n");
		for (i = 0; i < n; i++) {
			if (ord[i] == 0)
				continue;
			fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" "
			    "fill=\"%s\"><title>", PX(xs[ord[i]]),
			    PY(ys[ord[i]]), colours[k]);
			xml_text(f, ents[ord[i]].name);
			fprintf(f, "</title></circle>\n");
		}
	}
	fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#000\">"
	    "<title>full cache</title></circle>\n</g>\n", PX(xs[0]),
	    PY(ys[0]));
#undef PX
#undef PY
	free(ord);
}

/* The plans' methods in order of appearance, each with a colour. */
static int
plot_methods(const struct entry *ents, int n_ent, const char **methods,
    const char **colours)
{
	static const char *palette[] = { "#1f77b4", "#d62728", "#2ca02c",
	    "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf" };
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
	return n_meth;
}

/* The legend of the methods under the panels. */
static void
plot_legend(FILE *f, const char **methods, const char **colours, int n_meth)
{
	int k;

	for (k = 0; k < n_meth; k++) {
		fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" "
		    "fill=\"%s\"/><text x=\"%d\" y=\"%d\">", PLOT_L + k * 120,
		    PLOT_H + 8, colours[k], PLOT_L + k * 120 + 16, PLOT_H + 18);
		xml_text(f, methods[k]);
		fprintf(f, "</text>\n");
	}
}

/* Write the two-panel SVG plot of mean quality against KV memory. */
void
report_plot(FILE *f, const char *path, const struct entry *ents, int n_ent,
    const struct result *mean, int n_text, int N, int M)
{
	const char *methods[64], *colours[64];
	double *xs, *ppl, *kl;
	int n_meth, i;

	xs = malloc(sizeof *xs * (size_t)n_ent);
	ppl = malloc(sizeof *ppl * (size_t)n_ent);
	kl = malloc(sizeof *kl * (size_t)n_ent);
	if (xs == NULL || ppl == NULL || kl == NULL)
		fail(EXIT_RUN, "out of memory");
	for (i = 0; i < n_ent; i++) {
		xs[i] = kv_frac(&mean[i]);
		ppl[i] = mean[i].ppl / mean[0].ppl;
		kl[i] = mean[i].kl;
	}
	n_meth = plot_methods(ents, n_ent, methods, colours);
	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns="
	    "\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
	    "viewBox=\"0 0 %d %d\">\n<rect width=\"100%%\" height=\"100%%\" "
	    "fill=\"#fff\"/>\n", 2 * PLOT_W, PLOT_H + 40, 2 * PLOT_W,
	    PLOT_H + 40);
	plot_panel(f, 0, "continuation perplexity / full cache", xs, ppl, 1.0,
	    1.0, ents, n_ent, methods, n_meth, colours);
	plot_panel(f, PLOT_W, "mean KL(full || plan), nats", xs, kl, 0.0, 0.0,
	    ents, n_ent, methods, n_meth, colours);
	fprintf(f, "<g font-family=\"sans-serif\" font-size=\"11\">\n");
	plot_legend(f, methods, colours, n_meth);
	fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">mean of %d "
	    "text(s), context %d, continuation %d</text>\n</g>\n</svg>\n",
	    2 * PLOT_W - PLOT_R, PLOT_H + 18, n_text, N, M);
	free(xs);
	free(ppl);
	free(kl);
	if (fclose(f) != 0)
		fail(EXIT_OUTPUT, "%s: %s", path, strerror(errno));
}

// --- task suite ------------------------------------------------------------

/*
 * The scores of entry e on the items of task k (-1: any) at length len
 * (0: any), minus the baseline's on the same items when base >= 0, into
 * x; returns their count.
 */
static int
task_scores(const struct task_item *items, int n_items,
    const struct task_row *rows, int n_ent, int e, int k, int len, int base,
    double *x)
{
	int it, n = 0;

	for (it = 0; it < n_items; it++) {
		if ((k >= 0 && (int)items[it].kind != k) ||
		    (len > 0 && items[it].length != len))
			continue;
		x[n] = rows[(size_t)it * n_ent + e].score;
		if (base >= 0)
			x[n] -= rows[(size_t)it * n_ent + base].score;
		n++;
	}
	return n;
}

/* One table row: each entry's mean and interval on the chosen items. */
static void
task_line(FILE *f, const char *label, int len, const struct entry *ents,
    int n_ent, const struct task_item *items, int n_items,
    const struct task_row *rows, int k, int base, uint64_t seed, double *x)
{
	double lo, hi;
	char cell[64], lb[16];
	int e, n;

	if (len > 0)
		snprintf(lb, sizeof lb, "%d", len);
	else
		snprintf(lb, sizeof lb, "all");
	fprintf(f, "%-16s %6s", label, lb);
	for (e = 0; e < n_ent; e++) {
		if (e == base)
			continue;
		n = task_scores(items, n_items, rows, n_ent, e, k, len, base,
		    x);
		task_bootstrap(x, n, seed, &lo, &hi);
		snprintf(cell, sizeof cell, base >= 0 ? "%+.3f [%+.3f,%+.3f]" :
		    "%.3f [%.3f,%.3f]", task_mean(x, n), lo, hi);
		fprintf(f, "  %-26s", cell);
	}
	fputc('\n', f);
}

/* The task lengths of the items, ascending and distinct; returns the
 * count. */
static int
task_lengths(const struct task_item *items, int n_items, int *lens)
{
	int it, i, n = 0, t;

	for (it = 0; it < n_items; it++) {
		for (i = 0; i < n && lens[i] != items[it].length; i++)
			;
		if (i == n)
			lens[n++] = items[it].length;
	}
	for (i = 1; i < n; i++)
		for (t = i; t > 0 && lens[t] < lens[t - 1]; t--) {
			it = lens[t];
			lens[t] = lens[t - 1];
			lens[t - 1] = it;
		}
	return n;
}

/* One table of means (base < 0) or paired differences from base. */
static void
task_table(FILE *f, const struct entry *ents, int n_ent,
    const struct task_item *items, int n_items, const struct task_row *rows,
    int base, uint64_t seed, double *x, const int *lens, int n_len)
{
	int k, l, e, seen;

	fprintf(f, "%-16s %6s", "task", "length");
	for (e = 0; e < n_ent; e++)
		if (e != base)
			fprintf(f, "  %-26s", ents[e].name);
	fputc('\n', f);
	for (k = 0; k < TASK_N; k++)
		for (l = 0; l < n_len; l++) {
			for (seen = 0, e = 0; e < n_items && !seen; e++)
				seen = (int)items[e].kind == k &&
				    items[e].length == lens[l];
			if (seen)
				task_line(f, task_name((enum task_kind)k),
				    lens[l], ents, n_ent, items, n_items, rows,
				    k, base, seed, x);
		}
	for (l = 0; l < n_len; l++)
		task_line(f, "mean", lens[l], ents, n_ent, items, n_items,
		    rows, -1, base, seed, x);
	if (n_len > 1)
		task_line(f, "mean", 0, ents, n_ent, items, n_items, rows, -1,
		    base, seed, x);
}

/* Print the task scores, and the paired differences from a baseline. */
void
report_tasks(FILE *f, const struct entry *ents, int n_ent,
    const struct task_item *items, int n_items, const struct task_row *rows,
    int inside, int chat, int prose, int base, uint64_t seed)
{
	int lens[64], n_len, it, n_s = 0;
	double *x, kv = 0.0;

	if ((x = malloc(sizeof *x * (size_t)(n_items > 0 ? n_items : 1))) ==
	    NULL)
		fail(EXIT_RUN, "out of memory");
	n_len = task_lengths(items, n_items, lens);
	for (it = 0; it < n_items; it++)
		if (items[it].sample + 1 > n_s)
			n_s = items[it].sample + 1;
	fprintf(f, "\ntasks: question %s, %s format, %s haystack, %d "
	    "samples per task and length\nscore: share of the references "
	    "found in the answer (RULER's string match), mean [95%% "
	    "bootstrap interval]\n", inside ? "inside the prompt" :
	    "after the compressed context", chat ? "chat" : "plain", prose ?
	    "prose" : "noise", n_s);
	task_table(f, ents, n_ent, items, n_items, rows, -1, seed, x, lens,
	    n_len);
	fprintf(f, "%-23s", "kv_frac");
	for (it = 0; it < n_ent; it++) {
		int j;

		for (kv = 0.0, j = 0; j < n_items; j++) {
			const struct task_row *r = &rows[(size_t)j * n_ent +
			    it];

			kv += r->kv_bytes_full ? (double)r->kv_bytes /
			    r->kv_bytes_full : 0.0;
		}
		fprintf(f, "  %-26.4f", n_items > 0 ? kv / n_items : 0.0);
	}
	fputc('\n', f);
	if (base >= 0) {
		fprintf(f, "\npaired difference from %s: plan - %s on the same "
		    "items, mean [95%% bootstrap interval]\n", ents[base].name,
		    ents[base].name);
		task_table(f, ents, n_ent, items, n_items, rows, base, seed, x,
		    lens, n_len);
	}
	free(x);
}

/* Write s as one CSV field, quoted when it needs to be. */
static void
csv_field(FILE *f, const char *s)
{
	if (strpbrk(s, ",\"\n\r") == NULL) {
		fputs(s, f);
		return;
	}
	fputc('"', f);
	for (; *s != '\0'; s++) {
		if (*s == '"')
			fputc('"', f);
		fputc(*s == '\n' || *s == '\r' ? ' ' : *s, f);
	}
	fputc('"', f);
}

/* Write the task rows as CSV. */
void
report_tasks_csv(FILE *f, const char *path, const struct entry *ents,
    int n_ent, const struct task_item *items, int n_items,
    const struct task_row *rows, int inside)
{
	const struct task_row *r;
	const struct entry *e;
	int i;

	fprintf(f, "plan,method,budget,question,task,length,sample,score,"
	    "kv_bytes,kv_bytes_full,answer\n");
	for (i = 0; i < n_items * n_ent; i++) {
		r = &rows[i];
		e = &ents[r->plan];
		fprintf(f, "%s,%s,%s,%s,%s,%d,%d,%.6f,%llu,%llu,", e->name,
		    e->method, e->budget, inside ? "inside" : "after",
		    task_name(items[r->item].kind), items[r->item].length,
		    items[r->item].sample, r->score,
		    (unsigned long long)r->kv_bytes,
		    (unsigned long long)r->kv_bytes_full);
		csv_field(f, r->answer != NULL ? r->answer : "");
		fputc('\n', f);
	}
	if (fclose(f) != 0)
		fail(EXIT_OUTPUT, "%s: %s", path, strerror(errno));
}

/* Plot mean score against KV memory, one panel per task family. */
void
report_tasks_plot(FILE *f, const char *path, const struct entry *ents,
    int n_ent, const struct task_item *items, int n_items,
    const struct task_row *rows, int inside)
{
	static const char *fams[] = { "retrieval", "tracing", "aggregation" };
	const char *methods[64], *colours[64];
	double *xs, *ys;
	char title[96];
	int n_meth, fi, np = 0, e, it, n, width;
	int has[3] = { 0, 0, 0 };

	for (it = 0; it < n_items; it++)
		for (fi = 0; fi < 3; fi++)
			if (strcmp(task_family(items[it].kind), fams[fi]) == 0)
				has[fi] = 1;
	for (fi = 0; fi < 3; fi++)
		np += has[fi];
	width = (np > 0 ? np : 1) * PLOT_W;
	xs = malloc(sizeof *xs * (size_t)n_ent);
	ys = malloc(sizeof *ys * (size_t)n_ent);
	if (xs == NULL || ys == NULL)
		fail(EXIT_RUN, "out of memory");
	n_meth = plot_methods(ents, n_ent, methods, colours);
	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns="
	    "\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
	    "viewBox=\"0 0 %d %d\">\n<rect width=\"100%%\" height=\"100%%\" "
	    "fill=\"#fff\"/>\n", width, PLOT_H + 40, width, PLOT_H + 40);
	for (np = 0, fi = 0; fi < 3; fi++) {
		if (!has[fi])
			continue;
		for (e = 0; e < n_ent; e++) {
			xs[e] = ys[e] = 0.0;
			for (n = 0, it = 0; it < n_items; it++) {
				const struct task_row *r =
				    &rows[(size_t)it * n_ent + e];

				if (strcmp(task_family(items[it].kind),
				    fams[fi]) != 0)
					continue;
				xs[e] += r->kv_bytes_full ? (double)r->kv_bytes
				    / r->kv_bytes_full : 0.0;
				ys[e] += r->score;
				n++;
			}
			xs[e] /= n;
			ys[e] /= n;
		}
		snprintf(title, sizeof title, "%s: mean score", fams[fi]);
		plot_panel(f, np++ * PLOT_W, title, xs, ys, 0.0, 1.0, ents,
		    n_ent, methods, n_meth, colours);
	}
	fprintf(f, "<g font-family=\"sans-serif\" font-size=\"11\">\n");
	plot_legend(f, methods, colours, n_meth);
	fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%d items, "
	    "question %s</text>\n</g>\n</svg>\n", width - PLOT_R, PLOT_H + 18,
	    n_items, inside ? "inside" : "after");
	free(xs);
	free(ys);
	if (fclose(f) != 0)
		fail(EXIT_OUTPUT, "%s: %s", path, strerror(errno));
}
