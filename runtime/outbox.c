#include "runtime/outbox.h"

#include <stdio.h>
#include <string.h>

#include "runtime/clock.h"

static uint64_t fnv1a(uint64_t h, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

/* Two FNV-1a lanes with different offsets give 128 bits: enough to make collisions between
 * message ids of one application practically impossible, and cheap to compute per row. */
void herald_outbox_message_id(const char *app, const char *campaign_id, int64_t scheduled_ms,
                              const char *endpoint_id, char out[40]) {
  char when[32];
  snprintf(when, sizeof when, "%lld", (long long)scheduled_ms);
  const char *parts[] = {app, campaign_id, when, endpoint_id};
  uint64_t a = 0xcbf29ce484222325ULL, b = 0x84222325cbf29ce4ULL;
  for (size_t i = 0; i < 4; i++) {
    size_t n = strlen(parts[i]);
    a = fnv1a(a, parts[i], n + 1);  /* the NUL separates parts */
    b = fnv1a(b, parts[i], n + 1);
    b = fnv1a(b, (const char *)&a, sizeof a);
  }
  snprintf(out, 40, "%08x-%04x-%04x-%04x-%012llx", (unsigned)(a >> 32), (unsigned)(a >> 16) & 0xffff,
           (unsigned)a & 0xffff, (unsigned)(b >> 48), (unsigned long long)(b & 0xffffffffffffULL));
}

int herald_outbox_run_create(HeraldStore *store, const char *app, const char *campaign_id,
                             int version, int64_t scheduled_ms, int64_t *run_id, int *created,
                             HeraldError *err) {
  char now[32];
  herald_time_format(herald_clock_now_ms(), now, sizeof now);
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO campaign_runs(app_id, campaign_id, campaign_version, scheduled_ms, created_at)"
      " VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (app_id, campaign_id, scheduled_ms) DO NOTHING",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, campaign_id, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, version);
  sqlite3_bind_int64(st, 4, scheduled_ms);
  sqlite3_bind_text(st, 5, now, -1, SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_DONE) return herald_store_fail(store, err, "creating a run");
  *created = sqlite3_changes(herald_store_db(store)) > 0;
  st = herald_store_stmt(store,
                         "SELECT id FROM campaign_runs WHERE app_id = ?1 AND campaign_id = ?2"
                         " AND scheduled_ms = ?3",
                         err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, campaign_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, scheduled_ms);
  if (sqlite3_step(st) != SQLITE_ROW) return herald_store_fail(store, err, "reading a run");
  *run_id = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  return kHeraldOk;
}

int herald_outbox_add(HeraldStore *store, const char *app, const char *campaign_id,
                      int64_t run_id, int64_t scheduled_ms, const HeraldOutboxRow *row,
                      HeraldError *err) {
  char message_id[40];
  herald_outbox_message_id(app, campaign_id, scheduled_ms, row->endpoint_id, message_id);
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO outbox(run_id, endpoint_id, treatment, message_id, channel, address, due_ms,"
      " state, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, run_id);
  sqlite3_bind_text(st, 2, row->endpoint_id, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, row->treatment);
  sqlite3_bind_text(st, 4, message_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 5, row->channel, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 6, row->address, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 7, row->due_ms);
  sqlite3_bind_text(st, 8, row->state, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 9, row->reason, -1, SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_DONE) {
    herald_store_fail(store, err, "writing an outbox row");
    sqlite3_reset(st);
    return err ? err->code : kHeraldStore;
  }
  sqlite3_reset(st);
  return kHeraldOk;
}

int herald_outbox_run_set_total(HeraldStore *store, int64_t run_id, int64_t total,
                                HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(store, "UPDATE campaign_runs SET total = ?2 WHERE id = ?1",
                                       err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, run_id);
  sqlite3_bind_int64(st, 2, total);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "updating a run");
  return kHeraldOk;
}

static void copy_col(sqlite3_stmt *st, int col, char *dst, size_t len) {
  const unsigned char *s = sqlite3_column_text(st, col);
  snprintf(dst, len, "%s", s ? (const char *)s : "");
}

