/*
 * quant.c - dequantisation and quantised matrix-vector products for the
 * ggml block types.
 * SPDX-License-Identifier: MIT
 *
 * Block layouts (ggml, all little endian, "half" is IEEE binary16):
 *   Q4_0  32 elems, 18 bytes: half d; u8 qs[16].
 *         x[j] = d * ((qs[j] & 15) - 8), x[j+16] = d * ((qs[j] >> 4) - 8).
 *   Q4_1  32 elems, 20 bytes: half d, m; u8 qs[16].
 *         x[j] = d * (qs[j] & 15) + m, x[j+16] = d * (qs[j] >> 4) + m.
 *   Q5_0  32 elems, 22 bytes: half d; u8 qh[4]; u8 qs[16].  Bit j of the
 *         32-bit qh is the fifth bit of element j; x = d * (q - 16).
 *   Q5_1  32 elems, 24 bytes: half d, m; u8 qh[4]; u8 qs[16].
 *         x = d * q + m.
 *   Q8_0  32 elems, 34 bytes: half d; i8 qs[32].  x = d * q.
 *   Q8_1  32 elems, 36 bytes: half d, s; i8 qs[32].  x = d * q, and
 *         s = d * sum(q) is only a cache for dot products.
 *   Q4_K  256 elems, 144 bytes: half d, dmin; u8 scales[12]; u8 qs[128].
 *         Eight sub-blocks of 32 with a 6-bit scale and a 6-bit min each,
 *         packed in scales[] (see k_scale_min); x = d*sc*q - dmin*mn.
 *         Each 32 bytes of qs hold two sub-blocks: low nibbles, then high.
 *   Q5_K  256 elems, 176 bytes: half d, dmin; u8 scales[12]; u8 qh[32];
 *         u8 qs[128].  As Q4_K, plus a fifth bit: for the sub-block pair
 *         p (0..3), bit 2p of qh[l] belongs to the low-nibble element l
 *         and bit 2p+1 to the high-nibble one.
 *   Q6_K  256 elems, 210 bytes: u8 ql[128]; u8 qh[64]; i8 scales[16];
 *         half d.  Two halves of 128; in each, element l + 32k (k 0..3)
 *         takes its low four bits from ql (byte l for even k, l+32 for
 *         odd k; low nibble for k < 2, high for k >= 2) and its top two
 *         from qh[l] bits 2k..2k+1;
 *         x = d * scales[sub-block of 16] * (q - 32).
 *   BF16  the high half of an IEEE binary32.
 *
 * The matrix-vector product keeps the activation in f32 and expands each
 * weight in registers; the offset of a Q4_0 or Q4_1 block (-8d or m) and
 * the minima of a Q4_K block are applied once per 32 weights, against the
 * sum of x over them.  Q5_0 and Q6_K weights are expanded to signed
 * bytes, offset included, so they need no sums.
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "gguf.h"
#include "quant.h"
#include "util.h"

#define QK	32
#define QKK	256

typedef struct { uint16_t d; uint8_t qs[16]; } blk_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[16]; } blk_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_1;
typedef struct { uint16_t d; int8_t qs[32]; } blk_q8_0;
typedef struct { uint16_t d, s; int8_t qs[32]; } blk_q8_1;
typedef struct {
	uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128];
} blk_q4_k;
typedef struct {
	uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128];
} blk_q5_k;
typedef struct {
	uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d;
} blk_q6_k;

_Static_assert(sizeof(blk_q4_0) == 18, "Q4_0 block");
_Static_assert(sizeof(blk_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(blk_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(blk_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(blk_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(blk_q8_1) == 36, "Q8_1 block");
_Static_assert(sizeof(blk_q4_k) == 144, "Q4_K block");
_Static_assert(sizeof(blk_q5_k) == 176, "Q5_K block");
_Static_assert(sizeof(blk_q6_k) == 210, "Q6_K block");

/* --- dequantisation ------------------------------------------------------ */

/* Half to float; F16C where the build has it. */
static inline float
h2f(uint16_t h)
{
#ifdef __F16C__
	return _cvtsh_ss(h);
#else
	return kvx__h2f(h);
#endif
}

/* Sub-block j (0..7) scale and min of a Q4_K / Q5_K block. */
static inline void
k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *mn)
{
	if (j < 4) {
		*sc = q[j] & 63;
		*mn = q[j + 4] & 63;
	} else {
		*sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
		*mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
	}
}

/*
 * One block of 32 4- or 5-bit weights (Q4_0, Q4_1, Q5_0, Q5_1); qh holds
 * the fifth bits, 0 for the 4-bit types.  With a min (has_m) a weight is
 * d * q + m, without one d * (q - zero).
 */
static inline void
dq_32_block(float d, int has_m, float m, int zero, uint32_t qh,
    const uint8_t *qs, float *y)
{
	int j, lo, hi;

	for (j = 0; j < 16; j++) {
		lo = (qs[j] & 15) | (int)(qh >> j & 1) << 4;
		hi = (qs[j] >> 4) | (int)(qh >> (j + 16) & 1) << 4;
		if (has_m) {
			y[j] = d * lo + m;
			y[j + 16] = d * hi + m;
		} else {
			y[j] = d * (lo - zero);
			y[j + 16] = d * (hi - zero);
		}
	}
}

