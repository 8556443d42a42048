/* HTTP/1.1 server.
 *
 * Three parts, each usable alone:
 * - the router: patterns split into segments once; a request path is split the same way and
 *   compared segment by segment, {name} segments capturing. Few routes, so a linear scan.
 * - the session: one connection's protocol. http-parser (Debian's libhttp-parser) calls back
 *   with pieces of the URL, headers and body; they are appended to one buffer with a NUL after
 *   each piece, so a complete request is a set of C strings into that buffer. Each complete
 *   request is routed and answered at once, in order, into an output buffer: pipelined
 *   requests get their responses in order and a whole read's worth goes out in one write.
 *   Limits are checked as bytes arrive (a body over the cap is refused from its
 *   Content-Length, before it is read). After an error the session closes: the request
 *   stream can no longer be trusted to be in sync.
 * - the server: libuv TCP, one session per connection, one timer per connection (idle between
 *   requests; a deadline from a request's first byte, so a slow client cannot hold a
 *   connection by trickling bytes), write backpressure (reading stops while more than
 *   kMaxPendingWrite bytes wait to be sent, so a client that pipelines without reading cannot
 *   grow our memory).
 *   Answers are held until the end of the loop iteration (a check handle): the connections
 *   read in the iteration wait on a list, the commit hook makes durable what their handlers
 *   queued (the iteration's tracking hits, in one transaction or the hit journal:
 *   runtime/ingest.h), and only then is each connection's output written, in one write per
 *   connection. So an answer never leaves before the work it acknowledges is durable, and a
 *   busy server commits less often, not more.
 *   A connection whose held output passes kMaxPendingWrite stops reading until it is written. */
#include "runtime/http_server.h"

#include "runtime/buffer.h"

#include <http_parser.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { kMaxSegments = 32, kMaxPendingWrite = 1 << 20, kReadBufSize = 64 * 1024 };

typedef HeraldBuf Buf;

static int buf_add(Buf *b, const void *data, size_t len) { return herald_buf_add(b, data, len); }

static int buf_add_str(Buf *b, const char *s) { return buf_add(b, s, strlen(s)); }

