#include "runtime/smtp_message.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "runtime/buffer.h"

#define MAX_LINE 998  /* RFC 5322 §2.1.1 */

/* The message being built; after a failed allocation the rest is skipped and the build fails
 * once, at the end. */
typedef struct {
  HeraldBuf text;
  int failed;
} Buf;

static void buf_add(Buf *b, const char *s, size_t n) {
  if (!b->failed && herald_buf_add(&b->text, s, n) != 0) b->failed = 1;
}

static void buf_str(Buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_fmt(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_fmt(Buf *b, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->failed = 1;
    return;
  }
  buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static int is_ascii_printable(const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p < 32 || *p > 126) return 0;
  return 1;
}

static int has_line_break(const char *s) { return strpbrk(s, "\r\n") != NULL; }

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64(Buf *b, const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n; i += 3) {
    unsigned v = (unsigned)s[i] << 16;
    if (i + 1 < n) v |= (unsigned)s[i + 1] << 8;
    if (i + 2 < n) v |= s[i + 2];
    char out[4] = {B64[(v >> 18) & 63], B64[(v >> 12) & 63],
                   i + 1 < n ? B64[(v >> 6) & 63] : '=', i + 2 < n ? B64[v & 63] : '='};
    buf_add(b, out, 4);
  }
}

/* Length of the UTF-8 sequence starting with byte c (1 for stray bytes). */
static size_t utf8_len(unsigned char c) {
  if (c >= 0xF0 && c < 0xF8) return 4;
  if (c >= 0xE0) return c < 0xF0 ? 3 : 1;
  if (c >= 0xC0) return 2;
  return 1;
}

/* RFC 2047 B encoded words, folded between words. Each word carries at most 39 bytes (52
 * base64 characters, a 64-character word), so even after "Subject: " a line stays under 78,
 * and never splits a UTF-8 sequence. */
static void encoded_words(Buf *b, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t n = strlen(s);
  size_t i = 0;
  int first = 1;
  while (i < n) {
    size_t j = i;
    while (j < n) {
      size_t k = utf8_len(p[j]);
      if (j + k > n) k = n - j;
      if (j + k - i > 39) break;
      j += k;
    }
    if (!first) buf_str(b, "\r\n ");
    buf_str(b, "=?UTF-8?B?");
    b64(b, p + i, j - i);
    buf_str(b, "?=");
    first = 0;
    i = j;
  }
}

/* Unstructured header text: as is when plain ASCII, else encoded words. Readers decode
 * anything shaped like "=?charset?B?text?=" in such text (RFC 2047 §5), so ASCII text holding
 * "=?" is encoded too, or a subject quoting one would be shown decoded. */
static void header_text(Buf *b, const char *s) {
  if (is_ascii_printable(s) && strstr(s, "=?") == NULL) buf_str(b, s); else encoded_words(b, s);
}

/* Plain ASCII header text folded at white space (RFC 5322 §2.2.3): each line break goes before
 * a space or tab, which stays, so unfolding gives the text back as it was. A line is broken
 * where the next word would take it past 78 characters; a word longer than that stays whole.
 * col is where the text starts on its first line. Writes into b unless it is NULL; returns
 * the length of the longest line. */
static size_t fold_words(Buf *b, size_t col, const char *s) {
  size_t at = col, longest = col;
  int written = 0; /* some of s is on the current line: a break before it would leave it empty */
  for (const char *p = s; *p;) {
    size_t ws = strspn(p, " \t");
    size_t word = strcspn(p + ws, " \t");
    size_t n = ws + word;
    /* never before trailing white space: a folded line may not be white space only */
    if (written && ws > 0 && word > 0 && at + n > 78) {
      if (b != NULL) buf_str(b, "\r\n");
      at = 0;
    }
    if (b != NULL) buf_add(b, p, n);
    at += n;
    if (at > longest) longest = at;
    written = 1;
    p += n;
  }
  return longest;
}

/* Unstructured header text that may be long (a subject, a header of the caller's), starting at
 * column col: plain ASCII folded at white space, else encoded words (see header_text). With
 * encode_long, ASCII text with a word too long for any line (998 characters) is encoded words
 * too, which may break anywhere; without it, such a line is refused by check_lines, naming
 * the field, as the value may be structured and encoded words would change it. */
