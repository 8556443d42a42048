/* The transport engine on its own thread (see http_thread.h).
 *
 * Jobs travel in three queues under one mutex: submits and cancels to the transport thread,
 * completions back; a uv_async on each side wakes the other (closed gates go to the transport
 * in a fourth, for it to give back the jobs waiting behind them). A job is shared by both
 * threads, so it is reference counted: one reference for the caller (until its callback has
 * run, or until the transport has seen its cancellation) and one for the transport (until the
 * outcome is handed back, or dropped because the job was cancelled). The transport thread drains
 * submits before cancels, in one grab, so a cancellation always finds its job started.
 *
 * The caller's async handle is referenced only while jobs are outstanding, so an idle engine
 * does not keep the caller's loop alive.
 *
 * Submits made during one turn of the caller's loop wake the transport once, from a prepare
 * handle: prepare handles run on every turn just before the loop may block in its poll,
 * whichever phase (timers, poll, close callbacks) made the work. Completions wake the caller
 * as they come (coalescing them per turn of the transport's loop was measured slower, since
 * the caller then starts on outcomes later), except quiet ones (HeraldHttpNotify): a batch
 * with every request handed over is woken by its last outcome in flight, which saves the two
 * threads about 1.4 us of CPU per message in webhook-outbox. */
#include "runtime/http_thread.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

typedef enum { kJobQueued = 0, kJobRunning, kJobDone } JobState;

struct HeraldHttpGroup {
  atomic_int refs;
  size_t limit;
  /* the transport thread's */
  size_t running;
  HeraldHttpJob *head, *tail;   /* waiting for a free place */
  uint64_t held_until;          /* transport loop time (ms) a server's Retry-After holds it to */
};

struct HeraldHttpGate {
  atomic_int refs;
  atomic_int closed;
  HeraldHttpGate *sweep_link;   /* the gates closed, for the transport to sweep (under lock) */
  HeraldHttpJob *waiting;       /* the transport thread's: its jobs waiting in their groups */
};

struct HeraldHttpNotify {
  atomic_int refs;
  atomic_long pending;   /* jobs submitted under it whose outcome is not handed back yet */
  atomic_long wake_at;   /* a finish that leaves at most this many pending wakes the caller */
  atomic_int eager;
};

struct HeraldHttpJob {
  HeraldHttpThread *owner;
  HeraldHttpNotify *notify;
  HeraldHttpJob *link;          /* submits, then completions: never both at once */
  HeraldHttpJob *cancel_link;   /* cancels */
  HeraldHttpJob *prev, *next;   /* the caller's outstanding jobs */
  HeraldHttpGroup *group;
  HeraldHttpJob *gprev, *gnext; /* the group's waiting jobs (transport thread) */
  HeraldHttpGate *gate;
  HeraldHttpJob *wprev, *wnext; /* the gate's waiting jobs (transport thread) */
  atomic_int refs;
  atomic_int cancelled;
  int is_smtp;
  /* the request, copied: the strings and lines in the job's own allocation, after it (one
   * allocation, not one per string); the body apart, freed once it is handed to libcurl */
  char *url, *method, *body, *ca_file, *mail_from, *username, *password;
  size_t body_len;
  char **lines;                 /* header lines, or SMTP recipients */
  size_t nlines;
  long timeout_ms;
  size_t max_body;
  int want_headers, http1_only, starttls, has_body;
  /* the transport thread's */
  JobState state;
  HeraldHttpTransfer *transfer;
  /* the outcome */
  HeraldNetClass error;
  char *error_text;
  long status;
  char *rbody;
  size_t rbody_len;
  int truncated;
  char *rheaders;
  size_t rnheaders;
  int64_t retry_after_ms;
  int http_version;
  int64_t elapsed_us;
  HeraldHttpDone done;
  void *user;
};

