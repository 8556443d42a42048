# bench/run row "triggers": latency from herald.events.put to the outbox row of an
# event-triggered campaign, while a separate process puts 1,000 events/s for 5 s (override with
# BENCH_TRIGGER_RATE / BENCH_TRIGGER_SECONDS). The figure is the p99 in seconds; the reference
# column is the 100 ms budget, so the ratio must stay at or below 1.
set -euo pipefail
rate=${BENCH_TRIGGER_RATE:-1000}
seconds=${BENCH_TRIGGER_SECONDS:-5}
cd "$BENCH_DIR"
"$HERALD" --db t.db -e 'for i = 1, 1000 do assert(herald.endpoints.put{ Id = string.format("ep-%05d", i),
  ChannelType = "EMAIL", Address = string.format("u%05d@example.com", i) }) end'
cat > trig.lua <<'LUA'
herald.campaign{ name = 'trig', segment = herald.segment{ name = 'all' },
  schedule = { event = { types = { 'cart.add' } } }, message = { body = 'x' },
  deliver = { file = 'trig-out.txt' } }
LUA
"$HERALD" --db t.db run trig.lua > run.log 2>&1 &
pid=$!
sleep 1
"$HERALD" --db t.db "$ROOT/bench/trigger_load.lua" "$rate" "$seconds" > load.log
sleep 1
kill -TERM $pid
wait $pid || true
p99=$("$HERALD" --db t.db -e '
  local rows = assert(herald.db.query([[SELECT r.started_ms - CAST(json_extract(e.attributes, "$.put_ms") AS INTEGER) AS lat
    FROM outbox o JOIN campaign_runs r ON r.id = o.run_id
    JOIN events e ON e.seq = CAST(substr(o.note, 7) AS INTEGER) ORDER BY lat]]))
  assert(#rows > 0, "no triggered rows")
  io.write(string.format("%.3f %d", rows[math.max(1, math.ceil(#rows * 0.99))].lat / 1000, #rows))')
read -r secs count <<<"$p99"
printf 'triggers\t%s\t0.100\t1.0\tp99 put -> outbox row at %s events/s for %s s (%s rows)\n' "$secs" "$rate" "$seconds" "$count"