static void folded_text(Buf *b, size_t col, const char *s, int encode_long) {
  if (!is_ascii_printable(s) || strstr(s, "=?") != NULL) encoded_words(b, s);
  else if (encode_long && fold_words(NULL, col, s) > MAX_LINE) encoded_words(b, s);
  else fold_words(b, col, s);
}

/* A comma-separated header value, folded after commas where a line would pass 78 characters.
 * Never before the first item: the field name's line would hold no value, and a reader
 * unfolding it gets the value with a space in front. */
static void fold_list(Buf *b, size_t col, const char *v) {
  for (const char *start = v; *v;) {
    const char *comma = strchr(v, ',');
    size_t n = comma ? (size_t)(comma - v) + 1 : strlen(v);
    if (v > start && col > 1 && col + n > 78) {
      /* A continuation line must start with white space. */
      buf_str(b, *v == ' ' || *v == '\t' ? "\r\n" : "\r\n ");
      col = 1;
    }
    buf_add(b, v, n);
    col += n;
    v += n;
  }
}

/* atext (RFC 5322 §3.2.3): what an unquoted local part or domain is made of, with dots between. */
static int is_atext(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         (ch != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", ch) != NULL);
}

/* Whether s[0..n) is a dot-atom: atext runs joined by single dots, none at either end (RFC 5321
 * Dot-string for a local part, RFC 5322 §3.4.1 dot-atom for a domain). Bytes of 128 and over
 * pass here: check_addr refuses them apart, saying SMTPUTF8 would be needed. */
static int is_dot_atom(const char *s, size_t n) {
  if (n == 0 || s[0] == '.' || s[n - 1] == '.') return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '.' ? s[i + 1] == '.' : ch < 128 && !is_atext(ch)) return 0;
  }
  return 1;
}

/* Whether s[0..n) is a domain literal such as [192.0.2.1] or [IPv6:2001:db8::1] (RFC 5321
 * address-literal, read as RFC 5322 §3.4.1 dtext: printable ASCII but [ ] and \). */
static int is_domain_literal(const char *s, size_t n) {
  if (n < 3 || s[0] != '[' || s[n - 1] != ']') return 0;
  for (size_t i = 1; i + 1 < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch < 33 || ch > 126 || ch == '[' || ch == ']' || ch == '\\') return 0;
  }
  return 1;
}

/* An address is local-part "@" domain (RFC 5321 §4.1.2 Mailbox), with an unquoted local part:
 * a quoted one ("a b"@example.com) is not supported, so a local part cannot hold an '@', a
 * space or a special, nor start or end with a dot or hold two in a row, and the address has
 * exactly one '@'. The domain is a dot-atom, or a domain literal: no empty label, so no
 * leading or trailing dot either. A trailing dot makes a fully qualified name in DNS, but RFC
 * 5321's Domain has none and servers refuse or misroute "user@example.com.", so it is refused
 * here, naming the address, rather than by the server at RCPT, which would read as a bounce.
 *
 * Addresses are ASCII: a UTF-8 one (RFC 6531) needs the server's SMTPUTF8 and headers in UTF-8
 * (RFC 6532). libcurl sends such an address whether or not the server offered SMTPUTF8, and
 * does not tell which it was, so a refusal could not be told from a bad mailbox: the message
 * is refused here, saying why, rather than sent to a server that may misread it. */
static int check_addr(const char *a, size_t n, const char *field, HeraldError *err) {
  const char *at = memchr(a, '@', n);
  if (at == NULL)
    return herald_error_set(err, kHeraldInvalid, "%s: '%.*s' is not an address (user@domain)",
                            field, (int)n, a);
  size_t local_len = (size_t)(at - a), domain_len = n - local_len - 1;
  const char *domain = at + 1;
  if (!is_dot_atom(a, local_len) ||
      (!is_dot_atom(domain, domain_len) && !is_domain_literal(domain, domain_len)))
    return herald_error_set(err, kHeraldInvalid, "%s: '%.*s' is not an address (user@domain)",
                            field, (int)n, a);
  int local_utf8 = 0, domain_utf8 = 0;
  for (size_t i = 0; i < n; i++) {
    if ((unsigned char)a[i] >= 128) {
      if (a + i < at) local_utf8 = 1; else domain_utf8 = 1;
    }
  }
  if (local_utf8)
    return herald_error_set(err, kHeraldInvalid,
                            "%s: '%.*s': a non-ASCII address needs SMTPUTF8, which this channel "
                            "does not speak", field, (int)n, a);
  if (domain_utf8)
    return herald_error_set(err, kHeraldInvalid,
                            "%s: '%.*s': a non-ASCII domain needs SMTPUTF8, which this channel "
                            "does not speak (give the domain in its ASCII form, xn--...)",
                            field, (int)n, a);
  return kHeraldOk;
}

