/*
 * kvx-plan.c - compile a KV-cache budget plan for a model: profile the
 * lightweight variant on calibration text, allocate the budget across
 * (layer, KV head) with a solver or a baseline, write the plan.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * kvx-plan links GLPK (GPL-3), so this program is GPL-3.0-or-later; the
 * runtime it plans for stays under its own licence.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "baseline.h"
#include "kvx.h"
#include "opt.h"
#include "plan.h"
#include "probe.h"
#include "profile.h"
#include "solve.h"
#include "svg.h"
#include "util.h"
#include "validate.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.1.0"
#endif

/* Exit statuses, documented in kvx-plan(1). */
enum {
	EX_OK = 0,
	EX_RUNTIME = 1,
	EX_BADUSE = 2,
	EX_MODEL = 3,
	EX_CORPUS = 4,
	EX_INFEASIBLE = 5,
	EX_EXISTS = 6,
	EX_DEVICE = 7
};

struct cli {
	const char		*model, *out, *svg, *save_prof, *from_prof;
	const char		*weights;
	struct opt_files	 corpus;
	int			 force, quiet, threads, method, mode, solver;
	int			 help, version;
	int			 tokens_budget;	/* -b gave a token count */
	double			 budget_tokens;
	prof_opts		 po;
	alloc_opts		 ao;
	int			 set_window, set_pool, set_kernel, set_gqa;
	int			 set_sinks, set_mode, set_gran, set_scorer;
	int			 set_rweight;
	int			 ea_queries;	/* PLAN_EA_ALL or a count */
	int			 set_eaq;
	double			 alpha;
	int			 validate;	/* probes of the check */
	int			 val_question;	/* enum prof_question */
};

/* The statistics' span of a new expected-attention plan: the whole
 * prompt, which gave lower perplexity than the last 128 queries
 * (bench/RESULTS.md, section 8c). */
#define CLI_EA_QUERIES	PLAN_EA_ALL

/* Print the one-line error and return the exit status. */
static int KVX_PRINTF(2, 3)
die(int code, const char *fmt, ...)
{
	va_list ap;

	fputs("kvx-plan: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return code;
}

/* A budget: "25%", "0.25", or a token count ("512", "512t", "512 tokens"). */
static int
parse_budget(void *set, const char *s, char *err, size_t size)
{
	struct cli *c = set;
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || !isfinite(v) || v <= 0)
		goto bad;
	while (*end == ' ')
		end++;
	if (strcmp(end, "%") == 0 && v <= 100) {
		c->ao.budget = v / 100;
		c->tokens_budget = 0;
		return 0;
	}
	if (*end == '\0' && v <= 1) {
		c->ao.budget = v;
		c->tokens_budget = 0;
		return 0;
	}
	if ((*end == '\0' || strcmp(end, "t") == 0 ||
	    strcmp(end, "tokens") == 0) && v == floor(v) && v >= 1) {
		c->budget_tokens = v;
		c->tokens_budget = 1;
		return 0;
	}
bad:
	snprintf(err, size, "bad budget '%s' (a share such as 25%% or 0.25, "
	    "or a token count such as 512t)", s);
	return -1;
}

/* A method by name (baseline.c knows the names and their aliases). */
static int
parse_method(void *set, const char *s, char *err, size_t size)
{
	struct cli *c = set;

	if ((c->method = alloc_method_parse(s)) >= 0)
		return 0;
	snprintf(err, size, "unknown method '%s' (kvx, uniform, pyramid, ada "
	    "or layer)", s);
	return -1;
}

/* Expected Attention's span: all, or a count of the last queries. */
static int
parse_ea_queries(void *set, const char *s, char *err, size_t size)
{
	struct cli *c = set;
	char *end;
	long v;

	c->set_eaq = 1;
	if (strcmp(s, "all") == 0) {
		c->ea_queries = PLAN_EA_ALL;
		return 0;
	}
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno == 0 && end != s && *end == '\0' && v >= 2 &&
	    v <= KVX_WINDOW_MAX) {
		c->ea_queries = (int)v;
		return 0;
	}
	snprintf(err, size, "bad span '%s' (all, or a count of the last "
	    "queries in [2, %d])", s, KVX_WINDOW_MAX);
	return -1;
}

/* A scorer, by its plan name. */
static int
parse_scorer(void *set, const char *s, char *err, size_t size)
{
	struct cli *c = set;
	int v = plan_scorer_parse(s);

	if (v >= 0) {
		c->po.scorer = v;
		c->set_scorer = 1;
		return 0;
	}
	snprintf(err, size, "unknown scorer '%s' (snapkv, expected-attention "
	    "or kvzip)", s);
	return -1;
}

/* Word lists in the order of the enums they index. */
static const char *const modes[] = { "static", "hybrid", NULL };
static const char *const grans[] = { "layer-head", "layer", "head", NULL };
static const char *const solvers[] = { "greedy", "dp", "glpk", NULL };
static const char *const objectives[] = { "output", "mass", "output-abs",
	"auto", NULL };
/* In the order of enum prof_question. */
static const char *const questions[] = { "inside", "after", NULL };
/* In the order of KVX_DEVICE_AUTO, _CPU, _GPU. */
static const char *const devices[] = { "auto", "cpu", "gpu", NULL };

