/* herald.core.outbox: the outbox's producer and consumer sides for the campaign engine. */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/args.h"
#include "lua/context.h"
#include "lua/lherald_lane.h"
#include "lua/modules.h"
#include "runtime/claimer.h"
#include "runtime/clock.h"
#include "runtime/campaign.h"
#include "runtime/ingest.h"
#include "runtime/outbox.h"

/* t: an absolute index. A number is converted and stored back into the table, so the text
 * outlives the pop as a string field's does (lua_tostring converts only the stack's copy). A
 * string with a NUL inside raises: the C string would be cut there. */
static const char *opt_field_string(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  if (lua_type(L, -1) == LUA_TNUMBER) {
    lua_tostring(L, -1);
    lua_pushvalue(L, -1);
    lua_setfield(L, t, k);
  }
  const char *s = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
  if (herald_lua_nul_inside(L, -1)) luaL_error(L, "%s: contains a NUL character (\\u0000)", k);
  lua_pop(L, 1);  /* the table keeps the string alive */
  return s;
}

static int raise_error(lua_State *L, HeraldError *err) { return luaL_error(L, "%s", err->msg); }

static lua_Integer opt_field_integer(lua_State *L, int t, const char *k, lua_Integer def) {
  lua_getfield(L, t, k);
  lua_Integer v = luaL_optinteger(L, -1, def);
  lua_pop(L, 1);
  return v;
}

/* Binds the segment's named parameters from the Lua table at ctx's index. */
typedef struct {
  lua_State *L;
  int params;
} BindCtx;

static int bind_params(sqlite3_stmt *st, void *vctx, HeraldError *err) {
  BindCtx *b = vctx;
  lua_State *L = b->L;
  if (b->params == 0) return kHeraldOk;
  lua_pushnil(L);
  while (lua_next(L, b->params) != 0) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      lua_pop(L, 2);
      return herald_error_set(err, kHeraldInvalid, "segment parameters are named by strings");
    }
    const char *name = lua_tostring(L, -2);
    char key[128];
    snprintf(key, sizeof key, ":%s", name);
    int idx = sqlite3_bind_parameter_index(st, key);
    if (idx == 0) {
      herald_error_set(err, kHeraldInvalid, "segment parameter %s is not used by its condition",
                       key);
      lua_pop(L, 2);
      return err->code;
    }
    switch (lua_type(L, -1)) {
      case LUA_TNUMBER:
        if (lua_isinteger(L, -1)) sqlite3_bind_int64(st, idx, lua_tointeger(L, -1));
        else sqlite3_bind_double(st, idx, lua_tonumber(L, -1));
        break;
      case LUA_TBOOLEAN: sqlite3_bind_int(st, idx, lua_toboolean(L, -1)); break;
      case LUA_TSTRING: {
        size_t n;
        const char *v = lua_tolstring(L, -1, &n);
        sqlite3_bind_text(st, idx, v, (int)n, SQLITE_TRANSIENT);
        break;
      }
      default:
        lua_pop(L, 2);
        return herald_error_set(err, kHeraldInvalid, "segment parameter %s: a string, number or"
                                " boolean", key);
    }
    lua_pop(L, 1);
  }
  return kHeraldOk;
}

static void push_row(int64_t id, const char *endpoint_id, const char *state, void *ctx) {
  lua_State *L = ctx;
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)id); lua_setfield(L, -2, "id");
  lua_pushstring(L, endpoint_id); lua_setfield(L, -2, "endpoint_id");
  lua_pushstring(L, state); lua_setfield(L, -2, "state");
  lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
}

#define FILTER_BATCH 50

static const char *endpoint_id_of(lua_State *L, int rows, lua_Integer i) {
  lua_rawgeti(L, rows, i);
  lua_getfield(L, -1, "endpoint_id");
  const char *id = lua_tostring(L, -1);
  lua_pop(L, 2);  /* the row keeps the string alive */
  return id ? id : "?";
}

/* Runs filter over the run's rows in batches of FILTER_BATCH: filter(rows) returns a table
 * whose entry i is the verdict on rows[i]: nil or true (keep), "drop" (not a member), a
 * reason string (skip), or {TitleOverride =, BodyOverride =} (keep, overridden). */
