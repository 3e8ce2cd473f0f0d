/*
 * quant.h - dequantisation and quantised dot products for ggml block types.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_QUANT_H
#define KVX_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "kvx.h"

/* Dequantise n elements (a multiple of the block size) of type to f32. */
kvx_status	 quant_dequant(int type, const void *src, float *dst, size_t n);
/* 1 if quant_dequant handles type. */
int		 quant_supported(int type);

/*
 * Matrix-vector product with a quantised weight matrix W of rows x cols
 * (row-major as stored in GGUF: ne[0] = cols contiguous) and an f32
 * activation x (no rounding of x):
 *   y[r] = sum_c W[r][c] * x[c]   for r in [r0, r1), indexed from y[0].
 * Q4_0, Q4_1 and Q8_0 have AVX2 kernels; every other type quant_dequant
 * handles is expanded a block at a time.
 */
void		 quant_matvec_f32(int wtype, const void *w, int cols, int r0,
		     int r1, const float *x, float *y);

#endif
