/* The webhook lane's side of a claim (lua/lherald_lane.c): herald.core.outbox's claim hands it
 * the rows a chooser gave a spec for. */
#ifndef HERALD_LUA_LANE_H
#define HERALD_LUA_LANE_H

#include <lua.h>

#include "runtime/outbox.h"
#include "runtime/store.h"

/* Pushes a new lane with room for max requests. */
void herald_lua_lane_new(lua_State *L, int max);

/* Prepares claimed row r for the lane at index li with the spec at index si: reads its
 * endpoint (of app) from store, renders its text, writes its payload, or records why it
 * failed. Returns 0 when the lane does not take it (the spec's profile is not the lane's),
 * else 1. Raises only when out of memory. */
int herald_lua_lane_take(lua_State *L, int li, int si, const HeraldOutboxClaim *r,
                         HeraldStore *store, const char *app);

#endif
