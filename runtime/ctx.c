/*
 * ctx.c - inference contexts: sequences, prefill with per-layer
 * compression to the plan, extend, batched decode, memory accounting; and
 * the public tokenizer calls.
 * SPDX-License-Identifier: MIT
 *
 * Compression happens inside the prefill, one layer at a time, right after
 * that layer's attention has seen the whole prompt (as SnapKV does): the
 * full cache of the prompt exists for one layer at a time only, so the peak
 * memory is the compressed cache plus one layer.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#ifdef HAVE_CUDA
#include "gpu.h"
#endif
#include "kvcache.h"
#include "model.h"
#include "plan.h"
#include "select.h"
#include "util.h"

/* Window queries kept per sequence so that another context can compress
 * from this one's prefill (kvx_compress_from): as many as any plan uses. */
#define WIN_SAVE KVX_WINDOW_MAX

struct kvx_ctx {
	kvx_model	*m;
	kvx_plan	*plan;		/* NULL: full cache */
	kvx_ctx_params	 p;
	kv_cache	*kv;
	fw_scratch	*s;
	kvx_pool	*pool;		/* CPU workers; NULL until first used */
	int		 s_tokens;	/* scratch capacity in tokens */
	float		*winq;		/* [seq][layer][head][WIN_SAVE][D] */
	int		*winq_n;	/* per seq: saved window length */
	/* selection scratch */
	float		*score, *pooled, *wtmp;
	int		*idx;
#ifdef HAVE_CUDA
	gpu_ctx		*g;		/* non-NULL: the context is on the GPU */
#endif
};

void
kvx_ctx_params_init(kvx_ctx_params *p)
{
	memset(p, 0, sizeof *p);
	p->n_seq = 1;
	p->n_ctx = 0;
	p->decode_headroom = 256;
	p->device = KVX_DEVICE_AUTO;
}

void
kvx_ctx_free(kvx_ctx **pc)
{
	kvx_ctx *c = *pc;

	if (c == NULL)
		return;
#ifdef HAVE_CUDA
	gpu_ctx_free(&c->g);
#endif
	kvx_plan_free(&c->plan);
	kv_free(&c->kv);
	fw_scratch_free(&c->s);
	pool_free(&c->pool);
	free(c->winq);
	free(c->winq_n);
	free(c->score);
	free(c->pooled);
	free(c->wtmp);
	free(c->idx);
	free(c);
	*pc = NULL;
}

/*
 * Resolve the device: auto takes the GPU when the library has CUDA and a
 * device is usable, unless the environment sets KVX_DEVICE=cpu.
 */
static kvx_status
pick_device(kvx_ctx *c)
{
	const char *e = getenv("KVX_DEVICE");

	if (c->p.device == KVX_DEVICE_AUTO) {
		c->p.device = KVX_DEVICE_CPU;
#ifdef HAVE_CUDA
		if ((e == NULL || strcmp(e, "cpu") != 0) && gpu_available())
			c->p.device = KVX_DEVICE_GPU;
#else
		(void)e;
#endif
		return KVX_OK;
	}
	if (c->p.device == KVX_DEVICE_CPU)
		return KVX_OK;
	if (c->p.device != KVX_DEVICE_GPU)
		return kvx__fail(KVX_ERR_ARG, "device %d is not one of 0 "
		    "(auto), 1 (CPU), 2 (GPU)", c->p.device);
#ifdef HAVE_CUDA
	if (!gpu_available())
		return kvx__fail(KVX_ERR_DEVICE, "a GPU context was asked for "
		    "but no CUDA device is usable");
	return KVX_OK;
#else
	return kvx__fail(KVX_ERR_UNSUPPORTED, "a GPU context was asked for "
	    "but libkvx was built without CUDA");
#endif
}