/* Appends v in decimal. */
static int buf_add_uint(Buf *b, uint64_t v) {
  char tmp[24];
  int n = 0;
  do {
    tmp[sizeof tmp - 1 - n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  return buf_add(b, tmp + sizeof tmp - n, (size_t)n);
}

/* Router ------------------------------------------------------------------------------------ */

typedef struct {
  char *method;
  char *pattern;
  char *segments[kMaxSegments]; /* into seg_store; "{x}" kept with braces */
  int nsegments;
  char *seg_store;
  HeraldHttpHandler handler;
  void *ctx;
} Route;

struct HeraldHttpRouter {
  Route *routes;
  int nroutes;
  uint64_t next_id;
  uint32_t id_prefix[3];
};

HeraldHttpRouter *herald_http_router_new(void) {
  HeraldHttpRouter *r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  /* Request ids only need to be unique, not secret: a random prefix per process + a counter. */
  if (uv_random(NULL, NULL, r->id_prefix, sizeof r->id_prefix, 0, NULL) != 0) {
    r->id_prefix[0] = (uint32_t)uv_hrtime();
    r->id_prefix[1] = (uint32_t)uv_os_getpid();
  }
  return r;
}

void herald_http_router_free(HeraldHttpRouter *r) {
  if (r == NULL) return;
  for (int i = 0; i < r->nroutes; i++) {
    free(r->routes[i].method);
    free(r->routes[i].pattern);
    free(r->routes[i].seg_store);
  }
  free(r->routes);
  free(r);
}

/* Splits path (modified in place) into segments at '/'; returns the count or -1 when more
 * than max. "/" has zero segments; empty segments ("//") are kept as "". */
static int split_path(char *path, char **segs, int max) {
  int n = 0;
  char *p = path;
  if (*p == '/') p++;
  if (*p == '\0') return 0;
  for (;;) {
    if (n == max) return -1;
    segs[n++] = p;
    char *slash = strchr(p, '/');
    if (slash == NULL) break;
    *slash = '\0';
    p = slash + 1;
  }
  return n;
}

int herald_http_router_add(HeraldHttpRouter *r, const char *method, const char *pattern,
                           HeraldHttpHandler handler, void *ctx, HeraldError *err) {
  if (method == NULL || pattern == NULL || pattern[0] != '/' || handler == NULL)
    return herald_error_set(err, kHeraldInvalid, "route: needs a method, a handler and a pattern starting with /");
  Route *routes = realloc(r->routes, (size_t)(r->nroutes + 1) * sizeof *routes);
  if (routes == NULL) return herald_error_set(err, kHeraldNoMemory, "route: out of memory");
  r->routes = routes;
  Route *rt = &routes[r->nroutes];
  memset(rt, 0, sizeof *rt);
  rt->method = strdup(method);
  rt->pattern = strdup(pattern);
  rt->seg_store = strdup(pattern);
  if (rt->method == NULL || rt->pattern == NULL || rt->seg_store == NULL) {
    free(rt->method);
    free(rt->pattern);
    free(rt->seg_store);
    return herald_error_set(err, kHeraldNoMemory, "route: out of memory");
  }
  rt->nsegments = split_path(rt->seg_store, rt->segments, kMaxSegments);
  int params = 0;
  for (int i = 0; i < rt->nsegments; i++) {
    const char *s = rt->segments[i];
    size_t len = strlen(s);
    int open = strchr(s, '{') != NULL, close = strchr(s, '}') != NULL;
    if (open || close) {
      if (len < 3 || s[0] != '{' || s[len - 1] != '}' || strchr(s + 1, '{') || strchr(s, '}') != s + len - 1) {
        free(rt->method);
        free(rt->pattern);
        free(rt->seg_store);
        return herald_error_set(err, kHeraldInvalid,
                                "route %s: a parameter must be a whole segment like {name}", pattern);
      }
      params++;
    }
  }
  if (rt->nsegments < 0 || params > HERALD_HTTP_MAX_PARAMS) {
    free(rt->method);
    free(rt->pattern);
    free(rt->seg_store);
    return herald_error_set(err, kHeraldInvalid, "route %s: too many segments or parameters", pattern);
  }
  rt->handler = handler;
  rt->ctx = ctx;
  r->nroutes++;
  return kHeraldOk;
}

static int route_match(const Route *rt, char **segs, int nsegs, HeraldHttpRequest *req) {
  if (rt->nsegments != nsegs) return 0;
  int np = 0;
  for (int i = 0; i < nsegs; i++) {
    const char *p = rt->segments[i];
    if (p[0] == '{') {
      if (segs[i][0] == '\0') return 0; /* a parameter is never empty */
      req->param_values[np++] = segs[i];
    } else if (strcmp(p, segs[i]) != 0) {
      return 0;
    }
  }
  /* names are filled only on a match; the store keeps "{name}" so skip the braces */
  np = 0;
  for (int i = 0; i < nsegs; i++) {
    const char *p = rt->segments[i];
    if (p[0] == '{') req->param_names[np++] = p;
  }
  req->param_count = np;
  return 1;
}

/* Request and response --------------------------------------------------------------------- */

const char *herald_http_request_header(const HeraldHttpRequest *req, const char *name) {
  for (int i = 0; i < req->header_count; i++)
    if (strcasecmp(req->headers[i].name, name) == 0) return req->headers[i].value;
  return NULL;
}

const char *herald_http_request_param(const HeraldHttpRequest *req, const char *name) {
  size_t len = strlen(name);
  for (int i = 0; i < req->param_count; i++) {
    const char *p = req->param_names[i]; /* "{name}" */
    if (strncmp(p + 1, name, len) == 0 && p[len + 1] == '}' && p[len + 2] == '\0')
      return req->param_values[i];
  }
  return NULL;
}

struct HeraldHttpResponse {
  int status;
  Buf headers; /* "Name: value\r\n"... */
  Buf body;
  const char *request_id;
  int failed;  /* out of memory while building: answered 500 instead */
};

void herald_http_response_status(HeraldHttpResponse *res, int status) {
  res->status = status >= 100 && status <= 599 ? status : 500;
}

static int has_crlf(const char *s) { return strpbrk(s, "\r\n") != NULL; }

int herald_http_response_header(HeraldHttpResponse *res, const char *name, const char *value) {
  if (name == NULL || value == NULL || has_crlf(name) || has_crlf(value) || strchr(name, ':'))
    return -1;
  Buf *h = &res->headers;
  if (buf_add_str(h, name) != 0 || buf_add(h, ": ", 2) != 0 || buf_add_str(h, value) != 0 ||
      buf_add(h, "\r\n", 2) != 0) {
    res->failed = 1;
    return -1;
  }
  return 0;
}

int herald_http_response_body(HeraldHttpResponse *res, const void *data, size_t len,
                              const char *content_type) {
  res->body.len = 0;
  if (content_type != NULL && herald_http_response_header(res, "Content-Type", content_type) != 0)
    return -1;
  if (buf_add(&res->body, data, len) != 0) {
    res->failed = 1;
    return -1;
  }
  return 0;
}

void herald_http_response_error(HeraldHttpResponse *res, int status, const char *message) {
  herald_http_response_status(res, status);
  res->headers.len = 0;
  json_t *o = json_pack("{s:s, s:s}", "Message", message ? message : "", "RequestID",
                        res->request_id ? res->request_id : "");
  char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (text == NULL) {
    res->failed = 1;
    return;
  }
  herald_http_response_body(res, text, strlen(text), "application/json");
  free(text);
}

void herald_http_response_json(HeraldHttpResponse *res, int status, const json_t *body) {
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  if (text == NULL) {
    herald_http_response_error(res, 503, "out of memory");
    return;
  }
  herald_http_response_status(res, status);
  herald_http_response_body(res, text, strlen(text), "application/json");
  free(text);
}

static void response_reset(HeraldHttpResponse *res, const char *request_id) {
  res->status = 200;
  res->headers.len = 0;
  res->body.len = 0;
  res->failed = 0;
  res->request_id = request_id;
}

static const char *status_reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return status < 400 ? "OK" : "Error";
  }
}

