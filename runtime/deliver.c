#include "runtime/deliver.h"

#include <sqlite3.h>

#include "runtime/clock.h"

int herald_deliver_defer(HeraldStore *store, int64_t claimer, int64_t id, int64_t due_ms,
                         HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE outbox SET state = 'PENDING', due_ms = ?2, attempts = max(attempts - 1, 0),"
      " updated_ms = ?3 WHERE id = ?1 AND state = 'CLAIMED' AND claimed_by = ?4",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, due_ms);
  sqlite3_bind_int64(st, 3, herald_clock_now_ms());
  sqlite3_bind_int64(st, 4, claimer);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "deferring an outbox row");
  return kHeraldOk;
}