static int run_filter(lua_State *L, HeraldStore *store, int64_t run_id, int filter,
                      HeraldError *err) {
  int64_t after = 0;
  for (;;) {
    lua_newtable(L);
    int rows = lua_gettop(L);
    if (herald_outbox_run_rows(store, run_id, after, FILTER_BATCH, push_row, L, err) != kHeraldOk) {
      lua_pop(L, 1);
      return err->code;
    }
    lua_Integer n = luaL_len(L, rows);
    if (n == 0) {
      lua_pop(L, 1);
      return kHeraldOk;
    }
    lua_pushvalue(L, filter);
    lua_pushvalue(L, rows);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      herald_error_set(err, kHeraldInvalid, "%s", lua_tostring(L, -1));
      lua_pop(L, 2);
      return err->code;
    }
    int verdicts = lua_gettop(L);
    int rc = kHeraldOk;
    for (lua_Integer i = 1; i <= n && rc == kHeraldOk; i++) {
      lua_rawgeti(L, rows, i);
      lua_getfield(L, -1, "id");
      int64_t id = (int64_t)lua_tointeger(L, -1);
      lua_pop(L, 2);
      after = id;
      if (!lua_istable(L, verdicts)) continue;
      lua_rawgeti(L, verdicts, i);
      if (lua_type(L, -1) == LUA_TSTRING) {
        const char *v = lua_tostring(L, -1);
        if (strcmp(v, "drop") == 0) rc = herald_outbox_row_drop(store, id, err);
        else rc = herald_outbox_row_skip(store, id, v, err);
      } else if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        static const char *const fields[] = {"TitleOverride", "BodyOverride"};
        for (int f = 0; f < 2 && rc == kHeraldOk; f++) {
          int type = lua_getfield(L, t, fields[f]);
          lua_pop(L, 1);
          if (type != LUA_TNIL && type != LUA_TSTRING && type != LUA_TNUMBER)
            rc = herald_error_set(err, kHeraldInvalid, "endpoint %s: %s must be a string, not %s",
                                  endpoint_id_of(L, rows, i), fields[f], lua_typename(L, type));
        }
        if (rc != kHeraldOk) {
          lua_pop(L, 1);
          break;
        }
        const char *title = opt_field_string(L, t, "TitleOverride");
        const char *body = opt_field_string(L, t, "BodyOverride");
        if (title || body) rc = herald_outbox_row_override(store, id, title, body, err);
      }
      lua_pop(L, 1);
    }
    lua_settop(L, rows - 1);
    if (rc != kHeraldOk) return rc;
    if (n < FILTER_BATCH) return kHeraldOk;
  }
}

/* run_filter under lua_pcall: run_filter(L, store, run_id, 2, err) with a FilterCall at 1. It
 * runs inside materialize_run's transaction, and building the rows' tables can raise (memory):
 * raised, the error would leave the transaction open for whatever this process does next. */
typedef struct {
  HeraldStore *store;
  int64_t run_id;
  HeraldError *err;
  int rc;
} FilterCall;

static int filter_protected(lua_State *L) {
  FilterCall *c = lua_touserdata(L, 1);
  c->rc = run_filter(L, c->store, c->run_id, 2, c->err);
  return 0;
}

static int run_filter_protected(lua_State *L, HeraldStore *store, int64_t run_id, int filter,
                                HeraldError *err) {
  FilterCall c = {store, run_id, err, kHeraldOk};
  lua_pushcfunction(L, filter_protected);
  lua_pushlightuserdata(L, &c);
  lua_pushvalue(L, filter);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) return -1;  /* the error is on the stack */
  return c.rc;
}

/* materialize_run{campaign_id=, version=, scheduled_ms=, run_index=, where=, params=,
 * holdout=, sizes={...}, zones={{stream=, zone=, due_ms=, zone_used=, note=, skip_reason=}, ...},
 * arm_stream={stream or -1 per treatment}, without_holdout=, arms=json, default_due_ms=,
 * daily_cap=, total_cap=, max_duration_ms=, filter=function(rows), app=, test_cohorts={...}}
 * -> run_id, created, held. The run, its rows and the filter's verdicts commit together. With
 * test_cohorts (an A/B winner test), rows outside those cohorts are held WAITING
 * (herald_outbox_hold_rest); held counts them. */
