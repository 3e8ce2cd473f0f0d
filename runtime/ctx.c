/*
 * ctx.c - inference contexts: the public calls check their arguments, and
 * the context's back end (backend.h: cpu.c, or gpu.c with CUDA) does the
 * work.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ctx.h"
#include "model.h"
#include "plan.h"
#include "util.h"

struct kvx_ctx {
	kvx_model	*m;
	kvx_plan	*plan;		/* NULL: full cache */
	kvx_ctx_params	 p;		/* device resolved to CPU or GPU */
	const ctx_ops	*ops;
	void		*be;		/* the back end's state */
	double		 prefill_s;	/* in kvx_prefill and kvx_compress_from,
					   all sequences */
};

void
kvx_ctx_params_init(kvx_ctx_params *p)
{
	memset(p, 0, sizeof *p);
	p->n_seq = 1;
	p->n_ctx = 0;
	p->decode_headroom = 256;
	p->device = KVX_DEVICE_AUTO;
	p->n_threads = 0;
}

void
kvx_ctx_free(kvx_ctx **pc)
{
	kvx_ctx *c = *pc;

	if (c == NULL)
		return;
	if (c->ops != NULL)
		c->ops->destroy(&c->be);
	kvx_plan_free(&c->plan);
	free(c);
	*pc = NULL;
}

/*
 * Resolve the device to a back end: auto takes the GPU when the library has
 * CUDA, a device is usable and the GPU forward runs the model (every
 * scorer runs there), unless the environment sets KVX_DEVICE=cpu; the
 * CPU otherwise.
 */
static kvx_status
pick_device(kvx_ctx *c)
{
	const ctx_ops *gpu = gpu_ops_get();
	const char *e = getenv("KVX_DEVICE");

	switch (c->p.device) {
	case KVX_DEVICE_AUTO:
		if (gpu != NULL && (e == NULL || strcmp(e, "cpu") != 0) &&
		    gpu->available() && gpu->runs(c->m)) {
			c->p.device = KVX_DEVICE_GPU;
			c->ops = gpu;
		} else {
			c->p.device = KVX_DEVICE_CPU;
			c->ops = &cpu_ops;
		}
		return KVX_OK;
	case KVX_DEVICE_CPU:
		c->ops = &cpu_ops;
		return KVX_OK;
	case KVX_DEVICE_GPU:
		if (gpu == NULL)
			return kvx__fail(KVX_ERR_UNSUPPORTED, "a GPU context "
			    "was asked for but libkvx was built without CUDA");
		if (!gpu->available())
			return kvx__fail(KVX_ERR_DEVICE, "a GPU context was "
			    "asked for but no CUDA device is usable");
		c->ops = gpu;
		return KVX_OK;
	}
	return kvx__fail(KVX_ERR_ARG, "device %d is not one of 0 (auto), 1 "
	    "(CPU), 2 (GPU)", c->p.device);
}

