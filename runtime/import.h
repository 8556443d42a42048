/* Bulk import of endpoints and events from files, all or nothing: the whole file goes in one
 * transaction and any bad row rolls everything back, with an error naming file:line, the field
 * and the reason ("contacts.csv:3: Address: 'bob@' is not a valid email address ...").
 *
 * Endpoint files are CSV with Pinpoint's dotted headers (ChannelType, Address, User.UserId,
 * User.UserAttributes.X, Attributes.X, Metrics.X, Demographic.X, Location.X, Id, OptOut,
 * EffectiveDate, RequestId; a repeated Attributes/UserAttributes header adds a value to the
 * list; an empty cell is absent) or newline-delimited JSON EndpointRequest objects with "Id".
 * Event files are newline-delimited JSON event objects, each with "EndpointId" (event.h). */
#ifndef HERALD_IMPORT_H
#define HERALD_IMPORT_H

#include <jansson.h>

#include "runtime/store.h"

typedef enum { kHeraldImportAuto, kHeraldImportCsv, kHeraldImportJson } HeraldImportFormat;

typedef struct {
  long long rows;      /* records read */
  long long inserted;  /* events: new events (repeats are idempotent) */
  double seconds;
} HeraldImportResult;

/* kHeraldImportAuto decides by extension (.csv; .json/.jsonl/.ndjson), else by content (a
 * first non-blank byte '{' means JSON). Progress is shown on a terminal (progress.h). */
int herald_import_endpoints(HeraldStore *store, const char *app, const char *path,
                            HeraldImportFormat format, HeraldImportResult *result,
                            HeraldError *err);
int herald_import_events(HeraldStore *store, const char *app, const char *path,
                         HeraldImportResult *result, HeraldError *err);

/* Called for each EndpointRequest of a file in order; an error stops the read and comes back
 * prefixed with "FILE:LINE: ". row is borrowed. */
typedef int (*HeraldImportRequestFn)(void *ctx, json_t *row, HeraldError *err);

/* Reads an endpoint file exactly as herald_import_endpoints does (format detection, CSV
 * headers and fields, one JSON object per line with duplicate keys refused) and writes
 * nothing: fn gets each row. detected (may be NULL) receives the format read. */
int herald_import_read_endpoints(const char *path, HeraldImportFormat format,
                                 HeraldImportRequestFn fn, void *ctx,
                                 HeraldImportFormat *detected, HeraldError *err);

#endif
