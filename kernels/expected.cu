/*
 * expected.cu - Expected Attention scoring: the twins of sel_ea_stats and
 * sel_ea_score in runtime/select.c.
 * SPDX-License-Identifier: MIT
 *
 * The statistics are small (one mean and one covariance per query head)
 * and run in one block per head.  The scores are one pass over the keys;
 * two more launches normalise each head's weights over the keys past the
 * sinks (partial maxima and sums over many blocks, merged by the last)
 * and reduce the query group.  With a diagonal covariance or none,
 * a warp takes a key, each lane every 32nd element of it.
 *
 * The statistics of the whole prompt (past 256 queries) are sums over
 * many blocks: with a full covariance the d x d sums of products are a
 * tiled product (ea_gram_k), each thread a 4 x 4 tile of them in
 * registers over shared tiles of the queries.
 *
 * A full covariance makes the scores a matrix product, K Sigma, then a
 * dot of each row with its key (ea_sigma_k: register tiles of keys by
 * columns over shared tiles of K and Sigma).  With fewer window queries
 * than dimensions (nq <= d) the rows are not the d rows of the
 * covariance: Sigma = (1/nq) sum_j w_j w_j' for the centred, rotated
 * queries w_j, so k' Sigma k is the mean of (w_j . k)^2, nq + 1 dot
 * products a key with the mean (ea_rows_k: a thread takes a key, the
 * rows read from shared memory a tile at a time).
 */
#include <mma.h>

#include "device.cuh"

#define EA_KMAX 8	/* key elements per lane: head_dim up to 256 */
#define EA_WPB 8	/* warps (keys) per block of the diagonal logits */
#define EA_T 64		/* threads (keys) of a final reduction block */
#define EA_VL 8		/* 16-byte loads of values a thread in flight */
#define EA_GMAX 256	/* most query heads a KV head of the scores */
#define EA_NK 1024	/* keys of a normalisation block */
#define EA_NT 256	/* threads of a normalisation block */
#define EA_TW 4		/* warps (16 keys each) of a tensor-core logits block */
#define EA_TCW(DP) ((DP) == 64 ? 64 : 16)	/* columns of Sigma a chunk
						   in shared memory */
#define EA_SB 8		/* blocks a head of the covariance's split */
#define EA_SL 8		/* entries a thread of the split (d <= 128) */
#define EA_TH 1024	/* threads of the launches with a block a head */
#define EA_KB 128	/* keys (threads) per block of the full logits */
#define EA_JR 16	/* rows (mean, w_j or Sigma's) of a shared tile */
#define EA_JC 32	/* columns of a shared tile */
#define EA_SHMAX 49152	/* shared bytes the statistics take without opt-in */
#define EA_NQ_ONE 256	/* most queries of the one-block statistics */
#define EA_NCH 32	/* most blocks a query head of the moments */
#define EA_MT 256	/* threads of a moments block */
#define EA_MSH 32768	/* shared bytes of a moments block's queries */
#define EA_MB 64	/* rows and columns of a tiled moments block */
#define EA_MR 4		/* rows and columns of a thread's sums */
#define EA_MK 32	/* queries of a tiled moments block's shared tile */
#define EA_MQ 128	/* fewest queries a tiled moments block */
#define EA_MW 3		/* tiled moments blocks a multiprocessor holds */
#define EA_CB 4		/* blocks a head of the carried covariance */
#define EA_CT 256	/* threads of a carry block */

/* Normalisation blocks of a row of n logits. */
static int
ea_nch(int n)
{
	return (n + EA_NK - 1) / EA_NK;
}

/* Floats of the logits and the normalisers' partials in the scratch. */
static size_t
ea_tc_at(int nseg, int g, int n)
{
	return (size_t)nseg * g * ((size_t)n + 2 * (size_t)ea_nch(n));
}

/* x reduced to [-pi, pi] in double, as a float. */
static __device__ __forceinline__ float
ea_reduce(double x)
{
	return (float)fma(-rint(x * 0.15915494309189535), 6.283185307179586,
	    x);
}

/* Mean of cos and sin of (n + j) f over j in [0, F): the Dirichlet
 * kernel of avg_rot in select.c.  The angles are reduced in double and
 * their sines taken in float (relative error about 1e-7, where the
 * double functions' dependent chains held a block's other threads for
 * microseconds). */
static __device__ void
ea_avg_rot(int n, int F, double f, double *c, double *s)
{
	float h = sinf((float)(f / 2)), r, sn, cs;

	r = fabsf(h) < 1e-12f ? 1.0f : sinf(ea_reduce(F * f / 2)) /
	    ((float)F * h);
	sincosf(ea_reduce((n + (F - 1) / 2.0) * f), &sn, &cs);
	*c = (double)r * cs;
	*s = (double)r * sn;
}

/*
 * Block i of a covariance of P pairs: pairs A and B (A = B for a diagonal
 * covariance, cov 1), and their dims (a0, a1) and (b0, b1): (2A, 2A + 1),
 * or (A, A + P) with halves.
 */
static __device__ __forceinline__ void
ea_pairs(int i, int P, int cov, int halves, int *A, int *B, int *a0,
    int *a1, int *b0, int *b1)
{
	*A = cov == 1 ? i : i / P;
	*B = cov == 1 ? i : i % P;
	*a0 = halves ? *A : 2 * *A;
	*a1 = halves ? *A + P : 2 * *A + 1;
	*b0 = halves ? *B : 2 * *B;
	*b1 = halves ? *B + P : 2 * *B + 1;
}

/*
 * The 2 x 2 block (s00 s01; s10 s11) of pairs A and B of a covariance,
 * rotated by pair A's averaged rotation (ca, sa) on the left and pair B's
 * (cb, sb) on the right, stored at dims (a0, a1) x (b0, b1) of the d x d
 * cv, or, for a diagonal covariance (cov 1, A = B), its diagonal only.
 */
static __device__ __forceinline__ void
ea_rot_block(double s00, double s01, double s10, double s11, double ca,
    double sa, double cb, double sb, int cov, int d, int a0, int a1, int b0,
    int b1, float *cv)
{
	double t00 = ca * s00 - sa * s10, t01 = ca * s01 - sa * s11;
	double t10 = sa * s00 + ca * s10, t11 = sa * s01 + ca * s11;

	if (cov == 1) {
		cv[a0] = (float)(t00 * cb - t01 * sb);
		cv[a1] = (float)(t10 * sb + t11 * cb);
		return;
	}
	cv[(size_t)a0 * d + b0] = (float)(t00 * cb - t01 * sb);
	cv[(size_t)a0 * d + b1] = (float)(t00 * sb + t01 * cb);
	cv[(size_t)a1 * d + b0] = (float)(t10 * cb - t11 * sb);
	cv[(size_t)a1 * d + b1] = (float)(t10 * sb + t11 * cb);
}

/*
 * One block per query head: its nq queries rotated back to their pre-RoPE
 * values into u (nq x d), their mean, and the rotated mean and covariance
 * (2 x 2 blocks of pairs, in double, as the CPU twin).  Pair i is dims
 * (2i, 2i + 1), or (i, i + d/2) with halves.  u lives in shared memory
 * when it fits (ush): the covariance rereads it nq times a pair, and from
 * L2 those reads made this one block per head the slowest part of the
 * scoring; the w_j then go to the scratch.  The pair frequencies are
 * taken once (fr), not once a query.
 */
