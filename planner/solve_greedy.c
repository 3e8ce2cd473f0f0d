/*
 * solve_greedy.c - greedy allocation by best value gained per byte.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Every item starts at its floor level; a max-heap holds each item's best
 * upgrade (to the usable level with the most value gained per byte: the
 * next level on a concave curve, past any plateau otherwise), and the best
 * upgrade is taken while it fits; one that no longer fits is replaced by
 * the item's best upgrade that does.  When the curves are concave and
 * every step costs the same, the steps taken are the budget's worth of
 * largest gains, each available only after the larger ones of its item,
 * so the result is optimal on the grid.  Otherwise the result carries a
 * Lagrangian upper bound, from which the gap is reported.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "solve.h"

typedef struct upgrade {
	double	ratio;		/* value per byte; INFINITY when free */
	int	item;
} upgrade;

/* Whether heap entry a should sit above b (higher ratio, then lower item). */
static int
above(const upgrade *a, const upgrade *b)
{
	if (a->ratio != b->ratio)
		return a->ratio > b->ratio;
	return a->item < b->item;
}

/* Push u onto the heap of n entries. */
static void
heap_push(upgrade *h, int *n, upgrade u)
{
	int k = (*n)++;

	while (k > 0 && above(&u, &h[(k - 1) / 2])) {
		h[k] = h[(k - 1) / 2];
		k = (k - 1) / 2;
	}
	h[k] = u;
}

/* Remove the top of the heap into *out. */
static void
heap_pop(upgrade *h, int *n, upgrade *out)
{
	upgrade last;
	int k = 0, c;

	*out = h[0];
	last = h[--(*n)];
	for (;;) {
		c = 2 * k + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && above(&h[c + 1], &h[c]))
			c++;
		if (!above(&h[c], &last))
			break;
		h[k] = h[c];
		k = c;
	}
	if (*n > 0)
		h[k] = last;
}


/* The value per byte of moving item i from level j to level k. */
static double
step_ratio(const solve_problem *p, int i, int j, int k)
{
	size_t r = (size_t)i * p->n_level;
	double dv = p->value[r + k] - p->value[r + j];
	int64_t dc = p->cost[r + k] - p->cost[r + j];

	if (dc == 0)
		return dv > 0 ? INFINITY : 0;
	return dv / (double)dc;
}

/*
 * The best upgrade of item i from level j: the usable level k > j with the
 * most value gained per byte, costing at most room more (lowest k on ties),
 * or -1.  Taking the best ratio rather than the next level steps over
 * plateaus of a non-concave curve; on a concave curve it is the next level.
 */
static int
best_jump(const solve_problem *p, int i, int j, int64_t room, double *ratio)
{
	size_t r = (size_t)i * p->n_level;
	int k, best = -1;

	for (k = j + 1; k < p->n_level; k++) {
		double q;

		if (!solve__usable(p, i, k))
			continue;
		if (p->cost[r + k] - p->cost[r + j] > room)
			break;
		q = step_ratio(p, i, j, k);
		if (best < 0 || q > *ratio) {
			best = k;
			*ratio = q;
		}
	}
	return best;
}

/*
 * Weak-duality bound: for any price lambda >= 0 per byte, no assignment
 * is worth more than lambda * budget + sum_i max_j (v_ij - lambda c_ij).
 */
static double
lagrange_bound(const solve_problem *p, double lambda)
{
	double ub = lambda * (double)p->budget;
	int i, j, L = p->n_level;

	for (i = 0; i < p->n_item; i++) {
		double best = -INFINITY;

		for (j = 0; j < L; j++) {
			size_t k = (size_t)i * L + j;
			double t;

			if (!solve__usable(p, i, j))
				continue;
			t = p->value[k] - lambda * (double)p->cost[k];
			if (t > best)
				best = t;
		}
		ub += best;
	}
	return ub;
}

