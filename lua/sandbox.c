/* The sandbox for campaign code.
 *
 * Why a separate state. Campaign code is untrusted in the sense that a typo or a runaway loop
 * must not take the runtime down, and a script must not reach the machine (files, processes)
 * or other scripts. A lua_State of its own gives three things a shared state cannot: an
 * allocator of its own, so memory is counted and capped per sandbox (the allocator refuses to
 * grow past the cap, Lua raises its memory error, the call fails, the garbage is collected
 * and the state goes on; the error has no line, as Lua raises it without a message handler);
 * a string metatable of its own (the shared string metatable is per state in Lua, so nothing
 * a sandbox does reaches the host or another sandbox); and a registry that holds only the
 * libraries we chose. io, debug, package and the C loaders are
 * never opened in this state, so no path through a metatable or upvalue can lead to them.
 *
 * Environments. Each loaded chunk gets its own _ENV table whose metatable falls back to an
 * allow-list: base functions, copies of the library tables (made per chunk on first use, so
 * `string.upper = nil` in one script changes nothing for another), a text-only `load` whose
 * default environment is the caller's, a `require` limited to herald modules, and a read-only
 * view of `herald`. Reading any other name raises ("undefined global 'x'", or "io is not
 * available in campaign code" for what we left out on purpose); assigning creates a global of
 * that chunk. Bytecode is refused before the parser sees it: crafted bytecode can crash Lua.
 *
 * The instruction budget. A count hook fires every BUDGET_STEP instructions (performance.md:
 * any count hook costs ~60%, so the step is large) and subtracts from a budget shared by every
 * thread of the state (lua_newthread copies the hook). Once the budget is spent the hook
 * re-arms itself with a count of 1 on whichever thread it fires in and raises on every
 * instruction: a pcall or a coroutine that catches the error runs at most one more
 * instruction before the error is raised again (see below for handlers), so the error
 * reaches the outermost herald_sandbox_pcall, which reports the budget message it recorded
 * when the budget ran out. The budget is reset by each top-level call or task resume, never
 * by nested ones (otherwise spawning a task would refill it). C functions whose work grows
 * with an argument (table.move/insert/remove, pattern matching, string.rep, creating
 * coroutines) charge the budget up front, and a wall-clock limit checked by the same hook is
 * a backstop for the rest (sorting or copying big tables inside one C call).
 *
 * Patterns. Lua's matcher backtracks in C, where no hook fires, and its cost can be
 * exponential in the number of variable-length items: ("a"):rep(300):find(".-.-.-b") runs
 * for seconds. Before string.find/match/gmatch/gsub run (the library functions and the
 * string methods alike: the sandbox's string metatable points at the same wrapped table) we
 * compute an upper bound of the matcher's steps from the pattern and the subject, refuse the
 * call when the bound exceeds PATTERN_STEP_LIMIT, and charge the budget otherwise. See
 * pattern_cost() for the model.
 *
 * Where hooks are off. Lua runs __gc metamethods with hooks disabled, an error raised by a
 * hook calls the message handler while still inside the hook, and a coroutine killed by the
 * hook keeps hooks disabled for the __close handlers that closing it runs. Code in any of
 * those places could loop beyond the budget's reach, so setmetatable refuses __gc in campaign
 * code, xpcall skips the script's handler once the budget is spent, and a coroutine that
 * died by an error is never reset (coroutine.close, coroutine.wrap and finished tasks leave
 * its to-be-closed variables alone). */
#include "lua/sandbox.h"

#include <ctype.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lua/context.h"
#include "lua/host.h"
#include "lua/modules.h"
#include "lua/task.h"

#define DEFAULT_MEMORY ((size_t)64 << 20)
#define DEFAULT_BUDGET 100000000LL
#define DEFAULT_TIME_MS 10000LL
#define BUDGET_STEP 1000          /* instructions between two hook calls */
#define MEMORY_SLACK ((size_t)64 << 10) /* what the host may add to report an error */
#define MAX_PATTERN_LEN 65536

/* Upper bound of matcher steps one call may take. Measured (release build, this machine):
 * where the bound is tight, e.g. ("a"):rep(4000):find("%w+="), 4.8e7 estimated steps ran
 * in 0.07 s; for backtracking patterns the bound is one to two orders above the real work.
 * So a call admitted at the limit runs at worst for about a tenth of a second, while
 * ordinary uses (dates, CSV fields, gsub over templates of tens of KB, trimming with anchors)
 * stay orders of magnitude below it. */
#define PATTERN_STEP_LIMIT 5e7
/* Matcher steps charged as one VM instruction. */
#define PATTERN_STEPS_PER_INSTRUCTION 8

#define ALLOW_KEY "herald.sandbox.allow"   /* name -> value scripts may read */
#define LIBS_KEY "herald.sandbox.libs"     /* name -> library table copied per chunk */
#define LIBMT_KEY "herald.sandbox.libmt"   /* name -> metatable of that library's copies */
#define ENVMT_KEY "herald.sandbox.envmt"   /* metatable of every chunk environment */

typedef struct {
  HeraldStateInfo info;
  lua_State *L;
  size_t limit, used;
  int slack;             /* host code reporting an error may exceed the cap a little */
  int memory_hit;        /* the allocator refused during the current call */
  long long budget, remaining;
  long long time_limit_ms;
  struct timespec started;
  int exhausted;         /* budget or time spent: the hook raises on every instruction */
  int depth;             /* nested calls and resumes share the outer budget */
  char exhausted_msg[320];
  int warn_on, warn_cont;
} HeraldSandbox;

/* Names left out on purpose get a message saying so rather than "undefined global". */
static const char *const denied_globals[] = {
  "io", "debug", "package", "dofile", "loadfile", "collectgarbage", "loadstring", "warn",
  "module", "setfenv", "getfenv", "newproxy", NULL,
};

static const char *const allowed_base[] = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "print", "rawequal",
  "rawget", "rawlen", "rawset", "select", "getmetatable", "tonumber", "tostring", "type",
  "_VERSION", NULL,  /* and wrapped: setmetatable, xpcall, load, require */
};

static const char *const os_allowed[] = {"time", "clock", "date", "difftime", "getenv", NULL};
static const char *const os_denied[] = {"execute", "exit", "remove", "rename", "tmpname",
                                        "setlocale", NULL};

