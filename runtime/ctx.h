/*
 * ctx.h - private view of a context, for tests and tools.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_CTX_H
#define KVX_CTX_H

#include "kvx.h"
#include "kvcache.h"

struct gpu_ctx;

const kv_cache	*ctx_kv(const kvx_ctx *);
/* The GPU back end's state of a GPU context, NULL for a CPU one. */
struct gpu_ctx	*ctx_gpu(const kvx_ctx *);
const kvx_plan	*ctx_plan(const kvx_ctx *);

#endif
