/* HTTP/1.1 server on the libuv loop: a router of method + path patterns, a socket-free
 * protocol session per connection (requests parsed by http-parser, limits, keep-alive,
 * pipelining), and the TCP server that drives sessions with idle and slow-client timeouts.
 * Handlers run synchronously on the loop and fill a response; errors are Pinpoint-style JSON
 * bodies {"Message": ..., "RequestID": ...}. */
#ifndef HERALD_HTTP_SERVER_H
#define HERALD_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "runtime/error.h"

#define HERALD_HTTP_MAX_PARAMS 8
#define HERALD_HTTP_MAX_HEADERS 64
#define HERALD_HTTP_EVENTS_BODY_MAX (4u * 1024 * 1024) /* Pinpoint's PutEvents request cap */

typedef struct {
  const char *name;  /* as sent; compare case-insensitively */
  const char *value;
} HeraldHttpHeader;

typedef struct {
  const char *method;     /* "GET", "POST", ... */
  const char *path;       /* the target up to '?', percent-encoding kept */
  const char *query;      /* after '?', or NULL */
  const HeraldHttpHeader *headers;
  int header_count;
  const char *body;       /* NUL-terminated for convenience; body_len excludes the NUL */
  size_t body_len;
  const char *param_names[HERALD_HTTP_MAX_PARAMS]; /* "{name}" as in the pattern, braces kept */
  const char *param_values[HERALD_HTTP_MAX_PARAMS];
  int param_count;
  const char *request_id;
} HeraldHttpRequest;

/* Case-insensitive header lookup; NULL when absent. */
const char *herald_http_request_header(const HeraldHttpRequest *req, const char *name);
/* The value of {name} in the matched pattern, or NULL. */
const char *herald_http_request_param(const HeraldHttpRequest *req, const char *name);

typedef struct HeraldHttpResponse HeraldHttpResponse;

/* Default status is 200 with an empty body. Header names and values must not hold CR or LF
 * (refused with -1). Content-Length and Connection are set by the server. Set the body once:
 * a second call replaces the bytes but adds a second Content-Type. */
void herald_http_response_status(HeraldHttpResponse *res, int status);
int herald_http_response_header(HeraldHttpResponse *res, const char *name, const char *value);
int herald_http_response_body(HeraldHttpResponse *res, const void *data, size_t len,
                              const char *content_type);
/* A 4xx/5xx with the JSON body {"Message": message, "RequestID": <the request's id>}. */
void herald_http_response_error(HeraldHttpResponse *res, int status, const char *message);
/* status with body (a jansson json_t; NULL, as from a failed json_pack, is taken as out of
 * memory) serialised compactly as application/json; a 503 when it cannot be serialised. */
struct json_t;
void herald_http_response_json(HeraldHttpResponse *res, int status, const struct json_t *body);

typedef void (*HeraldHttpHandler)(void *ctx, const HeraldHttpRequest *req,
                                  HeraldHttpResponse *res);

typedef struct HeraldHttpRouter HeraldHttpRouter;

HeraldHttpRouter *herald_http_router_new(void);
void herald_http_router_free(HeraldHttpRouter *router);
/* Adds a route. pattern is an absolute path whose segments are literals or {name} (one whole
 * segment each), e.g. "/v1/apps/{app}/campaigns/{campaign}". A path that matches no pattern
 * is answered 404; one that matches only for other methods, 405 with Allow. HEAD is served by
 * the GET route without the body: a GET handler with side effects checks req->method. */
int herald_http_router_add(HeraldHttpRouter *router, const char *method, const char *pattern,
                           HeraldHttpHandler handler, void *ctx, HeraldError *err);

typedef struct {
  size_t max_header_bytes;      /* request line + headers (431 beyond) */
  size_t max_body_bytes;        /* 413 beyond */
  uint64_t idle_timeout_ms;     /* keep-alive connection with no request in progress */
  uint64_t request_timeout_ms;  /* from a request's first byte to its last (408 beyond) */
  int max_connections;          /* further connections are closed at once */
} HeraldHttpLimits;

void herald_http_limits_default(HeraldHttpLimits *limits);

/* The protocol of one connection without its socket (the server and the fuzz target share
 * it): bytes in, response bytes out. */
typedef struct HeraldHttpSession HeraldHttpSession;

typedef struct HeraldHttpStats HeraldHttpStats;

/* stats (may be NULL) counts the session's requests and errors. */
HeraldHttpSession *herald_http_session_new(HeraldHttpRouter *router, const HeraldHttpLimits *limits,
                                           HeraldHttpStats *stats);
void herald_http_session_free(HeraldHttpSession *session);
/* Parses data, answering every complete request in order. Returns 0, or -1 when out of
 * memory. After a protocol error or a request without keep-alive the session is closing:
 * further input is ignored. */
int herald_http_session_feed(HeraldHttpSession *session, const char *data, size_t len);
/* The response bytes produced so far; take them with herald_http_session_take. */
const char *herald_http_session_output(const HeraldHttpSession *session, size_t *len);
void herald_http_session_take(HeraldHttpSession *session);
int herald_http_session_closing(const HeraldHttpSession *session);
/* A request has started but not ended (what the request timeout watches). */
int herald_http_session_in_request(const HeraldHttpSession *session);
/* Answers the partial request with 408 and makes the session closing. */
void herald_http_session_timeout(HeraldHttpSession *session);

typedef struct HeraldHttpServer HeraldHttpServer;

struct HeraldHttpStats {
  uint64_t connections;      /* accepted */
  uint64_t open;             /* open now */
  uint64_t requests;         /* answered, errors included */
  uint64_t client_errors;    /* 4xx */
  uint64_t server_errors;    /* 5xx */
  uint64_t timeouts;
  uint64_t refused;          /* over max_connections */
};

/* Listens on host:port (port 0: any free port; see herald_http_server_port). The router must
 * outlive the server; closed(arg) runs once everything is closed after a stop. */
int herald_http_server_start(uv_loop_t *loop, const char *host, int port, HeraldHttpRouter *router,
                             const HeraldHttpLimits *limits, HeraldHttpServer **out,
                             HeraldError *err);
int herald_http_server_port(const HeraldHttpServer *server);
void herald_http_server_stats(const HeraldHttpServer *server, HeraldHttpStats *out);
/* Responses are written once per loop iteration, after every request that arrived in it was
 * handled: commit(arg) (when set) runs first, so a handler that queues durable work (tracking
 * hits, written in one transaction per iteration) has it committed before any answer leaves,
 * and a crash never answers a request whose effect was not stored. commit also runs before a
 * stop closes the connections. */
void herald_http_server_set_commit(HeraldHttpServer *server, void (*commit)(void *arg), void *arg);
/* Stops listening and closes every connection; the server frees itself when its handles are
 * closed (the loop must run), then calls closed(arg) (may be NULL). Call once. */
void herald_http_server_stop(HeraldHttpServer *server, void (*closed)(void *arg), void *arg);

#endif
