/* The helpers Pinpoint documents for message templates: conditionals, string, date, math,
 * encoding and digest helpers, and uuid (the date patterns are in template_date.c).
 *
 * Semantics follow Pinpoint's Handlebars helpers. Where a strict reading would make real
 * templates fail quietly we are lenient, and say so here:
 * - comparisons read a list of one value as that value (`eq Attributes.plan "gold"` works with
 *   or without `.[0]`), and compare as numbers when both sides read as numbers (attributes
 *   are strings: "10" > 9), otherwise as text;
 * - math helpers read numeric strings; a value that is not a number, or a division by zero,
 *   renders nothing, like a missing variable;
 * - string helpers work on UTF-8 characters: case changes for the letters of every script,
 *   widths and positions in characters;
 * - date helpers render nothing for a date they cannot read or a zone that does not exist,
 *   while a literal pattern or zone they cannot use is refused when the template compiles. */
#define _GNU_SOURCE    /* memmem */
#include <locale.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <wctype.h>

#include "runtime/clock.h"
#include "runtime/template_internal.h"
#include "runtime/utf8.h"

static void set_bool(TemplateValue *out, int b) {
  out->kind = kValBool;
  out->b = b != 0;
}

static void set_string(TemplateValue *out, const char *s, size_t len) {
  out->kind = kValString;
  out->s = s;
  out->len = len;
}

static void set_number(TemplateValue *out, double d) {
  if (isnan(d) || isinf(d)) {
    out->kind = kValMissing;
    return;
  }
  out->kind = kValNumber;
  out->n = d;
}

/* A list of one value stands for that value in comparisons. */
static TemplateValue unwrap(const TemplateValue *v) {
  TemplateValue u = *v;
  if (v->kind == kValArray && json_array_size(v->j) == 1) template_value_from_json(json_array_get(v->j, 0), &u);
  return u;
}

static int numeric_pair(const TemplateValue *a, const TemplateValue *b, double *x, double *y) {
  return template_value_number(a, x) && template_value_number(b, y);
}

/* -1, 0, 1, or 2 when the two cannot be ordered. */
static int compare(TemplateRender *r, const TemplateValue *pa, const TemplateValue *pb, int *cmp) {
  TemplateValue a = unwrap(pa), b = unwrap(pb);
  double x, y;
  *cmp = 2;
  if (numeric_pair(&a, &b, &x, &y)) {
    *cmp = x < y ? -1 : x > y ? 1 : 0;
    return 0;
  }
  int a_none = a.kind == kValMissing || a.kind == kValNull;
  int b_none = b.kind == kValMissing || b.kind == kValNull;
  if (a_none || b_none) {
    if (a_none && b_none) *cmp = 0;
    return 0;
  }
  if (a.kind == kValBool && b.kind == kValBool) {
    *cmp = a.b == b.b ? 0 : a.b < b.b ? -1 : 1;
    return 0;
  }
  const char *s, *t;
  size_t sl, tl;
  if (template_value_text(r, &a, &s, &sl) != 0 || template_value_text(r, &b, &t, &tl) != 0) return -1;
  int c = memcmp(s, t, sl < tl ? sl : tl);
  if (c == 0) c = sl < tl ? -1 : sl > tl ? 1 : 0;
  *cmp = c < 0 ? -1 : c > 0 ? 1 : 0;
  return 0;
}

/* Equality: two strings are equal only as strings ("007" is not "7", "+15550101" is not
 * "15550101": ids, phone numbers and postal codes are text, as Pinpoint's attributes are);
 * with a number on either side the comparison is numeric ("30" eq 30). Ordering (gt, lt, ...)
 * reads numeric strings as numbers, so "10" > "9". */
static int equal(TemplateRender *r, const TemplateValue *pa, const TemplateValue *pb, int *cmp) {
  TemplateValue a = unwrap(pa), b = unwrap(pb);
  if (a.kind == kValString && b.kind == kValString) {
    *cmp = a.len == b.len && memcmp(a.s, b.s, a.len) == 0 ? 0 : 1;
    return 0;
  }
  return compare(r, pa, pb, cmp);
}

static int h_eq(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  int cmp;
  if (equal(r, &p[0], &p[1], &cmp) != 0) return -1;
  set_bool(out, cmp == 0);
  return 0;
}

static int h_neq(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  int cmp;
  if (equal(r, &p[0], &p[1], &cmp) != 0) return -1;
  set_bool(out, cmp != 0);
  return 0;
}

static int h_gt(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  int cmp;
  if (compare(r, &p[0], &p[1], &cmp) != 0) return -1;
  set_bool(out, cmp == 1);
  return 0;
}

static int h_gte(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  int cmp;
  if (compare(r, &p[0], &p[1], &cmp) != 0) return -1;
  set_bool(out, cmp == 1 || cmp == 0);
  return 0;
}

static int h_lt(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  int cmp;
  if (compare(r, &p[0], &p[1], &cmp) != 0) return -1;
  set_bool(out, cmp == -1);
  return 0;
}

static int h_lte(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  int cmp;
  if (compare(r, &p[0], &p[1], &cmp) != 0) return -1;
  set_bool(out, cmp == -1 || cmp == 0);
  return 0;
}

static int h_and(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  int all = 1;
  for (int i = 0; i < n; i++) all = all && template_value_truthy(&p[i]);
  set_bool(out, all);
  return 0;
}

