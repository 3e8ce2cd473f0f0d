/*
 * kernels.cu - CUDA kernels of libkvx: window scoring and pooling, per-head
 * top-k selection and the hybrid split of a layer's budget over its
 * heads, K/V gather, ragged split-K decode attention, and the layer
 * kernels of the forward.
 * SPDX-License-Identifier: MIT
 *
 * Each kernel is the twin of a CPU function in runtime/select.c or
 * runtime/attn.c and follows its definition, tie-breaking included.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kvx_cuda.h"

#define LOG2E 1.4426950408889634f

// --- helpers -----------------------------------------------------------------

/* Launch status: the launch error if any, else 0. */
static int
launched(void)
{
	cudaError_t e = cudaGetLastError();

	return e == cudaSuccess ? 0 : (int)e;
}

extern "C" int
kvx_cuda_available(void)
{
	int n = 0;

	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		cudaGetLastError();
		return 0;
	}
	return n > 0;
}

extern "C" const char *
kvx_cuda_strerror(int code)
{
	if (code == KVX_CUDA_EINVAL)
		return "invalid argument";
	return cudaGetErrorString((cudaError_t)code);
}

extern "C" int
kvx_cuda_malloc(void **p, size_t bytes)
{
	return (int)cudaMalloc(p, bytes);
}

extern "C" int
kvx_cuda_free(void *p)
{
	return (int)cudaFree(p);
}

extern "C" int
kvx_cuda_h2d(void *dst, const void *src, size_t bytes)
{
	return (int)cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
}

extern "C" int
kvx_cuda_d2h(void *dst, const void *src, size_t bytes)
{
	return (int)cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
}

extern "C" int
kvx_cuda_memset(void *p, int byte, size_t bytes)
{
	return (int)cudaMemset(p, byte, bytes);
}

extern "C" int
kvx_cuda_sync(void)
{
	return (int)cudaDeviceSynchronize();
}

extern "C" int
kvx_cuda_sm_count(void)
{
	int dev, n;

	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) !=
	    cudaSuccess)
		return 0;
	return n;
}

/* Element loads as float for the three storage types. */
static __device__ __forceinline__ float
ld(const float *p)
{
	return __ldg(p);
}

static __device__ __forceinline__ float
ld(const __half *p)
{
	return __half2float(*p);
}

static __device__ __forceinline__ float
ld(const __nv_bfloat16 *p)
{
	return __bfloat162float(*p);
}

