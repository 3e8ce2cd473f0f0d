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

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

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

#endif
