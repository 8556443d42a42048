/* Coroutine tasks on the libuv loop.
 *
 * Every script body, campaign run, filter and trigger runs as a task: a Lua coroutine anchored
 * in the registry while it lives. A C function that has to wait (a timer, an HTTP transfer, a
 * long query) creates a HeraldTaskWait with a cancel function, starts the I/O and yields; the
 * completion callback pushes results on the task's thread and calls herald_task_wait_done,
 * which resumes it. Waits sit in one list so a stop request can cut sleeps short and shutdown
 * can cancel everything: a cancelled wait never resumes its task.
 *
 * The loop is never run re-entrantly: task.run refuses when the loop is already running. */
#include <lauxlib.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "lua/context.h"
#include "lua/host.h"
#include "lua/modules.h"
#include "lua/task.h"

#define TASKS_KEY "herald.tasks"     /* registry: thread -> handle table */

struct HeraldTaskWait {
  lua_State *co;     /* the waiting task */
  lua_State *main;   /* main thread of the task's state */
  int interruptible; /* a stop request resumes it early (sleeps), else it runs its course */
  int interrupted;
  void (*cancel)(HeraldTaskWait *w, void *data);
  void *data;
  HeraldTaskWait *prev, *next;
};

static HeraldTaskWait *waits;
static int loop_running;
static int unobserved_failures;

static void wait_link(HeraldTaskWait *w) {
  w->prev = NULL;
  w->next = waits;
  if (waits) waits->prev = w;
  waits = w;
}

static void wait_unlink(HeraldTaskWait *w) {
  if (w->prev) w->prev->next = w->next; else waits = w->next;
  if (w->next) w->next->prev = w->prev;
  w->prev = w->next = NULL;
}

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
  herald_guard_resuming(co);
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
    herald_host_drop_own_frames(L, msg);
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
      /* a sandbox's tasks answer to its owner, who hears of their end through the sandbox
       * (a budget spent, the sandbox closed): only the host's own count towards a script's
       * exit status (stdlib/herald/cli.lua) */
      if (!herald_state_info(L)->sandboxed) unobserved_failures++;
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

/* Starts fn(...) (at 1..top) as a task and returns its handle. observed is set before the
 * first step, which runs the task at once: a task that fails before it first waits is
 * otherwise reported here too, as well as by the spawner that reads the handle. */
static int spawn(lua_State *L, int observed) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 1;
  lua_State *co = lua_newthread(L);
  lua_newtable(L);  /* handle */
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "done");
  if (observed) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "observed");
  }
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

/* spawn(fn, ...) -> handle. The task starts at once and runs until it first waits; a failure
 * nobody reads from the handle (handle.observed unset) is printed when it happens. */
static int l_spawn(lua_State *L) { return spawn(L, 0); }

/* spawn_observed(fn, ...) -> handle: as spawn, for a spawner that reports the failure itself
 * (handle.error once handle.done), from the first step on. */
static int l_spawn_observed(lua_State *L) { return spawn(L, 1); }

static int in_task(lua_State *L) {
  if (!lua_isyieldable(L)) return 0;
  lua_State *m = main_thread(L);
  if (m == L) return 0;
  int t = push_handle(L, L);
  lua_pop(L, 1);
  return t == LUA_TTABLE;
}

int herald_task_can_wait(lua_State *L) { return in_task(L); }

HeraldTaskWait *herald_task_wait_new(lua_State *L, int interruptible,
                                     void (*cancel)(HeraldTaskWait *w, void *data), void *data) {
  if (!in_task(L)) {
    luaL_error(L, "this call waits, so it must run in a task (a script body, run, filter or trigger)");
    return NULL;
  }
  HeraldTaskWait *w = calloc(1, sizeof *w);
  if (w == NULL) {
    luaL_error(L, "out of memory");
    return NULL;
  }
  w->co = L;
  w->main = main_thread(L);
  w->interruptible = interruptible;
  w->cancel = cancel;
  w->data = data;
  wait_link(w);
  return w;
}

lua_State *herald_task_wait_thread(HeraldTaskWait *w) { return w->co; }

void herald_task_wait_done(HeraldTaskWait *w, int nvalues) {
  wait_unlink(w);
  lua_State *co = w->co, *m = w->main;
  free(w);
  task_step(m, co, nvalues);
}

typedef struct {
  uv_timer_t timer;
  HeraldTaskWait *wait;
} Sleep;

static void sleep_free_cb(uv_handle_t *h) { free(h->data); }

static void sleep_timer_cb(uv_timer_t *t) {
  Sleep *s = t->data;
  HeraldTaskWait *w = s->wait;
  uv_close((uv_handle_t *)&s->timer, sleep_free_cb);
  herald_task_wait_done(w, 0);
}

/* Cancelling a sleep releases the timer; the task module resumes or drops the task. */
static void sleep_cancel(HeraldTaskWait *w, void *data) {
  (void)w;
  Sleep *s = data;
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer, sleep_free_cb);
}

/* sleep(ms): returns when ms have passed or a stop request cut it short (a caller that cares
 * checks herald.core.stopping()). */
