/* Endpoints in Pinpoint's model (reference/pinpoint.md §3.1): validation, upsert with Pinpoint's
 * side effects (duplicate address, 15 endpoints per user), and reads in the EndpointResponse
 * shape. Requests and responses are jansson values so the Lua API, imports and the later REST
 * API share one code path.
 *
 * Write semantics (UpdateEndpoint):
 * - A field present in the request replaces the stored one; an absent field is kept. JSON null
 *   clears an optional field. Demographic, Location and User merge field by field.
 * - Attributes, Metrics and User.UserAttributes merge key by key: a key in the request replaces
 *   that key's values, keys absent from the request are kept, a key set to null is removed.
 * - EndpointStatus becomes ACTIVE on every write unless the request names a status.
 * - EffectiveDate is the request's or now; CreationDate and CohortId are set once at creation.
 * - Id, ApplicationId, CohortId and CreationDate may appear in a request (a response fed back)
 *   and are not written; any other unknown field is refused. */
#ifndef HERALD_ENDPOINT_H
#define HERALD_ENDPOINT_H

#include <jansson.h>

#include "runtime/store.h"

#define HERALD_ENDPOINT_ID_MAX 128
#define HERALD_ENDPOINT_ADDRESS_MAX 4096  /* a push token's limit; other channels' are shorter */
#define HERALD_ENDPOINTS_PER_USER 15
#define HERALD_ATTRIBUTE_KEYS_PER_APP 250
#define HERALD_ENDPOINT_MAX_BYTES (15 * 1024)

/* Validation that needs no database, split out so an import can run it on its parser thread.
 * A checker caches the time zones it has found; one checker per thread. Zero-initialise it. */
typedef struct HeraldEndpointSeen HeraldEndpointSeen;
typedef struct {
  json_t *zones;
  HeraldEndpointSeen *seen; /* addresses and user ids of the rows herald_endpoint_row_new saw */
} HeraldEndpointChecker;

/* Validates request and normalises it in place (dates, country codes, a lone attribute string
 * becomes a list). Errors start with the field path. */
int herald_endpoint_check(HeraldEndpointChecker *c, json_t *request, HeraldError *err);
void herald_endpoint_checker_clear(HeraldEndpointChecker *c);

/* Writes many endpoints of one application inside the caller's transaction, caching what the
 * rules consult on every row (the application's attribute keys, known time zones). */
typedef struct HeraldEndpointWriter HeraldEndpointWriter;

/* Fails with kHeraldNotFound for an unknown application. */
int herald_endpoint_writer_open(HeraldStore *store, const char *app, HeraldEndpointWriter **out,
                                HeraldError *err);
/* Validates request (an EndpointRequest plus "Id"; an id is generated when absent), applies
 * Pinpoint's rules and upserts. request is normalised in place (dates, a generated Id).
 * The endpoint's id is copied to id_out (HERALD_ENDPOINT_ID_MAX + 1 bytes) when not NULL.
 * Error messages start with the field path ("Address: ..."). Must run inside a transaction;
 * after a failure the caller rolls back what the put wrote (to a savepoint, or the whole
 * transaction), as the writer then forgets what the put taught it. */
int herald_endpoint_writer_put(HeraldEndpointWriter *w, json_t *request, char *id_out,
                               HeraldError *err);
/* The column values of a request herald_endpoint_check has accepted (its attribute maps
 * already serialised), computed where the check runs so that an import's parser thread does
 * this work instead of its writer thread. The row points into request, which must outlive it
 * and not change in between (the writer may only add a generated Id).
 * The checker also counts the addresses and user ids of the rows it prepares: given to one
 * writer in the same order, from the writer's opening, these counts let a first import skip
 * the duplicate-address and per-user lookups on the writer's thread. */
typedef struct HeraldEndpointRow HeraldEndpointRow;
int herald_endpoint_row_new(HeraldEndpointChecker *c, json_t *request, HeraldEndpointRow **out,
                            HeraldError *err);
void herald_endpoint_row_free(HeraldEndpointRow *row);

/* herald_endpoint_writer_put for a request herald_endpoint_check has accepted; row is its
 * herald_endpoint_row_new or NULL. Rows from a checker must all come from that one checker. */
int herald_endpoint_writer_put_checked(HeraldEndpointWriter *w, json_t *request,
                                       const HeraldEndpointRow *row, char *id_out,
                                       HeraldError *err);
void herald_endpoint_writer_close(HeraldEndpointWriter *w);

/* One write in its own transaction; *out (when out is not NULL) is the stored EndpointResponse. */
int herald_endpoint_put(HeraldStore *store, const char *app, json_t *request, json_t **out,
                        HeraldError *err);
/* kHeraldNotFound when absent. */
int herald_endpoint_get(HeraldStore *store, const char *app, const char *id, json_t **out,
                        HeraldError *err);
/* Deletes and returns the endpoint as it was (Pinpoint's DeleteEndpoint answer). */
int herald_endpoint_delete(HeraldStore *store, const char *app, const char *id, json_t **out,
                           HeraldError *err);
/* All endpoints of a user, an array ordered by EffectiveDate. */
int herald_endpoint_by_user(HeraldStore *store, const char *app, const char *user_id,
                            json_t **out, HeraldError *err);
/* Up to limit endpoints of app after storage position `after`, in storage order; *last is the
 * position to continue from. Memory stays bounded however many endpoints there are. */
int herald_endpoint_scan(HeraldStore *store, const char *app, long long after, int limit,
                         json_t **out, long long *last, HeraldError *err);

int herald_endpoint_count(HeraldStore *store, const char *app, long long *out, HeraldError *err);

/* Stable cohort of an endpoint: a hash of application and id, 0-99. */
int herald_endpoint_cohort(const char *app, const char *id);

#endif
