/* herald.core.http: the transport engine for Lua, on a thread of its own
 * (runtime/http_thread.c over runtime/http_client.c): libcurl and the socket calls run beside
 * the caller's work, and every callback comes back on the caller's loop.
 *
 * One client per process, shared by every state that loads the module, so all of them share
 * one connection pool. request and send_mail yield the calling task and resume it from the
 * completion callback; a stop request does not cut them short (a transfer in flight runs its
 * course so its outcome is known), only shutdown cancels them.
 *
 * A batch sends many requests to one URL with a fixed concurrency without a coroutine per
 * request: Lua appends bodies (and idempotency keys), C hands them to the transport thread,
 * which keeps `concurrency` transfers in flight (a group); C collects the outcomes and wait()
 * hands them back as arrays. Bodies stay in a Lua table until they are handed over (a window
 * of a few times the concurrency), so a long queue costs no copies. Batches made with the same
 * limit (limit(n)) share one group: n transfers at once between all of them. An item or mail
 * given a gate (gate()) comes back unsent, class "recalled", when the gate closes before the
 * transport starts it: delivery gives back the messages of a campaign paused meanwhile, or of a
 * process asked to stop, without waiting for the transfers before them. A wait that asks for
 * them (wait(min, {recalled = true})) ends when they come back, not only at min outcomes, so
 * those messages are given back while the transfers before them are still on the wire.
 *
 * Completions arrive in libuv callbacks, where a Lua error has no protected call to land in:
 * in a sandbox near its memory cap one would abort the process. So a completion only stores
 * the outcome in C and resumes the task; the task's own continuation (lua_yieldk) makes the
 * result tables on its thread, where a memory error is an error of that task, which it can
 * catch. Handing a batch's queued items over from a completion touches Lua only through
 * calls that never allocate (raw reads of strings add made, on a thread of the batch's own). */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "lua/context.h"
#include "lua/modules.h"
#include "lua/task.h"
#include "runtime/clock.h"
#include "runtime/http_client.h"
#include "runtime/http_thread.h"
#include "runtime/retry.h"
#include "runtime/smtp_message.h"

#define BATCH_MT "herald.http.batch"
#define SENTINEL_MT "herald.http.sentinel"
#define SENTINEL_KEY "herald.http.client_user"
#define LIMIT_MT "herald.http.Limit"
#define GATE_MT "herald.http.gate"
#define DEFAULT_MAX_BODY (1024 * 1024)
#define FAILURE_BODY_MAX 512
#define MAX_HEADERS 64
#define MAX_RCPT 50

/* http.limit(n): a transport group that batches and mails made with it share */
typedef struct {
  HeraldHttpGroup *g;
} LimitBox;

static HeraldHttpGroup *opt_limit(lua_State *L, int t) {
  lua_getfield(L, t, "limit");
  LimitBox *box = lua_isnil(L, -1) ? NULL : luaL_checkudata(L, -1, LIMIT_MT);
  lua_pop(L, 1);
  return box != NULL ? box->g : NULL;
}

/* http.gate(): jobs behind it that have not started when it closes come back unsent */
typedef struct {
  HeraldHttpGate *g;
} GateBox;

/* The gate at index i (absolute), or NULL when it is nil; what names the value in the error. */
static HeraldHttpGate *check_gate(lua_State *L, int i, const char *what) {
  if (lua_isnil(L, i)) return NULL;
  GateBox *box = luaL_testudata(L, i, GATE_MT);
  if (box == NULL) luaL_error(L, "%s: expected a gate (http.gate())", what);
  return box->g;
}

static HeraldHttpGate *opt_gate(lua_State *L, int t) {
  lua_getfield(L, t, "gate");
  HeraldHttpGate *g = check_gate(L, lua_gettop(L), "field 'gate'");
  lua_pop(L, 1);  /* the options table keeps the gate alive */
  return g;
}

static HeraldHttpThread *client;
static HeraldHttpClientOptions client_opts = {64, 0, 100};
static int client_users;  /* states that loaded the module */

/* Raises unless L is a task, before any I/O starts: a transfer must always have a wait to
 * complete. */
static void check_can_wait(lua_State *L) {
  if (!herald_task_can_wait(L))
    luaL_error(L, "this call waits, so it must run in a task (a script body, run, filter or trigger)");
}

static HeraldHttpThread *get_client(lua_State *L) {
  if (client == NULL) {
    client = herald_http_thread_new(&herald_context()->loop, &client_opts);
    if (client == NULL) luaL_error(L, "cannot create the HTTP client");
  }
  return client;
}

/* ---- argument helpers ---- */

/* Field k of table t (absolute index) as a string; a number is accepted and converted. The
 * pointer stays valid while the table is alive: a string is the table's own, and a converted
 * number is stored back into the table in place of the number (lua_tostring converts only the
 * stack's copy, which is gone once popped). *len receives the length when len is not NULL. */
static const char *field_lstring(lua_State *L, int t, const char *k, int required, size_t *len) {
  lua_getfield(L, t, k);
  const char *s = NULL;
  if (len) *len = 0;
  if (lua_type(L, -1) == LUA_TNUMBER) {
    lua_tostring(L, -1);
    lua_pushvalue(L, -1);
    lua_setfield(L, t, k);
  }
  if (lua_type(L, -1) == LUA_TSTRING) {
    s = lua_tolstring(L, -1, len);
  } else if (!lua_isnil(L, -1)) {
    luaL_error(L, "field '%s': expected a string, got %s", k, luaL_typename(L, -1));
  } else if (required) {
    luaL_error(L, "field '%s' is required", k);
  }
  lua_pop(L, 1);  /* the options table keeps the string alive */
  return s;
}

static const char *field_string(lua_State *L, int t, const char *k, int required) {
  return field_lstring(L, t, k, required, NULL);
}

static lua_Integer field_integer(lua_State *L, int t, const char *k, lua_Integer def) {
  lua_getfield(L, t, k);
  lua_Integer v = def;
  if (!lua_isnil(L, -1)) {
    int ok = 0;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok) luaL_error(L, "field '%s': expected an integer, got %s", k, luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return v;
}

static int field_boolean(lua_State *L, int t, const char *k, int def) {
  lua_getfield(L, t, k);
  int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* Whether s (len bytes) would break out of a header line: CR or LF end the line and let the
 * rest pass as a header of its own, and NUL ends it where C reads the string. */
static int breaks_line(const char *s, size_t len) {
  return memchr(s, '\r', len) != NULL || memchr(s, '\n', len) != NULL || memchr(s, '\0', len) != NULL;
}

/* Field k of table t: NULL, or an RFC 9110 token (a method or a header name), which keeps
 * it from carrying a line break, a NUL or anything else into the request's head. */
static const char *field_token(lua_State *L, int t, const char *k) {
  size_t len = 0;
  const char *s = field_lstring(L, t, k, 0, &len);
  if (s == NULL) return NULL;
  static const char tchar[] = "!#$%&'*+-.^_`|~";
  int ok = len > 0;
  for (size_t i = 0; i < len && ok; i++) {
    unsigned char ch = (unsigned char)s[i];
    ok = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch != '\0' && strchr(tchar, ch) != NULL);
  }
  if (!ok) luaL_error(L, "field '%s': expected a token (letters, digits and !#$%%&'*+-.^_`|~)", k);
  return s;
}

/* Reads a headers table ({Name = value} or {"Name: value", ...}) into "Name: value" lines
 * pushed on the stack (they stay there, anchoring the strings). Returns the count. */
static size_t header_lines(lua_State *L, int t, const char *k, const char **lines) {
  lua_getfield(L, t, k);
  int h = lua_gettop(L);
  size_t n = 0;
  if (lua_isnil(L, h)) return 0;
  if (!lua_istable(L, h)) luaL_error(L, "field '%s': expected a table", k);
  lua_pushnil(L);
  while (lua_next(L, h) != 0) {
    if (n == MAX_HEADERS) luaL_error(L, "field '%s': more than %d headers", k, MAX_HEADERS);
    luaL_checkstack(L, 4, "too many headers");
    const char *line;
    if (lua_type(L, -2) == LUA_TNUMBER) {
      if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "field '%s': entries must be strings", k);
      line = lua_pushfstring(L, "%s", lua_tostring(L, -1));
    } else {
      if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
        luaL_error(L, "field '%s': expected name = value strings", k);
      line = lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
    }
    if (strpbrk(line, "\r\n") != NULL) luaL_error(L, "field '%s': a header contains a line break", k);
    lines[n++] = line;
    lua_insert(L, h);  /* keep the line below the table */
    h++;
    lua_pop(L, 1);
  }
  return n;
}

