/* UTF-8 as Pinpoint's limits and JSON need it: characters counted, sequences checked. */
#ifndef HERALD_UTF8_H
#define HERALD_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Characters in the first len bytes of s (well-formed UTF-8 assumed: continuation bytes are
 * not counted). */
size_t herald_utf8_count(const char *s, size_t len);

/* Characters in the string s. */
size_t herald_utf8_chars(const char *s);

/* The length of the well-formed UTF-8 sequence at s (no overlong forms, surrogates or code
 * points past U+10FFFF), or 0. s must end in a byte that is not a continuation byte (a C
 * string's NUL does), which stops the check at the end of the text. */
int herald_utf8_sequence(const unsigned char *s);

/* The length of the well-formed UTF-8 character at s, len > 0 bytes before the end, with its
 * code point in *cp; 0 for a byte that starts none (a stray continuation byte, an overlong
 * form, a surrogate, a sequence cut off by the end). Unlike herald_utf8_sequence, s needs no
 * terminating byte. */
int herald_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp);

/* Writes c (a code point outside the surrogates, up to U+10FFFF) to d when d is not NULL;
 * returns its length in bytes. */
size_t herald_utf8_encode(uint32_t c, char *d);

#endif
