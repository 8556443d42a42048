/* Email feedback that arrives as mail: delivery status notifications (RFC 3464, a
 * multipart/report with report-type=delivery-status) and feedback-loop complaints (RFC 5965 ARF,
 * report-type=feedback-report), parsed with GMime.
 *
 * A report is matched to the message herald sent through the returned original (its
 * message/rfc822 or text/rfc822-headers part): the X-Herald-Message-Id header the email channel
 * adds (kept by relays that rewrite Message-ID), else the local part of the Message-ID, which
 * is the outbox message id (runtime/smtp_message.c encodes it; this module decodes it).
 *
 * What a report becomes (recorded through herald_ingest_status, so the event, its campaign
 * attributes and the endpoint update are the status webhook's):
 *   - delivery-status, a recipient with Action failed/delayed and Status 5.x.x: hard bounce
 *     (_email.hardbounce, endpoint INACTIVE); Status 4.x.x: soft bounce (_email.softbounce);
 *     Action delivered with 2.x.x: _email.delivered; relayed/expanded only: nothing;
 *   - feedback-report with Feedback-Type abuse, fraud, virus or other: complaint
 *     (_email.complaint, OptOut ALL); not-spam and auth-failure: nothing.
 *
 * HTTP: POST /v1/apps/{app}/webhooks/mail with the whole mail (message/rfc822) as the body:
 *   202 {"EventType", "EndpointId", "MessageId", "Message": "Accepted"}, recorded;
 *   200 {"Message": "Ignored: ..."}, a report that asks for nothing;
 *   400 not a report (the reason names the part or field); 404 no message matches;
 *   503 with Retry-After: 1, the store busy (another process writing past the busy timeout):
 *   nothing recorded, the same mail may be posted again. */
#ifndef HERALD_FEEDBACK_H
#define HERALD_FEEDBACK_H

#include <stddef.h>

#include "runtime/error.h"
#include "runtime/http_server.h"
#include "runtime/ingest.h"
#include "runtime/store.h"

#define HERALD_FEEDBACK_ID_MAX 256 /* bytes of the decoded original message id */

typedef enum {
  kHeraldFeedbackNone = 0,  /* a well-formed report that records nothing (reason says why) */
  kHeraldFeedbackHardBounce,
  kHeraldFeedbackSoftBounce,
  kHeraldFeedbackComplaint,
  kHeraldFeedbackDelivered,
} HeraldFeedbackKind;

typedef struct {
  HeraldFeedbackKind kind;
  char message_id[HERALD_FEEDBACK_ID_MAX + 1]; /* the outbox message id; "" when none found */
  char matched_by[24];       /* "X-Herald-Message-Id", "Message-ID" or "" */
  char status[32];           /* DSN Status, e.g. "5.1.1" */
  char action[32];           /* DSN Action */
  char recipient[256];       /* DSN Final-Recipient or ARF Original-Rcpt-To */
  char feedback_type[32];    /* ARF Feedback-Type */
  char reason[512];          /* a one-line summary for the event and the operator */
} HeraldFeedbackReport;

/* Parses one mail. kHeraldInvalid when it is not a delivery-status or feedback report (err
 * names what is missing or wrong); otherwise kHeraldOk with *out filled. */
int herald_feedback_parse(const char *mail, size_t len, HeraldFeedbackReport *out, HeraldError *err);

/* Records a parsed report of app (kind other than None). kHeraldNotFound when the report names
 * no original message or no sent message matches. event_type_out (32 bytes) and endpoint_out
 * (HERALD_TRACKING_ID_MAX + 1 bytes) may be NULL. */
int herald_feedback_record(HeraldStore *store, const char *app, const HeraldFeedbackReport *report,
                           char *event_type_out, char *endpoint_out, HeraldError *err);

/* Adds POST /v1/apps/{app}/webhooks/mail, served with the ingest's store. */
int herald_feedback_routes(HeraldHttpRouter *router, HeraldIngest *ingest, HeraldError *err);

#endif
