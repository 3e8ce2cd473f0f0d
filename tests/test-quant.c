/*
 * test-quant.c - dequantisation and quantised matrix-vector products.
 * SPDX-License-Identifier: MIT
 *
 * References: an element-at-a-time dequantiser written here from the block
 * layouts (indexing each element directly, unlike the block loops of
 * quant.c), golden values from the gguf Python package
 * (tests/golden/gguf-dequant.txt, tools/golden-dequant.py), and double
 * precision dot products over dequantised weights.
 */
#include "config.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"
#include "tap.h"
#include "util.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* xorshift64* */
static uint64_t
rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

/* Uniform in [-1, 1). */
static double
urnd(void)
{
	return (double)(rnd() >> 11) / 4503599627370496.0 - 1.0;
}

/* --- independent reference ----------------------------------------------- */

/* IEEE half to double, by its definition. */
static double
ref_half(const uint8_t *p)
{
	unsigned h = p[0] | p[1] << 8;
	int e = (h >> 10) & 31, m = h & 1023;
	double v;

	if (e == 0)
		v = ldexp(m, -24);
	else if (e == 31)
		v = m ? NAN : INFINITY;
	else
		v = ldexp(1024 + m, e - 25);
	return (h & 0x8000) ? -v : v;
}

/* 6-bit scale (want_min 0) or min (1) of sub-block s of a K-quant. */
static int
ref_k6(const uint8_t *sc, int s, int want_min)
{
	int lo, hi;

	if (s < 4)
		return sc[s + 4 * want_min] & 63;
	/* Bytes 8..11: low four bits of scale (low nibble) and min (high);
	 * their top two bits sit above the 6-bit values of bytes 0..7. */
	lo = want_min ? sc[8 + s - 4] >> 4 : sc[8 + s - 4] & 15;
	hi = sc[s - 4 + 4 * want_min] >> 6;
	return lo | hi << 4;
}

/* Nibble j (0..31) of a 16-byte 4-bit array in ggml order. */
static int
ref_nib(const uint8_t *qs, int j)
{
	return j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
}

/* Element j of one block of type at b. */
static double
ref_elem(int type, const uint8_t *b, int j)
{
	uint32_t qh, u;
	float f;
	int s, nib;

	switch (type) {
	case GGML_F32:
		memcpy(&f, b, 4);
		return f;
	case GGML_F16:
		return ref_half(b);
	case GGML_BF16:
		u = (uint32_t)(b[0] | b[1] << 8) << 16;
		memcpy(&f, &u, 4);
		return f;
	case GGML_Q4_0:
		return ref_half(b) * (ref_nib(b + 2, j) - 8);
	case GGML_Q4_1:
		return ref_half(b) * ref_nib(b + 4, j) + ref_half(b + 2);
	case GGML_Q5_0:
		memcpy(&qh, b + 2, 4);
		return ref_half(b) * ((ref_nib(b + 6, j) |
		    (int)((qh >> j) & 1) << 4) - 16);
	case GGML_Q5_1:
		memcpy(&qh, b + 4, 4);
		return ref_half(b) * (ref_nib(b + 8, j) |
		    (int)((qh >> j) & 1) << 4) + ref_half(b + 2);
	case GGML_Q8_0:
		return ref_half(b) * (int8_t)b[2 + j];
	case GGML_Q8_1:
		return ref_half(b) * (int8_t)b[4 + j];
	case GGML_Q4_K:
	case GGML_Q5_K:
		s = j / 32;
		u = type == GGML_Q4_K ? 16 : 48;	/* start of qs */
		nib = b[u + 32 * (s / 2) + j % 32];
		nib = s % 2 ? nib >> 4 : nib & 15;
		if (type == GGML_Q5_K)
			nib |= ((b[16 + j % 32] >> s) & 1) << 4;
		return ref_half(b) * ref_k6(b + 4, s, 0) * nib -
		    ref_half(b + 2) * ref_k6(b + 4, s, 1);
	case GGML_Q6_K: {
		int h = j / 128, k = (j % 128) / 32, l = j % 32;
		int lo = b[64 * h + l + 32 * (k & 1)];

		lo = k < 2 ? lo & 15 : lo >> 4;
		nib = lo | ((b[128 + 32 * h + l] >> (2 * k)) & 3) << 4;
		return ref_half(b + 208) * (int8_t)b[192 + j / 16] *
		    (nib - 32);
	}
	}
	return NAN;
}

