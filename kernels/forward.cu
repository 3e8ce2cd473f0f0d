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

/* Warps a block of qk_rope_k, and pairs a lane at most (HEAD_MAX / 64). */
#define QR_WARPS 4
#define QR_PAIRS (HEAD_MAX / 64)

/*
 * One block a token.  Its angles first, once for all heads: pair j's in
 * double, as rope() computes it, into shared memory; then one warp a
 * head.  A Q or K head gets its RMS norm when its weights are set (sum
 * of squares in double, as rmsnorm() does) and its rotation, pair j being
 * (2j, 2j + 1), or (j, j + d/2) with halves; Q goes to q, K back in
 * place, and with kd set K and V also go to the cache as fp16: head h of
 * token t to element dst_off[t*nk + h], or (t*nk + h)*d when dst_off is
 * NULL.
 */
static __global__ void __launch_bounds__(32 * QR_WARPS)
qk_rope_k(float *qkv, int ld, float *q, int ldq, int nq, int nk, int d,
    const float *qw, const float *kw, float eps, const int *pos,
    float theta, int halves, const long long *dst_off, __half *kd,
    __half *vd)
{
	__shared__ float cs[HEAD_MAX / 2], sn[HEAD_MAX / 2];
	int t = blockIdx.x, lane = threadIdx.x & 31, half = d / 2;
	int nh = nq + nk + (kd != NULL ? nk : 0), h, j, k;
	float *row = qkv + (size_t)t * ld;

	for (j = threadIdx.x; j < half; j += blockDim.x) {
		double a = (double)pos[t] * pow((double)theta,
		    -(double)(2 * j) / d), s, c;

		sincos(a, &s, &c);
		cs[j] = (float)c;
		sn[j] = (float)s;
	}
	__syncthreads();
	for (h = threadIdx.x >> 5; h < nh; h += blockDim.x >> 5) {
		float x0[QR_PAIRS] = { 0.0f }, x1[QR_PAIRS] = { 0.0f };
		float inv = 1.0f;
		const float *w = h < nq ? qw : kw;
		const float *src = row + (size_t)h * d;
		int kh = h - nq;

		if (h >= nq + nk) {	/* a V head: stored only */
			size_t th = (size_t)t * nk + h - nq - nk;
			long long o = dst_off != NULL ? dst_off[th] :
			    (long long)th * d;

			for (j = lane; j < d; j += 32)
				vd[o + j] = __float2half(src[j]);
			continue;
		}
		double ss = 0.0;

#pragma unroll
		for (k = 0; k < QR_PAIRS; k++) {
			j = lane + 32 * k;
			if (j < half) {
				x0[k] = src[halves ? j : 2 * j];
				x1[k] = src[halves ? j + half : 2 * j + 1];
				ss += (double)x0[k] * x0[k] +
				    (double)x1[k] * x1[k];
			}
		}
		if (w != NULL) {
			for (k = 16; k > 0; k >>= 1)
				ss += __shfl_xor_sync(0xffffffffu, ss, k);
			inv = 1.0f / sqrtf((float)(ss / d) + eps);
		}
#pragma unroll
		for (k = 0; k < QR_PAIRS; k++) {
			int i0, i1;
			float y0, y1;
			float *dst;

			j = lane + 32 * k;
			if (j >= half)
				continue;
			i0 = halves ? j : 2 * j;
			i1 = halves ? j + half : 2 * j + 1;
			if (w != NULL) {
				x0[k] = x0[k] * inv * w[i0];
				x1[k] = x1[k] * inv * w[i1];
			}
			y0 = x0[k] * cs[j] - x1[k] * sn[j];
			y1 = x0[k] * sn[j] + x1[k] * cs[j];
			dst = h < nq ? q + (size_t)t * ldq + (size_t)h * d :
			    row + (size_t)h * d;
			dst[i0] = y0;
			dst[i1] = y1;
			if (h >= nq && kd != NULL) {
				size_t th = (size_t)t * nk + kh;
				long long o = dst_off != NULL ? dst_off[th] :
				    (long long)th * d;

				kd[o + i0] = __float2half(y0);
				kd[o + i1] = __float2half(y1);
			}
		}
	}
}

/* Launches qk_rope_k, a block a token. */
extern "C" int
kvx_cuda_qk_rope(float *qkv, int ld, float *q, int ldq, int T, int nq,
    int nk, int d, const float *qw, const float *kw, float eps,
    const int *pos, float theta, int halves, const long long *dst_off,
    void *kd, void *vd, cudaStream_t stream)
{
	if (T <= 0)
		return 0;
	if (d < 2 || d % 2 != 0 || d > HEAD_MAX || nq < 0 || nk < 0 ||
	    nq + 2 * nk < 1 || ld < (nq + 2 * nk) * d ||
	    (nq > 0 && ldq < nq * d) ||
	    (kd != NULL) != (vd != NULL) || (kd == NULL && dst_off != NULL))
		return KVX_CUDA_EINVAL;
	qk_rope_k<<<T, 32 * QR_WARPS, 0, stream>>>(qkv, ld, q, ldq, nq, nk, d,
	    qw, kw, eps, pos, theta, halves, dst_off, (__half *)kd,
	    (__half *)vd);
	return launched();
}

/*
 * One thread an output, a row of blocks a token (blockIdx.y): act(gate)
 * * up as fp16, act SiLU as swiglu() or, with gelu, GELU in its tanh
 * form as geglu() computes it.
 */
static __global__ void
glu_k(const float *gu, int f, int gelu, __half *out)
{
	const float c = 0.7978845608f;	/* sqrt(2 / pi) */
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	size_t t = blockIdx.y;
	float g, u, a;

	if (i >= f)
		return;
	g = gu[t * 2 * f + i];
	u = gu[t * 2 * f + f + i];
	if (gelu)
		a = 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * g * g * g)));
	else
		a = g / (1.0f + expf(-g));
	out[t * f + i] = __float2half(a * u);
}

/* Launches glu_k. */
extern "C" int
kvx_cuda_glu(const float *gu, int T, int f, int gelu, void *out,
    cudaStream_t stream)
{
	if (T <= 0 || f <= 0)
		return 0;
	if (T > 65535) {	/* the grid's rows: one launch a 65535 tokens */
		int e;

		if ((e = kvx_cuda_glu(gu, 65535, f, gelu, out, stream)) != 0)
			return e;
		return kvx_cuda_glu(gu + (size_t)65535 * 2 * f, T - 65535, f,
		    gelu, (__half *)out + (size_t)65535 * f, stream);
	}
	glu_k<<<dim3((unsigned)((f + 255) / 256), (unsigned)T), 256, 0,
	    stream>>>(gu, f, gelu, (__half *)out);
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
