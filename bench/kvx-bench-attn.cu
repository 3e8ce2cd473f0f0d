/*
 * kvx-bench-attn.cu - decode-attention benchmark of the ragged split-K
 * kernel at Llama-3-8B shapes (32 layers, 8 KV heads, 4 query heads per
 * KV head, d = 128, fp16 K/V), reported as bytes of K/V read per second
 * over the device's copy bandwidth measured in the same run.
 * SPDX-License-Identifier: MIT
 *
 * usage: kvx-bench-attn [out.tsv [max_batch [BATCHxCTX]]]   (bench/sdpa.py
 * reads out.tsv; BATCHxCTX, e.g. 16x4096, runs that shape alone, both
 * length sets, as a profiler wants it)
 * Each decode step runs the 32 layers' launches (partial + combine),
 * captured once in a CUDA graph, on three work lists for each variant
 * of the partial kernel (deep: two tiles ahead, two blocks a
 * multiprocessor; wide: one tile ahead, three): balanced, chunked, and
 * one item a segment (no split).  "chosen" is what the library takes
 * (wl_one on the deep variant's resident blocks; else
 * kvx_cuda_attn_variant, then wl_plan on that variant's resident
 * blocks): c/b/1 for the list (chunked, balanced, one item a segment),
 * d/w for the variant, marked * when another of the six was faster.
 * The partial kernel writes the segments of one item itself, and the
 * combine is not launched when every segment has one (wl_solo).
 * "comb us" is what the combine costs a layer on the chosen list: the
 * step against the same step without the combine launches (whose
 * output is then incomplete).  A shape given alone also runs items of
 * a half, a third and a quarter of the longest segment, the chunked
 * list at half, one and twice wl_chunk's size with its segments in
 * order and longest first, the fixed cost of a layer (the floor): the
 * same number of segments of 16 rows, with two items each (partial +
 * combine) and with one (partial alone), and the same bytes read by a
 * kernel that only reads them.
 * Layers rotate
 * over separate buffers (as many as fit) so that the L2 cache does not
 * serve repeated reads.
 */
#include <algorithm>
#include <functional>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kvx_cuda.h"
#include "worklist.h"

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
	fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, \
	    cudaGetErrorString(e_)); exit(1); } } while (0)
#define KC(x) do { int r_ = (x); if (r_ != 0) { \
	fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, \
	    kvx_cuda_strerror(r_)); exit(1); } } while (0)

static const int NLAYER = 32, HKV = 8, G = 4, D = 128;

/* Random fp16 fill on the device (never zeros: see METHOD). */
static __global__ void
fill_half(__half *p, size_t n, unsigned seed)
{
	size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;

	for (; i < n; i += (size_t)gridDim.x * blockDim.x) {
		unsigned x = (unsigned)i * 2654435761u ^ seed;

		x ^= x >> 13;
		x *= 0x5bd1e995u;
		x ^= x >> 15;
		p[i] = __float2half(((x & 0xffff) / 32768.0f) - 1.0f);
	}
}

static __global__ void
fill_float(float *p, size_t n, unsigned seed)
{
	size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;

	for (; i < n; i += (size_t)gridDim.x * blockDim.x) {
		unsigned x = (unsigned)i * 2246822519u ^ seed;

		x ^= x >> 13;
		x *= 0x5bd1e995u;
		x ^= x >> 15;
		p[i] = ((x & 0xffff) / 32768.0f) - 1.0f;
	}
}

/* Device-to-device copy bandwidth, bytes read plus written per second. */
static double
copy_bw(void)
{
	size_t bytes = (size_t)2 << 30;
	void *a, *b;
	cudaEvent_t e0, e1;
	std::vector<float> ms;
	float t;
	int i;

	CK(cudaMalloc(&a, bytes));
	CK(cudaMalloc(&b, bytes));
	CK(cudaMemset(a, 1, bytes));
	CK(cudaEventCreate(&e0));
	CK(cudaEventCreate(&e1));
	for (i = 0; i < 13; i++) {
		CK(cudaEventRecord(e0));
		CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
		CK(cudaEventRecord(e1));
		CK(cudaEventSynchronize(e1));
		CK(cudaEventElapsedTime(&t, e0, e1));
		if (i >= 3)
			ms.push_back(t);
	}
	std::sort(ms.begin(), ms.end());
	CK(cudaFree(a));
	CK(cudaFree(b));
	return 2.0 * bytes / (ms[ms.size() / 2] * 1e-3);
}

struct layer {
	__half *k, *v;
	float *q, *out, *m, *l, *acc;
	long long *off;
	struct wl_item *items;
	int *first;
};

