-- Treatments with schedules of their own: recurring runs per arm on a manual clock across
-- weeks and two DST changes (America/New_York on 14 March 2027, Europe/Berlin on 28 March),
-- deterministic arms across processes and versions, the holdout once per run of the
-- campaign's schedule, activities per treatment and `herald why`.
local h = require 'helpers'
local json = require 'herald.json'

local function q(dir, sql) return h.query(dir, 'c.db', sql) end

-- 100 endpoints, cohorts 0-99; odd ones live in Berlin, even ones in New York.
local function endpoints(dir)
  local rows = {}
  for i = 1, 100 do
    rows[i] = { id = string.format('e%03d', i), address = string.format('u%03d@example.com', i), cohort = i - 1,
      tz = i % 2 == 1 and 'Europe/Berlin' or 'America/New_York' }
  end
  h.endpoints_sql(dir, 'c.db', rows)
end

local function definition(b_schedule)
  return [[
    herald.campaign{ name = 'weekly', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
      holdout = 10,
      -- Mondays 09:00 in New York: the holdout and arm A
      schedule = { start = '2027-03-01T09:00:00', frequency = 'WEEKLY', timezone = 'America/New_York',
                   ['end'] = '2027-04-04T00:00:00' },
      treatments = {
        { name = 'A', size = 30, message = { subject = 'A', body = 'a' } },
        -- 18:00 on each endpoint's own clock
        { name = 'B', size = 30, message = { subject = 'B', body = 'b' }, schedule = ]] .. b_schedule .. [[ },
        { name = 'C', size = 30, message = { subject = 'C', body = 'c' }, schedule = { start = '2027-03-20T12:00:00Z' } },
      } }
  ]]
end

local function utc(field)
  return "strftime('%Y-%m-%dT%H:%M', " .. field .. " / 1000, 'unixepoch')"
end

