/* ISO-8601 timestamps as the store keeps them: UTC, milliseconds, "YYYY-MM-DDTHH:MM:SS.sssZ"
 * (24 characters), which sort in time order as text. */
#ifndef HERALD_DATETIME_H
#define HERALD_DATETIME_H

#include <stdint.h>

#define HERALD_DATETIME_LEN 25 /* buffer size including the terminator */

/* Parses "YYYY-MM-DD", "YYYY-MM-DDTHH:MM[:SS[.fff]]" with an optional zone ("Z", "+HH:MM",
 * "+HHMM", "+HH"; none means UTC); 'T' may be a space. Writes the normalised UTC form.
 * Returns 0, or -1 when the text is not such a date or names an impossible day or time. */
int herald_datetime_parse(const char *text, char out[HERALD_DATETIME_LEN]);

/* Milliseconds since the epoch <-> the normalised form. */
void herald_datetime_format(int64_t ms, char out[HERALD_DATETIME_LEN]);
int64_t herald_datetime_now_ms(void);
void herald_datetime_now(char out[HERALD_DATETIME_LEN]);

#endif
