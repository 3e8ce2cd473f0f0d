/*
 * kvx-bench-e2e.c - end-to-end decode throughput on the GPU at a fixed KV
 * memory budget: the full cache against plans.
 * SPDX-License-Identifier: MIT
 *
 * For each configuration one context holds as many sequences as the
 * budget allows: after an untimed prefill (cleared again), two distinct
 * prompts of ctx random tokens are prefilled
 * (timed: prefill wall time, and within it the device time of scoring +
 * pooling, top-k selection and compaction, between events), the
 * measured per-sequence KV bytes (kept rows plus decode headroom) fix the
 * batch, the other sequences are copies of the two, and then every
 * sequence decodes one token per step (LM head included, logits left on
 * the device).  Each timed step is timed alone (wall time, the device
 * synchronised around it); step ms is their median, min-max their
 * spread, device ms the mean device time of a timed step (between
 * events from its tables' upload to its last kernel), host ms the mean
 * time a timed step spends building its tables on the host with the
 * device idle (inside step ms), and throughput = batch / median step.
 *
 * Each configuration runs in a process of its own (forked before this
 * process touches the device), as a server holding one context would.
 * On an H200 a process's later CUDA streams run a step's kernels with
 * gaps of ~0.45 us between them instead of ~0.1 (about 0.1 ms a step);
 * since libkvx gives a freed context's streams to the next one, -1
 * measures the same as separate processes, and is kept as a check.
 *
 * usage: kvx-bench-e2e [-m model] [-c ctx] [-b budget_GiB] [-s steps]
 *        [-r headroom] [-u shares] [-F] [-1 [-w]] [plan.yaml ...]
 * -u: the uniform plans' kept shares in percent, comma-separated (default
 * 50,25,10; "" for none); -F: no full-cache run ("vs full" is then
 * against the first configuration), so that a profiler can be given one
 * configuration alone; -1: every configuration in this one process, one
 * after another (each then a later context of the process but the
 * first); -w (with -1): an unreported full-cache context first, so that
 * every reported configuration is a later context.  The last timed
 * step of each configuration runs between cudaProfilerStart and
 * cudaProfilerStop, so that `ncu
 * --profile-from-start off` sees that one step's kernels.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_profiler_api.h>

#include "gpu.h"
#include "kvx.h"
#include "plan.h"
#include "util.h"

#define MAXCFG 16
#define MAXSEQ 8192

struct result {
	char	 name[64];
	double	 mib_seq, tok_s, step_ms, prefill_ms, select_ms;
	double	 score_ms, topk_ms, gather_ms;
	double	 step_min, step_max;	/* fastest and slowest step, ms */
	double	 host_ms;		/* of a step, building its tables */
	double	 dev_ms;		/* of a step, on the device */
	int	 batch;
};

/* For qsort: doubles in increasing order. */
static int
cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static int
rnd(int n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (int)(rng % (uint64_t)n);
}

