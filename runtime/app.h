/* Applications (Pinpoint's projects): every endpoint, event and later campaign belongs to one.
 * The "default" application exists from the first migration. */
#ifndef HERALD_APP_H
#define HERALD_APP_H

#include <jansson.h>

#include "runtime/store.h"

/* Creates application id (1-64 characters of [A-Za-z0-9_.-]) named name (NULL: the id).
 * kHeraldInvalid when the id is malformed or already exists. */
int herald_app_create(HeraldStore *store, const char *id, const char *name, HeraldError *err);

/* A new array of {Id, Name, CreationDate}, ordered by id. */
int herald_app_list(HeraldStore *store, json_t **out, HeraldError *err);

#endif
