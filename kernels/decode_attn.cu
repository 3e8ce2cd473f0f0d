/*
 * decode_attn.cu - ragged split-K decode attention: partial attention of each
 * work item and the log-sum-exp combine per segment, the twin of
 * attn_gqa in runtime/attn.c.  fp16 K/V with d up to 128 run on the
 * tensor cores (attn_item_tc), the rest on the FMA units (attn_item).
 * SPDX-License-Identifier: MIT
 */
#include <string.h>

#include <type_traits>

#include "device.cuh"

/*
 * Waits until the grid launched before this one on the stream has
 * finished and its writes are visible: a kernel launched by
 * launch_early may start while its predecessor is still running.
 * Without that launch it returns at once.
 */
static __device__ __forceinline__ void
grid_wait(void)
{
	asm volatile("griddepcontrol.wait;" ::: "memory");
}

/*
 * Launch of a kernel that calls grid_wait before its first read, allowed
 * to start (set up its blocks) while the previous kernel on the stream
 * drains, which hides a launch's latency between the partial and the
 * combine and between layers.
 */
template <typename... P, typename... A>
static int
launch_early(void (*fn)(P...), dim3 grid, int threads, size_t smem,
    cudaStream_t st, A... args)
{
	cudaLaunchConfig_t c;
	cudaLaunchAttribute at[1];

	memset(&c, 0, sizeof c);
	c.gridDim = grid;
	c.blockDim = dim3(threads);
	c.dynamicSmemBytes = smem;
	c.stream = st;
	at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	at[0].val.programmaticStreamSerializationAllowed = 1;
	c.attrs = at;
	c.numAttrs = 1;
	cudaLaunchKernelEx(&c, fn, (P)args...);
	return launched();
}

#define AT_THREADS 128
#define AT_TILE 8	/* rows a lane group has in flight */
#define AT_NW (AT_THREADS / 32)
/* blocks a multiprocessor of the tensor-core form (184 registers at
 * d = 128, G = 4); its wide variant (AT_WIDE_*) is built for three */
#define AT_TC_MINB 2
/* P is split into two fp16 halves at 2^12 its size, so that the low half
 * stays a normal number down to p = 2^-12 */
#define AT_PSCALE 4096.0f
/* 16-row tiles a warp of the tensor-core form keeps in its ring of
 * asynchronous copies: one being read, AT_STAGES - 1 in flight (2 at two
 * blocks a multiprocessor read 0-2% slower on the H200 at batch >= 4; 4
 * leaves one block of d = 128 a multiprocessor, 1-21% slower) */
#ifndef AT_STAGES
#define AT_STAGES 3
#endif
/* The wide variant (W = 1) of the tensor-core form at d = 128: a ring of
 * 2 slots, 166 registers (G = 4), three blocks a multiprocessor instead
 * of two; kvx_cuda_attn_variant says when it runs. */
#define AT_WIDE_STAGES 2
#define AT_WIDE_MINB 3

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
 * Where an item's result goes: its partial (m, l: G floats; acc: G x D),
 * or, when solo (the item is its segment's only one and the launch
 * names an output), the segment's normalised output in acc, and no m
 * nor l.  Three pointers, as many registers as the partial's own
 * addresses took before.
 */
struct at_dst {
	float	*m, *l, *acc;
	int	 solo;
};

/*
 * The NSG groups' states in shared memory (m, l: NSG x G; acc: group g's
 * G x D floats from sm_acc + g ws) merged into the item's result (struct
 * at_dst).  A solo item's output is acc / l, which is what the combine
 * makes of one item (its weight 2^(m - m) = 1), so both paths give the
 * same bits.
 */
template <int G, int D, int NSG>
static __device__ __forceinline__ void
attn_fold(const struct at_dst &o, const float (*sm_m)[G],
    const float (*sm_l)[G], const float *sm_acc, int ws)
{
	int h, e, i, g;

	__syncthreads();
	for (i = threadIdx.x; i < G * D; i += AT_THREADS) {
		float M = -INFINITY, L = 0.0f, A = 0.0f, f;

		h = i / D;
		e = i % D;
		for (g = 0; g < NSG; g++)
			M = fmaxf(M, sm_m[g][h]);
		for (g = 0; g < NSG; g++) {
			if (sm_m[g][h] == -INFINITY)
				continue;
			f = exp2f(sm_m[g][h] - M);
			L += sm_l[g][h] * f;
			A += sm_acc[g * ws + h * D + e] * f;
		}
		if (o.solo) {
			o.acc[h * D + e] = L > 0.0f ? A / L : 0.0f;
			continue;
		}
		o.acc[h * D + e] = A;
		if (e == 0) {
			o.m[h] = M;
			o.l[h] = L;
		}
	}
	/* the next item reuses the shared arrays */
	__syncthreads();
}

/*
 * The lane groups' states merged in shared memory (sm_acc: NSG x G x D
 * floats) into the item's result.
 */
