#include "runtime/ratelimit.h"

#include <math.h>
#include <stdlib.h>

/* Refills are computed in floating point; a bucket within this of n counts as holding n, so
 * that waiting exactly the computed time always succeeds. */
#define EPSILON 1e-9

typedef struct {
  double limit;
  int64_t period_ms;
  double tokens;
  int64_t at_ms;   /* when tokens was last brought up to date */
} Bucket;

struct HeraldRateLimit {
  Bucket b[HERALD_RATELIMIT_MAX_WINDOWS];
  size_t n;
  HeraldRateLimit *parent;
  int64_t paused_until_ms;
};

HeraldRateLimit *herald_ratelimit_new(const HeraldRateWindow *windows, size_t n,
                                      HeraldRateLimit *parent, int64_t now_ms, HeraldError *err) {
  if (n > HERALD_RATELIMIT_MAX_WINDOWS) {
    herald_error_set(err, kHeraldInvalid, "at most %d windows", HERALD_RATELIMIT_MAX_WINDOWS);
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    if (!(windows[i].limit > 0) || !isfinite(windows[i].limit)) {
      herald_error_set(err, kHeraldInvalid, "window %zu: limit must be a positive number", i + 1);
      return NULL;
    }
    if (windows[i].period_ms <= 0) {
      herald_error_set(err, kHeraldInvalid, "window %zu: period must be positive", i + 1);
      return NULL;
    }
  }
  HeraldRateLimit *rl = calloc(1, sizeof *rl);
  if (rl == NULL) {
    herald_error_set(err, kHeraldNoMemory, "out of memory");
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    /* A window's limit is also its burst, so a bucket of less than one token could never send:
     * a fractional rate (0.5 per second) is one message per 1/limit periods (1 per 2 s). */
    double limit = windows[i].limit, period = (double)windows[i].period_ms;
    if (limit < 1) {
      period /= limit;
      limit = 1;
    }
    rl->b[i].limit = limit;
    rl->b[i].period_ms = period < 9.2e18 ? (int64_t)period : INT64_MAX;
    rl->b[i].tokens = limit;
    rl->b[i].at_ms = now_ms;
  }
  rl->n = n;
  rl->parent = parent;
  rl->paused_until_ms = INT64_MIN;
  return rl;
}

void herald_ratelimit_free(HeraldRateLimit *rl) { free(rl); }

static void refill(Bucket *b, int64_t now_ms) {
  if (now_ms <= b->at_ms) return;  /* a clock set back refills nothing */
  b->tokens += (double)(now_ms - b->at_ms) * b->limit / (double)b->period_ms;
  if (b->tokens > b->limit) b->tokens = b->limit;
  b->at_ms = now_ms;
}

/* Earliest time >= now_ms at which every bucket of rl and its parents holds n tokens;
 * INT64_MAX when n never fits. Buckets are refilled to now_ms on the way. */
static int64_t earliest(HeraldRateLimit *rl, double n, int64_t now_ms) {
  int64_t t = now_ms;
  for (HeraldRateLimit *r = rl; r != NULL; r = r->parent) {
    if (r->paused_until_ms > t) t = r->paused_until_ms;
    for (size_t i = 0; i < r->n; i++) {
      Bucket *b = &r->b[i];
      if (n > b->limit + EPSILON) return INT64_MAX;
      refill(b, now_ms);
      double missing = n - b->tokens;
      if (missing <= EPSILON) continue;
      int64_t wait = (int64_t)ceil(missing * (double)b->period_ms / b->limit - EPSILON);
      if (now_ms + wait > t) t = now_ms + wait;
    }
  }
  return t;
}

static void debit(HeraldRateLimit *rl, double n) {
  for (HeraldRateLimit *r = rl; r != NULL; r = r->parent)
    for (size_t i = 0; i < r->n; i++) r->b[i].tokens -= n;
}

int herald_ratelimit_take(HeraldRateLimit *rl, double n, int64_t now_ms, int64_t *next_slot_ms) {
  int64_t t = earliest(rl, n, now_ms);
  if (t == now_ms) {
    debit(rl, n);
    if (next_slot_ms) *next_slot_ms = now_ms;
    return 1;
  }
  if (next_slot_ms) *next_slot_ms = t;
  return 0;
}

int64_t herald_ratelimit_reserve(HeraldRateLimit *rl, double n, int64_t now_ms) {
  int64_t t = earliest(rl, n, now_ms);
  if (t == INT64_MAX) return -1;
  /* Debiting now what the slot will have refilled by then leaves the bucket negative until
   * the slot, which is what pushes the next reservation later. */
  debit(rl, n);
  return t;
}

void herald_ratelimit_pause_until(HeraldRateLimit *rl, int64_t until_ms) {
  if (until_ms > rl->paused_until_ms) rl->paused_until_ms = until_ms;
}

double herald_ratelimit_tokens(HeraldRateLimit *rl, size_t i, int64_t now_ms) {
  if (i >= rl->n) return 0;
  refill(&rl->b[i], now_ms);
  return rl->b[i].tokens;
}
