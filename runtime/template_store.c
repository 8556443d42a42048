#include "runtime/template_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runtime/clock.h"
#include "runtime/smtp_message.h"

typedef struct {
  const char *group;   /* push platform (Default, APNS, ...) or NULL */
  const char *field;
  int header;          /* index into Headers for an email header's Value, else -1 */
  HeraldTemplate *t;
} PartEntry;

struct HeraldTemplateParts {
  json_t *parts;       /* private copy: entries point at its keys */
  json_t *defaults;    /* DefaultSubstitutions as a lookup tree, or NULL */
  PartEntry *entries;
  int count;
};

typedef struct {
  const char *name;
  int templated;
} FieldSpec;

static const FieldSpec email_fields[] = {
  {"Subject", 1}, {"HtmlPart", 1}, {"TextPart", 1}, {"Headers", 0},
  {"DefaultSubstitutions", 0}, {"TemplateDescription", 0}, {"RecommenderId", 0}, {NULL, 0},
};
static const FieldSpec sms_fields[] = {
  {"Body", 1}, {"DefaultSubstitutions", 0}, {"TemplateDescription", 0}, {"RecommenderId", 0},
  {NULL, 0},
};
static const FieldSpec push_fields[] = {
  {"Default", 0}, {"APNS", 0}, {"GCM", 0}, {"ADM", 0}, {"Baidu", 0},
  {"DefaultSubstitutions", 0}, {"TemplateDescription", 0}, {"RecommenderId", 0}, {NULL, 0},
};
static const FieldSpec push_message_fields[] = {
  {"Action", 0}, {"Title", 1}, {"Body", 1}, {"Url", 1}, {"ImageUrl", 1}, {"ImageIconUrl", 1},
  {"SmallImageIconUrl", 1}, {"MediaUrl", 1}, {"RawContent", 1}, {"Sound", 0}, {NULL, 0},
};

int herald_template_store_check_name(const char *name, HeraldError *err) {
  size_t n = name ? strlen(name) : 0;
  if (n == 0 || n > 128)
    return herald_error_set(err, kHeraldInvalid, "template name must be 1 to 128 characters, got %zu", n);
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '_' && c != '-')))
      return herald_error_set(err, kHeraldInvalid,
                              "template name '%s': use letters, digits, '_' and '-', starting with a letter or digit",
                              name);
  }
  return kHeraldOk;
}

int herald_template_store_check_type(const char *type, HeraldError *err) {
  if (type != NULL && (strcmp(type, "EMAIL") == 0 || strcmp(type, "SMS") == 0 || strcmp(type, "PUSH") == 0))
    return kHeraldOk;
  return herald_error_set(err, kHeraldInvalid, "template type must be EMAIL, SMS or PUSH, got '%s'",
                          type ? type : "(none)");
}

static const FieldSpec *find_field(const FieldSpec *specs, const char *key) {
  for (; specs->name != NULL; specs++)
    if (strcmp(specs->name, key) == 0) return specs;
  return NULL;
}

static int unknown_field(const char *label, const char *key, const char *what, const FieldSpec *specs,
                         HeraldError *err) {
  char allowed[512] = "";
  for (; specs->name != NULL; specs++) {
    if (allowed[0]) strncat(allowed, ", ", sizeof allowed - strlen(allowed) - 1);
    strncat(allowed, specs->name, sizeof allowed - strlen(allowed) - 1);
  }
  return herald_error_set(err, kHeraldInvalid, "%s: unknown field '%s' for %s (allowed: %s)", label,
                          key, what, allowed);
}

