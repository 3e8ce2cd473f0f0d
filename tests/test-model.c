/*
 * test-model.c - the forward pass against two references: transformers in
 * float32 (tests/golden/logits-hf.txt, tools/make-goldens-hf.py) and
 * llama.cpp (tests/golden/logits.txt, tools/make-goldens.py): logits after
 * fixed prompts and the greedy continuation of "The capital of France is";
 * plus the facts the model reports and the rejection of bad files.
 * SPDX-License-Identifier: MIT
 *
 * Tolerances.  kvx computes with f32 activations on every path, as
 * transformers does once it has dequantised the GGUF weights, so against
 * that reference every golden logit and the log-sum-exp must agree to
 * 2e-3 + 1e-4 |ref|, the top-1 token must be the same, and greedy decoding
 * must give the same 20 tokens.  llama.cpp rounds activations to 8 bits
 * (Q8_1/Q8_0) before each quantised product, which moves this small
 * model's logits by up to 0.76 and its log-probabilities by up to 0.41
 * (measured on the ChatML prompt, whose top two tokens it swaps against
 * transformers), so against llama.cpp each golden log-probability
 * (logit - log-sum-exp) must agree to 0.5 and its top-1 must be in kvx's
 * top 2.
 *
 * The same checks run on Qwen2.5-Coder-0.5B-Instruct (qwen2) and Gemma 3
 * 270M (gemma3) when their files are present (KVX_QWEN2_MODEL,
 * KVX_GEMMA3_MODEL, else models/ under top_srcdir; skipped otherwise)
 * against llama.cpp (tests/golden/qwen2-logits.txt, gemma3-logits.txt),
 * with the bound stated at LOGPROB_TOL; Gemma's last prompt (705 tokens)
 * is longer than its 512-token sliding window.  Small random-weight qwen2
 * and gemma3 files (tests/data/tiny-qwen2.gguf, tiny-gemma3.gguf, from
 * tools/make-tiny-qwen2.py and make-tiny-gemma3.py; the gemma3 one with a
 * 24-token window that its 60-token prompt passes) always run: their
 * logits must equal a float64 numpy forward pass of the same weights to
 * TINY_TOL, through prefill and through token-at-a-time decode.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvx.h"
#include "gguf.h"
#include "tap.h"

#define MAXTOK 1024
/* |log-prob - llama.cpp's| allowed on the Qwen2 and Gemma 3 goldens, see
 * check_other */
#define LOGPROB_TOL 0.25
#define GREEDY_MIN 2
/* |logit - reference| allowed on the tiny model: f32 against float64 */
#define TINY_TOL 2e-3
#define TINY_VOCAB 512	/* at least the tiny files' vocabularies */

struct golden {
	char	 name[32];
	int32_t	 prompt[MAXTOK];
	int	 n_prompt;
	int32_t	 top_id[8];
	double	 top_logit[8];
	int	 n_top;
	double	 lse;
	int32_t	 greedy[64];
	int	 n_greedy;
	int32_t	 run_id[64];	/* runner-up at each greedy step */
	double	 run_gap[64];	/* its distance below the top logit */
	int	 n_run;
};

struct goldens {
	struct golden	 g[8];
	int		 n;
};

static struct goldens HF, LC;

static struct golden *
find(struct goldens *gs, const char *name)
{
	int i;

	for (i = 0; i < gs->n; i++)
		if (strcmp(gs->g[i].name, name) == 0)
			return &gs->g[i];
	if (gs->n == 8)
		return NULL;
	snprintf(gs->g[gs->n].name, sizeof gs->g[gs->n].name, "%s", name);
	return &gs->g[gs->n++];
}

