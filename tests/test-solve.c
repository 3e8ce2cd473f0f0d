/*
 * test-solve.c - the allocation solvers against brute force.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Hundreds of small random instances (2..5 items, 2..5 levels; concave and
 * non-concave curves, integer costs, masks, floors, groups, shards, budgets
 * from infeasible to slack) are solved by enumerating every assignment,
 * and by dp, glpk and greedy; the results must agree.  A 90-item,
 * 256-level instance shaped like SmolLM2 checks the three solvers agree at
 * full size.  Set KVX_SEED to vary the instances.
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
#include "tap.h"

#define MAXN	5
#define MAXL	5

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

/* xorshift64*: a reproducible stream independent of libc. */
static uint64_t
rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

/* Uniform integer in [a, b]. */
static int64_t
rint_in(int64_t a, int64_t b)
{
	return a + (int64_t)(rnd() % (uint64_t)(b - a + 1));
}

/* Uniform double in [0, 1). */
static double
runif(void)
{
	return (double)(rnd() >> 11) / 9007199254740992.0;
}

typedef struct inst {
	int		 n, L;
	double		 frac[MAXL];
	double		 value[MAXN * MAXL];
	int64_t		 cost[MAXN * MAXL];
	int		 lo[MAXN], hi[MAXN];
	uint8_t		 allowed[MAXN * MAXL];
	int		 group[MAXN];
	int64_t		 gmin[MAXN], gmax[MAXN];
	int		 shard[MAXN];
	int		 concave, equal;	/* as generated */
	int		 use_lohi, use_mask;
	solve_problem	 p;
} inst;

static int64_t floors(const solve_problem *);

/* Fill a random small instance. */
static void
gen(inst *t, int k)
{
	solve_problem *p = &t->p;
	int64_t step = rint_in(1, 4), maxsum = 0;
	int i, j;

	memset(t, 0, sizeof *t);
	t->n = (int)rint_in(2, MAXN);
	t->L = (int)rint_in(2, MAXL);
	t->concave = k % 2 == 0;
	t->equal = k % 4 == 0;
	t->use_lohi = rnd() % 3 == 0;
	t->use_mask = rnd() % 3 == 0;
	for (j = 0; j < t->L; j++)
		t->frac[j] = (double)(j + 1) / t->L;
	for (i = 0; i < t->n; i++) {
		double w = 0.25 + runif(), r[MAXL], v;
		int64_t scale = t->equal ? 1 : rint_in(1, 3);
		int64_t *c = t->cost + i * t->L;

		/* Per-step ratios, sorted non-increasing for concave. */
		for (j = 0; j < t->L; j++)
			r[j] = runif();
		if (t->concave) {
			int a, b;

			for (a = 0; a < t->L; a++)
				for (b = a + 1; b < t->L; b++)
					if (r[b] > r[a]) {
						double x = r[a];

						r[a] = r[b];
						r[b] = x;
					}
		}
		c[0] = t->equal ? step : rint_in(0, 3) * scale;
		v = w * runif();
		t->value[i * t->L] = v;
		for (j = 1; j < t->L; j++) {
			int64_t dc = t->equal ? step : rint_in(0, 3) * scale;
			double dv;

			c[j] = c[j - 1] + dc;
			if (t->concave)
				dv = dc == 0 ? 0 : w * r[j] * (double)dc;
			else
				dv = rnd() % 4 == 0 ? 0 : w * runif() * 2;
			v += dv;
			t->value[i * t->L + j] = v;
		}
		t->lo[i] = (int)rint_in(0, t->L - 1);
		t->hi[i] = (int)rint_in(t->lo[i], t->L - 1);
		if (rnd() % 10 == 0)
			t->hi[i] = t->lo[i] - 1 < 0 ? 0 : t->lo[i] - 1;
		for (j = 0; j < t->L; j++)
			t->allowed[i * t->L + j] = rnd() % 4 != 0;
		maxsum += c[t->L - 1];
	}
	p->n_item = t->n;
	p->n_level = t->L;
	p->frac = t->frac;
	p->value = t->value;
	p->cost = t->cost;
	p->budget = rint_in(0, maxsum + maxsum / 8 + 1);
	if (t->use_lohi) {
		p->lo = t->lo;
		p->hi = t->hi;
	}
	if (t->use_mask)
		p->allowed = t->allowed;
	/* Mostly budgets the floors fit, so that most instances solve. */
	if (rnd() % 4 != 0 && floors(p) >= 0)
		p->budget = rint_in(floors(p), maxsum);
	if (rnd() % 3 == 0) {
		int g;

		p->n_group = (int)rint_in(1, 3);
		for (i = 0; i < t->n; i++)
			t->group[i] = (int)rint_in(-1, p->n_group - 1);
		for (g = 0; g < p->n_group; g++) {
			t->gmin[g] = rnd() % 2 ? rint_in(0, maxsum / 2) : 0;
			t->gmax[g] = rnd() % 2 ? rint_in(0, maxsum) :
			    SOLVE_NO_LIMIT;
		}
		p->group = t->group;
		p->group_min = t->gmin;
		p->group_max = t->gmax;
	}
	if (rnd() % 4 == 0) {
		p->n_shard = (int)rint_in(1, 3);
		for (i = 0; i < t->n; i++)
			t->shard[i] = (int)rint_in(0, p->n_shard - 1);
		p->shard = t->shard;
		p->shard_cap = rint_in(0, maxsum / 2 + 1);
	}
}