/* Dequantises nb Q4_0 blocks. */
static void
dq_q4_0(const blk_q4_0 *b, float *y, size_t nb)
{
	size_t i;

	for (i = 0; i < nb; i++, y += QK)
		dq_32_block(h2f(b[i].d), 0, 0.0f, 8, 0, b[i].qs, y);
}

/* Dequantises nb Q4_1 blocks. */
static void
dq_q4_1(const blk_q4_1 *b, float *y, size_t nb)
{
	size_t i;

	for (i = 0; i < nb; i++, y += QK)
		dq_32_block(h2f(b[i].d), 1, h2f(b[i].m), 0, 0, b[i].qs, y);
}

/* Dequantises nb Q5_0 blocks. */
static void
dq_q5_0(const blk_q5_0 *b, float *y, size_t nb)
{
	size_t i;
	uint32_t qh;

	for (i = 0; i < nb; i++, y += QK) {
		memcpy(&qh, b[i].qh, 4);
		dq_32_block(h2f(b[i].d), 0, 0.0f, 16, qh, b[i].qs, y);
	}
}

/* Dequantises nb Q5_1 blocks. */
static void
dq_q5_1(const blk_q5_1 *b, float *y, size_t nb)
{
	size_t i;
	uint32_t qh;

	for (i = 0; i < nb; i++, y += QK) {
		memcpy(&qh, b[i].qh, 4);
		dq_32_block(h2f(b[i].d), 1, h2f(b[i].m), 0, qh, b[i].qs, y);
	}
}

/* One block of 32 int8 values with scale d. */
static inline void
dq_i8_block(float d, const int8_t *qs, float *y)
{
	int j;

	for (j = 0; j < QK; j++)
		y[j] = d * qs[j];
}

/* Dequantises nb Q8_0 blocks. */
static void
dq_q8_0(const blk_q8_0 *b, float *y, size_t nb)
{
	size_t i;

	for (i = 0; i < nb; i++, y += QK)
		dq_i8_block(h2f(b[i].d), b[i].qs, y);
}

/* Dequantises nb Q8_1 blocks (the stored sum is not needed). */
static void
dq_q8_1(const blk_q8_1 *b, float *y, size_t nb)
{
	size_t i;

	for (i = 0; i < nb; i++, y += QK)
		dq_i8_block(h2f(b[i].d), b[i].qs, y);
}

/* Scales and minima of the two 32-weight groups 2p and 2p + 1 of a
 * Q4_K/Q5_K block. */
static inline void
k_pair(const uint8_t *scales, int p, float d, float dmin, float *d0,
    float *m0, float *d1, float *m1)
{
	uint8_t sc, mn;

	k_scale_min(2 * p, scales, &sc, &mn);
	*d0 = d * sc;
	*m0 = dmin * mn;
	k_scale_min(2 * p + 1, scales, &sc, &mn);
	*d1 = d * sc;
	*m1 = dmin * mn;
}

/*
 * One Q4_K (qh NULL) or Q5_K block: the two share d, dmin and the packed
 * scales, and Q5_K takes a fifth bit of each weight from qh.
 */
static inline void
dq_k_block(uint16_t hd, uint16_t hdmin, const uint8_t *scales,
    const uint8_t *qh, const uint8_t *q, float *y)
{
	float d = h2f(hd), dmin = h2f(hdmin), d0, m0, d1, m1;
	int p, l, h0 = 0, h1 = 0;

	for (p = 0; p < 4; p++, q += 32, y += 64) {
		k_pair(scales, p, d, dmin, &d0, &m0, &d1, &m1);
		for (l = 0; l < 32; l++) {
			if (qh != NULL) {
				h0 = (qh[l] >> (2 * p)) & 1;
				h1 = (qh[l] >> (2 * p + 1)) & 1;
			}
			y[l] = d0 * ((q[l] & 15) | h0 << 4) - m0;
			y[l + 32] = d1 * ((q[l] >> 4) | h1 << 4) - m1;
		}
	}
}

/* Dequantises nb Q4_K blocks. */
static void
dq_q4_k(const blk_q4_k *b, float *y, size_t nb)
{
	size_t i;

	for (i = 0; i < nb; i++, y += QKK)
		dq_k_block(b[i].d, b[i].dmin, b[i].scales, NULL, b[i].qs, y);
}

/* Dequantises nb Q5_K blocks. */
static void
dq_q5_k(const blk_q5_k *b, float *y, size_t nb)
{
	size_t i;

	for (i = 0; i < nb; i++, y += QKK)
		dq_k_block(b[i].d, b[i].dmin, b[i].scales, b[i].qh, b[i].qs,
		    y);
}

