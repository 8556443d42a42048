#include "runtime/outbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/buffer.h"
#include "runtime/claimer.h"
#include "runtime/clock.h"
#include "runtime/datetime.h"

#include <stdint.h>

static uint64_t fnv1a(uint64_t h, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

/* Two FNV-1a lanes with different offsets give 128 bits: enough to make collisions between
 * message ids of one application practically impossible, and cheap to compute per row. The
 * lanes over (app, campaign, scheduled time) are computed once per run; each row adds its
 * endpoint. */
typedef struct {
  uint64_t a, b;
} IdLanes;

static void lanes_add(IdLanes *l, const char *s) {
  size_t n = strlen(s);
  l->a = fnv1a(l->a, s, n + 1);  /* the NUL separates parts */
  l->b = fnv1a(l->b, s, n + 1);
  l->b = fnv1a(l->b, (const char *)&l->a, sizeof l->a);
}

static IdLanes run_lanes(const char *app, const char *campaign_id, int64_t scheduled_ms) {
  char when[32];
  snprintf(when, sizeof when, "%lld", (long long)scheduled_ms);
  IdLanes l = {0xcbf29ce484222325ULL, 0x84222325cbf29ce4ULL};
  lanes_add(&l, app);
  lanes_add(&l, campaign_id);
  lanes_add(&l, when);
  return l;
}

static void put_hex(char *out, uint64_t v, int digits) {
  static const char hex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; i--) {
    out[i] = hex[v & 0xf];
    v >>= 4;
  }
}

/* xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx */
static void finish_id(IdLanes l, const char *endpoint_id, char out[40]) {
  lanes_add(&l, endpoint_id);
  put_hex(out, l.a >> 32, 8);
  out[8] = '-';
  put_hex(out + 9, (l.a >> 16) & 0xffff, 4);
  out[13] = '-';
  put_hex(out + 14, l.a & 0xffff, 4);
  out[18] = '-';
  put_hex(out + 19, l.b >> 48, 4);
  out[23] = '-';
  put_hex(out + 24, l.b & 0xffffffffffffULL, 12);
  out[36] = '\0';
}

void herald_outbox_message_id(const char *app, const char *campaign_id, int64_t scheduled_ms,
                              const char *endpoint_id, char out[40]) {
  finish_id(run_lanes(app, campaign_id, scheduled_ms), endpoint_id, out);
}

int herald_outbox_run_create(HeraldStore *store, const char *app, const char *campaign_id,
                             int version, int64_t scheduled_ms, int64_t *run_id, int *created,
                             HeraldError *err) {
  char now[32];
  herald_time_format(herald_clock_now_ms(), now, sizeof now);
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO campaign_runs(app_id, campaign_id, campaign_version, scheduled_ms, created_at)"
      " VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (app_id, campaign_id, scheduled_ms, trigger_seq)"
      " DO NOTHING",
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
                         " AND scheduled_ms = ?3 AND trigger_seq = 0",
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

/* memcpy, not snprintf("%s"): six columns a row, where snprintf's formatting cost more than
 * the claim's own copies. A longer text is cut at len - 1 bytes as snprintf cut it. */
static void copy_col(sqlite3_stmt *st, int col, char *dst, size_t len) {
  const unsigned char *s = sqlite3_column_text(st, col);
  size_t n = s ? (size_t)sqlite3_column_bytes(st, col) : 0;
  if (n >= len) n = len - 1;
  if (n > 0) memcpy(dst, s, n);
  dst[n] = '\0';
}

/* How many messages an endpoint has sent or in flight: of one campaign (its life), or of any
 * campaign of app since since_ms. */
static int count_claims(HeraldStore *store, const char *app, const char *campaign_id,
                        const char *endpoint_id, int64_t since_ms, int64_t *n, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "SELECT count(*) FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
      " WHERE o.endpoint_id = ?1 AND o.claimed_ms IS NOT NULL AND o.claimed_ms > ?2"
      " AND o.state IN ('CLAIMED', 'SENT') AND r.app_id = ?3"
      " AND (?4 IS NULL OR r.campaign_id = ?4)",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, endpoint_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, since_ms);
  sqlite3_bind_text(st, 3, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, campaign_id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  *n = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  if (rc != SQLITE_ROW) return herald_store_fail(store, err, "counting an endpoint's messages");
  return kHeraldOk;
}


/* The daily cap's window: a day less an hour. A once-a-day campaign's next message is due a
 * little less than 24 hours after the last one when a local-time schedule crosses the spring
 * DST change (23 hours), or when the last one went a few seconds late (a MessagesPerSecond
 * backlog, a retry): over a full 24 hours the cap would skip that day's message, and holding it
 * until the window frees would move every later day's message an hour too (a 9:00 campaign
 * sent at 10:00 until the clocks go back). Two messages of one endpoint are still at least 23
 * hours apart under Daily = 1. */
#define DAILY_WINDOW_MS (23 * 3600 * 1000LL)

/* A JSON array of row ids for a statement to read through json_each, written by hand: sprintf
 * took as long as the statement's own work on each id. */
typedef struct {
  char *json;  /* room for n ids: IDS_JSON_SIZE(n) */
  size_t used;
  int n;
} IdsJson;

#define IDS_JSON_SIZE(n) ((size_t)(n) * (HERALD_DECIMAL_MAX + 1) + 3)

static void ids_json_add(IdsJson *ids, int64_t id) {
  ids->json[ids->used++] = ids->n++ ? ',' : '[';
  ids->used += herald_decimal(ids->json + ids->used, (long long)id);
}

/* after one id at least */
static void ids_json_close(IdsJson *ids) { memcpy(ids->json + ids->used, "]", 2); }

/* The rows a claim takes are stamped together: one UPDATE over their ids keeps its b-tree
 * cursors where the last row left them, where a statement a row descended the table and each
 * index it changes (due time, claimed, endpoint claims) from the root again. */
static int claim_ids_flush(HeraldStore *store, IdsJson *ids, int64_t now_ms, int64_t claimer,
                           HeraldError *err) {
  if (ids->n == 0) return kHeraldOk;
  ids_json_close(ids);
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE outbox SET state = 'CLAIMED', reason = NULL, attempts = attempts + 1,"
      " claimed_ms = ?2, claimed_by = ?3, updated_ms = ?2"
      " WHERE id IN (SELECT value FROM json_each(?1))",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, ids->json, (int)ids->used + 1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, now_ms);
  sqlite3_bind_int64(st, 3, claimer);
  ids->used = 0;
  ids->n = 0;
  return herald_store_step_done(store, st, err, "claiming outbox rows");
}

