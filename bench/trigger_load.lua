-- bench/triggers.sh helper: puts events at `rate` per second for `seconds`, each carrying the
-- instant it was put, paced by the loop's timer.
local rate, seconds = tonumber(arg[1]), tonumber(arg[2])
local clock = require 'herald.core.clock'
local n = 0
local start = clock.now()
while n < rate * seconds do
  local due = start + n * 1000 // rate
  local wait = due - clock.now()
  if wait > 0 then herald.sleep(wait) end
  n = n + 1
  local now = clock.now()
  assert(herald.events.put(string.format('ep-%05d', n % 1000 + 1), {
    EventId = 'load-' .. n, EventType = 'cart.add',
    Timestamp = herald.time.format(now), Attributes = { put_ms = tostring(now) },
  }))
end
print(n)
