/* Rate limits as sliding windows counted in sub-intervals.
 *
 * A window of limit L and period P must never admit more than L in any span of P: it stands
 * for a provider's quota. A token bucket that starts full with a burst of L does not hold to
 * that (it lets L through at once and L more as it refills, nearly 2L in the first period).
 * Keeping the time of every admission would be exact, but a day window of a million would
 * keep a million times. So a window keeps counts per sub-interval of P / SLICES in a ring,
 * each with the time of its latest admission, and counts a sub-interval in full for as long as
 * that latest admission is less than P old. Some of its earlier admissions may have left the
 * span by then, so the count is never below the truth and the window never admits too many;
 * what a steady stream loses is the part of one sub-interval that left early, about
 * L / SLICES per period. A burst is not cut short: L may go at once, as a provider's quota
 * allows. The next slot is when enough of the oldest counted sub-intervals have left, which
 * is exact: a sub-interval leaves when its latest admission does.
 *
 * Time only moves forward in a window: admissions are recorded at or after the latest one, so
 * a clock set back admits nothing early, and bookings made ahead by reserve() come before any
 * later take(). */
#include "runtime/ratelimit.h"

#include <math.h>
#include <string.h>

/* Counts are sums of requested amounts in floating point; a window within this of its limit
 * counts as at it, so that waiting exactly the computed time always succeeds. */
#define EPSILON 1e-9

#define SLICES 60
/* A span of P ms overlaps at most SLICES + 1 sub-intervals of at least P / SLICES ms. */
#define RING (SLICES + 1)

typedef struct {
  double count;      /* admitted or booked in the sub-interval */
  int64_t last_ms;   /* the latest of them: the sub-interval counts until last_ms + period */
} Slice;

typedef struct {
  double limit;
  int64_t period_ms;
  int64_t slice_ms;
  int64_t head;       /* the sub-interval (time / slice_ms) of latest_ms */
  int64_t latest_ms;  /* the latest admission recorded; INT64_MIN before the first */
  Slice ring[RING];   /* sub-interval i at ring[i mod RING], for i in (head - RING, head] */
} Window;

struct HeraldRateLimit {
  HeraldRateLimit *parent;
  int64_t paused_until_ms;
  uint64_t changes;   /* counts admissions, bookings, pauses and imports (not exported) */
  size_t n;
  Window w[];
};

static int64_t add_sat(int64_t a, int64_t b) { return a > INT64_MAX - b ? INT64_MAX : a + b; }
static int64_t sub_sat(int64_t a, int64_t b) { return a < INT64_MIN + b ? INT64_MIN : a - b; }

static int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

static int64_t ring_index(int64_t i) {
  int64_t m = i % RING;
  return m < 0 ? m + RING : m;
}

static Slice *slice_at(Window *w, int64_t i) { return &w->ring[ring_index(i)]; }

static int64_t slice_length(int64_t period_ms) {
  return period_ms / SLICES + (period_ms % SLICES != 0);
}

size_t herald_ratelimit_size(size_t n) { return sizeof(HeraldRateLimit) + n * sizeof(Window); }

HeraldRateLimit *herald_ratelimit_init(void *mem, const HeraldRateWindow *windows, size_t n,
                                       HeraldRateLimit *parent, HeraldError *err) {
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
  HeraldRateLimit *rl = mem;
  memset(rl, 0, herald_ratelimit_size(n));
  for (size_t i = 0; i < n; i++) {
    /* A window with room for less than one message would never send: a fractional rate (0.5
     * per second) is one message per 1/limit periods (1 per 2 s). */
    double limit = windows[i].limit, period = (double)windows[i].period_ms;
    if (limit < 1) {
      period /= limit;
      limit = 1;
    }
    Window *w = &rl->w[i];
    w->limit = limit;
    w->period_ms = period < 9.2e18 ? (int64_t)period : INT64_MAX;
    w->slice_ms = slice_length(w->period_ms);
    w->latest_ms = INT64_MIN;
  }
  rl->n = n;
  rl->parent = parent;
  rl->paused_until_ms = INT64_MIN;
  return rl;
}