static int in_list(const char *const *list, const char *s) {
  for (; *list != NULL; list++)
    if (strcmp(*list, s) == 0) return 1;
  return 0;
}

static HeraldSandbox *sandbox_of(lua_State *L) {
  return (HeraldSandbox *)herald_state_info(L)->sandbox;
}

int herald_sandbox_is(lua_State *L) { return herald_state_info(L)->sandboxed; }

/* ---- memory ------------------------------------------------------------------------------ */

static void *sandbox_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  HeraldSandbox *sb = ud;
  size_t old = ptr != NULL ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    sb->used -= old;
    return NULL;
  }
  if (nsize > old) {
    /* Between calls only host bookkeeping runs (recording a task's end, loading a chunk). */
    size_t cap = sb->limit + (sb->slack || sb->depth == 0 ? MEMORY_SLACK : 0);
    if (sb->used > cap || nsize - old > cap - sb->used) {
      sb->memory_hit = 1;
      return NULL;
    }
  }
  void *p = realloc(ptr, nsize);
  if (p == NULL) return NULL;
  sb->used = sb->used - old + nsize;
  return p;
}

static void push_limit_text(lua_State *L, size_t bytes) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.4g MiB", (double)bytes / (1024.0 * 1024.0));
  lua_pushstring(L, buf);
}

static int sandbox_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "herald: unprotected error in a sandbox: %s\n", msg ? msg : "?");
  return 0;  /* Lua aborts */
}

/* Like luaL_newstate's warning function: off until "@on", continued pieces joined. */
static void sandbox_warn(void *ud, const char *msg, int tocont) {
  HeraldSandbox *sb = ud;
  if (!sb->warn_cont && !tocont && *msg == '@') {
    if (strcmp(msg, "@on") == 0) sb->warn_on = 1;
    else if (strcmp(msg, "@off") == 0) sb->warn_on = 0;
    return;
  }
  if (sb->warn_on) {
    if (!sb->warn_cont) fputs("herald: sandbox warning: ", stderr);
    fputs(msg, stderr);
    if (!tocont) fputc('\n', stderr);
  }
  sb->warn_cont = tocont;
}

/* ---- budget ------------------------------------------------------------------------------ */

static long long elapsed_ms(const HeraldSandbox *sb) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (long long)(now.tv_sec - sb->started.tv_sec) * 1000 +
         (now.tv_nsec - sb->started.tv_nsec) / 1000000;
}

static void budget_hook(lua_State *L, lua_Debug *ar);

/* Marks the budget spent and records where, so the outermost call can report it even if the
 * script replaced the error on its way out. */
static void exhaust(lua_State *L, HeraldSandbox *sb, const char *what) {
  lua_Debug ar;
  const char *where = "?";
  int line = -1;
  for (int level = 0; lua_getstack(L, level, &ar); level++) {
    if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
      where = ar.short_src;
      line = ar.currentline;
      break;
    }
  }
  snprintf(sb->exhausted_msg, sizeof sb->exhausted_msg, "%s:%d: %s", where, line, what);
  sb->exhausted = 1;
}

static void exhaust_budget(lua_State *L, HeraldSandbox *sb) {
  char what[96];
  snprintf(what, sizeof what, "instruction budget exceeded (%lld instructions)", sb->budget);
  exhaust(L, sb, what);
}

static void exhaust_time(lua_State *L, HeraldSandbox *sb) {
  char what[96];
  snprintf(what, sizeof what, "time limit exceeded (%lld ms)", sb->time_limit_ms);
  exhaust(L, sb, what);
}

static int raise_exhausted(lua_State *L, HeraldSandbox *sb) {
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
  int slack = sb->slack;
  sb->slack = 1;
  lua_pushstring(L, sb->exhausted_msg);
  sb->slack = slack;
  return lua_error(L);
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  HeraldSandbox *sb = sandbox_of(L);
  if (!sb->exhausted) {
    int count = lua_gethookcount(L);
    /* A thread created while the budget was spent inherited a count of 1: heal it. */
    if (count != BUDGET_STEP) lua_sethook(L, budget_hook, LUA_MASKCOUNT, BUDGET_STEP);
    sb->remaining -= count;
    if (sb->remaining > 0 && elapsed_ms(sb) <= sb->time_limit_ms) return;
    if (sb->remaining <= 0) exhaust_budget(L, sb);
    else exhaust_time(L, sb);
  }
  raise_exhausted(L, sb);
}

/* Charges work done inside a C function; raises once the budget is spent. */
static void charge(lua_State *L, double instructions) {
  HeraldSandbox *sb = sandbox_of(L);
  if (sb->exhausted) raise_exhausted(L, sb);
  if (instructions >= (double)sb->remaining) {
    sb->remaining = 0;
    exhaust_budget(L, sb);
    raise_exhausted(L, sb);
  }
  sb->remaining -= (long long)instructions;
}

int herald_sandbox_spent(lua_State *L) {
  HeraldSandbox *sb = sandbox_of(L);
  if (sb->depth == 0) return 0;
  if (sb->exhausted) return 1;
  if (elapsed_ms(sb) <= sb->time_limit_ms) return 0;
  exhaust_time(L, sb);
  return 1;
}

int herald_sandbox_raise_spent(lua_State *L) { return raise_exhausted(L, sandbox_of(L)); }

/* Starts a call or resume on thread L; a top-level one gets a fresh budget. */
static void call_begin(HeraldSandbox *sb, lua_State *L) {
  if (sb->depth++ == 0) {
    sb->remaining = sb->budget;
    sb->exhausted = 0;
    sb->memory_hit = 0;
    clock_gettime(CLOCK_MONOTONIC, &sb->started);
  } else {
    /* Setting the hook below restarts this thread's count, so a nested resume (a task
     * spawned by the script) pays its first step up front. */
    sb->remaining -= BUDGET_STEP;
  }
  lua_sethook(L, budget_hook, LUA_MASKCOUNT,
              sb->exhausted || sb->remaining <= 0 ? 1 : BUDGET_STEP);
}

/* Rewrites the error on top of L after a failed call: the recorded budget message when the
 * budget ran out (whatever the script raised instead), the cap for memory errors. */