static int h_or(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  int any = 0;
  for (int i = 0; i < n; i++) any = any || template_value_truthy(&p[i]);
  set_bool(out, any);
  return 0;
}

static int h_not(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  set_bool(out, !template_value_truthy(&p[0]));
  return 0;
}

static int h_if(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  set_bool(out, template_value_truthy(&p[0]));
  return 0;
}

/* ---- strings ---- */

static int text_of(TemplateRender *r, const TemplateValue *v, const char **s, size_t *len) {
  return template_value_text(r, v, s, len);
}

/* Byte offset of the chars-th character (len when past the end). */
static size_t utf8_offset(const char *s, size_t len, size_t chars) {
  size_t i = 0;
  while (i < len && chars > 0) {
    i++;
    while (i < len && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
    chars--;
  }
  return i;
}

/* ---- case ----
 *
 * Letters of every script change case, as Java's String methods do in Pinpoint's helpers, by
 * glibc's towupper/towlower in the C.UTF-8 locale, held as a locale object so that the process's
 * own locale (setlocale) is left alone. Where C.UTF-8 cannot be opened (a libc or an image
 * without it) only ASCII letters change case. One character maps to one, as towupper gives it:
 * Java writes SS for an upper-case ß and ς for a final σ, we keep ß and write σ; and a word's
 * first letter is upper-cased where Java title-cases it, which differs only for the digraphs
 * (ǆ gives Ǆ, Java ǅ). Bytes that are not UTF-8 pass through unchanged. */

static locale_t utf8_locale;

static void open_utf8_locale(void) { utf8_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0); }

/* The C.UTF-8 locale, or (locale_t)0 for ASCII only. */
static locale_t text_locale(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  if (pthread_once(&once, open_utf8_locale) != 0) return (locale_t)0;
  return utf8_locale;
}

/* c in upper case (up) or lower case. */
static uint32_t change_case(locale_t loc, uint32_t c, int up) {
  uint32_t m;
  if (loc != (locale_t)0) m = (uint32_t)(up ? towupper_l((wint_t)c, loc) : towlower_l((wint_t)c, loc));
  else if (up) m = c >= 'a' && c <= 'z' ? c - ('a' - 'A') : c;
  else m = c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
  return m > 0x10FFFF || (m >= 0xD800 && m <= 0xDFFF) ? c : m;
}

static int is_space(locale_t loc, uint32_t c) {
  if (loc != (locale_t)0) return iswspace_l((wint_t)c, loc) != 0;
  return c == ' ' || (c >= '\t' && c <= '\r');
}

