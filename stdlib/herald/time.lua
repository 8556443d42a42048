-- herald.time: instants (UTC milliseconds) in time zones, ISO 8601, campaign schedules
-- (Pinpoint's Schedule) and quiet time. The computations are C (runtime/tz.c on the system tz
-- database, runtime/schedule.c); the rules they follow are written in runtime/schedule.h.
--
-- Zones are tz database names ("Europe/Paris") or Pinpoint's fixed offsets ("UTC",
-- "UTC+05:30", "UTC-08"). Runtime failures (an unknown zone in endpoint data, bad text)
-- return nil, err; definition errors raise with a message that names the field, e.g.
-- "Schedule.QuietTime.Start: '25:00' is not HH:MM".
--
-- Quiet time and endpoints without a valid zone: Pinpoint ignores quiet time for such an
-- endpoint (and does not target it at all in a local-time campaign). We use the fallback zone
-- (the campaign's) for both, and return why, so the caller records MISSING_TIMEZONE or
-- INVALID_TIMEZONE for the endpoint instead of letting it vanish or bypass quiet hours.
local core = require 'herald.core.schedule'
local clock = require 'herald.core.clock'

local time = {}

local Schedule = {}
Schedule.__index = Schedule

local function is_schedule(v)
  return getmetatable(v) == Schedule
end

-- Zone name -> the name, or nil, err.
function time.zone(name)
  if type(name) ~= 'string' then return nil, 'time zone missing' end
  return core.zone(name)
end

-- The instant an ISO 8601 text names. A text without Z or an offset is a wall time in zone
-- (default UTC); a date alone is its midnight. Returns ms, fold ('gap' or 'overlap' when the
-- wall time was skipped or repeated by a DST change) | nil, err.
function time.parse(text, zone)
  if type(text) ~= 'string' then return nil, 'expected an ISO 8601 text, got a ' .. type(text) end
  local t, err = core.parse_iso(text)
  if not t then return nil, err end
  if t.offset then
    local wall = core.to_utc(t.year, t.month, t.day, t.hour, t.min, t.sec, t.ms, 'UTC')
    return wall - t.offset * 1000
  end
  return core.to_utc(t.year, t.month, t.day, t.hour, t.min, t.sec, t.ms, zone or 'UTC')
end

-- "2026-03-29T03:30:00+02:00" for ms seen in zone (default UTC, written with Z).
function time.format(ms, zone)
  return core.format_iso(ms, zone or 'UTC')
end

-- ms seen in zone: {year, month, day, hour, min, sec, ms, wday (1 = Sunday), yday, isdst,
-- offset (seconds east of UTC), abbr, zone} | nil, err.
-- `local` is a Lua keyword: call it as herald.time['local'](ms, zone) or time.local_time.
function time.local_time(ms, zone)
  return core.to_local(ms, zone or 'UTC')
end
time['local'] = time.local_time

-- The instant at which zone's clock shows {year=, month=, day=, hour=, min=, sec=, ms=,
-- zone=} (hour, min, sec, ms default to 0, zone to UTC). A wall time skipped by a DST change
-- moves forward by the gap; a repeated one is its first occurrence. Returns ms, fold | nil, err.
function time.to_utc(t)
  if type(t) ~= 'table' then error('herald.time.to_utc: expected a table {year=, month=, day=, ...}', 2) end
  local v = {}
  for i, k in ipairs { 'year', 'month', 'day', 'hour', 'min', 'sec', 'ms' } do
    local x = t[k]
    if x == nil and i > 3 then x = 0 end
    v[i] = math.tointeger(x)
    if v[i] == nil then
      error('herald.time.to_utc: ' .. k .. ' must be a whole number, got ' .. tostring(t[k]), 2)
    end
  end
  return core.to_utc(v[1], v[2], v[3], v[4], v[5], v[6], v[7], t.zone or 'UTC')
end

---------------------------------------------------------------------------------------------
-- Definitions

