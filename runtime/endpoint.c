#include "runtime/endpoint.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/buffer.h"
#include "runtime/datetime.h"
#include "runtime/segment.h"
#include "runtime/utf8.h"

#define ZONEINFO_DIR "/usr/share/zoneinfo"
#define ISO3166_FILE "/usr/share/iso-codes/json/iso_3166-1.json"

/* Counts by 64-bit hash (open addressing). Used only to skip lookups that cannot find
 * anything: a collision merely overcounts, which makes the writer ask SQLite, never skip.
 * A key and its count share a slot: a million-entry table misses the CPU cache on every
 * lookup, and one miss per lookup is half the cost of two. */
typedef struct {
  uint64_t key; /* 0 = empty */
  uint32_t count;
} HashSlot;

typedef struct {
  HashSlot *slots;
  size_t cap, used;
} HashCount;

struct HeraldEndpointWriter {
  HeraldStore *store;
  char *app;
  json_t *keys;   /* "a:Name" / "m:Name" / "u:Name" -> true: the application's attribute keys */
  /* The keys the put in progress added to keys (NULL until a put adds one). A failed put is
   * rolled back by its caller (a savepoint or the transaction), its attribute_keys rows with
   * it: the put forgets them here too, or a later put would take them as recorded. */
  json_t *added_keys;
  HeraldEndpointChecker checker;
  HeraldEndpointRow *row; /* reused for rows not prepared by the caller */
  /* The application had no endpoint when the writer opened (a first import): every endpoint
   * then went through this writer, so these counts bound what SQLite could find. */
  int fresh;
  HashCount addresses; /* writes naming an address */
  HashCount users;     /* writes giving an endpoint a user id */
  int counted_elsewhere; /* rows came with a checker's counts, so these two are incomplete */
  /* Names of each kind recently found in keys: rows of an import repeat the same few names, and
   * a comparison with these is cheaper than building "a:Name" and hashing it. */
  char *recent[3][8];
  unsigned recent_next[3];
  int64_t now_ms;         /* the time `now` shows: formatted once per millisecond, not per row */
  char now[HERALD_DATETIME_LEN];
  HeraldValueIndexes *indexes; /* the application's value indexes; NULL when it has none */
};

/* A checker's counts of the requests it prepared rows for (herald_endpoint_row_new). Every
 * request that gives an endpoint an address or a user id is counted, so the counts bound the
 * writer's own (which count only writes that changed them): safe for skipping lookups. */
struct HeraldEndpointSeen {
  HashCount addresses, users;
};

static uint64_t hash_text(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h ? h : 1;
}

/* Adds one to the count of key and returns the count before; UINT32_MAX when out of memory
 * (callers then fall back to asking SQLite). */
static uint32_t hash_count_bump(HashCount *h, const char *text) {
  if (h->used * 2 >= h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 1024;
    HashSlot *slots = calloc(cap, sizeof *slots);
    if (slots == NULL) return UINT32_MAX;
    for (size_t i = 0; i < h->cap; i++) {
      if (h->slots[i].key == 0) continue;
      size_t j = h->slots[i].key & (cap - 1);
      while (slots[j].key != 0) j = (j + 1) & (cap - 1);
      slots[j] = h->slots[i];
    }
    free(h->slots);
    h->slots = slots;
    h->cap = cap;
  }
  uint64_t key = hash_text(text);
  size_t j = key & (h->cap - 1);
  while (h->slots[j].key != 0 && h->slots[j].key != key) j = (j + 1) & (h->cap - 1);
  if (h->slots[j].key == 0) {
    h->slots[j].key = key;
    h->used++;
  }
  return h->slots[j].count++;
}

static void hash_count_free(HashCount *h) { free(h->slots); }

/* hash_count_bump for an optional text; UINT32_MAX (unknown) when there is none. */
static uint32_t hash_count_bump_opt(HashCount *h, const char *text) {
  return text ? hash_count_bump(h, text) : UINT32_MAX;
}

/* Columns in the order row_to_json reads them. */
#define ENDPOINT_COLUMNS                                                                        \
  "id, channel_type, address, endpoint_status, opt_out, user_id, cohort_id, effective_date, "   \
  "creation_date, request_id, app_version, locale, make, model, model_version, platform, "      \
  "platform_version, timezone, city, country, latitude, longitude, postal_code, region, "       \
  "attributes, metrics, user_attributes"

static const char *const demographic_fields[] = {"AppVersion", "Locale",       "Make",
                                                 "Model",      "ModelVersion", "Platform",
                                                 "PlatformVersion", "Timezone"};
enum { kDemographicFirstCol = 10, kDemographicCount = 8, kLocationFirstCol = 18 };
static const char *const location_fields[] = {"City",     "Country",   "Latitude",
                                              "Longitude", "PostalCode", "Region"};
enum { kLocationCount = 6 };

static const char *const channel_types[] = {
  "PUSH", "GCM", "APNS", "APNS_SANDBOX", "APNS_VOIP", "APNS_VOIP_SANDBOX", "ADM",
  "SMS",  "VOICE", "EMAIL", "BAIDU", "CUSTOM", "IN_APP",
};
/* The channels whose 16th endpoint of a user replaces the oldest of them, as Pinpoint's
 * developer guide lists them (audience-define-auto-inactive): not PUSH (refused like SMS or
 * EMAIL) nor APNS_SANDBOX, which the guide leaves out. */
static const char *const replaceable_channels_sql =
    "('ADM','GCM','APNS','APNS_VOIP','APNS_VOIP_SANDBOX','BAIDU')";

static int is_replaceable_channel(const char *c) {
  static const char *const kinds[] = {"ADM", "GCM", "APNS", "APNS_VOIP", "APNS_VOIP_SANDBOX", "BAIDU"};
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    if (strcmp(c, kinds[i]) == 0) return 1;
  return 0;
}

static int is_push_channel(const char *c) {
  static const char *const push[] = {"PUSH", "GCM", "APNS", "APNS_SANDBOX", "APNS_VOIP",
                                     "APNS_VOIP_SANDBOX", "ADM", "BAIDU"};
  for (size_t i = 0; i < sizeof push / sizeof push[0]; i++)
    if (strcmp(c, push[i]) == 0) return 1;
  return 0;
}