static int call_end(HeraldSandbox *sb, lua_State *L, int status) {
  sb->depth--;
  sb->slack = 1;
  if (status == LUA_OK || status == LUA_YIELD) {
    sb->slack = 0;
    return status;
  }
  const char *msg = lua_tostring(L, -1);
  if (sb->exhausted) {
    if (msg == NULL || strstr(msg, sb->exhausted_msg) == NULL) {
      lua_pop(L, 1);
      lua_pushstring(L, sb->exhausted_msg);
    }
    status = LUA_ERRRUN;
  } else if (status == LUA_ERRMEM || (sb->memory_hit && msg != NULL &&
                                      strstr(msg, "not enough memory") != NULL)) {
    lua_pushliteral(L, "memory limit exceeded (");
    push_limit_text(L, sb->limit);
    lua_pushliteral(L, ")");
    lua_concat(L, 3);
    const char *repl = lua_tostring(L, -1);
    if (msg == NULL) msg = "not enough memory";
    luaL_gsub(L, msg, "not enough memory", repl);
    lua_remove(L, -2);  /* the replacement */
    lua_remove(L, -2);  /* the original */
    status = LUA_ERRRUN;
  }
  sb->slack = 0;
  /* The garbage of a failed call is usually what filled memory: free it before the next. */
  if (sb->depth == 0 && sb->memory_hit) lua_gc(L, LUA_GCCOLLECT);
  return status;
}

static int sandbox_traceback(lua_State *L) {
  HeraldSandbox *sb = sandbox_of(L);
  sb->slack = 1;  /* until call_end: the traceback must not fail for want of memory */
  /* A spent budget must not run the error object's __tostring. */
  if (sb->exhausted && lua_type(L, 1) != LUA_TSTRING) {
    lua_pushstring(L, sb->exhausted_msg);
    lua_replace(L, 1);
  }
  return herald_host_traceback(L);
}

int herald_sandbox_pcall(lua_State *L, int nargs, int nresults) {
  HeraldSandbox *sb = sandbox_of(L);
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, sandbox_traceback);
  lua_insert(L, base);
  call_begin(sb, L);
  int status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (status == LUA_OK && sb->exhausted && sb->depth == 1) {
    /* The budget ran out in a thread whose error the script dropped: the call still fails. */
    lua_settop(L, base - 1);
    lua_pushstring(L, sb->exhausted_msg);
    status = LUA_ERRRUN;
  }
  return call_end(sb, L, status);
}

static int sandbox_resume(lua_State *L, lua_State *co, int nargs, int *nresults) {
  HeraldSandbox *sb = sandbox_of(L);
  call_begin(sb, co);
  int status = lua_resume(co, L, nargs, nresults);
  if (sb->exhausted) {
    if (sb->depth > 1) {
      lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);  /* the resumer stops at once too */
    } else if (status == LUA_OK) {
      lua_pop(co, *nresults);
      lua_pushstring(co, sb->exhausted_msg);
      status = LUA_ERRRUN;
    }
  }
  return call_end(sb, co, status);
}

/* ---- pattern matching -------------------------------------------------------------------- */

typedef struct { uint8_t bits[32]; } ByteSet;

static void set_add(ByteSet *s, int c) { s->bits[c >> 3] |= (uint8_t)(1u << (c & 7)); }
static int set_has(const ByteSet *s, int c) { return (s->bits[c >> 3] >> (c & 7)) & 1; }
static void set_fill(ByteSet *s) { memset(s->bits, 0xff, sizeof s->bits); }
static void set_union(ByteSet *a, const ByteSet *b) {
  for (size_t i = 0; i < sizeof a->bits; i++) a->bits[i] |= b->bits[i];
}
static int set_meets(const ByteSet *a, const ByteSet *b) {
  for (size_t i = 0; i < sizeof a->bits; i++)
    if (a->bits[i] & b->bits[i]) return 1;
  return 0;
}

/* The class letters of Lua patterns (%a, %d, ...); an upper-case letter is the complement,
 * any other character stands for itself. */
static int class_has(int cl, int c) {
  int r;
  switch (tolower(cl)) {
    case 'a': r = isalpha(c); break;
    case 'c': r = iscntrl(c); break;
    case 'd': r = isdigit(c); break;
    case 'g': r = isgraph(c); break;
    case 'l': r = islower(c); break;
    case 'p': r = ispunct(c); break;
    case 's': r = isspace(c); break;
    case 'u': r = isupper(c); break;
    case 'w': r = isalnum(c); break;
    case 'x': r = isxdigit(c); break;
    default: return cl == c;
  }
  if (isupper(cl)) r = !r;
  return r != 0;
}

/* Finds the ']' closing the set that starts at p ('['); NULL when the set is unterminated. */
static const char *set_end(const char *p, const char *pe) {
  p++;
  if (p < pe && *p == '^') p++;
  do {
    if (p >= pe) return NULL;
    if (*p++ == '%') p++;
  } while (p >= pe || *p != ']');
  return p;
}

/* Builds the byte set of a [...] item, p at '[' and close at its ']'. */
static void set_from_brackets(ByteSet *s, const char *p, const char *close) {
  int negate = 0;
  if (p[1] == '^') {
    negate = 1;
    p++;
  }
  ByteSet in = {{0}};
  while (++p < close) {
    if (*p == '%') {
      p++;
      for (int c = 0; c < 256; c++)
        if (class_has((unsigned char)*p, c)) set_add(&in, c);
    } else if (p[1] == '-' && p + 2 < close) {
      for (int c = (unsigned char)p[0]; c <= (unsigned char)p[2]; c++) set_add(&in, c);
      p += 2;
    } else {
      set_add(&in, (unsigned char)*p);
    }
  }
  for (int c = 0; c < 256; c++)
    if (set_has(&in, c) != negate) set_add(s, c);
}

typedef enum { kItemSingle, kItemCapture, kItemEnd, kItemBalance, kItemFrontier, kItemBackref,
               kItemMalformed } ItemKind;

typedef struct {
  ItemKind kind;
  char quant;     /* 0, '*', '+', '-', '?' */
  ByteSet set;    /* what a single item matches; the opening byte of %b */
} Item;

/* Splits a pattern into items as Lua's matcher reads them. Stops at the first malformed
 * item: the matcher raises when it reaches it, so nothing after it costs anything. */
