/* The template compiler: one pass over the source builds the node tree the renderer walks.
 *
 * Text between tags becomes text nodes that point into the template's own copy of the source;
 * tags become output nodes (a path, a literal or a helper call) or block nodes (if, unless,
 * each, with, or a conditional helper) with a body and an inverse ({{else}}, also chained as
 * {{else if x}}). Paths are split into segments once, list indexes are pre-parsed and helper
 * names resolved, so rendering never looks at the source again. Everything the tree holds
 * lives in one arena freed with the template. Block and subexpression nesting is bounded
 * (HERALD_TEMPLATE_MAX_DEPTH), so the recursion here and in the renderer is bounded too; an
 * {{else if}} chain is a list walked in a loop, not nesting, so its length is not bounded.
 *
 * Inline partials ({{#* inline "name"}}...{{/inline}}) are parsed into the template's table of
 * partials and produce no node where they stand; a call ({{> name}}) becomes a partial node,
 * resolved against the table once the whole template is read, since a partial may be defined
 * after its first use. */
#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/template_internal.h"

struct TemplateArenaChunk {
  TemplateArenaChunk *next;
  size_t used, cap;
  max_align_t data[];
};

#define ARENA_CHUNK 8192

typedef struct {
  HeraldTemplate *t;
  const char *src;
  size_t len;
  size_t pos;
  HeraldError *err;
  int failed;
  int strip_next;      /* the previous tag ended with ~}}: trim the next text's leading space */
  TemplateNode *last_text;  /* the text node made last, which a standalone tag may trim */
  size_t tag;          /* where the tag being parsed starts */
  size_t paren;        /* where the innermost open subexpression starts */
  struct PartialCall *calls, **calls_tail;  /* partial calls to resolve, in source order */
  TemplatePartial **partials;  /* hash table of PARTIAL_BUCKETS chains, made at the first
                                  definition: a 1 MiB template may define thousands */
} Parser;

#define PARTIAL_BUCKETS 1024

typedef struct PartialCall {
  TemplateNode *node;
  const char *name;
  size_t len;
  struct PartialCall *next;
} PartialCall;

/* What ended a sequence of nodes. */
typedef enum { kStopEof, kStopElse, kStopClose } StopKind;

typedef struct {
  StopKind kind;
  size_t offset;       /* of the tag that stopped it */
  const char *name;    /* close tag's name, or the chained helper of {{else if ...}} */
  size_t name_len;
  size_t content;      /* for else-chains: where the chained expression starts */
} Stop;

static void *arena_alloc(HeraldTemplate *t, size_t n) {
  n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
  TemplateArenaChunk *c = t->arena;
  if (c == NULL || c->cap - c->used < n) {
    size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
    c = malloc(sizeof *c + cap);
    if (c == NULL) return NULL;
    c->used = 0;
    c->cap = cap;
    c->next = t->arena;
    t->arena = c;
  }
  void *p = (char *)c->data + c->used;
  c->used += n;
  memset(p, 0, n);
  return p;
}

void template_position(const char *source, size_t len, size_t offset, int *line, int *column) {
  int l = 1, col = 1;
  if (offset > len) offset = len;
  for (size_t i = 0; i < offset; i++) {
    unsigned char c = (unsigned char)source[i];
    if (c == '\n') {
      l++;
      col = 1;
    } else if ((c & 0xC0) != 0x80) {
      col++;
    }
  }
  *line = l;
  *column = col;
}

