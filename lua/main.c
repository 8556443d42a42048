/* herald's entry point: sets up the runtime context and a host Lua state, then hands the
 * command line to the Lua CLI (stdlib/herald/cli.lua), which dispatches subcommands. */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>

#include "lua/context.h"
#include "lua/host.h"
#include "lua/task.h"

int main(int argc, char **argv) {
  if (herald_context_init(argv[0]) != 0) {
    fprintf(stderr, "herald: cannot initialise the event loop\n");
    return 1;
  }
  if (herald_context()->stdlib_dir == NULL) {
    fprintf(stderr, "herald: cannot find the stdlib next to %s (set HERALD_STDLIB)\n",
            herald_context()->exe_path);
    herald_context_shutdown();
    return 1;
  }
  lua_State *L = herald_host_new();
  if (L == NULL) {
    fprintf(stderr, "herald: out of memory\n");
    herald_context_shutdown();
    return 1;
  }
  int code = 1;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "herald.cli");
  if (herald_host_pcall(L, 1, 1) != LUA_OK) {
    fprintf(stderr, "herald: %s\n", lua_tostring(L, -1));
  } else {
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc, 0);
    for (int i = 0; i < argc; i++) {
      lua_pushstring(L, argv[i]);
      lua_rawseti(L, -2, i);
    }
    if (herald_host_pcall(L, 1, 1) != LUA_OK) {
      fprintf(stderr, "herald: %s\n", lua_tostring(L, -1));
    } else {
      code = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : (lua_toboolean(L, -1) ? 0 : 1);
    }
  }
  fflush(stdout);
  herald_task_cancel_all();
  lua_close(L);
  herald_context_shutdown();
  return code;
}