static int is_word_char(locale_t loc, uint32_t c) {
  if (c == '_') return 1;
  if (loc != (locale_t)0) return iswalnum_l((wint_t)c, loc) != 0;
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

typedef enum {
  kCaseUpper,
  kCaseLower,
  kCaseFirst,       /* the first character upper-cased (capitalizeFirst) */
  kCaseWords,       /* the first letter of each word (capitalize) */
  kCaseWordsFully,  /* ... and the rest lower-cased (capitalize fully=true) */
} CaseChange;

/* Writes s with its case changed to d, or only measures it when d is NULL: a character's other
 * case may be longer or shorter (ı is 2 bytes, I is 1). Returns the length. */
static size_t recase(locale_t loc, const char *s, size_t len, CaseChange how, char *d) {
  size_t o = 0;
  int word_start = 1;
  for (size_t i = 0; i < len;) {
    uint32_t c;
    int n = herald_utf8_decode((const unsigned char *)s + i, len - i, &c);
    if (n == 0) {
      if (d != NULL) d[o] = s[i];
      o++;
      i++;
      word_start = 0;
      continue;
    }
    i += (size_t)n;
    uint32_t m = c;
    if (how == kCaseUpper || how == kCaseLower) {
      m = change_case(loc, c, how == kCaseUpper);
    } else if (how == kCaseFirst) {
      if (word_start) m = change_case(loc, c, 1);
      word_start = 0;
    } else if (is_space(loc, c)) {
      word_start = 1;
    } else {
      if (word_start) m = change_case(loc, c, 1);
      else if (how == kCaseWordsFully) m = change_case(loc, c, 0);
      word_start = 0;
    }
    o += herald_utf8_encode(m, d != NULL ? d + o : NULL);
  }
  return o;
}

static int case_helper(TemplateRender *r, const TemplateValue *v, CaseChange how, TemplateValue *out) {
  const char *s;
  size_t len;
  if (text_of(r, v, &s, &len) != 0) return -1;
  locale_t loc = text_locale();
  size_t size = recase(loc, s, len, how, NULL);
  char *d = template_scratch(r, size + 1);
  if (d == NULL) return -1;
  set_string(out, d, recase(loc, s, len, how, d));
  return 0;
}

static int h_upper(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  return case_helper(r, &p[0], kCaseUpper, out);
}

static int h_lower(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  return case_helper(r, &p[0], kCaseLower, out);
}

static int h_capitalize_first(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                              TemplateValue *out) {
  return case_helper(r, &p[0], kCaseFirst, out);
}

/* Upper-cases the first letter of every word (words end at white space); fully=true
 * lower-cases the rest. */
static int h_capitalize(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                        TemplateValue *out) {
  TemplateValue fully;
  if (template_hash_get(r, c, "fully", &fully) != 0) return -1;
  return case_helper(r, &p[0], template_value_truthy(&fully) ? kCaseWordsFully : kCaseWords, out);
}

/* Reads an integer argument: the positional one at index i, or the hash argument name. */
static int int_arg(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, int i,
                   const char *name, long *out, int *found) {
  TemplateValue v = {0};
  if (i < n) v = p[i];
  else if (name != NULL && template_hash_get(r, c, name, &v) != 0) return -1;
  double d;
  *found = template_value_number(&v, &d) && d > -1e9 && d < 1e9;
  *out = *found ? (long)d : 0;
  return 0;
}

static int h_abbreviate(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                        TemplateValue *out) {
  const char *s;
  size_t len;
  long width;
  int found;
  if (text_of(r, &p[0], &s, &len) != 0 || int_arg(r, c, p, n, 1, "width", &width, &found) != 0) return -1;
  if (!found) return 0;
  if (width < 4) width = 4;
  if (herald_utf8_count(s, len) <= (size_t)width) {
    set_string(out, s, len);
    return 0;
  }
  size_t keep = utf8_offset(s, len, (size_t)width - 3);
  char *d = template_scratch(r, keep + 3);
  if (d == NULL) return -1;
  memcpy(d, s, keep);
  memcpy(d + keep, "...", 3);
  set_string(out, d, keep + 3);
  return 0;
}

/* Characters in s as utf8_offset steps over them: a lead byte and its continuation bytes, or a
 * stray byte, each count one. */
static size_t utf8_chars(const char *s, size_t len) {
  size_t chars = 0;
  for (size_t i = 0; i < len; chars++) {
    i++;
    while (i < len && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
  }
  return chars;
}

/* Bytes of fill characters of pad (pchars characters in plen bytes) repeated, written to d
 * when d is not NULL. Whole characters: writing the pad a byte at a time cut "é" in two. */
static size_t pad_fill(const char *pad, size_t plen, size_t pchars, size_t fill, char *d) {
  size_t whole = fill / pchars, part = utf8_offset(pad, plen, fill % pchars);
  if (d != NULL) {
    for (size_t i = 0; i < whole; i++) memcpy(d + i * plen, pad, plen);
    memcpy(d + whole * plen, pad, part);
  }
  return whole * plen + part;
}

/* Pads s to width characters with pad repeated, left (align<0), right (align>0) or both. */
static int pad_text(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, int align,
                    TemplateValue *out) {
  const char *s, *pad = " ";
  size_t len, plen = 1;
  long width;
  int found;
  if (text_of(r, &p[0], &s, &len) != 0 || int_arg(r, c, p, n, 1, "size", &width, &found) != 0) return -1;
  TemplateValue pv = {0};
  if (n > 2) pv = p[2];
  else if (template_hash_get(r, c, "pad", &pv) != 0) return -1;
  if (pv.kind != kValMissing && text_of(r, &pv, &pad, &plen) != 0) return -1;
  if (plen == 0) {
    pad = " ";
    plen = 1;
  }
  size_t chars = herald_utf8_count(s, len);
  if (!found || width <= 0 || (size_t)width <= chars) {
    set_string(out, s, len);
    return 0;
  }
  size_t fill = (size_t)width - chars, pchars = utf8_chars(pad, plen);
  size_t left = align < 0 ? 0 : align > 0 ? fill : fill / 2;
  size_t right = fill - left;
  size_t lbytes = pad_fill(pad, plen, pchars, left, NULL);
  size_t rbytes = pad_fill(pad, plen, pchars, right, NULL);
  char *d = template_scratch(r, lbytes + len + rbytes);
  if (d == NULL) return -1;
  pad_fill(pad, plen, pchars, left, d);
  memcpy(d + lbytes, s, len);
  pad_fill(pad, plen, pchars, right, d + lbytes + len);
  set_string(out, d, lbytes + len + rbytes);
  return 0;
}

static int h_ljust(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  return pad_text(r, c, p, n, -1, out);
}

static int h_rjust(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  return pad_text(r, c, p, n, 1, out);
}

static int h_center(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  return pad_text(r, c, p, n, 0, out);
}

/* Where target next occurs in s at or after i, or len. memmem is linear in len + tlen (glibc's
 * two-way search), where comparing target at every position cost len x tlen: a 300 KB target
 * in 600 KB of text took seconds. */
static size_t find(const char *s, size_t len, size_t i, const char *target, size_t tlen) {
  const char *q = memmem(s + i, len - i, target, tlen);
  return q != NULL ? (size_t)(q - s) : len;
}

/* Replaces every occurrence of target in s, left to right, with rep. */
static int replace_all(TemplateRender *r, const char *s, size_t len, const char *target, size_t tlen,
                       const char *rep, size_t rlen, TemplateValue *out) {
  if (tlen == 0 || tlen > len) {
    set_string(out, s, len);
    return 0;
  }
  size_t count = 0;
  for (size_t i = find(s, len, 0, target, tlen); i < len; i = find(s, len, i + tlen, target, tlen))
    count++;
  if (count == 0) {
    set_string(out, s, len);
    return 0;
  }
  size_t size = len - count * tlen + count * rlen;
  char *d = template_scratch(r, size + 1);
  if (d == NULL) return -1;
  size_t o = 0, i = 0;
  for (size_t at = find(s, len, 0, target, tlen); at < len; at = find(s, len, i, target, tlen)) {
    memcpy(d + o, s + i, at - i);
    o += at - i;
    memcpy(d + o, rep, rlen);
    o += rlen;
    i = at + tlen;
  }
  memcpy(d + o, s + i, len - i);
  o += len - i;
  set_string(out, d, o);
  return 0;
}

static int h_cut(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  const char *s, *t = " ";
  size_t len, tlen = 1;
  if (text_of(r, &p[0], &s, &len) != 0) return -1;
  if (n > 1 && text_of(r, &p[1], &t, &tlen) != 0) return -1;
  return replace_all(r, s, len, t, tlen, "", 0, out);
}

static int h_replace(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                     TemplateValue *out) {
  const char *s, *t, *rep;
  size_t len, tlen, rlen;
  if (text_of(r, &p[0], &s, &len) != 0 || text_of(r, &p[1], &t, &tlen) != 0 ||
      text_of(r, &p[2], &rep, &rlen) != 0)
    return -1;
  return replace_all(r, s, len, t, tlen, rep, rlen, out);
}

/* join list sep, or join a b c ... sep; prefix= and suffix= wrap the result. */
static int h_join(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  const char *sep;
  size_t slen;
  if (text_of(r, &p[n - 1], &sep, &slen) != 0) return -1;
  TemplateValue pre, suf;
  if (template_hash_get(r, c, "prefix", &pre) != 0 || template_hash_get(r, c, "suffix", &suf) != 0) return -1;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  const char *s;
  size_t sl;
  if (text_of(r, &pre, &s, &sl) != 0 || template_text_append(r, &buf, &len, &cap, s, sl) != 0) return -1;
  int first = 1;
  for (int i = 0; i < n - 1; i++) {
    if (p[i].kind == kValArray) {
      for (size_t k = 0; k < json_array_size(p[i].j); k++) {
        TemplateValue item;
        template_value_from_json(json_array_get(p[i].j, k), &item);
        if (!first && template_text_append(r, &buf, &len, &cap, sep, slen) != 0) return -1;
        if (text_of(r, &item, &s, &sl) != 0 || template_text_append(r, &buf, &len, &cap, s, sl) != 0) return -1;
        first = 0;
      }
      continue;
    }
    if (p[i].kind == kValMissing || p[i].kind == kValNull) continue;
    if (!first && template_text_append(r, &buf, &len, &cap, sep, slen) != 0) return -1;
    if (text_of(r, &p[i], &s, &sl) != 0 || template_text_append(r, &buf, &len, &cap, s, sl) != 0) return -1;
    first = 0;
  }
  if (text_of(r, &suf, &s, &sl) != 0 || template_text_append(r, &buf, &len, &cap, s, sl) != 0) return -1;
  set_string(out, buf ? buf : "", len);
  return 0;
}

/* Writes the slug of s to d, or only measures it when d is NULL; returns its length. */
static size_t slug(locale_t loc, const char *s, size_t len, char *d) {
  size_t o = 0;
  int dash = 0;
  for (size_t i = 0; i < len;) {
    uint32_t c;
    int n = herald_utf8_decode((const unsigned char *)s + i, len - i, &c);
    if (n == 0) {
      i++;
      continue;
    }
    i += (size_t)n;
    if (is_word_char(loc, c)) {
      if (dash && o > 0) {
        if (d != NULL) d[o] = '-';
        o++;
      }
      dash = 0;
      o += herald_utf8_encode(change_case(loc, c, 0), d != NULL ? d + o : NULL);
    } else if (c == '-' || is_space(loc, c)) {
      dash = 1;
    }
  }
  return o;
}

/* Lower-case words (letters and digits of any script, and '_') joined by one '-' where white
 * space or dashes separated them; other characters are dropped. Handlebars.java's slugify
 * drops digits and '_' as well; Pinpoint documents that it keeps word characters. */
static int h_slugify(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                     TemplateValue *out) {
  const char *s;
  size_t len;
  if (text_of(r, &p[0], &s, &len) != 0) return -1;
  locale_t loc = text_locale();
  char *d = template_scratch(r, slug(loc, s, len, NULL) + 1);
  if (d == NULL) return -1;
  set_string(out, d, slug(loc, s, len, d));
  return 0;
}

static int h_strip_tags(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                        TemplateValue *out) {
  const char *s;
  size_t len;
  if (text_of(r, &p[0], &s, &len) != 0) return -1;
  char *d = template_scratch(r, len + 1);
  if (d == NULL) return -1;
  size_t o = 0;
  /* once a '<' has no '>' after it, no later one has: looking again from each '<' made a text
   * of many '<' quadratic */
  int closed = 1;
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '<' && closed) {
      const char *close = memchr(s + i, '>', len - i);
      if (close != NULL) {
        i = (size_t)(close - s);
        continue;
      }
      closed = 0;
    }
    d[o++] = s[i];
  }
  set_string(out, d, o);
  return 0;
}

