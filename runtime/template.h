/* Message templates: the Handlebars subset Pinpoint's templates use, compiled once into a tree
 * of nodes with paths pre-split and helpers pre-resolved, then rendered against a jansson
 * context (an endpoint in Pinpoint's EndpointResponse shape) without re-parsing.
 *
 * Supported: {{path}} (HTML-escaped when the template escapes) and {{{path}}} (raw); dotted
 * paths, list indexes `.[0]`, bracketed names `[Last Name]`, `this`, `../`, @index, @first,
 * @last, @key; blocks #if/#unless/#each/#with with {{else}}; the conditional helpers eq, neq,
 * gt, gte, lt, lte, and, or, not (inline, with yes= no=, or as blocks); the string, date
 * (now, dateFormat with Java date patterns), math, encoding and digest helpers and uuid, with
 * key=value arguments; subexpressions; comments {{! }} and {{!-- --}}; whitespace control
 * {{~ ~}}; inline partials {{#* inline "name"}}...{{/inline}} called as {{> name}}, {{> name
 * ctx}} or {{> name key=value}}. Partials registered from outside the template, partial blocks
 * ({{#> name}}) and other decorators are not supported (Pinpoint has none of them).
 *
 * Variable precedence (see herald_template_render): per-message substitutions, then the
 * endpoint, then the template's DefaultSubstitutions.
 *
 * Hostile input is bounded: template size, block and subexpression nesting, partial calls
 * inside partial calls (a partial may call itself), each-items (15, as Pinpoint), rendering
 * steps, helper scratch memory and output size all have limits that fail with kHeraldLimit and
 * a message naming the template and the line and column of the tag (or helper call) that
 * passed the limit. */
#ifndef HERALD_TEMPLATE_H
#define HERALD_TEMPLATE_H

#include <jansson.h>
#include <stddef.h>

#include "runtime/error.h"

#define HERALD_TEMPLATE_MAX_SOURCE (1024 * 1024)     /* bytes of template text */
#define HERALD_TEMPLATE_MAX_DEPTH 32                 /* nested blocks or subexpressions */
#define HERALD_TEMPLATE_MAX_PARTIALS 32              /* partial calls one inside another */
#define HERALD_TEMPLATE_MAX_EACH 15                  /* items an #each visits (Pinpoint) */
#define HERALD_TEMPLATE_MAX_OUTPUT (4 * 1024 * 1024) /* bytes one render may produce */
#define HERALD_TEMPLATE_MAX_STEPS 1000000L           /* nodes and expressions one render visits,
                                                        and helper input (16 bytes a step) */

typedef struct HeraldTemplate HeraldTemplate;

/* Reusable output of renders: the text and the scratch memory helpers use. Keep one per
 * worker and render into it repeatedly; it grows once and is then reused. Zero-initialise. */
typedef struct HeraldTemplateScratchChunk HeraldTemplateScratchChunk;
typedef struct {
  char *data;          /* the rendered text, NUL-terminated after a successful render */
  size_t len;
  size_t cap;
  size_t max;          /* output limit; 0 means HERALD_TEMPLATE_MAX_OUTPUT */
  HeraldTemplateScratchChunk *scratch;
} HeraldTemplateOutput;

void herald_template_output_free(HeraldTemplateOutput *out);

/* What {{x}} does to the text it outputs; {{{x}}} and {{&x}} output it as it is, in every mode
 * (the template's author asked for it), and the template's own text is never changed. */
enum {
  HERALD_TEMPLATE_ESCAPE_NONE = 0,  /* as it is (plain-text parts) */
  HERALD_TEMPLATE_ESCAPE_HTML = 1,  /* Handlebars' HTML escaping (HTML parts) */
  HERALD_TEMPLATE_ESCAPE_URI = 2,   /* percent-encoded (RFC 3986 §2.1) but the unreserved
                                     * A-Z a-z 0-9 - . _ ~, byte by byte, so UTF-8 becomes
                                     * %XX%XX: a value is one URI component, whatever it holds
                                     * (templates of URIs: List-Unsubscribe) */
};

/* Compiles text. name labels errors: "welcome(v2): line 3, column 14: unclosed {{#if}}".
 * escape is one of HERALD_TEMPLATE_ESCAPE_*: what {{x}} does (HTML for HTML parts, none for
 * plain-text ones). */
int herald_template_compile(const char *name, const char *text, size_t len, int escape,
                            HeraldTemplate **out, HeraldError *err);
void herald_template_free(HeraldTemplate *t);
const char *herald_template_name(const HeraldTemplate *t);

/* Bytes a compiled template holds (its copy of the source and its node tree): what keeping it
 * in a cache costs. It grows linearly with the source. */
size_t herald_template_memory(const HeraldTemplate *t);

/* Turns a substitution map into a lookup tree: keys are variable paths in template syntax
 * ("FirstName", "User.UserAttributes.[Last Name]"), values are strings, numbers or lists of
 * them (Pinpoint's map<string, list<string>>), or nested objects (DefaultSubstitutions may be
 * written {"Attributes": {"Plan": "free"}}). Scalars stay scalars, so false, 0 and "" are
 * falsy in #if as they are on an endpoint (Handlebars' rule), while a list of one value is a
 * list, truthy as on an endpoint. Both `{{X}}` and `{{X.[0]}}` read a scalar: the renderer reads
 * an index 0 past a scalar of these trees as the scalar itself, so templates written for
 * Pinpoint's list attributes take single-value defaults. *out is a new reference; NULL map
 * gives NULL. */
int herald_template_vars(const json_t *map, json_t **out, HeraldError *err);

/* Renders t into out (replacing its text). ctx is the endpoint (or any object); subs and
 * defaults are trees from herald_template_vars, either may be NULL.
 *
 * A path read from the top-level scope is looked up in subs, then ctx, then defaults; the first
 * that has a value wins. A value is present unless it is missing, null, "" or an empty list, so
 * a default fills an attribute the endpoint has but left empty. Message-level substitutions win
 * over the endpoint because Pinpoint documents them as taking "precedence over all other
 * variables"; defaults lose to the endpoint because they exist to fill gaps. Inside #each and
 * #with a name is read on the item first; one the item lacks (missing or null) is read on the
 * enclosing scopes in turn, ending at the top level, as Handlebars.java's Context does. Paths
 * that start with this, ./ or ../ are read on that scope only. */
int herald_template_render(const HeraldTemplate *t, const json_t *ctx, const json_t *subs,
                           const json_t *defaults, HeraldTemplateOutput *out, HeraldError *err);

#endif