static int add_entry(HeraldTemplateParts *p, const char *label, const char *group, const char *field,
                     int header, const json_t *text, int escape, HeraldError *err) {
  if (!json_is_string(text))
    return herald_error_set(err, kHeraldInvalid, "%s: must be a string", label);
  PartEntry *e = realloc(p->entries, sizeof *e * (size_t)(p->count + 1));
  if (e == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  p->entries = e;
  PartEntry *entry = &e[p->count];
  entry->group = group;
  entry->field = field;
  entry->header = header;
  entry->t = NULL;
  int rc = herald_template_compile(label, json_string_value(text), json_string_length(text), escape,
                                   &entry->t, err);
  if (rc != kHeraldOk) return rc;
  p->count++;
  return kHeraldOk;
}

static int compile_headers(HeraldTemplateParts *p, const char *base, const json_t *headers, HeraldError *err) {
  char label[512];
  if (!json_is_array(headers))
    return herald_error_set(err, kHeraldInvalid, "%s.Headers: must be a list of {Name, Value}", base);
  if (json_array_size(headers) > 15)
    return herald_error_set(err, kHeraldLimit, "%s.Headers: at most 15 headers, got %zu", base,
                            json_array_size(headers));
  for (size_t i = 0; i < json_array_size(headers); i++) {
    const json_t *h = json_array_get(headers, i);
    snprintf(label, sizeof label, "%s.Headers[%zu]", base, i + 1);
    const char *key;
    json_t *value;
    if (!json_is_object(h)) return herald_error_set(err, kHeraldInvalid, "%s: must be {Name, Value}", label);
    json_object_foreach((json_t *)h, key, value) {
      if (strcmp(key, "Name") != 0 && strcmp(key, "Value") != 0)
        return herald_error_set(err, kHeraldInvalid, "%s: unknown field '%s' (allowed: Name, Value)", label, key);
    }
    const json_t *name = json_object_get(h, "Name");
    if (!json_is_string(name) || json_string_length(name) == 0)
      return herald_error_set(err, kHeraldInvalid, "%s.Name: required string", label);
    /* the name is checked now, as the message builder would at every send; the Value is a
     * template, checked once rendered */
    const char *why = herald_smtp_header_given_problem(json_string_value(name), NULL);
    if (why != NULL) return herald_error_set(err, kHeraldInvalid, "%s.Name: %s", label, why);
    /* one of two headers of a name would be dropped unseen when the message is built */
    for (size_t k = 0; k < i; k++) {
      const json_t *other = json_object_get(json_array_get(headers, k), "Name");
      if (strcasecmp(json_string_value(other), json_string_value(name)) == 0)
        return herald_error_set(err, kHeraldInvalid, "%s.Name: '%s' is given twice", label,
                                json_string_value(name));
    }
    snprintf(label, sizeof label, "%s.Headers[%zu].Value", base, i + 1);
    /* the limit holds for the rendered value too (checked at each send); a longer text could
     * only render shorter through a section left out */
    const json_t *text = json_object_get(h, "Value");
    const char *too_long = json_is_string(text) ? herald_smtp_given_value_too_long(json_string_value(text)) : NULL;
    if (too_long != NULL) return herald_error_set(err, kHeraldLimit, "%s: %s", label, too_long);
    /* what a List-Unsubscribe substitutes is percent-encoded, as in a profile's list_unsubscribe:
     * an attribute with '&' or '>' in it stays one URI parameter */
    int escape = strcasecmp(json_string_value(name), "List-Unsubscribe") == 0 ? HERALD_TEMPLATE_ESCAPE_URI
                                                                              : HERALD_TEMPLATE_ESCAPE_NONE;
    if (add_entry(p, label, NULL, "Value", (int)i, json_object_get(h, "Value"), escape, err) != kHeraldOk)
      return err ? err->code : kHeraldInvalid;
  }
  return kHeraldOk;
}

static int compile_push_message(HeraldTemplateParts *p, const char *base, const char *group,
                                const json_t *msg, HeraldError *err) {
  char label[512];
  snprintf(label, sizeof label, "%s.%s", base, group);
  if (!json_is_object(msg)) return herald_error_set(err, kHeraldInvalid, "%s: must be a table of fields", label);
  const char *key;
  json_t *value;
  json_object_foreach((json_t *)msg, key, value) {
    const FieldSpec *f = find_field(push_message_fields, key);
    if (f == NULL) return unknown_field(label, key, "a push message", push_message_fields, err);
    char flabel[600];
    snprintf(flabel, sizeof flabel, "%s.%s", label, key);
    if (f->templated) {
      if (add_entry(p, flabel, group, key, -1, value, 0, err) != kHeraldOk) return err ? err->code : kHeraldInvalid;
    } else if (!json_is_string(value)) {
      return herald_error_set(err, kHeraldInvalid, "%s: must be a string", flabel);
    } else if (strcmp(key, "Action") == 0 && strcmp(json_string_value(value), "OPEN_APP") != 0 &&
               strcmp(json_string_value(value), "DEEP_LINK") != 0 && strcmp(json_string_value(value), "URL") != 0) {
      return herald_error_set(err, kHeraldInvalid, "%s: must be OPEN_APP, DEEP_LINK or URL, got '%s'", flabel,
                              json_string_value(value));
    }
  }
  return kHeraldOk;
}

void herald_template_store_parts_free(HeraldTemplateParts *p) {
  if (p == NULL) return;
  for (int i = 0; i < p->count; i++) herald_template_free(p->entries[i].t);
  free(p->entries);
  json_decref(p->parts);
  json_decref(p->defaults);
  free(p);
}

int herald_template_store_compile(const char *name, const char *type, int version,
                                  const json_t *parts, HeraldTemplateParts **out, HeraldError *err) {
  *out = NULL;
  int rc = herald_template_store_check_type(type, err);
  if (rc != kHeraldOk) return rc;
  char base[200];
  snprintf(base, sizeof base, "%s(v%d)", name, version);
  if (!json_is_object(parts)) return herald_error_set(err, kHeraldInvalid, "%s: parts must be a table", base);
  HeraldTemplateParts *p = calloc(1, sizeof *p);
  if (p == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  p->parts = json_deep_copy(parts);
  if (p->parts == NULL) {
    free(p);
    return herald_error_set(err, kHeraldNoMemory, "out of memory");
  }
  const FieldSpec *specs = strcmp(type, "EMAIL") == 0 ? email_fields
                           : strcmp(type, "SMS") == 0 ? sms_fields : push_fields;
  char what[32];
  snprintf(what, sizeof what, "an %s template", type);
  if (type[0] == 'P') snprintf(what, sizeof what, "a PUSH template");
  const char *key;
  json_t *value;
  rc = kHeraldOk;
  json_object_foreach(p->parts, key, value) {
    const FieldSpec *f = find_field(specs, key);
    char label[400];
    snprintf(label, sizeof label, "%s.%s", base, key);
    if (f == NULL) {
      rc = unknown_field(base, key, what, specs, err);
    } else if (f->templated) {
      rc = add_entry(p, label, NULL, key, -1, value, strcmp(key, "HtmlPart") == 0, err);
    } else if (strcmp(key, "Headers") == 0) {
      rc = compile_headers(p, base, value, err);
    } else if (strcmp(key, "DefaultSubstitutions") == 0) {
      json_error_t jerr;
      json_t *map = json_is_string(value) ? json_loadb(json_string_value(value), json_string_length(value), 0, &jerr)
                                          : NULL;
      if (!json_is_object(map)) {
        rc = herald_error_set(err, kHeraldInvalid, "%s: must be a JSON object text like '{\"FirstName\": \"there\"}'%s%s",
                              label, map == NULL && json_is_string(value) ? ": " : "",
                              map == NULL && json_is_string(value) ? jerr.text : "");
      } else {
        rc = herald_template_vars(map, &p->defaults, err);
        if (rc != kHeraldOk) herald_error_prefix(err, "%s: ", label);
      }
      json_decref(map);
    } else if (type[0] == 'P' && strcmp(key, "TemplateDescription") != 0 && strcmp(key, "RecommenderId") != 0) {
      rc = compile_push_message(p, base, key, value, err);
    } else if (!json_is_string(value)) {
      rc = herald_error_set(err, kHeraldInvalid, "%s: must be a string", label);
    }
    if (rc != kHeraldOk) break;
  }
  if (rc != kHeraldOk) {
    herald_template_store_parts_free(p);
    return rc;
  }
  *out = p;
  return kHeraldOk;
}

int herald_template_store_check_parts(const char *name, const char *type, int version,
                                      const json_t *parts, HeraldError *err) {
  HeraldTemplateParts *p = NULL;
  int rc = herald_template_store_compile(name, type, version, parts, &p, err);
  herald_template_store_parts_free(p);
  return rc;
}

int herald_template_store_render(const HeraldTemplateParts *p, const json_t *ctx, const json_t *subs,
                                 HeraldTemplateOutput *out, json_t **rendered, HeraldError *err) {
  *rendered = NULL;
  json_t *tree = NULL;
  int rc = herald_template_vars(subs, &tree, err);
  if (rc != kHeraldOk) return rc;
  json_t *result = json_deep_copy(p->parts);
  if (result == NULL) {
    json_decref(tree);
    return herald_error_set(err, kHeraldNoMemory, "out of memory");
  }
  json_object_del(result, "DefaultSubstitutions");
  for (int i = 0; i < p->count && rc == kHeraldOk; i++) {
    const PartEntry *e = &p->entries[i];
    rc = herald_template_render(e->t, ctx, tree, p->defaults, out, err);
    if (rc != kHeraldOk) break;
    json_t *target = result;
    if (e->group != NULL) target = json_object_get(result, e->group);
    if (e->header >= 0) target = json_array_get(json_object_get(result, "Headers"), (size_t)e->header);
    if (target == NULL || json_object_set_new(target, e->field, json_stringn_nocheck(out->data, out->len)) != 0)
      rc = herald_error_set(err, kHeraldNoMemory, "out of memory");
  }
  json_decref(tree);
  if (rc != kHeraldOk) {
    json_decref(result);
    return rc;
  }
  *rendered = result;
  return kHeraldOk;
}

/* ---- storage ---- */

static int template_missing(HeraldStore *store, const char *name, const char *type, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(store, "SELECT latest_version FROM templates WHERE name = ?1 AND type = ?2", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) return kHeraldOk;
  if (rc == SQLITE_DONE) return herald_error_set(err, kHeraldNotFound, "no %s template '%s'", type, name);
  return herald_store_fail(store, err, "reading a template");
}

static int insert_version(HeraldStore *store, const char *name, const char *type, int version,
                          const char *text, const char *now, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO template_versions(name, type, version, parts, revision, creation_date, last_modified_date)"
      " VALUES (?1, ?2, ?3, ?4, random(), ?5, ?5)",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, version);
  sqlite3_bind_text(st, 4, text, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 5, now, -1, SQLITE_STATIC);
  return herald_store_step_done(store, st, err, "writing a template version");
}

static int check_args(const char *name, const char *type, HeraldError *err) {
  int rc = herald_template_store_check_name(name, err);
  if (rc == kHeraldOk) rc = herald_template_store_check_type(type, err);
  return rc;
}

int herald_template_store_create(HeraldStore *store, const char *name, const char *type,
                                 const json_t *parts, HeraldError *err) {
  int rc = check_args(name, type, err);
  if (rc == kHeraldOk) rc = herald_template_store_check_parts(name, type, 1, parts, err);
  if (rc != kHeraldOk) return rc;
  char *text = json_dumps(parts, JSON_COMPACT);
  if (text == NULL) return herald_error_set(err, kHeraldInvalid, "%s(v1): parts must be UTF-8 text", name);
  char now[32];
  herald_time_format(herald_clock_now_ms(), now, sizeof now);
  if ((rc = herald_store_begin(store, err)) != kHeraldOk) {
    free(text);
    return rc;
  }
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "INSERT INTO templates(name, type, active_version, latest_version, creation_date, last_modified_date)"
      " VALUES (?1, ?2, 1, 1, ?3, ?3) ON CONFLICT DO NOTHING",
      err);
  if (st == NULL) {
    rc = err ? err->code : kHeraldStore;
  } else {
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, now, -1, SQLITE_STATIC);
    rc = herald_store_step_done(store, st, err, "creating a template");
    if (rc == kHeraldOk) {
      if (sqlite3_changes(herald_store_db(store)) == 0)
        rc = herald_error_set(err, kHeraldInvalid, "%s template '%s' already exists", type, name);
      else rc = insert_version(store, name, type, 1, text, now, err);
    }
  }
  free(text);
  if (rc != kHeraldOk) {
    herald_store_rollback(store);
    return rc;
  }
  return herald_store_commit(store, err);
}