static size_t pattern_items(const char *p, const char *pe, Item *items, int *anchored) {
  size_t n = 0;
  if (anchored != NULL && p < pe && *p == '^') {
    *anchored = 1;
    p++;
  }
  while (p < pe) {
    Item *it = &items[n++];
    memset(it, 0, sizeof *it);
    if (*p == '(' || *p == ')') {
      it->kind = kItemCapture;
      p++;
    } else if (*p == '$' && p + 1 == pe) {
      it->kind = kItemEnd;
      p++;
    } else if (*p == '%' && p + 1 < pe && p[1] == 'b') {
      if (pe - p < 4) { it->kind = kItemMalformed; break; }
      it->kind = kItemBalance;
      set_add(&it->set, (unsigned char)p[2]);
      p += 4;
    } else if (*p == '%' && p + 1 < pe && p[1] == 'f') {
      const char *close = (p + 2 < pe && p[2] == '[') ? set_end(p + 2, pe) : NULL;
      if (close == NULL) { it->kind = kItemMalformed; break; }
      it->kind = kItemFrontier;
      p = close + 1;
    } else if (*p == '%' && p + 1 < pe && isdigit((unsigned char)p[1])) {
      it->kind = kItemBackref;
      p += 2;
    } else {
      it->kind = kItemSingle;
      if (*p == '.') {
        set_fill(&it->set);
        p++;
      } else if (*p == '%') {
        if (p + 1 >= pe) { it->kind = kItemMalformed; break; }
        for (int c = 0; c < 256; c++)
          if (class_has((unsigned char)p[1], c)) set_add(&it->set, c);
        p += 2;
      } else if (*p == '[') {
        const char *close = set_end(p, pe);
        if (close == NULL) { it->kind = kItemMalformed; break; }
        set_from_brackets(&it->set, p, close);
        p = close + 1;
      } else {
        set_add(&it->set, (unsigned char)*p);
        p++;
      }
      if (p < pe && strchr("*+-?", *p) != NULL) it->quant = *p++;
    }
  }
  return n;
}

/* Longest run of subject bytes in set: how far one variable-length item can reach. */
static size_t longest_run(const unsigned char *s, size_t n, const ByteSet *set) {
  size_t best = 0, run = 0;
  for (size_t i = 0; i < n; i++) {
    run = set_has(set, s[i]) ? run + 1 : 0;
    if (run > best) best = run;
  }
  return best;
}

static double hits(const size_t *hist, const ByteSet *set) {
  double h = 0;
  for (int c = 0; c < 256; c++)
    if (set_has(set, c)) h += (double)hist[c];
  return h;
}

/* Upper bound of the steps Lua's matcher takes for pattern p over subject s, summed over
 * every start position (find/match stop at the first match; gmatch/gsub try each position
 * at most once, so one bound covers the whole iteration).
 *
 * The model, computed from the end of the pattern: C is the cost of matching the rest from
 * one position, F the bytes the rest can start with, and "nullable" says the rest can match
 * the empty string (then its first attempt succeeds). A fixed item adds one step. A
 * variable item (* + -) of a class that reaches at most R bytes here (the longest run of its
 * class in the subject) scans R bytes and attempts the rest at up to R+1 positions; an
 * attempt at a position whose byte is not in F fails after a step per leading optional item,
 * and only positions holding a byte of F (at most their count in the subject) pay the full
 * C. That is why (%w+)=(%w+) stays linear while .-.-.-b multiplies by the subject length
 * per item. `?` pays the rest twice unless the two attempts exclude each other. %b and
 * back-references scan up to n bytes. Start positions whose byte is not in the pattern's
 * own F fail cheaply. The bound is sound: every real run takes at most this many steps. */
static double pattern_cost(lua_State *L, const unsigned char *s, size_t n, const char *p,
                           size_t plen, int allow_anchor) {
  size_t hist[256] = {0};
  for (size_t i = 0; i < n; i++) hist[s[i]]++;
  Item *items = lua_newuserdatauv(L, sizeof(Item) * (plen + 1), 0);
  int anchored = 0;
  size_t count = pattern_items(p, p + plen, items, allow_anchor ? &anchored : NULL);
  /* Finding run lengths costs a pass over the subject per variable item; on huge inputs the
   * subject length is a good enough bound. */
  size_t variable = 0;
  for (size_t i = 0; i < count; i++) variable += items[i].kind == kItemSingle && items[i].quant;
  int scan_runs = (double)n * (double)variable <= 5e7;

  double C = 1, lead = 0;
  ByteSet F = {{0}};
  int nullable = 1;
  for (size_t j = count; j-- > 0;) {
    const Item *it = &items[j];
    double cheap = 1 + lead;
    switch (it->kind) {
      case kItemCapture:
        C += 1;
        lead += 1;
        break;
      case kItemEnd:
        C = 1;
        memset(&F, 0, sizeof F);
        nullable = 0;
        lead = 1;
        break;
      case kItemMalformed:
        C = 1;
        set_fill(&F);
        nullable = 0;
        lead = 1;
        break;
      case kItemBalance:
        C = (double)n + C;
        F = it->set;
        nullable = 0;
        lead = 1;
        break;
      case kItemFrontier:
        C += 1;
        if (nullable) set_fill(&F);
        nullable = 0;
        lead += 1;
        break;
      case kItemBackref:
        C = (double)n + C;
        set_fill(&F);
        nullable = 0;
        lead = 1;
        break;
      case kItemSingle: {
        int disjoint = !nullable && !set_meets(&it->set, &F);
        if (it->quant == 0) {
          C = 1 + C;
          F = it->set;
          nullable = 0;
          lead = 1;
        } else if (it->quant == '?') {
          C = nullable ? 1 + C : disjoint ? 1 + C + cheap : 1 + 2 * C;
          set_union(&F, &it->set);
          lead += 1;
        } else {
          double R = scan_runs ? (double)longest_run(s, n, &it->set) : (double)n;
          if (nullable) {
            C = R + 1 + C;
          } else {
            double full = hits(hist, &F) + 1;  /* positions where the rest can start */
            double attempts = disjoint ? 1 : (full < R + 1 ? full : R + 1);
            C = R + (R + 1) * cheap + attempts * C;
          }
          if (it->quant == '+') {
            F = it->set;
            nullable = 0;
            lead = 1;
          } else {
            set_union(&F, &it->set);
            lead += 1;
          }
        }
        break;
      }
    }
  }
  lua_pop(L, 1);
  if (anchored) return C;
  double starts = nullable ? (double)n + 1 : hits(hist, &F) + 1;
  return ((double)n + 1) * (1 + lead) + starts * C;
}