static int invalid(HeraldError *err, HeraldErrorCode code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int invalid(HeraldError *err, HeraldErrorCode code, const char *path, const char *fmt, ...) {
  char reason[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  return herald_error_set(err, code, "%s: %s", path, reason);
}

/* Like invalid() for base.name[idx] (idx < 0: none); the path is formatted only on failure. */
static int invalid_key(HeraldError *err, HeraldErrorCode code, const char *base, const char *name,
                       long idx, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int invalid_key(HeraldError *err, HeraldErrorCode code, const char *base, const char *name,
                       long idx, const char *fmt, ...) {
  char reason[768], path[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  if (idx >= 0) snprintf(path, sizeof path, "%s.%s[%ld]", base, name, idx);
  else snprintf(path, sizeof path, "%s.%s", base, name);
  return herald_error_set(err, code, "%s: %s", path, reason);
}

static int oom(HeraldError *err) { return herald_error_set(err, kHeraldNoMemory, "out of memory"); }


/* A value quoted in an error message, cut so the message stays readable. */
static const char *quoted(const char *s, char *buf, size_t size) {
  size_t len = strlen(s);
  if (len + 1 <= size) return s;
  snprintf(buf, size, "%.*s...", (int)(size - 4), s);
  return buf;
}

/* ---- address rules ---- */

static int valid_email(const char *a) {
  const char *at = strrchr(a, '@');
  if (at == NULL || at == a || at - a > 64 || strlen(a) > 254) return 0;
  for (const char *p = a; p < at; p++) {
    unsigned char c = (unsigned char)*p;
    if (c <= ' ' || c == 0x7f || strchr("\"(),:;<>@[\\]", c)) return 0;
  }
  if (a[0] == '.' || at[-1] == '.' || strstr(a, "..") != NULL) return 0;
  const char *d = at + 1;
  int labels = 0;
  size_t label_len = 0, tld_alpha = 1;
  for (const char *p = d;; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '.' || c == '\0') {
      if (label_len == 0 || label_len > 63 || p[-1] == '-') return 0;
      labels++;
      if (c == '\0') break;
      label_len = 0;
      tld_alpha = 1;
      continue;
    }
    if (!(isalnum(c) || c == '-' || c >= 0x80)) return 0;
    if (c == '-' && label_len == 0) return 0;
    if (!isalpha(c) && c < 0x80) tld_alpha = 0;
    label_len++;
  }
  return labels >= 2 && label_len >= 2 && tld_alpha;
}

/* E.164: '+', a country code not starting with 0, at most 15 digits in all. */
static int valid_e164(const char *a) {
  if (a[0] != '+' || a[1] < '1' || a[1] > '9') return 0;
  size_t n = 0;
  for (const char *p = a + 1; *p; p++, n++)
    if (!isdigit((unsigned char)*p)) return 0;
  return n >= 7 && n <= 15;
}

static int valid_token(const char *a) {
  if (*a == '\0' || strlen(a) > HERALD_ENDPOINT_ADDRESS_MAX) return 0;
  for (const char *p = a; *p; p++)
    if (isspace((unsigned char)*p) || (unsigned char)*p < 0x20) return 0;
  return 1;
}

static int check_address(const char *channel, const char *address, HeraldError *err) {
  char buf[96];
  const char *q = quoted(address, buf, sizeof buf);
  if (strcmp(channel, "EMAIL") == 0) {
    if (!valid_email(address))
      return invalid(err, kHeraldInvalid, "Address",
                     "'%s' is not a valid email address for ChannelType EMAIL", q);
  } else if (strcmp(channel, "SMS") == 0 || strcmp(channel, "VOICE") == 0) {
    if (!valid_e164(address))
      return invalid(err, kHeraldInvalid, "Address",
                     "'%s' is not an E.164 phone number (+ and 7 to 15 digits) for ChannelType %s",
                     q, channel);
  } else if (is_push_channel(channel)) {
    if (!valid_token(address))
      return invalid(err, kHeraldInvalid, "Address",
                     "'%s' is not a device token for ChannelType %s (non-empty, no whitespace)",
                     q, channel);
  } else if (*address == '\0') {
    return invalid(err, kHeraldInvalid, "Address", "must not be empty for ChannelType %s",
                   channel);
  }
  return kHeraldOk;
}

/* ---- time zones and countries ---- */

static int zone_exists(HeraldEndpointChecker *c, const char *name) {
  if (c->zones != NULL && json_object_get(c->zones, name) != NULL) return 1;
  size_t len = strlen(name);
  if (len == 0 || len > 64 || name[0] == '/' || name[0] == '.' || strstr(name, "..") != NULL)
    return 0;
  for (const char *p = name; *p; p++)
    if (!(isalnum((unsigned char)*p) || strchr("/_-+", *p))) return 0;
  char path[sizeof ZONEINFO_DIR + 80];
  snprintf(path, sizeof path, "%s/%s", ZONEINFO_DIR, name);
  /* A zone file starts with "TZif"; this refuses directories and the tables beside the zones. */
  FILE *f = fopen(path, "rb");
  if (f == NULL) return 0;
  char magic[4] = {0};
  size_t got = fread(magic, 1, sizeof magic, f);
  fclose(f);
  if (got != 4 || memcmp(magic, "TZif", 4) != 0) return 0;
  if (c->zones == NULL) c->zones = json_object();
  if (c->zones != NULL) json_object_set_new(c->zones, name, json_true());
  return 1;
}

/* ISO 3166-1 codes from Debian's iso-codes, read once per process. */
static json_t *countries;

static pthread_mutex_t countries_lock = PTHREAD_MUTEX_INITIALIZER;

static int load_countries_locked(HeraldError *err) {
  if (countries != NULL) return kHeraldOk;
  json_error_t jerr;
  json_t *doc = json_load_file(ISO3166_FILE, 0, &jerr);
  json_t *list = doc ? json_object_get(doc, "3166-1") : NULL;
  if (!json_is_array(list)) {
    json_decref(doc);
    return herald_error_set(err, kHeraldIo,
                            "Location.Country: cannot read the country list %s (package "
                            "iso-codes): %s",
                            ISO3166_FILE, doc ? "unexpected content" : jerr.text);
  }
  json_t *set = json_object();
  size_t i;
  json_t *c;
  json_array_foreach(list, i, c) {
    const char *a2 = json_string_value(json_object_get(c, "alpha_2"));
    const char *a3 = json_string_value(json_object_get(c, "alpha_3"));
    /* every code maps to its alpha-2 form, the one endpoints keep (as Pinpoint's EndpointLocation
     * and segments' Country dimension have it) */
    if (a2) json_object_set_new(set, a2, json_string(a2));
    if (a2 && a3) json_object_set_new(set, a3, json_string(a2));
  }
  json_decref(doc);
  countries = set;
  return kHeraldOk;
}

/* Imports validate on their parser thread while other code may validate on the main one. */
static int load_countries(HeraldError *err) {
  pthread_mutex_lock(&countries_lock);
  int rc = load_countries_locked(err);
  pthread_mutex_unlock(&countries_lock);
  return rc;
}

/* ---- request validation ---- */

/* A string with a NUL inside is cut there wherever it is used as C text (bound to a statement,
 * compared, a key): an id "vip\0-x" would name endpoint vip. Such strings are refused. */
static int nul_inside(json_t *v) {
  return json_is_string(v) && strlen(json_string_value(v)) != json_string_length(v);
}
static const char kNulInside[] = "contains a NUL character (\\u0000)";

static int expect_string(json_t *v, const char *path, size_t max_chars, int allow_null,
                         HeraldError *err) {
  if (json_is_null(v) && allow_null) return kHeraldOk;
  if (!json_is_string(v))
    return invalid(err, kHeraldInvalid, path, "expected a string%s", allow_null ? " or null" : "");
  if (nul_inside(v)) return invalid(err, kHeraldInvalid, path, "%s", kNulInside);
  if (max_chars && herald_utf8_chars(json_string_value(v)) > max_chars)
    return invalid(err, kHeraldLimit, path, "longer than %zu characters", max_chars);
  return kHeraldOk;
}

static int expect_enum(json_t *v, const char *path, const char *const *values, size_t n,
                       HeraldError *err) {
  if (nul_inside(v)) return invalid(err, kHeraldInvalid, path, "%s", kNulInside);
  if (json_is_string(v)) {
    for (size_t i = 0; i < n; i++)
      if (strcmp(json_string_value(v), values[i]) == 0) return kHeraldOk;
  }
  char allowed[400] = "";
  size_t off = 0;
  for (size_t i = 0; i < n && off < sizeof allowed; i++)
    off += (size_t)snprintf(allowed + off, sizeof allowed - off, "%s%s", i ? " " : "", values[i]);
  char buf[96];
  if (json_is_string(v))
    return invalid(err, kHeraldInvalid, path, "'%s' is not one of %s",
                   quoted(json_string_value(v), buf, sizeof buf), allowed);
  return invalid(err, kHeraldInvalid, path, "expected one of %s", allowed);
}

static int check_name(const char *base, const char *name, HeraldError *err) {
  if (*name == '\0') return invalid_key(err, kHeraldInvalid, base, name, -1, "an attribute name is empty");
  if (herald_utf8_chars(name) > 50)
    return invalid_key(err, kHeraldLimit, base, name, -1, "attribute name longer than 50 characters");
  return kHeraldOk;
}

/* Attributes and User.UserAttributes: name -> list of strings (a lone string is taken as a
 * one-value list); null removes the attribute. */
static int check_attribute_map(json_t *map, const char *path, HeraldError *err) {
  if (json_is_null(map)) return kHeraldOk;
  if (!json_is_object(map))
    return invalid(err, kHeraldInvalid, path, "expected an object of name -> list of strings");
  const char *name;
  json_t *values;
  void *tmp;
  json_object_foreach_safe(map, tmp, name, values) {
    if (check_name(path, name, err) != kHeraldOk) return err->code;
    if (json_is_null(values)) continue;
    if (json_is_string(values)) {
      json_t *list = json_array();
      if (list == NULL || json_array_append(list, values) != 0) return oom(err);
      json_object_set_new(map, name, list);
      values = list;
    }
    if (!json_is_array(values))
      return invalid_key(err, kHeraldInvalid, path, name, -1, "expected a list of strings");
    if (json_array_size(values) > 50)
      return invalid_key(err, kHeraldLimit, path, name, -1,
                         "%zu values; at most 50 values per attribute", json_array_size(values));
    size_t i;
    json_t *v;
    json_array_foreach(values, i, v) {
      if (!json_is_string(v))
        return invalid_key(err, kHeraldInvalid, path, name, (long)i, "expected a string");
      if (nul_inside(v)) return invalid_key(err, kHeraldInvalid, path, name, (long)i, "%s", kNulInside);
      if (json_string_length(v) > 100 && herald_utf8_chars(json_string_value(v)) > 100)
        return invalid_key(err, kHeraldLimit, path, name, (long)i,
                           "attribute value longer than 100 characters");
    }
  }
  return kHeraldOk;
}

static int check_metrics(json_t *map, HeraldError *err) {
  if (json_is_null(map)) return kHeraldOk;
  if (!json_is_object(map))
    return invalid(err, kHeraldInvalid, "Metrics", "expected an object of name -> number");
  const char *name;
  json_t *v;
  json_object_foreach(map, name, v) {
    if (check_name("Metrics", name, err) != kHeraldOk) return err->code;
    if (json_is_null(v)) continue;
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
      return invalid_key(err, kHeraldInvalid, "Metrics", name, -1, "expected a finite number");
  }
  return kHeraldOk;
}

static int check_date_field(json_t *obj, const char *key, const char *path, HeraldError *err) {
  json_t *v = json_object_get(obj, key);
  if (v == NULL || json_is_null(v)) return kHeraldOk;
  char norm[HERALD_DATETIME_LEN], buf[96];
  if (!json_is_string(v))
    return invalid(err, kHeraldInvalid, path, "expected an ISO-8601 date string");
  if (nul_inside(v)) return invalid(err, kHeraldInvalid, path, "%s", kNulInside);
  if (herald_datetime_parse(json_string_value(v), norm) != 0)
    return invalid(err, kHeraldInvalid, path, "'%s' is not an ISO-8601 date",
                   quoted(json_string_value(v), buf, sizeof buf));
  json_object_set_new(obj, key, json_string(norm));
  return kHeraldOk;
}

static int check_demographic(HeraldEndpointChecker *c, json_t *d, HeraldError *err) {
  if (json_is_null(d)) return kHeraldOk;
  if (!json_is_object(d)) return invalid(err, kHeraldInvalid, "Demographic", "expected an object");
  const char *key;
  json_t *v;
  json_object_foreach(d, key, v) {
    size_t i;
    for (i = 0; i < kDemographicCount; i++)
      if (strcmp(key, demographic_fields[i]) == 0) break;
    if (i == kDemographicCount)
      return invalid_key(err, kHeraldInvalid, "Demographic", key, -1, "unknown field");
    if (!json_is_string(v) && !json_is_null(v))
      return invalid_key(err, kHeraldInvalid, "Demographic", key, -1, "expected a string or null");
    if (nul_inside(v)) return invalid_key(err, kHeraldInvalid, "Demographic", key, -1, "%s", kNulInside);
    if (i == kDemographicCount - 1 && json_is_string(v) && !zone_exists(c, json_string_value(v))) {
      char buf[96];
      return invalid_key(err, kHeraldInvalid, "Demographic", key, -1,
                         "'%s' is not a time zone of the tz database (an IANA name such as "
                         "Europe/Paris)", quoted(json_string_value(v), buf, sizeof buf));
    }
  }
  return kHeraldOk;
}

static int check_coordinate(json_t *v, const char *key, double limit, HeraldError *err) {
  if (json_is_null(v)) return kHeraldOk;
  if (!json_is_number(v) || !isfinite(json_number_value(v)))
    return invalid_key(err, kHeraldInvalid, "Location", key, -1, "expected a number");
  double x = json_number_value(v);
  if (x < -limit || x > limit)
    return invalid_key(err, kHeraldInvalid, "Location", key, -1, "%g is outside -%g..%g", x,
                       limit, limit);
  return kHeraldOk;
}

static int check_location(json_t *l, HeraldError *err) {
  if (json_is_null(l)) return kHeraldOk;
  if (!json_is_object(l)) return invalid(err, kHeraldInvalid, "Location", "expected an object");
  const char *key;
  json_t *v;
  json_object_foreach(l, key, v) {
    if (strcmp(key, "Latitude") == 0) {
      if (check_coordinate(v, key, 90, err) != kHeraldOk) return err->code;
      continue;
    }
    if (strcmp(key, "Longitude") == 0) {
      if (check_coordinate(v, key, 180, err) != kHeraldOk) return err->code;
      continue;
    }
    if (strcmp(key, "Country") != 0 && strcmp(key, "City") != 0 &&
        strcmp(key, "PostalCode") != 0 && strcmp(key, "Region") != 0)
      return invalid_key(err, kHeraldInvalid, "Location", key, -1, "unknown field");
    if (!json_is_string(v) && !json_is_null(v))
      return invalid_key(err, kHeraldInvalid, "Location", key, -1, "expected a string or null");
    if (nul_inside(v)) return invalid_key(err, kHeraldInvalid, "Location", key, -1, "%s", kNulInside);
    if (strcmp(key, "Country") != 0 || json_is_null(v)) continue;
    char code[4] = "";
    const char *s = json_string_value(v);
    size_t n = strlen(s);
    if (n == 2 || n == 3) {
      for (size_t i = 0; i < n; i++) code[i] = (char)toupper((unsigned char)s[i]);
      code[n] = '\0';
    }
    if (load_countries(err) != kHeraldOk) return err->code;
    char buf[96];
    const char *a2 = code[0] ? json_string_value(json_object_get(countries, code)) : NULL;
    if (a2 == NULL)
      return invalid_key(err, kHeraldInvalid, "Location", key, -1,
                         "'%s' is not an ISO 3166-1 alpha-2 or alpha-3 country code",
                         quoted(s, buf, sizeof buf));
    /* kept as alpha-2: "fra" and "FRA" are stored "FR", so a segment on FR finds them */
    if (strcmp(a2, s) != 0) json_string_set(v, a2);
  }
  return kHeraldOk;
}

static int check_user(json_t *u, HeraldError *err) {
  if (json_is_null(u)) return kHeraldOk;
  if (!json_is_object(u)) return invalid(err, kHeraldInvalid, "User", "expected an object");
  const char *key;
  json_t *v;
  json_object_foreach(u, key, v) {
    if (strcmp(key, "UserId") == 0) {
      if (expect_string(v, "User.UserId", HERALD_ENDPOINT_ID_MAX, 1, err) != kHeraldOk)
        return err->code;
      if (json_is_string(v) && json_string_length(v) == 0)
        return invalid(err, kHeraldInvalid, "User.UserId", "must not be empty (use null)");
    } else if (strcmp(key, "UserAttributes") == 0) {
      if (check_attribute_map(v, "User.UserAttributes", err) != kHeraldOk) return err->code;
    } else {
      char p[128];
      snprintf(p, sizeof p, "User.%s", key);
      return invalid(err, kHeraldInvalid, p, "unknown field");
    }
  }
  return kHeraldOk;
}

static int check_request(HeraldEndpointChecker *c, json_t *req, HeraldError *err) {
  static const char *const statuses[] = {"ACTIVE", "INACTIVE"};
  static const char *const opt_outs[] = {"ALL", "NONE"};
  const char *key;
  json_t *v;
  json_object_foreach(req, key, v) {
    int rc = kHeraldOk;
    if (strcmp(key, "Id") == 0) {
      rc = expect_string(v, "Id", HERALD_ENDPOINT_ID_MAX, 0, err);
      if (rc == kHeraldOk && json_string_length(v) == 0)
        rc = invalid(err, kHeraldInvalid, "Id", "must not be empty");
    } else if (strcmp(key, "ChannelType") == 0) {
      rc = expect_enum(v, key, channel_types, sizeof channel_types / sizeof channel_types[0], err);
    } else if (strcmp(key, "Address") == 0) {
      rc = expect_string(v, key, 0, 0, err);
    } else if (strcmp(key, "EndpointStatus") == 0) {
      rc = expect_enum(v, key, statuses, 2, err);
    } else if (strcmp(key, "OptOut") == 0) {
      rc = expect_enum(v, key, opt_outs, 2, err);
    } else if (strcmp(key, "RequestId") == 0) {
      rc = expect_string(v, key, 0, 1, err);
    } else if (strcmp(key, "EffectiveDate") == 0 || strcmp(key, "CreationDate") == 0) {
      rc = check_date_field(req, key, key, err);
    } else if (strcmp(key, "Attributes") == 0) {
      rc = check_attribute_map(v, key, err);
    } else if (strcmp(key, "Metrics") == 0) {
      rc = check_metrics(v, err);
    } else if (strcmp(key, "User") == 0) {
      rc = check_user(v, err);
    } else if (strcmp(key, "Demographic") == 0) {
      rc = check_demographic(c, v, err);
    } else if (strcmp(key, "Location") == 0) {
      rc = check_location(v, err);
    } else if (strcmp(key, "ApplicationId") == 0 || strcmp(key, "CohortId") == 0) {
      rc = kHeraldOk;
    } else {
      rc = invalid(err, kHeraldInvalid, key, "unknown field (an EndpointRequest has Id, Address, "
                   "ChannelType, EndpointStatus, OptOut, User, Attributes, Metrics, "
                   "Demographic, Location, EffectiveDate, RequestId)");
    }
    if (rc != kHeraldOk) return rc;
  }
  return kHeraldOk;
}

/* ---- ids and cohorts ---- */

/* A random (version 4) UUID. Random bytes come 256 at a time: getrandom never returns a short
 * read for up to 256 bytes once the kernel's pool is ready. */
static void generate_id(char out[37]) {
  static unsigned char pool[256];
  static size_t left;
  if (left < 16) {
    if (getrandom(pool, sizeof pool, 0) != (ssize_t)sizeof pool) {
      /* Only without getrandom (very old kernels): time and a counter keep ids distinct. */
      static uint64_t counter;
      uint64_t seed = (uint64_t)herald_datetime_now_ms() * 6364136223846793005ULL + ++counter;
      for (size_t i = 0; i < sizeof pool; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        pool[i] = (unsigned char)(seed >> 56);
      }
    }
    left = sizeof pool;
  }
  unsigned char *b = pool + sizeof pool - left;
  left -= 16;
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
    out[o++] = hex[b[i] >> 4];
    out[o++] = hex[b[i] & 15];
  }
  out[o] = '\0';
}

int herald_endpoint_cohort(const char *app, const char *id) {
  uint64_t h = 1469598103934665603ULL;
  for (const char *p = app; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
  h = (h ^ 0) * 1099511628211ULL;
  for (const char *p = id; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
  /* FNV's low bits are weak for short similar ids; a final mix spreads them. */
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return (int)(h % 100);
}

/* ---- rows <-> EndpointResponse ---- */

/* Whether the n bytes at s are ASCII with no NUL, eight at a time. Such text is valid UTF-8 and
 * as long as its strlen: jansson need not check it again. */
static int plain_ascii(const unsigned char *s, size_t n) {
  const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t x;
    memcpy(&x, s + i, 8);
    /* a byte with its high bit set, or a zero byte (which the subtraction turns into one) */
    if ((x | ((x - ones) & ~x)) & highs) return 0;
  }
  for (; i < n; i++)
    if (s[i] == 0 || s[i] >= 0x80) return 0;
  return 1;
}

/* A C string as a JSON string, as json_string makes it (NULL for text that is not valid UTF-8),
 * with jansson's check and strlen skipped for the plain ASCII that stored rows mostly hold. */
static json_t *string_value(const char *s, size_t n) {
  if (plain_ascii((const unsigned char *)s, n)) return json_stringn_nocheck(s, n);
  return json_string(s);
}

static json_t *text_value(sqlite3_stmt *st, int col) {
  const char *s = (const char *)sqlite3_column_text(st, col);
  return s != NULL ? string_value(s, (size_t)sqlite3_column_bytes(st, col)) : NULL;
}

/* Keys are literals: their length is known and they need no UTF-8 check. A value that is NULL
 * (no text) leaves the key out. */
#define SET_NEW(obj, key, value) json_object_setn_new_nocheck(obj, key, sizeof key - 1, value)

/* An attributes column's JSON, or NULL for the stored "{}" that most endpoints have for a kind
 * (no parser and no object for it) and for text that does not parse. */
static json_t *load_json_column(sqlite3_stmt *st, int col) {
  const char *s = (const char *)sqlite3_column_text(st, col);
  if (s == NULL || (s[0] == '{' && s[1] == '}' && s[2] == '\0')) return NULL;
  return json_loads(s, 0, NULL);
}

static json_t *json_column_or_empty(sqlite3_stmt *st, int col) {
  json_t *v = load_json_column(st, col);
  return v ? v : json_object();
}

/* An integer as a JSON string, as snprintf("%d") writes it. */
static json_t *int_string(int v) {
  char buf[HERALD_DECIMAL_MAX];
  return json_stringn_nocheck(buf, herald_decimal(buf, v));
}

/* Adds v under name to *group, which the first value makes; a NULL v (no value) adds nothing, so
 * a group with no values is never made. */
static void group_add(json_t **group, const char *name, json_t *v) {
  if (v == NULL) return;
  if (*group == NULL && (*group = json_object()) == NULL) {
    json_decref(v);
    return;
  }
  json_object_set_new_nocheck(*group, name, v);
}

static json_t *row_to_json(sqlite3_stmt *st, const char *app) {
  json_t *e = json_object();
  if (e == NULL) return NULL;
  SET_NEW(e, "Id", text_value(st, 0));
  SET_NEW(e, "ApplicationId", string_value(app, strlen(app)));
  SET_NEW(e, "CohortId", int_string(sqlite3_column_int(st, 6)));
  SET_NEW(e, "CreationDate", text_value(st, 8));
  SET_NEW(e, "EffectiveDate", text_value(st, 7));
  SET_NEW(e, "EndpointStatus", text_value(st, 3));
  SET_NEW(e, "OptOut", text_value(st, 4));
  SET_NEW(e, "ChannelType", text_value(st, 1));
  SET_NEW(e, "Address", text_value(st, 2));
  json_t *uattrs = load_json_column(st, 26);
  if (sqlite3_column_type(st, 5) != SQLITE_NULL || json_object_size(uattrs) > 0) {
    json_t *user = json_object();
    SET_NEW(user, "UserId", text_value(st, 5));
    if (json_object_size(uattrs) > 0) SET_NEW(user, "UserAttributes", json_incref(uattrs));
    SET_NEW(e, "User", user);
  }
  json_decref(uattrs);
  SET_NEW(e, "Attributes", json_column_or_empty(st, 24));
  SET_NEW(e, "Metrics", json_column_or_empty(st, 25));
  json_t *demo = NULL;
  for (int i = 0; i < kDemographicCount; i++)
    group_add(&demo, demographic_fields[i], text_value(st, kDemographicFirstCol + i));
  if (demo != NULL) SET_NEW(e, "Demographic", demo);
  json_t *loc = NULL;
  for (int i = 0; i < kLocationCount; i++) {
    int col = kLocationFirstCol + i;
    if (i == 2 || i == 3)
      group_add(&loc, location_fields[i], sqlite3_column_type(st, col) == SQLITE_NULL
                                              ? NULL
                                              : json_real(sqlite3_column_double(st, col)));
    else
      group_add(&loc, location_fields[i], text_value(st, col));
  }
  if (loc != NULL) SET_NEW(e, "Location", loc);
  SET_NEW(e, "RequestId", text_value(st, 9));
  return e;
}

/* ---- writer ---- */

static const char kind_letter[] = {'a', 'm', 'u'};
static const char *const kind_names[] = {"attribute", "metric", "user_attribute"};

int herald_endpoint_writer_open(HeraldStore *store, const char *app, HeraldEndpointWriter **out,
                                HeraldError *err) {
  *out = NULL;
  if (herald_store_app_exists(store, app, err) != kHeraldOk) return err ? err->code : kHeraldNotFound;
  HeraldEndpointWriter *w = calloc(1, sizeof *w);
  if (w == NULL) return oom(err);
  w->store = store;
  w->app = strdup(app);
  w->keys = json_object();
  if (w->app == NULL || w->keys == NULL) {
    herald_endpoint_writer_close(w);
    return oom(err);
  }
  sqlite3_stmt *st =
      herald_store_stmt(store, "SELECT kind, name FROM attribute_keys WHERE app_id = ?1", err);
  if (st == NULL) {
    herald_endpoint_writer_close(w);
    return err ? err->code : kHeraldStore;
  }
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *kind = (const char *)sqlite3_column_text(st, 0);
    const char *name = (const char *)sqlite3_column_text(st, 1);
    char key[256];
    for (int k = 0; k < 3; k++)
      if (strcmp(kind, kind_names[k]) == 0) {
        snprintf(key, sizeof key, "%c:%s", kind_letter[k], name);
        json_object_set_new(w->keys, key, json_true());
      }
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    herald_endpoint_writer_close(w);
    return herald_store_fail(store, err, "reading attribute keys");
  }
  st = herald_store_stmt(store, "SELECT 1 FROM endpoints WHERE app_id = ?1 LIMIT 1", err);
  if (st == NULL) {
    herald_endpoint_writer_close(w);
    return err ? err->code : kHeraldStore;
  }
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    herald_endpoint_writer_close(w);
    return herald_store_fail(store, err, "reading endpoints");
  }
  w->fresh = rc == SQLITE_DONE;
  if (herald_segment_indexes_open(store, app, &w->indexes, err) != kHeraldOk) {
    herald_endpoint_writer_close(w);
    return err ? err->code : kHeraldStore;
  }
  *out = w;
  return kHeraldOk;
}

void herald_endpoint_writer_close(HeraldEndpointWriter *w) {
  if (w == NULL) return;
  json_decref(w->keys);
  json_decref(w->added_keys);
  herald_segment_indexes_close(w->indexes);
  herald_endpoint_checker_clear(&w->checker);
  hash_count_free(&w->addresses);
  hash_count_free(&w->users);
  herald_endpoint_row_free(w->row);
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < 8; i++) free(w->recent[k][i]);
  free(w->app);
  free(w);
}

