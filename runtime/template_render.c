/* The template renderer: walks the compiled node tree against a jansson context.
 *
 * Values are views (a json_t, or bytes in the context, the template or scratch memory), so a
 * render allocates nothing but the output and the strings helpers build. Work is bounded: a
 * step budget counts nodes, expressions and the bytes helpers read, #each visits at most
 * HERALD_TEMPLATE_MAX_EACH items, the output and the helpers' scratch memory have byte limits. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/template_internal.h"

struct HeraldTemplateScratchChunk {
  HeraldTemplateScratchChunk *next;
  size_t used, cap;
  max_align_t data[];
};

#define SCRATCH_CHUNK (64 * 1024)

int template_render_fail(TemplateRender *r, size_t offset, HeraldErrorCode code,
                         const char *fmt, ...) {
  if (r->failed) return -1;
  r->failed = 1;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  int line, col;
  template_position(r->t->source, r->t->source_len, offset, &line, &col);
  herald_error_set(r->err, code, "%s: line %d, column %d: %s", r->t->name, line, col, msg);
  return -1;
}

char *template_scratch(TemplateRender *r, size_t n) {
  size_t limit = r->max_out * 2;
  if (n > limit || r->scratch_used > limit - n) {
    template_render_fail(r, r->at, kHeraldLimit, "helpers built more than %zu bytes of text", limit);
    return NULL;
  }
  HeraldTemplateScratchChunk *c = r->out->scratch;
  /* chunks are reused across renders: look for room in any of them */
  for (; c != NULL; c = c->next)
    if (c->cap - c->used >= n) break;
  if (c == NULL) {
    size_t cap = n > SCRATCH_CHUNK ? n : SCRATCH_CHUNK;
    c = malloc(sizeof *c + cap);
    if (c == NULL) {
      template_render_fail(r, r->at, kHeraldNoMemory, "out of memory");
      return NULL;
    }
    c->cap = cap;
    c->used = 0;
    c->next = r->out->scratch;
    r->out->scratch = c;
  }
  char *p = (char *)c->data + c->used;
  c->used += n;
  r->scratch_used += n;
  return p;
}

void herald_template_output_free(HeraldTemplateOutput *out) {
  if (out == NULL) return;
  HeraldTemplateScratchChunk *c = out->scratch;
  while (c != NULL) {
    HeraldTemplateScratchChunk *next = c->next;
    free(c);
    c = next;
  }
  free(out->data);
  memset(out, 0, sizeof *out);
}

static int out_reserve(TemplateRender *r, size_t n) {
  HeraldTemplateOutput *o = r->out;
  if (n > r->max_out || o->len > r->max_out - n)
    return template_render_fail(r, r->at, kHeraldLimit, "output exceeds %zu bytes", r->max_out);
  if (o->len + n + 1 <= o->cap) return 0;
  size_t cap = o->cap ? o->cap : 4096;
  while (cap < o->len + n + 1) cap *= 2;
  char *d = realloc(o->data, cap);
  if (d == NULL) return template_render_fail(r, r->at, kHeraldNoMemory, "out of memory");
  o->data = d;
  o->cap = cap;
  return 0;
}

static int out_append(TemplateRender *r, const char *s, size_t n) {
  if (n == 0) return 0;
  if (out_reserve(r, n) != 0) return -1;
  memcpy(r->out->data + r->out->len, s, n);
  r->out->len += n;
  return 0;
}

/* Handlebars escapes these seven characters in {{x}}. */
static int out_escaped(TemplateRender *r, const char *s, size_t n) {
  size_t start = 0;
  for (size_t i = 0; i < n; i++) {
    const char *rep;
    switch (s[i]) {
      case '&': rep = "&amp;"; break;
      case '<': rep = "&lt;"; break;
      case '>': rep = "&gt;"; break;
      case '"': rep = "&quot;"; break;
      case '\'': rep = "&#x27;"; break;
      case '`': rep = "&#x60;"; break;
      case '=': rep = "&#x3D;"; break;
      default: continue;
    }
    if (out_append(r, s + start, i - start) != 0 || out_append(r, rep, strlen(rep)) != 0) return -1;
    start = i + 1;
  }
  return out_append(r, s + start, n - start);
}