/* Splits "Name <addr>" into name (possibly empty, quotes removed: *quoted says so, and its
 * quoted-pairs are still escaped) and addr. */
static int parse_mailbox(const char *mb, const char *field, const char **name, size_t *name_len,
                         int *quoted, const char **addr, size_t *addr_len, HeraldError *err) {
  if (mb == NULL || *mb == '\0') return herald_error_set(err, kHeraldInvalid, "%s: missing", field);
  if (has_line_break(mb))
    return herald_error_set(err, kHeraldInvalid, "%s: line breaks are not allowed", field);
  *quoted = 0;
  const char *lt = strrchr(mb, '<');
  if (lt == NULL) {
    while (*mb == ' ') mb++;
    size_t n = strlen(mb);
    while (n > 0 && mb[n - 1] == ' ') n--;
    *name = mb;
    *name_len = 0;
    *addr = mb;
    *addr_len = n;
  } else {
    const char *gt = strchr(lt, '>');
    if (gt == NULL || gt[1 + strspn(gt + 1, " ")] != '\0')
      return herald_error_set(err, kHeraldInvalid, "%s: '<' without a closing '>' at the end", field);
    const char *s = mb, *e = lt;
    while (s < e && *s == ' ') s++;
    while (e > s && e[-1] == ' ') e--;
    if (e - s >= 2 && *s == '"' && e[-1] == '"') {
      s++;
      e--;
      *quoted = 1;
    }
    *name = s;
    *name_len = (size_t)(e - s);
    *addr = lt + 1;
    *addr_len = (size_t)(gt - lt - 1);
  }
  return check_addr(*addr, *addr_len, field, err);
}

int herald_smtp_address(const char *mailbox, const char *field, char *out, size_t size,
                        HeraldError *err) {
  const char *name, *addr;
  size_t nl, al;
  int quoted;
  int rc = parse_mailbox(mailbox, field, &name, &nl, &quoted, &addr, &al, err);
  if (rc != kHeraldOk) return rc;
  if (al + 1 > size) return herald_error_set(err, kHeraldInvalid, "%s: address too long", field);
  memcpy(out, addr, al);
  out[al] = '\0';
  return kHeraldOk;
}