struct HeraldHttpThread {
  /* the caller's side */
  uv_loop_t *loop;
  uv_async_t back;
  uv_prepare_t flush;           /* wakes the transport for this turn's submits */
  int wake_due;
  int open_handles;             /* back and flush: t is freed when both have closed */
  HeraldHttpJob *outstanding;
  size_t in_flight;
  int dispatching;              /* inside back_cb: a free waits until it returns */
  int free_pending;
  /* shared, under lock */
  uv_mutex_t lock;
  HeraldHttpJob *submits, *submits_tail;
  HeraldHttpJob *cancels;
  HeraldHttpGate *sweeps;
  HeraldHttpJob *completions, *completions_tail;
  int stopping;
  /* the transport's side */
  uv_loop_t wloop;
  uv_async_t wake;
  HeraldHttpClient *client;
  uv_thread_t thread;
  _Atomic uint64_t connections;
};

HeraldHttpNotify *herald_http_notify_new(void) {
  HeraldHttpNotify *n = calloc(1, sizeof *n);
  if (n == NULL) return NULL;
  atomic_init(&n->refs, 1);
  atomic_init(&n->pending, 0);
  atomic_init(&n->wake_at, 0);
  atomic_init(&n->eager, 0);
  return n;
}

void herald_http_notify_release(HeraldHttpNotify *n) {
  if (n != NULL && atomic_fetch_sub(&n->refs, 1) == 1) free(n);
}

void herald_http_notify_set_wake(HeraldHttpNotify *n, int eager, long wake_at) {
  if (n == NULL) return;
  atomic_store(&n->wake_at, wake_at > 0 ? wake_at : 0);
  atomic_store(&n->eager, eager != 0);
}

long herald_http_notify_pending(HeraldHttpNotify *n) { return n ? atomic_load(&n->pending) : 0; }

HeraldHttpGroup *herald_http_group_new(size_t limit) {
  HeraldHttpGroup *g = calloc(1, sizeof *g);
  if (g == NULL) return NULL;
  atomic_init(&g->refs, 1);
  g->limit = limit > 0 ? limit : 1;
  return g;
}

HeraldHttpGroup *herald_http_group_retain(HeraldHttpGroup *g) {
  if (g != NULL) atomic_fetch_add(&g->refs, 1);
  return g;
}

void herald_http_group_release(HeraldHttpGroup *g) {
  if (g != NULL && atomic_fetch_sub(&g->refs, 1) == 1) free(g);
}

HeraldHttpGate *herald_http_gate_new(void) {
  HeraldHttpGate *g = calloc(1, sizeof *g);
  if (g == NULL) return NULL;
  atomic_init(&g->refs, 1);
  atomic_init(&g->closed, 0);
  return g;
}

void herald_http_gate_release(HeraldHttpGate *g) {
  if (g != NULL && atomic_fetch_sub(&g->refs, 1) == 1) free(g);
}

int herald_http_gate_closed(const HeraldHttpGate *g) {
  return g != NULL && atomic_load(&((HeraldHttpGate *)g)->closed);
}

static void job_free(HeraldHttpJob *j) {
  herald_http_group_release(j->group);
  herald_http_gate_release(j->gate);
  herald_http_notify_release(j->notify);
  free(j->body);
  free(j->error_text);
  free(j->rbody);
  free(j->rheaders);
  free(j);
}

static void job_unref(HeraldHttpJob *j) {
  if (atomic_fetch_sub(&j->refs, 1) == 1) job_free(j);
}

static int dup_str(char **dst, const char *s) {
  if (s == NULL) return 0;
  *dst = strdup(s);
  return *dst == NULL ? -1 : 0;
}

/* The room a string or a list of lines takes in a job's allocation (see job_new). */
static size_t str_room(const char *s) { return s != NULL ? strlen(s) + 1 : 0; }

static size_t lines_room(const char *const *lines, size_t n) {
  size_t room = n * sizeof(char *);
  for (size_t i = 0; i < n; i++) room += strlen(lines[i]) + 1;
  return room;
}

/* Copies s to *at, which moves past it; NULL stays NULL. */
static char *put_str(char **at, const char *s) {
  if (s == NULL) return NULL;
  size_t n = strlen(s) + 1;
  char *copy = memcpy(*at, s, n);
  *at += n;
  return copy;
}

