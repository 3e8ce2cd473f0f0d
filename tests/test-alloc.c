/*
 * test-alloc.c - allocation failure, as SQLite tests it: on the paths of
 * model open, plan load, context creation, prefill and decode, fail the
 * Nth allocation for every N the path makes, and check that the call
 * returns KVX_ERR_NOMEM (or succeeds, where the allocation was optional),
 * leaks nothing, and leaves the handle usable: a context whose prefill or
 * decode failed then gives exactly the logits of one that never failed.
 *
 * The program is linked with --wrap for malloc, calloc, realloc, free and
 * strdup (and, built with CUDA, cudaMalloc, cudaMallocHost and their
 * frees), so every allocation that libkvx (linked in statically) and this
 * file make goes through the wrappers below; libc's, libyaml's and the
 * CUDA libraries' own allocations do not, and do not count.  Where a GPU
 * context can be made, the context paths run again on the GPU, where a
 * failed device allocation may also answer KVX_ERR_DEVICE.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvx.h"
#include "tap.h"

void	*__real_malloc(size_t);
void	*__real_calloc(size_t, size_t);
void	*__real_realloc(void *, size_t);
void	 __real_free(void *);
void	*__wrap_malloc(size_t);
void	*__wrap_calloc(size_t, size_t);
void	*__wrap_realloc(void *, size_t);
void	 __wrap_free(void *);
char	*__wrap_strdup(const char *);

// --- the allocator under test's control ------------------------------------

#define LIVE_CAP	(1 << 20)	/* open-addressing set of live blocks */

static pthread_mutex_t a_mu = PTHREAD_MUTEX_INITIALIZER;
static long a_seen;		/* allocations since arm() */
static long a_fail_at;		/* 1-based: the one to fail; 0: none */
static long a_failed;		/* how many were failed */
static long a_live;		/* live blocks made through the wrappers */
static uintptr_t *a_set;	/* the live blocks (0 empty, 1 deleted) */

/* Slot of p in the live set, or of the free slot where it would go. */
static size_t
slot(uintptr_t p, int want_free)
{
	size_t i = (size_t)((p >> 4) * 0x9E3779B97F4A7C15ull) & (LIVE_CAP - 1);
	size_t del = (size_t)-1;

	for (;; i = (i + 1) & (LIVE_CAP - 1)) {
		if (a_set[i] == p)
			return i;
		if (a_set[i] == 1 && del == (size_t)-1)
			del = i;
		if (a_set[i] == 0)
			return want_free && del != (size_t)-1 ? del : i;
	}
}

/* Count an allocation; 1 when this one must fail. */
static int
take(void)
{
	int fail;

	pthread_mutex_lock(&a_mu);
	a_seen++;
	fail = a_fail_at > 0 && a_seen == a_fail_at;
	if (fail)
		a_failed++;
	pthread_mutex_unlock(&a_mu);
	return fail;
}

static void
track(void *p)
{
	if (p == NULL || a_set == NULL)
		return;
	pthread_mutex_lock(&a_mu);
	a_set[slot((uintptr_t)p, 1)] = (uintptr_t)p;
	a_live++;
	pthread_mutex_unlock(&a_mu);
}

/* 1 when p was made through the wrappers (and is now forgotten). */
static int
untrack(void *p)
{
	size_t i;
	int had = 0;

	if (p == NULL || a_set == NULL)
		return 0;
	pthread_mutex_lock(&a_mu);
	i = slot((uintptr_t)p, 0);
	if (a_set[i] == (uintptr_t)p) {
		a_set[i] = 1;
		a_live--;
		had = 1;
	}
	pthread_mutex_unlock(&a_mu);
	return had;
}

void *
__wrap_malloc(size_t n)
{
	void *p;

	if (take())
		return NULL;
	p = __real_malloc(n);
	track(p);
	return p;
}

