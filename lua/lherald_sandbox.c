/* herald.core.sandbox: the sandbox seen from host mode, so campaign code can be run and
 * tested directly. Values cross between the two states by deep copy (strings, numbers,
 * booleans, nil and tables); anything else is refused with an error naming it. */
#include <lauxlib.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "lua/modules.h"
#include "lua/sandbox.h"

#define SANDBOX_MT "herald.sandbox"
#define TASK_MT "herald.sandbox.task"
#define MAX_DEPTH 64

typedef struct {
  lua_State *S;  /* NULL once closed */
} SandboxBox;

typedef struct {
  int ref;  /* the task's handle table in the sandbox's registry */
} TaskBox;    /* user value 1: its SandboxBox, which must outlive it */

static lua_State *check_open(lua_State *H, int idx) {
  SandboxBox *b = luaL_checkudata(H, idx, SANDBOX_MT);
  if (b->S == NULL) luaL_error(H, "the sandbox is closed");
  return b->S;
}

/* ---- host -> sandbox (runs protected inside the sandbox: only the sandbox allocates) ----- */

typedef struct {
  lua_State *H;
  int first, last;
} CopyIn;

static void copy_in(lua_State *S, lua_State *H, int idx, int depth, int seen, const char *what) {
  luaL_checkstack(S, 4, "value too deeply nested");
  switch (lua_type(H, idx)) {
    case LUA_TNIL: lua_pushnil(S); break;
    case LUA_TBOOLEAN: lua_pushboolean(S, lua_toboolean(H, idx)); break;
    case LUA_TNUMBER:
      if (lua_isinteger(H, idx)) lua_pushinteger(S, lua_tointeger(H, idx));
      else lua_pushnumber(S, lua_tonumber(H, idx));
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(H, idx, &len);
      lua_pushlstring(S, s, len);
      break;
    }
    case LUA_TTABLE: {
      if (depth >= MAX_DEPTH) luaL_error(S, "%s: tables nested deeper than %d", what, MAX_DEPTH);
      lua_pushlightuserdata(S, (void *)lua_topointer(H, idx));
      if (lua_rawget(S, seen) == LUA_TTABLE) break;  /* shared or cyclic: keep the shape */
      lua_pop(S, 1);
      lua_newtable(S);
      lua_pushlightuserdata(S, (void *)lua_topointer(H, idx));
      lua_pushvalue(S, -2);
      lua_rawset(S, seen);
      idx = lua_absindex(H, idx);
      lua_pushnil(H);
      while (lua_next(H, idx)) {
        copy_in(S, H, -2, depth + 1, seen, what);
        copy_in(S, H, -1, depth + 1, seen, what);
        lua_rawset(S, -3);
        lua_pop(H, 1);
      }
      break;
    }
    default:
      luaL_error(S, "%s: a %s value cannot enter the sandbox", what, luaL_typename(H, idx));
  }
}

static int copy_in_all(lua_State *S) {
  const CopyIn *c = lua_touserdata(S, 1);
  lua_settop(S, 0);
  lua_newtable(S);  /* 1: host table -> sandbox table */
  for (int i = c->first; i <= c->last; i++) {
    char what[32];
    snprintf(what, sizeof what, "argument %d", i - c->first + 1);
    copy_in(S, c->H, i, 0, 1, what);
  }
  return lua_gettop(S) - 1;
}

/* Pushes host values first..last onto S; on failure leaves H's error message pushed. */
static int push_args(lua_State *H, lua_State *S, int first, int last) {
  luaL_checkstack(H, MAX_DEPTH * 2 + 8, "too many nested tables");
  CopyIn c = {H, first, last};
  if (!lua_checkstack(S, last - first + 8)) {
    lua_pushliteral(H, "too many arguments for the sandbox");
    return 0;
  }
  lua_pushcfunction(S, copy_in_all);
  lua_pushlightuserdata(S, &c);
  if (herald_sandbox_pcall(S, 1, LUA_MULTRET) != LUA_OK) {
    size_t len;
    const char *msg = lua_tolstring(S, -1, &len);
    lua_pushlstring(H, msg ? msg : "?", msg ? len : 1);
    lua_pop(S, 1);
    return 0;
  }
  return 1;
}

/* ---- sandbox -> host (runs in the host: the sandbox is only read) ------------------------ */

