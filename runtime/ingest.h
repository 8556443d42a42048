/* Engagement ingestion on the HTTP server: Pinpoint's PutEvents, provider status webhooks, and
 * the recorder that stores tracking hits (opens, clicks, unsubscribes) as events.
 *
 * PutEvents: POST /v1/apps/{app}/events with an EventsRequest (reference/pinpoint.md §3.2):
 *   {"BatchItem": {"<endpointId>": {"Endpoint": PublicEndpoint, "Events": {"<eventId>": Event}}}}
 * The Endpoint (when given) is upserted; every event is stored through the events store. The
 * answer is 202 with an EventsResponse
 *   {"Results": {"<endpointId>": {"EndpointItemResponse": {"Message", "StatusCode"},
 *                                 "EventsItemResponse": {"<eventId>": {"Message", "StatusCode"}}}}}
 * where a bad item (an endpoint that fails validation, an event without a Timestamp, an attribute
 * value over 200 characters, ...) gets 400 and its message, and the rest of the batch is stored.
 * The request as a whole is refused (4xx, {"Message", "RequestID"}) when its JSON is malformed
 * (a key given twice in one object included: the message names it), it has no BatchItem object, it holds more than 100 events, or the application is unknown
 * (404). The 4 MB body cap is the server's (413).
 *
 * Status webhooks: POST /v1/apps/{app}/webhooks/status with one notification
 *   {"MessageId": "<the outbox or direct message id>" (required),
 *    "Type": "DELIVERY" | "BOUNCE" | "COMPLAINT" | "SMS" (required),
 *    "BounceType": "HARD" | "SOFT" (BOUNCE only, required there),
 *    "Status": "SUCCESS" | "FAILURE" | "OPTOUT" (SMS only, required there),
 *    "Timestamp": ISO-8601 (default: now), "Reason": string (optional, kept 200 characters)}
 * becomes the event _email.delivered, _email.hardbounce, _email.softbounce, _email.complaint,
 * _SMS.SUCCESS, _SMS.FAILURE or _SMS.OPTOUT of the message's endpoint, with the campaign
 * attributes below. A direct message (herald.send, recorded 30 days in direct_messages: see
 * runtime/outbox.h) has no campaign: its events carry message_id alone; one sent to an address
 * the request named goes to every endpoint of the app with that channel and address, as
 * Pinpoint's opt-out is the address's, and its SMS OPTOUT or COMPLAINT also puts the address on
 * the app's opt-out list (address_optouts), which direct messages are refused for, whether or
 * not an endpoint has it (another notification for an address no endpoint has: 404, nothing
 * recorded). Its EventId is "<MessageId>:<event type>", so a provider that retries a
 * notification records it once, and makes its endpoint update once: a retry after the endpoint
 * was written again (a corrected address, OptOut NONE) leaves it alone. A receipt is of the
 * address the message went to: it changes an endpoint only while the endpoint still has that
 * address (its event is recorded all the same). Endpoint updates:
 *   - hard bounce: EndpointStatus INACTIVE (the address does not exist; campaigns skip the
 *     endpoint until it is written again, e.g. with a corrected address, which makes it ACTIVE);
 *   - complaint and SMS OPTOUT: OptOut ALL (the recipient asked for no more messages; only an
 *     explicit OptOut NONE undoes it);
 *   - soft bounce, delivery, SMS SUCCESS/FAILURE: nothing.
 * The answer is 202 {"EventType", "EndpointId", "Message": "Accepted"}, with
 * "OptOut": {"ChannelType", "Address"} when the address was put on the opt-out list (and no
 * EndpointId when no endpoint has it); an unknown message id is 404, a bad field 400 naming it.
 *
 * Every engagement event carries the attributes campaign_id, treatment_id ("0", "1", ...),
 * campaign_activity_id (the run id) and message_id; clicks also url (the link, cut to the
 * events store's 200-character attribute limit). */
#ifndef HERALD_INGEST_H
#define HERALD_INGEST_H

#include <jansson.h>
#include <stdint.h>

#include "runtime/error.h"
#include "runtime/http_server.h"
#include "runtime/store.h"
#include "runtime/tracking.h"

#define HERALD_PUT_EVENTS_MAX 100 /* events per PutEvents request (Pinpoint's limit) */

typedef struct HeraldIngest HeraldIngest;

/* Where the ingest finds the store at each request (NULL and err set when it cannot be had):
 * the process may switch databases while a server runs, so no store pointer is kept. */
typedef HeraldStore *(*HeraldIngestStoreFn)(void *arg, HeraldError *err);