template <int G, int D>
static __device__ __forceinline__ void
attn_merge(const struct at_dst &o, const float (&m)[G], const float (&l)[G],
    const float (&acc)[G][8], float *sm_acc)
{
	constexpr int LPR = D / 8, NSG = AT_THREADS / LPR;
	__shared__ float sm_m[NSG][G], sm_l[NSG][G];
	int sg = threadIdx.x / LPR, li = threadIdx.x % LPR, h, e;

	for (h = 0; h < G; h++) {
		if (li == 0) {
			sm_m[sg][h] = m[h];
			sm_l[sg][h] = l[h];
		}
		for (e = 0; e < 8; e++)
			sm_acc[(sg * G + h) * D + li * 8 + e] = acc[h][e];
	}
	attn_fold<G, D, NSG>(o, sm_m, sm_l, sm_acc, G * D);
}

/* K and V of the TR rows from r of a lane group (rows past r1 - 1
 * repeat row r1 - 1, which the tile counts as -inf). */
template <int TR, typename T>
static __device__ __forceinline__ void
attn_load(const T *kb, const T *vb, int ld_, int r, int r1, int li,
    uint4 (&kr)[TR], uint4 (&vr)[TR])
{
	int i;

#pragma unroll
	for (i = 0; i < TR; i++) {
		int row = r + i < r1 ? r + i : r1 - 1;

		kr[i] = __ldg((const uint4 *)(kb + (size_t)row * ld_) + li);
		vr[i] = __ldg((const uint4 *)(vb + (size_t)row * ld_) + li);
	}
}

/*
 * Work item ii, rows [r0, r1) of one segment, by a whole block.  A row of
 * D elements is read by D/8 lanes with 16-byte loads; each lane group
 * walks its share of the rows AT_TILE at a time, keeping for all G query
 * heads an online softmax over its rows.  The groups then merge in
 * shared memory, so K and V are read once for the whole GQA group.
 */
template <int G, int D, typename T>
static __device__ __forceinline__ void
attn_item(const float *q, const T *k, const T *v, const long long *off,
    int ld_, float scale2, struct wl_item it, const struct at_dst &o)
{
	constexpr int LPR = D / 8, NSG = AT_THREADS / LPR, GPW = 32 / LPR;
	constexpr int STEP = NSG * AT_TILE;
	__shared__ float sm_acc[NSG * G * D];
	int sg = threadIdx.x / LPR, li = threadIdx.x % LPR, r, rw;
	const T *kb = k + off[it.seg], *vb = v + off[it.seg];
	float qr[G][8], m[G], l[G], acc[G][8];
	uint4 kr[AT_TILE], vr[AT_TILE];

	attn_init<G, D>(q, it.seg, li, scale2, qr, m, l, acc);
	/* the loop bound is uniform over a warp, for the shuffles below */
	for (rw = it.r0 + (threadIdx.x >> 5) * GPW * AT_TILE; rw < it.r1;
	    rw += STEP) {
		r = rw + (sg % GPW) * AT_TILE;
		attn_load<AT_TILE, T>(kb, vb, ld_, r, it.r1, li, kr, vr);
		attn_tile<G, LPR, AT_TILE, T>(qr, kr, vr, it.r1 - r, m, l, acc);
	}
	attn_merge<G, D>(o, m, l, acc, sm_acc);
}

/* 2^x on the special-function unit; 2^-inf = 0. */
static __device__ __forceinline__ float
ex2(float x)
{
	float y;

	asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
	return y;
}

/* Word i (0-3) of a 16-byte chunk. */
static __device__ __forceinline__ uint32_t
word(const uint4 &x, int i)
{
	return i == 0 ? x.x : i == 1 ? x.y : i == 2 ? x.z : x.w;
}

/* Two floats as fp16 (a in the low half), as a register. */
static __device__ __forceinline__ uint32_t
pack_h2(float a, float b)
{
	__half2 h = __floats2half2_rn(a, b);

	return *(uint32_t *)&h;
}

/* a and b (fp32) split into fp16 high parts *hi and the rests *lo. */
static __device__ __forceinline__ void
split_h2(float a, float b, uint32_t *hi, uint32_t *lo)
{
	__half2 h = __floats2half2_rn(a, b);

	*hi = *(uint32_t *)&h;
	*lo = pack_h2(a - __low2float(h), b - __high2float(h));
}

/* d += a b on the tensor cores: m16n8k16, fp16 inputs, fp32 sums. */
static __device__ __forceinline__ void
mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
	asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
	    "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
	    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
	    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/*
 * A warp's 16-row tile from row r in registers: lane (g = lane / 4,
 * c = lane % 4) holds 16-byte chunks c + 4u of K rows r + g and r + 8 + g
 * (the B fragments of S = Q K^T, the head dimension permuted so that
 * each lane's loads are whole chunks), and chunks g + 8v of V rows
 * r + 2c, r + 2c + 1, r + 2c + 8, r + 2c + 9 (the rows of its B fragments
 * of O = P V).  Rows past r1 - 1 repeat row r1 - 1.
 */
template <int D>
struct tc_tile {
	uint4	k[2][D / 32], v[4][D / 64];
};

/* 16 bytes from global src to shared dst, bypassing L1, asynchronously. */
static __device__ __forceinline__ void
cp_async16(uint4 *dst, const uint4 *src)
{
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::
	    "r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src) :
	    "memory");
}

/* Closes the lane's copies issued since the last commit into a group. */
static __device__ __forceinline__ void
cp_commit(void)
{
	asm volatile("cp.async.commit_group;" ::: "memory");
}

/* Waits until at most N of the lane's groups are still in flight. */
template <int N>
static __device__ __forceinline__ void
cp_wait(void)
{
	asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
}

