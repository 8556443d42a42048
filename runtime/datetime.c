#include "runtime/datetime.h"

#include "runtime/clock.h"
#include "runtime/tz.h"

#include <ctype.h>
#include <stdio.h>
#include <time.h>

static int digits(const char **p, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (!isdigit((unsigned char)(*p)[i])) return -1;
    v = v * 10 + ((*p)[i] - '0');
  }
  *p += n;
  *out = v;
  return 0;
}

int herald_datetime_parse(const char *text, char out[HERALD_DATETIME_LEN]) {
  const char *p = text;
  int y, mo, d, h = 0, mi = 0, s = 0, ms = 0;
  if (digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' || digits(&p, 2, &d))
    return -1;
  if (mo < 1 || mo > 12 || d < 1 || d > herald_tz_days_in_month(y, mo)) return -1;
  int offset_min = 0;
  if (*p == 'T' || *p == 't' || *p == ' ') {
    p++;
    if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi)) return -1;
    if (*p == ':') {
      p++;
      if (digits(&p, 2, &s)) return -1;
      if (*p == '.' || *p == ',') {
        p++;
        int n = 0;
        while (isdigit((unsigned char)*p)) {
          if (n < 3) ms = ms * 10 + (*p - '0');
          n++;
          p++;
        }
        if (n == 0) return -1;
        for (; n < 3; n++) ms *= 10;
      }
    }
    if (h > 23 || mi > 59 || s > 60) return -1;
    if (*p == 'Z' || *p == 'z') {
      p++;
    } else if (*p == '+' || *p == '-') {
      int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
      if (digits(&p, 2, &oh)) return -1;
      if (*p == ':') p++;
      if (isdigit((unsigned char)*p) && digits(&p, 2, &om)) return -1;
      if (oh > 23 || om > 59) return -1;
      offset_min = sign * (oh * 60 + om);
    }
  }
  if (*p != '\0') return -1;
  if (s == 60) s = 59; /* a leap second is kept inside its minute */
  int64_t secs = herald_tz_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset_min * 60;
  herald_datetime_format(secs * 1000 + ms, out);
  return 0;
}

void herald_datetime_format(int64_t ms, char out[HERALD_DATETIME_LEN]) {
  int64_t secs = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
  int millis = (int)(ms - secs * 1000);
  int64_t days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
  int rem = (int)(secs - days * 86400);
  int y, m, d;
  herald_tz_civil_from_days(days, &y, &m, &d);
  if (y < 0 || y > 9999) y = y < 0 ? 0 : 9999;
  /* By hand: this runs for every imported row, and snprintf was a visible share of it. */
  int fields[] = {y, m, d, rem / 3600, rem / 60 % 60, rem % 60, millis};
  static const int widths[] = {4, 2, 2, 2, 2, 2, 3};
  static const char seps[] = "--T::.Z";
  char *o = out;
  for (int i = 0; i < 7; i++) {
    for (int k = widths[i] - 1, v = fields[i]; k >= 0; k--, v /= 10) o[k] = (char)('0' + v % 10);
    o += widths[i];
    *o++ = seps[i];
  }
  out[HERALD_DATETIME_LEN - 1] = '\0';
}

/* The runtime's clock, so a manual clock in tests dates writes too. */
int64_t herald_datetime_now_ms(void) { return herald_clock_now_ms(); }

void herald_datetime_now(char out[HERALD_DATETIME_LEN]) {
  herald_datetime_format(herald_datetime_now_ms(), out);
}
