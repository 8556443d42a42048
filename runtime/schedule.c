/* Run times, local-time delivery and quiet time for campaign schedules (rules in schedule.h). */
#include "runtime/schedule.h"

#include <stdlib.h>
#include <string.h>

#define HOUR_MS 3600000LL

static const char *const frequency_names[] = {"ONCE",   "HOURLY",  "DAILY",
                                              "WEEKLY", "MONTHLY", "EVENT"};

int herald_schedule_frequency_parse(const char *name, HeraldFrequency *out, HeraldError *err) {
  for (size_t i = 0; i < sizeof frequency_names / sizeof frequency_names[0]; i++) {
    if (name != NULL && strcmp(name, frequency_names[i]) == 0) {
      *out = (HeraldFrequency)i;
      return kHeraldOk;
    }
  }
  return herald_error_set(err, kHeraldInvalid,
                          "'%.40s' is not a frequency (ONCE, HOURLY, DAILY, WEEKLY, MONTHLY, "
                          "EVENT)",
                          name != NULL ? name : "");
}

const char *herald_schedule_frequency_name(HeraldFrequency f) { return frequency_names[f]; }

static int in_range(int64_t ms) { return ms >= HERALD_TZ_MIN_MS && ms <= HERALD_TZ_MAX_MS; }

int herald_schedule_init(HeraldSchedule *s, HeraldFrequency frequency, const HeraldTz *tz,
                         int64_t start_ms, int has_end, int64_t end_ms, HeraldError *err) {
  if (!in_range(start_ms) || (has_end && !in_range(end_ms))) {
    return herald_error_set(err, kHeraldInvalid, "instant out of range (years 1-9999)");
  }
  if (has_end && end_ms < start_ms) {
    return herald_error_set(err, kHeraldInvalid, "EndTime is before StartTime");
  }
  memset(s, 0, sizeof *s);
  s->frequency = frequency;
  s->tz = tz;
  s->start_ms = start_ms;
  s->has_end = has_end;
  s->end_ms = end_ms;
  HeraldLocalTime lt;
  herald_tz_to_local(tz, start_ms, &lt);
  s->start_wall = lt.wall;
  return kHeraldOk;
}

/* The nominal wall time of run index for the wall-clock frequencies; 0 past year 9999. */
static int nominal_wall(const HeraldSchedule *s, int64_t index, HeraldWallTime *w) {
  *w = s->start_wall;
  if (s->frequency == kHeraldFreqMonthly) {
    if (index > 12 * 10000) return 0;
    int64_t months = (int64_t)(w->month - 1) + index;
    int64_t year = w->year + months / 12;
    if (year > 9999) return 0;
    w->year = (int)year;
    w->month = (int)(months % 12) + 1;
    int dim = herald_tz_days_in_month(w->year, w->month);
    if (s->start_wall.day > dim) w->day = dim;
    return 1;
  }
  int64_t step = s->frequency == kHeraldFreqWeekly ? 7 : 1;
  if (index > 366LL * 10000 / step) return 0;
  int64_t days = herald_tz_days_from_civil(w->year, w->month, w->day) + index * step;
  herald_tz_civil_from_days(days, &w->year, &w->month, &w->day);
  return w->year <= 9999;
}

int herald_schedule_run(const HeraldSchedule *s, int64_t index, HeraldRun *out) {
  if (index < 0) return 0;
  HeraldRun run;
  memset(&run, 0, sizeof run);
  run.index = index;
  switch (s->frequency) {
    case kHeraldFreqEvent:
      return 0;
    case kHeraldFreqOnce:
      if (index != 0) return 0;
      run.ms = s->start_ms;
      run.nominal = s->start_wall;
      break;
    case kHeraldFreqHourly: {
      if (index > (HERALD_TZ_MAX_MS - s->start_ms) / HOUR_MS) return 0;
      run.ms = s->start_ms + index * HOUR_MS;
      HeraldLocalTime lt;
      herald_tz_to_local(s->tz, run.ms, &lt);
      run.nominal = lt.wall;
      break;
    }
    case kHeraldFreqDaily:
    case kHeraldFreqWeekly:
    case kHeraldFreqMonthly:
      if (!nominal_wall(s, index, &run.nominal)) return 0;
      /* Run 0 is StartTime itself, even when StartTime falls in a repeated hour's second
       * occurrence, which the wall-clock rule would map to the first. */
      run.ms = index == 0 ? s->start_ms : herald_tz_to_utc(s->tz, &run.nominal, &run.fold);
      break;
  }
  if (s->has_end && run.ms > s->end_ms) return 0;
  *out = run;
  return 1;
}

/* About the distance between runs, to jump near a given instant before walking to it. */
static int64_t approx_period_ms(HeraldFrequency f) {
  switch (f) {
    case kHeraldFreqHourly: return HOUR_MS;
    case kHeraldFreqDaily: return HERALD_TZ_DAY_MS;
    case kHeraldFreqWeekly: return 7 * HERALD_TZ_DAY_MS;
    case kHeraldFreqMonthly: return 31 * HERALD_TZ_DAY_MS;
    default: return 0;
  }
}

int herald_schedule_next_after(const HeraldSchedule *s, int64_t after_ms, HeraldRun *out) {
  int64_t period = approx_period_ms(s->frequency);
  int64_t index = 0;
  if (period > 0 && after_ms > s->start_ms) {
    index = (after_ms - s->start_ms) / period - 2;
    if (index < 0) index = 0;
  }
  HeraldRun run;
  /* Runs are in time order, and a missing one lies past EndTime: step back until the run
   * before is at or before after_ms. */
  while (index > 0) {
    if (herald_schedule_run(s, index - 1, &run) && run.ms <= after_ms) break;
    index--;
  }
  for (;;) {
    if (!herald_schedule_run(s, index, &run)) return 0;
    if (run.ms > after_ms) break;
    index++;
  }
  *out = run;
  return 1;
}

