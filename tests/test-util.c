/*
 * test-util.c - SHA-256 against the FIPS 180-4 examples, half-float
 * conversion against an exhaustive round trip, error messages, and the
 * thread pool's coverage of its ranges.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "pool.h"
#include "tap.h"
#include "util.h"

static void
sha(const char *s, size_t len, char out[65])
{
	kvx__sha256 st;

	kvx__sha256_init(&st);
	kvx__sha256_update(&st, s, len);
	kvx__sha256_hex(&st, out);
}

struct count_arg {
	int	 n;
	int	*hits;
};

static void
count_work(void *arg, int ith, int nth)
{
	struct count_arg *a = arg;
	int lo, hi, i;

	pool_range(a->n, ith, nth, &lo, &hi);
	for (i = lo; i < hi; i++)
		a->hits[i]++;
}

int
main(void)
{
	static char million[1000000];
	char hex[65];
	int i, bad;

	sha("abc", 3, hex);
	ok(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff"
	    "61f20015ad") == 0, "sha256(\"abc\")");
	sha("", 0, hex);
	ok(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca49599"
	    "1b7852b855") == 0, "sha256(\"\")");
	sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, hex);
	ok(strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd"
	    "419db06c1") == 0, "sha256 of the 448-bit message");
	memset(million, 'a', sizeof million);
	{
		kvx__sha256 st;

		/* fed in uneven pieces to exercise the block buffer */
		kvx__sha256_init(&st);
		for (i = 0; i < 1000000; i += 7)
			kvx__sha256_update(&st, million + i,
			    i + 7 <= 1000000 ? 7 : 1000000 - i);
		kvx__sha256_hex(&st, hex);
	}
	ok(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39"
	    "ccc7112cd0") == 0, "sha256 of a million 'a', in pieces");

	/* every finite half converts to float and back unchanged */
	bad = 0;
	for (i = 0; i < 65536; i++) {
		uint16_t h = (uint16_t)i;
		float f = kvx__h2f(h);

		if (((h >> 10) & 0x1f) == 0x1f)
			continue;
		if (kvx__f2h(f) != h)
			bad++;
	}
	ok(bad == 0, "half -> float -> half is the identity (%d bad)", bad);
	ok(kvx__h2f(0x3c00) == 1.0f && kvx__h2f(0xc000) == -2.0f &&
	    kvx__h2f(0x0001) == ldexpf(1.0f, -24) &&
	    kvx__h2f(0x7bff) == 65504.0f, "known halves");
	ok(kvx__f2h(1.0f + ldexpf(1.0f, -11)) == 0x3c00 &&
	    kvx__f2h(1.0f + 3 * ldexpf(1.0f, -11)) == 0x3c02,
	    "float -> half rounds to nearest even");
	ok(kvx__f2h(1e6f) == 0x7c00 && isnan(kvx__h2f(kvx__f2h(NAN))),
	    "overflow to inf, NaN stays NaN");
	ok(kvx__bf2f(0x3f80) == 1.0f, "bf16 1.0");

	ok(kvx__fail(KVX_ERR_PLAN, "bad %s at %d", "thing", 7) ==
	    KVX_ERR_PLAN && strcmp(kvx_errmsg(), "bad thing at 7") == 0,
	    "kvx__fail returns its code and keeps the message");
	kvx__clear_error();
	ok(kvx_errmsg()[0] == '\0', "clear_error");
	ok(strcmp(kvx_strerror(KVX_ERR_MISMATCH), "plan does not match "
	    "model") == 0 && strcmp(kvx_strerror((kvx_status)99),
	    "unknown error") == 0, "strerror");
	ok(kvx__malloc_array(SIZE_MAX / 2, 4) == NULL &&
	    kvx__calloc(SIZE_MAX / 2, 4) == NULL, "overflowing allocations "
	    "fail");

	{
		kvx_pool *p = pool_new(3);
		int hits[1000], n, all = 1;
		struct count_arg a;

		ok(p != NULL && pool_size(p) == 3, "pool of 3 threads");
		for (n = 0; n < 1000; n += 97) {
			memset(hits, 0, sizeof hits);
			a.n = n;
			a.hits = hits;
			for (i = 0; i < 50; i++)
				pool_run(p, count_work, &a);
			for (i = 0; i < n; i++)
				if (hits[i] != 50)
					all = 0;
		}
		ok(all, "pool_run covers every index exactly once per run");
		pool_free(&p);
		ok(p == NULL, "pool_free clears the handle");
	}
	return tap_done();
}