kvx_status
kvx_ctx_new(kvx_model *m, const kvx_plan *plan, const kvx_ctx_params *pp,
    kvx_ctx **out)
{
	const kvx_model_info *mi;
	kvx_ctx_params dp;
	kvx_status rc;
	kvx_ctx *c;
	size_t nw, nctx;

	if (m == NULL || out == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_ctx_new: NULL argument");
	*out = NULL;
	mi = &m->info;
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
		c->p.n_ctx = mi->n_ctx_train;
	if (plan != NULL && (rc = plan_copy(plan, &c->plan)) != KVX_OK)
		goto fail;
	if (c->plan != NULL && c->plan->window > WIN_SAVE) {
		rc = kvx__fail(KVX_ERR_PLAN, "plan window %d exceeds the "
		    "runtime's limit %d", c->plan->window, WIN_SAVE);
		goto fail;
	}
	if ((rc = pick_device(c)) != KVX_OK)
		goto fail;
#ifdef HAVE_CUDA
	if (c->p.device == KVX_DEVICE_GPU) {
		if ((rc = gpu_ctx_new(m, c->plan, &c->p, &c->g)) != KVX_OK)
			goto fail;
		*out = c;
		return KVX_OK;
	}
#endif
	if ((rc = kv_new(c->p.n_seq, mi->n_layer, mi->n_head_kv, mi->head_dim,
	    c->p.n_ctx, &c->kv)) != KVX_OK)
		goto fail;
	nw = (size_t)mi->n_layer * mi->n_head * WIN_SAVE * mi->head_dim;
	nctx = (size_t)c->p.n_ctx + 1;
	c->winq = kvx__malloc_array((size_t)c->p.n_seq * nw, sizeof(float));
	c->winq_n = kvx__calloc((size_t)c->p.n_seq, sizeof(int));
	c->score = kvx__malloc_array(nctx, sizeof(float));
	c->pooled = kvx__malloc_array(nctx * mi->n_head_kv, sizeof(float));
	c->wtmp = kvx__malloc_array((size_t)mi->n_head * WIN_SAVE *
	    mi->head_dim, sizeof(float));
	c->idx = kvx__malloc_array(nctx, sizeof(int));
	if (!c->winq || !c->winq_n || !c->score || !c->pooled || !c->wtmp ||
	    !c->idx) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory");
		goto fail;
	}
	*out = c;
	return KVX_OK;
fail:
	kvx_ctx_free(&c);
	return rc;
}

/* Make sure the forward scratch holds n tokens. */
static kvx_status
ensure_scratch(kvx_ctx *c, int n)
{
	kvx_status rc;
	int want;

	if (c->s != NULL && c->s_tokens >= n)
		return KVX_OK;
	want = n < 64 ? 64 : n;
	fw_scratch_free(&c->s);
	if (c->pool == NULL && (c->pool = pool_new(c->p.n_threads > 0 ?
	    c->p.n_threads : c->m->n_threads)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "cannot start the context's "
		    "threads");
	if ((rc = fw_scratch_new(c->m, c->pool, want, c->p.n_ctx, &c->s)) !=
	    KVX_OK)
		return rc;
	c->s_tokens = want;
	return KVX_OK;
}

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

// --- selection -----------------------------------------------------------------

/*
 * Compress layer l of sequence sseq in src, which holds all n prompt
 * tokens, into sequence dseq of dst (the two may be the same), by dst's
 * plan, given that layer's window queries wq[H][w][D].  Without a plan
 * the rows are copied whole.
 */
static kvx_status
select_layer(kvx_ctx *dst, int dseq, const kv_cache *src, int sseq, int n,
    int l, const float *wq, int w)
{
	const kvx_model_info *mi = &dst->m->info;
	const kvx_plan *P = dst->plan;
	int Hkv = mi->n_head_kv, D = mi->head_dim, g = mi->n_head / Hkv;
	int h, i, cnt, pw;
	int counts[SEL_MAX_KV_HEADS];
	const float *pp[SEL_MAX_KV_HEADS];
	sel_counts sc;
	kvx_status rc;

	if (Hkv > SEL_MAX_KV_HEADS)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "more than %d KV heads",
		    SEL_MAX_KV_HEADS);
	if (P == NULL || n <= 1) {
		for (h = 0; h < Hkv; h++) {
			const kv_seg *ss = kv_seg_cget(src, sseq, l, h);

			for (i = 0; i < ss->len; i++)
				dst->idx[i] = i;
			if ((rc = kv_compact(dst->kv, kv_seg_at(dst->kv, dseq,
			    l, h), ss, dst->idx, ss->len,
			    dst->p.decode_headroom)) != KVX_OK)
				return rc;
		}
		return KVX_OK;
	}

	sel_rule(P, l, n, w, Hkv, &sc);
	pw = sc.pw;
	for (h = 0; h < Hkv; h++) {
		const kv_seg *ss = kv_seg_cget(src, sseq, l, h);
		float *pooled = dst->pooled + (size_t)h * (n + 1);
		int j, q;

		if (ss->len != n)
			return kvx__fail(KVX_ERR_ARG, "sequence %d was already "
			    "compressed", sseq);
		for (q = 0; q < g; q++)
			for (j = 0; j < pw; j++)
				memcpy(dst->wtmp + ((size_t)q * pw + j) * D,
				    wq + (((size_t)(h * g + q)) * w + (w - pw +
				    j)) * D, (size_t)D * sizeof(float));
		sel_score(dst->wtmp, ss->k, n, pw, g, D,
		    1.0f / sqrtf((float)D), P->gqa, dst->score);
		sel_pool(dst->score, n - pw, P->pool_kernel, P->pool, pooled);
	}

	if (sc.hybrid) {
		for (h = 0; h < Hkv; h++)
			pp[h] = dst->pooled + (size_t)h * (n + 1) + sc.sinks;
		if (sc.ncand > 0)
			sel_hybrid_split(pp, Hkv, sc.ncand, sc.total, sc.floor,
			    counts);
		else
			for (h = 0; h < Hkv; h++)
				counts[h] = 0;
		for (h = 0; h < Hkv; h++)
			sc.keep[h] = sel_keep(&sc, counts[h]);
	}

	for (h = 0; h < Hkv; h++) {
		const kv_seg *ss = kv_seg_cget(src, sseq, l, h);

		cnt = sel_select(dst->pooled + (size_t)h * (n + 1), n, pw,
		    sc.sinks, sc.keep[h], dst->idx);
		if ((rc = kv_compact(dst->kv, kv_seg_at(dst->kv, dseq, l, h),
		    ss, dst->idx, cnt, dst->p.decode_headroom)) != KVX_OK)
			return rc;
	}
	return KVX_OK;
}

