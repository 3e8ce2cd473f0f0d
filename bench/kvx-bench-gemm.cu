/*
 * kvx-bench-gemm.cu - the decode step's GEMMs (fp16 weights and inputs,
 * fp32 outputs, as runtime/gpu.c's gpu__gemm issues them) timed three
 * ways on the same buffers: cublasGemmEx with its default algorithm (what
 * the runtime runs), cublasLt's first heuristic pick, and the fastest of
 * cublasLt's heuristic candidates timed one by one.
 * SPDX-License-Identifier: MIT
 *
 * Each shape runs as one CUDA graph of NL products, each on its own copy
 * of the weights (NL layers' worth, more than the L2 holds), so that the
 * weights stream from memory as in a decode step; time a product = graph
 * time / NL, the median of 9 launches.
 *
 * usage: kvx-bench-gemm [E NQKV F V [T ...]]
 * (default: SmolLM2-135M's 576 960 1536 49152, and T = 22 88 211, the
 * full cache's and the 25% and 10% plans' batches at 4 GiB and 8K).
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define NL 30
#define REPS 9
#define MAXALGO 32
#define WS (32u << 20)

#define CK(x) do {							\
	cudaError_t e_ = (x);						\
	if (e_ != cudaSuccess) {					\
		fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__,	\
		    cudaGetErrorString(e_));				\
		exit(1);						\
	}								\
} while (0)
#define CB(x) do {							\
	cublasStatus_t b_ = (x);					\
	if (b_ != CUBLAS_STATUS_SUCCESS) {				\
		fprintf(stderr, "%s:%d: cublas status %d\n", __FILE__,	\
		    __LINE__, (int)b_);					\
		exit(1);						\
	}								\
} while (0)

static __global__ void
fill_h(__half *p, size_t n, unsigned seed)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	for (; i < n; i += (size_t)gridDim.x * blockDim.x) {
		unsigned x = (unsigned)i * 2654435761u ^ seed;

		x ^= x >> 13;
		x *= 0x5bd1e995u;
		p[i] = __float2half(((int)(x & 0xffff) - 32768) / 65536.0f);
	}
}

struct shape {
	const char	*name;
	int		 rows, cols;
	float		 beta;
};

struct bufs {
	__half	*w[NL], *x;
	float	*y;
};

/* Median time a product of the graph ge, in us. */
static double
time_graph(cudaGraphExec_t ge, cudaStream_t st)
{
	cudaEvent_t a, b;
	float ms[REPS];
	int i;

	CK(cudaEventCreate(&a));
	CK(cudaEventCreate(&b));
	CK(cudaGraphLaunch(ge, st));	/* warm */
	CK(cudaStreamSynchronize(st));
	for (i = 0; i < REPS; i++) {
		CK(cudaEventRecord(a, st));
		CK(cudaGraphLaunch(ge, st));
		CK(cudaEventRecord(b, st));
		CK(cudaEventSynchronize(b));
		CK(cudaEventElapsedTime(&ms[i], a, b));
	}
	std::sort(ms, ms + REPS);
	CK(cudaEventDestroy(a));
	CK(cudaEventDestroy(b));
	return ms[REPS / 2] * 1e3 / NL;
}

