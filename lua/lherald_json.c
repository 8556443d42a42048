/* herald.core.json: encode/decode over jansson, with a null sentinel and array/object marks. */
#include "lua/lherald_json.h"

#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/modules.h"
#include "runtime/buffer.h"
#include "runtime/utf8.h"

#define ARRAY_MT "herald.json.array"
#define OBJECT_MT "herald.json.object"
#define MAX_DEPTH 200

/* json.null: a light userdata whose address is unique to herald. */
static const char null_sentinel = 0;
#define NULL_SENTINEL ((void *)&null_sentinel)

static void push_mark(lua_State *L, const char *name) {
  if (luaL_newmetatable(L, name)) {
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
  }
}

static int to_json(lua_State *L, int idx, json_t **out, char *path, size_t plen, int depth,
                   HeraldError *err);

static int fail_at(HeraldError *err, const char *path, const char *what) {
  return herald_error_set(err, kHeraldInvalid, "%s%s%s", path, *path ? ": " : "", what);
}

/* 0 unmarked, 1 array, 2 object */
static int marked(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  int kind = 0;
  luaL_getmetatable(L, ARRAY_MT);
  if (lua_rawequal(L, -1, -2)) kind = 1;
  lua_pop(L, 1);
  if (!kind) {
    luaL_getmetatable(L, OBJECT_MT);
    if (lua_rawequal(L, -1, -2)) kind = 2;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return kind;
}

/* A table is an array when its keys are exactly the integers 1..n with n > 0. */
static int looks_like_array(lua_State *L, int idx, lua_Integer *n) {
  lua_Integer count = 0, max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
      lua_pop(L, 1);
      return 0;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k > max) max = k;
    count++;
  }
  *n = max;
  return count > 0 && count == max;
}

static size_t append(char *path, size_t plen, const char *fmt, const char *s, long long i) {
  char piece[128];
  if (s) snprintf(piece, sizeof piece, fmt, s);
  else snprintf(piece, sizeof piece, fmt, i);
  size_t n = strlen(piece);
  if (plen + n >= 512) n = 511 - plen;
  memcpy(path + plen, piece, n);
  path[plen + n] = '\0';
  return plen + n;
}

static int table_to_json(lua_State *L, int idx, json_t **out, char *path, size_t plen, int depth,
                         HeraldError *err) {
  if (depth > MAX_DEPTH) return fail_at(err, path, "nested too deeply (a cycle?)");
  luaL_checkstack(L, 4, "json encode");
  int kind = marked(L, idx);
  lua_Integer n = 0;
  if (kind == 0) kind = looks_like_array(L, idx, &n) ? 1 : 2;
  else if (kind == 1) n = (lua_Integer)lua_rawlen(L, idx);
  if (kind == 1) {
    json_t *arr = json_array();
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      size_t l2 = append(path, plen, "[%lld]", NULL, (long long)i);
      json_t *v = NULL;
      int rc = to_json(L, lua_gettop(L), &v, path, l2, depth + 1, err);
      path[plen] = '\0';
      lua_pop(L, 1);
      if (rc != kHeraldOk) {
        json_decref(arr);
        return rc;
      }
      json_array_append_new(arr, v);
    }
    *out = arr;
    return kHeraldOk;
  }
  json_t *obj = json_object();
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    char numkey[32];
    const char *key;
    if (lua_type(L, -2) == LUA_TSTRING) {
      size_t klen;
      key = lua_tolstring(L, -2, &klen);
      /* a JSON object's keys are C strings here: one with a NUL would be cut and could
       * replace another ("a\0x" and "a") */
      if (strlen(key) != klen) {
        lua_pop(L, 2);
        json_decref(obj);
        return fail_at(err, path, "an object key contains a NUL character (\\u0000)");
      }
    } else if (lua_isinteger(L, -2)) {
      /* A table mixing list and named entries: its integer keys become strings. */
      snprintf(numkey, sizeof numkey, LUA_INTEGER_FMT, lua_tointeger(L, -2));
      key = numkey;
    } else {
      lua_pop(L, 2);
      json_decref(obj);
      return fail_at(err, path, "object keys must be strings or integers");
    }
    size_t l2 = plen ? append(path, plen, ".%s", key, 0) : append(path, plen, "%s", key, 0);
    json_t *v = NULL;
    int rc = to_json(L, lua_gettop(L), &v, path, l2, depth + 1, err);
    path[plen] = '\0';
    if (rc != kHeraldOk) {
      lua_pop(L, 2);
      json_decref(obj);
      return rc;
    }
    if (json_object_set_new(obj, key, v) != 0) {
      lua_pop(L, 2);
      json_decref(obj);
      return fail_at(err, path, "an object key is not valid UTF-8");
    }
    lua_pop(L, 1);
  }
  *out = obj;
  return kHeraldOk;
}

