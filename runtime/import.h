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

#endif
