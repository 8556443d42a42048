/* The Lua host: creates states, runs protected calls with tracebacks, and records per-state
 * facts (is it sandboxed, how its tasks are resumed) in the state's extra space. */
#ifndef HERALD_LUA_HOST_H
#define HERALD_LUA_HOST_H

#include <lua.h>

typedef struct HeraldStateInfo {
  int sandboxed;
  void *sandbox;  /* the HeraldSandbox of a sandboxed state */
  /* Resumes a task coroutine of this state. Sandboxed states count instructions per resume. */
  int (*resume)(lua_State *L, lua_State *co, int nargs, int *nresults);
} HeraldStateInfo;

HeraldStateInfo *herald_state_info(lua_State *L);

/* A host state: the full standard library (the user at their own keyboard), package.path
 * pointing at the stdlib, and herald's C modules preloaded. NULL when out of memory. */
lua_State *herald_host_new(void);

/* Adds the stdlib directory to package.path and preloads herald's C modules. */
void herald_host_open_modules(lua_State *L);

/* True when campaign code may name path: a relative path that stays below the working
 * directory (not empty, no leading '/', no ".." component). */
int herald_host_path_below_cwd(const char *path);

/* lua_pcall with a traceback appended to the error message. */
int herald_host_pcall(lua_State *L, int nargs, int nresults);

/* The message handler herald_host_pcall uses; exported for coroutine resumes. */
int herald_host_traceback(lua_State *L);

/* Replaces the traceback at the top of the stack, made for the error msg, by one without
 * herald's own frames (the stdlib's, and the `error` call) when msg is the user's (it does not
 * name a stdlib file); a traceback left with no frame loses its "stack traceback:" line. */
void herald_host_drop_own_frames(lua_State *L, const char *msg);

#endif