static int l_sleep(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  luaL_argcheck(L, ms >= 0, 1, "must be >= 0");
  Sleep *s = calloc(1, sizeof *s);
  if (s == NULL) return luaL_error(L, "out of memory");
  if (!in_task(L)) {
    free(s);
    return luaL_error(L, "sleep must be called from a task (a script body, run, filter or trigger)");
  }
  if (uv_timer_init(&herald_context()->loop, &s->timer) != 0) {
    free(s);
    return luaL_error(L, "cannot create a timer");
  }
  s->timer.data = s;
  s->wait = herald_task_wait_new(L, 1, sleep_cancel, s);
  /* The loop's clock is the time its iteration began: stale after a long computation or a
   * REPL prompt that blocked, which would end the sleep that much early. */
  uv_update_time(&herald_context()->loop);
  uv_timer_start(&s->timer, sleep_timer_cb, (uint64_t)ms, 0);
  return lua_yield(L, 0);
}

/* A signal: one task waits until others say it may go on (their work is done), without
 * polling with short sleeps. notify() before wait() is remembered, so a waiter that comes late
 * does not wait. The waiter is resumed from the loop (a zero timer), never from inside the
 * notifying task. The core is separate from the Lua userdata because its timer outlives the
 * userdata until libuv has closed it. */
#define SIGNAL_MT "herald.task.signal"

typedef struct {
  uv_timer_t timer;
  HeraldTaskWait *wait;
  int set;
} SignalCore;

typedef struct {
  SignalCore *c;
} SignalBox;

static void signal_free_cb(uv_handle_t *h) { free(h->data); }

/* The timer fired: after a notify (the waiter gets true) or when a wait's time ran out
 * (false). */
static void signal_fire(uv_timer_t *t) {
  SignalCore *c = t->data;
  if (c->wait == NULL) return;
  HeraldTaskWait *w = c->wait;
  int notified = c->set;
  c->wait = NULL;
  c->set = 0;
  lua_pushboolean(herald_task_wait_thread(w), notified);
  herald_task_wait_done(w, 1);
}

/* Shutdown drops the waiting task, a stop request resumes a timed wait's (see l_signal_wait);
 * the timer goes with the userdata. */
static void signal_cancel(HeraldTaskWait *w, void *data) {
  (void)w;
  SignalCore *c = data;
  c->wait = NULL;
  uv_timer_stop(&c->timer);
}

static SignalCore *check_signal(lua_State *L) {
  SignalBox *b = luaL_checkudata(L, 1, SIGNAL_MT);
  if (b->c == NULL) luaL_error(L, "the signal is closed");
  return b->c;
}

/* signal() -> a signal with :wait() and :notify() */
static int l_signal(lua_State *L) {
  SignalBox *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->c = NULL;
  luaL_setmetatable(L, SIGNAL_MT);
  SignalCore *c = calloc(1, sizeof *c);
  if (c == NULL) return luaL_error(L, "out of memory");
  if (uv_timer_init(&herald_context()->loop, &c->timer) != 0) {
    free(c);
    return luaL_error(L, "cannot create a timer");
  }
  c->timer.data = c;
  /* a signal nobody waits on must not keep the loop alive */
  uv_unref((uv_handle_t *)&c->timer);
  b->c = c;
  return 1;
}

/* s:wait([timeout_ms]) -> true once notify() was called (at once if it was called since the
 * last wait). One task at a time. Without a timeout the wait lasts through a stop request, as
 * the work it waits for does; with one, it returns a false value when the time runs out first
 * or a stop request (SIGINT/SIGTERM) cuts it short, as it does sleeps: for a task that watches
 * over work in progress and must act on a stop. */
static int l_signal_wait(lua_State *L) {
  SignalCore *c = check_signal(L);
  int timed = !lua_isnoneornil(L, 2);
  lua_Integer timeout = timed ? luaL_checkinteger(L, 2) : 0;
  luaL_argcheck(L, timeout >= 0, 2, "must be >= 0");
  if (c->set) {
    c->set = 0;
    lua_pushboolean(L, 1);
    return 1;
  }
  if (c->wait != NULL) return luaL_error(L, "another task waits on this signal");
  c->wait = herald_task_wait_new(L, timed, signal_cancel, c);
  if (timed) {
    uv_ref((uv_handle_t *)&c->timer);   /* the time running out is work the loop has to do */
    uv_timer_start(&c->timer, signal_fire, (uint64_t)timeout, 0);
  }
  return lua_yield(L, 0);
}

/* s:notify(): lets the waiting task (or the next to wait) go on. */
static int l_signal_notify(lua_State *L) {
  SignalCore *c = check_signal(L);
  c->set = 1;
  if (c->wait != NULL) {
    uv_ref((uv_handle_t *)&c->timer);   /* the resumption is work the loop has to do */
    uv_timer_start(&c->timer, signal_fire, 0, 0);
  }
  return 0;
}

