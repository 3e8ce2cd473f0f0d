/*
 * outnorm.c - a head's attention-output error as the residual stream sees
 * it (see outnorm.h).  Without a post-attention norm the residual moves by
 * W_o,q e; with one, the same change is divided by the RMS of the whole
 * attention output and scaled by the norm's gains, which differ from layer
 * to layer by orders of magnitude: a layer whose raw output is small has
 * its errors magnified, not shrunk.
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stddef.h>

#include "outnorm.h"

/* The Gram matrix of W_o,q's columns, each row e weighted by gain[e]^2. */
void
outnorm_gram(const float *wo, int E, int cols, int q, int D,
    const float *gain, float *G)
{
	int a, b, e;

	for (a = 0; a < D; a++)
		for (b = a; b < D; b++) {
			double t = 0;

			for (e = 0; e < E; e++) {
				double p = (double)wo[(size_t)e * cols +
				    q * D + a] * wo[(size_t)e * cols + q * D +
				    b];

				t += gain != NULL ? p * gain[e] * gain[e] : p;
			}
			G[a * D + b] = G[b * D + a] = (float)t;
		}
}

/* The attention block's output before the norm. */
void
outnorm_output(const float *wo, int E, int cols, const float *att,
    double *y)
{
	int e, c;

	for (e = 0; e < E; e++) {
		double t = 0;

		for (c = 0; c < cols; c++)
			t += (double)wo[(size_t)e * cols + c] * att[c];
		y[e] = t;
	}
}

/* Linearise the norm at y for query head q. */
void
outnorm_setup(const float *wo, int E, int cols, int q, int D,
    const float *gain, float eps, const double *y, outnorm *n)
{
	double ss = 0, r2;
	int e, d;

	for (e = 0; e < E; e++)
		ss += y[e] * y[e];
	r2 = ss / E + eps;
	n->inv_r2 = 1 / r2;
	n->c = 1 / (E * r2);
	n->gy2 = 0;
	for (d = 0; d < D; d++)
		n->a[d] = n->b[d] = 0;
	for (e = 0; e < E; e++) {
		const float *w = wo + (size_t)e * cols + q * D;
		double g2 = (double)gain[e] * gain[e];

		n->gy2 += g2 * y[e] * y[e];
		for (d = 0; d < D; d++) {
			n->a[d] += w[d] * y[e];
			n->b[d] += w[d] * g2 * y[e];
		}
	}
}

/* e^T G e, less the norm's projection onto y where there is a norm. */
double
outnorm_err(const float *G, const outnorm *n, const double *e, int D)
{
	double t = 0, ae = 0, be = 0;
	int a, b;

	for (a = 0; a < D; a++) {
		double row = 0;

		for (b = 0; b < D; b++)
			row += G[a * D + b] * e[b];
		t += e[a] * row;
	}
	if (n == NULL)
		return t;
	for (a = 0; a < D; a++) {
		ae += n->a[a] * e[a];
		be += n->b[a] * e[a];
	}
	return n->inv_r2 * (t - 2 * n->c * ae * be + n->c * n->c * n->gy2 *
	    ae * ae);
}