/* Parse a golden logits file (format in tests/golden/logits.txt). */
static int
load_golden(struct goldens *gs, const char *path)
{
	static char line[1 << 16];
	FILE *f = fopen(path, "r");
	char kind[16], name[32];
	int off, n, i;

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof line, f) != NULL) {
		struct golden *g;
		char *p;

		if (line[0] == '#' || sscanf(line, "%15s %31s%n", kind, name,
		    &off) != 2)
			continue;
		if ((g = find(gs, name)) == NULL)
			break;
		p = line + off;
		if (strcmp(kind, "prompt") == 0 || strcmp(kind, "greedy") == 0) {
			int32_t *dst = kind[0] == 'p' ? g->prompt : g->greedy;
			int cap = kind[0] == 'p' ? MAXTOK : 64;

			n = (int)strtol(p, &p, 10);
			if (n > cap)
				n = cap;
			for (i = 0; i < n; i++)
				dst[i] = (int32_t)strtol(p, &p, 10);
			if (kind[0] == 'p')
				g->n_prompt = n;
			else
				g->n_greedy = n;
		} else if (strcmp(kind, "top") == 0) {
			n = (int)strtol(p, &p, 10);
			if (n > 8)
				n = 8;
			for (i = 0; i < n; i++) {
				g->top_id[i] = (int32_t)strtol(p, &p, 10);
				g->top_logit[i] = strtod(p, &p);
			}
			g->n_top = n;
		} else if (strcmp(kind, "runnerup") == 0) {
			n = (int)strtol(p, &p, 10);
			if (n > 64)
				n = 64;
			for (i = 0; i < n; i++) {
				g->run_id[i] = (int32_t)strtol(p, &p, 10);
				g->run_gap[i] = strtod(p, &p);
			}
			g->n_run = n;
		} else if (strcmp(kind, "lse") == 0)
			g->lse = strtod(p, NULL);
	}
	fclose(f);
	return gs->n;
}

static double
lse(const float *v, int n)
{
	double mx = v[0], s = 0.0;
	int i;

	for (i = 1; i < n; i++)
		if (v[i] > mx)
			mx = v[i];
	for (i = 0; i < n; i++)
		s += exp(v[i] - mx);
	return mx + log(s);
}

static int
close_hf(double a, double ref)
{
	return fabs(a - ref) <= 2e-3 + 1e-4 * fabs(ref);
}

static int
close_lc(double logprob, double ref_logprob)
{
	return fabs(logprob - ref_logprob) <= 0.5;
}

/* Rank of id among the logits (0 = largest). */
static int
rank_of(const float *v, int n, int id)
{
	int i, r = 0;

	for (i = 0; i < n; i++)
		if (v[i] > v[id])
			r++;
	return r;
}

/* A path under the source tree. */
/* A new context of m with n tokens of ids prefilled; 0 on failure. */
static int
fresh_prefill(kvx_model *m, kvx_ctx **c, const int32_t *ids, int n,
    float *lg)
{
	kvx_ctx_free(c);
	return kvx_ctx_new(m, NULL, NULL, c) == KVX_OK &&
	    kvx_prefill(*c, 0, ids, n, lg) == KVX_OK;
}

static void
src_path(char *out, size_t size, const char *rel)
{
	const char *top = getenv("top_srcdir");

	snprintf(out, size, "%s/%s", top ? top : ".", rel);
}

/* A skipped check, as TAP writes it. */
static void
skip(const char *what, const char *why)
{
	ok(1, "%s # SKIP %s", what, why);
}

/* Max |a - ref| over n values, scaled by the tolerance's relative part. */
static double
worst(const float *a, const double *ref, int n, double *rel)
{
	double md = 0.0, d;
	int i;

	*rel = 0.0;
	for (i = 0; i < n; i++) {
		d = fabs(a[i] - ref[i]);
		if (d > md)
			md = d;
		d /= TINY_TOL + 1e-4 * fabs(ref[i]);
		if (d > *rel)
			*rel = d;
	}
	return md;
}

/* A random-weight file, its reference logits and the shape it must
 * read. */
struct tiny {
	const char	*name, *gguf, *golden, *arch;
	int		 n_layer, n_head, n_head_kv, head_dim, n_vocab;
	float		 theta;
};

static const struct tiny tinies[] = {
	{ "tiny qwen2", "tests/data/tiny-qwen2.gguf",
	    "tests/golden/tiny-qwen2-logits.txt", "qwen2", 2, 4, 2, 64, 303,
	    1e6f },
	{ "tiny gemma3", "tests/data/tiny-gemma3.gguf",
	    "tests/golden/tiny-gemma3-logits.txt", "gemma3", 6, 2, 1, 256, 367,
	    1e6f },
};

/* A random-weight file against the numpy reference: every logit after
 * each prompt by prefill, and by one-token prefill plus decode. */
