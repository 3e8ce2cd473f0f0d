/*
 * bench-solve.c - time the allocation solvers on SmolLM2-sized problems.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * 30 layers x 3 KV heads = 90 items, 256 levels of 32 tokens, 256 bytes
 * per token per head; concave curves 1 - (1 - f)^a and non-concave ones
 * with a sigmoid bump; budgets from 10% to 90% of the full cache.  Prints
 * the median wall time of each solver and its ratio to greedy, and
 * whether the objectives agree with dp (greedy only where it is exact).
 *
 * usage: bench-solve [-r runs] [-s seed]
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "solve.h"

#define N_ITEM	90
#define N_LEVEL	256

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;

/* xorshift64*, so that every run times the same problems. */
static double
runif(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (double)((rng_state * 2685821657736338717ULL) >> 11) /
	    9007199254740992.0;
}

/* Fill curves and costs for one kind of problem. */
static void
make(int concave, double *value, int64_t *cost, double *frac)
{
	int i, j;

	for (j = 0; j < N_LEVEL; j++)
		frac[j] = (double)(j + 1) / N_LEVEL;
	for (i = 0; i < N_ITEM; i++) {
		double a = 1.5 + 20 * runif(), w = 0.5 + runif();
		double c0 = 0.2 + 0.6 * runif(), h = 0.3 * runif();

		for (j = 0; j < N_LEVEL; j++) {
			double f = frac[j], r = 1 - pow(1 - f, a);

			if (!concave)
				r = (1 - h) * r + h / (1 + exp(-60 * (f - c0)));
			value[i * N_LEVEL + j] = w * r;
			cost[i * N_LEVEL + j] = (int64_t)(j + 1) * 32 * 256;
		}
	}
}

/* Ascending order of doubles. */
static int
cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median wall time of runs solves; the last result stays in *res. */
static double
timed(const char *solver, const solve_problem *p, const solve_params *par,
    int runs, solve_result *res, kvx_status *st)
{
	double t[64];
	int k;

	for (k = 0; k < runs; k++) {
		double t0 = kvx__now();

		if (k > 0)
			solve_result_free(res);
		*st = solve_run(solver, p, par, res);
		t[k] = kvx__now() - t0;
	}
	qsort(t, (size_t)runs, sizeof *t, cmp);
	return runs % 2 ? t[runs / 2] : 0.5 * (t[runs / 2 - 1] + t[runs / 2]);
}

int
main(int argc, char **argv)
{
	static double value[N_ITEM * N_LEVEL];
	static int64_t cost[N_ITEM * N_LEVEL];
	static const double share[] = { 0.1, 0.3, 0.5, 0.7, 0.9 };
	double frac[N_LEVEL];
	solve_problem p;
	solve_params par;
	int runs = 5, c, concave;
	size_t b;

	while ((c = getopt(argc, argv, "r:s:")) != -1) {
		switch (c) {
		case 'r':
			runs = atoi(optarg);
			break;
		case 's':
			rng_state = strtoull(optarg, NULL, 0) | 1;
			break;
		default:
			fprintf(stderr, "usage: bench-solve [-r runs] "
			    "[-s seed]\n");
			return 2;
		}
	}
	if (runs < 1 || runs > 64) {
		fprintf(stderr, "bench-solve: -r must be 1..64\n");
		return 2;
	}
	solve_params_init(&par);
	printf("# %d items x %d levels (30 layers x 3 KV heads), median of "
	    "%d runs, one thread\n", N_ITEM, N_LEVEL, runs);
	printf("%-12s %6s %10s %10s %10s %8s %8s  %s\n", "curves", "budget",
	    "greedy ms", "dp ms", "glpk ms", "dp/gr", "glpk/gr", "objective");
	for (concave = 1; concave >= 0; concave--) {
		make(concave, value, cost, frac);
		for (b = 0; b < sizeof share / sizeof share[0]; b++) {
			solve_result rg, rd, rl;
			kvx_status sg, sd, sl;
			double tg, td, tl;
			const char *agree;
			char gl[32], gr[32];

			memset(&p, 0, sizeof p);
			p.n_item = N_ITEM;
			p.n_level = N_LEVEL;
			p.frac = frac;
			p.value = value;
			p.cost = cost;
			p.budget = (int64_t)(share[b] * N_ITEM * N_LEVEL) *
			    32 * 256;
			tg = timed("greedy", &p, &par, runs, &rg, &sg);
			td = timed("dp", &p, &par, runs, &rd, &sd);
			tl = timed("glpk", &p, &par, runs, &rl, &sl);
			if (sd != KVX_OK)
				agree = "dp failed";
			else if (sl == KVX_OK && fabs(rl.objective -
			    rd.objective) > 1e-6 * fabs(rd.objective))
				agree = "glpk differs";
			else if (sg == KVX_OK && rg.status == SOLVE_OPTIMAL &&
			    fabs(rg.objective - rd.objective) > 1e-9)
				agree = "greedy differs";
			else
				agree = "agree";
			if (sl == KVX_OK) {
				snprintf(gl, sizeof gl, "%.3f", tl * 1e3);
				snprintf(gr, sizeof gr, "%.1f", tl / tg);
			} else {
				snprintf(gl, sizeof gl, "-");
				snprintf(gr, sizeof gr, "-");
			}
			printf("%-12s %5.0f%% %10.3f %10.3f %10s %8.1f %8s  "
			    "%s, greedy %s", concave ? "concave" :
			    "non-concave", share[b] * 100, tg * 1e3, td * 1e3,
			    gl, td / tg, gr, agree, rg.status ==
			    SOLVE_OPTIMAL ? "exact" : "gap");
			if (rg.status != SOLVE_OPTIMAL)
				printf(" %.2g", rg.gap);
			putchar('\n');
			solve_result_free(&rg);
			solve_result_free(&rd);
			solve_result_free(&rl);
		}
	}
	return 0;
}