/* Percent-encodes every byte but RFC 3986's unreserved characters: a value output into a URI
 * stays one component of it. Encoding the reserved characters too (/ ? # & = + , and the
 * rest) keeps a value from ending the query, adding a parameter, or, as a ',' does in
 * List-Unsubscribe (RFC 2369), starting another URI; '%' itself is encoded, so a value already
 * holding %XX keeps it as written rather than having it decoded at the other end. */
static int out_uri_encoded(TemplateRender *r, const char *s, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  size_t start = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
        ch == '-' || ch == '.' || ch == '_' || ch == '~')
      continue;
    char enc[3] = {'%', hex[ch >> 4], hex[ch & 15]};
    if (out_append(r, s + start, i - start) != 0 || out_append(r, enc, 3) != 0) return -1;
    start = i + 1;
  }
  return out_append(r, s + start, n - start);
}

void template_value_from_json(const json_t *j, TemplateValue *v) {
  memset(v, 0, sizeof *v);
  if (j == NULL) return;
  switch (json_typeof(j)) {
    case JSON_OBJECT: v->kind = kValObject; v->j = j; break;
    case JSON_ARRAY: v->kind = kValArray; v->j = j; break;
    case JSON_STRING:
      v->kind = kValString;
      v->s = json_string_value(j);
      v->len = json_string_length(j);
      break;
    case JSON_INTEGER: v->kind = kValNumber; v->n = (double)json_integer_value(j); break;
    case JSON_REAL: v->kind = kValNumber; v->n = json_real_value(j); break;
    case JSON_TRUE: v->kind = kValBool; v->b = 1; break;
    case JSON_FALSE: v->kind = kValBool; v->b = 0; break;
    case JSON_NULL: v->kind = kValNull; break;
  }
}

int template_value_truthy(const TemplateValue *v) {
  switch (v->kind) {
    case kValMissing:
    case kValNull: return 0;
    case kValBool: return v->b;
    case kValNumber: return v->n != 0 && !isnan(v->n);
    case kValString: return v->len > 0;
    case kValArray: return json_array_size(v->j) > 0;
    case kValObject: return 1;
  }
  return 0;
}

int template_value_number(const TemplateValue *v, double *out) {
  if (v->kind == kValNumber) {
    *out = v->n;
    return 1;
  }
  if (v->kind == kValArray && json_array_size(v->j) == 1) {
    TemplateValue item;
    template_value_from_json(json_array_get(v->j, 0), &item);
    if (item.kind == kValArray) return 0;
    return template_value_number(&item, out);
  }
  if (v->kind != kValString || v->len == 0 || v->len > 63) return 0;
  char tmp[64];
  memcpy(tmp, v->s, v->len);
  tmp[v->len] = '\0';
  char *end;
  double d = strtod(tmp, &end);
  while (*end == ' ') end++;
  if (end == tmp || *end != '\0' || tmp[0] == ' ' || isnan(d) || isinf(d)) return 0;
  *out = d;
  return 1;
}

/* d as JavaScript's Number.prototype.toString writes it (ECMA-262 Number::toString), as
 * Handlebars.js prints numbers: the fewest digits that read back as d, in fixed notation for
 * 1e-7 < |d| < 1e21 (0.00001, 100000000000000000000) and in exponent form outside (1e-7,
 * 1.5e+21); -0 prints 0. printf's %g switches to exponents at other bounds (1e-05, 1e+20). */