#define OFF(m)	offsetof(struct cli, m)

/* In --help order; kvx-plan(1) describes each. */
static const struct opt options[] = {
	{ .key = 'm', .name = "model", .kind = OPT_STR, .arg = "FILE",
	    .dst = OFF(model), .help = "GGUF model" },
	{ .key = 'o', .name = "output", .kind = OPT_STR, .arg = "FILE",
	    .dst = OFF(out), .help = "write the plan there" },
	{ .key = 'f', .name = "force", .kind = OPT_FLAG, .dst = OFF(force),
	    .help = "overwrite the plan, --svg and --save-profile" },
	{ .key = 'b', .name = "budget", .kind = OPT_FUNC, .arg = "B",
	    .fn = parse_budget,
	    .help = "a share (25% or 0.25) or tokens per head (512t);\n"
	    "default 25%" },
	{ .key = 'c', .name = "corpus", .kind = OPT_FILES, .arg = "FILE",
	    .dst = OFF(corpus),
	    .help = "calibration text: every file up to the next option" },
	{ .name = "method", .kind = OPT_FUNC, .arg = "M", .fn = parse_method,
	    .help = "kvx (default), uniform, pyramid, ada or layer" },
	{ .name = "baseline", .kind = OPT_FUNC, .arg = "M", .fn = parse_method,
	    .help = "the same as --method" },
	{ .name = "mode", .kind = OPT_WORD, .arg = "MODE", .dst = OFF(mode),
	    .names = modes, .noun = "mode", .flags = OPT_GIVEN,
	    .given = OFF(set_mode), .help = "static (default) or hybrid" },
	{ .name = "solver", .kind = OPT_WORD, .arg = "S", .dst = OFF(solver),
	    .names = solvers, .noun = "solver",
	    .help = "greedy, dp (default) or glpk" },
	{ .name = "granularity", .kind = OPT_WORD, .arg = "G",
	    .dst = OFF(ao.gran), .names = grans, .noun = "granularity",
	    .flags = OPT_GIVEN, .given = OFF(set_gran),
	    .help = "layer-head (default), layer or head" },
	{ .name = "samples", .kind = OPT_INT, .arg = "N", .lo = 1,
	    .hi = 100000, .dst = OFF(po.samples),
	    .help = "windows to profile; default 8" },
	{ .name = "sample-tokens", .kind = OPT_INT, .arg = "N", .lo = 16,
	    .hi = 1 << 20, .dst = OFF(po.sample_tokens),
	    .help = "tokens per window; default 2048" },
	{ .name = "profile-tokens", .kind = OPT_INT, .arg = "N", .lo = 0,
	    .hi = 1 << 20, .dst = OFF(po.profile_tokens),
	    .help = "run the last N tokens of each window;\n"
	    "0: all of it; default 1024" },
	{ .name = "seed", .kind = OPT_U64, .arg = "S", .lo = 0, .hi = LONG_MAX,
	    .dst = OFF(po.seed),
	    .help = "seed of the window offsets; default 1" },
	{ .name = "profile-span", .kind = OPT_INT, .arg = "N", .lo = 0,
	    .hi = 1 << 24, .dst = OFF(po.span),
	    .help = "local attention span; 0: full; default 512" },
	{ .name = "device", .kind = OPT_WORD, .arg = "D",
	    .dst = OFF(po.device), .names = devices, .noun = "device",
	    .help = "where profiling runs: auto (default: the GPU\n"
	    "when usable), cpu or gpu" },
	{ .name = "objective", .kind = OPT_WORD, .arg = "O",
	    .dst = OFF(po.objective), .names = objectives, .noun = "objective",
	    .help = "output, mass, output-abs or auto (default:\n"
	    "output where block outputs are normalised,\n"
	    "else output-abs)" },
	{ .name = "probes", .kind = OPT_INT, .arg = "N", .lo = 1,
	    .hi = PROBE_MAX_STATEMENTS, .dst = OFF(po.probes),
	    .help = "statements in each retrieval probe; default 4" },
	{ .name = "probe-share", .kind = OPT_NUM, .arg = "F", .lo = 0,
	    .hi = 1, .dst = OFF(po.probe_share),
	    .help = "share of the windows that carry a retrieval\n"
	    "probe (every window is measured as prose too);\n"
	    "0: none; default 1" },
	{ .name = "probe-question", .kind = OPT_WORD, .arg = "Q",
	    .dst = OFF(po.probe_question), .names = questions,
	    .noun = "probe question mode",
	    .help = "where a probe's question sits at run time:\n"
	    "inside the compressed prompt (default), or\n"
	    "after the compressed context (kvzip only)" },
	{ .name = "probe-hay", .kind = OPT_WORD, .arg = "H",
	    .dst = OFF(po.probe_hay), .names = prof_hay_names,
	    .noun = "probe haystack",
	    .help = "a probe's haystack: the prose as it runs\n"
	    "(prose, default), a 32-token span of it said\n"
	    "again and again (repeat), or the two in turn\n"
	    "(mixed)" },
	{ .name = "validate", .kind = OPT_INT, .arg = "N", .lo = 1,
	    .hi = 100000, .dst = OFF(validate),
	    .help = "run N retrieval probes of the calibration\n"
	    "text through the plan, uniform budgets and\n"
	    "blends of the two; keep the blend nearest the\n"
	    "plan that does as well as uniform" },
	{ .name = "validate-question", .kind = OPT_WORD, .arg = "Q",
	    .dst = OFF(val_question), .names = questions,
	    .noun = "validation question mode",
	    .help = "the probes' question: inside the compressed\n"
	    "prompt (default) or after the compressed\n"
	    "context" },
	{ .name = "retrieval-floor", .kind = OPT_NUM, .arg = "X", .lo = 0,
	    .hi = 1, .dst = OFF(ao.retrieval_floor),
	    .help = "keep the mean retrieval retention at X or more" },
	{ .name = "retrieval-weight", .kind = OPT_NUM, .arg = "W", .lo = 0,
	    .hi = 1e6, .dst = OFF(ao.retrieval_weight), .flags = OPT_GIVEN,
	    .given = OFF(set_rweight),
	    .help = "maximise prose + W x retrieval retention;\n"
	    "default 1 from 15% kept, 0.3 below;\n"
	    "0 with --retrieval-floor" },
	{ .name = "grid", .kind = OPT_INT, .arg = "N", .lo = 2,
	    .hi = PROFILE_MAX_GRID, .dst = OFF(po.grid),
	    .help = "levels of the retention curves; default 256" },
	{ .name = "window", .kind = OPT_INT, .arg = "N", .lo = 1,
	    .hi = KVX_WINDOW_MAX, .dst = OFF(po.window), .flags = OPT_GIVEN,
	    .given = OFF(set_window),
	    .help = "observation window; default 32" },
	{ .name = "pool", .kind = OPT_WORD, .arg = "P", .dst = OFF(po.pool),
	    .names = prof_pool_names, .noun = "pool", .flags = OPT_GIVEN,
	    .given = OFF(set_pool), .help = "max (default), avg or none" },
	{ .name = "pool-kernel", .kind = OPT_INT, .arg = "K", .lo = 1,
	    .hi = 255, .dst = OFF(po.pool_kernel), .flags = OPT_ODD | OPT_GIVEN,
	    .given = OFF(set_kernel), .help = "odd pooling kernel; default 7" },
	{ .name = "gqa", .kind = OPT_WORD, .arg = "G", .dst = OFF(po.gqa),
	    .names = prof_gqa_names, .noun = "gqa", .flags = OPT_GIVEN,
	    .given = OFF(set_gqa),
	    .help = "mean (default) or max over a query group" },
	{ .name = "scorer", .kind = OPT_FUNC, .arg = "S", .fn = parse_scorer,
	    .help = "snapkv (default), expected-attention or kvzip: how "
	    "tokens are scored, when profiling and in the plan" },
	{ .name = "ea-queries", .kind = OPT_FUNC, .arg = "Q",
	    .fn = parse_ea_queries,
	    .help = "expected-attention: the prompt queries its\n"
	    "statistics take, all (default) or the last Q" },
	{ .name = "sinks", .kind = OPT_INT, .arg = "N", .lo = 0, .hi = 1 << 20,
	    .dst = OFF(po.sinks), .flags = OPT_GIVEN, .given = OFF(set_sinks),
	    .help = "leading tokens always kept; default 4" },
	{ .name = "alpha", .kind = OPT_NUM, .arg = "A", .lo = 0, .hi = 1,
	    .dst = OFF(alpha),
	    .help = "hybrid: each head's floor, a share of an even\n"
	    "split; default 0.2" },
	{ .name = "beta", .kind = OPT_NUM, .arg = "B", .lo = 1, .hi = 1e6,
	    .dst = OFF(ao.beta), .help = "pyramid: first-to-last knob; "
	    "default 20" },
	{ .name = "save-profile", .kind = OPT_STR, .arg = "FILE",
	    .dst = OFF(save_prof), .help = "save the curves" },
	{ .name = "from-profile", .kind = OPT_STR, .arg = "FILE",
	    .dst = OFF(from_prof), .help = "use saved curves, not -c" },
	{ .name = "layer-weights", .kind = OPT_STR, .arg = "FILE",
	    .dst = OFF(weights), .help = "one weight per layer per line" },
	{ .name = "page", .kind = OPT_INT, .arg = "N", .lo = 1, .hi = 1 << 24,
	    .dst = OFF(ao.page), .help = "budgets in steps of N tokens" },
	{ .name = "min-frac", .kind = OPT_NUM, .arg = "F", .lo = 0, .hi = 1,
	    .dst = OFF(ao.min_frac), .help = "floor of every head's share" },
	{ .name = "max-frac", .kind = OPT_NUM, .arg = "F", .lo = 0, .hi = 1,
	    .dst = OFF(ao.max_frac), .help = "most of every head's share" },
	{ .name = "layer-min", .kind = OPT_NUM, .arg = "F", .lo = 0, .hi = 1,
	    .dst = OFF(ao.layer_min), .help = "floor of every layer's share" },
	{ .name = "layer-max", .kind = OPT_NUM, .arg = "F", .lo = 0, .hi = 1,
	    .dst = OFF(ao.layer_max), .help = "most of every layer's share" },
	{ .name = "shards", .kind = OPT_INT, .arg = "K", .lo = 1, .hi = 4096,
	    .dst = OFF(ao.shards),
	    .help = "tensor-parallel shards to balance (glpk)" },
	{ .name = "ref-context", .kind = OPT_I64, .arg = "N", .lo = 1,
	    .hi = 1 << 26, .dst = OFF(ao.ref_context),
	    .help = "reference context of the costs; default 4096" },
	{ .name = "svg", .kind = OPT_STR, .arg = "FILE", .dst = OFF(svg),
	    .help = "write a heatmap of the budgets" },
	{ .name = "time-limit", .kind = OPT_NUM, .arg = "S", .lo = 0.01,
	    .hi = 1e6, .dst = OFF(ao.sp.time_limit),
	    .help = "seconds for glpk; default 5" },
	{ .key = 't', .name = "threads", .kind = OPT_INT, .arg = "N", .lo = 1,
	    .hi = 1024, .dst = OFF(threads),
	    .help = "worker threads; default all CPUs" },
	{ .key = 'q', .name = "quiet", .kind = OPT_FLAG, .dst = OFF(quiet),
	    .help = "no table and no progress" },
	{ .key = 'h', .name = "help", .kind = OPT_EXIT, .dst = OFF(help),
	    .help = "show this help" },
	{ .key = 'V', .name = "version", .kind = OPT_EXIT, .dst = OFF(version),
	    .help = "show the version" },
};