/* Pushes nil, message, class[, status] for a failed transfer. */
static int push_failure(lua_State *L, const HeraldHttpResponse *res) {
  lua_pushnil(L);
  lua_pushstring(L, res->error_text ? res->error_text : "cannot keep the outcome (out of memory)");
  lua_pushstring(L, herald_net_class_name(res->error));
  if (res->status > 0) {
    lua_pushinteger(L, res->status);
    return 4;
  }
  return 3;
}

/* ---- request ---- */

/* A response kept from its completion until the task has made its result: the strings are
 * copies owned here (the transport's copies go when the callback returns). */
static void response_free(HeraldHttpResponse *r) {
  free((char *)r->error_text);
  free((char *)r->body);
  free((char *)r->headers);
}

static int dup_mem(const char **dst, const char *src, size_t n) {
  char *d = malloc(n + 1);
  if (d == NULL) return -1;
  if (n > 0) memcpy(d, src, n);
  d[n] = '\0';
  *dst = d;
  return 0;
}

/* Copies src into dst; out of memory, dst tells that instead (the transfer happened, only its
 * details are lost). */
static void response_keep(HeraldHttpResponse *dst, const HeraldHttpResponse *src) {
  *dst = *src;
  dst->error_text = dst->body = dst->headers = NULL;
  size_t hlen = 0;
  const char *p = src->headers;
  for (size_t i = 0; p != NULL && i < 2 * src->nheaders; i++) p += strlen(p) + 1;
  if (p != NULL) hlen = (size_t)(p - src->headers);
  const char *text = src->error_text ? src->error_text : "";
  if (dup_mem(&dst->error_text, text, strlen(text)) == 0 &&
      dup_mem(&dst->body, src->body, src->body ? src->body_len : 0) == 0 &&
      dup_mem(&dst->headers, src->headers, hlen) == 0)
    return;
  response_free(dst);
  memset(dst, 0, sizeof *dst);
  dst->error = kHeraldNetProtocol;
  dst->error_text = NULL;
  dst->retry_after_ms = -1;
}

typedef struct {
  HeraldTaskWait *wait;
  HeraldHttpJob *t;
  HeraldHttpResponse res;  /* the outcome, from its completion until the task has it */
} Pending;

static void pending_free(void *data) {
  Pending *p = data;
  response_free(&p->res);
  free(p);
}

static void pending_cancel(HeraldTaskWait *w, void *data) {
  (void)w;
  Pending *p = data;
  if (client != NULL && p->t != NULL) herald_http_thread_cancel(client, p->t);
  pending_free(p);
}

/* Continues a task resumed by a completion: push(L) with the pending data p as its argument
 * makes the results, protected, so p is released whatever happens; a failure (out of memory)
 * is then raised in the task, which can catch it. */
static int finish_wait(lua_State *L, lua_CFunction push, void *p, void (*release)(void *)) {
  lua_settop(L, 0);  /* the call's arguments are done with: its room on the stack is free */
  lua_pushcfunction(L, push);
  lua_pushlightuserdata(L, p);
  int status = lua_pcall(L, 1, LUA_MULTRET, 0);
  release(p);
  if (status != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}

static void push_response(lua_State *L, const HeraldHttpResponse *res) {
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, res->status);
  lua_setfield(L, -2, "status");
  lua_pushlstring(L, res->body ? res->body : "", res->body_len);
  lua_setfield(L, -2, "body");
  if (res->truncated) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "truncated");
  }
  lua_createtable(L, 0, (int)res->nheaders);
  const char *p = res->headers;
  for (size_t i = 0; i < res->nheaders; i++) {
    const char *name = p;
    const char *value = name + strlen(name) + 1;
    p = value + strlen(value) + 1;
    /* Repeated fields combine as RFC 9110 §5.3 allows. */
    if (lua_getfield(L, -1, name) == LUA_TSTRING) {
      lua_pushfstring(L, "%s, %s", lua_tostring(L, -1), value);
      lua_remove(L, -2);
    } else {
      lua_pop(L, 1);
      lua_pushstring(L, value);
    }
    lua_setfield(L, -2, name);
  }
  lua_setfield(L, -2, "headers");
  if (res->retry_after_ms >= 0) {
    lua_pushinteger(L, res->retry_after_ms);
    lua_setfield(L, -2, "retry_after_ms");
  }
  lua_pushinteger(L, res->http_version);
  lua_setfield(L, -2, "http_version");
  lua_pushstring(L, herald_retry_verdict_name(herald_retry_verdict(res->error, res->status, 0)));
  lua_setfield(L, -2, "verdict");
}

static int push_request_result(lua_State *L) {
  Pending *p = lua_touserdata(L, 1);
  if (p->res.error != kHeraldNetOk) return push_failure(L, &p->res);
  push_response(L, &p->res);
  return 1;
}

static int request_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  return finish_wait(L, push_request_result, (void *)ctx, pending_free);
}

static void request_done(const HeraldHttpResponse *res, void *user) {
  Pending *p = user;
  p->t = NULL;
  HeraldTaskWait *w = p->wait;
  if (w == NULL) {  /* the wait could not be made (out of memory, raised to the caller) */
    free(p);
    return;
  }
  response_keep(&p->res, res);
  herald_task_wait_done(w, 0);  /* request_k makes the result, on the task's thread */
}

/* request{method=, url=, headers=, body=, timeout_ms=, max_body=, ca_file=, http1=} ->
 * {status=, headers=, body=, retry_after_ms=, http_version=, verdict=} | nil, err, class */
static int l_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  HeraldHttpRequest req = {0};
  req.url = field_string(L, 1, "url", 1);
  req.method = field_token(L, 1, "method");
  req.body = field_lstring(L, 1, "body", 0, &req.body_len);
  req.timeout_ms = (long)field_integer(L, 1, "timeout_ms", 30000);
  luaL_argcheck(L, req.timeout_ms > 0, 1, "timeout_ms must be > 0");
  lua_Integer max_body = field_integer(L, 1, "max_body", DEFAULT_MAX_BODY);
  luaL_argcheck(L, max_body >= 0, 1, "max_body must be >= 0");
  req.max_body = (size_t)max_body;
  req.ca_file = field_string(L, 1, "ca_file", 0);
  req.http1_only = field_boolean(L, 1, "http1", 0);
  req.want_headers = 1;
  const char *lines[MAX_HEADERS];
  req.nheaders = header_lines(L, 1, "headers", lines);
  req.headers = lines;
  HeraldHttpThread *c = get_client(L);
  check_can_wait(L);
  Pending *p = calloc(1, sizeof *p);
  if (p == NULL) return luaL_error(L, "out of memory");
  /* Completions only arrive from the loop, so the wait can be registered after the submit. */
  p->t = herald_http_thread_submit(c, NULL, &req, request_done, p);
  if (p->t == NULL) {
    free(p);
    lua_pushnil(L);
    lua_pushliteral(L, "cannot start the transfer (out of memory)");
    lua_pushliteral(L, "protocol");
    return 3;
  }
  p->wait = herald_task_wait_new(L, 0, pending_cancel, p);
  return lua_yieldk(L, 0, (lua_KContext)p, request_k);
}