static int copy_out(lua_State *S, int idx, lua_State *H, int depth, int seen, char *err,
                    size_t errlen) {
  luaL_checkstack(H, 4, "value too deeply nested");
  switch (lua_type(S, idx)) {
    case LUA_TNIL: lua_pushnil(H); return 1;
    case LUA_TBOOLEAN: lua_pushboolean(H, lua_toboolean(S, idx)); return 1;
    case LUA_TNUMBER:
      if (lua_isinteger(S, idx)) lua_pushinteger(H, lua_tointeger(S, idx));
      else lua_pushnumber(H, lua_tonumber(S, idx));
      return 1;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(S, idx, &len);
      lua_pushlstring(H, s, len);
      return 1;
    }
    case LUA_TTABLE: {
      if (depth >= MAX_DEPTH) {
        snprintf(err, errlen, "tables nested deeper than %d", MAX_DEPTH);
        return 0;
      }
      lua_pushlightuserdata(H, (void *)lua_topointer(S, idx));
      if (lua_rawget(H, seen) == LUA_TTABLE) return 1;
      lua_pop(H, 1);
      if (!lua_checkstack(S, 3)) {
        snprintf(err, errlen, "the sandbox's stack is full");
        return 0;
      }
      lua_newtable(H);
      lua_pushlightuserdata(H, (void *)lua_topointer(S, idx));
      lua_pushvalue(H, -2);
      lua_rawset(H, seen);
      idx = lua_absindex(S, idx);
      lua_pushnil(S);
      while (lua_next(S, idx)) {
        if (!copy_out(S, -2, H, depth + 1, seen, err, errlen) ||
            !copy_out(S, -1, H, depth + 1, seen, err, errlen)) {
          lua_pop(S, 2);
          return 0;
        }
        lua_rawset(H, -3);
        lua_pop(S, 1);
      }
      return 1;
    }
    default:
      snprintf(err, errlen, "a %s value cannot leave the sandbox", luaL_typename(S, idx));
      return 0;
  }
}

/* Pushes true and S's values from..top onto H (removing them from S), or false and why. */
static int return_results(lua_State *H, lua_State *S, int from) {
  int top = lua_gettop(S), n = top - from + 1;
  luaL_checkstack(H, n + 4, "too many results");
  lua_pushboolean(H, 1);
  lua_newtable(H);
  int seen = lua_gettop(H);
  for (int i = from; i <= top; i++) {
    char err[128];
    if (!copy_out(S, i, H, 0, seen, err, sizeof err)) {
      lua_settop(S, from - 1);
      lua_settop(H, seen - 2);
      lua_pushboolean(H, 0);
      lua_pushfstring(H, "result %d: %s", i - from + 1, err);
      return 2;
    }
  }
  lua_remove(H, seen);
  lua_settop(S, from - 1);
  return n + 1;
}

static int return_failure(lua_State *H, lua_State *S) {
  lua_pushboolean(H, 0);
  size_t len;
  const char *msg = lua_tolstring(S, -1, &len);
  if (msg != NULL) lua_pushlstring(H, msg, len);
  else lua_pushliteral(H, "(error object is not a string)");
  lua_settop(S, 0);
  return 2;
}

/* ---- the sandbox object ------------------------------------------------------------------ */

/* new(memory_bytes, instruction_budget, time_limit_ms): each 0 or nil for the default. */
/* realpath(path) -> absolute path | nil, err: the name a definition file is recorded under,
 * the same whatever the directory herald was started in. */
static int l_realpath(lua_State *H) {
  char buf[PATH_MAX];
  if (realpath(luaL_checkstring(H, 1), buf) == NULL) {
    luaL_pushfail(H);
    lua_pushfstring(H, "%s: cannot resolve the path", lua_tostring(H, 1));
    return 2;
  }
  lua_pushstring(H, buf);
  return 1;
}

