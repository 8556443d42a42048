/* herald.core.store: endpoints, events, applications, read-only SQL and imports over the
 * process's store. Runtime failures return nil, message; argument misuse raises. The store is
 * opened on first use; a database that cannot be opened (corrupt, locked) raises. */
#include <lauxlib.h>
#include <string.h>

#include "lua/args.h"
#include "lua/context.h"
#include "lua/lherald_json.h"
#include "lua/modules.h"
#include "lua/sandbox.h"
#include "lua/task.h"
#include "runtime/app.h"
#include "runtime/endpoint.h"
#include "runtime/event.h"
#include "runtime/import.h"

static const char *app_arg(lua_State *L, int idx) {
  const char *app = luaL_optstring(L, idx, NULL);
  luaL_argcheck(L, app == NULL || !herald_lua_nul_inside(L, idx), idx, "contains a NUL character");
  return app ? app : herald_context()->app;
}

static int push_error(lua_State *L, const HeraldError *err) {
  lua_pushnil(L);
  lua_pushstring(L, err->msg);
  lua_pushstring(L, herald_error_code_name(err->code));
  return 3;
}

/* The id argument at idx (already checked to be a string) names what it says or nothing:
 * pushes nil, err and returns their count when it has a NUL inside, else returns 0. */
static int refuse_nul(lua_State *L, int idx, const char *field) {
  if (!herald_lua_nul_inside(L, idx)) return 0;
  HeraldError err = {0};
  herald_error_set(&err, kHeraldInvalid, "%s: contains a NUL character (\\u0000)", field);
  return push_error(L, &err);
}

/* Pushes a json result and releases it. */
static int push_result(lua_State *L, int rc, json_t *v, const HeraldError *err) {
  if (rc != kHeraldOk) return push_error(L, err);
  herald_lua_pushjson(L, v);
  json_decref(v);
  return 1;
}

static int l_endpoint_put(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *app = app_arg(L, 2);
  HeraldStore *store = herald_context_store(L);
  HeraldError err = {0};
  json_t *req = NULL, *out = NULL;
  if (herald_lua_tojson(L, 1, &req, &err) != kHeraldOk) return push_error(L, &err);
  int rc = herald_endpoint_put(store, app, req, &out, &err);
  json_decref(req);
  return push_result(L, rc, out, &err);
}

static int l_endpoint_get(lua_State *L) {
  const char *id = luaL_checkstring(L, 1);
  const char *app = app_arg(L, 2);
  if (refuse_nul(L, 1, "Id")) return 3;
  HeraldError err = {0};
  json_t *out = NULL;
  int rc = herald_endpoint_get(herald_context_store(L), app, id, &out, &err);
  return push_result(L, rc, out, &err);
}

static int l_endpoint_delete(lua_State *L) {
  const char *id = luaL_checkstring(L, 1);
  const char *app = app_arg(L, 2);
  if (refuse_nul(L, 1, "Id")) return 3;
  HeraldError err = {0};
  json_t *out = NULL;
  int rc = herald_endpoint_delete(herald_context_store(L), app, id, &out, &err);
  return push_result(L, rc, out, &err);
}

static int l_endpoint_by_user(lua_State *L) {
  const char *user = luaL_checkstring(L, 1);
  const char *app = app_arg(L, 2);
  if (refuse_nul(L, 1, "User.UserId")) return 3;
  HeraldError err = {0};
  json_t *out = NULL;
  int rc = herald_endpoint_by_user(herald_context_store(L), app, user, &out, &err);
  return push_result(L, rc, out, &err);
}

/* endpoint_scan(after, limit [, app]) -> list, last (or nil, err) */
static int l_endpoint_scan(lua_State *L) {
  long long after = (long long)luaL_checkinteger(L, 1);
  int limit = (int)luaL_checkinteger(L, 2);
  luaL_argcheck(L, limit > 0 && limit <= 10000, 2, "must be 1..10000");
  const char *app = app_arg(L, 3);
  HeraldError err = {0};
  json_t *out = NULL;
  long long last = after;
  int rc = herald_endpoint_scan(herald_context_store(L), app, after, limit, &out, &last, &err);
  int n = push_result(L, rc, out, &err);
  if (rc != kHeraldOk) return n;
  lua_pushinteger(L, (lua_Integer)last);
  return 2;
}

