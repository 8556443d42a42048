/* The tracking hit journal: an append-only file beside the database (`<db>-hits`) where the
 * engagement server writes a busy loop iteration's hits before it answers them, so clicks and
 * opens are acknowledged after one write() instead of a database commit each iteration, and
 * reach the events table in larger transactions (runtime/ingest.c decides when).
 *
 * Durability is the store's own (SQLite in WAL mode with synchronous=NORMAL): a record is in
 * the operating system once the write returns, so a crash or kill -9 of herald loses nothing;
 * a power cut may lose the last moments, as it may for the database.
 *
 * Records: a 4-byte little-endian payload length, an 8-byte FNV-1a hash of the payload, the
 * payload. A process holds the file under an exclusive flock while it serves, so a journal
 * that can be locked belongs to nobody alive: its records are replayed into the store, up to
 * the first record that is cut short or does not match its hash (a write torn by a crash). */
#ifndef HERALD_HIT_JOURNAL_H
#define HERALD_HIT_JOURNAL_H

#include <stddef.h>

#include "runtime/buffer.h"
#include "runtime/error.h"

#define HERALD_JOURNAL_RECORD_MAX 65536 /* payload bytes: a hit's ids and url are far less */

typedef struct HeraldJournal HeraldJournal;

/* Opens (creating) and locks path. kHeraldLimit when another live process holds it (the
 * caller then writes its hits straight to the store); kHeraldIo on any other failure. */
int herald_journal_open(const char *path, HeraldJournal **out, HeraldError *err);

/* Calls fn(payload, len, arg) for each whole record from the start, in order, stopping early
 * when fn returns non-zero. *records counts the records given, *ignored the bytes after the
 * last whole record. */
int herald_journal_replay(HeraldJournal *j,
                          int (*fn)(const unsigned char *payload, size_t len, void *arg), void *arg,
                          size_t *records, size_t *ignored, HeraldError *err);

/* Appends one framed record to b whose payload is head then body (b is then written with
 * herald_journal_write): a caller with a fixed part and a block of text frames them without
 * first copying them together. */
int herald_journal_frame(HeraldBuf *b, const void *head, size_t head_len, const void *body,
                         size_t body_len);

/* Writes all of b at the end of the journal. */
int herald_journal_write(HeraldJournal *j, const HeraldBuf *b, HeraldError *err);

/* Empties the journal (its records are in the store). */
int herald_journal_clear(HeraldJournal *j, HeraldError *err);

const char *herald_journal_path(const HeraldJournal *j);

/* Unlocks and closes; remove: delete the file too (when it is empty). */
void herald_journal_close(HeraldJournal *j, int remove);

#endif
