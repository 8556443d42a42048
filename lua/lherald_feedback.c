/* herald.core.feedback: bounces and complaints that arrive as mail (runtime/feedback.h), for
 * `herald feedback` and scripts.
 *   parse(text) -> {kind =, message_id =, matched_by =, status =, action =, recipient =,
 *                   feedback_type =, reason =} | nil, err
 *   process(text [, app]) -> {result = 'RECORDED' | 'IGNORED' | 'UNMATCHED' | 'MALFORMED' | 'BUSY',
 *                             event_type =, endpoint_id =, message_id =, reason =}
 *     BUSY: another process held the store past the busy timeout; nothing was recorded and
 *     the same text may be processed again. Any other store failure raises.
 *   entries(dir) -> sorted names of the regular files in dir (a maildir's new/) | nil, err */
#include <dirent.h>
#include <errno.h>
#include <glib.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lua/context.h"
#include "lua/modules.h"
#include "runtime/feedback.h"
#include "runtime/tracking.h"

static const char *const KIND_NAMES[] = {"NONE", "HARD_BOUNCE", "SOFT_BOUNCE", "COMPLAINT", "DELIVERED"};

static void set_str(lua_State *L, const char *k, const char *v) {
  if (v == NULL || *v == '\0') return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

static void push_report(lua_State *L, const HeraldFeedbackReport *r) {
  lua_createtable(L, 0, 8);
  set_str(L, "kind", KIND_NAMES[r->kind]);
  set_str(L, "message_id", r->message_id);
  set_str(L, "matched_by", r->matched_by);
  set_str(L, "status", r->status);
  set_str(L, "action", r->action);
  set_str(L, "recipient", r->recipient);
  set_str(L, "feedback_type", r->feedback_type);
  set_str(L, "reason", r->reason);
}

static int l_parse(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  HeraldFeedbackReport *r = lua_newuserdatauv(L, sizeof *r, 0);
  HeraldError err = {0};
  if (herald_feedback_parse(text, len, r, &err) != kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  push_report(L, r);
  return 1;
}

static int l_process(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *app = luaL_optstring(L, 2, herald_context()->app);
  HeraldFeedbackReport *r = lua_newuserdatauv(L, sizeof *r, 0);
  HeraldError err = {0};
  const char *result;
  char type[32] = "", endpoint[HERALD_TRACKING_ID_MAX + 1] = "";
  if (herald_feedback_parse(text, len, r, &err) != kHeraldOk) {
    result = "MALFORMED";
  } else if (r->kind == kHeraldFeedbackNone) {
    result = "IGNORED";
    snprintf(err.msg, sizeof err.msg, "%s", r->reason);
  } else {
    HeraldStore *store = herald_context_store(L);
    int rc = herald_feedback_record(store, app, r, type, endpoint, &err);
    if (rc == kHeraldNotFound) result = "UNMATCHED";
    /* no fault of the mail: the caller keeps it for another try */
    else if (rc != kHeraldOk && herald_store_error_busy(&err)) result = "BUSY";
    else if (rc != kHeraldOk) return luaL_error(L, "recording a report: %s", err.msg);
    else {
      result = "RECORDED";
      snprintf(err.msg, sizeof err.msg, "%s", r->reason);
    }
  }
  lua_createtable(L, 0, 6);
  set_str(L, "result", result);
  set_str(L, "event_type", type);
  set_str(L, "endpoint_id", endpoint);
  set_str(L, "message_id", r->message_id);
  set_str(L, "kind", r->kind != kHeraldFeedbackNone ? KIND_NAMES[r->kind] : NULL);
  set_str(L, "reason", err.msg);
  return 1;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int l_entries(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  DIR *d = opendir(dir);
  if (d == NULL) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", dir, strerror(errno));
    return 2;
  }
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;  /* maildir readers skip dot files */
    char *path = g_build_filename(dir, e->d_name, NULL);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) g_ptr_array_add(names, g_strdup(e->d_name));
    g_free(path);
  }
  closedir(d);
  if (names->len > 1) qsort(names->pdata, names->len, sizeof(char *), cmp_names);
  lua_createtable(L, (int)names->len, 0);
  for (guint i = 0; i < names->len; i++) {
    lua_pushstring(L, g_ptr_array_index(names, i));
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  g_ptr_array_free(names, TRUE);
  return 1;
}

int luaopen_herald_core_feedback(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"parse", l_parse}, {"process", l_process}, {"entries", l_entries}, {NULL, NULL},
  };
  luaL_newlib(L, fns);
  return 1;
}