-- Field names: Pinpoint's, or herald's lower-case ones; errors use the spelling given.
local FIELDS = {
  StartTime = 'start', EndTime = 'end', Frequency = 'frequency', IsLocalTime = 'is_local_time',
  Timezone = 'timezone', QuietTime = 'quiet_time', EventFilter = 'event_filter',
}
local FREQUENCIES = { ONCE = true, HOURLY = true, DAILY = true, WEEKLY = true, MONTHLY = true, EVENT = true }
local HERALD_FIELDS = {}
for _, v in pairs(FIELDS) do HERALD_FIELDS[v] = true end

local function fail(path, msg)
  error({ path = path, msg = msg }, 0)
end

local function hhmm(path, v)
  if type(v) ~= 'string' then fail(path, "expected 'HH:MM', got " .. (v == nil and 'nothing' or 'a ' .. type(v))) end
  local m, err = core.hhmm(v)
  if not m then fail(path, err) end
  return m
end

local function build_quiet(def, path)
  if type(def) ~= 'table' then fail(path, "expected a table { Start = 'HH:MM', End = 'HH:MM' }") end
  local pinpoint = def.Start ~= nil or def.End ~= nil
  local sk, ek = pinpoint and 'Start' or 'start', pinpoint and 'End' or 'end'
  for k in pairs(def) do
    if k ~= sk and k ~= ek then fail(path .. '.' .. tostring(k), 'unknown field (allowed: ' .. sk .. ', ' .. ek .. ')') end
  end
  local s = hhmm(path .. '.' .. sk, def[sk])
  local e = hhmm(path .. '.' .. ek, def[ek])
  if s == e then
    fail(path, string.format("%s and %s are equal ('%s'): the window would be empty", sk, ek, def[sk]))
  end
  return { start = def[sk], ['end'] = def[ek], start_min = s, end_min = e, quiet_time = true }
end

local function instant(path, v, zone, now_ms, allow_immediate)
  if allow_immediate and v == 'IMMEDIATE' then return now_ms or clock.now() end
  if math.type(v) == 'integer' then return v end
  if type(v) ~= 'string' then
    fail(path, "expected an ISO 8601 time" .. (allow_immediate and " or 'IMMEDIATE'" or '') ..
      ', got ' .. (v == nil and 'nothing' or 'a ' .. type(v)))
  end
  local ms, err = time.parse(v, zone)
  if not ms then fail(path, err) end
  return ms
end

local function build(def, opts)
  if type(def) ~= 'table' then fail(opts.path or 'Schedule', 'expected a table') end
  local pinpoint
  for k in pairs(def) do
    local style = FIELDS[k] and 'pinpoint' or HERALD_FIELDS[k] and 'herald' or nil
    if style == nil then
      fail((opts.path or 'Schedule') .. '.' .. tostring(k), 'unknown field')
    end
    if pinpoint ~= nil and pinpoint ~= (style == 'pinpoint') then
      fail(opts.path or 'Schedule', "mixes Pinpoint field names (StartTime, ...) with herald's (start, ...)")
    end
    pinpoint = style == 'pinpoint'
  end
  if pinpoint == nil then pinpoint = true end
  local path = opts.path or (pinpoint and 'Schedule' or 'schedule')
  local function field(name)
    for k, v in pairs(FIELDS) do
      if v == name then
        local key = pinpoint and k or v
        return def[key], path .. '.' .. key
      end
    end
  end

  local zone, zpath = field('timezone')
  if zone == nil then zone = 'UTC' end
  if type(zone) ~= 'string' then fail(zpath, 'expected a time zone name') end
  local ok, zerr = core.zone(zone)
  if not ok then fail(zpath, zerr) end

  local frequency, fpath = field('frequency')
  frequency = frequency or 'ONCE'
  if not FREQUENCIES[frequency] then
    fail(fpath, string.format("'%s' is not a frequency (ONCE, HOURLY, DAILY, WEEKLY, MONTHLY, EVENT)", tostring(frequency)))
  end

  local is_local, lpath = field('is_local_time')
  if is_local == nil then is_local = false end
  if type(is_local) ~= 'boolean' then fail(lpath, 'expected true or false') end

  local start, spath = field('start')
  if start == nil then fail(spath, 'required') end
  local start_ms = instant(spath, start, zone, opts.now_ms, true)
  local stop, epath = field('end')
  local end_ms
  if stop ~= nil then
    end_ms = instant(epath, stop, zone, nil, false)
    if end_ms < start_ms then
      fail(epath, string.format("'%s' is before %s '%s'", time.format(end_ms, zone),
        pinpoint and 'StartTime' or 'start', time.format(start_ms, zone)))
    end
  end

  local quiet, qpath = field('quiet_time')
  if quiet ~= nil then quiet = build_quiet(quiet, qpath) end

  local s, err = core.new(frequency, zone, start_ms, end_ms)
  if not s then fail(spath, err) end
  local event_filter = field('event_filter')
  return setmetatable({
    frequency = frequency, timezone = zone, is_local_time = is_local, start_ms = start_ms,
    end_ms = end_ms, quiet_time = quiet, event_filter = event_filter, core = s,
  }, Schedule)