__global__ void __launch_bounds__(EA_TH)
ea_stats_k(const float *q, long long qhs, long long qps, int nq, int p0,
    int n, int F, float theta, int halves, int d, int cov, float *mu,
    float *co, float *scr, int ush)
{
	extern __shared__ double esh[];
	double *m = esh, *C = esh + d, *S = C + d / 2, *fr = S + d / 2;
	const float *qi = q + (size_t)blockIdx.x * qhs;
	float *ug = scr + (size_t)blockIdx.x * nq * d;
	float *u = ush ? (float *)(fr + d / 2) : ug;
	float *mo = mu + (size_t)blockIdx.x * d;
	int P = d / 2, i, j, A, B, nb, a0, a1, b0, b1;
	size_t cs = cov == 1 ? (size_t)d : (size_t)d * d;
	float *cv = co != NULL ? co + blockIdx.x * cs : NULL;

	for (i = threadIdx.x; i < P; i += blockDim.x)
		fr[i] = pow((double)theta, -(double)(2 * i) / d);
	__syncthreads();
	for (i = threadIdx.x; i < nq * P; i += blockDim.x) {
		double sn, c;
		float x0, x1;

		j = i / P;
		A = i % P;
		a0 = halves ? A : 2 * A;
		a1 = halves ? A + P : 2 * A + 1;
		sincos((double)(p0 + j) * fr[A], &sn, &c);
		x0 = qi[j * qps + a0];
		x1 = qi[j * qps + a1];
		u[(size_t)j * d + a0] = (float)(x0 * c + x1 * sn);
		u[(size_t)j * d + a1] = (float)(-x0 * sn + x1 * c);
	}
	for (i = threadIdx.x; i < P; i += blockDim.x)
		ea_avg_rot(n, F, fr[i], &C[i], &S[i]);
	__syncthreads();
	for (i = threadIdx.x; i < d; i += blockDim.x) {
		double s = 0;

		for (j = 0; j < nq; j++)
			s += u[(size_t)j * d + i];
		m[i] = s / nq;
	}
	__syncthreads();
	for (i = threadIdx.x; i < P; i += blockDim.x) {
		a0 = halves ? i : 2 * i;
		a1 = halves ? i + P : 2 * i + 1;
		mo[a0] = (float)(C[i] * m[a0] - S[i] * m[a1]);
		mo[a1] = (float)(S[i] * m[a0] + C[i] * m[a1]);
	}
	if (cov == 2)
		return;
	nb = co == NULL ? 0 : cov == 1 ? P : P * P;
	for (i = threadIdx.x; i < nb; i += blockDim.x) {
		double s00 = 0, s01 = 0, s10 = 0, s11 = 0;

		ea_pairs(i, P, cov, halves, &A, &B, &a0, &a1, &b0, &b1);
		for (j = 0; j < nq; j++) {
			const float *r = u + (size_t)j * d;
			double x0 = r[a0] - m[a0], x1 = r[a1] - m[a1];
			double y0 = r[b0] - m[b0], y1 = r[b1] - m[b1];

			s00 += x0 * y0;
			s01 += x0 * y1;
			s10 += x1 * y0;
			s11 += x1 * y1;
		}
		s00 /= nq;
		s01 /= nq;
		s10 /= nq;
		s11 /= nq;
		ea_rot_block(s00, s01, s10, s11, C[A], S[A], C[B], S[B], cov,
		    d, a0, a1, b0, b1, cv);
	}
	if (cov != 0)
		return;
	/* w_j = A (u_j - m), A the mean's rotation: sum_j w_j w_j' / nq is
	 * the covariance just written */
	__syncthreads();
	for (i = threadIdx.x; i < nq * P; i += blockDim.x) {
		double x0, x1;

		j = i / P;
		A = i % P;
		a0 = halves ? A : 2 * A;
		a1 = halves ? A + P : 2 * A + 1;
		x0 = u[(size_t)j * d + a0] - m[a0];
		x1 = u[(size_t)j * d + a1] - m[a1];
		ug[(size_t)j * d + a0] = (float)(C[A] * x0 - S[A] * x1);
		ug[(size_t)j * d + a1] = (float)(S[A] * x0 + C[A] * x1);
	}
}

/* Index of entry (x, y), x >= y, of a packed lower triangle. */
static __device__ __forceinline__ int
ea_tri(int x, int y)
{
	return x * (x + 1) / 2 + y;
}

/* Pre-RoPE value of query j (at position p0 + j) of a head at qi, pair
 * A's two elements into x0 and x1. */
static __device__ __forceinline__ void
ea_unrope(const float *qi, long long qps, int j, int p0, double f, int a0,
    int a1, double *x0, double *x1)
{
	double sn, cs, y0 = qi[(size_t)j * qps + a0], y1 = qi[(size_t)j * qps +
	    a1];

	sincos((double)(p0 + j) * f, &sn, &cs);
	*x0 = y0 * cs + y1 * sn;
	*x1 = -y0 * sn + y1 * cs;
}

/*
 * Many queries (the whole prompt): block (c, i) adds chunk c of query
 * head i's pre-RoPE queries u to acc, less the first query u0 (a shift
 * that keeps the covariance's subtraction from cancelling where the mean
 * is large): d sums of u - u0, then the packed lower triangle of the sums
 * of (u - u0)(u - u0)' (every entry for a full covariance, each pair's
 * 2 x 2 block for a diagonal one, none without), in double, then u0.  The
 * chunk's queries are rotated back a tile at a time into shared memory;
 * each thread takes entries, sums them over the tile, and adds the sum
 * to acc (an atomic add: at most EA_NCH blocks share an entry).
 */
__global__ void __launch_bounds__(EA_MT)
ea_moments_k(const float *q, long long qhs, long long qps, int nq, int per,
    int p0, float theta, int halves, int d, int cov, double *acc)
{
	extern __shared__ float msh[];
	int P = d / 2, tq = EA_MSH / (int)(sizeof(float) * d), i, j, e, A;
	int c0 = blockIdx.x * per, c1 = min(nq, c0 + per), j0, nt, ne, x, y;
	int tri = d * (d + 1) / 2, a0, a1;
	const float *qi = q + (size_t)blockIdx.y * qhs;
	double *am = acc + (size_t)blockIdx.y * (2 * d + tri), *at = am + d;
	double *fr = (double *)(msh + EA_MSH / sizeof(float)), *u0 = fr + P;
	double x0, x1;
	float *u = msh;

	ne = d + (cov == 0 ? tri : cov == 1 ? 3 * P : 0);
	for (A = threadIdx.x; A < P; A += blockDim.x) {
		a0 = halves ? A : 2 * A;
		a1 = halves ? A + P : 2 * A + 1;
		fr[A] = pow((double)theta, -(double)(2 * A) / d);
		ea_unrope(qi, qps, 0, p0, fr[A], a0, a1, &u0[a0], &u0[a1]);
		if (blockIdx.x == 0) {
			at[tri + a0] = u0[a0];
			at[tri + a1] = u0[a1];
		}
	}
	for (j0 = c0; j0 < c1; j0 += tq) {
		nt = min(tq, c1 - j0);
		__syncthreads();
		for (i = threadIdx.x; i < nt * P; i += blockDim.x) {
			j = i / P;
			A = i % P;
			a0 = halves ? A : 2 * A;
			a1 = halves ? A + P : 2 * A + 1;
			ea_unrope(qi, qps, j0 + j, p0, fr[A], a0, a1, &x0,
			    &x1);
			u[(size_t)j * d + a0] = (float)(x0 - u0[a0]);
			u[(size_t)j * d + a1] = (float)(x1 - u0[a1]);
		}
		__syncthreads();
		for (e = threadIdx.x; e < ne; e += blockDim.x) {
			double sum = 0.0;

			if (e < d) {
				for (j = 0; j < nt; j++)
					sum += u[(size_t)j * d + e];
				atomicAdd(&am[e], sum);
				continue;
			}
			if (cov == 0) {
				/* entry e - d of the triangle: row x, column y */
				i = e - d;
				x = (int)((sqrtf(8.0f * i + 1.0f) - 1.0f) / 2.0f);
				while (ea_tri(x + 1, 0) <= i)
					x++;
				while (ea_tri(x, 0) > i)
					x--;
				y = i - ea_tri(x, 0);
			} else {
				/* pair A's (a0, a0), (a1, a0), (a1, a1) */
				A = (e - d) / 3;
				i = (e - d) % 3;
				x = halves ? A + (i > 0) * P : 2 * A + (i > 0);
				y = halves ? A + (i > 1) * P : 2 * A + (i > 1);
			}
			for (j = 0; j < nt; j++)
				sum += (double)u[(size_t)j * d + x] *
				    u[(size_t)j * d + y];
			atomicAdd(&at[ea_tri(x, y)], sum);
		}
	}
}