/* Dequantises nb Q6_K blocks. */
static void
dq_q6_k(const blk_q6_k *b, float *y, size_t nb)
{
	const uint8_t *ql, *qh;
	const int8_t *sc;
	size_t i;
	int half, l, k, lo, q;
	float d;

	for (i = 0; i < nb; i++) {
		d = h2f(b[i].d);
		for (half = 0; half < 2; half++, y += 128) {
			ql = b[i].ql + 64 * half;
			qh = b[i].qh + 32 * half;
			sc = b[i].scales + 8 * half;
			for (k = 0; k < 4; k++)
				for (l = 0; l < 32; l++) {
					lo = ql[l + 32 * (k & 1)];
					lo = k < 2 ? lo & 15 : lo >> 4;
					q = (lo | ((qh[l] >> (2 * k)) & 3) <<
					    4) - 32;
					y[32 * k + l] = d * sc[2 * k + l / 16] *
					    q;
				}
		}
	}
}

/* Whether quant_dequant handles type. */
int
quant_supported(int type)
{
	switch (type) {
	case GGML_F32: case GGML_F16: case GGML_BF16:
	case GGML_Q4_0: case GGML_Q4_1: case GGML_Q5_0: case GGML_Q5_1:
	case GGML_Q8_0: case GGML_Q8_1:
	case GGML_Q4_K: case GGML_Q5_K: case GGML_Q6_K:
		return 1;
	}
	return 0;
}

/* Dequantises n elements of type to f32. */
kvx_status
quant_dequant(int type, const void *src, float *dst, size_t n)
{
	const uint16_t *h = src;
	size_t i, be, nb;

	if (!quant_supported(type))
		return kvx__fail(KVX_ERR_UNSUPPORTED,
		    "cannot dequantise ggml type %s (%d)", ggml_type_name(type),
		    type);
	be = (size_t)ggml_type_block_elems(type);
	if (n % be != 0)
		return kvx__fail(KVX_ERR_ARG, "dequantise %s: %zu elements is "
		    "not a multiple of the block size %zu",
		    ggml_type_name(type), n, be);
	nb = n / be;
	switch (type) {
	case GGML_F32:
		memcpy(dst, src, n * sizeof(float));
		break;
	case GGML_F16:
		for (i = 0; i < n; i++)
			dst[i] = h2f(h[i]);
		break;
	case GGML_BF16:
		for (i = 0; i < n; i++)
			dst[i] = kvx__bf2f(h[i]);
		break;
	case GGML_Q4_0: dq_q4_0(src, dst, nb); break;
	case GGML_Q4_1: dq_q4_1(src, dst, nb); break;
	case GGML_Q5_0: dq_q5_0(src, dst, nb); break;
	case GGML_Q5_1: dq_q5_1(src, dst, nb); break;
	case GGML_Q8_0: dq_q8_0(src, dst, nb); break;
	case GGML_Q8_1: dq_q8_1(src, dst, nb); break;
	case GGML_Q4_K: dq_q4_k(src, dst, nb); break;
	case GGML_Q5_K: dq_q5_k(src, dst, nb); break;
	case GGML_Q6_K: dq_q6_k(src, dst, nb); break;
	}
	return KVX_OK;
}

/* --- matrix-vector products with f32 activations ------------------------ */
/*
 * The decode path uses these: the activation stays f32 and each weight is
 * expanded in registers, so the result equals the f32 GEMM of the prefill
 * up to summation order, and greedy decoding follows the exact model
 * rather than the noise of 8-bit activations.  bench/bench-quant sets the
 * rate of each type against a plain read of the same bytes.
 */

/* Sum of each 32-element block of x. */
static void
block_sums(const float *x, int nb, float *xs)
{
	int b, j;

	for (b = 0; b < nb; b++) {
		float s = 0.0f;

		for (j = 0; j < QK; j++)
			s += x[b * QK + j];
		xs[b] = s;
	}
}

#ifdef __AVX2__
/* A row's block dot products: eight lanes, summed once at the row's end. */
typedef __m256 row_acc;

/* Sum of the eight lanes. */
static inline float
hsum256(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v),
	    _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

/* sum_j q_j x_j over 32 integers held eight to each of q0..q3. */
static inline __m256
dot_i32x32(__m256i q0, __m256i q1, __m256i q2, __m256i q3, const float *x)
{
	__m256 a, b;

	/* two chains, so that a block's products wait on two FMAs, not four */
	a = _mm256_mul_ps(_mm256_cvtepi32_ps(q0), _mm256_loadu_ps(x));
	b = _mm256_mul_ps(_mm256_cvtepi32_ps(q1), _mm256_loadu_ps(x + 8));
	a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q2), _mm256_loadu_ps(x + 16), a);
	b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q3), _mm256_loadu_ps(x + 24), b);
	return _mm256_add_ps(a, b);
}

/* sum_j q_j x_j over one 32-block of 4-bit values packed as ggml does. */
static inline row_acc
dot_nib32(const uint8_t *qs, const float *x)
{
	const __m128i mask = _mm_set1_epi8(15);
	__m128i raw = _mm_loadu_si128((const __m128i *)qs);
	__m128i lo = _mm_and_si128(raw, mask);
	__m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);

	return dot_i32x32(_mm256_cvtepu8_epi32(lo),
	    _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
	    _mm256_cvtepu8_epi32(hi),
	    _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)), x);
}