/* Registers the keys of one attribute map that the application has not seen yet. */
static int recently_known(HeraldEndpointWriter *w, int kind, const char *name) {
  for (int i = 0; i < 8; i++)
    if (w->recent[kind][i] != NULL && strcmp(w->recent[kind][i], name) == 0) return 1;
  return 0;
}

/* Remembers a known name; without memory it is merely not remembered. */
static void remember_known(HeraldEndpointWriter *w, int kind, const char *name) {
  char *copy = strdup(name);
  if (copy == NULL) return;
  unsigned i = w->recent_next[kind]++ % 8;
  free(w->recent[kind][i]);
  w->recent[kind][i] = copy;
}

static int track_keys(HeraldEndpointWriter *w, json_t *map, int kind, const char *path,
                      HeraldError *err) {
  if (!json_is_object(map)) return kHeraldOk;
  const char *name;
  json_t *v;
  json_object_foreach(map, name, v) {
    if (json_is_null(v) || recently_known(w, kind, name)) continue;
    /* Names were checked to be at most 50 characters (200 bytes); no snprintf on this path. */
    char key[256];
    size_t len = strlen(name);
    if (len > sizeof key - 3) len = sizeof key - 3;
    key[0] = kind_letter[kind];
    key[1] = ':';
    memcpy(key + 2, name, len);
    key[len + 2] = '\0';
    if (json_object_get(w->keys, key) != NULL) {
      remember_known(w, kind, name);
      continue;
    }
    if (json_object_size(w->keys) >= HERALD_ATTRIBUTE_KEYS_PER_APP) {
      char p[160];
      snprintf(p, sizeof p, "%s.%s", path, name);
      return invalid(err, kHeraldLimit, p,
                     "application '%s' already has %d attribute, metric and user attribute "
                     "keys (Pinpoint's limit)", w->app, HERALD_ATTRIBUTE_KEYS_PER_APP);
    }
    /* noted before the insert: a key that could not be forgotten must not be recorded */
    if (w->added_keys == NULL && (w->added_keys = json_array()) == NULL) return oom(err);
    if (json_array_append_new(w->added_keys, json_stringn_nocheck(key, len + 2)) != 0)
      return oom(err);
    sqlite3_stmt *st = herald_store_stmt(
        w->store, "INSERT OR IGNORE INTO attribute_keys(app_id, kind, name) VALUES (?1, ?2, ?3)",
        err);
    if (st == NULL) return err ? err->code : kHeraldStore;
    sqlite3_bind_text(st, 1, w->app, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, kind_names[kind], -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return herald_store_fail(w->store, err, "recording an attribute key");
    json_object_set_new(w->keys, key, json_true());
    remember_known(w, kind, name);
  }
  return kHeraldOk;
}

/* Applies src's keys to the map dst[name]: null removes a key. */
static void merge_map(json_t *dst, const char *name, json_t *src) {
  if (json_is_null(src)) {
    json_object_del(dst, name);
    return;
  }
  json_t *m = json_object_get(dst, name);
  if (!json_is_object(m)) {
    m = json_object();
    json_object_set_new(dst, name, m);
  }
  const char *k;
  json_t *v;
  json_object_foreach(src, k, v) {
    if (json_is_null(v)) json_object_del(m, k);
    else json_object_set(m, k, v);
  }
}

static void merge_request(json_t *cur, json_t *req) {
  const char *key;
  json_t *v;
  json_object_foreach(req, key, v) {
    if (strcmp(key, "Id") == 0 || strcmp(key, "ApplicationId") == 0 ||
        strcmp(key, "CohortId") == 0 || strcmp(key, "CreationDate") == 0)
      continue;
    if (strcmp(key, "Attributes") == 0 || strcmp(key, "Metrics") == 0 ||
        strcmp(key, "Demographic") == 0 || strcmp(key, "Location") == 0) {
      merge_map(cur, key, v);
    } else if (strcmp(key, "User") == 0) {
      if (json_is_null(v)) {
        json_object_del(cur, key);
        continue;
      }
      json_t *user = json_object_get(cur, "User");
      if (!json_is_object(user)) {
        user = json_object();
        json_object_set_new(cur, "User", user);
      }
      json_t *uid = json_object_get(v, "UserId");
      if (json_is_null(uid)) json_object_del(user, "UserId");
      else if (uid != NULL) json_object_set(user, "UserId", uid);
      json_t *ua = json_object_get(v, "UserAttributes");
      if (ua != NULL) merge_map(user, "UserAttributes", ua);
    } else if (json_is_null(v)) {
      json_object_del(cur, key);
    } else {
      json_object_set(cur, key, v);
    }
  }
}

static const char *str_at(json_t *obj, const char *key) {
  return json_string_value(json_object_get(obj, key));
}

static int step_done(HeraldStore *store, sqlite3_stmt *st, HeraldError *err, const char *doing) {
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE && rc != SQLITE_ROW) return herald_store_fail(store, err, doing);
  return kHeraldOk;
}