int herald_outbox_claim(HeraldStore *store, const char *app, const char *campaigns_json,
                        int64_t now_ms, int max, HeraldOutboxClaim *out, int *count,
                        HeraldError *err) {
  *count = 0;
  int64_t claimer = 0;  /* registered at the first row, so an empty claim writes nothing */
  IdsJson ids = {malloc(IDS_JSON_SIZE(max)), 0, 0};
  if (ids.json == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  if (herald_store_begin(store, err) != kHeraldOk) {
    free(ids.json);
    return err ? err->code : kHeraldStore;
  }
  sqlite3_stmt *sel = herald_store_stmt(
      store,
      "SELECT o.id, o.run_id, o.endpoint_id, o.treatment, o.message_id, o.channel, o.address,"
      " o.due_ms, o.attempts, r.campaign_id, r.campaign_version, r.daily_cap, r.total_cap,"
      " r.max_duration_ms, coalesce(o.first_due_ms, o.due_ms), coalesce(o.zone, '')"
      /* CROSS JOIN keeps outbox first: the partial due-time index yields rows in claim order
       * and the LIMIT stops the scan, where starting from the runs would read and sort every
       * row of a large run on each claim. */
      " FROM outbox o CROSS JOIN campaign_runs r ON r.id = o.run_id"
      " CROSS JOIN campaigns c ON c.app_id = r.app_id AND c.id = r.campaign_id"
      " WHERE o.state = 'PENDING' AND o.due_ms <= ?1 AND r.app_id = ?3"
      /* an INVALID campaign's rows are held, not sent, until its definition loads again */
      " AND c.state NOT IN ('PAUSED', 'DELETED', 'INVALID')"
      " AND (?4 IS NULL OR r.campaign_id IN (SELECT value FROM json_each(?4)))"
      " ORDER BY o.due_ms, o.id LIMIT ?2",
      err);
  if (sel == NULL) goto fail;
  /* Rows skipped by a limit leave PENDING, so selecting again finds the next ones. */
  for (;;) {
    int selected = 0, rc;
    sqlite3_bind_int64(sel, 1, now_ms);
    sqlite3_bind_int(sel, 2, max - *count);
    sqlite3_bind_text(sel, 3, app, -1, SQLITE_STATIC);
    sqlite3_bind_text(sel, 4, campaigns_json, -1, SQLITE_STATIC);
    int first = *count;
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
      c->daily_cap = sqlite3_column_int64(sel, 11);
      c->total_cap = sqlite3_column_int64(sel, 12);
      c->max_duration_ms = sqlite3_column_int64(sel, 13);
      c->first_due_ms = sqlite3_column_int64(sel, 14);
      copy_col(sel, 15, c->zone, sizeof c->zone);
      (*count)++;
      selected++;
    }
    sqlite3_reset(sel);
    if (rc != SQLITE_DONE) {
      herald_store_fail(store, err, "claiming outbox rows");
      goto fail;
    }
    if (selected > 0 && claimer == 0 &&
        herald_claimer_beat(store, herald_clock_system_ms(), &claimer, err) != kHeraldOk)
      goto fail;
    int kept = first;
    for (int i = first; i < first + selected; i++) {
      HeraldOutboxClaim *c = &out[i];
      const char *reason = NULL;
      int64_t n = 0;
      /* a cap counts the rows claimed before this one, in this claim too: those are stamped
       * first */
      if (c->max_duration_ms > 0 && now_ms > c->first_due_ms + c->max_duration_ms) {
        reason = "EXPIRED";
      } else if (c->total_cap > 0) {
        if (claim_ids_flush(store, &ids, now_ms, claimer, err) != kHeraldOk ||
            count_claims(store, app, c->campaign_id, c->endpoint_id, INT64_MIN, &n, err) !=
                kHeraldOk)
          goto fail;
        if (n >= c->total_cap) reason = "TOTAL_CAP";
      }
      if (reason == NULL && c->daily_cap > 0) {
        if (claim_ids_flush(store, &ids, now_ms, claimer, err) != kHeraldOk ||
            count_claims(store, app, NULL, c->endpoint_id, now_ms - DAILY_WINDOW_MS, &n, err) !=
                kHeraldOk)
          goto fail;
        if (n >= c->daily_cap) reason = "DAILY_CAP";
      }
      if (reason == NULL) {
        ids_json_add(&ids, c->id);
        if (kept != i) out[kept] = *c;
        kept++;
        continue;
      }
      sqlite3_stmt *skip = herald_store_stmt(
          store,
          "UPDATE outbox SET state = 'SKIPPED', reason = ?3, claimed_ms = NULL, claimed_by = NULL,"
          " updated_ms = ?2 WHERE id = ?1",
          err);
      if (skip == NULL) goto fail;
      sqlite3_bind_int64(skip, 1, c->id);
      sqlite3_bind_int64(skip, 2, now_ms);
      sqlite3_bind_text(skip, 3, reason, -1, SQLITE_STATIC);
      if (herald_store_step_done(store, skip, err, "claiming outbox rows") != kHeraldOk) goto fail;
    }
    /* before selecting again, which must not find these rows PENDING */
    if (claim_ids_flush(store, &ids, now_ms, claimer, err) != kHeraldOk) goto fail;
    *count = kept;
    if (selected < max - first || *count >= max) break;
  }
  free(ids.json);
  return herald_store_commit(store, err);
fail:
  free(ids.json);
  herald_store_rollback(store);
  *count = 0;
  return err ? err->code : kHeraldStore;
}