/*
 * The many-query sums with a full covariance as a tiled product: block
 * (c, i, z) takes chunk c of query head i's queries and tile z of the
 * lower triangle of the d x d sums of (u - u0)(u - u0)', EA_MB rows by
 * EA_MB columns, each thread EA_MR x EA_MR of them in registers (on the
 * diagonal, the 136 threads of the tiles on or below it).  A
 * shared tile holds EA_MK queries' rows and columns of the tile, rotated
 * back and shifted; a tile's products are summed in float (EA_MK terms),
 * then into double registers, and each block adds its sums to acc once
 * (atomics: the chunks fill the device once, EA_MW blocks a
 * multiprocessor, so few blocks share an entry).  The blocks on the
 * diagonal also add the d sums of u - u0, and the first block u0 itself.
 * The rotation's angle is reduced to [-pi, pi] in double and its sine
 * and cosine taken by the hardware's approximations (absolute error
 * below 4e-7 there): a rotation that far off moves the statistics by a
 * few parts in 1e7 of the queries' size, where an exact sincos of every
 * query and pair would cost about as much as the products.  Twin:
 * sel_ea_moments (test-kernels' test_ea_all).
 */
__global__ void __launch_bounds__(EA_MT)
ea_gram_k(const float *q, long long qhs, long long qps, int nq, int per,
    int p0, float theta, int halves, int d, double *acc)
{
	__shared__ __align__(16) float ua[EA_MK][EA_MB], ub[EA_MK][EA_MB];
	__shared__ double fr[128], u0[256];
	__shared__ short pl[128];
	__shared__ int np;
	int P = d / 2, tri = d * (d + 1) / 2, z = blockIdx.z, I, J, r0, c0;
	int tx = threadIdx.x % (EA_MB / EA_MR), ty = threadIdx.x /
	    (EA_MB / EA_MR), c1 = blockIdx.x * per, c2 = min(nq, c1 + per);
	int i, j, k, A, a0, a1, j0, nt, act;
	const float *qi = q + (size_t)blockIdx.y * qhs;
	double *am = acc + (size_t)blockIdx.y * (2 * d + tri), *at = am + d;
	double dacc[EA_MR][EA_MR], dsum = 0.0;
	float fa[EA_MR][EA_MR], s;

	/* tile z of the triangle: rows r0, columns c0, c0 <= r0 */
	I = (int)((sqrtf(8.0f * z + 1.0f) - 1.0f) / 2.0f);
	while ((I + 1) * (I + 2) / 2 <= z)
		I++;
	while (I * (I + 1) / 2 > z)
		I--;
	J = z - I * (I + 1) / 2;
	r0 = I * EA_MB;
	c0 = J * EA_MB;
	/* on the diagonal only the threads of the lower triangle's
	 * EA_MR x EA_MR tiles sum products (row tile ty, column tile
	 * tx <= ty), the rest help with the loads */
	if (I == J) {
		i = threadIdx.x;
		ty = (int)((sqrtf(8.0f * i + 1.0f) - 1.0f) / 2.0f);
		while ((ty + 1) * (ty + 2) / 2 <= i)
			ty++;
		while (ty * (ty + 1) / 2 > i)
			ty--;
		tx = i - ty * (ty + 1) / 2;
	}
	act = I != J || ty < EA_MB / EA_MR;
	if (threadIdx.x == 0)
		np = 0;
	for (i = threadIdx.x; i < EA_MK * EA_MB; i += blockDim.x) {
		ua[i / EA_MB][i % EA_MB] = 0.0f;
		ub[i / EA_MB][i % EA_MB] = 0.0f;
	}
	__syncthreads();
	/* the pairs with an element in the tile's rows or columns */
	for (A = threadIdx.x; A < P; A += blockDim.x) {
		a0 = halves ? A : 2 * A;
		a1 = halves ? A + P : 2 * A + 1;
		fr[A] = pow((double)theta, -(double)(2 * A) / d);
		ea_unrope(qi, qps, 0, p0, fr[A], a0, a1, &u0[a0], &u0[a1]);
		if (blockIdx.x == 0 && z == 0) {
			at[tri + a0] = u0[a0];
			at[tri + a1] = u0[a1];
		}
		if ((a0 >= r0 && a0 < r0 + EA_MB) || (a1 >= r0 && a1 < r0 +
		    EA_MB) || (a0 >= c0 && a0 < c0 + EA_MB) || (a1 >= c0 &&
		    a1 < c0 + EA_MB))
			pl[atomicAdd(&np, 1)] = (short)A;
	}
#pragma unroll
	for (i = 0; i < EA_MR; i++)
#pragma unroll
		for (j = 0; j < EA_MR; j++)
			dacc[i][j] = 0.0;
	for (j0 = c1; j0 < c2; j0 += EA_MK) {
		nt = min(EA_MK, c2 - j0);
		__syncthreads();
		if (nt < EA_MK)
			for (i = threadIdx.x; i < EA_MK * EA_MB;
			    i += blockDim.x) {
				ua[i / EA_MB][i % EA_MB] = 0.0f;
				ub[i / EA_MB][i % EA_MB] = 0.0f;
			}
		__syncthreads();
		for (i = threadIdx.x; i < nt * np; i += blockDim.x) {
			double a, m;
			float sn, cs, y0, y1, x0, x1;

			j = i / np;
			A = pl[i % np];
			a0 = halves ? A : 2 * A;
			a1 = halves ? A + P : 2 * A + 1;
			a = (double)(p0 + j0 + j) * fr[A];
			m = rint(a * 0.15915494309189535);
			__sincosf((float)fma(-m, 6.283185307179586, a), &sn,
			    &cs);
			y0 = qi[(size_t)(j0 + j) * qps + a0];
			y1 = qi[(size_t)(j0 + j) * qps + a1];
			x0 = y0 * cs + y1 * sn - (float)u0[a0];
			x1 = -y0 * sn + y1 * cs - (float)u0[a1];
			if (a0 >= r0 && a0 < r0 + EA_MB)
				ua[j][a0 - r0] = x0;
			if (a1 >= r0 && a1 < r0 + EA_MB)
				ua[j][a1 - r0] = x1;
			if (a0 >= c0 && a0 < c0 + EA_MB)
				ub[j][a0 - c0] = x0;
			if (a1 >= c0 && a1 < c0 + EA_MB)
				ub[j][a1 - c0] = x1;
		}
		__syncthreads();
		if (I == J && threadIdx.x < EA_MB) {
			for (s = 0.0f, k = 0; k < nt; k++)
				s += ua[k][threadIdx.x];
			dsum += s;
		}
		if (!act)
			continue;
#pragma unroll
		for (i = 0; i < EA_MR; i++)
#pragma unroll
			for (j = 0; j < EA_MR; j++)
				fa[i][j] = 0.0f;
#pragma unroll 8
		for (k = 0; k < EA_MK; k++) {
			float4 x = *(const float4 *)&ua[k][EA_MR * ty];
			float4 y = *(const float4 *)&ub[k][EA_MR * tx];
			float xa[EA_MR] = { x.x, x.y, x.z, x.w };
			float ya[EA_MR] = { y.x, y.y, y.z, y.w };

#pragma unroll
			for (i = 0; i < EA_MR; i++)
#pragma unroll
				for (j = 0; j < EA_MR; j++)
					fa[i][j] += xa[i] * ya[j];
		}
#pragma unroll
		for (i = 0; i < EA_MR; i++)
#pragma unroll
			for (j = 0; j < EA_MR; j++)
				dacc[i][j] += fa[i][j];
	}
	if (I == J && threadIdx.x < EA_MB && r0 + (int)threadIdx.x < d)
		atomicAdd(&am[r0 + threadIdx.x], dsum);
#pragma unroll
	for (i = 0; i < EA_MR; i++)
#pragma unroll
		for (j = 0; j < EA_MR; j++) {
			int x = r0 + EA_MR * ty + i, y = c0 + EA_MR * tx + j;

			if (act && x < d && y <= x)
				atomicAdd(&at[ea_tri(x, y)], dacc[i][j]);
		}
}

/*
 * Blocks (head, c), c < EA_CB: the mean (block 0) and every EA_CB-th
 * 2 x 2 block of the covariance of the head's nq queries
 * from the sums ea_moments_k left in acc (the mean u0 + E[u - u0], the
 * covariance E[(u - u0)(u - u0)'] - (m - u0)(m - u0)', in double),
 * carried forward as ea_stats_k carries its own.
 */
