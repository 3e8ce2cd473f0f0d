/*
 * validate.h - a solved plan checked against uniform budgets on retrieval
 * probes run through the runtime, and moved toward uniform where it
 * loses.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * The profile rates a plan by how closely each layer's attention output
 * follows the full cache's, one layer at a time.  That cannot see a task
 * that compression itself helps (dropping the repeated filler around a
 * pass key, so that the heads that copy it see it more clearly), nor the
 * compounding of many compressed layers.  The check measures the task
 * instead: probes of the calibration text (probe.h) go through real
 * contexts of the model under the plan, under uniform budgets, and under
 * blends of the two (each head's or layer's share a + (1 - a) of the way
 * from uniform's to the plan's), with the answer teacher-forced; the
 * plan kept is the blend nearest the plan that scores at least as well
 * as uniform budgets on the same probes.
 */
#ifndef KVX_VALIDATE_H
#define KVX_VALIDATE_H

#include <stdint.h>

#include "kvx.h"
#include "plan.h"

/* Blends tried, the plan first (a = 1), uniform budgets last (a = 0). */
#define VAL_LEVELS 5

typedef struct val_opts {
	int		 probes;	/* probes run (at least 1) */
	int		 tokens;	/* a probe's tokens */
	int		 statements;	/* statements a probe holds */
	int		 hay;		/* enum prof_hay */
	int		 after;		/* 1: the question comes after the
					   compressed context, 0: inside
					   the prompt that is compressed */
	uint64_t	 seed;		/* where the probes are cut */
	int		 device;	/* KVX_DEVICE_* of the contexts */
	int		 progress;	/* progress lines on stderr */
} val_opts;

typedef struct val_report {
	int		 probes;
	double		 alpha[VAL_LEVELS];	/* 1, 0.75, 0.5, 0.25, 0 */
	double		 logp[VAL_LEVELS];	/* mean over the probes of
						   the answer's log-probability
						   (nats, its tokens summed) */
	int		 found[VAL_LEVELS];	/* probes whose every answer
						   token was the most likely */
	int		 chosen;	/* the level kept */
	double		 seconds;
} val_report;

/* out's budgets = base's + a (plan's - base's); the three plans of one
 * mode and shape. */
void		 val_blend(const kvx_plan *plan, const kvx_plan *base,
		     double a, kvx_plan *out);

/*
 * Run o->probes probes cut from hay (n_hay tokens of calibration text,
 * at least o->tokens) through contexts of m under each blend of plan
 * and base, fill rep and set rep->chosen to the first level (the largest
 * a) whose mean log-probability and count of answers found are both at
 * least base's.  KVX_ERR_ARG when the text is shorter than a probe, else
 * the runtime's errors.
 */
kvx_status	 val_run(kvx_model *m, const int32_t *hay, int64_t n_hay,
		     const kvx_plan *plan, const kvx_plan *base,
		     const val_opts *o, val_report *rep);

#endif
