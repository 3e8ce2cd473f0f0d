/*
 * test-worklist.c - the split-K work lists on random lengths: every row of
 * every segment in exactly one item, items cut as each form says, blocks
 * of a balanced list within one row of each other, and the library's
 * choice between the two forms.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "tap.h"
#include "worklist.h"

#define REPS 200

/* Random lengths: mostly long, some empty or of one row. */
static void
rand_lens(int *len, int nseg, int maxlen)
{
	int s;

	for (s = 0; s < nseg; s++) {
		switch (tap_irand(0, 9)) {
		case 0:
			len[s] = 0;
			break;
		case 1:
			len[s] = 1;
			break;
		default:
			len[s] = tap_irand(1, maxlen);
		}
	}
}

/* Lengths of nseg segments (nseg >= 1) summing to total. */
static void
lens_summing(int *len, int nseg, long long total)
{
	long long left = total;
	int s;

	for (s = 0; s < nseg - 1; s++) {
		len[s] = (int)(left / (nseg - s)) + tap_irand(-3, 3);
		if (len[s] < 0)
			len[s] = 0;
		left -= len[s];
	}
	len[nseg - 1] = (int)left;
}

/*
 * Violations of a list of n items over len: rows covered other than
 * exactly once, items out of their segment's range or empty, first[]
 * not the segments' item ranges in order.
 */
static int
coverage(const int *len, int nseg, const struct wl_item *it, int n,
    const int *first)
{
	long long rows = 0, *at;
	int *seen, s, j, r, bad = 0;

	at = malloc(sizeof(long long) * (nseg + 1));
	for (s = 0; s < nseg; s++) {
		at[s] = rows;
		rows += len[s] > 0 ? len[s] : 0;
	}
	seen = calloc((size_t)rows + 1, sizeof(int));
	bad += first[0] != 0 || first[nseg] != n;
	for (j = 0; j < n; j++) {
		s = it[j].seg;
		if (s < 0 || s >= nseg || it[j].r0 < 0 ||
		    it[j].r1 <= it[j].r0 || it[j].r1 > len[s] ||
		    j < first[s] || j >= first[s + 1]) {
			bad++;
			continue;
		}
		for (r = it[j].r0; r < it[j].r1; r++)
			seen[at[s] + r]++;
	}
	for (j = 0; j < rows; j++)
		bad += seen[j] != 1;
	for (s = 0; s < nseg; s++)
		bad += first[s + 1] < first[s];
	free(seen);
	free(at);
	return bad;
}

/* Chunked lists: round(len / chunk) (at least one) items a segment, of
 * sizes within one row of each other; a cap one short fails. */
static void
test_chunked(void)
{
	int rep, bad = 0, badcut = 0, badcap = 0, items = 0;

	for (rep = 0; rep < REPS; rep++) {
		int nseg = tap_irand(1, 64), chunk = tap_irand(1, 3000), s, j;
		int *len = malloc(sizeof(int) * nseg), cap, n;
		int *first = malloc(sizeof(int) * (nseg + 1));
		long long rows = 0;
		struct wl_item *it;

		rand_lens(len, nseg, rep % 3 == 0 ? 200 : 20000);
		for (s = 0; s < nseg; s++)
			rows += len[s];
		cap = (int)(rows / chunk) + nseg + 1;
		it = malloc(sizeof(*it) * cap);
		n = wl_chunked(len, nseg, chunk, it, cap, first);
		if (n < 0) {
			bad++;
			goto next;
		}
		items += n;
		bad += coverage(len, nseg, it, n, first);
		for (s = 0; s < nseg; s++) {
			int np = (int)(((long long)len[s] + chunk / 2) / chunk);
			int lo = len[s], hi = 0;

			np = len[s] <= 0 ? 0 : (np < 1 ? 1 : np);
			badcut += first[s + 1] - first[s] != np;
			for (j = first[s]; j < first[s + 1]; j++) {
				int sz = it[j].r1 - it[j].r0;

				lo = sz < lo ? sz : lo;
				hi = sz > hi ? sz : hi;
			}
			badcut += np > 0 && hi - lo > 1;
		}
		if (n > 0)
			badcap += wl_chunked(len, nseg, chunk, it, n - 1,
			    first) != -1;
next:
		free(it);
		free(first);
		free(len);
	}
	ok(bad == 0, "chunked lists cover every row once (%d lists, %d "
	    "items): %d bad", REPS, items, bad);
	ok(badcut == 0, "chunked lists cut round(len / chunk) equal items a "
	    "segment: %d bad", badcut);
	ok(badcap == 0, "chunked lists refuse a cap one short: %d accepted",
	    badcap);
	{
		int len = 10, first[2];
		struct wl_item it[1];

		ok(wl_chunked(&len, 1, 0, it, 1, first) == -1,
		    "chunked lists refuse chunk 0");
	}
}

