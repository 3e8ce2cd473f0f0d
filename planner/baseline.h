/*
 * baseline.h - kvx-plan's allocation methods: the baselines (uniform,
 * pyramid, ada, layer) and kvx's own, built as solver problems from the
 * retention curves.
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#ifndef KVX_BASELINE_H
#define KVX_BASELINE_H

#include <stdint.h>

#include "kvx.h"
#include "plan.h"
#include "profile.h"
#include "solve.h"

enum alloc_method {
	ALLOC_UNIFORM,		/* every head keeps the budget share (SnapKV) */
	ALLOC_PYRAMID,		/* linear schedule over layers (PyramidKV) */
	ALLOC_ADA,		/* uniform layers, heads split at run time */
	ALLOC_LAYER,		/* per-layer sizes from the curves (XKV) */
	ALLOC_KVX		/* per-(layer, head) sizes from the curves */
};

enum alloc_gran {
	GRAN_LAYER_HEAD,	/* one item per (layer, KV head) */
	GRAN_LAYER,		/* one item per layer, heads share its level */
	GRAN_HEAD		/* layer totals fixed, heads split them */
};

typedef struct alloc_opts {
	int		 method;	/* enum alloc_method */
	int		 mode;		/* kvx_plan_mode (kvx only) */
	int		 gran;		/* enum alloc_gran (kvx only) */
	const char	*solver;	/* greedy | dp | glpk */
	solve_params	 sp;
	double		 budget;	/* share of the full cache, (0, 1] */
	int64_t		 ref_context;
	int		 floor_tokens;	/* tokens every head keeps anyway */
	int		 bytes_per_elem;/* 4: the CPU cache is f32 */
	int		 page;		/* token step at ref_context; 0: none */
	double		 min_frac, max_frac;	/* per head */
	double		 layer_min, layer_max;	/* per layer, share of its
						   full cost */
	int		 shards;	/* 0 or 1: none */
	const double	*layer_w;	/* [n_layer] or NULL: all 1 */
	double		 beta;		/* pyramid: first / last ratio knob */
	/* the retrieval curves (layer and kvx): a floor on the plan's mean
	 * retrieval retention (< 0: none), and its weight beside the prose
	 * retention in the objective (< 0, the default: the one chosen for
	 * the budget share, 1 from 15% up, 0.3 below; unused without the
	 * curves) */
	double		 retrieval_floor;
	double		 retrieval_weight;
} alloc_opts;

typedef struct alloc_report {
	int		 solved;	/* a solver ran */
	solve_result	 res;		/* its result (level freed) */
	double		 objective;	/* sum_l w_l sum_h R of the plan */
	double		 predicted;	/* mean R of the plan, -1 unknown */
	double		 uniform;	/* mean R of uniform, -1 unknown */
	double		 retrieval;	/* mean Rr of the plan, -1 unknown */
	double		 retrieval_uniform;	/* mean Rr of uniform */
	double		*head_frac;	/* [L*Hkv] static shares behind the
					   plan (a hybrid plan's estimate) */
} alloc_report;

void		 alloc_opts_init(alloc_opts *);
/* Name of a method, and back (-1 when unknown). */
const char	*alloc_method_name(int);
int		 alloc_method_parse(const char *);
/* Whether the method needs retention curves. */
int		 alloc_needs_profile(int method);

/*
 * Fill plan->budgets (the plan comes from plan_new with the right mode)
 * by the method.  prof may be NULL for uniform, pyramid and ada; with a
 * profile the report carries the predicted retention.  KVX_ERR_PLAN when
 * the budget is infeasible, KVX_ERR_UNSUPPORTED when the solver cannot
 * honour a constraint; the message says which.
 */
kvx_status	 alloc_run(const alloc_opts *, const profile *prof,
		     kvx_plan *plan, alloc_report *rep);
void		 alloc_report_free(alloc_report *);
/*
 * The report of plan's budgets after they were moved a of the way from
 * base's (the report of uniform or ada budgets of the same shape) toward
 * the plan's own: the head shares blended the same way, the predicted
 * retention, objective and retrieval retention recomputed; the uniform
 * figures stay.
 */
void		 alloc_blend(const alloc_opts *, const profile *prof,
		     const kvx_plan *plan, const alloc_report *base, double a,
		     alloc_report *rep);

#endif
