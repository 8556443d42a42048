#include "runtime/clock.h"

#include <stdio.h>

#include "runtime/datetime.h"
#include <time.h>

static int manual_on;
static int64_t manual_ms;

int64_t herald_clock_system_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t herald_clock_now_ms(void) {
  if (manual_on) return manual_ms;
  return herald_clock_system_ms();
}

void herald_clock_set_manual(int manual, int64_t ms) {
  manual_on = manual;
  manual_ms = ms;
}

void herald_clock_advance(int64_t delta_ms) {
  if (manual_on) manual_ms += delta_ms;
}

int herald_clock_is_manual(void) { return manual_on; }

void herald_time_format(int64_t ms, char *buf, size_t len) {
  char iso[HERALD_DATETIME_LEN];
  herald_datetime_format(ms, iso);
  snprintf(buf, len, "%s", iso);
}