/* The 32 nibbles of 16 bytes in the GGML order: the low nibbles give
 * bytes 0-15, the high ones bytes 16-31. */
static inline __m256i
nibbles32(const uint8_t *qs)
{
	__m128i raw = _mm_loadu_si128((const __m128i *)qs);

	return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw),
	    _mm256_set1_epi8(15));
}

/* sum_j q_j x_j over 32 signed bytes held in q. */
static inline __m256
dot_s8v32(__m256i q, const float *x)
{
	__m128i l = _mm256_castsi256_si128(q), h = _mm256_extracti128_si256(q,
	    1);

	return dot_i32x32(_mm256_cvtepi8_epi32(l),
	    _mm256_cvtepi8_epi32(_mm_srli_si128(l, 8)),
	    _mm256_cvtepi8_epi32(h),
	    _mm256_cvtepi8_epi32(_mm_srli_si128(h, 8)), x);
}

/* sum_j q_j x_j over one 32-block of int8 values. */
static inline row_acc
dot_i8x32(const int8_t *qs, const float *x)
{
	return dot_s8v32(_mm256_loadu_si256((const __m256i *)qs), x);
}

/* A Q5_0 row of nb blocks against x: each block's 32 weights as the
 * signed bytes q - 16, the fifth bits spread to one byte each: a clear
 * bit turns the nibble's high half on (nibble | 0xf0 = nibble - 16). */
static float
row_q5_0(const blk_q5_0 *b, int nb, const float *x)
{
	const __m256i hi = _mm256_set1_epi8((char)0xf0);
	/* byte i takes byte i / 8 of qh and tests its bit i % 8 */
	const __m256i spread = _mm256_set_epi64x(0x0303030303030303LL,
	    0x0202020202020202LL, 0x0101010101010101LL, 0);
	const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
	__m256 acc = _mm256_setzero_ps();
	__m256i q, hb;
	uint32_t qh;
	int i;

	for (i = 0; i < nb; i++) {
		memcpy(&qh, b[i].qh, sizeof qh);
		q = nibbles32(b[i].qs);
		hb = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), spread);
		hb = _mm256_cmpeq_epi8(_mm256_and_si256(hb, bit), bit);
		q = _mm256_or_si256(q, _mm256_andnot_si256(hb, hi));
		acc = _mm256_fmadd_ps(dot_s8v32(q, x + i * QK),
		    _mm256_set1_ps(h2f(b[i].d)), acc);
	}
	return hsum256(acc);
}

/* A Q4_K row of nb blocks against x, xs the sums of its 32-element
 * blocks: d * sc times each sub-block's dot product, less dmin * mn
 * times its sum. */
static float
row_q4_k(const blk_q4_k *b, int nb, const float *x, const float *xs)
{
	const __m256i m4 = _mm256_set1_epi8(15);
	__m256 acc = _mm256_setzero_ps();
	__m256i raw;
	float s = 0.0f, d, dmin;
	uint8_t sc0, mn0, sc1, mn1;
	int i, p;

	for (i = 0; i < nb; i++, x += QKK, xs += QKK / QK) {
		d = h2f(b[i].d);
		dmin = h2f(b[i].dmin);
		for (p = 0; p < 4; p++) {
			k_scale_min(2 * p, b[i].scales, &sc0, &mn0);
			k_scale_min(2 * p + 1, b[i].scales, &sc1, &mn1);
			raw = _mm256_loadu_si256((const __m256i *)(b[i].qs +
			    32 * p));
			acc = _mm256_fmadd_ps(dot_s8v32(_mm256_and_si256(raw,
			    m4), x + 64 * p), _mm256_set1_ps(d * sc0), acc);
			acc = _mm256_fmadd_ps(dot_s8v32(_mm256_and_si256(
			    _mm256_srli_epi16(raw, 4), m4), x + 64 * p + 32),
			    _mm256_set1_ps(d * sc1), acc);
			s -= dmin * (mn0 * xs[2 * p] + mn1 * xs[2 * p + 1]);
		}
	}
	return s + hsum256(acc);
}

/* sum_j q_j x_j over 16 signed bytes held in q. */
static inline __m256
dot_s8v16(__m128i q, const float *x)
{
	return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
	    _mm_srli_si128(q, 8))), _mm256_loadu_ps(x + 8),
	    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)),
	    _mm256_loadu_ps(x)));
}

/* A Q6_K row of nb blocks against x: per half of 128, the four groups
 * of 32 weights as the signed bytes q - 32, each half group of 16 with
 * its own scale. */
