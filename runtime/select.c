/*
 * select.c - token scoring (SnapKV, Expected Attention), pooling and top-k
 * selection, and the AdaKV hybrid split of a layer's budget over its heads.
 * SPDX-License-Identifier: MIT
 *
 * Selection is a radix select over order-preserving integer keys of the
 * scores: O(n) with no allocation, ties broken towards the lower index by
 * construction, and the same algorithm the CUDA top-k kernel runs.
 */
#include "config.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef HAVE_OPENBLAS
#include <cblas.h>
#endif

#include "plan.h"
#include "select.h"
#include "util.h"
#include "vexp.h"

/* Window queries whose softmax statistics live on the stack. */
#define SEL_STACK_QUERIES 256

#if defined(__AVX2__) && defined(__FMA__)
/* Dot products of eight query rows (d a multiple of 8) with key row kt. */
static inline __m256
dot8x8(const float *q, int d, const float *kt)
{
	__m256 a0, a1, a2, a3, a4, a5, a6, a7, kv, t0, t1;
	size_t dd = (size_t)d;
	int i;

	a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _mm256_setzero_ps();
	for (i = 0; i < d; i += 8) {
		const float *qi = q + i;

		kv = _mm256_loadu_ps(kt + i);
		a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qi), kv, a0);
		a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qi + dd), kv, a1);
		a2 = _mm256_fmadd_ps(_mm256_loadu_ps(qi + 2 * dd), kv, a2);
		a3 = _mm256_fmadd_ps(_mm256_loadu_ps(qi + 3 * dd), kv, a3);
		a4 = _mm256_fmadd_ps(_mm256_loadu_ps(qi + 4 * dd), kv, a4);
		a5 = _mm256_fmadd_ps(_mm256_loadu_ps(qi + 5 * dd), kv, a5);
		a6 = _mm256_fmadd_ps(_mm256_loadu_ps(qi + 6 * dd), kv, a6);
		a7 = _mm256_fmadd_ps(_mm256_loadu_ps(qi + 7 * dd), kv, a7);
	}
	t0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
	t1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
	return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20),
	    _mm256_permute2f128_ps(t0, t1, 0x31));
}
#endif

/*
 * Scaled logits of eight query rows against key row kt.  With AVX2 the
 * key row is loaded once for all eight and the sums are reduced together.
 */
static inline void
logits8(const float *q, int d, const float *kt, float scale, float *s)
{
	int j;

#if defined(__AVX2__) && defined(__FMA__)
	if (d % 8 == 0) {
		_mm256_storeu_ps(s, _mm256_mul_ps(dot8x8(q, d, kt),
		    _mm256_set1_ps(scale)));
		return;
	}
#endif
	for (j = 0; j < 8; j++)
		s[j] = vdot(q + (size_t)j * d, kt, d) * scale;
}

/* Online softmax statistics (max m, sum l) of w queries given logits s. */
static inline void
stats_update(float *m, float *l, const float *s, int w)
{
	int j = 0;

#if defined(__AVX2__) && defined(__FMA__)
	for (; j + 8 <= w; j += 8) {
		__m256 mo = _mm256_loadu_ps(m + j), sv = _mm256_loadu_ps(s + j);
		__m256 mn = _mm256_max_ps(mo, sv);

		_mm256_storeu_ps(l + j, _mm256_fmadd_ps(_mm256_loadu_ps(l + j),
		    vexp256(_mm256_sub_ps(mo, mn)),
		    vexp256(_mm256_sub_ps(sv, mn))));
		_mm256_storeu_ps(m + j, mn);
	}
#endif
	for (; j < w; j++) {
		float mn = s[j] > m[j] ? s[j] : m[j];

		l[j] = l[j] * vexp1(m[j] - mn) + vexp1(s[j] - mn);
		m[j] = mn;
	}
}