static int l_new(lua_State *H) {
  HeraldSandboxLimits limits = {0, 0, 0};
  lua_Integer memory = luaL_optinteger(H, 1, 0), budget = luaL_optinteger(H, 2, 0),
              time_ms = luaL_optinteger(H, 3, 0);
  luaL_argcheck(H, memory >= 0, 1, "memory must be >= 0 bytes");
  luaL_argcheck(H, budget >= 0, 2, "budget must be >= 0 instructions");
  luaL_argcheck(H, time_ms >= 0, 3, "time limit must be >= 0 ms");
  limits.memory_limit = (size_t)memory;
  limits.instruction_budget = budget;
  limits.time_limit_ms = time_ms;
  SandboxBox *b = lua_newuserdatauv(H, sizeof *b, 0);
  b->S = NULL;
  luaL_setmetatable(H, SANDBOX_MT);
  HeraldError err = {0};
  b->S = herald_sandbox_new(&limits, &err);
  if (b->S == NULL) {
    luaL_pushfail(H);
    lua_pushstring(H, err.msg);
    return 2;
  }
  return 1;
}

static int run_loaded(lua_State *H, lua_State *S, int status, int first_arg, int last_arg) {
  if (status != LUA_OK) return return_failure(H, S);
  int base = lua_gettop(S);  /* the function */
  if (!push_args(H, S, first_arg, last_arg)) {
    lua_settop(S, 0);
    lua_pushboolean(H, 0);
    lua_insert(H, -2);
    return 2;
  }
  if (herald_sandbox_pcall(S, lua_gettop(S) - base, LUA_MULTRET) != LUA_OK)
    return return_failure(H, S);
  return return_results(H, S, base);
}

/* Loads the code at H[2] named by H[3] into S. Names without '@' or '=' are shown as given
 * ("campaign.lua:3: ..."). */
static int load_code(lua_State *H, lua_State *S) {
  size_t len;
  const char *code = luaL_checklstring(H, 2, &len);
  const char *name = luaL_optstring(H, 3, "sandbox");
  int top = lua_gettop(H);
  if (name[0] != '@' && name[0] != '=') name = lua_pushfstring(H, "=%s", name);
  lua_settop(S, 0);
  int status = herald_sandbox_load(S, code, len, name);
  lua_settop(H, top);
  return status;
}

/* sb:run(code [, chunkname [, args...]]) -> true, results... | false, message */
static int l_run(lua_State *H) {
  lua_State *S = check_open(H, 1);
  int status = load_code(H, S);
  return run_loaded(H, S, status, 4, lua_gettop(H));
}

/* sb:run_file(path [, args...]) -> true, results... | false, message */
static int l_run_file(lua_State *H) {
  lua_State *S = check_open(H, 1);
  const char *path = luaL_checkstring(H, 2);
  lua_settop(S, 0);
  return run_loaded(H, S, herald_sandbox_loadfile(S, path), 3, lua_gettop(H));
}

