#include "runtime/ingest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/clock.h"
#include "runtime/datetime.h"
#include "runtime/endpoint.h"
#include "runtime/event.h"
#include "runtime/hit_journal.h"
#include "runtime/outbox.h"
#include "runtime/utf8.h"

struct HeraldIngest {
  HeraldIngestStoreFn store;
  void *store_arg;
  int queueing;  /* hits wait for herald_ingest_flush */
  struct QueuedHit *queue;
  struct QueuedHit **order; /* the flush's view of the queue sorted by endpoint */
  size_t len, cap;
  HeraldIngestCounts counts;
  /* the journal (herald_ingest_open_journal): queue[0 .. journaled) is in it */
  HeraldJournal *journal;
  size_t journaled;
  int journal_torn;        /* a write failed part way: the next store of the queue clears it */
  HeraldBuf frames;        /* an iteration's records, written at once */
  uv_timer_t *fold_timer;  /* writes journaled hits to the store when traffic stops */
  HeraldJournalOptions options;
  /* The store refused a whole write (busy past its timeout, say): the queue is kept and tried
   * again from hold_until_ms on, rather than losing hits already answered. */
  int64_t hold_until_ms;
  int holding;
};

/* How long hits the store refused wait before the next try, and how many are kept at most
 * (past that, a store that keeps refusing costs them, reported). */
enum { kHoldMs = 1000, kKeepMax = 100000 };

static void flush(HeraldIngest *in, int final);
static int journal_append(HeraldIngest *in);
static void on_fold_timer(uv_timer_t *t);

HeraldIngest *herald_ingest_new(HeraldIngestStoreFn store, void *arg) {
  HeraldIngest *in = calloc(1, sizeof *in);
  if (in != NULL) {
    in->store = store;
    in->store_arg = arg;
  }
  return in;
}

void herald_ingest_free(HeraldIngest *in) {
  if (in == NULL) return;
  herald_ingest_close_journal(in);
  flush(in, 1);
  free(in->queue);
  free(in->order);
  free(in);
}

HeraldStore *herald_ingest_store(HeraldIngest *in, HeraldError *err) {
  return in->store(in->store_arg, err);
}

/* The length in bytes of the prefix of s that holds at most max UTF-8 characters. */
static size_t prefix_bytes(const char *s, size_t max) {
  size_t n = 0, i = 0;
  for (; s[i]; i++) {
    if (((unsigned char)s[i] & 0xC0) != 0x80) {
      if (n == max) break;
      n++;
    }
  }
  return i;
}

/* The prefix of s that holds at most max UTF-8 characters, as a new JSON string. */
static json_t *cut_string(const char *s, size_t max) { return json_stringn(s, prefix_bytes(s, max)); }

static json_t *item_status(int status, const char *message) {
  return json_pack("{s:s, s:i}", "Message", message, "StatusCode", status);
}

static int endpoint_exists(HeraldStore *store, const char *app, const char *id, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(store, "SELECT 1 FROM endpoints WHERE app_id = ?1 AND id = ?2", err);
  if (st == NULL) return -1;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) return 1;
  if (rc == SQLITE_DONE) return 0;
  herald_store_fail(store, err, "looking up an endpoint");
  return -1;
}

/* Upserts the item's Endpoint (or checks that the endpoint exists when none is given) inside a
 * savepoint, so a refused endpoint leaves nothing behind. Returns 0 when the events may be
 * stored, 1 when the item is refused (*reason says why), -1 on a store failure. */
static int put_item_endpoint(HeraldStore *store, HeraldEndpointWriter *w, const char *app,
                             const char *endpoint_id, json_t *item, char *reason, size_t cap,
                             HeraldError *err) {
  json_t *ep = json_object_get(item, "Endpoint");
  if (ep == NULL) {
    int found = endpoint_exists(store, app, endpoint_id, err);
    if (found < 0) return -1;
    if (!found) {
      snprintf(reason, cap, "no endpoint '%s' in application '%s'; send its Endpoint to create it",
               endpoint_id, app);
      return 1;
    }
    return 0;
  }
  if (!json_is_object(ep)) {
    snprintf(reason, cap, "Endpoint: expected an object");
    return 1;
  }
  /* the request is ours (parsed for this call): the writer may normalise it in place */
  json_t *own = json_object_get(ep, "Id");
  if (own != NULL && !(json_is_string(own) && strcmp(json_string_value(own), endpoint_id) == 0)) {
    snprintf(reason, cap, "Endpoint.Id: differs from the batch item's endpoint id '%s'", endpoint_id);
    return 1;
  }
  json_object_set_new(ep, "Id", json_string(endpoint_id));
  int mark;
  if (herald_store_savepoint(store, &mark, err) != kHeraldOk) return -1;
  HeraldError e = {0};
  int rc = herald_endpoint_writer_put(w, ep, NULL, &e);
  if (rc == kHeraldOk) return herald_store_release(store, err) == kHeraldOk ? 0 : -1;
  herald_store_rollback_to(store, mark);
  if (rc == kHeraldInvalid || rc == kHeraldLimit || rc == kHeraldNotFound) {
    snprintf(reason, cap, "Endpoint.%s", e.msg);
    return 1;
  }
  *err = e;
  return -1;
}

/* Counts the events of a request, refusing a malformed one as a whole. */
static int count_events(json_t *batch, size_t *count, HeraldError *err) {
  *count = 0;
  const char *id;
  json_t *item;
  json_object_foreach(batch, id, item) {
    json_t *events = json_is_object(item) ? json_object_get(item, "Events") : NULL;
    if (json_is_object(events)) *count += json_object_size(events);
  }
  if (*count > HERALD_PUT_EVENTS_MAX)
    return herald_error_set(err, kHeraldLimit, "BatchItem: %zu events; at most %d per request",
                            *count, HERALD_PUT_EVENTS_MAX);
  return kHeraldOk;
}

/* Stores the events of one batch item (its endpoint exists: put_item_endpoint saw to it); each
 * bad event is answered alone. The endpoint's last activity moves once, to the latest event. */
static int put_item_events(HeraldStore *store, const char *app, const char *endpoint_id,
                           json_t *events, const char *refused, json_t *answers, json_t *accepted,
                           HeraldError *err) {
  char latest[HERALD_DATETIME_LEN] = "";
  const char *event_id;
  json_t *ev;
  json_object_foreach(events, event_id, ev) {
    if (refused != NULL) {
      char msg[1200];
      snprintf(msg, sizeof msg, "not stored: the endpoint was refused (%s)", refused);
      json_object_set_new(answers, event_id, item_status(400, msg));
      continue;
    }
    if (!json_is_object(ev)) {
      json_object_set_new(answers, event_id, item_status(400, "expected an event object"));
      continue;
    }
    json_t *own = json_object_get(ev, "EventId");
    if (own != NULL && !(json_is_string(own) && strcmp(json_string_value(own), event_id) == 0)) {
      json_object_set_new(answers, event_id,
                          item_status(400, "EventId: differs from the event's key in Events"));
      continue;
    }
    if (own == NULL) json_object_set_new(ev, "EventId", json_string(event_id));
    HeraldError e = {0};
    int rc = herald_event_put_known(store, app, endpoint_id, ev, NULL, &e);
    if (rc == kHeraldOk) {
      json_object_set(answers, event_id, accepted);
      /* the store normalised Timestamp (UTC, fixed width), so text order is time order */
      const char *ts = json_string_value(json_object_get(ev, "Timestamp"));
      if (latest[0] == '\0' || strcmp(ts, latest) > 0) snprintf(latest, HERALD_DATETIME_LEN, "%s", ts);
    } else if (rc == kHeraldInvalid || rc == kHeraldLimit) {
      /* validation runs before the event store writes anything, so nothing is to be undone */
      json_object_set_new(answers, event_id, item_status(400, e.msg));
    } else {
      *err = e;
      return rc;
    }
  }
  return latest[0] ? herald_event_touch(store, app, endpoint_id, latest, err) : kHeraldOk;
}

