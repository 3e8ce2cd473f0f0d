/*
 * baseline.c - kvx-plan's allocation methods.  The baselines follow
 * their papers (uniform: SnapKV; pyramid: PyramidKV; ada: AdaKV's uniform
 * layers with a run-time head split; layer: XKV's per-layer sizes); kvx
 * builds one item per (layer, KV head) from the retention curves and
 * hands the problem to a solver.
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baseline.h"
#include "plan.h"
#include "select.h"
#include "util.h"

#define EPS 1e-9

static const char *const method_name[] = {
	"uniform", "pyramid", "ada", "layer", "kvx"
};

/* A solver problem and the arrays behind it. */
struct prob {
	solve_problem	 p;
	int		 L, Hkv, G, gran;
	double		*frac, *value;
	int64_t		*cost, *tok;
	int		*lo, *hi, *group, *shard;
	int64_t		*gmin, *gmax;
	uint8_t		*allowed;
	double		*value2;	/* retrieval, with a floor */
};

/* Fill the allocation options with their defaults. */
void
alloc_opts_init(alloc_opts *o)
{
	memset(o, 0, sizeof *o);
	o->method = ALLOC_KVX;
	o->mode = KVX_PLAN_STATIC;
	o->gran = GRAN_LAYER_HEAD;
	o->solver = "dp";
	solve_params_init(&o->sp);
	o->budget = 0.25;
	o->ref_context = 4096;
	o->floor_tokens = 36;
	o->bytes_per_elem = 4;
	o->min_frac = 0;
	o->max_frac = 1;
	o->layer_min = 0;
	o->layer_max = 1;
	o->beta = 20;
	o->retrieval_floor = -1;
	o->retrieval_weight = -1;
}

/*
 * The default retrieval weight at a budget share, chosen on the task
 * suite and the perplexity protocol (bench/RESULTS.md, sections 10 and
 * 15): 1 from 15% up (best on perplexity at 20%, tied at 30%, the task
 * suite within an item), 0.3 below (at 10% W = 1 loses 5% of perplexity
 * to W = 0.3 for no gain on the tasks).  The step lies between the
 * measured shares.
 */
static double
retrieval_weight(double budget)
{
	return budget < 0.15 ? 0.3 : 1;
}

/* Name of a method as the plan records it. */
const char *
alloc_method_name(int m)
{
	if (m < 0 || m > ALLOC_KVX)
		return "?";
	return method_name[m];
}

/* Method from its name ("xkv" is an alias of layer); -1 if unknown. */
int
alloc_method_parse(const char *s)
{
	int i;

	for (i = 0; i <= ALLOC_KVX; i++)
		if (strcmp(s, method_name[i]) == 0)
			return i;
	if (strcmp(s, "xkv") == 0)
		return ALLOC_LAYER;
	return -1;
}

/* Whether the method cannot run without retention curves. */
int
alloc_needs_profile(int m)
{
	return m == ALLOC_LAYER || m == ALLOC_KVX;
}

/* Release the report's arrays. */
void
alloc_report_free(alloc_report *r)
{
	solve_result_free(&r->res);
	free(r->head_frac);
	r->head_frac = NULL;
}

/* Free a problem's arrays. */
static void
prob_free(struct prob *b)
{
	free(b->frac);
	free(b->value);
	free(b->cost);
	free(b->tok);
	free(b->lo);
	free(b->hi);
	free(b->group);
	free(b->shard);
	free(b->gmin);
	free(b->gmax);
	free(b->allowed);
	free(b->value2);
	memset(b, 0, sizeof *b);
}

/* Weight of layer l in the objective. */
static double
layer_weight(const alloc_opts *o, int l)
{
	return o->layer_w != NULL ? o->layer_w[l] : 1.0;
}

/* Bytes of one head's token at the runtime's element size. */
static int64_t
token_bytes(const alloc_opts *o, const kvx_plan *plan)
{
	return (int64_t)plan->head_dim * 2 * o->bytes_per_elem;
}

