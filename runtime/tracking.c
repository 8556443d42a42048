/* Tracking tokens (HMAC-SHA256 over a compact binary payload) and the /t/ handlers. */
#include "runtime/tracking.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { kVersion = 1, kMacLen = 16 };

/* Payload: version(1) kind(1) run(8, big-endian) treatment(4) then app, campaign, endpoint,
 * message_id, url, each as length(2, big-endian) + bytes. */
enum { kFixedLen = 1 + 1 + 8 + 4, kStrings = 5 };
enum { kPayloadMax = kFixedLen + kStrings * 2 + 4 * HERALD_TRACKING_ID_MAX + HERALD_TRACKING_URL_MAX };

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t b64_encode(const unsigned char *in, size_t len, char *out) {
  size_t o = 0, i = 0;
  for (; i + 2 < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = b64url[v >> 18];
    out[o++] = b64url[(v >> 12) & 63];
    out[o++] = b64url[(v >> 6) & 63];
    out[o++] = b64url[v & 63];
  }
  if (len - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    out[o++] = b64url[v >> 18];
    out[o++] = b64url[(v >> 12) & 63];
  } else if (len - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    out[o++] = b64url[v >> 18];
    out[o++] = b64url[(v >> 12) & 63];
    out[o++] = b64url[(v >> 6) & 63];
  }
  out[o] = '\0';
  return o;
}

static int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

/* Decodes unpadded base64url; returns the length or -1 on a bad character, a bad length or
 * non-zero trailing bits (so each payload has exactly one spelling). */
static long b64_decode(const char *in, size_t len, unsigned char *out, size_t cap) {
  if (len % 4 == 1) return -1;
  size_t need = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
  if (need > cap) return -1;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < len; i++) {
    int v = b64_value((unsigned char)in[i]);
    if (v < 0) return -1;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (unsigned char)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  if (acc != 0) return -1;
  return (long)o;
}

/* HMAC-SHA256 of data. ctx (may be NULL) is an HMAC context keyed with key once: restarting
 * it reuses the digest states of the key, where the one-shot HMAC() fetches the algorithm and
 * sets the key up again on every call, several times the work for a short payload. */
static int mac(const HeraldTrackingKey *key, EVP_MAC_CTX *ctx, const unsigned char *data,
               size_t len, unsigned char out[32]) {
  size_t done = 0;
  if (ctx != NULL && EVP_MAC_init(ctx, NULL, 0, NULL) == 1 && EVP_MAC_update(ctx, data, len) == 1 &&
      EVP_MAC_final(ctx, out, &done, 32) == 1 && done == 32)
    return 0;
  /* no context, or it failed: the one-shot form */
  unsigned int n = 0;
  if (HMAC(EVP_sha256(), key->bytes, (int)key->len, data, len, out, &n) == NULL || n != 32) return -1;
  return 0;
}