static int to_json(lua_State *L, int idx, json_t **out, char *path, size_t plen, int depth,
                   HeraldError *err) {
  *out = NULL;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: *out = json_null(); return kHeraldOk;
    case LUA_TBOOLEAN: *out = json_boolean(lua_toboolean(L, idx)); return kHeraldOk;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        *out = json_integer((json_int_t)lua_tointeger(L, idx));
      } else {
        double d = lua_tonumber(L, idx);
        if (!isfinite(d)) return fail_at(err, path, "expected a finite number");
        *out = json_real(d);
      }
      return *out ? kHeraldOk : herald_error_set(err, kHeraldNoMemory, "out of memory");
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      *out = json_stringn(s, len);
      return *out ? kHeraldOk : fail_at(err, path, "string is not valid UTF-8");
    }
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL_SENTINEL) {
        *out = json_null();
        return kHeraldOk;
      }
      break;
    case LUA_TTABLE: return table_to_json(L, lua_absindex(L, idx), out, path, plen, depth, err);
    case LUA_TUSERDATA: {
      json_t *ctx = herald_lua_template_context(L, idx);
      if (ctx == NULL) break;
      *out = json_incref(ctx);
      return kHeraldOk;
    }
    default: break;
  }
  char what[64];
  snprintf(what, sizeof what, "cannot encode a %s value", luaL_typename(L, idx));
  return fail_at(err, path, what);
}

int herald_lua_tojson(lua_State *L, int idx, json_t **out, HeraldError *err) {
  char path[512] = "";
  return to_json(L, lua_absindex(L, idx), out, path, 0, 0, err);
}