static float
row_q6_k(const blk_q6_k *b, int nb, const float *x)
{
	const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
	const __m256i k32 = _mm256_set1_epi8(32);
	__m256 acc = _mm256_setzero_ps();
	__m256i l0, l1, h, q[4];
	const int8_t *sc;
	float d;
	int i, half, k;

	for (i = 0; i < nb; i++) {
		d = h2f(b[i].d);
		for (half = 0; half < 2; half++, x += 128) {
			l0 = _mm256_loadu_si256((const __m256i *)(b[i].ql +
			    64 * half));
			l1 = _mm256_loadu_si256((const __m256i *)(b[i].ql +
			    64 * half + 32));
			h = _mm256_loadu_si256((const __m256i *)(b[i].qh +
			    32 * half));
			sc = b[i].scales + 8 * half;
			q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
			    _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
			q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
			    _mm256_slli_epi16(_mm256_and_si256(
			    _mm256_srli_epi16(h, 2), m2), 4));
			q[2] = _mm256_or_si256(_mm256_and_si256(
			    _mm256_srli_epi16(l0, 4), m4), _mm256_slli_epi16(
			    _mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
			q[3] = _mm256_or_si256(_mm256_and_si256(
			    _mm256_srli_epi16(l1, 4), m4), _mm256_slli_epi16(
			    _mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
			for (k = 0; k < 4; k++) {
				__m256i v = _mm256_sub_epi8(q[k], k32);

				acc = _mm256_fmadd_ps(dot_s8v16(
				    _mm256_castsi256_si128(v), x + 32 * k),
				    _mm256_set1_ps(d * sc[2 * k]), acc);
				acc = _mm256_fmadd_ps(dot_s8v16(
				    _mm256_extracti128_si256(v, 1), x + 32 * k +
				    16), _mm256_set1_ps(d * sc[2 * k + 1]), acc);
			}
		}
	}
	return hsum256(acc);
}

/* Adds d times a block's dot product to the row: to acc's lanes. */
static inline void
add_block(float d, row_acc dot, row_acc *acc, float *s)
{
	*acc = _mm256_fmadd_ps(dot, _mm256_set1_ps(d), *acc);
}

/* A row's value from its scalar sum and its lanes. */
static inline float
row_value(float s, row_acc acc)
{
	return s + hsum256(acc);
}

/*
 * Where the processor has AVX-512 (checked at run time: the build targets
 * AVX2), Q5_0, Q8_0, Q4_K and Q6_K rows, all of Qwen2.5's and Gemma 3's
 * weights, convert 16 weights an instruction instead of 8, and Q5_0
 * applies its fifth bits through mask registers: about half the
 * instructions of the AVX2 kernels for the same sums.  Each weight still
 * costs a widening, a conversion and a multiply-add against the f32
 * activation; on this AMD EPYC one row at a time is fastest (a second
 * row read in lock-step halved the rate of Q8_0: bench/RESULTS.md).
 */
#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_AVX512_KERNELS 1
#define AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl")))

/* sum_j q_j x_j over 32 signed bytes held in q, 16 lanes at a time. */
static inline AVX512_FN __m512
dot512_s8v32(__m256i q, const float *x)
{
	__m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
	    _mm256_castsi256_si128(q)));
	__m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
	    _mm256_extracti128_si256(q, 1)));

	return _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 16),
	    _mm512_mul_ps(lo, _mm512_loadu_ps(x)));
}

/* The half at p in every lane; p starts a block of at least 8 bytes,
 * whose next three halves are read and dropped, so that the conversion
 * takes its operand straight from memory. */
static inline AVX512_FN __m512
h2f_x16(const uint16_t *p)
{
	return _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_loadl_epi64(
	    (const __m128i *)p)));
}

/* The 16 integers q as floats, times x[0..15]. */
static inline AVX512_FN __m512
i32_mul16(__m512i q, const float *x)
{
	return _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_loadu_ps(x));
}

/* t plus the 16 integers q as floats times x[0..15]. */
static inline AVX512_FN __m512
i32_fma16(__m512i q, const float *x, __m512 t)
{
	return _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_loadu_ps(x), t);
}

/* sum_j q_j x_j over a Q5_0 block's 32 weights q: bit j of qh clear
 * subtracts 16 from weight j. */
static inline AVX512_FN __m512
dot512_q5_0(const blk_q5_0 *b, const float *x)
{
	const __m512i m4 = _mm512_set1_epi32(15), k16 = _mm512_set1_epi32(16);
	__m512i v, lo, hi;
	uint32_t qh;

	memcpy(&qh, b->qh, sizeof qh);
	qh = ~qh;
	v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b->qs));
	lo = _mm512_and_si512(v, m4);
	hi = _mm512_srli_epi32(v, 4);
	lo = _mm512_mask_sub_epi32(lo, (__mmask16)qh, lo, k16);
	hi = _mm512_mask_sub_epi32(hi, (__mmask16)(qh >> 16), hi, k16);
	return i32_fma16(hi, x + 16, i32_mul16(lo, x));
}

/* row_q5_0 with AVX-512: the 16 bytes of nibbles widened to 32 bits
 * straight from memory, each lane's low nibble one weight and its high
 * nibble another, the fifth bits applied through mask registers. */
static AVX512_FN float
row_q5_0_512(const blk_q5_0 *b, int nb, const float *x)
{
	__m512 acc = _mm512_setzero_ps();
	int i = 0;

	/* two blocks an iteration: here the rate follows the count of
	   instructions, and the loop's own are a fifth of a block's */
	for (; i + 2 <= nb; i += 2, x += 2 * QK) {
		acc = _mm512_fmadd_ps(dot512_q5_0(&b[i], x), h2f_x16(&b[i].d),
		    acc);
		acc = _mm512_fmadd_ps(dot512_q5_0(&b[i + 1], x + QK),
		    h2f_x16(&b[i + 1].d), acc);
	}
	if (i < nb)
		acc = _mm512_fmadd_ps(dot512_q5_0(&b[i], x), h2f_x16(&b[i].d),
		    acc);
	return _mm512_reduce_add_ps(acc);
}

