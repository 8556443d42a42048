/* herald.core.lane: the webhook lane of delivery.
 *
 * Most webhook messages of a campaign need nothing but their endpoint read, their text
 * rendered and Pinpoint's custom-channel payload written. Delivery (stdlib/herald/deliver.lua)
 * decides once per campaign version, treatment and claim whether that is all a group of rows
 * needs (no hook, quiet time, rate limit, stored template, signing, ...), and gives the claim
 * a spec for it; the claim (herald.core.outbox's claim with a chooser) hands those rows here
 * instead of making a Lua table of each. The lane reads each endpoint, renders and writes the
 * payload in C, adds the requests to an http batch itself, and gives Lua back only what Lua
 * decides on: the row ids of deliveries, and whole rows for anything else. The payload is the
 * one stdlib/herald/channels/webhook.lua writes for a one-endpoint call.
 *
 * spec{app_id=, profile=, body=, title=, data= (compiled templates or nil), data_json=} -> spec
 * lane methods: count() (requests), total() (rows, failures included), failures() (reports of
 *   rows that failed before sending: {id=, state='FAILED', reason=}), profile(), campaigns(),
 *   submit(batch, gates) (gates: campaign id -> http gate), ids(), cids() (row id and campaign id
 *   by request seq), row(seq) (the claimed row as a table, as the claim makes them). */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "lua/context.h"
#include "lua/lherald_json.h"
#include "lua/lherald_lane.h"
#include "lua/modules.h"
#include "runtime/buffer.h"
#include "runtime/datetime.h"
#include "runtime/endpoint.h"
#include "runtime/outbox.h"
#include "runtime/template.h"

#define SPEC_MT "herald.lane.Spec"
#define LANE_MT "herald.lane.Lane"

/* A spec's uservalues: its templates and its profile, which keep them alive. */
enum { kSpecBody = 1, kSpecTitle, kSpecData, kSpecProfile, kSpecValues = kSpecProfile };

typedef struct {
  HeraldTemplate *body, *title, *data;  /* borrowed from the uservalues; NULL: none */
  char *data_json;                      /* static Data as JSON text, or NULL */
  char *app_id;
} Spec;

/* A lane's uservalues: request bodies by seq, failure reports, its profile, its rows. */
enum { kLaneBodies = 1, kLaneFailures, kLaneProfile, kLaneRows, kLaneValues = kLaneRows };

/* A claimed row as the lane keeps it: HeraldOutboxClaim without its room for a push token's
 * address (the lane's rows are webhook rows), so a claim's rows cost the lane a tenth. */
typedef struct {
  int64_t id, run_id, due_ms, first_due_ms;
  int campaign_version, treatment, attempts;
  char campaign_id[sizeof ((HeraldOutboxClaim *)0)->campaign_id];
  char endpoint_id[sizeof ((HeraldOutboxClaim *)0)->endpoint_id];
  char message_id[sizeof ((HeraldOutboxClaim *)0)->message_id];
  char channel[sizeof ((HeraldOutboxClaim *)0)->channel];
  char zone[sizeof ((HeraldOutboxClaim *)0)->zone];
  char *address;  /* malloc'd */
} LaneRow;

typedef struct {
  LaneRow *rows;  /* by seq - 1: a uservalue's memory, which the collector counts */
  int n, cap, failed;
} Lane;

static char *dup_field(lua_State *L, int t, const char *k, int required) {
  lua_getfield(L, t, k);
  const char *s = lua_tostring(L, -1);
  if (s == NULL && required) luaL_error(L, "lane.spec: %s must be a string", k);
  char *d = s != NULL ? strdup(s) : NULL;
  lua_pop(L, 1);
  if (s != NULL && d == NULL) luaL_error(L, "out of memory");
  return d;
}

static int spec_gc(lua_State *L) {
  Spec *s = luaL_checkudata(L, 1, SPEC_MT);
  free(s->data_json);
  free(s->app_id);
  s->data_json = s->app_id = NULL;
  return 0;
}