static int l_endpoint_count(lua_State *L) {
  const char *app = app_arg(L, 1);
  HeraldError err = {0};
  long long n = 0;
  if (herald_endpoint_count(herald_context_store(L), app, &n, &err) != kHeraldOk)
    return push_error(L, &err);
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

static int l_event_put(lua_State *L) {
  const char *endpoint_id = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *app = app_arg(L, 3);
  if (refuse_nul(L, 1, "EndpointId")) return 3;
  HeraldStore *store = herald_context_store(L);
  HeraldError err = {0};
  json_t *ev = NULL;
  if (herald_lua_tojson(L, 2, &ev, &err) != kHeraldOk) return push_error(L, &err);
  int inserted = 0;
  char id[129];
  int rc = herald_event_put(store, app, endpoint_id, ev, &inserted, id, &err);
  json_decref(ev);
  if (rc != kHeraldOk) return push_error(L, &err);
  lua_pushstring(L, id);
  lua_pushboolean(L, inserted);
  return 2;
}

static int l_event_put_batch(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *app = app_arg(L, 2);
  HeraldStore *store = herald_context_store(L);
  HeraldError err = {0};
  json_t *list = NULL;
  if (herald_lua_tojson(L, 1, &list, &err) != kHeraldOk) return push_error(L, &err);
  if (json_is_object(list) && json_object_size(list) == 0) {
    json_decref(list);
    list = json_array();
  }
  long long inserted = 0;
  int rc = herald_event_put_batch(store, app, list, &inserted, &err);
  json_decref(list);
  if (rc != kHeraldOk) return push_error(L, &err);
  lua_pushinteger(L, (lua_Integer)inserted);
  return 1;
}

static int l_event_for_endpoint(lua_State *L) {
  const char *id = luaL_checkstring(L, 1);
  const char *since = luaL_optstring(L, 2, NULL);
  const char *type = luaL_optstring(L, 3, NULL);
  lua_Integer limit = luaL_optinteger(L, 4, 0);
  const char *app = app_arg(L, 5);
  if (refuse_nul(L, 1, "EndpointId")) return 3;
  if (since != NULL && refuse_nul(L, 2, "since")) return 3;
  if (type != NULL && refuse_nul(L, 3, "type")) return 3;
  HeraldError err = {0};
  json_t *out = NULL;
  int rc = herald_event_for_endpoint(herald_context_store(L), app, id, since, type,
                                     (long long)limit, &out, &err);
  return push_result(L, rc, out, &err);
}

static int l_app_create(lua_State *L) {
  const char *id = luaL_checkstring(L, 1);
  const char *name = luaL_optstring(L, 2, NULL);
  if (refuse_nul(L, 1, "Id")) return 3;
  if (name != NULL && refuse_nul(L, 2, "Name")) return 3;
  HeraldError err = {0};
  if (herald_app_create(herald_context_store(L), id, name, &err) != kHeraldOk)
    return push_error(L, &err);
  lua_pushstring(L, id);
  return 1;
}

static int l_app_list(lua_State *L) {
  HeraldError err = {0};
  json_t *out = NULL;
  int rc = herald_app_list(herald_context_store(L), &out, &err);
  return push_result(L, rc, out, &err);
}

/* Types were checked before the statement was prepared. */
static int bind_value(lua_State *L, sqlite3_stmt *st, int i, int idx) {
  switch (lua_type(L, idx)) {
    case LUA_TNIL: return sqlite3_bind_null(st, i);
    case LUA_TBOOLEAN: return sqlite3_bind_int(st, i, lua_toboolean(L, idx));
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) return sqlite3_bind_int64(st, i, lua_tointeger(L, idx));
      return sqlite3_bind_double(st, i, lua_tonumber(L, idx));
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      return sqlite3_bind_text(st, i, s, (int)len, SQLITE_TRANSIENT);
    }
    default: return sqlite3_bind_null(st, i);
  }
}

