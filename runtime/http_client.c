/* The transport engine: libcurl's multi-socket interface on a libuv loop.
 *
 * One multi handle owns the connection pool, so keep-alive HTTP/1.1 connections, HTTP/2
 * connections (multiplexed over TLS) and SMTP sessions are reused across transfers. libcurl
 * tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION -> one uv_poll per socket) and when
 * it next needs a call (CURLMOPT_TIMERFUNCTION -> one uv_timer); on either event we call
 * curl_multi_socket_action and then drain finished transfers with curl_multi_info_read. We
 * never call back into libcurl from inside its callbacks.
 *
 * A transfer owns an easy handle and its buffers; finished transfers go to a free list and
 * are reused, so a steady stream of requests allocates almost nothing. A reused handle keeps
 * its options when the next request is alike (same method, TLS options, HTTP version), and
 * only what changes per request (URL, body, headers, timeout) is set: curl_easy_reset and the
 * options set after it cost about as much as writing the request. libcurl carries nothing else
 * from one transfer to the next but its count of retries on dead connections, which only
 * curl_easy_reset clears: a handle is kept as it is only after a transfer that succeeded with
 * a single request (CURLOPT_PREREQFUNCTION counts them), any other is reset.
 *
 * Handles are closed asynchronously: herald_http_client_free starts the closes and the last
 * close callback frees the client.
 *
 * Transfers to one host wait here for a place under the host cap, not in libcurl. libcurl
 * queues a transfer that finds the host at CURLMOPT_MAX_HOST_CONNECTIONS, but its timeout
 * (CURLOPT_TIMEOUT_MS) runs from the moment it was added: a profile of 130 connections to a
 * host capped at 64 had its third wave time out without being sent. Raising the cap to whatever
 * profiles ask for would leave it meaning nothing, so the cap stays and is kept here: a host
 * gets the cap's number of transfers handed to libcurl at once (and as many times more as
 * CURLMOPT_MAX_CONCURRENT_STREAMS allows once it has answered over HTTP/2, where transfers
 * share connections), the rest wait in order, and a transfer's clock starts when it is handed
 * over. Hosts are keyed as libcurl counts them, by name and port. A total cap
 * (max_total_connections) is still libcurl's to keep. */
#include "runtime/http_client.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "runtime/buffer.h"

#define FREE_LIST_MAX 1024
#define DEFAULT_TIMEOUT_MS 30000L
#define MAX_HEADER_BYTES (64 * 1024)
#define SMTP_REPLY_MAX 400
#define POOL_HOSTS 16      /* hosts whose capped connections the pool keeps without a total cap */
#define HOST_KEY_MAX 300
#define HOSTS_IDLE_MAX 256 /* hosts with nothing in flight remembered (whether they multiplex) */
#define DEFAULT_STREAMS 100 /* libcurl's CURLMOPT_MAX_CONCURRENT_STREAMS */
#define EXPECT_THRESHOLD (1024 * 1024) /* libcurl 7.88 asks for 100-continue above this body size */

/* A socket libcurl opened. It keeps its uv_poll from the first time libcurl asks us to watch
 * it until libcurl closes it (CURLOPT_CLOSESOCKETFUNCTION), so a pooled keep-alive connection
 * does not pay for a handle init (ioctl), an epoll DEL and an ADD on every request. */
typedef struct Socket {
  uv_poll_t poll;
  curl_socket_t fd;
  HeraldHttpClient *c;
  int events;      /* what the poll watches now; 0 = stopped */
  int wanted;      /* libcurl watches it (not CURL_POLL_REMOVE'd since) */
  int quiet;       /* idle in the pool, its server speaks only when spoken to (SMTP, HTTP/1) */
  /* SMTP over TLS: the CA file the server's certificate was verified against when the session
   * was opened (NULL: the system's trust store), once ca_known says it was recorded */
  int ca_known;
  char *ca_file;
  /* the connection's addresses, read once when a mail first asks which socket it is on */
  int named;
  char local_ip[INET6_ADDRSTRLEN], remote_ip[INET6_ADDRSTRLEN];
  int local_port, remote_port;
  struct Socket *prev, *next;
} Socket;

typedef struct Host Host;

/* Why prereq_cb stopped an SMTP mail on the session libcurl picked for it. */
typedef enum { kRefusedNone = 0, kRefusedPlain, kRefusedOtherCa } Refusal;

struct HeraldHttpTransfer {
  HeraldHttpClient *c;
  CURL *easy;
  Host *host;                /* the host it counts against; NULL: no host cap */
  int may_multiplex;         /* HTTP/2 possible (https, not http1 only) */
  int queued;                /* waiting in host's queue, not handed to libcurl yet */
  HeraldHttpTransfer *qprev, *qnext;
  struct curl_slist *list;   /* request headers, or SMTP recipients (the handle points to it) */
  int tls_required;          /* an SMTP mail that may go only over TLS (starttls required) */
  int tls_wanted;            /* an SMTP mail that goes over TLS where the server offers it */
  char *smtp_ca_file;        /* that mail's CA file (NULL: the system's trust store) */
  Refusal refused;           /* prereq_cb stopped it on a pooled session it may not use */
  int fresh_tried;           /* sent once more on a new connection after that */
  char *send;                /* request body / SMTP message */
  size_t send_len, send_cap, send_pos;
  char *recv;
  size_t recv_len, recv_cap, max_body;
  int truncated;
  char *hdrs;                /* "name\0value\0" pairs */
  size_t hdrs_len, hdrs_cap, nheaders;
  int want_headers;
  int64_t retry_after_ms;
  int is_smtp;
  char reply[SMTP_REPLY_MAX];  /* SMTP: the reply being read, its lines joined */
  size_t reply_len;
  int reply_open;              /* that reply goes on ("250-" lines) */
  char refusal[SMTP_REPLY_MAX]; /* the last whole reply with a 4xx or 5xx code ("" if none) */
  HeraldHttpDone done;
  void *user;
  char errbuf[CURL_ERROR_SIZE];
  char errtext[CURL_ERROR_SIZE + SMTP_REPLY_MAX + 16];
  /* The HTTP options the easy handle has (see the top of the file); 0: reset it first. */
  int configured;
  int cfg_body, cfg_http1, cfg_pipewait;
  char *cfg_method, *cfg_ca_file;
  CURLU *url;                /* the URL of the handle's last HTTP request, parsed (see http_set_url) */
  char *url_text;
  int requests;              /* requests libcurl made for the transfer (retries count again) */
  HeraldHttpTransfer *prev, *next;
};

