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
 * The second table takes the statistics of every prompt query
 * (expected_attention.queries: all, the default): the moments' sums,
 * carried to the mean and covariance, then the scores with the
 * covariance's rows, each timed alone, and their total over SnapKV's.
 *
 * usage: kvx-bench-ea [-M smollm2 | qwen | gemma] [n ...]
 *   (prompt lengths; default 2048 8192 32768).  -M takes the shapes of
 *   SmolLM2-135M (9 query heads over 3, d = 64; the default), Qwen2.5
 *   0.5B (14 over 2, d = 64) or Gemma 3 270M (4 over 1, d = 256).
 * Prints microseconds per layer and each Expected Attention path over
 * SnapKV's time in the same run.
 */
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cuda_runtime.h>

#include "kvx_cuda.h"

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
	fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, \
	    cudaGetErrorString(e_)); exit(1); } } while (0)
#define KC(x) do { int r_ = (x); if (r_ != 0) { \
	fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, \
	    kvx_cuda_strerror(r_)); exit(1); } } while (0)

static int H = 9, HKV = 3, G = 3, D = 64;
static const int W = 32, NQ = 128;
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

/* SnapKV's scoring and pooling of one layer, KV heads' keys at k. */
static double
snapkv(int n, const void *q, const void *k, cudaStream_t st)
{
	std::vector<long long> koff(HKV), soff(HKV);
	std::vector<int> nn(HKV, n);
	void *dkoff, *dsoff, *dn, *scr, *score, *pooled;
	size_t sb = kvx_cuda_score_scratch(HKV, G, W, n, 1);
	double us;
	int s;

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
	KC(kvx_cuda_malloc(&scr, sb));
	KC(kvx_cuda_malloc(&score, (size_t)HKV * n * sizeof(float)));
	KC(kvx_cuda_malloc(&pooled, (size_t)HKV * n * sizeof(float)));
	us = timed(st, [&] {
		KC(kvx_cuda_score_q((const float *)q, D, (long long)H * D, k,
		    KVX_CUDA_F16, (const long long *)dkoff, (const int *)dn,
		    HKV, n, G, W, D, HKV * D, 1.0f / sqrtf((float)D), 0,
		    (const long long *)dsoff, scr, sb, (float *)score, st));
		KC(kvx_cuda_pool((const float *)score, (const long long *)dsoff,
		    (const int *)dn, HKV, n, W, 7, 0, (float *)pooled, st));
	});
	KC(kvx_cuda_sync());
	for (void *p : {dkoff, dsoff, dn, scr, score, pooled})
		KC(kvx_cuda_free(p));
	return us;
}

/* Random fp16 keys in [0.5, 1) for n tokens of the KV heads, on the
 * device. */
static void *
upload_keys(int n)
{
	size_t nk = (size_t)n * HKV * D;
	std::vector<unsigned short> kh(nk);
	void *k;

	/* fp16 values in [0.5, 1): exponent 14, random mantissa */
	for (size_t i = 0; i < nk; i++)
		kh[i] = (unsigned short)(0x3800 | (rand() & 0x3ff));
	KC(kvx_cuda_malloc(&k, nk * 2));
	KC(kvx_cuda_h2d(k, kh.data(), nk * 2));
	return k;
}

/*
 * Expected Attention from every one of the n prompt queries, a full
 * covariance: the moments' sums, their carry to the statistics, the
 * scores (the covariance's quadratic forms, the normalisation, the
 * group's reduction and the value norms), then the three together.
 */
