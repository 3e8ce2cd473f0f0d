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
void
report_plot(FILE *f, const char *path, const struct entry *ents, int n_ent,
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
