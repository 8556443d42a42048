/* Shared between the template compiler (template_parse.c), the renderer (template_render.c)
 * and the helpers (template_helpers.c). Not part of the public API. */
#ifndef HERALD_TEMPLATE_INTERNAL_H
#define HERALD_TEMPLATE_INTERNAL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/template.h"
#include "runtime/tz.h"

typedef enum {
  kValMissing = 0,
  kValNull,
  kValBool,
  kValNumber,
  kValString,
  kValArray,   /* j is a json array */
  kValObject,  /* j is a json object */
} ValueKind;

typedef struct {
  ValueKind kind;
  int b;
  double n;
  const char *s;
  size_t len;
  const json_t *j;
  int vars;            /* read from substitutions or defaults: a scalar in j reads as a list
                          of one under .[0] (see herald_template_vars) */
} TemplateValue;

typedef struct TemplateExpr TemplateExpr;
typedef struct TemplateRender TemplateRender;

#define TEMPLATE_MAX_HASH 32   /* key=value arguments of one call */

typedef struct {
  const char *name;
  TemplateExpr *value;
  size_t offset;       /* of the name, for error messages */
} TemplateHashArg;

/* A helper computes one value from evaluated arguments. hash values are evaluated lazily via
 * template_hash_get so unused ones cost nothing. */
typedef int (*TemplateHelperFn)(TemplateRender *r, const TemplateExpr *call,
                                const TemplateValue *params, int nparams, TemplateValue *out);

typedef enum {
  kHelperPlain = 0,
  kHelperConditional,  /* eq, gt, and, ...: usable as a block, or inline with yes=/no= */
} TemplateHelperKind;

/* Checks a call when the template is compiled, so what would only fail quietly at render time
 * (a date pattern or time zone given as a literal) is refused with the template: 0, or -1 with
 * why and *offset (in the source) set. */
typedef int (*TemplateHelperCheck)(const TemplateExpr *call, size_t *offset, char *why,
                                   size_t whylen);

typedef struct {
  const char *name;
  TemplateHelperFn fn;
  TemplateHelperKind kind;
  int min_params;
  int max_params;      /* -1: any number */
  TemplateHelperCheck check;  /* or NULL */
} TemplateHelper;

typedef enum {
  kDataNone = 0,
  kDataIndex,
  kDataFirst,
  kDataLast,
  kDataKey,
} TemplateDataVar;

typedef struct {
  const char *text;
  size_t len;
  long index;          /* >= 0 when the segment is all digits: a list index */
} TemplatePathSeg;

typedef enum { kExprPath, kExprLiteral, kExprCall } TemplateExprKind;

struct TemplateExpr {
  TemplateExprKind kind;
  size_t offset;       /* in the source, for error messages */
  /* kExprPath */
  int up;              /* number of ../ */
  int scoped;          /* starts with this, ./ or [name]: never a helper */
  int local;           /* starts with this or ./: read on the current scope only, while a
                          plain name the scope lacks is read on the scopes around it */
  TemplateDataVar data;
  TemplatePathSeg *segs;
  int nsegs;
  /* kExprLiteral */
  TemplateValue lit;
  /* kExprCall */
  const TemplateHelper *helper;
  TemplateExpr **params;
  int nparams;
  TemplateHashArg *hash;
  int nhash;
};

typedef enum { kNodeText, kNodeOutput, kNodeBlock, kNodePartial } TemplateNodeKind;
typedef enum { kBlockIf, kBlockUnless, kBlockEach, kBlockWith, kBlockHelper } TemplateBlockKind;

struct TemplateNode;

/* An inline partial, {{#* inline "name"}}...{{/inline}}: one per name in a template, visible
 * throughout it. Calls point at it; the compiler's table of them is dropped after compiling. */
typedef struct TemplatePartial {
  const char *name;
  size_t len;
  size_t offset;       /* of its {{#* inline}} tag */
  struct TemplateNode *body;
  struct TemplatePartial *next;  /* in the compiler's hash chain */
} TemplatePartial;