/* Sum over w queries of exp(s - m) * il, il the scaled inverse sums. */
static inline float
prob_sum(const float *s, const float *m, const float *il, int w)
{
	float acc = 0.0f;
	int j = 0;

#if defined(__AVX2__) && defined(__FMA__)
	__m256 a = _mm256_setzero_ps();
	__m128 h;

	for (; j + 8 <= w; j += 8)
		a = _mm256_fmadd_ps(vexp256(_mm256_sub_ps(_mm256_loadu_ps(s + j),
		    _mm256_loadu_ps(m + j))), _mm256_loadu_ps(il + j), a);
	h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
	h = _mm_add_ps(h, _mm_movehl_ps(h, h));
	h = _mm_add_ss(h, _mm_movehdup_ps(h));
	acc = _mm_cvtss_f32(h);
#endif
	for (; j < w; j++)
		acc += vexp1(s[j] - m[j]) * il[j];
	return acc;
}

/* Scaled logits of w queries (rows of q) against key row kt. */
static void
logits(const float *q, int w, int d, const float *kt, float scale, float *s)
{
	int j;

	for (j = 0; j + 8 <= w; j += 8)
		logits8(q + (size_t)j * d, d, kt, scale, s + j);
	for (; j < w; j++)
		s[j] = vdot(q + (size_t)j * d, kt, d) * scale;
}

/*
 * Score of one head's window over its candidates: the mean over the w
 * window queries of their causal softmax at each key t < n - w, stored
 * into score (first head), or maximised or summed into it.  m, l and sv
 * hold w floats each.  Two passes over the keys (statistics, then
 * probabilities) keep the memory at O(w) instead of O(w n); the
 * candidate keys, seen by every query, take the vectorised path.
 */
static void
head_score(const float *q, const float *k, int n, int w, int d, float scale,
    float *m, float *l, float *sv, int first, int gqa, float *score)
{
	int t, j, nc = n - w;

	for (j = 0; j < w; j++) {
		m[j] = -INFINITY;
		l[j] = 0.0f;
	}
	for (t = 0; t < nc; t++) {
		logits(q, w, d, k + (size_t)t * d, scale, sv);
		stats_update(m, l, sv, w);
	}
	/* the window keys: query j sees keys up to nc + j */
	for (t = nc; t < n; t++) {
		int j0 = t - nc;

		logits(q + (size_t)j0 * d, w - j0, d, k + (size_t)t * d, scale,
		    sv);
		for (j = j0; j < w; j++) {
			float s = sv[j - j0], mn = s > m[j] ? s : m[j];

			l[j] = l[j] * expf(m[j] - mn) + expf(s - mn);
			m[j] = mn;
		}
	}
	for (j = 0; j < w; j++)
		l[j] = 1.0f / (l[j] * (float)w);
	for (t = 0; t < nc; t++) {
		float acc;

		logits(q, w, d, k + (size_t)t * d, scale, sv);
		acc = prob_sum(sv, m, l, w);
		if (first)
			score[t] = acc;
		else if (gqa == PLAN_GQA_MAX)
			score[t] = acc > score[t] ? acc : score[t];
		else
			score[t] += acc;
	}
}

void
sel_score(const float *q, const float *k, int n, int w, int g, int d,
    float scale, int gqa, float *score)
{
	float stack[3 * SEL_STACK_QUERIES], *buf = stack;
	int h, t;

	if (n <= w || w < 1 || g < 1)
		return;
	if (w > SEL_STACK_QUERIES &&
	    (buf = malloc(sizeof(float) * 3 * (size_t)w)) == NULL) {
		/* no room for the statistics: say so in the scores */
		for (t = 0; t < n - w; t++)
			score[t] = NAN;
		return;
	}
	for (h = 0; h < g; h++)
		head_score(q + (size_t)h * w * d, k, n, w, d, scale, buf,
		    buf + w, buf + 2 * w, h == 0, gqa, score);
	if (gqa != PLAN_GQA_MAX && g > 1)
		for (t = 0; t < n - w; t++)
			score[t] /= (float)g;
	if (buf != stack)
		free(buf);
}

