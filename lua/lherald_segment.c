/* herald.core.segment: what stdlib/herald/segment.lua needs from C. Read-only prepared
 * statements over the store with named parameters and columnar batch fetches (a batch of rows
 * comes back as one Lua array per column, so evaluating a Lua predicate costs no table per
 * row), the segment SQL functions, and the segment version store. Campaign code may load it:
 * statements refuse anything that writes, and ATTACH. */
#include <lauxlib.h>
#include <string.h>

#include "lua/args.h"
#include "lua/context.h"
#include "lua/host.h"
#include "lua/lherald_json.h"
#include "lua/modules.h"
#include "lua/sandbox.h"
#include "runtime/import.h"
#include "runtime/segment.h"

#define STMT_TYPE "herald.segment.stmt"

typedef struct {
  sqlite3_stmt *st;
  int done; /* the last step returned SQLITE_DONE */
} SegmentStmt;

static sqlite3 *store_db(lua_State *L) {
  HeraldStore *store = herald_context_store(L);
  sqlite3 *db = herald_store_db(store);
  /* Once per connection: SQLite refuses to redefine a function while statements run. */
  static sqlite3 *registered = NULL;
  if (db != registered) {
    HeraldError err = {0};
    if (herald_segment_register_sql(db, &err) != kHeraldOk) luaL_error(L, "%s", err.msg);
    registered = db;
  }
  return db;
}

static SegmentStmt *check_stmt(lua_State *L) {
  SegmentStmt *s = luaL_checkudata(L, 1, STMT_TYPE);
  if (s->st == NULL) luaL_error(L, "segment statement is closed");
  return s;
}

/* prepare(sql) -> stmt, or nil, message */
static int l_prepare(lua_State *L) {
  size_t len;
  const char *sql = luaL_checklstring(L, 1, &len);
  sqlite3 *db = store_db(L);
  sqlite3_stmt *st = NULL;
  const char *tail = NULL;
  /* the store's authorizer refuses ATTACH and DETACH (store.c) */
  int rc = sqlite3_prepare_v3(db, sql, (int)len, SQLITE_PREPARE_PERSISTENT, &st, &tail);
  if (rc != SQLITE_OK) {
    lua_pushnil(L);
    lua_pushfstring(L, "segment SQL: %s", sqlite3_errmsg(db));
    return 2;
  }
  while (tail && *tail && strchr(" \t\r\n;", *tail)) tail++;
  if (st == NULL || (tail && *tail) || !sqlite3_stmt_readonly(st)) {
    sqlite3_finalize(st);
    return luaL_error(L, "segment SQL must be one read-only statement");
  }
  SegmentStmt *s = lua_newuserdatauv(L, sizeof *s, 0);
  s->st = st;
  s->done = 0;
  luaL_setmetatable(L, STMT_TYPE);
  return 1;
}

/* stmt:bind(params) resets the statement and binds every :name from params[name]; a missing
 * parameter raises (the compiler produced it, so it is a bug, not bad input). */