static const struct opt_cmd cmd = {
	"kvx-plan",
	"kvx-plan -m model [-o plan.yaml] [-b budget] [-c file ...] [options]",
	options, (int)(sizeof options / sizeof options[0])
};

/* Read one weight per layer; '#' starts a comment. */
static int
read_weights(const char *path, int n_layer, double **out)
{
	char line[256], *p, *end;
	double *w, v;
	int n = 0, ln = 0;
	FILE *f;

	if ((f = fopen(path, "r")) == NULL)
		return die(EX_BADUSE, "%s: %s (--layer-weights)", path,
		    strerror(errno));
	if ((w = calloc((size_t)n_layer, sizeof *w)) == NULL) {
		fclose(f);
		return die(EX_RUNTIME, "out of memory");
	}
	while (fgets(line, sizeof line, f) != NULL) {
		ln++;
		if ((p = strchr(line, '#')) != NULL)
			*p = '\0';
		p = line + strspn(line, " \t\r\n");
		if (*p == '\0')
			continue;
		errno = 0;
		v = strtod(p, &end);
		end += strspn(end, " \t\r\n");
		if (errno != 0 || end == p || *end != '\0' || !isfinite(v) ||
		    v < 0) {
			fclose(f);
			free(w);
			return die(EX_BADUSE, "%s:%d: not a weight (one "
			    "non-negative number per layer)", path, ln);
		}
		if (n == n_layer) {
			fclose(f);
			free(w);
			return die(EX_BADUSE, "%s:%d: more weights than the "
			    "model's %d layers", path, ln, n_layer);
		}
		w[n++] = v;
	}
	fclose(f);
	if (n != n_layer) {
		free(w);
		return die(EX_BADUSE, "%s: %d weights, the model has %d layers "
		    "(one per line)", path, n, n_layer);
	}
	*out = w;
	return EX_OK;
}