/* spec{...} -> spec */
static int l_spec(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  Spec *s = lua_newuserdatauv(L, sizeof *s, kSpecValues);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, SPEC_MT);
  static const char *const parts[] = {"body", "title", "data"};
  HeraldTemplate **slots[] = {&s->body, &s->title, &s->data};
  for (int i = 0; i < 3; i++) {
    lua_getfield(L, 1, parts[i]);
    if (!lua_isnil(L, -1)) {
      *slots[i] = herald_lua_template(L, -1);
      if (*slots[i] == NULL) return luaL_error(L, "lane.spec: %s must be a compiled template", parts[i]);
    }
    lua_setiuservalue(L, -2, kSpecBody + i);
  }
  lua_getfield(L, 1, "profile");
  lua_setiuservalue(L, -2, kSpecProfile);
  s->app_id = dup_field(L, 1, "app_id", 1);
  s->data_json = dup_field(L, 1, "data_json", 0);
  return 1;
}

static Lane *check_lane(lua_State *L) { return luaL_checkudata(L, 1, LANE_MT); }

static int lane_gc(lua_State *L) {
  Lane *l = check_lane(L);
  for (int i = 0; i < l->n; i++) free(l->rows[i].address);
  l->rows = NULL;
  l->n = l->cap = 0;
  return 0;
}

void herald_lua_lane_new(lua_State *L, int max) {
  /* the claim may come before anything required the module */
  if (luaL_getmetatable(L, LANE_MT) == LUA_TNIL) {
    luaL_requiref(L, "herald.core.lane", luaopen_herald_core_lane, 0);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  Lane *l = lua_newuserdatauv(L, sizeof *l, kLaneValues);
  memset(l, 0, sizeof *l);
  luaL_setmetatable(L, LANE_MT);
  l->rows = lua_newuserdatauv(L, sizeof *l->rows * (size_t)(max > 0 ? max : 1), 0);
  lua_setiuservalue(L, -2, kLaneRows);
  l->cap = max;
  lua_createtable(L, max, 0);
  lua_setiuservalue(L, -2, kLaneBodies);
  lua_newtable(L);
  lua_setiuservalue(L, -2, kLaneFailures);
}

/* Renders t for ep into out (a copy: the output is reused); 0, or -1 with the reason pushed. */
static int render(lua_State *L, HeraldTemplate *t, const json_t *ep, HeraldBuf *out) {
  static HeraldTemplateOutput o;
  HeraldError err = {0};
  if (herald_template_render(t, ep, NULL, NULL, &o, &err) != kHeraldOk) {
    lua_pushfstring(L, "RENDER_FAILED: %s", err.msg);
    return -1;
  }
  out->len = 0;
  if (herald_buf_add(out, o.data, o.len) != 0) luaL_error(L, "out of memory");
  return 0;
}

static void fail_row(lua_State *L, int li, const HeraldOutboxClaim *r) {
  Lane *l = lua_touserdata(L, li);
  int reason = lua_gettop(L);
  lua_getiuservalue(L, li, kLaneFailures);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)r->id);
  lua_setfield(L, -2, "id");
  lua_pushliteral(L, "FAILED");
  lua_setfield(L, -2, "state");
  lua_pushvalue(L, reason);
  lua_setfield(L, -2, "reason");
  lua_rawseti(L, -2, ++l->failed);
  lua_settop(L, reason - 1);
}

static int put(HeraldBuf *o, const char *s) { return herald_buf_add(o, s, strlen(s)); }

static int put_field(HeraldBuf *o, const char *name, const char *s, size_t len) {
  return put(o, name) || herald_lua_json_put_string(o, s, len);
}

