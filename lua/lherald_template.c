/* herald.core.template: the C template engine and the template store for Lua.
 *
 * compile(text [, name [, escape]]) -> template | nil, err   (escape: true (default) HTML-escapes
 *   {{x}}, false leaves it as it is, 'uri' percent-encodes it: HERALD_TEMPLATE_ESCAPE_*)
 *   template:render([ctx [, substitutions]]) -> text | nil, err
 *   template:memory() -> bytes the compiled template holds
 * context(table) -> ctx   (an endpoint converted once, to render several templates with)
 * endpoint_context(id [, app]) -> ctx | nil, err   (a stored endpoint, read straight into one)
 *   ctx:json() -> compact JSON text; ctx:table() -> a Lua table
 * create(name, type, parts) -> 1 | nil, err
 * update(name, type, parts, create_new_version, version) -> version | nil, err
 * get(name, type [, version]) -> {Name, Type, Version, ActiveVersion, LatestVersion, ...parts}
 *   | nil, err [, 'NOT_FOUND']
 * versions(name, type) -> { {Version, Active, CreationDate, LastModifiedDate}, ... }
 * set_active(name, type, version) -> true | nil, err
 * render(name, type, ctx [, version [, substitutions]]) -> rendered parts | nil, err [, 'NOT_FOUND']
 *
 * Runtime failures (bad template text, unknown template, limits, a name or type with a NUL
 * inside) return nil, err; argument misuse raises. get and render add 'NOT_FOUND' when the
 * template or the version asked for does not exist, which callers tell from a failing store
 * (a campaign naming a missing template is paused rather than failing every message). Compiled store versions are cached per
 * state and recompiled when the stored revision changes. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "lua/args.h"
#include "lua/context.h"
#include "lua/lherald_json.h"
#include "lua/modules.h"
#include "runtime/endpoint.h"
#include "runtime/template.h"
#include "runtime/template_store.h"

#define TEMPLATE_MT "herald.Template"
#define CONTEXT_MT "herald.TemplateContext"
#define PARTS_MT "herald.TemplateParts"
#define OUTPUT_KEY "herald.template.output"
#define CACHE_KEY "herald.template.cache"

typedef struct {
  HeraldTemplate *t;
} TemplateBox;

typedef struct {
  json_t *j;
} ContextBox;

typedef struct {
  HeraldTemplateParts *p;
} PartsBox;

static int push_fail(lua_State *L, const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

/* nil, err, and 'NOT_FOUND' when the store has no such template or version */
static int push_store_fail(lua_State *L, const HeraldError *err) {
  push_fail(L, err->msg);
  if (err->code != kHeraldNotFound) return 2;
  lua_pushliteral(L, "NOT_FOUND");
  return 3;
}

/* ---- Lua <-> JSON ---- */

/* Converts the value at idx. A table with a sequence part is a list; an empty table is a list
 * when empty_list (endpoint data: an empty attribute list is falsy) and an object otherwise. */
