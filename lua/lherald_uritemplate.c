/* herald.core.uritemplate: templates of URIs, whose {{x}} outputs are percent-encoded
 * (HERALD_TEMPLATE_ESCAPE_URI) while the template's own text stays as written; {{{x}}} stays
 * raw, the author's explicit choice. The email channel renders a profile's List-Unsubscribe
 * with it, so an endpoint's value cannot end a URI, add a parameter or start another URI.
 *
 * compile(text [, name]) -> template | nil, err
 *   template:render([ctx]) -> text | nil, err
 *
 * ctx is nil or a template context (herald.core.template's context(table) or
 * endpoint_context(id)): a table is converted by the caller with context(), so endpoint data
 * reads as it does in the message's other templates (an empty list is falsy). herald.core.template
 * compiles with an escape flag only (HTML or none); this module is the way to the URI mode. */
#include <lauxlib.h>

#include "lua/lherald_json.h"
#include "lua/modules.h"
#include "runtime/template.h"

#define URI_TEMPLATE_MT "herald.UriTemplate"

typedef struct {
  HeraldTemplate *t;
  HeraldTemplateOutput out;  /* reused by every render: a render does not yield */
} UriTemplateBox;

static int l_compile(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *name = luaL_optstring(L, 2, "template");
  UriTemplateBox *box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = (UriTemplateBox){0};
  luaL_setmetatable(L, URI_TEMPLATE_MT);
  HeraldError err = {0};
  if (herald_template_compile(name, text, len, HERALD_TEMPLATE_ESCAPE_URI, &box->t, &err) !=
      kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  return 1;
}

static int template_render(lua_State *L) {
  UriTemplateBox *box = luaL_checkudata(L, 1, URI_TEMPLATE_MT);
  luaL_argcheck(L, box->t != NULL, 1, "template is closed");
  const json_t *ctx = NULL;
  if (!lua_isnoneornil(L, 2)) {
    ctx = herald_lua_template_context(L, 2);
    luaL_argexpected(L, ctx != NULL, 2, "template context");
  }
  HeraldError err = {0};
  if (herald_template_render(box->t, ctx, NULL, NULL, &box->out, &err) != kHeraldOk) {
    lua_pushnil(L);
    lua_pushstring(L, err.msg);
    return 2;
  }
  lua_pushlstring(L, box->out.data, box->out.len);
  return 1;
}

static int template_gc(lua_State *L) {
  UriTemplateBox *box = luaL_checkudata(L, 1, URI_TEMPLATE_MT);
  herald_template_free(box->t);
  box->t = NULL;
  herald_template_output_free(&box->out);
  return 0;
}

int luaopen_herald_core_uritemplate(lua_State *L) {
  static const luaL_Reg methods[] = {{"render", template_render}, {NULL, NULL}};
  if (luaL_newmetatable(L, URI_TEMPLATE_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, template_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"compile", l_compile}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
