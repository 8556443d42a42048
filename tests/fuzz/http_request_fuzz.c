/* libFuzzer target for the request path: bytes -> HTTP session (http-parser, limits, router,
 * tracking handlers, PutEvents and status webhooks on a real store, JSON errors) -> response
 * bytes. The input is cut into reads whose sizes
 * come from the input itself, so requests split at every possible point are exercised.
 * Invariants checked: every output starts with a status line, and once closing the session
 * ignores further input. Build and run with tools/fuzz. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/http_server.h"
#include "runtime/ingest.h"
#include "runtime/tracking.h"

static HeraldHttpRouter *router;
static HeraldTracker *tracker;
static HeraldIngest *ingest;
static HeraldStore *store;

static HeraldStore *fuzz_store(void *arg, HeraldError *err) {
  (void)arg;
  (void)err;
  return store;
}

static void setup(void) {
  HeraldTrackingKey key;
  if (herald_tracking_key_from_secret("fuzz-key-0123456789abcdef", &key, NULL) != kHeraldOk) abort();
  if (herald_store_open(":memory:", &store, NULL) != kHeraldOk) abort();
  router = herald_http_router_new();
  tracker = herald_tracker_new(&key);
  ingest = herald_ingest_new(fuzz_store, NULL);
  if (router == NULL || tracker == NULL || ingest == NULL) abort();
  herald_tracker_set_recorder(tracker, herald_ingest_record_hit, ingest);
  if (herald_tracker_routes(tracker, router, NULL) != kHeraldOk) abort();
  if (herald_ingest_routes(ingest, router, NULL) != kHeraldOk) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (router == NULL) setup();
  HeraldHttpLimits limits;
  herald_http_limits_default(&limits);
  limits.max_body_bytes = 4096;
  limits.max_header_bytes = 2048;
  HeraldHttpStats stats;
  memset(&stats, 0, sizeof stats);
  HeraldHttpSession *s = herald_http_session_new(router, &limits, &stats);
  if (s == NULL) return 0;
  size_t pos = 0;
  while (pos < size) {
    size_t chunk = (size_t)(data[pos] % 64) + 1;
    pos++;
    if (chunk > size - pos) chunk = size - pos;
    int was_closing = herald_http_session_closing(s);
    if (herald_http_session_feed(s, (const char *)data + pos, chunk) != 0) break;
    size_t len;
    const char *out = herald_http_session_output(s, &len);
    if (was_closing && len > 0) abort();  /* nothing is answered after closing */
    if (len > 0 && (len < 12 || memcmp(out, "HTTP/1.1 ", 9) != 0)) abort();
    herald_http_session_take(s);
    pos += chunk;
  }
  if (herald_http_session_in_request(s)) herald_http_session_timeout(s);
  herald_http_session_free(s);
  return 0;
}
