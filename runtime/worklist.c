/*
 * worklist.c - work lists of the split-K decode attention.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include "worklist.h"

/*
 * Rows per item for a whole number of waves of the resident blocks with
 * items of about 512 rows: small items let the block scheduler even out
 * ragged segments, and a partial costs only g x d floats against 512
 * rows of K and V.  A wave of other than the resident count would leave
 * the last one partly empty.
 */
int
wl_chunk(long long total_rows, int resident)
{
	long long slots = resident > 0 ? resident : 396, waves, c;

	waves = (total_rows + slots * 256) / (slots * 512);
	if (waves < 1)
		waves = 1;
	c = (total_rows + slots * waves - 1) / (slots * waves);
	return (int)(c < 16 ? 16 : (c > (1 << 30) ? (1 << 30) : c));
}

/*
 * Each segment is cut into round(len / chunk) (at least one) parts of
 * equal size, so that items stay close to chunk rows and balanced.
 */
int
wl_chunked(const int *len, int nseg, int chunk, struct wl_item *items,
    int cap, int *first)
{
	int s, p, np, n = 0;

	if (chunk < 1)
		return -1;
	for (s = 0; s < nseg; s++) {
		first[s] = n;
		if (len[s] <= 0)
			continue;
		np = (int)(((long long)len[s] + chunk / 2) / chunk);
		np = np < 1 ? 1 : np;
		for (p = 0; p < np; p++) {
			if (n >= cap)
				return -1;
			items[n].seg = s;
			items[n].r0 = (int)((long long)len[s] * p / np);
			items[n].r1 = (int)((long long)len[s] * (p + 1) / np);
			items[n].pad = 0;
			n++;
		}
	}
	first[nseg] = n;
	return n;
}

/*
 * Blocks b take rows [b T / nblk, (b + 1) T / nblk) of the T rows of all
 * segments laid end to end, cut at segment borders into items.
 */
int
wl_balanced(const int *len, int nseg, int nblk, struct wl_item *items,
    int cap, int *first, int *bfirst)
{
	long long total = 0, g0, g1, base = 0;
	int b, s = 0, n = 0, j;

	if (nblk < 1)
		return -1;
	for (j = 0; j < nseg; j++)
		total += len[j] > 0 ? len[j] : 0;
	for (b = 0; b < nblk; b++) {
		bfirst[b] = n;
		g0 = total * b / nblk;
		g1 = total * (b + 1) / nblk;
		while (g0 < g1) {
			while (s < nseg && base + (len[s] > 0 ? len[s] : 0) <=
			    g0) {
				base += len[s] > 0 ? len[s] : 0;
				s++;
			}
			if (n >= cap || s >= nseg)
				return -1;
			items[n].seg = s;
			items[n].r0 = (int)(g0 - base);
			items[n].r1 = (int)((g1 < base + len[s] ? g1 :
			    base + len[s]) - base);
			items[n].pad = 0;
			g0 = base + items[n].r1;
			n++;
		}
	}
	bfirst[nblk] = n;
	for (s = 0, j = 0; s <= nseg; s++) {
		while (j < n && items[j].seg < s)
			j++;
		first[s] = j;
	}
	return n;
}

/*
 * Enough segments to fill the device without a split, long enough that
 * a block's start is small beside its stream, and of lengths near
 * enough equal that the longest does not keep the rest waiting: each
 * block then streams one whole segment with no pipeline restarts and
 * no merge; with skewed lengths, few segments or short ones a split is
 * better.
 */
int
wl_one(long long rows, int nseg, int maxlen, int resident)
{
	return nseg > 0 && resident > 0 &&
	    (long long)nseg * WL_ONE_DIV >= resident &&
	    rows >= (long long)nseg * WL_BALANCE_SEG &&
	    (long long)nseg * maxlen * WL_ONE_PAD_DEN <=
	    rows * WL_ONE_PAD_NUM;
}

/*
 * Balanced lists pay off once each resident block has rows enough to
 * keep its loads in flight (about 768 on an H200, 2048 on an H100 with
 * the older kernel); below that, several waves of ~512-row items let
 * blocks that finish early take more work.  Short segments favour the
 * chunked list whatever the total: a balanced block then spans pieces
 * of several segments, each a pipeline start, with no waves left to
 * even out the blocks (64 x 4K on an H200: chunked 7% faster at equal
 * lengths, 14% at skewed ones; from about 10K rows a segment the
 * balanced list leads by 0-4%).
 */
int
wl_plan(const int *len, int nseg, int resident, struct wl_item *items,
    int cap, int *first, int *bfirst, int *nblocks, int *balanced)
{
	long long rows = 0;
	int s, n;

	if (resident < 1)
		return -1;
	for (s = 0; s < nseg; s++)
		rows += len[s] > 0 ? len[s] : 0;
	if (rows >= (long long)resident * WL_BALANCE_ROWS &&
	    rows >= (long long)nseg * WL_BALANCE_SEG) {
		n = wl_balanced(len, nseg, resident, items, cap, first,
		    bfirst);
		*nblocks = resident;
		*balanced = 1;
		return n;
	}
	n = wl_chunked(len, nseg, wl_chunk(rows, resident), items, cap,
	    first);
	*nblocks = n;
	*balanced = 0;
	return n;
}

/* A segment of no items still needs the combine, for its zeros. */
int
wl_solo(const int *first, int nseg)
{
	int s;

	for (s = 0; s < nseg; s++)
		if (first[s + 1] - first[s] != 1)
			return 0;
	return 1;
}

int
wl_most(const int *first, int nseg)
{
	int s, most = 0;

	for (s = 0; s < nseg; s++)
		if (first[s + 1] - first[s] > most)
			most = first[s + 1] - first[s];
	return most;
}
