/* Coroutine tasks on the libuv loop.
 *
 * Every script body, campaign run, filter and trigger runs as a task: a Lua coroutine anchored
 * in the registry while it lives. A C function that has to wait (a timer today; HTTP and
 * queries later) registers a Wait with a cleanup, starts the I/O and yields. The completion
 * callback resumes the coroutine. Waits sit in one list so shutdown can cancel them, and a
 * cancelled wait never resumes its task.
 *
 * The loop is never run re-entrantly: task.run refuses when the loop is already running. */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>

#include "lua/context.h"
#include "lua/host.h"
#include "lua/modules.h"
#include "lua/task.h"

#define TASKS_KEY "herald.tasks"     /* registry: thread -> handle table */

typedef struct Wait {
  uv_timer_t timer;
  lua_State *co;     /* the waiting task */
  lua_State *main;   /* main thread of the task's state */
  struct Wait *prev, *next;
} Wait;

static Wait *waits;
static int loop_running;
static int unobserved_failures;

static void wait_link(Wait *w) {
  w->prev = NULL;
  w->next = waits;
  if (waits) waits->prev = w;
  waits = w;
}

static void wait_unlink(Wait *w) {
  if (w->prev) w->prev->next = w->next; else waits = w->next;
  if (w->next) w->next->prev = w->prev;
  w->prev = w->next = NULL;
}

static void wait_free_cb(uv_handle_t *h) { free(h->data); }

/* Pushes the handle table of task co (from L's registry), or nil. */
static int push_handle(lua_State *L, lua_State *co) {
  lua_getfield(L, LUA_REGISTRYINDEX, TASKS_KEY);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  int t = lua_rawget(L, -2);
  lua_remove(L, -2);
  return t;
}

static void unanchor(lua_State *L, lua_State *co) {
  lua_getfield(L, LUA_REGISTRYINDEX, TASKS_KEY);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Resumes co with nargs values on its stack and records how it ended. */
static void task_step(lua_State *L, lua_State *co, int nargs) {
  int nres = 0;
  int status = herald_state_info(L)->resume(L, co, nargs, &nres);
  if (status == LUA_YIELD) {
    lua_pop(co, nres);
    return;
  }
  push_handle(L, co);
  int handle = lua_gettop(L);
  if (status == LUA_OK) {
    lua_pushboolean(L, 1);
    lua_setfield(L, handle, "ok");
    lua_createtable(L, nres, 0);
    for (int i = 1; i <= nres; i++) {
      lua_pushvalue(co, i);
      lua_xmove(co, L, 1);
      lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, nres);
    lua_setfield(L, -2, "n");
    lua_setfield(L, handle, "results");
  } else {
    const char *msg = lua_tostring(co, -1);
    if (msg == NULL) msg = "(error object is not a string)";
    luaL_traceback(L, co, msg, 0);
    lua_pushboolean(L, 0);
    lua_setfield(L, handle, "ok");
    lua_setfield(L, handle, "error");
    lua_getfield(L, handle, "observed");
    int observed = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!observed) {
      lua_getfield(L, handle, "error");
      fprintf(stderr, "herald: task failed: %s\n", lua_tostring(L, -1));
      lua_pop(L, 1);
      unobserved_failures++;
    }
  }
  lua_pushboolean(L, 1);
  lua_setfield(L, handle, "done");
  lua_pop(L, 1);
  /* A sandboxed task killed by its budget has hooks off; its __close handlers must not run
   * (see lua/sandbox.c), so a failed sandboxed task is left to the garbage collector. */
  if (status == LUA_OK || !herald_state_info(L)->sandboxed) lua_resetthread(co);
  unanchor(L, co);
}

static lua_State *main_thread(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  lua_State *m = lua_tothread(L, -1);
  lua_pop(L, 1);
  return m;
}

