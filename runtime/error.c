#include "runtime/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int herald_error_set(HeraldError *err, HeraldErrorCode code, const char *fmt, ...) {
  if (err != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
  }
  return (int)code;
}

void herald_error_prefix(HeraldError *err, const char *fmt, ...) {
  if (err == NULL) return;
  char prefix[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  size_t plen = strlen(prefix), mlen = strnlen(err->msg, sizeof err->msg - 1);
  if (plen >= sizeof err->msg) plen = sizeof err->msg - 1;
  if (plen + mlen >= sizeof err->msg) mlen = sizeof err->msg - 1 - plen;
  memmove(err->msg + plen, err->msg, mlen);
  memcpy(err->msg, prefix, plen);
  err->msg[plen + mlen] = '\0';
}

const char *herald_error_code_name(HeraldErrorCode code) {
  switch (code) {
    case kHeraldOk: return "ok";
    case kHeraldInvalid: return "invalid";
    case kHeraldNotFound: return "not_found";
    case kHeraldLimit: return "limit";
    case kHeraldStore: return "store";
    case kHeraldIo: return "io";
    case kHeraldNoMemory: return "no_memory";
  }
  return "unknown";
}