static int l_materialize_run(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  HeraldStore *store = herald_context_store(L);
  HeraldOutboxRunSpec spec = {0};
  spec.app = opt_field_string(L, 1, "app");
  if (spec.app == NULL) spec.app = herald_context()->app;
  spec.campaign_id = opt_field_string(L, 1, "campaign_id");
  luaL_argcheck(L, spec.campaign_id != NULL, 1, "campaign_id is required");
  spec.version = (int)opt_field_integer(L, 1, "version", 1);
  spec.scheduled_ms = (int64_t)opt_field_integer(L, 1, "scheduled_ms", 0);
  spec.run_index = (int64_t)opt_field_integer(L, 1, "run_index", 0);
  spec.where = opt_field_string(L, 1, "where");
  spec.holdout = (int)opt_field_integer(L, 1, "holdout", 0);
  spec.default_due_ms = (int64_t)opt_field_integer(L, 1, "default_due_ms", spec.scheduled_ms);
  spec.daily_cap = (int64_t)opt_field_integer(L, 1, "daily_cap", 0);
  spec.total_cap = (int64_t)opt_field_integer(L, 1, "total_cap", 0);
  spec.max_duration_ms = (int64_t)opt_field_integer(L, 1, "max_duration_ms", 0);

  int sizes[64];
  lua_getfield(L, 1, "sizes");
  luaL_argcheck(L, lua_istable(L, -1), 1, "sizes is required");
  spec.n_treatments = (int)luaL_len(L, -1);
  luaL_argcheck(L, spec.n_treatments >= 1 && spec.n_treatments <= 64, 1, "1..64 treatments");
  for (int i = 0; i < spec.n_treatments; i++) {
    lua_rawgeti(L, -1, i + 1);
    sizes[i] = (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  spec.sizes = sizes;
  int arm_stream[64];
  lua_getfield(L, 1, "arm_stream");
  if (lua_istable(L, -1)) {
    for (int i = 0; i < spec.n_treatments; i++) {
      lua_rawgeti(L, -1, i + 1);
      arm_stream[i] = (int)luaL_optinteger(L, -1, -1);
      lua_pop(L, 1);
    }
    spec.arm_stream = arm_stream;
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "without_holdout");
  spec.without_holdout = lua_toboolean(L, -1);
  lua_pop(L, 1);
  spec.arms_json = opt_field_string(L, 1, "arms");

  lua_getfield(L, 1, "zones");
  int zones_idx = lua_gettop(L);
  lua_Integer nz = lua_istable(L, zones_idx) ? luaL_len(L, zones_idx) : 0;
  HeraldOutboxZone *zones = lua_newuserdatauv(L, sizeof *zones * (size_t)(nz > 0 ? nz : 1), 0);
  for (lua_Integer i = 0; i < nz; i++) {
    lua_rawgeti(L, zones_idx, i + 1);
    int z = lua_gettop(L);
    zones[i].stream = (int)opt_field_integer(L, z, "stream", 0);
    zones[i].zone = opt_field_string(L, z, "zone");
    zones[i].due_ms = (int64_t)opt_field_integer(L, z, "due_ms", spec.scheduled_ms);
    zones[i].zone_used = opt_field_string(L, z, "zone_used");
    zones[i].note = opt_field_string(L, z, "note");
    zones[i].skip_reason = opt_field_string(L, z, "skip_reason");
    lua_pop(L, 1);  /* the zones table keeps the strings alive */
  }
  spec.zones = zones;
  spec.n_zones = (int)nz;

  lua_getfield(L, 1, "params");
  BindCtx bctx = {L, lua_istable(L, -1) ? lua_gettop(L) : 0};
  spec.bind = bind_params;
  spec.bind_ctx = &bctx;
  lua_getfield(L, 1, "filter");
  int filter = lua_isfunction(L, -1) ? lua_gettop(L) : 0;
  unsigned char in_test[100] = {0};
  lua_getfield(L, 1, "test_cohorts");
  int ab_test = lua_istable(L, -1);
  if (ab_test) {
    lua_Integer nc = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= nc; i++) {
      lua_rawgeti(L, -1, i);
      lua_Integer c = luaL_checkinteger(L, -1);
      luaL_argcheck(L, c >= 0 && c < 100, 1, "test_cohorts: cohorts are 0-99");
      in_test[c] = 1;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);

  HeraldError err = {0};
  int64_t run_id = 0;
  int created = 0;
  if (herald_store_begin(store, &err) != kHeraldOk) return raise_error(L, &err);
  if (herald_outbox_materialize(store, &spec, &run_id, &created, &err) != kHeraldOk) goto fail;
  if (created && filter) {
    int rc = run_filter_protected(L, store, run_id, filter, &err);
    if (rc == -1) {
      herald_store_rollback(store);
      return lua_error(L);
    }
    if (rc != kHeraldOk) goto fail;
    if (herald_outbox_run_finish(store, run_id, &err) != kHeraldOk) goto fail;
  }
  /* after the filters, so the hook judges the whole audience, test share and rest alike */
  int64_t held = 0;
  if (created && ab_test &&
      herald_outbox_hold_rest(store, spec.app, run_id, in_test, &held, &err) != kHeraldOk)
    goto fail;
  if (herald_store_commit(store, &err) != kHeraldOk) return raise_error(L, &err);
  lua_pushinteger(L, (lua_Integer)run_id);
  lua_pushboolean(L, created);
  lua_pushinteger(L, (lua_Integer)held);
  return 3;
fail:
  herald_store_rollback(store);
  return raise_error(L, &err);
}

/* decide{campaign_id=, run_id=, decided_ms=, metric=, decision=, winner= (treatment or nil),
 * policy=, reason=, figures= (JSON text), app=} -> recorded, released. Records the decision
 * and releases the run's WAITING rows in one transaction; a run decided before is left alone
 * (recorded false). */
static int l_decide(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  HeraldOutboxDecision d = {0};
  d.app = opt_field_string(L, 1, "app");
  if (d.app == NULL) d.app = herald_context()->app;
  d.campaign_id = opt_field_string(L, 1, "campaign_id");
  d.metric = opt_field_string(L, 1, "metric");
  d.decision = opt_field_string(L, 1, "decision");
  d.policy = opt_field_string(L, 1, "policy");
  d.reason = opt_field_string(L, 1, "reason");
  d.figures_json = opt_field_string(L, 1, "figures");
  luaL_argcheck(L, d.campaign_id && d.metric && d.decision && d.policy && d.reason && d.figures_json,
                1, "campaign_id, metric, decision, policy, reason and figures are required");
  d.run_id = (int64_t)opt_field_integer(L, 1, "run_id", 0);
  d.decided_ms = (int64_t)opt_field_integer(L, 1, "decided_ms", 0);
  d.winner = (int)opt_field_integer(L, 1, "winner", -1);
  luaL_argcheck(L, d.run_id > 0, 1, "run_id is required");
  /* quiet = {{zone=, due_ms=, new_due_ms=, skip=}, ...}: released rows that fall in quiet time */
  lua_getfield(L, 1, "quiet");
  int qt = lua_gettop(L);
  lua_Integer nq = lua_istable(L, qt) ? luaL_len(L, qt) : 0;
  struct HeraldOutboxQuietMove *moves = lua_newuserdatauv(L, sizeof *moves * (size_t)(nq > 0 ? nq : 1), 0);
  for (lua_Integer i = 0; i < nq; i++) {
    lua_rawgeti(L, qt, i + 1);
    int m = lua_gettop(L);
    luaL_argcheck(L, lua_istable(L, m), 1, "quiet: a list of {zone=, due_ms=, new_due_ms=, skip=}");
    moves[i].zone = opt_field_string(L, m, "zone");
    if (moves[i].zone == NULL) moves[i].zone = "";
    moves[i].due_ms = (int64_t)opt_field_integer(L, m, "due_ms", 0);
    moves[i].new_due_ms = (int64_t)opt_field_integer(L, m, "new_due_ms", 0);
    lua_getfield(L, m, "skip");
    moves[i].skip = lua_toboolean(L, -1);
    lua_pop(L, 2);  /* skip, and the entry (its strings stay in the list, which stays on the stack) */
  }
  d.quiet = moves;
  d.n_quiet = (int)nq;
  HeraldError err = {0};
  int recorded = 0;
  int64_t released = 0;
  if (herald_outbox_decide(herald_context_store(L), &d, &recorded, &released, &err) != kHeraldOk)
    return raise_error(L, &err);
  lua_pushboolean(L, recorded);
  lua_pushinteger(L, (lua_Integer)released);
  return 2;
}

/* trigger_cursor(campaign_id [, app]) -> last seq consumed */
static int l_trigger_cursor(lua_State *L) {
  int64_t seq = 0;
  HeraldError err = {0};
  if (herald_outbox_trigger_cursor(herald_context_store(L),
                                   herald_lua_optname(L, 2, "app", herald_context()->app),
                                   herald_lua_checkname(L, 1, "campaign_id"), &seq, &err) != kHeraldOk)
    return raise_error(L, &err);
  lua_pushinteger(L, (lua_Integer)seq);
  return 1;
}

/* trigger{campaign_id=, version=, now_ms=, from_seq=, to_seq=, daily_cap=, total_cap=, max_duration_ms=, rows={{endpoint_id=,
 * treatment=, channel=, address=, due_ms=, event_seq=, reason=, zone=}}, cancels={endpoint ids}}
 * -> run id (0 when the batch made no rows) */
static int l_trigger(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  HeraldOutboxTrigger t = {0};
  t.app = opt_field_string(L, 1, "app");
  if (t.app == NULL) t.app = herald_context()->app;
  t.campaign_id = opt_field_string(L, 1, "campaign_id");
  luaL_argcheck(L, t.campaign_id != NULL, 1, "campaign_id is required");
  t.version = (int)opt_field_integer(L, 1, "version", 1);
  t.now_ms = (int64_t)opt_field_integer(L, 1, "now_ms", herald_clock_now_ms());
  t.from_seq = (int64_t)opt_field_integer(L, 1, "from_seq", 0);
  t.to_seq = (int64_t)opt_field_integer(L, 1, "to_seq", 0);
  t.daily_cap = (int64_t)opt_field_integer(L, 1, "daily_cap", 0);
  t.total_cap = (int64_t)opt_field_integer(L, 1, "total_cap", 0);
  t.max_duration_ms = (int64_t)opt_field_integer(L, 1, "max_duration_ms", 0);
  lua_getfield(L, 1, "rows");
  int rows = lua_gettop(L);
  lua_Integer n = lua_istable(L, rows) ? luaL_len(L, rows) : 0;
  HeraldOutboxTriggerRow *r = lua_newuserdatauv(L, sizeof *r * (size_t)(n > 0 ? n : 1), 0);
  for (lua_Integer i = 0; i < n; i++) {
    lua_rawgeti(L, rows, i + 1);
    int x = lua_gettop(L);
    r[i].endpoint_id = opt_field_string(L, x, "endpoint_id");
    r[i].channel = opt_field_string(L, x, "channel");
    r[i].address = opt_field_string(L, x, "address");
    r[i].reason = opt_field_string(L, x, "reason");
    r[i].zone = opt_field_string(L, x, "zone");
    r[i].treatment = (int)opt_field_integer(L, x, "treatment", 0);
    r[i].due_ms = (int64_t)opt_field_integer(L, x, "due_ms", t.now_ms);
    r[i].event_seq = (int64_t)opt_field_integer(L, x, "event_seq", 0);
    luaL_argcheck(L, r[i].endpoint_id != NULL, 1, "each row needs endpoint_id");
    lua_pop(L, 1);
  }
  t.rows = r;
  t.n_rows = (int)n;
  lua_getfield(L, 1, "cancels");
  int cancels = lua_gettop(L);
  lua_Integer nc = lua_istable(L, cancels) ? luaL_len(L, cancels) : 0;
  const char **c = lua_newuserdatauv(L, sizeof *c * (size_t)(nc > 0 ? nc : 1), 0);
  for (lua_Integer i = 0; i < nc; i++) {
    lua_rawgeti(L, cancels, i + 1);
    c[i] = luaL_checkstring(L, -1);
    if (herald_lua_nul_inside(L, -1))
      return luaL_error(L, "cancels[%d]: contains a NUL character (\\u0000)", (int)i + 1);
    lua_pop(L, 1);
  }
  t.cancels = c;
  t.n_cancels = (int)nc;
  int64_t run_id = 0;
  HeraldError err = {0};
  if (herald_outbox_trigger(herald_context_store(L), &t, &run_id, &err) != kHeraldOk)
    return raise_error(L, &err);
  lua_pushinteger(L, (lua_Integer)run_id);
  return 1;
}

/* skip_run(campaign_id, version, scheduled_ms, run_index, reason [, app]) */
static int l_skip_run(lua_State *L) {
  HeraldError err = {0};
  if (herald_outbox_run_skip(herald_context_store(L), herald_lua_optname(L, 6, "app", herald_context()->app),
                             herald_lua_checkname(L, 1, "campaign_id"), (int)luaL_checkinteger(L, 2),
                             (int64_t)luaL_checkinteger(L, 3), (int64_t)luaL_checkinteger(L, 4),
                             luaL_checkstring(L, 5), &err) != kHeraldOk)
    return raise_error(L, &err);
  return 0;
}

/* claim(now_ms, max [, campaigns_json [, app]]) -> list of claimed rows */
/* The rows of a claim are read into an array kept from one claim to the next (in the
 * registry, grown when a claim asks for more). A claim row is large (its address may be a
 * 4 KB push token) and a claim is hundreds of rows: a fresh array per claim cost the loop
 * more in page faults on its new pages than the claim's own queries. No claim yields while
 * it uses the array, so the lanes' claims share it. */
static const char kClaimBufferKey = 0;

static HeraldOutboxClaim *claim_buffer(lua_State *L, int max) {
  size_t need = (size_t)max * sizeof(HeraldOutboxClaim);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &kClaimBufferKey);
  HeraldOutboxClaim *rows = lua_touserdata(L, -1);
  if (rows == NULL || lua_rawlen(L, -1) < need) {
    rows = lua_newuserdatauv(L, need, 0);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &kClaimBufferKey);
  }
  lua_pop(L, 1);  /* the registry keeps it */
  return rows;
}