/* Exit status for a failed allocation. */
static int
alloc_fail(kvx_status rc, const char *solver)
{
	switch (rc) {
	case KVX_ERR_PLAN:
		if (strncmp(kvx_errmsg(), "retrieval floor", 15) == 0)
			return die(EX_INFEASIBLE, "%s (lower --retrieval-floor "
			    "or raise --budget)", kvx_errmsg());
		return die(EX_INFEASIBLE, "infeasible budget: %s (raise "
		    "--budget or relax the floors)", kvx_errmsg());
	case KVX_ERR_UNSUPPORTED:
		if (strstr(kvx_errmsg(), "--solver") != NULL)
			return die(EX_BADUSE, "%s", kvx_errmsg());
		return die(EX_BADUSE, "%s (solver %s; try --solver glpk)",
		    kvx_errmsg(), solver);
	case KVX_ERR_ARG:
		return die(EX_BADUSE, "%s", kvx_errmsg());
	default:
		return die(EX_RUNTIME, "%s", kvx_errmsg());
	}
}

/* Fail if path exists and --force was not given. */
static int
check_new(const struct cli *c, const char *path, const char *what)
{
	if (path != NULL && !c->force && access(path, F_OK) == 0)
		return die(EX_EXISTS, "%s exists (%s; pass --force to "
		    "overwrite)", path, what);
	return EX_OK;
}

/* Parse the command line into c; returns an exit status or -1 to go on. */
/* Record the model's sliding windows in the plan: selection and the
 * budget's caps read them there. */
static int
set_windows(kvx_plan *plan, const kvx_model *m)
{
	int *w, l;
	kvx_status rc;

	if ((w = calloc((size_t)plan->n_layer, sizeof *w)) == NULL)
		return die(EX_RUNTIME, "out of memory");
	for (l = 0; l < plan->n_layer; l++)
		w[l] = kvx_model_get_window(m, l);
	rc = plan_set_windows(plan, w);
	free(w);
	return rc == KVX_OK ? EX_OK : die(EX_RUNTIME, "%s", kvx_errmsg());
}

