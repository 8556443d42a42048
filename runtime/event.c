#include "runtime/event.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "runtime/datetime.h"
#include "runtime/utf8.h"

static int invalid(HeraldError *err, HeraldErrorCode code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int invalid(HeraldError *err, HeraldErrorCode code, const char *path, const char *fmt, ...) {
  char reason[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  return herald_error_set(err, code, "%s: %s", path, reason);
}


static const char *const client_fields[] = {"AppPackageName", "AppTitle", "AppVersionCode",
                                            "ClientSdkVersion", "SdkName"};
enum { kClientFieldCount = 5 };

/* A string with a NUL inside is cut there wherever it is used as C text (an id bound to a
 * statement): such strings are refused. */
static int nul_inside(json_t *v) {
  return json_is_string(v) && strlen(json_string_value(v)) != json_string_length(v);
}
static const char kNulInside[] = "contains a NUL character (\\u0000)";

static int check_string(json_t *v, const char *path, size_t max, HeraldError *err) {
  if (!json_is_string(v)) return invalid(err, kHeraldInvalid, path, "expected a string");
  if (nul_inside(v)) return invalid(err, kHeraldInvalid, path, "%s", kNulInside);
  if (json_string_length(v) == 0) return invalid(err, kHeraldInvalid, path, "must not be empty");
  if (max && herald_utf8_chars(json_string_value(v)) > max)
    return invalid(err, kHeraldLimit, path, "longer than %zu characters", max);
  return kHeraldOk;
}

/* Validates obj[key] as a date and replaces it with the normalised UTC form. */
static int check_date(json_t *obj, const char *key, const char *path, int required,
                      HeraldError *err) {
  json_t *v = json_object_get(obj, key);
  if (v == NULL) return required ? invalid(err, kHeraldInvalid, path, "required") : kHeraldOk;
  char norm[HERALD_DATETIME_LEN];
  if (!json_is_string(v) || nul_inside(v) || herald_datetime_parse(json_string_value(v), norm) != 0)
    return invalid(err, kHeraldInvalid, path, "expected an ISO-8601 date such as "
                   "2026-11-29T10:00:00Z");
  json_object_set_new(obj, key, json_string(norm));
  return kHeraldOk;
}

static int check_session(json_t *s, HeraldError *err) {
  if (!json_is_object(s)) return invalid(err, kHeraldInvalid, "Session", "expected an object");
  const char *key;
  json_t *v;
  json_object_foreach(s, key, v) {
    if (strcmp(key, "Id") == 0) {
      if (check_string(v, "Session.Id", 128, err) != kHeraldOk) return err->code;
    } else if (strcmp(key, "Duration") == 0) {
      if (!json_is_integer(v) || json_integer_value(v) < 0)
        return invalid(err, kHeraldInvalid, "Session.Duration",
                       "expected a non-negative integer (milliseconds)");
    } else if (strcmp(key, "StartTimestamp") != 0 && strcmp(key, "StopTimestamp") != 0) {
      char p[128];
      snprintf(p, sizeof p, "Session.%s", key);
      return invalid(err, kHeraldInvalid, p, "unknown field");
    }
  }
  if (json_object_get(s, "Id") == NULL) return invalid(err, kHeraldInvalid, "Session.Id", "required");
  if (check_date(s, "StartTimestamp", "Session.StartTimestamp", 1, err) != kHeraldOk ||
      check_date(s, "StopTimestamp", "Session.StopTimestamp", 0, err) != kHeraldOk)
    return err->code;
  return kHeraldOk;
}

static int check_event(json_t *e, HeraldError *err) {
  if (!json_is_object(e)) return herald_error_set(err, kHeraldInvalid, "event: expected an object");
  size_t keys = 0;
  const char *key;
  json_t *v;
  json_object_foreach(e, key, v) {
    int rc = kHeraldOk;
    if (strcmp(key, "EventType") == 0) {
      rc = check_string(v, key, 100, err);
    } else if (strcmp(key, "EventId") == 0 || strcmp(key, "EndpointId") == 0) {
      rc = check_string(v, key, 128, err);
    } else if (strcmp(key, "Timestamp") == 0) {
      rc = kHeraldOk; /* checked below, also when absent */
    } else if (strcmp(key, "Attributes") == 0 || strcmp(key, "Metrics") == 0) {
      int metrics = key[0] == 'M';
      if (!json_is_object(v)) {
        rc = invalid(err, kHeraldInvalid, key, "expected an object of name -> %s",
                     metrics ? "number" : "string");
      } else {
        const char *name;
        json_t *x;
        json_object_foreach(v, name, x) {
          char p[160];
          snprintf(p, sizeof p, "%s.%s", key, name);
          keys++;
          if (*name == '\0') rc = invalid(err, kHeraldInvalid, p, "an attribute name is empty");
          else if (herald_utf8_chars(name) > 50)
            rc = invalid(err, kHeraldLimit, p, "attribute name longer than 50 characters");
          else if (metrics && (!json_is_number(x) || !isfinite(json_number_value(x))))
            rc = invalid(err, kHeraldInvalid, p, "expected a finite number");
          else if (!metrics && !json_is_string(x))
            rc = invalid(err, kHeraldInvalid, p, "expected a string");
          else if (nul_inside(x))
            rc = invalid(err, kHeraldInvalid, p, "%s", kNulInside);
          else if (!metrics && herald_utf8_chars(json_string_value(x)) > HERALD_EVENT_VALUE_MAX)
            rc = invalid(err, kHeraldLimit, p, "value longer than %d characters (Pinpoint drops "
                         "such events)", HERALD_EVENT_VALUE_MAX);
          if (rc != kHeraldOk) break;
        }
      }
    } else if (strcmp(key, "Session") == 0) {
      rc = check_session(v, err);
    } else {
      size_t i;
      for (i = 0; i < kClientFieldCount; i++)
        if (strcmp(key, client_fields[i]) == 0) break;
      if (i < kClientFieldCount) rc = check_string(v, key, 256, err);
      else
        rc = invalid(err, kHeraldInvalid, key, "unknown field (an event has EndpointId, EventId, "
                     "EventType, Timestamp, Attributes, Metrics, Session, AppPackageName, "
                     "AppTitle, AppVersionCode, ClientSdkVersion, SdkName)");
    }
    if (rc != kHeraldOk) return rc;
  }
  if (json_object_get(e, "EventType") == NULL)
    return invalid(err, kHeraldInvalid, "EventType", "required");
  if (check_date(e, "Timestamp", "Timestamp", 1, err) != kHeraldOk) return err->code;
  if (keys > HERALD_EVENT_KEYS_MAX)
    return invalid(err, kHeraldLimit, "Attributes", "%zu attribute and metric keys; at most %d "
                   "per event", keys, HERALD_EVENT_KEYS_MAX);
  return kHeraldOk;
}

static uint64_t fnv(const char *s, uint64_t h) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

/* The hash covers the endpoint and the event without its EndpointId field, so an event put
 * through the API and the same event in an import file get the same id. */
static int content_id(const char *endpoint_id, json_t *e, char out[33], HeraldError *err) {
  json_t *own = json_object_get(e, "EndpointId");
  if (own != NULL) {
    json_incref(own);
    json_object_del(e, "EndpointId");
  }
  char *text = json_dumps(e, JSON_COMPACT | JSON_SORT_KEYS);
  if (own != NULL) json_object_set_new(e, "EndpointId", own);
  if (text == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  uint64_t a = fnv(text, fnv(endpoint_id, 1469598103934665603ULL));
  uint64_t b = fnv(text, fnv(endpoint_id, 0x9e3779b97f4a7c15ULL));
  free(text);
  snprintf(out, 33, "%016llx%016llx", (unsigned long long)a, (unsigned long long)b);
  return kHeraldOk;
}

static char *dump_or_null(json_t *v) {
  return v && !(json_is_object(v) && json_object_size(v) == 0) ? json_dumps(v, JSON_COMPACT)
                                                               : NULL;
}

/* Moves the endpoint's last_activity forward; *found says whether the endpoint exists. */
static int touch(HeraldStore *store, const char *app, const char *endpoint_id,
                 const char *timestamp, int *found, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store, "UPDATE endpoints SET last_activity = ?3 WHERE app_id = ?1 AND id = ?2 AND "
             "(last_activity IS NULL OR last_activity < ?3)", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, endpoint_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, timestamp, -1, SQLITE_STATIC);
  int rc = herald_store_step_done(store, st, err, "recording an endpoint's last activity");
  if (rc != kHeraldOk) return rc;
  *found = 1;
  if (sqlite3_changes(herald_store_db(store)) > 0) return kHeraldOk;
  /* Either the endpoint is unknown or its last activity is already later. */
  st = herald_store_stmt(store, "SELECT 1 FROM endpoints WHERE app_id = ?1 AND id = ?2", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, endpoint_id, -1, SQLITE_STATIC);
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_DONE) *found = 0;
  else if (rc != SQLITE_ROW) return herald_store_fail(store, err, "looking up an endpoint");
  return kHeraldOk;
}

int herald_event_touch(HeraldStore *store, const char *app, const char *endpoint_id,
                       const char *timestamp, HeraldError *err) {
  int found;
  return touch(store, app, endpoint_id, timestamp, &found, err);
}

static int put_event(HeraldStore *store, const char *app, const char *endpoint_id, json_t *event,
                     int known, int *inserted, char *event_id_out, HeraldError *err);

int herald_event_insert(HeraldStore *store, const HeraldEventRow *row, int *inserted,
                        HeraldError *err) {
  if (inserted) *inserted = 0;
  sqlite3_stmt *st = herald_store_stmt(
      store, "INSERT OR IGNORE INTO events(app_id, endpoint_id, event_id, event_type, timestamp, "
             "attributes, metrics, session, client, arrival) VALUES (?1, ?2, ?3, ?4, ?5, "
             "coalesce(?6, '{}'), coalesce(?7, '{}'), ?8, ?9, ?10)", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, row->app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, row->endpoint_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, row->event_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, row->event_type, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 5, row->timestamp, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 6, row->attributes, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 7, row->metrics, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 8, row->session, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 9, row->client, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 10, row->arrival, -1, SQLITE_STATIC);
  int rc = herald_store_step_done(store, st, err, "inserting an event");
  if (rc != kHeraldOk) return rc;
  if (inserted) *inserted = sqlite3_changes(herald_store_db(store)) > 0;
  return kHeraldOk;
}

int herald_event_put(HeraldStore *store, const char *app, const char *endpoint_id, json_t *event,
                     int *inserted, char *event_id_out, HeraldError *err) {
  return put_event(store, app, endpoint_id, event, 0, inserted, event_id_out, err);
}

int herald_event_put_known(HeraldStore *store, const char *app, const char *endpoint_id,
                           json_t *event, int *inserted, HeraldError *err) {
  return put_event(store, app, endpoint_id, event, 1, inserted, NULL, err);
}

/* known: the caller has established that the endpoint exists and moves its last activity. */
static int put_event(HeraldStore *store, const char *app, const char *endpoint_id, json_t *event,
                     int known, int *inserted, char *event_id_out, HeraldError *err) {
  if (inserted) *inserted = 0;
  if (check_event(event, err) != kHeraldOk) return err->code;
  const char *own = json_string_value(json_object_get(event, "EndpointId"));
  if (endpoint_id == NULL) endpoint_id = own;
  if (endpoint_id == NULL) return invalid(err, kHeraldInvalid, "EndpointId", "required");
  if (own != NULL && strcmp(own, endpoint_id) != 0)
    return invalid(err, kHeraldInvalid, "EndpointId", "'%s' differs from the endpoint '%s' the "
                   "event is put for", own, endpoint_id);

  char derived[33];
  const char *event_id = json_string_value(json_object_get(event, "EventId"));
  if (event_id == NULL) {
    if (content_id(endpoint_id, event, derived, err) != kHeraldOk) return err->code;
    event_id = derived;
  }
  if (event_id_out) snprintf(event_id_out, 129, "%s", event_id);
  const char *timestamp = json_string_value(json_object_get(event, "Timestamp"));

  if (herald_store_begin(store, err) != kHeraldOk) return err ? err->code : kHeraldStore;
  int rc = kHeraldOk;
  if (!known) {
    int found;
    if (touch(store, app, endpoint_id, timestamp, &found, err) != kHeraldOk) goto fail;
    if (!found) {
      if (herald_store_app_exists(store, app, err) == kHeraldOk)
        invalid(err, kHeraldNotFound, "EndpointId", "no endpoint '%s' in application '%s'",
                endpoint_id, app);
      goto fail;
    }
  }

  json_t *client = NULL; /* most events carry no client fields: no object for them */
  for (int i = 0; i < kClientFieldCount; i++) {
    json_t *v = json_object_get(event, client_fields[i]);
    if (v == NULL) continue;
    if (client == NULL) client = json_object();
    json_object_set(client, client_fields[i], v);
  }
  char *attrs = dump_or_null(json_object_get(event, "Attributes"));
  char *metrics = dump_or_null(json_object_get(event, "Metrics"));
  char *session = dump_or_null(json_object_get(event, "Session"));
  char *client_text = dump_or_null(client);
  json_decref(client);
  char arrival[HERALD_DATETIME_LEN];
  herald_datetime_now(arrival);
  HeraldEventRow row = {
    .app = app, .endpoint_id = endpoint_id, .event_id = event_id,
    .event_type = json_string_value(json_object_get(event, "EventType")), .timestamp = timestamp,
    .attributes = attrs, .metrics = metrics, .session = session, .client = client_text,
    .arrival = arrival,
  };
  rc = herald_event_insert(store, &row, inserted, err);
  free(attrs);
  free(metrics);
  free(session);
  free(client_text);
  if (rc != kHeraldOk) goto fail;
  return herald_store_commit(store, err);

fail:
  herald_store_rollback(store);
  return err ? err->code : kHeraldStore;
}

int herald_event_put_batch(HeraldStore *store, const char *app, json_t *events, long long *inserted,
                           HeraldError *err) {
  *inserted = 0;
  if (!json_is_array(events))
    return herald_error_set(err, kHeraldInvalid, "events: expected a list of events");
  if (herald_store_begin(store, err) != kHeraldOk) return err ? err->code : kHeraldStore;
  size_t i;
  json_t *e;
  json_array_foreach(events, i, e) {
    int added = 0;
    if (herald_event_put(store, app, NULL, e, &added, NULL, err) != kHeraldOk) {
      herald_error_prefix(err, "[%zu].", i + 1);
      herald_store_rollback(store);
      *inserted = 0;
      return err->code;
    }
    *inserted += added;
  }
  return herald_store_commit(store, err);
}

static json_t *load_or_empty(sqlite3_stmt *st, int col) {
  const char *s = (const char *)sqlite3_column_text(st, col);
  json_t *v = s ? json_loads(s, 0, NULL) : NULL;
  return v;
}

int herald_event_for_endpoint(HeraldStore *store, const char *app, const char *endpoint_id,
                              const char *since, const char *type, long long limit, json_t **out,
                              HeraldError *err) {
  *out = NULL;
  char since_norm[HERALD_DATETIME_LEN] = "";
  if (since != NULL && herald_datetime_parse(since, since_norm) != 0)
    return invalid(err, kHeraldInvalid, "since", "'%s' is not an ISO-8601 date", since);
  sqlite3_stmt *st = herald_store_stmt(
      store, "SELECT event_id, event_type, timestamp, attributes, metrics, session, client, "
             "arrival FROM events WHERE app_id = ?1 AND endpoint_id = ?2 AND "
             "(?3 IS NULL OR timestamp >= ?3) AND (?4 IS NULL OR event_type = ?4) "
             "ORDER BY timestamp DESC, seq DESC LIMIT ?5", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, endpoint_id, -1, SQLITE_STATIC);
  if (since) sqlite3_bind_text(st, 3, since_norm, -1, SQLITE_STATIC);
  if (type) sqlite3_bind_text(st, 4, type, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 5, limit > 0 ? limit : -1);
  json_t *list = json_array();
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    json_t *e = json_object();
    json_object_set_new(e, "EndpointId", json_string(endpoint_id));
    json_object_set_new(e, "EventId", json_string((const char *)sqlite3_column_text(st, 0)));
    json_object_set_new(e, "EventType", json_string((const char *)sqlite3_column_text(st, 1)));
    json_object_set_new(e, "Timestamp", json_string((const char *)sqlite3_column_text(st, 2)));
    json_t *v = load_or_empty(st, 3);
    json_object_set_new(e, "Attributes", v ? v : json_object());
    v = load_or_empty(st, 4);
    json_object_set_new(e, "Metrics", v ? v : json_object());
    v = load_or_empty(st, 5);
    if (v) json_object_set_new(e, "Session", v);
    v = load_or_empty(st, 6);
    if (v) {
      json_object_update(e, v);
      json_decref(v);
    }
    json_object_set_new(e, "ArrivalTimestamp", json_string((const char *)sqlite3_column_text(st, 7)));
    json_array_append_new(list, e);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    json_decref(list);
    return herald_store_fail(store, err, "reading events");
  }
  *out = list;
  return kHeraldOk;
}
