/* Dates for the now and dateFormat helpers: the Java SimpleDateFormat patterns Pinpoint
 * documents for them, a subset, formatted and parsed in a time zone of runtime/tz.h.
 *
 * Letters: yyyy yy (year), MMMM MMM MM M (month), dd d (day), HH H (hour 0-23), hh h (hour
 * 1-12), mm m, ss s, SSS (milliseconds), a (AM/PM), EEEE EEE (day of the week), z (zone
 * abbreviation), Z (-0500), X XX XXX (-05, -0500, -05:00, or Z at UTC). As in Java, a count
 * beyond the letter's longest form pads numbers with zeros, and text between single quotes is
 * literal ('' is a quote). The styles full, long, medium and short are the US English date
 * styles of java.text.DateFormat. Names are English. Other letters are refused when a template
 * is compiled with a literal pattern (template_date_check_pattern); in a pattern that only
 * arrives at render time they are printed as they are, since a stored template must render. */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "runtime/template_internal.h"

static const char *const kMonths[12] = {"January", "February", "March",     "April",
                                        "May",     "June",     "July",      "August",
                                        "September", "October", "November", "December"};
static const char *const kDays[7] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                     "Thursday", "Friday", "Saturday"};

static const struct {
  const char *name;
  const char *pattern;
} kStyles[] = {
  {"full", "EEEE, MMMM d, yyyy"},
  {"long", "MMMM d, yyyy"},
  {"medium", "MMM d, yyyy"},
  {"short", "M/d/yy"},
};

#define SUPPORTED_LETTERS "yMdHhmsSaEzZX"

/* A style name stands for its pattern. */
static void resolve_style(const char **pat, size_t *len) {
  for (size_t i = 0; i < sizeof kStyles / sizeof kStyles[0]; i++) {
    if (strlen(kStyles[i].name) == *len && memcmp(kStyles[i].name, *pat, *len) == 0) {
      *pat = kStyles[i].pattern;
      *len = strlen(*pat);
      return;
    }
  }
}

typedef enum { kTokEnd, kTokLetter, kTokText, kTokOpenQuote } TokenKind;

typedef struct {
  TokenKind kind;
  char letter;
  size_t count;
  const char *text;    /* kTokText */
  size_t len;
} Token;

typedef struct {
  const char *s;
  size_t len, i;
  int in_quote;
} Scan;

static int is_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

/* The next run of one letter or of literal text. kTokOpenQuote: the pattern ended inside
 * quotes. */
static void next_token(Scan *sc, Token *t) {
  memset(t, 0, sizeof *t);
  if (sc->i >= sc->len) {
    t->kind = sc->in_quote ? kTokOpenQuote : kTokEnd;
    return;
  }
  char c = sc->s[sc->i];
  if (c == '\'') {
    if (sc->i + 1 < sc->len && sc->s[sc->i + 1] == '\'') {
      t->kind = kTokText;
      t->text = sc->s + sc->i;
      t->len = 1;
      sc->i += 2;
      return;
    }
    sc->in_quote = !sc->in_quote;
    sc->i++;
    next_token(sc, t);
    return;
  }
  size_t start = sc->i;
  if (sc->in_quote) {
    while (sc->i < sc->len && sc->s[sc->i] != '\'') sc->i++;
  } else if (is_letter(c)) {
    while (sc->i < sc->len && sc->s[sc->i] == c) sc->i++;
    t->kind = kTokLetter;
    t->letter = c;
    t->count = sc->i - start;
    return;
  } else {
    while (sc->i < sc->len && sc->s[sc->i] != '\'' && !is_letter(sc->s[sc->i])) sc->i++;
  }
  t->kind = kTokText;
  t->text = sc->s + start;
  t->len = sc->i - start;
}

int template_date_check_pattern(const char *pat, size_t len, char *why, size_t whylen) {
  resolve_style(&pat, &len);
  Scan sc = {.s = pat, .len = len};
  for (;;) {
    Token t;
    next_token(&sc, &t);
    if (t.kind == kTokEnd) return 0;
    if (t.kind == kTokOpenQuote) {
      snprintf(why, whylen, "unterminated quote in date pattern \"%.*s\"", (int)len, pat);
      return -1;
    }
    if (t.kind == kTokLetter && strchr(SUPPORTED_LETTERS, t.letter) == NULL) {
      snprintf(why, whylen,
               "unsupported letter '%c' in date pattern \"%.*s\" (supported: y M d H h m s S a E z "
               "Z X, or full, long, medium, short; quote literal text as 'text')",
               t.letter, (int)len, pat);
      return -1;
    }
  }
}

/* ---- formatting ---- */

typedef struct {
  TemplateRender *r;
  char *buf;
  size_t len, cap;
} Out;

static int put(Out *o, const char *s, size_t n) {
  return template_text_append(o->r, &o->buf, &o->len, &o->cap, s, n);
}

