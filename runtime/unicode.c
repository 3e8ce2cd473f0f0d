/*
 * unicode.c - UTF-8 decoding and code point classes.
 * SPDX-License-Identifier: MIT
 */
#include "unicode.h"
#include "unicode_data.h"

#define NRANGES	(sizeof(uc_ranges) / sizeof(uc_ranges[0]))

/* Binary search of the generated range table. */
static unsigned
range_class(uint32_t cp)
{
	size_t lo = 0, hi = NRANGES;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (cp < uc_ranges[mid].lo)
			hi = mid;
		else if (cp > uc_ranges[mid].hi)
			lo = mid + 1;
		else
			return uc_ranges[mid].flags;
	}
	return 0;
}

/* Class bits of a code point. */
unsigned
uc_class(uint32_t cp)
{
	if (cp < 128)
		return uc_ascii[cp];
	if (cp > 0x10FFFF)
		return 0;
	return range_class(cp);
}

/* Decode one UTF-8 sequence, leniently. */
size_t
uc_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
	uint32_t c = s[0];
	size_t len;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c < 0xC0)
		goto bad;
	if (c < 0xE0) {
		len = 2;
		c &= 0x1F;
	} else if (c < 0xF0) {
		len = 3;
		c &= 0x0F;
	} else if (c < 0xF8) {
		len = 4;
		c &= 0x07;
	} else
		goto bad;
	if (len > n)
		goto bad;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			goto bad;
		c = (c << 6) | (s[i] & 0x3F);
	}
	if (c > 0x10FFFF)
		goto bad;
	*cp = c;
	return len;
bad:
	*cp = UC_REPLACEMENT;
	return 1;
}

/* Encode a code point as UTF-8. */
size_t
uc_encode(uint32_t cp, char out[4])
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Unicode version the class tables were generated from. */
const char *
uc_data_version(void)
{
	return UC_DATA_VERSION;
}