/* Session ---------------------------------------------------------------------------------- */

typedef struct {
  size_t name_off, value_off;
} HeaderOff;

struct HeraldHttpSession {
  http_parser parser;
  HeraldHttpRouter *router;
  HeraldHttpLimits limits;
  HeraldHttpStats *stats;
  Buf req;               /* the current request's pieces, each NUL-terminated */
  size_t url_off;
  HeaderOff headers[HERALD_HTTP_MAX_HEADERS];
  int nheaders;
  enum { kPieceNone, kPieceUrl, kPieceField, kPieceValue } piece;
  size_t header_bytes;
  size_t body_off, body_len;
  int in_request;
  int closing;
  int error_status;      /* set by a callback that stopped the parser over a limit */
  const char *error_message;
  Buf out;
  HeraldHttpResponse res;
  int oom;
};

static void session_count(HeraldHttpSession *s, int status) {
  if (s->stats == NULL) return;
  s->stats->requests++;
  if (status >= 500) s->stats->server_errors++;
  else if (status >= 400) s->stats->client_errors++;
}

/* Writes the low `digits` hex digits of v; returns the end. */
static char *put_hex(char *p, uint64_t v, int digits) {
  static const char hex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; i--) {
    p[i] = hex[v & 15];
    v >>= 4;
  }
  return p + digits;
}

/* A UUID-shaped id, 8-4-4-4-12 hex digits: the random prefix, then the counter. Formatted by
 * hand: every request makes one. */
static void make_request_id(HeraldHttpRouter *r, char out[40]) {
  uint64_t n = ++r->next_id;
  char *p = put_hex(out, r->id_prefix[0], 8);
  *p++ = '-';
  p = put_hex(p, r->id_prefix[1] & 0xffff, 4);
  *p++ = '-';
  *p++ = '4';
  p = put_hex(p, (r->id_prefix[1] >> 16) & 0xfff, 3);
  *p++ = '-';
  p = put_hex(p, (r->id_prefix[2] & 0x3fff) | 0x8000, 4);
  *p++ = '-';
  p = put_hex(p, n & 0xffffffffffffULL, 12);
  *p = '\0';
}

/* Serialises res into the output buffer. */
static void session_emit(HeraldHttpSession *s, HeraldHttpResponse *res, int head_only) {
  if (res->failed) {
    /* The handler ran out of memory: answer something small that needs no allocation. */
    res->status = 500;
    res->headers.len = 0;
    res->body.len = 0;
  }
  Buf *o = &s->out;
  const char *connection = s->closing ? "Connection: close\r\n"
                           : (s->parser.http_major == 1 && s->parser.http_minor == 0)
                               ? "Connection: keep-alive\r\n"
                               : "";
  /* pieces appended one by one (no printf: this runs for every answer) */
  int rc = buf_add(o, "HTTP/1.1 ", 9) || buf_add_uint(o, (uint64_t)res->status) ||
           buf_add(o, " ", 1) || buf_add_str(o, status_reason(res->status)) ||
           buf_add(o, "\r\n", 2);
  if (rc == 0 && res->headers.len) rc = buf_add(o, res->headers.data, res->headers.len);
  if (rc == 0 && res->request_id)
    rc = buf_add(o, "x-amzn-RequestId: ", 18) || buf_add_str(o, res->request_id) ||
         buf_add(o, "\r\n", 2);
  if (rc == 0)
    rc = buf_add(o, "Content-Length: ", 16) || buf_add_uint(o, res->body.len) ||
         buf_add(o, "\r\n", 2) || buf_add_str(o, connection) || buf_add(o, "\r\n", 2);
  if (rc == 0 && !head_only && res->body.len) rc = buf_add(o, res->body.data, res->body.len);
  if (rc != 0) s->oom = 1;
  session_count(s, res->status);
}