/* Forward hook: save the window queries, then compress the layer. */
static kvx_status
prefill_hook(void *arg, int seq, int l, const float *wq, int w,
    const float *xw)
{
	kvx_ctx *c = arg;
	const kvx_model_info *mi = &c->m->info;
	size_t per = (size_t)mi->n_head * WIN_SAVE * mi->head_dim;
	float *dst = c->winq + ((size_t)seq * mi->n_layer + l) * per;

	memcpy(dst, wq, (size_t)mi->n_head * w * mi->head_dim * sizeof(float));
	c->winq_n[seq] = w;
	if (c->plan == NULL) {
		int h;
		kvx_status rc;

		/* the full cache, too, keeps the prompt plus the headroom */
		for (h = 0; h < mi->n_head_kv; h++) {
			kv_seg *sg = kv_seg_at(c->kv, seq, l, h);

			if ((rc = kv_fit(c->kv, sg, sg->len +
			    c->p.decode_headroom)) != KVX_OK)
				return rc;
		}
		return KVX_OK;
	}
	/* the forward has appended the whole prompt to this layer */
	return select_layer(c, seq, c->kv, seq, kv_seg_cget(c->kv, seq, l,
	    0)->len, l, wq, w);
}

// --- inference -----------------------------------------------------------------

/*
 * Run n tokens of one sequence from position p0 through the CPU forward:
 * a prefill (hook set: save window queries, compress each layer) or an
 * extend.  logits: 1 the last token's, 2 every token's, into out if set.
 */
static kvx_status
run_seq(kvx_ctx *c, int seq, const int32_t *ids, int n, int p0,
    int logits, float *out, fw_layer_hook hook)
{
	int *sq, *pos, i;
	kvx_status rc;
	fw_batch b;

	if ((rc = ensure_scratch(c, n)) != KVX_OK)
		return rc;
	sq = kvx__malloc_array((size_t)n, sizeof(int));
	pos = kvx__malloc_array((size_t)n, sizeof(int));
	if (sq == NULL || pos == NULL) {
		free(sq);
		free(pos);
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < n; i++) {
		sq[i] = seq;
		pos[i] = p0 + i;
	}
	memset(&b, 0, sizeof b);
	b.n = n;
	b.ids = ids;
	b.seq = sq;
	b.pos = pos;
	b.logits = out != NULL ? logits : 0;
	b.out = out;
	if (hook != NULL) {
		b.window = WIN_SAVE;
		b.hook = hook;
		b.hook_arg = c;
	}
	rc = model_forward(c->m, c->kv, c->s, &b);
	free(sq);
	free(pos);
	return rc;
}

