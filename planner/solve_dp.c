/*
 * solve_dp.c - exact allocation by multiple-choice knapsack DP.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Costs are measured above each item's floor level, in units of the gcd of
 * those excess costs (or the caller's quantum), so the table is small: the
 * budget of a 30-layer, 3-head, 256-level model is a few ten thousand
 * units.  The DP runs over "blocks": an item, or, when groups have limits,
 * a whole group whose options are the group's achievable excess costs
 * within its limits (found by an exact-cost DP over the group's items).
 *
 * Row s holds best[b] = the best value of blocks 1..s with excess at most
 * b.  Only b in [B - rest_s, min(B, reach_s)] matters, where rest_s is the
 * most the later blocks can add and reach_s the most blocks 1..s can use:
 * below that range the later blocks cannot fill the budget anyway, so the
 * lower end behaves as "at most".  All rows are kept, and the choices are
 * recovered afterwards by redoing each row's additions, which reproduces
 * the stored values bit for bit.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

#include "solve.h"

/* Row cells per pass of a block's options (4 KiB of doubles). */
#define DP_CHUNK	512

typedef struct option {
	int64_t	e;		/* excess cost in units */
	double	v;		/* value */
	int	tag;		/* item: level; group: excess within group */
} option;

typedef struct block {
	option	*opt;
	int	 n_opt;
	int	 item;		/* the item, or -1 for a group */
	int	*member;	/* group: its items */
	int	 n_member;
	double	*grow;		/* group: exact-cost rows, concatenated */
	int64_t	*gend;		/* group: reach after each member */
} block;

typedef struct dp {
	const solve_problem	*p;
	int64_t		 q;		/* bytes per unit */
	int64_t		*floor_cost;	/* [N] */
	option		**iopt;		/* [N] options of each item */
	int		*n_iopt;
	block		*blk;
	int		 n_blk;
	int64_t		 cells;		/* group rows so far */
	int64_t		 max_cells;
} dp;

/*
 * dst[k] = max(dst[k] (unless first), s[0][k] + v[0], ..., s[3][k] + v[3])
 * for k < n: four options of one block at a time, so that each dst vector
 * is loaded and stored once per four options.
 */
static void
relax4(double *dst, const double *const s[4], const double v[4], int64_t n,
    int first)
{
	int64_t k = 0;

#ifdef __AVX__
	__m256d v0 = _mm256_set1_pd(v[0]), v1 = _mm256_set1_pd(v[1]);
	__m256d v2 = _mm256_set1_pd(v[2]), v3 = _mm256_set1_pd(v[3]);

	for (; k + 4 <= n; k += 4) {
		__m256d a = _mm256_add_pd(_mm256_loadu_pd(s[0] + k), v0);
		__m256d b = _mm256_add_pd(_mm256_loadu_pd(s[1] + k), v1);
		__m256d c = _mm256_add_pd(_mm256_loadu_pd(s[2] + k), v2);
		__m256d d = _mm256_add_pd(_mm256_loadu_pd(s[3] + k), v3);

		a = _mm256_max_pd(_mm256_max_pd(a, b), _mm256_max_pd(c, d));
		if (!first)
			a = _mm256_max_pd(a, _mm256_loadu_pd(dst + k));
		_mm256_storeu_pd(dst + k, a);
	}
#endif
	for (; k < n; k++) {
		double m = first ? -INFINITY : dst[k], t;
		int o;

		for (o = 0; o < 4; o++)
			if ((t = s[o][k] + v[o]) > m)
				m = t;
		dst[k] = m;
	}
}

/* dst[k] = max(dst[k], src[k] + v) for k < n. */
static void
relax1(double *dst, const double *src, int64_t n, double v)
{
	int64_t k;

	for (k = 0; k < n; k++) {
		double t = src[k] + v;

		if (t > dst[k])
			dst[k] = t;
	}
}

