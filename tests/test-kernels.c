/*
 * test-kernels.c - each CUDA kernel against its CPU twin on fresh random
 * inputs, with outputs poisoned (NaN) before every launch.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cuda.h"
#include "attn.h"
#include "plan.h"
#include "select.h"
#include "tap.h"
#include "util.h"

static uint64_t rng = 0x2545f4914f6cdd1dULL;

/* xorshift64*: reproducible inputs. */
static uint64_t
next(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 2685821657736338717ULL;
}

/* Uniform in [-1, 1). */
static float
frand(void)
{
	return (float)((next() >> 40) / (double)(1 << 23) - 1.0);
}

/* Uniform integer in [lo, hi]. */
static int
irand(int lo, int hi)
{
	return lo + (int)(next() % (uint64_t)(hi - lo + 1));
}

/* Stops the test on a failed CUDA call: nothing after it can be trusted. */
static void
check(int rc, const char *what)
{
	if (rc != 0) {
		ok(0, "%s: %s", what, kvx_cuda_strerror(rc));
		exit(tap_done());
	}
}

/* Device copy of a host buffer. */
static void *
dev(const void *h, size_t bytes)
{
	void *p = NULL;

	check(kvx_cuda_malloc(&p, bytes ? bytes : 16), "cudaMalloc");
	if (bytes)
		check(kvx_cuda_h2d(p, h, bytes), "copy to device");
	return p;
}

/* Device buffer filled with NaN bytes. */
static void *
poisoned(size_t bytes)
{
	void *p = NULL;

	check(kvx_cuda_malloc(&p, bytes ? bytes : 16), "cudaMalloc");
	check(kvx_cuda_memset(p, 0xff, bytes ? bytes : 16), "memset");
	return p;
}

/* Random values of a storage type, and their exact float values. */
static void
fill_kv(int dtype, void *dst, float *f, size_t n, float amp)
{
	size_t i;

	for (i = 0; i < n; i++) {
		float x = frand() * amp;

		if (dtype == KVX_CUDA_F32) {
			((float *)dst)[i] = x;
			f[i] = x;
		} else if (dtype == KVX_CUDA_F16) {
			uint16_t h = kvx__f2h(x);

			((uint16_t *)dst)[i] = h;
			f[i] = kvx__h2f(h);
		} else {
			uint32_t u;
			uint16_t b;

			memcpy(&u, &x, 4);
			b = (uint16_t)(u >> 16);
			((uint16_t *)dst)[i] = b;
			f[i] = kvx__bf2f(b);
		}
	}
}

static const char *dtname[] = { "f32", "f16", "bf16" };

