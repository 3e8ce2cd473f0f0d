/*
 * test-outnorm.c - the output objective's error through a post-attention
 * RMSNorm (planner/outnorm.c), against a finite difference of the norm
 * itself: for random W_o, gains, attention outputs and head errors, the
 * linearised |residual change|^2 equals the central difference of
 * RMSNorm(W_o att) along the error; without a norm it is |W_o,q e|^2
 * computed directly.  And the profiler's switch, a layer's
 * post_attn_norm, is set on every layer of gemma3 models (the tiny test
 * model, Gemma 3 270M) and on no layer of llama and qwen2 ones (SmolLM2,
 * Qwen2.5-Coder), each where present.
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvx.h"
#include "model.h"
#include "outnorm.h"
#include "tap.h"

#define E	48
#define H	3
#define D	8
#define EPS	1e-6f

/* Uniform in [lo, hi). */
static double
unif(double lo, double hi)
{
	return lo + (hi - lo) * tap_drand();
}

/* out = gain * y / sqrt(|y|^2 / E + eps), in double: the reference. */
static void
ref_norm(const double *y, const float *gain, double *out)
{
	double ss = 0, inv;
	int i;

	for (i = 0; i < E; i++)
		ss += y[i] * y[i];
	inv = 1 / sqrt(ss / E + EPS);
	for (i = 0; i < E; i++)
		out[i] = y[i] * inv * gain[i];
}

/* y = wo (att + t e on head q), in double. */
static void
ref_output(const float *wo, const float *att, int q, const double *e,
    double t, double *y)
{
	int i, c;

	for (i = 0; i < E; i++) {
		y[i] = 0;
		for (c = 0; c < H * D; c++) {
			double a = att[c];

			if (c / D == q)
				a += t * e[c % D];
			y[i] += (double)wo[i * H * D + c] * a;
		}
	}
}

/* The norm's case: the linearisation against a central difference. */
static void
check_norm(int trial, double yscale)
{
	float wo[E * H * D], gain[E], att[H * D], G[D * D];
	double e[D], y[E], yp[E], ym[E], np[E], nm[E], h = 1e-4;
	outnorm n;
	int i, q;

	for (i = 0; i < E * H * D; i++)
		wo[i] = (float)unif(-1, 1);
	for (i = 0; i < E; i++)
		gain[i] = (float)unif(0.1, 20);
	for (i = 0; i < H * D; i++)
		att[i] = (float)(unif(-1, 1) * yscale);
	for (q = 0; q < H; q++) {
		double ref = 0, got;

		for (i = 0; i < D; i++)
			e[i] = unif(-1, 1) * yscale;
		outnorm_output(wo, E, H * D, att, y);
		outnorm_gram(wo, E, H * D, q, D, gain, G);
		outnorm_setup(wo, E, H * D, q, D, gain, EPS, y, &n);
		got = outnorm_err(G, &n, e, D);
		ref_output(wo, att, q, e, h, yp);
		ref_output(wo, att, q, e, -h, ym);
		ref_norm(yp, gain, np);
		ref_norm(ym, gain, nm);
		for (i = 0; i < E; i++)
			ref += pow((np[i] - nm[i]) / (2 * h), 2);
		ok(fabs(got - ref) <= 1e-4 * ref, "trial %d head %d, attention "
		    "scale %g: through the norm %.8g, finite difference %.8g",
		    trial, q, yscale, got, ref);
	}
}

/* No norm: e^T G e is |W_o,q e|^2. */
static void
check_plain(void)
{
	float wo[E * H * D], G[D * D];
	double e[D];
	int i, q, c;

	for (i = 0; i < E * H * D; i++)
		wo[i] = (float)unif(-1, 1);
	for (q = 0; q < H; q++) {
		double ref = 0, got;

		for (i = 0; i < D; i++)
			e[i] = unif(-1, 1);
		for (i = 0; i < E; i++) {
			double t = 0;

			for (c = 0; c < D; c++)
				t += (double)wo[i * H * D + q * D + c] * e[c];
			ref += t * t;
		}
		outnorm_gram(wo, E, H * D, q, D, NULL, G);
		got = outnorm_err(G, NULL, e, D);
		ok(fabs(got - ref) <= 1e-5 * ref, "head %d without a norm: "
		    "%.8g, directly %.8g", q, got, ref);
	}
}

/* Every layer of a gemma3 model at path has a post-attention norm, and no
 * layer of a llama or qwen2 one. */
static void
check_model(const char *path)
{
	kvx_model *m = NULL;
	int l, n = 0, want;

	if (path == NULL || access(path, R_OK) != 0) {
		ok(1, "post-attention norms # SKIP %s is absent",
		    path ? path : "KVX_MODEL");
		return;
	}
	if (!ok(kvx_model_open(path, NULL, &m) == KVX_OK, "open %s", path))
		return;
	want = strcmp(m->arch, "gemma3") == 0;
	for (l = 0; l < m->info.n_layer; l++)
		n += m->L[l].post_attn_norm != NULL;
	ok(n == (want ? m->info.n_layer : 0), "%s (%s): %d of %d layers "
	    "have a post-attention norm, expected %s", path, m->arch, n,
	    m->info.n_layer, want ? "all" : "none");
	kvx_model_close(&m);
}

int
main(void)
{
	const char *src = getenv("top_srcdir");
	static const char *const models[] = {
		"tests/data/tiny-gemma3.gguf",
		"models/gemma-3-270m-q4_k_m.gguf",
		"models/SmolLM2-135M-Instruct.Q4_1.gguf",
		"models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
	};
	char path[4096];
	int t;

	for (t = 0; t < 4; t++)
		check_norm(t, 1);
	/* a layer whose raw output is small: its errors count more */
	check_norm(4, 1e-3);
	check_norm(5, 1e3);
	check_plain();
	for (t = 0; t < 4; t++) {
		snprintf(path, sizeof path, "%s/%s", src ? src : ".",
		    models[t]);
		check_model(path);
	}
	check_model(getenv("KVX_MODEL"));
	return tap_done();
}