/* substring value start [end]: character positions, clamped to the text. */
static int h_substring(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                       TemplateValue *out) {
  const char *s;
  size_t len;
  long start, end;
  int has_start, has_end;
  if (text_of(r, &p[0], &s, &len) != 0 || int_arg(r, c, p, n, 1, NULL, &start, &has_start) != 0 ||
      int_arg(r, c, p, n, 2, NULL, &end, &has_end) != 0)
    return -1;
  size_t chars = herald_utf8_count(s, len);
  if (!has_start || start < 0) start = 0;
  if (!has_end || end > (long)chars) end = (long)chars;
  if ((size_t)start > chars || end <= start) {
    set_string(out, "", 0);
    return 0;
  }
  size_t a = utf8_offset(s, len, (size_t)start), b = utf8_offset(s, len, (size_t)end);
  set_string(out, s + a, b - a);
  return 0;
}

/* A flag argument: truthy, except the text "false" (attributes are text). */
static int is_yes(const TemplateValue *pv) {
  TemplateValue v = unwrap(pv);
  return template_value_truthy(&v) && !(v.kind == kValString && v.len == 5 && memcmp(v.s, "false", 5) == 0);
}

/* yesno value yes= no= maybe=: true, false, or missing/null. */
static int h_yesno(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  TemplateValue v = unwrap(&p[0]);
  const char *name, *fallback;
  if (v.kind == kValMissing || v.kind == kValNull) {
    name = "maybe";
    fallback = "maybe";
  } else if (is_yes(&v)) {
    name = "yes";
    fallback = "yes";
  } else {
    name = "no";
    fallback = "no";
  }
  if (template_hash_get(r, c, name, out) != 0) return -1;
  if (out->kind == kValMissing) set_string(out, fallback, strlen(fallback));
  return 0;
}

