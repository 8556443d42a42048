/* Segment support in the store: the SQL functions compiled segments call, and stored segment
 * versions (dimensional definitions and the member lists of imported, static segments).
 * The segment compiler itself is Lua (stdlib/herald/segment.lua); it only emits SQL that uses
 * the endpoints table, SQLite built-ins and the functions registered here. */
#ifndef HERALD_SEGMENT_H
#define HERALD_SEGMENT_H

#include <jansson.h>
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

/* Value indexes (the table design is explained in runtime/segment.c): one per application,
 * kind ("Attributes", "UserAttributes" or "Metrics") and name. */

/* Checks kind and name against the forms an index accepts: a name of 1 to 50 characters
 * without # : ? \ or / (Pinpoint's attribute name rules). */
int herald_segment_index_check(const char *kind, const char *name, HeraldError *err);

/* Creates index (kind, name) of app and fills it from the application's endpoints, in one
 * transaction. origin says who asked ("cli", "demand", ...). *created is 0 when it existed. */
int herald_segment_index_add(HeraldStore *store, const char *app, const char *kind,
                             const char *name, const char *origin, int *created,
                             HeraldError *err);

/* Removes index (kind, name) of app and its values; *dropped is 0 when there was none. */
int herald_segment_index_drop(HeraldStore *store, const char *app, const char *kind,
                              const char *name, int *dropped, HeraldError *err);

/* The indexes of one application, as an endpoint writer keeps them while it writes. */
typedef struct HeraldValueIndexes HeraldValueIndexes;

/* Reads app's indexes; *out is NULL when it has none (the writer then does no index work). */
int herald_segment_indexes_open(HeraldStore *store, const char *app, HeraldValueIndexes **out,
                                HeraldError *err);
void herald_segment_indexes_close(HeraldValueIndexes *ix);

/* Writes the indexed values of endpoint_id from its stored maps (maps[0] Attributes, maps[1]
 * User.UserAttributes, maps[2] Metrics; NULL for an absent map). replace: remove the values
 * the endpoint had first (an update). ix may be NULL: nothing to do. */
int herald_segment_indexes_write(HeraldStore *store, const HeraldValueIndexes *ix, const char *app,
                                 const char *endpoint_id, int replace, json_t *maps[3],
                                 HeraldError *err);

/* Removes every indexed value of endpoint_id in app (a deleted endpoint). */
int herald_segment_indexes_forget(HeraldStore *store, const char *app, const char *endpoint_id,
                                  HeraldError *err);

#endif