/* What window w counts at `at` (not before its latest admission): the sub-intervals whose
 * latest admission is less than a period old. */
static double held(Window *w, int64_t at) {
  if (w->latest_ms == INT64_MIN) return 0;
  int64_t since = sub_sat(at, w->period_ms);
  double sum = 0;
  for (int k = 0; k < RING; k++)
    if (w->ring[k].count > 0 && w->ring[k].last_ms > since) sum += w->ring[k].count;
  return sum;
}

/* Earliest time >= at (not before w's latest admission) at which w has room for n;
 * INT64_MAX when n exceeds its limit. Counts only fall as time passes, so w keeps the room. */
static int64_t window_slot(Window *w, double n, int64_t at) {
  if (n > w->limit + EPSILON) return INT64_MAX;
  double excess = held(w, at) + n - w->limit;
  if (excess <= EPSILON) return at;
  int64_t since = sub_sat(at, w->period_ms);
  /* Oldest first: sub-intervals leave in the order of their latest admissions. */
  for (int64_t i = w->head - SLICES; i <= w->head; i++) {
    Slice *s = slice_at(w, i);
    if (!(s->count > 0) || s->last_ms <= since) continue;
    excess -= s->count;
    if (excess <= EPSILON) return add_sat(s->last_ms, w->period_ms);
  }
  return INT64_MAX;  /* not reached: once they have all left, n <= limit fits */
}

/* Records n admitted at t (not before w's latest admission). */
static void record(Window *w, double n, int64_t t) {
  int64_t i = floor_div(t, w->slice_ms);
  if (w->latest_ms == INT64_MIN || i - w->head >= RING) {
    memset(w->ring, 0, sizeof w->ring);
  } else {
    for (int64_t j = w->head + 1; j <= i; j++) *slice_at(w, j) = (Slice){0, 0};
  }
  w->head = i;
  Slice *s = slice_at(w, i);
  s->count += n;
  s->last_ms = t;
  w->latest_ms = t;
}

/* Earliest time >= now_ms at which every window of rl and its parents has room for n;
 * INT64_MAX when n never fits. */
static int64_t earliest(HeraldRateLimit *rl, double n, int64_t now_ms) {
  int64_t at = now_ms;
  for (HeraldRateLimit *r = rl; r != NULL; r = r->parent) {
    if (r->paused_until_ms > at) at = r->paused_until_ms;
    for (size_t i = 0; i < r->n; i++)
      if (r->w[i].latest_ms > at) at = r->w[i].latest_ms;
  }
  int64_t t = at;
  for (HeraldRateLimit *r = rl; r != NULL; r = r->parent) {
    for (size_t i = 0; i < r->n; i++) {
      int64_t slot = window_slot(&r->w[i], n, at);
      if (slot == INT64_MAX) return INT64_MAX;
      if (slot > t) t = slot;
    }
  }
  return t;
}

static void record_all(HeraldRateLimit *rl, double n, int64_t t) {
  for (HeraldRateLimit *r = rl; r != NULL; r = r->parent) {
    /* a limit without windows records nothing: its state (a pause) has not changed */
    if (r->n > 0) r->changes++;
    for (size_t i = 0; i < r->n; i++) record(&r->w[i], n, t);
  }
}

int herald_ratelimit_take(HeraldRateLimit *rl, double n, int64_t now_ms, int64_t *next_slot_ms) {
  int64_t t = earliest(rl, n, now_ms);
  if (t == now_ms) {
    record_all(rl, n, now_ms);
    if (next_slot_ms) *next_slot_ms = now_ms;
    return 1;
  }
  if (next_slot_ms) *next_slot_ms = t;
  return 0;
}

int64_t herald_ratelimit_next(HeraldRateLimit *rl, double n, int64_t now_ms) {
  return earliest(rl, n, now_ms);
}

