/*
 * profile.c - sampled profiling on the lightweight variant of the model,
 * retention curves, and the profile file.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * The lightweight variant is the model's forward pass with two cuts: the
 * final layer's FFN and the LM head are skipped (nothing after the last
 * attention feeds a score), and the queries before the observation window
 * attend only to their last span keys.  The window queries still attend
 * over the whole prefix, so every layer's scores are exact for the hidden
 * states the variant produces.  Each layer's K/V is scored and freed as
 * soon as its attention has run, so the cache holds one layer at a time.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "arch.h"
#include "backend.h"
#include "kvcache.h"
#include "kvzip.h"
#include "model.h"
#include "outnorm.h"
#include "plan.h"
#include "probe.h"
#include "profile.h"
#include "select.h"
#include "util.h"

#define PROFILE_MAGIC		"kvx-profile"
#define PROFILE_VERSION		2	/* 2: retrieval curves */
#define CORPUS_MAX_BYTES	((size_t)256 << 20)

/* What the layer hook needs. */
struct prof_run {
	const prof_opts	*o;
	kvx_model	*m;
	kv_cache	*kv;
	int		 n;		/* tokens of the measurement */
	int		 extra;		/* of them, answer tokens after the
					   prompt (a probe), else 0 */
	int		 run;		/* tokens the forward ran */
	int		 prose;		/* a probe window's prose and
					   statements before the question,
					   measured as prose; else 0 */
	int		 H, Hkv, D, E;
	double		*acc;		/* where this sample's curves go: */
	double		*sum;		/* [L][Hkv][G] prose curves summed */
	double		*sumr;		/* [L][Hkv][G] probe curves summed */
	float		*score, *pooled, *cand;
	float		*wwin;		/* the observation window's queries,
					   H x window x D */
	float		*ea;		/* its statistics and logits */
	float		*kz;		/* kvzip: the repeat pass's scores of
					   the sample, [L][Hkv][kz_n] */
	int		 kz_n;		/* the prompt's tokens */
	int		 ctx;		/* a question-after probe's context
					   before its question, which alone
					   is compressed; else 0 */
	float		*wpre;		/* a probe window's queries before the
					   question, H x w x D */
	double		*prefix;
	/* output objective */
	float		*gram;		/* [L][H][D][D]: W_o,q^T W_o,q, rows
					   weighted by the post-attention
					   norm's gains squared where the
					   architecture has that norm */
	double		*y;		/* [row][E]: attention block outputs
					   at the evaluated queries (layers
					   with a post-attention norm) */
	float		*att;		/* [H][D]: one row's head outputs */
	outnorm		*nrm;		/* one query head's norm at a row */
	int		*order;		/* candidates, best pooled first */
	float		*prob;		/* one query's softmax */
	double		*err;		/* [checkpoint] */
	double		 hook_s;	/* seconds in the hook (scores and
					   curves), the rest being the
					   forward */
};

/* Window queries evaluated for the output objective: every OUT_STRIDE-th
 * from the last, which keeps profiling within its time goal. */
#define OUT_STRIDE	4
/* Budget levels where the output error is computed exactly; the grid in
 * between is interpolated. */
#define OUT_CHECKS	33

/* Fill the profiling options with their defaults. */
void
prof_opts_init(prof_opts *o)
{
	memset(o, 0, sizeof *o);
	o->samples = 8;
	o->sample_tokens = 2048;
	o->profile_tokens = 1024;
	o->seed = 1;
	o->span = 512;
	o->grid = 256;
	o->window = 32;
	o->pool = PLAN_POOL_MAX;
	o->pool_kernel = 7;
	o->gqa = PLAN_GQA_MEAN;
	o->scorer = PLAN_SCORER_SNAPKV;
	o->sinks = 4;
	o->objective = PROF_OBJ_AUTO;
	o->probes = 4;
	o->probe_share = 1;
	o->device = KVX_DEVICE_AUTO;
}

/* Resolve device to the CPU or the GPU (profile.h says how). */
kvx_status
profile_device(const kvx_model *m, int device, int *out)
{
	const ctx_ops *gpu = gpu_ops_get();
	const char *e = getenv("KVX_DEVICE");
	int usable;

	*out = KVX_DEVICE_CPU;
	if (device == KVX_DEVICE_CPU)
		return KVX_OK;
	if (device != KVX_DEVICE_AUTO && device != KVX_DEVICE_GPU)
		return kvx__fail(KVX_ERR_ARG, "device %d is not one of 0 "
		    "(auto), 1 (CPU), 2 (GPU)", device);
	usable = gpu != NULL && gpu->profile != NULL && gpu->available();
	if (device == KVX_DEVICE_AUTO) {
		if (usable && (e == NULL || strcmp(e, "cpu") != 0) &&
		    gpu->runs(m))
			*out = KVX_DEVICE_GPU;
		return KVX_OK;
	}
	if (gpu == NULL || gpu->profile == NULL)
		return kvx__fail(KVX_ERR_DEVICE, "--device gpu: libkvx was "
		    "built without CUDA (configure --with-cuda, or use "
		    "--device cpu)");
	if (!usable)
		return kvx__fail(KVX_ERR_DEVICE, "--device gpu: no CUDA "
		    "device is usable (use --device cpu)");
	if (!gpu->runs(m))
		return kvx__fail(KVX_ERR_DEVICE, "--device gpu: the GPU "
		    "forward does not run this model's shapes (use --device "
		    "cpu)");
	*out = KVX_DEVICE_GPU;
	return KVX_OK;
}

/* Release a profile and clear the pointer. */
void
profile_free(profile **pp)
{
	if (*pp == NULL)
		return;
	free((*pp)->R);
	free((*pp)->Rr);
	free(*pp);
	*pp = NULL;
}

/* Fraction of grid level j. */
double
profile_level(const profile *p, int j)
{
	return (double)j / (double)(p->grid - 1);
}

/* R(l, h, f), linear between grid levels. */
double
profile_eval(const profile *p, int layer, int head, double f)
{
	return profile_eval_curve(p, p->R, layer, head, f);
}

/* Rr(l, h, f), linear between grid levels. */
double
profile_eval_retrieval(const profile *p, int layer, int head, double f)
{
	return profile_eval_curve(p, p->Rr, layer, head, f);
}

/* One of the profile's curves at f, linear between grid levels. */
double
profile_eval_curve(const profile *p, const double *curves, int layer,
    int head, double f)
{
	const double *r = curves + ((size_t)layer * p->n_head_kv + head) *
	    p->grid;
	double x;
	int j;

	if (f <= 0)
		return r[0];
	if (f >= 1)
		return r[p->grid - 1];
	x = f * (p->grid - 1);
	j = (int)x;
	if (j >= p->grid - 1)
		return r[p->grid - 1];
	return r[j] + (x - j) * (r[j + 1] - r[j]);
}

