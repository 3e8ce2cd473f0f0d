/*
 * kvx-run - generate text with a GGUF model, with a full KV cache or one
 * compressed to a kvx plan.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvx.h"
#include "opt.h"
#include "util.h"

/* exit codes, documented in kvx-run(1) */
#define EXIT_RUN	1	/* inference failed */
#define EXIT_USAGE	2	/* bad command line */
#define EXIT_MODEL	3	/* model missing, unreadable or malformed */
#define EXIT_PLAN	4	/* plan missing, malformed, for another model */

static const char *progname = "kvx-run";

/* The command line's settings, written by the option table. */
struct args {
	const char	*model, *prompt, *file, *plan;
	int		 n_predict, chat, stats, n_ctx, n_threads, weights;
	int		 help, version;
	double		 temp;
	uint64_t	 seed;
};

#define OFF(m)	offsetof(struct args, m)

/* --weights, in the order of KVX_WEIGHTS_AUTO, _MMAP, _HUGEPAGES */
static const char *const weights_modes[] = { "auto", "mmap", "huge", NULL };

/* In --help order; kvx-run(1) describes each. */
static const struct opt options[] = {
	{ .key = 'm', .name = "model", .kind = OPT_STR, .arg = "FILE",
	    .dst = OFF(model), .help = "GGUF model" },
	{ .key = 'p', .name = "prompt", .kind = OPT_STR, .arg = "TEXT",
	    .dst = OFF(prompt), .help = "prompt text" },
	{ .key = 'f', .name = "file", .kind = OPT_STR, .arg = "FILE",
	    .dst = OFF(file),
	    .help = "read the prompt from FILE ('-' for stdin)" },
	{ .key = 'n', .name = "n-predict", .kind = OPT_INT, .arg = "N",
	    .lo = 0, .hi = 1 << 20, .dst = OFF(n_predict),
	    .help = "tokens to generate (default 64)" },
	{ .name = "plan", .kind = OPT_STR, .arg = "FILE", .dst = OFF(plan),
	    .help = "compress the KV cache to this kvx plan" },
	{ .name = "temp", .kind = OPT_NUM, .arg = "T", .lo = 0, .hi = 100,
	    .dst = OFF(temp),
	    .help = "sampling temperature; 0 is greedy (default 0)" },
	{ .name = "seed", .kind = OPT_U64, .arg = "S", .lo = 0,
	    .hi = 0x7fffffff, .dst = OFF(seed),
	    .help = "random seed for sampling (default 1)" },
	{ .name = "chat", .kind = OPT_FLAG, .dst = OFF(chat),
	    .help = "wrap the prompt in the model's chat template" },
	{ .name = "stats", .kind = OPT_FLAG, .dst = OFF(stats),
	    .help = "print statistics on stderr" },
	{ .key = 'c', .name = "ctx", .kind = OPT_INT, .arg = "N", .lo = 16,
	    .hi = 1 << 20, .dst = OFF(n_ctx),
	    .help = "context size in tokens (default: the model's)" },
	{ .key = 't', .name = "threads", .kind = OPT_INT, .arg = "N", .lo = 1,
	    .hi = 256, .dst = OFF(n_threads),
	    .help = "worker threads (default: all CPUs)" },
	{ .name = "weights", .kind = OPT_WORD, .arg = "W",
	    .dst = OFF(weights), .names = weights_modes, .noun = "weights mode",
	    .help = "huge: the weights on 2 MiB pages (the default, unless\n"
	    "the environment sets KVX_WEIGHTS=mmap); mmap: the mapped file" },
	{ .key = 'h', .name = "help", .kind = OPT_EXIT, .dst = OFF(help),
	    .help = "show this help" },
	{ .key = 'V', .name = "version", .kind = OPT_EXIT, .dst = OFF(version),
	    .help = "show the version" },
};

static const struct opt_cmd cmd = {
	"kvx-run",
	"kvx-run -m MODEL (-p PROMPT | -f FILE) [options]",
	options, (int)(sizeof options / sizeof options[0])
};

/* Print "kvx-run: message" and exit with code. */
static void
fail(int code, const char *fmt, const char *arg)
{
	fprintf(stderr, "%s: ", progname);
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	exit(code);
}