/* Once this process claims, a timer on the loop keeps its claimer's heartbeat fresh and gives
 * back the rows of claimers taken for dead, so the rows of a process that died go back to
 * PENDING while this one runs, not only when a process starts. The tick skips a turn while a
 * transaction is open (a task waiting inside one): writing inside it would tie the heartbeat
 * and the recovery to its outcome. It does not keep the loop alive. */
static uv_timer_t watch_timer;
static int watching;

static void watch_tick(uv_timer_t *t) {
  (void)t;
  HeraldStore *store = herald_context()->store;
  if (store == NULL || !sqlite3_get_autocommit(herald_store_db(store))) return;
  HeraldError err = {0};
  int64_t now = herald_clock_system_ms(), recovered = 0;
  if (herald_claimer_beat(store, now, NULL, &err) != kHeraldOk ||
      herald_outbox_recover(store, now, &recovered, &err) != kHeraldOk) {
    fprintf(stderr, "herald: claimers: %s (tried again in %d s)\n", err.msg,
            HERALD_CLAIMER_BEAT_MS / 1000);
    return;
  }
  if (recovered > 0)
    fprintf(stderr, "herald: recovered %lld in-doubt messages of a process that stopped; they are"
            " retried with the same message id\n", (long long)recovered);
}

static void watch_claimers(lua_State *L) {
  if (watching) return;
  uv_loop_t *loop = &herald_context()->loop;
  if (uv_timer_init(loop, &watch_timer) != 0) luaL_error(L, "cannot create a timer");
  uv_unref((uv_handle_t *)&watch_timer);
  if (uv_timer_start(&watch_timer, watch_tick, HERALD_CLAIMER_BEAT_MS, HERALD_CLAIMER_BEAT_MS) != 0)
    luaL_error(L, "cannot start a timer");
  watching = 1;
}