static int mailbox_header(Buf *b, const char *mb, const char *field, HeraldError *err) {
  const char *name, *addr;
  size_t nl, al;
  int quoted;
  int rc = parse_mailbox(mb, field, &name, &nl, &quoted, &addr, &al, err);
  if (rc != kHeraldOk) return rc;
  if (nl > 0) {
    char *n = strndup(name, nl);
    if (n == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
    /* The name as the reader sees it: a quoted string's quoted-pairs (\" and \\) stand for the
     * character after the backslash (RFC 5322 §3.2.4). It is quoted or encoded again below, so
     * escaping the written escapes would show the backslashes. */
    if (quoted) {
      char *w = n;
      for (const char *p = n; *p; p++) {
        if (*p == '\\' && p[1] != '\0') p++;
        *w++ = *p;
      }
      *w = '\0';
    }
    if (!is_ascii_printable(n)) {
      encoded_words(b, n);
    } else {
      /* A quoted string keeps specials such as ',' and '.' in a display name harmless. */
      buf_str(b, "\"");
      for (const char *p = n; *p; p++) {
        if (*p == '"' || *p == '\\') buf_add(b, "\\", 1);
        buf_add(b, p, 1);
      }
      buf_str(b, "\"");
    }
    free(n);
    buf_str(b, " ");
  }
  buf_str(b, "<");
  buf_add(b, addr, al);
  buf_str(b, ">");
  return kHeraldOk;
}

/* Headers whose value is a list of mailboxes (RFC 5322 §3.6.2; RFC 8098; common extensions):
 * a display name in them may be encoded, the addresses may not. To, Cc, Bcc and the Resent-
 * fields are refused (RESERVED). */
static const char *const ADDRESS_HEADERS[] = {
  "reply-to", "sender", "disposition-notification-to", "return-receipt-to", "errors-to",
  "mail-followup-to", "mail-reply-to",
};

static int is_address_header(const char *name) {
  for (size_t k = 0; k < sizeof ADDRESS_HEADERS / sizeof ADDRESS_HEADERS[0]; k++)
    if (strcasecmp(name, ADDRESS_HEADERS[k]) == 0) return 1;
  return 0;
}

/* A mailbox list with non-ASCII display names: each mailbox written as From's is (its name
 * encoded, its address as is), one a line. Encoding the whole value instead would make it a
 * single encoded word, which readers take for a display name without an address. Commas
 * inside a quoted name or the angle brackets do not separate mailboxes. */
static int address_header(Buf *b, const char *v, const char *field, HeraldError *err) {
  const char *start = v;
  int quoted = 0, angle = 0, first = 1;
  for (const char *p = v;; p++) {
    if (quoted && *p == '\\' && p[1] != '\0') {
      p++;
      continue;
    }
    if (*p == '"') quoted = !quoted;
    else if (!quoted && *p == '<') angle = 1;
    else if (!quoted && *p == '>') angle = 0;
    if (*p != '\0' && (*p != ',' || quoted || angle)) continue;
    char *mb = strndup(start, (size_t)(p - start));
    if (mb == NULL) return herald_error_set(err, kHeraldNoMemory, "out of memory");
    if (!first) buf_str(b, ",\r\n ");
    int rc = mailbox_header(b, mb, field, err);
    free(mb);
    if (rc != kHeraldOk) return rc;
    first = 0;
    if (*p == '\0') return kHeraldOk;
    start = p + 1;
  }
}

/* Quoted-printable (RFC 2045 §6.7) with every line break made CRLF. Because '=' is always
 * encoded, the output never contains "=_", which the boundary starts with. No line break is
 * added at the end: the CRLF before a boundary delimiter belongs to the delimiter. */
static void quoted_printable(Buf *b, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  size_t col = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    unsigned char ch = *p;
    if (ch == '\r' && p[1] == '\n') continue;
    if (ch == '\n' || ch == '\r') {
      buf_str(b, "\r\n");
      col = 0;
      continue;
    }
    int at_eol = p[1] == '\0' || p[1] == '\n' || p[1] == '\r';
    char enc[3];
    size_t n;
    if ((ch >= 33 && ch <= 126 && ch != '=') || ((ch == ' ' || ch == '\t') && !at_eol)) {
      enc[0] = (char)ch;
      n = 1;
    } else {
      enc[0] = '=';
      enc[1] = hex[ch >> 4];
      enc[2] = hex[ch & 15];
      n = 3;
    }
    if (col + n > 75) {
      buf_str(b, "=\r\n");
      col = 0;
    }
    buf_add(b, enc, n);
    col += n;
  }
}