/* v in at least width digits, as Java pads numbers to the letter's count. */
static int put_number(Out *o, long v, size_t width) {
  char num[24];
  int n = snprintf(num, sizeof num, "%ld", v);
  for (size_t i = (size_t)n; i < width; i++)
    if (put(o, "0", 1) != 0) return -1;
  return put(o, num, (size_t)n);
}

/* offset_s as -05, -0500 or -05:00 (digits 2, 4 or 5 with the colon). */
static int put_offset(Out *o, int offset_s, int form) {
  int a = offset_s < 0 ? -offset_s : offset_s;
  char z[16];
  int n;
  if (form == 2) n = snprintf(z, sizeof z, "%c%02d", offset_s < 0 ? '-' : '+', a / 3600);
  else if (form == 4) n = snprintf(z, sizeof z, "%c%02d%02d", offset_s < 0 ? '-' : '+', a / 3600, a / 60 % 60);
  else n = snprintf(z, sizeof z, "%c%02d:%02d", offset_s < 0 ? '-' : '+', a / 3600, a / 60 % 60);
  return put(o, z, (size_t)n);
}

static int put_field(Out *o, const Token *t, const HeraldLocalTime *lt) {
  const HeraldWallTime *w = &lt->wall;
  size_t c = t->count;
  switch (t->letter) {
    case 'y': return c == 2 ? put_number(o, w->year % 100, 2) : put_number(o, w->year, c);
    case 'M':
      if (c >= 4) return put(o, kMonths[w->month - 1], strlen(kMonths[w->month - 1]));
      if (c == 3) return put(o, kMonths[w->month - 1], 3);
      return put_number(o, w->month, c);
    case 'd': return put_number(o, w->day, c);
    case 'H': return put_number(o, w->hour, c);
    case 'h': return put_number(o, w->hour % 12 == 0 ? 12 : w->hour % 12, c);
    case 'm': return put_number(o, w->min, c);
    case 's': return put_number(o, w->sec, c);
    case 'S': return put_number(o, w->ms, c);
    case 'a': return put(o, w->hour < 12 ? "AM" : "PM", 2);
    case 'E': return put(o, kDays[lt->wday], c >= 4 ? strlen(kDays[lt->wday]) : 3);
    case 'z': return put(o, lt->abbr, strlen(lt->abbr));
    case 'Z': return put_offset(o, lt->offset_s, 4);
    case 'X':
      if (lt->offset_s == 0) return put(o, "Z", 1);
      return put_offset(o, lt->offset_s, c == 1 ? 2 : c == 2 ? 4 : 5);
    default:
      for (size_t i = 0; i < c; i++)
        if (put(o, &t->letter, 1) != 0) return -1;
      return 0;
  }
}

int template_date_format(TemplateRender *r, int64_t utc_ms, const HeraldTz *tz, const char *pat,
                         size_t len, TemplateValue *out) {
  resolve_style(&pat, &len);
  HeraldLocalTime lt;
  herald_tz_to_local(tz, utc_ms, &lt);
  Out o = {.r = r};
  Scan sc = {.s = pat, .len = len};
  for (;;) {
    Token t;
    next_token(&sc, &t);
    if (t.kind == kTokEnd || t.kind == kTokOpenQuote) break;
    int rc = t.kind == kTokText ? put(&o, t.text, t.len) : put_field(&o, &t, &lt);
    if (rc != 0) return -1;
  }
  out->kind = kValString;
  out->s = o.buf ? o.buf : "";
  out->len = o.len;
  return 0;
}

/* ---- parsing ---- */

#define MAX_TOKENS 64

static int is_numeric(const Token *t) {
  if (t->kind != kTokLetter) return 0;
  if (t->letter == 'M') return t->count <= 2;
  return strchr("ydHhmsS", t->letter) != NULL;
}

/* Digits at s[*i]: exactly width of them, or with width 0 from one to nine. A field written
 * wider than a long holds (a pattern of 30 S) matches only while its value fits. */
static int read_number(const char *s, size_t len, size_t *i, size_t width, long *out) {
  size_t max = width ? width : 9, n = 0;
  long v = 0;
  while (n < max && *i + n < len && s[*i + n] >= '0' && s[*i + n] <= '9') {
    if (v > (LONG_MAX - 9) / 10) return -1;
    v = v * 10 + (s[*i + n] - '0');
    n++;
  }
  if (n == 0 || (width && n != width)) return -1;
  *i += n;
  *out = v;
  return 0;
}

/* One of names (or its first three letters), in any case; its index. */
static int read_name(const char *s, size_t len, size_t *i, const char *const *names, int count) {
  for (int pass = 0; pass < 2; pass++) {
    for (int k = 0; k < count; k++) {
      size_t n = pass == 0 ? strlen(names[k]) : 3;
      if (len - *i >= n && strncasecmp(s + *i, names[k], n) == 0) {
        *i += n;
        return k;
      }
    }
  }
  return -1;
}

