/*
 * solve_glpk.c - allocation as a mixed-integer program, solved by GLPK.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * One binary x[i][j] per usable (item, level); each item picks exactly
 * one.  A floor on a second objective is one row more.  Costs enter the rows as excess over the item's floor level, in
 * units of their gcd, which keeps the coefficients small and the budget,
 * group and shard rows well scaled.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAVE_GLPK
#include <glpk.h>
#endif

#include "solve.h"

#ifdef HAVE_GLPK

typedef struct mip {
	const solve_problem	*p;
	glp_prob	*lp;
	int64_t		 q;		/* bytes per unit */
	int64_t		 fsum;		/* floors' cost */
	int64_t		*floor_cost;	/* [N] */
	int		*col_item;	/* [n_col + 1] */
	int		*col_level;	/* [n_col + 1] */
	int		 n_col;
	double		 gap;		/* last gap GLPK reported */
	const int	*start;		/* an assignment to offer, or NULL */
	int		 ia_n;
	int		*ia, *ja;
	double		*ar;
} mip;

/* Follow the search to know the gap when it stops early. */
static void
mip_callback(glp_tree *tree, void *info)
{
	mip *m = info;
	double g;

	switch (glp_ios_reason(tree)) {
	case GLP_IHEUR:
		/* the caller's assignment as a first incumbent: with a floor
		 * GLPK may find none of its own within the time limit */
		if (m->start != NULL) {
			int n = glp_get_num_cols(m->lp), c;
			double *x = kvx__calloc((size_t)n + 1, sizeof *x);

			if (x != NULL) {
				for (c = 1; c <= n; c++)
					x[c] = m->start[m->col_item[c]] ==
					    m->col_level[c];
				glp_ios_heur_sol(tree, x);
				free(x);
			}
			m->start = NULL;
		}
		break;
	case GLP_IBINGO:
	case GLP_ISELECT:
		g = glp_ios_mip_gap(tree);
		if (g < m->gap)
			m->gap = g;
		break;
	default:
		break;
	}
}

/* Append a coefficient to the constraint matrix. */
static void
put(mip *m, int row, int col, double val)
{
	m->ia_n++;
	m->ia[m->ia_n] = row;
	m->ja[m->ia_n] = col;
	m->ar[m->ia_n] = val;
}

/* Set a row's bounds from optional lower and upper limits. */
static void
row_bounds(glp_prob *lp, int row, int has_lo, double lo, int has_hi,
    double hi)
{
	if (has_lo && has_hi)
		glp_set_row_bnds(lp, row, lo == hi ? GLP_FX : GLP_DB, lo, hi);
	else if (has_lo)
		glp_set_row_bnds(lp, row, GLP_LO, lo, 0);
	else if (has_hi)
		glp_set_row_bnds(lp, row, GLP_UP, 0, hi);
	else
		glp_set_row_bnds(lp, row, GLP_FR, 0, 0);
}