/* ---- send_mail ---- */

/* 0: never, 1: when offered, 2: required; -1 when the field is not given. */
static int starttls_mode(lua_State *L, int t) {
  lua_getfield(L, t, "starttls");
  int mode = -1;
  if (lua_isboolean(L, -1)) {
    mode = lua_toboolean(L, -1) ? 2 : 0;
  } else if (lua_type(L, -1) == LUA_TSTRING) {
    const char *s = lua_tostring(L, -1);
    if (strcmp(s, "no") == 0) mode = 0;
    else if (strcmp(s, "try") == 0) mode = 1;
    else if (strcmp(s, "required") == 0) mode = 2;
    else luaL_error(L, "field 'starttls': expected 'no', 'try' or 'required', got '%s'", s);
  } else if (!lua_isnil(L, -1)) {
    luaL_error(L, "field 'starttls': expected a boolean or a string");
  }
  lua_pop(L, 1);
  return mode;
}

/* Strings of field k (a string or a list of strings), anchored in the options table. */
static size_t string_list(lua_State *L, int t, const char *k, const char **out, size_t max) {
  lua_getfield(L, t, k);
  size_t n = 0;
  if (lua_type(L, -1) == LUA_TSTRING) {
    out[n++] = lua_tostring(L, -1);
  } else if (lua_istable(L, -1)) {
    lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
    if ((size_t)len > max) luaL_error(L, "field '%s': more than %d entries", k, (int)max);
    for (lua_Integer i = 1; i <= len; i++) {
      if (lua_rawgeti(L, -1, i) != LUA_TSTRING)
        luaL_error(L, "field '%s'[%d]: expected a string", k, (int)i);
      out[n++] = lua_tostring(L, -1);
      lua_pop(L, 1);
    }
  } else if (!lua_isnil(L, -1)) {
    luaL_error(L, "field '%s': expected a string or a list of strings", k);
  }
  lua_pop(L, 1);
  return n;
}

/* Reads the message fields of table t into m (to and headers are the caller's arrays of
 * MAX_RCPT and MAX_HEADERS); strings it makes stay on the stack. */
static void read_message(lua_State *L, int t, HeraldMailMessage *m, const char **to,
                         HeraldMailHeader *headers) {
  m->from = field_string(L, t, "from", 1);
  m->nto = string_list(L, t, "to", to, MAX_RCPT);
  m->to = to;
  if (m->nto == 0) luaL_error(L, "field 'to' is required");
  m->subject = field_string(L, t, "subject", 0);
  m->text = field_string(L, t, "text", 0);
  m->html = field_string(L, t, "html", 0);
  m->message_key = field_string(L, t, "message_id", 1);
  m->one_click = field_boolean(L, t, "one_click", 0);
  m->date_ms = herald_clock_now_ms();
  const char *unsub[8];
  size_t nunsub = string_list(L, t, "list_unsubscribe", unsub, 8);
  if (nunsub > 0) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < nunsub; i++) {
      if (i > 0) luaL_addstring(&b, ", ");
      int bracketed = unsub[i][0] == '<';
      if (!bracketed) luaL_addchar(&b, '<');
      luaL_addstring(&b, unsub[i]);
      if (!bracketed) luaL_addchar(&b, '>');
    }
    luaL_pushresult(&b);
    m->list_unsubscribe = lua_tostring(L, -1);
  }
  lua_getfield(L, t, "headers");
  int ht = lua_gettop(L);
  if (lua_istable(L, ht)) {
    lua_pushnil(L);
    while (lua_next(L, ht) != 0) {
      if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
        luaL_error(L, "field 'headers': expected name = value strings");
      if (m->nheaders == MAX_HEADERS) luaL_error(L, "field 'headers': more than %d", MAX_HEADERS);
      if (lua_type(L, -1) == LUA_TNUMBER) {
        /* as in field_lstring: the converted value goes back into the table, which anchors it
         * (assigning an existing field during lua_next is allowed) */
        lua_tostring(L, -1);
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, ht);
      }
      headers[m->nheaders].name = lua_tostring(L, -2);
      headers[m->nheaders].value = lua_tostring(L, -1);
      m->nheaders++;
      lua_pop(L, 1);
    }
  } else if (!lua_isnil(L, ht)) {
    luaL_error(L, "field 'headers': expected a table");
  }
  m->headers = headers;
}

typedef struct {
  HeraldTaskWait *wait;
  HeraldHttpJob *t;
  char message_id[512];
  HeraldHttpResponse res;  /* the outcome (its error text kept), until the task has it */
} MailPending;

static void mail_free(void *data) {
  MailPending *p = data;
  free((char *)p->res.error_text);
  free(p);
}

static void mail_cancel(HeraldTaskWait *w, void *data) {
  (void)w;
  MailPending *p = data;
  if (client != NULL && p->t != NULL) herald_http_thread_cancel(client, p->t);
  mail_free(p);
}

static int push_mail_result(lua_State *L) {
  MailPending *p = lua_touserdata(L, 1);
  if (p->res.error != kHeraldNetOk) return push_failure(L, &p->res);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, p->res.status);
  lua_setfield(L, -2, "status");
  lua_pushstring(L, p->message_id);
  lua_setfield(L, -2, "message_id");
  lua_pushstring(L, "delivered");
  lua_setfield(L, -2, "verdict");
  return 1;
}

static int mail_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  return finish_wait(L, push_mail_result, (void *)ctx, mail_free);
}

static void mail_done(const HeraldHttpResponse *res, void *user) {
  MailPending *p = user;
  p->t = NULL;
  HeraldTaskWait *w = p->wait;
  if (w == NULL) {  /* the wait could not be made (out of memory, raised to the caller) */
    free(p);
    return;
  }
  p->res.error = res->error;
  p->res.status = res->status;
  const char *text = res->error_text ? res->error_text : "";
  if (res->error != kHeraldNetOk && dup_mem(&p->res.error_text, text, strlen(text)) != 0)
    p->res.error_text = NULL;  /* push_failure says the outcome was lost */
  herald_task_wait_done(w, 0);  /* mail_k makes the result, on the task's thread */
}

/* send_mail{url=, from=, to=, subject=, text=, html=, message_id=, headers=, list_unsubscribe=,
 * one_click=, envelope_from=, username=, password=, starttls=, ca_file=, timeout_ms=, limit=,
 * gate=}
 * (starttls 'no', 'try' or 'required': by default 'required' with a username or password,
 * else 'try')
 * -> {status=, message_id=} | nil, err, class[, smtp code]. With limit (http.limit(n)) the mail
 * waits in the transport for one of the limit's n places: the transport starts the next mail
 * the moment one finishes, with no round trip through the caller's loop. */
