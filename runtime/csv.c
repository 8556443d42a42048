#include "runtime/csv.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Records the error and stops the reader: after malformed input nothing later is trusted. */
static int csv_fail(HeraldCsv *c, HeraldError *err, HeraldErrorCode code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int csv_fail(HeraldCsv *c, HeraldError *err, HeraldErrorCode code, const char *fmt, ...) {
  if (err != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
  }
  c->p = c->end;
  return -1;
}

void herald_csv_init(HeraldCsv *c, const char *data, size_t len) {
  memset(c, 0, sizeof *c);
  c->p = data;
  c->end = data + len;
  c->line = 1;
  /* A UTF-8 byte order mark is not part of the first header. */
  if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0) c->p += 3;
}

void herald_csv_free(HeraldCsv *c) {
  free(c->buf);
  free(c->offsets);
  free(c->lengths);
  memset(c, 0, sizeof *c);
}

static int reserve(HeraldCsv *c, size_t used, size_t more) {
  if (used + more <= c->buf_size) return 0;
  size_t size = c->buf_size ? c->buf_size : 4096;
  while (size < used + more) size *= 2;
  char *b = realloc(c->buf, size);
  if (b == NULL) return -1;
  c->buf = b;
  c->buf_size = size;
  return 0;
}

static int add_field(HeraldCsv *c, size_t n, size_t start, size_t len) {
  if (n >= c->cap_fields) {
    size_t cap = c->cap_fields ? c->cap_fields * 2 : 32;
    size_t *o = realloc(c->offsets, cap * sizeof *o);
    if (o == NULL) return -1;
    c->offsets = o;
    size_t *l = realloc(c->lengths, cap * sizeof *l);
    if (l == NULL) return -1;
    c->lengths = l;
    c->cap_fields = cap;
  }
  c->offsets[n] = start;
  c->lengths[n] = len;
  return 0;
}

int herald_csv_next(HeraldCsv *c, size_t *nfields, long *line, HeraldError *err) {
  *nfields = 0;
  /* Skip blank lines. */
  while (c->p < c->end && (*c->p == '\n' || *c->p == '\r')) {
    if (*c->p == '\n') c->line++;
    c->p++;
  }
  if (c->p >= c->end) return 0;
  *line = c->line;
  const char *p = c->p;
  size_t used = 0, n = 0;
  for (;;) {
    size_t start = used;
    if (p < c->end && *p == '"') {
      long quote_line = c->line;
      p++;
      for (;;) {
        const char *q = memchr(p, '"', (size_t)(c->end - p));
        if (q == NULL) {
          return csv_fail(c, err, kHeraldInvalid,
                                  "line %ld: field %zu: a quoted field is never closed",
                                  quote_line, n + 1);
        }
        size_t chunk = (size_t)(q - p);
        if (reserve(c, used, chunk + 2) != 0)
          return csv_fail(c, err, kHeraldNoMemory, "out of memory");
        memcpy(c->buf + used, p, chunk);
        for (const char *s = p; s < q; s++)
          if (*s == '\n') c->line++;
        used += chunk;
        p = q + 1;
        if (p < c->end && *p == '"') {
          c->buf[used++] = '"';
          p++;
          continue;
        }
        break;
      }
      if (p < c->end && *p != ',' && *p != '\n' && *p != '\r') {
        return csv_fail(c, err, kHeraldInvalid,
                                "line %ld: field %zu: text after the closing quote", c->line,
                                n + 1);
      }
    } else {
      const char *s = p;
      while (s < c->end && *s != ',' && *s != '\n' && *s != '\r') {
        if (*s == '"') {
          return csv_fail(c, err, kHeraldInvalid,
                                  "line %ld: field %zu: a quote inside an unquoted field (quote "
                                  "the whole field and double the quote)", c->line, n + 1);
        }
        s++;
      }
      size_t chunk = (size_t)(s - p);
      if (reserve(c, used, chunk + 1) != 0)
        return csv_fail(c, err, kHeraldNoMemory, "out of memory");
      memcpy(c->buf + used, p, chunk);
      used += chunk;
      p = s;
    }
    if (add_field(c, n, start, used - start) != 0)
      return csv_fail(c, err, kHeraldNoMemory, "out of memory");
    c->buf[used++] = '\0';
    n++;
    if (p < c->end && *p == ',') {
      p++;
      continue;
    }
    break;
  }
  if (p < c->end && *p == '\r') p++;
  if (p < c->end && *p == '\n') p++;
  c->line++;
  c->p = p;
  *nfields = n;
  return 1;
}
