/* The sandbox for campaign code (`herald run FILE` and every filter, trigger and hook it
 * defines). A sandbox is a separate lua_State with its own counting allocator (memory cap),
 * an allow-list environment per loaded chunk, text-only loading, and an instruction budget per
 * call enforced by a count hook that a script cannot pcall its way past. */
#ifndef HERALD_LUA_SANDBOX_H
#define HERALD_LUA_SANDBOX_H

#include <lua.h>
#include <stddef.h>

#include "runtime/error.h"

typedef struct {
  size_t memory_limit;          /* bytes the state may hold; 0 = default (64 MiB) */
  long long instruction_budget; /* VM instructions per call/resume; 0 = default (10^8) */
  long long time_limit_ms;      /* wall-clock backstop per call/resume; 0 = default (10 s) */
} HeraldSandboxLimits;

/* Creates a sandboxed state. Campaign-safe herald modules are preloaded; the global
 * environment template holds only allow-listed names. NULL with err set on failure. */
lua_State *herald_sandbox_new(const HeraldSandboxLimits *limits, HeraldError *err);
void herald_sandbox_close(lua_State *L);

/* Loads a text chunk in a fresh environment (a new table whose reads fall back to the
 * allow-list, and where reading an undefined global raises). Pushes the function, or returns
 * non-LUA_OK with a message naming chunkname:line on the stack. Bytecode is refused. */
int herald_sandbox_load(lua_State *L, const char *chunk, size_t len, const char *chunkname);
int herald_sandbox_loadfile(lua_State *L, const char *path);

/* Calls the function below nargs arguments with a fresh instruction budget. On error the
 * message carries file:line and a traceback; budget and memory failures say so
 * ("instruction budget exceeded", "memory limit exceeded"). The state stays usable. */
int herald_sandbox_pcall(lua_State *L, int nargs, int nresults);

/* For C functions that run long work no hook reaches (an SQL query): true once the current
 * call's time limit has passed or its budget is spent, the failure then recorded as the hook
 * records it; herald_sandbox_raise_spent raises it (never returns), and the call fails with
 * that message however the script tries to catch it. False outside a call. */
int herald_sandbox_spent(lua_State *L);
int herald_sandbox_raise_spent(lua_State *L);

/* Bytes the sandboxed state holds now. */
size_t herald_sandbox_memory(lua_State *L);

/* True when L (or a thread of it) belongs to a sandboxed state. */
int herald_sandbox_is(lua_State *L);

#endif