void
sel_pool(const float *in, int n, int ks, int pool, float *out)
{
	int r = ks / 2, t, i, lo, hi;

	if (pool == PLAN_POOL_NONE || r <= 0) {
		memmove(out, in, sizeof(float) * (size_t)(n > 0 ? n : 0));
		return;
	}
	for (t = 0; t < n; t++) {
		lo = t - r < 0 ? 0 : t - r;
		hi = t + r >= n ? n - 1 : t + r;
		if (pool == SEL_POOL_LOGAVG) {
			float mx = -INFINITY, s = 0.0f;

			for (i = lo; i <= hi; i++)
				mx = in[i] > mx ? in[i] : mx;
			for (i = lo; mx > -INFINITY && i <= hi; i++)
				s += expf(in[i] - mx);
			out[t] = mx == -INFINITY ? mx :
			    mx + logf(s / (float)(hi - lo + 1));
		} else if (pool == PLAN_POOL_AVG) {
			double s = 0.0;

			for (i = lo; i <= hi; i++)
				s += in[i];
			out[t] = (float)(s / (hi - lo + 1));
		} else {
			float mx = in[lo];

			for (i = lo + 1; i <= hi; i++)
				if (in[i] > mx)
					mx = in[i];
			out[t] = mx;
		}
	}
}

int
sel_pool_kind(int scorer, int pool)
{
	return scorer == PLAN_SCORER_EA && pool == PLAN_POOL_AVG ?
	    SEL_POOL_LOGAVG : pool;
}

/*
 * Order-preserving unsigned key of a score: larger floats give larger
 * keys, both zeros the same key, and NaN the smallest key of all.
 */