static int l_send_mail(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  HeraldSmtpRequest req = {0};
  req.url = field_string(L, 1, "url", 1);
  req.timeout_ms = (long)field_integer(L, 1, "timeout_ms", 30000);
  luaL_argcheck(L, req.timeout_ms > 0, 1, "timeout_ms must be > 0");
  req.starttls = starttls_mode(L, 1);
  req.username = field_string(L, 1, "username", 0);
  req.password = field_string(L, 1, "password", 0);
  /* A login must not go out in cleartext because a server (or a man in the middle striking
   * STARTTLS from its EHLO) did not offer TLS: with credentials, TLS is required unless the
   * caller asked for less. Without, STARTTLS is used when offered. */
  if (req.starttls < 0) req.starttls = req.username != NULL || req.password != NULL ? 2 : 1;
  req.ca_file = field_string(L, 1, "ca_file", 0);

  HeraldMailMessage m = {0};
  const char *to[MAX_RCPT];
  HeraldMailHeader headers[MAX_HEADERS];
  read_message(L, 1, &m, to, headers);

  HeraldError err = {0};
  const char *from_field = field_string(L, 1, "envelope_from", 0);
  char mail_from[512];
  if (herald_smtp_address(from_field ? from_field : m.from, from_field ? "envelope_from" : "from",
                          mail_from, sizeof mail_from, &err) != kHeraldOk)
    goto invalid;
  char rcpt_buf[MAX_RCPT][320];
  const char *rcpt[MAX_RCPT];
  for (size_t i = 0; i < m.nto; i++) {
    char field[32];
    snprintf(field, sizeof field, "to[%zu]", i + 1);
    if (herald_smtp_address(to[i], field, rcpt_buf[i], sizeof rcpt_buf[i], &err) != kHeraldOk)
      goto invalid;
    rcpt[i] = rcpt_buf[i];
  }
  req.mail_from = mail_from;
  req.rcpt = rcpt;
  req.nrcpt = m.nto;

  HeraldHttpGroup *limit = opt_limit(L, 1);
  HeraldHttpGate *gate = opt_gate(L, 1);
  HeraldHttpThread *c = get_client(L);
  check_can_wait(L);
  MailPending *p = calloc(1, sizeof *p);
  if (p == NULL) return luaL_error(L, "out of memory");
  char *msg = NULL;
  size_t len = 0;
  if (herald_smtp_message_build(&m, &msg, &len, p->message_id, sizeof p->message_id, &err) !=
      kHeraldOk) {
    free(p);
    goto invalid;
  }
  req.message = msg;
  req.message_len = len;
  /* Completions only arrive from the loop, so the wait can be registered after the submit. */
  /* with a limit, the transport starts the mail when one of the limit's places is free */
  p->t = herald_http_thread_smtp(c, limit, gate, &req, mail_done, p);
  free(msg);
  if (p->t == NULL) {
    free(p);
    lua_pushnil(L);
    lua_pushliteral(L, "cannot start the transfer (out of memory)");
    lua_pushliteral(L, "protocol");
    return 3;
  }
  p->wait = herald_task_wait_new(L, 0, mail_cancel, p);
  return lua_yieldk(L, 0, (lua_KContext)p, mail_k);
invalid:
  lua_pushnil(L);
  lua_pushstring(L, err.msg);
  lua_pushliteral(L, "invalid");
  return 3;
}

