# bench/run row "campaigns": materialising one run of a campaign (10% holdout, 3 treatments)
# over N endpoints (default 1,000,000) into the outbox, against the sqlite3 shell running a
# plain INSERT INTO outbox SELECT ... of the same rows (arm by cohort, holdout reason) on a
# copy of the same database. Herald's run also computes a message id per row, checks opt-out,
# status, address and duplicate addresses. Each side runs twice on a fresh copy; the best time
# counts. Peak memory of the herald process above an idle herald is reported in the note.
set -euo pipefail
rows=${BENCH_CAMPAIGN_ROWS:-1000000}
db="$BENCH_DIR/base.db"
"$HERALD" --db "$db" -e 'herald.endpoints.count()'
sqlite3 "$db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $rows)
  INSERT INTO endpoints(app_id, id, channel_type, address, cohort_id, opt_out, effective_date, creation_date)
  SELECT 'default', printf('ep-%08d', i), 'EMAIL', printf('user%08d@example.com', i), abs(random()) % 100,
    CASE WHEN i % 50 = 0 THEN 'ALL' ELSE 'NONE' END, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z' FROM n;
  PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null

cat >"$BENCH_DIR/reference.sql" <<'SQL'
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
BEGIN IMMEDIATE;
INSERT INTO campaign_runs(app_id, campaign_id, campaign_version, scheduled_ms, created_at)
  VALUES ('default', 'bench', 1, 0, 'now');
INSERT INTO outbox(run_id, endpoint_id, treatment, message_id, channel, address, due_ms, state, reason)
  SELECT 1, e.id, CASE WHEN e.cohort_id < 10 THEN -1 WHEN e.cohort_id < 40 THEN 0
    WHEN e.cohort_id < 70 THEN 1 ELSE 2 END, 'bench-' || e.id, e.channel_type, e.address, 0,
    CASE WHEN e.cohort_id < 10 THEN 'SKIPPED' ELSE 'PENDING' END,
    CASE WHEN e.cohort_id < 10 THEN 'HOLDOUT' END
  FROM endpoints e WHERE e.app_id = 'default';
COMMIT;
SQL

now() { date +%s.%N; }
min_of() { awk -v a="$1" -v b="$2" 'BEGIN { print (b < a ? b : a) }'; }
best_herald=999999 best_ref=999999 peak=0
for run in 1 2; do
  cp "$db" "$BENCH_DIR/h.db"; cp "$db" "$BENCH_DIR/r.db"
  out=$(/usr/bin/time -f '%M' -o "$BENCH_DIR/mem" "$HERALD" --db "$BENCH_DIR/h.db" "$ROOT/bench/campaign_materialize.lua")
  read -r secs total _ <<<"$out"
  [ "$total" -eq "$rows" ] || { echo "herald materialised $total rows, expected $rows" >&2; exit 1; }
  best_herald=$(min_of "$best_herald" "$secs")
  peak=$(cat "$BENCH_DIR/mem")
  t0=$(now)
  sqlite3 "$BENCH_DIR/r.db" <"$BENCH_DIR/reference.sql" >/dev/null
  t1=$(now)
  n=$(sqlite3 "$BENCH_DIR/r.db" 'SELECT count(*) FROM outbox')
  [ "$n" -eq "$rows" ] || { echo "reference wrote $n rows, expected $rows" >&2; exit 1; }
  best_ref=$(min_of "$best_ref" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
done
/usr/bin/time -f '%M' -o "$BENCH_DIR/idle" "$HERALD" --db "$BENCH_DIR/h.db" -e 'herald.endpoints.count()'
idle=$(cat "$BENCH_DIR/idle")
printf 'campaigns\t%s\t%s\t2.0\t%s endpoints, holdout + 3 treatments, vs sqlite3 INSERT ... SELECT; peak %d MB (%d MB above idle)\n' \
  "$best_herald" "$best_ref" "$rows" $((peak / 1024)) $(((peak - idle) / 1024))