static inline uint32_t
fkey(float x)
{
	uint32_t u;

	if (x != x)
		return 0;
	if (x == 0.0f)
		x = 0.0f;
	memcpy(&u, &x, sizeof u);
	return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

/*
 * One set of candidates for radix_kth: the keys of a[0..n) that are below
 * lim (all of them when lim > UINT32_MAX), plus extra copies of key lim.
 */
struct keyset {
	const float	*a;
	int		 n;
	uint64_t	 lim;
	int64_t		 extra;
};

/*
 * The k-th largest key (1 <= k <= size) of the union of the sets:
 * returns it, with *above the number of keys strictly greater and *eq the
 * number equal to it.  Four passes of 8-bit digits, most significant
 * first, each counting only the keys that match the digits found so far.
 */
static uint32_t
radix_kth(const struct keyset *ks, int nks, int64_t k, int64_t *above,
    int64_t *eq)
{
	int64_t hist[256], need = k, gt = 0;
	uint32_t prefix = 0, mask = 0, key;
	int shift, i, t, dg;

	for (shift = 24; shift >= 0; shift -= 8) {
		memset(hist, 0, sizeof hist);
		for (i = 0; i < nks; i++) {
			const struct keyset *s = &ks[i];

			for (t = 0; t < s->n; t++) {
				key = fkey(s->a[t]);
				if (key < s->lim && (key & mask) == prefix)
					hist[(key >> shift) & 255]++;
			}
			if (s->extra > 0 && s->lim <= UINT32_MAX &&
			    ((uint32_t)s->lim & mask) == prefix)
				hist[((uint32_t)s->lim >> shift) & 255] +=
				    s->extra;
		}
		for (dg = 255; dg > 0 && hist[dg] < need; dg--) {
			need -= hist[dg];
			gt += hist[dg];
		}
		prefix |= (uint32_t)dg << shift;
		mask |= 255u << shift;
		if (shift == 0)
			*eq = hist[dg];
	}
	*above = gt;
	return prefix;
}

void
sel_topk(const float *score, int n, int k, int *idx)
{
	struct keyset ks = { score, n, UINT64_MAX, 0 };
	int64_t above, eq, ties;
	uint32_t th, key;
	int t, o = 0;

	if (k <= 0 || n <= 0)
		return;
	if (k >= n) {
		for (t = 0; t < n; t++)
			idx[t] = t;
		return;
	}
	th = radix_kth(&ks, 1, k, &above, &eq);
	ties = k - above;
	for (t = 0; t < n && o < k; t++) {
		key = fkey(score[t]);
		if (key > th || (key == th && ties-- > 0))
			idx[o++] = t;
	}
}

/*
 * The rows every head keeps of n: the window clamped to [0, n], then the
 * sinks to what the window leaves.  sel_select and sel_rule both clamp
 * here, so the counts a plan gives are the counts selection arrives at.
 */
static inline void
fixed_rows(int n, int w, int sinks, int *wv, int *s)
{
	*wv = w < 0 ? 0 : (w > n ? n : w);
	*s = sinks < 0 ? 0 : (sinks > n - *wv ? n - *wv : sinks);
}

/* keep clamped to [lo, n]. */
static inline int
clamp_keep(int keep, int lo, int n)
{
	if (keep < lo)
		keep = lo;
	return keep > n ? n : keep;
}

/* The rows a layer may keep of n, given its sliding window (select.h). */
int
sel_window_rows(int window, int n)
{
	if (n < 0)
		return 0;
	return window > 0 && window < n ? window : n;
}

int
sel_rule(const kvx_plan *P, int layer, int n, int w, int n_head_kv,
    sel_counts *c)
{
	int h, pw, even, rest, nv;

	if (n_head_kv < 1 || n_head_kv > SEL_MAX_KV_HEADS)
		return -1;
	memset(c, 0, sizeof *c);
	nv = sel_window_rows(plan_layer_window(P, layer), n);
	c->first = n - nv;
	/* the last pw of the w queries at hand, and at least one candidate */
	pw = P->window < w ? P->window : w;
	if (pw >= nv)
		pw = nv - 1;
	fixed_rows(nv, pw, c->first > 0 ? 0 : P->sinks, &c->pw, &c->sinks);
	c->fixed = c->pw + c->sinks;
	c->ncand = nv - c->fixed;
	if (P->mode != KVX_PLAN_HYBRID) {
		for (h = 0; h < n_head_kv; h++)
			c->keep[h] = clamp_keep(plan_tokens(P, layer, h, n),
			    c->fixed, nv);
		return 0;
	}
	c->hybrid = 1;
	plan_hybrid_share(P, layer, n, c->pw, n_head_kv, &c->ncand, &c->total,
	    &c->floor);
	even = c->total / n_head_kv;
	rest = c->total % n_head_kv;
	for (h = 0; h < n_head_kv; h++)
		c->keep[h] = sel_keep(c, even + (h < rest));
	return 0;
}

int
sel_keep(const sel_counts *c, int share)
{
	return clamp_keep(share + c->fixed, c->fixed, c->fixed + c->ncand);
}

int
sel_select(const float *pooled, int n, int w, int sinks, int keep, int *idx)
{
	int wv, s, nc, t, o;

	if (n <= 0)
		return 0;
	fixed_rows(n, w, sinks, &wv, &s);
	keep = clamp_keep(keep, wv + s, n);
	nc = n - wv - s;
	for (t = 0; t < s; t++)
		idx[t] = t;
	o = s;
	if (keep - wv - s > 0) {
		sel_topk(pooled + s, nc, keep - wv - s, idx + s);
		for (t = s; t < keep - wv; t++)
			idx[t] += s;
		o = keep - wv;
	}
	for (t = n - wv; t < n; t++)
		idx[o++] = t;
	return o;
}

/*
 * Each head first reserves its own top floor candidates; the rest of the
 * total goes to the best of the remaining candidates of all heads, ties
 * ordered by (head, index).  When the floors alone exceed the total, the
 * floor shrinks to an even share.
 */
void
sel_hybrid_split(const float *const *pooled, int h, int n_cand, int total,
    int floor, int *counts)
{
	struct keyset one, ks_stack[256], *ks = ks_stack;
	int64_t above, eq, r, q, gt, ge;
	uint32_t th, key;
	int i, t, f;

	if (h <= 0)
		return;
	if (n_cand < 0)
		n_cand = 0;
	if (total < 0)
		total = 0;
	if ((int64_t)total > (int64_t)h * n_cand)
		total = h * n_cand;
	f = floor < 0 ? 0 : (floor > n_cand ? n_cand : floor);
	if ((int64_t)f * h > total)
		f = total / h;
	r = total - (int64_t)f * h;
	if (h > 256 && (ks = malloc(sizeof(*ks) * (size_t)h)) == NULL) {
		/* without room for the sets, fall back to the floors alone
		 * plus an even share of the remainder */
		for (i = 0; i < h; i++)
			counts[i] = f + (int)(r / h + (i < r % h));
		return;
	}
	/* the candidates each head leaves after reserving its top f */
	for (i = 0; i < h; i++) {
		ks[i].a = pooled[i];
		ks[i].n = n_cand;
		ks[i].lim = UINT64_MAX;
		ks[i].extra = 0;
		counts[i] = f;
		if (f > 0 && f < n_cand) {
			one = ks[i];
			ks[i].lim = radix_kth(&one, 1, f, &above, &eq);
			ks[i].extra = eq - (f - above);
		} else if (f == n_cand)
			ks[i].n = 0;
	}
	if (r > 0) {
		th = radix_kth(ks, h, r, &above, &eq);
		q = r - above;
		for (i = 0; i < h; i++) {
			gt = ge = 0;
			for (t = 0; t < ks[i].n; t++) {
				key = fkey(ks[i].a[t]);
				if (key < ks[i].lim && key >= th) {
					gt += key > th;
					ge += key == th;
				}
			}
			if (ks[i].lim <= UINT32_MAX) {
				if (ks[i].lim > th)
					gt += ks[i].extra;
				else if (ks[i].lim == th)
					ge += ks[i].extra;
			}
			if (ge > q)
				ge = q;
			q -= ge;
			counts[i] += (int)(gt + ge);
		}
	}
	if (ks != ks_stack)
		free(ks);
}

/* --- Expected Attention -------------------------------------------------- */

/*
 * Cosine and sine of RoPE pair i averaged over positions n .. n + F - 1:
 * the mean of exp(i (n + j) f) over j is a Dirichlet kernel, exp(i (n +
 * (F - 1) / 2) f) sin(F f / 2) / (F sin(f / 2)), so that no position is
 * visited.
 */
static void
avg_rot(int n, int F, double f, double *c, double *s)
{
	double h = sin(f / 2), r, a;

	r = fabs(h) < 1e-12 ? 1.0 : sin(F * f / 2) / (F * h);
	a = (n + (F - 1) / 2.0) * f;
	*c = r * cos(a);
	*s = r * sin(a);
}

int
sel_ea_nq(const kvx_plan *P, int n)
{
	int w = n < KVX_WINDOW_MAX ? n : KVX_WINDOW_MAX;

	if (P->ea_queries == PLAN_EA_ALL)
		return n;
	return P->ea_queries < w ? P->ea_queries : w;
}

kvx_status
sel_ea_moments(const float *q, size_t ld, int nh, const int32_t *pos, int w,
    int d, const sel_ea *e, int cov, double *m, double *S)
{
	double x0, x1, *u, *fr, *cs;
	int i, j, h, a, b, P = d / 2, a0, a1;

	if (w < 1 || d < 2 || nh < 1)
		return kvx__fail(KVX_ERR_ARG, "expected attention: %d queries "
		    "of %d heads of size %d", w, nh, d);
	if ((u = malloc(sizeof(double) * ((size_t)w * nh * d + 3 *
	    (size_t)P))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory for the "
		    "statistics of %d queries", w);
	fr = u + (size_t)w * nh * d;
	cs = fr + P;
	memset(m, 0, sizeof(double) * (size_t)nh * d);
	for (i = 0; i < P; i++)
		fr[i] = pow((double)e->theta, -(double)(2 * i) / d);
	/* pre-RoPE queries, a query at a time (its rotation taken once for
	 * every head), each head's rows in order */
	for (j = 0; j < w; j++) {
		for (i = 0; i < P; i++) {
			cs[2 * i] = cos(pos[j] * fr[i]);
			cs[2 * i + 1] = sin(pos[j] * fr[i]);
		}
		for (h = 0; h < nh; h++) {
			const float *p = q + (size_t)j * ld + (size_t)h * d;
			double *r = u + ((size_t)h * w + j) * d;
			double *mh = m + (size_t)h * d;

			for (i = 0; i < P; i++) {
				a0 = e->halves ? i : 2 * i;
				a1 = e->halves ? i + P : 2 * i + 1;
				x0 = p[a0] * cs[2 * i] + p[a1] * cs[2 * i + 1];
				x1 = -p[a0] * cs[2 * i + 1] + p[a1] * cs[2 * i];
				r[a0] = x0;
				r[a1] = x1;
				mh[a0] += x0;
				mh[a1] += x1;
			}
		}
	}
	for (i = 0; i < nh * d; i++)
		m[i] /= w;
	if (cov == PLAN_COV_NONE) {
		free(u);
		return KVX_OK;
	}
	/* the centred queries' products, the lower triangle, then mirrored:
	 * w d^2 / 2 products a head, the cost of a span of the whole prompt */
	for (h = 0; h < nh; h++) {
		double *Sh = S + (size_t)h * d * d, *U = u + (size_t)h * w * d;
		const double *mh = m + (size_t)h * d;

		for (j = 0; j < w; j++)
			for (a = 0; a < d; a++)
				U[(size_t)j * d + a] -= mh[a];
#ifdef HAVE_OPENBLAS
		cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, d, w,
		    1.0 / w, U, d, 0.0, Sh, d);
#else
		memset(Sh, 0, sizeof(double) * (size_t)d * d);
		for (j = 0; j < w; j++) {
			const double *r = U + (size_t)j * d;

			for (a = 0; a < d; a++) {
				double ra = r[a], *row = Sh + (size_t)a * d;

				for (b = 0; b <= a; b++)
					row[b] += ra * r[b];
			}
		}
		for (a = 0; a < d; a++)
			for (b = 0; b <= a; b++)
				Sh[(size_t)a * d + b] /= w;
#endif
		for (a = 0; a < d; a++)
			for (b = 0; b < a; b++)
				Sh[(size_t)b * d + a] = Sh[(size_t)a * d + b];
	}
	free(u);
	return KVX_OK;
}

void
sel_ea_carry(const double *m, const double *S, int d, int n, const sel_ea *e,
    float *mu, float *cov)
{
	double c, s, ca, sa, cb, sb, t00, t01, t10, t11;
	int a, b, P = d / 2, a0, a1, b0, b1;

	for (a = 0; a < P; a++) {
		a0 = e->halves ? a : 2 * a;
		a1 = e->halves ? a + P : 2 * a + 1;
		avg_rot(n, e->future, pow((double)e->theta,
		    -(double)(2 * a) / d), &c, &s);
		mu[a0] = (float)(c * m[a0] - s * m[a1]);
		mu[a1] = (float)(s * m[a0] + c * m[a1]);
	}
	if (e->cov == PLAN_COV_NONE)
		return;
	/* R S R^T, one 2 x 2 block of pairs at a time: block (A, B) is
	 * B_A S_AB B_B^T with B = [c -s; s c] of its pair */
	for (a = 0; a < P; a++) {
		a0 = e->halves ? a : 2 * a;
		a1 = e->halves ? a + P : 2 * a + 1;
		avg_rot(n, e->future, pow((double)e->theta,
		    -(double)(2 * a) / d), &ca, &sa);
		for (b = 0; b < P; b++) {
			if (e->cov == PLAN_COV_DIAG && a != b)
				continue;
			b0 = e->halves ? b : 2 * b;
			b1 = e->halves ? b + P : 2 * b + 1;
			avg_rot(n, e->future, pow((double)e->theta,
			    -(double)(2 * b) / d), &cb, &sb);
			/* T = B_A S_AB */
			t00 = ca * S[(size_t)a0 * d + b0] -
			    sa * S[(size_t)a1 * d + b0];
			t01 = ca * S[(size_t)a0 * d + b1] -
			    sa * S[(size_t)a1 * d + b1];
			t10 = sa * S[(size_t)a0 * d + b0] +
			    ca * S[(size_t)a1 * d + b0];
			t11 = sa * S[(size_t)a0 * d + b1] +
			    ca * S[(size_t)a1 * d + b1];
			/* T B_B^T */
			if (e->cov == PLAN_COV_DIAG) {
				cov[a0] = (float)(t00 * cb - t01 * sb);
				cov[a1] = (float)(t10 * sb + t11 * cb);
				continue;
			}
			cov[(size_t)a0 * d + b0] = (float)(t00 * cb - t01 * sb);
			cov[(size_t)a0 * d + b1] = (float)(t00 * sb + t01 * cb);
			cov[(size_t)a1 * d + b0] = (float)(t10 * cb - t11 * sb);
			cov[(size_t)a1 * d + b1] = (float)(t10 * sb + t11 * cb);
		}
	}
}

void
sel_ea_stats(const float *q, const int32_t *pos, int w, int d, int n,
    const sel_ea *e, float *mu, float *cov)
{
	double *m = NULL, *S = NULL;
	int i, full = e->cov != PLAN_COV_NONE;

	if (w < 1 || d < 2)
		return;
	if ((m = malloc(sizeof(double) * d)) == NULL ||
	    (full && (S = malloc(sizeof(double) * d * d)) == NULL) ||
	    sel_ea_moments(q, (size_t)d, 1, pos, w, d, e, e->cov, m, S) !=
	    KVX_OK) {
		for (i = 0; i < d; i++)
			mu[i] = NAN;
		free(m);
		free(S);
		return;
	}
	sel_ea_carry(m, S, d, n, e, mu, cov);
	free(m);
	free(S);
}

/* k^T C k for a symmetric d x d C, or for its diagonal alone. */
static inline float
quad(const float *C, const float *k, int d, int diag)
{
	float acc = 0.0f;
	int i;

	if (diag) {
		for (i = 0; i < d; i++)
			acc += C[i] * k[i] * k[i];
		return acc;
	}
	for (i = 0; i < d; i++)
		acc += k[i] * vdot(C + (size_t)i * d, k, d);
	return acc;
}

void
sel_ea_score(const float *mu, const float *cov, const float *k,
    const float *v, int n, int nc, int s0, int g, int d, const sel_ea *e,
    int gqa, float *tmp, float *score)
{
	float scale = 1.0f / sqrtf((float)d), half = 0.5f / (float)d;
	size_t cs = e->cov == PLAN_COV_DIAG ? (size_t)d : (size_t)d * d;
	float mx, lz, p;
	double l;
	int h, t;

	if (n < 1 || nc < 1 || s0 < 0 || s0 >= n || g < 1)
		return;
	for (h = 0; h < g; h++) {
		const float *m = mu + (size_t)h * d, *C = cov + h * cs;

		mx = -INFINITY;
		for (t = 0; t < n; t++) {
			const float *kt = k + (size_t)t * d;

			tmp[t] = vdot(m, kt, d) * scale;
			if (e->cov != PLAN_COV_NONE)
				tmp[t] += quad(C, kt, d,
				    e->cov == PLAN_COV_DIAG) * half;
			if (t >= s0 && tmp[t] > mx)
				mx = tmp[t];
		}
		l = 0;
		for (t = s0; t < n; t++)
			l += vexp1(tmp[t] - mx);
		lz = mx + logf((float)l);
		for (t = 0; t < nc; t++) {
			/* the sinks are kept whatever their score: -inf keeps
			 * their weight from spreading through the pooling */
			p = t < s0 ? -INFINITY : tmp[t] - lz;
			if (h == 0)
				score[t] = p;
			else if (gqa == PLAN_GQA_MAX)
				score[t] = p > score[t] ? p : score[t];
			else
				score[t] = sel_logaddexp(score[t], p);
		}
	}
	for (t = 0; t < nc; t++) {
		if (gqa != PLAN_GQA_MAX && g > 1)
			score[t] -= logf((float)g);
		if (e->vnorm)
			score[t] += 0.5f * logf(vdot(v + (size_t)t * d,
			    v + (size_t)t * d, d));
	}
}
