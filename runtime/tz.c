/* Time zones on GLib's GTimeZone.
 *
 * Why GLib: it reads the system tz database itself (the TZif files of Debian's tzdata under
 * $TZDIR or /usr/share/zoneinfo, including the POSIX rule in the footer, so dates past the
 * last listed transition are right), it is thread-safe, and a GTimeZone is an immutable value
 * we can cache per name. The alternatives were worse: glibc's localtime_r/mktime work only on
 * the process-global TZ, so every conversion in another zone would need setenv("TZ") + tzset()
 * (which re-reads the file) under a lock, and mktime's choice in DST gaps and overlaps depends
 * on tm_isdst guesses (measured here: switching among five zones that way costs ~6.3 us per
 * conversion, against ~0.13 us for a GTimeZone lookup); ICU carries its own copy of the zone
 * rules, which can disagree with the system's tzdata; and parsing TZif by hand is code we
 * would have to keep right ourselves.
 *
 * What we take from GLib is only "which offset is in force at this UTC instant"
 * (g_time_zone_find_interval + g_time_zone_get_offset). The rules for wall times that do not
 * exist or exist twice are ours (see herald_tz_to_utc): GLib's g_date_time_new rounds a
 * skipped time to the end of the gap (Paris 02:30 -> 03:00) and takes standard time, the
 * second occurrence, in an overlap, while schedules want "move forward by the gap" and "first
 * occurrence".
 *
 * Two kinds of names are ours too. Pinpoint's fixed offsets ("UTC+05:30") must not reach
 * GLib, which would read them as POSIX TZ strings where the sign is inverted (UTC+05:30 would
 * become five and a half hours *behind* UTC). And GLib accepts any POSIX TZ string ("ABC3"),
 * so a name is only a zone when the tz database has a TZif file by that name. */
#include "runtime/tz.h"

#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct HeraldTz {
  char *name;
  GTimeZone *gtz;   /* NULL for a fixed offset */
  int fixed_offset; /* seconds, when gtz is NULL */
};

static GMutex cache_lock;
static GHashTable *cache; /* name -> HeraldTz*, kept for the life of the process */

static int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
  return q;
}

static int two_digits(const char *s, int *out) {
  if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9') return 0;
  *out = (s[0] - '0') * 10 + (s[1] - '0');
  return 1;
}

/* "UTC", "UTC+05", "UTC+05:30", "UTC-08", "UTC+5": 1 with the offset, 0 when the name is not
 * of this form, -1 (err set) when it is but the offset is out of range. */
static int parse_fixed(const char *name, int *offset, HeraldError *err) {
  if (strncmp(name, "UTC", 3) != 0) return 0;
  const char *p = name + 3;
  if (*p == '\0') {
    *offset = 0;
    return 1;
  }
  if (*p != '+' && *p != '-') return 0;
  int sign = *p == '-' ? -1 : 1;
  p++;
  int hours, minutes = 0;
  if (two_digits(p, &hours)) {
    p += 2;
  } else if (*p >= '0' && *p <= '9') {
    hours = *p++ - '0';
  } else {
    return 0;
  }
  if (*p == ':') {
    if (!two_digits(p + 1, &minutes)) return 0;
    p += 3;
  }
  if (*p != '\0') return 0;
  if (minutes > 59 || hours * 60 + minutes > 14 * 60) {
    herald_error_set(err, kHeraldInvalid,
                     "time zone '%s': a fixed offset must lie between UTC-14:00 and UTC+14:00",
                     name);
    return -1;
  }
  *offset = sign * (hours * 3600 + minutes * 60);
  return 1;
}

static const char *zoneinfo_dir(void) {
  const char *dir = getenv("TZDIR");
  return dir != NULL && dir[0] != '\0' ? dir : "/usr/share/zoneinfo";
}

/* A tz database name: path components of letters, digits, '_', '-', '+', none starting with
 * '.' or '-', naming a TZif file. The "right/" zones count leap seconds, which our UTC
 * milliseconds (like Unix time) do not. */