/* An HMAC-SHA256 context keyed with key, or NULL (then each MAC is computed one-shot). */
static EVP_MAC_CTX *mac_context(const HeraldTrackingKey *key) {
  EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *ctx = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
  EVP_MAC_free(hmac); /* the context holds its own reference */
  if (ctx == NULL) return NULL;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
  if (EVP_MAC_init(ctx, key->bytes, key->len, params) != 1) {
    EVP_MAC_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

int herald_tracking_key_from_secret(const char *secret, HeraldTrackingKey *key, HeraldError *err) {
  size_t len = secret ? strlen(secret) : 0;
  if (len < 16)
    return herald_error_set(err, kHeraldInvalid, "tracking key: needs at least 16 bytes");
  if (len > HERALD_TRACKING_KEY_MAX)
    return herald_error_set(err, kHeraldInvalid, "tracking key: at most %d bytes", HERALD_TRACKING_KEY_MAX);
  memcpy(key->bytes, secret, len);
  key->len = len;
  return kHeraldOk;
}

int herald_tracking_key_load(HeraldStore *store, HeraldTrackingKey *key, HeraldError *err) {
  const char *env = getenv("HERALD_TRACKING_KEY");
  if (env != NULL && *env) {
    if (herald_tracking_key_from_secret(env, key, err) != kHeraldOk) {
      herald_error_prefix(err, "$HERALD_TRACKING_KEY: ");
      return err ? (int)err->code : kHeraldInvalid;
    }
    return kHeraldOk;
  }
  if (store == NULL) return herald_error_set(err, kHeraldInvalid, "tracking key: no database and no $HERALD_TRACKING_KEY");
  unsigned char fresh[32];
  if (RAND_bytes(fresh, sizeof fresh) != 1)
    return herald_error_set(err, kHeraldIo, "tracking key: no random bytes from the system");
  /* Row 1 is the key; INSERT OR IGNORE makes concurrent first uses agree on one. */
  sqlite3_stmt *ins = herald_store_stmt(store,
      "INSERT OR IGNORE INTO tracking_keys(id, secret, created_at)"
      " VALUES (1, ?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))", err);
  if (ins == NULL) return err ? (int)err->code : kHeraldStore;
  sqlite3_bind_blob(ins, 1, fresh, sizeof fresh, SQLITE_TRANSIENT);
  int rc = sqlite3_step(ins);
  sqlite3_reset(ins);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "storing the tracking key");
  sqlite3_stmt *sel = herald_store_stmt(store, "SELECT secret FROM tracking_keys WHERE id = 1", err);
  if (sel == NULL) return err ? (int)err->code : kHeraldStore;
  rc = sqlite3_step(sel);
  if (rc != SQLITE_ROW) {
    sqlite3_reset(sel);
    return herald_store_fail(store, err, "reading the tracking key");
  }
  int n = sqlite3_column_bytes(sel, 0);
  const void *blob = sqlite3_column_blob(sel, 0);
  if (n < 16 || n > HERALD_TRACKING_KEY_MAX || blob == NULL) {
    sqlite3_reset(sel);
    return herald_error_set(err, kHeraldStore, "tracking key in the database has a bad length (%d)", n);
  }
  memcpy(key->bytes, blob, (size_t)n);
  key->len = (size_t)n;
  sqlite3_reset(sel);
  return kHeraldOk;
}

static int put_string(unsigned char *p, size_t *o, const char *s) {
  size_t len = s ? strlen(s) : 0;
  p[(*o)++] = (unsigned char)(len >> 8);
  p[(*o)++] = (unsigned char)len;
  if (len) memcpy(p + *o, s, len);
  *o += len;
  return 0;
}

/* A redirect target: http(s), no whitespace or control characters. */
static int url_ok(const char *url) {
  if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0) return 0;
  for (const unsigned char *p = (const unsigned char *)url; *p; p++)
    if (*p <= 0x20 || *p == 0x7f) return 0;
  return 1;
}

static int check_id(const char *v, const char *name, int required, HeraldError *err) {
  if (v == NULL || !*v) {
    if (required) return herald_error_set(err, kHeraldInvalid, "tracking token: %s is required", name);
    return kHeraldOk;
  }
  if (strlen(v) > HERALD_TRACKING_ID_MAX)
    return herald_error_set(err, kHeraldInvalid, "tracking token: %s is longer than %d bytes", name,
                            HERALD_TRACKING_ID_MAX);
  return kHeraldOk;
}