static size_t format_number(double d, char *buf, size_t size) {
  if (isnan(d)) return (size_t)snprintf(buf, size, "NaN");
  if (isinf(d)) return (size_t)snprintf(buf, size, d > 0 ? "Infinity" : "-Infinity");
  if (d == floor(d) && fabs(d) < 1e15) return (size_t)snprintf(buf, size, "%lld", (long long)d);
  char e[40];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(e, sizeof e, "%.*e", prec - 1, d);
    if (strtod(e, NULL) == d) break;
  }
  /* e is [-]D[.DDD]e(+|-)XX: the digits, and n such that d = 0.DIGITS x 10^n */
  const char *q = e + (e[0] == '-');
  char digits[24];
  int k = 0;
  for (; *q != 'e'; q++)
    if (*q != '.') digits[k++] = *q;
  int n = atoi(q + 1) + 1;
  while (k > 1 && digits[k - 1] == '0') k--;
  char t[48];
  int o = 0;
  if (e[0] == '-') t[o++] = '-';
  if (k <= n && n <= 21) {
    memcpy(t + o, digits, (size_t)k);
    o += k;
    for (int i = k; i < n; i++) t[o++] = '0';
  } else if (0 < n && n <= 21) {
    memcpy(t + o, digits, (size_t)n);
    o += n;
    t[o++] = '.';
    memcpy(t + o, digits + n, (size_t)(k - n));
    o += k - n;
  } else if (-6 < n && n <= 0) {
    t[o++] = '0';
    t[o++] = '.';
    for (int i = n; i < 0; i++) t[o++] = '0';
    memcpy(t + o, digits, (size_t)k);
    o += k;
  } else {
    t[o++] = digits[0];
    if (k > 1) {
      t[o++] = '.';
      memcpy(t + o, digits + 1, (size_t)(k - 1));
      o += k - 1;
    }
    o += snprintf(t + o, sizeof t - (size_t)o, "e%c%d", n - 1 < 0 ? '-' : '+', abs(n - 1));
  }
  t[o] = '\0';
  return (size_t)snprintf(buf, size, "%s", t);
}

static int json_text_append(TemplateRender *r, const json_t *j, char **buf, size_t *len,
                            size_t *cap, int depth);

int template_text_append(TemplateRender *r, char **buf, size_t *len, size_t *cap, const char *s,
                         size_t n) {
  if (n == 0) return 0;
  if (*len + n > *cap) {
    size_t ncap = *cap ? *cap * 2 : 64;
    while (ncap < *len + n) ncap *= 2;
    char *nb = template_scratch(r, ncap);
    if (nb == NULL) return -1;
    if (*len) memcpy(nb, *buf, *len);
    *buf = nb;
    *cap = ncap;
  }
  memcpy(*buf + *len, s, n);
  *len += n;
  return 0;
}

/* A list prints as Handlebars.js prints an array: its items' text joined with ",". */
static int json_text_append(TemplateRender *r, const json_t *j, char **buf, size_t *len,
                            size_t *cap, int depth) {
  char num[64];
  switch (json_typeof(j)) {
    case JSON_STRING: return template_text_append(r, buf, len, cap, json_string_value(j), json_string_length(j));
    case JSON_INTEGER:
    case JSON_REAL: {
      size_t n = format_number(json_number_value(j), num, sizeof num);
      return template_text_append(r, buf, len, cap, num, n);
    }
    case JSON_TRUE: return template_text_append(r, buf, len, cap, "true", 4);
    case JSON_FALSE: return template_text_append(r, buf, len, cap, "false", 5);
    case JSON_NULL: return 0;
    case JSON_OBJECT: return template_text_append(r, buf, len, cap, "[object Object]", 15);
    case JSON_ARRAY: {
      if (depth >= HERALD_TEMPLATE_MAX_DEPTH) return 0;
      for (size_t i = 0; i < json_array_size(j); i++) {
        if (i > 0 && template_text_append(r, buf, len, cap, ",", 1) != 0) return -1;
        if (json_text_append(r, json_array_get(j, i), buf, len, cap, depth + 1) != 0) return -1;
      }
      return 0;
    }
  }
  return 0;
}

int template_value_text(TemplateRender *r, const TemplateValue *v, const char **s, size_t *len) {
  char num[64];
  switch (v->kind) {
    case kValMissing:
    case kValNull: *s = ""; *len = 0; return 0;
    case kValBool: *s = v->b ? "true" : "false"; *len = v->b ? 4 : 5; return 0;
    case kValString: *s = v->s; *len = v->len; return 0;
    case kValObject: *s = "[object Object]"; *len = 15; return 0;
    case kValNumber: {
      size_t n = format_number(v->n, num, sizeof num);
      char *d = template_scratch(r, n);
      if (d == NULL) return -1;
      memcpy(d, num, n);
      *s = d;
      *len = n;
      return 0;
    }
    case kValArray: {
      if (json_array_size(v->j) == 1) {
        const json_t *only = json_array_get(v->j, 0);
        if (json_is_string(only)) {
          *s = json_string_value(only);
          *len = json_string_length(only);
          return 0;
        }
      }
      char *buf = NULL;
      size_t n = 0, cap = 0;
      if (json_text_append(r, v->j, &buf, &n, &cap, 0) != 0) return -1;
      *s = buf ? buf : "";
      *len = n;
      return 0;
    }
  }
  *s = "";
  *len = 0;
  return 0;
}

