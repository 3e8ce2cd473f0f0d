/*
 * model.c - Llama-family model on the CPU: GGUF weights, then the forward
 * pass over a batch of tokens, top to bottom.  Architectures differ only
 * where their description (arch.c) says: Q/K/V biases, RoPE layout, head
 * norms, post-norms, the MLP's activation, embedding scale and the
 * sliding-window layers.
 * SPDX-License-Identifier: MIT
 *
 * Linear layers take one of two paths.  Few tokens (decode): the weights
 * stay quantised and each thread does a slice of rows with the quantised
 * dot products of quant.c, so a step reads each weight byte once.  Many
 * tokens (prefill): the weights are dequantised once to f32 and each
 * thread runs an sgemm on its slice of rows.  All threading is kvx's own;
 * OpenBLAS runs single-threaded inside the workers.
 */
#include "config.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef HAVE_OPENBLAS
#include <cblas.h>
#endif

#include "attn.h"
#include "model.h"
#include "quant.h"
#include "util.h"
#include "vexp.h"

/* Batches at least this large use the f32 GEMM path. */
#ifndef GEMM_MIN_TOKENS
#define GEMM_MIN_TOKENS 8
#endif
/* Query rows per attention block on the GEMM path. */
#define ATT_BLOCK 64

#ifdef HAVE_OPENBLAS
extern void openblas_set_num_threads(int);
#endif

// --- loading -----------------------------------------------------------------

/* Bind a matrix tensor of the expected shape (rows x cols). */
static kvx_status
bind_mat(const gguf_file *gf, const char *name, int rows, int cols, mat *m,
    int optional)
{
	const gguf_tensor *t = gguf_tensor_find(gf, name);

	memset(m, 0, sizeof *m);
	if (t == NULL) {
		if (optional)
			return KVX_OK;
		return kvx__fail(KVX_ERR_FORMAT, "tensor %s is missing", name);
	}
	if (t->n_dims != 2 || t->ne[0] != (uint64_t)cols ||
	    t->ne[1] != (uint64_t)rows)
		return kvx__fail(KVX_ERR_FORMAT, "tensor %s has shape "
		    "[%llu, %llu], expected [%d, %d]", name,
		    (unsigned long long)t->ne[0],
		    (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 1), cols,
		    rows);
	/* prefill dequantises (quant_dequant), decode runs
	   quant_matvec_f32: both take every type quant_supported names */
	if (!quant_supported(t->type))
		return kvx__fail(KVX_ERR_UNSUPPORTED, "tensor %s has type %s, "
		    "which kvx cannot multiply", name, ggml_type_name(t->type));
	m->q = t->data;
	m->type = t->type;
	m->rows = rows;
	m->cols = cols;
	return KVX_OK;
}

/* Bind an F32 vector of n elements. */
static kvx_status
bind_vec(const gguf_file *gf, const char *name, int n, const float **v)
{
	const gguf_tensor *t = gguf_tensor_find(gf, name);

	if (t == NULL)
		return kvx__fail(KVX_ERR_FORMAT, "tensor %s is missing", name);
	if (t->type != GGML_F32 || t->ne[0] != (uint64_t)n || t->n_dims != 1)
		return kvx__fail(KVX_ERR_FORMAT, "tensor %s: expected F32 [%d]",
		    name, n);
	*v = t->data;
	return KVX_OK;
}

/* Read a u32 hyperparameter "<arch>.<key>" into an int. */
static kvx_status
get_hp(const gguf_file *gf, const char *arch, const char *key, int *out,
    int dflt)
{
	char name[96];
	uint32_t v;

	snprintf(name, sizeof name, "%s.%s", arch, key);
	if (gguf_find(gf, name) == NULL && dflt >= 0) {
		*out = dflt;
		return KVX_OK;
	}
	if (gguf_get_u32(gf, name, &v) != KVX_OK)
		return KVX_ERR_FORMAT;
	if (v == 0 || v > (1u << 24))
		return kvx__fail(KVX_ERR_FORMAT, "%s = %u is out of range",
		    name, v);
	*out = (int)v;
	return KVX_OK;
}

/* Hash the tensor table and the hyperparameters that shape the cache. */
static void
fingerprint(const kvx_model *m, char out[65])
{
	const gguf_file *gf = m->gf;
	kvx__sha256 s;
	char buf[256];
	uint64_t i;
	int n;

	kvx__sha256_init(&s);
	n = snprintf(buf, sizeof buf, "%s|%d|%d|%d|%d|%d|%d|%d|%d|%g\n",
	    m->arch, m->info.n_layer, m->info.n_embd, m->info.n_head,
	    m->info.n_head_kv, m->info.head_dim, m->info.n_ff,
	    m->info.n_vocab, m->info.n_ctx_train, (double)m->info.rope_theta);
	kvx__sha256_update(&s, buf, (size_t)n);
	for (i = 0; i < gf->n_tensors; i++) {
		const gguf_tensor *t = &gf->tensors[i];

		kvx__sha256_update(&s, t->name.p, (size_t)t->name.len);
		n = snprintf(buf, sizeof buf, "|%d|%llu|%llu|%llu|%llu|%d\n",
		    t->n_dims, (unsigned long long)t->ne[0],
		    (unsigned long long)t->ne[1], (unsigned long long)t->ne[2],
		    (unsigned long long)t->ne[3], t->type);
		kvx__sha256_update(&s, buf, (size_t)n);
	}
	kvx__sha256_hex(&s, out);
}