__global__ void __launch_bounds__(EA_CT)
ea_carry_k(const double *acc, int nq, int n, int F, float theta, int halves,
    int d, int cov, float *mu, float *co)
{
	__shared__ double cm[256 + 3 * 128];
	double *m = cm, *C = cm + d, *S = C + d / 2;
	int P = d / 2, i, A, B, nb, a0, a1, b0, b1, tri = d * (d + 1) / 2;
	const double *am = acc + (size_t)blockIdx.x * (2 * d + tri);
	const double *at = am + d, *u0 = at + tri, inq = 1.0 / nq;
	float *mo = mu + (size_t)blockIdx.x * d;
	size_t cs = cov == 1 ? (size_t)d : (size_t)d * d;
	float *cv = co != NULL ? co + blockIdx.x * cs : NULL;

	/* m holds the shifted mean, m - u0, until the mean is written */
	for (i = threadIdx.x; i < d; i += blockDim.x)
		m[i] = am[i] * inq;
	for (i = threadIdx.x; i < P; i += blockDim.x)
		ea_avg_rot(n, F, pow((double)theta, -(double)(2 * i) / d),
		    &C[i], &S[i]);
	__syncthreads();
	for (i = threadIdx.x; i < P && blockIdx.y == 0; i += blockDim.x) {
		double m0, m1;

		a0 = halves ? i : 2 * i;
		a1 = halves ? i + P : 2 * i + 1;
		m0 = u0[a0] + m[a0];
		m1 = u0[a1] + m[a1];
		mo[a0] = (float)(C[i] * m0 - S[i] * m1);
		mo[a1] = (float)(S[i] * m0 + C[i] * m1);
	}
	nb = cov == 2 || co == NULL ? 0 : cov == 1 ? P : P * P;
	for (i = blockIdx.y * blockDim.x + threadIdx.x; i < nb;
	    i += gridDim.y * blockDim.x) {
		double s00, s01, s10, s11;

		ea_pairs(i, P, cov, halves, &A, &B, &a0, &a1, &b0, &b1);
#define EA_AT(x, y) (at[(x) >= (y) ? ea_tri(x, y) : ea_tri(y, x)] * inq - \
		    m[x] * m[y])
		s00 = EA_AT(a0, b0);
		s01 = EA_AT(a0, b1);
		s10 = EA_AT(a1, b0);
		s11 = EA_AT(a1, b1);
#undef EA_AT
		ea_rot_block(s00, s01, s10, s11, C[A], S[A], C[B], S[B], cov,
		    d, a0, a1, b0, b1, cv);
	}
}

/* Bytes of kvx_cuda_ea_moments's sums: per head, d shifted sums, the
 * packed triangle of their products, the shift. */
extern "C" size_t
kvx_cuda_ea_moments_bytes(int h, int d)
{
	return sizeof(double) * (size_t)h * (2 * (size_t)d + (size_t)d *
	    (d + 1) / 2);
}

extern "C" size_t
kvx_cuda_ea_stats_scratch(int h, int nq, int d)
{
	if (nq <= EA_NQ_ONE)
		return sizeof(float) * (size_t)h * nq * d;
	return kvx_cuda_ea_moments_bytes(h, d);
}

/* The sums of many queries over up to EA_NCH blocks a head, or with a
 * full covariance as many as fill the device once. */
extern "C" int
kvx_cuda_ea_moments(const float *d_q, long long qhs, long long qps, int h,
    int nq, int p0, float theta, int halves, int d, int cov, double *d_acc,
    cudaStream_t stream)
{
	int nch = (nq + EA_NQ_ONE - 1) / EA_NQ_ONE, per;

	if (h < 1 || nq < 1 || d < 2 || d % 2 != 0 || d > 256 || cov < 0 ||
	    cov > 2 || p0 < 0)
		return KVX_CUDA_EINVAL;
	nch = nch > EA_NCH ? EA_NCH : nch;
	per = (nq + nch - 1) / nch;
	if (cudaMemsetAsync(d_acc, 0, kvx_cuda_ea_moments_bytes(h, d),
	    stream) != cudaSuccess)
		return launched();
	if (cov == 0) {
		int nt = (d + EA_MB - 1) / EA_MB, nsm = kvx_cuda_sm_count();

		/* one wave of EA_MW blocks a multiprocessor over the heads
		 * and tiles, no chunk under EA_MQ queries */
		per = nsm > 0 ? EA_MW * nsm / (h * nt * (nt + 1) / 2) : EA_NCH;
		nch = (nq + EA_MQ - 1) / EA_MQ;
		nch = per < 1 ? 1 : per < nch ? per : nch;
		per = (nq + nch - 1) / nch;
		ea_gram_k<<<dim3(nch, h, nt * (nt + 1) / 2), EA_MT, 0,
		    stream>>>(d_q, qhs, qps, nq, per, p0, theta, halves, d,
		    d_acc);
		return launched();
	}
	ea_moments_k<<<dim3(nch, h), EA_MT, EA_MSH + sizeof(double) * 3 * d /
	    2, stream>>>(d_q, qhs, qps, nq, per, p0, theta, halves, d, cov,
	    d_acc);
	return launched();
}

/* EA_CB blocks a head carry the sums forward. */
extern "C" int
kvx_cuda_ea_carry(const double *d_acc, int h, int nq, int n, int future,
    float theta, int halves, int d, int cov, float *d_mu, float *d_cov,
    cudaStream_t stream)
{
	if (h < 1 || nq < 1 || d < 2 || d % 2 != 0 || d > 256 ||
	    future < 1 || cov < 0 || cov > 2 || (d_cov == NULL && cov != 2))
		return KVX_CUDA_EINVAL;
	ea_carry_k<<<dim3(h, EA_CB), EA_CT, 0, stream>>>(d_acc, nq, n, future,
	    theta, halves, d, cov, d_mu, d_cov);
	return launched();
}

extern "C" int
kvx_cuda_ea_stats(const float *d_q, long long qhs, long long qps, int h,
    int nq, int p0, int n, int future, float theta, int halves, int d,
    int cov, float *d_mu, float *d_cov, float *d_scratch,
    cudaStream_t stream)
{
	size_t sh;
	int ush, rc;

	if (h < 1 || nq < 1 || d < 2 || d % 2 != 0 || future < 1 || cov < 0 ||
	    cov > 2 || p0 < 0 || (d_cov == NULL && cov == 1))
		return KVX_CUDA_EINVAL;
	if (nq > EA_NQ_ONE) {
		/* no queries left behind for the scores: the covariance */
		if (d > 256 || (d_cov == NULL && cov == 0))
			return KVX_CUDA_EINVAL;
		if ((rc = kvx_cuda_ea_moments(d_q, qhs, qps, h, nq, p0,
		    theta, halves, d, cov, (double *)d_scratch, stream)) != 0)
			return rc;
		return kvx_cuda_ea_carry((const double *)d_scratch, h, nq, n,
		    future, theta, halves, d, cov, d_mu, d_cov, stream);
	}
	sh = sizeof(double) * (2 * (size_t)d + (size_t)d / 2);
	ush = sh + sizeof(float) * (size_t)nq * d <= EA_SHMAX;
	if (ush)
		sh += sizeof(float) * (size_t)nq * d;
	ea_stats_k<<<h, EA_TH, sh, stream>>>(d_q, qhs, qps, nq, p0, n,
	    future, theta, halves, d, cov, d_mu, d_cov, d_scratch, ush);
	return launched();
}

/* Scratch bytes: nseg x g rows of n logits, then each row's partial
 * maxima and sums, a pair per EA_NK keys; then, for the tensor cores,
 * each head's scale and (16-byte aligned) its covariance's two halves. */
extern "C" size_t
kvx_cuda_ea_scratch(int nseg, int g, int n, int d)
{
	size_t h = (size_t)nseg * g;

	return sizeof(float) * (ea_tc_at(nseg, g, n) + h) + 16 +
	    sizeof(__half) * 2 * h * d * d;
}

/*
 * A warp per key t of segment blockIdx.y: for each of the g query heads,
 * mu . k / sqrt(d) + k' diag(Sigma) k / (2 d) (cov 1) or mu . k / sqrt(d)
 * alone (cov 2), into lg[(s g + h) n + t].
 */
