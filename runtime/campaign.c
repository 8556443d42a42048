#include "runtime/campaign.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/clock.h"

/* An event campaign's trigger cursor starts when the campaign is stored as one (its first
 * version, or the first version that is an event campaign), in the same transaction: the
 * events stored after that fire, those stored before never do, so a new campaign does not fire
 * on history and events that come before a runner first looks at it are not lost. Once the row
 * exists, later versions keep its position. */
static int start_trigger_cursor(HeraldStore *store, const char *app, const char *id,
                                const char *definition, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO trigger_cursors(app_id, campaign_id, last_seq)"
      " SELECT ?1, ?2, coalesce((SELECT max(seq) FROM events), 0)"
      " WHERE CASE WHEN json_valid(?3) THEN json_extract(?3, '$.Schedule.Frequency') END = 'EVENT'"
      " ON CONFLICT (app_id, campaign_id) DO NOTHING",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, definition, -1, SQLITE_STATIC);
  return herald_store_step_done(store, st, err, "starting a trigger cursor");
}

int herald_campaign_define(HeraldStore *store, const char *app, const char *id, const char *name,
                           const char *definition, int64_t now_ms, HeraldCampaignVersion *out,
                           HeraldError *err) {
  memset(out, 0, sizeof *out);
  if (herald_store_app_exists(store, app, err) != kHeraldOk) return err ? err->code : kHeraldNotFound;
  char now[32];
  herald_time_format(now_ms, now, sizeof now);
  if (herald_store_begin(store, err) != kHeraldOk) return err ? err->code : kHeraldStore;
  sqlite3_stmt *sel = herald_store_stmt(
      store,
      "SELECT version, definition, last_modified_ms FROM campaigns WHERE app_id = ?1 AND id = ?2",
      err);
  if (sel == NULL) goto fail;
  sqlite3_bind_text(sel, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(sel, 2, id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(sel);
  if (rc == SQLITE_ROW) {
    const char *stored = (const char *)sqlite3_column_text(sel, 1);
    out->version = sqlite3_column_int(sel, 0);
    out->version_ms = sqlite3_column_int64(sel, 2);
    int same = stored != NULL && strcmp(stored, definition) == 0;
    sqlite3_reset(sel);
    out->changed = !same;
  } else if (rc == SQLITE_DONE) {
    sqlite3_reset(sel);
    out->version = 0;
    out->changed = 1;
  } else {
    sqlite3_reset(sel);
    herald_store_fail(store, err, "reading a campaign");
    goto fail;
  }
  if (out->changed) {
    /* One statement creates the campaign or moves it to its next version. */
    sqlite3_stmt *up = herald_store_stmt(
        store,
        "INSERT INTO campaigns(app_id, id, name, version, definition, creation_date,"
        " last_modified_date, last_modified_ms) VALUES (?1, ?2, ?3, 1, ?4, ?5, ?5, ?6)"
        " ON CONFLICT (app_id, id) DO UPDATE SET version = version + 1, name = excluded.name,"
        " definition = excluded.definition, last_modified_date = excluded.last_modified_date,"
        " last_modified_ms = excluded.last_modified_ms",
        err);
    if (up == NULL) goto fail;
    sqlite3_bind_text(up, 1, app, -1, SQLITE_STATIC);
    sqlite3_bind_text(up, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(up, 3, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(up, 4, definition, -1, SQLITE_STATIC);
    sqlite3_bind_text(up, 5, now, -1, SQLITE_STATIC);
    sqlite3_bind_int64(up, 6, now_ms);
    if (herald_store_step_done(store, up, err, "storing a campaign") != kHeraldOk) goto fail;
    out->version++;
    out->version_ms = now_ms;
    sqlite3_stmt *ver = herald_store_stmt(
        store,
        "INSERT INTO campaign_versions(app_id, campaign_id, version, definition, created_ms)"
        " VALUES (?1, ?2, ?3, ?4, ?5)",
        err);
    if (ver == NULL) goto fail;
    sqlite3_bind_text(ver, 1, app, -1, SQLITE_STATIC);
    sqlite3_bind_text(ver, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_int(ver, 3, out->version);
    sqlite3_bind_text(ver, 4, definition, -1, SQLITE_STATIC);
    sqlite3_bind_int64(ver, 5, now_ms);
    if (herald_store_step_done(store, ver, err, "storing a campaign version") != kHeraldOk) goto fail;
    if (start_trigger_cursor(store, app, id, definition, err) != kHeraldOk) goto fail;
  }
  return herald_store_commit(store, err);
fail:
  herald_store_rollback(store);
  return err ? err->code : kHeraldStore;
}

int herald_campaign_version_definition(HeraldStore *store, const char *app, const char *id,
                                       int version, char **out, HeraldError *err) {
  *out = NULL;
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "SELECT definition FROM campaign_versions WHERE app_id = ?1 AND campaign_id = ?2"
      " AND version = ?3",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, version);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *out = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_reset(st);
    if (*out == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
    return kHeraldOk;
  }
  sqlite3_reset(st);
  if (rc == SQLITE_DONE)
    return herald_error_set(err, kHeraldNotFound, "campaign '%s' has no version %d", id, version);
  return herald_store_fail(store, err, "reading a campaign version");
}

int herald_campaign_set_state(HeraldStore *store, const char *app, const char *id,
                              const char *state, const char *pause_reason, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE campaigns SET state = ?3, pause_reason = CASE WHEN ?3 = 'PAUSED' THEN ?4 END"
      " WHERE app_id = ?1 AND id = ?2",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, state, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, pause_reason, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "setting a campaign state");
  if (sqlite3_changes(herald_store_db(store)) == 0)
    return herald_error_set(err, kHeraldNotFound, "unknown campaign '%s'", id);
  return kHeraldOk;
}

int herald_campaign_advance_state(HeraldStore *store, const char *app, const char *id,
                                  const char *state, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE campaigns SET state = ?3 WHERE app_id = ?1 AND id = ?2"
      " AND state NOT IN ('PAUSED', 'DELETED') AND state <> ?3 AND (error IS NULL OR ?3 = 'INVALID')",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, state, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "advancing a campaign state");
  return kHeraldOk;
}

int herald_campaign_set_origin(HeraldStore *store, const char *app, const char *id,
                               const char *source, const char *audience, const char *lua,
                               HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE campaigns SET source = ?3, audience = ?4, lua = ?5, error = NULL,"
      " state = CASE WHEN state <> 'INVALID' THEN state WHEN EXISTS (SELECT 1 FROM campaign_runs r"
      " WHERE r.app_id = ?1 AND r.campaign_id = ?2) THEN 'PENDING_NEXT_RUN' ELSE 'SCHEDULED' END"
      " WHERE app_id = ?1 AND id = ?2",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, source, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, audience, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 5, lua, -1, SQLITE_STATIC);
  return herald_store_step_done(store, st, err, "recording a campaign's origin");
}

int herald_campaign_invalidate(HeraldStore *store, const char *app, const char *id,
                               const char *source, const char *error, int *count,
                               HeraldError *err) {
  *count = 0;
  if (id == NULL && source == NULL)
    return herald_error_set(err, kHeraldInvalid, "invalidating needs a campaign or a source");
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE campaigns SET error = ?4, state = CASE WHEN state = 'PAUSED' THEN state"
      " ELSE 'INVALID' END WHERE app_id = ?1 AND (?2 IS NULL OR id = ?2)"
      " AND (?3 IS NULL OR source = ?3) AND state <> 'DELETED'",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, source, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, error, -1, SQLITE_STATIC);
  if (herald_store_step_done(store, st, err, "invalidating campaigns") != kHeraldOk)
    return err ? err->code : kHeraldStore;
  *count = sqlite3_changes(herald_store_db(store));
  return kHeraldOk;
}