/* One configuration; 0 on success. */
static int
run(kvx_model *m, const kvx_plan *p, const char *name, int ctx, double budget,
    int steps, int hr, struct result *r)
{
	const kvx_model_info *mi = kvx_model_get_info(m);
	kvx_ctx_params cp;
	gpu_ctx *g = NULL;
	kvx_memory mem;
	int32_t *ids = NULL, *tok = NULL;
	int *seqs = NULL, i, s, batch, warm = 2;
	double t0, per, *ts = NULL, host0, dev0;
	const gpu_stats *st;
	gpu_stats st0;

	memset(r, 0, sizeof *r);
	snprintf(r->name, sizeof r->name, "%s", name);
	kvx_ctx_params_init(&cp);
	cp.n_seq = MAXSEQ;
	cp.n_ctx = ctx + steps + warm + 8;
	cp.decode_headroom = hr;
	cp.device = KVX_DEVICE_GPU;
	if (gpu_ctx_new(m, p, &cp, &g) != KVX_OK)
		goto fail;
	ids = malloc((size_t)ctx * sizeof *ids);
	tok = malloc(MAXSEQ * sizeof *tok);
	seqs = malloc(MAXSEQ * sizeof *seqs);
	ts = malloc((size_t)steps * sizeof *ts);
	if (ids == NULL || tok == NULL || seqs == NULL || ts == NULL)
		goto fail;
	gpu_set_options(g, 1, 1);
	/* a prefill first, untimed (a process's first also loads the
	   kernels and sets cuBLAS up): the timed ones start from st0 */
	for (i = 0; i < ctx; i++)
		ids[i] = 100 + i % 1000;
	if (gpu_prefill(g, 0, ids, ctx, NULL) != KVX_OK ||
	    gpu_seq_clear(g, 0) != KVX_OK)
		goto fail;
	st0 = *gpu_get_stats(g);
	for (s = 0; s < 2; s++) {
		for (i = 0; i < ctx; i++)
			ids[i] = 100 + rnd(mi->n_vocab - 200);
		if (gpu_prefill(g, s, ids, ctx, NULL) != KVX_OK)
			goto fail;
	}
	st = gpu_get_stats(g);
	r->prefill_ms = (st->prefill_s - st0.prefill_s) * 1e3 / 2;
	r->select_ms = (st->select_s - st0.select_s) * 1e3 / 2;
	r->score_ms = (st->score_s - st0.score_s) * 1e3 / 2;
	r->topk_ms = (st->topk_s - st0.topk_s) * 1e3 / 2;
	r->gather_ms = (st->gather_s - st0.gather_s) * 1e3 / 2;
	gpu_memory(g, &mem);
	per = (double)mem.kv_bytes / 2;
	r->mib_seq = per / (1 << 20);
	batch = (int)(budget * (1 << 30) / per);
	if (batch > MAXSEQ)
		batch = MAXSEQ;
	if (batch < 2) {
		fprintf(stderr, "%s: the budget holds %d sequences\n", name,
		    batch);
		goto fail;
	}
	r->batch = batch;
	for (s = 2; s < batch; s++)
		if (gpu_seq_copy(g, s, s % 2) != KVX_OK)
			goto fail;
	for (s = 0; s < batch; s++) {
		seqs[s] = s;
		tok[s] = 100 + rnd(mi->n_vocab - 200);
	}
	for (i = 0; i < warm; i++)
		if (gpu_decode(g, batch, seqs, tok, NULL) != KVX_OK)
			goto fail;
	host0 = st->decode_host_s;
	dev0 = st->decode_dev_s;
	for (i = 0; i < steps; i++) {
		/* the last step alone for a profiler started with
		 * profiling off (ncu --profile-from-start off) */
		if (i == steps - 1)
			cudaProfilerStart();
		t0 = kvx__now();
		if (gpu_decode(g, batch, seqs, tok, NULL) != KVX_OK)
			goto fail;
		ts[i] = (kvx__now() - t0) * 1e3;
	}
	cudaProfilerStop();
	r->host_ms = (st->decode_host_s - host0) * 1e3 / steps;
	r->dev_ms = (st->decode_dev_s - dev0) * 1e3 / steps;
	qsort(ts, (size_t)steps, sizeof *ts, cmp_dbl);
	r->step_ms = steps % 2 ? ts[steps / 2] : (ts[steps / 2 - 1] +
	    ts[steps / 2]) / 2;
	r->step_min = ts[0];
	r->step_max = ts[steps - 1];
	r->tok_s = batch * 1e3 / r->step_ms;
	free(ts);
	free(ids);
	free(tok);
	free(seqs);
	gpu_ctx_free(&g);
	return 0;
fail:
	fprintf(stderr, "%s: %s\n", name, kvx_errmsg());
	free(ts);
	free(ids);
	free(tok);
	free(seqs);
	gpu_ctx_free(&g);
	return 1;
}

/* One configuration: the full cache (plan NULL, share 0), a uniform
 * share, or a plan file. */
struct config {
	double		 share;
	const char	*path;
};

/*
 * Runs configuration c with model m (opened here when NULL); 0 on
 * success, 77 when there is no device, 1 on failure.
 */
