-- Pinpoint's GetCampaignDateRangeKpi over real HTTP: `herald serve` and `herald run --serve`
-- answer GET /v1/apps/{app}/campaigns/{campaign}/kpis/daterange/{kpi} (and kpis/daily/{kpi}) with a
-- CampaignDateRangeKpiResponse; values are checked against counts made here from the events
-- the fixture writes, and against herald.analytics.kpi in the REPL.
local h = require 'helpers'
local json = require 'herald.core.json'

-- Starts `herald ARGS` in dir in the background; returns {pid, port} once it prints pattern.
local function start(dir, args, pattern)
  local inner = h.shell_quote(h.exe) .. ' ' .. args .. ' > srv.out 2> srv.err & echo $! > srv.pid; wait'
  os.execute('cd ' .. h.shell_quote(dir) .. ' && rm -f srv.out srv.pid && sh -c ' .. h.shell_quote(inner)
    .. ' > /dev/null 2>&1 &')
  local port = h.wait_for(function() return tonumber((h.read(dir .. '/srv.out') or ''):match(pattern)) end,
    20000, 'the server to listen')
  local pid = h.wait_for(function() return tonumber((h.read(dir .. '/srv.pid') or ''):match('%d+')) end, 5000, 'pid')
  return { pid = pid, port = port }
end

local function get(port, path)
  local out, code = h.sh('curl -s -w "\\n%{http_code}" ' .. h.shell_quote('http://127.0.0.1:' .. port .. path))
  assert.are.equal(0, code, out)
  local body, status = out:match('^(.*)\n(%d+)$')
  return tonumber(status), json.decode(body)
end

