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
 * For the matrix-vector products the activation is quantised once per call
 * to blocks of 32 int8 with a float scale d and s = d * sum(q), so that
 * the integer part of every block dot product is exact and the Q4_1 min
 * term costs one multiply per block.
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

/* Quantised activation block (private to this file). */
typedef struct {
	float	d;		/* scale */
	float	s;		/* d * sum(qs) */
	int8_t	qs[QK];
} xblk;

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

/* Dequantises nb Q4_0 blocks. */
static void
dq_q4_0(const blk_q4_0 *b, float *y, size_t nb)
{
	size_t i;
	int j;
	float d;

	for (i = 0; i < nb; i++, y += QK) {
		d = h2f(b[i].d);
		for (j = 0; j < 16; j++) {
			y[j] = d * ((b[i].qs[j] & 15) - 8);
			y[j + 16] = d * ((b[i].qs[j] >> 4) - 8);
		}
	}
}

/* Dequantises nb Q4_1 blocks. */
static void
dq_q4_1(const blk_q4_1 *b, float *y, size_t nb)
{
	size_t i;
	int j;
	float d, m;

	for (i = 0; i < nb; i++, y += QK) {
		d = h2f(b[i].d);
		m = h2f(b[i].m);
		for (j = 0; j < 16; j++) {
			y[j] = d * (b[i].qs[j] & 15) + m;
			y[j + 16] = d * (b[i].qs[j] >> 4) + m;
		}
	}
}

/* Dequantises nb Q5_0 blocks. */
static void
dq_q5_0(const blk_q5_0 *b, float *y, size_t nb)
{
	size_t i;
	uint32_t qh;
	int j;
	float d;

	for (i = 0; i < nb; i++, y += QK) {
		d = h2f(b[i].d);
		memcpy(&qh, b[i].qh, 4);
		for (j = 0; j < 16; j++) {
			y[j] = d * ((int)((b[i].qs[j] & 15) |
			    ((qh >> j & 1) << 4)) - 16);
			y[j + 16] = d * ((int)((b[i].qs[j] >> 4) |
			    ((qh >> (j + 16) & 1) << 4)) - 16);
		}
	}
}