static int
parse_args(struct cli *c, int argc, char **argv)
{
	char err[256];
	int i;

	switch (opt_parse(&cmd, c, argc, argv, err, sizeof err)) {
	case OPT_OK:
		break;
	case OPT_STOP:
		if (c->help)
			opt_usage(&cmd, stdout);
		else
			printf("kvx-plan %s\n", PACKAGE_VERSION);
		return EX_OK;
	case OPT_NOMEM:
		return die(EX_RUNTIME, "out of memory");
	default:
		return die(EX_BADUSE, "%s", err);
	}
	if (c->solver >= 0)
		c->ao.solver = solvers[c->solver];
#ifdef HAVE_GLPK
	/* a floor is a second resource: the MIP is exact, dp discretises */
	else if (c->ao.retrieval_floor >= 0)
		c->ao.solver = "glpk";
#endif
#ifndef HAVE_GLPK
	if (strcmp(c->ao.solver, "glpk") == 0)
		return die(EX_BADUSE, "solver glpk is not built in "
		    "(reconfigure with --with-glpk)");
#endif
	if (c->model == NULL)
		return die(EX_BADUSE, "no model (give -m model.gguf)");
	if (c->po.probe_question == PROF_Q_AFTER &&
	    c->po.scorer != PLAN_SCORER_KVZIP)
		return die(EX_BADUSE, "--probe-question after needs --scorer "
		    "kvzip");
	if (c->ao.min_frac > c->ao.max_frac)
		return die(EX_BADUSE, "--min-frac %g is above --max-frac %g",
		    c->ao.min_frac, c->ao.max_frac);
	if (c->ao.layer_min > c->ao.layer_max)
		return die(EX_BADUSE, "--layer-min %g is above --layer-max %g",
		    c->ao.layer_min, c->ao.layer_max);
	if (c->tokens_budget) {
		if (c->budget_tokens > (double)c->ao.ref_context)
			return die(EX_BADUSE, "budget of %.0f tokens exceeds "
			    "the reference context %" PRId64 " (raise "
			    "--ref-context)", c->budget_tokens,
			    c->ao.ref_context);
		c->ao.budget = c->budget_tokens / (double)c->ao.ref_context;
	}
	/* a floor alone maximises prose under it; else the weight follows
	 * the share (alloc_opts) */
	if (c->ao.retrieval_floor >= 0 && !c->set_rweight)
		c->ao.retrieval_weight = 0;
	if ((c->ao.retrieval_floor >= 0 || c->set_rweight) &&
	    c->method != ALLOC_KVX && c->method != ALLOC_LAYER)
		return die(EX_BADUSE, "--retrieval-floor and --retrieval-weight "
		    "apply to methods kvx and layer");
	if (c->set_mode && c->method != ALLOC_KVX)
		return die(EX_BADUSE, "--mode applies to method kvx only "
		    "(%s has a fixed mode)", alloc_method_name(c->method));
	if (c->set_gran && c->method != ALLOC_KVX)
		return die(EX_BADUSE, "--granularity applies to method kvx "
		    "only");
	if (c->mode == KVX_PLAN_HYBRID && c->ao.gran == GRAN_HEAD)
		return die(EX_BADUSE, "--granularity head with --mode hybrid "
		    "is the ada method (use --method ada)");
	if (c->corpus.n > 0 && c->from_prof != NULL && c->validate == 0)
		return die(EX_BADUSE, "give calibration text (-c) or "
		    "--from-profile, not both (both only with --validate, "
		    "whose probes -c gives)");
	if (c->validate > 0 && c->method != ALLOC_KVX &&
	    c->method != ALLOC_LAYER && c->method != ALLOC_PYRAMID)
		return die(EX_BADUSE, "--validate applies to methods kvx, "
		    "layer and pyramid (it compares them with uniform and "
		    "ada budgets)");
	if (c->validate > 0 && (c->ao.page > 0 ||
	    c->ao.retrieval_floor >= 0))
		return die(EX_BADUSE, "--validate with %s: a blend toward "
		    "uniform budgets need not keep it", c->ao.page > 0 ?
		    "--page" : "--retrieval-floor");
	if (c->validate > 0 && c->corpus.n == 0)
		return die(EX_BADUSE, "--validate needs calibration text for "
		    "its probes (-c file)");
	for (i = 0; c->validate > 0 && i < c->corpus.n; i++)
		if (strcmp(c->corpus.v[i], "-") == 0)
			return die(EX_BADUSE, "--validate reads the calibration "
			    "text again: give files, not standard input");
	if (c->save_prof != NULL && c->corpus.n == 0)
		return die(EX_BADUSE, "--save-profile needs calibration text "
		    "(-c file)");
	if (alloc_needs_profile(c->method) && c->corpus.n == 0 &&
	    c->from_prof == NULL)
		return die(EX_BADUSE, "method %s needs calibration text (give "
		    "-c file or --from-profile file)",
		    alloc_method_name(c->method));
	/* "-" is standard input, read when profiling */
	for (i = 0; i < c->corpus.n; i++)
		if (strcmp(c->corpus.v[i], "-") != 0 &&
		    access(c->corpus.v[i], R_OK) != 0)
			return die(EX_CORPUS, "%s: %s (calibration text)",
			    c->corpus.v[i], strerror(errno));
	return -1;
}