/* Ends the capture on st, replays the graph 23 times and returns the
 * median seconds of the last 20; the stream is destroyed. */
static double
replay_median(cudaStream_t st)
{
	cudaGraph_t gr;
	cudaGraphExec_t ge;
	cudaEvent_t e0, e1;
	std::vector<float> ms;
	float t;
	int i;

	CK(cudaStreamEndCapture(st, &gr));
	CK(cudaGraphInstantiate(&ge, gr, 0));
	CK(cudaEventCreate(&e0));
	CK(cudaEventCreate(&e1));
	for (i = 0; i < 23; i++) {
		CK(cudaEventRecord(e0, st));
		CK(cudaGraphLaunch(ge, st));
		CK(cudaEventRecord(e1, st));
		CK(cudaEventSynchronize(e1));
		CK(cudaEventElapsedTime(&t, e0, e1));
		if (i >= 3)
			ms.push_back(t);
	}
	std::sort(ms.begin(), ms.end());
	CK(cudaEventDestroy(e0));
	CK(cudaEventDestroy(e1));
	CK(cudaGraphExecDestroy(ge));
	CK(cudaGraphDestroy(gr));
	CK(cudaStreamDestroy(st));
	return ms[ms.size() / 2] * 1e-3;
}

/*
 * Median time of one decode step (all layers) for per-(seq, head) lengths
 * len on the partial kernel's variant var: chunk 0 balances rows over
 * the variant's resident blocks (wl_balanced), chunk -1 cuts items of
 * wl_chunk rows, chunk > 0 items of that many rows, one block each.
 * comb 0 leaves out the combine.
 */
static double
step_time(const std::vector<int> &len, int var, int chunk, int comb,
    int *nitems, int *nbuf)
{
	int nseg = (int)len.size(), s, i, nl, ni, cap, nb;
	int *bfirst_d = NULL;
	std::vector<int> bfirst;
	long long rows = 0;
	std::vector<long long> off(nseg);
	size_t free_b, total_b, per;
	std::vector<layer> L;
	std::vector<struct wl_item> it;
	std::vector<int> first(nseg + 1);
	cudaStream_t st;
	double t;

	for (s = 0; s < nseg; s++) {
		off[s] = rows * D;
		rows += len[s];
	}
	if (chunk == 0) {
		nb = kvx_cuda_attn_blocks(G, D, KVX_CUDA_F16, var);
		bfirst.resize(nb + 1);
		cap = nb + nseg;
		it.resize(cap);
		ni = wl_balanced(len.data(), nseg, nb, it.data(), cap,
		    first.data(), bfirst.data());
		CK(cudaMalloc(&bfirst_d, sizeof(int) * (nb + 1)));
		CK(cudaMemcpy(bfirst_d, bfirst.data(), sizeof(int) * (nb + 1),
		    cudaMemcpyHostToDevice));
	} else {
		if (chunk < 0)
			chunk = wl_chunk(rows, kvx_cuda_attn_blocks(G, D,
			    KVX_CUDA_F16, var));
		cap = (int)(rows / chunk) + nseg + 1;
		it.resize(cap);
		ni = wl_chunked(len.data(), nseg, chunk, it.data(), cap,
		    first.data());
		nb = ni;
	}
	if (ni < 0) {
		fprintf(stderr, "worklist failed\n");
		exit(1);
	}
	CK(cudaMemGetInfo(&free_b, &total_b));
	per = (size_t)rows * D * 2 * sizeof(__half);
	nl = (int)std::min<size_t>(NLAYER, (free_b - ((size_t)6 << 30)) / per);
	if (nl < 1) {
		fprintf(stderr, "does not fit: %zu bytes a layer\n", per);
		exit(1);
	}
	L.resize(nl);
	for (i = 0; i < nl; i++) {
		layer &y = L[i];

		CK(cudaMalloc(&y.k, (size_t)rows * D * sizeof(__half)));
		CK(cudaMalloc(&y.v, (size_t)rows * D * sizeof(__half)));
		CK(cudaMalloc(&y.q, sizeof(float) * nseg * G * D));
		CK(cudaMalloc(&y.out, sizeof(float) * nseg * G * D));
		CK(cudaMalloc(&y.m, sizeof(float) * ni * G));
		CK(cudaMalloc(&y.l, sizeof(float) * ni * G));
		CK(cudaMalloc(&y.acc, sizeof(float) * ni * G * D));
		CK(cudaMalloc(&y.off, sizeof(long long) * nseg));
		CK(cudaMalloc(&y.items, sizeof(*y.items) * ni));
		CK(cudaMalloc(&y.first, sizeof(int) * (nseg + 1)));
		fill_half<<<1024, 256>>>(y.k, (size_t)rows * D, 17 + i);
		fill_half<<<1024, 256>>>(y.v, (size_t)rows * D, 91 + i);
		fill_float<<<64, 256>>>(y.q, (size_t)nseg * G * D, 5 + i);
		CK(cudaGetLastError());
		CK(cudaMemcpy(y.off, off.data(), sizeof(long long) * nseg,
		    cudaMemcpyHostToDevice));
		CK(cudaMemcpy(y.items, it.data(), sizeof(*y.items) * ni,
		    cudaMemcpyHostToDevice));
		CK(cudaMemcpy(y.first, first.data(), sizeof(int) * (nseg + 1),
		    cudaMemcpyHostToDevice));
	}
	CK(cudaDeviceSynchronize());
	CK(cudaStreamCreate(&st));
	CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
	for (i = 0; i < NLAYER; i++) {
		layer &y = L[i % nl];

		KC(kvx_cuda_attn_partial(y.q, y.k, y.v, KVX_CUDA_F16, y.off, G,
		    D, D, 1.0f / sqrtf((float)D), y.items, bfirst_d, nb,
		    y.first, y.m, y.l, y.acc, y.out, var, st));
		if (comb && !wl_solo(first.data(), nseg))
			KC(kvx_cuda_attn_combine(y.first, nseg, G, D, y.m, y.l,
			    y.acc, y.out, KVX_CUDA_F32, 1,
			    wl_most(first.data(), nseg), st));
	}
	t = replay_median(st);
	for (i = 0; i < nl; i++) {
		layer &y = L[i];

		cudaFree(y.k); cudaFree(y.v); cudaFree(y.q); cudaFree(y.out);
		cudaFree(y.m); cudaFree(y.l); cudaFree(y.acc); cudaFree(y.off);
		cudaFree(y.items); cudaFree(y.first);
	}
	cudaFree(bfirst_d);
	*nitems = ni;
	*nbuf = nl;
	return t;
}