/* Pinpoint keeps at most 15 endpoints per user. A push endpoint evicts the user's push endpoint
 * with the oldest EffectiveDate (INACTIVE, UserId removed); any other channel is refused. */
static int enforce_user_limit(HeraldEndpointWriter *w, const char *id, const char *user_id,
                              const char *channel, HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(
      w->store, "SELECT count(*) FROM endpoints WHERE app_id = ?1 AND user_id = ?2 AND id <> ?3",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, w->app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, user_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_ROW) {
    sqlite3_reset(st);
    return herald_store_fail(w->store, err, "counting a user's endpoints");
  }
  int count = sqlite3_column_int(st, 0);
  sqlite3_reset(st);
  if (count < HERALD_ENDPOINTS_PER_USER) return kHeraldOk;
  char buf[96];
  if (!is_replaceable_channel(channel))
    return invalid(err, kHeraldLimit, "User.UserId",
                   "user '%s' already has %d endpoints (Pinpoint's limit); a %s endpoint is "
                   "refused (only ADM, GCM, APNS, APNS_VOIP, APNS_VOIP_SANDBOX and BAIDU "
                   "endpoints replace the oldest of theirs)",
                   quoted(user_id, buf, sizeof buf), count, channel);
  static char evict_sql[512];
  if (evict_sql[0] == '\0')
    snprintf(evict_sql, sizeof evict_sql,
             "UPDATE endpoints SET endpoint_status = 'INACTIVE', user_id = NULL "
             "WHERE rowid = (SELECT rowid FROM endpoints WHERE app_id = ?1 AND user_id = ?2 "
             "AND id <> ?3 AND channel_type IN %s ORDER BY effective_date, rowid LIMIT 1)",
             replaceable_channels_sql);
  st = herald_store_stmt(w->store, evict_sql, err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, w->app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, user_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
  if (step_done(w->store, st, err, "retiring a user's oldest push endpoint") != kHeraldOk)
    return err->code;
  if (sqlite3_changes(herald_store_db(w->store)) == 0)
    return invalid(err, kHeraldLimit, "User.UserId",
                   "user '%s' already has %d endpoints (Pinpoint's limit) and none of them is a "
                   "push endpoint that could be replaced",
                   quoted(user_id, buf, sizeof buf), count);
  return kHeraldOk;
}

/* ---- the stored text of attribute maps ----
 * Written by hand rather than with json_dumps: this runs three times per imported row, and
 * the shapes are fixed (name -> list of strings, name -> number). Null entries (removals) are
 * skipped. */

static int buf_reserve(HeraldBuf *b, size_t more) { return herald_buf_reserve(b, more); }

static int buf_string(HeraldBuf *b, const char *s, size_t len) {
  if (buf_reserve(b, len * 6 + 2) != 0) return -1;
  char *o = b->data + b->len;
  *o++ = '"';
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      *o++ = '\\';
      *o++ = (char)c;
    } else if (c < 0x20) {
      static const char hex[] = "0123456789abcdef";
      memcpy(o, "\\u00", 4);
      o[4] = hex[c >> 4];
      o[5] = hex[c & 15];
      o += 6;
    } else {
      *o++ = (char)c;
    }
  }
  *o++ = '"';
  b->len = (size_t)(o - b->data);
  return 0;
}