void *
__wrap_calloc(size_t n, size_t size)
{
	void *p;

	if (take())
		return NULL;
	p = __real_calloc(n, size);
	track(p);
	return p;
}

void *
__wrap_realloc(void *old, size_t n)
{
	void *p;

	if (take())
		return NULL;
	untrack(old);
	p = __real_realloc(old, n);
	if (p == NULL && old != NULL)
		track(old);
	else
		track(p);
	return p;
}

void
__wrap_free(void *p)
{
	untrack(p);
	__real_free(p);
}

char *
__wrap_strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = __wrap_malloc(n);

	if (p != NULL)
		memcpy(p, s, n);
	return p;
}

#ifdef HAVE_CUDA
/*
 * Device and pinned host memory: the same count, the same live set
 * (device addresses and pinned blocks do not meet malloc's).  2 is
 * cudaErrorMemoryAllocation.
 */
int	 __real_cudaMalloc(void **, size_t);
int	 __real_cudaMallocHost(void **, size_t);
int	 __real_cudaFree(void *);
int	 __real_cudaFreeHost(void *);
int	 __wrap_cudaMalloc(void **, size_t);
int	 __wrap_cudaMallocHost(void **, size_t);
int	 __wrap_cudaFree(void *);
int	 __wrap_cudaFreeHost(void *);

int
__wrap_cudaMalloc(void **p, size_t n)
{
	int rc;

	if (take()) {
		*p = NULL;
		return 2;
	}
	if ((rc = __real_cudaMalloc(p, n)) == 0)
		track(*p);
	return rc;
}

int
__wrap_cudaMallocHost(void **p, size_t n)
{
	int rc;

	if (take()) {
		*p = NULL;
		return 2;
	}
	if ((rc = __real_cudaMallocHost(p, n)) == 0)
		track(*p);
	return rc;
}

int
__wrap_cudaFree(void *p)
{
	untrack(p);
	return __real_cudaFree(p);
}

int
__wrap_cudaFreeHost(void *p)
{
	untrack(p);
	return __real_cudaFreeHost(p);
}
#endif

/* Start counting; fail allocation number at (0: none). */
static void
arm(long at)
{
	pthread_mutex_lock(&a_mu);
	a_seen = 0;
	a_fail_at = at;
	a_failed = 0;
	pthread_mutex_unlock(&a_mu);
}

/* Stop failing; the number of allocations seen since arm(). */
static long
disarm(void)
{
	long n;

	pthread_mutex_lock(&a_mu);
	n = a_seen;
	a_fail_at = 0;
	pthread_mutex_unlock(&a_mu);
	return n;
}

static long
live(void)
{
	long n;

	pthread_mutex_lock(&a_mu);
	n = a_live;
	pthread_mutex_unlock(&a_mu);
	return n;
}

// --- the paths -----------------------------------------------------------

static const char *model_path;
static int the_device = KVX_DEVICE_CPU;	/* of the contexts under test */
static char plan_path[4096];
static int32_t ids[512];
static int n_ids;

/* Per path: how each injected failure ended. */
struct tally {
	long	 n;		/* allocations on the path */
	long	 nomem;		/* failed with KVX_ERR_NOMEM */
	long	 ok;		/* the allocation was optional */
	long	 other;		/* another code: a defect */
	long	 leaks;		/* live blocks left behind */
	long	 unusable;	/* handle not usable afterwards */
	long	 first_bad;	/* first N with another code or a leak */
	char	 msg[200];
};

/* Record how failure number at ended. */
static void
note(struct tally *t, long at, kvx_status rc, long leaked)
{
	int nomem = rc == KVX_ERR_NOMEM || (the_device == KVX_DEVICE_GPU &&
	    rc == KVX_ERR_DEVICE);

	if (nomem)
		t->nomem++;
	else if (rc == KVX_OK)
		t->ok++;
	else
		t->other++;
	if (leaked != 0)
		t->leaks++;
	if ((rc != KVX_OK && !nomem) || leaked != 0) {
		if (t->first_bad == 0) {
			t->first_bad = at;
			snprintf(t->msg, sizeof t->msg, "rc %d (%s), %ld "
			    "blocks leaked", (int)rc, kvx_errmsg(), leaked);
		}
	}
}

