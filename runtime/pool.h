/*
 * pool.h - a small fixed thread pool: run one function on every worker and
 * wait for all of them.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_POOL_H
#define KVX_POOL_H

typedef struct kvx_pool kvx_pool;

/* fn(arg, ith, nth) runs once per thread, ith in [0, nth). */
typedef void	(*pool_fn)(void *arg, int ith, int nth);

kvx_pool	*pool_new(int n_threads);
void		 pool_free(kvx_pool **);
int		 pool_size(const kvx_pool *);
/* Runs fn on all threads (the caller is thread 0) and returns when all are
 * done. Not reentrant. */
void		 pool_run(kvx_pool *, pool_fn fn, void *arg);

/* Split [0, n) evenly: the range of part ith of nth. */
static inline void
pool_range(int n, int ith, int nth, int *lo, int *hi)
{
	int per = n / nth, rem = n % nth;

	*lo = ith * per + (ith < rem ? ith : rem);
	*hi = *lo + per + (ith < rem ? 1 : 0);
}

#endif
