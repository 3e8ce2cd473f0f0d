/*
 * pool.c - fixed thread pool.  A decode step issues a few hundred small
 * jobs, so workers spin briefly on a generation counter before sleeping on
 * a condition variable: a wake-up through the kernel on every job would
 * cost more than the job.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#include "pool.h"

#define SPIN_ITERS 200000

struct kvx_pool {
	int		 n;
	pthread_t	*th;
	pthread_mutex_t	 mu;
	pthread_cond_t	 go;
	atomic_uint	 gen;
	atomic_int	 pending;
	atomic_int	 quit;
	pool_fn		 fn;
	void		*arg;
};

struct worker_arg {
	kvx_pool	*p;
	int		 ith;
};

/* Wait until the generation moves past seen; 0 when asked to quit. */
static int
wait_job(kvx_pool *p, unsigned seen)
{
	int i;

	for (i = 0; i < SPIN_ITERS; i++) {
		if (atomic_load_explicit(&p->gen, memory_order_acquire) != seen)
			return 1;
		if (atomic_load(&p->quit))
			return 0;
		/* on an oversubscribed machine, let the thread we wait for run */
		if ((i & 1023) == 1023)
			sched_yield();
		else
			cpu_relax();
	}
	pthread_mutex_lock(&p->mu);
	while (atomic_load(&p->gen) == seen && !atomic_load(&p->quit))
		pthread_cond_wait(&p->go, &p->mu);
	pthread_mutex_unlock(&p->mu);
	return !atomic_load(&p->quit);
}

/* Worker loop: wait for a new generation, run, report. */
static void *
worker(void *varg)
{
	struct worker_arg *wa = varg;
	kvx_pool *p = wa->p;
	int ith = wa->ith;
	unsigned seen = 0;

	free(wa);
	while (wait_job(p, seen)) {
		seen = atomic_load_explicit(&p->gen, memory_order_acquire);
		p->fn(p->arg, ith, p->n);
		atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
	}
	return NULL;
}

kvx_pool *
pool_new(int n)
{
	kvx_pool *p;
	int i;

	if (n < 1)
		n = 1;
	if ((p = calloc(1, sizeof *p)) == NULL)
		return NULL;
	p->n = n;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	if ((p->th = calloc((size_t)n, sizeof *p->th)) == NULL) {
		free(p);
		return NULL;
	}
	for (i = 1; i < n; i++) {
		struct worker_arg *wa = malloc(sizeof *wa);

		if (wa == NULL)
			break;
		wa->p = p;
		wa->ith = i;
		if (pthread_create(&p->th[i], NULL, worker, wa) != 0) {
			free(wa);
			break;
		}
	}
	/* run with the threads that did start */
	p->n = i;
	return p;
}

void
pool_free(kvx_pool **pp)
{
	kvx_pool *p = *pp;
	int i;

	if (p == NULL)
		return;
	pthread_mutex_lock(&p->mu);
	atomic_store(&p->quit, 1);
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (i = 1; i < p->n; i++)
		pthread_join(p->th[i], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->go);
	free(p->th);
	free(p);
	*pp = NULL;
}

int
pool_size(const kvx_pool *p)
{
	return p->n;
}

void
pool_run(kvx_pool *p, pool_fn fn, void *arg)
{
	int i;

	if (p->n == 1) {
		fn(arg, 0, 1);
		return;
	}
	p->fn = fn;
	p->arg = arg;
	atomic_store(&p->pending, p->n - 1);
	pthread_mutex_lock(&p->mu);
	atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);

	fn(arg, 0, p->n);

	for (i = 1; atomic_load_explicit(&p->pending, memory_order_acquire) > 0;
	    i++) {
		if ((i & 1023) == 0)
			sched_yield();
		else
			cpu_relax();
	}
}
