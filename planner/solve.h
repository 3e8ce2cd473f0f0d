/*
 * solve.h - budget allocation solvers of kvx-plan.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * The problem.  There are N items (one per (layer, KV head) at granularity
 * "layer-head", one per layer at granularity "layer", where all heads of
 * the layer share one level; the caller builds the items).  Every item has
 * the same grid of L levels; level j stands for the budget fraction
 * frac[j] (increasing, frac[0] may be 0).  Choosing level j for item i is
 * worth value[i*L+j] (the caller's w_i * R_i(frac[j]), non-decreasing in j)
 * and costs cost[i*L+j] bytes (non-decreasing in j; items may differ in
 * scale, e.g. a layer item costs n_head_kv times a head item).
 *
 * Choose exactly one level x_i per item to maximise sum_i value[i][x_i]
 * subject to
 *   sum_i cost[i][x_i] <= budget;
 *   lo[i] <= x_i <= hi[i]                          (floors and maxima);
 *   allowed[i*L+x_i] != 0                          (page-sized steps: the
 *                                                   caller clears levels
 *                                                   whose token count is not
 *                                                   a multiple of the page);
 *   group_min[g] <= sum_{i: group[i]=g} cost[i][x_i] <= group_max[g]
 *                                                  (per-layer limits);
 *   sum_{i: shard[i]=s} cost[i][x_i] <= shard_cap  (tensor-parallel shards);
 *   sum_i value2[i][x_i] >= floor2                 (a second objective's
 *                                                   floor: retrieval; its
 *                                                   values non-decreasing
 *                                                   in j like value's).
 * A level is usable when it is allowed and within [lo, hi]; the lowest
 * usable level of an item is its floor level, and since costs do not
 * decrease it is also its cheapest.
 *
 * Solvers.
 *   greedy  Starts every item at its floor level and repeatedly takes the
 *           upgrade (to the item's next usable level) with the best value
 *           gained per byte, while it fits.  Exact when every item's curve
 *           is concave in cost over its usable levels and all steps cost
 *           the same; it reports both facts.  Budget, floors, maxima and
 *           masks only: groups and shards are refused (KVX_ERR_UNSUPPORTED).
 *   dp      Multiple-choice knapsack over cost units (the gcd of the cost
 *           steps, or params->quantum).  Exact on the grid for any curves.
 *           Supports groups (a DP inside each group, then across groups);
 *           shards are refused.  With a floor it hands over to
 *           solve_floor.
 *   floor   The floor as a second knapsack dimension (solve_floor.c):
 *           a DP over (cost units, units of the second objective's
 *           deficit below its best).  The deficit is counted in steps of
 *           params->floor_quantum (default: the allowed deficit split in
 *           params->floor_bins = 256 steps), rounded to the nearest step,
 *           and the cost units are coarsened (rounded up) until a row has
 *           at most params->floor_cells = 2^18 cells.  Of the DP's answers
 *           for the allowed deficit and below, the first that meets the
 *           true floor is returned; it is OPTIMAL only when neither
 *           rounding changed anything, else FEASIBLE.  Exact on problems
 *           whose deficits lie on the step grid and whose costs fit.
 *           Groups and shards are refused.
 *   glpk    A MIP with one binary per usable (item, level), solved by
 *           glp_intopt.  Supports every constraint.  Without GLPK built in
 *           it fails with KVX_ERR_UNSUPPORTED.  A floor is one more row.
 *   Greedy refuses a floor.
 *
 * Return values.  KVX_OK when an assignment was found (status OPTIMAL or
 * FEASIBLE).  KVX_ERR_PLAN when the problem has no feasible assignment
 * (status INFEASIBLE, reason says why) or none was found in time (status
 * UNKNOWN).  KVX_ERR_ARG for a malformed problem, KVX_ERR_UNSUPPORTED for a
 * constraint the solver cannot honour, KVX_ERR_NOMEM.  On every failure
 * kvx_errmsg() holds the same one-line message as res->reason.
 */
#ifndef KVX_SOLVE_H
#define KVX_SOLVE_H

#include <stdint.h>

#include "kvx.h"
#include "util.h"

/* group_max / shard_cap value meaning "no limit". */
#define SOLVE_NO_LIMIT	INT64_MAX