/* The send events of type of the outbox rows whose ids are in the JSON array ?1, at ?2. */
#define SEND_EVENTS_SQL(type, where)                                                          \
  "INSERT OR IGNORE INTO events(app_id, endpoint_id, event_id, event_type, timestamp,"       \
  " attributes, arrival)"                                                                    \
  " SELECT r.app_id, o.endpoint_id, o.message_id || '/" type "', '" type "', ?2,"            \
  " json_object('campaign_id', r.campaign_id, 'treatment_id', CAST(o.treatment AS TEXT),"    \
  " 'campaign_activity_id', CAST(o.run_id AS TEXT), 'message_id', o.message_id,"             \
  " 'delivery_type', o.channel, 'campaign_send_status', 'SUCCESS'), ?2"                      \
  " FROM json_each(?1) i JOIN outbox o ON o.id = i.value JOIN campaign_runs r ON r.id = o.run_id" where

int herald_outbox_record_sends(HeraldStore *store, const int64_t *ids, int n, HeraldError *err) {
  if (n <= 0) return kHeraldOk;
  char now[HERALD_DATETIME_LEN];
  herald_datetime_format(herald_clock_now_ms(), now);
  IdsJson json = {malloc(IDS_JSON_SIZE(n)), 0, 0};
  if (json.json == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  for (int i = 0; i < n; i++) ids_json_add(&json, ids[i]);
  ids_json_close(&json);
  /* One statement a type over the whole batch: its b-tree cursors stay where the last row went,
   * where a statement a row descended every index from its root for each event and cost half as
   * much again. The batch's _campaign.send events are written before its _email.send ones. */
  static const char *const sql[] = {
    SEND_EVENTS_SQL("_campaign.send", ""),
    SEND_EVENTS_SQL("_email.send", " WHERE o.channel = 'EMAIL'"),
  };
  int rc = kHeraldOk;
  for (int t = 0; t < 2 && rc == kHeraldOk; t++) {
    sqlite3_stmt *st = herald_store_stmt(store, sql[t], err);
    if (st == NULL) {
      rc = err ? err->code : kHeraldStore;
      break;
    }
    sqlite3_bind_text(st, 1, json.json, (int)json.used + 1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, now, -1, SQLITE_STATIC);
    rc = herald_store_step_done(store, st, err, "recording send events");
  }
  free(json.json);
  return rc;
}

int herald_outbox_record_direct(HeraldStore *store, const char *app, const char *message_id,
                                const char *endpoint_id, const char *channel, const char *address,
                                int64_t now_ms, HeraldError *err) {
  /* the expired rows go as new ones come: an index seek when there are none */
  sqlite3_stmt *st = herald_store_stmt(store, "DELETE FROM direct_messages WHERE sent_ms < ?1", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, now_ms - HERALD_OUTBOX_DIRECT_KEEP_MS);
  int rc = herald_store_step_done(store, st, err, "removing expired direct messages");
  if (rc != kHeraldOk) return rc;
  st = herald_store_stmt(
      store,
      "INSERT INTO direct_messages(app_id, message_id, endpoint_id, channel, address, sent_ms)"
      " VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (app_id, message_id) DO UPDATE SET"
      " endpoint_id = excluded.endpoint_id, channel = excluded.channel,"
      " address = excluded.address, sent_ms = excluded.sent_ms",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, message_id, -1, SQLITE_STATIC);
  if (endpoint_id) sqlite3_bind_text(st, 3, endpoint_id, -1, SQLITE_STATIC);
  else sqlite3_bind_null(st, 3);
  sqlite3_bind_text(st, 4, channel, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 5, address, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 6, now_ms);
  return herald_store_step_done(store, st, err, "recording a direct message");
}

int herald_outbox_optout_add(HeraldStore *store, const char *app, const char *channel,
                             const char *address, const char *source, const char *message_id,
                             const char *reason, const char *at, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO address_optouts(app_id, channel, address, source, message_id, reason, opted_out_at)"
      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (app_id, channel, address) DO NOTHING",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, channel, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, address, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, source, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 5, message_id, -1, SQLITE_STATIC);
  if (reason) sqlite3_bind_text(st, 6, reason, -1, SQLITE_STATIC);
  else sqlite3_bind_null(st, 6);
  sqlite3_bind_text(st, 7, at, -1, SQLITE_STATIC);
  return herald_store_step_done(store, st, err, "recording an address opt-out");
}

int herald_outbox_optout_lift(HeraldStore *store, const char *app, const char *channel,
                              const char *address, int *lifted, HeraldError *err) {
  *lifted = 0;
  sqlite3_stmt *st = herald_store_stmt(
      store, "DELETE FROM address_optouts WHERE app_id = ?1 AND channel = ?2 AND address = ?3", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, channel, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, address, -1, SQLITE_STATIC);
  int rc = herald_store_step_done(store, st, err, "lifting an address opt-out");
  if (rc == kHeraldOk) *lifted = sqlite3_changes(herald_store_db(store)) > 0;
  return rc;
}

int herald_outbox_report(HeraldStore *store, int64_t claimer, int64_t id, const char *state,
                         const char *reason, int64_t due_ms, HeraldError *err) {
  if (strcmp(state, "SENT") != 0 && strcmp(state, "FAILED") != 0 && strcmp(state, "PENDING") != 0 &&
      strcmp(state, "RELEASED") != 0 && strcmp(state, "SKIPPED") != 0)
    return herald_error_set(err, kHeraldInvalid,
                            "outbox state must be SENT, FAILED, PENDING, RELEASED or SKIPPED, not %s",
                            state);
  /* RELEASED: PENDING again without the claim counting as an attempt (a message of a campaign
   * paused while it was on the wire waits for the resume). SKIPPED (in quiet time when claimed,
   * under the skip policy) was not attempted either. */
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE outbox SET state = CASE WHEN ?2 = 'RELEASED' THEN 'PENDING' ELSE ?2 END, reason = ?3,"
      " due_ms = CASE WHEN ?2 IN ('PENDING', 'RELEASED') THEN ?4 ELSE due_ms END,"
      " attempts = CASE WHEN ?2 IN ('RELEASED', 'SKIPPED') AND attempts > 0 THEN attempts - 1"
      " ELSE attempts END,"
      " updated_ms = ?5 WHERE id = ?1 AND state = 'CLAIMED' AND claimed_by = ?6",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, reason, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, due_ms);
  sqlite3_bind_int64(st, 5, herald_clock_now_ms());
  sqlite3_bind_int64(st, 6, claimer);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "reporting an outbox row");
  if (sqlite3_changes(herald_store_db(store)) == 0)
    return herald_error_set(err, kHeraldNotFound, "outbox row %lld is not claimed by this process",
                            (long long)id);
  return kHeraldOk;
}

