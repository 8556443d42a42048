-- The automatic A/B winner through the real binary on a manual clock: `herald run` sends the
-- test share and holds the rest WAITING; clicks are stored with herald.events.put (the events
-- the engagement server writes); a second `herald run` (a restart between the phases) decides
-- and sends the rest. Figures are checked against counts and a z-test computed here.
local h = require 'helpers'
local json = require 'herald.json'

local T0 = '2027-01-01T09:00:00Z'

local function run(dir, args)
  return h.herald('--db w.db run ' .. args, { cwd = dir })
end

local function q(dir, sql) return h.query(dir, 'w.db', sql) end

-- 1000 endpoints, 10 per cohort: endpoint e0001 has cohort 0, e0002 cohort 1, ...; zone(i)
-- names endpoint i's Demographic.Timezone (none without it).
local function endpoints(dir, zone)
  local rows = {}
  for i = 1, 1000 do
    rows[i] = { id = string.format('e%04d', i), address = string.format('u%04d@example.com', i), cohort = (i - 1) % 100,
      tz = zone and zone(i) }
  end
  h.endpoints_sql(dir, 'w.db', rows)
end

-- Campaigns over the same audience: holdout 10 (cohorts 0-9), A 45 (10-54), B 45 (55-99);
-- a 20% test share is cohorts 10-18 of A and 55-63 of B (90 endpoints each). A campaign's
-- schedule (Lua source) is T0 unless it gives one.
local function definitions(dir, campaigns)
  local src = { "local everyone = herald.segment { name = 'everyone' }" }
  for _, c in ipairs(campaigns) do
    src[#src + 1] = string.format([[
herald.campaign {
  name = %q, segment = everyone, schedule = %s, holdout = 10,
  treatments = {
    { name = 'A', size = 45, message = { subject = 'Subject A', body = 'a' } },
    { name = 'B', size = 45, message = { subject = 'Subject B', body = 'b' } },
  },
  winner = { test_percent = 20, metric = %q, decide_after = %q, policy = %q%s%s },
  deliver = { file = %q },%s
}]], c.name, c.schedule or string.format('%q', T0), c.metric or 'clicks', c.decide_after or '4h', c.policy or 'send_best',
      c.min_sample and (', min_sample = ' .. c.min_sample) or '',
      c.conversion and (', conversion = ' .. string.format('%q', c.conversion)) or '', c.name .. '.txt',
      c.quiet and ('\n  quiet_time = ' .. c.quiet .. ',') or '')
  end
  h.write(dir .. '/def.lua', table.concat(src, '\n'))
end

