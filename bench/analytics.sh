# bench/run row "clicks": click redirects (GET /t/c/TOKEN -> 302 to the signed URL, token
# verified by HMAC, click stored as an _email.click event; each 302 is written only once its
# click is durable: a busy loop iteration's clicks in the hit journal, one write, and in the
# events table in transactions of up to 1,024 (runtime/ingest.h); all are counted in the
# events table after the server stops) served
# by `herald serve`, against nginx (nginx-light, one worker, access log off) answering the same
# path with `return 302`. wrk, one thread, the same
# connection count on both, 2 s warm-up then BENCH_CLICK_SECONDS (default 5) measured; each side
# runs twice and the better run counts (the machine is shared).
# Rows follow bench/run: name, herald seconds, reference seconds, target ratio, note; here the
# seconds are per 1,000,000 requests (1e6 / requests per second), so the target "herald at
# least 0.5x nginx's requests/s" is a time ratio <= 2.0.
#
# Row "putevents": PutEvents ingestion (POST /v1/apps/default/events) into `herald serve`'s
# store: wrk, one thread, BENCH_EVENTS_CONNECTIONS (default 4) connections, a Lua script that
# sends Pinpoint EventsRequests of 10 endpoints x 10 events (each item with its Endpoint, which
# is upserted) with event ids unique per request, 1 s warm-up then BENCH_EVENTS_SECONDS (default
# 5) measured. Events stored = rows counted in the database afterwards (warm-up excluded); the
# rate is that count over wrk's measured time. The reference column is the target, 50,000
# events/s, as seconds per 1,000,000 events (20 s), so the target ratio is 1.0.
# Runs alone too: bash bench/analytics.sh (uses build/bin/herald, builds it if missing).
set -euo pipefail
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
HERALD=${HERALD:-$ROOT/build/bin/herald}
[ -x "$HERALD" ] || (cd "$ROOT" && tools/build release >/dev/null)
own_dir=""
if [ -z "${BENCH_DIR:-}" ]; then
  BENCH_DIR=$(mktemp -d "${TMPDIR:-/tmp}/herald-bench.XXXXXX")
  own_dir=$BENCH_DIR
fi
seconds=${BENCH_CLICK_SECONDS:-5}
conns=${BENCH_CLICK_CONNECTIONS:-50}
for tool in wrk nginx curl python3; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "bench analytics: $tool is missing" >&2; exit 1; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

export HERALD_TRACKING_KEY=bench-tracking-key-0123456789abcdef
herald_pid="" nginx_pid=""
cleanup() {
  [ -z "$herald_pid" ] || kill -TERM "$herald_pid" 2>/dev/null || true
  [ -z "$nginx_pid" ] || kill -TERM "$nginx_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -z "$own_dir" ] || rm -rf "$own_dir"
}
trap cleanup EXIT

# The clicked endpoint exists, so every click is stored as an _email.click event.
"$HERALD" --db "$BENCH_DIR/h.db" -e "assert(herald.endpoints.put{Id='endpoint-000001', ChannelType='EMAIL',
  Address='reader@example.com'})"
"$HERALD" --db "$BENCH_DIR/h.db" serve --listen 127.0.0.1:0 >"$BENCH_DIR/serve.out" 2>"$BENCH_DIR/serve.err" &
herald_pid=$!
for _ in $(seq 100); do grep -q 'listening' "$BENCH_DIR/serve.out" 2>/dev/null && break; sleep 0.05; done
herald_port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$BENCH_DIR/serve.out")
[ -n "$herald_port" ] || { echo "bench analytics: herald serve did not start: $(cat "$BENCH_DIR/serve.err")" >&2; exit 1; }

target=https://shop.example.com/landing?utm_source=herald
click=$("$HERALD" --db "$BENCH_DIR/h.db" -e "io.write(herald.tracking.click_url{campaign='bench', run=1,
  treatment=0, endpoint='endpoint-000001', message_id='msg-000001', url='$target',
  base='http://127.0.0.1:$herald_port'})")
path=${click#http://127.0.0.1:$herald_port}

nginx_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$BENCH_DIR/nginx"
cat >"$BENCH_DIR/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $BENCH_DIR/nginx/nginx.pid;
error_log $BENCH_DIR/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $BENCH_DIR/nginx/body;
  proxy_temp_path $BENCH_DIR/nginx/proxy;
  fastcgi_temp_path $BENCH_DIR/nginx/fastcgi;
  uwsgi_temp_path $BENCH_DIR/nginx/uwsgi;
  scgi_temp_path $BENCH_DIR/nginx/scgi;
  server {
    listen 127.0.0.1:$nginx_port;
    location / { return 302 $target; }
  }
}
CONF
"$NGINX" -p "$BENCH_DIR/nginx" -c "$BENCH_DIR/nginx/nginx.conf" 2>"$BENCH_DIR/nginx/start.err" &
nginx_pid=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$nginx_port/" && break; sleep 0.05; done

# Both must answer the same redirect before they are timed.
for url in "http://127.0.0.1:$herald_port$path" "http://127.0.0.1:$nginx_port$path"; do
  got=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "$url")
  [ "$got" = "302 $target" ] || { echo "bench analytics: $url answered '$got'" >&2; exit 1; }
done

