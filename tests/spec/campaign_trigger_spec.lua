-- Event-triggered campaigns: filters, segment membership, delay with cancellation, expiry,
-- and no event firing twice.
local h = require 'helpers'
local json = require 'herald.json'

local function q(dir, sql) return h.query(dir, 'c.db', sql) end

local function events(dir, list)
  local src = {}
  for _, e in ipairs(list) do
    src[#src + 1] = string.format('assert(herald.events.put(%q, { EventId = %q, EventType = %q, Timestamp = %q, Attributes = %s, Metrics = %s }))',
      e[1], e[2], e[3], e[4], e.attributes or '{}', e.metrics or '{}')
  end
  local _, code, err = h.herald('--db c.db -e ' .. h.shell_quote(table.concat(src, '\n')), { cwd = dir })
  assert.are.equal(0, code, err)
end

local CAMPAIGN = [[
  local eps = {}
  for i = 1, 6 do
    herald.endpoints.put{ Id = 'u' .. i, ChannelType = 'EMAIL', Address = 'u' .. i .. '@example.com',
      OptOut = i == 6 and 'ALL' or 'NONE', Attributes = { tier = { i <= 4 and 'gold' or 'free' } } }
  end
  herald.campaign{ name = 'cart', deliver = { file = 'out.txt' },
    segment = herald.segment{ name = 'gold', filter = function(ep) return ep.Id ~= 'u5' end },
    message = { subject = 'Your cart', body = 'Still thinking?' },
    schedule = { event = { types = { 'cart.add' }, attributes = { store = { 'web' } }, metrics = { total = { '>=', 20 } },
      predicate = function(ev, ep) return ep.Id ~= 'u4' end,
      delay = '1h', cancel_on = { 'purchase' }, expiry = '1d' } } }
]]

