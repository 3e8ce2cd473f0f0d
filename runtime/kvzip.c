/*
 * kvzip.c - KVzip scoring on the CPU: the requests to repeat the context,
 * the repeat pass through the forward, and the score of each key (the
 * CPU twin of the GPU path).
 * SPDX-License-Identifier: MIT
 *
 * A key's score is a softmax weight over everything its query sees (the
 * whole prompt, the request and the chunk so far), maximised over the
 * chunk's queries and the KV head's query group: a token the model must
 * look up to say the context again scores high even when a single query
 * needs it.  The full cache of every layer exists while the pass runs;
 * compression follows it.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef HAVE_OPENBLAS
#include <cblas.h>
#endif

#include "kvzip.h"
#include "select.h"
#include "tokenizer.h"
#include "util.h"
#include "vexp.h"

static const char req_first[] = "Repeat the previous context exactly.";
static const char req_later[] = "Repeat the part of the previous context "
    "exactly, starting with";

/* Token ids of text (specials parsed) into a new array. */
static kvx_status
encode(const kvx_model *m, const char *text, size_t len, int32_t **ids,
    int *n)
{
	kvx_status rc;
	int cap = (int)len + 16;

	*ids = NULL;
	*n = 0;
	if ((*ids = kvx__malloc_array((size_t)cap, sizeof(int32_t))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	if ((rc = tok_encode(m->tok, text, len, 1, *ids, cap, n)) != KVX_OK) {
		free(*ids);
		*ids = NULL;
	}
	return rc;
}

/* The chat-template requests; KVX_ERR_UNSUPPORTED without a template. */
static kvx_status
req_chat(const kvx_model *m, kvzip_req *r)
{
	char *s = NULL;
	const char *at;
	size_t cut;
	kvx_status rc;

	if ((rc = tok_chat_format(m->tok, NULL, req_first, &s)) != KVX_OK)
		return rc;
	rc = encode(m, s, strlen(s), &r->first, &r->n_first);
	free(s);
	if (rc != KVX_OK ||
	    (rc = tok_chat_format(m->tok, NULL, req_later, &s)) != KVX_OK)
		return rc;
	/* the quote of the previous chunk goes right after the request */
	if ((at = strstr(s, req_later)) == NULL) {
		free(s);
		return kvx__fail(KVX_ERR_UNSUPPORTED, "the chat template "
		    "does not show the user's text");
	}
	cut = (size_t)(at - s) + strlen(req_later);
	if ((rc = encode(m, s, cut, &r->head, &r->n_head)) == KVX_OK)
		rc = encode(m, s + cut, strlen(s + cut), &r->tail,
		    &r->n_tail);
	free(s);
	return rc;
}

/* Builds the requests of either kind. */
kvx_status
kvzip_req_new(const kvx_model *m, int prompt, kvzip_req *r)
{
	char buf[128];
	kvx_status rc;
	int n;

	memset(r, 0, sizeof *r);
	if (prompt == PLAN_KVZIP_CHAT) {
		if ((rc = req_chat(m, r)) == KVX_OK)
			return KVX_OK;
		kvzip_req_free(r);
		if (rc != KVX_ERR_UNSUPPORTED)
			return rc;
		/* no template: the plain request, and no error left behind */
		kvx__clear_error();
	}
	n = snprintf(buf, sizeof buf, "\n\n%s\n", req_first);
	if ((rc = encode(m, buf, (size_t)n, &r->first, &r->n_first)) !=
	    KVX_OK)
		goto fail;
	n = snprintf(buf, sizeof buf, "\n\n%s", req_later);
	if ((rc = encode(m, buf, (size_t)n, &r->head, &r->n_head)) != KVX_OK ||
	    (rc = encode(m, "\n", 1, &r->tail, &r->n_tail)) != KVX_OK)
		goto fail;
	return KVX_OK;
fail:
	kvzip_req_free(r);
	return rc;
}

/* Frees the requests and empties r. */
void
kvzip_req_free(kvzip_req *r)
{
	free(r->first);
	free(r->head);
	free(r->tail);
	memset(r, 0, sizeof *r);
}

/* A request and a chunk, the longer request counted. */
int
kvzip_batch_max(const kvzip_req *r, int chunk)
{
	int later = r->n_head + KVZIP_QUOTE + r->n_tail;

	return (r->n_first > later ? r->n_first : later) + chunk;
}

/* Max-merges each key's softmax weight from w queries of g heads. */
void
kvzip_score(const float *q, const float *k, int m, int n, int w, int g,
    int d, int win, float scale, float *tmp, float *score)
{
	int h, j, t, r, lo, hi;
	float mx, inv, p;

	if (w < 1 || g < 1 || n < 1 || n > m - w)
		return;
	for (h = 0; h < g; h++) {
		const float *qh = q + (size_t)h * w * d;

		/* the logits of every query against every row; the causal
		 * and window limits apply per row below */
#ifdef HAVE_OPENBLAS
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, w, m, d,
		    scale, qh, d, k, d, 0.0f, tmp, m);
#else
		for (j = 0; j < w; j++)
			for (t = 0; t <= m - w + j; t++)
				tmp[(size_t)j * m + t] = vdot(qh + (size_t)j * d,
				    k + (size_t)t * d, d) * scale;
#endif
		for (j = 0; j < w; j++) {
			float *s = tmp + (size_t)j * m;

			r = m - w + j;
			lo = win > 0 && r - win + 1 > 0 ? r - win + 1 : 0;
			mx = vmax_row(s + lo, (size_t)(r + 1 - lo));
			inv = 1.0f / vexp_row(s + lo, (size_t)(r + 1 - lo), mx);
			hi = n < r + 1 ? n : r + 1;
			for (t = lo; t < hi; t++) {
				p = s[t] * inv;
				if (p > score[t])
					score[t] = p;
			}
		}
	}
}

/* --- the repeat pass ----------------------------------------------------- */

struct pass {
	kvx_model	*m;
	kv_cache	*kv;
	kvx_pool	*pool;
	int		 seq, n, layer, w;
	const int	*np;		/* per layer: the prompt rows it holds */
	const float	*wq;		/* the layer's chunk queries */
	float		*buf;		/* [layer][query head][n] */
	float		*tmp;		/* per thread: tmp_per floats */
	size_t		 tmp_per;
};

/* Worker: the query heads of one layer, each into its own scores. */
static void
score_work(void *arg, int ith, int nth)
{
	struct pass *ps = arg;
	const kvx_model_info *mi = &ps->m->info;
	int H = mi->n_head, D = mi->head_dim, g = H / mi->n_head_kv;
	int lo, hi, qh;

	pool_range(H, ith, nth, &lo, &hi);
	for (qh = lo; qh < hi; qh++) {
		const kv_seg *sg = kv_seg_cget(ps->kv, ps->seq, ps->layer,
		    qh / g);

		kvzip_score(ps->wq + (size_t)qh * ps->w * D, sg->k, sg->len,
		    ps->np[ps->layer], ps->w, 1, D, ps->m->L[ps->layer].window,
		    1.0f / sqrtf((float)D), ps->tmp + (size_t)ith * ps->tmp_per,
		    ps->buf + ((size_t)ps->layer * H + qh) * ps->n);
	}
}

/* Forward hook of the repeat pass: score the layer's prompt keys. */
static kvx_status
pass_hook(void *arg, int seq, int l, const float *wq, int w, const float *xw)
{
	struct pass *ps = arg;

	(void)seq;
	(void)xw;
	ps->layer = l;
	ps->wq = wq;
	ps->w = w;
	pool_run(ps->pool, score_work, ps);
	return KVX_OK;
}

/* Drops the rows past the prompt from every layer of the sequence. */
static void
truncate_seq(kv_cache *kv, int seq, const int *np)
{
	int l, h;

	for (l = 0; l < kv->n_layer; l++)
		for (h = 0; h < kv->n_head_kv; h++) {
			kv_seg *sg = kv_seg_at(kv, seq, l, h);

			if (sg->len > np[l])
				sg->len = np[l];
		}
}

/* Repeats the context chunk by chunk and keeps each key's best score. */
kvx_status
kvzip_pass(kvx_model *m, kv_cache *kv, kvx_pool *pool, const kvx_plan *P,
    int seq, const int32_t *ids, int n, float *score)
{
	const kvx_model_info *mi = &m->info;
	int H = mi->n_head, Hkv = mi->n_head_kv, g = H / Hkv, L = mi->n_layer;
	int chunk = P->kz_chunk, bmax, c0, c1, nb, i, l, h, q, t, *seqs = NULL;
	int *pos = NULL, *np = NULL;
	int32_t *bid = NULL;
	fw_scratch *s = NULL;
	kvzip_req r;
	struct pass ps;
	kvx_status rc;
	fw_batch b;

	if (n < 1 || chunk < 1 || chunk > KVX_WINDOW_MAX)
		return kvx__fail(KVX_ERR_ARG, "kvzip: %d tokens in chunks of "
		    "%d", n, chunk);
	if ((np = kvx__malloc_array((size_t)L, sizeof(int))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	/* a sliding-window layer of a full cache may hold its window only:
	 * its rows then start later, in the same order */
	for (l = 0; l < L; l++) {
		np[l] = kv_seg_cget(kv, seq, l, 0)->len;
		for (h = 0; h < Hkv; h++)
			if (kv_seg_cget(kv, seq, l, h)->len != np[l] ||
			    (np[l] != n && np[l] != sel_window_rows(
			    m->L[l].window, n))) {
				free(np);
				return kvx__fail(KVX_ERR_ARG, "kvzip: sequence "
				    "%d does not hold its %d prompt tokens "
				    "uncompressed", seq, n);
			}
	}
	if ((rc = kvzip_req_new(m, P->kz_prompt, &r)) != KVX_OK) {
		free(np);
		return rc;
	}
	memset(&ps, 0, sizeof ps);
	bmax = kvzip_batch_max(&r, chunk);
	ps.tmp_per = (size_t)chunk * (size_t)(n + bmax);
	ps.buf = kvx__calloc((size_t)L * H * n, sizeof(float));
	ps.tmp = kvx__malloc_array((size_t)pool_size(pool) * ps.tmp_per,
	    sizeof(float));
	bid = kvx__malloc_array((size_t)bmax, sizeof(int32_t));
	pos = kvx__malloc_array((size_t)bmax, sizeof(int));
	seqs = kvx__malloc_array((size_t)bmax, sizeof(int));
	if (ps.buf == NULL || ps.tmp == NULL || bid == NULL || pos == NULL ||
	    seqs == NULL) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory for the kvzip "
		    "pass");
		goto out;
	}
	/* a scratch of its own: the batch attends over the prompt and
	 * itself, beyond what the context's scratch was sized for */
	if ((rc = fw_scratch_new(m, pool, bmax, n + bmax, &s)) != KVX_OK)
		goto out;
	ps.m = m;
	ps.kv = kv;
	ps.pool = pool;
	ps.seq = seq;
	ps.n = n;
	ps.np = np;
	for (c0 = 0; c0 < n; c0 = c1) {
		c1 = c0 + chunk < n ? c0 + chunk : n;
		nb = 0;
		if (c0 == 0) {
			memcpy(bid, r.first, (size_t)r.n_first *
			    sizeof(int32_t));
			nb = r.n_first;
		} else {
			memcpy(bid, r.head, (size_t)r.n_head * sizeof(int32_t));
			nb = r.n_head;
			for (i = c0 - KVZIP_QUOTE < 0 ? 0 : c0 - KVZIP_QUOTE;
			    i < c0; i++)
				bid[nb++] = ids[i];
			memcpy(bid + nb, r.tail, (size_t)r.n_tail *
			    sizeof(int32_t));
			nb += r.n_tail;
		}
		memcpy(bid + nb, ids + c0, (size_t)(c1 - c0) * sizeof(int32_t));
		nb += c1 - c0;
		for (i = 0; i < nb; i++) {
			seqs[i] = seq;
			pos[i] = n + i;
		}
		memset(&b, 0, sizeof b);
		b.n = nb;
		b.ids = bid;
		b.seq = seqs;
		b.pos = pos;
		b.window = c1 - c0;
		b.hook = pass_hook;
		b.hook_arg = &ps;
		b.no_head = 1;
		rc = model_forward(m, kv, s, &b);
		truncate_seq(kv, seq, np);
		if (rc != KVX_OK)
			goto out;
	}
	/* the KV head's score is the largest over its query group */
	for (l = 0; l < L; l++)
		for (h = 0; h < Hkv; h++) {
			float *dst = score + ((size_t)l * Hkv + h) * n;
			const float *src = ps.buf + ((size_t)l * H + h * g) * n;

			memcpy(dst, src, (size_t)n * sizeof(float));
			for (q = 1; q < g; q++)
				for (t = 0; t < n; t++)
					if (src[(size_t)q * n + t] > dst[t])
						dst[t] = src[(size_t)q * n + t];
		}
out:
	fw_scratch_free(&s);
	kvzip_req_free(&r);
	free(ps.buf);
	free(ps.tmp);
	free(bid);
	free(pos);
	free(seqs);
	free(np);
	return rc;
}