static int fail_at(Parser *p, size_t offset, HeraldErrorCode code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail_at(Parser *p, size_t offset, HeraldErrorCode code, const char *fmt, ...) {
  if (p->failed) return -1;
  p->failed = 1;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  int line, col;
  template_position(p->src, p->len, offset, &line, &col);
  herald_error_set(p->err, code, "%s: line %d, column %d: %s", p->t->name, line, col, msg);
  return -1;
}

static int oom(Parser *p) {
  if (!p->failed) {
    p->failed = 1;
    herald_error_set(p->err, kHeraldNoMemory, "%s: out of memory", p->t->name);
  }
  return -1;
}

/* Does the tag at i open a triple-stash: "{{{" or "{{~{"? */
static int raw_opener(Parser *p, size_t i) {
  i += 2;
  if (i < p->len && p->src[i] == '~') i++;
  return i < p->len && p->src[i] == '{';
}

/* The tag being parsed runs to the end of the source. */
static int fail_unterminated(Parser *p) {
  int raw = raw_opener(p, p->tag);
  return fail_at(p, p->tag, kHeraldInvalid, "unterminated tag: expected %s", raw ? "}}}" : "}}");
}

/* A byte for a message: a NUL or a control or non-ASCII byte printed as is would cut or garble
 * the message. */
static const char *shown(char c, char buf[16]) {
  unsigned char u = (unsigned char)c;
  if (u >= 0x20 && u < 0x7F) snprintf(buf, 16, "'%c'", c);
  else snprintf(buf, 16, "byte 0x%02X", u);
  return buf;
}

static char *arena_strndup(Parser *p, const char *s, size_t n) {
  char *d = arena_alloc(p->t, n + 1);
  if (d == NULL) {
    oom(p);
    return NULL;
  }
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

/* Handlebars' identifier characters: anything but space and its punctuation. */
static int is_id_char(unsigned char c) {
  if (c <= ' ' || c == 0x7F) return 0;
  return strchr("!\"#%&'()*+,./;<=>@[\\]^`{|}~", c) == NULL;
}

static void skip_space(Parser *p) {
  while (p->pos < p->len && isspace((unsigned char)p->src[p->pos])) p->pos++;
}

/* Does the tag end here: "}}" or "~}}", or for raw tags "}}}" or "}~}}"? Handlebars' lexer puts
 * the ~ of a triple-stash inside its outer braces, {{~{x}~}}. */
static int at_tag_end(Parser *p, int raw) {
  size_t i = p->pos;
  if (raw) {
    if (i < p->len && p->src[i] == '}') i++;
    else return 0;
  }
  if (i < p->len && p->src[i] == '~') i++;
  return p->len - i >= 2 && memcmp(p->src + i, "}}", 2) == 0;
}

/* A raw tag that does not end with "}}}" or "}~}}". */
static int fail_raw_end(Parser *p) {
  if (p->len - p->pos >= 4 && memcmp(p->src + p->pos, "~}}}", 4) == 0)
    return fail_at(p, p->pos, kHeraldInvalid, "whitespace control on {{{x}}} is written {{~{x}~}}");
  return fail_at(p, p->pos, kHeraldInvalid, "unexpected '}': expected }}}");
}

static int expect_tag_end(Parser *p, int raw) {
  skip_space(p);
  if (!at_tag_end(p, raw)) {
    if (p->pos >= p->len) return fail_unterminated(p);
    char b[16];
    return fail_at(p, p->pos, kHeraldInvalid, "unexpected %s: expected %s", shown(p->src[p->pos], b),
                   raw ? "}}}" : "}}");
  }
  if (raw) p->pos++;
  if (p->src[p->pos] == '~') {
    p->strip_next = 1;
    p->pos++;
  } else {
    p->strip_next = 0;
  }
  p->pos += 2;
  return 0;
}

static TemplateExpr *new_expr(Parser *p, TemplateExprKind kind, size_t offset) {
  TemplateExpr *e = arena_alloc(p->t, sizeof *e);
  if (e == NULL) {
    oom(p);
    return NULL;
  }
  e->kind = kind;
  e->offset = offset;
  return e;
}

static int delimiter_at(Parser *p, size_t i) {
  if (i >= p->len) return 1;
  unsigned char c = (unsigned char)p->src[i];
  return isspace(c) || c == ')' || c == '}' || c == '~' || c == '=';
}

/* A quoted literal; \" (or \' in single quotes) stands for the quote. The closing quote is found
 * first so the arena holds only the literal: sizing the copy by the rest of the source made
 * every literal cost a copy of what followed it, quadratic in the template's size. */
static TemplateExpr *parse_string(Parser *p) {
  size_t start = p->pos;
  char quote = p->src[p->pos++];
  size_t end = p->pos, n = 0;
  while (end < p->len && p->src[end] != quote) {
    if (p->src[end] == '\\' && end + 1 < p->len && p->src[end + 1] == quote) end++;
    end++;
    n++;
  }
  if (end >= p->len) {
    fail_at(p, start, kHeraldInvalid, "unterminated string");
    return NULL;
  }
  char *buf = arena_alloc(p->t, n + 1);
  if (buf == NULL) {
    oom(p);
    return NULL;
  }
  n = 0;
  while (p->pos < end) {
    if (p->src[p->pos] == '\\' && p->src[p->pos + 1] == quote) p->pos++;
    buf[n++] = p->src[p->pos++];
  }
  p->pos++;
  buf[n] = '\0';
  TemplateExpr *e = new_expr(p, kExprLiteral, start);
  if (e == NULL) return NULL;
  e->lit.kind = kValString;
  e->lit.s = buf;
  e->lit.len = n;
  return e;
}

static TemplateExpr *parse_number(Parser *p, size_t end) {
  size_t start = p->pos;
  char tmp[64];
  size_t n = end - start;
  if (n >= sizeof tmp) {
    fail_at(p, start, kHeraldInvalid, "number too long");
    return NULL;
  }
  memcpy(tmp, p->src + start, n);
  tmp[n] = '\0';
  TemplateExpr *e = new_expr(p, kExprLiteral, start);
  if (e == NULL) return NULL;
  e->lit.kind = kValNumber;
  e->lit.n = strtod(tmp, NULL);
  p->pos = end;
  return e;
}

/* A number literal: -?digits(.digits)? ending at a delimiter. Returns its end or 0. */
static size_t number_end(Parser *p) {
  size_t i = p->pos;
  if (i < p->len && p->src[i] == '-') i++;
  size_t d = i;
  while (i < p->len && isdigit((unsigned char)p->src[i])) i++;
  if (i == d) return 0;
  if (i < p->len && p->src[i] == '.') {
    size_t f = ++i;
    while (i < p->len && isdigit((unsigned char)p->src[i])) i++;
    if (i == f) return 0;
  }
  return delimiter_at(p, i) ? i : 0;
}

static int add_segment(Parser *p, TemplatePathSeg **segs, int *n, int *cap, const char *s,
                       size_t len, size_t offset) {
  if (len == 0) return fail_at(p, offset, kHeraldInvalid, "empty path segment");
  if (*n == *cap) {
    int ncap = *cap ? *cap * 2 : 4;
    TemplatePathSeg *ns = arena_alloc(p->t, sizeof *ns * (size_t)ncap);
    if (ns == NULL) return oom(p);
    if (*n) memcpy(ns, *segs, sizeof *ns * (size_t)*n);
    *segs = ns;
    *cap = ncap;
  }
  char *copy = arena_strndup(p, s, len);
  if (copy == NULL) return -1;
  long index = -1;
  if (len <= 9) {
    index = 0;
    for (size_t i = 0; i < len; i++) {
      if (!isdigit((unsigned char)s[i])) {
        index = -1;
        break;
      }
      index = index * 10 + (s[i] - '0');
    }
  }
  (*segs)[*n].text = copy;
  (*segs)[*n].len = len;
  (*segs)[*n].index = index;
  (*n)++;
  return 0;
}

/* path := ('@' ID) | ('../')* (this | '.' | segment) (('.' | '/') segment)*
 * segment := ID | '[' anything but ']' ']' */
static TemplateExpr *parse_path(Parser *p) {
  size_t start = p->pos;
  TemplateExpr *e = new_expr(p, kExprPath, start);
  if (e == NULL) return NULL;
  int cap = 0;
  if (p->src[p->pos] == '@') {
    p->pos++;
    size_t s = p->pos;
    while (p->pos < p->len && is_id_char((unsigned char)p->src[p->pos])) p->pos++;
    size_t n = p->pos - s;
    const char *id = p->src + s;
    if (n == 5 && memcmp(id, "index", 5) == 0) e->data = kDataIndex;
    else if (n == 5 && memcmp(id, "first", 5) == 0) e->data = kDataFirst;
    else if (n == 4 && memcmp(id, "last", 4) == 0) e->data = kDataLast;
    else if (n == 3 && memcmp(id, "key", 3) == 0) e->data = kDataKey;
    else if (n == 4 && memcmp(id, "root", 4) == 0) e->up = -1;
    else {
      fail_at(p, start, kHeraldInvalid, "unknown data variable '@%.*s' (known: @index, @first, @last, @key, @root)",
              (int)n, id);
      return NULL;
    }
    if (e->data != kDataNone) return e;
    if (p->pos < p->len && (p->src[p->pos] == '.' || p->src[p->pos] == '/')) p->pos++;
    else return e;
  } else {
    while (p->len - p->pos >= 3 && memcmp(p->src + p->pos, "../", 3) == 0) {
      e->up++;
      p->pos += 3;
    }
    if (p->len - p->pos >= 2 && memcmp(p->src + p->pos, "..", 2) == 0 && delimiter_at(p, p->pos + 2)) {
      e->up++;
      p->pos += 2;
      return e;
    }
    if (p->pos < p->len && p->src[p->pos] == '.' &&
        (delimiter_at(p, p->pos + 1) || p->src[p->pos + 1] == '/' || p->src[p->pos + 1] == '.')) {
      e->scoped = 1;
      e->local = 1;
      p->pos++;
      if (delimiter_at(p, p->pos)) return e;
      p->pos++;
    } else if (p->len - p->pos >= 4 && memcmp(p->src + p->pos, "this", 4) == 0 &&
               (delimiter_at(p, p->pos + 4) || p->src[p->pos + 4] == '.' || p->src[p->pos + 4] == '/')) {
      e->scoped = 1;
      e->local = 1;
      p->pos += 4;
      if (delimiter_at(p, p->pos)) return e;
      p->pos++;
    }
  }
  for (;;) {
    size_t seg_start = p->pos;
    if (p->pos < p->len && p->src[p->pos] == '[') {
      if (e->nsegs == 0) e->scoped = 1;
      const char *close = memchr(p->src + p->pos, ']', p->len - p->pos);
      if (close == NULL) {
        fail_at(p, seg_start, kHeraldInvalid, "unclosed '[' in a path");
        return NULL;
      }
      size_t s = p->pos + 1, n = (size_t)(close - (p->src + s));
      if (add_segment(p, &e->segs, &e->nsegs, &cap, p->src + s, n, seg_start) != 0) return NULL;
      p->pos = (size_t)(close - p->src) + 1;
    } else {
      while (p->pos < p->len && is_id_char((unsigned char)p->src[p->pos])) p->pos++;
      if (p->pos == seg_start) {
        char b[16];
        if (p->pos >= p->len) fail_unterminated(p);
        else fail_at(p, seg_start, kHeraldInvalid, "unexpected %s in a path", shown(p->src[seg_start], b));
        return NULL;
      }
      if (add_segment(p, &e->segs, &e->nsegs, &cap, p->src + seg_start, p->pos - seg_start,
                      seg_start) != 0)
        return NULL;
    }
    if (p->pos < p->len && (p->src[p->pos] == '.' || p->src[p->pos] == '/')) {
      p->pos++;
      continue;
    }
    break;
  }
  if (!delimiter_at(p, p->pos) && p->src[p->pos] != '(') {
    char b[16];
    fail_at(p, p->pos, kHeraldInvalid, "unexpected %s in a path", shown(p->src[p->pos], b));
    return NULL;
  }
  return e;
}

static int is_simple_name(const TemplateExpr *e) {
  return e->kind == kExprPath && e->nsegs == 1 && e->up == 0 && !e->scoped && e->data == kDataNone;
}

static TemplateExpr *parse_call_rest(Parser *p, TemplateExpr *head, int depth, int raw,
                                     int in_subexpr, int allow_path);

static TemplateExpr *parse_param(Parser *p, int depth) {
  skip_space(p);
  if (p->pos >= p->len) {
    fail_unterminated(p);
    return NULL;
  }
  char c = p->src[p->pos];
  if (c == '"' || c == '\'') return parse_string(p);
  if (c == '(') {
    size_t start = p->pos++;
    if (depth + 1 > HERALD_TEMPLATE_MAX_DEPTH) {
      fail_at(p, start, kHeraldLimit, "subexpressions nested deeper than %d", HERALD_TEMPLATE_MAX_DEPTH);
      return NULL;
    }
    skip_space(p);
    if (p->pos >= p->len || !(is_id_char((unsigned char)p->src[p->pos]))) {
      fail_at(p, p->pos, kHeraldInvalid, "expected a helper name after '('");
      return NULL;
    }
    TemplateExpr *head = parse_path(p);
    if (head == NULL) return NULL;
    p->paren = start;
    TemplateExpr *call = parse_call_rest(p, head, depth + 1, 0, 1, 0);
    if (call == NULL) return NULL;
    skip_space(p);
    if (p->pos >= p->len || p->src[p->pos] != ')') {
      fail_at(p, start, kHeraldInvalid, "unclosed '('");
      return NULL;
    }
    p->pos++;
    return call;
  }
  size_t nend = number_end(p);
  if (nend) return parse_number(p, nend);
  static const struct { const char *word; ValueKind kind; int b; } words[] = {
    {"true", kValBool, 1}, {"false", kValBool, 0}, {"null", kValNull, 0}, {"undefined", kValMissing, 0},
  };
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
    size_t n = strlen(words[i].word);
    if (p->len - p->pos >= n && memcmp(p->src + p->pos, words[i].word, n) == 0 &&
        delimiter_at(p, p->pos + n)) {
      TemplateExpr *e = new_expr(p, kExprLiteral, p->pos);
      if (e == NULL) return NULL;
      e->lit.kind = words[i].kind;
      e->lit.b = words[i].b;
      p->pos += n;
      return e;
    }
  }
  if (c == '@' || c == '[' || c == '.' || is_id_char((unsigned char)c)) return parse_path(p);
  char b[16];
  fail_at(p, p->pos, kHeraldInvalid, "unexpected %s", shown(c, b));
  return NULL;
}

/* Arguments of a helper call or a partial call, as parsed. */
typedef struct {
  TemplateExpr *params[64];
  TemplateHashArg hash[TEMPLATE_MAX_HASH];
  int np, nh;
} Args;

/* Parses params and hash arguments until the tag end or ')'. */
static int parse_args(Parser *p, int depth, int raw, int in_subexpr, Args *a) {
  TemplateExpr **params = a->params;
  TemplateHashArg *hash = a->hash;
  int np = 0, nh = 0;
  a->np = a->nh = 0;
  for (;;) {
    skip_space(p);
    if (p->pos >= p->len) {
      if (in_subexpr) return fail_at(p, p->paren, kHeraldInvalid, "unclosed '('");
      return fail_unterminated(p);
    }
    if (in_subexpr ? p->src[p->pos] == ')' : at_tag_end(p, raw)) break;
    if (in_subexpr && at_tag_end(p, 0)) return fail_at(p, p->paren, kHeraldInvalid, "unclosed '('");
    if (raw && at_tag_end(p, 0)) return fail_raw_end(p);
    /* key=value? */
    size_t save = p->pos, i = p->pos;
    while (i < p->len && is_id_char((unsigned char)p->src[i])) i++;
    size_t j = i;
    while (j < p->len && isspace((unsigned char)p->src[j])) j++;
    if (i > save && j < p->len && p->src[j] == '=') {
      if (nh == (int)(sizeof a->hash / sizeof a->hash[0]))
        return fail_at(p, save, kHeraldLimit, "too many hash arguments");
      hash[nh].name = arena_strndup(p, p->src + save, i - save);
      if (hash[nh].name == NULL) return -1;
      hash[nh].offset = save;
      p->pos = j + 1;
      hash[nh].value = parse_param(p, depth);
      if (hash[nh].value == NULL) return -1;
      a->nh = ++nh;
      continue;
    }
    if (nh > 0) return fail_at(p, save, kHeraldInvalid, "positional argument after a key=value argument");
    if (np == (int)(sizeof a->params / sizeof a->params[0]))
      return fail_at(p, save, kHeraldLimit, "too many arguments");
    params[np] = parse_param(p, depth);
    if (params[np] == NULL) return -1;
    a->np = ++np;
  }
  return 0;
}

/* The hash arguments moved into the arena; NULL (failed) only when there are some. */
static TemplateHashArg *hash_copy(Parser *p, const Args *a) {
  if (a->nh == 0) return NULL;
  TemplateHashArg *h = arena_alloc(p->t, sizeof *h * (size_t)a->nh);
  if (h == NULL) {
    oom(p);
    return NULL;
  }
  memcpy(h, a->hash, sizeof *h * (size_t)a->nh);
  return h;
}

/* Parses params and hash arguments after head until the tag end or ')'. With allow_path, a
 * head that names no helper and has no arguments stays a plain path. */
static TemplateExpr *parse_call_rest(Parser *p, TemplateExpr *head, int depth, int raw,
                                     int in_subexpr, int allow_path) {
  Args a;
  if (parse_args(p, depth, raw, in_subexpr, &a) != 0) return NULL;
  TemplateExpr **params = a.params;
  int np = a.np, nh = a.nh;
  const TemplateHelper *h = NULL;
  if (is_simple_name(head)) h = template_helper_find(head->segs[0].text, head->segs[0].len);
  if (h == NULL) {
    if (allow_path && np == 0 && nh == 0) return head;
    if (is_simple_name(head)) {
      fail_at(p, head->offset, kHeraldInvalid, "unknown helper '%s'", head->segs[0].text);
    } else {
      fail_at(p, head->offset, kHeraldInvalid, "expected a helper name before arguments");
    }
    return NULL;
  }
  if (np < h->min_params || (h->max_params >= 0 && np > h->max_params)) {
    if (h->min_params == h->max_params)
      fail_at(p, head->offset, kHeraldInvalid, "'%s' takes %d argument%s, got %d", h->name,
              h->min_params, h->min_params == 1 ? "" : "s", np);
    else if (h->max_params < 0)
      fail_at(p, head->offset, kHeraldInvalid, "'%s' takes at least %d argument%s, got %d",
              h->name, h->min_params, h->min_params == 1 ? "" : "s", np);
    else
      fail_at(p, head->offset, kHeraldInvalid, "'%s' takes %d to %d arguments, got %d", h->name,
              h->min_params, h->max_params, np);
    return NULL;
  }
  TemplateExpr *call = new_expr(p, kExprCall, head->offset);
  if (call == NULL) return NULL;
  call->helper = h;
  call->nparams = np;
  call->nhash = nh;
  if (np) {
    call->params = arena_alloc(p->t, sizeof *call->params * (size_t)np);
    if (call->params == NULL) {
      oom(p);
      return NULL;
    }
    memcpy(call->params, params, sizeof *params * (size_t)np);
  }
  if (nh) {
    call->hash = hash_copy(p, &a);
    if (call->hash == NULL) return NULL;
  }
  if (h->check != NULL) {
    char why[256];
    size_t at = call->offset;
    if (h->check(call, &at, why, sizeof why) != 0) {
      fail_at(p, at, kHeraldInvalid, "'%s': %s", h->name, why);
      return NULL;
    }
  }
  return call;
}

/* A tag's expression: a literal, a path, or a helper call. */
static TemplateExpr *parse_tag_expr(Parser *p, int raw) {
  skip_space(p);
  if (p->pos >= p->len) {
    fail_unterminated(p);
    return NULL;
  }
  if (at_tag_end(p, raw)) {
    fail_at(p, p->pos, kHeraldInvalid, "empty tag");
    return NULL;
  }
  char c = p->src[p->pos];
  TemplateExpr *head;
  if (c == '"' || c == '\'' || c == '(' || number_end(p)) {
    head = parse_param(p, 0);
    if (head == NULL) return NULL;
    skip_space(p);
    if (!at_tag_end(p, raw)) {
      if (raw && at_tag_end(p, 0)) fail_raw_end(p);
      else fail_at(p, p->pos, kHeraldInvalid, "expected a helper name before arguments");
      return NULL;
    }
    return head;
  }
  if (c == '@' || c == '[' || c == '.' || is_id_char((unsigned char)c)) {
    head = parse_path(p);
    if (head == NULL) return NULL;
    return parse_call_rest(p, head, 0, raw, 0, 1);
  }
  fail_at(p, p->pos, kHeraldInvalid, "unexpected '%c'", c);
  return NULL;
}

static int is_space(char c) { return isspace((unsigned char)c) != 0; }

static int append_text(Parser *p, TemplateNode ***tail, size_t start, size_t end, int strip_right) {
  if (p->strip_next) {
    while (start < end && is_space(p->src[start])) start++;
    p->strip_next = 0;
  }
  if (strip_right)
    while (end > start && is_space(p->src[end - 1])) end--;
  if (end == start) return 0;
  TemplateNode *n = arena_alloc(p->t, sizeof *n);
  if (n == NULL) return oom(p);
  n->kind = kNodeText;
  n->offset = start;
  n->text = p->t->source + start;
  n->len = end - start;
  **tail = n;
  *tail = &n->next;
  p->last_text = n;
  return 0;
}

static int is_blank(char c) { return c == ' ' || c == '\t'; }

/* Handlebars' standalone lines: a block's tags ({{#x}}, {{else}}, {{^}}, {{/x}}), a comment or
 * an inline partial's tags alone on their line, with only spaces or tabs beside them, take the
 * line's indentation and line break with them, so "{{#if vip}}\nGold\n{{/if}}\n" renders
 * "Gold\n" rather than "\nGold\n\n" (an SMS one segment longer, a text email full of blank
 * lines). Called with p->pos just past the tag that starts at tag. Partial calls keep their
 * line: Handlebars would also indent the partial's every line. */
static void standalone(Parser *p, size_t tag) {
  size_t line = tag;
  while (line > 0 && is_blank(p->src[line - 1])) line--;
  if (line > 0 && p->src[line - 1] != '\n') return;
  size_t end = p->pos;
  while (end < p->len && is_blank(p->src[end])) end++;
  if (end + 1 < p->len && p->src[end] == '\r' && p->src[end + 1] == '\n') end += 2;
  else if (end < p->len && p->src[end] == '\n') end++;
  else if (end < p->len) return;
  /* the indentation went into the text made last, unless something else came after it */
  TemplateNode *t = p->last_text;
  if (t != NULL && t->offset + t->len > line) t->len = t->offset < line ? line - t->offset : 0;
  p->pos = end;
}

/* Block names and what they become. */
static int block_kind(Parser *p, const TemplateExpr *head, TemplateBlockKind *kind,
                      const TemplateHelper **helper) {
  *helper = NULL;
  if (!is_simple_name(head))
    return fail_at(p, head->offset, kHeraldInvalid, "expected a block helper name");
  const char *name = head->segs[0].text;
  if (strcmp(name, "if") == 0) *kind = kBlockIf;
  else if (strcmp(name, "unless") == 0) *kind = kBlockUnless;
  else if (strcmp(name, "each") == 0) *kind = kBlockEach;
  else if (strcmp(name, "with") == 0) *kind = kBlockWith;
  else {
    const TemplateHelper *h = template_helper_find(name, head->segs[0].len);
    if (h == NULL) return fail_at(p, head->offset, kHeraldInvalid, "unknown block helper '%s'", name);
    if (h->kind != kHelperConditional)
      return fail_at(p, head->offset, kHeraldInvalid,
                     "'%s' is not a block helper (blocks: if, unless, each, with, eq, neq, gt, gte, lt, lte, and, or, not)",
                     name);
    *kind = kBlockHelper;
    *helper = h;
  }
  return 0;
}

static int parse_seq(Parser *p, int depth, TemplateNode **head, Stop *stop);

/* Parses a block's name and argument (or helper call) up to and past the end of its tag. */
static TemplateNode *parse_block_head(Parser *p, size_t tag_offset) {
  skip_space(p);
  if (p->pos >= p->len) {
    fail_unterminated(p);
    return NULL;
  }
  if (at_tag_end(p, 0)) {
    fail_at(p, p->pos, kHeraldInvalid, "expected a block helper name");
    return NULL;
  }
  TemplateExpr *name = parse_path(p);
  if (name == NULL) return NULL;
  TemplateBlockKind kind = kBlockIf;
  const TemplateHelper *helper;
  if (block_kind(p, name, &kind, &helper) != 0) return NULL;
  TemplateNode *n = arena_alloc(p->t, sizeof *n);
  if (n == NULL) {
    oom(p);
    return NULL;
  }
  n->kind = kNodeBlock;
  n->offset = tag_offset;
  n->block = kind;
  /* the name, for the close tag: the path's segment lives in the arena */
  n->text = name->segs[0].text;
  n->len = name->segs[0].len;
  if (kind == kBlockHelper) {
    n->expr = parse_call_rest(p, name, 0, 0, 0, 0);
    if (n->expr == NULL) return NULL;
  } else {
    TemplateExpr *arg = NULL;
    skip_space(p);
    if (p->pos >= p->len) {
      fail_unterminated(p);
      return NULL;
    }
    if (!at_tag_end(p, 0)) arg = parse_param(p, 0);
    else {
      fail_at(p, name->offset, kHeraldInvalid, "#%s needs one argument", name->segs[0].text);
      return NULL;
    }
    if (arg == NULL) return NULL;
    skip_space(p);
    if (p->pos < p->len && !at_tag_end(p, 0)) {
      fail_at(p, p->pos, kHeraldInvalid, "#%s takes one argument", name->segs[0].text);
      return NULL;
    }
    n->expr = arg;
  }
  if (expect_tag_end(p, 0) != 0) return NULL;
  return n;
}

/* Parses a block from after its "{{#": its head, body, {{else}} or chain of {{else if x}} and
 * close tag. A chain's blocks share the close tag of the first; each is the inverse of the one
 * before it, and all sit at the same depth. */
static TemplateNode *parse_block(Parser *p, size_t tag_offset, int depth) {
  if (depth + 1 > HERALD_TEMPLATE_MAX_DEPTH) {
    fail_at(p, tag_offset, kHeraldLimit, "blocks nested deeper than %d", HERALD_TEMPLATE_MAX_DEPTH);
    return NULL;
  }
  TemplateNode *first = NULL, *prev = NULL;
  size_t at = tag_offset;
  Stop stop;
  for (;;) {
    TemplateNode *n = parse_block_head(p, at);
    if (n == NULL) return NULL;
    standalone(p, at);
    if (prev == NULL) {
      first = n;
    } else {
      prev->inverse = n;
      prev->chained = 1;
    }
    if (parse_seq(p, depth + 1, &n->body, &stop) != 0) return NULL;
    if (stop.kind != kStopElse || stop.name == NULL) {
      if (stop.kind == kStopElse) {
        if (parse_seq(p, depth + 1, &n->inverse, &stop) != 0) return NULL;
        if (stop.kind == kStopElse) {
          fail_at(p, stop.offset, kHeraldInvalid, "a second {{else}} in {{#%s}}", first->text);
          return NULL;
        }
      }
      break;
    }
    /* {{else if x}}: the next block of the chain starts at "if" */
    p->pos = stop.content;
    at = stop.offset;
    prev = n;
  }
  const char *close_name = first->text;
  if (stop.kind == kStopEof) {
    fail_at(p, tag_offset, kHeraldInvalid, "unclosed {{#%s}}", close_name);
    return NULL;
  }
  if (stop.name_len != first->len || memcmp(stop.name, close_name, stop.name_len) != 0) {
    int line, col;
    template_position(p->src, p->len, tag_offset, &line, &col);
    fail_at(p, stop.offset, kHeraldInvalid, "{{/%.*s}} does not close {{#%s}} (opened at line %d, column %d)",
            (int)stop.name_len, stop.name, close_name, line, col);
    return NULL;
  }
  return first;
}

static size_t partial_bucket(const char *name, size_t len) {
  uint32_t h = 2166136261u;  /* FNV-1a */
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)name[i]) * 16777619u;
  return h % PARTIAL_BUCKETS;
}

