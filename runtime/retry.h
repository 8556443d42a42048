/* Retry policy for deliveries: which failures are worth retrying, and when (Postfix-style
 * exponential backoff between a minimum and a maximum, with jitter so that a burst of failures
 * does not come back as a burst of retries). */
#ifndef HERALD_RETRY_H
#define HERALD_RETRY_H

#include <stdint.h>

#include "runtime/http_client.h"

typedef enum {
  kHeraldRetryDelivered = 0,  /* accepted by the receiver */
  kHeraldRetryTransient,      /* try again later */
  kHeraldRetryPermanent,      /* retrying cannot succeed: record the reason */
} HeraldRetryVerdict;

const char *herald_retry_verdict_name(HeraldRetryVerdict v);

/* HTTP: 2xx delivered; 408, 429 and 5xx transient; other statuses permanent.
 * SMTP (is_smtp): 2xx/3xx delivered, 4xx transient, 5xx permanent.
 * Transport failures: timeouts, refused or reset connections, TLS and protocol trouble are
 * transient; an invalid request or refused login is permanent, but an SMTP login refused
 * with a 4xx reply (454) is transient. */
HeraldRetryVerdict herald_retry_verdict(HeraldNetClass cls, long status, int is_smtp);

/* Delay before attempt number `attempt` (1 = the first retry): min_ms doubled per attempt, at
 * most max_ms, then lowered by up to jitter (0..1) of itself; what would fall below min_ms is
 * turned upwards instead (so first retries spread over min_ms .. min_ms * (1 + jitter)), never
 * past max_ms. *rng is a xorshift state the caller keeps (any non-zero seed). */
int64_t herald_retry_backoff_ms(int attempt, int64_t min_ms, int64_t max_ms, double jitter,
                                uint64_t *rng);

#endif