/* A host under the host cap (see the top of the file). */
struct Host {
  Host *next;                /* in its hash bucket */
  Host *idle_prev, *idle_next; /* in the idle list, while nothing runs or waits */
  int listed;                /* in the idle list */
  size_t running;            /* transfers handed to libcurl */
  int multiplex;             /* its latest transfer that could use HTTP/2 did */
  HeraldHttpTransfer *head, *tail; /* waiting for a place, in order */
  char key[];                /* "name:port", the name in lower case */
};

struct HeraldHttpClient {
  uv_loop_t *loop;
  CURLM *multi;
  size_t host_cap;           /* transfers per host handed to libcurl at once (0: no cap) */
  size_t streams;            /* HTTP/2 streams per connection */
  Host **hosts;              /* hash table */
  size_t nbuckets, nhosts;
  Host *idle_head, *idle_tail;
  size_t nidle;
  uv_timer_t timer;
  Socket *sockets;
  Socket **by_fd;            /* open sockets by descriptor */
  size_t nby_fd;
  HeraldHttpTransfer *active;
  HeraldHttpTransfer *free_list;
  size_t nfree;
  size_t in_flight;
  uint64_t connections;
  int direct;                /* no proxy variable in the environment (see proxy_in_environment) */
  int closing;
  int open_handles;          /* the timer and every poll whose close callback has not run */
};

const char *herald_net_class_name(HeraldNetClass c) {
  switch (c) {
    case kHeraldNetOk: return "ok";
    case kHeraldNetTimeout: return "timeout";
    case kHeraldNetConnect: return "connect";
    case kHeraldNetReset: return "reset";
    case kHeraldNetTls: return "tls";
    case kHeraldNetStatus: return "status";
    case kHeraldNetAuth: return "auth";
    case kHeraldNetInvalid: return "invalid";
    case kHeraldNetProtocol: return "protocol";
    case kHeraldNetCancelled: return "cancelled";
    case kHeraldNetHeld: return "held";
    case kHeraldNetRecalled: return "recalled";
  }
  return "protocol";
}

static int grow(char **buf, size_t *cap, size_t need) {
  if (need <= *cap) return 0;
  size_t n = *cap ? *cap : 512;
  while (n < need) n *= 2;
  char *p = realloc(*buf, n);
  if (p == NULL) return -1;
  *buf = p;
  *cap = n;
  return 0;
}

static void client_maybe_release(HeraldHttpClient *c) {
  if (c->closing && c->open_handles == 0) free(c);
}

static void socket_closed_cb(uv_handle_t *h) {
  Socket *s = h->data;
  HeraldHttpClient *c = s->c;
  free(s->ca_file);
  free(s);
  c->open_handles--;
  client_maybe_release(c);
}

static void socket_close(HeraldHttpClient *c, Socket *s) {
  if (s->prev) s->prev->next = s->next; else c->sockets = s->next;
  if (s->next) s->next->prev = s->prev;
  if ((size_t)s->fd < c->nby_fd && c->by_fd[s->fd] == s) c->by_fd[s->fd] = NULL;
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, socket_closed_cb);
}

static Socket *socket_find(HeraldHttpClient *c, curl_socket_t fd) {
  return fd >= 0 && (size_t)fd < c->nby_fd ? c->by_fd[fd] : NULL;
}

static int socket_remember(HeraldHttpClient *c, Socket *s) {
  if ((size_t)s->fd >= c->nby_fd) {
    size_t n = c->nby_fd ? c->nby_fd : 64;
    while (n <= (size_t)s->fd) n *= 2;
    Socket **p = realloc(c->by_fd, n * sizeof *p);
    if (p == NULL) return -1;
    memset(p + c->nby_fd, 0, (n - c->nby_fd) * sizeof *p);
    c->by_fd = p;
    c->nby_fd = n;
  }
  c->by_fd[s->fd] = s;
  return 0;
}

/* libcurl closes its sockets through us: the poll must leave the loop before the descriptor
 * is closed, or a new socket that reuses the number would be reported to a stale handle. */
static int curl_close_cb(void *clientp, curl_socket_t fd) {
  HeraldHttpClient *c = clientp;
  Socket *s = socket_find(c, fd);
  if (s != NULL) socket_close(c, s);
  return close(fd);
}

/* reached: a server was connected to (or a pooled connection reused) for the transfer. */
static HeraldNetClass classify_curl(CURLcode rc, int is_smtp, long status, int reached) {
  switch (rc) {
    case CURLE_OK: return kHeraldNetOk;
    case CURLE_OPERATION_TIMEDOUT: return kHeraldNetTimeout;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return kHeraldNetConnect;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_USE_SSL_FAILED: return kHeraldNetTls;
    case CURLE_LOGIN_DENIED: return kHeraldNetAuth;
    /* A scheme we do not speak is a bad URL; from a server, the same code means its reply was
     * not the protocol (HTTP/0.9, garbage from a broken proxy): the server's fault, which may
     * pass. */
    case CURLE_UNSUPPORTED_PROTOCOL: return reached ? kHeraldNetProtocol : kHeraldNetInvalid;
    case CURLE_URL_MALFORMAT:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_NOT_BUILT_IN: return kHeraldNetInvalid;
    case CURLE_ABORTED_BY_CALLBACK: return kHeraldNetCancelled;
    default: break;
  }
  /* An SMTP server that refused a command left its reply code; that decides the retry. */
  if (is_smtp && status >= 400) return kHeraldNetStatus;
  switch (rc) {
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM: return kHeraldNetReset;
    default: return kHeraldNetProtocol;
  }
}

/* ---- hosts under the cap ---- */

/* The key libcurl counts a URL's connections under: its host name (lower case) and port, the
 * scheme's default when the URL gives none. -1 for what cannot be placed (libcurl will refuse
 * a malformed URL itself). */