/* Dequantises nb Q5_1 blocks. */
static void
dq_q5_1(const blk_q5_1 *b, float *y, size_t nb)
{
	size_t i;
	uint32_t qh;
	int j;
	float d, m;

	for (i = 0; i < nb; i++, y += QK) {
		d = h2f(b[i].d);
		m = h2f(b[i].m);
		memcpy(&qh, b[i].qh, 4);
		for (j = 0; j < 16; j++) {
			y[j] = d * ((b[i].qs[j] & 15) | ((qh >> j & 1) << 4)) +
			    m;
			y[j + 16] = d * ((b[i].qs[j] >> 4) |
			    ((qh >> (j + 16) & 1) << 4)) + m;
		}
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

/* Dequantises nb Q4_K blocks. */
static void
dq_q4_k(const blk_q4_k *b, float *y, size_t nb)
{
	const uint8_t *q;
	size_t i;
	int p, l;
	float d, dmin, d0, m0, d1, m1;

	for (i = 0; i < nb; i++) {
		d = h2f(b[i].d);
		dmin = h2f(b[i].dmin);
		q = b[i].qs;
		for (p = 0; p < 4; p++, q += 32, y += 64) {
			k_pair(b[i].scales, p, d, dmin, &d0, &m0, &d1, &m1);
			for (l = 0; l < 32; l++) {
				y[l] = d0 * (q[l] & 15) - m0;
				y[l + 32] = d1 * (q[l] >> 4) - m1;
			}
		}
	}
}

/* Dequantises nb Q5_K blocks. */
static void
dq_q5_k(const blk_q5_k *b, float *y, size_t nb)
{
	const uint8_t *q;
	size_t i;
	int p, l, h0, h1;
	float d, dmin, d0, m0, d1, m1;

	for (i = 0; i < nb; i++) {
		d = h2f(b[i].d);
		dmin = h2f(b[i].dmin);
		q = b[i].qs;
		for (p = 0; p < 4; p++, q += 32, y += 64) {
			k_pair(b[i].scales, p, d, dmin, &d0, &m0, &d1, &m1);
			for (l = 0; l < 32; l++) {
				h0 = (b[i].qh[l] >> (2 * p)) & 1;
				h1 = (b[i].qh[l] >> (2 * p + 1)) & 1;
				y[l] = d0 * ((q[l] & 15) | h0 << 4) - m0;
				y[l + 32] = d1 * ((q[l] >> 4) | h1 << 4) - m1;
			}
		}
	}
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

/* --- activation quantisation --------------------------------------------- */

/* Whether the activation is quantised to xblk (else kept as f32). */
static int
x_is_quantised(int wtype)
{
	return wtype == GGML_Q4_0 || wtype == GGML_Q4_1 || wtype == GGML_Q8_0;
}

/* Whether quant_matvec handles weights of wtype. */
int
quant_matvec_supported(int wtype)
{
	return wtype == GGML_F32 || wtype == GGML_F16 || x_is_quantised(wtype);
}

/* Scratch bytes quant_prepare_x needs for cols activations. */
size_t
quant_scratch_bytes(int wtype, int cols)
{
	if (cols <= 0)
		return 0;
	if (x_is_quantised(wtype))
		return (size_t)(cols + QK - 1) / QK * sizeof(xblk);
	return (size_t)cols * sizeof(float);
}

#ifdef __AVX2__
/* quantise_block with AVX2; the same arithmetic, so the same result. */
static void
quantise_block_avx2(const float *x, xblk *b)
{
	__m256 v[4], amax = _mm256_setzero_ps(), id;
	__m256 sign = _mm256_set1_ps(-0.0f);
	__m256i q[4], lim = _mm256_set1_epi32(127), sum;
	__m128 m;
	float a;
	int k;

	for (k = 0; k < 4; k++) {
		v[k] = _mm256_loadu_ps(x + 8 * k);
		amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
	}
	m = _mm_max_ps(_mm256_castps256_ps128(amax),
	    _mm256_extractf128_ps(amax, 1));
	m = _mm_max_ps(m, _mm_movehl_ps(m, m));
	m = _mm_max_ss(m, _mm_movehdup_ps(m));
	a = _mm_cvtss_f32(m);
	b->d = a / 127.0f;
	id = _mm256_set1_ps(a > 0.0f ? 127.0f / a : 0.0f);
	sum = _mm256_setzero_si256();
	for (k = 0; k < 4; k++) {
		q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], id));
		q[k] = _mm256_max_epi32(_mm256_min_epi32(q[k], lim),
		    _mm256_sub_epi32(_mm256_setzero_si256(), lim));
		sum = _mm256_add_epi32(sum, q[k]);
	}
	/* The packs interleave 128-bit lanes; the permute undoes it. */
	q[0] = _mm256_packs_epi32(q[0], q[1]);
	q[2] = _mm256_packs_epi32(q[2], q[3]);
	q[0] = _mm256_packs_epi16(q[0], q[2]);
	q[0] = _mm256_permutevar8x32_epi32(q[0],
	    _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
	_mm256_storeu_si256((__m256i *)b->qs, q[0]);
	sum = _mm256_hadd_epi32(sum, sum);
	sum = _mm256_hadd_epi32(sum, sum);
	b->s = b->d * (float)(_mm256_extract_epi32(sum, 0) +
	    _mm256_extract_epi32(sum, 4));
}
#endif

/* Quantises one block of 32 floats to int8 with a float scale. */
static void
quantise_block(const float *x, xblk *b)
{
	float amax = 0.0f, id;
	int j, q, sum = 0;

	for (j = 0; j < QK; j++)
		if (fabsf(x[j]) > amax)
			amax = fabsf(x[j]);
	b->d = amax / 127.0f;
	id = amax > 0.0f ? 127.0f / amax : 0.0f;
	for (j = 0; j < QK; j++) {
		q = (int)lrintf(x[j] * id);
		/* Rounding of x*id can reach 127.5 -> 128 only by error. */
		q = q > 127 ? 127 : q < -127 ? -127 : q;
		b->qs[j] = (int8_t)q;
		sum += q;
	}
	b->s = b->d * (float)sum;
}

/* Portable quant_prepare_x, the reference for the vector path. */
void
quant_prepare_x_scalar(int wtype, const float *x, int cols, void *scratch)
{
	xblk *b = scratch;
	int i;

	if (!x_is_quantised(wtype)) {
		memcpy(scratch, x, (size_t)cols * sizeof(float));
		return;
	}
	for (i = 0; i < cols / QK; i++)
		quantise_block(x + (size_t)i * QK, &b[i]);
}

/* Converts x into the activation format for weights of wtype. */
void
quant_prepare_x(int wtype, const float *x, int cols, void *scratch)
{
#ifdef __AVX2__
	xblk *b = scratch;
	int i;

	if (x_is_quantised(wtype)) {
		for (i = 0; i < cols / QK; i++)
			quantise_block_avx2(x + (size_t)i * QK, &b[i]);
		return;
	}
#endif
	quant_prepare_x_scalar(wtype, x, cols, scratch);
}

/* --- scalar dot products ------------------------------------------------- */

/* Scalar Q4_0 row . x. */
static float
dot_q4_0_scalar(const blk_q4_0 *w, const xblk *x, int nb)
{
	float sum = 0.0f;
	int i, j, acc;

	for (i = 0; i < nb; i++) {
		acc = 0;
		for (j = 0; j < 16; j++)
			acc += (w[i].qs[j] & 15) * x[i].qs[j] +
			    (w[i].qs[j] >> 4) * x[i].qs[j + 16];
		/* sum((q - 8) qx) = sum(q qx) - 8 sum(qx), and d sum(qx) = s */
		sum += h2f(w[i].d) * (x[i].d * (float)acc - 8.0f * x[i].s);
	}
	return sum;
}

/* Scalar Q4_1 row . x. */
static float
dot_q4_1_scalar(const blk_q4_1 *w, const xblk *x, int nb)
{
	float sum = 0.0f;
	int i, j, acc;

	for (i = 0; i < nb; i++) {
		acc = 0;
		for (j = 0; j < 16; j++)
			acc += (w[i].qs[j] & 15) * x[i].qs[j] +
			    (w[i].qs[j] >> 4) * x[i].qs[j + 16];
		sum += h2f(w[i].d) * x[i].d * (float)acc +
		    h2f(w[i].m) * x[i].s;
	}
	return sum;
}

/* Scalar Q8_0 row . x. */
static float
dot_q8_0_scalar(const blk_q8_0 *w, const xblk *x, int nb)
{
	float sum = 0.0f;
	int i, j, acc;

	for (i = 0; i < nb; i++) {
		acc = 0;
		for (j = 0; j < QK; j++)
			acc += w[i].qs[j] * x[i].qs[j];
		sum += h2f(w[i].d) * x[i].d * (float)acc;
	}
	return sum;
}

/* Scalar F16 row . x. */
static float
dot_f16_scalar(const uint16_t *w, const float *x, int n)
{
	float sum = 0.0f;
	int i;

	for (i = 0; i < n; i++)
		sum += h2f(w[i]) * x[i];
	return sum;
}

/* Scalar F32 row . x. */
static float
dot_f32_scalar(const float *w, const float *x, int n)
{
	float sum = 0.0f;
	int i;

	for (i = 0; i < n; i++)
		sum += w[i] * x[i];
	return sum;
}

/* Portable matrix-vector product; the reference for the vector paths. */
void
quant_matvec_scalar(int wtype, const void *w, int cols, int r0, int r1,
    const void *xq, float *y)
{
	size_t rb = ggml_type_block_bytes(wtype) * (size_t)cols /
	    (size_t)(ggml_type_block_elems(wtype) ? ggml_type_block_elems(wtype)
	    : 1);
	const uint8_t *row;
	int r, nb = cols / QK;

	for (r = r0; r < r1; r++) {
		row = (const uint8_t *)w + (size_t)r * rb;
		switch (wtype) {
		case GGML_F32:
			y[r] = dot_f32_scalar((const float *)row, xq, cols);
			break;
		case GGML_F16:
			y[r] = dot_f16_scalar((const uint16_t *)row, xq, cols);
			break;
		case GGML_Q4_0:
			y[r] = dot_q4_0_scalar((const blk_q4_0 *)row, xq, nb);
			break;
		case GGML_Q4_1:
			y[r] = dot_q4_1_scalar((const blk_q4_1 *)row, xq, nb);
			break;
		case GGML_Q8_0:
			y[r] = dot_q8_0_scalar((const blk_q8_0 *)row, xq, nb);
			break;
		default:
			y[r] = NAN;
		}
	}
}

/* --- AVX2 dot products --------------------------------------------------- */

#ifdef __AVX2__

/*
 * The 4-bit and 8-bit kernels work on four rows at a time, so that each
 * activation block is loaded once for four weight blocks and the four
 * dependency chains overlap.  Per block and row the integer dot product is
 * exact (maddubs pairs stay below 2^15), then one FMA scales it.  Each row
 * keeps two accumulators: eight lanes of scaled block sums, and a 128-bit
 * one whose lane 1 collects the per-block offset term (Q4_1: m * s_x,
 * Q4_0: d * s_x).
 */

#define MV_ROWS	4
/* Prefetch distance in groups of rows; on the EPYC target 2 beat 1, 4, 8. */
#ifndef MV_PF
#define MV_PF	2
#endif

/*
 * Four interleaved row streams defeat the hardware prefetcher on matrices
 * that do not fit in the caches, so the group of rows MV_PF groups ahead
 * is fetched explicitly, spread over the nb steps of the current group:
 * step i covers the bytes [i * step, (i + 1) * step) of that group.
 * Prefetches are hints and never fault, even past the end of the matrix.
 */
static inline void
prefetch_group(const uint8_t *ahead, int i, size_t step)
{
	const uint8_t *p = ahead + (size_t)i * step;
	size_t o;

	for (o = 0; o < step; o += 64)
		_mm_prefetch((const char *)p + o, _MM_HINT_T0);
}

/* Sum of the eight lanes. */
static inline float
hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v),
	    _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* Horizontal sums of four vectors, as the four lanes of one. */