int herald_template_store_update(HeraldStore *store, const char *name, const char *type,
                                 const json_t *parts, int create_new_version, int version,
                                 int *out_version, HeraldError *err) {
  int rc = check_args(name, type, err);
  if (rc != kHeraldOk) return rc;
  char now[32];
  herald_time_format(herald_clock_now_ms(), now, sizeof now);
  char *text = json_dumps(parts, JSON_COMPACT);
  if (text == NULL) return herald_error_set(err, kHeraldInvalid, "%s: parts must be UTF-8 text", name);
  if ((rc = herald_store_begin(store, err)) != kHeraldOk) {
    free(text);
    return rc;
  }
  int latest = 0, target = 0;
  sqlite3_stmt *st = herald_store_stmt(store, "SELECT latest_version FROM templates WHERE name = ?1 AND type = ?2", err);
  if (st == NULL) {
    rc = err ? err->code : kHeraldStore;
    goto done;
  }
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
  int step = sqlite3_step(st);
  if (step == SQLITE_ROW) latest = sqlite3_column_int(st, 0);
  sqlite3_reset(st);
  if (step == SQLITE_DONE) {
    rc = herald_error_set(err, kHeraldNotFound, "no %s template '%s'", type, name);
    goto done;
  }
  if (step != SQLITE_ROW) {
    rc = herald_store_fail(store, err, "reading a template");
    goto done;
  }
  if (version != 0 && version != latest) {
    rc = herald_error_set(err, kHeraldInvalid, "%s template '%s': version %d is not the latest version (%d)",
                          type, name, version, latest);
    goto done;
  }
  if (create_new_version && latest >= HERALD_TEMPLATE_MAX_VERSIONS) {
    rc = herald_error_set(err, kHeraldLimit, "%s template '%s' has %d versions, the most allowed", type,
                          name, HERALD_TEMPLATE_MAX_VERSIONS);
    goto done;
  }
  target = create_new_version ? latest + 1 : latest;
  if ((rc = herald_template_store_check_parts(name, type, target, parts, err)) != kHeraldOk) goto done;
  if (create_new_version) {
    if ((rc = insert_version(store, name, type, target, text, now, err)) != kHeraldOk) goto done;
  } else {
    st = herald_store_stmt(store,
                           "UPDATE template_versions SET parts = ?4, revision = random(), last_modified_date = ?5"
                           " WHERE name = ?1 AND type = ?2 AND version = ?3",
                           err);
    if (st == NULL) {
      rc = err ? err->code : kHeraldStore;
      goto done;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, target);
    sqlite3_bind_text(st, 4, text, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, now, -1, SQLITE_STATIC);
    rc = herald_store_step_done(store, st, err, "updating a template version");
    if (rc != kHeraldOk) goto done;
  }
  st = herald_store_stmt(store,
                         "UPDATE templates SET latest_version = ?3, last_modified_date = ?4 WHERE name = ?1 AND type = ?2",
                         err);
  if (st == NULL) {
    rc = err ? err->code : kHeraldStore;
    goto done;
  }
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, target);
  sqlite3_bind_text(st, 4, now, -1, SQLITE_STATIC);
  rc = herald_store_step_done(store, st, err, "updating a template");