static int host_key(const char *url, char *key, size_t cap) {
  const char *sep = strstr(url, "://");
  if (sep == NULL) return -1;
  size_t slen = (size_t)(sep - url);
  const char *auth = sep + 3;
  size_t alen = strcspn(auth, "/?#");
  const char *at = NULL;
  for (size_t i = 0; i < alen; i++)
    if (auth[i] == '@') at = auth + i;
  if (at != NULL) {
    alen -= (size_t)(at + 1 - auth);
    auth = at + 1;
  }
  size_t hlen = alen;
  if (alen > 0 && auth[0] == '[') {
    const char *close = memchr(auth, ']', alen);
    if (close == NULL) return -1;
    hlen = (size_t)(close - auth) + 1;
  } else {
    const char *colon = memchr(auth, ':', alen);
    if (colon != NULL) hlen = (size_t)(colon - auth);
  }
  long port = 0;
  if (hlen < alen && auth[hlen] == ':' && hlen + 1 < alen) {
    char *end;
    port = strtol(auth + hlen + 1, &end, 10);
    if (end != auth + alen) return -1;
  } else if (slen == 4 && strncasecmp(url, "http", 4) == 0) {
    port = 80;
  } else if (slen == 5 && strncasecmp(url, "https", 5) == 0) {
    port = 443;
  } else if (slen == 4 && strncasecmp(url, "smtp", 4) == 0) {
    port = 25;
  } else if (slen == 5 && strncasecmp(url, "smtps", 5) == 0) {
    port = 465;
  }
  if (hlen == 0 || hlen + 24 > cap) return -1;
  for (size_t i = 0; i < hlen; i++) {
    char ch = auth[i];
    key[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
  }
  /* ":port" without snprintf: this runs for every request, and snprintf costs more than the
   * rest of the key */
  char *p = key + hlen;
  *p++ = ':';
  p += herald_decimal(p, port);
  *p = '\0';
  return 0;
}

static size_t key_hash(const char *key) {
  size_t h = 2166136261u;
  for (; *key; key++) h = (h ^ (unsigned char)*key) * 16777619u;
  return h;
}

static void idle_unlink(HeraldHttpClient *c, Host *h) {
  if (h->idle_prev) h->idle_prev->idle_next = h->idle_next; else c->idle_head = h->idle_next;
  if (h->idle_next) h->idle_next->idle_prev = h->idle_prev; else c->idle_tail = h->idle_prev;
  h->idle_prev = h->idle_next = NULL;
  h->listed = 0;
  c->nidle--;
}

static int host_is_idle(const Host *h) { return h->running == 0 && h->head == NULL; }

static void host_remove(HeraldHttpClient *c, Host *h) {
  Host **p = &c->hosts[key_hash(h->key) & (c->nbuckets - 1)];
  while (*p != h) p = &(*p)->next;
  *p = h->next;
  c->nhosts--;
  free(h);
}

/* A host with nothing running or waiting joins the idle list; the longest idle ones are
 * forgotten past HOSTS_IDLE_MAX (webhooks may each have a host of their own). */
static void host_settle(HeraldHttpClient *c, Host *h) {
  if (!host_is_idle(h) || h->listed) return;
  h->listed = 1;
  h->idle_prev = NULL;
  h->idle_next = c->idle_head;
  if (c->idle_head) c->idle_head->idle_prev = h; else c->idle_tail = h;
  c->idle_head = h;
  c->nidle++;
  while (c->nidle > HOSTS_IDLE_MAX) {
    Host *old = c->idle_tail;
    idle_unlink(c, old);
    host_remove(c, old);
  }
}

static int hosts_grow(HeraldHttpClient *c) {
  size_t n = c->nbuckets ? c->nbuckets * 2 : 64;
  Host **b = calloc(n, sizeof *b);
  if (b == NULL) return c->nbuckets > 0 ? 0 : -1;  /* a full table only gets slower */
  for (size_t i = 0; i < c->nbuckets; i++) {
    for (Host *h = c->hosts[i], *next; h != NULL; h = next) {
      next = h->next;
      size_t k = key_hash(h->key) & (n - 1);
      h->next = b[k];
      b[k] = h;
    }
  }
  free(c->hosts);
  c->hosts = b;
  c->nbuckets = n;
  return 0;
}

/* The host a transfer to url counts against, taken off the idle list; NULL when there is no
 * cap, the URL cannot be placed or memory is out (the transfer then goes to libcurl as is). */
static Host *host_get(HeraldHttpClient *c, const char *url) {
  char key[HOST_KEY_MAX];
  if (c->host_cap == 0 || host_key(url, key, sizeof key) != 0) return NULL;
  if (c->nhosts >= 2 * c->nbuckets && hosts_grow(c) != 0) return NULL;
  size_t k = key_hash(key) & (c->nbuckets - 1);
  Host *h = c->hosts[k];
  while (h != NULL && strcmp(h->key, key) != 0) h = h->next;
  if (h != NULL) {
    if (h->listed) idle_unlink(c, h);
    return h;
  }
  size_t len = strlen(key) + 1;
  h = calloc(1, sizeof *h + len);
  if (h == NULL) return NULL;
  memcpy(h->key, key, len);
  h->next = c->hosts[k];
  c->hosts[k] = h;
  c->nhosts++;
  return h;
}

static int host_admits(const HeraldHttpClient *c, const Host *h, const HeraldHttpTransfer *t) {
  size_t limit = c->host_cap;
  if (t->may_multiplex && h->multiplex) limit *= c->streams;
  return h->running < limit;
}

static void queue_unlink(Host *h, HeraldHttpTransfer *t) {
  if (t->qprev) t->qprev->qnext = t->qnext; else h->head = t->qnext;
  if (t->qnext) t->qnext->qprev = t->qprev; else h->tail = t->qprev;
  t->qprev = t->qnext = NULL;
  t->queued = 0;
}

static void transfer_fail_to_start(HeraldHttpClient *c, HeraldHttpTransfer *t);

/* Hands waiting transfers to libcurl while the host has places. */
static void host_admit(HeraldHttpClient *c, Host *h) {
  while (!c->closing && h->head != NULL && host_admits(c, h, h->head)) {
    HeraldHttpTransfer *t = h->head;
    queue_unlink(h, t);
    if (curl_multi_add_handle(c->multi, t->easy) != CURLM_OK) {
      transfer_fail_to_start(c, t);
      continue;
    }
    h->running++;
  }
}

/* A transfer of h left libcurl (finished or cancelled): its place goes to the next. */
static void host_finished(HeraldHttpClient *c, Host *h) {
  h->running--;
  host_admit(c, h);
  host_settle(c, h);
}

static void hosts_free(HeraldHttpClient *c) {
  for (size_t i = 0; i < c->nbuckets; i++) {
    for (Host *h = c->hosts[i], *next; h != NULL; h = next) {
      next = h->next;
      free(h);
    }
  }
  free(c->hosts);
  c->hosts = NULL;
  c->nbuckets = c->nhosts = c->nidle = 0;
  c->idle_head = c->idle_tail = NULL;
}

static void transfer_forget_config(HeraldHttpTransfer *t) {
  t->configured = 0;
  free(t->cfg_method);
  free(t->cfg_ca_file);
  t->cfg_method = t->cfg_ca_file = NULL;
}

static void transfer_destroy(HeraldHttpTransfer *t) {
  curl_easy_cleanup(t->easy);
  curl_url_cleanup(t->url);
  free(t->url_text);
  curl_slist_free_all(t->list);
  transfer_forget_config(t);
  free(t->send);
  free(t->recv);
  free(t->hdrs);
  free(t->smtp_ca_file);
  free(t);
}

/* To the free list; its handle keeps its options and its header list (see transfer_get). */
static void transfer_release(HeraldHttpClient *c, HeraldHttpTransfer *t) {
  t->host = NULL;
  if (c->closing || c->nfree >= FREE_LIST_MAX) {
    transfer_destroy(t);
    return;
  }
  t->next = c->free_list;
  t->prev = NULL;
  c->free_list = t;
  c->nfree++;
}

static void transfer_unlink(HeraldHttpClient *c, HeraldHttpTransfer *t) {
  if (t->prev) t->prev->next = t->next; else c->active = t->next;
  if (t->next) t->next->prev = t->prev;
  t->prev = t->next = NULL;
  c->in_flight--;
}

/* A waiting transfer libcurl would not take when its turn came: its outcome says so. */
static void transfer_fail_to_start(HeraldHttpClient *c, HeraldHttpTransfer *t) {
  HeraldHttpResponse res;
  memset(&res, 0, sizeof res);
  res.error = kHeraldNetProtocol;
  res.error_text = "cannot start the transfer";
  res.retry_after_ms = -1;
  res.http_version = 1;
  transfer_unlink(c, t);
  t->configured = 0;
  t->done(&res, t->user);
  transfer_release(c, t);
}

static void check_completions(HeraldHttpClient *c) {
  CURLMsg *msg;
  int pending;
  while ((msg = curl_multi_info_read(c->multi, &pending)) != NULL) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL *easy = msg->easy_handle;
    CURLcode rc = msg->data.result;
    HeraldHttpTransfer *t = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t);
    HeraldHttpResponse res;
    memset(&res, 0, sizeof res);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &res.status);
    long version = 0, connects = 0;
    curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version);
    curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &connects);
    char *ip = NULL;
    int reached = curl_easy_getinfo(easy, CURLINFO_PRIMARY_IP, &ip) == CURLE_OK && ip != NULL &&
                  ip[0] != '\0';
    curl_off_t total_us = 0;
    curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME_T, &total_us);
    c->connections += (uint64_t)connects;
    curl_multi_remove_handle(c->multi, easy);
    if (t->refused != kRefusedNone && !t->fresh_tried) {
      /* stopped before it sent anything (see prereq_cb): once more, on a connection of its own,
       * still counted as running against its host */
      Refusal why = t->refused;
      t->refused = kRefusedNone;
      t->fresh_tried = 1;
      curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
      if (curl_multi_add_handle(c->multi, easy) == CURLM_OK) continue;
      t->refused = why;
    }
    if (rc != CURLE_OK || t->requests != 1) t->configured = 0;
    if (t->host != NULL) {
      if (t->may_multiplex && version != 0) t->host->multiplex = version >= CURL_HTTP_VERSION_2_0;
      host_finished(c, t->host);
    }
    transfer_unlink(c, t);
    res.error = classify_curl(rc, t->is_smtp, res.status, reached);
    res.error_text = rc == CURLE_OK ? "" : (t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc));
    if (t->refused == kRefusedPlain) {
      res.error = kHeraldNetTls;
      res.error_text = "STARTTLS is required, and the connection to the server is not encrypted";
    } else if (t->refused == kRefusedOtherCa) {
      res.error = kHeraldNetTls;
      res.error_text = "the server's certificate was verified against another CA file than this mail's";
    }
    /* libcurl says which command an SMTP server refused ("RCPT failed: 550"), the server says
     * why ("5.1.1 no such user", "5.7.1 content rejected"): a failure reason needs both. Only
     * the reply that carries the refusal's code, not an earlier one of the session. */
    if (rc != CURLE_OK && t->is_smtp && res.status >= 400 &&
        strtol(t->refusal, NULL, 10) == res.status) {
      snprintf(t->errtext, sizeof t->errtext, "%s (server: %s)", res.error_text, t->refusal);
      res.error_text = t->errtext;
    }
    res.body = t->recv;
    res.body_len = t->recv_len;
    res.truncated = t->truncated;
    res.headers = t->hdrs;
    res.nheaders = t->nheaders;
    res.retry_after_ms = t->retry_after_ms;
    res.http_version = version == CURL_HTTP_VERSION_2_0 ? 2 : 1;
    res.elapsed_us = (int64_t)total_us;
    t->done(&res, t->user);
    transfer_release(c, t);
  }
}