/* Build each item's options: usable levels, excess in units. */
static kvx_status
item_options(dp *d, const solve_params *params, solve_result *res)
{
	const solve_problem *p = d->p;
	int64_t g = 0;
	int i, j, L = p->n_level;

	for (i = 0; i < p->n_item; i++) {
		int fl = solve__floor_level(p, i);

		d->floor_cost[i] = p->cost[(size_t)i * L + fl];
		for (j = fl; j < L; j++)
			if (solve__usable(p, i, j))
				g = solve__gcd64(g, p->cost[(size_t)i * L +
				    j] - d->floor_cost[i]);
	}
	d->q = g > 0 ? g : 1;
	if (params->quantum > 0) {
		if (g % params->quantum != 0)
			return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "dp: cost steps are not multiples of the quantum "
			    "%lld bytes (their gcd is %lld)",
			    (long long)params->quantum, (long long)g);
		d->q = params->quantum;
	}
	for (i = 0; i < p->n_item; i++) {
		option *o;
		int n = 0;

		o = d->iopt[i] = kvx__malloc_array((size_t)L, sizeof *o);
		if (o == NULL)
			return solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
			    "dp: out of memory");
		for (j = 0; j < L; j++) {
			size_t k = (size_t)i * L + j;
			int64_t e;

			if (!solve__usable(p, i, j))
				continue;
			e = (p->cost[k] - d->floor_cost[i]) / d->q;
			/* Levels of equal cost: only the best can be chosen. */
			if (n > 0 && o[n - 1].e == e) {
				if (p->value[k] > o[n - 1].v) {
					o[n - 1].v = p->value[k];
					o[n - 1].tag = j;
				}
				continue;
			}
			o[n++] = (option){ e, p->value[k], j };
		}
		d->n_iopt[i] = n;
	}
	return KVX_OK;
}

/* The exact-cost DP over a group's items; its options are the results. */
static kvx_status
group_block(dp *d, block *b, int g, solve_result *res)
{
	const solve_problem *p = d->p;
	int64_t reach = 0, off = 0, gfloor = 0, bmin, bmax, x;
	int64_t gmin, gmax;
	char b1[32], b2[32];
	int t, k, n;

	for (t = 0; t < b->n_member; t++) {
		int i = b->member[t];

		reach += d->iopt[i][d->n_iopt[i] - 1].e;
		gfloor += d->floor_cost[i];
		off += reach + 1;
	}
	if (off + 1 + d->cells > d->max_cells)
		return solve__fail(res, KVX_ERR_UNSUPPORTED, SOLVE_UNKNOWN,
		    "dp: group %d needs %lld cells (cost units of %lld bytes); "
		    "over the limit of %lld: use a coarser quantum or --solver "
		    "glpk", g, (long long)(off + 1), (long long)d->q,
		    (long long)d->max_cells);
	if ((b->gend = kvx__malloc_array((size_t)b->n_member + 1,
	    sizeof *b->gend)) == NULL || (b->grow = kvx__malloc_array(
	    (size_t)off + 1, sizeof *b->grow)) == NULL)
		return solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "dp: out of memory for group %d", g);
	d->cells += off + 1;
	/* Row t starts at grow + sum of earlier widths; row 0 is {0}. */
	b->grow[0] = 0;
	b->gend[0] = 0;
	off = 1;
	for (t = 0; t < b->n_member; t++) {
		int i = b->member[t];
		const option *o = d->iopt[i];
		double *prev = b->grow + off - (b->gend[t] + 1);
		double *row = b->grow + off;

		b->gend[t + 1] = b->gend[t] + o[d->n_iopt[i] - 1].e;
		for (x = 0; x <= b->gend[t + 1]; x++)
			row[x] = -INFINITY;
		for (k = 0; k < d->n_iopt[i]; k++)
			relax1(row + o[k].e, prev, b->gend[t] + 1, o[k].v);
		off += b->gend[t + 1] + 1;
	}
	gmin = p->group_min ? p->group_min[g] : 0;
	gmax = p->group_max ? p->group_max[g] : SOLVE_NO_LIMIT;
	/* gfloor + q * b must lie in [gmin, gmax]. */
	bmin = gmin <= gfloor ? 0 : (gmin - gfloor + d->q - 1) / d->q;
	bmax = gmax == SOLVE_NO_LIMIT ? reach : (gmax - gfloor) / d->q;
	if (bmax > reach)
		bmax = reach;
	if ((b->opt = kvx__malloc_array((size_t)reach + 1,
	    sizeof *b->opt)) == NULL)
		return solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "dp: out of memory for group %d", g);
	n = 0;
	{
		const double *last = b->grow + off - (reach + 1);

		for (x = bmin; x <= bmax; x++)
			if (last[x] > -INFINITY)
				b->opt[n++] = (option){ x, last[x], (int)x };
	}
	b->n_opt = n;
	if (n == 0)
		return solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
		    "group %d: no choice of its items' levels costs between "
		    "%s and %s", g, solve__bytes(gmin, b1, sizeof b1),
		    gmax == SOLVE_NO_LIMIT ? "no limit" :
		    solve__bytes(gmax, b2, sizeof b2));
	return KVX_OK;
}

