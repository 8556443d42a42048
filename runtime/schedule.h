/* Campaign schedules: the run times of ONCE/HOURLY/DAILY/WEEKLY/MONTHLY schedules anchored on
 * the wall clock of the schedule's zone, local-time delivery per endpoint zone, quiet time.
 *
 * Rules (the specs check each against the tz database):
 * - A schedule's runs have an index k = 0, 1, ... Run 0 is StartTime. DAILY, WEEKLY and
 *   MONTHLY runs keep StartTime's wall-clock time in the schedule's zone ("daily at 09:00
 *   Europe/Paris" is 09:00 in winter and in summer); their nominal wall time is StartTime's
 *   plus k days, 7k days or k months. MONTHLY keeps StartTime's day of month and clamps it to
 *   the last day of shorter months (31 Jan -> 28/29 Feb -> 31 Mar -> 30 Apr).
 * - A nominal wall time skipped by a DST change runs moved forward by the gap, a repeated
 *   one at its first occurrence (herald_tz_to_utc).
 * - HOURLY runs are StartTime plus k hours of elapsed time, so a DST change neither doubles
 *   nor skips an hour in UTC terms; on the zone's clock the runs read 01:00, 03:00 on a
 *   spring-forward night and 02:00 twice on a fall-back night.
 * - EndTime bounds runs inclusively: run k exists when its instant in the schedule's zone is
 *   at or before EndTime. ONCE has run 0 only; EVENT has no timed runs (triggers start it).
 * - IsLocalTime: an endpoint in zone Z receives run k when Z's clock shows the run's nominal
 *   wall time (each endpoint at its own 09:00), so EndTime applies in each recipient's local
 *   time as in Pinpoint. HOURLY runs are not shifted: they reach every zone each hour already,
 *   and a shift would double or drop runs on each zone's own DST nights. Endpoints whose zone
 *   is missing or unknown fall back to the schedule's zone; the caller records that.
 * - Quiet time {Start, End} ("HH:MM") holds in the endpoint's local time from Start up to but
 *   not including End; Start > End crosses midnight. It is quiet whenever the local clock
 *   shows a time in the window, so on a fall-back night a repeated hour can be quiet twice. */
#ifndef HERALD_SCHEDULE_H
#define HERALD_SCHEDULE_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"
#include "runtime/tz.h"

typedef enum {
  kHeraldFreqOnce = 0,
  kHeraldFreqHourly,
  kHeraldFreqDaily,
  kHeraldFreqWeekly,
  kHeraldFreqMonthly,
  kHeraldFreqEvent,
} HeraldFrequency;

typedef struct {
  HeraldFrequency frequency;
  const HeraldTz *tz;        /* the schedule's zone: the anchor of wall-clock recurrences */
  int64_t start_ms;
  HeraldWallTime start_wall; /* StartTime on the zone's clock */
  int has_end;
  int64_t end_ms;
} HeraldSchedule;

typedef struct {
  int64_t index;
  int64_t ms;             /* the run's instant in the schedule's zone */
  HeraldWallTime nominal; /* its wall time before any DST adjustment */
  HeraldTzFold fold;      /* how the nominal time mapped in the schedule's zone */
} HeraldRun;

/* "ONCE", "HOURLY", ... (Pinpoint's names). kHeraldInvalid for anything else. */
int herald_schedule_frequency_parse(const char *name, HeraldFrequency *out, HeraldError *err);
const char *herald_schedule_frequency_name(HeraldFrequency f);

/* Fills s; kHeraldInvalid when end_ms is before start_ms or an instant is out of range. */
int herald_schedule_init(HeraldSchedule *s, HeraldFrequency frequency, const HeraldTz *tz,
                         int64_t start_ms, int has_end, int64_t end_ms, HeraldError *err);

/* Run number index: 1 and *out filled when it exists, 0 when it does not (past EndTime, past
 * year 9999, a second run of ONCE, any run of EVENT). */
int herald_schedule_run(const HeraldSchedule *s, int64_t index, HeraldRun *out);
/* The first run whose instant is after after_ms: 1, or 0 when there is none. */
int herald_schedule_next_after(const HeraldSchedule *s, int64_t after_ms, HeraldRun *out);

/* When an endpoint in zone receives run (see IsLocalTime above). */
int64_t herald_schedule_local_due(const HeraldSchedule *s, const HeraldRun *run,
                                  const HeraldTz *zone, HeraldTzFold *fold);

/* One endpoint zone of a local-time run. zone_name is the input (NULL or "" when missing);
 * the rest is filled in. */
typedef struct {
  const char *zone_name;
  const HeraldTz *tz;  /* the zone used */
  int fell_back;       /* 0, or kHeraldZoneMissing / kHeraldZoneInvalid */
  int64_t due_ms;
  size_t slice;        /* index of its distinct due instant, in time order */
} HeraldZoneDue;

enum { kHeraldZoneMissing = 1, kHeraldZoneInvalid = 2 };

/* The zone an endpoint follows: its own (name) when valid, else fallback; *fell_back is 0 or
 * tells why it fell back. */
const HeraldTz *herald_schedule_endpoint_zone(const char *name, const HeraldTz *fallback,
                                              int *fell_back);

/* Resolves each endpoint zone (falling back to fallback when missing or unknown), computes its
 * due instant, and numbers the distinct due instants in time order, so the caller waits once
 * per instant rather than once per endpoint. *slices gets the number of distinct instants. */
int herald_schedule_slices(const HeraldSchedule *s, const HeraldRun *run,
                           const HeraldTz *fallback, HeraldZoneDue *items, size_t n,
                           size_t *slices, HeraldError *err);

typedef struct {
  int start_min, end_min; /* minutes after midnight; never equal */
} HeraldQuietTime;

/* "HH:MM" (24-hour) to minutes after midnight; kHeraldInvalid otherwise. */
int herald_schedule_parse_hhmm(const char *s, int *minutes, HeraldError *err);
/* kHeraldInvalid when start and end are equal (an empty window is a mistake, not a choice). */
int herald_schedule_quiet_init(HeraldQuietTime *q, int start_min, int end_min, HeraldError *err);
int herald_schedule_is_quiet(const HeraldQuietTime *q, const HeraldTz *tz, int64_t utc_ms);
/* The first instant at or after utc_ms that is not quiet: utc_ms itself when it is not quiet.
 * A window end skipped by a DST change ends the quiet time at the change. */
int64_t herald_schedule_quiet_end(const HeraldQuietTime *q, const HeraldTz *tz, int64_t utc_ms);

#endif