/* Makes libcurl drop a pooled connection rather than reuse it. libcurl 7.88 checks an idle
 * connection before reusing it, but counts one with input waiting as alive: an SMTP server that
 * wrote "421 4.4.2 timeout" and closed the session had the next mail's MAIL FROM answered with
 * that 421, failing it as a refusal. So the descriptor is pointed at a socket whose peer is gone
 * (reading it gives end of file at once, whatever was pending): libcurl's check finds the
 * connection closed, closes it and opens a new one. The old socket closes with it. Without a
 * descriptor to spare, the connection is shut down and its input read off instead, which libcurl
 * reads as closed as well. */
static void socket_retire(Socket *s) {
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0) {
    close(pair[1]);
    int moved = dup2(pair[0], s->fd) == s->fd;
    close(pair[0]);
    if (moved) return;
  }
  if (shutdown(s->fd, SHUT_RDWR) == 0) {
    char buf[4096];
    while (recv(s->fd, buf, sizeof buf, MSG_DONTWAIT) > 0) continue;
  }
}

static void poll_cb(uv_poll_t *p, int status, int events) {
  Socket *s = p->data;
  HeraldHttpClient *c = s->c;
  if (!s->wanted) {
    /* A pooled connection became readable or failed while idle. When its protocol has the
     * server speak only when spoken to, that is the server closing the session (a 421 or a
     * 408 before it hangs up, a TLS close_notify, an end of file): never to be reused. An
     * HTTP/2 server may send frames at any time (PING, SETTINGS); libcurl reads them, and a
     * GOAWAY, when it next uses the connection. */
    uv_poll_stop(&s->poll);
    s->events = 0;
    if (s->quiet) socket_retire(s);
    return;
  }
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  int running = 0;
  curl_multi_socket_action(c->multi, s->fd, flags, &running);
  check_completions(c);
}

static void timer_cb(uv_timer_t *h) {
  HeraldHttpClient *c = h->data;
  int running = 0;
  curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_completions(c);
}

