#include "lua/modules.h"

#include <lauxlib.h>

typedef struct {
  const char *name;
  lua_CFunction open;
  int sandbox_safe;  /* campaign code may require it */
} ModuleEntry;

static const ModuleEntry modules[] = {
  {"herald.core", luaopen_herald_core, 1},
  {"herald.core.task", luaopen_herald_core_task, 1},
  {"herald.core.outbox", luaopen_herald_core_outbox, 1},
  {"herald.core.clock", luaopen_herald_core_clock, 1},
  {"herald.core.filechannel", luaopen_herald_core_filechannel, 1},
  {"herald.core.readline", luaopen_herald_core_readline, 0},
  {"herald.core.template", luaopen_herald_core_template, 1},
  {"herald.core.http", luaopen_herald_core_http, 1},
  {"herald.core.ratelimit", luaopen_herald_core_ratelimit, 1},
  {"herald.core.sandbox", luaopen_herald_core_sandbox, 0},
  {"herald.core.server", luaopen_herald_core_server, 0},
  {"herald.core.schedule", luaopen_herald_core_schedule, 1},
  {"herald.core.json", luaopen_herald_core_json, 1},
  {"herald.core.store", luaopen_herald_core_store, 1},
  {"herald.core.segment", luaopen_herald_core_segment, 1},
  {"herald.core.progress", luaopen_herald_core_progress, 0},
  {"herald.core.deliver", luaopen_herald_core_deliver, 0},
  {"herald.core.feedback", luaopen_herald_core_feedback, 0},
  {"herald.core.digest", luaopen_herald_core_digest, 1},
  {"herald.core.guard", luaopen_herald_core_guard, 0},
  {"herald.core.lane", luaopen_herald_core_lane, 0},
};

void herald_modules_preload(lua_State *L, int sandbox_safe) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (size_t i = 0; i < sizeof modules / sizeof modules[0]; i++) {
    if (sandbox_safe && !modules[i].sandbox_safe) continue;
    lua_pushcfunction(L, modules[i].open);
    lua_setfield(L, -2, modules[i].name);
  }
  lua_pop(L, 1);
}
