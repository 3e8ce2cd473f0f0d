/*
 * forward.cu - the layer kernels of the GPU forward (runtime/gpu*.c):
 * embedding, RMS norm, RoPE, SwiGLU, conversions, K/V stores and the
 * causal softmax of the prefill attention.  Each follows its CPU
 * counterpart in runtime/model.c.
 * SPDX-License-Identifier: MIT
 */
#include "device.cuh"

/* One block a token: its row of the table, as floats. */
static __global__ void
embed_k(const __half *table, int e, const int *ids, float *x)
{
	int t = blockIdx.x, i;
	const __half *row = table + (size_t)ids[t] * e;

	for (i = threadIdx.x; i < e; i += blockDim.x)
		x[(size_t)t * e + i] = __half2float(row[i]);
}

/* Launches embed_k. */
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

/* Launches rmsnorm_k, a block a row. */
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

/* Launches rope_k, a row of blocks a token. */
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

/* One thread an output: silu(gate) * up as fp16. */
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

/* Launches swiglu_k. */
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

/* One thread an element. */
static __global__ void
f2h_k(const float *in, __half *out, size_t n)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < n)
		out[i] = __float2half(in[i]);
}

/* Launches f2h_k. */
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

/* Launches kv_store_k. */
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

/* Launches softmax_causal_k, a block a row. */
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