/* Z, UTC, GMT, optionally followed by an offset, or an offset alone: +05, +0530, +05:30. */
static int read_zone(const char *s, size_t len, size_t *i, int *offset_s) {
  *offset_s = 0;
  if (*i < len && (s[*i] == 'Z' || s[*i] == 'z')) {
    (*i)++;
    return 0;
  }
  int named = 0;
  if (len - *i >= 3 && (strncmp(s + *i, "UTC", 3) == 0 || strncmp(s + *i, "GMT", 3) == 0)) {
    *i += 3;
    named = 1;
  }
  if (*i >= len || (s[*i] != '+' && s[*i] != '-')) return named ? 0 : -1;
  int sign = s[*i] == '-' ? -1 : 1;
  (*i)++;
  long h, m = 0;
  if (read_number(s, len, i, 2, &h) != 0) return -1;
  if (*i < len && s[*i] == ':') (*i)++;
  if (*i < len && s[*i] >= '0' && s[*i] <= '9' && read_number(s, len, i, 2, &m) != 0) return -1;
  if (h > 23 || m > 59) return -1;
  *offset_s = sign * (int)(h * 3600 + m * 60);
  return 0;
}

int template_date_parse(const char *s, size_t len, const char *pat, size_t plen, const HeraldTz *tz,
                        int64_t now_ms, int64_t *out) {
  resolve_style(&pat, &plen);
  Token toks[MAX_TOKENS];
  int ntok = 0;
  Scan sc = {.s = pat, .len = plen};
  for (;;) {
    if (ntok == MAX_TOKENS) return -1;
    next_token(&sc, &toks[ntok]);
    if (toks[ntok].kind == kTokOpenQuote) return -1;
    if (toks[ntok].kind == kTokEnd) break;
    ntok++;
  }
  /* Java's defaults for fields the pattern leaves out: 1970-01-01T00:00:00.000 */
  HeraldWallTime w = {.year = 1970, .month = 1, .day = 1};
  long hour12 = -1;
  int pm = 0, has_zone = 0, offset_s = 0;
  size_t i = 0;
  for (int k = 0; k < ntok; k++) {
    const Token *t = &toks[k];
    if (t->kind == kTokText) {
      if (len - i < t->len || memcmp(s + i, t->text, t->len) != 0) return -1;
      i += t->len;
      continue;
    }
    /* a number followed at once by another reads exactly its count of digits ("yyyyMMdd") */
    size_t width = k + 1 < ntok && is_numeric(&toks[k + 1]) ? t->count : 0;
    long v;
    size_t before = i;
    switch (t->letter) {
      case 'y':
        if (read_number(s, len, &i, width, &v) != 0) return -1;
        if (t->count <= 2 && i - before == 2) {
          /* two digits: the year within 80 years before and 20 after now, as Java */
          HeraldWallTime nw;
          herald_tz_wall_from_ms(now_ms, &nw);
          long start = nw.year - 80;
          v += start - start % 100;
          if (v < start) v += 100;
        }
        if (v > 9999) return -1;
        w.year = (int)v;
        break;
      case 'M':
        if (t->count >= 3) {
          int m = read_name(s, len, &i, kMonths, 12);
          if (m < 0) return -1;
          w.month = m + 1;
        } else {
          if (read_number(s, len, &i, width, &v) != 0 || v > 12) return -1;
          w.month = (int)v;
        }
        break;
      case 'E':
        if (read_name(s, len, &i, kDays, 7) < 0) return -1;
        break;
      case 'a':
        if (len - i >= 2 && strncasecmp(s + i, "AM", 2) == 0) pm = 0;
        else if (len - i >= 2 && strncasecmp(s + i, "PM", 2) == 0) pm = 1;
        else return -1;
        i += 2;
        break;
      case 'z':
      case 'Z':
      case 'X':
        if (read_zone(s, len, &i, &offset_s) != 0) return -1;
        has_zone = 1;
        break;
      case 'd':
      case 'H':
      case 'h':
      case 'm':
      case 's':
      case 'S':
        if (read_number(s, len, &i, width, &v) != 0 || v > 999) return -1;
        if (t->letter == 'd') w.day = (int)v;
        else if (t->letter == 'H') w.hour = (int)v;
        else if (t->letter == 'h') hour12 = v;
        else if (t->letter == 'm') w.min = (int)v;
        else if (t->letter == 's') w.sec = (int)v;
        else w.ms = (int)v;
        break;
      default:
        /* a letter we do not read stands for itself */
        for (size_t c = 0; c < t->count; c++, i++)
          if (i >= len || s[i] != t->letter) return -1;
        break;
    }
  }
  if (i != len) return -1;
  if (hour12 >= 0) {
    if (hour12 > 12) return -1;
    w.hour = (int)(hour12 % 12) + (pm ? 12 : 0);
  }
  HeraldError err;
  if (herald_tz_check_wall(&w, &err) != kHeraldOk) return -1;
  *out = has_zone ? herald_tz_wall_ms(&w) - (int64_t)offset_s * 1000 : herald_tz_to_utc(tz, &w, NULL);
  return *out < HERALD_TZ_MIN_MS || *out > HERALD_TZ_MAX_MS ? -1 : 0;
}