static void part(Buf *b, const char *type, const char *content) {
  buf_fmt(b, "Content-Type: %s; charset=UTF-8\r\n", type);
  buf_str(b, "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
  quoted_printable(b, content);
}

/* Header names a message's or a profile's own headers may not use, and why. A name ending in
 * '-' stands for every name it starts. */
typedef struct {
  const char *name;
  const char *why;
} Reserved;

#define BUILT "set by the message itself (use its own field)"
static const Reserved RESERVED[] = {
  /* Written by herald_smtp_message_build itself, from the message's own fields: a second one
   * would make the header appear twice (RFC 5322 §3.6 allows one Date, From, To, Subject and
   * Message-ID; RFC 2045 one MIME-Version and Content-Type), or, for Content-*,
   * describe a body other than the one built. Cc and Bcc are not written, but recipients go in
   * the envelope from `to` alone: a Cc or Bcc header would name people who never get it. */
  {"date", BUILT},
  {"from", BUILT},
  {"to", BUILT},
  {"cc", BUILT},
  {"bcc", BUILT},
  {"subject", BUILT},
  {"message-id", BUILT},
  {"x-herald-message-id", BUILT},
  {"list-unsubscribe", BUILT},
  {"list-unsubscribe-post", BUILT},
  {"mime-version", BUILT},
  {"content-type", BUILT},
  {"content-transfer-encoding", BUILT},
  /* Trace fields (RFC 5322 §3.6.7): written by the servers the message passes through, never by
   * its author. The delivering server writes Return-Path from the envelope sender (RFC 5321
   * §4.4), so one in the message is either doubled or taken for the real one: set the sender
   * with envelope_from. A Received written by the sender forges a hop. */
  {"return-path", "written by the delivering server from the envelope sender (use envelope_from)"},
  {"received", "a trace field, written by each server the message passes through"},
  /* Resent fields (RFC 5322 §3.6.6) mark a message a user sends again, and readers show them as
   * who resent it; a campaign's messages are new, so any would be false. */
  {"resent-", "marks a message resent by a user; a campaign's messages are new ones"},
  /* Written by the servers that check or pass the message on, after it is sent: the receiving
   * server's verdict on SPF, DKIM and DMARC (RFC 8601 §5 has it remove any it did not write,
   * so one written here is dropped or taken for a forgery), ARC sets of the servers that
   * forward it (RFC 8617), and the DKIM signature, computed over each message as it leaves by
   * the signing server: a fixed one never matches and fails the message's DKIM. */
  {"authentication-results", "written by the receiving server once it has checked the message (RFC 8601)"},
  {"arc-", "written by servers that forward the message (RFC 8617)"},
  {"dkim-signature", "computed over each message by the signing server as it leaves (set up DKIM signing there)"},
};
#undef BUILT

const char *herald_smtp_header_reserved(const char *name) {
  for (size_t k = 0; k < sizeof RESERVED / sizeof RESERVED[0]; k++) {
    const char *r = RESERVED[k].name;
    size_t n = strlen(r);
    if (r[n - 1] == '-' ? strncasecmp(name, r, n) == 0 : strcasecmp(name, r) == 0)
      return RESERVED[k].why;
  }
  return NULL;
}

const char *herald_smtp_header_problem(const char *name, const char *value) {
  if (name == NULL || *name == '\0') return "missing name";
  /* a field name is printable ASCII without ':' (RFC 5322 §2.2): a space or a control byte
   * would end the name early or inject a line */
  for (const unsigned char *p = (const unsigned char *)name; *p; p++)
    if (*p < 33 || *p > 126 || *p == ':')
      return "invalid header name (printable ASCII without spaces or ':')";
  const char *why = herald_smtp_header_reserved(name);
  if (why != NULL) return why;
  if (value == NULL || has_line_break(value)) return "value missing or has a line break";
  return NULL;
}

#define LIMIT_DIGITS(n) #n
#define LIMIT_TEXT(n) LIMIT_DIGITS(n)

/* Characters, not bytes: Pinpoint counts a header's characters, and a value may be UTF-8. */
static size_t utf8_chars(const char *s) {
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if ((*p & 0xC0) != 0x80) n++;
  return n;
}

const char *herald_smtp_given_value_too_long(const char *value) {
  if (value != NULL && utf8_chars(value) > HERALD_SMTP_GIVEN_VALUE_MAX)
    return "at most " LIMIT_TEXT(HERALD_SMTP_GIVEN_VALUE_MAX) " characters, rendered attributes included";
  return NULL;
}

const char *herald_smtp_header_given_problem(const char *name, const char *value) {
  if (name != NULL && utf8_chars(name) > HERALD_SMTP_GIVEN_NAME_MAX)
    return "at most " LIMIT_TEXT(HERALD_SMTP_GIVEN_NAME_MAX) " characters";
  const char *too_long = herald_smtp_given_value_too_long(value);
  if (too_long != NULL) return too_long;
  if (name != NULL && strcasecmp(name, "list-unsubscribe") == 0) {
    if (value != NULL && (has_line_break(value) || !is_ascii_printable(value)))
      return "ASCII URIs without line breaks";
    return NULL;
  }
  if (name != NULL && strcasecmp(name, "list-unsubscribe-post") == 0) {
    if (value != NULL && strcmp(value, "List-Unsubscribe=One-Click") != 0)
      return "must be List-Unsubscribe=One-Click (RFC 8058)";
    return NULL;
  }
  return herald_smtp_header_problem(name, value != NULL ? value : "");
}

static int check_header(const HeraldMailHeader *h, size_t i, HeraldError *err) {
  if (h->name == NULL || *h->name == '\0')
    return herald_error_set(err, kHeraldInvalid, "headers[%zu]: missing name", i + 1);
  const char *why = herald_smtp_header_problem(h->name, h->value);
  if (why != NULL) return herald_error_set(err, kHeraldInvalid, "headers['%s']: %s", h->name, why);
  return kHeraldOk;
}

/* The key in a msg-id: atext characters pass, others become =XX, so distinct keys stay
 * distinct and the id stays valid (RFC 5322 §3.6.4). */
static void msgid_key(Buf *b, const char *key) {
  static const char hex[] = "0123456789ABCDEF";
  for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
    unsigned char ch = *p;
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             strchr("!#$%&'*+-/?^_`{|}~", ch) != NULL ||
             (ch == '.' && p != (const unsigned char *)key && p[1] != '\0' && p[1] != '.');
    if (ok) {
      buf_add(b, (const char *)p, 1);
    } else {
      char enc[3] = {'=', hex[ch >> 4], hex[ch & 15]};
      buf_add(b, enc, 3);
    }
  }
}