/* Dequantises n elements with ref_elem. */
static void
ref_dequant(int type, const uint8_t *src, double *dst, size_t n)
{
	size_t be = (size_t)ggml_type_block_elems(type);
	size_t bb = ggml_type_block_bytes(type), i;

	for (i = 0; i < n; i++)
		dst[i] = ref_elem(type, src + i / be * bb, (int)(i % be));
}

/* Writes a binary16 with value v (truncated) at p. */
static void
put_half(uint8_t *p, float v)
{
	uint16_t h = kvx__f2h(v);

	memcpy(p, &h, 2);
}

/*
 * Fills nb random blocks of type; the half-precision scale fields get
 * finite values, cycling through zero, negative and large ones.
 */
static void
random_blocks(int type, uint8_t *p, size_t nb)
{
	static const float edge[] = { 0.0f, -0.03f, 0.0125f, 2.5f, -1.0f };
	size_t bb = ggml_type_block_bytes(type), i, j;
	int hoff[2] = { -1, -1 };
	float f;

	for (i = 0; i < nb * bb; i++)
		p[i] = (uint8_t)(rnd() >> 32);
	switch (type) {
	case GGML_F32:
		for (i = 0; i < nb; i++) {
			f = (float)urnd();
			memcpy(p + 4 * i, &f, 4);
		}
		return;
	case GGML_F16:
		for (i = 0; i < nb; i++)
			put_half(p + 2 * i, (float)urnd());
		return;
	case GGML_BF16:
		for (i = 0; i < nb; i++) {
			uint32_t u;

			f = (float)(urnd() * 100);
			memcpy(&u, &f, 4);
			p[2 * i] = (uint8_t)(u >> 16);
			p[2 * i + 1] = (uint8_t)(u >> 24);
		}
		return;
	case GGML_Q4_0: case GGML_Q5_0: case GGML_Q8_0:
		hoff[0] = 0;
		break;
	case GGML_Q4_1: case GGML_Q5_1: case GGML_Q8_1:
	case GGML_Q4_K: case GGML_Q5_K:
		hoff[0] = 0;
		hoff[1] = 2;
		break;
	case GGML_Q6_K:
		hoff[0] = 208;
		break;
	}
	for (i = 0; i < nb; i++)
		for (j = 0; j < 2; j++) {
			if (hoff[j] < 0)
				continue;
			f = (i + j) % 4 == 0 ? edge[(i / 4 + j) % 5] :
			    (float)(urnd() * 0.05);
			put_half(p + i * bb + (size_t)hoff[j], f);
		}
}

/* --- dequantisation ------------------------------------------------------ */

static const int dq_types[] = {
	GGML_F32, GGML_F16, GGML_BF16, GGML_Q4_0, GGML_Q4_1, GGML_Q5_0,
	GGML_Q5_1, GGML_Q8_0, GGML_Q8_1, GGML_Q4_K, GGML_Q5_K, GGML_Q6_K
};

