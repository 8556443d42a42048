/* Name arguments of the bindings: see args.h. */
#include "lua/args.h"

#include <lauxlib.h>
#include <string.h>

#define NUL_INSIDE "contains a NUL character (\\u0000)"

int herald_lua_nul_inside(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  return strlen(s) != len;
}

const char *herald_lua_checkname(lua_State *L, int idx, const char *field) {
  const char *s = luaL_checkstring(L, idx);
  if (herald_lua_nul_inside(L, idx))
    luaL_argerror(L, idx, lua_pushfstring(L, "%s: " NUL_INSIDE, field));
  return s;
}

const char *herald_lua_optname(lua_State *L, int idx, const char *field, const char *def) {
  return lua_isnoneornil(L, idx) ? def : herald_lua_checkname(L, idx, field);
}

int herald_lua_refuse_nul(lua_State *L, int idx, const char *field) {
  if (!herald_lua_nul_inside(L, idx)) return 0;
  lua_pushnil(L);
  lua_pushfstring(L, "%s: " NUL_INSIDE, field);
  return 2;
}