/* Whether level j of item i may be chosen, by the problem's definition. */
static int
usable(const solve_problem *p, int i, int j)
{
	return (p->lo == NULL || j >= p->lo[i]) &&
	    (p->hi == NULL || j <= p->hi[i]) &&
	    (p->allowed == NULL || p->allowed[i * p->n_level + j]);
}

/* Independent feasibility check and objective of an assignment. */
static int
feasible(const solve_problem *p, const int *x, double *obj, int64_t *cost)
{
	int64_t c = 0, gs[MAXN] = { 0 }, ss[MAXN] = { 0 };
	double v = 0;
	int i, ok = 1;

	for (i = 0; i < p->n_item; i++) {
		int64_t ci;

		if (x[i] < 0 || x[i] >= p->n_level)
			return 0;
		if (!usable(p, i, x[i]))
			ok = 0;
		ci = p->cost[i * p->n_level + x[i]];
		v += p->value[i * p->n_level + x[i]];
		c += ci;
		if (p->n_group > 0 && p->group[i] >= 0)
			gs[p->group[i]] += ci;
		if (p->n_shard > 0)
			ss[p->shard[i]] += ci;
	}
	if (c > p->budget)
		ok = 0;
	for (i = 0; i < p->n_group; i++)
		if (gs[i] < p->group_min[i] || gs[i] > p->group_max[i])
			ok = 0;
	for (i = 0; i < p->n_shard; i++)
		if (ss[i] > p->shard_cap)
			ok = 0;
	if (obj != NULL)
		*obj = v;
	if (cost != NULL)
		*cost = c;
	return ok;
}

/* Enumerate every assignment; best objective, or -1 if none feasible. */
static int
brute(const solve_problem *p, double *best)
{
	int x[MAXN] = { 0 }, i, found = 0;
	double v;

	for (;;) {
		if (feasible(p, x, &v, NULL) && (!found || v > *best)) {
			*best = v;
			found = 1;
		}
		for (i = 0; i < p->n_item; i++) {
			if (++x[i] < p->n_level)
				break;
			x[i] = 0;
		}
		if (i == p->n_item)
			break;
	}
	return found ? 0 : -1;
}

/* The sum of floor costs; -1 when an item has no usable level. */
static int64_t
floors(const solve_problem *p)
{
	int64_t s = 0;
	int i, j;

	for (i = 0; i < p->n_item; i++) {
		for (j = 0; j < p->n_level && !usable(p, i, j); j++)
			;
		if (j == p->n_level)
			return -1;
		s += p->cost[i * p->n_level + j];
	}
	return s;
}

typedef struct tally {
	int	run, bad;
	char	first[400];
} tally;

