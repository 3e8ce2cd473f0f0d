/*
 * fuzz-gguf.c - libFuzzer harness for the GGUF reader.
 * SPDX-License-Identifier: MIT
 *
 * tests/test-fuzz.sh builds it with clang (-fsanitize=fuzzer,address,
 * undefined) and runs it from the seed corpus during make check.
 *
 * The seeds are the synthetic files of tests/test-gguf.c, written with
 * "tests/test-gguf --write-seeds tests/fuzz/gguf-seed".
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

static volatile uint64_t sink;

/* Touches every byte a successful parse hands out, so that ASan sees it. */
static void
walk(const gguf_file *f)
{
	const gguf_kv *kv;
	const gguf_tensor *t;
	uint64_t i, k, h = 0;
	uint32_t u;
	float x;
	char buf[32];

	for (i = 0; i < f->n_kv; i++) {
		kv = &f->kv[i];
		if (kv->key.len > 0)
			h += (uint8_t)kv->key.p[kv->key.len - 1];
		if (kv->type == GGUF_STR && kv->v.s.len > 0)
			h += (uint8_t)kv->v.s.p[kv->v.s.len - 1];
		if (kv->strs != NULL)
			for (k = 0; k < kv->n; k++)
				if (kv->strs[k].len > 0)
					h += (uint8_t)kv->strs[k].p[
					    kv->strs[k].len - 1];
		if (kv->type == GGUF_ARR && kv->arr_type != GGUF_STR &&
		    kv->n > 0)
			h += kv->data[0];
		if (kv->key.len < sizeof buf) {
			memcpy(buf, kv->key.p, kv->key.len);
			buf[kv->key.len] = '\0';
			h += gguf_find(f, buf) != NULL;
			h += gguf_get_u32(f, buf, &u) == KVX_OK;
			h += gguf_get_f32(f, buf, &x) == KVX_OK;
			h += gguf_get_str(f, buf, buf, sizeof buf) == KVX_OK;
		}
	}
	for (i = 0; i < f->n_tensors; i++) {
		t = &f->tensors[i];
		if (t->nbytes > 0)
			h += ((const uint8_t *)t->data)[0] +
			    ((const uint8_t *)t->data)[t->nbytes - 1];
		if (t->name.len < sizeof buf) {
			memcpy(buf, t->name.p, t->name.len);
			buf[t->name.len] = '\0';
			h += gguf_tensor_find(f, buf) != NULL;
		}
	}
	sink = h;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	gguf_file *f = NULL;
	uint8_t *copy;

	/* An exact-size heap copy, so that reading one byte past is caught. */
	if ((copy = malloc(size ? size : 1)) == NULL)
		return 0;
	memcpy(copy, data, size);
	if (gguf_open_mem(copy, size, &f) == KVX_OK)
		walk(f);
	gguf_close(&f);
	free(copy);
	return 0;
}