/* Greedy solve; see solve.h. */
kvx_status
solve_greedy(const solve_problem *p, const solve_params *params,
    solve_result *res)
{
	double t0 = kvx__now(), lam_hi = 0, lam_lo = INFINITY, ub, b;
	upgrade *heap = NULL, u;
	int *level = NULL, *nxt = NULL, nh = 0, i, L = p ? p->n_level : 0;
	int64_t left;
	kvx_status st;

	memset(res, 0, sizeof *res);
	if (p != NULL && p->n_shard > 0)
		return solve__fail(res, KVX_ERR_UNSUPPORTED, SOLVE_UNKNOWN,
		    "greedy does not support shards; use --solver glpk");
	if (p != NULL && p->value2 != NULL)
		return solve__fail(res, KVX_ERR_UNSUPPORTED, SOLVE_UNKNOWN,
		    "greedy does not support a retrieval floor; use --solver "
		    "glpk or --solver dp");
	if (p != NULL && p->n_group > 0 &&
	    (p->group_min != NULL || p->group_max != NULL))
		return solve__fail(res, KVX_ERR_UNSUPPORTED, SOLVE_UNKNOWN,
		    "greedy does not support per-group limits; use --solver "
		    "dp or --solver glpk");
	if ((st = solve_check(p, res)) != KVX_OK)
		return st;
	level = kvx__malloc_array((size_t)p->n_item, sizeof *level);
	nxt = kvx__malloc_array((size_t)p->n_item, sizeof *nxt);
	heap = kvx__malloc_array((size_t)p->n_item, sizeof *heap);
	if (level == NULL || nxt == NULL || heap == NULL) {
		st = solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "out of memory in greedy");
		goto out;
	}
	left = p->budget;
	for (i = 0; i < p->n_item; i++) {
		level[i] = solve__floor_level(p, i);
		left -= p->cost[(size_t)i * L + level[i]];
	}
	for (i = 0; i < p->n_item; i++)
		if ((nxt[i] = best_jump(p, i, level[i], INT64_MAX, &b)) >= 0)
			heap_push(heap, &nh, (upgrade){ b, i });
	while (nh > 0) {
		int64_t dc;

		heap_pop(heap, &nh, &u);
		i = u.item;
		if (!(u.ratio > 0)) {
			/* Nothing left gains value; stop spending. */
			if (lam_lo > 0)
				lam_lo = 0;
			break;
		}
		dc = p->cost[(size_t)i * L + nxt[i]] -
		    p->cost[(size_t)i * L + level[i]];
		if (dc > left) {
			if (u.ratio > lam_hi && isfinite(u.ratio))
				lam_hi = u.ratio;
			/* the best upgrade that still fits, if any */
			if ((nxt[i] = best_jump(p, i, level[i], left, &b)) >= 0)
				heap_push(heap, &nh, (upgrade){ b, i });
			continue;
		}
		left -= dc;
		if (isfinite(u.ratio) && u.ratio < lam_lo)
			lam_lo = u.ratio;
		level[i] = nxt[i];
		if ((nxt[i] = best_jump(p, i, level[i], INT64_MAX, &b)) >= 0)
			heap_push(heap, &nh, (upgrade){ b, i });
	}
	if ((st = solve__finish(p, res, level, SOLVE_OPTIMAL, t0)) != KVX_OK)
		goto out;
	if (res->concave && res->equal_steps) {
		res->gap = 0;
		goto out;
	}
	/* Not proven exact: bound the optimum at the prices the run saw. */
	ub = lagrange_bound(p, lam_hi);
	if (isfinite(lam_lo) && (b = lagrange_bound(p, lam_lo)) < ub)
		ub = b;
	if ((b = lagrange_bound(p, 0.5 * (lam_lo + lam_hi))) < ub &&
	    isfinite(lam_lo))
		ub = b;
	res->gap = ub > res->objective ?
	    (ub - res->objective) / fmax(fabs(ub), 1e-300) : 0;
	if (res->gap <= 1e-12) {
		res->gap = 0;
		goto out;
	}
	res->status = SOLVE_FEASIBLE;
	snprintf(res->reason, sizeof res->reason, "greedy is exact only for "
	    "concave curves with equal-cost steps (%s); relative gap <= %.3g",
	    !res->concave ? "curves are not concave" :
	    "step costs differ", res->gap);
out:
	free(level);
	free(nxt);
	free(heap);
	res->seconds = kvx__now() - t0;
	return st;
}