/* spawn(fn, ...) -> handle. The task starts at once and runs until it first waits. */
static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 1;
  lua_State *co = lua_newthread(L);
  lua_newtable(L);  /* handle */
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "done");
  lua_getfield(L, LUA_REGISTRYINDEX, TASKS_KEY);
  lua_pushvalue(L, -3);  /* thread */
  lua_pushvalue(L, -3);  /* handle */
  lua_rawset(L, -3);
  lua_pop(L, 1);
  /* stack: fn args... thread handle */
  lua_insert(L, 1);      /* handle first, kept as the return value */
  lua_pop(L, 1);         /* the thread is anchored in the registry */
  lua_xmove(L, co, nargs + 1);
  task_step(L, co, nargs);
  return 1;
}

static int in_task(lua_State *L) {
  if (!lua_isyieldable(L)) return 0;
  lua_State *m = main_thread(L);
  if (m == L) return 0;
  int t = push_handle(L, L);
  lua_pop(L, 1);
  return t == LUA_TTABLE;
}

static void timer_cb(uv_timer_t *t) {
  Wait *w = t->data;
  wait_unlink(w);
  lua_State *co = w->co, *m = w->main;
  uv_close((uv_handle_t *)&w->timer, wait_free_cb);
  task_step(m, co, 0);
}

static int l_sleep(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  luaL_argcheck(L, ms >= 0, 1, "must be >= 0");
  if (!in_task(L))
    return luaL_error(L, "sleep must be called from a task (a script body, run, filter or trigger)");
  Wait *w = calloc(1, sizeof *w);
  if (w == NULL) return luaL_error(L, "out of memory");
  w->co = L;
  w->main = main_thread(L);
  if (uv_timer_init(&herald_context()->loop, &w->timer) != 0) {
    free(w);
    return luaL_error(L, "cannot create a timer");
  }
  w->timer.data = w;
  uv_timer_start(&w->timer, timer_cb, (uint64_t)ms, 0);
  wait_link(w);
  return lua_yield(L, 0);
}

/* run() drives the loop until nothing is pending; returns false if stopped early. */
static int l_run(lua_State *L) {
  if (loop_running) return luaL_error(L, "the loop is already running");
  loop_running = 1;
  int more = uv_run(&herald_context()->loop, UV_RUN_DEFAULT);
  loop_running = 0;
  lua_pushboolean(L, more == 0);
  return 1;
}

static int l_run_once(lua_State *L) {
  if (loop_running) return luaL_error(L, "the loop is already running");
  loop_running = 1;
  int more = uv_run(&herald_context()->loop, UV_RUN_NOWAIT);
  loop_running = 0;
  lua_pushboolean(L, more != 0);
  return 1;
}

static int l_stop(lua_State *L) {
  (void)L;
  uv_stop(&herald_context()->loop);
  return 0;
}

static int l_now(lua_State *L) {
  uv_update_time(&herald_context()->loop);
  lua_pushinteger(L, (lua_Integer)uv_now(&herald_context()->loop));
  return 1;
}

static int l_in_task(lua_State *L) {
  lua_pushboolean(L, in_task(L));
  return 1;
}

static int l_failures(lua_State *L) {
  lua_pushinteger(L, unobserved_failures);
  return 1;
}

void herald_task_cancel_all(void) {
  while (waits != NULL) {
    Wait *w = waits;
    wait_unlink(w);
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, wait_free_cb);
  }
}

void herald_task_cancel_state(lua_State *main) {
  Wait *w = waits;
  while (w != NULL) {
    Wait *next = w->next;
    if (w->main == main) {
      wait_unlink(w);
      uv_timer_stop(&w->timer);
      uv_close((uv_handle_t *)&w->timer, wait_free_cb);
    }
    w = next;
  }
}

int luaopen_herald_core_task(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, TASKS_KEY);
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {
    {"spawn", l_spawn},     {"sleep", l_sleep}, {"run", l_run},           {"run_once", l_run_once},
    {"stop", l_stop},       {"now", l_now},     {"in_task", l_in_task},   {"failures", l_failures},
    {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
