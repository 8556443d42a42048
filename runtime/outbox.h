/* The outbox: durable per-endpoint delivery rows of campaign runs.
 *
 * Producer side (campaign engine): a run is created idempotently for (campaign, scheduled
 * time) and its rows are written in the same transaction, so a crash leaves either no run or
 * a whole one. Consumer side (delivery): claim due rows, send, report the outcome. Claimed rows
 * of a process that died before reporting them are in doubt; herald_outbox_recover, run at
 * start and from every running process's loop, returns them to PENDING and they are retried
 * with the same message id (the idempotency key). */
#ifndef HERALD_OUTBOX_H
#define HERALD_OUTBOX_H

#include <stdint.h>

#include "runtime/store.h"
#include "runtime/endpoint.h"

#define HERALD_HOLDOUT_TREATMENT (-1)

typedef struct {
  int64_t id;
  int64_t run_id;
  char campaign_id[256];
  int campaign_version;
  char endpoint_id[256];
  int treatment;
  char message_id[40];
  char channel[32];
  char address[HERALD_ENDPOINT_ADDRESS_MAX + 1];  /* whole: a push token may be long */
  int64_t due_ms;
  int64_t first_due_ms;  /* when it was first due: retries and deferrals move due_ms */
  char zone[64];         /* the endpoint's time zone when the run was written; "" when none */
  int attempts;
  int64_t daily_cap, total_cap, max_duration_ms;  /* the run's limits; 0: none */
} HeraldOutboxClaim;

/* Creates the run unless it exists; *created tells which. Call inside a transaction together
 * with the rows. */
int herald_outbox_run_create(HeraldStore *store, const char *app, const char *campaign_id,
                             int version, int64_t scheduled_ms, int64_t *run_id, int *created,
                             HeraldError *err);
/* One time zone of a run's audience: endpoints whose Demographic.Timezone is `zone` ("" for
 * none) are due at due_ms, follow zone_used, carry note (MISSING_TIMEZONE / INVALID_TIMEZONE
 * when they fell back to the campaign's zone, else NULL) and, when skip_reason is set (quiet
 * time under the skip policy), are recorded SKIPPED with it. */
typedef struct {
  int stream;             /* the schedule these due times follow (see arm_stream) */
  const char *zone;
  int64_t due_ms;
  const char *zone_used;
  const char *note;
  const char *skip_reason;
} HeraldOutboxZone;

/* A run to materialise from the endpoints table in one INSERT ... SELECT. */
typedef struct {
  const char *app;
  const char *campaign_id;
  int version;
  int64_t scheduled_ms;   /* the run's key: one run per (campaign, scheduled_ms) */
  int64_t run_index;
  const char *where;      /* the segment's SQL condition over endpoints aliased e */
  /* Binds the segment's named parameters (never spliced into the SQL). */
  int (*bind)(sqlite3_stmt *st, void *ctx, HeraldError *err);
  void *bind_ctx;
  int holdout;            /* cohorts [0, holdout) are the holdout */
  const int *sizes;       /* SizePercent of treatment 0..n_treatments-1, in order */
  int n_treatments;
  const HeraldOutboxZone *zones;
  int n_zones;
  int64_t default_due_ms; /* for a zone not in zones (an endpoint that arrived meanwhile) */
  int64_t daily_cap, total_cap, max_duration_ms;  /* 0: none */
  /* A treatment may follow its own schedule: per treatment, the stream (0: the campaign's
   * schedule, k: treatment k's own) whose zones give its rows' due times in this run, or -1
   * when the treatment has no run at this instant (it gets no rows). NULL: every treatment
   * follows stream 0. without_holdout leaves the holdout out (it is recorded once per run of
   * the campaign's schedule). arms_json (the arms in the run) is stored with the run. */
  const int *arm_stream;
  int without_holdout;
  const char *arms_json;
} HeraldOutboxRunSpec;

/* Creates the run (unless it exists: *created = 0) and its rows from the segment: one row per
 * member with its arm, a deterministic message id, due time and zone, SKIPPED with a reason
 * (INACTIVE, OPT_OUT, MISSING_ADDRESS, HOLDOUT, QUIET_TIME, DUPLICATE_ADDRESS) when it is not
 * to be sent. Call inside a transaction; filters run on the rows before it commits. */
int herald_outbox_materialize(HeraldStore *store, const HeraldOutboxRunSpec *spec,
                              int64_t *run_id, int *created, HeraldError *err);

/* Automatic A/B winner. After a run's rows are materialised (and filtered), holds back the
 * rest of the audience: rows still PENDING whose endpoint's CohortId c has in_test[c] == 0
 * become WAITING with reason AB_WAITING. Nothing claims WAITING rows; the run stays EXECUTING
 * until herald_outbox_decide releases them. *held counts them. */
int herald_outbox_hold_rest(HeraldStore *store, const char *app, int64_t run_id,
                            const unsigned char in_test[100], int64_t *held, HeraldError *err);

