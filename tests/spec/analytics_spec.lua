-- Analytics end to end through the real binary: an A/B campaign with a holdout is run with
-- `herald run --until-idle`, opens, clicks, unsubscribes, provider notifications and
-- conversion events are sent to a `herald serve` process over HTTP, and `herald report` (table,
-- HTML page rendered by headless Chromium), herald.analytics.report and the KPIs are checked
-- against figures computed here from the raw outbox and event rows.
local h = require 'helpers'
local json = require 'herald.core.json'
local tracking = require 'herald.tracking'

local KEY = 'analytics-spec-key-0123456789abcdef'
local DAY = 86400000
local HOUR = 3600000

local CAMPAIGN = [[
for i = 1, 400 do
  local ok, err = herald.endpoints.put {
    Id = string.format('ep-%03d', i), ChannelType = 'EMAIL',
    Address = string.format('reader%03d@example.com', i),
    OptOut = (i % 40 == 0) and 'ALL' or 'NONE',
  }
  assert(ok, err)
end
herald.campaign {
  name = 'spring',
  segment = herald.segment { name = 'everyone' },
  holdout = 20,
  treatments = {
    { name = 'A: plain', size = 40, message = { subject = 'Spring', body = 'Hello' } },
    { name = 'B: bold', size = 40, message = { subject = 'SPRING', body = 'Hello!' } },
  },
  deliver = { file = 'messages.txt' },
}
]]

local function query(dir, sql)
  local out, code, err = h.herald('--db q.db -e ' .. h.shell_quote(
    'print(herald.json.encode(assert(herald.db.query([[' .. sql .. ']]))))'), { cwd = dir })
  assert(code == 0, err)
  return json.decode(out)
end

-- Starts `herald serve` on the fixture's database; returns {pid =, port =}.
local function start_serve(dir)
  return h.start_serve(dir, 'q.db', 'HERALD_TRACKING_KEY=' .. h.shell_quote(KEY))
end

-- Sends requests ({method, path, body, headers}) over one connection; returns the answers.
local function http(port, requests)
  local dir = h.tmpdir()
  h.write(dir .. '/requests.json', json.encode(requests))
  local out, code = h.sh('python3 ' .. h.shell_quote(h.root .. '/tests/helpers/http_batch.py') .. ' ' ..
    port .. ' ' .. h.shell_quote(dir .. '/requests.json') .. ' 2>&1')
  assert(code == 0, out)
  return json.decode(out)
end