static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *clientp, void *socketp) {
  (void)socketp;
  HeraldHttpClient *c = clientp;
  /* Our registry, not libcurl's socketp: libcurl can close a socket without a REMOVE first
   * (a pooled connection closed by the pool), and the number may come back as a new socket. */
  Socket *s = socket_find(c, fd);
  if (what == CURL_POLL_REMOVE) {
    /* Back in the pool: watch for the server's input until it comes (see poll_cb) or libcurl
     * wants the socket again, unreferenced, so an idle pool does not keep the loop (and the
     * process) alive. The poll usually watches reading already (the transfer's last wait). */
    if (s != NULL) {
      long version = 0;
      s->wanted = 0;
      s->quiet = easy == NULL || curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version) != CURLE_OK ||
                 version < CURL_HTTP_VERSION_2_0;
      uv_unref((uv_handle_t *)&s->poll);
      if (s->events != UV_READABLE && uv_poll_start(&s->poll, UV_READABLE, poll_cb) == 0)
        s->events = UV_READABLE;
    }
    return 0;
  }
  if (s == NULL) {
    s = calloc(1, sizeof *s);
    if (s == NULL) return -1;
    s->fd = fd;
    s->c = c;
    if (socket_remember(c, s) != 0 || uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
      if (socket_find(c, fd) == s) c->by_fd[fd] = NULL;
      free(s);
      return -1;
    }
    c->open_handles++;
    s->poll.data = s;
    s->next = c->sockets;
    if (c->sockets) c->sockets->prev = s;
    c->sockets = s;
  }
  s->wanted = 1;
  uv_ref((uv_handle_t *)&s->poll);
  int events = 0;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  if (events != s->events) {
    if (uv_poll_start(&s->poll, events, poll_cb) != 0) return -1;
    s->events = events;
  }
  return 0;
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *clientp) {
  (void)multi;
  HeraldHttpClient *c = clientp;
  if (timeout_ms < 0) {
    uv_timer_stop(&c->timer);
  } else {
    uv_timer_start(&c->timer, timer_cb, (uint64_t)timeout_ms, 0);
  }
  return 0;
}

/* How many idle connections the pool keeps (CURLMOPT_MAXCONNECTS, a limit over all hosts).
 * Every connection the caps let be open at once must fit, or a connection that finishes a
 * transfer is closed to make room and the next transfer opens a new one: set to the host cap
 * (64), two profiles of 50 connections to two hosts opened a connection for nearly every
 * request. So the total cap when there is one, else the host cap for POOL_HOSTS hosts, but at
 * most half the descriptors the process may open: idle connections to many hosts (webhooks,
 * each to its own) must not starve the store or new connections of descriptors. */
static long pool_size(const HeraldHttpClientOptions *opt) {
  long size = opt->max_total_connections > 0 ? opt->max_total_connections
              : (opt->max_host_connections > 0 ? opt->max_host_connections : 64) * POOL_HOSTS;
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      (rlim_t)size > rl.rlim_cur / 2)
    size = (long)(rl.rlim_cur / 2);
  return size > 0 ? size : 1;
}

/* Whether a variable of the environment names a proxy (http_proxy, HTTPS_PROXY, all_proxy, ...;
 * no_proxy names none; a name this takes for a proxy's by mistake only costs the lookups). libcurl
 * 7.88 looks for them with getenv on every transfer, some 2% of what a webhook costs the
 * transport thread; when there are none, transfers are told so (an empty proxy and no-proxy
 * list) and libcurl does not look. */
static int proxy_in_environment(void) {
  extern char **environ;
  static const char suffix[] = "_proxy";
  const size_t slen = sizeof suffix - 1;
  for (char **e = environ; e != NULL && *e != NULL; e++) {
    const char *eq = strchr(*e, '=');
    if (eq == NULL || eq[1] == '\0') continue;
    size_t n = (size_t)(eq - *e);
    if (n < slen || strncasecmp(eq - slen, suffix, slen) != 0) continue;
    if (n == 8 && strncasecmp(*e, "no_proxy", 8) == 0) continue;
    return 1;
  }
  return 0;
}

HeraldHttpClient *herald_http_client_new(uv_loop_t *loop, const HeraldHttpClientOptions *opt) {
  static int global_ready;
  if (!global_ready) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return NULL;
    global_ready = 1;
  }
  HeraldHttpClient *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->loop = loop;
  c->direct = !proxy_in_environment();
  c->multi = curl_multi_init();
  if (c->multi == NULL || uv_timer_init(loop, &c->timer) != 0) {
    if (c->multi) curl_multi_cleanup(c->multi);
    free(c);
    return NULL;
  }
  c->timer.data = c;
  c->open_handles = 1;
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
  curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  if (opt != NULL) {
    c->host_cap = opt->max_host_connections > 0 ? (size_t)opt->max_host_connections : 0;
    c->streams = opt->max_concurrent_streams > 0 ? (size_t)opt->max_concurrent_streams : DEFAULT_STREAMS;
    if (opt->max_host_connections > 0)
      curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, opt->max_host_connections);
    if (opt->max_total_connections > 0)
      curl_multi_setopt(c->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, opt->max_total_connections);
    if (opt->max_concurrent_streams > 0)
      curl_multi_setopt(c->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, opt->max_concurrent_streams);
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, pool_size(opt));
  }
  return c;
}

static void timer_closed_cb(uv_handle_t *h) {
  HeraldHttpClient *c = h->data;
  c->open_handles--;
  client_maybe_release(c);
}

void herald_http_client_free(HeraldHttpClient *c) {
  if (c == NULL) return;
  c->closing = 1;
  while (c->active != NULL) herald_http_cancel(c, c->active);
  while (c->free_list != NULL) {
    HeraldHttpTransfer *t = c->free_list;
    c->free_list = t->next;
    transfer_destroy(t);
  }
  c->nfree = 0;
  curl_multi_cleanup(c->multi);  /* closes pooled connections, may report sockets removed */
  c->multi = NULL;
  hosts_free(c);
  while (c->sockets != NULL) socket_close(c, c->sockets);
  free(c->by_fd);
  c->by_fd = NULL;
  c->nby_fd = 0;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, timer_closed_cb);
}

static size_t write_cb(char *data, size_t size, size_t n, void *userp) {
  HeraldHttpTransfer *t = userp;
  size_t len = size * n;
  size_t room = t->max_body > t->recv_len ? t->max_body - t->recv_len : 0;
  size_t keep = len < room ? len : room;
  if (keep < len) t->truncated = 1;
  if (keep > 0) {
    if (grow(&t->recv, &t->recv_cap, t->recv_len + keep) != 0) return 0;
    memcpy(t->recv + t->recv_len, data, keep);
    t->recv_len += keep;
  }
  return len;
}

/* Retry-After: delay-seconds or an HTTP-date (RFC 9110 §10.2.3), at most a day ahead: the
 * value comes from the server, and a larger one (or one past what milliseconds can hold) would
 * hold the provider's whole limit shut. */
