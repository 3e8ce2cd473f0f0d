/*
 * forward.cu - the layer kernels of the GPU forward (runtime/gpu*.c):
 * embedding, RMS norms, biases, per-head norm and RoPE, the gated MLP's
 * activation, conversions, K/V stores and the causal (optionally
 * sliding-window) softmax of the prefill attention.  Each follows its CPU
 * counterpart in runtime/model.c.
 * SPDX-License-Identifier: MIT
 */
#include "device.cuh"

/* Largest head the per-head kernels hold in shared memory. */
#define HEAD_MAX 256

/* The block's sum of v in double, returned to every thread: the norms'
 * sums of squares (red holds a value a warp). */
static __device__ double
block_sum_dbl(double v, double *red)
{
	int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, o;

	for (o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	if (lane == 0)
		red[wid] = v;
	__syncthreads();
	if (wid == 0) {
		v = lane < (int)(blockDim.x >> 5) ? red[lane] : 0.0;
		for (o = 16; o > 0; o >>= 1)
			v += __shfl_xor_sync(0xffffffffu, v, o);
		if (lane == 0)
			red[0] = v;
	}
	__syncthreads();
	return red[0];
}

/* One block a token: its row of the table, as floats. */
static __global__ void
embed_k(const __half *table, int e, const int *ids, float scale, float *x)
{
	int t = blockIdx.x, i;
	const __half *row = table + (size_t)ids[t] * e;

	for (i = threadIdx.x; i < e; i += blockDim.x)
		x[(size_t)t * e + i] = __half2float(row[i]) * scale;
}

/* Launches embed_k. */
extern "C" int
kvx_cuda_embed(const void *table, int e, const int *ids, int T, float scale,
    float *x, cudaStream_t stream)
{
	if (T <= 0)
		return 0;
	if (e < 1)
		return KVX_CUDA_EINVAL;
	embed_k<<<T, 256, 0, stream>>>((const __half *)table, e, ids, scale, x);
	return launched();
}

/* One block a row; the sum of squares in double, as rmsnorm() does.
 * mode 0 writes f32, 1 fp16, 2 adds to the f32 output. */
static __global__ void
rmsnorm_k(const float *x, int ldx, const float *w, int e, float eps,
    void *out, int mode, int ldo)
{
	__shared__ double red[32];
	const float *xr = x + (size_t)blockIdx.x * ldx;
	int i;
	double ss = 0.0;
	float inv;

	for (i = threadIdx.x; i < e; i += blockDim.x)
		ss += (double)xr[i] * xr[i];
	inv = 1.0f / sqrtf((float)(block_sum_dbl(ss, red) / e) + eps);
	for (i = threadIdx.x; i < e; i += blockDim.x) {
		float y = xr[i] * inv * w[i];
		size_t o = (size_t)blockIdx.x * ldo + i;

		if (mode == 1)
			((__half *)out)[o] = __float2half(y);
		else if (mode == 2)
			((float *)out)[o] += y;
		else
			((float *)out)[o] = y;
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

/* Launches rmsnorm_k adding each normed row to x (a post-norm). */
extern "C" int
kvx_cuda_rmsnorm_add(const float *y, const float *w, int T, int e, float eps,
    float *x, cudaStream_t stream)
{
	if (T <= 0)
		return 0;
	if (e < 1)
		return KVX_CUDA_EINVAL;
	rmsnorm_k<<<T, 256, 0, stream>>>(y, e, w, e, eps, x, 2, e);
	return launched();
}

/* One thread an element: y[t][i] += b[i]. */
static __global__ void
bias_k(float *y, int ld, int n, size_t total, const float *b)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < total)
		y[i / n * ld + i % n] += b[i % n];
}

/* Launches bias_k. */
extern "C" int
kvx_cuda_bias(float *y, int ld, int T, int n, const float *b,
    cudaStream_t stream)
{
	size_t total = (size_t)T * n;

	if (total == 0)
		return 0;
	if (n < 1 || ld < n)
		return KVX_CUDA_EINVAL;
	bias_k<<<(unsigned)((total + 255) / 256), 256, 0, stream>>>(y, ld, n,
	    total, b);
	return launched();
}

/*
 * One block a (token, head): the head into shared memory, its RMS norm
 * when w is set (sum of squares in double, as rmsnorm() does), then one
 * thread a pair with the angle in double, as rope() does; pair j is
 * (2j, 2j + 1), or (j, j + d/2) with halves.
 */
static __global__ void
head_rope_k(const float *in, int ldi, float *out, int ldo, int nhead, int d,
    const float *w, float eps, const int *pos, float theta, int halves)
{
	__shared__ float hv[HEAD_MAX];
	__shared__ double red[32];
	int t = blockIdx.x / nhead, h = blockIdx.x % nhead, half = d / 2;
	int i, j;
	const float *src = in + (size_t)t * ldi + (size_t)h * d;
	float *dst = out + (size_t)t * ldo + (size_t)h * d, inv = 1.0f;
	double ss = 0.0, a, sn, cs;

	for (i = threadIdx.x; i < d; i += blockDim.x) {
		hv[i] = src[i];
		ss += (double)hv[i] * hv[i];
	}
	if (w != NULL)
		inv = 1.0f / sqrtf((float)(block_sum_dbl(ss, red) / d) + eps);
	__syncthreads();
	for (j = threadIdx.x; j < half; j += blockDim.x) {
		int i0 = halves ? j : 2 * j, i1 = halves ? j + half : 2 * j + 1;
		float x0 = hv[i0], x1 = hv[i1], c, s;

		if (w != NULL) {
			x0 = x0 * inv * w[i0];
			x1 = x1 * inv * w[i1];
		}
		a = (double)pos[t] * pow((double)theta, -(double)(2 * j) / d);
		sincos(a, &sn, &cs);
		c = (float)cs;
		s = (float)sn;
		dst[i0] = x0 * c - x1 * s;
		dst[i1] = x0 * s + x1 * c;
	}
}

/* Launches head_rope_k, a block a (token, head). */
extern "C" int
kvx_cuda_head_rope(const float *in, int ldi, float *out, int ldo, int T,
    int nhead, int d, const float *w, float eps, const int *pos, float theta,
    int halves, cudaStream_t stream)
{
	long long nb = (long long)T * nhead;

	if (T <= 0)
		return 0;
	if (d < 2 || d % 2 != 0 || d > HEAD_MAX || nhead < 1 ||
	    nb > 0x7fffffffLL)
		return KVX_CUDA_EINVAL;
	head_rope_k<<<(unsigned)nb, 128, 0, stream>>>(in, ldi, out, ldo,
	    nhead, d, w, eps, pos, theta, halves);
	return launched();
}

/*
 * One thread an output: act(gate) * up as fp16, act SiLU as swiglu()
 * or, with gelu, GELU in its tanh form as geglu() computes it.
 */
static __global__ void
glu_k(const float *gu, int f, size_t n, int gelu, __half *out)
{
	const float c = 0.7978845608f;	/* sqrt(2 / pi) */
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, t;
	float g, u, a;

	if (i >= n)
		return;
	t = i / f;
	g = gu[t * 2 * f + i % f];
	u = gu[t * 2 * f + f + i % f];
	if (gelu)
		a = 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * g * g * g)));
	else
		a = g / (1.0f + expf(-g));
	out[i] = __float2half(a * u);
}