done:
  free(text);
  if (rc != kHeraldOk) {
    herald_store_rollback(store);
    return rc;
  }
  if ((rc = herald_store_commit(store, err)) != kHeraldOk) return rc;
  if (out_version) *out_version = target;
  return kHeraldOk;
}

/* The FROM and WHERE of a statement that reads a version of a template (?3; 0: the active
 * one) by name (?1) and type (?2). */
#define TEMPLATE_VERSION_SQL                                                                  \
  " FROM templates t JOIN template_versions v ON v.name = t.name AND v.type = t.type"       \
  " WHERE t.name = ?1 AND t.type = ?2 AND v.version = CASE WHEN ?3 > 0 THEN ?3 ELSE t.active_version END"

/* Binds and steps st, a TEMPLATE_VERSION_SQL statement: kHeraldOk with its row current (the
 * caller resets st), else the failure with st reset, kHeraldNotFound naming whether the
 * template or the version is missing. */
static int template_version_row(HeraldStore *store, sqlite3_stmt *st, const char *name, const char *type,
                                int version, HeraldError *err) {
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, version);
  int step = sqlite3_step(st);
  if (step == SQLITE_ROW) return kHeraldOk;
  sqlite3_reset(st);
  if (step != SQLITE_DONE) return herald_store_fail(store, err, "reading a template");
  int rc = template_missing(store, name, type, err);
  if (rc != kHeraldOk) return rc;
  return herald_error_set(err, kHeraldNotFound, "%s template '%s' has no version %d", type, name, version);
}