/*
 * Where chunk x of row y of a tile sits in shared memory: x XOR
 * tc_swz(y).  The fragment reads of tc_fetch_k and tc_fetch_v take, in
 * each quarter warp, K chunks c + 4u of two neighbouring rows and V
 * chunks g + 8u of four rows 2 apart; the swizzle sends each of those
 * eight 16-byte reads to its own four banks.
 */
static __device__ __forceinline__ int
tc_swz(int y)
{
	return (((y >> 1) & 3) ^ ((y & 1) << 1)) << 1;
}

/* uint4 chunks of a ring slot: the 16 K rows, then the 16 V rows. */
template <int D>
static __host__ __device__ constexpr int
tc_slot(void)
{
	return 2 * 16 * (D / 8);
}

/* Ring slots a warp of the tensor-core form keeps: AT_STAGES, or
 * AT_WIDE_STAGES in the wide variant. */
template <int W>
static __host__ __device__ constexpr int
tc_stages(void)
{
	return W ? AT_WIDE_STAGES : AT_STAGES;
}

/* Shared memory of the tensor-core form: AT_NW warps' rings. */
template <int D, int W>
static __host__ __device__ constexpr size_t
tc_smem(void)
{
	return (size_t)AT_NW * tc_stages<W>() * tc_slot<D>() * sizeof(uint4);
}

/*
 * Starts the copies of the warp's tile of rows r .. r + 15 into ring
 * slot sk (struct tc_tile's rows, swizzled by tc_swz): lane i takes
 * chunks i, i + 32, ... of the K rows and the same of the V rows, so a
 * row's 16-byte chunks go to consecutive lanes.  Rows past r1 - 1
 * repeat row r1 - 1.
 */
template <int D>
static __device__ __forceinline__ void
tc_issue(const __half *kb, const __half *vb, int ld_, int r, int r1,
    int lane, uint4 *sk)
{
	constexpr int C = D / 8;
	uint4 *sv = sk + 16 * C;
	int i, y, x, row, at;

#pragma unroll
	for (i = lane; i < 16 * C; i += 32) {
		y = i / C;
		x = i % C;
		row = min(r + y, r1 - 1);
		at = y * C + (x ^ tc_swz(y));
		cp_async16(sk + at, (const uint4 *)(kb + (size_t)row * ld_) +
		    x);
		cp_async16(sv + at, (const uint4 *)(vb + (size_t)row * ld_) +
		    x);
	}
}

/* The lane's K fragments of the tile in ring slot sk into t. */
template <int D>
static __device__ __forceinline__ void
tc_fetch_k(const uint4 *sk, int lane, struct tc_tile<D> &t)
{
	constexpr int C = D / 8;
	int g = lane >> 2, c = lane & 3, j, u, y;

#pragma unroll
	for (j = 0; j < 2; j++) {
		y = 8 * j + g;
#pragma unroll
		for (u = 0; u < D / 32; u++)
			t.k[j][u] = sk[y * C + ((c + 4 * u) ^ tc_swz(y))];
	}
}

/* The lane's V fragments of the tile in ring slot sk into t. */
template <int D>
static __device__ __forceinline__ void
tc_fetch_v(const uint4 *sk, int lane, struct tc_tile<D> &t)
{
	constexpr int C = D / 8;
	const uint4 *sv = sk + 16 * C;
	int g = lane >> 2, c = lane & 3, j, u, y;

#pragma unroll
	for (j = 0; j < 4; j++) {
		y = 2 * c + (j & 1) + 8 * (j >> 1);
#pragma unroll
		for (u = 0; u < D / 64; u++)
			t.v[j][u] = sv[y * C + ((g + 8 * u) ^ tc_swz(y))];
	}
}

/*
 * One tile into the warp's online softmax.  The M dimension of both
 * products holds the G <= 8 heads twice: rows 0-7 the fp16 high part of
 * Q (and of P), rows 8-15 the rest, so one m16n8k16 gives the scores
 * to about fp32 accuracy (the sum of the two rows).  Lane (g, c) then
 * holds head g's scores of tile rows 2c, 2c + 1, 2c + 8, 2c + 9, which
 * is where the A fragment of P wants them; acc[n][0..1] sum P_hi V and
 * acc[n][2..3] P_lo V, both scaled by AT_PSCALE.
 */