template <typename T>
__global__ void
ea_logits_k(const float *mu, const float *co, int cov, const T *k, int ldk,
    int n, int g, int d, float *lg)
{
	int lane = threadIdx.x & 31;
	int t = blockIdx.x * EA_WPB + (threadIdx.x >> 5), s = blockIdx.y;
	float kr[EA_KMAX], acc, scale = rsqrtf((float)d);
	float half = 0.5f / (float)d;
	const T *kt;
	int h, r, o;

	if (t >= n)
		return;
	kt = k + (size_t)t * ldk + (size_t)s * d;
#pragma unroll
	for (r = 0; r < EA_KMAX; r++)
		kr[r] = lane + 32 * r < d ? ld(kt + lane + 32 * r) : 0.0f;
	for (h = 0; h < g; h++) {
		const float *m = mu + (size_t)(s * g + h) * d;
		float dm = 0.0f, qd = 0.0f;

#pragma unroll
		for (r = 0; r < EA_KMAX; r++)
			if (lane + 32 * r < d)
				dm += m[lane + 32 * r] * kr[r];
		if (cov == 1) {
			const float *C = co + (size_t)(s * g + h) * d;

#pragma unroll
			for (r = 0; r < EA_KMAX; r++)
				if (lane + 32 * r < d)
					qd += C[lane + 32 * r] * kr[r] * kr[r];
		}
		acc = dm * scale + qd * half;
		for (o = 16; o > 0; o >>= 1)
			acc += __shfl_xor_sync(0xffffffffu, acc, o);
		if (lane == 0)
			lg[(size_t)(s * g + h) * n + t] = acc;
	}
}

/* Element i of a key held in registers; i is a constant once the
 * caller's loops are unrolled, which keeps kf in registers. */
template <int DK>
static __device__ __forceinline__ float
ea_pick(const float (&kf)[DK], int i)
{
	float x = 0.0f;

#pragma unroll
	for (int j = 0; j < DK; j++)
		if (j == i)
			x = kf[j];
	return x;
}

/*
 * The logits with a full covariance: a thread per key t of segment
 * blockIdx.y.  For each query head, the rows of [mean; B] are dotted with
 * the key EA_JR rows and EA_JC columns at a time, the tile in shared
 * memory (every thread reads the same word: a broadcast), the key held
 * in registers when d is DK (64 or 128), else its columns reread from L1
 * for each tile of rows.  B is either the nq centred, rotated queries w_j
 * (w not NULL: k' Sigma k is the mean of (w_j . k)^2) or the d rows of
 * Sigma itself (k' Sigma k is the sum of k_r (Sigma_r . k)); the caller
 * takes whichever has fewer rows.
 */
template <typename T, int DK>
__global__ void
ea_rows_k(const float *mu, const float *co, const float *w, int nq,
    const T *k, int ldk, int n, int g, int d, float *lg)
{
	__shared__ float tile[EA_JR][EA_JC];
	int t = blockIdx.x * EA_KB + threadIdx.x, s = blockIdx.y;
	int h, jb, c, r, i, nr = (w != NULL ? nq : d) + 1;
	const T *kt = k + (size_t)(t < n ? t : 0) * ldk + (size_t)s * d;
	float kc[EA_JC], kf[DK > 0 ? DK : 1], acc[EA_JR], dm, qd;

	/* with d = DK the key is read once, into registers */
#pragma unroll
	for (i = 0; i < DK; i++)
		kf[i] = ld(kt + i);

	for (h = 0; h < g; h++) {
		const float *m = mu + (size_t)(s * g + h) * d;
		const float *b = w != NULL ? w + (size_t)(s * g + h) * nq * d :
		    co + (size_t)(s * g + h) * d * d;

		dm = qd = 0.0f;
		for (jb = 0; jb < nr; jb += EA_JR) {
#pragma unroll
			for (r = 0; r < EA_JR; r++)
				acc[r] = 0.0f;
#pragma unroll
			for (c = 0; c < (DK > 0 ? DK : d); c += EA_JC) {
				__syncthreads();
				for (i = threadIdx.x; i < EA_JR * EA_JC;
				    i += EA_KB) {
					int row = jb + i / EA_JC;
					int col = c + i % EA_JC;
					float x = 0.0f;

					if (row < nr && col < d)
						x = row == 0 ? m[col] :
						    b[(size_t)(row - 1) * d +
						    col];
					tile[i / EA_JC][i % EA_JC] = x;
				}
				__syncthreads();
#pragma unroll
				for (i = 0; i < EA_JC; i++)
					kc[i] = DK > 0 ? ea_pick(kf, c + i) :
					    c + i < d ? ld(kt + c + i) : 0.0f;
#pragma unroll
				for (r = 0; r < EA_JR; r++)
#pragma unroll
					for (i = 0; i < EA_JC; i++)
						acc[r] += tile[r][i] * kc[i];
			}
#pragma unroll
			for (r = 0; r < EA_JR; r++) {
				int row = jb + r;

				if (row == 0)
					dm = acc[r];
				else if (row < nr)
					qd += w != NULL ? acc[r] * acc[r] :
					    acc[r] * ld(kt + row - 1);
			}
		}
		if (w != NULL)
			qd /= (float)nq;
		if (t < n)
			lg[(size_t)(s * g + h) * n + t] = dm * rsqrtf((float)d) +
			    qd * (0.5f / (float)d);
	}
}

/*
 * The logits with a full covariance as a tiled product: block (b, s, h)
 * takes EA_RB(DP) keys of segment s from key b EA_RB(DP), and query head
 * h of its group.  Y = K Sigma (keys by d) is summed EA_RK rows of Sigma
 * at a time from shared tiles (keys transposed, Sigma's rows), each
 * thread holding RM keys by CN columns of Y in registers (columns four
 * at a time, 4 TX apart, so that a warp's reads of a row of Sigma are
 * consecutive); then each
 * thread dots its part of Y and of the mean with its keys' columns, and
 * the TX threads that share keys add up: mu . k / sqrt(d) +
 * k' Sigma k / (2 d).  DP is d rounded up to 64, 128 or 256, the rest
 * zeros.  Twin: sel_ea_score's logits (test-kernels' test_ea and
 * test_ea_all).
 */
#define EA_RT 256	/* threads of a tiled logits block */
#define EA_RK 16	/* rows of Sigma (key elements) a shared tile */
#define EA_RTX(DP) ((DP) == 256 ? 32 : 16)	/* threads across Y */
#define EA_RCN(DP) ((DP) / EA_RTX(DP))		/* columns a thread */
#define EA_RRM(DP) ((DP) == 128 ? 4 : 8)	/* keys a thread */
#define EA_RB(DP) (EA_RRM(DP) * EA_RT / EA_RTX(DP))	/* keys a block */

