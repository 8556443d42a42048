/* Conversions between Lua values and jansson values, shared by herald.core.json and every
 * binding that takes or returns Pinpoint-shaped data (endpoints, events).
 *
 * Lua -> JSON: a table whose metatable is json.array / json.object is that; otherwise a
 * non-empty table whose keys are exactly 1..n is an array and any other table an object (an
 * empty table is an object; integer keys of an object become strings). json.null is JSON
 * null. Integers stay integers. A template context (herald.core.template) is the JSON it holds.
 * JSON -> Lua: arrays and objects get the json.array / json.object metatables, so a decoded
 * value encodes back to the same JSON (an empty array stays an array). */
#ifndef HERALD_LUA_JSON_H
#define HERALD_LUA_JSON_H

#include <jansson.h>
#include <lua.h>

#include "runtime/buffer.h"
#include "runtime/error.h"
#include "runtime/template.h"

/* Converts the value at idx; on failure err names the path ("Attributes.x[2]: ..."). */
int herald_lua_tojson(lua_State *L, int idx, json_t **out, HeraldError *err);
/* The JSON a template context at idx holds (borrowed), or NULL when idx is not one. */
json_t *herald_lua_template_context(lua_State *L, int idx);
/* The compiled template (herald.core.template's compile) at idx, or NULL when idx is not one. */
HeraldTemplate *herald_lua_template(lua_State *L, int idx);
/* Appends v, or the string s[0..len), to o as json.encode writes them (compact, keys in
 * insertion order); -1 when out of memory or v cannot be written. */
int herald_lua_json_put(HeraldBuf *o, const json_t *v);
int herald_lua_json_put_string(HeraldBuf *o, const char *s, size_t len);
/* Pushes v (NULL pushes nil). */
void herald_lua_pushjson(lua_State *L, json_t *v);

#endif
