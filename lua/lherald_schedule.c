/* herald.core.schedule: time zones, schedules and quiet time (runtime/tz.h, runtime/schedule.h).
 *
 * zone(name) -> name | nil, err
 * to_local(ms, zone) -> {year, month, day, hour, min, sec, ms, wday, yday, isdst, offset,
 *                        abbr, zone} | nil, err          (wday 1 = Sunday, yday 1 = 1 January)
 * to_utc(year, month, day, hour, min, sec, ms, zone) -> ms, fold ('gap'|'overlap'|nil) | nil, err
 * parse_iso(text) -> {year, ..., ms, has_time, offset (seconds, nil without one)} | nil, err
 * format_iso(ms, zone) -> text | nil, err
 * hhmm(text) -> minutes after midnight | nil, err
 * quiet(start_min, end_min, ms, zone) -> is_quiet, ends_at_ms | nil, err
 * new(frequency, zone, start_ms [, end_ms]) -> schedule | nil, err
 *   schedule:run(index) -> run | nil
 *   schedule:next_after(ms) -> run | nil
 *   schedule:runs(from_ms, to_ms [, limit]) -> {run, ...} (from_ms <= run.ms < to_ms) | nil, err
 *   schedule:local_due(index, zone [, fallback]) -> due_ms, zone used, fallback reason, fold
 *   schedule:slices(index, zones [, fallback]) -> {{due_ms, zones = {...}, fallback = {...}}, ...}
 * A run is {index (0 = first), ms, nominal = {year, month, day, hour, min, sec}, fold}.
 *
 * Runtime failures (unknown zone, bad text, out-of-range instant) return nil, err; argument
 * misuse raises. */
#include <lauxlib.h>
#include <string.h>

#include "lua/modules.h"
#include "runtime/schedule.h"
#include "runtime/tz.h"

#define SCHEDULE_MT "herald.Schedule"
#define RUNS_LIMIT 100000

