/* Rate limits kept in the store. A row per limit and application: its exported state and a
 * generation that every write moves on, so a process reads the state only when another has
 * written since (one small read per limit and claim when nothing changed). */
#include "runtime/ratelimit_store.h"

int herald_ratelimit_store_load(HeraldStore *store, const char *app_id, const char *key,
                                HeraldRateLimit *rl, int64_t *gen, int *loaded, HeraldError *err) {
  if (loaded) *loaded = 0;
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "SELECT generation, CASE WHEN generation <> ?3 THEN state END FROM rate_limits"
      " WHERE app_id = ?1 AND key = ?2",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, *gen);
  int rc = sqlite3_step(st);
  int result = kHeraldOk;
  if (rc == SQLITE_ROW) {
    int64_t stored = sqlite3_column_int64(st, 0);
    if (stored != *gen) {
      const unsigned char *blob = sqlite3_column_blob(st, 1);
      size_t len = (size_t)sqlite3_column_bytes(st, 1);
      result = herald_ratelimit_import(rl, blob ? blob : (const unsigned char *)"", len, err);
      if (result == kHeraldOk && loaded) *loaded = 1;
      if (result != kHeraldOk) herald_error_prefix(err, "rate limit %s: ", key);
    }
    *gen = stored;
    rc = sqlite3_step(st);
  } else if (rc == SQLITE_DONE) {
    *gen = 0;
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "reading a rate limit");
  return result;
}

int herald_ratelimit_store_save(HeraldStore *store, const char *app_id, const char *key,
                                const HeraldRateLimit *rl, int64_t now_ms, int64_t *gen,
                                HeraldError *err) {
  unsigned char buf[HERALD_RATELIMIT_STATE_MAX];
  size_t len = herald_ratelimit_export(rl, buf, sizeof buf);
  if (len > sizeof buf) return herald_error_set(err, kHeraldLimit, "rate limit %s: state too large", key);
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO rate_limits(app_id, key, generation, state, updated_ms) VALUES (?1, ?2, 1, ?3, ?4)"
      " ON CONFLICT (app_id, key) DO UPDATE SET generation = generation + 1, state = excluded.state,"
      " updated_ms = excluded.updated_ms RETURNING generation",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
  sqlite3_bind_blob(st, 3, buf, (int)len, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, now_ms);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *gen = sqlite3_column_int64(st, 0);
    rc = sqlite3_step(st);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "writing a rate limit");
  return kHeraldOk;
}