/* A query's rows become Lua tables as they are stepped; this runs under lua_pcall so that a
 * memory error (the sandbox's cap) returns to l_query, which finalizes the statement: left
 * open, it would keep its read snapshot and the connection could write no more. */
static int query_rows(lua_State *L) {
  sqlite3_stmt *st = lua_touserdata(L, 1);
  int *rc = lua_touserdata(L, 2);
  lua_newtable(L);
  int ncols = sqlite3_column_count(st);
  lua_Integer row = 0;
  while ((*rc = sqlite3_step(st)) == SQLITE_ROW) {
    lua_createtable(L, 0, ncols);
    for (int c = 0; c < ncols; c++) {
      switch (sqlite3_column_type(st, c)) {
        case SQLITE_INTEGER: lua_pushinteger(L, sqlite3_column_int64(st, c)); break;
        case SQLITE_FLOAT: lua_pushnumber(L, sqlite3_column_double(st, c)); break;
        case SQLITE_NULL: continue;
        default:
          lua_pushlstring(L, (const char *)sqlite3_column_blob(st, c),
                          (size_t)sqlite3_column_bytes(st, c));
      }
      lua_setfield(L, -2, sqlite3_column_name(st, c));
    }
    lua_rawseti(L, -2, ++row);
  }
  return 1;
}

/* A query runs in C, where neither the sandbox's count hook nor the REPL's Ctrl-C hook fires,
 * and a recursive CTE can run forever. SQLite calls this every QUERY_PROGRESS_STEP virtual
 * machine steps (a few microseconds of work, so the checks cost nothing measurable); a non-zero
 * return interrupts the query. It is set only for herald.db.query from campaign code or the
 * REPL, never for the runtime's own statements. */
#define QUERY_PROGRESS_STEP 10000

typedef enum { kQueryRunning, kQuerySpent, kQueryStopping, kQueryInterrupted } QueryStop;

typedef struct {
  lua_State *L;
  int sandboxed;
  QueryStop stop;
} QueryWatch;

static int query_progress(void *ud) {
  QueryWatch *w = ud;
  if (w->sandboxed && herald_sandbox_spent(w->L)) w->stop = kQuerySpent;
  else if (w->sandboxed && herald_task_stop_requested()) w->stop = kQueryStopping;
  else if (herald_readline_interrupted()) w->stop = kQueryInterrupted;
  return w->stop != kQueryRunning;
}

/* Read-only SQL for the REPL and reports: one statement, refused unless SQLite says it does
 * not write, parameters bound (never spliced into the text). In campaign code the query ends
 * with the call's time limit and when herald stops (SIGTERM); in the REPL, with Ctrl-C. */
