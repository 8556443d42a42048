/* A growable byte buffer, for text built piece by piece (HTTP responses, JSON written by hand).
 * Zero-initialise it; free data when done. */
#ifndef HERALD_BUFFER_H
#define HERALD_BUFFER_H

#include <stddef.h>

typedef struct {
  char *data;
  size_t len, cap;
} HeraldBuf;

/* Room for `more` bytes after len, growing by doubling: 0, or -1 when out of memory. */
int herald_buf_reserve(HeraldBuf *b, size_t more);

/* Appends n bytes and keeps a NUL after them (not counted in len): 0, or -1. */
int herald_buf_add(HeraldBuf *b, const void *p, size_t n);

/* Room herald_decimal needs: a sign and the 19 digits of any 64-bit integer. */
#define HERALD_DECIMAL_MAX 20

/* Writes v in decimal, as printf's %lld does, to out (HERALD_DECIMAL_MAX bytes of room, no NUL
 * added) and returns its length. For the hot paths that write ids and numbers into text, where
 * snprintf's format parsing cost more than the rest of the text. */
size_t herald_decimal(char *out, long long v);

#endif
