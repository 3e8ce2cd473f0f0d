/*
 * bench-quant.c - weight bandwidth of quant_matvec_f32, the decode path.
 * SPDX-License-Identifier: MIT
 *
 * For every weight type the runtime loads (quant_supported) and every
 * matrix shape of a decode step, times quant_matvec_f32 over
 * enough copies of the matrix to overflow the caches, as a decode step
 * reads each layer's weights once, and prints the GB/s of weight bytes
 * read.  Beside each, a read-only sweep of the same bytes, in the same
 * order and split over the same threads, is timed in the same run: the
 * ratio of the two is the share of this machine's read bandwidth that the
 * product reaches.  The step column weighs the shapes as one decode step
 * does (every layer, then the output matrix).  Each figure is the best of
 * the runs; matvec and sweep alternate, so both see the same noise.
 *
 * -M picks the shapes (SmolLM2-135M by default, Qwen2.5-Coder-0.5B or
 * Gemma 3 270M), -T one type, -A the AVX2 kernels where the processor has
 * AVX-512 too, -H asks for the matrices on 2 MiB pages (madvise
 * MADV_HUGEPAGE: a model's mapped GGUF file is on 4 KiB pages).
 *
 * usage: bench-quant [-AH] [-M smollm2|qwen2|gemma3] [-m MiB] [-r runs]
 *     [-t threads] [-T type]
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/mman.h>

#include "gguf.h"
#include "pool.h"
#include "quant.h"
#include "util.h"

#define MAX_THREADS	64
#define HUGE_PAGE	((size_t)2 << 20)
#define MAX_SHAPE	6

/* One matrix shape of a decode step and how often a step reads it. */
struct shape {
	const char	*name;
	int		 rows, cols;
	int		 per_step;
};

/* The shapes of one model's decode step, its layers then the output; a
 * shape of 0 rows ends a shorter list. */
static const struct model {
	const char	*name;
	struct shape	 s[MAX_SHAPE];
} models[] = {
	{ "smollm2", {			/* 30 layers, 9/3 heads of 64 */
		{ "attn_q/output", 576, 576, 2 * 30 },
		{ "attn_k/v", 192, 576, 2 * 30 },
		{ "ffn_gate/up", 1536, 576, 2 * 30 },
		{ "ffn_down", 576, 1536, 30 },
		{ "output", 49152, 576, 1 } } },
	{ "qwen2", {			/* 24 layers, 14/2 heads of 64 */
		{ "attn_q/output", 896, 896, 2 * 24 },
		{ "attn_k/v", 128, 896, 2 * 24 },
		{ "ffn_gate/up", 4864, 896, 2 * 24 },
		{ "ffn_down", 896, 4864, 24 },
		{ "output", 151936, 896, 1 } } },
	{ "gemma3", {			/* 18 layers, 4/1 heads of 256 */
		{ "attn_q", 1024, 640, 18 },
		{ "attn_output", 640, 1024, 18 },
		{ "attn_k/v", 256, 640, 2 * 18 },
		{ "ffn_gate/up", 2048, 640, 2 * 18 },
		{ "ffn_down", 640, 2048, 18 },
		{ "output", 262144, 640, 1 } } },
};
#define N_MODEL	(sizeof models / sizeof models[0])

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
	fprintf(stderr, "usage: bench-quant [-AH] [-M smollm2|qwen2|gemma3] "
	    "[-m MiB] [-r runs] [-t threads] [-T type]\n");
	return 2;
}

/* Bytes of a rows x cols matrix of type, 0 where cols does not fill its
 * blocks. */
static size_t
matrix_bytes(int type, int rows, int cols)
{
	int be = ggml_type_block_elems(type);

	if (cols % be != 0)
		return 0;
	return (size_t)cols / be * ggml_type_block_bytes(type) * rows;
}

/* One table row: type on every shape of m, and the step's rate. */
static void
bench_type(kvx_pool *pool, const struct model *m, int type, uint8_t *arena,
    size_t budget, int runs, const float *x, float *y)
{
	const struct shape *sh;
	double t[2], step_mb = 0, step_t[2] = { 0, 0 };
	struct job j;
	size_t mb, sb;
	int i, full = 1;

	printf("| %s |", ggml_type_name(type));
	for (i = 0; i < MAX_SHAPE && m->s[i].rows > 0; i++) {
		sh = &m->s[i];
		if ((mb = matrix_bytes(type, sh->rows, sh->cols)) == 0) {
			printf(" - |");
			full = 0;
			continue;
		}
		memset(&j, 0, sizeof j);
		j.type = type;
		j.rows = sh->rows;
		j.cols = sh->cols;
		j.rb = mb / (size_t)sh->rows;
		j.mb = mb;
		j.ncopy = budget > mb ? (int)(budget / mb) : 1;
		j.base = arena;
		j.x = x;
		j.y = y;
		timed(pool, &j, runs, t);
		sb = mb * (size_t)j.ncopy;
		printf(" %.2f (%.2f) |", sb / t[0] * 1e-9, t[1] / t[0]);
		step_mb += (double)mb * sh->per_step;
		step_t[0] += t[0] / j.ncopy * sh->per_step;
		step_t[1] += t[1] / j.ncopy * sh->per_step;
	}
	if (full)
		printf(" %.2f (%.2f) | %.2f |\n", step_mb / step_t[0] * 1e-9,
		    step_t[1] / step_t[0], step_mb / step_t[1] * 1e-9);
	else
		printf(" - | - |\n");
	fflush(stdout);
}

