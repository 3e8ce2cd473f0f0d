/*
 * test-threads.c - the threading rule of kvx.h: one model, opened once, and
 * several contexts made from it running at the same time on different
 * threads must give exactly the logits that the same work gives when the
 * contexts run one after the other.  Each thread creates its own context,
 * prefills its own prompt (full cache, static and hybrid plans), decodes a
 * few tokens and frees it.  CPU contexts always; GPU contexts too where a
 * GPU is usable.  Run under ThreadSanitizer by ./configure --enable-tsan.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvx.h"
#include "tap.h"

#define N_JOB	4		/* concurrent contexts */
#define N_DEC	6		/* decode steps a job */
#define ROUNDS	2

static const char *const prompts[N_JOB] = {
	"The capital of France is Paris, and the capital of Italy is",
	"Once upon a time, in a small village by the sea, there lived an "
	    "old fisherman who every morning",
	"def fibonacci(n):\n    if n < 2:\n        return n\n    return",
	"The mitochondria is the powerhouse of the cell. Photosynthesis "
	    "happens in the chloroplasts, which contain",
};

/* Plan of each job: NULL is the full cache. */
static const char *const plan_names[N_JOB] = {
	NULL, "smollm2-135m-kvx-20.yaml", "smollm2-135m-kvx-hybrid-30.yaml",
	"smollm2-135m-uniform-10.yaml",
};

/* Stop the whole test: the rest cannot run. */
static void
bail(const char *why)
{
	printf("Bail out! %s\n", why);
	exit(1);
}

struct job {
	kvx_model	*m;
	const kvx_plan	*plan;
	int		 device;
	const int32_t	*ids;
	int		 n;
	float		*out;		/* (1 + N_DEC) x n_vocab logits */
	int64_t		 kept;
	kvx_status	 rc;
	char		 err[256];
};

/* One job, start to end, on a context of its own. */
static void *
run_job(void *arg)
{
	struct job *j = arg;
	const kvx_model_info *mi = kvx_model_get_info(j->m);
	int V = mi->n_vocab, seq = 0, s, i;
	kvx_ctx_params p;
	kvx_memory mem;
	kvx_ctx *c = NULL;
	int32_t tok;

	kvx_ctx_params_init(&p);
	p.n_ctx = 512;
	p.device = j->device;
	p.n_threads = 2;
	if ((j->rc = kvx_ctx_new(j->m, j->plan, &p, &c)) != KVX_OK)
		goto done;
	if ((j->rc = kvx_prefill(c, 0, j->ids, j->n, j->out)) != KVX_OK)
		goto done;
	for (s = 0; s < N_DEC; s++) {
		const float *prev = j->out + (size_t)s * V;

		tok = 0;
		for (i = 1; i < V; i++)
			if (prev[i] > prev[tok])
				tok = i;
		if ((j->rc = kvx_decode(c, 1, &seq, &tok, j->out +
		    (size_t)(s + 1) * V)) != KVX_OK)
			goto done;
	}
	if ((j->rc = kvx_ctx_memory(c, &mem)) == KVX_OK)
		j->kept = mem.n_kept;
done:
	if (j->rc != KVX_OK)
		snprintf(j->err, sizeof j->err, "%s", kvx_errmsg());
	kvx_ctx_free(&c);
	return NULL;
}

/* Largest absolute difference of two logit arrays. */
static double
max_diff(const float *a, const float *b, size_t n)
{
	double d = 0;
	size_t i;

	for (i = 0; i < n; i++)
		if (fabs((double)a[i] - b[i]) > d)
			d = fabs((double)a[i] - b[i]);
	return d;
}

/*
 * Runs the jobs once one after the other, then ROUNDS times all at once,
 * and compares.  CPU contexts must agree exactly (each splits its work
 * the same way whatever runs beside it); GPU ones within tol.
 */
