/*
 * solve.c - what the allocation solvers share: parameters, problem
 * checks, objective evaluation, the concavity test and dispatch by name.
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "solve.h"

/* Fill params with the defaults. */
void
solve_params_init(solve_params *p)
{
	memset(p, 0, sizeof *p);
	p->time_limit = 5.0;
	p->mip_gap = 1e-6;
	p->quantum = 0;
	p->dp_max_cells = (int64_t)1 << 25;
	p->floor_bins = 256;
	p->floor_quantum = 0;
	p->floor_cells = (int64_t)1 << 18;
}

/* Release the result's arrays and clear it. */
void
solve_result_free(solve_result *r)
{
	if (r == NULL)
		return;
	free(r->level);
	memset(r, 0, sizeof *r);
}

/* Format a byte count for messages, e.g. "3.4 MiB". */
const char *
solve__bytes(int64_t n, char *buf, int size)
{
	static const char *unit[] = { "KiB", "MiB", "GiB", "TiB", "PiB" };
	double v = (double)n;
	int u = -1;

	if (n < 1024 && n > -1024) {
		snprintf(buf, size, "%lld B", (long long)n);
		return buf;
	}
	while (fabs(v) >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	snprintf(buf, size, "%.4g %s", v, unit[u]);
	return buf;
}

/* Record a failure in res (if any) and as the thread's error message. */
kvx_status
solve__fail(solve_result *res, kvx_status code, solve_status st,
    const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (res != NULL) {
		free(res->level);
		res->level = NULL;
		res->status = st;
		snprintf(res->reason, sizeof res->reason, "%s", msg);
	}
	return kvx__fail(code, "%s", msg);
}

/* Whether level j of item i may be chosen (mask and [lo, hi]). */
int
solve__usable(const solve_problem *p, int i, int j)
{
	if (p->lo != NULL && j < p->lo[i])
		return 0;
	if (p->hi != NULL && j > p->hi[i])
		return 0;
	if (p->allowed != NULL && !p->allowed[(size_t)i * p->n_level + j])
		return 0;
	return 1;
}

/* The lowest usable level of item i, or -1. */
int
solve__floor_level(const solve_problem *p, int i)
{
	int j;

	for (j = 0; j < p->n_level; j++)
		if (solve__usable(p, i, j))
			return j;
	return -1;
}

/* Fill res from an assignment the solver found. */
kvx_status
solve__finish(const solve_problem *p, solve_result *res, const int *level,
    solve_status st, double t0)
{
	size_t n = (size_t)p->n_item;

	if (res->level == NULL &&
	    (res->level = kvx__malloc_array(n, sizeof *res->level)) == NULL)
		return solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "out of memory for the assignment");
	if (res->level != level)
		memcpy(res->level, level, n * sizeof *level);
	if (solve_eval(p, res->level, &res->objective, &res->cost) != 0)
		return solve__fail(res, KVX_ERR_PLAN, SOLVE_UNKNOWN,
		    "solver returned an assignment that breaks a constraint "
		    "(cost %lld of budget %lld)", (long long)res->cost,
		    (long long)p->budget);
	res->status = st;
	res->seconds = kvx__now() - t0;
	return KVX_OK;
}

/* Check values and costs of item i: finite, non-decreasing. */
static kvx_status
check_curve(const solve_problem *p, int i, solve_result *res)
{
	const double *v = p->value + (size_t)i * p->n_level;
	const int64_t *c = p->cost + (size_t)i * p->n_level;
	int j;

	for (j = 0; j < p->n_level; j++) {
		if (!isfinite(v[j]))
			return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "item %d level %d: value is not finite", i, j);
		if (c[j] < 0)
			return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "item %d level %d: negative cost %lld", i, j,
			    (long long)c[j]);
		if (j == 0)
			continue;
		if (c[j] < c[j - 1])
			return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "item %d: cost decreases from level %d to %d",
			    i, j - 1, j);
		if (v[j] < v[j - 1] - 1e-12 * (1 + fabs(v[j - 1])))
			return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "item %d: value decreases from level %d to %d",
			    i, j - 1, j);
	}
	return KVX_OK;
}

/* Check item i's second values: finite, non-decreasing. */
static kvx_status
check_curve2(const solve_problem *p, int i, solve_result *res)
{
	const double *v = p->value2 + (size_t)i * p->n_level;
	int j;

	for (j = 0; j < p->n_level; j++) {
		if (!isfinite(v[j]))
			return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "item %d level %d: second value is not finite", i,
			    j);
		if (j > 0 && v[j] < v[j - 1] - 1e-12 * (1 + fabs(v[j - 1])))
			return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "item %d: second value decreases from level %d "
			    "to %d", i, j - 1, j);
	}
	return KVX_OK;
}

