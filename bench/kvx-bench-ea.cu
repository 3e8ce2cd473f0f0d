/*
 * kvx-bench-ea.cu - the scoring launches of one layer of one sequence at
 * the prefill's end, at the default model's shapes (9 query heads over 3
 * KV heads, d = 64, fp16 keys), for SnapKV (32 window queries' scores,
 * then pooling) and Expected Attention (statistics, then scores) with a
 * full covariance: from 128 queries, as the shipped plans, the covariance
 * formed and its rows dotted with each key; from 32, applied as the
 * centred queries themselves.
 * SPDX-License-Identifier: MIT
 *
 * usage: kvx-bench-ea [n ...]   (prompt lengths; default 2048 8192 32768)
 * Prints microseconds per layer and each Expected Attention path over
 * SnapKV's time in the same run.
 */
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_runtime.h>

#include "kvx_cuda.h"

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
	fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, \
	    cudaGetErrorString(e_)); exit(1); } } while (0)
#define KC(x) do { int r_ = (x); if (r_ != 0) { \
	fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, \
	    kvx_cuda_strerror(r_)); exit(1); } } while (0)

static const int H = 9, HKV = 3, G = 3, D = 64, W = 32, NQ = 128;
static const int REPS = 200;

/* Mean microseconds of REPS runs of f on stream st, after a warm-up. */
template <typename F>
static double
timed(cudaStream_t st, F f)
{
	cudaEvent_t a, b;
	float ms;
	int i;

	f();
	CK(cudaStreamSynchronize(st));
	CK(cudaEventCreate(&a));
	CK(cudaEventCreate(&b));
	CK(cudaEventRecord(a, st));
	for (i = 0; i < REPS; i++)
		f();
	CK(cudaEventRecord(b, st));
	CK(cudaEventSynchronize(b));
	CK(cudaEventElapsedTime(&ms, a, b));
	CK(cudaEventDestroy(a));
	CK(cudaEventDestroy(b));
	return 1000.0 * ms / REPS;
}

/* Random fp16 or float bits on the host, copied to a new device buffer. */
static void *
upload_f32(size_t n, float lo, float hi)
{
	std::vector<float> h(n);
	void *d;

	for (size_t i = 0; i < n; i++)
		h[i] = lo + (hi - lo) * (float)rand() / (float)RAND_MAX;
	KC(kvx_cuda_malloc(&d, n * sizeof(float)));
	KC(kvx_cuda_h2d(d, h.data(), n * sizeof(float)));
	return d;
}

