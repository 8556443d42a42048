# bench/run row "import": herald importing N endpoints (default 1,000,000) from NDJSON against
# the sqlite3 shell importing the same rows as CSV (.mode csv / .import) into a table of the
# same columns with the same indexes as herald's (unique id, address, user id). Both write in
# WAL mode with synchronous=NORMAL on the same disk. Each side runs twice; the best time counts
# (the machine is shared, so the better run is the one least disturbed).
set -euo pipefail
rows=${BENCH_IMPORT_ROWS:-1000000}
"$HERALD" "$ROOT/bench/gen_endpoints.lua" "$rows" "$BENCH_DIR/endpoints.ndjson" "$BENCH_DIR/endpoints.csv"

cat >"$BENCH_DIR/reference.sql" <<SQL
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE endpoints (id TEXT NOT NULL UNIQUE, channel_type TEXT, address TEXT, user_id TEXT,
  interests TEXT, plan TEXT, score REAL, timezone TEXT, country TEXT);
CREATE INDEX endpoints_address ON endpoints(address);
CREATE INDEX endpoints_user ON endpoints(user_id);
.mode csv
.import --skip 1 $BENCH_DIR/endpoints.csv endpoints
SQL

now() { date +%s.%N; }
min_elapsed() { awk -v best="$1" -v t0="$2" -v t1="$3" 'BEGIN { d = t1 - t0; print (d < best ? d : best) }'; }
best_herald=999999 best_ref=999999
for run in 1 2; do
  rm -f "$BENCH_DIR"/h.db* "$BENCH_DIR"/r.db*
  t0=$(now)
  "$HERALD" --db "$BENCH_DIR/h.db" import endpoints "$BENCH_DIR/endpoints.ndjson" >/dev/null
  t1=$(now)
  sqlite3 "$BENCH_DIR/r.db" <"$BENCH_DIR/reference.sql" >/dev/null
  t2=$(now)
  n=$(sqlite3 "$BENCH_DIR/r.db" 'SELECT count(*) FROM endpoints')
  [ "$n" -eq "$rows" ] || { echo "reference imported $n rows, expected $rows" >&2; exit 1; }
  best_herald=$(min_elapsed "$best_herald" "$t0" "$t1")
  best_ref=$(min_elapsed "$best_ref" "$t1" "$t2")
done
n=$("$HERALD" --db "$BENCH_DIR/h.db" -e 'io.write(herald.endpoints.count())')
[ "$n" -eq "$rows" ] || { echo "herald imported $n rows, expected $rows" >&2; exit 1; }
printf 'import\t%s\t%s\t2.0\t%s endpoints, NDJSON vs sqlite3 .import CSV, 3 indexes each\n' \
  "$best_herald" "$best_ref" "$rows"
