/* libFuzzer target for the CSV reader that endpoint imports run on: bytes -> records. An import
 * file comes from outside (an export of another tool, a hand-edited sheet), so any bytes must
 * give records or an error naming a line, never a crash.
 *
 * Invariants checked: records start on non-decreasing lines, never past the input's line count;
 * an error names a line (or says memory ran out); and the records read survive a round trip:
 * written back with every field quoted, they read back as the same records, field by field,
 * byte for byte. Build and run with tools/fuzz. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/csv.h"

#define require(ok)                                                           \
  do {                                                                        \
    if (!(ok)) {                                                              \
      fprintf(stderr, "csv_fuzz.c:%d: check failed: %s\n", __LINE__, #ok);   \
      abort();                                                                \
    }                                                                         \
  } while (0)

typedef struct {
  char *data;
  size_t len, cap;
} Text;

static void text_add(Text *t, const char *s, size_t n) {
  if (t->len + n + 1 > t->cap) {
    size_t cap = t->cap ? t->cap : 256;
    while (cap < t->len + n + 1) cap *= 2;
    t->data = realloc(t->data, cap);
    require(t->data != NULL);
    t->cap = cap;
  }
  memcpy(t->data + t->len, s, n);
  t->len += n;
}

/* Every record of data written back in RFC 4180 form, all fields quoted: the canonical text.
 * Returns -1 when data does not read (err set), else the number of records. */
static long canonical(const char *data, size_t len, Text *out, HeraldError *err) {
  HeraldCsv c;
  herald_csv_init(&c, data, len);
  long lines = 1;
  /* a record ends at LF, CRLF or a lone CR (files saved with old Mac line ends) */
  for (size_t i = 0; i < len; i++)
    lines += data[i] == '\n' || (data[i] == '\r' && (i + 1 == len || data[i + 1] != '\n'));
  long records = 0, last = 0;
  size_t n;
  long line;
  int rc;
  while ((rc = herald_csv_next(&c, &n, &line, err)) == 1) {
    require(n >= 1);
    require(line >= last && line <= lines);
    last = line;
    for (size_t i = 0; i < n; i++) {
      const char *f = herald_csv_field(&c, i);
      size_t fl = herald_csv_field_len(&c, i);
      require(f[fl] == '\0');
      text_add(out, i ? ",\"" : "\"", i ? 2 : 1);
      for (size_t k = 0; k < fl; k++) text_add(out, f[k] == '"' ? "\"\"" : f + k, f[k] == '"' ? 2 : 1);
      text_add(out, "\"", 1);
    }
    text_add(out, "\r\n", 2);
    records++;
  }
  herald_csv_free(&c);
  if (rc < 0) {
    require(err->msg[0] != '\0');
    require(strncmp(err->msg, "line ", 5) == 0 || err->code == kHeraldNoMemory);
    return -1;
  }
  require(rc == 0);
  return records;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Text first = {0}, second = {0};
  HeraldError err = {0};
  long records = canonical((const char *)data, size, &first, &err);
  if (records >= 0) {
    /* Reading the canonical text gives it back: nothing was lost or changed in reading. */
    HeraldError err2 = {0};
    long again = canonical(first.data ? first.data : "", first.len, &second, &err2);
    require(again == records);
    require(second.len == first.len && (first.len == 0 || memcmp(first.data, second.data, first.len) == 0));
  }
  free(first.data);
  free(second.data);
  return 0;
}
