/* Delivery-side outbox bookkeeping the outbox module does not cover: a claimed row that is
 * only waiting for a rate-limit slot goes back to PENDING at that slot without the claim
 * counting as an attempt, so throttling never uses up a message's retry bound. */
#ifndef HERALD_DELIVER_H
#define HERALD_DELIVER_H

#include <stdint.h>

#include "runtime/store.h"

/* Returns row id, claimed by claimer (herald_claimer_id), to PENDING due at due_ms and takes
 * back the attempt its claim counted; a row no longer claimed by it is left alone. Call inside
 * a transaction for batches. */
int herald_deliver_defer(HeraldStore *store, int64_t claimer, int64_t id, int64_t due_ms,
                         HeraldError *err);

#endif
