/* Rate limits kept in the store (table rate_limits), so that every process sharing it, and a
 * process after its restart, counts against the same windows and honours the same pauses. */
#ifndef HERALD_RATELIMIT_STORE_H
#define HERALD_RATELIMIT_STORE_H

#include <stdint.h>

#include "runtime/ratelimit.h"
#include "runtime/store.h"

/* Loads the state stored under (app_id, key) into rl when its generation is not *gen (the one
 * this process last loaded or wrote): *gen becomes the stored generation (0 when nothing is
 * stored) and *loaded (when not NULL) says whether rl took it. A stored state rl cannot take
 * (malformed) leaves rl as it was and returns kHeraldInvalid, *gen set all the same so that the
 * next save replaces it. Call inside the transaction that saves rl afterwards: writers are
 * serialized, so no two processes spend the same room. */
int herald_ratelimit_store_load(HeraldStore *store, const char *app_id, const char *key,
                                HeraldRateLimit *rl, int64_t *gen, int *loaded, HeraldError *err);

/* Writes rl's state under (app_id, key) at now_ms; *gen becomes its new generation. */
int herald_ratelimit_store_save(HeraldStore *store, const char *app_id, const char *key,
                                const HeraldRateLimit *rl, int64_t now_ms, int64_t *gen,
                                HeraldError *err);

#endif
