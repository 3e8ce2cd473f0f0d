/*
 * solve_floor.c - allocation under a floor on a second objective (the
 * retrieval retention) by a two-dimensional multiple-choice knapsack DP.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * The second dimension counts each item's deficit: how far its second
 * value at a level lies below the best it reaches, in steps of delta.
 * The floor allows the items a total deficit of sum(best) - floor2, that
 * is R steps.  Row i of the table holds, for every (cost units b, deficit
 * steps u), the best value of items 0..i with excess cost at most b and
 * deficit at most u ("at most": the first row is 0 everywhere), so every
 * cell of the last row is an answer for a smaller allowance as well.  Its
 * use: GLPK's cross-check on small problems, where the steps are exact,
 * and the floor's solver where kvx-plan is built without GLPK.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "solve.h"

/* One usable level of an item on the table's axes. */
typedef struct fopt {
	int64_t	e;		/* excess cost, table units */
	int	u;		/* deficit, steps */
	int	j;		/* level */
	double	v;
} fopt;

/* A cell of the last row to try. */
typedef struct cand {
	double	v;
	int64_t	b;
	int	u;
} cand;

/* Corner cells: best value first, then the larger allowance. */
static int
cmp_cand(const void *a, const void *b)
{
	const cand *x = a, *y = b;

	if (x->v != y->v)
		return (x->v < y->v) - (x->v > y->v);
	if (x->b != y->b)
		return (x->b < y->b) - (x->b > y->b);
	return (x->u < y->u) - (x->u > y->u);
}

/* The corner cells of the last row tried for a truly feasible answer. */
#define CORNER	48