/* 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, ... of an integer; other values pass through. */
static int h_ordinalize(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                        TemplateValue *out) {
  double d;
  if (!template_value_number(&p[0], &d) || d != floor(d) || fabs(d) >= 1e15) {
    const char *s;
    size_t len;
    if (text_of(r, &p[0], &s, &len) != 0) return -1;
    set_string(out, s, len);
    return 0;
  }
  long long v = (long long)d, a = v < 0 ? -v : v;
  const char *suffix = "th";
  if (a % 100 < 11 || a % 100 > 13) {
    if (a % 10 == 1) suffix = "st";
    else if (a % 10 == 2) suffix = "nd";
    else if (a % 10 == 3) suffix = "rd";
  }
  char *buf = template_scratch(r, 32);
  if (buf == NULL) return -1;
  set_string(out, buf, (size_t)snprintf(buf, 32, "%lld%s", v, suffix));
  return 0;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int h_encode64(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                      TemplateValue *out) {
  const unsigned char *s;
  size_t len;
  if (text_of(r, &p[0], (const char **)&s, &len) != 0) return -1;
  char *d = template_scratch(r, (len + 2) / 3 * 4 + 1);
  if (d == NULL) return -1;
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    unsigned v = (unsigned)s[i] << 16;
    if (i + 1 < len) v |= (unsigned)s[i + 1] << 8;
    if (i + 2 < len) v |= s[i + 2];
    d[o++] = b64[(v >> 18) & 63];
    d[o++] = b64[(v >> 12) & 63];
    d[o++] = i + 1 < len ? b64[(v >> 6) & 63] : '=';
    d[o++] = i + 2 < len ? b64[v & 63] : '=';
  }
  set_string(out, d, o);
  return 0;
}

/* Decodes standard base64 (padding optional); text that is not base64 renders nothing. */
static int h_decode64(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                      TemplateValue *out) {
  const char *s;
  size_t len;
  if (text_of(r, &p[0], &s, &len) != 0) return -1;
  while (len > 0 && s[len - 1] == '=') len--;
  char *d = template_scratch(r, len * 3 / 4 + 1);
  if (d == NULL) return -1;
  size_t o = 0;
  unsigned v = 0;
  int bits = 0;
  for (size_t i = 0; i < len; i++) {
    const char *q = s[i] ? strchr(b64, s[i]) : NULL;
    if (q == NULL) return 0;
    v = (v << 6) | (unsigned)(q - b64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      d[o++] = (char)((v >> bits) & 0xFF);
    }
  }
  set_string(out, d, o);
  return 0;
}

/* The positional argument at index i, or else the hash argument name. */
static int arg(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, int i,
               const char *name, TemplateValue *out) {
  if (i < n) {
    *out = p[i];
    return 0;
  }
  return template_hash_get(r, c, name, out);
}

/* inflect count singular plural [includeCount] (or singular=, plural=, includeCount=): the
 * plural unless count is 1, after the count and a space with includeCount. handlebars-helpers,
 * where Pinpoint's helper comes from, takes the singular for every count below 1 but 0 ("-2
 * item", "0.5 mile"); we follow English, as for 0 ("0.5 miles"). A count that is not a number
 * renders nothing, as the math helpers do. */
static int h_inflect(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                     TemplateValue *out) {
  TemplateValue singular, plural, with_count;
  double count;
  if (!template_value_number(&p[0], &count)) return 0;
  if (arg(r, c, p, n, 1, "singular", &singular) != 0 || arg(r, c, p, n, 2, "plural", &plural) != 0 ||
      arg(r, c, p, n, 3, "includeCount", &with_count) != 0)
    return -1;
  const char *word, *num;
  size_t wlen, nlen;
  if (text_of(r, count == 1 ? &singular : &plural, &word, &wlen) != 0) return -1;
  if (!is_yes(&with_count)) {
    set_string(out, word, wlen);
    return 0;
  }
  char *buf = NULL;
  size_t len = 0, cap = 0;
  if (text_of(r, &p[0], &num, &nlen) != 0 || template_text_append(r, &buf, &len, &cap, num, nlen) != 0 ||
      template_text_append(r, &buf, &len, &cap, " ", 1) != 0 ||
      template_text_append(r, &buf, &len, &cap, word, wlen) != 0)
    return -1;
  set_string(out, buf, len);
  return 0;
}

/* ---- dates ---- */

