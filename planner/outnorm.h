/*
 * outnorm.h - how much a head's attention-output error moves the residual
 * stream, through the output projection W_o and, where the architecture
 * has one (gemma3), the RMSNorm applied to the attention block's output
 * before the residual add.
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#ifndef KVX_OUTNORM_H
#define KVX_OUTNORM_H

#define OUTNORM_MAX_D	256	/* head_dim the output objective handles */

/*
 * The post-attention norm, linearised at one query's attention output
 * y = W_o att (E values): with r^2 = |y|^2 / E + eps and Gamma the norm's
 * gains, a change dy of y moves the residual by
 * (Gamma / r) (dy - y (y . dy) / (E r^2)).  For query head q's error e,
 * dy = W_o,q e, and a, b carry y and Gamma^2 y back through W_o,q.
 */
typedef struct outnorm {
	double	 a[OUTNORM_MAX_D];	/* W_o,q^T y */
	double	 b[OUTNORM_MAX_D];	/* W_o,q^T Gamma^2 y */
	double	 inv_r2;		/* 1 / r^2 */
	double	 c;			/* 1 / (E r^2) */
	double	 gy2;			/* |Gamma y|^2 */
} outnorm;

/* G = W_o,q^T diag(gain^2) W_o,q (D x D) for the column block of query
 * head q of wo (rows E, cols the heads' D each); gain NULL: no norm. */
void	outnorm_gram(const float *wo, int E, int cols, int q, int D,
	    const float *gain, float *G);
/* y = wo att: one query's attention block output (E values). */
void	outnorm_output(const float *wo, int E, int cols, const float *att,
	    double *y);
/* The norm linearised at y for query head q's errors. */
void	outnorm_setup(const float *wo, int E, int cols, int q, int D,
	    const float *gain, float eps, const double *y, outnorm *n);
/* |residual change|^2 of head error e (D values): e^T G e through W_o
 * alone when n is NULL, else through the norm linearised in n (G from
 * outnorm_gram with the norm's gains). */
double	outnorm_err(const float *G, const outnorm *n, const double *e, int D);

#endif