int herald_ingest_put_events(HeraldStore *store, const char *app, json_t *request,
                             json_t **response, HeraldError *err) {
  *response = NULL;
  if (!json_is_object(request))
    return herald_error_set(err, kHeraldInvalid, "expected an EventsRequest object {\"BatchItem\": {...}}");
  const char *key;
  json_t *v;
  json_object_foreach(request, key, v) {
    if (strcmp(key, "BatchItem") != 0)
      return herald_error_set(err, kHeraldInvalid, "%s: unknown field (an EventsRequest has BatchItem)", key);
  }
  json_t *batch = json_object_get(request, "BatchItem");
  if (!json_is_object(batch))
    return herald_error_set(err, kHeraldInvalid, "BatchItem: required, an object of endpoint id -> "
                            "{Endpoint, Events}");
  size_t count;
  if (count_events(batch, &count, err) != kHeraldOk) return err->code;
  if (herald_store_app_exists(store, app, err) != kHeraldOk) return err->code;

  HeraldEndpointWriter *w = NULL;
  if (herald_store_begin(store, err) != kHeraldOk) return err->code;
  if (herald_endpoint_writer_open(store, app, &w, err) != kHeraldOk) {
    herald_store_rollback(store);
    return err->code;
  }
  json_t *results = json_object();
  /* one answer object shared by every accepted event: a batch is mostly accepted events */
  json_t *accepted = item_status(202, "Accepted");
  const char *endpoint_id;
  json_t *item;
  int rc = kHeraldOk;
  json_object_foreach(batch, endpoint_id, item) {
    json_t *answer = json_object();
    json_object_set_new(results, endpoint_id, answer);
    char reason[1100] = "";
    int refused;
    if (!json_is_object(item)) {
      snprintf(reason, sizeof reason, "expected an object {Endpoint, Events}");
      refused = 1;
    } else if (*endpoint_id == '\0' || strlen(endpoint_id) > HERALD_ENDPOINT_ID_MAX) {
      snprintf(reason, sizeof reason, "the endpoint id must have 1 to %d bytes", HERALD_ENDPOINT_ID_MAX);
      refused = 1;
    } else {
      refused = 0;
      json_object_foreach(item, key, v) {
        if (strcmp(key, "Endpoint") != 0 && strcmp(key, "Events") != 0) {
          snprintf(reason, sizeof reason, "%s: unknown field (a batch item has Endpoint and Events)", key);
          refused = 1;
        }
      }
      /* checked before the Endpoint is written, so that the answer never calls a stored
       * endpoint refused: the item is refused whole */
      json_t *events = json_object_get(item, "Events");
      if (!refused && events != NULL && !json_is_object(events)) {
        snprintf(reason, sizeof reason, "Events: expected an object of event id -> Event; "
                 "nothing of this item is stored");
        refused = 1;
      }
      if (!refused)
        refused = put_item_endpoint(store, w, app, endpoint_id, item, reason, sizeof reason, err);
      if (refused < 0) {
        rc = err->code;
        break;
      }
    }
    json_object_set_new(answer, "EndpointItemResponse",
                        refused ? item_status(400, reason) : item_status(202, "Accepted"));
    json_t *events = json_is_object(item) ? json_object_get(item, "Events") : NULL;
    if (events == NULL) continue;
    json_t *answers = json_object();
    json_object_set_new(answer, "EventsItemResponse", answers);
    if (!json_is_object(events)) continue; /* the item was refused for it */
    rc = put_item_events(store, app, endpoint_id, events, refused ? reason : NULL, answers, accepted,
                         err);
    if (rc != kHeraldOk) break;
  }
  herald_endpoint_writer_close(w);
  json_decref(accepted);
  if (rc != kHeraldOk) {
    herald_store_rollback(store);
    json_decref(results);
    return rc;
  }
  if (herald_store_commit(store, err) != kHeraldOk) {
    json_decref(results);
    return err->code;
  }
  *response = json_pack("{s:o}", "Results", results);
  return *response ? kHeraldOk : herald_error_set(err, kHeraldNoMemory, "out of memory");
}

/* Engagement events ------------------------------------------------------------------------- */

typedef struct {
  const char *campaign;
  long long run;
  int treatment;
  const char *message_id;
} Origin;

/* Stores event_type for endpoint with the campaign attributes; extra (may be NULL) adds more.
 * *inserted is 0 when the event id was stored before (a repeat). A provider's receipt
 * (delivered, bounced, complained) is not the endpoint's own doing, so it does not move the
 * endpoint's last activity, which Recency segments read. */
