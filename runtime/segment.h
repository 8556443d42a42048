/* Segment support in the store: the SQL functions compiled segments call, and stored segment
 * versions (dimensional definitions and the member lists of imported, static segments).
 * The segment compiler itself is Lua (stdlib/herald/segment.lua); it only emits SQL that uses
 * the endpoints table, SQLite built-ins and the functions registered here. */
#ifndef HERALD_SEGMENT_H
#define HERALD_SEGMENT_H

#include <stdint.h>

#include "runtime/store.h"

/* Registers herald_instant(text), herald_day(text), herald_km(lat1, lon1, lat2, lon2) and
 * herald_member(json, key) (a fast top-level lookup for JSON without backslashes) on db. */
int herald_segment_register_sql(sqlite3 *db, HeraldError *err);

/* Parses the ISO-8601 forms segments accept: YYYY-MM-DD, optionally followed by
 * THH:MM[:SS[.fraction]] and Z or +HH:MM / -HH:MM (no zone means UTC). *ms is milliseconds
 * since the epoch, *day the written calendar date as days since 1970-01-01. Returns 0 when s
 * is not of that form or names an impossible date or time. */
int herald_segment_parse_instant(const char *s, double *ms, int64_t *day);

/* Great-circle distance in kilometres (haversine, mean Earth radius 6371 km). */
double herald_segment_km(double lat1, double lon1, double lat2, double lon2);

/* Stores a new version of segment id (creating the segment at version 1) and returns it in
 * *version. type is "DIMENSIONAL" or "IMPORT"; definition is JSON text. */
int herald_segment_save(HeraldStore *store, const char *app, const char *id, const char *name,
                        const char *type, const char *definition, int *version, HeraldError *err);

/* Adds endpoint_id to the members of an imported segment's version. */
int herald_segment_add_member(HeraldStore *store, const char *app, const char *id, int version,
                              const char *endpoint_id, HeraldError *err);

#endif
