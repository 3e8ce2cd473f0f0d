/*
 * memory.cu - device discovery, memory and copies for the tests and the
 * benchmarks.
 * SPDX-License-Identifier: MIT
 */
#include "device.cuh"

/* Whether a device is there; clears the error of asking when none is. */
extern "C" int
kvx_cuda_available(void)
{
	int n = 0;

	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		cudaGetLastError();
		return 0;
	}
	return n > 0;
}

/* Message of a code from these calls. */
extern "C" const char *
kvx_cuda_strerror(int code)
{
	if (code == KVX_CUDA_EINVAL)
		return "invalid argument";
	return cudaGetErrorString((cudaError_t)code);
}

/* Device allocation. */
extern "C" int
kvx_cuda_malloc(void **p, size_t bytes)
{
	return (int)cudaMalloc(p, bytes);
}

/* Device release. */
extern "C" int
kvx_cuda_free(void *p)
{
	return (int)cudaFree(p);
}

/* Synchronous copy to the device. */
extern "C" int
kvx_cuda_h2d(void *dst, const void *src, size_t bytes)
{
	return (int)cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
}

/* Synchronous copy from the device. */
extern "C" int
kvx_cuda_d2h(void *dst, const void *src, size_t bytes)
{
	return (int)cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
}

/* Synchronous fill of device memory. */
extern "C" int
kvx_cuda_memset(void *p, int byte, size_t bytes)
{
	return (int)cudaMemset(p, byte, bytes);
}

/* Wait for the whole device (tests and benchmarks only). */
extern "C" int
kvx_cuda_sync(void)
{
	return (int)cudaDeviceSynchronize();
}

/* Multiprocessors of the calling thread's device. */
extern "C" int
kvx_cuda_sm_count(void)
{
	int dev, n;

	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) !=
	    cudaSuccess)
		return 0;
	return n;
}