/* Recover the levels of a group's items from its chosen excess x. */
static void
group_levels(const dp *d, const block *b, int64_t x, int *level)
{
	int64_t off = 1;
	int t, k;

	for (t = 0; t < b->n_member; t++)
		off += b->gend[t + 1] + 1;
	for (t = b->n_member - 1; t >= 0; t--) {
		int i = b->member[t];
		const option *o = d->iopt[i];
		const double *row = b->grow + off - (b->gend[t + 1] + 1);
		const double *prev = row - (b->gend[t] + 1);

		for (k = 0; k < d->n_iopt[i]; k++) {
			int64_t y = x - o[k].e;

			if (y >= 0 && y <= b->gend[t] && prev[y] + o[k].v ==
			    row[x])
				break;
		}
		/* The row was built from these sums, so one matches. */
		if (k == d->n_iopt[i])
			k = 0;
		level[i] = o[k].tag;
		x -= o[k].e;
		off -= b->gend[t + 1] + 1;
	}
}

/* Split the items into blocks: groups with limits, else single items. */
static kvx_status
make_blocks(dp *d, solve_result *res)
{
	const solve_problem *p = d->p;
	int grouped = p->n_group > 0 &&
	    (p->group_min != NULL || p->group_max != NULL);
	int i, g, *count = NULL;
	kvx_status st;

	d->blk = kvx__calloc((size_t)p->n_item + (size_t)p->n_group,
	    sizeof *d->blk);
	if (d->blk == NULL)
		return solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "dp: out of memory");
	if (grouped && (count = kvx__calloc((size_t)p->n_group,
	    sizeof *count)) == NULL)
		return solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "dp: out of memory");
	if (grouped) {
		for (i = 0; i < p->n_item; i++)
			if (p->group[i] >= 0)
				count[p->group[i]]++;
		for (g = 0; g < p->n_group; g++) {
			block *b;

			if (count[g] == 0)
				continue;
			b = &d->blk[d->n_blk++];
			b->item = -1;
			b->member = kvx__malloc_array((size_t)count[g],
			    sizeof *b->member);
			if (b->member == NULL) {
				free(count);
				return solve__fail(res, KVX_ERR_NOMEM,
				    SOLVE_UNKNOWN, "dp: out of memory");
			}
			for (i = 0; i < p->n_item; i++)
				if (p->group[i] == g)
					b->member[b->n_member++] = i;
			if ((st = group_block(d, b, g, res)) != KVX_OK) {
				free(count);
				return st;
			}
		}
		free(count);
	}
	for (i = 0; i < p->n_item; i++) {
		block *b;

		if (grouped && p->group[i] >= 0)
			continue;
		b = &d->blk[d->n_blk++];
		b->item = i;
		b->opt = d->iopt[i];
		b->n_opt = d->n_iopt[i];
	}
	return KVX_OK;
}

