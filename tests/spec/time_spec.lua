-- herald.time: zones, conversions and ISO 8601, checked against Python's zoneinfo and date(1)
-- over the system tz database (tests/helpers/tzref.lua).
local time = require('herald').time
local ref = require 'tzref'

local ZONES = { 'Europe/Paris', 'America/New_York', 'Australia/Sydney', 'Asia/Kolkata',
                'America/Sao_Paulo', 'Pacific/Chatham' }

local function wall_of(t)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d', t.year, t.month, t.day, t.hour, t.min, t.sec)
end

describe('time zone names', function()
  it('accepts tz database names and Pinpoint fixed offsets', function()
    for _, z in ipairs(ZONES) do assert.are.equal(z, time.zone(z)) end
    for _, z in ipairs { 'UTC', 'UTC+01', 'UTC+05:30', 'UTC+05:45', 'UTC-08', 'UTC-11', 'UTC+14',
                         'UTC-03:30', 'Etc/GMT+5', 'GMT', 'America/Argentina/Buenos_Aires' } do
      assert.are.equal(z, time.zone(z))
    end
  end)

  it('rejects unknown names with a message that names them', function()
    for _, z in ipairs { 'Mars/Olympus', 'europe/paris', 'Europe/Paris ', '', 'UTC+15',
                         'UTC+05:60', 'UTC+5:3', 'ABC3', 'EST5EDT,M3.2.0,M11.1.0',
                         '../../etc/passwd', '/usr/share/zoneinfo/Europe/Paris',
                         'right/Europe/Paris', 'zone.tab', 'Europe/', 'Europe//Paris' } do
      local ok, err = time.zone(z)
      assert.is_nil(ok, z)
      assert.is_truthy(err:find(z, 1, true), err)
    end
    local _, err = time.zone('Mars/Olympus')
    assert.are.equal("unknown time zone 'Mars/Olympus' (expected a tz database name like "
      .. 'Europe/Paris or a fixed offset like UTC+05:30)', err)
    _, err = time.zone('UTC+15')
    assert.are.equal("time zone 'UTC+15': a fixed offset must lie between UTC-14:00 and UTC+14:00", err)
    assert.are.same({ nil, 'time zone missing' }, { time.zone(nil) })
  end)

  it('reads UTC+05:30 as five and a half hours ahead of UTC (not a POSIX TZ string)', function()
    local t = time['local'](0, 'UTC+05:30')
    assert.are.equal('1970-01-01T05:30:00', wall_of(t))
    assert.are.equal(19800, t.offset)
    assert.are.equal('1969-12-31T16:00:00', wall_of(time.local_time(0, 'UTC-08')))
    assert.are.equal(-28800, time['local'](0, 'UTC-08').offset)
    assert.are.equal('1970-01-01T00:00:00Z', time.format(0, 'UTC'))
    assert.are.equal('1970-01-01T05:30:00+05:30', time.format(0, 'UTC+05:30'))
    assert.are.equal('1969-12-31T16:00:00-08:00', time.format(0, 'UTC-08'))
    assert.are.equal(-19800000, (time.to_utc { year = 1970, month = 1, day = 1, zone = 'UTC+05:30' }))
    assert.are.equal(0, (time.parse('1970-01-01T05:30:00', 'UTC+05:30')))
  end)
end)