describe('event-triggered campaigns', function()
  it('fires once per matching event after the delay, unless a cancelling event comes first', function()
    local dir = h.tmpdir()
    h.write(dir .. '/cart.lua', CAMPAIGN)
    local _, code, err = h.herald('--db c.db run --clock-start 2027-01-01T10:00:00Z --until 2027-01-01T10:00:01Z cart.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    events(dir, {
      { 'u1', 'a1', 'cart.add', '2027-01-01T10:00:00Z', attributes = '{store="web"}', metrics = '{total=50}' },
      { 'u2', 'a2', 'cart.add', '2027-01-01T10:00:00Z', attributes = '{store="web"}', metrics = '{total=50}' },
      { 'u3', 'a3', 'cart.add', '2027-01-01T10:00:00Z', attributes = '{store="shop"}', metrics = '{total=50}' },
      { 'u3', 'a3b', 'cart.add', '2027-01-01T10:00:00Z', attributes = '{store="web"}', metrics = '{total=5}' },
      { 'u4', 'a4', 'cart.add', '2027-01-01T10:00:00Z', attributes = '{store="web"}', metrics = '{total=50}' },
      { 'u5', 'a5', 'cart.add', '2027-01-01T10:00:00Z', attributes = '{store="web"}', metrics = '{total=50}' },
      { 'u6', 'a6', 'cart.add', '2027-01-01T10:00:00Z', attributes = '{store="web"}', metrics = '{total=50}' },
      { 'u1', 'v1', 'page.view', '2027-01-01T10:00:00Z' },
    })
    _, code, err = h.herald('--db c.db run --clock-start 2027-01-01T10:01:00Z --until 2027-01-01T10:30:00Z cart.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local rows = q(dir, 'SELECT endpoint_id, state, reason, due_ms FROM outbox ORDER BY endpoint_id')
    -- u1, u2 match; u3's events fail the attribute or the metric; u4 the predicate; u5 is not in
    -- the segment; u6 opted out
    assert.are.same({ 'u1', 'u2', 'u6' }, { rows[1].endpoint_id, rows[2].endpoint_id, rows[3].endpoint_id })
    assert.are.equal(3, #rows)
    assert.are.equal('PENDING', rows[1].state)
    assert.are.equal('OPT_OUT', rows[3].reason)
    assert.are.equal(1798797600000 + 3600000, rows[1].due_ms)  -- 10:00 + 1 h
    -- u2 buys within the hour: its reminder is cancelled
    events(dir, { { 'u2', 'p2', 'purchase', '2027-01-01T10:40:00Z' } })
    _, code, err = h.herald('--db c.db run --until-idle --clock-start 2027-01-01T10:40:00Z cart.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    rows = q(dir, 'SELECT endpoint_id, state, reason FROM outbox ORDER BY endpoint_id')
    assert.are.same({ endpoint_id = 'u1', state = 'SENT' }, rows[1])
    assert.are.same({ endpoint_id = 'u2', state = 'SKIPPED', reason = 'CANCELLED' }, rows[2])
    assert.are.equal(1, h.count(h.read(dir .. '/out.txt'), '--- message '))
    -- running again fires nothing twice
    _, code, err = h.herald('--db c.db run --until-idle --clock-start 2027-01-01T12:00:00Z cart.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal(3, #q(dir, 'SELECT 1 FROM outbox'))
    -- an event older than the expiry does not fire
    events(dir, { { 'u1', 'late', 'cart.add', '2026-12-30T10:00:00Z', attributes = '{store="web"}', metrics = '{total=50}' } })
    _, code, err = h.herald('--db c.db run --until-idle --clock-start 2027-01-01T12:00:00Z cart.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal(3, #q(dir, 'SELECT 1 FROM outbox'))
  end)

  it('holds an event campaign to its daily and total caps, event after event', function()
    local dir = h.tmpdir()
    h.write(dir .. '/capped.lua', [[
      herald.endpoints.put{ Id = 'u1', ChannelType = 'EMAIL', Address = 'u1@example.com' }
      herald.campaign{ name = 'nudge', deliver = { file = 'out.txt' }, limits = { daily = 1, total = 2 },
        segment = herald.segment{ name = 'all' }, message = { subject = 'Hi', body = 'Come back' },
        schedule = { event = { types = { 'visit' } } } }
    ]])
    local _, code, err = h.herald('--db c.db run --clock-start 2027-01-01T09:00:00Z --until 2027-01-01T09:00:01Z capped.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    -- each visit is its own batch and so its own run: the caps must hold across runs
    local visits = { { 'v1', '2027-01-01T10:00:00Z' }, { 'v2', '2027-01-01T11:00:00Z' },
                     { 'v3', '2027-01-02T10:00:00Z' }, { 'v4', '2027-01-03T10:00:00Z' } }
    for _, v in ipairs(visits) do
      events(dir, { { 'u1', v[1], 'visit', v[2] } })
      _, code, err = h.herald('--db c.db run --until-idle --clock-start ' .. v[2] .. ' capped.lua', { cwd = dir })
      assert.are.equal(0, code, err)
    end
    local rows = q(dir, 'SELECT o.state, o.reason FROM outbox o JOIN campaign_runs r ON r.id = o.run_id ORDER BY r.id')
    assert.are.same({ { state = 'SENT' }, { state = 'SKIPPED', reason = 'DAILY_CAP' }, { state = 'SENT' },
                      { state = 'SKIPPED', reason = 'TOTAL_CAP' } }, rows)
    assert.are.equal(2, h.count(h.read(dir .. '/out.txt'), '--- message '))
  end)

  it('sends for the events between its start and end time only, and completes after the end', function()
    local dir = h.tmpdir()
    h.write(dir .. '/window.lua', [[
      herald.endpoints.put{ Id = 'u1', ChannelType = 'EMAIL', Address = 'u1@example.com' }
      herald.campaign{ name = 'feb', deliver = { file = 'out.txt' },
        segment = herald.segment{ name = 'all' }, message = { subject = 'Hi', body = 'February offer' },
        schedule = { event = { types = { 'visit' } }, start = '2027-02-01T00:00:00Z', ['end'] = '2027-02-28T00:00:00Z' } }
    ]])
    local _, code, err = h.herald('--db c.db run --clock-start 2027-01-10T00:00:00Z --until 2027-01-10T00:00:01Z window.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local visits = { { 'v1', '2027-01-15T10:00:00Z' }, { 'v2', '2027-02-10T10:00:00Z' }, { 'v3', '2027-03-05T10:00:00Z' } }
    for _, v in ipairs(visits) do
      events(dir, { { 'u1', v[1], 'visit', v[2] } })
      _, code, err = h.herald('--db c.db run --until-idle --clock-start ' .. v[2] .. ' window.lua', { cwd = dir })
      assert.are.equal(0, code, err)
    end
    -- the visit before the start and the one after the end send nothing
    assert.are.same({ { note = 'EVENT 2', state = 'SENT' } }, q(dir, 'SELECT note, state FROM outbox'))
    assert.are.equal('COMPLETED', q(dir, "SELECT state FROM campaigns WHERE id = 'feb'")[1].state)
  end)

  it('holds a triggered message to quiet time in the endpoint\'s zone', function()
    local dir = h.tmpdir()
    h.write(dir .. '/night.lua', [[
      herald.endpoints.put{ Id = 'paris', ChannelType = 'EMAIL', Address = 'p@example.com', Demographic = { Timezone = 'Europe/Paris' } }
      herald.endpoints.put{ Id = 'nyc', ChannelType = 'EMAIL', Address = 'n@example.com', Demographic = { Timezone = 'America/New_York' } }
      herald.campaign{ name = 'late', deliver = { file = 'out.txt' },
        segment = herald.segment{ name = 'all' }, message = { subject = 'Hi', body = 'Thanks' },
        quiet_time = { start = '22:00', ['end'] = '07:00' },
        schedule = { event = { types = { 'visit' } } } }
    ]])
    local _, code, err = h.herald('--db c.db run --clock-start 2027-01-10T00:00:00Z --until 2027-01-10T00:00:01Z night.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    -- 22:30 UTC: 23:30 in Paris (quiet until 07:00 there), 17:30 in New York (not quiet)
    events(dir, { { 'paris', 'v1', 'visit', '2027-01-10T22:30:00Z' }, { 'nyc', 'v2', 'visit', '2027-01-10T22:30:00Z' } })
    _, code, err = h.herald('--db c.db run --clock-start 2027-01-10T22:30:00Z --until 2027-01-10T22:31:00Z night.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local rows = q(dir, 'SELECT endpoint_id, state, due_ms FROM outbox ORDER BY endpoint_id')
    assert.are.same({ endpoint_id = 'nyc', state = 'SENT', due_ms = 1799620200000 }, rows[1])       -- 22:30 UTC
    assert.are.same({ endpoint_id = 'paris', state = 'PENDING', due_ms = 1799647200000 }, rows[2])  -- 07:00 Paris
  end)

  it('skips a triggered message more than five minutes (or stale_after) late as STALE', function()
    local dir = h.tmpdir()
    h.write(dir .. '/late.lua', [[
      for i = 1, 3 do herald.endpoints.put{ Id = 'u' .. i, ChannelType = 'EMAIL', Address = 'u' .. i .. '@example.com' } end
      local all = herald.segment{ name = 'all' }
      herald.campaign{ name = 'cart', segment = all, deliver = { file = 'cart.txt' }, message = { body = 'c' },
        schedule = { event = { types = { 'cart.add' } } } }
      herald.campaign{ name = 'patient', segment = all, deliver = { file = 'patient.txt' }, message = { body = 'p' },
        schedule = { event = { types = { 'cart.add' } } }, stale_after = '3d' }
      herald.campaign{ name = 'later', segment = all, deliver = { file = 'later.txt' }, message = { body = 'l' },
        schedule = { event = { types = { 'cart.add' }, delay = '2d' } } }
    ]])
    local _, code, err = h.herald('--db c.db run --clock-start 2027-01-01T09:00:00Z --until 2027-01-01T09:00:01Z late.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    -- herald is down from 10:00 on Jan 1 to 10:00 on Jan 3; u3's device clock is 13 minutes behind
    for _, e in ipairs({ { 'u1', 'e1', '2027-01-01T10:05:00Z' }, { 'u2', 'e2', '2027-01-03T09:56:00Z' },
                         { 'u3', 'e3', '2027-01-03T09:45:00Z', '2027-01-03T09:58:00Z' } }) do
      local out
      out, code, err = h.herald('--db c.db -e ' .. h.shell_quote(string.format([[
        require('herald.core.clock').set_manual(herald.time.parse(%q))
        assert(herald.events.put(%q, { EventId = %q, EventType = 'cart.add', Timestamp = %q }))]], e[4] or e[3], e[1], e[2], e[3])),
        { cwd = dir })
      assert.are.equal(0, code, err .. out)
    end
    _, code, err = h.herald('--db c.db run --clock-start 2027-01-03T10:00:00Z --until 2027-01-03T10:10:00Z late.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    -- two days late: skipped; four minutes late, or two after its arrival: sent. A 3-day bound
    -- sends them all, and a message delayed two days is not late at all.
    assert.are.same({
      { campaign_id = 'cart', endpoint_id = 'u1', state = 'SKIPPED', reason = 'STALE' },
      { campaign_id = 'cart', endpoint_id = 'u2', state = 'SENT' },
      { campaign_id = 'cart', endpoint_id = 'u3', state = 'SENT' },
      { campaign_id = 'later', endpoint_id = 'u1', state = 'SENT' },
      { campaign_id = 'later', endpoint_id = 'u2', state = 'PENDING' },
      { campaign_id = 'later', endpoint_id = 'u3', state = 'PENDING' },
      { campaign_id = 'patient', endpoint_id = 'u1', state = 'SENT' },
      { campaign_id = 'patient', endpoint_id = 'u2', state = 'SENT' },
      { campaign_id = 'patient', endpoint_id = 'u3', state = 'SENT' },
    }, q(dir, 'SELECT r.campaign_id, o.endpoint_id, o.state, o.reason FROM outbox o JOIN campaign_runs r ON r.id = o.run_id'
      .. ' ORDER BY r.campaign_id, o.endpoint_id'))
    assert.is_nil(h.read(dir .. '/cart.txt'):find('to: u1@', 1, true))
    local st = json.decode((h.herald('--db c.db campaign status cart', { cwd = dir })))
    local stale = 0
    for _, a in ipairs(st.Activities) do stale = stale + (a.ExecutionMetrics.STALE or 0) end
    assert.are.equal(1, stale)
  end)

  -- The bound holds until the message goes out, not only when it is written.
  local function stale_states(dir)
    return q(dir, 'SELECT r.campaign_id, o.endpoint_id, o.state, o.reason, o.attempts FROM outbox o'
      .. ' JOIN campaign_runs r ON r.id = o.run_id ORDER BY r.campaign_id, o.endpoint_id')
  end

  it('skips a triggered message written in time but still waiting past the bound (herald stopped, the campaign paused) as STALE', function()
    local dir = h.tmpdir()
    h.write(dir .. '/cart.lua', [[
      for i = 1, 3 do herald.endpoints.put{ Id = 'u' .. i, ChannelType = 'EMAIL', Address = 'u' .. i .. '@example.com' } end
      herald.campaign{ name = 'cart', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        message = { subject = 'Your cart', body = 'Still thinking?' },
        schedule = { event = { types = { 'cart.add' }, delay = '1h' } } }
    ]])
    local function run(args)
      local _, code, err = h.herald('--db c.db run ' .. args .. ' cart.lua', { cwd = dir })
      assert.are.equal(0, code, err)
    end
    run('--clock-start 2027-01-01T09:00:00Z --until 2027-01-01T09:00:01Z')
    events(dir, { { 'u1', 'a1', 'cart.add', '2027-01-01T10:00:00Z' }, { 'u2', 'a2', 'cart.add', '2027-01-01T10:30:00Z' },
                  { 'u3', 'a3', 'cart.add', '2027-01-01T10:50:00Z' } })
    -- written in time, due at 11:00, 11:30 and 11:50
    run('--clock-start 2027-01-01T10:51:00Z --until 2027-01-01T10:52:00Z')
    assert.are.same({ { n = 3 } }, q(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'PENDING'"))
    -- herald stopped until 11:03: u1's message is three minutes late, within the five
    run('--clock-start 2027-01-01T11:03:00Z --until 2027-01-01T11:04:00Z')
    -- the campaign paused from 11:04 to 11:40: u2's message, due at 11:30, is ten minutes late
    -- when it is resumed; u3's falls due after that
    local _, code, err = h.herald('--db c.db campaign pause cart', { cwd = dir })
    assert.are.equal(0, code, err)
    run('--clock-start 2027-01-01T11:30:00Z --until 2027-01-01T11:35:00Z')
    _, code, err = h.herald('--db c.db campaign resume cart', { cwd = dir })
    assert.are.equal(0, code, err)
    run('--until-idle --clock-start 2027-01-01T11:40:00Z')
    assert.are.same({
      { campaign_id = 'cart', endpoint_id = 'u1', state = 'SENT', attempts = 1 },
      { campaign_id = 'cart', endpoint_id = 'u2', state = 'SKIPPED', reason = 'STALE', attempts = 0 },
      { campaign_id = 'cart', endpoint_id = 'u3', state = 'SENT', attempts = 1 },
    }, stale_states(dir))
    local text = h.read(dir .. '/out.txt')
    assert.are.equal(2, h.count(text, '--- message '))
    assert.is_nil(text:find('to: u2@', 1, true))
    local st = json.decode((h.herald('--db c.db campaign status cart', { cwd = dir })))
    local stale = 0
    for _, a in ipairs(st.Activities) do stale = stale + (a.ExecutionMetrics.STALE or 0) end
    assert.are.equal(1, stale)
  end)

  it('skips a triggered message held back past the bound by MessagesPerSecond as STALE', function()
    local dir = h.tmpdir()
    h.write(dir .. '/rush.lua', [[
      for i = 1, 10 do herald.endpoints.put{ Id = string.format('u%02d', i), ChannelType = 'EMAIL', Address = i .. '@example.com' } end
      herald.campaign{ name = 'rush', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        message = { body = 'Welcome' }, schedule = { event = { types = { 'signup' } } },
        limits = { messages_per_second = 1 }, stale_after = 5 }
    ]])
    local _, code, err = h.herald('--db c.db run --clock-start 2027-01-01T09:00:00Z --until 2027-01-01T09:00:01Z rush.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local list = {}
    for i = 1, 10 do list[i] = { string.format('u%02d', i), 's' .. i, 'signup', '2027-01-01T10:00:00Z' } end
    events(dir, list)
    _, code, err = h.herald('--db c.db run --until-idle --clock-start 2027-01-01T10:00:00Z rush.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    -- one a second from 10:00:00: those of the first five seconds go, the four after are stale
    assert.are.same({ { state = 'SENT', reason = '', attempts = 1, n = 6 },
                      { state = 'SKIPPED', reason = 'STALE', attempts = 0, n = 4 } },
      q(dir, "SELECT state, coalesce(reason, '') AS reason, attempts, count(*) AS n FROM outbox GROUP BY 1, 2, 3 ORDER BY 1"))
    assert.are.same({ { late = 5000 } }, q(dir, "SELECT max(updated_ms - first_due_ms) AS late FROM outbox WHERE state = 'SENT'"))
    assert.are.equal(6, h.count(h.read(dir .. '/out.txt'), '--- message '))
  end)

  it('gives a triggered message that quiet time holds when its bound runs out the bound again from the end of quiet time', function()
    local dir = h.tmpdir()
    h.write(dir .. '/night.lua', [[
      for i = 1, 2 do
        herald.endpoints.put{ Id = 'u' .. i, ChannelType = 'EMAIL', Address = 'u' .. i .. '@example.com', Demographic = { Timezone = 'UTC' } }
      end
      for name, bound in pairs({ night = 300, brief = 120 }) do
        herald.campaign{ name = name, segment = herald.segment{ name = 'all' }, deliver = { file = name .. '.txt' },
          message = { body = 'Still thinking?' }, quiet_time = { start = '22:00', ['end'] = '07:00' },
          schedule = { event = { types = { 'cart.add' }, delay = '1h' } }, stale_after = bound }
      end
    ]])
    local function run(args)
      local _, code, err = h.herald('--db c.db run ' .. args .. ' night.lua', { cwd = dir })
      assert.are.equal(0, code, err)
    end
    run('--clock-start 2027-01-01T19:00:00Z --until 2027-01-01T19:00:01Z')
    events(dir, { { 'u1', 'a1', 'cart.add', '2027-01-01T20:00:00Z' }, { 'u2', 'a2', 'cart.add', '2027-01-01T20:58:30Z' } })
    -- written in time, due at 21:00 and 21:58:30
    run('--clock-start 2027-01-01T20:59:00Z --until 2027-01-01T20:59:30Z')
    -- herald stopped until 22:01: u1's message was late before quiet time began; u2's was in
    -- time when it began (its bounds of 5 and 2 minutes run out at 22:03:30 and 22:00:30, in
    -- quiet time), so it is held to 07:00 as one triggered in quiet time would be
    run('--clock-start 2027-01-01T22:01:00Z --until 2027-01-01T22:02:00Z')
    assert.are.same({
      { campaign_id = 'brief', endpoint_id = 'u1', state = 'SKIPPED', reason = 'STALE', attempts = 0 },
      { campaign_id = 'brief', endpoint_id = 'u2', state = 'PENDING', attempts = 0 },
      { campaign_id = 'night', endpoint_id = 'u1', state = 'SKIPPED', reason = 'STALE', attempts = 0 },
      { campaign_id = 'night', endpoint_id = 'u2', state = 'PENDING', attempts = 0 },
    }, stale_states(dir))
    -- herald stopped again until 07:03: within five minutes of the end of quiet time, not two
    run('--until-idle --clock-start 2027-01-02T07:03:00Z')
    assert.are.same({
      { campaign_id = 'brief', endpoint_id = 'u1', state = 'SKIPPED', reason = 'STALE', attempts = 0 },
      { campaign_id = 'brief', endpoint_id = 'u2', state = 'SKIPPED', reason = 'STALE', attempts = 0 },
      { campaign_id = 'night', endpoint_id = 'u1', state = 'SKIPPED', reason = 'STALE', attempts = 0 },
      { campaign_id = 'night', endpoint_id = 'u2', state = 'SENT', attempts = 1 },
    }, stale_states(dir))
    assert.is_nil(h.read(dir .. '/brief.txt'))
    assert.are.equal(1, h.count(h.read(dir .. '/night.txt'), 'to: u2@'))
  end)

  it('does not retry a triggered message once the bound has run out: STALE, its attempts kept', function()
    local dir = h.tmpdir()
    h.write(dir .. '/flaky.lua', [[
      herald.endpoints.put{ Id = 'u1', ChannelType = 'EMAIL', Address = 'u1@example.com' }
      herald.campaign{ name = 'cart', segment = herald.segment{ name = 'all' }, deliver = 'channels',
        message = { subject = 'Your cart', body = 'Still thinking?' }, schedule = { event = { types = { 'cart.add' } } } }
    ]])
    -- every attempt fails for a while; retries come four minutes apart
    h.write(dir .. '/providers.lua', [[
      return { profiles = { busy = { type = 'lua', send = function() return nil, 'mailbox busy', 'transient' end } },
               channels = { EMAIL = 'busy' }, retry = { max_attempts = 5, min_ms = 240000, max_ms = 240000, jitter = 0 } }
    ]])
    local _, code, err = h.herald('--db c.db run --clock-start 2027-01-01T09:00:00Z --until 2027-01-01T09:00:01Z flaky.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    events(dir, { { 'u1', 'a1', 'cart.add', '2027-01-01T10:00:00Z' } })
    _, code, err = h.herald('--db c.db run --until-idle --clock-start 2027-01-01T10:00:00Z flaky.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    -- tried at 10:00 and 10:04; the third try, at 10:08, would be eight minutes late
    assert.are.same({ { state = 'SKIPPED', reason = 'STALE', attempts = 2 } }, q(dir, 'SELECT state, reason, attempts FROM outbox'))
  end)

  it('makes a campaign whose predicate fails or runs away INVALID alone: the others go on', function()
    local dir = h.tmpdir()
    h.write(dir .. '/two.lua', [[
      for i = 1, 3 do herald.endpoints.put{ Id = 'u' .. i, ChannelType = 'EMAIL', Address = 'u' .. i .. '@example.com' } end
      local all = herald.segment{ name = 'all' }
      herald.campaign{ name = 'bad', segment = all, deliver = { file = 'bad.txt' }, message = { body = 'b' },
        schedule = { event = { types = { 'cart.add' },
          predicate = function(ev, ep) return ev.attributes.sku:sub(1, 1) == 'X' end } } }
      herald.campaign{ name = 'spin', segment = all, deliver = { file = 'spin.txt' }, message = { body = 's' },
        schedule = { event = { types = { 'view' },
          predicate = function(ev, ep) while ev.attributes.page == 'loop' do end return true end } } }
      herald.campaign{ name = 'good', segment = all, deliver = { file = 'good.txt' }, message = { body = 'welcome' },
        schedule = { event = { types = { 'signup' } } } }
    ]])
    local _, code, err = h.herald('--db c.db run --clock-start 2027-01-01T10:00:00Z --until 2027-01-01T10:00:01Z two.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    -- the events before the failing one still fire
    events(dir, {
      { 'u1', 'c1', 'cart.add', '2027-01-01T10:00:00Z', attributes = '{sku="X1"}' },
      { 'u2', 'c2', 'cart.add', '2027-01-01T10:00:00Z' },
      { 'u1', 'v1', 'view', '2027-01-01T10:00:00Z', attributes = '{page="home"}' },
      { 'u2', 'v2', 'view', '2027-01-01T10:00:00Z', attributes = '{page="loop"}' },
      { 'u3', 's3', 'signup', '2027-01-01T10:00:00Z' },
      { 'u3', 'c3', 'cart.add', '2027-01-01T10:00:00Z', attributes = '{sku="X3"}' },
    })
    _, code, err = h.herald('--db c.db run --clock-start 2027-01-01T10:01:00Z --until 2027-01-01T10:02:00Z two.lua', { cwd = dir })
    assert.are.equal(1, code, err)
    assert.matches("two.lua:5: attempt to index a nil value (field 'sku')", err, 1, true)
    assert.matches('instruction budget exceeded', err, 1, true)
    assert.are.equal(1, h.count(h.read(dir .. '/good.txt') or '', 'to: u3@'))
    assert.are.equal(1, h.count(h.read(dir .. '/bad.txt') or '', 'to: u1@'))
    assert.are.equal(1, h.count(h.read(dir .. '/spin.txt') or '', 'to: u1@'))
    local rows = q(dir, 'SELECT id, state, error FROM campaigns ORDER BY id')
    assert.are.same({ 'INVALID', 'PENDING_NEXT_RUN', 'INVALID' }, { rows[1].state, rows[2].state, rows[3].state })
    assert.matches("two.lua:5: attempt to index a nil value (field 'sku')", rows[1].error, 1, true)
    assert.matches('two.lua:8: instruction budget exceeded', rows[3].error, 1, true)
    -- each cursor stops before its campaign's failing event, the good one's after them all
    assert.are.same({ { campaign_id = 'bad', event = 'c1' }, { campaign_id = 'spin', event = 'v1' } },
      q(dir, 'SELECT t.campaign_id, e.event_id AS event FROM trigger_cursors t JOIN events e ON e.seq = t.last_seq'
        .. " WHERE t.campaign_id <> 'good' ORDER BY t.campaign_id"))
    assert.are.same({ { n = 1 } }, q(dir, "SELECT count(*) AS n FROM trigger_cursors t WHERE t.campaign_id = 'good'"
      .. " AND t.last_seq >= (SELECT seq FROM events WHERE event_id = 'c3')"))
  end)

  it('gets a predicate that is slow over a whole batch through in smaller ones', function()
    local dir = h.tmpdir()
    -- each call costs about 30 million instructions: four of them exceed a call's budget
    h.write(dir .. '/slow.lua', [[
      for i = 1, 4 do herald.endpoints.put{ Id = 'u' .. i, ChannelType = 'EMAIL', Address = 'u' .. i .. '@example.com' } end
      herald.campaign{ name = 'slow', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        message = { body = 'b' }, schedule = { event = { types = { 'visit' },
          predicate = function(ev, ep) local n = 0 for i = 1, 15000000 do n = n + i end return n > 0 end } } }
    ]])
    local _, code, err = h.herald('--db c.db run --clock-start 2027-01-01T10:00:00Z --until 2027-01-01T10:00:01Z slow.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    events(dir, { { 'u1', 'v1', 'visit', '2027-01-01T10:00:00Z' }, { 'u2', 'v2', 'visit', '2027-01-01T10:00:00Z' },
                  { 'u3', 'v3', 'visit', '2027-01-01T10:00:00Z' }, { 'u4', 'v4', 'visit', '2027-01-01T10:00:00Z' } })
    _, code, err = h.herald('--db c.db run --clock-start 2027-01-01T10:01:00Z --until 2027-01-01T10:02:00Z slow.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal(4, h.count(h.read(dir .. '/out.txt') or '', '--- message '))
    assert.is_nil(q(dir, "SELECT error FROM campaigns WHERE id = 'slow'")[1].error)
  end)

  it('refuses a bad event filter with its field path', function()
    local dir = h.tmpdir()
    h.write(dir .. '/bad.lua', "herald.campaign{ name = 'b', segment = herald.segment{ name = 'all' }, message = { body = 'x' },\n  schedule = { event = { types = { 'a' }, metrics = { total = { '~', 1 } } } } }\n")
    local _, code, err = h.herald('--db c.db run --until-idle bad.lua', { cwd = dir })
    assert.are_not.equal(0, code)
    assert.matches('bad.lua:1:', err, 1, true)
    assert.matches('schedule.event.metrics.total', err, 1, true)
  end)
end)

describe('where an event campaign starts', function()
  local function herald_ok(dir, args)
    local out, code, err = h.herald('--db c.db ' .. args, { cwd = dir })
    assert.are.equal(0, code, err)
    return out
  end

  local CARTS = [[
    for i = 1, 3 do herald.endpoints.put{ Id = 'u' .. i, ChannelType = 'EMAIL', Address = 'u' .. i .. '@example.com' } end
    for _, name in ipairs({ 'cart', 'held' }) do
      herald.campaign{ name = name, segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        schedule = { start = '2027-01-01T10:00:00Z', event = { types = { 'cart.add' } } },
        message = { subject = 'cart', body = 'b' } }
    end
  ]]

  it('fires for the events stored since the campaign was, not for those before, whenever a runner first looks', function()
    local dir = h.tmpdir()
    h.write(dir .. '/cart.lua', CARTS)
    herald_ok(dir, "-e \"herald.endpoints.put{ Id = 'u1', ChannelType = 'EMAIL', Address = 'u1@example.com' }\"")
    -- before the campaigns exist: history, which a new campaign does not fire on
    events(dir, { { 'u1', 'old', 'cart.add', '2027-01-01T10:01:00Z' } })
    herald_ok(dir, 'campaign load cart.lua')
    herald_ok(dir, 'campaign copy cart copy')
    herald_ok(dir, 'campaign pause held')
    -- stored, copied or paused, but no runner has looked at them yet
    events(dir, { { 'u2', 'new', 'cart.add', '2027-01-01T10:01:00Z' } })
    herald_ok(dir, 'campaign resume held')
    events(dir, { { 'u3', 'newer', 'cart.add', '2027-01-01T10:01:30Z' } })
    herald_ok(dir, 'run --clock-start 2027-01-01T10:02:00Z --until 2027-01-01T10:10:00Z cart.lua')
    local rows = q(dir, "SELECT r.campaign_id AS c, group_concat(o.endpoint_id || ' ' || o.state) AS sent FROM outbox o"
      .. ' JOIN campaign_runs r ON r.id = o.run_id GROUP BY r.campaign_id ORDER BY r.campaign_id')
    assert.are.same({ { c = 'cart', sent = 'u2 SENT,u3 SENT' }, { c = 'copy', sent = 'u2 SENT,u3 SENT' },
                      { c = 'held', sent = 'u2 SENT,u3 SENT' } }, rows)
  end)

  it('keeps an IMMEDIATE event campaign\'s start at its creation when a later version is stored', function()
    local dir = h.tmpdir()
    local src = [[
      herald.endpoints.put{ Id = 'u1', ChannelType = 'EMAIL', Address = 'u1@example.com' }
      herald.campaign{ name = 'cart', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        schedule = { event = { types = { 'cart.add' } } }, message = { subject = '%s', body = 'b' } }
    ]]
    h.write(dir .. '/cart.lua', src:format('v1'))
    herald_ok(dir, 'run --clock-start 2027-01-01T10:00:00Z --until 2027-01-01T10:00:01Z cart.lua')
    -- while herald is down: an event, then a corrected subject stored by the next run
    events(dir, { { 'u1', 'e1', 'cart.add', '2027-01-01T10:05:00Z' } })
    h.write(dir .. '/cart.lua', src:format('v2'))
    herald_ok(dir, 'run --clock-start 2027-01-01T10:10:00Z --until 2027-01-01T10:11:00Z cart.lua')
    assert.are.same({ { endpoint_id = 'u1', state = 'SENT', campaign_version = 2 } }, q(dir,
      'SELECT o.endpoint_id, o.state, r.campaign_version FROM outbox o JOIN campaign_runs r ON r.id = o.run_id'))
    assert.matches('subject: v2', h.read(dir .. '/out.txt'), 1, true)
  end)

  it('gives an event campaign stored by an older herald, and not yet looked at, the events that came after it', function()
    local dir = h.tmpdir()
    h.write(dir .. '/cart.lua', CARTS .. [[
      herald.campaign{ name = 'weekly', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        schedule = { start = '2027-01-01T10:00:00Z', frequency = 'WEEKLY' }, message = { subject = 'w', body = 'b' } }
    ]])
    herald_ok(dir, 'campaign load cart.lua')
    events(dir, { { 'u1', 'before', 'cart.add', '2027-01-01T10:01:00Z' }, { 'u2', 'after', 'cart.add', '2027-01-01T10:01:00Z' } })
    -- as an older herald left it (without the tables of later migrations): no cursor until a
    -- runner looked; 'before' arrived before the campaigns were stored (2026-06-01), 'after'
    -- after
    h.sqlite(dir, 'c.db', [[
      DELETE FROM trigger_cursors;
      UPDATE campaign_versions SET created_ms = 1780272000000;
      UPDATE events SET arrival = '2026-05-01T00:00:00.000Z' WHERE event_id = 'before';
      UPDATE events SET arrival = '2026-07-01T00:00:00.000Z' WHERE event_id = 'after';
      DROP TABLE direct_messages;
      DROP INDEX outbox_message_claimed;
      DROP TABLE address_optouts;
      PRAGMA user_version = 14;
    ]])
    local before = q(dir, "SELECT seq FROM events WHERE event_id = 'before'")[1].seq
    assert.are.same({ { campaign_id = 'cart', last_seq = before }, { campaign_id = 'held', last_seq = before } },
      q(dir, 'SELECT campaign_id, last_seq FROM trigger_cursors ORDER BY campaign_id'))
    herald_ok(dir, 'run --clock-start 2027-01-01T10:02:00Z --until 2027-01-01T10:10:00Z cart.lua')
    assert.are.same({ { campaign_id = 'cart', endpoint_id = 'u2' }, { campaign_id = 'held', endpoint_id = 'u2' } },
      q(dir, "SELECT r.campaign_id, o.endpoint_id FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
        .. " WHERE r.campaign_id <> 'weekly' ORDER BY r.campaign_id"))
  end)
end)

describe('example scripts', function()
  local function script(name) return h.shell_quote(h.root .. '/scripts/' .. name) end

  it('weekly local time with quiet hours: twelve Mondays, each at 09:30 local', function()
    local dir = h.tmpdir()
    local _, code, err = h.herald('--db c.db run --until-idle --clock-start 2027-01-01T00:00:00Z ' .. script('weekly_local.lua'), { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal(13 * 50, h.count(h.read(dir .. '/weekly-messages.txt'), '--- message '))
    assert.are.equal(13 * 5, q(dir, "SELECT count(*) AS n FROM outbox WHERE note = 'MISSING_TIMEZONE'")[1].n)
  end)

  it('A/B subjects with a holdout', function()
    local dir = h.tmpdir()
    local out, code, err = h.herald('--db c.db run --until-idle ' .. script('ab_subject.lua'), { cwd = dir })
    assert.are.equal(0, code, err)
    assert.matches('A: discount', out, 1, true)
    local text = h.read(dir .. '/ab-messages.txt')
    assert.is_true(h.count(text, 'subject: 20% off') > 100)
    assert.is_true(h.count(text, 'subject: We picked') > 100)
    assert.are.equal(q(dir, 'SELECT count(*) AS n FROM endpoints WHERE cohort_id < 10')[1].n,
      q(dir, "SELECT count(*) AS n FROM outbox WHERE reason = 'HOLDOUT'")[1].n)
  end)

  it('A/B send times: arm A on Tuesday mornings, arm B on Saturday evenings, local time', function()
    local dir = h.tmpdir()
    local _, code, err = h.herald('--db c.db run --until-idle --clock-start 2027-03-01T00:00:00Z ' .. script('send_time_test.lua'), { cwd = dir })
    assert.are.equal(0, code, err)
    local text = h.read(dir .. '/send-time-messages.txt')
    local a = q(dir, "SELECT count(*) AS n FROM outbox WHERE treatment = 0 AND state = 'SENT'")[1].n
    local b = q(dir, "SELECT count(*) AS n FROM outbox WHERE treatment = 1 AND state = 'SENT'")[1].n
    -- four Tuesdays and four Saturdays
    assert.are.equal(4 * q(dir, 'SELECT count(*) AS n FROM endpoints WHERE cohort_id BETWEEN 10 AND 54')[1].n, a)
    assert.are.equal(4 * q(dir, 'SELECT count(*) AS n FROM endpoints WHERE cohort_id >= 55')[1].n, b)
    assert.are.equal(a, h.count(text, 'subject: Start your week'))
    assert.are.equal(b, h.count(text, 'subject: Something for your weekend'))
    assert.are.equal(4 * q(dir, 'SELECT count(*) AS n FROM endpoints WHERE cohort_id < 10')[1].n,
      q(dir, "SELECT count(*) AS n FROM outbox WHERE reason = 'HOLDOUT'")[1].n)
    -- B's messages reach each reader at 18:00 on their own clock, on a Saturday (New York
    -- moves to daylight time on 14 March; Paris only after the test)
    local off = "CASE e.timezone WHEN 'Asia/Tokyo' THEN '+9 hours' WHEN 'Europe/Paris' THEN '+1 hours'"
      .. " ELSE CASE WHEN o.due_ms < 1805007600000 THEN '-5 hours' ELSE '-4 hours' END END"
    assert.are.same({ { n = b } }, q(dir, "SELECT count(*) AS n FROM outbox o JOIN endpoints e ON e.id = o.endpoint_id"
      .. " WHERE o.treatment = 1 AND strftime('%w %H:%M', o.due_ms / 1000, 'unixepoch', " .. off .. ") = '6 18:00'"))
    assert.are.same({ { n = a } }, q(dir, "SELECT count(*) AS n FROM outbox o JOIN endpoints e ON e.id = o.endpoint_id"
      .. " WHERE o.treatment = 0 AND strftime('%w %H:%M', o.due_ms / 1000, 'unixepoch', " .. off .. ") = '2 08:00'"))
  end)

  it('cart abandonment: the reminder goes to the one who did not buy', function()
    local dir = h.tmpdir()
    local _, code, err = h.herald('--db c.db run --until-idle --clock-start 2027-01-01T10:00:00Z ' .. script('cart_abandonment.lua'), { cwd = dir })
    assert.are.equal(0, code, err)
    events(dir, {
      { 'buyer-1', 'c1', 'cart.add', '2027-01-01T10:00:00Z', attributes = '{store="web"}', metrics = '{total=42}' },
      { 'buyer-2', 'c2', 'cart.add', '2027-01-01T10:00:00Z', attributes = '{store="web"}', metrics = '{total=42}' },
      { 'buyer-2', 'p2', 'purchase', '2027-01-01T10:20:00Z' },
    })
    _, code, err = h.herald('--db c.db run --until-idle --clock-start 2027-01-01T10:30:00Z ' .. script('cart_abandonment.lua'), { cwd = dir })
    assert.are.equal(0, code, err)
    local text = h.read(dir .. '/cart-messages.txt')
    assert.are.equal(1, h.count(text, '--- message '))
    assert.matches('to: buyer1@example.com', text, 1, true)
  end)
end)