template <int D>
static __device__ __forceinline__ void
tc_step(const uint32_t (&qa)[D / 16][4], const uint4 *sk, int nvalid,
    int lane, float &m, float &l, float (&acc)[D / 8][4])
{
	int c = lane & 3, j, kk, n, e;
	struct tc_tile<D> t;
	float s[2][4], x[4], mt, alpha, p[4];
	uint32_t pa[4];

	tc_fetch_k<D>(sk, lane, t);
#pragma unroll
	for (j = 0; j < 2; j++) {
		s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
		for (kk = 0; kk < D / 16; kk++)
			mma16816(s[j], qa[kk], word(t.k[j][kk >> 1],
			    2 * (kk & 1)), word(t.k[j][kk >> 1],
			    2 * (kk & 1) + 1));
	}
#pragma unroll
	for (e = 0; e < 4; e++)
		x[e] = s[e >> 1][e & 1] + s[e >> 1][2 + (e & 1)];
	if (nvalid < 16)
#pragma unroll
		for (e = 0; e < 4; e++)
			if (8 * (e >> 1) + 2 * c + (e & 1) >= nvalid)
				x[e] = -INFINITY;
	mt = fmaxf(fmaxf(m, x[0]), fmaxf(fmaxf(x[1], x[2]), x[3]));
	mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
	mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
	/* row r of the tile is always valid, so mt is finite */
	if (__any_sync(0xffffffffu, mt > m)) {
		alpha = ex2(m - mt);
		l *= alpha;
#pragma unroll
		for (n = 0; n < D / 8; n++)
#pragma unroll
			for (e = 0; e < 4; e++)
				acc[n][e] *= alpha;
		m = mt;
	}
#pragma unroll
	for (e = 0; e < 4; e++) {
		p[e] = ex2(x[e] - m);
		l += p[e];
	}
	split_h2(p[0] * AT_PSCALE, p[1] * AT_PSCALE, &pa[0], &pa[1]);
	split_h2(p[2] * AT_PSCALE, p[3] * AT_PSCALE, &pa[2], &pa[3]);
	tc_fetch_v<D>(sk, lane, t);
#pragma unroll
	for (n = 0; n < D / 8; n++) {
		int u = n >> 3, w = (n & 7) >> 1;
		unsigned sel = n & 1 ? 0x7632u : 0x5410u;

		mma16816(acc[n], pa,
		    __byte_perm(word(t.v[0][u], w), word(t.v[1][u], w), sel),
		    __byte_perm(word(t.v[2][u], w), word(t.v[3][u], w), sel));
	}
}

/*
 * Work item ii on the tensor cores (fp16 K/V, G <= 8): each warp takes
 * every fourth 16-row tile, its copies running S - 1 tiles ahead (S =
 * tc_stages<W>(): 3, or 2 in the wide variant) of its arithmetic through a ring of slots of its own in shared memory
 * (so a warp waits for no other and needs no barrier but __syncwarp);
 * the warps merge as the lane groups of attn_item do, each writing its
 * state into its own ring, whose copies have all landed by then.
 * Column n of a V fragment is the lane group n's column, so output
 * element d of head g sits at acc[8u + e][..] of lane (g, c) for
 * d = 8 (2c + 8u) + e (+ 8 for the second of the pair).
 */
template <int G, int D, int W>
static __device__ __forceinline__ void
attn_item_tc(const float *q, const __half *k, const __half *v,
    const long long *off, int ld_, float scale2, struct wl_item it,
    const struct at_dst &o)
{
	constexpr int S = tc_stages<W>(), RING = S * tc_slot<D>();
	extern __shared__ uint4 at_ring[];
	__shared__ float sm_m[AT_NW][G], sm_l[AT_NW][G];
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2;
	int c = lane & 3, kk, n, r, nt, tl, rd, wr;
	const __half *kb = k + off[it.seg], *vb = v + off[it.seg];
	const float *qs = q + ((size_t)it.seg * G + g) * D;
	uint4 *ring = at_ring + w * RING;
	uint32_t qa[D / 16][4];
	float acc[D / 8][4], m = -INFINITY, l = 0.0f;

	static_assert(RING * 4 >= G * D, "a warp's state fits its ring");
	/* the warp's tiles start at r0 + 16 w + 16 AT_NW tl */
	nt = it.r1 - it.r0 - 16 * w;
	nt = nt > 0 ? (nt + 16 * AT_NW - 1) / (16 * AT_NW) : 0;
	for (tl = 0; tl < S - 1; tl++) {
		if (tl < nt)
			tc_issue<D>(kb, vb, ld_, it.r0 + 16 * (w + AT_NW * tl),
			    it.r1, lane, ring + tl * tc_slot<D>());
		cp_commit();
	}
#pragma unroll
	for (kk = 0; kk < D / 16; kk++) {
		/* chunk c + 4 (kk / 2), words 2 (kk % 2) and the next:
		 * k = 2c, 2c + 1 and 2c + 8, 2c + 9 of product kk */
		int d0 = 8 * (c + 4 * (kk >> 1)) + 4 * (kk & 1);
		float a0 = 0, a1 = 0, b0 = 0, b1 = 0;

		if (g < G) {
			a0 = qs[d0] * scale2;
			a1 = qs[d0 + 1] * scale2;
			b0 = qs[d0 + 2] * scale2;
			b1 = qs[d0 + 3] * scale2;
		}
		split_h2(a0, a1, &qa[kk][0], &qa[kk][1]);
		split_h2(b0, b1, &qa[kk][2], &qa[kk][3]);
	}
#pragma unroll
	for (n = 0; n < D / 8; n++)
		acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
	/* tile tl sits in slot rd; tile tl + S - 1 goes to slot wr,
	 * the one read last round (every lane has passed this round's
	 * __syncwarp, so none still reads it) */
	for (tl = 0, rd = 0, wr = S - 1; tl < nt; tl++) {
		cp_wait<S - 2>();
		__syncwarp();
		if (tl + S - 1 < nt)
			tc_issue<D>(kb, vb, ld_, it.r0 + 16 * (w + AT_NW *
			    (tl + S - 1)), it.r1, lane,
			    ring + wr * tc_slot<D>());
		cp_commit();
		r = it.r0 + 16 * (w + AT_NW * tl);
		tc_step<D>(qa, ring + rd * tc_slot<D>(), it.r1 - r, lane, m,
		    l, acc);
		rd = rd == S - 1 ? 0 : rd + 1;
		wr = wr == S - 1 ? 0 : wr + 1;
	}
	l += __shfl_xor_sync(0xffffffffu, l, 1);
	l += __shfl_xor_sync(0xffffffffu, l, 2);
	/* the ring's last reads are done before the state overwrites it */
	__syncwarp();
	if (g < G) {
		float *o = (float *)ring + g * D;

#pragma unroll
		for (n = 0; n < D / 8; n++) {
			int d = 8 * (2 * c + 8 * (n >> 3)) + (n & 7);

			o[d] = (acc[n][0] + acc[n][2]) * (1.0f / AT_PSCALE);
			o[d + 8] = (acc[n][1] + acc[n][3]) * (1.0f / AT_PSCALE);
		}
		if (c == 0) {
			sm_m[w][g] = m;
			sm_l[w][g] = l;
		}
	}
	attn_fold<G, D, AT_NW>(o, sm_m, sm_l, (const float *)at_ring,
	    RING * 4);
}