/* Lua's find uses a plain substring search when asked or when the pattern has no specials. */
static double plain_cost(const unsigned char *s, size_t n, const char *p, size_t plen) {
  if (plen == 0) return 1;
  double first = 0;
  for (size_t i = 0; i < n; i++) first += s[i] == (unsigned char)p[0];
  return (double)n + first * (double)plen;
}

static int has_specials(const char *p, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (p[i] != '\0' && strchr("^$*+?.([%-", p[i]) != NULL) return 1;
  return 0;
}

/* Bounds one call of the pattern function named fname; plain_arg is the index of find's
 * `plain` argument or 0. */
static void check_pattern(lua_State *L, const char *fname, int plain_arg, int allow_anchor) {
  size_t n, plen;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *p = luaL_checklstring(L, 2, &plen);
  double cost;
  if ((plain_arg && lua_toboolean(L, plain_arg)) || (plain_arg && !has_specials(p, plen))) {
    cost = plain_cost((const unsigned char *)s, n, p, plen);
  } else {
    if (plen > MAX_PATTERN_LEN)
      luaL_error(L, "string.%s: pattern too long for campaign code (%I bytes, limit %d)", fname,
                 (lua_Integer)plen, MAX_PATTERN_LEN);
    cost = pattern_cost(L, (const unsigned char *)s, n, p, plen, allow_anchor);
  }
  if (cost > PATTERN_STEP_LIMIT) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "string.%s: pattern too costly for campaign code: up to %.3g matching steps on a "
             "%zu-byte subject (limit %.3g); anchor it, use a more specific class than '.', or "
             "match a shorter string",
             fname, cost, n, PATTERN_STEP_LIMIT);
    luaL_error(L, "%s", msg);
  }
  charge(L, cost / PATTERN_STEPS_PER_INSTRUCTION);
}

/* Calls the wrapped library function (upvalue 1) with this call's arguments. */
static int call_original(lua_State *L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

static int wrap_find(lua_State *L) {
  check_pattern(L, "find", 4, 1);
  return call_original(L);
}

static int wrap_match(lua_State *L) {
  check_pattern(L, "match", 0, 1);
  return call_original(L);
}

static int wrap_gmatch(lua_State *L) {
  check_pattern(L, "gmatch", 0, 0);
  return call_original(L);
}

static int wrap_gsub(lua_State *L) {
  check_pattern(L, "gsub", 0, 1);
  return call_original(L);
}

/* string.rep's result must fit under the cap; Lua would only refuse sizes above 2^31. */
static int wrap_rep(lua_State *L) {
  size_t l, lsep = 0;
  luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_optlstring(L, 3, "", &lsep);
  if (n > 0) {
    HeraldSandbox *sb = sandbox_of(L);
    double total = (double)l * (double)n + (double)lsep * (double)(n - 1);
    if (total > (double)sb->limit) {
      char msg[160];
      snprintf(msg, sizeof msg, "memory limit exceeded (%.4g MiB): string.rep would build %.0f bytes",
               (double)sb->limit / (1024.0 * 1024.0), total);
      luaL_error(L, "%s", msg);
    }
    charge(L, total / 64);
  }
  return call_original(L);
}

/* table.move loops in C over its range even when the table is empty. */
static int wrap_move(lua_State *L) {
  lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
  if (e >= f) charge(L, (double)e - (double)f + 1);
  return call_original(L);
}

/* table.insert(t, pos, v) and table.remove(t, pos) shift elements in a C loop up to #t, which
 * a __len metamethod could make 2^62 (and answer differently to us and to the library). */
static int charge_shift(lua_State *L, const char *fname, int positional) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (luaL_getmetafield(L, 1, "__len") != LUA_TNIL)
    return luaL_error(L, "table.%s: tables with a __len metamethod are not supported in "
                      "campaign code", fname);
  if (positional) charge(L, (double)lua_rawlen(L, 1));
  return call_original(L);
}

static int wrap_insert(lua_State *L) { return charge_shift(L, "insert", lua_gettop(L) >= 3); }
static int wrap_remove(lua_State *L) { return charge_shift(L, "remove", lua_gettop(L) >= 2); }

/* A coroutine's own hook counter is charged only every BUDGET_STEP instructions, so short
 * coroutines would run for free: creating one costs a full step. */
static int sandbox_cocreate(lua_State *L) {
  charge(L, BUDGET_STEP);
  return call_original(L);
}

/* A coroutine that died by an error may have been killed by the budget hook, and Lua leaves
 * such a thread with hooks off: running its __close handlers (which coroutine.close and
 * coroutine.wrap do in stock Lua) could loop beyond the budget's reach. In campaign code a
 * coroutine that died by an error is therefore never reset; its pending to-be-closed
 * variables are left to the garbage collector. */
static int coroutine_died(lua_State *co) {
  int st = lua_status(co);
  return st != LUA_OK && st != LUA_YIELD;
}

/* The thread that resumed a coroutine killed by the budget must stop as well, not run on
 * until its own count fires. */
static int sandbox_coresume(lua_State *L) {
  int n = call_original(L);
  if (sandbox_of(L)->exhausted) raise_exhausted(L, sandbox_of(L));
  return n;
}

static int sandbox_coclose(lua_State *L) {
  if (sandbox_of(L)->exhausted) raise_exhausted(L, sandbox_of(L));
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co != NULL, 1, "coroutine");
  if (coroutine_died(co)) {
    luaL_pushfail(L);
    lua_pushliteral(L, "the coroutine died by an error (its to-be-closed variables are not "
                       "closed in campaign code)");
    return 2;
  }
  return call_original(L);
}

static int wrapped_coroutine(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int n = lua_gettop(L);
  if (coroutine_died(co) || (lua_status(co) == LUA_OK && lua_gettop(co) == 0))
    return luaL_error(L, "cannot resume dead coroutine");
  if (!lua_checkstack(co, n)) return luaL_error(L, "too many arguments to resume");
  lua_xmove(L, co, n);
  int nres;
  int status = lua_resume(co, L, n, &nres);
  if (sandbox_of(L)->exhausted) raise_exhausted(L, sandbox_of(L));
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      return luaL_error(L, "too many results to resume");
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);
  if (lua_type(L, -1) == LUA_TSTRING) {  /* like stock wrap: where the error came through */
    luaL_where(L, 1);
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  return lua_error(L);
}