kvx_status
kvx_ctx_new(kvx_model *m, const kvx_plan *plan, const kvx_ctx_params *pp,
    kvx_ctx **out)
{
	kvx_ctx_params dp;
	kvx_status rc;
	kvx_ctx *c;

	if (m == NULL || out == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_ctx_new: NULL argument");
	*out = NULL;
	if (pp == NULL) {
		kvx_ctx_params_init(&dp);
		pp = &dp;
	}
	if (pp->n_seq < 1 || pp->n_seq > 4096)
		return kvx__fail(KVX_ERR_ARG, "n_seq %d is out of range "
		    "[1, 4096]", pp->n_seq);
	if (pp->n_ctx < 0 || pp->decode_headroom < 0 || pp->n_threads < 0)
		return kvx__fail(KVX_ERR_ARG, "n_ctx, decode_headroom and "
		    "n_threads must not be negative");
	if (plan != NULL && (rc = kvx_plan_check(plan, m)) != KVX_OK)
		return rc;
	if ((c = calloc(1, sizeof *c)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	c->m = m;
	c->p = *pp;
	if (c->p.n_ctx == 0)
		c->p.n_ctx = m->info.n_ctx_train;
	if ((plan != NULL && (rc = plan_copy(plan, &c->plan)) != KVX_OK) ||
	    (rc = pick_device(c)) != KVX_OK ||
	    (rc = c->ops->create(m, c->plan, &c->p, &c->be)) != KVX_OK) {
		kvx_ctx_free(&c);
		return rc;
	}
	*out = c;
	return KVX_OK;
}

/* KVX_OK when seq names one of c's sequences. */
static kvx_status
check_seq(const kvx_ctx *c, int seq)
{
	if (c == NULL)
		return kvx__fail(KVX_ERR_ARG, "NULL context");
	if (seq < 0 || seq >= c->p.n_seq)
		return kvx__fail(KVX_ERR_ARG, "sequence %d out of range "
		    "[0, %d)", seq, c->p.n_seq);
	return KVX_OK;
}

kvx_status
kvx_prefill(kvx_ctx *c, int seq, const int32_t *ids, int n, float *logits)
{
	kvx_status rc;
	double t0;

	if ((rc = check_seq(c, seq)) != KVX_OK)
		return rc;
	if (ids == NULL || n < 1)
		return kvx__fail(KVX_ERR_ARG, "kvx_prefill: no tokens");
	if (c->ops->seq_len(c->be, seq) != 0)
		return kvx__fail(KVX_ERR_ARG, "kvx_prefill: sequence %d is "
		    "not empty (use kvx_extend, or kvx_seq_clear first)", seq);
	if (n > c->p.n_ctx)
		return kvx__fail(KVX_ERR_CAPACITY, "prompt of %d tokens "
		    "exceeds the context size %d", n, c->p.n_ctx);
	t0 = kvx__now();
	rc = c->ops->prefill(c->be, seq, ids, n, logits);
	c->prefill_s += kvx__now() - t0;
	return rc;
}

kvx_status
kvx_extend(kvx_ctx *c, int seq, const int32_t *ids, int n, float *logits)
{
	kvx_status rc;
	int p0;

	if ((rc = check_seq(c, seq)) != KVX_OK)
		return rc;
	if (ids == NULL || n < 1)
		return kvx__fail(KVX_ERR_ARG, "kvx_extend: no tokens");
	p0 = c->ops->seq_len(c->be, seq);
	if (p0 + n > c->p.n_ctx)
		return kvx__fail(KVX_ERR_CAPACITY, "sequence %d would reach "
		    "%d tokens, beyond the context size %d", seq, p0 + n,
		    c->p.n_ctx);
	return c->ops->extend(c->be, seq, ids, n, logits);
}

kvx_status
kvx_decode(kvx_ctx *c, int n, const int *seqs, const int32_t *ids,
    float *logits)
{
	kvx_status rc;
	int i, j;

	if (c == NULL || seqs == NULL || ids == NULL || n < 1)
		return kvx__fail(KVX_ERR_ARG, "kvx_decode: bad arguments");
	for (i = 0; i < n; i++) {
		if ((rc = check_seq(c, seqs[i])) != KVX_OK)
			return rc;
		for (j = 0; j < i; j++)
			if (seqs[j] == seqs[i])
				return kvx__fail(KVX_ERR_ARG, "kvx_decode: "
				    "sequence %d appears twice", seqs[i]);
		if (c->ops->seq_len(c->be, seqs[i]) + 1 > c->p.n_ctx)
			return kvx__fail(KVX_ERR_CAPACITY, "sequence %d is "
			    "full (%d tokens)", seqs[i], c->p.n_ctx);
	}
	return c->ops->decode(c->be, n, seqs, ids, logits);
}

kvx_status
kvx_compress_from(kvx_ctx *dst, int dseq, const kvx_ctx *src, int sseq)
{
	kvx_status rc;
	double t0;

	if ((rc = check_seq(dst, dseq)) != KVX_OK ||
	    (rc = check_seq(src, sseq)) != KVX_OK)
		return rc;
	if (dst->m != src->m)
		return kvx__fail(KVX_ERR_ARG, "kvx_compress_from: contexts of "
		    "different models");
	if (dst->ops != src->ops || dst->ops->compress_from == NULL)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "kvx_compress_from "
		    "works between contexts on the same device only");
	t0 = kvx__now();
	rc = dst->ops->compress_from(dst->be, dseq, src->be, sseq);
	dst->prefill_s += kvx__now() - t0;
	return rc;
}

kvx_status
kvx_seq_clear(kvx_ctx *c, int seq)
{
	kvx_status rc;

	if ((rc = check_seq(c, seq)) != KVX_OK)
		return rc;
	return c->ops->seq_clear(c->be, seq);
}

int
kvx_seq_len(const kvx_ctx *c, int seq)
{
	if (check_seq(c, seq) != KVX_OK)
		return -1;
	return c->ops->seq_len(c->be, seq);
}

int
kvx_ctx_get_device(const kvx_ctx *c)
{
	return c == NULL ? -1 : c->p.device;
}

kvx_status
kvx_ctx_memory(const kvx_ctx *c, kvx_memory *mem)
{
	if (c == NULL || mem == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_ctx_memory: NULL argument");
	return c->ops->memory(c->be, mem);
}

kvx_status
kvx_ctx_get_stats(const kvx_ctx *c, kvx_ctx_stats *st)
{
	if (c == NULL || st == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_ctx_get_stats: NULL "
		    "argument");
	memset(st, 0, sizeof *st);
	st->prefill_s = c->prefill_s;
	st->select_s = c->ops->select_seconds != NULL ?
	    c->ops->select_seconds(c->be) : -1;
	return KVX_OK;
}

// --- private accessors -------------------------------------------------------

const kv_cache *
ctx_kv(const kvx_ctx *c)
{
	return c->ops == &cpu_ops ? cpu_kv(c->be) : NULL;
}

struct gpu_ctx *
ctx_gpu(const kvx_ctx *c)
{
	return c->ops != &cpu_ops ? c->be : NULL;
}

const kvx_plan *
ctx_plan(const kvx_ctx *c)
{
	return c->plan;
}