/* Uniform integer in [0, n]. */
static int64_t
rng_upto(uint64_t *s, int64_t n)
{
	uint64_t range = (uint64_t)n + 1, lim, x;

	lim = UINT64_MAX - UINT64_MAX % range;
	do
		x = kvx__splitmix64(s);
	while (x >= lim);
	return (int64_t)(x % range);
}

/* Tokenize every file and concatenate the ids (profile.h). */
kvx_status
profile_load_corpus(const kvx_model *m, const char *const *files,
    int n_files, int32_t **ids, int64_t *n_ids, char *names,
    size_t names_size)
{
	int32_t *all = NULL, *nb;
	int64_t n_all = 0;
	kvx_status rc;
	size_t len = 0;
	char *text;
	int i, n, cap;

	*ids = NULL;
	*n_ids = 0;
	names[0] = '\0';
	for (i = 0; i < n_files; i++) {
		const char *base = strrchr(files[i], '/');

		base = base ? base + 1 : files[i];
		if (strlen(names) + strlen(base) + 2 < names_size) {
			if (names[0] != '\0')
				strcat(names, ",");
			strcat(names, base);
		}
		if ((rc = kvx__read_file(files[i], CORPUS_MAX_BYTES, &text,
		    &len)) != KVX_OK)
			goto fail;
		if (len > INT32_MAX / 2) {
			free(text);
			rc = kvx__fail(KVX_ERR_IO, "%s: too large", files[i]);
			goto fail;
		}
		cap = (int)len + 16;
		nb = realloc(all, ((size_t)n_all + (size_t)cap) * sizeof *all);
		if (nb == NULL) {
			free(text);
			rc = kvx__fail(KVX_ERR_NOMEM, "out of memory for the "
			    "corpus tokens");
			goto fail;
		}
		all = nb;
		rc = kvx_tokenize(m, text, len, 0, all + n_all, cap, &n);
		free(text);
		if (rc != KVX_OK) {
			rc = kvx__fail(rc, "%s: %s", files[i], kvx_errmsg());
			goto fail;
		}
		n_all += n;
	}
	*ids = all;
	*n_ids = n_all;
	return KVX_OK;
fail:
	free(all);
	return rc;
}

/* qsort order: larger floats first. */
static int
cmp_desc(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return (x < y) - (x > y);
}

/* Pooled score of candidate a, for qsort_r-free ordering. */
static const float *order_key;

/* qsort order of candidate indices: larger pooled score first, then the
 * earlier position (the runtime's top-k breaks ties the same way). */
static int
cmp_order(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	float fx = order_key[x], fy = order_key[y];

	if (fx != fy)
		return (fx < fy) - (fx > fy);
	return (x > y) - (x < y);
}

/* Gram matrices of W_o's column blocks, one per query head and layer,
 * through the post-attention norm's gains where the layer has one. */