/* Parse the command line into a, or exit: help, version, usage error. */
static void
parse_args(struct args *a, int argc, char **argv)
{
	char err[256];
	int rc;

	memset(a, 0, sizeof *a);
	a->n_predict = 64;
	a->seed = 1;
	rc = opt_parse(&cmd, a, argc, argv, err, sizeof err);
	if (rc == OPT_STOP) {
		if (a->help)
			opt_usage(&cmd, stdout);
		else
			printf("kvx-run %s\n", kvx_version());
		exit(0);
	}
	if (rc == OPT_NOMEM)
		fail(EXIT_RUN, "%s", "out of memory");
	if (rc != OPT_OK)
		fail(EXIT_USAGE, "%s", err);
	if (a->model == NULL)
		fail(EXIT_USAGE, "%s", "no model given (-m MODEL)");
	if ((a->prompt == NULL) == (a->file == NULL))
		fail(EXIT_USAGE, "%s", "give exactly one of -p PROMPT and "
		    "-f FILE");
}

/* Greedy argmax, or a draw from softmax(logits / temp). */
static int32_t
sample(const float *logits, int n, float temp, uint64_t *rng)
{
	double sum = 0.0, r;
	float mx = logits[0];
	int i, best = 0;

	for (i = 1; i < n; i++)
		if (logits[i] > mx) {
			mx = logits[i];
			best = i;
		}
	if (temp <= 0.0f)
		return best;
	for (i = 0; i < n; i++)
		sum += exp((logits[i] - mx) / temp);
	r = (double)(kvx__splitmix64(rng) >> 11) * (1.0 / 9007199254740992.0) *
	    sum;
	for (i = 0; i < n; i++) {
		r -= exp((logits[i] - mx) / temp);
		if (r <= 0.0)
			return i;
	}
	return best;
}

