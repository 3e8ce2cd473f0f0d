/*
 * gpu_arena.c - the device memory of a GPU context: the model's weights
 * as fp16, and the K/V arena.
 * SPDX-License-Identifier: MIT
 *
 * Weights are dequantised on the host once, at context creation, and kept
 * as fp16 (Q, K, V fused into one matrix, gate and up into another);
 * every type quant_dequant reads goes up this way.  Norms and biases stay
 * f32.
 *
 * K/V live in arena chunks of fixed size, each one allocation holding a K
 * half and a V half: a row's V sits a constant distance after its K, so
 * the attention kernel addresses every segment of every chunk through one
 * K base, one V base and per-segment element offsets.  The segments of a
 * (sequence, layer) are one block of a chunk; a chunk is reused once all
 * its blocks are freed.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "gpu_impl.h"
#include "quant.h"
#include "util.h"

// --- weights -----------------------------------------------------------------

/* Dequantise a matrix on the host and store it as fp16 at d_dst. */
static kvx_status
upload_mat(cudaStream_t st, const mat *w, void *d_dst, float *d_tmp,
    float *h_tmp)
{
	size_t n = (size_t)w->rows * w->cols;
	kvx_status rc;

	if ((rc = quant_dequant(w->type, w->q, h_tmp, n)) != KVX_OK)
		return rc;
	/* h_tmp and d_tmp are reused by the next matrix: from pageable
	   memory the copy returns once h_tmp is staged, and the stream
	   orders d_tmp's uses */
	CK(cudaMemcpyAsync(d_tmp, h_tmp, n * sizeof(float),
	    cudaMemcpyHostToDevice, st));
	CK(kvx_cuda_f2h(d_tmp, d_dst, n, st));
	return KVX_OK;
}

/* A new device copy *d of n floats; *d stays NULL when v is (a tensor
 * the architecture does not have). */
static kvx_status
upload_vec(cudaStream_t st, const float *v, int n, float **d)
{
	if (v == NULL)
		return KVX_OK;
	CK(cudaMalloc((void **)d, (size_t)n * sizeof(float)));
	CK(cudaMemcpyAsync(*d, v, (size_t)n * sizeof(float),
	    cudaMemcpyHostToDevice, st));
	return KVX_OK;
}

/* The Q, K and V biases of a layer as one vector, as the fused QKV
 * matrix lays out its rows; none when the layer has none. */
static kvx_status
upload_bias(gpu_ctx *g, const layer_w *w, float **d)
{
	size_t q = (size_t)g->H * g->D, kv = (size_t)g->Hkv * g->D;

	if (w->bq == NULL)
		return KVX_OK;
	CK(cudaMalloc((void **)d, (size_t)g->NQKV * sizeof(float)));
	CK(cudaMemcpyAsync(*d, w->bq, q * sizeof(float),
	    cudaMemcpyHostToDevice, g->stream));
	CK(cudaMemcpyAsync(*d + q, w->bk, kv * sizeof(float),
	    cudaMemcpyHostToDevice, g->stream));
	CK(cudaMemcpyAsync(*d + q + kv, w->bv, kv * sizeof(float),
	    cudaMemcpyHostToDevice, g->stream));
	return KVX_OK;
}