-- 100 endpoints (cohort = i - 1), A 50 / B 50, one run on 2027-03-01 at 10:00; four hard
-- bounces, and clicks: e001 twice in the 11:00 hour and once at 12:10 (two clicks by
-- Pinpoint's hourly rule), e002-e010 once on 03-01, e011-e015 once on 03-02.
local FIXTURE = [[
for i = 1, 100 do
  assert(herald.endpoints.put { Id = string.format('e%03d', i), ChannelType = 'EMAIL',
    Address = string.format('u%03d@example.com', i) })
end
herald.campaign {
  name = 'kpis', segment = herald.segment { name = 'all' }, schedule = '2027-03-01T10:00:00Z',
  treatments = {
    { name = 'A', size = 50, message = { subject = 'A', body = 'a' } },
    { name = 'B', size = 50, message = { subject = 'B', body = 'b' } },
  },
  deliver = { file = 'out.txt' },
}
]]

local EVENTS = [[
local rows = herald.db.query("SELECT endpoint_id, treatment, run_id FROM outbox")
local by = {}
for _, r in ipairs(rows) do by[r.endpoint_id] = r end
local n = 0
local function put(ep, type, ts)
  n = n + 1
  local r = by[ep]
  assert(herald.events.put(ep, { EventId = 'ev' .. n, EventType = type, Timestamp = ts,
    Attributes = { campaign_id = 'kpis', treatment_id = tostring(r.treatment),
                   campaign_activity_id = tostring(r.run_id) } }))
end
put('e001', '_email.click', '2027-03-01T11:05:00Z')
put('e001', '_email.click', '2027-03-01T11:45:00Z')
put('e001', '_email.click', '2027-03-01T12:10:00Z')
for i = 2, 10 do put(string.format('e%03d', i), '_email.click', '2027-03-01T13:00:00Z') end
for i = 11, 15 do put(string.format('e%03d', i), '_email.click', '2027-03-02T09:00:00Z') end
for i = 91, 94 do put(string.format('e%03d', i), '_email.hardbounce', '2027-03-01T10:01:00Z') end
]]

local fixture
local function setup()
  if fixture then return fixture end
  local dir = h.tmpdir()
  h.write(dir .. '/kpis.lua', FIXTURE)
  h.write(dir .. '/events.lua', EVENTS)
  local _, code, err = h.herald('--db k.db run --until-idle --clock-start 2027-03-01T09:00:00Z kpis.lua', { cwd = dir })
  assert.are.equal(0, code, err)
  _, code, err = h.herald('--db k.db events.lua', { cwd = dir })
  assert.are.equal(0, code, err)
  fixture = { dir = dir, srv = start(dir, '--db k.db serve --listen 127.0.0.1:0', 'listening on http://127%.0%.0%.1:(%d+)') }
  return fixture
end

local BASE = '/v1/apps/default/campaigns/kpis/kpis/daterange/'
local RANGE = '?start-time=2027-03-01T00:00:00Z&end-time=2027-03-03T00:00:00Z'

local function value(body, i)
  return body.KpiResult.Rows[i or 1].Values[1]
end

describe('KPI route', function()
  teardown(function()
    if fixture then os.execute('kill ' .. fixture.srv.pid .. ' 2> /dev/null') end
  end)

  it('answers a CampaignDateRangeKpiResponse with Pinpoint definitions', function()
    local f = setup()
    local status, body = get(f.srv.port, BASE .. 'clicks' .. RANGE)
    assert.are.equal(200, status)
    assert.are.equal('default', body.ApplicationId)
    assert.are.equal('kpis', body.CampaignId)
    assert.are.equal('clicks', body.KpiName)
    assert.are.equal('2027-03-01T00:00:00Z', body.StartTime)
    assert.are.equal('2027-03-03T00:00:00Z', body.EndTime)
    -- e001: two distinct hours; 9 + 5 others once each
    assert.are.same({ Key = 'Clicks', Type = 'Long', Value = '16' }, value(body))
    assert.are.same({}, body.KpiResult.Rows[1].GroupedBys)

    status, body = get(f.srv.port, BASE .. 'successful-delivery-rate' .. RANGE)
    assert.are.equal(200, status)
    assert.are.equal('SuccessfulDeliveryRate', value(body).Key)
    assert.are.equal('Double', value(body).Type)
    assert.are.equal(0.96, tonumber(value(body).Value))
    status, body = get(f.srv.port, BASE .. 'unique-deliveries' .. RANGE)
    assert.are.equal('96', value(body).Value)

    status, body = get(f.srv.port, BASE .. 'clicks-grouped-by-date' .. RANGE)
    assert.are.equal(200, status)
    assert.are.equal(2, #body.KpiResult.Rows)
    assert.are.same({ { Key = 'Date', Type = 'String', Value = '2027-03-01' } }, body.KpiResult.Rows[1].GroupedBys)
    assert.are.equal('11', value(body, 1).Value)
    assert.are.same({ { Key = 'Date', Type = 'String', Value = '2027-03-02' } }, body.KpiResult.Rows[2].GroupedBys)
    assert.are.equal('5', value(body, 2).Value)

    -- a narrower period: only 2027-03-02's clicks
    status, body = get(f.srv.port, BASE .. 'clicks?start-time=2027-03-02T00:00:00%2B00:00&end-time=2027-03-02T23:00:00Z')
    assert.are.equal(200, status)
    assert.are.equal('5', value(body).Value)

    -- the same figure as herald.analytics.kpi in-process
    local out, code, err = h.herald('--db k.db -e ' .. h.shell_quote([[
      local r = assert(herald.analytics.kpi('kpis', 'clicks-grouped-by-campaign-activity',
        { start_time = '2027-03-01T00:00:00.000Z', end_time = '2027-03-03T00:00:00.000Z' }))
      print(herald.json.encode(r.KpiResult.Rows))]]), { cwd = f.dir })
    assert.are.equal(0, code, err)
    status, body = get(f.srv.port, BASE .. 'clicks-grouped-by-campaign-activity' .. RANGE)
    assert.are.equal(200, status)
    assert.are.same(json.decode(out), body.KpiResult.Rows)
    assert.are.equal('16', value(body).Value)

    -- kpis/daily/ (herald's first path) answers the same
    local daily_status, daily = get(f.srv.port, BASE:gsub('/daterange/$', '/daily/') .. 'clicks-grouped-by-campaign-activity' .. RANGE)
    assert.are.equal(200, daily_status)
    assert.are.same(body, daily)
  end)

  it('takes start-time and end-time as an inclusive range, as Pinpoint documents them', function()
    local f = setup()
    -- e002-e010 clicked at 13:00:00 exactly: an end-time of 13:00 counts them
    local status, body = get(f.srv.port, BASE .. 'clicks?start-time=2027-03-01T00:00:00Z&end-time=2027-03-01T13:00:00Z')
    assert.are.equal(200, status)
    assert.are.equal('2027-03-01T13:00:00Z', body.EndTime)
    assert.are.equal('11', value(body).Value)
    -- the messages went out at 10:00:00: a range of that one instant holds them all
    local at = '?start-time=2027-03-01T10:00:00Z&end-time=2027-03-01T10:00:00Z'
    for kpi, want in pairs({ ['attempted-deliveries'] = '100', ['successful-deliveries'] = '100',
                             ['unique-deliveries'] = '100' }) do
      status, body = get(f.srv.port, BASE .. kpi .. at)
      assert.are.equal(200, status)
      assert.are.equal(want, value(body).Value, kpi)
    end
    -- the bounces came at 10:01: one millisecond earlier leaves them out, 10:01 takes them in
    status, body = get(f.srv.port, BASE .. 'successful-deliveries?end-time=2027-03-01T10:00:59.999Z')
    assert.are.equal('100', value(body).Value)
    status, body = get(f.srv.port, BASE .. 'successful-deliveries?end-time=2027-03-01T10:01:00Z')
    assert.are.equal('96', value(body).Value)
  end)

  it('refuses unknown names and bad dates with a Pinpoint error body', function()
    local f = setup()
    local cases = {
      { '/v1/apps/nope/campaigns/kpis/kpis/daterange/clicks', 404, "application 'nope' not found" },
      { '/v1/apps/default/campaigns/nope/kpis/daterange/clicks', 404, "campaign 'nope' not found" },
      { BASE .. 'likes', 400, "unknown KPI 'likes'" },
      { BASE .. 'clicks?start-time=yesterday', 400, 'start-time: not an ISO-8601' },
      { BASE .. 'clicks?end-time=2027-02-30T00:00:00Z', 400, 'end-time: not an ISO-8601' },
      { BASE .. 'clicks?start-time=2027-03-02T00:00:00Z&end-time=2027-03-01T00:00:00Z', 400, 'end-time is before start-time' },
    }
    for _, c in ipairs(cases) do
      local status, body = get(f.srv.port, c[1])
      assert.are.equal(c[2], status, c[1])
      assert.truthy(body.Message:find(c[3], 1, true), body.Message)
      assert.truthy(type(body.RequestID) == 'string' and #body.RequestID > 0)
    end
    local status = get(f.srv.port, BASE:gsub('/daterange/$', '') .. '/clicks')
    assert.are.equal(404, status)
  end)

  it('is mounted by herald run --serve', function()
    local f = setup()
    local dir = h.tmpdir()
    h.sh('cp ' .. h.shell_quote(f.dir .. '/k.db') .. ' ' .. h.shell_quote(dir .. '/k.db'))
    h.write(dir .. '/kpis.lua', FIXTURE)
    local srv = start(dir, '--db k.db run --serve 127.0.0.1:0 kpis.lua', 'serving on http://127%.0%.0%.1:(%d+)')
    local status, body = get(srv.port, BASE .. 'unique-deliveries' .. RANGE)
    os.execute('kill ' .. srv.pid .. ' 2> /dev/null')
    assert.are.equal(200, status)
    assert.are.equal('96', value(body).Value)
  end)
end)

-- Three HOURLY runs (22:00 and 23:00 on 2027-01-01, 00:00 on 01-02) to 10 EMAIL, 10 SMS and 5
-- GCM endpoints; m10's first message hard-bounces, every other email is opened, and p01-p02
-- open their notification of each run.
local MIXED = [[
for i = 1, 10 do
  assert(herald.endpoints.put { Id = string.format('m%02d', i), ChannelType = 'EMAIL',
    Address = string.format('u%02d@example.com', i) })
  assert(herald.endpoints.put { Id = string.format('s%02d', i), ChannelType = 'SMS',
    Address = string.format('+1555000%04d', i) })
end
for i = 1, 5 do
  assert(herald.endpoints.put { Id = string.format('p%02d', i), ChannelType = 'GCM',
    Address = string.format('token-%02d', i) })
end
herald.campaign {
  name = 'mixed', segment = herald.segment { name = 'everyone' },
  message = { subject = 'Hi', body = 'Hello' },
  schedule = { start = '2027-01-01T22:00:00Z', ['end'] = '2027-01-02T00:30:00Z', frequency = 'HOURLY' },
  deliver = { file = 'out.txt' },
}
]]

local MIXED_EVENTS = [[
local n = 0
for _, r in ipairs(herald.db.query("SELECT * FROM outbox WHERE state = 'SENT' ORDER BY run_id, endpoint_id")) do
  local type
  if r.channel == 'EMAIL' then
    type = (r.endpoint_id == 'm10' and r.run_id == 1) and '_email.hardbounce' or '_email.open'
  elseif r.endpoint_id == 'p01' or r.endpoint_id == 'p02' then
    type = '_campaign.opened_notification'
  end
  if type then
    n = n + 1
    assert(herald.events.put(r.endpoint_id, { EventId = 'm' .. n, EventType = type,
      Timestamp = os.date('!%Y-%m-%dT%H:%M:%SZ', r.updated_ms // 1000 + 300),
      Attributes = { campaign_id = 'mixed', treatment_id = tostring(r.treatment),
                     campaign_activity_id = tostring(r.run_id), message_id = r.message_id } }))
  end
end
local out = {}
for _, k in ipairs({ 'unique-deliveries', 'unique-deliveries-grouped-by-date',
    'unique-deliveries-grouped-by-campaign-activity', 'successful-deliveries', 'attempted-deliveries',
    'email-open-rate', 'email-open-rate-grouped-by-campaign-activity', 'hard-bounce-rate',
    'push-open-rate', 'direct-push-opens' }) do
  local vals = {}
  for _, row in ipairs(assert(herald.analytics.kpi('mixed', k)).KpiResult.Rows) do
    vals[#vals + 1] = ((row.GroupedBys[1] or {}).Value or '') .. '=' .. row.Values[1].Value
  end
  out[k] = table.concat(vals, ' ')
end
local arm = assert(herald.analytics.report('mixed')).arms[1]
out.report = { open = arm.rates.open, click = arm.rates.click, hard_bounce = arm.rates.hard_bounce,
  delivery = arm.rates.delivery, email_deliveries = arm.email_deliveries, deliveries = arm.deliveries }
print(herald.json.encode(out))
]]

describe('KPI definitions across runs and channels', function()
  it('counts unique endpoints and rates email and push over their own channel', function()
    local dir = h.tmpdir()
    h.write(dir .. '/mixed.lua', MIXED)
    h.write(dir .. '/events.lua', MIXED_EVENTS)
    local _, code, err = h.herald('--db m.db run --until-idle --clock-start 2027-01-01T21:59:00Z '
      .. '--until 2027-01-02T01:00:00Z mixed.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local out
    out, code, err = h.herald('--db m.db events.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local k = json.decode(out)
    -- 25 endpoints a run, 3 runs; m10's first message bounced
    assert.are.equal('=75', k['attempted-deliveries'])
    assert.are.equal('=74', k['successful-deliveries'])
    -- Pinpoint: "the number of unique endpoints that messages were delivered to"
    assert.are.equal('=25', k['unique-deliveries'])
    assert.are.equal('2027-01-01=25 2027-01-02=25', k['unique-deliveries-grouped-by-date'])
    assert.are.equal('1=24 2=25 3=25', k['unique-deliveries-grouped-by-campaign-activity'])
    -- 29 opens of 29 delivered emails; the SMS and push messages are not in the denominator
    assert.are.equal('=1', k['email-open-rate'])
    assert.are.equal('1=1 2=1 3=1', k['email-open-rate-grouped-by-campaign-activity'])
    assert.are.equal(1 / 30, tonumber(k['hard-bounce-rate']:match('=(.*)')))
    -- 2 of 5 notifications opened in each run
    assert.are.equal('=6', k['direct-push-opens'])
    assert.are.equal(0.4, tonumber(k['push-open-rate']:match('=(.*)')))
    -- the report's rates per treatment agree
    local r = k.report
    assert.are.equal(29, r.email_deliveries)
    assert.are.equal(74, r.deliveries)
    assert.are.same({ 29, 29 }, { r.open.x, r.open.n })
    assert.are.same({ 0, 29 }, { r.click.x, r.click.n })
    assert.are.same({ 1, 30 }, { r.hard_bounce.x, r.hard_bounce.n })
    assert.are.same({ 74, 75 }, { r.delivery.x, r.delivery.n })
  end)
end)

describe('herald.core.server routes answered in Lua', function()
  it('passes the request to the handler and answers 500 when the handler fails', function()
    local server = require 'herald.core.server'
    local dir = h.tmpdir()
    local srv = assert(server.start { listen = '127.0.0.1:0', key = 'route-spec-key-0123456789abcdef', routes = {
      { method = 'POST', pattern = '/echo/{name}/x', handler = function(req)
        return 201, json.encode { method = req.method, path = req.path, query = req.query,
          name = req.params.name, body = req.body }, 'application/json'
      end },
      { method = 'GET', pattern = '/boom', handler = function() error('handler down') end },
      { method = 'GET', pattern = '/nothing', handler = function() return 'ok' end },
    } })
    local base = 'http://127.0.0.1:' .. srv:port()
    local function curl(args, file)
      return 'curl -s -w "\\n%{http_code}" ' .. args .. ' > ' .. h.shell_quote(dir .. '/' .. file)
    end
    -- the clients run in the background while this task sleeps, so the loop serves them
    os.execute('(' .. curl('-d hello ' .. h.shell_quote(base .. '/echo/a%20b/x?k=v'), 'echo') .. '; '
      .. curl(base .. '/boom', 'boom') .. '; ' .. curl(base .. '/nothing', 'nothing') .. '; '
      .. curl(base .. '/echo/a/x', 'get') .. '; echo done > ' .. h.shell_quote(dir .. '/done')
      .. ') > /dev/null 2>&1 &')
    h.wait_for(function() return h.read(dir .. '/done') end, 20000, 'the clients')
    srv:stop()
    local body, status = h.read(dir .. '/echo'):match('^(.*)\n(%d+)$')
    assert.are.equal('201', status)
    assert.are.same({ method = 'POST', path = '/echo/a%20b/x', query = 'k=v', name = 'a%20b', body = 'hello' },
      json.decode(body))
    for _, f in ipairs({ 'boom', 'nothing' }) do
      body, status = h.read(dir .. '/' .. f):match('^(.*)\n(%d+)$')
      assert.are.equal('500', status, f)
      assert.are.equal('internal error', json.decode(body).Message)
    end
    body, status = h.read(dir .. '/get'):match('^(.*)\n(%d+)$')
    assert.are.equal('405', status)
    local bad, err = server.start { listen = '127.0.0.1:0', key = 'route-spec-key-0123456789abcdef',
      routes = { { method = 'GET', pattern = 'no-slash', handler = print } } }
    assert.is_nil(bad)
    assert.matches('pattern starting with /', err, 1, true)
    bad, err = server.start { listen = '127.0.0.1:0', key = 'route-spec-key-0123456789abcdef',
      routes = { { method = 'GET', pattern = '/x' } } }
    assert.is_nil(bad)
    assert.matches('routes[1]: expected {method =, pattern =, handler = function(request)}', err, 1, true)
  end)
end)
