/* The transport engine: HTTP(S) and SMTP(S) transfers through one libcurl multi handle driven
 * by a libuv loop (see http_client.c). Callers submit requests and get one C callback per
 * completion; nothing blocks and no thread is started. */
#ifndef HERALD_HTTP_CLIENT_H
#define HERALD_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct HeraldHttpClient HeraldHttpClient;
typedef struct HeraldHttpTransfer HeraldHttpTransfer;

/* What went wrong with a transfer, independent of the protocol. A transfer that got a reply
 * has kHeraldNetOk whatever the HTTP status; SMTP rejections are kHeraldNetStatus with the
 * reply code in status. */
typedef enum {
  kHeraldNetOk = 0,
  kHeraldNetTimeout,    /* the transfer's timeout expired */
  kHeraldNetConnect,    /* refused, unreachable, name not resolved */
  kHeraldNetReset,      /* the connection broke mid-transfer (reset, closed, empty reply) */
  kHeraldNetTls,        /* handshake or certificate failure */
  kHeraldNetStatus,     /* the server answered with a failure code (SMTP 4xx/5xx) */
  kHeraldNetAuth,       /* login refused */
  kHeraldNetInvalid,    /* the request itself is bad (URL, option): retrying cannot help */
  kHeraldNetProtocol,   /* any other transport failure */
  kHeraldNetCancelled,
  kHeraldNetHeld,       /* not sent: its group is held by a server's Retry-After (429, 503) */
  kHeraldNetRecalled,   /* not sent: its gate closed before it started (see http_thread.h) */
} HeraldNetClass;

const char *herald_net_class_name(HeraldNetClass c);

typedef struct {
  long max_host_connections;   /* cap per host (0: libcurl's default, unlimited) */
  long max_total_connections;  /* cap over all hosts (0: unlimited) */
  long max_concurrent_streams; /* HTTP/2 streams per connection (0: libcurl's default, 100) */
} HeraldHttpClientOptions;

typedef struct {
  const char *method;          /* NULL: POST when a body is given, else GET */
  const char *url;
  const char *const *headers;  /* "Name: value" lines */
  size_t nheaders;
  const char *body;            /* copied at submit */
  size_t body_len;
  long timeout_ms;             /* whole transfer; 0: 30 s */
  size_t max_body;             /* response bytes kept; the rest is discarded, truncated set */
  int want_headers;            /* collect response headers (Retry-After is read regardless) */
  const char *ca_file;         /* trust anchors for https (NULL: the system's) */
  int http1_only;              /* never negotiate HTTP/2 */
} HeraldHttpRequest;

typedef struct {
  const char *url;             /* smtp://host:port or smtps://host:port */
  const char *mail_from;       /* envelope sender (addr-spec) */
  const char *const *rcpt;     /* envelope recipients (addr-specs) */
  size_t nrcpt;
  const char *message;         /* the whole RFC 5322 message, CRLF line ends; copied */
  size_t message_len;
  long timeout_ms;
  int starttls;                /* 0: never, 1: when offered, 2: required */
  const char *username;        /* AUTH when set */
  const char *password;
  const char *ca_file;
} HeraldSmtpRequest;

typedef struct {
  HeraldNetClass error;
  const char *error_text;      /* libcurl's explanation; "" when error is kHeraldNetOk */
  long status;                 /* HTTP status or last SMTP reply code (0: none) */
  const char *body;            /* response body (HTTP), not NUL-terminated */
  size_t body_len;
  int truncated;               /* the body was longer than max_body */
  const char *headers;         /* with want_headers: "name\0value\0" pairs, names lower-case */
  size_t nheaders;
  int64_t retry_after_ms;      /* from Retry-After (seconds or HTTP date), -1 when absent */
  int http_version;            /* 1 or 2 */
  int64_t elapsed_us;
} HeraldHttpResponse;

/* Called once per transfer that was not cancelled. res lives until the callback returns. The
 * callback may submit or cancel transfers. */
typedef void (*HeraldHttpDone)(const HeraldHttpResponse *res, void *user);

HeraldHttpClient *herald_http_client_new(uv_loop_t *loop, const HeraldHttpClientOptions *opt);

/* Cancels every transfer (no callbacks) and closes connections; the memory is released by
 * the loop once its handles are closed, so run the loop afterwards. */
void herald_http_client_free(HeraldHttpClient *c);

/* Starts a transfer. NULL when it cannot be started (out of memory); errors of the request
 * itself (bad URL, refused connection) come through the callback. */
HeraldHttpTransfer *herald_http_submit(HeraldHttpClient *c, const HeraldHttpRequest *req,
                                       HeraldHttpDone done, void *user);
HeraldHttpTransfer *herald_smtp_submit(HeraldHttpClient *c, const HeraldSmtpRequest *req,
                                       HeraldHttpDone done, void *user);

/* Aborts a transfer; its callback is never called. */
void herald_http_cancel(HeraldHttpClient *c, HeraldHttpTransfer *t);

/* Transfers submitted and not yet completed or cancelled. */
size_t herald_http_in_flight(const HeraldHttpClient *c);

/* Connections the client opened so far (reuse shows as few connections for many transfers). */
uint64_t herald_http_connections_opened(const HeraldHttpClient *c);

#endif
