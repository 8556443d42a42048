/* herald.core.ratelimit: multi-window rate limits (runtime/ratelimit.c) on the runtime clock
 * (manual in tests), and their state kept in the store (runtime/ratelimit_store.c). A limit
 * lives in its userdata, so Lua's allocator counts its memory. */
#include <lauxlib.h>
#include <stdint.h>

#include "lua/context.h"
#include "lua/modules.h"
#include "runtime/clock.h"
#include "runtime/ratelimit.h"
#include "runtime/ratelimit_store.h"

#define LIMIT_MT "herald.ratelimit"

static HeraldRateLimit *check_limit(lua_State *L, int i) {
  return luaL_checkudata(L, i, LIMIT_MT);
}

static const struct {
  const char *name;
  int64_t period_ms;
} NAMED[] = {
  {"per_second", 1000}, {"per_minute", 60000}, {"per_hour", 3600000}, {"per_day", 86400000},
};

static int add_window(lua_State *L, HeraldRateWindow *w, size_t *n, const char *what) {
  if (*n == HERALD_RATELIMIT_MAX_WINDOWS)
    return luaL_error(L, "%s: at most %d windows", what, HERALD_RATELIMIT_MAX_WINDOWS);
  int ok = 0;
  double v = lua_tonumberx(L, -1, &ok);
  if (!ok || !(v > 0)) return luaL_error(L, "%s: expected a positive number", what);
  w[*n].limit = v;
  (*n)++;
  return 0;
}

/* new{per_second=, per_minute=, per_hour=, per_day=, windows={{limit=, period_ms=}...},
 *     parent=limit} -> limit. windows = {} and nothing else: a limit that only pauses. */
static int l_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  HeraldRateWindow w[HERALD_RATELIMIT_MAX_WINDOWS];
  size_t n = 0;
  for (size_t i = 0; i < sizeof NAMED / sizeof NAMED[0]; i++) {
    lua_getfield(L, 1, NAMED[i].name);
    if (!lua_isnil(L, -1)) {
      w[n].period_ms = NAMED[i].period_ms;
      add_window(L, w, &n, NAMED[i].name);
    }
    lua_pop(L, 1);
  }
  lua_getfield(L, 1, "windows");
  int listed = lua_istable(L, -1);
  if (listed) {
    lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= len; i++) {
      lua_rawgeti(L, -1, i);
      if (!lua_istable(L, -1)) return luaL_error(L, "windows[%d]: expected {limit=, period_ms=}", (int)i);
      lua_getfield(L, -1, "period_ms");
      int ok = 0;
      lua_Integer period = lua_tointegerx(L, -1, &ok);
      if (!ok || period <= 0) return luaL_error(L, "windows[%d].period_ms: expected a positive integer", (int)i);
      lua_pop(L, 1);
      lua_getfield(L, -1, "limit");
      if (n < HERALD_RATELIMIT_MAX_WINDOWS) w[n].period_ms = (int64_t)period;
      add_window(L, w, &n, "windows[].limit");
      lua_pop(L, 2);
    }
  } else if (!lua_isnil(L, -1)) {
    return luaL_error(L, "windows: expected a list of {limit=, period_ms=}");
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "parent");
  HeraldRateLimit *parent = NULL;
  if (!lua_isnil(L, -1)) {
    parent = luaL_testudata(L, -1, LIMIT_MT);
    if (parent == NULL) return luaL_error(L, "parent: expected an open rate limit");
  }
  int parent_idx = lua_gettop(L);
  if (n == 0 && parent == NULL && !listed)
    return luaL_error(L, "a rate limit needs a window (per_second, per_minute, per_hour, per_day or windows) or a parent");
  void *mem = lua_newuserdatauv(L, herald_ratelimit_size(n), 1);
  HeraldError err = {0};
  if (herald_ratelimit_init(mem, w, n, parent, &err) == NULL) return luaL_error(L, "%s", err.msg);
  luaL_setmetatable(L, LIMIT_MT);
  /* The parent must outlive its children. */
  lua_pushvalue(L, parent_idx);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static double check_count(lua_State *L, int i) {
  double n = luaL_optnumber(L, i, 1);
  luaL_argcheck(L, n > 0, i, "must be > 0");
  return n;
}

/* l:take([n]) -> granted, next_slot_ms (absolute clock ms; nil when n can never fit) */
static int l_take(lua_State *L) {
  HeraldRateLimit *rl = check_limit(L, 1);
  double n = check_count(L, 2);
  int64_t next = 0;
  int granted = herald_ratelimit_take(rl, n, herald_clock_now_ms(), &next);
  lua_pushboolean(L, granted);
  if (next == INT64_MAX) lua_pushnil(L); else lua_pushinteger(L, (lua_Integer)next);
  return 2;
}