/* The claimed rows' field names are the claim's upvalues: each row's table is filled by
 * lua_rawset with these strings, where lua_setfield looked each name up again. */
enum {
  kFieldId = 1, kFieldRunId, kFieldCampaignId, kFieldCampaignVersion, kFieldEndpointId,
  kFieldTreatment, kFieldMessageId, kFieldChannel, kFieldAddress, kFieldDueMs, kFieldFirstDueMs,
  kFieldZone, kFieldAttempts, kClaimFields = kFieldAttempts
};
static const char *const kClaimFieldNames[kClaimFields + 1] = {
  [kFieldId] = "id", [kFieldRunId] = "run_id", [kFieldCampaignId] = "campaign_id",
  [kFieldCampaignVersion] = "campaign_version", [kFieldEndpointId] = "endpoint_id",
  [kFieldTreatment] = "treatment", [kFieldMessageId] = "message_id", [kFieldChannel] = "channel",
  [kFieldAddress] = "address", [kFieldDueMs] = "due_ms", [kFieldFirstDueMs] = "first_due_ms",
  [kFieldZone] = "zone", [kFieldAttempts] = "attempts",
};

static void set_integer(lua_State *L, int field, lua_Integer v) {
  lua_pushvalue(L, lua_upvalueindex(field));
  lua_pushinteger(L, v);
  lua_rawset(L, -3);
}

static void set_string(lua_State *L, int field, const char *v) {
  lua_pushvalue(L, lua_upvalueindex(field));
  lua_pushstring(L, v);
  lua_rawset(L, -3);
}