static void
check_tiny(const struct tiny *T)
{
	static char line[1 << 16];
	static double ref[TINY_VOCAB];
	static int32_t ids[MAXTOK];
	char path[1024], kind[16], name[32];
	const kvx_model_info *info;
	kvx_model *m = NULL;
	kvx_ctx *c = NULL;
	float lg[TINY_VOCAB];
	int n = 0, cases = 0, off, i, seq = 0;
	double md, rel;
	FILE *f;
	char *p;

	src_path(path, sizeof path, T->gguf);
	if (!ok(kvx_model_open(path, NULL, &m) == KVX_OK, "%s: open %s",
	    T->name, path)) {
		diag("%s", kvx_errmsg());
		return;
	}
	info = kvx_model_get_info(m);
	ok(strcmp(info->arch, T->arch) == 0 && info->n_layer == T->n_layer &&
	    info->n_head == T->n_head && info->n_head_kv == T->n_head_kv &&
	    info->head_dim == T->head_dim && info->n_vocab == T->n_vocab &&
	    fabs(info->rope_theta - T->theta) < 1.0f, "%s: shape and RoPE "
	    "base from the metadata", T->name);
	src_path(path, sizeof path, T->golden);
	if (!ok((f = fopen(path, "r")) != NULL, "open %s", path)) {
		kvx_model_close(&m);
		return;
	}
	while (fgets(line, sizeof line, f) != NULL) {
		if (line[0] == '#' || sscanf(line, "%15s %31s%n", kind, name,
		    &off) != 2)
			continue;
		p = line + off;
		if (strcmp(kind, "prompt") == 0) {
			n = (int)strtol(p, &p, 10);
			for (i = 0; i < n && i < MAXTOK; i++)
				ids[i] = (int32_t)strtol(p, &p, 10);
			continue;
		}
		if (strcmp(kind, "logits") != 0 ||
		    strtol(p, &p, 10) != T->n_vocab || n < 2 || n > MAXTOK)
			continue;
		for (i = 0; i < T->n_vocab; i++)
			ref[i] = strtod(p, &p);
		cases++;

		if (!fresh_prefill(m, &c, ids, n, lg)) {
			ok(0, "%s %s: prefill: %s", T->name, name,
			    kvx_errmsg());
			continue;
		}
		md = worst(lg, ref, T->n_vocab, &rel);
		ok(rel <= 1.0, "%s %s: %d logits after a %d-token prefill "
		    "equal the reference's (max |diff| %.2g)", T->name, name,
		    T->n_vocab, n, md);

		if (!fresh_prefill(m, &c, ids, 1, lg)) {
			ok(0, "%s %s: prefill: %s", T->name, name,
			    kvx_errmsg());
			continue;
		}
		for (i = 1; i < n; i++)
			if (kvx_decode(c, 1, &seq, &ids[i], lg) != KVX_OK)
				break;
		md = worst(lg, ref, T->n_vocab, &rel);
		ok(i == n && rel <= 1.0, "%s %s: the same by %d decode steps "
		    "(max |diff| %.2g)", T->name, name, n - 1, md);
	}
	fclose(f);
	ok(cases == 2, "%s: %d reference prompts", T->name, cases);
	kvx_ctx_free(&c);
	kvx_model_close(&m);
}

/* Length of the longest golden prompt. */
static int
longest(const struct goldens *gs)
{
	int i, n = 0;

	for (i = 0; i < gs->n; i++)
		if (gs->g[i].n_prompt > n)
			n = gs->g[i].n_prompt;
	return n;
}

/* Another model's file and the facts it must report. */
struct other {
	const char	*arch, *env, *file, *golden, *hf, *fetch;
	int		 n_layer, n_head, n_head_kv, head_dim, n_embd, n_ff;
	int		 n_vocab, n_ctx;
	float		 theta;
};

static const struct other others[] = {
	{ "qwen2", "KVX_QWEN2_MODEL",
	    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2-logits.txt",
	    "qwen2-logits-hf.txt", "qwen2.5-coder-0.5b", 24, 14, 2, 64, 896, 4864, 151936, 32768,
	    1e6f },
	{ "gemma3", "KVX_GEMMA3_MODEL", "gemma-3-270m-q4_k_m.gguf",
	    "gemma3-logits.txt", "gemma3-logits-hf.txt", "gemma3-270m", 18, 4, 1, 256, 640, 2048,
	    262144, 32768, 1e6f },
};

