/* SQL functions for compiled segments and the segment version store (runtime/segment.h). */
#include "runtime/segment.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tz.h"

#define EARTH_RADIUS_KM 6371.0
#define DEG_TO_RAD (3.14159265358979323846 / 180.0)

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
  if (mo < 1 || mo > 12 || d < 1 || d > herald_tz_days_in_month(y, mo)) return 0;
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
  int64_t days = herald_tz_days_from_civil(y, mo, d);
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

/* herald_instant(text) -> ms and herald_day(text) -> days since 1970, or NULL when the text is
 * not a date (so no date comparison holds); the function's user data says which. */
static void sql_date(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  const char *s = (const char *)sqlite3_value_text(argv[0]);
  double ms;
  int64_t day;
  if (s == NULL || sqlite3_value_type(argv[0]) != SQLITE_TEXT ||
      !herald_segment_parse_instant(s, &ms, &day))
    return;
  if (sqlite3_user_data(ctx) != NULL) sqlite3_result_int64(ctx, day);
  else sqlite3_result_double(ctx, ms);
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
  if (sqlite3_create_function(db, "herald_instant", 1, flags, NULL, sql_date, NULL, NULL) !=
          SQLITE_OK ||
      sqlite3_create_function(db, "herald_day", 1, flags, (void *)"day", sql_date, NULL, NULL) !=
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

/* ---- value indexes ----
 *
 * Why a side table and not SQLite expression indexes: Pinpoint attributes are lists
 * ({"plan":["gold","silver"]}) and INCLUSIVE keeps an endpoint when any element matches. An
 * expression index holds one entry per row, so an index on the attribute's JSON text can only
 * answer "the whole list equals", never "some element equals". indexed_values holds one row
 * per (index, element, endpoint), which answers membership, CONTAINS (a scan of one name's
 * values, no JSON parsing), dates (the instant column) and metric comparisons (a range of the
 * primary key). Queries bind every value and the index id as parameters; the index SQL here
 * is fixed text and names are bound too, so nothing a user writes is spliced into SQL. Rows
 * are written by the endpoint writer (runtime/endpoint.c) for indexed names only, in the
 * writer's transaction, so an application without indexes pays one small query per writer. */

static const struct {
  const char *kind;   /* the segment dimension and the value_indexes.kind */
  const char *column; /* the endpoints column holding its JSON map */
  int metric;
} kIndexKinds[] = {
  {"Attributes", "attributes", 0},
  {"UserAttributes", "user_attributes", 0},
  {"Metrics", "metrics", 1},
};
#define INDEX_KIND_COUNT 3

struct HeraldValueIndexes {
  int count;
  struct {
    int64_t id;
    int kind; /* into kIndexKinds */
    char *name;
  } *items;
};

static int kind_index(const char *kind) {
  for (int i = 0; i < INDEX_KIND_COUNT; i++)
    if (strcmp(kind, kIndexKinds[i].kind) == 0) return i;
  return -1;
}

int herald_segment_index_check(const char *kind, const char *name, HeraldError *err) {
  if (kind == NULL || kind_index(kind) < 0)
    return herald_error_set(err, kHeraldInvalid,
                            "'%s' cannot be indexed: give Attributes.NAME, UserAttributes.NAME "
                            "or Metrics.NAME (herald stores no user metrics)",
                            kind ? kind : "");
  if (name == NULL || *name == '\0')
    return herald_error_set(err, kHeraldInvalid, "%s: the name is empty", kind);
  size_t chars = 0;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
    if ((*p & 0xC0) != 0x80) chars++;
    if (strchr("#:?\\/", *p) != NULL)
      return herald_error_set(err, kHeraldInvalid,
                              "%s.%s: names may not contain # : ? \\ or / (Pinpoint's rule)",
                              kind, name);
  }
  if (chars > 50)
    return herald_error_set(err, kHeraldInvalid,
                            "%s.%s: %zu characters; names have at most 50 (Pinpoint's rule)",
                            kind, name, chars);
  return kHeraldOk;
}

/* The id of index (kind, name) of app in *id, 0 when there is none. */
static int index_id(HeraldStore *store, const char *app, const char *kind, const char *name,
                    int64_t *id, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store, "SELECT id FROM value_indexes WHERE app_id = ?1 AND kind = ?2 AND name = ?3", err);
  if (st == NULL) return err->code;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  *id = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return herald_store_fail(store, err, "reading indexes");
  return kHeraldOk;
}

static sqlite3_stmt *insert_value_stmt(HeraldStore *store, HeraldError *err) {
  return herald_store_stmt(store,
                           "INSERT OR IGNORE INTO indexed_values(index_id, value, endpoint_id, "
                           "instant) VALUES (?1, ?2, ?3, ?4)",
                           err);
}

