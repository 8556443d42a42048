/* The SQLite store: opening, pragmas, schema migrations and transactions. Every module that
 * persists something (endpoints, events, outbox, ...) works through the sqlite3 handle it owns. */
#ifndef HERALD_STORE_H
#define HERALD_STORE_H

#include <sqlite3.h>

#include "runtime/error.h"

typedef struct HeraldStore HeraldStore;

#define HERALD_DEFAULT_APP "default"

/* Opens (creating if needed) the database at path, sets WAL mode, the busy timeout and
 * foreign keys, and migrates the schema to the current version. */
int herald_store_open(const char *path, HeraldStore **out, HeraldError *err);
void herald_store_close(HeraldStore *store);

sqlite3 *herald_store_db(HeraldStore *store);
const char *herald_store_path(HeraldStore *store);
int herald_store_schema_version(HeraldStore *store);

/* Prepares sql once per store and returns the cached statement, reset and unbound.
 * Statements live until the store closes. */
sqlite3_stmt *herald_store_stmt(HeraldStore *store, const char *sql, HeraldError *err);

/* Transactions nest: only the outermost begin/commit touches SQLite; a rollback at any depth
 * makes the outermost end roll back. */
int herald_store_begin(HeraldStore *store, HeraldError *err);
int herald_store_commit(HeraldStore *store, HeraldError *err);
void herald_store_rollback(HeraldStore *store);

/* A savepoint inside the current transaction, so one part of a batch (a bad item) can fail
 * alone: herald_store_rollback_to undoes the work since the savepoint and forgets the inner
 * rollbacks recorded since, so the outer transaction can still commit. *mark remembers the
 * state to return to. Savepoints do not nest. */
int herald_store_savepoint(HeraldStore *store, int *mark, HeraldError *err);
int herald_store_release(HeraldStore *store, HeraldError *err);
void herald_store_rollback_to(HeraldStore *store, int mark);

/* Fills err from the database's last error, naming what was being done. */
int herald_store_fail(HeraldStore *store, HeraldError *err, const char *doing);

/* Whether err is a busy store's (another connection held it past the busy timeout): no fault
 * of the request, and it passes. SQLite's own words are matched, as herald.db.busy does. */
int herald_store_error_busy(const HeraldError *err);

/* Steps a bound statement that returns no rows and resets it; on failure fills err from the
 * database, naming what was being done. */
int herald_store_step_done(HeraldStore *store, sqlite3_stmt *st, HeraldError *err,
                           const char *doing);

/* Runs a statement that returns no rows (bind nothing). */
int herald_store_exec(HeraldStore *store, const char *sql, HeraldError *err);

/* Checks that an application exists. */
int herald_store_app_exists(HeraldStore *store, const char *app_id, HeraldError *err);

#endif