int herald_tracking_mint(const HeraldTrackingKey *key, const HeraldTrackingToken *t, char **out,
                         HeraldError *err) {
  if (t->kind != kHeraldTrackOpen && t->kind != kHeraldTrackClick && t->kind != kHeraldTrackUnsubscribe)
    return herald_error_set(err, kHeraldInvalid, "tracking token: unknown kind");
  int rc;
  if ((rc = check_id(t->app, "app", 1, err)) || (rc = check_id(t->campaign, "campaign", 1, err)) ||
      (rc = check_id(t->endpoint, "endpoint", 1, err)) ||
      (rc = check_id(t->message_id, "message_id", 0, err)))
    return rc;
  if (t->kind == kHeraldTrackClick) {
    if (t->url == NULL || !*t->url)
      return herald_error_set(err, kHeraldInvalid, "tracking token: url is required for a click");
    if (strlen(t->url) > HERALD_TRACKING_URL_MAX)
      return herald_error_set(err, kHeraldInvalid, "tracking token: url is longer than %d bytes",
                              HERALD_TRACKING_URL_MAX);
    if (!url_ok(t->url))
      return herald_error_set(err, kHeraldInvalid,
                              "tracking token: url must be http(s) without spaces or control characters");
  } else if (t->url != NULL && *t->url) {
    return herald_error_set(err, kHeraldInvalid, "tracking token: only clicks carry a url");
  }
  unsigned char p[kPayloadMax + kMacLen];
  size_t o = 0;
  p[o++] = kVersion;
  p[o++] = (unsigned char)t->kind;
  uint64_t run = (uint64_t)t->run;
  for (int i = 7; i >= 0; i--) p[o++] = (unsigned char)(run >> (i * 8));
  uint32_t tr = (uint32_t)t->treatment;
  for (int i = 3; i >= 0; i--) p[o++] = (unsigned char)(tr >> (i * 8));
  put_string(p, &o, t->app);
  put_string(p, &o, t->campaign);
  put_string(p, &o, t->endpoint);
  put_string(p, &o, t->message_id);
  put_string(p, &o, t->kind == kHeraldTrackClick ? t->url : NULL);
  unsigned char m[32];
  if (mac(key, NULL, p, o, m) != 0) return herald_error_set(err, kHeraldIo, "tracking token: HMAC failed");
  memcpy(p + o, m, kMacLen);
  o += kMacLen;
  char *text = malloc(o / 3 * 4 + 5);
  if (text == NULL) return herald_error_set(err, kHeraldNoMemory, "tracking token: out of memory");
  b64_encode(p, o, text);
  *out = text;
  return kHeraldOk;
}

static int get_string(const unsigned char *p, size_t len, size_t *o, size_t max, char **dst) {
  if (*o + 2 > len) return -1;
  size_t n = (size_t)p[*o] << 8 | p[*o + 1];
  *o += 2;
  if (n > max || *o + n > len) return -1;
  memcpy(*dst, p + *o, n);
  if (memchr(*dst, '\0', n) != NULL) return -1;
  (*dst)[n] = '\0';
  *o += n;
  *dst += n + 1;
  return 0;
}

static int verify(const HeraldTrackingKey *key, EVP_MAC_CTX *ctx, const char *text, size_t len,
                  HeraldTrackingKind kind, HeraldTrackingParsed *out, HeraldError *err) {
  unsigned char p[kPayloadMax + kMacLen];
  if (len > (kPayloadMax + kMacLen) / 3 * 4 + 4)
    return herald_error_set(err, kHeraldInvalid, "invalid tracking token");
  long n = b64_decode(text, len, p, sizeof p);
  if (n < kFixedLen + kStrings * 2 + kMacLen)
    return herald_error_set(err, kHeraldInvalid, "invalid tracking token");
  size_t plen = (size_t)n - kMacLen;
  unsigned char m[32];
  if (mac(key, ctx, p, plen, m) != 0) return herald_error_set(err, kHeraldIo, "tracking token: HMAC failed");
  if (CRYPTO_memcmp(m, p + plen, kMacLen) != 0)
    return herald_error_set(err, kHeraldInvalid, "invalid tracking token");
  /* Signed by us from here on; the checks below guard against our own older formats. */
  if (p[0] != kVersion || p[1] != (unsigned char)kind)
    return herald_error_set(err, kHeraldInvalid, "invalid tracking token");
  HeraldTrackingToken *t = &out->token;
  memset(t, 0, sizeof *t);
  t->kind = kind;
  uint64_t run = 0;
  for (int i = 0; i < 8; i++) run = run << 8 | p[2 + i];
  uint32_t tr = 0;
  for (int i = 0; i < 4; i++) tr = tr << 8 | p[10 + i];
  t->run = (int64_t)run;
  t->treatment = (int32_t)tr;
  size_t o = kFixedLen;
  char *dst = out->strings;
  const char **fields[kStrings] = {&t->app, &t->campaign, &t->endpoint, &t->message_id, &t->url};
  for (int i = 0; i < kStrings; i++) {
    *fields[i] = dst;
    size_t max = i == 4 ? HERALD_TRACKING_URL_MAX : HERALD_TRACKING_ID_MAX;
    if (get_string(p, plen, &o, max, &dst) != 0)
      return herald_error_set(err, kHeraldInvalid, "invalid tracking token");
  }
  if (o != plen) return herald_error_set(err, kHeraldInvalid, "invalid tracking token");
  if (kind == kHeraldTrackClick) {
    if (!url_ok(t->url)) return herald_error_set(err, kHeraldInvalid, "invalid tracking token");
  } else {
    t->url = NULL;
  }
  return kHeraldOk;
}