typedef struct {
  const char *app;
  const char *campaign_id;
  int64_t run_id;
  int64_t decided_ms;
  const char *metric;        /* opens, clicks, conversions */
  const char *decision;      /* winner, send_best, send_default, stop */
  int winner;                /* the treatment the rest receives; -1: none (stop) */
  const char *policy;
  const char *reason;        /* one line of why */
  const char *figures_json;  /* the numbers the decision was taken on */
  /* Released rows that would fall in quiet time: those of zone ("" for none) due at due_ms once
   * released move to new_due_ms, or are SKIPPED/QUIET_TIME when skip is set. */
  const struct HeraldOutboxQuietMove {
    const char *zone;
    int64_t due_ms, new_due_ms;
    int skip;
  } *quiet;
  int n_quiet;
} HeraldOutboxDecision;

/* In one transaction: records the run's decision and releases its WAITING rows, to the winner
 * (PENDING, treatment = winner, due at decided_ms) or, with no winner, SKIPPED with reason
 * AB_STOPPED. A run already decided is left as it is: *recorded = 0 and nothing changes. Call
 * outside a transaction. *released counts the rows released. */
int herald_outbox_decide(HeraldStore *store, const HeraldOutboxDecision *d, int *recorded,
                         int64_t *released, HeraldError *err);

/* Records a run that will not be sent (a stale run): state SKIPPED with reason. Idempotent. */
int herald_outbox_run_skip(HeraldStore *store, const char *app, const char *campaign_id,
                           int version, int64_t scheduled_ms, int64_t run_index,
                           const char *reason, HeraldError *err);

/* Rows of a run after after_id in id order (at most max): fn(row id, endpoint id, state). */
int herald_outbox_run_rows(HeraldStore *store, int64_t run_id, int64_t after_id, int max,
                           void (*fn)(int64_t id, const char *endpoint_id, const char *state,
                                      void *ctx),
                           void *ctx, HeraldError *err);
/* A filter's verdict on a row: drop it (not a segment member), skip it with reason, or keep
 * it with optional overrides of the message's title and body. */
int herald_outbox_row_drop(HeraldStore *store, int64_t id, HeraldError *err);
int herald_outbox_row_skip(HeraldStore *store, int64_t id, const char *reason, HeraldError *err);
int herald_outbox_row_override(HeraldStore *store, int64_t id, const char *title,
                               const char *body, HeraldError *err);
/* Sets the run's total to its row count, once its filters have run. */
int herald_outbox_run_finish(HeraldStore *store, int64_t run_id, HeraldError *err);

/* Cancels the PENDING rows of a campaign's runs (state SKIPPED, reason): for delete. */
int herald_outbox_cancel(HeraldStore *store, const char *app, const char *campaign_id,
                         const char *reason, HeraldError *err);

/* Event triggers. The position of campaign_id in the events table. An event campaign's is
 * created when the campaign is stored (runtime/campaign.c); one found missing here (a
 * definition stored without an EVENT schedule) starts at the current last seq, so history
 * does not fire a new trigger campaign. */
int herald_outbox_trigger_cursor(HeraldStore *store, const char *app, const char *campaign_id,
                                 int64_t *last_seq, HeraldError *err);

typedef struct {
  const char *endpoint_id;
  int treatment;
  const char *channel;
  const char *address;
  int64_t due_ms;
  int64_t event_seq;   /* the event that fired: part of the message id */
  const char *reason;  /* NULL: PENDING; else SKIPPED with it (HOLDOUT, OPT_OUT, ...) */
  const char *zone;    /* the endpoint's time zone, for quiet time when it is sent; may be NULL */
} HeraldOutboxTriggerRow;

typedef struct {
  const char *app;
  const char *campaign_id;
  int version;
  int64_t now_ms;
  int64_t from_seq;    /* the cursor this batch was read after */
  int64_t to_seq;      /* the last event seq this batch consumed */
  const HeraldOutboxTriggerRow *rows;
  int n_rows;
  const char *const *cancels;  /* endpoints whose pending triggered messages are cancelled */
  int n_cancels;
  int64_t daily_cap, total_cap, max_duration_ms;  /* the run's limits, as a scheduled run's; 0: none */
} HeraldOutboxTrigger;

/* In one transaction: the cursor moved from from_seq to to_seq, cancels, and a run holding
 * the batch's rows (when there are any). When the cursor is no longer at from_seq (another
 * process took the batch) nothing is written and *run_id is 0. */
int herald_outbox_trigger(HeraldStore *store, const HeraldOutboxTrigger *t, int64_t *run_id,
                          HeraldError *err);

