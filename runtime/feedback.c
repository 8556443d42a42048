#include "runtime/feedback.h"

#include <gmime/gmime.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tracking.h"

/* GMime keeps process-wide tables (charsets, content-type handlers): set up once. */
static gpointer init_gmime(gpointer unused) {
  (void)unused;
  g_mime_init();
  return NULL;
}

static void ensure_gmime(void) {
  static GOnce once = G_ONCE_INIT;
  g_once(&once, init_gmime, NULL);
}

static void copy(char *dst, size_t cap, const char *src) { g_strlcpy(dst, src ? src : "", cap); }

/* src into dst with runs of whitespace (left by unfolding) as one space, none at either end. */
static void copy_trimmed(char *dst, size_t cap, const char *src) {
  size_t o = 0;
  int space = 0;
  for (const char *p = src ? src : ""; *p && o + 1 < cap; p++) {
    if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
      space = o > 0;
      continue;
    }
    if (space && o + 2 < cap) dst[o++] = ' ';
    space = 0;
    dst[o++] = *p;
  }
  dst[o] = '\0';
}

/* The decoded content of a leaf part (transfer encoding undone) as a new byte array. */
static GByteArray *part_bytes(GMimeObject *obj) {
  if (!GMIME_IS_PART(obj)) return NULL;
  GMimeDataWrapper *w = g_mime_part_get_content(GMIME_PART(obj));
  if (w == NULL) return g_byte_array_new();
  GMimeStream *mem = g_mime_stream_mem_new();
  GByteArray *out = NULL;
  if (g_mime_data_wrapper_write_to_stream(w, mem) >= 0) {
    GByteArray *arr = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
    out = g_byte_array_sized_new(arr->len);
    g_byte_array_append(out, arr->data, arr->len);
  }
  g_object_unref(mem);
  return out;
}

static GMimeParser *parser_over(const guint8 *data, size_t len) {
  GMimeStream *s = g_mime_stream_mem_new_with_buffer((const char *)data, len);
  GMimeParser *p = g_mime_parser_new_with_stream(s);
  g_object_unref(s);
  return p;
}

/* A report's field groups (RFC 3464 §2.1, RFC 5965 §3.1): blocks of header fields separated by
 * blank lines. GMime parses each block as the headers of a part whose content is the rest;
 * visit(group, ctx) sees each one. Returns the number of groups. */
typedef void (*GroupFn)(GMimeObject *group, void *ctx);

static int each_group(const GByteArray *content, GroupFn visit, void *ctx) {
  GByteArray *rest = g_byte_array_sized_new(content->len);
  g_byte_array_append(rest, content->data, content->len);
  int n = 0;
  for (;;) {
    size_t skip = 0;
    while (skip < rest->len && (rest->data[skip] == '\r' || rest->data[skip] == '\n')) skip++;
    if (skip == rest->len) break;
    GMimeParser *p = parser_over(rest->data + skip, rest->len - skip);
    GMimeObject *group = g_mime_parser_construct_part(p, NULL);
    g_object_unref(p);
    if (group == NULL) break;
    GMimeHeaderList *hl = g_mime_object_get_header_list(group);
    GByteArray *next = g_mime_header_list_get_count(hl) > 0 ? part_bytes(group) : NULL;
    if (next != NULL) {
      visit(group, ctx);
      n++;
    }
    g_object_unref(group);
    g_byte_array_unref(rest);
    rest = next;
    /* text that is not a field block ends the groups */
    if (rest == NULL) return n;
  }
  g_byte_array_unref(rest);
  return n;
}

/* Delivery status ----------------------------------------------------------------------------- */

typedef struct {
  int rank;  /* of the chosen recipient: failed 4 > delayed 3 > delivered 2 > other 1 */
  char action[32], status[32], recipient[256], diagnostic[256];
  int groups_with_action;
} DsnScan;

static int action_rank(const char *a) {
  if (g_ascii_strcasecmp(a, "failed") == 0) return 4;
  if (g_ascii_strcasecmp(a, "delayed") == 0) return 3;
  if (g_ascii_strcasecmp(a, "delivered") == 0) return 2;
  return 1;
}