/* Why campaign id cannot be copied as a stored campaign (into err), or kHeraldOk. */
static int check_copyable(HeraldStore *store, const char *app, const char *id, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store, "SELECT lua, audience IS NOT NULL FROM campaigns WHERE app_id = ?1 AND id = ?2", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) {
    sqlite3_reset(st);
    return herald_error_set(err, kHeraldNotFound, "unknown campaign '%s'", id);
  }
  if (rc != SQLITE_ROW) {
    sqlite3_reset(st);
    return herald_store_fail(store, err, "reading a campaign");
  }
  const unsigned char *lua = sqlite3_column_text(st, 0);
  int stored = sqlite3_column_int(st, 1);
  if (lua != NULL) {
    herald_error_set(err, kHeraldInvalid,
                     "campaign '%s' depends on Lua functions (%s) that are not stored, so a stored"
                     " copy could not run on its own: copy it in its definition file with"
                     " herald.campaign.copy('%s', 'NEW')",
                     id, (const char *)lua, id);
  } else if (!stored) {
    herald_error_set(err, kHeraldInvalid,
                     "campaign '%s' has no stored segment yet: load its definition file once"
                     " (herald run or herald campaign load) and copy again",
                     id);
  }
  sqlite3_reset(st);
  return lua != NULL || !stored ? kHeraldInvalid : kHeraldOk;
}

int herald_campaign_copy(HeraldStore *store, const char *app, const char *id, const char *new_id,
                         const char *definition, int64_t now_ms, HeraldError *err) {
  char now[32];
  herald_time_format(now_ms, now, sizeof now);
  if (herald_store_begin(store, err) != kHeraldOk) return err ? err->code : kHeraldStore;
  if (check_copyable(store, app, id, err) != kHeraldOk) goto fail;
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO campaigns(app_id, id, name, version, state, definition, creation_date,"
      " last_modified_date, last_modified_ms, audience) SELECT app_id, ?3, ?3, 1, 'SCHEDULED',"
      " ?6, ?4, ?4, ?5, audience"
      " FROM campaigns WHERE app_id = ?1 AND id = ?2 AND NOT EXISTS (SELECT 1 FROM campaigns"
      " WHERE app_id = ?1 AND id = ?3)",
      err);
  if (st == NULL) goto fail;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, new_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, now, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 5, now_ms);
  sqlite3_bind_text(st, 6, definition, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    herald_store_fail(store, err, "copying a campaign");
    goto fail;
  }
  if (sqlite3_changes(herald_store_db(store)) == 0) {
    herald_error_set(err, kHeraldInvalid, "cannot copy '%s' to '%s': the first is unknown or the"
                     " second exists", id, new_id);
    goto fail;
  }
  st = herald_store_stmt(
      store,
      "INSERT INTO campaign_versions(app_id, campaign_id, version, definition, created_ms)"
      " SELECT app_id, id, 1, definition, ?3 FROM campaigns WHERE app_id = ?1 AND id = ?2",
      err);
  if (st == NULL) goto fail;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, new_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, now_ms);
  if (herald_store_step_done(store, st, err, "copying a campaign") != kHeraldOk) goto fail;
  if (start_trigger_cursor(store, app, new_id, definition, err) != kHeraldOk) goto fail;
  return herald_store_commit(store, err);
fail:
  herald_store_rollback(store);
  return err ? err->code : kHeraldStore;
}