/* Reads n16 16-byte words of a and of b, four loads in flight a thread,
 * and writes nothing unless a sum no fill produces comes out: the bytes
 * alone, the least any kernel reading them can take. */
static __global__ void
read_only(const uint4 *a, const uint4 *b, size_t n16, unsigned *out)
{
	size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x, j;
	size_t st = (size_t)gridDim.x * blockDim.x;
	unsigned x = 0;
	int u;

	for (; i < n16; i += 4 * st)
		for (u = 0; u < 4; u++) {
			j = i + u * st;
			if (j < n16) {
				uint4 p = a[j], q = b[j];

				x += p.x ^ p.y ^ p.z ^ p.w ^ q.x ^ q.y ^ q.z ^
				    q.w;
			}
		}
	if (x == 0x9e3779b9u)
		out[blockIdx.x] = x;
}

/* Seconds a step of NLAYER launches of read_only over a layer's K and V
 * of rows rows (buffers rotating as in step_time), in a CUDA graph. */
static double
read_time(long long rows)
{
	size_t free_b, total_b, per = (size_t)rows * D * sizeof(__half);
	size_t n16 = per / 16;
	std::vector<__half *> k, v;
	unsigned *out;
	cudaStream_t st;
	cudaDeviceProp pr;
	double t;
	int i, nl;

	CK(cudaGetDeviceProperties(&pr, 0));
	CK(cudaMemGetInfo(&free_b, &total_b));
	nl = (int)std::min<size_t>(NLAYER, (free_b - ((size_t)6 << 30)) /
	    (2 * per));
	k.resize(nl);
	v.resize(nl);
	for (i = 0; i < nl; i++) {
		CK(cudaMalloc(&k[i], per));
		CK(cudaMalloc(&v[i], per));
		fill_half<<<1024, 256>>>(k[i], (size_t)rows * D, 17 + i);
		fill_half<<<1024, 256>>>(v[i], (size_t)rows * D, 91 + i);
	}
	CK(cudaMalloc(&out, sizeof(unsigned) * pr.multiProcessorCount * 8));
	CK(cudaDeviceSynchronize());
	CK(cudaStreamCreate(&st));
	CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
	for (i = 0; i < NLAYER; i++)
		read_only<<<pr.multiProcessorCount * 8, 256, 0, st>>>(
		    (const uint4 *)k[i % nl], (const uint4 *)v[i % nl], n16,
		    out);
	CK(cudaGetLastError());
	t = replay_median(st);
	for (i = 0; i < nl; i++) {
		cudaFree(k[i]);
		cudaFree(v[i]);
	}
	cudaFree(out);
	return t;
}

