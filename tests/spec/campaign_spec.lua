-- The campaign engine through the real binary: definitions (Lua and Pinpoint), schedules on a
-- manual clock, audience split, reasons, limits, lifecycle and explainability.
local h = require 'helpers'
local json = require 'herald.json'

local function run(dir, args)
  return h.herald('--db c.db run ' .. args, { cwd = dir })
end

local function q(dir, sql) return h.query(dir, 'c.db', sql) end

local function n(dir, sql)
  return q(dir, sql)[1].n
end

local function simple_endpoints(dir, count, extra)
  local rows = {}
  for i = 1, count do
    local r = { id = string.format('e%04d', i), address = string.format('u%04d@example.com', i), cohort = (i - 1) % 100 }
    if extra then extra(i, r) end
    rows[i] = r
  end
  h.endpoints_sql(dir, 'c.db', rows)
  return rows
end

-- The most messages any endpoint was sent within `hours` (claims after t - hours up to t, at
-- the time of each of its claims: a window holds the most when it ends at one).
local function most_within(dir, hours)
  return n(dir, string.format([[SELECT coalesce(max(k), 0) AS n FROM (SELECT (SELECT count(*) FROM outbox b
    WHERE b.endpoint_id = a.endpoint_id AND b.state = 'SENT' AND b.claimed_ms > a.claimed_ms - %d
    AND b.claimed_ms <= a.claimed_ms) AS k FROM outbox a WHERE a.state = 'SENT')]], hours * 3600000))
end

