/* herald.core.server: the engagement HTTP server on the process loop (tracking links, PutEvents,
 * status webhooks; see runtime/ingest.h), and tracking tokens. */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/context.h"
#include "lua/host.h"
#include "lua/modules.h"
#include "runtime/feedback.h"
#include "runtime/http_server.h"
#include "runtime/ingest.h"
#include "runtime/tracking.h"

#define SERVER_MT "herald.core.server.Server"

/* Owned by the userdata until stop; then by the closing server, which frees it when every
 * handle is closed (the Lua value may be collected before that). */
/* A route answered by a Lua function (opts.routes): the function runs on the main thread,
 * synchronously, like the C handlers. */
typedef struct {
  lua_State *L;
  int ref;  /* registry reference of the handler; LUA_NOREF once the server is stopped */
} LuaRoute;

#define MAX_LUA_ROUTES 16

typedef struct {
  HeraldHttpServer *server;
  HeraldHttpRouter *router;
  HeraldTracker *tracker;
  HeraldIngest *ingest;
  LuaRoute routes[MAX_LUA_ROUTES];
  int n_routes;
  char host[64];
} Engage;

typedef struct {
  Engage *e;  /* NULL once stopped */
  lua_State *L;  /* main thread, for on_hit */
  int on_hit;    /* registry reference of the on_hit function, or LUA_NOREF */
} ServerBox;