/* Release everything the DP allocated. */
static void
dp_free(dp *d)
{
	int i;

	for (i = 0; i < d->n_blk; i++)
		if (d->blk[i].item < 0) {
			free(d->blk[i].opt);
			free(d->blk[i].member);
			free(d->blk[i].grow);
			free(d->blk[i].gend);
		}
	if (d->iopt != NULL)
		for (i = 0; i < d->p->n_item; i++)
			free(d->iopt[i]);
	free(d->iopt);
	free(d->n_iopt);
	free(d->floor_cost);
	free(d->blk);
}

/* Run the DP across blocks and recover the levels. */
static kvx_status
dp_run(dp *d, const solve_params *params, int *level, solve_result *res)
{
	const solve_problem *p = d->p;
	int64_t *lo = NULL, *hi = NULL, *start = NULL, total = 0, need = 0;
	int64_t B, s, x, fsum = 0, w, emax, c0;
	double *rows = NULL, *scr = NULL;
	char b1[32], b2[32];
	kvx_status st = KVX_OK;
	int S = d->n_blk, i, k;

	for (i = 0; i < p->n_item; i++)
		fsum += d->floor_cost[i];
	for (s = 0; s < S; s++) {
		total += d->blk[s].opt[d->blk[s].n_opt - 1].e;
		need += d->blk[s].opt[0].e;
	}
	B = (p->budget - fsum) / d->q;
	if (need > B)
		return solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
		    "budget %s is below %s, the least that the floors and "
		    "group limits allow", solve__bytes(p->budget, b1,
		    sizeof b1), solve__bytes(fsum + need * d->q, b2,
		    sizeof b2));
	if (B > total)
		B = total;
	lo = kvx__malloc_array((size_t)S + 1, sizeof *lo);
	hi = kvx__malloc_array((size_t)S + 1, sizeof *hi);
	start = kvx__malloc_array((size_t)S + 1, sizeof *start);
	if (lo == NULL || hi == NULL || start == NULL) {
		st = solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "dp: out of memory");
		goto out;
	}
	/* rest before block s+1 is total minus reach after block s. */
	{
		int64_t reach = 0, cells = 0;

		for (s = 0; s <= S; s++) {
			if (s > 0)
				reach += d->blk[s - 1].opt[d->blk[s - 1].n_opt -
				    1].e;
			lo[s] = B - (total - reach);
			if (lo[s] < 0)
				lo[s] = 0;
			hi[s] = reach < B ? reach : B;
			start[s] = cells;
			cells += hi[s] - lo[s] + 1;
		}
		if (cells + d->cells > params->dp_max_cells) {
			st = solve__fail(res, KVX_ERR_UNSUPPORTED,
			    SOLVE_UNKNOWN, "dp: the table needs %lld cells "
			    "(%lld cost units of %lld bytes); over the limit "
			    "of %lld: use a coarser quantum or --solver glpk",
			    (long long)(cells + d->cells), (long long)B,
			    (long long)d->q, (long long)params->dp_max_cells);
			goto out;
		}
		rows = kvx__malloc_array((size_t)cells, sizeof *rows);
	}
	emax = 0;
	for (s = 0; s < S; s++)
		if (d->blk[s].opt[d->blk[s].n_opt - 1].e > emax)
			emax = d->blk[s].opt[d->blk[s].n_opt - 1].e;
	scr = kvx__malloc_array((size_t)(hi[S] > B ? hi[S] : B) +
	    (size_t)emax + 2, sizeof *scr);
	if (rows == NULL || scr == NULL) {
		st = solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "dp: out of memory for the table");
		goto out;
	}
	rows[0] = 0;
	for (s = 1; s <= S; s++) {
		const block *b = &d->blk[s - 1];
		const double *prev = rows + start[s - 1];
		double *row = rows + start[s];
		int64_t be = b->opt[b->n_opt - 1].e, base = lo[s] - be;

		/*
		 * scr[y - base] is the previous row at excess y, for y in
		 * [lo[s] - be, hi[s]]: -inf below zero, flat past its reach.
		 */
		for (x = base; x <= hi[s]; x++) {
			double t;

			if (x < 0)
				t = -INFINITY;
			else if (x > hi[s - 1])
				t = prev[hi[s - 1] - lo[s - 1]];
			else
				t = prev[x - lo[s - 1]];
			scr[x - base] = t;
		}
		w = hi[s] - lo[s] + 1;
		/* Chunks of the row small enough that the row and its
		 * sources stay in L1 while every option passes over them. */
		for (c0 = 0; c0 < w; c0 += DP_CHUNK) {
			int64_t n = w - c0 < DP_CHUNK ? w - c0 : DP_CHUNK;

			for (k = 0; k < b->n_opt; k += 4) {
				const double *src[4];
				double v[4];
				int o;

				for (o = 0; o < 4; o++) {
					/* Pad the last batch with option k:
					 * a repeated option changes nothing. */
					const option *op = &b->opt[k + o <
					    b->n_opt ? k + o : k];

					src[o] = scr + c0 + (be - op->e);
					v[o] = op->v;
				}
				relax4(row + c0, src, v, n, k == 0);
			}
		}
	}
	if (!(rows[start[S]] > -INFINITY)) {
		st = solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
		    "no assignment meets the budget %s and the group limits",
		    solve__bytes(p->budget, b1, sizeof b1));
		goto out;
	}
	x = B;
	for (s = S; s >= 1; s--) {
		const block *b = &d->blk[s - 1];
		const double *prev = rows + start[s - 1];
		double target = rows[start[s] + x - lo[s]];
		int64_t y = 0;

		for (k = 0; k < b->n_opt; k++) {
			y = x - b->opt[k].e;
			if (y < 0)
				continue;
			if (y > hi[s - 1])
				y = hi[s - 1];
			if (prev[y - lo[s - 1]] + b->opt[k].v == target)
				break;
		}
		if (k == b->n_opt) {
			st = solve__fail(res, KVX_ERR_PLAN, SOLVE_UNKNOWN,
			    "dp: could not trace the table back at block "
			    "%lld", (long long)s);
			goto out;
		}
		if (b->item >= 0)
			level[b->item] = b->opt[k].tag;
		else
			group_levels(d, b, b->opt[k].tag, level);
		x = y;
	}