/*
 * Another model against transformers in float32 (tools/make-goldens-hf.py,
 * which dequantises the GGUF's weights and computes in float32 as kvx's
 * CPU forward does): the same top-1 token, the top-5 logits and the
 * log-sum-exp within close_hf's bound (SmolLM2's), and greedy decoding
 * token for token.  Measured: at most 1.6e-5 apart (Qwen2.5) and 1.2e-5
 * (Gemma 3) on the golden prompts.
 */
static void
check_other_hf(const struct other *o, kvx_model *m)
{
	static struct goldens QH;
	char gpath[1024], what[64];
	kvx_ctx *c = NULL;
	float *lg;
	int i, k, V = kvx_model_get_info(m)->n_vocab;

	memset(&QH, 0, sizeof QH);
	snprintf(what, sizeof what, "tests/golden/%s", o->hf);
	src_path(gpath, sizeof gpath, what);
	if (!ok(load_golden(&QH, gpath) >= 3, "%s: transformers goldens "
	    "loaded from %s", o->arch, gpath))
		return;
	if ((lg = malloc(sizeof(float) * V)) == NULL) {
		ok(0, "%s: out of memory", o->arch);
		return;
	}
	for (i = 0; i < QH.n; i++) {
		struct golden *g = &QH.g[i];
		double l, worst = 0.0;
		int32_t tok;
		int seq = 0, good = 1;

		if (!fresh_prefill(m, &c, g->prompt, g->n_prompt, lg)) {
			ok(0, "%s %s: prefill: %s", o->arch, g->name,
			    kvx_errmsg());
			continue;
		}
		ok(tap_argmax(lg, V) == g->top_id[0], "%s %s: top-1 token %d "
		    "equals transformers' %d", o->arch, g->name,
		    tap_argmax(lg, V), g->top_id[0]);
		for (k = 0; k < g->n_top; k++) {
			if (!close_hf(lg[g->top_id[k]], g->top_logit[k]))
				good = 0;
			if (fabs(lg[g->top_id[k]] - g->top_logit[k]) > worst)
				worst = fabs(lg[g->top_id[k]] - g->top_logit[k]);
		}
		ok(good, "%s %s: top-%d logits equal transformers' (f32) within "
		    "2e-3: largest difference %.2e", o->arch, g->name, g->n_top,
		    worst);
		l = lse(lg, V);
		ok(close_hf(l, g->lse), "%s %s: log-sum-exp %.4f (transformers "
		    "%.4f)", o->arch, g->name, l, g->lse);
		if (g->n_greedy == 0)
			continue;
		for (k = 0; k < g->n_greedy; k++) {
			if ((tok = tap_argmax(lg, V)) != g->greedy[k]) {
				diag("greedy step %d: %d, transformers %d", k,
				    tok, g->greedy[k]);
				break;
			}
			if (kvx_decode(c, 1, &seq, &tok, lg) != KVX_OK)
				break;
		}
		ok(k == g->n_greedy, "%s %s: greedy decoding follows "
		    "transformers' for %d of %d tokens", o->arch, g->name, k,
		    g->n_greedy);
	}
	kvx_ctx_free(&c);
	free(lg);
}

/*
 * Another model against llama.cpp.  llama.cpp quantises activations to 8
 * bits before each product, as for SmolLM2; on the golden prompts that
 * moves the top-5 log-probabilities by up to 0.11 (Qwen2) and 0.20 (Gemma
 * 3) against kvx (measured), and LOGPROB_TOL bounds it at 0.25.  The same
 * noise can flip a near-tie: kvx's top-1 must be llama.cpp's, or its
 * runner-up when that is within the bound; greedy decoding must follow
 * llama.cpp's tokens until a step where llama.cpp's top two are within the
 * bound, where kvx may take the runner-up instead, and must agree on at
 * least the first GREEDY_MIN tokens.  The longest prompt runs again with
 * its last token decoded rather than prefilled (for Gemma 3, past the
 * sliding window on the decode path).
 */
