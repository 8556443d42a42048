/* Schema migrations, applied in order; PRAGMA user_version holds the number applied. */
#ifndef HERALD_STORE_SCHEMA_H
#define HERALD_STORE_SCHEMA_H

extern const char *const herald_store_migrations[];
extern const int herald_store_migration_count;

#endif