end

-- Validates a schedule definition (Pinpoint's Schedule or herald's lower-case form:
-- start, end, frequency, is_local_time, timezone, quiet_time = {start, end}). opts.path
-- prefixes field names in errors; opts.now_ms is the instant 'IMMEDIATE' stands for (default:
-- the clock's now). Returns the schedule, or nil, message, field path.
function time.check_schedule(def, opts)
  local ok, s = pcall(build, def, opts or {})
  if ok then return s end
  if type(s) == 'table' then return nil, s.path .. ': ' .. s.msg, s.path end
  error(s, 0)
end

-- As check_schedule, raising definition errors at the caller's line.
function time.schedule(def, opts)
  local s, msg = time.check_schedule(def, opts)
  if not s then error(msg, 2) end
  return s
end

-- Validates a quiet time {Start = 'HH:MM', End = 'HH:MM'} (or start/end); raises naming path
-- (default 'QuietTime').
function time.quiet_time(def, path)
  if type(def) == 'table' and def.quiet_time == true then return def end
  local ok, q = pcall(build_quiet, def, path or 'QuietTime')
  if ok then return q end
  if type(q) == 'table' then error(q.path .. ': ' .. q.msg, 2) end
  error(q, 0)
end

local function as_schedule(v, level)
  if is_schedule(v) then return v end
  local s, msg = time.check_schedule(v)
  if not s then error(msg, level + 1) end
  return s
end

---------------------------------------------------------------------------------------------
-- Runs

-- A run: {index (0 = the first), ms (its instant in the schedule's zone), nominal = {year,
-- month, day, hour, min, sec} (its wall time), fold, schedule}. In a local-time schedule
-- earliest_ms and latest_ms bound when any zone receives it (clocks run from UTC-12 to UTC+14).
local function decorate(self, run)
  run.schedule = self
  if self.is_local_time then
    if self.frequency == 'HOURLY' then
      run.earliest_ms, run.latest_ms = run.ms, run.ms
    else
      local n = run.nominal
      run.earliest_ms = core.to_utc(n.year, n.month, n.day, n.hour, n.min, n.sec, 0, 'UTC+14')
      run.latest_ms = core.to_utc(n.year, n.month, n.day, n.hour, n.min, n.sec, 0, 'UTC-12')
    end
  end
  return run
end

function Schedule:run(index)
  local run = self.core:run(index)
  return run and decorate(self, run)
end

function Schedule:next_run(after_ms)
  local run, err = self.core:next_after(after_ms or clock.now())
  if run == nil then return nil, err end
  return decorate(self, run)
end

function Schedule:runs(from_ms, to_ms)
  local list, err = self.core:runs(from_ms, to_ms)
  if not list then return nil, err end
  for _, run in ipairs(list) do decorate(self, run) end
  return list
end

-- The first run after after_ms (default: now), or nil when there is none.
function time.next_run(schedule, after_ms)
  return as_schedule(schedule, 2):next_run(after_ms)
end

-- Every run with from_ms <= run.ms < to_ms, in order | nil, err (more than 100,000 runs).
function time.runs(schedule, from_ms, to_ms)
  return as_schedule(schedule, 2):runs(from_ms, to_ms)
end

-- When an endpoint in zone receives a run: the run's nominal wall time on zone's clock
-- (HOURLY runs are not shifted). nominal is a run, or a wall time {year, month, day, hour,
-- min, sec}. A missing or unknown zone falls back to fallback_zone (for a run: the schedule's
-- zone by default). Returns due_ms, zone used, fallback reason (nil, 'MISSING_TIMEZONE' or
-- 'INVALID_TIMEZONE'), fold | nil, err.
function time.local_delivery(nominal, zone, fallback_zone)
  if type(nominal) ~= 'table' then error('herald.time.local_delivery: expected a run or a wall time table', 2) end
  if type(zone) ~= 'string' then zone = nil end
  if nominal.schedule ~= nil and nominal.index ~= nil then
    return nominal.schedule.core:local_due(nominal.index, zone, fallback_zone)
  end
  local reason
  if zone == nil or zone == '' then
    reason = 'MISSING_TIMEZONE'
  elseif not core.zone(zone) then
    reason = 'INVALID_TIMEZONE'
  end
  if reason then
    if fallback_zone == nil then return nil, 'no fallback zone for an endpoint whose zone is ' .. (zone and "'" .. zone .. "'" or 'missing') end
    zone = fallback_zone
  end
  local n = nominal
  local ms, fold = core.to_utc(n.year, n.month, n.day, n.hour or 0, n.min or 0, n.sec or 0, 0, zone)
  if not ms then return nil, fold end
  return ms, zone, reason, fold
end

-- The distinct instants at which the zones (a list of endpoint zone names, "" for a missing
-- one) receive run, in time order: {{due_ms, zones = {names}, fallback = {names that fell
-- back}}, ...}. The scheduler waits once per slice, not once per endpoint.
function time.slices(run, zones, fallback_zone)
  if type(run) ~= 'table' or run.schedule == nil then error('herald.time.slices: expected a run', 2) end
  if type(zones) ~= 'table' then error('herald.time.slices: expected a list of zone names', 2) end
  return run.schedule.core:slices(run.index, zones, fallback_zone)
end

---------------------------------------------------------------------------------------------
-- Quiet time

-- Whether ms is quiet for an endpoint in zone, and when its quiet time ends (ms itself when
-- it is not quiet): the `defer` policy sends then, the `skip` policy drops the message.
-- quiet_time is {Start, End} (or a validated one). A missing or unknown zone uses
-- fallback_zone. Returns is_quiet, ends_at_ms, zone used, fallback reason | nil, err.
function time.quiet(quiet_time, ms, zone, fallback_zone)
  local q = quiet_time
  if type(q) ~= 'table' or q.quiet_time ~= true then
    local ok, built = pcall(build_quiet, q, 'QuietTime')
    if not ok then
      if type(built) == 'table' then error(built.path .. ': ' .. built.msg, 2) end
      error(built, 0)
    end
    q = built
  end
  local reason
  if type(zone) ~= 'string' or zone == '' then
    reason = 'MISSING_TIMEZONE'
  elseif not core.zone(zone) then
    reason = 'INVALID_TIMEZONE'
  end
  if reason then
    if fallback_zone == nil then
      if reason == 'MISSING_TIMEZONE' then return nil, 'time zone missing' end
      return core.zone(zone)
    end
    zone = fallback_zone
  end
  local quiet, ends = core.quiet(q.start_min, q.end_min, ms, zone)
  if quiet == nil then return nil, ends end
  return quiet, ends, zone, reason
end

-- A schedule's quiet time for an endpoint (falling back to the schedule's zone).
function Schedule:quiet(ms, zone)
  if self.quiet_time == nil then return false, ms, zone end
  return time.quiet(self.quiet_time, ms, zone, self.timezone)
end

function Schedule:__tostring()
  return tostring(self.core)
end

time.is_schedule = is_schedule

return time