/* Count a failed expectation, keeping the first for the report. */
static void
miss(tally *t, int k, const char *what, const solve_result *r)
{
	if (t->bad++ == 0)
		snprintf(t->first, sizeof t->first, "instance %d: %s (%s)",
		    k, what, r->reason);
}

/*
 * One exact solver's answer against brute force: same feasibility, same
 * objective, and an assignment whose recomputed objective and cost are
 * those reported.
 */
static void
check_exact(tally *t, int k, const solve_problem *p, int found, double best,
    kvx_status st, const solve_result *r)
{
	double v;
	int64_t c, fl = floors(p);

	t->run++;
	if (found < 0) {
		if (st != KVX_ERR_PLAN || r->status != SOLVE_INFEASIBLE)
			miss(t, k, "infeasible instance not reported", r);
		else if (fl >= 0 && fl > p->budget &&
		    strstr(r->reason, "budget") == NULL)
			miss(t, k, "budget infeasibility not named", r);
		else if (r->reason[0] == '\0')
			miss(t, k, "no reason given", r);
		return;
	}
	if (st != KVX_OK || r->status != SOLVE_OPTIMAL || r->level == NULL) {
		miss(t, k, "feasible instance not solved to optimality", r);
		return;
	}
	if (!feasible(p, r->level, &v, &c))
		miss(t, k, "assignment breaks a constraint", r);
	else if (fabs(v - best) > 1e-9)
		miss(t, k, "objective differs from brute force", r);
	else if (fabs(v - r->objective) > 1e-9 || c != r->cost)
		miss(t, k, "reported objective or cost is not the assignment's",
		    r);
}

/* Greedy: never infeasible or violating; exact when it says it is. */
static void
check_greedy(tally *t, tally *tx, int k, const inst *in, int found,
    double best, kvx_status st, const solve_result *r)
{
	const solve_problem *p = &in->p;
	double v;
	int64_t c;

	t->run++;
	if (p->n_shard > 0 || p->n_group > 0) {
		if (st != KVX_ERR_UNSUPPORTED ||
		    strstr(r->reason, "glpk") == NULL)
			miss(t, k, "greedy accepted groups or shards", r);
		return;
	}
	if (found < 0) {
		if (st != KVX_ERR_PLAN || r->status != SOLVE_INFEASIBLE)
			miss(t, k, "greedy: infeasible not reported", r);
		return;
	}
	if (st != KVX_OK || r->level == NULL) {
		miss(t, k, "greedy failed on a feasible instance", r);
		return;
	}
	if (!feasible(p, r->level, &v, &c)) {
		miss(t, k, "greedy assignment breaks a constraint", r);
		return;
	}
	if (fabs(v - r->objective) > 1e-9 || c != r->cost)
		miss(t, k, "greedy reported objective or cost is wrong", r);
	if (v > best + 1e-9)
		miss(t, k, "greedy beats brute force", r);
	/* An unmasked instance generated concave with equal steps. */
	if (in->concave && in->equal && !in->use_lohi && !in->use_mask &&
	    !(r->concave && r->equal_steps))
		miss(t, k, "concave equal-step curves not recognised", r);
	if (r->status == SOLVE_OPTIMAL) {
		tx->run++;
		if (fabs(v - best) > 1e-9)
			miss(tx, k, "greedy claims optimal but is not", r);
	} else if (r->status == SOLVE_FEASIBLE) {
		/* Values are positive: the bound is v / (1 - gap). */
		if (best > v / (1 - r->gap) + 1e-9)
			miss(t, k, "greedy gap is not a bound", r);
		if (r->concave && r->equal_steps)
			miss(t, k, "greedy not optimal under its conditions",
			    r);
	}
}

/* Report a tally as one TAP line. */
static void
report(const tally *t, const char *what)
{
	ok(t->bad == 0 && t->run > 0, "%s: %d/%d agree%s%s", what,
	    t->run - t->bad, t->run, t->bad ? "; first: " : "", t->first);
}