/* 16 signed bytes at p, as floats. */
static inline AVX512_FN __m512
s8x16_ps(const void *p)
{
	return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
	    (const __m128i *)p)));
}

/* sum_j q_j x_j over the 32 signed bytes at q. */
static inline AVX512_FN __m512
dot512_q8(const int8_t *q, const float *x)
{
	return _mm512_fmadd_ps(s8x16_ps(q + 16), _mm512_loadu_ps(x + 16),
	    _mm512_mul_ps(s8x16_ps(q), _mm512_loadu_ps(x)));
}

/*
 * A Q8_0 row of nb blocks against x, with AVX-512.  The weights go
 * straight from memory into the sign extension (no 32-byte load and
 * lane extract); one row at a time, as a second row read in lock-step
 * halves the rate here (bench/RESULTS.md).
 */
static AVX512_FN float
row_q8_0_512(const blk_q8_0 *b, int nb, const float *x)
{
	__m512 acc = _mm512_setzero_ps();
	int i;

	for (i = 0; i < nb; i++, x += QK)
		acc = _mm512_fmadd_ps(dot512_q8(b[i].qs, x), h2f_x16(&b[i].d),
		    acc);
	return _mm512_reduce_add_ps(acc);
}

/*
 * The eight 6-bit scales (sc[0..7]) and minima (sc[8..15]) of a Q4_K or
 * Q5_K block as bytes, all at once: k_scale_min's rule on 32-bit words.
 */
static inline void
k_scales8(const uint8_t *scales, uint8_t sc[16])
{
	const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
	uint32_t u[4], mins;

	memcpy(u, scales, 12);
	u[3] = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4);
	mins = u[1] & m6;
	u[1] = (u[2] & m4) | (((u[0] >> 6) & m2) << 4);
	u[2] = mins;
	u[0] &= m6;
	memcpy(sc, u, 16);
}

/* n (8 or 16) bytes at p, unsigned or signed, times f, as floats at y. */
static inline AVX512_FN void
bytes_times(const uint8_t *p, int is_signed, int n, float f, float *y)
{
	__m128i v = _mm_loadu_si128((const __m128i *)p);
	__m512i w = is_signed ? _mm512_cvtepi8_epi32(v) :
	    _mm512_cvtepu8_epi32(v);
	__m512 r = _mm512_mul_ps(_mm512_cvtepi32_ps(w), _mm512_set1_ps(f));

	if (n == 16)
		_mm512_storeu_ps(y, r);
	else
		_mm256_storeu_ps(y, _mm512_castps512_ps256(r));
}

/*
 * row_q4_k with AVX-512: the scales and minima of a block unpacked
 * together (k_scales8) and turned to floats in one instruction each; the
 * nibbles widened straight from memory, 16 at a time.
 */
static AVX512_FN float
row_q4_k_512(const blk_q4_k *b, int nb, const float *x, const float *xs)
{
	const __m512i m4 = _mm512_set1_epi32(15);
	__m512 acc = _mm512_setzero_ps(), t0, t1;
	__m256 accm = _mm256_setzero_ps();
	__m512i v0, v1;
	const float *xp;
	float sc[16];
	uint8_t u[16];
	const uint8_t *q;
	int i, p;

	for (i = 0; i < nb; i++, x += QKK, xs += QKK / QK) {
		k_scales8(b[i].scales, u);
		bytes_times(u, 0, 16, h2f(b[i].d), sc);
		/* the minima, dmin * mn, against the 32-element sums */
		accm = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(
		    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(u +
		    8)))), _mm256_set1_ps(h2f(b[i].dmin))), _mm256_loadu_ps(xs),
		    accm);
		for (p = 0, q = b[i].qs; p < 4; p++, q += 32) {
			v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(
			    (const __m128i *)q));
			v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(
			    (const __m128i *)(q + 16)));
			xp = x + 64 * p;
			/* low nibbles: sub-block 2p; high ones: 2p + 1 */
			t0 = i32_fma16(_mm512_and_si512(v1, m4), xp + 16,
			    i32_mul16(_mm512_and_si512(v0, m4), xp));
			t1 = i32_fma16(_mm512_srli_epi32(v1, 4), xp + 48,
			    i32_mul16(_mm512_srli_epi32(v0, 4), xp + 32));
			acc = _mm512_fmadd_ps(t0, _mm512_set1_ps(sc[2 * p]),
			    acc);
			acc = _mm512_fmadd_ps(t1, _mm512_set1_ps(sc[2 * p + 1]),
			    acc);
		}
	}
	return _mm512_reduce_add_ps(acc) - hsum256(accm);
}

/* acc plus one group of 32 Q6_K weights, the signed bytes v, against x:
 * the first 16 take scale s[0], the others s[1]. */
