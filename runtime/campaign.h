/* Campaign definitions as stored rows: a definition that changes gets a new version. */
#ifndef HERALD_CAMPAIGN_H
#define HERALD_CAMPAIGN_H

#include <stdint.h>

#include "runtime/store.h"

typedef struct {
  int version;
  int64_t version_ms;  /* when this version was first stored */
  int changed;         /* this call created the campaign or a new version */
} HeraldCampaignVersion;

/* Stores the definition (canonical JSON) of campaign id; the version moves on only when the
 * definition differs from the stored one. */
int herald_campaign_define(HeraldStore *store, const char *app, const char *id, const char *name,
                           const char *definition, int64_t now_ms, HeraldCampaignVersion *out,
                           HeraldError *err);

/* The stored definition (canonical JSON) of one version; *out is malloc'ed. */
int herald_campaign_version_definition(HeraldStore *store, const char *app, const char *id,
                                       int version, char **out, HeraldError *err);

/* Sets the lifecycle state (SCHEDULED, EXECUTING, PENDING_NEXT_RUN, COMPLETED, PAUSED, ...). */
int herald_campaign_set_state(HeraldStore *store, const char *app, const char *id,
                              const char *state, HeraldError *err);

/* Moves a campaign to an automatic state (SCHEDULED, EXECUTING, PENDING_NEXT_RUN, COMPLETED,
 * INVALID) unless it is PAUSED or DELETED: those change only by herald_campaign_set_state. */
int herald_campaign_advance_state(HeraldStore *store, const char *app, const char *id,
                                  const char *state, HeraldError *err);

/* Stores campaign id's current definition as new campaign new_id (version 1, SCHEDULED), its
 * Name set to new_id and Herald.CopyOf to id. */
int herald_campaign_copy(HeraldStore *store, const char *app, const char *id, const char *new_id,
                         int64_t now_ms, HeraldError *err);

#endif