/* The random small instances. */
static void
small_instances(int count)
{
	tally tdp = { 0 }, tgr = { 0 }, tgx = { 0 };
#ifdef HAVE_GLPK
	tally tglpk = { 0 };
#endif
	solve_params par;
	int k, infeasible = 0, budget_inf = 0, concave_eq = 0;
	int with_groups = 0, with_shards = 0;

	solve_params_init(&par);
	par.mip_gap = 0;
	for (k = 0; k < count; k++) {
		solve_result r;
		double best = 0;
		kvx_status st;
		int found;
		inst in;

		gen(&in, k);
		found = brute(&in.p, &best);
		infeasible += found < 0;
		budget_inf += floors(&in.p) > in.p.budget;
		with_groups += in.p.n_group > 0;
		with_shards += in.p.n_shard > 0;

		st = solve_dp(&in.p, &par, &r);
		if (in.p.n_shard > 0) {
			tdp.run++;
			if (st != KVX_ERR_UNSUPPORTED ||
			    strstr(r.reason, "glpk") == NULL)
				miss(&tdp, k, "dp accepted shards", &r);
		} else
			check_exact(&tdp, k, &in.p, found, best, st, &r);
		solve_result_free(&r);

#ifdef HAVE_GLPK
		st = solve_glpk(&in.p, &par, &r);
		check_exact(&tglpk, k, &in.p, found, best, st, &r);
		solve_result_free(&r);
#endif

		st = solve_greedy(&in.p, &par, &r);
		check_greedy(&tgr, &tgx, k, &in, found, best, st, &r);
		concave_eq += st == KVX_OK && r.concave && r.equal_steps;
		solve_result_free(&r);
	}
	diag("%d instances: %d infeasible (%d by budget), %d with groups, "
	    "%d with shards, %d concave with equal steps", count, infeasible,
	    budget_inf, with_groups, with_shards, concave_eq);
	report(&tdp, "dp vs brute force");
#ifdef HAVE_GLPK
	report(&tglpk, "glpk vs brute force");
#endif
	report(&tgr, "greedy feasible, bounded, refuses groups/shards");
	report(&tgx, "greedy optimal exactly when it claims so");
	ok(infeasible > 10 && budget_inf > 5 && with_groups > 20 &&
	    with_shards > 20 && concave_eq > 20,
	    "the random instances cover every case");
}

