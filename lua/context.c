#include "lua/context.h"

#include <lauxlib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static HeraldContext ctx;
static int ctx_ready;

HeraldContext *herald_context(void) { return &ctx; }

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static int file_exists(const char *path) { return access(path, R_OK) == 0; }

/* The stdlib is found next to the binary (build/bin/herald or build/debug/bin/herald in a
 * checkout, PREFIX/bin/herald installed), unless $HERALD_STDLIB names it. */
static char *find_stdlib(const char *exe) {
  const char *env = getenv("HERALD_STDLIB");
  if (env != NULL && *env) return strdup(env);
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", exe);
  char *slash = strrchr(dir, '/');
  if (slash == NULL) return NULL;
  *slash = '\0';
  static const char *const rel[] = {"/../../stdlib", "/../../../stdlib", "/../share/herald/stdlib",
                                    "/../stdlib"};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
    char cand[PATH_MAX], probe[PATH_MAX + 32];
    snprintf(cand, sizeof cand, "%s%s", dir, rel[i]);
    snprintf(probe, sizeof probe, "%s/herald/init.lua", cand);
    if (file_exists(probe)) {
      char real[PATH_MAX];
      return strdup(realpath(cand, real) ? real : cand);
    }
  }
  return NULL;
}

int herald_context_init(const char *argv0) {
  memset(&ctx, 0, sizeof ctx);
  if (uv_loop_init(&ctx.loop) != 0) return -1;
  char exe[PATH_MAX];
  size_t len = sizeof exe;
  if (uv_exepath(exe, &len) != 0) snprintf(exe, sizeof exe, "%s", argv0);
  ctx.exe_path = strdup(exe);
  ctx.stdlib_dir = find_stdlib(exe);
  const char *db = getenv("HERALD_DB");
  ctx.db_path = strdup(db && *db ? db : "herald.db");
  const char *app = getenv("HERALD_APP");
  ctx.app = strdup(app && *app ? app : HERALD_DEFAULT_APP);
  ctx_ready = 1;
  return 0;
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void herald_context_shutdown(void) {
  if (!ctx_ready) return;
  herald_store_close(ctx.store);
  ctx.store = NULL;
  /* Handles still open belong to tasks that never finished; close them so the loop can end. */
  uv_walk(&ctx.loop, close_walk_cb, NULL);
  uv_run(&ctx.loop, UV_RUN_DEFAULT);
  uv_loop_close(&ctx.loop);
  free(ctx.db_path);
  free(ctx.app);
  free(ctx.stdlib_dir);
  free(ctx.exe_path);
  ctx_ready = 0;
}

int herald_context_set_db(const char *path) {
  char *copy = dup_or_null(path);
  if (copy == NULL) return -1;
  herald_store_close(ctx.store);
  ctx.store = NULL;
  free(ctx.db_path);
  ctx.db_path = copy;
  return 0;
}

int herald_context_set_app(const char *app) {
  char *copy = dup_or_null(app);
  if (copy == NULL) return -1;
  free(ctx.app);
  ctx.app = copy;
  return 0;
}

HeraldStore *herald_context_store(lua_State *L) {
  if (ctx.store != NULL) return ctx.store;
  HeraldError err = {0};
  if (herald_store_open(ctx.db_path, &ctx.store, &err) != kHeraldOk) {
    ctx.store = NULL;
    luaL_error(L, "%s", err.msg);
  }
  return ctx.store;
}
