/*
 * decode_attn.cu - ragged split-K decode attention: partial attention of each
 * work item and the log-sum-exp combine per segment, the twin of
 * attn_gqa in runtime/attn.c.
 * SPDX-License-Identifier: MIT
 */
#include <string.h>

#include "device.cuh"

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
    int ld_, float scale2, struct wl_item it, int ii, float *pm,
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
 * from wl_balanced), or item b alone when bfirst is NULL.
 * Up to four query heads, three blocks fit on a multiprocessor.
 */
template <int G, int D, typename T>
static __global__ void __launch_bounds__(AT_THREADS, G <= 4 ? 3 : 1)
attn_partial_k(const float *q, const T *k, const T *v, const long long *off,
    int ld_, float scale2, const struct wl_item *items,
    const int *bfirst, float *pm, float *pl, float *pacc)
{
	int i0 = bfirst ? bfirst[blockIdx.x] : blockIdx.x;
	int i1 = bfirst ? bfirst[blockIdx.x + 1] : blockIdx.x + 1, ii;

	for (ii = i0; ii < i1; ii++)
		attn_item<G, D, T>(q, k, v, off, ld_, scale2, items[ii], ii, pm,
		    pl, pacc);
}

/* Arguments of one partial-attention launch. */
struct attn_args {
	const float			*q;
	const void			*k, *v;
	int				 dtype, ld, nblk;
	const long long			*off;
	float				 s2;
	const struct wl_item		*items;
	const int			*bfirst;
	float				*m, *l, *acc;
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
	attn_partial_k<G, D, T><<<a->nblk, AT_THREADS, 0, a->st>>>(a->q,
	    (const T *)a->k, (const T *)a->v, a->off, a->ld, a->s2, a->items,
	    a->bfirst, a->m, a->l, a->acc);
	return launched();
}

/* attn_launch_t for the storage type of the arguments. */
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

/* attn_launch for the query heads per KV head, 1 to 8. */
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

/* attn_launch_g for the head dimension, 64 or 128. */
static int
attn_dispatch(int g, int d, const struct attn_args *a)
{
	if (d == 64)
		return attn_launch_g<64>(g, a);
	if (d == 128)
		return attn_launch_g<128>(g, a);
	return KVX_CUDA_EINVAL;
}

/* Resident blocks of the partial kernel: per multiprocessor times their
 * count. */
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

/* 16-byte row loads need rows that start on 16-byte boundaries. */
static int
attn_aligned(const void *k, const void *v, int ld_)
{
	return ld_ % 8 == 0 && ((uintptr_t)k | (uintptr_t)v) % 16 == 0;
}

/* Launches the partial kernel on a work list (kvx_cuda.h). */
extern "C" int
kvx_cuda_attn_partial(const float *q, const void *k, const void *v, int dtype,
    const long long *off, int g, int d, int ld_, float scale,
    const struct wl_item *items, const int *bfirst, int nblocks,
    float *m, float *l, float *acc, cudaStream_t stream)
{
	struct attn_args a;

	if (nblocks <= 0)
		return 0;
	if (!attn_aligned(k, v, ld_))
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

/* Launches the merge of the partials, a block per (segment, head). */
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