static json_t *to_json(lua_State *L, int idx, int depth, int empty_list, char *why, size_t whylen) {
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
    case LUA_TNIL: return json_null();
    case LUA_TBOOLEAN: return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) return json_integer((json_int_t)lua_tointeger(L, idx));
      return json_real(lua_tonumber(L, idx));
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      return json_stringn_nocheck(s, len);
    }
    case LUA_TTABLE: break;
    default:
      snprintf(why, whylen, "cannot use a %s as template data", luaL_typename(L, idx));
      return NULL;
  }
  if (depth >= HERALD_TEMPLATE_MAX_DEPTH) {
    snprintf(why, whylen, "tables nested deeper than %d", HERALD_TEMPLATE_MAX_DEPTH);
    return NULL;
  }
  luaL_checkstack(L, 4, "template data");
  lua_Unsigned n = lua_rawlen(L, idx);
  int is_list = n > 0;
  if (n == 0) {
    lua_pushnil(L);
    if (lua_next(L, idx) == 0) {
      return empty_list ? json_array() : json_object();
    }
    lua_pop(L, 2);
  }
  if (is_list) {
    json_t *a = json_array();
    for (lua_Unsigned i = 1; a != NULL && i <= n; i++) {
      lua_rawgeti(L, idx, (lua_Integer)i);
      json_t *v = to_json(L, -1, depth + 1, empty_list, why, whylen);
      lua_pop(L, 1);
      if (v == NULL || json_array_append_new(a, v) != 0) {
        json_decref(a);
        return NULL;
      }
    }
    return a;
  }
  json_t *o = json_object();
  lua_pushnil(L);
  while (o != NULL && lua_next(L, idx) != 0) {
    const char *key;
    char keybuf[64];
    if (lua_type(L, -2) == LUA_TSTRING) {
      key = lua_tostring(L, -2);
      if (herald_lua_nul_inside(L, -2)) {
        /* cut there, "Subject\0x" would set Subject */
        snprintf(why, whylen, "a table key contains a NUL character (\\u0000)");
        lua_pop(L, 2);
        json_decref(o);
        return NULL;
      }
    } else if (lua_type(L, -2) == LUA_TNUMBER) {
      /* converting the key in place would confuse lua_next */
      if (lua_isinteger(L, -2)) snprintf(keybuf, sizeof keybuf, "%lld", (long long)lua_tointeger(L, -2));
      else snprintf(keybuf, sizeof keybuf, "%.17g", (double)lua_tonumber(L, -2));
      key = keybuf;
    } else {
      snprintf(why, whylen, "table keys must be strings, got a %s", luaL_typename(L, -2));
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    json_t *v = to_json(L, -1, depth + 1, empty_list, why, whylen);
    if (v == NULL || json_object_set_new(o, key, v) != 0) {
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    lua_pop(L, 1);
  }
  return o;
}

static void push_json(lua_State *L, const json_t *j) {
  luaL_checkstack(L, 3, "template data");
  switch (json_typeof(j)) {
    case JSON_OBJECT: {
      lua_createtable(L, 0, (int)json_object_size(j));
      const char *key;
      json_t *v;
      json_object_foreach((json_t *)j, key, v) {
        if (json_is_null(v)) continue;
        push_json(L, v);
        lua_setfield(L, -2, key);
      }
      return;
    }
    case JSON_ARRAY:
      lua_createtable(L, (int)json_array_size(j), 0);
      for (size_t i = 0; i < json_array_size(j); i++) {
        push_json(L, json_array_get(j, i));
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      return;
    case JSON_STRING: lua_pushlstring(L, json_string_value(j), json_string_length(j)); return;
    case JSON_INTEGER: lua_pushinteger(L, (lua_Integer)json_integer_value(j)); return;
    case JSON_REAL: lua_pushnumber(L, json_real_value(j)); return;
    case JSON_TRUE: lua_pushboolean(L, 1); return;
    case JSON_FALSE: lua_pushboolean(L, 0); return;
    case JSON_NULL: lua_pushnil(L); return;
  }
}

/* The endpoint argument: nil, a table, or a context made by context(). *owned is set when the
 * caller must json_decref the result. NULL with why set when a table cannot be converted. */
static json_t *arg_context(lua_State *L, int idx, int *owned, char *why, size_t whylen) {
  *owned = 0;
  if (lua_isnoneornil(L, idx)) return NULL;
  ContextBox *box = luaL_testudata(L, idx, CONTEXT_MT);
  if (box != NULL) return box->j;
  luaL_argexpected(L, lua_istable(L, idx), idx, "table or template context");
  json_t *j = to_json(L, idx, 0, 1, why, whylen);
  if (j != NULL) *owned = 1;
  return j;
}

/* Raises unless the substitutions argument is nil or a table. Callers check before they own
 * anything a raise would leak. */
static void check_substitutions(lua_State *L, int idx) {
  if (!lua_isnoneornil(L, idx)) luaL_checktype(L, idx, LUA_TTABLE);
}

/* The substitutions argument (checked by check_substitutions): nil or a table of variable ->
 * values. It is a map, so an empty table is an empty object (no substitutions), never the
 * empty list endpoint data would make of it; nested empty tables stay objects too, which add
 * no variable. NULL with err set when the table cannot be converted; NULL for nil. */
static json_t *arg_substitutions(lua_State *L, int idx, HeraldError *err) {
  if (lua_isnoneornil(L, idx)) return NULL;
  char why[256] = "";
  json_t *subs = to_json(L, idx, 0, 0, why, sizeof why);
  if (subs == NULL) herald_error_set(err, kHeraldInvalid, "substitutions: %s", why[0] ? why : "out of memory");
  return subs;
}

static HeraldTemplateOutput *output(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, OUTPUT_KEY);
  HeraldTemplateOutput *out = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return out;
}

/* ---- compiled templates ---- */

static int l_compile(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *name = luaL_optstring(L, 2, "template");
  int escape = HERALD_TEMPLATE_ESCAPE_HTML;
  if (lua_type(L, 3) == LUA_TSTRING) {
    if (strcmp(lua_tostring(L, 3), "uri") != 0)
      return luaL_argerror(L, 3, "true, false or 'uri'");
    escape = HERALD_TEMPLATE_ESCAPE_URI;
  } else if (!lua_isnoneornil(L, 3)) {
    escape = lua_toboolean(L, 3) ? HERALD_TEMPLATE_ESCAPE_HTML : HERALD_TEMPLATE_ESCAPE_NONE;
  }
  TemplateBox *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->t = NULL;
  luaL_setmetatable(L, TEMPLATE_MT);
  HeraldError err = {0};
  if (herald_template_compile(name, text, len, escape, &box->t, &err) != kHeraldOk)
    return push_fail(L, err.msg);
  return 1;
}

static int template_gc(lua_State *L) {
  TemplateBox *box = luaL_checkudata(L, 1, TEMPLATE_MT);
  herald_template_free(box->t);
  box->t = NULL;
  return 0;
}

static int template_render(lua_State *L) {
  TemplateBox *box = luaL_checkudata(L, 1, TEMPLATE_MT);
  luaL_argcheck(L, box->t != NULL, 1, "template is closed");
  check_substitutions(L, 3);
  char why[256] = "";
  int owned = 0;
  json_t *ctx = arg_context(L, 2, &owned, why, sizeof why);
  if (ctx == NULL && why[0]) return push_fail(L, why);
  json_t *tree = NULL;
  HeraldError err = {0};
  json_t *subs = arg_substitutions(L, 3, &err);
  int rc = err.code;
  if (rc == kHeraldOk) rc = herald_template_vars(subs, &tree, &err);
  HeraldTemplateOutput *out = output(L);
  if (rc == kHeraldOk) rc = herald_template_render(box->t, ctx, tree, NULL, out, &err);
  json_decref(subs);
  json_decref(tree);
  if (owned) json_decref(ctx);
  if (rc != kHeraldOk) return push_fail(L, err.msg);
  lua_pushlstring(L, out->data, out->len);
  return 1;
}

static int template_name(lua_State *L) {
  TemplateBox *box = luaL_checkudata(L, 1, TEMPLATE_MT);
  luaL_argcheck(L, box->t != NULL, 1, "template is closed");
  lua_pushstring(L, herald_template_name(box->t));
  return 1;
}

/* template:memory() -> bytes the compiled template holds */
static int template_memory(lua_State *L) {
  TemplateBox *box = luaL_checkudata(L, 1, TEMPLATE_MT);
  luaL_argcheck(L, box->t != NULL, 1, "template is closed");
  lua_pushinteger(L, (lua_Integer)herald_template_memory(box->t));
  return 1;
}

static int l_context(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  ContextBox *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->j = NULL;
  luaL_setmetatable(L, CONTEXT_MT);
  char why[256] = "";
  box->j = to_json(L, 1, 0, 1, why, sizeof why);
  if (box->j == NULL) return push_fail(L, why[0] ? why : "out of memory");
  return 1;
}

/* endpoint_context(id [, app]) -> ctx, or nil, err: a stored endpoint as a template context
 * straight from the store, with no Lua table in between; delivery renders with it and sends
 * it as stored (ctx:json()), and makes a table (ctx:table()) only where Lua code wants one. */
static int l_endpoint_context(lua_State *L) {
  const char *id = luaL_checkstring(L, 1);
  const char *app = luaL_optstring(L, 2, herald_context()->app);
  if (herald_lua_refuse_nul(L, 1, "id") || herald_lua_refuse_nul(L, 2, "app")) return 2;
  HeraldStore *store = herald_context_store(L);
  ContextBox *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->j = NULL;
  luaL_setmetatable(L, CONTEXT_MT);
  HeraldError err = {0};
  if (herald_endpoint_get(store, app, id, &box->j, &err) != kHeraldOk) return push_fail(L, err.msg);
  return 1;
}

json_t *herald_lua_template_context(lua_State *L, int idx) {
  ContextBox *box = luaL_testudata(L, idx, CONTEXT_MT);
  return box != NULL ? box->j : NULL;
}

HeraldTemplate *herald_lua_template(lua_State *L, int idx) {
  TemplateBox *box = luaL_testudata(L, idx, TEMPLATE_MT);
  return box != NULL ? box->t : NULL;
}

static ContextBox *check_context(lua_State *L) {
  ContextBox *box = luaL_checkudata(L, 1, CONTEXT_MT);
  luaL_argcheck(L, box->j != NULL, 1, "context is closed");
  return box;
}

/* ctx:json() -> the context as compact JSON text */
static int context_json(lua_State *L) {
  ContextBox *box = check_context(L);
  char *s = json_dumps(box->j, JSON_COMPACT | JSON_ENCODE_ANY);
  if (s == NULL) return luaL_error(L, "out of memory");
  lua_pushstring(L, s);
  free(s);
  return 1;
}

/* ctx:table() -> the context as a Lua table (JSON nulls left out) */
static int context_table(lua_State *L) {
  ContextBox *box = check_context(L);
  luaL_checkstack(L, 40, "context");
  push_json(L, box->j);
  return 1;
}

static int context_gc(lua_State *L) {
  ContextBox *box = luaL_checkudata(L, 1, CONTEXT_MT);
  json_decref(box->j);
  box->j = NULL;
  return 0;
}

static int output_gc(lua_State *L) {
  herald_template_output_free(lua_touserdata(L, 1));
  return 0;
}

static int parts_gc(lua_State *L) {
  PartsBox *box = luaL_checkudata(L, 1, PARTS_MT);
  herald_template_store_parts_free(box->p);
  box->p = NULL;
  return 0;
}

/* ---- the store ---- */

/* The name and type arguments (1 and 2) of a store call, which answers nil, err for a NUL in
 * either: returns 2 when it pushed that answer, else 0. */
static int refuse_nul_name(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  return herald_lua_refuse_nul(L, 1, "name") || herald_lua_refuse_nul(L, 2, "type") ? 2 : 0;
}

static json_t *arg_parts(lua_State *L, int idx, HeraldError *err) {
  luaL_checktype(L, idx, LUA_TTABLE);
  char why[256] = "";
  json_t *parts = to_json(L, idx, 0, 0, why, sizeof why);
  if (parts == NULL) herald_error_set(err, kHeraldInvalid, "parts: %s", why[0] ? why : "out of memory");
  return parts;
}

static int l_create(lua_State *L) {
  if (refuse_nul_name(L)) return 2;
  const char *name = luaL_checkstring(L, 1);
  const char *type = luaL_checkstring(L, 2);
  HeraldError err = {0};
  json_t *parts = arg_parts(L, 3, &err);
  if (parts == NULL) return push_fail(L, err.msg);
  int rc = herald_template_store_create(herald_context_store(L), name, type, parts, &err);
  json_decref(parts);
  if (rc != kHeraldOk) return push_fail(L, err.msg);
  lua_pushinteger(L, 1);
  return 1;
}

static int l_update(lua_State *L) {
  if (refuse_nul_name(L)) return 2;
  const char *name = luaL_checkstring(L, 1);
  const char *type = luaL_checkstring(L, 2);
  int create_new = lua_toboolean(L, 4);
  int version = (int)luaL_optinteger(L, 5, 0);
  luaL_argcheck(L, version >= 0, 5, "must be a positive version");
  HeraldError err = {0};
  json_t *parts = arg_parts(L, 3, &err);
  if (parts == NULL) return push_fail(L, err.msg);
  int written = 0;
  int rc = herald_template_store_update(herald_context_store(L), name, type, parts, create_new, version,
                                        &written, &err);
  json_decref(parts);
  if (rc != kHeraldOk) return push_fail(L, err.msg);
  lua_pushinteger(L, written);
  return 1;
}

static int l_get(lua_State *L) {
  if (refuse_nul_name(L)) return 2;
  const char *name = luaL_checkstring(L, 1);
  const char *type = luaL_checkstring(L, 2);
  int version = (int)luaL_optinteger(L, 3, 0);
  HeraldTemplateInfo info;
  HeraldError err = {0};
  if (herald_template_store_get(herald_context_store(L), name, type, version, &info, &err) != kHeraldOk)
    return push_store_fail(L, &err);
  push_json(L, info.parts);
  json_decref(info.parts);
  lua_pushstring(L, name); lua_setfield(L, -2, "Name");
  lua_pushstring(L, type); lua_setfield(L, -2, "Type");
  lua_pushinteger(L, info.version); lua_setfield(L, -2, "Version");
  lua_pushinteger(L, info.active_version); lua_setfield(L, -2, "ActiveVersion");
  lua_pushinteger(L, info.latest_version); lua_setfield(L, -2, "LatestVersion");
  lua_pushstring(L, info.creation_date); lua_setfield(L, -2, "CreationDate");
  lua_pushstring(L, info.last_modified_date); lua_setfield(L, -2, "LastModifiedDate");
  return 1;
}

static int l_versions(lua_State *L) {
  if (refuse_nul_name(L)) return 2;
  json_t *list = NULL;
  HeraldError err = {0};
  if (herald_template_store_versions(herald_context_store(L), luaL_checkstring(L, 1), luaL_checkstring(L, 2),
                                     &list, &err) != kHeraldOk)
    return push_fail(L, err.msg);
  push_json(L, list);
  json_decref(list);
  return 1;
}

static int l_set_active(lua_State *L) {
  if (refuse_nul_name(L)) return 2;
  HeraldError err = {0};
  if (herald_template_store_set_active(herald_context_store(L), luaL_checkstring(L, 1), luaL_checkstring(L, 2),
                                       (int)luaL_checkinteger(L, 3), &err) != kHeraldOk)
    return push_fail(L, err.msg);
  lua_pushboolean(L, 1);
  return 1;
}

/* The cached compiled parts of key (at index key) when they are of revision; else NULL. */
static HeraldTemplateParts *cache_hit(lua_State *L, int cache, int key, int64_t revision) {
  HeraldTemplateParts *hit = NULL;
  lua_pushvalue(L, key);
  lua_rawget(L, cache);
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "revision");
    lua_getfield(L, -2, "parts");
    PartsBox *box = luaL_testudata(L, -1, PARTS_MT);
    if (lua_tointeger(L, -2) == (lua_Integer)revision && box != NULL && box->p != NULL) hit = box->p;
  }
  lua_settop(L, key);
  return hit;
}