int herald_outbox_recover(HeraldStore *store, int64_t now_ms, int64_t *count, HeraldError *err) {
  *count = 0;
  if (herald_store_begin(store, err) != kHeraldOk) return err ? err->code : kHeraldStore;
  if (herald_claimer_reap(store, now_ms, NULL, err) != kHeraldOk) goto fail;
  /* Every claim registers its claimer in the transaction that stamps the rows, so a claimed
   * row without one is a reaped claimer's. */
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE outbox SET state = 'PENDING', claimed_ms = NULL, claimed_by = NULL"
      " WHERE state = 'CLAIMED' AND NOT EXISTS (SELECT 1 FROM claimers c WHERE c.id = outbox.claimed_by)",
      err);
  if (st == NULL) goto fail;
  if (herald_store_step_done(store, st, err, "recovering claimed rows") != kHeraldOk) goto fail;
  *count = sqlite3_changes64(herald_store_db(store));
  return herald_store_commit(store, err);
fail:
  herald_store_rollback(store);
  return err ? err->code : kHeraldStore;
}

int herald_outbox_next_due(HeraldStore *store, const char *app, const char *campaigns_json,
                           int64_t *due_ms, int *found, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      /* The first row in due-time order, outbox first for the reason given at claim. */
      "SELECT o.due_ms FROM outbox o CROSS JOIN campaign_runs r ON r.id = o.run_id"
      " CROSS JOIN campaigns c ON c.app_id = r.app_id AND c.id = r.campaign_id"
      " WHERE o.state = 'PENDING' AND r.app_id = ?1 AND c.state NOT IN ('PAUSED', 'DELETED', 'INVALID')"
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
  /* A message in flight when its campaign was deleted may come back PENDING afterwards (a
   * retry, a rate-limit deferral, a recovery after a kill); nothing claims it any more, so it
   * is cancelled as the deletion cancelled the others, and its run can complete. */
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE outbox SET state = 'SKIPPED', reason = 'CAMPAIGN_DELETED' WHERE state = 'PENDING'"
      " AND run_id IN (SELECT r.id FROM campaign_runs r JOIN campaigns c"
      " ON c.app_id = r.app_id AND c.id = r.campaign_id"
      " WHERE r.state = 'EXECUTING' AND c.state = 'DELETED')",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  if (herald_store_step_done(store, st, err, "cancelling messages of deleted campaigns") != kHeraldOk)
    return err ? err->code : kHeraldStore;
  st = herald_store_stmt(
      store,
      "UPDATE campaign_runs SET state = 'COMPLETED', result = 'SUCCESS', ended_at = ?1"
      " WHERE state = 'EXECUTING'"
      /* claimed rows first, through their index: a run with messages in flight is passed
       * over without reading its rows, which the second test reads one by one until an open
       * one. It reads them from the end of the run: rows go out about in the order of the
       * run's index (a claim takes the rows due first, then by id, and a rate limit paces
       * them in that order), so the open rows are the last ones, where reading from the
       * start read every settled row first (thousands on each short claim of a paced run). */
      " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.run_id = campaign_runs.id"
      " AND o.state = 'CLAIMED')"
      " AND (SELECT o.id FROM outbox o WHERE o.run_id = campaign_runs.id"
      " AND o.state IN ('PENDING', 'WAITING') ORDER BY o.run_id DESC, o.endpoint_id DESC LIMIT 1) IS NULL",
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

/* herald_message_id(endpoint_id) for INSERT ... SELECT: the run's lanes are the user data. */
static void sql_message_id(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  const char *endpoint = (const char *)sqlite3_value_text(argv[0]);
  if (endpoint == NULL) {
    sqlite3_result_null(ctx);
    return;
  }
  char id[40];
  finish_id(*(const IdLanes *)sqlite3_user_data(ctx), endpoint, id);
  sqlite3_result_text(ctx, id, 36, SQLITE_TRANSIENT);
}

static int fill_zones(HeraldStore *store, const HeraldOutboxRunSpec *spec, HeraldError *err) {
  sqlite3 *db = herald_store_db(store);
  if (sqlite3_exec(db,
                   "CREATE TEMP TABLE IF NOT EXISTS herald_run_streams (stream INTEGER NOT NULL,"
                   " zone TEXT NOT NULL, due_ms INTEGER NOT NULL, zone_used TEXT, note TEXT,"
                   " skip_reason TEXT, PRIMARY KEY (stream, zone));"
                   "DELETE FROM temp.herald_run_streams;",
                   NULL, NULL, NULL) != SQLITE_OK)
    return herald_store_fail(store, err, "preparing the run's zones");
  sqlite3_stmt *st = herald_store_stmt(
      store, "INSERT OR REPLACE INTO temp.herald_run_streams VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  for (int i = 0; i < spec->n_zones; i++) {
    const HeraldOutboxZone *z = &spec->zones[i];
    sqlite3_bind_int(st, 1, z->stream);
    sqlite3_bind_text(st, 2, z->zone ? z->zone : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, z->due_ms);
    sqlite3_bind_text(st, 4, z->zone_used, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, z->note, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, z->skip_reason, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return herald_store_fail(store, err, "writing the run's zones");
  }
  return kHeraldOk;
}

/* The arm of cohort e.cohort_id as a CASE over integer bounds (formatted here, never input). */
static int arm_sql(const HeraldOutboxRunSpec *spec, char *buf, size_t len, HeraldError *err) {
  int n = snprintf(buf, len, "CASE WHEN e.cohort_id < %d THEN %d", spec->holdout,
                   HERALD_HOLDOUT_TREATMENT);
  int edge = spec->holdout;
  for (int i = 0; i < spec->n_treatments - 1 && n > 0 && (size_t)n < len; i++) {
    edge += spec->sizes[i];
    n += snprintf(buf + n, len - (size_t)n, " WHEN e.cohort_id < %d THEN %d", edge, i);
  }
  if (n > 0 && (size_t)n < len)
    n += snprintf(buf + n, len - (size_t)n, " ELSE %d END", spec->n_treatments - 1);
  if (n < 0 || (size_t)n >= len)
    return herald_error_set(err, kHeraldInvalid, "too many treatments (%d)", spec->n_treatments);
  return kHeraldOk;
}

/* The stream of cohort e.cohort_id in this run (see HeraldOutboxRunSpec.arm_stream), -1 when
 * its arm has no run at this instant. */
static int stream_sql(const HeraldOutboxRunSpec *spec, char *buf, size_t len, HeraldError *err) {
  if (spec->arm_stream == NULL) {
    snprintf(buf, len, "0");
    return kHeraldOk;
  }
  int n = snprintf(buf, len, "CASE WHEN e.cohort_id < %d THEN %d", spec->holdout,
                   spec->without_holdout ? -1 : 0);
  int edge = spec->holdout;
  for (int i = 0; i < spec->n_treatments - 1 && n > 0 && (size_t)n < len; i++) {
    edge += spec->sizes[i];
    n += snprintf(buf + n, len - (size_t)n, " WHEN e.cohort_id < %d THEN %d", edge,
                  spec->arm_stream[i]);
  }
  if (n > 0 && (size_t)n < len)
    n += snprintf(buf + n, len - (size_t)n, " ELSE %d END",
                  spec->arm_stream[spec->n_treatments - 1]);
  if (n < 0 || (size_t)n >= len)
    return herald_error_set(err, kHeraldInvalid, "too many treatments (%d)", spec->n_treatments);
  return kHeraldOk;
}

/* Whether two endpoints of app share an address: a scan of the address index, far cheaper
 * than the window that finds which rows of a run are duplicates, so that runs only when
 * needed. */
static int has_duplicate_addresses(HeraldStore *store, const char *app, int *found,
                                   HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "SELECT 1 FROM endpoints WHERE app_id = ?1 AND address IS NOT NULL GROUP BY address"
      " HAVING count(*) > 1 LIMIT 1",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  *found = rc == SQLITE_ROW;
  sqlite3_reset(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    return herald_store_fail(store, err, "looking for shared addresses");
  return kHeraldOk;
}

int herald_outbox_materialize(HeraldStore *store, const HeraldOutboxRunSpec *spec,
                              int64_t *run_id, int *created, HeraldError *err) {
  if (spec->n_treatments < 1)
    return herald_error_set(err, kHeraldInvalid, "a run needs at least one treatment");
  if (herald_outbox_run_create(store, spec->app, spec->campaign_id, spec->version,
                               spec->scheduled_ms, run_id, created, err) != kHeraldOk)
    return err ? err->code : kHeraldStore;
  if (!*created) return kHeraldOk;
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE campaign_runs SET run_index = ?2, daily_cap = ?3, total_cap = ?4, max_duration_ms = ?5,"
      " started_ms = ?6, timezones = ?7, arms = ?8 WHERE id = ?1",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, *run_id);
  sqlite3_bind_int64(st, 2, spec->run_index);
  if (spec->daily_cap > 0) sqlite3_bind_int64(st, 3, spec->daily_cap); else sqlite3_bind_null(st, 3);
  if (spec->total_cap > 0) sqlite3_bind_int64(st, 4, spec->total_cap); else sqlite3_bind_null(st, 4);
  if (spec->max_duration_ms > 0) sqlite3_bind_int64(st, 5, spec->max_duration_ms); else sqlite3_bind_null(st, 5);
  sqlite3_bind_int64(st, 6, herald_clock_now_ms());
  sqlite3_bind_int(st, 7, spec->n_zones);
  sqlite3_bind_text(st, 8, spec->arms_json, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "starting a run");
  if (fill_zones(store, spec, err) != kHeraldOk) return err ? err->code : kHeraldStore;

  sqlite3 *db = herald_store_db(store);
  IdLanes lanes = run_lanes(spec->app, spec->campaign_id, spec->scheduled_ms);
  if (sqlite3_create_function(db, "herald_message_id", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
                              &lanes, sql_message_id, NULL, NULL) != SQLITE_OK)
    return herald_store_fail(store, err, "registering herald_message_id");
  char arm[1024];
  if (arm_sql(spec, arm, sizeof arm, err) != kHeraldOk) return err->code;
  char stream[1024];
  if (stream_sql(spec, stream, sizeof stream, err) != kHeraldOk) return err->code;
  int dups = 0;
  if (has_duplicate_addresses(store, spec->app, &dups, err) != kHeraldOk) return err->code;
  int zoned = spec->n_zones > 0;
  /* Reasons in priority order; the address duplicate check prefers a sendable endpoint, and
   * among equals the first id, so the choice is stable across runs. */
  char *sql = sqlite3_mprintf(
      "INSERT INTO outbox(run_id, endpoint_id, treatment, message_id, channel, address, due_ms,"
      " first_due_ms, state, reason, zone, note)"
      " SELECT :herald_run, id, arm, herald_message_id(id), channel_type, address, due, due, CASE WHEN reason IS NULL THEN"
      " 'PENDING' ELSE 'SKIPPED' END, reason, zone_used, note FROM ("
      "  SELECT e.id, e.channel_type, e.address, %s AS arm,"
      "   %s,"
      "   CASE WHEN e.endpoint_status = 'INACTIVE' THEN 'INACTIVE'"
      "    WHEN e.opt_out = 'ALL' THEN 'OPT_OUT'"
      "    WHEN e.address IS NULL OR e.address = '' THEN 'MISSING_ADDRESS'"
      "    WHEN e.cohort_id < %d THEN 'HOLDOUT'"
      "    %s"
      "    WHEN %s THEN 'DUPLICATE_ADDRESS'"
      "   END AS reason"
      "  FROM endpoints e %s%s%s"
      "  WHERE e.app_id = :herald_app AND (%s)%s%s%s)",
      arm,
      /* without local time or quiet time every row is due at the run's time: no zone join */
      zoned ? "coalesce(z.due_ms, :herald_due) AS due, z.zone_used, z.note"
            : ":herald_due AS due, NULL AS zone_used, NULL AS note",
      spec->holdout, zoned ? "WHEN z.skip_reason IS NOT NULL THEN z.skip_reason" : "",
      dups ? "row_number() OVER (PARTITION BY e.channel_type, e.address ORDER BY"
             " e.endpoint_status = 'INACTIVE', e.opt_out = 'ALL', e.id) > 1"
           : "0",
      zoned ? "LEFT JOIN temp.herald_run_streams z ON z.stream = " : "", zoned ? stream : "",
      zoned ? " AND z.zone = coalesce(e.timezone, '')" : "", spec->where ? spec->where : "1",
      /* arms without a run at this instant get no rows */
      spec->arm_stream ? " AND " : "", spec->arm_stream ? stream : "",
      spec->arm_stream ? " >= 0" : "");
  if (sql == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  sqlite3_free(sql);
  if (rc != SQLITE_OK) {
    return herald_error_set(err, kHeraldInvalid, "the segment's SQL condition does not compile: %s",
                            sqlite3_errmsg(db));
  }
  sqlite3_bind_int64(st, sqlite3_bind_parameter_index(st, ":herald_run"), *run_id);
  sqlite3_bind_text(st, sqlite3_bind_parameter_index(st, ":herald_app"), spec->app, -1,
                    SQLITE_STATIC);
  sqlite3_bind_int64(st, sqlite3_bind_parameter_index(st, ":herald_due"), spec->default_due_ms);
  if (spec->bind != NULL && spec->bind(st, spec->bind_ctx, err) != kHeraldOk) {
    sqlite3_finalize(st);
    return err ? err->code : kHeraldInvalid;
  }
  rc = sqlite3_step(st);
  sqlite3_finalize(st);
  int64_t total = sqlite3_changes64(db);
  /* the function's user data lives on this stack frame: unregister it */
  sqlite3_create_function(db, "herald_message_id", 1, SQLITE_UTF8, NULL, NULL, NULL, NULL);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "materialising a run");
  st = herald_store_stmt(store, "UPDATE campaign_runs SET total = ?2 WHERE id = ?1", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, *run_id);
  sqlite3_bind_int64(st, 2, total);
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "counting a run");
  return kHeraldOk;
}

int herald_outbox_run_skip(HeraldStore *store, const char *app, const char *campaign_id,
                           int version, int64_t scheduled_ms, int64_t run_index,
                           const char *reason, HeraldError *err) {
  char now[32];
  herald_time_format(herald_clock_now_ms(), now, sizeof now);
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO campaign_runs(app_id, campaign_id, campaign_version, scheduled_ms, run_index,"
      " state, result, reason, created_at, ended_at) VALUES (?1, ?2, ?3, ?4, ?5, 'SKIPPED',"
      " 'SKIPPED', ?6, ?7, ?7) ON CONFLICT (app_id, campaign_id, scheduled_ms, trigger_seq)"
      " DO NOTHING",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, campaign_id, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, version);
  sqlite3_bind_int64(st, 4, scheduled_ms);
  sqlite3_bind_int64(st, 5, run_index);
  sqlite3_bind_text(st, 6, reason, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 7, now, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "recording a skipped run");
  return kHeraldOk;
}

int herald_outbox_run_rows(HeraldStore *store, int64_t run_id, int64_t after_id, int max,
                           void (*fn)(int64_t id, const char *endpoint_id, const char *state,
                                      void *ctx),
                           void *ctx, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "SELECT id, endpoint_id, state FROM outbox WHERE run_id = ?1 AND id > ?2 ORDER BY id"
      " LIMIT ?3",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, run_id);
  sqlite3_bind_int64(st, 2, after_id);
  sqlite3_bind_int(st, 3, max);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW)
    fn(sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1),
       (const char *)sqlite3_column_text(st, 2), ctx);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "reading a run's rows");
  return kHeraldOk;
}

