/* Process-wide runtime context shared by every Lua state of the process (host and sandboxes):
 * the libuv loop, the store (opened on first use) and the global options. */
#ifndef HERALD_LUA_CONTEXT_H
#define HERALD_LUA_CONTEXT_H

#include <lua.h>
#include <uv.h>

#include "runtime/store.h"

typedef struct {
  uv_loop_t loop;
  HeraldStore *store;
  char *db_path;      /* --db, $HERALD_DB, or ./herald.db */
  char *app;          /* --app, $HERALD_APP, or "default" */
  char *stdlib_dir;   /* where stdlib/herald/init.lua lives */
  char *exe_path;
  int stopping;       /* SIGINT/SIGTERM seen: long work winds down */
} HeraldContext;

HeraldContext *herald_context(void);
int herald_context_init(const char *argv0);
void herald_context_shutdown(void);

/* Sets the database path; closes an open store so the next use opens the new file. */
int herald_context_set_db(const char *path);
int herald_context_set_app(const char *app);

/* Returns the open store, opening it on first use; raises a Lua error when it cannot be opened. */
HeraldStore *herald_context_store(lua_State *L);

#endif
