#include "runtime/progress.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double herald_progress_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void herald_progress_start(HeraldProgress *p, const char *label, const char *unit, uint64_t total) {
  memset(p, 0, sizeof *p);
  p->out = stderr;
  const char *force = getenv("HERALD_PROGRESS");
  if (force != NULL && *force) p->enabled = strcmp(force, "0") != 0;
  else p->enabled = isatty(fileno(stderr));
  snprintf(p->label, sizeof p->label, "%s", label);
  snprintf(p->unit, sizeof p->unit, "%s", unit);
  p->total = total;
  p->started = p->last_draw = herald_progress_now();
}

static void human_count(uint64_t n, char *buf, size_t size) {
  if (n >= 10000000) snprintf(buf, size, "%.1fM", (double)n / 1e6);
  else if (n >= 10000) snprintf(buf, size, "%.1fk", (double)n / 1e3);
  else snprintf(buf, size, "%llu", (unsigned long long)n);
}

static void draw(HeraldProgress *p, double now) {
  double elapsed = now - p->started;
  char count[32], rate[32], tail[64] = "";
  human_count(p->count, count, sizeof count);
  human_count(elapsed > 0 ? (uint64_t)((double)p->count / elapsed) : 0, rate, sizeof rate);
  if (p->total > 0 && p->done > 0 && p->done <= p->total) {
    double frac = (double)p->done / (double)p->total;
    double eta = elapsed / frac - elapsed;
    snprintf(tail, sizeof tail, "  %3.0f%%  ETA %.0fs", frac * 100, eta);
  }
  fprintf(p->out, "\r\033[K%s: %s %s  %s/s%s", p->label, count, p->unit, rate, tail);
  fflush(p->out);
  p->drawn = 1;
  p->last_draw = now;
}

void herald_progress_update(HeraldProgress *p, uint64_t count, uint64_t done) {
  p->count = count;
  p->done = done;
  if (!p->enabled || (++p->ticks & 255) != 0) return;
  double now = herald_progress_now();
  if (!p->drawn || now - p->last_draw >= 0.2) draw(p, now);
}

double herald_progress_finish(HeraldProgress *p) {
  double elapsed = herald_progress_now() - p->started;
  if (p->enabled && p->drawn) {
    fputs("\r\033[K", p->out);
    fflush(p->out);
  }
  return elapsed;
}