# Prints the requests/s of the better of two wrk runs; fails on any non-3xx answer or error.
measure() {
  local url=$1 best=0
  wrk -t1 -c"$conns" -d2s "$url" >/dev/null
  for _ in 1 2; do
    local out
    out=$(wrk -t1 -c"$conns" -d"${seconds}s" "$url")
    if grep -qE 'Non-2xx or 3xx|Socket errors' <<<"$out"; then
      echo "bench analytics: errors against $url:" >&2
      echo "$out" >&2
      exit 1
    fi
    local rps
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    best=$(awk -v a="$best" -v b="$rps" 'BEGIN { print (b > a ? b : a) }')
  done
  echo "$best"
}
# the server's CPU time (utime + stime, in clock ticks) around a measured run tells the
# capacity apart from what other processes on the (shared) machine take
ticks() { awk '{ print $14 + $15 }' "/proc/$herald_pid/stat"; }
hz=$(getconf CLK_TCK)
click_ticks0=$(ticks)
load=$(cut -d' ' -f1-3 /proc/loadavg) # other work on the machine, noted in the row
herald_rps=$(measure "http://127.0.0.1:$herald_port$path")
click_ticks=$(( $(ticks) - click_ticks0 ))
nginx_rps=$(measure "http://127.0.0.1:$nginx_port$path")

# PutEvents: the wrk script builds each body with ids unique to the request.
cat >"$BENCH_DIR/putevents.lua" <<'LUA'
local n = 0
local prefix = os.getenv("BENCH_PREFIX") or "w"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local items = {}
  for e = 1, 10 do
    local ep = string.format("bench-%02d", e)
    local events = {}
    for k = 1, 10 do
      events[k] = string.format('"%s-%d-%d-%d":{"EventType":"bench.view","Timestamp":"2026-11-29T10:00:00Z",'
        .. '"Attributes":{"page":"home","ref":"campaign"},"Metrics":{"ms":%d}}', prefix, n, e, k, k)
    end
    items[e] = string.format('"%s":{"Endpoint":{"ChannelType":"EMAIL","Address":"%s@example.com",'
      .. '"Attributes":{"plan":["pro"]}},"Events":{%s}}', ep, ep, table.concat(events, ","))
  end
  return wrk.format(nil, "/v1/apps/default/events", nil, '{"BatchItem":{' .. table.concat(items, ",") .. '}}')
end
LUA
ev_seconds=${BENCH_EVENTS_SECONDS:-5}
ev_conns=${BENCH_EVENTS_CONNECTIONS:-4}
events_url="http://127.0.0.1:$herald_port/v1/apps/default/events"
BENCH_PREFIX=warm wrk -t1 -c"$ev_conns" -d1s -s "$BENCH_DIR/putevents.lua" "$events_url" >/dev/null
ev_ticks0=$(ticks)
ev_out=$(BENCH_PREFIX=run wrk -t1 -c"$ev_conns" -d"${ev_seconds}s" -s "$BENCH_DIR/putevents.lua" "$events_url")
if grep -qE 'Non-2xx or 3xx|Socket errors' <<<"$ev_out"; then
  echo "bench analytics: errors against PutEvents:" >&2
  echo "$ev_out" >&2
  exit 1
fi
ev_ticks=$(( $(ticks) - ev_ticks0 ))
ev_time=$(sed -n 's/.* requests in \([0-9.]*\)s.*/\1/p' <<<"$ev_out")
ev_requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$ev_out")
stored=$("$HERALD" --db "$BENCH_DIR/h.db" -e "io.write(herald.db.query(
  \"SELECT count(*) AS n FROM events WHERE event_type = 'bench.view' AND event_id LIKE 'run-%'\")[1].n)")

# kill and wait here, not in a subshell (which cannot wait for the server), so the stop line
# with the counts is written before it is read
kill -TERM "$herald_pid"
wait "$herald_pid" || true
clicks=$(sed -n 's/.*(\([0-9]*\) opens, \([0-9]*\) clicks.*/\2/p' "$BENCH_DIR/serve.out")
stored_clicks=$("$HERALD" --db "$BENCH_DIR/h.db" -e "io.write(herald.db.query(
  \"SELECT count(*) AS n FROM events WHERE event_type = '_email.click'\")[1].n)")
herald_pid=""
awk -v h="$herald_rps" -v n="$nginx_rps" -v c="$conns" -v k="$clicks" -v st="$stored_clicks" -v t="$click_ticks" -v hz="$hz" -v l="$load" 'BEGIN {
  printf "clicks\t%.3f\t%.3f\t2.0\t302 redirects per 1M requests, wrk 1 thread %d conns: herald %.0f req/s, nginx %.0f req/s (%.2fx); %s clicks counted, %s stored as events; herald CPU %.1f us per click; load average %s\n",
    1e6 / h, 1e6 / n, c, h, n, h / n, k, st, (k > 0 ? t / hz * 1e6 / k : 0), l }'
awk -v s="$stored" -v t="$ev_time" -v r="$ev_requests" -v c="$ev_conns" -v k="$ev_ticks" -v hz="$hz" 'BEGIN {
  printf "putevents\t%.3f\t%.3f\t1.0\tseconds per 1M events stored, against the 50,000 events/s target: %d requests of 100 events in %.2f s, %d events stored = %.0f events/s (wrk 1 thread %d conns); server CPU %.2f s = %.0f events per CPU-second\n",
    1e6 / (s / t), 1e6 / 50000, r, t, s, s / t, c, k / hz, (k > 0 ? s / (k / hz) : 0) }'