static int
one(kvx_model *m, const char *model, const struct config *c, int ctx,
    double budget, int steps, int hr, struct result *r)
{
	kvx_model *own = NULL;
	kvx_plan *p = NULL;
	char name[64];
	int rc;

	if (!gpu_available())
		return 77;
	if (m == NULL) {
		if (kvx_model_open(model, NULL, &own) != KVX_OK) {
			fprintf(stderr, "kvx-bench-e2e: %s\n", kvx_errmsg());
			return 1;
		}
		m = own;
	}
	if (c->path != NULL) {
		const char *b = strrchr(c->path, '/');

		if (kvx_plan_load(c->path, &p) != KVX_OK) {
			fprintf(stderr, "%s: %s\n", c->path, kvx_errmsg());
			kvx_model_close(&own);
			return 1;
		}
		snprintf(name, sizeof name, "%s", b ? b + 1 : c->path);
	} else if (c->share > 0) {
		if (plan_new(kvx_model_get_info(m), KVX_PLAN_STATIC, c->share,
		    &p) != KVX_OK) {
			fprintf(stderr, "uniform plan: %s\n", kvx_errmsg());
			kvx_model_close(&own);
			return 1;
		}
		snprintf(name, sizeof name, "uniform %g%%", c->share * 100);
	} else
		snprintf(name, sizeof name, "full");
	rc = run(m, p, name, ctx, budget, steps, hr, r);
	kvx_plan_free(&p);
	kvx_model_close(&own);
	return rc;
}

/*
 * Configuration c in a child process, its result sent back through a
 * pipe; 0, 77 or 1 as one().
 */
static int
one_apart(const char *model, const struct config *c, int ctx,
    double budget, int steps, int hr, struct result *r)
{
	int fd[2], st = 0, rc;
	ssize_t got = 0, k;
	pid_t pid;

	fflush(stdout);
	if (pipe(fd) != 0) {
		perror("kvx-bench-e2e: pipe");
		return 1;
	}
	if ((pid = fork()) < 0) {
		perror("kvx-bench-e2e: fork");
		close(fd[0]);
		close(fd[1]);
		return 1;
	}
	if (pid == 0) {
		close(fd[0]);
		rc = one(NULL, model, c, ctx, budget, steps, hr, r);
		if (rc == 0 && write(fd[1], r, sizeof *r) != (ssize_t)sizeof *r)
			rc = 1;
		fflush(NULL);
		_exit(rc);
	}
	close(fd[1]);
	while (got < (ssize_t)sizeof *r && (k = read(fd[0], (char *)r + got,
	    sizeof *r - (size_t)got)) > 0)
		got += k;
	close(fd[0]);
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
		return 1;
	if (WEXITSTATUS(st) != 0)
		return WEXITSTATUS(st);
	return got == (ssize_t)sizeof *r ? 0 : 1;
}