/* The lines go first, right after the job: the array of pointers needs their alignment. */
static char *put_lines(HeraldHttpJob *j, const char *const *lines, size_t n) {
  char *at = (char *)(j + 1);
  if (n == 0) return at;
  j->lines = (char **)(void *)at;
  at += n * sizeof(char *);
  for (size_t i = 0; i < n; i++) j->lines[i] = put_str(&at, lines[i]);
  j->nlines = n;
  return at;
}

static int dup_bytes(char **dst, const char *p, size_t n) {
  *dst = malloc(n ? n : 1);
  if (*dst == NULL) return -1;
  if (n) memcpy(*dst, p, n);
  return 0;
}

/* ---- the transport thread ---- */

/* The transport is done with j (its outcome handed back or dropped): whether the caller must be
 * woken now. A quiet job wakes it only when it leaves its notifier's count of jobs in flight
 * at the caller's threshold (the last one at the latest), so the outcomes queued before are
 * delivered with it. */
static int job_settled(HeraldHttpJob *j) {
  HeraldHttpNotify *n = j->notify;
  if (n == NULL) return 1;
  long left = atomic_fetch_sub(&n->pending, 1) - 1;
  return left <= atomic_load(&n->wake_at) || atomic_load(&n->eager);
}

static void post_completion(HeraldHttpThread *t, HeraldHttpJob *j) {
  uv_mutex_lock(&t->lock);
  j->link = NULL;
  if (t->completions_tail) t->completions_tail->link = j; else t->completions = j;
  t->completions_tail = j;
  /* Decided under the lock, after queueing: herald_http_thread_hand_back, which sets a new
   * threshold and then looks at the queue under this lock, either sees this outcome queued or
   * had its threshold in place before this decision. A recalled job wakes it whatever the
   * threshold: the caller may give its message back without waiting for the transfers still
   * on the wire (a campaign paused meanwhile). */
  int wake = job_settled(j) || j->error == kHeraldNetRecalled;
  uv_mutex_unlock(&t->lock);
  if (wake) uv_async_send(&t->back);
}

/* A cancelled job leaves without an outcome; if it was its notifier's last in flight, outcomes
 * queued quietly before it still need their wake-up. */
static void drop_cancelled(HeraldHttpThread *t, HeraldHttpJob *j) {
  if (j->notify != NULL && job_settled(j)) uv_async_send(&t->back);
  job_unref(j);
}

static void start_job(HeraldHttpThread *t, HeraldHttpJob *j);

/* A job waiting for a place in its group is on two lists: its group's, in order, and its
 * gate's, so a closed gate finds its jobs without a look at every group. */
static void group_append(HeraldHttpGroup *g, HeraldHttpJob *j) {
  j->gnext = NULL;
  j->gprev = g->tail;
  if (g->tail) g->tail->gnext = j; else g->head = j;
  g->tail = j;
  HeraldHttpGate *gate = j->gate;
  if (gate != NULL) {
    j->wprev = NULL;
    j->wnext = gate->waiting;
    if (gate->waiting) gate->waiting->wprev = j;
    gate->waiting = j;
  }
}

static void group_unlink(HeraldHttpGroup *g, HeraldHttpJob *j) {
  if (j->gprev) j->gprev->gnext = j->gnext; else g->head = j->gnext;
  if (j->gnext) j->gnext->gprev = j->gprev; else g->tail = j->gprev;
  j->gprev = j->gnext = NULL;
  HeraldHttpGate *gate = j->gate;
  if (gate != NULL) {
    if (j->wprev) j->wprev->wnext = j->wnext; else gate->waiting = j->wnext;
    if (j->wnext) j->wnext->wprev = j->wprev;
    j->wprev = j->wnext = NULL;
  }
}

static int gate_closed(const HeraldHttpJob *j) { return herald_http_gate_closed(j->gate); }

/* j comes back unsent, with class cls (its gate closed, or its group held by a Retry-After
 * with retry_after_ms left) and why as its text. */
static void finish_unsent(HeraldHttpThread *t, HeraldHttpJob *j, HeraldNetClass cls,
                          int64_t retry_after_ms, const char *why) {
  j->state = kJobDone;
  if (atomic_load(&j->cancelled)) {
    drop_cancelled(t, j);
    return;
  }
  j->error = cls;
  j->status = 0;
  j->retry_after_ms = retry_after_ms;
  /* without the text the caller learns only the class; an allocation failure loses no more */
  (void)dup_str(&j->error_text, why);
  post_completion(t, j);
}