/* quant_dequant against ref_elem on random blocks of every type. */
static void
check_dequant_random(void)
{
	static const uint8_t zero[128];
	static float out[256];
	size_t k, i, nb = 64, n, be, bad;
	uint8_t *raw;
	float *y;
	double *ref, err, tol;
	int type;

	for (k = 0; k < sizeof dq_types / sizeof dq_types[0]; k++) {
		type = dq_types[k];
		be = (size_t)ggml_type_block_elems(type);
		n = nb * be;
		raw = malloc(nb * ggml_type_block_bytes(type));
		y = malloc(n * sizeof *y);
		ref = malloc(n * sizeof *ref);
		random_blocks(type, raw, nb);
		ref_dequant(type, raw, ref, n);
		bad = SIZE_MAX;
		err = 0;
		if (quant_dequant(type, raw, y, n) == KVX_OK) {
			for (i = 0; i < n; i++) {
				tol = 1e-6 * fabs(ref[i]) + 1e-7;
				if (fabs(y[i] - ref[i]) > tol &&
				    bad == SIZE_MAX)
					bad = i;
				if (fabs(y[i] - ref[i]) > err)
					err = fabs(y[i] - ref[i]);
			}
		} else
			bad = 0;
		if (!ok(bad == SIZE_MAX && quant_supported(type),
		    "dequant %s: %zu random blocks match the reference "
		    "(max abs err %.3g)", ggml_type_name(type), nb, err))
			diag("first mismatch at %zu: %.9g vs %.9g", bad,
			    bad < n ? y[bad] : 0.0, bad < n ? ref[bad] : 0.0);
		free(raw);
		free(y);
		free(ref);
	}
	ok(quant_dequant(GGML_Q4_1, zero, out, 33) == KVX_ERR_ARG,
	    "partial block refused: %s", kvx_errmsg());
	ok(!quant_supported(GGML_Q2_K) &&
	    quant_dequant(GGML_Q2_K, zero, out, 256) == KVX_ERR_UNSUPPORTED,
	    "Q2_K unsupported: %s", kvx_errmsg());
}

/* Reads n floats from fp. */
static int
read_floats(FILE *fp, float *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (fscanf(fp, "%f", &v[i]) != 1)
			return 0;
	return 1;
}

/* Largest |a - b| relative to max(|b|, floor). */
static double
max_rel(const float *a, const float *b, size_t n, double floor)
{
	double e = 0, d, s;
	size_t i;

	for (i = 0; i < n; i++) {
		d = fabs((double)a[i] - b[i]);
		s = fabs(b[i]) > floor ? fabs(b[i]) : floor;
		if (isnan(a[i]) != isnan(b[i]))
			return INFINITY;
		if (d / s > e)
			e = d / s;
	}
	return e;
}