/* Take the selection settings a loaded profile was measured with; a
 * different explicit setting would make its curves meaningless. */
static int
adopt_profile(struct cli *c, const profile *p)
{
	if ((c->set_window && c->po.window != p->window) ||
	    (c->set_sinks && c->po.sinks != p->sinks) ||
	    (c->set_kernel && c->po.pool_kernel != p->pool_kernel) ||
	    (c->set_pool && c->po.pool != p->pool) ||
	    (c->set_gqa && c->po.gqa != p->gqa) ||
	    (c->set_scorer && c->po.scorer != p->scorer))
		return die(EX_BADUSE, "%s was measured with --window %d "
		    "--sinks %d --pool %s --pool-kernel %d --gqa %s --scorer "
		    "%s (drop the selection options or profile again)",
		    c->from_prof, p->window, p->sinks,
		    prof_pool_names[p->pool], p->pool_kernel,
		    prof_gqa_names[p->gqa],
		    plan_scorer_name(p->scorer));
	c->po.window = p->window;
	c->po.sinks = p->sinks;
	c->po.pool_kernel = p->pool_kernel;
	c->po.pool = p->pool;
	c->po.gqa = p->gqa;
	c->po.scorer = p->scorer;
	return EX_OK;
}

/* What --validate compares a plan with: uniform budgets, or ada's for a
 * hybrid plan. */
static int
val_base(const kvx_plan *plan)
{
	return plan->mode == KVX_PLAN_HYBRID ? ALLOC_ADA : ALLOC_UNIFORM;
}

/* The summary table: per layer share, smallest and largest head,
 * predicted retention against uniform, and the bytes. */
static void
summary(const struct cli *c, const kvx_plan *plan, const profile *prof,
    const alloc_report *rep, const val_report *vr)
{
	int L = plan->n_layer, Hkv = plan->n_head_kv, l, h;
	double tot = 0;
	char b1[32], b2[32];

	printf("method %s, mode %s", plan->method,
	    plan->mode == KVX_PLAN_HYBRID ? "hybrid" : "static");
	if (rep->solved)
		printf(", solver %s (%s%s, %.3f s)", c->ao.solver,
		    rep->res.status == SOLVE_OPTIMAL ? "optimal" : "feasible",
		    strcmp(c->ao.solver, "greedy") != 0 ? "" :
		    rep->res.concave ? ", concave curves" :
		    ", curves not concave", rep->res.seconds);
	printf(", budget %.2f%% at %" PRId64 " tokens\n", 100 * c->ao.budget,
	    c->ao.ref_context);
	printf("%5s %7s %7s %7s %9s %9s\n", "layer", "share", "min", "max",
	    "retained", "uniform");
	for (l = 0; l < L; l++) {
		double s = 0, mn = 1, mx = 0, r = 0, u = 0, f;

		for (h = 0; h < Hkv; h++) {
			f = plan->mode == KVX_PLAN_HYBRID ? plan->budgets[l] :
			    plan->budgets[l * Hkv + h];
			s += f;
			f = rep->head_frac[l * Hkv + h];
			if (f < mn)
				mn = f;
			if (f > mx)
				mx = f;
			if (prof != NULL) {
				r += profile_eval(prof, l, h, f);
				u += profile_eval(prof, l, h, c->ao.budget);
			}
		}
		tot += s;
		printf("%5d %7.4f %7.4f %7.4f", l, s / Hkv, mn, mx);
		if (prof != NULL)
			printf(" %9.4f %9.4f\n", r / Hkv, u / Hkv);
		else
			printf(" %9s %9s\n", "-", "-");
	}
	printf("%5s %7.4f %7s %7s", "all", tot / (L * Hkv), "", "");
	if (rep->predicted >= 0)
		printf(" %9.4f %9.4f\n", rep->predicted, rep->uniform);
	else
		printf(" %9s %9s\n", "-", "-");
	if (rep->retrieval >= 0)
		printf("retrieval retention %.4f, uniform %.4f\n",
		    rep->retrieval, rep->retrieval_uniform);
	printf("KV bytes at %" PRId64 " tokens: %s of %s full (%.2f%%)\n",
	    plan->ref_context, solve__bytes((int64_t)plan->ref_bytes, b1,
	    sizeof b1), solve__bytes((int64_t)plan->ref_bytes_full, b2,
	    sizeof b2), 100.0 * (double)plan->ref_bytes /
	    (double)plan->ref_bytes_full);
	if (vr->probes == 0)
		return;
	printf("validation (%.1f s): kept %s\n  blend           answer "
	    "log-p  found\n", vr->seconds, plan->validation);
	for (l = 0; l < VAL_LEVELS; l++)
		printf("  %4.2f %-9s %12.3f %4d/%d%s\n", vr->alpha[l],
		    l == 0 ? "(plan)" : l < VAL_LEVELS - 1 ? "" :
		    val_base(plan) == ALLOC_ADA ? "(ada)" : "(uniform)",
		    vr->logp[l], vr->found[l], vr->probes,
		    l == vr->chosen ? "  kept" : "");
}

/*
 * --validate: the plan, uniform budgets of its mode (ada for a hybrid
 * plan) and blends of the two through the probes (validate.h); the plan
 * and the report become the blend kept.
 */