static inline __m128
hsum8x4(__m256 a, __m256 b, __m256 c, __m256 d)
{
	__m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
	__m256 s = _mm256_hadd_ps(ab, cd);

	return _mm_add_ps(_mm256_castps256_ps128(s),
	    _mm256_extractf128_ps(s, 1));
}

/* u8 x i8 products of 32 lanes summed to eight int32, as floats. */
static inline __m256
dot_u8i8(__m256i u, __m256i s)
{
	__m256i p = _mm256_maddubs_epi16(u, s);

	return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

/* The 32 nibbles of a 4-bit block (16 bytes at qs) as bytes, in order. */
static inline __m256i
unpack_nibbles(const uint8_t *qs)
{
	__m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(
	    (const __m128i *)qs));

	/* The upper 128 bits, elements 16..31, are the high nibbles. */
	v = _mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0));
	return _mm256_and_si256(v, _mm256_set1_epi8(15));
}

/* Activation scale and sum of a block as lanes 0 and 1. */
static inline __m128
x_ds(const xblk *x)
{
	return _mm_castpd_ps(_mm_load_sd((const double *)(const void *)
	    &x->d));
}

/*
 * One block of one row of a 4-bit matrix: wb points at the block, of the
 * Q4_1 layout (half d, m, qs) when q41, else Q4_0 (half d, qs).
 */