template <typename T, int DP>
__global__ void __launch_bounds__(EA_RT)
ea_sigma_k(const float *mu, const float *co, const T *k, int ldk, int n,
    int g, int d, float *lg)
{
	constexpr int TX = EA_RTX(DP), CN = EA_RCN(DP), RM = EA_RRM(DP);
	constexpr int BM = EA_RB(DP);
	__shared__ __align__(16) float ks[EA_RK][BM + 4], ss[EA_RK][DP];
	int tx = threadIdx.x % TX, ty = threadIdx.x / TX, s = blockIdx.y;
	int h = s * g + blockIdx.z, t0 = blockIdx.x * BM, r0, i, j, x;
	const T *kb = k + (size_t)s * d;
	const float *m = mu + (size_t)h * d, *sg = co + (size_t)h * d * d;
	float acc[RM][CN], a[RM], b[CN], dm, qd, kv;

#pragma unroll
	for (i = 0; i < RM; i++)
#pragma unroll
		for (j = 0; j < CN; j++)
			acc[i][j] = 0.0f;
	for (r0 = 0; r0 < d; r0 += EA_RK) {
		__syncthreads();
		/* keys t0.. elements r0..: a key's EA_RK elements side by
		 * side in the threads, stored transposed */
		for (x = threadIdx.x; x < BM * EA_RK; x += EA_RT) {
			int t = t0 + x / EA_RK, r = r0 + x % EA_RK;

			ks[x % EA_RK][x / EA_RK] = t < n && r < d ?
			    ld(kb + (size_t)t * ldk + r) : 0.0f;
		}
		for (x = threadIdx.x; x < EA_RK * DP; x += EA_RT) {
			int r = r0 + x / DP, c = x % DP;

			ss[x / DP][c] = r < d && c < d ? sg[(size_t)r * d + c] :
			    0.0f;
		}
		__syncthreads();
#pragma unroll 4
		for (x = 0; x < EA_RK; x++) {
#pragma unroll
			for (i = 0; i < RM; i += 4) {
				float4 v = *(const float4 *)&ks[x][RM * ty + i];

				a[i] = v.x;
				a[i + 1] = v.y;
				a[i + 2] = v.z;
				a[i + 3] = v.w;
			}
#pragma unroll
			for (j = 0; j < CN; j += 4) {
				float4 v = *(const float4 *)&ss[x][4 * tx +
				    TX * j];

				b[j] = v.x;
				b[j + 1] = v.y;
				b[j + 2] = v.z;
				b[j + 3] = v.w;
			}
#pragma unroll
			for (i = 0; i < RM; i++)
#pragma unroll
				for (j = 0; j < CN; j++)
					acc[i][j] += a[i] * b[j];
		}
	}
#pragma unroll
	for (i = 0; i < RM; i++) {
		int t = t0 + RM * ty + i;
		const T *kt = kb + (size_t)(t < n ? t : 0) * ldk;

		dm = qd = 0.0f;
#pragma unroll
		for (j = 0; j < CN; j++) {
			int c = 4 * tx + TX * (j & ~3) + (j & 3);

			kv = c < d ? ld(kt + c) : 0.0f;
			qd += acc[i][j] * kv;
			dm += (c < d ? m[c] : 0.0f) * kv;
		}
#pragma unroll
		for (x = TX / 2; x > 0; x >>= 1) {
			qd += __shfl_xor_sync(0xffffffffu, qd, x);
			dm += __shfl_xor_sync(0xffffffffu, dm, x);
		}
		if (tx == 0 && t < n)
			lg[(size_t)h * n + t] = dm * rsqrtf((float)d) +
			    qd * (0.5f / (float)d);
	}
}

/*
 * A full covariance for the tensor cores: head blockIdx.x's Sigma scaled
 * by a power of two (hs[h], so that its largest entry is near 2^14, in
 * half precision's range) and split into two halves, hi + lo, whose sum
 * holds about 22 bits of each entry: K Sigma in fp16 products summed in
 * float, from both, is as close as float products.  hi at hl + 2 h d^2,
 * lo d^2 after it.  A covariance's largest entry is on its diagonal
 * (|S_ij| <= sqrt(S_ii S_jj)), so the scale reads only that; EA_SB blocks
 * a head split EA_SL entries a thread each, their loads in flight
 * together.
 */
__global__ void __launch_bounds__(EA_NT)
ea_split_k(const float *co, int d, __half *hl, float *hs)
{
	__shared__ float sh[32];
	const float *c = co + (size_t)blockIdx.x * d * d;
	__half *hi = hl + (size_t)blockIdx.x * 2 * d * d, *lo = hi + d * d;
	float mx = 0.0f, sc, x[EA_SL];
	int i, r, i0 = blockIdx.y * EA_NT + threadIdx.x;

#pragma unroll
	for (r = 0; r < EA_SL; r++) {
		i = i0 + r * EA_SB * EA_NT;
		x[r] = i < d * d ? c[i] : 0.0f;
	}
	for (i = threadIdx.x; i < d; i += blockDim.x)
		mx = fmaxf(mx, fabsf(c[(size_t)i * d + i]));
	mx = block_max(mx, sh);
	sc = mx > 0.0f && isfinite(mx) ? exp2f(14.0f - ceilf(log2f(mx))) :
	    1.0f;
#pragma unroll
	for (r = 0; r < EA_SL; r++) {
		__half v;

		i = i0 + r * EA_SB * EA_NT;
		if (i >= d * d)
			break;
		v = __float2half_rn(x[r] * sc);
		hi[i] = v;
		lo[i] = __float2half_rn(x[r] * sc - __half2float(v));
	}
	if (blockIdx.y == 0 && threadIdx.x == 0)
		hs[blockIdx.x] = sc;
}

/* Adds to *qd and *dm the dots of the 8 floats at y and at m with the 8
 * halves at k (16-byte loads from shared memory). */
static __device__ __forceinline__ void
ea_tc_dot(const float *y, const float *m, const __half *k, float *qd,
    float *dm)
{
	float4 y0 = *(const float4 *)y, y1 = *(const float4 *)(y + 4);
	float4 m0 = *(const float4 *)m, m1 = *(const float4 *)(m + 4);
	float a[8];

	unpack8(*(const uint4 *)k, a, k);
	*qd += y0.x * a[0] + y0.y * a[1] + y0.z * a[2] + y0.w * a[3] +
	    y1.x * a[4] + y1.y * a[5] + y1.z * a[6] + y1.w * a[7];
	*dm += m0.x * a[0] + m0.y * a[1] + m0.z * a[2] + m0.w * a[3] +
	    m1.x * a[4] + m1.y * a[5] + m1.z * a[6] + m1.w * a[7];
}

/*
 * The logits with a full covariance on the tensor cores, for fp16 keys of
 * d = DP = 64 or 128 elements: block (b, s, h) takes EA_TW x 16 keys of
 * segment s from key b EA_TW 16, and query head h of its group.  Each
 * warp stages its 16 keys in shared memory (zeros past n) and holds them
 * as the products' left side; the block stages EA_TCW(DP) columns of
 * Sigma at a time (hi and lo, from ea_split_k: all of them for d = 64),
 * and each warp forms 16 of those columns of Y = K Sigma at a time with
 * wmma (16 x 16 x 16, fp16 in, float sums), which two lanes a key dot
 * with the key; the mean's dot goes along.  Twin: sel_ea_score's logits,
 * as ea_sigma_k's.
 */
template <int DP>
__global__ void __launch_bounds__(32 * EA_TW)
ea_sigma_tc_k(const float *mu, const __half *hl, const float *hs,
    const __half *k, int ldk, int n, int g, int d, float *lg)
{
	constexpr int CW = EA_TCW(DP);
	__shared__ __align__(32) __half ks[EA_TW][16][DP + 16];
	__shared__ __align__(32) __half ss[2][DP][CW + 16];
	__shared__ __align__(32) float ys[EA_TW][16][24];
	__shared__ __align__(16) float ms[DP];
	nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half,
	    nvcuda::wmma::row_major> a[DP / 16];
	nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __half,
	    nvcuda::wmma::row_major> b;
	nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16,
	    float> y;
	int w = threadIdx.x >> 5, lane = threadIdx.x & 31, s = blockIdx.y;
	int h = s * g + blockIdx.z, t0 = (blockIdx.x * EA_TW + w) * 16;
	int key = lane >> 1, half = lane & 1, c0, c1, kk, i, x;
	const __half *kb = k + (size_t)s * d;
	const __half *hi = hl + (size_t)h * 2 * d * d;
	float qd = 0.0f, dm = 0.0f;

	/* the warp's keys, 8 elements (16 bytes) a load */
	for (x = lane; x < 16 * DP / 8; x += 32) {
		int r = x / (DP / 8), c = x % (DP / 8) * 8;
		uint4 v = make_uint4(0, 0, 0, 0);

		if (t0 + r < n)
			v = *(const uint4 *)(kb + (size_t)(t0 + r) * ldk + c);
		*(uint4 *)&ks[w][r][c] = v;
	}
	for (i = threadIdx.x; i < DP; i += blockDim.x)
		ms[i] = mu[(size_t)h * d + i];
	__syncwarp();
	/* the keys as the products' left side, once */
#pragma unroll
	for (kk = 0; kk < DP / 16; kk++)
		nvcuda::wmma::load_matrix_sync(a[kk], &ks[w][0][16 * kk],
		    DP + 16);
	for (c0 = 0; c0 < DP; c0 += CW) {
		__syncthreads();
		/* columns c0.. of hi and lo, rows 0 .. DP - 1 */
		for (x = threadIdx.x; x < 2 * DP * CW / 8; x += blockDim.x) {
			int m = x / (DP * CW / 8), r = x / (CW / 8) % DP;
			int c = x % (CW / 8) * 8;

			*(uint4 *)&ss[m][r][c] = *(const uint4 *)(hi +
			    (size_t)m * d * d + (size_t)r * d + c0 + c);
		}
		__syncthreads();
		for (c1 = 0; c1 < CW; c1 += 16) {
			nvcuda::wmma::fill_fragment(y, 0.0f);
#pragma unroll
			for (kk = 0; kk < DP / 16; kk++) {
				nvcuda::wmma::load_matrix_sync(b,
				    &ss[0][16 * kk][c1], CW + 16);
				nvcuda::wmma::mma_sync(y, a[kk], b, y);
				nvcuda::wmma::load_matrix_sync(b,
				    &ss[1][16 * kk][c1], CW + 16);
				nvcuda::wmma::mma_sync(y, a[kk], b, y);
			}
			nvcuda::wmma::store_matrix_sync(&ys[w][0][0], y, 24,
			    nvcuda::wmma::mem_row_major);
			__syncwarp();
			ea_tc_dot(&ys[w][key][8 * half], &ms[c0 + c1 +
			    8 * half], &ks[w][key][c0 + c1 + 8 * half], &qd,
			    &dm);
			__syncwarp();
		}
	}
	qd += __shfl_xor_sync(0xffffffffu, qd, 1);
	dm += __shfl_xor_sync(0xffffffffu, dm, 1);
	if (half == 0 && t0 + key < n)
		lg[(size_t)h * n + t0 + key] = dm * rsqrtf((float)d) +
		    qd / hs[h] * (0.5f / (float)d);
}

