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
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "baseline.h"
#include "kvx.h"
#include "plan.h"
#include "profile.h"
#include "solve.h"
#include "svg.h"
#include "util.h"

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
	EX_EXISTS = 6
};

#define MAX_CORPUS	64

enum {
	O_METHOD = 256, O_BASELINE, O_MODE, O_ALPHA, O_SOLVER, O_GRAN,
	O_SAMPLES, O_STOKENS, O_SEED, O_SPAN, O_GRID, O_WINDOW, O_POOL,
	O_KERNEL, O_GQA, O_SINKS, O_SAVEP, O_FROMP, O_LWEIGHTS, O_PAGE,
	O_MINF, O_MAXF, O_LMIN, O_LMAX, O_SHARDS, O_REFCTX, O_SVG, O_TLIMIT,
	O_BETA, O_OBJECTIVE
};

static const struct option longopts[] = {
	{ "model", required_argument, NULL, 'm' },
	{ "output", required_argument, NULL, 'o' },
	{ "force", no_argument, NULL, 'f' },
	{ "budget", required_argument, NULL, 'b' },
	{ "corpus", required_argument, NULL, 'c' },
	{ "threads", required_argument, NULL, 't' },
	{ "quiet", no_argument, NULL, 'q' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ "method", required_argument, NULL, O_METHOD },
	{ "baseline", required_argument, NULL, O_BASELINE },
	{ "mode", required_argument, NULL, O_MODE },
	{ "alpha", required_argument, NULL, O_ALPHA },
	{ "solver", required_argument, NULL, O_SOLVER },
	{ "granularity", required_argument, NULL, O_GRAN },
	{ "samples", required_argument, NULL, O_SAMPLES },
	{ "sample-tokens", required_argument, NULL, O_STOKENS },
	{ "seed", required_argument, NULL, O_SEED },
	{ "profile-span", required_argument, NULL, O_SPAN },
	{ "objective", required_argument, NULL, O_OBJECTIVE },
	{ "grid", required_argument, NULL, O_GRID },
	{ "window", required_argument, NULL, O_WINDOW },
	{ "pool", required_argument, NULL, O_POOL },
	{ "pool-kernel", required_argument, NULL, O_KERNEL },
	{ "gqa", required_argument, NULL, O_GQA },
	{ "sinks", required_argument, NULL, O_SINKS },
	{ "save-profile", required_argument, NULL, O_SAVEP },
	{ "from-profile", required_argument, NULL, O_FROMP },
	{ "layer-weights", required_argument, NULL, O_LWEIGHTS },
	{ "page", required_argument, NULL, O_PAGE },
	{ "min-frac", required_argument, NULL, O_MINF },
	{ "max-frac", required_argument, NULL, O_MAXF },
	{ "layer-min", required_argument, NULL, O_LMIN },
	{ "layer-max", required_argument, NULL, O_LMAX },
	{ "shards", required_argument, NULL, O_SHARDS },
	{ "ref-context", required_argument, NULL, O_REFCTX },
	{ "svg", required_argument, NULL, O_SVG },
	{ "time-limit", required_argument, NULL, O_TLIMIT },
	{ "beta", required_argument, NULL, O_BETA },
	{ NULL, 0, NULL, 0 }
};

struct cli {
	const char	*model, *out, *svg, *save_prof, *from_prof, *weights;
	const char	*corpus[MAX_CORPUS];
	int		 n_corpus, force, quiet, threads, method, mode;
	int		 tokens_budget;	/* --budget gave a token count */
	double		 budget_tokens;
	prof_opts	 po;
	alloc_opts	 ao;
	int		 set_window, set_pool, set_kernel, set_gqa, set_sinks;
	int		 set_mode, set_gran;
	double		 alpha;
};

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

