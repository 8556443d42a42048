#include "runtime/import.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/csv.h"
#include "runtime/endpoint.h"
#include "runtime/event.h"
#include "runtime/progress.h"

/* The file is mapped: the parsers then work on one buffer without copying lines. */
typedef struct {
  const char *data;
  size_t len;
} Mapped;

static int map_file(const char *path, Mapped *m, HeraldError *err) {
  m->data = NULL;
  m->len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return herald_error_set(err, kHeraldIo, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    int e = errno;
    close(fd);
    return herald_error_set(err, kHeraldIo, "%s: %s", path,
                            S_ISREG(st.st_mode) ? strerror(e) : "not a regular file");
  }
  if (st.st_size == 0) {
    close(fd);
    m->data = "";
    return kHeraldOk;
  }
  void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return herald_error_set(err, kHeraldIo, "%s: %s", path, strerror(errno));
  madvise(p, (size_t)st.st_size, MADV_SEQUENTIAL);
  m->data = p;
  m->len = (size_t)st.st_size;
  return kHeraldOk;
}

static void unmap_file(Mapped *m) {
  if (m->len > 0) munmap((void *)m->data, m->len);
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

static HeraldImportFormat detect(const char *path, const Mapped *m) {
  if (ends_with(path, ".csv")) return kHeraldImportCsv;
  if (ends_with(path, ".json") || ends_with(path, ".jsonl") || ends_with(path, ".ndjson"))
    return kHeraldImportJson;
  for (size_t i = 0; i < m->len; i++) {
    char c = m->data[i];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    return c == '{' ? kHeraldImportJson : kHeraldImportCsv;
  }
  return kHeraldImportJson;
}

/* ---- newline-delimited JSON ---- */

typedef int (*RowFn)(void *ctx, json_t *row, HeraldError *err);

static int each_json_line(const char *path, const Mapped *m, HeraldProgress *progress, RowFn fn,
                          void *ctx, long long *rows, HeraldError *err) {
  const char *p = m->data, *end = m->data + m->len;
  long line = 0;
  while (p < end) {
    line++;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *stop = nl ? nl : end;
    const char *s = p;
    p = nl ? nl + 1 : end;
    while (s < stop && (*s == ' ' || *s == '\t' || *s == '\r')) s++;
    if (s == stop) continue;
    json_error_t jerr;
    json_t *row = json_loadb(s, (size_t)(stop - s), JSON_REJECT_DUPLICATES, &jerr);
    if (row == NULL)
      return herald_error_set(err, kHeraldInvalid, "%s:%ld: invalid JSON at column %d: %s", path,
                              line, jerr.column, jerr.text);
    int rc = fn(ctx, row, err);
    json_decref(row);
    if (rc != kHeraldOk) {
      herald_error_prefix(err, "%s:%ld: ", path, line);
      return rc;
    }
    (*rows)++;
    herald_progress_update(progress, (uint64_t)*rows, (uint64_t)(p - m->data));
  }
  return kHeraldOk;
}

/* ---- CSV with Pinpoint's dotted headers ---- */

typedef enum { kColTop, kColUserId, kColList, kColNumber, kColString } ColKind;

typedef struct {
  ColKind kind;
  const char *group;  /* "Attributes", "User", "Metrics", "Demographic", "Location" or NULL */
  char *name;         /* the field inside the group, or the top-level field */
  int user_attr;      /* User.UserAttributes.X */
  char *header;
} Column;

static int parse_header(const char *path, HeraldCsv *csv, size_t n, Column **out, HeraldError *err) {
  static const char *const top[] = {"Id", "Address", "ChannelType", "OptOut", "EndpointStatus",
                                    "EffectiveDate", "RequestId"};
  static const char *const demo[] = {"AppVersion", "Locale", "Make", "Model", "ModelVersion",
                                     "Platform", "PlatformVersion", "Timezone"};
  static const char *const loc[] = {"City", "Country", "PostalCode", "Region"};
  Column *cols = calloc(n, sizeof *cols);
  if (cols == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  for (size_t i = 0; i < n; i++) {
    const char *h = herald_csv_field(csv, i);
    Column *c = &cols[i];
    c->header = strdup(h);
    const char *rest = NULL;
    int ok = 0;
    for (size_t k = 0; k < sizeof top / sizeof top[0] && !ok; k++)
      if (strcmp(h, top[k]) == 0) c->kind = kColTop, c->name = strdup(h), ok = 1;
    if (!ok && strcmp(h, "User.UserId") == 0) c->kind = kColUserId, ok = 1;
    if (!ok && strncmp(h, "User.UserAttributes.", 20) == 0 && h[20]) {
      c->kind = kColList, c->group = "User", c->user_attr = 1, c->name = strdup(h + 20), ok = 1;
    }
    if (!ok && strncmp(h, "Attributes.", 11) == 0 && h[11])
      c->kind = kColList, c->group = "Attributes", c->name = strdup(h + 11), ok = 1;
    if (!ok && strncmp(h, "Metrics.", 8) == 0 && h[8])
      c->kind = kColNumber, c->group = "Metrics", c->name = strdup(h + 8), ok = 1;
    if (!ok && strncmp(h, "Demographic.", 12) == 0) {
      rest = h + 12;
      for (size_t k = 0; k < sizeof demo / sizeof demo[0] && !ok; k++)
        if (strcmp(rest, demo[k]) == 0)
          c->kind = kColString, c->group = "Demographic", c->name = strdup(rest), ok = 1;
    }
    if (!ok && strncmp(h, "Location.", 9) == 0) {
      rest = h + 9;
      if (strcmp(rest, "Latitude") == 0 || strcmp(rest, "Longitude") == 0)
        c->kind = kColNumber, c->group = "Location", c->name = strdup(rest), ok = 1;
      for (size_t k = 0; k < sizeof loc / sizeof loc[0] && !ok; k++)
        if (strcmp(rest, loc[k]) == 0)
          c->kind = kColString, c->group = "Location", c->name = strdup(rest), ok = 1;
    }
    if (!ok) {
      *out = cols;
      return herald_error_set(err, kHeraldInvalid, "%s:1: column %zu: unknown header '%s' (use "
                              "Pinpoint's dotted paths such as Address, ChannelType, "
                              "User.UserId, Attributes.Name, Metrics.Name, "
                              "Demographic.Timezone, Location.Country)", path, i + 1, h);
    }
  }
  *out = cols;
  return kHeraldOk;
}

static void free_columns(Column *cols, size_t n) {
  if (cols == NULL) return;
  for (size_t i = 0; i < n; i++) {
    free(cols[i].name);
    free(cols[i].header);
  }
  free(cols);
}

static json_t *subobject(json_t *parent, const char *key) {
  json_t *o = json_object_get(parent, key);
  if (o == NULL) {
    o = json_object();
    json_object_set_new(parent, key, o);
  }
  return o;
}

static int csv_row_to_request(HeraldCsv *csv, const Column *cols, size_t n, json_t **out,
                              HeraldError *err) {
  json_t *req = json_object();
  for (size_t i = 0; i < n; i++) {
    size_t len = herald_csv_field_len(csv, i);
    if (len == 0) continue;
    const char *v = herald_csv_field(csv, i);
    const Column *c = &cols[i];
    json_t *s = NULL;
    if (c->kind != kColNumber) {
      s = json_stringn(v, len);
      if (s == NULL) {
        json_decref(req);
        return herald_error_set(err, kHeraldInvalid, "%s: not valid UTF-8", c->header);
      }
    }
    switch (c->kind) {
      case kColTop: json_object_set_new(req, c->name, s); break;
      case kColUserId: json_object_set_new(subobject(req, "User"), "UserId", s); break;
      case kColString: json_object_set_new(subobject(req, c->group), c->name, s); break;
      case kColList: {
        json_t *g = subobject(req, c->group);
        if (c->user_attr) g = subobject(g, "UserAttributes");
        json_t *list = json_object_get(g, c->name);
        if (list == NULL) {
          list = json_array();
          json_object_set_new(g, c->name, list);
        }
        json_array_append_new(list, s);
        break;
      }
      case kColNumber: {
        char *endp;
        errno = 0;
        double d = strtod(v, &endp);
        if (endp == v || *endp != '\0' || !isfinite(d)) {
          json_decref(req);
          return herald_error_set(err, kHeraldInvalid, "%s: '%.60s' is not a number", c->header, v);
        }
        json_object_set_new(subobject(req, c->group), c->name, json_real(d));
        break;
      }
    }
  }
  *out = req;
  return kHeraldOk;
}

static int each_csv_row(const char *path, const Mapped *m, HeraldProgress *progress, RowFn fn,
                        void *ctx, long long *rows, HeraldError *err) {
  HeraldCsv csv;
  herald_csv_init(&csv, m->data, m->len);
  size_t ncols = 0, n;
  long line;
  Column *cols = NULL;
  int rc = herald_csv_next(&csv, &ncols, &line, err);
  if (rc <= 0) {
    herald_csv_free(&csv);
    if (rc == 0) return kHeraldOk; /* an empty file imports nothing */
    herald_error_prefix(err, "%s:", path);
    return err->code;
  }
  if (parse_header(path, &csv, ncols, &cols, err) != kHeraldOk) {
    free_columns(cols, ncols);
    herald_csv_free(&csv);
    return err->code;
  }
  rc = kHeraldOk;
  int more;
  while ((more = herald_csv_next(&csv, &n, &line, err)) == 1) {
    if (n != ncols) {
      rc = herald_error_set(err, kHeraldInvalid, "%s:%ld: %zu fields; the header has %zu", path,
                            line, n, ncols);
      break;
    }
    json_t *req = NULL;
    rc = csv_row_to_request(&csv, cols, n, &req, err);
    if (rc == kHeraldOk) {
      rc = fn(ctx, req, err);
      json_decref(req);
    }
    if (rc != kHeraldOk) {
      herald_error_prefix(err, "%s:%ld: ", path, line);
      break;
    }
    (*rows)++;
    herald_progress_update(progress, (uint64_t)*rows, (uint64_t)(csv.p - m->data));
  }
  if (more < 0) {
    herald_error_prefix(err, "%s:", path);
    rc = err->code;
  }
  free_columns(cols, ncols);
  herald_csv_free(&csv);
  return rc;
}

/* ---- the two imports ---- */

static int put_endpoint(void *ctx, json_t *row, HeraldError *err) {
  return herald_endpoint_writer_put(ctx, row, NULL, err);
}

typedef struct {
  HeraldStore *store;
  const char *app;
  long long inserted;
} EventCtx;

static int put_event(void *ctx, json_t *row, HeraldError *err) {
  EventCtx *e = ctx;
  int added = 0;
  int rc = herald_event_put(e->store, e->app, NULL, row, &added, NULL, err);
  e->inserted += added;
  return rc;
}

static int run_import(HeraldStore *store, const char *app, const char *path, int events,
                      HeraldImportFormat format, HeraldImportResult *result, HeraldError *err) {
  memset(result, 0, sizeof *result);
  if (herald_store_app_exists(store, app, err) != kHeraldOk) return err ? err->code : kHeraldNotFound;
  Mapped m;
  if (map_file(path, &m, err) != kHeraldOk) return err->code;
  if (format == kHeraldImportAuto) format = detect(path, &m);
  if (events && format == kHeraldImportCsv) {
    unmap_file(&m);
    return herald_error_set(err, kHeraldInvalid, "%s: events are imported from newline-delimited "
                            "JSON (one event object per line)", path);
  }
  HeraldProgress progress;
  herald_progress_start(&progress, "importing", events ? "events" : "endpoints", m.len);
  HeraldEndpointWriter *w = NULL;
  EventCtx ectx = {store, app, 0};
  /* A bulk write touches index pages all over the file; with SQLite's default 2 MB cache they
   * are evicted and rewritten to the WAL many times. 256 MB keeps a million-row import's hot
   * pages in memory (the cache only grows as pages are used). */
  herald_store_exec(store, "PRAGMA cache_size = -262144", NULL);
  int rc = herald_store_begin(store, err);
  if (rc == kHeraldOk && !events) rc = herald_endpoint_writer_open(store, app, &w, err);
  if (rc == kHeraldOk) {
    RowFn fn = events ? put_event : put_endpoint;
    void *ctx = events ? (void *)&ectx : (void *)w;
    if (format == kHeraldImportCsv)
      rc = each_csv_row(path, &m, &progress, fn, ctx, &result->rows, err);
    else
      rc = each_json_line(path, &m, &progress, fn, ctx, &result->rows, err);
    herald_endpoint_writer_close(w);
    if (rc == kHeraldOk) {
      rc = herald_store_commit(store, err);
    } else {
      herald_store_rollback(store);
    }
  }
  herald_store_exec(store, "PRAGMA cache_size = -2000", NULL);
  result->seconds = herald_progress_finish(&progress);
  result->inserted = events ? ectx.inserted : result->rows;
  if (rc != kHeraldOk) {
    result->rows = result->inserted = 0;
    if (err && strstr(err->msg, "nothing was imported") == NULL && strlen(err->msg) < sizeof err->msg - 40)
      strcat(err->msg, " (nothing was imported)");
  }
  unmap_file(&m);
  return rc;
}

int herald_import_endpoints(HeraldStore *store, const char *app, const char *path,
                            HeraldImportFormat format, HeraldImportResult *result,
                            HeraldError *err) {
  return run_import(store, app, path, 0, format, result, err);
}

int herald_import_events(HeraldStore *store, const char *app, const char *path,
                         HeraldImportResult *result, HeraldError *err) {
  return run_import(store, app, path, 1, kHeraldImportJson, result, err);
}