/* What now and dateFormat print when given no format: the medium style (Nov 29, 2026), as
 * Pinpoint documents ("If a format is not passed, then medium is used by default") and
 * Handlebars.java's dateFormat does. */
#define DEFAULT_DATE_PATTERN "medium"

static const TemplateExpr *hash_expr(const TemplateExpr *c, const char *name) {
  for (int i = 0; i < c->nhash; i++)
    if (strcmp(c->hash[i].name, name) == 0) return c->hash[i].value;
  return NULL;
}

/* The fields of an endpoint, where a variable path starts. */
static int is_endpoint_field(const char *name) {
  static const char *const fields[] = {"Address", "ApplicationId", "Attributes", "ChannelType",
                                       "CohortId", "CreationDate", "Demographic", "EffectiveDate",
                                       "EndpointStatus", "Id", "Location", "Metrics", "OptOut",
                                       "RequestId", "User", NULL};
  for (const char *const *f = fields; *f != NULL; f++)
    if (strcmp(*f, name) == 0) return 1;
  return 0;
}

/* The zone a tz= path names when read as a zone name: Pinpoint's own examples write
 * tz=America/Los_Angeles without quotes, which Handlebars reads as a path (with '/' and '.'
 * alike as separators) that no endpoint has. NULL for a path that names no zone, and for one
 * from an endpoint field (tz=Demographic.Timezone), which is a variable and nothing else. */
static const HeraldTz *zone_of_path(const TemplateExpr *e) {
  if (e == NULL || e->kind != kExprPath || e->up != 0 || e->scoped || e->data != kDataNone ||
      e->nsegs == 0 || is_endpoint_field(e->segs[0].text))
    return NULL;
  char name[128];
  size_t o = 0;
  for (int i = 0; i < e->nsegs; i++) {
    if (o + e->segs[i].len + 1 >= sizeof name) return NULL;
    if (i > 0) name[o++] = '/';
    memcpy(name + o, e->segs[i].text, e->segs[i].len);
    o += e->segs[i].len;
  }
  name[o] = '\0';
  HeraldError err;
  return herald_tz_get(name, &err);
}

/* The zone tz= names, UTC when it names none. *tz is NULL for a name that is no zone: the
 * helper then renders nothing, as for a missing value, rather than a time in the wrong zone.
 * A path is a variable first; when it has no value it may be a zone name written without
 * quotes. */
static int zone_arg(TemplateRender *r, const TemplateExpr *c, const HeraldTz **tz) {
  TemplateValue v;
  const char *s;
  size_t len;
  if (template_hash_get(r, c, "tz", &v) != 0 || text_of(r, &v, &s, &len) != 0) return -1;
  if (len == 0 && (*tz = zone_of_path(hash_expr(c, "tz"))) != NULL) return 0;
  if (len == 0) {
    s = "UTC";
    len = 3;
  }
  char name[128];
  *tz = NULL;
  if (len >= sizeof name || memchr(s, '\0', len) != NULL) return 0;
  memcpy(name, s, len);
  name[len] = '\0';
  HeraldError err;
  *tz = herald_tz_get(name, &err);
  return 0;
}

/* A pattern argument: the default when missing or empty. */
static int pattern_arg(TemplateRender *r, const TemplateValue *v, const char **pat, size_t *len) {
  if (text_of(r, v, pat, len) != 0) return -1;
  if (*len == 0) {
    *pat = DEFAULT_DATE_PATTERN;
    *len = strlen(DEFAULT_DATE_PATTERN);
  }
  return 0;
}

/* now [format] [tz=]: herald's clock (the manual one under test), in the zone. */
static int h_now(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  const HeraldTz *tz;
  const char *pat;
  size_t plen;
  TemplateValue none = {0};
  if (zone_arg(r, c, &tz) != 0 || pattern_arg(r, n > 0 ? &p[0] : &none, &pat, &plen) != 0) return -1;
  if (tz == NULL) return 0;
  return template_date_format(r, herald_clock_now_ms(), tz, pat, plen, out);
}

/* Reads the date dateFormat formats: ISO 8601 (2026-11-29, 2026-11-29T15:04:05.000Z, with an
 * offset or none), or text matching inputFormat, or a number of milliseconds since the epoch. */
static int read_date(TemplateRender *r, const TemplateValue *pv, const TemplateValue *input,
                     const HeraldTz *tz, int64_t *ms) {
  TemplateValue v = unwrap(pv);
  if (v.kind == kValNumber) {
    if (!(v.n >= (double)HERALD_TZ_MIN_MS && v.n <= (double)HERALD_TZ_MAX_MS)) return -1;
    *ms = (int64_t)floor(v.n);
    return 0;
  }
  if (v.kind != kValString) return -1;
  const char *pat;
  size_t plen;
  if (text_of(r, input, &pat, &plen) != 0) return -1;
  if (plen > 0) return template_date_parse(v.s, v.len, pat, plen, tz, herald_clock_now_ms(), ms);
  char text[64];
  if (v.len >= sizeof text || memchr(v.s, '\0', v.len) != NULL) return -1;
  memcpy(text, v.s, v.len);
  text[v.len] = '\0';
  HeraldIsoTime iso;
  HeraldError err;
  if (herald_tz_parse_iso(text, &iso, &err) != kHeraldOk) return -1;
  *ms = iso.has_offset ? herald_tz_wall_ms(&iso.wall) - (int64_t)iso.offset_s * 1000
                       : herald_tz_to_utc(tz, &iso.wall, NULL);
  return 0;
}

