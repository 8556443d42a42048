# bench/run row "paced": the CPU a rate-limited campaign costs. 20,000 email messages
# (BENCH_PACED_MESSAGES) to a file with limits.messages_per_second = 2,000 (BENCH_PACED_RATE),
# delivered by `herald run --until-idle`, against the same campaign with no limit on a copy of
# the same store. Rows go out a message-interval apart, so the loop wakes for a few at a time;
# herald's figure is that run's CPU seconds (user + system), the reference the unpaced run's.
# Target: pacing costs at most 3x the CPU of sending the same messages at once. The note gives
# the paced run's wall time, which the limit sets (about messages / rate).
set -euo pipefail
n=${BENCH_PACED_MESSAGES:-20000}
rate=${BENCH_PACED_RATE:-2000}
cd "$BENCH_DIR"
{ echo Id,ChannelType,Address; seq 1 "$n" | awk '{ printf "e%07d,EMAIL,u%d@example.com\n", $1, $1 }'; } > eps.csv
"$HERALD" --db base.db import endpoints eps.csv > /dev/null
for kind in paced unpaced; do
  limits=""
  [ "$kind" = paced ] && limits="limits = { messages_per_second = $rate },"
  cat > "$kind.lua" <<LUA
herald.campaign { name = '$kind', segment = herald.segment { name = 'all' },
  message = { email = { subject = 'Hi {{Id}}', text = 'Your weekly digest for {{Address}}' } },
  $limits deliver = { file = '$kind.txt' } }
LUA
  cp base.db "$kind.db"
  /usr/bin/time -f '%e %U %S' -o "$kind.time" "$HERALD" --db "$kind.db" run --until-idle "$kind.lua" > /dev/null
  sent=$(grep -c '^--- message' "$kind.txt")
  [ "$sent" -eq "$n" ] || { echo "paced: the $kind run sent $sent of $n" >&2; exit 1; }
done
read -r pwall pu ps < paced.time
read -r uwall uu us < unpaced.time
pcpu=$(awk -v a="$pu" -v b="$ps" 'BEGIN { printf "%.3f", a + b }')
ucpu=$(awk -v a="$uu" -v b="$us" 'BEGIN { printf "%.3f", a + b }')
printf 'paced\t%s\t%s\t3.0\t%d messages at %d/s: CPU %s s paced (wall %s s) vs %s s unpaced (wall %s s)\n' \
  "$pcpu" "$ucpu" "$n" "$rate" "$pcpu" "$pwall" "$ucpu" "$uwall"