/* l:check([n]) -> would_be_granted, next_slot_ms: as take() but admits nothing (a message
 * under two limits takes from either only once both would grant). */
static int l_check(lua_State *L) {
  HeraldRateLimit *rl = check_limit(L, 1);
  double n = check_count(L, 2);
  int64_t now = herald_clock_now_ms();
  int64_t next = herald_ratelimit_next(rl, n, now);
  lua_pushboolean(L, next == now);
  if (next == INT64_MAX) lua_pushnil(L); else lua_pushinteger(L, (lua_Integer)next);
  return 2;
}

/* l:reserve([n]) -> slot_ms: books the earliest slot (later calls get later slots); nil when
 * n can never fit. */
static int l_reserve(lua_State *L) {
  HeraldRateLimit *rl = check_limit(L, 1);
  double n = check_count(L, 2);
  int64_t slot = herald_ratelimit_reserve(rl, n, herald_clock_now_ms());
  if (slot < 0) lua_pushnil(L); else lua_pushinteger(L, (lua_Integer)slot);
  return 1;
}

/* l:pause(ms): nothing is granted for ms from now (a Retry-After). */
static int l_pause(lua_State *L) {
  HeraldRateLimit *rl = check_limit(L, 1);
  lua_Integer ms = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ms >= 0, 2, "must be >= 0");
  herald_ratelimit_pause_until(rl, herald_clock_now_ms() + (int64_t)ms);
  return 0;
}

/* l:tokens(i) -> how many more messages window i has room for now */
static int l_tokens(lua_State *L) {
  HeraldRateLimit *rl = check_limit(L, 1);
  lua_Integer i = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, i >= 1, 2, "must be >= 1");
  lua_pushnumber(L, herald_ratelimit_tokens(rl, (size_t)(i - 1), herald_clock_now_ms()));
  return 1;
}

/* l:changes() -> how many times the state changed (admissions, pauses, imports) */
static int l_changes(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)herald_ratelimit_changes(check_limit(L, 1)));
  return 1;
}

/* l:export() -> the state as a string (what each window counts and the pause) */
static int l_export(lua_State *L) {
  HeraldRateLimit *rl = check_limit(L, 1);
  unsigned char buf[HERALD_RATELIMIT_STATE_MAX];
  size_t len = herald_ratelimit_export(rl, buf, sizeof buf);
  if (len > sizeof buf) return luaL_error(L, "rate limit state too large");
  lua_pushlstring(L, (const char *)buf, len);
  return 1;
}

/* l:import(state) -> true, or nil, err when state is not one export() made */
static int l_import(lua_State *L) {
  HeraldRateLimit *rl = check_limit(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  HeraldError err = {0};
  if (herald_ratelimit_import(rl, (const unsigned char *)s, len, &err) != kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* load(limit, app, key, gen) -> gen, loaded[, err]: takes the state stored under (app, key)
 * when its generation is not gen (see runtime/ratelimit_store.h); err when the stored state
 * could not be taken (the limit keeps its own). A store failure raises. */
static int l_load(lua_State *L) {
  HeraldRateLimit *rl = check_limit(L, 1);
  const char *app = luaL_checkstring(L, 2);
  const char *key = luaL_checkstring(L, 3);
  int64_t gen = (int64_t)luaL_checkinteger(L, 4);
  int loaded = 0;
  HeraldError err = {0};
  int rc = herald_ratelimit_store_load(herald_context_store(L), app, key, rl, &gen, &loaded, &err);
  if (rc != kHeraldOk && rc != kHeraldInvalid) return luaL_error(L, "%s", err.msg);
  lua_pushinteger(L, (lua_Integer)gen);
  lua_pushboolean(L, loaded);
  if (rc == kHeraldOk) return 2;
  lua_pushstring(L, err.msg);
  return 3;
}

/* save(limit, app, key) -> gen: writes the limit's state under (app, key). A store failure
 * raises. */
static int l_save(lua_State *L) {
  HeraldRateLimit *rl = check_limit(L, 1);
  const char *app = luaL_checkstring(L, 2);
  const char *key = luaL_checkstring(L, 3);
  int64_t gen = 0;
  HeraldError err = {0};
  if (herald_ratelimit_store_save(herald_context_store(L), app, key, rl, herald_clock_now_ms(), &gen, &err) !=
      kHeraldOk)
    return luaL_error(L, "%s", err.msg);
  lua_pushinteger(L, (lua_Integer)gen);
  return 1;
}

int luaopen_herald_core_ratelimit(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"take", l_take}, {"check", l_check}, {"reserve", l_reserve}, {"pause", l_pause}, {"tokens", l_tokens},
    {"changes", l_changes}, {"export", l_export}, {"import", l_import}, {NULL, NULL},
  };
  luaL_newmetatable(L, LIMIT_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"new", l_new}, {"load", l_load}, {"save", l_save}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