/* Finds or compiles the version to render; leaves the stack as it was. The cache keeps the
 * compiled parts alive until a newer revision replaces them. Each call checks the stored
 * revision without reading the parts: reading and parsing them cost a 30 KB HTML template
 * ten times its rendering. */
static HeraldTemplateParts *cached_parts(lua_State *L, const char *name, const char *type, int version,
                                         HeraldError *err) {
  HeraldStore *store = herald_context_store(L);
  int resolved;
  int64_t revision;
  if (herald_template_store_revision(store, name, type, version, &resolved, &revision, err) != kHeraldOk)
    return NULL;
  lua_getfield(L, LUA_REGISTRYINDEX, CACHE_KEY);
  int cache = lua_gettop(L);
  lua_pushfstring(L, "%s\n%s\n%d", type, name, resolved);
  HeraldTemplateParts *hit = cache_hit(L, cache, lua_gettop(L), revision);
  if (hit != NULL) {
    lua_settop(L, cache - 1);
    return hit;
  }
  lua_settop(L, cache - 1);
  HeraldTemplateInfo info;
  if (herald_template_store_get(store, name, type, version, &info, err) != kHeraldOk) return NULL;
  lua_getfield(L, LUA_REGISTRYINDEX, CACHE_KEY);
  cache = lua_gettop(L);
  lua_pushfstring(L, "%s\n%s\n%d", type, name, info.version);  /* the key of the entry made here */
  lua_createtable(L, 0, 2);
  PartsBox *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->p = NULL;
  luaL_setmetatable(L, PARTS_MT);
  int rc = herald_template_store_compile(name, type, info.version, info.parts, &box->p, err);
  json_decref(info.parts);
  if (rc != kHeraldOk) {
    lua_settop(L, cache - 1);
    return NULL;
  }
  lua_setfield(L, -2, "parts");
  lua_pushinteger(L, (lua_Integer)info.revision);
  lua_setfield(L, -2, "revision");
  lua_rawset(L, cache);
  lua_settop(L, cache - 1);
  return box->p;
}

