#include "runtime/import.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/csv.h"
#include "runtime/endpoint.h"
#include "runtime/event.h"
#include "runtime/json_simd.h"
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

/* ---- the pipeline ----
 * Parsing (jansson, or CSV to JSON) and the validation that needs no database run on a second
 * thread and hand rows over in batches through a small bounded ring; the calling thread writes
 * them in file order. The parse cost, a third of an import, then overlaps the SQLite work.
 * The first error stops both sides; a parse or validation error travels as the end of the
 * stream, so rows before it are still written first and errors come out in file order.
 * In serial mode the same producer code hands each full batch straight to the writer. */

#define BATCH_ROWS 1024
#define RING_BATCHES 8

typedef struct {
  json_t *row;
  HeraldEndpointRow *columns; /* an endpoint's columns, prepared on the parser thread */
  long line;
  size_t offset; /* bytes of the file consumed after this row, for progress */
} Item;

typedef struct Batch {
  struct Batch *next; /* in the spare list */
  Item items[BATCH_ROWS];
  size_t n;
  int last;        /* the producer's final batch */
  int failed;      /* ... ending with a parse error in err */
  HeraldError err;
} Batch;

typedef int (*RowFn)(void *ctx, json_t *row, const HeraldEndpointRow *columns, HeraldError *err);
/* Validation on the parser thread; may prepare the row's columns for the writer. */
typedef int (*CheckFn)(void *ctx, json_t *row, HeraldEndpointRow **columns, HeraldError *err);

typedef struct {
  const char *path;
  const Mapped *m;
  int csv;
  CheckFn check;      /* validation run on the parser thread (may be NULL) */
  void *check_ctx;
  pthread_mutex_t mu;
  pthread_cond_t changed;
  Batch *ring[RING_BATCHES];
  size_t head, count; /* ring[head] is the oldest of count batches */
  int cancel;         /* the consumer stopped: the producer winds down */
  Batch *filling;
  Batch *spare;       /* consumed batches handed back, rows still to be freed */
  /* The consumer side. With `serial` set the parser calls it itself, on one thread. */
  int serial;
  RowFn fn;
  void *ctx;
  HeraldProgress *progress;
  long long *rows;
  int rc;
  HeraldError *err;
} Pipe;

/* Writes the rows of a batch in order; returns 0 to go on, -1 once something failed. */
static int consume(Pipe *p, Batch *b) {
  for (size_t i = 0; i < b->n && p->rc == kHeraldOk; i++) {
    p->rc = p->fn(p->ctx, b->items[i].row, b->items[i].columns, p->err);
    if (p->rc != kHeraldOk) {
      herald_error_prefix(p->err, "%s:%ld: ", p->path, b->items[i].line);
    } else {
      (*p->rows)++;
      herald_progress_update(p->progress, (uint64_t)*p->rows, b->items[i].offset);
    }
  }
  if (p->rc == kHeraldOk && b->failed) {
    *p->err = b->err;
    p->rc = p->err->code;
  }
  return p->rc == kHeraldOk ? 0 : -1;
}


static void free_rows(Batch *b) {
  for (size_t i = 0; i < b->n; i++) {
    herald_endpoint_row_free(b->items[i].columns);
    json_decref(b->items[i].row);
  }
  b->n = 0;
}

/* Consumed batches come back to the parser thread, which frees their rows: memory is then
 * released by the thread that allocated it (cross-thread frees doubled malloc's cost), and
 * batches are reused instead of reallocated. */
static Batch *take_spare(Pipe *p) {
  pthread_mutex_lock(&p->mu);
  Batch *b = p->spare;
  if (b != NULL) p->spare = b->next;
  pthread_mutex_unlock(&p->mu);
  if (b == NULL) return malloc(sizeof *b);
  free_rows(b);
  return b;
}

static void give_spare(Pipe *p, Batch *b) {
  pthread_mutex_lock(&p->mu);
  b->next = p->spare;
  p->spare = b;
  pthread_mutex_unlock(&p->mu);
}