/* Report a path's tally as TAP lines. */
static void
report(const char *what, const struct tally *t)
{
	ok(t->n > 0, "%s makes %ld allocations", what, t->n);
	ok(t->other == 0 && t->leaks == 0, "%s: each of the %ld failures "
	    "gives KVX_ERR_NOMEM (%ld) or the same success (%ld), no leak%s%s",
	    what,
	    t->n, t->nomem, t->ok, t->first_bad ? "; first bad at " : "",
	    t->first_bad ? t->msg : "");
	if (t->first_bad)
		diag("%s: first bad failure is number %ld", what, t->first_bad);
}

/* Small contexts on the device under test. */
static void
cpu_params(kvx_ctx_params *cp)
{
	kvx_ctx_params_init(cp);
	cp->device = the_device;
	cp->n_ctx = 256;
	cp->n_seq = 2;
	cp->n_threads = 1;
}

/* A call that makes an object, and the call that frees it. */
struct maker {
	const char	 *what;
	kvx_status	(*make)(void **out);
	void		(*free)(void **);
};

/*
 * Fail each allocation of mk's call in turn: it must give KVX_ERR_NOMEM (or
 * succeed), leave *out NULL when it fails, and leak nothing.
 */
static void
path_make(const struct maker *mk)
{
	struct tally t;
	void *obj = NULL;
	kvx_status rc;
	long base, at;

	memset(&t, 0, sizeof t);
	base = live();
	arm(0);
	rc = mk->make(&obj);
	t.n = disarm();
	mk->free(&obj);
	if (!ok(rc == KVX_OK && live() == base, "%s and its free, without "
	    "injection, leave nothing", mk->what))
		return;
	for (at = 1; at <= t.n; at++) {
		arm(at);
		rc = mk->make(&obj);
		disarm();
		if (rc != KVX_OK && obj != NULL)
			t.unusable++;
		mk->free(&obj);
		note(&t, at, rc, live() - base);
	}
	report(mk->what, &t);
	ok(t.unusable == 0, "a failed %s leaves the handle NULL", mk->what);
}

static kvx_model	*the_model;
static kvx_plan		*the_plan;

static kvx_status
make_model(void **out)
{
	return kvx_model_open(model_path, NULL, (kvx_model **)out);
}

static void
free_model(void **p)
{
	kvx_model_close((kvx_model **)p);
}

static kvx_status
make_plan(void **out)
{
	return kvx_plan_load(plan_path, (kvx_plan **)out);
}

static void
free_plan(void **p)
{
	kvx_plan_free((kvx_plan **)p);
}

static kvx_status
make_ctx(void **out)
{
	kvx_ctx_params cp;

	cpu_params(&cp);
	return kvx_ctx_new(the_model, the_plan, &cp, (kvx_ctx **)out);
}

static void
free_ctx(void **p)
{
	kvx_ctx_free((kvx_ctx **)p);
}

#define N_DEC 2

/*
 * Prefill, then N_DEC greedy decode steps, on sequence seq of c; logits
 * out: (1 + N_DEC) x V.  With fail_at > 0 the fail_at-th allocation of
 * the whole run fails; the call that saw it returns its code.
 */
static kvx_status
generate(kvx_ctx *c, int seq, int V, float *out)
{
	kvx_status rc;
	int32_t tok;
	int s, i;

	if ((rc = kvx_prefill(c, seq, ids, n_ids, out)) != KVX_OK)
		return rc;
	for (s = 0; s < N_DEC; s++) {
		const float *prev = out + (size_t)s * V;

		for (tok = 0, i = 1; i < V; i++)
			if (prev[i] > prev[tok])
				tok = i;
		if ((rc = kvx_decode(c, 1, &seq, &tok, out + (size_t)(s + 1) *
		    V)) != KVX_OK)
			return rc;
	}
	return KVX_OK;
}