static const TemplatePartial *partial_find(const Parser *p, const char *name, size_t len) {
  if (p->partials == NULL) return NULL;
  for (const TemplatePartial *d = p->partials[partial_bucket(name, len)]; d != NULL; d = d->next)
    if (d->len == len && memcmp(d->name, name, len) == 0) return d;
  return NULL;
}

/* {{#* inline "name"}}body{{/inline}}, from after the "*": the body goes into the template's
 * table of partials. Handlebars has other decorators, Pinpoint documents none. */
static int parse_inline(Parser *p, size_t tag, int depth) {
  if (depth + 1 > HERALD_TEMPLATE_MAX_DEPTH)
    return fail_at(p, tag, kHeraldLimit, "blocks nested deeper than %d", HERALD_TEMPLATE_MAX_DEPTH);
  skip_space(p);
  size_t word = p->pos;
  while (p->pos < p->len && is_id_char((unsigned char)p->src[p->pos])) p->pos++;
  if (p->pos - word != 6 || memcmp(p->src + word, "inline", 6) != 0) {
    if (p->pos >= p->len) return fail_unterminated(p);
    return fail_at(p, tag, kHeraldInvalid,
                   "decorators are not supported, except inline partials: {{#* inline \"name\"}}...{{/inline}}");
  }
  skip_space(p);
  if (p->pos >= p->len) return fail_unterminated(p);
  if (p->src[p->pos] != '"' && p->src[p->pos] != '\'')
    return fail_at(p, p->pos, kHeraldInvalid, "expected the partial's name in quotes: {{#* inline \"name\"}}");
  TemplateExpr *name = parse_string(p);
  if (name == NULL) return -1;
  if (name->lit.len == 0) return fail_at(p, name->offset, kHeraldInvalid, "empty partial name");
  skip_space(p);
  if (p->pos < p->len && !at_tag_end(p, 0))
    return fail_at(p, p->pos, kHeraldInvalid, "{{#* inline}} takes only the partial's name");
  if (expect_tag_end(p, 0) != 0) return -1;
  standalone(p, tag);
  const TemplatePartial *dup = partial_find(p, name->lit.s, name->lit.len);
  if (dup != NULL) {
    int line, col;
    template_position(p->src, p->len, dup->offset, &line, &col);
    return fail_at(p, tag, kHeraldInvalid, "partial '%s' is already defined at line %d, column %d",
                   name->lit.s, line, col);
  }
  if (p->partials == NULL && (p->partials = arena_alloc(p->t, sizeof *p->partials * PARTIAL_BUCKETS)) == NULL)
    return oom(p);
  TemplatePartial *d = arena_alloc(p->t, sizeof *d);
  if (d == NULL) return oom(p);
  d->name = name->lit.s;
  d->len = name->lit.len;
  d->offset = tag;
  size_t b = partial_bucket(d->name, d->len);
  d->next = p->partials[b];
  p->partials[b] = d;
  Stop stop;
  if (parse_seq(p, depth + 1, &d->body, &stop) != 0) return -1;
  if (stop.kind == kStopElse)
    return fail_at(p, stop.offset, kHeraldInvalid, "{{else}} in {{#* inline \"%s\"}}", d->name);
  if (stop.kind == kStopEof)
    return fail_at(p, tag, kHeraldInvalid, "unclosed {{#* inline \"%s\"}}", d->name);
  if (stop.name_len != 6 || memcmp(stop.name, "inline", 6) != 0) {
    int line, col;
    template_position(p->src, p->len, tag, &line, &col);
    return fail_at(p, stop.offset, kHeraldInvalid,
                   "{{/%.*s}} does not close {{#* inline \"%s\"}} (opened at line %d, column %d)",
                   (int)stop.name_len, stop.name, d->name, line, col);
  }
  return 0;
}