/* The synopsis, for -h. */
static void
usage(FILE *f)
{
	fprintf(f,
"usage: kvx-plan -m model [-o plan.yaml] [-f] [-b budget] [-c file ...]\n"
"                [--method kvx|uniform|pyramid|ada|layer] [--mode static|hybrid]\n"
"                [--solver greedy|dp|glpk] [--granularity layer-head|layer|head]\n"
"                [--samples n] [--sample-tokens n] [--seed s] [--profile-span n]\n"
"                [--objective output|output-abs|mass]\n"
"                [--grid n] [--window n] [--pool max|avg|none] [--pool-kernel k]\n"
"                [--gqa mean|max] [--sinks n] [--alpha a] [--beta b]\n"
"                [--save-profile file] [--from-profile file]\n"
"                [--layer-weights file] [--page n] [--min-frac f] [--max-frac f]\n"
"                [--layer-min f] [--layer-max f] [--shards k]\n"
"                [--ref-context n] [--svg file] [--time-limit s] [-t threads] [-q]\n");
}

/* A budget: "25%", "0.25", or a token count ("512", "512t", "512 tokens"). */
static int
parse_budget(struct cli *c, const char *s)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || !isfinite(v) || v <= 0)
		return -1;
	while (*end == ' ')
		end++;
	if (strcmp(end, "%") == 0) {
		if (v > 100)
			return -1;
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
	return -1;
}