static kvx_status
build_gram(struct prof_run *r)
{
	const kvx_model_info *mi = kvx_model_get_info(r->m);
	int L = mi->n_layer, H = r->H, D = r->D, l, q;
	kvx_status rc;

	r->gram = kvx__malloc_array((size_t)L * H * D * D, sizeof(float));
	if (r->gram == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	for (l = 0; l < L; l++) {
		mat *wo = &r->m->L[l].wo;

		if ((rc = model_mat_f32(r->m, wo)) != KVX_OK)
			return rc;
		for (q = 0; q < H; q++)
			outnorm_gram(wo->f, r->E, wo->cols, q, D,
			    r->m->L[l].post_attn_norm, r->gram +
			    ((size_t)l * H + q) * D * D);
	}
	return KVX_OK;
}

/*
 * Softmax of query qv over the keys a query at position vis - 1 sees in
 * layer l (a sliding-window layer's last W) into r->prob, unnormalised,
 * zero before the window; returns the sum.
 */
static double
row_softmax(struct prof_run *r, int l, const kv_seg *sg, const float *qv,
    int vis)
{
	int D = r->D, lo, i, d;
	float scale = 1.0f / sqrtf((float)D), mx = -INFINITY;
	double z = 0;

	lo = vis - sel_window_rows(r->m->L[l].window, vis);
	for (i = 0; i < lo; i++)
		r->prob[i] = 0;
	for (i = lo; i < vis; i++) {
		const float *k = sg->k + (size_t)i * D;
		float dt = 0;

		for (d = 0; d < D; d++)
			dt += qv[d] * k[d];
		r->prob[i] = dt * scale;
		if (r->prob[i] > mx)
			mx = r->prob[i];
	}
	for (i = lo; i < vis; i++) {
		r->prob[i] = expf(r->prob[i] - mx);
		z += r->prob[i];
	}
	return z;
}

/*
 * Layer l's attention block output, before its post-attention norm, at
 * each evaluated query rows[0..nr) into r->y: every query head attends
 * over the whole cache it sees, as the lightweight variant's window
 * queries do.
 */
static void
block_outputs(struct prof_run *r, int seq, int l, const float *wq, int w,
    const int *rows, int nr)
{
	int D = r->D, g = r->H / r->Hkv, qh, ri, i, d;
	mat *wo = &r->m->L[l].wo;
	float *att = r->att;

	for (ri = 0; ri < nr; ri++) {
		int vis = r->n - w + rows[ri] + 1;

		for (qh = 0; qh < r->H; qh++) {
			const kv_seg *sg = kv_seg_at(r->kv, seq, l, qh / g);
			double z = row_softmax(r, l, sg, wq + ((size_t)qh * w +
			    rows[ri]) * D, vis), o[OUTNORM_MAX_D];

			for (d = 0; d < D; d++)
				o[d] = 0;
			for (i = 0; i < vis; i++) {
				const float *v = sg->v + (size_t)i * D;
				double pi = r->prob[i] / z;

				for (d = 0; d < D; d++)
					o[d] += pi * v[d];
			}
			for (d = 0; d < D; d++)
				att[qh * D + d] = (float)o[d];
		}
		outnorm_output(wo->f, r->E, wo->cols, att, r->y +
		    (size_t)ri * r->E);
	}
}

/*
 * Output objective for KV head h of layer l: add to err[c] the residual
 * perturbation of keeping the sinks, every token from nc on (the
 * observation window, and a probe's answer) and the first k_c candidates
 * of the order, summed over the group's query heads and the evaluated
 * queries rows[0..nr) of the hook's w window queries (row j sits at
 * position n - w + j and sees the tokens up to it).  The perturbation is
 * |W_o,q (o - o_kept)|^2, or where the layer normalises its attention
 * output, that change through the norm linearised at the row's output
 * (r->y, from block_outputs).
 */
static void
output_errors(struct prof_run *r, int l, int h, const float *wq, int w,
    const int *rows, int nr, const kv_seg *sg, int s, int nc, int m,
    const int *kc, int nck)
{
	int n = r->n, D = r->D, g = r->H / r->Hkv, q, j, i, c, t, d, ri;
	const float *gain = r->m->L[l].post_attn_norm;
	const mat *wo = &r->m->L[l].wo;
	float eps = kvx_model_get_info(r->m)->rms_eps;
	double o[OUTNORM_MAX_D], A[OUTNORM_MAX_D], e[OUTNORM_MAX_D], P;

	for (q = 0; q < g; q++) {
		int qh = h * g + q;
		const float *G = r->gram + ((size_t)l * r->H + qh) * D * D;

		for (ri = 0; ri < nr; ri++) {
			int vis;
			double z;

			j = rows[ri];
			vis = n - w + j + 1;
			z = row_softmax(r, l, sg, wq + ((size_t)qh * w + j) * D,
			    vis);
			if (gain != NULL)
				outnorm_setup(wo->f, r->E, wo->cols, qh, D,
				    gain, eps, r->y + (size_t)ri * r->E,
				    r->nrm);
			for (d = 0; d < D; d++)
				o[d] = A[d] = 0;
			P = 0;
			for (i = 0; i < vis; i++) {
				const float *v = sg->v + (size_t)i * D;
				double pi = r->prob[i] / z;
				int always = i < s || i >= nc;

				for (d = 0; d < D; d++)
					o[d] += pi * v[d];
				if (always) {
					for (d = 0; d < D; d++)
						A[d] += pi * v[d];
					P += pi;
				}
			}
			/* walk the candidates in the runtime's order */
			for (c = 0, t = 0; c < nck; c++) {
				for (; t < kc[c] && t < m; t++) {
					int pos = r->order[t];
					const float *v = sg->v + (size_t)pos * D;
					double pi = r->prob[pos] / z;

					for (d = 0; d < D; d++)
						A[d] += pi * v[d];
					P += pi;
				}
				for (d = 0; d < D; d++)
					e[d] = o[d] - (P > 0 ? A[d] / P : 0);
				r->err[c] += outnorm_err(G, gain != NULL ?
				    r->nrm : NULL, e, D);
			}
		}
	}
}

/*
 * Expected Attention scores of KV head h's candidates into r->score, as
 * the runtime computes them: statistics of the last of the wa_n prompt
 * queries at hand (stride rows per head), the scoring window's w tokens
 * left out.
 */
static void
prof_ea(struct prof_run *r, const kv_seg *sg, int l, int h, const float *wa,
    int stride, int wa_n, int w, int s)
{
	int g = r->H / r->Hkv, D = r->D, n = r->n - r->extra, q;
	int nq = PLAN_EA_QUERIES < wa_n ? PLAN_EA_QUERIES : wa_n;
	float *mu = r->ea, *cov = mu + (size_t)g * D;
	sel_ea e;

	e.future = PLAN_EA_FUTURE;
	e.cov = PLAN_COV_FULL;
	e.vnorm = 1;
	e.theta = r->m->L[l].theta;
	e.halves = r->m->desc->rope == ROPE_HALVES;
	for (q = 0; q < g; q++)
		sel_ea_stats(wa + ((size_t)(h * g + q) * stride + (wa_n - nq)) *
		    D, sg->pos + n - nq, nq, D, n, &e, mu + (size_t)q * D,
		    cov + (size_t)q * D * D);
	sel_ea_score(mu, cov, sg->k, sg->v, n, n - w, s, g, D, &e,
	    r->o->gqa, cov + (size_t)g * D * D, r->score);
}

/* Expected Attention's log scores as weights, to the scale of the
 * largest: the attention-mass objective sums them. */
static void
ea_linear(float *a, int n)
{
	float mx = -INFINITY;
	int i;

	for (i = 0; i < n; i++)
		mx = a[i] > mx ? a[i] : mx;
	for (i = 0; i < n; i++)
		a[i] = mx == -INFINITY ? 0.0f : expf(a[i] - mx);
}

/*
 * Add one head's output-objective curve to sum: the errors at the budget
 * checkpoints, interpolated over the grid and normalised by xn.  The
 * budget is a share of the ck compressed rows (the prompt, or a
 * question-after probe's context), of which nc end at the window.
 */
static void
add_output_curve(struct prof_run *r, int l, int h, const float *wq, int w,
    const int *rows, int nr, const kv_seg *sg, int s, int nc, int m,
    int ck, double xn, double *sum)
{
	int G = r->o->grid, kc[OUT_CHECKS];
	int jc[OUT_CHECKS], c, i, j;

	for (i = 0; i < m; i++)
		r->order[i] = s + i;
	order_key = r->pooled;
	qsort(r->order, (size_t)m, sizeof(int), cmp_order);
	for (c = 0; c < OUT_CHECKS; c++) {
		int64_t k;

		jc[c] = (int)llround((double)c * (G - 1) / (OUT_CHECKS - 1));
		k = llround((double)jc[c] / (G - 1) * ck) - (ck - nc) - s;
		kc[c] = k < 0 ? 0 : k > m ? m : (int)k;
		r->err[c] = 0;
	}
	output_errors(r, l, h, wq, w, rows, nr, sg, s, nc, m, kc, OUT_CHECKS);
	for (c = 0; c + 1 < OUT_CHECKS; c++)
		for (j = jc[c]; j <= jc[c + 1]; j++) {
			double a = (double)(j - jc[c]) / (jc[c + 1] - jc[c]), v;

			v = 1 - ((1 - a) * r->err[c] + a * r->err[c + 1]) /
			    (xn > 0 ? xn : 1);
			if (j < jc[c + 1] || c + 2 == OUT_CHECKS)
				sum[j] += v < 0 ? 0 : v > 1 ? 1 : v;
		}
}

/*
 * KVzip's scores of a sample, before its measured forward: the np prompt
 * tokens run through the full model (every layer's cache whole, as the
 * runtime's prefill leaves it), then the repeat pass scores them into
 * r->kz with the plan format's default chunk and request, and the cache
 * is emptied again.  seq and pos hold np entries (0 and 0, 1, ...).
 */
static kvx_status
prof_kvzip(struct prof_run *r, kvx_pool *pool, fw_scratch *scr,
    const int32_t *ids, int np, const int *seq, const int *pos)
{
	kvx_plan P;
	fw_batch b;
	kvx_status rc;

	memset(&P, 0, sizeof P);
	plan_set_scorer(&P, PLAN_SCORER_KVZIP);
	memset(&b, 0, sizeof b);
	b.n = np;
	b.ids = ids;
	b.seq = seq;
	b.pos = pos;
	if ((rc = model_forward(r->m, r->kv, scr, &b)) == KVX_OK)
		rc = kvzip_pass(r->m, r->kv, pool, &P, 0, ids, np, r->kz);
	kv_seq_clear(r->kv, 0);
	return rc;
}

/* KVzip scores of layer l's head h's nc candidates into r->score, the s
 * sinks at 0 as the runtime sets them. */
static void
prof_kvzip_scores(struct prof_run *r, int l, int h, int np, int nc, int s)
{
	memcpy(r->score, r->kz + ((size_t)l * r->Hkv + h) * r->kz_n,
	    (size_t)nc * sizeof(float));
	memset(r->score, 0, (size_t)s * sizeof(float));
}

/*
 * One measurement of layer l: score each KV head with the observation
 * window's queries, turn the pooled scores into a retention curve and add
 * it to r->acc.  The first r->n rows of the layer's K/V are measured, and
 * the w queries end at row r->n - 1.
 * The w queries end with r->extra answer tokens on a probe; before
 * them come the prompt's last queries: under expected-attention its
 * statistics' queries, whose last window are the observation window.  A
 * prose sample's objective is measured at the window queries, a probe's
 * at the queries that produce its answer: the prompt's last token and
 * the answer's tokens but the last.  A question-after probe (r->ctx > 0)
 * compresses its context alone: the window and the budget's share are
 * the context's, and the question's rows are kept with the answer's.
 */
static kvx_status
measure_layer(struct prof_run *r, int seq, int l, const float *wq, int w,
    const float *xw)
{
	const prof_opts *o = r->o;
	int g = r->H / r->Hkv, n = r->n, G = o->grid, h, i, j;
	int x = r->extra, np = n - x, wp = w - x, ew = o->window, nr = 0;
	int ck = x > 0 && r->ctx > 0 ? r->ctx : np;
	float scale = 1.0f / sqrtf((float)r->D);
	const float *sw = wq;
	int rows[KVX_WINDOW_MAX];
	double xn = 0;

	if (wp < ew)
		ew = wp;
	if (wp > ew || x > 0) {
		for (i = 0; i < r->H; i++)
			memcpy(r->wwin + (size_t)i * ew * r->D,
			    wq + ((size_t)i * w + (wp - ew)) * r->D,
			    (size_t)ew * r->D * sizeof(float));
		sw = r->wwin;
	}
	if (x > 0)
		for (j = wp - 1; j < w; j++)
			rows[nr++] = j;
	else
		for (j = w - 1; j >= w - ew; j -= OUT_STRIDE)
			rows[nr++] = j;
	for (i = 0; i < nr; i++)
		for (j = 0; j < r->E; j++)
			xn += o->objective == PROF_OBJ_ABS ? 1.0 :
			    (double)xw[(size_t)rows[i] * r->E + j] *
			    xw[(size_t)rows[i] * r->E + j];
	xn *= g;
	if (o->objective != PROF_OBJ_MASS && r->m->L[l].post_attn_norm != NULL)
		block_outputs(r, seq, l, wq, w, rows, nr);
	for (h = 0; h < r->Hkv; h++) {
		kv_seg *sg = kv_seg_at(r->kv, seq, l, h);
		double *sum = r->acc + ((size_t)l * r->Hkv + h) * G;
		int nc = ck - ew, s = o->sinks < nc ? o->sinks : nc, m = nc - s;
		double z = 0, sink = 0;

		if (sg->len != r->run)
			return kvx__fail(KVX_ERR_ARG, "layer %d head %d holds "
			    "%d rows, expected %d", l, h, sg->len, r->run);
		if (o->scorer == PLAN_SCORER_EA)
			prof_ea(r, sg, l, h, wq, w, wp, ew, s);
		else if (o->scorer == PLAN_SCORER_KVZIP)
			prof_kvzip_scores(r, l, h, np, nc, s);
		else
			sel_score(sw + (size_t)h * g * ew * r->D, sg->k, np, ew,
			    g, r->D, scale, o->gqa, r->score);
		sel_pool(r->score, nc, o->pool_kernel, sel_pool_kind(o->scorer,
		    o->pool), r->pooled);
		/* the runtime selects a sliding-window layer's rows among the
		 * last ones only: the earlier candidates come last */
		for (i = 0; i < ck - sel_window_rows(r->m->L[l].window, ck) &&
		    i < nc; i++)
			r->pooled[i] = o->scorer == PLAN_SCORER_EA ? -INFINITY :
			    0;
		if (o->objective != PROF_OBJ_MASS) {
			add_output_curve(r, l, h, wq, w, rows, nr, sg, s, nc, m,
			    ck, xn, sum);
			continue;
		}
		if (o->scorer == PLAN_SCORER_EA)
			ea_linear(r->pooled, nc);
		for (i = 0; i < nc; i++)
			z += r->pooled[i];
		for (i = 0; i < s; i++)
			sink += r->pooled[i];
		memcpy(r->cand, r->pooled + s, (size_t)m * sizeof(float));
		qsort(r->cand, (size_t)m, sizeof(float), cmp_desc);
		r->prefix[0] = 0;
		for (i = 0; i < m; i++)
			r->prefix[i + 1] = r->prefix[i] + r->cand[i];
		for (j = 0; j < G; j++) {
			double f = (double)j / (G - 1), v;
			int64_t k = llround(f * ck) - ew - s;

			if (k < 0)
				k = 0;
			if (k > m)
				k = m;
			v = z > 0 ? (sink + r->prefix[k]) / z : 1.0;
			sum[j] += v > 1 ? 1 : v;
		}
	}
	return KVX_OK;
}

/*
 * The measurements behind the forward's hook: measure layer l, then free
 * its K/V (later layers do not read it).  A probe window is measured
 * twice: as prose at the queries just before its question, which see
 * neither the question nor the answer, and as a probe at the queries that
 * produce the answer.  The forward ran r->run tokens, the hook's w queries
 * being the last.
 */
static kvx_status
score_layer(void *arg, int seq, int l, const float *wq, int w,
    const float *xw)
{
	struct prof_run *r = arg;
	int h, i, wp = w - (r->run - r->prose), x = r->extra;
	kvx_status rc = KVX_OK;

	if (r->prose > 0 && wp > 0) {
		for (i = 0; i < r->H; i++)
			memcpy(r->wpre + (size_t)i * wp * r->D,
			    wq + (size_t)i * w * r->D,
			    (size_t)wp * r->D * sizeof(float));
		r->n = r->prose;
		r->extra = 0;
		r->acc = r->sum;
		rc = measure_layer(r, seq, l, r->wpre, wp, xw);
		r->n = r->run;
		r->extra = x;
		r->acc = r->sumr;
	}
	if (rc == KVX_OK)
		rc = measure_layer(r, seq, l, wq, w, xw);
	/* this layer is measured: free its rows for the next layers' */
	for (h = 0; h < r->Hkv; h++)
		kv_seg_release(r->kv, kv_seg_at(r->kv, seq, l, h));
	return rc;
}

/* The forward's layer hook: score_layer, timed. */
static kvx_status
prof_hook(void *arg, int seq, int l, const float *wq, int w,
    const float *xw)
{
	struct prof_run *r = arg;
	double t0 = kvx__now();
	kvx_status rc;

	rc = score_layer(arg, seq, l, wq, w, xw);
	r->hook_s += kvx__now() - t0;
	return rc;
}

/* Check the options against the model and the forward's limits. */
static kvx_status
check_opts(const prof_opts *o)
{
	if (o->samples < 1 || o->samples > 100000)
		return kvx__fail(KVX_ERR_ARG, "--samples %d out of range "
		    "[1, 100000]", o->samples);
	if (o->window < 1 || o->window > PROFILE_MAX_WINDOW)
		return kvx__fail(KVX_ERR_ARG, "--window %d out of range "
		    "[1, %d]", o->window, PROFILE_MAX_WINDOW);
	if (o->sample_tokens < o->window + o->sinks + 2)
		return kvx__fail(KVX_ERR_ARG, "--sample-tokens %d leaves no "
		    "candidates beside the window %d and %d sinks",
		    o->sample_tokens, o->window, o->sinks);
	if (o->profile_tokens < 0 || (o->profile_tokens > 0 &&
	    o->profile_tokens < o->window + o->sinks + 2))
		return kvx__fail(KVX_ERR_ARG, "--profile-tokens %d leaves no "
		    "candidates beside the window %d and %d sinks (0: all of "
		    "the sample)", o->profile_tokens, o->window, o->sinks);
	if (o->grid < 2 || o->grid > PROFILE_MAX_GRID)
		return kvx__fail(KVX_ERR_ARG, "--grid %d out of range [2, %d]",
		    o->grid, PROFILE_MAX_GRID);
	if (o->pool_kernel < 1 || o->pool_kernel % 2 == 0)
		return kvx__fail(KVX_ERR_ARG, "--pool-kernel %d is not a "
		    "positive odd number", o->pool_kernel);
	if (plan_scorer_name(o->scorer) == NULL)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "profiling with the "
		    "scorer %d is not implemented", o->scorer);
	if (o->span < 0 || o->sinks < 0)
		return kvx__fail(KVX_ERR_ARG, "negative --profile-span or "
		    "--sinks");
	if (!(o->probe_share >= 0 && o->probe_share <= 1))
		return kvx__fail(KVX_ERR_ARG, "--probe-share %g out of range "
		    "[0, 1]", o->probe_share);
	if (o->probe_share > 0 && (o->probes < 1 ||
	    o->probes > PROBE_MAX_STATEMENTS))
		return kvx__fail(KVX_ERR_ARG, "--probes %d out of range [1, "
		    "%d]", o->probes, PROBE_MAX_STATEMENTS);
	if (o->probe_share > 0 && o->objective == PROF_OBJ_MASS)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "retrieval probes "
		    "measure the output objective (drop --objective mass or "
		    "give --probe-share 0)");
	if (o->probe_hay < PROF_HAY_PROSE || o->probe_hay > PROF_HAY_MIXED)
		return kvx__fail(KVX_ERR_ARG, "probe haystack %d unknown",
		    o->probe_hay);
	if (o->probe_question < PROF_Q_INSIDE ||
	    o->probe_question > PROF_Q_AFTER)
		return kvx__fail(KVX_ERR_ARG, "probe question mode %d is not "
		    "one of 0 (inside), 1 (after)",
		    o->probe_question);
	if (o->probe_question == PROF_Q_AFTER &&
	    o->scorer != PLAN_SCORER_KVZIP)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "--probe-question after "
		    "needs --scorer kvzip (SnapKV and Expected Attention "
		    "score with the prompt's last queries)");
	if (o->probe_share > 0 && o->window + PROBE_MAX_ANSWER >
	    KVX_WINDOW_MAX)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "--window %d leaves no "
		    "room for a probe's answer (at most %d with probes)",
		    o->window, KVX_WINDOW_MAX - PROBE_MAX_ANSWER);
	return KVX_OK;
}