/* "rfc822; user@example.com" -> "user@example.com" (the address-type is dropped). */
static void typed_value(char *dst, size_t cap, const char *v) {
  const char *semi = v ? strchr(v, ';') : NULL;
  copy_trimmed(dst, cap, semi ? semi + 1 : v);
}

static void visit_dsn(GMimeObject *group, void *ctx) {
  DsnScan *s = ctx;
  const char *action = g_mime_object_get_header(group, "Action");
  if (action == NULL) return;  /* the per-message group */
  s->groups_with_action++;
  char a[32];
  copy_trimmed(a, sizeof a, action);
  int rank = action_rank(a);
  if (rank <= s->rank) return;
  s->rank = rank;
  copy(s->action, sizeof s->action, a);
  char status[64];
  copy_trimmed(status, sizeof status, g_mime_object_get_header(group, "Status"));
  status[strcspn(status, " \t(")] = '\0';
  copy(s->status, sizeof s->status, status);
  const char *rcpt = g_mime_object_get_header(group, "Final-Recipient");
  typed_value(s->recipient, sizeof s->recipient, rcpt ? rcpt : g_mime_object_get_header(group, "Original-Recipient"));
  typed_value(s->diagnostic, sizeof s->diagnostic, g_mime_object_get_header(group, "Diagnostic-Code"));
}

