/* The outbox: durable per-endpoint delivery rows of campaign runs.
 *
 * Producer side (campaign engine): a run is created idempotently for (campaign, scheduled
 * time) and its rows are written in the same transaction, so a crash leaves either no run or
 * a whole one. Consumer side (delivery): claim due rows, send, report the outcome. Claimed rows
 * not reported before a crash are in doubt; herald_outbox_recover returns them to PENDING and
 * they are retried with the same message id (the idempotency key). */
#ifndef HERALD_OUTBOX_H
#define HERALD_OUTBOX_H

#include <stdint.h>

#include "runtime/store.h"

#define HERALD_HOLDOUT_TREATMENT (-1)

typedef struct {
  const char *endpoint_id;
  int treatment;          /* 0..n-1, or HERALD_HOLDOUT_TREATMENT */
  const char *channel;
  const char *address;
  int64_t due_ms;
  const char *state;      /* "PENDING" or "SKIPPED" */
  const char *reason;     /* why SKIPPED (HOLDOUT, OPT_OUT, ...), NULL otherwise */
} HeraldOutboxRow;

typedef struct {
  int64_t id;
  int64_t run_id;
  char campaign_id[256];
  int campaign_version;
  char endpoint_id[256];
  int treatment;
  char message_id[40];
  char channel[32];
  char address[512];
  int64_t due_ms;
  int attempts;
} HeraldOutboxClaim;

/* Creates the run unless it exists; *created tells which. Call inside a transaction together
 * with the rows. */
int herald_outbox_run_create(HeraldStore *store, const char *app, const char *campaign_id,
                             int version, int64_t scheduled_ms, int64_t *run_id, int *created,
                             HeraldError *err);
int herald_outbox_add(HeraldStore *store, const char *app, const char *campaign_id,
                      int64_t run_id, int64_t scheduled_ms, const HeraldOutboxRow *row,
                      HeraldError *err);
int herald_outbox_run_set_total(HeraldStore *store, int64_t run_id, int64_t total,
                                HeraldError *err);

/* Claims up to max rows due at now_ms (state PENDING -> CLAIMED, attempts + 1) of the
 * campaigns named in campaigns_json (a JSON array of ids of app; NULL for all). */
int herald_outbox_claim(HeraldStore *store, const char *app, const char *campaigns_json,
                        int64_t now_ms, int max, HeraldOutboxClaim *out, int *count,
                        HeraldError *err);

/* Records the outcome of a claimed row: SENT, FAILED (with reason) or PENDING (retry at
 * due_ms). */
int herald_outbox_report(HeraldStore *store, int64_t id, const char *state, const char *reason,
                         int64_t due_ms, HeraldError *err);

/* Returns claimed-but-unreported rows to PENDING (after a crash); *count says how many. */
int herald_outbox_recover(HeraldStore *store, int64_t *count, HeraldError *err);

/* Earliest due time of a PENDING row of the campaigns named (as for claim); *found = 0 when
 * none. */
int herald_outbox_next_due(HeraldStore *store, const char *app, const char *campaigns_json,
                           int64_t *due_ms, int *found, HeraldError *err);

/* Marks runs whose rows are all settled COMPLETED. */
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
