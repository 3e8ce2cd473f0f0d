/*
 * svg.c - the plan as an SVG heatmap: one row per layer, one column per
 * KV head, the cell's shade its budget share.
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "plan.h"
#include "svg.h"
#include "util.h"

#define CELL_W	36
#define CELL_H	14
#define LEFT	56
#define TOP	44
#define LEGEND	120

/* A share in [0, 1] as a colour from pale yellow to dark blue; the scale
 * runs to the plan's largest share so small budgets still show contrast. */
static void
shade(double f, double top, char *buf, size_t size)
{
	static const int stops[][3] = {
		{ 255, 255, 217 }, { 127, 205, 187 }, { 29, 145, 192 },
		{ 8, 29, 88 }
	};
	double x = top > 0 ? f / top : 0;
	int i, c[3], k;

	if (x < 0)
		x = 0;
	if (x > 1)
		x = 1;
	x *= 3;
	i = x >= 3 ? 2 : (int)x;
	x -= i;
	for (k = 0; k < 3; k++)
		c[k] = (int)(stops[i][k] + x * (stops[i + 1][k] -
		    stops[i][k]) + 0.5);
	snprintf(buf, size, "#%02x%02x%02x", c[0], c[1], c[2]);
}

/* Write the heatmap by hand: cells, labels and a legend. */
kvx_status
svg_write(const kvx_plan *p, const char *title, const char *path,
    int overwrite)
{
	int L = p->n_layer, Hkv = p->n_head_kv, l, h, W, Hh, fd;
	int cols = p->mode == KVX_PLAN_HYBRID ? 1 : Hkv;
	double top = 0, f;
	char col[16];
	FILE *fp;

	for (l = 0; l < plan_n_budgets(p); l++)
		if (p->budgets[l] > top)
			top = p->budgets[l];
	W = LEFT + cols * CELL_W + LEGEND;
	Hh = TOP + L * CELL_H + 24;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | (overwrite ? 0 :
	    O_EXCL), 0644);
	if (fd < 0)
		return kvx__fail(KVX_ERR_IO, "%s: %s", path, strerror(errno));
	if ((fp = fdopen(fd, "w")) == NULL) {
		close(fd);
		return kvx__fail(KVX_ERR_IO, "%s: %s", path, strerror(errno));
	}
	fprintf(fp, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
	    "height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" "
	    "font-size=\"10\">\n", W, Hh, W, Hh);
	fprintf(fp, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W,
	    Hh);
	fprintf(fp, "<text x=\"4\" y=\"14\" font-size=\"12\">");
	for (; title != NULL && *title != '\0'; title++) {
		if (*title == '<')
			fputs("&lt;", fp);
		else if (*title == '&')
			fputs("&amp;", fp);
		else
			fputc(*title, fp);
	}
	fprintf(fp, "</text>\n");
	for (h = 0; h < cols; h++) {
		if (cols == 1)
			fprintf(fp, "<text x=\"%d\" y=\"%d\" text-anchor="
			    "\"middle\">layer</text>\n", LEFT + CELL_W / 2,
			    TOP - 6);
		else
			fprintf(fp, "<text x=\"%d\" y=\"%d\" text-anchor="
			    "\"middle\">h%d</text>\n", LEFT + h * CELL_W +
			    CELL_W / 2, TOP - 6, h);
	}
	for (l = 0; l < L; l++) {
		fprintf(fp, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">"
		    "L%d</text>\n", LEFT - 4, TOP + l * CELL_H + CELL_H - 3, l);
		for (h = 0; h < cols; h++) {
			f = p->budgets[cols == 1 ? l : l * Hkv + h];
			shade(f, top, col, sizeof col);
			fprintf(fp, "<rect x=\"%d\" y=\"%d\" width=\"%d\" "
			    "height=\"%d\" fill=\"%s\"><title>layer %d head "
			    "%d: %.4f</title></rect>\n", LEFT + h * CELL_W,
			    TOP + l * CELL_H, CELL_W - 1, CELL_H - 1, col, l,
			    h, f);
		}
	}
	/* legend: ten steps from 0 to the largest share */
	for (l = 0; l <= 10; l++) {
		f = top * l / 10;
		shade(f, top, col, sizeof col);
		fprintf(fp, "<rect x=\"%d\" y=\"%d\" width=\"16\" height=\"%d\" "
		    "fill=\"%s\"/>\n<text x=\"%d\" y=\"%d\">%.3f</text>\n",
		    LEFT + cols * CELL_W + 16, TOP + (10 - l) * CELL_H, CELL_H,
		    col, LEFT + cols * CELL_W + 36, TOP + (10 - l) * CELL_H +
		    CELL_H - 3, f);
	}
	fprintf(fp, "<text x=\"%d\" y=\"%d\">share of the prompt kept</text>\n",
	    LEFT, TOP + L * CELL_H + 16);
	fprintf(fp, "</svg>\n");
	if (fclose(fp) != 0)
		return kvx__fail(KVX_ERR_IO, "%s: %s", path, strerror(errno));
	return KVX_OK;
}