/* {{> name}}, {{> name ctx}}, {{> name key=value ...}} from after the ">". The name is resolved
 * when the whole template has been read. */
static TemplateNode *parse_partial_call(Parser *p, size_t tag) {
  skip_space(p);
  if (p->pos >= p->len) {
    fail_unterminated(p);
    return NULL;
  }
  const char *name;
  size_t len;
  char c = p->src[p->pos];
  if (c == '"' || c == '\'') {
    TemplateExpr *lit = parse_string(p);
    if (lit == NULL) return NULL;
    name = lit->lit.s;
    len = lit->lit.len;
  } else if (c == '(') {
    fail_at(p, p->pos, kHeraldInvalid, "dynamic partial names ({{> (expr)}}) are not supported");
    return NULL;
  } else {
    /* a name as Handlebars writes one: id characters, and / or . as in "emails/footer" */
    size_t s = p->pos;
    while (p->pos < p->len && (is_id_char((unsigned char)p->src[p->pos]) || p->src[p->pos] == '/' ||
                               p->src[p->pos] == '.'))
      p->pos++;
    if (p->pos == s) {
      char b[16];
      if (at_tag_end(p, 0)) fail_at(p, p->pos, kHeraldInvalid, "expected a partial name after {{>");
      else fail_at(p, p->pos, kHeraldInvalid, "unexpected %s: expected a partial name", shown(c, b));
      return NULL;
    }
    name = arena_strndup(p, p->src + s, p->pos - s);
    if (name == NULL) return NULL;
    len = p->pos - s;
  }
  if (!delimiter_at(p, p->pos)) {
    char b[16];
    fail_at(p, p->pos, kHeraldInvalid, "unexpected %s after the partial name", shown(p->src[p->pos], b));
    return NULL;
  }
  if (len == 0) {
    fail_at(p, tag, kHeraldInvalid, "empty partial name");
    return NULL;
  }
  Args a;
  if (parse_args(p, 0, 0, 0, &a) != 0) return NULL;
  if (a.np > 1) {
    fail_at(p, a.params[1]->offset, kHeraldInvalid,
            "a partial takes at most one context argument and key=value arguments, got %d arguments", a.np);
    return NULL;
  }
  if (expect_tag_end(p, 0) != 0) return NULL;
  TemplateNode *n = arena_alloc(p->t, sizeof *n);
  PartialCall *call = arena_alloc(p->t, sizeof *call);
  if (n == NULL || call == NULL) {
    oom(p);
    return NULL;
  }
  n->kind = kNodePartial;
  n->offset = tag;
  n->expr = a.np ? a.params[0] : NULL;
  n->nhash = a.nh;
  if (a.nh && (n->hash = hash_copy(p, &a)) == NULL) return NULL;
  call->node = n;
  call->name = name;
  call->len = len;
  *p->calls_tail = call;
  p->calls_tail = &call->next;
  return n;
}