/* build_mail{...same message fields...} -> message text, message_id (what send_mail sends). */
static int l_build_mail(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  HeraldMailMessage m = {0};
  const char *to[MAX_RCPT];
  HeraldMailHeader headers[MAX_HEADERS];
  read_message(L, 1, &m, to, headers);
  char id[512];
  char *msg = NULL;
  size_t len = 0;
  HeraldError err = {0};
  if (herald_smtp_message_build(&m, &msg, &len, id, sizeof id, &err) != kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushlstring(L, msg, len);
  free(msg);
  lua_pushstring(L, id);
  return 2;
}

/* mail_header_reserved(name) -> why | nil: why a mail's own headers may not use the name (the
 * message builder writes it, or servers on the way do), so a profile's headers are refused
 * when its file loads rather than with every message. */
static int l_mail_header_reserved(lua_State *L) {
  const char *why = herald_smtp_header_reserved(luaL_checkstring(L, 1));
  if (why == NULL) return 0;
  lua_pushstring(L, why);
  return 1;
}

/* mail_header_problem(name, value) -> nil | why, 'Name' or 'Value': why a campaign's, a
 * template's or a direct message's headers may not carry the header (a bad name, a reserved
 * one, a value with a line break; List-Unsubscribe and its -Post are taken, see
 * herald_smtp_header_given_problem) and which of the two is at fault, so they are refused with
 * their definition rather than failing every message at send time. */
static int l_mail_header_problem(lua_State *L) {
  const char *name = luaL_checkstring(L, 1), *value = luaL_optstring(L, 2, NULL);
  const char *why = herald_smtp_header_given_problem(name, NULL);
  const char *field = "Name";
  if (why == NULL) {
    why = herald_smtp_header_given_problem(name, value != NULL ? value : "");
    field = "Value";
  }
  if (why == NULL) return 0;
  lua_pushstring(L, why);
  lua_pushstring(L, field);
  return 2;
}

/* ---- batches ---- */

typedef struct Batch Batch;

/* Wakes a batch's waiter for its recalled outcomes on the loop's next turn rather than at the
 * first: a gate's requests come back together, one completion each, and go to the waiter in
 * one. Allocated apart from the batch, as the timer outlives it until its close callback. */
typedef struct {
  uv_timer_t timer;
  Batch *b;  /* NULL once the batch is closed */
} RecallWake;

typedef struct {
  Batch *b;
  lua_Integer seq;
  HeraldHttpJob *t;  /* NULL when the slot is free */
} Slot;

typedef struct {
  lua_Integer seq;
  long status;
  HeraldNetClass cls;
  int64_t retry_after_ms;
  char *detail;  /* failure text or the start of a failure body */
} Outcome;

struct Batch {
  lua_State *L;           /* a thread of the batch's own, for handing items over (see there) */
  int thread_ref;         /* registry: L */
  int items_ref;          /* registry: {[seq] = body} */
  int keys_ref;           /* registry: {[seq] = key} */
  int opts_ref;           /* registry: {[seq] = "url\0line\0..."} for items with options */
  int gates_ref;          /* registry: {[seq] = gate} for items behind a gate */
  lua_Integer added;      /* last seq appended */
  lua_Integer started;    /* last seq started */
  size_t in_flight;
  size_t concurrency;     /* transfers at once, kept by the transport thread (group) */
  size_t window;          /* items handed to the transport thread at once */
  HeraldHttpGroup *group;
  HeraldHttpNotify *notify; /* its transfers' outcomes wake the loop only when needed */
  Slot *slots;            /* one per item handed over */
  size_t next_slot;
  char *url;
  char *method;
  char *key_header;       /* e.g. "Idempotency-Key"; NULL: no per-request key header */
  char *keyline;          /* "key_header: key" of the item being handed over */
  size_t keyline_cap;
  char **headers;
  size_t nheaders;
  long timeout_ms;
  char *ca_file;
  int http1_only;
  Outcome *out;
  size_t nout, cap;
  HeraldTaskWait *wait;
  size_t wait_min;
  int wait_recalled;      /* the waiter also ends at outcomes of class recalled */
  size_t nrecalled;       /* of those among out */
  RecallWake *recall_wake; /* made by the first wait that asks for them */
  int closed;
};

static size_t batch_outstanding(const Batch *b) {
  return (size_t)(b->added - b->started) + b->in_flight;
}

static void batch_done(const HeraldHttpResponse *res, void *user);

/* The loop needs each outcome at once only while items wait to be handed over (a place in the
 * window came free). A task waiting for some outcomes is woken when enough have finished (the
 * transport counts them down: outcomes queued but not yet delivered make that wake a little
 * later, never missing); otherwise the last outcome in flight wakes the loop, with the
 * others. */
static void batch_update_wake(Batch *b) {
  long wake_at = 0;
  if (b->wait != NULL && b->wait_min > b->nout)
    wake_at = herald_http_notify_pending(b->notify) - (long)(b->wait_min - b->nout);
  herald_http_notify_set_wake(b->notify, b->started < b->added, wake_at);
}

static Outcome *outcome_new(Batch *b) {
  if (b->nout == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    Outcome *o = realloc(b->out, cap * sizeof *o);
    if (o == NULL) abort();  /* losing an outcome would lose track of a message */
    b->out = o;
    b->cap = cap;
  }
  Outcome *o = &b->out[b->nout++];
  memset(o, 0, sizeof *o);
  return o;
}

/* The item's key header line "key_header: key" (key at index k, a string or a number), in
 * the batch's buffer: a key may list many message ids (a webhook call for 50 endpoints), so
 * it has no fixed size. A number is written as tostring() writes it, in C: the line is made
 * where nothing may raise (see batch_hand_over). NULL when out of memory. */
static const char *batch_key_line(lua_State *L, Batch *b, int k) {
  char num[64];
  const char *key;
  size_t klen;
  if (lua_type(L, k) == LUA_TSTRING) {
    key = lua_tolstring(L, k, &klen);
  } else {
    if (lua_isinteger(L, k)) {
      lua_integer2str(num, sizeof num, lua_tointeger(L, k));
    } else {
      lua_number2str(num, sizeof num - 2, lua_tonumber(L, k));
      /* as lua_tostring: a float that reads like an integer gets ".0" */
      if (num[strspn(num, "-0123456789")] == '\0') strcat(num, ".0");
    }
    key = num;
    klen = strlen(num);
  }
  size_t hlen = strlen(b->key_header);
  size_t need = hlen + 2 + klen + 1;
  if (need > b->keyline_cap) {
    char *p = realloc(b->keyline, need);
    if (p == NULL) return NULL;
    b->keyline = p;
    b->keyline_cap = need;
  }
  memcpy(b->keyline, b->key_header, hlen);
  memcpy(b->keyline + hlen, ": ", 2);
  memcpy(b->keyline + hlen + 2, key, klen);
  b->keyline[need - 1] = '\0';
  return b->keyline;
}

/* Hands queued items to the transport while the window has room. Runs from completions too,
 * so nothing here may raise: it reads the strings add stored with raw accesses, which never
 * allocate, on the batch's own thread, whose stack is never used for more than the room every
 * thread starts with (LUA_MINSTACK). An item that cannot be handed over gets its outcome. */
static void batch_hand_over(Batch *b) {
  HeraldHttpThread *c = client;  /* made by whoever added the items; outlives the batch's jobs */
  lua_State *L = b->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->items_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->keys_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->opts_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->gates_ref);
  int items = lua_gettop(L) - 3, keys = items + 1, opts = items + 2, gates = items + 3;
  const char *lines[2 * MAX_HEADERS + 1];
  for (size_t i = 0; i < b->nheaders; i++) lines[i] = b->headers[i];
  while (b->started < b->added && b->in_flight < b->window) {
    /* outcomes come back about in order, so the slot after the last one taken is most often free */
    size_t s = b->next_slot;
    while (b->slots[s].t != NULL) s = (s + 1) % b->window;
    b->next_slot = (s + 1) % b->window;
    lua_Integer seq = ++b->started;
    int base = lua_gettop(L);
    lua_rawgeti(L, items, seq);
    size_t len = 0;
    const char *body = lua_tolstring(L, -1, &len);  /* a string: add checked it */
    HeraldHttpRequest req = {0};
    req.method = b->method;
    req.url = b->url;
    req.body = body;
    req.body_len = len;
    req.timeout_ms = b->timeout_ms;
    req.max_body = FAILURE_BODY_MAX;
    req.ca_file = b->ca_file;
    req.http1_only = b->http1_only;
    req.headers = lines;
    req.nheaders = b->nheaders;
    int key_failed = 0;
    if (b->key_header != NULL && lua_rawgeti(L, keys, seq) != LUA_TNIL) {
      const char *line = batch_key_line(L, b, -1);
      if (line != NULL) lines[req.nheaders++] = line; else key_failed = 1;
      lua_pop(L, 1);
    } else if (b->key_header != NULL) {
      lua_pop(L, 1);
    }
    /* Per-item url and headers, as add copied them (see pack_item_opts); the string stays on
     * the stack until the submit has copied the request. */
    if (lua_rawgeti(L, opts, seq) == LUA_TSTRING) {
      size_t plen;
      const char *p = lua_tolstring(L, -1, &plen), *end = p + plen;
      if (*p != '\0') req.url = p;
      for (p += strlen(p) + 1; p < end; p += strlen(p) + 1) lines[req.nheaders++] = p;
      lua_pushnil(L);
      lua_rawseti(L, opts, seq);
    }
    /* the job holds the gate from here on; the userdata stays on the stack until then */
    HeraldHttpGate *gate = NULL;
    if (lua_rawgeti(L, gates, seq) == LUA_TUSERDATA) {
      gate = ((GateBox *)lua_touserdata(L, -1))->g;
      lua_pushnil(L);
      lua_rawseti(L, gates, seq);
    }
    b->slots[s].b = b;
    b->slots[s].seq = seq;
    b->in_flight++;
    b->slots[s].t = key_failed || c == NULL ? NULL
                    : herald_http_thread_submit_quiet(c, b->group, b->notify, gate, &req,
                                                      batch_done, &b->slots[s]);
    lua_settop(L, base);
    lua_pushnil(L);
    lua_rawseti(L, items, seq);  /* the body is copied; release it */
    if (b->slots[s].t == NULL) {
      b->in_flight--;
      Outcome *o = outcome_new(b);
      o->seq = seq;
      o->cls = kHeraldNetProtocol;
      o->retry_after_ms = -1;
      o->detail = strdup("cannot start the transfer (out of memory)");
    }
  }
  lua_pop(L, 4);
}

/* Starts queued items while slots are free, then says when the loop needs waking (also when
 * the window is full and nothing started). */
static void batch_pump(Batch *b) {
  if (!b->closed && b->started < b->added && b->in_flight < b->window) batch_hand_over(b);
  batch_update_wake(b);
}

static void batch_maybe_wake(Batch *b) {
  if (b->wait == NULL) return;
  if (b->nout < b->wait_min && batch_outstanding(b) > 0) return;
  HeraldTaskWait *w = b->wait;
  b->wait = NULL;
  herald_task_wait_done(w, 0);  /* batch_wait_k hands the outcomes over, on the task's thread */
}

static void recall_wake_fire(uv_timer_t *t) {
  RecallWake *rw = t->data;
  Batch *b = rw->b;
  if (b == NULL || b->wait == NULL || !b->wait_recalled || b->nrecalled == 0) return;
  HeraldTaskWait *w = b->wait;
  b->wait = NULL;
  herald_task_wait_done(w, 0);  /* batch_wait_k hands the outcomes over */
}

static void recall_wake_free(uv_handle_t *h) { free(h->data); }

static void batch_done(const HeraldHttpResponse *res, void *user) {
  Slot *slot = user;
  Batch *b = slot->b;
  slot->t = NULL;
  b->in_flight--;
  Outcome *o = outcome_new(b);
  o->seq = slot->seq;
  o->status = res->status;
  o->cls = res->error;
  if (o->cls == kHeraldNetRecalled) {
    b->nrecalled++;
    if (b->wait != NULL && b->wait_recalled)
      uv_timer_start(&b->recall_wake->timer, recall_wake_fire, 0, 0);
  }
  o->retry_after_ms = res->retry_after_ms;
  if (res->error != kHeraldNetOk) {
    o->detail = strdup(res->error_text);
  } else if ((res->status < 200 || res->status >= 300) && res->body_len > 0) {
    o->detail = strndup(res->body, res->body_len);
  }
  /* pumps (and updates the wake-up) before the wake: the task it resumes may close the batch
   * and let it be collected */
  batch_pump(b);
  batch_maybe_wake(b);
}