static int over_steps(TemplateRender *r, size_t offset) {
  return template_render_fail(r, offset, kHeraldLimit, "rendering took more than %ld steps",
                              HERALD_TEMPLATE_MAX_STEPS);
}

static int step(TemplateRender *r, size_t offset) {
  r->at = offset;
  if (++r->steps > HERALD_TEMPLATE_MAX_STEPS) return over_steps(r, offset);
  return 0;
}

/* A helper reads its arguments whole (md5 of 200 KB, a replace that finds nothing and builds
 * nothing), so one step per call let a template of nested #each spend minutes in helpers. At
 * this rate the budget allows 16 MB of helper input per render, far more than real messages
 * pass to helpers, and the slowest helper per byte (slugify, which classifies every character
 * and may build nothing) stays within a fraction of a second. */
#define HELPER_BYTES_PER_STEP 16

/* Charges the step budget for n bytes of helper input; -1 past the budget. */
static int charge(TemplateRender *r, size_t n) {
  r->helper_bytes += n;
  size_t steps = r->helper_bytes / HELPER_BYTES_PER_STEP;
  if (steps == 0) return 0;
  r->helper_bytes %= HELPER_BYTES_PER_STEP;
  if (steps > (size_t)(HERALD_TEMPLATE_MAX_STEPS - r->steps)) {
    r->steps = HERALD_TEMPLATE_MAX_STEPS + 1;
    return over_steps(r, r->at);
  }
  r->steps += (long)steps;
  return 0;
}

/* The bytes of text a helper reads from v. A list of one string reads as that string without a
 * copy; other lists and numbers are built as text in scratch memory, which has its own limit. */
static size_t text_bytes(const TemplateValue *v) {
  if (v->kind == kValString) return v->len;
  if (v->kind == kValArray && json_array_size(v->j) == 1) {
    const json_t *only = json_array_get(v->j, 0);
    if (json_is_string(only)) return json_string_length(only);
  }
  return 0;
}

/* Follows segs from j. With vars (j is a substitution tree), an index 0 that ends the path
 * reads a scalar as itself, as if it were the list of one value Pinpoint's attributes are. */
static const json_t *walk(const json_t *j, const TemplatePathSeg *segs, int nsegs, int vars,
                          TemplateValue *len_out) {
  for (int i = 0; i < nsegs && j != NULL; i++) {
    if (vars && i == nsegs - 1 && segs[i].index == 0 && !json_is_object(j) && !json_is_array(j))
      return j;
    if (json_is_object(j)) {
      j = json_object_get(j, segs[i].text);
    } else if (json_is_array(j)) {
      if (segs[i].index >= 0) {
        j = json_array_get(j, (size_t)segs[i].index);
      } else if (i == nsegs - 1 && segs[i].len == 6 && memcmp(segs[i].text, "length", 6) == 0) {
        len_out->kind = kValNumber;
        len_out->n = (double)json_array_size(j);
        return NULL;
      } else {
        return NULL;
      }
    } else {
      return NULL;
    }
  }
  return j;
}

static int present(const json_t *j) {
  if (j == NULL || json_is_null(j)) return 0;
  if (json_is_string(j)) return json_string_length(j) > 0;
  if (json_is_array(j)) return json_array_size(j) > 0;
  return 1;
}

/* The top-level scope: substitutions, then the endpoint, then the defaults. An object (User,
 * Attributes, ...) comes from the endpoint when it has one, since substitutions and defaults
 * hold only a few leaves of it; their leaves still win when read by their full path. */
