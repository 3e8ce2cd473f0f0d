/*
 * bench-quant.c - weight bandwidth of quant_matvec_f32, the decode path.
 * SPDX-License-Identifier: MIT
 *
 * For every weight type the runtime loads (quant_supported) and every
 * matrix shape of a SmolLM2-135M decode step, times quant_matvec_f32 over
 * enough copies of the matrix to overflow the caches, as a decode step
 * reads each layer's weights once, and prints the GB/s of weight bytes
 * read.  Beside each, a read-only sweep of the same bytes, in the same
 * order and split over the same threads, is timed in the same run: the
 * ratio of the two is the share of this machine's read bandwidth that the
 * product reaches.  The step column weighs the shapes as one decode step
 * does (30 layers, then the output matrix).  Each figure is the best of
 * the runs; matvec and sweep alternate, so both see the same noise.
 *
 * usage: bench-quant [-m MiB] [-r runs] [-t threads]
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "pool.h"
#include "quant.h"
#include "util.h"

#define N_EMBD		576
#define N_KV		192	/* 3 KV heads of 64 */
#define N_FF		1536
#define N_VOCAB		49152
#define N_LAYER		30
#define MAX_THREADS	64

/* One matrix shape of a decode step and how often a step reads it. */
static const struct shape {
	const char	*name;
	int		 rows, cols;
	int		 per_step;
} shapes[] = {
	{ "attn_q/output", N_EMBD, N_EMBD, 2 * N_LAYER },
	{ "attn_k/v", N_KV, N_EMBD, 2 * N_LAYER },
	{ "ffn_gate/up", N_FF, N_EMBD, 2 * N_LAYER },
	{ "ffn_down", N_EMBD, N_FF, N_LAYER },
	{ "output", N_VOCAB, N_EMBD, 1 },
};
#define N_SHAPE	(sizeof shapes / sizeof shapes[0])

/* What the pool's threads run: one pass over every copy of a matrix. */
struct job {
	const uint8_t	*base;		/* ncopy matrices, mb bytes apart */
	size_t		 mb, rb;	/* matrix and row bytes */
	int		 ncopy, type, rows, cols;
	int		 sweep;		/* read the bytes instead */
	const float	*x;
	float		*y;
	uint64_t	 sink[MAX_THREADS];
};

typedef uint64_t v4u64 __attribute__((vector_size(32)));

/* XOR of n bytes at p: a read of every byte that nothing can skip. */
static uint64_t
sweep(const uint8_t *p, size_t n)
{
	v4u64 a = { 0 }, b = { 0 }, v;
	uint64_t s;
	size_t i = 0;

	for (; i + 64 <= n; i += 64) {
		memcpy(&v, p + i, 32);
		a ^= v;
		memcpy(&v, p + i + 32, 32);
		b ^= v;
	}
	a ^= b;
	s = a[0] ^ a[1] ^ a[2] ^ a[3];
	for (; i < n; i++)
		s ^= p[i];
	return s;
}

/* Worker: this thread's rows of every copy, split as model.c splits them. */
static void
work(void *arg, int ith, int nth)
{
	struct job *j = arg;
	const uint8_t *m;
	uint64_t s = 0;
	int c, r0, r1;

	pool_range(j->rows, ith, nth, &r0, &r1);
	if (r1 <= r0)
		return;
	for (c = 0; c < j->ncopy; c++) {
		m = j->base + (size_t)c * j->mb;
		if (j->sweep)
			s ^= sweep(m + (size_t)r0 * j->rb,
			    (size_t)(r1 - r0) * j->rb);
		else
			quant_matvec_f32(j->type, m, j->cols, r0, r1, j->x,
			    j->y);
	}
	j->sink[ith] = s;
}

/* Best wall time of runs passes, matvec in t[0] and sweep in t[1]. */
static void
timed(kvx_pool *pool, struct job *j, int runs, double t[2])
{
	double t0, dt;
	int k;

	t[0] = t[1] = 1e30;
	for (k = 0; k < 2 * runs; k++) {
		j->sweep = k % 2;
		t0 = kvx__now();
		pool_run(pool, work, j);
		dt = kvx__now() - t0;
		if (dt < t[k % 2])
			t[k % 2] = dt;
	}
}

/* Fails with the usage line. */
static int
usage(void)
{
	fprintf(stderr, "usage: bench-quant [-m MiB] [-r runs] "
	    "[-t threads]\n");
	return 2;
}