static void session_error(HeraldHttpSession *s, int status, const char *message) {
  char id[40];
  make_request_id(s->router, id);
  s->closing = 1;
  response_reset(&s->res, id);
  herald_http_response_error(&s->res, status, message);
  session_emit(s, &s->res, 0);
  s->in_request = 0;
}

/* Ends the piece being collected with its NUL. */
static int end_piece(HeraldHttpSession *s) {
  if (s->piece == kPieceNone) return 0;
  s->piece = kPieceNone;
  return buf_add(&s->req, "", 1);
}

static int add_header_bytes(HeraldHttpSession *s, size_t n) {
  s->header_bytes += n;
  if (s->header_bytes > s->limits.max_header_bytes) {
    s->error_status = 431;
    s->error_message = "request line and headers exceed the size limit";
    return 1;
  }
  return 0;
}

static int on_message_begin(http_parser *p) {
  HeraldHttpSession *s = p->data;
  s->req.len = 0;
  s->nheaders = 0;
  s->piece = kPieceNone;
  s->header_bytes = 0;
  s->body_len = 0;
  s->body_off = 0;
  s->url_off = 0;
  s->in_request = 1;
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  HeraldHttpSession *s = p->data;
  if (add_header_bytes(s, len)) return 1;
  if (s->piece != kPieceUrl) {
    s->piece = kPieceUrl;
    s->url_off = s->req.len;
  }
  if (buf_add(&s->req, at, len) != 0) return s->oom = 1;
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  HeraldHttpSession *s = p->data;
  if (add_header_bytes(s, len)) return 1;
  if (s->piece != kPieceField) {
    if (end_piece(s) != 0) return s->oom = 1;
    if (s->nheaders == HERALD_HTTP_MAX_HEADERS) {
      s->error_status = 431;
      s->error_message = "too many headers";
      return 1;
    }
    s->piece = kPieceField;
    s->headers[s->nheaders].name_off = s->req.len;
    s->headers[s->nheaders].value_off = (size_t)-1;
    s->nheaders++;
  }
  if (buf_add(&s->req, at, len) != 0) return s->oom = 1;
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  HeraldHttpSession *s = p->data;
  if (add_header_bytes(s, len)) return 1;
  if (s->piece != kPieceValue) {
    if (end_piece(s) != 0) return s->oom = 1;
    s->piece = kPieceValue;
    s->headers[s->nheaders - 1].value_off = s->req.len;
  }
  if (buf_add(&s->req, at, len) != 0) return s->oom = 1;
  return 0;
}

/* A client that sends "Expect: 100-continue" waits for this before its body (curl a second,
 * then sends anyway). It goes out only for a body that will be read: one over the limit is
 * refused with 413 instead, unread. It takes its place in the session's output after the
 * answers to earlier requests, as RFC 9110 wants. */
static const char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";

static int expects_continue(HeraldHttpSession *s, const http_parser *p) {
  if (p->http_major != 1 || p->http_minor < 1) return 0; /* HTTP/1.0 knows no 100 */
  if (!(p->flags & F_CHUNKED) && !((p->flags & F_CONTENTLENGTH) && p->content_length > 0))
    return 0;
  const char *base = s->req.data;
  for (int i = 0; i < s->nheaders; i++)
    if (strcasecmp(base + s->headers[i].name_off, "Expect") == 0 &&
        strcasecmp(base + s->headers[i].value_off, "100-continue") == 0)
      return 1;
  return 0;
}

static int on_headers_complete(http_parser *p) {
  HeraldHttpSession *s = p->data;
  if (end_piece(s) != 0) return s->oom = 1;
  /* A field without a value (the parser allows "Name:" with nothing) gets "". */
  for (int i = 0; i < s->nheaders; i++) {
    if (s->headers[i].value_off == (size_t)-1) {
      s->headers[i].value_off = s->req.len;
      if (buf_add(&s->req, "", 1) != 0) return s->oom = 1;
    }
  }
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > s->limits.max_body_bytes) {
    s->error_status = 413;
    s->error_message = "request body exceeds the size limit";
    return -1; /* an error (1 would mean "no body"): the body is never read */
  }
  s->body_off = s->req.len;
  if (expects_continue(s, p) && buf_add(&s->out, kContinue, sizeof kContinue - 1) != 0)
    return s->oom = 1;
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  HeraldHttpSession *s = p->data;
  if (s->body_len + len > s->limits.max_body_bytes) {
    s->error_status = 413;
    s->error_message = "request body exceeds the size limit";
    return 1;
  }
  if (buf_add(&s->req, at, len) != 0) return s->oom = 1;
  s->body_len += len;
  return 0;
}

