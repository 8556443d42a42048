/* A faster reader of JSON texts for bulk imports: simdjson parses, and the result is built as
 * the same jansson value json_loadb(text, len, JSON_REJECT_DUPLICATES, ...) returns. Whatever
 * that call would refuse, or might read differently (a duplicate key, "\u0000", an integer
 * beyond 64 bits, a scalar at the top, nesting deeper than simdjson's limit), comes back as
 * NULL: the caller then runs json_loadb on the same text, which gives the value or jansson's
 * own error message. Errors are therefore jansson's, word for word.
 * Built from C++ (runtime/cxx/json_simd.cc, its own static library); the interface is C. */
#ifndef HERALD_JSON_SIMD_H
#define HERALD_JSON_SIMD_H

#include <jansson.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct HeraldJsonSimd HeraldJsonSimd;

/* One reader per thread (it keeps its buffers between texts); NULL when out of memory. */
HeraldJsonSimd *herald_json_simd_new(void);
void herald_json_simd_free(HeraldJsonSimd *reader);

/* The value of the JSON text text[0..len), or NULL (see above: then ask json_loadb). */
json_t *herald_json_simd_load(HeraldJsonSimd *reader, const char *text, size_t len);

#ifdef __cplusplus
}
#endif

#endif