static void
check_other(const struct other *o)
{
	static struct goldens QC;
	kvx_model_params mp;
	const char *env = getenv(o->env);
	char path[1024], gpath[1024], what[64];
	const kvx_model_info *info;
	kvx_model *m = NULL;
	kvx_ctx *c = NULL;
	FILE *f;
	float *lg;
	int i, k, V;

	memset(&QC, 0, sizeof QC);
	if (env != NULL && *env != '\0')
		snprintf(path, sizeof path, "%s", env);
	else
		snprintf(path, sizeof path, "%s/models/%s",
		    getenv("top_srcdir") ? getenv("top_srcdir") : ".", o->file);
	if ((f = fopen(path, "rb")) == NULL) {
		snprintf(what, sizeof what, "%s not present (tools/fetch-model "
		    "--model %s)", o->file, o->fetch);
		skip(o->arch, what);
		return;
	}
	fclose(f);
	snprintf(what, sizeof what, "tests/golden/%s", o->golden);
	src_path(gpath, sizeof gpath, what);
	if (!ok(load_golden(&QC, gpath) >= 3, "%s: llama.cpp goldens "
	    "loaded from %s", o->arch, gpath))
		return;
	kvx_model_params_init(&mp);
	mp.n_threads = 2;
	if (!ok(kvx_model_open(path, &mp, &m) == KVX_OK, "%s: open %s",
	    o->arch, path))
		return;
	info = kvx_model_get_info(m);
	V = info->n_vocab;
	ok(strcmp(info->arch, o->arch) == 0 && info->n_layer == o->n_layer &&
	    info->n_head == o->n_head && info->n_head_kv == o->n_head_kv &&
	    info->head_dim == o->head_dim && info->n_embd == o->n_embd &&
	    info->n_ff == o->n_ff && V == o->n_vocab &&
	    info->n_ctx_train == o->n_ctx, "%s: %d layers, %d/%d heads, d %d, "
	    "vocab %d, context %d", o->arch, o->n_layer, o->n_head,
	    o->n_head_kv, o->head_dim, o->n_vocab, o->n_ctx);
	ok(fabs(info->rope_theta - o->theta) < 1.0f && fabs(info->rms_eps -
	    1e-6f) < 1e-10, "%s: rope theta %g, rms eps 1e-6", o->arch,
	    (double)o->theta);
	lg = malloc(sizeof(float) * V);
	for (i = 0; i < QC.n; i++) {
		struct golden *g = &QC.g[i];
		int good = 1;
		double l;

		if (!fresh_prefill(m, &c, g->prompt, g->n_prompt, lg)) {
			ok(0, "%s %s: prefill: %s", o->arch, g->name,
			    kvx_errmsg());
			continue;
		}
		l = lse(lg, V);
		for (k = 0; k < g->n_top; k++) {
			if (fabs(lg[g->top_id[k]] - l - (g->top_logit[k] -
			    g->lse)) > LOGPROB_TOL)
				good = 0;
			diag("%s %s: id %d log-prob %.4f llama.cpp %.4f",
			    o->arch, g->name, g->top_id[k], lg[g->top_id[k]] -
			    l, g->top_logit[k] - g->lse);
		}
		ok(good, "%s %s: top-%d log-probabilities within %.2g of "
		    "llama.cpp's", o->arch, g->name, g->n_top, LOGPROB_TOL);
		ok(g->n_top >= 2 && (rank_of(lg, V, g->top_id[0]) == 0 ||
		    (g->top_logit[0] - g->top_logit[1] < LOGPROB_TOL &&
		    rank_of(lg, V, g->top_id[1]) == 0)), "%s %s: top-1 token "
		    "%d is llama.cpp's %d or its near-tied runner-up %d",
		    o->arch, g->name, tap_argmax(lg, V), g->top_id[0],
		    g->top_id[1]);
		if (g->n_prompt == longest(&QC)) {
			int seq = 0;

			good = 0;
			if (fresh_prefill(m, &c, g->prompt, g->n_prompt - 1,
			    lg) && kvx_decode(c, 1, &seq,
			    &g->prompt[g->n_prompt - 1], lg) == KVX_OK) {
				l = lse(lg, V);
				for (good = 1, k = 0; k < g->n_top; k++)
					if (fabs(lg[g->top_id[k]] - l -
					    (g->top_logit[k] - g->lse)) >
					    LOGPROB_TOL)
						good = 0;
			}
			ok(good, "%s %s: the same with the last of %d tokens "
			    "decoded", o->arch, g->name, g->n_prompt);
		}
		if (g->n_greedy > 0) {
			int32_t tok;
			int seq = 0, same = 1;

			for (k = 0; k < g->n_greedy; k++) {
				tok = tap_argmax(lg, V);
				if (tok != g->greedy[k]) {
					same = k < g->n_run && tok ==
					    g->run_id[k] && g->run_gap[k] <
					    LOGPROB_TOL;
					diag("greedy step %d: %d, llama.cpp %d "
					    "(runner-up %d, %.3f below)", k, tok,
					    g->greedy[k], g->run_id[k],
					    g->run_gap[k]);
					break;
				}
				if (kvx_decode(c, 1, &seq, &tok, lg) != KVX_OK)
					break;
			}
			ok(same && k >= GREEDY_MIN, "%s %s: greedy decoding "
			    "follows llama.cpp's for %d of %d tokens%s", o->arch,
			    g->name, k, g->n_greedy, k < g->n_greedy ? ", then "
			    "takes its near-tied runner-up" : "");
		}
	}
	check_other_hf(o, m);
	free(lg);
	kvx_ctx_free(&c);
	kvx_model_close(&m);
}

