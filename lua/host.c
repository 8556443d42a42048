#include "lua/host.h"

#include <lauxlib.h>
#include <lualib.h>
#include <string.h>

#include "lua/context.h"
#include "lua/modules.h"

_Static_assert(LUA_EXTRASPACE >= sizeof(void *), "extra space holds a pointer");

static int plain_resume(lua_State *L, lua_State *co, int nargs, int *nresults) {
  return lua_resume(co, L, nargs, nresults);
}

static HeraldStateInfo host_info = {0, NULL, plain_resume};

HeraldStateInfo *herald_state_info(lua_State *L) {
  HeraldStateInfo *info = *(HeraldStateInfo **)lua_getextraspace(L);
  return info ? info : &host_info;
}

int herald_host_path_below_cwd(const char *path) {
  if (path[0] == '\0' || path[0] == '/') return 0;
  const char *s = path;
  while ((s = strstr(s, "..")) != NULL) {
    int starts = (s == path || s[-1] == '/');
    int ends = (s[2] == '\0' || s[2] == '/');
    if (starts && ends) return 0;
    s += 2;
  }
  return 1;
}

/* Whether a traceback line is one of herald's own frames: the stdlib's Lua, the C function
 * `error` it raises a definition error with, or the runtime's tail calls into a script. */
static int own_frame(const char *line, size_t len, const char *stdlib, size_t stdlib_len) {
  static const char raise[] = "\t[C]: in function 'error'", tail[] = "\t(...tail calls...)";
  if (len == sizeof raise - 1 && memcmp(line, raise, len) == 0) return 1;
  if (len == sizeof tail - 1 && memcmp(line, tail, len) == 0) return 1;
  return len > stdlib_len + 1 && line[0] == '\t' && memcmp(line + 1, stdlib, stdlib_len) == 0 &&
         line[1 + stdlib_len] == '/';
}

/* The traceback at the top of the stack without herald's own frames, when the error is the
 * user's (its message names their file:line, as a definition error raised by the stdlib does):
 * the frames of campaign.lua that checked a definition say nothing about the script, and a
 * traceback left with no frame is dropped. An error raised in the stdlib itself (a fault of
 * herald's) keeps every frame. */
void herald_host_drop_own_frames(lua_State *L, const char *msg) {
  const char *stdlib = herald_context()->stdlib_dir;
  if (stdlib == NULL || strncmp(msg, stdlib, strlen(stdlib)) == 0) return;
  size_t stdlib_len = strlen(stdlib), len;
  const char *tb = lua_tostring(L, -1);
  if (tb == NULL) return;
  len = lua_rawlen(L, -1);
  static const char head[] = "\nstack traceback:";
  const char *frames = NULL;
  for (const char *p = tb; (p = strstr(p, head)) != NULL; p++) frames = p;
  if (frames == NULL) return;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, tb, (size_t)(frames - tb));
  int kept = 0;
  const char *line = frames + sizeof head - 1, *end = tb + len;
  while (line < end) {
    if (*line == '\n') line++;
    const char *nl = memchr(line, '\n', (size_t)(end - line));
    size_t n = nl ? (size_t)(nl - line) : (size_t)(end - line);
    if (n > 0 && !own_frame(line, n, stdlib, stdlib_len)) {
      if (kept++ == 0) luaL_addlstring(&b, head, sizeof head - 1);
      luaL_addchar(&b, '\n');
      luaL_addlstring(&b, line, n);
    }
    line += n;
  }
  luaL_pushresult(&b);
  lua_remove(L, -2);
}

int herald_host_traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  herald_host_drop_own_frames(L, msg);
  return 1;
}

int herald_host_pcall(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, herald_host_traceback);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  return status;
}

void herald_host_open_modules(lua_State *L) {
  HeraldContext *ctx = herald_context();
  if (ctx->stdlib_dir != NULL) {
    lua_getglobal(L, "package");
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "path");
      lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", ctx->stdlib_dir, ctx->stdlib_dir,
                      lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
      lua_setfield(L, -3, "path");
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  herald_modules_preload(L, 0);
}

lua_State *herald_host_new(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return NULL;
  *(HeraldStateInfo **)lua_getextraspace(L) = &host_info;
  luaL_openlibs(L);
  herald_host_open_modules(L);
  return L;
}