/* Tokens layer l's heads may keep at the reference context: a
 * sliding-window layer's window, else all of them. */
static int64_t
layer_cap_tokens(const alloc_opts *o, const kvx_plan *plan, int l)
{
	return sel_window_rows(plan_layer_window(plan, l),
	    (int)o->ref_context);
}

/* Tokens per head of a full cache at the reference context, summed over
 * the layers: the cache the budget is a share of. */
static int64_t
full_tokens(const alloc_opts *o, const kvx_plan *plan)
{
	int64_t s = 0;
	int l;

	for (l = 0; l < plan->n_layer; l++)
		s += layer_cap_tokens(o, plan, l);
	return s;
}

/* Tokens every head keeps at the reference context whatever its budget. */
static int64_t
floor_tokens(const alloc_opts *o)
{
	return o->floor_tokens < o->ref_context ? o->floor_tokens :
	    o->ref_context;
}

/*
 * The levels: the profile's grid, or with a page size every multiple of
 * the page at the reference context (the grid's fractions rarely land on
 * page multiples, so masking them would leave almost nothing).
 */
static kvx_status
make_levels(const alloc_opts *o, const profile *prof, struct prob *b)
{
	int64_t ref = o->ref_context;
	int j;

	if (o->page > 0) {
		b->G = (int)(ref / o->page) + 1;
		if (ref % o->page != 0)
			b->G++;
	} else
		b->G = prof->grid;
	b->frac = kvx__malloc_array((size_t)b->G, sizeof *b->frac);
	b->tok = kvx__malloc_array((size_t)b->G, sizeof *b->tok);
	if (b->frac == NULL || b->tok == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	for (j = 0; j < b->G; j++) {
		if (o->page > 0) {
			b->tok[j] = (int64_t)j * o->page < ref ?
			    (int64_t)j * o->page : ref;
			b->frac[j] = (double)b->tok[j] / (double)ref;
		} else {
			b->frac[j] = profile_level(prof, j);
			b->tok[j] = llround(b->frac[j] * (double)ref);
		}
	}
	return KVX_OK;
}

/* First and last level within [lo, hi] as fractions; -1 if none. */
static void
level_range(const struct prob *b, double lo, double hi, int *jlo, int *jhi)
{
	int j;

	*jlo = *jhi = -1;
	for (j = 0; j < b->G; j++)
		if (b->frac[j] >= lo - EPS && b->frac[j] <= hi + EPS) {
			if (*jlo < 0)
				*jlo = j;
			*jhi = j;
		}
}

/* Build the problem for granularity gran from the curves. */
static kvx_status
build(const alloc_opts *o, const profile *prof, const kvx_plan *plan,
    int gran, const double *uni, struct prob *b)
{
	int64_t unit = token_bytes(o, plan), fl = floor_tokens(o), full;
	int L = plan->n_layer, Hkv = plan->n_head_kv, N, G, i, j, l, h;
	int jlo, jhi, maxstep = 0;
	/* ada's head split is an estimate of the run time's: no floor */
	int floor2 = o->retrieval_floor >= 0 && prof->Rr != NULL &&
	    gran != GRAN_HEAD;
	double rw = prof->Rr == NULL || gran == GRAN_HEAD ? 0 :
	    o->retrieval_weight >= 0 ? o->retrieval_weight :
	    retrieval_weight(o->budget);
	kvx_status rc;

	memset(b, 0, sizeof *b);
	b->L = L;
	b->Hkv = Hkv;
	b->gran = gran;
	if ((rc = make_levels(o, prof, b)) != KVX_OK)
		return rc;
	G = b->G;
	N = gran == GRAN_LAYER ? L : L * Hkv;
	b->value = kvx__malloc_array((size_t)N * G, sizeof *b->value);
	b->cost = kvx__malloc_array((size_t)N * G, sizeof *b->cost);
	b->lo = kvx__malloc_array((size_t)N, sizeof *b->lo);
	b->hi = kvx__malloc_array((size_t)N, sizeof *b->hi);
	b->allowed = kvx__calloc((size_t)N * G, 1);
	if (floor2)
		b->value2 = kvx__malloc_array((size_t)N * G,
		    sizeof *b->value2);
	if (!b->value || !b->cost || !b->lo || !b->hi || !b->allowed ||
	    (floor2 && !b->value2))
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	for (j = 1; j < G; j++)
		if (b->tok[j] - b->tok[j - 1] > maxstep)
			maxstep = (int)(b->tok[j] - b->tok[j - 1]);

	if (gran == GRAN_LAYER)
		level_range(b, o->min_frac > o->layer_min ? o->min_frac :
		    o->layer_min, o->max_frac < o->layer_max ? o->max_frac :
		    o->layer_max, &jlo, &jhi);
	else
		level_range(b, o->min_frac, o->max_frac, &jlo, &jhi);
	if (jlo < 0)
		return kvx__fail(KVX_ERR_PLAN, "no budget level lies within "
		    "the floors and maxima (check --min-frac, --max-frac, "
		    "--layer-min, --layer-max)");

	for (i = 0; i < N; i++) {
		l = gran == GRAN_LAYER ? i : i / Hkv;
		b->lo[i] = jlo;
		b->hi[i] = jhi;
		/* a sliding-window layer gains nothing past its window: its
		 * cap leaves the rest of the budget to the other layers */
		while (b->hi[i] > b->lo[i] && b->tok[b->hi[i]] >
		    layer_cap_tokens(o, plan, l))
			b->hi[i]--;
		for (j = 0; j < G; j++) {
			int64_t t = b->tok[j] > fl ? b->tok[j] : fl;
			double v = 0, v2 = 0;

			if (gran == GRAN_LAYER) {
				for (h = 0; h < Hkv; h++) {
					v += profile_eval(prof, l, h,
					    b->frac[j]);
					if (prof->Rr != NULL)
						v2 += profile_eval_retrieval(
						    prof, l, h, b->frac[j]);
				}
				t *= Hkv;
			} else {
				v = profile_eval(prof, l, i % Hkv, b->frac[j]);
				if (prof->Rr != NULL)
					v2 = profile_eval_retrieval(prof, l,
					    i % Hkv, b->frac[j]);
			}
			/* the weighted sum: retrieval beside the prose */
			b->value[(size_t)i * G + j] = layer_weight(o, l) * v +
			    rw * v2;
			if (floor2)
				b->value2[(size_t)i * G + j] = v2;
			b->cost[(size_t)i * G + j] = t * unit;
			/* below the floor a level costs the floor: of those
			 * keep only the highest, the best value for that
			 * cost */
			b->allowed[(size_t)i * G + j] = b->tok[j] >= fl ||
			    j + 1 >= G || b->tok[j + 1] > fl;
		}
		/*
		 * Count value as the loss against keeping everything (<= 0):
		 * the same argmax, but GLPK's relative gap is then relative to
		 * the loss, which is what differs between plans, and not to a
		 * total near the number of heads.
		 */
		{
			double top = b->value[(size_t)i * G + G - 1];

			for (j = 0; j < G; j++)
				b->value[(size_t)i * G + j] -= top;
		}
	}

	/*
	 * A level that gains nothing over the usable level below it is
	 * never needed: dropping to the cheaper one keeps the value.  Masking
	 * it removes the flat stretches (only sinks kept, or everything that
	 * matters already kept) on which greedy would see no gain and stop.
	 * With layer minimums such levels may be needed to reach them; with
	 * a retrieval floor a level that gains retrieval is needed too.
	 */
	if (gran != GRAN_HEAD && o->layer_min <= 0)
		for (i = 0; i < N; i++) {
			int last = -1;

			for (j = 0; j < G; j++) {
				size_t k = (size_t)i * G + j;

				if (!b->allowed[k] || j < b->lo[i])
					continue;
				if (last >= 0 && !(b->value[k] >
				    b->value[(size_t)i * G + last] + 1e-12) &&
				    !(floor2 && b->value2[k] >
				    b->value2[(size_t)i * G + last] + 1e-12))
					b->allowed[k] = 0;
				else
					last = j;
			}
		}

	full = full_tokens(o, plan) * Hkv;
	b->p.n_item = N;
	b->p.n_level = G;
	b->p.frac = b->frac;
	b->p.value = b->value;
	b->p.cost = b->cost;
	b->p.budget = (int64_t)floor(o->budget * (double)full + 1e-6) * unit;
	b->p.lo = b->lo;
	b->p.hi = b->hi;
	b->p.allowed = b->allowed;
	if (floor2) {
		b->p.value2 = b->value2;
		b->p.floor2 = o->retrieval_floor * L * Hkv;
	}

	if (gran == GRAN_HEAD || (gran == GRAN_LAYER_HEAD &&
	    (o->layer_min > 0 || o->layer_max < 1))) {
		b->group = kvx__malloc_array((size_t)N, sizeof *b->group);
		b->gmin = kvx__malloc_array((size_t)L, sizeof *b->gmin);
		b->gmax = kvx__malloc_array((size_t)L, sizeof *b->gmax);
		if (!b->group || !b->gmin || !b->gmax)
			return kvx__fail(KVX_ERR_NOMEM, "out of memory");
		for (i = 0; i < N; i++)
			b->group[i] = i / Hkv;
		for (l = 0; l < L; l++) {
			double hr = (double)Hkv * (double)o->ref_context;

			if (gran == GRAN_HEAD) {
				/* the uniform share, within one level step
				 * per head: levels rarely sum to it exactly */
				b->gmax[l] = (int64_t)floor(uni[l] * hr +
				    1e-6) * unit;
				b->gmin[l] = b->gmax[l] -
				    (int64_t)Hkv * maxstep * unit;
				if (b->gmin[l] < 0)
					b->gmin[l] = 0;
			} else {
				b->gmin[l] = (int64_t)ceil(o->layer_min * hr -
				    1e-6) * unit;
				b->gmax[l] = o->layer_max >= 1 ?
				    SOLVE_NO_LIMIT : (int64_t)floor(
				    o->layer_max * hr + 1e-6) * unit;
			}
		}
		b->p.n_group = L;
		b->p.group = b->group;
		b->p.group_min = b->gmin;
		b->p.group_max = b->gmax;
	}

	if (o->shards > 1) {
		if (gran == GRAN_LAYER) {
			if (Hkv % o->shards != 0)
				return kvx__fail(KVX_ERR_UNSUPPORTED, "at layer "
				    "granularity a layer's %d KV heads cannot "
				    "split evenly over %d shards", Hkv,
				    o->shards);
			/* every shard holds the same share of each layer */
		} else {
			b->shard = kvx__malloc_array((size_t)N,
			    sizeof *b->shard);
			if (b->shard == NULL)
				return kvx__fail(KVX_ERR_NOMEM, "out of memory");
			for (i = 0; i < N; i++)
				b->shard[i] = (i % Hkv) % o->shards;
			b->p.n_shard = o->shards;
			b->p.shard = b->shard;
			b->p.shard_cap = b->p.budget / o->shards;
		}
	}
	return KVX_OK;
}

/*
 * A floor by GLPK, started from dp's discretised answer: the MIP alone
 * may find no assignment within its time limit, and then has dp's to
 * improve on.
 */
static kvx_status
solve_floor_glpk(const solve_problem *p, const solve_params *sp,
    solve_result *res)
{
	solve_params q = *sp;
	solve_result d;
	kvx_status rc;

	memset(&d, 0, sizeof d);
	if ((rc = solve_dp(p, sp, &d)) != KVX_OK &&
	    d.status == SOLVE_INFEASIBLE) {
		*res = d;
		return rc;
	}
	q.start = rc == KVX_OK ? d.level : NULL;
	rc = solve_glpk(p, &q, res);
	solve_result_free(&d);
	return rc;
}

/* The failure of a floor that the budget cannot reach, saying what it
 * can reach; or the solver's own failure when that cannot be known. */
static kvx_status
floor_reach(const alloc_opts *o, struct prob *b)
{
	char why[256];
	double best;

	snprintf(why, sizeof why, "%s", kvx_errmsg());
	if (solve_best2(&b->p, &o->sp, &best) != KVX_OK ||
	    best >= b->p.floor2)
		return kvx__fail(KVX_ERR_PLAN, "%s", why);
	return kvx__fail(KVX_ERR_PLAN, "retrieval floor %.4f is not "
	    "reachable at budget %.2f%%: at most %.4f", o->retrieval_floor,
	    100 * o->budget, best / (b->L * b->Hkv));
}

/* Solve the problem at granularity gran (GRAN_HEAD: each layer's total
 * is its uniform share uni[l]); head shares go to frac[L*Hkv]. */
static kvx_status
solve_gran(const alloc_opts *o, const profile *prof, const kvx_plan *plan,
    int gran, const double *uni, double *frac, alloc_report *rep)
{
	struct prob b;
	kvx_status rc;
	int i, h;

	if ((rc = build(o, prof, plan, gran, uni, &b)) != KVX_OK) {
		prob_free(&b);
		return rc;
	}
	solve_result_free(&rep->res);
	if (b.p.value2 != NULL && strcmp(o->solver, "glpk") == 0)
		rc = solve_floor_glpk(&b.p, &o->sp, &rep->res);
	else
		rc = solve_run(o->solver, &b.p, &o->sp, &rep->res);
	if (rc == KVX_ERR_PLAN && b.p.value2 != NULL)
		rc = floor_reach(o, &b);
	if (rc != KVX_OK) {
		prob_free(&b);
		return rc;
	}
	rep->solved = 1;
	for (i = 0; i < b.p.n_item; i++) {
		double f = b.frac[rep->res.level[i]];

		if (gran == GRAN_LAYER)
			for (h = 0; h < b.Hkv; h++)
				frac[i * b.Hkv + h] = f;
		else
			frac[i] = f;
	}
	free(rep->res.level);
	rep->res.level = NULL;
	prob_free(&b);
	return KVX_OK;
}

/*
 * Clamp v[0..n) to [lo, hi[i]] while keeping their mean at target:
 * whatever clamping removes or adds is spread evenly over the values
 * still free (a layer capped at its sliding window hands its excess to
 * the others).
 */
static void
fit_mean(double *v, int n, double lo, const double *hi, double target)
{
	int it, i, nfree;
	double sum, diff;

	for (it = 0; it < n + 1; it++) {
		sum = 0;
		nfree = 0;
		for (i = 0; i < n; i++) {
			if (v[i] > hi[i])
				v[i] = hi[i];
			if (v[i] < lo)
				v[i] = lo;
			sum += v[i];
			if (v[i] > lo + EPS && v[i] < hi[i] - EPS)
				nfree++;
		}
		diff = target * n - sum;
		if (fabs(diff) < 1e-12 || nfree == 0)
			return;
		for (i = 0; i < n; i++)
			if (v[i] > lo + EPS && v[i] < hi[i] - EPS)
				v[i] += diff / nfree;
	}
}

/*
 * Each layer's cap, its share of ref_context (1, or a sliding-window
 * layer's window), into cap[L], and the mean share of ref_context that
 * the budget gives a layer: the budget is a share of the full cache,
 * which holds no more than each layer's cap.
 */
static double
layer_caps(const alloc_opts *o, const kvx_plan *plan, double *cap)
{
	int64_t all = (int64_t)plan->n_layer * o->ref_context;
	int l;

	for (l = 0; l < plan->n_layer; l++)
		cap[l] = (double)layer_cap_tokens(o, plan, l) /
		    (double)o->ref_context;
	/* without sliding windows, exactly the budget */
	if (full_tokens(o, plan) == all)
		return o->budget;
	return o->budget * (double)full_tokens(o, plan) / (double)all;
}

/* Uniform: the same tokens per head in every layer, a sliding-window
 * layer capped at its window and the rest spread over the others. */
static void
uniform(const alloc_opts *o, const kvx_plan *plan, double *layer,
    double *cap)
{
	double mean = layer_caps(o, plan, cap);
	int l;

	for (l = 0; l < plan->n_layer; l++)
		layer[l] = mean;
	fit_mean(layer, plan->n_layer, 0, cap, mean);
}

/* PyramidKV's schedule: the last layer keeps B / beta, the first 2B minus
 * that, linear in between, so the mean is B (each layer then within its
 * cap). */
static void
pyramid(const alloc_opts *o, const kvx_plan *plan, double *layer,
    double *cap)
{
	int L = plan->n_layer, l;
	double B = layer_caps(o, plan, cap);
	double last = B / o->beta, first = 2 * B - last;
	double lo = (double)floor_tokens(o) / (double)o->ref_context;

	for (l = 0; l < L; l++)
		layer[l] = L == 1 ? B : first + (last - first) * l / (L - 1);
	fit_mean(layer, L, lo, cap, B);
}

/* Fill the report's objective and retention from the head shares. */
static void
predict(const alloc_opts *o, const profile *prof, const kvx_plan *plan,
    const double *uni, alloc_report *rep)
{
	int L = plan->n_layer, Hkv = plan->n_head_kv, l, h;
	double sum = 0, un = 0, obj = 0, r;

	rep->predicted = rep->uniform = -1;
	rep->objective = 0;
	if (prof == NULL)
		return;
	for (l = 0; l < L; l++)
		for (h = 0; h < Hkv; h++) {
			r = profile_eval(prof, l, h, rep->head_frac[l * Hkv +
			    h]);
			sum += r;
			obj += layer_weight(o, l) * r;
			un += profile_eval(prof, l, h, uni[l]);
		}
	rep->predicted = sum / (L * Hkv);
	rep->uniform = un / (L * Hkv);
	rep->objective = obj;
}

/* The plan's mean retrieval retention, and uniform's. */
static void
predict_retrieval(const profile *prof, const kvx_plan *plan,
    const double *uni, alloc_report *rep)
{
	int L = plan->n_layer, Hkv = plan->n_head_kv, l, h;
	double rs = 0, ru = 0;

	if (prof == NULL || prof->Rr == NULL)
		return;
	for (l = 0; l < L; l++)
		for (h = 0; h < Hkv; h++) {
			rs += profile_eval_retrieval(prof, l, h,
			    rep->head_frac[l * Hkv + h]);
			ru += profile_eval_retrieval(prof, l, h, uni[l]);
		}
	rep->retrieval = rs / (L * Hkv);
	rep->retrieval_uniform = ru / (L * Hkv);
}

/* Move the report's head shares a of the way from base's; see
 * baseline.h. */
void
alloc_blend(const alloc_opts *o, const profile *prof, const kvx_plan *plan,
    const alloc_report *base, double a, alloc_report *rep)
{
	int L = plan->n_layer, Hkv = plan->n_head_kv, i;
	double sum = 0, obj = 0, rs = 0, r;

	for (i = 0; i < L * Hkv; i++)
		rep->head_frac[i] = base->head_frac[i] + a *
		    (rep->head_frac[i] - base->head_frac[i]);
	if (prof == NULL)
		return;
	for (i = 0; i < L * Hkv; i++) {
		r = profile_eval(prof, i / Hkv, i % Hkv, rep->head_frac[i]);
		sum += r;
		obj += layer_weight(o, i / Hkv) * r;
		if (prof->Rr != NULL)
			rs += profile_eval_retrieval(prof, i / Hkv, i % Hkv,
			    rep->head_frac[i]);
	}
	rep->predicted = sum / (L * Hkv);
	rep->objective = obj;
	if (prof->Rr != NULL)
		rep->retrieval = rs / (L * Hkv);
}

/* Fill the plan's budgets by the method; see baseline.h. */
kvx_status
alloc_run(const alloc_opts *o, const profile *prof, kvx_plan *plan,
    alloc_report *rep)
{
	int L = plan->n_layer, Hkv = plan->n_head_kv, l, h;
	int64_t btok = llround(o->budget * (double)o->ref_context);
	double *hf, *uni, *cap, s;
	kvx_status rc;

	memset(rep, 0, sizeof *rep);
	rep->predicted = rep->uniform = -1;
	rep->retrieval = rep->retrieval_uniform = -1;
	if (!(o->budget > 0 && o->budget <= 1))
		return kvx__fail(KVX_ERR_ARG, "budget %g is not in (0, 1]",
		    o->budget);
	if (btok < floor_tokens(o))
		return kvx__fail(KVX_ERR_PLAN, "budget of %lld tokens per "
		    "head at context %lld is below the %lld tokens every "
		    "head keeps, its window and sinks", (long long)btok,
		    (long long)o->ref_context, (long long)floor_tokens(o));
	if (alloc_needs_profile(o->method) && prof == NULL)
		return kvx__fail(KVX_ERR_ARG, "method %s needs a profile",
		    alloc_method_name(o->method));
	if (o->retrieval_floor >= 0 && alloc_needs_profile(o->method) &&
	    prof->Rr == NULL)
		return kvx__fail(KVX_ERR_ARG, "the profile has no retrieval "
		    "curves for --retrieval-floor or --retrieval-weight "
		    "(profile with --probe-share above 0)");
	if ((hf = kvx__malloc_array((size_t)L * Hkv, sizeof *hf)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	rep->head_frac = hf;
	uni = kvx__malloc_array((size_t)L, sizeof *uni);
	cap = kvx__malloc_array((size_t)L, sizeof *cap);
	if (uni == NULL || cap == NULL) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory");
		goto out;
	}
	uniform(o, plan, uni, cap);
	for (l = 0; l < L * Hkv; l++)
		hf[l] = uni[l / Hkv];

	rc = KVX_OK;
	switch (o->method) {
	case ALLOC_UNIFORM:
		break;
	case ALLOC_PYRAMID: {
		double *lay = kvx__malloc_array((size_t)L, sizeof *lay);

		if (lay == NULL) {
			rc = kvx__fail(KVX_ERR_NOMEM, "out of memory");
			goto out;
		}
		pyramid(o, plan, lay, cap);
		for (l = 0; l < L; l++)
			for (h = 0; h < Hkv; h++)
				hf[l * Hkv + h] = lay[l];
		free(lay);
		break;
	}
	case ALLOC_ADA:
		/* the run-time split is estimated by the best static split
		 * of each layer's uniform share */
		if (prof != NULL && solve_gran(o, prof, plan, GRAN_HEAD, uni,
		    hf, rep) != KVX_OK) {
			rep->solved = 0;
			for (l = 0; l < L * Hkv; l++)
				hf[l] = uni[l / Hkv];
		}
		break;
	case ALLOC_LAYER:
		rc = solve_gran(o, prof, plan, GRAN_LAYER, uni, hf, rep);
		break;
	case ALLOC_KVX:
		rc = solve_gran(o, prof, plan, o->gran, uni, hf, rep);
		break;
	default:
		rc = kvx__fail(KVX_ERR_ARG, "unknown method %d", o->method);
	}
	if (rc != KVX_OK)
		goto out;

	if (plan->mode == KVX_PLAN_HYBRID) {
		for (l = 0; l < L; l++) {
			s = 0;
			for (h = 0; h < Hkv; h++)
				s += hf[l * Hkv + h];
			plan->budgets[l] = o->method == ALLOC_ADA ? uni[l] :
			    s / Hkv;
		}
	} else
		for (l = 0; l < L * Hkv; l++)
			plan->budgets[l] = hf[l];
	predict(o, prof, plan, uni, rep);
	predict_retrieval(prof, plan, uni, rep);
out:
	free(uni);
	free(cap);
	return rc;
}