int
main(int argc, char **argv)
{
	long mib = 64, runs = 5, nth = 1;
	const struct model *m = &models[0];
	size_t budget, arena_bytes, mb, i, k;
	uint64_t seed = 1, r;
	kvx_pool *pool;
	uint8_t *arena;
	float *x, *y;
	int c, type, only = -1, avx2 = 0, huge = 0, maxcols = 0, maxrows = 0;

	while ((c = getopt(argc, argv, "AHM:m:r:t:T:")) != -1) {
		switch (c) {
		case 'A':
			avx2 = 1;
			break;
		case 'H':
			huge = 1;
			break;
		case 'M':
			for (k = 0; k < N_MODEL; k++)
				if (strcmp(optarg, models[k].name) == 0)
					break;
			if (k == N_MODEL)
				return usage();
			m = &models[k];
			break;
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
		case 'T':
			for (type = 0; type <= GGML_BF16; type++)
				if (quant_supported(type) && strcasecmp(optarg,
				    ggml_type_name(type)) == 0)
					break;
			if (type > GGML_BF16)
				return usage();
			only = type;
			break;
		default:
			return usage();
		}
	}
	if (optind != argc)
		return usage();
	quant_use_avx512(!avx2);

	/* Room for the largest matrix of the types run once, or the
	 * budget. */
	budget = (size_t)mib << 20;
	arena_bytes = budget;
	for (i = 0; i < MAX_SHAPE && m->s[i].rows > 0; i++) {
		if (m->s[i].cols > maxcols)
			maxcols = m->s[i].cols;
		if (m->s[i].rows > maxrows)
			maxrows = m->s[i].rows;
		for (type = 0; type <= GGML_BF16; type++) {
			if (!quant_supported(type) || (only >= 0 &&
			    type != only))
				continue;
			mb = matrix_bytes(type, m->s[i].rows, m->s[i].cols);
			if (mb > arena_bytes)
				arena_bytes = mb;
		}
	}
	/* whole 2 MiB pages, so that -H can put all of it on huge pages */
	arena_bytes = (arena_bytes + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
	arena = aligned_alloc(HUGE_PAGE, arena_bytes);
	if (arena != NULL && huge && madvise(arena, arena_bytes,
	    MADV_HUGEPAGE) != 0)
		fprintf(stderr, "bench-quant: madvise: no huge pages, "
		    "timing 4 KiB pages\n");
	x = malloc((size_t)maxcols * sizeof *x);
	y = malloc((size_t)maxrows * sizeof *y);
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
	for (c = 0; c < maxcols; c++)
		x[c] = (float)(kvx__splitmix64(&seed) >> 11) * 0x1p-53f - 0.5f;

	printf("# quant_matvec_f32 on %s shapes, %ld thread%s, %s kernels, "
	    "%s pages, best of %ld, at least %ld MiB a pass\n", m->name, nth,
	    nth > 1 ? "s" : "", quant_use_avx512(!avx2) ? "AVX-512" : "AVX2",
	    huge ? "2 MiB" : "default", runs, mib);
	printf("# each cell: GB/s of weights (ratio to a read-only sweep of "
	    "the same bytes)\n");
	printf("| type |");
	for (i = 0; i < MAX_SHAPE && m->s[i].rows > 0; i++)
		printf(" %s %dx%d |", m->s[i].name, m->s[i].rows,
		    m->s[i].cols);
	printf(" step | sweep, step |\n|---|");
	for (k = 0; k < i + 2; k++)
		printf("---|");
	printf("\n");
	for (type = 0; type <= GGML_BF16; type++)
		if (quant_supported(type) && (only < 0 || type == only))
			bench_type(pool, m, type, arena, budget, (int)runs, x,
			    y);
	pool_free(&pool);
	free(arena);
	free(x);
	free(y);
	return 0;
}
