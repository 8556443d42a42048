/* herald.core.deliver: the signing the push channels need, with OpenSSL's libcrypto.
 *
 * FCM HTTP v1 gets its OAuth2 access token by posting a JWT signed RS256 with the service
 * account's RSA key; APNs takes a provider token signed ES256 with the team's P-256 key. Both
 * are JWS compact serialisations, so the module offers base64url and one sign function; the
 * header and claims are JSON the Lua side writes. ES256 signatures are the raw r || s of
 * RFC 7518 §3.4, not OpenSSL's DER. */
#include <lauxlib.h>
#include <openssl/bio.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <string.h>

#include "lua/context.h"
#include "lua/modules.h"
#include "runtime/claimer.h"
#include "runtime/deliver.h"

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void push_b64url(lua_State *L, const unsigned char *s, size_t n) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  size_t i = 0;
  for (; i + 2 < n; i += 3) {
    unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
    luaL_addchar(&b, B64URL[v >> 18 & 63]);
    luaL_addchar(&b, B64URL[v >> 12 & 63]);
    luaL_addchar(&b, B64URL[v >> 6 & 63]);
    luaL_addchar(&b, B64URL[v & 63]);
  }
  if (n - i == 1) {
    unsigned v = (unsigned)s[i] << 16;
    luaL_addchar(&b, B64URL[v >> 18 & 63]);
    luaL_addchar(&b, B64URL[v >> 12 & 63]);
  } else if (n - i == 2) {
    unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8;
    luaL_addchar(&b, B64URL[v >> 18 & 63]);
    luaL_addchar(&b, B64URL[v >> 12 & 63]);
    luaL_addchar(&b, B64URL[v >> 6 & 63]);
  }
  luaL_pushresult(&b);
}

/* b64url(s) -> s in unpadded base64url */
static int l_b64url(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  push_b64url(L, (const unsigned char *)s, n);
  return 1;
}

/* Converts a DER ECDSA signature to the fixed-width r || s (32 bytes each for P-256). */
static int der_to_raw(const unsigned char *der, size_t len, unsigned char raw[64]) {
  const unsigned char *p = der;
  ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
  if (sig == NULL) return 0;
  const BIGNUM *r = NULL, *s = NULL;
  ECDSA_SIG_get0(sig, &r, &s);
  int ok = BN_bn2binpad(r, raw, 32) == 32 && BN_bn2binpad(s, raw + 32, 32) == 32;
  ECDSA_SIG_free(sig);
  return ok;
}

/* sign(alg, pem_private_key, data) -> base64url signature, or nil, err.
 * alg is "RS256" (RSA PKCS#1 v1.5 with SHA-256) or "ES256" (P-256 ECDSA with SHA-256). */
static int l_sign(lua_State *L) {
  const char *alg = luaL_checkstring(L, 1);
  size_t pem_len, data_len;
  const char *pem = luaL_checklstring(L, 2, &pem_len);
  const char *data = luaL_checklstring(L, 3, &data_len);
  int es = strcmp(alg, "ES256") == 0;
  if (!es && strcmp(alg, "RS256") != 0) return luaL_error(L, "sign: unknown algorithm '%s' (RS256 or ES256)", alg);

  BIO *bio = BIO_new_mem_buf(pem, (int)pem_len);
  EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  if (key == NULL) {
    lua_pushnil(L);
    lua_pushstring(L, "the private key is not a PEM private key");
    return 2;
  }
  int type = EVP_PKEY_base_id(key);
  if ((es && type != EVP_PKEY_EC) || (!es && type != EVP_PKEY_RSA)) {
    EVP_PKEY_free(key);
    lua_pushnil(L);
    lua_pushfstring(L, "%s needs %s key", alg, es ? "an EC P-256" : "an RSA");
    return 2;
  }
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned char sig[1024];
  size_t sig_len = sizeof sig;
  int ok = ctx != NULL && EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) == 1 &&
           EVP_DigestSignUpdate(ctx, data, data_len) == 1 &&
           EVP_DigestSignFinal(ctx, NULL, &sig_len) == 1 && sig_len <= sizeof sig &&
           EVP_DigestSignFinal(ctx, sig, &sig_len) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(key);
  if (!ok) {
    lua_pushnil(L);
    lua_pushstring(L, "signing failed");
    return 2;
  }
  if (es) {
    unsigned char raw[64];
    if (!der_to_raw(sig, sig_len, raw)) {
      lua_pushnil(L);
      lua_pushstring(L, "ES256 needs a P-256 key");
      return 2;
    }
    push_b64url(L, raw, sizeof raw);
  } else {
    push_b64url(L, sig, sig_len);
  }
  return 1;
}

/* defer_batch{{id=, due_ms=}, ...}: claimed rows waiting for a rate-limit slot go back to
 * PENDING at their slot, in one transaction, without the claims counting as attempts. The list
 * is read before the transaction begins: reading it can raise, which must not leave it open. */
static int l_defer_batch(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  HeraldStore *store = herald_context_store(L);
  lua_Integer n = luaL_len(L, 1);
  int64_t *rows = lua_newuserdatauv(L, sizeof *rows * 2 * (size_t)(n > 0 ? n : 1), 0);
  for (lua_Integer i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    luaL_argcheck(L, lua_istable(L, -1), 1, "a list of {id=, due_ms=}");
    lua_getfield(L, -1, "id");
    lua_getfield(L, -2, "due_ms");
    rows[2 * i] = (int64_t)lua_tointeger(L, -2);
    rows[2 * i + 1] = (int64_t)lua_tointeger(L, -1);
    lua_pop(L, 3);
  }
  HeraldError err = {0};
  if (herald_store_begin(store, &err) != kHeraldOk) return luaL_error(L, "%s", err.msg);
  int64_t claimer = 0;
  if (herald_claimer_id(store, &claimer, &err) != kHeraldOk) {
    herald_store_rollback(store);
    return luaL_error(L, "%s", err.msg);
  }
  for (lua_Integer i = 0; i < n; i++) {
    if (herald_deliver_defer(store, claimer, rows[2 * i], rows[2 * i + 1], &err) != kHeraldOk) {
      herald_store_rollback(store);
      return luaL_error(L, "%s", err.msg);
    }
  }
  if (herald_store_commit(store, &err) != kHeraldOk) return luaL_error(L, "%s", err.msg);
  return 0;
}

/* transaction(fn, ...) -> fn's results: fn runs inside one store transaction, committed when it
 * returns and rolled back when it raises (the error is raised again). A claim's preparation
 * reads an endpoint and maybe a template per row; in one transaction SQLite takes its locks
 * once per claim instead of once per statement. fn must not wait (yield). */
static int l_transaction(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  HeraldStore *store = herald_context_store(L);
  HeraldError err = {0};
  if (herald_store_begin(store, &err) != kHeraldOk) return luaL_error(L, "%s", err.msg);
  int nargs = lua_gettop(L) - 1;
  if (lua_pcall(L, nargs, LUA_MULTRET, 0) != LUA_OK) {
    herald_store_rollback(store);
    return lua_error(L);
  }
  if (herald_store_commit(store, &err) != kHeraldOk) return luaL_error(L, "%s", err.msg);
  return lua_gettop(L);
}

int luaopen_herald_core_deliver(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"b64url", l_b64url}, {"sign", l_sign}, {"defer_batch", l_defer_batch},
    {"transaction", l_transaction}, {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