static void finish_recalled(HeraldHttpThread *t, HeraldHttpJob *j) {
  finish_unsent(t, j, kHeraldNetRecalled, -1, "not sent: given back before it started");
}

/* A server that answers 429 or 503 with Retry-After asks for no more requests until then: the
 * group's jobs not started yet (the rest of a batch, other batches of the same provider) come
 * back unsent, class kHeraldNetHeld with the time left in retry_after_ms, instead of each
 * going out to be refused again and spending one of its message's attempts. Jobs already on
 * the wire are not recalled. */
static void group_hold(HeraldHttpThread *t, HeraldHttpJob *j, const HeraldHttpResponse *res) {
  HeraldHttpGroup *g = j->group;
  if (g == NULL || j->is_smtp || res->error != kHeraldNetOk || res->retry_after_ms <= 0) return;
  if (res->status != 429 && res->status != 503) return;
  uint64_t until = uv_now(&t->wloop) + (uint64_t)res->retry_after_ms;
  if (until > g->held_until) g->held_until = until;
}

/* How long g is still held (ms), 0 when it is not. */
static int64_t group_held_for(HeraldHttpThread *t, const HeraldHttpGroup *g) {
  uint64_t now = uv_now(&t->wloop);
  return g != NULL && g->held_until > now ? (int64_t)(g->held_until - now) : 0;
}

static void finish_held(HeraldHttpThread *t, HeraldHttpJob *j, int64_t left_ms) {
  finish_unsent(t, j, kHeraldNetHeld, left_ms, "not sent: the server asked to wait (Retry-After)");
}

/* A place in the group came free: start who waits for it (or, while the group is held, give
 * them all back unsent). */
static void group_finished(HeraldHttpThread *t, HeraldHttpGroup *g) {
  if (g == NULL) return;
  g->running--;
  int64_t held = group_held_for(t, g);
  while (held > 0 && g->head != NULL) {
    HeraldHttpJob *next = g->head;
    group_unlink(g, next);
    finish_held(t, next, held);
  }
  while (g->head != NULL && g->running < g->limit) {
    HeraldHttpJob *next = g->head;
    group_unlink(g, next);
    if (atomic_load(&next->cancelled)) {
      /* Cancelled while it waited, the cancellation not yet taken from the queue (that would
       * have unlinked it): it must not reach the server with nobody left to hear the outcome.
       * The cancellation, when wake_cb takes it, finds the job done. */
      next->state = kJobDone;
      drop_cancelled(t, next);
      continue;
    }
    if (gate_closed(next)) {
      /* its gate's sweep has not come yet */
      finish_recalled(t, next);
      continue;
    }
    g->running++;
    start_job(t, next);
  }
}

/* Starts j now, or queues it behind its group's running jobs. */
static void schedule_job(HeraldHttpThread *t, HeraldHttpJob *j) {
  HeraldHttpGroup *g = j->group;
  if (gate_closed(j)) {
    finish_recalled(t, j);
    return;
  }
  int64_t held = group_held_for(t, g);
  if (held > 0) {
    finish_held(t, j, held);
    return;
  }
  if (g != NULL && g->running >= g->limit) {
    group_append(g, j);
    return;
  }
  if (g != NULL) g->running++;
  start_job(t, j);
}

/* The outcome is copied into the job; the transport's reference goes with it to the caller,
 * or is dropped when the caller cancelled meanwhile. */