/* Balanced lists: block b reads exactly rows [b T / nblk, (b + 1) T /
 * nblk) of the segments laid end to end, in items of one segment each. */
static void
test_balanced(void)
{
	int rep, bad = 0, badblk = 0, badcap = 0;

	for (rep = 0; rep < REPS; rep++) {
		int nseg = tap_irand(1, 64), nblk = tap_irand(1, 700), s, b, j;
		int *len = malloc(sizeof(int) * nseg), cap = nblk + nseg, n;
		int *first = malloc(sizeof(int) * (nseg + 1));
		int *bfirst = malloc(sizeof(int) * (nblk + 1));
		long long rows = 0, *at = malloc(sizeof(long long) * nseg);
		struct wl_item *it = malloc(sizeof(*it) * cap);

		rand_lens(len, nseg, rep % 3 == 0 ? 50 : 30000);
		for (s = 0; s < nseg; s++) {
			at[s] = rows;
			rows += len[s];
		}
		n = wl_balanced(len, nseg, nblk, it, cap, first, bfirst);
		if (n < 0) {
			bad++;
			goto next;
		}
		bad += coverage(len, nseg, it, n, first);
		badblk += bfirst[0] != 0 || bfirst[nblk] != n;
		for (b = 0; b < nblk; b++) {
			long long g0 = rows * b / nblk, g1 = rows * (b + 1) / nblk;
			long long pos = g0;

			badblk += bfirst[b + 1] < bfirst[b];
			for (j = bfirst[b]; j < bfirst[b + 1]; j++) {
				if (at[it[j].seg] + it[j].r0 != pos)
					badblk++;
				pos = at[it[j].seg] + it[j].r1;
			}
			badblk += pos != g1;
		}
		if (n > 0)
			badcap += wl_balanced(len, nseg, nblk, it, n - 1,
			    first, bfirst) != -1;
next:
		free(it);
		free(at);
		free(bfirst);
		free(first);
		free(len);
	}
	ok(bad == 0, "balanced lists cover every row once (%d lists): %d bad",
	    REPS, bad);
	ok(badblk == 0, "balanced lists give each block its range of rows, "
	    "in order: %d bad", badblk);
	ok(badcap == 0, "balanced lists refuse a cap one short: %d accepted",
	    badcap);
}

/* Item rows: at least 16, a whole number of waves of the resident
 * blocks (396 when none are given) covering the rows, about 512 rows
 * once the rows fill a wave. */
static void
test_chunk(void)
{
	int rep, bad = 0;

	for (rep = 0; rep < REPS; rep++) {
		int res = tap_irand(-1, 800), c;
		long long rows = rep % 2 ? tap_irand(0, 100000) :
		    (long long)tap_irand(0, 1 << 20) * tap_irand(1, 64);
		long long slots = res > 0 ? res : 396, waves;

		c = wl_chunk(rows, res);
		waves = (rows + slots * 256) / (slots * 512);
		waves = waves < 1 ? 1 : waves;
		if (c < 16 || (rows + c - 1) / c > slots * waves)
			bad++;
		else if (rows >= slots * 512 && (c < 256 || c > 769))
			bad++;
	}
	ok(bad == 0, "item rows: at least 16, whole waves, about 512 rows: "
	    "%d bad", bad);
}

/* 1 when every segment with rows has exactly one item, and the others
 * none. */
static int
one_each(const int *len, int nseg, const int *first)
{
	int s;

	for (s = 0; s < nseg; s++)
		if (first[s + 1] - first[s] != (len[s] > 0 ? 1 : 0))
			return 0;
	return 1;
}

/* wl_one at its edges: a quarter of the resident blocks in segments,
 * and the longest at 9/8 of the mean; and the list it stands for,
 * wl_chunked with the longest segment as chunk: one item each. */