static int is_tzdb_name(const char *name) {
  size_t len = strlen(name);
  if (len == 0 || len > 200 || strncmp(name, "right/", 6) == 0) return 0;
  int at_start = 1;
  for (const char *p = name; *p; p++) {
    char c = *p;
    if (c == '/') {
      if (at_start) return 0;
      at_start = 1;
      continue;
    }
    if (at_start && (c == '-' || c == '+')) return 0;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '-' || c == '+')) {
      return 0;
    }
    at_start = 0;
  }
  if (at_start) return 0;
  char path[512];
  int n = snprintf(path, sizeof path, "%s/%s", zoneinfo_dir(), name);
  if (n < 0 || (size_t)n >= sizeof path) return 0;
  FILE *f = fopen(path, "rb");
  if (f == NULL) return 0;
  char magic[4];
  size_t got = fread(magic, 1, sizeof magic, f);
  fclose(f);
  return got == sizeof magic && memcmp(magic, "TZif", 4) == 0;
}

const HeraldTz *herald_tz_get(const char *name, HeraldError *err) {
  if (name == NULL) {
    herald_error_set(err, kHeraldInvalid, "time zone missing");
    return NULL;
  }
  g_mutex_lock(&cache_lock);
  if (cache == NULL) cache = g_hash_table_new(g_str_hash, g_str_equal);
  HeraldTz *tz = g_hash_table_lookup(cache, name);
  g_mutex_unlock(&cache_lock);
  if (tz != NULL) return tz;

  int offset = 0;
  GTimeZone *gtz = NULL;
  int fixed = parse_fixed(name, &offset, err);
  if (fixed < 0) return NULL;
  if (!fixed) {
    if (is_tzdb_name(name)) gtz = g_time_zone_new_identifier(name);
    if (gtz == NULL) {
      herald_error_set(err, kHeraldInvalid,
                       "unknown time zone '%s' (expected a tz database name like Europe/Paris "
                       "or a fixed offset like UTC+05:30)",
                       name);
      return NULL;
    }
  }
  tz = malloc(sizeof *tz);
  char *copy = strdup(name);
  if (tz == NULL || copy == NULL) {
    free(tz);
    free(copy);
    if (gtz != NULL) g_time_zone_unref(gtz);
    herald_error_set(err, kHeraldNoMemory, "out of memory loading time zone '%s'", name);
    return NULL;
  }
  tz->name = copy;
  tz->gtz = gtz;
  tz->fixed_offset = offset;

  g_mutex_lock(&cache_lock);
  HeraldTz *raced = g_hash_table_lookup(cache, name);
  if (raced == NULL) g_hash_table_insert(cache, tz->name, tz);
  g_mutex_unlock(&cache_lock);
  if (raced != NULL) {
    if (gtz != NULL) g_time_zone_unref(gtz);
    free(tz->name);
    free(tz);
    return raced;
  }
  return tz;
}

const char *herald_tz_name(const HeraldTz *tz) { return tz->name; }

int herald_tz_is_fixed(const HeraldTz *tz) { return tz->gtz == NULL; }

static int interval_at(const HeraldTz *tz, int64_t utc_ms) {
  return g_time_zone_find_interval(tz->gtz, G_TIME_TYPE_UNIVERSAL, floor_div(utc_ms, 1000));
}

int herald_tz_offset(const HeraldTz *tz, int64_t utc_ms) {
  if (tz->gtz == NULL) return tz->fixed_offset;
  return (int)g_time_zone_get_offset(tz->gtz, interval_at(tz, utc_ms));
}

void herald_tz_to_local(const HeraldTz *tz, int64_t utc_ms, HeraldLocalTime *out) {
  memset(out, 0, sizeof *out);
  if (tz->gtz == NULL) {
    out->offset_s = tz->fixed_offset;
    snprintf(out->abbr, sizeof out->abbr, "%s", tz->name);
  } else {
    int iv = interval_at(tz, utc_ms);
    out->offset_s = (int)g_time_zone_get_offset(tz->gtz, iv);
    out->is_dst = g_time_zone_is_dst(tz->gtz, iv) ? 1 : 0;
    snprintf(out->abbr, sizeof out->abbr, "%s", g_time_zone_get_abbreviation(tz->gtz, iv));
  }
  int64_t local = utc_ms + (int64_t)out->offset_s * 1000;
  herald_tz_wall_from_ms(local, &out->wall);
  int64_t days = floor_div(local, HERALD_TZ_DAY_MS);
  out->wday = (int)((days % 7 + 7 + 4) % 7); /* 1970-01-01 was a Thursday */
  out->yday = (int)(days - herald_tz_days_from_civil(out->wall.year, 1, 1));
}