static void
check_device(kvx_model *m, kvx_plan **plans, int32_t **ids, int *n,
    int device, double tol)
{
	const char *dn = device == KVX_DEVICE_GPU ? "GPU" : "CPU";
	size_t per = (size_t)(1 + N_DEC) * kvx_model_get_info(m)->n_vocab;
	struct job seq[N_JOB], par[N_JOB];
	pthread_t th[N_JOB];
	int i, r, started;

	for (i = 0; i < N_JOB; i++) {
		memset(&seq[i], 0, sizeof seq[i]);
		seq[i].m = m;
		seq[i].plan = plans[i];
		seq[i].device = device;
		seq[i].ids = ids[i];
		seq[i].n = n[i];
		seq[i].out = malloc(per * sizeof(float));
		if (seq[i].out == NULL)
			bail("out of memory");
		run_job(&seq[i]);
		ok(seq[i].rc == KVX_OK, "%s job %d (%s) runs alone%s%s", dn, i,
		    plan_names[i] ? plan_names[i] : "full cache",
		    seq[i].rc ? ": " : "", seq[i].err);
	}
	for (r = 0; r < ROUNDS; r++) {
		for (i = 0; i < N_JOB; i++) {
			par[i] = seq[i];
			par[i].out = calloc(per, sizeof(float));
			par[i].rc = KVX_ERR_ARG;
			par[i].err[0] = '\0';
			if (par[i].out == NULL)
				bail("out of memory");
		}
		for (started = 0; started < N_JOB; started++)
			if (pthread_create(&th[started], NULL, run_job,
			    &par[started]) != 0)
				break;
		ok(started == N_JOB, "round %d: %d %s threads started", r,
		    N_JOB, dn);
		for (i = 0; i < started; i++)
			pthread_join(th[i], NULL);
		for (i = 0; i < N_JOB; i++) {
			double d = max_diff(seq[i].out, par[i].out, per);

			ok(par[i].rc == KVX_OK && (tol == 0 ? memcmp(seq[i].out,
			    par[i].out, per * sizeof(float)) == 0 : d <= tol) &&
			    par[i].kept == seq[i].kept,
			    "round %d, %s job %d: concurrent logits equal the "
			    "sequential ones (max diff %.3g, kept %lld/%lld)%s%s",
			    r, dn, i, d, (long long)par[i].kept,
			    (long long)seq[i].kept, par[i].rc ? ": " : "",
			    par[i].err);
			free(par[i].out);
		}
	}
	for (i = 0; i < N_JOB; i++)
		free(seq[i].out);
}

int
main(void)
{
	const char *path = getenv("KVX_MODEL");
	const char *top = getenv("top_srcdir");
	kvx_plan *plans[N_JOB] = { NULL };
	int32_t *ids[N_JOB];
	int n[N_JOB], i;
	kvx_model_params mp;
	kvx_ctx_params cp;
	kvx_model *m = NULL;
	kvx_ctx *probe = NULL;
	char pp[4096];

	if (path == NULL || fopen(path, "rb") == NULL)
		tap_skip_all("model not present (set KVX_MODEL)");
	kvx_model_params_init(&mp);
	mp.n_threads = 2;
	if (!ok(kvx_model_open(path, &mp, &m) == KVX_OK, "open model once"))
		bail(kvx_errmsg());
	for (i = 0; i < N_JOB; i++) {
		if (plan_names[i] != NULL) {
			snprintf(pp, sizeof pp, "%s/plans/%s", top ? top : ".",
			    plan_names[i]);
			if (!ok(kvx_plan_load(pp, &plans[i]) == KVX_OK,
			    "load %s", plan_names[i]))
				bail(kvx_errmsg());
		}
		if ((ids[i] = malloc(400 * sizeof(int32_t))) == NULL)
			bail("out of memory");
		/* the prompt six times: long enough (~130-200 tokens) that
		 * every plan evicts beyond its window */
		snprintf(pp, sizeof pp, "%s %s %s %s %s %s", prompts[i],
		    prompts[i], prompts[i], prompts[i], prompts[i], prompts[i]);
		if (kvx_tokenize(m, pp, strlen(pp), 0, ids[i], 400, &n[i]) !=
		    KVX_OK)
			bail(kvx_errmsg());
	}

	check_device(m, plans, ids, n, KVX_DEVICE_CPU, 0);

	kvx_ctx_params_init(&cp);
	cp.device = KVX_DEVICE_GPU;
	cp.n_ctx = 512;
	if (kvx_ctx_new(m, NULL, &cp, &probe) == KVX_OK) {
		kvx_ctx_free(&probe);
		/* the GPU's reductions keep their order from run to run, but
		 * allow for a last-bit difference should a library pick
		 * another algorithm under load */
		check_device(m, plans, ids, n, KVX_DEVICE_GPU, 1e-3);
	} else
		diag("no GPU context (%s): CPU only", kvx_errmsg());

	for (i = 0; i < N_JOB; i++) {
		kvx_plan_free(&plans[i]);
		free(ids[i]);
	}
	kvx_model_close(&m);
	ok(m == NULL, "model closed after its contexts");
	return tap_done();
}