describe('campaign definitions', function()
  it('names the field path and the file:line of a bad definition', function()
    local dir = h.tmpdir()
    local cases = {
      { "message = { body = 'x' }, holdout = 120", 'holdout: a whole percentage 0%-100' },
      { "message = { email = { text = 'x' } }", 'message%.email%.subject: required' },
      -- an email's own headers: refused with the definition, not by every message at send time
      { "message = { email = { subject = 's', text = 'x', headers = { From = 'boss@example.com' } } }",
        'message%.email%.headers%.From: set by the message itself %(use its own field%)' },
      { "message = { email = { subject = 's', text = 'x', headers = { ['X Tag'] = 'v' } } }",
        "message%.email%.headers%.X Tag: invalid header name %(printable ASCII without spaces or ':'%)" },
      { "message = { email = { subject = 's', text = 'x', headers = { ['X-Tag'] = 'a\\r\\nBcc: all@example.com' } } }",
        'message%.email%.headers%.X%-Tag: value missing or has a line break' },
      { "message = { email = { subject = 's', text = 'x', headers = { 'X-Tag' } } }",
        'message%.email%.headers: expected a table { %[\'Name\'%] = \'value\' }, not a list' },
      { "message = { sms = { body = 'x', type = 'LOUD' } }", "message%.sms%.type: 'TRANSACTIONAL' or 'PROMOTIONAL'" },
      { "message = { body = '{{#if}}' }", 'message%.body' },
      { "message = { body = 'x' }, schedule = { start = '2026-13-01T00:00:00Z' }", 'schedule%.StartTime' },
      { "message = { body = 'x' }, schedule = { start = '2026-12-01T09:00:00', frequency = 'YEARLY' }", "schedule%.Frequency: 'YEARLY' is not a frequency" },
      { "message = { body = 'x' }, quiet_time = { start = '22:00', ['end'] = '07:00', policy = 'later' }", "quiet_time%.policy: 'defer'" },
      { "message = { body = 'x' }, limits = { daily = -1 }", 'limits%.daily: a whole number 0%-100' },
      { "message = { body = 'x' }, limits = { daily = 101 }", 'limits%.daily: a whole number 0%-100' },
      { "message = { body = 'x' }, limits = { total = 500 }", 'limits%.total: a whole number 0%-100' },
      { "message = { body = 'x' }, limits = { maximum_duration = 'soon' }", 'limits%.maximum_duration' },
      { "message = { body = 'x' }, hook = 3", 'hook: a function' },
      { "treatments = { { size = 60, message = { body = 'a' } }, { size = 30, message = { body = 'b' } } }", 'must add up to 100, not 90' },
      { "treatments = { { size = 50, message = { body = 'a' } }, { size = 50, message = { body = 'b' }, schedule = { start = 'x' } } }", 'treatments%[2%]%.schedule%.StartTime' },
      { "message = { body = 'x' }, colour = 'red'", 'campaign%.colour: unknown field' },
      -- every field of the Lua form is checked for its type when it is defined, not when it is
      -- first used (an event type that is a number would never match an event)
      { "message = { body = 'x' }, schedule = { event = { types = { 5 } } }",
        'schedule%.event%.types%[1%]: expected an event type %(a non%-empty string%), got a number' },
      { "message = { body = 'x' }, schedule = { event = { types = { 'cart', '' } } }",
        'schedule%.event%.types%[2%]: expected an event type %(a non%-empty string%), got an empty string' },
      { "message = { body = 'x' }, schedule = { event = { types = { 'cart' }, cancel_on = { 'buy', true } } }",
        'schedule%.event%.cancel_on%[2%]: expected an event type %(a non%-empty string%), got a boolean' },
      { "message = { body = 'x' }, schedule = { event = { types = { 'cart' }, cancel_on = { 'buy', also = 'refund' } } }",
        'schedule%.event%.cancel_on%.also: unknown field' },
      { "message = { body = 'x' }, schedule = { event = { types = { 'cart' }, attributes = { store = { 'web', 1 } } } }",
        'schedule%.event%.attributes%.store%[2%]: expected a string, got a number' },
      { "message = { body = 'x' }, schedule = { event = { types = { 'cart' }, filter_type = 'USER' } }",
        "schedule%.event%.filter_type: 'ENDPOINT' or 'SYSTEM'" },
      { "message = { body = 'x' }, schedule = { start = '2020-01-01T00:00:00Z', ['end'] = '2020-01-02T00:00:00Z', frequency = 'DAILY',"
        .. " event = { types = { 'cart' } } }",
        "schedule%.frequency: 'EVENT' %(or leave it out%) with an event trigger, not DAILY" },
      { "message = { body = 'x' }, treatment_name = 5", 'treatment_name: expected a string, got a number' },
      { "message = { body = 'x' }, description = {}", 'description: expected a string, got a table' },
      { "treatments = { { size = 50, name = {}, message = { body = 'a' } }, { size = 50, message = { body = 'b' } } }",
        'treatments%[1%]%.name: expected a string, got a table' },
      { "treatments = { { size = 50, message = { body = 'a' } }, { size = 50, description = 3, message = { body = 'b' } } }",
        'treatments%[2%]%.description: expected a string, got a number' },
      { "treatment_name = 'A', treatments = { { size = 100, message = { body = 'a' } } }",
        'treatment_name: with treatments, name the first one: treatments%[1%]%.name' },
      { "treatments = { { size = 100, message = { body = 'a' }, quiet_time = { start = '22:00', ['end'] = '07:00' } } }",
        "treatments%[1%]%.quiet_time: the first treatment follows the campaign's quiet_time" },
      { "treatments = { { size = 100, message = { body = 'a' } }, b = { size = 10, message = { body = 'b' } } }",
        'treatments%.b: unknown field' },
      { "message = { sms = { body = 'x', sender_id = 5 } }", 'message%.sms%.sender_id: expected a string, got a number' },
      { "message = { push = { body = 'x', silent = 'yes' } }", 'message%.push%.silent: expected true or false, got a string' },
      { "message = { body = 'x' }, deliver = { file = 'out.txt', provider = 'ses' }", 'deliver%.provider: unknown field' },
      -- the file channel writes only below the working directory: refused here, not at each send
      { "message = { body = 'x' }, deliver = { file = '/tmp/out.txt' }",
        "deliver%.file: '/tmp/out%.txt': the file must be relative and stay below the working directory" },
      { "message = { body = 'x' }, deliver = { file = 'logs/../../out.txt' }",
        "deliver%.file: 'logs/%.%./%.%./out%.txt': the file must be relative and stay below the working directory" },
      { "message = { body = 'x' }, stale_after = '0m'", "stale_after: a positive number of seconds" },
      { "message = { body = 'x' }, schedule = { event = { types = { 'cart' }, delay = '-1s' } } ",
        "schedule%.event%.delay: a number of seconds %(0 or more%)" },
    }
    for i, case in ipairs(cases) do
      local file = 'bad' .. i .. '.lua'
      h.write(dir .. '/' .. file, "local s = herald.segment{ name = 'all' }\n\nherald.campaign{ name = 'c" .. i .. "', segment = s, " .. case[1] .. " }\n")
      local _, code, err = run(dir, '--until-idle ' .. file)
      assert.are_not.equal(0, code)
      -- the message itself starts with the script's file:line (not only its traceback)
      assert.matches('herald run: ' .. file .. ':3: herald.campaign c' .. i .. ': ', err, 1, true)
      assert.matches(case[2], err)
    end
    -- an event campaign's delay of 0 is no delay (the message goes at once), not an error
    h.write(dir .. '/nodelay.lua', "herald.campaign{ name = 'nd', segment = herald.segment{ name = 'all' },"
      .. " message = { body = 'x' }, schedule = { event = { types = { 'cart' }, delay = '0s' } } }")
    local _, c0, e0 = h.herald('--db d.db campaign load nodelay.lua', { cwd = dir })
    assert.are.equal(0, c0, e0)
    local shown = h.herald('--db d.db -e ' .. h.shell_quote("print(herald.json.decode(herald.db.query("
      .. "\"SELECT definition FROM campaigns WHERE id = 'nd'\")[1].definition).Herald.TriggerDelaySeconds)"), { cwd = dir })
    assert.are.equal('0', shown:match('%S+'))
    -- a name is the campaign's id, which delivery keeps in 255 bytes
    h.write(dir .. '/long.lua', "herald.campaign{ name = string.rep('n', 256), segment = herald.segment{ name = 'all' }, message = { body = 'x' } }")
    local _, code, err = run(dir, '--until-idle long.lua')
    assert.are_not.equal(0, code)
    assert.matches('name: required: up to 255 letters', err, 1, true)
  end)

  it('refuses a campaign id or name with a NUL inside, naming it, rather than cut to reach another campaign', function()
    local s = require 'store_helpers'
    local v, code, err = s.run(s.db(), [[
      local outbox = require 'herald.core.outbox'
      local function stored()
        return must(herald.db.query('SELECT id, name, version, state, definition, error FROM campaigns ORDER BY id'))
      end
      outbox.define_campaign('vip', 'vip', '{"Name":"vip"}')
      local before = stored()
      local function raised(f, ...) local ok, e = pcall(f, ...) return ok and 'accepted' or e end
      local function answered(f, ...) local ok, e = f(...) return ok == nil and e or 'accepted' end
      local r = {
        define = raised(outbox.define_campaign, 'vip\0-x', 'vip\0-x', '{"Name":"other"}'),
        name = raised(outbox.define_campaign, 'vip2', 'vip\0-x', '{"Name":"vip2"}'),
        state = raised(outbox.set_campaign_state, 'vip\0-x', 'PAUSED'),
        invalidate = raised(herald.campaign.invalidate, 'vip\0-x', 'broken'),
        definition = answered(outbox.campaign_definition, 'vip\0-x', 1),
        copy = answered(outbox.copy_campaign, 'vip\0-x', 'copy', '{"Name":"copy"}'),
      }
      emit { r = r, before = before, after = stored() }]])
    assert.are.equal(0, code, err)
    local nul = 'contains a NUL character (\\u0000)'
    assert.matches("bad argument #1 to 'herald.core.outbox.define_campaign' (id: " .. nul .. ')', v.r.define, 1, true)
    assert.matches("bad argument #2 to 'herald.core.outbox.define_campaign' (name: " .. nul .. ')', v.r.name, 1, true)
    assert.matches("bad argument #1 to 'herald.core.outbox.set_campaign_state' (id: " .. nul .. ')', v.r.state, 1, true)
    assert.matches("bad argument #1 to 'invalidate_campaigns' (id: " .. nul .. ')', v.r.invalidate, 1, true)
    assert.are.same({ definition = 'id: ' .. nul, copy = 'id: ' .. nul },
                    { definition = v.r.definition, copy = v.r.copy })
    -- vip is as it was, and nothing else was made
    assert.are.same(v.before, v.after)
    assert.are.equal(1, #v.after)
  end)

  it('names the field path of a bad field of a Pinpoint definition', function()
    local dir = h.tmpdir()
    local function doc(edit)
      local d = {
        Name = 'pp', SegmentId = 'all', Description = 'ok', TreatmentName = 'A',
        MessageConfiguration = { SMSMessage = { Body = 'x' } },
        Schedule = { StartTime = 'IMMEDIATE', Frequency = 'EVENT',
          EventFilter = { FilterType = 'ENDPOINT', Dimensions = { EventType = { DimensionType = 'INCLUSIVE', Values = { 'cart' } } } } },
        AdditionalTreatments = { { SizePercent = 50, TreatmentName = 'B', MessageConfiguration = { SMSMessage = { Body = 'y' } } } },
        Herald = { DefaultSizePercent = 50 },
      }
      edit(d)
      return json.encode(d)
    end
    local cases = {
      { function() end, nil },
      { function(d) d.Description = { 'x' } end, 'Description: expected a string, got a table' },
      { function(d) d.TreatmentName = 5 end, 'TreatmentName: expected a string, got a number' },
      { function(d) d.AdditionalTreatments[1].TreatmentName = true end,
        'AdditionalTreatments%[0%]%.TreatmentName: expected a string, got a boolean' },
      { function(d) d.Schedule.EventFilter.Dimensions.EventType.Values = { 5 } end,
        'Schedule%.EventFilter%.Dimensions%.EventType%.Values%[0%]: expected an event type' },
      { function(d) d.Schedule.EventFilter.Dimensions.EventType.DimensionType = 'INCLUDE' end,
        "Schedule%.EventFilter%.Dimensions%.EventType%.DimensionType: 'INCLUSIVE' or 'EXCLUSIVE'" },
      { function(d) d.Schedule.EventFilter.Dimensions.Metrics = { total = 5 } end,
        'Schedule%.EventFilter%.Dimensions%.Metrics%.total: expected an object' },
      { function(d) d.Schedule.EventFilter.Dimensions.Attributes = { store = { Values = { 'web', 2 } } } end,
        'Schedule%.EventFilter%.Dimensions%.Attributes%.store%.Values%[1%]: expected a string, got a number' },
      { function(d) d.Herald.CancelOnEventTypes = { 3 } end, 'Herald%.CancelOnEventTypes%[0%]: expected an event type' },
      { function(d) d.Herald.StaleAfterSeconds = 'soon' end, 'Herald%.StaleAfterSeconds: a whole number >= 1' },
      { function(d) d.Limits = { Daily = 5, Total = 101 } end, 'Limits%.Total: a whole number 0%-100' },
      { function(d) d.Herald.TriggerDelaySeconds = 1.5 end, 'Herald%.TriggerDelaySeconds: a whole number >= 0' },
      { function(d) d.MessageConfiguration.SMSMessage.SenderId = 5 end,
        'MessageConfiguration%.SMSMessage%.SenderId: expected a string, got a number' },
      { function(d) d.MessageConfiguration.SMSMessage.EntityId = 1201159100000000001 end,
        'MessageConfiguration%.SMSMessage%.EntityId: expected a string, got a number' },
      { function(d) d.MessageConfiguration.SMSMessage.MessageType = 'LOUD' end,
        "MessageConfiguration%.SMSMessage%.MessageType: 'TRANSACTIONAL' or 'PROMOTIONAL'" },
      { function(d) d.MessageConfiguration.APNSMessage = { Body = 'x', Sound = true } end,
        'MessageConfiguration%.APNSMessage%.Sound: expected a string, got a boolean' },
      { function(d) d.MessageConfiguration.APNSMessage = { Body = 'x', Badge = '3' } end,
        'MessageConfiguration%.APNSMessage%.Badge: expected a whole number, got a string' },
      { function(d) d.MessageConfiguration.GCMMessage = { Body = 'x', Priority = 'urgent' } end,
        "MessageConfiguration%.GCMMessage%.Priority: 'normal' or 'high'" },
      { function(d) d.MessageConfiguration.GCMMessage = { Body = 'x', Action = 'OPEN' } end,
        "MessageConfiguration%.GCMMessage%.Action: 'OPEN_APP', 'DEEP_LINK' or 'URL'" },
      { function(d) d.MessageConfiguration.EmailMessage = { Body = 'x', Headers = { { Name = 'X-A', Value = '1' },
          { Name = 'Received', Value = 'from nowhere' } } } end,
        'MessageConfiguration%.EmailMessage%.Headers%[1%]%.Name: a trace field, written by each server' },
      { function(d) d.MessageConfiguration.EmailMessage = { Body = 'x', Headers = { { Name = 'X-A', Value = '1' },
          { Name = 'x-a', Value = '2' } } } end,
        "MessageConfiguration%.EmailMessage%.Headers%[1%]%.Name: 'x%-a' is given twice" },
      { function(d) d.MessageConfiguration.EmailMessage = { Body = 'x', Headers = {
          { Name = 'List-Unsubscribe', Value = '<https://shop.example/u?e=1>' }, { Name = 'List-Unsubscribe-Post', Value = 'yes' } } } end,
        'MessageConfiguration%.EmailMessage%.Headers%[1%]%.Value: must be List%-Unsubscribe=One%-Click %(RFC 8058%)' },
      { function(d) d.MessageConfiguration.EmailMessage = { Body = 'x', Headers = { { Name = 'X-A' } } } end,
        'MessageConfiguration%.EmailMessage%.Headers%[0%]: expected { Name = string, Value = string }' },
      -- Pinpoint's limits on a MessageHeader: 126 characters of name, 870 of value
      { function(d) d.MessageConfiguration.EmailMessage = { Body = 'x', Headers = {
          { Name = 'X-' .. string.rep('n', 125), Value = '1' } } } end,
        'MessageConfiguration%.EmailMessage%.Headers%[0%]%.Name: at most 126 characters' },
      { function(d) d.MessageConfiguration.EmailMessage = { Body = 'x', Headers = {
          { Name = 'X-A', Value = string.rep('é', 871) } } } end,
        'MessageConfiguration%.EmailMessage%.Headers%[0%]%.Value: at most 870 characters, rendered attributes included' },
      -- characters, not bytes: 870 of two bytes each are within it
      { function(d) d.MessageConfiguration.EmailMessage = { Body = 'x', Headers = {
          { Name = 'X-A', Value = string.rep('é', 870) } } } end },
      -- a value is a template, rendered for each recipient: one that cannot compile is refused
      { function(d) d.MessageConfiguration.EmailMessage = { Body = 'x', Headers = {
          { Name = 'X-A', Value = '1' }, { Name = 'X-Plan', Value = '{{#if Attributes.plan}}gold' } } } end,
        'MessageConfiguration%.EmailMessage%.Headers%[1%]%.Value: .*if' },
      { function(d)
          local list = {}
          for i = 1, 16 do list[i] = { Name = 'X-H' .. i, Value = 'v' } end
          d.MessageConfiguration.EmailMessage = { Body = 'x', Headers = list }
        end, 'MessageConfiguration%.EmailMessage%.Headers: at most 15 headers, got 16' },
      { function(d) d.Herald.Deliver = { type = 'file', path = '/var/out.txt' } end,
        "Herald%.Deliver%.path: '/var/out%.txt': the file must be relative and stay below the working directory" },
    }
    for i, case in ipairs(cases) do
      local file = 'p' .. i .. '.lua'
      h.write(dir .. '/' .. file, "local s = herald.segment{ name = 'all' }\nlocal doc = [==[" .. doc(case[1])
        .. "]==]\nherald.campaign.from_pinpoint(doc, { segment = s })\n")
      local _, code, err = run(dir, '--until-idle ' .. file)
      if case[2] == nil then
        -- the document the others spoil is a good one
        assert.are.equal(0, code, err)
      else
        assert.are_not.equal(0, code)
        assert.matches('herald run: ' .. file .. ':3: herald.campaign pp: ', err, 1, true)
        assert.matches(case[2], err)
      end
    end
  end)

  it('takes per-channel messages, templates, limits and ten treatments, stored in Pinpoint shape', function()
    local dir = h.tmpdir()
    h.write(dir .. '/def.lua', [[
      -- the templates a campaign names must exist
      assert(herald.template.create{ name = 'welcome', type = 'EMAIL', Subject = 'Welcome', TextPart = 'hi' })
      assert(herald.template.create{ name = 'welcome-sms', type = 'SMS', Body = 'v1' })
      assert(herald.template.update('welcome-sms', 'SMS', { Body = 'v2' }, { create_new_version = true }))
      local s = herald.segment{ name = 'all' }
      local t = {}
      for i = 1, 10 do
        t[i] = { name = 'T' .. i, size = 9, message = {
          email = { subject = 'S' .. i, text = 'hi {{Address}}', html = '<p>hi</p>', from = 'news@example.com' },
          sms = { body = 'sms ' .. i, type = 'PROMOTIONAL' },
          push = { title = 'P', body = 'push ' .. i, action = 'OPEN_APP' },
          custom = { data = '{"n":]] .. "' .. i .. '" .. [[}' } } }
      end
      t[3].message = nil
      t[3].template = { email = 'welcome', sms = { name = 'welcome-sms', version = 2 } }
      t[4].schedule = { start = '2027-01-02T10:00:00Z' }
      herald.campaign{ name = 'many', segment = s, holdout = 10, treatments = t,
        schedule = { start = '2027-01-01T09:00:00', timezone = 'Europe/Paris', frequency = 'WEEKLY',
                     ['end'] = '2027-03-01T00:00:00Z', is_local_time = true },
        quiet_time = { start = '22:00', ['end'] = '08:00' },
        limits = { daily = 2, total = 5, messages_per_second = 50, maximum_duration = '2h' } }
    ]])
    local _, code, err = run(dir, '--clock-start 2026-12-01T00:00:00Z --until 2026-12-02T00:00:00Z def.lua')
    assert.are.equal(0, code, err)
    local d = json.decode(q(dir, "SELECT definition FROM campaign_versions WHERE campaign_id = 'many'")[1].definition)
    assert.are.equal(10, d.HoldoutPercent)
    assert.are.equal('T1', d.TreatmentName)
    assert.are.equal(9, #d.AdditionalTreatments)
    assert.are.equal('S1', d.MessageConfiguration.EmailMessage.Title)
    assert.are.equal('news@example.com', d.MessageConfiguration.EmailMessage.FromAddress)
    assert.are.equal('PROMOTIONAL', d.MessageConfiguration.SMSMessage.MessageType)
    assert.are.equal('push 1', d.MessageConfiguration.GCMMessage.Body)
    assert.are.equal('push 1', d.MessageConfiguration.APNSMessage.Body)
    assert.are.equal('{"n":1}', d.MessageConfiguration.CustomMessage.Data)
    assert.are.equal('welcome', d.AdditionalTreatments[2].TemplateConfiguration.EmailTemplate.Name)
    assert.are.equal('2', d.AdditionalTreatments[2].TemplateConfiguration.SMSTemplate.Version)
    assert.are.equal('2027-01-02T10:00:00Z', d.AdditionalTreatments[3].Schedule.StartTime)
    assert.are.equal('WEEKLY', d.Schedule.Frequency)
    assert.is_true(d.Schedule.IsLocalTime)
    assert.are.same({ Start = '22:00', End = '08:00' }, d.Schedule.QuietTime)
    assert.are.same({ Daily = 2, Total = 5, MessagesPerSecond = 50, MaximumDuration = 7200 }, d.Limits)
    assert.are.equal('defer', d.Herald.QuietTimePolicy)
    assert.are.equal(9, d.Herald.DefaultSizePercent)
    assert.are.equal('SCHEDULED', q(dir, "SELECT state FROM campaigns WHERE id = 'many'")[1].state)
  end)

  it('loads a Pinpoint WriteCampaignRequest as is and runs it', function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 100)
    h.write(dir .. '/req.json', json.encode({
      Name = 'pp', SegmentId = 'seg-1', HoldoutPercent = 20, TreatmentName = 'control',
      MessageConfiguration = { EmailMessage = { Title = 'Hello', Body = 'Body for {{Address}}' } },
      AdditionalTreatments = { { TreatmentName = 'variant', SizePercent = 40,
        MessageConfiguration = { EmailMessage = { Title = 'Hi!', Body = 'Variant' } } } },
      Schedule = { StartTime = '2026-12-01T10:00:00Z', Frequency = 'ONCE', Timezone = 'UTC' },
      Limits = { Daily = 3 },
    }))
    h.write(dir .. '/pp.lua', [[
      local c = herald.campaign.from_pinpoint(HERALD_JSON, { segments = { ['seg-1'] = herald.segment{ name = 'all' } } })
    ]])
    local src = h.read(dir .. '/pp.lua'):gsub('HERALD_JSON', '[==[' .. h.read(dir .. '/req.json') .. ']==]')
    h.write(dir .. '/pp.lua', src)
    h.write(dir .. '/pp.lua', h.read(dir .. '/pp.lua') .. "\n")
    local _, code, err = run(dir, '--until-idle --clock-start 2026-12-01T09:59:00Z pp.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(20, n(dir, "SELECT count(*) AS n FROM outbox WHERE reason = 'HOLDOUT'"))
    assert.are.equal(40, n(dir, "SELECT count(*) AS n FROM outbox WHERE treatment = 0 AND state = 'SENT'"))
    assert.are.equal(40, n(dir, "SELECT count(*) AS n FROM outbox WHERE treatment = 1 AND state = 'SENT'"))
    assert.are.equal(0, n(dir, "SELECT count(*) AS n FROM outbox o JOIN endpoints e ON e.id = o.endpoint_id"
      .. " WHERE NOT ((o.treatment = -1 AND e.cohort_id < 20) OR (o.treatment = 0 AND e.cohort_id BETWEEN 20 AND 59)"
      .. " OR (o.treatment = 1 AND e.cohort_id >= 60))"))
    -- sent at the scheduled time, not before (the clock started a minute early)
    assert.are.equal(0, n(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT' AND claimed_ms < 1796119200000"))
    -- a Pinpoint document without its segment is refused, naming the field
    h.write(dir .. '/bad.lua', "herald.campaign.from_pinpoint('{\"Name\":\"x\",\"SegmentId\":\"nope\",\"Schedule\":{\"StartTime\":\"IMMEDIATE\"}}')\n")
    local _, code2, err2 = run(dir, '--until-idle bad.lua')
    assert.are_not.equal(0, code2)
    assert.matches('bad.lua:1:', err2, 1, true)
    assert.matches("SegmentId: segment 'nope'", err2, 1, true)
  end)
end)

describe('campaign runs', function()
  it("selects the audience with the segment's compiled SQL condition and named parameters", function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 100)
    h.write(dir .. '/w.lua', [[
      local s = herald.segment{ name = 'low' }
      -- the segment contract: compile() -> { where, params, filter }
      function s:compile()
        return { where = "e.cohort_id < :max AND e.address LIKE :pattern", params = { max = 50, pattern = 'u%' },
                 filter = function(ep) return tonumber(ep.CohortId) % 2 == 0 end }
      end
      herald.campaign{ name = 'low', segment = s, message = { body = 'x' }, deliver = { file = 'out.txt' } }
      local bad = herald.segment{ name = 'bad' }
      function bad:compile() return { where = 'e.cohort_id < :max', params = { max = 1, other = 2 } } end
      herald.campaign{ name = 'bad', segment = bad, message = { body = 'x' }, deliver = { file = 'out.txt' } }
    ]])
    local _, code, err = run(dir, '--until-idle w.lua')
    assert.are_not.equal(0, code)
    assert.matches('segment parameter :other is not used', err, 1, true)
    assert.are.equal(25, n(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'"))
    assert.are.equal(0, n(dir, 'SELECT count(*) AS n FROM outbox o JOIN endpoints e ON e.id = o.endpoint_id'
      .. ' WHERE e.cohort_id >= 50 OR e.cohort_id % 2 = 1'))
    assert.are.equal('INVALID', q(dir, "SELECT state FROM campaigns WHERE id = 'bad'")[1].state)
    assert.are.equal(0, n(dir, "SELECT count(*) AS n FROM campaign_runs WHERE campaign_id = 'bad'"))
  end)

  it("runs a segment filter on the view count(), ids() and contains() give it: ep:events, absent Demographic", function()
    local dir = h.tmpdir()
    h.write(dir .. '/f.lua', [[
      if herald.endpoints.count() == 0 then
        for i, p in ipairs { 'ios', 'ios', 'android', false } do
          assert(herald.endpoints.put{ Id = 'e' .. i, ChannelType = 'EMAIL', Address = 'u' .. i .. '@example.com',
            Demographic = p and { Platform = p } or nil })
        end
        assert(herald.events.put('e2', { EventType = 'buy', Timestamp = '2026-11-01T00:00:00Z' }))
        assert(herald.events.put('e3', { EventType = 'buy', Timestamp = '2026-11-01T00:00:00Z' }))
      end
      local function bought(ep)
        for _, ev in ipairs(ep:events{ limit = 5 }) do
          if ev.EventType == 'buy' then return true end
        end
        return false
      end
      local buyers = herald.segment{ name = 'buyers', filter = bought }
      local ios = herald.segment{ name = 'ios', filter = function(ep)
        return ep.Demographic.Platform == 'ios' and ep.Location.Country == nil and ep.User.UserId == nil end }
      print('buyers', buyers:count(), table.concat(buyers:ids(), ','), tostring(buyers:contains('e2')))
      print('ios', ios:count(), table.concat(ios:ids(), ','), tostring(ios:contains('e1')))
      herald.campaign{ name = 'buyers', segment = buyers, message = { body = 'x' }, deliver = { file = 'out.txt' } }
      -- with a hook, the filter and the hook read the same endpoint
      herald.campaign{ name = 'ios', segment = ios, message = { body = 'x' }, deliver = { file = 'out.txt' },
        hook = function(eps) return eps end }
    ]])
    local out, code, err = run(dir, '--until-idle f.lua')
    assert.are.equal(0, code, err)
    assert.matches('buyers\t2\te2,e3\ttrue', out)
    assert.matches('ios\t2\te1,e2\ttrue', out)
    local sent = {}
    for _, r in ipairs(q(dir, "SELECT c, group_concat(endpoint_id) AS ids FROM (SELECT r.campaign_id AS c, o.endpoint_id FROM outbox o"
      .. " JOIN campaign_runs r ON r.id = o.run_id WHERE o.state = 'SENT' ORDER BY o.endpoint_id) GROUP BY c")) do
      sent[r.c] = r.ids
    end
    assert.are.same({ buyers = 'e2,e3', ios = 'e1,e2' }, sent)
    assert.are.equal(0, n(dir, "SELECT count(*) AS n FROM campaigns WHERE state = 'INVALID'"))
  end)

  it('records why each endpoint is not sent to, and herald why explains it', function()
    local dir = h.tmpdir()
    h.endpoints_sql(dir, 'c.db', {
      { id = 'ok', address = 'ok@example.com', cohort = 50 },
      { id = 'held', address = 'held@example.com', cohort = 3 },
      { id = 'out', address = 'out@example.com', cohort = 50, opt_out = 'ALL' },
      { id = 'inactive', address = 'in@example.com', cohort = 50, status = 'INACTIVE' },
      { id = 'noaddr', cohort = 50 },
      { id = 'dup1', address = 'same@example.com', cohort = 60 },
      { id = 'dup2', address = 'same@example.com', cohort = 61 },
      { id = 'hooked', address = 'hook@example.com', cohort = 70 },
    })
    h.write(dir .. '/c.lua', [[
      herald.campaign{ name = 'why', segment = herald.segment{ name = 'all' }, holdout = 10,
        message = { subject = 'S', body = 'B' }, deliver = { file = 'out.txt' },
        hook = function(eps)
          local keep = {}
          for _, ep in ipairs(eps) do
            if ep.Id ~= 'hooked' then ep.TitleOverride = 'T-' .. ep.Id; keep[#keep + 1] = ep end
          end
          return keep
        end }
    ]])
    local _, code, err = run(dir, '--until-idle c.lua')
    assert.are.equal(0, code, err)
    local got = {}
    for _, r in ipairs(q(dir, 'SELECT endpoint_id, state, reason, title_override FROM outbox')) do
      got[r.endpoint_id] = r
    end
    assert.are.equal('SENT', got.ok.state)
    assert.are.equal('T-ok', got.ok.title_override)
    assert.are.equal('HOLDOUT', got.held.reason)
    assert.are.equal('OPT_OUT', got.out.reason)
    assert.are.equal('INACTIVE', got.inactive.reason)
    assert.are.equal('MISSING_ADDRESS', got.noaddr.reason)
    assert.are.equal('SENT', got.dup1.state)
    assert.are.equal('DUPLICATE_ADDRESS', got.dup2.reason)
    assert.are.equal('FILTERED_BY_HOOK', got.hooked.reason)
    local out, code2 = h.herald('--db c.db why why dup2', { cwd = dir })
    assert.are.equal(0, code2)
    assert.matches('SKIPPED: DUPLICATE_ADDRESS', out, 1, true)
    -- an endpoint stored after the run was not targeted by it; an id nobody has is an error
    local _, pc, perr = h.herald([[--db c.db -e "assert(herald.endpoints.put{Id='late', ChannelType='EMAIL', Address='late@example.com'})"]], { cwd = dir })
    assert.are.equal(0, pc, perr)
    out = h.herald('--db c.db why why late', { cwd = dir })
    assert.matches('NOT_TARGETED', out, 1, true)
    local _, nc, nerr = h.herald('--db c.db why why nobody', { cwd = dir })
    assert.are.equal(1, nc)
    assert.matches("herald why: no endpoint 'nobody' in the application", nerr, 1, true)
    local acts = json.decode((h.herald('--db c.db campaign activities why', { cwd = dir })))
    local metrics = {}
    for _, a in ipairs(acts) do
      for k, v in pairs(a.ExecutionMetrics) do metrics[k] = (metrics[k] or 0) + v end
      assert.are.equal('COMPLETED', a.State)
    end
    assert.are.same({ SENT = 2, HOLDOUT = 1, OPT_OUT = 1, INACTIVE = 1, MISSING_ADDRESS = 1,
                      DUPLICATE_ADDRESS = 1, FILTERED_BY_HOOK = 1 }, metrics)
    assert.are.equal('COMPLETED', q(dir, "SELECT state FROM campaigns WHERE id = 'why'")[1].state)
  end)

  it('runs a weekly local-time campaign for three months with quiet time, each endpoint at its own 09:00', function()
    local dir = h.tmpdir()
    local zones = { 'Europe/Paris', 'America/New_York', 'Australia/Sydney', 'Asia/Kolkata', 'UTC+05:30', 'Mars/Olympus' }
    simple_endpoints(dir, 14, function(i, r) r.tz = zones[i % (#zones + 1) + 1] end)
    h.write(dir .. '/w.lua', [[
      herald.campaign{ name = 'weekly', segment = herald.segment{ name = 'all' },
        schedule = { start = '2027-01-04T09:00:00', ['end'] = '2027-04-01T00:00:00', frequency = 'WEEKLY',
                     timezone = 'Europe/London', is_local_time = true },
        quiet_time = { start = '08:30', ['end'] = '09:15' },
        message = { body = 'weekly' }, deliver = { file = 'out.txt' } }
    ]])
    local _, code, err = run(dir, '--until-idle --clock-start 2027-01-01T00:00:00Z w.lua')
    assert.are.equal(0, code, err)
    local runs = q(dir, "SELECT count(*) AS n, min(state) AS lo, max(state) AS hi FROM campaign_runs")[1]
    assert.are.equal(13, runs.n)  -- Mondays from 4 January to 29 March
    assert.are.equal('COMPLETED', runs.lo)
    assert.are.equal('COMPLETED', runs.hi)
    assert.are.equal(13 * 14, n(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'"))
    -- every due time is 09:15 local (quiet time deferred 09:00) on a Monday, in the endpoint's
    -- zone or, for a missing or unknown one, in the campaign's, recorded per endpoint
    local rows = q(dir, [[SELECT o.due_ms, o.zone, o.note, e.timezone, o.claimed_ms FROM outbox o
      JOIN endpoints e ON e.id = o.endpoint_id]])
    local ref = require 'tzref'
    local lines = {}
    for _, r in ipairs(rows) do
      local z = r.zone
      if z == 'UTC+05:30' then z = 'Asia/Kolkata' end
      lines[#lines + 1] = string.format('print(wall(%d, %q))', r.due_ms, z)
      if r.timezone == nil then assert.are.equal('MISSING_TIMEZONE', r.note) end
      if r.timezone == 'Mars/Olympus' then
        assert.are.equal('INVALID_TIMEZONE', r.note)
        assert.are.equal('Europe/London', r.zone)
      end
      assert.is_true(r.claimed_ms >= r.due_ms)
    end
    for _, line in ipairs(ref.python(table.concat(lines, '\n'))) do
      assert.matches('T09:15:00 ', line, 1, true)
    end
    local mondays = ref.python(table.concat((function()
      local t = {}
      for _, r in ipairs(rows) do
        local z = r.zone == 'UTC+05:30' and 'Asia/Kolkata' or r.zone
        t[#t + 1] = string.format("print(datetime.fromtimestamp(%d / 1000, ZoneInfo(%q)).weekday())", r.due_ms, z)
      end
      return t
    end)(), '\n'))
    for _, d in ipairs(mondays) do assert.are.equal('0', d) end
  end)

  it('skips under the skip policy and sends a stale run only within its bound', function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 10, function(_, r) r.tz = 'Europe/Paris' end)
    h.write(dir .. '/s.lua', [[
      local all = herald.segment{ name = 'all' }
      herald.campaign{ name = 'quiet-skip', segment = all, message = { body = 'x' },
        schedule = { start = '2027-01-05T07:30:00', timezone = 'Europe/Paris' },
        quiet_time = { start = '07:00', ['end'] = '09:00', policy = 'skip' }, deliver = { file = 'out.txt' } }
      herald.campaign{ name = 'late-ok', segment = all, message = { body = 'x' },
        schedule = { start = '2027-01-05T06:30:00Z' }, deliver = { file = 'out.txt' } }
      herald.campaign{ name = 'too-late', segment = all, message = { body = 'x' },
        schedule = { start = '2027-01-05T05:00:00Z' }, stale_after = '30m', deliver = { file = 'out.txt' } }
    ]])
    local _, code, err = run(dir, '--until-idle --clock-start 2027-01-05T07:00:00Z s.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(10, n(dir, "SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id WHERE r.campaign_id = 'quiet-skip' AND o.reason = 'QUIET_TIME'"))
    assert.are.equal(10, n(dir, "SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id WHERE r.campaign_id = 'late-ok' AND o.state = 'SENT'"))
    local r = q(dir, "SELECT state, reason, total FROM campaign_runs WHERE campaign_id = 'too-late'")[1]
    assert.are.same({ state = 'SKIPPED', reason = 'STALE', total = 0 }, r)
    local out = h.herald('--db c.db why too-late e0001', { cwd = dir })
    assert.matches('the whole run was skipped: STALE', out, 1, true)
  end)

  it('measures a run held by quiet time against the end of quiet time, not its own time, for staleness', function()
    local dir = h.tmpdir()
    -- 07:00 UTC is in London's quiet time (deferred to 09:00) and 16:00 in Tokyo (not quiet)
    simple_endpoints(dir, 2, function(i, r) r.tz = i == 1 and 'Europe/London' or 'Asia/Tokyo' end)
    h.write(dir .. '/q.lua', [[
      herald.campaign{ name = 'morning', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        schedule = { start = '2027-01-01T07:00:00Z', frequency = 'DAILY', ['end'] = '2027-01-03T08:00:00Z' },
        quiet_time = { start = '21:00', ['end'] = '09:00', policy = 'defer' }, message = { body = 'x' } }
    ]])
    -- day 1 throughout; day 2 from 08:30, before London's quiet time ends; day 3 from 10:30,
    -- 90 minutes after it ended
    for _, span in ipairs({ { '2027-01-01T06:00:00Z', '2027-01-01T12:00:00Z' }, { '2027-01-02T08:30:00Z', '2027-01-02T12:00:00Z' },
                            { '2027-01-03T10:30:00Z', '2027-01-03T12:00:00Z' } }) do
      local _, code, err = run(dir, '--clock-start ' .. span[1] .. ' --until ' .. span[2] .. ' q.lua')
      assert.are.equal(0, code, err)
    end
    assert.are.same({
      { at = 1798786800000, state = 'COMPLETED' }, { at = 1798873200000, state = 'COMPLETED' },
      { at = 1798959600000, state = 'SKIPPED', reason = 'STALE' },
    }, q(dir, 'SELECT scheduled_ms AS at, state, reason FROM campaign_runs ORDER BY scheduled_ms'))
    -- London at 09:00 both days; Tokyo on day 2 was due at 07:00, 90 minutes before the restart
    assert.are.same({
      { at = 1798786800000, id = 'e0001', state = 'SENT', due = 1798794000000, on_time = 1 },
      { at = 1798786800000, id = 'e0002', state = 'SENT', due = 1798786800000, on_time = 1 },
      { at = 1798873200000, id = 'e0001', state = 'SENT', due = 1798880400000, on_time = 1 },
      { at = 1798873200000, id = 'e0002', state = 'SKIPPED', reason = 'STALE', due = 1798873200000 },
    }, q(dir, 'SELECT r.scheduled_ms AS at, o.endpoint_id AS id, o.state, o.reason, o.due_ms AS due,'
      .. ' o.claimed_ms - o.due_ms BETWEEN 0 AND 999 AS on_time'
      .. ' FROM outbox o JOIN campaign_runs r ON r.id = o.run_id ORDER BY 1, 2'))
  end)

  it('caps strictly: ten campaigns at the same instant with Daily = 5 send exactly 5 to each endpoint', function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 30)
    local src = { "local all = herald.segment{ name = 'all' }" }
    for i = 1, 10 do
      src[#src + 1] = string.format("herald.campaign{ name = 'cap%d', segment = all, message = { body = 'x' },"
        .. " schedule = { start = '2027-02-01T10:00:00Z' }, limits = { daily = 5 }, deliver = { file = 'out.txt' } }", i)
    end
    h.write(dir .. '/caps.lua', table.concat(src, '\n'))
    local _, code, err = run(dir, '--until-idle --clock-start 2027-02-01T09:00:00Z caps.lua')
    assert.are.equal(0, code, err)
    for _, r in ipairs(q(dir, [[SELECT endpoint_id, sum(state = 'SENT') AS sent, sum(reason = 'DAILY_CAP') AS capped
        FROM outbox GROUP BY endpoint_id]])) do
      assert.are.equal(5, r.sent)
      assert.are.equal(5, r.capped)
    end
    assert.are.equal(150, h.count(h.read(dir .. '/out.txt'), '--- message '))
    -- The window is 23 hours: the next day a campaign at 08:59 still finds the day's five,
    -- one at 09:00:01 finds them gone
    h.write(dir .. '/caps2.lua', [[
      local all = herald.segment{ name = 'all' }
      herald.campaign{ name = 'early', segment = all, message = { body = 'x' },
        schedule = { start = '2027-02-02T08:59:00Z' }, limits = { daily = 5 }, deliver = { file = 'out.txt' } }
      herald.campaign{ name = 'later', segment = all, message = { body = 'x' },
        schedule = { start = '2027-02-02T09:00:01Z' }, limits = { daily = 5 }, deliver = { file = 'out.txt' } }
    ]])
    _, code, err = run(dir, '--until-idle --clock-start 2027-02-02T08:58:00Z caps2.lua')
    assert.are.equal(0, code, err)
    assert.are.same({ { id = 'early', state = 'SKIPPED', reason = 'DAILY_CAP', n = 30 },
                      { id = 'later', state = 'SENT', n = 30 } },
      q(dir, "SELECT r.campaign_id AS id, o.state, o.reason, count(*) AS n"
        .. " FROM outbox o JOIN campaign_runs r ON r.id = o.run_id WHERE r.campaign_id IN ('early', 'later')"
        .. " GROUP BY 1, 2, 3 ORDER BY 1"))
    assert.are.equal(5, most_within(dir, 23))
  end)

  it("reaches a daily local-time campaign's audience at 09:00 on the day the clocks go forward, Daily = 1", function()
    -- 09:00 in New York is 14:00 UTC until 14 March, then 13:00: that day's message is due 23
    -- hours after the last one, and every later day's at 09:00 still
    local dir = h.tmpdir()
    simple_endpoints(dir, 3, function(_, r) r.tz = 'America/New_York' end)
    h.write(dir .. '/d.lua', [[
      herald.campaign{ name = 'daily', segment = herald.segment{ name = 'all' }, message = { body = 'x' },
        schedule = { start = '2027-03-12T09:00:00', frequency = 'DAILY', is_local_time = true,
          timezone = 'America/New_York', ['end'] = '2027-03-16T10:00:00' },
        limits = { daily = 1 }, deliver = { file = 'out.txt' } }
    ]])
    local _, code, err = run(dir, '--until-idle --clock-start 2027-03-12T00:00:00Z d.lua')
    assert.are.equal(0, code, err)
    local hour = 3600000
    assert.are.same({
      { day = '2027-03-12', state = 'SENT', n = 3, at = 1804860000000 },             -- 14:00 UTC
      { day = '2027-03-13', state = 'SENT', n = 3, at = 1804860000000 + 24 * hour },
      { day = '2027-03-14', state = 'SENT', n = 3, at = 1804860000000 + 47 * hour }, -- 13:00 UTC
      { day = '2027-03-15', state = 'SENT', n = 3, at = 1804860000000 + 71 * hour },
      { day = '2027-03-16', state = 'SENT', n = 3, at = 1804860000000 + 95 * hour },
    }, q(dir, "SELECT date(r.scheduled_ms / 1000, 'unixepoch') AS day, o.state, count(*) AS n,"
      .. " min(o.claimed_ms) AS at FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
      .. " GROUP BY 1, 2 ORDER BY 1"))
    assert.are.equal(15, h.count(h.read(dir .. '/out.txt'), '--- message '))
    assert.are.equal(1, most_within(dir, 23))
  end)

  it('reaches everyone of a daily campaign sent a second late the day before, Daily = 1', function()
    -- MessagesPerSecond = 1 sent day 1 at 09:00:00 to 09:00:03; e0001 opts out, so day 2
    -- reaches each of the others a second earlier than 24 hours after day 1
    local dir = h.tmpdir()
    simple_endpoints(dir, 4)
    h.write(dir .. '/d.lua', [[
      herald.campaign{ name = 'daily', segment = herald.segment{ name = 'all' }, message = { body = 'x' },
        schedule = { start = '2027-01-10T09:00:00Z', frequency = 'DAILY', ['end'] = '2027-01-11T10:00:00Z' },
        limits = { daily = 1, messages_per_second = 1 }, deliver = { file = 'out.txt' } }
    ]])
    local _, code, err = run(dir, '--clock-start 2027-01-10T08:00:00Z --until 2027-01-10T12:00:00Z d.lua')
    assert.are.equal(0, code, err)
    h.sqlite(dir, 'c.db', "UPDATE endpoints SET opt_out = 'ALL' WHERE id = 'e0001';")
    _, code, err = run(dir, '--until-idle --clock-start 2027-01-10T12:00:00Z d.lua')
    assert.are.equal(0, code, err)
    local day1, day2 = 1799571600000, 1799658000000  -- 09:00 UTC
    assert.are.same({
      { at = day1, id = 'e0001', state = 'SENT', sent = day1 },
      { at = day1, id = 'e0002', state = 'SENT', sent = day1 + 1000 },
      { at = day1, id = 'e0003', state = 'SENT', sent = day1 + 2000 },
      { at = day1, id = 'e0004', state = 'SENT', sent = day1 + 3000 },
      { at = day2, id = 'e0001', state = 'SKIPPED', reason = 'OPT_OUT' },
      { at = day2, id = 'e0002', state = 'SENT', sent = day2 },
      { at = day2, id = 'e0003', state = 'SENT', sent = day2 + 1000 },
      { at = day2, id = 'e0004', state = 'SENT', sent = day2 + 2000 },
    }, q(dir, 'SELECT r.scheduled_ms AS at, o.endpoint_id AS id, o.state, o.reason, o.claimed_ms AS sent'
      .. ' FROM outbox o JOIN campaign_runs r ON r.id = o.run_id ORDER BY 1, 2'))
    assert.are.equal(1, most_within(dir, 23))
  end)

  it("caps another campaign's message within 23 hours of the endpoint's last", function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 3)
    h.write(dir .. '/d.lua', [[
      local all = herald.segment{ name = 'all' }
      herald.campaign{ name = 'morning', segment = all, message = { body = 'x' },
        schedule = { start = '2027-01-10T09:00:00Z', frequency = 'DAILY', ['end'] = '2027-01-11T10:00:00Z' },
        limits = { daily = 1 }, deliver = { file = 'out.txt' } }
      herald.campaign{ name = 'evening', segment = all, message = { body = 'y' },
        schedule = { start = '2027-01-10T18:00:00Z' }, limits = { daily = 1 }, deliver = { file = 'out.txt' } }
      herald.campaign{ name = 'dawn', segment = all, message = { body = 'z' },
        schedule = { start = '2027-01-11T08:30:00Z' }, limits = { daily = 1 }, deliver = { file = 'out.txt' } }
    ]])
    local _, code, err = run(dir, '--until-idle --clock-start 2027-01-10T08:00:00Z d.lua')
    assert.are.equal(0, code, err)
    -- evening: 9 hours after the morning's, capped. dawn: 23.5 hours after it, sent; the
    -- morning campaign's second run half an hour later then finds the endpoint had its message.
    assert.are.same({
      { day = '2027-01-10', id = 'evening', state = 'SKIPPED', reason = 'DAILY_CAP', n = 3 },
      { day = '2027-01-10', id = 'morning', state = 'SENT', n = 3, at = 1799571600000 },
      { day = '2027-01-11', id = 'dawn', state = 'SENT', n = 3, at = 1799571600000 + 23.5 * 3600000 },
      { day = '2027-01-11', id = 'morning', state = 'SKIPPED', reason = 'DAILY_CAP', n = 3 },
    }, q(dir, "SELECT date(r.scheduled_ms / 1000, 'unixepoch') AS day, r.campaign_id AS id, o.state,"
      .. " o.reason, count(*) AS n, min(o.claimed_ms) AS at FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
      .. " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2"))
    assert.are.equal(6, h.count(h.read(dir .. '/out.txt'), '--- message '))
    assert.are.equal(1, most_within(dir, 23))
  end)

  it('caps strictly across processes: two herald runs with five campaigns each, Daily = 5', function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 40)
    for p = 1, 2 do
      local src = { "local all = herald.segment{ name = 'all' }" }
      for i = 1, 5 do
        src[#src + 1] = string.format("herald.campaign{ name = 'p%d-%d', segment = all, message = { body = 'x' },"
          .. " schedule = { start = '2027-02-01T10:00:00Z' }, limits = { daily = 5 }, deliver = { file = 'out%d.txt' } }", p, i, p)
      end
      h.write(dir .. '/p' .. p .. '.lua', table.concat(src, '\n'))
    end
    local cmd = h.shell_quote(h.exe) .. ' --db c.db run --until-idle --clock-start 2027-02-01T10:00:00Z '
    local out, code = h.sh('cd ' .. h.shell_quote(dir) .. ' && (' .. cmd .. 'p1.lua > o1 2> e1 & a=$!; '
      .. cmd .. 'p2.lua > o2 2> e2 & b=$!; wait $a; ra=$?; wait $b; echo "rc=$ra,$?")')
    assert.are.equal(0, code, out)
    assert.matches('rc=0,0', out, 1, true)
    for _, r in ipairs(q(dir, "SELECT endpoint_id, sum(state = 'SENT') AS sent FROM outbox GROUP BY endpoint_id")) do
      assert.are.equal(5, r.sent)
    end
    assert.are.equal(200, h.count(h.read(dir .. '/out1.txt') or '', '--- message ') + h.count(h.read(dir .. '/out2.txt') or '', '--- message '))
  end)

  it('counts Total over the campaign life and expires what MaximumDuration leaves unsent', function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 5)
    h.write(dir .. '/t.lua', [[
      herald.campaign{ name = 'daily', segment = herald.segment{ name = 'all' }, message = { body = 'x' },
        schedule = { start = '2027-03-01T10:00:00Z', ['end'] = '2027-03-05T10:00:00Z', frequency = 'DAILY' },
        limits = { total = 3 }, deliver = { file = 'out.txt' } }
    ]])
    local _, code, err = run(dir, '--until-idle --clock-start 2027-03-01T00:00:00Z t.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(15, n(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'"))
    assert.are.equal(10, n(dir, "SELECT count(*) AS n FROM outbox WHERE reason = 'TOTAL_CAP'"))

    -- a local-time run materialises when the earliest zone reaches it; Los Angeles is due
    -- later, and a row still unsent 60 s after its due time is recorded EXPIRED at claim
    local dir2 = h.tmpdir()
    simple_endpoints(dir2, 6, function(i, r) r.tz = i <= 3 and 'Pacific/Kiritimati' or 'America/Los_Angeles' end)
    h.write(dir2 .. '/x.lua', [[
      herald.campaign{ name = 'short', segment = herald.segment{ name = 'all' }, message = { body = 'x' },
        schedule = { start = '2027-03-01T10:00:00', is_local_time = true }, limits = { maximum_duration = 60 },
        deliver = { file = 'out.txt' } }
    ]])
    _, code, err = run(dir2, '--clock-start 2027-02-28T00:00:00Z --until 2027-03-01T12:00:00Z x.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(3, n(dir2, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'"))
    assert.are.equal(3, n(dir2, "SELECT count(*) AS n FROM outbox WHERE state = 'PENDING'"))
    _, code, err = run(dir2, '--until-idle --clock-start 2027-03-01T18:02:00Z x.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(3, n(dir2, "SELECT count(*) AS n FROM outbox WHERE reason = 'EXPIRED'"))
  end)

  it('skips the zones whose local send time passed long before herald got to a local-time run', function()
    local dir = h.tmpdir()
    local zones = { 'Asia/Tokyo', 'Europe/London', 'America/Los_Angeles' }
    simple_endpoints(dir, 3, function(i, r) r.tz = zones[i] end)
    h.write(dir .. '/l.lua', [[
      herald.campaign{ name = 'morning', segment = herald.segment{ name = 'all' }, message = { body = 'x' },
        schedule = { start = '2027-06-01T09:00:00', is_local_time = true, timezone = 'UTC' },
        deliver = { file = 'out.txt' } }
    ]])
    -- herald starts at 07:00 UTC: 09:00 in Tokyo was 7 hours ago; London (08:00 UTC) and Los
    -- Angeles (16:00 UTC) are still ahead
    local _, code, err = run(dir, '--clock-start 2027-06-01T07:00:00Z --until 2027-06-01T17:00:00Z l.lua')
    assert.are.equal(0, code, err)
    assert.are.same({ { id = 'e0001', state = 'SKIPPED', reason = 'STALE' }, { id = 'e0002', state = 'SENT' },
                      { id = 'e0003', state = 'SENT' } },
      q(dir, 'SELECT endpoint_id AS id, state, reason FROM outbox ORDER BY endpoint_id'))
  end)

  it('keeps a recurring campaign started IMMEDIATE on its times when it is edited', function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 2)
    local function def(body)
      return string.format([[
        herald.campaign{ name = 'digest', segment = herald.segment{ name = 'all' }, message = { body = %q },
          schedule = { frequency = 'DAILY' }, deliver = { file = 'out.txt' } }
      ]], body)
    end
    h.write(dir .. '/d.lua', def('first'))
    local _, code, err = run(dir, '--clock-start 2027-04-05T09:00:00Z --until 2027-04-07T15:00:00Z d.lua')
    assert.are.equal(0, code, err)
    -- the message is fixed on the 7th at 15:00: a new version, but not a new start
    h.write(dir .. '/d.lua', def('second'))
    _, code, err = run(dir, '--clock-start 2027-04-07T15:00:00Z --until 2027-04-08T09:30:00Z d.lua')
    assert.are.equal(0, code, err)
    local at = {}
    for _, r in ipairs(q(dir, 'SELECT scheduled_ms FROM campaign_runs ORDER BY scheduled_ms')) do at[#at + 1] = r.scheduled_ms end
    assert.are.same({ 1806915600000, 1807002000000, 1807088400000, 1807174800000 }, at)  -- 09:00 on the 5th to the 8th
    assert.are.equal(2, n(dir, "SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
      .. " WHERE r.campaign_version = 2 AND o.state = 'SENT'"))
  end)

  it('pause holds the run in progress and resume continues it: nobody skipped, nobody sent twice', function()
    local dir = h.tmpdir()
    local zones = { 'Asia/Tokyo', 'Europe/Paris', 'America/New_York', 'America/Los_Angeles' }
    simple_endpoints(dir, 40, function(i, r) r.tz = zones[i % 4 + 1] end)
    h.write(dir .. '/p.lua', [[
      herald.campaign{ name = 'hold', segment = herald.segment{ name = 'all' }, message = { body = 'x' },
        schedule = { start = '2027-05-03T09:00:00', is_local_time = true, timezone = 'UTC' },
        deliver = { file = 'out.txt' } }
    ]])
    -- Tokyo and Paris get theirs, then the campaign is paused
    local _, code, err = run(dir, '--clock-start 2027-05-02T00:00:00Z --until 2027-05-03T08:00:00Z p.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(20, n(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'"))
    local out
    out, code = h.herald('--db c.db campaign pause hold', { cwd = dir })
    assert.are.equal(0, code)
    assert.matches('paused', out)
    -- while paused, New York's and Los Angeles' times pass and nothing is claimed
    _, code, err = run(dir, '--until-idle --clock-start 2027-05-03T17:00:00Z p.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(20, n(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'"))
    assert.are.equal(20, n(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'PENDING'"))
    assert.are.equal('PAUSED', q(dir, "SELECT state FROM campaigns")[1].state)
    _, code = h.herald('--db c.db campaign resume hold', { cwd = dir })
    assert.are.equal(0, code)
    _, code, err = run(dir, '--until-idle --clock-start 2027-05-03T17:05:00Z p.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(40, n(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'"))
    assert.are.equal(40, n(dir, "SELECT count(DISTINCT endpoint_id) AS n FROM outbox WHERE state = 'SENT'"))
    assert.are.equal(40, h.count(h.read(dir .. '/out.txt'), '--- message '))
    assert.are.equal('COMPLETED', q(dir, "SELECT state FROM campaigns")[1].state)
  end)

  it('refuses to pause a COMPLETED campaign, and activities of an unknown one', function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 3)
    h.write(dir .. '/d.lua', [[
      herald.campaign{ name = 'done', segment = herald.segment{ name = 'all' }, message = { body = 'x' },
        deliver = { file = 'out.txt' } }
    ]])
    local _, code, err = run(dir, '--until-idle d.lua')
    assert.are.equal(0, code, err)
    assert.are.equal('COMPLETED', q(dir, "SELECT state FROM campaigns")[1].state)
    -- a resume could not tell it had completed: it would wait for a next run that never comes
    local out
    out, code, err = h.herald('--db c.db campaign pause done', { cwd = dir })
    assert.are.equal(1, code, out)
    assert.matches('campaign done is COMPLETED', err, 1, true)
    assert.are.equal('COMPLETED', q(dir, "SELECT state FROM campaigns")[1].state)
    -- status and activities answer alike for a campaign that does not exist
    for _, action in ipairs({ 'status', 'activities' }) do
      out, code, err = h.herald('--db c.db campaign ' .. action .. ' no-such-campaign', { cwd = dir })
      assert.are.equal(1, code, action)
      assert.are.equal('', out)
      assert.matches('unknown campaign no-such-campaign', err, 1, true)
    end
    out, code = h.herald('--db c.db campaign activities done', { cwd = dir })
    assert.are.equal(0, code)
    assert.are.equal(3, json.decode(out)[1].SuccessfulEndpointCount)
  end)

  it('says in one line, not a traceback, that the store cannot be opened or stays busy', function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 3)
    h.write(dir .. '/d.lua', [[
      herald.campaign{ name = 'later', segment = herald.segment{ name = 'all' }, message = { body = 'x' },
        schedule = { start = '2099-01-01T00:00:00Z' }, deliver = { file = 'out.txt' } }
    ]])
    local _, code, err = h.herald('--db c.db campaign load d.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local out
    for _, action in ipairs({ 'list', 'show later', 'status later', 'activities later', 'pause later',
        'resume later', 'delete later', 'copy later later-2', 'load d.lua' }) do
      out, code, err = h.herald('--db missing/c.db campaign ' .. action, { cwd = dir })
      assert.are.equal(1, code, action)
      assert.are.equal('', out, action)
      assert.are.equal('herald campaign: missing/c.db: cannot open database: unable to open database file\n', err, action)
    end
    -- another process holds the store past the busy timeout: what writes fails, in a line
    local actions = { 'pause later', 'delete later', 'copy later later-2' }
    local script = {}
    for i, action in ipairs(actions) do
      script[#script + 1] = string.format('HERALD_BUSY_TIMEOUT_MS=100 %s --db c.db campaign %s > %d.out 2> %d.err < /dev/null;'
        .. ' echo $? > %d.rc', h.shell_quote(h.exe), action, i, i, i)
    end
    h.hold_store(dir, 'c.db', table.concat(script, '\n'))
    for i, action in ipairs(actions) do
      err = h.read(dir .. '/' .. i .. '.err')
      assert.are.equal('1\n', h.read(dir .. '/' .. i .. '.rc'), action .. ': ' .. err)
      assert.are.equal('', h.read(dir .. '/' .. i .. '.out'), action)
      assert.matches('^herald campaign: c%.db: [^\n]*: database is locked\n$', err)
    end
    assert.are.same({ { id = 'later', state = 'SCHEDULED' } }, q(dir, 'SELECT id, state FROM campaigns'))
  end)

  it("gives activities Pinpoint's states: RUNNING, PAUSED, CANCELLED, COMPLETED", function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 4, function(i, r) r.tz = i % 2 == 1 and 'Asia/Tokyo' or 'America/New_York' end)
    h.write(dir .. '/a.lua', [[
      local all = herald.segment{ name = 'all' }
      -- 09:00 on each endpoint's clock: Tokyo's at 00:00 UTC, New York's at 13:00 UTC
      herald.campaign{ name = 'hold', segment = all, message = { body = 'h' }, deliver = { file = 'out.txt' },
        schedule = { start = '2027-05-03T09:00:00', is_local_time = true } }
      herald.campaign{ name = 'done', segment = all, message = { body = 'd' }, deliver = { file = 'out.txt' },
        schedule = { start = '2027-05-02T07:00:00Z' } }
      -- six hours late when herald first looks: skipped whole, STALE
      herald.campaign{ name = 'late', segment = all, message = { body = 'l' }, deliver = { file = 'out.txt' },
        schedule = { start = '2027-05-02T00:00:00Z' } }
    ]])
    local _, code, err = run(dir, '--clock-start 2027-05-02T06:00:00Z --until 2027-05-03T08:00:00Z a.lua')
    assert.are.equal(0, code, err)
    local function states(name)
      local out, c, e = h.herald('--db c.db campaign activities ' .. name, { cwd = dir })
      assert.are.equal(0, c, e)
      local got = {}
      for _, a in ipairs(json.decode(out)) do got[#got + 1] = { State = a.State, Result = a.Result } end
      return got
    end
    assert.are.same({ { State = 'COMPLETED', Result = 'SUCCESS' } }, states('done'))
    local late = json.decode((h.herald('--db c.db campaign activities late', { cwd = dir })))
    assert.are.equal(1, #late)
    assert.are.same({ State = 'CANCELLED', STALE = 1 },
      { State = late[1].State, Result = late[1].Result, STALE = late[1].ExecutionMetrics.STALE })
    -- Tokyo has had its message, New York waits: the run is in progress
    assert.are.same({ { State = 'RUNNING' } }, states('hold'))
    for _, step in ipairs({ { 'pause', 'PAUSED' }, { 'resume', 'RUNNING' }, { 'delete', 'CANCELLED' } }) do
      _, code, err = h.herald('--db c.db campaign ' .. step[1] .. ' hold', { cwd = dir })
      assert.are.equal(0, code, err)
      assert.are.same({ { State = step[2] } }, states('hold'))
    end
    -- a later herald run completes the deleted campaign's run: what the deletion cut short stays CANCELLED
    _, code, err = run(dir, '--until-idle --clock-start 2027-05-03T14:00:00Z a.lua')
    assert.are.equal(0, code, err)
    assert.are.same({ { state = 'COMPLETED' } }, q(dir, "SELECT state FROM campaign_runs r WHERE campaign_id = 'hold'"))
    assert.are.same({ { State = 'CANCELLED' } }, states('hold'))
    assert.are.equal(2, n(dir, "SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
      .. " WHERE r.campaign_id = 'hold' AND o.reason = 'CAMPAIGN_DELETED'"))
  end)

  it('keeps arms by cohort across runs and versions; an update makes a new version, the run keeps its own', function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 200)
    local function def(subject)
      h.write(dir .. '/v.lua', [[
        herald.campaign{ name = 'ab', segment = herald.segment{ name = 'all' }, holdout = 10,
          schedule = { start = '2027-06-01T10:00:00Z', ['end'] = '2027-06-03T10:00:00Z', frequency = 'DAILY' },
          treatments = { { name = 'A', size = 30, message = { subject = ']] .. subject .. [[', body = 'a' } },
                         { name = 'B', size = 30, message = { subject = 'B', body = 'b' } },
                         { name = 'C', size = 30, message = { subject = 'C', body = 'c' } } },
          deliver = { file = 'out.txt' } }
      ]])
    end
    def('first')
    local _, code, err = run(dir, '--clock-start 2027-06-01T09:00:00Z --until 2027-06-01T12:00:00Z v.lua')
    assert.are.equal(0, code, err)
    def('second')
    _, code, err = run(dir, '--until-idle --clock-start 2027-06-01T12:00:00Z v.lua')
    assert.are.equal(0, code, err)
    local runs = q(dir, 'SELECT run_index, campaign_version FROM campaign_runs ORDER BY run_index')
    assert.are.same({ { run_index = 0, campaign_version = 1 }, { run_index = 1, campaign_version = 2 },
                      { run_index = 2, campaign_version = 2 } }, runs)
    -- the same endpoint is in the same arm in every run
    assert.are.equal(0, n(dir, 'SELECT count(*) AS n FROM (SELECT endpoint_id FROM outbox GROUP BY endpoint_id'
      .. ' HAVING count(DISTINCT treatment) > 1)'))
    local text = h.read(dir .. '/out.txt')
    assert.are.equal(60, h.count(text, 'subject: first'))
    assert.are.equal(120, h.count(text, 'subject: second'))
    assert.are.equal(3 * 180, h.count(text, '--- message '))
  end)

  it("names each run's treatments by the version it ran: run summary, campaign show, why", function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 100)
    local head = [[
      herald.campaign{ name = 'ver', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        schedule = { start = '2027-01-04T10:00:00Z', frequency = 'DAILY' }, ]]
    h.write(dir .. '/v.lua', head .. [[
        treatments = { { name = 'A', size = 40, message = { body = 'a' } }, { name = 'B', size = 30, message = { body = 'b' } },
                       { name = 'C', size = 30, message = { body = 'c' } } } }
    ]])
    local _, code, err = run(dir, '--clock-start 2027-01-04T09:00:00Z --until 2027-01-04T12:00:00Z v.lua')
    assert.are.equal(0, code, err)
    -- version 2, the next day, has a single message: treatments 1 and 2 are no more
    h.write(dir .. '/v.lua', head .. "message = { body = 'only' } }\n")
    local out
    out, code, err = run(dir, '--clock-start 2027-01-05T09:00:00Z --until 2027-01-05T12:00:00Z v.lua')
    assert.are.equal(0, code, err)
    assert.matches('campaign ver (version 2)\n'
      .. '  run 1: COMPLETED (version 1)\n'
      .. '    A               40 endpoints: SENT 40\n'
      .. '    B               30 endpoints: SENT 30\n'
      .. '    C               30 endpoints: SENT 30\n'
      .. '  run 2: COMPLETED\n'
      .. '    default        100 endpoints: SENT 100\n', out, 1, true)
    out, code = h.herald('--db c.db campaign show ver', { cwd = dir })
    assert.are.equal(0, code)
    local shown = {}
    for day, name, rest in out:gmatch('\n  2027%-01%-(%d%d)T%S+ COMPLETED (%S+) +SUCCESS: ([^\n]*)') do
      shown[#shown + 1] = day .. ' ' .. name .. ': ' .. rest
    end
    assert.are.same({ '05 default: 100 of 100 sent', '04 A: 40 of 40 sent (version 1)',
                      '04 B: 30 of 30 sent (version 1)', '04 C: 30 of 30 sent (version 1)' }, shown)
    out = h.herald('--db c.db why ver e0050', { cwd = dir })
    assert.matches("run 1 %(#0, version 1, [^)]*%): treatment 1 'B', SENT", out)
    assert.matches("run 2 %(#1, version 2, [^)]*%): treatment 0 'default', SENT", out)
  end)

  it('deletes (unsent messages recorded CAMPAIGN_DELETED), copies, and lets a treatment keep its own send time', function()
    local dir = h.tmpdir()
    simple_endpoints(dir, 100, function(i, r) r.tz = i % 2 == 0 and 'America/New_York' or 'Asia/Tokyo' end)
    h.write(dir .. '/d.lua', [[
      herald.campaign{ name = 'split', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        schedule = { start = '2027-07-01T10:00:00Z' },
        treatments = { { name = 'now', size = 50, message = { body = 'a' } },
                       { name = 'later', size = 50, message = { body = 'b' }, schedule = { start = '2027-07-02T10:00:00Z' },
                         quiet_time = { start = '18:00', ['end'] = '07:00' } } } }
    ]])
    local _, code, err = h.herald('--db c.db run --clock-start 2027-07-01T09:00:00Z --until 2027-07-01T12:00:00Z d.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal(50, n(dir, "SELECT count(*) AS n FROM outbox WHERE treatment = 0 AND state = 'SENT'"))
    -- the 'later' arm has a run of its own on 2 July: nothing of it yet
    assert.are.equal(0, n(dir, "SELECT count(*) AS n FROM outbox WHERE treatment = 1"))
    local out
    out, code = h.herald('--db c.db campaign copy split split-2', { cwd = dir })
    assert.are.equal(0, code, out)
    local st = json.decode((h.herald('--db c.db campaign status split-2', { cwd = dir })))
    assert.are.equal('SCHEDULED', st.State)
    assert.are.equal('split', st.Definition.Herald.CopyOf)
    assert.are.equal('later', st.Definition.AdditionalTreatments[1].TreatmentName)
    _, code = h.herald('--db c.db campaign copy split split-2', { cwd = dir })
    assert.are_not.equal(0, code)
    -- the copy runs with its source's segment, as its own campaign with its own runs
    _, code, err = h.herald('--db c.db run --clock-start 2027-07-01T12:00:00Z --until 2027-07-01T13:00:00Z d.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    -- its run time (10:00) is two hours past: recorded STALE
    assert.are.same({ { state = 'SKIPPED', reason = 'STALE' } },
      q(dir, "SELECT state, reason FROM campaign_runs WHERE campaign_id = 'split-2'"))
    -- the 'later' arm's run at 10:00 UTC on 2 July falls in its own quiet time (18:00-07:00 on
    -- each endpoint's clock): New York (06:00) is deferred to 07:00 there, Tokyo (19:00) to 07:00
    -- the next morning; the holdout and the 'now' arm have no run then
    _, code, err = h.herald('--db c.db run --clock-start 2027-07-02T10:00:00Z --until 2027-07-02T10:30:00Z d.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.same({ { due_ms = 1814526000000, zone = 'America/New_York', n = 25 }, { due_ms = 1814565600000, zone = 'Asia/Tokyo', n = 25 } },
      q(dir, "SELECT o.due_ms, o.zone, count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
      .. " WHERE r.campaign_id = 'split' AND o.treatment = 1 AND o.state = 'PENDING' GROUP BY 1, 2 ORDER BY 1"))
    assert.are.equal(0, n(dir, "SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
      .. " WHERE r.campaign_id = 'split' AND r.scheduled_ms = 1814522400000 AND o.treatment <> 1"))
    out, code = h.herald('--db c.db campaign delete split', { cwd = dir })
    assert.are.equal(0, code, out)
    -- HERALD_CLOCK_START works as --clock-start; a deleted campaign sends nothing more
    _, code, err = h.herald('--db c.db run --until-idle d.lua', { cwd = dir, env = { HERALD_CLOCK_START = '2027-07-02T12:30:00Z' } })
    assert.are.equal(0, code, err)
    assert.are.equal(50, n(dir, "SELECT count(*) AS n FROM outbox WHERE reason = 'CAMPAIGN_DELETED'"))
    -- 50 of split's first run, 50 of the copy's 'later' arm
    assert.are.equal(100, h.count(h.read(dir .. '/out.txt'), '--- message '))
    assert.are.equal(50, n(dir, "SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
      .. " WHERE r.campaign_id = 'split-2' AND o.treatment = 1 AND o.state = 'SENT'"))
    assert.are.equal('DELETED', q(dir, "SELECT state FROM campaigns WHERE id = 'split'")[1].state)
    _, code = h.herald('--db c.db campaign pause nope', { cwd = dir })
    assert.are.equal(1, code)
  end)
end)