kvx_status
kvx_prefill(kvx_ctx *c, int seq, const int32_t *ids, int n, float *logits)
{
	kvx_status rc;

	if ((rc = check_seq(c, seq)) != KVX_OK)
		return rc;
	if (ids == NULL || n < 1)
		return kvx__fail(KVX_ERR_ARG, "kvx_prefill: no tokens");
	if (kvx_seq_len(c, seq) != 0)
		return kvx__fail(KVX_ERR_ARG, "kvx_prefill: sequence %d is "
		    "not empty (use kvx_extend, or kvx_seq_clear first)", seq);
	if (n > c->p.n_ctx)
		return kvx__fail(KVX_ERR_CAPACITY, "prompt of %d tokens "
		    "exceeds the context size %d", n, c->p.n_ctx);
#ifdef HAVE_CUDA
	if (c->g != NULL)
		return gpu_prefill(c->g, seq, ids, n, logits);
#endif
	if ((rc = run_seq(c, seq, ids, n, 0, 1, logits, prefill_hook)) !=
	    KVX_OK) {
		kv_seq_clear(c->kv, seq);
		return rc;
	}
	c->kv->n_pos[seq] = n;
	c->kv->compressed[seq] = c->plan != NULL;
	return KVX_OK;
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
	p0 = kvx_seq_len(c, seq);
	if (p0 + n > c->p.n_ctx)
		return kvx__fail(KVX_ERR_CAPACITY, "sequence %d would reach "
		    "%d tokens, beyond the context size %d", seq, p0 + n,
		    c->p.n_ctx);
#ifdef HAVE_CUDA
	if (c->g != NULL)
		return gpu_extend(c->g, seq, ids, n, logits);
#endif
	if ((rc = run_seq(c, seq, ids, n, p0, 2, logits, NULL)) != KVX_OK)
		return rc;
	c->kv->n_pos[seq] = p0 + n;
	return KVX_OK;
}

