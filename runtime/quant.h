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
 * Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K have AVX2 kernels, and Q5_0,
 * Q8_0, Q4_K and Q6_K AVX-512 ones where the processor has it; every
 * other type quant_dequant handles goes through quant_matvec_f32_ref.
 */
void		 quant_matvec_f32(int wtype, const void *w, int cols, int r0,
		     int r1, const float *x, float *y);
/*
 * The same product, the scalar twin of those kernels: each row
 * dequantised 256 weights at a time and summed in double.
 */
void		 quant_matvec_f32_ref(int wtype, const void *w, int cols,
		     int r0, int r1, const float *x, float *y);
/* Tests and benchmarks: 0 keeps quant_matvec_f32 to its AVX2 kernels, 1
 * lets it take the AVX-512 ones where the processor has them (the
 * default); returns 1 when they run. */
int		 quant_use_avx512(int on);

#endif