/* Build the MIP: columns, objective, and every constraint row. */
static kvx_status
build(mip *m, solve_result *res)
{
	const solve_problem *p = m->p;
	int grouped = p->n_group > 0 &&
	    (p->group_min != NULL || p->group_max != NULL);
	int n_row, r_budget, r_group, r_shard, r_floor, i, j, c, g;
	int L = p->n_level;
	int64_t fsum = 0, gq = 0, *gfloor = NULL, *sfloor = NULL;
	size_t nnz;

	for (i = 0; i < p->n_item; i++) {
		int fl = solve__floor_level(p, i);

		m->floor_cost[i] = p->cost[(size_t)i * L + fl];
		fsum += m->floor_cost[i];
		for (j = fl; j < L; j++)
			if (solve__usable(p, i, j)) {
				gq = solve__gcd64(gq, p->cost[(size_t)i * L +
				    j] - m->floor_cost[i]);
				m->n_col++;
			}
	}
	m->q = gq > 0 ? gq : 1;
	m->fsum = fsum;
	r_budget = p->n_item + 1;
	r_group = r_budget + 1;
	r_shard = r_group + (grouped ? p->n_group : 0);
	r_floor = r_shard + p->n_shard;
	n_row = r_floor - 1 + (p->value2 != NULL);
	nnz = (size_t)m->n_col * (2 + (grouped ? 1 : 0) +
	    (p->n_shard > 0 ? 1 : 0) + (p->value2 != NULL));
	m->col_item = kvx__malloc_array((size_t)m->n_col + 1, sizeof(int));
	m->col_level = kvx__malloc_array((size_t)m->n_col + 1, sizeof(int));
	m->ia = kvx__malloc_array(nnz + 1, sizeof(int));
	m->ja = kvx__malloc_array(nnz + 1, sizeof(int));
	m->ar = kvx__malloc_array(nnz + 1, sizeof(double));
	gfloor = kvx__calloc((size_t)p->n_group + 1, sizeof *gfloor);
	sfloor = kvx__calloc((size_t)p->n_shard + 1, sizeof *sfloor);
	if (m->col_item == NULL || m->col_level == NULL || m->ia == NULL ||
	    m->ja == NULL || m->ar == NULL || gfloor == NULL ||
	    sfloor == NULL) {
		free(gfloor);
		free(sfloor);
		return solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "glpk: out of memory building the model");
	}

	glp_set_obj_dir(m->lp, GLP_MAX);
	glp_add_rows(m->lp, n_row);
	glp_add_cols(m->lp, m->n_col);
	c = 0;
	for (i = 0; i < p->n_item; i++) {
		if (grouped && p->group[i] >= 0)
			gfloor[p->group[i]] += m->floor_cost[i];
		if (p->n_shard > 0)
			sfloor[p->shard[i]] += m->floor_cost[i];
		glp_set_row_bnds(m->lp, i + 1, GLP_FX, 1, 1);
		for (j = 0; j < L; j++) {
			size_t k = (size_t)i * L + j;
			double e;

			if (!solve__usable(p, i, j))
				continue;
			c++;
			m->col_item[c] = i;
			m->col_level[c] = j;
			glp_set_col_kind(m->lp, c, GLP_BV);
			glp_set_obj_coef(m->lp, c, p->value[k]);
			e = (double)((p->cost[k] - m->floor_cost[i]) / m->q);
			put(m, i + 1, c, 1);
			put(m, r_budget, c, e);
			if (grouped && p->group[i] >= 0)
				put(m, r_group + p->group[i], c, e);
			if (p->n_shard > 0)
				put(m, r_shard + p->shard[i], c, e);
			if (p->value2 != NULL)
				put(m, r_floor, c, p->value2[k]);
		}
	}
	if (p->value2 != NULL)
		glp_set_row_bnds(m->lp, r_floor, GLP_LO, p->floor2, 0);
	/* Excess limits: (limit - floors) / q, rounded inward. */
	glp_set_row_bnds(m->lp, r_budget, GLP_UP, 0,
	    floor((double)(p->budget - fsum) / (double)m->q));
	for (g = 0; grouped && g < p->n_group; g++) {
		int64_t gmin = p->group_min ? p->group_min[g] : 0;
		int64_t gmax = p->group_max ? p->group_max[g] : SOLVE_NO_LIMIT;
		double lo = ceil((double)(gmin - gfloor[g]) / (double)m->q);
		double hi = floor((double)(gmax - gfloor[g]) / (double)m->q);
		char b1[32], b2[32];

		/* Group costs move in steps of q: a window between two
		 * steps holds none of them. */
		if (gmin > gfloor[g] && gmax != SOLVE_NO_LIMIT && lo > hi) {
			free(gfloor);
			free(sfloor);
			return solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
			    "group %d: no choice of its items' levels costs "
			    "between %s and %s", g,
			    solve__bytes(gmin, b1, sizeof b1),
			    solve__bytes(gmax, b2, sizeof b2));
		}
		row_bounds(m->lp, r_group + g, gmin > gfloor[g], lo,
		    gmax != SOLVE_NO_LIMIT, hi);
	}
	for (g = 0; g < p->n_shard; g++)
		glp_set_row_bnds(m->lp, r_shard + g, GLP_UP, 0,
		    floor((double)(p->shard_cap - sfloor[g]) / (double)m->q));
	glp_load_matrix(m->lp, m->ia_n, m->ia, m->ja, m->ar);
	free(gfloor);
	free(sfloor);
	return KVX_OK;
}