static int push_fail(lua_State *L, const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

static const HeraldTz *check_zone(lua_State *L, int idx, HeraldError *err) {
  return herald_tz_get(luaL_checkstring(L, idx), err);
}

static int check_ms(lua_State *L, int idx, int64_t *ms, HeraldError *err) {
  lua_Integer v = luaL_checkinteger(L, idx);
  *ms = 0;
  if (v < HERALD_TZ_MIN_MS || v > HERALD_TZ_MAX_MS) {
    return herald_error_set(err, kHeraldInvalid,
                            "instant %lld ms is out of range (years 1-9999)", (long long)v);
  }
  *ms = (int64_t)v;
  return kHeraldOk;
}

static void set_int(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static void push_wall(lua_State *L, const HeraldWallTime *w, int with_ms) {
  lua_createtable(L, 0, 10);
  set_int(L, "year", w->year);
  set_int(L, "month", w->month);
  set_int(L, "day", w->day);
  set_int(L, "hour", w->hour);
  set_int(L, "min", w->min);
  set_int(L, "sec", w->sec);
  if (with_ms) set_int(L, "ms", w->ms);
}

static const char *fold_name(HeraldTzFold fold) {
  switch (fold) {
    case kHeraldTzGap: return "gap";
    case kHeraldTzOverlap: return "overlap";
    default: return NULL;
  }
}

static void push_fold(lua_State *L, HeraldTzFold fold) {
  const char *name = fold_name(fold);
  if (name == NULL) {
    lua_pushnil(L);
  } else {
    lua_pushstring(L, name);
  }
}

static int l_zone(lua_State *L) {
  HeraldError err;
  const HeraldTz *tz = check_zone(L, 1, &err);
  if (tz == NULL) return push_fail(L, err.msg);
  lua_pushstring(L, herald_tz_name(tz));
  return 1;
}

static int l_to_local(lua_State *L) {
  HeraldError err;
  int64_t ms;
  if (check_ms(L, 1, &ms, &err) != kHeraldOk) return push_fail(L, err.msg);
  const HeraldTz *tz = check_zone(L, 2, &err);
  if (tz == NULL) return push_fail(L, err.msg);
  HeraldLocalTime lt;
  herald_tz_to_local(tz, ms, &lt);
  push_wall(L, &lt.wall, 1);
  set_int(L, "wday", lt.wday + 1);
  set_int(L, "yday", lt.yday + 1);
  lua_pushboolean(L, lt.is_dst);
  lua_setfield(L, -2, "isdst");
  set_int(L, "offset", lt.offset_s);
  lua_pushstring(L, lt.abbr);
  lua_setfield(L, -2, "abbr");
  lua_pushstring(L, herald_tz_name(tz));
  lua_setfield(L, -2, "zone");
  return 1;
}

static int l_to_utc(lua_State *L) {
  HeraldWallTime w;
  int *fields[] = {&w.year, &w.month, &w.day, &w.hour, &w.min, &w.sec, &w.ms};
  for (int i = 0; i < 7; i++) {
    lua_Integer v = luaL_checkinteger(L, i + 1);
    *fields[i] = v < -1000000 ? -1000000 : v > 1000000 ? 1000000 : (int)v;
  }
  HeraldError err;
  if (herald_tz_check_wall(&w, &err) != kHeraldOk) return push_fail(L, err.msg);
  const HeraldTz *tz = check_zone(L, 8, &err);
  if (tz == NULL) return push_fail(L, err.msg);
  HeraldTzFold fold;
  int64_t ms = herald_tz_to_utc(tz, &w, &fold);
  lua_pushinteger(L, (lua_Integer)ms);
  push_fold(L, fold);
  return 2;
}

static int l_parse_iso(lua_State *L) {
  HeraldIsoTime t;
  HeraldError err;
  if (herald_tz_parse_iso(luaL_checkstring(L, 1), &t, &err) != kHeraldOk) {
    return push_fail(L, err.msg);
  }
  push_wall(L, &t.wall, 1);
  lua_pushboolean(L, t.has_time);
  lua_setfield(L, -2, "has_time");
  if (t.has_offset) set_int(L, "offset", t.offset_s);
  return 1;
}

static int l_format_iso(lua_State *L) {
  HeraldError err;
  int64_t ms;
  if (check_ms(L, 1, &ms, &err) != kHeraldOk) return push_fail(L, err.msg);
  const HeraldTz *tz = check_zone(L, 2, &err);
  if (tz == NULL) return push_fail(L, err.msg);
  char buf[40];
  herald_tz_format_iso(tz, ms, buf, sizeof buf);
  lua_pushstring(L, buf);
  return 1;
}

static int l_hhmm(lua_State *L) {
  HeraldError err;
  int minutes;
  if (herald_schedule_parse_hhmm(luaL_checkstring(L, 1), &minutes, &err) != kHeraldOk) {
    return push_fail(L, err.msg);
  }
  lua_pushinteger(L, minutes);
  return 1;
}

static int l_quiet(lua_State *L) {
  HeraldQuietTime q;
  HeraldError err;
  lua_Integer start = luaL_checkinteger(L, 1), end = luaL_checkinteger(L, 2);
  if (start < 0 || start >= 1440 || end < 0 || end >= 1440) {
    return luaL_error(L, "quiet time bounds must be minutes 0-1439");
  }
  if (herald_schedule_quiet_init(&q, (int)start, (int)end, &err) != kHeraldOk) {
    return push_fail(L, err.msg);
  }
  int64_t ms;
  if (check_ms(L, 3, &ms, &err) != kHeraldOk) return push_fail(L, err.msg);
  const HeraldTz *tz = check_zone(L, 4, &err);
  if (tz == NULL) return push_fail(L, err.msg);
  int quiet = herald_schedule_is_quiet(&q, tz, ms);
  lua_pushboolean(L, quiet);
  lua_pushinteger(L, (lua_Integer)herald_schedule_quiet_end(&q, tz, ms));
  return 2;
}

/* ---- schedules ---- */

static HeraldSchedule *check_schedule(lua_State *L) {
  return luaL_checkudata(L, 1, SCHEDULE_MT);
}

static int l_new(lua_State *L) {
  HeraldError err;
  HeraldFrequency f;
  if (herald_schedule_frequency_parse(luaL_checkstring(L, 1), &f, &err) != kHeraldOk) {
    return push_fail(L, err.msg);
  }
  const HeraldTz *tz = check_zone(L, 2, &err);
  if (tz == NULL) return push_fail(L, err.msg);
  int64_t start, end = 0;
  if (check_ms(L, 3, &start, &err) != kHeraldOk) return push_fail(L, err.msg);
  int has_end = !lua_isnoneornil(L, 4);
  if (has_end && check_ms(L, 4, &end, &err) != kHeraldOk) return push_fail(L, err.msg);
  HeraldSchedule s;
  if (herald_schedule_init(&s, f, tz, start, has_end, end, &err) != kHeraldOk) {
    return push_fail(L, err.msg);
  }
  HeraldSchedule *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = s;
  luaL_setmetatable(L, SCHEDULE_MT);
  return 1;
}

static void push_run(lua_State *L, const HeraldRun *run) {
  lua_createtable(L, 0, 4);
  set_int(L, "index", run->index);
  set_int(L, "ms", run->ms);
  push_wall(L, &run->nominal, 0);
  lua_setfield(L, -2, "nominal");
  const char *fold = fold_name(run->fold);
  if (fold != NULL) {
    lua_pushstring(L, fold);
    lua_setfield(L, -2, "fold");
  }
}

static int l_run(lua_State *L) {
  HeraldSchedule *s = check_schedule(L);
  HeraldRun run;
  if (!herald_schedule_run(s, (int64_t)luaL_checkinteger(L, 2), &run)) return 0;
  push_run(L, &run);
  return 1;
}

static int l_next_after(lua_State *L) {
  HeraldSchedule *s = check_schedule(L);
  HeraldError err;
  int64_t after;
  if (check_ms(L, 2, &after, &err) != kHeraldOk) return push_fail(L, err.msg);
  HeraldRun run;
  if (!herald_schedule_next_after(s, after, &run)) return 0;
  push_run(L, &run);
  return 1;
}

static int l_runs(lua_State *L) {
  HeraldSchedule *s = check_schedule(L);
  HeraldError err;
  int64_t from, to;
  if (check_ms(L, 2, &from, &err) != kHeraldOk || check_ms(L, 3, &to, &err) != kHeraldOk) {
    return push_fail(L, err.msg);
  }
  lua_Integer limit = luaL_optinteger(L, 4, RUNS_LIMIT);
  lua_newtable(L);
  HeraldRun run;
  if (!herald_schedule_next_after(s, from - 1, &run)) return 1;
  lua_Integer n = 0;
  while (run.ms < to) {
    if (n == limit) {
      lua_pushfstring(L, "more than %I runs between the two instants; ask for a shorter range",
                      limit);
      return push_fail(L, lua_tostring(L, -1));
    }
    push_run(L, &run);
    lua_rawseti(L, -2, ++n);
    if (!herald_schedule_run(s, run.index + 1, &run)) break;
  }
  return 1;
}

static const char *fallback_reason(int fell_back) {
  return fell_back == kHeraldZoneMissing ? "MISSING_TIMEZONE" : "INVALID_TIMEZONE";
}

/* The fallback zone: argument idx or, when absent, the schedule's zone. */
static const HeraldTz *check_fallback(lua_State *L, int idx, const HeraldSchedule *s,
                                      HeraldError *err) {
  if (lua_isnoneornil(L, idx)) return s->tz;
  return check_zone(L, idx, err);
}

static int l_local_due(lua_State *L) {
  HeraldSchedule *s = check_schedule(L);
  HeraldRun run;
  if (!herald_schedule_run(s, (int64_t)luaL_checkinteger(L, 2), &run)) {
    return push_fail(L, "no such run");
  }
  HeraldError err;
  const HeraldTz *fallback = check_fallback(L, 4, s, &err);
  if (fallback == NULL) return push_fail(L, err.msg);
  int fell_back;
  const HeraldTz *tz = herald_schedule_endpoint_zone(luaL_optstring(L, 3, NULL), fallback,
                                                     &fell_back);
  HeraldTzFold fold;
  lua_pushinteger(L, (lua_Integer)herald_schedule_local_due(s, &run, tz, &fold));
  lua_pushstring(L, herald_tz_name(tz));
  if (fell_back) {
    lua_pushstring(L, fallback_reason(fell_back));
  } else {
    lua_pushnil(L);
  }
  push_fold(L, fold);
  return 4;
}

static int l_slices(lua_State *L) {
  HeraldSchedule *s = check_schedule(L);
  HeraldRun run;
  if (!herald_schedule_run(s, (int64_t)luaL_checkinteger(L, 2), &run)) {
    return push_fail(L, "no such run");
  }
  luaL_checktype(L, 3, LUA_TTABLE);
  HeraldError err;
  const HeraldTz *fallback = check_fallback(L, 4, s, &err);
  if (fallback == NULL) return push_fail(L, err.msg);
  size_t n = (size_t)lua_rawlen(L, 3);
  HeraldZoneDue *items = lua_newuserdatauv(L, (n > 0 ? n : 1) * sizeof *items, 0);
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, 3, (lua_Integer)i + 1);
    if (lua_type(L, -1) != LUA_TSTRING) {
      return luaL_error(L, "zones[%d]: expected a string (\"\" for a missing zone), got a %s",
                        (int)i + 1, luaL_typename(L, -1));
    }
    /* The string stays alive: the zones table holds it. */
    items[i].zone_name = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  size_t count;
  if (herald_schedule_slices(s, &run, fallback, items, n, &count, &err) != kHeraldOk) {
    return push_fail(L, err.msg);
  }
  lua_createtable(L, (int)count, 0);
  int out = lua_gettop(L);
  for (size_t i = 0; i < n; i++) {
    lua_Integer slot = (lua_Integer)items[i].slice + 1;
    if (lua_rawgeti(L, out, slot) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_createtable(L, 0, 3);
      set_int(L, "due_ms", items[i].due_ms);
      lua_newtable(L);
      lua_setfield(L, -2, "zones");
      lua_newtable(L);
      lua_setfield(L, -2, "fallback");
      lua_pushvalue(L, -1);
      lua_rawseti(L, out, slot);
    }
    lua_getfield(L, -1, items[i].fell_back ? "fallback" : "zones");
    lua_pushstring(L, items[i].zone_name);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pop(L, 2);
  }
  return 1;
}

static int l_schedule_tostring(lua_State *L) {
  HeraldSchedule *s = check_schedule(L);
  char start[40];
  herald_tz_format_iso(s->tz, s->start_ms, start, sizeof start);
  lua_pushfstring(L, "schedule %s from %s in %s", herald_schedule_frequency_name(s->frequency),
                  start, herald_tz_name(s->tz));
  return 1;
}

int luaopen_herald_core_schedule(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"run", l_run},           {"next_after", l_next_after}, {"runs", l_runs},
    {"local_due", l_local_due}, {"slices", l_slices},       {NULL, NULL},
  };
  static const luaL_Reg funcs[] = {
    {"zone", l_zone},           {"to_local", l_to_local}, {"to_utc", l_to_utc},
    {"parse_iso", l_parse_iso}, {"format_iso", l_format_iso}, {"hhmm", l_hhmm},
    {"quiet", l_quiet},         {"new", l_new},           {NULL, NULL},
  };
  if (luaL_newmetatable(L, SCHEDULE_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_schedule_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