/* Points every partial call at its partial, now that all are defined. */
static int resolve_partials(Parser *p) {
  for (const PartialCall *c = p->calls; c != NULL; c = c->next) {
    c->node->partial = partial_find(p, c->name, c->len);
    if (c->node->partial == NULL)
      return fail_at(p, c->node->offset, kHeraldInvalid,
                     "unknown partial '%.*s' (a template defines its partials with {{#* inline \"%.*s\"}})",
                     (int)c->len, c->name, (int)c->len, c->name);
  }
  return 0;
}

/* Does the tag opener at i ("{{~", "{{~{") strip whitespace before it? */
static int tag_strips_left(Parser *p, size_t i) {
  i += 2;
  return i < p->len && p->src[i] == '~';
}

static int parse_comment(Parser *p, size_t tag) {
  /* p->pos is after "{{" and an optional "~", at '!' */
  p->pos++;
  int long_form = p->len - p->pos >= 2 && memcmp(p->src + p->pos, "--", 2) == 0;
  const char *end_mark = long_form ? "--" : "";
  size_t mlen = strlen(end_mark);
  for (size_t i = p->pos + (long_form ? 2 : 0); i + 1 < p->len; i++) {
    if (mlen && (p->len - i < mlen || memcmp(p->src + i, end_mark, mlen) != 0)) continue;
    size_t j = i + mlen;
    int strip = 0;
    if (j < p->len && p->src[j] == '~') {
      strip = 1;
      j++;
    }
    if (p->len - j >= 2 && memcmp(p->src + j, "}}", 2) == 0) {
      p->pos = j + 2;
      p->strip_next = strip;
      return 0;
    }
  }
  return fail_at(p, tag, kHeraldInvalid, "unclosed comment");
}

