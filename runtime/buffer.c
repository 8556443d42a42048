#include "runtime/buffer.h"

#include <stdlib.h>
#include <string.h>

int herald_buf_reserve(HeraldBuf *b, size_t more) {
  if (b->len + more <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + more) cap *= 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) return -1;
  b->data = p;
  b->cap = cap;
  return 0;
}

size_t herald_decimal(char *out, long long v) {
  char digits[HERALD_DECIMAL_MAX];
  size_t k = 0, n = 0;
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
  do digits[k++] = (char)('0' + u % 10); while ((u /= 10) != 0);
  if (v < 0) out[n++] = '-';
  while (k > 0) out[n++] = digits[--k];
  return n;
}

int herald_buf_add(HeraldBuf *b, const void *p, size_t n) {
  if (herald_buf_reserve(b, n + 1) != 0) return -1;
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}