#define RETRY_AFTER_MAX_MS (24 * 3600 * 1000LL)
static int64_t parse_retry_after(const char *v, size_t len) {
  char buf[64];
  if (len == 0 || len >= sizeof buf) return -1;
  memcpy(buf, v, len);
  buf[len] = '\0';
  char *end;
  long long secs = strtoll(buf, &end, 10);
  if (end != buf && *end == '\0')
    return secs < 0 ? 0 : secs > RETRY_AFTER_MAX_MS / 1000 ? RETRY_AFTER_MAX_MS : (int64_t)secs * 1000;
  time_t when = curl_getdate(buf, NULL);
  if (when == -1) return -1;
  int64_t ahead = (int64_t)when - (int64_t)time(NULL);
  if (ahead > RETRY_AFTER_MAX_MS / 1000) return RETRY_AFTER_MAX_MS;
  return ahead < 0 ? 0 : ahead * 1000;
}

static size_t header_cb(char *data, size_t size, size_t n, void *userp) {
  HeraldHttpTransfer *t = userp;
  size_t len = size * n;
  /* A new response (after a 1xx or a redirect) replaces the headers of the previous one. */
  if (len > 5 && memcmp(data, "HTTP/", 5) == 0) {
    t->hdrs_len = 0;
    t->nheaders = 0;
    t->retry_after_ms = -1;
    return len;
  }
  const char *colon = memchr(data, ':', len);
  if (colon == NULL) return len;
  size_t nlen = (size_t)(colon - data);
  const char *v = colon + 1;
  const char *end = data + len;
  while (v < end && (*v == ' ' || *v == '\t')) v++;
  while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t')) end--;
  size_t vlen = (size_t)(end - v);
  if (nlen == 11 && strncasecmp(data, "retry-after", 11) == 0)
    t->retry_after_ms = parse_retry_after(v, vlen);
  if (!t->want_headers || t->hdrs_len + nlen + vlen + 2 > MAX_HEADER_BYTES) return len;
  if (grow(&t->hdrs, &t->hdrs_cap, t->hdrs_len + nlen + vlen + 2) != 0) return 0;
  for (size_t i = 0; i < nlen; i++) {
    char ch = data[i];
    t->hdrs[t->hdrs_len++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
  }
  t->hdrs[t->hdrs_len++] = '\0';
  memcpy(t->hdrs + t->hdrs_len, v, vlen);
  t->hdrs_len += vlen;
  t->hdrs[t->hdrs_len++] = '\0';
  t->nheaders++;
  return len;
}

/* libcurl hands an SMTP server's reply lines to the header callback: keep the last refusal
 * (the lines of a multi-line reply joined with spaces, control bytes shown as '?'). Not just
 * the last reply: after a refused RCPT libcurl ends the session, and QUIT's 221 comes last. */
static size_t smtp_reply_cb(char *data, size_t size, size_t n, void *userp) {
  HeraldHttpTransfer *t = userp;
  size_t len = size * n, keep = len;
  while (keep > 0 && (data[keep - 1] == '\r' || data[keep - 1] == '\n')) keep--;
  if (!t->reply_open) t->reply_len = 0;
  else if (t->reply_len + 1 < sizeof t->reply) t->reply[t->reply_len++] = ' ';
  for (size_t i = 0; i < keep && t->reply_len + 1 < sizeof t->reply; i++) {
    unsigned char ch = (unsigned char)data[i];
    t->reply[t->reply_len++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
  }
  t->reply[t->reply_len] = '\0';
  t->reply_open = keep > 3 && data[3] == '-';
  if (!t->reply_open && strtol(t->reply, NULL, 10) >= 400)
    memcpy(t->refusal, t->reply, t->reply_len + 1);
  return len;
}

static size_t read_cb(char *buf, size_t size, size_t n, void *userp) {
  HeraldHttpTransfer *t = userp;
  size_t room = size * n;
  size_t left = t->send_len - t->send_pos;
  size_t k = left < room ? left : room;
  memcpy(buf, t->send + t->send_pos, k);
  t->send_pos += k;
  return k;
}

/* Reads s's addresses (once), as libcurl gives them to the pre-request callback. */
static int socket_name(Socket *s) {
  if (s->named) return 0;
  for (int peer = 0; peer < 2; peer++) {
    struct sockaddr_storage a;
    socklen_t len = sizeof a;
    if ((peer ? getpeername(s->fd, (struct sockaddr *)&a, &len)
              : getsockname(s->fd, (struct sockaddr *)&a, &len)) != 0)
      return -1;
    char *ip = peer ? s->remote_ip : s->local_ip;
    int port;
    if (a.ss_family == AF_INET) {
      const struct sockaddr_in *in = (const struct sockaddr_in *)&a;
      if (inet_ntop(AF_INET, &in->sin_addr, ip, INET6_ADDRSTRLEN) == NULL) return -1;
      port = ntohs(in->sin_port);
    } else if (a.ss_family == AF_INET6) {
      const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a;
      if (inet_ntop(AF_INET6, &in6->sin6_addr, ip, INET6_ADDRSTRLEN) == NULL) return -1;
      port = ntohs(in6->sin6_port);
    } else {
      return -1;
    }
    if (peer) s->remote_port = port; else s->local_port = port;
  }
  s->named = 1;
  return 0;
}

/* The socket of the connection with these addresses (the pre-request callback's), or NULL.
 * libcurl 7.88 does not say which socket a transfer is on until the transfer is done. */
static Socket *socket_by_addresses(HeraldHttpClient *c, const char *remote_ip,
                                   const char *local_ip, int remote_port, int local_port) {
  for (Socket *s = c->sockets; s != NULL; s = s->next) {
    if (socket_name(s) != 0) continue;
    if (s->local_port == local_port && s->remote_port == remote_port &&
        strcmp(s->local_ip, local_ip) == 0 && strcmp(s->remote_ip, remote_ip) == 0)
      return s;
  }
  return NULL;
}

static int same_string(const char *a, const char *b) {
  return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

/* Whether an SMTP mail over TLS may go on the session libcurl picked: libcurl 7.88 compares
 * the TLS settings of pooled connections only for smtps://, so a mail whose CA file does not
 * vouch for the server would reuse an smtp:// session that STARTTLS upgraded and another
 * profile's CA file verified. A session's CA file is recorded by the mail that opened it; a
 * mail with another one (or on a session nobody recorded) is stopped here and sent on a
 * connection of its own, which verifies the server against its own CA file. */
static int tls_session_fits(HeraldHttpTransfer *t, const char *remote_ip, const char *local_ip,
                            int remote_port, int local_port) {
  long connects = 0;
  if (curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &connects) != CURLE_OK) return 0;
  Socket *s = socket_by_addresses(t->c, remote_ip, local_ip, remote_port, local_port);
  if (connects > 0) {
    /* opened for this mail, its server verified against this mail's CA file */
    if (s != NULL) {
      free(s->ca_file);
      s->ca_file = t->smtp_ca_file ? strdup(t->smtp_ca_file) : NULL;
      s->ca_known = t->smtp_ca_file == NULL || s->ca_file != NULL;
    }
    return 1;
  }
  return s != NULL && s->ca_known && same_string(s->ca_file, t->smtp_ca_file);
}

static int prereq_cb(void *userp, char *remote_ip, char *local_ip, int remote_port,
                     int local_port) {
  HeraldHttpTransfer *t = userp;
  /* libcurl 7.88 pools smtp:// sessions by host and port whatever CURLOPT_USE_SSL says: a mail
   * that requires STARTTLS would reuse a plain-text session another mail to the same server
   * left open (one whose profile only tries STARTTLS, say) and go out unencrypted, and does
   * not compare CA files for a session STARTTLS upgraded (see tls_session_fits). The checks
   * come here, after libcurl has picked the connection and before it sends a command for this
   * mail; check_completions then sends the mail on a new connection, which either upgrades and
   * verifies the server against the mail's own CA file or fails. libcurl closes the session a
   * mail was stopped on. */
  if (t->tls_wanted) {
    struct curl_tlssessioninfo *tls = NULL;
    int encrypted = curl_easy_getinfo(t->easy, CURLINFO_TLS_SSL_PTR, &tls) == CURLE_OK &&
                    tls != NULL && tls->internals != NULL;
    if (!encrypted && t->tls_required) {
      t->refused = kRefusedPlain;
      return CURL_PREREQFUNC_ABORT;
    }
    if (encrypted && !tls_session_fits(t, remote_ip, local_ip, remote_port, local_port)) {
      t->refused = kRefusedOtherCa;
      return CURL_PREREQFUNC_ABORT;
    }
  }
  t->requests++;
  return CURL_PREREQFUNC_OK;
}

/* A transfer from the free list (its handle as the last transfer left it), or a new one. */
static HeraldHttpTransfer *transfer_get(HeraldHttpClient *c, const char *data, size_t len) {
  HeraldHttpTransfer *t = c->free_list;
  if (t != NULL) {
    c->free_list = t->next;
    c->nfree--;
  } else {
    t = calloc(1, sizeof *t);
    if (t == NULL) return NULL;
    t->easy = curl_easy_init();
    if (t->easy == NULL) {
      free(t);
      return NULL;
    }
  }
  t->c = c;
  t->next = t->prev = NULL;
  t->send_len = t->send_pos = 0;
  t->recv_len = 0;
  t->hdrs_len = 0;
  t->nheaders = 0;
  t->truncated = 0;
  t->retry_after_ms = -1;
  t->errbuf[0] = '\0';
  t->reply_len = 0;
  t->reply_open = 0;
  t->refusal[0] = '\0';
  t->requests = 0;
  if (len > 0) {
    if (grow(&t->send, &t->send_cap, len) != 0) {
      transfer_release(c, t);
      return NULL;
    }
    memcpy(t->send, data, len);
  }
  t->send_len = len;
  return t;
}

/* Clears the handle's options (and the list they pointed to) and sets those every transfer
 * of t has. */
static void transfer_reset(HeraldHttpClient *c, HeraldHttpTransfer *t) {
  CURL *e = t->easy;
  curl_easy_reset(e);
  curl_slist_free_all(t->list);
  t->list = NULL;
  t->tls_required = t->tls_wanted = t->fresh_tried = 0;
  t->refused = kRefusedNone;
  free(t->smtp_ca_file);
  t->smtp_ca_file = NULL;
  transfer_forget_config(t);
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)t);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, curl_close_cb);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, c);
  curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, prereq_cb);
  curl_easy_setopt(e, CURLOPT_PREREQDATA, t);
  if (c->direct) {
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "");
  }
}