/* Compares with the golden values of the gguf Python package. */
static void
check_golden(gguf_file *f)
{
	char path[4096], kw[32], name[128], *hex = NULL;
	const char *top = getenv("top_srcdir");
	const gguf_tensor *t;
	float *want = NULL, *got = NULL;
	double err, sum, sumsq, s0, s1;
	unsigned type, nbytes, row, byte;
	size_t n, i, nblock = 0, nrow = 0, nsum = 0, ncols, r;
	uint8_t *raw = NULL;
	FILE *fp;
	int good;

	snprintf(path, sizeof path, "%s/tests/golden/gguf-dequant.txt",
	    top ? top : ".");
	if ((fp = fopen(path, "r")) == NULL) {
		snprintf(path, sizeof path, "../tests/golden/gguf-dequant.txt");
		fp = fopen(path, "r");
	}
	if (!ok(fp != NULL, "golden file %s", path))
		return;
	while (fscanf(fp, "%31s", kw) == 1) {
		if (kw[0] == '#') {
			while ((i = (size_t)fgetc(fp)) != '\n' && (int)i != EOF)
				;
			continue;
		}
		if (strcmp(kw, "block") == 0) {
			if (fscanf(fp, "%u %u", &type, &nbytes) != 2)
				break;
			hex = realloc(hex, 2 * nbytes + 1);
			raw = realloc(raw, nbytes);
			if (fscanf(fp, "%s %zu", hex, &n) != 2)
				break;
			for (i = 0; i < nbytes; i++) {
				sscanf(hex + 2 * i, "%2x", &byte);
				raw[i] = (uint8_t)byte;
			}
			want = realloc(want, n * sizeof *want);
			got = realloc(got, n * sizeof *got);
			if (!read_floats(fp, want, n))
				break;
			good = quant_dequant((int)type, raw, got, n) == KVX_OK;
			err = good ? max_rel(got, want, n, 1e-3) : INFINITY;
			ok(err < 1e-5, "golden block %zu (%s): max rel err "
			    "%.3g", nblock++, ggml_type_name((int)type), err);
		} else if (strcmp(kw, "row") == 0) {
			if (fscanf(fp, "%127s %u %zu", name, &row, &n) != 3)
				break;
			want = realloc(want, n * sizeof *want);
			got = realloc(got, n * sizeof *got);
			if (!read_floats(fp, want, n))
				break;
			if (f == NULL)
				continue;
			t = gguf_tensor_find(f, name);
			good = t != NULL && t->ne[0] == n;
			if (good)
				good = quant_dequant(t->type, (const uint8_t *)
				    t->data + row * (t->nbytes / t->ne[1]), got,
				    n) == KVX_OK;
			err = good ? max_rel(got, want, n, 1e-3) : INFINITY;
			ok(err < 1e-5, "golden %s row %u (%s): max rel err "
			    "%.3g", name, row, t ? ggml_type_name(t->type) : "?",
			    err);
			nrow++;
		} else if (strcmp(kw, "sum") == 0) {
			if (fscanf(fp, "%127s %zu %lf %lf", name, &n, &sum,
			    &sumsq) != 4)
				break;
			if (f == NULL)
				continue;
			t = gguf_tensor_find(f, name);
			if (!ok(t != NULL && t->ne[0] * t->ne[1] == n,
			    "golden tensor %s present", name))
				continue;
			ncols = t->ne[0];
			got = realloc(got, ncols * sizeof *got);
			s0 = s1 = 0;
			for (r = 0; r < n / ncols; r++) {
				quant_dequant(t->type, (const uint8_t *)
				    t->data + r * (t->nbytes / t->ne[1]), got,
				    ncols);
				for (i = 0; i < ncols; i++) {
					s0 += got[i];
					s1 += (double)got[i] * got[i];
				}
			}
			ok(fabs(s0 - sum) <= 1e-6 * sqrt(sumsq * n) &&
			    fabs(s1 - sumsq) <= 1e-6 * sumsq,
			    "golden %s (%zu elements): sum %.6f (want %.6f), "
			    "sum of squares %.4f (want %.4f)", name, n, s0, sum,
			    s1, sumsq);
			nsum++;
		} else
			break;
	}
	ok(feof(fp) && nblock > 0, "golden file read to the end: %zu blocks, "
	    "%zu rows, %zu tensor sums", nblock, nrow, nsum);
	fclose(fp);
	free(hex);
	free(raw);
	free(want);
	free(got);
}

/* --- matrix-vector products ---------------------------------------------- */

/*
 * quant_matvec_f32, the decode path of the runtime: f32 activations, so
 * against the double-precision product it may differ only by float
 * rounding; rows outside [r0, r1) stay untouched.
 */
static void
check_matvec_f32(int type, int rows, int cols, int r0, int r1)
{
	size_t be = (size_t)ggml_type_block_elems(type);
	size_t rb = (size_t)cols / be * ggml_type_block_bytes(type);
	uint8_t *w = malloc(rb * (size_t)rows);
	float *x = malloc((size_t)cols * sizeof *x);
	float *y = malloc(((size_t)rows + 2) * sizeof *y);
	double *wd = malloc((size_t)cols * sizeof *wd);
	double ref, nw, nx = 0, e, worst = 0;
	int r, c, good = 1;

	random_blocks(type, w, (size_t)rows * (size_t)cols / be);
	for (c = 0; c < cols; c++) {
		x[c] = (float)(urnd() * (c % 17 == 0 ? 8.0 : 1.0));
		nx += (double)x[c] * x[c];
	}
	nx = sqrt(nx);
	for (r = 0; r < rows + 2; r++)
		y[r] = -12345.0f;
	quant_matvec_f32(type, w, cols, r0, r1, x, y + 1);
	for (r = 0; r < rows; r++) {
		if (r < r0 || r >= r1) {
			if (y[r + 1] != -12345.0f)
				good = 0;
			continue;
		}
		ref_dequant(type, w + (size_t)r * rb, wd, (size_t)cols);
		ref = 0;
		nw = 0;
		for (c = 0; c < cols; c++) {
			ref += wd[c] * x[c];
			nw += wd[c] * wd[c];
		}
		e = fabs(y[r + 1] - ref) / (sqrt(nw) * nx + 1e-30);
		worst = e > worst ? e : worst;
	}
	good = good && y[0] == -12345.0f && y[rows + 1] == -12345.0f;
	ok(good && worst < 1e-5, "matvec_f32 %s %dx%d rows [%d,%d): "
	    "err/|w||x| %.2g (limit 1e-5)%s", ggml_type_name(type), rows, cols,
	    r0, r1, worst, good ? "" : ", rows outside the range were written");
	free(w);
	free(x);
	free(y);
	free(wd);
}