static void
test_one(void)
{
	int rep, bad = 0;

	for (rep = 0; rep < REPS; rep++) {
		int nseg = tap_irand(1, 64), s, most = 1, n;
		int *len = malloc(sizeof(int) * nseg);
		int *first = malloc(sizeof(int) * (nseg + 1));
		struct wl_item *it = malloc(sizeof(*it) * (nseg + 1));

		rand_lens(len, nseg, tap_irand(1, 100000));
		for (s = 0; s < nseg; s++)
			most = len[s] > most ? len[s] : most;
		n = wl_chunked(len, nseg, most, it, nseg + 1, first);
		bad += n < 0 || coverage(len, nseg, it, n, first) != 0 ||
		    !one_each(len, nseg, first);
		free(it);
		free(first);
		free(len);
	}
	ok(bad == 0, "chunks of the longest segment: one item a segment "
	    "with rows: %d bad", bad);
	ok(wl_one(64 * 4096, 64, 4096, 256) && !wl_one(64 * 4096, 64, 4096,
	    257) && wl_one(8 * 8000, 8, 9000, 32) &&
	    !wl_one(8 * 8000, 8, 9001, 32) && wl_one(8 * 4096, 8, 4096, 32) &&
	    !wl_one(8 * 4096 - 1, 8, 4096, 32) && !wl_one(0, 0, 0, 4) &&
	    !wl_one(100, 4, 25, 0), "one item a segment from a segment for "
	    "every %d resident blocks, %d rows a segment on average, the "
	    "longest at most %d/%d of the mean", WL_ONE_DIV, WL_BALANCE_SEG,
	    WL_ONE_PAD_NUM, WL_ONE_PAD_DEN);
}

/* The choice: balanced over the resident blocks exactly when the rows
 * give each WL_BALANCE_ROWS and the segments WL_BALANCE_SEG on average,
 * within the documented cap; chunked, one item a block, otherwise. */
static void
test_plan(void)
{
	int rep, bad = 0, badpick = 0, nbal = 0;

	for (rep = 0; rep < REPS; rep++) {
		int nseg = tap_irand(1, 64), res = tap_irand(1, 1000);
		int *len = malloc(sizeof(int) * nseg), n, nb = -1, bal = -1;
		int *first = malloc(sizeof(int) * (nseg + 1)), cap, want, s;
		int *bfirst = malloc(sizeof(int) * (res + 1));
		long long rows = 0, edge = (long long)res * WL_BALANCE_ROWS;
		long long sedge = (long long)nseg * WL_BALANCE_SEG;
		struct wl_item *it;

		/* around either edge: one row short, on it, one past; or
		   any */
		switch (rep % 6) {
		case 0:
			lens_summing(len, nseg, edge - 1);
			break;
		case 1:
			lens_summing(len, nseg, edge);
			break;
		case 2:
			lens_summing(len, nseg, edge + 1);
			break;
		case 3:
			lens_summing(len, nseg, sedge - 1 + rep / 6 % 3);
			break;
		default:
			rand_lens(len, nseg, tap_irand(1, 100000));
		}
		for (s = 0; s < nseg; s++)
			rows += len[s] > 0 ? len[s] : 0;
		want = rows >= edge && rows >= sedge;
		cap = (int)(rows / wl_chunk(rows, res)) + nseg + 1;
		cap = cap > res + nseg ? cap : res + nseg;
		it = malloc(sizeof(*it) * cap);
		n = wl_plan(len, nseg, res, it, cap, first, bfirst, &nb, &bal);
		if (n < 0)
			bad++;
		else {
			bad += coverage(len, nseg, it, n, first);
			badpick += bal != want || nb != (bal ? res : n);
			nbal += bal;
		}
		free(it);
		free(bfirst);
		free(first);
		free(len);
	}
	ok(bad == 0, "chosen lists cover every row once: %d bad", bad);
	ok(badpick == 0 && nbal > 0 && nbal < REPS, "balanced exactly from "
	    "%d rows a resident block and %d a segment (%d of %d "
	    "balanced): %d wrong", WL_BALANCE_ROWS, WL_BALANCE_SEG, nbal,
	    REPS, badpick);
	{
		int len = 10, first[2], bfirst[2], nb, bal;
		struct wl_item it[4];

		ok(wl_plan(&len, 1, 0, it, 4, first, bfirst, &nb, &bal) ==
		    -1, "no resident blocks: no list");
	}
}

/* wl_solo and wl_most against counts made by hand from first[]. */
static void
test_counts(void)
{
	int rep, bad = 0;

	for (rep = 0; rep < REPS; rep++) {
		int nseg = tap_irand(1, 40), s, most = 0, solo = 1, c;
		int *first = malloc(sizeof(int) * (nseg + 1));

		first[0] = 0;
		for (s = 0; s < nseg; s++) {
			c = rep % 3 == 0 ? 1 : tap_irand(0, rep % 2 ? 3 : 40);
			first[s + 1] = first[s] + c;
			most = c > most ? c : most;
			solo &= c == 1;
		}
		bad += wl_most(first, nseg) != most ||
		    wl_solo(first, nseg) != solo;
		free(first);
	}
	ok(bad == 0, "most items a segment and single-item lists: %d of %d "
	    "wrong", bad, REPS);
}

int
main(void)
{
	tap_rng = 0x2545f4914f6cdd1dULL;
	test_chunked();
	test_balanced();
	test_chunk();
	test_one();
	test_plan();
	test_counts();
	return tap_done();
}
