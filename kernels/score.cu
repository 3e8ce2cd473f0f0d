/*
 * score.cu - observation-window scoring and pooling: the twins of
 * sel_score and sel_pool in runtime/select.c.
 * SPDX-License-Identifier: MIT
 */
#include <pthread.h>

#include <atomic>

#include "device.cuh"

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

/*
 * Lets the scoring kernels of one storage type and query width use smb
 * bytes of dynamic shared memory.  The limit only rises: it is raised
 * under a lock, and read without one once high enough, so that contexts
 * on several threads may score at once.
 */
template <typename T, int QR>
static int
score_smem_allow(size_t smb)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static std::atomic<size_t> raised(48 * 1024);
	int rc = 0;

	if (smb <= raised.load(std::memory_order_acquire))
		return 0;
	pthread_mutex_lock(&lock);
	if (smb > raised.load(std::memory_order_relaxed)) {
		if (cudaFuncSetAttribute(score_stats<T, QR>,
		    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smb) !=
		    cudaSuccess ||
		    cudaFuncSetAttribute(score_prob<T, QR>,
		    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smb) !=
		    cudaSuccess)
			rc = launched();
		else
			raised.store(smb, std::memory_order_release);
	}
	pthread_mutex_unlock(&lock);
	return rc;
}

/* The three scoring launches for one storage type and query width. */
template <typename T, int QR>
static int
score_run_q(const float *q, long long qhs, long long qps, const T *k,
    const long long *koff, const int *n, int nseg, int max_n, int g, int w,
    int d, int ld_, float s2, int gqa, const long long *soff, void *scratch,
    size_t sbytes, float *score, cudaStream_t stream)
{
	int nt = score_tiles(max_n), nq = nseg * g * w, rc;
	float2 *stats = (float2 *)scratch, *ms = stats + (size_t)nq * nt;
	float *lg = sbytes >= kvx_cuda_score_scratch(nseg, g, w, max_n, 1) ?
	    (float *)(ms + nq) : NULL;
	size_t smb = score_smem(g, d);

	if (smb > 48 * 1024 && (rc = score_smem_allow<T, QR>(smb)) != 0)
		return rc;
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

/* score_run_q for the query width d needs. */
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

/* Checks the arguments and runs the scoring for the storage type. */
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

/* kvx_cuda_score_q with the queries packed (qhs = w*d, qps = d). */
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

/* Pooling of each segment's scores, the window clipped at the borders;
 * kind 0 max, 1 average, 3 the logarithm of the average of exponentials
 * (SEL_POOL_LOGAVG). */
static __global__ void
pool_k(const float *in, const long long *soff, const int *nrow, int w, int r,
    int kind, float *out)
{
	int s = blockIdx.y, n = nrow[s] - w, t = blockIdx.x * blockDim.x +
	    threadIdx.x, lo, hi, i, avg = kind == 1;
	const float *a = in + soff[s];
	float acc;

	if (t >= n)
		return;
	lo = t - r < 0 ? 0 : t - r;
	hi = t + r >= n ? n - 1 : t + r;
	acc = avg ? 0.0f : a[lo];
	for (i = lo; i <= hi; i++)
		acc = avg ? acc + a[i] : fmaxf(acc, a[i]);
	if (kind == 3 && acc > -INFINITY) {
		float mx = acc;

		for (acc = 0.0f, i = lo; i <= hi; i++)
			acc += expf(a[i] - mx);
		acc = mx + logf(acc / (float)(hi - lo + 1));
	}
	out[soff[s] + t] = avg ? acc / (float)(hi - lo + 1) : acc;
}

/* Launches pool_k, a row of blocks a segment. */
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
	    soff, n, w, r, pool, out);
	return launched();
}

/* --- KVzip: the largest attention weight from the repeat pass ----------- */

/*
 * The visible columns [lo, vis) of row r, as softmax_causal_k (forward.cu)
 * masks them: the causal limit col0 + r and, with win > 0, the window.
 */