static void transport_done(const HeraldHttpResponse *res, void *user) {
  HeraldHttpJob *j = user;
  HeraldHttpThread *t = j->owner;
  j->state = kJobDone;
  j->transfer = NULL;
  group_hold(t, j, res);
  group_finished(t, j->group);
  atomic_store(&t->connections, herald_http_connections_opened(t->client));
  if (atomic_load(&j->cancelled)) {
    drop_cancelled(t, j);
    return;
  }
  j->error = res->error;
  j->status = res->status;
  j->truncated = res->truncated;
  j->retry_after_ms = res->retry_after_ms;
  j->http_version = res->http_version;
  j->elapsed_us = res->elapsed_us;
  int bad = 0;
  if (res->error_text && res->error_text[0]) bad |= dup_str(&j->error_text, res->error_text);
  if (res->body_len > 0) {
    bad |= dup_bytes(&j->rbody, res->body, res->body_len);
    j->rbody_len = res->body_len;
  }
  if (res->nheaders > 0 && res->headers != NULL) {
    const char *p = res->headers;
    for (size_t i = 0; i < 2 * res->nheaders; i++) p += strlen(p) + 1;
    bad |= dup_bytes(&j->rheaders, res->headers, (size_t)(p - res->headers));
    j->rnheaders = res->nheaders;
  }
  if (bad) {
    /* the send happened; only its details are lost, and the caller learns it failed to tell */
    j->error = kHeraldNetProtocol;
    j->rbody_len = 0;
    j->rnheaders = 0;
  }
  post_completion(t, j);
}

static void start_job(HeraldHttpThread *t, HeraldHttpJob *j) {
  j->state = kJobRunning;
  if (j->is_smtp) {
    HeraldSmtpRequest r = {0};
    r.url = j->url;
    r.mail_from = j->mail_from;
    r.rcpt = (const char *const *)j->lines;
    r.nrcpt = j->nlines;
    r.message = j->body;
    r.message_len = j->body_len;
    r.timeout_ms = j->timeout_ms;
    r.starttls = j->starttls;
    r.username = j->username;
    r.password = j->password;
    r.ca_file = j->ca_file;
    j->transfer = herald_smtp_submit(t->client, &r, transport_done, j);
  } else {
    HeraldHttpRequest r = {0};
    r.method = j->method;
    r.url = j->url;
    r.headers = (const char *const *)j->lines;
    r.nheaders = j->nlines;
    r.body = j->has_body ? j->body : NULL;
    r.body_len = j->body_len;
    r.timeout_ms = j->timeout_ms;
    r.max_body = j->max_body;
    r.want_headers = j->want_headers;
    r.ca_file = j->ca_file;
    r.http1_only = j->http1_only;
    j->transfer = herald_http_submit(t->client, &r, transport_done, j);
  }
  /* The request body went into libcurl's transfer; the job need not keep it. */
  free(j->body);
  j->body = NULL;
  if (j->transfer == NULL) {
    HeraldHttpResponse res = {0};
    res.error = kHeraldNetProtocol;
    res.error_text = "cannot start the transfer (out of memory)";
    res.retry_after_ms = -1;
    transport_done(&res, j);
  }
}

static void wake_cb(uv_async_t *a) {
  HeraldHttpThread *t = a->data;
  uv_mutex_lock(&t->lock);
  HeraldHttpJob *submits = t->submits, *cancels = t->cancels;
  HeraldHttpGate *sweeps = t->sweeps;
  t->submits = t->submits_tail = NULL;
  t->cancels = NULL;
  t->sweeps = NULL;
  int stopping = t->stopping;
  uv_mutex_unlock(&t->lock);
  while (submits != NULL) {
    HeraldHttpJob *j = submits;
    submits = j->link;
    if (atomic_load(&j->cancelled)) {
      j->state = kJobDone;   /* cancelled before it started: the transport's reference goes */
      drop_cancelled(t, j);
    } else {
      schedule_job(t, j);
    }
  }
  /* After the submits: a job submitted before its gate closed is waiting by now, or started. */
  while (sweeps != NULL) {
    HeraldHttpGate *gate = sweeps;
    sweeps = gate->sweep_link;
    gate->sweep_link = NULL;
    while (gate->waiting != NULL) {
      HeraldHttpJob *j = gate->waiting;
      group_unlink(j->group, j);
      finish_recalled(t, j);
    }
    herald_http_gate_release(gate);  /* the reference that came with the sweep */
  }
  while (cancels != NULL) {
    HeraldHttpJob *j = cancels;
    cancels = j->cancel_link;
    if (j->state == kJobRunning) {
      herald_http_cancel(t->client, j->transfer);
      j->transfer = NULL;
      j->state = kJobDone;
      group_finished(t, j->group);
      drop_cancelled(t, j);  /* the transport's reference */
    } else if (j->state == kJobQueued) {
      group_unlink(j->group, j);  /* it waited for a place in its group */
      j->state = kJobDone;
      drop_cancelled(t, j);
    }
    job_unref(j);            /* the caller's, which came with the cancellation */
  }
  if (stopping) {
    herald_http_client_free(t->client);  /* its handles close as this loop runs on */
    t->client = NULL;
    uv_close((uv_handle_t *)&t->wake, NULL);
  }
}

