#include "lua/host.h"

#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

#include "lua/context.h"
#include "lua/modules.h"

_Static_assert(LUA_EXTRASPACE >= sizeof(void *), "extra space holds a pointer");

static int plain_resume(lua_State *L, lua_State *co, int nargs, int *nresults) {
  return lua_resume(co, L, nargs, nresults);
}

static HeraldStateInfo host_info = {0, NULL, plain_resume};

HeraldStateInfo *herald_state_info(lua_State *L) {
  HeraldStateInfo *info = *(HeraldStateInfo **)lua_getextraspace(L);
  return info ? info : &host_info;
}

int herald_host_path_below_cwd(const char *path) {
  if (path[0] == '\0' || path[0] == '/') return 0;
  const char *s = path;
  while ((s = strstr(s, "..")) != NULL) {
    int starts = (s == path || s[-1] == '/');
    int ends = (s[2] == '\0' || s[2] == '/');
    if (starts && ends) return 0;
    s += 2;
  }
  return 1;
}

int herald_host_traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int herald_host_pcall(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, herald_host_traceback);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  return status;
}

void herald_host_open_modules(lua_State *L) {
  HeraldContext *ctx = herald_context();
  if (ctx->stdlib_dir != NULL) {
    lua_getglobal(L, "package");
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "path");
      lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", ctx->stdlib_dir, ctx->stdlib_dir,
                      lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
      lua_setfield(L, -3, "path");
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  herald_modules_preload(L, 0);
}

lua_State *herald_host_new(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return NULL;
  *(HeraldStateInfo **)lua_getextraspace(L) = &host_info;
  luaL_openlibs(L);
  herald_host_open_modules(L);
  return L;
}