/* Messages and refusals that the random instances do not pin down. */
static void
messages(void)
{
	double value[4] = { 0, 1, 2, 3 };
	int64_t cost[4] = { 1000000, 2000000, 3000000, 4000000 };
	int group[1] = { 0 }, shard[1] = { 0 };
	int64_t gmin[1] = { 2500000 }, gmax[1] = { 2600000 };
	solve_problem p = { 0 };
	solve_params par;
	solve_result r;
	kvx_status st;

	solve_params_init(&par);
	p.n_item = 1;
	p.n_level = 4;
	p.value = value;
	p.cost = cost;
	p.budget = 500000;
	st = solve_dp(&p, &par, &r);
	ok(st == KVX_ERR_PLAN && r.status == SOLVE_INFEASIBLE &&
	    strstr(r.reason, "budget 488.3 KiB is below the floors' minimum "
	    "976.6 KiB") != NULL && strcmp(kvx_errmsg(), r.reason) == 0,
	    "budget below floors: \"%s\"", r.reason);
	solve_result_free(&r);

	p.budget = 10000000;
	p.n_group = 1;
	p.group = group;
	p.group_min = gmin;
	p.group_max = gmax;
	st = solve_dp(&p, &par, &r);
	ok(st == KVX_ERR_PLAN && r.status == SOLVE_INFEASIBLE &&
	    strstr(r.reason, "group 0") != NULL,
	    "dp: group limits between two levels: \"%s\"", r.reason);
	solve_result_free(&r);

	p.n_group = 0;
	p.n_shard = 1;
	p.shard = shard;
	p.shard_cap = 10000000;
	st = solve_greedy(&p, &par, &r);
	ok(st == KVX_ERR_UNSUPPORTED && strcmp(r.reason,
	    "greedy does not support shards; use --solver glpk") == 0,
	    "greedy refuses shards: \"%s\"", r.reason);
	solve_result_free(&r);
	p.n_shard = 0;

	par.quantum = 300000;
	st = solve_dp(&p, &par, &r);
	ok(st == KVX_ERR_ARG && strstr(r.reason, "quantum") != NULL,
	    "dp: quantum that does not divide the steps: \"%s\"", r.reason);
	solve_result_free(&r);
	par.quantum = 500000;
	st = solve_dp(&p, &par, &r);
	ok(st == KVX_OK && r.level != NULL && r.level[0] == 3,
	    "dp: quantum dividing the steps solves");
	solve_result_free(&r);
	par.quantum = 0;

	st = solve_run("simplex", &p, &par, &r);
	ok(st == KVX_ERR_ARG && strstr(r.reason, "unknown solver") != NULL,
	    "unknown solver name: \"%s\"", r.reason);
	solve_result_free(&r);

	value[2] = 0.5;
	st = solve_dp(&p, &par, &r);
	ok(st == KVX_ERR_ARG && strstr(r.reason, "value decreases") != NULL,
	    "decreasing curve refused: \"%s\"", r.reason);
	solve_result_free(&r);
	value[2] = 2;

	{
		/* Steps of 1 byte and of 200 MB: too many units for dp. */
		double hv[6] = { 0, 1, 5, 0, 2, 3 };
		int64_t hc[6] = { 1, 2, 200000000, 1, 2, 200000000 };
		solve_problem h = { 0 };

		h.n_item = 2;
		h.n_level = 3;
		h.value = hv;
		h.cost = hc;
		h.budget = 200000001;
		st = solve_dp(&h, &par, &r);
		ok(st == KVX_ERR_UNSUPPORTED && strstr(r.reason, "quantum") &&
		    strstr(r.reason, "glpk"), "dp: table over the cell limit: "
		    "\"%s\"", r.reason);
		solve_result_free(&r);
#ifdef HAVE_GLPK
		st = solve_glpk(&h, &par, &r);
		ok(st == KVX_OK && r.status == SOLVE_OPTIMAL &&
		    r.level[0] == 2 && r.level[1] == 0 && r.objective == 5,
		    "glpk: the same problem, levels %d %d",
		    r.level ? r.level[0] : -1, r.level ? r.level[1] : -1);
		solve_result_free(&r);
#endif
		st = solve_greedy(&h, &par, &r);
		ok(st == KVX_OK && r.level[0] == 1 && r.level[1] == 1 &&
		    r.status == SOLVE_FEASIBLE && r.gap > 0,
		    "greedy on it: not exact, gap %.3g", r.gap);
		solve_result_free(&r);
	}

#ifndef HAVE_GLPK
	st = solve_glpk(&p, &par, &r);
	ok(st == KVX_ERR_UNSUPPORTED && strstr(r.reason,
	    "built without GLPK") != NULL, "no GLPK: \"%s\"", r.reason);
	solve_result_free(&r);
#endif
}

/*
 * A SmolLM2-shaped instance: 30 layers x 3 KV heads, 256 levels of 32
 * tokens, 256 bytes per token per head.  Concave curves are
 * 1 - (1 - f)^a; non-concave ones add a bump.
 */
static void
big_instance(int concave, solve_problem *p, double *value, int64_t *cost,
    double *frac)
{
	int N = 90, L = 256, i, j;

	for (j = 0; j < L; j++)
		frac[j] = (double)(j + 1) / L;
	for (i = 0; i < N; i++) {
		double a = 1.5 + 20 * runif(), w = 0.5 + runif();
		double c0 = 0.2 + 0.6 * runif(), h = 0.3 * runif();

		for (j = 0; j < L; j++) {
			double f = frac[j], r = 1 - pow(1 - f, a);

			if (!concave)
				r = (1 - h) * r + h / (1 + exp(-60 * (f - c0)));
			value[i * L + j] = w * r;
			cost[i * L + j] = (int64_t)(j + 1) * 32 * 256;
		}
	}
	memset(p, 0, sizeof *p);
	p->n_item = N;
	p->n_level = L;
	p->frac = frac;
	p->value = value;
	p->cost = cost;
	p->budget = (int64_t)(0.3 * N * L) * 32 * 256;
}