/* Index of s in a NULL-terminated list, or -1. */
static int
word(const char *s, const char *const *list)
{
	int i;

	for (i = 0; list[i] != NULL; i++)
		if (strcmp(s, list[i]) == 0)
			return i;
	return -1;
}

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
static int
parse_args(struct cli *c, int argc, char **argv)
{
	static const char *const modes[] = { "static", "hybrid", NULL };
	static const char *const grans[] = { "layer-head", "layer", "head",
		NULL };
	static const char *const pools[] = { "max", "avg", "none", NULL };
	static const char *const gqas[] = { "mean", "max", NULL };
	static const char *const solvers[] = { "greedy", "dp", "glpk", NULL };
	long v;
	double d;
	int ch, i;

	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":m:o:fb:c:t:qhV", longopts,
	    NULL)) != -1) {
		switch (ch) {
		case 'm':
			c->model = optarg;
			break;
		case 'o':
			c->out = optarg;
			break;
		case 'f':
			c->force = 1;
			break;
		case 'b':
			if (parse_budget(c, optarg) != 0)
				return die(EX_BADUSE, "bad budget '%s' (a "
				    "share such as 25%% or 0.25, or a token "
				    "count such as 512t)", optarg);
			break;
		case 'c':
			if (c->n_corpus == MAX_CORPUS)
				return die(EX_BADUSE, "more than %d corpus "
				    "files", MAX_CORPUS);
			c->corpus[c->n_corpus++] = optarg;
			break;
		case 't':
			if (kvx__parse_long(optarg, 1, 1024, &v) != 0)
				return die(EX_BADUSE, "bad --threads '%s'",
				    optarg);
			c->threads = (int)v;
			break;
		case 'q':
			c->quiet = 1;
			break;
		case 'h':
			usage(stdout);
			return EX_OK;
		case 'V':
			printf("kvx-plan %s\n", PACKAGE_VERSION);
			return EX_OK;
		case O_METHOD:
		case O_BASELINE:
			if ((c->method = alloc_method_parse(optarg)) < 0)
				return die(EX_BADUSE, "unknown method '%s' "
				    "(kvx, uniform, pyramid, ada or layer)",
				    optarg);
			break;
		case O_MODE:
			if ((c->mode = word(optarg, modes)) < 0)
				return die(EX_BADUSE, "unknown mode '%s' "
				    "(static or hybrid)", optarg);
			c->set_mode = 1;
			break;
		case O_ALPHA:
			if (kvx__parse_double(optarg, 0, 1, &c->alpha) != 0)
				return die(EX_BADUSE, "bad --alpha '%s' (a "
				    "number in [0, 1])", optarg);
			break;
		case O_SOLVER:
			if (word(optarg, solvers) < 0)
				return die(EX_BADUSE, "unknown solver '%s' "
				    "(greedy, dp or glpk)", optarg);
#ifndef HAVE_GLPK
			if (strcmp(optarg, "glpk") == 0)
				return die(EX_BADUSE, "solver glpk is not "
				    "built in (reconfigure with --with-glpk)");
#endif
			c->ao.solver = optarg;
			break;
		case O_GRAN:
			if ((c->ao.gran = word(optarg, grans)) < 0)
				return die(EX_BADUSE, "unknown granularity "
				    "'%s' (layer-head, layer or head)", optarg);
			c->set_gran = 1;
			break;
		case O_SAMPLES:
			if (kvx__parse_long(optarg, 1, 100000, &v) != 0)
				return die(EX_BADUSE, "bad --samples '%s'",
				    optarg);
			c->po.samples = (int)v;
			break;
		case O_STOKENS:
			if (kvx__parse_long(optarg, 16, 1 << 20, &v) != 0)
				return die(EX_BADUSE, "bad --sample-tokens "
				    "'%s' (16 or more)", optarg);
			c->po.sample_tokens = (int)v;
			break;
		case O_SEED:
			if (kvx__parse_long(optarg, 0, LONG_MAX, &v) != 0)
				return die(EX_BADUSE, "bad --seed '%s'",
				    optarg);
			c->po.seed = (uint64_t)v;
			break;
		case O_OBJECTIVE:
			if (strcmp(optarg, "output") == 0)
				c->po.objective = PROF_OBJ_OUTPUT;
			else if (strcmp(optarg, "mass") == 0)
				c->po.objective = PROF_OBJ_MASS;
			else if (strcmp(optarg, "output-abs") == 0)
				c->po.objective = PROF_OBJ_ABS;
			else
				return die(EX_BADUSE, "unknown --objective '%s' "
				    "(output, output-abs or mass)", optarg);
			break;
		case O_SPAN:
			if (kvx__parse_long(optarg, 0, 1 << 24, &v) != 0)
				return die(EX_BADUSE, "bad --profile-span '%s'",
				    optarg);
			c->po.span = (int)v;
			break;
		case O_GRID:
			if (kvx__parse_long(optarg, 2, PROFILE_MAX_GRID, &v) != 0)
				return die(EX_BADUSE, "bad --grid '%s' (2 to "
				    "%d)", optarg, PROFILE_MAX_GRID);
			c->po.grid = (int)v;
			break;
		case O_WINDOW:
			if (kvx__parse_long(optarg, 1, PROFILE_MAX_WINDOW, &v) != 0)
				return die(EX_BADUSE, "bad --window '%s' (1 to "
				    "%d)", optarg, PROFILE_MAX_WINDOW);
			c->po.window = (int)v;
			c->set_window = 1;
			break;
		case O_POOL:
			if ((c->po.pool = word(optarg, pools)) < 0)
				return die(EX_BADUSE, "unknown pool '%s' (max, "
				    "avg or none)", optarg);
			c->set_pool = 1;
			break;
		case O_KERNEL:
			if (kvx__parse_long(optarg, 1, 255, &v) != 0 || v % 2 == 0)
				return die(EX_BADUSE, "bad --pool-kernel '%s' "
				    "(an odd number from 1 to 255)", optarg);
			c->po.pool_kernel = (int)v;
			c->set_kernel = 1;
			break;
		case O_GQA:
			if ((c->po.gqa = word(optarg, gqas)) < 0)
				return die(EX_BADUSE, "unknown gqa '%s' (mean "
				    "or max)", optarg);
			c->set_gqa = 1;
			break;
		case O_SINKS:
			if (kvx__parse_long(optarg, 0, 1 << 20, &v) != 0)
				return die(EX_BADUSE, "bad --sinks '%s'",
				    optarg);
			c->po.sinks = (int)v;
			c->set_sinks = 1;
			break;
		case O_SAVEP:
			c->save_prof = optarg;
			break;
		case O_FROMP:
			c->from_prof = optarg;
			break;
		case O_LWEIGHTS:
			c->weights = optarg;
			break;
		case O_PAGE:
			if (kvx__parse_long(optarg, 1, 1 << 24, &v) != 0)
				return die(EX_BADUSE, "bad --page '%s'",
				    optarg);
			c->ao.page = (int)v;
			break;
		case O_MINF:
		case O_MAXF:
		case O_LMIN:
		case O_LMAX:
			if (kvx__parse_double(optarg, 0, 1, &d) != 0)
				return die(EX_BADUSE, "bad --%s '%s' (a share "
				    "in [0, 1])", ch == O_MINF ? "min-frac" :
				    ch == O_MAXF ? "max-frac" : ch == O_LMIN ?
				    "layer-min" : "layer-max", optarg);
			if (ch == O_MINF)
				c->ao.min_frac = d;
			else if (ch == O_MAXF)
				c->ao.max_frac = d;
			else if (ch == O_LMIN)
				c->ao.layer_min = d;
			else
				c->ao.layer_max = d;
			break;
		case O_SHARDS:
			if (kvx__parse_long(optarg, 1, 4096, &v) != 0)
				return die(EX_BADUSE, "bad --shards '%s'",
				    optarg);
			c->ao.shards = (int)v;
			break;
		case O_REFCTX:
			if (kvx__parse_long(optarg, 1, 1 << 26, &v) != 0)
				return die(EX_BADUSE, "bad --ref-context '%s'",
				    optarg);
			c->ao.ref_context = v;
			break;
		case O_SVG:
			c->svg = optarg;
			break;
		case O_TLIMIT:
			if (kvx__parse_double(optarg, 0.01, 1e6, &c->ao.sp.time_limit)
			    != 0)
				return die(EX_BADUSE, "bad --time-limit '%s'",
				    optarg);
			break;
		case O_BETA:
			if (kvx__parse_double(optarg, 1, 1e6, &c->ao.beta) != 0)
				return die(EX_BADUSE, "bad --beta '%s' (1 or "
				    "more)", optarg);
			break;
		case ':':
			return die(EX_BADUSE, "option %s needs a value (see "
			    "kvx-plan -h)", argv[optind - 1]);
		default:
			return die(EX_BADUSE, "unknown option %s (see kvx-plan "
			    "-h)", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return die(EX_BADUSE, "unexpected argument '%s' (options "
		    "only; see kvx-plan(1))", argv[optind]);
	if (c->model == NULL)
		return die(EX_BADUSE, "no model (give -m model.gguf)");
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
	if (c->set_mode && c->method != ALLOC_KVX)
		return die(EX_BADUSE, "--mode applies to method kvx only "
		    "(%s has a fixed mode)", alloc_method_name(c->method));
	if (c->set_gran && c->method != ALLOC_KVX)
		return die(EX_BADUSE, "--granularity applies to method kvx "
		    "only");
	if (c->mode == KVX_PLAN_HYBRID && c->ao.gran == GRAN_HEAD)
		return die(EX_BADUSE, "--granularity head with --mode hybrid "
		    "is the ada method (use --method ada)");
	if (c->n_corpus > 0 && c->from_prof != NULL)
		return die(EX_BADUSE, "give calibration text (-c) or "
		    "--from-profile, not both");
	if (c->save_prof != NULL && c->n_corpus == 0)
		return die(EX_BADUSE, "--save-profile needs calibration text "
		    "(-c file)");
	if (alloc_needs_profile(c->method) && c->n_corpus == 0 &&
	    c->from_prof == NULL)
		return die(EX_BADUSE, "method %s needs calibration text (give "
		    "-c file or --from-profile file)",
		    alloc_method_name(c->method));
	for (i = 0; i < c->n_corpus; i++)
		if (access(c->corpus[i], R_OK) != 0)
			return die(EX_CORPUS, "%s: %s (calibration text)",
			    c->corpus[i], strerror(errno));
	return -1;
}

/* Take the selection settings a loaded profile was measured with; a
 * different explicit setting would make its curves meaningless. */
static int
adopt_profile(struct cli *c, const profile *p)
{
	static const char *const pools[] = { "max", "avg", "none" };
	static const char *const gqas[] = { "mean", "max" };

	if ((c->set_window && c->po.window != p->window) ||
	    (c->set_sinks && c->po.sinks != p->sinks) ||
	    (c->set_kernel && c->po.pool_kernel != p->pool_kernel) ||
	    (c->set_pool && c->po.pool != p->pool) ||
	    (c->set_gqa && c->po.gqa != p->gqa))
		return die(EX_BADUSE, "%s was measured with --window %d "
		    "--sinks %d --pool %s --pool-kernel %d --gqa %s (drop "
		    "the selection options or profile again)", c->from_prof,
		    p->window, p->sinks, pools[p->pool], p->pool_kernel,
		    gqas[p->gqa]);
	c->po.window = p->window;
	c->po.sinks = p->sinks;
	c->po.pool_kernel = p->pool_kernel;
	c->po.pool = p->pool;
	c->po.gqa = p->gqa;
	return EX_OK;
}

/* The summary table: per layer share, smallest and largest head,
 * predicted retention against uniform, and the bytes. */
static void
summary(const struct cli *c, const kvx_plan *plan, const profile *prof,
    const alloc_report *rep)
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
	printf("KV bytes at %" PRId64 " tokens: %s of %s full (%.2f%%)\n",
	    plan->ref_context, solve__bytes((int64_t)plan->ref_bytes, b1,
	    sizeof b1), solve__bytes((int64_t)plan->ref_bytes_full, b2,
	    sizeof b2), 100.0 * (double)plan->ref_bytes /
	    (double)plan->ref_bytes_full);
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
	if (c->n_corpus == 0)
		return EX_OK;
	c->po.progress = !c->quiet && isatty(STDERR_FILENO);
	rc = profile_run(m, c->corpus, c->n_corpus, &c->po, prof);
	if (rc == KVX_ERR_ARG || rc == KVX_ERR_IO)
		return die(EX_CORPUS, "%s (give more calibration text with -c, "
		    "or lower --sample-tokens)", kvx_errmsg());
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
	double *weights = NULL;
	const kvx_model_info *mi;
	kvx_status rc;
	char title[160];
	int ex, mode;

	memset(&c, 0, sizeof c);
	memset(&rep, 0, sizeof rep);
	prof_opts_init(&c.po);
	alloc_opts_init(&c.ao);
	c.method = ALLOC_KVX;
	c.alpha = 0.2;
	if ((ex = parse_args(&c, argc, argv)) >= 0)
		return ex;
	if ((ex = check_new(&c, c.out, "the plan")) != EX_OK ||
	    (ex = check_new(&c, c.svg, "--svg")) != EX_OK ||
	    (ex = check_new(&c, c.save_prof, "--save-profile")) != EX_OK)
		return ex;

	kvx_model_params_init(&mp);
	mp.n_threads = c.threads;
	if ((rc = kvx_model_open(c.model, &mp, &m)) != KVX_OK)
		return die(EX_MODEL, "%s (a GGUF model of a Llama-family "
		    "architecture)", kvx_errmsg());
	mi = kvx_model_get_info(m);
	if (c.weights != NULL &&
	    (ex = read_weights(c.weights, mi->n_layer, &weights)) != EX_OK)
		goto out;
	if ((ex = get_profile(&c, m, &prof)) != EX_OK)
		goto out;

	mode = c.method == ALLOC_ADA ? KVX_PLAN_HYBRID :
	    c.method == ALLOC_KVX ? c.mode : KVX_PLAN_STATIC;
	if ((rc = plan_new(mi, mode, c.ao.budget, &plan)) != KVX_OK) {
		ex = die(EX_RUNTIME, "%s", kvx_errmsg());
		goto out;
	}
	snprintf(plan->method, sizeof plan->method, "%s",
	    alloc_method_name(c.method));
	plan->window = c.po.window;
	plan->pool = c.po.pool;
	plan->pool_kernel = c.po.pool_kernel;
	plan->gqa = c.po.gqa;
	plan->sinks = c.po.sinks;
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
		summary(&c, plan, prof, &rep);
	ex = EX_OK;
out:
	alloc_report_free(&rep);
	kvx_plan_free(&plan);
	profile_free(&prof);
	free(weights);
	kvx_model_close(&m);
	return ex;
}