/* Products with real model tensors, checked against dequantised rows. */
static void
check_matvec_model(gguf_file *f, const char *name, int nrows)
{
	const gguf_tensor *t = gguf_tensor_find(f, name);
	int cols, rows, r, c;
	size_t rb;
	float *x, *y, *wr;
	double ref, nw, nx = 0, e, emax = 0;

	if (!ok(t != NULL, "tensor %s", name))
		return;
	cols = (int)t->ne[0];
	rows = nrows < (int)t->ne[1] ? nrows : (int)t->ne[1];
	rb = t->nbytes / t->ne[1];
	x = malloc((size_t)cols * sizeof *x);
	wr = malloc((size_t)cols * sizeof *wr);
	y = malloc((size_t)rows * sizeof *y);
	for (c = 0; c < cols; c++) {
		x[c] = (float)urnd();
		nx += (double)x[c] * x[c];
	}
	quant_matvec_f32(t->type, t->data, cols, 0, rows, x, y);
	for (r = 0; r < rows; r++) {
		quant_dequant(t->type, (const uint8_t *)t->data + r * rb, wr,
		    (size_t)cols);
		ref = nw = 0;
		for (c = 0; c < cols; c++) {
			ref += (double)wr[c] * x[c];
			nw += (double)wr[c] * wr[c];
		}
		e = fabs(y[r] - ref) / (sqrt(nw * nx) + 1e-30);
		emax = e > emax ? e : emax;
	}
	ok(emax < 1e-5, "matvec_f32 %s (%s) first %d rows: err/|w||x| %.2g "
	    "(limit 1e-5)", name, ggml_type_name(t->type), rows, emax);
	free(x);
	free(wr);
	free(y);
}

/*
 * The AVX2 and AVX-512 kernels of quant_matvec_f32 against their scalar
 * twin,
 * quant_matvec_f32_ref, on the shapes of the Qwen2.5 and Gemma 3 layers
 * of those types (rows as many as fit quickly): the two sum in different
 * orders and precisions, so they may differ by float rounding only.
 */
static void
check_matvec_twin(int type, int rows, int cols)
{
	size_t be = (size_t)ggml_type_block_elems(type);
	size_t rb = (size_t)cols / be * ggml_type_block_bytes(type);
	uint8_t *w = malloc(rb * (size_t)rows);
	float *x = malloc((size_t)cols * sizeof *x);
	float *y = malloc((size_t)rows * sizeof *y);
	float *yr = malloc((size_t)rows * sizeof *yr);
	float *wr = malloc((size_t)cols * sizeof *wr);
	double nx = 0, nw, e, worst = 0;
	int r, c;

	random_blocks(type, w, (size_t)rows * (size_t)cols / be);
	for (c = 0; c < cols; c++) {
		x[c] = (float)(urnd() * (c % 13 == 0 ? 6.0 : 1.0));
		nx += (double)x[c] * x[c];
	}
	quant_matvec_f32(type, w, cols, 0, rows, x, y);
	quant_matvec_f32_ref(type, w, cols, 0, rows, x, yr);
	for (r = 0; r < rows; r++) {
		quant_dequant(type, w + (size_t)r * rb, wr, (size_t)cols);
		for (c = 0, nw = 0; c < cols; c++)
			nw += (double)wr[c] * wr[c];
		e = fabs((double)y[r] - yr[r]) / (sqrt(nw * nx) + 1e-30);
		worst = e > worst ? e : worst;
	}
	ok(worst < 1e-6, "matvec_f32 %s %dx%d against its scalar twin: "
	    "err/|w||x| %.2g (limit 1e-6)", ggml_type_name(type), rows, cols,
	    worst);
	free(w);
	free(x);
	free(y);
	free(yr);
	free(wr);
}

