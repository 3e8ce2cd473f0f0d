/*
 * tap.h - minimal TAP producer for the kvx test programs.
 * SPDX-License-Identifier: MIT
 *
 * ok(cond, fmt, ...) prints one TAP line; tap_done() prints the plan and
 * returns the exit status.  A test that cannot run (no model, no GPU) calls
 * tap_skip_all(reason), which exits 77 after a "1..0 # SKIP" line.
 */
#ifndef KVX_TAP_H
#define KVX_TAP_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvx.h"

#if defined(__GNUC__)
#define TAP_UNUSED __attribute__((unused))
#else
#define TAP_UNUSED
#endif

static int tap_n, tap_fail;

static int TAP_UNUSED
ok(int cond, const char *fmt, ...)
{
	va_list ap;

	tap_n++;
	if (!cond)
		tap_fail++;
	printf("%sok %d - ", cond ? "" : "not ", tap_n);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	return cond;
}

static void TAP_UNUSED
diag(const char *fmt, ...)
{
	va_list ap;

	fputs("# ", stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static void TAP_UNUSED
tap_skip_all(const char *why)
{
	printf("1..0 # SKIP %s\n", why);
	exit(77);
}

static int TAP_UNUSED
tap_done(void)
{
	printf("1..%d\n", tap_n);
	return tap_fail ? 1 : 0;
}

/* --- shared helpers: reproducible random inputs, argmax ------------------ */

/* State of the xorshift64* generator; a test may reseed it. */
static uint64_t tap_rng TAP_UNUSED = 0x9e3779b97f4a7c15ULL;

static uint64_t TAP_UNUSED
tap_next(void)
{
	tap_rng ^= tap_rng >> 12;
	tap_rng ^= tap_rng << 25;
	tap_rng ^= tap_rng >> 27;
	return tap_rng * 2685821657736338717ULL;
}

/* Uniform in [-1, 1). */
static float TAP_UNUSED
tap_frand(void)
{
	return (float)((tap_next() >> 40) / (double)(1 << 23) - 1.0);
}

/* Uniform double in [0, 1), every bit of a double's mantissa. */
static double TAP_UNUSED
tap_drand(void)
{
	return (double)(tap_next() >> 11) / 9007199254740992.0;
}

/* Uniform integer in [lo, hi]. */
static int TAP_UNUSED
tap_irand(int lo, int hi)
{
	return lo + (int)(tap_next() % (uint64_t)(hi - lo + 1));
}

/* Index of the largest of v[0..n), the first on ties. */
static int TAP_UNUSED
tap_argmax(const float *v, int n)
{
	int i, b = 0;

	for (i = 1; i < n; i++)
		if (v[i] > v[b])
			b = i;
	return b;
}

/* The default model, or NULL (the caller skips) when it is not present. */
static TAP_UNUSED const char *
tap_model_path(void)
{
	const char *p = getenv("KVX_MODEL");
	FILE *f;

	if (p == NULL || *p == '\0')
		return NULL;
	if ((f = fopen(p, "rb")) == NULL)
		return NULL;
	fclose(f);
	return p;
}

/* Largest |a - b| relative to the largest |b|. */
static double TAP_UNUSED
tap_rel_diff(const float *a, const float *b, int n)
{
	double md = 0.0, mb = 1e-30;
	int i;

	for (i = 0; i < n; i++) {
		if (fabs((double)a[i] - b[i]) > md)
			md = fabs((double)a[i] - b[i]);
		if (fabs(b[i]) > mb)
			mb = fabs(b[i]);
	}
	return md / mb;
}

/* The first n tokens of the start (128 KiB) of a text file, or 0. */
static int TAP_UNUSED
tap_load_tokens(const kvx_model *m, const char *path, int32_t *ids, int n)
{
	static char buf[1 << 17];
	int32_t *all;
	size_t len;
	int got = 0;
	FILE *f;

	if ((f = fopen(path, "rb")) == NULL)
		return 0;
	len = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[len] = '\0';
	if ((all = malloc(sizeof *all * (len + 1))) == NULL)
		return 0;
	if (kvx_tokenize(m, buf, len, 0, all, (int)len + 1, &got) != KVX_OK)
		got = 0;
	got = got < n ? got : n;
	memcpy(ids, all, sizeof *ids * (size_t)got);
	free(all);
	return got;
}

/* 1 when the kernel's transparent huge pages are not turned off, read
 * from sysfs apart from the runtime's own reading. */
static int TAP_UNUSED
tap_thp_on(void)
{
	char buf[128] = "";
	FILE *fp;

	if ((fp = fopen("/sys/kernel/mm/transparent_hugepage/enabled",
	    "r")) == NULL)
		return 0;
	if (fgets(buf, sizeof buf, fp) == NULL)
		buf[0] = '\0';
	fclose(fp);
	return strstr(buf, "[never]") == NULL;
}

#endif