local function iso(ms)
  return os.date('!%Y-%m-%dT%H:%M:%S', ms // 1000) .. string.format('.%03dZ', ms % 1000)
end

-- Milliseconds of a stored timestamp (YYYY-MM-DDTHH:MM:SS.sssZ), by the civil-date formula.
local function ms_of(ts)
  local y, mo, d, hh, mi, ss, ms = ts:match('^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.(%d+)Z$')
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (mo + (mo > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return ((days * 24 + hh) * 60 + mi) * 60000 + ss * 1000 + tonumber(ms)
end

local function put_events_requests(items)
  -- items: list of {endpoint, events = {id = event}}; at most 100 events per request
  local reqs, batch, n = {}, {}, 0
  local function flush()
    if n > 0 then
      reqs[#reqs + 1] = { method = 'POST', path = '/v1/apps/default/events',
        body = json.encode({ BatchItem = batch }) }
    end
    batch, n = {}, 0
  end
  for _, it in ipairs(items) do
    local k = 0
    for _ in pairs(it.events) do k = k + 1 end
    if n + k > 100 then flush() end
    batch[it.endpoint] = { Events = it.events }
    n = n + k
  end
  flush()
  return reqs
end

local function token_fields_of(r)
  return { campaign = 'spring', run = r.run_id, treatment = r.treatment, endpoint = r.endpoint_id,
           message_id = r.message_id, key = KEY, base = '' }
end

local fixture_cache

-- Runs the campaign, sends the engagement through the server and reads the raw rows back.
local function fixture()
  if fixture_cache then return fixture_cache end
  local dir = h.tmpdir()
  h.write(dir .. '/spring.lua', CAMPAIGN)
  local _, code, err = h.herald('--db q.db run --until-idle spring.lua', { cwd = dir })
  assert(code == 0, err)
  local rows = query(dir, [[SELECT o.endpoint_id, o.treatment, o.message_id, o.run_id, o.state,
    o.reason, o.updated_ms, o.due_ms, r.scheduled_ms FROM outbox o JOIN campaign_runs r ON r.id = o.run_id
    ORDER BY o.endpoint_id]])
  local srv = start_serve(dir)
  local sent, holdout = {}, {}
  for _, r in ipairs(rows) do
    if r.state == 'SENT' then sent[#sent + 1] = r
    elseif r.reason == 'HOLDOUT' then holdout[#holdout + 1] = r end
  end
  local reqs, items = {}, {}
  local token_fields = token_fields_of
  for i, r in ipairs(sent) do
    if i % 3 == 0 then
      local url = assert(tracking.open_url(token_fields(r)))
      reqs[#reqs + 1] = { method = 'GET', path = url }
      if i % 6 == 0 then reqs[#reqs + 1] = { method = 'GET', path = url } end
    end
    if i % 5 == 0 then
      local f = token_fields(r)
      f.url = 'https://example.com/spring?i=' .. i
      reqs[#reqs + 1] = { method = 'GET', path = assert(tracking.click_url(f)) }
    end
    if i == 7 or i == 14 then
      reqs[#reqs + 1] = { method = 'POST', path = assert(tracking.unsubscribe_url(token_fields(r))),
        body = 'List-Unsubscribe=One-Click', headers = { ['Content-Type'] = 'application/x-www-form-urlencoded' } }
    end
    local note
    if i % 11 == 0 then note = { Type = 'BOUNCE', BounceType = 'HARD', Reason = 'no such user' }
    elseif i % 13 == 0 then note = { Type = 'BOUNCE', BounceType = 'SOFT' }
    elseif i == 17 then note = { Type = 'COMPLAINT' } end
    if note then
      note.MessageId = r.message_id
      reqs[#reqs + 1] = { method = 'POST', path = '/v1/apps/default/webhooks/status', body = json.encode(note) }
    end
    local send = r.updated_ms
    local events = {}
    if i % 4 == 0 then events['buy-' .. i] = { EventType = 'purchase', Timestamp = iso(send + DAY) } end
    if i % 8 == 1 then events['late-' .. i] = { EventType = 'purchase', Timestamp = iso(send + 8 * DAY) } end
    if i % 9 == 0 then events['early-' .. i] = { EventType = 'purchase', Timestamp = iso(send - HOUR) } end
    if i == 10 then
      -- clicks reported by an SDK: 00:05 and 00:50 of one hour count once, 01:10 again
      local t0 = (send // HOUR + 2) * HOUR
      local attrs = { campaign_id = 'spring', campaign_activity_id = tostring(r.run_id),
                      treatment_id = tostring(r.treatment) }
      for k, off in ipairs({ 5, 50, 70 }) do
        events['sdk-click-' .. k] = { EventType = '_email.click', Timestamp = iso(t0 + off * 60000), Attributes = attrs }
      end
    end
    if next(events) then items[#items + 1] = { endpoint = r.endpoint_id, events = events } end
  end
  for j, r in ipairs(holdout) do
    local events = {}
    if j % 2 == 0 then events['h-buy-' .. j] = { EventType = 'purchase', Timestamp = iso(r.scheduled_ms + 2 * DAY) } end
    if j % 5 == 0 then events['h-late-' .. j] = { EventType = 'purchase', Timestamp = iso(r.scheduled_ms + 9 * DAY) } end
    if next(events) then items[#items + 1] = { endpoint = r.endpoint_id, events = events } end
  end
  for _, q in ipairs(put_events_requests(items)) do reqs[#reqs + 1] = q end
  local answers = http(srv.port, reqs)
  for k, a in ipairs(answers) do
    assert(a.status < 400, 'request ' .. k .. ' (' .. reqs[k].path .. ') answered ' .. a.status .. ': ' .. a.body)
  end
  local events = query(dir, [[SELECT endpoint_id, event_type, timestamp, attributes FROM events ORDER BY seq]])
  fixture_cache = { dir = dir, srv = srv, rows = rows, sent = sent, holdout = holdout, events = events,
                    answers = answers }
  return fixture_cache
end

-- Wilson score interval, written out here from its formula.
local function wilson(x, n)
  local z = 1.959963984540054
  local p = x / n
  local denom = 1 + z * z / n
  local centre = (p + z * z / (2 * n)) / denom
  local half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return math.max(0, centre - half), math.min(1, centre + half)
end

-- The figures per treatment (-1: holdout) computed from the raw rows.
local function expected(f, window_days)
  local window = (window_days or 7) * DAY
  local arms = {}
  local function arm(t)
    arms[t] = arms[t] or { sends = 0, holdout = 0, hard = {}, opens = {}, clicks = {}, clickers = {},
                           unsubs = {}, conv = {} }
    return arms[t]
  end
  local touches = {}
  for _, r in ipairs(f.rows) do
    if r.state == 'SENT' then
      arm(r.treatment).sends = arm(r.treatment).sends + 1
      touches[r.endpoint_id] = touches[r.endpoint_id] or {}
      table.insert(touches[r.endpoint_id], { at = r.updated_ms, t = r.treatment })
    elseif r.reason == 'HOLDOUT' then
      arm(-1).holdout = arm(-1).holdout + 1
      touches[r.endpoint_id] = touches[r.endpoint_id] or {}
      table.insert(touches[r.endpoint_id], { at = r.due_ms, t = -1 })
    end
  end
  for _, e in ipairs(f.events) do
    local a = json.decode(e.attributes)
    local t = tonumber(a.treatment_id)
    if a.campaign_id == 'spring' and t then
      local s = arm(t)
      if e.event_type == '_email.hardbounce' then s.hard[e.endpoint_id] = true
      elseif e.event_type == '_email.open' then s.opens[e.endpoint_id] = true
      elseif e.event_type == '_email.click' then
        s.clicks[e.endpoint_id .. e.timestamp:sub(1, 13)] = true
        s.clickers[e.endpoint_id] = true
      elseif e.event_type == '_email.unsubscribe' then s.unsubs[e.endpoint_id] = true end
    end
    if e.event_type == 'purchase' then
      local ms = ms_of(e.timestamp)
      local best
      for _, tch in ipairs(touches[e.endpoint_id] or {}) do
        if tch.at <= ms and ms < tch.at + window and (best == nil or tch.at > best.at) then best = tch end
      end
      if best then arm(best.t).conv[e.endpoint_id] = true end
    end
  end
  local function size(t) local n = 0 for _ in pairs(t) do n = n + 1 end return n end
  for _, s in pairs(arms) do
    s.hard_bounces, s.opens_n, s.clicks_n, s.clickers_n = size(s.hard), size(s.opens), size(s.clicks), size(s.clickers)
    s.unsubscribes, s.conversions = size(s.unsubs), size(s.conv)
    s.deliveries = s.sends - s.hard_bounces
  end
  return arms
end

-- Parses the terminal table: cells[label][arm] = text, and the arm names in order.
local function parse_table(out)
  local lines = {}
  for l in out:gmatch('[^\n]*') do lines[#lines + 1] = l end
  local cells, names = {}, nil
  for _, l in ipairs(lines) do
    if l:match('^metric  ') then
      names = {}
      for name in (l:gsub('^metric%s+', '') .. '  '):gmatch('(.-)%s%s+') do names[#names + 1] = name end
    elseif names and l ~= '' and not l:match('^two%-proportion') and not l:match('^  ') then
      local parts = {}
      for p in (l .. '  '):gmatch('(.-)%s%s+') do parts[#parts + 1] = p end
      local label = table.remove(parts, 1)
      cells[label] = {}
      for i, name in ipairs(names) do cells[label][name] = parts[i] end
    elseif names and l == '' then
      names = nil
    end
  end
  return cells
end

local function report(f, extra)
  local out, code, err = h.herald('--db q.db report spring ' .. (extra or ''), { cwd = f.dir })
  assert(code == 0, err)
  return out, parse_table(out)
end

local function pct(x, n) return string.format('%.1f%%', 100 * x / n) end

describe('herald report', function()

  it('counts sends, deliveries, opens, hourly clicks, unsubscribes and conversions as the raw rows say', function()
    local f = fixture()
    local ex = expected(f)
    local out, cells = report(f, '--conversion purchase')
    local names = { [0] = 'A: plain', [1] = 'B: bold', [-1] = 'holdout' }
    -- the fixture is not trivial: every arm has something to count
    for t = 0, 1 do
      local e = ex[t]
      assert.is_true(e.sends > 50 and e.hard_bounces > 0 and e.opens_n > 0 and e.clicks_n > 0 and e.conversions > 0,
        'fixture too thin for ' .. names[t])
    end
    assert.is_true(ex[-1].holdout > 0 and ex[-1].conversions > 0)
    for t = 0, 1 do
      local e, name = ex[t], names[t]
      assert.are.equal(tostring(e.sends), cells['sends'][name])
      assert.are.equal(tostring(e.hard_bounces), cells['hard bounces'][name])
      assert.are.equal(tostring(e.deliveries), cells['deliveries'][name])
      assert.are.equal(tostring(e.opens_n), cells['opens (unique)'][name])
      assert.are.equal(tostring(e.clicks_n), cells['clicks'][name])
      assert.are.equal(tostring(e.unsubscribes), cells['unsubscribes'][name])
      assert.are.equal(tostring(e.conversions), cells['conversions'][name])
      local lo, hi = wilson(e.opens_n, e.deliveries)
      assert.are.equal(string.format('%s [%.1f%%-%.1f%%]', pct(e.opens_n, e.deliveries), 100 * lo, 100 * hi),
        cells['open rate'][name])
      assert.matches('^' .. pct(e.clickers_n, e.deliveries):gsub('%%', '%%%%'), cells['click rate'][name])
      lo, hi = wilson(e.conversions, e.sends)
      assert.are.equal(string.format('%s [%.1f%%-%.1f%%]', pct(e.conversions, e.sends), 100 * lo, 100 * hi),
        cells['conversion rate'][name])
      -- lift over the holdout: (p_t - p_h) / p_h
      local ph = ex[-1].conversions / ex[-1].holdout
      local lift = (e.conversions / e.sends - ph) / ph
      assert.matches(string.format('^%+.1f%%%% %%[', 100 * lift), cells['lift over holdout'][name])
    end
    assert.are.equal(tostring(ex[-1].holdout), cells['endpoints']['holdout'])
    assert.are.equal(tostring(ex[-1].conversions), cells['conversions']['holdout'])
    assert.are.equal('-', cells['sends']['holdout'])
    -- P(best) of the two treatments adds up to 100%
    local pa = tonumber(cells['P(best conversion)']['A: plain']:match('[%d.]+'))
    local pb = tonumber(cells['P(best conversion)']['B: bold']:match('[%d.]+'))
    assert.is_true(math.abs(pa + pb - 100) < 0.2)
    assert.matches('conversion rate: A: plain vs B: bold: z = %-?[%d.]+, p = [%d.]+', out)
  end)

  it('counts a recipient\'s clicks in one clock hour once', function()
    local f = fixture()
    -- the 10th sent endpoint clicked through the server once and reported three SDK clicks,
    -- two of them in the same hour
    local r = f.sent[10]
    local hours, events = {}, 0
    for _, e in ipairs(f.events) do
      if e.endpoint_id == r.endpoint_id and e.event_type == '_email.click' then
        events = events + 1
        hours[e.timestamp:sub(1, 13)] = true
      end
    end
    local n = 0
    for _ in pairs(hours) do n = n + 1 end
    assert.are.equal(4, events)
    assert.is_true(n == 3 or n == 2) -- the tracked click may fall in an SDK click's hour
    local out, code, err = h.herald('--db q.db -e ' .. h.shell_quote([[
      local k = herald.analytics.kpi('spring', 'clicks-grouped-by-campaign-activity')
      print(k.KpiResult.Rows[1].Values[1].Value)]]), { cwd = f.dir })
    assert.are.equal(0, code, err)
    local ex = expected(f)
    assert.are.equal(tostring(ex[0].clicks_n + ex[1].clicks_n), out:match('%d+'))
  end)

  it('gives the same figures as Lua tables and Pinpoint KPIs', function()
    local f = fixture()
    local ex = expected(f)
    local out, code, err = h.herald('--db q.db -e ' .. h.shell_quote([[
      local r = assert(herald.analytics.report('spring', { conversion = 'purchase' }))
      local arms = {}
      for _, a in ipairs(r.arms) do
        arms[tostring(a.treatment)] = { sends = a.sends, deliveries = a.deliveries, opens = a.opens,
          clicks = a.clicks, conversions = a.conversions, holdout = a.holdout, attempted = a.attempted }
      end
      local k = {}
      for _, name in ipairs({ 'successful-delivery-rate', 'successful-delivery-rate-grouped-by-campaign-activity',
                               'email-open-rate', 'unique-deliveries-grouped-by-date', 'hard-bounce-rate',
                               'attempted-deliveries-grouped-by-campaign-activity', 'push-open-rate' }) do
        k[name] = assert(herald.analytics.kpi('spring', name))
      end
      print(herald.json.encode({ arms = arms, kpi = k, run = r.runs[1].id }))]]), { cwd = f.dir })
    assert.are.equal(0, code, err)
    local got = json.decode(out)
    for _, t in ipairs({ 0, 1 }) do
      local a = got.arms[tostring(t)]
      assert.are.same({ ex[t].sends, ex[t].deliveries, ex[t].opens_n, ex[t].clicks_n, ex[t].conversions },
        { a.sends, a.deliveries, a.opens, a.clicks, a.conversions })
    end
    assert.are.equal(ex[-1].holdout, got.arms['-1'].holdout)
    local sends = ex[0].sends + ex[1].sends
    local delivered = ex[0].deliveries + ex[1].deliveries
    local opens = ex[0].opens_n + ex[1].opens_n
    local function value(name, row) return got.kpi[name].KpiResult.Rows[row or 1].Values[1] end
    assert.are.equal('SuccessfulDeliveryRate', value('successful-delivery-rate').Key)
    assert.are.equal('Double', value('successful-delivery-rate').Type)
    assert.is_true(math.abs(tonumber(value('successful-delivery-rate').Value) - delivered / sends) < 1e-12)
    local grouped = got.kpi['successful-delivery-rate-grouped-by-campaign-activity'].KpiResult.Rows[1]
    assert.are.same({ Key = 'CampaignActivity', Type = 'String', Value = tostring(got.run) }, grouped.GroupedBys[1])
    assert.is_true(math.abs(tonumber(value('email-open-rate').Value) - opens / delivered) < 1e-12)
    assert.is_true(math.abs(tonumber(value('hard-bounce-rate').Value) - (sends - delivered) / sends) < 1e-12)
    assert.are.equal(tostring(sends), value('attempted-deliveries-grouped-by-campaign-activity').Value)
    assert.are.equal('0', value('push-open-rate').Value)
    local by_date = got.kpi['unique-deliveries-grouped-by-date'].KpiResult.Rows
    local total = 0
    for _, row in ipairs(by_date) do
      assert.are.equal('Date', row.GroupedBys[1].Key)
      assert.matches('^%d%d%d%d%-%d%d%-%d%d$', row.GroupedBys[1].Value)
      total = total + tonumber(row.Values[1].Value)
    end
    assert.are.equal(delivered, total)
    local out2, code2, err2 = h.herald('--db q.db -e ' .. h.shell_quote(
      "print(herald.analytics.kpi('spring', 'no-such-kpi'))"), { cwd = f.dir })
    assert.are.equal(0, code2, err2)
    assert.matches("nil\tunknown KPI 'no-such-kpi' (one of: ", out2, 1, true)
    assert.matches('email-open-rate-grouped-by-campaign-activity', out2, 1, true)
  end)

  it('attributes conversions within the window only', function()
    local f = fixture()
    local ex7, ex10 = expected(f), expected(f, 10)
    local _, cells7 = report(f, '--conversion purchase')
    local _, cells10 = report(f, '--conversion purchase --window 10')
    -- a 10-day window picks up the purchases 8 and 9 days after the message
    assert.is_true(ex10[0].conversions + ex10[1].conversions > ex7[0].conversions + ex7[1].conversions)
    assert.is_true(ex10[-1].conversions > ex7[-1].conversions)
    for t, name in pairs({ [0] = 'A: plain', [1] = 'B: bold', [-1] = 'holdout' }) do
      assert.are.equal(tostring(ex7[t].conversions), cells7['conversions'][name])
      assert.are.equal(tostring(ex10[t].conversions), cells10['conversions'][name])
    end
    local _, cells_none = report(f, '')
    assert.is_nil(cells_none['conversions'])
    local _, cells_other = report(f, '--conversion signup')
    assert.are.equal('0', cells_other['conversions']['A: plain'])
  end)

  it('records unsubscribes and notifications with their endpoint updates', function()
    local f = fixture()
    local s7, s11, s17 = f.sent[7], f.sent[11], f.sent[17]
    local eps = query(f.dir, string.format([[SELECT id, opt_out, endpoint_status FROM endpoints
      WHERE id IN ('%s', '%s', '%s') ORDER BY id]], s7.endpoint_id, s11.endpoint_id, s17.endpoint_id))
    local by = {}
    for _, e in ipairs(eps) do by[e.id] = e end
    assert.are.equal('ALL', by[s7.endpoint_id].opt_out)        -- unsubscribed
    assert.are.equal('INACTIVE', by[s11.endpoint_id].endpoint_status) -- hard bounce
    assert.are.equal('ALL', by[s17.endpoint_id].opt_out)       -- complaint
    local seen = {}
    for _, e in ipairs(f.events) do
      if e.endpoint_id == s7.endpoint_id and e.event_type == '_email.unsubscribe' then
        local a = json.decode(e.attributes)
        assert.are.same({ campaign_id = 'spring', treatment_id = tostring(s7.treatment),
          campaign_activity_id = tostring(s7.run_id), message_id = s7.message_id }, a)
        seen.unsub = true
      elseif e.endpoint_id == s11.endpoint_id and e.event_type == '_email.hardbounce' then
        assert.are.equal('no such user', json.decode(e.attributes).reason)
        seen.bounce = true
      elseif e.endpoint_id == s17.endpoint_id and e.event_type == '_email.complaint' then
        seen.complaint = true
      elseif e.event_type == '_email.click' and e.endpoint_id == f.sent[5].endpoint_id then
        assert.are.equal('https://example.com/spring?i=5', json.decode(e.attributes).url)
        seen.click = true
      end
    end
    assert.are.same({ unsub = true, bounce = true, complaint = true, click = true }, seen)
    -- a provider that repeats a notification records it once
    local note = json.encode({ MessageId = s11.message_id, Type = 'BOUNCE', BounceType = 'HARD' })
    local a = http(f.srv.port, { { method = 'POST', path = '/v1/apps/default/webhooks/status', body = note } })
    assert.are.equal(202, a[1].status)
    assert.are.same({ EventType = '_email.hardbounce', EndpointId = s11.endpoint_id, Message = 'Accepted' },
      json.decode(a[1].body))
    local n = query(f.dir, "SELECT count(*) AS n FROM events WHERE event_type = '_email.hardbounce' AND endpoint_id = '"
      .. s11.endpoint_id .. "'")
    assert.are.equal(1, n[1].n)
    -- SMS statuses map to Pinpoint's names; OPTOUT opts the endpoint out
    local s20 = f.sent[20]
    local function last_activity(id)
      return query(f.dir, "SELECT coalesce(last_activity, 'never') AS t FROM endpoints WHERE id = '" .. id .. "'")[1].t
    end
    -- (an old last activity, so a receipt stamped now would move it if it counted)
    local kept = last_activity(s20.endpoint_id)
    h.sqlite(f.dir, 'q.db', "UPDATE endpoints SET last_activity = '2020-01-01T00:00:00.000Z' WHERE id = '"
      .. s20.endpoint_id .. "'")
    local before = last_activity(s20.endpoint_id)
    assert.are.equal('2020-01-01T00:00:00.000Z', before)
    -- an SMS receipt is of an SMS message: the fixture's are email, so this one becomes an SMS
    -- (its entry in the index of sendable messages with it)
    h.sqlite(f.dir, 'q.db', "UPDATE outbox SET channel = 'SMS' WHERE message_id = '" .. s20.message_id .. "'")
    local answers = http(f.srv.port, {
      { method = 'POST', path = '/v1/apps/default/webhooks/status',
        body = json.encode({ MessageId = s20.message_id, Type = 'SMS', Status = 'SUCCESS' }) },
      { method = 'POST', path = '/v1/apps/default/webhooks/status',
        body = json.encode({ MessageId = s20.message_id, Type = 'SMS', Status = 'OPTOUT' }) },
    })
    assert.are.equal('_SMS.SUCCESS', json.decode(answers[1].body).EventType)
    assert.are.equal('_SMS.OPTOUT', json.decode(answers[2].body).EventType)
    assert.are.equal('ALL', query(f.dir, "SELECT opt_out FROM endpoints WHERE id = '" .. s20.endpoint_id .. "'")[1].opt_out)
    -- a provider's receipts are not the endpoint's activity: Recency does not move
    assert.are.equal(before, last_activity(s20.endpoint_id))
    h.sqlite(f.dir, 'q.db', "UPDATE endpoints SET last_activity = " .. (kept == 'never' and 'NULL' or ("'" .. kept .. "'"))
      .. " WHERE id = '" .. s20.endpoint_id .. "'")
    -- a hit for an endpoint deleted since the message went out is answered, not stored, and
    -- does not keep the hits written with it from being stored
    local gone = assert(tracking.open_url { campaign = 'spring', run = s20.run_id, treatment = 0,
      endpoint = 'deleted-since', message_id = 'm-gone', key = KEY, base = '' })
    local again = assert(tracking.open_url(token_fields_of(s20)))
    local hits = http(f.srv.port, { { method = 'GET', path = gone }, { method = 'GET', path = again } })
    assert.are.same({ 200, 200 }, { hits[1].status, hits[2].status })
    local stored = query(f.dir, "SELECT endpoint_id, count(*) AS n FROM events WHERE event_type = '_email.open' AND "
      .. "endpoint_id IN ('deleted-since', '" .. s20.endpoint_id .. "') GROUP BY endpoint_id")
    assert.are.equal(1, #stored)
    assert.are.equal(s20.endpoint_id, stored[1].endpoint_id)
    assert.are.equal(1, stored[1].n)
  end)

  it('keeps the hits the store refuses while another process holds it, and writes them after', function()
    local f = fixture()
    local s = f.sent[3]
    local function opens()
      return query(f.dir, "SELECT count(*) AS n FROM events WHERE event_type = '_email.open' AND endpoint_id = '"
        .. s.endpoint_id .. "'")[1].n
    end
    local before = opens()
    -- another writer holds the database past both of the server's tries (5 s busy timeout each)
    local holder = [[
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
c.execute('BEGIN IMMEDIATE')
open(sys.argv[2], 'w').close()
time.sleep(12)
c.execute('COMMIT')
]]
    h.write(f.dir .. '/hold.py', holder)
    os.remove(f.dir .. '/held')
    os.execute('cd ' .. h.shell_quote(f.dir) .. ' && python3 hold.py q.db held > /dev/null 2>&1 &')
    h.wait_for(function() return h.read(f.dir .. '/held') ~= nil end, 10000, 'the other writer to hold the store')
    local url = assert(tracking.open_url(token_fields_of(s)))
    local hits = http(f.srv.port, { { method = 'GET', path = url } })
    assert.are.equal(200, hits[1].status)
    -- answered while the store was held; written once it is free again
    h.wait_for(function() return opens() == before + 1 end, 30000, function() return 'the refused open to be written: ' .. before .. ' then ' .. opens() end)
  end)

  it('writes a self-contained HTML page that Chromium renders with the table\'s numbers', function()
    local f = fixture()
    local out, cells = report(f, '--conversion purchase --html page.html')
    assert.matches('wrote page.html', out, 1, true)
    local page = h.read(f.dir .. '/page.html')
    assert.are.equal(3, h.count(page, '<svg '))
    assert.is_nil(page:find('<script', 1, true))
    assert.is_nil(page:find('<link', 1, true))
    assert.is_nil(page:find('src=', 1, true))
    assert.is_nil(page:find('@import', 1, true))
    assert.is_nil(page:find('url(', 1, true))
    -- every cell of the page's table equals the terminal table's
    local n = 0
    for row in page:gmatch('<tr><th>(.-)</tr>') do
      local label = row:match('^(.-)</th>')
      for arm, text in row:gmatch('data%-arm="(.-)">(.-)</td>') do
        assert.are.equal(cells[label][arm], text, label .. ' / ' .. arm)
        n = n + 1
      end
    end
    assert.are.equal(3 * 16, n)
    -- rendered, the page is not blank
    local profile = h.tmpdir()
    local png = f.dir .. '/page.png'
    local cmd = 'chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run ' ..
      '--disable-background-networking --disable-component-update --disable-sync ' ..
      '--user-data-dir=' .. h.shell_quote(profile) .. ' --screenshot=' .. h.shell_quote(png) ..
      ' --window-size=900,1600 ' .. h.shell_quote('file://' .. f.dir .. '/page.html') .. ' > /dev/null 2>&1'
    local _, code = h.sh('timeout 120 ' .. cmd)
    assert.are.equal(0, code)
    local stats, scode = h.sh('python3 ' .. h.shell_quote(h.root .. '/tests/helpers/png_stats.py') .. ' ' .. h.shell_quote(png))
    assert.are.equal(0, scode, stats)
    local w, ht, colours = stats:match('(%d+) (%d+) (%d+)')
    assert.are.equal('900', w)
    assert.are.equal('1600', ht)
    -- text, the arms' colours and the grid: far more than a blank page's single colour
    assert.is_true(tonumber(colours) > 50, 'only ' .. colours .. ' colours')
  end)

  it('reports one run with --run and refuses unknown campaigns and runs', function()
    local f = fixture()
    local run = f.rows[1].run_id
    local _, cells = report(f, '--run ' .. run)
    local ex = expected(f)
    assert.are.equal(tostring(ex[0].sends), cells['sends']['A: plain'])
    local _, code, err = h.herald('--db q.db report spring --run 999', { cwd = f.dir })
    assert.are.equal(1, code)
    assert.matches("campaign 'spring' has no run 999", err, 1, true)
    _, code, err = h.herald('--db q.db report nope', { cwd = f.dir })
    assert.are.equal(1, code)
    assert.matches("no campaign 'nope'", err, 1, true)
    _, code, err = h.herald('--db q.db report spring --window -1', { cwd = f.dir })
    assert.are.equal(2, code)
    assert.matches('--window needs a positive number', err, 1, true)
  end)
end)

describe('herald report of a local-time run', function()
  it('dates sends by their UTC day, before 1970 too, alike in the report and the KPIs', function()
    local dir = h.tmpdir()
    h.endpoints_sql(dir, 'q.db', { { id = 'e1', address = 'a@example.com' }, { id = 'e2', address = 'b@example.com' } })
    h.write(dir .. '/c.lua', [[
      herald.campaign { name = 'c', segment = herald.segment { name = 'all' }, message = { body = 'hi' },
        deliver = { file = 'out.txt' } }]])
    local _, code, err = h.herald('--db q.db run --until-idle --clock-start 1969-12-31T12:00:00Z c.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local out
    out, code, err = h.herald('--db q.db -e ' .. h.shell_quote([[
      local json = require 'herald.core.json'
      for _, d in ipairs(herald.analytics.report('c').daily) do print('report', d.date) end
      for _, name in ipairs { 'successful-delivery-rate-grouped-by-date', 'unique-deliveries-grouped-by-date' } do
        for _, row in ipairs(herald.analytics.kpi('c', name).KpiResult.Rows) do
          print(name, row.GroupedBys[1].Value, row.Values[1].Value)
        end
      end]]), { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal('report\t1969-12-31\n'
      .. 'successful-delivery-rate-grouped-by-date\t1969-12-31\t1\n'
      .. 'unique-deliveries-grouped-by-date\t1969-12-31\t2\n', out)
  end)

  it("watches each holdout member for conversions from its own zone's send time", function()
    local dir = h.tmpdir()
    -- cohort i - 1: e001-e010 are the holdout; odd ones in Tokyo (09:00 local is 00:00Z),
    -- even ones in Los Angeles (17:00Z); the run's nominal time is 09:00Z
    local rows = {}
    for i = 1, 100 do
      rows[i] = { id = string.format('e%03d', i), address = string.format('u%03d@example.com', i), cohort = i - 1,
        tz = i % 2 == 1 and 'Asia/Tokyo' or 'America/Los_Angeles' }
    end
    h.endpoints_sql(dir, 'q.db', rows)
    h.write(dir .. '/l.lua', [[
      herald.campaign { name = 'local', segment = herald.segment { name = 'all' }, holdout = 10,
        schedule = { start = '2027-03-01T09:00:00', timezone = 'UTC', is_local_time = true },
        treatments = { { name = 'A', size = 90, message = { body = 'a' } } }, deliver = { file = 'out.txt' } }]])
    local _, code, err = h.herald('--db q.db run --until-idle --clock-start 2027-02-28T18:00:00Z l.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.same({ { zone = 'America/Los_Angeles', due = ms_of('2027-03-01T17:00:00.000Z'), n = 5 },
                      { zone = 'Asia/Tokyo', due = ms_of('2027-03-01T00:00:00.000Z'), n = 5 } },
      query(dir, [[SELECT zone, due_ms AS due, count(*) AS n FROM outbox WHERE reason = 'HOLDOUT'
        GROUP BY 1, 2 ORDER BY 1]]))
    -- Tokyo: e001, e003, e005 buy at 05:00Z, after their 00:00Z; Los Angeles: e002, e004
    -- at 12:00Z, before their 17:00Z, and e006 at 20:00Z, after it
    local buys = { e001 = '05:00', e003 = '05:00', e005 = '05:00', e002 = '12:00', e004 = '12:00', e006 = '20:00' }
    local src = {}
    for ep, at in pairs(buys) do
      src[#src + 1] = string.format('assert(herald.events.put(%q, { EventId = %q, EventType = "purchase",'
        .. ' Timestamp = "2027-03-01T%s:00Z" }))', ep, 'buy-' .. ep, at)
    end
    h.write(dir .. '/buys.lua', table.concat(src, '\n'))
    _, code, err = h.herald('--db q.db buys.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local out
    out, code, err = h.herald('--db q.db -e ' .. h.shell_quote([[
      for _, a in ipairs(assert(herald.analytics.report('local', { conversion = 'purchase' })).arms) do
        print(a.name, a.conversions)
      end]]), { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal('A\t0\nholdout\t4\n', out)
  end)
end)

describe('herald report across campaign versions', function()
  it("names each run's treatments by its own version and keeps different treatments apart", function()
    local dir = h.tmpdir()
    local rows = {}
    for i = 1, 100 do rows[i] = { id = string.format('e%03d', i), address = string.format('u%03d@example.com', i), cohort = i - 1 } end
    h.endpoints_sql(dir, 'q.db', rows)
    local head = [[
      herald.campaign{ name = 'ver', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        schedule = { start = '2027-01-04T10:00:00Z', frequency = 'DAILY' }, ]]
    local abc = head .. [[treatments = { { name = 'A', size = 40, message = { body = 'a' } },
      { name = 'B', size = 30, message = { body = 'b' } }, { name = 'C', size = 30, message = { body = 'c' } } } }]]
    -- v1 A/B/C; v2 one message; v3 B and A swapped to other numbers; v4 A/B/C again (A's
    -- body corrected): one run a day each
    local versions = { abc, head .. "message = { body = 'only' } }",
      head .. [[treatments = { { name = 'B', size = 50, message = { body = 'b' } },
        { name = 'A', size = 50, message = { body = 'a' } } } }]], (abc:gsub("body = 'a'", "body = 'a2'")) }
    for i, def in ipairs(versions) do
      h.write(dir .. '/v.lua', def)
      local _, code, err = h.herald(string.format('--db q.db run --clock-start 2027-01-%02dT09:00:00Z'
        .. ' --until 2027-01-%02dT12:00:00Z v.lua', 3 + i, 3 + i), { cwd = dir })
      assert.are.equal(0, code, err)
    end
    assert.are.same({ { id = 1, v = 1 }, { id = 2, v = 2 }, { id = 3, v = 3 }, { id = 4, v = 4 } },
      query(dir, 'SELECT id, campaign_version AS v FROM campaign_runs ORDER BY id'))
    local function arms(opts)
      local out, code, err = h.herald('--db q.db -e ' .. h.shell_quote([[
        local r = assert(herald.analytics.report('ver', ]] .. opts .. [[))
        local arms = {}
        for i, a in ipairs(r.arms) do arms[i] = { a.name, a.treatment, a.sends, herald.json.array(a.versions or {}) } end
        local best = {}
        for name in pairs(r.p_best.click or {}) do best[#best + 1] = name end
        table.sort(best)
        print(herald.json.encode({ arms = arms, p_best = best }))]]), { cwd = dir })
      assert.are.equal(0, code, err)
      return json.decode(out)
    end
    -- across runs: a treatment adds up while its number and name stay (A and B of v1 and v4);
    -- v2's 'default' and v3's renumbered B and A are arms of their own, the names that
    -- repeat labelled with their versions
    local all = arms('{}')
    assert.are.same({ { 'A (v1, v4)', 0, 80, { 1, 4 } }, { 'B (v1, v4)', 1, 60, { 1, 4 } }, { 'C', 2, 60, { 1, 4 } },
                      { 'default', 0, 100, { 2 } }, { 'B (v3)', 0, 50, { 3 } }, { 'A (v3)', 1, 50, { 3 } } }, all.arms)
    assert.are.same({ 'A (v1, v4)', 'A (v3)', 'B (v1, v4)', 'B (v3)', 'C', 'default' }, all.p_best)
    -- one run: its own version's names
    assert.are.same({ { 'A', 0, 40, { 1 } }, { 'B', 1, 30, { 1 } }, { 'C', 2, 30, { 1 } } }, arms('{ run = 1 }').arms)
    assert.are.same({ { 'default', 0, 100, { 2 } } }, arms('{ run = 2 }').arms)
    assert.are.same({ { 'B', 0, 50, { 3 } }, { 'A', 1, 50, { 3 } } }, arms('{ run = 3 }').arms)
    -- the table says which version each run ran
    local out, code, err = h.herald('--db q.db report ver --run 3', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.matches('run 3: scheduled 2027-01-06T10:00:00Z, COMPLETED (version 3)\n', out, 1, true)
    assert.matches('\nmetric +B +A\nendpoints +50 +50\n', out)
    out = h.herald('--db q.db report ver --run 1', { cwd = dir })
    assert.matches('\nmetric +A +B +C\nendpoints +40 +30 +30\n', out)
  end)
end)

describe('PutEvents and webhooks', function()
  -- the last user of the fixture's server stops it
  teardown(function()
    if fixture_cache then os.execute('kill ' .. fixture_cache.srv.pid .. ' 2> /dev/null') end
  end)
  local function srv() return fixture().srv end

  local function body_of(a) return json.decode(a.body) end

  it('stores the good items of a batch and answers each bad one with 400 and its reason', function()
    local f = fixture()
    local long = string.rep('x', 201)
    local req = { BatchItem = {
      ['new-ep'] = { Endpoint = { ChannelType = 'EMAIL', Address = 'new@example.com' },
        Events = { ok1 = { EventType = 'page.view', Timestamp = '2026-11-29T10:00:00Z', Attributes = { page = 'home' } },
                   notime = { EventType = 'page.view' },
                   long = { EventType = 'page.view', Timestamp = '2026-11-29T10:00:00Z', Attributes = { a = long } } } },
      ['bad-ep'] = { Endpoint = { ChannelType = 'EMAIL', Address = 'not an address' },
        Events = { e = { EventType = 'x', Timestamp = '2026-11-29T10:00:00Z' } } },
      ['ghost'] = { Events = { g = { EventType = 'x', Timestamp = '2026-11-29T10:00:00Z' } } },
      ['odd-ep'] = { Endpoint = { ChannelType = 'EMAIL', Address = 'odd@example.com' }, Extra = 1,
        Events = { o = { EventType = 'x', Timestamp = '2026-11-29T10:00:00Z' } } },
      [f.sent[1].endpoint_id] = { Events = { ok2 = { EventType = 'page.view', Timestamp = '2026-11-29T11:00:00Z' } } },
    } }
    local a = http(srv().port, { { method = 'POST', path = '/v1/apps/default/events', body = json.encode(req) } })[1]
    assert.are.equal(202, a.status)
    local r = body_of(a).Results
    assert.are.same({ Message = 'Accepted', StatusCode = 202 }, r['new-ep'].EndpointItemResponse)
    assert.are.same({ Message = 'Accepted', StatusCode = 202 }, r['new-ep'].EventsItemResponse.ok1)
    assert.are.same({ Message = 'Timestamp: required', StatusCode = 400 }, r['new-ep'].EventsItemResponse.notime)
    assert.are.equal(400, r['new-ep'].EventsItemResponse.long.StatusCode)
    assert.matches('Attributes.a: value longer than 200 characters', r['new-ep'].EventsItemResponse.long.Message, 1, true)
    assert.are.equal(400, r['bad-ep'].EndpointItemResponse.StatusCode)
    assert.matches('^Endpoint%.Address', r['bad-ep'].EndpointItemResponse.Message)
    assert.are.equal(400, r['bad-ep'].EventsItemResponse.e.StatusCode)
    assert.are.equal(400, r['ghost'].EndpointItemResponse.StatusCode)
    assert.matches("no endpoint 'ghost'", r['ghost'].EndpointItemResponse.Message, 1, true)
    assert.are.equal(202, r[f.sent[1].endpoint_id].EventsItemResponse.ok2.StatusCode)
    assert.are.same({ StatusCode = 400, Message = 'Extra: unknown field (a batch item has Endpoint and Events)' },
      r['odd-ep'].EndpointItemResponse)
    assert.are.equal(400, r['odd-ep'].EventsItemResponse.o.StatusCode)
    local rows = query(f.dir, [[SELECT endpoint_id, event_id, event_type FROM events
      WHERE event_type IN ('page.view', 'x') ORDER BY event_id]])
    assert.are.same({ { endpoint_id = 'new-ep', event_id = 'ok1', event_type = 'page.view' },
                      { endpoint_id = f.sent[1].endpoint_id, event_id = 'ok2', event_type = 'page.view' } }, rows)
    local eps = query(f.dir, "SELECT id, address FROM endpoints WHERE id IN ('new-ep', 'bad-ep', 'ghost', 'odd-ep')")
    assert.are.same({ { id = 'new-ep', address = 'new@example.com' } }, eps)
  end)

  it('refuses bad requests whole with a Pinpoint error body', function()
    local f = fixture()
    local many = {}
    for i = 1, 101 do many['e' .. i] = { EventType = 'x', Timestamp = '2026-11-29T10:00:00Z' } end
    local token = assert(tracking.open_url { campaign = 'spring', run = 1, treatment = 0, endpoint = 'ep-001',
      message_id = 'm', key = KEY, base = '' })
    local tampered = token:sub(1, -3) .. (token:sub(-2, -2) == 'A' and 'B' or 'A') .. token:sub(-1)
    local reqs = {
      { method = 'POST', path = '/v1/apps/default/events', body = '{"BatchItem": {' },
      { method = 'POST', path = '/v1/apps/nope/events', body = '{"BatchItem": {}}' },
      { method = 'POST', path = '/v1/apps/default/events', body = json.encode({ BatchItem = { x = { Events = many } } }) },
      { method = 'POST', path = '/v1/apps/default/events', body = '{"Items": {}}' },
      { method = 'POST', path = '/v1/apps/default/events', body = '[1, 2]' },
      { method = 'POST', path = '/v1/apps/default/webhooks/status', body = '{"MessageId": "nope", "Type": "COMPLAINT"}' },
      { method = 'POST', path = '/v1/apps/default/webhooks/status',
        body = json.encode({ MessageId = f.sent[1].message_id, Type = 'BOUNCE' }) },
      { method = 'POST', path = '/v1/apps/default/webhooks/status',
        body = json.encode({ MessageId = f.sent[1].message_id, Type = 'COMPLAINT', Color = 'red' }) },
      { method = 'GET', path = tampered },
      { method = 'POST', path = '/v1/apps/default/events', announce = 4 * 1024 * 1024 + 1 },
    }
    local answers = http(srv().port, reqs)
    local want = {
      { 400, 'malformed JSON at line 1' },
      { 404, "unknown application 'nope'" },
      { 400, 'BatchItem: 101 events; at most 100 per request' },
      { 400, 'Items: unknown field' },
      { 400, 'expected an EventsRequest object' },
      { 404, "MessageId: no message 'nope'" },
      { 400, 'BounceType: required for a BOUNCE' },
      { 400, 'Color: unknown field' },
      { 400, 'invalid tracking token' },
      { 413, '' },
    }
    for i, w in ipairs(want) do
      local a = answers[i]
      assert.are.equal(w[1], a.status, 'request ' .. i .. ': ' .. a.body)
      local b = body_of(a)
      assert.matches(w[2], b.Message, 1, true)
      assert.matches('^[%x-]+$', b.RequestID)
    end
    -- nothing of the refused requests was stored
    local n = query(f.dir, "SELECT count(*) AS n FROM events WHERE event_type = 'x'")
    assert.are.equal(0, n[1].n)
  end)

  it('finds a notification\'s message among the messages sent, by an index, and no other', function()
    local f = fixture()
    local held = f.holdout[1]
    assert.are.equal('HOLDOUT', held.reason)
    local answers = http(srv().port, {
      -- a holdout member was never sent anything: a receipt naming its message id is not its
      { method = 'POST', path = '/v1/apps/default/webhooks/status',
        body = json.encode({ MessageId = held.message_id, Type = 'BOUNCE', BounceType = 'HARD' }) },
      { method = 'POST', path = '/v1/apps/default/webhooks/status',
        body = json.encode({ MessageId = f.sent[2].message_id, Type = 'DELIVERY' }) },
    })
    assert.are.equal(404, answers[1].status, answers[1].body)
    assert.matches("MessageId: no message '" .. held.message_id .. "'", body_of(answers[1]).Message, 1, true)
    assert.are.equal(202, answers[2].status, answers[2].body)
    assert.are.same({ EventType = '_email.delivered', EndpointId = f.sent[2].endpoint_id, Message = 'Accepted' },
      body_of(answers[2]))
    local rows = query(f.dir, "SELECT count(*) AS n FROM events WHERE endpoint_id = '" .. held.endpoint_id
      .. "' AND event_type = '_email.hardbounce'")
    assert.are.equal(0, rows[1].n)
    local ep = query(f.dir, "SELECT endpoint_status FROM endpoints WHERE id = '" .. held.endpoint_id .. "'")
    assert.are.equal('ACTIVE', ep[1].endpoint_status)
    -- an SMS receipt names an SMS message: this email is not one
    local wrong = http(srv().port, { { method = 'POST', path = '/v1/apps/default/webhooks/status',
      body = json.encode({ MessageId = f.sent[3].message_id, Type = 'SMS', Status = 'OPTOUT' }) } })
    assert.are.equal(404, wrong[1].status, wrong[1].body)
    assert.matches('(of the SMS messages it sent)', body_of(wrong[1]).Message, 1, true)
    local ep3 = query(f.dir, "SELECT opt_out FROM endpoints WHERE id = '" .. f.sent[3].endpoint_id .. "'")
    assert.are.equal('NONE', ep3[1].opt_out)
    -- the messages sent are indexed by the start of their id (a scan of a million-row outbox took
    -- ~200 ms a receipt); the lookup's shape uses that index
    local plan = query(f.dir, "EXPLAIN QUERY PLAN SELECT o.endpoint_id FROM outbox o JOIN campaign_runs r"
      .. " ON r.id = o.run_id WHERE substr(o.message_id, 1, 8) = substr('" .. f.sent[2].message_id
      .. "', 1, 8) AND o.claimed_ms IS NOT NULL AND o.channel IN ('EMAIL', 'SMS') AND +o.channel = 'EMAIL'"
      .. " AND +o.message_id = '" .. f.sent[2].message_id .. "' AND r.app_id = 'default'")
    local details = {}
    for _, p in ipairs(plan) do details[#details + 1] = p.detail end
    assert.matches('SEARCH o USING INDEX outbox_message_claimed', table.concat(details, '\n'), 1, true)
  end)
end)

describe('herald run --serve', function()
  it('serves PutEvents next to the scheduler and stops with it', function()
    local dir = h.tmpdir()
    h.write(dir .. '/later.lua', [[
      herald.endpoints.put{ Id = 'a', ChannelType = 'EMAIL', Address = 'a@example.com' }
      herald.campaign{ name = 'later', segment = herald.segment{ name = 'all' },
        schedule = { start = '2099-01-01T00:00:00Z' }, message = { body = 'hi' } }
    ]])
    local inner = h.shell_quote(h.exe) .. ' --db q.db run --serve 127.0.0.1:0 later.lua > out.txt 2> err.txt & ' ..
      'echo $! > pid; wait $!; echo $? > rc'
    os.execute('cd ' .. h.shell_quote(dir) .. ' && sh -c ' .. h.shell_quote(inner) .. ' > /dev/null 2>&1 &')
    local port = h.wait_for(function()
      return tonumber((h.read(dir .. '/out.txt') or ''):match('serving on http://127%.0%.0%.1:(%d+)'))
    end, 20000, 'herald run to serve')
    local body = json.encode({ BatchItem = { a = { Events = { e1 = { EventType = 'app.open', Timestamp = '2026-11-29T10:00:00Z' } } } } })
    local a = http(port, { { method = 'POST', path = '/v1/apps/default/events', body = body } })[1]
    assert.are.equal(202, a.status)
    local pid = h.wait_for(function() return tonumber((h.read(dir .. '/pid') or ''):match('%d+')) end, 5000, 'pid')
    os.execute('kill -TERM ' .. pid)
    local rc = h.wait_for(function() return tonumber((h.read(dir .. '/rc') or ''):match('%d+')) end, 20000, 'exit')
    assert.are.equal(0, rc, h.read(dir .. '/err.txt'))
    assert.matches('stopped', h.read(dir .. '/out.txt'))
    local rows = query(dir, "SELECT endpoint_id, event_type FROM events")
    assert.are.same({ { endpoint_id = 'a', event_type = 'app.open' } }, rows)
  end)

  it('refuses a bad --serve address', function()
    local dir = h.tmpdir()
    h.write(dir .. '/x.lua', "herald.campaign{ name = 'x', segment = herald.segment{ name = 'all' }, message = { body = 'b' } }\n")
    local _, code, err = h.herald('--db q.db run --until-idle --serve nowhere x.lua', { cwd = dir })
    assert.are.equal(1, code)
    assert.matches('--serve', err, 1, true)
  end)
end)

describe('herald report with failed messages', function()
  local S = require 'servers'

  -- 40 email endpoints (every 4th address refused at RCPT) and 8 webhook ones (refused with a
  -- 400) in two treatments and a holdout, sent through real servers; then a bounce notice of
  -- one message that was sent comes back by mail.
  it('shows failures, records RCPT refusals as hard bounces and rates deliveries over the messages attempted', function()
    local ng = S.start_nginx { tls = false, locations = 'location = /hook-400 { return 400 "bad\\n"; }\n' }
    local ms = S.start_mailstore()
    local dir = h.tmpdir()
    local ok, err = pcall(function()
      h.write(dir .. '/c.lua', [[
        for i = 1, 40 do
          assert(herald.endpoints.put { Id = string.format('e-%02d', i), ChannelType = 'EMAIL',
            Address = (i % 4 == 0 and 'reject' or 'ok') .. i .. '@example.com' })
        end
        for i = 1, 8 do
          assert(herald.endpoints.put { Id = 'c-' .. i, ChannelType = 'CUSTOM', Address = 'https://x/' .. i })
        end
        herald.campaign { name = 'fails', segment = herald.segment { name = 'all' }, holdout = 10,
          treatments = {
            { name = 'A', size = 45, message = { subject = 'A', body = 'bodyA' } },
            { name = 'B', size = 45, message = { subject = 'B', body = 'bodyB' } },
          },
          deliver = 'channels' }
      ]])
      h.write(dir .. '/providers.lua', string.format([[
        return { profiles = { hooks = { type = 'webhook', url = %q },
                              mail = { type = 'smtp', url = %q, from = 'News <news@example.com>' } },
                 retry = { max_attempts = 2, min_ms = 10, max_ms = 20 },
                 channels = { CUSTOM = 'hooks', EMAIL = 'mail' } }
      ]], ng.url .. '/hook-400', ms.url))
      local _, code, rerr = h.herald('--db q.db run --until-idle --providers providers.lua c.lua', { cwd = dir })
      assert.are.equal(0, code, rerr)
      -- the bounce notice of the first message sent
      local raw = ms:message(1).raw
      local key = raw:match('\r\nX%-Herald%-Message%-Id: ([^\r\n]+)')
      local rcpt = assert(query(dir, "SELECT address FROM outbox WHERE message_id = '" .. key .. "'")[1]).address
      h.write(dir .. '/bounce.eml', (h.read(h.root .. '/tests/fixtures/mail/dsn_hard.eml')
        :gsub('@@RCPT@@', rcpt):gsub('@@ORIGINAL@@', function() return raw end)))
      local out, fcode, ferr = h.herald('--db q.db feedback bounce.eml', { cwd = dir })
      assert.are.equal(0, fcode, ferr .. out)
      return key
    end)
    ng:stop()
    ms:stop()
    assert(ok, err)
    local dsn_message = err

    local rows = query(dir, [[SELECT o.endpoint_id, o.treatment, o.run_id, o.message_id, o.state, o.reason,
      o.address, e.endpoint_status FROM outbox o JOIN endpoints e ON e.id = o.endpoint_id WHERE o.treatment >= 0]])
    local events = query(dir, "SELECT endpoint_id, event_type, attributes FROM events WHERE event_type = '_email.hardbounce'")
    local bounced = {}
    for _, e in ipairs(events) do
      assert.is_nil(bounced[e.endpoint_id], 'one hard bounce per endpoint')
      bounced[e.endpoint_id] = json.decode(e.attributes)
    end
    local ex = { [0] = { sends = 0, failed = 0, hard = 0, dsn = 0 }, [1] = { sends = 0, failed = 0, hard = 0, dsn = 0 } }
    for _, r in ipairs(rows) do
      local e = ex[r.treatment]
      if r.state == 'SENT' then e.sends = e.sends + 1 end
      if r.state == 'FAILED' then e.failed = e.failed + 1 end
      if r.address:match('^reject') then
        -- refused at RCPT: a hard bounce of the campaign, recorded as a bounce notice is
        assert.are.equal('FAILED', r.state)
        assert.matches('RCPT failed: 550', r.reason, 1, true)
        e.hard = e.hard + 1
        local a = assert(bounced[r.endpoint_id], 'no _email.hardbounce for ' .. r.endpoint_id)
        assert.are.same({ campaign_id = 'fails', treatment_id = tostring(r.treatment),
          campaign_activity_id = tostring(r.run_id), message_id = r.message_id }, {
          campaign_id = a.campaign_id, treatment_id = a.treatment_id,
          campaign_activity_id = a.campaign_activity_id, message_id = a.message_id })
        assert.matches('5.1.1 no such user', a.reason, 1, true)
        assert.are.equal('INACTIVE', r.endpoint_status)
      elseif r.message_id == dsn_message then
        assert.are.equal('SENT', r.state)
        assert.is_not_nil(bounced[r.endpoint_id])
        e.hard, e.dsn = e.hard + 1, 1
      else
        assert.is_nil(bounced[r.endpoint_id], r.endpoint_id .. ' did not bounce')
      end
    end
    for t = 0, 1 do
      local e = ex[t]
      -- every arm has sends, webhook refusals and RCPT refusals
      assert.is_true(e.sends > 0 and e.failed > e.hard - e.dsn and e.hard - e.dsn > 0, 'fixture too thin')
      e.deliveries = e.sends - e.dsn
      e.attempted = e.sends + e.failed
    end
    assert.are.equal(1, ex[0].dsn + ex[1].dsn)

    local out, code, rerr = h.herald('--db q.db report fails', { cwd = dir })
    assert.are.equal(0, code, rerr)
    local cells = parse_table(out)
    for t, name in pairs({ [0] = 'A', [1] = 'B' }) do
      local e = ex[t]
      assert.are.equal(tostring(e.sends), cells['sends'][name])
      assert.are.equal(tostring(e.failed), cells['failed'][name])
      assert.are.equal(tostring(e.hard), cells['hard bounces'][name])
      assert.are.equal(tostring(e.deliveries), cells['deliveries'][name])
      local lo, hi = wilson(e.deliveries, e.attempted)
      assert.are.equal(string.format('%s [%.1f%%-%.1f%%]', pct(e.deliveries, e.attempted), 100 * lo, 100 * hi),
        cells['delivery rate'][name])
    end
    assert.are.equal('-', cells['failed']['holdout'])
    -- the KPIs agree with the report
    local kout, kcode, kerr = h.herald('--db q.db -e ' .. h.shell_quote([[
      local function v(name) return herald.analytics.kpi('fails', name).KpiResult.Rows[1].Values[1].Value end
      print(v('successful-delivery-rate'), v('hard-bounce-rate'), v('attempted-deliveries'))]]), { cwd = dir })
    assert.are.equal(0, kcode, kerr)
    local rate, hard_rate, attempted = kout:match('^(%S+)\t(%S+)\t(%S+)')
    local all = ex[0].attempted + ex[1].attempted
    assert.is_true(math.abs(tonumber(rate) - (ex[0].deliveries + ex[1].deliveries) / all) < 1e-12, kout)
    -- hard bounces are email's: over the email messages attempted, not the webhook ones
    local email = 0
    for _, r in ipairs(rows) do
      if r.endpoint_id:match('^e%-') and (r.state == 'SENT' or r.state == 'FAILED') then email = email + 1 end
    end
    assert.is_true(email < all, 'fixture too thin')
    assert.is_true(math.abs(tonumber(hard_rate) - (ex[0].hard + ex[1].hard) / email) < 1e-12, kout)
    assert.are.equal(tostring(all), attempted)
  end)
end)

describe('status notifications and the endpoints they change', function()
  -- e1, e2 and e3 get a campaign message each (to a file); notifications about them are posted
  -- while their owners write the endpoints again.
  local function setup_campaign()
    return h.file_campaign('q.db', { { 'e1', 'ann@example.com' }, { 'e2', 'bob@example.com' }, { 'e3', 'cy@example.com' } })
  end

  local function put(dir, fields)
    local _, code, err = h.herald('--db q.db -e ' .. h.shell_quote('assert(herald.endpoints.put ' .. fields .. ')'),
      { cwd = dir })
    assert.are.equal(0, code, err)
  end

  local function state(dir, id)
    local r = query(dir, "SELECT endpoint_status AS s, opt_out AS o FROM endpoints WHERE id = '" .. id .. "'")[1]
    return r.s .. ' ' .. r.o
  end

  local function post(port, note)
    local a = http(port, { { method = 'POST', path = '/v1/apps/default/webhooks/status', body = json.encode(note) } })[1]
    assert.are.equal(202, a.status, a.body)
  end

  it("change an endpoint once, and only while it has the address the message went to", function()
    local dir, mid = setup_campaign()
    local srv = start_serve(dir)
    local ok, e = pcall(function()
      -- a hard bounce, the address corrected, then the provider's retry of the bounce
      post(srv.port, { MessageId = mid.e1, Type = 'BOUNCE', BounceType = 'HARD' })
      assert.are.equal('INACTIVE NONE', state(dir, 'e1'))
      put(dir, "{ Id = 'e1', ChannelType = 'EMAIL', Address = 'ann2@example.com' }")
      assert.are.equal('ACTIVE NONE', state(dir, 'e1'))
      post(srv.port, { MessageId = mid.e1, Type = 'BOUNCE', BounceType = 'HARD' })
      assert.are.equal('ACTIVE NONE', state(dir, 'e1'))
      -- a complaint, the recipient opting in again, then the complaint again
      post(srv.port, { MessageId = mid.e3, Type = 'COMPLAINT' })
      assert.are.equal('ACTIVE ALL', state(dir, 'e3'))
      put(dir, "{ Id = 'e3', ChannelType = 'EMAIL', Address = 'cy@example.com', OptOut = 'NONE' }")
      post(srv.port, { MessageId = mid.e3, Type = 'COMPLAINT' })
      assert.are.equal('ACTIVE NONE', state(dir, 'e3'))
      -- the first bounce and complaint of the old address, arriving after it was changed
      put(dir, "{ Id = 'e2', ChannelType = 'EMAIL', Address = 'bob2@example.com' }")
      post(srv.port, { MessageId = mid.e2, Type = 'BOUNCE', BounceType = 'HARD' })
      post(srv.port, { MessageId = mid.e2, Type = 'COMPLAINT' })
      assert.are.equal('ACTIVE NONE', state(dir, 'e2'))
    end)
    os.execute('kill ' .. srv.pid)
    assert(ok, e)
    -- each notification is recorded once, the old address's ones too
    assert.are.same({ { endpoint_id = 'e1', event_type = '_email.hardbounce', n = 1 },
                      { endpoint_id = 'e2', event_type = '_email.complaint', n = 1 },
                      { endpoint_id = 'e2', event_type = '_email.hardbounce', n = 1 },
                      { endpoint_id = 'e3', event_type = '_email.complaint', n = 1 } },
      query(dir, "SELECT endpoint_id, event_type, count(*) AS n FROM events WHERE event_type IN"
        .. " ('_email.hardbounce', '_email.complaint') GROUP BY 1, 2 ORDER BY 1, 2"))
  end)

  it('refuses a request with a key given twice, naming it, and stores nothing of it', function()
    local dir, mid = setup_campaign()
    local srv = start_serve(dir)
    local answers
    local ok, e = pcall(function()
      answers = http(srv.port, {
        { method = 'POST', path = '/v1/apps/default/events', body = '{"BatchItem": {'
          .. '"e2": {"Events": {"d1": {"EventType": "buy", "Timestamp": "2026-01-01T00:00:00Z"}}},'
          .. '"e2": {"Events": {"d2": {"EventType": "buy", "Timestamp": "2026-01-02T00:00:00Z"}}}}}' },
        { method = 'POST', path = '/v1/apps/default/webhooks/status',
          body = '{"MessageId": "' .. mid.e1 .. '", "Type": "DELIVERY", "Type": "COMPLAINT"}' },
      })
    end)
    os.execute('kill ' .. srv.pid)
    assert(ok, e)
    for i, key in ipairs({ 'e2', 'Type' }) do
      assert.are.equal(400, answers[i].status, answers[i].body)
      local b = json.decode(answers[i].body)
      assert.matches('duplicate object key near \'"' .. key .. '"\'', b.Message, 1, true)
      assert.matches('^[%x-]+$', b.RequestID)
    end
    assert.are.same({}, query(dir, "SELECT event_id FROM events WHERE event_type IN ('buy', '_email.delivered',"
      .. " '_email.complaint')"))
    assert.are.equal('ACTIVE NONE', state(dir, 'e1'))
  end)
end)
