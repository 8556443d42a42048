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

/* Sets the lifecycle state (SCHEDULED, EXECUTING, PENDING_NEXT_RUN, COMPLETED, PAUSED, ...).
 * pause_reason (may be NULL) is kept with a PAUSED state; any other state clears it. */
int herald_campaign_set_state(HeraldStore *store, const char *app, const char *id,
                              const char *state, const char *pause_reason, HeraldError *err);

/* Moves a campaign to an automatic state (SCHEDULED, EXECUTING, PENDING_NEXT_RUN, COMPLETED,
 * INVALID) unless it is PAUSED or DELETED: those change only by herald_campaign_set_state. */
int herald_campaign_advance_state(HeraldStore *store, const char *app, const char *id,
                                  const char *state, HeraldError *err);

/* Records where campaign id came from as its definition loads: source (the definition file,
 * or NULL), audience (its segment as JSON, NULL when not storable) and lua (the Lua functions
 * it depends on, e.g. "hook, segment filter", or NULL). A campaign that loads clears its
 * error and leaves INVALID (for PENDING_NEXT_RUN when it has runs, else SCHEDULED; the
 * scheduler refines that). */
int herald_campaign_set_origin(HeraldStore *store, const char *app, const char *id,
                               const char *source, const char *audience, const char *lua,
                               HeraldError *err);

/* Campaign id (when id is not NULL) or every campaign of definition file source (when source
 * is not NULL) becomes INVALID with error (file:line), unless DELETED; a PAUSED one stays
 * PAUSED with the error recorded. While the error stands no automatic state replaces INVALID
 * and delivery holds its pending rows. *count: how many campaigns. */
int herald_campaign_invalidate(HeraldStore *store, const char *app, const char *id,
                               const char *source, const char *error, int *count,
                               HeraldError *err);

/* Stores new campaign new_id (version 1, SCHEDULED) with definition (id's, its Name set to
 * new_id and Herald.CopyOf to id, as canonical JSON) and id's audience: a stored copy, which
 * runs in any later `herald run` on its own. Refused (kHeraldInvalid) when id depends on Lua
 * functions or its audience is not stored. */
int herald_campaign_copy(HeraldStore *store, const char *app, const char *id, const char *new_id,
                         const char *definition, int64_t now_ms, HeraldError *err);

#endif
