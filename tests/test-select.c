/*
 * test-select.c - token scoring (SnapKV, Expected Attention), pooling,
 * top-k, selection and the hybrid split against brute-force references;
 * CPU attention against a naive double-precision one.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "plan.h"
#include "select.h"
#include "tap.h"
#include "util.h"

/* Scores drawn from a few values, so that ties are common. */
static void
fill_scores(float *a, int n, int levels)
{
	int i;

	for (i = 0; i < n; i++)
		a[i] = levels > 0 ? (float)tap_irand(0, levels - 1) / levels :
		    tap_frand();
}

/* Naive SnapKV score in double precision, straight from the definition. */
static void
ref_score(const float *q, const float *k, int n, int w, int g, int d,
    double scale, int gqa, double *score)
{
	double *s = malloc(sizeof(double) * n), *hs = malloc(sizeof(double) * n);
	int h, j, t, i, pos;

	for (t = 0; t < n - w; t++)
		score[t] = gqa == PLAN_GQA_MAX ? -1.0 : 0.0;
	for (h = 0; h < g; h++) {
		for (t = 0; t < n - w; t++)
			hs[t] = 0.0;
		for (j = 0; j < w; j++) {
			const float *qj = q + ((size_t)h * w + j) * d;
			double mx = -INFINITY, sum = 0.0;

			pos = n - w + j;
			for (t = 0; t <= pos; t++) {
				double acc = 0.0;

				for (i = 0; i < d; i++)
					acc += (double)qj[i] * k[(size_t)t * d + i];
				s[t] = acc * scale;
				if (s[t] > mx)
					mx = s[t];
			}
			for (t = 0; t <= pos; t++)
				sum += exp(s[t] - mx);
			for (t = 0; t < n - w; t++)
				hs[t] += exp(s[t] - mx) / sum / w;
		}
		for (t = 0; t < n - w; t++) {
			if (gqa == PLAN_GQA_MAX)
				score[t] = hs[t] > score[t] ? hs[t] : score[t];
			else
				score[t] += hs[t] / g;
		}
	}
	free(s);
	free(hs);
}

/* Sort key for the references: score descending, then index ascending. */
struct ent {
	float	s;
	int	h, i;
};

/* Comparison for qsort: the better entry first. */
static int
cmp_ent(const void *a, const void *b)
{
	const struct ent *x = a, *y = b;

	if (x->s != y->s)
		return x->s > y->s ? -1 : 1;
	if (x->h != y->h)
		return x->h < y->h ? -1 : 1;
	return (x->i > y->i) - (x->i < y->i);
}

/* Comparison for qsort of ints. */
static int
cmp_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;

	return (x > y) - (x < y);
}

/* Top-k by a full sort, indices written in increasing order. */
static void
ref_topk(const float *a, int n, int k, int *idx)
{
	struct ent *e = malloc(sizeof(*e) * (n > 0 ? n : 1));
	int i;

	for (i = 0; i < n; i++) {
		e[i].s = a[i];
		e[i].h = 0;
		e[i].i = i;
	}
	qsort(e, n, sizeof(*e), cmp_ent);
	for (i = 0; i < k; i++)
		idx[i] = e[i].i;
	qsort(idx, k, sizeof(int), cmp_int);
	free(e);
}

/* Hybrid split by brute force: per-head reservation, then a global sort. */
static void
ref_hybrid(const float *const *p, int h, int nc, int total, int floor,
    int *counts)
{
	struct ent *e = malloc(sizeof(*e) * ((size_t)h * nc + 1));
	struct ent *all = malloc(sizeof(*e) * ((size_t)h * nc + 1));
	int i, t, f, na = 0, r;

	if (total > h * nc)
		total = h * nc;
	if (total < 0)
		total = 0;
	f = floor < 0 ? 0 : floor > nc ? nc : floor;
	if (f * h > total)
		f = total / h;
	for (i = 0; i < h; i++) {
		for (t = 0; t < nc; t++) {
			e[t].s = p[i][t];
			e[t].h = i;
			e[t].i = t;
		}
		qsort(e, nc, sizeof(*e), cmp_ent);
		counts[i] = f;
		for (t = f; t < nc; t++)
			all[na++] = e[t];
	}
	qsort(all, na, sizeof(*e), cmp_ent);
	r = total - f * h;
	for (t = 0; t < r; t++)
		counts[all[t].h]++;
	free(e);
	free(all);
}

/* Naive pooling: the window clipped at the borders. */
static void
ref_pool(const float *in, int n, int ks, int pool, double *out)
{
	int t, i, r = ks / 2;

	for (t = 0; t < n; t++) {
		double acc = pool == PLAN_POOL_MAX ? -INFINITY : 0.0;
		int c = 0;

		for (i = t - r; i <= t + r; i++) {
			if (i < 0 || i >= n)
				continue;
			c++;
			if (pool == PLAN_POOL_MAX)
				acc = in[i] > acc ? in[i] : acc;
			else
				acc += in[i];
		}
		if (pool == PLAN_POOL_AVG)
			acc /= c;
		if (pool == SEL_POOL_LOGAVG) {
			for (acc = 0, i = t - r; i <= t + r; i++)
				if (i >= 0 && i < n)
					acc += exp((double)in[i]);
			acc = log(acc / c);
		}
		if (pool == PLAN_POOL_NONE || r == 0)
			acc = in[t];
		out[t] = acc;
	}
}