/* Solve the MIP and map GLPK's outcome onto a result. */
static kvx_status
run(mip *m, const solve_params *params, solve_result *res, double t0)
{
	const solve_problem *p = m->p;
	glp_iocp parm;
	char b1[32];
	int rc, ms, c, *level;
	solve_status st;

	glp_init_iocp(&parm);
	parm.presolve = GLP_ON;
	parm.msg_lev = params->verbose ? GLP_MSG_ON : GLP_MSG_OFF;
	parm.tm_lim = params->time_limit > 0 ?
	    (int)fmin(params->time_limit * 1000, 2e9) : 0x7fffffff;
	parm.mip_gap = params->mip_gap;
	/* Excess costs can be large integers: 1e-5 of one would let a
	 * nearly-1 binary tip the budget row over once rounded. */
	parm.tol_int = 1e-9;
	parm.cb_func = mip_callback;
	parm.cb_info = m;
	m->gap = INFINITY;
	rc = glp_intopt(m->lp, &parm);
	ms = glp_mip_status(m->lp);
	switch (rc) {
	case 0:
	case GLP_ETMLIM:
	case GLP_EMIPGAP:
	case GLP_ESTOP:
		break;
	case GLP_ENOPFS:
		return solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
		    "no assignment meets the budget %s, group and shard "
		    "limits together (not even fractionally)",
		    solve__bytes(p->budget, b1, sizeof b1));
	default:
		return solve__fail(res, KVX_ERR_PLAN, SOLVE_UNKNOWN,
		    "glpk: glp_intopt failed with code %d", rc);
	}
	if (ms == GLP_NOFEAS)
		return solve__fail(res, KVX_ERR_PLAN, SOLVE_INFEASIBLE,
		    "no assignment meets the budget %s, group and shard "
		    "limits together", solve__bytes(p->budget, b1, sizeof b1));
	if (ms != GLP_OPT && ms != GLP_FEAS)
		return solve__fail(res, KVX_ERR_PLAN, SOLVE_UNKNOWN,
		    "glpk found no assignment within the time limit of %g s",
		    params->time_limit);
	if ((level = kvx__malloc_array((size_t)p->n_item,
	    sizeof *level)) == NULL)
		return solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "glpk: out of memory");
	for (c = 0; c < p->n_item; c++)
		level[c] = -1;
	for (c = 1; c <= m->n_col; c++)
		if (glp_mip_col_val(m->lp, c) > 0.5)
			level[m->col_item[c]] = m->col_level[c];
	res->level = level;
	if (solve_eval(p, level, NULL, NULL) != 0)
		return solve__fail(res, KVX_ERR_PLAN, SOLVE_UNKNOWN,
		    "glpk: its answer breaks a constraint once rounded to "
		    "whole levels (the budget spans %.0f units of %lld bytes, "
		    "too many for its tolerances); use --solver dp",
		    floor((double)(p->budget - m->fsum) / (double)m->q),
		    (long long)m->q);
	st = ms == GLP_OPT && rc == 0 ? SOLVE_OPTIMAL : SOLVE_FEASIBLE;
	if (solve__finish(p, res, level, st, t0) != KVX_OK)
		return KVX_ERR_PLAN;
	if (st == SOLVE_FEASIBLE) {
		res->gap = isfinite(m->gap) ? m->gap : 0;
		snprintf(res->reason, sizeof res->reason, "glpk stopped (%s) "
		    "with relative gap %.3g", rc == GLP_ETMLIM ?
		    "time limit" : rc == GLP_EMIPGAP ? "gap tolerance" :
		    "interrupted", res->gap);
	}
	return KVX_OK;
}

/* MIP solve; see solve.h. */
kvx_status
solve_glpk(const solve_problem *p, const solve_params *params,
    solve_result *res)
{
	double t0 = kvx__now();
	solve_params def;
	kvx_status st;
	int term;
	mip m;

	if ((st = solve_check(p, res)) != KVX_OK)
		return st;
	if (params == NULL) {
		solve_params_init(&def);
		params = &def;
	}
	memset(&m, 0, sizeof m);
	m.p = p;
	if (params->start != NULL && solve_eval(p, params->start, NULL,
	    NULL) == 0)
		m.start = params->start;
	if ((m.floor_cost = kvx__calloc((size_t)p->n_item,
	    sizeof *m.floor_cost)) == NULL)
		return solve__fail(res, KVX_ERR_NOMEM, SOLVE_UNKNOWN,
		    "glpk: out of memory");
	term = glp_term_out(params->verbose ? GLP_ON : GLP_OFF);
	m.lp = glp_create_prob();
	if ((st = build(&m, res)) == KVX_OK)
		st = run(&m, params, res, t0);
	glp_delete_prob(m.lp);
	glp_term_out(term);
	free(m.floor_cost);
	free(m.col_item);
	free(m.col_level);
	free(m.ia);
	free(m.ja);
	free(m.ar);
	res->seconds = kvx__now() - t0;
	return st;
}

#else

/* MIP solve; this build has no GLPK. */
kvx_status
solve_glpk(const solve_problem *p, const solve_params *params,
    solve_result *res)
{
	memset(res, 0, sizeof *res);
	return solve__fail(res, KVX_ERR_UNSUPPORTED, SOLVE_UNKNOWN,
	    "kvx-plan was built without GLPK (configure --with-glpk)");
}

#endif
