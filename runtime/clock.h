/* Wall-clock time for scheduling. The clock is injectable: tests (and `--clock manual`) set a
 * manual time and advance it, so months of schedules run in seconds. */
#ifndef HERALD_CLOCK_H
#define HERALD_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/* Milliseconds since the Unix epoch, from the system clock or the manual clock when set. */
int64_t herald_clock_now_ms(void);

/* Milliseconds since the Unix epoch from the system clock, even when a manual clock is set:
 * for times other processes compare with theirs (claimers' heartbeats). */
int64_t herald_clock_system_ms(void);

/* Switches to a manual clock at ms (or back to the system clock with manual = 0). */
void herald_clock_set_manual(int manual, int64_t ms);
void herald_clock_advance(int64_t delta_ms);
int herald_clock_is_manual(void);

/* Formats ms as "YYYY-MM-DDTHH:MM:SS.sssZ" (24 chars + NUL); buf needs 32 bytes. */
void herald_time_format(int64_t ms, char *buf, size_t len);

#endif