static int parse_seq(Parser *p, int depth, TemplateNode **head, Stop *stop) {
  TemplateNode **tail = head;
  *head = NULL;
  for (;;) {
    size_t text_start = p->pos;
    size_t i = p->pos;
    size_t tag = p->len;
    size_t out_end = p->len;   /* end of the text to emit before the tag */
    while (i + 1 < p->len) {
      const char *q = memchr(p->src + i, '{', p->len - i - 1);
      if (q == NULL) break;
      i = (size_t)(q - p->src);
      if (p->src[i + 1] == '{') {
        if (i >= text_start + 2 && p->src[i - 1] == '\\' && p->src[i - 2] == '\\') {
          /* \\{{ is an escaped backslash before a real tag: Handlebars' lexer drops one of the
           * two backslashes and reads the tag */
          tag = i;
          out_end = i - 1;
          break;
        }
        if (i > 0 && p->src[i - 1] == '\\') {
          /* \{{ is a literal "{{": emit the text before the backslash, then the braces as text */
          if (append_text(p, &tail, text_start, i - 1, 0) != 0) return -1;
          size_t close = i + 2;
          const char *e = NULL;
          if (close < p->len) e = memchr(p->src + close, '}', p->len - close);
          size_t end = e ? (size_t)(e - p->src) : p->len;
          while (end < p->len && p->src[end] == '}') end++;
          if (append_text(p, &tail, i, end, 0) != 0) return -1;
          text_start = i = end;
          continue;
        }
        tag = i;
        out_end = i;
        break;
      }
      i++;
    }
    if (append_text(p, &tail, text_start, out_end, tag < p->len && tag_strips_left(p, tag)) != 0)
      return -1;
    if (tag >= p->len) {
      p->pos = p->len;
      stop->kind = kStopEof;
      return 0;
    }
    p->pos = tag + 2;
    p->tag = tag;
    if (p->pos < p->len && p->src[p->pos] == '~') p->pos++;
    int raw = 0;
    if (p->pos < p->len && p->src[p->pos] == '{') {
      raw = 1;
      p->pos++;
      if (p->pos < p->len && p->src[p->pos] == '~')
        return fail_at(p, p->pos, kHeraldInvalid, "whitespace control on {{{x}}} is written {{~{x}~}}");
    }
    if (raw) {
      TemplateNode *n = arena_alloc(p->t, sizeof *n);
      if (n == NULL) return oom(p);
      n->kind = kNodeOutput;
      n->offset = tag;
      n->raw = 1;
      n->expr = parse_tag_expr(p, 1);
      if (n->expr == NULL || expect_tag_end(p, 1) != 0) return -1;
      *tail = n;
      tail = &n->next;
      continue;
    }
    char c = p->pos < p->len ? p->src[p->pos] : '\0';
    if (c == '!') {
      if (parse_comment(p, tag) != 0) return -1;
      standalone(p, tag);
      continue;
    }
    if (c == '>') {
      p->pos++;
      TemplateNode *n = parse_partial_call(p, tag);
      if (n == NULL) return -1;
      *tail = n;
      tail = &n->next;
      continue;
    }
    if (c == '*')
      return fail_at(p, tag, kHeraldInvalid,
                     "decorators are not supported, except inline partials: {{#* inline \"name\"}}...{{/inline}}");
    if (c == '#' && p->pos + 1 < p->len && p->src[p->pos + 1] == '*') {
      p->pos += 2;
      if (parse_inline(p, tag, depth) != 0) return -1;
      continue;
    }
    if (c == '#' && p->pos + 1 < p->len && p->src[p->pos + 1] == '>')
      return fail_at(p, tag, kHeraldInvalid, "partial blocks ({{#> name}}) are not supported");
    if (c == '#') {
      p->pos++;
      TemplateNode *n = parse_block(p, tag, depth);
      if (n == NULL) return -1;
      *tail = n;
      tail = &n->next;
      continue;
    }
    if (c == '/') {
      p->pos++;
      skip_space(p);
      if (p->pos >= p->len) return fail_unterminated(p);
      size_t s = p->pos;
      while (p->pos < p->len && is_id_char((unsigned char)p->src[p->pos])) p->pos++;
      stop->kind = kStopClose;
      stop->offset = tag;
      stop->name = p->src + s;
      stop->name_len = p->pos - s;
      if (stop->name_len == 0) return fail_at(p, s, kHeraldInvalid, "expected a block name after {{/");
      if (expect_tag_end(p, 0) != 0) return -1;
      standalone(p, tag);
      if (depth == 0)
        return fail_at(p, tag, kHeraldInvalid, "{{/%.*s}} closes no open block", (int)stop->name_len,
                       stop->name);
      return 0;
    }
    /* {{else}}, {{else if x}}, {{^}} */
    size_t save = p->pos;
    skip_space(p);
    int is_else = 0;
    if (c == '^') {
      p->pos++;
      skip_space(p);
      if (p->pos >= p->len) return fail_unterminated(p);
      if (!at_tag_end(p, 0)) return fail_at(p, tag, kHeraldInvalid, "inverted sections ({{^name}}) are not supported");
      is_else = 1;
    } else if (p->len - p->pos >= 4 && memcmp(p->src + p->pos, "else", 4) == 0 &&
               (p->pos + 4 >= p->len || isspace((unsigned char)p->src[p->pos + 4]) ||
                p->src[p->pos + 4] == '}' || p->src[p->pos + 4] == '~')) {
      p->pos += 4;
      is_else = 1;
    }
    if (is_else) {
      if (depth == 0) return fail_at(p, tag, kHeraldInvalid, "{{else}} outside a block");
      stop->kind = kStopElse;
      stop->offset = tag;
      stop->name = NULL;
      skip_space(p);
      if (at_tag_end(p, 0)) {
        if (expect_tag_end(p, 0) != 0) return -1;
        standalone(p, tag);
        return 0;
      }
      stop->name = p->src + p->pos;
      stop->content = p->pos;
      return 0;
    }
    p->pos = save;
    if (c == '&') p->pos++;
    TemplateNode *n = arena_alloc(p->t, sizeof *n);
    if (n == NULL) return oom(p);
    n->kind = kNodeOutput;
    n->offset = tag;
    n->raw = c == '&';
    n->expr = parse_tag_expr(p, 0);
    if (n->expr == NULL || expect_tag_end(p, 0) != 0) return -1;
    *tail = n;
    tail = &n->next;
  }
}

