/* SQL functions for compiled segments and the segment version store (runtime/segment.h). */
#include "runtime/segment.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EARTH_RADIUS_KM 6371.0
#define DEG_TO_RAD (3.14159265358979323846 / 180.0)

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m) {
  static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
  return days[m - 1];
}

/* Reads exactly n digits. */
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

int herald_segment_parse_instant(const char *s, double *ms, int64_t *day) {
  const char *p = s;
  int y, mo, d, h = 0, mi = 0, sec = 0, milli = 0;
  if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
      !digits(&p, 2, &d))
    return 0;
  if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo)) return 0;
  int offset_min = 0;
  if (*p == 'T') {
    p++;
    if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi)) return 0;
    if (*p == ':') {
      p++;
      if (!digits(&p, 2, &sec)) return 0;
      if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9') return 0;
        /* Milliseconds from the first three digits; finer digits are read and ignored. */
        for (int i = 0; *p >= '0' && *p <= '9'; i++, p++)
          if (i < 3) milli += (*p - '0') * (i == 0 ? 100 : i == 1 ? 10 : 1);
      }
    }
    if (h > 23 || mi > 59 || sec > 59) return 0;
    if (*p == 'Z') {
      p++;
    } else if (*p == '+' || *p == '-') {
      int sign = *p++ == '-' ? -1 : 1, oh, om;
      if (!digits(&p, 2, &oh) || *p++ != ':' || !digits(&p, 2, &om) || oh > 23 || om > 59)
        return 0;
      offset_min = sign * (oh * 60 + om);
    }
  }
  if (*p != '\0') return 0;
  int64_t days = days_from_civil(y, mo, d);
  int64_t secs = days * 86400 + h * 3600 + mi * 60 + sec - (int64_t)offset_min * 60;
  *ms = (double)(secs * 1000 + milli);
  *day = days;
  return 1;
}

double herald_segment_km(double lat1, double lon1, double lat2, double lon2) {
  double p1 = lat1 * DEG_TO_RAD, p2 = lat2 * DEG_TO_RAD;
  double dp = (lat2 - lat1) * DEG_TO_RAD, dl = (lon2 - lon1) * DEG_TO_RAD;
  double a = sin(dp / 2) * sin(dp / 2) + cos(p1) * cos(p2) * sin(dl / 2) * sin(dl / 2);
  if (a > 1) a = 1;
  return 2 * EARTH_RADIUS_KM * asin(sqrt(a));
}

static void sql_instant(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  const char *s = (const char *)sqlite3_value_text(argv[0]);
  double ms;
  int64_t day;
  if (s == NULL || sqlite3_value_type(argv[0]) != SQLITE_TEXT ||
      !herald_segment_parse_instant(s, &ms, &day))
    return; /* NULL: not a date, so no date comparison holds */
  sqlite3_result_double(ctx, ms);
}

static void sql_day(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  const char *s = (const char *)sqlite3_value_text(argv[0]);
  double ms;
  int64_t day;
  if (s == NULL || sqlite3_value_type(argv[0]) != SQLITE_TEXT ||
      !herald_segment_parse_instant(s, &ms, &day))
    return;
  sqlite3_result_int64(ctx, day);
}

static void sql_km(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  for (int i = 0; i < 4; i++)
    if (sqlite3_value_type(argv[i]) == SQLITE_NULL) return;
  sqlite3_result_double(ctx, herald_segment_km(sqlite3_value_double(argv[0]),
                                               sqlite3_value_double(argv[1]),
                                               sqlite3_value_double(argv[2]),
                                               sqlite3_value_double(argv[3])));
}

/* JSON scanning for herald_member: the text has no backslash (the caller checks), so a string
 * ends at the next quote. Each returns the position after the value, or NULL if malformed. */
static const char *skip_ws(const char *p) {
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
  return p;
}

static const char *skip_value(const char *p) {
  p = skip_ws(p);
  if (*p == '"') {
    const char *q = strchr(p + 1, '"');
    return q ? q + 1 : NULL;
  }
  if (*p == '[' || *p == '{') {
    int depth = 0;
    for (; *p; p++) {
      if (*p == '"') {
        p = strchr(p + 1, '"');
        if (p == NULL) return NULL;
      } else if (*p == '[' || *p == '{') {
        depth++;
      } else if (*p == ']' || *p == '}') {
        if (--depth == 0) return p + 1;
      }
    }
    return NULL;
  }
  while (*p && *p != ',' && *p != '}' && *p != ']' && *p != ' ') p++;
  return p;
}