int
main(int argc, char **argv)
{
	int E = 576, NQKV = 960, F = 1536, V = 49152, i, k, a;
	std::vector<int> Ts = { 22, 88, 211 };
	cudaStream_t st;
	cublasHandle_t blas;
	cublasLtHandle_t lt;
	void *ws;

	if (argc >= 5) {
		E = atoi(argv[1]);
		NQKV = atoi(argv[2]);
		F = atoi(argv[3]);
		V = atoi(argv[4]);
		Ts.clear();
		for (i = 5; i < argc; i++)
			Ts.push_back(atoi(argv[i]));
		if (Ts.empty())
			Ts = { 22, 88, 211 };
	}
	if (argc != 1 && argc < 5) {
		fprintf(stderr, "usage: kvx-bench-gemm [E NQKV F V [T ...]]\n");
		return 2;
	}
	if (E < 1 || NQKV < 1 || F < 1 || V < 1) {
		fprintf(stderr, "kvx-bench-gemm: sizes must be positive\n");
		return 2;
	}
	for (int T : Ts)
		if (T < 1) {
			fprintf(stderr, "kvx-bench-gemm: T must be positive\n");
			return 2;
		}
	shape sh[] = {
		{ "QKV", NQKV, E, 0.0f },
		{ "out (+x)", E, E, 1.0f },
		{ "gate-up", 2 * F, E, 0.0f },
		{ "down (+x)", E, F, 1.0f },
		{ "LM head", V, E, 0.0f },
	};
	CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
	CB(cublasCreate(&blas));
	CB(cublasLtCreate(&lt));
	CK(cudaMalloc(&ws, WS));
	CB(cublasSetStream(blas, st));
	CB(cublasSetWorkspace(blas, ws, WS));
	printf("| shape | rows x cols | T | gemmEx us | Lt first us | Lt best us "
	    "| best of | GB/s (best) | gemmEx / best |\n");
	printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
	for (const shape &s : sh) {
		int maxT = *std::max_element(Ts.begin(), Ts.end());
		int nl = s.rows >= V ? 1 : NL;	/* one LM head a step */
		bufs b;

		for (k = 0; k < NL; k++) {
			b.w[k] = NULL;
			if (k >= nl)
				continue;
			CK(cudaMalloc(&b.w[k], (size_t)s.rows * s.cols * 2));
			fill_h<<<1024, 256>>>(b.w[k], (size_t)s.rows * s.cols,
			    17 + k);
		}
		CK(cudaMalloc(&b.x, (size_t)s.cols * maxT * 2));
		CK(cudaMalloc(&b.y, (size_t)s.rows * maxT * 4));
		fill_h<<<1024, 256>>>(b.x, (size_t)s.cols * maxT, 5);
		CK(cudaMemset(b.y, 0, (size_t)s.rows * maxT * 4));
		CK(cudaDeviceSynchronize());
		for (int T : Ts) {
			float one = 1.0f, beta = s.beta;
			cudaGraph_t gr;
			cudaGraphExec_t ge;
			double t_ex, t_first = 0, t_best = 1e30;
			int best = -1, nalg = 0;
			cublasLtMatmulDesc_t md;
			cublasLtMatrixLayout_t la, lb, lc;
			cublasLtMatmulPreference_t pref;
			cublasLtMatmulHeuristicResult_t hr[MAXALGO];
			cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
			size_t wsz = WS;

			/* the runtime's call */
			CK(cudaStreamBeginCapture(st,
			    cudaStreamCaptureModeThreadLocal));
			for (k = 0; k < nl; k++)
				CB(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N,
				    s.rows, T, s.cols, &one, b.w[k], CUDA_R_16F,
				    s.cols, b.x, CUDA_R_16F, s.cols, &beta, b.y,
				    CUDA_R_32F, s.rows, CUBLAS_COMPUTE_32F,
				    CUBLAS_GEMM_DEFAULT));
			CK(cudaStreamEndCapture(st, &gr));
			CK(cudaGraphInstantiate(&ge, gr, 0));
			t_ex = time_graph(ge, st) * NL / nl;
			CK(cudaGraphExecDestroy(ge));
			CK(cudaGraphDestroy(gr));

			/* cublasLt's candidates */
			CB(cublasLtMatmulDescCreate(&md, CUBLAS_COMPUTE_32F,
			    CUDA_R_32F));
			CB(cublasLtMatmulDescSetAttribute(md,
			    CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA));
			CB(cublasLtMatmulDescSetAttribute(md,
			    CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB));
			CB(cublasLtMatrixLayoutCreate(&la, CUDA_R_16F, s.cols,
			    s.rows, s.cols));
			CB(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16F, s.cols, T,
			    s.cols));
			CB(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, s.rows, T,
			    s.rows));
			CB(cublasLtMatmulPreferenceCreate(&pref));
			CB(cublasLtMatmulPreferenceSetAttribute(pref,
			    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz,
			    sizeof wsz));
			CB(cublasLtMatmulAlgoGetHeuristic(lt, md, la, lb, lc, lc,
			    pref, MAXALGO, hr, &nalg));
			for (a = 0; a < nalg; a++) {
				double t;

				if (hr[a].state != CUBLAS_STATUS_SUCCESS)
					continue;
				CK(cudaStreamBeginCapture(st,
				    cudaStreamCaptureModeThreadLocal));
				for (k = 0; k < nl; k++)
					CB(cublasLtMatmul(lt, md, &one, b.w[k], la,
					    b.x, lb, &beta, b.y, lc, b.y, lc,
					    &hr[a].algo, ws, WS, st));
				CK(cudaStreamEndCapture(st, &gr));
				CK(cudaGraphInstantiate(&ge, gr, 0));
				t = time_graph(ge, st) * NL / nl;
				CK(cudaGraphExecDestroy(ge));
				CK(cudaGraphDestroy(gr));
				if (a == 0)
					t_first = t;
				if (t < t_best) {
					t_best = t;
					best = a;
				}
			}
			printf("| %s | %d x %d | %d | %.2f | %.2f | %.2f | #%d of "
			    "%d | %.0f | %.2f |\n", s.name, s.rows, s.cols, T,
			    t_ex, t_first, t_best, best, nalg,
			    ((double)s.rows * s.cols * 2 + (double)s.cols * T *
			    2 + (double)s.rows * T * 4 * (beta != 0 ? 2 : 1)) /
			    (t_best * 1e3), t_ex / t_best);
			cublasLtMatmulPreferenceDestroy(pref);
			cublasLtMatrixLayoutDestroy(la);
			cublasLtMatrixLayoutDestroy(lb);
			cublasLtMatrixLayoutDestroy(lc);
			cublasLtMatmulDescDestroy(md);
		}
		for (k = 0; k < nl; k++)
			CK(cudaFree(b.w[k]));
		CK(cudaFree(b.x));
		CK(cudaFree(b.y));
	}
	return 0;
}
