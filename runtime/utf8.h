/* UTF-8 as Pinpoint's limits and JSON need it: characters counted, sequences checked. */
#ifndef HERALD_UTF8_H
#define HERALD_UTF8_H

#include <stddef.h>

/* Characters in the first len bytes of s (well-formed UTF-8 assumed: continuation bytes are
 * not counted). */
size_t herald_utf8_count(const char *s, size_t len);

/* Characters in the string s. */
size_t herald_utf8_chars(const char *s);

/* The length of the well-formed UTF-8 sequence at s (no overlong forms, surrogates or code
 * points past U+10FFFF), or 0. s must end in a byte that is not a continuation byte (a C
 * string's NUL does), which stops the check at the end of the text. */
int herald_utf8_sequence(const unsigned char *s);

#endif