static int
validate(struct cli *c, kvx_model *m, const profile *prof, kvx_plan *plan,
    alloc_report *rep, val_report *vr)
{
	alloc_opts bo = c->ao;
	alloc_report brep;
	kvx_plan *base = NULL;
	int32_t *ids = NULL;
	int64_t n_ids = 0;
	char names[256];
	val_opts vo;
	kvx_status rc;
	double a;
	int ex = EX_OK;

	memset(&brep, 0, sizeof brep);
	bo.method = val_base(plan);
	if ((rc = plan_copy(plan, &base)) != KVX_OK) {
		ex = die(EX_RUNTIME, "%s", kvx_errmsg());
		goto done;
	}
	if ((rc = alloc_run(&bo, prof, base, &brep)) != KVX_OK) {
		ex = alloc_fail(rc, bo.solver);
		goto done;
	}
	if ((rc = profile_load_corpus(m, c->corpus.v, c->corpus.n, &ids,
	    &n_ids, names, sizeof names)) != KVX_OK) {
		ex = die(EX_CORPUS, "%s (calibration text)", kvx_errmsg());
		goto done;
	}
	memset(&vo, 0, sizeof vo);
	vo.probes = c->validate;
	vo.tokens = c->po.sample_tokens;
	vo.statements = c->po.probes;
	vo.hay = c->po.probe_hay;
	vo.after = c->val_question == PROF_Q_AFTER;
	vo.seed = c->po.seed;
	vo.device = c->po.device;
	vo.progress = !c->quiet && isatty(STDERR_FILENO);
	if ((rc = val_run(m, ids, n_ids, plan, base, &vo, vr)) != KVX_OK) {
		ex = die(rc == KVX_ERR_ARG ? EX_CORPUS : rc ==
		    KVX_ERR_UNSUPPORTED ? EX_BADUSE : rc == KVX_ERR_DEVICE ?
		    EX_DEVICE : EX_RUNTIME, "--validate: %s", kvx_errmsg());
		goto done;
	}
	a = vr->alpha[vr->chosen];
	val_blend(plan, base, a, plan);
	alloc_blend(&c->ao, prof, plan, &brep, a, rep);
	snprintf(plan->validation, sizeof plan->validation, "%.2f of the "
	    "way from %s to the solved plan, on %d probes of %d tokens, "
	    "question %s", a, alloc_method_name(bo.method), vo.probes,
	    vo.tokens, vo.after ? "after" : "inside");
done:
	free(ids);
	alloc_report_free(&brep);
	kvx_plan_free(&base);
	return ex;
}

/* Profile or load the curves when the method needs or can use them. */
static int
get_profile(struct cli *c, kvx_model *m, profile **prof)
{
	const kvx_model_info *mi = kvx_model_get_info(m);
	kvx_status rc;
	int ex;

	*prof = NULL;
	if (c->from_prof != NULL) {
		rc = profile_load(c->from_prof, mi, prof);
		if (rc == KVX_ERR_MISMATCH)
			return die(EX_MODEL, "%s (profile again with this "
			    "model)", kvx_errmsg());
		if (rc != KVX_OK)
			return die(EX_CORPUS, "%s (--from-profile)",
			    kvx_errmsg());
		if ((ex = adopt_profile(c, *prof)) != EX_OK)
			return ex;
		return EX_OK;
	}
	if (c->corpus.n == 0)
		return EX_OK;
	c->po.progress = !c->quiet && isatty(STDERR_FILENO);
	if ((rc = profile_device(m, c->po.device, &c->po.device)) != KVX_OK)
		return die(EX_DEVICE, "%s", kvx_errmsg());
	rc = profile_run(m, c->corpus.v, c->corpus.n, &c->po, prof);
	if (rc == KVX_ERR_ARG || rc == KVX_ERR_IO)
		return die(EX_CORPUS, "%s (give more calibration text with -c, "
		    "or lower --sample-tokens)", kvx_errmsg());
	if (rc == KVX_ERR_UNSUPPORTED)
		return die(EX_BADUSE, "%s", kvx_errmsg());
	if (rc == KVX_ERR_DEVICE)
		return die(EX_DEVICE, "profiling on the GPU: %s",
		    kvx_errmsg());
	if (rc != KVX_OK)
		return die(EX_RUNTIME, "profiling: %s", kvx_errmsg());
	if (c->save_prof != NULL &&
	    (rc = profile_save(*prof, c->save_prof, c->force)) != KVX_OK)
		return die(EX_RUNTIME, "%s (--save-profile)", kvx_errmsg());
	return EX_OK;
}