static int exec_row(HeraldStore *store, const char *sql, int64_t id, const char *a,
                    const char *b, const char *what, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(store, sql, err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, id);
  if (sqlite3_bind_parameter_count(st) >= 2) sqlite3_bind_text(st, 2, a, -1, SQLITE_STATIC);
  if (sqlite3_bind_parameter_count(st) >= 3) sqlite3_bind_text(st, 3, b, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, what);
  return kHeraldOk;
}

int herald_outbox_row_drop(HeraldStore *store, int64_t id, HeraldError *err) {
  return exec_row(store, "DELETE FROM outbox WHERE id = ?1", id, NULL, NULL,
                  "dropping an outbox row", err);
}

int herald_outbox_row_skip(HeraldStore *store, int64_t id, const char *reason, HeraldError *err) {
  return exec_row(store,
                  "UPDATE outbox SET state = 'SKIPPED', reason = ?2 WHERE id = ?1"
                  " AND state = 'PENDING'",
                  id, reason, NULL, "skipping an outbox row", err);
}

int herald_outbox_row_override(HeraldStore *store, int64_t id, const char *title,
                               const char *body, HeraldError *err) {
  return exec_row(store,
                  "UPDATE outbox SET title_override = ?2, body_override = ?3 WHERE id = ?1",
                  id, title, body, "overriding a message", err);
}