static void lookup_root(TemplateRender *r, const TemplateExpr *e, TemplateValue *v) {
  const json_t *layers[3] = {r->subs, r->ctx, r->defaults};
  const json_t *object = NULL;
  memset(v, 0, sizeof *v);
  for (int i = 0; i < 3; i++) {
    if (layers[i] == NULL) continue;
    int vars = layers[i] != r->ctx;
    TemplateValue len = {0};
    const json_t *j = walk(layers[i], e->segs, e->nsegs, vars, &len);
    if (len.kind == kValNumber) {
      *v = len;
      return;
    }
    if (!present(j)) continue;
    if (json_is_object(j) && vars) {
      if (object == NULL) object = j;
      continue;
    }
    template_value_from_json(j, v);
    v->vars = vars;
    return;
  }
  if (object != NULL) {
    template_value_from_json(object, v);
    v->vars = 1;
  }
}

static int found(const TemplateValue *v) { return v->kind != kValMissing && v->kind != kValNull; }

/* Reads the rest of e's path (after its first segment) from base. */
static void lookup_rest(const TemplateValue *base, const TemplateExpr *e, TemplateValue *v) {
  memset(v, 0, sizeof *v);
  if (e->nsegs == 1) {
    *v = *base;
    return;
  }
  if (base->kind == kValObject || base->kind == kValArray) {
    TemplateValue len = {0};
    const json_t *j = walk(base->j, e->segs + 1, e->nsegs - 1, base->vars, &len);
    if (len.kind == kValNumber) {
      *v = len;
      return;
    }
    template_value_from_json(j, v);
    v->vars = base->vars;
    return;
  }
  /* a single substitution value reads as a list of one (see walk) */
  if (base->vars && e->nsegs == 2 && e->segs[1].index == 0) *v = *base;
}

/* A name among the key=value arguments of the partial that made frame f. */
static int lookup_hash(const TemplateFrame *f, const TemplateExpr *e, TemplateValue *v) {
  for (int i = 0; i < f->nhash; i++) {
    const char *name = f->hash[i].name;
    if (strlen(name) != e->segs[0].len || memcmp(name, e->segs[0].text, e->segs[0].len) != 0) continue;
    lookup_rest(&f->hash_values[i], e, v);
    return 1;
  }
  return 0;
}

static void lookup_self(const TemplateFrame *f, const TemplateExpr *e, TemplateValue *v) {
  memset(v, 0, sizeof *v);
  if (f->self.kind != kValObject && f->self.kind != kValArray) return;
  TemplateValue len = {0};
  const json_t *j = walk(f->self.j, e->segs, e->nsegs, f->self.vars, &len);
  if (len.kind == kValNumber) {
    *v = len;
    return;
  }
  template_value_from_json(j, v);
  v->vars = f->self.vars;
}

static void lookup_path(TemplateRender *r, const TemplateExpr *e, TemplateValue *v) {
  memset(v, 0, sizeof *v);
  const TemplateFrame *f = r->frame;
  if (e->data != kDataNone) {
    while (f != NULL && !f->has_index) f = f->parent;
    if (f == NULL) return;
    switch (e->data) {
      case kDataIndex: v->kind = kValNumber; v->n = (double)f->index; break;
      case kDataFirst: v->kind = kValBool; v->b = f->first; break;
      case kDataLast: v->kind = kValBool; v->b = f->last; break;
      case kDataKey: *v = f->key; break;
      case kDataNone: break;
    }
    return;
  }
  if (e->up < 0) {
    while (f->parent != NULL) f = f->parent;
  } else {
    for (int i = 0; i < e->up; i++) {
      if (f->parent == NULL) return;
      f = f->parent;
    }
  }
  if (e->nsegs == 0) {
    if (f->parent == NULL) template_value_from_json(r->ctx, v);
    else *v = f->self;
    return;
  }
  /* A name the scope lacks is read on the scopes around it, ending at the top level, as
   * Handlebars.java's Context does: {{#each Colors}}{{this}} for {{FirstName}}{{/each}} reads
   * FirstName from the endpoint or the substitutions. this, ./ and ../ name one scope. */
  int fallback = e->up == 0 && !e->local;
  for (;; f = f->parent) {
    if (e->up >= 0 && lookup_hash(f, e, v) && (found(v) || !fallback)) return;
    if (f->parent == NULL) {
      lookup_root(r, e, v);
      return;
    }
    lookup_self(f, e, v);
    if (found(v) || !fallback) return;
  }
}