/* Floor-constrained allocation; see solve.h. */
kvx_status
solve_floor(const solve_problem *p, const solve_params *params,
    solve_result *res)
{
	double t0 = kvx__now(), delta = 1, slack, top_sum = 0;
	double *prev = NULL, *cur = NULL, *tmp;
	int64_t fsum = 0, q = 0, c = 1, Bu, B, W, cells, b, *fcost = NULL;
	int N, L, i, j, k, R, exact = 1, n_cand = 0, *n_opt = NULL;
	int *level = NULL;
	fopt **opt = NULL;
	cand *cd = NULL;
	uint16_t *choice = NULL;
	solve_params def;
	kvx_status st;

	if (p != NULL && (p->n_shard > 0 || (p->n_group > 0 &&
	    (p->group_min != NULL || p->group_max != NULL)))) {
		memset(res, 0, sizeof *res);
		return solve__fail(res, KVX_ERR_UNSUPPORTED, SOLVE_UNKNOWN,
		    "dp does not support a retrieval floor with per-layer "
		    "limits or shards; use --solver glpk");
	}
	if ((st = solve_check(p, res)) != KVX_OK)
		return st;
	if (params == NULL) {
		solve_params_init(&def);
		params = &def;
	}
	N = p->n_item;
	L = p->n_level;
	if (L > UINT16_MAX)
		return solve__fail(res, KVX_ERR_UNSUPPORTED, SOLVE_UNKNOWN,
		    "dp with a floor handles up to %d levels", UINT16_MAX);
	fcost = kvx__calloc((size_t)N, sizeof *fcost);
	n_opt = kvx__calloc((size_t)N, sizeof *n_opt);
	opt = kvx__calloc((size_t)N, sizeof *opt);
	level = kvx__malloc_array((size_t)N, sizeof *level);
	if (fcost == NULL || n_opt == NULL || opt == NULL || level == NULL) {
		st = solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "dp: out of memory");
		goto out;
	}
	for (i = 0; i < N; i++) {
		double top = -INFINITY;

		fcost[i] = p->cost[(size_t)i * L + solve__floor_level(p, i)];
		fsum += fcost[i];
		for (j = 0; j < L; j++)
			if (solve__usable(p, i, j)) {
				q = solve__gcd64(q, p->cost[(size_t)i * L + j] -
				    fcost[i]);
				if (p->value2[(size_t)i * L + j] > top)
					top = p->value2[(size_t)i * L + j];
			}
		top_sum += top;
	}
	q = q > 0 ? q : 1;
	if (params->quantum > 0 && q % params->quantum == 0)
		q = params->quantum;
	slack = top_sum - p->floor2;
	if (slack > 0)
		delta = params->floor_quantum > 0 ? params->floor_quantum :
		    slack / (params->floor_bins > 0 ? params->floor_bins : 256);
	R = slack > 0 ? (int)fmin(floor(slack / delta + 1e-9), INT32_MAX - 1) :
	    0;
	W = (int64_t)R + 1;
	if (W * 2 > params->floor_cells) {
		st = solve__fail(res, KVX_ERR_UNSUPPORTED, SOLVE_UNKNOWN,
		    "dp: %d deficit steps of %g do not fit rows of %lld "
		    "cells; use a coarser step or --solver glpk", R, delta,
		    (long long)params->floor_cells);
		goto out;
	}
	Bu = (p->budget - fsum) / q;
	while ((Bu / c + 1) * W > params->floor_cells)
		c++;
	B = Bu / c;
	cells = (B + 1) * W;

	/* the options of every item on the table's axes */
	for (i = 0; i < N; i++) {
		double top = -INFINITY;

		if ((opt[i] = kvx__malloc_array((size_t)L,
		    sizeof **opt)) == NULL) {
			st = solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
			    "dp: out of memory");
			goto out;
		}
		for (j = 0; j < L; j++)
			if (solve__usable(p, i, j) &&
			    p->value2[(size_t)i * L + j] > top)
				top = p->value2[(size_t)i * L + j];
		for (j = 0; j < L; j++) {
			size_t at = (size_t)i * L + j;
			int64_t e, ec;
			double d, x;
			int u;

			if (!solve__usable(p, i, j))
				continue;
			e = (p->cost[at] - fcost[i]) / q;
			ec = (e + c / 2) / c;
			if (ec * c != e)
				exact = 0;
			d = top - p->value2[at];
			if (d < 0)
				d = 0;
			if (slack > 0) {
				x = d / delta;
				if (x > R + 1)
					continue;
				u = (int)llround(x);
				if (fabs(x - u) > 1e-9 * (1 + x))
					exact = 0;
			} else
				u = d > 1e-12 * (1 + fabs(top)) ? 1 : 0;
			if (ec > B || u > R)
				continue;
			/* a higher level at the same cost on the table is
			 * worth as much in both objectives, or more */
			if (n_opt[i] > 0 && opt[i][n_opt[i] - 1].e == ec &&
			    opt[i][n_opt[i] - 1].u >= u &&
			    opt[i][n_opt[i] - 1].v <= p->value[at]) {
				opt[i][n_opt[i] - 1] = (fopt){ ec, u, j,
				    p->value[at] };
				continue;
			}
			opt[i][n_opt[i]++] = (fopt){ ec, u, j, p->value[at] };
		}
	}
	if ((size_t)N * (size_t)cells > ((size_t)1 << 31) ||
	    (choice = kvx__malloc_array((size_t)N * cells,
	    sizeof *choice)) == NULL ||
	    (prev = kvx__malloc_array((size_t)cells, sizeof *prev)) == NULL ||
	    (cur = kvx__malloc_array((size_t)cells, sizeof *cur)) == NULL) {
		st = solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "dp: out of memory for %d rows of %lld cells", N,
		    (long long)cells);
		goto out;
	}
	for (b = 0; b < cells; b++)
		prev[b] = 0;
	for (i = 0; i < N; i++) {
		uint16_t *ch = choice + (size_t)i * cells;

		for (b = 0; b < cells; b++) {
			cur[b] = -INFINITY;
			ch[b] = UINT16_MAX;
		}
		for (k = 0; k < n_opt[i]; k++) {
			const fopt *o = &opt[i][k];

			for (b = o->e; b <= B; b++) {
				const double *src = prev + (b - o->e) * W;
				double *dst = cur + b * W;
				uint16_t *cb = ch + b * W;
				int uu;

				for (uu = o->u; uu <= R; uu++) {
					double t = src[uu - o->u] + o->v;

					if (t > dst[uu]) {
						dst[uu] = t;
						cb[uu] = (uint16_t)k;
					}
				}
			}
		}
		tmp = prev;
		prev = cur;
		cur = tmp;
	}

	/* the corner of the last row, best value first */
	if ((cd = kvx__malloc_array((size_t)CORNER * CORNER,
	    sizeof *cd)) == NULL) {
		st = solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "dp: out of memory");
		goto out;
	}
	for (b = B; b >= 0 && b > B - CORNER; b--)
		for (k = R; k >= 0 && k > R - CORNER; k--)
			if (isfinite(prev[b * W + k]))
				cd[n_cand++] = (cand){ prev[b * W + k], b, k };
	qsort(cd, (size_t)n_cand, sizeof *cd, cmp_cand);
	for (k = 0; k < n_cand; k++) {
		int64_t bb = cd[k].b;
		int uu = cd[k].u;

		for (i = N - 1; i >= 0; i--) {
			const fopt *o = &opt[i][choice[(size_t)i * cells +
			    bb * W + uu]];

			level[i] = o->j;
			bb -= o->e;
			uu -= o->u;
		}
		if (solve_eval(p, level, NULL, NULL) == 0)
			break;
	}
	if (k == n_cand) {
		st = solve__fail(res, KVX_ERR_PLAN, exact ? SOLVE_INFEASIBLE :
		    SOLVE_UNKNOWN, "no assignment meets the budget and the "
		    "floor %.6g%s", p->floor2, exact ? "" : " on the dp's "
		    "discretised table (try --solver glpk)");
		goto out;
	}
	st = solve__finish(p, res, level, exact && k == 0 &&
	    cd[0].b == B && cd[0].u == R ? SOLVE_OPTIMAL : SOLVE_FEASIBLE, t0);
	if (st == KVX_OK && res->status == SOLVE_FEASIBLE)
		snprintf(res->reason, sizeof res->reason, "dp over a "
		    "discretised floor: deficit steps of %.3g (%d), cost units "
		    "of %lld bytes (%lld)", delta, R, (long long)(q * c),
		    (long long)B);
out:
	for (i = 0; opt != NULL && i < N; i++)
		free(opt[i]);
	free(opt);
	free(n_opt);
	free(fcost);
	free(level);
	free(choice);
	free(prev);
	free(cur);
	free(cd);
	return st;
}

/* The best second-objective sum within the budget, the floor dropped. */
kvx_status
solve_best2(const solve_problem *p, const solve_params *params,
    double *best)
{
	solve_problem q = *p;
	solve_result r;
	kvx_status st;

	q.value = p->value2;
	q.value2 = NULL;
	memset(&r, 0, sizeof r);
	st = solve_dp(&q, params, &r);
	if (st == KVX_OK)
		*best = r.objective;
	solve_result_free(&r);
	return st;
}