/* Block-wide max and sum (blockDim.x a multiple of 32, <= 1024). */
static __device__ float
block_max(float v, float *sh)
{
	int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
	int nw = blockDim.x >> 5, o;

	for (o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	__syncthreads();
	if (lane == 0)
		sh[wid] = v;
	__syncthreads();
	v = lane < nw ? sh[lane] : -INFINITY;
	for (o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

static __device__ float
block_sum(float v, float *sh)
{
	int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
	int nw = blockDim.x >> 5, o;

	for (o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	__syncthreads();
	if (lane == 0)
		sh[wid] = v;
	__syncthreads();
	v = lane < nw ? sh[lane] : 0.0f;
	for (o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

/* Exclusive block-wide prefix sum; *total receives the block's sum. */
static __device__ int
block_scan(int v, int *sh, int *total)
{
	int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
	int nw = blockDim.x >> 5, x = v, o, y;

	for (o = 1; o < 32; o <<= 1) {
		y = __shfl_up_sync(0xffffffffu, x, o);
		if (lane >= o)
			x += y;
	}
	__syncthreads();
	if (lane == 31)
		sh[wid] = x;
	__syncthreads();
	if (wid == 0) {
		int s = lane < nw ? sh[lane] : 0;

		for (o = 1; o < 32; o <<= 1) {
			y = __shfl_up_sync(0xffffffffu, s, o);
			if (lane >= o)
				s += y;
		}
		if (lane < nw)
			sh[lane] = s;
	}
	__syncthreads();
	*total = sh[nw - 1];
	return x - v + (wid > 0 ? sh[wid - 1] : 0);
}

// --- 1. scoring and pooling --------------------------------------------------

/*
 * Scoring runs in three launches over tiles of SC_TK keys: per tile and
 * window query, the max and the sum of exponentials of its logits; their
 * merge per query; then per key the probabilities summed over the window.
 * A block holds its tile's keys in shared memory as floats, rows padded
 * so that 16-byte reads of successive rows fall in distinct banks; each
 * warp takes one query at a time, each lane two keys, so every reduction
 * stays within a warp.
 */
#define SC_TK 64	/* keys per block */
#define SC_W 8		/* warps per block */
#define SC_QB 4		/* queries a warp takes at once */

static int
score_tiles(int max_n)
{
	return (max_n + SC_TK - 1) / SC_TK;
}

/* Scratch bytes: the tiles' statistics and the merged ones, then (when
 * logits) nseg x g x w rows of max_n logits. */
extern "C" size_t
kvx_cuda_score_scratch(int nseg, int g, int w, int max_n, int logits)
{
	size_t b = sizeof(float2) * (size_t)nseg * g * w *
	    (score_tiles(max_n) + 1);

	return logits ? b + sizeof(float) * (size_t)nseg * g * w * max_n : b;
}

/* Floats per padded row of d elements. */
static __host__ __device__ __forceinline__ int
score_pad(int d)
{
	return ((d + 3) & ~3) + 4;
}

/* Shared-memory bytes of the scoring kernels. */
static size_t
score_smem(int g, int d)
{
	return sizeof(float) * ((size_t)(SC_TK + SC_W * SC_QB) * score_pad(d) +
	    (size_t)SC_W * g * SC_TK);
}

/* Tile rows t0 .. t0 + SC_TK - 1 (those below lim) of K into sk, as
 * floats, zero-padded. */
template <typename T>
static __device__ void
score_load(const T *ks, int ld_, int t0, int lim, int d, float *sk)
{
	int dp = score_pad(d), i;

#pragma unroll 4
	for (i = threadIdx.x; i < SC_TK * dp; i += blockDim.x) {
		int r = i / dp, c = i - r * dp;

		sk[i] = t0 + r < lim && c < d ?
		    ld(ks + (size_t)(t0 + r) * ld_ + c) : 0.0f;
	}
}

/* Elements of a query each lane holds: QR = ceil(score_pad(d) / 32),
 * 3 for d <= 64, 5 for d <= 128, 9 for d <= 256 (score_qr). */
static int
score_qr(int d)
{
	int dp = score_pad(d);

	return dp <= 96 ? 3 : dp <= 160 ? 5 : 9;
}

/* Loads this lane's part of window query j (head j / w, position j % w)
 * of segment s into registers, zero-padded; issued one step ahead so
 * that the load overlaps the current step's arithmetic. */
template <int QR>
static __device__ __forceinline__ void
score_qload(const float *q, long long qhs, long long qps, int s, int g,
    int w, int d, int j, float *qr)
{
	const float *qj = q + (size_t)(s * g + j / w) * qhs +
	    (size_t)(j % w) * qps;
	int lane = threadIdx.x & 31, x;

#pragma unroll
	for (x = 0; x < QR; x++)
		qr[x] = lane + 32 * x < d ? __ldg(qj + lane + 32 * x) : 0.0f;
}

/* The loaded query into this warp's padded row wq. */
template <int QR>
static __device__ __forceinline__ void
score_qstore(const float *qr, int d, float *wq)
{
	int lane = threadIdx.x & 31, dp = score_pad(d), x;

	__syncwarp();
#pragma unroll
	for (x = 0; x < QR; x++)
		if (lane + 32 * x < dp)
			wq[lane + 32 * x] = qr[x];
	__syncwarp();
}

/*
 * Dot products of SC_QB padded query rows (wq, rows dp apart) with two
 * padded key rows ka and kb, in 16-byte steps: each key element read
 * from shared memory serves SC_QB queries.  Each product sums as a
 * four-way split added pairwise, the same for every query.
 */
static __device__ __forceinline__ void
score_dot4(const float *wq, int dp, const float *ka, const float *kb, int d,
    float *ra, float *rb)
{
	float4 aa[SC_QB], ab[SC_QB];
	int i, u;

#pragma unroll
	for (u = 0; u < SC_QB; u++) {
		aa[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
		ab[u] = aa[u];
	}
	for (i = 0; i < d; i += 4) {
		float4 y = *(const float4 *)(ka + i);
		float4 z = *(const float4 *)(kb + i);

#pragma unroll
		for (u = 0; u < SC_QB; u++) {
			float4 x = *(const float4 *)(wq + u * dp + i);

			aa[u].x += x.x * y.x;
			aa[u].y += x.y * y.y;
			aa[u].z += x.z * y.z;
			aa[u].w += x.w * y.w;
			ab[u].x += x.x * z.x;
			ab[u].y += x.y * z.y;
			ab[u].z += x.z * z.z;
			ab[u].w += x.w * z.w;
		}
	}
#pragma unroll
	for (u = 0; u < SC_QB; u++) {
		ra[u] = (aa[u].x + aa[u].y) + (aa[u].z + aa[u].w);
		rb[u] = (ab[u].x + ab[u].y) + (ab[u].z + ab[u].w);
	}
}

/* score_qload for the SC_QB queries idx[u] (those < nq; the rest zero). */
template <int QR>
static __device__ __forceinline__ void
score_qload4(const float *q, long long qhs, long long qps, int s, int g,
    int w, int d, const int *idx, int nq, float (*qr)[QR])
{
	int u, x;

#pragma unroll
	for (u = 0; u < SC_QB; u++) {
		if (idx[u] < nq)
			score_qload<QR>(q, qhs, qps, s, g, w, d, idx[u], qr[u]);
		else
#pragma unroll
			for (x = 0; x < QR; x++)
				qr[u][x] = 0.0f;
	}
}

/* Pass 1: per tile and window query, the max and the sum of exponentials
 * of its logits over the keys it sees (its causal prefix).  A warp takes
 * SC_QB queries at a time, the next ones loading meanwhile, and reduces
 * their statistics together. */
template <typename T, int QR>
static __global__ void __launch_bounds__(SC_W * 32, QR <= 3 ? 3 : 2)
score_stats(const float *q, long long qhs, long long qps, const T *k,
    const long long *koff, const int *nrow, int g, int w, int d, int ld_,
    float scale2, int nt, float2 *stats, float *lg, int max_n)
{
	extern __shared__ float4 sm4[];
	float *sk = (float *)sm4, *wq;
	int s = blockIdx.y, c = blockIdx.x, n = nrow[s], gw = g * w;
	int t0 = c * SC_TK, dp = score_pad(d), lane = threadIdx.x & 31;
	int wid = threadIdx.x >> 5, j, o, u, idx[SC_QB];
	float qr[SC_QB][QR];

	wq = sk + SC_TK * dp + wid * SC_QB * dp;
	if (t0 >= n) {
		for (j = threadIdx.x; j < gw; j += blockDim.x)
			stats[((size_t)s * gw + j) * nt + c] =
			    make_float2(-INFINITY, 0.0f);
		return;
	}
	for (u = 0; u < SC_QB; u++)
		idx[u] = wid * SC_QB + u;
	score_qload4<QR>(q, qhs, qps, s, g, w, d, idx, gw, qr);
	score_load(k + koff[s], ld_, t0, n, d, sk);
	__syncthreads();
	for (j = wid * SC_QB; j < gw; j += SC_W * SC_QB) {
		int ta = t0 + lane, tb = ta + 32, lim[SC_QB];
		float ra[SC_QB], rb[SC_QB], mx[SC_QB], sm[SC_QB];

#pragma unroll
		for (u = 0; u < SC_QB; u++)
			score_qstore<QR>(qr[u], d, wq + u * dp);
#pragma unroll
		for (u = 0; u < SC_QB; u++)
			idx[u] = j + SC_W * SC_QB + u;
		if (idx[0] < gw)
			score_qload4<QR>(q, qhs, qps, s, g, w, d, idx, gw, qr);
		score_dot4(wq, dp, sk + lane * dp, sk + (lane + 32) * dp, d,
		    ra, rb);
		/* past gw: no keys (lim below every key) */
#pragma unroll
		for (u = 0; u < SC_QB; u++) {
			lim[u] = j + u < gw ? n - w + (j + u) % w : -1;
			/* the candidates' logits, for score_prob_lg */
			if (lg != NULL && j + u < gw) {
				float *row = lg + ((size_t)s * gw + j + u) *
				    max_n;

				if (ta < n - w)
					row[ta] = ra[u];
				if (tb < n - w)
					row[tb] = rb[u];
			}
			ra[u] = ta <= lim[u] ? ra[u] * scale2 : -INFINITY;
			rb[u] = tb <= lim[u] ? rb[u] * scale2 : -INFINITY;
			mx[u] = fmaxf(ra[u], rb[u]);
		}
		for (o = 16; o > 0; o >>= 1)
#pragma unroll
			for (u = 0; u < SC_QB; u++)
				mx[u] = fmaxf(mx[u], __shfl_xor_sync(0xffffffffu,
				    mx[u], o));
#pragma unroll
		for (u = 0; u < SC_QB; u++)
			sm[u] = mx[u] == -INFINITY ? 0.0f :
			    (ta <= lim[u] ? exp2f(ra[u] - mx[u]) : 0.0f) +
			    (tb <= lim[u] ? exp2f(rb[u] - mx[u]) : 0.0f);
		for (o = 16; o > 0; o >>= 1)
#pragma unroll
			for (u = 0; u < SC_QB; u++)
				sm[u] += __shfl_xor_sync(0xffffffffu, sm[u], o);
		if (lane == 0)
#pragma unroll
			for (u = 0; u < SC_QB; u++)
				if (j + u < gw)
					stats[((size_t)s * gw + j + u) * nt +
					    c] = mx[u] == -INFINITY ?
					    make_float2(-INFINITY, 0.0f) :
					    make_float2(mx[u], sm[u]);
	}
}

/* Pass 2: one warp per (segment, query) merges its tiles' statistics
 * into the max and 1 / (sum * w). */
static __global__ void
score_merge(const float2 *stats, int nq, int nt, int w, float2 *ms)
{
	int qi = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
	int lane = threadIdx.x & 31, c, o;
	const float2 *st;
	float mx = -INFINITY, L = 0.0f;

	if (qi >= nq)
		return;
	st = stats + (size_t)qi * nt;
	for (c = lane; c < nt; c += 32)
		if (st[c].y > 0.0f)
			mx = fmaxf(mx, st[c].x);
	for (o = 16; o > 0; o >>= 1)
		mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
	for (c = lane; c < nt; c += 32)
		if (st[c].y > 0.0f)
			L += st[c].y * exp2f(st[c].x - mx);
	for (o = 16; o > 0; o >>= 1)
		L += __shfl_xor_sync(0xffffffffu, L, o);
	if (lane == 0)
		ms[qi] = make_float2(mx, 1.0f / (L * (float)w));
}

/* Head h's window sum acc joined to the heads before it: max (gqa 1) or
 * sum (later divided by g). */
static __device__ __forceinline__ float
score_heads(float res, float acc, int h, int gqa)
{
	return h == 0 ? acc : (gqa == 1 ? fmaxf(res, acc) : res + acc);
}

/*
 * Pass 3: each key's score, the mean over the window of each head's
 * probabilities, combined over the heads by mean or max.  Warps take the
 * window positions in turn, SC_QB at a time; their partial sums meet in
 * shared memory and are added in a fixed order.
 */
template <typename T, int QR>
static __global__ void __launch_bounds__(SC_W * 32, QR <= 3 ? 3 : 2)
score_prob(const float *q, long long qhs, long long qps, const T *k,
    const long long *koff, const int *nrow, int g, int w, int d, int ld_,
    float scale2, int gqa, const float2 *ms, const long long *soff,
    float *score)
{
	extern __shared__ float4 sm4[];
	float *sk = (float *)sm4, *wq, *part;
	int s = blockIdx.y, n = nrow[s], gw = g * w, nc = n - w;
	int t0 = blockIdx.x * SC_TK, dp = score_pad(d), lane = threadIdx.x & 31;
	int wid = threadIdx.x >> 5, h, p, i, u, idx[SC_QB], pos[SC_QB];
	const float2 *mq = ms + (size_t)s * gw;
	float qr[SC_QB][QR];

	if (t0 >= nc)
		return;
	wq = sk + SC_TK * dp + wid * SC_QB * dp;
	part = sk + (SC_TK + SC_W * SC_QB) * dp;
	/* this warp's queries, in order: heads outer, positions wid,
	   wid + SC_W, ... inner, SC_QB of them a step (past w: none) */
	for (u = 0; u < SC_QB; u++)
		idx[u] = wid + u * SC_W < w ? wid + u * SC_W : gw;
	score_qload4<QR>(q, qhs, qps, s, g, w, d, idx, gw, qr);
	score_load(k + koff[s], ld_, t0, nc, d, sk);
	__syncthreads();
	for (h = 0; h < g; h++) {
		float a0 = 0.0f, a1 = 0.0f;

		for (p = wid; p < w; p += SC_W * SC_QB) {
			float ra[SC_QB], rb[SC_QB];
			int hn = h, pn = p + SC_W * SC_QB;

			for (u = 0; u < SC_QB; u++) {
				score_qstore<QR>(qr[u], d, wq + u * dp);
				pos[u] = p + u * SC_W;
			}
			/* the warp's next step: later positions, or the
			   next head's first ones */
			if (pn >= w) {
				hn = h + 1;
				pn = wid;
			}
			for (u = 0; u < SC_QB; u++)
				idx[u] = hn < g && pn + u * SC_W < w ?
				    hn * w + pn + u * SC_W : gw;
			if (idx[0] < gw)
				score_qload4<QR>(q, qhs, qps, s, g, w, d, idx,
				    gw, qr);
			score_dot4(wq, dp, sk + lane * dp, sk + (lane + 32) *
			    dp, d, ra, rb);
			for (u = 0; u < SC_QB && pos[u] < w; u++) {
				float2 m = mq[h * w + pos[u]];

				a0 += exp2f(ra[u] * scale2 - m.x) * m.y;
				a1 += exp2f(rb[u] * scale2 - m.x) * m.y;
			}
		}
		part[(wid * g + h) * SC_TK + lane] = a0;
		part[(wid * g + h) * SC_TK + lane + 32] = a1;
	}
	__syncthreads();
	if (threadIdx.x < SC_TK && t0 + (int)threadIdx.x < nc) {
		float res = 0.0f;

		for (h = 0; h < g; h++) {
			float acc = 0.0f;

			for (i = 0; i < SC_W; i++)
				acc += part[(i * g + h) * SC_TK + threadIdx.x];
			res = score_heads(res, acc, h, gqa);
		}
		score[soff[s] + t0 + threadIdx.x] = gqa == 1 ? res :
		    res / (float)g;
	}
}

/*
 * score_prob from the logits score_stats kept: a thread per key, adding
 * in score_prob's order (for each head, warp i's positions i, i + SC_W,
 * ... summed, then the warps' sums in turn), so the scores are the same.
 */
static __global__ void
score_prob_lg(const float *lg, int max_n, const int *nrow, int g, int w,
    float scale2, int gqa, const float2 *ms, const long long *soff,
    float *score)
{
	int s = blockIdx.y, gw = g * w, nc = nrow[s] - w, h, i, p;
	int t = blockIdx.x * blockDim.x + threadIdx.x;
	const float2 *mq = ms + (size_t)s * gw;
	const float *row = lg + (size_t)s * gw * max_n + t;
	float res = 0.0f;

	if (t >= nc)
		return;
	for (h = 0; h < g; h++) {
		float acc = 0.0f;

		for (i = 0; i < SC_W; i++) {
			float a = 0.0f;

			/* loads unrolled ahead of the ordered adds */
#pragma unroll 4
			for (p = i; p < w; p += SC_W) {
				float2 m = mq[h * w + p];

				a += exp2f(__ldg(row + (size_t)(h * w + p) *
				    max_n) * scale2 - m.x) * m.y;
			}
			acc += a;
		}
		res = score_heads(res, acc, h, gqa);
	}
	score[soff[s] + t] = gqa == 1 ? res : res / (float)g;
}

/* The three scoring launches for one storage type and query width. */
template <typename T, int QR>
static int
score_run_q(const float *q, long long qhs, long long qps, const T *k,
    const long long *koff, const int *n, int nseg, int max_n, int g, int w,
    int d, int ld_, float s2, int gqa, const long long *soff, void *scratch,
    size_t sbytes, float *score, cudaStream_t stream)
{
	static size_t raised;
	int nt = score_tiles(max_n), nq = nseg * g * w;
	float2 *stats = (float2 *)scratch, *ms = stats + (size_t)nq * nt;
	float *lg = sbytes >= kvx_cuda_score_scratch(nseg, g, w, max_n, 1) ?
	    (float *)(ms + nq) : NULL;
	size_t smb = score_smem(g, d);

	if (smb > 48 * 1024 && smb > raised) {
		if (cudaFuncSetAttribute(score_stats<T, QR>,
		    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smb) !=
		    cudaSuccess ||
		    cudaFuncSetAttribute(score_prob<T, QR>,
		    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smb) !=
		    cudaSuccess)
			return launched();
		raised = smb;
	}
	score_stats<T, QR><<<dim3(nt, nseg), SC_W * 32, smb, stream>>>(q, qhs,
	    qps, k, koff, n, g, w, d, ld_, s2, nt, stats, lg, max_n);
	score_merge<<<(nq + 7) / 8, 256, 0, stream>>>(stats, nq, nt, w, ms);
	if (lg != NULL)
		score_prob_lg<<<dim3((max_n - w + 63) / 64, nseg), 64, 0,
		    stream>>>(lg, max_n, n, g, w, s2, gqa, ms, soff, score);
	else
		score_prob<T, QR><<<dim3(score_tiles(max_n - w), nseg),
		    SC_W * 32, smb, stream>>>(q, qhs, qps, k, koff, n, g, w, d,
		    ld_, s2, gqa, ms, soff, score);
	return launched();
}

template <typename T>
static int
score_run(const float *q, long long qhs, long long qps, const T *k,
    const long long *koff, const int *n, int nseg, int max_n, int g, int w,
    int d, int ld_, float s2, int gqa, const long long *soff, void *scratch,
    size_t sbytes, float *score, cudaStream_t stream)
{
	switch (score_qr(d)) {
	case 3:
		return score_run_q<T, 3>(q, qhs, qps, k, koff, n, nseg, max_n,
		    g, w, d, ld_, s2, gqa, soff, scratch, sbytes, score,
		    stream);
	case 5:
		return score_run_q<T, 5>(q, qhs, qps, k, koff, n, nseg, max_n,
		    g, w, d, ld_, s2, gqa, soff, scratch, sbytes, score,
		    stream);
	default:
		return score_run_q<T, 9>(q, qhs, qps, k, koff, n, nseg, max_n,
		    g, w, d, ld_, s2, gqa, soff, scratch, sbytes, score,
		    stream);
	}
}

extern "C" int
kvx_cuda_score_q(const float *q, long long qhs, long long qps, const void *k,
    int dtype, const long long *koff, const int *n, int nseg, int max_n,
    int g, int w, int d, int ld_, float scale, int gqa,
    const long long *soff, void *scratch, size_t sbytes, float *score,
    cudaStream_t stream)
{
	float s2 = scale * LOG2E;

	if (nseg <= 0)
		return 0;
	if (max_n <= w || w < 1 || g < 1 || d < 1 || d > 256 ||
	    score_smem(g, d) > 200 * 1024 || nseg > 65535 ||
	    sbytes < kvx_cuda_score_scratch(nseg, g, w, max_n, 0))
		return KVX_CUDA_EINVAL;
	switch (dtype) {
	case KVX_CUDA_F32:
		return score_run(q, qhs, qps, (const float *)k, koff, n, nseg,
		    max_n, g, w, d, ld_, s2, gqa, soff, scratch, sbytes, score,
		    stream);
	case KVX_CUDA_F16:
		return score_run(q, qhs, qps, (const __half *)k, koff, n, nseg,
		    max_n, g, w, d, ld_, s2, gqa, soff, scratch, sbytes, score,
		    stream);
	case KVX_CUDA_BF16:
		return score_run(q, qhs, qps, (const __nv_bfloat16 *)k, koff, n,
		    nseg, max_n, g, w, d, ld_, s2, gqa, soff, scratch, sbytes,
		    score, stream);
	default:
		return KVX_CUDA_EINVAL;
	}
}

extern "C" int
kvx_cuda_score(const float *q, const void *k, int dtype, const long long *koff,
    const int *n, int nseg, int max_n, int g, int w, int d, int ld_,
    float scale, int gqa, const long long *soff, void *scratch, size_t sbytes,
    float *score, cudaStream_t stream)
{
	return kvx_cuda_score_q(q, (long long)w * d, d, k, dtype, koff, n, nseg,
	    max_n, g, w, d, ld_, scale, gqa, soff, scratch, sbytes, score,
	    stream);
}

/* Pooling of each segment's scores, the window clipped at the borders. */
static __global__ void
pool_k(const float *in, const long long *soff, const int *nrow, int w, int r,
    int avg, float *out)
{
	int s = blockIdx.y, n = nrow[s] - w, t = blockIdx.x * blockDim.x +
	    threadIdx.x, lo, hi, i;
	const float *a = in + soff[s];
	float acc;

	if (t >= n)
		return;
	lo = t - r < 0 ? 0 : t - r;
	hi = t + r >= n ? n - 1 : t + r;
	acc = avg ? 0.0f : a[lo];
	for (i = lo; i <= hi; i++)
		acc = avg ? acc + a[i] : fmaxf(acc, a[i]);
	out[soff[s] + t] = avg ? acc / (float)(hi - lo + 1) : acc;
}

extern "C" int
kvx_cuda_pool(const float *in, const long long *soff, const int *n, int nseg,
    int max_n, int w, int ks, int pool, float *out, cudaStream_t stream)
{
	int r = pool == 2 ? 0 : ks / 2;

	if (nseg <= 0 || max_n <= w)
		return 0;
	if (nseg > 65535)
		return KVX_CUDA_EINVAL;
	pool_k<<<dim3((max_n - w + 255) / 256, nseg), 256, 0, stream>>>(in,
	    soff, n, w, r, pool == 1, out);
	return launched();
}

// --- 2. top-k selection --------------------------------------------------------

#define SEL_T 1024

/* Order-preserving key of a score, as fkey() in runtime/select.c. */
static __device__ __forceinline__ uint32_t
fkey(float x)
{
	uint32_t u;

	if (x != x)
		return 0;
	if (x == 0.0f)
		x = 0.0f;
	u = __float_as_uint(x);
	return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

/*
 * Warp 0 of select_k: the highest digit at which the keys above reach
 * *need, as a scan from digit 255 down; each lane holds 8 digits, lane 0
 * the highest.  Digit 0 takes whatever is left, as in the serial form.
 */
static __device__ void
select_digit(const int *hist, int shift, int *need_s, int *gt_s,
    uint32_t *prefix_s, uint32_t prefix)
{
	int lane = threadIdx.x & 31, need = *need_s, v = 0, x, y, o, c, hit;
	int dg = -1, before = 0;
	unsigned who;

	for (x = 0; x < 8; x++)
		v += hist[255 - lane * 8 - x];
	y = v;
	for (o = 1; o < 32; o <<= 1) {
		int u = __shfl_up_sync(0xffffffffu, y, o);

		if (lane >= o)
			y += u;
	}
	c = y - v;	/* keys in higher digits than this lane's */
	for (x = 0; x < 8 && dg < 0; x++) {
		int d = 255 - lane * 8 - x;

		if (d == 0 || c + hist[d] >= need) {
			dg = d;
			before = c;
		} else
			c += hist[d];
	}
	hit = dg >= 0;
	who = __ballot_sync(0xffffffffu, hit);
	if (lane == __ffs(who) - 1) {
		*need_s = need - before;
		*gt_s += before;
		*prefix_s = prefix | (uint32_t)dg << shift;
	}
	__syncwarp();
}

/*
 * Histogram adds by runs: a thread counts consecutive keys of one bin
 * and adds the count when the bin changes (hs_add), then the lanes of a
 * warp that end in the same bin add their counts once (hs_flush, the
 * whole warp).  The keys of one segment share their top bits, so an add
 * per key would queue on one counter in the first passes.
 */
static __device__ __forceinline__ void
hs_add(int *hist, int slot, int *run, int *cnt)
{
	if (slot != *run) {
		if (*cnt > 0)
			atomicAdd(&hist[*run], *cnt);
		*run = slot;
		*cnt = 0;
	}
	(*cnt)++;
}

static __device__ __forceinline__ void
hs_flush(int *hist, int *run, int *cnt)
{
	unsigned peers = __match_any_sync(0xffffffffu, *cnt > 0 ? *run : -1);
	unsigned sum = __reduce_add_sync(peers, (unsigned)*cnt);

	if (*cnt > 0 && (threadIdx.x & 31) == __ffs(peers) - 1)
		atomicAdd(&hist[*run], (int)sum);
	*run = -1;
	*cnt = 0;
}

/*
 * The whole block: the k-th largest (1 <= k <= n) of n keys, keys[] when
 * set, else the keys of the scores a[]; four passes of 8-bit digits, most
 * significant first, as radix_kth in runtime/select.c.  Returns it, with
 * *gt_s the number of keys above it; hist keeps the last digit's counts,
 * so hist[key & 255] is the number equal to it.
 */
static __device__ uint32_t
block_kth(const uint32_t *keys, const float *a, int n, int k, int *hist,
    int *need_s, int *gt_s, uint32_t *pre_s)
{
	uint32_t prefix = 0, mask = 0;
	int shift, t;

	if (threadIdx.x == 0) {
		*need_s = k;
		*gt_s = 0;
	}
	for (shift = 24; shift >= 0; shift -= 8) {
		int run = -1, cnt = 0;

		for (t = threadIdx.x; t < 256; t += blockDim.x)
			hist[t] = 0;
		__syncthreads();
#pragma unroll 4
		for (t = threadIdx.x; t < n; t += blockDim.x) {
			uint32_t key = keys ? keys[t] : fkey(a[t]);

			if ((key & mask) == prefix)
				hs_add(hist, (int)(key >> shift & 255), &run,
				    &cnt);
		}
		hs_flush(hist, &run, &cnt);
		__syncthreads();
		if (threadIdx.x < 32)
			select_digit(hist, shift, need_s, gt_s, pre_s, prefix);
		__syncthreads();
		prefix = *pre_s;
		mask |= 255u << shift;
	}
	return prefix;
}

/*
 * One block per segment: radix select of the threshold key over 8-bit
 * digits, then an ordered compaction that takes every key above the
 * threshold and the lowest-indexed ties, as sel_select does.
 */
static __global__ void __launch_bounds__(SEL_T)
select_k(const float *pooled, const long long *soff, const int *nrow,
    const int *keep, int w, int sinks, const long long *ioff, int *idx,
    int *count)
{
	__shared__ int hist[256], sh[32];
	__shared__ uint32_t prefix_s;
	__shared__ int need_s, gt_s;
	int s = blockIdx.x, n = nrow[s], wv, sv, kp, kc, nc, t, base;
	int *out = idx + ioff[s];
	const float *a;
	uint32_t prefix;

	if (n <= 0) {
		if (threadIdx.x == 0)
			count[s] = 0;
		return;
	}
	wv = w < 0 ? 0 : (w > n ? n : w);
	sv = sinks < 0 ? 0 : (sinks > n - wv ? n - wv : sinks);
	kp = keep[s];
	kp = kp < wv + sv ? wv + sv : (kp > n ? n : kp);
	kc = kp - wv - sv;
	nc = n - wv - sv;
	a = pooled + soff[s] + sv;
	for (t = threadIdx.x; t < sv; t += blockDim.x)
		out[t] = t;
	for (t = threadIdx.x; t < wv; t += blockDim.x)
		out[kp - wv + t] = n - wv + t;
	if (threadIdx.x == 0)
		count[s] = kp;
	if (kc <= 0)
		return;
	if (kc >= nc) {
		for (t = threadIdx.x; t < nc; t += blockDim.x)
			out[sv + t] = sv + t;
		return;
	}
	prefix = block_kth(NULL, a, nc, kc, hist, &need_s, &gt_s, &prefix_s);
	{
		int ties = kc - gt_s, eq_before = 0, taken_before = 0, tot;

		for (base = 0; base < nc; base += blockDim.x) {
			int i = base + threadIdx.x, eq = 0, gt = 0, er, tk, pos;

			if (i < nc) {
				uint32_t key = fkey(a[i]);

				gt = key > prefix;
				eq = key == prefix;
			}
			er = block_scan(eq, sh, &tot);
			tk = gt || (eq && eq_before + er < ties);
			eq_before += tot;
			pos = block_scan(tk, sh, &tot);
			if (tk)
				out[sv + taken_before + pos] = sv + i;
			taken_before += tot;
			if (taken_before >= kc)
				break;
		}
	}
}

extern "C" int
kvx_cuda_select(const float *pooled, const long long *soff, const int *n,
    const int *keep, int nseg, int w, int sinks, const long long *ioff,
    int *idx, int *count, cudaStream_t stream)
{
	if (nseg <= 0)
		return 0;
	select_k<<<nseg, SEL_T, 0, stream>>>(pooled, soff, n, keep, w, sinks,
	    ioff, idx, count);
	return launched();
}

/* Keys the split keeps in shared memory (160 KiB); beyond, it reads the
 * scores again at each pass. */
#define HS_KEYS 40960

/*
 * Histogram of the current digit over the candidates that the heads'
 * floors leave (keys below each head's lim in mode 1, all in mode 0,
 * none in mode 2) and that match prefix.  Keys come from keys (h rows
 * of n_cand) when set, else from the scores.
 */
static __device__ void
hs_hist(const uint32_t *keys, const float *pooled, const long long *soff,
    int c0, int n_cand, int h, const int *mode, const uint32_t *lim,
    uint32_t prefix, uint32_t mask, int shift, int *hist)
{
	int i, t, run = -1, cnt = 0;

	for (i = 0; i < h; i++) {
		int md = mode[i];
		uint32_t lm = lim[i];
		const uint32_t *kk = keys ? keys + (size_t)i * n_cand : NULL;
		const float *ps = pooled + soff[i] + c0;

		if (md == 2)
			continue;
#pragma unroll 4
		for (t = threadIdx.x; t < n_cand; t += blockDim.x) {
			uint32_t key = kk ? kk[t] : fkey(ps[t]);

			if ((md == 0 || key < lm) && (key & mask) == prefix)
				hs_add(hist, (int)(key >> shift & 255), &run,
				    &cnt);
		}
		hs_flush(hist, &run, &cnt);
	}
}

/* The split's floor, total and shared rest after sel_hybrid_split's
 * clamps. */
static __host__ __device__ __forceinline__ void
hs_clamp(int h, int *n_cand, int *total, int floor_, int *f, int *r)
{
	if (*n_cand < 0)
		*n_cand = 0;
	if (*total < 0)
		*total = 0;
	if ((long long)*total > (long long)h * *n_cand)
		*total = h * *n_cand;
	*f = floor_ < 0 ? 0 : (floor_ > *n_cand ? *n_cand : floor_);
	if ((long long)*f * h > *total)
		*f = *total / h;
	*r = *total - *f * h;
}

/*
 * The floors, a block per head (0 < f < n_cand): the f-th largest key of
 * head blockIdx.x (flim) and how many keys equal to it the floor leaves
 * (fextra).  With cached set, the head's keys first go to shared memory.
 */
static __global__ void __launch_bounds__(SEL_T)
hybrid_floor_k(const float *pooled, const long long *soff, int c0,
    int n_cand, int f, int cached, uint32_t *flim, int *fextra)
{
	extern __shared__ uint32_t kc[];
	__shared__ int hist[256], need_s, gt_s;
	__shared__ uint32_t pre_s;
	const float *a = pooled + soff[blockIdx.x] + c0;
	uint32_t lim;
	int j;

	if (cached)
		for (j = threadIdx.x; j < n_cand; j += blockDim.x)
			kc[j] = fkey(a[j]);
	/* (block_kth's first barrier orders the keys before their use) */
	lim = block_kth(cached ? kc : NULL, a, n_cand, f, hist, &need_s,
	    &gt_s, &pre_s);
	if (threadIdx.x == 0) {
		flim[blockIdx.x] = lim;
		fextra[blockIdx.x] = hist[lim & 255] - (f - gt_s);
	}
}

/*
 * One block, after hybrid_floor_k: the twin of sel_hybrid_split.  One
 * radix select over what the heads' floors leave finds the threshold of
 * the shared rest, and the ties at it go to the heads in order.  Modes
 * per head: 0 all keys remain, 1 keys below lim plus extra copies of
 * lim, 2 none.  With cached set, the keys first go to shared memory.
 */
static __global__ void __launch_bounds__(SEL_T)
hybrid_split_k(const float *pooled, const long long *soff, int c0, int h,
    int n_cand, int total, int floor_, int cached, const uint32_t *flim,
    const int *fextra, int *counts, struct kvx_cuda_hlayout lay,
    long long *dst, int *keep)
{
	extern __shared__ uint32_t kc[];
	__shared__ int hist[256], need_s, gt_s;
	__shared__ uint32_t pre_s, lim[64];
	__shared__ int mode[64], extra[64], hgt[64], hge[64];
	int f, r, i, j, shift, t;
	uint32_t prefix = 0, mask = 0;
	const uint32_t *keys = cached ? kc : NULL;

	hs_clamp(h, &n_cand, &total, floor_, &f, &r);
	for (i = threadIdx.x; i < h; i += blockDim.x) {
		mode[i] = f == 0 ? 0 : (f >= n_cand ? 2 : 1);
		lim[i] = mode[i] == 1 ? flim[i] : 0u;
		extra[i] = mode[i] == 1 ? fextra[i] : 0;
		hgt[i] = hge[i] = 0;
	}
	if (cached && r > 0)
		for (i = 0; i < h; i++)
			for (j = threadIdx.x; j < n_cand; j += blockDim.x)
				kc[(size_t)i * n_cand + j] = fkey(pooled[soff[i] +
				    c0 + j]);
	__syncthreads();
	if (r > 0) {
		int cg, ce;

		/* the r-th largest of what the floors leave */
		if (threadIdx.x == 0) {
			need_s = r;
			gt_s = 0;
		}
		for (shift = 24; shift >= 0; shift -= 8) {
			for (t = threadIdx.x; t < 256; t += blockDim.x)
				hist[t] = 0;
			__syncthreads();
			hs_hist(keys, pooled, soff, c0, n_cand, h, mode, lim,
			    prefix, mask, shift, hist);
			__syncthreads();
			if (threadIdx.x == 0)
				for (i = 0; i < h; i++)
					if (mode[i] == 1 && extra[i] > 0 &&
					    (lim[i] & mask) == prefix)
						hist[lim[i] >> shift & 255] +=
						    extra[i];
			__syncthreads();
			if (threadIdx.x < 32)
				select_digit(hist, shift, &need_s, &gt_s,
				    &pre_s, prefix);
			__syncthreads();
			prefix = pre_s;
			mask |= 255u << shift;
		}
		/* per head: remaining keys above and at the threshold */
		for (i = 0; i < h; i++) {
			const uint32_t *kk = keys ? keys + (size_t)i * n_cand :
			    NULL;
			const float *ps = pooled + soff[i] + c0;
			uint32_t lm = mode[i] == 1 ? lim[i] : 0xffffffffu;

			if (mode[i] == 2)
				continue;
			cg = ce = 0;
#pragma unroll 4
			for (t = threadIdx.x; t < n_cand; t += blockDim.x) {
				uint32_t key = kk ? kk[t] : fkey(ps[t]);

				if (mode[i] == 1 && key >= lm)
					continue;
				cg += key > prefix;
				ce += key == prefix;
			}
			cg = (int)__reduce_add_sync(0xffffffffu, (unsigned)cg);
			ce = (int)__reduce_add_sync(0xffffffffu, (unsigned)ce);
			if ((threadIdx.x & 31) == 0) {
				atomicAdd(&hgt[i], cg);
				atomicAdd(&hge[i], ce);
			}
		}
		__syncthreads();
	}
	if (threadIdx.x != 0)
		return;
	{
		int q = r > 0 ? r - gt_s : 0, ge;
		long long at = lay.base;

		for (i = 0; i < h; i++) {
			if (r > 0 && mode[i] == 1) {
				if (lim[i] > prefix)
					hgt[i] += extra[i];
				else if (lim[i] == prefix)
					hge[i] += extra[i];
			}
			ge = hge[i] > q ? q : hge[i];
			q -= ge;
			counts[i] = f + (r > 0 ? hgt[i] + ge : 0);
			if (keep != NULL) {
				int kp = counts[i] + lay.add, c;

				kp = kp > lay.nmax ? lay.nmax : kp;
				c = kp < lay.minc ? lay.minc : kp;
				keep[i] = kp;
				dst[i] = at;
				at += (long long)(c + lay.headroom) * lay.row;
			}
		}
	}
}

extern "C" int
kvx_cuda_hybrid_split(const float *pooled, const long long *soff, int c0,
    int h, int n_cand, int total, int floor_, int *counts, int *scratch,
    const struct kvx_cuda_hlayout *lay, long long *dst, int *keep,
    cudaStream_t stream)
{
	static int ready;
	struct kvx_cuda_hlayout none = { 0, 0, 0, 0, 0, 0 };
	int f, r, nc = n_cand, tot = total;
	long long nk;

	if (h <= 0)
		return 0;
	if (h > 64 || c0 < 0 || counts == NULL || scratch == NULL ||
	    (lay != NULL && (dst == NULL || keep == NULL)))
		return KVX_CUDA_EINVAL;
	hs_clamp(h, &nc, &tot, floor_, &f, &r);
	nk = (long long)h * nc;
	if (nk > INT_MAX)
		return KVX_CUDA_EINVAL;
	if (!ready) {
		if (cudaFuncSetAttribute(hybrid_split_k,
		    cudaFuncAttributeMaxDynamicSharedMemorySize,
		    HS_KEYS * 4) != cudaSuccess ||
		    cudaFuncSetAttribute(hybrid_floor_k,
		    cudaFuncAttributeMaxDynamicSharedMemorySize,
		    HS_KEYS * 4) != cudaSuccess)
			return launched();
		ready = 1;
	}
	if (f > 0 && f < nc)
		hybrid_floor_k<<<h, SEL_T, nc <= HS_KEYS ? (size_t)nc * 4 : 0,
		    stream>>>(pooled, soff, c0, nc, f, nc <= HS_KEYS,
		    (uint32_t *)scratch, scratch + h);
	hybrid_split_k<<<1, SEL_T, r > 0 && nk <= HS_KEYS ? (size_t)nk * 4 :
	    0, stream>>>(pooled, soff, c0, h, n_cand, total, floor_,
	    r > 0 && nk <= HS_KEYS, (const uint32_t *)scratch, scratch + h,
	    counts, lay ? *lay : none, lay ? dst : NULL, lay ? keep : NULL);
	return launched();
}

// --- 3. gather -----------------------------------------------------------------

/* One warp a row; 16-byte copies when rows allow, else 2- or 4-byte ones. */
template <typename V>
static __global__ void
gather_k(const char *ksrc, const char *vsrc, char *kdst, char *vdst, int rowb,
    int lds, int ldd, int esz, const long long *src_off,
    const long long *dst_off, const int *idx, const long long *ioff,
    const int *count)
{
	int s = blockIdx.y, lane = threadIdx.x & 31;
	int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), e;
	size_t so, dof;

	if (i >= count[s])
		return;
	so = ((size_t)src_off[s] + (size_t)idx[ioff[s] + i] * lds) * esz;
	dof = ((size_t)dst_off[s] + (size_t)i * ldd) * esz;
	for (e = lane; e < rowb / (int)sizeof(V); e += 32) {
		((V *)(kdst + dof))[e] = ((const V *)(ksrc + so))[e];
		((V *)(vdst + dof))[e] = ((const V *)(vsrc + so))[e];
	}
}

extern "C" int
kvx_cuda_gather(const void *ksrc, const void *vsrc, void *kdst, void *vdst,
    int dtype, int d, int ld_src, int ld_dst, const long long *src_off,
    const long long *dst_off, const int *idx, const long long *ioff,
    const int *count, int nseg, int max_count, cudaStream_t stream)
{
	int esz = dtype == KVX_CUDA_F32 ? 4 : 2, rowb = d * esz;
	uintptr_t al = (uintptr_t)ksrc | (uintptr_t)vsrc | (uintptr_t)kdst |
	    (uintptr_t)vdst;
	dim3 grid((max_count + 7) / 8, nseg);

	if (nseg <= 0 || max_count <= 0)
		return 0;
	if (dtype < KVX_CUDA_F32 || dtype > KVX_CUDA_BF16 || d < 1 ||
	    nseg > 65535)
		return KVX_CUDA_EINVAL;
	if (al % 16 == 0 && rowb % 16 == 0 && (ld_src * esz) % 16 == 0 &&
	    (ld_dst * esz) % 16 == 0)
		gather_k<uint4><<<grid, 256, 0, stream>>>((const char *)ksrc,
		    (const char *)vsrc, (char *)kdst, (char *)vdst, rowb, ld_src,
		    ld_dst, esz, src_off, dst_off, idx, ioff, count);
	else if (esz == 4)
		gather_k<float><<<grid, 256, 0, stream>>>((const char *)ksrc,
		    (const char *)vsrc, (char *)kdst, (char *)vdst, rowb, ld_src,
		    ld_dst, esz, src_off, dst_off, idx, ioff, count);
	else
		gather_k<unsigned short><<<grid, 256, 0, stream>>>(
		    (const char *)ksrc, (const char *)vsrc, (char *)kdst,
		    (char *)vdst, rowb, ld_src, ld_dst, esz, src_off, dst_off,
		    idx, ioff, count);
	return launched();
}

// --- 4. ragged split-K decode attention ------------------------------------

#define AT_THREADS 128
#define AT_TILE 8	/* rows a lane group has in flight */

/* Eight elements of a 16-byte K/V chunk as floats. */
static __device__ __forceinline__ void
unpack8(uint4 u, float *f, const __half *)
{
	const __half2 *h = (const __half2 *)&u;
	int i;

	for (i = 0; i < 4; i++) {
		float2 x = __half22float2(h[i]);

		f[2 * i] = x.x;
		f[2 * i + 1] = x.y;
	}
}

static __device__ __forceinline__ void
unpack8(uint4 u, float *f, const __nv_bfloat16 *)
{
	const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
	int i;

	for (i = 0; i < 4; i++) {
		float2 x = __bfloat1622float2(h[i]);

		f[2 * i] = x.x;
		f[2 * i + 1] = x.y;
	}
}

/*
 * Work item ii, rows [r0, r1) of one segment, by a whole block.  A row of
 * D elements is read by D/8 lanes with 16-byte loads; each lane group
 * walks its share of the rows AT_TILE at a time, K and V of a tile loaded
 * together, keeping for all G query heads an online softmax over its
 * rows.  The groups then merge in shared memory, so K and V are read once
 * for the whole GQA group.
 */
/*
 * One lane's share of TR rows: scores of its 8 elements against the G
 * queries, summed over the LPR lanes of the row, then the online-softmax
 * update of m, l and acc; rows at or past nvalid count as -inf.
 */
template <int G, int LPR, int TR, typename T>
static __device__ __forceinline__ void
attn_tile(const float (&qr)[G][8], const uint4 *kr, const uint4 *vr,
    int nvalid, float (&m)[G], float (&l)[G], float (&acc)[G][8])
{
	float s[TR][G];
	int i, h, e;

#pragma unroll
	for (i = 0; i < TR; i++) {
		float kf[8];

		unpack8(kr[i], kf, (const T *)0);
#pragma unroll
		for (h = 0; h < G; h++) {
			float a = 0.0f;

#pragma unroll
			for (e = 0; e < 8; e++)
				a += qr[h][e] * kf[e];
			s[i][h] = a;
		}
	}
#pragma unroll
	for (i = 0; i < TR; i++) {
#pragma unroll
		for (h = 0; h < G; h++) {
			int o;

			for (o = LPR / 2; o > 0; o >>= 1)
				s[i][h] += __shfl_xor_sync(0xffffffffu,
				    s[i][h], o);
			if (i >= nvalid)
				s[i][h] = -INFINITY;
		}
	}
#pragma unroll
	for (h = 0; h < G; h++) {
		float mt = m[h], alpha;

#pragma unroll
		for (i = 0; i < TR; i++)
			mt = fmaxf(mt, s[i][h]);
		/* a group may have no rows yet: keep it empty */
		alpha = mt == -INFINITY ? 1.0f : exp2f(m[h] - mt);
		m[h] = mt;
		l[h] *= alpha;
#pragma unroll
		for (e = 0; e < 8; e++)
			acc[h][e] *= alpha;
#pragma unroll
		for (i = 0; i < TR; i++) {
			s[i][h] = s[i][h] == -INFINITY ? 0.0f :
			    exp2f(s[i][h] - mt);
			l[h] += s[i][h];
		}
	}
#pragma unroll
	for (i = 0; i < TR; i++) {
		float vf[8];

		unpack8(vr[i], vf, (const T *)0);
#pragma unroll
		for (h = 0; h < G; h++)
#pragma unroll
			for (e = 0; e < 8; e++)
				acc[h][e] += s[i][h] * vf[e];
	}
}

/* The lane's 8 query elements of each head, scaled, and empty state. */
template <int G, int D>
static __device__ __forceinline__ void
attn_init(const float *q, int seg, int li, float scale2, float (&qr)[G][8],
    float (&m)[G], float (&l)[G], float (&acc)[G][8])
{
	int h, e;

	for (h = 0; h < G; h++) {
		const float4 *qp = (const float4 *)(q + ((size_t)seg * G + h) *
		    D + li * 8);
		float4 a = qp[0], b = qp[1];

		qr[h][0] = a.x * scale2; qr[h][1] = a.y * scale2;
		qr[h][2] = a.z * scale2; qr[h][3] = a.w * scale2;
		qr[h][4] = b.x * scale2; qr[h][5] = b.y * scale2;
		qr[h][6] = b.z * scale2; qr[h][7] = b.w * scale2;
		m[h] = -INFINITY;
		l[h] = 0.0f;
		for (e = 0; e < 8; e++)
			acc[h][e] = 0.0f;
	}
}

/*
 * The lane groups' states merged in shared memory (sm_acc: NSG x G x D
 * floats) into item ii's partial.
 */
template <int G, int D>
static __device__ __forceinline__ void
attn_merge(int ii, const float (&m)[G], const float (&l)[G],
    const float (&acc)[G][8], float *sm_acc, float *pm, float *pl,
    float *pacc)
{
	constexpr int LPR = D / 8, NSG = AT_THREADS / LPR;
	__shared__ float sm_m[NSG][G], sm_l[NSG][G];
	int sg = threadIdx.x / LPR, li = threadIdx.x % LPR, h, e, i;

	for (h = 0; h < G; h++) {
		if (li == 0) {
			sm_m[sg][h] = m[h];
			sm_l[sg][h] = l[h];
		}
		for (e = 0; e < 8; e++)
			sm_acc[(sg * G + h) * D + li * 8 + e] = acc[h][e];
	}
	__syncthreads();
	for (i = threadIdx.x; i < G * D; i += AT_THREADS) {
		float M = -INFINITY, L = 0.0f, A = 0.0f, f;
		int g;

		h = i / D;
		e = i % D;
		for (g = 0; g < NSG; g++)
			M = fmaxf(M, sm_m[g][h]);
		for (g = 0; g < NSG; g++) {
			if (sm_m[g][h] == -INFINITY)
				continue;
			f = exp2f(sm_m[g][h] - M);
			L += sm_l[g][h] * f;
			A += sm_acc[(g * G + h) * D + e] * f;
		}
		pacc[((size_t)ii * G + h) * D + e] = A;
		if (e == 0) {
			pm[(size_t)ii * G + h] = M;
			pl[(size_t)ii * G + h] = L;
		}
	}
	/* the next item reuses the shared arrays */
	__syncthreads();
}

template <int G, int D, typename T>
static __device__ __forceinline__ void
attn_item(const float *q, const T *k, const T *v, const long long *off,
    int ld_, float scale2, struct kvx_cuda_work it, int ii, float *pm,
    float *pl, float *pacc)
{
	constexpr int LPR = D / 8, NSG = AT_THREADS / LPR, GPW = 32 / LPR;
	constexpr int STEP = NSG * AT_TILE;
	__shared__ float sm_acc[NSG * G * D];
	int sg = threadIdx.x / LPR, li = threadIdx.x % LPR, i, r, rw;
	const T *kb = k + off[it.seg], *vb = v + off[it.seg];
	float qr[G][8], m[G], l[G], acc[G][8];

	attn_init<G, D>(q, it.seg, li, scale2, qr, m, l, acc);
	/* the loop bound is uniform over a warp, for the shuffles below */
	for (rw = it.r0 + (threadIdx.x >> 5) * GPW * AT_TILE; rw < it.r1;
	    rw += STEP) {
		uint4 kr[AT_TILE], vr[AT_TILE];

		r = rw + (sg % GPW) * AT_TILE;

#pragma unroll
		for (i = 0; i < AT_TILE; i++) {
			int row = r + i < it.r1 ? r + i : it.r1 - 1;

			kr[i] = __ldg((const uint4 *)(kb + (size_t)row * ld_) +
			    li);
			vr[i] = __ldg((const uint4 *)(vb + (size_t)row * ld_) +
			    li);
		}
		attn_tile<G, LPR, AT_TILE, T>(qr, kr, vr, it.r1 - r, m, l, acc);
	}
	attn_merge<G, D>(ii, m, l, acc, sm_acc, pm, pl, pacc);
}

/*
 * Block b takes items bfirst[b] .. bfirst[b + 1] - 1 (a balanced list
 * from kvx_cuda_attn_balance), or item b alone when bfirst is NULL.
 * Up to four query heads, three blocks fit on a multiprocessor.
 */
template <int G, int D, typename T>
static __global__ void __launch_bounds__(AT_THREADS, G <= 4 ? 3 : 1)
attn_partial_k(const float *q, const T *k, const T *v, const long long *off,
    int ld_, float scale2, const struct kvx_cuda_work *items,
    const int *bfirst, float *pm, float *pl, float *pacc)
{
	int i0 = bfirst ? bfirst[blockIdx.x] : blockIdx.x;
	int i1 = bfirst ? bfirst[blockIdx.x + 1] : blockIdx.x + 1, ii;

	for (ii = i0; ii < i1; ii++)
		attn_item<G, D, T>(q, k, v, off, ld_, scale2, items[ii], ii, pm,
		    pl, pacc);
}

/* Items whose merge weights attn_finish keeps in shared memory. */
#define FM_ITEMS 128

/*
 * After item ii of segment s is written: the block that finishes the
 * segment's last item merges its partials into out (the combine of
 * attn_combine_k, done by one block), so that no second launch waits
 * for the whole grid.  Counters count finished items per segment; the
 * merging block sets its counter back to zero for the next launch.  The
 * merge is two passes: a warp per head finds the maximum, the sum and
 * the items' weights; then each thread sums its outputs over the items
 * with independent loads.
 */
template <int G, int D>
static __device__ __forceinline__ void
attn_finish(int s, const int *first, int *cnt, const float *pm,
    const float *pl, const float *pacc, float *out)
{
	__shared__ int s_last;
	__shared__ float s_w[FM_ITEMS][G], s_M[G], s_L[G];
	int j0 = first[s], j1 = first[s + 1], n = j1 - j0, i, j, h;
	int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;

	/* this block's partial, visible before the count says so */
	__threadfence();
	__syncthreads();
	if (threadIdx.x == 0)
		s_last = n == 1 || atomicAdd(&cnt[s], 1) == n - 1;
	__syncthreads();
	if (!s_last)
		return;
	__threadfence();
	for (h = wid; h < G; h += AT_THREADS / 32) {
		float M = -INFINITY, L = 0.0f;
		int o;

		for (j = lane; j < n; j += 32)
			if (__ldcg(pl + (size_t)(j0 + j) * G + h) > 0.0f)
				M = fmaxf(M, __ldcg(pm + (size_t)(j0 + j) * G +
				    h));
		for (o = 16; o > 0; o >>= 1)
			M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
		for (j = lane; j < n; j += 32) {
			float lj = __ldcg(pl + (size_t)(j0 + j) * G + h);
			float w = lj > 0.0f ? exp2f(__ldcg(pm + (size_t)(j0 +
			    j) * G + h) - M) : 0.0f;

			L += w * lj;
			if (j < FM_ITEMS)
				s_w[j][h] = w;
		}
		for (o = 16; o > 0; o >>= 1)
			L += __shfl_xor_sync(0xffffffffu, L, o);
		if (lane == 0) {
			s_M[h] = M;
			s_L[h] = L;
		}
	}
	__syncthreads();
	for (i = threadIdx.x; i < G * D; i += AT_THREADS) {
		int e = i % D;
		float A = 0.0f;

		h = i / D;
#pragma unroll 8
		for (j = 0; j < n && j < FM_ITEMS; j++)
			A += s_w[j][h] * __ldcg(pacc + ((size_t)(j0 + j) * G +
			    h) * D + e);
		for (j = FM_ITEMS; j < n; j++) {
			float lj = __ldcg(pl + (size_t)(j0 + j) * G + h);

			if (lj > 0.0f)
				A += exp2f(__ldcg(pm + (size_t)(j0 + j) * G +
				    h) - s_M[h]) * __ldcg(pacc + ((size_t)(j0 +
				    j) * G + h) * D + e);
		}
		out[((size_t)s * G + h) * D + e] = s_L[h] > 0.0f ? A /
		    s_L[h] : 0.0f;
	}
	if (threadIdx.x == 0 && n > 1)
		cnt[s] = 0;
}

/*
 * Partial attention and combine in one launch: the items as in
 * attn_partial_k, each followed by attn_finish.  Segments without items
 * get zeros, written by the blocks in turn.
 */
template <int G, int D, typename T>
static __global__ void __launch_bounds__(AT_THREADS, G <= 4 ? 3 : 1)
attn_fused_k(const float *q, const T *k, const T *v, const long long *off,
    int ld_, float scale2, const struct kvx_cuda_work *items,
    const int *bfirst, const int *first, int nseg, int *cnt, float *pm,
    float *pl, float *pacc, float *out)
{
	int i0 = bfirst ? bfirst[blockIdx.x] : blockIdx.x;
	int i1 = bfirst ? bfirst[blockIdx.x + 1] : blockIdx.x + 1, ii, s;

	for (ii = i0; ii < i1; ii++) {
		struct kvx_cuda_work it = items[ii];

		if (it.seg < 0)
			continue;
		attn_item<G, D, T>(q, k, v, off, ld_, scale2, it, ii, pm, pl,
		    pacc);
		attn_finish<G, D>(it.seg, first, cnt, pm, pl, pacc, out);
	}
	for (s = blockIdx.x; s < nseg; s += gridDim.x)
		if (first[s] == first[s + 1])
			for (ii = threadIdx.x; ii < G * D; ii += AT_THREADS)
				out[(size_t)s * G * D + ii] = 0.0f;
}

/*
 * Rows per item for a whole number of waves of blocks (three fit on a
 * multiprocessor) with items of about 512 rows: small items let the
 * block scheduler even out ragged segments, and a partial costs only
 * g x d floats against 512 rows of K and V.
 */
extern "C" int
kvx_cuda_attn_chunk(long long total_rows, int sm_count)
{
	long long slots = 3LL * (sm_count > 0 ? sm_count : 132), waves, c;

	waves = (total_rows + slots * 256) / (slots * 512);
	if (waves < 1)
		waves = 1;
	c = (total_rows + slots * waves - 1) / (slots * waves);
	return (int)(c < 16 ? 16 : (c > (1 << 30) ? (1 << 30) : c));
}

/*
 * Each segment is cut into round(len / chunk) (at least one) parts of
 * equal size, so that items stay close to chunk rows and balanced.
 */
extern "C" int
kvx_cuda_attn_worklist(const int *len, int nseg, int chunk,
    struct kvx_cuda_work *items, int cap, int *first)
{
	int s, p, np, n = 0;

	if (chunk < 1)
		return -1;
	for (s = 0; s < nseg; s++) {
		first[s] = n;
		if (len[s] <= 0)
			continue;
		np = (int)(((long long)len[s] + chunk / 2) / chunk);
		np = np < 1 ? 1 : np;
		for (p = 0; p < np; p++) {
			if (n >= cap)
				return -1;
			items[n].seg = s;
			items[n].r0 = (int)((long long)len[s] * p / np);
			items[n].r1 = (int)((long long)len[s] * (p + 1) / np);
			items[n].pad = 0;
			n++;
		}
	}
	first[nseg] = n;
	return n;
}

/*
 * Blocks b take rows [b T / nblk, (b + 1) T / nblk) of the T rows of all
 * segments laid end to end, cut at segment borders into items.
 */
extern "C" int
kvx_cuda_attn_balance(const int *len, int nseg, int nblk,
    struct kvx_cuda_work *items, int cap, int *first, int *bfirst)
{
	long long total = 0, g0, g1, base = 0;
	int b, s = 0, n = 0, j;

	if (nblk < 1)
		return -1;
	for (j = 0; j < nseg; j++)
		total += len[j] > 0 ? len[j] : 0;
	for (b = 0; b < nblk; b++) {
		bfirst[b] = n;
		g0 = total * b / nblk;
		g1 = total * (b + 1) / nblk;
		while (g0 < g1) {
			while (s < nseg && base + (len[s] > 0 ? len[s] : 0) <=
			    g0) {
				base += len[s] > 0 ? len[s] : 0;
				s++;
			}
			if (n >= cap || s >= nseg)
				return -1;
			items[n].seg = s;
			items[n].r0 = (int)(g0 - base);
			items[n].r1 = (int)((g1 < base + len[s] ? g1 :
			    base + len[s]) - base);
			items[n].pad = 0;
			g0 = base + items[n].r1;
			n++;
		}
	}
	bfirst[nblk] = n;
	for (s = 0, j = 0; s <= nseg; s++) {
		while (j < n && items[j].seg < s)
			j++;
		first[s] = j;
	}
	return n;
}

/* Arguments of one partial-attention launch. */
struct attn_args {
	const float			*q;
	const void			*k, *v;
	int				 dtype, ld, nblk;
	const long long			*off;
	float				 s2;
	const struct kvx_cuda_work	*items;
	const int			*bfirst;
	float				*m, *l, *acc;
	const int			*first;		/* fused only */
	int				*cnt, nseg;	/* fused only */
	float				*out;		/* fused when set */
	cudaStream_t			 st;
	int				*occupancy;	/* query only */
};

/* Launch (or occupancy query) for one (G, D) pair of run-time arguments. */
template <int G, int D, typename T>
static int
attn_launch_t(const struct attn_args *a)
{
	if (a->occupancy != NULL)
		return (int)cudaOccupancyMaxActiveBlocksPerMultiprocessor(
		    a->occupancy, attn_partial_k<G, D, T>, AT_THREADS, 0);
	if (a->out != NULL)
		attn_fused_k<G, D, T><<<a->nblk, AT_THREADS, 0, a->st>>>(a->q,
		    (const T *)a->k, (const T *)a->v, a->off, a->ld, a->s2,
		    a->items, a->bfirst, a->first, a->nseg, a->cnt, a->m, a->l,
		    a->acc, a->out);
	else
		attn_partial_k<G, D, T><<<a->nblk, AT_THREADS, 0, a->st>>>(
		    a->q, (const T *)a->k, (const T *)a->v, a->off, a->ld,
		    a->s2, a->items, a->bfirst, a->m, a->l, a->acc);
	return launched();
}

template <int G, int D>
static int
attn_launch(const struct attn_args *a)
{
	if (a->dtype == KVX_CUDA_F16)
		return attn_launch_t<G, D, __half>(a);
	if (a->dtype == KVX_CUDA_BF16)
		return attn_launch_t<G, D, __nv_bfloat16>(a);
	return KVX_CUDA_EINVAL;
}

template <int D>
static int
attn_launch_g(int g, const struct attn_args *a)
{
	switch (g) {
	case 1: return attn_launch<1, D>(a);
	case 2: return attn_launch<2, D>(a);
	case 3: return attn_launch<3, D>(a);
	case 4: return attn_launch<4, D>(a);
	case 5: return attn_launch<5, D>(a);
	case 6: return attn_launch<6, D>(a);
	case 7: return attn_launch<7, D>(a);
	case 8: return attn_launch<8, D>(a);
	}
	return KVX_CUDA_EINVAL;
}

static int
attn_dispatch(int g, int d, const struct attn_args *a)
{
	if (d == 64)
		return attn_launch_g<64>(g, a);
	if (d == 128)
		return attn_launch_g<128>(g, a);
	return KVX_CUDA_EINVAL;
}

extern "C" int
kvx_cuda_attn_blocks(int g, int d, int dtype)
{
	struct attn_args a;
	int occ = 0, sm = kvx_cuda_sm_count();

	memset(&a, 0, sizeof a);
	a.dtype = dtype;
	a.occupancy = &occ;
	if (attn_dispatch(g, d, &a) != 0 || occ < 1 || sm < 1)
		return 0;
	return occ * sm;
}

/* The arguments partial and fused launches share. */
static void
attn_args_init(struct attn_args *a, const float *q, const void *k,
    const void *v, int dtype, const long long *off, int ld_, float scale,
    const struct kvx_cuda_work *items, const int *bfirst, int nblocks,
    float *m, float *l, float *acc, cudaStream_t stream)
{
	memset(a, 0, sizeof *a);
	a->q = q;
	a->k = k;
	a->v = v;
	a->dtype = dtype;
	a->ld = ld_;
	a->nblk = nblocks;
	a->off = off;
	a->s2 = scale * LOG2E;
	a->items = items;
	a->bfirst = bfirst;
	a->m = m;
	a->l = l;
	a->acc = acc;
	a->st = stream;
}

/* 16-byte row loads need rows that start on 16-byte boundaries. */
static int
attn_aligned(const void *k, const void *v, int ld_)
{
	return ld_ % 8 == 0 && ((uintptr_t)k | (uintptr_t)v) % 16 == 0;
}

extern "C" int
kvx_cuda_attn_partial(const float *q, const void *k, const void *v, int dtype,
    const long long *off, int g, int d, int ld_, float scale,
    const struct kvx_cuda_work *items, const int *bfirst, int nblocks,
    float *m, float *l, float *acc, cudaStream_t stream)
{
	struct attn_args a;

	if (nblocks <= 0)
		return 0;
	if (!attn_aligned(k, v, ld_))
		return KVX_CUDA_EINVAL;
	attn_args_init(&a, q, k, v, dtype, off, ld_, scale, items, bfirst,
	    nblocks, m, l, acc, stream);
	return attn_dispatch(g, d, &a);
}

extern "C" int
kvx_cuda_attn_fused(const float *q, const void *k, const void *v, int dtype,
    const long long *off, int g, int d, int ld_, float scale,
    const struct kvx_cuda_work *items, const int *bfirst, int nblocks,
    const int *first, int nseg, int *cnt, float *m, float *l, float *acc,
    float *out, cudaStream_t stream)
{
	struct attn_args a;

	if (nseg <= 0)
		return 0;
	if (!attn_aligned(k, v, ld_) || out == NULL || cnt == NULL ||
	    first == NULL)
		return KVX_CUDA_EINVAL;
	/* at least one block, which still zeroes the empty segments */
	attn_args_init(&a, q, k, v, dtype, off, ld_, scale, items, bfirst,
	    nblocks > 0 ? nblocks : 1, m, l, acc, stream);
	a.first = first;
	a.nseg = nseg;
	a.cnt = cnt;
	a.out = out;
	return attn_dispatch(g, d, &a);
}

/*
 * Balanced lists pay off once each resident block has rows enough to
 * keep its loads in flight (about 2048, measured on an H100); below
 * that, several waves of ~512-row items let blocks that finish early
 * take more work.
 */
extern "C" int
kvx_cuda_attn_plan(const int *len, int nseg, int g, int d, int dtype,
    struct kvx_cuda_work *items, int cap, int *first, int *bfirst,
    int *nblocks, int *balanced)
{
	long long rows = 0;
	int s, res = kvx_cuda_attn_blocks(g, d, dtype), n;

	if (res < 1)
		return -1;
	for (s = 0; s < nseg; s++)
		rows += len[s] > 0 ? len[s] : 0;
	if (rows >= (long long)res * KVX_CUDA_BALANCE_ROWS) {
		n = kvx_cuda_attn_balance(len, nseg, res, items, cap, first,
		    bfirst);
		*nblocks = res;
		*balanced = 1;
		return n;
	}
	n = kvx_cuda_attn_worklist(len, nseg, kvx_cuda_attn_chunk(rows,
	    kvx_cuda_sm_count()), items, cap, first);
	*nblocks = n;
	*balanced = 0;
	return n;
}

#define CB_WARPS 8
#define CB_T (CB_WARPS * 32)

/*
 * Merge of one (segment, query head)'s partials.  The items' weights are
 * worked out together first, so that the warps, taking the items in
 * turn, issue independent loads; their sums meet in shared memory.
 */
static __global__ void __launch_bounds__(CB_T)
attn_combine_k(const int *first, int g, int d, const float *pm,
    const float *pl, const float *pacc, float *out)
{
	extern __shared__ float sA[];	/* CB_WARPS x d */
	__shared__ float red[32], sW[CB_T];
	float M = -INFINITY, L = 0.0f, a[8];
	int s = blockIdx.x, h = blockIdx.y, j0 = first[s], j1 = first[s + 1];
	int wid = threadIdx.x >> 5, lane = threadIdx.x & 31, j, jb, n, k, e;

	for (j = j0 + threadIdx.x; j < j1; j += CB_T)
		if (pl[(size_t)j * g + h] > 0.0f)
			M = fmaxf(M, pm[(size_t)j * g + h]);
	M = block_max(M, red);
	for (k = 0; k < 8; k++)
		a[k] = 0.0f;
	for (jb = j0; jb < j1; jb += CB_T) {
		n = j1 - jb < CB_T ? j1 - jb : CB_T;
		__syncthreads();
		if ((int)threadIdx.x < n) {
			j = jb + threadIdx.x;
			sW[threadIdx.x] = pl[(size_t)j * g + h] > 0.0f ?
			    exp2f(pm[(size_t)j * g + h] - M) : 0.0f;
			L += sW[threadIdx.x] * pl[(size_t)j * g + h];
		}
		__syncthreads();
#pragma unroll 4
		for (j = wid; j < n; j += CB_WARPS) {
			const float *pa = pacc + ((size_t)(jb + j) * g + h) * d;
			float f = sW[j];

#pragma unroll
			for (k = 0; k < 8; k++)
				if (lane + 32 * k < d && f > 0.0f)
					a[k] += pa[lane + 32 * k] * f;
		}
	}
	L = block_sum(L, red);
#pragma unroll
	for (k = 0; k < 8; k++)
		if (lane + 32 * k < d)
			sA[wid * d + lane + 32 * k] = a[k];
	__syncthreads();
	for (e = threadIdx.x; e < d; e += CB_T) {
		float A = 0.0f;

		for (k = 0; k < CB_WARPS; k++)
			A += sA[k * d + e];
		out[((size_t)s * g + h) * d + e] = L > 0.0f ? A / L : 0.0f;
	}
}

extern "C" int
kvx_cuda_attn_combine(const int *first, int nseg, int g, int d,
    const float *m, const float *l, const float *acc, float *out,
    cudaStream_t stream)
{
	if (nseg <= 0)
		return 0;
	if (d < 1 || d > 256 || g < 1 || g > 65535)
		return KVX_CUDA_EINVAL;
	attn_combine_k<<<dim3(nseg, g), CB_T, sizeof(float) * CB_WARPS * d,
	    stream>>>(first, g, d, m, l, acc, out);
	return launched();
}

// --- 5. model layers ---------------------------------------------------------

static __global__ void
embed_k(const __half *table, int e, const int *ids, float *x)
{
	int t = blockIdx.x, i;
	const __half *row = table + (size_t)ids[t] * e;

	for (i = threadIdx.x; i < e; i += blockDim.x)
		x[(size_t)t * e + i] = __half2float(row[i]);
}

extern "C" int
kvx_cuda_embed(const void *table, int e, const int *ids, int T, float *x,
    cudaStream_t stream)
{
	if (T <= 0)
		return 0;
	if (e < 1)
		return KVX_CUDA_EINVAL;
	embed_k<<<T, 256, 0, stream>>>((const __half *)table, e, ids, x);
	return launched();
}

/* One block a row; the sum of squares in double, as rmsnorm() does. */
static __global__ void
rmsnorm_k(const float *x, int ldx, const float *w, int e, float eps,
    void *out, int f16, int ldo)
{
	__shared__ double red[32];
	const float *xr = x + (size_t)blockIdx.x * ldx;
	int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, i, o;
	double ss = 0.0;
	float inv;

	for (i = threadIdx.x; i < e; i += blockDim.x)
		ss += (double)xr[i] * xr[i];
	for (o = 16; o > 0; o >>= 1)
		ss += __shfl_xor_sync(0xffffffffu, ss, o);
	if (lane == 0)
		red[wid] = ss;
	__syncthreads();
	if (wid == 0) {
		ss = lane < (int)(blockDim.x >> 5) ? red[lane] : 0.0;
		for (o = 16; o > 0; o >>= 1)
			ss += __shfl_xor_sync(0xffffffffu, ss, o);
		if (lane == 0)
			red[0] = ss;
	}
	__syncthreads();
	inv = 1.0f / sqrtf((float)(red[0] / e) + eps);
	for (i = threadIdx.x; i < e; i += blockDim.x) {
		float y = xr[i] * inv * w[i];

		if (f16)
			((__half *)out)[(size_t)blockIdx.x * ldo + i] =
			    __float2half(y);
		else
			((float *)out)[(size_t)blockIdx.x * ldo + i] = y;
	}
}

extern "C" int
kvx_cuda_rmsnorm(const float *x, int ldx, const float *w, int T, int e,
    float eps, void *out, int out_dtype, int ldo, cudaStream_t stream)
{
	if (T <= 0)
		return 0;
	if (e < 1 || (out_dtype != KVX_CUDA_F32 && out_dtype != KVX_CUDA_F16))
		return KVX_CUDA_EINVAL;
	rmsnorm_k<<<T, 256, 0, stream>>>(x, ldx, w, e, eps, out,
	    out_dtype == KVX_CUDA_F16, ldo);
	return launched();
}

/* One thread a pair; the angle in double, as rope() does. */
static __global__ void
rope_k(const float *in, int ldi, float *out, int ldo, int nhead, int d,
    const int *pos, float theta)
{
	int t = blockIdx.y, half = d / 2;
	int p = blockIdx.x * blockDim.x + threadIdx.x, h, i;
	double a, sn, cs;
	float x0, x1, c, s;

	if (p >= nhead * half)
		return;
	h = p / half;
	i = 2 * (p % half);
	a = (double)pos[t] * pow((double)theta, -(double)i / d);
	sincos(a, &sn, &cs);
	c = (float)cs;
	s = (float)sn;
	x0 = in[(size_t)t * ldi + h * d + i];
	x1 = in[(size_t)t * ldi + h * d + i + 1];
	out[(size_t)t * ldo + h * d + i] = x0 * c - x1 * s;
	out[(size_t)t * ldo + h * d + i + 1] = x0 * s + x1 * c;
}

extern "C" int
kvx_cuda_rope(const float *in, int ldi, float *out, int ldo, int T,
    int nhead, int d, const int *pos, float theta, cudaStream_t stream)
{
	int np = nhead * (d / 2);

	if (T <= 0)
		return 0;
	if (d < 2 || d % 2 != 0 || nhead < 1 || T > 65535)
		return KVX_CUDA_EINVAL;
	rope_k<<<dim3((np + 127) / 128, T), 128, 0, stream>>>(in, ldi, out,
	    ldo, nhead, d, pos, theta);
	return launched();
}

static __global__ void
swiglu_k(const float *gu, int f, size_t n, __half *out)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, t;
	float g, u;

	if (i >= n)
		return;
	t = i / f;
	g = gu[t * 2 * f + i % f];
	u = gu[t * 2 * f + f + i % f];
	out[i] = __float2half(g / (1.0f + expf(-g)) * u);
}

extern "C" int
kvx_cuda_swiglu(const float *gu, int T, int f, void *out, cudaStream_t stream)
{
	size_t n = (size_t)T * f;

	if (n == 0)
		return 0;
	swiglu_k<<<(unsigned)((n + 255) / 256), 256, 0, stream>>>(gu, f, n,
	    (__half *)out);
	return launched();
}

static __global__ void
f2h_k(const float *in, __half *out, size_t n)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < n)
		out[i] = __float2half(in[i]);
}

extern "C" int
kvx_cuda_f2h(const float *in, void *out, size_t n, cudaStream_t stream)
{
	if (n == 0)
		return 0;
	f2h_k<<<(unsigned)((n + 255) / 256), 256, 0, stream>>>(in,
	    (__half *)out, n);
	return launched();
}

/* One block a (token, head). */
static __global__ void
kv_store_k(const float *k, const float *v, int ld, int nhead, int d,
    const long long *dst_off, __half *kd, __half *vd)
{
	int th = blockIdx.x, t = th / nhead, h = th % nhead, i;
	size_t so = (size_t)t * ld + (size_t)h * d;
	long long o = dst_off != NULL ? dst_off[th] : (long long)th * d;

	for (i = threadIdx.x; i < d; i += blockDim.x) {
		kd[o + i] = __float2half(k[so + i]);
		vd[o + i] = __float2half(v[so + i]);
	}
}

extern "C" int
kvx_cuda_kv_store(const float *k, const float *v, int ld, int T, int nhead,
    int d, const long long *dst_off, void *kd, void *vd, cudaStream_t stream)
{
	if (T <= 0)
		return 0;
	if (nhead < 1 || d < 1)
		return KVX_CUDA_EINVAL;
	kv_store_k<<<T * nhead, d < 128 ? 64 : 128, 0, stream>>>(k, v, ld,
	    nhead, d, dst_off, (__half *)kd, (__half *)vd);
	return launched();
}

/* One block a row: max, sum of exponentials, then the scaled row. */
static __global__ void
softmax_causal_k(const float *s, int rows, int ncol, int col0, __half *p)
{
	__shared__ float red[32];
	int r = blockIdx.x % rows, vis = col0 + r + 1, c;
	size_t base = (size_t)blockIdx.x * ncol;
	float mx = -INFINITY, sm = 0.0f, inv;

	if (vis > ncol)
		vis = ncol;
	for (c = threadIdx.x; c < vis; c += blockDim.x)
		mx = fmaxf(mx, s[base + c]);
	mx = block_max(mx, red);
	for (c = threadIdx.x; c < vis; c += blockDim.x)
		sm += expf(s[base + c] - mx);
	sm = block_sum(sm, red);
	inv = 1.0f / sm;
	for (c = threadIdx.x; c < ncol; c += blockDim.x)
		p[base + c] = __float2half(c < vis ? expf(s[base + c] - mx) *
		    inv : 0.0f);
}

extern "C" int
kvx_cuda_softmax_causal(const float *s, int nmat, int rows, int ncol,
    int col0, void *p, cudaStream_t stream)
{
	long long nb = (long long)nmat * rows;

	if (nb <= 0)
		return 0;
	if (ncol < 1 || col0 < 0 || nb > 0x7fffffffLL)
		return KVX_CUDA_EINVAL;
	softmax_causal_k<<<(unsigned)nb, 256, 0, stream>>>(s, rows, ncol, col0,
	    (__half *)p);
	return launched();
}