/* Routes the complete request and answers it. */
static int on_message_complete(http_parser *p) {
  HeraldHttpSession *s = p->data;
  if (buf_add(&s->req, "", 1) != 0) return s->oom = 1; /* NUL after the body */
  char *base = s->req.data;
  HeraldHttpHeader headers[HERALD_HTTP_MAX_HEADERS];
  for (int i = 0; i < s->nheaders; i++) {
    headers[i].name = base + s->headers[i].name_off;
    headers[i].value = base + s->headers[i].value_off;
  }
  char id[40];
  make_request_id(s->router, id);
  HeraldHttpRequest req;
  memset(&req, 0, sizeof req);
  req.method = http_method_str((enum http_method)p->method);
  req.headers = headers;
  req.header_count = s->nheaders;
  req.body = base + s->body_off;
  req.body_len = s->body_len;
  req.request_id = id;
  if (!http_should_keep_alive(p)) s->closing = 1;
  s->in_request = 0;

  /* Split the target: the path (split again into segments for routing) and the query. */
  char *url = base + s->url_off;
  char *q = strchr(url, '?');
  if (q != NULL) {
    *q = '\0';
    req.query = q + 1;
  }
  char *hash = strchr(url, '#');
  if (hash != NULL) *hash = '\0';
  req.path = url;
  response_reset(&s->res, id);
  int head_only = p->method == HTTP_HEAD;

  if (url[0] != '/') {
    herald_http_response_error(&s->res, 400, "the request target must be an absolute path");
    session_emit(s, &s->res, head_only);
    return s->closing; /* stop after a response that closes the connection */
  }
  char path_copy[8192];
  size_t plen = strlen(url);
  char *segs[kMaxSegments];
  int nsegs = -1;
  if (plen < sizeof path_copy) {
    memcpy(path_copy, url, plen + 1);
    nsegs = split_path(path_copy, segs, kMaxSegments);
  }
  const char *method = req.method;
  Route *found = NULL;
  char allow[128] = "";
  if (nsegs >= 0) {
    for (int pass = 0; pass < 2 && found == NULL; pass++) {
      /* HEAD falls back to the GET route on the second pass. */
      const char *m = pass == 0 ? method : (head_only ? "GET" : NULL);
      if (m == NULL) break;
      for (int i = 0; i < s->router->nroutes; i++) {
        Route *rt = &s->router->routes[i];
        HeraldHttpRequest probe = req;
        if (!route_match(rt, segs, nsegs, &probe)) continue;
        if (strcmp(rt->method, m) == 0) {
          found = rt;
          req = probe;
          break;
        }
        if (pass == 0 && strlen(allow) + strlen(rt->method) + 3 < sizeof allow &&
            strstr(allow, rt->method) == NULL) {
          if (allow[0]) strcat(allow, ", ");
          strcat(allow, rt->method);
        }
      }
    }
  }
  if (found != NULL) {
    found->handler(found->ctx, &req, &s->res);
  } else if (allow[0]) {
    char msg[192];
    snprintf(msg, sizeof msg, "method %s is not allowed here (allowed: %s)", method, allow);
    herald_http_response_error(&s->res, 405, msg);
    herald_http_response_header(&s->res, "Allow", allow);
  } else {
    herald_http_response_error(&s->res, 404, "no such resource");
  }
  session_emit(s, &s->res, head_only);
  return s->closing; /* stop after a response that closes the connection */
}

static const http_parser_settings parser_settings = {
  .on_message_begin = on_message_begin,
  .on_url = on_url,
  .on_header_field = on_header_field,
  .on_header_value = on_header_value,
  .on_headers_complete = on_headers_complete,
  .on_body = on_body,
  .on_message_complete = on_message_complete,
};

void herald_http_limits_default(HeraldHttpLimits *l) {
  l->max_header_bytes = 16 * 1024;
  l->max_body_bytes = HERALD_HTTP_EVENTS_BODY_MAX;
  l->idle_timeout_ms = 60 * 1000;
  l->request_timeout_ms = 30 * 1000;
  l->max_connections = 10000;
}