int herald_tracking_verify(const HeraldTrackingKey *key, const char *text, size_t len,
                           HeraldTrackingKind kind, HeraldTrackingParsed *out, HeraldError *err) {
  return verify(key, NULL, text, len, kind, out, err);
}

/* Handlers ---------------------------------------------------------------------------------- */

struct HeraldTracker {
  HeraldTrackingKey key;
  EVP_MAC_CTX *mac;  /* keyed once, for every token the handlers verify (may be NULL) */
  HeraldTrackingRecorder recorder;
  void *recorder_ctx;
  HeraldTrackingCounts counts;
};

HeraldTracker *herald_tracker_new(const HeraldTrackingKey *key) {
  HeraldTracker *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  t->key = *key;
  t->mac = mac_context(key);
  return t;
}

void herald_tracker_free(HeraldTracker *t) {
  if (t == NULL) return;
  EVP_MAC_CTX_free(t->mac);
  OPENSSL_cleanse(&t->key, sizeof t->key);
  free(t);
}

void herald_tracker_set_recorder(HeraldTracker *t, HeraldTrackingRecorder fn, void *ctx) {
  t->recorder = fn;
  t->recorder_ctx = ctx;
}

void herald_tracker_counts(const HeraldTracker *t, HeraldTrackingCounts *out) { *out = t->counts; }

/* A transparent 1x1 GIF89a. */
static const unsigned char pixel_gif[] = {
  'G', 'I', 'F', '8', '9', 'a', 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00,  /* screen, 2 colours */
  0x00, 0x00, 0x00, 0xff, 0xff, 0xff,                                      /* colour table */
  0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00,                          /* index 0 transparent */
  0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00,              /* image 1x1 */
  0x02, 0x02, 0x44, 0x01, 0x00,                                            /* LZW data */
  0x3b,
};

static void no_store(HeraldHttpResponse *res) {
  herald_http_response_header(res, "Cache-Control", "no-store, no-cache, must-revalidate, private");
  herald_http_response_header(res, "Pragma", "no-cache");
}

/* Verifies the {token} of req; answers 400 and counts a rejection when it is not ours. */
static int take_token(HeraldTracker *t, const HeraldHttpRequest *req, HeraldHttpResponse *res,
                      HeraldTrackingKind kind, HeraldTrackingParsed *parsed) {
  const char *text = herald_http_request_param(req, "token");
  if (text == NULL ||
      verify(&t->key, t->mac, text, strlen(text), kind, parsed, NULL) != kHeraldOk) {
    t->counts.rejected++;
    herald_http_response_error(res, 400, "invalid tracking token");
    return -1;
  }
  return 0;
}

/* HEAD is served by the GET handlers (the router's fallback) and answered as GET without the
 * body. Link scanners and proxies send it before or instead of a person's visit: it must not
 * count as an open or a click, which feed the reports, the KPIs and the A/B winner. */
static int is_head(const HeraldHttpRequest *req) { return strcmp(req->method, "HEAD") == 0; }

static void record(HeraldTracker *t, const HeraldHttpRequest *req, HeraldTrackingKind kind,
                   const HeraldTrackingToken *token) {
  if (t->recorder == NULL) return;
  HeraldTrackingHit hit = {kind, token, herald_http_request_header(req, "User-Agent"), req->request_id};
  if (t->recorder(t->recorder_ctx, &hit) != 0) t->counts.record_failures++;
}

