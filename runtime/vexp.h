/*
 * vexp.h - exponentials for softmax rows, eight lanes at a time, and the
 * dot product that feeds them.
 * SPDX-License-Identifier: MIT
 *
 * exp(x) = 2^n * e^r with n = round(x / ln 2) and |r| <= ln 2 / 2; e^r by
 * the degree-6 minimax polynomial of the Cephes library's expf, within
 * 2 ulp of expf over the softmax range.  Softmax rows are the largest
 * exp workload of both the prefill and the decode attention.
 */
#ifndef KVX_VEXP_H
#define KVX_VEXP_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

/* Dot product with eight independent partial sums, so that it vectorises. */
static inline float
vdot(const float *a, const float *b, int d)
{
	float p[8] = { 0 }, s;
	int i, u;

	for (i = 0; i + 8 <= d; i += 8)
		for (u = 0; u < 8; u++)
			p[u] += a[i + u] * b[i + u];
	s = ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]));
	for (; i < d; i++)
		s += a[i] * b[i];
	return s;
}

/* One lane of the same arithmetic, for row tails that must match the
 * vector lanes. */
static inline float
vexp1(float x)
{
	float n, r, p;
	int32_t e;

	x = x < -87.3365478515625f ? -87.3365478515625f :
	    (x > 88.3762626647949f ? 88.3762626647949f : x);
	n = nearbyintf(x * 1.44269504088896341f);
	r = x - n * 0.693359375f;
	r = r + n * 2.12194440e-4f;
	p = 1.9875691500e-4f;
	p = p * r + 1.3981999507e-3f;
	p = p * r + 8.3334519073e-3f;
	p = p * r + 4.1665795894e-2f;
	p = p * r + 1.6666665459e-1f;
	p = p * r + 5.0000001201e-1f;
	p = p * r * r + r + 1.0f;
	e = ((int32_t)n + 127) << 23;
	memcpy(&n, &e, sizeof n);
	return p * n;
}

#ifdef __AVX2__

static inline __m256
vexp256(__m256 x)
{
	const __m256 hi = _mm256_set1_ps(88.3762626647949f);
	const __m256 lo = _mm256_set1_ps(-87.3365478515625f);
	__m256 n, r, p;
	__m256i e;

	x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
	n = _mm256_round_ps(_mm256_mul_ps(x,
	    _mm256_set1_ps(1.44269504088896341f)),
	    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
	p = _mm256_set1_ps(1.9875691500e-4f);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
	p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r,
	    _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
	e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
	    _mm256_set1_epi32(127)), 23);
	return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

/* v[i] = exp(v[i] - mx) for i < n; returns the sum. */
static inline float
vexp_row(float *v, size_t n, float mx)
{
	size_t i = 0;
	float s = 0.0f;
#ifdef __AVX2__
	__m256 acc = _mm256_setzero_ps(), m = _mm256_set1_ps(mx);

	for (; i + 8 <= n; i += 8) {
		__m256 e = vexp256(_mm256_sub_ps(_mm256_loadu_ps(v + i), m));

		_mm256_storeu_ps(v + i, e);
		acc = _mm256_add_ps(acc, e);
	}
	{
		float t[8];
		int k;

		_mm256_storeu_ps(t, acc);
		for (k = 0; k < 8; k++)
			s += t[k];
	}
#endif
	for (; i < n; i++) {
		v[i] = expf(v[i] - mx);
		s += v[i];
	}
	return s;
}

/* Largest of v[0..n). */
static inline float
vmax_row(const float *v, size_t n)
{
	size_t i = 0;
	float mx = -INFINITY;
#ifdef __AVX2__
	if (n >= 8) {
		__m256 m = _mm256_loadu_ps(v);
		float t[8];
		int k;

		for (i = 8; i + 8 <= n; i += 8)
			m = _mm256_max_ps(m, _mm256_loadu_ps(v + i));
		_mm256_storeu_ps(t, m);
		for (k = 0; k < 8; k++)
			if (t[k] > mx)
				mx = t[k];
	}
#endif
	for (; i < n; i++)
		if (v[i] > mx)
			mx = v[i];
	return mx;
}

#endif
