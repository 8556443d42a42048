# bench/run rows "webhook" and "smtp": herald's transport engine against wrk (HTTP POSTs to
# nginx `return 200`, same body size and connection count) and against smtp-source (2 KB
# messages to smtp-sink, same count and sessions). Target: herald at least 0.3x the reference's
# rate (a time ratio of at most 3.33) and at least 20,000 webhooks/s.
# Standalone: bash bench/delivery.sh [webhook|smtp] [--messages N] [--mails N] [--connections N]
set -euo pipefail
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
HERALD=${HERALD:-$ROOT/build/bin/herald}
[ -x "$HERALD" ] || (cd "$ROOT" && tools/build release >/dev/null)
ulimit -n 65536 2>/dev/null || true
exec "$HERALD" "$ROOT/bench/delivery.lua" "$@"