/* herald_member(json, key): the value of a top-level member of a JSON object without
 * backslashes, as json_extract(json, '$."key"') returns it (arrays and objects as JSON text),
 * without building a parse tree. Segment endpoint views read attributes and metrics with it. */
static void sql_member(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  const char *json = (const char *)sqlite3_value_text(argv[0]);
  const char *key = (const char *)sqlite3_value_text(argv[1]);
  if (json == NULL || key == NULL) return;
  size_t klen = strlen(key);
  const char *p = skip_ws(json);
  if (*p++ != '{') return;
  for (;;) {
    p = skip_ws(p);
    if (*p != '"') return;
    const char *k = p + 1, *kend = strchr(k, '"');
    if (kend == NULL) return;
    p = skip_ws(kend + 1);
    if (*p++ != ':') return;
    p = skip_ws(p);
    const char *end = skip_value(p);
    if (end == NULL) return;
    if ((size_t)(kend - k) == klen && memcmp(k, key, klen) == 0) {
      if (*p == '"') {
        sqlite3_result_text(ctx, p + 1, (int)(end - p - 2), SQLITE_TRANSIENT);
      } else if (*p == '[' || *p == '{') {
        sqlite3_result_text(ctx, p, (int)(end - p), SQLITE_TRANSIENT);
      } else if (*p == 't' || *p == 'f') {
        sqlite3_result_int(ctx, *p == 't');
      } else if (*p != 'n') {
        char *num_end = NULL;
        int integer = 1;
        for (const char *c = p; c < end; c++)
          if (*c == '.' || *c == 'e' || *c == 'E') integer = 0;
        if (integer) {
          long long v = strtoll(p, &num_end, 10);
          if (num_end == end) sqlite3_result_int64(ctx, v);
        } else {
          double v = strtod(p, &num_end);
          if (num_end == end) sqlite3_result_double(ctx, v);
        }
      }
      return;
    }
    p = skip_ws(end);
    if (*p++ != ',') return;
  }
}

int herald_segment_register_sql(sqlite3 *db, HeraldError *err) {
  const int flags = SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS;
  if (sqlite3_create_function(db, "herald_instant", 1, flags, NULL, sql_instant, NULL, NULL) !=
          SQLITE_OK ||
      sqlite3_create_function(db, "herald_day", 1, flags, NULL, sql_day, NULL, NULL) !=
          SQLITE_OK ||
      sqlite3_create_function(db, "herald_km", 4, flags, NULL, sql_km, NULL, NULL) != SQLITE_OK ||
      sqlite3_create_function(db, "herald_member", 2, flags, NULL, sql_member, NULL, NULL) !=
          SQLITE_OK)
    return herald_error_set(err, kHeraldStore, "segments: registering SQL functions: %s",
                            sqlite3_errmsg(db));
  return kHeraldOk;
}

int herald_segment_save(HeraldStore *store, const char *app, const char *id, const char *name,
                        const char *type, const char *definition, int *version, HeraldError *err) {
  if (herald_store_app_exists(store, app, err) != kHeraldOk) return err->code;
  sqlite3_stmt *st = herald_store_stmt(
      store, "INSERT INTO segments(app_id, id, version, name, segment_type, definition, "
             "creation_date) SELECT ?1, ?2, coalesce(max(version), 0) + 1, ?3, ?4, ?5, "
             "strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM segments WHERE app_id = ?1 AND id = ?2 "
             "RETURNING version",
      err);
  if (st == NULL) return err->code;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, type, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 5, definition, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    herald_store_fail(store, err, "saving a segment");
    sqlite3_reset(st);
    return err->code;
  }
  *version = sqlite3_column_int(st, 0);
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "saving a segment");
  return kHeraldOk;
}

int herald_segment_add_member(HeraldStore *store, const char *app, const char *id, int version,
                              const char *endpoint_id, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store, "INSERT OR IGNORE INTO segment_members(app_id, segment_id, version, endpoint_id) "
             "VALUES (?1, ?2, ?3, ?4)",
      err);
  if (st == NULL) return err->code;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, version);
  sqlite3_bind_text(st, 4, endpoint_id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "adding a segment member");
  return kHeraldOk;
}