/* Hands the filled batch to the consumer; -1 when the consumer has stopped. */
static int pipe_push(Pipe *p) {
  Batch *b = p->filling;
  p->filling = NULL;
  if (p->serial) {
    int rc = consume(p, b);
    free_rows(b);
    b->next = p->spare;
    p->spare = b;
    return rc;
  }
  pthread_mutex_lock(&p->mu);
  while (p->count == RING_BATCHES && !p->cancel) pthread_cond_wait(&p->changed, &p->mu);
  int cancelled = p->cancel;
  if (!cancelled) {
    p->ring[(p->head + p->count) % RING_BATCHES] = b;
    p->count++;
    pthread_cond_broadcast(&p->changed);
  }
  pthread_mutex_unlock(&p->mu);
  if (cancelled) {
    free_rows(b);
    free(b);
    return -1;
  }
  return 0;
}

static int pipe_batch(Pipe *p) {
  if (p->filling != NULL) return 0;
  Batch *b = take_spare(p);
  if (b == NULL) return -1;
  b->n = 0;
  b->last = b->failed = 0;
  p->filling = b;
  return 0;
}

static void pipe_finish(Pipe *p, const HeraldError *err);

/* Validates (on this thread) and queues one row; -1 when the stream ended (stop producing). */
static int pipe_emit(Pipe *p, json_t *row, long line, size_t offset) {
  HeraldEndpointRow *columns = NULL;
  if (p->check != NULL) {
    HeraldError err;
    if (p->check(p->check_ctx, row, &columns, &err) != kHeraldOk) {
      json_decref(row);
      herald_error_prefix(&err, "%s:%ld: ", p->path, line);
      pipe_finish(p, &err);
      return -1;
    }
  }
  if (pipe_batch(p) != 0) {
    herald_endpoint_row_free(columns);
    json_decref(row);
    return -1;
  }
  p->filling->items[p->filling->n++] = (Item){row, columns, line, offset};
  if (p->filling->n == BATCH_ROWS) return pipe_push(p);
  return 0;
}

/* Ends the stream, with err when parsing failed. */
static void pipe_finish(Pipe *p, const HeraldError *err) {
  if (pipe_batch(p) != 0) {
    /* No memory for the final batch: cancelling makes the consumer's pop return NULL once
     * the ring is empty, which it reports as out of memory. */
    pthread_mutex_lock(&p->mu);
    p->cancel = 1;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->mu);
    return;
  }
  p->filling->last = 1;
  if (err != NULL) {
    p->filling->failed = 1;
    p->filling->err = *err;
  }
  pipe_push(p);
}

static Batch *pipe_pop(Pipe *p) {
  pthread_mutex_lock(&p->mu);
  while (p->count == 0 && !p->cancel) pthread_cond_wait(&p->changed, &p->mu);
  Batch *b = NULL;
  if (p->count > 0) {
    b = p->ring[p->head];
    p->head = (p->head + 1) % RING_BATCHES;
    p->count--;
    pthread_cond_broadcast(&p->changed);
  }
  pthread_mutex_unlock(&p->mu);
  return b;
}

/* ---- newline-delimited JSON ---- */

/* Lines go through simdjson first (jansson's character-by-character reader was the larger
 * part of the parser thread's time); a line it does not take as jansson would is read by
 * jansson, so values and error messages are jansson's. */
