/* Time zones for schedules: IANA names from the system tz database and Pinpoint's fixed
 * offsets ("UTC", "UTC+05:30", "UTC-08"), with conversions between UTC milliseconds and
 * wall-clock time, a calendar in plain arithmetic, and ISO 8601 reading and writing. */
#ifndef HERALD_TZ_H
#define HERALD_TZ_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"

/* Instants and wall times are limited to years 1-9999 (ISO 8601's four-digit years). */
#define HERALD_TZ_MIN_MS (-62135596800000LL) /* 0001-01-01T00:00:00Z */
#define HERALD_TZ_MAX_MS (253402300799999LL) /* 9999-12-31T23:59:59.999Z */
#define HERALD_TZ_DAY_MS (86400000LL)

typedef struct HeraldTz HeraldTz;

/* A wall-clock reading in the proleptic Gregorian calendar, without a zone. */
typedef struct {
  int year, month, day; /* month 1-12, day 1-31 */
  int hour, min, sec, ms;
} HeraldWallTime;

/* A UTC instant seen in a zone. */
typedef struct {
  HeraldWallTime wall;
  int wday;     /* 0 = Sunday */
  int yday;     /* 0 = 1 January */
  int offset_s; /* local time minus UTC, in seconds */
  int is_dst;
  char abbr[16];
} HeraldLocalTime;

/* How a wall time maps to instants in a zone. */
typedef enum {
  kHeraldTzExact = 0, /* it occurs once */
  kHeraldTzGap,       /* a forward change skips it: it is moved forward by the gap */
  kHeraldTzOverlap,   /* a backward change repeats it: the first occurrence is taken */
} HeraldTzFold;

/* Resolves a zone name. Zones are cached for the life of the process, so the pointer stays
 * valid and may be shared; lookups are thread-safe. NULL with err set (kHeraldInvalid) for a
 * name that is neither a fixed offset nor a zone of the tz database. */
const HeraldTz *herald_tz_get(const char *name, HeraldError *err);
const char *herald_tz_name(const HeraldTz *tz);
/* 1 for "UTC" and the fixed offsets, 0 for tz database zones. */
int herald_tz_is_fixed(const HeraldTz *tz);

/* The offset (local minus UTC, seconds) in force at utc_ms. */
int herald_tz_offset(const HeraldTz *tz, int64_t utc_ms);
void herald_tz_to_local(const HeraldTz *tz, int64_t utc_ms, HeraldLocalTime *out);

/* The instant at which the zone's clock shows w (which must pass herald_tz_check_wall).
 * A wall time skipped by a forward change (02:30 on a spring-forward night in Paris) is read
 * with the offset in force before the change, which moves it forward by the gap (03:30 CEST);
 * a wall time that occurs twice (02:30 on a fall-back night) is its first occurrence (CEST).
 * fold (may be NULL) tells which case applied. */
int64_t herald_tz_to_utc(const HeraldTz *tz, const HeraldWallTime *w, HeraldTzFold *fold);

/* The first instant in (after_ms, limit_ms] whose offset differs from the one at after_ms, or
 * -1 when the offset at limit_ms is the one at after_ms. It assumes at most one change in the
 * interval, which holds for intervals under a week in the tz database since 1970. */
int64_t herald_tz_next_change(const HeraldTz *tz, int64_t after_ms, int64_t limit_ms);

/* Calendar arithmetic with no zone: days since 1970-01-01. */
int64_t herald_tz_days_from_civil(int year, int month, int day);
void herald_tz_civil_from_days(int64_t days, int *year, int *month, int *day);
int herald_tz_days_in_month(int year, int month);
/* The wall time read as if it were UTC, in milliseconds, and back. */
int64_t herald_tz_wall_ms(const HeraldWallTime *w);
void herald_tz_wall_from_ms(int64_t ms, HeraldWallTime *w);
/* kHeraldOk when every field is in range (no leap second 60); err names the field. */
int herald_tz_check_wall(const HeraldWallTime *w, HeraldError *err);

/* An ISO 8601 time: YYYY-MM-DD, optionally followed by T (or a space) HH:MM[:SS[.fff]] and
 * then Z or an offset ±HH[:MM]. Fractions beyond milliseconds are truncated. */
typedef struct {
  HeraldWallTime wall;
  int has_time;   /* 0 for a date alone (midnight) */
  int has_offset; /* Z or ±HH:MM was given */
  int offset_s;
} HeraldIsoTime;

int herald_tz_parse_iso(const char *s, HeraldIsoTime *out, HeraldError *err);
/* "2026-03-29T03:30:00+02:00" (".250" when there are milliseconds; "Z" in fixed zone UTC+0).
 * buf needs 40 bytes. */
void herald_tz_format_iso(const HeraldTz *tz, int64_t utc_ms, char *buf, size_t len);

#endif