/* The objective o asks for on model m, PROF_OBJ_AUTO resolved. */
int
profile_objective(const kvx_model *m, int objective)
{
	if (objective != PROF_OBJ_AUTO)
		return objective;
	return m->desc->post_norms ? PROF_OBJ_OUTPUT : PROF_OBJ_ABS;
}

/* Tokenize the corpus, run every sample and average the curves. */
kvx_status
profile_run(kvx_model *m, const char *const *files, int n_files,
    const prof_opts *opts, profile **out)
{
	prof_opts ro = *opts;
	const prof_opts *o = &ro;
	const kvx_model_info *mi = kvx_model_get_info(m);
	struct prof_run r;
	fw_scratch *scr = NULL;
	kvx_pool *pool = NULL;
	kv_cache *kv = NULL;
	profile *p = NULL;
	int32_t *ids = NULL;
	int64_t n_ids = 0, off;
	int *seq = NULL, *pos = NULL, T = o->sample_tokens, L, G, i, s, Tr;
	char names[256];
	fw_batch b;
	kvx_status rc;
	double t0 = kvx__now();
	uint64_t st, pst;
	size_t cells;
	probe pr;
	int n_probe = 0, done_probes, dev;
	const ctx_ops *gpu = NULL;
	void *be = NULL;

	*out = NULL;
	memset(&r, 0, sizeof r);
	memset(&pr, 0, sizeof pr);
	ro.objective = profile_objective(m, opts->objective);
	if ((rc = check_opts(o)) != KVX_OK ||
	    (rc = profile_device(m, o->device, &dev)) != KVX_OK)
		return rc;
	if (n_files < 1)
		return kvx__fail(KVX_ERR_ARG, "no calibration text");
	if ((rc = profile_load_corpus(m, files, n_files, &ids, &n_ids,
	    names, sizeof names)) != KVX_OK)
		return rc;
	if (n_ids < T) {
		free(ids);
		return kvx__fail(KVX_ERR_ARG, "the corpus has %" PRId64
		    " tokens, fewer than one sample of %d", n_ids, T);
	}
	Tr = o->profile_tokens > 0 && o->profile_tokens < T ?
	    o->profile_tokens : T;
	L = mi->n_layer;
	G = o->grid;
	cells = (size_t)L * mi->n_head_kv * G;
	if (o->probe_share > 0) {
		/* a probe window is measured as prose too (prof_hook) */
		n_probe = (int)llround(o->probe_share * o->samples);
		if (n_probe < 1)
			n_probe = 1;
	}
	if ((p = calloc(1, sizeof *p)) == NULL ||
	    (p->R = kvx__calloc(cells, sizeof *p->R)) == NULL ||
	    (n_probe > 0 && (p->Rr = kvx__calloc(cells,
	    sizeof *p->Rr)) == NULL)) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory");
		goto done;
	}
	p->probe_samples = n_probe;
	p->probes = n_probe > 0 ? o->probes : 0;
	p->probe_after = n_probe > 0 && o->probe_question == PROF_Q_AFTER;
	p->probe_hay = n_probe > 0 ? o->probe_hay : PROF_HAY_PROSE;
	p->n_layer = L;
	p->n_head_kv = mi->n_head_kv;
	p->grid = G;
	memcpy(p->fingerprint, mi->fingerprint, sizeof p->fingerprint);
	p->samples = o->samples;
	p->sample_tokens = T;
	p->profile_tokens = Tr;
	p->span = o->span;
	p->seed = o->seed;
	p->window = o->window;
	p->pool = o->pool;
	p->pool_kernel = o->pool_kernel;
	p->gqa = o->gqa;
	p->sinks = o->sinks;
	p->scorer = o->scorer;
	p->objective = o->objective;
	p->corpus_tokens = n_ids;
	snprintf(p->corpus, sizeof p->corpus, "%s", names);

	r.o = o;
	r.m = m;
	r.E = mi->n_embd;
	r.n = T;
	r.H = mi->n_head;
	r.Hkv = mi->n_head_kv;
	r.D = mi->head_dim;
	r.sum = p->R;
	r.sumr = p->Rr;
	r.score = kvx__malloc_array((size_t)T, sizeof(float));
	r.pooled = kvx__malloc_array((size_t)T, sizeof(float));
	r.cand = kvx__malloc_array((size_t)T, sizeof(float));
	r.prefix = kvx__malloc_array((size_t)T + 1, sizeof(double));
	r.order = kvx__malloc_array((size_t)T, sizeof(int));
	r.prob = kvx__malloc_array((size_t)T, sizeof(float));
	r.err = kvx__malloc_array(OUT_CHECKS, sizeof(double));
	r.y = kvx__malloc_array((size_t)KVX_WINDOW_MAX * r.E, sizeof(double));
	r.att = kvx__malloc_array((size_t)r.H * r.D, sizeof(float));
	r.nrm = malloc(sizeof *r.nrm);
	seq = kvx__calloc((size_t)T, sizeof *seq);
	pos = kvx__malloc_array((size_t)T, sizeof *pos);
	r.wwin = kvx__malloc_array((size_t)r.H * KVX_WINDOW_MAX * r.D,
	    sizeof(float));
	r.wpre = kvx__malloc_array((size_t)r.H * KVX_WINDOW_MAX * r.D,
	    sizeof(float));
	if (o->scorer == PLAN_SCORER_EA)
		r.ea = kvx__malloc_array((size_t)(r.H / r.Hkv) * r.D *
		    (r.D + 1) + (size_t)T, sizeof(float));
	if (o->scorer == PLAN_SCORER_KVZIP)
		r.kz = kvx__malloc_array((size_t)L * r.Hkv * T, sizeof(float));
	if (!r.score || !r.pooled || !r.cand || !r.prefix || !r.order ||
	    !r.prob || !r.err || !r.y || !r.att || !r.nrm || !seq || !pos ||
	    !r.wwin || !r.wpre ||
	    (o->scorer == PLAN_SCORER_EA && !r.ea) ||
	    (o->scorer == PLAN_SCORER_KVZIP && !r.kz)) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory");
		goto done;
	}
	if (o->objective != PROF_OBJ_MASS && (mi->head_dim > OUTNORM_MAX_D ||
	    (rc = build_gram(&r)) != KVX_OK)) {
		if (rc == KVX_OK)
			rc = kvx__fail(KVX_ERR_UNSUPPORTED, "the output "
			    "objective handles head_dim up to %d",
			    OUTNORM_MAX_D);
		goto done;
	}
	for (i = 0; i < T; i++)
		pos[i] = i;
	if ((rc = kv_new(1, L, mi->n_head_kv, mi->head_dim, T, &kv)) !=
	    KVX_OK)
		goto done;
	if ((pool = pool_new(m->n_threads)) == NULL) {
		rc = kvx__fail(KVX_ERR_NOMEM, "cannot start threads");
		goto done;
	}
	if ((rc = fw_scratch_new(m, pool, T, T, &scr)) != KVX_OK)
		goto done;
	r.kv = kv;
	if (dev == KVX_DEVICE_GPU) {
		kvx_ctx_params cp;

		kvx_ctx_params_init(&cp);
		cp.n_ctx = T;
		cp.decode_headroom = 0;
		cp.device = KVX_DEVICE_GPU;
		gpu = gpu_ops_get();
		if ((rc = gpu->create(m, NULL, &cp, &be)) != KVX_OK)
			goto done;
	}
	p->device = dev;

	st = o->seed;
	pst = o->seed ^ 0x70726f6265ULL;
	for (s = 0, done_probes = 0; s < o->samples; s++) {
		/* the probes are spread evenly among the samples */
		int is_probe = (int64_t)(s + 1) * n_probe / o->samples >
		    done_probes;

		/* the lightweight variant runs the sample's last Tr tokens */
		off = rng_upto(&st, n_ids - T) + (T - Tr);
		if (o->progress)
			fprintf(stderr, "\rkvx-plan: profiling sample %d/%d "
			    "(%.0f s)", s + 1, o->samples, kvx__now() - t0);
		memset(&b, 0, sizeof b);
		b.n = Tr;
		b.ids = ids + off;
		r.run = r.n = r.kz_n = Tr;
		r.extra = r.prose = r.ctx = 0;
		r.acc = r.sum;
		if (is_probe) {
			/* mixed: the second, fourth, ... probe repeated */
			int rep = p->probe_hay == PROF_HAY_REPEAT ||
			    (p->probe_hay == PROF_HAY_MIXED &&
			    done_probes % 2 == 1) ? PROBE_REPEAT_SPAN : 0;

			probe_free(&pr);
			if ((rc = probe_make(m, ids + off, Tr, Tr, o->probes,
			    rep, &pst, &pr)) != KVX_OK)
				goto done;
			/* the last answer token produces nothing measured */
			b.n = r.run = r.n = pr.n_ids - 1;
			b.ids = pr.ids;
			r.extra = pr.n_answer - 1;
			r.prose = pr.n_prompt - pr.n_question;
			/* question after: KVzip scores the context alone */
			r.ctx = p->probe_after ? r.prose : 0;
			r.kz_n = p->probe_after ? r.prose : pr.n_prompt;
			r.acc = r.sumr;
			done_probes++;
		}
		b.seq = seq;
		b.pos = pos;
		b.window = o->scorer == PLAN_SCORER_EA &&
		    PLAN_EA_QUERIES > o->window ? PLAN_EA_QUERIES : o->window;
		/* the forward hands over at most KVX_WINDOW_MAX queries: under
		 * expected-attention a probe's statistics lose the answer's,
		 * and its prose measurement the question's and the answer's */
		if (b.window + r.run - r.prose > KVX_WINDOW_MAX)
			b.window = KVX_WINDOW_MAX - (r.run - r.prose);
		b.window += r.run - r.prose;
		b.hook = prof_hook;
		b.hook_arg = &r;
		b.no_head = 1;
		b.span = o->span;
		kv_seq_clear(kv, 0);
		if (o->scorer == PLAN_SCORER_KVZIP &&
		    (rc = prof_kvzip(&r, pool, scr, b.ids, r.kz_n, seq,
		    pos)) != KVX_OK)
			goto done;
		rc = be != NULL ? gpu->profile(be, &b, kv) :
		    model_forward(m, kv, scr, &b);
		if (rc != KVX_OK)
			goto done;
	}
	if (o->progress)
		fprintf(stderr, "\rkvx-plan: profiled %d samples of %d tokens "
		    "(%d with probes) on the %s in %.1f s, %.1f s of it "
		    "scoring and curves\n", o->samples, Tr, n_probe,
		    dev == KVX_DEVICE_GPU ? "GPU" : "CPU", kvx__now() - t0,
		    r.hook_s);
	for (i = 0; i < (int)cells; i++) {
		p->R[i] /= o->samples;
		if (p->Rr != NULL)
			p->Rr[i] /= n_probe;
	}
	/* a curve must not fall as the budget grows: the solvers rely on it,
	 * and keeping more tokens can only be allowed to help */
	for (i = 0; i < (int)(cells / G); i++)
		for (s = 1; s < G; s++) {
			size_t k = (size_t)i * G + s;

			if (p->R[k] < p->R[k - 1])
				p->R[k] = p->R[k - 1];
			if (p->Rr != NULL && p->Rr[k] < p->Rr[k - 1])
				p->Rr[k] = p->Rr[k - 1];
		}
	p->seconds = kvx__now() - t0;
	p->hook_seconds = r.hook_s;
	*out = p;
	p = NULL;