/* A CPU context of m with ids prefilled and k tokens decoded greedily;
 * lg gets the last logits.  0 on failure. */
static int
run_cpu(kvx_model *m, const int32_t *ids, int n, int k, float *lg, int V)
{
	kvx_ctx_params cp;
	kvx_ctx *c = NULL;
	int32_t tok;
	int seq = 0, i, good;

	kvx_ctx_params_init(&cp);
	cp.device = KVX_DEVICE_CPU;
	good = kvx_ctx_new(m, NULL, &cp, &c) == KVX_OK &&
	    kvx_prefill(c, 0, ids, n, lg) == KVX_OK;
	for (i = 0; good && i < k; i++) {
		tok = tap_argmax(lg, V);
		good = kvx_decode(c, 1, &seq, &tok, lg) == KVX_OK;
	}
	kvx_ctx_free(&c);
	return good;
}

/* Opens path with weights mode w; NULL on failure. */
static kvx_model *
open_weights(const char *path, int w)
{
	kvx_model_params mp;
	kvx_model *m = NULL;

	kvx_model_params_init(&mp);
	mp.n_threads = 2;
	mp.weights = w;
	if (kvx_model_open(path, &mp, &m) != KVX_OK)
		return NULL;
	return m;
}

/*
 * The weights on huge pages, in the mapped file, and on huge pages with
 * the allocation failing (the fallback): the same logits bit for bit
 * after a prefill and 8 decode steps; the environment and the parameter
 * choose the placement, bad values are refused.
 */
static void
check_weights(const char *path, const int32_t *ids, int n)
{
	static const char *const names[] = { "auto", "mmap", "huge pages",
	    "huge pages, allocation failing" };
	kvx_model_params mp;
	kvx_model *m;
	const char *env = getenv("KVX_WEIGHTS");
	char saved[16] = "";
	float *lg[4];
	int i, V = 0, want[4], got;

	if (env != NULL)
		snprintf(saved, sizeof saved, "%s", env);
	unsetenv("KVX_WEIGHTS");
	want[0] = want[2] = tap_thp_on() ? KVX_WEIGHTS_HUGEPAGES :
	    KVX_WEIGHTS_MMAP;
	want[1] = want[3] = KVX_WEIGHTS_MMAP;
	for (i = 0; i < 4; i++) {
		lg[i] = NULL;
		gguf__fail_anon = i == 3;
		m = open_weights(path, i == 3 ? KVX_WEIGHTS_HUGEPAGES : i);
		if (!ok(m != NULL, "weights %s: open%s%s", names[i],
		    m ? "" : ": ", m ? "" : kvx_errmsg()))
			continue;
		V = kvx_model_get_info(m)->n_vocab;
		ok(kvx_model_get_weights(m) == KVX_WEIGHTS_MMAP,
		    "weights %s: mapped until a CPU context", names[i]);
		lg[i] = malloc(sizeof(float) * V);
		ok(run_cpu(m, ids, n, 8, lg[i], V), "weights %s: prefill of "
		    "%d tokens and 8 decode steps", names[i], n);
		got = kvx_model_get_weights(m);
		ok(got == want[i], "weights %s: placed %d (expected %d)",
		    names[i], got, want[i]);
		kvx_model_close(&m);
	}
	gguf__fail_anon = 0;
	for (i = 1; i < 4; i++)
		ok(lg[0] && lg[i] && memcmp(lg[0], lg[i], sizeof(float) * V) ==
		    0, "weights %s: logits identical to auto's, bit for bit",
		    names[i]);
	for (i = 0; i < 4; i++)
		free(lg[i]);

	setenv("KVX_WEIGHTS", "mmap", 1);
	m = open_weights(path, KVX_WEIGHTS_AUTO);
	lg[0] = malloc(sizeof(float) * V);
	ok(m && run_cpu(m, ids, 4, 0, lg[0], V) &&
	    kvx_model_get_weights(m) == KVX_WEIGHTS_MMAP,
	    "KVX_WEIGHTS=mmap keeps auto's weights mapped");
	kvx_model_close(&m);
	m = open_weights(path, KVX_WEIGHTS_HUGEPAGES);
	ok(m && run_cpu(m, ids, 4, 0, lg[0], V) &&
	    kvx_model_get_weights(m) == want[2], "KVX_WEIGHTS=mmap does not "
	    "override an explicit huge pages");
	kvx_model_close(&m);
	free(lg[0]);
	setenv("KVX_WEIGHTS", "big", 1);
	m = open_weights(path, KVX_WEIGHTS_AUTO);
	ok(m == NULL && strstr(kvx_errmsg(), "KVX_WEIGHTS") != NULL,
	    "KVX_WEIGHTS=big is refused: %s", kvx_errmsg());
	kvx_model_close(&m);
	if (saved[0] != '\0')
		setenv("KVX_WEIGHTS", saved, 1);
	else
		unsetenv("KVX_WEIGHTS");
	kvx_model_params_init(&mp);
	mp.weights = 7;
	m = NULL;
	ok(kvx_model_open(path, &mp, &m) == KVX_ERR_ARG && m == NULL,
	    "weights 7 is refused: %s", kvx_errmsg());
}

