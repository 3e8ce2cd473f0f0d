/*
 * unicode.h - UTF-8 decoding and the code point classes (letter, number,
 * punctuation, whitespace) that the pre-tokenizers split on.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_UNICODE_H
#define KVX_UNICODE_H

#include <stddef.h>
#include <stdint.h>

enum uc_class {
	UC_LETTER = 1,		/* \p{L} */
	UC_NUMBER = 2,		/* \p{N} */
	UC_PUNCT = 4,		/* \p{P} */
	UC_SPACE = 8		/* \s (Unicode White_Space) */
};

/* Code points of bytes that are not valid UTF-8: UC_INVALID | byte. */
#define UC_INVALID	0x80000000u

/* Class bits of a code point (0 for none, and for UC_INVALID ones). */
unsigned	 uc_class(uint32_t cp);
/*
 * Decode the sequence at s (n > 0 bytes available) into *cp and return its
 * length.  An invalid, overlong, surrogate or truncated sequence yields one
 * byte, as UC_INVALID | s[0].
 */
size_t		 uc_decode(const unsigned char *s, size_t n, uint32_t *cp);
/* Encode a code point <= 0x10FFFF; returns the length (1..4). */
size_t		 uc_encode(uint32_t cp, char out[4]);
/* Unicode version of the class tables. */
const char	*uc_data_version(void);

#endif
