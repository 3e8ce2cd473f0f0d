/*
 * device.cuh - what the kernel stages share: element loads, block-wide
 * reductions and the launch status.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_DEVICE_CUH
#define KVX_DEVICE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kvx_cuda.h"

#define LOG2E 1.4426950408889634f

/* Launch status: the launch error if any, else 0. */
static inline int
launched(void)
{
	cudaError_t e = cudaGetLastError();

	return e == cudaSuccess ? 0 : (int)e;
}

/* Element loads as float for the three storage types. */
static __device__ __forceinline__ float
ld(const float *p)
{
	return __ldg(p);
}

static __device__ __forceinline__ float
ld(const __half *p)
{
	return __half2float(*p);
}

static __device__ __forceinline__ float
ld(const __nv_bfloat16 *p)
{
	return __bfloat162float(*p);
}

/* Eight elements of a 16-byte chunk of fp16 or bf16 as floats. */
static __device__ __forceinline__ void
unpack8(uint4 u, float *f, const __half *)
{
	const __half2 *h = (const __half2 *)&u;
	int i;

	for (i = 0; i < 4; i++) {
		float2 x = __half22float2(h[i]);

		f[2 * i] = x.x;
		f[2 * i + 1] = x.y;
	}
}

static __device__ __forceinline__ void
unpack8(uint4 u, float *f, const __nv_bfloat16 *)
{
	const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
	int i;

	for (i = 0; i < 4; i++) {
		float2 x = __bfloat1622float2(h[i]);

		f[2 * i] = x.x;
		f[2 * i + 1] = x.y;
	}
}

/* Block-wide max and sum (blockDim.x a multiple of 32, <= 1024). */
static __device__ __forceinline__ float
block_max(float v, float *sh)
{
	int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
	int nw = blockDim.x >> 5, o;

	for (o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	__syncthreads();
	if (lane == 0)
		sh[wid] = v;
	__syncthreads();
	v = lane < nw ? sh[lane] : -INFINITY;
	for (o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

static __device__ __forceinline__ float
block_sum(float v, float *sh)
{
	int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
	int nw = blockDim.x >> 5, o;

	for (o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	__syncthreads();
	if (lane == 0)
		sh[wid] = v;
	__syncthreads();
	v = lane < nw ? sh[lane] : 0.0f;
	for (o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}


#endif
