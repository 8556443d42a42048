/* herald.core.guard: calls of user functions in the host state, bounded.
 *   call({instructions =, ms =, name =}, fn, ...) -> true, ... | false, err
 * A pcall of fn(...) that fails with "NAME: ran more than N Lua instructions (does it loop
 * forever?)" or "NAME: still running after N ms" once fn has run that many instructions or
 * that long (monotonic time, counting the waits it makes: fn may yield, as a delivery task's
 * herald.http.request does). The providers file's Lua channels run their send functions this
 * way, so one that never returns cannot hold the delivery task, and with it the process.
 *
 * Why C. A count hook on the calling thread checks the bounds every STEP instructions, and
 * the time when its task wakes from a wait (herald_guard_resuming); once
 * one is passed it raises at every instruction, so a pcall inside fn cannot swallow the error.
 * It must stop raising the moment the protected call is over: a hook set from Lua would still
 * be installed for the instructions between pcall's return and the call that removes it, and
 * would raise there, outside the pcall. Here the call's continuation restores the thread's
 * previous hook before any Lua instruction runs. A coroutine fn creates inherits the hook
 * (lua_newthread copies it) and counts against fn's bounds while fn waits in its resume; one
 * resumed once no guarded call is waiting for it (kept past the call's end) runs unbounded. */
#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "lua/modules.h"

#define STEP 10000
#define GUARD_MT "herald.guard"

typedef enum { kWithin, kOverInstructions, kOverTime } Bound;

typedef struct {
  lua_Integer left;      /* instructions still allowed */
  int64_t deadline_ns;   /* monotonic */
  lua_Integer max_instructions, max_ms;
  Bound passed;          /* which bound the call went past, once it has */
  char name[96];
  lua_Hook saved_hook;   /* the thread's hook before the call, restored after */
  int saved_mask, saved_count;
} Guard;

/* The registry table of guards by thread (weak keys: a thread collected mid-call leaves). */
static const char guards_key = 0;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The guard of thread L, or NULL; leaves the stack as it was. */
static Guard *guard_of(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &guards_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    return NULL;
  }
  lua_pushthread(L);
  lua_rawget(L, -2);
  Guard *g = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return g;
}

/* The guard of the call waiting for coroutine L to yield or return, and its thread in *owner;
 * NULL when there is none. Lua runs one thread at a time, so a guarded thread that is neither
 * running nor suspended (status LUA_OK, where one that yielded back to its task is LUA_YIELD)
 * is in the chain of resumes that reached L. Leaves the stack as it was. */
static Guard *resumer_guard(lua_State *L, lua_State **owner) {
  Guard *found = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &guards_key) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
      lua_State *t = lua_tothread(L, -2);
      if (t != NULL && t != L && lua_status(t) == LUA_OK) {
        found = lua_touserdata(L, -1);
        *owner = t;
        lua_pop(L, 2);
        break;
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return found;
}

static void guard_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_State *owner = L;
  Guard *g = guard_of(L);
  if (g == NULL) g = resumer_guard(L, &owner);  /* a coroutine the guarded call created */
  if (g == NULL) return;
  if (g->passed == kWithin) {
    if ((g->left -= STEP) <= 0) g->passed = kOverInstructions;
    else if (now_ns() > g->deadline_ns) g->passed = kOverTime;
    /* from here on every instruction raises, in the call's thread too once the coroutine's
     * error reaches it, so no pcall on the way swallows the stop */
    if (g->passed != kWithin && owner != L) lua_sethook(owner, guard_hook, LUA_MASKCOUNT, 1);
  }
  if (g->passed != kWithin) {
    lua_sethook(L, guard_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "guard");  /* the message is made in finish */
  }
}

void herald_guard_resuming(lua_State *co) {
  /* a loop of a few instructions and a wait would run STEP instructions, thousands of waits,
   * before the hook looked at the time */
  if (!lua_checkstack(co, 2)) return;
  Guard *g = guard_of(co);
  if (g != NULL && g->passed == kWithin && now_ns() > g->deadline_ns) {
    g->passed = kOverTime;
    lua_sethook(co, guard_hook, LUA_MASKCOUNT, 1);
  }
}

/* After the protected call (at once, or when fn returns after yielding): the thread's hook as
 * it was, the guard gone, then pcall's results, with the bound's reason for an error. */
static int finish(lua_State *L, int status, lua_KContext ctx) {
  int base = (int)ctx;  /* the stack index of the guard userdata */
  Guard *g = lua_touserdata(L, base);
  lua_sethook(L, g->saved_hook, g->saved_mask, g->saved_count);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &guards_key) == LUA_TTABLE) {
    lua_pushthread(L);
    lua_pushnil(L);
    lua_rawset(L, -3);
  }
  lua_pop(L, 1);
  if (status != LUA_OK && status != LUA_YIELD) {
    if (g->passed != kWithin) {
      lua_pop(L, 1);
      if (g->passed == kOverInstructions)
        lua_pushfstring(L, "%s: ran more than %I Lua instructions (does it loop forever?)", g->name,
                        g->max_instructions);
      else
        lua_pushfstring(L, "%s: still running after %I ms", g->name, g->max_ms);
    }
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, base + 1);
  return lua_gettop(L) - base;
}

/* The nested call's continuation: pcall's results, behind its status. */
static int finish_nested(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  lua_pushboolean(L, status == LUA_OK || status == LUA_YIELD);
  lua_insert(L, 1);
  return lua_gettop(L);
}

static lua_Integer opt_positive(lua_State *L, const char *field, lua_Integer def) {
  lua_getfield(L, 1, field);
  lua_Integer v = lua_isnil(L, -1) ? def : luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  if (v < 1) luaL_error(L, "guard.call: %s must be positive", field);
  return v;
}

static int l_call(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checkany(L, 2);
  lua_Integer max_instructions = opt_positive(L, "instructions", 100000000);
  lua_Integer max_ms = opt_positive(L, "ms", 300000);
  lua_getfield(L, 1, "name");
  const char *name = luaL_optstring(L, -1, "function");
  if (guard_of(L) != NULL) {
    /* a guarded call inside another: it runs under the outer one's bounds */
    lua_pop(L, 1);
    lua_remove(L, 1);
    int status = lua_pcallk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, 0, finish_nested);
    return finish_nested(L, status, 0);
  }
  Guard *g = lua_newuserdatauv(L, sizeof *g, 0);
  memset(g, 0, sizeof *g);
  snprintf(g->name, sizeof g->name, "%s", name);
  g->max_instructions = max_instructions;
  g->max_ms = max_ms;
  g->left = max_instructions;
  g->deadline_ns = now_ns() + (int64_t)max_ms * 1000000;
  g->saved_hook = lua_gethook(L);
  g->saved_mask = lua_gethookmask(L);
  g->saved_count = lua_gethookcount(L);
  /* stack: limits, fn, args..., name, guard -> guard, fn, args... */
  lua_remove(L, -2);
  lua_replace(L, 1);
  int base = 1;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &guards_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &guards_key);
  }
  lua_pushthread(L);
  lua_pushvalue(L, base);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_sethook(L, guard_hook, LUA_MASKCOUNT, STEP);
  int n = lua_gettop(L) - base - 1;
  int status = lua_pcallk(L, n, LUA_MULTRET, 0, (lua_KContext)base, finish);
  return finish(L, status, (lua_KContext)base);
}

int luaopen_herald_core_guard(lua_State *L) {
  static const luaL_Reg fns[] = {{"call", l_call}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