typedef struct solve_problem {
	int		 n_item;
	int		 n_level;
	const double	*frac;		/* [L] increasing; informative only */
	const double	*value;		/* [N*L], row i is item i */
	const int64_t	*cost;		/* [N*L] bytes, >= 0 */
	int64_t		 budget;	/* bytes */
	const int	*lo;		/* [N] or NULL (0) */
	const int	*hi;		/* [N] or NULL (L-1) */
	const uint8_t	*allowed;	/* [N*L] or NULL (all allowed) */

	int		 n_group;	/* 0: no group limits */
	const int	*group;		/* [N] in 0..n_group-1, or -1: none */
	const int64_t	*group_min;	/* [n_group] or NULL; 0: none */
	const int64_t	*group_max;	/* [n_group] or NULL; SOLVE_NO_LIMIT */

	int		 n_shard;	/* 0: no shard limits */
	const int	*shard;		/* [N] in 0..n_shard-1 */
	int64_t		 shard_cap;	/* bytes per shard */

	const double	*value2;	/* [N*L] or NULL: no second objective */
	double		 floor2;	/* its floor, when value2 is set */
} solve_problem;

typedef struct solve_params {
	int		 verbose;	/* solver chatter on stderr */
	double		 time_limit;	/* glpk: seconds (5); <= 0: none */
	double		 mip_gap;	/* glpk: relative gap to stop at (1e-6) */
	int64_t		 quantum;	/* dp: bytes per cost unit; 0: gcd */
	int64_t		 dp_max_cells;	/* dp: table cap, doubles (1 << 25) */
	int		 floor_bins;	/* floor: deficit steps (256) */
	double		 floor_quantum;	/* floor: deficit step; 0: from bins */
	int64_t		 floor_cells;	/* floor: cells per row (1 << 18) */
	const int	*start;		/* glpk: a feasible assignment [N] to
					   start from, or NULL */
} solve_params;

typedef enum solve_status {
	SOLVE_OPTIMAL,		/* proven optimal on the grid */
	SOLVE_FEASIBLE,		/* feasible; optimality not proven (gap) */
	SOLVE_INFEASIBLE,	/* no assignment satisfies the constraints */
	SOLVE_UNKNOWN		/* no assignment found, none proven absent */
} solve_status;

typedef struct solve_result {
	solve_status	 status;
	int		*level;		/* [N], owned; NULL unless an answer */
	double		 objective;	/* sum of chosen values */
	int64_t		 cost;		/* sum of chosen costs, bytes */
	double		 gap;		/* relative gap when FEASIBLE, else 0 */
	int		 concave;	/* every curve concave in cost */
	int		 equal_steps;	/* every usable step costs the same */
	double		 seconds;	/* wall time of the solve */
	char		 reason[256];	/* why infeasible / not optimal */
} solve_result;

/* Fill params with the defaults. */
void		 solve_params_init(solve_params *);
/* Release the result's arrays and clear it. */
void		 solve_result_free(solve_result *);

/*
 * Solve with the named solver ("greedy", "dp" or "glpk"; NULL is dp).
 * res is written whole (free an earlier result first); params may be NULL
 * for the defaults.
 */
kvx_status	 solve_run(const char *solver, const solve_problem *,
		     const solve_params *, solve_result *);
kvx_status	 solve_greedy(const solve_problem *, const solve_params *,
		     solve_result *);
kvx_status	 solve_dp(const solve_problem *, const solve_params *,
		     solve_result *);
kvx_status	 solve_glpk(const solve_problem *, const solve_params *,
		     solve_result *);
kvx_status	 solve_floor(const solve_problem *, const solve_params *,
		     solve_result *);
/* The most sum_i value2[i][x_i] reachable within the budget, by dp (the
 * floor ignored); KVX_OK and *best, or the failure of solve_dp. */
kvx_status	 solve_best2(const solve_problem *, const solve_params *,
		     double *best);

/*
 * Check the problem's shape and the constraints that need no search: each
 * item has a usable level, the floors fit the budget, groups and shards.
 * KVX_ERR_ARG when malformed, KVX_ERR_PLAN (res->status INFEASIBLE, reason
 * set) when provably infeasible; res may be NULL.
 */
kvx_status	 solve_check(const solve_problem *, solve_result *res);
/* Objective and cost of an assignment; 0 if it meets every constraint. */
int		 solve_eval(const solve_problem *, const int *level,
		     double *objective, int64_t *cost);
/* Whether every curve is concave in cost over its usable levels. */
int		 solve_concave(const solve_problem *);
/* Whether all usable steps of all items cost the same. */
int		 solve_equal_steps(const solve_problem *);

/* Private to the solver sources. */
int64_t		 solve__gcd64(int64_t, int64_t);
int		 solve__usable(const solve_problem *, int i, int j);
int		 solve__floor_level(const solve_problem *, int i);
kvx_status	 solve__finish(const solve_problem *, solve_result *,
		     const int *level, solve_status, double t0);
const char	*solve__bytes(int64_t, char *buf, int size);
kvx_status	 solve__fail(solve_result *, kvx_status, solve_status,
		     const char *fmt, ...) KVX_PRINTF(4, 5);

#endif
