/*
 * kvx-run - generate text with a GGUF model, with a full KV cache or one
 * compressed to a kvx plan.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvx.h"
#include "util.h"

/* exit codes, documented in kvx-run(1) */
#define EXIT_RUN	1	/* inference failed */
#define EXIT_USAGE	2	/* bad command line */
#define EXIT_MODEL	3	/* model missing, unreadable or malformed */
#define EXIT_PLAN	4	/* plan missing, malformed or for another model */

static const char *progname = "kvx-run";

static void
usage(FILE *f)
{
	fprintf(f,
"usage: kvx-run -m MODEL (-p PROMPT | -f FILE) [options]\n"
"  -m, --model FILE     GGUF model\n"
"  -p, --prompt TEXT    prompt text\n"
"  -f, --file FILE      read the prompt from FILE ('-' for stdin)\n"
"  -n, --n-predict N    tokens to generate (default 64)\n"
"      --plan FILE      compress the KV cache to this kvx plan\n"
"      --temp T         sampling temperature; 0 is greedy (default 0)\n"
"      --seed S         random seed for sampling (default 1)\n"
"      --chat           wrap the prompt in the model's chat template\n"
"      --stats          print statistics on stderr\n"
"  -c, --ctx N          context size in tokens (default: the model's)\n"
"  -t, --threads N      worker threads (default: all CPUs)\n"
"  -h, --help           show this help\n"
"  -V, --version        show the version\n");
}

static void
fail(int code, const char *fmt, const char *arg)
{
	fprintf(stderr, "%s: ", progname);
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	exit(code);
}

/* Parse a non-negative integer option. */
static long
num(const char *s, const char *opt, long lo, long hi)
{
	long v;

	if (kvx__parse_long(s, lo, hi, &v) != 0) {
		fprintf(stderr, "%s: %s: '%s' is not an integer in [%ld, %ld]\n",
		    progname, opt, s, lo, hi);
		exit(EXIT_USAGE);
	}
	return v;
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
	r = (double)(kvx__splitmix64(rng) >> 11) * (1.0 / 9007199254740992.0) * sum;
	for (i = 0; i < n; i++) {
		r -= exp((logits[i] - mx) / temp);
		if (r <= 0.0)
			return i;
	}
	return best;
}