static inline AVX512_FN __m512
q6_group(__m256i v, const float *x, const float *s, __m512 acc)
{
	acc = _mm512_fmadd_ps(i32_mul16(_mm512_cvtepi8_epi32(
	    _mm256_castsi256_si128(v)), x), _mm512_set1_ps(s[0]), acc);
	return _mm512_fmadd_ps(i32_mul16(_mm512_cvtepi8_epi32(
	    _mm256_extracti128_si256(v, 1)), x + 16), _mm512_set1_ps(s[1]),
	    acc);
}

/*
 * row_q6_k with AVX-512: the weights assembled as signed bytes as the
 * AVX2 kernel does, each group of 32 consumed as soon as it is built,
 * then widened 16 at a time (one scale each), the 16 scales turned to
 * floats once a block.
 */
static AVX512_FN float
row_q6_k_512(const blk_q6_k *b, int nb, const float *x)
{
	const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
	const __m256i k32 = _mm256_set1_epi8(32);
	__m512 acc = _mm512_setzero_ps();
	__m256i l0, l1, h, q;
	const uint8_t *ql, *qh;
	float sc[16], *s;
	int i, half;

	for (i = 0; i < nb; i++) {
		bytes_times((const uint8_t *)b[i].scales, 1, 16, h2f(b[i].d),
		    sc);
		for (half = 0; half < 2; half++, x += 128) {
			ql = b[i].ql + 64 * half;
			qh = b[i].qh + 32 * half;
			s = sc + 8 * half;
			l0 = _mm256_loadu_si256((const __m256i *)ql);
			l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
			h = _mm256_loadu_si256((const __m256i *)qh);
			q = _mm256_or_si256(_mm256_and_si256(l0, m4),
			    _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
			acc = q6_group(_mm256_sub_epi8(q, k32), x, s, acc);
			q = _mm256_or_si256(_mm256_and_si256(l1, m4),
			    _mm256_slli_epi16(_mm256_and_si256(
			    _mm256_srli_epi16(h, 2), m2), 4));
			acc = q6_group(_mm256_sub_epi8(q, k32), x + 32, s + 2,
			    acc);
			q = _mm256_or_si256(_mm256_and_si256(
			    _mm256_srli_epi16(l0, 4), m4), _mm256_slli_epi16(
			    _mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
			acc = q6_group(_mm256_sub_epi8(q, k32), x + 64, s + 4,
			    acc);
			q = _mm256_or_si256(_mm256_and_si256(
			    _mm256_srli_epi16(l1, 4), m4), _mm256_slli_epi16(
			    _mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
			acc = q6_group(_mm256_sub_epi8(q, k32), x + 96, s + 6,
			    acc);
		}
	}
	return _mm512_reduce_add_ps(acc);
}
#endif
#else
/* Without AVX2 every block goes straight into the scalar sum. */
typedef float row_acc;

/* sum_j q_j x_j over one 32-block of 4-bit values packed as ggml does. */
static inline row_acc
dot_nib32(const uint8_t *qs, const float *x)
{
	float t = 0.0f;
	int j;

	for (j = 0; j < 16; j++)
		t += (qs[j] & 15) * x[j] + (qs[j] >> 4) * x[j + 16];
	return t;
}

/* sum_j q_j x_j over one 32-block of int8 values. */
static inline row_acc
dot_i8x32(const int8_t *qs, const float *x)
{
	float t = 0.0f;
	int j;

	for (j = 0; j < QK; j++)
		t += qs[j] * x[j];
	return t;
}

/* Adds d times a block's dot product to the row: to s. */
static inline void
add_block(float d, row_acc dot, row_acc *acc, float *s)
{
	*s += d * dot;
}

/* A row's value from its scalar sum (acc holds nothing here). */
static inline float
row_value(float s, row_acc acc)
{
	return s;
}
#endif

/* Any type quant_dequant handles: up to 256 weights at a time, summed
 * in double (quant.h). */
void
quant_matvec_f32_ref(int wtype, const void *w, int cols, int r0, int r1,
    const float *x, float *y)
{
	const uint8_t *base = w;
	int be = ggml_type_block_elems(wtype), chunk = be == 1 ? 256 : be;
	size_t rb = (size_t)cols / be * ggml_type_block_bytes(wtype);
	float blk[256];
	int r, c, k, e;

	for (r = r0; r < r1; r++) {
		const uint8_t *row = base + (size_t)r * rb;
		double s = 0.0;

		for (c = 0; c < cols; c += e) {
			e = cols - c < chunk ? cols - c : chunk;
			quant_dequant(wtype, row + (size_t)(c / be) *
			    ggml_type_block_bytes(wtype), blk, (size_t)e);
			for (k = 0; k < e; k++)
				s += blk[k] * x[c + k];
		}
		y[r] = (float)s;
	}
}

#ifdef HAVE_AVX512_KERNELS
/* -1 until the first product asks the processor; quant_use_avx512 sets
 * it. */
static int use_avx512 = -1;

/* 1 when the AVX-512 kernels run. */
static int
avx512_on(void)
{
	int v = __atomic_load_n(&use_avx512, __ATOMIC_RELAXED);

	if (v < 0) {
		__builtin_cpu_init();
		v = __builtin_cpu_supports("avx512f") &&
		    __builtin_cpu_supports("avx512bw") &&
		    __builtin_cpu_supports("avx512vl");
		__atomic_store_n(&use_avx512, v, __ATOMIC_RELAXED);
	}
	return v;
}
#endif

/* Allow (on, where the processor has it) or forbid AVX-512; returns
 * whether it is used. */
int
quant_use_avx512(int on)
{
#ifdef HAVE_AVX512_KERNELS
	__atomic_store_n(&use_avx512, -1, __ATOMIC_RELAXED);
	if (on && avx512_on())
		return 1;
	__atomic_store_n(&use_avx512, 0, __ATOMIC_RELAXED);
#endif
	(void)on;
	return 0;
}

/* y[r] = W[r] . x for r in [r0, r1), x kept in f32. */
void
quant_matvec_f32(int wtype, const void *w, int cols, int r0, int r1,
    const float *x, float *y)
{
	const uint8_t *row;
	const blk_q4_0 *b40;
	const blk_q4_1 *b41;
	const blk_q8_0 *b80;
	size_t rb;
	int nb = cols / QK, r, b;
	float xs[256], s, d;
	row_acc acc;

	if (r1 <= r0)
		return;
#ifdef __AVX2__
	if (cols % QKK == 0 && nb <= 256 && (wtype == GGML_Q4_K ||
	    wtype == GGML_Q6_K)) {
		rb = (size_t)cols / QKK * ggml_type_block_bytes(wtype);
		if (wtype == GGML_Q4_K)
			block_sums(x, nb, xs);
		for (r = r0; r < r1; r++) {
			row = (const uint8_t *)w + (size_t)r * rb;
#ifdef HAVE_AVX512_KERNELS
			if (avx512_on()) {
				y[r] = wtype == GGML_Q4_K ? row_q4_k_512(
				    (const blk_q4_k *)row, cols / QKK, x, xs) :
				    row_q6_k_512((const blk_q6_k *)row,
				    cols / QKK, x);
				continue;
			}
#endif
			y[r] = wtype == GGML_Q4_K ? row_q4_k((const blk_q4_k *)
			    row, cols / QKK, x, xs) : row_q6_k((const blk_q6_k *)
			    row, cols / QKK, x);
		}
		return;
	}
	if (wtype == GGML_Q5_0 && cols % QK == 0) {
		rb = (size_t)nb * sizeof(blk_q5_0);
		for (r = r0; r < r1; r++) {
			row = (const uint8_t *)w + (size_t)r * rb;
#ifdef HAVE_AVX512_KERNELS
			if (avx512_on()) {
				y[r] = row_q5_0_512((const blk_q5_0 *)row, nb,
				    x);
				continue;
			}
#endif
			y[r] = row_q5_0((const blk_q5_0 *)row, nb, x);
		}
		return;
	}
#ifdef HAVE_AVX512_KERNELS
	if (wtype == GGML_Q8_0 && cols % QK == 0 && avx512_on()) {
		rb = (size_t)nb * sizeof(blk_q8_0);
		for (r = r0; r < r1; r++)
			y[r] = row_q8_0_512((const blk_q8_0 *)((const uint8_t *)
			    w + (size_t)r * rb), nb, x);
		return;
	}
#endif
#endif
	/* the block sums live on the stack, hence the width limit */
	if ((wtype != GGML_Q4_0 && wtype != GGML_Q4_1 && wtype != GGML_Q8_0) ||
	    nb > 256 || cols % QK != 0) {
		quant_matvec_f32_ref(wtype, w, cols, r0, r1, x, y);
		return;
	}
	if (wtype == GGML_Q4_1 || wtype == GGML_Q4_0)
		block_sums(x, nb, xs);
	rb = (size_t)nb * ggml_type_block_bytes(wtype);

	for (r = r0; r < r1; r++) {
		row = (const uint8_t *)w + (size_t)r * rb;
		s = 0.0f;
		memset(&acc, 0, sizeof acc);
		switch (wtype) {
		case GGML_Q4_1:
			b41 = (const blk_q4_1 *)row;
			for (b = 0; b < nb; b++) {
				add_block(h2f(b41[b].d), dot_nib32(b41[b].qs,
				    x + b * QK), &acc, &s);
				s += h2f(b41[b].m) * xs[b];
			}
			break;
		case GGML_Q4_0:
			b40 = (const blk_q4_0 *)row;
			for (b = 0; b < nb; b++) {
				d = h2f(b40[b].d);
				add_block(d, dot_nib32(b40[b].qs, x + b * QK),
				    &acc, &s);
				s -= 8.0f * d * xs[b];
			}
			break;
		case GGML_Q8_0:
			b80 = (const blk_q8_0 *)row;
			for (b = 0; b < nb; b++)
				add_block(h2f(b80[b].d), dot_i8x32(b80[b].qs,
				    x + b * QK), &acc, &s);
			break;
		}
		y[r] = row_value(s, acc);
	}
}
