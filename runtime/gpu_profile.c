/*
 * gpu_profile.c - kvx-plan's lightweight variant on the device: the
 * prefill's layers (gpu__qkv_rope, gpu__attn, gpu__out_ffn) over one
 * sample, the queries before the observation window attending to their
 * last span keys only, and the final layer's FFN and the LM head
 * skipped.  After each layer's attention what the planner's hook reads
 * comes back to the host: the layer's keys and values (f32, as the
 * forward computed them, into the CPU cache), its input rows and its
 * queries at the window.  The hook then runs as after model_forward's
 * layers, so that the scores and the curves are the same code on
 * either device.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_impl.h"
#include "util.h"

/* Host copies of one layer. */
struct prof_host {
	float	*q;	/* the window's queries as they lie, [w][H][D] */
	float	*wq;	/* the same in the hook's order, [H][w][D] */
	float	*x;	/* the layer's input rows at the window, [w][E] */
	float	*k, *v;	/* the layer's keys and values, [n][Hkv][D] */
};

/* Free the host copies. */
static void
host_free(struct prof_host *ph)
{
	free(ph->q);
	free(ph->wq);
	free(ph->x);
	free(ph->k);
	free(ph->v);
	memset(ph, 0, sizeof *ph);
}

/* Host copies for n tokens and w window queries. */
static kvx_status
host_new(const gpu_ctx *g, int n, int w, struct prof_host *ph)
{
	size_t qn = (size_t)(w > 0 ? w : 1) * g->H * g->D;
	size_t kn = (size_t)n * g->Hkv * g->D;

	ph->q = kvx__malloc_array(qn, sizeof(float));
	ph->wq = kvx__malloc_array(qn, sizeof(float));
	ph->x = kvx__malloc_array((size_t)(w > 0 ? w : 1) * g->E,
	    sizeof(float));
	ph->k = kvx__malloc_array(kn, sizeof(float));
	ph->v = kvx__malloc_array(kn, sizeof(float));
	if (!ph->q || !ph->wq || !ph->x || !ph->k || !ph->v) {
		host_free(ph);
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	}
	return KVX_OK;
}

/*
 * After layer l's attention: its rotated keys and values of the n tokens
 * (in qkv) go into sequence b->seq[0]'s segments of kv, and the hook gets
 * the last w queries and the layer's input rows at them (still in x,
 * which the layer's output is added to afterwards).
 */
static kvx_status
layer_out(gpu_ctx *g, const fw_batch *b, kv_cache *kv, int l, int w,
    struct prof_host *ph)
{
	int H = g->H, Hkv = g->Hkv, D = g->D, n = b->n, h, t, j;
	size_t row = (size_t)Hkv * D * sizeof(float);
	size_t ld = (size_t)g->NQKV * sizeof(float), dv = (size_t)D *
	    sizeof(float);
	kvx_status rc;

	CK(cudaMemcpy2DAsync(ph->k, row, g->qkv + (size_t)H * D, ld, row, n,
	    cudaMemcpyDeviceToHost, g->stream));
	CK(cudaMemcpy2DAsync(ph->v, row, g->qkv + (size_t)(H + Hkv) * D, ld,
	    row, n, cudaMemcpyDeviceToHost, g->stream));
	if (w > 0) {
		CK(cudaMemcpyAsync(ph->q, g->q + (size_t)(n - w) * H * D,
		    (size_t)w * H * dv, cudaMemcpyDeviceToHost, g->stream));
		CK(cudaMemcpyAsync(ph->x, g->x + (size_t)(n - w) * g->E,
		    (size_t)w * g->E * sizeof(float), cudaMemcpyDeviceToHost,
		    g->stream));
	}
	CK(cudaStreamSynchronize(g->stream));
	for (h = 0; h < Hkv; h++) {
		kv_seg *sg = kv_seg_at(kv, b->seq[0], l, h);

		if (sg->len != 0)
			return kvx__fail(KVX_ERR_ARG, "layer %d head %d of "
			    "sequence %d is not empty", l, h, b->seq[0]);
		if ((rc = kv_reserve(kv, sg, n)) != KVX_OK)
			return rc;
		for (t = 0; t < n; t++) {
			memcpy(sg->k + (size_t)t * D, ph->k + ((size_t)t * Hkv +
			    h) * D, dv);
			memcpy(sg->v + (size_t)t * D, ph->v + ((size_t)t * Hkv +
			    h) * D, dv);
			sg->pos[t] = b->pos[t];
		}
		sg->len = n;
	}
	if (w == 0)
		return KVX_OK;
	for (h = 0; h < H; h++)
		for (j = 0; j < w; j++)
			memcpy(ph->wq + ((size_t)h * w + j) * D, ph->q +
			    ((size_t)j * H + h) * D, dv);
	return b->hook(b->hook_arg, b->seq[0], l, ph->wq, w, ph->x);
}