/* Pushes {n=, seq={}, key={}, status={}, class={}, verdict={}, retry_after_ms={}, detail={}}
 * and forgets the outcomes. The tables are made first: a memory error leaves every outcome in
 * the batch for a later wait. */
static int batch_push_outcomes(lua_State *L, Batch *b) {
  luaL_checkstack(L, 12, "batch");
  int n = (int)b->nout;
  lua_createtable(L, 0, 8);
  int t = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->keys_ref);
  int keys = t + 1;
  static const char *const names[] = {"seq", "key", "status", "class", "verdict",
                                      "retry_after_ms", "detail"};
  for (int k = 0; k < 7; k++) lua_createtable(L, n, 0);
  int base = keys + 1;  /* seq at base, key base+1, ... */
  for (int i = 0; i < n; i++) {
    Outcome *o = &b->out[i];
    lua_pushinteger(L, o->seq);
    lua_rawseti(L, base, i + 1);
    lua_rawgeti(L, keys, o->seq);
    lua_rawseti(L, base + 1, i + 1);
    lua_pushinteger(L, o->status);
    lua_rawseti(L, base + 2, i + 1);
    lua_pushstring(L, herald_net_class_name(o->cls));
    lua_rawseti(L, base + 3, i + 1);
    lua_pushstring(L, herald_retry_verdict_name(herald_retry_verdict(o->cls, o->status, 0)));
    lua_rawseti(L, base + 4, i + 1);
    if (o->retry_after_ms >= 0) {
      lua_pushinteger(L, o->retry_after_ms);
      lua_rawseti(L, base + 5, i + 1);
    }
    if (o->detail != NULL) {
      lua_pushstring(L, o->detail);
      lua_rawseti(L, base + 6, i + 1);
    }
  }
  for (int k = 6; k >= 0; k--) lua_setfield(L, t, names[k]);
  lua_pushinteger(L, n);
  lua_setfield(L, t, "n");
  /* The task has them: nothing below allocates (a key is cleared where it is set). */
  for (int i = 0; i < n; i++) {
    Outcome *o = &b->out[i];
    if (lua_rawgeti(L, keys, o->seq) != LUA_TNIL) {
      lua_pushnil(L);
      lua_rawseti(L, keys, o->seq);
    }
    lua_pop(L, 1);
    free(o->detail);
  }
  b->nout = 0;
  b->nrecalled = 0;
  lua_settop(L, t);
  return 1;
}

static Batch *check_batch(lua_State *L) {
  Batch *b = luaL_checkudata(L, 1, BATCH_MT);
  if (b->closed) luaL_error(L, "the batch is closed");
  return b;
}

static char *dup_string(lua_State *L, const char *s) {
  if (s == NULL) return NULL;
  char *d = strdup(s);
  if (d == NULL) luaL_error(L, "out of memory");
  return d;
}

/* limit(n) -> a limit of n transfers at once, for batches to share (batch{limit=}) */
static int l_limit(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 10000, 1, "a limit must be 1..10000");
  LimitBox *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->g = herald_http_group_new((size_t)n);
  if (box->g == NULL) return luaL_error(L, "out of memory");
  luaL_setmetatable(L, LIMIT_MT);
  return 1;
}

static int l_limit_gc(lua_State *L) {
  LimitBox *box = luaL_checkudata(L, 1, LIMIT_MT);
  herald_http_group_release(box->g);
  box->g = NULL;
  return 0;
}

/* gate() -> a gate: items (batch add's gate=) and mails (send_mail's gate=) behind it that
 * have not started when it closes come back unsent, class "recalled" */
static int l_gate(lua_State *L) {
  GateBox *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->g = NULL;
  luaL_setmetatable(L, GATE_MT);
  box->g = herald_http_gate_new();
  if (box->g == NULL) return luaL_error(L, "out of memory");
  return 1;
}

static GateBox *check_gate_box(lua_State *L) {
  GateBox *box = luaL_checkudata(L, 1, GATE_MT);
  if (box->g == NULL) luaL_error(L, "the gate is gone");
  return box;
}

/* g:close(): what waits behind it comes back now; what is handed over later comes back too */
static int l_gate_close(lua_State *L) {
  herald_http_thread_close_gate(client, check_gate_box(L)->g);
  return 0;
}

static int l_gate_closed(lua_State *L) {
  lua_pushboolean(L, herald_http_gate_closed(check_gate_box(L)->g));
  return 1;
}

static int l_gate_gc(lua_State *L) {
  GateBox *box = luaL_checkudata(L, 1, GATE_MT);
  herald_http_gate_release(box->g);
  box->g = NULL;
  return 0;
}

/* batch{url=, method=, headers=, concurrency=, timeout_ms=, key_header=, ca_file=, http1=,
 *       limit=} */