int herald_outbox_claim(HeraldStore *store, const char *app, const char *campaigns_json,
                        int64_t now_ms, int max, HeraldOutboxClaim *out, int *count,
                        HeraldError *err) {
  *count = 0;
  if (herald_store_begin(store, err) != kHeraldOk) return err ? err->code : kHeraldStore;
  sqlite3_stmt *sel = herald_store_stmt(
      store,
      "SELECT o.id, o.run_id, o.endpoint_id, o.treatment, o.message_id, o.channel, o.address,"
      " o.due_ms, o.attempts, r.campaign_id, r.campaign_version"
      /* CROSS JOIN keeps outbox first: the partial due-time index yields rows in claim order
       * and the LIMIT stops the scan, where starting from the runs would read and sort every
       * row of a large run on each claim. */
      " FROM outbox o CROSS JOIN campaign_runs r ON r.id = o.run_id"
      " WHERE o.state = 'PENDING' AND o.due_ms <= ?1 AND r.app_id = ?3"
      " AND (?4 IS NULL OR r.campaign_id IN (SELECT value FROM json_each(?4)))"
      " ORDER BY o.due_ms, o.id LIMIT ?2",
      err);
  if (sel == NULL) goto fail;
  sqlite3_bind_int64(sel, 1, now_ms);
  sqlite3_bind_int(sel, 2, max);
  sqlite3_bind_text(sel, 3, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(sel, 4, campaigns_json, -1, SQLITE_STATIC);
  int rc;
  while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
    HeraldOutboxClaim *c = &out[*count];
    c->id = sqlite3_column_int64(sel, 0);
    c->run_id = sqlite3_column_int64(sel, 1);
    copy_col(sel, 2, c->endpoint_id, sizeof c->endpoint_id);
    c->treatment = sqlite3_column_int(sel, 3);
    copy_col(sel, 4, c->message_id, sizeof c->message_id);
    copy_col(sel, 5, c->channel, sizeof c->channel);
    copy_col(sel, 6, c->address, sizeof c->address);
    c->due_ms = sqlite3_column_int64(sel, 7);
    c->attempts = sqlite3_column_int(sel, 8) + 1;
    copy_col(sel, 9, c->campaign_id, sizeof c->campaign_id);
    c->campaign_version = sqlite3_column_int(sel, 10);
    (*count)++;
  }
  sqlite3_reset(sel);
  if (rc != SQLITE_DONE) {
    herald_store_fail(store, err, "claiming outbox rows");
    goto fail;
  }
  sqlite3_stmt *upd = herald_store_stmt(
      store,
      "UPDATE outbox SET state = 'CLAIMED', attempts = attempts + 1, updated_ms = ?2 WHERE id = ?1",
      err);
  if (upd == NULL) goto fail;
  for (int i = 0; i < *count; i++) {
    sqlite3_bind_int64(upd, 1, out[i].id);
    sqlite3_bind_int64(upd, 2, now_ms);
    rc = sqlite3_step(upd);
    sqlite3_reset(upd);
    if (rc != SQLITE_DONE) {
      herald_store_fail(store, err, "claiming outbox rows");
      goto fail;
    }
  }
  return herald_store_commit(store, err);
fail:
  herald_store_rollback(store);
  *count = 0;
  return err ? err->code : kHeraldStore;
}

int herald_outbox_report(HeraldStore *store, int64_t id, const char *state, const char *reason,
                         int64_t due_ms, HeraldError *err) {
  if (strcmp(state, "SENT") != 0 && strcmp(state, "FAILED") != 0 && strcmp(state, "PENDING") != 0)
    return herald_error_set(err, kHeraldInvalid, "outbox state must be SENT, FAILED or PENDING, not %s",
                            state);
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE outbox SET state = ?2, reason = ?3, due_ms = CASE WHEN ?2 = 'PENDING' THEN ?4"
      " ELSE due_ms END, updated_ms = ?5 WHERE id = ?1 AND state = 'CLAIMED'",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, reason, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, due_ms);
  sqlite3_bind_int64(st, 5, herald_clock_now_ms());
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "reporting an outbox row");
  if (sqlite3_changes(herald_store_db(store)) == 0)
    return herald_error_set(err, kHeraldNotFound, "outbox row %lld is not claimed", (long long)id);
  return kHeraldOk;
}

int herald_outbox_recover(HeraldStore *store, int64_t *count, HeraldError *err) {
  sqlite3_stmt *st =
      herald_store_stmt(store, "UPDATE outbox SET state = 'PENDING' WHERE state = 'CLAIMED'", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "recovering claimed rows");
  *count = sqlite3_changes(herald_store_db(store));
  return kHeraldOk;
}

int herald_outbox_next_due(HeraldStore *store, const char *app, const char *campaigns_json,
                           int64_t *due_ms, int *found, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      /* The first row in due-time order, outbox first for the reason given at claim. */
      "SELECT o.due_ms FROM outbox o CROSS JOIN campaign_runs r ON r.id = o.run_id"
      " WHERE o.state = 'PENDING' AND r.app_id = ?1"
      " AND (?2 IS NULL OR r.campaign_id IN (SELECT value FROM json_each(?2)))"
      " ORDER BY o.due_ms LIMIT 1",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, campaigns_json, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    sqlite3_reset(st);
    return herald_store_fail(store, err, "reading the next due time");
  }
  *found = rc == SQLITE_ROW;
  *due_ms = *found ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  return kHeraldOk;
}

int herald_outbox_complete_runs(HeraldStore *store, int64_t now_ms, HeraldError *err) {
  char now[32];
  herald_time_format(now_ms, now, sizeof now);
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE campaign_runs SET state = 'COMPLETED', ended_at = ?1 WHERE state = 'EXECUTING'"
      " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.run_id = campaign_runs.id"
      " AND o.state IN ('PENDING', 'CLAIMED'))",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, now, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "completing runs");
  return kHeraldOk;
}

int herald_outbox_tally(HeraldStore *store, const char *app, const char *campaign_id,
                        void (*fn)(const HeraldOutboxTally *tally, void *ctx), void *ctx,
                        HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "SELECT r.id, r.scheduled_ms, r.state, o.treatment, o.state, o.reason, count(*)"
      " FROM campaign_runs r JOIN outbox o ON o.run_id = r.id"
      " WHERE r.app_id = ?1 AND r.campaign_id = ?2"
      " GROUP BY r.id, o.treatment, o.state, o.reason ORDER BY r.id, o.treatment, o.state",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, campaign_id, -1, SQLITE_STATIC);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    HeraldOutboxTally t = {
      .run_id = sqlite3_column_int64(st, 0),
      .scheduled_ms = sqlite3_column_int64(st, 1),
      .run_state = (const char *)sqlite3_column_text(st, 2),
      .treatment = sqlite3_column_int(st, 3),
      .state = (const char *)sqlite3_column_text(st, 4),
      .reason = (const char *)sqlite3_column_text(st, 5),
      .count = sqlite3_column_int64(st, 6),
    };
    fn(&t, ctx);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "tallying the outbox");
  return kHeraldOk;
}