/* Add b to *a unless it overflows; 0 on success. */
static int
add64(int64_t *a, int64_t b)
{
	return __builtin_add_overflow(*a, b, a);
}

/* Whether the problem has group limits that need enforcing. */
static int
has_group_limits(const solve_problem *p)
{
	return p->n_group > 0 && (p->group_min != NULL || p->group_max != NULL);
}

/* Check limits per group: floors under the maximum, maximum over minimum. */
static kvx_status
check_groups(const solve_problem *p, const int64_t *floor_cost,
    solve_result *res, int64_t *need)
{
	int64_t *lo = NULL, *top = NULL;
	char b1[32], b2[32];
	kvx_status st = KVX_OK;
	int g, i, j, L = p->n_level;

	*need = 0;
	lo = kvx__calloc((size_t)p->n_group, sizeof *lo);
	top = kvx__calloc((size_t)p->n_group, sizeof *top);
	if (lo == NULL || top == NULL) {
		st = solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "out of memory checking groups");
		goto out;
	}
	for (i = 0; i < p->n_item; i++) {
		int64_t hi = 0;

		if ((g = p->group[i]) < 0)
			continue;
		for (j = L - 1; j >= 0; j--)
			if (solve__usable(p, i, j)) {
				hi = p->cost[(size_t)i * L + j];
				break;
			}
		if (add64(&lo[g], floor_cost[i]) || add64(&top[g], hi)) {
			st = solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "group %d: summed cost overflows", g);
			goto out;
		}
	}
	for (g = 0; g < p->n_group; g++) {
		int64_t gmin = p->group_min ? p->group_min[g] : 0;
		int64_t gmax = p->group_max ? p->group_max[g] : SOLVE_NO_LIMIT;

		if (gmin > gmax) {
			st = solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
			    "group %d: minimum %s is above its maximum %s", g,
			    solve__bytes(gmin, b1, sizeof b1),
			    solve__bytes(gmax, b2, sizeof b2));
			goto out;
		}
		if (lo[g] > gmax) {
			st = solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
			    "group %d: maximum %s is below its floors' "
			    "minimum %s", g, solve__bytes(gmax, b1, sizeof b1),
			    solve__bytes(lo[g], b2, sizeof b2));
			goto out;
		}
		if (top[g] < gmin) {
			st = solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
			    "group %d: minimum %s is above the most its levels "
			    "can cost, %s", g, solve__bytes(gmin, b1, sizeof b1),
			    solve__bytes(top[g], b2, sizeof b2));
			goto out;
		}
		*need += gmin > lo[g] ? gmin : lo[g];
	}
	for (i = 0; i < p->n_item; i++)
		if (p->group[i] < 0)
			*need += floor_cost[i];
out:
	free(lo);
	free(top);
	return st;
}

/* Check every shard's floors fit under the shard capacity. */
static kvx_status
check_shards(const solve_problem *p, const int64_t *floor_cost,
    solve_result *res)
{
	int64_t *sum;
	char b1[32], b2[32];
	kvx_status st = KVX_OK;
	int i, s;

	if ((sum = kvx__calloc((size_t)p->n_shard, sizeof *sum)) == NULL)
		return solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "out of memory checking shards");
	for (i = 0; i < p->n_item; i++)
		sum[p->shard[i]] += floor_cost[i];
	for (s = 0; s < p->n_shard; s++)
		if (sum[s] > p->shard_cap) {
			st = solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
			    "shard %d: floors' minimum %s exceeds the shard "
			    "capacity %s", s, solve__bytes(sum[s], b1, sizeof b1),
			    solve__bytes(p->shard_cap, b2, sizeof b2));
			break;
		}
	free(sum);
	return st;
}

