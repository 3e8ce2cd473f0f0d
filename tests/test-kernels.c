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

#include "../kernels/kvx_cuda.h"
#include "attn.h"
#include "kvzip.h"
#include "worklist.h"
#include "plan.h"
#include "select.h"
#include "tap.h"
#include "util.h"

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
		float x = tap_frand() * amp;

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
 * The largest |a - b| / (1 + |b|) of two arrays of logarithms (Expected
 * Attention's scores): an absolute error of a logarithm is a relative
 * one of the weight.  Equal infinities count 0; a NaN counts infinite.
 */
static double
logerr(const float *a, const float *b, size_t n)
{
	double e, worst = 0.0;
	size_t i;

	for (i = 0; i < n; i++) {
		if (a[i] == b[i])
			continue;
		e = fabs((double)a[i] - b[i]) / (1.0 + fabs((double)b[i]));
		if (!(e <= worst))
			worst = e;
	}
	return worst;
}

/*
 * Kernels 1 and 2: scoring, pooling and selection of a batch of segments
 * of different lengths, against sel_score, sel_pool and sel_select.
 */
static void
test_score_select(int rep)
{
	/* rep 13: 8 query heads of d = 128, over 48 KB of shared memory;
	   reps 1 and 16: the largest window a plan may have; rep 11:
	   segments past the 8192 keys that top-k holds in registers */
	int nseg = tap_irand(1, 6), g = rep == 13 ? 8 : tap_irand(1, 4);
	int w = rep == 13 ? 64 : rep == 1 || rep == 16 ? KVX_WINDOW_MAX :
	    tap_irand(1, 40);
	int d = rep % 3 == 0 ? 64 : (rep % 3 == 1 ? 128 : tap_irand(1, 48));
	int dtype = rep % 3, gqa = rep & 1, ks = 2 * tap_irand(0, 4) + 1;
	int pool = rep % 8 == 7 ? SEL_POOL_LOGAVG : rep % 4 == 3 ?
	    PLAN_POOL_AVG : PLAN_POOL_MAX, sinks;
	int *n = malloc(sizeof(int) * nseg), *keep = malloc(sizeof(int) * nseg);
	long long *koff = malloc(sizeof(long long) * nseg);
	long long *soff = malloc(sizeof(long long) * nseg);
	long long *ioff = malloc(sizeof(long long) * nseg);
	long long tk = 0, ts = 0, ti = 0;
	int s, t, max_n = 0, esz = dtype == KVX_CUDA_F32 ? 4 : 2;
	int bad_sel = 0, bad_cnt = 0, bad_pool = 0;
	double worst = 0.0;
	size_t sbytes;
	float *q, *kf, *sc, *po, *gsc, *gpo, *pin;
	void *kh, *dq, *dk, *dsc, *dpo, *dscr, *dn, *dkoff, *dsoff, *dioff;
	void *dpin;
	void *didx, *dcnt, *dkeep;
	int *idx, *gidx, *cnt;

	sinks = tap_irand(0, 5);
	for (s = 0; s < nseg; s++) {
		n[s] = w + tap_irand(1, rep < 6 ? 40 : 3000) + (rep == 11 ?
		    tap_irand(6000, 12000) : 0);
		koff[s] = tk;
		soff[s] = ts;
		ioff[s] = ti;
		tk += (long long)n[s] * d;
		ts += n[s] - w;
		ti += n[s];
		max_n = n[s] > max_n ? n[s] : max_n;
		keep[s] = tap_irand(0, n[s] + 2);
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
		q[t] = tap_frand() * 2.0f;
	fill_kv(dtype, kh, kf, tk, 2.0f);

	dq = dev(q, sizeof(float) * nseg * g * w * d);
	dk = dev(kh, (size_t)esz * tk);
	dn = dev(n, sizeof(int) * nseg);
	dkeep = dev(keep, sizeof(int) * nseg);
	dkoff = dev(koff, sizeof(long long) * nseg);
	dsoff = dev(soff, sizeof(long long) * nseg);
	dioff = dev(ioff, sizeof(long long) * nseg);
	/* even repetitions keep the logits between the passes, odd ones
	   compute them twice; both must give the same scores */
	sbytes = kvx_cuda_score_scratch(nseg, g, w, max_n, rep % 2 == 0);
	dscr = poisoned(sbytes);
	dsc = poisoned(sizeof(float) * ts);
	dpo = poisoned(sizeof(float) * ts);
	didx = poisoned(sizeof(int) * ti);
	dcnt = poisoned(sizeof(int) * nseg);

	if (rep % 4 >= 2) {
		/* the forward's layout: window position outermost, as the
		   rotated queries of the last w tokens lie */
		float *qt = malloc(sizeof(float) * nseg * g * w * d);
		void *dqt;
		int j, p;

		for (j = 0; j < nseg * g; j++)
			for (p = 0; p < w; p++)
				memcpy(qt + ((size_t)p * nseg * g + j) * d,
				    q + ((size_t)j * w + p) * d,
				    sizeof(float) * d);
		dqt = dev(qt, sizeof(float) * nseg * g * w * d);
		check(kvx_cuda_score_q(dqt, d, (long long)nseg * g * d, dk,
		    dtype, dkoff, dn, nseg, max_n, g, w, d, d,
		    1.0f / sqrtf((float)d), gqa, dsoff, dscr, sbytes, dsc,
		    NULL), "score_q");
		check(kvx_cuda_sync(), "score_q run");
		kvx_cuda_free(dqt);
		free(qt);
	} else
		check(kvx_cuda_score(dq, dk, dtype, dkoff, dn, nseg, max_n, g,
		    w, d, d, 1.0f / sqrtf((float)d), gqa, dsoff, dscr, sbytes,
		    dsc, NULL), "score");
	check(kvx_cuda_sync(), "score run");
	check(kvx_cuda_d2h(gsc, dsc, sizeof(float) * ts), "copy back");
	/* a log-average pools logarithms (Expected Attention's scores),
	   so it gets the scores' logarithms: on probabilities near 0 its
	   exp and log would lose the digits the comparison needs */
	pin = gsc;
	dpin = dsc;
	if (pool == SEL_POOL_LOGAVG) {
		pin = malloc(sizeof(float) * ts);
		for (t = 0; t < ts; t++)
			pin[t] = logf(fmaxf(gsc[t], 1e-30f));
		dpin = dev(pin, sizeof(float) * ts);
	}
	check(kvx_cuda_pool(dpin, dsoff, dn, nseg, max_n, w, ks, pool, dpo,
	    NULL), "pool");
	check(kvx_cuda_sync(), "pool run");
	check(kvx_cuda_d2h(gpo, dpo, sizeof(float) * ts), "copy back");
	for (s = 0; s < nseg; s++) {
		double e;

		sel_score(q + (size_t)s * g * w * d, kf + koff[s], n[s], w, g, d,
		    1.0f / sqrtf((float)d), gqa, sc + soff[s]);
		e = relerr(gsc + soff[s], sc + soff[s], n[s] - w);
		worst = e > worst ? e : worst;
		/* pooling is checked on the GPU's own scores, exactly
		 * enough to compare */
		sel_pool(pin + soff[s], n[s] - w, ks, pool, po + soff[s]);
		if (relerr(gpo + soff[s], po + soff[s], n[s] - w) > 1e-6)
			bad_pool++;
	}
	ok(worst < 1e-4, "score %d segs g=%d w=%d d=%d %s %s, logits %s: rel "
	    "%.2g", nseg, g, w, d, dtname[dtype], gqa ? "max" : "mean",
	    rep % 2 == 0 ? "kept" : "recomputed", worst);
	/* the other way of the last pass, on the same inputs */
	{
		size_t ob = kvx_cuda_score_scratch(nseg, g, w, max_n,
		    rep % 2 != 0);
		void *oscr = poisoned(ob), *osc = poisoned(sizeof(float) * ts);
		float *other = malloc(sizeof(float) * (ts + 1));

		check(kvx_cuda_score(dq, dk, dtype, dkoff, dn, nseg, max_n, g,
		    w, d, d, 1.0f / sqrtf((float)d), gqa, dsoff, oscr, ob, osc,
		    NULL), "score");
		check(kvx_cuda_sync(), "score run");
		check(kvx_cuda_d2h(other, osc, sizeof(float) * ts),
		    "copy back");
		ok(relerr(other, gsc, (size_t)ts) < 1e-6, "score with the "
		    "logits %s: rel %.2g to the other way", rep % 2 != 0 ?
		    "kept" : "recomputed", relerr(other, gsc, (size_t)ts));
		ok(kvx_cuda_score(dq, dk, dtype, dkoff, dn, nseg, max_n, g, w,
		    d, d, 1.0f, gqa, dsoff, oscr, kvx_cuda_score_scratch(nseg,
		    g, w, max_n, 0) - 1, osc, NULL) == KVX_CUDA_EINVAL,
		    "score refuses a short scratch");
		kvx_cuda_free(oscr);
		kvx_cuda_free(osc);
		free(other);
	}
	ok(bad_pool == 0, "pool ks=%d %s: %d segments differ", ks,
	    pool == SEL_POOL_LOGAVG ? "log-average" : pool == PLAN_POOL_AVG ?
	    "avg" : "max", bad_pool);
	if (pin != gsc) {
		free(pin);
		kvx_cuda_free(dpin);
	}

	/* selection on the GPU's pooled scores, with added ties */
	for (t = 0; t < ts; t++)
		if (rep % 2 == 0 && t % 3 == 0)
			gpo[t] = (float)(tap_next() % 4) * 0.25f;
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
 * The library's choice of work list: balanced exactly when the rows give
 * each resident block WL_BALANCE_ROWS and the segments WL_BALANCE_SEG
 * on average, and a valid list either way.
 */
static void
test_attn_plan(void)
{
	/* the last: rows enough for balance, segments too short */
	static const int tot[5] = { 4096, 32768, 1 << 20, 4 << 20,
	    128 * 2048 };
	int res = kvx_cuda_attn_blocks(4, 128, KVX_CUDA_F16,
	    KVX_CUDA_ATTN_DEEP), t, s;
	int wide = kvx_cuda_attn_blocks(4, 128, KVX_CUDA_F16,
	    KVX_CUDA_ATTN_WIDE);

	/* the variant: WIDE from KVX_CUDA_ATTN_WIDE_SEGS segments, where
	   it is built (fp16, d = 128), with at least DEEP's blocks */
	ok(kvx_cuda_attn_variant(4, 128, KVX_CUDA_F16,
	    KVX_CUDA_ATTN_WIDE_SEGS) == KVX_CUDA_ATTN_WIDE &&
	    kvx_cuda_attn_variant(4, 128, KVX_CUDA_F16,
	    KVX_CUDA_ATTN_WIDE_SEGS - 1) == KVX_CUDA_ATTN_DEEP &&
	    kvx_cuda_attn_variant(4, 64, KVX_CUDA_F16, 512) ==
	    KVX_CUDA_ATTN_DEEP && kvx_cuda_attn_variant(4, 128,
	    KVX_CUDA_BF16, 512) == KVX_CUDA_ATTN_DEEP && res > 0 &&
	    wide >= res && kvx_cuda_attn_blocks(4, 128, KVX_CUDA_F16, 2) ==
	    0, "attention variant: wide from %d segments at d=128 fp16; "
	    "%d resident blocks deep, %d wide", KVX_CUDA_ATTN_WIDE_SEGS, res,
	    wide);

	for (t = 0; t < 5; t++) {
		int nseg = t < 4 ? 8 : 128, len[128], first[129], *bfirst;
		int nb = 0;
		int bal = -1, n;
		int cap, bad = 0, r, j, want;
		long long rows = 0;
		struct wl_item *it;

		for (s = 0; s < nseg; s++) {
			len[s] = tot[t] / nseg + (s == 0 ? 37 : 0);
			rows += len[s];
		}
		want = rows >= (long long)res * WL_BALANCE_ROWS &&
		    rows >= (long long)nseg * WL_BALANCE_SEG;
		cap = res + nseg + (int)(rows / 16) + 1;
		it = malloc(sizeof(*it) * cap);
		bfirst = malloc(sizeof(int) * (res + 1));
		n = wl_plan(len, nseg, res, it, cap, first, bfirst, &nb,
		    &bal);
		for (s = 0; s < nseg && n >= 0; s++) {
			for (r = 0, j = first[s]; j < first[s + 1]; j++) {
				bad += it[j].seg != s || it[j].r0 != r;
				r = it[j].r1;
			}
			bad += r != len[s];
		}
		ok(n > 0 && bad == 0 && bal == want && nb == (bal ? res : n),
		    "work list choice for %lld rows over %d resident blocks: "
		    "balanced %d (want %d), %d blocks, %d items", rows, res,
		    bal, want, nb, n);
		free(it);
		free(bfirst);
	}
}

/* Device floats back to the host. */
static void
back(float *h, const void *d, size_t n)
{
	check(kvx_cuda_d2h(h, d, n * sizeof(float)), "copy to host");
}

/* Device halves back to the host, as floats. */
static void
back_h(float *h, const void *d, size_t n)
{
	uint16_t *t = malloc(n * 2 + 2);
	size_t i;

	check(kvx_cuda_d2h(t, d, n * 2), "copy to host");
	for (i = 0; i < n; i++)
		h[i] = kvx__h2f(t[i]);
	free(t);
}

/* The inputs of one attention test case on the device. */
struct attn_case {
	const void	*dq, *dk, *dv, *doff;
	int		 dtype, nseg, g, d, ld, ni, variant;
	float		 scale;
};

/*
 * One run of the split-K attention on a list into dout (poisoned first),
 * copied back to got: solo 0 writes every item's partial and combines
 * all segments; solo 1 has the partial kernel write the segments of one
 * item, and launches the combine only when some segment has another
 * count (wl_solo), so that a write it skips shows as NaN.  most: the
 * combine's hint (0 its block form; 1 .. U its warp form, whatever the
 * counts); f16: the combine writes fp16 (solo 0 only).
 */
static void
attn_run(int solo, int most, int f16, const struct attn_case *c,
    const void *dit, const void *dbf, int nb, const void *dfirst,
    const int *first, void *dm, void *dl, void *dacc, void *dout, float *got)
{
	size_t n = (size_t)c->nseg * c->g * c->d;

	check(kvx_cuda_memset(dout, 0xff, sizeof(float) * n), "memset");
	check(kvx_cuda_memset(dm, 0xff, sizeof(float) * c->g * (c->ni + 1)),
	    "memset");
	check(kvx_cuda_memset(dl, 0xff, sizeof(float) * c->g * (c->ni + 1)),
	    "memset");
	check(kvx_cuda_memset(dacc, 0xff, sizeof(float) * c->g * c->d *
	    (c->ni + 1)), "memset");
	check(kvx_cuda_attn_partial(c->dq, c->dk, c->dv, c->dtype, c->doff,
	    c->g, c->d, c->ld, c->scale, dit, dbf, nb, dfirst, dm, dl, dacc,
	    solo ? dout : NULL, c->variant, NULL), "attn partial");
	if (!solo || !wl_solo(first, c->nseg))
		check(kvx_cuda_attn_combine(dfirst, c->nseg, c->g, c->d, dm,
		    dl, dacc, dout, f16 ? KVX_CUDA_F16 : KVX_CUDA_F32, solo,
		    most, NULL), "attn combine");
	check(kvx_cuda_sync(), "attention run");
	if (f16)
		back_h(got, dout, n);
	else
		check(kvx_cuda_d2h(got, dout, sizeof(float) * n), "copy back");
}

/*
 * Segments of one item whose outputs differ in any bit between the
 * direct write (solo) and the combine (all): both divide the same acc
 * by the same l.
 */
static int
attn_solo_diff(const struct attn_case *c, const int *first,
    const float *all, const float *solo)
{
	size_t n = (size_t)c->g * c->d;
	int s, bad = 0;

	for (s = 0; s < c->nseg; s++)
		if (first[s + 1] - first[s] == 1)
			bad += memcmp(all + s * n, solo + s * n,
			    n * sizeof(float)) != 0;
	return bad;
}

/*
 * Kernel 4: ragged split-K decode attention plus combine against
 * attn_gqa on the same (exactly converted) K/V, at several chunk sizes
 * (16 rows: hundreds of items a segment; 1024 and the balanced list on
 * one block: segments of one item), with and without the direct write
 * of single-item segments.
 */
static void
test_attn(int rep)
{
	int nseg = tap_irand(1, 24), g = tap_irand(1, 8);
	int d = rep % 6 == 5 ? 256 : rep & 1 ? 128 : 64;
	int dtype = rep % 4 < 2 ? KVX_CUDA_F16 : KVX_CUDA_BF16, s, i, ci;
	int ld = d + (rep % 3 == 2 ? 8 : 0);
	int *len = malloc(sizeof(int) * nseg), *first;
	long long *off = malloc(sizeof(long long) * nseg), tot = 0, rows = 0;
	float *q, *kf, *vf, *ref, *got, *got1, *scr;
	float scale = 1.0f / sqrtf((float)d);
	void *kh, *vh, *dq, *dk, *dv, *doff, *dout;
	static const int chunks[] = { 16, 64, 200, 1024, 0 };
	struct attn_case c;
	int maxlen = 0;

	for (s = 0; s < nseg; s++) {
		len[s] = s == 0 && rep % 5 == 0 ? 0 :
		    tap_irand(1, rep < 4 ? 300 : 6000);
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
	got1 = malloc(sizeof(float) * nseg * g * d);
	scr = malloc(sizeof(float) * g * (maxlen + 1));
	for (i = 0; i < nseg * g * d; i++)
		q[i] = tap_frand() * 3.0f;
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
	c.dq = dq;
	c.dk = dk;
	c.dv = dv;
	c.doff = doff;
	c.dtype = dtype;
	c.nseg = nseg;
	c.g = g;
	c.d = d;
	c.ld = ld;
	c.scale = scale;
	c.variant = KVX_CUDA_ATTN_DEEP;
	/* chunked work lists (one item a block), then balanced ones */
	for (ci = 0; ci < 8; ci++) {
		int nblk = ci == 5 ? 1 : ci == 6 ? 7 :
		    kvx_cuda_attn_blocks(g, d, dtype, KVX_CUDA_ATTN_DEEP);
		int chunk = ci >= 5 ? 0 : chunks[ci] ? chunks[ci] :
		    wl_chunk(rows, kvx_cuda_attn_blocks(g, d, dtype,
		    KVX_CUDA_ATTN_DEEP));
		int cap = ci >= 5 ? nblk + nseg :
		    (int)(rows / chunk) + nseg + 1, ni, nb, bad = 0;
		struct wl_item *it = malloc(sizeof(*it) * cap);
		int *bfirst = malloc(sizeof(int) * (nblk + 1));
		void *dit, *dfirst, *dbf = NULL, *dm, *dl, *dacc;
		int one = 0, most = 0, j;
		double e, e1;

		if (ci < 5)
			ni = wl_chunked(len, nseg, chunk, it, cap, first);
		else
			ni = wl_balanced(len, nseg, nblk, it, cap, first,
			    bfirst);
		nb = ci < 5 ? ni : nblk;
		/* every row of every segment in exactly one item, in order */
		for (s = 0, i = 0; s < nseg && ni >= 0; s++) {
			int r = 0;

			for (j = first[s]; j < first[s + 1]; j++) {
				bad += it[j].seg != s || it[j].r0 != r ||
				    it[j].r1 <= it[j].r0;
				r = it[j].r1;
			}
			bad += r != len[s];
		}
		if (!ok(ni >= 0 && bad == 0, "work list of %d segments, %s %d:"
		    " %d items, %d bad", nseg, ci < 5 ? "chunk" : "blocks",
		    ci < 5 ? chunk : nblk, ni, bad)) {
			free(it);
			free(bfirst);
			continue;
		}
		/* a chunked list padded past its end as the decode pads
		   it: items of seg -1, which the partial kernel skips (an
		   item it took would read off[-1] and write past dm) */
		if (ci < 5) {
			it = realloc(it, sizeof(*it) * (ni + 3));
			for (j = ni; j < ni + 3; j++) {
				it[j].seg = -1;
				it[j].r0 = 0;
				it[j].r1 = 16;
				it[j].pad = 0;
			}
			nb = ni + 3;
		}
		dit = dev(it, sizeof(*it) * (nb > ni ? nb : ni > 0 ? ni : 1));
		dfirst = dev(first, sizeof(int) * (nseg + 1));
		if (ci >= 5)
			dbf = dev(bfirst, sizeof(int) * (nblk + 1));
		dm = poisoned(sizeof(float) * g * (ni + 1));
		dl = poisoned(sizeof(float) * g * (ni + 1));
		dacc = poisoned(sizeof(float) * g * d * (ni + 1));
		c.ni = ni;
		for (s = 0; s < nseg; s++) {
			j = first[s + 1] - first[s];
			one += j == 1;
			most = j > most ? j : most;
		}
		attn_run(0, 0, 0, &c, dit, dbf, nb, dfirst, first, dm, dl,
		    dacc, dout, got);
		e = relerr(got, ref, (size_t)nseg * g * d);
		attn_run(1, most, 0, &c, dit, dbf, nb, dfirst, first, dm, dl,
		    dacc, dout, got1);
		e1 = relerr(got1, ref, (size_t)nseg * g * d);
		ok(e < 2e-5 && e1 < 2e-5, "attention %d segs (%lld rows) g=%d "
		    "d=%d ld=%d %s %d blocks, %d items (%d segments of one, "
		    "up to %d a segment): rel %.2g combined, %.2g with the "
		    "direct write%s", nseg, rows, g, d, ld, dtname[dtype], nb,
		    ni, one, most, e, e1, wl_solo(first, nseg) ?
		    " and no combine" : "");
		j = attn_solo_diff(&c, first, got, got1);
		ok(j == 0, "attention: %d of %d single-item segments differ "
		    "between the direct write and the combine", j, one);
		/* the combine's warp form whatever the counts, into fp16:
		   the block form's bits, rounded (the same merges in the
		   same order) */
		attn_run(0, 1, 1, &c, dit, dbf, nb, dfirst, first, dm, dl,
		    dacc, dout, got1);
		e1 = relerr(got1, ref, (size_t)nseg * g * d);
		for (i = 0, j = 0; i < nseg * g * d; i++)
			j += got1[i] != kvx__h2f(kvx__f2h(got[i]));
		ok(e1 < 1e-3 && j == 0 && wl_most(first, nseg) == most,
		    "attention combined a warp a (segment, head) into fp16 "
		    "(up to %d items a segment): rel %.2g, %d elements not the "
		    "rounded float output", most, e1, j);
		/* the wide variant: the deep one's bits (the same tiles in
		   the same order, a shallower ring); where it is not built,
		   the deep kernel itself */
		c.variant = KVX_CUDA_ATTN_WIDE;
		attn_run(0, 0, 0, &c, dit, dbf, nb, dfirst, first, dm, dl,
		    dacc, dout, got1);
		c.variant = KVX_CUDA_ATTN_DEEP;
		ok(memcmp(got, got1, sizeof(float) * nseg * g * d) == 0,
		    "attention, wide variant: the deep variant's bits (g=%d "
		    "d=%d %s, %d items)", g, d, dtname[dtype], ni);
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
	    NULL, NULL, 1, NULL, NULL, NULL, NULL, NULL, KVX_CUDA_ATTN_DEEP,
	    NULL) == KVX_CUDA_EINVAL && kvx_cuda_attn_partial(dq, dk, dv,
	    dtype, doff, g, d, ld, scale, NULL, NULL, 1, NULL, NULL, NULL,
	    NULL, NULL, 7, NULL) == KVX_CUDA_EINVAL &&
	    kvx_cuda_attn_combine(NULL, 1, g, 96, NULL, NULL, NULL, NULL,
	    KVX_CUDA_F32, 0, 0, NULL) == KVX_CUDA_EINVAL &&
	    kvx_cuda_attn_combine(NULL, 1, g, 64, NULL, NULL, NULL, NULL,
	    KVX_CUDA_F16, 1, 0, NULL) == KVX_CUDA_EINVAL,
	    "attention and combine refuse d=96, the attention variant 7, "
	    "the combine fp16 with the direct write");
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
	free(got1);
	free(scr);
}

/* --- model layers --------------------------------------------------------- */


/*
 * Embedding (scaled), RMS norm (also added to a residual), biases,
 * per-head norm and RoPE in both pair layouts, SwiGLU and GELU gates, K/V
 * store and the causal softmax (also with a sliding window) against
 * plain C twins written from the definitions in runtime/model.c.
 */
/*
 * The fused QKV's head norms (every other pair of repetitions), RoPE and
 * K/V store against the CPU: T rows of nq Q, nk K and nk V heads with
 * padded rows; Q out of place, K in place, V untouched; then the same
 * with the K and V heads stored as fp16, to scattered rows (odd
 * repetitions) or packed, compared bit for bit with the fp32 results.
 */
static void
test_qk_rope(int rep, int T, int nq, int d, int halves, float theta)
{
	int nk = tap_irand(1, nq), nh = nq + 2 * nk, t, h, i, c;
	int ld = nh * d + tap_irand(0, 3) * 4, ldq = nq * d + 4 * (rep % 2);
	int norm = rep % 4 >= 2, scat = rep % 2;
	size_t nr = (size_t)T * ld, nkv = (size_t)T * nk * d;
	float *a = malloc(nr * sizeof(float)), *got = malloc(nr * sizeof(float));
	float *ref = malloc(nr * sizeof(float)), *wq = malloc(2 * d * 4);
	float *q = malloc((size_t)T * ldq * 4), *kh = malloc(nkv * 4);
	float *vh = malloc(nkv * 4), *wk = wq + d, err, e;
	int *pos = malloc((size_t)T * sizeof(int));
	long long *off = malloc((size_t)T * nk * sizeof(long long));
	void *da, *dq, *dw, *dpos, *doff, *dk, *dv;

	for (i = 0; i < (int)nr; i++)
		a[i] = tap_frand() * (rep % 4 + 1);
	for (t = 0; t < T; t++)
		pos[t] = tap_irand(0, rep % 2 ? 100 : 9000);
	for (i = 0; i < 2 * d; i++)
		wq[i] = 0.5f + tap_frand();
	memcpy(ref, a, nr * sizeof(float));
	for (t = 0; t < T; t++)
		for (h = 0; h < nq + nk; h++) {
			const float *p = a + (size_t)t * ld + h * d;
			const float *w = h < nq ? wq : wk;
			float *r = ref + (size_t)t * ld + h * d, inv = 1.0f;
			double ss = 0.0;

			for (i = 0; i < d; i++)
				ss += (double)p[i] * p[i];
			if (norm)
				inv = 1.0f / sqrtf((float)(ss / d) + 1e-6f);
			for (i = 0; i < d; i++)
				r[i] = norm ? p[i] * inv * w[i] : p[i];
			for (i = 0; i < d / 2; i++) {
				double ang = pos[t] * pow((double)theta,
				    -(double)(2 * i) / d);
				float cs = (float)cos(ang), sn = (float)sin(ang);
				int i0 = halves ? i : 2 * i;
				int i1 = halves ? i + d / 2 : 2 * i + 1;
				float x0 = r[i0], x1 = r[i1];

				r[i0] = x0 * cs - x1 * sn;
				r[i1] = x0 * sn + x1 * cs;
			}
		}
	for (i = 0; i < T * nk; i++)
		off[i] = scat ? ((long long)(T * nk - 1 - i)) * d :
		    (long long)i * d;
	da = dev(a, nr * 4);
	dpos = dev(pos, (size_t)T * sizeof(int));
	dw = dev(wq, (size_t)2 * d * 4);
	doff = dev(off, (size_t)T * nk * sizeof(long long));
	dq = poisoned((size_t)T * ldq * 4);
	check(kvx_cuda_qk_rope(da, ld, dq, ldq, T, nq, nk, d,
	    norm ? dw : NULL, norm ? (float *)dw + d : NULL, 1e-6f, dpos,
	    theta, halves, NULL, NULL, NULL, 0), "qk_rope");
	back(q, dq, (size_t)T * ldq);
	back(got, da, nr);
	for (t = 0, err = 0.0f, c = 0; t < T; t++)
		for (i = 0; i < ld; i++) {
			const float *r = ref + (size_t)t * ld;

			if (i < nq * d) {	/* Q: out of place */
				e = fabsf(q[(size_t)t * ldq + i] - r[i]) /
				    (fabsf(r[i]) + 1e-3f);
				c += got[(size_t)t * ld + i] !=
				    a[(size_t)t * ld + i];
			} else if (i < (nq + nk) * d)	/* K: in place */
				e = fabsf(got[(size_t)t * ld + i] - r[i]) /
				    (fabsf(r[i]) + 1e-3f);
			else {	/* V and the padding: untouched */
				e = 0.0f;
				c += got[(size_t)t * ld + i] !=
				    a[(size_t)t * ld + i];
			}
			if (!(e <= err))
				err = e;
		}
	ok(err < 1e-5 && c == 0, "qk_rope T=%d %d+%d heads d=%d halves %d "
	    "norm %d: max relative error %.2e, %d inputs changed", T, nq, nk,
	    d, halves, norm, err, c);

	/* again from the input, K and V also stored as fp16 */
	kvx_cuda_free(da);
	da = dev(a, nr * 4);
	dk = poisoned(nkv * 2);
	dv = poisoned(nkv * 2);
	check(kvx_cuda_qk_rope(da, ld, dq, ldq, T, nq, nk, d,
	    norm ? dw : NULL, norm ? (float *)dw + d : NULL, 1e-6f, dpos,
	    theta, halves, scat ? doff : NULL, dk, dv, 0), "qk_rope store");
	back(ref, da, nr);
	back_h(kh, dk, nkv);
	back_h(vh, dv, nkv);
	for (t = 0, c = 0; t < T; t++)
		for (h = 0; h < nk; h++)
			for (i = 0; i < d; i++) {
				size_t o = (size_t)off[t * nk + h] + i;
				size_t at = (size_t)t * ld + (nq + h) * d + i;

				c += kh[o] != kvx__h2f(kvx__f2h(got[at])) ||
				    ref[at] != got[at] ||
				    vh[o] != kvx__h2f(kvx__f2h(a[at + nk * d]));
			}
	ok(c == 0, "qk_rope storing K/V %s: %d elements differ",
	    scat ? "scattered" : "packed", c);
	kvx_cuda_free(da);
	kvx_cuda_free(dq);
	kvx_cuda_free(dw);
	kvx_cuda_free(dpos);
	kvx_cuda_free(doff);
	kvx_cuda_free(dk);
	kvx_cuda_free(dv);
	free(a);
	free(got);
	free(ref);
	free(wq);
	free(q);
	free(kh);
	free(vh);
	free(pos);
	free(off);
}

static void
test_layers(int rep)
{
	int T = tap_irand(1, 40), e = 8 * tap_irand(4, 80), nh = tap_irand(1, 6);
	int d = rep % 3 == 2 ? 256 : rep % 2 ? 64 : 128, f = tap_irand(1, 300);
	int V = tap_irand(50, 400), halves = rep % 2, gelu = rep % 2;
	int win = rep % 4 < 2 ? 0 : tap_irand(1, 40);
	float scale = rep % 2 ? 16.0f : 1.0f;
	int ld = nh * d + tap_irand(0, 3) * 4, i, t, c, rows, ncol, col0, nm;
	size_t n;
	float *a, *b, *w, *ref, *got, theta = rep % 3 ? 10000.0f : 100000.0f;
	uint16_t *tab;
	int *ids;
	void *da, *dw, *dout, *dout2, *dids;
	double err;

	int ldn = e + 4 * tap_irand(0, 3);

	nm = tap_irand(1, 4);
	rows = tap_irand(1, 30);
	col0 = tap_irand(0, 200);
	ncol = col0 + rows + tap_irand(0, 5);
	n = (size_t)T * (ld + ldn + 2 * f) + (size_t)V * e +
	    (size_t)nm * rows * ncol + 4096;
	a = malloc(n * sizeof(float));
	b = malloc(n * sizeof(float));
	w = malloc(n * sizeof(float));
	ref = malloc(n * sizeof(float));
	got = malloc(n * sizeof(float));
	tab = malloc(n * sizeof(uint16_t));
	ids = malloc((size_t)T * sizeof(int));

	/* embedding */
	fill_kv(KVX_CUDA_F16, tab, w, (size_t)V * e, 2.0f);
	for (t = 0; t < T; t++)
		ids[t] = tap_irand(0, V - 1);
	da = dev(tab, (size_t)V * e * 2);
	dids = dev(ids, (size_t)T * sizeof(int));
	dout = poisoned((size_t)T * e * 4);
	check(kvx_cuda_embed(da, e, dids, T, scale, dout, 0), "embed");
	back(got, dout, (size_t)T * e);
	for (t = 0, c = 0; t < T; t++)
		for (i = 0; i < e; i++)
			c += got[(size_t)t * e + i] != w[(size_t)ids[t] * e +
			    i] * scale;
	ok(c == 0, "embed T=%d e=%d scale %g: %d elements differ", T, e,
	    scale, c);
	kvx_cuda_free(da);
	kvx_cuda_free(dids);
	kvx_cuda_free(dout);

	/* RMS norm, f32 and f16 out, rows ldn apart */
	for (i = 0; i < T * (ld > ldn ? ld : ldn); i++)
		a[i] = tap_frand() * (rep % 4 + 1);
	for (i = 0; i < e; i++)
		w[i] = tap_frand();
	for (t = 0; t < T; t++) {
		double ss = 0.0;
		float inv;

		for (i = 0; i < e; i++)
			ss += (double)a[(size_t)t * ldn + i] *
			    a[(size_t)t * ldn + i];
		inv = 1.0f / sqrtf((float)(ss / e) + 1e-5f);
		for (i = 0; i < e; i++)
			ref[(size_t)t * e + i] = a[(size_t)t * ldn + i] * inv *
			    w[i];
	}
	da = dev(a, (size_t)T * ldn * 4);
	dw = dev(w, (size_t)e * 4);
	dout = poisoned((size_t)T * e * 4);
	dout2 = poisoned((size_t)T * e * 2);
	check(kvx_cuda_rmsnorm(da, ldn, dw, T, e, 1e-5f, dout, KVX_CUDA_F32, e,
	    0), "rmsnorm");
	check(kvx_cuda_rmsnorm(da, ldn, dw, T, e, 1e-5f, dout2, KVX_CUDA_F16,
	    e, 0), "rmsnorm f16");
	back(got, dout, (size_t)T * e);
	err = relerr(got, ref, (size_t)T * e);
	ok(err < 1e-6, "rmsnorm T=%d e=%d ld=%d: relative error %.2e", T, e,
	    ldn, err);
	back_h(got, dout2, (size_t)T * e);
	err = relerr(got, ref, (size_t)T * e);
	ok(err < 1e-3, "rmsnorm to f16: relative error %.2e", err);
	kvx_cuda_free(da);
	kvx_cuda_free(dout);
	kvx_cuda_free(dout2);

	/* the same norm of rows e apart, added to a residual */
	for (t = 0; t < T; t++)
		for (i = 0; i < e; i++) {
			b[(size_t)t * e + i] = a[(size_t)t * ldn + i];
			got[(size_t)t * e + i] = tap_frand();
			ref[(size_t)t * e + i] += got[(size_t)t * e + i];
		}
	da = dev(b, (size_t)T * e * 4);
	dout = dev(got, (size_t)T * e * 4);
	check(kvx_cuda_rmsnorm_add(da, dw, T, e, 1e-5f, dout, 0),
	    "rmsnorm_add");
	back(got, dout, (size_t)T * e);
	err = relerr(got, ref, (size_t)T * e);
	ok(err < 1e-6, "rmsnorm added to a residual: relative error %.2e",
	    err);
	kvx_cuda_free(da);
	kvx_cuda_free(dw);
	kvx_cuda_free(dout);

	/* a bias on the first n of each row of ld */
	for (i = 0; i < T * ld; i++)
		b[i] = tap_frand();
	for (i = 0; i < nh * d; i++)
		w[i] = tap_frand();
	da = dev(b, (size_t)T * ld * 4);
	dw = dev(w, (size_t)nh * d * 4);
	check(kvx_cuda_bias(da, ld, T, nh * d, dw, 0), "bias");
	back(got, da, (size_t)T * ld);
	for (t = 0, c = 0; t < T; t++)
		for (i = 0; i < ld; i++)
			c += got[(size_t)t * ld + i] != b[(size_t)t * ld + i] +
			    (i < nh * d ? w[i] : 0.0f);
	ok(c == 0, "bias T=%d n=%d ld=%d: %d elements differ", T, nh * d, ld,
	    c);
	kvx_cuda_free(da);
	kvx_cuda_free(dw);

	test_qk_rope(rep, T, nh, d, halves, theta);

	/* SwiGLU, or the GELU (tanh) gate */
	for (i = 0; i < T * 2 * f; i++)
		a[i] = tap_frand() * 4.0f;
	for (t = 0; t < T; t++)
		for (i = 0; i < f; i++) {
			float gt = a[(size_t)t * 2 * f + i], act;

			if (gelu)
				act = 0.5f * gt * (1.0f + tanhf(0.7978845608f *
				    (gt + 0.044715f * gt * gt * gt)));
			else
				act = gt / (1.0f + expf(-gt));
			ref[(size_t)t * f + i] = act * a[(size_t)t * 2 * f +
			    f + i];
		}
	da = dev(a, (size_t)T * 2 * f * 4);
	dout = poisoned((size_t)T * f * 2);
	check(kvx_cuda_glu(da, T, f, gelu, dout, 0), "glu");
	back_h(got, dout, (size_t)T * f);
	err = relerr(got, ref, (size_t)T * f);
	ok(err < 1e-3, "%s T=%d f=%d: relative error %.2e (fp16 out)",
	    gelu ? "GELU gate" : "swiglu", T, f, err);
	kvx_cuda_free(da);
	kvx_cuda_free(dout);
	if (rep == 0) {
		/* past the grid's 65535 rows: two launches */
		int T2 = 65537, f2 = 3;
		float *g2 = malloc(sizeof(float) * T2 * 2 * f2);
		float *o2 = malloc(sizeof(float) * T2 * f2);

		for (i = 0; i < T2 * 2 * f2; i++)
			g2[i] = tap_frand() * 4.0f;
		da = dev(g2, sizeof(float) * T2 * 2 * f2);
		dout = poisoned((size_t)T2 * f2 * 2);
		check(kvx_cuda_glu(da, T2, f2, 0, dout, 0), "glu");
		back_h(o2, dout, (size_t)T2 * f2);
		for (t = 0, c = 0; t < T2; t++)
			for (i = 0; i < f2; i++) {
				float gt = g2[(size_t)t * 2 * f2 + i];
				float r = gt / (1.0f + expf(-gt)) *
				    g2[(size_t)t * 2 * f2 + f2 + i];

				c += !(fabsf(o2[(size_t)t * f2 + i] - r) <=
				    1e-3f * (fabsf(r) + 1e-2f));
			}
		ok(c == 0, "swiglu T=%d f=%d (two launches): %d outputs off",
		    T2, f2, c);
		kvx_cuda_free(da);
		kvx_cuda_free(dout);
		free(g2);
		free(o2);
	}

	/* causal softmax of nm matrices, rows see col0 + r + 1 columns, the
	   last win of them with a window */
	for (i = 0; i < nm * rows * ncol; i++)
		a[i] = tap_frand() * 8.0f;
	for (i = 0; i < nm * rows; i++) {
		int r = i % rows, vis = col0 + r + 1 < ncol ? col0 + r + 1 :
		    ncol, lo = win > 0 && col0 + r + 1 - win > 0 ? col0 + r +
		    1 - win : 0;
		double mx = -INFINITY, sm = 0.0;
		const float *sr = a + (size_t)i * ncol;

		for (c = lo; c < vis; c++)
			mx = sr[c] > mx ? sr[c] : mx;
		for (c = lo; c < vis; c++)
			sm += exp(sr[c] - mx);
		for (c = 0; c < ncol; c++)
			ref[(size_t)i * ncol + c] = c >= lo && c < vis ?
			    (float)(exp(sr[c] - mx) / sm) : 0.0f;
	}
	da = dev(a, (size_t)nm * rows * ncol * 4);
	dout = poisoned((size_t)nm * rows * ncol * 2);
	check(kvx_cuda_softmax_causal(da, nm, rows, ncol, col0, win, dout, 0),
	    "softmax");
	back_h(got, dout, (size_t)nm * rows * ncol);
	err = relerr(got, ref, (size_t)nm * rows * ncol);
	for (i = 0, c = 0; i < nm * rows * ncol; i++)
		c += ref[i] == 0.0f && got[i] != 0.0f;
	ok(err < 1e-3 && c == 0, "causal softmax %dx%dx%d from %d, window "
	    "%d: relative error %.2e, %d masked entries nonzero", nm, rows,
	    ncol, col0, win, err, c);
	kvx_cuda_free(da);
	kvx_cuda_free(dout);

	free(a);
	free(b);
	free(w);
	free(ref);
	free(got);
	free(tab);
	free(ids);
}

/*
 * The hybrid split against sel_hybrid_split: h heads of n candidates
 * (with a gap of c0 scores before them and ragged strides), scores drawn
 * from few values on odd repetitions so that thresholds fall on ties,
 * totals and floors over their whole ranges and past them; and the
 * layout the split writes when asked.
 */
static void
test_hybrid(int rep)
{
	static const int hs[] = { 1, 3, 8, 9, 17, 64 };
	int h = hs[rep % 6], n = tap_irand(0, rep % 3 == 0 ? 40 : 3000);
	int c0 = tap_irand(0, 5), total, fl, i, t, bad = 0, badl = 0;
	long long *soff = malloc(sizeof(long long) * h), at = 0, base = 12345;
	int *want = malloc(sizeof(int) * h), *got = malloc(sizeof(int) * h);
	int *gk = malloc(sizeof(int) * h);
	long long *gd = malloc(sizeof(long long) * h), pos;
	const float **pp = malloc(sizeof(float *) * h);
	float *sc;
	void *dsc, *dsoff, *dcnt, *dtmp, *dkeep, *ddst;
	struct kvx_cuda_hlayout hl = { 7, 0, 3, 5, 0, 64 };
	size_t ts;

	for (i = 0; i < h; i++) {
		soff[i] = at;
		at += c0 + n + tap_irand(0, 9);
	}
	ts = (size_t)at;
	sc = malloc(sizeof(float) * (ts + 1));
	for (t = 0; t < (int)ts; t++)
		sc[t] = rep % 2 ? (float)tap_irand(0, 6) * 0.5f : tap_frand();
	for (i = 0; i < h; i++)
		pp[i] = sc + soff[i] + c0;
	switch (rep % 4) {
	case 0: total = tap_irand(0, h * n + 20) - 10; break;
	case 1: total = h * n; break;
	default: total = tap_irand(0, h * n / 2 + 1);
	}
	fl = tap_irand(-2, n + 3);
	if (rep % 5 == 0)
		fl = total / h;
	sel_hybrid_split(pp, h, n, total, fl, want);
	dsc = dev(sc, sizeof(float) * (ts + 1));
	dsoff = dev(soff, sizeof(long long) * h);
	dcnt = poisoned(sizeof(int) * h);
	dtmp = poisoned(sizeof(int) * 2 * h);
	dkeep = poisoned(sizeof(int) * h);
	ddst = poisoned(sizeof(long long) * h);
	hl.nmax = n + tap_irand(0, 7);
	hl.base = base;
	check(kvx_cuda_hybrid_split(dsc, dsoff, c0, h, n, total, fl, dcnt,
	    dtmp, &hl, ddst, dkeep, NULL), "hybrid split");
	check(kvx_cuda_sync(), "hybrid split run");
	check(kvx_cuda_d2h(got, dcnt, sizeof(int) * h), "copy back");
	check(kvx_cuda_d2h(gk, dkeep, sizeof(int) * h), "copy back");
	check(kvx_cuda_d2h(gd, ddst, sizeof(long long) * h), "copy back");
	pos = base;
	for (i = 0; i < h; i++) {
		int kp = want[i] + hl.add > hl.nmax ? hl.nmax : want[i] + hl.add;

		bad += got[i] != want[i];
		badl += gk[i] != kp || gd[i] != pos;
		pos += (long long)((kp < hl.minc ? hl.minc : kp) + hl.headroom) *
		    hl.row;
	}
	ok(bad == 0 && badl == 0, "hybrid split h=%d n=%d total=%d floor=%d "
	    "%s: %d counts and %d layouts differ", h, n, total, fl,
	    rep % 2 ? "ties" : "distinct", bad, badl);
	/* without a layout: counts only */
	kvx_cuda_memset(dcnt, 0xff, sizeof(int) * h);
	check(kvx_cuda_hybrid_split(dsc, dsoff, c0, h, n, total, fl, dcnt,
	    dtmp, NULL, NULL, NULL, NULL), "hybrid split");
	check(kvx_cuda_sync(), "hybrid split run");
	check(kvx_cuda_d2h(got, dcnt, sizeof(int) * h), "copy back");
	ok(memcmp(got, want, sizeof(int) * h) == 0, "hybrid split h=%d n=%d, "
	    "counts only", h, n);
	kvx_cuda_free(dsc);
	kvx_cuda_free(dsoff);
	kvx_cuda_free(dcnt);
	kvx_cuda_free(dtmp);
	kvx_cuda_free(dkeep);
	kvx_cuda_free(ddst);
	free(soff);
	free(want);
	free(got);
	free(gk);
	free(gd);
	free(pp);
	free(sc);
}

/*
 * Kernel 1b: Expected Attention, statistics and scores, against
 * sel_ea_stats and sel_ea_score.  The queries sit as the forward keeps
 * them (token by token, heads side by side); the scores are checked on
 * the CPU's statistics, so that each kernel answers for itself.
 */
static void
test_ea(int rep)
{
	int nseg = tap_irand(1, 4), g = tap_irand(1, 4), H, n, nq, p0, F;
	int d = rep % 4 == 0 ? 64 : rep % 4 == 1 ? 128 : rep % 4 == 2 ? 256 :
	    2 * tap_irand(1, 24);
	int cov = rep % 3, gqa = rep & 1, vnorm = (rep / 2) % 2;
	int dtype = (rep / 3) % 3, esz = dtype == KVX_CUDA_F32 ? 4 : 2;
	int s, h, j, t, pw, s0, nc, bad = 0;
	size_t cs, tk;
	float theta = rep % 2 ? 10000.0f : 500000.0f;
	float *q, *qh, *mu, *cv, *gmu, *gcv, *kf, *vf, *ks, *vs, *tmp;
	float *sc, *gsc;
	int32_t *pos;
	void *kh, *vh, *dq, *dmu, *dcv, *dscr, *dk, *dv, *dsc, *dmuc, *dcvc;
	double e, worst = 0.0;
	sel_ea ea;

	H = nseg * g;
	n = tap_irand(2, rep < 4 ? 200 : 3000);
	/* every fifth repetition the whole prompt (queries: all), which
	 * past 256 queries takes the moments' kernels */
	nq = rep % 5 == 4 ? n : tap_irand(1, n < KVX_WINDOW_MAX ? n :
	    KVX_WINDOW_MAX);
	p0 = n - nq;
	F = rep % 3 == 0 ? 1 : rep % 3 == 1 ? 512 : 5000;
	pw = tap_irand(1, n - 1 < 32 ? n - 1 : 32);
	nc = n - pw;
	s0 = tap_irand(0, nc - 1 < 5 ? nc - 1 : 5);
	cs = cov == PLAN_COV_DIAG ? (size_t)d : (size_t)d * d;
	tk = (size_t)n * nseg * d;
	q = malloc(sizeof(float) * nq * H * d);
	qh = malloc(sizeof(float) * nq * d);
	pos = malloc(sizeof(int32_t) * nq);
	mu = malloc(sizeof(float) * H * d);
	cv = malloc(sizeof(float) * H * d * d);
	gmu = malloc(sizeof(float) * H * d);
	gcv = malloc(sizeof(float) * H * d * d);
	kf = malloc(sizeof(float) * tk);
	vf = malloc(sizeof(float) * tk);
	kh = malloc((size_t)esz * tk);
	vh = malloc((size_t)esz * tk);
	ks = malloc(sizeof(float) * n * d);
	vs = malloc(sizeof(float) * n * d);
	tmp = malloc(sizeof(float) * n);
	sc = malloc(sizeof(float) * nseg * nc);
	gsc = malloc(sizeof(float) * nseg * nc);
	for (t = 0; t < nq * H * d; t++)
		q[t] = tap_frand() * 2.0f + 0.5f;
	for (j = 0; j < nq; j++)
		pos[j] = p0 + j;
	fill_kv(dtype, kh, kf, tk, 2.0f);
	fill_kv(dtype, vh, vf, tk, 1.0f);
	ea.future = F;
	ea.cov = cov;
	ea.vnorm = vnorm;
	ea.theta = theta;
	ea.halves = (rep / 4) % 2;

	/* statistics: query head h of token j at q + (j H + h) d */
	for (h = 0; h < H; h++) {
		for (j = 0; j < nq; j++)
			memcpy(qh + (size_t)j * d, q + ((size_t)j * H + h) * d,
			    sizeof(float) * d);
		sel_ea_stats(qh, pos, nq, d, n, &ea, mu + (size_t)h * d,
		    cv + h * cs);
	}
	dq = dev(q, sizeof(float) * nq * H * d);
	dmu = poisoned(sizeof(float) * H * d);
	dcv = poisoned(sizeof(float) * H * cs);
	dscr = poisoned(kvx_cuda_ea_stats_scratch(H, nq, d));
	check(kvx_cuda_ea_stats(dq, d, (long long)H * d, H, nq, p0, n, F,
	    theta, ea.halves, d, cov, dmu, dcv, dscr, NULL), "ea_stats");
	check(kvx_cuda_sync(), "ea_stats sync");
	check(kvx_cuda_d2h(gmu, dmu, sizeof(float) * H * d), "copy back");
	check(kvx_cuda_d2h(gcv, dcv, sizeof(float) * H * cs), "copy back");
	e = relerr(gmu, mu, (size_t)H * d);
	ok(e < 1e-5, "ea stats H=%d nq=%d d=%d F=%d %s: mean, relative error "
	    "%.2e", H, nq, d, F, ea.halves ? "halves" : "pairs", e);
	if (cov != PLAN_COV_NONE) {
		e = relerr(gcv, cv, H * cs);
		ok(e < 1e-4, "ea stats cov %d: covariance, relative error "
		    "%.2e", cov, e);
	}

	/* scores on the CPU's statistics; segment s's rows at s*d of rows
	   nseg*d apart, as the prefill's K/V scratch */
	for (s = 0; s < nseg; s++) {
		for (t = 0; t < n; t++) {
			memcpy(ks + (size_t)t * d, kf + ((size_t)t * nseg + s) *
			    d, sizeof(float) * d);
			memcpy(vs + (size_t)t * d, vf + ((size_t)t * nseg + s) *
			    d, sizeof(float) * d);
		}
		sel_ea_score(mu + (size_t)s * g * d, cv + s * g * cs, ks, vs,
		    n, nc, s0, g, d, &ea, gqa, tmp, sc + (size_t)s * nc);
	}
	dmuc = dev(mu, sizeof(float) * H * d);
	dcvc = dev(cv, sizeof(float) * H * cs);
	dk = dev(kh, (size_t)esz * tk);
	dv = dev(vh, (size_t)esz * tk);
	dsc = poisoned(sizeof(float) * nseg * nc);
	kvx_cuda_free(dscr);
	dscr = poisoned(kvx_cuda_ea_scratch(nseg, g, n, d));
	check(kvx_cuda_ea_score(dmuc, dcvc, cov, NULL, 0, dk, dv, dtype, nseg,
	    n, nc, s0, g, d, nseg * d, vnorm, gqa, dscr, dsc, nc, NULL),
	    "ea_score");
	check(kvx_cuda_sync(), "ea_score sync");
	check(kvx_cuda_d2h(gsc, dsc, sizeof(float) * nseg * nc), "copy back");
	for (s = 0; s < nseg; s++) {
		e = logerr(gsc + (size_t)s * nc, sc + (size_t)s * nc, nc);
		if (!(e < 1e-4))
			bad++;
		if (e > worst)
			worst = e;
	}
	ok(bad == 0, "ea score %s nseg=%d g=%d n=%d d=%d cov %d %s%s s0=%d: "
	    "worst error of the logarithms %.2e", dtname[dtype], nseg, g, n,
	    d, cov,
	    gqa ? "max" : "mean", vnorm ? " vnorm" : "", s0, worst);

	/*
	 * A full covariance applied as the centred, rotated queries that the
	 * statistics leave in their scratch (the covariance not formed):
	 * the same scores from the GPU's own statistics.  The mean of
	 * squares in float against the CPU's covariance in double moves a
	 * logit of k' Sigma k / 2d by about 1e-6 of its size, which the
	 * softmax turns into an error of that order times the logits'
	 * spread: 1e-3 leaves room for logits of a few hundred.
	 */
	if (cov == PLAN_COV_FULL && nq <= 256) {
		void *dw = poisoned(kvx_cuda_ea_stats_scratch(H, nq, d));

		check(kvx_cuda_ea_stats(dq, d, (long long)H * d, H, nq, p0, n,
		    F, theta, ea.halves, d, cov, dmu, NULL, dw, NULL),
		    "ea_stats without covariance");
		check(kvx_cuda_ea_score(dmu, NULL, cov, dw, nq, dk, dv, dtype,
		    nseg, n, nc, s0, g, d, nseg * d, vnorm, gqa, dscr, dsc, nc,
		    NULL), "ea_score from the queries");
		check(kvx_cuda_sync(), "ea_score sync");
		check(kvx_cuda_d2h(gsc, dsc, sizeof(float) * nseg * nc),
		    "copy back");
		e = logerr(gsc, sc, (size_t)nseg * nc);
		ok(e < 1e-3, "ea score from the %d queries %s n=%d d=%d: "
		    "error of the logarithms %.2e", nq, dtname[dtype], n, d, e);
		kvx_cuda_free(dw);
	}
	kvx_cuda_free(dq);
	kvx_cuda_free(dmu);
	kvx_cuda_free(dcv);
	kvx_cuda_free(dscr);
	kvx_cuda_free(dmuc);
	kvx_cuda_free(dcvc);
	kvx_cuda_free(dk);
	kvx_cuda_free(dv);
	kvx_cuda_free(dsc);
	free(q);
	free(qh);
	free(pos);
	free(mu);
	free(cv);
	free(gmu);
	free(gcv);
	free(kf);
	free(vf);
	free(kh);
	free(vh);
	free(ks);
	free(vs);
	free(tmp);
	free(sc);
	free(gsc);
}

/*
 * Kernel 1c: Expected Attention's statistics of the whole prompt (past
 * 256 queries: the moments' kernels, the full covariance's as a tiled
 * product whose tiles cover d = 64, 128, 256 and widths between, partly
 * filled), against sel_ea_stats; the sums of every product carried to
 * each covariance, as a kept prefill's are (moments of the full
 * covariance, then the plan's); and the tiled logits of a full
 * covariance on keys of odd length, against sel_ea_score.
 */
static void
test_ea_all(int rep)
{
	int d = rep % 4 == 0 ? 64 : rep % 4 == 1 ? 128 : rep % 4 == 2 ? 256 :
	    2 * tap_irand(1, 128);
	int H = tap_irand(1, 3), cov = rep % 3, nq, h, j, t, nseg, g, n, nc;
	int s0, dtype = rep % 3, esz = dtype == KVX_CUDA_F32 ? 4 : 2, s, bad;
	float theta = rep % 2 ? 10000.0f : 500000.0f, *q, *qh, *mu, *cv;
	float *gmu, *gcv, *kf, *vf, *ks, *vs, *tmp, *sc, *gsc;
	int32_t *pos;
	size_t cs;
	void *dq, *dmu, *dcv, *dacc, *kh, *vh, *dk, *dv, *dsc, *dscr;
	double e, worst = 0.0;
	sel_ea ea;

	nq = tap_irand(257, rep < 4 ? 600 : 3000);
	cs = cov == PLAN_COV_DIAG ? (size_t)d : (size_t)d * d;
	q = malloc(sizeof(float) * nq * H * d);
	qh = malloc(sizeof(float) * nq * d);
	pos = malloc(sizeof(int32_t) * nq);
	mu = malloc(sizeof(float) * H * d);
	cv = malloc(sizeof(float) * H * d * d);
	gmu = malloc(sizeof(float) * H * d);
	gcv = malloc(sizeof(float) * H * d * d);
	/* a mean well away from zero, as queries' often is */
	for (t = 0; t < nq * H * d; t++)
		q[t] = tap_frand() * 2.0f + (t % d) % 7 * 0.5f;
	for (j = 0; j < nq; j++)
		pos[j] = j;
	ea.future = rep % 2 ? 1 : 512;
	ea.cov = cov;
	ea.vnorm = rep & 1;
	ea.theta = theta;
	ea.halves = (rep / 4) % 2;
	for (h = 0; h < H; h++) {
		for (j = 0; j < nq; j++)
			memcpy(qh + (size_t)j * d, q + ((size_t)j * H + h) * d,
			    sizeof(float) * d);
		sel_ea_stats(qh, pos, nq, d, nq, &ea, mu + (size_t)h * d,
		    cv + h * cs);
	}
	dq = dev(q, sizeof(float) * nq * H * d);
	dmu = poisoned(sizeof(float) * H * d);
	dcv = poisoned(sizeof(float) * H * cs);
	dacc = poisoned(kvx_cuda_ea_stats_scratch(H, nq, d));
	check(kvx_cuda_ea_stats(dq, d, (long long)H * d, H, nq, 0, nq,
	    ea.future, theta, ea.halves, d, cov, dmu, dcv, dacc, NULL),
	    "ea_stats");
	check(kvx_cuda_sync(), "ea_stats sync");
	check(kvx_cuda_d2h(gmu, dmu, sizeof(float) * H * d), "copy back");
	check(kvx_cuda_d2h(gcv, dcv, sizeof(float) * H * cs), "copy back");
	e = relerr(gmu, mu, (size_t)H * d);
	ok(e < 1e-5, "ea stats of all %d queries H=%d d=%d %s: mean, "
	    "relative error %.2e", nq, H, d, ea.halves ? "halves" : "pairs", e);
	if (cov != PLAN_COV_NONE) {
		e = relerr(gcv, cv, H * cs);
		ok(e < 1e-4, "ea stats of all %d queries d=%d cov %d: "
		    "covariance, relative error %.2e", nq, d, cov, e);
	}
	/* every product's sums, carried to the plan's covariance */
	kvx_cuda_free(dacc);
	dacc = poisoned(kvx_cuda_ea_moments_bytes(H, d));
	check(kvx_cuda_ea_moments(dq, d, (long long)H * d, H, nq, 0, theta,
	    ea.halves, d, PLAN_COV_FULL, dacc, NULL), "ea_moments");
	check(kvx_cuda_ea_carry(dacc, H, nq, nq, ea.future, theta, ea.halves,
	    d, cov, dmu, dcv, NULL), "ea_carry");
	check(kvx_cuda_sync(), "ea_carry sync");
	check(kvx_cuda_d2h(gmu, dmu, sizeof(float) * H * d), "copy back");
	check(kvx_cuda_d2h(gcv, dcv, sizeof(float) * H * cs), "copy back");
	e = relerr(gmu, mu, (size_t)H * d);
	worst = cov != PLAN_COV_NONE ? relerr(gcv, cv, H * cs) : 0.0;
	ok(e < 1e-5 && worst < 1e-4, "ea moments of every product d=%d, "
	    "carried to cov %d: relative errors, mean %.2e, covariance %.2e",
	    d, cov, e, worst);
	worst = 0.0;
	kvx_cuda_free(dq);
	kvx_cuda_free(dmu);
	kvx_cuda_free(dcv);
	kvx_cuda_free(dacc);

	/* the tiled logits on odd d: the CPU's mean and covariance of
	 * random queries, then keys nseg * d apart */
	d = 2 * tap_irand(0, 127) + 1;
	nseg = tap_irand(1, 3);
	g = tap_irand(1, 4);
	n = tap_irand(2, 3000);
	nc = n - tap_irand(0, n - 1 < 32 ? n - 1 : 32);
	s0 = tap_irand(0, nc - 1 < 5 ? nc - 1 : 5);
	ea.cov = PLAN_COV_FULL;
	free(mu);
	free(cv);
	mu = malloc(sizeof(float) * nseg * g * d);
	cv = malloc(sizeof(float) * nseg * g * d * d);
	for (t = 0; t < nseg * g * d; t++)
		mu[t] = tap_frand() - 0.5f;
	for (h = 0; h < nseg * g; h++)
		for (j = 0; j < d; j++)
			for (t = 0; t <= j; t++) {
				float x = (tap_frand() - 0.5f) * (t == j ?
				    4.0f : 0.5f);

				cv[((size_t)h * d + j) * d + t] = x;
				cv[((size_t)h * d + t) * d + j] = x;
			}
	kf = malloc(sizeof(float) * n * nseg * d);
	vf = malloc(sizeof(float) * n * nseg * d);
	kh = malloc((size_t)esz * n * nseg * d);
	vh = malloc((size_t)esz * n * nseg * d);
	ks = malloc(sizeof(float) * n * d);
	vs = malloc(sizeof(float) * n * d);
	tmp = malloc(sizeof(float) * n);
	sc = malloc(sizeof(float) * nseg * nc);
	gsc = malloc(sizeof(float) * nseg * nc);
	fill_kv(dtype, kh, kf, (size_t)n * nseg * d, 2.0f);
	fill_kv(dtype, vh, vf, (size_t)n * nseg * d, 1.0f);
	for (s = 0; s < nseg; s++) {
		for (t = 0; t < n; t++) {
			memcpy(ks + (size_t)t * d, kf + ((size_t)t * nseg + s) *
			    d, sizeof(float) * d);
			memcpy(vs + (size_t)t * d, vf + ((size_t)t * nseg + s) *
			    d, sizeof(float) * d);
		}
		sel_ea_score(mu + (size_t)s * g * d, cv + (size_t)s * g * d *
		    d, ks, vs, n, nc, s0, g, d, &ea, rep & 1, tmp, sc +
		    (size_t)s * nc);
	}
	dmu = dev(mu, sizeof(float) * nseg * g * d);
	dcv = dev(cv, sizeof(float) * nseg * g * d * d);
	dk = dev(kh, (size_t)esz * n * nseg * d);
	dv = dev(vh, (size_t)esz * n * nseg * d);
	dsc = poisoned(sizeof(float) * nseg * nc);
	dscr = poisoned(kvx_cuda_ea_scratch(nseg, g, n, d));
	check(kvx_cuda_ea_score(dmu, dcv, PLAN_COV_FULL, NULL, 0, dk, dv,
	    dtype, nseg, n, nc, s0, g, d, nseg * d, ea.vnorm, rep & 1, dscr,
	    dsc, nc, NULL), "ea_score");
	check(kvx_cuda_sync(), "ea_score sync");
	check(kvx_cuda_d2h(gsc, dsc, sizeof(float) * nseg * nc), "copy back");
	for (bad = 0, s = 0; s < nseg; s++) {
		e = logerr(gsc + (size_t)s * nc, sc + (size_t)s * nc, nc);
		if (!(e < 1e-4))
			bad++;
		if (e > worst)
			worst = e;
	}
	ok(bad == 0, "ea score, full covariance %s nseg=%d g=%d n=%d d=%d: "
	    "worst error of the logarithms %.2e", dtname[dtype], nseg, g, n,
	    d, worst);
	kvx_cuda_free(dmu);
	kvx_cuda_free(dcv);
	kvx_cuda_free(dk);
	kvx_cuda_free(dv);
	kvx_cuda_free(dsc);
	kvx_cuda_free(dscr);
	free(q);
	free(qh);
	free(pos);
	free(mu);
	free(cv);
	free(gmu);
	free(gcv);
	free(kf);
	free(vf);
	free(kh);
	free(vh);
	free(ks);
	free(vs);
	free(tmp);
	free(sc);
	free(gsc);
}

/*
 * Naive KVzip score in double: the largest softmax weight that any of the
 * last w of the T query rows of g heads (head i's row r at q + (i*T +
 * r)*d, at key position p0 + r, seeing the keys up to its own and, with
 * win > 0, only the last win of them) gives each of the p0 prompt keys,
 * max-merged into ref.  lg holds p0 + T doubles.
 */
static void
kvzip_naive(const float *q, const float *k, int g, int T, int w, int p0,
    int d, int win, float scale, double *lg, float *ref)
{
	int i, r, t, lo, pos, c;
	double mx, sum, p;

	for (i = 0; i < g; i++)
		for (r = T - w; r < T; r++) {
			pos = p0 + r;
			lo = win > 0 && pos - win + 1 > 0 ? pos - win + 1 : 0;
			mx = -INFINITY;
			for (t = lo; t <= pos; t++) {
				lg[t] = 0.0;
				for (c = 0; c < d; c++)
					lg[t] += (double)q[((size_t)i * T + r) *
					    d + c] * k[(size_t)t * d + c];
				lg[t] *= scale;
				if (lg[t] > mx)
					mx = lg[t];
			}
			for (sum = 0.0, t = lo; t <= pos; t++)
				sum += exp(lg[t] - mx);
			for (t = lo; t < p0; t++) {
				p = exp(lg[t] - mx) / sum;
				if (p > ref[t])
					ref[t] = (float)p;
			}
		}
}

/* Elements of a that differ from b by more than 2e-5 relative (1e-7
 * absolute for weights near 0), and the largest relative difference. */
static int
kvzip_diff(const float *a, const float *b, int n, double *worst)
{
	int t, bad = 0;
	double e;

	for (t = 0; t < n; t++) {
		if (a[t] != a[t]) {
			bad++;
			*worst = INFINITY;
			continue;
		}
		e = fabs((double)a[t] - b[t]);
		if (e > 2e-5 * fabs((double)b[t]) + 1e-7)
			bad++;
		if (b[t] > 1e-6 && e / b[t] > *worst)
			*worst = e / b[t];
	}
	return bad;
}

/*
 * Kernel 1c: KVzip's maximum over the repeat pass's queries, given the
 * logits of one query block of the attention as gpu__attn lays them out
 * (g matrices of T rows, columns from key k0 on, the masked ones
 * computed too, as the GEMM writes them), against a naive double loop
 * and against kvzip_score, the CPU twin.  Shapes: SmolLM2's group of 3
 * (d 64), Qwen's of 7, a sliding-window layer (Gemma's group of 4, d
 * 256, windows of 24 to 600) whose block starts its columns past the
 * window, and one head of odd size with fewer prompt keys than queries.
 * The request's rows before the chunk's w do not score, and the scores
 * start from what earlier chunks left.
 */
static void
test_kvzip(int rep)
{
	int kind = rep % 4;
	int g = kind == 0 ? 3 : kind == 1 ? 7 : kind == 2 ? 4 : 1;
	int d = kind == 2 ? 256 : kind == 3 ? 2 * tap_irand(1, 24) : 64;
	int win = kind == 2 ? (rep & 4 ? 24 : tap_irand(40, 600)) : 0;
	int p0 = kind == 3 ? tap_irand(1, 40) : tap_irand(30, rep < 8 ? 600 :
	    3000);
	int w = rep == 0 ? KVX_WINDOW_MAX : tap_irand(1, KVX_WINDOW_MAX);
	int req = rep == 1 ? 0 : tap_irand(1, 60);
	int T = req + w, m = p0 + T, k0, nk, i, r, t, c, e, bad, bad2;
	float scale = 1.0f / sqrtf((float)d), amp, a;
	float *q, *k, *s, *qw, *tmp, *init, *ref, *twin, *got;
	double *lg, worst = 0.0, worst2 = 0.0;
	void *ds, *dscr, *dsc;

	k0 = win > 0 && p0 - win + 1 > 0 ? p0 - win + 1 : 0;
	nk = m - k0;
	/* logits of standard deviation amp^2 / 3 (the product of two
	   uniform entries, summed over d and scaled): 1.5, or 3 for every
	   other repetition, as real attention has */
	amp = sqrtf(4.5f * (float)(1 + rep % 2));
	q = malloc(sizeof(float) * g * T * d);
	k = malloc(sizeof(float) * m * d);
	s = malloc(sizeof(float) * g * T * nk);
	qw = malloc(sizeof(float) * g * w * d);
	tmp = malloc(sizeof(float) * w * m);
	init = malloc(sizeof(float) * p0);
	ref = malloc(sizeof(float) * p0);
	twin = malloc(sizeof(float) * p0);
	got = malloc(sizeof(float) * p0);
	lg = malloc(sizeof(double) * m);
	for (i = 0; i < g * T * d; i++)
		q[i] = tap_frand() * amp;
	for (i = 0; i < m * d; i++)
		k[i] = tap_frand() * amp;
	/* what earlier chunks left: zeros and some weights */
	for (t = 0; t < p0; t++)
		init[t] = t % 3 == 0 ? 0.0f : 0.02f * (float)tap_drand();
	for (i = 0; i < g; i++)
		for (r = 0; r < T; r++)
			for (c = 0; c < nk; c++) {
				for (a = 0.0f, e = 0; e < d; e++)
					a += q[((size_t)i * T + r) * d + e] *
					    k[(size_t)(k0 + c) * d + e];
				s[((size_t)i * T + r) * nk + c] = a * scale;
			}
	memcpy(ref, init, sizeof(float) * p0);
	memcpy(twin, init, sizeof(float) * p0);
	kvzip_naive(q, k, g, T, w, p0, d, win, scale, lg, ref);
	/* the twin takes the chunk's queries of a head, w x d */
	for (i = 0; i < g; i++) {
		memcpy(qw, q + ((size_t)i * T + req) * d, sizeof(float) * w * d);
		kvzip_score(qw, k, m, p0, w, 1, d, win, scale, tmp, twin);
	}
	ds = dev(s, sizeof(float) * g * T * nk);
	dscr = poisoned(kvx_cuda_kvzip_scratch(g, T));
	dsc = dev(init, sizeof(float) * p0);
	if (p0 - k0 > 0)
		check(kvx_cuda_kvzip_max(ds, g, T, nk, p0 - k0, win, req,
		    p0 - k0, dscr, (float *)dsc + k0, NULL), "kvzip_max");
	check(kvx_cuda_sync(), "kvzip_max sync");
	check(kvx_cuda_d2h(got, dsc, sizeof(float) * p0), "copy back");
	bad = kvzip_diff(got, ref, p0, &worst);
	bad2 = kvzip_diff(twin, ref, p0, &worst2);
	ok(bad == 0 && bad2 == 0, "kvzip max %d: g %d d %d, %d prompt keys, "
	    "%d request + %d chunk queries, window %d (columns from %d): "
	    "%d GPU and %d twin weights off the naive ones (worst relative "
	    "%.1e, %.1e)", rep, g, d, p0, req, w, win, k0, bad, bad2, worst,
	    worst2);
	free(q);
	free(k);
	free(s);
	free(qw);
	free(tmp);
	free(init);
	free(ref);
	free(twin);
	free(got);
	free(lg);
	kvx_cuda_free(ds);
	kvx_cuda_free(dscr);
	kvx_cuda_free(dsc);
}

int
main(void)
{
	const char *e = getenv("KVX_TEST_REPS");
	int rep, nrep = e != NULL && atoi(e) > 0 ? atoi(e) : 18;

	tap_rng = 0x2545f4914f6cdd1dULL;
	if (!kvx_cuda_available())
		tap_skip_all("no CUDA device");
	/* fewer repetitions for runs under compute-sanitizer */
	for (rep = 0; rep < nrep; rep++)
		test_score_select(rep);
	for (rep = 0; rep < nrep; rep++)
		test_ea(rep);
	for (rep = 0; rep < nrep; rep++)
		test_ea_all(rep);
	for (rep = 0; rep < nrep; rep++)
		test_kvzip(rep);
	for (rep = 0; rep < 4 * nrep; rep++)
		test_hybrid(rep);
	if (kvx_cuda_hybrid_split(NULL, NULL, 0, 65, 1, 1, 0, NULL, NULL, NULL,
	    NULL, NULL, NULL) != KVX_CUDA_EINVAL)
		ok(0, "hybrid split takes 65 heads");
	else
		ok(1, "hybrid split refuses 65 heads");
	for (rep = 0; rep < nrep && rep < 16; rep++)
		test_attn(rep);
	test_attn_plan();
	for (rep = 0; rep < nrep; rep++)
		test_layers(rep);
	return tap_done();
}