static int put_engagement(HeraldStore *store, const char *app, const char *endpoint,
                          const char *event_type, const char *event_id, const char *timestamp,
                          const Origin *o, json_t *extra, int *inserted, HeraldError *err) {
  *inserted = 0;
  int found = endpoint_exists(store, app, endpoint, err);
  if (found < 0) return err->code ? err->code : kHeraldStore;
  if (found == 0)
    return herald_error_set(err, kHeraldNotFound, "EndpointId: no endpoint '%s' in application '%s'",
                            endpoint, app);
  char run[24], treatment[16];
  snprintf(run, sizeof run, "%lld", o->run);
  snprintf(treatment, sizeof treatment, "%d", o->treatment);
  /* a direct message (no campaign) is known by its message id alone */
  json_t *attrs = o->campaign == NULL
                      ? json_pack("{s:s}", "message_id", o->message_id)
                      : json_pack("{s:s, s:s, s:s, s:s}", "campaign_id", o->campaign, "treatment_id",
                                  treatment, "campaign_activity_id", run, "message_id", o->message_id);
  if (attrs == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  if (extra) json_object_update(attrs, extra);
  json_t *ev = json_pack("{s:s, s:s, s:s, s:o}", "EventId", event_id, "EventType", event_type,
                         "Timestamp", timestamp, "Attributes", attrs);
  if (ev == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  int rc = herald_event_put_known(store, app, endpoint, ev, inserted, err);
  json_decref(ev);
  return rc;
}

/* A direct update rather than an endpoint write: a write would make the endpoint ACTIVE again
 * (Pinpoint's rule for UpdateEndpoint), which must not undo a hard bounce. address (NULL for
 * the statements without ?3) is bound as ?3. */
static int mark_endpoint(HeraldStore *store, const char *app, const char *endpoint,
                         const char *address, const char *column_sql, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(store, column_sql, err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, endpoint, -1, SQLITE_STATIC);
  if (address) sqlite3_bind_text(st, 3, address, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? kHeraldOk : herald_store_fail(store, err, "updating an endpoint");
}

/* An unsubscribe link opts its endpoint out whatever its address now: the recipient asked. */
static const char kOptOutAll[] =
    "UPDATE endpoints SET opt_out = 'ALL' WHERE app_id = ?1 AND id = ?2";
/* A receipt is of the address the message went to (?3): an endpoint whose address was
 * corrected since is not the one that bounced or complained. */
static const char kReceiptOptOut[] =
    "UPDATE endpoints SET opt_out = 'ALL' WHERE app_id = ?1 AND id = ?2 AND address = ?3";
static const char kReceiptInactive[] =
    "UPDATE endpoints SET endpoint_status = 'INACTIVE' WHERE app_id = ?1 AND id = ?2 AND address = ?3";

/* Tracking hits ------------------------------------------------------------------------------
 *
 * The recorder queues each hit; herald_ingest_flush writes the queue in one transaction (the
 * server calls it once per loop iteration, before the iteration's answers go out). The fast
 * pass looks each distinct endpoint up once and moves its last activity once, to its latest
 * hit. A hit that is refused alone (its endpoint is gone, an id over the events' limits) is
 * skipped before anything of it is written. Any other failure is the store's: the pass is
 * rolled back and the batch written again with a savepoint per hit, so a failure costs only
 * the hits that cause it, never the rest of the batch. */

/* A queued hit: the token's strings are copied (they live in the handler's stack), in one
 * allocation. */
typedef struct QueuedHit {
  HeraldTrackingKind kind;
  int64_t run;
  int32_t treatment;
  int64_t at_ms;
  const char *app, *campaign, *endpoint, *message_id, *url, *request_id;
  char *strings;
  size_t strings_len;
  char *failure;  /* why the hit was not stored (malloc'd), or NULL */
  int found;      /* its endpoint exists and it is stored (the fast pass's bookkeeping) */
} QueuedHit;

static char *append(char *dst, const char *src, const char **field) {
  if (src == NULL) {
    *field = NULL;
    return dst;
  }
  size_t n = strlen(src) + 1;
  memcpy(dst, src, n);
  *field = dst;
  return dst + n;
}

static size_t len0(const char *s) { return s ? strlen(s) + 1 : 0; }

static const char *or_empty(const char *s) { return s ? s : ""; }

static const char *hit_type(const QueuedHit *q) {
  return q->kind == kHeraldTrackOpen    ? "_email.open"
         : q->kind == kHeraldTrackClick ? "_email.click"
                                        : "_email.unsubscribe";
}

static void hit_fail(QueuedHit *q, const char *reason) {
  free(q->failure);
  q->failure = strdup(reason);
}


/* Appends "key":"value" (value's first len bytes, escaped as RFC 8259 asks) to the JSON object
 * text being built at out + *o. The caller sized out for the worst case (6 bytes per input
 * byte). Returns -1 when value is not UTF-8. Written here rather than through jansson: a hit's
 * attributes are a handful of short strings, and building and dumping a jansson object for
 * them cost more than storing the event. */
static int put_member(char *out, size_t *o, const char *key, const char *value, size_t len) {
  static const char hex[] = "0123456789abcdef";
  size_t p = *o;
  out[p] = p == 0 ? '{' : ',';
  p++;
  out[p++] = '"';
  size_t klen = strlen(key);
  memcpy(out + p, key, klen);
  p += klen;
  memcpy(out + p, "\":\"", 3);
  p += 3;
  const unsigned char *v = (const unsigned char *)value;
  for (size_t i = 0; i < len;) {
    unsigned char c = v[i];
    if (c == '"' || c == '\\') {
      out[p++] = '\\';
      out[p++] = (char)c;
      i++;
    } else if (c < 0x20) {
      memcpy(out + p, "\\u00", 4);
      out[p + 4] = hex[c >> 4];
      out[p + 5] = hex[c & 15];
      p += 6;
      i++;
    } else {
      int n = herald_utf8_sequence(v + i);
      if (n == 0 || i + (size_t)n > len) return -1;
      memcpy(out + p, v + i, (size_t)n);
      p += (size_t)n;
      i += (size_t)n;
    }
  }
  out[p++] = '"';
  *o = p;
  return 0;
}

/* The event's attributes as JSON object text (malloc'd) in *out; kHeraldLimit or
 * kHeraldInvalid (err says which field) when an id breaks the events' rules, so the hit is
 * refused alone. */
static int hit_attributes(const QueuedHit *q, char **out, HeraldError *err) {
  if (herald_utf8_chars(q->campaign) > HERALD_EVENT_VALUE_MAX)
    return herald_error_set(err, kHeraldLimit, "campaign_id: longer than %d characters", HERALD_EVENT_VALUE_MAX);
  if (herald_utf8_chars(q->message_id) > HERALD_EVENT_VALUE_MAX)
    return herald_error_set(err, kHeraldLimit, "message_id: longer than %d characters", HERALD_EVENT_VALUE_MAX);
  char run[24], treatment[16];
  snprintf(run, sizeof run, "%lld", (long long)q->run);
  snprintf(treatment, sizeof treatment, "%d", q->treatment);
  size_t campaign_len = strlen(q->campaign), message_len = strlen(q->message_id);
  size_t url_len = q->url ? prefix_bytes(q->url, HERALD_EVENT_VALUE_MAX) : 0;
  char *text = malloc(6 * (campaign_len + message_len + url_len) + 256);
  if (text == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  size_t o = 0;
  if (put_member(text, &o, "campaign_id", q->campaign, campaign_len) != 0 ||
      put_member(text, &o, "treatment_id", treatment, strlen(treatment)) != 0 ||
      put_member(text, &o, "campaign_activity_id", run, strlen(run)) != 0 ||
      put_member(text, &o, "message_id", q->message_id, message_len) != 0 ||
      (q->url && put_member(text, &o, "url", q->url, url_len) != 0)) {
    free(text);
    return herald_error_set(err, kHeraldInvalid, "the token's ids are not valid UTF-8");
  }
  text[o++] = '}';
  text[o] = '\0';
  *out = text;
  return kHeraldOk;
}

/* Writes the event of one hit whose endpoint exists; touch: also move the endpoint's last
 * activity (the slow pass; the fast pass does it once per endpoint). */
static int store_hit(HeraldStore *store, const QueuedHit *q, const char *arrival, int touch_now,
                     HeraldError *err) {
  char *attrs = NULL;
  int rc = hit_attributes(q, &attrs, err);
  if (rc != kHeraldOk) return rc;
  char at[HERALD_DATETIME_LEN];
  herald_datetime_format(q->at_ms, at);
  HeraldEventRow row = {
    .app = q->app, .endpoint_id = q->endpoint, .event_id = q->request_id,
    .event_type = hit_type(q), .timestamp = at, .attributes = attrs, .arrival = arrival,
  };
  int inserted = 0;
  rc = herald_event_insert(store, &row, &inserted, err);
  if (rc == kHeraldOk && touch_now) rc = herald_event_touch(store, q->app, q->endpoint, at, err);
  /* a hit replayed from the journal after it was stored changes nothing twice (the endpoint
   * may have opted in again since) */
  if (rc == kHeraldOk && inserted && q->kind == kHeraldTrackUnsubscribe)
    rc = mark_endpoint(store, q->app, q->endpoint, NULL, kOptOutAll, err);
  free(attrs);
  return rc;
}

static int refused_alone(int rc) { return rc == kHeraldInvalid || rc == kHeraldLimit; }

static int by_endpoint(const void *a, const void *b) {
  const QueuedHit *x = *(const QueuedHit *const *)a, *y = *(const QueuedHit *const *)b;
  int c = strcmp(x->app, y->app);
  return c ? c : strcmp(x->endpoint, y->endpoint);
}

/* The fast pass: one lookup and one last-activity update per distinct endpoint, no savepoints.
 * Inside the caller's transaction; a store failure returns at once (the caller rolls back). */
static int write_fast(HeraldIngest *in, HeraldStore *store, const char *arrival, size_t *stored,
                      HeraldError *err) {
  QueuedHit **order = in->order;
  for (size_t i = 0; i < in->len; i++) order[i] = &in->queue[i];
  qsort(order, in->len, sizeof *order, by_endpoint);
  for (size_t i = 0; i < in->len;) {
    size_t end = i + 1;
    while (end < in->len && by_endpoint(&order[i], &order[end]) == 0) end++;
    int found = endpoint_exists(store, order[i]->app, order[i]->endpoint, err);
    if (found < 0) return err->code;
    char reason[2 * HERALD_TRACKING_ID_MAX + 64];
    if (!found)
      snprintf(reason, sizeof reason, "no endpoint '%s' in application '%s'", order[i]->endpoint,
               order[i]->app);
    for (size_t k = i; k < end; k++) {
      order[k]->found = found;
      if (!found) hit_fail(order[k], reason);
    }
    i = end;
  }
  for (size_t i = 0; i < in->len; i++) {
    QueuedHit *q = &in->queue[i];
    if (!q->found) continue;
    HeraldError item = {0};
    int rc = store_hit(store, q, arrival, 0, &item);
    if (rc == kHeraldOk) {
      (*stored)++;
    } else if (refused_alone(rc)) {
      q->found = 0; /* nothing of it was written: validation comes first */
      hit_fail(q, item.msg);
    } else {
      *err = item;
      return rc;
    }
  }
  /* the latest stored hit of each endpoint moves its last activity */
  for (size_t i = 0; i < in->len;) {
    size_t end = i + 1;
    while (end < in->len && by_endpoint(&order[i], &order[end]) == 0) end++;
    int64_t latest = -1;
    for (size_t k = i; k < end; k++)
      if (order[k]->found && order[k]->at_ms > latest) latest = order[k]->at_ms;
    if (latest >= 0) {
      char at[HERALD_DATETIME_LEN];
      herald_datetime_format(latest, at);
      if (herald_event_touch(store, order[i]->app, order[i]->endpoint, at, err) != kHeraldOk)
        return err->code;
    }
    i = end;
  }
  return kHeraldOk;
}

/* The slow pass: each hit alone in a savepoint, so a failing one is undone alone. */
static int write_isolated(HeraldIngest *in, HeraldStore *store, const char *arrival,
                          size_t *stored, HeraldError *err) {
  for (size_t i = 0; i < in->len; i++) {
    QueuedHit *q = &in->queue[i];
    HeraldError item = {0};
    int mark;
    if (herald_store_savepoint(store, &mark, err) != kHeraldOk) return err->code;
    int rc = endpoint_exists(store, q->app, q->endpoint, &item);
    if (rc == 1) rc = store_hit(store, q, arrival, 1, &item);
    else if (rc == 0) rc = herald_error_set(&item, kHeraldNotFound, "no endpoint '%s' in application '%s'",
                                            q->endpoint, q->app);
    else rc = item.code;
    if (rc == kHeraldOk) {
      if (herald_store_release(store, err) != kHeraldOk) return err->code;
      (*stored)++;
    } else {
      herald_store_rollback_to(store, mark);
      hit_fail(q, item.msg);
    }
  }
  return kHeraldOk;
}

/* One pass in its own transaction; *stored counts the hits it stored when it commits. */
static int write_pass(HeraldIngest *in, HeraldStore *store, int isolated, size_t *stored,
                      HeraldError *err) {
  *stored = 0;
  for (size_t i = 0; i < in->len; i++) {
    free(in->queue[i].failure);
    in->queue[i].failure = NULL;
  }
  if (herald_store_begin(store, err) != kHeraldOk) return err->code;
  char arrival[HERALD_DATETIME_LEN];
  herald_datetime_now(arrival);
  int rc = isolated ? write_isolated(in, store, arrival, stored, err)
                    : write_fast(in, store, arrival, stored, err);
  if (rc != kHeraldOk) {
    herald_store_rollback(store);
    *stored = 0;
    return rc;
  }
  rc = herald_store_commit(store, err);
  if (rc != kHeraldOk) *stored = 0;
  return rc;
}

void herald_ingest_flush(HeraldIngest *in) { flush(in, 0); }

/* final: the last chance of this ingest (it is being freed): hits the store refuses then stay
 * in the journal, if there is one, for the next server to store. */
static void flush(HeraldIngest *in, int final) {
  if (in->len == 0) return;
  int64_t now = herald_clock_now_ms();
  if (!final && in->holding && now < in->hold_until_ms) {
    if (in->journal != NULL && in->journaled < in->len) journal_append(in);
    /* the next try: the timer may have fired early (the loop's time is read once per
     * iteration, and the refused write blocked that iteration) */
    if (in->fold_timer != NULL && !uv_is_active((uv_handle_t *)in->fold_timer))
      uv_timer_start(in->fold_timer, on_fold_timer, (uint64_t)(in->hold_until_ms - now), 0);
    return;
  }
  HeraldError err = {0};
  HeraldStore *store = in->store(in->store_arg, &err);
  size_t stored = 0;
  int refused = store == NULL;
  int rc = store != NULL ? write_pass(in, store, 0, &stored, &err) : (int)err.code;
  if (rc != kHeraldOk && store != NULL) {
    HeraldError again = {0};
    if (write_pass(in, store, 1, &stored, &again) != kHeraldOk) {
      err = again;
      refused = 1;  /* not one hit at fault: the store took nothing */
    }
  }
  if (refused && in->len <= kKeepMax && (!final || in->journal != NULL)) {
    if (!in->holding)
      fprintf(stderr, "herald: the store refused %zu tracking hits (%s); they are kept and written "
                      "when it takes them\n", in->len, err.msg);
    in->holding = 1;
    in->hold_until_ms = herald_clock_now_ms() + kHoldMs;
    if (in->journal != NULL) {
      if (in->journaled < in->len) journal_append(in);
      if (!final && in->fold_timer != NULL) uv_timer_start(in->fold_timer, on_fold_timer, kHoldMs, 0);
    }
    for (size_t i = 0; i < in->len; i++) {
      free(in->queue[i].failure);
      in->queue[i].failure = NULL;
    }
    return;
  }
  if (in->holding && !refused) fprintf(stderr, "herald: the store took the tracking hits it had refused\n");
  in->holding = 0;
  if (stored == 0 && err.msg[0])
    fprintf(stderr, "herald: recording %zu tracking hits: %s\n", in->len, err.msg);
  for (size_t i = 0; i < in->len; i++) {
    QueuedHit *q = &in->queue[i];
    if (q->failure != NULL)
      fprintf(stderr, "herald: recording %s of message %s: %s\n", hit_type(q), q->message_id, q->failure);
    free(q->failure);
    free(q->strings);
  }
  in->counts.stored += stored;
  in->counts.failed += in->len - stored;
  in->len = 0;
  if (in->journal != NULL) {
    uv_timer_stop(in->fold_timer);
    /* stored, or reported as never storable: either way not to be replayed */
    if (in->journaled > 0 || in->journal_torn) {
      if (herald_journal_clear(in->journal, &err) != kHeraldOk)
        fprintf(stderr, "herald: tracking hit journal: %s\n", err.msg);
      else
        in->journal_torn = 0;
    }
    in->journaled = 0;
  }
}

/* Queues one hit (its strings copied); -1 when out of memory. */
static int queue_hit(HeraldIngest *in, HeraldTrackingKind kind, int64_t run, int32_t treatment,
                     int64_t at_ms, const char *app, const char *campaign, const char *endpoint,
                     const char *message_id, const char *url, const char *request_id) {
  if (in->len == in->cap) {
    size_t cap = in->cap ? in->cap * 2 : 64;
    QueuedHit *q = realloc(in->queue, cap * sizeof *q);
    if (q == NULL) return -1;
    in->queue = q;
    QueuedHit **order = realloc(in->order, cap * sizeof *order);
    if (order == NULL) return -1;
    in->order = order;
    in->cap = cap;
  }
  QueuedHit *q = &in->queue[in->len];
  q->strings = malloc(len0(app) + len0(campaign) + len0(endpoint) + len0(message_id) +
                      len0(url) + len0(request_id));
  if (q->strings == NULL) return -1;
  char *p = q->strings;
  p = append(p, app, &q->app);
  p = append(p, campaign, &q->campaign);
  p = append(p, endpoint, &q->endpoint);
  p = append(p, message_id, &q->message_id);
  p = append(p, url, &q->url);
  q->strings_len = (size_t)(append(p, request_id, &q->request_id) - q->strings);
  q->kind = kind;
  q->run = run;
  q->treatment = treatment;
  q->at_ms = at_ms;
  q->failure = NULL;
  q->found = 0;
  in->len++;
  return 0;
}

int herald_ingest_record_hit(void *ctx, const HeraldTrackingHit *hit) {
  HeraldIngest *in = ctx;
  const HeraldTrackingToken *t = hit->token;
  /* a verified token has every id but the url; "" stands in for any missing one */
  if (queue_hit(in, hit->kind, t->run, t->treatment, herald_clock_now_ms(), or_empty(t->app),
                or_empty(t->campaign), or_empty(t->endpoint), or_empty(t->message_id), t->url,
                or_empty(hit->request_id)) != 0)
    return -1;
  /* unless a flush is coming (the server's, once per iteration), write now */
  if (!in->queueing || in->len >= HERALD_INGEST_FLUSH_MAX) herald_ingest_flush(in);
  return 0;
}

/* Journal ------------------------------------------------------------------------------------
 *
 * A hit's record: kind, whether it has a url, run (8 bytes), treatment (4), time (8, ms), all
 * little-endian, then its strings as queued (app, campaign, endpoint, message id, url when it
 * has one, request id, each NUL-terminated). */

enum { kRecordFixed = 22 };

static void put_le(unsigned char *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* Reads the next NUL-terminated string of a record. */
static const char *next_string(const unsigned char *p, size_t len, size_t *o) {
  if (*o >= len) return NULL;
  const unsigned char *end = memchr(p + *o, 0, len - *o);
  if (end == NULL) return NULL;
  const char *s = (const char *)p + *o;
  *o = (size_t)(end - p) + 1;
  return s;
}

static int replay_record(const unsigned char *p, size_t len, void *arg) {
  HeraldIngest *in = arg;
  if (len < kRecordFixed || p[0] > kHeraldTrackUnsubscribe || p[1] > 1) return -1;
  size_t o = kRecordFixed;
  const char *app = next_string(p, len, &o), *campaign = next_string(p, len, &o);
  const char *endpoint = next_string(p, len, &o), *message_id = next_string(p, len, &o);
  const char *url = p[1] ? next_string(p, len, &o) : NULL;
  const char *request_id = next_string(p, len, &o);
  if (request_id == NULL || (p[1] && url == NULL) || o != len) return -1;
  return queue_hit(in, (HeraldTrackingKind)p[0], (int64_t)get_le(p + 2, 8),
                   (int32_t)get_le(p + 10, 4), (int64_t)get_le(p + 14, 8), app, campaign, endpoint,
                   message_id, url, request_id);
}

/* Writes the records of queue[journaled ..] to the journal: 0, or -1 (nothing is counted as
 * journaled then). */
static int journal_append(HeraldIngest *in) {
  in->frames.len = 0;
  unsigned char fixed[kRecordFixed];
  int rc = 0;
  for (size_t i = in->journaled; i < in->len && rc == 0; i++) {
    const QueuedHit *q = &in->queue[i];
    fixed[0] = (unsigned char)q->kind;
    fixed[1] = q->url != NULL;
    put_le(fixed + 2, (uint64_t)q->run, 8);
    put_le(fixed + 10, (uint64_t)(uint32_t)q->treatment, 4);
    put_le(fixed + 14, (uint64_t)q->at_ms, 8);
    rc = herald_journal_frame(&in->frames, fixed, sizeof fixed, q->strings, q->strings_len);
  }
  HeraldError err = {0};
  if (rc == 0 && herald_journal_write(in->journal, &in->frames, &err) != kHeraldOk) {
    fprintf(stderr, "herald: tracking hit journal: %s; hits are written to the store\n", err.msg);
    in->journal_torn = 1; /* records after a torn one would never be replayed */
    rc = -1;
  }
  if (rc != 0) return -1;
  in->journaled = in->len;
  return 0;
}

static void on_fold_timer(uv_timer_t *t) { herald_ingest_flush(t->data); }

static void fold_timer_closed(uv_handle_t *h) { free(h); }

int herald_ingest_open_journal(HeraldIngest *in, uv_loop_t *loop,
                               const HeraldJournalOptions *options, HeraldError *err) {
  if (in->journal != NULL) return kHeraldOk;
  HeraldStore *store = in->store(in->store_arg, err);
  if (store == NULL) return err->code;
  const char *db = herald_store_path(store);
  if (db[0] == '\0' || strcmp(db, ":memory:") == 0 || strncmp(db, "file:", 5) == 0)
    return herald_error_set(err, kHeraldInvalid, "the database is not a plain file");
  size_t n = strlen(db) + sizeof "-hits";
  char *path = malloc(n);
  if (path == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  snprintf(path, n, "%s-hits", db);
  int rc = herald_journal_open(path, &in->journal, err);
  free(path);
  if (rc != kHeraldOk) return rc;
  in->fold_timer = malloc(sizeof *in->fold_timer);
  if (in->fold_timer == NULL || uv_timer_init(loop, in->fold_timer) != 0) {
    free(in->fold_timer);
    in->fold_timer = NULL;
    herald_journal_close(in->journal, 0);
    in->journal = NULL;
    return herald_error_set(err, kHeraldIo, "tracking hit journal: cannot make a timer");
  }
  in->fold_timer->data = in;
  uv_unref((uv_handle_t *)in->fold_timer); /* the server's connections keep the loop alive */
  in->options = *options;
  /* what a server that died left: its hits go to the store before any new one arrives */
  size_t records, ignored;
  if (herald_journal_replay(in->journal, replay_record, in, &records, &ignored, err) != kHeraldOk) {
    herald_ingest_close_journal(in);
    return err->code;
  }
  if (records > 0 || ignored > 0) {
    fprintf(stderr, "herald: %s: %zu tracking hits of a server that stopped unexpectedly%s\n",
            herald_journal_path(in->journal), records,
            ignored ? " (and the incomplete record it was writing, ignored)" : "");
    herald_ingest_flush(in);
    if (herald_journal_clear(in->journal, err) != kHeraldOk) {
      herald_ingest_close_journal(in);
      return err->code;
    }
  }
  return kHeraldOk;
}

void herald_ingest_close_journal(HeraldIngest *in) {
  if (in->journal == NULL) return;
  flush(in, 1);  /* what the store still refuses stays in the journal, for the next start */
  uv_timer_stop(in->fold_timer);
  uv_close((uv_handle_t *)in->fold_timer, fold_timer_closed);
  in->fold_timer = NULL;
  herald_journal_close(in->journal, 1);
  in->journal = NULL;
  free(in->frames.data);
  in->frames = (HeraldBuf){0};
}

void herald_ingest_end_iteration(HeraldIngest *in) {
  size_t fresh = in->len - in->journaled;
  if (fresh == 0) return;
  /* a quiet iteration (or no journal) writes to the store now, as does a long queue */
  if (in->journal == NULL || fresh < (size_t)in->options.min_hits ||
      in->len >= (size_t)in->options.fold_hits || journal_append(in) != 0) {
    herald_ingest_flush(in);
    return;
  }
  if (!uv_is_active((uv_handle_t *)in->fold_timer))
    uv_timer_start(in->fold_timer, on_fold_timer, in->options.fold_ms, 0);
}

void herald_ingest_queue_hits(HeraldIngest *in) { in->queueing = 1; }

void herald_ingest_counts(const HeraldIngest *in, HeraldIngestCounts *out) { *out = in->counts; }

/* Status webhooks ---------------------------------------------------------------------------- */

static const char *status_event(json_t *n, const char **update, HeraldError *err) {
  const char *type = json_string_value(json_object_get(n, "Type"));
  const char *bounce = json_string_value(json_object_get(n, "BounceType"));
  const char *status = json_string_value(json_object_get(n, "Status"));
  *update = NULL;
  if (type == NULL) {
    herald_error_set(err, kHeraldInvalid, "Type: required, one of DELIVERY, BOUNCE, COMPLAINT, SMS");
    return NULL;
  }
  if (strcmp(type, "BOUNCE") != 0 && bounce) {
    herald_error_set(err, kHeraldInvalid, "BounceType: only for Type BOUNCE");
    return NULL;
  }
  if (strcmp(type, "SMS") != 0 && status) {
    herald_error_set(err, kHeraldInvalid, "Status: only for Type SMS");
    return NULL;
  }
  if (strcmp(type, "DELIVERY") == 0) return "_email.delivered";
  if (strcmp(type, "COMPLAINT") == 0) {
    *update = kReceiptOptOut;
    return "_email.complaint";
  }
  if (strcmp(type, "BOUNCE") == 0) {
    if (bounce && strcmp(bounce, "HARD") == 0) {
      *update = kReceiptInactive;
      return "_email.hardbounce";
    }
    if (bounce && strcmp(bounce, "SOFT") == 0) return "_email.softbounce";
    herald_error_set(err, kHeraldInvalid, "BounceType: required for a BOUNCE, HARD or SOFT");
    return NULL;
  }
  if (strcmp(type, "SMS") == 0) {
    if (status && strcmp(status, "SUCCESS") == 0) return "_SMS.SUCCESS";
    if (status && strcmp(status, "FAILURE") == 0) return "_SMS.FAILURE";
    if (status && strcmp(status, "OPTOUT") == 0) {
      *update = kReceiptOptOut;
      return "_SMS.OPTOUT";
    }
    herald_error_set(err, kHeraldInvalid, "Status: required for an SMS, SUCCESS, FAILURE or OPTOUT");
    return NULL;
  }
  herald_error_set(err, kHeraldInvalid, "Type: '%s' is not one of DELIVERY, BOUNCE, COMPLAINT, SMS", type);
  return NULL;
}

static int check_notification(json_t *n, HeraldError *err) {
  if (!json_is_object(n))
    return herald_error_set(err, kHeraldInvalid, "expected a notification object {MessageId, Type, ...}");
  const char *key;
  json_t *v;
  json_object_foreach(n, key, v) {
    if (strcmp(key, "MessageId") != 0 && strcmp(key, "Type") != 0 && strcmp(key, "BounceType") != 0 &&
        strcmp(key, "Status") != 0 && strcmp(key, "Timestamp") != 0 && strcmp(key, "Reason") != 0)
      return herald_error_set(err, kHeraldInvalid, "%s: unknown field (a notification has MessageId, "
                              "Type, BounceType, Status, Timestamp, Reason)", key);
    if (!json_is_string(v))
      return herald_error_set(err, kHeraldInvalid, "%s: expected a string", key);
  }
  const char *id = json_string_value(json_object_get(n, "MessageId"));
  if (id == NULL || *id == '\0') return herald_error_set(err, kHeraldInvalid, "MessageId: required");
  return kHeraldOk;
}

/* The event of a status notification of a known message, sent to address, and its endpoint
 * update (NULL: none), in the caller's transaction. The event id is "<message id>:<event
 * type>", so a notification given twice is recorded once, and its update is made once: a
 * provider's retry must not undo what the endpoint's owner did since (a corrected address, an
 * OptOut NONE). *inserted (may be NULL) is 0 for such a repeat. */
static int record_status(HeraldStore *store, const char *app, const char *endpoint, const Origin *o,
                         const char *address, const char *type, const char *update,
                         const char *stamp, const char *reason, int *inserted, HeraldError *err) {
  char event_id[300];
  snprintf(event_id, sizeof event_id, "%s:%s", o->message_id, type);
  json_t *extra = NULL;
  if (reason) {
    extra = json_pack("{s:o}", "reason", cut_string(reason, HERALD_EVENT_VALUE_MAX));
    if (extra == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  }
  int fresh = 0;
  int rc = put_engagement(store, app, endpoint, type, event_id, stamp, o, extra, &fresh, err);
  if (rc == kHeraldOk && update && fresh) rc = mark_endpoint(store, app, endpoint, address, update, err);
  json_decref(extra);
  if (inserted) *inserted = fresh;
  return rc;
}

/* The endpoints a direct message's receipt is for, as a JSON array of ids: its endpoint, or
 * for a message to an address the request named, the endpoints of the app with its channel
 * and address (Pinpoint keeps an opt-out per address). NULL on a store failure. */
static json_t *direct_endpoints(HeraldStore *store, const char *app, const char *endpoint,
                                const char *channel, const char *address, HeraldError *err) {
  json_t *ids = json_array();
  if (ids == NULL) {
    herald_error_set(err, kHeraldNoMemory, "out of memory");
    return NULL;
  }
  if (endpoint) {
    if (json_array_append_new(ids, json_string(endpoint)) != 0) goto oom;
    return ids;
  }
  sqlite3_stmt *st = herald_store_stmt(
      store, "SELECT id FROM endpoints WHERE app_id = ?1 AND address = ?2 AND channel_type = ?3"
             " ORDER BY id", err);
  if (st == NULL) goto fail;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, address, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, channel, -1, SQLITE_STATIC);
  int step;
  /* collected before anything is written: the writes change the rows this reads */
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    if (json_array_append_new(ids, json_string((const char *)sqlite3_column_text(st, 0))) != 0) {
      sqlite3_reset(st);
      goto oom;
    }
  }
  sqlite3_reset(st);
  if (step != SQLITE_DONE) {
    herald_store_fail(store, err, "looking up endpoints by address");
    goto fail;
  }
  return ids;
oom:
  herald_error_set(err, kHeraldNoMemory, "out of memory");
fail:
  json_decref(ids);
  return NULL;
}

/* A status notification of a direct message (herald.send: table direct_messages) recorded on
 * its endpoints in one transaction. An opt-out (update kReceiptOptOut: an SMS OPTOUT, an email
 * COMPLAINT) of a message to an address the request named also puts the address on the app's
 * opt-out list, endpoints or none: no endpoint may have it, and the recipient's request must
 * hold for the next direct message all the same. A repeat of a notification its endpoints
 * recorded (a provider's retry) lists the address no more than it opts them out again: it
 * stays off the list once herald.send.lift_optout took it off. *optout_out (when optout_out is
 * not NULL) is then {"ChannelType", "Address"}, else NULL. Returns 1 when done, 0 when
 * message_id is no direct message of app, -1 on failure (err set). */
static int status_direct(HeraldStore *store, const char *app, const char *message_id,
                         const char *type, const char *update, const char *stamp,
                         const char *reason, char *endpoint_out, json_t **optout_out,
                         HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store, "SELECT endpoint_id, channel, address FROM direct_messages"
             " WHERE app_id = ?1 AND message_id = ?2", err);
  if (st == NULL) return -1;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, message_id, -1, SQLITE_STATIC);
  int step = sqlite3_step(st);
  if (step != SQLITE_ROW) {
    sqlite3_reset(st);
    if (step == SQLITE_DONE) return 0;
    herald_store_fail(store, err, "looking up a direct message");
    return -1;
  }
  char endpoint[HERALD_TRACKING_ID_MAX + 1], channel[64];
  int has_endpoint = sqlite3_column_type(st, 0) != SQLITE_NULL;
  snprintf(endpoint, sizeof endpoint, "%s", has_endpoint ? (const char *)sqlite3_column_text(st, 0) : "");
  snprintf(channel, sizeof channel, "%s", (const char *)sqlite3_column_text(st, 1));
  char *address = strdup((const char *)sqlite3_column_text(st, 2));
  sqlite3_reset(st);
  if (address == NULL) {
    herald_error_set(err, kHeraldNoMemory, "out of memory");
    return -1;
  }
  /* a message to an endpoint: its OptOut is the record, which OptOut NONE lifts */
  int optout = !has_endpoint && update == kReceiptOptOut;
  json_t *ids = direct_endpoints(store, app, has_endpoint ? endpoint : NULL, channel, address, err);
  int rc = ids ? kHeraldOk : (int)err->code;
  if (rc == kHeraldOk && json_array_size(ids) == 0 && !optout)
    rc = herald_error_set(err, kHeraldNotFound, "MessageId: message '%s' went to %s address '%s', "
                          "which no endpoint of application '%s' has: nothing to record",
                          message_id, channel, address, app);
  if (rc == kHeraldOk) rc = herald_store_begin(store, err);
  if (rc == kHeraldOk) {
    Origin o = {NULL, 0, 0, message_id};
    size_t i;
    json_t *id;
    int fresh = 0;
    json_array_foreach(ids, i, id) {
      int inserted;
      rc = record_status(store, app, json_string_value(id), &o, address, type, update, stamp, reason,
                         &inserted, err);
      if (rc != kHeraldOk) break;
      fresh |= inserted;
    }
    /* with no endpoint to keep the event the list is the record: a repeat finds the address
     * on it (and changes nothing) unless it was lifted since, which no record tells */
    if (json_array_size(ids) > 0 && !fresh) optout = 0;
    if (rc == kHeraldOk && optout)
      rc = herald_outbox_optout_add(store, app, channel, address, type, message_id, reason, stamp, err);
    if (rc == kHeraldOk) rc = herald_store_commit(store, err);
    else herald_store_rollback(store);
  }
  if (rc == kHeraldOk && endpoint_out) {
    const char *first = json_string_value(json_array_get(ids, 0));
    snprintf(endpoint_out, HERALD_TRACKING_ID_MAX + 1, "%s", first ? first : "");
  }
  if (rc == kHeraldOk && optout_out && optout) {
    *optout_out = json_pack("{s:s, s:s}", "ChannelType", channel, "Address", address);
    if (*optout_out == NULL) rc = herald_error_set(err, kHeraldNoMemory, "out of memory");
  }
  free(address);
  json_decref(ids);
  return rc == kHeraldOk ? 1 : -1;
}

/* herald_ingest_status, and for the webhook's answer the address put on the opt-out list
 * (*optout_out, may be NULL: see status_direct). */
static int ingest_status(HeraldStore *store, const char *app, json_t *n, char *event_type_out,
                         char *endpoint_out, json_t **optout_out, HeraldError *err) {
  if (optout_out) *optout_out = NULL;
  if (check_notification(n, err) != kHeraldOk) return err->code;
  const char *update;
  const char *type = status_event(n, &update, err);
  if (type == NULL) return err->code;
  char stamp[HERALD_DATETIME_LEN];
  const char *ts = json_string_value(json_object_get(n, "Timestamp"));
  if (ts == NULL) {
    herald_time_format(herald_clock_now_ms(), stamp, sizeof stamp);
  } else if (herald_datetime_parse(ts, stamp) != 0) {
    return herald_error_set(err, kHeraldInvalid, "Timestamp: expected an ISO-8601 date such as "
                            "2026-11-29T10:00:00Z");
  }
  const char *message_id = json_string_value(json_object_get(n, "MessageId"));
  if (herald_store_app_exists(store, app, err) != kHeraldOk) return err->code;
  const char *reason = json_string_value(json_object_get(n, "Reason"));
  int direct = status_direct(store, app, message_id, type, update, stamp, reason, endpoint_out,
                             optout_out, err);
  if (direct < 0) return err->code;
  if (direct) {
    if (event_type_out) snprintf(event_type_out, 32, "%s", type);
    return kHeraldOk;
  }
  sqlite3_stmt *st = herald_store_stmt(
      store, "SELECT o.endpoint_id, o.treatment, o.run_id, r.campaign_id, o.address FROM outbox o "
             "JOIN campaign_runs r ON r.id = o.run_id"
             /* through outbox_message_claimed: a message never claimed was never sent, and a
              * notification is of an email (DELIVERY, BOUNCE, COMPLAINT) or an SMS (SMS): a
              * bounce naming a push message must not make its device INACTIVE. The unary +
              * keeps SQLite from propagating message_id = ?1 and channel = ?3 into the index's
              * expression and condition, which would then no longer match them. */
             " WHERE substr(o.message_id, 1, 8) = substr(?1, 1, 8) AND o.claimed_ms IS NOT NULL"
             " AND o.channel IN ('EMAIL', 'SMS') AND +o.channel = ?3"
             " AND +o.message_id = ?1 AND r.app_id = ?2", err);
  if (st == NULL) return err->code;
  const char *channel = strncmp(type, "_SMS.", 5) == 0 ? "SMS" : "EMAIL";
  sqlite3_bind_text(st, 1, message_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, channel, -1, SQLITE_STATIC);
  int step = sqlite3_step(st);
  if (step != SQLITE_ROW) {
    sqlite3_reset(st);
    if (step == SQLITE_DONE)
      return herald_error_set(err, kHeraldNotFound, "MessageId: no message '%s' in application '%s'"
                              " (of the %s messages it sent)", message_id, app, channel);
    return herald_store_fail(store, err, "looking up a message");
  }
  char endpoint[HERALD_TRACKING_ID_MAX + 1], campaign[HERALD_TRACKING_ID_MAX + 1];
  snprintf(endpoint, sizeof endpoint, "%s", (const char *)sqlite3_column_text(st, 0));
  int treatment = sqlite3_column_int(st, 1);
  long long run = sqlite3_column_int64(st, 2);
  snprintf(campaign, sizeof campaign, "%s", (const char *)sqlite3_column_text(st, 3));
  /* a claimed email or SMS row has its address (one without is never claimed) */
  const unsigned char *sent_to = sqlite3_column_text(st, 4);
  char *address = strdup(sent_to ? (const char *)sent_to : "");
  sqlite3_reset(st);
  if (address == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");

  Origin o = {campaign, run, treatment, message_id};
  int rc = herald_store_begin(store, err);
  if (rc == kHeraldOk) {
    rc = record_status(store, app, endpoint, &o, address, type, update, stamp, reason, NULL, err);
    if (rc == kHeraldOk) rc = herald_store_commit(store, err);
    else herald_store_rollback(store);
  }
  free(address);
  if (rc != kHeraldOk) return rc;
  if (event_type_out) snprintf(event_type_out, 32, "%s", type);
  if (endpoint_out) snprintf(endpoint_out, HERALD_TRACKING_ID_MAX + 1, "%s", endpoint);
  return kHeraldOk;
}

int herald_ingest_status(HeraldStore *store, const char *app, json_t *n, char *event_type_out,
                         char *endpoint_out, HeraldError *err) {
  return ingest_status(store, app, n, event_type_out, endpoint_out, NULL, err);
}

int herald_ingest_hard_bounce(HeraldStore *store, int64_t outbox_id, const char *reason,
                              HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store, "SELECT r.app_id, o.endpoint_id, o.treatment, o.run_id, r.campaign_id, o.message_id,"
             " coalesce(o.address, '') FROM outbox o JOIN campaign_runs r ON r.id = o.run_id WHERE o.id = ?1", err);
  if (st == NULL) return err->code;
  sqlite3_bind_int64(st, 1, outbox_id);
  int step = sqlite3_step(st);
  if (step != SQLITE_ROW) {
    sqlite3_reset(st);
    if (step == SQLITE_DONE)
      return herald_error_set(err, kHeraldNotFound, "no outbox row %lld", (long long)outbox_id);
    return herald_store_fail(store, err, "looking up a message");
  }
  char app[HERALD_TRACKING_ID_MAX + 1], endpoint[HERALD_TRACKING_ID_MAX + 1];
  char campaign[HERALD_TRACKING_ID_MAX + 1], message_id[HERALD_TRACKING_ID_MAX + 1];
  snprintf(app, sizeof app, "%s", (const char *)sqlite3_column_text(st, 0));
  snprintf(endpoint, sizeof endpoint, "%s", (const char *)sqlite3_column_text(st, 1));
  int treatment = sqlite3_column_int(st, 2);
  long long run = sqlite3_column_int64(st, 3);
  snprintf(campaign, sizeof campaign, "%s", (const char *)sqlite3_column_text(st, 4));
  snprintf(message_id, sizeof message_id, "%s", (const char *)sqlite3_column_text(st, 5));
  char *address = strdup((const char *)sqlite3_column_text(st, 6));
  sqlite3_reset(st);
  if (address == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  /* an endpoint deleted while its message was on the wire: nothing to record, and the failure
   * must not undo the caller's transaction (the other outcomes it writes) */
  int found = endpoint_exists(store, app, endpoint, err);
  int rc = found < 0 ? (err->code ? err->code : kHeraldStore) : kHeraldOk;
  if (found == 1) {
    char stamp[HERALD_DATETIME_LEN];
    herald_time_format(herald_clock_now_ms(), stamp, sizeof stamp);
    Origin o = {campaign, run, treatment, message_id};
    rc = record_status(store, app, endpoint, &o, address, "_email.hardbounce", kReceiptInactive, stamp,
                       reason, NULL, err);
  }
  free(address);
  return rc;
}

/* HTTP handlers ------------------------------------------------------------------------------ */

static int status_of(int code) {
  switch (code) {
    case kHeraldInvalid: return 400;
    case kHeraldLimit: return 400;
    case kHeraldNotFound: return 404;
    case kHeraldNoMemory: return 503;
    default: return 500;
  }
}

/* Answers a failed request. A busy store (another process writing past the busy timeout)
 * passes: 503 with Retry-After tells the client to send the same request again. */
static void answer_error(HeraldHttpResponse *res, int rc, const HeraldError *err) {
  if (herald_store_error_busy(err)) {
    herald_http_response_error(res, 503, err->msg);
    herald_http_response_header(res, "Retry-After", "1");
    return;
  }
  herald_http_response_error(res, status_of(rc), err->msg);
}

/* A key given twice is refused, as imports refuse it: jansson would keep the last value, and
 * the first (a whole batch item, say) would be lost while the answer said Accepted. */
static json_t *parse_body(const HeraldHttpRequest *req, HeraldHttpResponse *res) {
  json_error_t jerr;
  json_t *body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
  if (body == NULL) {
    char msg[300];
    snprintf(msg, sizeof msg, "malformed JSON at line %d, column %d: %s", jerr.line, jerr.column,
             jerr.text);
    herald_http_response_error(res, 400, msg);
  }
  return body;
}

static void handle_put_events(void *ctx, const HeraldHttpRequest *req, HeraldHttpResponse *res) {
  HeraldIngest *in = ctx;
  const char *app = herald_http_request_param(req, "app");
  json_t *body = parse_body(req, res);
  if (body == NULL) return;
  json_t *answer = NULL;
  HeraldError err = {0};
  HeraldStore *store = in->store(in->store_arg, &err);
  int rc = store ? herald_ingest_put_events(store, app, body, &answer, &err) : (int)err.code;
  json_decref(body);
  if (rc != kHeraldOk) {
    answer_error(res, rc, &err);
    return;
  }
  herald_http_response_json(res, 202, answer);
  json_decref(answer);
}

static void handle_status(void *ctx, const HeraldHttpRequest *req, HeraldHttpResponse *res) {
  HeraldIngest *in = ctx;
  const char *app = herald_http_request_param(req, "app");
  json_t *body = parse_body(req, res);
  if (body == NULL) return;
  HeraldError err = {0};
  char type[32], endpoint[HERALD_TRACKING_ID_MAX + 1];
  HeraldStore *store = in->store(in->store_arg, &err);
  json_t *optout = NULL;
  int rc = store ? ingest_status(store, app, body, type, endpoint, &optout, &err) : (int)err.code;
  json_decref(body);
  if (rc != kHeraldOk) {
    answer_error(res, rc, &err);
    return;
  }
  /* EndpointId names the (first) endpoint the event went to: none for an address put on the
   * opt-out list that no endpoint has; OptOut names the address put on it */
  json_t *answer = json_pack("{s:s, s:s}", "EventType", type, "Message", "Accepted");
  if (answer && endpoint[0] && json_object_set_new(answer, "EndpointId", json_string(endpoint)) != 0) {
    json_decref(answer);
    answer = NULL;
  }
  if (answer && optout && json_object_set(answer, "OptOut", optout) != 0) {
    json_decref(answer);
    answer = NULL;
  }
  json_decref(optout);
  if (answer == NULL) {
    herald_http_response_error(res, 503, "out of memory");
    return;
  }
  herald_http_response_json(res, 202, answer);
  json_decref(answer);
}

int herald_ingest_routes(HeraldIngest *in, HeraldHttpRouter *router, HeraldError *err) {
  int rc;
  if ((rc = herald_http_router_add(router, "POST", "/v1/apps/{app}/events", handle_put_events, in, err)) ||
      (rc = herald_http_router_add(router, "POST", "/v1/apps/{app}/webhooks/status", handle_status, in, err)))
    return rc;
  return kHeraldOk;
}