int herald_lua_lane_take(lua_State *L, int li, int si, const HeraldOutboxClaim *r,
                         HeraldStore *store, const char *app) {
  li = lua_absindex(L, li);
  si = lua_absindex(L, si);
  Lane *l = luaL_checkudata(L, li, LANE_MT);
  Spec *s = luaL_checkudata(L, si, SPEC_MT);
  /* one profile a lane: its requests go in one batch */
  lua_getiuservalue(L, si, kSpecProfile);
  if (lua_getiuservalue(L, li, kLaneProfile) == LUA_TNIL) {
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, li, kLaneProfile);
  } else if (!lua_rawequal(L, -1, -2)) {
    lua_pop(L, 2);
    return 0;
  }
  lua_pop(L, 2);
  if (l->n >= l->cap) return 0;

  json_t *ep = NULL;
  HeraldError err = {0};
  if (herald_endpoint_get(store, app, r->endpoint_id, &ep, &err) != kHeraldOk) {
    lua_pushliteral(L, "ENDPOINT_DELETED");
    fail_row(L, li, r);
    return 1;
  }
  /* rendered in the order the general path renders them: its first failure is the reason */
  static HeraldBuf title, body, data, out;
  int has_title = s->title != NULL, has_body = s->body != NULL, has_data = s->data != NULL;
  if ((has_title && render(L, s->title, ep, &title)) || (has_body && render(L, s->body, ep, &body)) ||
      (has_data && render(L, s->data, ep, &data))) {
    json_decref(ep);
    fail_row(L, li, r);
    return 1;
  }
  char when[HERALD_DATETIME_LEN], num[32];
  herald_datetime_format(r->due_ms, when);
  out.len = 0;
  int bad = put(&out, "{\"Message\":{");
  if (has_body) bad = bad || put_field(&out, "\"Body\":", body.data, body.len);
  if (has_title) bad = bad || put_field(&out, has_body ? ",\"Title\":" : "\"Title\":", title.data, title.len);
  bad = bad || put(&out, "}");
  if (has_data) bad = bad || put_field(&out, ",\"Data\":", data.data, data.len);
  else if (s->data_json != NULL) bad = bad || put(&out, ",\"Data\":") || put(&out, s->data_json);
  else if (has_body) bad = bad || put_field(&out, ",\"Data\":", body.data, body.len);
  bad = bad || put_field(&out, ",\"ApplicationId\":", s->app_id, strlen(s->app_id)) ||
        put_field(&out, ",\"CampaignId\":", r->campaign_id, strlen(r->campaign_id));
  snprintf(num, sizeof num, "%d", r->treatment);
  bad = bad || put_field(&out, ",\"TreatmentId\":", num, strlen(num));
  snprintf(num, sizeof num, "%lld", (long long)r->run_id);
  bad = bad || put_field(&out, ",\"ActivityId\":", num, strlen(num)) ||
        put_field(&out, ",\"ScheduledTime\":", when, strlen(when)) ||
        put_field(&out, ",\"Endpoints\":{", r->endpoint_id, strlen(r->endpoint_id)) ||
        put(&out, ":") || herald_lua_json_put(&out, ep) || put(&out, "}}");
  json_decref(ep);
  if (bad) {
    /* rendered text is valid UTF-8 (endpoints and definitions are JSON): only memory fails */
    lua_pushliteral(L, "RENDER_FAILED: cannot write the payload (out of memory or not UTF-8)");
    fail_row(L, li, r);
    return 1;
  }
  LaneRow *row = &l->rows[l->n];
  row->address = strdup(r->address);
  if (row->address == NULL) luaL_error(L, "out of memory");
  row->id = r->id;
  row->run_id = r->run_id;
  row->due_ms = r->due_ms;
  row->first_due_ms = r->first_due_ms;
  row->campaign_version = r->campaign_version;
  row->treatment = r->treatment;
  row->attempts = r->attempts;
  memcpy(row->campaign_id, r->campaign_id, sizeof row->campaign_id);
  memcpy(row->endpoint_id, r->endpoint_id, sizeof row->endpoint_id);
  memcpy(row->message_id, r->message_id, sizeof row->message_id);
  memcpy(row->channel, r->channel, sizeof row->channel);
  memcpy(row->zone, r->zone, sizeof row->zone);
  l->n++;
  lua_getiuservalue(L, li, kLaneBodies);
  lua_pushlstring(L, out.data, out.len);
  lua_rawseti(L, -2, l->n);
  lua_pop(L, 1);
  /* a large payload's buffer is not kept */
  if (out.cap > (1u << 20)) {
    free(out.data);
    out.data = NULL;
    out.cap = 0;
  }
  return 1;
}

static int lane_count(lua_State *L) {
  lua_pushinteger(L, check_lane(L)->n);
  return 1;
}

static int lane_total(lua_State *L) {
  Lane *l = check_lane(L);
  lua_pushinteger(L, l->n + l->failed);
  return 1;
}