done:
	if (rc != KVX_OK && o->progress)
		fputc('\n', stderr);
	profile_free(&p);
	if (be != NULL)
		gpu->destroy(&be);
	kv_free(&kv);
	fw_scratch_free(&scr);
	pool_free(&pool);
	free(r.score);
	free(r.pooled);
	free(r.cand);
	free(r.prefix);
	free(r.order);
	free(r.prob);
	free(r.err);
	free(r.y);
	free(r.att);
	free(r.nrm);
	free(r.wwin);
	free(r.wpre);
	free(r.ea);
	free(r.kz);
	free(r.gram);
	probe_free(&pr);
	free(seq);
	free(pos);
	free(ids);
	return rc;
}

const char *const prof_pool_names[] = { "max", "avg", "none", NULL };
const char *const prof_gqa_names[] = { "mean", "max", NULL };
static const char *const objective_word[] = { "output", "mass",
    "output-abs", NULL };
const char *const prof_hay_names[] = { "prose", "repeat", "mixed", NULL };

/* Write the profile as "key value" lines and one line per curve. */
kvx_status
profile_save(const profile *p, const char *path, int overwrite)
{
	FILE *f;
	int fd, l, h, j;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC |
	    (overwrite ? 0 : O_EXCL), 0644);
	if (fd < 0)
		return kvx__fail(KVX_ERR_IO, "%s: %s", path, strerror(errno));
	if ((f = fdopen(fd, "w")) == NULL) {
		close(fd);
		return kvx__fail(KVX_ERR_IO, "%s: %s", path, strerror(errno));
	}
	fprintf(f, "%s %d\n", PROFILE_MAGIC, PROFILE_VERSION);
	fprintf(f, "fingerprint %s\n", p->fingerprint);
	fprintf(f, "layers %d\nkv_heads %d\ngrid %d\n", p->n_layer,
	    p->n_head_kv, p->grid);
	fprintf(f, "samples %d\nsample_tokens %d\nprofile_tokens %d\n"
	    "seed %" PRIu64 "\nspan %d\n", p->samples, p->sample_tokens,
	    p->profile_tokens, p->seed, p->span);
	fprintf(f, "window %d\npool %s\npool_kernel %d\ngqa %s\nsinks %d\n",
	    p->window, prof_pool_names[p->pool], p->pool_kernel,
	    prof_gqa_names[p->gqa], p->sinks);
	/* written only when not the default, so older readers and files
	 * agree on snapkv profiles */
	if (p->scorer != PLAN_SCORER_SNAPKV)
		fprintf(f, "scorer %s\n", plan_scorer_name(p->scorer));
	fprintf(f, "objective %s\n", objective_word[p->objective]);
	fprintf(f, "corpus_tokens %" PRId64 "\ncorpus %s\n", p->corpus_tokens,
	    p->corpus[0] ? p->corpus : "-");
	fprintf(f, "probes %d\nprobe_samples %d\n", p->probes,
	    p->probe_samples);
	/* written only when after, as the scorer: older files are inside */
	if (p->probe_after)
		fprintf(f, "probe_question after\n");
	/* likewise: older files are prose */
	if (p->probe_hay != PROF_HAY_PROSE)
		fprintf(f, "probe_hay %s\n", prof_hay_names[p->probe_hay]);
	for (l = 0; l < p->n_layer; l++)
		for (h = 0; h < p->n_head_kv; h++) {
			size_t at = ((size_t)l * p->n_head_kv + h) * p->grid;

			fprintf(f, "curve %d %d", l, h);
			for (j = 0; j < p->grid; j++)
				fprintf(f, " %.9g", p->R[at + j]);
			fputc('\n', f);
			if (p->Rr == NULL)
				continue;
			fprintf(f, "rcurve %d %d", l, h);
			for (j = 0; j < p->grid; j++)
				fprintf(f, " %.9g", p->Rr[at + j]);
			fputc('\n', f);
		}
	if (fclose(f) != 0)
		return kvx__fail(KVX_ERR_IO, "%s: %s", path, strerror(errno));
	return KVX_OK;
}