/*
 * Whether the tensor-core form runs: fp16 K/V with d up to 128 (beyond,
 * its accumulators would not fit in registers); bf16 would need a
 * three-way split of Q and P for the same accuracy.
 */
template <int D, typename T>
static __host__ __device__ constexpr bool
at_tc(void)
{
	return D <= 128 && std::is_same<T, __half>::value;
}

/* Whether (D, T) has a wide variant: the tensor-core form at d = 128,
 * the only one that three blocks a multiprocessor help (at d = 64 four
 * fit either way). */
template <int D, typename T>
static __host__ __device__ constexpr bool
at_wide(void)
{
	return D == 128 && at_tc<D, T>();
}

/* Blocks a multiprocessor the partial kernel is built for: the lane
 * groups' form (attn_item) fits three up to four query heads. */
template <int G, int D, typename T, int W>
static __host__ __device__ constexpr int
at_minb(void)
{
	return at_tc<D, T>() ? (W ? AT_WIDE_MINB : AT_TC_MINB) :
	    G <= 4 ? 3 : 1;
}

/*
 * Block b takes items bfirst[b] .. bfirst[b + 1] - 1 (a balanced list
 * from wl_balanced), or item b alone when bfirst is NULL.  With out,
 * item ii is its segment's only one when first[seg] = ii and first[seg
 * + 1] = ii + 1; the empty items that pad a list past its end (seg 0,
 * ii >= first[nseg]) never are.  Items of seg < 0 are skipped.  The
 * tests are the same for the whole block, so the barriers of attn_fold
 * stay uniform.
 */
template <int G, int D, typename T, int W>
static __global__ void __launch_bounds__(AT_THREADS, at_minb<G, D, T, W>())
attn_partial_k(const float *q, const T *k, const T *v, const long long *off,
    int ld_, float scale2, const struct wl_item *items,
    const int *bfirst, const int *first, float *pm, float *pl,
    float *pacc, float *out)
{
	struct at_dst o;
	struct wl_item it;
	int i0, i1, ii;

	grid_wait();
	i0 = bfirst ? bfirst[blockIdx.x] : blockIdx.x;
	i1 = bfirst ? bfirst[blockIdx.x + 1] : blockIdx.x + 1;
	for (ii = i0; ii < i1; ii++) {
		it = items[ii];
		if (it.seg < 0)		/* padding past the list's end */
			continue;
		o.solo = out != NULL && first[it.seg] == ii &&
		    first[it.seg + 1] == ii + 1;
		o.m = pm + (size_t)ii * G;
		o.l = pl + (size_t)ii * G;
		o.acc = o.solo ? out + (size_t)it.seg * G * D :
		    pacc + (size_t)ii * G * D;
		if constexpr (at_tc<D, T>())
			attn_item_tc<G, D, W>(q, k, v, off, ld_, scale2, it,
			    o);
		else
			attn_item<G, D, T>(q, k, v, off, ld_, scale2, it, o);
	}
}

/* Arguments of one partial-attention launch. */
struct attn_args {
	const float			*q;
	const void			*k, *v;
	int				 dtype, ld, nblk;
	const long long			*off;
	float				 s2;
	const struct wl_item		*items;
	const int			*bfirst, *first;
	float				*m, *l, *acc, *out;
	cudaStream_t			 st;
	int				 variant;	/* KVX_CUDA_ATTN_* */
	int				*occupancy;	/* query only */
};

/*
 * Dynamic shared memory of the partial kernel for (G, D, T, W): the
 * rings of the tensor-core form, past the default 48 KiB, which the
 * kernel is allowed once (C++ runs the initialiser once, whichever
 * thread comes first); 0 for the lane groups' form.  *rc gets the
 * allowance's status.
 */
template <int G, int D, typename T, int W>
static size_t
attn_smem(int *rc)
{
	static const int allowed = !at_tc<D, T>() ? 0 :
	    cudaFuncSetAttribute(attn_partial_k<G, D, T, W>,
	    cudaFuncAttributeMaxDynamicSharedMemorySize,
	    (int)tc_smem<D, W>()) == cudaSuccess ? 0 : launched();

	*rc = allowed;
	return at_tc<D, T>() ? tc_smem<D, W>() : 0;
}

