/*
 * gpu_kvzip.c - KVzip's repeat pass on the device, the twin of
 * kvzip_pass (kvzip.c): after a prefill that kept every layer's prompt
 * K/V, each chunk of the context, after the request to repeat it, runs
 * through the forward's layers (gpu__qkv_rope, gpu__attn, gpu__out_ffn)
 * over them, and the attention of the chunk's queries max-merges the
 * weight each prompt key gets (kvx_cuda_kvzip_max).
 * SPDX-License-Identifier: MIT
 *
 * The pass's own K/V go after the prompt's rows of each layer's buffer
 * and are overwritten by the next chunk, so nothing of the pass stays.
 * The chunks' ids go up at once and the device never waits for the
 * host between chunks.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_impl.h"
#include "plan.h"
#include "util.h"

/* Frees the pass's buffers and requests. */
void
gpu__kvzip_free(gpu_ctx *g)
{
	int i;

	cudaFree(g->zk);
	cudaFree(g->zv);
	cudaFree(g->zst);
	cudaFree(g->zs);
	cudaFree(g->zid);
	g->zk = g->zv = g->zst = NULL;
	g->zs = NULL;
	g->zid = NULL;
	g->zrows = g->zid_n = 0;
	if (g->zreq_ok)
		kvzip_req_free(&g->zreq);
	g->zreq_ok = 0;
	if (g->pids != NULL)
		for (i = 0; i < g->p.n_seq; i++)
			free(g->pids[i]);
	free(g->pids);
	free(g->pids_n);
	g->pids = NULL;
	g->pids_n = NULL;
}