void herald_lua_pushjson(lua_State *L, json_t *v) {
  luaL_checkstack(L, 4, "json decode");
  switch (json_typeof(v)) {
    case JSON_OBJECT: {
      lua_createtable(L, 0, (int)json_object_size(v));
      const char *k;
      json_t *x;
      json_object_foreach(v, k, x) {
        herald_lua_pushjson(L, x);
        lua_setfield(L, -2, k);
      }
      push_mark(L, OBJECT_MT);
      lua_setmetatable(L, -2);
      return;
    }
    case JSON_ARRAY: {
      lua_createtable(L, (int)json_array_size(v), 0);
      size_t i;
      json_t *x;
      json_array_foreach(v, i, x) {
        herald_lua_pushjson(L, x);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      push_mark(L, ARRAY_MT);
      lua_setmetatable(L, -2);
      return;
    }
    case JSON_STRING: lua_pushlstring(L, json_string_value(v), json_string_length(v)); return;
    case JSON_INTEGER: lua_pushinteger(L, (lua_Integer)json_integer_value(v)); return;
    case JSON_REAL: lua_pushnumber(L, json_real_value(v)); return;
    case JSON_TRUE: lua_pushboolean(L, 1); return;
    case JSON_FALSE: lua_pushboolean(L, 0); return;
    case JSON_NULL: lua_pushlightuserdata(L, NULL_SENTINEL); return;
  }
  lua_pushnil(L);
}

/* ---- the direct encoder ----
 * json.encode runs for every message a webhook sends and every API answer, so the common
 * case (compact output) writes text straight from the Lua value, without building a jansson
 * tree first. Its output is byte for byte what jansson's compact dump gives (tests compare the
 * two). Whatever it does not handle itself (an error to report with its path, a table mixing
 * integer and string keys, where jansson merges "1" and 1, a key with a NUL in it) it leaves
 * to the jansson path. */

typedef HeraldBuf Out;   /* text in data[0..len); no NUL kept after it */

static int out_put(Out *o, const char *s, size_t n) {
  if (o->cap - o->len < n && herald_buf_reserve(o, n)) return -1;
  memcpy(o->data + o->len, s, n);
  o->len += n;
  return 0;
}

static int out_char(Out *o, char c) {
  if (o->len == o->cap && herald_buf_reserve(o, 1)) return -1;
  o->data[o->len++] = c;
  return 0;
}

/* Whether any of the eight bytes at p is one a JSON string cannot hold as it is: from 0x80
 * (its own high bit), below 0x20 (the subtraction borrows), '"' or '\\' (a zero byte of q or b,
 * which the subtraction turns into 0xff). Once no byte has its high bit set, each test is exact. */
static int special8(const unsigned char *p) {
  const uint64_t ones = 0x0101010101010101ULL;
  uint64_t x;
  memcpy(&x, p, 8);
  uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
  return ((x | (x - ones * 0x20) | ((q - ones) & ~q) | ((b - ones) & ~b)) & (ones * 0x80)) != 0;
}

/* The length of the run at the start of s[0..len) that a JSON string holds as it is: ASCII
 * from 0x20 up, but for '"' and '\\'. Eight bytes at a time: most text is such runs. */
static size_t plain_run(const unsigned char *s, size_t len) {
  size_t i = 0;
  while (i + 8 <= len && !special8(s + i)) i += 8;
  /* fewer than eight left: the last eight bytes, overlapping some already checked */
  if (i < len && i + 8 > len && len >= 8 && !special8(s + len - 8)) return len;
  while (i < len && s[i] >= 0x20 && s[i] < 0x80 && s[i] != '"' && s[i] != '\\') i++;
  return i;
}

static int put_string(Out *o, const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str;
  /* Room for the text as it is and its quotes; only an escape, which writes more than it
   * reads, asks for more. */
  if (o->cap - o->len < len + 2 && herald_buf_reserve(o, len + 2)) return -1;
  char *d = o->data + o->len;
  *d++ = '"';
  size_t i = 0;
  for (;;) {
    size_t n = plain_run(s + i, len - i);
    memcpy(d, s + i, n);
    d += n;
    i += n;
    if (i == len) break;
    unsigned c = s[i];
    if (c >= 0x80) {
      /* the sequences jansson accepts; a Lua string ends in a NUL, which stops the check */
      int k = herald_utf8_sequence(s + i);
      if (k == 0) return -1;
      memcpy(d, s + i, (size_t)k);
      d += k;
      i += (size_t)k;
      continue;
    }
    char esc[8];
    const char *e = esc;
    switch (c) {
      case '"': e = "\\\""; break;
      case '\\': e = "\\\\"; break;
      case '\b': e = "\\b"; break;
      case '\f': e = "\\f"; break;
      case '\n': e = "\\n"; break;
      case '\r': e = "\\r"; break;
      case '\t': e = "\\t"; break;
      default: snprintf(esc, sizeof esc, "\\u%04X", c); break;
    }
    size_t elen = strlen(e);
    o->len = (size_t)(d - o->data);
    /* the escape for this byte, the rest of the text as it is, the closing quote */
    size_t need = elen + (len - i - 1) + 1;
    if (o->cap - o->len < need && herald_buf_reserve(o, need)) return -1;
    d = o->data + o->len;
    memcpy(d, e, elen);
    d += elen;
    i++;
  }
  *d++ = '"';
  o->len = (size_t)(d - o->data);
  return 0;
}

/* A double as jansson writes it: %.17g, always with a '.' or an exponent, the exponent with
 * no '+' and no leading zeros. */
static int put_real(Out *o, double d) {
  char buf[40];
  int n = snprintf(buf, sizeof buf - 2, "%.17g", d);
  if (n < 0 || (size_t)n >= sizeof buf - 2) return -1;
  for (char *c = buf; *c; c++)
    if (*c == ',') *c = '.';   /* a locale's decimal comma */
  if (strchr(buf, '.') == NULL && strchr(buf, 'e') == NULL) {
    memcpy(buf + n, ".0", 3);
    n += 2;
  }
  char *e = strchr(buf, 'e');
  if (e != NULL) {
    char *start = e + 1, *end = start + 1;
    if (*start == '-') start++;
    while (*end == '0') end++;
    if (end != start) {
      memmove(start, end, strlen(end) + 1);
    }
    n = (int)strlen(buf);
  }
  return out_put(o, buf, (size_t)n);
}

/* A jansson value (a template context: an endpoint read for a message) written the way
 * jansson's compact dump writes it, keys in insertion order; jansson's own callback dump
 * costs a webhook message more than building its whole payload. */
static int put_json(Out *o, const json_t *v, int depth) {
  if (depth > MAX_DEPTH) return -1;
  switch (json_typeof(v)) {
    case JSON_OBJECT: {
      if (out_char(o, '{')) return -1;
      /* json_object_keylen_foreach looks each key's entry up again: walked here instead */
      int first = 1;
      for (void *it = json_object_iter((json_t *)v); it != NULL;
           it = json_object_iter_next((json_t *)v, it)) {
        if ((!first && out_char(o, ',')) ||
            put_string(o, json_object_iter_key(it), json_object_iter_key_len(it)) ||
            out_char(o, ':') || put_json(o, json_object_iter_value(it), depth + 1))
          return -1;
        first = 0;
      }
      return out_char(o, '}');
    }
    case JSON_ARRAY: {
      if (out_char(o, '[')) return -1;
      for (size_t i = 0; i < json_array_size(v); i++)
        if ((i > 0 && out_char(o, ',')) || put_json(o, json_array_get(v, i), depth + 1)) return -1;
      return out_char(o, ']');
    }
    case JSON_STRING: return put_string(o, json_string_value(v), json_string_length(v));
    case JSON_INTEGER: {
      char buf[32];
      int n = snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
      return out_put(o, buf, (size_t)n);
    }
    case JSON_REAL: return put_real(o, json_real_value(v));
    case JSON_TRUE: return out_put(o, "true", 4);
    case JSON_FALSE: return out_put(o, "false", 5);
    case JSON_NULL: return out_put(o, "null", 4);
  }
  return -1;
}

int herald_lua_json_put(HeraldBuf *o, const json_t *v) { return put_json(o, v, 0); }

int herald_lua_json_put_string(HeraldBuf *o, const char *s, size_t len) {
  return put_string(o, s, len);
}

static int fast_value(lua_State *L, int idx, Out *o, int depth);

static int fast_table(lua_State *L, int idx, Out *o, int depth) {
  if (depth > MAX_DEPTH || !lua_checkstack(L, 4)) return -1;
  int kind = marked(L, idx);
  lua_Integer n = 0;
  if (kind == 0) kind = looks_like_array(L, idx, &n) ? 1 : 2;
  else if (kind == 1) n = (lua_Integer)lua_rawlen(L, idx);
  if (kind == 1) {
    if (out_char(o, '[')) return -1;
    for (lua_Integer i = 1; i <= n; i++) {
      if (i > 1 && out_char(o, ',')) return -1;
      lua_rawgeti(L, idx, i);
      int rc = fast_value(L, lua_gettop(L), o, depth + 1);
      lua_pop(L, 1);
      if (rc) return -1;
    }
    return out_char(o, ']');
  }
  if (out_char(o, '{')) return -1;
  int first = 1;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      lua_pop(L, 2);
      return -1;
    }
    size_t klen;
    const char *k = lua_tolstring(L, -2, &klen);
    /* jansson's keys end at a NUL, which can merge two keys: left to jansson */
    if (strlen(k) != klen || (!first && out_char(o, ',')) || put_string(o, k, klen) ||
        out_char(o, ':') || fast_value(L, lua_gettop(L), o, depth + 1)) {
      lua_pop(L, 2);
      return -1;
    }
    first = 0;
    lua_pop(L, 1);
  }
  return out_char(o, '}');
}

