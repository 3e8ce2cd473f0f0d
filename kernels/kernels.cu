/*
 * kernels.cu - CUDA kernels of libkvx: window scoring and pooling, per-head
 * top-k selection, K/V gather, and ragged split-K decode attention.
 * SPDX-License-Identifier: MIT
 *
 * Each kernel is the twin of a CPU function in runtime/select.c or
 * runtime/attn.c and follows its definition, tie-breaking included.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cuda.h"

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

static int
score_tiles(int max_n)
{
	return (max_n + SC_TK - 1) / SC_TK;
}

extern "C" size_t
kvx_cuda_score_scratch(int nseg, int g, int w, int max_n)
{
	return sizeof(float2) * (size_t)nseg * g * w * (score_tiles(max_n) +
	    1);
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
	return sizeof(float) * ((size_t)(SC_TK + SC_W) * score_pad(d) +
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

/* Elements of a query each lane holds (d <= 256, padded). */
#define SC_QR 9

/* Loads this lane's part of window query j (head j / w, position j % w)
 * of segment s into registers, zero-padded; issued one query ahead so
 * that the load overlaps the current query's arithmetic. */
static __device__ __forceinline__ void
score_qload(const float *q, long long qhs, long long qps, int s, int g,
    int w, int d, int j, float *qr)
{
	const float *qj = q + (size_t)(s * g + j / w) * qhs +
	    (size_t)(j % w) * qps;
	int lane = threadIdx.x & 31, x;

#pragma unroll
	for (x = 0; x < SC_QR; x++)
		qr[x] = lane + 32 * x < d ? __ldg(qj + lane + 32 * x) : 0.0f;
}

/* The loaded query into this warp's padded row wq. */
static __device__ __forceinline__ void
score_qstore(const float *qr, int d, float *wq)
{
	int lane = threadIdx.x & 31, dp = score_pad(d), x;

	__syncwarp();
#pragma unroll
	for (x = 0; x < SC_QR; x++)
		if (lane + 32 * x < dp)
			wq[lane + 32 * x] = qr[x];
	__syncwarp();
}

/* Dot product of two padded shared rows, in 16-byte steps. */
static __device__ __forceinline__ float
score_dot(const float *a, const float *b, int d)
{
	float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
	int i;

	for (i = 0; i < d; i += 4) {
		float4 x = *(const float4 *)(a + i);
		float4 y = *(const float4 *)(b + i);

		acc.x += x.x * y.x;
		acc.y += x.y * y.y;
		acc.z += x.z * y.z;
		acc.w += x.w * y.w;
	}
	return (acc.x + acc.y) + (acc.z + acc.w);
}

/* Pass 1: per tile and window query, the max and the sum of exponentials
 * of its logits over the keys it sees (its causal prefix). */