/* "5.1.1": class 2, 4 or 5, then two numbers (RFC 3463). Returns the class or 0. */
static int status_class(const char *s) {
  if ((s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.') return 0;
  const char *p = s + 2;
  int digits = 0;
  while (*p >= '0' && *p <= '9') p++, digits++;
  if (digits == 0 || digits > 3 || *p != '.') return 0;
  p++;
  digits = 0;
  while (*p >= '0' && *p <= '9') p++, digits++;
  if (digits == 0 || digits > 3 || *p != '\0') return 0;
  return s[0] - '0';
}

static int read_dsn(GMimeObject *part, HeraldFeedbackReport *out, HeraldError *err) {
  GByteArray *bytes = part_bytes(part);
  if (bytes == NULL) return herald_error_set(err, kHeraldInvalid, "message/delivery-status: unreadable content");
  DsnScan s = {0};
  each_group(bytes, visit_dsn, &s);
  g_byte_array_unref(bytes);
  if (s.groups_with_action == 0)
    return herald_error_set(err, kHeraldInvalid, "message/delivery-status: no recipient fields with an Action");
  copy(out->action, sizeof out->action, s.action);
  copy(out->status, sizeof out->status, s.status);
  copy(out->recipient, sizeof out->recipient, s.recipient);
  int cls = status_class(s.status);
  if (cls == 0)
    return herald_error_set(err, kHeraldInvalid, "message/delivery-status: Status '%s' of %s is not "
                            "a status code such as 5.1.1", s.status, s.recipient[0] ? s.recipient : "the recipient");
  if (s.rank >= 3) {
    if (cls == 2)
      return herald_error_set(err, kHeraldInvalid, "message/delivery-status: Action %s with the success "
                              "Status %s", s.action, s.status);
    out->kind = cls == 5 ? kHeraldFeedbackHardBounce : kHeraldFeedbackSoftBounce;
  } else if (s.rank == 2) {
    out->kind = kHeraldFeedbackDelivered;
  } else {
    out->kind = kHeraldFeedbackNone;
  }
  if (out->kind == kHeraldFeedbackNone)
    snprintf(out->reason, sizeof out->reason, "Action %s %s for %.200s: not a delivery outcome", s.action,
             s.status, s.recipient);
  else
    snprintf(out->reason, sizeof out->reason, "%s %s %.200s%s%.200s", s.action, s.status, s.recipient,
             s.diagnostic[0] ? ": " : "", s.diagnostic);
  return kHeraldOk;
}

/* Feedback report ---------------------------------------------------------------------------- */

typedef struct {
  char type[32], agent[128], rcpt[256];
  int found;
} ArfScan;

static void visit_arf(GMimeObject *group, void *ctx) {
  ArfScan *s = ctx;
  const char *type = g_mime_object_get_header(group, "Feedback-Type");
  if (type == NULL || s->found) return;
  s->found = 1;
  copy_trimmed(s->type, sizeof s->type, type);
  copy_trimmed(s->agent, sizeof s->agent, g_mime_object_get_header(group, "User-Agent"));
  const char *rcpt = g_mime_object_get_header(group, "Original-Rcpt-To");
  if (rcpt != NULL) {
    char *addr = g_strdup(rcpt);
    g_strdelimit(addr, "<>", ' ');
    copy_trimmed(s->rcpt, sizeof s->rcpt, addr);
    g_free(addr);
  }
}

static int read_arf(GMimeObject *part, HeraldFeedbackReport *out, HeraldError *err) {
  GByteArray *bytes = part_bytes(part);
  if (bytes == NULL) return herald_error_set(err, kHeraldInvalid, "message/feedback-report: unreadable content");
  ArfScan s = {0};
  each_group(bytes, visit_arf, &s);
  g_byte_array_unref(bytes);
  if (!s.found) return herald_error_set(err, kHeraldInvalid, "message/feedback-report: no Feedback-Type field");
  copy(out->feedback_type, sizeof out->feedback_type, s.type);
  copy(out->recipient, sizeof out->recipient, s.rcpt);
  static const char *const complaints[] = {"abuse", "fraud", "virus", "other"};
  static const char *const known[] = {"not-spam", "auth-failure"};
  for (size_t i = 0; i < sizeof complaints / sizeof *complaints; i++) {
    if (g_ascii_strcasecmp(s.type, complaints[i]) == 0) {
      out->kind = kHeraldFeedbackComplaint;
      snprintf(out->reason, sizeof out->reason, "Feedback-Type %s%s%s", s.type, s.agent[0] ? " from " : "", s.agent);
      return kHeraldOk;
    }
  }
  for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
    if (g_ascii_strcasecmp(s.type, known[i]) == 0) {
      out->kind = kHeraldFeedbackNone;
      snprintf(out->reason, sizeof out->reason, "Feedback-Type %s: not a complaint", s.type);
      return kHeraldOk;
    }
  }
  return herald_error_set(err, kHeraldInvalid, "message/feedback-report: Feedback-Type '%s' is not one of "
                          "abuse, fraud, virus, other, not-spam, auth-failure", s.type);
}

/* The original message ---------------------------------------------------------------------- */

/* The outbox id in a Message-ID's local part: runtime/smtp_message.c writes characters outside
 * dot-atom text as =HH. Returns 0, or -1 when it does not decode. */
static int decode_msgid(const char *id, char *out, size_t cap) {
  const char *at = strrchr(id, '@');
  size_t n = at ? (size_t)(at - id) : strlen(id);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int ch = (unsigned char)id[i];
    if (ch == '=') {
      if (i + 2 >= n) return -1;
      int hi = g_ascii_xdigit_value(id[i + 1]), lo = g_ascii_xdigit_value(id[i + 2]);
      if (hi < 0 || lo < 0) return -1;
      ch = hi * 16 + lo;
      i += 2;
    }
    if (o + 1 >= cap) return -1;
    out[o++] = (char)ch;
  }
  out[o] = '\0';
  return o > 0 ? 0 : -1;
}

/* Fills out->message_id from the original's headers. */
static void match_original(GMimeMessage *orig, HeraldFeedbackReport *out) {
  const char *x = g_mime_object_get_header(GMIME_OBJECT(orig), "X-Herald-Message-Id");
  if (x != NULL) {
    copy_trimmed(out->message_id, sizeof out->message_id, x);
    if (out->message_id[0]) {
      copy(out->matched_by, sizeof out->matched_by, "X-Herald-Message-Id");
      return;
    }
  }
  const char *mid = g_mime_message_get_message_id(orig);
  if (mid != NULL && decode_msgid(mid, out->message_id, sizeof out->message_id) == 0) {
    copy(out->matched_by, sizeof out->matched_by, "Message-ID");
    return;
  }
  out->message_id[0] = '\0';
}