static void set_string(lua_State *L, const char *k, const char *v) {
  if (v == NULL) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

static const char *kind_name(HeraldTrackingKind kind) {
  switch (kind) {
    case kHeraldTrackOpen: return "open";
    case kHeraldTrackClick: return "click";
    case kHeraldTrackUnsubscribe: return "unsubscribe";
  }
  return "?";
}

/* The tracker's recorder: stores the hit as an event (runtime/ingest.h), then calls
 * on_hit{kind, app, campaign, run, treatment, endpoint, message_id, url, user_agent, request_id}
 * on the main thread when one is set. An error is reported on stderr and counted as a failed
 * record; the recipient is answered either way. */
static int record_hit(void *ctx, const HeraldTrackingHit *hit) {
  ServerBox *box = ctx;
  int stored = herald_ingest_record_hit(box->e->ingest, hit);
  if (box->on_hit == LUA_NOREF) return stored;
  lua_State *L = box->L;
  const HeraldTrackingToken *t = hit->token;
  if (!lua_checkstack(L, 4)) return -1;
  lua_rawgeti(L, LUA_REGISTRYINDEX, box->on_hit);
  lua_createtable(L, 0, 10);
  set_string(L, "kind", kind_name(hit->kind));
  set_string(L, "app", t->app);
  set_string(L, "campaign", t->campaign);
  lua_pushinteger(L, (lua_Integer)t->run);
  lua_setfield(L, -2, "run");
  lua_pushinteger(L, t->treatment);
  lua_setfield(L, -2, "treatment");
  set_string(L, "endpoint", t->endpoint);
  set_string(L, "message_id", t->message_id);
  set_string(L, "url", t->url);
  set_string(L, "user_agent", hit->user_agent);
  set_string(L, "request_id", hit->request_id);
  if (herald_host_pcall(L, 1, 0) != LUA_OK) {
    fprintf(stderr, "herald: on_hit failed: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  return stored;
}

/* The process's store at the time of a request (opened on first use, like
 * herald_context_store, but reporting instead of raising: handlers run outside Lua). */
static HeraldStore *context_store(void *arg, HeraldError *err) {
  (void)arg;
  HeraldContext *c = herald_context();
  if (c->store == NULL && herald_store_open(c->db_path, &c->store, err) != kHeraldOk) {
    c->store = NULL;
    return NULL;
  }
  return c->store;
}

/* Calls handler{method, path, query, params = {name = value}, body, request_id} -> status,
 * body [, content type (default application/json)]. path parameters and the query string are
 * passed as received (percent-encoded). A handler that fails is answered 500. */
static void handle_lua(void *ctx, const HeraldHttpRequest *req, HeraldHttpResponse *res) {
  LuaRoute *route = ctx;
  if (route->ref == LUA_NOREF) {
    herald_http_response_error(res, 503, "the server is stopping");
    return;
  }
  lua_State *L = route->L;
  if (!lua_checkstack(L, 8)) {
    herald_http_response_error(res, 500, "out of memory");
    return;
  }
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, route->ref);
  lua_createtable(L, 0, 6);
  set_string(L, "method", req->method);
  set_string(L, "path", req->path);
  set_string(L, "query", req->query);
  set_string(L, "request_id", req->request_id);
  lua_pushlstring(L, req->body ? req->body : "", req->body ? req->body_len : 0);
  lua_setfield(L, -2, "body");
  lua_createtable(L, 0, req->param_count);
  for (int i = 0; i < req->param_count; i++) {
    /* "{name}" in the pattern: the key is the name without its braces */
    const char *n = req->param_names[i];
    size_t len = strlen(n);
    if (len >= 2 && n[0] == '{') lua_pushlstring(L, n + 1, len - 2);
    else lua_pushstring(L, n);
    lua_pushstring(L, req->param_values[i]);
    lua_settable(L, -3);
  }
  lua_setfield(L, -2, "params");
  if (herald_host_pcall(L, 1, 3) != LUA_OK) {
    fprintf(stderr, "herald: route %s %s failed: %s\n", req->method, req->path, lua_tostring(L, -1));
    lua_settop(L, top);
    herald_http_response_error(res, 500, "internal error");
    return;
  }
  int isnum;
  lua_Integer status = lua_tointegerx(L, top + 1, &isnum);
  size_t len = 0;
  const char *body = lua_tolstring(L, top + 2, &len);
  if (!isnum || status < 100 || status > 599 || body == NULL) {
    fprintf(stderr, "herald: route %s %s: the handler must return a status and a body\n", req->method,
            req->path);
    lua_settop(L, top);
    herald_http_response_error(res, 500, "internal error");
    return;
  }
  const char *type = lua_tostring(L, top + 3);
  herald_http_response_status(res, (int)status);
  if (herald_http_response_body(res, body, len, type ? type : "application/json") != 0) {
    lua_settop(L, top);
    herald_http_response_error(res, 500, "out of memory");
    return;
  }
  lua_settop(L, top);
}

/* Adds opts.routes = {{method =, pattern =, handler =}, ...} to the router. */
static int add_lua_routes(lua_State *L, int t, Engage *e, lua_State *main, HeraldError *err) {
  lua_getfield(L, t, "routes");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return kHeraldOk;
  }
  if (!lua_istable(L, -1)) return herald_error_set(err, kHeraldInvalid, "server option routes: expected a list");
  int list = lua_gettop(L);
  lua_Integer n = luaL_len(L, list);
  if (n > MAX_LUA_ROUTES)
    return herald_error_set(err, kHeraldLimit, "server option routes: at most %d", MAX_LUA_ROUTES);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    int r = lua_gettop(L);
    lua_getfield(L, r, "method");
    lua_getfield(L, r, "pattern");
    lua_getfield(L, r, "handler");
    if (!lua_isstring(L, r + 1) || !lua_isstring(L, r + 2) || !lua_isfunction(L, r + 3)) {
      lua_settop(L, list - 1);
      return herald_error_set(err, kHeraldInvalid, "server option routes[%d]: expected {method =,"
                              " pattern =, handler = function(request)}", (int)i);
    }
    LuaRoute *route = &e->routes[e->n_routes];
    route->L = main;
    lua_pushvalue(L, r + 3);
    route->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    e->n_routes++;
    if (herald_http_router_add(e->router, lua_tostring(L, r + 1), lua_tostring(L, r + 2), handle_lua,
                               route, err) != kHeraldOk) {
      lua_settop(L, list - 1);
      return err->code;
    }
    lua_settop(L, list);
  }
  lua_pop(L, 1);
  return kHeraldOk;
}

static void unref_routes(lua_State *L, Engage *e) {
  for (int i = 0; i < e->n_routes; i++) {
    luaL_unref(L, LUA_REGISTRYINDEX, e->routes[i].ref);
    e->routes[i].ref = LUA_NOREF;
  }
}

static void engage_free(void *arg) {
  Engage *e = arg;
  herald_tracker_free(e->tracker);
  herald_ingest_free(e->ingest);
  herald_http_router_free(e->router);
  free(e);
}

/* The server's commit hook: the hits of the iteration, in the journal or one transaction. */
static void commit_hits(void *ingest) { herald_ingest_end_iteration(ingest); }