/* Keeps the n ids of sequence s's prefill, for kvx_compress_from. */
kvx_status
gpu__kvzip_keep_ids(gpu_ctx *g, int s, const int32_t *ids, int n)
{
	int32_t *p;

	if (g->pids == NULL) {
		g->pids = kvx__calloc((size_t)g->p.n_seq, sizeof *g->pids);
		g->pids_n = kvx__calloc((size_t)g->p.n_seq, sizeof(int));
		if (g->pids == NULL || g->pids_n == NULL) {
			free(g->pids);
			free(g->pids_n);
			g->pids = NULL;
			g->pids_n = NULL;
			return kvx__fail(KVX_ERR_NOMEM, "out of memory");
		}
	}
	g->pids_n[s] = 0;
	if ((p = realloc(g->pids[s], (size_t)n * sizeof(int32_t))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	memcpy(p, ids, (size_t)n * sizeof(int32_t));
	g->pids[s] = p;
	g->pids_n[s] = n;
	return KVX_OK;
}

/*
 * Copies sequence ss of the full-cache context src, n prompt tokens
 * uncompressed, into the pass's buffers of g: layer l's np[l] rows (its
 * last ones where a sliding-window layer keeps its window only).
 */
kvx_status
gpu__kvzip_load(gpu_ctx *g, const gpu_ctx *src, int ss, int n, int *np)
{
	size_t rb = (size_t)g->D * 2, row = rb * g->Hkv;
	gpu_src zs;
	int l, h;

	CK(cudaStreamSynchronize(src->stream));
	for (l = 0; l < g->L; l++) {
		np[l] = seg_at(src, ss, l, 0)->len;
		gpu__kvzip_src(g, l, n, np[l], &zs);
		for (h = 0; h < g->Hkv; h++) {
			const gseg *sg = seg_at(src, ss, l, h);

			if (sg->len != np[l] || np[l] > n)
				return kvx__fail(KVX_ERR_ARG, "kvx_compress_"
				    "from: source sequence %d holds no "
				    "uncompressed prefill", ss);
			CK(cudaMemcpy2DAsync((char *)zs.k + h * rb, row,
			    src->kbase + sg->off * 2, rb, rb, np[l],
			    cudaMemcpyDeviceToDevice, g->stream));
			CK(cudaMemcpy2DAsync((char *)zs.v + h * rb, row,
			    src->vbase + sg->off * 2, rb, rb, np[l],
			    cudaMemcpyDeviceToDevice, g->stream));
		}
	}
	return KVX_OK;
}

/* Elements of one layer's rows in g->zk. */
static size_t
layer_elems(const gpu_ctx *g)
{
	return (size_t)g->zrows * g->Hkv * g->D;
}

/*
 * Buffers for a pass over n prompt tokens: every layer's rows with room
 * for the longest batch, their scores, and the forward's and prefill's
 * scratch for a batch attending over n + its own rows.
 */
kvx_status
gpu__kvzip_ensure(gpu_ctx *g, int n)
{
	const kvx_plan *P = g->plan;
	int bmax, G = g->H / g->Hkv;
	size_t rows;
	kvx_status rc;

	if (!g->zreq_ok) {
		if ((rc = kvzip_req_new(g->m, P->kz_prompt, &g->zreq)) !=
		    KVX_OK)
			return rc;
		g->zreq_ok = 1;
	}
	bmax = kvzip_batch_max(&g->zreq, P->kz_chunk);
	if ((rc = gpu__ensure_fw(g, n > bmax ? n : bmax)) != KVX_OK ||
	    (rc = gpu__ensure_prefill(g, n + bmax)) != KVX_OK)
		return rc;
	if (g->zst == NULL && (rc = gpu__regrow(&g->zst,
	    kvx_cuda_kvzip_scratch(G, QBLK))) != KVX_OK)
		return rc;
	if (n + bmax <= g->zrows)
		return KVX_OK;
	g->zrows = 0;
	rows = (size_t)g->L * (n + bmax);
	if ((rc = gpu__regrow(&g->zk, rows * g->Hkv * g->D * 2)) != KVX_OK ||
	    (rc = gpu__regrow(&g->zv, rows * g->Hkv * g->D * 2)) != KVX_OK ||
	    (rc = gpu__regrow((void **)&g->zs, rows * g->Hkv *
	    sizeof(float))) != KVX_OK)
		return rc;
	g->zrows = n + bmax;
	return KVX_OK;
}

/*
 * Where layer l's np rows of a prompt of n tokens sit in the pass's
 * buffers (its last np tokens), with their scores.
 */
void
gpu__kvzip_src(const gpu_ctx *g, int l, int n, int np, gpu_src *src)
{
	src->k = (const char *)g->zk + layer_elems(g) * l * 2;
	src->v = (const char *)g->zv + layer_elems(g) * l * 2;
	src->row0 = n - np;
	src->kz = g->zs + (size_t)l * g->Hkv * g->zrows;
	src->kzs = g->zrows;
}

/*
 * The batches of the pass, request then chunk, as kvzip_pass builds
 * them, bmax ids apart in bid; their lengths in nb.  Returns the number
 * of chunks.
 */
static int
batches(const kvzip_req *r, int chunk, int bmax, const int32_t *ids, int n,
    int32_t *bid, int *nb)
{
	int c, c0, c1, i, k;
	int32_t *b;

	for (c = 0, c0 = 0; c0 < n; c0 = c1, c++) {
		c1 = c0 + chunk < n ? c0 + chunk : n;
		b = bid + (size_t)c * bmax;
		if (c0 == 0) {
			memcpy(b, r->first, (size_t)r->n_first *
			    sizeof(int32_t));
			k = r->n_first;
		} else {
			memcpy(b, r->head, (size_t)r->n_head * sizeof(int32_t));
			k = r->n_head;
			for (i = c0 - KVZIP_QUOTE < 0 ? 0 : c0 - KVZIP_QUOTE;
			    i < c0; i++)
				b[k++] = ids[i];
			memcpy(b + k, r->tail, (size_t)r->n_tail *
			    sizeof(int32_t));
			k += r->n_tail;
		}
		memcpy(b + k, ids + c0, (size_t)(c1 - c0) * sizeof(int32_t));
		nb[c] = k + c1 - c0;
	}
	return c;
}

/* Uploads the chunks' batches to g->zid and the positions after the
 * prompt to g->pos. */
static kvx_status
upload(gpu_ctx *g, const int32_t *bid, int nbat, int bmax, int n)
{
	size_t cnt = (size_t)nbat * bmax;
	int *pos, i;
	kvx_status rc;

	if ((int)cnt > g->zid_n) {
		g->zid_n = 0;
		if ((rc = gpu__regrow((void **)&g->zid, cnt * sizeof(int))) !=
		    KVX_OK)
			return rc;
		g->zid_n = (int)cnt;
	}
	if ((pos = kvx__malloc_array((size_t)bmax, sizeof(int))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	for (i = 0; i < bmax; i++)
		pos[i] = n + i;
	if (cudaMemcpyAsync(g->zid, bid, cnt * sizeof(int),
	    cudaMemcpyHostToDevice, g->stream) != cudaSuccess ||
	    cudaMemcpyAsync(g->pos, pos, (size_t)bmax * sizeof(int),
	    cudaMemcpyHostToDevice, g->stream) != cudaSuccess ||
	    cudaStreamSynchronize(g->stream) != cudaSuccess) {
		free(pos);
		return kvx__fail(KVX_ERR_DEVICE, "%s:%d: kvzip batch upload "
		    "failed", __FILE__, __LINE__);
	}
	free(pos);
	return KVX_OK;
}

/* One batch of nb tokens (ids at d_ids) through every layer, its queries'
 * last w scoring layer l's np[l] prompt rows. */
static kvx_status
batch(gpu_ctx *g, const int *d_ids, int nb, int w, const int *np)
{
	size_t le = layer_elems(g);
	int l, Hkv = g->Hkv, D = g->D;
	kvx_status rc;
	gpu_kzs kz;

	CK(kvx_cuda_embed(g->embd, g->E, d_ids, nb, g->m->desc->embd_scale ?
	    sqrtf((float)g->E) : 1.0f, g->x, g->stream));
	for (l = 0; l < g->L; l++) {
		char *k = (char *)g->zk + le * l * 2;
		char *v = (char *)g->zv + le * l * 2;
		size_t at = (size_t)np[l] * Hkv * D * 2;

		if ((rc = gpu__qkv_rope(g, l, nb, NULL, k + at, v + at)) !=
		    KVX_OK)
			return rc;
		kz.score = g->zs + (size_t)l * Hkv * g->zrows;
		kz.hstride = g->zrows;
		kz.n = np[l];
		kz.w = w;
		kz.scr = g->zst;
		if ((rc = gpu__attn(g, l, k, v, np[l], nb, &kz)) != KVX_OK ||
		    (rc = gpu__out_ffn(g, l, nb, 0)) != KVX_OK)
			return rc;
	}
	return KVX_OK;
}

/*
 * The repeat pass after a prompt of the n tokens ids, layer l holding its
 * last np[l] in the buffers (gpu__kvzip_ensure(g, n) made them): the
 * scores of every layer's rows, each key's largest weight from any chunk
 * query of its KV head's group, in g->zs.
 */
kvx_status
gpu__kvzip_pass(gpu_ctx *g, const int32_t *ids, int n, const int *np)
{
	const kvx_plan *P = g->plan;
	int chunk = P->kz_chunk, bmax, nbat, c, *nb = NULL;
	int32_t *bid = NULL;
	kvx_status rc;

	if (n < 1 || chunk < 1 || chunk > KVX_WINDOW_MAX)
		return kvx__fail(KVX_ERR_ARG, "kvzip: %d tokens in chunks of "
		    "%d", n, chunk);
	bmax = kvzip_batch_max(&g->zreq, chunk);
	nbat = (n + chunk - 1) / chunk;
	bid = kvx__malloc_array((size_t)nbat * bmax, sizeof(int32_t));
	nb = kvx__malloc_array((size_t)nbat, sizeof(int));
	if (bid == NULL || nb == NULL) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory for the kvzip "
		    "pass");
		goto out;
	}
	batches(&g->zreq, chunk, bmax, ids, n, bid, nb);
	if ((rc = upload(g, bid, nbat, bmax, n)) != KVX_OK)
		goto out;
	if (cudaMemsetAsync(g->zs, 0, (size_t)g->L * g->Hkv * g->zrows *
	    sizeof(float), g->stream) != cudaSuccess) {
		rc = kvx__fail(KVX_ERR_DEVICE, "%s:%d: kvzip scores not "
		    "cleared", __FILE__, __LINE__);
		goto out;
	}
	for (c = 0; c < nbat && rc == KVX_OK; c++)
		rc = batch(g, g->zid + (size_t)c * bmax, nb[c],
		    (c + 1) * chunk < n ? chunk : n - c * chunk, np);
out:
	free(bid);
	free(nb);
	return rc;
}