static inline __attribute__((always_inline)) void
q4_step(const uint8_t *wb, int q41, __m256i xq, __m128 xds, __m256 *acc,
    __m128 *accm)
{
	__m128 sc;

	if (q41)
		sc = _mm_cvtph_ps(_mm_loadu_si32(wb));
	else
		sc = _mm_moveldup_ps(_mm_cvtph_ps(_mm_loadu_si16(wb)));
	/* [d * d_x, (m or d) * s_x, 0, 0] */
	sc = _mm_mul_ps(sc, xds);
	*acc = _mm256_fmadd_ps(dot_u8i8(unpack_nibbles(wb + (q41 ? 4 : 2)),
	    xq), _mm256_broadcastss_ps(sc), *acc);
	*accm = _mm_add_ps(*accm, sc);
}

/* Final value of a 4-bit row from its two accumulators' sums. */
static inline float
q4_finish(int q41, float s, __m128 accm)
{
	float m = _mm_cvtss_f32(_mm_movehdup_ps(accm));

	return q41 ? s + m : s - 8.0f * m;
}

/* Rows [r0, r1) of a Q4_0 (q41 0) or Q4_1 (q41 1) matrix times x. */
static inline __attribute__((always_inline)) void
mv_q4(int q41, const uint8_t *w, int nb, int r0, int r1, const xblk *x,
    float *y)
{
	size_t bs = q41 ? sizeof(blk_q4_1) : sizeof(blk_q4_0);
	size_t rb = (size_t)nb * bs;
	const uint8_t *p0, *p1, *p2, *p3;
	__m256 a0, a1, a2, a3;
	__m128 m0, m1, m2, m3, xds, s;
	__m256i xq;
	int r = r0, i;

	for (; r + MV_ROWS <= r1; r += MV_ROWS) {
		p0 = w + (size_t)r * rb;
		p1 = p0 + rb;
		p2 = p1 + rb;
		p3 = p2 + rb;
		a0 = a1 = a2 = a3 = _mm256_setzero_ps();
		m0 = m1 = m2 = m3 = _mm_setzero_ps();
		for (i = 0; i < nb; i++) {
			prefetch_group(p0 + MV_PF * MV_ROWS * rb, i,
			    MV_ROWS * bs);
			xq = _mm256_loadu_si256((const __m256i *)x[i].qs);
			xds = x_ds(&x[i]);
			q4_step(p0 + i * bs, q41, xq, xds, &a0, &m0);
			q4_step(p1 + i * bs, q41, xq, xds, &a1, &m1);
			q4_step(p2 + i * bs, q41, xq, xds, &a2, &m2);
			q4_step(p3 + i * bs, q41, xq, xds, &a3, &m3);
		}
		s = hsum8x4(a0, a1, a2, a3);
		y[r] = q4_finish(q41, _mm_cvtss_f32(s), m0);
		y[r + 1] = q4_finish(q41, _mm_cvtss_f32(_mm_shuffle_ps(s, s,
		    1)), m1);
		y[r + 2] = q4_finish(q41, _mm_cvtss_f32(_mm_shuffle_ps(s, s,
		    2)), m2);
		y[r + 3] = q4_finish(q41, _mm_cvtss_f32(_mm_shuffle_ps(s, s,
		    3)), m3);
	}
	for (; r < r1; r++) {
		p0 = w + (size_t)r * rb;
		a0 = _mm256_setzero_ps();
		m0 = _mm_setzero_ps();
		for (i = 0; i < nb; i++)
			q4_step(p0 + i * bs, q41, _mm256_loadu_si256(
			    (const __m256i *)x[i].qs), x_ds(&x[i]), &a0, &m0);
		y[r] = q4_finish(q41, hsum8(a0), m0);
	}
}