/* Attention in double precision for g heads over len rows (ld = d). */
static void
ref_attn(const float *q, int g, int d, const float *k, const float *v,
    int len, double scale, double *out)
{
	double *s = malloc(sizeof(double) * (len > 0 ? len : 1));
	int h, t, i;

	for (h = 0; h < g; h++) {
		double mx = -INFINITY, sum = 0.0;

		for (t = 0; t < len; t++) {
			double acc = 0.0;

			for (i = 0; i < d; i++)
				acc += (double)q[h * d + i] * k[(size_t)t * d + i];
			s[t] = acc * scale;
			mx = s[t] > mx ? s[t] : mx;
		}
		for (i = 0; i < d; i++)
			out[h * d + i] = 0.0;
		for (t = 0; t < len; t++) {
			double p = exp(s[t] - mx);

			sum += p;
			for (i = 0; i < d; i++)
				out[h * d + i] += p * v[(size_t)t * d + i];
		}
		for (i = 0; i < d; i++)
			out[h * d + i] /= sum;
	}
	free(s);
}

/* ||a - b|| / ||b|| over n values. */
static double
relerr(const float *a, const double *b, int n)
{
	double num = 0.0, den = 0.0;
	int i;

	for (i = 0; i < n; i++) {
		if (a[i] != a[i])
			return INFINITY;
		num += (a[i] - b[i]) * (a[i] - b[i]);
		den += b[i] * b[i];
	}
	return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

/* Scoring: random shapes against the double reference. */
static void
test_score(void)
{
	static const int shapes[][4] = {	/* n, w, g, d */
		{ 2, 1, 1, 1 }, { 9, 8, 3, 16 }, { 33, 32, 3, 64 },
		{ 100, 8, 1, 8 }, { 257, 16, 4, 64 }, { 500, 32, 3, 64 },
		{ 300, 300 - 1, 2, 12 }, { 1000, 64, 2, 128 }, { 77, 5, 7, 3 },
	};
	int si, gqa, rep, n, w, g, d, t;

	for (si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++)
	for (gqa = 0; gqa < 2; gqa++)
	for (rep = 0; rep < 2; rep++) {
		float *q, *k, *sc, big = rep ? 6.0f : 1.0f;
		double *ref, err, worst = 0.0, sum = 0.0;
		int bad = 0;

		n = shapes[si][0];
		w = shapes[si][1];
		g = shapes[si][2];
		d = shapes[si][3];
		q = malloc(sizeof(float) * g * w * d);
		k = malloc(sizeof(float) * n * d);
		sc = malloc(sizeof(float) * n);
		ref = malloc(sizeof(double) * n);
		for (t = 0; t < g * w * d; t++)
			q[t] = tap_frand() * big;
		for (t = 0; t < n * d; t++)
			k[t] = tap_frand() * big;
		for (t = 0; t < n; t++)
			sc[t] = NAN;
		sel_score(q, k, n, w, g, d, 1.0f / sqrtf((float)d), gqa, sc);
		ref_score(q, k, n, w, g, d, 1.0 / sqrt((double)d), gqa, ref);
		for (t = 0; t < n - w; t++) {
			err = fabs(sc[t] - ref[t]) / (fabs(ref[t]) + 1e-30);
			if (!(err < 1e-4) && !(fabs(sc[t] - ref[t]) < 1e-9))
				bad++;
			if (err > worst && err < INFINITY)
				worst = err;
			sum += ref[t];
		}
		ok(bad == 0, "score n=%d w=%d g=%d d=%d %s scale %g: %d bad, "
		    "worst rel %.2g", n, w, g, d, gqa ? "max" : "mean",
		    big, bad, worst);
		/* with the mean, each window query contributes its whole
		 * prefix mass minus what falls on the window */
		if (gqa == PLAN_GQA_MEAN)
			ok(sum > 0.0 && sum <= 1.0 + 1e-9,
			    "score mass %.6f in (0, 1]", sum);
		free(q);
		free(k);
		free(sc);
		free(ref);
	}
}

/* RoPE of one d-vector at position p in double: pair j is (2j, 2j+1), or
 * (j, j + d/2) with halves. */
static void
ref_rope(const double *x, int d, double p, double theta, int halves,
    double *y)
{
	double a;
	int j, i0, i1;

	for (j = 0; j < d / 2; j++) {
		a = p * pow(theta, -(double)(2 * j) / d);
		i0 = halves ? j : 2 * j;
		i1 = halves ? j + d / 2 : 2 * j + 1;
		y[i0] = x[i0] * cos(a) - x[i1] * sin(a);
		y[i1] = x[i0] * sin(a) + x[i1] * cos(a);
	}
}

/*
 * Naive Expected Attention in double precision from the pre-RoPE queries
 * qp (g x w x d): mean and covariance, the d x d rotation averaged over
 * positions n .. n + F - 1 summed position by position, the log-normal
 * moment of every key, a softmax over [s0, n), the heads reduced, and the
 * value norm.
 */
static void
ref_ea(const double *qp, int w, const float *k, const float *v, int n,
    int nc, int s0, int g, int d, int F, double theta, int halves, int cov,
    int vnorm, int gqa, double *score)
{
	double *R = calloc((size_t)d * d, sizeof(double));
	double *S = malloc(sizeof(double) * d * d);
	double *T = malloc(sizeof(double) * d * d);
	double *S2 = malloc(sizeof(double) * d * d);
	double *mu = malloc(sizeof(double) * d), *m2 = malloc(sizeof(double) * d);
	double *z = malloc(sizeof(double) * n), a, mx, l, x;
	int h, i, j, f, t, r, i0, i1;

	for (f = 0; f < F; f++)
		for (j = 0; j < d / 2; j++) {
			a = (n + f) * pow(theta, -(double)(2 * j) / d);
			i0 = halves ? j : 2 * j;
			i1 = halves ? j + d / 2 : 2 * j + 1;
			R[i0 * d + i0] += cos(a) / F;
			R[i0 * d + i1] -= sin(a) / F;
			R[i1 * d + i0] += sin(a) / F;
			R[i1 * d + i1] += cos(a) / F;
		}
	double *lp = malloc(sizeof(double) * (size_t)g * n);

	for (h = 0; h < g; h++) {
		const double *Q = qp + (size_t)h * w * d;

		for (i = 0; i < d; i++) {
			mu[i] = 0;
			for (j = 0; j < w; j++)
				mu[i] += Q[j * d + i] / w;
		}
		for (i = 0; i < d; i++)
			for (j = 0; j < d; j++) {
				S[i * d + j] = 0;
				for (r = 0; r < w; r++)
					S[i * d + j] += (Q[r * d + i] - mu[i]) *
					    (Q[r * d + j] - mu[j]) / w;
			}
		for (i = 0; i < d; i++) {
			m2[i] = 0;
			for (j = 0; j < d; j++)
				m2[i] += R[i * d + j] * mu[j];
		}
		for (i = 0; i < d; i++)
			for (j = 0; j < d; j++) {
				T[i * d + j] = 0;
				for (r = 0; r < d; r++)
					T[i * d + j] += R[i * d + r] *
					    S[r * d + j];
			}
		for (i = 0; i < d; i++)
			for (j = 0; j < d; j++) {
				S2[i * d + j] = 0;
				for (r = 0; r < d; r++)
					S2[i * d + j] += T[i * d + r] *
					    R[j * d + r];
				if (cov == PLAN_COV_NONE ||
				    (cov == PLAN_COV_DIAG && i != j))
					S2[i * d + j] = 0;
			}
		mx = -INFINITY;
		for (t = 0; t < n; t++) {
			z[t] = 0;
			for (i = 0; i < d; i++)
				z[t] += m2[i] * k[t * d + i] / sqrt((double)d);
			for (i = 0; i < d; i++)
				for (j = 0; j < d; j++)
					z[t] += k[t * d + i] * S2[i * d + j] *
					    k[t * d + j] / (2.0 * d);
			if (t >= s0 && z[t] > mx)
				mx = z[t];
		}
		l = 0;
		for (t = s0; t < n; t++)
			l += exp(z[t] - mx);
		for (t = 0; t < nc; t++)
			lp[(size_t)h * n + t] = z[t] - mx - log(l);
	}
	/* the logarithm of the group's mean or max weight, shifted by the
	 * group's largest so that nothing underflows */
	for (t = 0; t < nc; t++) {
		for (mx = -INFINITY, h = 0; h < g; h++)
			mx = lp[(size_t)h * n + t] > mx ? lp[(size_t)h * n + t] :
			    mx;
		for (x = 0, h = 0; h < g; h++)
			x += exp(lp[(size_t)h * n + t] - mx);
		score[t] = t < s0 ? -INFINITY : gqa == PLAN_GQA_MAX ? mx :
		    mx + log(x / g);
	}
	for (t = 0; t < nc && vnorm; t++) {
		for (x = 0, i = 0; i < d; i++)
			x += (double)v[t * d + i] * v[t * d + i];
		score[t] += 0.5 * log(x);
	}
	free(lp);
	free(R);
	free(S);
	free(T);
	free(S2);
	free(mu);
	free(m2);
	free(z);
}

/*
 * Expected Attention against the naive reference on random inputs: the
 * queries are drawn before RoPE and handed over rotated to their
 * positions, as the forward keeps them.
 */
static void
test_ea(void)
{
	static const int shapes[][7] = {	/* n, w, g, d, F, s0, pw */
		{ 2, 1, 1, 2, 1, 0, 1 }, { 40, 8, 3, 16, 512, 4, 8 },
		{ 300, 32, 3, 64, 512, 4, 32 }, { 129, 128, 2, 8, 7, 0, 1 },
		{ 500, 64, 1, 64, 5000, 2, 16 }, { 64, 3, 4, 6, 1, 1, 3 },
		{ 700, 700, 2, 64, 512, 4, 32 },	/* the whole prompt */
	};
	int si, cov, gqa, vn, n, w, g, d, F, s0, pw, t, i, j, h, bad, hv;
	float theta = 10000.0f;

	for (si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++)
	for (cov = 0; cov < 3; cov++)
	for (gqa = 0; gqa < 2; gqa++)
	for (hv = 0; hv < 2; hv++) {
		size_t cs;
		float *q, *k, *v, *mu, *cv, *tmp, *sc, big;
		double *qp, *ref, y[64], worst = 0.0, err;
		int32_t *pos;
		sel_ea e;

		n = shapes[si][0];
		w = shapes[si][1];
		g = shapes[si][2];
		d = shapes[si][3];
		F = shapes[si][4];
		s0 = shapes[si][5];
		pw = shapes[si][6];
		vn = (si + cov) % 2;
		big = si % 2 ? 2.0f : 1.0f;
		cs = cov == PLAN_COV_DIAG ? (size_t)d : (size_t)d * d;
		qp = malloc(sizeof(double) * g * w * d);
		q = malloc(sizeof(float) * g * w * d);
		pos = malloc(sizeof(int32_t) * w);
		k = malloc(sizeof(float) * n * d);
		v = malloc(sizeof(float) * n * d);
		mu = malloc(sizeof(float) * g * d);
		cv = malloc(sizeof(float) * g * d * d);
		tmp = malloc(sizeof(float) * n);
		sc = malloc(sizeof(float) * n);
		ref = malloc(sizeof(double) * n);
		for (j = 0; j < w; j++)
			pos[j] = n - w + j;
		for (h = 0; h < g; h++)
			for (j = 0; j < w; j++) {
				double *x = qp + ((size_t)h * w + j) * d;

				for (i = 0; i < d; i++)
					x[i] = tap_frand() * big + (i % 3 == 0);
				ref_rope(x, d, pos[j], theta, hv, y);
				for (i = 0; i < d; i++)
					q[((size_t)h * w + j) * d + i] =
					    (float)y[i];
				for (i = 0; i < d; i++)
					x[i] = (double)q[((size_t)h * w + j) *
					    d + i];
				ref_rope(x, d, -pos[j], theta, hv, y);
				memcpy(x, y, sizeof(double) * d);
			}
		for (t = 0; t < n * d; t++) {
			k[t] = tap_frand() * big;
			v[t] = tap_frand();
		}
		e.future = F;
		e.cov = cov;
		e.vnorm = vn;
		e.theta = theta;
		e.halves = hv;
		for (h = 0; h < g; h++)
			sel_ea_stats(q + (size_t)h * w * d, pos, w, d, n, &e,
			    mu + (size_t)h * d, cv + h * cs);
		for (t = 0; t < n; t++)
			sc[t] = NAN;
		sel_ea_score(mu, cv, k, v, n, n - pw, s0, g, d, &e, gqa, tmp,
		    sc);
		ref_ea(qp, w, k, v, n, n - pw, s0, g, d, F, theta, hv, cov,
		    vn, gqa, ref);
		/* logarithms: an absolute error is a relative one of the
		 * weight */
		for (bad = 0, t = 0; t < n - pw; t++) {
			if (sc[t] == -INFINITY && ref[t] == -INFINITY)
				continue;
			err = fabs(sc[t] - ref[t]);
			if (!(err <= 1e-4 + 2e-6 * fabs(ref[t])))
				bad++;
			if (!(err <= worst))
				worst = err;
		}
		ok(bad == 0, "expected attention n=%d w=%d g=%d d=%d F=%d "
		    "s0=%d cov %d %s%s, %s: %d bad, worst abs %.2g", n, w, g,
		    d, F, s0, cov, gqa ? "max" : "mean", vn ? " vnorm" : "",
		    hv ? "halves" : "pairs", bad, worst);
		free(qp);
		free(q);
		free(pos);
		free(k);
		free(v);
		free(mu);
		free(cv);
		free(tmp);
		free(sc);
		free(ref);
	}
}

/* Pooling against the naive reference, all kinds and kernel sizes. */
static void
test_pool(void)
{
	int rep, pool, ks, n, t, bad;

	for (rep = 0; rep < 30; rep++) {
		float *in, *out;
		double *ref;

		n = tap_irand(1, rep < 20 ? 40 : 3000);
		in = malloc(sizeof(float) * n);
		out = malloc(sizeof(float) * n);
		ref = malloc(sizeof(double) * n);
		fill_scores(in, n, rep % 3 == 0 ? 4 : 0);
		for (pool = 0; pool <= SEL_POOL_LOGAVG; pool++)
		for (ks = 1; ks <= 15; ks += 2) {
			for (t = 0; t < n; t++)
				out[t] = NAN;
			sel_pool(in, n, ks, pool, out);
			ref_pool(in, n, ks, pool, ref);
			for (bad = t = 0; t < n; t++)
				if (!(fabs(out[t] - ref[t]) <=
				    1e-6 * (1.0 + fabs(ref[t]))))
					bad++;
			if (bad || ks == 7 || rep == 0)
				ok(bad == 0, "pool n=%d ks=%d kind=%d: %d bad",
				    n, ks, pool, bad);
		}
		free(in);
		free(out);
		free(ref);
	}
}

/*
 * sel_ea_moments of several heads at once, their rows ld apart (as the
 * forward keeps a layer's queries), against the same heads taken one at
 * a time from contiguous rows: the same sums in the same order, so
 * equal to the bit; and sel_ea_carry of them equals sel_ea_stats.
 */
static void
test_ea_moments(void)
{
	int w = 300, nh = 3, d = 16, ld = nh * d + 5, h, j, i, bad = 0;
	float *q = malloc(sizeof(float) * w * ld), *qh = malloc(sizeof(float) *
	    w * d), mu[16], cv[256], mu2[16], cv2[256];
	double *m = malloc(sizeof(double) * nh * d);
	double *S = malloc(sizeof(double) * nh * d * d);
	double m1[16], S1[256];
	int32_t *pos = malloc(sizeof(int32_t) * w);
	sel_ea e = { 64, PLAN_COV_FULL, 1, 10000.0f, 0 };

	for (i = 0; i < w * ld; i++)
		q[i] = tap_frand() + (i % 3 == 0);
	for (j = 0; j < w; j++)
		pos[j] = 2 * j + 1;
	ok(sel_ea_moments(q, (size_t)ld, nh, pos, w, d, &e, PLAN_COV_FULL, m,
	    S) == KVX_OK, "ea moments of %d heads", nh);
	for (h = 0; h < nh; h++) {
		for (j = 0; j < w; j++)
			memcpy(qh + (size_t)j * d, q + (size_t)j * ld +
			    (size_t)h * d, sizeof(float) * d);
		sel_ea_moments(qh, (size_t)d, 1, pos, w, d, &e, PLAN_COV_FULL,
		    m1, S1);
		bad += memcmp(m1, m + (size_t)h * d, sizeof m1) != 0 ||
		    memcmp(S1, S + (size_t)h * d * d, sizeof S1) != 0;
		sel_ea_stats(qh, pos, w, d, 2 * w, &e, mu, cv);
		sel_ea_carry(m + (size_t)h * d, S + (size_t)h * d * d, d,
		    2 * w, &e, mu2, cv2);
		bad += memcmp(mu, mu2, sizeof mu) != 0 ||
		    memcmp(cv, cv2, sizeof cv) != 0;
	}
	ok(bad == 0, "ea moments: %d heads ld %d apart equal each head alone, "
	    "and carried equal sel_ea_stats (%d differ)", nh, ld, bad);
	free(q);
	free(qh);
	free(m);
	free(S);
	free(pos);
}

/*
 * Expected Attention's order where the weights underflow a float: keys
 * and queries with a large common bias (as a random-weight model's Q and
 * K biases make them) spread the logits over hundreds, so that most
 * weights are below FLT_MIN.  The scores must still order the keys as
 * the float64 reference does: the same top quarter, and no two scores
 * equal where the reference's differ (weights that underflowed to one
 * value once tied there, and the CPU and the GPU kept different keys).
 */
static void
test_ea_order(void)
{
	int n = 600, w = 32, g = 2, d = 64, F = 512, s0 = 4, pw = 8;
	int nc = n - pw, kk = (n - pw - s0) / 4, cov, gqa, t, i, j, h;
	float theta = 1000000.0f;

	for (cov = 0; cov < 3; cov++)
	for (gqa = 0; gqa < 2; gqa++) {
		size_t cs = cov == PLAN_COV_DIAG ? (size_t)d : (size_t)d * d;
		float *q = malloc(sizeof(float) * g * w * d);
		float *k = malloc(sizeof(float) * n * d);
		float *v = malloc(sizeof(float) * n * d);
		float *mu = malloc(sizeof(float) * g * d);
		float *cv = malloc(sizeof(float) * g * d * d);
		float *tmp = malloc(sizeof(float) * n);
		float *sc = malloc(sizeof(float) * n);
		double *qp = malloc(sizeof(double) * g * w * d);
		double *ref = malloc(sizeof(double) * n), x[64], y[64], th;
		float *rf = malloc(sizeof(float) * n);
		int *got = malloc(sizeof(int) * n), *want = malloc(sizeof(int) *
		    n), under = 0, spurious = 0, moved = 0;
		int32_t pos[32];
		sel_ea e;

		for (j = 0; j < w; j++)
			pos[j] = n - w + j;
		for (h = 0; h < g; h++)
			for (j = 0; j < w; j++) {
				double *u = qp + ((size_t)h * w + j) * d;

				for (i = 0; i < d; i++)
					x[i] = 3.0 * (i % 2 ? 1 : -1) +
					    0.3 * tap_frand();
				ref_rope(x, d, pos[j], theta, 1, y);
				for (i = 0; i < d; i++)
					q[((size_t)h * w + j) * d + i] =
					    (float)y[i];
				for (i = 0; i < d; i++)
					x[i] = q[((size_t)h * w + j) * d + i];
				ref_rope(x, d, -pos[j], theta, 1, u);
			}
		/* keys along the queries' bias, of lengths from 0 to 60
		 * times it: logits spread over some 600 */
		for (t = 0; t < n; t++) {
			double c = 60.0 * tap_drand();

			for (i = 0; i < d; i++) {
				k[t * d + i] = (float)(c * (i % 2 ? 1 : -1) +
				    0.1 * tap_frand());
				v[t * d + i] = tap_frand();
			}
		}
		e.future = F;
		e.cov = cov;
		e.vnorm = 1;
		e.theta = theta;
		e.halves = 1;
		for (h = 0; h < g; h++)
			sel_ea_stats(q + (size_t)h * w * d, pos, w, d, n, &e,
			    mu + (size_t)h * d, cv + h * cs);
		sel_ea_score(mu, cv, k, v, n, nc, s0, g, d, &e, gqa, tmp, sc);
		ref_ea(qp, w, k, v, n, nc, s0, g, d, F, theta, 1, cov, 1, gqa,
		    ref);
		for (t = s0; t < nc; t++) {
			rf[t] = (float)ref[t];
			under += ref[t] < log(FLT_MIN);
		}
		for (t = s0; t < nc; t++)
			for (j = t + 1; j < nc; j++)
				if (sc[t] == sc[j] &&
				    fabs(ref[t] - ref[j]) > 1e-3)
					spurious++;
		sel_topk(sc + s0, nc - s0, kk, got);
		sel_topk(rf + s0, nc - s0, kk, want);
		/* a key may trade places with one whose reference score is
		 * within the float error of the boundary's */
		for (th = INFINITY, i = 0; i < kk; i++)
			th = ref[s0 + want[i]] < th ? ref[s0 + want[i]] : th;
		for (i = 0; i < kk; i++)
			moved += ref[s0 + got[i]] < th - 1e-3;
		ok(under > nc - s0 - kk && spurious == 0 && moved == 0,
		    "expected attention order, cov %d %s: %d of %d weights "
		    "below FLT_MIN, %d equal score pairs the reference tells "
		    "apart, %d of the top %d moved", cov, gqa ? "max" : "mean",
		    under, nc - s0, spurious, moved, kk);
		free(q);
		free(k);
		free(v);
		free(mu);
		free(cv);
		free(tmp);
		free(sc);
		free(qp);
		free(ref);
		free(rf);
		free(got);
		free(want);
	}
}

/* Top-k against a full sort: ties, k = 0, k = n, special values. */
static void
test_topk(void)
{
	int rep, n, k, i, bad = 0, nt = 0;

	for (rep = 0; rep < 400; rep++) {
		float *a;
		int *got, *want;

		n = tap_irand(1, rep < 300 ? 60 : 5000);
		a = malloc(sizeof(float) * n);
		got = malloc(sizeof(int) * (n + 1));
		want = malloc(sizeof(int) * (n + 1));
		fill_scores(a, n, rep % 4 == 0 ? 0 : tap_irand(1, 6));
		if (rep % 7 == 0)
			for (i = 0; i < n; i += 3)
				a[i] = (i & 1) ? -a[i] : (i % 5 ? INFINITY :
				    -0.0f);
		k = rep % 5 == 0 ? 0 : rep % 5 == 1 ? n : tap_irand(0, n);
		got[k] = 0x5a5a5a5a;
		for (i = 0; i < k; i++)
			got[i] = -1;
		sel_topk(a, n, k, got);
		ref_topk(a, n, k, want);
		nt++;
		if (memcmp(got, want, sizeof(int) * k) != 0 ||
		    got[k] != 0x5a5a5a5a) {
			if (bad++ < 5)
				diag("topk mismatch n=%d k=%d", n, k);
		}
		free(a);
		free(got);
		free(want);
	}
	ok(bad == 0, "topk equals full sort on %d inputs (%d bad)", nt, bad);
}

/* Selection: properties, and the candidates equal a brute-force top-k. */
static void
test_select(void)
{
	int rep, n, w, s, keep, got, exp, i, bad = 0, prop = 0;

	for (rep = 0; rep < 500; rep++) {
		float *p;
		int *idx, *want, c0, nc;

		n = tap_irand(1, rep < 400 ? 80 : 4000);
		w = tap_irand(0, n + 2);
		s = tap_irand(0, 6);
		keep = tap_irand(-3, n + 5);
		if (rep % 9 == 0)
			keep = 0;
		if (rep % 9 == 1)
			keep = n;
		p = malloc(sizeof(float) * n);
		idx = malloc(sizeof(int) * (n + 1));
		want = malloc(sizeof(int) * (n + 1));
		fill_scores(p, n, rep % 2 ? 3 : 0);
		got = sel_select(p, n, w, s, keep, idx);
		{
			int wv = w > n ? n : w, sv = s > n - wv ? n - wv : s;

			exp = keep < wv + sv ? wv + sv : keep > n ? n : keep;
			c0 = sv;
			nc = n - wv - sv;
			for (i = 1; i < got; i++)
				if (idx[i] <= idx[i - 1])
					prop++;
			for (i = 0; i < sv && i < got; i++)
				if (idx[i] != i)
					prop++;
			for (i = 0; i < wv; i++)
				if (got - wv + i < 0 ||
				    idx[got - wv + i] != n - wv + i)
					prop++;
			if (got != exp)
				prop++;
			ref_topk(p + c0, nc, exp - wv - sv, want);
			for (i = 0; i < exp - wv - sv; i++)
				if (idx[sv + i] != want[i] + c0)
					bad++;
		}
		free(p);
		free(idx);
		free(want);
	}
	ok(prop == 0, "select: sorted, sinks and window kept, clamped size "
	    "(%d violations)", prop);
	ok(bad == 0, "select: candidates equal brute-force top-k (%d bad)",
	    bad);
}

/* Hybrid split against a brute-force global sort. */
static void
test_hybrid(void)
{
	int rep, h, nc, total, fl, i, bad = 0, sumbad = 0;

	for (rep = 0; rep < 300; rep++) {
		float *buf;
		const float *p[12];
		int got[12], want[12], sum = 0;

		h = tap_irand(1, 12);
		nc = tap_irand(0, rep < 200 ? 30 : 2000);
		total = tap_irand(-2, h * nc + 3);
		fl = tap_irand(-1, nc + 2);
		if (rep % 6 == 0)
			fl = 0;
		buf = malloc(sizeof(float) * (h * nc + 1));
		fill_scores(buf, h * nc, rep % 3 ? tap_irand(1, 5) : 0);
		for (i = 0; i < h; i++)
			p[i] = buf + i * nc;
		for (i = 0; i < h; i++)
			got[i] = -1;
		sel_hybrid_split(p, h, nc, total, fl, got);
		ref_hybrid(p, h, nc, total, fl, want);
		for (i = 0; i < h; i++) {
			sum += got[i];
			if (got[i] != want[i])
				bad++;
		}
		if (sum != (total < 0 ? 0 : total > h * nc ? h * nc : total))
			sumbad++;
		free(buf);
	}
	ok(bad == 0, "hybrid split equals brute-force global sort (%d bad)",
	    bad);
	ok(sumbad == 0, "hybrid split sums to the clamped total (%d bad)",
	    sumbad);
}

/*
 * sel_rule against the counts the selection arrives at from the plan's raw
 * window, sinks and budgets: static heads keep plan_tokens, hybrid heads
 * their split share beside the window and sinks, as many rows in all as
 * the layer's budget.
 */
static void
test_rule(void)
{
	kvx_model_info info;
	kvx_plan *P;
	sel_counts c;
	float *sc = malloc(sizeof(float) * 1200);
	const float *pp[SEL_MAX_KV_HEADS];
	int *idx = malloc(sizeof(int) * 1200), got[SEL_MAX_KV_HEADS];
	int rep, l, h, n, w, pw, sk, keep, sum, bad = 0, hbad = 0, nh = 0;

	memset(&info, 0, sizeof info);
	info.arch = "llama";
	memset(info.fingerprint, '0', 64);
	info.n_layer = 3;
	info.head_dim = 8;
	for (rep = 0; rep < 600; rep++) {
		info.n_head_kv = rep % 50 == 0 ? SEL_MAX_KV_HEADS :
		    tap_irand(1, 8);
		info.n_head = info.n_head_kv * tap_irand(1, 3);
		if (plan_new(&info, rep & 1, 0.5, &P) != KVX_OK)
			break;
		P->window = tap_irand(1, KVX_WINDOW_MAX);
		P->sinks = rep % 5 == 0 ? 0 : tap_irand(0, 40);
		P->min_tokens = rep % 7 == 0 ? tap_irand(0, 200) : 0;
		P->alpha = tap_frand();
		if (rep % 3 == 0) {
			P->budget_kind = PLAN_BUDGET_TOKENS;
			P->ref_context = tap_irand(1, 1000);
		}
		for (h = 0; h < plan_n_budgets(P); h++)
			P->budgets[h] = rep % 11 == 0 ? 0 : tap_frand();
		n = tap_irand(2, rep < 400 ? 200 : 1000);
		w = tap_irand(1, KVX_WINDOW_MAX);
		l = tap_irand(0, 2);
		if (sel_rule(P, l, n, w, info.n_head_kv, &c) != 0) {
			bad++;
			kvx_plan_free(&P);
			continue;
		}
		pw = P->window < w ? P->window : w;
		pw = pw < n ? pw : n - 1;
		sk = P->sinks < n - pw ? P->sinks : n - pw;
		if (c.pw != pw || c.sinks != sk || c.fixed != pw + sk ||
		    c.ncand != n - pw - sk || c.hybrid != (rep & 1))
			bad++;
		fill_scores(sc, n, 0);
		if (!c.hybrid) {
			for (h = 0; h < info.n_head_kv; h++) {
				keep = plan_tokens(P, l, h, n);
				keep = keep > n ? n : keep;
				if (c.keep[h] != sel_select(sc, n, pw, P->sinks,
				    keep, idx))
					bad++;
			}
			kvx_plan_free(&P);
			continue;
		}
		nh++;
		keep = plan_tokens(P, l, -1, n);
		keep = keep < c.fixed ? c.fixed : keep > n ? n : keep;
		for (sum = h = 0; h < info.n_head_kv; h++) {
			sum += c.keep[h];
			pp[h] = sc + c.sinks;
		}
		if (sum != keep * info.n_head_kv || c.total != sum -
		    c.fixed * info.n_head_kv)
			hbad++;
		sel_hybrid_split(pp, info.n_head_kv, c.ncand, c.total, c.floor,
		    got);
		for (h = 0; h < info.n_head_kv; h++) {
			keep = got[h] + pw + P->sinks;
			keep = keep > n ? n : keep;
			if (sel_keep(&c, got[h]) != sel_select(sc, n, pw,
			    P->sinks, keep, idx))
				hbad++;
		}
		kvx_plan_free(&P);
	}
	ok(rep == 600 && bad == 0, "rule: window, sinks and static keeps "
	    "are the counts selection arrives at (%d of %d bad)", bad, rep);
	ok(nh > 0 && hbad == 0, "rule: hybrid keeps sum to the layer's "
	    "budget and match the split (%d of %d bad)", hbad, nh);
	info.n_head_kv = SEL_MAX_KV_HEADS + 1;
	info.n_head = info.n_head_kv;
	ok(plan_new(&info, 0, 0.5, &P) == KVX_OK &&
	    sel_rule(P, 0, 100, 32, info.n_head_kv, &c) == -1,
	    "rule: more than %d KV heads is refused", SEL_MAX_KV_HEADS);
	kvx_plan_free(&P);
	free(sc);
	free(idx);
}

/* sel_window_rows: a sliding window caps the rows, a global layer keeps
 * every token, and the cap is what a query at the next position sees. */
static void
test_window_rows(void)
{
	int n, w, bad = 0;

	for (n = 0; n < 700; n++)
		for (w = 0; w < 600; w += 37)
			if (sel_window_rows(w, n) != (w == 0 || n < w ? n : w))
				bad++;
	ok(bad == 0, "window rows: min(n, window), every n for a global "
	    "layer (%d bad)", bad);
	ok(sel_window_rows(512, 4096) == 512 && sel_window_rows(0, 4096) ==
	    4096 && sel_window_rows(512, 100) == 100 &&
	    sel_window_rows(512, -1) == 0, "window rows: gemma3's 512 of "
	    "4096, a global layer's 4096, a short prompt's 100");
}

/* attn_gqa and the split-K partials + combine against double precision. */
static void
test_attn(void)
{
	int rep, g, d, len, nch, c, i;

	for (rep = 0; rep < 40; rep++) {
		float *q, *k, *v, *out, *sc, *m, *l, *acc;
		double *ref, e1, e2;
		int cut[9];

		g = tap_irand(1, 8);
		d = tap_irand(1, 4) * 32;
		len = tap_irand(1, rep < 20 ? 50 : 3000);
		q = malloc(sizeof(float) * g * d);
		k = malloc(sizeof(float) * len * d);
		v = malloc(sizeof(float) * len * d);
		out = malloc(sizeof(float) * g * d);
		sc = malloc(sizeof(float) * g * len);
		m = malloc(sizeof(float) * 8 * g);
		l = malloc(sizeof(float) * 8 * g);
		acc = malloc(sizeof(float) * 8 * g * d);
		ref = malloc(sizeof(double) * g * d);
		for (i = 0; i < g * d; i++)
			q[i] = tap_frand() * 3.0f;
		for (i = 0; i < len * d; i++) {
			k[i] = tap_frand();
			v[i] = tap_frand();
		}
		ref_attn(q, g, d, k, v, len, 1.0 / sqrt((double)d), ref);
		for (i = 0; i < g * d; i++)
			out[i] = NAN;
		attn_gqa(q, g, d, k, v, len, d, 1.0f / sqrtf((float)d), sc,
		    out);
		e1 = relerr(out, ref, g * d);
		nch = 1 + rep % 7;
		if (nch > len)
			nch = len;
		cut[0] = 0;
		cut[nch] = len;
		for (c = 1; c < nch; c++)
			cut[c] = (int)((int64_t)len * c / nch);
		for (c = 0; c < nch; c++)
			attn_gqa_partial(q, g, d, k, v, cut[c], cut[c + 1], d,
			    1.0f / sqrtf((float)d), sc, m + c * g, l + c * g,
			    acc + (size_t)c * g * d);
		for (i = 0; i < g * d; i++)
			out[i] = NAN;
		attn_combine(nch, g, d, m, l, acc, out);
		e2 = relerr(out, ref, g * d);
		ok(e1 < 1e-5 && e2 < 1e-5, "attn g=%d d=%d len=%d: rel %.2g, "
		    "%d chunks rel %.2g", g, d, len, e1, nch, e2);
		free(q);
		free(k);
		free(v);
		free(out);
		free(sc);
		free(m);
		free(l);
		free(acc);
		free(ref);
	}
}

/* Scoring speed at the reference size, reported (not a timed test). */
static void
report_speed(void)
{
	int n = 8192, w = 32, g = 3, d = 64, i;
	float *q = malloc(sizeof(float) * g * w * d);
	float *k = malloc(sizeof(float) * n * d);
	float *sc = malloc(sizeof(float) * n), *po = malloc(sizeof(float) * n);
	int *idx = malloc(sizeof(int) * n);
	double t0, t1, t2, t3;

	for (i = 0; i < g * w * d; i++)
		q[i] = tap_frand();
	for (i = 0; i < n * d; i++)
		k[i] = tap_frand();
	t0 = kvx__now();
	sel_score(q, k, n, w, g, d, 0.125f, PLAN_GQA_MEAN, sc);
	t1 = kvx__now();
	sel_pool(sc, n - w, 7, PLAN_POOL_MAX, po);
	t2 = kvx__now();
	sel_topk(po, n - w, (n - w) / 4, idx);
	t3 = kvx__now();
	diag("n=%d w=%d g=%d d=%d: score %.2f ms, pool %.3f ms, top-k %.3f ms",
	    n, w, g, d, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3);
	ok(sc[0] == sc[0] && idx[0] >= 0, "reference-size run finished");
	free(q);
	free(k);
	free(sc);
	free(po);
	free(idx);
}

int
main(void)
{
	tap_rng = 0x9e3779b97f4a7c15ULL;
	test_score();
	test_ea();
	test_ea_order();
	test_ea_moments();
	test_pool();
	test_topk();
	test_select();
	test_hybrid();
	test_rule();
	test_window_rows();
	test_attn();
	report_speed();
	return tap_done();
}