static int fast_value(lua_State *L, int idx, Out *o, int depth) {
  switch (lua_type(L, idx)) {
    case LUA_TNIL: return out_put(o, "null", 4);
    case LUA_TBOOLEAN: return lua_toboolean(L, idx) ? out_put(o, "true", 4) : out_put(o, "false", 5);
    case LUA_TNUMBER: {
      if (lua_isinteger(L, idx)) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%lld", (long long)lua_tointeger(L, idx));
        return out_put(o, buf, (size_t)n);
      }
      double d = lua_tonumber(L, idx);
      return isfinite(d) ? put_real(o, d) : -1;
    }
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      return put_string(o, s, len);
    }
    case LUA_TLIGHTUSERDATA:
      return lua_touserdata(L, idx) == NULL_SENTINEL ? out_put(o, "null", 4) : -1;
    case LUA_TTABLE: return fast_table(L, lua_absindex(L, idx), o, depth);
    case LUA_TUSERDATA: {
      json_t *ctx = herald_lua_template_context(L, idx);
      return ctx != NULL ? put_json(o, ctx, depth) : -1;
    }
    default: return -1;
  }
}

/* Pushes the compact JSON text of the value at idx and returns 1, or returns 0 (nothing
 * pushed) when the jansson path must say what is wrong with it. */