static int sandbox_cowrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  charge(L, BUDGET_STEP);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, wrapped_coroutine, 1);
  return 1;
}

/* __gc runs with hooks disabled, so a looping finalizer could never be stopped. (__close
 * needs no such rule: see coroutine_died.) */
static int sandbox_setmetatable(lua_State *L) {
  if (lua_type(L, 2) == LUA_TTABLE) {
    if (lua_getfield(L, 2, "__gc") != LUA_TNIL)
      return luaL_error(L, "__gc metamethods are not available in campaign code");
    lua_pop(L, 1);
  }
  return call_original(L);
}

/* A message handler runs inside the hook that raised the budget error, where hooks are off:
 * once the budget is spent the script's handler is skipped and the error passes unchanged. */
static int guarded_handler(lua_State *L) {
  if (sandbox_of(L)->exhausted) return 1;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

static int xpcall_done(lua_State *L, int status, lua_KContext first) {
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)first;
}

/* xpcall(f, handler, ...) with the handler guarded; yields inside f still work. */
static int sandbox_xpcall(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, guarded_handler, 1);
  lua_replace(L, 2);
  lua_pushboolean(L, 1);  /* the first result on success */
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);    /* f, handler, true, f, args... */
  int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, xpcall_done);
  return xpcall_done(L, status, 2);
}

/* ---- loading ----------------------------------------------------------------------------- */

static int is_bytecode(const char *chunk, size_t len) {
  return len > 0 && chunk[0] == LUA_SIGNATURE[0];
}

/* Gives the function on top of the stack a new chunk environment (protected: allocates). */
static int set_chunk_env(lua_State *L) {
  lua_newtable(L);
  lua_getfield(L, LUA_REGISTRYINDEX, ENVMT_KEY);
  lua_setmetatable(L, -2);
  if (lua_setupvalue(L, 1, 1) == NULL) lua_pop(L, 1);
  return 1;
}

int herald_sandbox_load(lua_State *L, const char *chunk, size_t len, const char *chunkname) {
  if (!lua_checkstack(L, 4)) return LUA_ERRMEM;  /* the only failure with nothing pushed */
  if (is_bytecode(chunk, len)) {
    lua_pushfstring(L, "%s: bytecode is refused in campaign code (load Lua source text)",
                    chunkname[0] == '@' || chunkname[0] == '=' ? chunkname + 1 : chunkname);
    return LUA_ERRSYNTAX;
  }
  int status = luaL_loadbufferx(L, chunk, len, chunkname, "t");
  if (status != LUA_OK) return status;
  lua_pushcfunction(L, set_chunk_env);
  lua_insert(L, -2);
  status = lua_pcall(L, 1, 1, 0);
  return status;
}

int herald_sandbox_loadfile(lua_State *L, const char *path) {
  HeraldSandbox *sb = sandbox_of(L);
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    lua_pushfstring(L, "cannot open %s: %s", path, strerror(errno));
    return LUA_ERRFILE;
  }
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      cap = cap ? cap * 2 : 8192;
      if (cap > sb->limit + 1) {
        free(buf);
        fclose(f);
        lua_pushfstring(L, "%s: file larger than the sandbox's memory limit", path);
        return LUA_ERRFILE;
      }
      char *grown = realloc(buf, cap);
      if (grown == NULL) {
        free(buf);
        fclose(f);
        lua_pushliteral(L, "not enough memory");
        return LUA_ERRMEM;
      }
      buf = grown;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) break;
  }
  int failed = ferror(f);
  fclose(f);
  if (failed) {
    free(buf);
    lua_pushfstring(L, "cannot read %s", path);
    return LUA_ERRFILE;
  }
  /* A first line starting with '#' (#!/usr/bin/env herald) is skipped, as lua does; its
   * newline stays so line numbers match the file. */
  size_t skip = 0;
  if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) skip = 3;  /* a UTF-8 byte order mark */
  if (skip < len && buf[skip] == '#')
    while (skip < len && buf[skip] != '\n') skip++;
  char *name = malloc(strlen(path) + 2);
  if (name == NULL) {
    free(buf);
    lua_pushliteral(L, "not enough memory");
    return LUA_ERRMEM;
  }
  name[0] = '@';
  strcpy(name + 1, path);
  int status = herald_sandbox_load(L, buf + skip, len - skip, name);
  free(name);
  free(buf);
  return status;
}

/* Reader for load(function): each call returns the next piece or nothing. */
static const char *function_reader(lua_State *L, void *ud, size_t *size) {
  (void)ud;
  luaL_checkstack(L, 2, "too many nested functions");
  lua_pushvalue(L, 1);
  lua_call(L, 0, 1);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    *size = 0;
    return NULL;
  }
  if (!lua_isstring(L, -1)) luaL_error(L, "reader function must return a string");
  lua_replace(L, 5);  /* keeps the piece alive while the parser reads it */
  return lua_tolstring(L, 5, size);
}

/* load(chunk [, chunkname [, mode [, env]]]) for scripts: text only; without env the loaded
 * code sees the environment of the script that called load (upvalue 1). */
static int sandbox_load(lua_State *L) {
  int has_env = !lua_isnone(L, 4);
  size_t len;
  const char *s = lua_tolstring(L, 1, &len);
  int status;
  if (s != NULL) {
    const char *name = luaL_optstring(L, 2, s);
    if (is_bytecode(s, len)) {
      luaL_pushfail(L);
      lua_pushliteral(L, "bytecode is refused in campaign code (load Lua source text)");
      return 2;
    }
    status = luaL_loadbufferx(L, s, len, name, "t");
  } else {
    const char *name = luaL_optstring(L, 2, "=(load)");
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, 5);
    status = lua_load(L, function_reader, NULL, name, "t");
  }
  if (status != LUA_OK) {
    luaL_pushfail(L);
    lua_insert(L, -2);
    const char *msg = lua_tostring(L, -1);
    if (msg != NULL && strstr(msg, "binary chunk") != NULL) {
      lua_pop(L, 1);
      lua_pushliteral(L, "bytecode is refused in campaign code (load Lua source text)");
    }
    return 2;
  }
  if (has_env) lua_pushvalue(L, 4);
  else lua_pushvalue(L, lua_upvalueindex(1));
  if (lua_setupvalue(L, -2, 1) == NULL) lua_pop(L, 1);
  return 1;
}