template <typename T>
static __global__ void __launch_bounds__(SC_W * 32)
score_stats(const float *q, long long qhs, long long qps, const T *k,
    const long long *koff, const int *nrow, int g, int w, int d, int ld_,
    float scale2, int nt, float2 *stats)
{
	extern __shared__ float4 sm4[];
	float *sk = (float *)sm4, *wq;
	int s = blockIdx.y, c = blockIdx.x, n = nrow[s], gw = g * w;
	int t0 = c * SC_TK, dp = score_pad(d), lane = threadIdx.x & 31;
	int wid = threadIdx.x >> 5, j, o;
	float qr[SC_QR];

	wq = sk + SC_TK * dp + wid * dp;
	if (t0 >= n) {
		for (j = threadIdx.x; j < gw; j += blockDim.x)
			stats[((size_t)s * gw + j) * nt + c] =
			    make_float2(-INFINITY, 0.0f);
		return;
	}
	if (wid < gw)
		score_qload(q, qhs, qps, s, g, w, d, wid, qr);
	score_load(k + koff[s], ld_, t0, n, d, sk);
	__syncthreads();
	for (j = wid; j < gw; j += SC_W) {
		int lim = n - w + j % w, ta = t0 + lane, tb = ta + 32;
		float la = -INFINITY, lb = -INFINITY, mx, sm;

		score_qstore(qr, d, wq);
		if (j + SC_W < gw)
			score_qload(q, qhs, qps, s, g, w, d, j + SC_W, qr);
		if (ta <= lim)
			la = score_dot(wq, sk + lane * dp, d) * scale2;
		if (tb <= lim)
			lb = score_dot(wq, sk + (lane + 32) * dp, d) * scale2;
		mx = fmaxf(la, lb);
		for (o = 16; o > 0; o >>= 1)
			mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
		if (mx == -INFINITY) {
			if (lane == 0)
				stats[((size_t)s * gw + j) * nt + c] =
				    make_float2(-INFINITY, 0.0f);
			continue;
		}
		sm = (ta <= lim ? exp2f(la - mx) : 0.0f) +
		    (tb <= lim ? exp2f(lb - mx) : 0.0f);
		for (o = 16; o > 0; o >>= 1)
			sm += __shfl_xor_sync(0xffffffffu, sm, o);
		if (lane == 0)
			stats[((size_t)s * gw + j) * nt + c] = make_float2(mx,
			    sm);
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

/*
 * Pass 3: each key's score, the mean over the window of each head's
 * probabilities, combined over the heads by mean or max.  Warps take the
 * window positions in turn; their partial sums meet in shared memory and
 * are added in a fixed order.
 */
template <typename T>
static __global__ void __launch_bounds__(SC_W * 32)
score_prob(const float *q, long long qhs, long long qps, const T *k,
    const long long *koff, const int *nrow, int g, int w, int d, int ld_,
    float scale2, int gqa, const float2 *ms, const long long *soff,
    float *score)
{
	extern __shared__ float4 sm4[];
	float *sk = (float *)sm4, *wq, *part;
	int s = blockIdx.y, n = nrow[s], gw = g * w, nc = n - w;
	int t0 = blockIdx.x * SC_TK, dp = score_pad(d), lane = threadIdx.x & 31;
	int wid = threadIdx.x >> 5, h, p, i;
	const float2 *mq = ms + (size_t)s * gw;
	float qr[SC_QR];

	if (t0 >= nc)
		return;
	wq = sk + SC_TK * dp + wid * dp;
	part = sk + (SC_TK + SC_W) * dp;
	/* this warp's queries, in order: heads outer, positions wid,
	   wid + SC_W, ... inner */
	if (wid < w)
		score_qload(q, qhs, qps, s, g, w, d, wid, qr);
	score_load(k + koff[s], ld_, t0, nc, d, sk);
	__syncthreads();
	for (h = 0; h < g; h++) {
		float a0 = 0.0f, a1 = 0.0f;

		for (p = wid; p < w; p += SC_W) {
			float2 m = mq[h * w + p];

			score_qstore(qr, d, wq);
			if (p + SC_W < w)
				score_qload(q, qhs, qps, s, g, w, d,
				    h * w + p + SC_W, qr);
			else if (h + 1 < g)
				score_qload(q, qhs, qps, s, g, w, d,
				    (h + 1) * w + wid, qr);
			a0 += exp2f(score_dot(wq, sk + lane * dp, d) * scale2 -
			    m.x) * m.y;
			a1 += exp2f(score_dot(wq, sk + (lane + 32) * dp, d) *
			    scale2 - m.x) * m.y;
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
			if (h == 0)
				res = acc;
			else if (gqa == 1)
				res = fmaxf(res, acc);
			else
				res += acc;
		}
		score[soff[s] + t0 + threadIdx.x] = gqa == 1 ? res :
		    res / (float)g;
	}
}

/* The three scoring launches for one storage type. */
template <typename T>
static int
score_run(const float *q, long long qhs, long long qps, const T *k,
    const long long *koff, const int *n, int nseg, int max_n, int g, int w,
    int d, int ld_, float s2, int gqa, const long long *soff, void *scratch,
    float *score, cudaStream_t stream)
{
	static size_t raised;
	int nt = score_tiles(max_n), nq = nseg * g * w;
	float2 *stats = (float2 *)scratch, *ms = stats + (size_t)nq * nt;
	size_t smb = score_smem(g, d);

	if (smb > 48 * 1024 && smb > raised) {
		if (cudaFuncSetAttribute(score_stats<T>,
		    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smb) !=
		    cudaSuccess ||
		    cudaFuncSetAttribute(score_prob<T>,
		    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smb) !=
		    cudaSuccess)
			return launched();
		raised = smb;
	}
	score_stats<T><<<dim3(nt, nseg), SC_W * 32, smb, stream>>>(q, qhs, qps,
	    k, koff, n, g, w, d, ld_, s2, nt, stats);
	score_merge<<<(nq + 7) / 8, 256, 0, stream>>>(stats, nq, nt, w, ms);
	score_prob<T><<<dim3(score_tiles(max_n - w), nseg), SC_W * 32, smb,
	    stream>>>(q, qhs, qps, k, koff, n, g, w, d, ld_, s2, gqa, ms, soff,
	    score);
	return launched();
}

extern "C" int
kvx_cuda_score_q(const float *q, long long qhs, long long qps, const void *k,
    int dtype, const long long *koff, const int *n, int nseg, int max_n,
    int g, int w, int d, int ld_, float scale, int gqa,
    const long long *soff, void *scratch, float *score, cudaStream_t stream)
{
	float s2 = scale * LOG2E;

	if (nseg <= 0)
		return 0;
	if (max_n <= w || w < 1 || g < 1 || d < 1 || d > 256 ||
	    score_smem(g, d) > 200 * 1024 || nseg > 65535)
		return KVX_CUDA_EINVAL;
	switch (dtype) {
	case KVX_CUDA_F32:
		return score_run(q, qhs, qps, (const float *)k, koff, n, nseg,
		    max_n, g, w, d, ld_, s2, gqa, soff, scratch, score, stream);
	case KVX_CUDA_F16:
		return score_run(q, qhs, qps, (const __half *)k, koff, n, nseg,
		    max_n, g, w, d, ld_, s2, gqa, soff, scratch, score, stream);
	case KVX_CUDA_BF16:
		return score_run(q, qhs, qps, (const __nv_bfloat16 *)k, koff, n,
		    nseg, max_n, g, w, d, ld_, s2, gqa, soff, scratch, score,
		    stream);
	default:
		return KVX_CUDA_EINVAL;
	}
}

extern "C" int
kvx_cuda_score(const float *q, const void *k, int dtype, const long long *koff,
    const int *n, int nseg, int max_n, int g, int w, int d, int ld_,
    float scale, int gqa, const long long *soff, void *scratch, float *score,
    cudaStream_t stream)
{
	return kvx_cuda_score_q(q, (long long)w * d, d, k, dtype, koff, n, nseg,
	    max_n, g, w, d, ld_, scale, gqa, soff, scratch, score, stream);
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
	int s = blockIdx.x, n = nrow[s], wv, sv, kp, kc, nc, t, shift, base;
	int *out = idx + ioff[s];
	const float *a;
	uint32_t prefix = 0, mask = 0;

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
	if (threadIdx.x == 0) {
		need_s = kc;
		gt_s = 0;
	}
	for (shift = 24; shift >= 0; shift -= 8) {
		for (t = threadIdx.x; t < 256; t += blockDim.x)
			hist[t] = 0;
		__syncthreads();
		/* lanes with the same digit add once: the scores of one
		 * segment share their top bits, and per-lane atomics on
		 * one counter would run one after another */
		for (base = 0; base < nc; base += blockDim.x) {
			int i = base + threadIdx.x, dg = 256;
			unsigned peers;

			if (i < nc) {
				uint32_t key = fkey(a[i]);

				if ((key & mask) == prefix)
					dg = (int)(key >> shift) & 255;
			}
			peers = __match_any_sync(0xffffffffu, dg);
			if (dg < 256 && (threadIdx.x & 31) ==
			    __ffs(peers) - 1)
				atomicAdd(&hist[dg], __popc(peers));
		}
		__syncthreads();
		if (threadIdx.x < 32)
			select_digit(hist, shift, &need_s, &gt_s, &prefix_s,
			    prefix);
		__syncthreads();
		prefix = prefix_s;
		mask |= 255u << shift;
	}
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
template <int G, int D, typename T>
static __device__ __forceinline__ void
attn_item(const float *q, const T *k, const T *v, const long long *off,
    int ld_, float scale2, struct kvx_cuda_work it, int ii, float *pm,
    float *pl, float *pacc)
{
	constexpr int LPR = D / 8, NSG = AT_THREADS / LPR, GPW = 32 / LPR;
	constexpr int STEP = NSG * AT_TILE;
	__shared__ float sm_m[NSG][G], sm_l[NSG][G], sm_acc[NSG][G][D];
	int sg = threadIdx.x / LPR, li = threadIdx.x % LPR, h, e, i, r, rw;
	const T *kb = k + off[it.seg], *vb = v + off[it.seg];
	float qr[G][8], m[G], l[G], acc[G][8];

	for (h = 0; h < G; h++) {
		const float4 *qp = (const float4 *)(q + ((size_t)it.seg * G + h) *
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
	/* the loop bound is uniform over a warp, for the shuffles below */
	for (rw = it.r0 + (threadIdx.x >> 5) * GPW * AT_TILE; rw < it.r1;
	    rw += STEP) {
		uint4 kr[AT_TILE], vr[AT_TILE];
		float s[AT_TILE][G];

		r = rw + (sg % GPW) * AT_TILE;

#pragma unroll
		for (i = 0; i < AT_TILE; i++) {
			int row = r + i < it.r1 ? r + i : it.r1 - 1;

			kr[i] = __ldg((const uint4 *)(kb + (size_t)row * ld_) +
			    li);
			vr[i] = __ldg((const uint4 *)(vb + (size_t)row * ld_) +
			    li);
		}
#pragma unroll
		for (i = 0; i < AT_TILE; i++) {
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
		for (i = 0; i < AT_TILE; i++) {
#pragma unroll
			for (h = 0; h < G; h++) {
				int o;

				for (o = LPR / 2; o > 0; o >>= 1)
					s[i][h] += __shfl_xor_sync(0xffffffffu,
					    s[i][h], o);
				if (r + i >= it.r1)
					s[i][h] = -INFINITY;
			}
		}
#pragma unroll
		for (h = 0; h < G; h++) {
			float mt = m[h], alpha;

#pragma unroll
			for (i = 0; i < AT_TILE; i++)
				mt = fmaxf(mt, s[i][h]);
			/* a group may have no rows yet: keep it empty */
			alpha = mt == -INFINITY ? 1.0f : exp2f(m[h] - mt);
			m[h] = mt;
			l[h] *= alpha;
#pragma unroll
			for (e = 0; e < 8; e++)
				acc[h][e] *= alpha;
#pragma unroll
			for (i = 0; i < AT_TILE; i++) {
				s[i][h] = s[i][h] == -INFINITY ? 0.0f :
				    exp2f(s[i][h] - mt);
				l[h] += s[i][h];
			}
		}
#pragma unroll
		for (i = 0; i < AT_TILE; i++) {
			float vf[8];

			unpack8(vr[i], vf, (const T *)0);
#pragma unroll
			for (h = 0; h < G; h++)
#pragma unroll
				for (e = 0; e < 8; e++)
					acc[h][e] += s[i][h] * vf[e];
		}
	}
	for (h = 0; h < G; h++) {
		if (li == 0) {
			sm_m[sg][h] = m[h];
			sm_l[sg][h] = l[h];
		}
		for (e = 0; e < 8; e++)
			sm_acc[sg][h][li * 8 + e] = acc[h][e];
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
			A += sm_acc[g][h][e] * f;
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

extern "C" int
kvx_cuda_attn_partial(const float *q, const void *k, const void *v, int dtype,
    const long long *off, int g, int d, int ld_, float scale,
    const struct kvx_cuda_work *items, const int *bfirst, int nblocks,
    float *m, float *l, float *acc, cudaStream_t stream)
{
	struct attn_args a;

	if (nblocks <= 0)
		return 0;
	/* 16-byte row loads need rows that start on 16-byte boundaries */
	if (ld_ % 8 != 0 || ((uintptr_t)k | (uintptr_t)v) % 16 != 0)
		return KVX_CUDA_EINVAL;
	memset(&a, 0, sizeof a);
	a.q = q;
	a.k = k;
	a.v = v;
	a.dtype = dtype;
	a.ld = ld_;
	a.nblk = nblocks;
	a.off = off;
	a.s2 = scale * LOG2E;
	a.items = items;
	a.bfirst = bfirst;
	a.m = m;
	a.l = l;
	a.acc = acc;
	a.st = stream;
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
	if (ld_ % 8 != 0 || ((uintptr_t)k | (uintptr_t)v) % 16 != 0 ||
	    out == NULL || cnt == NULL || first == NULL)
		return KVX_CUDA_EINVAL;
	if (nblocks <= 0)
		nblocks = 1;	/* still zeroes the empty segments */
	memset(&a, 0, sizeof a);
	a.q = q;
	a.k = k;
	a.v = v;
	a.dtype = dtype;
	a.ld = ld_;
	a.nblk = nblocks;
	a.off = off;
	a.s2 = scale * LOG2E;
	a.items = items;
	a.bfirst = bfirst;
	a.m = m;
	a.l = l;
	a.acc = acc;
	a.first = first;
	a.nseg = nseg;
	a.cnt = cnt;
	a.out = out;
	a.st = stream;
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