int
main(int argc, char **argv)
{
	long mib = 64, runs = 5, nth = 1;
	size_t budget, arena_bytes, mb, sb, i;
	double t[2], step_mb, step_t[2];
	uint64_t seed = 1, r;
	kvx_pool *pool;
	struct job j;
	uint8_t *arena;
	float *x, *y;
	int c, type;

	while ((c = getopt(argc, argv, "m:r:t:")) != -1) {
		switch (c) {
		case 'm':
			if (kvx__parse_long(optarg, 1, 1 << 16, &mib) != 0)
				return usage();
			break;
		case 'r':
			if (kvx__parse_long(optarg, 1, 1000, &runs) != 0)
				return usage();
			break;
		case 't':
			if (kvx__parse_long(optarg, 1, MAX_THREADS, &nth) != 0)
				return usage();
			break;
		default:
			return usage();
		}
	}
	if (optind != argc)
		return usage();

	/* Room for the largest matrix (F32 output) once, or the budget. */
	budget = (size_t)mib << 20;
	arena_bytes = (size_t)N_VOCAB * N_EMBD * sizeof(float);
	if (arena_bytes < budget)
		arena_bytes = budget;
	arena = malloc(arena_bytes);
	x = malloc(N_FF * sizeof *x);
	y = malloc(N_VOCAB * sizeof *y);
	if ((pool = pool_new((int)nth)) == NULL || arena == NULL ||
	    x == NULL || y == NULL) {
		fprintf(stderr, "bench-quant: out of memory\n");
		return 1;
	}
	/*
	 * Bytes from [0x30, 0x3c) make every half, bf16 and f32 that the
	 * blocks hold a normal number, so no NaN or subnormal slows the
	 * arithmetic; any bytes serve as the packed integers.
	 */
	for (i = 0; i < arena_bytes; i += 8) {
		r = kvx__splitmix64(&seed);
		for (c = 0; c < 8 && i + (size_t)c < arena_bytes; c++)
			arena[i + (size_t)c] = (uint8_t)(0x30 + (r >> 8 * c &
			    0xff) % 12);
	}
	for (i = 0; i < N_FF; i++)
		x[i] = (float)(kvx__splitmix64(&seed) >> 11) * 0x1p-53f - 0.5f;

	printf("# quant_matvec_f32 on SmolLM2-135M shapes, %ld thread%s, "
	    "best of %ld, at least %ld MiB a pass\n", nth, nth > 1 ? "s" : "",
	    runs, mib);
	printf("# each cell: GB/s of weights (ratio to a read-only sweep of "
	    "the same bytes)\n");
	printf("| type |");
	for (i = 0; i < N_SHAPE; i++)
		printf(" %s %dx%d |", shapes[i].name, shapes[i].rows,
		    shapes[i].cols);
	printf(" step | sweep, step |\n|---|");
	for (i = 0; i < N_SHAPE + 2; i++)
		printf("---|");
	printf("\n");
	for (type = 0; type <= GGML_BF16; type++) {
		if (!quant_supported(type))
			continue;
		printf("| %s |", ggml_type_name(type));
		step_mb = step_t[0] = step_t[1] = 0;
		for (i = 0; i < N_SHAPE; i++) {
			memset(&j, 0, sizeof j);
			j.type = type;
			j.rows = shapes[i].rows;
			j.cols = shapes[i].cols;
			j.rb = (size_t)j.cols / ggml_type_block_elems(type) *
			    ggml_type_block_bytes(type);
			mb = j.rb * (size_t)j.rows;
			j.mb = mb;
			j.ncopy = budget > mb ? (int)(budget / mb) : 1;
			j.base = arena;
			j.x = x;
			j.y = y;
			timed(pool, &j, (int)runs, t);
			sb = mb * (size_t)j.ncopy;
			printf(" %.2f (%.2f) |", sb / t[0] * 1e-9, t[1] / t[0]);
			step_mb += (double)mb * shapes[i].per_step;
			step_t[0] += t[0] / j.ncopy * shapes[i].per_step;
			step_t[1] += t[1] / j.ncopy * shapes[i].per_step;
		}
		printf(" %.2f (%.2f) | %.2f |\n", step_mb / step_t[0] * 1e-9,
		    step_t[1] / step_t[0], step_mb / step_t[1] * 1e-9);
		fflush(stdout);
	}
	pool_free(&pool);
	free(arena);
	free(x);
	free(y);
	return 0;
}
