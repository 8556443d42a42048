/* herald.core.readline: line input for the REPL over libedit's readline-compatible API.
 *
 * On a terminal, lines come from libedit (editing, history recall with the arrow keys). When
 * stdin is not a terminal the same call reads plain lines from stdin with no prompt and no
 * echo, so piped input gives output a program can compare. History lives in libedit's list;
 * the REPL bounds it with history_limit and keeps it in a file between sessions. */
#include <editline/readline.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lua/modules.h"

static int editor_ready;

/* Once per process, before any history call: libedit's rl_initialize discards the history it
 * holds, so it must never run after the history is loaded. libedit decides at initialisation
 * whether input is UTF-8 from the locale's character type, so that is set here; only the
 * terminal REPL calls these functions, piped runs never change the locale. ~/.editrc sections
 * apply to us under the name "herald". */
static void editor_init(void) {
  if (editor_ready) return;
  editor_ready = 1;
  setlocale(LC_CTYPE, "");
  rl_readline_name = "herald";
  rl_initialize();
  using_history();
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty(STDIN_FILENO));
  return 1;
}

/* Reads one line of stdin without its newline into the Lua stack; returns 0 at EOF with nothing
 * read. A luaL_Buffer keeps a memory error from leaking. */
static int read_plain_line(lua_State *L) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int got = 0;
  for (;;) {
    char *p = luaL_prepbuffer(&b);
    if (fgets(p, LUAL_BUFFERSIZE, stdin) == NULL) break;
    size_t n = strlen(p);
    got = 1;
    if (n > 0 && p[n - 1] == '\n') {
      luaL_addsize(&b, n - 1);
      break;
    }
    luaL_addsize(&b, n);
  }
  luaL_pushresult(&b);
  return got;
}

/* readline([prompt]) -> line, or nil at end of input, or nil, message on a read error. */
static int l_readline(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "");
  /* Results printed before the prompt must be visible before we block. */
  fflush(stdout);
  if (!isatty(STDIN_FILENO)) {
    clearerr(stdin);
    int got = read_plain_line(L);
    if (ferror(stdin)) {
      lua_pushnil(L);
      lua_pushfstring(L, "cannot read stdin: %s", strerror(errno));
      return 2;
    }
    if (!got) {
      lua_pushnil(L);
      return 1;
    }
    return 1;
  }
  editor_init();
  char *line = readline(prompt);
  if (line == NULL) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushstring(L, line);
  free(line);
  return 1;
}

static int l_add_history(lua_State *L) {
  const char *line = luaL_checkstring(L, 1);
  editor_init();
  add_history(line);
  return 0;
}

/* history_limit(n): keep at most the n most recent entries, in memory and in saved files. */
static int l_history_limit(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n > 0 && n <= 1000000, 1, "must be between 1 and 1000000");
  editor_init();
  stifle_history((int)n);
  return 0;
}

static int l_history_length(lua_State *L) {
  editor_init();
  lua_pushinteger(L, history_length);
  return 1;
}

/* load_history(path) -> true, or nil, message. A missing file is an empty history. */
static int l_load_history(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  editor_init();
  if (access(path, F_OK) != 0 && errno == ENOENT) {
    lua_pushboolean(L, 1);
    return 1;
  }
  int rc = read_history(path);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot read history %s: %s", path, strerror(rc));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* save_history(path) -> true, or nil, message. The file is created private to the user: what
 * was typed at the prompt may hold addresses or tokens. */
static int l_save_history(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  editor_init();
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot write history %s: %s", path, strerror(errno));
    return 2;
  }
  close(fd);
  int rc = write_history(path);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot write history %s: %s", path, strerror(rc));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

int luaopen_herald_core_readline(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"isatty", l_isatty},
    {"readline", l_readline},
    {"add_history", l_add_history},
    {"history_limit", l_history_limit},
    {"history_length", l_history_length},
    {"load_history", l_load_history},
    {"save_history", l_save_history},
    {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