int
main(void)
{
	kvx_model_params mp;
	const char *path = tap_model_path(), *srcdir = getenv("top_srcdir");
	char gpath[1024];
	const kvx_model_info *info;
	kvx_model *m = NULL;
	kvx_ctx *c = NULL;
	float *lg;
	int i, k, V;

	for (i = 0; i < (int)(sizeof tinies / sizeof tinies[0]); i++)
		check_tiny(&tinies[i]);
	for (i = 0; i < (int)(sizeof others / sizeof others[0]); i++)
		check_other(&others[i]);
	if (path == NULL) {
		skip("SmolLM2 logits, greedy decoding", "model not present "
		    "(set KVX_MODEL)");
		return tap_done();
	}
	snprintf(gpath, sizeof gpath, "%s/tests/golden/logits-hf.txt",
	    srcdir ? srcdir : ".");
	if (!ok(load_golden(&HF, gpath) >= 3, "transformers goldens loaded "
	    "from %s", gpath))
		return tap_done();
	snprintf(gpath, sizeof gpath, "%s/tests/golden/logits.txt",
	    srcdir ? srcdir : ".");
	if (!ok(load_golden(&LC, gpath) >= 3, "llama.cpp goldens loaded from "
	    "%s", gpath))
		return tap_done();
	kvx_model_params_init(&mp);
	mp.n_threads = 2;
	if (!ok(kvx_model_open(path, &mp, &m) == KVX_OK, "open model"))
		return tap_done();
	info = kvx_model_get_info(m);
	V = info->n_vocab;
	ok(info->n_layer == 30 && info->n_head == 9 && info->n_head_kv == 3 &&
	    info->head_dim == 64 && info->n_embd == 576 && info->n_ff == 1536 &&
	    V == 49152 && info->n_ctx_train == 8192,
	    "model shape: 30 layers, 9/3 heads, d 64, vocab 49152");
	ok(fabs(info->rope_theta - 100000.0f) < 1e-3 &&
	    fabs(info->rms_eps - 1e-5f) < 1e-9, "rope theta and rms eps");
	ok(strlen(info->fingerprint) == 64, "fingerprint %.16s...",
	    info->fingerprint);
	lg = malloc(sizeof(float) * V);

	for (i = 0; i < HF.n; i++) {
		struct golden *g = &HF.g[i], *gl = find(&LC, g->name);
		int good = 1;
		double l;

		if (!fresh_prefill(m, &c, g->prompt, g->n_prompt, lg)) {
			ok(0, "%s: prefill: %s", g->name, kvx_errmsg());
			continue;
		}
		ok(tap_argmax(lg, V) == g->top_id[0], "%s: top-1 token %d equals "
		    "transformers' %d", g->name, tap_argmax(lg, V), g->top_id[0]);
		for (k = 0; k < g->n_top; k++) {
			if (!close_hf(lg[g->top_id[k]], g->top_logit[k]))
				good = 0;
			diag("%s: id %d logit %.4f transformers %.4f", g->name,
			    g->top_id[k], lg[g->top_id[k]], g->top_logit[k]);
		}
		ok(good, "%s: top-%d logits equal transformers' (f32) within "
		    "2e-3", g->name, g->n_top);
		l = lse(lg, V);
		ok(close_hf(l, g->lse), "%s: log-sum-exp %.4f (transformers "
		    "%.4f)", g->name, l, g->lse);

		if (gl != NULL && gl->n_top > 0 && gl->n_prompt == g->n_prompt &&
		    memcmp(gl->prompt, g->prompt, sizeof(int32_t) *
		    g->n_prompt) == 0) {
			good = 1;
			for (k = 0; k < gl->n_top; k++) {
				if (!close_lc(lg[gl->top_id[k]] - l,
				    gl->top_logit[k] - gl->lse))
					good = 0;
				diag("%s: id %d log-prob %.4f llama.cpp %.4f",
				    g->name, gl->top_id[k], lg[gl->top_id[k]] - l,
				    gl->top_logit[k] - gl->lse);
			}
			ok(good, "%s: log-probabilities within llama.cpp's "
			    "8-bit-activation noise (0.5)", g->name);
			ok(rank_of(lg, V, gl->top_id[0]) <= 1, "%s: llama.cpp's "
			    "top-1 %d is in kvx's top 2", g->name,
			    gl->top_id[0]);
		} else
			ok(0, "%s: no matching llama.cpp golden", g->name);

		if (g->n_greedy > 0) {
			int32_t tok;
			int seq = 0, same = 1;

			for (k = 0; k < g->n_greedy; k++) {
				tok = tap_argmax(lg, V);
				if (tok != g->greedy[k]) {
					diag("greedy step %d: %d, reference %d",
					    k, tok, g->greedy[k]);
					same = 0;
					break;
				}
				if (kvx_decode(c, 1, &seq, &tok, lg) != KVX_OK)
					break;
			}
			ok(same, "%s: greedy continuation of %d tokens equals "
			    "transformers'", g->name, g->n_greedy);
		}
	}

	// the same prompt by prefill and by token-at-a-time decode
	{
		struct golden *g = find(&HF, "paragraph");
		float *l2 = malloc(sizeof(float) * V);
		double md = 0.0;
		int seq = 0, t;

		kvx_ctx_free(&c);
		kvx_ctx_new(m, NULL, NULL, &c);
		kvx_prefill(c, 0, g->prompt, 1, l2);
		for (t = 1; t < 64; t++)
			kvx_decode(c, 1, &seq, &g->prompt[t], l2);
		kvx_ctx_free(&c);
		kvx_ctx_new(m, NULL, NULL, &c);
		kvx_prefill(c, 0, g->prompt, 64, lg);
		for (k = 0; k < V; k++)
			if (fabs(lg[k] - l2[k]) > md)
				md = fabs(lg[k] - l2[k]);
		ok(md < 2e-3 && tap_argmax(lg, V) == tap_argmax(l2, V), "prefill "
		    "(f32 GEMM) and decode (quantised weights, f32 "
		    "activations) paths agree: max |diff| %.2g", md);
		free(l2);
	}

	check_weights(path, find(&HF, "paragraph")->prompt, 64);

	// bad files
	{
		kvx_model *b = NULL;
		char tmp[] = "/tmp/kvx-test-model-XXXXXX";
		int fd = mkstemp(tmp);
		FILE *f = fdopen(fd, "wb"), *src = fopen(path, "rb");
		static char buf[1 << 20];
		size_t n = fread(buf, 1, sizeof buf, src);

		fwrite(buf, 1, n, f);
		fclose(f);
		fclose(src);
		ok(kvx_model_open(tmp, NULL, &b) == KVX_ERR_FORMAT && b == NULL,
		    "a model truncated to 1 MiB is rejected: %s",
		    kvx_errmsg());
		unlink(tmp);
		ok(kvx_model_open("/nonexistent/model.gguf", NULL, &b) ==
		    KVX_ERR_IO, "a missing model: %s", kvx_errmsg());
	}

	free(lg);
	kvx_ctx_free(&c);
	kvx_model_close(&m);
	return tap_done();
}
