/* A small RFC 4180 CSV reader over a memory buffer: quoted fields, "" escapes, CRLF or LF,
 * line breaks inside quotes. Malformed input (a stray quote, text after a closing quote, an
 * unterminated quote) is an error naming the line. */
#ifndef HERALD_CSV_H
#define HERALD_CSV_H

#include <stddef.h>

#include "runtime/error.h"

typedef struct {
  const char *p, *end;
  long line;          /* line of the next record */
  char *buf;          /* unescaped field text, NUL-separated */
  size_t buf_size;
  size_t *offsets;    /* field i starts at buf + offsets[i] */
  size_t *lengths;
  size_t cap_fields;
} HeraldCsv;

void herald_csv_init(HeraldCsv *c, const char *data, size_t len);
void herald_csv_free(HeraldCsv *c);

/* Reads the next record: 1 and *nfields, 0 at the end of input, or -1 with err set
 * ("line 3: ..."). *line receives the line the record starts on. Blank lines are skipped. */
int herald_csv_next(HeraldCsv *c, size_t *nfields, long *line, HeraldError *err);

static inline const char *herald_csv_field(const HeraldCsv *c, size_t i) { return c->buf + c->offsets[i]; }
static inline size_t herald_csv_field_len(const HeraldCsv *c, size_t i) { return c->lengths[i]; }

#endif