/* Index of word in a NULL-terminated list of names, or -1. */
static int
word_index(const char *const *list, const char *w)
{
	int i;

	for (i = 0; list[i] != NULL; i++)
		if (strcmp(list[i], w) == 0)
			return i;
	return -1;
}

/* Parse "key value" header lines and the curve lines of a profile. */
static kvx_status
parse_profile(FILE *f, const char *path, profile *p, int *seen, int *rseen)
{
	char *line = NULL, *key, *val, *end, word[32];
	size_t cap = 0;
	ssize_t len;
	int ln = 0, l, h, j, nread;
	long long v;
	char *c;

	while ((len = getline(&line, &cap, f)) > 0) {
		ln++;
		if (line[len - 1] == '\n')
			line[--len] = '\0';
		if (ln == 1) {
			if (sscanf(line, PROFILE_MAGIC " %d%n", &j, &nread) !=
			    1 || line[nread] != '\0')
				goto bad;
			/* version 1 is version 2 without retrieval curves */
			if (j < 1 || j > PROFILE_VERSION) {
				free(line);
				return kvx__fail(KVX_ERR_FORMAT, "%s:1: profile "
				    "format %d, this kvx-plan reads 1 to %d",
				    path, j, PROFILE_VERSION);
			}
			continue;
		}
		key = line;
		if ((val = strchr(line, ' ')) == NULL)
			goto bad;
		*val++ = '\0';
		if (strcmp(key, "curve") == 0 || strcmp(key, "rcurve") == 0) {
			double *dst = key[0] == 'c' ? p->R : p->Rr;

			if (dst == NULL && p->R != NULL && key[0] == 'r') {
				/* the first retrieval curve: allocate them */
				p->Rr = kvx__calloc((size_t)p->n_layer *
				    p->n_head_kv * p->grid, sizeof *p->Rr);
				if (p->Rr == NULL) {
					free(line);
					return kvx__fail(KVX_ERR_NOMEM, "out of "
					    "memory");
				}
				dst = p->Rr;
			}
			if (dst == NULL || sscanf(val, "%d %d%n", &l, &h,
			    &nread) != 2 || l < 0 || l >= p->n_layer ||
			    h < 0 || h >= p->n_head_kv)
				goto bad;
			c = val + nread;
			for (j = 0; j < p->grid; j++) {
				double x = strtod(c, &end);

				if (end == c || !(x >= 0 && x <= 1))
					goto bad;
				dst[((size_t)l * p->n_head_kv + h) * p->grid +
				    j] = x;
				c = end;
			}
			if (*c != '\0')
				goto bad;
			(*(key[0] == 'c' ? seen : rseen))++;
			continue;
		}
		if (strcmp(key, "fingerprint") == 0) {
			if (strlen(val) != 64)
				goto bad;
			memcpy(p->fingerprint, val, 65);
			continue;
		}
		if (strcmp(key, "corpus") == 0) {
			snprintf(p->corpus, sizeof p->corpus, "%s",
			    strcmp(val, "-") == 0 ? "" : val);
			continue;
		}
		if (strcmp(key, "scorer") == 0) {
			if ((p->scorer = plan_scorer_parse(val)) < 0)
				goto bad;
			continue;
		}
		if (strcmp(key, "probe_question") == 0) {
			if (strcmp(val, "after") == 0)
				p->probe_after = 1;
			else if (strcmp(val, "inside") != 0)
				goto bad;
			continue;
		}
		if (strcmp(key, "probe_hay") == 0) {
			p->probe_hay = word_index(prof_hay_names, val);
			if (p->probe_hay < 0)
				goto bad;
			continue;
		}
		if (strcmp(key, "objective") == 0) {
			p->objective = word_index(objective_word, val);
			if (p->objective < 0)
				goto bad;
			continue;
		}
		if (strcmp(key, "pool") == 0 || strcmp(key, "gqa") == 0) {
			snprintf(word, sizeof word, "%s", val);
			if (key[0] == 'p')
				p->pool = word_index(prof_pool_names, word);
			else
				p->gqa = word_index(prof_gqa_names, word);
			if (p->pool < 0 || p->gqa < 0)
				goto bad;
			continue;
		}
		errno = 0;
		v = strtoll(val, &end, 10);
		if (errno != 0 || end == val || *end != '\0' || v < 0 ||
		    v > INT32_MAX)
			goto bad;
		if (strcmp(key, "layers") == 0)
			p->n_layer = (int)v;
		else if (strcmp(key, "kv_heads") == 0)
			p->n_head_kv = (int)v;
		else if (strcmp(key, "grid") == 0)
			p->grid = (int)v;
		else if (strcmp(key, "samples") == 0)
			p->samples = (int)v;
		else if (strcmp(key, "sample_tokens") == 0)
			p->sample_tokens = (int)v;
		else if (strcmp(key, "profile_tokens") == 0)
			p->profile_tokens = (int)v;
		else if (strcmp(key, "seed") == 0)
			p->seed = (uint64_t)v;
		else if (strcmp(key, "span") == 0)
			p->span = (int)v;
		else if (strcmp(key, "window") == 0)
			p->window = (int)v;
		else if (strcmp(key, "pool_kernel") == 0)
			p->pool_kernel = (int)v;
		else if (strcmp(key, "sinks") == 0)
			p->sinks = (int)v;
		else if (strcmp(key, "corpus_tokens") == 0)
			p->corpus_tokens = v;
		else if (strcmp(key, "probes") == 0)
			p->probes = (int)v;
		else if (strcmp(key, "probe_samples") == 0)
			p->probe_samples = (int)v;
		else
			goto bad;
		if (p->R == NULL && p->n_layer > 0 && p->n_head_kv > 0 &&
		    p->grid > 0) {
			if (p->n_layer > 4096 || p->n_head_kv > 4096 ||
			    p->grid < 2 || p->grid > PROFILE_MAX_GRID)
				goto bad;
			p->R = kvx__calloc((size_t)p->n_layer * p->n_head_kv *
			    p->grid, sizeof *p->R);
			if (p->R == NULL) {
				free(line);
				return kvx__fail(KVX_ERR_NOMEM, "out of memory");
			}
		}
	}
	free(line);
	if (ln == 0)
		return kvx__fail(KVX_ERR_FORMAT, "%s: empty profile", path);
	return KVX_OK;
bad:
	free(line);
	return kvx__fail(KVX_ERR_FORMAT, "%s:%d: malformed profile line",
	    path, ln);
}