/* require for the sandbox: herald modules only, C modules from the preload table (only the
 * campaign-safe ones are there), Lua modules from the stdlib directory in text mode. */
static int module_allowed(const char *name) {
  if (strcmp(name, "herald") != 0 && strncmp(name, "herald.", 7) != 0) return 0;
  static const char *const host_only[] = {"herald.cli", "herald.sandbox", "herald.repl", NULL};
  for (int i = 0; host_only[i] != NULL; i++) {
    size_t l = strlen(host_only[i]);
    if (strncmp(name, host_only[i], l) == 0 && (name[l] == '\0' || name[l] == '.')) return 0;
  }
  return 1;
}

static int sandbox_require(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);  /* 2 */
  if (lua_getfield(L, 2, name) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  if (!module_allowed(name))
    return luaL_error(L, "module '%s' is not available in campaign code", name);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);  /* 3 */
  if (lua_getfield(L, 3, name) != LUA_TNIL) {
    lua_pushvalue(L, 1);
    lua_pushliteral(L, ":preload:");
  } else if (strcmp(name, "herald.core") == 0 || strncmp(name, "herald.core.", 12) == 0) {
    /* C modules come only from the preload table, which holds the campaign-safe ones. */
    return luaL_error(L, "module '%s' is not available in campaign code", name);
  } else {
    lua_pop(L, 1);
    const char *dir = herald_context()->stdlib_dir;
    if (dir == NULL) return luaL_error(L, "module '%s' not found (no stdlib directory)", name);
    const char *rel = luaL_gsub(L, name, ".", "/");  /* 4 */
    const char *forms[] = {"%s/%s.lua", "%s/%s/init.lua"};
    const char *path = NULL;
    for (int i = 0; i < 2 && path == NULL; i++) {
      const char *cand = lua_pushfstring(L, forms[i], dir, rel);
      FILE *f = fopen(cand, "r");
      if (f != NULL) {
        fclose(f);
        path = cand;
      } else {
        lua_pop(L, 1);
      }
    }
    if (path == NULL) return luaL_error(L, "module '%s' not found in %s", name, dir);
    int status = luaL_loadfilex(L, path, "t");  /* the state's own globals: trusted stdlib */
    if (status != LUA_OK) return lua_error(L);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, -3);  /* path */
  }
  lua_call(L, 2, 1);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, 2, name);
  return 1;
}

/* ---- environments ------------------------------------------------------------------------ */

/* Copy metatable __index for library tables: left-out fields raise, others read nil. */
static int lib_index(lua_State *L) {
  const char *lib = lua_tostring(L, lua_upvalueindex(1));
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if ((strcmp(lib, "os") == 0 && in_list(os_denied, k)) ||
        (strcmp(lib, "string") == 0 && strcmp(k, "dump") == 0))
      return luaL_error(L, "%s.%s is not available in campaign code", lib, k);
  }
  return 0;
}

static int env_index(lua_State *L) {
  if (lua_type(L, 2) != LUA_TSTRING)
    return luaL_error(L, "undefined global '%s'", luaL_tolstring(L, 2, NULL));
  const char *k = lua_tostring(L, 2);
  lua_getfield(L, LUA_REGISTRYINDEX, LIBS_KEY);
  if (lua_getfield(L, -1, k) == LUA_TTABLE) {
    int lib = lua_gettop(L);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, lib)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
    lua_getfield(L, LUA_REGISTRYINDEX, LIBMT_KEY);
    if (lua_getfield(L, -1, k) == LUA_TTABLE) lua_setmetatable(L, -3);
    else lua_pop(L, 1);
    lua_pop(L, 1);
  } else {
    lua_settop(L, 2);
    lua_getfield(L, LUA_REGISTRYINDEX, ALLOW_KEY);
    if (lua_getfield(L, -1, k) == LUA_TNIL) {
      if (strcmp(k, "load") == 0) {
        lua_pushvalue(L, 1);
        lua_pushcclosure(L, sandbox_load, 1);
      } else if (strcmp(k, "_G") == 0) {
        lua_pushvalue(L, 1);
      } else if (in_list(denied_globals, k)) {
        return luaL_error(L, "%s is not available in campaign code", k);
      } else {
        return luaL_error(L, "undefined global '%s'", k);
      }
    }
  }
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, 1);  /* later reads of this chunk do not come back here */
  return 1;
}

static int readonly_newindex(lua_State *L) {
  return luaL_error(L, "herald is read-only in campaign code (assign to a local instead)");
}

/* Replaces lib[name] by fn with the original as its upvalue (see call_original). */
static void wrap_field(lua_State *L, int lib, const char *name, lua_CFunction fn) {
  lua_getfield(L, lib, name);
  lua_pushcclosure(L, fn, 1);
  lua_setfield(L, lib, name);
}

/* The state's own globals, which trusted stdlib modules see: the safe libraries, no file or
 * process access, require and load as campaign code has them. Leaves _G on the stack. */
static int setup_globals(lua_State *L) {
  static const luaL_Reg libs[] = {
    {LUA_GNAME, luaopen_base},        {LUA_COLIBNAME, luaopen_coroutine},
    {LUA_TABLIBNAME, luaopen_table},  {LUA_STRLIBNAME, luaopen_string},
    {LUA_MATHLIBNAME, luaopen_math},  {LUA_UTF8LIBNAME, luaopen_utf8},
    {LUA_OSLIBNAME, luaopen_os},      {NULL, NULL},
  };
  for (const luaL_Reg *lib = libs; lib->func != NULL; lib++) {
    luaL_requiref(L, lib->name, lib->func, 1);
    lua_pop(L, 1);
  }
  lua_pushglobaltable(L);
  int G = lua_gettop(L);
  static const char *const drop[] = {"dofile", "loadfile", "collectgarbage", NULL};
  for (int i = 0; drop[i] != NULL; i++) {
    lua_pushnil(L);
    lua_setfield(L, G, drop[i]);
  }
  lua_getfield(L, G, "os");
  lua_newtable(L);
  for (int i = 0; os_allowed[i] != NULL; i++) {
    lua_getfield(L, -2, os_allowed[i]);
    lua_setfield(L, -2, os_allowed[i]);
  }
  lua_setfield(L, G, "os");
  lua_pop(L, 1);
  lua_pushcfunction(L, sandbox_require);
  lua_setfield(L, G, "require");
  lua_pushvalue(L, G);
  lua_pushcclosure(L, sandbox_load, 1);
  lua_setfield(L, G, "load");
  return G;
}