static int opt_int(lua_State *L, int t, const char *k, lua_Integer def, lua_Integer min) {
  lua_getfield(L, t, k);
  lua_Integer v = def;
  if (!lua_isnil(L, -1)) {
    int ok;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok || v < min) luaL_error(L, "server option %s: expected an integer >= %d", k, (int)min);
  }
  lua_pop(L, 1);
  return (int)(v > 0x7fffffff ? 0x7fffffff : v);
}

/* Loads the signing key: opts.key (a secret string) or the runtime's (environment, database). */
static void load_key(lua_State *L, int t, HeraldTrackingKey *key) {
  HeraldError err = {0};
  const char *secret = NULL;
  if (t > 0) {
    lua_getfield(L, t, "key");
    secret = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
    lua_pop(L, 1);
  }
  const char *env = getenv("HERALD_TRACKING_KEY");
  int rc = secret ? herald_tracking_key_from_secret(secret, key, &err)
                  : herald_tracking_key_load(env && *env ? NULL : herald_context_store(L), key, &err);
  if (rc != kHeraldOk) luaL_error(L, "%s", err.msg);
}

/* Splits "host:port" or "[v6]:port". */
static int parse_listen(const char *s, char *host, size_t hostcap, int *port) {
  const char *colon = strrchr(s, ':');
  if (colon == NULL || colon == s) return -1;
  const char *h = s;
  size_t hlen = (size_t)(colon - s);
  if (h[0] == '[') {
    if (hlen < 3 || h[hlen - 1] != ']') return -1;
    h++;
    hlen -= 2;
  }
  if (hlen >= hostcap) return -1;
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (*end != '\0' || colon[1] == '\0' || p < 0 || p > 65535) return -1;
  *port = (int)p;
  return 0;
}

/* start{listen = 'HOST:PORT', key =, max_body =, max_header =, idle_timeout_ms =,
 *       request_timeout_ms =, max_connections =, on_hit = function(hit),
 *       routes = {{method =, pattern =, handler =}}, journal_min_hits = 16,
 *       journal_fold_hits = 1024, journal_fold_ms = 50} -> server, or nil, err.
 * Every open, click and one-click unsubscribe is stored as an event; on_hit then runs for it.
 * The journal options are runtime/ingest.h's HeraldJournalOptions (journal_min_hits = 0: no
 * journal, every iteration's hits go to the store before they are answered).
 * routes adds routes answered by Lua functions (see handle_lua). */
static int l_start(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "listen");
  const char *listen = luaL_optstring(L, -1, "127.0.0.1:8080");
  char host[64];
  int port;
  if (parse_listen(listen, host, sizeof host, &port) != 0)
    return luaL_error(L, "server option listen: expected HOST:PORT, got %s", listen);
  lua_pop(L, 1);
  HeraldHttpLimits limits;
  herald_http_limits_default(&limits);
  limits.max_body_bytes = (size_t)opt_int(L, 1, "max_body", (lua_Integer)limits.max_body_bytes, 0);
  limits.max_header_bytes = (size_t)opt_int(L, 1, "max_header", (lua_Integer)limits.max_header_bytes, 256);
  limits.idle_timeout_ms = (uint64_t)opt_int(L, 1, "idle_timeout_ms", (lua_Integer)limits.idle_timeout_ms, 1);
  limits.request_timeout_ms =
      (uint64_t)opt_int(L, 1, "request_timeout_ms", (lua_Integer)limits.request_timeout_ms, 1);
  limits.max_connections = opt_int(L, 1, "max_connections", limits.max_connections, 1);
  HeraldTrackingKey key;
  load_key(L, 1, &key);
  HeraldJournalOptions journal = {
    .min_hits = opt_int(L, 1, "journal_min_hits", 16, 0),
    .fold_hits = opt_int(L, 1, "journal_fold_hits", 1024, 1),
    .fold_ms = (uint64_t)opt_int(L, 1, "journal_fold_ms", 50, 1),
  };

  lua_getfield(L, 1, "on_hit");
  int has_hook = !lua_isnil(L, -1);
  if (has_hook && !lua_isfunction(L, -1)) return luaL_error(L, "server option on_hit: expected a function");
  ServerBox *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->e = NULL;
  box->on_hit = LUA_NOREF;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  box->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  luaL_setmetatable(L, SERVER_MT);
  lua_insert(L, -2);  /* box below the hook */
  if (has_hook) box->on_hit = luaL_ref(L, LUA_REGISTRYINDEX);
  else lua_pop(L, 1);
  Engage *e = calloc(1, sizeof *e);
  if (e == NULL) return luaL_error(L, "out of memory");
  snprintf(e->host, sizeof e->host, "%s", host);
  e->router = herald_http_router_new();
  e->tracker = herald_tracker_new(&key);
  e->ingest = herald_ingest_new(context_store, NULL);
  HeraldError err = {0};
  if (e->router == NULL || e->tracker == NULL || e->ingest == NULL) {
    engage_free(e);
    return luaL_error(L, "out of memory");
  }
  if (herald_tracker_routes(e->tracker, e->router, &err) != kHeraldOk ||
      herald_ingest_routes(e->ingest, e->router, &err) != kHeraldOk ||
      add_lua_routes(L, 1, e, box->L, &err) != kHeraldOk ||
      herald_feedback_routes(e->router, e->ingest, &err) != kHeraldOk ||
      herald_http_server_start(&herald_context()->loop, host, port, e->router, &limits, &e->server,
                               &err) != kHeraldOk) {
    unref_routes(L, e);
    engage_free(e);
    luaL_unref(L, LUA_REGISTRYINDEX, box->on_hit);
    box->on_hit = LUA_NOREF;
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  box->e = e;
  herald_tracker_set_recorder(e->tracker, record_hit, box);
  /* hits wait for the server's commit, once per loop iteration, before the answers go out */
  herald_ingest_queue_hits(e->ingest);
  if (journal.min_hits > 0) {
    HeraldError jerr = {0};
    int rc = herald_ingest_open_journal(e->ingest, &herald_context()->loop, &journal, &jerr);
    if (rc != kHeraldOk && rc != kHeraldLimit && rc != kHeraldInvalid)
      fprintf(stderr, "herald: tracking hits go straight to the store: %s\n", jerr.msg);
  }
  herald_http_server_set_commit(e->server, commit_hits, e->ingest);
  return 1;
}