static void read_original(GMimeObject *part, HeraldFeedbackReport *out) {
  if (GMIME_IS_MESSAGE_PART(part)) {
    GMimeMessage *m = g_mime_message_part_get_message(GMIME_MESSAGE_PART(part));
    if (m != NULL) match_original(m, out);
    return;
  }
  /* text/rfc822-headers: the header block alone, parsed as a message without a body */
  GByteArray *bytes = part_bytes(part);
  if (bytes == NULL) return;
  g_byte_array_append(bytes, (const guint8 *)"\r\n\r\n", 4);
  GMimeParser *p = parser_over(bytes->data, bytes->len);
  GMimeMessage *m = g_mime_parser_construct_message(p, NULL);
  if (m != NULL) {
    match_original(m, out);
    g_object_unref(m);
  }
  g_object_unref(p);
  g_byte_array_unref(bytes);
}

static int is_type(GMimeObject *o, const char *type, const char *subtype) {
  GMimeContentType *ct = g_mime_object_get_content_type(o);
  return ct != NULL && g_mime_content_type_is_type(ct, type, subtype);
}

static int read_report(GMimeObject *top, HeraldFeedbackReport *out, HeraldError *err) {
  if (!GMIME_IS_MULTIPART(top) || !is_type(top, "multipart", "report")) {
    GMimeContentType *ct = g_mime_object_get_content_type(top);
    char *mime = ct ? g_mime_content_type_get_mime_type(ct) : NULL;
    herald_error_set(err, kHeraldInvalid, "not a report: Content-Type %s, expected multipart/report",
                     mime ? mime : "(none)");
    g_free(mime);
    return kHeraldInvalid;
  }
  const char *rt = g_mime_content_type_get_parameter(g_mime_object_get_content_type(top), "report-type");
  int dsn = rt && g_ascii_strcasecmp(rt, "delivery-status") == 0;
  int arf = rt && g_ascii_strcasecmp(rt, "feedback-report") == 0;
  if (!dsn && !arf)
    return herald_error_set(err, kHeraldInvalid, "multipart/report: report-type '%s' is not delivery-status "
                            "or feedback-report", rt ? rt : "(missing)");
  GMimeMultipart *mp = GMIME_MULTIPART(top);
  GMimeObject *report = NULL, *original = NULL;
  for (int i = 0; i < g_mime_multipart_get_count(mp); i++) {
    GMimeObject *p = g_mime_multipart_get_part(mp, i);
    if (dsn && (is_type(p, "message", "delivery-status") || is_type(p, "message", "global-delivery-status")))
      report = report ? report : p;
    else if (arf && is_type(p, "message", "feedback-report"))
      report = report ? report : p;
    else if (is_type(p, "message", "rfc822") || is_type(p, "message", "global") ||
             is_type(p, "text", "rfc822-headers") || is_type(p, "message", "global-headers"))
      original = original ? original : p;
  }
  if (report == NULL)
    return herald_error_set(err, kHeraldInvalid, "multipart/report: no message/%s part",
                            dsn ? "delivery-status" : "feedback-report");
  int rc = dsn ? read_dsn(report, out, err) : read_arf(report, out, err);
  if (rc != kHeraldOk) return rc;
  if (original != NULL) read_original(original, out);
  return kHeraldOk;
}

int herald_feedback_parse(const char *mail, size_t len, HeraldFeedbackReport *out, HeraldError *err) {
  memset(out, 0, sizeof *out);
  ensure_gmime();
  GMimeParser *p = parser_over((const guint8 *)mail, len);
  GMimeMessage *msg = g_mime_parser_construct_message(p, NULL);
  g_object_unref(p);
  if (msg == NULL) return herald_error_set(err, kHeraldInvalid, "not a mail message (no header block)");
  GMimeObject *top = g_mime_message_get_mime_part(msg);
  int rc = top ? read_report(top, out, err)
               : herald_error_set(err, kHeraldInvalid, "not a report: the message has no body");
  g_object_unref(msg);
  return rc;
}