/* Shortest of %.15g/%.16g/%.17g that reads back as the same double. */
static int buf_number(HeraldBuf *b, json_t *v) {
  if (buf_reserve(b, 32) != 0) return -1;
  char *o = b->data + b->len;
  int n;
  if (json_is_integer(v)) {
    n = snprintf(o, 32, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
  } else {
    double d = json_real_value(v);
    n = 0;
    for (int prec = 15; prec <= 17; prec++) {
      n = snprintf(o, 32, "%.*g", prec, d);
      if (strtod(o, NULL) == d) break;
    }
    if (strpbrk(o, ".eEn") == NULL) {
      memcpy(o + n, ".0", 3);
      n += 2;
    }
  }
  b->len += (size_t)n;
  return 0;
}

/* Serialises map (lists of strings when lists, else numbers) into b; 0 entries -> "{}". */
static int dump_map(HeraldBuf *b, json_t *map, int lists) {
  b->len = 0;
  if (buf_reserve(b, 2) != 0) return -1;
  b->data[b->len++] = '{';
  size_t count = 0;
  if (json_is_object(map)) {
    const char *k;
    json_t *v;
    json_object_foreach(map, k, v) {
      if (json_is_null(v)) continue;
      if (buf_reserve(b, 2) != 0) return -1;
      if (count++) b->data[b->len++] = ',';
      if (buf_string(b, k, strlen(k)) != 0 || buf_reserve(b, 2) != 0) return -1;
      b->data[b->len++] = ':';
      if (!lists) {
        if (buf_number(b, v) != 0) return -1;
        continue;
      }
      b->data[b->len++] = '[';
      size_t i;
      json_t *x;
      json_array_foreach(v, i, x) {
        if (buf_reserve(b, 1) != 0) return -1;
        if (i > 0) b->data[b->len++] = ',';
        if (buf_string(b, json_string_value(x), json_string_length(x)) != 0) return -1;
      }
      if (buf_reserve(b, 1) != 0) return -1;
      b->data[b->len++] = ']';
    }
  }
  if (buf_reserve(b, 2) != 0) return -1;
  b->data[b->len++] = '}';
  b->data[b->len] = '\0';
  return 0;
}

static void bind_opt(sqlite3_stmt *st, int idx, const char *s) {
  if (s) sqlite3_bind_text(st, idx, s, -1, SQLITE_STATIC);
  else sqlite3_bind_null(st, idx);
}

typedef struct {
  const char *id;
  int exists;
  int cohort;
  const char *creation;
  const char *status;     /* the request's EndpointStatus or ACTIVE */
  const char *effective;  /* the request's EffectiveDate or now */
} RowMeta;

/* The column values of one endpoint, taken from its request or merged state in one pass over
 * the object (lookups by name cost a hash each, and this runs once per imported row). */
struct HeraldEndpointRow {
  const char *channel, *address, *opt_out, *user_id, *request_id;
  const char *demographic[kDemographicCount];
  json_t *location[kLocationCount]; /* numbers or strings */
  HeraldBuf attrs, metrics, uattrs;  /* the stored JSON text of the three maps */
  size_t size;                       /* the bytes Pinpoint's 15 KB limit measures */
  const char *id, *status, *effective;
  json_t *attr_map, *metric_map, *user_attr_map;
  /* From a checker: requests before this one naming its address / user id (UINT32_MAX when
   * unknown). counted says they are set. */
  int counted;
  uint32_t address_before, user_before;
};

static int field_index(const char *key, const char *const *fields, int n) {
  for (int i = 0; i < n; i++)
    if (strcmp(key, fields[i]) == 0) return i;
  return -1;
}

static int row_fill(HeraldEndpointRow *r, json_t *cur) {
  r->channel = r->address = r->opt_out = r->user_id = r->request_id = NULL;
  r->id = r->status = r->effective = NULL;
  r->counted = 0;
  for (int i = 0; i < kDemographicCount; i++) r->demographic[i] = NULL;
  for (int i = 0; i < kLocationCount; i++) r->location[i] = NULL;
  json_t *attrs = NULL, *metrics = NULL, *uattrs = NULL;
  /* Pinpoint's size limit applies to the whole endpoint; the stored text is what we measure:
   * top-level, Demographic and Location strings and the three maps' text. */
  size_t size = 0;
  const char *key, *k;
  json_t *v, *x;
  json_object_foreach(cur, key, v) {
    if (json_is_string(v)) {
      size += json_string_length(v);
      const char *s = json_string_value(v);
      if (strcmp(key, "ChannelType") == 0) r->channel = s;
      else if (strcmp(key, "Address") == 0) r->address = s;
      else if (strcmp(key, "OptOut") == 0) r->opt_out = s;
      else if (strcmp(key, "RequestId") == 0) r->request_id = s;
      else if (strcmp(key, "Id") == 0) r->id = s;
      else if (strcmp(key, "EndpointStatus") == 0) r->status = s;
      else if (strcmp(key, "EffectiveDate") == 0) r->effective = s;
    } else if (strcmp(key, "Attributes") == 0) {
      attrs = v;
    } else if (strcmp(key, "Metrics") == 0) {
      metrics = v;
    } else if (strcmp(key, "User") == 0) {
      r->user_id = json_string_value(json_object_get(v, "UserId"));
      uattrs = json_object_get(v, "UserAttributes");
    } else if (strcmp(key, "Demographic") == 0) {
      json_object_foreach(v, k, x) {
        if (!json_is_string(x)) continue;
        size += json_string_length(x);
        int i = field_index(k, demographic_fields, kDemographicCount);
        if (i >= 0) r->demographic[i] = json_string_value(x);
      }
    } else if (strcmp(key, "Location") == 0) {
      json_object_foreach(v, k, x) {
        if (json_is_string(x)) size += json_string_length(x);
        int i = field_index(k, location_fields, kLocationCount);
        if (i >= 0) r->location[i] = x;
      }
    }
  }
  r->attr_map = attrs;
  r->metric_map = metrics;
  r->user_attr_map = uattrs;
  if (dump_map(&r->attrs, attrs, 1) != 0 || dump_map(&r->metrics, metrics, 0) != 0 ||
      dump_map(&r->uattrs, uattrs, 1) != 0)
    return -1;
  r->size = size + r->attrs.len + r->metrics.len + r->uattrs.len;
  return 0;
}

int herald_endpoint_row_new(HeraldEndpointChecker *c, json_t *request, HeraldEndpointRow **out,
                            HeraldError *err) {
  *out = calloc(1, sizeof **out);
  if (c->seen == NULL) c->seen = calloc(1, sizeof *c->seen);
  if (*out == NULL || c->seen == NULL || row_fill(*out, request) != 0) {
    herald_endpoint_row_free(*out);
    *out = NULL;
    return oom(err);
  }
  HeraldEndpointRow *r = *out;
  r->counted = 1;
  r->address_before = hash_count_bump_opt(&c->seen->addresses, r->address);
  r->user_before = hash_count_bump_opt(&c->seen->users, r->user_id);
  return kHeraldOk;
}

void herald_endpoint_row_free(HeraldEndpointRow *r) {
  if (r == NULL) return;
  free(r->attrs.data);
  free(r->metrics.data);
  free(r->uattrs.data);
  free(r);
}

/* Inserts (ON CONFLICT DO NOTHING: *written tells whether it went in) or updates the row.
 * r holds cur's columns; extra counts bytes added to cur since r was filled (a generated Id). */
static int write_row(HeraldEndpointWriter *w, const HeraldEndpointRow *r, size_t extra,
                     const RowMeta *m, int *written, HeraldError *err) {
  size_t size = r->size + extra;
  if (size > HERALD_ENDPOINT_MAX_BYTES)
    return invalid(err, kHeraldLimit, "endpoint", "%zu bytes; Pinpoint's limit is 15 KB per "
                   "endpoint", size);

  sqlite3_stmt *st = herald_store_stmt(
      w->store,
      m->exists ? "UPDATE endpoints SET channel_type = ?3, address = ?4, endpoint_status = ?5, "
                  "opt_out = ?6, user_id = ?7, effective_date = ?9, request_id = ?11, "
                  "app_version = ?12, locale = ?13, make = ?14, model = ?15, "
                  "model_version = ?16, platform = ?17, platform_version = ?18, timezone = ?19, "
                  "city = ?20, country = ?21, latitude = ?22, longitude = ?23, "
                  "postal_code = ?24, region = ?25, attributes = ?26, metrics = ?27, "
                  "user_attributes = ?28 WHERE app_id = ?1 AND id = ?2"
                : "INSERT INTO endpoints(app_id, " ENDPOINT_COLUMNS ") VALUES (?1, ?2, ?3, ?4, "
                  "?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, "
                  "?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28) ON CONFLICT(app_id, id) DO NOTHING",
      err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, w->app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, m->id, -1, SQLITE_STATIC);
  bind_opt(st, 3, r->channel);
  bind_opt(st, 4, r->address);
  sqlite3_bind_text(st, 5, m->status, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 6, r->opt_out ? r->opt_out : "NONE", -1, SQLITE_STATIC);
  bind_opt(st, 7, r->user_id);
  sqlite3_bind_int(st, 8, m->cohort);
  sqlite3_bind_text(st, 9, m->effective, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 10, m->creation, -1, SQLITE_STATIC);
  bind_opt(st, 11, r->request_id);
  for (int i = 0; i < kDemographicCount; i++) bind_opt(st, 12 + i, r->demographic[i]);
  for (int i = 0; i < kLocationCount; i++) {
    json_t *lv = r->location[i];
    if (json_is_number(lv)) sqlite3_bind_double(st, 20 + i, json_number_value(lv));
    else bind_opt(st, 20 + i, json_string_value(lv));
  }
  sqlite3_bind_text(st, 26, r->attrs.data, (int)r->attrs.len, SQLITE_STATIC);
  sqlite3_bind_text(st, 27, r->metrics.data, (int)r->metrics.len, SQLITE_STATIC);
  sqlite3_bind_text(st, 28, r->uattrs.data, (int)r->uattrs.len, SQLITE_STATIC);
  if (step_done(w->store, st, err, m->exists ? "updating an endpoint" : "inserting an endpoint") !=
      kHeraldOk)
    return err->code;
  *written = sqlite3_changes(herald_store_db(w->store)) > 0;
  if (*written && w->indexes != NULL) {
    /* Indexed values follow the row in the same transaction (runtime/segment.c). */
    json_t *maps[3] = {r->attr_map, r->user_attr_map, r->metric_map};
    return herald_segment_indexes_write(w->store, w->indexes, w->app, m->id, m->exists, maps,
                                        err);
  }
  return kHeraldOk;
}

/* Pinpoint: the endpoint written last owns the address; older ones become INACTIVE. */
static int retire_same_address(HeraldEndpointWriter *w, const char *id, const char *address,
                               HeraldError *err) {
  sqlite3_stmt *st = herald_store_stmt(w->store,
                                       "UPDATE endpoints SET endpoint_status = 'INACTIVE' "
                                       "WHERE app_id = ?1 AND address = ?2 AND id <> ?3 AND "
                                       "endpoint_status = 'ACTIVE'",
                                       err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, w->app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, address, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
  return step_done(w->store, st, err, "retiring endpoints with the same address");
}

static int track_all_keys(HeraldEndpointWriter *w, const HeraldEndpointRow *r, HeraldError *err) {
  if (track_keys(w, r->attr_map, 0, "Attributes", err) != kHeraldOk ||
      track_keys(w, r->metric_map, 1, "Metrics", err) != kHeraldOk ||
      track_keys(w, r->user_attr_map, 2, "User.UserAttributes", err) != kHeraldOk)
    return err->code;
  return kHeraldOk;
}

/* The side effects of a written endpoint: other endpoints with its address, its user's limit. */
static int after_write(HeraldEndpointWriter *w, const HeraldEndpointRow *r, const RowMeta *m,
                       const char *old_user, HeraldError *err) {
  /* The counts that bound what SQLite could find: the checker's when it counted this row,
   * else the writer's own, unless rows counted by a checker have left those incomplete. */
  int counted = w->fresh && r->counted;
  int own = w->fresh && !r->counted && !w->counted_elsewhere;
  if (r->counted) w->counted_elsewhere = 1;
  const char *user_id = r->user_id;
  if (user_id != NULL && (old_user == NULL || strcmp(old_user, user_id) != 0)) {
    /* Fewer than 15 earlier writes named this user: it cannot have 15 other endpoints. */
    uint32_t before = counted ? r->user_before
                      : own   ? hash_count_bump(&w->users, user_id)
                              : UINT32_MAX;
    if (before >= HERALD_ENDPOINTS_PER_USER &&
        enforce_user_limit(w, m->id, user_id, r->channel, err) != kHeraldOk)
      return err->code;
  }
  const char *address = r->address;
  uint32_t address_before = counted ? r->address_before
                            : own   ? hash_count_bump(&w->addresses, address)
                                    : UINT32_MAX;
  int address_unseen = address_before == 0;
  if (strcmp(m->status, "ACTIVE") == 0 && !address_unseen &&
      retire_same_address(w, m->id, address, err) != kHeraldOk)
    return err->code;
  return kHeraldOk;
}

int herald_endpoint_check(HeraldEndpointChecker *c, json_t *req, HeraldError *err) {
  if (!json_is_object(req))
    return herald_error_set(err, kHeraldInvalid, "endpoint: expected an object");
  return check_request(c, req, err);
}

void herald_endpoint_checker_clear(HeraldEndpointChecker *c) {
  json_decref(c->zones);
  c->zones = NULL;
  if (c->seen != NULL) {
    hash_count_free(&c->seen->addresses);
    hash_count_free(&c->seen->users);
    free(c->seen);
    c->seen = NULL;
  }
}

int herald_endpoint_writer_put(HeraldEndpointWriter *w, json_t *req, char *id_out,
                               HeraldError *err) {
  if (herald_endpoint_check(&w->checker, req, err) != kHeraldOk) return err->code;
  return herald_endpoint_writer_put_checked(w, req, NULL, id_out, err);
}

/* The writer's own row, refilled from obj. */
static int own_row(HeraldEndpointWriter *w, json_t *obj, HeraldError *err) {
  if (w->row == NULL && (w->row = calloc(1, sizeof *w->row)) == NULL) return oom(err);
  return row_fill(w->row, obj) == 0 ? kHeraldOk : oom(err);
}

static int put_row(HeraldEndpointWriter *w, json_t *req, const HeraldEndpointRow *row,
                   char *id_out, HeraldError *err) {
  if (row == NULL) {
    if (own_row(w, req, err) != kHeraldOk) return err->code;
    row = w->row;
  }
  char generated[37];
  const char *id = row->id;
  size_t added = 0; /* bytes the request gained after row was filled */
  if (id == NULL) {
    generate_id(generated);
    json_object_set_new(req, "Id", json_string(generated));
    id = str_at(req, "Id");
    added = strlen(generated);
  }
  if (id_out) snprintf(id_out, HERALD_ENDPOINT_ID_MAX + 1, "%s", id);

  int64_t now_ms = herald_datetime_now_ms();
  if (now_ms != w->now_ms || w->now[0] == '\0') {
    herald_datetime_format(now_ms, w->now);
    w->now_ms = now_ms;
  }
  const char *now = w->now;
  RowMeta m = {id, 0, 0, now, row->status, row->effective};
  if (m.status == NULL) m.status = "ACTIVE";
  if (m.effective == NULL) m.effective = now;
  if (track_all_keys(w, row, err) != kHeraldOk) return err->code;

  /* Fast path for a new endpoint (an import's usual case): the request itself is the row.
   * The insert does nothing when the id exists, and the update path below takes over. */
  const char *channel = row->channel, *address = row->address;
  if (channel != NULL && address != NULL) {
    if (check_address(channel, address, err) != kHeraldOk) return err->code;
    m.cohort = herald_endpoint_cohort(w->app, id);
    int inserted = 0;
    if (write_row(w, row, added, &m, &inserted, err) != kHeraldOk) return err->code;
    if (inserted) return after_write(w, row, &m, NULL, err);
  }

  sqlite3_stmt *st = herald_store_stmt(
      w->store, "SELECT " ENDPOINT_COLUMNS " FROM endpoints WHERE app_id = ?1 AND id = ?2", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, w->app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return herald_store_fail(w->store, err, "reading an endpoint");
    return invalid(err, kHeraldInvalid, channel == NULL ? "ChannelType" : "Address",
                   "required for a new endpoint");
  }
  json_t *cur = row_to_json(st, w->app);
  char creation[HERALD_DATETIME_LEN];
  m.exists = 1;
  m.cohort = sqlite3_column_int(st, 6);
  snprintf(creation, sizeof creation, "%s", (const char *)sqlite3_column_text(st, 8));
  m.creation = creation;
  const char *u = (const char *)sqlite3_column_text(st, 5);
  char *old_user = u ? strdup(u) : NULL;
  sqlite3_reset(st);
  if (cur == NULL || (u != NULL && old_user == NULL)) {
    json_decref(cur);
    free(old_user);
    return oom(err);
  }
  merge_request(cur, req);
  rc = kHeraldOk;
  if (str_at(cur, "ChannelType") == NULL)
    rc = invalid(err, kHeraldInvalid, "ChannelType", "required");
  else if (str_at(cur, "Address") == NULL)
    rc = invalid(err, kHeraldInvalid, "Address", "required");
  else
    rc = check_address(str_at(cur, "ChannelType"), str_at(cur, "Address"), err);
  int written = 0;
  if (rc == kHeraldOk) rc = own_row(w, cur, err);
  if (rc == kHeraldOk) rc = write_row(w, w->row, 0, &m, &written, err);
  if (rc == kHeraldOk) rc = after_write(w, w->row, &m, old_user, err);
  free(old_user);
  json_decref(cur);
  return rc;
}

/* Forgets the keys a failed put added: its caller rolls their rows back. */
static void forget_added_keys(HeraldEndpointWriter *w) {
  size_t i;
  json_t *key;
  json_array_foreach(w->added_keys, i, key) json_object_del(w->keys, json_string_value(key));
  /* the recent names may hold a forgotten one; they are only a shortcut, so drop them all */
  for (int k = 0; k < 3; k++)
    for (int j = 0; j < 8; j++) {
      free(w->recent[k][j]);
      w->recent[k][j] = NULL;
    }
}

int herald_endpoint_writer_put_checked(HeraldEndpointWriter *w, json_t *req,
                                       const HeraldEndpointRow *row, char *id_out,
                                       HeraldError *err) {
  if (json_array_size(w->added_keys) > 0) json_array_clear(w->added_keys);
  int rc = put_row(w, req, row, id_out, err);
  if (rc != kHeraldOk && json_array_size(w->added_keys) > 0) forget_added_keys(w);
  return rc;
}

/* ---- single operations ---- */

int herald_endpoint_put(HeraldStore *store, const char *app, json_t *request, json_t **out,
                        HeraldError *err) {
  if (out) *out = NULL;
  HeraldEndpointWriter *w = NULL;
  if (herald_store_begin(store, err) != kHeraldOk) return err ? err->code : kHeraldStore;
  char id[HERALD_ENDPOINT_ID_MAX + 1];
  int rc = herald_endpoint_writer_open(store, app, &w, err);
  if (rc == kHeraldOk) rc = herald_endpoint_writer_put(w, request, id, err);
  herald_endpoint_writer_close(w);
  if (rc != kHeraldOk) {
    herald_store_rollback(store);
    return rc;
  }
  if (herald_store_commit(store, err) != kHeraldOk) return err ? err->code : kHeraldStore;
  if (out) return herald_endpoint_get(store, app, id, out, err);
  return kHeraldOk;
}

int herald_endpoint_get(HeraldStore *store, const char *app, const char *id, json_t **out,
                        HeraldError *err) {
  *out = NULL;
  sqlite3_stmt *st = herald_store_stmt(
      store, "SELECT " ENDPOINT_COLUMNS " FROM endpoints WHERE app_id = ?1 AND id = ?2", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) *out = row_to_json(st, app);
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) return *out ? kHeraldOk : oom(err);
  if (rc != SQLITE_DONE) return herald_store_fail(store, err, "reading an endpoint");
  if (herald_store_app_exists(store, app, err) != kHeraldOk) return err ? err->code : kHeraldNotFound;
  char buf[96];
  return herald_error_set(err, kHeraldNotFound, "Id: no endpoint '%s' in application '%s'",
                          quoted(id, buf, sizeof buf), app);
}

int herald_endpoint_delete(HeraldStore *store, const char *app, const char *id, json_t **out,
                           HeraldError *err) {
  if (herald_endpoint_get(store, app, id, out, err) != kHeraldOk) return err ? err->code : kHeraldNotFound;
  /* The row and its indexed values go together. */
  if (herald_store_begin(store, err) != kHeraldOk) {
    json_decref(*out);
    *out = NULL;
    return err ? err->code : kHeraldStore;
  }
  sqlite3_stmt *st =
      herald_store_stmt(store, "DELETE FROM endpoints WHERE app_id = ?1 AND id = ?2", err);
  int rc = st == NULL ? (err ? err->code : kHeraldStore) : kHeraldOk;
  if (rc == kHeraldOk) {
    sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    rc = step_done(store, st, err, "deleting an endpoint");
  }
  if (rc == kHeraldOk) rc = herald_segment_indexes_forget(store, app, id, err);
  if (rc == kHeraldOk) rc = herald_store_commit(store, err);
  else herald_store_rollback(store);
  if (rc != kHeraldOk) {
    json_decref(*out);
    *out = NULL;
  }
  return rc;
}

int herald_endpoint_by_user(HeraldStore *store, const char *app, const char *user_id,
                            json_t **out, HeraldError *err) {
  *out = NULL;
  if (herald_store_app_exists(store, app, err) != kHeraldOk) return err ? err->code : kHeraldNotFound;
  sqlite3_stmt *st = herald_store_stmt(
      store, "SELECT " ENDPOINT_COLUMNS " FROM endpoints WHERE app_id = ?1 AND user_id = ?2 "
             "ORDER BY effective_date, id", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, user_id, -1, SQLITE_STATIC);
  json_t *list = json_array();
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) json_array_append_new(list, row_to_json(st, app));
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    json_decref(list);
    return herald_store_fail(store, err, "reading a user's endpoints");
  }
  *out = list;
  return kHeraldOk;
}

