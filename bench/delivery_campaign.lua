-- One side of bench/delivery.lua's campaign rows, run as its own process on a fresh store with
-- the endpoints already imported: writes a campaign version and its outbox rows, then drives
-- deliver.drain exactly as `herald run` does (claims of 256 in the default four lanes, outcomes recorded in chunks of 64 as they come)
-- until every row is settled. Prints "seconds sent failed body_bytes", then "cpu LOOP OTHER": the
-- CPU time per message of the loop thread and of the other threads (the transport), in us.
--   herald --db D bench/delivery_campaign.lua webhook|smtp URL N CONNECTIONS
local outbox = require 'herald.core.outbox'
local clock = require 'herald.core.clock'
local json = require 'herald.json'
local deliver = require 'herald.deliver'
local providers = require 'herald.providers'

local kind, url, n, conns = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
assert(kind == 'webhook' or kind == 'smtp', 'webhook or smtp')
local channel = kind == 'webhook' and 'CUSTOM' or 'EMAIL'
local text = string.rep('The quick brown fox jumps over the lazy dog. ', 60):sub(1, 1650)

local profile = kind == 'webhook'
  and { type = 'webhook', url = url, connections = conns }
  or { type = 'smtp', url = url, from = 'Herald Bench <bench@herald.example>', sessions = conns }
deliver.configure(providers.check({ profiles = { p = profile }, channels = { [channel] = 'p' } }, 'bench'))

local body = kind == 'webhook' and 'Your order {{Id}} has shipped and will arrive on Tuesday.' or text
outbox.define_campaign('bench', 'bench', json.encode {
  Name = 'bench', TreatmentName = 'default', AdditionalTreatments = json.array {},
  MessageConfiguration = { DefaultMessage = { Body = body }, EmailMessage = { Title = 'Your weekly digest', Body = body } },
  Herald = { Deliver = { type = 'channels' } },
})

-- Rows are written in runs of 10,000 so the row list stays small (the peak RSS the memory row
-- reports is the delivery's, not a list of a million rows in Lua). Runs are made
-- idempotently at fixed times in the past, so a restart after a kill finds them written and
-- continues (rows claimed but not reported when killed are returned to PENDING first).
local RUN = 10000
local base = 1767225600000  -- 2026-01-01T00:00:00Z
outbox.recover()
for first = 1, n, RUN do
  local rows = {}
  for i = first, math.min(n, first + RUN - 1) do
    rows[#rows + 1] = { endpoint_id = string.format('ep-%07d', i), treatment = 0, channel = channel,
                        address = kind == 'webhook' and ('hook-' .. i) or 'sink@example.org',
                        due_ms = base + (first - 1) // RUN }
  end
  -- each slice is a run written through the trigger path: the cursor moves by one per slice
  -- with compare-and-set, so a slice written before a kill is not written again
  local slice = (first - 1) // RUN
  local seq = outbox.trigger_cursor('bench')
  if seq == slice then
    outbox.trigger { campaign_id = 'bench', version = 1, now_ms = base + slice, from_seq = slice,
                     to_seq = slice + 1, rows = rows }
  end
end
collectgarbage()

-- CPU seconds of each thread of this process by thread id (Linux /proc; ticks of 1/100 s).
local function thread_cpu()
  local stat = assert(io.open('/proc/self/stat')):read('a')
  local pid = stat:match('^(%d+)')
  local out = {}
  local ls = assert(io.popen('ls /proc/' .. pid .. '/task'))
  for tid in ls:lines() do
    local f = io.open('/proc/' .. pid .. '/task/' .. tid .. '/stat')
    if f then
      local utime, stime = f:read('a'):match('^%d+ %b() %S+ ' .. string.rep('%S+ ', 10) .. '(%d+) (%d+)')
      f:close()
      out[tid] = (tonumber(utime) + tonumber(stime)) / 100
    end
  end
  ls:close()
  return out, pid
end

local ids = '["bench"]'
local cpu0 = thread_cpu()
local t0 = clock.now()
while true do
  local claimed, next_due = deliver.drain(clock.now(), 256, ids)
  if claimed == 0 then
    if next_due == nil then break end
    herald.sleep(math.max(1, math.min(100, next_due - clock.now())))
  end
end
local elapsed = (clock.now() - t0) / 1000
local size = kind == 'webhook' and #require('herald.channels.webhook').payload { {
  endpoint_id = 'ep-0000001', endpoint = herald.endpoints.get('ep-0000001'), body = body:gsub('{{Id}}', 'ep-0000001'),
  campaign_id = 'bench', treatment_id = 0, scheduled_time = '2026-11-29T00:00:00.000Z', app_id = 'default', activity_id = '1' } } or #text
print(string.format('%.3f %d %d %d', elapsed, deliver.stats.sent, deliver.stats.failed + deliver.stats.dead, size))
local cpu1, pid = thread_cpu()
local loop_s, other_s = 0, 0
for tid, c in pairs(cpu1) do
  local d = c - (cpu0[tid] or 0)
  if tid == pid then loop_s = loop_s + d else other_s = other_s + d end
end
print(string.format('cpu %.1f %.1f', loop_s * 1e6 / n, other_s * 1e6 / n))