/* dateFormat date [outputFormat] [outputFormat=] [inputFormat=] [tz=]: the date in the zone,
 * as outputFormat formats it. A date without a zone of its own is read in that zone too, so
 * "2026-11-29" stays the 29th wherever it is shown. A date that cannot be read (or a zone that
 * is none) renders nothing, as Pinpoint omits the text of a missing value: one endpoint's
 * malformed attribute must not fail the message for everyone. */
static int h_date_format(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n,
                         TemplateValue *out) {
  const HeraldTz *tz;
  TemplateValue output, input;
  const char *pat;
  size_t plen;
  if (zone_arg(r, c, &tz) != 0 || arg(r, c, p, n, 1, "outputFormat", &output) != 0 ||
      template_hash_get(r, c, "inputFormat", &input) != 0 || pattern_arg(r, &output, &pat, &plen) != 0)
    return -1;
  int64_t ms;
  if (tz == NULL || read_date(r, &p[0], &input, tz, &ms) != 0) return 0;
  return template_date_format(r, ms, tz, pat, plen, out);
}

static int is_text_literal(const TemplateExpr *e) {
  return e != NULL && e->kind == kExprLiteral && e->lit.kind == kValString && e->lit.len > 0;
}

/* Compile-time checks of the date helpers: known hash names, and literal patterns and zones. */
static int check_date_call(const TemplateExpr *c, const char *const *names, const char *known,
                           const TemplateExpr *pattern, size_t *offset, char *why, size_t whylen) {
  for (int i = 0; i < c->nhash; i++) {
    const char *const *k = names;
    while (*k != NULL && strcmp(*k, c->hash[i].name) != 0) k++;
    if (*k == NULL) {
      *offset = c->hash[i].offset;
      snprintf(why, whylen, "unknown argument %s= (known: %s)", c->hash[i].name, known);
      return -1;
    }
  }
  const TemplateExpr *patterns[] = {pattern, hash_expr(c, "outputFormat"), hash_expr(c, "inputFormat")};
  for (size_t i = 0; i < sizeof patterns / sizeof patterns[0]; i++) {
    if (!is_text_literal(patterns[i])) continue;
    if (template_date_check_pattern(patterns[i]->lit.s, patterns[i]->lit.len, why, whylen) != 0) {
      *offset = patterns[i]->offset;
      return -1;
    }
  }
  const TemplateExpr *zone = hash_expr(c, "tz");
  if (is_text_literal(zone)) {
    HeraldError err = {0};
    if (zone->lit.len >= 128 || memchr(zone->lit.s, '\0', zone->lit.len) != NULL ||
        herald_tz_get(zone->lit.s, &err) == NULL) {
      *offset = zone->offset;
      snprintf(why, whylen, "%s", err.code != kHeraldOk ? err.msg : "unknown time zone");
      return -1;
    }
  }
  return 0;
}

static int check_now(const TemplateExpr *c, size_t *offset, char *why, size_t whylen) {
  static const char *const names[] = {"tz", NULL};
  return check_date_call(c, names, "tz=", c->nparams > 0 ? c->params[0] : NULL, offset, why, whylen);
}

static int check_date_format(const TemplateExpr *c, size_t *offset, char *why, size_t whylen) {
  static const char *const names[] = {"inputFormat", "outputFormat", "tz", NULL};
  return check_date_call(c, names, "inputFormat=, outputFormat=, tz=", c->nparams > 1 ? c->params[1] : NULL,
                         offset, why, whylen);
}

/* ---- digests and ids ---- */

/* The digest of the text's bytes in lowercase hex. */
static int digest_hex(TemplateRender *r, const TemplateValue *v, const EVP_MD *md, TemplateValue *out) {
  const char *s;
  size_t len;
  if (text_of(r, v, &s, &len) != 0) return -1;
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  if (md == NULL || EVP_Digest(s, len, d, &dlen, md, NULL) != 1)
    return template_render_fail(r, r->at, kHeraldInvalid, "OpenSSL could not compute the digest");
  char *hex = template_scratch(r, (size_t)dlen * 2);
  if (hex == NULL) return -1;
  static const char digits[] = "0123456789abcdef";
  for (unsigned int i = 0; i < dlen; i++) {
    hex[2 * i] = digits[d[i] >> 4];
    hex[2 * i + 1] = digits[d[i] & 15];
  }
  set_string(out, hex, (size_t)dlen * 2);
  return 0;
}

static int h_md5(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  return digest_hex(r, &p[0], EVP_md5(), out);
}

static int h_sha256(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  return digest_hex(r, &p[0], EVP_sha256(), out);
}

static int h_sha512(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  return digest_hex(r, &p[0], EVP_sha512(), out);
}

/* A random (version 4) UUID, lowercase, 8-4-4-4-12 (RFC 4122). */
static int h_uuid(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  unsigned char b[16];
  if (RAND_bytes(b, sizeof b) != 1)
    return template_render_fail(r, r->at, kHeraldIo, "OpenSSL gave no random bytes for a uuid");
  b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
  char *d = template_scratch(r, 36);
  if (d == NULL) return -1;
  static const char digits[] = "0123456789abcdef";
  size_t o = 0;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) d[o++] = '-';
    d[o++] = digits[b[i] >> 4];
    d[o++] = digits[b[i] & 15];
  }
  set_string(out, d, o);
  return 0;
}

/* ---- math ---- */