/* Read a profile and check that it belongs to this model. */
kvx_status
profile_load(const char *path, const kvx_model_info *mi, profile **out)
{
	profile *p;
	kvx_status rc;
	FILE *f;
	int seen = 0, rseen = 0;

	*out = NULL;
	if ((f = fopen(path, "r")) == NULL)
		return kvx__fail(KVX_ERR_IO, "%s: %s", path, strerror(errno));
	if ((p = calloc(1, sizeof *p)) == NULL) {
		fclose(f);
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	}
	p->pool_kernel = 1;
	/* profiles written before the key existed measured mass */
	p->objective = PROF_OBJ_MASS;
	rc = parse_profile(f, path, p, &seen, &rseen);
	fclose(f);
	if (rc != KVX_OK)
		goto fail;
	if (p->R == NULL || seen != p->n_layer * p->n_head_kv ||
	    (p->Rr != NULL && rseen != seen)) {
		rc = kvx__fail(KVX_ERR_FORMAT, "%s: %d curves and %d retrieval "
		    "curves, expected layers x kv_heads (or no retrieval "
		    "curves)", path, seen, rseen);
		goto fail;
	}
	if ((p->Rr != NULL) != (p->probe_samples > 0)) {
		rc = kvx__fail(KVX_ERR_FORMAT, "%s: probe_samples %d does not "
		    "match its %d retrieval curves", path, p->probe_samples,
		    rseen);
		goto fail;
	}
	if (strcmp(p->fingerprint, mi->fingerprint) != 0 ||
	    p->n_layer != mi->n_layer || p->n_head_kv != mi->n_head_kv) {
		rc = kvx__fail(KVX_ERR_MISMATCH, "%s was made for another "
		    "model (fingerprint %.12s, model has %.12s)", path,
		    p->fingerprint, mi->fingerprint);
		goto fail;
	}
	if (p->window < 1 || p->pool_kernel % 2 == 0) {
		rc = kvx__fail(KVX_ERR_FORMAT, "%s: bad selection settings",
		    path);
		goto fail;
	}
	*out = p;
	return KVX_OK;
fail:
	profile_free(&p);
	return rc;
}