static uint64_t fnv1a(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

/* Every header line must stay under the RFC's 998 characters; folded lines are measured
 * piecewise. The header written since offset `from` of b is checked, so the error can name its
 * field. */
static int check_lines(const Buf *b, size_t from, const char *field, HeraldError *err) {
  size_t col = 0;
  for (size_t i = from; i < b->text.len; i++) {
    if (b->text.data[i] == '\n') {
      col = 0;
    } else if (++col > MAX_LINE) {
      return herald_error_set(err, kHeraldInvalid, "%s: a header line is longer than %d characters",
                              field, MAX_LINE);
    }
  }
  return kHeraldOk;
}

/* Whether a List-Unsubscribe value ("<uri>, <uri>") holds an https: URI: RFC 8058 §3.1 has the
 * one-click POST sent to it, so List-Unsubscribe-Post goes only with one. */
static int has_https_uri(const char *v) {
  for (const char *p = v; p != NULL; p = strchr(p, ',')) {
    if (*p == ',') p++;
    p += strspn(p, " \t<");
    if (strncasecmp(p, "https:", 6) == 0) return 1;
  }
  return 0;
}

/* s on one line: a line break would end the header (and could start another one, such as a
 * Bcc from an endpoint's attribute); every control character, CR LF as one, becomes a space. */
static char *one_line(const char *s) {
  char *out = strdup(s);
  if (out == NULL) return NULL;
  char *w = out;
  for (const char *p = s; *p; p++) {
    unsigned char ch = (unsigned char)*p;
    if (ch == '\r' && p[1] == '\n') continue;
    *w++ = ch < 32 || ch == 127 ? ' ' : (char)ch;
  }
  *w = '\0';
  return out;
}

int herald_smtp_message_build(const HeraldMailMessage *m, char **out, size_t *out_len,
                              char *message_id, size_t message_id_size, HeraldError *err) {
  *out = NULL;
  *out_len = 0;
  if (m->text == NULL && m->html == NULL)
    return herald_error_set(err, kHeraldInvalid, "text or html: a message needs a body");
  if (m->nto == 0) return herald_error_set(err, kHeraldInvalid, "to: at least one recipient");
  if (m->message_key == NULL || *m->message_key == '\0')
    return herald_error_set(err, kHeraldInvalid, "message_id: missing (the idempotency key)");
  if (m->list_unsubscribe != NULL &&
      (has_line_break(m->list_unsubscribe) || !is_ascii_printable(m->list_unsubscribe)))
    return herald_error_set(err, kHeraldInvalid, "list_unsubscribe: ASCII URIs without line breaks");
  for (size_t i = 0; i < m->nheaders; i++) {
    int rc = check_header(&m->headers[i], i, err);
    if (rc != kHeraldOk) return rc;
  }
  char from_addr[512];
  int rc = herald_smtp_address(m->from, "from", from_addr, sizeof from_addr, err);
  if (rc != kHeraldOk) return rc;
  const char *domain = strrchr(from_addr, '@') + 1;

  Buf b = {0};
  Buf mid = {0};
  buf_str(&mid, "<");
  msgid_key(&mid, m->message_key);
  buf_fmt(&mid, "@%s>", domain);
  if (mid.failed || mid.text.len + 1 > message_id_size) {
    free(mid.text.data);
    return herald_error_set(err, kHeraldInvalid, "message_id: too long");
  }
  memcpy(message_id, mid.text.data, mid.text.len + 1);
  free(mid.text.data);

  time_t secs = (time_t)(m->date_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  buf_fmt(&b, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n", days[tm.tm_wday], tm.tm_mday,
          months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  size_t at = b.text.len;
  buf_str(&b, "From: ");
  if ((rc = mailbox_header(&b, m->from, "from", err)) != kHeraldOk) goto fail;
  if ((rc = check_lines(&b, at, "from", err)) != kHeraldOk) goto fail;
  for (size_t i = 0; i < m->nto; i++) {
    char field[32];
    snprintf(field, sizeof field, "to[%zu]", i + 1);
    at = b.text.len;
    buf_str(&b, i == 0 ? "\r\nTo: " : ",\r\n ");
    if ((rc = mailbox_header(&b, m->to[i], field, err)) != kHeraldOk) goto fail;
    if ((rc = check_lines(&b, at, field, err)) != kHeraldOk) goto fail;
  }
  at = b.text.len;
  buf_str(&b, "\r\nSubject: ");
  if (m->subject != NULL) {
    char *subject = one_line(m->subject);
    if (subject == NULL) {
      rc = herald_error_set(err, kHeraldNoMemory, "out of memory");
      goto fail;
    }
    folded_text(&b, strlen("Subject: "), subject, 1);
    free(subject);
    if ((rc = check_lines(&b, at, "subject", err)) != kHeraldOk) goto fail;
  }
  buf_fmt(&b, "\r\nMessage-ID: %s\r\n", message_id);
  /* The key again, verbatim: relays that rewrite Message-ID keep other headers, and bounces and
   * complaints quote them back (runtime/feedback.h matches on it first). */
  buf_str(&b, "X-Herald-Message-Id: ");
  header_text(&b, m->message_key);
  buf_str(&b, "\r\n");
  if (m->list_unsubscribe != NULL) {
    at = b.text.len;
    buf_str(&b, "List-Unsubscribe: ");
    fold_list(&b, strlen("List-Unsubscribe: "), m->list_unsubscribe);
    if ((rc = check_lines(&b, at, "list_unsubscribe", err)) != kHeraldOk) goto fail;
    buf_str(&b, "\r\n");
    if (m->one_click && has_https_uri(m->list_unsubscribe))
      buf_str(&b, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
  }
  for (size_t i = 0; i < m->nheaders; i++) {
    const HeraldMailHeader *h = &m->headers[i];
    char field[160];
    snprintf(field, sizeof field, "headers['%s']", h->name);
    at = b.text.len;
    buf_str(&b, h->name);
    buf_str(&b, ": ");
    /* plain ASCII goes as given (a group, a comment, what the caller wrote) */
    if (is_address_header(h->name) && (!is_ascii_printable(h->value) || strstr(h->value, "=?"))) {
      if ((rc = address_header(&b, h->value, field, err)) != kHeraldOk) goto fail;
    } else {
      folded_text(&b, strlen(h->name) + 2, h->value, 0);
    }
    if ((rc = check_lines(&b, at, field, err)) != kHeraldOk) goto fail;
    buf_str(&b, "\r\n");
  }
  buf_str(&b, "MIME-Version: 1.0\r\n");
  if ((rc = check_lines(&b, 0, "message_id", err)) != kHeraldOk) goto fail;
  if (m->text != NULL && m->html != NULL) {
    char boundary[64];
    snprintf(boundary, sizeof boundary, "=_herald_%016llx", (unsigned long long)fnv1a(m->message_key));
    buf_fmt(&b, "Content-Type: multipart/alternative; boundary=\"%s\"\r\n\r\n", boundary);
    buf_str(&b, "This is a multi-part message in MIME format.\r\n");
    buf_fmt(&b, "\r\n--%s\r\n", boundary);
    part(&b, "text/plain", m->text);
    buf_fmt(&b, "\r\n--%s\r\n", boundary);
    part(&b, "text/html", m->html);
    buf_fmt(&b, "\r\n--%s--\r\n", boundary);
  } else {
    part(&b, m->text ? "text/plain" : "text/html", m->text ? m->text : m->html);
    if (b.text.len < 2 || memcmp(b.text.data + b.text.len - 2, "\r\n", 2) != 0) buf_str(&b, "\r\n");
  }
  if (b.failed) {
    rc = herald_error_set(err, kHeraldNoMemory, "out of memory");
    goto fail;
  }
  *out = b.text.data;
  *out_len = b.text.len;
  return kHeraldOk;
fail:
  free(b.text.data);
  return rc;
}
