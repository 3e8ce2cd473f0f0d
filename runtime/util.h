/*
 * util.h - private helpers shared by libkvx sources.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_UTIL_H
#define KVX_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "kvx.h"

#if defined(__GNUC__)
#define KVX_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define KVX_PRINTF(a, b)
#endif

/* Record msg as this thread's last error and return code. */
kvx_status	 kvx__fail(kvx_status code, const char *fmt, ...)
		     KVX_PRINTF(2, 3);
/* Clear this thread's last error. */
void		 kvx__clear_error(void);

/* Checked allocation helpers: NULL on overflow or failure. */
void		*kvx__calloc(size_t n, size_t size);
void		*kvx__malloc_array(size_t n, size_t size);

/* Seconds from a monotonic clock. */
double		 kvx__now(void);
/* Online CPUs. */
int		 kvx__ncpu(void);

/* IEEE half <-> float. */
float		 kvx__h2f(uint16_t);
uint16_t	 kvx__f2h(float);
float		 kvx__bf2f(uint16_t);

/* splitmix64: a small, well-mixed seeded generator. */
uint64_t	 kvx__splitmix64(uint64_t *state);
/* A whole decimal integer / finite number in [lo, hi] into *out; 0 on
 * success, -1 (nothing written) otherwise.  For command-line options. */
int		 kvx__parse_long(const char *s, long lo, long hi, long *out);
int		 kvx__parse_double(const char *s, double lo, double hi,
		     double *out);
/*
 * Read a whole file ("-": standard input) into a malloc'd, NUL-terminated
 * buffer.  KVX_ERR_IO, with "PATH: reason" as the message, when it cannot
 * be read or holds more than max bytes (0: no limit).
 */
kvx_status	 kvx__read_file(const char *path, size_t max, char **out,
		     size_t *len);

/* SHA-256 of a buffer, written as 64 hex digits plus NUL. */
typedef struct kvx__sha256 {
	uint32_t	h[8];
	uint64_t	len;
	uint8_t		buf[64];
	size_t		n;
} kvx__sha256;
void		 kvx__sha256_init(kvx__sha256 *);
void		 kvx__sha256_update(kvx__sha256 *, const void *, size_t);
void		 kvx__sha256_hex(kvx__sha256 *, char out[65]);

#endif