HeraldHttpSession *herald_http_session_new(HeraldHttpRouter *router, const HeraldHttpLimits *limits,
                                           HeraldHttpStats *stats) {
  HeraldHttpSession *s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  s->router = router;
  if (limits) s->limits = *limits; else herald_http_limits_default(&s->limits);
  s->stats = stats;
  http_parser_init(&s->parser, HTTP_REQUEST);
  s->parser.data = s;
  return s;
}

void herald_http_session_free(HeraldHttpSession *s) {
  if (s == NULL) return;
  free(s->req.data);
  free(s->out.data);
  free(s->res.headers.data);
  free(s->res.body.data);
  free(s);
}

int herald_http_session_feed(HeraldHttpSession *s, const char *data, size_t len) {
  if (s->closing || len == 0) return s->oom ? -1 : 0;
  size_t done = http_parser_execute(&s->parser, &parser_settings, data, len);
  if (s->oom) return -1;
  if (s->closing) return 0; /* a request without keep-alive was answered; the rest is ignored */
  enum http_errno e = HTTP_PARSER_ERRNO(&s->parser);
  if (s->error_status) {
    session_error(s, s->error_status, s->error_message);
  } else if (e == HPE_HEADER_OVERFLOW) {
    session_error(s, 431, "request line and headers exceed the size limit");
  } else if (e != HPE_OK) {
    char msg[160];
    snprintf(msg, sizeof msg, "malformed request: %s", http_errno_description(e));
    session_error(s, 400, msg);
  } else if (s->parser.upgrade) {
    session_error(s, 400, "protocol upgrades are not supported");
  } else if (done != len) {
    session_error(s, 400, "malformed request");
  }
  return s->oom ? -1 : 0;
}

const char *herald_http_session_output(const HeraldHttpSession *s, size_t *len) {
  *len = s->out.len;
  return s->out.data;
}

void herald_http_session_take(HeraldHttpSession *s) { s->out.len = 0; }

int herald_http_session_closing(const HeraldHttpSession *s) { return s->closing; }

int herald_http_session_in_request(const HeraldHttpSession *s) { return s->in_request; }

void herald_http_session_timeout(HeraldHttpSession *s) {
  if (s->closing) return;
  if (s->in_request) session_error(s, 408, "the request was not received in time");
  s->closing = 1;
}

/* Server ----------------------------------------------------------------------------------- */

typedef struct Conn Conn;

struct HeraldHttpServer {
  uv_loop_t *loop;
  uv_tcp_t listener;
  HeraldHttpRouter *router;
  HeraldHttpLimits limits;
  HeraldHttpStats stats;
  Conn *conns;
  Conn *held;      /* connections read in this loop iteration, their answers not yet written */
  uv_check_t writer; /* at the end of each iteration: commit, then write the held answers */
  void (*commit)(void *arg);
  void *commit_arg;
  int handles;     /* open libuv handles: the listener, the writer and two per connection */
  int stopping;
  void (*closed)(void *arg);
  void *closed_arg;
  char readbuf[kReadBufSize];
};

struct Conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  HeraldHttpServer *server;
  HeraldHttpSession *session;
  Conn *prev, *next;
  Conn *held_prev, *held_next; /* on the server's held list when held */
  int held;
  size_t pending_write;  /* bytes handed to uv_write and not yet written */
  int handles;           /* open libuv handles of this connection */
  int reading;
  int eof;               /* the client sent EOF: close once the answers are out */
  int closing;
  int timer_for_request; /* the timer holds the request deadline (else the idle timeout) */
};

typedef struct {
  uv_write_t req;
  Conn *conn;
  size_t len;
  char data[];
} WriteReq;

static void server_handle_closed(HeraldHttpServer *s) {
  if (--s->handles > 0) return;
  void (*closed)(void *) = s->closed;
  void *arg = s->closed_arg;
  free(s);
  if (closed) closed(arg);
}

static void conn_handle_closed(uv_handle_t *h) {
  Conn *c = h->data;
  HeraldHttpServer *s = c->server;
  if (--c->handles == 0) {
    herald_http_session_free(c->session);
    free(c);
  }
  server_handle_closed(s);
}

static void conn_unhold(Conn *c) {
  if (!c->held) return;
  c->held = 0;
  if (c->held_prev) c->held_prev->held_next = c->held_next; else c->server->held = c->held_next;
  if (c->held_next) c->held_next->held_prev = c->held_prev;
  c->held_prev = c->held_next = NULL;
}

