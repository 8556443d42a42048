/* herald.core.readline: line input for the REPL over libedit's readline-compatible API.
 *
 * On a terminal, lines come from libedit (editing, history recall with the arrow keys). When
 * stdin is not a terminal the same call reads plain lines from stdin with no prompt and no
 * echo, so piped input gives output a program can compare. History lives in libedit's list;
 * the REPL bounds it with history_limit and keeps it in a file between sessions.
 *
 * Tab completion asks a Lua function (set_completer) for candidates while readline waits; the
 * call is protected, so a failing completer offers nothing instead of unwinding libedit.
 * Ctrl-C while an input runs follows lua.c: the signal only sets a flag, and a count hook on
 * the input's coroutine raises "interrupted" at its next check, inside Lua, never from the
 * signal handler. */
#include <editline/readline.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lua/modules.h"

static int editor_ready;

/* Set while readline() runs so the completion callbacks can reach Lua. */
static lua_State *completing_L;
static int completer_ref = LUA_NOREF;
static size_t completion_next;

static volatile sig_atomic_t interrupted;
static int catching;
static struct sigaction saved_sigint;

/* Lua's word characters plus the separators of a field path: everything else ends a word. */
static const char word_breaks[] = " \t\n\"\\'`@$><=;|&{}()[],+-*/%^#~";

/* Generator for rl_completion_matches: hands out the candidates table at the top of
 * completing_L's stack one copy at a time (libedit frees them). */
static char *completion_entry(const char *text, int state) {
  (void)text;
  lua_State *L = completing_L;
  if (state == 0) completion_next = 1;
  while (completion_next <= lua_rawlen(L, -1)) {
    lua_rawgeti(L, -1, (lua_Integer)completion_next++);
    const char *c = lua_tostring(L, -1);
    char *copy = c ? strdup(c) : NULL;
    lua_pop(L, 1);
    if (copy) return copy;
  }
  return NULL;
}

static char **attempt_completion(const char *text, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1;  /* never fall back to file names */
  lua_State *L = completing_L;
  if (L == NULL || completer_ref == LUA_NOREF || !lua_checkstack(L, 4)) return NULL;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, completer_ref);
  lua_pushstring(L, text);
  char **matches = NULL;
  if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_istable(L, -1) && lua_rawlen(L, -1) > 0)
    matches = rl_completion_matches(text, completion_entry);
  lua_settop(L, top);
  return matches;
}

/* Once per process, before any history call: libedit's rl_initialize discards the history it
 * holds, so it must never run after the history is loaded. libedit decides at initialisation
 * whether input is UTF-8 from the locale's character type, so that is set here; only the
 * terminal REPL calls these functions, piped runs never change the locale. ~/.editrc sections
 * apply to us under the name "herald". */
static void editor_init(lua_State *L) {
  if (editor_ready) return;
  setlocale(LC_CTYPE, "");
  rl_readline_name = "herald";
  rl_attempted_completion_function = attempt_completion;
  rl_basic_word_break_characters = word_breaks;
  rl_completion_append_character = '\0';
  if (rl_initialize() != 0) luaL_error(L, "cannot initialise line editing on this terminal");
  using_history();
  editor_ready = 1;
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

/* readline([prompt]) -> line; nil at end of input; false when Ctrl-C (caught with
 * catch_interrupt) abandoned the line; nil, message on a read error. */
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
    if (!got) lua_pushnil(L);
    return 1;
  }
  editor_init(L);
  completing_L = L;
  interrupted = 0;
  char *line = readline(prompt);
  completing_L = NULL;
  if (line == NULL && catching && interrupted) {
    interrupted = 0;
    lua_pushboolean(L, 0);
    return 1;
  }
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
  editor_init(L);
  add_history(line);
  return 0;
}

/* history_limit(n): keep at most the n most recent entries, in memory and in saved files. */
static int l_history_limit(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n > 0 && n <= 1000000, 1, "must be between 1 and 1000000");
  editor_init(L);
  stifle_history((int)n);
  return 0;
}

static int l_history_length(lua_State *L) {
  editor_init(L);
  lua_pushinteger(L, history_length);
  return 1;
}

/* load_history(path) -> true, or nil, message. A missing file is an empty history. */
static int l_load_history(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  editor_init(L);
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
  editor_init(L);
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot write history %s: %s", path, strerror(errno));
    return 2;
  }
  if (close(fd) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot write history %s: %s", path, strerror(errno));
    return 2;
  }
  int rc = write_history(path);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot write history %s: %s", path, strerror(rc));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* set_completer(fn | nil): fn(word) returns the list of words that may replace word. */
static int l_set_completer(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, completer_ref);
  completer_ref = LUA_NOREF;
  if (!lua_isnoneornil(L, 1)) {
    lua_pushvalue(L, 1);
    completer_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
}

/* catch_interrupt(on): while on, Ctrl-C no longer ends the process: at a prompt readline()
 * returns false, and an input hooked with watch_interrupt stops. Off restores the previous
 * handler and forgets a Ctrl-C nobody acted on. */
static int l_catch_interrupt(lua_State *L) {
  int on = lua_toboolean(L, 1);
  if (on && !catching) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: libedit's blocked read must fail with EINTR so readline() returns. */
    sa.sa_flags = 0;
    interrupted = 0;
    if (sigaction(SIGINT, &sa, &saved_sigint) != 0)
      return luaL_error(L, "cannot catch SIGINT: %s", strerror(errno));
    catching = 1;
  } else if (!on && catching) {
    if (sigaction(SIGINT, &saved_sigint, NULL) != 0)
      return luaL_error(L, "cannot restore SIGINT: %s", strerror(errno));
    catching = 0;
    interrupted = 0;
  }
  return 0;
}

int herald_readline_catching(void) { return catching; }
int herald_readline_interrupted(void) { return catching && interrupted; }

int herald_readline_take_interrupt(void) {
  int was = catching && interrupted;
  interrupted = 0;
  return was;
}

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  if (!interrupted) return;
  interrupted = 0;
  luaL_error(L, "interrupted");
}

/* watch_interrupt([thread]): thread (default: the running one) stops with an "interrupted"
 * error at the next check after a caught Ctrl-C. Coroutines it creates inherit the hook. */
static int l_watch_interrupt(lua_State *L) {
  lua_State *co = lua_isnoneornil(L, 1) ? L : lua_tothread(L, 1);
  luaL_argexpected(L, co != NULL, 1, "thread");
  lua_sethook(co, interrupt_hook, LUA_MASKCOUNT, 1000);
  return 0;
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
    {"set_completer", l_set_completer},
    {"catch_interrupt", l_catch_interrupt},
    {"watch_interrupt", l_watch_interrupt},
    {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
