/* libFuzzer target for the email channel's message builder: bytes -> the fields of a message
 * (From, To, Subject, text and HTML bodies, idempotency key, an extra header, List-Unsubscribe)
 * -> herald_smtp_message_build. The fields come from templates rendered with endpoint data, so
 * whatever they hold must not break the message's structure.
 *
 * Input: one flags byte (bit 0: text body, bit 1: HTML body, bit 2: an extra header, bit 3:
 * List-Unsubscribe, bit 4: One-Click, bit 5: a second recipient), then the fields separated by
 * NUL bytes: from, to, to2, subject, text, html, key, header name, header value, unsubscribe.
 * Invariants checked on every message built:
 * - only 7-bit bytes, no NUL, every line ends with CRLF and has at most 998 characters;
 * - the header section holds exactly the headers the builder writes (Date, From, To, Subject,
 *   Message-ID, X-Herald-Message-Id, List-Unsubscribe(-Post), the extra header, MIME-Version,
 *   Content-Type and, for one part, Content-Transfer-Encoding), in that order, each once, every
 *   other line a continuation: no field can inject a header;
 * - the Subject, decoded as a mail reader decodes RFC 2047 words, is the subject given;
 * - each body part, decoded from quoted-printable, is the body given with its line breaks made
 *   CRLF. Build and run with tools/fuzz. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runtime/smtp_message.h"

#define NFIELDS 10

/* A failed check names itself, so a crash file's report says which invariant broke. */
#define require(ok)                                                         \
  do {                                                                      \
    if (!(ok)) {                                                            \
      fprintf(stderr, "smtp_message_fuzz.c:%d: check failed: %s\n", __LINE__, #ok); \
      abort();                                                              \
    }                                                                       \
  } while (0)

/* Field i of the input (NUL-separated), as a C string; missing fields are "". */
static char *field_copy(const uint8_t *data, size_t size, int i) {
  size_t start = 0;
  for (int k = 0; k < i; k++) {
    const uint8_t *nul = memchr(data + start, 0, size - start);
    if (nul == NULL) return strdup("");
    start = (size_t)(nul - data) + 1;
  }
  const uint8_t *nul = memchr(data + start, 0, size - start);
  size_t end = nul ? (size_t)(nul - data) : size;
  char *s = malloc(end - start + 1);
  require(s != NULL);
  memcpy(s, data + start, end - start);
  s[end - start] = '\0';
  return s;
}

static int b64val(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* An unfolded header value as a reader shows it: encoded words decoded, the white space
 * between two adjacent encoded words dropped (RFC 2047 §6.2). Returns a malloc'd string. */
static char *decode_unstructured(const char *v, size_t n) {
  char *out = malloc(n + 1);
  require(out != NULL);
  size_t o = 0, i = 0;
  int last_was_word = 0;
  while (i < n) {
    /* Readers decode any "=?charset?enc?text?=" in unstructured text, so "=?" may only start
     * one of the builder's own words. */
    if (n - i >= 2 && v[i] == '=' && v[i + 1] == '?') require(n - i >= 10 && memcmp(v + i, "=?UTF-8?B?", 10) == 0);
    if (n - i >= 10 && memcmp(v + i, "=?UTF-8?B?", 10) == 0) {
      const char *end = strstr(v + i + 10, "?=");
      require(end != NULL && (size_t)(end - v) < n);
      unsigned acc = 0;
      int bits = 0;
      for (const char *p = v + i + 10; p < end; p++) {
        if (*p == '=') break;
        int x = b64val((unsigned char)*p);
        require(x >= 0);
        acc = (acc << 6) | (unsigned)x;
        bits += 6;
        if (bits >= 8) {
          bits -= 8;
          out[o++] = (char)((acc >> bits) & 0xff);
        }
      }
      i = (size_t)(end - v) + 2;
      last_was_word = 1;
      continue;
    }
    if (last_was_word && (v[i] == ' ' || v[i] == '\t')) {
      size_t j = i;
      while (j < n && (v[j] == ' ' || v[j] == '\t')) j++;
      if (n - j >= 10 && memcmp(v + j, "=?UTF-8?B?", 10) == 0) {
        i = j;
        continue;
      }
    }
    out[o++] = v[i++];
    last_was_word = 0;
  }
  out[o] = '\0';
  return out;
}

/* Quoted-printable text between p and end, decoded. */
static char *decode_qp(const char *p, const char *end, size_t *len) {
  char *out = malloc((size_t)(end - p) + 1);
  require(out != NULL);
  size_t o = 0;
  while (p < end) {
    if (*p == '=') {
      require(end - p >= 3);
      if (p[1] == '\r' && p[2] == '\n') {
        p += 3;
        continue;
      }
      static const char hex[] = "0123456789ABCDEF";
      const char *h = memchr(hex, p[1], 16), *l = memchr(hex, p[2], 16);
      require(h != NULL && l != NULL && p[1] != '\0' && p[2] != '\0');
      out[o++] = (char)(((h - hex) << 4) | (l - hex));
      p += 3;
      continue;
    }
    out[o++] = *p++;
  }
  *len = o;
  return out;
}

/* s with every line break (CRLF, LF or CR) made CRLF. */
static char *crlf(const char *s, size_t *len) {
  size_t n = strlen(s);
  char *out = malloc(2 * n + 1);
  require(out != NULL);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\r' && s[i + 1] == '\n') continue;
    if (s[i] == '\r' || s[i] == '\n') {
      out[o++] = '\r';
      out[o++] = '\n';
    } else {
      out[o++] = s[i];
    }
  }
  *len = o;
  return out;
}

/* The body part whose content follows at p (up to the next boundary or the end) decodes to
 * want. A single part ends with a CRLF the builder adds when the body does not. */
static void check_part(const char *p, const char *msg_end, const char *boundary, const char *want) {
  const char *end = msg_end;
  if (boundary != NULL) {
    char delim[80];
    snprintf(delim, sizeof delim, "\r\n--%s", boundary);
    end = strstr(p, delim);
    require(end != NULL);
  }
  size_t got_len, want_len;
  char *got = decode_qp(p, end, &got_len);
  char *norm = crlf(want, &want_len);
  int same = got_len == want_len && memcmp(got, norm, want_len) == 0;
  if (!same && boundary == NULL && got_len == want_len + 2 && memcmp(got, norm, want_len) == 0 &&
      memcmp(got + want_len, "\r\n", 2) == 0 &&
      (want_len < 2 || memcmp(norm + want_len - 2, "\r\n", 2) != 0))
    same = 1;
  require(same);
  free(got);
  free(norm);
}

/* Whether a List-Unsubscribe value names an https: URI among its "<uri>, <uri>": only then does
 * a one-click message carry List-Unsubscribe-Post (RFC 8058 §3.1). */
static int names_https(const char *v) {
  for (const char *p = v; p != NULL; p = strchr(p, ',')) {
    if (*p == ',') p++;
    while (*p == ' ' || *p == '\t' || *p == '<') p++;
    if (strncasecmp(p, "https:", 6) == 0) return 1;
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int flags = data[0];
  char *f[NFIELDS];
  for (int i = 0; i < NFIELDS; i++) f[i] = field_copy(data + 1, size - 1, i);
  const char *to[2] = {f[1], f[2]};
  HeraldMailHeader extra = {f[7], f[8]};
  HeraldMailMessage m = {
    .from = f[0], .to = to, .nto = (flags & 32) ? 2 : 1, .subject = f[3],
    .text = (flags & 1) ? f[4] : NULL, .html = (flags & 2) ? f[5] : NULL, .message_key = f[6],
    .headers = &extra, .nheaders = (flags & 4) ? 1 : 0,
    .list_unsubscribe = (flags & 8) ? f[9] : NULL, .one_click = (flags & 16) != 0,
    .date_ms = 1764412800000LL,
  };
  char *msg = NULL;
  size_t len = 0;
  char mid[512];
  HeraldError err = {0};
  if (herald_smtp_message_build(&m, &msg, &len, mid, sizeof mid, &err) != kHeraldOk) {
    require(err.msg[0] != '\0' && msg == NULL);
    for (int i = 0; i < NFIELDS; i++) free(f[i]);
    return 0;
  }

  /* Bytes and lines. */
  require(strlen(msg) == len);
  size_t col = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)msg[i];
    require(ch != 0 && ch < 128);
    if (ch == '\r') {
      require(i + 1 < len && msg[i + 1] == '\n');
      i++;
      col = 0;
    } else {
      require(ch != '\n');
      require(++col <= 998);
    }
  }
  require(len >= 2 && memcmp(msg + len - 2, "\r\n", 2) == 0);

  /* The header section: the expected names in order, continuations only between them. */
  const char *expect[16];
  int ne = 0;
  expect[ne++] = "Date";
  expect[ne++] = "From";
  expect[ne++] = "To";
  expect[ne++] = "Subject";
  expect[ne++] = "Message-ID";
  expect[ne++] = "X-Herald-Message-Id";
  if (m.list_unsubscribe) {
    expect[ne++] = "List-Unsubscribe";
    if (m.one_click && names_https(m.list_unsubscribe)) expect[ne++] = "List-Unsubscribe-Post";
  }
  if (m.nheaders) expect[ne++] = extra.name;
  expect[ne++] = "MIME-Version";
  expect[ne++] = "Content-Type";
  int multipart = m.text != NULL && m.html != NULL;
  if (!multipart) expect[ne++] = "Content-Transfer-Encoding";
  const char *head_end = strstr(msg, "\r\n\r\n");
  require(head_end != NULL);
  int seen = 0;
  char *subject_value = NULL;
  size_t subject_len = 0;
  const char *line = msg;
  while (line < head_end + 2) {
    const char *eol = strstr(line, "\r\n");
    if (line[0] == ' ' || line[0] == '\t') {
      require(seen > 0);
      if (subject_value != NULL && seen == 4) {
        /* unfold: the CRLF goes, the white space stays */
        subject_value = realloc(subject_value, subject_len + (size_t)(eol - line) + 1);
        require(subject_value != NULL);
        memcpy(subject_value + subject_len, line, (size_t)(eol - line));
        subject_len += (size_t)(eol - line);
        subject_value[subject_len] = '\0';
      }
    } else {
      require(seen < ne);
      size_t nl = strlen(expect[seen]);
      require(strncasecmp(line, expect[seen], nl) == 0 && line[nl] == ':' && line[nl + 1] == ' ');
      seen++;
      if (seen == 4) {
        subject_len = (size_t)(eol - line) - nl - 2;
        subject_value = malloc(subject_len + 1);
        require(subject_value != NULL);
        memcpy(subject_value, line + nl + 2, subject_len);
        subject_value[subject_len] = '\0';
      }
    }
    line = eol + 2;
  }
  require(seen == ne);
  require(subject_value != NULL);
  char *subject = decode_unstructured(subject_value, subject_len);
  /* the subject is one line: each control character (CR LF as one) was written as a space */
  char *want = malloc(strlen(m.subject) + 1);
  require(want != NULL);
  size_t w = 0;
  for (const char *p = m.subject; *p; p++) {
    unsigned char ch = (unsigned char)*p;
    if (ch == '\r' && p[1] == '\n') continue;
    want[w++] = ch < 32 || ch == 127 ? ' ' : (char)ch;
  }
  want[w] = '\0';
  require(strcmp(subject, want) == 0);
  free(want);
  free(subject);
  free(subject_value);

  /* The bodies decode to what was given. */
  const char *body = head_end + 4;
  if (multipart) {
    const char *ct = "\r\nContent-Type: multipart/alternative; boundary=\"";
    const char *b = strstr(msg, ct);
    require(b != NULL && b < head_end);
    b += strlen(ct);
    const char *q = strchr(b, '"');
    require(q != NULL && q - b < 70);
    char boundary[72];
    memcpy(boundary, b, (size_t)(q - b));
    boundary[q - b] = '\0';
    /* Each part starts after a delimiter line and its own header lines; the delimiter cannot
     * occur in quoted-printable content (the boundary starts with "=_"). */
    char delim[80];
    snprintf(delim, sizeof delim, "--%s\r\n", boundary);
    const char *d1 = strstr(body, delim);
    require(d1 != NULL);
    const char *c1 = strstr(d1, "\r\n\r\n");
    require(c1 != NULL);
    check_part(c1 + 4, msg + len, boundary, m.text);
    const char *d2 = strstr(c1 + 4, delim);
    require(d2 != NULL);
    const char *c2 = strstr(d2, "\r\n\r\n");
    require(c2 != NULL);
    check_part(c2 + 4, msg + len, boundary, m.html);
    char closing[80];
    snprintf(closing, sizeof closing, "\r\n--%s--\r\n", boundary);
    require(len >= strlen(closing) && strcmp(msg + len - strlen(closing), closing) == 0);
  } else {
    check_part(body, msg + len, NULL, m.text ? m.text : m.html);
  }

  free(msg);
  for (int i = 0; i < NFIELDS; i++) free(f[i]);
  return 0;
}
