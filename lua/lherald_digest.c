/* herald.core.digest: message digests from GLib's checksum API.
 *   md5_hex(s) -> the lowercase hex MD5 of s (Baidu push signs its requests with it)
 *   hmac_sha256_hex(key, s) -> the lowercase hex HMAC-SHA256 of s under key (webhook
 *     profiles sign their calls with it) */
#include <glib.h>
#include <lauxlib.h>

#include "lua/modules.h"

static int l_md5_hex(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  gchar *hex = g_compute_checksum_for_data(G_CHECKSUM_MD5, (const guchar *)s, len);
  if (hex == NULL) return luaL_error(L, "md5: not available");
  lua_pushstring(L, hex);
  g_free(hex);
  return 1;
}

static int l_hmac_sha256_hex(lua_State *L) {
  size_t klen, len;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *s = luaL_checklstring(L, 2, &len);
  gchar *hex = g_compute_hmac_for_data(G_CHECKSUM_SHA256, (const guchar *)key, klen,
                                       (const guchar *)s, len);
  if (hex == NULL) return luaL_error(L, "hmac_sha256: not available");
  lua_pushstring(L, hex);
  g_free(hex);
  return 1;
}

int luaopen_herald_core_digest(lua_State *L) {
  static const luaL_Reg fns[] = {{"md5_hex", l_md5_hex}, {"hmac_sha256_hex", l_hmac_sha256_hex}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