kvx_status
kvx_decode(kvx_ctx *c, int n, const int *seqs, const int32_t *ids,
    float *logits)
{
	int *pos, i, j;
	kvx_status rc;
	fw_batch b;

	if (c == NULL || seqs == NULL || ids == NULL || n < 1)
		return kvx__fail(KVX_ERR_ARG, "kvx_decode: bad arguments");
	for (i = 0; i < n; i++) {
		if ((rc = check_seq(c, seqs[i])) != KVX_OK)
			return rc;
		for (j = 0; j < i; j++)
			if (seqs[j] == seqs[i])
				return kvx__fail(KVX_ERR_ARG, "kvx_decode: "
				    "sequence %d appears twice", seqs[i]);
		if (kvx_seq_len(c, seqs[i]) + 1 > c->p.n_ctx)
			return kvx__fail(KVX_ERR_CAPACITY, "sequence %d is "
			    "full (%d tokens)", seqs[i], c->p.n_ctx);
	}
#ifdef HAVE_CUDA
	if (c->g != NULL)
		return gpu_decode(c->g, n, seqs, ids, logits);
#endif
	if ((rc = ensure_scratch(c, n)) != KVX_OK)
		return rc;
	if ((pos = kvx__malloc_array((size_t)n, sizeof(int))) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	for (i = 0; i < n; i++)
		pos[i] = c->kv->n_pos[seqs[i]];
	memset(&b, 0, sizeof b);
	b.n = n;
	b.ids = ids;
	b.seq = seqs;
	b.pos = pos;
	b.logits = logits != NULL ? 2 : 0;
	b.out = logits;
	rc = model_forward(c->m, c->kv, c->s, &b);
	if (rc == KVX_OK)
		for (i = 0; i < n; i++)
			c->kv->n_pos[seqs[i]]++;
	free(pos);
	return rc;
}

kvx_status
kvx_compress_from(kvx_ctx *dst, int dseq, const kvx_ctx *src, int sseq)
{
	const kvx_model_info *mi;
	size_t per;
	kvx_status rc;
	int l;

	if ((rc = check_seq(dst, dseq)) != KVX_OK ||
	    (rc = check_seq(src, sseq)) != KVX_OK)
		return rc;
	if (dst->m != src->m)
		return kvx__fail(KVX_ERR_ARG, "kvx_compress_from: contexts of "
		    "different models");
#ifdef HAVE_CUDA
	if (dst->g != NULL || src->g != NULL)
		return kvx__fail(KVX_ERR_UNSUPPORTED, "kvx_compress_from "
		    "works on CPU contexts only");
#endif
	if (src->kv->compressed[sseq] || src->winq_n[sseq] == 0)
		return kvx__fail(KVX_ERR_ARG, "kvx_compress_from: source "
		    "sequence %d holds no uncompressed prefill", sseq);
	if (dst->kv->n_pos[dseq] != 0)
		return kvx__fail(KVX_ERR_ARG, "kvx_compress_from: sequence %d "
		    "is not empty", dseq);
	if (src->kv->n_pos[sseq] > dst->p.n_ctx)
		return kvx__fail(KVX_ERR_CAPACITY, "source holds %d tokens, "
		    "beyond the context size %d", src->kv->n_pos[sseq],
		    dst->p.n_ctx);
	mi = &dst->m->info;
	per = (size_t)mi->n_head * WIN_SAVE * mi->head_dim;
	for (l = 0; l < mi->n_layer; l++) {
		const float *wq = src->winq + ((size_t)sseq * mi->n_layer + l) *
		    per;

		if ((rc = select_layer(dst, dseq, src->kv, sseq,
		    src->kv->n_pos[sseq], l, wq,
		    src->winq_n[sseq])) != KVX_OK) {
			kv_seq_clear(dst->kv, dseq);
			return rc;
		}
	}
	memcpy(dst->winq + (size_t)dseq * mi->n_layer * per,
	    src->winq + (size_t)sseq * mi->n_layer * per,
	    mi->n_layer * per * sizeof(float));
	dst->winq_n[dseq] = src->winq_n[sseq];
	dst->kv->n_pos[dseq] = src->kv->n_pos[sseq];
	dst->kv->compressed[dseq] = dst->plan != NULL;
	return KVX_OK;
}

kvx_status
kvx_seq_clear(kvx_ctx *c, int seq)
{
	kvx_status rc;

	if ((rc = check_seq(c, seq)) != KVX_OK)
		return rc;
#ifdef HAVE_CUDA
	if (c->g != NULL)
		return gpu_seq_clear(c->g, seq);
#endif
	kv_seq_clear(c->kv, seq);
	c->winq_n[seq] = 0;
	return KVX_OK;
}

int
kvx_seq_len(const kvx_ctx *c, int seq)
{
	if (check_seq(c, seq) != KVX_OK)
		return -1;
#ifdef HAVE_CUDA
	if (c->g != NULL)
		return gpu_seq_len(c->g, seq);
#endif
	return c->kv->n_pos[seq];
}

int
kvx_ctx_get_device(const kvx_ctx *c)
{
	return c == NULL ? -1 : c->p.device;
}

kvx_status
kvx_ctx_memory(const kvx_ctx *c, kvx_memory *mem)
{
	const kv_cache *kv;
	size_t row;
	int s, l, h;

	if (c == NULL || mem == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_ctx_memory: NULL argument");
#ifdef HAVE_CUDA
	if (c->g != NULL)
		return gpu_memory(c->g, mem);
#endif
	kv = c->kv;
	row = kv_row_bytes(kv);
	memset(mem, 0, sizeof *mem);
	mem->kv_bytes = kv->bytes;
	for (s = 0; s < kv->n_seq; s++) {
		mem->n_tokens += kv->n_pos[s];
		for (l = 0; l < kv->n_layer; l++)
			for (h = 0; h < kv->n_head_kv; h++)
				mem->n_kept += kv_seg_cget(kv, s, l, h)->len;
	}
	mem->kv_bytes_used = (uint64_t)mem->n_kept * row;
	mem->kv_bytes_full = (uint64_t)mem->n_tokens * kv->n_layer *
	    kv->n_head_kv * row;
	return KVX_OK;
}

// --- tokenizer ---------------------------------------------------------------

kvx_status
kvx_tokenize(const kvx_model *m, const char *text, size_t len,
    int parse_special, int32_t *ids, int cap, int *n)
{
	if (m == NULL || (text == NULL && len > 0) || n == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_tokenize: NULL argument");
	return tok_encode(m->tok, text, len, parse_special, ids, cap, n);
}

kvx_status
kvx_token_piece(const kvx_model *m, int32_t id, char *buf, size_t size,
    size_t *len)
{
	if (m == NULL || buf == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_token_piece: NULL argument");
	return tok_piece(m->tok, id, buf, size, len);
}

int32_t
kvx_token_bos(const kvx_model *m)
{
	return tok_bos(m->tok);
}

int32_t
kvx_token_eos(const kvx_model *m)
{
	return tok_eos(m->tok);
}

int
kvx_token_is_eog(const kvx_model *m, int32_t id)
{
	return tok_is_eog(m->tok, id);
}

kvx_status
kvx_chat_format(const kvx_model *m, const char *system, const char *user,
    char **out)
{
	if (m == NULL || user == NULL || out == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_chat_format: NULL argument");
	return tok_chat_format(m->tok, system, user, out);
}

// --- private accessors -------------------------------------------------------

const kv_cache *
ctx_kv(const kvx_ctx *c)
{
	return c->kv;
}

const kvx_plan *
ctx_plan(const kvx_ctx *c)
{
	return c->plan;
}