static int lane_failures(lua_State *L) {
  check_lane(L);
  lua_getiuservalue(L, 1, kLaneFailures);
  return 1;
}

static int lane_profile(lua_State *L) {
  check_lane(L);
  lua_getiuservalue(L, 1, kLaneProfile);
  return 1;
}

/* campaigns() -> the distinct campaign ids of the lane's requests */
static int lane_campaigns(lua_State *L) {
  Lane *l = check_lane(L);
  lua_newtable(L);
  int n = 0;
  for (int i = 0; i < l->n; i++) {
    int seen = 0;
    for (int j = 0; j < i && !seen; j++) seen = strcmp(l->rows[j].campaign_id, l->rows[i].campaign_id) == 0;
    if (seen) continue;
    lua_pushstring(L, l->rows[i].campaign_id);
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

/* submit(batch, gates): every request into batch, its Idempotency-Key the message id, behind
 * its campaign's gate (gates[campaign_id]) */
static int lane_submit(lua_State *L) {
  Lane *l = check_lane(L);
  luaL_checkany(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  lua_getiuservalue(L, 1, kLaneBodies);  /* 4 */
  for (int i = 0; i < l->n; i++) {
    const LaneRow *r = &l->rows[i];
    lua_rawgeti(L, 4, i + 1);                 /* 5: body */
    lua_pushstring(L, r->message_id);         /* 6: key */
    lua_getfield(L, 3, r->campaign_id);       /* 7: gate or nil */
    herald_lua_batch_add(L, 2, 5, 6, lua_isnil(L, 7) ? 0 : 7);
    lua_settop(L, 4);
  }
  herald_lua_batch_pump(L, 2);
  return 0;
}

/* ids(), cids() -> row ids, campaign ids by request seq */
static int lane_ids(lua_State *L) {
  Lane *l = check_lane(L);
  lua_createtable(L, l->n, 0);
  for (int i = 0; i < l->n; i++) {
    lua_pushinteger(L, (lua_Integer)l->rows[i].id);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int lane_cids(lua_State *L) {
  Lane *l = check_lane(L);
  lua_createtable(L, l->n, 0);
  for (int i = 0; i < l->n; i++) {
    lua_pushstring(L, l->rows[i].campaign_id);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static void set_int(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static void set_str(lua_State *L, const char *k, const char *v) {
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

/* row(seq) -> the claimed row of request seq, as outbox.claim makes it */
static int lane_row(lua_State *L) {
  Lane *l = check_lane(L);
  lua_Integer seq = luaL_checkinteger(L, 2);
  luaL_argcheck(L, seq >= 1 && seq <= l->n, 2, "no such request");
  const LaneRow *r = &l->rows[seq - 1];
  lua_createtable(L, 0, 13);
  set_int(L, "id", (lua_Integer)r->id);
  set_int(L, "run_id", (lua_Integer)r->run_id);
  set_str(L, "campaign_id", r->campaign_id);
  set_int(L, "campaign_version", r->campaign_version);
  set_str(L, "endpoint_id", r->endpoint_id);
  set_int(L, "treatment", r->treatment);
  set_str(L, "message_id", r->message_id);
  set_str(L, "channel", r->channel);
  set_str(L, "address", r->address);
  set_int(L, "due_ms", (lua_Integer)r->due_ms);
  set_int(L, "first_due_ms", (lua_Integer)r->first_due_ms);
  if (r->zone[0]) set_str(L, "zone", r->zone);
  set_int(L, "attempts", r->attempts);
  return 1;
}

int luaopen_herald_core_lane(lua_State *L) {
  luaL_newmetatable(L, SPEC_MT);
  lua_pushcfunction(L, spec_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  static const luaL_Reg lane_methods[] = {
    {"count", lane_count},   {"total", lane_total},   {"failures", lane_failures},
    {"profile", lane_profile}, {"campaigns", lane_campaigns}, {"submit", lane_submit},
    {"ids", lane_ids},       {"cids", lane_cids},     {"row", lane_row},
    {NULL, NULL},
  };
  luaL_newmetatable(L, LANE_MT);
  luaL_newlib(L, lane_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, lane_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"spec", l_spec}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