static int eval(TemplateRender *r, const TemplateExpr *e, TemplateValue *v);

/* Calls a helper. A conditional helper yields a boolean; inline (not as a block) it yields its
 * yes= / no= argument instead when one is given, as Pinpoint's helpers do. */
static int eval_call(TemplateRender *r, const TemplateExpr *e, int as_block, TemplateValue *v) {
  TemplateValue params[64];
  for (int i = 0; i < e->nparams; i++)
    if (eval(r, e->params[i], &params[i]) != 0) return -1;
  memset(v, 0, sizeof *v);
  r->at = e->offset;   /* the arguments moved it; what the helper builds is the call's */
  size_t bytes = 0;
  for (int i = 0; i < e->nparams; i++) bytes += text_bytes(&params[i]);
  if (charge(r, bytes) != 0 || e->helper->fn(r, e, params, e->nparams, v) != 0) return -1;
  if (e->helper->kind == kHelperConditional && !as_block) {
    TemplateValue pick;
    if (template_hash_get(r, e, v->b ? "yes" : "no", &pick) != 0) return -1;
    if (pick.kind != kValMissing) *v = pick;
  }
  return 0;
}

static int eval(TemplateRender *r, const TemplateExpr *e, TemplateValue *v) {
  if (step(r, e->offset) != 0) return -1;
  switch (e->kind) {
    case kExprLiteral: *v = e->lit; return 0;
    case kExprPath: lookup_path(r, e, v); return 0;
    case kExprCall: return eval_call(r, e, 0, v);
  }
  return 0;
}

int template_hash_get(TemplateRender *r, const TemplateExpr *call, const char *name,
                      TemplateValue *out) {
  memset(out, 0, sizeof *out);
  for (int i = 0; i < call->nhash; i++) {
    if (strcmp(call->hash[i].name, name) != 0) continue;
    /* the helper asking goes on building after this: keep its position for its errors */
    size_t at = r->at;
    int rc = eval(r, call->hash[i].value, out);
    r->at = at;
    return rc != 0 ? rc : charge(r, text_bytes(out));
  }
  return 0;
}

static int render_nodes(TemplateRender *r, const TemplateNode *n);

static size_t each_count(const TemplateValue *v) {
  if (v->kind == kValArray) return json_array_size(v->j);
  if (v->kind == kValObject) return json_object_size(v->j);
  return 0;
}

/* Renders n's body for each item of v, which has some. */
static int render_each(TemplateRender *r, const TemplateNode *n, const TemplateValue *v) {
  size_t count = each_count(v);
  if (count > HERALD_TEMPLATE_MAX_EACH) count = HERALD_TEMPLATE_MAX_EACH;
  TemplateFrame f = {.parent = r->frame, .has_index = 1};
  const TemplateFrame *saved = r->frame;
  r->frame = &f;
  int rc = 0;
  if (v->kind == kValArray) {
    for (size_t i = 0; i < count && rc == 0; i++) {
      template_value_from_json(json_array_get(v->j, i), &f.self);
      f.self.vars = v->vars;
      f.index = i;
      f.first = i == 0;
      f.last = i + 1 == count;
      f.key.kind = kValNumber;
      f.key.n = (double)i;
      rc = render_nodes(r, n->body);
    }
  } else {
    size_t i = 0;
    const char *key;
    json_t *item;
    json_object_foreach((json_t *)v->j, key, item) {
      if (i >= count || rc != 0) break;
      template_value_from_json(item, &f.self);
      f.self.vars = v->vars;
      f.index = i;
      f.first = i == 0;
      f.last = i + 1 == count;
      f.key.kind = kValString;
      f.key.s = key;
      f.key.len = strlen(key);
      rc = render_nodes(r, n->body);
      i++;
    }
  }
  r->frame = saved;
  return rc;
}

/* Renders a block, or the first block of an {{else if}} chain whose test passes: the chain is
 * walked here in a loop, so a long chain costs steps, not stack. */