/* 1 when the library (wl_plan) takes the balanced list for len on the
 * variant var's resident blocks. */
static int
plan_balanced(const std::vector<int> &len, int var)
{
	int nseg = (int)len.size(), res, cap, nb, bal = 0;
	long long rows = 0;
	std::vector<struct wl_item> it;
	std::vector<int> first(nseg + 1), bfirst;
	size_t s;

	for (s = 0; s < len.size(); s++)
		rows += len[s];
	res = kvx_cuda_attn_blocks(G, D, KVX_CUDA_F16, var);
	cap = res + nseg + (int)(rows / wl_chunk(rows, res)) + 1;
	it.resize(cap);
	bfirst.resize(res + 1);
	if (wl_plan(len.data(), nseg, res, it.data(), cap, first.data(),
	    bfirst.data(), &nb, &bal) < 0) {
		fprintf(stderr, "worklist failed\n");
		exit(1);
	}
	return bal;
}

/* Skewed per-head lengths: u^2 shares of the context, the longest = T. */
static std::vector<int>
lengths(int batch, int ctx, int skew, unsigned seed)
{
	std::vector<int> len(batch * HKV);
	size_t s;

	srand(seed);
	for (s = 0; s < len.size(); s++) {
		double u = (rand() + 1.0) / ((double)RAND_MAX + 1.0);

		len[s] = skew ? std::max(64, (int)(ctx * u * u)) : ctx;
	}
	if (skew)
		len[0] = ctx;
	return len;
}

/*
 * The extra rows of a shape given alone: items of a half, a third and a
 * quarter of the longest segment T, one a block; the chunked list at
 * half, one and twice wl_chunk's size, in segment order and longest
 * segment first (the block scheduler then takes the items about longest
 * first); the fixed cost a layer, the same segments cut to 16 rows with
 * two items each (partial and combine) and one (the partial alone) on
 * the chosen variant var; and the same bytes read alone.
 */
static void
shape_alone(const std::vector<int> &len, int T, int var, double bytes,
    double bw)
{
	std::vector<int> srt(len), tiny(len.size(), 16);
	long long rows = 0;
	double tr;
	int v, f, ch, ni, nb;
	size_t s;

	for (s = 0; s < len.size(); s++)
		rows += len[s];
	std::sort(srt.begin(), srt.end(), std::greater<int>());
	for (v = 0; v < 2; v++)
		for (f = 2; f <= 4; f++)
			printf("#   %s, items of %d rows: %.1f%%\n", v ? "wide" :
			    "deep", T / f, 100.0 * bytes / step_time(len, v,
			    T / f, 1, &ni, &nb) / bw);
	for (v = 0; v < 2; v++) {
		ch = wl_chunk(rows, kvx_cuda_attn_blocks(G, D, KVX_CUDA_F16,
		    v));
		for (f = 1; f <= 4; f *= 2)
			printf("#   %s, chunked, items of %d rows: %.1f%%, "
			    "longest segments first %.1f%%\n", v ? "wide" :
			    "deep", ch * f / 2, 100.0 * bytes / step_time(len,
			    v, ch * f / 2, 1, &ni, &nb) / bw, 100.0 * bytes /
			    step_time(srt, v, ch * f / 2, 1, &ni, &nb) / bw);
	}
	printf("#   floor (%d segments of 16 rows), a layer: partial + "
	    "combine %.2f us, partial alone %.2f us\n", (int)len.size(),
	    step_time(tiny, var, 8, 1, &ni, &nb) / NLAYER * 1e6,
	    step_time(tiny, var, 16, 1, &ni, &nb) / NLAYER * 1e6);
	tr = read_time(rows);
	printf("#   the same bytes read alone (no attention, 16-byte loads, "
	    "8 blocks a multiprocessor): %.2f us a layer, %.1f%%\n",
	    tr / NLAYER * 1e6, 100.0 * bytes / tr / bw);
}