static void transport_main(void *arg) {
  HeraldHttpThread *t = arg;
  (void)prctl(PR_SET_NAME, "herald-http");  /* tells the thread apart in /proc and top */
  uv_run(&t->wloop, UV_RUN_DEFAULT);
}

/* ---- the caller's side ---- */

static void back_closed(uv_handle_t *h) {
  HeraldHttpThread *t = h->data;
  if (--t->open_handles > 0) return;
  uv_mutex_destroy(&t->lock);
  free(t);
}

static void flush_cb(uv_prepare_t *p) {
  HeraldHttpThread *t = p->data;
  if (!t->wake_due) return;
  t->wake_due = 0;
  uv_async_send(&t->wake);
}

static void outstanding_remove(HeraldHttpThread *t, HeraldHttpJob *j) {
  if (j->prev) j->prev->next = j->next; else t->outstanding = j->next;
  if (j->next) j->next->prev = j->prev;
  j->prev = j->next = NULL;
  if (--t->in_flight == 0) uv_unref((uv_handle_t *)&t->back);
}

static void really_free(HeraldHttpThread *t);

static void back_cb(uv_async_t *a) {
  HeraldHttpThread *t = a->data;
  uv_mutex_lock(&t->lock);
  HeraldHttpJob *list = t->completions;
  t->completions = t->completions_tail = NULL;
  uv_mutex_unlock(&t->lock);
  t->dispatching = 1;
  while (list != NULL) {
    HeraldHttpJob *j = list;
    list = j->link;
    if (!atomic_load(&j->cancelled)) {
      outstanding_remove(t, j);
      HeraldHttpResponse res = {0};
      res.error = j->error;
      res.error_text = j->error_text ? j->error_text : "";
      res.status = j->status;
      res.body = j->rbody;
      res.body_len = j->rbody_len;
      res.truncated = j->truncated;
      res.headers = j->rheaders;
      res.nheaders = j->rnheaders;
      res.retry_after_ms = j->retry_after_ms;
      res.http_version = j->http_version;
      res.elapsed_us = j->elapsed_us;
      j->done(&res, j->user);
      job_unref(j);          /* the caller's */
    }
    job_unref(j);            /* the transport's, which came with the outcome */
  }
  t->dispatching = 0;
  if (t->free_pending) really_free(t);
}

void herald_http_thread_hand_back(HeraldHttpThread *t) {
  if (t == NULL) return;
  uv_mutex_lock(&t->lock);
  int queued = t->completions != NULL;
  uv_mutex_unlock(&t->lock);
  if (queued) uv_async_send(&t->back);
}