static int render_block(TemplateRender *r, const TemplateNode *n) {
  for (;;) {
    TemplateValue v;
    if (n->block == kBlockHelper) {
      if (step(r, n->expr->offset) != 0 || eval_call(r, n->expr, 1, &v) != 0) return -1;
    } else if (eval(r, n->expr, &v) != 0) {
      return -1;
    }
    int body;
    switch (n->block) {
      case kBlockUnless: body = !template_value_truthy(&v); break;
      case kBlockEach: body = each_count(&v) > 0; break;
      default: body = template_value_truthy(&v); break;
    }
    if (!body) {
      if (!n->chained) return render_nodes(r, n->inverse);
      n = n->inverse;
      if (step(r, n->offset) != 0) return -1;
      continue;
    }
    switch (n->block) {
      case kBlockEach: return render_each(r, n, &v);
      case kBlockWith: {
        TemplateFrame f = {.self = v, .parent = r->frame};
        const TemplateFrame *saved = r->frame;
        r->frame = &f;
        int rc = render_nodes(r, n->body);
        r->frame = saved;
        return rc;
      }
      default: return render_nodes(r, n->body);
    }
  }
}

/* {{> name ctx key=value}}: the partial's body, read against ctx when given (a scope inside the
 * caller's), or else against the caller's scope, with the key=value names read first. */
static int render_partial(TemplateRender *r, const TemplateNode *n) {
  const TemplatePartial *d = n->partial;
  if (r->partial_depth >= HERALD_TEMPLATE_MAX_PARTIALS)
    return template_render_fail(r, n->offset, kHeraldLimit,
                                "partial '%s' called inside %d partials (does a partial call itself?)",
                                d->name, HERALD_TEMPLATE_MAX_PARTIALS);
  TemplateValue values[TEMPLATE_MAX_HASH];
  TemplateFrame f;
  if (n->expr != NULL) {
    TemplateValue ctx;
    if (eval(r, n->expr, &ctx) != 0) return -1;
    f = (TemplateFrame){.self = ctx, .parent = r->frame};
  } else {
    f = *r->frame;
  }
  for (int i = 0; i < n->nhash; i++)
    if (eval(r, n->hash[i].value, &values[i]) != 0) return -1;
  const TemplateFrame *saved = r->frame;
  if (n->expr != NULL || n->nhash > 0) {
    f.hash = n->hash;
    f.hash_values = values;
    f.nhash = n->nhash;
    r->frame = &f;
  }
  r->partial_depth++;
  int rc = render_nodes(r, d->body);
  r->partial_depth--;
  r->frame = saved;
  return rc;
}

static int render_nodes(TemplateRender *r, const TemplateNode *n) {
  for (; n != NULL; n = n->next) {
    if (step(r, n->offset) != 0) return -1;
    switch (n->kind) {
      case kNodeText:
        if (out_append(r, n->text, n->len) != 0) return -1;
        break;
      case kNodeOutput: {
        TemplateValue v;
        const char *s;
        size_t len;
        if (eval(r, n->expr, &v) != 0) return -1;
        r->at = n->offset;
        if (template_value_text(r, &v, &s, &len) != 0) return -1;
        int rc;
        if (n->raw || r->t->escape == HERALD_TEMPLATE_ESCAPE_NONE) rc = out_append(r, s, len);
        else if (r->t->escape == HERALD_TEMPLATE_ESCAPE_URI) rc = out_uri_encoded(r, s, len);
        else rc = out_escaped(r, s, len);
        if (rc != 0) return -1;
        break;
      }
      case kNodeBlock:
        if (render_block(r, n) != 0) return -1;
        break;
      case kNodePartial:
        if (render_partial(r, n) != 0) return -1;
        break;
    }
  }
  return 0;
}

int herald_template_render(const HeraldTemplate *t, const json_t *ctx, const json_t *subs,
                           const json_t *defaults, HeraldTemplateOutput *out, HeraldError *err) {
  for (HeraldTemplateScratchChunk *c = out->scratch; c != NULL; c = c->next) c->used = 0;
  out->len = 0;
  TemplateFrame root = {0};
  template_value_from_json(ctx, &root.self);
  TemplateRender r = {
    .t = t, .ctx = ctx, .subs = subs, .defaults = defaults, .out = out, .err = err,
    .max_out = out->max ? out->max : HERALD_TEMPLATE_MAX_OUTPUT, .frame = &root,
  };
  if (render_nodes(&r, t->root) != 0 || out_reserve(&r, 0) != 0) {
    out->len = 0;
    return err ? (int)err->code : kHeraldInvalid;
  }
  out->data[out->len] = '\0';
  return kHeraldOk;
}