/* ||a - b|| / ||b||, infinite when a holds a NaN. */
static double
relerr(const float *a, const float *b, size_t n)
{
	double num = 0.0, den = 0.0;
	size_t i;

	for (i = 0; i < n; i++) {
		if (a[i] != a[i])
			return INFINITY;
		num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		den += (double)b[i] * b[i];
	}
	return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

/*
 * Kernels 1 and 2: scoring, pooling and selection of a batch of segments
 * of different lengths, against sel_score, sel_pool and sel_select.
 */
static void
test_score_select(int rep)
{
	int nseg = irand(1, 6), g = irand(1, 4), w = irand(1, 40);
	int d = rep % 3 == 0 ? 64 : (rep % 3 == 1 ? 128 : irand(1, 48));
	int dtype = rep % 3, gqa = rep & 1, ks = 2 * irand(0, 4) + 1;
	int pool = rep % 4 == 3 ? PLAN_POOL_AVG : PLAN_POOL_MAX, sinks;
	int *n = malloc(sizeof(int) * nseg), *keep = malloc(sizeof(int) * nseg);
	long long *koff = malloc(sizeof(long long) * nseg);
	long long *soff = malloc(sizeof(long long) * nseg);
	long long *ioff = malloc(sizeof(long long) * nseg);
	long long tk = 0, ts = 0, ti = 0;
	int s, t, max_n = 0, esz = dtype == KVX_CUDA_F32 ? 4 : 2;
	int bad_sel = 0, bad_cnt = 0, bad_pool = 0;
	double worst = 0.0;
	float *q, *kf, *sc, *po, *gsc, *gpo;
	void *kh, *dq, *dk, *dsc, *dpo, *dscr, *dn, *dkoff, *dsoff, *dioff;
	void *didx, *dcnt, *dkeep;
	int *idx, *gidx, *cnt;

	sinks = irand(0, 5);
	for (s = 0; s < nseg; s++) {
		n[s] = w + irand(1, rep < 6 ? 40 : 3000);
		koff[s] = tk;
		soff[s] = ts;
		ioff[s] = ti;
		tk += (long long)n[s] * d;
		ts += n[s] - w;
		ti += n[s];
		max_n = n[s] > max_n ? n[s] : max_n;
		keep[s] = irand(0, n[s] + 2);
	}
	q = malloc(sizeof(float) * nseg * g * w * d);
	kf = malloc(sizeof(float) * tk);
	kh = malloc((size_t)esz * tk);
	sc = malloc(sizeof(float) * ts);
	po = malloc(sizeof(float) * ts);
	gsc = malloc(sizeof(float) * ts);
	gpo = malloc(sizeof(float) * ts);
	idx = malloc(sizeof(int) * ti);
	gidx = malloc(sizeof(int) * ti);
	cnt = malloc(sizeof(int) * nseg);
	for (t = 0; t < nseg * g * w * d; t++)
		q[t] = frand() * 2.0f;
	fill_kv(dtype, kh, kf, tk, 2.0f);

	dq = dev(q, sizeof(float) * nseg * g * w * d);
	dk = dev(kh, (size_t)esz * tk);
	dn = dev(n, sizeof(int) * nseg);
	dkeep = dev(keep, sizeof(int) * nseg);
	dkoff = dev(koff, sizeof(long long) * nseg);
	dsoff = dev(soff, sizeof(long long) * nseg);
	dioff = dev(ioff, sizeof(long long) * nseg);
	dscr = poisoned(kvx_cuda_score_scratch(nseg, g, w, max_n));
	dsc = poisoned(sizeof(float) * ts);
	dpo = poisoned(sizeof(float) * ts);
	didx = poisoned(sizeof(int) * ti);
	dcnt = poisoned(sizeof(int) * nseg);

	check(kvx_cuda_score(dq, dk, dtype, dkoff, dn, nseg, max_n, g, w, d, d,
	    1.0f / sqrtf((float)d), gqa, dsoff, dscr, dsc, NULL), "score");
	check(kvx_cuda_pool(dsc, dsoff, dn, nseg, max_n, w, ks, pool, dpo,
	    NULL), "pool");
	check(kvx_cuda_sync(), "score/pool run");
	check(kvx_cuda_d2h(gsc, dsc, sizeof(float) * ts), "copy back");
	check(kvx_cuda_d2h(gpo, dpo, sizeof(float) * ts), "copy back");
	for (s = 0; s < nseg; s++) {
		double e;

		sel_score(q + (size_t)s * g * w * d, kf + koff[s], n[s], w, g, d,
		    1.0f / sqrtf((float)d), gqa, sc + soff[s]);
		e = relerr(gsc + soff[s], sc + soff[s], n[s] - w);
		worst = e > worst ? e : worst;
		/* pooling is checked on the GPU's own scores, exactly
		 * enough to compare */
		sel_pool(gsc + soff[s], n[s] - w, ks, pool, po + soff[s]);
		if (relerr(gpo + soff[s], po + soff[s], n[s] - w) > 1e-6)
			bad_pool++;
	}
	ok(worst < 1e-4, "score %d segs g=%d w=%d d=%d %s %s: rel %.2g", nseg,
	    g, w, d, dtname[dtype], gqa ? "max" : "mean", worst);
	ok(bad_pool == 0, "pool ks=%d %s: %d segments differ", ks,
	    pool == PLAN_POOL_AVG ? "avg" : "max", bad_pool);

	/* selection on the GPU's pooled scores, with added ties */
	for (t = 0; t < ts; t++)
		if (rep % 2 == 0 && t % 3 == 0)
			gpo[t] = (float)(next() % 4) * 0.25f;
	check(kvx_cuda_h2d(dpo, gpo, sizeof(float) * ts), "copy");
	check(kvx_cuda_select(dpo, dsoff, dn, dkeep, nseg, w, sinks, dioff,
	    didx, dcnt, NULL), "select");
	check(kvx_cuda_sync(), "select run");
	check(kvx_cuda_d2h(gidx, didx, sizeof(int) * ti), "copy back");
	check(kvx_cuda_d2h(cnt, dcnt, sizeof(int) * nseg), "copy back");
	for (s = 0; s < nseg; s++) {
		int c = sel_select(gpo + soff[s], n[s], w, sinks, keep[s],
		    idx + ioff[s]);

		if (c != cnt[s])
			bad_cnt++;
		else if (memcmp(idx + ioff[s], gidx + ioff[s],
		    sizeof(int) * c) != 0)
			bad_sel++;
	}
	ok(bad_cnt == 0 && bad_sel == 0, "select sinks=%d: %d counts and %d "
	    "index lists differ", sinks, bad_cnt, bad_sel);

	/* kernel 3: gather the kept rows of K (as K and V) */
	{
		long long *doff = malloc(sizeof(long long) * nseg), to = 0;
		char *out = malloc((size_t)esz * (tk + 1)), *want;
		void *dko, *dvo, *ddoff;
		int bad = 0, mc = 0, i;

		for (s = 0; s < nseg; s++) {
			doff[s] = to;
			to += (long long)cnt[s] * d;
			mc = cnt[s] > mc ? cnt[s] : mc;
		}
		want = malloc((size_t)esz * (to + 1));
		for (s = 0; s < nseg; s++)
			for (i = 0; i < cnt[s]; i++)
				memcpy(want + (size_t)esz * (doff[s] +
				    (long long)i * d), (char *)kh + (size_t)esz *
				    (koff[s] + (long long)idx[ioff[s] + i] * d),
				    (size_t)esz * d);
		ddoff = dev(doff, sizeof(long long) * nseg);
		dko = poisoned((size_t)esz * to);
		dvo = poisoned((size_t)esz * to);
		check(kvx_cuda_gather(dk, dk, dko, dvo, dtype, d, d, d, dkoff,
		    ddoff, didx, dioff, dcnt, nseg, mc, NULL), "gather");
		check(kvx_cuda_sync(), "gather run");
		check(kvx_cuda_d2h(out, dko, (size_t)esz * to), "copy back");
		bad += memcmp(out, want, (size_t)esz * to) != 0;
		check(kvx_cuda_d2h(out, dvo, (size_t)esz * to), "copy back");
		bad += memcmp(out, want, (size_t)esz * to) != 0;
		ok(bad == 0, "gather %lld rows of d=%d %s", to / d, d,
		    dtname[dtype]);
		kvx_cuda_free(dko);
		kvx_cuda_free(dvo);
		kvx_cuda_free(ddoff);
		free(doff);
		free(out);
		free(want);
	}

	kvx_cuda_free(dq);
	kvx_cuda_free(dk);
	kvx_cuda_free(dn);
	kvx_cuda_free(dkeep);
	kvx_cuda_free(dkoff);
	kvx_cuda_free(dsoff);
	kvx_cuda_free(dioff);
	kvx_cuda_free(dscr);
	kvx_cuda_free(dsc);
	kvx_cuda_free(dpo);
	kvx_cuda_free(didx);
	kvx_cuda_free(dcnt);
	free(n);
	free(keep);
	free(koff);
	free(soff);
	free(ioff);
	free(q);
	free(kf);
	free(kh);
	free(sc);
	free(po);
	free(gsc);
	free(gpo);
	free(idx);
	free(gidx);
	free(cnt);
}

/*
 * Kernel 4: ragged split-K decode attention plus combine against
 * attn_gqa on the same (exactly converted) K/V, at several chunk sizes.
 */
static void
test_attn(int rep)
{
	int nseg = irand(1, 24), g = irand(1, 8), d = rep & 1 ? 128 : 64;
	int dtype = rep % 4 < 2 ? KVX_CUDA_F16 : KVX_CUDA_BF16, s, i, ci;
	int ld = d + (rep % 3 == 2 ? 8 : 0);
	int *len = malloc(sizeof(int) * nseg), *first;
	long long *off = malloc(sizeof(long long) * nseg), tot = 0, rows = 0;
	float *q, *kf, *vf, *ref, *got, *scr, scale = 1.0f / sqrtf((float)d);
	void *kh, *vh, *dq, *dk, *dv, *doff, *dout;
	static const int chunks[] = { 64, 200, 1024, 0 };
	int maxlen = 0;

	for (s = 0; s < nseg; s++) {
		len[s] = s == 0 && rep % 5 == 0 ? 0 :
		    irand(1, rep < 4 ? 300 : 6000);
		if (s == 1 && rep % 5 == 1)
			len[s] = 1;
		off[s] = tot;
		tot += (long long)len[s] * ld;
		rows += len[s];
		maxlen = len[s] > maxlen ? len[s] : maxlen;
	}
	q = malloc(sizeof(float) * nseg * g * d);
	kf = malloc(sizeof(float) * (tot + 1));
	vf = malloc(sizeof(float) * (tot + 1));
	kh = malloc(2 * (size_t)(tot + 1));
	vh = malloc(2 * (size_t)(tot + 1));
	ref = malloc(sizeof(float) * nseg * g * d);
	got = malloc(sizeof(float) * nseg * g * d);
	scr = malloc(sizeof(float) * g * (maxlen + 1));
	for (i = 0; i < nseg * g * d; i++)
		q[i] = frand() * 3.0f;
	fill_kv(dtype, kh, kf, tot, 1.0f);
	fill_kv(dtype, vh, vf, tot, 1.0f);
	for (s = 0; s < nseg; s++)
		attn_gqa(q + (size_t)s * g * d, g, d, kf + off[s], vf + off[s],
		    len[s], ld, scale, scr, ref + (size_t)s * g * d);
	dq = dev(q, sizeof(float) * nseg * g * d);
	dk = dev(kh, 2 * (size_t)tot);
	dv = dev(vh, 2 * (size_t)tot);
	doff = dev(off, sizeof(long long) * nseg);
	dout = poisoned(sizeof(float) * nseg * g * d);
	first = malloc(sizeof(int) * (nseg + 1));
	/* chunked work lists (one item a block), then balanced ones */
	for (ci = 0; ci < 7; ci++) {
		int nblk = ci == 4 ? 1 : ci == 5 ? 7 :
		    kvx_cuda_attn_blocks(g, d, dtype);
		int chunk = ci >= 4 ? 0 : chunks[ci] ? chunks[ci] :
		    kvx_cuda_attn_chunk(rows, kvx_cuda_sm_count());
		int cap = ci >= 4 ? nblk + nseg :
		    (int)(rows / chunk) + nseg + 1, ni, nb, bad = 0;
		struct kvx_cuda_work *it = malloc(sizeof(*it) * cap);
		int *bfirst = malloc(sizeof(int) * (nblk + 1));
		void *dit, *dfirst, *dbf = NULL, *dm, *dl, *dacc;
		double e;

		if (ci < 4)
			ni = kvx_cuda_attn_worklist(len, nseg, chunk, it, cap,
			    first);
		else
			ni = kvx_cuda_attn_balance(len, nseg, nblk, it, cap,
			    first, bfirst);
		nb = ci < 4 ? ni : nblk;
		/* every row of every segment in exactly one item, in order */
		for (s = 0, i = 0; s < nseg && ni >= 0; s++) {
			int r = 0, j;

			for (j = first[s]; j < first[s + 1]; j++) {
				bad += it[j].seg != s || it[j].r0 != r ||
				    it[j].r1 <= it[j].r0;
				r = it[j].r1;
			}
			bad += r != len[s];
		}
		if (!ok(ni >= 0 && bad == 0, "work list of %d segments, %s %d:"
		    " %d items, %d bad", nseg, ci < 4 ? "chunk" : "blocks",
		    ci < 4 ? chunk : nblk, ni, bad)) {
			free(it);
			free(bfirst);
			continue;
		}
		dit = dev(it, sizeof(*it) * (ni > 0 ? ni : 1));
		dfirst = dev(first, sizeof(int) * (nseg + 1));
		if (ci >= 4)
			dbf = dev(bfirst, sizeof(int) * (nblk + 1));
		dm = poisoned(sizeof(float) * g * (ni + 1));
		dl = poisoned(sizeof(float) * g * (ni + 1));
		dacc = poisoned(sizeof(float) * g * d * (ni + 1));
		check(kvx_cuda_memset(dout, 0xff, sizeof(float) * nseg * g * d),
		    "memset");
		check(kvx_cuda_attn_partial(dq, dk, dv, dtype, doff, g, d, ld,
		    scale, dit, dbf, nb, dm, dl, dacc, NULL), "attn partial");
		check(kvx_cuda_attn_combine(dfirst, nseg, g, d, dm, dl, dacc,
		    dout, NULL), "attn combine");
		check(kvx_cuda_sync(), "attention run");
		check(kvx_cuda_d2h(got, dout, sizeof(float) * nseg * g * d),
		    "copy back");
		e = relerr(got, ref, (size_t)nseg * g * d);
		ok(e < 2e-5, "attention %d segs (%lld rows) g=%d d=%d ld=%d %s "
		    "%d blocks, %d items: rel %.2g", nseg, rows, g, d, ld,
		    dtname[dtype], nb, ni, e);
		kvx_cuda_free(dit);
		kvx_cuda_free(dbf);
		free(bfirst);
		kvx_cuda_free(dfirst);
		kvx_cuda_free(dm);
		kvx_cuda_free(dl);
		kvx_cuda_free(dacc);
		free(it);
	}
	ok(kvx_cuda_attn_partial(dq, dk, dv, dtype, doff, g, 96, ld, scale,
	    NULL, NULL, 1, NULL, NULL, NULL, NULL) == KVX_CUDA_EINVAL,
	    "attention refuses d=96");
	kvx_cuda_free(dq);
	kvx_cuda_free(dk);
	kvx_cuda_free(dv);
	kvx_cuda_free(doff);
	kvx_cuda_free(dout);
	free(first);
	free(len);
	free(off);
	free(q);
	free(kf);
	free(vf);
	free(kh);
	free(vh);
	free(ref);
	free(got);
	free(scr);
}

int
main(void)
{
	const char *e = getenv("KVX_TEST_REPS");
	int rep, nrep = e != NULL && atoi(e) > 0 ? atoi(e) : 18;

	if (!kvx_cuda_available())
		tap_skip_all("no CUDA device");
	/* fewer repetitions for runs under compute-sanitizer */
	for (rep = 0; rep < nrep; rep++)
		test_score_select(rep);
	for (rep = 0; rep < nrep && rep < 16; rep++)
		test_attn(rep);
	return tap_done();
}