int
main(int argc, char **argv)
{
	kvx_model_params mp;
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "prompt", required_argument, NULL, 'p' },
		{ "file", required_argument, NULL, 'f' },
		{ "n-predict", required_argument, NULL, 'n' },
		{ "plan", required_argument, NULL, 'P' },
		{ "temp", required_argument, NULL, 'T' },
		{ "seed", required_argument, NULL, 'S' },
		{ "chat", no_argument, NULL, 'C' },
		{ "stats", no_argument, NULL, 's' },
		{ "ctx", required_argument, NULL, 'c' },
		{ "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	const char *model_path = NULL, *prompt = NULL, *file = NULL;
	const char *plan_path = NULL;
	char *text = NULL, *chat = NULL, *end, piece[512];
	int n_predict = 64, stats = 0, use_chat = 0, n_ctx = 0, n_threads = 0;
	int ch, n_prompt = 0, n_gen = 0, n_dec = 0, cap, i, seq = 0;
	float temp = 0.0f, *logits;
	uint64_t rng = 1;
	size_t len = 0, plen;
	kvx_model *model = NULL;
	kvx_plan *plan = NULL;
	kvx_ctx *ctx = NULL;
	kvx_ctx_params cp;
	kvx_memory mem;
	int32_t *ids, tok;
	double t0, t_prefill, t_decode;
	const kvx_model_info *info;
	kvx_status rc;

	while ((ch = getopt_long(argc, argv, "m:p:f:n:c:t:hV", opts, NULL)) !=
	    -1) {
		switch (ch) {
		case 'm': model_path = optarg; break;
		case 'p': prompt = optarg; break;
		case 'f': file = optarg; break;
		case 'n': n_predict = (int)num(optarg, "-n", 0, 1 << 20); break;
		case 'P': plan_path = optarg; break;
		case 'T':
			temp = strtof(optarg, &end);
			if (*end != '\0' || end == optarg || !(temp >= 0.0f) ||
			    temp > 100.0f)
				fail(EXIT_USAGE, "--temp: '%s' is not a "
				    "temperature in [0, 100]", optarg);
			break;
		case 'S':
			rng = (uint64_t)num(optarg, "--seed", 0, 0x7fffffffL);
			break;
		case 'C': use_chat = 1; break;
		case 's': stats = 1; break;
		case 'c': n_ctx = (int)num(optarg, "--ctx", 16, 1 << 20); break;
		case 't': n_threads = (int)num(optarg, "--threads", 1, 256);
			break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("kvx-run %s\n", kvx_version()); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind < argc)
		fail(EXIT_USAGE, "unexpected argument '%s' (see --help)",
		    argv[optind]);
	if (model_path == NULL)
		fail(EXIT_USAGE, "%s", "no model given (-m MODEL)");
	if ((prompt == NULL) == (file == NULL))
		fail(EXIT_USAGE, "%s", "give exactly one of -p PROMPT and "
		    "-f FILE");
	if (file != NULL) {
		if (kvx__read_file(file, 0, &text, &len) != KVX_OK)
			fail(EXIT_USAGE, "%s", kvx_errmsg());
	} else {
		text = strdup(prompt);
		len = strlen(text);
	}

	kvx_model_params_init(&mp);
	mp.n_threads = n_threads;
	if ((rc = kvx_model_open(model_path, &mp, &model)) != KVX_OK)
		fail(EXIT_MODEL, "%s", kvx_errmsg());
	info = kvx_model_get_info(model);
	if (plan_path != NULL) {
		if ((rc = kvx_plan_load(plan_path, &plan)) != KVX_OK)
			fail(EXIT_PLAN, "%s", kvx_errmsg());
		if ((rc = kvx_plan_check(plan, model)) != KVX_OK) {
			fprintf(stderr, "%s: %s: %s\n", progname, plan_path,
			    kvx_errmsg());
			return EXIT_PLAN;
		}
	}
	if (use_chat) {
		if (kvx_chat_format(model, NULL, text, &chat) != KVX_OK)
			fail(EXIT_RUN, "%s", kvx_errmsg());
		free(text);
		text = chat;
		len = strlen(text);
	}

	cap = (int)(len + 16);
	if ((ids = malloc(sizeof *ids * (size_t)cap)) == NULL)
		fail(EXIT_RUN, "%s", "out of memory");
	if (kvx_tokenize(model, text, len, use_chat, ids, cap, &n_prompt) !=
	    KVX_OK)
		fail(EXIT_RUN, "%s", kvx_errmsg());
	if (n_prompt == 0)
		fail(EXIT_USAGE, "%s", "the prompt is empty");

	kvx_ctx_params_init(&cp);
	cp.n_ctx = n_ctx > 0 ? n_ctx : info->n_ctx_train;
	if (n_prompt + n_predict > cp.n_ctx) {
		fprintf(stderr, "%s: prompt (%d tokens) plus -n %d exceeds the "
		    "context of %d tokens (use --ctx)\n", progname, n_prompt,
		    n_predict, cp.n_ctx);
		return EXIT_USAGE;
	}
	/* room for exactly the tokens we will generate */
	cp.decode_headroom = n_predict;
	if ((rc = kvx_ctx_new(model, plan, &cp, &ctx)) != KVX_OK)
		fail(rc == KVX_ERR_PLAN || rc == KVX_ERR_MISMATCH ? EXIT_PLAN :
		    EXIT_RUN, "%s", kvx_errmsg());
	if ((logits = malloc(sizeof *logits * (size_t)info->n_vocab)) == NULL)
		fail(EXIT_RUN, "%s", "out of memory");

	t0 = kvx__now();
	if (kvx_prefill(ctx, seq, ids, n_prompt, logits) != KVX_OK)
		fail(EXIT_RUN, "%s", kvx_errmsg());
	t_prefill = kvx__now() - t0;

	t0 = kvx__now();
	for (i = 0; i < n_predict; i++) {
		tok = sample(logits, info->n_vocab, temp, &rng);
		if (kvx_token_is_eog(model, tok))
			break;
		if (kvx_token_piece(model, tok, piece, sizeof piece, &plen) ==
		    KVX_OK)
			fwrite(piece, 1, plen, stdout);
		fflush(stdout);
		n_gen++;
		if (i + 1 == n_predict)
			break;
		if (kvx_decode(ctx, 1, &seq, &tok, logits) != KVX_OK)
			fail(EXIT_RUN, "%s", kvx_errmsg());
		n_dec++;
	}
	t_decode = kvx__now() - t0;
	fputc('\n', stdout);

	if (stats) {
		kvx_ctx_memory(ctx, &mem);
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
		fprintf(stderr, "plan: %s\n", plan_path ? plan_path : "none");
	}
	free(logits);
	free(ids);
	free(text);
	kvx_ctx_free(&ctx);
	kvx_plan_free(&plan);
	kvx_model_close(&model);
	return 0;
}