static int vars_fill(json_t *node, const json_t *map, int depth, HeraldError *err);

/* Sets key to value under node. A key with a '.' or brackets is a path (Attributes.Plan,
 * User.[Last Name]) made of objects on the way; any other key, and one that is no path
 * ("a.b c"), is one name as it is ("Last Name", "round"): Pinpoint's Substitutions are a plain
 * map of names, and a name that no variable of the template uses is simply unused (a name that
 * is not a path, or a helper's, is reached as {{[Last Name]}}). An object value is merged. */
static int vars_set(json_t *node, const char *key, json_t *value, int depth, HeraldError *err) {
  HeraldTemplate *t = NULL;
  const TemplateExpr *e = NULL;
  if (strpbrk(key, ".[]") != NULL) {
    size_t klen = strlen(key);
    char *src = malloc(klen + 5);
    if (src == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
    /* parse the key with the template path syntax: "{{" key "}}" */
    memcpy(src, "{{", 2);
    memcpy(src + 2, key, klen);
    memcpy(src + 2 + klen, "}}", 3);
    HeraldError perr = {0};
    int rc = herald_template_compile("substitution", src, klen + 4, 0, &t, &perr);
    free(src);
    if (rc == kHeraldOk && t->root != NULL && t->root->next == NULL && t->root->kind == kNodeOutput)
      e = t->root->expr;
    if (e != NULL && (e->kind != kExprPath || e->nsegs == 0 || e->up != 0 || e->data != kDataNone))
      e = NULL;
  }
  json_t *cur = node;
  const char *name = key;
  int rc = kHeraldOk;
  for (int i = 0; e != NULL && i < e->nsegs; i++) {
    name = e->segs[i].text;
    if (i == e->nsegs - 1) break;
    json_t *next = json_object_get(cur, name);
    if (!json_is_object(next)) {
      next = json_object();
      if (next == NULL || json_object_set_new(cur, name, next) != 0) {
        rc = herald_error_set(err, kHeraldNoMemory, "out of memory");
        break;
      }
    }
    cur = next;
  }
  if (rc == kHeraldOk && json_is_object(value)) {
    json_t *sub = json_object_get(cur, name);
    if (!json_is_object(sub) && ((sub = json_object()) == NULL || json_object_set_new(cur, name, sub) != 0))
      rc = herald_error_set(err, kHeraldNoMemory, "out of memory");
    else
      rc = vars_fill(sub, value, depth + 1, err);
  } else if (rc == kHeraldOk && json_object_set(cur, name, value) != 0) {
    rc = herald_error_set(err, kHeraldNoMemory, "out of memory");
  }
  herald_template_free(t);
  return rc;
}

static int vars_fill(json_t *node, const json_t *map, int depth, HeraldError *err) {
  if (depth > HERALD_TEMPLATE_MAX_DEPTH)
    return herald_error_set(err, kHeraldLimit, "substitutions nested deeper than %d",
                            HERALD_TEMPLATE_MAX_DEPTH);
  const char *key;
  json_t *value;
  json_object_foreach((json_t *)map, key, value) {
    int rc = vars_set(node, key, value, depth, err);
    if (rc != kHeraldOk) return rc;
  }
  return kHeraldOk;
}

int herald_template_vars(const json_t *map, json_t **out, HeraldError *err) {
  *out = NULL;
  if (map == NULL || json_is_null(map)) return kHeraldOk;
  if (!json_is_object(map))
    return herald_error_set(err, kHeraldInvalid, "substitutions must be an object of name -> values");
  json_t *tree = json_object();
  if (tree == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  int rc = vars_fill(tree, map, 0, err);
  if (rc != kHeraldOk) {
    json_decref(tree);
    return rc;
  }
  *out = tree;
  return kHeraldOk;
}
