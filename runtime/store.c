#include "runtime/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/store_schema.h"

typedef struct CachedStmt {
  const char *sql;
  sqlite3_stmt *stmt;
  struct CachedStmt *next;
} CachedStmt;

struct HeraldStore {
  sqlite3 *db;
  char *path;
  CachedStmt *stmts;
  int depth;          /* nesting of herald_store_begin */
  int failed;         /* an inner level rolled back: the outermost end must roll back */
  int schema_version;
};

int herald_store_fail(HeraldStore *store, HeraldError *err, const char *doing) {
  int rc = sqlite3_errcode(store->db);
  const char *msg = sqlite3_errmsg(store->db);
  HeraldErrorCode code = kHeraldStore;
  if (rc == SQLITE_NOMEM) code = kHeraldNoMemory;
  return herald_error_set(err, code, "%s: %s: %s", store->path, doing, msg);
}

int herald_store_error_busy(const HeraldError *err) {
  static const char *const words[] = {"database is locked", "database table is locked",
                                      "database schema is locked"};
  if (err == NULL || err->code != kHeraldStore) return 0;
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
    if (strstr(err->msg, words[i]) != NULL) return 1;
  return 0;
}

static int exec_sql(HeraldStore *store, const char *sql, HeraldError *err, const char *doing) {
  char *msg = NULL;
  if (sqlite3_exec(store->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    herald_error_set(err, kHeraldStore, "%s: %s: %s", store->path, doing,
                     msg ? msg : sqlite3_errmsg(store->db));
    sqlite3_free(msg);
    return kHeraldStore;
  }
  return kHeraldOk;
}

int herald_store_step_done(HeraldStore *store, sqlite3_stmt *st, HeraldError *err,
                           const char *doing) {
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, doing);
  return kHeraldOk;
}

int herald_store_exec(HeraldStore *store, const char *sql, HeraldError *err) {
  return exec_sql(store, sql, err, "exec");
}

static int read_user_version(HeraldStore *store, int *version, HeraldError *err) {
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(store->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
    return herald_store_fail(store, err, "reading the schema version");
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    sqlite3_finalize(st);
    return herald_store_fail(store, err, "reading the schema version");
  }
  *version = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  return kHeraldOk;
}

/* Each migration runs in its own IMMEDIATE transaction together with the user_version bump, so
 * a crash leaves the schema at a whole version. */
static int migrate(HeraldStore *store, HeraldError *err) {
  int version = 0;
  if (read_user_version(store, &version, err) != kHeraldOk) return err ? err->code : kHeraldStore;
  if (version > herald_store_migration_count)
    return herald_error_set(err, kHeraldStore,
                            "%s: schema version %d is newer than this herald supports (%d)",
                            store->path, version, herald_store_migration_count);
  while (version < herald_store_migration_count) {
    if (exec_sql(store, "BEGIN IMMEDIATE", err, "starting a migration") != kHeraldOk)
      return kHeraldStore;
    int rc = read_user_version(store, &version, err);
    if (rc == kHeraldOk && version < herald_store_migration_count) {
      char doing[64];
      snprintf(doing, sizeof doing, "applying migration %d", version + 1);
      rc = exec_sql(store, herald_store_migrations[version], err, doing);
      if (rc == kHeraldOk) {
        char bump[64];
        snprintf(bump, sizeof bump, "PRAGMA user_version = %d", version + 1);
        rc = exec_sql(store, bump, err, doing);
      }
    }
    if (rc != kHeraldOk) {
      sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
      return rc;
    }
    if (exec_sql(store, "COMMIT", err, "committing a migration") != kHeraldOk) return kHeraldStore;
    if (read_user_version(store, &version, err) != kHeraldOk) return kHeraldStore;
  }
  store->schema_version = version;
  return kHeraldOk;
}

/* ATTACH and DETACH count as read-only for SQLite (they change the connection, not a file),
 * but they would let a script's query reach other files and leave them attached; herald
 * itself never attaches. The authorizer is installed once here: installing or removing one
 * expires every prepared statement of the connection, so doing it around each script query
 * made the delivery loop re-prepare its cached statements after every query. */
static int deny_attach(void *ud, int action, const char *a, const char *b, const char *c,
                       const char *d) {
  (void)ud, (void)a, (void)b, (void)c, (void)d;
  return action == SQLITE_ATTACH || action == SQLITE_DETACH ? SQLITE_DENY : SQLITE_OK;
}

