/* herald.core: version, global options and paths. */
#include <lauxlib.h>
#include <unistd.h>

#include "lua/context.h"
#include "lua/modules.h"
#include "lua/version.h"

static int l_version(lua_State *L) {
  lua_pushstring(L, HERALD_VERSION);
  return 1;
}

static int l_db_path(lua_State *L) {
  lua_pushstring(L, herald_context()->db_path);
  return 1;
}

static int l_set_db_path(lua_State *L) {
  if (herald_context_set_db(luaL_checkstring(L, 1)) != 0) return luaL_error(L, "out of memory");
  return 0;
}

static int l_app(lua_State *L) {
  lua_pushstring(L, herald_context()->app);
  return 1;
}

static int l_set_app(lua_State *L) {
  if (herald_context_set_app(luaL_checkstring(L, 1)) != 0) return luaL_error(L, "out of memory");
  return 0;
}

static int l_stdlib_dir(lua_State *L) {
  lua_pushstring(L, herald_context()->stdlib_dir);
  return 1;
}

static int l_exe_path(lua_State *L) {
  lua_pushstring(L, herald_context()->exe_path);
  return 1;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

static int l_stopping(lua_State *L) {
  lua_pushboolean(L, herald_context()->stopping);
  return 1;
}

int luaopen_herald_core(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"version", l_version},       {"db_path", l_db_path},   {"set_db_path", l_set_db_path},
    {"app", l_app},               {"set_app", l_set_app},   {"stdlib_dir", l_stdlib_dir},
    {"exe_path", l_exe_path},     {"isatty", l_isatty},     {"stopping", l_stopping},
    {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