HeraldHttpThread *herald_http_thread_new(uv_loop_t *loop, const HeraldHttpClientOptions *opt) {
  HeraldHttpThread *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  t->loop = loop;
  if (uv_mutex_init(&t->lock) != 0) {
    free(t);
    return NULL;
  }
  if (uv_loop_init(&t->wloop) != 0) {
    uv_mutex_destroy(&t->lock);
    free(t);
    return NULL;
  }
  /* created here, before the thread runs its loop: libcurl's global setup is not thread-safe */
  t->client = herald_http_client_new(&t->wloop, opt);
  int wake_ok = t->client != NULL && uv_async_init(&t->wloop, &t->wake, wake_cb) == 0;
  if (wake_ok) t->wake.data = t;
  int back_ok = wake_ok && uv_async_init(loop, &t->back, back_cb) == 0;
  if (back_ok) {
    t->back.data = t;
    t->open_handles = 1;
    uv_unref((uv_handle_t *)&t->back);
  }
  int flush_ok = back_ok && uv_prepare_init(loop, &t->flush) == 0;
  if (flush_ok) {
    t->flush.data = t;
    t->open_handles = 2;
    uv_prepare_start(&t->flush, flush_cb);
    uv_unref((uv_handle_t *)&t->flush);
    if (uv_thread_create(&t->thread, transport_main, t) == 0) return t;
  }
  /* undo on this thread: the transport loop runs here once to close what it has */
  if (wake_ok) uv_close((uv_handle_t *)&t->wake, NULL);
  if (t->client != NULL) herald_http_client_free(t->client);
  uv_run(&t->wloop, UV_RUN_DEFAULT);
  uv_loop_close(&t->wloop);
  if (back_ok) {
    /* frees t once the last of them has closed */
    if (flush_ok) uv_close((uv_handle_t *)&t->flush, back_closed);
    uv_close((uv_handle_t *)&t->back, back_closed);
  } else {
    uv_mutex_destroy(&t->lock);
    free(t);
  }
  return NULL;
}

/* A job with room bytes after it for its request's strings (put_lines, then put_str). */
static HeraldHttpJob *job_new(HeraldHttpThread *t, HeraldHttpGroup *g, HeraldHttpGate *gate,
                             HeraldHttpDone done, void *user, size_t room) {
  HeraldHttpJob *j = malloc(sizeof *j + room);
  if (j == NULL) return NULL;
  memset(j, 0, sizeof *j);
  j->owner = t;
  if (g != NULL) {
    atomic_fetch_add(&g->refs, 1);
    j->group = g;
  }
  if (gate != NULL) {
    atomic_fetch_add(&gate->refs, 1);
    j->gate = gate;
  }
  atomic_init(&j->refs, 2);
  atomic_init(&j->cancelled, 0);
  j->done = done;
  j->user = user;
  j->retry_after_ms = -1;
  return j;
}

static HeraldHttpJob *enqueue(HeraldHttpThread *t, HeraldHttpJob *j) {
  j->next = t->outstanding;
  if (t->outstanding) t->outstanding->prev = j;
  t->outstanding = j;
  if (t->in_flight++ == 0) uv_ref((uv_handle_t *)&t->back);
  uv_mutex_lock(&t->lock);
  j->link = NULL;
  if (t->submits_tail) t->submits_tail->link = j; else t->submits = j;
  t->submits_tail = j;
  uv_mutex_unlock(&t->lock);
  t->wake_due = 1;   /* flush_cb wakes the transport once for all of this turn's submits */
  return j;
}

HeraldHttpJob *herald_http_thread_submit(HeraldHttpThread *t, HeraldHttpGroup *g,
                                         const HeraldHttpRequest *req, HeraldHttpDone done,
                                         void *user) {
  return herald_http_thread_submit_quiet(t, g, NULL, NULL, req, done, user);
}

HeraldHttpJob *herald_http_thread_submit_quiet(HeraldHttpThread *t, HeraldHttpGroup *g,
                                               HeraldHttpNotify *n, HeraldHttpGate *gate,
                                               const HeraldHttpRequest *req, HeraldHttpDone done,
                                               void *user) {
  if (t == NULL || t->free_pending) return NULL;
  size_t room = lines_room(req->headers, req->nheaders) + str_room(req->url) +
                str_room(req->method) + str_room(req->ca_file);
  HeraldHttpJob *j = job_new(t, g, gate, done, user, room);
  if (j == NULL) return NULL;
  char *at = put_lines(j, req->headers, req->nheaders);
  j->url = put_str(&at, req->url);
  j->method = put_str(&at, req->method);
  j->ca_file = put_str(&at, req->ca_file);
  j->timeout_ms = req->timeout_ms;
  j->max_body = req->max_body;
  j->want_headers = req->want_headers;
  j->http1_only = req->http1_only;
  j->has_body = req->body != NULL;
  j->body_len = req->body ? req->body_len : 0;
  if (j->has_body && dup_bytes(&j->body, req->body, j->body_len)) {
    job_free(j);
    return NULL;
  }
  if (n != NULL) {
    /* counted before the transport can see the job, so its finish never finds the count short */
    atomic_fetch_add(&n->refs, 1);
    atomic_fetch_add(&n->pending, 1);
    j->notify = n;
  }
  return enqueue(t, j);
}