HeraldIngest *herald_ingest_new(HeraldIngestStoreFn store, void *arg);
void herald_ingest_free(HeraldIngest *ingest);
/* The store the ingest writes to now (NULL and err set when it cannot be had). */
HeraldStore *herald_ingest_store(HeraldIngest *ingest, HeraldError *err);
/* Adds POST /v1/apps/{app}/events and POST /v1/apps/{app}/webhooks/status. */
int herald_ingest_routes(HeraldIngest *ingest, HeraldHttpRouter *router, HeraldError *err);

/* PutEvents without HTTP: request is an EventsRequest; *response the EventsResponse. Fails
 * (kHeraldInvalid, kHeraldLimit, kHeraldNotFound for an unknown app) only for what refuses the
 * whole request; bad items are answered in *response. */
int herald_ingest_put_events(HeraldStore *store, const char *app, json_t *request,
                             json_t **response, HeraldError *err);

/* A status notification (shape above) of app. event_type_out (may be NULL, 32 bytes) and
 * endpoint_out (may be NULL, HERALD_TRACKING_ID_MAX + 1 bytes) receive the event recorded and
 * its endpoint ("" when the notification only put an address on the opt-out list).
 * kHeraldNotFound for an unknown message id. */
int herald_ingest_status(HeraldStore *store, const char *app, json_t *notification,
                         char *event_type_out, char *endpoint_out, HeraldError *err);

/* A recipient refused for good when outbox row outbox_id was handed over (an SMTP 550, 551 or
 * 553 at RCPT), recorded as a BOUNCE/HARD notification of its message is, in the caller's
 * transaction: _email.hardbounce of the message's endpoint, stamped now, with the campaign
 * attributes and the reason (may be NULL), and the endpoint INACTIVE. An endpoint deleted
 * meanwhile gets nothing (kHeraldOk); kHeraldNotFound for an unknown row. */
int herald_ingest_hard_bounce(HeraldStore *store, int64_t outbox_id, const char *reason,
                              HeraldError *err);

/* A HeraldTrackingRecorder (ctx: the HeraldIngest): records _email.open, _email.click or
 * _email.unsubscribe (which also sets the endpoint's OptOut to ALL) with the token's ids, at the
 * time of the hit. Each hit is written at once, unless herald_ingest_queue_hits was called:
 * then hits wait for herald_ingest_flush, which writes them all in one transaction (group
 * commit), or herald_ingest_end_iteration, which the server calls once per loop iteration
 * before the iteration's answers are written (herald_http_server_set_commit): a click's
 * redirect leaves only once the click is durable (stored, or journaled), and clicks do not
 * pay a commit each. A hit that cannot be stored (its endpoint was deleted, an id longer than
 * an event attribute may be, a failing store) is reported on stderr and counted; it never
 * costs the other hits of its batch. */
int herald_ingest_record_hit(void *ctx, const HeraldTrackingHit *hit);

#define HERALD_INGEST_FLUSH_MAX 4096 /* queued hits that force a write before the flush is due */

/* Queues hits until herald_ingest_flush or herald_ingest_end_iteration from now on. */
void herald_ingest_queue_hits(HeraldIngest *ingest);
/* Writes the queued hits to the store now (herald_ingest_free does too). */
void herald_ingest_flush(HeraldIngest *ingest);

/* Under load, an iteration's hits go to the journal (runtime/hit_journal.h) before they are
 * answered, and to the store in larger transactions: when min_hits or more arrived in one
 * loop iteration. They are written to the store once fold_hits are queued, or fold_ms after the
 * first of them, and when the server stops. A quieter iteration writes its hits to the store
 * at once, as without a journal, so they can be read as soon as they are answered. */
typedef struct {
  int min_hits;      /* default 16 */
  int fold_hits;     /* default 1024 */
  uint64_t fold_ms;  /* default 50 */
} HeraldJournalOptions;

/* Opens `<database>-hits` for this ingest, first storing what a server that died left in it.
 * Fails (and the ingest goes on without a journal) for a database that is not a file, or
 * when another live server holds the journal (kHeraldLimit). */
int herald_ingest_open_journal(HeraldIngest *ingest, uv_loop_t *loop,
                               const HeraldJournalOptions *options, HeraldError *err);
/* Stores the journaled hits and removes the journal (herald_ingest_free does too, but the
 * server's stop should: the process's last loop run closes the handles still open). */
void herald_ingest_close_journal(HeraldIngest *ingest);
/* The server's commit, once per loop iteration: makes the iteration's hits durable (in the
 * journal or the store) before their answers are written. */
void herald_ingest_end_iteration(HeraldIngest *ingest);

typedef struct {
  uint64_t stored;  /* hits written as events */
  uint64_t failed;  /* hits that could not be written */
} HeraldIngestCounts;

void herald_ingest_counts(const HeraldIngest *ingest, HeraldIngestCounts *out);

#endif