int herald_feedback_record(HeraldStore *store, const char *app, const HeraldFeedbackReport *r,
                           char *event_type_out, char *endpoint_out, HeraldError *err) {
  if (r->message_id[0] == '\0')
    return herald_error_set(err, kHeraldNotFound, "no original message: the report carries neither "
                            "an X-Herald-Message-Id nor a Message-ID herald wrote");
  json_t *n = NULL;
  switch (r->kind) {
    case kHeraldFeedbackHardBounce:
    case kHeraldFeedbackSoftBounce:
      n = json_pack("{s:s, s:s, s:s, s:s}", "MessageId", r->message_id, "Type", "BOUNCE", "BounceType",
                    r->kind == kHeraldFeedbackHardBounce ? "HARD" : "SOFT", "Reason", r->reason);
      break;
    case kHeraldFeedbackComplaint:
      n = json_pack("{s:s, s:s, s:s}", "MessageId", r->message_id, "Type", "COMPLAINT", "Reason", r->reason);
      break;
    case kHeraldFeedbackDelivered:
      n = json_pack("{s:s, s:s, s:s}", "MessageId", r->message_id, "Type", "DELIVERY", "Reason", r->reason);
      break;
    case kHeraldFeedbackNone:
      return herald_error_set(err, kHeraldInvalid, "the report records nothing: %s", r->reason);
  }
  if (n == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
  int rc = herald_ingest_status(store, app, n, event_type_out, endpoint_out, err);
  json_decref(n);
  return rc;
}

/* HTTP ----------------------------------------------------------------------------------------- */

static void handle_mail(void *ctx, const HeraldHttpRequest *req, HeraldHttpResponse *res) {
  HeraldIngest *in = ctx;
  const char *app = herald_http_request_param(req, "app");
  HeraldError err = {0};
  HeraldFeedbackReport *r = malloc(sizeof *r);
  if (r == NULL) {
    herald_http_response_error(res, 503, "out of memory");
    return;
  }
  if (herald_feedback_parse(req->body, req->body_len, r, &err) != kHeraldOk) {
    herald_http_response_error(res, 400, err.msg);
  } else if (r->kind == kHeraldFeedbackNone) {
    char msg[600];
    snprintf(msg, sizeof msg, "Ignored: %s", r->reason);
    json_t *answer = json_pack("{s:s}", "Message", msg);
    herald_http_response_json(res, 200, answer);
    json_decref(answer);
  } else {
    char type[32], endpoint[HERALD_TRACKING_ID_MAX + 1];
    HeraldStore *store = herald_ingest_store(in, &err);
    int rc = store ? herald_feedback_record(store, app, r, type, endpoint, &err) : (int)err.code;
    if (rc != kHeraldOk && herald_store_error_busy(&err)) {
      /* another process held the store past the busy timeout: nothing was recorded, and the
       * same report may be posted again (as the status webhook answers) */
      herald_http_response_error(res, 503, err.msg);
      herald_http_response_header(res, "Retry-After", "1");
    } else if (rc != kHeraldOk) {
      herald_http_response_error(res, rc == kHeraldNotFound ? 404 : rc == kHeraldInvalid ? 400 : 500, err.msg);
    } else {
      json_t *answer = json_pack("{s:s, s:s, s:s}", "EventType", type, "MessageId", r->message_id,
                                 "Message", "Accepted");
      /* no endpoint: a complaint of a direct mail to an address no endpoint has, which went on
       * the application's opt-out list (runtime/ingest.c) */
      if (answer && endpoint[0] && json_object_set_new(answer, "EndpointId", json_string(endpoint)) != 0) {
        json_decref(answer);
        answer = NULL;
      }
      if (answer == NULL) {
        herald_http_response_error(res, 503, "out of memory");
      } else {
        herald_http_response_json(res, 202, answer);
        json_decref(answer);
      }
    }
  }
  free(r);
}

int herald_feedback_routes(HeraldHttpRouter *router, HeraldIngest *ingest, HeraldError *err) {
  return herald_http_router_add(router, "POST", "/v1/apps/{app}/webhooks/mail", handle_mail, ingest, err);
}