static int l_bind(lua_State *L) {
  SegmentStmt *s = check_stmt(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  sqlite3_reset(s->st);
  sqlite3_clear_bindings(s->st);
  s->done = 0;
  int n = sqlite3_bind_parameter_count(s->st);
  for (int i = 1; i <= n; i++) {
    const char *name = sqlite3_bind_parameter_name(s->st, i);
    if (name == NULL) return luaL_error(L, "segment SQL: positional parameter %d", i);
    int t = lua_getfield(L, 2, name + 1);
    int rc;
    switch (t) {
      case LUA_TNUMBER:
        rc = lua_isinteger(L, -1) ? sqlite3_bind_int64(s->st, i, lua_tointeger(L, -1))
                                  : sqlite3_bind_double(s->st, i, lua_tonumber(L, -1));
        break;
      case LUA_TSTRING: {
        size_t len;
        const char *v = lua_tolstring(L, -1, &len);
        rc = sqlite3_bind_text(s->st, i, v, (int)len, SQLITE_TRANSIENT);
        break;
      }
      case LUA_TBOOLEAN: rc = sqlite3_bind_int(s->st, i, lua_toboolean(L, -1)); break;
      default: return luaL_error(L, "segment SQL: parameter %s has no value", name);
    }
    lua_pop(L, 1);
    if (rc != SQLITE_OK) return luaL_error(L, "segment SQL: binding %s failed", name);
  }
  lua_settop(L, 1);
  return 1;
}

static void push_column(lua_State *L, sqlite3_stmt *st, int c) {
  switch (sqlite3_column_type(st, c)) {
    case SQLITE_INTEGER: lua_pushinteger(L, sqlite3_column_int64(st, c)); break;
    case SQLITE_FLOAT: lua_pushnumber(L, sqlite3_column_double(st, c)); break;
    case SQLITE_NULL: lua_pushnil(L); break;
    default: {
      const char *v = (const char *)sqlite3_column_text(st, c);
      lua_pushlstring(L, v, (size_t)sqlite3_column_bytes(st, c));
    }
  }
}

static int step_error(lua_State *L, SegmentStmt *s) {
  sqlite3 *db = sqlite3_db_handle(s->st);
  lua_pushnil(L);
  lua_pushfstring(L, "segment query: %s", sqlite3_errmsg(db));
  sqlite3_reset(s->st);
  return 2;
}

/* stmt:fetch(limit) -> n, column1, column2, ...: up to limit rows as one array per column
 * (NULL leaves a hole). n is 0 once the rows are exhausted. */
static int fetch_rows(lua_State *L) {
  SegmentStmt *s = check_stmt(L);
  int limit = (int)luaL_checkinteger(L, 2);
  luaL_argcheck(L, limit > 0 && limit <= 100000, 2, "must be 1..100000");
  int ncols = sqlite3_column_count(s->st);
  luaL_checkstack(L, ncols + 2, "too many columns");
  lua_pushinteger(L, 0);
  for (int c = 0; c < ncols; c++) lua_createtable(L, limit, 0);
  int n = 0;
  while (!s->done && n < limit) {
    int rc = sqlite3_step(s->st);
    if (rc == SQLITE_DONE) {
      s->done = 1;
      break;
    }
    if (rc != SQLITE_ROW) return step_error(L, s);
    n++;
    for (int c = 0; c < ncols; c++) {
      push_column(L, s->st, c);
      lua_rawseti(L, 4 + c, n);
    }
  }
  lua_pushinteger(L, n);
  lua_replace(L, 3);
  return ncols + 1;
}

/* stmt:first() -> the first row's columns (nothing when there is no row); resets. */
static int first_row(lua_State *L) {
  SegmentStmt *s = check_stmt(L);
  int rc = sqlite3_step(s->st);
  if (rc == SQLITE_DONE) {
    sqlite3_reset(s->st);
    return 0;
  }
  if (rc != SQLITE_ROW) return step_error(L, s);
  int ncols = sqlite3_column_count(s->st);
  luaL_checkstack(L, ncols, "too many columns");
  for (int c = 0; c < ncols; c++) push_column(L, s->st, c);
  sqlite3_reset(s->st);
  return ncols;
}

/* Runs body over the arguments under lua_pcall: the rows' values are pushed between steps, and
 * a memory error there would leave the statement stepped, holding its read snapshot (no write
 * of this connection could commit) until the statement is next bound or collected. */
static int step_protected(lua_State *L, lua_CFunction body) {
  SegmentStmt *s = check_stmt(L);
  int nargs = lua_gettop(L);
  lua_pushcfunction(L, body);
  lua_insert(L, 1);
  if (lua_pcall(L, nargs, LUA_MULTRET, 0) != LUA_OK) {
    if (s->st != NULL) sqlite3_reset(s->st);
    s->done = 1;
    return lua_error(L);
  }
  return lua_gettop(L);
}

static int l_fetch(lua_State *L) { return step_protected(L, fetch_rows); }
static int l_first(lua_State *L) { return step_protected(L, first_row); }

static int l_sql(lua_State *L) {
  SegmentStmt *s = check_stmt(L);
  char *sql = sqlite3_expanded_sql(s->st);
  lua_pushstring(L, sql ? sql : sqlite3_sql(s->st));
  sqlite3_free(sql);
  return 1;
}

static int l_close(lua_State *L) {
  SegmentStmt *s = luaL_checkudata(L, 1, STMT_TYPE);
  if (s->st != NULL) sqlite3_finalize(s->st);
  s->st = NULL;
  return 0;
}

static const char *app_arg(lua_State *L, int idx) {
  const char *app = luaL_optstring(L, idx, NULL);
  return app ? app : herald_context()->app;
}

/* save(id, name, type, definition_json [, app]) -> version, or nil, message */
static int l_save(lua_State *L) {
  const char *id = luaL_checkstring(L, 1), *name = luaL_checkstring(L, 2);
  const char *type = luaL_checkstring(L, 3), *def = luaL_checkstring(L, 4);
  const char *app = app_arg(L, 5);
  if (herald_lua_refuse_nul(L, 1, "id") || herald_lua_refuse_nul(L, 2, "name") ||
      herald_lua_refuse_nul(L, 3, "type") || herald_lua_refuse_nul(L, 4, "definition") ||
      herald_lua_refuse_nul(L, 5, "app"))
    return 2;
  HeraldError err = {0};
  int version = 0;
  if (herald_segment_save(herald_context_store(L), app, id, name, type, def, &version, &err) !=
      kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushinteger(L, version);
  return 1;
}

/* add_members(id, version, ids [, app]) -> true, or nil, message */
static int l_add_members(lua_State *L) {
  const char *id = luaL_checkstring(L, 1);
  int version = (int)luaL_checkinteger(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  const char *app = app_arg(L, 4);
  if (herald_lua_refuse_nul(L, 1, "id") || herald_lua_refuse_nul(L, 4, "app")) return 2;
  HeraldStore *store = herald_context_store(L);
  HeraldError err = {0};
  lua_Integer n = luaL_len(L, 3);
  /* all checked before any is added: a refused list adds none */
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 3, i);
    int nul = herald_lua_nul_inside(L, -1);
    lua_pop(L, 1);
    if (nul) {
      lua_pushnil(L);
      lua_pushfstring(L, "members[%d]: contains a NUL character (\\u0000)", (int)i);
      return 2;
    }
  }
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 3, i);
    const char *ep = lua_tostring(L, -1);
    if (ep == NULL) return luaL_error(L, "add_members: member %d is not a string", (int)i);
    if (herald_segment_add_member(store, app, id, version, ep, &err) != kHeraldOk) {
      lua_pushnil(L);
      lua_pushstring(L, err.msg);
      return 2;
    }
    lua_pop(L, 1);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* atomic(fn, ...) -> fn's results: fn runs inside one store transaction, which rolls back
 * (and the error propagates) when fn raises. */
static int l_atomic(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  HeraldStore *store = herald_context_store(L);
  HeraldError err = {0};
  if (herald_store_begin(store, &err) != kHeraldOk) return luaL_error(L, "%s", err.msg);
  int base = lua_gettop(L);
  if (lua_pcall(L, base - 1, LUA_MULTRET, 0) != LUA_OK) {
    herald_store_rollback(store);
    return lua_error(L);
  }
  if (herald_store_commit(store, &err) != kHeraldOk) return luaL_error(L, "%s", err.msg);
  return lua_gettop(L);
}

/* instant(text) -> milliseconds since the epoch, day number; nil when not an ISO-8601 date */
static int l_instant(lua_State *L) {
  const char *s = luaL_checkstring(L, 1);
  double ms;
  int64_t day;
  if (!herald_segment_parse_instant(s, &ms, &day)) return 0;
  lua_pushnumber(L, ms);
  lua_pushinteger(L, (lua_Integer)day);
  return 2;
}

static int l_km(lua_State *L) {
  lua_pushnumber(L, herald_segment_km(luaL_checknumber(L, 1), luaL_checknumber(L, 2),
                                      luaL_checknumber(L, 3), luaL_checknumber(L, 4)));
  return 1;
}

/* index_check(kind, name) -> true, or nil, message */
static int l_index_check(lua_State *L) {
  HeraldError err = {0};
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  if (herald_lua_refuse_nul(L, 1, "kind") || herald_lua_refuse_nul(L, 2, "name")) return 2;
  if (herald_segment_index_check(lua_tostring(L, 1), lua_tostring(L, 2), &err) !=
      kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* index_add(kind, name [, app [, origin]]) -> created (false when it existed), or nil, message.
 * The name is checked in C (herald_segment_index_check) whatever the caller did. */
static int l_index_add(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1), *name = luaL_checkstring(L, 2);
  const char *app = app_arg(L, 3), *origin = luaL_optstring(L, 4, "lua");
  if (herald_lua_refuse_nul(L, 1, "kind") || herald_lua_refuse_nul(L, 2, "name") ||
      herald_lua_refuse_nul(L, 3, "app"))
    return 2;
  HeraldError err = {0};
  int created = 0;
  if (herald_segment_index_add(herald_context_store(L), app, kind, name, origin, &created,
                               &err) != kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushboolean(L, created);
  return 1;
}

/* index_drop(kind, name [, app]) -> dropped (false when there was none), or nil, message */
static int l_index_drop(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1), *name = luaL_checkstring(L, 2);
  const char *app = app_arg(L, 3);
  if (herald_lua_refuse_nul(L, 1, "kind") || herald_lua_refuse_nul(L, 2, "name") ||
      herald_lua_refuse_nul(L, 3, "app"))
    return 2;
  HeraldError err = {0};
  int dropped = 0;
  if (herald_segment_index_drop(herald_context_store(L), app, kind, name, &dropped, &err) !=
      kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushboolean(L, dropped);
  return 1;
}

typedef struct {
  lua_State *L;
  int fn;          /* stack index of the Lua function */
} EachCtx;

/* Protected: fn(request) with the row (a light userdata) as a Lua table. */
static int call_with_row(lua_State *L) {
  json_t *row = lua_touserdata(L, 2);
  lua_settop(L, 1);
  herald_lua_pushjson(L, row);
  lua_call(L, 1, 2);
  return 2;
}

/* fn returns true to go on, or nil, message; a raised error stops the read as well. */
static int each_request(void *ctx, json_t *row, HeraldError *err) {
  EachCtx *e = ctx;
  lua_State *L = e->L;
  lua_pushcfunction(L, call_with_row);
  lua_pushvalue(L, e->fn);
  lua_pushlightuserdata(L, row);
  int status = lua_pcall(L, 2, 2, 0);
  if (status == LUA_OK && lua_toboolean(L, -2)) {
    lua_pop(L, 2);
    return kHeraldOk;
  }
  const char *msg = lua_tostring(L, -1);
  herald_error_set(err, kHeraldInvalid, "%s", msg ? msg : "refused");
  lua_pop(L, status == LUA_OK ? 2 : 1);
  return err->code;
}

/* each_endpoint_request(path, format | nil, fn) -> 'csv' | 'json', or nil, "FILE:LINE: ...".
 * Reads an endpoint file as `herald import endpoints` does (runtime/import.c) and calls fn on
 * each EndpointRequest in file order; fn returns true, or nil, message to stop. Campaign code
 * has no io library, so the host reads the file: there, only a relative path below the working
 * directory, as for the file channel (lherald_filechannel.c); host code names any path. */
static int l_each_endpoint_request(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  const char *fmt = luaL_optstring(L, 2, NULL);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (herald_lua_refuse_nul(L, 1, "path")) return 2;
  HeraldImportFormat format = kHeraldImportAuto;
  if (fmt != NULL && strcmp(fmt, "csv") == 0) format = kHeraldImportCsv;
  else if (fmt != NULL && strcmp(fmt, "json") == 0) format = kHeraldImportJson;
  else if (fmt != NULL) return luaL_argerror(L, 2, "'csv' or 'json'");
  if (herald_sandbox_is(L) && !herald_host_path_below_cwd(path)) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: campaign code reads only relative paths below the working directory",
                    path);
    return 2;
  }
  EachCtx e = {L, 3};
  HeraldError err = {0};
  HeraldImportFormat read = format;
  if (herald_import_read_endpoints(path, format, each_request, &e, &read, &err) != kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushstring(L, read == kHeraldImportCsv ? "csv" : "json");
  return 1;
}

static int l_app(lua_State *L) {
  lua_pushstring(L, herald_context()->app);
  return 1;
}

int luaopen_herald_core_segment(lua_State *L) {
  static const luaL_Reg stmt_methods[] = {
    {"bind", l_bind}, {"fetch", l_fetch}, {"first", l_first}, {"sql", l_sql},
    {"close", l_close}, {NULL, NULL},
  };
  static const luaL_Reg funcs[] = {
    {"prepare", l_prepare}, {"save", l_save}, {"add_members", l_add_members},
    {"atomic", l_atomic},   {"instant", l_instant}, {"km", l_km},
    {"app", l_app},         {"index_check", l_index_check}, {"index_add", l_index_add},
    {"index_drop", l_index_drop}, {"each_endpoint_request", l_each_endpoint_request}, {NULL, NULL},
  };
  if (luaL_newmetatable(L, STMT_TYPE)) {
    luaL_newlib(L, stmt_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
