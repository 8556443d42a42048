/* Error reporting for the C core: every fallible call fills a HeraldError and returns its code. */
#ifndef HERALD_ERROR_H
#define HERALD_ERROR_H

#include <stddef.h>

typedef enum {
  kHeraldOk = 0,
  kHeraldInvalid,   /* bad input: the message names the field and the reason */
  kHeraldNotFound,
  kHeraldLimit,     /* a documented limit was exceeded */
  kHeraldStore,     /* the database refused (corrupt, locked, full, ...) */
  kHeraldIo,
  kHeraldNoMemory,
} HeraldErrorCode;

typedef struct {
  HeraldErrorCode code;
  char msg[1024];
} HeraldError;

/* Sets err (which may be NULL) and returns code, so callers can `return herald_error_set(...)`. */
int herald_error_set(HeraldError *err, HeraldErrorCode code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes an existing message, e.g. with "line 12: ". */
void herald_error_prefix(HeraldError *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

const char *herald_error_code_name(HeraldErrorCode code);

#endif
