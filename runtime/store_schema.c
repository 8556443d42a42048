#include "runtime/store_schema.h"

/* Each entry is one migration. Never edit an entry that has shipped: append a new one. Dates
 * are UTC ISO-8601 strings with milliseconds ("2026-11-29T10:00:00.000Z"), which sort in time
 * order as text. */
const char *const herald_store_migrations[] = {
  /* 1: applications, endpoints, attribute key registry, events */
  "CREATE TABLE applications ("
  "  id TEXT PRIMARY KEY,"
  "  name TEXT NOT NULL,"
  "  creation_date TEXT NOT NULL"
  ") WITHOUT ROWID;"
  "INSERT INTO applications(id, name, creation_date)"
  "  VALUES ('default', 'default', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));"

  "CREATE TABLE endpoints ("
  "  app_id TEXT NOT NULL REFERENCES applications(id),"
  "  id TEXT NOT NULL,"
  "  channel_type TEXT NOT NULL,"
  "  address TEXT,"
  "  endpoint_status TEXT NOT NULL DEFAULT 'ACTIVE',"
  "  opt_out TEXT NOT NULL DEFAULT 'NONE',"
  "  user_id TEXT,"
  "  cohort_id INTEGER NOT NULL CHECK (cohort_id BETWEEN 0 AND 99),"
  "  effective_date TEXT NOT NULL,"
  "  creation_date TEXT NOT NULL,"
  "  request_id TEXT,"
  "  app_version TEXT, locale TEXT, make TEXT, model TEXT, model_version TEXT,"
  "  platform TEXT, platform_version TEXT, timezone TEXT,"
  "  city TEXT, country TEXT, latitude REAL, longitude REAL, postal_code TEXT, region TEXT,"
  "  attributes TEXT NOT NULL DEFAULT '{}',"
  "  metrics TEXT NOT NULL DEFAULT '{}',"
  "  user_attributes TEXT NOT NULL DEFAULT '{}',"
  "  last_activity TEXT,"
  "  UNIQUE (app_id, id)"
  ");"
  "CREATE INDEX endpoints_address ON endpoints(app_id, address) WHERE address IS NOT NULL;"
  "CREATE INDEX endpoints_user ON endpoints(app_id, user_id) WHERE user_id IS NOT NULL;"

  /* Pinpoint caps distinct attribute and metric names per application (250). */
  "CREATE TABLE attribute_keys ("
  "  app_id TEXT NOT NULL,"
  "  kind TEXT NOT NULL,"
  "  name TEXT NOT NULL,"
  "  PRIMARY KEY (app_id, kind, name)"
  ") WITHOUT ROWID;"

  "CREATE TABLE events ("
  "  seq INTEGER PRIMARY KEY,"
  "  app_id TEXT NOT NULL,"
  "  endpoint_id TEXT NOT NULL,"
  "  event_id TEXT NOT NULL,"
  "  event_type TEXT NOT NULL,"
  "  timestamp TEXT NOT NULL,"
  "  attributes TEXT NOT NULL DEFAULT '{}',"
  "  metrics TEXT NOT NULL DEFAULT '{}',"
  "  session TEXT,"
  "  client TEXT,"
  "  arrival TEXT NOT NULL,"
  "  UNIQUE (app_id, endpoint_id, event_id)"
  ");"
  "CREATE INDEX events_by_endpoint ON events(app_id, endpoint_id, timestamp);"
  "CREATE INDEX events_by_type ON events(app_id, event_type, timestamp);",

  /* 2: campaigns, their runs and the outbox. A run is materialised into the outbox in one
   * transaction: one row per audience endpoint, holdout and skipped endpoints included with a
   * reason, so every endpoint's fate is explainable and a restart never re-materialises. */
  "CREATE TABLE campaigns ("
  "  app_id TEXT NOT NULL REFERENCES applications(id),"
  "  id TEXT NOT NULL,"
  "  name TEXT NOT NULL,"
  "  version INTEGER NOT NULL DEFAULT 1,"
  "  state TEXT NOT NULL DEFAULT 'SCHEDULED',"
  "  definition TEXT NOT NULL DEFAULT '{}',"
  "  creation_date TEXT NOT NULL,"
  "  last_modified_date TEXT NOT NULL,"
  "  last_modified_ms INTEGER NOT NULL,"
  "  PRIMARY KEY (app_id, id)"
  ") WITHOUT ROWID;"

  /* Every version's definition is kept: a run in progress keeps the version it started with,
   * and delivery reads its messages from the run's version. */
  "CREATE TABLE campaign_versions ("
  "  app_id TEXT NOT NULL,"
  "  campaign_id TEXT NOT NULL,"
  "  version INTEGER NOT NULL,"
  "  definition TEXT NOT NULL,"
  "  created_ms INTEGER NOT NULL,"
  "  PRIMARY KEY (app_id, campaign_id, version)"
  ") WITHOUT ROWID;"

  "CREATE TABLE campaign_runs ("
  "  id INTEGER PRIMARY KEY,"
  "  app_id TEXT NOT NULL,"
  "  campaign_id TEXT NOT NULL,"
  "  campaign_version INTEGER NOT NULL,"
  "  scheduled_ms INTEGER NOT NULL,"
  "  run_index INTEGER NOT NULL DEFAULT 0,"
  "  state TEXT NOT NULL DEFAULT 'EXECUTING',"
  "  result TEXT,"
  "  reason TEXT,"
  "  total INTEGER NOT NULL DEFAULT 0,"
  "  daily_cap INTEGER,"
  "  total_cap INTEGER,"
  "  max_duration_ms INTEGER,"
  "  timezones INTEGER NOT NULL DEFAULT 0,"
  "  started_ms INTEGER,"
  "  created_at TEXT NOT NULL,"
  "  ended_at TEXT,"
  /* 0 for a scheduled run; for an event-triggered one, the last event seq it consumed */
  "  trigger_seq INTEGER NOT NULL DEFAULT 0,"
  "  UNIQUE (app_id, campaign_id, scheduled_ms, trigger_seq)"
  ");"

  "CREATE TABLE outbox ("
  "  id INTEGER PRIMARY KEY,"
  "  run_id INTEGER NOT NULL REFERENCES campaign_runs(id),"
  "  endpoint_id TEXT NOT NULL,"
  "  treatment INTEGER NOT NULL,"
  /* Unique by construction (a hash of the run's key and the endpoint, and (run_id,
   * endpoint_id) is unique): an index over these random values would cost a materialisation
   * more than everything else. */
  "  message_id TEXT NOT NULL,"
  "  channel TEXT,"
  "  address TEXT,"
  "  due_ms INTEGER NOT NULL,"
  "  state TEXT NOT NULL,"
  "  reason TEXT,"
  "  zone TEXT,"
  "  note TEXT,"
  "  title_override TEXT,"
  "  body_override TEXT,"
  "  attempts INTEGER NOT NULL DEFAULT 0,"
  "  claimed_ms INTEGER,"
  "  claimed_by INTEGER,"
  "  updated_ms INTEGER,"
  "  UNIQUE (run_id, endpoint_id)"
  ");"
  "CREATE INDEX outbox_due ON outbox(due_ms) WHERE state = 'PENDING';"
  "CREATE INDEX outbox_claimed ON outbox(run_id) WHERE state = 'CLAIMED';"
  /* Caps count an endpoint's messages sent or in flight: claimed rows carry claimed_ms. */
  "CREATE INDEX outbox_endpoint_claims ON outbox(endpoint_id, claimed_ms)"
  "  WHERE claimed_ms IS NOT NULL;",

  /* 3: message templates: Pinpoint keeps them per account, so they belong to no application.
   * latest_version only grows, so version numbers are never reused; revision is renewed (at
   * random) whenever a version is written, so compiled copies know they are stale. */
  "CREATE TABLE templates ("
  "  name TEXT NOT NULL,"
  "  type TEXT NOT NULL CHECK (type IN ('EMAIL', 'SMS', 'PUSH')),"
  "  active_version INTEGER NOT NULL,"
  "  latest_version INTEGER NOT NULL,"
  "  creation_date TEXT NOT NULL,"
  "  last_modified_date TEXT NOT NULL,"
  "  PRIMARY KEY (name, type)"
  ") WITHOUT ROWID;"
  "CREATE TABLE template_versions ("
  "  name TEXT NOT NULL,"
  "  type TEXT NOT NULL,"
  "  version INTEGER NOT NULL,"
  "  parts TEXT NOT NULL,"
  "  revision INTEGER NOT NULL,"
  "  creation_date TEXT NOT NULL,"
  "  last_modified_date TEXT NOT NULL,"
  "  PRIMARY KEY (name, type, version),"
  "  FOREIGN KEY (name, type) REFERENCES templates(name, type)"
  ") WITHOUT ROWID;",

  /* 4: the key that signs tracking tokens (row 1; generated on first use), shared by every
   * process on this database so links minted by one are verified by another. */
  "CREATE TABLE tracking_keys ("
  "  id INTEGER PRIMARY KEY,"
  "  secret BLOB NOT NULL,"
  "  created_at TEXT NOT NULL"
  ");",

  /* 5: segments. Every save is a new version (campaigns may pin one); definition is the
   * Pinpoint WriteSegmentRequest JSON. An imported (static) segment's version lists its
   * endpoints in segment_members, fixed at import time. */
  "CREATE TABLE segments ("
  "  app_id TEXT NOT NULL REFERENCES applications(id),"
  "  id TEXT NOT NULL,"
  "  version INTEGER NOT NULL,"
  "  name TEXT NOT NULL,"
  "  segment_type TEXT NOT NULL CHECK (segment_type IN ('DIMENSIONAL', 'IMPORT')),"
  "  definition TEXT NOT NULL,"
  "  creation_date TEXT NOT NULL,"
  "  PRIMARY KEY (app_id, id, version)"
  ") WITHOUT ROWID;"
  "CREATE TABLE segment_members ("
  "  app_id TEXT NOT NULL,"
  "  segment_id TEXT NOT NULL,"
  "  version INTEGER NOT NULL,"
  "  endpoint_id TEXT NOT NULL,"
  "  PRIMARY KEY (app_id, segment_id, version, endpoint_id)"
  ") WITHOUT ROWID;",

  /* 6: event-triggered campaigns read the events table by seq; each campaign's position is
   * advanced in the same transaction as the outbox rows its events made, so an event fires a
   * trigger once, even across a crash. */
  "CREATE TABLE trigger_cursors ("
  "  app_id TEXT NOT NULL,"
  "  campaign_id TEXT NOT NULL,"
  "  last_seq INTEGER NOT NULL,"
  "  PRIMARY KEY (app_id, campaign_id)"
  ") WITHOUT ROWID;",

  /* 7: automatic A/B winner decisions, one per run (the primary key makes deciding twice
   * impossible). Written in the same transaction that releases the run's WAITING rows to the
   * winner (or skips them), so a crash leaves either no decision and rows still waiting, or
   * both. figures is the whole herald.ab.decide result as JSON (per arm x/n, rates and
   * intervals, comparisons with p-values). Creates a table only, so its place among other
   * migrations does not matter. */
  "CREATE TABLE ab_decisions ("
  "  run_id INTEGER PRIMARY KEY REFERENCES campaign_runs(id),"
  "  app_id TEXT NOT NULL,"
  "  campaign_id TEXT NOT NULL,"
  "  decided_ms INTEGER NOT NULL,"
  "  metric TEXT NOT NULL,"
  "  decision TEXT NOT NULL,"
  "  winner INTEGER,"
  "  policy TEXT NOT NULL,"
  "  released INTEGER NOT NULL,"
  "  reason TEXT NOT NULL,"
  "  figures TEXT NOT NULL"
  ");",
  /* 8: source is the definition file that last defined a campaign: when that file fails to
   * load, its stored campaigns become INVALID with the failure in error (file:line). audience
   * is what a stored copy needs to run without its source's file: the segment as JSON, or
   * NULL when the campaign depends on Lua functions (lua names them). A run's arms list the
   * treatments it materialised (-1 the holdout); NULL means every arm. */
  "ALTER TABLE campaigns ADD COLUMN source TEXT;"
  "ALTER TABLE campaigns ADD COLUMN error TEXT;"
  "ALTER TABLE campaigns ADD COLUMN audience TEXT;"
  "ALTER TABLE campaigns ADD COLUMN lua TEXT;"
  "ALTER TABLE campaign_runs ADD COLUMN arms TEXT;",
  /* 9: value indexes for segments (runtime/segment.c says why a side table and not expression
   * indexes: attributes are lists). value_indexes names the indexed attributes and metrics of
   * an application; indexed_values holds one row per (index, value, endpoint), kept in step
   * with endpoint writes and deletes in the same transaction. instant is the value read as an
   * ISO-8601 date-time (NULL when it is not one), for BEFORE, AFTER and BETWEEN. Endpoints are
   * referred to by id, not rowid, because VACUUM may renumber the rowids of endpoints. */
  "CREATE TABLE value_indexes ("
  "  id INTEGER PRIMARY KEY,"
  "  app_id TEXT NOT NULL REFERENCES applications(id),"
  "  kind TEXT NOT NULL CHECK (kind IN ('Attributes', 'UserAttributes', 'Metrics')),"
  "  name TEXT NOT NULL,"
  "  origin TEXT NOT NULL,"
  "  creation_date TEXT NOT NULL,"
  "  UNIQUE (app_id, kind, name)"
  ");"
  "CREATE TABLE indexed_values ("
  "  index_id INTEGER NOT NULL REFERENCES value_indexes(id),"
  "  value NOT NULL,"
  "  endpoint_id TEXT NOT NULL,"
  "  instant REAL,"
  "  PRIMARY KEY (index_id, value, endpoint_id)"
  ") WITHOUT ROWID;"
  "CREATE INDEX indexed_values_endpoint ON indexed_values(endpoint_id, index_id);"
  "CREATE INDEX indexed_values_instant ON indexed_values(index_id, instant)"
  "  WHERE instant IS NOT NULL;",
  /* 10: an endpoint's events are found through the unique (app_id, endpoint_id, event_id)
   * index, whose prefix is the same; a second index on (app_id, endpoint_id, timestamp) cost
   * every stored event (clicks, opens, PutEvents) one more b-tree insert and a WAL page per
   * commit, for the one reader that lists an endpoint's latest events (a sort of its rows). */
  "DROP INDEX events_by_endpoint;",
  /* 11: MaximumDuration counts from when a message was first due (Pinpoint: "after the
   * scheduled start time"), but retries and rate-limit deferrals move due_ms; first_due_ms
   * keeps the start. NULL in rows written before: due_ms stands in. */
  "ALTER TABLE outbox ADD COLUMN first_due_ms INTEGER;",
  /* 12: claimers (runtime/claimer.c): each process that claims outbox rows registers with a
   * random token, its host, pid and PID namespace, and refreshes a heartbeat; claimed_by names
   * its row instead of a pid, which another PID namespace reuses. A row claimed before by pid
   * gets a claimer for that pid with no namespace and a heartbeat at the upgrade, which
   * nothing renews: it goes back to PENDING once that heartbeat is old. */
  /* AUTOINCREMENT: a settled row's claimed_by never comes to name a later process */
  "CREATE TABLE claimers ("
  "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
  "  token TEXT NOT NULL UNIQUE,"
  "  host TEXT NOT NULL,"
  "  pid INTEGER NOT NULL,"
  "  pid_ns TEXT,"
  "  started_ms INTEGER NOT NULL,"
  "  heartbeat_ms INTEGER NOT NULL"
  ");"
  "INSERT INTO claimers(token, host, pid, started_ms, heartbeat_ms)"
  "  SELECT 'pid ' || coalesce(claimed_by, 0), '', coalesce(claimed_by, 0),"
  "    CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),"
  "    CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
  "  FROM outbox WHERE state = 'CLAIMED' GROUP BY coalesce(claimed_by, 0);"
  "UPDATE outbox SET claimed_by = (SELECT id FROM claimers"
  "  WHERE token = 'pid ' || coalesce(outbox.claimed_by, 0)) WHERE state = 'CLAIMED';",
  /* 13: why delivery paused a campaign (the last of its consecutive systemic failures), kept
   * until it is resumed; NULL when paused by hand or not paused. */
  "ALTER TABLE campaigns ADD COLUMN pause_reason TEXT;",
  /* 14: rate limits shared by every process on the store (runtime/ratelimit_store.c): the
   * state of each limit (key 'profile:NAME', 'global' or 'campaign:ID') as
   * herald_ratelimit_export writes it, and a generation every write moves on. */
  "CREATE TABLE rate_limits ("
  "  app_id TEXT NOT NULL,"
  "  key TEXT NOT NULL,"
  "  generation INTEGER NOT NULL,"
  "  state BLOB NOT NULL,"
  "  updated_ms INTEGER NOT NULL,"
  "  PRIMARY KEY (app_id, key)"
  ");",
  /* 15: an event campaign's trigger cursor is created with the campaign (runtime/campaign.c),
   * no longer when a runner first looks at it, which lost the events stored in between. An
   * event campaign stored before that no runner has looked at yet gets its cursor here, placed
   * after the events that arrived before its first event-campaign version was stored. */
  "INSERT INTO trigger_cursors(app_id, campaign_id, last_seq)"
  "  SELECT v.app_id, v.campaign_id, coalesce((SELECT max(e.seq) FROM events e"
  "    WHERE e.arrival <= strftime('%Y-%m-%dT%H:%M:%fZ', v.created_ms / 1000.0, 'unixepoch')), 0)"
  "  FROM (SELECT app_id, campaign_id, min(created_ms) AS created_ms FROM campaign_versions"
  "    WHERE CASE WHEN json_valid(definition)"
  "      THEN json_extract(definition, '$.Schedule.Frequency') END = 'EVENT'"
  "    GROUP BY app_id, campaign_id) v"
  "  WHERE EXISTS (SELECT 1 FROM campaigns c WHERE c.app_id = v.app_id AND c.id = v.campaign_id"
  "    AND CASE WHEN json_valid(c.definition)"
  "      THEN json_extract(c.definition, '$.Schedule.Frequency') END = 'EVENT')"
  "  ON CONFLICT (app_id, campaign_id) DO NOTHING;",
  /* 16: direct messages (herald.send, `herald send`), which have no outbox row: each sent one
   * is recorded so a provider's status webhook or a bounce or complaint mail (found by message
   * id) reaches its endpoint. endpoint_id is NULL for an Addresses entry: the endpoints with
   * its channel and address are looked up when a receipt comes. Rows older than
   * HERALD_OUTBOX_DIRECT_KEEP_MS are removed as new ones are written (runtime/outbox.c). */
  "CREATE TABLE direct_messages ("
  "  app_id TEXT NOT NULL,"
  "  message_id TEXT NOT NULL,"
  "  endpoint_id TEXT,"
  "  channel TEXT NOT NULL,"
  "  address TEXT NOT NULL,"
  "  sent_ms INTEGER NOT NULL,"
  "  PRIMARY KEY (app_id, message_id)"
  ") WITHOUT ROWID;"
  "CREATE INDEX direct_messages_sent ON direct_messages(sent_ms);",
  /* 17: a provider's status notification, a bounce or a complaint names its message by id, and
   * finding it by a scan of the outbox took ~200 ms at a million rows (a few receipts a second,
   * the loop blocked meanwhile). Notifications are of email and SMS messages only, and only a
   * message that was claimed can have been sent, so only those rows are indexed: the entry is
   * written with the claim, materialising a run (1,000,000 rows in ~2.5 s) pays nothing, where
   * an index over every row's random id doubled it, and push and custom messages pay nothing
   * either (a random index entry costs a claim a page write per message). The first 8 hex
   * digits of the id are enough to find it (the lookup compares the whole id) and keep the
   * index small. */
  "CREATE INDEX outbox_message_claimed ON outbox(substr(message_id, 1, 8))"
  "  WHERE claimed_ms IS NOT NULL AND channel IN ('EMAIL', 'SMS');",
  /* 18: the application's address opt-out list. An SMS OPTOUT (a STOP reply) or an email
   * COMPLAINT of a direct message to an address the request named was recorded only on the
   * endpoints with that address, and with none it was lost: the next direct message went to
   * the recipient who had asked for none. Pinpoint keeps SMS opt-outs per number; herald keeps
   * them per channel and address here (runtime/ingest.c writes them, herald.send refuses them,
   * herald.send.lift_optout removes one). source is the event (_SMS.OPTOUT, _email.complaint),
   * message_id the message whose receipt it was, opted_out_at the notification's Timestamp. */
  "CREATE TABLE address_optouts ("
  "  app_id TEXT NOT NULL,"
  "  channel TEXT NOT NULL,"
  "  address TEXT NOT NULL,"
  "  source TEXT NOT NULL,"
  "  message_id TEXT NOT NULL,"
  "  reason TEXT,"
  "  opted_out_at TEXT NOT NULL,"
  "  PRIMARY KEY (app_id, channel, address)"
  ") WITHOUT ROWID;",
};

const int herald_store_migration_count =
    (int)(sizeof herald_store_migrations / sizeof herald_store_migrations[0]);