int herald_template_store_get(HeraldStore *store, const char *name, const char *type, int version,
                              HeraldTemplateInfo *out, HeraldError *err) {
  memset(out, 0, sizeof *out);
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "SELECT v.version, t.active_version, t.latest_version, v.revision, v.parts, v.creation_date,"
      " v.last_modified_date" TEMPLATE_VERSION_SQL,
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  int rc = template_version_row(store, st, name, type, version, err);
  if (rc != kHeraldOk) return rc;
  out->version = sqlite3_column_int(st, 0);
  out->active_version = sqlite3_column_int(st, 1);
  out->latest_version = sqlite3_column_int(st, 2);
  out->revision = sqlite3_column_int64(st, 3);
  const char *text = (const char *)sqlite3_column_text(st, 4);
  json_error_t jerr;
  out->parts = text ? json_loads(text, 0, &jerr) : NULL;
  snprintf(out->creation_date, sizeof out->creation_date, "%s", (const char *)sqlite3_column_text(st, 5));
  snprintf(out->last_modified_date, sizeof out->last_modified_date, "%s", (const char *)sqlite3_column_text(st, 6));
  sqlite3_reset(st);
  if (out->parts == NULL)
    return herald_error_set(err, kHeraldStore, "%s template '%s' version %d: stored parts are not JSON", type,
                            name, out->version);
  return kHeraldOk;
}