int herald_template_compile(const char *name, const char *text, size_t len, int escape,
                            HeraldTemplate **out, HeraldError *err) {
  *out = NULL;
  if (name == NULL) name = "template";
  if (escape != HERALD_TEMPLATE_ESCAPE_NONE && escape != HERALD_TEMPLATE_ESCAPE_HTML &&
      escape != HERALD_TEMPLATE_ESCAPE_URI)
    return herald_error_set(err, kHeraldInvalid, "%s: unknown escape mode %d", name, escape);
  if (len > HERALD_TEMPLATE_MAX_SOURCE)
    return herald_error_set(err, kHeraldLimit, "%s: template is %zu bytes, more than the %d allowed",
                            name, len, HERALD_TEMPLATE_MAX_SOURCE);
  HeraldTemplate *t = calloc(1, sizeof *t);
  if (t == NULL) return herald_error_set(err, kHeraldNoMemory, "%s: out of memory", name);
  t->name = strdup(name);
  t->source = malloc(len + 1);
  if (t->name == NULL || t->source == NULL) {
    herald_template_free(t);
    return herald_error_set(err, kHeraldNoMemory, "%s: out of memory", name);
  }
  memcpy(t->source, text, len);
  t->source[len] = '\0';
  t->source_len = len;
  t->escape = escape;
  Parser p = {.t = t, .src = t->source, .len = len, .err = err};
  p.calls_tail = &p.calls;
  Stop stop;
  if (parse_seq(&p, 0, &t->root, &stop) != 0 || resolve_partials(&p) != 0) {
    HeraldErrorCode code = err ? err->code : kHeraldInvalid;
    herald_template_free(t);
    return (int)code;
  }
  *out = t;
  return kHeraldOk;
}

void herald_template_free(HeraldTemplate *t) {
  if (t == NULL) return;
  TemplateArenaChunk *c = t->arena;
  while (c != NULL) {
    TemplateArenaChunk *next = c->next;
    free(c);
    c = next;
  }
  free(t->name);
  free(t->source);
  free(t);
}

const char *herald_template_name(const HeraldTemplate *t) { return t->name; }

size_t herald_template_memory(const HeraldTemplate *t) {
  size_t n = sizeof *t + strlen(t->name) + 1 + t->source_len + 1;
  for (const TemplateArenaChunk *c = t->arena; c != NULL; c = c->next) n += sizeof *c + c->cap;
  return n;
}