static int two_numbers(const TemplateValue *p, double *a, double *b) {
  return template_value_number(&p[0], a) && template_value_number(&p[1], b);
}

static int h_add(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  double a, b;
  if (two_numbers(p, &a, &b)) set_number(out, a + b);
  return 0;
}

static int h_subtract(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  double a, b;
  if (two_numbers(p, &a, &b)) set_number(out, a - b);
  return 0;
}

static int h_multiply(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  double a, b;
  if (two_numbers(p, &a, &b)) set_number(out, a * b);
  return 0;
}

static int h_divide(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  double a, b;
  if (two_numbers(p, &a, &b) && b != 0) set_number(out, a / b);
  return 0;
}

static int h_modulo(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  double a, b;
  if (two_numbers(p, &a, &b) && b != 0) set_number(out, fmod(a, b));
  return 0;
}

static int h_ceiling(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  double a;
  if (template_value_number(&p[0], &a)) set_number(out, ceil(a));
  return 0;
}

static int h_floor(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  double a;
  if (template_value_number(&p[0], &a)) set_number(out, floor(a));
  return 0;
}

/* Half up (ties toward +infinity: -2.5 gives -2), as JavaScript's Math.round. floor(a + 0.5)
 * is not that: the sum rounds, so 0.49999999999999994 gave 1 and odd integers past 2^52 gave
 * the next even one. a - floor(a) is exact. */
static int h_round(TemplateRender *r, const TemplateExpr *c, const TemplateValue *p, int n, TemplateValue *out) {
  double a;
  if (!template_value_number(&p[0], &a)) return 0;
  double f = floor(a);
  set_number(out, a - f >= 0.5 ? f + 1 : f);
  return 0;
}

/* Sorted by name (strcmp order) for bsearch. */
static const TemplateHelper helpers[] = {
  {"abbreviate", h_abbreviate, kHelperPlain, 1, 2, NULL},
  {"add", h_add, kHelperPlain, 2, 2, NULL},
  {"and", h_and, kHelperConditional, 1, -1, NULL},
  {"capitalize", h_capitalize, kHelperPlain, 1, 1, NULL},
  {"capitalizeFirst", h_capitalize_first, kHelperPlain, 1, 1, NULL},
  {"ceiling", h_ceiling, kHelperPlain, 1, 1, NULL},
  {"center", h_center, kHelperPlain, 1, 3, NULL},
  {"cut", h_cut, kHelperPlain, 1, 2, NULL},
  {"dateFormat", h_date_format, kHelperPlain, 1, 2, check_date_format},
  {"decode64", h_decode64, kHelperPlain, 1, 1, NULL},
  {"divide", h_divide, kHelperPlain, 2, 2, NULL},
  {"encode64", h_encode64, kHelperPlain, 1, 1, NULL},
  {"eq", h_eq, kHelperConditional, 2, 2, NULL},
  {"floor", h_floor, kHelperPlain, 1, 1, NULL},
  {"gt", h_gt, kHelperConditional, 2, 2, NULL},
  {"gte", h_gte, kHelperConditional, 2, 2, NULL},
  {"if", h_if, kHelperConditional, 1, 1, NULL},
  {"inflect", h_inflect, kHelperPlain, 1, 4, NULL},
  {"join", h_join, kHelperPlain, 2, -1, NULL},
  {"ljust", h_ljust, kHelperPlain, 1, 3, NULL},
  {"lower", h_lower, kHelperPlain, 1, 1, NULL},
  {"lt", h_lt, kHelperConditional, 2, 2, NULL},
  {"lte", h_lte, kHelperConditional, 2, 2, NULL},
  {"md5", h_md5, kHelperPlain, 1, 1, NULL},
  {"modulo", h_modulo, kHelperPlain, 2, 2, NULL},
  {"multiply", h_multiply, kHelperPlain, 2, 2, NULL},
  {"neq", h_neq, kHelperConditional, 2, 2, NULL},
  {"not", h_not, kHelperConditional, 1, 1, NULL},
  {"now", h_now, kHelperPlain, 0, 1, check_now},
  {"or", h_or, kHelperConditional, 1, -1, NULL},
  {"ordinalize", h_ordinalize, kHelperPlain, 1, 1, NULL},
  {"replace", h_replace, kHelperPlain, 3, 3, NULL},
  {"rjust", h_rjust, kHelperPlain, 1, 3, NULL},
  {"round", h_round, kHelperPlain, 1, 1, NULL},
  {"sha256", h_sha256, kHelperPlain, 1, 1, NULL},
  {"sha512", h_sha512, kHelperPlain, 1, 1, NULL},
  {"slugify", h_slugify, kHelperPlain, 1, 1, NULL},
  {"stripTags", h_strip_tags, kHelperPlain, 1, 1, NULL},
  {"substring", h_substring, kHelperPlain, 2, 3, NULL},
  {"subtract", h_subtract, kHelperPlain, 2, 2, NULL},
  {"upper", h_upper, kHelperPlain, 1, 1, NULL},
  {"uuid", h_uuid, kHelperPlain, 0, 0, NULL},
  {"yesno", h_yesno, kHelperPlain, 1, 1, NULL},
};

const TemplateHelper *template_helper_find(const char *name, size_t len) {
  size_t lo = 0, hi = sizeof helpers / sizeof helpers[0];
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const char *h = helpers[mid].name;
    int c = strncmp(h, name, len);
    if (c == 0 && h[len] != '\0') c = 1;
    if (c == 0) return &helpers[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}