static int fast_encode(lua_State *L, int idx) {
  static Out o;   /* reused: Lua runs on one thread */
  o.len = 0;
  int top = lua_gettop(L);
  int rc = fast_value(L, lua_absindex(L, idx), &o, 0);
  lua_settop(L, top);
  if (rc == 0) lua_pushlstring(L, o.data, o.len);
  if (o.cap > (1u << 20)) {   /* a large document's buffer is not kept */
    free(o.data);
    o.data = NULL;
    o.cap = 0;
  }
  return rc == 0;
}

static int l_encode(lua_State *L) {
  luaL_checkany(L, 1);
  size_t flags = JSON_COMPACT | JSON_ENCODE_ANY;
  if (lua_istable(L, 2)) {
    if (lua_getfield(L, 2, "pretty"), lua_toboolean(L, -1)) flags = JSON_INDENT(2) | JSON_ENCODE_ANY;
    if (lua_getfield(L, 2, "sort"), lua_toboolean(L, -1)) flags |= JSON_SORT_KEYS;
    lua_pop(L, 2);
  }
  /* {jansson = true} takes the jansson path for everything: tests compare the two */
  int jansson = 0;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "jansson");
    jansson = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  if (flags == (JSON_COMPACT | JSON_ENCODE_ANY) && !jansson && fast_encode(L, 1)) return 1;
  json_t *v = NULL;
  HeraldError err = {0};
  if (herald_lua_tojson(L, 1, &v, &err) != kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  char *s = json_dumps(v, flags);
  json_decref(v);
  if (s == NULL) return luaL_error(L, "out of memory");
  lua_pushstring(L, s);
  free(s);
  return 1;
}

static int l_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  json_error_t jerr;
  json_t *v = json_loadb(s, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
  if (v == NULL) {
    lua_pushnil(L);
    lua_pushfstring(L, "line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    return 2;
  }
  herald_lua_pushjson(L, v);
  json_decref(v);
  return 1;
}

static int mark_table(lua_State *L, const char *mt) {
  if (lua_isnoneornil(L, 1)) lua_newtable(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  push_mark(L, mt);
  lua_setmetatable(L, 1);
  return 1;
}

static int l_array(lua_State *L) { return mark_table(L, ARRAY_MT); }
static int l_object(lua_State *L) { return mark_table(L, OBJECT_MT); }

static int l_is_array(lua_State *L) {
  lua_pushboolean(L, lua_istable(L, 1) && marked(L, 1) == 1);
  return 1;
}

int luaopen_herald_core_json(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"encode", l_encode}, {"decode", l_decode},     {"array", l_array},
    {"object", l_object}, {"is_array", l_is_array}, {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  lua_pushlightuserdata(L, NULL_SENTINEL);
  lua_setfield(L, -2, "null");
  return 1;
}