/* One Q8_0 block of one row. */
static inline __attribute__((always_inline)) void
q8_step(const blk_q8_0 *b, __m256i xq, __m128 xd, __m256 *acc)
{
	__m256i a = _mm256_loadu_si256((const __m256i *)b->qs);
	__m128 sc = _mm_mul_ss(_mm_cvtph_ps(_mm_loadu_si16(&b->d)), xd);

	/* maddubs wants u8 x i8: move the sign of w onto x. */
	*acc = _mm256_fmadd_ps(dot_u8i8(_mm256_sign_epi8(a, a),
	    _mm256_sign_epi8(xq, a)), _mm256_broadcastss_ps(sc), *acc);
}

/* Rows [r0, r1) of a Q8_0 matrix times x. */
static void
mv_q8_0(const uint8_t *w, int nb, int r0, int r1, const xblk *x, float *y)
{
	size_t rb = (size_t)nb * sizeof(blk_q8_0);
	const blk_q8_0 *p0, *p1, *p2, *p3;
	__m256 a0, a1, a2, a3;
	__m128 xd;
	__m256i xq;
	int r = r0, i;

	for (; r + MV_ROWS <= r1; r += MV_ROWS) {
		p0 = (const blk_q8_0 *)(w + (size_t)r * rb);
		p1 = p0 + nb;
		p2 = p1 + nb;
		p3 = p2 + nb;
		a0 = a1 = a2 = a3 = _mm256_setzero_ps();
		for (i = 0; i < nb; i++) {
			prefetch_group((const uint8_t *)p0 + MV_PF * MV_ROWS *
			    rb, i, MV_ROWS * sizeof(blk_q8_0));
			xq = _mm256_loadu_si256((const __m256i *)x[i].qs);
			xd = _mm_set_ss(x[i].d);
			q8_step(&p0[i], xq, xd, &a0);
			q8_step(&p1[i], xq, xd, &a1);
			q8_step(&p2[i], xq, xd, &a2);
			q8_step(&p3[i], xq, xd, &a3);
		}
		_mm_storeu_ps(y + r, hsum8x4(a0, a1, a2, a3));
	}
	for (; r < r1; r++) {
		p0 = (const blk_q8_0 *)(w + (size_t)r * rb);
		a0 = _mm256_setzero_ps();
		for (i = 0; i < nb; i++)
			q8_step(&p0[i], _mm256_loadu_si256((const __m256i *)
			    x[i].qs), _mm_set_ss(x[i].d), &a0);
		y[r] = hsum8(a0);
	}
}