int herald_outbox_run_finish(HeraldStore *store, int64_t run_id, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store, "UPDATE campaign_runs SET total = (SELECT count(*) FROM outbox WHERE run_id = ?1)"
             " WHERE id = ?1", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, run_id);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "counting a run");
  return kHeraldOk;
}

int herald_outbox_cancel(HeraldStore *store, const char *app, const char *campaign_id,
                         const char *reason, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE outbox SET state = 'SKIPPED', reason = ?3 WHERE state IN ('PENDING', 'WAITING') AND run_id IN"
      " (SELECT id FROM campaign_runs WHERE app_id = ?1 AND campaign_id = ?2)",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, campaign_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, reason, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "cancelling a campaign's rows");
  return kHeraldOk;
}

int herald_outbox_hold_rest(HeraldStore *store, const char *app, int64_t run_id,
                            const unsigned char in_test[100], int64_t *held, HeraldError *err) {
  /* the test cohorts as a 100-character mask, so the statement stays one cached text */
  char mask[101];
  for (int i = 0; i < 100; i++) mask[i] = in_test[i] ? '1' : '0';
  mask[100] = '\0';
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE outbox SET state = 'WAITING', reason = 'AB_WAITING' WHERE run_id = ?1"
      " AND state = 'PENDING' AND endpoint_id IN (SELECT id FROM endpoints WHERE app_id = ?2"
      " AND substr(?3, cohort_id + 1, 1) = '0')",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, run_id);
  sqlite3_bind_text(st, 2, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, mask, 100, SQLITE_STATIC);
  if (herald_store_step_done(store, st, err, "holding back the rest of an A/B test") != kHeraldOk)
    return err ? err->code : kHeraldStore;
  *held = sqlite3_changes64(herald_store_db(store));
  return kHeraldOk;
}