void
kvx_model_params_init(kvx_model_params *p)
{
	memset(p, 0, sizeof *p);
	p->n_threads = 0;
	p->weights = KVX_WEIGHTS_AUTO;
}

/* The weights mode asked for: mp's, or for auto the environment's
 * KVX_WEIGHTS, else huge pages. */
static kvx_status
weights_mode(const kvx_model_params *mp, int *out)
{
	const char *e;

	switch (mp->weights) {
	case KVX_WEIGHTS_MMAP:
	case KVX_WEIGHTS_HUGEPAGES:
		*out = mp->weights;
		return KVX_OK;
	case KVX_WEIGHTS_AUTO:
		break;
	default:
		return kvx__fail(KVX_ERR_ARG, "weights %d is not one of 0 "
		    "(auto), 1 (mmap), 2 (huge pages)", mp->weights);
	}
	*out = KVX_WEIGHTS_HUGEPAGES;
	if ((e = getenv("KVX_WEIGHTS")) == NULL || *e == '\0')
		return KVX_OK;
	if (strcmp(e, "mmap") == 0)
		*out = KVX_WEIGHTS_MMAP;
	else if (strcmp(e, "huge") != 0)
		return kvx__fail(KVX_ERR_ARG, "KVX_WEIGHTS='%s' is not mmap "
		    "or huge", e);
	return KVX_OK;
}