out:
	free(lo);
	free(hi);
	free(start);
	free(rows);
	free(scr);
	return st;
}

/* Exact DP solve; see solve.h. */
kvx_status
solve_dp(const solve_problem *p, const solve_params *params,
    solve_result *res)
{
	double t0 = kvx__now();
	solve_params def;
	int *level = NULL;
	kvx_status st;
	dp d;

	memset(res, 0, sizeof *res);
	if (p != NULL && p->n_shard > 0)
		return solve__fail(res, KVX_ERR_UNSUPPORTED, SOLVE_UNKNOWN,
		    "dp does not support shards; use --solver glpk");
	if (p != NULL && p->value2 != NULL)
		return solve_floor(p, params, res);
	if ((st = solve_check(p, res)) != KVX_OK)
		return st;
	if (params == NULL) {
		solve_params_init(&def);
		params = &def;
	}
	memset(&d, 0, sizeof d);
	d.p = p;
	d.max_cells = params->dp_max_cells;
	d.floor_cost = kvx__calloc((size_t)p->n_item, sizeof *d.floor_cost);
	d.iopt = kvx__calloc((size_t)p->n_item, sizeof *d.iopt);
	d.n_iopt = kvx__calloc((size_t)p->n_item, sizeof *d.n_iopt);
	level = kvx__malloc_array((size_t)p->n_item, sizeof *level);
	if (d.floor_cost == NULL || d.iopt == NULL || d.n_iopt == NULL ||
	    level == NULL) {
		st = solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "dp: out of memory");
		goto out;
	}
	if ((st = item_options(&d, params, res)) != KVX_OK ||
	    (st = make_blocks(&d, res)) != KVX_OK ||
	    (st = dp_run(&d, params, level, res)) != KVX_OK)
		goto out;
	st = solve__finish(p, res, level, SOLVE_OPTIMAL, t0);
out:
	dp_free(&d);
	free(level);
	res->seconds = kvx__now() - t0;
	return st;
}