static int l_claim(lua_State *L) {
  int64_t now = (int64_t)luaL_checkinteger(L, 1);
  int max = (int)luaL_optinteger(L, 2, 256);
  const char *campaigns = luaL_optstring(L, 3, NULL);
  const char *app = herald_lua_optname(L, 4, "app", herald_context()->app);
  luaL_argcheck(L, max > 0 && max <= 10000, 2, "must be 1..10000");
  HeraldStore *store = herald_context_store(L);
  watch_claimers(L);
  HeraldOutboxClaim *rows = claim_buffer(L, max);
  int count = 0;
  HeraldError err = {0};
  if (herald_outbox_claim(store, app, campaigns, now, max, rows, &count, &err) != kHeraldOk)
    return raise_error(L, &err);
  /* choose(campaign_id, version, treatment, channel) -> a webhook lane spec or nil, asked once
   * per group of rows: the rows it gives a spec go to the lane (the second result) */
  int choose = !lua_isnoneornil(L, 5);
  if (choose) luaL_checktype(L, 5, LUA_TFUNCTION);
  lua_settop(L, 5);
  int lane = 0;
  if (choose) {
    herald_lua_lane_new(L, count);
    lane = lua_gettop(L);
  }
  /* the groups asked about so far, their answers on the stack from groups_at on */
  enum { kMaxGroups = 16 };
  struct { const HeraldOutboxClaim *first; int spec; } groups[kMaxGroups];
  int ngroups = 0;
  lua_createtable(L, count, 0);
  int list = lua_gettop(L);
  int listed = 0;
  for (int i = 0; i < count; i++) {
    const HeraldOutboxClaim *r = &rows[i];
    if (choose) {
      int g = 0;
      while (g < ngroups && !(groups[g].first->campaign_version == r->campaign_version &&
                              groups[g].first->treatment == r->treatment &&
                              strcmp(groups[g].first->campaign_id, r->campaign_id) == 0 &&
                              strcmp(groups[g].first->channel, r->channel) == 0))
        g++;
      int spec = 0, uncached = 0;
      if (g < ngroups) {
        spec = groups[g].spec;
      } else {
        luaL_checkstack(L, 6, "claim");
        lua_pushvalue(L, 5);
        lua_pushstring(L, r->campaign_id);
        lua_pushinteger(L, r->campaign_version);
        lua_pushinteger(L, r->treatment);
        lua_pushstring(L, r->channel);
        lua_call(L, 4, 1);
        if (!lua_isnil(L, -1)) spec = lua_gettop(L); else lua_pop(L, 1);
        /* past kMaxGroups groups, the rest are asked about row by row */
        if (ngroups < kMaxGroups) {
          groups[ngroups].first = r;
          groups[ngroups].spec = spec;
          ngroups++;
        } else {
          uncached = spec != 0;
        }
      }
      int taken = spec != 0 && herald_lua_lane_take(L, lane, spec, r, store, app);
      if (uncached) lua_pop(L, 1);
      if (taken) continue;
    }
    lua_pushvalue(L, list);
    lua_createtable(L, 0, kClaimFields);
    set_integer(L, kFieldId, r->id);
    set_integer(L, kFieldRunId, r->run_id);
    set_string(L, kFieldCampaignId, r->campaign_id);
    set_integer(L, kFieldCampaignVersion, r->campaign_version);
    set_string(L, kFieldEndpointId, r->endpoint_id);
    set_integer(L, kFieldTreatment, r->treatment);
    set_string(L, kFieldMessageId, r->message_id);
    set_string(L, kFieldChannel, r->channel);
    set_string(L, kFieldAddress, r->address);
    set_integer(L, kFieldDueMs, r->due_ms);
    set_integer(L, kFieldFirstDueMs, r->first_due_ms);
    if (r->zone[0]) set_string(L, kFieldZone, r->zone);
    set_integer(L, kFieldAttempts, r->attempts);
    lua_rawseti(L, -2, ++listed);
    lua_pop(L, 1);
  }
  lua_pushvalue(L, list);
  if (!choose) return 1;
  lua_pushvalue(L, lane);
  return 2;
}

/* report_batch{ {id=, state=, reason=, due_ms=, hard_bounce=} or id, ... }: outcomes written in
 * one transaction. A bare id is a row reported SENT: most outcomes are deliveries, and a table
 * for each would cost delivery an allocation and five field reads per message. hard_bounce (a
 * FAILED row's, the provider's words) records the recipient's refusal as a hard bounce of the message (herald_ingest_hard_bounce) with the outcome. A row that is no
 * longer CLAIMED is passed over; any other failure writes nothing and raises. The reports are
 * read before the transaction begins: reading them can raise, which must not leave it open. */
typedef struct {
  int64_t id, due;
  const char *state, *reason, *bounce;
} Report;