int
main(int argc, char **argv)
{
	const char *model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
	const char *shares = "50,25,10";
	struct result res[MAXCFG];
	int ctx = 8192, steps = 32, hr = 64, full = 1, c, n = 0, i;
	int apart = 1, ncfg = 0, rc, warmup = 0;
	struct config cfg[MAXCFG];
	double fr[MAXCFG];
	int nfr = 0;
	char *end;
	double budget = 4.0, tot_pf = 0.0, tot_sel = 0.0;
	kvx_model *m = NULL;

	while ((c = getopt(argc, argv, "m:c:b:s:r:u:F1w")) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'c': ctx = atoi(optarg); break;
		case 'b': budget = atof(optarg); break;
		case 's': steps = atoi(optarg); break;
		case 'r': hr = atoi(optarg); break;
		case 'u': shares = optarg; break;
		case 'F': full = 0; break;
		case '1': apart = 0; break;
		case 'w': warmup = 1; break;
		default:
			fprintf(stderr, "usage: kvx-bench-e2e [-m model] "
			    "[-c ctx] [-b budget_GiB] [-s steps] "
			    "[-r headroom] [-u shares] [-F] [-1 [-w]] "
			    "[plan.yaml ...]\n");
			return 2;
		}
	}
	if (warmup && apart) {
		fprintf(stderr, "kvx-bench-e2e: -w needs -1\n");
		return 2;
	}
	if (ctx < 1 || steps < 1 || hr < 0 || !(budget > 0)) {
		fprintf(stderr, "kvx-bench-e2e: -c, -s and -b must be "
		    "positive, -r at least 0\n");
		return 2;
	}
	for (end = (char *)shares; *end != '\0' && nfr < MAXCFG; ) {
		fr[nfr] = strtod(end, &end) / 100.0;
		if (!(fr[nfr] > 0 && fr[nfr] <= 1) || (*end != ',' &&
		    *end != '\0')) {
			fprintf(stderr, "kvx-bench-e2e: -u %s: expected "
			    "percentages in (0, 100], comma-separated\n",
			    shares);
			return 2;
		}
		nfr++;
		if (*end == ',')
			end++;
	}
	if (full)
		cfg[ncfg++] = (struct config){ 0.0, NULL };
	for (i = 0; i < nfr && ncfg < MAXCFG; i++)
		cfg[ncfg++] = (struct config){ fr[i], NULL };
	for (i = optind; i < argc && ncfg < MAXCFG; i++)
		cfg[ncfg++] = (struct config){ 0.0, argv[i] };
	/* in this process only without -1: the children touch the device
	   first */
	if (!apart) {
		if (!gpu_available()) {
			fprintf(stderr, "kvx-bench-e2e: no CUDA device\n");
			return 77;
		}
		if (kvx_model_open(model, NULL, &m) != KVX_OK) {
			fprintf(stderr, "kvx-bench-e2e: %s\n", kvx_errmsg());
			return 1;
		}
	}
	printf("model %s, context %d, KV budget %.1f GiB, headroom %d, "
	    "%d timed steps, %s\n", model, ctx, budget, hr, steps, apart ?
	    "a process a configuration" : warmup ? "one process, after an "
	    "unreported full-cache context" : "one process");
	if (warmup) {
		const struct config w = { 0.0, NULL };

		if (one(m, model, &w, ctx, budget, 2, hr, &res[0]) != 0) {
			kvx_model_close(&m);
			return 1;
		}
	}
	for (i = 0; i < ncfg; i++) {
		rc = apart ? one_apart(model, &cfg[i], ctx, budget, steps, hr,
		    &res[n]) : one(m, model, &cfg[i], ctx, budget, steps, hr,
		    &res[n]);
		if (rc == 77) {
			fprintf(stderr, "kvx-bench-e2e: no CUDA device\n");
			return 77;
		}
		if (rc == 0)
			n++;
		else if (i == 0 && full) {
			/* "vs full" needs the full cache */
			fprintf(stderr, "kvx-bench-e2e: the full cache "
			    "failed\n");
			kvx_model_close(&m);
			return 1;
		}
	}

	printf("\n| config | KV MiB/seq | batch | step ms | min-max | "
	    "device ms | host ms | tokens/s | %s | prefill ms | select ms | "
	    "score | top-k | gather | select share |\n",
	    full ? "vs full" : "vs first");
	printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
	    "| --- | --- | --- | --- | --- |\n");
	for (i = 0; i < n; i++) {
		printf("| %s | %.1f | %d | %.2f | %.2f-%.2f | %.2f | %.2f | "
		    "%.0f | %.2f | %.1f | %.2f | %.2f | %.2f | %.2f | %.1f%% |\n",
		    res[i].name, res[i].mib_seq, res[i].batch, res[i].step_ms,
		    res[i].step_min, res[i].step_max, res[i].dev_ms,
		    res[i].host_ms, res[i].tok_s,
		    res[0].tok_s > 0 ? res[i].tok_s / res[0].tok_s : 0.0,
		    res[i].prefill_ms, res[i].select_ms, res[i].score_ms,
		    res[i].topk_ms, res[i].gather_ms, 100.0 * res[i].select_ms /
		    res[i].prefill_ms);
		if (i > 0 || !full) {
			tot_pf += res[i].prefill_ms;
			tot_sel += res[i].select_ms;
		}
	}
	if (n > 1)
		printf("\ncompression (scoring + selection + compaction) over "
		    "the plans: %.1f%% of prefill time\n",
		    100.0 * tot_sel / tot_pf);
	kvx_model_close(&m);
	return n > 0 ? 0 : 1;
}