typedef struct TemplateNode {
  TemplateNodeKind kind;
  struct TemplateNode *next;
  size_t offset;
  /* kNodeText: the text; kNodeBlock: the block's name, which its close tag repeats */
  const char *text;
  size_t len;
  /* kNodeOutput: expr; kNodeBlock: expr is the argument (if/unless/each/with) or the call;
   * kNodePartial: expr is the context argument or NULL */
  TemplateExpr *expr;
  int raw;
  TemplateBlockKind block;
  struct TemplateNode *body;
  struct TemplateNode *inverse;
  int chained;         /* inverse is the next block of an {{else if}} chain: the renderer walks
                          a chain in a loop, so its length is not nesting */
  /* kNodePartial */
  const TemplatePartial *partial;
  TemplateHashArg *hash;
  int nhash;
} TemplateNode;

typedef struct TemplateArenaChunk TemplateArenaChunk;

struct HeraldTemplate {
  char *name;
  char *source;        /* owned copy: text nodes and names point into arena copies */
  size_t source_len;
  int escape;
  TemplateNode *root;
  TemplateArenaChunk *arena;
};

/* Render-time state. */
typedef struct TemplateFrame {
  TemplateValue self;
  const struct TemplateFrame *parent;
  int has_index;
  size_t index;
  int first, last;
  TemplateValue key;
  /* a partial called with key=value arguments: names read before self */
  const TemplateHashArg *hash;
  const TemplateValue *hash_values;
  int nhash;
} TemplateFrame;

struct TemplateRender {
  const HeraldTemplate *t;
  const json_t *ctx, *subs, *defaults;
  HeraldTemplateOutput *out;
  HeraldError *err;
  size_t max_out;
  size_t scratch_used;
  long steps;
  size_t helper_bytes; /* bytes helpers were given, not yet charged as steps */
  size_t at;           /* source offset of the node or expression being evaluated: where a
                          limit on output or scratch memory is reported */
  const TemplateFrame *frame;
  int partial_depth;   /* partials being rendered, one inside another */
  int failed;
};

const TemplateHelper *template_helper_find(const char *name, size_t len);

/* Scratch memory valid until the end of the render; NULL (with r->err set) past the limit. */
char *template_scratch(TemplateRender *r, size_t n);

/* Evaluates a hash argument of call by name; kValMissing when absent. */
int template_hash_get(TemplateRender *r, const TemplateExpr *call, const char *name,
                      TemplateValue *out);

/* Text of a value as Handlebars prints it: lists join with ",", numbers in shortest form,
 * missing and null print nothing. The text may live in scratch memory. */
int template_value_text(TemplateRender *r, const TemplateValue *v, const char **s, size_t *len);

/* Appends s to a text built in scratch memory (*buf NULL and *len, *cap 0 to start). */
int template_text_append(TemplateRender *r, char **buf, size_t *len, size_t *cap, const char *s,
                         size_t n);

int template_value_truthy(const TemplateValue *v);

/* Reads a number from a number or a numeric string; 0 when it is neither. */
int template_value_number(const TemplateValue *v, double *out);

void template_value_from_json(const json_t *j, TemplateValue *out);

/* Fails the render at expression e with a message naming the template and position. */
int template_render_fail(TemplateRender *r, size_t offset, HeraldErrorCode code,
                         const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Dates for now and dateFormat (template_date.c). A pattern is a Java SimpleDateFormat
 * pattern of the letters template_date.c lists, or full, long, medium or short. */
/* 0, or -1 with why when pat uses what we cannot format. */
int template_date_check_pattern(const char *pat, size_t len, char *why, size_t whylen);
/* The instant utc_ms in tz as pat formats it; the text lives in scratch memory. */
int template_date_format(TemplateRender *r, int64_t utc_ms, const HeraldTz *tz, const char *pat,
                         size_t len, TemplateValue *out);
/* Reads s, which must match pat whole, into an instant; a time without a zone is read in tz,
 * and a two-digit year relative to now_ms. -1 when s does not match or names no real time. */
int template_date_parse(const char *s, size_t len, const char *pat, size_t plen, const HeraldTz *tz,
                        int64_t now_ms, int64_t *out);

/* "line L, column C" for a source offset: columns count UTF-8 characters from 1. */
void template_position(const char *source, size_t len, size_t offset, int *line, int *column);

#endif
