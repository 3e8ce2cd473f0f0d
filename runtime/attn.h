/*
 * attn.h - CPU reference attention over one ragged KV segment; the twin of
 * the CUDA decode-attention kernel.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_ATTN_H
#define KVX_ATTN_H

#include <stddef.h>

/*
 * Attention of the g query heads of one GQA group over one KV head's
 * segment: q is g x d, k and v hold len rows of d floats at a stride of
 * ld floats, out is g x d.  Softmax of (q . k) * scale over all len rows
 * (the caller passes only rows the queries may see).  scratch holds at
 * least g * len floats.
 */
void		 attn_gqa(const float *q, int g, int d, const float *k,
		     const float *v, int len, size_t ld, float scale,
		     float *scratch, float *out);

/*
 * Split-K form: the same over rows [r0, r1), leaving per query head the
 * running max m[g], the sum of exponentials l[g] and the unnormalised
 * output acc[g x d].  attn_combine merges n such partials into out.
 */
void		 attn_gqa_partial(const float *q, int g, int d, const float *k,
		     const float *v, int r0, int r1, size_t ld, float scale,
		     float *scratch, float *m, float *l, float *acc);
void		 attn_combine(int n, int g, int d, const float *m,
		     const float *l, const float *acc, float *out);

#endif