/* Binds an attribute value (text, with its instant) or a metric (a number) and inserts. */
static int insert_text_value(HeraldStore *store, sqlite3_stmt *ins, int64_t id, const char *value,
                             int len, const char *endpoint_id, HeraldError *err) {
  double ms;
  int64_t day;
  sqlite3_bind_int64(ins, 1, id);
  sqlite3_bind_text(ins, 2, value, len, SQLITE_STATIC);
  sqlite3_bind_text(ins, 3, endpoint_id, -1, SQLITE_STATIC);
  if (herald_segment_parse_instant(value, &ms, &day)) sqlite3_bind_double(ins, 4, ms);
  else sqlite3_bind_null(ins, 4);
  return herald_store_step_done(store, ins, err, "writing an index value");
}

/* Fills a new index from the application's endpoints. json_each by key (not by path) works
 * for every name, including ones with a '"', which a JSON path label cannot quote. */
static int populate(HeraldStore *store, const char *app, int kind, const char *name, int64_t id,
                    HeraldError *err) {
  char sql[256];
  snprintf(sql, sizeof sql,
           kIndexKinds[kind].metric
               ? "SELECT e.id, j.value FROM endpoints e, json_each(e.%s) j WHERE e.app_id = ?1 "
                 "AND j.key = ?2 AND j.type IN ('integer', 'real')"
               : "SELECT e.id, j.value FROM endpoints e, json_each(e.%s) a, json_each(a.value) j "
                 "WHERE e.app_id = ?1 AND a.key = ?2 AND j.type = 'text'",
           kIndexKinds[kind].column);
  sqlite3 *db = herald_store_db(store);
  sqlite3_stmt *scan = NULL;
  if (sqlite3_prepare_v2(db, sql, -1, &scan, NULL) != SQLITE_OK)
    return herald_store_fail(store, err, "preparing an index scan");
  sqlite3_bind_text(scan, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(scan, 2, name, -1, SQLITE_STATIC);
  sqlite3_stmt *ins = insert_value_stmt(store, err);
  int rc = ins == NULL ? SQLITE_ERROR : SQLITE_ROW;
  while (rc == SQLITE_ROW && (rc = sqlite3_step(scan)) == SQLITE_ROW) {
    const char *endpoint_id = (const char *)sqlite3_column_text(scan, 0);
    int ok;
    if (kIndexKinds[kind].metric) {
      sqlite3_bind_int64(ins, 1, id);
      sqlite3_bind_value(ins, 2, sqlite3_column_value(scan, 1));
      sqlite3_bind_text(ins, 3, endpoint_id, -1, SQLITE_STATIC);
      sqlite3_bind_null(ins, 4);
      ok = herald_store_step_done(store, ins, err, "writing an index value");
    } else {
      ok = insert_text_value(store, ins, id, (const char *)sqlite3_column_text(scan, 1),
                             sqlite3_column_bytes(scan, 1), endpoint_id, err);
    }
    if (ok != kHeraldOk) {
      sqlite3_finalize(scan);
      return err->code;
    }
  }
  if (rc != SQLITE_DONE && ins != NULL) herald_store_fail(store, err, "reading endpoints to index");
  sqlite3_finalize(scan);
  return rc == SQLITE_DONE ? kHeraldOk : err->code;
}

int herald_segment_index_add(HeraldStore *store, const char *app, const char *kind,
                             const char *name, const char *origin, int *created,
                             HeraldError *err) {
  *created = 0;
  if (herald_segment_index_check(kind, name, err) != kHeraldOk) return err->code;
  if (herald_store_app_exists(store, app, err) != kHeraldOk) return err->code;
  if (herald_store_begin(store, err) != kHeraldOk) return err->code;
  int64_t id = 0;
  int rc = index_id(store, app, kind, name, &id, err);
  if (rc == kHeraldOk && id == 0) {
    sqlite3_stmt *st = herald_store_stmt(
        store, "INSERT INTO value_indexes(app_id, kind, name, origin, creation_date) VALUES "
               "(?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        err);
    rc = st == NULL ? err->code : kHeraldOk;
    if (rc == kHeraldOk) {
      sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
      sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
      sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
      sqlite3_bind_text(st, 4, origin, -1, SQLITE_STATIC);
      rc = herald_store_step_done(store, st, err, "recording an index");
    }
    if (rc == kHeraldOk) {
      id = sqlite3_last_insert_rowid(herald_store_db(store));
      rc = populate(store, app, kind_index(kind), name, id, err);
    }
    if (rc == kHeraldOk) *created = 1;
  }
  if (rc != kHeraldOk) {
    herald_store_rollback(store);
    *created = 0;
    return rc;
  }
  return herald_store_commit(store, err);
}

int herald_segment_index_drop(HeraldStore *store, const char *app, const char *kind,
                              const char *name, int *dropped, HeraldError *err) {
  *dropped = 0;
  if (herald_segment_index_check(kind, name, err) != kHeraldOk) return err->code;
  if (herald_store_begin(store, err) != kHeraldOk) return err->code;
  int64_t id = 0;
  int rc = index_id(store, app, kind, name, &id, err);
  static const char *const sql[] = {"DELETE FROM indexed_values WHERE index_id = ?1",
                                     "DELETE FROM value_indexes WHERE id = ?1"};
  for (int i = 0; i < 2 && rc == kHeraldOk && id != 0; i++) {
    sqlite3_stmt *st = herald_store_stmt(store, sql[i], err);
    if (st == NULL) {
      rc = err->code;
      break;
    }
    sqlite3_bind_int64(st, 1, id);
    rc = herald_store_step_done(store, st, err, "dropping an index");
  }
  if (rc != kHeraldOk) {
    herald_store_rollback(store);
    return rc;
  }
  *dropped = id != 0;
  return herald_store_commit(store, err);
}

void herald_segment_indexes_close(HeraldValueIndexes *ix) {
  if (ix == NULL) return;
  for (int i = 0; i < ix->count; i++) free(ix->items[i].name);
  free(ix->items);
  free(ix);
}

int herald_segment_indexes_open(HeraldStore *store, const char *app, HeraldValueIndexes **out,
                                HeraldError *err) {
  *out = NULL;
  sqlite3_stmt *st =
      herald_store_stmt(store, "SELECT id, kind, name FROM value_indexes WHERE app_id = ?1", err);
  if (st == NULL) return err->code;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  HeraldValueIndexes *ix = NULL;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (ix == NULL && (ix = calloc(1, sizeof *ix)) == NULL) break;
    void *grown = realloc(ix->items, (size_t)(ix->count + 1) * sizeof *ix->items);
    if (grown == NULL) break;
    ix->items = grown;
    int kind = kind_index((const char *)sqlite3_column_text(st, 1));
    char *name = strdup((const char *)sqlite3_column_text(st, 2));
    if (name == NULL) break;
    if (kind < 0) { /* the CHECK constraint makes this unreachable; skip rather than guess */
      free(name);
      continue;
    }
    ix->items[ix->count].id = sqlite3_column_int64(st, 0);
    ix->items[ix->count].kind = kind;
    ix->items[ix->count].name = name;
    ix->count++;
  }
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) {
    herald_segment_indexes_close(ix);
    return herald_error_set(err, kHeraldNoMemory, "out of memory");
  }
  if (rc != SQLITE_DONE) {
    herald_segment_indexes_close(ix);
    return herald_store_fail(store, err, "reading indexes");
  }
  *out = ix;
  return kHeraldOk;
}

