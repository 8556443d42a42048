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

#endif