/* fp16 copies of all weights; fused QKV and gate-up matrices. */
kvx_status
gpu__upload_weights(gpu_ctx *g)
{
	const kvx_model *m = g->m;
	cudaStream_t st = g->stream;
	size_t big = (size_t)g->V * g->E, h2 = sizeof(uint16_t);
	float *h_tmp = NULL, *d_tmp = NULL;
	kvx_status rc = KVX_OK;
	int l;

	if ((size_t)g->F * 2 * g->E > big)
		big = (size_t)g->F * 2 * g->E;
	if ((h_tmp = kvx__malloc_array(big, sizeof(float))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	if (cudaMalloc((void **)&d_tmp, big * sizeof(float)) != cudaSuccess) {
		free(h_tmp);
		return kvx__fail(KVX_ERR_DEVICE, "cannot allocate %zu bytes "
		    "on the device", big * sizeof(float));
	}
#define UP(w, dst) if ((rc = upload_mat(st, w, dst, d_tmp, h_tmp)) != \
	KVX_OK) goto out
#define AL(p, n) if (cudaMalloc(&(p), (n) * h2) != cudaSuccess) { \
	rc = kvx__fail(KVX_ERR_DEVICE, "cannot allocate weights"); goto out; }
	AL(g->embd, (size_t)g->V * g->E);
	UP(&m->embd, g->embd);
	if (m->out.q == m->embd.q)
		g->out = g->embd;
	else {
		AL(g->out, (size_t)g->V * g->E);
		UP(&m->out, g->out);
	}
	if ((rc = upload_vec(st, m->out_norm, g->E, &g->onorm)) != KVX_OK)
		goto out;
	for (l = 0; l < g->L; l++) {
		const layer_w *w = &m->L[l];
		glayer *d = &g->lw[l];
		size_t E = g->E;

		AL(d->wqkv, (size_t)g->NQKV * E);
		AL(d->wo, (size_t)g->E * g->H * g->D);
		AL(d->wgu, (size_t)2 * g->F * E);
		AL(d->wd, (size_t)g->E * g->F);
		UP(&w->wq, d->wqkv);
		UP(&w->wk, (char *)d->wqkv + (size_t)g->H * g->D * E * h2);
		UP(&w->wv, (char *)d->wqkv + (size_t)(g->H + g->Hkv) * g->D *
		    E * h2);
		UP(&w->wo, d->wo);
		UP(&w->wg, d->wgu);
		UP(&w->wu, (char *)d->wgu + (size_t)g->F * E * h2);
		UP(&w->wd, d->wd);
		if ((rc = upload_vec(st, w->attn_norm, g->E, &d->an)) !=
		    KVX_OK ||
		    (rc = upload_vec(st, w->ffn_norm, g->E, &d->fn)) != KVX_OK ||
		    (rc = upload_bias(g, w, &d->bqkv)) != KVX_OK ||
		    (rc = upload_vec(st, w->q_norm, g->D, &d->qn)) != KVX_OK ||
		    (rc = upload_vec(st, w->k_norm, g->D, &d->kn)) != KVX_OK ||
		    (rc = upload_vec(st, w->post_attn_norm, g->E, &d->pan)) !=
		    KVX_OK ||
		    (rc = upload_vec(st, w->post_ffn_norm, g->E, &d->pfn)) !=
		    KVX_OK)
			goto out;
	}
#undef UP
#undef AL
	if (cudaStreamSynchronize(g->stream) != cudaSuccess)
		rc = kvx__fail(KVX_ERR_DEVICE, "weight upload failed");
out:
	cudaFree(d_tmp);
	free(h_tmp);
	return rc;
}

// --- K/V arena -----------------------------------------------------------------

/* A new chunk of the arena. */
kvx_status
gpu__chunk_add(gpu_ctx *g)
{
	gchunk *nc;
	void *p;

	if (g->nch == g->capch) {
		int cap = g->capch ? 2 * g->capch : 16;

		if ((nc = realloc(g->ch, (size_t)cap * sizeof *nc)) == NULL)
			return kvx__fail(KVX_ERR_NOMEM, "out of memory");
		g->ch = nc;
		g->capch = cap;
	}
	if (cudaMalloc(&p, 2 * g->half) != cudaSuccess) {
		cudaGetLastError();
		return kvx__fail(KVX_ERR_NOMEM, "device out of memory for the "
		    "KV cache (%d chunks of %zu MiB held)", g->nch,
		    2 * g->half >> 20);
	}
	g->ch[g->nch].base = p;
	g->ch[g->nch].top = 0;
	g->ch[g->nch].live = 0;
	if (g->nch == 0) {
		g->kbase = p;
		g->vbase = (char *)p + g->half;
	}
	g->nch++;
	return KVX_OK;
}

/* Release the block of (s, l), its segments emptied. */
void
gpu__blk_free(gpu_ctx *g, int s, int l)
{
	gblk *b = blk_at(g, s, l);
	int h;

	g->gen++;
	if (b->chunk >= 0) {
		gchunk *c = &g->ch[b->chunk];

		c->live -= b->bytes;
		if (c->live == 0)
			c->top = 0;
	}
	b->chunk = -1;
	b->bytes = 0;
	for (h = 0; h < g->Hkv; h++) {
		gseg *sg = seg_at(g, s, l, h);

		sg->len = sg->cap = 0;
		sg->off = 0;
	}
}