/* Launch (or occupancy query) for one (G, D, T, W) of run-time
 * arguments. */
template <int G, int D, typename T, int W>
static int
attn_launch_w(const struct attn_args *a)
{
	int rc;
	size_t smem = attn_smem<G, D, T, W>(&rc);

	if (rc != 0)
		return rc;
	if (a->occupancy != NULL)
		return (int)cudaOccupancyMaxActiveBlocksPerMultiprocessor(
		    a->occupancy, attn_partial_k<G, D, T, W>, AT_THREADS,
		    smem);
	return launch_early(attn_partial_k<G, D, T, W>, a->nblk, AT_THREADS,
	    smem, a->st, a->q, (const T *)a->k, (const T *)a->v, a->off,
	    a->ld, a->s2, a->items, a->bfirst, a->first, a->m, a->l, a->acc,
	    a->out);
}

/* attn_launch_w for the variant: the wide one where (D, T) has it, else
 * the deep one, which every variant number names there. */
template <int G, int D, typename T>
static int
attn_launch_t(const struct attn_args *a)
{
	if constexpr (at_wide<D, T>())
		if (a->variant == KVX_CUDA_ATTN_WIDE)
			return attn_launch_w<G, D, T, 1>(a);
	return attn_launch_w<G, D, T, 0>(a);
}

