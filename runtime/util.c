/*
 * util.c - errors, allocation, clocks, half floats and SHA-256 for libkvx.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

static _Thread_local char errbuf[512];

/* Record a message as this thread's last error; returns code. */
kvx_status
kvx__fail(kvx_status code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errbuf, sizeof errbuf, fmt, ap);
	va_end(ap);
	return code;
}

void
kvx__clear_error(void)
{
	errbuf[0] = '\0';
}

const char *
kvx_errmsg(void)
{
	return errbuf;
}

const char *
kvx_version(void)
{
	return KVX_VERSION_STRING;
}

int
kvx_version_number(void)
{
	return KVX_VERSION_NUMBER;
}

const char *
kvx_strerror(kvx_status s)
{
	switch (s) {
	case KVX_OK:			return "success";
	case KVX_ERR_ARG:		return "invalid argument";
	case KVX_ERR_IO:		return "input/output error";
	case KVX_ERR_FORMAT:		return "malformed input";
	case KVX_ERR_UNSUPPORTED:	return "unsupported";
	case KVX_ERR_NOMEM:		return "out of memory";
	case KVX_ERR_PLAN:		return "invalid plan";
	case KVX_ERR_MISMATCH:		return "plan does not match model";
	case KVX_ERR_CAPACITY:		return "capacity exceeded";
	case KVX_ERR_DEVICE:		return "GPU error";
	}
	return "unknown error";
}

void *
kvx__calloc(size_t n, size_t size)
{
	if (n == 0 || size == 0)
		return calloc(1, 1);
	if (n > SIZE_MAX / size)
		return NULL;
	return calloc(n, size);
}

void *
kvx__malloc_array(size_t n, size_t size)
{
	if (n == 0 || size == 0)
		return malloc(1);
	if (n > SIZE_MAX / size)
		return NULL;
	return malloc(n * size);
}

double
kvx__now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int
kvx__ncpu(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? (int)n : 1;
}

uint64_t
kvx__splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

int
kvx__parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

int
kvx__parse_double(const char *s, double lo, double hi, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !isfinite(v) ||
	    v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

kvx_status
kvx__read_file(const char *path, size_t max, char **out, size_t *len)
{
	int is_stdin = strcmp(path, "-") == 0;
	FILE *f = is_stdin ? stdin : fopen(path, "rb");
	size_t cap = 0, n = 0, r;
	char *buf = NULL, *nb;

	*out = NULL;
	if (f == NULL)
		return kvx__fail(KVX_ERR_IO, "%s: %s", path, strerror(errno));
	for (;;) {
		if (n + 65536 + 1 > cap) {
			cap = cap ? cap * 2 : 1 << 20;
			if ((nb = realloc(buf, cap)) == NULL) {
				free(buf);
				if (!is_stdin)
					fclose(f);
				return kvx__fail(KVX_ERR_NOMEM, "%s: out of "
				    "memory", path);
			}
			buf = nb;
		}
		r = fread(buf + n, 1, 65536, f);
		n += r;
		if (max > 0 && n > max) {
			free(buf);
			if (!is_stdin)
				fclose(f);
			return kvx__fail(KVX_ERR_IO, "%s: larger than %zu MiB",
			    path, max >> 20);
		}
		if (r < 65536)
			break;
	}
	if (ferror(f)) {
		free(buf);
		if (!is_stdin)
			fclose(f);
		return kvx__fail(KVX_ERR_IO, "%s: read error", path);
	}
	if (!is_stdin)
		fclose(f);
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return KVX_OK;
}

/* --- half precision ------------------------------------------------------- */

float
kvx__h2f(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
	float f;

	if (exp == 0) {
		/* subnormal: value = man * 2^-24 */
		f = (float)man * (1.0f / 16777216.0f);
		memcpy(&bits, &f, 4);
		bits |= sign;
	} else if (exp == 31)
		bits = sign | 0x7f800000u | (man << 13);
	else
		bits = sign | ((exp + 112) << 23) | (man << 13);
	memcpy(&f, &bits, 4);
	return f;
}

uint16_t
kvx__f2h(float f)
{
	uint32_t x, sign, man;
	int exp;

	memcpy(&x, &f, 4);
	sign = (x >> 16) & 0x8000;
	exp = (int)((x >> 23) & 0xff) - 127 + 15;
	man = x & 0x7fffff;
	if (((x >> 23) & 0xff) == 0xff)
		return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
	if (exp >= 31)
		return (uint16_t)(sign | 0x7c00);
	if (exp <= 0) {
		if (exp < -10)
			return (uint16_t)sign;
		man |= 0x800000;
		{
			int shift = 14 - exp;
			uint32_t half = man >> shift;
			uint32_t rem = man & ((1u << shift) - 1);
			uint32_t mid = 1u << (shift - 1);

			if (rem > mid || (rem == mid && (half & 1)))
				half++;
			return (uint16_t)(sign | half);
		}
	}
	{
		uint32_t half = sign | ((uint32_t)exp << 10) | (man >> 13);
		uint32_t rem = man & 0x1fff;

		/* round to nearest even; a carry into the exponent is right */
		if (rem > 0x1000 || (rem == 0x1000 && (half & 1)))
			half++;
		return (uint16_t)half;
	}
}

float
kvx__bf2f(uint16_t b)
{
	uint32_t x = (uint32_t)b << 16;
	float f;

	memcpy(&f, &x, 4);
	return f;
}

/* --- SHA-256 (FIPS 180-4) -------------------------------------------------- */

static const uint32_t sha_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
	0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
	0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
	0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
	0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
	0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
	0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void
sha_block(kvx__sha256 *s, const uint8_t *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, h, t1, t2;
	int i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		    (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (; i < 64; i++) {
		uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^
		    (w[i - 15] >> 3);
		uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^
		    (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3];
	e = s->h[4]; f = s->h[5]; g = s->h[6]; h = s->h[7];
	for (i = 0; i < 64; i++) {
		t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) +
		    ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
		t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) +
		    ((a & b) ^ (a & c) ^ (b & c));
		h = g; g = f; f = e; e = d + t1;
		d = c; c = b; b = a; a = t1 + t2;
	}
	s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
	s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

void
kvx__sha256_init(kvx__sha256 *s)
{
	static const uint32_t iv[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
	};

	memcpy(s->h, iv, sizeof iv);
	s->len = 0;
	s->n = 0;
}

void
kvx__sha256_update(kvx__sha256 *s, const void *data, size_t len)
{
	const uint8_t *p = data;

	s->len += len;
	while (len > 0) {
		size_t take = 64 - s->n;

		if (take > len)
			take = len;
		memcpy(s->buf + s->n, p, take);
		s->n += take;
		p += take;
		len -= take;
		if (s->n == 64) {
			sha_block(s, s->buf);
			s->n = 0;
		}
	}
}

void
kvx__sha256_hex(kvx__sha256 *s, char out[65])
{
	static const char hex[] = "0123456789abcdef";
	uint64_t bits = s->len * 8;
	uint8_t pad = 0x80, len[8];
	int i;

	kvx__sha256_update(s, &pad, 1);
	pad = 0;
	while (s->n != 56)
		kvx__sha256_update(s, &pad, 1);
	for (i = 0; i < 8; i++)
		len[i] = (uint8_t)(bits >> (56 - 8 * i));
	kvx__sha256_update(s, len, 8);
	for (i = 0; i < 32; i++) {
		uint8_t byte = (uint8_t)(s->h[i / 4] >> (24 - 8 * (i % 4)));

		out[2 * i] = hex[byte >> 4];
		out[2 * i + 1] = hex[byte & 15];
	}
	out[64] = '\0';
}
