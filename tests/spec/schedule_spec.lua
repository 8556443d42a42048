-- Schedules: run times across DST in several zones, local-time delivery, quiet time and
-- definition errors. Expected instants come from Python's zoneinfo (tests/helpers/tzref.lua).
local time = require('herald').time
local clock = require 'herald.core.clock'
local ref = require 'tzref'

local function py_list(list)
  return "['" .. table.concat(list, "','") .. "']"
end

local function num(s)
  return math.tointeger(tonumber(s))
end

local function local_wall(ms, zone)
  local t = time['local'](ms, zone)
  return string.format('%04d-%02d-%02dT%02d:%02d', t.year, t.month, t.day, t.hour, t.min)
end

describe('daily, weekly and monthly runs', function()
  it('keeps daily 09:00 at 09:00 local for 400 days in six zones', function()
    local zones = { 'Europe/Paris', 'America/New_York', 'Australia/Sydney', 'Asia/Kolkata',
                    'America/Sao_Paulo', 'Pacific/Chatham' }
    local lines = ref.python([[
for z in ]] .. py_list(zones) .. [[:
    d = datetime(2026, 1, 10)
    print(z, ' '.join(str(to_utc(z, (d + timedelta(days=k)).year, (d + timedelta(days=k)).month, (d + timedelta(days=k)).day, 9)) for k in range(400)))
]])
    for _, line in ipairs(lines) do
      local f = ref.fields(line)
      local zone = f[1]
      local s = time.schedule { StartTime = '2026-01-10T09:00:00', Timezone = zone, Frequency = 'DAILY' }
      local runs = s:runs(s.start_ms, f[#f] + 1)
      assert.are.equal(400, #runs, zone)
      for k, run in ipairs(runs) do
        assert.are.equal(f[k + 1], run.ms, zone .. ' run ' .. k)
        assert.are.equal(k - 1, run.index)
        assert.are.equal(9, time['local'](run.ms, zone).hour)
        assert.are.same({ 9, 0 }, { run.nominal.hour, run.nominal.min })
      end
      -- the UTC hour moves with DST where the zone has it
      local utc_hours = {}
      for _, run in ipairs(runs) do utc_hours[time['local'](run.ms, 'UTC').hour * 60 + time['local'](run.ms, 'UTC').min] = true end
      local distinct = 0
      for _ in pairs(utc_hours) do distinct = distinct + 1 end
      local dst = zone ~= 'Asia/Kolkata' and zone ~= 'America/Sao_Paulo'
      assert.are.equal(dst and 2 or 1, distinct, zone)
    end
  end)

  it('runs a daily 02:30 in Paris at 03:30 on the spring-forward day and at the first 02:30 in autumn', function()
    local s = time.schedule { StartTime = '2026-03-27T02:30:00', Timezone = 'Europe/Paris', Frequency = 'DAILY' }
    local walls, folds = {}, {}
    for _, run in ipairs(s:runs(s.start_ms, time.parse('2026-04-01T00:00:00Z'))) do
      walls[#walls + 1] = time.format(run.ms, 'Europe/Paris')
      folds[#folds + 1] = run.fold or '-'
    end
    assert.are.same({ '2026-03-27T02:30:00+01:00', '2026-03-28T02:30:00+01:00', '2026-03-29T03:30:00+02:00',
                      '2026-03-30T02:30:00+02:00', '2026-03-31T02:30:00+02:00' }, walls)
    assert.are.same({ '-', '-', 'gap', '-', '-' }, folds)
    local autumn = s:next_run(time.parse('2026-10-24T12:00:00Z'))
    assert.are.equal('2026-10-25T02:30:00+02:00', time.format(autumn.ms, 'Europe/Paris'))
    assert.are.equal('overlap', autumn.fold)
    local after = s:run(autumn.index + 1)
    assert.are.equal('2026-10-26T02:30:00+01:00', time.format(after.ms, 'Europe/Paris'))
    assert.are.equal(25 * 3600000, after.ms - autumn.ms)
  end)

  it('runs weekly on the same weekday and wall time across DST (New York, Sydney)', function()
    local lines = ref.python([[
for z, y, m, d in [('America/New_York', 2026, 1, 5), ('Australia/Sydney', 2026, 1, 5)]:
    s = datetime(y, m, d, 8)
    print(z, ' '.join(str(to_utc(z, (s + timedelta(weeks=k)).year, (s + timedelta(weeks=k)).month, (s + timedelta(weeks=k)).day, 8)) for k in range(60)))
]])
    for _, line in ipairs(lines) do
      local f = ref.fields(line)
      local s = time.schedule { StartTime = '2026-01-05T08:00:00', Timezone = f[1], Frequency = 'WEEKLY' }
      local runs = time.runs(s, s.start_ms, f[#f] + 1)
      assert.are.equal(60, #runs)
      for k, run in ipairs(runs) do
        assert.are.equal(f[k + 1], run.ms)
        local t = time['local'](run.ms, f[1])
        assert.are.same({ 2, 8, 0 }, { t.wday, t.hour, t.min }) -- Monday 08:00
      end
    end
  end)

  it('clamps a monthly day 31 (and 29, 30) to the last day of shorter months', function()
    local lines = ref.python([[
import calendar
for z, day in [('Australia/Sydney', 31), ('Europe/Paris', 30), ('America/New_York', 29)]:
    out = []
    for k in range(30):
        y, m = 2027 + (k // 12), k % 12 + 1
        d = min(day, calendar.monthrange(y, m)[1])
        out.append('%04d-%02d-%02d/%d' % (y, m, d, to_utc(z, y, m, d, 10, 15)))
    print(z, day, ' '.join(out))
]])
    for _, line in ipairs(lines) do
      local f = ref.fields(line)
      local s = time.schedule { StartTime = string.format('2027-01-%02dT10:15:00', f[2]), Timezone = f[1],
                                Frequency = 'MONTHLY', EndTime = '2029-06-30T10:15:00' }
      local runs = s:runs(s.start_ms, time.parse('2030-01-01'))
      assert.are.equal(30, #runs, f[1])
      for k, run in ipairs(runs) do
        local want_day, want_ms = f[k + 2]:match('^(%S+)/(%d+)$')
        assert.are.equal(num(want_ms), run.ms, f[1] .. ' ' .. want_day)
        assert.are.equal(want_day .. 'T10:15', local_wall(run.ms, f[1]))
      end
    end
    -- after a short month the day goes back to 31 rather than staying clamped
    local s = time.schedule { StartTime = '2027-01-31T10:15:00Z', Frequency = 'MONTHLY' }
    local days = {}
    for k = 0, 4 do days[#days + 1] = s:run(k).nominal.day end
    assert.are.same({ 31, 28, 31, 30, 31 }, days)
    assert.are.equal(29, s:next_run(time.parse('2028-02-01')).nominal.day) -- leap year
  end)
end)

describe('hourly runs', function()
  it('are one hour of elapsed time apart across DST changes, never doubled or skipped in UTC', function()
    local s = time.schedule { StartTime = '2026-03-28T22:00:00', Timezone = 'Europe/Paris', Frequency = 'HOURLY' }
    local spring = s:runs(s.start_ms, time.parse('2026-03-29T06:00:00', 'Europe/Paris'))
    local lines = ref.python([[
t = to_utc('Europe/Paris', 2026, 3, 28, 22)
for k in range(7):
    print(datetime.fromtimestamp(t / 1000 + 3600 * k, ZoneInfo('Europe/Paris')).strftime('%H:%M'))
t = to_utc('Europe/Paris', 2026, 10, 24, 22)
for k in range(7):
    print(datetime.fromtimestamp(t / 1000 + 3600 * k, ZoneInfo('Europe/Paris')).strftime('%H:%M'))
]])
    assert.are.equal(7, #spring) -- 22:00 CET to 06:00 CEST is 7 hours
    for k, run in ipairs(spring) do
      if k > 1 then assert.are.equal(3600000, run.ms - spring[k - 1].ms) end
      assert.are.equal(lines[k], local_wall(run.ms, 'Europe/Paris'):sub(12))
    end
    assert.are.same({ '22:00', '23:00', '00:00', '01:00', '03:00', '04:00', '05:00' },
      { table.unpack(lines, 1, 7) })

    local fall = time.schedule { StartTime = '2026-10-24T22:00:00', Timezone = 'Europe/Paris', Frequency = 'HOURLY' }
    local runs = fall:runs(fall.start_ms, fall.start_ms + 7 * 3600000)
    assert.are.equal(7, #runs)
    for k, run in ipairs(runs) do
      assert.are.equal(fall.start_ms + (k - 1) * 3600000, run.ms)
      assert.are.equal(lines[7 + k], local_wall(run.ms, 'Europe/Paris'):sub(12))
    end
    assert.are.same({ '22:00', '23:00', '00:00', '01:00', '02:00', '02:00', '03:00' },
      { table.unpack(lines, 8, 14) })
  end)
end)

describe('once, event, end time and next_run', function()
  it('runs ONCE at its start only, EVENT never, and bounds runs by EndTime inclusively', function()
    local once = time.schedule { StartTime = '2026-05-01T12:00:00+02:00' }
    assert.are.equal('ONCE', once.frequency)
    assert.are.equal(time.parse('2026-05-01T10:00:00Z'), time.next_run(once, 0).ms)
    assert.is_nil(time.next_run(once, once.start_ms))
    assert.is_nil(once:run(1))
    local event = time.schedule { StartTime = '2026-05-01T12:00:00Z', Frequency = 'EVENT', EndTime = '2026-06-01T00:00:00Z' }
    assert.is_nil(time.next_run(event, 0))
    assert.are.same({}, time.runs(event, 0, time.parse('2027-01-01')))

    local s = time.schedule { StartTime = '2026-05-01T09:00:00', EndTime = '2026-05-04T09:00:00', Timezone = 'America/New_York', Frequency = 'DAILY' }
    local runs = time.runs(s, 0, time.parse('2027-01-01'))
    assert.are.equal(4, #runs) -- 1, 2, 3 and 4 May: EndTime itself is included
    assert.are.equal(s.end_ms, runs[4].ms)
    assert.is_nil(time.next_run(s, runs[4].ms))
    local short = time.schedule { StartTime = '2026-05-01T09:00:00', EndTime = '2026-05-04T08:59:59', Timezone = 'America/New_York', Frequency = 'DAILY' }
    assert.are.equal(3, #time.runs(short, 0, time.parse('2027-01-01')))
  end)

  it('next_run agrees with the list of runs for instants all through a year', function()
    local s = time.schedule { StartTime = '2026-01-31T23:30:00', Timezone = 'Pacific/Chatham', Frequency = 'MONTHLY' }
    local all = s:runs(0, time.parse('2028-01-01'))
    for _, freq in ipairs { 'DAILY', 'WEEKLY', 'HOURLY' } do
      local other = time.schedule { StartTime = '2026-03-29T02:30:00', Timezone = 'Europe/Paris', Frequency = freq }
      local list = other:runs(0, time.parse(freq == 'HOURLY' and '2026-04-10' or '2027-06-01'))
      for i = 2, #list, 7 do
        assert.are.equal(list[i].ms, other:next_run(list[i - 1].ms).ms)
        assert.are.equal(list[i].ms, other:next_run(list[i].ms - 1).ms)
        assert.are.equal(list[i].index, other:next_run(list[i].ms - 1).index)
      end
      assert.are.equal(list[1].ms, other:next_run(0).ms)
    end
    for i = 2, #all do
      assert.are.equal(all[i].ms, s:next_run(all[i - 1].ms + 1).ms)
      assert.are.equal(all[i].ms, s:next_run((all[i - 1].ms + all[i].ms) // 2).ms)
    end
  end)

  it('refuses to list more than 100,000 runs at once, and lists from the first instant', function()
    local s = time.schedule { StartTime = '2000-01-01T00:00:00Z', Frequency = 'HOURLY' }
    assert.are.same({ nil, 'more than 100000 runs between the two instants; ask for a shorter range' },
      { time.runs(s, 0, time.parse('2020-01-01')) })
    assert.are.equal(24, #time.runs(s, -62135596800000, time.parse('2000-01-02')))
    assert.are.equal(0, #time.runs(s, time.parse('2000-01-02'), time.parse('2000-01-02')))
    assert.are.same({ nil, 'instant 253402300800000 ms is out of range (years 1-9999)' },
      { time.runs(s, 0, 253402300800000) })
  end)

  it('computes a year of daily runs in well under a second', function()
    local s = time.schedule { StartTime = '2026-01-01T09:00:00', Timezone = 'Europe/Paris', Frequency = 'DAILY' }
    local started = os.clock()
    local runs = s:runs(s.start_ms, time.parse('2027-01-01'))
    local at = s.start_ms - 1
    for _ = 1, 365 do at = s:next_run(at).ms end
    local elapsed = os.clock() - started
    assert.are.equal(365, #runs)
    assert.are.equal(runs[365].ms, at)
    assert.is_true(elapsed < 0.1, string.format('%.3f s', elapsed))
  end)

  it('steps through months of runs on the manual clock, DST changes included', function()
    clock.set_manual(time.parse('2026-02-01T14:00:00Z'))
    local ok, err = pcall(function()
      local sched = time.schedule { StartTime = 'IMMEDIATE', Timezone = 'America/New_York', Frequency = 'DAILY',
                                    EndTime = '2026-12-31T23:59:59Z' }
      assert.are.equal(clock.now(), sched.start_ms)
      local count, hours = 0, {}
      while true do
        local run = time.next_run(sched) -- after the clock's now
        if run == nil then break end
        clock.advance(run.ms - clock.now())
        count = count + 1
        local t = time['local'](clock.now(), 'America/New_York')
        hours[t.hour * 100 + t.min] = true
      end
      assert.are.equal(333, count) -- 2 Feb to 31 Dec
      assert.are.same({ [900] = true }, hours)
    end)
    clock.set_manual(nil)
    assert(ok, err)
  end)
end)

describe('local-time delivery', function()
  local ZONES = { 'Pacific/Kiritimati', 'Pacific/Chatham', 'Pacific/Auckland', 'Australia/Sydney',
                  'Asia/Tokyo', 'Asia/Kathmandu', 'Asia/Kolkata', 'Europe/Moscow', 'Europe/Berlin',
                  'Europe/Paris', 'Europe/London', 'UTC', 'America/Sao_Paulo', 'America/New_York',
                  'America/Chicago', 'America/Los_Angeles', 'Pacific/Honolulu', 'Pacific/Pago_Pago',
                  'UTC+05:30', 'UTC-08' }

  it('gives each endpoint the run at its own 09:00, every day of a year, in twenty zones', function()
    local iana = {}
    for _, z in ipairs(ZONES) do
      if not z:match('^UTC[+-]') then iana[#iana + 1] = z end
    end
    local lines = ref.python([[
d0 = datetime(2026, 1, 1)
for z in ]] .. py_list(iana) .. [[:
    print(z, ' '.join(str(to_utc(z, (d0 + timedelta(days=k)).year, (d0 + timedelta(days=k)).month, (d0 + timedelta(days=k)).day, 9)) for k in range(0, 365, 3)))
]])
    local s = time.schedule { StartTime = '2026-01-01T09:00:00', Timezone = 'UTC-08', Frequency = 'DAILY', IsLocalTime = true }
    for _, line in ipairs(lines) do
      local f = ref.fields(line)
      for i = 2, #f do
        local run = s:run((i - 2) * 3)
        local due, used, reason = time.local_delivery(run, f[1])
        assert.are.same({ f[i], f[1] }, { due, used }, line:sub(1, 40))
        assert.is_nil(reason)
        assert.is_true(run.earliest_ms <= due and due <= run.latest_ms)
      end
    end
    local run = s:run(0)
    assert.are.equal(time.parse('2026-01-01T09:00:00+05:30'), (time.local_delivery(run, 'UTC+05:30')))
    assert.are.equal(time.parse('2026-01-01T09:00:00-08:00'), (time.local_delivery(run, 'UTC-08')))
  end)

  it('falls back to the campaign zone for missing or unknown zones and says why', function()
    -- 02:30 on 8 March 2026 exists in Paris but not in New York, which springs forward that night
    local s = time.schedule { StartTime = '2026-03-08T02:30:00', Timezone = 'Europe/Paris', Frequency = 'DAILY', IsLocalTime = true }
    local run = s:run(0)
    local paris_due = time.parse('2026-03-08T02:30:00+01:00')
    assert.are.same({ paris_due, 'Europe/Paris', 'MISSING_TIMEZONE' }, { time.local_delivery(run, nil) })
    assert.are.same({ paris_due, 'Europe/Paris', 'MISSING_TIMEZONE' }, { time.local_delivery(run, '') })
    assert.are.same({ paris_due, 'Europe/Paris', 'INVALID_TIMEZONE' }, { time.local_delivery(run, 'Mars/Olympus') })
    assert.are.same({ time.parse('2026-03-08T02:30:00+08:00'), 'Asia/Singapore', 'INVALID_TIMEZONE' },
      { time.local_delivery(run, 'Mars/Olympus', 'Asia/Singapore') })
    assert.are.same({ time.parse('2026-03-08T03:30:00-04:00'), 'America/New_York', nil, 'gap' },
      { time.local_delivery(run, 'America/New_York') })
    assert.are.same({ time.parse('2026-03-09T02:30:00-04:00'), 'America/New_York' },
      { time.local_delivery(s:run(1), 'America/New_York') })
    assert.are.same({ nil, "unknown time zone 'Nowhere' (expected a tz database name like Europe/Paris or a fixed offset like UTC+05:30)" },
      { time.local_delivery(run, 'Mars/Olympus', 'Nowhere') })
    -- a wall time instead of a run
    local ny = ref.python("print(to_utc('America/New_York', 2026, 3, 8, 2, 30))")
    assert.are.same({ num(ny[1]), 'America/New_York', nil, 'gap' },
      { time.local_delivery({ year = 2026, month = 3, day = 8, hour = 2, min = 30 }, 'America/New_York') })
    assert.are.same({ time.parse('2026-03-08T02:30:00+05:30'), 'Asia/Kolkata', 'INVALID_TIMEZONE' },
      { time.local_delivery({ year = 2026, month = 3, day = 8, hour = 2, min = 30 }, 'x', 'Asia/Kolkata') })
    assert.is_nil((time.local_delivery({ year = 2026, month = 3, day = 8, hour = 2, min = 30 }, 'x')))
  end)

  it('groups endpoint zones into distinct due instants, in time order', function()
    local s = time.schedule { StartTime = '2026-07-01T09:00:00', Timezone = 'America/New_York', Frequency = 'WEEKLY', IsLocalTime = true }
    local run = s:run(0)
    local zones = { 'Europe/Paris', 'Europe/Berlin', '', 'Asia/Kolkata', 'Nope/Nope', 'Europe/Madrid',
                    'America/New_York', 'UTC+05:30', 'Pacific/Chatham', 'America/Toronto', 'Europe/Paris' }
    local slices = time.slices(run, zones)
    local got = {}
    for _, sl in ipairs(slices) do
      got[#got + 1] = { time.format(sl.due_ms), table.concat(sl.zones, ','), table.concat(sl.fallback, ',') }
    end
    assert.are.same({
      { '2026-06-30T20:15:00Z', 'Pacific/Chatham', '' },
      { '2026-07-01T03:30:00Z', 'Asia/Kolkata,UTC+05:30', '' },
      { '2026-07-01T07:00:00Z', 'Europe/Paris,Europe/Berlin,Europe/Madrid,Europe/Paris', '' },
      { '2026-07-01T13:00:00Z', 'America/New_York,America/Toronto', ',Nope/Nope' },
    }, got)
    for i = 2, #slices do assert.is_true(slices[i - 1].due_ms < slices[i].due_ms) end
    assert.are.same({}, time.slices(run, {}))
    assert.has_error(function() time.slices(run, { 'Europe/Paris', 3 }) end,
      'zones[2]: expected a string ("" for a missing zone), got a number')
  end)

  it('does not shift hourly runs by zone', function()
    local s = time.schedule { StartTime = '2026-07-01T09:00:00Z', Frequency = 'HOURLY', IsLocalTime = true }
    local run = s:run(5)
    assert.are.equal(run.ms, (time.local_delivery(run, 'Asia/Kolkata')))
    assert.are.equal(1, #time.slices(run, { 'Asia/Kolkata', 'America/New_York' }))
  end)
end)

describe('quiet time', function()
  -- Python scans minute by minute for the end of quiet time: an independent brute force.
  local function expected(cases)
    local rows = {}
    for _, c in ipairs(cases) do
      rows[#rows + 1] = string.format("('%s', %d, %d, %d, %d, %d)", c.zone, c.start // 60, c.start % 60,
        c.stop // 60, c.stop % 60, c.from)
    end
    return ref.python([[
def quiet(z, sm, em, t):
    d = datetime.fromtimestamp(t / 1000, ZoneInfo(z))
    m = d.hour * 60 + d.minute
    return (sm <= m < em) if sm < em else (m >= sm or m < em)
for (z, sh, smi, eh, emi, frm) in []] .. table.concat(rows, ',') .. [[]:
    sm, em = sh * 60 + smi, eh * 60 + emi
    for k in range(0, 48 * 60, 20):
        t = frm + k * 60000
        e = t
        while quiet(z, sm, em, e): e += 60000
        print(z, t, 1 if quiet(z, sm, em, t) else 0, e)
]])
  end

  it('matches a minute-by-minute scan over DST nights, windows crossing midnight or not', function()
    local H = function(hh, mm) return hh * 60 + (mm or 0) end
    local cases = {
      { zone = 'Europe/Paris', start = H(22), stop = H(7), from = time.parse('2026-03-28T12:00:00Z') },
      { zone = 'Europe/Paris', start = H(1), stop = H(2, 30), from = time.parse('2026-03-28T12:00:00Z') },
      { zone = 'Europe/Paris', start = H(23), stop = H(2, 30), from = time.parse('2026-10-24T12:00:00Z') },
      { zone = 'Europe/Paris', start = H(2, 30), stop = H(4), from = time.parse('2026-10-24T12:00:00Z') },
      { zone = 'America/New_York', start = H(21, 30), stop = H(8, 15), from = time.parse('2026-03-07T12:00:00Z') },
      { zone = 'America/New_York', start = H(0, 30), stop = H(1, 30), from = time.parse('2026-10-31T12:00:00Z') },
      { zone = 'Australia/Sydney', start = H(22), stop = H(6), from = time.parse('2026-04-04T00:00:00Z') },
      { zone = 'Australia/Sydney', start = H(2), stop = H(2, 45), from = time.parse('2026-10-03T00:00:00Z') },
      { zone = 'Pacific/Chatham', start = H(2), stop = H(3), from = time.parse('2026-09-26T00:00:00Z') },
      { zone = 'Asia/Kolkata', start = H(9), stop = H(17), from = time.parse('2026-03-28T00:00:00Z') },
      { zone = 'America/Sao_Paulo', start = H(22), stop = H(7), from = time.parse('2019-02-15T12:00:00Z') },
    }
    local lines = expected(cases)
    assert.are.equal(#cases * 144, #lines)
    local quiet_seen, ends_differ = 0, 0
    for i, line in ipairs(lines) do
      local c = cases[(i - 1) // 144 + 1]
      local f = ref.fields(line)
      local qt = { Start = string.format('%02d:%02d', c.start // 60, c.start % 60),
                   End = string.format('%02d:%02d', c.stop // 60, c.stop % 60) }
      local is_quiet, ends = time.quiet(qt, f[2], f[1])
      assert.are.same({ f[3] == 1, f[4] }, { is_quiet, ends }, line .. ' ' .. qt.Start .. '-' .. qt.End)
      if is_quiet then quiet_seen = quiet_seen + 1 end
      if ends ~= f[2] then ends_differ = ends_differ + 1 end
    end
    assert.is_true(quiet_seen > 300 and ends_differ == quiet_seen)
  end)

  it('defers to the end of quiet time on DST nights as documented', function()
    local qt = time.quiet_time { Start = '22:00', End = '07:00' }
    -- Paris, spring forward: the night is an hour shorter, quiet time ends at 07:00 CEST
    local q, ends = time.quiet(qt, time.parse('2026-03-28T23:00:00+01:00'), 'Europe/Paris')
    assert.is_true(q)
    assert.are.equal('2026-03-29T07:00:00+02:00', time.format(ends, 'Europe/Paris'))
    -- an End skipped by the change ends quiet time at the change (03:00 CEST), not at 03:30
    q, ends = time.quiet({ Start = '01:00', End = '02:30' }, time.parse('2026-03-29T01:45:00+01:00'), 'Europe/Paris')
    assert.is_true(q)
    assert.are.equal('2026-03-29T03:00:00+02:00', time.format(ends, 'Europe/Paris'))
    -- fall back: 02:10 CET comes after 02:59 CEST, so a window ending at 02:30 is quiet again
    q, ends = time.quiet({ Start = '23:00', End = '02:30' }, time.parse('2026-10-25T02:00:00+02:00'), 'Europe/Paris')
    assert.are.same({ true, '2026-10-25T02:30:00+02:00' }, { q, time.format(ends, 'Europe/Paris') })
    q, ends = time.quiet({ Start = '23:00', End = '02:30' }, time.parse('2026-10-25T02:45:00+02:00'), 'Europe/Paris')
    assert.are.same({ false, '2026-10-25T02:45:00+02:00' }, { q, time.format(ends, 'Europe/Paris') })
    q, ends = time.quiet({ Start = '23:00', End = '02:30' }, time.parse('2026-10-25T02:10:00+01:00'), 'Europe/Paris')
    assert.are.same({ true, '2026-10-25T02:30:00+01:00' }, { q, time.format(ends, 'Europe/Paris') })
    -- not quiet: ends_at is the instant itself (send now); herald's lower-case form works too
    q, ends = time.quiet({ start = '22:00', ['end'] = '07:00' }, time.parse('2026-07-01T12:00:00Z'), 'Europe/Paris')
    assert.are.same({ false, time.parse('2026-07-01T12:00:00Z') }, { q, ends })
    -- fixed offsets
    q, ends = time.quiet(qt, time.parse('2026-07-01T23:59:00+05:30'), 'UTC+05:30')
    assert.are.same({ true, '2026-07-02T07:00:00+05:30' }, { q, time.format(ends, 'UTC+05:30') })
  end)

  it('uses the fallback zone for endpoints without a valid zone, and says so', function()
    local qt = { Start = '22:00', End = '07:00' }
    local at = time.parse('2026-07-01T21:00:00Z') -- 23:00 in Paris, 17:00 in New York
    assert.are.same({ true, time.parse('2026-07-02T07:00:00+02:00'), 'Europe/Paris', 'MISSING_TIMEZONE' },
      { time.quiet(qt, at, nil, 'Europe/Paris') })
    assert.are.same({ true, time.parse('2026-07-02T07:00:00+02:00'), 'Europe/Paris', 'INVALID_TIMEZONE' },
      { time.quiet(qt, at, 'Mars/Olympus', 'Europe/Paris') })
    assert.are.same({ false, at, 'America/New_York' }, { time.quiet(qt, at, 'America/New_York', 'Europe/Paris') })
    assert.are.same({ nil, 'time zone missing' }, { time.quiet(qt, at, nil) })
    local none, err = time.quiet(qt, at, 'Mars/Olympus')
    assert.is_nil(none)
    assert.is_truthy(err:find("unknown time zone 'Mars/Olympus'", 1, true))
    -- a schedule's quiet time falls back to the schedule's zone
    local s = time.schedule { StartTime = '2026-07-01T09:00:00', Timezone = 'Asia/Tokyo', Frequency = 'DAILY',
                              IsLocalTime = true, QuietTime = qt }
    assert.are.same({ true, time.parse('2026-07-02T07:00:00+09:00'), 'Asia/Tokyo', 'MISSING_TIMEZONE' },
      { s:quiet(time.parse('2026-07-01T23:30:00+09:00'), '') })
  end)
end)

describe('schedule definitions', function()
  local function err_of(def)
    local s, msg = time.check_schedule(def)
    assert.is_nil(s)
    return msg
  end

  it('names the field of every definition error', function()
    assert.are.equal("Schedule.QuietTime.Start: '25:00' is not HH:MM",
      err_of { StartTime = '2026-01-01T00:00:00Z', QuietTime = { Start = '25:00', End = '07:00' } })
    assert.are.equal("Schedule.QuietTime.End: '7:00' is not HH:MM",
      err_of { StartTime = '2026-01-01T00:00:00Z', QuietTime = { Start = '22:00', End = '7:00' } })
    assert.are.equal("Schedule.QuietTime.End: expected 'HH:MM', got nothing",
      err_of { StartTime = '2026-01-01T00:00:00Z', QuietTime = { Start = '22:00' } })
    assert.are.equal("Schedule.QuietTime: Start and End are equal ('22:00'): the window would be empty",
      err_of { StartTime = '2026-01-01T00:00:00Z', QuietTime = { Start = '22:00', End = '22:00' } })
    assert.are.equal('Schedule.QuietTime.Begin: unknown field (allowed: Start, End)',
      err_of { StartTime = '2026-01-01T00:00:00Z', QuietTime = { Start = '22:00', End = '07:00', Begin = '1' } })
    assert.are.equal("Schedule.Timezone: unknown time zone 'Europe/Pariss' (expected a tz database name like "
      .. 'Europe/Paris or a fixed offset like UTC+05:30)', err_of { StartTime = '2026-01-01T00:00:00Z', Timezone = 'Europe/Pariss' })
    assert.are.equal("Schedule.EndTime: '2025-12-31T00:00:00+01:00' is before StartTime '2026-01-01T00:00:00+01:00'",
      err_of { StartTime = '2026-01-01T00:00:00', EndTime = '2025-12-31T00:00:00', Timezone = 'Europe/Paris' })
    assert.are.equal("Schedule.Frequency: 'YEARLY' is not a frequency (ONCE, HOURLY, DAILY, WEEKLY, MONTHLY, EVENT)",
      err_of { StartTime = '2026-01-01T00:00:00Z', Frequency = 'YEARLY' })
    assert.are.equal('Schedule.StartTime: required', err_of { Frequency = 'DAILY' })
    assert.are.equal("Schedule.StartTime: '2026-02-30T09:00:00Z' is not an ISO 8601 time (day 30 out of range 1-28 "
      .. 'for 2026-02; expected YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS[.fff]] and Z or an offset like +02:00)',
      err_of { StartTime = '2026-02-30T09:00:00Z' })
    assert.are.equal("Schedule.EndTime: expected an ISO 8601 time, got a boolean",
      err_of { StartTime = '2026-01-01T00:00:00Z', EndTime = true })
    assert.are.equal('Schedule.IsLocalTime: expected true or false', err_of { StartTime = '2026-01-01T00:00:00Z', IsLocalTime = 'yes' })
    assert.are.equal('Schedule.Start: unknown field', err_of { Start = '2026-01-01T00:00:00Z' })
    assert.are.equal("Schedule: mixes Pinpoint field names (StartTime, ...) with herald's (start, ...)",
      err_of { StartTime = '2026-01-01T00:00:00Z', frequency = 'DAILY' })
    -- herald's lower-case form, and a caller-chosen path
    assert.are.equal("schedule.quiet_time.start: '24:00' is not HH:MM",
      err_of { start = '2026-01-01T00:00:00Z', quiet_time = { start = '24:00', ['end'] = '07:00' } })
    local _, msg, path = time.check_schedule({ StartTime = 'soon' }, { path = 'AdditionalTreatments[2].Schedule' })
    assert.are.equal('AdditionalTreatments[2].Schedule.StartTime', path)
    assert.is_truthy(msg:find("^AdditionalTreatments%[2%]%.Schedule%.StartTime: 'soon' is not an ISO 8601 time"))
  end)

  it('raises definition errors at the caller line from herald.time.schedule and quiet', function()
    local ok, err = pcall(time.schedule, { StartTime = '2026-01-01T00:00:00Z', Timezone = 'Mars/Base' })
    assert.is_false(ok)
    assert.is_truthy(err:find("Schedule.Timezone: unknown time zone 'Mars/Base'", 1, true))
    local line = debug.getinfo(1, 'l').currentline + 1
    ok, err = pcall(function() time.schedule { StartTime = '2026-01-01T00:00:00Z', QuietTime = { Start = '25:00', End = '07:00' } } end)
    assert.are.equal("schedule_spec.lua:" .. line .. ": Schedule.QuietTime.Start: '25:00' is not HH:MM", err:match('[^/]*$'))
    line = debug.getinfo(1, 'l').currentline + 1
    ok, err = pcall(function() time.quiet({ Start = '22:00', End = '24:00' }, 0, 'UTC') end)
    assert.are.equal("schedule_spec.lua:" .. line .. ": QuietTime.End: '24:00' is not HH:MM", err:match('[^/]*$'))
    line = debug.getinfo(1, 'l').currentline + 1
    ok, err = pcall(function() time.next_run({ StartTime = 'later' }, 0) end)
    assert.is_truthy(err:match('[^/]*$'):find("^schedule_spec.lua:" .. line .. ": Schedule.StartTime: 'later'"))
  end)

  it('accepts Pinpoint schedules as they are, including StartTime IMMEDIATE and EventFilter', function()
    clock.set_manual(time.parse('2026-06-01T10:00:00Z'))
    local s = time.check_schedule { StartTime = 'IMMEDIATE', Timezone = 'UTC', IsLocalTime = false, Frequency = 'ONCE' }
    clock.set_manual(nil)
    assert.are.equal(time.parse('2026-06-01T10:00:00Z'), s.start_ms)
    local ev = time.schedule { StartTime = '2026-06-01T10:00:00.000Z', EndTime = '2026-07-01T10:00:00.000Z',
                               Frequency = 'EVENT', EventFilter = { FilterType = 'ENDPOINT', Dimensions = {} } }
    assert.are.equal('ENDPOINT', ev.event_filter.FilterType)
    local fixed = time.schedule { StartTime = '2026-06-01T09:00:00', Timezone = 'UTC+05:45', Frequency = 'DAILY' }
    assert.are.equal(time.parse('2026-06-01T09:00:00+05:45'), fixed.start_ms)
    assert.are.equal(time.parse('2026-06-02T09:00:00+05:45'), fixed:run(1).ms)
    assert.are.equal('schedule DAILY from 2026-06-01T09:00:00+05:45 in UTC+05:45', tostring(fixed))
    local ms = time.schedule { start = 1780000000000, ['end'] = 1780000000000, frequency = 'HOURLY' }
    assert.are.equal(1, #ms:runs(0, 1780000000001))
  end)
end)