/* Block (c, row) of the normalisation: the max and sum of exponentials of
 * keys [c EA_NK, (c + 1) EA_NK) past s0 of a (segment, head) row of
 * logits, EA_NK / EA_NT loads a thread in flight together, into the
 * row's partials at ms + 2 (row nch + c); ea_final_k merges them. */
__global__ void __launch_bounds__(EA_NT)
ea_norm_k(const float *lg, int n, int s0, int nch, float *ms)
{
	__shared__ float sh[32];
	const float *row = lg + (size_t)blockIdx.y * n;
	float x[EA_NK / EA_NT], mx = -INFINITY, l = 0.0f, M;
	int t0 = blockIdx.x * EA_NK + threadIdx.x, i, t;

#pragma unroll
	for (i = 0; i < EA_NK / EA_NT; i++) {
		t = t0 + i * EA_NT;
		x[i] = t >= s0 && t < n ? row[t] : -INFINITY;
		mx = fmaxf(mx, x[i]);
	}
#pragma unroll
	for (i = 0; i < EA_NK / EA_NT; i++)
		l += x[i] == -INFINITY ? 0.0f : expf(x[i] - mx);
	M = block_max(mx, sh);
	l = block_sum(mx == -INFINITY ? 0.0f : l * expf(mx - M), sh);
	if (threadIdx.x == 0) {
		i = blockIdx.y * nch + blockIdx.x;
		ms[2 * i] = M;
		ms[2 * i + 1] = l;
	}
}

/* (M, l) merged with (m, e): the larger maximum, and the sums of
 * exponentials rescaled to it. */
static __device__ __forceinline__ void
ea_merge(float *M, float *l, float m, float e)
{
	float n = fmaxf(*M, m);

	if (n == -INFINITY)
		return;
	*l = (*M == -INFINITY ? 0.0f : *l * expf(*M - n)) +
	    (m == -INFINITY ? 0.0f : e * expf(m - n));
	*M = n;
}

/* Warp w of a block merges the partials of rows s g + w, s g + w + nw ..
 * of segment s into the logarithm of each row's normaliser at lz[h], in
 * one pass over the (max, sum) pairs. */
static __device__ void
ea_lognorm(const float *ms, int nch, int s, int g, float *lz)
{
	int lane = threadIdx.x & 31, h, c, o;
	float M, l;

	for (h = threadIdx.x >> 5; h < g; h += blockDim.x >> 5) {
		const float *p = ms + 2 * (size_t)(s * g + h) * nch;

		M = -INFINITY;
		l = 0.0f;
		for (c = lane; c < nch; c += 32)
			ea_merge(&M, &l, p[2 * c], p[2 * c + 1]);
		for (o = 16; o > 0; o >>= 1) {
			float m = __shfl_xor_sync(0xffffffffu, M, o);
			float e = __shfl_xor_sync(0xffffffffu, l, o);

			ea_merge(&M, &l, m, e);
		}
		if (lane == 0)
			lz[h] = M + logf(l);
	}
}

/* log(exp(a) + exp(b)): sel_logaddexp of select.h. */
static __device__ __forceinline__ float
ea_logaddexp(float a, float b)
{
	float hi = fmaxf(a, b), lo = fminf(a, b);

	if (hi == -INFINITY)
		return hi;
	return hi + log1pf(expf(lo - hi));
}

/* The sum of squares of the 16 bytes at p, as elements of type T. */
static __device__ __forceinline__ float
ea_sq16(const float *p)
{
	float4 u = __ldg((const float4 *)p);

	return u.x * u.x + u.y * u.y + u.z * u.z + u.w * u.w;
}

template <typename T>
static __device__ __forceinline__ float
ea_sq16(const T *p)
{
	float f[8], s = 0.0f;
	int i;

	unpack8(__ldg((const uint4 *)p), f, p);
#pragma unroll
	for (i = 0; i < 8; i++)
		s += f[i] * f[i];
	return s;
}

/*
 * The squared norms of the nk <= EA_T values of d elements at v, rows ldk
 * apart, into vs[0 .. nk - 1], with 16-byte loads: a value's C = d /
 * (16 / sizeof(T)) pieces (C a power of two up to 32, the rows 16-byte
 * aligned) in C neighbouring lanes, EA_VL pieces a thread in flight
 * together, summed across the C lanes by shuffles.
 */
template <typename T>
static __device__ void
ea_vnorms16(const T *v, int ldk, int nk, int d, float *vs)
{
	constexpr int EL = 16 / sizeof(T);
	int C = d / EL, sh = __ffs(C) - 1, tot = EA_T * C, b, r, o;
	float p[EA_VL];

	for (b = 0; b < tot; b += EA_T * EA_VL) {
#pragma unroll
		for (r = 0; r < EA_VL; r++) {
			int x = b + r * EA_T + threadIdx.x, key = x >> sh;

			p[r] = x < tot && key < nk ? ea_sq16(v + (size_t)key *
			    ldk + (size_t)(x & (C - 1)) * EL) : 0.0f;
		}
#pragma unroll
		for (r = 0; r < EA_VL; r++) {
			int x = b + r * EA_T + threadIdx.x;

			for (o = 1; o < C; o <<= 1)
				p[r] += __shfl_xor_sync(0xffffffffu, p[r], o);
			if ((x & (C - 1)) == 0 && x < tot && (x >> sh) < nk)
				vs[x >> sh] = p[r];
		}
	}
}

/*
 * The squared norms of nk <= 32 rows of d elements at v, ldk apart, row
 * i's into lane i, for rows that ea_vnorms16 cannot read: the warp takes
 * the rows in turn, consecutive lanes on consecutive elements.
 */
template <typename T>
static __device__ float
ea_sqnorms(const T *v, int ldk, int nk, int d)
{
	int lane = threadIdx.x & 31, j, c, o;
	float p, x, mine = 0.0f;

	for (j = 0; j < nk; j++) {
		p = 0.0f;
		for (c = lane; c < d; c += 32) {
			x = ld(v + (size_t)j * ldk + c);
			p += x * x;
		}
		for (o = 16; o > 0; o >>= 1)
			p += __shfl_xor_sync(0xffffffffu, p, o);
		if (lane == j)
			mine = p;
	}
	return mine;
}

/*
 * Block per EA_T keys of segment blockIdx.y, a thread per key t < nc:
 * the logarithms of the group's weights reduced, plus that of the
 * value's norm (sel_ea_score: logarithms, so that far keys keep their
 * order instead of underflowing to ties).  The block first merges its g
 * rows' normalisers from ea_norm_k's nch partials and takes its values'
 * squared norms (V16: with 16-byte loads, else a warp's 32 at a time).
 */
