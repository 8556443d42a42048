/* Progress of long work on a terminal: count, rate and, when the total is known, percentage and
 * ETA, redrawn on one stderr line at most every 200 ms. Silent when stderr is not a terminal
 * (HERALD_PROGRESS=1 forces it on, =0 off), so logs and pipes stay clean. */
#ifndef HERALD_PROGRESS_H
#define HERALD_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

typedef struct {
  int enabled;
  FILE *out;
  char label[64];
  char unit[32];
  uint64_t total;   /* units of work (e.g. bytes) for the ETA; 0 when unknown */
  uint64_t count;   /* items done (e.g. rows) */
  uint64_t done;    /* units of work done */
  double started;   /* seconds, monotonic */
  double last_draw;
  unsigned ticks;
  int drawn;
} HeraldProgress;

/* label: what is being done ("importing"); unit: what count counts ("endpoints"). */
void herald_progress_start(HeraldProgress *p, const char *label, const char *unit, uint64_t total);
/* Cheap enough to call per item: looks at the clock every 256 calls; draws at once the first
 * time, then at most every 200 ms. */
void herald_progress_update(HeraldProgress *p, uint64_t count, uint64_t done);
/* Clears the line. Returns the seconds since start. */
double herald_progress_finish(HeraldProgress *p);
double herald_progress_now(void);

#endif