int
main(void)
{
	const char *model = tap_model_path();
	gguf_file *f = NULL;
	size_t k;
	int type, isa;

	check_dequant_random();
	if (model != NULL && gguf_open(model, &f) != KVX_OK) {
		ok(0, "open %s: %s", model, kvx_errmsg());
		f = NULL;
	}
	if (model == NULL)
		diag("KVX_MODEL not set: golden rows of the model skipped");
	check_golden(f);

	for (k = 0; k < sizeof dq_types / sizeof dq_types[0]; k++) {
		type = dq_types[k];
		/* an empty range writes nothing */
		check_matvec_f32(type, 9, 512, 4, 4);
		if (ggml_type_block_elems(type) == 256) {
			check_matvec_f32(type, 5, 512, 1, 4);
			continue;
		}
		check_matvec_f32(type, 1, 32, 0, 1);
		check_matvec_f32(type, 7, 64, 0, 7);
		check_matvec_f32(type, 192, 576, 5, 190);
		check_matvec_f32(type, 37, 1536, 3, 30);
		/* wider than the stack's block sums: the generic path */
		check_matvec_f32(type, 3, 8224, 0, 3);
	}
	/* Qwen2.5-Coder-0.5B's and Gemma 3 270M's layers, by the AVX2
	   kernels, then by the AVX-512 ones where the processor has them */
	for (isa = 0; isa < 2; isa++) {
		if (quant_use_avx512(isa) != isa) {
			diag("no AVX-512 here: its kernels are not checked");
			break;
		}
		diag("%s kernels", isa ? "AVX-512" : "AVX2");
		check_matvec_twin(GGML_Q5_0, 64, 896);
		check_matvec_twin(GGML_Q5_0, 16, 4864);
		check_matvec_twin(GGML_Q5_0, 64, 640);
		check_matvec_twin(GGML_Q5_0, 32, 2048);
		check_matvec_twin(GGML_Q4_K, 64, 4864);
		check_matvec_twin(GGML_Q4_K, 64, 1024);
		check_matvec_twin(GGML_Q4_K, 64, 2048);
		check_matvec_twin(GGML_Q6_K, 64, 4864);
		check_matvec_twin(GGML_Q6_K, 64, 2048);
		check_matvec_twin(GGML_Q8_0, 64, 896);
		check_matvec_twin(GGML_Q8_0, 64, 640);
		/* rows of one block, and row ranges that start inside the
		   matrix and stop short of its end */
		check_matvec_twin(GGML_Q5_0, 3, 32);
		check_matvec_twin(GGML_Q8_0, 3, 32);
		check_matvec_twin(GGML_Q4_K, 3, 256);
		check_matvec_twin(GGML_Q6_K, 3, 256);
		check_matvec_f32(GGML_Q5_0, 9, 96, 1, 8);
		check_matvec_f32(GGML_Q8_0, 9, 96, 1, 8);
		check_matvec_f32(GGML_Q4_K, 7, 768, 2, 7);
		check_matvec_f32(GGML_Q6_K, 7, 768, 2, 6);
	}
	quant_use_avx512(1);

	if (f != NULL) {
		check_matvec_model(f, "blk.0.attn_k.weight", 192);
		check_matvec_model(f, "blk.7.ffn_down.weight", 576);
		check_matvec_model(f, "token_embd.weight", 2000);
		gguf_close(&f);
	}
	return tap_done();
}
