-- Time-zone and schedule computations: conversions per second and whole schedules. Run with
-- the release build:
--   build/bin/herald bench/time.lua [conversions]
local time = require('herald').time
local clock = os.clock

local n = tonumber(arg and arg[1]) or 200000

local function row(what, count, seconds)
  print(string.format('%-44s %10d  %8.3f s  %9.2f us each', what, count, seconds, seconds / count * 1e6))
end

local zones = { 'Europe/Paris', 'America/New_York', 'Australia/Sydney', 'Asia/Kolkata',
                'Pacific/Chatham', 'UTC+05:30' }
local base = time.parse('2026-01-01T00:00:00Z')

local t0 = clock()
for i = 1, n do time['local'](base + i * 997003, zones[i % #zones + 1]) end
row('UTC -> local, 6 zones in turn', n, clock() - t0)

t0 = clock()
for i = 1, n do
  time.to_utc { year = 2026, month = i % 12 + 1, day = i % 28 + 1, hour = i % 24, min = i % 60,
                zone = zones[i % #zones + 1] }
end
row('local -> UTC, 6 zones in turn', n, clock() - t0)

local qt = time.quiet_time { Start = '22:00', End = '07:00' }
t0 = clock()
for i = 1, n do time.quiet(qt, base + i * 997003, zones[i % #zones + 1]) end
row('quiet time check with end, 6 zones', n, clock() - t0)

local daily = time.schedule { StartTime = '2026-01-01T09:00:00', Timezone = 'Europe/Paris', Frequency = 'DAILY' }
t0 = clock()
local runs = daily:runs(daily.start_ms, time.parse('2027-01-01'))
row('a year of daily runs (Europe/Paris)', #runs, clock() - t0)
t0 = clock()
runs = daily:runs(daily.start_ms, time.parse('2036-01-01'))
row('ten years of daily runs', #runs, clock() - t0)
t0 = clock()
local at = daily.start_ms
for _ = 1, 3650 do at = daily:next_run(at).ms end
row('next_run, 3,650 times in a row', 3650, clock() - t0)

local all = {}
for _, z in ipairs { 'Africa', 'America', 'Asia', 'Australia', 'Europe', 'Pacific' } do
  local p = io.popen('ls /usr/share/zoneinfo/' .. z)
  for name in p:lines() do
    if time.zone(z .. '/' .. name) then all[#all + 1] = z .. '/' .. name end
  end
  p:close()
end
local run = time.schedule { StartTime = '2026-07-01T09:00:00', Frequency = 'DAILY', IsLocalTime = true }:run(0)
t0 = clock()
local slices = time.slices(run, all)
row(string.format('slices of %d zones (%d distinct instants)', #all, #slices), #all, clock() - t0)