static int l_render(lua_State *L) {
  if (refuse_nul_name(L)) return 2;
  const char *name = luaL_checkstring(L, 1);
  const char *type = luaL_checkstring(L, 2);
  int version = (int)luaL_optinteger(L, 4, 0);
  check_substitutions(L, 5);
  HeraldError err = {0};
  HeraldTemplateParts *parts = cached_parts(L, name, type, version, &err);
  if (parts == NULL) return push_store_fail(L, &err);
  char why[256] = "";
  int owned = 0;
  json_t *ctx = arg_context(L, 3, &owned, why, sizeof why);
  if (ctx == NULL && why[0]) return push_fail(L, why);
  json_t *subs = arg_substitutions(L, 5, &err);
  int rc = err.code;
  json_t *rendered = NULL;
  if (rc == kHeraldOk) rc = herald_template_store_render(parts, ctx, subs, output(L), &rendered, &err);
  json_decref(subs);
  if (owned) json_decref(ctx);
  if (rc != kHeraldOk) return push_fail(L, err.msg);
  push_json(L, rendered);
  json_decref(rendered);
  return 1;
}

int luaopen_herald_core_template(lua_State *L) {
  static const luaL_Reg template_methods[] = {
    {"render", template_render}, {"name", template_name}, {"memory", template_memory}, {NULL, NULL},
  };
  if (luaL_newmetatable(L, TEMPLATE_MT)) {
    lua_pushcfunction(L, template_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, template_gc);
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, template_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, CONTEXT_MT)) {
    static const luaL_Reg context_methods[] = {
      {"json", context_json}, {"table", context_table}, {NULL, NULL},
    };
    lua_pushcfunction(L, context_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, context_gc);
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, context_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, PARTS_MT)) {
    lua_pushcfunction(L, parts_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, OUTPUT_KEY);
  if (lua_isnil(L, -1)) {
    HeraldTemplateOutput *out = lua_newuserdatauv(L, sizeof *out, 0);
    memset(out, 0, sizeof *out);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, output_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, OUTPUT_KEY);
  }
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, CACHE_KEY);
  if (lua_isnil(L, -1)) {
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, CACHE_KEY);
  }
  lua_pop(L, 1);

  static const luaL_Reg funcs[] = {
    {"compile", l_compile},       {"context", l_context},
    {"endpoint_context", l_endpoint_context}, {"create", l_create},
    {"update", l_update},         {"get", l_get},         {"versions", l_versions},
    {"set_active", l_set_active}, {"render", l_render},
    {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
