/*
 * kvx-bench-streams.cu - does a CUDA graph of small kernels run slower on
 * a process's later streams than on its first ones?
 * SPDX-License-Identifier: MIT
 *
 * kvx-bench-e2e found a context's decode step ~0.1 ms slower when the
 * context is not the first in its process (the gaps between the step's
 * kernels grow from ~0.1 to ~0.45 us).  This reduces it to CUDA and
 * cuBLAS alone: each of the trials makes a stream (and, unless -n, a
 * cuBLAS handle on it that runs one GEMM outside the graph), captures a
 * graph of 300 launches of a trivial kernel (132 blocks of 256 threads,
 * 1 MB touched), and times 50 launches of it; then frees everything.
 *
 * Measured on an H200 (driver 580.159.04, CUDA 13.0): from the fourth
 * trial on, every kernel of the graph takes ~0.18 us longer (1.05 ->
 * 1.22 us) when each trial makes a new stream, whatever the handle and
 * buffers do (-r, -a, -r -a); with one stream for every trial (-s) the
 * eighth runs as fast as the first; without cuBLAS (-n) the slowdown
 * comes at the eighth new stream instead of the fourth.  libkvx keeps
 * freed contexts' streams for this reason (runtime/gpu.c).
 *
 * usage: kvx-bench-streams [-t trials] [-n] [-r] [-s] [-a] [-m]
 *   -n: no cuBLAS at all;  -r: one cuBLAS handle for every trial;
 *   -s: one stream for every trial;  -a: the buffers allocated once;
 *   -m: the buffers cleared with cudaMemset (the legacy default
 *   stream) instead of cudaMemsetAsync on the trial's stream
 * Prints each trial's time for one graph and its ratio to trial 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#define NK	300
#define N	(1 << 18)

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
	fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, \
	    cudaGetErrorString(e_)); exit(1); } } while (0)
#define CB(x) do { if ((x) != CUBLAS_STATUS_SUCCESS) { \
	fprintf(stderr, "%s:%d: cuBLAS call failed\n", __FILE__, \
	    __LINE__); exit(1); } } while (0)

__global__ void
tiny_k(float *x, int n)
{
	int i = blockIdx.x * blockDim.x + threadIdx.x;

	if (i < n)
		x[i] = x[i] * 0.999f + 1.0f;
}

/* One trial: us a graph of NK kernels on a fresh stream. */
static float *bx, *ba, *bc;	/* with -a: the buffers, kept */

static double
trial(int blas, cublasHandle_t *keep, cudaStream_t *one_s, int once,
    int legacy)
{
	const float one = 1.0f, zero = 0.0f;
	cudaStream_t s;
	cublasHandle_t h = NULL;
	cudaGraph_t gr;
	cudaGraphExec_t gx;
	cudaEvent_t e0, e1;
	float *x, *a, *c, ms;
	int i;

	if (one_s != NULL && *one_s != NULL)
		s = *one_s;
	else
		CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
	if (one_s != NULL)
		*one_s = s;
	if (!once || bx == NULL) {
		CK(cudaMalloc(&x, N * sizeof(float)));
		CK(cudaMalloc(&a, 576 * 576 * sizeof(float)));
		CK(cudaMalloc(&c, 576 * 88 * sizeof(float)));
	} else {
		x = bx;
		a = ba;
		c = bc;
	}
	if (once) {
		bx = x;
		ba = a;
		bc = c;
	}
	if (legacy) {
		CK(cudaMemset(x, 0, N * sizeof(float)));
		CK(cudaMemset(a, 0, 576 * 576 * sizeof(float)));
	} else {
		CK(cudaMemsetAsync(x, 0, N * sizeof(float), s));
		CK(cudaMemsetAsync(a, 0, 576 * 576 * sizeof(float), s));
	}
	if (blas) {
		if (keep != NULL && *keep != NULL)
			h = *keep;
		else
			CB(cublasCreate(&h));
		if (keep != NULL)
			*keep = h;
		CB(cublasSetStream(h, s));
		CB(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 576, 88, 576, &one,
		    a, 576, a, 576, &zero, c, 576));
	}
	CK(cudaStreamSynchronize(s));
	CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
	for (i = 0; i < NK; i++)
		tiny_k<<<132, 256, 0, s>>>(x, N);
	CK(cudaStreamEndCapture(s, &gr));
	CK(cudaGraphInstantiate(&gx, gr, 0));
	CK(cudaEventCreate(&e0));
	CK(cudaEventCreate(&e1));
	for (i = 0; i < 5; i++)
		CK(cudaGraphLaunch(gx, s));
	CK(cudaEventRecord(e0, s));
	for (i = 0; i < 50; i++)
		CK(cudaGraphLaunch(gx, s));
	CK(cudaEventRecord(e1, s));
	CK(cudaEventSynchronize(e1));
	CK(cudaEventElapsedTime(&ms, e0, e1));
	CK(cudaEventDestroy(e0));
	CK(cudaEventDestroy(e1));
	CK(cudaGraphExecDestroy(gx));
	CK(cudaGraphDestroy(gr));
	if (h != NULL && keep == NULL)
		CB(cublasDestroy(h));
	if (one_s == NULL)
		CK(cudaStreamDestroy(s));
	if (!once) {
		CK(cudaFree(x));
		CK(cudaFree(a));
		CK(cudaFree(c));
	}
	return ms * 1e3 / 50;
}

int
main(int argc, char **argv)
{
	int trials = 8, blas = 1, reuse = 0, one = 0, once = 0, legacy = 0;
	int c, t;
	cublasHandle_t h = NULL;
	cudaStream_t s = NULL;
	double t0 = 0;

	while ((c = getopt(argc, argv, "t:nrsam")) != -1)
		switch (c) {
		case 't': trials = atoi(optarg); break;
		case 'n': blas = 0; break;
		case 'r': reuse = 1; break;
		case 's': one = 1; break;
		case 'a': once = 1; break;
		case 'm': legacy = 1; break;
		default:
			fprintf(stderr, "usage: kvx-bench-streams [-t trials] "
			    "[-n] [-r] [-s] [-a] [-m]\n");
			return 2;
		}
	if (trials < 1) {
		fprintf(stderr, "kvx-bench-streams: -t must be positive\n");
		return 2;
	}
	if (cudaFree(0) != cudaSuccess) {
		fprintf(stderr, "kvx-bench-streams: no CUDA device\n");
		return 77;
	}
	printf("%d kernels a graph, %s, %s, %s; %s\n", NK, one ?
	    "one stream" : "a new stream a trial", once ?
	    "buffers allocated once" : "new buffers a trial", legacy ?
	    "cleared on the legacy stream" : "cleared on the trial's stream",
	    !blas ? "no cuBLAS" : reuse ?
	    "one cuBLAS handle, a GEMM a trial" :
	    "a new cuBLAS handle and a GEMM a trial");
	for (t = 0; t < trials; t++) {
		double us = trial(blas, reuse ? &h : NULL, one ? &s : NULL,
		    once, legacy);

		if (t == 0)
			t0 = us;
		printf("trial %d: %.1f us a graph (%.3f us a kernel), %.3f of "
		    "trial 0\n", t, us, us / NK, us / t0);
	}
	if (h != NULL)
		cublasDestroy(h);
	if (s != NULL)
		cudaStreamDestroy(s);
	if (bx != NULL) {
		cudaFree(bx);
		cudaFree(ba);
		cudaFree(bc);
	}
	return 0;
}
