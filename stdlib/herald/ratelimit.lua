-- herald.ratelimit: limits over several windows at once, optionally under a shared parent (a
-- global or per-provider cap), on the runtime clock. Each window is a hard cap: no span of its
-- period admits more than its limit (a whole limit may go at once).
--   local rl = herald.ratelimit.new{per_second = 10, per_day = 20000, parent = global}
--   local ok, next_slot_ms = rl:take()   -- not granted: schedule the message for next_slot_ms
--   local ok, next_slot_ms = rl:check() -- the same answer as take(), admitting nothing
--   local slot_ms = rl:reserve()         -- book the next slot (later calls get later slots)
--   rl:pause(res.retry_after_ms)         -- honour a 429's Retry-After
--   local state = rl:export()            -- what it counts and its pause, as a string
--   assert(other:import(state))          -- nil, err for a string export() did not make
-- windows = {} alone makes a limit that only pauses. A limit lives in this process:
-- herald.deliver keeps its own in the store, shared by every process on it.
local core = require 'herald.core.ratelimit'

return {
  new = core.new,
}
