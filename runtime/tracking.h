/* Engagement tracking: signed tokens for open pixels, click redirects and unsubscribe links,
 * and the HTTP handlers that answer them (GET /t/o/{token}, GET /t/c/{token},
 * GET|POST /t/u/{token}).
 *
 * A token is base64url (no padding) of payload || HMAC-SHA256(key, payload) truncated to 16
 * bytes. The payload holds a version, the kind (open, click, unsubscribe: a token of one kind
 * is refused by the others), the run and treatment, and the application, campaign, endpoint
 * and message ids, plus the target URL for clicks. Nobody without the key can make or alter a
 * token, so the redirect cannot be turned into an open redirect and ids cannot be enumerated.
 * The payload is signed, not encrypted: a recipient can read their own ids in it. */
#ifndef HERALD_TRACKING_H
#define HERALD_TRACKING_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"
#include "runtime/http_server.h"
#include "runtime/store.h"

#define HERALD_TRACKING_ID_MAX 256   /* bytes of each id */
#define HERALD_TRACKING_URL_MAX 2048 /* bytes of a click's target URL */
#define HERALD_TRACKING_KEY_MAX 64

typedef enum {
  kHeraldTrackOpen = 'o',
  kHeraldTrackClick = 'c',
  kHeraldTrackUnsubscribe = 'u',
} HeraldTrackingKind;

typedef struct {
  HeraldTrackingKind kind;
  const char *app;
  const char *campaign;
  int64_t run;
  int32_t treatment;
  const char *endpoint;
  const char *message_id;
  const char *url;  /* clicks only (http or https); NULL otherwise */
} HeraldTrackingToken;

/* A verified token and the storage its strings point into. */
typedef struct {
  HeraldTrackingToken token;
  char strings[4 * (HERALD_TRACKING_ID_MAX + 1) + HERALD_TRACKING_URL_MAX + 1];
} HeraldTrackingParsed;

typedef struct {
  unsigned char bytes[HERALD_TRACKING_KEY_MAX];
  size_t len;
} HeraldTrackingKey;

/* The key: $HERALD_TRACKING_KEY (at least 16 bytes, used as is) when set, else the one in the
 * database, generated (32 random bytes) and stored on first use. Every process on the same
 * database therefore signs and verifies alike. */
int herald_tracking_key_load(HeraldStore *store, HeraldTrackingKey *key, HeraldError *err);
/* A key from a secret string (at least 16 bytes). */
int herald_tracking_key_from_secret(const char *secret, HeraldTrackingKey *key, HeraldError *err);

/* Makes a token (malloc'd, NUL-terminated, URL-safe). Errors name the field. */
int herald_tracking_mint(const HeraldTrackingKey *key, const HeraldTrackingToken *token, char **out,
                         HeraldError *err);
/* Checks the signature and decodes; kind must match. Any defect is kHeraldInvalid. */
int herald_tracking_verify(const HeraldTrackingKey *key, const char *text, size_t len,
                           HeraldTrackingKind kind, HeraldTrackingParsed *out, HeraldError *err);

/* What a handler saw, for the recorder. */
typedef struct {
  HeraldTrackingKind kind;
  const HeraldTrackingToken *token;
  const char *user_agent;  /* may be NULL */
  const char *request_id;
} HeraldTrackingHit;

/* Records a hit (the event store plugs in here); returns 0 or -1 when it could not record.
 * Tracking answers the recipient either way: a failed record is counted, not shown. */
typedef int (*HeraldTrackingRecorder)(void *ctx, const HeraldTrackingHit *hit);

typedef struct {
  uint64_t opens, clicks, unsubscribes;
  uint64_t unsubscribe_pages; /* GETs of the unsubscribe page, which change nothing */
  uint64_t rejected;          /* invalid or forged tokens */
  uint64_t record_failures;
} HeraldTrackingCounts;

typedef struct HeraldTracker HeraldTracker;

HeraldTracker *herald_tracker_new(const HeraldTrackingKey *key);
void herald_tracker_free(HeraldTracker *tracker);
void herald_tracker_set_recorder(HeraldTracker *tracker, HeraldTrackingRecorder fn, void *ctx);
/* Adds the /t/... routes to router; the tracker must outlive the router's use. */
int herald_tracker_routes(HeraldTracker *tracker, HeraldHttpRouter *router, HeraldError *err);
void herald_tracker_counts(const HeraldTracker *tracker, HeraldTrackingCounts *out);

#endif
