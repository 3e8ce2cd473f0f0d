/*
 * kvzip.h - KVzip (arXiv 2505.23416): each prompt token is scored by the
 * largest attention it receives while the model, asked to repeat the
 * context, reconstructs it chunk by chunk over the full prefilled cache.
 * SPDX-License-Identifier: MIT
 *
 * The repeat pass runs, for each chunk of at most kz_chunk context tokens,
 * a request ("Repeat the previous context exactly.", in the model's chat
 * template for prompt chat) followed by the chunk itself, at the positions
 * after the prompt.  The queries of the chunk's tokens score the prompt's
 * keys; the pass's own keys and values are dropped afterwards.
 */
#ifndef KVX_KVZIP_H
#define KVX_KVZIP_H

#include <stdint.h>

#include "kvx.h"
#include "kvcache.h"
#include "model.h"
#include "plan.h"
#include "pool.h"

/* Tokens of the previous chunk that the request of a later chunk quotes
 * ("starting with" them), as KVzip does. */
#define KVZIP_QUOTE 8

/* The token ids that come before each chunk. */
typedef struct kvzip_req {
	int32_t		*first;		/* the whole request of chunk 0 */
	int		 n_first;
	int32_t		*head;		/* a later chunk's request up to the
					   quote of the previous chunk */
	int		 n_head;
	int32_t		*tail;		/* and after the quote */
	int		 n_tail;
} kvzip_req;

/* Build the requests for prompt kind (enum plan_kvzip_prompt); chat falls
 * back to plain for a model without a ChatML template. */
kvx_status	 kvzip_req_new(const kvx_model *, int prompt, kvzip_req *);
void		 kvzip_req_free(kvzip_req *);
/* Most tokens one repeat batch holds: a request and a chunk. */
int		 kvzip_batch_max(const kvzip_req *, int chunk);

/*
 * Max-merge into score[t], t in [0, n), the softmax attention that each of
 * the g query heads' w queries (q: g x w x d) gives key t, where the
 * queries sit at the last w of the m rows of k (m x d): query j is at row
 * m - w + j and sees the rows up to its own, and only the last win of
 * them when win > 0 (a sliding-window layer).  scale is 1/sqrt(d).  tmp
 * holds w * m floats.  Needs n <= m - w.
 */
void		 kvzip_score(const float *q, const float *k, int m, int n,
		     int w, int g, int d, int win, float scale, float *tmp,
		     float *score);

/*
 * The repeat pass over sequence seq of kv, which holds the n prompt tokens
 * ids uncompressed in every layer (a sliding-window layer may hold only
 * its last sel_window_rows): score receives n_layer x n_head_kv x n
 * floats, each key's largest attention from any chunk query of its KV
 * head's group, by row of the layer (a layer with fewer rows fills the
 * first of its n).  The pass's rows are removed again, so kv holds what
 * it held.  It runs on pool with a scratch of its own.
 */
kvx_status	 kvzip_pass(kvx_model *, kv_cache *kv, kvx_pool *pool,
		     const kvx_plan *, int seq, const int32_t *ids, int n,
		     float *score);

#endif
