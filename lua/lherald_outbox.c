/* herald.core.outbox: the outbox's producer and consumer sides for the campaign engine. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "lua/context.h"
#include "lua/modules.h"
#include "runtime/clock.h"
#include "runtime/campaign.h"
#include "runtime/outbox.h"

static const char *opt_field_string(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  const char *s = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
  lua_pop(L, 1);  /* the table keeps the string alive */
  return s;
}

static int raise_error(lua_State *L, HeraldError *err) { return luaL_error(L, "%s", err->msg); }

/* materialize{app=, campaign_id=, version=, scheduled_ms=, rows={...}} -> run_id, created.
 * The run and all its rows are written in one transaction; an existing run is left as is. */
static int l_materialize(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  HeraldStore *store = herald_context_store(L);
  const char *app = opt_field_string(L, 1, "app");
  if (app == NULL) app = herald_context()->app;
  const char *campaign_id = opt_field_string(L, 1, "campaign_id");
  luaL_argcheck(L, campaign_id != NULL, 1, "campaign_id is required");
  lua_getfield(L, 1, "version");
  int version = (int)luaL_optinteger(L, -1, 1);
  lua_getfield(L, 1, "scheduled_ms");
  int64_t scheduled = (int64_t)luaL_checkinteger(L, -1);
  lua_getfield(L, 1, "rows");
  luaL_checktype(L, -1, LUA_TTABLE);
  int rows = lua_gettop(L);

  HeraldError err = {0};
  if (herald_store_begin(store, &err) != kHeraldOk) return raise_error(L, &err);
  int64_t run_id = 0;
  int created = 0;
  if (herald_outbox_run_create(store, app, campaign_id, version, scheduled, &run_id, &created,
                               &err) != kHeraldOk)
    goto fail;
  if (created) {
    lua_Integer n = luaL_len(L, rows);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, rows, i);
      int r = lua_gettop(L);
      HeraldOutboxRow row = {0};
      row.endpoint_id = opt_field_string(L, r, "endpoint_id");
      row.channel = opt_field_string(L, r, "channel");
      row.address = opt_field_string(L, r, "address");
      row.state = opt_field_string(L, r, "state");
      row.reason = opt_field_string(L, r, "reason");
      lua_getfield(L, r, "treatment");
      row.treatment = (int)lua_tointeger(L, -1);
      lua_getfield(L, r, "due_ms");
      row.due_ms = lua_isnil(L, -1) ? scheduled : (int64_t)lua_tointeger(L, -1);
      lua_pop(L, 2);
      if (row.endpoint_id == NULL || row.state == NULL) {
        herald_error_set(&err, kHeraldInvalid, "outbox row %lld needs endpoint_id and state",
                         (long long)i);
        goto fail;
      }
      if (herald_outbox_add(store, app, campaign_id, run_id, scheduled, &row, &err) != kHeraldOk)
        goto fail;
      lua_pop(L, 1);
    }
    if (herald_outbox_run_set_total(store, run_id, (int64_t)n, &err) != kHeraldOk) goto fail;
  }
  if (herald_store_commit(store, &err) != kHeraldOk) return raise_error(L, &err);
  lua_pushinteger(L, (lua_Integer)run_id);
  lua_pushboolean(L, created);
  return 2;
fail:
  herald_store_rollback(store);
  return raise_error(L, &err);
}