static int decide_in_tx(HeraldStore *store, const HeraldOutboxDecision *d, int *recorded,
                        int64_t *released, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO ab_decisions(run_id, app_id, campaign_id, decided_ms, metric, decision, winner,"
      " policy, released, reason, figures) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10)"
      " ON CONFLICT (run_id) DO NOTHING",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, d->run_id);
  sqlite3_bind_text(st, 2, d->app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, d->campaign_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, d->decided_ms);
  sqlite3_bind_text(st, 5, d->metric, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 6, d->decision, -1, SQLITE_STATIC);
  if (d->winner >= 0) sqlite3_bind_int(st, 7, d->winner); else sqlite3_bind_null(st, 7);
  sqlite3_bind_text(st, 8, d->policy, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 9, d->reason, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 10, d->figures_json, -1, SQLITE_STATIC);
  if (herald_store_step_done(store, st, err, "recording an A/B decision") != kHeraldOk)
    return err ? err->code : kHeraldStore;
  *recorded = sqlite3_changes(herald_store_db(store)) > 0;
  *released = 0;
  if (!*recorded) return kHeraldOk;
  st = herald_store_stmt(
      store,
      "UPDATE outbox SET state = CASE WHEN ?2 IS NULL THEN 'SKIPPED' ELSE 'PENDING' END,"
      " reason = CASE WHEN ?2 IS NULL THEN 'AB_STOPPED' END, treatment = coalesce(?2, treatment),"
      " due_ms = CASE WHEN ?2 IS NULL THEN due_ms ELSE max(due_ms, ?3) END,"
      /* the winner's send is the rest's scheduled start */
      " first_due_ms = CASE WHEN ?2 IS NULL THEN first_due_ms ELSE max(due_ms, ?3) END"
      " WHERE run_id = ?1 AND state = 'WAITING'",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, d->run_id);
  if (d->winner >= 0) sqlite3_bind_int(st, 2, d->winner); else sqlite3_bind_null(st, 2);
  sqlite3_bind_int64(st, 3, d->decided_ms);
  if (herald_store_step_done(store, st, err, "releasing the rest of an A/B test") != kHeraldOk)
    return err ? err->code : kHeraldStore;
  *released = sqlite3_changes64(herald_store_db(store));
  if (d->winner >= 0 && d->n_quiet > 0) {
    /* released into quiet time: held to its end (or skipped), as the run's first rows were */
    st = herald_store_stmt(
        store,
        "UPDATE outbox SET due_ms = CASE WHEN ?5 THEN due_ms ELSE ?4 END,"
        " first_due_ms = CASE WHEN ?5 THEN first_due_ms ELSE ?4 END,"
        " state = CASE WHEN ?5 THEN 'SKIPPED' ELSE state END,"
        " reason = CASE WHEN ?5 THEN 'QUIET_TIME' ELSE reason END"
        " WHERE run_id = ?1 AND state = 'PENDING' AND coalesce(zone, '') = ?2 AND due_ms = ?3",
        err);
    if (st == NULL) return err ? err->code : kHeraldStore;
    for (int i = 0; i < d->n_quiet; i++) {
      sqlite3_bind_int64(st, 1, d->run_id);
      sqlite3_bind_text(st, 2, d->quiet[i].zone, -1, SQLITE_STATIC);
      sqlite3_bind_int64(st, 3, d->quiet[i].due_ms);
      sqlite3_bind_int64(st, 4, d->quiet[i].new_due_ms);
      sqlite3_bind_int(st, 5, d->quiet[i].skip);
      if (herald_store_step_done(store, st, err, "holding released rows to quiet time") != kHeraldOk)
        return err ? err->code : kHeraldStore;
    }
  }
  st = herald_store_stmt(store, "UPDATE ab_decisions SET released = ?2 WHERE run_id = ?1", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_int64(st, 1, d->run_id);
  sqlite3_bind_int64(st, 2, *released);
  return herald_store_step_done(store, st, err, "counting an A/B release");
}

int herald_outbox_decide(HeraldStore *store, const HeraldOutboxDecision *d, int *recorded,
                         int64_t *released, HeraldError *err) {
  if (herald_store_begin(store, err) != kHeraldOk) return err ? err->code : kHeraldStore;
  if (decide_in_tx(store, d, recorded, released, err) != kHeraldOk) {
    herald_store_rollback(store);
    return err ? err->code : kHeraldStore;
  }
  return herald_store_commit(store, err);
}

int herald_outbox_trigger_cursor(HeraldStore *store, const char *app, const char *campaign_id,
                                 int64_t *last_seq, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO trigger_cursors(app_id, campaign_id, last_seq) SELECT ?1, ?2,"
      " coalesce((SELECT max(seq) FROM events), 0) WHERE true"
      " ON CONFLICT (app_id, campaign_id) DO NOTHING",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, campaign_id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "starting a trigger cursor");
  st = herald_store_stmt(
      store, "SELECT last_seq FROM trigger_cursors WHERE app_id = ?1 AND campaign_id = ?2", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, campaign_id, -1, SQLITE_STATIC);
  rc = sqlite3_step(st);
  *last_seq = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  if (rc != SQLITE_ROW) return herald_store_fail(store, err, "reading a trigger cursor");
  return kHeraldOk;
}