describe('treatments with schedules of their own', function()
  it('run per arm across weeks and DST changes, arms fixed across processes and versions', function()
    local dir = h.tmpdir()
    endpoints(dir)
    h.write(dir .. '/w.lua', definition([[{ start = '2027-03-03T18:00:00', frequency = 'WEEKLY',
      is_local_time = true, ['end'] = '2027-04-02T00:00:00' }]]))
    local _, code, err = h.herald('--db c.db run --clock-start 2027-03-01T00:00:00Z --until 2027-03-16T00:00:00Z w.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    -- version 2 moves B to Thursdays; its endpoints stay B (a later process, a new version)
    h.write(dir .. '/w.lua', definition([[{ start = '2027-03-18T18:00:00', frequency = 'WEEKLY',
      is_local_time = true, ['end'] = '2027-04-02T00:00:00' }]]))
    _, code, err = h.herald('--db c.db run --until-idle w.lua', { cwd = dir, env = { HERALD_CLOCK_START = '2027-03-16T00:00:00Z' } })
    assert.are.equal(0, code, err)

    -- the runs: the campaign's Mondays (09:00 New York: 14:00 UTC, 13:00 after 14 March), B's
    -- Wednesdays then Thursdays, C's one-off
    local runs = q(dir, 'SELECT ' .. utc('scheduled_ms') .. " AS at, campaign_version AS v, arms, state FROM campaign_runs"
      .. " WHERE campaign_id = 'weekly' ORDER BY scheduled_ms")
    assert.are.same({
      { at = '2027-03-01T14:00', v = 1, arms = '[-1,0]', state = 'COMPLETED' },
      { at = '2027-03-03T18:00', v = 1, arms = '[1]', state = 'COMPLETED' },
      { at = '2027-03-08T14:00', v = 1, arms = '[-1,0]', state = 'COMPLETED' },
      { at = '2027-03-10T18:00', v = 1, arms = '[1]', state = 'COMPLETED' },
      { at = '2027-03-15T13:00', v = 1, arms = '[-1,0]', state = 'COMPLETED' },
      { at = '2027-03-18T18:00', v = 2, arms = '[1]', state = 'COMPLETED' },
      { at = '2027-03-20T12:00', v = 2, arms = '[2]', state = 'COMPLETED' },
      { at = '2027-03-22T13:00', v = 2, arms = '[-1,0]', state = 'COMPLETED' },
      { at = '2027-03-25T18:00', v = 2, arms = '[1]', state = 'COMPLETED' },
      { at = '2027-03-29T13:00', v = 2, arms = '[-1,0]', state = 'COMPLETED' },
      { at = '2027-04-01T18:00', v = 2, arms = '[1]', state = 'COMPLETED' },
    }, runs)

    -- every endpoint kept one arm, the one its cohort gives: holdout 0-9, A 10-39, B 40-69, C 70-99
    assert.are.same({}, q(dir, 'SELECT o.endpoint_id FROM outbox o JOIN endpoints e ON e.id = o.endpoint_id'
      .. ' GROUP BY o.endpoint_id HAVING count(DISTINCT o.treatment) > 1 OR min(o.treatment) <> CASE'
      .. ' WHEN min(e.cohort_id) < 10 THEN -1 WHEN min(e.cohort_id) < 40 THEN 0 WHEN min(e.cohort_id) < 70 THEN 1 ELSE 2 END'))
    -- per arm: how many rows each endpoint got, in which state
    assert.are.same({
      { treatment = -1, endpoints = 10, per_endpoint = 5, state = 'SKIPPED', reason = 'HOLDOUT' },
      { treatment = 0, endpoints = 30, per_endpoint = 5, state = 'SENT' },
      { treatment = 1, endpoints = 30, per_endpoint = 5, state = 'SENT' },
      { treatment = 2, endpoints = 30, per_endpoint = 1, state = 'SENT' },
    }, q(dir, 'SELECT treatment, count(DISTINCT endpoint_id) AS endpoints, count(*) / count(DISTINCT endpoint_id)'
      .. ' AS per_endpoint, state, reason FROM outbox GROUP BY treatment, state, reason ORDER BY treatment'))

    -- B at 18:00 local: New York 23:00 UTC, 22:00 from 14 March; Berlin 17:00, 16:00 from 28 March
    assert.are.same({
      { at = '2027-03-03T18:00', zone = 'America/New_York', due = '2027-03-03T23:00', n = 15 },
      { at = '2027-03-03T18:00', zone = 'Europe/Berlin', due = '2027-03-03T17:00', n = 15 },
      { at = '2027-03-10T18:00', zone = 'America/New_York', due = '2027-03-10T23:00', n = 15 },
      { at = '2027-03-10T18:00', zone = 'Europe/Berlin', due = '2027-03-10T17:00', n = 15 },
      { at = '2027-03-18T18:00', zone = 'America/New_York', due = '2027-03-18T22:00', n = 15 },
      { at = '2027-03-18T18:00', zone = 'Europe/Berlin', due = '2027-03-18T17:00', n = 15 },
      { at = '2027-03-25T18:00', zone = 'America/New_York', due = '2027-03-25T22:00', n = 15 },
      { at = '2027-03-25T18:00', zone = 'Europe/Berlin', due = '2027-03-25T17:00', n = 15 },
      { at = '2027-04-01T18:00', zone = 'America/New_York', due = '2027-04-01T22:00', n = 15 },
      { at = '2027-04-01T18:00', zone = 'Europe/Berlin', due = '2027-04-01T16:00', n = 15 },
    }, q(dir, 'SELECT ' .. utc('r.scheduled_ms') .. ' AS at, o.zone, ' .. utc('o.due_ms') .. ' AS due, count(*) AS n'
      .. ' FROM outbox o JOIN campaign_runs r ON r.id = o.run_id WHERE o.treatment = 1'
      .. ' GROUP BY 1, 2, 3 ORDER BY 1, 2'))
    -- A and C follow schedules without local time: one due time per run, whatever the zone
    assert.are.same({
      { treatment = 0, due = '2027-03-01T14:00', n = 30 }, { treatment = 0, due = '2027-03-08T14:00', n = 30 },
      { treatment = 0, due = '2027-03-15T13:00', n = 30 }, { treatment = 2, due = '2027-03-20T12:00', n = 30 },
      { treatment = 0, due = '2027-03-22T13:00', n = 30 }, { treatment = 0, due = '2027-03-29T13:00', n = 30 },
    }, q(dir, 'SELECT treatment, ' .. utc('due_ms') .. " AS due, count(*) AS n FROM outbox WHERE treatment IN (0, 2)"
      .. ' GROUP BY 1, 2 ORDER BY due_ms'))
    -- each message was written once, with its arm's subject
    local out = h.read(dir .. '/out.txt')
    assert.are.equal(30 * 5 + 30 * 5 + 30, h.count(out, '--- message '))

    -- activities per run and treatment: B's runs report TreatmentId 1 only
    local acts = json.decode((h.herald('--db c.db campaign activities weekly', { cwd = dir })))
    local by = {}
    for _, a in ipairs(acts) do
      local key = a.ScheduledStart:sub(1, 16) .. ' ' .. a.TreatmentId
      by[key] = a.SuccessfulEndpointCount .. '/' .. a.TotalEndpointCount
    end
    assert.are.same({
      ['2027-03-01T14:00 holdout'] = '0/10', ['2027-03-01T14:00 0'] = '30/30', ['2027-03-03T18:00 1'] = '30/30',
      ['2027-03-08T14:00 holdout'] = '0/10', ['2027-03-08T14:00 0'] = '30/30', ['2027-03-10T18:00 1'] = '30/30',
      ['2027-03-15T13:00 holdout'] = '0/10', ['2027-03-15T13:00 0'] = '30/30', ['2027-03-18T18:00 1'] = '30/30',
      ['2027-03-20T12:00 2'] = '30/30',
      ['2027-03-22T13:00 holdout'] = '0/10', ['2027-03-22T13:00 0'] = '30/30', ['2027-03-25T18:00 1'] = '30/30',
      ['2027-03-29T13:00 holdout'] = '0/10', ['2027-03-29T13:00 0'] = '30/30', ['2027-04-01T18:00 1'] = '30/30',
    }, by)
    for _, a in ipairs(acts) do
      if a.TreatmentId == '1' then
        assert.are.equal(2, a.TimezonesTotalCount)
        assert.are.equal(2, a.TimezonesCompletedCount)
      end
    end

    -- herald why: e041 (cohort 40, Berlin) is in B; the Monday runs were not for its arm
    local why
    why, code = h.herald('--db c.db why weekly e041', { cwd = dir })
    assert.are.equal(0, code)
    assert.are.equal(5, h.count(why, "treatment 1 'B', SENT"))
    assert.are.equal(6, h.count(why, "NOT_IN_RUN: its arm 'B' follows its own schedule"))
    assert.matches("2027%-03%-03T18:00:00Z%): treatment 1 'B', SENT %(due 2027%-03%-03T17:00:00Z, zone Europe/Berlin%)", why)
    assert.matches("2027%-03%-03T18:00:00Z%): treatment 1 'B', SENT %(due 2027%-03%-03T23:00:00Z, zone America/New_York%)",
      (h.herald('--db c.db why weekly e042', { cwd = dir })))
    why = h.herald('--db c.db why weekly e001', { cwd = dir })
    assert.are.equal(5, h.count(why, 'holdout, SKIPPED: HOLDOUT'))
    assert.are.equal(6, h.count(why, "NOT_IN_RUN: the holdout is recorded on the campaign schedule's runs"))
  end)

  it("apply the campaign's caps to every arm's runs", function()
    local dir = h.tmpdir()
    endpoints(dir)
    -- B (cohorts 50-99) runs daily at 08:00 UTC for four days; Total = 2 over the campaign's
    -- life, Daily = 1 across campaigns: B's endpoints get two, then TOTAL_CAP
    h.write(dir .. '/caps.lua', [[
      herald.campaign{ name = 'capped', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        schedule = { start = '2027-05-01T08:00:00Z' }, limits = { total = 2, daily = 1 },
        treatments = { { name = 'A', size = 50, message = { body = 'a' } },
                       { name = 'B', size = 50, message = { body = 'b' },
                         schedule = { start = '2027-05-01T08:00:00Z', frequency = 'DAILY', ['end'] = '2027-05-04T09:00:00Z' } } } }
    ]])
    local _, code, err = h.herald('--db c.db run --until-idle caps.lua', { cwd = dir, env = { HERALD_CLOCK_START = '2027-05-01T07:00:00Z' } })
    assert.are.equal(0, code, err)
    assert.are.same({
      { treatment = 0, state = 'SENT', n = 50 },
      { treatment = 1, state = 'SENT', n = 100 },
      { treatment = 1, state = 'SKIPPED', reason = 'TOTAL_CAP', n = 100 },
    }, q(dir, 'SELECT treatment, state, reason, count(*) AS n FROM outbox GROUP BY 1, 2, 3 ORDER BY 1, 2'))
    -- the first run holds both arms (A's one-off and B's first day), the next three only B
    assert.are.same({ { arms = '[-1,0,1]' }, { arms = '[1]' }, { arms = '[1]' }, { arms = '[1]' } },
      q(dir, 'SELECT arms FROM campaign_runs ORDER BY scheduled_ms'))
  end)

  it('write a local-time arm when its earliest zone reaches it, before an earlier run of the campaign', function()
    local dir = h.tmpdir()
    endpoints(dir)
    -- the campaign at 08:30 UTC; B at 09:00 on each endpoint's clock: 07:00 UTC in Berlin
    -- (summer time), 13:00 in New York, and 09:00 at UTC+14 the evening before
    h.write(dir .. '/m.lua', [[
      herald.campaign{ name = 'morning', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        schedule = { start = '2027-05-01T08:30:00Z', frequency = 'DAILY', ['end'] = '2027-05-02T12:00:00Z' },
        treatments = {
          { name = 'A', size = 50, message = { subject = 'A', body = 'a' } },
          { name = 'B', size = 50, message = { subject = 'B', body = 'b' },
            schedule = { start = '2027-05-01T09:00:00', frequency = 'DAILY', is_local_time = true,
                         ['end'] = '2027-05-02T12:00:00' } },
        } }
    ]])
    -- two processes: the second resumes from what the first stored
    local _, code, err = h.herald('--db c.db run --clock-start 2027-05-01T00:00:00Z --until 2027-05-02T00:00:00Z m.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    _, code, err = h.herald('--db c.db run --clock-start 2027-05-02T00:00:00Z --until 2027-05-03T00:00:00Z m.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    -- B's second run was written at 19:00 UTC on the 1st, when 2 May 09:00 began at UTC+14
    assert.are.same({
      { at = '2027-05-01T08:30', written = '2027-05-01T08:30', arms = '[-1,0]' },
      { at = '2027-05-01T09:00', written = '2027-05-01T00:00', arms = '[1]' },
      { at = '2027-05-02T08:30', written = '2027-05-02T08:30', arms = '[-1,0]' },
      { at = '2027-05-02T09:00', written = '2027-05-01T19:00', arms = '[1]' },
    }, q(dir, 'SELECT ' .. utc('scheduled_ms') .. ' AS at, ' .. utc('started_ms') .. ' AS written, arms'
      .. ' FROM campaign_runs ORDER BY scheduled_ms'))
    -- every B endpoint got each day's message at its own 09:00, none skipped STALE
    assert.are.same({
      { at = '2027-05-01T09:00', zone = 'America/New_York', due = '2027-05-01T13:00', state = 'SENT', n = 25 },
      { at = '2027-05-01T09:00', zone = 'Europe/Berlin', due = '2027-05-01T07:00', state = 'SENT', n = 25 },
      { at = '2027-05-02T09:00', zone = 'America/New_York', due = '2027-05-02T13:00', state = 'SENT', n = 25 },
      { at = '2027-05-02T09:00', zone = 'Europe/Berlin', due = '2027-05-02T07:00', state = 'SENT', n = 25 },
    }, q(dir, 'SELECT ' .. utc('r.scheduled_ms') .. ' AS at, o.zone, ' .. utc('o.due_ms') .. ' AS due, o.state, count(*) AS n'
      .. ' FROM outbox o JOIN campaign_runs r ON r.id = o.run_id WHERE o.treatment = 1 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2'))
    assert.are.equal(0, q(dir, "SELECT count(*) AS n FROM outbox WHERE state <> 'SENT'")[1].n)
    assert.are.equal(200, h.count(h.read(dir .. '/out.txt'), '--- message '))
  end)

  it('validates a treatment schedule with its field path', function()
    local dir = h.tmpdir()
    local function pinpoint(schedule3)
      return json.encode({
        Name = 'pp', SegmentId = 'all', HoldoutPercent = 0,
        MessageConfiguration = { DefaultMessage = { Body = 'x' } },
        Schedule = { StartTime = '2027-03-01T09:00:00Z', Frequency = 'DAILY', EndTime = '2027-03-05T09:00:00Z' },
        Herald = { DefaultSizePercent = 25 },
        AdditionalTreatments = {
          { SizePercent = 25, MessageConfiguration = { DefaultMessage = { Body = 'b' } } },
          { SizePercent = 25, MessageConfiguration = { DefaultMessage = { Body = 'c' } },
            Schedule = { StartTime = '2027-03-02T10:00:00Z', Frequency = 'HOURLY', EndTime = '2027-03-02T12:00:00Z' } },
          { SizePercent = 25, MessageConfiguration = { DefaultMessage = { Body = 'd' } }, Schedule = schedule3 },
        },
      })
    end
    local cases = {
      { { StartTime = '2027-03-02T10:00:00Z', Frequency = 'FORTNIGHTLY' }, "AdditionalTreatments%[2%]%.Schedule%.Frequency: 'FORTNIGHTLY' is not a frequency" },
      { { StartTime = '2027-03-02T10:00:00Z', Frequency = 'EVENT' }, 'AdditionalTreatments%[2%]%.Schedule%.Frequency: ONCE, HOURLY, DAILY, WEEKLY or MONTHLY' },
      { { StartTime = '2027-03-02T10:00:00Z', Frequency = 'DAILY', Timezone = 'Mars/Olympus' }, 'AdditionalTreatments%[2%]%.Schedule%.Timezone' },
      { { StartTime = '2027-03-02T10:00:00Z', Frequency = 'DAILY', QuietTime = { Start = '25:00', End = '07:00' } }, 'AdditionalTreatments%[2%]%.Schedule%.QuietTime%.Start' },
      { { StartTime = '2027-03-02T10:00:00Z', EndTime = '2027-03-01T10:00:00Z', Frequency = 'DAILY' }, 'AdditionalTreatments%[2%]%.Schedule%.EndTime' },
    }
    for i, case in ipairs(cases) do
      h.write(dir .. '/p' .. i .. '.lua', "local s = herald.segment{ name = 'all' }\nlocal doc = [==[" .. pinpoint(case[1])
        .. "]==]\nherald.campaign.from_pinpoint(doc, { segment = s })\n")
      local _, code, err = h.herald('--db c.db run --until-idle p' .. i .. '.lua', { cwd = dir })
      assert.are_not.equal(0, code)
      assert.matches('herald run: p' .. i .. '.lua:3: herald.campaign pp: ', err, 1, true)
      assert.matches(case[2], err)
    end
    -- the Lua form names its own path; quiet time needs the treatment's own schedule
    h.write(dir .. '/l.lua', "local s = herald.segment{ name = 'all' }\n\nherald.campaign{ name = 'l', segment = s,"
      .. " treatments = { { size = 50, message = { body = 'a' } }, { size = 50, message = { body = 'b' },"
      .. " quiet_time = { start = '22:00', ['end'] = '07:00' } } } }\n")
    local _, code, err = h.herald('--db c.db run --until-idle l.lua', { cwd = dir })
    assert.are_not.equal(0, code)
    assert.matches("herald run: l%.lua:3: herald%.campaign l: treatments%[2%]%.quiet_time: only with the treatment's own schedule", err)
    -- a Pinpoint document with an hourly treatment is accepted
    h.write(dir .. '/ok.lua', "local s = herald.segment{ name = 'all' }\nlocal doc = [==[" .. pinpoint(nil)
      .. "]==]\nherald.campaign.from_pinpoint(doc, { segment = s })\n")
    _, code, err = h.herald('--db c.db run --clock-start 2027-03-01T00:00:00Z --until 2027-03-01T00:00:01Z ok.lua', { cwd = dir })
    assert.are.equal(0, code, err)
  end)
end)