static int l_batch(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer conc = field_integer(L, 1, "concurrency", 10);
  luaL_argcheck(L, conc >= 1 && conc <= 10000, 1, "concurrency must be 1..10000");
  lua_Integer timeout = field_integer(L, 1, "timeout_ms", 30000);
  luaL_argcheck(L, timeout > 0, 1, "timeout_ms must be > 0");
  field_string(L, 1, "url", 1);
  Batch *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  b->thread_ref = b->items_ref = b->keys_ref = b->opts_ref = b->gates_ref = LUA_NOREF;
  luaL_setmetatable(L, BATCH_MT);
  b->L = lua_newthread(L);
  b->thread_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  b->concurrency = (size_t)conc;
  /* Items wait in the transport thread's group rather than here, so a finished transfer is
   * followed by the next at once; the window bounds the copies handed over. */
  b->window = b->concurrency * 4 < 1024 ? 1024 : b->concurrency * 4;
  b->timeout_ms = (long)timeout;
  b->http1_only = field_boolean(L, 1, "http1", 0);
  b->slots = calloc(b->window, sizeof *b->slots);
  /* limit = http.limit(n): the batch's transfers count against n shared with other batches
   * (a provider profile's connections, whichever delivery lane sends) */
  HeraldHttpGroup *shared = opt_limit(L, 1);
  b->group = shared != NULL ? herald_http_group_retain(shared) : herald_http_group_new(b->concurrency);
  b->notify = herald_http_notify_new();
  if (b->slots == NULL || b->group == NULL || b->notify == NULL) return luaL_error(L, "out of memory");
  b->url = dup_string(L, field_string(L, 1, "url", 1));
  b->method = dup_string(L, field_token(L, 1, "method"));
  b->key_header = dup_string(L, field_token(L, 1, "key_header"));
  b->ca_file = dup_string(L, field_string(L, 1, "ca_file", 0));
  int top = lua_gettop(L);
  const char *lines[MAX_HEADERS];
  size_t n = header_lines(L, 1, "headers", lines);
  b->headers = calloc(n + 1, sizeof *b->headers);
  if (b->headers == NULL) return luaL_error(L, "out of memory");
  for (size_t i = 0; i < n; i++) {
    b->headers[i] = strdup(lines[i]);
    if (b->headers[i] == NULL) return luaL_error(L, "out of memory");
    b->nheaders++;
  }
  lua_settop(L, top);
  lua_newtable(L);
  b->items_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  b->keys_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  b->opts_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  b->gates_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

static int has_line_break(lua_State *L, int i) {
  size_t len;
  const char *s = lua_type(L, i) == LUA_TSTRING ? lua_tolstring(L, i, &len) : NULL;
  return s != NULL && breaks_line(s, len);
}

/* Copies an item's options ({url=, headers=}) into one string and pushes it:
 * "url\0line\0line\0..." (url empty when not given), each part checked where the caller can be
 * told what is wrong. The string is kept in place of the table, so what goes out is what add
 * checked, whatever the caller does to the table while the item waits for its turn; the lines
 * lie NUL-terminated in it, ready to hand over without making another string. */
static void pack_item_opts(lua_State *L, int o, lua_Integer seq) {
  if (!lua_istable(L, o)) luaL_error(L, "item %d: options must be a table {url=, headers=}", (int)seq);
  lua_getfield(L, o, "url");
  int url = lua_gettop(L);
  if (!lua_isnil(L, url) && (lua_type(L, url) != LUA_TSTRING || has_line_break(L, url)))
    luaL_error(L, "item %d: url must be a string without line breaks", (int)seq);
  lua_getfield(L, o, "headers");
  int ht = lua_gettop(L);
  int n = 0;
  if (lua_istable(L, ht)) {
    luaL_checkstack(L, 2 * MAX_HEADERS + 4, "item headers");
    lua_pushnil(L);
    while (lua_next(L, ht) != 0) {
      if (++n > MAX_HEADERS) luaL_error(L, "item %d: more than %d headers", (int)seq, MAX_HEADERS);
      int named = lua_type(L, -2) == LUA_TSTRING;
      if (lua_type(L, -1) != LUA_TSTRING || has_line_break(L, -1) || (named && has_line_break(L, -2)))
        luaL_error(L, "item %d: headers must be strings without line breaks", (int)seq);
      /* name (nil for a whole "Name: value" line) and value go below the table, anchored
       * there while the string is made */
      if (named) lua_pushvalue(L, -2); else lua_pushnil(L);
      lua_insert(L, ht++);
      lua_insert(L, ht++);
    }
  } else if (!lua_isnil(L, ht)) {
    luaL_error(L, "item %d: headers must be a table", (int)seq);
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (!lua_isnil(L, url)) luaL_addstring(&b, lua_tostring(L, url));
  luaL_addchar(&b, '\0');
  for (int i = 0; i < n; i++) {
    int name = url + 1 + 2 * i;
    if (!lua_isnil(L, name)) {
      luaL_addstring(&b, lua_tostring(L, name));
      luaL_addstring(&b, ": ");
    }
    luaL_addstring(&b, lua_tostring(L, name + 1));
    luaL_addchar(&b, '\0');
  }
  luaL_pushresult(&b);
  lua_replace(L, url);
  lua_settop(L, url);
}

/* Appends one item from the values at body_idx, key_idx and opts_idx (0: none); the batch's
 * tables of items, keys, options and gates lie from index tables on. */
static void batch_append(lua_State *L, Batch *b, int body_idx, int key_idx, int opts_idx,
                         int tables) {
  int items = tables, keys = tables + 1, opts = tables + 2, gates = tables + 3;
  lua_Integer seq = b->added + 1;
  if (lua_type(L, body_idx) != LUA_TSTRING) luaL_error(L, "item %d: the body must be a string", (int)seq);
  int has_key = key_idx != 0 && !lua_isnil(L, key_idx);
  if (has_key && (!lua_isstring(L, key_idx) || has_line_break(L, key_idx)))
    luaL_error(L, "item %d: the key must be a string or a number without line breaks", (int)seq);
  int has_opts = opts_idx != 0 && !lua_isnil(L, opts_idx);
  int has_gate = 0;
  if (has_opts) {
    pack_item_opts(L, opts_idx, seq);
    lua_getfield(L, opts_idx, "gate");
    if (!lua_isnil(L, -1) && luaL_testudata(L, -1, GATE_MT) == NULL)
      luaL_error(L, "item %d: gate must be a gate (http.gate())", (int)seq);
    has_gate = !lua_isnil(L, -1);
    if (has_gate) lua_rawseti(L, gates, seq); else lua_pop(L, 1);
    lua_rawseti(L, opts, seq);
  }
  lua_pushvalue(L, body_idx);
  lua_rawseti(L, items, seq);
  if (has_key) {
    lua_pushvalue(L, key_idx);
    lua_rawseti(L, keys, seq);
  }
  b->added = seq;  /* last: an error above leaves the batch as it was */
}

/* The batch's tables of items, keys, options and gates, pushed in that order. */
static void push_tables(lua_State *L, const Batch *b) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->items_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->keys_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->opts_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->gates_ref);
}

/* b:add(body[, key[, {url=, headers=, gate=}]]) -> seq. The key goes out in the key_header and
 * comes back with the outcome; url and headers override or extend the batch's for this item;
 * behind a gate (http.gate()) the item comes back unsent, class "recalled", when the gate
 * closes before it has started. */
static int l_batch_add(lua_State *L) {
  Batch *b = check_batch(L);
  get_client(L);
  lua_settop(L, 4);
  push_tables(L, b);
  batch_append(L, b, 2, 3, 4, 5);
  batch_pump(b);
  lua_pushinteger(L, b->added);
  return 1;
}

void herald_lua_batch_add(lua_State *L, int bi, int body, int key, int gate) {
  bi = lua_absindex(L, bi);
  body = lua_absindex(L, body);
  key = key != 0 ? lua_absindex(L, key) : 0;
  gate = gate != 0 ? lua_absindex(L, gate) : 0;
  Batch *b = luaL_checkudata(L, bi, BATCH_MT);
  if (b->closed) luaL_error(L, "the batch is closed");
  if (gate != 0 && luaL_testudata(L, gate, GATE_MT) == NULL) luaL_error(L, "not a gate (http.gate())");
  get_client(L);
  int top = lua_gettop(L);
  push_tables(L, b);
  batch_append(L, b, body, key, 0, top + 1);
  if (gate != 0) {
    lua_pushvalue(L, gate);
    lua_rawseti(L, top + 4, b->added);
  }
  lua_settop(L, top);
}

void herald_lua_batch_pump(lua_State *L, int bi) {
  Batch *b = luaL_checkudata(L, bi, BATCH_MT);
  if (!b->closed) batch_pump(b);
}