/* AVX2 F32 row . x. */
static float
dot_f32_avx2(const float *w, const float *x, int n)
{
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	float sum;
	int i = 0;

	for (; i + 16 <= n; i += 16) {
		acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i),
		    _mm256_loadu_ps(x + i), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8),
		    _mm256_loadu_ps(x + i + 8), acc1);
	}
	for (; i + 8 <= n; i += 8)
		acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i),
		    _mm256_loadu_ps(x + i), acc0);
	sum = hsum8(_mm256_add_ps(acc0, acc1));
	for (; i < n; i++)
		sum += w[i] * x[i];
	return sum;
}

/* AVX2 F16 row . x. */
static float
dot_f16_avx2(const uint16_t *w, const float *x, int n)
{
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	float sum;
	int i = 0;

	for (; i + 16 <= n; i += 16) {
		acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(
		    (const __m128i *)(w + i))), _mm256_loadu_ps(x + i), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(
		    (const __m128i *)(w + i + 8))), _mm256_loadu_ps(x + i + 8),
		    acc1);
	}
	for (; i + 8 <= n; i += 8)
		acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(
		    (const __m128i *)(w + i))), _mm256_loadu_ps(x + i), acc0);
	sum = hsum8(_mm256_add_ps(acc0, acc1));
	for (; i < n; i++)
		sum += h2f(w[i]) * x[i];
	return sum;
}

#endif /* __AVX2__ */

/* y[r] = W[r] . x for r in [r0, r1), x from quant_prepare_x. */
void
quant_matvec(int wtype, const void *w, int cols, int r0, int r1,
    const void *xq, float *y)
{
#ifdef __AVX2__
	const uint8_t *base = w;
	int r, nb = cols / QK;

	switch (wtype) {
	case GGML_Q4_1:
		mv_q4(1, base, nb, r0, r1, xq, y);
		return;
	case GGML_Q4_0:
		mv_q4(0, base, nb, r0, r1, xq, y);
		return;
	case GGML_Q8_0:
		mv_q8_0(base, nb, r0, r1, xq, y);
		return;
	case GGML_F32:
		for (r = r0; r < r1; r++)
			y[r] = dot_f32_avx2((const float *)(base +
			    (size_t)r * cols * sizeof(float)), xq, cols);
		return;
	case GGML_F16:
		for (r = r0; r < r1; r++)
			y[r] = dot_f16_avx2((const uint16_t *)(base +
			    (size_t)r * cols * sizeof(uint16_t)), xq, cols);
		return;
	}
#endif
	quant_matvec_scalar(wtype, w, cols, r0, r1, xq, y);
}

// --- matrix-vector products with f32 activations ----------------------------
/*
 * The decode path uses these: the activation stays f32 and each weight is
 * expanded in registers, so the result equals the f32 GEMM of the prefill
 * up to summation order.  On a 2-core CPU a decode step is bound by
 * reading the weights, so the exact product costs about what the 8-bit
 * one does, and greedy decoding then follows the exact model rather than
 * the noise of 8-bit activations.
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
static inline float
hsum256(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v),
	    _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

/* sum_j q_j x_j over one 32-block of 4-bit values packed as ggml does. */
static inline __m256
dot_nib32(const uint8_t *qs, const float *x)
{
	const __m128i mask = _mm_set1_epi8(15);
	__m128i raw = _mm_loadu_si128((const __m128i *)qs);
	__m128i lo = _mm_and_si128(raw, mask);
	__m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
	__m256 acc;

	acc = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
	    _mm256_loadu_ps(x));
	acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
	    _mm_srli_si128(lo, 8))), _mm256_loadu_ps(x + 8), acc);
	acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
	    _mm256_loadu_ps(x + 16), acc);
	acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
	    _mm_srli_si128(hi, 8))), _mm256_loadu_ps(x + 24), acc);
	return acc;
}