/* attn_launch_t for the storage type of the arguments. */
template <int G, int D>
static int
attn_launch(const struct attn_args *a)
{
	if (a->variant != KVX_CUDA_ATTN_DEEP &&
	    a->variant != KVX_CUDA_ATTN_WIDE)
		return KVX_CUDA_EINVAL;
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

/* attn_launch_g for the head dimension, 64, 128 or 256 (Gemma 3). */
static int
attn_dispatch(int g, int d, const struct attn_args *a)
{
	if (d == 64)
		return attn_launch_g<64>(g, a);
	if (d == 128)
		return attn_launch_g<128>(g, a);
	if (d == 256)
		return attn_launch_g<256>(g, a);
	return KVX_CUDA_EINVAL;
}

/* Resident blocks of the partial kernel: per multiprocessor times their
 * count. */
extern "C" int
kvx_cuda_attn_blocks(int g, int d, int dtype, int variant)
{
	struct attn_args a;
	int occ = 0, sm = kvx_cuda_sm_count();

	memset(&a, 0, sizeof a);
	a.dtype = dtype;
	a.variant = variant;
	a.occupancy = &occ;
	if (attn_dispatch(g, d, &a) != 0 || occ < 1 || sm < 1)
		return 0;
	return occ * sm;
}

/* Whether the wide variant is built for (d, dtype): at_wide's answer
 * for the head sizes and storage types attn_dispatch takes. */
static bool
attn_wide_built(int d, int dtype)
{
	bool h = dtype == KVX_CUDA_F16;

	switch (d) {
	case 64:
		return h ? at_wide<64, __half>() : at_wide<64, __nv_bfloat16>();
	case 128:
		return h ? at_wide<128, __half>() :
		    at_wide<128, __nv_bfloat16>();
	case 256:
		return h ? at_wide<256, __half>() :
		    at_wide<256, __nv_bfloat16>();
	}
	return false;
}

/* The variant for nseg segments a layer (kvx_cuda.h). */
extern "C" int
kvx_cuda_attn_variant(int g, int d, int dtype, int nseg)
{
	(void)g;
	return attn_wide_built(d, dtype) && nseg >= KVX_CUDA_ATTN_WIDE_SEGS ?
	    KVX_CUDA_ATTN_WIDE : KVX_CUDA_ATTN_DEEP;
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
    const int *first, float *m, float *l, float *acc, float *out,
    int variant, cudaStream_t stream)
{
	struct attn_args a;

	if (nblocks <= 0)
		return 0;
	if (!attn_aligned(k, v, ld_) || (out != NULL && first == NULL))
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
	a.first = first;
	a.m = m;
	a.l = l;
	a.acc = acc;
	a.out = out;
	a.st = stream;
	a.variant = variant;
	return attn_dispatch(g, d, &a);
}

/*
 * Warps a (segment, head), and blocks a multiprocessor: at batch 64 the
 * grid has 2,048 blocks, most of which merge a few items or none, so
 * small blocks at 64 registers (8 x 4 warps resident) keep it to about
 * two waves.
 */
#define CB_WARPS 4
#define CB_T (CB_WARPS * 32)
#define CB_MINB 8
/* items a warp has in flight: 32 floats (4 KB a warp) of partials */
#define CB_U(E) (32 / (E))

/* A running log-sum-exp merge: max m, sum l, unnormalised output a of
 * a lane's E elements (in cb_items, l is the lane's share). */
template <int E>
struct cb_state {
	float	m, l, a[E];
};

/* The lane's E consecutive floats from p, in 8- or 16-byte loads. */
template <int E>
static __device__ __forceinline__ void
cb_load(const float *p, float (&x)[E])
{
	int e;

	if constexpr (E == 2) {
		float2 u = __ldg((const float2 *)p);

		x[0] = u.x;
		x[1] = u.y;
	} else {
#pragma unroll
		for (e = 0; e < E; e += 4) {
			float4 u = __ldg((const float4 *)(p + e));

			x[e] = u.x;
			x[e + 1] = u.y;
			x[e + 2] = u.z;
			x[e + 3] = u.w;
		}
	}
}

/*
 * Items j .. j + U - 1 (those below j1) into the warp's state st.  Lane
 * u < U reads item j + u's m and l, each lane its E elements of every
 * item's acc; all the loads are issued before the first use, so a warp
 * has U items in flight.  The run's max is reduced by shuffles; st.m is
 * the same on every lane, st.l is the lane's share of the sum (of its
 * own items), st.a its E elements.  An item with l = 0 (no rows) has
 * weight 0.
 */
template <int E>
static __device__ __forceinline__ void
cb_items(int j, int j1, int g, int h, int lane, const float *pm,
    const float *pl, const float *pacc, struct cb_state<E> &st)
{
	constexpr int D = 32 * E, U = CB_U(E);
	float aj[U][E], mj = -INFINITY, lj = 0.0f, mt, f, fu;
	int u, e, o;

	if (lane < U && j + lane < j1) {
		mj = __ldg(pm + (size_t)(j + lane) * g + h);
		lj = __ldg(pl + (size_t)(j + lane) * g + h);
	}
#pragma unroll
	for (u = 0; u < U; u++) {
#pragma unroll
		for (e = 0; e < E; e++)
			aj[u][e] = 0.0f;
		if (j + u < j1)
			cb_load<E>(pacc + ((size_t)(j + u) * g + h) * D +
			    lane * E, aj[u]);
	}
	mt = lj > 0.0f ? mj : -INFINITY;
	for (o = 16; o > 0; o >>= 1)
		mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
	mt = fmaxf(mt, st.m);
	if (mt == -INFINITY)
		return;
	/* 2^(-inf) = 0 drops the empty state */
	f = exp2f(st.m - mt);
	st.l *= f;
#pragma unroll
	for (e = 0; e < E; e++)
		st.a[e] *= f;
	f = lj > 0.0f ? exp2f(mj - mt) : 0.0f;
	st.l += f * lj;
#pragma unroll
	for (u = 0; u < U; u++) {
		fu = __shfl_sync(0xffffffffu, f, u);
#pragma unroll
		for (e = 0; e < E; e++)
			st.a[e] += fu * aj[u][e];
	}
	st.m = mt;
}

/* State b merged into a (either may be empty). */
template <int E>
static __device__ __forceinline__ void
cb_join(struct cb_state<E> &a, const struct cb_state<E> &b)
{
	float mt = fmaxf(a.m, b.m), fa, fb;
	int e;

	if (mt == -INFINITY)
		return;
	fa = exp2f(a.m - mt);
	fb = exp2f(b.m - mt);
	a.l = a.l * fa + b.l * fb;
#pragma unroll
	for (e = 0; e < E; e++)
		a.a[e] = a.a[e] * fa + b.a[e] * fb;
	a.m = mt;
}

/* A merged state's output, acc / l (zeros when empty), as float or fp16. */
static __device__ __forceinline__ void
cb_put(float *p, float v)
{
	*p = v;
}

static __device__ __forceinline__ void
cb_put(__half *p, float v)
{
	*p = __float2half(v);
}

template <int E, typename OT>
static __device__ __forceinline__ void
cb_store(OT *dst, const struct cb_state<E> &st)
{
	int e;

#pragma unroll
	for (e = 0; e < E; e++)
		cb_put(dst + e, st.l > 0.0f ? st.a[e] / st.l : 0.0f);
}

/*
 * Merge of one (segment, query head)'s partials by a block of CB_WARPS
 * warps, d = 32 E: the segment's items are cut into runs of U, nw
 * warps take runs w, w + nw, ... and keep a running merge in registers
 * (cb_items); the warps then meet once in shared memory.  A segment of
 * at most U items takes one warp and no barrier.  With solo, segments of one item are
 * skipped: the partial kernel wrote their outputs.  Every exit before
 * the barrier depends on the segment alone, so the whole block takes
 * it; the shared arrays are written before the one barrier and read
 * after it, once, so no two accesses race.
 */
template <int E, typename OT>
static __global__ void __launch_bounds__(CB_T, CB_MINB)
attn_combine_k(const int *first, int g, int solo, const float *pm,
    const float *pl, const float *pacc, OT *out)
{
	constexpr int D = 32 * E, U = CB_U(E);
	__shared__ float sm[CB_WARPS][2], sa[CB_WARPS][D];
	struct cb_state<E> st, o;
	int s = blockIdx.x, h = blockIdx.y, w = threadIdx.x >> 5;
	int lane = threadIdx.x & 31, j0, j1, nw, j, e, i;

	grid_wait();
	j0 = first[s];
	j1 = first[s + 1];
	if (solo && j1 - j0 == 1)
		return;
	nw = (j1 - j0 + U - 1) / U;
	nw = nw < 1 ? 1 : nw > CB_WARPS ? CB_WARPS : nw;
	st.m = -INFINITY;
	st.l = 0.0f;
#pragma unroll
	for (e = 0; e < E; e++)
		st.a[e] = 0.0f;
	if (w < nw)
		for (j = j0 + w * U; j < j1; j += nw * U)
			cb_items<E>(j, j1, g, h, lane, pm, pl, pacc, st);
	for (i = 16; i > 0; i >>= 1)
		st.l += __shfl_xor_sync(0xffffffffu, st.l, i);
	if (nw > 1) {
		if (w < nw) {
			if (lane == 0) {
				sm[w][0] = st.m;
				sm[w][1] = st.l;
			}
#pragma unroll
			for (e = 0; e < E; e++)
				sa[w][lane * E + e] = st.a[e];
		}
		__syncthreads();
		for (i = 1; i < nw && w == 0; i++) {
			o.m = sm[i][0];
			o.l = sm[i][1];
#pragma unroll
			for (e = 0; e < E; e++)
				o.a[e] = sa[i][lane * E + e];
			cb_join<E>(st, o);
		}
	}
	if (w == 0)
		cb_store<E>(out + ((size_t)s * g + h) * D + lane * E, st);
}

/*
 * The same merge with one warp a (segment, query head), CB_WARPS of
 * them a block, each alone (no shared memory, no barrier): warp w of
 * block b takes pair p = b CB_WARPS + w (segment p / g, head p % g) and
 * does, one after another, what each of the block form's nw warps does,
 * joining their states in the same order: the same operations on the
 * same values, so the same bits whatever the counts (a graph keeps the
 * form it was captured with while the counts change).  For lists whose
 * segments have at most U items, where the block form leaves three
 * warps in four idle and needs a block a pair.
 */
template <int E, typename OT>
static __global__ void __launch_bounds__(CB_T, CB_MINB)
attn_combine_w_k(const int *first, int npair, int g, int solo,
    const float *pm, const float *pl, const float *pacc, OT *out)
{
	constexpr int D = 32 * E, U = CB_U(E);
	struct cb_state<E> st, t;
	int p = blockIdx.x * CB_WARPS + (threadIdx.x >> 5);
	int lane = threadIdx.x & 31, s, h, j, j0, j1, e, i, w, nw;

	grid_wait();
	if (p >= npair)
		return;
	s = p / g;
	h = p % g;
	j0 = first[s];
	j1 = first[s + 1];
	if (solo && j1 - j0 == 1)
		return;
	nw = (j1 - j0 + U - 1) / U;
	nw = nw < 1 ? 1 : nw > CB_WARPS ? CB_WARPS : nw;
	for (w = 0; w < nw; w++) {
		t.m = -INFINITY;
		t.l = 0.0f;
#pragma unroll
		for (e = 0; e < E; e++)
			t.a[e] = 0.0f;
		for (j = j0 + w * U; j < j1; j += nw * U)
			cb_items<E>(j, j1, g, h, lane, pm, pl, pacc, t);
		for (i = 16; i > 0; i >>= 1)
			t.l += __shfl_xor_sync(0xffffffffu, t.l, i);
		if (w == 0)
			st = t;
		else
			cb_join<E>(st, t);
	}
	cb_store<E>(out + ((size_t)s * g + h) * D + lane * E, st);
}

/* One of the two forms for d = 32 E and the output type. */
template <int E, typename OT>
static int
combine_launch(const int *first, int nseg, int g, int most, int solo,
    const float *m, const float *l, const float *acc, OT *out,
    cudaStream_t stream)
{
	long long npair = (long long)nseg * g;

	if (most >= 1 && most <= CB_U(E))
		return launch_early(attn_combine_w_k<E, OT>,
		    dim3((unsigned)((npair + CB_WARPS - 1) / CB_WARPS)), CB_T,
		    0, stream, first, (int)npair, g, solo, m, l, acc, out);
	return launch_early(attn_combine_k<E, OT>, dim3(nseg, g), CB_T, 0,
	    stream, first, g, solo, m, l, acc, out);
}

/* Launches the merge of the partials: a block per (segment, head), or a
 * warp per (segment, head) when no segment has more than U items. */
extern "C" int
kvx_cuda_attn_combine(const int *first, int nseg, int g, int d,
    const float *m, const float *l, const float *acc, void *out,
    int out_dtype, int solo, int most, cudaStream_t stream)
{
	if (nseg <= 0)
		return 0;
	if (g < 1 || g > 65535 || (long long)nseg * g > 0x7fffffffLL ||
	    (out_dtype != KVX_CUDA_F32 && out_dtype != KVX_CUDA_F16) ||
	    (solo && out_dtype != KVX_CUDA_F32))
		return KVX_CUDA_EINVAL;
	if (out_dtype == KVX_CUDA_F16) {
		__half *o = (__half *)out;

		if (d == 64)
			return combine_launch<2>(first, nseg, g, most, 0, m, l,
			    acc, o, stream);
		if (d == 128)
			return combine_launch<4>(first, nseg, g, most, 0, m, l,
			    acc, o, stream);
		if (d == 256)
			return combine_launch<8>(first, nseg, g, most, 0, m, l,
			    acc, o, stream);
		return KVX_CUDA_EINVAL;
	}
	if (d == 64)
		return combine_launch<2>(first, nseg, g, most, solo, m, l, acc,
		    (float *)out, stream);
	if (d == 128)
		return combine_launch<4>(first, nseg, g, most, solo, m, l, acc,
		    (float *)out, stream);
	if (d == 256)
		return combine_launch<8>(first, nseg, g, most, solo, m, l, acc,
		    (float *)out, stream);
	return KVX_CUDA_EINVAL;
}