/* Prefill the prompt, then sample and print tokens one at a time. */
int
main(int argc, char **argv)
{
	kvx_model_params mp;
	struct args a;
	char *text = NULL, *chat = NULL, piece[512];
	int n_prompt = 0, n_gen = 0, n_dec = 0, cap, i, seq = 0, bos;
	float *logits;
	uint64_t rng;
	size_t len = 0, plen;
	kvx_model *model = NULL;
	kvx_plan *plan = NULL;
	kvx_ctx *ctx = NULL;
	kvx_ctx_params cp;
	kvx_memory mem;
	kvx_ctx_stats cst;
	int32_t *ids, tok;
	double t0, t_load, t_prefill, t_decode;
	const kvx_model_info *info;
	kvx_status rc;

	parse_args(&a, argc, argv);
	rng = a.seed;
	if (a.file != NULL) {
		if (kvx__read_file(a.file, 0, &text, &len) != KVX_OK)
			fail(EXIT_USAGE, "%s", kvx_errmsg());
	} else {
		text = strdup(a.prompt);
		len = strlen(text);
	}

	kvx_model_params_init(&mp);
	mp.n_threads = a.n_threads;
	mp.weights = a.weights;
	t_load = kvx__now();
	if ((rc = kvx_model_open(a.model, &mp, &model)) != KVX_OK)
		fail(EXIT_MODEL, "%s", kvx_errmsg());
	info = kvx_model_get_info(model);
	if (a.plan != NULL) {
		if ((rc = kvx_plan_load(a.plan, &plan)) != KVX_OK)
			fail(EXIT_PLAN, "%s", kvx_errmsg());
		if ((rc = kvx_plan_check(plan, model)) != KVX_OK) {
			fprintf(stderr, "%s: %s: %s\n", progname, a.plan,
			    kvx_errmsg());
			return EXIT_PLAN;
		}
	}
	if (a.chat) {
		if (kvx_chat_format(model, NULL, text, &chat) != KVX_OK)
			fail(EXIT_RUN, "%s", kvx_errmsg());
		free(text);
		text = chat;
		len = strlen(text);
	}

	cap = (int)(len + 16);
	if ((ids = malloc(sizeof *ids * (size_t)cap)) == NULL)
		fail(EXIT_RUN, "%s", "out of memory");
	/* a model trained with BOS first (Gemma 3) gets it, as llama.cpp
	 * gives it */
	bos = kvx_token_add_bos(model) ? 1 : 0;
	ids[0] = kvx_token_bos(model);
	if (kvx_tokenize(model, text, len, a.chat, ids + bos, cap - bos,
	    &n_prompt) != KVX_OK)
		fail(EXIT_RUN, "%s", kvx_errmsg());
	if (n_prompt == 0)
		fail(EXIT_USAGE, "%s", "the prompt is empty");
	n_prompt += bos;

	kvx_ctx_params_init(&cp);
	cp.n_ctx = a.n_ctx > 0 ? a.n_ctx : info->n_ctx_train;
	if (n_prompt + a.n_predict > cp.n_ctx) {
		fprintf(stderr, "%s: prompt (%d tokens) plus -n %d exceeds the "
		    "context of %d tokens (use --ctx)\n", progname, n_prompt,
		    a.n_predict, cp.n_ctx);
		return EXIT_USAGE;
	}
	/* room for exactly the tokens we will generate */
	cp.decode_headroom = a.n_predict;
	if ((rc = kvx_ctx_new(model, plan, &cp, &ctx)) != KVX_OK)
		fail(rc == KVX_ERR_PLAN || rc == KVX_ERR_MISMATCH ? EXIT_PLAN :
		    EXIT_RUN, "%s", kvx_errmsg());
	t_load = kvx__now() - t_load;
	if ((logits = malloc(sizeof *logits * (size_t)info->n_vocab)) == NULL)
		fail(EXIT_RUN, "%s", "out of memory");

	t0 = kvx__now();
	if (kvx_prefill(ctx, seq, ids, n_prompt, logits) != KVX_OK)
		fail(EXIT_RUN, "%s", kvx_errmsg());
	t_prefill = kvx__now() - t0;

	t0 = kvx__now();
	for (i = 0; i < a.n_predict; i++) {
		tok = sample(logits, info->n_vocab, (float)a.temp, &rng);
		if (kvx_token_is_eog(model, tok))
			break;
		if (kvx_token_piece(model, tok, piece, sizeof piece, &plen) ==
		    KVX_OK)
			fwrite(piece, 1, plen, stdout);
		fflush(stdout);
		n_gen++;
		if (i + 1 == a.n_predict)
			break;
		if (kvx_decode(ctx, 1, &seq, &tok, logits) != KVX_OK)
			fail(EXIT_RUN, "%s", kvx_errmsg());
		n_dec++;
	}
	t_decode = kvx__now() - t0;
	fputc('\n', stdout);

	if (a.stats) {
		kvx_ctx_memory(ctx, &mem);
		fprintf(stderr, "load_s: %.3f\n", t_load);
		fprintf(stderr, "weights: %s\n", kvx_model_get_weights(model) ==
		    KVX_WEIGHTS_HUGEPAGES ? "huge" : "mmap");
		fprintf(stderr, "prompt_tokens: %d\n", n_prompt);
		fprintf(stderr, "generated_tokens: %d\n", n_gen);
		fprintf(stderr, "prefill_tok_s: %.1f\n", n_prompt / t_prefill);
		fprintf(stderr, "decode_tok_s: %.1f\n",
		    n_dec > 0 ? n_dec / t_decode : 0.0);
		fprintf(stderr, "kv_bytes: %llu\n",
		    (unsigned long long)mem.kv_bytes);
		fprintf(stderr, "kv_bytes_used: %llu\n",
		    (unsigned long long)mem.kv_bytes_used);
		fprintf(stderr, "kv_bytes_full: %llu\n",
		    (unsigned long long)mem.kv_bytes_full);
		fprintf(stderr, "kv_ratio: %.3f\n", mem.kv_bytes_full ?
		    (double)mem.kv_bytes / mem.kv_bytes_full : 0.0);
		if (kvx_ctx_get_stats(ctx, &cst) == KVX_OK &&
		    cst.select_s >= 0) {
			fprintf(stderr, "select_s: %.3f\n", cst.select_s);
			fprintf(stderr, "select_share: %.3f\n",
			    cst.prefill_s > 0 ? cst.select_s / cst.prefill_s :
			    0.0);
		}
		fprintf(stderr, "plan: %s\n", a.plan ? a.plan : "none");
	}
	free(logits);
	free(ids);
	free(text);
	kvx_ctx_free(&ctx);
	kvx_plan_free(&plan);
	kvx_model_close(&model);
	return 0;
}