/*
 * Take a block for (s, l) with capacities caps[h]; fills in the segments'
 * offsets and capacities (lengths 0).  The old block, if any, must have
 * been released or be kept by the caller in *old.
 */
kvx_status
gpu__blk_alloc(gpu_ctx *g, int s, int l, const int *caps)
{
	size_t rows = 0, bytes, rb = (size_t)g->D * sizeof(uint16_t);
	long long base;
	gblk *b = blk_at(g, s, l);
	kvx_status rc;
	int c, h;

	g->gen++;
	for (h = 0; h < g->Hkv; h++)
		rows += (size_t)caps[h];
	bytes = (rows * rb + 255) & ~(size_t)255;
	if (bytes == 0)
		bytes = 256;
	if (bytes > g->half)
		return kvx__fail(KVX_ERR_CAPACITY, "a layer of %zu rows "
		    "exceeds the arena chunk", rows);
	for (c = 0; c < g->nch; c++)
		if (g->ch[c].top + bytes <= g->half)
			break;
	if (c == g->nch && (rc = gpu__chunk_add(g)) != KVX_OK)
		return rc;
	b->chunk = c;
	b->at = g->ch[c].top;
	b->bytes = bytes;
	g->ch[c].top += bytes;
	g->ch[c].live += bytes;
	base = ((long long)((uintptr_t)g->ch[c].base - (uintptr_t)g->kbase) +
	    (long long)b->at) / (long long)sizeof(uint16_t);
	for (h = 0; h < g->Hkv; h++) {
		gseg *sg = seg_at(g, s, l, h);

		sg->off = base;
		sg->len = 0;
		sg->cap = caps[h];
		base += (long long)caps[h] * g->D;
	}
	return KVX_OK;
}

/* Move (s, l) to a block of capacities caps[h] >= the lengths. */
kvx_status
gpu__blk_move(gpu_ctx *g, int s, int l, const int *caps)
{
	gblk old = *blk_at(g, s, l);
	gseg was[SEL_MAX_KV_HEADS];
	size_t rb = (size_t)g->D * sizeof(uint16_t);
	kvx_status rc;
	int h;

	for (h = 0; h < g->Hkv; h++)
		was[h] = *seg_at(g, s, l, h);
	if ((rc = gpu__blk_alloc(g, s, l, caps)) != KVX_OK) {
		*blk_at(g, s, l) = old;
		for (h = 0; h < g->Hkv; h++)
			*seg_at(g, s, l, h) = was[h];
		return rc;
	}
	for (h = 0; h < g->Hkv; h++) {
		gseg *sg = seg_at(g, s, l, h);

		if (was[h].len > 0) {
			CK(cudaMemcpyAsync(g->kbase + sg->off * 2, g->kbase +
			    was[h].off * 2, (size_t)was[h].len * rb,
			    cudaMemcpyDeviceToDevice, g->stream));
			CK(cudaMemcpyAsync(g->vbase + sg->off * 2, g->vbase +
			    was[h].off * 2, (size_t)was[h].len * rb,
			    cudaMemcpyDeviceToDevice, g->stream));
		}
		sg->len = was[h].len;
	}
	if (old.chunk >= 0) {
		gchunk *c = &g->ch[old.chunk];

		c->live -= old.bytes;
		if (c->live == 0)
			c->top = 0;
	}
	return KVX_OK;
}

// --- scratch -----------------------------------------------------------------

/* Replace *p by a device buffer of bytes. */
kvx_status
gpu__regrow(void **p, size_t bytes)
{
	cudaFree(*p);
	*p = NULL;
	if (cudaMalloc(p, bytes ? bytes : 16) != cudaSuccess) {
		cudaGetLastError();
		*p = NULL;
		return kvx__fail(KVX_ERR_NOMEM, "cannot allocate %zu bytes on "
		    "the device", bytes);
	}
	return KVX_OK;
}