/* Claims up to max rows due at now_ms (state PENDING -> CLAIMED, attempts + 1, claimed_ms =
 * now_ms, claimed_by = this process's claimer, registered on the way: runtime/claimer.h) of
 * the campaigns named in campaigns_json (a JSON array of ids of app; NULL for all).
 * Rows of PAUSED, DELETED or INVALID campaigns stay PENDING. In the same transaction, limits are
 * enforced row by row: a row not claimed within its run's max_duration_ms of the time it was
 * first due (retries and deferrals do not extend it) becomes SKIPPED/EXPIRED, a row whose
 * endpoint already has total_cap messages of this campaign SKIPPED/TOTAL_CAP, and one whose
 * endpoint had daily_cap messages of any campaign of the app in the last 24 hours
 * SKIPPED/DAILY_CAP. Caps count messages sent or claimed (in flight), not targeted ones; a
 * FAILED message does not count. */
int herald_outbox_claim(HeraldStore *store, const char *app, const char *campaigns_json,
                        int64_t now_ms, int max, HeraldOutboxClaim *out, int *count,
                        HeraldError *err);

/* Records the outcome of a row claimed by claimer (herald_claimer_id): SENT, FAILED (with
 * reason) or PENDING (retry at due_ms). kHeraldNotFound when the row is not claimed by it (any
 * more: a claimer taken for dead has had its rows given back). */
int herald_outbox_report(HeraldStore *store, int64_t claimer, int64_t id, const char *state,
                         const char *reason, int64_t due_ms, HeraldError *err);

/* Records sent messages as Pinpoint records them: a _campaign.send event, and _email.send for
 * email, with campaign_id, treatment_id, campaign_activity_id, message_id, delivery_type and
 * campaign_send_status. ids are the n outbox row ids reported SENT, in the order their events
 * take; call it in the report's transaction. Event ids derive from the message id, so a message
 * reported again after a crash is not counted twice. Sending is not the endpoint's activity: last_activity
 * (Recency) does not move. */
int herald_outbox_record_sends(HeraldStore *store, const int64_t *ids, int n, HeraldError *err);

/* How long a direct message's record is kept: receipts (SMS opt-outs, bounces, complaints)
 * for it are recorded within that time. */
#define HERALD_OUTBOX_DIRECT_KEEP_MS (30LL * 24 * 3600 * 1000)

/* Records a direct message (herald.send) sent at now_ms, so a status webhook or a bounce or
 * complaint mail of its message id finds it: its endpoint (NULL for an address the request
 * named: receipts go to the endpoints with its channel and address), channel and address.
 * Recording the same message id again replaces its row. Records older than
 * HERALD_OUTBOX_DIRECT_KEEP_MS are removed. Call inside the transaction that sends it. */
int herald_outbox_record_direct(HeraldStore *store, const char *app, const char *message_id,
                                const char *endpoint_id, const char *channel, const char *address,
                                int64_t now_ms, HeraldError *err);

/* Puts channel and address on app's opt-out list (migration 18), which direct messages
 * (herald.send) are refused for: the recipient of a direct message to that address asked for
 * no more (source: the event, _SMS.OPTOUT or _email.complaint, of message_id's receipt; reason
 * may be NULL; at: an ISO-8601 time). An address already on the list keeps its first entry, so
 * a notification given twice changes nothing. Call in the receipt's transaction. */
int herald_outbox_optout_add(HeraldStore *store, const char *app, const char *channel,
                             const char *address, const char *source, const char *message_id,
                             const char *reason, const char *at, HeraldError *err);

/* Takes channel and address off app's opt-out list; *lifted = 1 when it was on it. */
int herald_outbox_optout_lift(HeraldStore *store, const char *app, const char *channel,
                              const char *address, int *lifted, HeraldError *err);

/* Returns claimed-but-unreported rows to PENDING: those of claimers taken for dead at now_ms
 * (the system clock; see runtime/claimer.h), so rows in flight in another live herald are left
 * alone whatever its pid. *count says how many. */
int herald_outbox_recover(HeraldStore *store, int64_t now_ms, int64_t *count, HeraldError *err);

/* Earliest due time of a PENDING row of the campaigns named (as for claim); *found = 0 when
 * none. */
int herald_outbox_next_due(HeraldStore *store, const char *app, const char *campaigns_json,
                           int64_t *due_ms, int *found, HeraldError *err);

/* Marks runs whose rows are all settled COMPLETED, after cancelling (SKIPPED/CAMPAIGN_DELETED)
 * the PENDING rows of deleted campaigns: rows in flight at the deletion that came back. */
int herald_outbox_complete_runs(HeraldStore *store, int64_t now_ms, HeraldError *err);

typedef struct {
  int64_t run_id;
  int64_t scheduled_ms;
  const char *run_state;
  int treatment;
  const char *state;
  const char *reason;  /* NULL when none */
  int64_t count;
} HeraldOutboxTally;

/* Calls fn for every (run, treatment, state, reason) group of a campaign's outbox rows. */
int herald_outbox_tally(HeraldStore *store, const char *app, const char *campaign_id,
                        void (*fn)(const HeraldOutboxTally *tally, void *ctx), void *ctx,
                        HeraldError *err);

/* The deterministic message id of an endpoint in a run: stable across restarts. */
void herald_outbox_message_id(const char *app, const char *campaign_id, int64_t scheduled_ms,
                              const char *endpoint_id, char out[40]);

#endif