static void conn_close(Conn *c) {
  if (c->closing) return;
  c->closing = 1;
  conn_unhold(c);
  HeraldHttpServer *s = c->server;
  if (c->prev) c->prev->next = c->next; else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->stats.open--;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void conn_resume(Conn *c) {
  if (c->reading || c->closing || c->eof) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
}

static void on_write(uv_write_t *req, int status) {
  WriteReq *w = (WriteReq *)req;
  Conn *c = w->conn;
  c->pending_write -= w->len;
  free(w);
  if (c->closing) return;
  if (status != 0) {
    conn_close(c);
    return;
  }
  /* a held connection has answers still to write: the end of the iteration closes it */
  if (c->pending_write == 0 && !c->held && (c->eof || herald_http_session_closing(c->session))) {
    conn_close(c);
    return;
  }
  if (c->pending_write < kMaxPendingWrite / 2 && !herald_http_session_closing(c->session))
    conn_resume(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  Conn *c = h->data;
  buf->base = c->server->readbuf;
  buf->len = sizeof c->server->readbuf;
}

/* Sends what the session produced: directly when the socket takes it, else queued. */
static void conn_flush(Conn *c) {
  size_t len;
  const char *out = herald_http_session_output(c->session, &len);
  if (len > 0) {
    size_t sent = 0;
    if (c->pending_write == 0) {
      uv_buf_t b = uv_buf_init((char *)out, (unsigned int)len);
      int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
      if (n > 0) sent = (size_t)n;
      else if (n != UV_EAGAIN && n < 0) {
        herald_http_session_take(c->session);
        conn_close(c);
        return;
      }
    }
    if (sent < len) {
      size_t rest = len - sent;
      WriteReq *w = malloc(sizeof *w + rest);
      if (w == NULL) {
        herald_http_session_take(c->session);
        conn_close(c);
        return;
      }
      w->conn = c;
      w->len = rest;
      memcpy(w->data, out + sent, rest);
      uv_buf_t b = uv_buf_init(w->data, (unsigned int)rest);
      if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        free(w);
        herald_http_session_take(c->session);
        conn_close(c);
        return;
      }
      c->pending_write += rest;
    }
    herald_http_session_take(c->session);
  }
  if (herald_http_session_closing(c->session)) {
    if (c->reading) {
      uv_read_stop((uv_stream_t *)&c->tcp);
      c->reading = 0;
    }
    if (c->pending_write == 0) conn_close(c);
    return;
  }
  if (c->eof) {
    /* the client half-closed after its last request: close once that answer is out */
    if (c->pending_write == 0) conn_close(c);
    return;
  }
  if (c->pending_write > kMaxPendingWrite) {
    if (c->reading) {
      uv_read_stop((uv_stream_t *)&c->tcp);
      c->reading = 0;
    }
  } else if (c->pending_write < kMaxPendingWrite / 2) {
    conn_resume(c); /* reading may have stopped while the answers were held */
  }
}

/* Puts c on the held list: its answers go out at the end of the iteration, after the commit. */
static void conn_hold(Conn *c) {
  HeraldHttpServer *s = c->server;
  if (!c->held) {
    c->held = 1;
    c->held_prev = NULL;
    c->held_next = s->held;
    if (s->held) s->held->held_prev = c;
    s->held = c;
  }
  size_t len;
  herald_http_session_output(c->session, &len);
  if (len > kMaxPendingWrite && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
}

/* Commits what the iteration's handlers queued, then writes every held answer. */
static void server_write_held(HeraldHttpServer *s) {
  if (s->held == NULL) return;
  if (s->commit) s->commit(s->commit_arg);
  while (s->held != NULL) {
    Conn *c = s->held;
    conn_unhold(c);
    conn_flush(c);
  }
}

static void on_writer(uv_check_t *h) { server_write_held(h->data); }

static void on_timer(uv_timer_t *t) {
  Conn *c = t->data;
  c->server->stats.timeouts++;
  if (herald_http_session_in_request(c->session)) {
    herald_http_session_timeout(c->session);
    conn_flush(c);
  } else {
    conn_close(c);
  }
}

static void conn_arm_timer(Conn *c) {
  if (c->closing) return;
  int in_request = herald_http_session_in_request(c->session);
  if (in_request && c->timer_for_request) return; /* the deadline runs from the first byte */
  c->timer_for_request = in_request;
  uint64_t ms = in_request ? c->server->limits.request_timeout_ms : c->server->limits.idle_timeout_ms;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  Conn *c = stream->data;
  if (nread < 0) {
    /* The client is done sending; answers already queued still go out. */
    if (c->reading) {
      uv_read_stop(stream);
      c->reading = 0;
    }
    c->eof = 1;
    if (c->pending_write == 0 && !c->held) conn_close(c);
    return;
  }
  if (nread == 0) return;
  if (herald_http_session_feed(c->session, buf->base, (size_t)nread) != 0) {
    conn_close(c);
    return;
  }
  conn_hold(c);
  conn_arm_timer(c);
}

static void on_connection(uv_stream_t *listener, int status) {
  HeraldHttpServer *s = listener->data;
  if (status != 0 || s->stopping) return;
  Conn *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  c->server = s;
  if (uv_tcp_init(s->loop, &c->tcp) != 0) {
    free(c);
    return;
  }
  c->tcp.data = c;
  s->handles++;
  c->handles = 1;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 || uv_timer_init(s->loop, &c->timer) != 0) {
    /* only the socket is open: close it alone */
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
    return;
  }
  c->timer.data = c;
  s->handles++;
  c->handles = 2;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->stats.connections++;
  s->stats.open++;
  c->session = herald_http_session_new(s->router, &s->limits, &s->stats);
  if (c->session == NULL || (int64_t)s->stats.open > s->limits.max_connections) {
    if (c->session != NULL) s->stats.refused++;
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  conn_resume(c);
  conn_arm_timer(c);
}

static void listener_closed(uv_handle_t *h) { server_handle_closed(h->data); }

static void writer_closed(uv_handle_t *h) { server_handle_closed(h->data); }

int herald_http_server_start(uv_loop_t *loop, const char *host, int port, HeraldHttpRouter *router,
                             const HeraldHttpLimits *limits, HeraldHttpServer **out,
                             HeraldError *err) {
  struct sockaddr_storage addr;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0)
    return herald_error_set(err, kHeraldInvalid, "listen: %s is not an IP address", host);
  if (port < 0 || port > 65535)
    return herald_error_set(err, kHeraldInvalid, "listen: port %d is out of range", port);
  HeraldHttpServer *s = calloc(1, sizeof *s);
  if (s == NULL) return herald_error_set(err, kHeraldNoMemory, "listen: out of memory");
  s->loop = loop;
  s->router = router;
  if (limits) s->limits = *limits; else herald_http_limits_default(&s->limits);
  int rc = uv_tcp_init(loop, &s->listener);
  if (rc != 0) {
    free(s);
    return herald_error_set(err, kHeraldIo, "listen: %s", uv_strerror(rc));
  }
  s->listener.data = s;
  s->handles = 1;
  rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
  if (rc != 0) {
    herald_error_set(err, kHeraldIo, "listen on %s:%d: %s", host, port, uv_strerror(rc));
    /* the handle memory must live until its close completes on a later loop turn */
    s->stopping = 1;
    uv_close((uv_handle_t *)&s->listener, listener_closed);
    return kHeraldIo;
  }
  rc = uv_check_init(loop, &s->writer);
  if (rc == 0) {
    s->writer.data = s;
    s->handles++;
    rc = uv_check_start(&s->writer, on_writer);
    if (rc != 0) {
      s->stopping = 1;
      uv_close((uv_handle_t *)&s->writer, writer_closed);
    }
  }
  if (rc != 0) {
    herald_error_set(err, kHeraldIo, "listen: %s", uv_strerror(rc));
    s->stopping = 1;
    uv_close((uv_handle_t *)&s->listener, listener_closed);
    return kHeraldIo;
  }
  uv_unref((uv_handle_t *)&s->writer); /* the listener and the connections keep the loop alive */
  *out = s;
  return kHeraldOk;
}

int herald_http_server_port(const HeraldHttpServer *s) {
  struct sockaddr_storage addr;
  int len = sizeof addr;
  if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&addr, &len) != 0) return -1;
  if (addr.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&addr)->sin_port);
  return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
}

void herald_http_server_stats(const HeraldHttpServer *s, HeraldHttpStats *out) { *out = s->stats; }

void herald_http_server_set_commit(HeraldHttpServer *s, void (*commit)(void *arg), void *arg) {
  s->commit = commit;
  s->commit_arg = arg;
}

void herald_http_server_stop(HeraldHttpServer *s, void (*closed)(void *arg), void *arg) {
  if (s->stopping) return;
  /* answers already produced are committed and handed to the sockets before they close */
  server_write_held(s);
  s->stopping = 1;
  s->closed = closed;
  s->closed_arg = arg;
  while (s->conns != NULL) conn_close(s->conns);
  uv_close((uv_handle_t *)&s->writer, writer_closed);
  uv_close((uv_handle_t *)&s->listener, listener_closed);
}