template <typename T, bool V16>
__global__ void __launch_bounds__(EA_T)
ea_final_k(const float *lg, const float *ms, int nch, const T *v, int ldk,
    int n, int nc, int s0, int g, int d, int vnorm, int gqa, float *score,
    long long sstride)
{
	__shared__ float lz[EA_GMAX], vs[EA_T];
	int t0 = blockIdx.x * EA_T, t = t0 + threadIdx.x, s = blockIdx.y, h;
	int nk = nc - t0 < EA_T ? nc - t0 : EA_T;
	float acc = 0.0f, p;

	if (vnorm) {
		const T *vb = v + (size_t)t0 * ldk + (size_t)s * d;

		if constexpr (V16)
			ea_vnorms16(vb, ldk, nk, d, vs);
		else {
			int tb = threadIdx.x & ~31;
			float vn = tb < nk ? ea_sqnorms(vb + (size_t)tb * ldk,
			    ldk, nk - tb < 32 ? nk - tb : 32, d) : 0.0f;

			vs[threadIdx.x] = vn;
		}
	}
	ea_lognorm(ms, nch, s, g, lz);
	__syncthreads();
	if (t >= nc)
		return;
	for (h = 0; h < g; h++) {
		p = t < s0 ? -INFINITY : lg[(size_t)(s * g + h) * n + t] -
		    lz[h];
		acc = h == 0 ? p : gqa == 1 ? fmaxf(acc, p) :
		    ea_logaddexp(acc, p);
	}
	if (gqa != 1 && g > 1)
		acc -= logf((float)g);
	if (vnorm)
		acc += 0.5f * logf(vs[threadIdx.x]);
	score[(size_t)s * sstride + t] = acc;
}

/*
 * The tensor-core logits where they apply (fp16 keys of 64 or 128
 * elements, rows 16-byte aligned): 0 when launched, 1 when they do not
 * apply, else the launch's error.
 */
template <typename T>
static int
ea_sigma_tc(const float *, const float *, const T *, int, int, int, int,
    int, void *, cudaStream_t)
{
	return 1;
}

static int
ea_sigma_tc(const float *mu, const float *co, const __half *k, int ldk,
    int nseg, int n, int g, int d, void *scr, cudaStream_t stream)
{
	float *lg = (float *)scr, *hs = lg + ea_tc_at(nseg, g, n);
	__half *hl = (__half *)(((uintptr_t)(hs + nseg * g) + 15) &
	    ~(uintptr_t)15);
	dim3 grid((n + 16 * EA_TW - 1) / (16 * EA_TW), nseg, g);
	int rc;

	if ((d != 64 && d != 128) || (uintptr_t)k % 16 != 0 || ldk % 8 != 0)
		return 1;
	ea_split_k<<<dim3(nseg * g, EA_SB), EA_NT, 0, stream>>>(co, d, hl,
	    hs);
	if ((rc = launched()) != 0)
		return rc;
	if (d == 64)
		ea_sigma_tc_k<64><<<grid, 32 * EA_TW, 0, stream>>>(mu, hl, hs,
		    k, ldk, n, g, d, lg);
	else
		ea_sigma_tc_k<128><<<grid, 32 * EA_TW, 0, stream>>>(mu, hl,
		    hs, k, ldk, n, g, d, lg);
	return launched();
}

/* The three launches for one element type (logits, normalisers'
 * partials, scores). */
template <typename T>
static int
ea_score_t(const float *mu, const float *co, int cov, const float *w,
    int nq, const T *k, const T *v, int nseg, int n, int nc, int s0, int g,
    int d, int ldk, int vnorm, int gqa, float *scr, float *score,
    long long sstride, cudaStream_t stream)
{
	float *ms = scr + (size_t)nseg * g * n;
	int nch = ea_nch(n), rc;
	size_t rb = (size_t)d * sizeof(T), pc = rb / 16;
	/* the values' rows in 16-byte pieces, a power of two of them */
	bool v16 = rb % 16 == 0 && pc <= 32 && (pc & (pc - 1)) == 0 &&
	    (uintptr_t)v % 16 == 0 && (size_t)ldk * sizeof(T) % 16 == 0;

	dim3 rg((n + EA_KB - 1) / EA_KB, nseg);

	if (cov == 0 && w == NULL && (rc = ea_sigma_tc(mu, co, k, ldk, nseg, n,
	    g, d, scr, stream)) != 1) {
		if (rc != 0)
			return rc;
	} else if (cov == 0 && w == NULL && d <= 64)
		ea_sigma_k<T, 64><<<dim3((n + EA_RB(64) - 1) / EA_RB(64), nseg,
		    g), EA_RT, 0, stream>>>(mu, co, k, ldk, n, g, d, scr);
	else if (cov == 0 && w == NULL && d <= 128)
		ea_sigma_k<T, 128><<<dim3((n + EA_RB(128) - 1) / EA_RB(128),
		    nseg, g), EA_RT, 0, stream>>>(mu, co, k, ldk, n, g, d,
		    scr);
	else if (cov == 0 && w == NULL)
		ea_sigma_k<T, 256><<<dim3((n + EA_RB(256) - 1) / EA_RB(256),
		    nseg, g), EA_RT, 0, stream>>>(mu, co, k, ldk, n, g, d,
		    scr);
	else if (cov == 0 && d == 64)
		ea_rows_k<T, 64><<<rg, EA_KB, 0, stream>>>(mu, co, w, nq, k,
		    ldk, n, g, d, scr);
	else if (cov == 0 && d == 128)
		ea_rows_k<T, 128><<<rg, EA_KB, 0, stream>>>(mu, co, w, nq, k,
		    ldk, n, g, d, scr);
	else if (cov == 0)
		ea_rows_k<T, 0><<<rg, EA_KB, 0, stream>>>(mu, co, w, nq, k,
		    ldk, n, g, d, scr);
	else
		ea_logits_k<T><<<dim3((n + EA_WPB - 1) / EA_WPB, nseg),
		    32 * EA_WPB, 0, stream>>>(mu, co, cov, k, ldk, n, g, d,
		    scr);
	if ((rc = launched()) != 0)
		return rc;
	ea_norm_k<<<dim3(nch, nseg * g), EA_NT, 0, stream>>>(scr, n, s0, nch,
	    ms);
	if ((rc = launched()) != 0)
		return rc;
	if (v16)
		ea_final_k<T, true><<<dim3((nc + EA_T - 1) / EA_T, nseg), EA_T,
		    0, stream>>>(scr, ms, nch, v, ldk, n, nc, s0, g, d, vnorm,
		    gqa, score, sstride);
	else
		ea_final_k<T, false><<<dim3((nc + EA_T - 1) / EA_T, nseg),
		    EA_T, 0, stream>>>(scr, ms, nch, v, ldk, n, nc, s0, g, d,
		    vnorm, gqa, score, sstride);
	return launched();
}

extern "C" int
kvx_cuda_ea_score(const float *d_mu, const float *d_cov, int cov,
    const float *d_w, int nq, const void *d_k, const void *d_v, int dtype,
    int nseg, int n, int nc, int s0, int g, int d, int ldk, int vnorm,
    int gqa, void *d_scratch, float *d_score, long long sstride,
    cudaStream_t stream)
{
	float *scr = (float *)d_scratch;

	if (nseg < 1 || n < 1 || nc < 1 || nc > n || s0 < 0 || s0 >= n ||
	    g < 1 || g > EA_GMAX || d < 1 || d > 32 * EA_KMAX || cov < 0 || cov > 2 ||
	    (d_w != NULL && cov == 0 && nq < 1) ||
	    (d_cov == NULL && cov != 2 && !(cov == 0 && d_w != NULL)))
		return KVX_CUDA_EINVAL;
	switch (dtype) {
	case KVX_CUDA_F32:
		return ea_score_t(d_mu, d_cov, cov, d_w, nq,
		    (const float *)d_k, (const float *)d_v, nseg, n, nc, s0, g,
		    d, ldk, vnorm, gqa, scr, d_score, sstride, stream);
	case KVX_CUDA_F16:
		return ea_score_t(d_mu, d_cov, cov, d_w, nq,
		    (const __half *)d_k, (const __half *)d_v, nseg, n, nc, s0,
		    g, d, ldk, vnorm, gqa, scr, d_score, sstride, stream);
	case KVX_CUDA_BF16:
		return ea_score_t(d_mu, d_cov, cov, d_w, nq,
		    (const __nv_bfloat16 *)d_k, (const __nv_bfloat16 *)d_v,
		    nseg, n, nc, s0, g, d, ldk, vnorm, gqa, scr, d_score,
		    sstride, stream);
	}
	return KVX_CUDA_EINVAL;
}
