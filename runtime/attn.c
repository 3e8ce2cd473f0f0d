/*
 * attn.c - CPU reference attention over ragged KV segments.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "attn.h"
#include "vexp.h"

static float
dot(const float *a, const float *b, int d)
{
	float s = 0.0f;
	int i = 0;
#ifdef __AVX2__
	if (d >= 8) {
		__m256 acc = _mm256_mul_ps(_mm256_loadu_ps(a),
		    _mm256_loadu_ps(b));
		__m128 x;

		for (i = 8; i + 8 <= d; i += 8)
			acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i),
			    _mm256_loadu_ps(b + i), acc);
		x = _mm_add_ps(_mm256_castps256_ps128(acc),
		    _mm256_extractf128_ps(acc, 1));
		x = _mm_add_ps(x, _mm_movehl_ps(x, x));
		x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
		s = _mm_cvtss_f32(x);
	}
#endif
	for (; i < d; i++)
		s += a[i] * b[i];
	return s;
}

void
attn_gqa_partial(const float *q, int g, int d, const float *k,
    const float *v, int r0, int r1, size_t ld, float scale, float *scratch,
    float *m, float *l, float *acc)
{
	int len = r1 - r0, h, t, i;

	/* scores: each key row is loaded once for the whole group */
	for (t = 0; t < len; t++) {
		const float *kt = k + (size_t)(r0 + t) * ld;

		for (h = 0; h < g; h++)
			scratch[(size_t)h * len + t] = dot(q + (size_t)h * d,
			    kt, d) * scale;
	}
	for (h = 0; h < g; h++) {
		float *s = scratch + (size_t)h * len;

		m[h] = len > 0 ? vmax_row(s, (size_t)len) : -FLT_MAX;
		l[h] = len > 0 ? vexp_row(s, (size_t)len, m[h]) : 0.0f;
		memset(acc + (size_t)h * d, 0, sizeof(float) * d);
	}
	for (t = 0; t < len; t++) {
		const float *vt = v + (size_t)(r0 + t) * ld;

		for (h = 0; h < g; h++) {
			float p = scratch[(size_t)h * len + t];
			float *o = acc + (size_t)h * d;

			i = 0;
#ifdef __AVX2__
			{
				__m256 pv = _mm256_set1_ps(p);

				for (; i + 8 <= d; i += 8)
					_mm256_storeu_ps(o + i, _mm256_fmadd_ps(
					    pv, _mm256_loadu_ps(vt + i),
					    _mm256_loadu_ps(o + i)));
			}
#endif
			for (; i < d; i++)
				o[i] += p * vt[i];
		}
	}
}

void
attn_combine(int n, int g, int d, const float *m, const float *l,
    const float *acc, float *out)
{
	int h, j, i;

	for (h = 0; h < g; h++) {
		float mx = -FLT_MAX, sum = 0.0f;
		float *o = out + (size_t)h * d;

		for (j = 0; j < n; j++)
			if (l[j * g + h] > 0.0f && m[j * g + h] > mx)
				mx = m[j * g + h];
		memset(o, 0, sizeof(float) * d);
		for (j = 0; j < n; j++) {
			float w;

			if (l[j * g + h] <= 0.0f)
				continue;
			w = expf(m[j * g + h] - mx);
			sum += w * l[j * g + h];
			for (i = 0; i < d; i++)
				o[i] += w * acc[((size_t)j * g + h) * d + i];
		}
		if (sum > 0.0f)
			for (i = 0; i < d; i++)
				o[i] /= sum;
	}
}

void
attn_gqa(const float *q, int g, int d, const float *k, const float *v,
    int len, size_t ld, float scale, float *scratch, float *out)
{
	float m[64], l[64];
	int h0, gg, i, h;

	/* groups larger than the stack arrays are done in slices */
	for (h0 = 0; h0 < g; h0 += 64) {
		gg = g - h0 < 64 ? g - h0 : 64;
		attn_gqa_partial(q + (size_t)h0 * d, gg, d, k, v, 0, len, ld,
		    scale, scratch, m, l, out + (size_t)h0 * d);
		for (h = 0; h < gg; h++) {
			float *o = out + (size_t)(h0 + h) * d;
			float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;

			for (i = 0; i < d; i++)
				o[i] *= inv;
		}
	}
}