/* claim(now_ms, max [, campaigns_json [, app]]) -> list of claimed rows */
static int l_claim(lua_State *L) {
  int64_t now = (int64_t)luaL_checkinteger(L, 1);
  int max = (int)luaL_optinteger(L, 2, 256);
  const char *campaigns = luaL_optstring(L, 3, NULL);
  const char *app = luaL_optstring(L, 4, herald_context()->app);
  luaL_argcheck(L, max > 0 && max <= 10000, 2, "must be 1..10000");
  HeraldStore *store = herald_context_store(L);
  HeraldOutboxClaim *rows = calloc((size_t)max, sizeof *rows);
  if (rows == NULL) return luaL_error(L, "out of memory");
  int count = 0;
  HeraldError err = {0};
  if (herald_outbox_claim(store, app, campaigns, now, max, rows, &count, &err) != kHeraldOk) {
    free(rows);
    return raise_error(L, &err);
  }
  lua_createtable(L, count, 0);
  for (int i = 0; i < count; i++) {
    lua_createtable(L, 0, 9);
    lua_pushinteger(L, rows[i].id); lua_setfield(L, -2, "id");
    lua_pushinteger(L, rows[i].run_id); lua_setfield(L, -2, "run_id");
    lua_pushstring(L, rows[i].campaign_id); lua_setfield(L, -2, "campaign_id");
    lua_pushinteger(L, rows[i].campaign_version); lua_setfield(L, -2, "campaign_version");
    lua_pushstring(L, rows[i].endpoint_id); lua_setfield(L, -2, "endpoint_id");
    lua_pushinteger(L, rows[i].treatment); lua_setfield(L, -2, "treatment");
    lua_pushstring(L, rows[i].message_id); lua_setfield(L, -2, "message_id");
    lua_pushstring(L, rows[i].channel); lua_setfield(L, -2, "channel");
    lua_pushstring(L, rows[i].address); lua_setfield(L, -2, "address");
    lua_pushinteger(L, rows[i].due_ms); lua_setfield(L, -2, "due_ms");
    lua_pushinteger(L, rows[i].attempts); lua_setfield(L, -2, "attempts");
    lua_rawseti(L, -2, i + 1);
  }
  free(rows);
  return 1;
}

/* report_batch{ {id=, state=, reason=, due_ms=}, ... }: outcomes written in one transaction. */
static int l_report_batch(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  HeraldStore *store = herald_context_store(L);
  HeraldError err = {0};
  if (herald_store_begin(store, &err) != kHeraldOk) return raise_error(L, &err);
  lua_Integer n = luaL_len(L, 1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    int r = lua_gettop(L);
    lua_getfield(L, r, "id");
    int64_t id = (int64_t)lua_tointeger(L, -1);
    lua_getfield(L, r, "due_ms");
    int64_t due = (int64_t)lua_tointeger(L, -1);
    lua_pop(L, 2);
    const char *state = opt_field_string(L, r, "state");
    const char *reason = opt_field_string(L, r, "reason");
    if (state == NULL) {
      herald_error_set(&err, kHeraldInvalid, "report %lld has no state", (long long)i);
      goto fail;
    }
    if (herald_outbox_report(store, id, state, reason, due, &err) != kHeraldOk) goto fail;
    lua_pop(L, 1);
  }
  if (herald_store_commit(store, &err) != kHeraldOk) return raise_error(L, &err);
  return 0;
fail:
  herald_store_rollback(store);
  return raise_error(L, &err);
}

static int l_recover(lua_State *L) {
  int64_t count = 0;
  HeraldError err = {0};
  if (herald_outbox_recover(herald_context_store(L), &count, &err) != kHeraldOk)
    return raise_error(L, &err);
  lua_pushinteger(L, (lua_Integer)count);
  return 1;
}

/* next_due([campaigns_json [, app]]) -> ms or nothing */
static int l_next_due(lua_State *L) {
  int64_t due = 0;
  int found = 0;
  HeraldError err = {0};
  const char *campaigns = luaL_optstring(L, 1, NULL);
  const char *app = luaL_optstring(L, 2, herald_context()->app);
  if (herald_outbox_next_due(herald_context_store(L), app, campaigns, &due, &found, &err) !=
      kHeraldOk)
    return raise_error(L, &err);
  if (!found) return 0;
  lua_pushinteger(L, (lua_Integer)due);
  return 1;
}