int64_t herald_schedule_local_due(const HeraldSchedule *s, const HeraldRun *run,
                                  const HeraldTz *zone, HeraldTzFold *fold) {
  if (s->frequency == kHeraldFreqHourly) {
    if (fold != NULL) *fold = kHeraldTzExact;
    return run->ms;
  }
  return herald_tz_to_utc(zone, &run->nominal, fold);
}

const HeraldTz *herald_schedule_endpoint_zone(const char *name, const HeraldTz *fallback,
                                              int *fell_back) {
  *fell_back = 0;
  if (name == NULL || name[0] == '\0') {
    *fell_back = kHeraldZoneMissing;
    return fallback;
  }
  const HeraldTz *tz = herald_tz_get(name, NULL);
  if (tz == NULL) {
    *fell_back = kHeraldZoneInvalid;
    return fallback;
  }
  return tz;
}

static int compare_due(const void *a, const void *b) {
  const HeraldZoneDue *x = *(HeraldZoneDue *const *)a;
  const HeraldZoneDue *y = *(HeraldZoneDue *const *)b;
  return (x->due_ms > y->due_ms) - (x->due_ms < y->due_ms);
}

int herald_schedule_slices(const HeraldSchedule *s, const HeraldRun *run,
                           const HeraldTz *fallback, HeraldZoneDue *items, size_t n,
                           size_t *slices, HeraldError *err) {
  *slices = 0;
  if (n == 0) return kHeraldOk;
  HeraldZoneDue **order = malloc(n * sizeof *order);
  if (order == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  for (size_t i = 0; i < n; i++) {
    HeraldZoneDue *it = &items[i];
    it->tz = herald_schedule_endpoint_zone(it->zone_name, fallback, &it->fell_back);
    it->due_ms = herald_schedule_local_due(s, run, it->tz, NULL);
    order[i] = it;
  }
  qsort(order, n, sizeof *order, compare_due);
  size_t slice = 0;
  for (size_t i = 0; i < n; i++) {
    if (i > 0 && order[i]->due_ms != order[i - 1]->due_ms) slice++;
    order[i]->slice = slice;
  }
  free(order);
  *slices = slice + 1;
  return kHeraldOk;
}

int herald_schedule_parse_hhmm(const char *s, int *minutes, HeraldError *err) {
  if (s != NULL && strlen(s) == 5 && s[2] == ':' && s[0] >= '0' && s[0] <= '9' &&
      s[1] >= '0' && s[1] <= '9' && s[3] >= '0' && s[3] <= '9' && s[4] >= '0' && s[4] <= '9') {
    int h = (s[0] - '0') * 10 + (s[1] - '0');
    int m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h <= 23 && m <= 59) {
      *minutes = h * 60 + m;
      return kHeraldOk;
    }
  }
  return herald_error_set(err, kHeraldInvalid, "'%.40s' is not HH:MM", s != NULL ? s : "");
}

int herald_schedule_quiet_init(HeraldQuietTime *q, int start_min, int end_min, HeraldError *err) {
  if (start_min < 0 || start_min >= 1440 || end_min < 0 || end_min >= 1440) {
    return herald_error_set(err, kHeraldInvalid, "quiet time bounds must lie within a day");
  }
  if (start_min == end_min) {
    return herald_error_set(err, kHeraldInvalid,
                            "Start and End are equal (%02d:%02d): the window would be empty",
                            start_min / 60, start_min % 60);
  }
  q->start_min = start_min;
  q->end_min = end_min;
  return kHeraldOk;
}

static int quiet_at_local(const HeraldQuietTime *q, int64_t local_ms) {
  int64_t tod = local_ms - (local_ms / HERALD_TZ_DAY_MS) * HERALD_TZ_DAY_MS;
  if (tod < 0) tod += HERALD_TZ_DAY_MS;
  int64_t start = (int64_t)q->start_min * 60000, end = (int64_t)q->end_min * 60000;
  if (start < end) return tod >= start && tod < end;
  return tod >= start || tod < end;
}

int herald_schedule_is_quiet(const HeraldQuietTime *q, const HeraldTz *tz, int64_t utc_ms) {
  return quiet_at_local(q, utc_ms + (int64_t)herald_tz_offset(tz, utc_ms) * 1000);
}

int64_t herald_schedule_quiet_end(const HeraldQuietTime *q, const HeraldTz *tz, int64_t utc_ms) {
  /* Within one offset the local clock runs forward, so quiet time ends when it next shows
   * End; a DST change on the way restarts the reasoning from the change. Each pass crosses a
   * change, and there are at most two in the day before End. */
  int64_t t = utc_ms;
  for (int pass = 0; pass < 8; pass++) {
    if (!herald_schedule_is_quiet(q, tz, t)) return t;
    int64_t offset_ms = (int64_t)herald_tz_offset(tz, t) * 1000;
    int64_t local = t + offset_ms;
    int64_t day = local / HERALD_TZ_DAY_MS * HERALD_TZ_DAY_MS;
    if (day > local) day -= HERALD_TZ_DAY_MS;
    int64_t end_local = day + (int64_t)q->end_min * 60000;
    if (end_local <= local) end_local += HERALD_TZ_DAY_MS;
    int64_t candidate = end_local - offset_ms;
    int64_t change = herald_tz_next_change(tz, t, candidate);
    if (change < 0) return candidate;
    t = change;
  }
  return t;
}