static void
bench(int n, cudaStream_t st)
{
	size_t nk = (size_t)n * HKV * D, sb, eb;
	std::vector<unsigned short> kh(nk);
	std::vector<long long> koff(HKV), soff(HKV);
	std::vector<int> nn(HKV, n);
	void *k, *v, *q, *dkoff, *dsoff, *dn, *scr, *score, *pooled;
	void *mu, *cov, *u, *escr;
	double snap, full, wq;
	int s;

	/* fp16 values in [0.5, 1): exponent 14, random mantissa */
	for (size_t i = 0; i < nk; i++)
		kh[i] = (unsigned short)(0x3800 | (rand() & 0x3ff));
	KC(kvx_cuda_malloc(&k, nk * 2));
	KC(kvx_cuda_malloc(&v, nk * 2));
	KC(kvx_cuda_h2d(k, kh.data(), nk * 2));
	KC(kvx_cuda_h2d(v, kh.data(), nk * 2));
	q = upload_f32((size_t)NQ * H * D, -1.0f, 1.0f);
	for (s = 0; s < HKV; s++) {
		koff[s] = (long long)s * D;
		soff[s] = (long long)s * n;
	}
	KC(kvx_cuda_malloc(&dkoff, HKV * sizeof(long long)));
	KC(kvx_cuda_malloc(&dsoff, HKV * sizeof(long long)));
	KC(kvx_cuda_malloc(&dn, HKV * sizeof(int)));
	KC(kvx_cuda_h2d(dkoff, koff.data(), HKV * sizeof(long long)));
	KC(kvx_cuda_h2d(dsoff, soff.data(), HKV * sizeof(long long)));
	KC(kvx_cuda_h2d(dn, nn.data(), HKV * sizeof(int)));
	sb = kvx_cuda_score_scratch(HKV, G, W, n, 1);
	eb = kvx_cuda_ea_scratch(HKV, G, n);
	KC(kvx_cuda_malloc(&scr, sb));
	KC(kvx_cuda_malloc(&escr, eb));
	KC(kvx_cuda_malloc(&score, (size_t)HKV * n * sizeof(float)));
	KC(kvx_cuda_malloc(&pooled, (size_t)HKV * n * sizeof(float)));
	KC(kvx_cuda_malloc(&mu, (size_t)H * D * sizeof(float)));
	KC(kvx_cuda_malloc(&cov, (size_t)H * D * D * sizeof(float)));
	KC(kvx_cuda_malloc(&u, (size_t)H * NQ * D * sizeof(float)));

	snap = timed(st, [&] {
		KC(kvx_cuda_score_q((const float *)q + (size_t)(NQ - W) * H * D,
		    D, (long long)H * D, k,
		    KVX_CUDA_F16, (const long long *)dkoff, (const int *)dn,
		    HKV, n, G, W, D, HKV * D, 1.0f / sqrtf((float)D), 0,
		    (const long long *)dsoff, scr, sb, (float *)score, st));
		KC(kvx_cuda_pool((const float *)score, (const long long *)dsoff,
		    (const int *)dn, HKV, n, W, 7, 0, (float *)pooled, st));
	});
	full = timed(st, [&] {
		KC(kvx_cuda_ea_stats((const float *)q, D, (long long)H * D, H,
		    NQ, n - NQ, n, 512, 10000.0f, 0, D, 0, (float *)mu,
		    (float *)cov, (float *)u, st));
		KC(kvx_cuda_ea_score((const float *)mu, (const float *)cov, 0,
		    NULL, 0, k, v, KVX_CUDA_F16, HKV, n, n - W, 4, G, D,
		    HKV * D, 1, 0, escr, (float *)score, n, st));
	});
	wq = timed(st, [&] {
		KC(kvx_cuda_ea_stats((const float *)q + (size_t)(NQ - W) * H *
		    D, D, (long long)H * D, H, W, n - W, n, 512, 10000.0f, 0, D,
		    0, (float *)mu, NULL, (float *)u, st));
		KC(kvx_cuda_ea_score((const float *)mu, NULL, 0,
		    (const float *)u, W, k, v, KVX_CUDA_F16, HKV, n, n - W, 4,
		    G, D, HKV * D, 1, 0, escr, (float *)score, n, st));
	});
	printf("%6d  %8.1f  %8.1f  %8.1f  %6.2f  %6.2f\n", n, snap, full, wq,
	    full / snap, wq / snap);
	KC(kvx_cuda_sync());
	for (void *p : {k, v, q, dkoff, dsoff, dn, scr, escr, score, pooled,
	    mu, cov, u})
		KC(kvx_cuda_free(p));
}

int
main(int argc, char **argv)
{
	cudaStream_t st;
	cudaDeviceProp pr;
	int i;

	CK(cudaGetDeviceProperties(&pr, 0));
	CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
	printf("# %s; one layer of one sequence: 9 query heads over 3 KV "
	    "heads, d = 64, fp16 keys; microseconds, mean of %d\n", pr.name,
	    REPS);
	printf("# snapkv: 32 queries; ea-sigma: 128 queries, covariance "
	    "rows; ea-queries: 32 queries\n");
	printf("#    n   snapkv  ea-sigma  ea-queries  sigma/snap  "
	    "queries/snap\n");
	if (argc < 2) {
		bench(2048, st);
		bench(8192, st);
		bench(32768, st);
	}
	for (i = 1; i < argc; i++)
		bench(atoi(argv[i]), st);
	CK(cudaStreamDestroy(st));
	return 0;
}