/* Launches glu_k. */
extern "C" int
kvx_cuda_glu(const float *gu, int T, int f, int gelu, void *out,
    cudaStream_t stream)
{
	size_t n = (size_t)T * f;

	if (n == 0)
		return 0;
	glu_k<<<(unsigned)((n + 255) / 256), 256, 0, stream>>>(gu, f, n,
	    gelu, (__half *)out);
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

/* One block a row: max, sum of exponentials, then the scaled row over
 * the visible columns [lo, vis). */
static __global__ void
softmax_causal_k(const float *s, int rows, int ncol, int col0, int win,
    __half *p)
{
	__shared__ float red[32];
	int r = blockIdx.x % rows, vis = col0 + r + 1, lo = 0, c;
	size_t base = (size_t)blockIdx.x * ncol;
	float mx = -INFINITY, sm = 0.0f, inv;

	if (win > 0 && vis - win > 0)
		lo = vis - win;
	if (vis > ncol)
		vis = ncol;
	for (c = lo + threadIdx.x; c < vis; c += blockDim.x)
		mx = fmaxf(mx, s[base + c]);
	mx = block_max(mx, red);
	for (c = lo + threadIdx.x; c < vis; c += blockDim.x)
		sm += expf(s[base + c] - mx);
	sm = block_sum(sm, red);
	inv = 1.0f / sm;
	for (c = threadIdx.x; c < ncol; c += blockDim.x)
		p[base + c] = __float2half(c >= lo && c < vis ?
		    expf(s[base + c] - mx) * inv : 0.0f);
}

/* Launches softmax_causal_k, a block a row. */
extern "C" int
kvx_cuda_softmax_causal(const float *s, int nmat, int rows, int ncol,
    int col0, int win, void *p, cudaStream_t stream)
{
	long long nb = (long long)nmat * rows;

	if (nb <= 0)
		return 0;
	if (ncol < 1 || col0 < 0 || win < 0 || nb > 0x7fffffffLL)
		return KVX_CUDA_EINVAL;
	softmax_causal_k<<<(unsigned)nb, 256, 0, stream>>>(s, rows, ncol, col0,
	    win, (__half *)p);
	return launched();
}
