/* String arguments that name something (an id, a name, an application, a file): a C string
 * ends at its first NUL, so "vip\0-x" would name vip and a definition or lookup would reach
 * another object. The bindings refuse such a string with the argument's name, as endpoints
 * and events refuse theirs (lua/lherald_store.c). */
#ifndef HERALD_LUA_ARGS_H
#define HERALD_LUA_ARGS_H

#include <lua.h>

/* Whether the value at idx is a string with a NUL inside (a number or other value has none). */
int herald_lua_nul_inside(lua_State *L, int idx);

/* luaL_checkstring and luaL_optstring for a binding whose failures raise: a string with a NUL
 * inside raises "bad argument #idx to 'f' (field: contains a NUL character (\u0000))". */
const char *herald_lua_checkname(lua_State *L, int idx, const char *field);
const char *herald_lua_optname(lua_State *L, int idx, const char *field, const char *def);

/* For a binding that answers nil, message: when the value at idx is a string with a NUL
 * inside, pushes nil, "field: contains a NUL character (\u0000)" and returns 2; else 0. */
int herald_lua_refuse_nul(lua_State *L, int idx, const char *field);

#endif