int herald_template_store_revision(HeraldStore *store, const char *name, const char *type, int version,
                                   int *resolved, int64_t *revision, HeraldError *err) {
  *resolved = 0;
  *revision = 0;
  /* the parts are not read: a renderer checks its compiled copy with this on every message */
  sqlite3_stmt *st = herald_store_stmt(store, "SELECT v.version, v.revision" TEMPLATE_VERSION_SQL, err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  int rc = template_version_row(store, st, name, type, version, err);
  if (rc != kHeraldOk) return rc;
  *resolved = sqlite3_column_int(st, 0);
  *revision = sqlite3_column_int64(st, 1);
  sqlite3_reset(st);
  return kHeraldOk;
}

int herald_template_store_versions(HeraldStore *store, const char *name, const char *type, json_t **out,
                                   HeraldError *err) {
  *out = NULL;
  int rc = template_missing(store, name, type, err);
  if (rc != kHeraldOk) return rc;
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "SELECT v.version, v.version = t.active_version, v.creation_date, v.last_modified_date"
      " FROM template_versions v JOIN templates t ON t.name = v.name AND t.type = v.type"
      " WHERE v.name = ?1 AND v.type = ?2 ORDER BY v.version",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
  json_t *list = json_array();
  int step;
  while (list != NULL && (step = sqlite3_step(st)) == SQLITE_ROW) {
    json_t *item = json_pack("{s:i, s:b, s:s, s:s}", "Version", sqlite3_column_int(st, 0), "Active",
                             sqlite3_column_int(st, 1), "CreationDate", (const char *)sqlite3_column_text(st, 2),
                             "LastModifiedDate", (const char *)sqlite3_column_text(st, 3));
    if (item == NULL || json_array_append_new(list, item) != 0) {
      json_decref(list);
      list = NULL;
    }
  }
  sqlite3_reset(st);
  if (list == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  if (step != SQLITE_DONE) {
    json_decref(list);
    return herald_store_fail(store, err, "listing template versions");
  }
  *out = list;
  return kHeraldOk;
}

int herald_template_store_set_active(HeraldStore *store, const char *name, const char *type, int version,
                                     HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      store,
      "UPDATE templates SET active_version = ?3 WHERE name = ?1 AND type = ?2 AND EXISTS"
      " (SELECT 1 FROM template_versions v WHERE v.name = ?1 AND v.type = ?2 AND v.version = ?3)",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, version);
  int rc = herald_store_step_done(store, st, err, "setting the active version");
  if (rc != kHeraldOk) return rc;
  if (sqlite3_changes(herald_store_db(store)) > 0) return kHeraldOk;
  rc = template_missing(store, name, type, err);
  if (rc != kHeraldOk) return rc;
  return herald_error_set(err, kHeraldNotFound, "%s template '%s' has no version %d", type, name, version);
}