/* The server is closed (it committed the queued hits before closing): free everything. */
static void server_closed(void *arg) { engage_free(arg); }

static Engage *check_running(lua_State *L) {
  ServerBox *box = luaL_checkudata(L, 1, SERVER_MT);
  if (box->e == NULL) luaL_error(L, "the server is stopped");
  return box->e;
}

static int l_port(lua_State *L) {
  lua_pushinteger(L, herald_http_server_port(check_running(L)->server));
  return 1;
}

static int l_address(lua_State *L) {
  Engage *e = check_running(L);
  int port = herald_http_server_port(e->server);
  if (strchr(e->host, ':')) lua_pushfstring(L, "[%s]:%d", e->host, port);
  else lua_pushfstring(L, "%s:%d", e->host, port);
  return 1;
}

static void set_count(lua_State *L, const char *k, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* stats() -> {connections, open, requests, client_errors, server_errors, timeouts, refused,
 *             opens, clicks, unsubscribes, unsubscribe_pages, rejected, record_failures,
 *             events_stored, store_failures}; hits are written at the end of the loop iteration
 *             that received them (before they are answered), so events_stored may trail opens +
 *             clicks + unsubscribes while a hook runs in that iteration. */
static int l_stats(lua_State *L) {
  Engage *e = check_running(L);
  HeraldHttpStats s;
  HeraldTrackingCounts c;
  herald_http_server_stats(e->server, &s);
  herald_tracker_counts(e->tracker, &c);
  HeraldIngestCounts ic;
  herald_ingest_counts(e->ingest, &ic);
  lua_createtable(L, 0, 15);
  set_count(L, "connections", s.connections);
  set_count(L, "open", s.open);
  set_count(L, "requests", s.requests);
  set_count(L, "client_errors", s.client_errors);
  set_count(L, "server_errors", s.server_errors);
  set_count(L, "timeouts", s.timeouts);
  set_count(L, "refused", s.refused);
  set_count(L, "opens", c.opens);
  set_count(L, "clicks", c.clicks);
  set_count(L, "unsubscribes", c.unsubscribes);
  set_count(L, "unsubscribe_pages", c.unsubscribe_pages);
  set_count(L, "rejected", c.rejected);
  set_count(L, "record_failures", c.record_failures);
  set_count(L, "events_stored", ic.stored);
  set_count(L, "store_failures", ic.failed);
  return 1;
}

/* stop(): stops listening and closes connections; safe to call twice (also __gc, __close). */
static int l_stop(lua_State *L) {
  ServerBox *box = luaL_checkudata(L, 1, SERVER_MT);
  Engage *e = box->e;
  box->e = NULL;
  if (e != NULL) {
    /* the closing server answers no more requests, so the hook is never called again */
    herald_tracker_set_recorder(e->tracker, NULL, NULL);
    unref_routes(L, e);
    herald_http_server_stop(e->server, server_closed, e);
    /* now, not when the server has closed: the process's last loop run closes every handle
     * still open, the journal's timer among them */
    herald_ingest_close_journal(e->ingest);
  }
  luaL_unref(L, LUA_REGISTRYINDEX, box->on_hit);
  box->on_hit = LUA_NOREF;
  return 0;
}

static const char *opt_field(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  const char *s = NULL;
  if (lua_type(L, -1) == LUA_TNUMBER || lua_type(L, -1) == LUA_TSTRING) s = lua_tostring(L, -1);
  else if (!lua_isnil(L, -1)) luaL_error(L, "tracking token field %s: expected a string", k);
  lua_pop(L, 1);  /* the table keeps strings alive; numbers were converted in place */
  return s;
}

static HeraldTrackingKind check_kind(lua_State *L, const char *kind) {
  if (strcmp(kind, "open") == 0) return kHeraldTrackOpen;
  if (strcmp(kind, "click") == 0) return kHeraldTrackClick;
  if (strcmp(kind, "unsubscribe") == 0) return kHeraldTrackUnsubscribe;
  luaL_error(L, "tracking token kind must be open, click or unsubscribe, got %s", kind);
  return kHeraldTrackOpen;
}

/* mint{kind =, app =, campaign =, run =, treatment =, endpoint =, message_id =, url =, key =}
 * -> token, or nil, err */
static int l_mint(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "kind");
  HeraldTrackingToken t;
  memset(&t, 0, sizeof t);
  t.kind = check_kind(L, luaL_checkstring(L, -1));
  lua_pop(L, 1);
  t.app = opt_field(L, 1, "app");
  if (t.app == NULL) t.app = herald_context()->app;
  t.campaign = opt_field(L, 1, "campaign");
  t.endpoint = opt_field(L, 1, "endpoint");
  t.message_id = opt_field(L, 1, "message_id");
  t.url = opt_field(L, 1, "url");
  t.run = (int64_t)opt_int(L, 1, "run", 0, 0);
  t.treatment = (int32_t)opt_int(L, 1, "treatment", 0, -1);
  HeraldTrackingKey key;
  load_key(L, 1, &key);
  HeraldError err = {0};
  char *token = NULL;
  if (herald_tracking_mint(&key, &t, &token, &err) != kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushstring(L, token);
  free(token);
  return 1;
}

/* verify(token, kind [, {key =}]) -> {kind, app, campaign, run, treatment, endpoint,
 * message_id, url}, or nil, err */
static int l_verify(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *kind = luaL_checkstring(L, 2);
  HeraldTrackingKind k = check_kind(L, kind);
  HeraldTrackingKey key;
  load_key(L, lua_istable(L, 3) ? 3 : 0, &key);
  HeraldTrackingParsed *p = malloc(sizeof *p);
  if (p == NULL) return luaL_error(L, "out of memory");
  HeraldError err = {0};
  if (herald_tracking_verify(&key, text, len, k, p, &err) != kHeraldOk) {
    free(p);
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_createtable(L, 0, 8);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, p->token.app);
  lua_setfield(L, -2, "app");
  lua_pushstring(L, p->token.campaign);
  lua_setfield(L, -2, "campaign");
  lua_pushinteger(L, (lua_Integer)p->token.run);
  lua_setfield(L, -2, "run");
  lua_pushinteger(L, p->token.treatment);
  lua_setfield(L, -2, "treatment");
  lua_pushstring(L, p->token.endpoint);
  lua_setfield(L, -2, "endpoint");
  lua_pushstring(L, p->token.message_id);
  lua_setfield(L, -2, "message_id");
  if (p->token.url) {
    lua_pushstring(L, p->token.url);
    lua_setfield(L, -2, "url");
  }
  free(p);
  return 1;
}

int luaopen_herald_core_server(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"port", l_port}, {"address", l_address}, {"stats", l_stats}, {"stop", l_stop}, {NULL, NULL},
  };
  if (luaL_newmetatable(L, SERVER_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_stop);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_stop);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {
    {"start", l_start}, {"mint", l_mint}, {"verify", l_verify}, {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