/*
 * Prefill and decode on a context made beforehand: after each failure the
 * sequence is cleared and the same work must give the reference logits.
 */
static void
path_inference(kvx_model *m, const kvx_plan *plan, const char *what)
{
	int V = kvx_model_get_info(m)->n_vocab;
	size_t per = (size_t)(1 + N_DEC) * V;
	float *ref, *got;
	struct tally t;
	kvx_ctx_params cp;
	kvx_ctx *c = NULL;
	kvx_status rc;
	long base, at, mism = 0;
	char name[128];

	memset(&t, 0, sizeof t);
	cpu_params(&cp);
	ref = malloc(per * sizeof(float));
	got = malloc(per * sizeof(float));
	if (ref == NULL || got == NULL || kvx_ctx_new(m, plan, &cp, &c) !=
	    KVX_OK) {
		ok(0, "%s: set up", what);
		goto done;
	}
	/* a first run grows the context's scratch; count on the second */
	if (generate(c, 0, V, ref) != KVX_OK || kvx_seq_clear(c, 0) !=
	    KVX_OK) {
		ok(0, "%s: reference run: %s", what, kvx_errmsg());
		goto done;
	}
	kvx_ctx_free(&c);
	base = live();
	if (kvx_ctx_new(m, plan, &cp, &c) != KVX_OK)
		goto done;
	arm(0);
	rc = generate(c, 0, V, got);
	t.n = disarm();
	kvx_seq_clear(c, 0);
	ok(rc == KVX_OK && memcmp(ref, got, per * sizeof(float)) == 0,
	    "%s: a fresh context repeats the reference logits", what);
	for (at = 1; at <= t.n; at++) {
		arm(at);
		rc = generate(c, 0, V, got);
		disarm();
		/* a failure the library absorbed must not change the result */
		if (rc == KVX_OK && memcmp(ref, got, per * sizeof(float)) != 0)
			t.other++;
		if (kvx_seq_clear(c, 0) != KVX_OK)
			t.unusable++;
		/* the context may keep what it grew (scratch): leaks are
		 * counted once it is freed, below */
		note(&t, at, rc, 0);
		/* usable: the same work now succeeds and matches */
		if (generate(c, 0, V, got) != KVX_OK ||
		    memcmp(ref, got, per * sizeof(float)) != 0) {
			if (mism++ == 0)
				diag("%s: after failure %ld the context gives "
				    "other logits (%s)", what, at,
				    kvx_errmsg());
		}
		kvx_seq_clear(c, 0);
	}
	kvx_ctx_free(&c);
	snprintf(name, sizeof name, "prefill and decode (%s)", what);
	report(name, &t);
	ok(mism == 0 && t.unusable == 0, "%s: after each of the %ld failures "
	    "the context still gives the reference logits (%ld did not)", what,
	    t.n, mism);
	ok(live() == base, "%s: nothing leaked once the context is freed "
	    "(%ld blocks)", what, live() - base);
done:
	kvx_ctx_free(&c);
	free(ref);
	free(got);
}

/* 1 when a GPU context can be made (CUDA built in, a device usable). */
static int
gpu_usable(kvx_model *m)
{
	kvx_ctx_params cp;
	kvx_ctx *c = NULL;

	kvx_ctx_params_init(&cp);
	cp.device = KVX_DEVICE_GPU;
	cp.n_ctx = 64;
	if (kvx_ctx_new(m, NULL, &cp, &c) != KVX_OK)
		return 0;
	kvx_ctx_free(&c);
	return 1;
}

/*
 * A shipped plan with a window of 4 and 2 sinks, so that a prompt of 20
 * tokens is compressed: every run below is short, and there are a
 * thousand of them.
 */