static int l_report_batch(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  HeraldStore *store = herald_context_store(L);
  lua_Integer n = luaL_len(L, 1);
  Report *reports = lua_newuserdatauv(L, sizeof *reports * (size_t)(n > 0 ? n : 1), 0);
  for (lua_Integer i = 1; i <= n; i++) {
    Report *x = &reports[i - 1];
    if (lua_rawgeti(L, 1, i) == LUA_TNUMBER) {
      int exact = 0;
      x->id = (int64_t)lua_tointegerx(L, -1, &exact);
      luaL_argcheck(L, exact, 1, "a report's id must be an integer");
      x->due = 0;
      x->state = "SENT";
      x->reason = x->bounce = NULL;
      lua_pop(L, 1);
      continue;
    }
    int r = lua_gettop(L);
    luaL_argcheck(L, lua_istable(L, r), 1, "a list of reports");
    lua_getfield(L, r, "id");
    x->id = (int64_t)lua_tointeger(L, -1);
    lua_getfield(L, r, "due_ms");
    x->due = (int64_t)lua_tointeger(L, -1);
    lua_pop(L, 2);
    x->state = opt_field_string(L, r, "state");
    x->reason = opt_field_string(L, r, "reason");
    x->bounce = opt_field_string(L, r, "hard_bounce");
    if (x->state == NULL) return luaL_error(L, "report %d has no state", (int)i);
    lua_pop(L, 1);  /* the list keeps the strings alive */
  }
  /* the ids reported SENT: their send events are written after the outcomes */
  int64_t *sent = malloc(sizeof *sent * (size_t)(n > 0 ? n : 1));
  if (sent == NULL) return luaL_error(L, "out of memory");
  HeraldError err = {0};
  if (herald_store_begin(store, &err) != kHeraldOk) {
    free(sent);
    return raise_error(L, &err);
  }
  int nsent = 0;
  int64_t claimer = 0;
  if (herald_claimer_id(store, &claimer, &err) != kHeraldOk) goto fail;
  for (lua_Integer i = 0; i < n; i++) {
    const Report *x = &reports[i];
    int rc = herald_outbox_report(store, claimer, x->id, x->state, x->reason, x->due, &err);
    if (rc == kHeraldNotFound) {
      /* Not CLAIMED by this process: settled already (reported twice), or given back by a
       * recovery that took this process for dead (another may have it in flight now). The
       * other outcomes of the batch must not be lost with it, nor kept back to fail again. */
      memset(&err, 0, sizeof err);
      continue;
    }
    if (rc != kHeraldOk) goto fail;
    if (x->bounce && strcmp(x->state, "FAILED") == 0 &&
        herald_ingest_hard_bounce(store, x->id, x->bounce, &err) != kHeraldOk)
      goto fail;
    if (strcmp(x->state, "SENT") == 0) sent[nsent++] = x->id;
  }
  if (herald_outbox_record_sends(store, sent, nsent, &err) != kHeraldOk) goto fail;
  free(sent);
  if (herald_store_commit(store, &err) != kHeraldOk) return raise_error(L, &err);
  return 0;
fail:
  free(sent);
  herald_store_rollback(store);
  return raise_error(L, &err);
}

/* recover() -> how many rows of claimers taken for dead went back to PENDING */
static int l_recover(lua_State *L) {
  int64_t count = 0;
  HeraldError err = {0};
  if (herald_outbox_recover(herald_context_store(L), herald_clock_system_ms(), &count, &err) !=
      kHeraldOk)
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
  const char *app = herald_lua_optname(L, 2, "app", herald_context()->app);
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
  /* a NUL would cut a part short and give another message's id */
  herald_outbox_message_id(herald_lua_checkname(L, 1, "app"), herald_lua_checkname(L, 2, "run"),
                           (int64_t)luaL_checkinteger(L, 3), herald_lua_checkname(L, 4, "key"), id);
  lua_pushstring(L, id);
  return 1;
}

/* record_direct(message_id, endpoint_id, channel, address [, app]): endpoint_id may be nil;
 * inside the caller's transaction (herald.send's). */
static int l_record_direct(lua_State *L) {
  HeraldError err = {0};
  if (herald_outbox_record_direct(herald_context_store(L), luaL_optstring(L, 5, herald_context()->app),
                                  luaL_checkstring(L, 1), luaL_optstring(L, 2, NULL),
                                  luaL_checkstring(L, 3), luaL_checkstring(L, 4),
                                  herald_clock_now_ms(), &err) != kHeraldOk)
    return raise_error(L, &err);
  return 0;
}

/* add_optout(channel, address, source, message_id [, reason [, app]]) -> true, or nil, message
 * when the store fails: puts the address on the app's opt-out list now (an address already on
 * it keeps its first entry). */
