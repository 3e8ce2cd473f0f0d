/*
 * topk.cu - per-head top-k selection and the hybrid split of a layer's
 * budget over its heads: the twins of sel_select and sel_hybrid_split in
 * runtime/select.c, tie-breaking included.
 * SPDX-License-Identifier: MIT
 */
#include <limits.h>
#include <pthread.h>

#include "device.cuh"

#define SEL_T 1024
#define SEL_KR 8	/* keys a thread of select_k holds in registers */

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
 * The whole block: the k-th largest of the keys that count(mask, prefix,
 * shift, run, cnt) passes to hs_add (each thread its own), in four passes
 * of 8-bit digits, most significant first, as radix_kth in
 * runtime/select.c.  Returns it, with *gt_s the number of keys above it;
 * hist keeps the last digit's counts, so hist[key & 255] is the number
 * equal to it.
 */
template <typename C>
static __device__ uint32_t
block_kth_of(C count, int k, int *hist, int *need_s, int *gt_s,
    uint32_t *pre_s)
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
		count(mask, prefix, shift, &run, &cnt);
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

/* The k-th largest (1 <= k <= n) of n keys, keys[] when set, else the
 * keys of the scores a[], read at each pass. */
static __device__ uint32_t
block_kth(const uint32_t *keys, const float *a, int n, int k, int *hist,
    int *need_s, int *gt_s, uint32_t *pre_s)
{
	return block_kth_of([=] (uint32_t mask, uint32_t prefix, int shift,
	    int *run, int *cnt) {
		int t;

#pragma unroll 4
		for (t = threadIdx.x; t < n; t += blockDim.x) {
			uint32_t key = keys ? keys[t] : fkey(a[t]);

			if ((key & mask) == prefix)
				hs_add(hist, (int)(key >> shift & 255), run,
				    cnt);
		}
	}, k, hist, need_s, gt_s, pre_s);
}

/* The same with the keys in registers: thread i holds keys i, i + SEL_T,
 * .. (SEL_KR of them, n <= SEL_T SEL_KR), read once for the four
 * passes. */
static __device__ uint32_t
block_kth_reg(const uint32_t *kr, int n, int k, int *hist, int *need_s,
    int *gt_s, uint32_t *pre_s)
{
	return block_kth_of([=] (uint32_t mask, uint32_t prefix, int shift,
	    int *run, int *cnt) {
		int r;

#pragma unroll
		for (r = 0; r < SEL_KR; r++)
			if (threadIdx.x + r * SEL_T < n &&
			    (kr[r] & mask) == prefix)
				hs_add(hist, (int)(kr[r] >> shift & 255), run,
				    cnt);
	}, k, hist, need_s, gt_s, pre_s);
}

/*
 * The ordered compaction of select_k: of the n keys of a[], every one
 * above the threshold key thr and the first `ties' of those equal to it,
 * their indices (plus base) in increasing order to out.  Each thread takes a
 * run of consecutive keys (its loads in flight together), so that two
 * block-wide scans place all of them: the ties before a run decide how
 * many of its own it takes, and the taken before it where it writes.
 */
static __device__ void
select_take(const float *a, int n, int k, int ties, uint32_t thr, int *sh,
    int *out, int base)
{
	int per = (n + blockDim.x - 1) / blockDim.x, i0 = threadIdx.x * per;
	int i1 = min(n, i0 + per), eq = 0, gt = 0, eqb, te, pos, tot, i;

#pragma unroll 8
	for (i = i0; i < i1; i++) {
		uint32_t key = fkey(a[i]);

		gt += key > thr;
		eq += key == thr;
	}
	eqb = block_scan(eq, sh, &tot);
	/* this run's ties: those left after the runs before it */
	te = min(eq, max(0, ties - eqb));
	pos = block_scan(gt + te, sh, &tot);
	for (i = i0; i < i1 && pos < k; i++) {
		uint32_t key = fkey(a[i]);

		if (key > thr || (key == thr && te-- > 0))
			out[pos++] = base + i;
	}
}

/*
 * One block per segment: radix select of the threshold key over 8-bit
 * digits (the keys read once into registers where they fit, else at each
 * pass), then an ordered compaction that takes every key above the
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
	int s = blockIdx.x, n = nrow[s], wv, sv, kp, kc, nc, t;
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
	if (nc <= SEL_T * SEL_KR) {
		uint32_t kr[SEL_KR];
		int r;

#pragma unroll
		for (r = 0; r < SEL_KR; r++)
			kr[r] = threadIdx.x + r * SEL_T < nc ?
			    fkey(a[threadIdx.x + r * SEL_T]) : 0;
		prefix = block_kth_reg(kr, nc, kc, hist, &need_s, &gt_s,
		    &prefix_s);
	} else
		prefix = block_kth(NULL, a, nc, kc, hist, &need_s, &gt_s,
		    &prefix_s);
	select_take(a, nc, kc, kc - gt_s, prefix, sh, out + sv, sv);
}

/* Launches select_k, a block a segment. */
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

/*
 * The split kernels keep up to HS_KEYS keys in shared memory; the limit
 * is raised once for every thread, and what that returned (0 or a CUDA
 * error) kept for all calls.
 */
static pthread_once_t hs_once = PTHREAD_ONCE_INIT;
static int hs_allowed;

/* Raises the split kernels' shared memory to HS_KEYS keys. */
static void
hs_allow(void)
{
	if (cudaFuncSetAttribute(hybrid_split_k,
	    cudaFuncAttributeMaxDynamicSharedMemorySize, HS_KEYS * 4) !=
	    cudaSuccess ||
	    cudaFuncSetAttribute(hybrid_floor_k,
	    cudaFuncAttributeMaxDynamicSharedMemorySize, HS_KEYS * 4) !=
	    cudaSuccess)
		hs_allowed = launched();
}

/* Checks the arguments, then launches the floors (when some are
 * partial) and the split. */
extern "C" int
kvx_cuda_hybrid_split(const float *pooled, const long long *soff, int c0,
    int h, int n_cand, int total, int floor_, int *counts, int *scratch,
    const struct kvx_cuda_hlayout *lay, long long *dst, int *keep,
    cudaStream_t stream)
{
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
	pthread_once(&hs_once, hs_allow);
	if (hs_allowed != 0)
		return hs_allowed;
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