/* b:add_many(bodies[, keys[, options]]) -> last seq (lists in step, as add takes them) */
static int l_batch_add_many(lua_State *L) {
  Batch *b = check_batch(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  get_client(L);
  lua_settop(L, 4);
  if (!lua_isnil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  if (!lua_isnil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  push_tables(L, b);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    if (lua_isnil(L, 3)) lua_pushnil(L); else lua_rawgeti(L, 3, i);
    if (lua_isnil(L, 4)) lua_pushnil(L); else lua_rawgeti(L, 4, i);
    batch_append(L, b, 9, 10, 11, 5);
    lua_pop(L, 3);
  }
  batch_pump(b);
  lua_pushinteger(L, b->added);
  return 1;
}

static void batch_wait_cancel(HeraldTaskWait *w, void *data) {
  (void)w;
  Batch *b = data;
  b->wait = NULL;
  if (b->recall_wake != NULL) uv_timer_stop(&b->recall_wake->timer);
}

static int batch_wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  return batch_push_outcomes(L, (Batch *)ctx);  /* the waiter's argument holds the batch */
}

/* b:wait([min[, {recalled = true}]]) -> outcomes. Waits until min outcomes are ready
 * (default: everything added), or nothing is outstanding; with recalled, also until items come
 * back recalled (their gate closed), with every outcome ready by then. */
static int l_batch_wait(lua_State *L) {
  Batch *b = check_batch(L);
  if (b->wait != NULL) return luaL_error(L, "another task is waiting on this batch");
  size_t all = b->nout + batch_outstanding(b);
  lua_Integer min = luaL_optinteger(L, 2, (lua_Integer)all);
  luaL_argcheck(L, min >= 0, 2, "must be >= 0");
  int recalled = 0;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_getfield(L, 3, "recalled");
    recalled = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  if (recalled && b->recall_wake == NULL) {
    RecallWake *rw = calloc(1, sizeof *rw);
    if (rw == NULL) return luaL_error(L, "out of memory");
    if (uv_timer_init(&herald_context()->loop, &rw->timer) != 0) {
      free(rw);
      return luaL_error(L, "cannot create a timer");
    }
    rw->timer.data = rw;
    rw->b = b;
    b->recall_wake = rw;
  }
  b->wait_min = (size_t)min;
  b->wait_recalled = recalled;
  if (b->nout >= b->wait_min || batch_outstanding(b) == 0 || (recalled && b->nrecalled > 0))
    return batch_push_outcomes(L, b);
  b->wait = herald_task_wait_new(L, 0, batch_wait_cancel, b);
  batch_update_wake(b);
  /* Outcomes that finished quietly (nobody was waiting) count towards min but are not in yet:
   * the wake threshold just set counts only jobs still in flight. */
  herald_http_thread_hand_back(client);
  return lua_yieldk(L, 0, (lua_KContext)b, batch_wait_k);
}

/* b:stats() -> queued, in_flight, ready */
static int l_batch_stats(lua_State *L) {
  Batch *b = check_batch(L);
  lua_pushinteger(L, b->added - b->started);
  lua_pushinteger(L, (lua_Integer)b->in_flight);
  lua_pushinteger(L, (lua_Integer)b->nout);
  return 3;
}

/* Cancels what is in flight and releases everything; safe to call twice. */
static int l_batch_close(lua_State *L) {
  Batch *b = luaL_checkudata(L, 1, BATCH_MT);
  if (b->closed) return 0;
  /* Only another task can get here while one waits (the waiter holds the batch), and that
   * waiter would never be resumed. */
  if (b->wait != NULL) return luaL_error(L, "cannot close a batch while a task waits on it");
  b->closed = 1;
  if (b->recall_wake != NULL) {
    b->recall_wake->b = NULL;
    uv_close((uv_handle_t *)&b->recall_wake->timer, recall_wake_free);
    b->recall_wake = NULL;
  }
  for (size_t i = 0; i < b->window && b->slots; i++)
    if (b->slots[i].t != NULL && client != NULL) herald_http_thread_cancel(client, b->slots[i].t);
  herald_http_group_release(b->group);
  b->group = NULL;
  herald_http_notify_release(b->notify);
  b->notify = NULL;
  for (size_t i = 0; i < b->nout; i++) free(b->out[i].detail);
  free(b->out);
  free(b->slots);
  for (size_t i = 0; i < b->nheaders; i++) free(b->headers[i]);
  free(b->headers);
  free(b->url);
  free(b->method);
  free(b->key_header);
  free(b->keyline);
  free(b->ca_file);
  luaL_unref(L, LUA_REGISTRYINDEX, b->items_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, b->keys_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, b->opts_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, b->gates_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, b->thread_ref);
  return 0;
}

/* ---- policy helpers and client settings ---- */

/* verdict(class, status[, smtp]) -> "delivered" | "transient" | "permanent" */
static int l_verdict(lua_State *L) {
  const char *cls = luaL_optstring(L, 1, "ok");
  long status = (long)luaL_optinteger(L, 2, 0);
  int smtp = lua_toboolean(L, 3);
  HeraldNetClass c = kHeraldNetProtocol;
  for (int i = kHeraldNetOk; i <= kHeraldNetRecalled; i++)
    if (strcmp(cls, herald_net_class_name((HeraldNetClass)i)) == 0) c = (HeraldNetClass)i;
  lua_pushstring(L, herald_retry_verdict_name(herald_retry_verdict(c, status, smtp)));
  return 1;
}

static uint64_t backoff_rng;

/* backoff(attempt, min_ms, max_ms[, jitter]) -> ms */
static int l_backoff(lua_State *L) {
  int attempt = (int)luaL_checkinteger(L, 1);
  int64_t min_ms = (int64_t)luaL_checkinteger(L, 2);
  int64_t max_ms = (int64_t)luaL_checkinteger(L, 3);
  double jitter = luaL_optnumber(L, 4, 0.5);
  luaL_argcheck(L, min_ms >= 0, 2, "must be >= 0");
  luaL_argcheck(L, max_ms >= min_ms, 3, "must be >= min_ms");
  luaL_argcheck(L, jitter >= 0 && jitter <= 1, 4, "must be in 0..1");
  if (backoff_rng == 0) backoff_rng = (uint64_t)uv_hrtime() | 1;
  lua_pushinteger(L, herald_retry_backoff_ms(attempt, min_ms, max_ms, jitter, &backoff_rng));
  return 1;
}

/* configure{max_host_connections=, max_total_connections=, max_concurrent_streams=}: takes
 * effect for a new client, so only while nothing is in flight. */
static int l_configure(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (client != NULL && herald_http_thread_in_flight(client) > 0)
    return luaL_error(L, "cannot reconfigure the HTTP client while transfers are in flight");
  HeraldHttpClientOptions o = client_opts;
  o.max_host_connections = (long)field_integer(L, 1, "max_host_connections", o.max_host_connections);
  o.max_total_connections = (long)field_integer(L, 1, "max_total_connections", o.max_total_connections);
  o.max_concurrent_streams = (long)field_integer(L, 1, "max_concurrent_streams", o.max_concurrent_streams);
  luaL_argcheck(L, o.max_host_connections >= 0 && o.max_total_connections >= 0 &&
                   o.max_concurrent_streams >= 0, 1, "limits must be >= 0");
  client_opts = o;
  if (client != NULL) {
    herald_http_thread_free(client);
    client = NULL;
  }
  return 0;
}

/* stats() -> {in_flight=, connections=} */
static int l_stats(lua_State *L) {
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, client ? (lua_Integer)herald_http_thread_in_flight(client) : 0);
  lua_setfield(L, -2, "in_flight");
  lua_pushinteger(L, client ? (lua_Integer)herald_http_thread_connections(client) : 0);
  lua_setfield(L, -2, "connections");
  return 1;
}

static int l_sentinel_gc(lua_State *L) {
  (void)L;
  if (--client_users == 0 && client != NULL) {
    herald_http_thread_free(client);
    client = NULL;
  }
  return 0;
}

int luaopen_herald_core_http(lua_State *L) {
  /* One sentinel per state (a module may be loaded twice, e.g. after package.loaded was
   * reset): the client lives while some state uses it. */
  if (lua_getfield(L, LUA_REGISTRYINDEX, SENTINEL_KEY) == LUA_TNIL) {
    lua_newuserdatauv(L, 1, 0);
    luaL_newmetatable(L, SENTINEL_MT);
    lua_pushcfunction(L, l_sentinel_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, SENTINEL_KEY);
    client_users++;
  }
  lua_pop(L, 1);

  static const luaL_Reg batch_methods[] = {
    {"add", l_batch_add}, {"add_many", l_batch_add_many}, {"wait", l_batch_wait},
    {"stats", l_batch_stats}, {"close", l_batch_close}, {NULL, NULL},
  };
  luaL_newmetatable(L, BATCH_MT);
  luaL_newlib(L, batch_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_batch_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_batch_close);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);

  luaL_newmetatable(L, LIMIT_MT);
  lua_pushcfunction(L, l_limit_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);

  static const luaL_Reg gate_methods[] = {
    {"close", l_gate_close}, {"closed", l_gate_closed}, {NULL, NULL},
  };
  luaL_newmetatable(L, GATE_MT);
  luaL_newlib(L, gate_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_gate_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);

  static const luaL_Reg funcs[] = {
    {"limit", l_limit},         {"gate", l_gate},
    {"request", l_request},     {"send_mail", l_send_mail}, {"build_mail", l_build_mail},
    {"batch", l_batch},         {"verdict", l_verdict},     {"backoff", l_backoff},
    {"configure", l_configure}, {"stats", l_stats},
    {"mail_header_reserved", l_mail_header_reserved},
    {"mail_header_problem", l_mail_header_problem},       {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