static int l_add_optout(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  if (herald_lua_refuse_nul(L, 1, "channel") || herald_lua_refuse_nul(L, 2, "address") ||
      herald_lua_refuse_nul(L, 6, "app"))
    return 2;
  HeraldError err = {0};
  char stamp[32];
  herald_time_format(herald_clock_now_ms(), stamp, sizeof stamp);
  if (herald_outbox_optout_add(herald_context_store(L), luaL_optstring(L, 6, herald_context()->app),
                               luaL_checkstring(L, 1), luaL_checkstring(L, 2), luaL_checkstring(L, 3),
                               luaL_checkstring(L, 4), luaL_optstring(L, 5, NULL), stamp, &err) !=
      kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* lift_optout(channel, address [, app]) -> whether the address was on the opt-out list;
 * nil, message when the store fails. */
static int l_lift_optout(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  if (herald_lua_refuse_nul(L, 1, "channel") || herald_lua_refuse_nul(L, 2, "address") ||
      herald_lua_refuse_nul(L, 3, "app"))
    return 2;
  HeraldError err = {0};
  int lifted = 0;
  if (herald_outbox_optout_lift(herald_context_store(L), luaL_optstring(L, 3, herald_context()->app),
                                luaL_checkstring(L, 1), luaL_checkstring(L, 2), &lifted, &err) !=
      kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushboolean(L, lifted);
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
  const char *campaign_id = herald_lua_checkname(L, 1, "campaign_id");
  const char *app = herald_lua_optname(L, 2, "app", herald_context()->app);
  HeraldStore *store = herald_context_store(L);
  lua_newtable(L);
  HeraldError err = {0};
  if (herald_outbox_tally(store, app, campaign_id, push_tally, L, &err) != kHeraldOk)
    return raise_error(L, &err);
  return 1;
}

/* define_campaign(id, name, definition_json [, app]) -> version, version_ms, changed */
static int l_define_campaign(lua_State *L) {
  const char *id = herald_lua_checkname(L, 1, "id");
  const char *name = herald_lua_checkname(L, 2, "name");
  const char *definition = luaL_checkstring(L, 3);
  const char *app = herald_lua_optname(L, 4, "app", herald_context()->app);
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
  if (herald_lua_refuse_nul(L, 1, "id") || herald_lua_refuse_nul(L, 3, "app")) return 2;
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

static int l_advance_campaign_state(lua_State *L) {
  HeraldError err = {0};
  if (herald_campaign_advance_state(herald_context_store(L),
                                    herald_lua_optname(L, 3, "app", herald_context()->app),
                                    herald_lua_checkname(L, 1, "id"), luaL_checkstring(L, 2), &err) !=
      kHeraldOk)
    return raise_error(L, &err);
  return 0;
}

/* copy_campaign(id, new_id, definition_json [, app]) -> true | nil, err */
static int l_copy_campaign(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  if (herald_lua_refuse_nul(L, 1, "id") || herald_lua_refuse_nul(L, 2, "new_id") ||
      herald_lua_refuse_nul(L, 4, "app"))
    return 2;
  HeraldError err = {0};
  if (herald_campaign_copy(herald_context_store(L), luaL_optstring(L, 4, herald_context()->app),
                           luaL_checkstring(L, 1), luaL_checkstring(L, 2), luaL_checkstring(L, 3),
                           herald_clock_now_ms(), &err) != kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* cancel(campaign_id, reason [, app]): PENDING rows of its runs become SKIPPED with reason. */
static int l_cancel(lua_State *L) {
  HeraldError err = {0};
  if (herald_outbox_cancel(herald_context_store(L), herald_lua_optname(L, 3, "app", herald_context()->app),
                           herald_lua_checkname(L, 1, "campaign_id"), luaL_checkstring(L, 2), &err) !=
      kHeraldOk)
    return raise_error(L, &err);
  return 0;
}

/* set_campaign_origin(id, source, audience_json, lua [, app]): source, audience and lua may
 * be nil. */
static int l_set_campaign_origin(lua_State *L) {
  HeraldError err = {0};
  if (herald_campaign_set_origin(herald_context_store(L), herald_lua_optname(L, 5, "app", herald_context()->app),
                                 herald_lua_checkname(L, 1, "id"), herald_lua_optname(L, 2, "source", NULL),
                                 luaL_optstring(L, 3, NULL), luaL_optstring(L, 4, NULL),
                                 &err) != kHeraldOk)
    return raise_error(L, &err);
  return 0;
}

/* invalidate_campaigns(id, source, error [, app]) -> count: campaign id, or every campaign of
 * definition file source (the other nil), becomes INVALID with error. */
static int l_invalidate_campaigns(lua_State *L) {
  HeraldError err = {0};
  int count = 0;
  if (herald_campaign_invalidate(herald_context_store(L), herald_lua_optname(L, 4, "app", herald_context()->app),
                                 herald_lua_optname(L, 1, "id", NULL), herald_lua_optname(L, 2, "source", NULL),
                                 luaL_checkstring(L, 3), &count, &err) != kHeraldOk)
    return raise_error(L, &err);
  lua_pushinteger(L, count);
  return 1;
}

static int l_set_campaign_state(lua_State *L) {
  HeraldError err = {0};
  if (herald_campaign_set_state(herald_context_store(L), herald_lua_optname(L, 3, "app", herald_context()->app),
                                herald_lua_checkname(L, 1, "id"), luaL_checkstring(L, 2),
                                luaL_optstring(L, 4, NULL), &err) != kHeraldOk)
    return raise_error(L, &err);
  return 0;
}

int luaopen_herald_core_outbox(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"materialize_run", l_materialize_run}, {"skip_run", l_skip_run},
    {"trigger", l_trigger}, {"trigger_cursor", l_trigger_cursor}, {"report_batch", l_report_batch},
    {"recover", l_recover},         {"next_due", l_next_due},   {"complete_runs", l_complete_runs},
    {"message_id", l_message_id},   {"tally", l_tally}, {"record_direct", l_record_direct},
    {"add_optout", l_add_optout}, {"lift_optout", l_lift_optout},
    {"define_campaign", l_define_campaign}, {"set_campaign_state", l_set_campaign_state},
    {"campaign_definition", l_campaign_definition},
    {"advance_campaign_state", l_advance_campaign_state}, {"copy_campaign", l_copy_campaign},
    {"cancel", l_cancel}, {"decide", l_decide}, {"set_campaign_origin", l_set_campaign_origin},
    {"invalidate_campaigns", l_invalidate_campaigns},
    {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  for (int i = 1; i <= kClaimFields; i++) lua_pushstring(L, kClaimFieldNames[i]);
  lua_pushcclosure(L, l_claim, kClaimFields);
  lua_setfield(L, -2, "claim");
  return 1;
}