HeraldHttpJob *herald_http_thread_smtp(HeraldHttpThread *t, HeraldHttpGroup *g,
                                       HeraldHttpGate *gate, const HeraldSmtpRequest *req,
                                       HeraldHttpDone done, void *user) {
  if (t == NULL || t->free_pending) return NULL;
  size_t room = lines_room(req->rcpt, req->nrcpt) + str_room(req->url) +
                str_room(req->mail_from) + str_room(req->username) + str_room(req->password) +
                str_room(req->ca_file);
  HeraldHttpJob *j = job_new(t, g, gate, done, user, room);
  if (j == NULL) return NULL;
  char *at = put_lines(j, req->rcpt, req->nrcpt);
  j->url = put_str(&at, req->url);
  j->mail_from = put_str(&at, req->mail_from);
  j->username = put_str(&at, req->username);
  j->password = put_str(&at, req->password);
  j->ca_file = put_str(&at, req->ca_file);
  j->is_smtp = 1;
  j->timeout_ms = req->timeout_ms;
  j->starttls = req->starttls;
  j->body_len = req->message_len;
  if (dup_bytes(&j->body, req->message, req->message_len)) {
    job_free(j);
    return NULL;
  }
  return enqueue(t, j);
}

void herald_http_thread_cancel(HeraldHttpThread *t, HeraldHttpJob *j) {
  if (t == NULL || j == NULL || atomic_load(&j->cancelled)) return;
  atomic_store(&j->cancelled, 1);
  outstanding_remove(t, j);
  uv_mutex_lock(&t->lock);
  j->cancel_link = t->cancels;   /* the caller's reference travels with it */
  t->cancels = j;
  uv_mutex_unlock(&t->lock);
  uv_async_send(&t->wake);
}

void herald_http_thread_close_gate(HeraldHttpThread *t, HeraldHttpGate *gate) {
  if (gate == NULL || atomic_exchange(&gate->closed, 1)) return;
  if (t == NULL) return;
  atomic_fetch_add(&gate->refs, 1);   /* the sweep's, until the transport has made it */
  uv_mutex_lock(&t->lock);
  gate->sweep_link = t->sweeps;
  t->sweeps = gate;
  uv_mutex_unlock(&t->lock);
  uv_async_send(&t->wake);
}

size_t herald_http_thread_in_flight(const HeraldHttpThread *t) { return t ? t->in_flight : 0; }

uint64_t herald_http_thread_connections(const HeraldHttpThread *t) {
  return t ? atomic_load(&((HeraldHttpThread *)t)->connections) : 0;
}

static void really_free(HeraldHttpThread *t) {
  t->free_pending = 0;
  while (t->outstanding != NULL) herald_http_thread_cancel(t, t->outstanding);
  uv_mutex_lock(&t->lock);
  t->stopping = 1;
  uv_mutex_unlock(&t->lock);
  uv_async_send(&t->wake);
  uv_thread_join(&t->thread);
  uv_loop_close(&t->wloop);
  /* outcomes handed back before the cancellations: every job is cancelled, drop them */
  HeraldHttpJob *list = t->completions;
  t->completions = t->completions_tail = NULL;
  while (list != NULL) {
    HeraldHttpJob *j = list;
    list = j->link;
    job_unref(j);
  }
  /* gates closed after the transport's last turn: nothing waits behind them any more */
  while (t->sweeps != NULL) {
    HeraldHttpGate *gate = t->sweeps;
    t->sweeps = gate->sweep_link;
    herald_http_gate_release(gate);
  }
  uv_close((uv_handle_t *)&t->flush, back_closed);
  uv_close((uv_handle_t *)&t->back, back_closed);
}

void herald_http_thread_free(HeraldHttpThread *t) {
  if (t == NULL) return;
  if (t->dispatching) {
    t->free_pending = 1;  /* a callback freed us: finish once back_cb has returned */
    return;
  }
  really_free(t);
}