describe('UTC to local time', function()
  it('matches the tz database around every offset change 2018-2027 in six zones', function()
    local lines = ref.python([[
for z in sys.argv[1:] if len(sys.argv) > 1 else ]] .. "['" .. table.concat(ZONES, "','") .. "']" .. [[:
    ts = transitions(z, 2018, 2027)
    print('count', z, len(ts))
    samples = [int(datetime(2026, m, 15, 12, tzinfo=UTC).timestamp()) for m in range(1, 13)]
    for t in ts:
        samples += [t + d for d in (-3601, -1, 0, 1, 1799, 3600)]
    for s in samples:
        print(z, s * 1000, wall(s * 1000, z))
]])
    local counts, checked = {}, 0
    for _, line in ipairs(lines) do
      local f = ref.fields(line)
      if f[1] == 'count' then
        counts[f[2]] = f[3]
      else
        local t = assert(time['local'](f[2], f[1]))
        assert.are.equal(f[3] .. ' ' .. f[4], wall_of(t) .. ' ' .. t.offset, line)
        checked = checked + 1
      end
    end
    -- two changes a year for ten years where DST holds; Sao Paulo's last DST ended in
    -- February 2019; Kolkata has none
    assert.are.equal(20, counts['Europe/Paris'])
    assert.are.equal(20, counts['America/New_York'])
    assert.are.equal(20, counts['Australia/Sydney'])
    assert.are.equal(20, counts['Pacific/Chatham'])
    assert.are.equal(3, counts['America/Sao_Paulo'])
    assert.are.equal(0, counts['Asia/Kolkata'])
    assert.is_true(checked > 500)
  end)

  it('agrees with date(1) on offsets, abbreviations, DST flags and week days', function()
    for _, z in ipairs(ZONES) do
      for _, s in ipairs { 1767225600, 1782864000, 1774746000, 1792890000, 4102444800 } do
        local t = time['local'](s * 1000, z)
        local want = ref.date(z, s, '%Y-%m-%dT%H:%M:%S %z %w %j')
        local off = math.abs(t.offset)
        local got = string.format('%s %s%02d%02d %d %03d', wall_of(t), t.offset < 0 and '-' or '+',
          off // 3600, off // 60 % 60, t.wday - 1, t.yday)
        assert.are.equal(want, got, z .. ' @' .. s)
      end
    end
    local paris = time['local'](1782864000000, 'Europe/Paris')
    assert.are.same({ 'CEST', true }, { paris.abbr, paris.isdst })
    local winter = time['local'](1767225600000, 'Europe/Paris')
    assert.are.same({ 'CET', false }, { winter.abbr, winter.isdst })
    local chatham = time['local'](1767225600000, 'Pacific/Chatham')
    assert.are.equal(13 * 3600 + 45 * 60, chatham.offset)
    assert.are.equal(12 * 3600 + 45 * 60, time['local'](1782864000000, 'Pacific/Chatham').offset)
  end)

  it('keeps milliseconds and handles instants before 1970', function()
    local t = time['local'](-1, 'Asia/Kolkata')
    assert.are.equal('1970-01-01T05:29:59', wall_of(t))
    assert.are.equal(999, t.ms)
    assert.are.equal('1969-12-31T23:59:59.999Z', time.format(-1))
    assert.are.equal('2026-03-29T03:00:00.250+02:00', time.format(1774746000250, 'Europe/Paris'))
  end)

  it('returns nil, err for an unknown zone or an instant past year 9999', function()
    assert.are.same({ nil, "unknown time zone 'Nowhere' (expected a tz database name like "
      .. 'Europe/Paris or a fixed offset like UTC+05:30)' }, { time['local'](0, 'Nowhere') })
    local ok, err = time['local'](253402300800000, 'UTC')
    assert.is_nil(ok)
    assert.are.equal('instant 253402300800000 ms is out of range (years 1-9999)', err)
    assert.is_nil((time.format(0, 'Nowhere')))
  end)
end)

describe('local time to UTC', function()
  it('moves skipped times forward by the gap and takes the first of repeated times', function()
    -- every 10 minutes across the local hours around each change of 2026, in six zones
    local lines = ref.python([[
for z in ]] .. "['" .. table.concat(ZONES, "','") .. "']" .. [[:
    for t in transitions(z, 2026, 2026):
        base = datetime.fromtimestamp(t, ZoneInfo(z)).replace(tzinfo=None, minute=0, second=0)
        for k in range(-18, 19):
            w = base + timedelta(minutes=10 * k)
            print(z, w.year, w.month, w.day, w.hour, w.minute, to_utc(z, w.year, w.month, w.day, w.hour, w.minute), fold(z, w.year, w.month, w.day, w.hour, w.minute))
for z in ['Asia/Kolkata', 'America/Sao_Paulo']:
    for (y, m, d, h) in [(2026, 3, 29, 2), (2026, 11, 1, 0), (2026, 10, 18, 0), (2018, 11, 4, 0)]:
        print(z, y, m, d, h, 30, to_utc(z, y, m, d, h, 30), fold(z, y, m, d, h, 30))
]])
    local folds = { gap = 0, overlap = 0, exact = 0 }
    for _, line in ipairs(lines) do
      local f = ref.fields(line)
      local ms, fold = time.to_utc { zone = f[1], year = f[2], month = f[3], day = f[4], hour = f[5], min = f[6] }
      assert.are.equal(f[7], ms, line)
      assert.are.equal(f[8], fold or 'exact', line)
      folds[f[8]] = folds[f[8]] + 1
    end
    assert.is_true(folds.gap >= 4 * 6, 'gaps seen: ' .. folds.gap)
    assert.is_true(folds.overlap >= 4 * 6, 'overlaps seen: ' .. folds.overlap)
  end)

  it('names the nonexistent Paris 02:30 and the repeated one, with their instants', function()
    local ms, fold = time.to_utc { year = 2026, month = 3, day = 29, hour = 2, min = 30, zone = 'Europe/Paris' }
    assert.are.equal('gap', fold)
    assert.are.equal('2026-03-29T03:30:00+02:00', time.format(ms, 'Europe/Paris'))
    ms, fold = time.to_utc { year = 2026, month = 10, day = 25, hour = 2, min = 30, zone = 'Europe/Paris' }
    assert.are.equal('overlap', fold)
    assert.are.equal('2026-10-25T02:30:00+02:00', time.format(ms, 'Europe/Paris'))
    -- Sydney springs forward in October, falls back in April
    ms, fold = time.to_utc { year = 2026, month = 10, day = 4, hour = 2, min = 15, zone = 'Australia/Sydney' }
    assert.are.same({ 'gap', '2026-10-04T03:15:00+11:00' }, { fold, time.format(ms, 'Australia/Sydney') })
    ms, fold = time.to_utc { year = 2026, month = 4, day = 5, hour = 2, min = 15, zone = 'Australia/Sydney' }
    assert.are.same({ 'overlap', '2026-04-05T02:15:00+11:00' }, { fold, time.format(ms, 'Australia/Sydney') })
  end)

  it('rejects wall times out of range and misuse', function()
    assert.are.same({ nil, 'day 29 out of range 1-28 for 2026-02' },
      { time.to_utc { year = 2026, month = 2, day = 29 } })
    assert.are.same({ nil, 'hour 24 out of range 0-23' },
      { time.to_utc { year = 2026, month = 2, day = 1, hour = 24 } })
    assert.are.same({ nil, 'second 60 out of range 0-59' },
      { time.to_utc { year = 2026, month = 2, day = 1, sec = 60 } })
    assert.is_nil((time.to_utc { year = 2026, month = 2, day = 1, zone = 'Nowhere' }))
    assert.has_error(function() time.to_utc { year = 2026, month = 'May', day = 1 } end,
      'herald.time.to_utc: month must be a whole number, got May')
    assert.has_error(function() time.to_utc { year = 2026, month = 5, day = 1.5 } end,
      'herald.time.to_utc: day must be a whole number, got 1.5')
  end)
end)

describe('ISO 8601', function()
  it('parses offsets, Z, fractions and dates alone as Python does', function()
    local texts = { '2026-03-29T01:30:00+01:00', '2026-03-29T01:30:00Z', '2026-03-29T01:30:00.123Z',
                    '2026-03-29T01:30:00.5-03:00', '2026-03-29T01:30+05:30', '2026-03-29T23:59:59.999+13:45',
                    '2026-03-29 01:30:00+0100', '2026-03-29T01:30:00-00:00', '1969-07-20T20:17:40Z',
                    '2026-12-31T23:00:00+14:00' }
    local lines = ref.python("for t in " .. "['" .. table.concat(texts, "','") .. "']" ..
      ":\n    print(ms(datetime.fromisoformat(t.replace('Z', '+00:00'))))\n")
    for i, text in ipairs(texts) do
      assert.are.equal(math.tointeger(tonumber(lines[i])), (time.parse(text)), text)
    end
    assert.are.equal(1774747800123, (time.parse('2026-03-29T01:30:00.123456789Z')))
    assert.are.equal(1774747800123, (time.parse('2026-03-29t01:30:00,123z')))
  end)

  it('reads a time without offset in the given zone (UTC by default), a date alone as midnight', function()
    local lines = ref.python([[
print(to_utc('Europe/Paris', 2026, 3, 29))
print(to_utc('Europe/Paris', 2026, 7, 1, 9))
print(to_utc('Pacific/Chatham', 2026, 4, 5, 2, 45))
print(ms(datetime(2026, 3, 29, tzinfo=UTC)))
]])
    assert.are.equal(math.tointeger(tonumber(lines[1])), (time.parse('2026-03-29', 'Europe/Paris')))
    assert.are.equal(math.tointeger(tonumber(lines[2])), (time.parse('2026-07-01T09:00', 'Europe/Paris')))
    assert.are.same({ math.tointeger(tonumber(lines[3])), 'overlap' }, { time.parse('2026-04-05T02:45:00', 'Pacific/Chatham') })
    assert.are.equal(math.tointeger(tonumber(lines[4])), (time.parse('2026-03-29')))
    assert.are.same({ 1774747800000, 'gap' }, { time.parse('2026-03-29T02:30:00', 'Europe/Paris') })
  end)

  it('returns nil and a message naming the text for bad input', function()
    local cases = {
      ['2026-3-29'] = 'bad date', ['2026-03-29T1:30'] = 'bad time of day',
      ['2026-03-29T01:30:00+1'] = 'bad offset', ['2026-03-29T01:30:00+24:00'] = 'offset out of range',
      ['2026-03-29T01:30:00 UTC'] = 'unexpected text after the time', ['2026-13-01'] = 'month 13 out of range 1-12',
      ['2026-02-29T00:00:00Z'] = 'day 29 out of range 1-28 for 2026-02', ['2026-03-29T24:00:00Z'] = 'hour 24 out of range 0-23',
      ['2026-03-29T01:30:60Z'] = 'second 60 out of range 0-59', ['2026-03-29Z'] = 'unexpected text after the time',
      ['2026-03-29T01:30:00.Z'] = 'bad fraction of a second', [''] = 'bad date',
    }
    for text, why in pairs(cases) do
      local ms, err = time.parse(text)
      assert.is_nil(ms, text)
      assert.are.equal("'" .. text .. "' is not an ISO 8601 time (" .. why .. '; expected YYYY-MM-DD, '
        .. 'YYYY-MM-DDTHH:MM[:SS[.fff]] and Z or an offset like +02:00)', err)
    end
    assert.are.same({ nil, 'expected an ISO 8601 text, got a number' }, { time.parse(12) })
    assert.is_nil((time.parse('2026-03-29T01:30:00', 'Nowhere')))
  end)

  it('formats what it parses back to the same instant in every zone', function()
    for _, z in ipairs(ZONES) do
      for _, ms in ipairs { 1774746000000, 1792890000123, 1761440400000, 0, -86400000 } do
        local text = time.format(ms, z)
        assert.are.equal(ms, (time.parse(text)), text)
      end
    end
  end)
end)