int64_t herald_tz_to_utc(const HeraldTz *tz, const HeraldWallTime *w, HeraldTzFold *fold) {
  int64_t wall = herald_tz_wall_ms(w);
  HeraldTzFold kind = kHeraldTzExact;
  int64_t result;
  if (tz->gtz == NULL) {
    result = wall - (int64_t)tz->fixed_offset * 1000;
  } else {
    /* The instant lies within a day of the wall time read as UTC; the offsets in force a
     * day before and a day after are the candidates (equal unless a change is near). */
    int before = herald_tz_offset(tz, wall - HERALD_TZ_DAY_MS);
    int after = herald_tz_offset(tz, wall + HERALD_TZ_DAY_MS);
    int64_t c1 = wall - (int64_t)before * 1000;
    int64_t c2 = wall - (int64_t)after * 1000;
    int ok1 = herald_tz_offset(tz, c1) == before;
    int ok2 = herald_tz_offset(tz, c2) == after;
    if (ok1 && ok2) {
      result = c1 < c2 ? c1 : c2;
      if (c1 != c2) kind = kHeraldTzOverlap;
    } else if (ok1) {
      result = c1;
    } else if (ok2) {
      result = c2;
    } else {
      /* Skipped: read with the offset before the change, so the clock after the change
       * shows the wall time plus the gap. */
      result = c1;
      kind = kHeraldTzGap;
    }
  }
  if (fold != NULL) *fold = kind;
  return result;
}