/* Parse, profile, allocate, write the plan and print the table. */
int
main(int argc, char **argv)
{
	kvx_model_params mp;
	struct cli c;
	kvx_model *m = NULL;
	kvx_plan *plan = NULL;
	profile *prof = NULL;
	alloc_report rep;
	val_report vr;
	double *weights = NULL;
	const kvx_model_info *mi;
	kvx_status rc;
	char title[160];
	int ex, mode;

	memset(&c, 0, sizeof c);
	memset(&rep, 0, sizeof rep);
	memset(&vr, 0, sizeof vr);
	prof_opts_init(&c.po);
	alloc_opts_init(&c.ao);
	c.method = ALLOC_KVX;
	c.solver = -1;
	c.alpha = 0.2;
	if ((ex = parse_args(&c, argc, argv)) >= 0)
		goto out;
	if ((ex = check_new(&c, c.out, "the plan")) != EX_OK ||
	    (ex = check_new(&c, c.svg, "--svg")) != EX_OK ||
	    (ex = check_new(&c, c.save_prof, "--save-profile")) != EX_OK)
		goto out;

	kvx_model_params_init(&mp);
	mp.n_threads = c.threads;
	if ((rc = kvx_model_open(c.model, &mp, &m)) != KVX_OK) {
		ex = die(EX_MODEL, "%s (a GGUF model of a Llama-family "
		    "architecture)", kvx_errmsg());
		goto out;
	}
	mi = kvx_model_get_info(m);
	if (c.weights != NULL &&
	    (ex = read_weights(c.weights, mi->n_layer, &weights)) != EX_OK)
		goto out;
	if ((ex = get_profile(&c, m, &prof)) != EX_OK)
		goto out;
	if (c.set_rweight && c.ao.retrieval_weight > 0 && prof != NULL &&
	    prof->Rr == NULL) {
		ex = die(EX_BADUSE, "the profile has no retrieval curves for "
		    "--retrieval-weight (profile with --probe-share above 0)");
		goto out;
	}

	mode = c.method == ALLOC_ADA ? KVX_PLAN_HYBRID :
	    c.method == ALLOC_KVX ? c.mode : KVX_PLAN_STATIC;
	if ((rc = plan_new(mi, mode, c.ao.budget, &plan)) != KVX_OK) {
		ex = die(EX_RUNTIME, "%s", kvx_errmsg());
		goto out;
	}
	snprintf(plan->method, sizeof plan->method, "%s",
	    alloc_method_name(c.method));
	if ((ex = set_windows(plan, m)) != EX_OK)
		goto out;
	plan->window = c.po.window;
	plan->pool = c.po.pool;
	plan->pool_kernel = c.po.pool_kernel;
	plan->gqa = c.po.gqa;
	plan->sinks = c.po.sinks;
	plan_set_scorer(plan, c.po.scorer);
	if (c.set_eaq && plan->scorer != PLAN_SCORER_EA) {
		ex = die(EX_BADUSE, "--ea-queries applies to the "
		    "expected-attention scorer only (--scorer)");
		goto out;
	}
	if (plan->scorer == PLAN_SCORER_EA)
		plan->ea_queries = c.set_eaq ? c.ea_queries : CLI_EA_QUERIES;
	plan->ref_context = c.ao.ref_context;
	if (mode == KVX_PLAN_HYBRID)
		plan->alpha = c.alpha;
	if (c.tokens_budget) {
		plan->budget_kind = PLAN_BUDGET_TOKENS;
		plan->budget = c.budget_tokens;
	}
	c.ao.method = c.method;
	c.ao.mode = mode;
	c.ao.floor_tokens = c.po.window + c.po.sinks;
	c.ao.layer_w = weights;
	if ((rc = alloc_run(&c.ao, prof, plan, &rep)) != KVX_OK) {
		ex = alloc_fail(rc, c.ao.solver);
		goto out;
	}
	if (c.validate > 0 &&
	    (ex = validate(&c, m, prof, plan, &rep, &vr)) != EX_OK)
		goto out;

	if (rep.solved)
		snprintf(plan->solver, sizeof plan->solver, "%s", c.ao.solver);
	if (prof != NULL) {
		plan->objective = rep.objective;
		plan->predicted_retention = rep.predicted;
		plan->uniform_retention = rep.uniform;
		snprintf(plan->corpus, sizeof plan->corpus, "%s", prof->corpus);
		plan->samples = prof->samples;
		plan->sample_tokens = prof->sample_tokens;
		plan->seed = prof->seed;
	}
	snprintf(plan->tool_version, sizeof plan->tool_version, "%s",
	    PACKAGE_VERSION);
	snprintf(plan->created_by, sizeof plan->created_by, "kvx-plan");
	plan_update_bytes(plan, c.ao.bytes_per_elem);
	if ((rc = plan_validate(plan)) != KVX_OK) {
		ex = die(EX_RUNTIME, "%s", kvx_errmsg());
		goto out;
	}
	if (c.out != NULL &&
	    (rc = kvx_plan_save(plan, c.out, c.force)) != KVX_OK) {
		ex = die(access(c.out, F_OK) == 0 && !c.force ? EX_EXISTS :
		    EX_RUNTIME, "%s", kvx_errmsg());
		goto out;
	}
	snprintf(title, sizeof title, "%s %s %.1f%% (%s)", mi->name,
	    plan->method, 100 * c.ao.budget,
	    mode == KVX_PLAN_HYBRID ? "hybrid" : "static");
	if (c.svg != NULL &&
	    (rc = svg_write(plan, title, c.svg, c.force)) != KVX_OK) {
		ex = die(EX_RUNTIME, "%s (--svg)", kvx_errmsg());
		goto out;
	}
	if (!c.quiet)
		summary(&c, plan, prof, &rep, &vr);
	ex = EX_OK;
out:
	alloc_report_free(&rep);
	kvx_plan_free(&plan);
	profile_free(&prof);
	free(weights);
	kvx_model_close(&m);
	opt_free(&cmd, &c);
	return ex;
}
