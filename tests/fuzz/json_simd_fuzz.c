/* libFuzzer target for the import path's JSON reader (runtime/json_simd.h), differential
 * against jansson: herald_json_simd_load promises the very value json_loadb(...,
 * JSON_REJECT_DUPLICATES) gives, or NULL. So whenever it returns a value, jansson must accept
 * the same text and the two values must be equal, type for type (an integer is not a real,
 * key order aside). Build and run with tools/fuzz. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/json_simd.h"

static HeraldJsonSimd *reader;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (reader == NULL && (reader = herald_json_simd_new()) == NULL) abort();
  json_t *fast = herald_json_simd_load(reader, (const char *)data, size);
  if (fast == NULL) return 0;
  json_error_t e;
  json_t *ref = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &e);
  if (ref == NULL) {
    fprintf(stderr, "json_simd_fuzz: simdjson read a text jansson refuses: %s\n", e.text);
    abort();
  }
  if (!json_equal(fast, ref)) {
    char *a = json_dumps(fast, JSON_ENCODE_ANY), *b = json_dumps(ref, JSON_ENCODE_ANY);
    fprintf(stderr, "json_simd_fuzz: values differ:\n  simd:    %s\n  jansson: %s\n", a, b);
    abort();
  }
  json_decref(fast);
  json_decref(ref);
  return 0;
}