int64_t herald_tz_next_change(const HeraldTz *tz, int64_t after_ms, int64_t limit_ms) {
  if (tz->gtz == NULL || limit_ms <= after_ms) return -1;
  int offset = herald_tz_offset(tz, after_ms);
  if (herald_tz_offset(tz, limit_ms) == offset) return -1;
  /* Changes happen on whole seconds: search seconds, lo keeps the old offset, hi the new. */
  int64_t lo = floor_div(after_ms, 1000);
  int64_t hi = floor_div(limit_ms, 1000);
  while (hi - lo > 1) {
    int64_t mid = lo + (hi - lo) / 2;
    if (herald_tz_offset(tz, mid * 1000) == offset) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return hi * 1000;
}

/* Howard Hinnant's days_from_civil / civil_from_days algorithms (public domain). */
int64_t herald_tz_days_from_civil(int year, int month, int day) {
  int64_t y = month <= 2 ? year - 1 : year;
  int64_t era = floor_div(y, 400);
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

void herald_tz_civil_from_days(int64_t days, int *year, int *month, int *day) {
  days += 719468;
  int64_t era = floor_div(days, 146097);
  int64_t doe = days - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  int d = (int)(doy - (153 * mp + 2) / 5 + 1);
  int m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *year = (int)(yoe + era * 400 + (m <= 2 ? 1 : 0));
  *month = m;
  *day = d;
}

int herald_tz_days_in_month(int year, int month) {
  static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (month == 2) {
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return 28 + leap;
  }
  return days[month - 1];
}

int64_t herald_tz_wall_ms(const HeraldWallTime *w) {
  int64_t days = herald_tz_days_from_civil(w->year, w->month, w->day);
  return ((days * 24 + w->hour) * 60 + w->min) * 60000 + (int64_t)w->sec * 1000 + w->ms;
}

void herald_tz_wall_from_ms(int64_t ms, HeraldWallTime *w) {
  int64_t days = floor_div(ms, HERALD_TZ_DAY_MS);
  int64_t rest = ms - days * HERALD_TZ_DAY_MS;
  herald_tz_civil_from_days(days, &w->year, &w->month, &w->day);
  w->hour = (int)(rest / 3600000);
  w->min = (int)(rest / 60000 % 60);
  w->sec = (int)(rest / 1000 % 60);
  w->ms = (int)(rest % 1000);
}

int herald_tz_check_wall(const HeraldWallTime *w, HeraldError *err) {
  if (w->year < 1 || w->year > 9999) {
    return herald_error_set(err, kHeraldInvalid, "year %d out of range 1-9999", w->year);
  }
  if (w->month < 1 || w->month > 12) {
    return herald_error_set(err, kHeraldInvalid, "month %d out of range 1-12", w->month);
  }
  int dim = herald_tz_days_in_month(w->year, w->month);
  if (w->day < 1 || w->day > dim) {
    return herald_error_set(err, kHeraldInvalid, "day %d out of range 1-%d for %04d-%02d",
                            w->day, dim, w->year, w->month);
  }
  if (w->hour < 0 || w->hour > 23) {
    return herald_error_set(err, kHeraldInvalid, "hour %d out of range 0-23", w->hour);
  }
  if (w->min < 0 || w->min > 59) {
    return herald_error_set(err, kHeraldInvalid, "minute %d out of range 0-59", w->min);
  }
  if (w->sec < 0 || w->sec > 59) {
    return herald_error_set(err, kHeraldInvalid, "second %d out of range 0-59", w->sec);
  }
  if (w->ms < 0 || w->ms > 999) {
    return herald_error_set(err, kHeraldInvalid, "millisecond %d out of range 0-999", w->ms);
  }
  return kHeraldOk;
}

static int digits(const char **p, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    char c = (*p)[i];
    if (c < '0' || c > '9') return 0;
    v = v * 10 + (c - '0');
  }
  *p += n;
  *out = v;
  return 1;
}

static int iso_fail(HeraldError *err, const char *s, const char *why) {
  return herald_error_set(err, kHeraldInvalid,
                          "'%.80s' is not an ISO 8601 time (%s; expected YYYY-MM-DD, "
                          "YYYY-MM-DDTHH:MM[:SS[.fff]] and Z or an offset like +02:00)",
                          s, why);
}

int herald_tz_parse_iso(const char *s, HeraldIsoTime *out, HeraldError *err) {
  memset(out, 0, sizeof *out);
  HeraldWallTime *w = &out->wall;
  const char *p = s;
  if (!digits(&p, 4, &w->year) || *p++ != '-' || !digits(&p, 2, &w->month) || *p++ != '-' ||
      !digits(&p, 2, &w->day)) {
    return iso_fail(err, s, "bad date");
  }
  if (*p == 'T' || *p == 't' || *p == ' ') {
    p++;
    out->has_time = 1;
    if (!digits(&p, 2, &w->hour) || *p++ != ':' || !digits(&p, 2, &w->min)) {
      return iso_fail(err, s, "bad time of day");
    }
    if (*p == ':') {
      p++;
      if (!digits(&p, 2, &w->sec)) return iso_fail(err, s, "bad seconds");
      if (*p == '.' || *p == ',') {
        p++;
        if (*p < '0' || *p > '9') return iso_fail(err, s, "bad fraction of a second");
        int scale = 100;
        while (*p >= '0' && *p <= '9') {
          w->ms += (*p - '0') * scale;
          scale /= 10;
          p++;
        }
      }
    }
    if (*p == 'Z' || *p == 'z') {
      out->has_offset = 1;
      p++;
    } else if (*p == '+' || *p == '-') {
      int sign = *p == '-' ? -1 : 1;
      int oh, om = 0;
      p++;
      if (!digits(&p, 2, &oh)) return iso_fail(err, s, "bad offset");
      if (*p == ':') {
        p++;
        if (!digits(&p, 2, &om)) return iso_fail(err, s, "bad offset");
      } else if (*p >= '0' && *p <= '9') {
        if (!digits(&p, 2, &om)) return iso_fail(err, s, "bad offset");
      }
      if (oh > 23 || om > 59) return iso_fail(err, s, "offset out of range");
      out->has_offset = 1;
      out->offset_s = sign * (oh * 3600 + om * 60);
    }
  }
  if (*p != '\0') return iso_fail(err, s, "unexpected text after the time");
  HeraldError why;
  if (herald_tz_check_wall(w, &why) != kHeraldOk) return iso_fail(err, s, why.msg);
  return kHeraldOk;
}

void herald_tz_format_iso(const HeraldTz *tz, int64_t utc_ms, char *buf, size_t len) {
  HeraldLocalTime lt;
  herald_tz_to_local(tz, utc_ms, &lt);
  const HeraldWallTime *w = &lt.wall;
  char frac[8] = "";
  if (w->ms != 0) snprintf(frac, sizeof frac, ".%03d", w->ms);
  char zone[16];
  if (tz->gtz == NULL && lt.offset_s == 0) {
    snprintf(zone, sizeof zone, "Z");
  } else {
    int off = lt.offset_s < 0 ? -lt.offset_s : lt.offset_s;
    /* Offsets are whole minutes in the tz database since 1972; older LMT seconds drop. */
    snprintf(zone, sizeof zone, "%c%02d:%02d", lt.offset_s < 0 ? '-' : '+', off / 3600,
             off / 60 % 60);
  }
  snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d%s%s", w->year, w->month, w->day, w->hour,
           w->min, w->sec, frac, zone);
}