void
model_weights_cpu(const kvx_model *cm)
{
	/* the placement is internal state, guarded by lazy_mu */
	kvx_model *m = (kvx_model *)cm;

	if (m->weights != KVX_WEIGHTS_HUGEPAGES ||
	    __atomic_load_n(&m->weights_tried, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&m->lazy_mu);
	if (!m->weights_tried) {
		if (gguf_load_anon(m->gf))
			__atomic_store_n(&m->weights_anon, 1,
			    __ATOMIC_RELEASE);
		__atomic_store_n(&m->weights_tried, 1, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&m->lazy_mu);
}

int
kvx_model_get_weights(const kvx_model *m)
{
	if (m == NULL)
		return -1;
	return __atomic_load_n(&m->weights_anon, __ATOMIC_ACQUIRE) ?
	    KVX_WEIGHTS_HUGEPAGES : KVX_WEIGHTS_MMAP;
}

kvx_status
kvx_model_open(const char *path, const kvx_model_params *mp, kvx_model **out)
{
	kvx_model_params dp;
	kvx_model *m;
	kvx_status rc;
	char name[96];
	int l, E, H, Hkv, D, F, swa = 0;

	if (out == NULL || path == NULL)
		return kvx__fail(KVX_ERR_ARG, "kvx_model_open: NULL argument");
	*out = NULL;
	if (mp == NULL) {
		kvx_model_params_init(&dp);
		mp = &dp;
	}
	if ((m = calloc(1, sizeof *m)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	pthread_mutex_init(&m->lazy_mu, NULL);
	if ((rc = weights_mode(mp, &m->weights)) != KVX_OK)
		goto fail;
	if ((rc = gguf_open(path, &m->gf)) != KVX_OK)
		goto fail;
	if ((rc = gguf_get_str(m->gf, "general.architecture", m->arch,
	    sizeof m->arch)) != KVX_OK)
		goto fail;
	if ((m->desc = arch_find(m->arch)) == NULL) {
		arch_names(name, sizeof name);
		rc = kvx__fail(KVX_ERR_UNSUPPORTED, "%s: architecture '%s' is "
		    "not supported (kvx runs %s)", path, m->arch, name);
		goto fail;
	}
	if (gguf_find(m->gf, "general.name") != NULL)
		gguf_get_str(m->gf, "general.name", m->name, sizeof m->name);

	if ((rc = get_hp(m->gf, m->arch, "block_count", &m->info.n_layer,
	    -1)) != KVX_OK ||
	    (rc = get_hp(m->gf, m->arch, "embedding_length", &m->info.n_embd,
	    -1)) != KVX_OK ||
	    (rc = get_hp(m->gf, m->arch, "feed_forward_length", &m->info.n_ff,
	    -1)) != KVX_OK ||
	    (rc = get_hp(m->gf, m->arch, "attention.head_count",
	    &m->info.n_head, -1)) != KVX_OK ||
	    (rc = get_hp(m->gf, m->arch, "attention.head_count_kv",
	    &m->info.n_head_kv, m->info.n_head)) != KVX_OK ||
	    (rc = get_hp(m->gf, m->arch, "context_length",
	    &m->info.n_ctx_train, 2048)) != KVX_OK)
		goto fail;
	snprintf(name, sizeof name, "%s.rope.freq_base", m->arch);
	m->info.rope_theta = 10000.0f;
	if (gguf_find(m->gf, name) != NULL &&
	    (rc = gguf_get_f32(m->gf, name, &m->info.rope_theta)) != KVX_OK)
		goto fail;
	snprintf(name, sizeof name, "%s.attention.layer_norm_rms_epsilon",
	    m->arch);
	if ((rc = gguf_get_f32(m->gf, name, &m->info.rms_eps)) != KVX_OK)
		goto fail;

	E = m->info.n_embd;
	H = m->info.n_head;
	Hkv = m->info.n_head_kv;
	F = m->info.n_ff;
	/* the head size is n_embd / n_head unless the file says (gemma3) */
	if ((rc = get_hp(m->gf, m->arch, "attention.key_length",
	    &m->info.head_dim, E % H == 0 ? E / H : 0)) != KVX_OK ||
	    (rc = get_hp(m->gf, m->arch, "attention.value_length", &D,
	    m->info.head_dim)) != KVX_OK)
		goto fail;
	if (m->info.head_dim == 0 || D != m->info.head_dim || H % Hkv != 0) {
		rc = kvx__fail(KVX_ERR_FORMAT, "%s: %d heads of %d (values %d) "
		    "over embedding %d in %d KV groups is not a shape kvx "
		    "runs", path, H, m->info.head_dim, D, E, Hkv);
		goto fail;
	}
	D = m->info.head_dim;
	if (m->desc->swa_period > 0 && (rc = get_hp(m->gf, m->arch,
	    "attention.sliding_window", &swa, 0)) != KVX_OK)
		goto fail;
	if (D > 256 || D % 2 != 0) {
		rc = kvx__fail(KVX_ERR_UNSUPPORTED, "%s: head_dim %d is not "
		    "supported", path, D);
		goto fail;
	}

	if ((rc = tok_new(m->gf, &m->tok)) != KVX_OK)
		goto fail;
	m->info.n_vocab = tok_n_vocab(m->tok);

	if ((rc = bind_mat(m->gf, "token_embd.weight", m->info.n_vocab, E,
	    &m->embd, 0)) != KVX_OK ||
	    (rc = bind_mat(m->gf, "output.weight", m->info.n_vocab, E,
	    &m->out, 1)) != KVX_OK ||
	    (rc = bind_vec(m->gf, "output_norm.weight", E, &m->out_norm)) !=
	    KVX_OK)
		goto fail;
	/* tied embeddings: the LM head is the embedding matrix */
	if (m->out.q == NULL)
		m->out = m->embd;

	m->L = kvx__calloc((size_t)m->info.n_layer, sizeof *m->L);
	if (m->L == NULL) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory");
		goto fail;
	}
	for (l = 0; l < m->info.n_layer; l++) {
		layer_w *w = &m->L[l];
#define T(s) (snprintf(name, sizeof name, "blk.%d." s, l), name)
		if ((rc = bind_mat(m->gf, T("attn_q.weight"), H * D, E, &w->wq,
		    0)) != KVX_OK ||
		    (rc = bind_mat(m->gf, T("attn_k.weight"), Hkv * D, E,
		    &w->wk, 0)) != KVX_OK ||
		    (rc = bind_mat(m->gf, T("attn_v.weight"), Hkv * D, E,
		    &w->wv, 0)) != KVX_OK ||
		    (rc = bind_mat(m->gf, T("attn_output.weight"), E, H * D,
		    &w->wo, 0)) != KVX_OK ||
		    (rc = bind_mat(m->gf, T("ffn_gate.weight"), F, E, &w->wg,
		    0)) != KVX_OK ||
		    (rc = bind_mat(m->gf, T("ffn_up.weight"), F, E, &w->wu,
		    0)) != KVX_OK ||
		    (rc = bind_mat(m->gf, T("ffn_down.weight"), E, F, &w->wd,
		    0)) != KVX_OK ||
		    (rc = bind_vec(m->gf, T("attn_norm.weight"), E,
		    &w->attn_norm)) != KVX_OK ||
		    (rc = bind_vec(m->gf, T("ffn_norm.weight"), E,
		    &w->ffn_norm)) != KVX_OK)
			goto fail;
		if (m->desc->qkv_bias &&
		    ((rc = bind_vec(m->gf, T("attn_q.bias"), H * D,
		    &w->bq)) != KVX_OK ||
		    (rc = bind_vec(m->gf, T("attn_k.bias"), Hkv * D,
		    &w->bk)) != KVX_OK ||
		    (rc = bind_vec(m->gf, T("attn_v.bias"), Hkv * D,
		    &w->bv)) != KVX_OK))
			goto fail;
		if (m->desc->qk_norm &&
		    ((rc = bind_vec(m->gf, T("attn_q_norm.weight"), D,
		    &w->q_norm)) != KVX_OK ||
		    (rc = bind_vec(m->gf, T("attn_k_norm.weight"), D,
		    &w->k_norm)) != KVX_OK))
			goto fail;
		if (m->desc->post_norms &&
		    ((rc = bind_vec(m->gf, T("post_attention_norm.weight"), E,
		    &w->post_attn_norm)) != KVX_OK ||
		    (rc = bind_vec(m->gf, T("post_ffw_norm.weight"), E,
		    &w->post_ffn_norm)) != KVX_OK))
			goto fail;
		w->theta = m->info.rope_theta;
		if (swa > 0 && (l + 1) % m->desc->swa_period != 0) {
			w->window = swa;
			w->theta = m->desc->swa_theta;
		}
#undef T
	}

	m->info.arch = m->arch;
	m->info.name = m->name;
	fingerprint(m, m->info.fingerprint);

	m->n_threads = mp->n_threads > 0 ? mp->n_threads : kvx__ncpu();
#ifdef HAVE_OPENBLAS
	openblas_set_num_threads(1);
#endif
	*out = m;
	return KVX_OK;
fail:
	kvx_model_close(&m);
	return rc;
}

static void
mat_free(mat *m, const mat *alias)
{
	if (alias != NULL && m->f == alias->f)
		return;
	free(m->f);
	m->f = NULL;
}

void
kvx_model_close(kvx_model **pm)
{
	kvx_model *m = *pm;
	int l;

	if (m == NULL)
		return;
	if (m->L != NULL) {
		for (l = 0; l < m->info.n_layer; l++) {
			layer_w *w = &m->L[l];

			mat_free(&w->wq, NULL);
			mat_free(&w->wk, NULL);
			mat_free(&w->wv, NULL);
			mat_free(&w->wo, NULL);
			mat_free(&w->wg, NULL);
			mat_free(&w->wu, NULL);
			mat_free(&w->wd, NULL);
		}
		free(m->L);
	}
	if (m->out.q != m->embd.q)
		mat_free(&m->out, NULL);
	mat_free(&m->embd, NULL);
	tok_free(&m->tok);
	gguf_close(&m->gf);
	pthread_mutex_destroy(&m->lazy_mu);
	free(m);
	*pm = NULL;
}

const kvx_model_info *
kvx_model_get_info(const kvx_model *m)
{
	return m == NULL ? NULL : &m->info;
}

/* The layer's sliding window, 0 when global. */
int
kvx_model_get_window(const kvx_model *m, int layer)
{
	if (m == NULL || layer < 0 || layer >= m->info.n_layer)
		return 0;
	return m->L[layer].window;
}

/* Bytes of one stored row of a matrix. */
static size_t
mat_row_bytes(const mat *w)
{
	return (size_t)w->cols / (size_t)ggml_type_block_elems(w->type) *
	    ggml_type_block_bytes(w->type);
}

kvx_status
model_mat_f32(kvx_model *m, mat *w)
{
	kvx_status rc = KVX_OK;
	float *f;

	if (model_mat_f32_get(w) != NULL)
		return KVX_OK;
	pthread_mutex_lock(&m->lazy_mu);
	if (w->f == NULL) {
		f = kvx__malloc_array((size_t)w->rows * w->cols, sizeof *f);
		if (f == NULL)
			rc = kvx__fail(KVX_ERR_NOMEM, "out of memory for f32 "
			    "weights");
		else if ((rc = quant_dequant(w->type, w->q, f,
		    (size_t)w->rows * w->cols)) != KVX_OK)
			free(f);
		else {
			__atomic_store_n(&w->f, f, __ATOMIC_RELEASE);
			/* the tied LM head shares the embedding's copy */
			if (m->out.q == m->embd.q && (w == &m->embd ||
			    w == &m->out)) {
				__atomic_store_n(&m->out.f, f,
				    __ATOMIC_RELEASE);
				__atomic_store_n(&m->embd.f, f,
				    __ATOMIC_RELEASE);
			}
		}
	}
	pthread_mutex_unlock(&m->lazy_mu);
	return rc;
}

const float *
model_mat_f32_get(const mat *w)
{
	return __atomic_load_n(&w->f, __ATOMIC_ACQUIRE);
}

// --- scratch -------------------------------------------------------------------

struct fw_scratch {
	int		 max_tokens, max_ctx;
	float		*x, *xn, *q, *k, *v, *att, *ffa, *ffb;
	float		*wq;		/* window queries: H x w x D */
	kvx_pool	*pool;		/* the owner's workers */
	float		*att_s;		/* per thread attention scores */
	size_t		 att_s_stride;
	int		*rank;		/* token's index within its sequence */
	int		*len0;		/* per token: rows before the batch, per
					   (layer, kv head) filled at append */
};

void
fw_scratch_free(fw_scratch **ps)
{
	fw_scratch *s = *ps;

	if (s == NULL)
		return;
	free(s->x);
	free(s->xn);
	free(s->q);
	free(s->k);
	free(s->v);
	free(s->att);
	free(s->ffa);
	free(s->ffb);
	free(s->wq);
	free(s->att_s);
	free(s->rank);
	free(s->len0);
	free(s);
	*ps = NULL;
}

kvx_status
fw_scratch_new(const kvx_model *m, kvx_pool *pool, int max_tokens,
    int max_ctx, fw_scratch **out)
{
	const kvx_model_info *mi = &m->info;
	size_t T = (size_t)max_tokens;
	fw_scratch *s;

	*out = NULL;
	model_weights_cpu(m);
	if ((s = calloc(1, sizeof *s)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	s->pool = pool;
	s->max_tokens = max_tokens;
	s->max_ctx = max_ctx;
	s->att_s_stride = (size_t)ATT_BLOCK * (size_t)(max_ctx + 1);
	if (s->att_s_stride < (size_t)mi->n_head * (size_t)(max_ctx + 1))
		s->att_s_stride = (size_t)mi->n_head * (size_t)(max_ctx + 1);
	s->x = kvx__malloc_array(T * mi->n_embd, sizeof(float));
	s->xn = kvx__malloc_array(T * mi->n_embd, sizeof(float));
	s->q = kvx__malloc_array(T * mi->n_head * mi->head_dim, sizeof(float));
	s->k = kvx__malloc_array(T * mi->n_head_kv * mi->head_dim,
	    sizeof(float));
	s->v = kvx__malloc_array(T * mi->n_head_kv * mi->head_dim,
	    sizeof(float));
	s->att = kvx__malloc_array(T * mi->n_head * mi->head_dim,
	    sizeof(float));
	s->ffa = kvx__malloc_array(T * mi->n_ff, sizeof(float));
	s->ffb = kvx__malloc_array(T * mi->n_ff, sizeof(float));
	s->wq = kvx__malloc_array((size_t)mi->n_head * KVX_WINDOW_MAX *
	    mi->head_dim, sizeof(float));
	s->att_s = kvx__malloc_array((size_t)pool_size(pool) * s->att_s_stride,
	    sizeof(float));
	s->rank = kvx__malloc_array(T, sizeof(int));
	s->len0 = kvx__malloc_array(T * mi->n_head_kv, sizeof(int));
	if (!s->x || !s->xn || !s->q || !s->k || !s->v || !s->att ||
	    !s->ffa || !s->ffb || !s->wq || !s->att_s || !s->rank ||
	    !s->len0) {
		fw_scratch_free(&s);
		return kvx__fail(KVX_ERR_NOMEM, "out of memory for the forward "
		    "scratch (%d tokens, context %d)", max_tokens, max_ctx);
	}
	*out = s;
	return KVX_OK;
}

const float *
fw_scratch_queries(const fw_scratch *s)
{
	return s->q;
}

// --- linear layers -----------------------------------------------------------

#define MAX_FUSED 3

struct lin_job {
	int		 n;		/* matrices sharing the input */
	const mat	*w[MAX_FUSED];
	float		*y[MAX_FUSED];
	const float	*x;
	int		 T;
	int		 gemm;
};

/* Worker: a slice of every matrix's rows, for all tokens. */
static void
lin_work(void *arg, int ith, int nth)
{
	struct lin_job *j = arg;
	int i, t, r0, r1;

	for (i = 0; i < j->n; i++) {
		const mat *w = j->w[i];

		pool_range(w->rows, ith, nth, &r0, &r1);
		if (r1 <= r0)
			continue;
#ifdef HAVE_OPENBLAS
		if (j->gemm) {
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
			    j->T, r1 - r0, w->cols, 1.0f, j->x, w->cols,
			    w->f + (size_t)r0 * w->cols, w->cols, 0.0f,
			    j->y[i] + r0, w->rows);
			continue;
		}
#endif
		for (t = 0; t < j->T; t++)
			quant_matvec_f32(w->type, w->q, w->cols, r0, r1,
			    j->x + (size_t)t * w->cols,
			    j->y[i] + (size_t)t * w->rows);
	}
}

/* y_i = x W_i^T for up to three matrices with the same input width. */
static kvx_status
linear(kvx_model *m, kvx_pool *pool, const float *x, int T, int n,
    mat **w, float **y)
{
	struct lin_job j;
	kvx_status rc;
	int i;

	memset(&j, 0, sizeof j);
	j.n = n;
	j.x = x;
	j.T = T;
#ifdef HAVE_OPENBLAS
	j.gemm = T >= GEMM_MIN_TOKENS;
#endif
	for (i = 0; i < n; i++) {
		j.w[i] = w[i];
		j.y[i] = y[i];
		if (j.gemm && model_mat_f32_get(w[i]) == NULL &&
		    (rc = model_mat_f32(m, w[i])) != KVX_OK)
			return rc;
	}
	pool_run(pool, lin_work, &j);
	return KVX_OK;
}

// --- elementwise -------------------------------------------------------------

static void
rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
	double ss = 0.0;
	float inv;
	int i;

	for (i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	inv = 1.0f / sqrtf((float)(ss / n) + eps);
	for (i = 0; i < n; i++)
		out[i] = x[i] * inv * w[i];
}

/* Rotary embedding: pair j of d/2 turns by pos * theta^(-2j/d); the pair
 * is (2j, 2j+1) in the GGUF llama layout, (j, j + d/2) for rotate-half. */
static void
rope(float *v, int n_heads, int d, int pos, float theta, enum arch_rope kind)
{
	int h, j, i0, i1;

	for (j = 0; j < d / 2; j++) {
		double freq = pow((double)theta, -(double)(2 * j) / d);
		double a = pos * freq;
		float c = (float)cos(a), sn = (float)sin(a);

		i0 = kind == ROPE_PAIRS ? 2 * j : j;
		i1 = kind == ROPE_PAIRS ? 2 * j + 1 : j + d / 2;
		for (h = 0; h < n_heads; h++) {
			float *p = v + (size_t)h * d;
			float x0 = p[i0], x1 = p[i1];

			p[i0] = x0 * c - x1 * sn;
			p[i1] = x0 * sn + x1 * c;
		}
	}
}

/* Add a bias row to each of T rows of n values. */
static void
add_bias(float *y, const float *b, int T, int n)
{
	int t, i;

	for (t = 0; t < T; t++)
		for (i = 0; i < n; i++)
			y[(size_t)t * n + i] += b[i];
}

static void
swiglu(float *g, const float *u, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* g = gelu(g) * u, GELU in its tanh form as llama.cpp and Gemma use. */
static void
geglu(float *g, const float *u, size_t n)
{
	const float c = 0.7978845608f;	/* sqrt(2 / pi) */
	size_t i;

	for (i = 0; i < n; i++)
		g[i] = 0.5f * g[i] * (1.0f + tanhf(c * (g[i] + 0.044715f *
		    g[i] * g[i] * g[i]))) * u[i];
}

/* RMSNorm, in place, of each of n rows of d values. */
static void
rmsnorm_rows(float *x, const float *w, size_t n, int d, float eps)
{
	size_t r;

	for (r = 0; r < n; r++)
		rmsnorm(x + r * d, x + r * d, w, d, eps);
}

/* First row of a segment a query at position p sees through a sliding
 * window of w keys (itself included): the rows are in position order. */
static int
window_start(const kv_seg *sg, int rows, int p, int w)
{
	int lo = 0, hi = rows, mid;

	if (w <= 0)
		return 0;
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (sg->pos[mid] <= p - w)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

// --- attention ---------------------------------------------------------------

struct att_job {
	const kvx_model	*m;
	kv_cache	*kv;
	fw_scratch	*s;
	const fw_batch	*b;
	int		 layer;
	int		 window;	/* the layer's sliding window, or 0 */
	int		 gemm;
};

/* Per-token attention: every (token, KV head) pair over its segment. */
static void
att_tok_work(void *arg, int ith, int nth)
{
	struct att_job *j = arg;
	const kvx_model_info *mi = &j->m->info;
	int Hkv = mi->n_head_kv, D = mi->head_dim, g = mi->n_head / Hkv;
	float scale = 1.0f / sqrtf((float)D);
	float *scr = j->s->att_s + (size_t)ith * j->s->att_s_stride;
	int lo, hi, p;

	pool_range(j->b->n * Hkv, ith, nth, &lo, &hi);
	for (p = lo; p < hi; p++) {
		int t = p / Hkv, h = p % Hkv;
		const kv_seg *sg = kv_seg_cget(j->kv, j->b->seq[t], j->layer,
		    h);
		int vis = j->s->len0[(size_t)t * Hkv + h] + j->s->rank[t] + 1;
		size_t qo = ((size_t)t * mi->n_head + (size_t)h * g) * D;
		int lo = window_start(sg, vis, j->b->pos[t], j->window);

		/* profiling's local attention, as att_gemm_work's */
		if (j->b->span > 0 && t < j->b->n - j->b->window &&
		    vis - j->b->span > lo)
			lo = vis - j->b->span;
		attn_gqa(j->s->q + qo, g, D, sg->k + (size_t)lo * D,
		    sg->v + (size_t)lo * D, vis - lo, (size_t)D, scale, scr,
		    j->s->att + qo);
	}
}

#ifdef HAVE_OPENBLAS
/* Blocked attention for one sequence's many tokens: per (query head,
 * block of query rows), S = Q K^T, causal softmax, O = S V. */
static void
att_gemm_work(void *arg, int ith, int nth)
{
	struct att_job *j = arg;
	const kvx_model_info *mi = &j->m->info;
	int H = mi->n_head, Hkv = mi->n_head_kv, D = mi->head_dim, g = H / Hkv;
	int T = j->b->n, nb = (T + ATT_BLOCK - 1) / ATT_BLOCK;
	float scale = 1.0f / sqrtf((float)D);
	float *S = j->s->att_s + (size_t)ith * j->s->att_s_stride;
	int lo, hi, p, r, c;

	pool_range(H * nb, ith, nth, &lo, &hi);
	for (p = lo; p < hi; p++) {
		int qh = p / nb, blk = p % nb, h = qh / g;
		int t0 = blk * ATT_BLOCK;
		int tb = T - t0 < ATT_BLOCK ? T - t0 : ATT_BLOCK;
		const kv_seg *sg = kv_seg_cget(j->kv, j->b->seq[0], j->layer,
		    h);
		int len0 = j->s->len0[h];
		int ncol = len0 + t0 + tb;	/* keys the last row sees */
		const float *Q = j->s->q + (size_t)t0 * H * D + (size_t)qh * D;
		int full_from = T - j->b->window, c0 = 0, nc;

		/* profiling's local attention: rows before the observation
		 * window see only the last span keys */
		if (j->b->span > 0 && t0 + tb <= full_from) {
			c0 = len0 + t0 - j->b->span + 1;
			if (c0 < 0)
				c0 = 0;
		}
		nc = ncol - c0;
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, nc,
		    D, scale, Q, H * D, sg->k + (size_t)c0 * D, D, 0.0f, S, nc);
		for (r = 0; r < tb; r++) {
			float *row = S + (size_t)r * nc, mx, sum;
			int vis = len0 + t0 + r + 1 - c0, lo = 0;

			if (j->b->span > 0 && t0 + r < full_from &&
			    vis > j->b->span)
				lo = vis - j->b->span;
			if (j->window > 0) {
				int wl = window_start(sg, c0 + vis,
				    j->b->pos[t0 + r], j->window) - c0;

				if (wl > lo)
					lo = wl;
			}
			for (c = 0; c < lo; c++)
				row[c] = 0.0f;
			mx = vmax_row(row + lo, (size_t)(vis - lo));
			sum = 1.0f / vexp_row(row + lo, (size_t)(vis - lo), mx);
			for (c = lo; c < vis; c++)
				row[c] *= sum;
			for (; c < nc; c++)
				row[c] = 0.0f;
		}
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tb, D,
		    nc, 1.0f, S, nc, sg->v + (size_t)c0 * D, D, 0.0f,
		    j->s->att + (size_t)t0 * H * D + (size_t)qh * D, H * D);
	}
}
#endif

/* Append the batch's K and V to the cache and record, per token and KV
 * head, how many rows preceded the batch. */
static kvx_status
kv_append(kv_cache *kv, fw_scratch *s, const fw_batch *b, int layer,
    int Hkv, int D)
{
	kvx_status rc;
	int t, h;

	for (t = 0; t < b->n; t++) {
		for (h = 0; h < Hkv; h++) {
			kv_seg *sg = kv_seg_at(kv, b->seq[t], layer, h);
			size_t src = ((size_t)t * Hkv + h) * D;

			if (s->rank[t] == 0)
				s->len0[(size_t)t * Hkv + h] = sg->len;
			else
				s->len0[(size_t)t * Hkv + h] =
				    s->len0[(size_t)(t - 1) * Hkv + h];
			if ((rc = kv_reserve(kv, sg, sg->len + 1)) != KVX_OK)
				return rc;
			memcpy(sg->k + (size_t)sg->len * D, s->k + src,
			    (size_t)D * sizeof(float));
			memcpy(sg->v + (size_t)sg->len * D, s->v + src,
			    (size_t)D * sizeof(float));
			sg->pos[sg->len] = b->pos[t];
			sg->len++;
		}
	}
	return KVX_OK;
}

// --- forward -------------------------------------------------------------------

kvx_status
model_forward(kvx_model *m, kv_cache *kv, fw_scratch *s, const fw_batch *b)
{
	const kvx_model_info *mi = &m->info;
	int E = mi->n_embd, H = mi->n_head, Hkv = mi->n_head_kv, D = mi->head_dim;
	int F = mi->n_ff, T = b->n, single = 1, t, l, i, w;
	size_t rowb = mat_row_bytes(&m->embd);
	struct att_job aj;
	kvx_status rc;
	mat *ws[3];
	float *ys[3];

	if (T < 1 || T > s->max_tokens)
		return kvx__fail(KVX_ERR_ARG, "batch of %d tokens (scratch "
		    "holds %d)", T, s->max_tokens);
	for (t = 0; t < T; t++) {
		if (b->ids[t] < 0 || b->ids[t] >= mi->n_vocab)
			return kvx__fail(KVX_ERR_ARG, "token id %d out of "
			    "range [0, %d)", b->ids[t], mi->n_vocab);
		if (b->seq[t] != b->seq[0])
			single = 0;
		/* rank of the token among the batch's tokens of its seq */
		s->rank[t] = (t > 0 && b->seq[t - 1] == b->seq[t]) ?
		    s->rank[t - 1] + 1 : 0;
		for (i = 0; i < t && s->rank[t] == 0; i++)
			if (b->seq[i] == b->seq[t])
				return kvx__fail(KVX_ERR_ARG, "a sequence's "
				    "tokens must be adjacent in a batch");
	}
	w = b->window < T ? b->window : T;
#ifndef HAVE_OPENBLAS
	(void)single;		/* without BLAS every batch takes one path */
#endif

	for (t = 0; t < T; t++)
		if ((rc = quant_dequant(m->embd.type, (const char *)m->embd.q +
		    (size_t)b->ids[t] * rowb, s->x + (size_t)t * E,
		    (size_t)E)) != KVX_OK)
			return rc;
	if (m->desc->embd_scale)
		for (i = 0; i < T * E; i++)
			s->x[i] *= sqrtf((float)E);

	for (l = 0; l < mi->n_layer; l++) {
		layer_w *L = &m->L[l];

		// attention block
		for (t = 0; t < T; t++)
			rmsnorm(s->xn + (size_t)t * E, s->x + (size_t)t * E,
			    L->attn_norm, E, mi->rms_eps);
		ws[0] = &L->wq; ws[1] = &L->wk; ws[2] = &L->wv;
		ys[0] = s->q; ys[1] = s->k; ys[2] = s->v;
		if ((rc = linear(m, s->pool, s->xn, T, 3, ws, ys)) != KVX_OK)
			return rc;
		if (L->bq != NULL) {
			add_bias(s->q, L->bq, T, H * D);
			add_bias(s->k, L->bk, T, Hkv * D);
			add_bias(s->v, L->bv, T, Hkv * D);
		}
		if (L->q_norm != NULL) {
			rmsnorm_rows(s->q, L->q_norm, (size_t)T * H, D,
			    mi->rms_eps);
			rmsnorm_rows(s->k, L->k_norm, (size_t)T * Hkv, D,
			    mi->rms_eps);
		}
		for (t = 0; t < T; t++) {
			rope(s->q + (size_t)t * H * D, H, D, b->pos[t],
			    L->theta, m->desc->rope);
			rope(s->k + (size_t)t * Hkv * D, Hkv, D, b->pos[t],
			    L->theta, m->desc->rope);
		}
		if ((rc = kv_append(kv, s, b, l, Hkv, D)) != KVX_OK)
			return rc;

		memset(&aj, 0, sizeof aj);
		aj.m = m;
		aj.kv = kv;
		aj.s = s;
		aj.b = b;
		aj.layer = l;
		aj.window = L->window;
#ifdef HAVE_OPENBLAS
		if (single && T >= GEMM_MIN_TOKENS)
			pool_run(s->pool, att_gemm_work, &aj);
		else
#endif
			pool_run(s->pool, att_tok_work, &aj);

		if (b->hook != NULL && w > 0) {
			int h, j;

			for (h = 0; h < H; h++)
				for (j = 0; j < w; j++)
					memcpy(s->wq + ((size_t)h * w + j) * D,
					    s->q + ((size_t)(T - w + j) * H +
					    h) * D, (size_t)D * sizeof(float));
			if ((rc = b->hook(b->hook_arg, b->seq[0], l, s->wq,
			    w, s->x + (size_t)(T - w) * E)) != KVX_OK)
				return rc;
		}
		if (b->no_head && l == mi->n_layer - 1)
			return KVX_OK;

		ws[0] = &L->wo;
		ys[0] = s->xn;
		if ((rc = linear(m, s->pool, s->att, T, 1, ws, ys)) != KVX_OK)
			return rc;
		if (L->post_attn_norm != NULL)
			rmsnorm_rows(s->xn, L->post_attn_norm, (size_t)T, E,
			    mi->rms_eps);
		for (i = 0; i < T * E; i++)
			s->x[i] += s->xn[i];

		// feed-forward block
		for (t = 0; t < T; t++)
			rmsnorm(s->xn + (size_t)t * E, s->x + (size_t)t * E,
			    L->ffn_norm, E, mi->rms_eps);
		ws[0] = &L->wg; ws[1] = &L->wu;
		ys[0] = s->ffa; ys[1] = s->ffb;
		if ((rc = linear(m, s->pool, s->xn, T, 2, ws, ys)) != KVX_OK)
			return rc;
		if (m->desc->gelu)
			geglu(s->ffa, s->ffb, (size_t)T * F);
		else
			swiglu(s->ffa, s->ffb, (size_t)T * F);
		ws[0] = &L->wd;
		ys[0] = s->xn;
		if ((rc = linear(m, s->pool, s->ffa, T, 1, ws, ys)) != KVX_OK)
			return rc;
		if (L->post_ffn_norm != NULL)
			rmsnorm_rows(s->xn, L->post_ffn_norm, (size_t)T, E,
			    mi->rms_eps);
		for (i = 0; i < T * E; i++)
			s->x[i] += s->xn[i];
	}

	if (b->logits == 0 || b->out == NULL)
		return KVX_OK;
	if (b->logits == 1) {
		rmsnorm(s->xn, s->x + (size_t)(T - 1) * E, m->out_norm, E,
		    mi->rms_eps);
		ws[0] = &m->out;
		ys[0] = b->out;
		return linear(m, s->pool, s->xn, 1, 1, ws, ys);
	}
	for (t = 0; t < T; t++)
		rmsnorm(s->xn + (size_t)t * E, s->x + (size_t)t * E,
		    m->out_norm, E, mi->rms_eps);
	ws[0] = &m->out;
	ys[0] = b->out;
	return linear(m, s->pool, s->xn, T, 1, ws, ys);
}