int
main(int argc, char **argv)
{
	static const int batches[] = { 1, 4, 16, 64 };
	static const int ctxs[] = { 4096, 32768, 131072 };
	FILE *tsv = fopen(argc > 1 ? argv[1] : "kvx-bench-attn.tsv", "w");
	int maxb = argc > 2 ? atoi(argv[2]) : 64, ob = 0, oc = 0;
	cudaDeviceProp pr;
	double bw;
	int bi, ci, skew;

	if (tsv == NULL) {
		perror("output");
		return 1;
	}
	if (argc > 3 && (sscanf(argv[3], "%dx%d", &ob, &oc) != 2 || ob < 1 ||
	    oc < 1)) {
		fprintf(stderr, "kvx-bench-attn: %s: not BATCHxCTX\n", argv[3]);
		return 1;
	}
	CK(cudaGetDeviceProperties(&pr, 0));
	bw = copy_bw();
	printf("device %s, %d SMs; copy bandwidth %.0f GB/s (read + write)\n",
	    pr.name, pr.multiProcessorCount, bw / 1e9);
	fprintf(tsv, "copy\t%.6e\n", bw);
	printf("%-6s %-6s %-6s %12s %9s %9s %8s %8s %8s %8s %8s %8s %6s "
	    "%7s\n", "batch", "ctx", "lens", "KV MB/step", "step us",
	    "chosen", "deep-bal", "deep-chk", "wide-bal", "wide-chk",
	    "deep-1", "wide-1", "items", "comb us");
	for (skew = 0; skew < 2; skew++)
	for (bi = 0; bi < 4; bi++)
	for (ci = 0; ci < 3; ci++) {
		int b = batches[bi], T = ctxs[ci], ni1, nb1, bal = 0, v;
		std::vector<int> len = lengths(b, T, skew, 1000 + b + T);
		long long rows = 0;
		double bytes, t, tb[2], tc[2], tp, t1[2], best;
		int nib[2], nbb[2], nic[2], nbc[2], nip, nbp, var, nch;
		size_t s;

		if ((long long)b * T > 64LL * 65536 || b > maxb ||
		    (ob > 0 && (b != ob || T != oc)))
			continue;
		for (s = 0; s < len.size(); s++)
			rows += len[s];
		bytes = (double)rows * D * 2 * sizeof(__half) * NLAYER;
		/* the library's choice: one item a segment on the deep
		   variant (wl_one), else the variant's split list */
		if (wl_one(rows, (int)len.size(), *std::max_element(
		    len.begin(), len.end()), kvx_cuda_attn_blocks(G, D,
		    KVX_CUDA_F16, KVX_CUDA_ATTN_DEEP))) {
			var = KVX_CUDA_ATTN_DEEP;
			bal = 2;
		} else {
			var = kvx_cuda_attn_variant(G, D, KVX_CUDA_F16,
			    (int)len.size());
			bal = plan_balanced(len, var);
		}
		for (v = 0; v < 2; v++) {
			tb[v] = step_time(len, v, 0, 1, &nib[v], &nbb[v]);
			tc[v] = step_time(len, v, -1, 1, &nic[v], &nbc[v]);
			/* without split-K: one item a segment */
			t1[v] = step_time(len, v, T, 1, &ni1, &nb1);
		}
		t = bal == 1 ? tb[var] : bal == 2 ? t1[var] : tc[var];
		best = std::min(std::min(std::min(tb[0], tc[0]),
		    std::min(tb[1], tc[1])), std::min(t1[0], t1[1]));
		tp = step_time(len, var, bal == 1 ? 0 : bal == 2 ? T : -1, 0,
		    &nip, &nbp);
		nch = bal == 1 ? nib[var] : bal == 2 ? ni1 : nic[var];
		printf("%-6d %-6d %-6s %12.1f %9.1f %6.1f%%%c%c%c %7.1f%% "
		    "%7.1f%% %7.1f%% %7.1f%% %7.1f%% %7.1f%% %6d %7.2f\n", b,
		    T, skew ? "skewed" : "equal", bytes / 1e6, t * 1e6,
		    100.0 * bytes / t / bw, "cb1"[bal], var ? 'w' : 'd',
		    t > best ? '*' : ' ', 100.0 * bytes / tb[0] / bw,
		    100.0 * bytes / tc[0] / bw, 100.0 * bytes / tb[1] / bw,
		    100.0 * bytes / tc[1] / bw, 100.0 * bytes / t1[0] / bw,
		    100.0 * bytes / t1[1] / bw, nch, (t - tp) / NLAYER * 1e6);
		fflush(stdout);
		if (ob > 0)
			shape_alone(len, T, var, bytes, bw);
		fprintf(tsv, "kvx\t%d\t%d\t%d\t%.6e\t%.6e\t%.6e\t%d", b, T, skew,
		    bytes, t, std::min(t1[0], t1[1]), nch);
		for (s = 0; s < len.size(); s++)
			fprintf(tsv, "%c%d", s ? ',' : '\t', len[s]);
		/* the best balanced and chunked times of either variant */
		fprintf(tsv, "\t%.6e\t%.6e\t%d\t%.6e\t%d\n",
		    std::min(tb[0], tb[1]), std::min(tc[0], tc[1]), bal, tp,
		    var);
	}
	fclose(tsv);
	return 0;
}
