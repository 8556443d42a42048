/* Claimers: the processes that claim outbox rows, registered in the store so that any of them
 * can tell when another has died with rows in flight (see claimer.c). */
#ifndef HERALD_CLAIMER_H
#define HERALD_CLAIMER_H

#include <stdint.h>

#include "runtime/store.h"

/* A live claimer refreshes its heartbeat this often; one whose heartbeat is HERALD_CLAIMER_DEAD_MS
 * old is taken for dead by the others, whatever its pid says. */
#define HERALD_CLAIMER_BEAT_MS 5000
#define HERALD_CLAIMER_DEAD_MS 45000

/* Registers this process as a claimer in store, or refreshes its heartbeat, at now_ms (the
 * system clock). *id (when id is not NULL) is its row. */
int herald_claimer_beat(HeraldStore *store, int64_t now_ms, int64_t *id, HeraldError *err);

/* This process's claimer row in store: 0 when it has none (it never claimed there, or it was
 * taken for dead and its rows were given back). */
int herald_claimer_id(HeraldStore *store, int64_t *id, HeraldError *err);

/* Removes the claimers taken for dead at now_ms (never this process): their claimed rows are
 * then no one's, for herald_outbox_recover to give back. *reaped (when not NULL) counts them.
 * Call inside the transaction that gives the rows back. */
int herald_claimer_reap(HeraldStore *store, int64_t now_ms, int64_t *reaped, HeraldError *err);

#endif