-- Clicks (or events of another type) by `count` endpoints of treatment t's test share in
-- campaign name's run.
local function clicks(dir, name, t, count, event_type)
  local rows = q(dir, string.format([[SELECT o.endpoint_id, o.run_id FROM outbox o JOIN campaign_runs r
    ON r.id = o.run_id WHERE r.campaign_id = '%s' AND o.treatment = %d AND o.state = 'SENT'
    ORDER BY o.endpoint_id LIMIT %d]], name, t, count))
  assert.are.equal(count, #rows)
  local src = {}
  for i, r in ipairs(rows) do
    src[#src + 1] = string.format('assert(herald.events.put(%q, { EventId = %q, EventType = %q,'
      .. ' Timestamp = "2027-01-01T09:30:00Z", Attributes = { campaign_id = %q, treatment_id = "%d",'
      .. ' campaign_activity_id = "%d" } }))', r.endpoint_id, name .. '-click-' .. i,
      event_type or '_email.click', name, t, r.run_id)
  end
  h.write(dir .. '/clicks.lua', table.concat(src, '\n'))
  local _, code, err = h.herald('--db w.db clicks.lua', { cwd = dir })
  assert.are.equal(0, code, err)
end

local function tally(dir, name)
  local out = {}
  for _, r in ipairs(q(dir, string.format([[SELECT o.treatment, o.state, o.reason, count(*) AS n
    FROM outbox o JOIN campaign_runs r ON r.id = o.run_id WHERE r.campaign_id = '%s'
    GROUP BY 1, 2, 3]], name))) do
    out[r.treatment .. ':' .. r.state .. (r.reason and (':' .. r.reason) or '')] = r.n
  end
  return out
end

local function decision(dir, name)
  local rows = q(dir, "SELECT * FROM ab_decisions WHERE campaign_id = '" .. name .. "'")
  if rows[1] then rows[1].figures = json.decode(rows[1].figures) end
  return rows[1], #rows
end

local function count_lines(path, needle)
  local n = 0
  for line in ((h.read(path) or '') .. '\n'):gmatch('(.-)\n') do
    if line:find(needle, 1, true) then n = n + 1 end
  end
  return n
end

local function ms(iso)
  local y, mo, d, hh, mi = iso:match('^(%d+)-(%d+)-(%d+)T(%d+):(%d+)')
  return os.time { year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(hh),
    min = tonumber(mi), sec = 0, isdst = false } * 1000 - os.time { year = 1970, month = 1, day = 1,
    hour = 0, isdst = false } * 1000
end

describe('automatic A/B winner', function()
  it('holds the rest it releases into quiet time to the end of it', function()
    local dir = h.tmpdir()
    endpoints(dir)
    -- sent at 09:00, decided at 13:00: inside quiet time 12:00-18:00 (UTC, the campaign's zone)
    definitions(dir, { { name = 'q', quiet = "{ start = '12:00', ['end'] = '18:00' }" } })
    local _, code, err = run(dir, '--clock-start ' .. T0 .. ' --until 2027-01-01T10:00:00Z def.lua')
    assert.are.equal(0, code, err)
    clicks(dir, 'q', 1, 40)
    _, code, err = run(dir, '--clock-start 2027-01-01T10:00:00Z --until 2027-01-01T13:30:00Z def.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(720, decision(dir, 'q').released)
    local rest = q(dir, "SELECT state, due_ms, count(*) AS n FROM outbox WHERE state IN ('PENDING', 'SENT')"
      .. ' AND due_ms > ' .. ms('2027-01-01T09:00') .. ' GROUP BY 1, 2')
    assert.are.same({ { state = 'PENDING', due_ms = ms('2027-01-01T18:00'), n = 720 } }, rest)
    _, code, err = run(dir, '--until-idle --clock-start 2027-01-01T13:30:00Z def.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(720 + 180, count_lines(dir .. '/q.txt', '--- message '))
  end)

  it("counts decide_after from when the test share's last zone is due, not from when the run was written", function()
    local dir = h.tmpdir()
    -- 09:00 local: 00:00Z in Tokyo, 17:00Z in Los Angeles; the run is written when 09:00
    -- reaches UTC+14, at 2027-01-04T19:00Z, 22 hours before the last test message is due
    endpoints(dir, function(i) return i % 2 == 1 and 'Asia/Tokyo' or 'America/Los_Angeles' end)
    definitions(dir, { { name = 'l',
      schedule = "{ start = '2027-01-05T09:00:00', timezone = 'UTC', is_local_time = true }" } })
    local _, code, err = run(dir, '--clock-start 2027-01-04T00:00:00Z --until 2027-01-04T20:00:00Z def.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(ms('2027-01-04T19:00'), q(dir, 'SELECT started_ms FROM campaign_runs')[1].started_ms)
    -- a test message that a retry or a rate limit moves keeps its first due time: the decision
    -- does not wait for it
    local moved = q(dir, [[SELECT endpoint_id, due_ms FROM outbox WHERE treatment = 1 AND state = 'PENDING'
      AND zone = 'America/Los_Angeles' ORDER BY endpoint_id LIMIT 1]])[1]
    assert.are.equal(ms('2027-01-05T17:00'), moved.due_ms)
    h.sqlite(dir, 'w.db', string.format("UPDATE outbox SET due_ms = %d WHERE endpoint_id = '%s'",
      ms('2027-01-06T03:00'), moved.endpoint_id))
    _, code, err = run(dir, '--clock-start 2027-01-04T20:00:00Z --until 2027-01-05T20:00:00Z def.lua')
    assert.are.equal(0, code, err)
    -- both zones' test messages went out; decide_after (4h) runs from 17:00Z
    assert.are.equal(0, select(2, decision(dir, 'l')))
    assert.are.same({ { zone = 'America/Los_Angeles', sent = ms('2027-01-05T17:00'), n = 89 },
                      { zone = 'Asia/Tokyo', sent = ms('2027-01-05T00:00'), n = 90 } },
      q(dir, [[SELECT zone, max(updated_ms) AS sent, count(*) AS n FROM outbox WHERE state = 'SENT'
        GROUP BY zone ORDER BY zone]]))
    _, code, err = run(dir, '--until-idle --clock-start 2027-01-05T20:00:00Z def.lua')
    assert.are.equal(0, code, err)
    local d = decision(dir, 'l')
    assert.are.equal(ms('2027-01-05T21:00'), d.decided_ms)
    assert.are.equal(ms('2027-01-05T21:00'), d.figures.decide_ms)
    assert.are.same({ 0, 90 }, { d.figures.arms[1].id, d.figures.arms[1].n })
    assert.are.same({ 1, 89 }, { d.figures.arms[2].id, d.figures.arms[2].n })
    assert.are.equal(720, d.released)
  end)

  it('counts decide_after from the end of the quiet time that holds the test share', function()
    local dir = h.tmpdir()
    endpoints(dir)
    -- a 23:00 run in quiet time 22:00-07:00 sends its test share at 07:00
    definitions(dir, { { name = 'n', schedule = "'2027-01-05T23:00:00Z'",
      quiet = "{ start = '22:00', ['end'] = '07:00' }" } })
    local _, code, err = run(dir, '--until-idle --clock-start 2027-01-05T22:00:00Z def.lua')
    assert.are.equal(0, code, err)
    local d = decision(dir, 'n')
    assert.are.equal(ms('2027-01-06T11:00'), d.decided_ms)
    assert.are.same({ 90, 90 }, { d.figures.arms[1].n, d.figures.arms[2].n })
    assert.are.same({ { sent = ms('2027-01-06T07:00'), n = 180 }, { sent = ms('2027-01-06T11:00'), n = 720 } },
      q(dir, [[SELECT updated_ms AS sent, count(*) AS n FROM outbox WHERE state = 'SENT'
        GROUP BY 1 ORDER BY 1]]))
  end)

  it('sends the test share, holds the rest WAITING, then sends the clear winner B to the rest', function()
    local dir = h.tmpdir()
    endpoints(dir)
    definitions(dir, { { name = 'w' } })
    local _, code, err = run(dir, '--clock-start ' .. T0 .. ' --until 2027-01-01T10:00:00Z def.lua')
    assert.are.equal(0, code, err)
    local t = tally(dir, 'w')
    assert.are.same({ ['-1:SKIPPED:HOLDOUT'] = 100, ['0:SENT'] = 90, ['1:SENT'] = 90,
      ['0:WAITING:AB_WAITING'] = 360, ['1:WAITING:AB_WAITING'] = 360 }, t)
    -- the test share is the first 9 cohorts of each treatment
    local test = q(dir, [[SELECT min(e.cohort_id) AS lo, max(e.cohort_id) AS hi, o.treatment FROM outbox o
      JOIN endpoints e ON e.id = o.endpoint_id WHERE o.state = 'SENT' GROUP BY o.treatment ORDER BY 3]])
    assert.are.same({ { lo = 10, hi = 18, treatment = 0 }, { lo = 55, hi = 63, treatment = 1 } }, test)
    assert.are.equal('EXECUTING', q(dir, "SELECT state FROM campaign_runs")[1].state)
    local why = h.herald('--db w.db why w e0031', { cwd = dir })  -- cohort 30: rest of A
    assert.truthy(why:find('WAITING: AB_WAITING', 1, true), why)
    assert.truthy(why:find('held back until the A/B test of this run is decided', 1, true), why)
    assert.are.equal(0, select(2, decision(dir, 'w')))

    clicks(dir, 'w', 0, 5)
    clicks(dir, 'w', 1, 40)
    _, code, err = run(dir, '--until-idle --clock-start 2027-01-01T10:00:00Z def.lua')
    assert.are.equal(0, code, err)
    local d = decision(dir, 'w')
    assert.are.equal('winner', d.decision)
    assert.are.equal(1, d.winner)
    assert.are.equal('clicks', d.metric)
    assert.are.equal('send_best', d.policy)
    assert.are.equal(720, d.released)
    -- decided at the decide time: the run started at T0, decide_after 4h
    assert.are.equal(ms('2027-01-01T13:00'), d.decided_ms)
    assert.are.same({ 0, 5, 90 }, { d.figures.arms[1].id, d.figures.arms[1].x, d.figures.arms[1].n })
    assert.are.same({ 1, 40, 90 }, { d.figures.arms[2].id, d.figures.arms[2].x, d.figures.arms[2].n })
    -- the two-proportion z-test, computed here: pooled p = 45/180
    local p1, p2, pool = 40 / 90, 5 / 90, 45 / 180
    local z = (p1 - p2) / math.sqrt(pool * (1 - pool) * (2 / 90))
    local c = d.figures.comparisons[1]
    assert.are.equal(0, c.id)
    assert.is_true(math.abs(c.z - z) < 1e-9, tostring(c.z) .. ' vs ' .. z)
    assert.is_true(c.p_value < 1e-8 and c.significant)
    t = tally(dir, 'w')
    assert.are.same({ ['-1:SKIPPED:HOLDOUT'] = 100, ['0:SENT'] = 90, ['1:SENT'] = 810 }, t)
    assert.are.equal(90, count_lines(dir .. '/w.txt', 'Subject A'))
    assert.are.equal(810, count_lines(dir .. '/w.txt', 'Subject B'))
    assert.are.equal('COMPLETED', q(dir, "SELECT state FROM campaign_runs")[1].state)
    -- the rest went out at the decision, not before
    assert.are.equal(0, q(dir, [[SELECT count(*) AS n FROM outbox WHERE treatment = 1 AND endpoint_id IN
      (SELECT id FROM endpoints WHERE cohort_id NOT BETWEEN 55 AND 63) AND updated_ms < ]]
      .. ms('2027-01-01T13:00'))[1].n)

    why = h.herald('--db w.db why w e0031', { cwd = dir })
    assert.truthy(why:find("treatment 1 'B', SENT", 1, true), why)
    assert.truthy(why:find('A/B decision at 2027-01-01T13:00:00Z: winner', 1, true), why)
    local report = h.herald('--db w.db report w', { cwd = dir })
    assert.truthy(report:find('automatic A/B winner decisions:', 1, true), report)
    assert.truthy(report:find('on clicks: winner -> B', 1, true), report)
    assert.truthy(report:find('A 5/90 5.6%, B 40/90 44.4%', 1, true), report)
    assert.truthy(report:find('720 waiting endpoints got B', 1, true), report)
    local _, hcode, herr = h.herald('--db w.db report w --html w.html', { cwd = dir })
    assert.are.equal(0, hcode, herr)
    local page = h.read(dir .. '/w.html')
    assert.truthy(page:find('<h2>Automatic A/B winner decisions</h2>', 1, true))
    assert.truthy(page:find('on clicks: winner -&gt; B', 1, true), page:match('<ul id="decisions">.-</ul>'))
    local out, rc, rerr = h.herald('--db w.db -e ' .. h.shell_quote([[
      local r = assert(herald.analytics.report('w'))
      print(#r.decisions, r.decisions[1].winner, r.decisions[1].arms[2].x)]]), { cwd = dir })
    assert.are.equal(0, rc, rerr)
    assert.are.equal('1\tB\t40\n', out)

    -- a later run of the loader decides nothing twice
    _, code, err = run(dir, '--until-idle --clock-start 2027-01-02T10:00:00Z def.lua')
    assert.are.equal(0, code, err)
    local again, n = decision(dir, 'w')
    assert.are.equal(1, n)
    assert.are.equal(d.decided_ms, again.decided_ms)
  end)

  it('applies each policy when no treatment wins significantly', function()
    local dir = h.tmpdir()
    endpoints(dir)
    definitions(dir, { { name = 'best', policy = 'send_best' }, { name = 'default', policy = 'send_default' },
      { name = 'halt', policy = 'stop' } })
    local _, code, err = run(dir, '--clock-start ' .. T0 .. ' --until 2027-01-01T10:00:00Z def.lua')
    assert.are.equal(0, code, err)
    for _, name in ipairs({ 'best', 'default', 'halt' }) do
      clicks(dir, name, 0, 10)
      clicks(dir, name, 1, 12)
    end
    _, code, err = run(dir, '--until-idle --clock-start 2027-01-01T10:00:00Z def.lua')
    assert.are.equal(0, code, err)

    local best = decision(dir, 'best')
    assert.are.equal('send_best', best.decision)
    assert.are.equal(1, best.winner)   -- B leads 12/90 against 10/90
    assert.is_false(best.figures.comparisons[1].significant)
    assert.are.same({ ['-1:SKIPPED:HOLDOUT'] = 100, ['0:SENT'] = 90, ['1:SENT'] = 810 }, tally(dir, 'best'))

    local default = decision(dir, 'default')
    assert.are.equal('send_default', default.decision)
    assert.are.equal(0, default.winner)
    assert.are.same({ ['-1:SKIPPED:HOLDOUT'] = 100, ['0:SENT'] = 810, ['1:SENT'] = 90 }, tally(dir, 'default'))
    assert.are.equal(810, count_lines(dir .. '/default.txt', 'Subject A'))

    local halt = decision(dir, 'halt')
    assert.are.equal('stop', halt.decision)
    assert.is_nil(halt.winner)
    assert.are.equal(720, halt.released)
    assert.are.same({ ['-1:SKIPPED:HOLDOUT'] = 100, ['0:SENT'] = 90, ['1:SENT'] = 90,
      ['0:SKIPPED:AB_STOPPED'] = 360, ['1:SKIPPED:AB_STOPPED'] = 360 }, tally(dir, 'halt'))
    assert.are.equal(180, count_lines(dir .. '/halt.txt', 'Subject'))
    local why = h.herald('--db w.db why halt e0031', { cwd = dir })
    assert.truthy(why:find('SKIPPED: AB_STOPPED', 1, true), why)
    for _, d in ipairs({ best, default, halt }) do assert.are.equal(ms('2027-01-01T13:00'), d.decided_ms) end
  end)

  it('decides before the decide time once every arm has the minimum sample and one wins', function()
    local dir = h.tmpdir()
    endpoints(dir)
    definitions(dir, { { name = 'early', decide_after = '1d', min_sample = 50 },
      { name = 'short', decide_after = '1d', min_sample = 200 },
      { name = 'even', decide_after = '1d', min_sample = 50 } })
    local _, code, err = run(dir, '--clock-start ' .. T0 .. ' --until 2027-01-01T10:00:00Z def.lua')
    assert.are.equal(0, code, err)
    for _, name in ipairs({ 'early', 'short' }) do
      clicks(dir, name, 0, 5)
      clicks(dir, name, 1, 40)
    end
    clicks(dir, 'even', 0, 10)
    clicks(dir, 'even', 1, 12)
    _, code, err = run(dir, '--clock-start 2027-01-01T10:00:00Z --until 2027-01-01T12:00:00Z def.lua')
    assert.are.equal(0, code, err)
    local early = decision(dir, 'early')
    assert.are.equal('winner', early.decision)
    assert.are.equal(1, early.winner)
    assert.are.equal(ms('2027-01-01T10:00'), early.decided_ms)
    assert.is_true(early.figures.early)
    assert.are.equal(810, tally(dir, 'early')['1:SENT'])
    -- 90 deliveries per arm is below 200; a non-significant early look waits for the policy
    assert.are.equal(0, select(2, decision(dir, 'short')))
    assert.are.equal(0, select(2, decision(dir, 'even')))
    assert.are.equal(720, q(dir, [[SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id
      WHERE r.campaign_id = 'short' AND o.state = 'WAITING']])[1].n)

    _, code, err = run(dir, '--until-idle --clock-start 2027-01-01T12:00:00Z def.lua')
    assert.are.equal(0, code, err)
    local short, even = decision(dir, 'short'), decision(dir, 'even')
    assert.are.equal(ms('2027-01-02T09:00'), short.decided_ms)
    assert.are.equal('winner', short.decision)
    assert.is_false(short.figures.early)
    assert.are.equal(ms('2027-01-02T09:00'), even.decided_ms)
    assert.are.equal('send_best', even.decision)
  end)

  it('looks at a run early at most once a minute of the loop, and always at its decide time', function()
    -- an early look reads the run's figures from analytics (most of a second of CPU for a run of
    -- 200,000 endpoints): not on every pass of the runner
    local dir = h.tmpdir()
    endpoints(dir)
    definitions(dir, { { name = 'slow', decide_after = '2h', min_sample = 500 } })
    local _, code, err = run(dir, '--clock-start ' .. T0 .. ' --until 2027-01-01T09:30:00Z def.lua')
    assert.are.equal(0, code, err)
    h.write(dir .. '/look.lua', string.format([[
      local winner = require 'herald.winner'
      local p = assert(winner.pending({ 'slow' })[1])
      local t0 = %d
      local function look(s)
        local r, why, result = winner.decide(p, t0 + s * 1000)
        return r ~= nil and 'decided' or (result ~= nil and 'looked' or why)
      end
      -- 90 deliveries per arm is below 500: every look waits
      print(look(0), look(1), look(30), look(59), look(60), look(61), look(120), look(7200))
    ]], ms('2027-01-01T09:30')))
    local out
    out, code, err = h.herald('--db w.db look.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal('looked\twait\twait\twait\tlooked\twait\tlooked\tdecided\n', out)
  end)

  it('decides on conversions attributed to the test messages', function()
    local dir = h.tmpdir()
    endpoints(dir)
    definitions(dir, { { name = 'buy', metric = 'conversions', conversion = 'purchase', policy = 'stop' } })
    local _, code, err = run(dir, '--clock-start ' .. T0 .. ' --until 2027-01-01T10:00:00Z def.lua')
    assert.are.equal(0, code, err)
    -- a purchase counts for the last message the endpoint got from the campaign (analytics'
    -- attribution window), whatever the event's attributes say
    clicks(dir, 'buy', 0, 3, 'purchase')
    clicks(dir, 'buy', 1, 30, 'purchase')
    _, code, err = run(dir, '--until-idle --clock-start 2027-01-01T10:00:00Z def.lua')
    assert.are.equal(0, code, err)
    local d = decision(dir, 'buy')
    assert.are.equal('conversions', d.metric)
    assert.are.equal('winner', d.decision)
    assert.are.equal(1, d.winner)
    assert.are.same({ 3, 90 }, { d.figures.arms[1].x, d.figures.arms[1].n })
    assert.are.same({ 30, 90 }, { d.figures.arms[2].x, d.figures.arms[2].n })
    assert.are.same({ ['-1:SKIPPED:HOLDOUT'] = 100, ['0:SENT'] = 90, ['1:SENT'] = 810 }, tally(dir, 'buy'))
  end)

  it("holds back and releases the rest of a large run (statements past SQLite's journal spill size)", function()
    -- 60,000 endpoints: holding back the rest changes tens of thousands of outbox rows in one
    -- statement, whose statement journal outgrows memory and spills to a temporary file
    -- (a spill setting SQLite 3.40 mishandled failed this with "database or disk is full")
    local dir = h.tmpdir()
    local rows = {}
    for i = 1, 60000 do
      rows[i] = { id = string.format('e%05d', i), address = string.format('u%05d@example.com', i), cohort = (i - 1) % 100 }
    end
    h.endpoints_sql(dir, 'w.db', rows)
    definitions(dir, { { name = 'big' } })
    local _, code, err = run(dir, '--clock-start ' .. T0 .. ' --until 2027-01-01T10:00:00Z def.lua')
    assert.are.equal(0, code, err)
    assert.is_nil(err:find('full', 1, true), err)
    assert.are.same({ ['-1:SKIPPED:HOLDOUT'] = 6000, ['0:SENT'] = 5400, ['1:SENT'] = 5400,
      ['0:WAITING:AB_WAITING'] = 21600, ['1:WAITING:AB_WAITING'] = 21600 }, tally(dir, 'big'))
    _, code, err = run(dir, '--until-idle --clock-start 2027-01-01T10:00:00Z def.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(43200, decision(dir, 'big').released)
    local t = tally(dir, 'big')
    assert.are.equal(54000, (t['0:SENT'] or 0) + (t['1:SENT'] or 0))
    assert.is_nil(t['0:WAITING:AB_WAITING'])
    assert.is_nil(t['1:WAITING:AB_WAITING'])
    assert.are.equal(54000, count_lines(dir .. '/big.txt', '--- message'))
  end)

  it('decides once and loses no endpoint when releasing the rest fails', function()
    local dir = h.tmpdir()
    endpoints(dir)
    definitions(dir, { { name = 'w' } })
    local _, code, err = run(dir, '--clock-start ' .. T0 .. ' --until 2027-01-01T10:00:00Z def.lua')
    assert.are.equal(0, code, err)
    clicks(dir, 'w', 1, 40)
    -- the release fails half-way through the decision's transaction (as a crash would cut it)
    local out, rc = h.sh('cd ' .. h.shell_quote(dir) .. [[ && sqlite3 w.db "CREATE TRIGGER fail_release
      BEFORE UPDATE OF state ON outbox WHEN old.state = 'WAITING' BEGIN SELECT RAISE(ABORT, 'disk gone'); END;" 2>&1]])
    assert.are.equal(0, rc, out)
    _, code, err = run(dir, '--until-idle --clock-start 2027-01-01T10:00:00Z def.lua')
    assert.truthy(err:find('disk gone', 1, true), err)
    assert.are.equal(0, select(2, decision(dir, 'w')))
    assert.are.equal(720, tally(dir, 'w')['0:WAITING:AB_WAITING'] + tally(dir, 'w')['1:WAITING:AB_WAITING'])
    out, rc = h.sh('cd ' .. h.shell_quote(dir) .. ' && sqlite3 w.db "DROP TRIGGER fail_release;" 2>&1')
    assert.are.equal(0, rc, out)
    _, code, err = run(dir, '--until-idle --clock-start 2027-01-01T14:00:00Z def.lua')
    assert.are.equal(0, code, err)
    local d, n = decision(dir, 'w')
    assert.are.equal(1, n)
    assert.are.equal('winner', d.decision)
    assert.are.equal(ms('2027-01-01T14:00'), d.decided_ms)
    assert.are.same({ ['-1:SKIPPED:HOLDOUT'] = 100, ['0:SENT'] = 90, ['1:SENT'] = 810 }, tally(dir, 'w'))
  end)

  it('names the field of a bad winner setting, in either form', function()
    local dir = h.tmpdir()
    local base = [[
local seg = herald.segment { name = 'all' }
herald.campaign { name = 'bad', segment = seg, treatments = {
  { name = 'A', size = 50, message = { body = 'a' } }, { name = 'B', size = 50, message = { body = 'b' } } },
  winner = %s }]]
    local cases = {
      { '{ test_percent = 0 }', 'winner%.test_percent: a whole number 1%-99' },
      { '{ metric = "clicks" }', 'winner%.test_percent: required' },
      { '{ test_percent = 10, metric = "likes" }', "winner%.metric: 'opens', 'clicks' or 'conversions'" },
      { '{ test_percent = 10, metric = "conversions" }', 'winner%.conversion: required with the conversions metric' },
      { '{ test_percent = 10, policy = "coin" }', "winner%.policy: 'send_best', 'send_default' or 'stop'" },
      { '{ test_percent = 10, decide_after = "soon" }', 'winner%.decide_after:' },
      { '{ test_percent = 10, alpha = 2 }', 'winner%.alpha: a number in %(0, 1%)' },
      { '{ test_percent = 10, min_sample = 0 }', 'winner%.min_sample: a whole number >= 1' },
      { '{ test_percent = 10, pick = true }', 'winner%.pick: unknown field' },
    }
    for i, c in ipairs(cases) do
      h.write(dir .. '/b' .. i .. '.lua', string.format(base, c[1]))
      local _, code, err = h.herald('--db w.db run --until-idle b' .. i .. '.lua', { cwd = dir })
      assert.are_not.equal(0, code)
      assert.truthy(err:find(c[2]), c[1] .. ' -> ' .. err)
      assert.truthy(err:find('b' .. i .. '%.lua:%d+'), err)
    end
    h.write(dir .. '/one.lua', [[herald.campaign { name = 'one', segment = herald.segment { name = 'x' },
      message = { body = 'x' }, winner = { test_percent = 10 } }]])
    local _, code, err = h.herald('--db w.db run --until-idle one.lua', { cwd = dir })
    assert.are_not.equal(0, code)
    assert.truthy(err:find('winner: an A/B winner needs at least two treatments', 1, true), err)
    -- a treatment on its own schedule runs apart from the others: no run could compare them
    h.write(dir .. '/own.lua', [[herald.campaign { name = 'own', segment = herald.segment { name = 'x' },
      schedule = '2027-01-01T10:00:00Z', treatments = {
        { name = 'A', size = 50, message = { body = 'a' } },
        { name = 'B', size = 50, message = { body = 'b' }, schedule = { start = '2027-01-01T18:00:00Z' } } },
      winner = { test_percent = 20 } }]])
    _, code, err = h.herald('--db w.db own.lua', { cwd = dir })
    assert.are_not.equal(0, code)
    assert.truthy(err:find('own%.lua:%d+'), err)
    assert.truthy(err:find('winner: cannot be used with treatments[2].schedule (', 1, true), err)
    -- Pinpoint's shape carries it under the Herald extension object
    h.write(dir .. '/pp.lua', [[
local seg = herald.segment { name = 'all' }
local doc = { Name = 'pp', SegmentId = 'all', Schedule = { StartTime = 'IMMEDIATE', Frequency = 'ONCE' },
  MessageConfiguration = { DefaultMessage = { Body = 'a' } },
  AdditionalTreatments = { { SizePercent = 50, MessageConfiguration = { DefaultMessage = { Body = 'b' } } } },
  Herald = { Winner = { TestPercent = 10, Policy = 'toss' } } }
local ok, e = pcall(herald.campaign.from_pinpoint, doc, { segment = seg })
print(e)
doc.Name = 'pp2'
doc.Herald.Winner = { TestPercent = 10, Metric = 'opens', DecideAfterSeconds = 600, Policy = 'stop' }
local c = herald.campaign.from_pinpoint(doc, { segment = seg })
print(c.definition.Herald.Winner.Metric, table.concat(c:test_cohorts(), ','))
doc.Name = 'pp3'
doc.AdditionalTreatments[1].Schedule = { StartTime = '2027-01-01T18:00:00Z', Frequency = 'ONCE' }
ok, e = pcall(herald.campaign.from_pinpoint, doc, { segment = seg })
print(ok, e)]])
    local out
    out, code, err = h.herald('--db w.db pp.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.truthy(out:find("Herald.Winner.Policy: 'send_best', 'send_default' or 'stop'", 1, true), out)
    -- 50 cohorts per treatment, 10% of each: 0-4 and 50-54
    assert.truthy(out:find('opens\t0,1,2,3,4,50,51,52,53,54', 1, true), out)
    assert.truthy(out:find('false\t[^\n]*Herald%.Winner: cannot be used with AdditionalTreatments%[0%]%.Schedule %('), out)
  end)
end)