static int l_signal_gc(lua_State *L) {
  SignalBox *b = luaL_checkudata(L, 1, SIGNAL_MT);
  if (b->c != NULL) {
    uv_timer_stop(&b->c->timer);
    uv_close((uv_handle_t *)&b->c->timer, signal_free_cb);
    b->c = NULL;
  }
  return 0;
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

static uv_signal_t sigint_handle, sigterm_handle;
static int signals_on;

/* libuv's signal handler only wakes the loop, and its callback runs when the loop next turns:
 * not while a long query blocks it. Our handler, installed over libuv's, notes the signal for
 * herald_task_stop_requested (the query's progress handler) and hands it on to libuv's. */
static volatile sig_atomic_t stop_signalled;
static struct sigaction uv_sigint_action, uv_sigterm_action;

static void stop_signal_handler(int signum, siginfo_t *info, void *uctx) {
  /* A second stop signal ends the process at once, as a service manager's SIGKILL would: the
   * first asks tasks to finish what they are writing, which one stuck in a Lua channel's send
   * may not do for a long while. The outbox does not depend on a clean stop: rows claimed and
   * not reported go back at the next start, and any sent again carry their idempotency key. */
  if (stop_signalled) _exit(128 + signum);
  stop_signalled = 1;
  const struct sigaction *a = signum == SIGINT ? &uv_sigint_action : &uv_sigterm_action;
  if (a->sa_flags & SA_SIGINFO) a->sa_sigaction(signum, info, uctx);
  else if (a->sa_handler != SIG_DFL && a->sa_handler != SIG_IGN) a->sa_handler(signum);
}

static int chain_signal(int signum, struct sigaction *uv_action) {
  if (sigaction(signum, NULL, uv_action) != 0) return -1;
  struct sigaction sa = *uv_action;
  sa.sa_flags |= SA_SIGINFO;
  sa.sa_sigaction = stop_signal_handler;
  return sigaction(signum, &sa, NULL);
}

int herald_task_stop_requested(void) { return stop_signalled || herald_context()->stopping; }

/* SIGINT/SIGTERM: mark the context stopping and cut every sleep short, so tasks see the stop
 * at their next step and finish what they were writing. */
static void signal_cb(uv_signal_t *h, int signum) {
  (void)h;
  (void)signum;
  herald_context()->stopping = 1;
  /* Only interruptible waits that exist now are cut short; a task that sleeps again sleeps
   * normally, and I/O in flight runs its course so what it writes is whole. */
  for (HeraldTaskWait *w = waits; w != NULL; w = w->next) w->interrupted = w->interruptible;
  for (;;) {
    HeraldTaskWait *w = waits;
    while (w != NULL && !(w->interrupted && w->interruptible)) w = w->next;
    if (w == NULL) break;
    w->interruptible = 0;
    w->cancel(w, w->data);
    herald_task_wait_done(w, 0);
  }
}

static int l_watch_signals(lua_State *L) {
  if (signals_on) return 0;
  uv_loop_t *loop = &herald_context()->loop;
  if (uv_signal_init(loop, &sigint_handle) != 0 || uv_signal_init(loop, &sigterm_handle) != 0)
    return luaL_error(L, "cannot watch signals");
  uv_signal_start(&sigint_handle, signal_cb, SIGINT);
  uv_signal_start(&sigterm_handle, signal_cb, SIGTERM);
  if (chain_signal(SIGINT, &uv_sigint_action) != 0 || chain_signal(SIGTERM, &uv_sigterm_action) != 0)
    return luaL_error(L, "cannot watch signals");
  /* Watching for a stop must not keep an otherwise idle loop alive. */
  uv_unref((uv_handle_t *)&sigint_handle);
  uv_unref((uv_handle_t *)&sigterm_handle);
  signals_on = 1;
  return 0;
}

static int l_request_stop(lua_State *L) {
  (void)L;
  signal_cb(NULL, 0);
  return 0;
}

void herald_task_cancel_all(void) {
  while (waits != NULL) {
    HeraldTaskWait *w = waits;
    wait_unlink(w);
    w->cancel(w, w->data);
    free(w);
  }
}

void herald_task_cancel_state(lua_State *main) {
  HeraldTaskWait *w = waits;
  while (w != NULL) {
    HeraldTaskWait *next = w->next;
    if (w->main == main) {
      wait_unlink(w);
      w->cancel(w, w->data);
      free(w);
    }
    w = next;
  }
}

int luaopen_herald_core_task(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, TASKS_KEY);
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {
    {"spawn", l_spawn},     {"spawn_observed", l_spawn_observed},
    {"sleep", l_sleep},     {"run", l_run},     {"run_once", l_run_once},
    {"stop", l_stop},       {"now", l_now},     {"in_task", l_in_task},   {"failures", l_failures},
    {"watch_signals", l_watch_signals},         {"request_stop", l_request_stop},
    {"signal", l_signal},
    {NULL, NULL},
  };
  if (luaL_newmetatable(L, SIGNAL_MT)) {
    static const luaL_Reg methods[] = {
      {"wait", l_signal_wait}, {"notify", l_signal_notify}, {NULL, NULL},
    };
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_signal_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