static int spawn_handle(lua_State *S) {
  int n = lua_gettop(S);
  lua_getfield(S, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(S, -1, "herald.core.task");
  lua_getfield(S, -1, "spawn");
  lua_replace(S, -3);
  lua_pop(S, 1);
  lua_insert(S, 1);
  lua_call(S, n, 1);
  lua_pushboolean(S, 1);
  lua_setfield(S, -2, "observed");  /* its end is reported through the task object */
  lua_pushinteger(S, luaL_ref(S, LUA_REGISTRYINDEX));
  return 1;
}

/* sb:spawn(code [, chunkname [, args...]]) -> task | false, message. The chunk runs as a
 * task of the sandbox (it may herald.sleep); the host's loop drives it. */
static int l_spawn(lua_State *H) {
  lua_State *S = check_open(H, 1);
  if (load_code(H, S) != LUA_OK) return return_failure(H, S);
  lua_pushcfunction(S, spawn_handle);
  lua_insert(S, 1);
  if (!push_args(H, S, 4, lua_gettop(H))) {
    lua_settop(S, 0);
    lua_pushboolean(H, 0);
    lua_insert(H, -2);
    return 2;
  }
  if (herald_sandbox_pcall(S, lua_gettop(S) - 1, 1) != LUA_OK) return return_failure(H, S);
  int ref = (int)lua_tointeger(S, -1);
  lua_settop(S, 0);
  TaskBox *t = lua_newuserdatauv(H, sizeof *t, 1);
  t->ref = ref;
  luaL_setmetatable(H, TASK_MT);
  lua_pushvalue(H, 1);
  lua_setiuservalue(H, -2, 1);
  return 1;
}

static int l_memory(lua_State *H) {
  lua_pushinteger(H, (lua_Integer)herald_sandbox_memory(check_open(H, 1)));
  return 1;
}

static int l_close(lua_State *H) {
  SandboxBox *b = luaL_checkudata(H, 1, SANDBOX_MT);
  if (b->S != NULL) {
    herald_sandbox_close(b->S);
    b->S = NULL;
  }
  return 0;
}

static int l_tostring(lua_State *H) {
  SandboxBox *b = luaL_checkudata(H, 1, SANDBOX_MT);
  if (b->S == NULL) lua_pushliteral(H, "sandbox (closed)");
  else lua_pushfstring(H, "sandbox (%I bytes)", (lua_Integer)herald_sandbox_memory(b->S));
  return 1;
}

/* ---- tasks ------------------------------------------------------------------------------- */

/* Pushes the task's handle table onto its sandbox and returns the sandbox. */
static lua_State *task_handle(lua_State *H) {
  TaskBox *t = luaL_checkudata(H, 1, TASK_MT);
  lua_getiuservalue(H, 1, 1);
  SandboxBox *b = lua_touserdata(H, -1);
  lua_pop(H, 1);
  if (b == NULL || b->S == NULL) luaL_error(H, "the task's sandbox is closed");
  lua_settop(b->S, 0);
  lua_rawgeti(b->S, LUA_REGISTRYINDEX, t->ref);
  return b->S;
}

static int l_task_done(lua_State *H) {
  lua_State *S = task_handle(H);
  lua_getfield(S, 1, "done");
  lua_pushboolean(H, lua_toboolean(S, -1));
  lua_settop(S, 0);
  return 1;
}

/* task:result() -> true, results... | false, message | nil, "the task is still running" */
static int l_task_result(lua_State *H) {
  lua_State *S = task_handle(H);
  lua_getfield(S, 1, "done");
  if (!lua_toboolean(S, -1)) {
    lua_settop(S, 0);
    luaL_pushfail(H);
    lua_pushliteral(H, "the task is still running");
    return 2;
  }
  lua_getfield(S, 1, "ok");
  if (!lua_toboolean(S, -1)) {
    lua_getfield(S, 1, "error");
    return return_failure(H, S);
  }
  lua_getfield(S, 1, "results");
  lua_getfield(S, -1, "n");
  int n = (int)lua_tointeger(S, -1);
  lua_pop(S, 1);
  int results = lua_gettop(S);
  if (!lua_checkstack(S, n + 4)) {
    lua_settop(S, 0);
    return luaL_error(H, "too many results");
  }
  for (int i = 1; i <= n; i++) lua_rawgeti(S, results, i);
  return return_results(H, S, results + 1);
}

static int l_task_gc(lua_State *H) {
  TaskBox *t = luaL_checkudata(H, 1, TASK_MT);
  lua_getiuservalue(H, 1, 1);
  SandboxBox *b = lua_touserdata(H, -1);
  if (b != NULL && b->S != NULL && t->ref != LUA_NOREF) luaL_unref(b->S, LUA_REGISTRYINDEX, t->ref);
  t->ref = LUA_NOREF;
  return 0;
}

int luaopen_herald_core_sandbox(lua_State *H) {
  static const luaL_Reg methods[] = {
    {"run", l_run},       {"run_file", l_run_file}, {"spawn", l_spawn},
    {"memory", l_memory}, {"close", l_close},       {NULL, NULL},
  };
  static const luaL_Reg meta[] = {
    {"__gc", l_close}, {"__close", l_close}, {"__tostring", l_tostring}, {NULL, NULL},
  };
  static const luaL_Reg task_methods[] = {
    {"done", l_task_done}, {"result", l_task_result}, {NULL, NULL},
  };
  luaL_newmetatable(H, SANDBOX_MT);
  luaL_setfuncs(H, meta, 0);
  luaL_newlib(H, methods);
  lua_setfield(H, -2, "__index");
  lua_pop(H, 1);
  luaL_newmetatable(H, TASK_MT);
  lua_pushcfunction(H, l_task_gc);
  lua_setfield(H, -2, "__gc");
  luaL_newlib(H, task_methods);
  lua_setfield(H, -2, "__index");
  lua_pop(H, 1);
  static const luaL_Reg funcs[] = {{"new", l_new}, {"realpath", l_realpath}, {NULL, NULL}};
  luaL_newlib(H, funcs);
  return 1;
}