/* sum_j q_j x_j over one 32-block of int8 values. */
static inline __m256
dot_i8x32(const int8_t *qs, const float *x)
{
	__m256i a = _mm256_loadu_si256((const __m256i *)qs);
	__m128i l = _mm256_castsi256_si128(a), h = _mm256_extracti128_si256(a,
	    1);
	__m256 acc;

	acc = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(l)),
	    _mm256_loadu_ps(x));
	acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
	    _mm_srli_si128(l, 8))), _mm256_loadu_ps(x + 8), acc);
	acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h)),
	    _mm256_loadu_ps(x + 16), acc);
	acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
	    _mm_srli_si128(h, 8))), _mm256_loadu_ps(x + 24), acc);
	return acc;
}
#endif

/* Any type quant_dequant handles: up to 256 weights at a time. */
static void
matvec_f32_generic(int wtype, const uint8_t *base, int cols, int r0, int r1,
    const float *x, float *y)
{
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

void
quant_matvec_f32(int wtype, const void *w, int cols, int r0, int r1,
    const float *x, float *y)
{
	const uint8_t *base = w;
	int nb = cols / QK, r, b;
#ifndef __AVX2__
	int j;
#endif
	float xs[256];

	if (r1 <= r0)
		return;
	/* the block sums live on the stack, hence the width limit */
	if ((wtype != GGML_Q4_0 && wtype != GGML_Q4_1 && wtype != GGML_Q8_0) ||
	    nb > 256 || cols % QK != 0) {
		matvec_f32_generic(wtype, base, cols, r0, r1, x, y);
		return;
	}
	if (wtype == GGML_Q4_1 || wtype == GGML_Q4_0)
		block_sums(x, nb, xs);

	for (r = r0; r < r1; r++) {
		float s = 0.0f;
#ifdef __AVX2__
		__m256 acc = _mm256_setzero_ps();
#endif

		switch (wtype) {
		case GGML_Q4_1: {
			const blk_q4_1 *bl = (const blk_q4_1 *)(base +
			    (size_t)r * nb * sizeof(blk_q4_1));

			for (b = 0; b < nb; b++) {
#ifdef __AVX2__
				acc = _mm256_fmadd_ps(dot_nib32(bl[b].qs,
				    x + b * QK), _mm256_set1_ps(
				    h2f(bl[b].d)), acc);
#else
				float t = 0.0f;

				for (j = 0; j < 16; j++)
					t += (bl[b].qs[j] & 15) * x[b * QK + j] +
					    (bl[b].qs[j] >> 4) *
					    x[b * QK + j + 16];
				s += h2f(bl[b].d) * t;
#endif
				s += h2f(bl[b].m) * xs[b];
			}
			break;
		}
		case GGML_Q4_0: {
			const blk_q4_0 *bl = (const blk_q4_0 *)(base +
			    (size_t)r * nb * sizeof(blk_q4_0));

			for (b = 0; b < nb; b++) {
				float d = h2f(bl[b].d);
#ifdef __AVX2__
				acc = _mm256_fmadd_ps(dot_nib32(bl[b].qs,
				    x + b * QK), _mm256_set1_ps(d), acc);
#else
				float t = 0.0f;

				for (j = 0; j < 16; j++)
					t += (bl[b].qs[j] & 15) * x[b * QK + j] +
					    (bl[b].qs[j] >> 4) *
					    x[b * QK + j + 16];
				s += d * t;
#endif
				s -= 8.0f * d * xs[b];
			}
			break;
		}
		case GGML_Q8_0: {
			const blk_q8_0 *bl = (const blk_q8_0 *)(base +
			    (size_t)r * nb * sizeof(blk_q8_0));

			for (b = 0; b < nb; b++) {
#ifdef __AVX2__
				acc = _mm256_fmadd_ps(dot_i8x32(bl[b].qs,
				    x + b * QK), _mm256_set1_ps(
				    h2f(bl[b].d)), acc);
#else
				float t = 0.0f;

				for (j = 0; j < QK; j++)
					t += bl[b].qs[j] * x[b * QK + j];
				s += h2f(bl[b].d) * t;
#endif
			}
			break;
		}
		}
#ifdef __AVX2__
		s += hsum256(acc);
#endif
		y[r] = s;
	}
}