static int l_complete_runs(lua_State *L) {
  HeraldError err = {0};
  if (herald_outbox_complete_runs(herald_context_store(L), herald_clock_now_ms(), &err) != kHeraldOk)
    return raise_error(L, &err);
  return 0;
}

static int l_message_id(lua_State *L) {
  char id[40];
  herald_outbox_message_id(luaL_checkstring(L, 1), luaL_checkstring(L, 2),
                           (int64_t)luaL_checkinteger(L, 3), luaL_checkstring(L, 4), id);
  lua_pushstring(L, id);
  return 1;
}

static void push_tally(const HeraldOutboxTally *t, void *ctx) {
  lua_State *L = ctx;
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, t->run_id); lua_setfield(L, -2, "run_id");
  lua_pushinteger(L, t->scheduled_ms); lua_setfield(L, -2, "scheduled_ms");
  lua_pushstring(L, t->run_state); lua_setfield(L, -2, "run_state");
  lua_pushinteger(L, t->treatment); lua_setfield(L, -2, "treatment");
  lua_pushstring(L, t->state); lua_setfield(L, -2, "state");
  if (t->reason) { lua_pushstring(L, t->reason); lua_setfield(L, -2, "reason"); }
  lua_pushinteger(L, t->count); lua_setfield(L, -2, "count");
  lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
}

/* tally(campaign_id [, app]) -> list of {run_id, treatment, state, reason, count, ...} */
static int l_tally(lua_State *L) {
  const char *campaign_id = luaL_checkstring(L, 1);
  const char *app = luaL_optstring(L, 2, herald_context()->app);
  HeraldStore *store = herald_context_store(L);
  lua_newtable(L);
  HeraldError err = {0};
  if (herald_outbox_tally(store, app, campaign_id, push_tally, L, &err) != kHeraldOk)
    return raise_error(L, &err);
  return 1;
}

/* define_campaign(id, name, definition_json [, app]) -> version, version_ms, changed */
static int l_define_campaign(lua_State *L) {
  const char *id = luaL_checkstring(L, 1);
  const char *name = luaL_checkstring(L, 2);
  const char *definition = luaL_checkstring(L, 3);
  const char *app = luaL_optstring(L, 4, herald_context()->app);
  HeraldCampaignVersion v;
  HeraldError err = {0};
  if (herald_campaign_define(herald_context_store(L), app, id, name, definition,
                             herald_clock_now_ms(), &v, &err) != kHeraldOk)
    return raise_error(L, &err);
  lua_pushinteger(L, v.version);
  lua_pushinteger(L, (lua_Integer)v.version_ms);
  lua_pushboolean(L, v.changed);
  return 3;
}

/* campaign_definition(id, version [, app]) -> definition JSON text, or nil, err */
static int l_campaign_definition(lua_State *L) {
  const char *id = luaL_checkstring(L, 1);
  int version = (int)luaL_checkinteger(L, 2);
  const char *app = luaL_optstring(L, 3, herald_context()->app);
  char *def = NULL;
  HeraldError err = {0};
  if (herald_campaign_version_definition(herald_context_store(L), app, id, version, &def, &err) !=
      kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushstring(L, def);
  free(def);
  return 1;
}

static int l_set_campaign_state(lua_State *L) {
  HeraldError err = {0};
  if (herald_campaign_set_state(herald_context_store(L), luaL_optstring(L, 3, herald_context()->app),
                                luaL_checkstring(L, 1), luaL_checkstring(L, 2), &err) != kHeraldOk)
    return raise_error(L, &err);
  return 0;
}

int luaopen_herald_core_outbox(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"materialize", l_materialize}, {"claim", l_claim},         {"report_batch", l_report_batch},
    {"recover", l_recover},         {"next_due", l_next_due},   {"complete_runs", l_complete_runs},
    {"message_id", l_message_id},   {"tally", l_tally},
    {"define_campaign", l_define_campaign}, {"set_campaign_state", l_set_campaign_state},
    {"campaign_definition", l_campaign_definition},
    {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