int herald_store_open(const char *path, HeraldStore **out, HeraldError *err) {
  *out = NULL;
  HeraldStore *store = calloc(1, sizeof *store);
  if (store == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  store->path = strdup(path);
  if (store->path == NULL) {
    free(store);
    return herald_error_set(err, kHeraldNoMemory, "out of memory");
  }
  /* SQLite's memory statistics take a global mutex on every allocation it makes (a bulk import
   * makes millions); nothing in herald reads them. The setting only applies before SQLite
   * initialises, so later calls fail with SQLITE_MISUSE and change nothing, as intended. */
  (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  /* The statement journal's spill threshold stays SQLite's own (64 KiB). With 4 MiB, SQLite
   * 3.40 failed a statement whose journal outgrew it with "database or disk is full" though
   * the disk had room (holding back the rest of a 200,000-endpoint A/B run). */
  int rc = sqlite3_open_v2(path, &store->db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    herald_error_set(err, kHeraldStore, "%s: cannot open database: %s", path,
                     store->db ? sqlite3_errmsg(store->db) : sqlite3_errstr(rc));
    herald_store_close(store);
    return kHeraldStore;
  }
  sqlite3_extended_result_codes(store->db, 1);
  sqlite3_set_authorizer(store->db, deny_attach, NULL);
  int timeout_ms = 5000;
  const char *env = getenv("HERALD_BUSY_TIMEOUT_MS");
  if (env != NULL && *env) timeout_ms = atoi(env);
  sqlite3_busy_timeout(store->db, timeout_ms);

  /* journal_mode is the first statement that reads the file, so a file that is not a database
   * or is locked by another writer fails here with SQLite's own reason. */
  if (exec_sql(store, "PRAGMA journal_mode = WAL", err, "opening") != kHeraldOk ||
      exec_sql(store, "PRAGMA synchronous = NORMAL", err, "opening") != kHeraldOk ||
      exec_sql(store, "PRAGMA foreign_keys = ON", err, "opening") != kHeraldOk ||
      migrate(store, err) != kHeraldOk) {
    herald_store_close(store);
    return err ? err->code : kHeraldStore;
  }
  *out = store;
  return kHeraldOk;
}

void herald_store_close(HeraldStore *store) {
  if (store == NULL) return;
  CachedStmt *c = store->stmts;
  while (c != NULL) {
    CachedStmt *next = c->next;
    sqlite3_finalize(c->stmt);
    free(c);
    c = next;
  }
  if (store->db != NULL) sqlite3_close_v2(store->db);
  free(store->path);
  free(store);
}

sqlite3 *herald_store_db(HeraldStore *store) { return store->db; }
const char *herald_store_path(HeraldStore *store) { return store->path; }
int herald_store_schema_version(HeraldStore *store) { return store->schema_version; }

static sqlite3_stmt *reuse(CachedStmt *c) {
  sqlite3_reset(c->stmt);
  sqlite3_clear_bindings(c->stmt);
  return c->stmt;
}

sqlite3_stmt *herald_store_stmt(HeraldStore *store, const char *sql, HeraldError *err) {
  /* Callers pass string literals, so the same pointer comes back: look for it before comparing
   * texts, which would cost a strcmp per cached statement on every call. */
  for (CachedStmt *c = store->stmts; c != NULL; c = c->next)
    if (c->sql == sql) return reuse(c);
  for (CachedStmt *c = store->stmts; c != NULL; c = c->next)
    if (strcmp(c->sql, sql) == 0) return reuse(c);
  CachedStmt *c = calloc(1, sizeof *c);
  if (c == NULL) {
    herald_error_set(err, kHeraldNoMemory, "out of memory");
    return NULL;
  }
  if (sqlite3_prepare_v3(store->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &c->stmt, NULL) !=
      SQLITE_OK) {
    herald_store_fail(store, err, "preparing a statement");
    free(c);
    return NULL;
  }
  c->sql = sql;
  c->next = store->stmts;
  store->stmts = c;
  return c->stmt;
}

/* BEGIN and COMMIT run for every batch: prepared once, not parsed each time. */
static int step_cached(HeraldStore *store, const char *sql, HeraldError *err, const char *doing) {
  sqlite3_stmt *st = herald_store_stmt(store, sql, err);
  if (st == NULL) return err ? (int)err->code : kHeraldStore;
  return herald_store_step_done(store, st, err, doing);
}

int herald_store_begin(HeraldStore *store, HeraldError *err) {
  if (store->depth == 0) {
    if (step_cached(store, "BEGIN IMMEDIATE", err, "starting a transaction") != kHeraldOk)
      return kHeraldStore;
    store->failed = 0;
  }
  store->depth++;
  return kHeraldOk;
}

int herald_store_commit(HeraldStore *store, HeraldError *err) {
  if (store->depth <= 0) return herald_error_set(err, kHeraldStore, "commit without a transaction");
  if (--store->depth > 0) return kHeraldOk;
  if (store->failed) {
    sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
    return herald_error_set(err, kHeraldStore, "transaction rolled back by an inner failure");
  }
  if (step_cached(store, "COMMIT", err, "committing") != kHeraldOk) {
    sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
    return kHeraldStore;
  }
  return kHeraldOk;
}

void herald_store_rollback(HeraldStore *store) {
  if (store->depth <= 0) return;
  if (--store->depth > 0) {
    store->failed = 1;
    return;
  }
  sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
}

int herald_store_savepoint(HeraldStore *store, int *mark, HeraldError *err) {
  if (store->depth <= 0)
    return herald_error_set(err, kHeraldStore, "savepoint without a transaction");
  *mark = store->failed;
  return exec_sql(store, "SAVEPOINT herald_item", err, "starting a savepoint");
}

int herald_store_release(HeraldStore *store, HeraldError *err) {
  return exec_sql(store, "RELEASE herald_item", err, "releasing a savepoint");
}

void herald_store_rollback_to(HeraldStore *store, int mark) {
  sqlite3_exec(store->db, "ROLLBACK TO herald_item; RELEASE herald_item", NULL, NULL, NULL);
  store->failed = mark;
}

int herald_store_app_exists(HeraldStore *store, const char *app_id, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(store, "SELECT 1 FROM applications WHERE id = ?1", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app_id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) return kHeraldOk;
  if (rc == SQLITE_DONE)
    return herald_error_set(err, kHeraldNotFound, "unknown application '%s'", app_id);
  return herald_store_fail(store, err, "looking up the application");
}