/* Wraps the library functions that do unbounded work in C or bypass the hook. The string
 * table becomes the string metatable's __index too, behind a __metatable sentinel. */
static void setup_wrappers(lua_State *L, int G) {
  lua_getfield(L, G, "string");
  int str = lua_gettop(L);
  wrap_field(L, str, "find", wrap_find);
  wrap_field(L, str, "match", wrap_match);
  wrap_field(L, str, "gmatch", wrap_gmatch);
  wrap_field(L, str, "gsub", wrap_gsub);
  wrap_field(L, str, "rep", wrap_rep);
  lua_pushnil(L);
  lua_setfield(L, str, "dump");
  lua_pushliteral(L, "");
  lua_createtable(L, 0, 2);
  lua_pushvalue(L, str);
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, "protected");
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
  lua_pop(L, 2);

  lua_getfield(L, G, "table");
  wrap_field(L, lua_gettop(L), "move", wrap_move);
  wrap_field(L, lua_gettop(L), "insert", wrap_insert);
  wrap_field(L, lua_gettop(L), "remove", wrap_remove);
  lua_pop(L, 1);

  lua_getfield(L, G, "coroutine");
  wrap_field(L, lua_gettop(L), "create", sandbox_cocreate);
  wrap_field(L, lua_gettop(L), "close", sandbox_coclose);
  wrap_field(L, lua_gettop(L), "resume", sandbox_coresume);
  lua_pushcfunction(L, sandbox_cowrap);
  lua_setfield(L, -2, "wrap");
  lua_pop(L, 1);
}

/* The registry tables chunk environments fall back to (see env_index). */
static void setup_allow_list(lua_State *L, int G) {
  static const char *const lib_names[] = {"coroutine", "math", "string", "table", "utf8", "os",
                                          NULL};
  lua_newtable(L);
  for (int i = 0; lib_names[i] != NULL; i++) {
    lua_getfield(L, G, lib_names[i]);
    lua_setfield(L, -2, lib_names[i]);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, LIBS_KEY);

  static const char *const guarded[] = {"os", "string", NULL};
  lua_newtable(L);
  for (int i = 0; guarded[i] != NULL; i++) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, guarded[i]);
    lua_pushcclosure(L, lib_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setfield(L, -2, guarded[i]);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, LIBMT_KEY);

  lua_newtable(L);
  int allow = lua_gettop(L);
  for (int i = 0; allowed_base[i] != NULL; i++) {
    lua_getfield(L, G, allowed_base[i]);
    lua_setfield(L, allow, allowed_base[i]);
  }
  lua_getfield(L, G, "setmetatable");
  lua_pushcclosure(L, sandbox_setmetatable, 1);
  lua_setfield(L, allow, "setmetatable");
  lua_pushcfunction(L, sandbox_xpcall);
  lua_setfield(L, allow, "xpcall");
  lua_pushcfunction(L, sandbox_require);
  lua_setfield(L, allow, "require");

  herald_modules_preload(L, 1);
  lua_pushcfunction(L, sandbox_require);
  lua_pushliteral(L, "herald");
  lua_call(L, 1, 1);
  int herald = lua_gettop(L);
  lua_newtable(L);  /* a read-only view: one script cannot change herald for another */
  lua_createtable(L, 0, 3);
  lua_pushvalue(L, herald);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, readonly_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
  lua_setfield(L, allow, "herald");
  lua_pop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, ALLOW_KEY);

  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, env_index);
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_setfield(L, LUA_REGISTRYINDEX, ENVMT_KEY);
}

/* Builds the state; runs protected, as everything here allocates. */
static int sandbox_setup(lua_State *L) {
  int G = setup_globals(L);
  setup_wrappers(L, G);
  setup_allow_list(L, G);
  return 0;
}

lua_State *herald_sandbox_new(const HeraldSandboxLimits *limits, HeraldError *err) {
  HeraldSandbox *sb = calloc(1, sizeof *sb);
  if (sb == NULL) {
    herald_error_set(err, kHeraldNoMemory, "out of memory");
    return NULL;
  }
  sb->limit = limits && limits->memory_limit ? limits->memory_limit : DEFAULT_MEMORY;
  sb->budget = limits && limits->instruction_budget > 0 ? limits->instruction_budget
                                                        : DEFAULT_BUDGET;
  sb->time_limit_ms = limits && limits->time_limit_ms > 0 ? limits->time_limit_ms
                                                          : DEFAULT_TIME_MS;
  sb->info.sandboxed = 1;
  sb->info.sandbox = sb;
  sb->info.resume = sandbox_resume;
  lua_State *L = lua_newstate(sandbox_alloc, sb);
  if (L == NULL) {
    free(sb);
    herald_error_set(err, kHeraldLimit, "the sandbox's memory limit is too small to create it");
    return NULL;
  }
  sb->L = L;
  *(HeraldStateInfo **)lua_getextraspace(L) = &sb->info;
  lua_atpanic(L, sandbox_panic);
  lua_setwarnf(L, sandbox_warn, sb);
  lua_pushcfunction(L, sandbox_setup);
  if (herald_sandbox_pcall(L, 0, 0) != LUA_OK) {
    herald_error_set(err, sb->memory_hit ? kHeraldLimit : kHeraldInvalid,
                     "cannot set up the sandbox: %s", lua_tostring(L, -1));
    herald_sandbox_close(L);
    return NULL;
  }
  lua_gc(L, LUA_GCCOLLECT);
  return L;
}

void herald_sandbox_close(lua_State *L) {
  if (L == NULL) return;
  HeraldSandbox *sb = sandbox_of(L);
  herald_task_cancel_state(sb->L);  /* a timer must never resume a task of a closed state */
  lua_close(sb->L);
  free(sb);
}

size_t herald_sandbox_memory(lua_State *L) { return sandbox_of(L)->used; }