int64_t herald_ratelimit_reserve(HeraldRateLimit *rl, double n, int64_t now_ms) {
  int64_t t = earliest(rl, n, now_ms);
  if (t == INT64_MAX) return -1;
  /* Recorded at the slot: the window counts the booking from then on, which is what pushes
   * the next reservation (and any take before the slot) later. */
  record_all(rl, n, t);
  return t;
}

void herald_ratelimit_pause_until(HeraldRateLimit *rl, int64_t until_ms) {
  if (until_ms > rl->paused_until_ms) {
    rl->paused_until_ms = until_ms;
    rl->changes++;
  }
}

uint64_t herald_ratelimit_changes(const HeraldRateLimit *rl) { return rl->changes; }

double herald_ratelimit_tokens(HeraldRateLimit *rl, size_t i, int64_t now_ms) {
  if (i >= rl->n) return 0;
  Window *w = &rl->w[i];
  return w->limit - held(w, now_ms > w->latest_ms ? now_ms : w->latest_ms);
}

/* The exported state, version 1, little-endian whatever the host:
 *   "HRL" 1, paused_until_ms (8), the number of windows (1), then per window its period_ms
 *   (8), latest_ms (8), the number of sub-intervals that count something (1) and for each
 *   its age in sub-intervals before the latest one (1), its count (8, an IEEE double) and
 *   its latest admission (8).
 * Only the sub-intervals that count something go out. */
#define WINDOW_HEAD 17
#define SLICE_BYTES 17
_Static_assert(WINDOW_HEAD + RING * SLICE_BYTES == HERALD_RATELIMIT_WINDOW_STATE_MAX,
               "the bound in ratelimit.h");

static unsigned char *put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
  return p + 8;
}

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static uint64_t double_bits(double d) {
  uint64_t v;
  memcpy(&v, &d, sizeof v);
  return v;
}

static double bits_double(uint64_t v) {
  double d;
  memcpy(&d, &v, sizeof d);
  return d;
}

size_t herald_ratelimit_export(const HeraldRateLimit *rl, unsigned char *buf, size_t cap) {
  size_t need = 13;
  int counted[HERALD_RATELIMIT_MAX_WINDOWS] = {0};
  for (size_t i = 0; i < rl->n; i++) {
    const Window *w = &rl->w[i];
    for (int k = 0; k < RING && w->latest_ms != INT64_MIN; k++) counted[i] += w->ring[k].count > 0;
    need += WINDOW_HEAD + (size_t)counted[i] * SLICE_BYTES;
  }
  if (buf == NULL || cap < need) return need;
  unsigned char *p = buf;
  memcpy(p, "HRL\1", 4);
  p = put_u64(p + 4, (uint64_t)rl->paused_until_ms);
  *p++ = (unsigned char)rl->n;
  for (size_t i = 0; i < rl->n; i++) {
    const Window *w = &rl->w[i];
    p = put_u64(p, (uint64_t)w->period_ms);
    p = put_u64(p, (uint64_t)w->latest_ms);
    *p++ = (unsigned char)counted[i];
    if (w->latest_ms == INT64_MIN) continue;
    for (int64_t age = 0; age <= SLICES; age++) {
      const Slice *s = &w->ring[ring_index(w->head - age)];
      if (!(s->count > 0)) continue;
      *p++ = (unsigned char)age;
      p = put_u64(p, double_bits(s->count));
      p = put_u64(p, (uint64_t)s->last_ms);
    }
  }
  return need;
}

/* One window as exported, read back and checked. */
typedef struct {
  int64_t period_ms;
  int64_t latest_ms;
  int n;
  int64_t index[RING];  /* the sub-interval (time / slice) */
  Slice slice[RING];
} Stored;

