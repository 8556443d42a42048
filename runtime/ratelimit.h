/* Rate limits as token buckets over several windows at once (say 10/s, 500/min and
 * 20,000/day), optionally under a parent limit shared by many (a global or per-provider cap).
 * Time is passed in, so the maths is pure and tests drive it with a manual clock.
 *
 * A message over the limit is not spun on: take() says when the next slot is, and reserve()
 * books that slot so the caller can schedule the message for it. A Retry-After from the
 * receiver pauses the limit until the given time. */
#ifndef HERALD_RATELIMIT_H
#define HERALD_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"

#define HERALD_RATELIMIT_MAX_WINDOWS 8

typedef struct {
  double limit;        /* messages per period (> 0); also the burst the window allows (a limit
                        * under 1 becomes 1 per period / limit: 0.5/s is 1 per 2 s) */
  int64_t period_ms;   /* > 0 */
} HeraldRateWindow;

typedef struct HeraldRateLimit HeraldRateLimit;

/* Buckets start full at now_ms. parent (may be NULL) must outlive the limit. */
HeraldRateLimit *herald_ratelimit_new(const HeraldRateWindow *windows, size_t n,
                                      HeraldRateLimit *parent, int64_t now_ms, HeraldError *err);
void herald_ratelimit_free(HeraldRateLimit *rl);

/* Takes n tokens from every window (and the parent's) if all have them: returns 1. Otherwise
 * takes nothing, returns 0 and sets *next_slot_ms to the earliest time all would have them
 * (INT64_MAX when n exceeds a window's limit, so it never fits). */
int herald_ratelimit_take(HeraldRateLimit *rl, double n, int64_t now_ms, int64_t *next_slot_ms);

/* Books n tokens at the earliest slot and returns its time (now_ms when they are available):
 * later callers get later slots. -1 when n exceeds a window's limit. */
int64_t herald_ratelimit_reserve(HeraldRateLimit *rl, double n, int64_t now_ms);

/* Nothing is granted before until_ms (a Retry-After); an earlier pause is kept if longer. */
void herald_ratelimit_pause_until(HeraldRateLimit *rl, int64_t until_ms);

/* Tokens window i holds at now_ms (negative while slots are booked ahead). */
double herald_ratelimit_tokens(HeraldRateLimit *rl, size_t i, int64_t now_ms);

#endif