/* The layers of gpu__profile, span set, its buffers ready. */
static kvx_status
profile_layers(gpu_ctx *g, const fw_batch *b, kv_cache *kv, int w,
    struct prof_host *ph)
{
	int n = b->n, l;
	kvx_status rc;

	CK(cudaMemcpyAsync(g->pos, b->pos, (size_t)n * sizeof(int),
	    cudaMemcpyHostToDevice, g->stream));
	CK(cudaMemcpyAsync(g->ids, b->ids, (size_t)n * sizeof(int),
	    cudaMemcpyHostToDevice, g->stream));
	CK(kvx_cuda_embed(g->embd, g->E, g->ids, n, g->m->desc->embd_scale ?
	    sqrtf((float)g->E) : 1.0f, g->x, g->stream));
	for (l = 0; l < g->L; l++) {
		if ((rc = gpu__qkv_rope(g, l, n, NULL, g->kt, g->vt)) !=
		    KVX_OK)
			return rc;
		if ((rc = gpu__attn(g, l, g->kt, g->vt, 0, n, NULL)) !=
		    KVX_OK ||
		    (rc = layer_out(g, b, kv, l, w, ph)) != KVX_OK)
			return rc;
		if (b->no_head && l == g->L - 1)
			break;
		if ((rc = gpu__out_ffn(g, l, n, 0)) != KVX_OK)
			return rc;
	}
	return KVX_OK;
}

/*
 * The lightweight variant's forward of one sequence (ctx_ops.profile):
 * the batch is model_forward's, at positions 0 .. n - 1; the context's
 * own sequences are left alone.
 */
kvx_status
gpu__profile(gpu_ctx *g, const fw_batch *b, kv_cache *kv)
{
	struct prof_host ph;
	int n = b->n, w, t;
	kvx_status rc;

	if (n < 1 || kv->n_layer != g->L || kv->n_head_kv != g->Hkv ||
	    kv->head_dim != g->D)
		return kvx__fail(KVX_ERR_ARG, "profiling: %d tokens, or a "
		    "cache of another shape", n);
	for (t = 0; t < n; t++) {
		if (b->ids[t] < 0 || b->ids[t] >= g->V)
			return kvx__fail(KVX_ERR_ARG, "token id %d out of range "
			    "[0, %d)", b->ids[t], g->V);
		if (b->seq[t] != b->seq[0] || b->pos[t] != t)
			return kvx__fail(KVX_ERR_ARG, "profiling runs one "
			    "sequence from position 0");
	}
	w = b->hook == NULL ? 0 : b->window < n ? b->window : n;
	if ((rc = gpu__ensure_fw(g, n)) != KVX_OK ||
	    (rc = gpu__ensure_prefill(g, n)) != KVX_OK ||
	    (rc = host_new(g, n, w, &ph)) != KVX_OK)
		return rc;
	g->span = b->span;
	g->span_to = n - b->window > 0 ? n - b->window : 0;
	rc = profile_layers(g, b, kv, w, &ph);
	g->span = g->span_to = 0;
	/* the device must be done with the batch's ids before they go */
	if (cudaStreamSynchronize(g->stream) != cudaSuccess && rc == KVX_OK)
		rc = kvx__fail(KVX_ERR_DEVICE, "%s:%d: profiling's forward "
		    "failed", __FILE__, __LINE__);
	host_free(&ph);
	return rc;
}