int herald_endpoint_scan(HeraldStore *store, const char *app, long long after, int limit,
                         json_t **out, long long *last, HeraldError *err) {
  *out = NULL;
  *last = after;
  if (herald_store_app_exists(store, app, err) != kHeraldOk) return err ? err->code : kHeraldNotFound;
  sqlite3_stmt *st = herald_store_stmt(
      store, "SELECT " ENDPOINT_COLUMNS ", rowid FROM endpoints WHERE app_id = ?1 AND rowid > ?2 "
             "ORDER BY rowid LIMIT ?3", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, after);
  sqlite3_bind_int(st, 3, limit);
  json_t *list = json_array();
  int rc;
  int rowid_col = sqlite3_column_count(st) - 1;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    json_array_append_new(list, row_to_json(st, app));
    *last = sqlite3_column_int64(st, rowid_col);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    json_decref(list);
    return herald_store_fail(store, err, "scanning endpoints");
  }
  *out = list;
  return kHeraldOk;
}

int herald_endpoint_count(HeraldStore *store, const char *app, long long *out, HeraldError *err) {
  *out = 0;
  if (herald_store_app_exists(store, app, err) != kHeraldOk) return err ? err->code : kHeraldNotFound;
  sqlite3_stmt *st = herald_store_stmt(store, "SELECT count(*) FROM endpoints WHERE app_id = ?1", err);
  if (st == NULL) return err ? err->code : kHeraldStore;
  sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) *out = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  if (rc != SQLITE_ROW) return herald_store_fail(store, err, "counting endpoints");
  return kHeraldOk;
}