/* The three solvers on the full-size instances. */
static void
big(void)
{
	static double value[90 * 256];
	static int64_t cost[90 * 256];
	double frac[256];
	solve_problem p;
	solve_params par;
	solve_result rd, rg, rl;
	int concave;

	solve_params_init(&par);
	for (concave = 1; concave >= 0; concave--) {
		const char *kind = concave ? "concave" : "non-concave";
		kvx_status sd, sg, sl = KVX_OK;
		double vd, vg;
		int64_t cd;

		big_instance(concave, &p, value, cost, frac);
		sd = solve_dp(&p, &par, &rd);
		sg = solve_greedy(&p, &par, &rg);
		ok(sd == KVX_OK && rd.status == SOLVE_OPTIMAL &&
		    feasible(&p, rd.level, &vd, &cd) &&
		    fabs(vd - rd.objective) < 1e-9 && cd == rd.cost,
		    "90x256 %s: dp solves, objective %.9f, cost %lld of %lld",
		    kind, rd.objective, (long long)rd.cost,
		    (long long)p.budget);
		ok(sg == KVX_OK && feasible(&p, rg.level, &vg, NULL) &&
		    rg.concave == concave && (concave ?
		    rg.status == SOLVE_OPTIMAL &&
		    fabs(rg.objective - rd.objective) < 1e-9 :
		    rg.objective <= rd.objective + 1e-9),
		    "90x256 %s: greedy %s, objective %.9f (gap %.3g)", kind,
		    rg.status == SOLVE_OPTIMAL ? "optimal" : "feasible",
		    rg.objective, rg.gap);
#ifdef HAVE_GLPK
		sl = solve_glpk(&p, &par, &rl);
		ok(sl == KVX_OK && feasible(&p, rl.level, NULL, NULL) &&
		    fabs(rl.objective - rd.objective) <=
		    1e-6 * fabs(rd.objective) + 1e-9 &&
		    rl.objective <= rd.objective + 1e-9,
		    "90x256 %s: glpk objective %.9f (%s), dp %.9f", kind,
		    rl.objective, rl.status == SOLVE_OPTIMAL ? "optimal" :
		    rl.reason, rd.objective);
		diag("90x256 %s: greedy %.2f ms, dp %.2f ms, glpk %.2f ms",
		    kind, rg.seconds * 1e3, rd.seconds * 1e3,
		    rl.seconds * 1e3);
		solve_result_free(&rl);

		/* A 1 ms limit: a plan with its gap, or a clear "none". */
		par.time_limit = 0.001;
		sl = solve_glpk(&p, &par, &rl);
		ok((sl == KVX_OK && (rl.status == SOLVE_OPTIMAL ||
		    (rl.status == SOLVE_FEASIBLE && rl.gap >= 0 &&
		    strstr(rl.reason, "time limit") != NULL)) &&
		    feasible(&p, rl.level, NULL, NULL) &&
		    rl.objective <= rd.objective + 1e-9) ||
		    (sl == KVX_ERR_PLAN && rl.status == SOLVE_UNKNOWN &&
		    strstr(rl.reason, "time limit") != NULL),
		    "90x256 %s: glpk with a 1 ms limit: %s", kind,
		    rl.status == SOLVE_OPTIMAL ? "optimal" : rl.reason);
		par.time_limit = 5;
		solve_result_free(&rl);
#else
		(void)sl;
		(void)rl;
		diag("90x256 %s: greedy %.2f ms, dp %.2f ms", kind,
		    rg.seconds * 1e3, rd.seconds * 1e3);
#endif
		solve_result_free(&rd);
		solve_result_free(&rg);
	}
}

int
main(void)
{
	const char *seed = getenv("KVX_SEED");

	if (seed != NULL && *seed != '\0')
		rng_state = strtoull(seed, NULL, 0) | 1;
	diag("seed 0x%llx", (unsigned long long)rng_state);
	small_instances(600);
	messages();
	big();
	return tap_done();
}