static __device__ __forceinline__ void
kz_cols(int r, int ncol, int col0, int win, int *lo, int *vis)
{
	*vis = col0 + r + 1;
	*lo = win > 0 && *vis - win > 0 ? *vis - win : 0;
	if (*vis > ncol)
		*vis = ncol;
}

/* One block a scored row (matrix i, row r0 + j): the max of its visible
 * logits and the inverse of the sum of their exponentials. */
static __global__ void
kvzip_stats_k(const float *s, int rows, int ncol, int col0, int win, int r0,
    float2 *st)
{
	__shared__ float red[32];
	int nr = rows - r0, i = blockIdx.x / nr, r = r0 + blockIdx.x % nr;
	int lo, vis, c;
	size_t base = ((size_t)i * rows + r) * ncol;
	float mx = -INFINITY, sm = 0.0f;

	kz_cols(r, ncol, col0, win, &lo, &vis);
	for (c = lo + threadIdx.x; c < vis; c += blockDim.x)
		mx = fmaxf(mx, s[base + c]);
	mx = block_max(mx, red);
	for (c = lo + threadIdx.x; c < vis; c += blockDim.x)
		sm += expf(s[base + c] - mx);
	sm = block_sum(sm, red);
	if (threadIdx.x == 0)
		st[blockIdx.x] = make_float2(mx, sm > 0.0f ? 1.0f / sm : 0.0f);
}

/* Scored rows a block of kvzip_max_k takes. */
#define KZ_ROWS 16

/*
 * A thread a column and a block KZ_ROWS of the scored rows (of all the
 * matrices, matrix by matrix): the column's largest weight over them,
 * max-merged into score[c].  The weights are not negative, so their
 * bits order as ints do and atomicMax merges the blocks.
 */
static __global__ void
kvzip_max_k(const float *s, int rows, int ncol, int col0, int win, int r0,
    int n, int nrow, const float2 *st, float *score)
{
	int c = blockIdx.x * blockDim.x + threadIdx.x, nr = rows - r0;
	int k, x, i, r, lo, vis;
	float best = 0.0f;

	if (c >= n)
		return;
	for (k = 0; k < KZ_ROWS; k++) {
		x = blockIdx.y * KZ_ROWS + k;
		if (x >= nrow)
			break;
		i = x / nr;
		r = r0 + x % nr;
		kz_cols(r, ncol, col0, win, &lo, &vis);
		if (c < lo || c >= vis)
			continue;
		best = fmaxf(best, expf(s[((size_t)i * rows + r) * ncol + c] -
		    st[x].x) * st[x].y);
	}
	if (best > 0.0f)
		atomicMax((int *)&score[c], __float_as_int(best));
}

extern "C" size_t
kvx_cuda_kvzip_scratch(int nmat, int rows)
{
	return sizeof(float2) * (size_t)(nmat > 0 ? nmat : 0) *
	    (size_t)(rows > 0 ? rows : 0);
}

/* Twin of kvzip_score given the logits: the rows' statistics, then a
 * thread a column for each KZ_ROWS of the rows. */
extern "C" int
kvx_cuda_kvzip_max(const float *s, int nmat, int rows, int ncol, int col0,
    int win, int r0, int n, void *scratch, float *score,
    cudaStream_t stream)
{
	long long nb = (long long)nmat * (rows - r0);
	int e;

	if (nmat < 1 || rows < 1 || ncol < 1 || col0 < 0 || win < 0 ||
	    r0 < 0 || n > ncol || nb > 65535LL * KZ_ROWS)
		return KVX_CUDA_EINVAL;
	if (nb <= 0 || n <= 0)
		return 0;
	kvzip_stats_k<<<(unsigned)nb, 256, 0, stream>>>(s, rows, ncol, col0,
	    win, r0, (float2 *)scratch);
	if ((e = launched()) != 0)
		return e;
	kvzip_max_k<<<dim3((n + 255) / 256, (unsigned)((nb + KZ_ROWS - 1) /
	    KZ_ROWS)), 256, 0, stream>>>(s, rows, ncol, col0, win, r0, n,
	    (int)nb, (const float2 *)scratch, score);
	return launched();
}
