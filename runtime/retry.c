#include "runtime/retry.h"

const char *herald_retry_verdict_name(HeraldRetryVerdict v) {
  switch (v) {
    case kHeraldRetryDelivered: return "delivered";
    case kHeraldRetryTransient: return "transient";
    case kHeraldRetryPermanent: return "permanent";
  }
  return "transient";
}

HeraldRetryVerdict herald_retry_verdict(HeraldNetClass cls, long status, int is_smtp) {
  switch (cls) {
    case kHeraldNetOk:
    case kHeraldNetStatus:
      break;
    case kHeraldNetInvalid:
      return kHeraldRetryPermanent;
    case kHeraldNetAuth:
      /* An SMTP server refuses a login for now with a 4xx (454, RFC 4954: "temporary
       * authentication failure"); 535 and the like mean the credentials are wrong. */
      return is_smtp && status >= 400 && status < 500 ? kHeraldRetryTransient : kHeraldRetryPermanent;
    default:
      return kHeraldRetryTransient;
  }
  if (is_smtp) {
    if (status >= 200 && status < 400) return kHeraldRetryDelivered;
    if (status >= 500) return kHeraldRetryPermanent;
    return kHeraldRetryTransient;
  }
  if (status >= 200 && status < 300) return kHeraldRetryDelivered;
  if (status == 408 || status == 429 || status >= 500) return kHeraldRetryTransient;
  return kHeraldRetryPermanent;
}

static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ULL;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  *s = x;
  return x;
}

int64_t herald_retry_backoff_ms(int attempt, int64_t min_ms, int64_t max_ms, double jitter,
                                uint64_t *rng) {
  if (min_ms < 0) min_ms = 0;
  if (max_ms < min_ms) max_ms = min_ms;
  if (attempt < 1) attempt = 1;
  int64_t d = min_ms;
  for (int i = 1; i < attempt && d < max_ms; i++) d = d > max_ms / 2 ? max_ms : d * 2;
  if (d > max_ms) d = max_ms;
  if (jitter > 0) {
    if (jitter > 1) jitter = 1;
    double r = (double)(xorshift(rng) >> 11) / 9007199254740992.0;  /* [0, 1) */
    d -= (int64_t)((double)d * jitter * r);
    /* Below the minimum (the first attempts, where d is the minimum itself) the jitter is
     * turned upwards rather than cut off, or every first retry of a burst of failures would
     * come back at the same instant. */
    if (d < min_ms) d = min_ms + (min_ms - d);
    if (d > max_ms) d = max_ms;
  }
  return d < min_ms ? min_ms : d;
}