/* Check the problem's shape and its plainly infeasible cases. */
kvx_status
solve_check(const solve_problem *p, solve_result *res)
{
	int64_t *floor_cost = NULL, total = 0, need;
	char b1[32], b2[32];
	kvx_status st;
	int i, j;

	if (res != NULL)
		memset(res, 0, sizeof *res);
	if (p == NULL || p->n_item < 1 || p->n_level < 1 ||
	    p->value == NULL || p->cost == NULL)
		return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
		    "empty problem: no items or no levels");
	if (p->budget < 0)
		return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
		    "negative budget %lld", (long long)p->budget);
	if (p->frac != NULL)
		for (j = 1; j < p->n_level; j++)
			if (!(p->frac[j] > p->frac[j - 1]))
				return solve__fail(res, KVX_ERR_ARG,
				    SOLVE_UNKNOWN, "level fractions must "
				    "increase (level %d: %g after %g)", j,
				    p->frac[j], p->frac[j - 1]);
	if (p->n_group < 0 || (p->n_group > 0 && p->group == NULL))
		return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
		    "groups given without the item-to-group map");
	if (p->n_shard < 0 || (p->n_shard > 0 && p->shard == NULL))
		return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
		    "shards given without the item-to-shard map");
	for (i = 0; i < p->n_item; i++) {
		if (p->n_group > 0 &&
		    (p->group[i] < -1 || p->group[i] >= p->n_group))
			return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "item %d: group %d out of range", i, p->group[i]);
		if (p->n_shard > 0 &&
		    (p->shard[i] < 0 || p->shard[i] >= p->n_shard))
			return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "item %d: shard %d out of range", i, p->shard[i]);
		if ((st = check_curve(p, i, res)) != KVX_OK)
			return st;
		if (p->value2 != NULL &&
		    (st = check_curve2(p, i, res)) != KVX_OK)
			return st;
	}
	if ((floor_cost = kvx__malloc_array((size_t)p->n_item,
	    sizeof *floor_cost)) == NULL)
		return solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "out of memory checking the problem");
	for (i = 0; i < p->n_item; i++) {
		if ((j = solve__floor_level(p, i)) < 0) {
			st = solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
			    "item %d has no allowed level within its floor "
			    "%d and maximum %d", i, p->lo ? p->lo[i] : 0,
			    p->hi ? p->hi[i] : p->n_level - 1);
			goto out;
		}
		floor_cost[i] = p->cost[(size_t)i * p->n_level + j];
		if (add64(&total, floor_cost[i])) {
			st = solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "summed cost overflows");
			goto out;
		}
	}
	if (total > p->budget) {
		st = solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
		    "budget %s is below the floors' minimum %s",
		    solve__bytes(p->budget, b1, sizeof b1),
		    solve__bytes(total, b2, sizeof b2));
		goto out;
	}
	if (has_group_limits(p)) {
		if ((st = check_groups(p, floor_cost, res, &need)) != KVX_OK)
			goto out;
		if (need > p->budget) {
			st = solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
			    "budget %s is below %s, the least that the floors "
			    "and group minimums need",
			    solve__bytes(p->budget, b1, sizeof b1),
			    solve__bytes(need, b2, sizeof b2));
			goto out;
		}
	}
	if (p->n_shard > 0 &&
	    (st = check_shards(p, floor_cost, res)) != KVX_OK)
		goto out;
	if (p->value2 != NULL) {
		double top = 0;

		if (!isfinite(p->floor2)) {
			st = solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
			    "the floor is not finite");
			goto out;
		}
		for (i = 0; i < p->n_item; i++) {
			double best = -INFINITY;

			for (j = 0; j < p->n_level; j++)
				if (solve__usable(p, i, j) &&
				    p->value2[(size_t)i * p->n_level + j] > best)
					best = p->value2[(size_t)i *
					    p->n_level + j];
			top += best;
		}
		if (top < p->floor2 - 1e-12 * (1 + fabs(p->floor2))) {
			st = solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
			    "the floor %.6g is above %.6g, the most the second "
			    "objective reaches with every item at its top",
			    p->floor2, top);
			goto out;
		}
	}
	if (res != NULL) {
		res->concave = solve_concave(p);
		res->equal_steps = solve_equal_steps(p);
	}
	st = KVX_OK;
out:
	free(floor_cost);
	return st;
}