/* Hands t to libcurl, or queues it behind its host's transfers (see the top of the file). */
static HeraldHttpTransfer *transfer_start(HeraldHttpClient *c, HeraldHttpTransfer *t,
                                          const char *url, int may_multiplex, HeraldHttpDone done,
                                          void *user) {
  t->done = done;
  t->user = user;
  t->may_multiplex = may_multiplex;
  t->queued = 0;
  t->qprev = t->qnext = NULL;
  Host *h = host_get(c, url);
  t->host = h;
  if (h != NULL && (h->head != NULL || !host_admits(c, h, t))) {
    t->queued = 1;
    t->qprev = h->tail;
    if (h->tail) h->tail->qnext = t; else h->head = t;
    h->tail = t;
  } else if (curl_multi_add_handle(c->multi, t->easy) != CURLM_OK) {
    if (h != NULL) host_settle(c, h);
    transfer_release(c, t);
    return NULL;
  } else if (h != NULL) {
    h->running++;
  }
  t->next = c->active;
  if (c->active) c->active->prev = t;
  c->active = t;
  c->in_flight++;
  return t;
}

static int append_header(struct curl_slist **list, const char *line) {
  struct curl_slist *l = curl_slist_append(*list, line);
  if (l == NULL) return -1;
  *list = l;
  return 0;
}


/* Whether t's handle has the options of an HTTP request with these settings. */
static int http_configured(const HeraldHttpTransfer *t, const char *method, int has_body,
                           const char *ca_file, int http1_only, int pipewait) {
  return t->configured && t->cfg_body == has_body && t->cfg_http1 == http1_only &&
         t->cfg_pipewait == pipewait && same_string(t->cfg_method, method) &&
         same_string(t->cfg_ca_file, ca_file);
}

