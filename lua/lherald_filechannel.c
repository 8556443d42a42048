/* herald.core.filechannel: the built-in delivery channel that needs no server. It appends each
 * rendered message to a file (or writes it to stdout), flushed per message so a reader sees
 * whole messages. Campaign code may name only relative paths below the working directory. */
#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "lua/host.h"
#include "lua/modules.h"

/* write(path_or_nil, text) -> true | nil, err */
static int l_write(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 2, &len);
  if (lua_isnoneornil(L, 1)) {
    if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "stdout: %s", strerror(errno));
      return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
  }
  const char *path = luaL_checkstring(L, 1);
  if (!herald_host_path_below_cwd(path)) {
    lua_pushnil(L);
    lua_pushfstring(L, "file channel path '%s' must be relative and stay below the working directory",
                    path);
    return 2;
  }
  FILE *f = fopen(path, "ab");
  if (f == NULL) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(errno));
    return 2;
  }
  int ok = fwrite(text, 1, len, f) == len;
  ok = (fclose(f) == 0) && ok;
  if (!ok) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(errno));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

int luaopen_herald_core_filechannel(lua_State *L) {
  static const luaL_Reg funcs[] = {{"write", l_write}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
