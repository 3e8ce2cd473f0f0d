/*
 * fuzz-plan.c - libFuzzer harness for the plan loader.
 * SPDX-License-Identifier: MIT
 *
 * Anything may come in; nothing may crash or leak.  What loads must also
 * survive save-and-reload unchanged, and its token counts must stay
 * within [0, n].
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const int ns[] = { 1, 7, 100, 4096, 1 << 20 };
	kvx_plan *p, *q;
	char *a, *b;
	size_t la, lb;
	int l, h, i, t, hybrid;

	if (kvx_plan_load_mem((const char *)data, size, "fuzz", &p) != KVX_OK)
		return 0;
	if (plan_emit(p, &a, &la) != KVX_OK)
		abort();
	if (kvx_plan_load_mem(a, la, "emitted", &q) != KVX_OK)
		abort();
	if (plan_emit(q, &b, &lb) != KVX_OK || la != lb ||
	    memcmp(a, b, la) != 0)
		abort();
	hybrid = kvx_plan_get_mode(p) == KVX_PLAN_HYBRID;
	for (l = 0; l < p->n_layer; l++)
		for (h = hybrid ? -1 : 0; h < (hybrid ? 0 : p->n_head_kv); h++)
			for (i = 0; i < 5; i++) {
				t = plan_tokens(p, l, h, ns[i]);
				if (t < 0 || t > ns[i])
					abort();
			}
	free(a);
	free(b);
	kvx_plan_free(&p);
	kvx_plan_free(&q);
	return 0;
}
