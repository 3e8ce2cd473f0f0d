/*
 * arch.c - the table of supported architectures (see arch.h).  Each row
 * names the differences from llama that llama.cpp's graph for that
 * architecture has; everything else (RMSNorm before attention and the
 * MLP, an optional separate output matrix, RoPE base, head size and norm
 * epsilon from the GGUF metadata) is shared.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "arch.h"

static const arch_desc archs[] = {
	{ "llama", ROPE_PAIRS, 0, 0, 0, 0, 0, 0, 0.0f },
	/* Qwen2: Q/K/V biases, rotate-half RoPE (LLAMA_ROPE_TYPE_NEOX) */
	{ "qwen2", ROPE_HALVES, 1, 0, 0, 0, 0, 0, 0.0f },
	/* Gemma 3: per-head Q/K norms, norms after attention and the MLP,
	 * GELU, scaled embeddings, five local layers (RoPE base 10000) to
	 * each global one, as llama.cpp's gemma3 graph */
	{ "gemma3", ROPE_HALVES, 0, 1, 1, 1, 1, 6, 10000.0f },
};

/* Look an architecture up by its GGUF name. */
const arch_desc *
arch_find(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof archs / sizeof archs[0]; i++)
		if (strcmp(archs[i].name, name) == 0)
			return &archs[i];
	return NULL;
}

/* The table's names, comma separated, into buf (truncated to size). */
void
arch_names(char *buf, size_t size)
{
	size_t i, o = 0;

	if (size == 0)
		return;
	buf[0] = '\0';
	for (i = 0; i < sizeof archs / sizeof archs[0] && o < size; i++)
		o += (size_t)snprintf(buf + o, size - o, "%s%s",
		    i > 0 ? ", " : "", archs[i].name);
}