static kvx_status
load_small(const char *path, kvx_plan **out)
{
	char buf[1 << 16], line[512], *w, *sk;
	size_t n = 0;
	FILE *f;

	if ((f = fopen(path, "rb")) == NULL)
		return KVX_ERR_IO;
	/* the byte totals no longer hold once the window changes */
	while (fgets(line, sizeof line, f) != NULL)
		if (strstr(line, "reference_bytes") == NULL &&
		    n + strlen(line) < sizeof buf) {
			memcpy(buf + n, line, strlen(line));
			n += strlen(line);
		}
	fclose(f);
	buf[n] = '\0';
	if ((w = strstr(buf, "window: 32")) == NULL ||
	    (sk = strstr(buf, "sinks: 4")) == NULL)
		return KVX_ERR_FORMAT;
	memcpy(w, "window:  4", 10);
	memcpy(sk, "sinks: 2", 8);
	return kvx_plan_load_mem(buf, n, path, out);
}

int
main(void)
{
	const char *top = getenv("top_srcdir");
	const char *text = "The capital of France is Paris. The capital of "
	    "Italy is Rome. The capital of Spain is";
	kvx_model *m = NULL;
	kvx_plan *static_plan = NULL, *hybrid_plan = NULL;
	int cpu_paths;
	FILE *f;

	model_path = getenv("KVX_MODEL");
	if (model_path == NULL || (f = fopen(model_path, "rb")) == NULL)
		tap_skip_all("model not present (set KVX_MODEL)");
	fclose(f);
	a_set = __real_calloc(LIVE_CAP, sizeof *a_set);
	if (a_set == NULL)
		tap_skip_all("no memory for the live-block set");
	snprintf(plan_path, sizeof plan_path, "%s/plans/"
	    "smollm2-135m-kvx-20.yaml", top ? top : ".");

	/* KVX_TEST_DEVICE=gpu runs the GPU paths alone (the CPU ones are
	 * make check's on every machine) */
	cpu_paths = getenv("KVX_TEST_DEVICE") == NULL ||
	    strcmp(getenv("KVX_TEST_DEVICE"), "gpu") != 0;
	if (cpu_paths) {
		path_make(&(struct maker){ "kvx_model_open", make_model,
		    free_model });
		path_make(&(struct maker){ "kvx_plan_load", make_plan,
		    free_plan });
	}

	if (kvx_model_open(model_path, NULL, &m) != KVX_OK ||
	    load_small(plan_path, &static_plan) != KVX_OK)
		tap_skip_all(kvx_errmsg());
	snprintf(plan_path, sizeof plan_path, "%s/plans/"
	    "smollm2-135m-kvx-hybrid-20.yaml", top ? top : ".");
	if (load_small(plan_path, &hybrid_plan) != KVX_OK)
		tap_skip_all(kvx_errmsg());
	if (kvx_tokenize(m, text, strlen(text), 0, ids, 512, &n_ids) !=
	    KVX_OK)
		tap_skip_all(kvx_errmsg());

	the_model = m;
	the_plan = static_plan;
	if (cpu_paths) {
		path_make(&(struct maker){ "kvx_ctx_new", make_ctx,
		    free_ctx });
		path_inference(m, NULL, "full cache");
		path_inference(m, static_plan, "static plan");
		path_inference(m, hybrid_plan, "hybrid plan");
	}

	if (gpu_usable(m)) {
		the_device = KVX_DEVICE_GPU;
		path_make(&(struct maker){ "kvx_ctx_new on the GPU", make_ctx,
		    free_ctx });
		path_inference(m, NULL, "GPU, full cache");
		path_inference(m, static_plan, "GPU, static plan");
		path_inference(m, hybrid_plan, "GPU, hybrid plan");
	} else
		diag("no GPU context: the device paths are not run");

	kvx_plan_free(&static_plan);
	kvx_plan_free(&hybrid_plan);
	kvx_model_close(&m);
	return tap_done();
}