static void
bench_all(int n, cudaStream_t st)
{
	void *k = upload_keys(n), *v = upload_keys(n);
	void *q = upload_f32((size_t)n * H * D, -1.0f, 1.0f);
	void *mu, *cov, *acc, *escr, *score;
	size_t ab = kvx_cuda_ea_stats_scratch(H, n, D);
	double snap, mom, car, sco, all;

	KC(kvx_cuda_malloc(&mu, (size_t)H * D * sizeof(float)));
	KC(kvx_cuda_malloc(&cov, (size_t)H * D * D * sizeof(float)));
	KC(kvx_cuda_malloc(&acc, ab));
	KC(kvx_cuda_malloc(&escr, kvx_cuda_ea_scratch(HKV, G, n, D)));
	KC(kvx_cuda_malloc(&score, (size_t)HKV * n * sizeof(float)));
	snap = snapkv(n, (const float *)q + (size_t)(n - W) * H * D, k, st);
	mom = timed(st, [&] {
		KC(kvx_cuda_ea_moments((const float *)q, D, (long long)H * D,
		    H, n, 0, 10000.0f, 0, D, 0, (double *)acc, st));
	});
	car = timed(st, [&] {
		KC(kvx_cuda_ea_carry((const double *)acc, H, n, n, 512,
		    10000.0f, 0, D, 0, (float *)mu, (float *)cov, st));
	});
	sco = timed(st, [&] {
		KC(kvx_cuda_ea_score((const float *)mu, (const float *)cov, 0,
		    NULL, 0, k, v, KVX_CUDA_F16, HKV, n, n - W, 4, G, D,
		    HKV * D, 1, 0, escr, (float *)score, n, st));
	});
	all = timed(st, [&] {
		KC(kvx_cuda_ea_stats((const float *)q, D, (long long)H * D, H,
		    n, 0, n, 512, 10000.0f, 0, D, 0, (float *)mu, (float *)cov,
		    (float *)acc, st));
		KC(kvx_cuda_ea_score((const float *)mu, (const float *)cov, 0,
		    NULL, 0, k, v, KVX_CUDA_F16, HKV, n, n - W, 4, G, D,
		    HKV * D, 1, 0, escr, (float *)score, n, st));
	});
	printf("%6d  %8.1f  %8.1f  %8.1f  %8.1f  %8.1f  %6.2f\n", n, snap, mom,
	    car, sco, all, all / snap);
	KC(kvx_cuda_sync());
	for (void *p : {k, v, q, mu, cov, acc, escr, score})
		KC(kvx_cuda_free(p));
}

static void
bench(int n, cudaStream_t st)
{
	void *k = upload_keys(n), *v = upload_keys(n);
	void *q = upload_f32((size_t)NQ * H * D, -1.0f, 1.0f);
	void *mu, *cov, *u, *escr, *score;
	double snap, full, wq;

	KC(kvx_cuda_malloc(&escr, kvx_cuda_ea_scratch(HKV, G, n, D)));
	KC(kvx_cuda_malloc(&score, (size_t)HKV * n * sizeof(float)));
	KC(kvx_cuda_malloc(&mu, (size_t)H * D * sizeof(float)));
	KC(kvx_cuda_malloc(&cov, (size_t)H * D * D * sizeof(float)));
	KC(kvx_cuda_malloc(&u, (size_t)H * NQ * D * sizeof(float)));
	snap = snapkv(n, (const float *)q + (size_t)(NQ - W) * H * D, k, st);
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
	for (void *p : {k, v, q, escr, score, mu, cov, u})
		KC(kvx_cuda_free(p));
}

/* The prompt lengths of the command line from argument i, or the
 * default ones. */
static std::vector<int>
lengths(int argc, char **argv, int i)
{
	std::vector<int> ns;

	for (; i < argc; i++) {
		if (atoi(argv[i]) < 2 * NQ) {
			fprintf(stderr, "kvx-bench-ea: bad prompt length: %s\n",
			    argv[i]);
			exit(2);
		}
		ns.push_back(atoi(argv[i]));
	}
	if (ns.empty())
		ns = {2048, 8192, 32768};
	return ns;
}

int
main(int argc, char **argv)
{
	cudaStream_t st;
	cudaDeviceProp pr;
	const char *model = "smollm2";
	int i = 1;

	if (argc > 2 && strcmp(argv[1], "-M") == 0) {
		model = argv[2];
		i = 3;
	}
	if (strcmp(model, "qwen") == 0) {
		H = 14;
		HKV = 2;
		D = 64;
	} else if (strcmp(model, "gemma") == 0) {
		H = 4;
		HKV = 1;
		D = 256;
	} else if (strcmp(model, "smollm2") != 0) {
		fprintf(stderr, "usage: kvx-bench-ea [-M smollm2 | qwen | "
		    "gemma] [n ...]\n");
		return 2;
	}
	G = H / HKV;
	std::vector<int> ns = lengths(argc, argv, i);

	CK(cudaGetDeviceProperties(&pr, 0));
	CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
	printf("# %s; one layer of one sequence: %d query heads over %d KV "
	    "heads, d = %d, fp16 keys; microseconds, mean of %d\n", pr.name,
	    H, HKV, D, REPS);
	printf("# snapkv: 32 queries; ea-sigma: 128 queries, covariance "
	    "rows; ea-queries: 32 queries\n");
	printf("#    n   snapkv  ea-sigma  ea-queries  sigma/snap  "
	    "queries/snap\n");
	for (int n : ns)
		bench(n, st);
	printf("# every query (queries: all), a full covariance: moments, "
	    "carry, scores, and the three together\n");
	printf("#    n   snapkv   moments     carry    scores     total  "
	    "total/snap\n");
	for (int n : ns)
		bench_all(n, st);
	CK(cudaStreamDestroy(st));
	return 0;
}
