/* Message templates with versions, as Pinpoint keeps them.
 *
 * A template is (name, type) with type EMAIL, SMS or PUSH; its content ("parts") is a JSON
 * object in Pinpoint's request shape: EMAIL {Subject, HtmlPart, TextPart, Headers[{Name,
 * Value}], DefaultSubstitutions, TemplateDescription, RecommenderId}; SMS {Body, ...}; PUSH
 * {Default, APNS, GCM, ADM, Baidu: {Action, Title, Body, Url, ImageUrl, ...}, ...}.
 * DefaultSubstitutions is a JSON string (an object of variable -> value).
 *
 * Versions are numbered 1, 2, ... and never reused (at most 5,000). Creating a template makes
 * version 1, which is active. An update overwrites the latest version unless it asks for a new
 * one; a given version must be the latest. A new version does not become active by itself:
 * set_active chooses, so the active version need not be the latest. Every part is compiled
 * before it is stored, so a stored template always renders. */
#ifndef HERALD_TEMPLATE_STORE_H
#define HERALD_TEMPLATE_STORE_H

#include <jansson.h>
#include <stdint.h>

#include "runtime/store.h"
#include "runtime/template.h"

#define HERALD_TEMPLATE_MAX_VERSIONS 5000

typedef struct {
  int version;
  int active_version;
  int latest_version;
  int64_t revision;        /* random, renewed whenever this version's content is written, so a
                              compiled copy knows it is stale, even across databases */
  json_t *parts;           /* owned by the caller: json_decref */
  char creation_date[32];
  char last_modified_date[32];
} HeraldTemplateInfo;

/* Pinpoint's rule: 1-128 characters of [A-Za-z0-9_-], starting with a letter or digit. */
int herald_template_store_check_name(const char *name, HeraldError *err);

/* type must be "EMAIL", "SMS" or "PUSH". */
int herald_template_store_check_type(const char *type, HeraldError *err);

/* Checks every field of parts for type and compiles its templates. */
int herald_template_store_check_parts(const char *name, const char *type, int version,
                                const json_t *parts, HeraldError *err);

int herald_template_store_create(HeraldStore *store, const char *name, const char *type,
                           const json_t *parts, HeraldError *err);

/* version 0 means the latest. *out_version receives the version written. */
int herald_template_store_update(HeraldStore *store, const char *name, const char *type,
                           const json_t *parts, int create_new_version, int version,
                           int *out_version, HeraldError *err);

/* The version that version (0: the active one) names and its revision, which changes with every
 * write of its parts; without reading the parts. kHeraldNotFound as herald_template_store_get. */
int herald_template_store_revision(HeraldStore *store, const char *name, const char *type, int version,
                                   int *resolved, int64_t *revision, HeraldError *err);

/* version 0 means the active version. */
int herald_template_store_get(HeraldStore *store, const char *name, const char *type, int version,
                        HeraldTemplateInfo *out, HeraldError *err);

/* *out: a new array of {Version, Active, CreationDate, LastModifiedDate}, oldest first. */
int herald_template_store_versions(HeraldStore *store, const char *name, const char *type,
                             json_t **out, HeraldError *err);

int herald_template_store_set_active(HeraldStore *store, const char *name, const char *type,
                               int version, HeraldError *err);

/* One version compiled: every templated field, and its DefaultSubstitutions as a lookup tree.
 * HtmlPart escapes HTML; every other part renders plain text. */
typedef struct HeraldTemplateParts HeraldTemplateParts;

int herald_template_store_compile(const char *name, const char *type, int version,
                                  const json_t *parts, HeraldTemplateParts **out,
                                  HeraldError *err);
void herald_template_store_parts_free(HeraldTemplateParts *p);

/* Renders every templated field against ctx with per-message substitutions subs (a map as
 * herald_template_vars takes, or NULL). *rendered is a new object shaped like the parts, with
 * rendered text in place of templates and without DefaultSubstitutions. */
int herald_template_store_render(const HeraldTemplateParts *p, const json_t *ctx,
                                 const json_t *subs, HeraldTemplateOutput *out,
                                 json_t **rendered, HeraldError *err);

#endif