static void produce_json_lines(Pipe *p) {
  const char *base = p->m->data, *q = base, *end = base + p->m->len;
  long line = 0;
  HeraldJsonSimd *simd = herald_json_simd_new();
  while (q < end) {
    line++;
    const char *nl = memchr(q, '\n', (size_t)(end - q));
    const char *stop = nl ? nl : end;
    const char *s = q;
    q = nl ? nl + 1 : end;
    while (s < stop && (*s == ' ' || *s == '\t' || *s == '\r')) s++;
    if (s == stop) continue;
    json_t *row = simd ? herald_json_simd_load(simd, s, (size_t)(stop - s)) : NULL;
    json_error_t jerr;
    if (row == NULL) row = json_loadb(s, (size_t)(stop - s), JSON_REJECT_DUPLICATES, &jerr);
    if (row == NULL) {
      HeraldError err;
      herald_error_set(&err, kHeraldInvalid, "%s:%ld: invalid JSON at column %d: %s", p->path,
                       line, jerr.column, jerr.text);
      pipe_finish(p, &err);
      herald_json_simd_free(simd);
      return;
    }
    if (pipe_emit(p, row, line, (size_t)(q - base)) != 0) {
      herald_json_simd_free(simd);
      return;
    }
  }
  pipe_finish(p, NULL);
  herald_json_simd_free(simd);
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

/* line: where the header is (blank lines before it are skipped). */
static int parse_header(const char *path, long line, HeraldCsv *csv, size_t n, Column **out,
                        HeraldError *err) {
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
    if (c->header == NULL) {
      *out = cols;
      return herald_error_set(err, kHeraldNoMemory, "out of memory");
    }
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
      return herald_error_set(err, kHeraldInvalid, "%s:%ld: column %zu: unknown header '%s' (use "
                              "Pinpoint's dotted paths such as Address, ChannelType, "
                              "User.UserId, Attributes.Name, Metrics.Name, "
                              "Demographic.Timezone, Location.Country)", path, line, i + 1, h);
    }
    /* A row sets such a field once: a repeated column would keep one of its values and
     * silently drop the others. Only attribute columns are lists, one value a column. */
    if (c->kind == kColList) continue;
    for (size_t j = 0; j < i; j++) {
      if (cols[j].kind != kColList && strcmp(cols[j].header, h) == 0) {
        *out = cols;
        return herald_error_set(err, kHeraldInvalid, "%s:%ld: column %zu: '%s' repeats column %zu",
                                path, line, i + 1, h, j + 1);
      }
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

/* csv.c says "line N: ..."; an import says "FILE:N: ...". */
static void csv_error_at(HeraldError *err, const char *path) {
  if (strncmp(err->msg, "line ", 5) == 0) memmove(err->msg, err->msg + 5, strlen(err->msg + 5) + 1);
  herald_error_prefix(err, "%s:", path);
}

static void produce_csv_rows(Pipe *p) {
  HeraldCsv csv;
  herald_csv_init(&csv, p->m->data, p->m->len);
  size_t ncols = 0, n;
  long line;
  Column *cols = NULL;
  HeraldError err = {0};
  int failed = 0, stopped = 0;
  int more = herald_csv_next(&csv, &ncols, &line, &err);
  if (more < 0) {
    csv_error_at(&err, p->path);
    failed = 1;
  } else if (more == 1 && parse_header(p->path, line, &csv, ncols, &cols, &err) != kHeraldOk) {
    failed = 1;
  }
  while (!failed && more == 1 && (more = herald_csv_next(&csv, &n, &line, &err)) == 1) {
    json_t *req = NULL;
    if (n != ncols) {
      herald_error_set(&err, kHeraldInvalid, "%s:%ld: %zu fields; the header has %zu", p->path,
                       line, n, ncols);
      failed = 1;
    } else if (csv_row_to_request(&csv, cols, n, &req, &err) != kHeraldOk) {
      herald_error_prefix(&err, "%s:%ld: ", p->path, line);
      failed = 1;
    } else if (pipe_emit(p, req, line, (size_t)(csv.p - p->m->data)) != 0) {
      stopped = 1;
      break;
    }
  }
  if (more < 0 && !failed) {
    csv_error_at(&err, p->path);
    failed = 1;
  }
  if (!stopped) pipe_finish(p, failed ? &err : NULL);
  free_columns(cols, ncols);
  herald_csv_free(&csv);
}

static void *producer_main(void *arg) {
  Pipe *p = arg;
  if (p->csv) produce_csv_rows(p);
  else produce_json_lines(p);
  return NULL;
}

/* Parsing runs on its own thread when there is more than one CPU. Measured on a shared
 * 2-vCPU machine, 1M endpoints: 9.6 s with the thread against 12.4 s without (it costs ~35%
 * more CPU in all, as rows move between cores). When the other CPU is busy with other work the
 * thread can lose (200k rows under load: 2.8 s against 2.4 s); HERALD_IMPORT_THREADS=0/1
 * overrides the choice. */
static int use_parser_thread(void) {
  const char *env = getenv("HERALD_IMPORT_THREADS");
  if (env != NULL && *env) return strcmp(env, "0") != 0;
  return sysconf(_SC_NPROCESSORS_ONLN) > 1;
}

/* Feeds every row of the file to fn in order; the first failure stops the import. */
static int each_row(const char *path, const Mapped *m, int csv, HeraldProgress *progress,
                    CheckFn check, void *check_ctx, RowFn fn, void *ctx, long long *rows,
                    HeraldError *err) {
  Pipe p = {.path = path, .m = m, .csv = csv, .check = check, .check_ctx = check_ctx,
            .fn = fn, .ctx = ctx, .progress = progress, .rows = rows, .rc = kHeraldOk,
            .err = err};
  pthread_mutex_init(&p.mu, NULL);
  pthread_cond_init(&p.changed, NULL);
  pthread_t thread;
  p.serial = !use_parser_thread();
  if (!p.serial) {
    json_object_seed(0); /* before two threads create objects */
    if (pthread_create(&thread, NULL, producer_main, &p) != 0) p.serial = 1;
  }
  if (p.serial) {
    producer_main(&p);
  } else {
    for (int done = 0; !done;) {
      Batch *b = pipe_pop(&p);
      if (b == NULL) {
        if (p.rc == kHeraldOk)
          p.rc = herald_error_set(err, kHeraldNoMemory, "%s: out of memory while parsing", path);
        break;
      }
      done = consume(&p, b) != 0 || b->last;
      give_spare(&p, b);
    }
    /* Stop the producer (it may be waiting for room), then free what it left in the ring. */
    pthread_mutex_lock(&p.mu);
    p.cancel = 1;
    pthread_cond_broadcast(&p.changed);
    pthread_mutex_unlock(&p.mu);
    pthread_join(thread, NULL);
  }
  if (p.serial && p.rc == kHeraldOk && p.filling == NULL && p.cancel)
    p.rc = herald_error_set(err, kHeraldNoMemory, "%s: out of memory while parsing", path);
  while (p.count > 0) {
    Batch *b = p.ring[p.head];
    p.head = (p.head + 1) % RING_BATCHES;
    p.count--;
    free_rows(b);
    free(b);
  }
  if (p.filling != NULL) {
    free_rows(p.filling);
    free(p.filling);
  }
  while (p.spare != NULL) {
    Batch *b = p.spare;
    p.spare = b->next;
    free_rows(b);
    free(b);
  }
  pthread_cond_destroy(&p.changed);
  pthread_mutex_destroy(&p.mu);
  return p.rc;
}

/* ---- the two imports ---- */

static int check_endpoint(void *ctx, json_t *row, HeraldEndpointRow **columns, HeraldError *err) {
  if (herald_endpoint_check(ctx, row, err) != kHeraldOk) return err->code;
  return herald_endpoint_row_new(ctx, row, columns, err);
}

static int put_endpoint(void *ctx, json_t *row, const HeraldEndpointRow *columns,
                        HeraldError *err) {
  return herald_endpoint_writer_put_checked(ctx, row, columns, NULL, err);
}

typedef struct {
  HeraldStore *store;
  const char *app;
  long long inserted;
} EventCtx;

static int put_event(void *ctx, json_t *row, const HeraldEndpointRow *columns, HeraldError *err) {
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
    HeraldEndpointChecker checker = {0};
    rc = each_row(path, &m, format == kHeraldImportCsv, &progress, events ? NULL : check_endpoint,
                  &checker, fn, ctx, &result->rows, err);
    herald_endpoint_checker_clear(&checker);
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

/* ---- reading without writing (herald.segment.import) ---- */

typedef struct {
  HeraldImportRequestFn fn;
  void *ctx;
} ReadCtx;

static int read_request(void *ctx, json_t *row, const HeraldEndpointRow *columns,
                        HeraldError *err) {
  (void)columns;
  ReadCtx *r = ctx;
  return r->fn(r->ctx, row, err);
}

int herald_import_read_endpoints(const char *path, HeraldImportFormat format,
                                 HeraldImportRequestFn fn, void *ctx,
                                 HeraldImportFormat *detected, HeraldError *err) {
  Mapped m;
  if (map_file(path, &m, err) != kHeraldOk) return err->code;
  if (format == kHeraldImportAuto) format = detect(path, &m);
  if (detected != NULL) *detected = format;
  HeraldProgress quiet = {0}; /* never drawn: the caller is a script, not the CLI */
  ReadCtx r = {fn, ctx};
  long long rows = 0;
  int rc = each_row(path, &m, format == kHeraldImportCsv, &quiet, NULL, NULL, read_request, &r,
                    &rows, err);
  unmap_file(&m);
  return rc;
}