/* Resets t's handle and sets the options HTTP requests with these settings share. */
static void http_configure(HeraldHttpClient *c, HeraldHttpTransfer *t, const char *method,
                           int has_body, const char *ca_file, int http1_only, int pipewait) {
  transfer_reset(c, t);
  CURL *e = t->easy;
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  /* Over TLS, wait for a multiplexable connection instead of opening one per stream. Not in
   * cleartext, where every connection is HTTP/1.1 and waiting would serialise transfers. */
  if (pipewait) curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  /* HTTP/2 only where ALPN negotiates it: cleartext prior knowledge is broken on reused
   * connections in libcurl 7.88. */
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                   http1_only ? (long)CURL_HTTP_VERSION_1_1 : (long)CURL_HTTP_VERSION_2TLS);
  if (ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
  if (has_body) {
    if (strcmp(method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  } else if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (strcmp(method, "GET") != 0) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
  /* remembered for the next request; out of memory, that one resets the handle again */
  t->cfg_method = strdup(method);
  t->cfg_ca_file = ca_file ? strdup(ca_file) : NULL;
  t->cfg_body = has_body;
  t->cfg_http1 = http1_only;
  t->cfg_pipewait = pipewait;
  t->configured = t->cfg_method != NULL && (ca_file == NULL || t->cfg_ca_file != NULL);
}

/* Gives the handle url, as text and parsed (CURLOPT_CURLU), parsing it only when it is not
 * the URL of the handle's last request: libcurl parses the text of a URL for every transfer
 * (and writes it out again, normalised), while a parsed one it only copies. The text is given
 * too, so what libcurl keeps as the transfer's URL is this request's (libcurl 7.88 takes the
 * text from a parsed URL only on a handle's first transfer). Parsed as libcurl parses the text;
 * a URL that does not parse goes as text alone, for libcurl to refuse with its own error. */
static void http_set_url(HeraldHttpTransfer *t, const char *url) {
  CURL *e = t->easy;
  curl_easy_setopt(e, CURLOPT_URL, url);
  if (t->url != NULL && strcmp(t->url_text, url) == 0) {
    curl_easy_setopt(e, CURLOPT_CURLU, t->url);
    return;
  }
  CURLU *parsed = curl_url();
  char *text = strdup(url);
  if (parsed == NULL || text == NULL ||
      curl_url_set(parsed, CURLUPART_URL, url, CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME) !=
          CURLUE_OK) {
    curl_url_cleanup(parsed);
    free(text);
    parsed = NULL;
    text = NULL;
  }
  curl_easy_setopt(e, CURLOPT_CURLU, parsed);
  /* the handle no longer points to the previous one */
  curl_url_cleanup(t->url);
  free(t->url_text);
  t->url = parsed;
  t->url_text = text;
}

HeraldHttpTransfer *herald_http_submit(HeraldHttpClient *c, const HeraldHttpRequest *req,
                                       HeraldHttpDone done, void *user) {
  if (c->closing) return NULL;
  HeraldHttpTransfer *t = transfer_get(c, req->body, req->body ? req->body_len : 0);
  if (t == NULL) return NULL;
  t->is_smtp = 0;
  t->max_body = req->max_body;
  t->want_headers = req->want_headers;
  int has_body = req->body != NULL;
  const char *method = req->method ? req->method : (has_body ? "POST" : "GET");
  int may_multiplex = !req->http1_only && strncasecmp(req->url, "https:", 6) == 0;
  struct curl_slist *list = NULL;
  int bad = 0;
  for (size_t i = 0; i < req->nheaders && !bad; i++) bad = append_header(&list, req->headers[i]);
  /* A round trip for 100-continue buys nothing for small bodies. libcurl 7.88 asks for one only
   * above 1 MiB (EXPECT_100_THRESHOLD), so smaller bodies go without the empty header, which
   * libcurl would compare with each header name it looks for. */
  if (!bad && has_body && req->body_len > EXPECT_THRESHOLD) bad = append_header(&list, "Expect:");
  if (bad) {
    curl_slist_free_all(list);
    transfer_release(c, t);
    return NULL;
  }
  if (!http_configured(t, method, has_body, req->ca_file, req->http1_only, may_multiplex))
    http_configure(c, t, method, has_body, req->ca_file, req->http1_only, may_multiplex);
  http_set_url(t, req->url);
  CURL *e = t->easy;
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : DEFAULT_TIMEOUT_MS);
  if (has_body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->send);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->send_len);
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, list);
  curl_slist_free_all(t->list);  /* the previous request's, which the handle no longer uses */
  t->list = list;
  return transfer_start(c, t, req->url, may_multiplex, done, user);
}

HeraldHttpTransfer *herald_smtp_submit(HeraldHttpClient *c, const HeraldSmtpRequest *req,
                                       HeraldHttpDone done, void *user) {
  if (c->closing) return NULL;
  HeraldHttpTransfer *t = transfer_get(c, req->message, req->message_len);
  if (t == NULL) return NULL;
  transfer_reset(c, t);
  t->is_smtp = 1;
  t->max_body = 0;
  t->want_headers = 0;
  CURL *e = t->easy;
  for (size_t i = 0; i < req->nrcpt; i++) {
    if (append_header(&t->list, req->rcpt[i]) != 0) {
      transfer_release(c, t);
      return NULL;
    }
  }
  curl_easy_setopt(e, CURLOPT_URL, req->url);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : DEFAULT_TIMEOUT_MS);
  curl_easy_setopt(e, CURLOPT_MAIL_FROM, req->mail_from);
  curl_easy_setopt(e, CURLOPT_MAIL_RCPT, t->list);
  curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
  /* libcurl's smallest upload buffer (16 KiB, against 64 KiB by default): a campaign email is a
   * few KB, and libcurl 7.88 allocates the buffer for each transfer and frees it when the
   * transfer is done (its dot-stuffing buffer is twice that size). About 6% fewer transport
   * instructions a 2 KB mail (callgrind); larger mails take more reads of the same bytes. */
  curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
  curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
  curl_easy_setopt(e, CURLOPT_READDATA, t);
  curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)t->send_len);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, smtp_reply_cb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  long ssl = req->starttls == 2 ? (long)CURLUSESSL_ALL
             : req->starttls == 1 ? (long)CURLUSESSL_TRY : (long)CURLUSESSL_NONE;
  curl_easy_setopt(e, CURLOPT_USE_SSL, ssl);
  t->tls_required = req->starttls == 2;
  t->tls_wanted = req->starttls != 0 || strncasecmp(req->url, "smtps:", 6) == 0;
  if (req->ca_file != NULL && (t->smtp_ca_file = strdup(req->ca_file)) == NULL) {
    transfer_release(c, t);
    return NULL;
  }
  if (req->username) curl_easy_setopt(e, CURLOPT_USERNAME, req->username);
  if (req->password) curl_easy_setopt(e, CURLOPT_PASSWORD, req->password);
  if (req->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file);
  return transfer_start(c, t, req->url, 0, done, user);
}

void herald_http_cancel(HeraldHttpClient *c, HeraldHttpTransfer *t) {
  if (t == NULL) return;
  Host *h = t->host;
  if (t->queued) {
    queue_unlink(h, t);
    host_settle(c, h);
  } else {
    curl_multi_remove_handle(c->multi, t->easy);
    t->configured = 0;  /* cut short: libcurl may have counted a retry */
    if (h != NULL) host_finished(c, h);
  }
  transfer_unlink(c, t);
  transfer_release(c, t);
}

size_t herald_http_in_flight(const HeraldHttpClient *c) { return c->in_flight; }

uint64_t herald_http_connections_opened(const HeraldHttpClient *c) { return c->connections; }
