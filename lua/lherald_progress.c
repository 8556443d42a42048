/* herald.core.progress: the terminal progress line (runtime/progress.h) for long work driven
 * from Lua. A reporter is a userdata: p:update(count [, done]), p:finish() -> seconds. */
#include <lauxlib.h>

#include "lua/modules.h"
#include "runtime/progress.h"

#define PROGRESS_MT "herald.progress"

static HeraldProgress *check(lua_State *L) { return luaL_checkudata(L, 1, PROGRESS_MT); }

static int l_new(lua_State *L) {
  const char *label = luaL_checkstring(L, 1);
  const char *unit = luaL_optstring(L, 2, "items");
  lua_Integer total = luaL_optinteger(L, 3, 0);
  HeraldProgress *p = lua_newuserdatauv(L, sizeof *p, 0);
  herald_progress_start(p, label, unit, total > 0 ? (uint64_t)total : 0);
  luaL_setmetatable(L, PROGRESS_MT);
  return 1;
}

/* Lua callers update less often than C loops: every call looks at the clock. */
static int l_update(lua_State *L) {
  HeraldProgress *p = check(L);
  lua_Integer count = luaL_checkinteger(L, 2);
  lua_Integer done = luaL_optinteger(L, 3, count);
  p->ticks |= 255;
  herald_progress_update(p, (uint64_t)count, (uint64_t)done);
  return 0;
}

static int l_finish(lua_State *L) {
  lua_pushnumber(L, herald_progress_finish(check(L)));
  return 1;
}

static int l_enabled(lua_State *L) {
  lua_pushboolean(L, check(L)->enabled);
  return 1;
}

int luaopen_herald_core_progress(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"update", l_update}, {"finish", l_finish}, {"enabled", l_enabled}, {NULL, NULL},
  };
  if (luaL_newmetatable(L, PROGRESS_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"new", l_new}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
