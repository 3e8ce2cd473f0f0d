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

#define UC_REPLACEMENT	0xFFFDu

/* Class bits of a code point (0 for none). */
unsigned	 uc_class(uint32_t cp);
/*
 * Decode the sequence at s (n > 0 bytes available) into *cp and return its
 * length, leniently, as the reference tokenizer (llama.cpp) does: overlong
 * forms and surrogates are accepted.  A byte that starts no complete
 * sequence, or one beyond U+10FFFF, yields U+FFFD and length 1.
 */
size_t		 uc_decode(const unsigned char *s, size_t n, uint32_t *cp);
/* Encode a code point <= 0x10FFFF; returns the length (1..4). */
size_t		 uc_encode(uint32_t cp, char out[4]);
/* Unicode version of the class tables. */
const char	*uc_data_version(void);

#endif