static void handle_open(void *ctx, const HeraldHttpRequest *req, HeraldHttpResponse *res) {
  HeraldTracker *t = ctx;
  HeraldTrackingParsed parsed;
  if (take_token(t, req, res, kHeraldTrackOpen, &parsed) != 0) return;
  if (!is_head(req)) {
    t->counts.opens++;
    record(t, req, kHeraldTrackOpen, &parsed.token);
  }
  no_store(res);
  herald_http_response_body(res, pixel_gif, sizeof pixel_gif, "image/gif");
}

static void handle_click(void *ctx, const HeraldHttpRequest *req, HeraldHttpResponse *res) {
  HeraldTracker *t = ctx;
  HeraldTrackingParsed parsed;
  if (take_token(t, req, res, kHeraldTrackClick, &parsed) != 0) return;
  if (!is_head(req)) {
    t->counts.clicks++;
    record(t, req, kHeraldTrackClick, &parsed.token);
  }
  herald_http_response_status(res, 302);
  herald_http_response_header(res, "Location", parsed.token.url);
  herald_http_response_header(res, "Cache-Control", "no-store");
}

static const char unsubscribe_form[] =
  "<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head>"
  "<body><form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">"
  "<p>Stop receiving these messages?</p><button type=\"submit\">Unsubscribe</button></form>"
  "</body></html>";
static const char unsubscribed_page[] =
  "<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head>"
  "<body><p>You are unsubscribed.</p></body></html>";

/* GET shows a confirmation form and changes nothing: mail scanners follow links. */
static void handle_unsubscribe_page(void *ctx, const HeraldHttpRequest *req, HeraldHttpResponse *res) {
  HeraldTracker *t = ctx;
  HeraldTrackingParsed parsed;
  if (take_token(t, req, res, kHeraldTrackUnsubscribe, &parsed) != 0) return;
  t->counts.unsubscribe_pages++;
  no_store(res);
  herald_http_response_body(res, unsubscribe_form, sizeof unsubscribe_form - 1, "text/html; charset=utf-8");
}

/* RFC 8058 one-click: POST with List-Unsubscribe=One-Click, form-urlencoded or multipart. */
static int one_click_body(const HeraldHttpRequest *req) {
  const char *b = req->body;
  if (strstr(b, "List-Unsubscribe=One-Click") != NULL) return 1;
  const char *ct = herald_http_request_header(req, "Content-Type");
  if (ct != NULL && strncasecmp(ct, "multipart/form-data", 19) == 0) {
    const char *name = strstr(b, "name=\"List-Unsubscribe\"");
    return name != NULL && strstr(name, "One-Click") != NULL;
  }
  return 0;
}

static void handle_unsubscribe(void *ctx, const HeraldHttpRequest *req, HeraldHttpResponse *res) {
  HeraldTracker *t = ctx;
  HeraldTrackingParsed parsed;
  if (take_token(t, req, res, kHeraldTrackUnsubscribe, &parsed) != 0) return;
  if (!one_click_body(req)) {
    herald_http_response_error(res, 400, "the body must be List-Unsubscribe=One-Click (RFC 8058)");
    return;
  }
  t->counts.unsubscribes++;
  record(t, req, kHeraldTrackUnsubscribe, &parsed.token);
  no_store(res);
  herald_http_response_body(res, unsubscribed_page, sizeof unsubscribed_page - 1, "text/html; charset=utf-8");
}

int herald_tracker_routes(HeraldTracker *t, HeraldHttpRouter *router, HeraldError *err) {
  int rc;
  if ((rc = herald_http_router_add(router, "GET", "/t/o/{token}", handle_open, t, err)) ||
      (rc = herald_http_router_add(router, "GET", "/t/c/{token}", handle_click, t, err)) ||
      (rc = herald_http_router_add(router, "GET", "/t/u/{token}", handle_unsubscribe_page, t, err)) ||
      (rc = herald_http_router_add(router, "POST", "/t/u/{token}", handle_unsubscribe, t, err)))
    return rc;
  return kHeraldOk;
}