static int l_query(lua_State *L) {
  size_t len;
  const char *sql = luaL_checklstring(L, 1, &len);
  int nparams = lua_gettop(L) - 1;
  for (int i = 2; i <= nparams + 1; i++) {
    int t = lua_type(L, i);
    if (t != LUA_TNIL && t != LUA_TBOOLEAN && t != LUA_TNUMBER && t != LUA_TSTRING)
      return luaL_argerror(L, i, "parameters are nil, booleans, numbers or strings");
  }
  HeraldStore *store = herald_context_store(L);
  sqlite3 *db = herald_store_db(store);
  sqlite3_stmt *st = NULL;
  const char *tail = NULL;
  /* the store's authorizer refuses ATTACH and DETACH (store.c) */
  int prc = sqlite3_prepare_v2(db, sql, (int)len, &st, &tail);
  if (prc != SQLITE_OK) {
    lua_pushnil(L);
    lua_pushfstring(L, "query: %s", sqlite3_errmsg(db));
    return 2;
  }
  const char *p = tail;
  while (p && *p && strchr(" \t\r\n;", *p)) p++;
  const char *refusal = NULL;
  if (st == NULL) refusal = "query: no SQL statement";
  else if (p && *p) refusal = "query: one statement at a time";
  else if (!sqlite3_stmt_readonly(st)) refusal = "query: only read-only statements (SELECT, ...) are allowed; the store is changed through herald.endpoints / herald.events";
  else if (nparams != sqlite3_bind_parameter_count(st))
    refusal = lua_pushfstring(L, "query: the statement has %d parameters, %d given",
                              sqlite3_bind_parameter_count(st), nparams);
  if (refusal != NULL) {
    sqlite3_finalize(st);
    lua_pushnil(L);
    lua_pushstring(L, refusal);
    return 2;
  }
  for (int i = 1; i <= nparams; i++) bind_value(L, st, i, i + 1);
  QueryWatch watch = {L, herald_sandbox_is(L), kQueryRunning};
  int watched = watch.sandboxed || herald_readline_catching();
  if (watched) sqlite3_progress_handler(db, QUERY_PROGRESS_STEP, query_progress, &watch);
  int rc = SQLITE_OK;
  lua_pushcfunction(L, query_rows);
  lua_pushlightuserdata(L, st);
  lua_pushlightuserdata(L, &rc);
  int status = lua_pcall(L, 2, 1, 0);
  if (watched) sqlite3_progress_handler(db, 0, NULL, NULL);
  if (status != LUA_OK) {
    sqlite3_finalize(st);
    return lua_error(L);
  }
  if (rc != SQLITE_DONE) {
    lua_pushnil(L);
    lua_pushfstring(L, "query: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    switch (watch.stop) {
      case kQuerySpent: return herald_sandbox_raise_spent(L);
      case kQueryStopping: return luaL_error(L, "query: interrupted: herald is stopping");
      case kQueryInterrupted:
        herald_readline_take_interrupt();
        return luaL_error(L, "interrupted");
      case kQueryRunning: return 2;
    }
  }
  sqlite3_finalize(st);
  return 1;
}

static int l_import(lua_State *L, int events) {
  const char *path = luaL_checkstring(L, 1);
  const char *app = app_arg(L, 2);
  const char *fmt = luaL_optstring(L, 3, "auto");
  HeraldImportFormat format = kHeraldImportAuto;
  if (strcmp(fmt, "csv") == 0) format = kHeraldImportCsv;
  else if (strcmp(fmt, "json") == 0) format = kHeraldImportJson;
  else if (strcmp(fmt, "auto") != 0) return luaL_argerror(L, 3, "format is auto, csv or json");
  HeraldStore *store = herald_context_store(L);
  HeraldError err = {0};
  HeraldImportResult res;
  int rc = events ? herald_import_events(store, app, path, &res, &err)
                  : herald_import_endpoints(store, app, path, format, &res, &err);
  if (rc != kHeraldOk) return push_error(L, &err);
  lua_pushinteger(L, (lua_Integer)res.rows);
  lua_pushnumber(L, res.seconds);
  lua_pushinteger(L, (lua_Integer)res.inserted);
  return 3;
}

static int l_import_endpoints(lua_State *L) { return l_import(L, 0); }
static int l_import_events(lua_State *L) { return l_import(L, 1); }

int luaopen_herald_core_store(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"endpoint_put", l_endpoint_put},
    {"endpoint_get", l_endpoint_get},
    {"endpoint_delete", l_endpoint_delete},
    {"endpoint_by_user", l_endpoint_by_user},
    {"endpoint_scan", l_endpoint_scan},
    {"endpoint_count", l_endpoint_count},
    {"event_put", l_event_put},
    {"event_put_batch", l_event_put_batch},
    {"event_for_endpoint", l_event_for_endpoint},
    {"app_create", l_app_create},
    {"app_list", l_app_list},
    {"query", l_query},
    {"import_endpoints", l_import_endpoints},
    {"import_events", l_import_events},
    {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