/* Objective and cost of an assignment; 0 if it meets every constraint. */
int
solve_eval(const solve_problem *p, const int *level, double *objective,
    int64_t *cost)
{
	int64_t total = 0, *gsum = NULL, *ssum = NULL;
	double obj = 0, obj2 = 0;
	int bad = 0, i, g, s, L = p->n_level;

	if (p->n_group > 0)
		gsum = calloc((size_t)p->n_group, sizeof *gsum);
	if (p->n_shard > 0)
		ssum = calloc((size_t)p->n_shard, sizeof *ssum);
	if ((p->n_group > 0 && gsum == NULL) ||
	    (p->n_shard > 0 && ssum == NULL))
		bad = 1;
	for (i = 0; i < p->n_item; i++) {
		int j = level[i];
		int64_t c;

		if (j < 0 || j >= L) {
			bad = 1;
			continue;
		}
		if (!solve__usable(p, i, j))
			bad = 1;
		c = p->cost[(size_t)i * L + j];
		obj += p->value[(size_t)i * L + j];
		if (p->value2 != NULL)
			obj2 += p->value2[(size_t)i * L + j];
		total += c;
		if (gsum != NULL && p->group[i] >= 0)
			gsum[p->group[i]] += c;
		if (ssum != NULL)
			ssum[p->shard[i]] += c;
	}
	if (total > p->budget)
		bad = 1;
	/* the floor with a relative tolerance: sums of doubles in another
	 * order differ in their last bits */
	if (p->value2 != NULL && obj2 < p->floor2 - 1e-12 * (1 +
	    fabs(p->floor2)))
		bad = 1;
	if (gsum != NULL)
		for (g = 0; g < p->n_group; g++) {
			if (p->group_min != NULL && gsum[g] < p->group_min[g])
				bad = 1;
			if (p->group_max != NULL && gsum[g] > p->group_max[g])
				bad = 1;
		}
	if (ssum != NULL)
		for (s = 0; s < p->n_shard; s++)
			if (ssum[s] > p->shard_cap)
				bad = 1;
	free(gsum);
	free(ssum);
	if (objective != NULL)
		*objective = obj;
	if (cost != NULL)
		*cost = total;
	return bad ? -1 : 0;
}

/*
 * Whether every curve is concave in cost over its usable levels: the
 * value gained per byte must not grow from one step to the next.  Values
 * and costs are scaled to the item's range first so that the 1e-12
 * tolerance means the same for every item.
 */
int
solve_concave(const solve_problem *p)
{
	int i, j, L = p->n_level;

	for (i = 0; i < p->n_item; i++) {
		const double *v = p->value + (size_t)i * L;
		const int64_t *c = p->cost + (size_t)i * L;
		double vr, cr, prev = INFINITY, r;
		int a = -1, b = -1;

		for (j = 0; j < L; j++)
			if (solve__usable(p, i, j)) {
				if (a < 0)
					a = j;
				b = j;
			}
		if (a < 0 || a == b)
			continue;
		vr = v[b] - v[a];
		cr = (double)(c[b] - c[a]);
		if (vr <= 0)
			continue;
		for (j = a + 1; j <= b; j++) {
			double dv, dc;

			if (!solve__usable(p, i, j))
				continue;
			dv = (v[j] - v[a]) / vr;
			dc = (double)(c[j] - c[a]);
			if (dc == 0) {
				if (dv <= 0)
					continue;
				r = INFINITY;
			} else
				r = dv / (dc / cr);
			if (r > prev + 1e-12)
				return 0;
			prev = r;
			a = j;
		}
	}
	return 1;
}

/* Whether all usable steps of all items cost the same (and not zero). */
int
solve_equal_steps(const solve_problem *p)
{
	int64_t step = -1;
	int i, j, L = p->n_level;

	for (i = 0; i < p->n_item; i++) {
		int prev = -1;

		for (j = 0; j < L; j++) {
			int64_t d;

			if (!solve__usable(p, i, j))
				continue;
			if (prev >= 0) {
				d = p->cost[(size_t)i * L + j] -
				    p->cost[(size_t)i * L + prev];
				if (d <= 0 || (step >= 0 && d != step))
					return 0;
				step = d;
			}
			prev = j;
		}
	}
	return 1;
}

/* Solve with the named solver. */
kvx_status
solve_run(const char *solver, const solve_problem *p,
    const solve_params *params, solve_result *res)
{
	if (solver == NULL || strcmp(solver, "dp") == 0)
		return solve_dp(p, params, res);
	if (strcmp(solver, "greedy") == 0)
		return solve_greedy(p, params, res);
	if (strcmp(solver, "glpk") == 0)
		return solve_glpk(p, params, res);
	memset(res, 0, sizeof *res);
	return solve__fail(res, KVX_ERR_ARG, SOLVE_UNKNOWN,
	    "unknown solver '%s' (greedy, dp or glpk)", solver);
}

/* gcd of two non-negative numbers (cost units of dp and glpk). */
int64_t
solve__gcd64(int64_t a, int64_t b)
{
	while (b != 0) {
		int64_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}
