/*
 * test-model.c - the forward pass against llama.cpp: logits after fixed
 * prompts (tests/golden/logits.txt, made by tools/make-goldens.py) and the
 * greedy continuation of "The capital of France is"; plus the facts the
 * model reports and the rejection of bad files.
 * SPDX-License-Identifier: MIT
 *
 * Tolerance: llama.cpp multiplies Q4_1 weights by activations rounded to
 * 8 bits (Q8_1) on every path, while kvx's prefill uses f32 activations, so
 * logits differ by a few hundredths; |ours - ref| <= 0.06 + 0.004 |ref| is
 * required for every golden logit and for the log-sum-exp.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvx.h"
#include "tap.h"

#define MAXTOK 512

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
};

static struct golden G[8];
static int NG;

static struct golden *
find(const char *name)
{
	int i;

	for (i = 0; i < NG; i++)
		if (strcmp(G[i].name, name) == 0)
			return &G[i];
	if (NG == 8)
		return NULL;
	snprintf(G[NG].name, sizeof G[NG].name, "%s", name);
	return &G[NG++];
}

/* Parse tests/golden/logits.txt (format in its header). */
static int
load_golden(const char *path)
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
		if ((g = find(name)) == NULL)
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
		} else if (strcmp(kind, "lse") == 0)
			g->lse = strtod(p, NULL);
	}
	fclose(f);
	return NG;
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
argmax(const float *v, int n)
{
	int i, b = 0;

	for (i = 1; i < n; i++)
		if (v[i] > v[b])
			b = i;
	return b;
}

static int
close_enough(double a, double ref)
{
	return fabs(a - ref) <= 0.06 + 0.004 * fabs(ref);
}

int
main(void)
{
	const char *path = tap_model_path(), *srcdir = getenv("top_srcdir");
	char gpath[1024];
	const kvx_model_info *info;
	kvx_model *m = NULL;
	kvx_ctx *c = NULL;
	float *lg;
	int i, k, V;

	if (path == NULL)
		tap_skip_all("model not present (set KVX_MODEL)");
	snprintf(gpath, sizeof gpath, "%s/tests/golden/logits.txt",
	    srcdir ? srcdir : ".");
	if (!ok(load_golden(gpath) >= 3, "golden logits loaded from %s",
	    gpath))
		return tap_done();
	if (!ok(kvx_model_open(path, 2, &m) == KVX_OK, "open model"))
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

	for (i = 0; i < NG; i++) {
		struct golden *g = &G[i];
		int good = 1;
		double l;

		kvx_ctx_free(&c);
		if (kvx_ctx_new(m, NULL, NULL, &c) != KVX_OK ||
		    kvx_prefill(c, 0, g->prompt, g->n_prompt, lg) != KVX_OK) {
			ok(0, "%s: prefill: %s", g->name, kvx_errmsg());
			continue;
		}
		ok(argmax(lg, V) == g->top_id[0], "%s: top-1 token %d "
		    "(reference %d)", g->name, argmax(lg, V), g->top_id[0]);
		for (k = 0; k < g->n_top; k++) {
			if (!close_enough(lg[g->top_id[k]], g->top_logit[k]))
				good = 0;
			diag("%s: id %d logit %.4f ref %.4f", g->name,
			    g->top_id[k], lg[g->top_id[k]], g->top_logit[k]);
		}
		ok(good, "%s: top-%d logits within tolerance", g->name,
		    g->n_top);
		l = lse(lg, V);
		ok(close_enough(l, g->lse), "%s: log-sum-exp %.4f (reference "
		    "%.4f)", g->name, l, g->lse);

		if (g->n_greedy > 0) {
			int32_t tok;
			int seq = 0, same = 1;

			for (k = 0; k < g->n_greedy; k++) {
				tok = argmax(lg, V);
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
			    "llama.cpp's", g->name, g->n_greedy);
		}
	}

	// the same prompt by prefill and by token-at-a-time decode
	{
		struct golden *g = find("paragraph");
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
		ok(md < 0.15 && argmax(lg, V) == argmax(l2, V), "prefill "
		    "(f32 GEMM) and decode (quantised) paths agree: max "
		    "|diff| %.3f", md);
		free(l2);
	}

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
		ok(kvx_model_open(tmp, 1, &b) == KVX_ERR_FORMAT && b == NULL,
		    "a model truncated to 1 MiB is rejected: %s",
		    kvx_errmsg());
		unlink(tmp);
		ok(kvx_model_open("/nonexistent/model.gguf", 1, &b) ==
		    KVX_ERR_IO, "a missing model: %s", kvx_errmsg());
	}

	free(lg);
	kvx_ctx_free(&c);
	kvx_model_close(&m);
	return tap_done();
}
