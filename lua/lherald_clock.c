/* herald.core.clock: the runtime's wall clock, manual in tests. */
#include <lauxlib.h>

#include "lua/modules.h"
#include "runtime/clock.h"

static int l_now(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)herald_clock_now_ms());
  return 1;
}

static int l_set_manual(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    herald_clock_set_manual(0, 0);
  } else {
    herald_clock_set_manual(1, (int64_t)luaL_checkinteger(L, 1));
  }
  return 0;
}

static int l_advance(lua_State *L) {
  herald_clock_advance((int64_t)luaL_checkinteger(L, 1));
  return 0;
}

static int l_is_manual(lua_State *L) {
  lua_pushboolean(L, herald_clock_is_manual());
  return 1;
}

static int l_format(lua_State *L) {
  char buf[32];
  herald_time_format((int64_t)luaL_checkinteger(L, 1), buf, sizeof buf);
  lua_pushstring(L, buf);
  return 1;
}

int luaopen_herald_core_clock(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"now", l_now},         {"set_manual", l_set_manual}, {"advance", l_advance},
    {"is_manual", l_is_manual}, {"format", l_format},     {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
