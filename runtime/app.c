#include "runtime/app.h"

#include <string.h>

#include "runtime/datetime.h"

int herald_app_create(HeraldStore *store, const char *id, const char *name, HeraldError *err) {
  size_t len = strlen(id);
  if (len == 0 || len > 64)
    return herald_error_set(err, kHeraldInvalid, "Id: an application id has 1 to 64 characters");
  for (size_t i = 0; i < len; i++) {
    char c = id[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-' || c == '.'))
      return herald_error_set(err, kHeraldInvalid,
                              "Id: '%s' may hold only letters, digits, '_', '-' and '.'", id);
  }
  char now[HERALD_DATETIME_LEN];
  herald_datetime_now(now);
  sqlite3_stmt *st = herald_store_stmt(
      store, "INSERT INTO applications(id, name, creation_date) VALUES (?1, ?2, ?3) "
             "ON CONFLICT(id) DO NOTHING",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, name ? name : id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, now, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "creating an application");
  if (sqlite3_changes(herald_store_db(store)) == 0)
    return herald_error_set(err, kHeraldInvalid, "Id: application '%s' already exists", id);
  return kHeraldOk;
}

int herald_app_list(HeraldStore *store, json_t **out, HeraldError *err) {
  *out = NULL;
  sqlite3_stmt *st = herald_store_stmt(
      store, "SELECT id, name, creation_date FROM applications ORDER BY id", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  json_t *list = json_array();
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    json_t *app = json_pack("{s:s, s:s, s:s}", "Id", (const char *)sqlite3_column_text(st, 0),
                            "Name", (const char *)sqlite3_column_text(st, 1), "CreationDate",
                            (const char *)sqlite3_column_text(st, 2));
    if (app == NULL || json_array_append_new(list, app) != 0) {
      sqlite3_reset(st);
      json_decref(list);
      return herald_error_set(err, kHeraldNoMemory, "out of memory");
    }
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    json_decref(list);
    return herald_store_fail(store, err, "listing applications");
  }
  *out = list;
  return kHeraldOk;
}