int herald_segment_indexes_write(HeraldStore *store, const HeraldValueIndexes *ix, const char *app,
                                 const char *endpoint_id, int replace, json_t *maps[3],
                                 HeraldError *err) {
  if (ix == NULL) return kHeraldOk;
  if (replace && herald_segment_indexes_forget(store, app, endpoint_id, err) != kHeraldOk)
    return err->code;
  sqlite3_stmt *ins = insert_value_stmt(store, err);
  if (ins == NULL) return err->code;
  for (int i = 0; i < ix->count; i++) {
    int kind = ix->items[i].kind;
    json_t *v = json_object_get(maps[kind], ix->items[i].name);
    if (v == NULL) continue;
    if (kIndexKinds[kind].metric) {
      if (!json_is_number(v)) continue;
      sqlite3_bind_int64(ins, 1, ix->items[i].id);
      if (json_is_integer(v)) sqlite3_bind_int64(ins, 2, json_integer_value(v));
      else sqlite3_bind_double(ins, 2, json_real_value(v));
      sqlite3_bind_text(ins, 3, endpoint_id, -1, SQLITE_STATIC);
      sqlite3_bind_null(ins, 4);
      if (herald_store_step_done(store, ins, err, "writing an index value") != kHeraldOk)
        return err->code;
      continue;
    }
    size_t k;
    json_t *s;
    json_array_foreach(v, k, s) {
      if (!json_is_string(s)) continue;
      if (insert_text_value(store, ins, ix->items[i].id, json_string_value(s),
                            (int)json_string_length(s), endpoint_id, err) != kHeraldOk)
        return err->code;
    }
  }
  return kHeraldOk;
}

int herald_segment_indexes_forget(HeraldStore *store, const char *app, const char *endpoint_id,
                                  HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store, "DELETE FROM indexed_values WHERE endpoint_id = ?2 AND index_id IN "
             "(SELECT id FROM value_indexes WHERE app_id = ?1)",
      err);
  if (st == NULL) return err->code;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, endpoint_id, -1, SQLITE_STATIC);
  return herald_store_step_done(store, st, err, "removing index values");
}