static int read_window(const unsigned char **pp, const unsigned char *end, Stored *w, size_t nth,
                       HeraldError *err) {
  const unsigned char *p = *pp;
  if (end - p < WINDOW_HEAD) return herald_error_set(err, kHeraldInvalid, "window %zu: truncated", nth);
  w->period_ms = (int64_t)get_u64(p);
  w->latest_ms = (int64_t)get_u64(p + 8);
  w->n = p[16];
  p += WINDOW_HEAD;
  if (w->period_ms <= 0) return herald_error_set(err, kHeraldInvalid, "window %zu: period must be positive", nth);
  if (w->n > RING || (w->n > 0 && w->latest_ms == INT64_MIN))
    return herald_error_set(err, kHeraldInvalid, "window %zu: %d sub-intervals", nth, w->n);
  if (end - p < (ptrdiff_t)w->n * SLICE_BYTES)
    return herald_error_set(err, kHeraldInvalid, "window %zu: truncated", nth);
  int64_t slice_ms = slice_length(w->period_ms);
  int64_t head = w->latest_ms == INT64_MIN ? 0 : floor_div(w->latest_ms, slice_ms);
  if (head < INT64_MIN + RING)
    return herald_error_set(err, kHeraldInvalid, "window %zu: latest admission out of range", nth);
  unsigned char seen[RING] = {0};
  for (int k = 0; k < w->n; k++, p += SLICE_BYTES) {
    int age = p[0];
    double count = bits_double(get_u64(p + 1));
    int64_t last = (int64_t)get_u64(p + 9);
    /* each sub-interval once, within the ring, counting something, its latest admission in
     * it and not after the window's latest */
    if (age > SLICES || seen[age] || !(count > 0) || !isfinite(count) || last > w->latest_ms ||
        floor_div(last, slice_ms) != head - age)
      return herald_error_set(err, kHeraldInvalid, "window %zu: sub-interval %d is not consistent", nth, k + 1);
    seen[age] = 1;
    w->index[k] = head - age;
    w->slice[k] = (Slice){count, last};
  }
  *pp = p;
  return kHeraldOk;
}

int herald_ratelimit_import(HeraldRateLimit *rl, const unsigned char *buf, size_t len, HeraldError *err) {
  const unsigned char *p = buf, *end = buf + len;
  if (len < 13 || memcmp(buf, "HRL\1", 4) != 0)
    return herald_error_set(err, kHeraldInvalid, "not a rate limit's state (version 1)");
  int64_t paused = (int64_t)get_u64(p + 4);
  size_t n = p[12];
  p += 13;
  if (n > HERALD_RATELIMIT_MAX_WINDOWS)
    return herald_error_set(err, kHeraldInvalid, "%zu windows: at most %d", n, HERALD_RATELIMIT_MAX_WINDOWS);
  Stored stored[HERALD_RATELIMIT_MAX_WINDOWS];
  for (size_t j = 0; j < n; j++)
    if (read_window(&p, end, &stored[j], j + 1, err) != kHeraldOk) return err ? err->code : kHeraldInvalid;
  if (p != end) return herald_error_set(err, kHeraldInvalid, "%td bytes after the last window", end - p);
  /* The configuration may have changed since the state was written (the providers file edited
   * between two runs, or two processes with different files). What is compatible carries over:
   * windows are matched by period, and a stored window's counts replace those of the window of
   * the same period, whatever its limit now (what was sent still counts against the new
   * limit). A window the stored state lacks keeps what it counts here, so it never counts less
   * than this process sent; a stored window whose period is no longer configured is dropped. */
  unsigned char used[HERALD_RATELIMIT_MAX_WINDOWS] = {0};
  for (size_t i = 0; i < rl->n; i++) {
    Window *w = &rl->w[i];
    size_t j = 0;
    while (j < n && (used[j] || stored[j].period_ms != w->period_ms)) j++;
    if (j == n) continue;
    used[j] = 1;
    memset(w->ring, 0, sizeof w->ring);
    w->latest_ms = stored[j].latest_ms;
    w->head = w->latest_ms == INT64_MIN ? 0 : floor_div(w->latest_ms, w->slice_ms);
    for (int k = 0; k < stored[j].n; k++) *slice_at(w, stored[j].index[k]) = stored[j].slice[k];
  }
  /* A pause only ever lengthens: the later of the two holds, so a Retry-After this process
   * heard and could not write yet is not forgotten. */
  if (paused > rl->paused_until_ms) rl->paused_until_ms = paused;
  rl->changes++;
  return kHeraldOk;
}