int herald_outbox_trigger(HeraldStore *store, const HeraldOutboxTrigger *t, int64_t *run_id,
                          HeraldError *err) {
  char now[32];
  herald_time_format(t->now_ms, now, sizeof now);
  *run_id = 0;
  if (herald_store_begin(store, err) != kHeraldOk) return err ? err->code : kHeraldStore;
  sqlite3_stmt *st;
  /* The cursor moves from from_seq or not at all: another herald that processed these events
   * first has moved it, and this batch is dropped. */
  st = herald_store_stmt(
      store, "UPDATE trigger_cursors SET last_seq = ?4 WHERE app_id = ?1 AND campaign_id = ?2"
             " AND last_seq = ?3", err);
  if (st == NULL) goto fail;
  sqlite3_bind_text(st, 1, t->app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, t->campaign_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, t->from_seq);
  sqlite3_bind_int64(st, 4, t->to_seq);
  if (herald_store_step_done(store, st, err, "advancing a trigger cursor") != kHeraldOk) goto fail;
  if (sqlite3_changes(herald_store_db(store)) == 0) {
    herald_store_rollback(store);
    return kHeraldOk;
  }
  /* cancellations first: a cancelling event later in the batch than a trigger still cancels
   * it, as the trigger's row is inserted below only when no cancel follows it */
  for (int i = 0; i < t->n_cancels; i++) {
    st = herald_store_stmt(
        store,
        "UPDATE outbox SET state = 'SKIPPED', reason = 'CANCELLED', updated_ms = ?4"
        " WHERE state = 'PENDING' AND endpoint_id = ?3 AND run_id IN (SELECT id FROM"
        " campaign_runs WHERE app_id = ?1 AND campaign_id = ?2 AND trigger_seq > 0)",
        err);
    if (st == NULL) goto fail;
    sqlite3_bind_text(st, 1, t->app, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, t->campaign_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, t->cancels[i], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, t->now_ms);
    if (herald_store_step_done(store, st, err, "cancelling triggered messages") != kHeraldOk) goto fail;
  }
  if (t->n_rows > 0) {
    st = herald_store_stmt(
        store,
        "INSERT INTO campaign_runs(app_id, campaign_id, campaign_version, scheduled_ms, trigger_seq,"
        " run_index, state, total, max_duration_ms, started_ms, created_at, daily_cap, total_cap)"
        " VALUES (?1, ?2, ?3, ?4, ?5, -1, 'EXECUTING', ?6, ?7, ?4, ?8, ?9, ?10)",
        err);
    if (st == NULL) goto fail;
    sqlite3_bind_text(st, 1, t->app, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, t->campaign_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, t->version);
    sqlite3_bind_int64(st, 4, t->now_ms);
    sqlite3_bind_int64(st, 5, t->to_seq);
    sqlite3_bind_int(st, 6, t->n_rows);
    if (t->max_duration_ms > 0) sqlite3_bind_int64(st, 7, t->max_duration_ms);
    else sqlite3_bind_null(st, 7);
    sqlite3_bind_text(st, 8, now, -1, SQLITE_STATIC);
    if (t->daily_cap > 0) sqlite3_bind_int64(st, 9, t->daily_cap); else sqlite3_bind_null(st, 9);
    if (t->total_cap > 0) sqlite3_bind_int64(st, 10, t->total_cap); else sqlite3_bind_null(st, 10);
    if (herald_store_step_done(store, st, err, "creating a triggered run") != kHeraldOk) goto fail;
    *run_id = sqlite3_last_insert_rowid(herald_store_db(store));
    st = herald_store_stmt(
        store,
        "INSERT INTO outbox(run_id, endpoint_id, treatment, message_id, channel, address, due_ms,"
        " first_due_ms, state, reason, note, zone)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11)",
        err);
    if (st == NULL) goto fail;
    for (int i = 0; i < t->n_rows; i++) {
      const HeraldOutboxTriggerRow *r = &t->rows[i];
      char message_id[40];
      herald_outbox_message_id(t->app, t->campaign_id, r->event_seq, r->endpoint_id, message_id);
      char note[48];
      snprintf(note, sizeof note, "EVENT %lld", (long long)r->event_seq);
      sqlite3_bind_int64(st, 1, *run_id);
      sqlite3_bind_text(st, 2, r->endpoint_id, -1, SQLITE_STATIC);
      sqlite3_bind_int(st, 3, r->treatment);
      sqlite3_bind_text(st, 4, message_id, -1, SQLITE_STATIC);
      sqlite3_bind_text(st, 5, r->channel, -1, SQLITE_STATIC);
      sqlite3_bind_text(st, 6, r->address, -1, SQLITE_STATIC);
      sqlite3_bind_int64(st, 7, r->due_ms);
      sqlite3_bind_text(st, 8, r->reason ? "SKIPPED" : "PENDING", -1, SQLITE_STATIC);
      sqlite3_bind_text(st, 9, r->reason, -1, SQLITE_STATIC);
      sqlite3_bind_text(st, 10, note, -1, SQLITE_STATIC);
      sqlite3_bind_text(st, 11, r->zone, -1, SQLITE_STATIC);
      if (herald_store_step_done(store, st, err, "writing a triggered message") != kHeraldOk) goto fail;
    }
  }
  return herald_store_commit(store, err);
fail:
  herald_store_rollback(store);
  return err ? err->code : kHeraldStore;
}
