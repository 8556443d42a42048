/* Events in Pinpoint's model (reference/pinpoint.md §3.2), one row per (application, endpoint,
 * event id): putting the same event again changes nothing. Each new event moves its endpoint's
 * last_activity forward.
 *
 * An event object: {EndpointId, EventId, EventType (required), Timestamp (required, ISO-8601),
 * Attributes: {name: string}, Metrics: {name: number}, Session: {Id, StartTimestamp,
 * StopTimestamp, Duration}, AppPackageName, AppTitle, AppVersionCode, ClientSdkVersion,
 * SdkName}. Without an EventId the id is a hash of the endpoint and the event's content, so a
 * replayed file stays idempotent. */
#ifndef HERALD_EVENT_H
#define HERALD_EVENT_H

#include <jansson.h>

#include "runtime/store.h"

#define HERALD_EVENT_KEYS_MAX 40 /* attribute + metric keys per event */
#define HERALD_EVENT_VALUE_MAX 200

/* Stores one event of endpoint_id (NULL: the event's own EndpointId field). The endpoint must
 * exist. *inserted (may be NULL) is 1 for a new event, 0 for a repeat. event_id_out (may be
 * NULL, 129 bytes) receives the event id. Runs in a (nested) transaction. */
int herald_event_put(HeraldStore *store, const char *app, const char *endpoint_id, json_t *event,
                     int *inserted, char *event_id_out, HeraldError *err);

/* herald_event_put for a batch writer that has made sure, in the same transaction, that the
 * endpoint exists, and moves its last activity itself once per batch with herald_event_touch
 * (one endpoint update per batch instead of one per event). event is normalised in place. */
int herald_event_put_known(HeraldStore *store, const char *app, const char *endpoint_id,
                           json_t *event, int *inserted, HeraldError *err);

/* One event as the events table keeps it. */
typedef struct {
  const char *app, *endpoint_id, *event_id, *event_type;
  const char *timestamp;   /* normalised ISO-8601 (herald_datetime_format) */
  const char *attributes;  /* JSON object texts, or NULL for none */
  const char *metrics;
  const char *session;     /* JSON object text or NULL */
  const char *client;
  const char *arrival;     /* normalised ISO-8601 */
} HeraldEventRow;

/* Inserts one row as it is (a repeat of its event id changes nothing; *inserted, may be NULL,
 * says which): the path under herald_event_put, and the fast path of a writer that builds its
 * own events (tracking hits) without a JSON object to validate. The caller guarantees what
 * herald_event_put would check: the fields within the limits above, the endpoint existing,
 * and it moves the endpoint's last activity itself (herald_event_touch). */
int herald_event_insert(HeraldStore *store, const HeraldEventRow *row, int *inserted,
                        HeraldError *err);

/* Moves the endpoint's last_activity forward to timestamp (normalised ISO-8601) when later. */
int herald_event_touch(HeraldStore *store, const char *app, const char *endpoint_id,
                       const char *timestamp, HeraldError *err);

/* Stores an array of events (each with EndpointId) in one transaction: all or none. Errors
 * name the item ("[3].Timestamp: ..."). *inserted counts the new events. */
int herald_event_put_batch(HeraldStore *store, const char *app, json_t *events, long long *inserted,
                           HeraldError *err);

/* Events of an endpoint, newest first; since (ISO-8601, inclusive), type and limit (<= 0: no
 * limit) are optional. */
int herald_event_for_endpoint(HeraldStore *store, const char *app, const char *endpoint_id,
                              const char *since, const char *type, long long limit, json_t **out,
                              HeraldError *err);

#endif
