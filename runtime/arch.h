/*
 * arch.h - what sets each supported architecture apart from the shared
 * forward pass: tensors it has, how RoPE pairs its dimensions, its
 * activation, norms and sliding-window layers.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_ARCH_H
#define KVX_ARCH_H

#include <stddef.h>

/* How RoPE pairs a head's dimensions. */
enum arch_rope {
	ROPE_PAIRS,	/* (2i, 2i+1): llama, whose GGUF converter permutes
			   the Q and K rows into this layout */
	ROPE_HALVES	/* (i, i + d/2), rotate-half ("NEOX" in llama.cpp):
			   qwen2 and gemma3, whose rows are stored as
			   trained */
};

typedef struct arch_desc {
	const char	*name;		/* general.architecture */
	enum arch_rope	 rope;
	int		 qkv_bias;	/* blk.N.attn_{q,k,v}.bias present */
	int		 qk_norm;	/* blk.N.attn_{q,k}_norm: RMSNorm of
					   each query and key head */
	int		 post_norms;	/* blk.N.post_attention_norm and
					   post_ffw_norm on each block's output
					   before the residual add */
	int		 gelu;		/* GELU (tanh) gate, not SiLU */
	int		 embd_scale;	/* embeddings times sqrt(n_embd) */
	int		 swa_period;	/* with a sliding window
					   (<arch>.attention.sliding_window),
					   layer l is global when (l + 1) %
					   swa_period == 0, else local */
	float		 swa_theta;	/* RoPE base of the local layers */
} arch_desc;

/* The description of architecture name, or NULL when kvx does not run it. */
const arch_desc	*arch_find(const char *name);
/* The supported names, comma separated, for error messages. */
void		 arch_names(char *buf, size_t size);

#endif
