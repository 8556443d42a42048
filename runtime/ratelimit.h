/* Rate limits over several windows at once (say 10/s, 500/min and 20,000/day), optionally
 * under a parent limit shared by many (a global or per-provider cap). A window is a hard cap:
 * no span of its period admits more than its limit, so a provider's daily quota of N is never
 * exceeded in any 24 hours. Time is passed in, so the maths is pure and tests drive it with a
 * manual clock.
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
  double limit;        /* messages per period (> 0); all of them may go at once (a limit under
                        * 1 becomes 1 per period / limit: 0.5/s is 1 per 2 s) */
  int64_t period_ms;   /* > 0 */
} HeraldRateWindow;

typedef struct HeraldRateLimit HeraldRateLimit;

/* Bytes a limit of n windows takes: the same whatever the windows' limits. */
size_t herald_ratelimit_size(size_t n);

/* Makes a limit with nothing admitted yet in mem (herald_ratelimit_size(n) bytes, aligned for
 * int64_t and double; the caller owns it and frees it). parent (may be NULL) must outlive the
 * limit. Returns NULL with err set when a window is invalid. */
HeraldRateLimit *herald_ratelimit_init(void *mem, const HeraldRateWindow *windows, size_t n,
                                       HeraldRateLimit *parent, HeraldError *err);

/* Admits n messages now in every window (and the parent's) if all have room: returns 1.
 * Otherwise admits nothing, returns 0 and sets *next_slot_ms to the earliest time all would
 * have room (INT64_MAX when n exceeds a window's limit, so it never fits). */
int herald_ratelimit_take(HeraldRateLimit *rl, double n, int64_t now_ms, int64_t *next_slot_ms);

/* The earliest time n messages would be admitted in every window (and the parent's): now_ms
 * when take() would admit them now. Admits nothing. INT64_MAX when n never fits. */
int64_t herald_ratelimit_next(HeraldRateLimit *rl, double n, int64_t now_ms);

/* Books n messages at the earliest slot and returns its time (now_ms when there is room now):
 * later callers get later slots, and take() waits behind the bookings. -1 when n exceeds a
 * window's limit. */
int64_t herald_ratelimit_reserve(HeraldRateLimit *rl, double n, int64_t now_ms);

/* Nothing is granted before until_ms (a Retry-After); an earlier pause is kept if longer. */
void herald_ratelimit_pause_until(HeraldRateLimit *rl, int64_t until_ms);

/* How many more messages window i has room for at now_ms (its limit less what it counts in
 * the last period, bookings ahead included). */
double herald_ratelimit_tokens(HeraldRateLimit *rl, size_t i, int64_t now_ms);

/* How many times rl's state has changed (an admission, a booking, a longer pause, an import):
 * a caller that keeps the state elsewhere writes it again only when this has moved. A limit
 * without windows changes only when paused. */
uint64_t herald_ratelimit_changes(const HeraldRateLimit *rl);

/* The state of a limit as bytes, so that every process sharing a store (and a process after
 * its restart) counts against the same windows: what each window counts and the pause, not
 * the windows' limits nor the parent (a parent is kept on its own). At most
 * HERALD_RATELIMIT_STATE_MAX bytes. */
#define HERALD_RATELIMIT_WINDOW_STATE_MAX 1054
#define HERALD_RATELIMIT_STATE_MAX (13 + HERALD_RATELIMIT_MAX_WINDOWS * HERALD_RATELIMIT_WINDOW_STATE_MAX)

/* Writes rl's state to buf when cap is enough; returns its length either way. */
size_t herald_ratelimit_export(const HeraldRateLimit *rl, unsigned char *buf, size_t cap);

/* Replaces rl's state by one herald_ratelimit_export wrote, checked first (malformed: err set,
 * rl unchanged). Windows are matched by period: a window of rl that the state lacks keeps its
 * own counts, a stored window rl lacks is dropped; the later of the two pauses holds. */
int herald_ratelimit_import(HeraldRateLimit *rl, const unsigned char *buf, size_t len, HeraldError *err);

#endif
