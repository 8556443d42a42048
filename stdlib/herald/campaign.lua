-- Campaigns: a segment, a message per treatment, a holdout, a schedule, quiet time, limits and
-- an optional FILTER hook.
--
-- Two ways in, one shape inside: `herald.campaign{...}` (herald's Lua form) and
-- `herald.campaign.from_pinpoint(json)` (a Pinpoint WriteCampaignRequest as is) both produce a
-- Pinpoint-shaped definition table (field names and enums exactly as Pinpoint's), plus
-- herald's own settings under "Herald". That table is what is stored per version
-- (campaign_versions) and what delivery reads for a run's version.
--
-- Audience split follows Pinpoint: every endpoint has a CohortId 0-99 fixed at creation;
-- cohorts [0, HoldoutPercent) are the holdout, the following SizePercent cohorts go to the
-- default treatment, then to each additional treatment in order, so an endpoint stays in the
-- same arm across runs and versions.
local segment = require 'herald.segment'
local template = require 'herald.template'
local time = require 'herald.time'
local json = require 'herald.core.json'
local outbox = require 'herald.core.outbox'
local store = require 'herald.core.store'
local core = require 'herald.core'
local core_http = require 'herald.core.http'

local campaign = {}

local Campaign = {}
Campaign.__index = Campaign

campaign.defined = {}   -- name -> campaign, in definition order too
campaign.order = {}

-- A late run is still sent when it is at most this late (herald was down, or the campaign was
-- paused, when it fell due); an older one is recorded SKIPPED with reason STALE. A campaign
-- changes it with `stale_after` (seconds) or Herald.StaleAfterSeconds.
campaign.DEFAULT_STALE_AFTER_S = 3600
-- A triggered message is late from when it was due (its event's time plus the delay, or its
-- arrival when the device's clock is behind). Pinpoint drops a message of an event-based
-- campaign that it cannot deliver within five minutes: that is the default bound of an event
-- campaign, which `stale_after` changes as well.
campaign.DEFAULT_TRIGGER_STALE_AFTER_S = 300
campaign.MAX_TREATMENTS = 10

local function fail(path, msg)
  error({ path = path, msg = msg }, 0)
end

local function check_template(path, text)
  if text == nil then return end
  if type(text) ~= 'string' then fail(path, 'expected a string') end
  local ok, err = template.check(text)
  if not ok then fail(path, err) end
end

local function only(path, t, allowed)
  for k in pairs(t) do
    if not allowed[k] then
      local names = {}
      for n in pairs(allowed) do names[#names + 1] = n end
      table.sort(names)
      fail(path .. '.' .. tostring(k), 'unknown field (allowed: ' .. table.concat(names, ', ') .. ')')
    end
  end
end

local function set(...)
  local s = {}
  for _, k in ipairs({ ... }) do s[k] = true end
  return s
end

local function kind(v)
  if v == nil then return 'nothing' end
  if v == '' then return 'an empty string' end
  return 'a ' .. type(v)
end

-- A text field read as is (a description, a treatment's name): absent, JSON null or a
-- string. Anything else would be stored and reach reports and messages as a table or number.
local function opt_string(path, v)
  if v ~= nil and v ~= json.null and type(v) ~= 'string' then fail(path, 'expected a string, got ' .. kind(v)) end
end

local function opt_boolean(path, v)
  if v ~= nil and v ~= json.null and type(v) ~= 'boolean' then fail(path, 'expected true or false, got ' .. kind(v)) end
end

-- The path of element i of a list: counted from 1 in the Lua form, from 0 in Pinpoint's JSON
-- (as AdditionalTreatments[0]).
local function at(path, i, pinpoint)
  return path .. '[' .. (pinpoint and i - 1 or i) .. ']'
end

-- A list is read from 1 to #t: a value under any other key would be dropped unseen.
local function only_list(path, t, pinpoint)
  local n = #t
  for k in pairs(t) do
    if math.type(k) ~= 'integer' then
      fail(path .. '.' .. tostring(k), 'unknown field (expected a list)')
    elseif k < 1 or k > n then
      fail(at(path, k, pinpoint), string.format('outside the list of %d', n))
    end
  end
end

-- Event types, as events carry them: a non-empty list of non-empty strings. Another value
-- (a number, say) would never equal an event's type and its trigger would never fire.
local function event_types(path, v, pinpoint)
  if type(v) ~= 'table' or #v == 0 then fail(path, 'a non-empty list of event types') end
  only_list(path, v, pinpoint)
  for i = 1, #v do
    if type(v[i]) ~= 'string' or v[i] == '' then
      fail(at(path, i, pinpoint), 'expected an event type (a non-empty string), got ' .. kind(v[i]))
    end
  end
end

-- An event attribute's values: strings, as events carry them.
local function attribute_values(path, v, pinpoint)
  if type(v) ~= 'table' then fail(path, 'a list of values') end
  only_list(path, v, pinpoint)
  for i = 1, #v do
    if type(v[i]) ~= 'string' then fail(at(path, i, pinpoint), 'expected a string, got ' .. kind(v[i])) end
  end
end

-- An email's Headers, Pinpoint's list of { Name =, Value = } (at most 15): nil when the
-- message builder takes every one, else the path of the one at fault (counted from 0, as in
-- Pinpoint's JSON) and why. Said with the definition: found at send time, a reserved or
-- malformed header would fail every message. A name given twice (in any case) is refused as
-- well, since one of the two would be dropped unseen.
function campaign.header_list_problem(path, list)
  local shape = 'expected a list of { Name =, Value = }'
  if type(list) ~= 'table' then return path, shape end
  local n = #list
  for k in pairs(list) do
    if math.type(k) ~= 'integer' or k < 1 or k > n then return path, shape end
  end
  if n > 15 then return path, 'at most 15 headers, got ' .. n end
  local seen = {}
  for i, h in ipairs(list) do
    local hp = path .. '[' .. (i - 1) .. ']'
    if type(h) ~= 'table' or type(h.Name) ~= 'string' or type(h.Value) ~= 'string' then
      return hp, 'expected { Name = string, Value = string }'
    end
    for k in pairs(h) do
      if k ~= 'Name' and k ~= 'Value' then return hp .. '.' .. tostring(k), 'unknown field (allowed: Name, Value)' end
    end
    local why, field = core_http.mail_header_problem(h.Name, h.Value)
    if why then return hp .. '.' .. field, why end
    -- a value is a template, rendered for each recipient
    local ok, terr = template.check(h.Value)
    if not ok then return hp .. '.Value', terr end
    local lower = h.Name:lower()
    if seen[lower] then return hp .. '.Name', string.format("'%s' is given twice", h.Name) end
    seen[lower] = true
  end
end

---------------------------------------------------------------------------------------------
-- The Lua form -> Pinpoint's shape

local PUSH_KEYS = { 'GCMMessage', 'APNSMessage', 'ADMMessage', 'BaiduMessage' }

-- message = { subject =, body =, html = }  (every channel), or per channel:
-- { email = {subject, text, html, from, headers}, sms = {body, type, origination_number, sender_id},
--   push = {title, body, action, url, image_url, sound}, custom = {data} }
local function message_configuration(path, m)
  if type(m) ~= 'table' then fail(path, 'expected a table') end
  local config = {}
  if m.email == nil and m.sms == nil and m.push == nil and m.custom == nil then
    only(path, m, set('subject', 'body', 'html'))
    if m.body == nil then fail(path .. '.body', 'required') end
    check_template(path .. '.subject', m.subject)
    check_template(path .. '.body', m.body)
    check_template(path .. '.html', m.html)
    config.EmailMessage = { Title = m.subject, Body = m.body, HtmlBody = m.html }
    config.DefaultMessage = { Title = m.subject, Body = m.body }
    return config
  end
  only(path, m, set('email', 'sms', 'push', 'custom'))
  if m.email ~= nil then
    local p, e = path .. '.email', m.email
    if type(e) ~= 'table' then fail(p, 'expected a table { subject =, text =, html =, from = }') end
    only(p, e, set('subject', 'text', 'html', 'from', 'headers'))
    if e.text == nil and e.html == nil then fail(p, 'needs text or html') end
    if e.subject == nil then fail(p .. '.subject', 'required') end
    check_template(p .. '.subject', e.subject)
    check_template(p .. '.text', e.text)
    check_template(p .. '.html', e.html)
    if e.from ~= nil and (type(e.from) ~= 'string' or not e.from:find('@', 1, true)) then
      fail(p .. '.from', 'an email address')
    end
    local headers
    if e.headers ~= nil then
      -- headers = { ['X-Campaign'] = 'spring' }: Pinpoint's Headers list, in name order
      if type(e.headers) ~= 'table' then fail(p .. '.headers', "expected a table { ['Name'] = 'value' }") end
      local names = {}
      for name, value in pairs(e.headers) do
        if type(name) ~= 'string' then fail(p .. '.headers', "expected a table { ['Name'] = 'value' }, not a list") end
        if type(value) ~= 'string' then fail(p .. '.headers.' .. name, 'expected a string, got ' .. kind(value)) end
        local why = core_http.mail_header_problem(name, value)
        if why then fail(p .. '.headers.' .. name, why) end
        check_template(p .. '.headers.' .. name, value)
        names[#names + 1] = name
      end
      table.sort(names)
      headers = {}
      for i, name in ipairs(names) do headers[i] = { Name = name, Value = e.headers[name] } end
    end
    config.EmailMessage = { Title = e.subject, Body = e.text, HtmlBody = e.html, FromAddress = e.from,
                            Headers = headers }
  end
  if m.sms ~= nil then
    local p, s = path .. '.sms', m.sms
    if type(s) ~= 'table' then fail(p, 'expected a table { body =, ... }') end
    only(p, s, set('body', 'type', 'origination_number', 'sender_id', 'keyword'))
    if s.body == nil then fail(p .. '.body', 'required') end
    check_template(p .. '.body', s.body)
    if s.type ~= nil and s.type ~= 'TRANSACTIONAL' and s.type ~= 'PROMOTIONAL' then
      fail(p .. '.type', "'TRANSACTIONAL' or 'PROMOTIONAL'")
    end
    opt_string(p .. '.origination_number', s.origination_number)
    opt_string(p .. '.sender_id', s.sender_id)
    opt_string(p .. '.keyword', s.keyword)
    config.SMSMessage = { Body = s.body, MessageType = s.type,
                          OriginationNumber = s.origination_number, SenderId = s.sender_id,
                          Keyword = s.keyword }
  end
  if m.push ~= nil then
    local p, s = path .. '.push', m.push
    if type(s) ~= 'table' then fail(p, 'expected a table { title =, body =, ... }') end
    only(p, s, set('title', 'body', 'action', 'url', 'image_url', 'sound', 'silent'))
    if s.body == nil then fail(p .. '.body', 'required') end
    check_template(p .. '.title', s.title)
    check_template(p .. '.body', s.body)
    if s.action ~= nil and s.action ~= 'OPEN_APP' and s.action ~= 'DEEP_LINK' and s.action ~= 'URL' then
      fail(p .. '.action', "'OPEN_APP', 'DEEP_LINK' or 'URL'")
    end
    opt_string(p .. '.url', s.url)
    opt_string(p .. '.image_url', s.image_url)
    opt_string(p .. '.sound', s.sound)
    opt_boolean(p .. '.silent', s.silent)
    local msg = { Title = s.title, Body = s.body, Action = s.action, Url = s.url,
                  ImageUrl = s.image_url, Sound = s.sound, SilentPush = s.silent }
    for _, k in ipairs(PUSH_KEYS) do config[k] = msg end
    config.DefaultMessage = { Title = s.title, Body = s.body }
  end
  if m.custom ~= nil then
    local p, s = path .. '.custom', m.custom
    if type(s) ~= 'table' then fail(p, 'expected a table { data = }') end
    only(p, s, set('data'))
    if type(s.data) ~= 'string' then fail(p .. '.data', 'required: a string') end
    check_template(p .. '.data', s.data)
    config.CustomMessage = { Data = s.data }
  end
  return config
end

-- A stored template a campaign names must exist when the campaign is defined (a misspelt
-- name is said now, with its field, rather than found when the messages go). One deleted or
-- never written later pauses the campaign at delivery. The store's own failures (busy, say) are
-- not the definition's: delivery looks again. name_path and version_path are the fields to
-- blame; kind is the TemplateConfiguration key.
local STORE_TYPE = { EmailTemplate = 'EMAIL', SMSTemplate = 'SMS', PushTemplate = 'PUSH' }
local function check_template_exists(name_path, version_path, kind, name, version)
  local type_ = STORE_TYPE[kind]
  if type_ == nil then return end
  local found, err, code = template.get(name, type_)
  if found == nil and code == 'NOT_FOUND' then fail(name_path, err) end
  if found and version ~= nil then
    found, err, code = template.get(name, type_, math.tointeger(tonumber(version)))
    if found == nil and code == 'NOT_FOUND' then fail(version_path, err) end
  end
end

-- template = { email = 'name' or {name =, version =}, sms =, push =, voice = }
local TEMPLATE_KEYS = { email = 'EmailTemplate', sms = 'SMSTemplate', push = 'PushTemplate',
                        voice = 'VoiceTemplate', in_app = 'InAppTemplate' }
local function template_configuration(path, t)
  if type(t) ~= 'table' then fail(path, "expected a table { email = 'template name', ... }") end
  local config = {}
  for k, v in pairs(t) do
    local key = TEMPLATE_KEYS[k]
    if key == nil then fail(path .. '.' .. tostring(k), 'unknown channel (email, sms, push, voice, in_app)') end
    if type(v) == 'string' then v = { name = v } end
    if type(v) ~= 'table' or type(v.name) ~= 'string' or v.name == '' then
      fail(path .. '.' .. k, "a template name, or { name =, version = }")
    end
    local version = v.version
    if version ~= nil and (math.tointeger(tonumber(version)) == nil or math.tointeger(tonumber(version)) < 1
        or (type(version) == 'string' and not version:match('^%d+$')) or type(version) == 'boolean') then
      fail(path .. '.' .. k .. '.version', 'a version number from 1 (or leave it out for the active version), not ' .. tostring(version))
    end
    check_template_exists(type(t[k]) == 'string' and path .. '.' .. k or path .. '.' .. k .. '.name',
      path .. '.' .. k .. '.version', key, v.name, version)
    config[key] = { Name = v.name, Version = version and tostring(math.tointeger(tonumber(version))) or nil }
  end
  return config
end

-- A duration in seconds from a number of seconds or '30m', '2h', '1d'. Positive, except where
-- zero means something (an event campaign's delay: none, the message goes at once).
local function duration_s(path, v, zero_ok)
  local least = zero_ok and 0 or 1
  if math.type(v) == 'integer' and v >= least then return v end
  if type(v) == 'string' then
    local n, unit = v:match('^(%d+)%s*([smhd])$')
    if n and tonumber(n) >= least then return tonumber(n) * ({ s = 1, m = 60, h = 3600, d = 86400 })[unit] end
  end
  fail(path, zero_ok and "a number of seconds (0 or more), or '30m', '2h', '1d'"
    or "a positive number of seconds, or '30m', '2h', '1d'")
end

local OPERATORS = { ['>'] = 'GREATER_THAN', ['>='] = 'GREATER_THAN_OR_EQUAL', ['<'] = 'LESS_THAN',
                    ['<='] = 'LESS_THAN_OR_EQUAL', ['=='] = 'EQUAL' }

-- event = { types = {...}, attributes = { name = {values} }, metrics = { name = {'>', 10} },
--   filter_type = 'ENDPOINT', predicate = function(event, endpoint), delay =, cancel_on = {...},
--   expiry = } -> Pinpoint's EventFilter, and herald's trigger settings
local function lua_event(path, e)
  if type(e) ~= 'table' then fail(path, 'expected a table { types = {...}, ... }') end
  only(path, e, set('types', 'attributes', 'metrics', 'filter_type', 'predicate', 'delay', 'cancel_on', 'expiry'))
  event_types(path .. '.types', e.types)
  local dims = { EventType = { DimensionType = 'INCLUSIVE', Values = e.types } }
  if e.attributes ~= nil then
    if type(e.attributes) ~= 'table' then fail(path .. '.attributes', 'expected { name = {values} }') end
    dims.Attributes = {}
    for k, v in pairs(e.attributes) do
      if type(v) == 'table' and v.AttributeType then dims.Attributes[k] = v
      else
        attribute_values(path .. '.attributes.' .. tostring(k), v)
        dims.Attributes[k] = { AttributeType = 'INCLUSIVE', Values = v }
      end
    end
  end
  if e.metrics ~= nil then
    if type(e.metrics) ~= 'table' then fail(path .. '.metrics', "expected { name = {'>', 10} }") end
    dims.Metrics = {}
    for k, v in pairs(e.metrics) do
      if type(v) == 'table' and v.ComparisonOperator then dims.Metrics[k] = v
      elseif type(v) == 'table' and OPERATORS[v[1]] and type(v[2]) == 'number' then
        dims.Metrics[k] = { ComparisonOperator = OPERATORS[v[1]], Value = v[2] }
      else fail(path .. '.metrics.' .. tostring(k), "{'>', number} (>, >=, <, <=, ==)") end
    end
  end
  if e.filter_type ~= nil and e.filter_type ~= 'ENDPOINT' and e.filter_type ~= 'SYSTEM' then
    fail(path .. '.filter_type', "'ENDPOINT' or 'SYSTEM'")
  end
  if e.predicate ~= nil and type(e.predicate) ~= 'function' then fail(path .. '.predicate', 'a function(event, endpoint) -> boolean') end
  local extra = { predicate = e.predicate, trigger = {} }
  if e.delay ~= nil then extra.trigger.TriggerDelaySeconds = duration_s(path .. '.delay', e.delay, true) end
  if e.expiry ~= nil then extra.trigger.TriggerExpirySeconds = duration_s(path .. '.expiry', e.expiry) end
  if e.cancel_on ~= nil then
    event_types(path .. '.cancel_on', e.cancel_on)
    extra.trigger.CancelOnEventTypes = e.cancel_on
  end
  return { FilterType = e.filter_type or 'ENDPOINT', Dimensions = dims }, extra
end

local function lua_schedule(path, s)
  if s == nil or s == 'IMMEDIATE' then return { StartTime = 'IMMEDIATE', Frequency = 'ONCE' } end
  if type(s) == 'string' then return { StartTime = s, Frequency = 'ONCE' } end
  if type(s) ~= 'table' then fail(path, "expected 'IMMEDIATE', an ISO 8601 time or a table") end
  only(path, s, set('start', 'end', 'frequency', 'timezone', 'is_local_time', 'event'))
  -- another frequency would send on its runs and drop the trigger (and its delay, cancel_on)
  if s.event ~= nil and s.frequency ~= nil and s.frequency ~= 'EVENT' then
    fail(path .. '.frequency', "'EVENT' (or leave it out) with an event trigger, not " .. tostring(s.frequency))
  end
  local filter, extra
  if s.event ~= nil then filter, extra = lua_event(path .. '.event', s.event) end
  return { StartTime = s.start or 'IMMEDIATE', EndTime = s['end'], Frequency = s.frequency or (s.event and 'EVENT') or 'ONCE',
           Timezone = s.timezone, IsLocalTime = s.is_local_time, EventFilter = filter }, extra
end

local function from_lua(def)
  if type(def) ~= 'table' then fail('', 'expected a table') end
  only('campaign', def, set('name', 'description', 'segment', 'schedule', 'quiet_time',
    'holdout', 'treatments', 'message', 'template', 'limits', 'hook', 'deliver', 'stale_after',
    'treatment_name', 'winner'))
  opt_string('description', def.description)
  opt_string('treatment_name', def.treatment_name)
  local p = {
    Name = def.name, Description = def.description, HoldoutPercent = def.holdout or 0,
    TreatmentName = def.treatment_name, Herald = {},
  }
  local event_extra
  p.Schedule, event_extra = lua_schedule('schedule', def.schedule)
  if event_extra then
    for k, v in pairs(event_extra.trigger) do p.Herald[k] = v end
  end
  if def.quiet_time ~= nil then
    local q = def.quiet_time
    if type(q) ~= 'table' then fail('quiet_time', "expected { start = 'HH:MM', ['end'] = 'HH:MM', policy = 'defer' }") end
    only('quiet_time', q, set('start', 'end', 'policy'))
    p.Schedule.QuietTime = { Start = q.start, End = q['end'] }
    p.Herald.QuietTimePolicy = q.policy or 'defer'
    if p.Herald.QuietTimePolicy ~= 'defer' and p.Herald.QuietTimePolicy ~= 'skip' then
      fail('quiet_time.policy', "'defer' (send when quiet time ends) or 'skip'")
    end
  end
  if def.limits ~= nil then
    local l = def.limits
    if type(l) ~= 'table' then fail('limits', 'expected a table') end
    only('limits', l, set('daily', 'total', 'messages_per_second', 'maximum_duration', 'session'))
    p.Limits = { Daily = l.daily, Total = l.total, MessagesPerSecond = l.messages_per_second,
                 Session = l.session,
                 MaximumDuration = l.maximum_duration and duration_s('limits.maximum_duration', l.maximum_duration) }
  end
  if def.stale_after ~= nil then p.Herald.StaleAfterSeconds = duration_s('stale_after', def.stale_after) end
  if def.winner ~= nil then
    local w = def.winner
    if type(w) ~= 'table' then fail('winner', "expected { test_percent =, metric =, decide_after =, policy = }") end
    only('winner', w, set('test_percent', 'metric', 'decide_after', 'min_sample', 'alpha', 'policy',
      'conversion', 'window_days'))
    p.Herald.Winner = { TestPercent = w.test_percent, Metric = w.metric, MinSample = w.min_sample,
      Alpha = w.alpha, Policy = w.policy, ConversionEvent = w.conversion, WindowDays = w.window_days,
      DecideAfterSeconds = w.decide_after ~= nil and duration_s('winner.decide_after', w.decide_after) or nil }
  end
  if def.hook ~= nil then
    if type(def.hook) ~= 'function' then fail('hook', 'a function(endpoints) returning the endpoints to keep') end
    p.Hook = { Mode = 'FILTER', LambdaFunctionName = 'lua' }
  end

  local function message_and_template(path, t, required)
    local m, tpl
    if t.message ~= nil then m = message_configuration(path .. '.message', t.message) end
    if t.template ~= nil then tpl = template_configuration(path .. '.template', t.template) end
    if required and m == nil and tpl == nil then fail(path .. '.message', 'required (or template)') end
    return m, tpl
  end

  if def.treatments ~= nil then
    if def.message ~= nil or def.template ~= nil then
      fail('message', 'give either message/template or treatments, not both')
    end
    if type(def.treatments) ~= 'table' or #def.treatments == 0 then fail('treatments', 'a non-empty list') end
    only_list('treatments', def.treatments)
    -- the first treatment is the default one, and it names itself
    if def.treatment_name ~= nil then fail('treatment_name', 'with treatments, name the first one: treatments[1].name') end
    local additional = {}
    for i = 1, #def.treatments do
      local t, path = def.treatments[i], 'treatments[' .. i .. ']'
      if type(t) ~= 'table' then fail(path, 'expected a table') end
      only(path, t, set('name', 'size', 'message', 'template', 'schedule', 'quiet_time', 'description'))
      opt_string(path .. '.name', t.name)
      opt_string(path .. '.description', t.description)
      if math.type(t.size) ~= 'integer' or t.size < 1 or t.size > 100 then
        fail(path .. '.size', 'a whole percentage 1-100')
      end
      local m, tpl = message_and_template(path, t, true)
      if i == 1 then
        if t.schedule ~= nil then fail(path .. '.schedule', "the first treatment follows the campaign's schedule") end
        if t.quiet_time ~= nil then fail(path .. '.quiet_time', "the first treatment follows the campaign's quiet_time") end
        p.TreatmentName = t.name or 'default'
        p.TreatmentDescription = t.description
        p.MessageConfiguration, p.TemplateConfiguration = m, tpl
        p.Herald.DefaultSizePercent = t.size
      else
        local sched
        if t.schedule ~= nil then sched = lua_schedule(path .. '.schedule', t.schedule) end
        if t.quiet_time ~= nil then
          if sched == nil then fail(path .. '.quiet_time', "only with the treatment's own schedule") end
          local tq = t.quiet_time
          if type(tq) ~= 'table' then fail(path .. '.quiet_time', "expected { start = 'HH:MM', ['end'] = 'HH:MM' }") end
          only(path .. '.quiet_time', tq, set('start', 'end'))
          sched.QuietTime = { Start = tq.start, End = tq['end'] }
        end
        additional[#additional + 1] = {
          Id = tostring(i - 1), TreatmentName = t.name or ('treatment ' .. (i - 1)),
          TreatmentDescription = t.description, SizePercent = t.size,
          MessageConfiguration = m, TemplateConfiguration = tpl, Schedule = sched,
        }
      end
    end
    p.AdditionalTreatments = additional
  else
    local m, tpl = message_and_template('campaign', def, true)
    p.MessageConfiguration, p.TemplateConfiguration = m, tpl
    p.TreatmentName = p.TreatmentName or 'default'
  end
  p.Herald.Deliver = def.deliver
  return p, event_extra and event_extra.predicate
end

---------------------------------------------------------------------------------------------
-- Pinpoint's shape: validation (both ways in end here) and the campaign object

local TOP = set('Name', 'Description', 'SegmentId', 'SegmentVersion', 'HoldoutPercent',
  'TreatmentName', 'TreatmentDescription', 'MessageConfiguration', 'TemplateConfiguration',
  'AdditionalTreatments', 'Schedule', 'Limits', 'Hook', 'IsPaused', 'CustomDeliveryConfiguration',
  'Priority', 'tags', 'Herald')
local MESSAGE_KEYS = set('EmailMessage', 'SMSMessage', 'DefaultMessage', 'GCMMessage',
  'APNSMessage', 'ADMMessage', 'BaiduMessage', 'CustomMessage', 'InAppMessage')

-- The settings delivery passes on to a channel as they are.
local MESSAGE_STRINGS = { 'FromAddress', 'OriginationNumber', 'SenderId', 'Keyword', 'EntityId', 'TemplateId',
  -- a push message's (Message, APNSMessage, GCMMessage)
  'Url', 'ImageUrl', 'ImageIconUrl', 'ImageSmallIconUrl', 'SmallImageIconUrl', 'MediaUrl', 'Sound',
  'CollapseId', 'CollapseKey', 'ThreadId', 'Category', 'APNSPushType', 'RestrictedPackageName', 'IconReference' }
local PUSH_ACTIONS = set('OPEN_APP', 'DEEP_LINK', 'URL')

-- A push message's Priority as delivery reads it, 'normal' or 'high': Pinpoint's names (any
-- case) or APNs's 5 and 10, which Pinpoint converts; nil for anything else.
local PUSH_PRIORITIES = { normal = 'normal', high = 'high', ['5'] = 'normal', ['10'] = 'high' }
function campaign.push_priority(v)
  if type(v) == 'string' then return PUSH_PRIORITIES[v:lower()] end
  if math.tointeger(v) then return PUSH_PRIORITIES[tostring(math.tointeger(v))] end
  return nil
end

local function check_config(path, config)
  if config == nil then return end
  if type(config) ~= 'table' then fail(path, 'expected an object') end
  only(path, config, MESSAGE_KEYS)
  for k, m in pairs(config) do
    local mp = path .. '.' .. k
    if type(m) ~= 'table' then fail(mp, 'expected an object') end
    for _, f in ipairs({ 'Title', 'Body', 'HtmlBody', 'Data' }) do
      check_template(mp .. '.' .. f, m[f] ~= json.null and m[f] or nil)
    end
    for _, f in ipairs(MESSAGE_STRINGS) do opt_string(mp .. '.' .. f, m[f]) end
    opt_boolean(mp .. '.SilentPush', m.SilentPush)
    local action, prio, badge = m.Action, m.Priority, m.Badge
    if action ~= nil and action ~= json.null and not PUSH_ACTIONS[action] then
      fail(mp .. '.Action', "'OPEN_APP', 'DEEP_LINK' or 'URL', not " .. tostring(action))
    end
    if prio ~= nil and prio ~= json.null and campaign.push_priority(prio) == nil then
      fail(mp .. '.Priority', "'normal' or 'high' (or APNs's '5' or '10'), not " .. tostring(prio))
    end
    if badge ~= nil and badge ~= json.null and (type(badge) ~= 'number' or math.tointeger(badge) == nil) then
      fail(mp .. '.Badge', 'expected a whole number, got ' .. kind(badge))
    end
    local mt = m.MessageType
    if mt ~= nil and mt ~= json.null and mt ~= 'TRANSACTIONAL' and mt ~= 'PROMOTIONAL' then
      fail(mp .. '.MessageType', "'TRANSACTIONAL' or 'PROMOTIONAL'")
    end
    if k == 'EmailMessage' and m.Headers ~= nil and m.Headers ~= json.null then
      local hp, why = campaign.header_list_problem(mp .. '.Headers', m.Headers)
      if hp then fail(hp, why) end
    end
  end
end

-- TemplateConfiguration: a stored template per channel kind, {Name, Version}; Version (a
-- string in Pinpoint's JSON) pins a version and must be a whole number from 1, or delivery
-- could not tell which version to render.
local TEMPLATE_CONFIG_KEYS = set('EmailTemplate', 'SMSTemplate', 'PushTemplate', 'VoiceTemplate', 'InAppTemplate')
local function check_template_config(path, tc, lua)
  if tc == nil or tc == json.null then return end
  if type(tc) ~= 'table' then fail(path, 'expected an object') end
  only(path, tc, TEMPLATE_CONFIG_KEYS)
  for k, ref in pairs(tc) do
    local p = path .. '.' .. k
    if ref ~= json.null then
      if type(ref) ~= 'table' then fail(p, 'expected an object { Name =, Version = }') end
      if type(ref.Name) ~= 'string' or ref.Name == '' then fail(p .. '.Name', 'required: a template name') end
      local v = ref.Version
      if v ~= nil and v ~= json.null then
        local n = math.tointeger(tonumber(v))
        if (type(v) ~= 'string' and type(v) ~= 'number') or n == nil or n < 1
            or (type(v) == 'string' and not v:match('^%d+$')) then
          fail(p .. '.Version', 'a version number from 1 (or leave it out for the active version), not ' .. tostring(v))
        end
      end
      -- the Lua form looked when it made this, and blamed its own field
      if not lua then check_template_exists(p .. '.Name', p .. '.Version', k, ref.Name, v ~= json.null and v or nil) end
    end
  end
end

-- The keys of each kind of destination: another key would be dropped unread ({ file =,
-- provider = } would send to the file only), so it is an error.
local DELIVER_SHAPES = { stdout = set('type'), channels = set('type'), file = set('type', 'path'),
                         provider = set('type', 'provider') }

-- The file channel writes only below the working directory (herald.core.filechannel refuses
-- any other path when it sends): a path that leaves it is refused with the definition, not
-- found out at the first send, with attempts spent and the campaign paused.
local function check_file_path(path, f)
  if f == '' or f:sub(1, 1) == '/' or ('/' .. f .. '/'):find('/../', 1, true) then
    fail(path, string.format("'%s': the file must be relative and stay below the working directory", f))
  end
end

-- Where messages go: the built-in stdout or file channel, 'channels' (each endpoint's channel
-- type routed through the providers file) or one named provider profile.
local function check_deliver(path, d)
  if d == nil or d == 'stdout' then return { type = 'stdout' } end
  if d == 'channels' then return { type = 'channels' } end
  if type(d) == 'table' and d.type ~= nil and DELIVER_SHAPES[d.type] then only(path, d, DELIVER_SHAPES[d.type]) end
  if type(d) == 'table' and (d.type == 'stdout' or d.type == 'channels') then return d end
  if type(d) == 'table' and d.type == 'file' and type(d.path) == 'string' then
    check_file_path(path .. '.path', d.path)
    return d
  end
  if type(d) == 'table' and d.type == 'provider' and type(d.provider) == 'string' then return d end
  if type(d) == 'table' and d.type == nil and type(d.file) == 'string' and d.file ~= '' then
    only(path, d, set('file'))
    check_file_path(path .. '.file', d.file)
    return { type = 'file', path = d.file }
  end
  if type(d) == 'table' and d.type == nil and type(d.provider) == 'string' and d.provider ~= '' then
    only(path, d, set('provider'))
    return { type = 'provider', provider = d.provider }
  end
  fail(path, "expected 'stdout', 'channels' (route by channel type through the providers file), "
    .. "{ file = 'relative/path' } or { provider = 'profile name' }")
end

local function int_field(path, v, lo, hi)
  if v == nil then return nil end
  if math.type(v) ~= 'integer' or v < lo or (hi and v > hi) then
    fail(path, hi and string.format('a whole number %d-%d', lo, hi) or string.format('a whole number >= %d', lo))
  end
  return v
end

-- Herald.Winner: the automatic A/B winner (herald.winner runs it). Field paths name the form
-- the definition came in.
local WINNER_FIELDS = {
  TestPercent = 'test_percent', Metric = 'metric', DecideAfterSeconds = 'decide_after',
  MinSample = 'min_sample', Alpha = 'alpha', Policy = 'policy', ConversionEvent = 'conversion',
  WindowDays = 'window_days',
}
campaign.DEFAULT_DECIDE_AFTER_S = 86400

local function check_winner(p, lua, n_treatments)
  local w = p.Herald.Winner
  local base = lua and 'winner' or 'Herald.Winner'
  local function path(k) return base .. '.' .. (lua and WINNER_FIELDS[k] or k) end
  if type(w) ~= 'table' then fail(base, 'expected an object') end
  if not lua then only(base, w, WINNER_FIELDS) end
  if n_treatments < 2 then fail(base, 'an A/B winner needs at least two treatments') end
  if p.Schedule.Frequency == 'EVENT' then fail(base, 'an event-triggered campaign has no test share to decide on') end
  -- A treatment on a schedule of its own is sent in runs of its own, and a run is decided on
  -- the treatments it holds: no run would hold them all to compare, and each would hold back
  -- its rest for a winner decided without the other treatments' figures.
  for i, t in ipairs(p.AdditionalTreatments or {}) do
    if t.Schedule ~= nil then
      fail(base, string.format('cannot be used with %s (a treatment on its own schedule runs apart '
        .. 'from the others, so no run holds every treatment to compare; give it the campaign\'s schedule)',
        lua and ('treatments[' .. (i + 1) .. '].schedule') or ('AdditionalTreatments[' .. (i - 1) .. '].Schedule')))
    end
  end
  int_field(path('TestPercent'), w.TestPercent, 1, 99)
  if w.TestPercent == nil then fail(path('TestPercent'), 'required: the share of the audience (1-99) that tests the treatments') end
  w.Metric = w.Metric or 'clicks'
  if w.Metric ~= 'opens' and w.Metric ~= 'clicks' and w.Metric ~= 'conversions' then
    fail(path('Metric'), "'opens', 'clicks' or 'conversions'")
  end
  if w.Metric == 'conversions' then
    if type(w.ConversionEvent) ~= 'string' or w.ConversionEvent == '' then
      fail(path('ConversionEvent'), 'required with the conversions metric: the event type that counts')
    end
  elseif w.ConversionEvent ~= nil then
    fail(path('ConversionEvent'), 'only with the conversions metric')
  end
  if w.WindowDays ~= nil and (type(w.WindowDays) ~= 'number' or w.WindowDays <= 0) then
    fail(path('WindowDays'), 'a positive number of days')
  end
  w.DecideAfterSeconds = w.DecideAfterSeconds or campaign.DEFAULT_DECIDE_AFTER_S
  int_field(path('DecideAfterSeconds'), w.DecideAfterSeconds, 1)
  int_field(path('MinSample'), w.MinSample, 1)
  w.Alpha = w.Alpha or 0.05
  if type(w.Alpha) ~= 'number' or not (w.Alpha > 0 and w.Alpha < 1) then fail(path('Alpha'), 'a number in (0, 1)') end
  w.Policy = w.Policy or 'send_best'
  if w.Policy ~= 'send_best' and w.Policy ~= 'send_default' and w.Policy ~= 'stop' then
    fail(path('Policy'), "'send_best', 'send_default' or 'stop'")
  end
end

local function build(p, lua)
  only('', p, TOP)
  -- the name is the campaign's id, which delivery keeps in at most 255 bytes
  if type(p.Name) ~= 'string' or not p.Name:match('^[%w][%w_%-%.]*$') or #p.Name > 255 then
    fail(lua and 'name' or 'Name', 'required: up to 255 letters, digits, _ - . (starting with a letter or digit)')
  end
  local holdout = p.HoldoutPercent or 0
  if math.type(holdout) ~= 'integer' or holdout < 0 or holdout > 100 then
    fail(lua and 'holdout' or 'HoldoutPercent', 'a whole percentage 0-100')
  end
  -- the Lua form checked these under its own names (description, treatments[1].name, ...)
  opt_string('Description', p.Description)
  opt_string('TreatmentName', p.TreatmentName)
  opt_string('TreatmentDescription', p.TreatmentDescription)
  p.Herald = p.Herald or {}
  if type(p.Herald) ~= 'table' then fail('Herald', 'expected an object') end
  check_config('MessageConfiguration', p.MessageConfiguration)
  check_template_config('TemplateConfiguration', p.TemplateConfiguration, lua)
  local additional = p.AdditionalTreatments or {}
  if type(additional) ~= 'table' then fail('AdditionalTreatments', 'expected a list') end
  if #additional + 1 > campaign.MAX_TREATMENTS then
    fail(lua and 'treatments' or 'AdditionalTreatments',
      string.format('at most %d treatments in all', campaign.MAX_TREATMENTS))
  end
  local sizes, total = {}, holdout
  for i, t in ipairs(additional) do
    local path = lua and ('treatments[' .. (i + 1) .. ']') or ('AdditionalTreatments[' .. (i - 1) .. ']')
    if type(t) ~= 'table' then fail(path, 'expected an object') end
    t.Id = t.Id or tostring(i)
    if t.Id ~= tostring(i) then fail(path .. '.Id', "treatment ids are '1', '2', ... in order") end
    opt_string(path .. (lua and '.name' or '.TreatmentName'), t.TreatmentName)
    opt_string(path .. (lua and '.description' or '.TreatmentDescription'), t.TreatmentDescription)
    if math.type(t.SizePercent) ~= 'integer' or t.SizePercent < 1 or t.SizePercent > 100 then
      fail(path .. (lua and '.size' or '.SizePercent'), 'a whole percentage 1-100')
    end
    check_config(path .. '.MessageConfiguration', t.MessageConfiguration)
    check_template_config(path .. '.TemplateConfiguration', t.TemplateConfiguration, lua)
    sizes[i + 1] = t.SizePercent
    total = total + t.SizePercent
  end
  local default_size = p.Herald.DefaultSizePercent
  if default_size == nil then default_size = 100 - total end
  if math.type(default_size) ~= 'integer' or default_size < (#additional > 0 and 1 or 0) then
    fail(lua and 'treatments' or 'AdditionalTreatments',
      string.format('holdout (%d) and treatment sizes leave %s for the default treatment', holdout, tostring(default_size)))
  end
  sizes[1] = default_size
  if total + default_size ~= 100 then
    fail(lua and 'treatments' or 'AdditionalTreatments',
      string.format('holdout (%d) and treatment sizes must add up to 100, not %d', holdout, total + default_size))
  end
  p.Herald.DefaultSizePercent = default_size
  if p.MessageConfiguration == nil and p.TemplateConfiguration == nil then
    fail(lua and 'message' or 'MessageConfiguration', 'required (or TemplateConfiguration)')
  end

  if type(p.Schedule) ~= 'table' then fail('Schedule', 'required') end
  local spath = lua and 'schedule' or 'Schedule'
  local sched, smsg, sfield = time.check_schedule(p.Schedule, { path = spath, now_ms = 0 })
  if not sched then fail(sfield, smsg:sub(#sfield + 3)) end
  for i, t in ipairs(additional) do
    if t.Schedule ~= nil then
      local path = lua and ('treatments[' .. (i + 1) .. '].schedule') or ('AdditionalTreatments[' .. (i - 1) .. '].Schedule')
      local s, msg, field = time.check_schedule(t.Schedule, { path = path, now_ms = 0 })
      if not s then fail(field, msg:sub(#field + 3)) end
      if s.frequency == 'EVENT' then
        fail(path .. '.Frequency', "ONCE, HOURLY, DAILY, WEEKLY or MONTHLY: event triggers belong to the campaign's schedule")
      end
      if sched.frequency == 'EVENT' then
        fail(path, "the treatments of an event-triggered campaign follow its trigger: no schedule of their own")
      end
    end
  end
  if sched.frequency == 'EVENT' then
    local f = p.Schedule.EventFilter
    local fp = spath .. '.EventFilter'
    if type(f) ~= 'table' then fail(fp, 'required for an EVENT schedule') end
    if f.FilterType ~= nil and f.FilterType ~= 'ENDPOINT' and f.FilterType ~= 'SYSTEM' then
      fail(fp .. '.FilterType', "'ENDPOINT' or 'SYSTEM'")
    end
    local d = f.Dimensions
    local dp = fp .. '.Dimensions'
    if type(d) ~= 'table' or type(d.EventType) ~= 'table' then
      fail(dp .. '.EventType.Values', 'a non-empty list of event types')
    end
    event_types(dp .. '.EventType.Values', d.EventType.Values, true)
    local dt = d.EventType.DimensionType
    -- anything but INCLUSIVE is matched as EXCLUSIVE: a misspelt INCLUSIVE would invert it
    if dt ~= nil and dt ~= 'INCLUSIVE' and dt ~= 'EXCLUSIVE' then
      fail(dp .. '.EventType.DimensionType', "'INCLUSIVE' or 'EXCLUSIVE'")
    end
    if d.Metrics ~= nil and type(d.Metrics) ~= 'table' then fail(dp .. '.Metrics', 'expected an object') end
    for k, m in pairs(d.Metrics or {}) do
      local mp = dp .. '.Metrics.' .. tostring(k)
      if type(m) ~= 'table' then fail(mp, 'expected an object { ComparisonOperator =, Value = }') end
      local ok_op = false
      for _, op in pairs(OPERATORS) do if m.ComparisonOperator == op then ok_op = true end end
      if not ok_op then fail(mp .. '.ComparisonOperator', 'GREATER_THAN, GREATER_THAN_OR_EQUAL, LESS_THAN, LESS_THAN_OR_EQUAL or EQUAL') end
      if type(m.Value) ~= 'number' then fail(mp .. '.Value', 'a number') end
    end
    if d.Attributes ~= nil and type(d.Attributes) ~= 'table' then fail(dp .. '.Attributes', 'expected an object') end
    for k, a in pairs(d.Attributes or {}) do
      local ap = dp .. '.Attributes.' .. tostring(k)
      if type(a) ~= 'table' then fail(ap, 'expected an object { AttributeType =, Values = }') end
      local t = a.AttributeType or 'INCLUSIVE'
      if t ~= 'INCLUSIVE' and t ~= 'EXCLUSIVE' and t ~= 'CONTAINS' then
        fail(ap .. '.AttributeType', 'INCLUSIVE, EXCLUSIVE or CONTAINS')
      end
      attribute_values(ap .. '.Values', a.Values, true)
    end
  end
  local policy = p.Herald.QuietTimePolicy
  if policy == nil then
    -- Pinpoint skips messages that fall in quiet time; herald's Lua form defers by default.
    policy = lua and 'defer' or 'skip'
    p.Herald.QuietTimePolicy = policy
  end
  if policy ~= 'defer' and policy ~= 'skip' then fail('Herald.QuietTimePolicy', "'defer' or 'skip'") end
  local l = p.Limits
  if l ~= nil then
    if type(l) ~= 'table' then fail('Limits', 'expected an object') end
    local lp = lua and 'limits.' or 'Limits.'
    only(lua and 'limits' or 'Limits', l, set('Daily', 'Total', 'MessagesPerSecond', 'MaximumDuration', 'Session'))
    -- Pinpoint refuses caps above 100 messages to one endpoint (a day, or over the campaign's
    -- life): a definition carried over from it never has one, and a larger cap is a typo
    int_field(lp .. (lua and 'daily' or 'Daily'), l.Daily, 0, 100)
    int_field(lp .. (lua and 'total' or 'Total'), l.Total, 0, 100)
    int_field(lp .. (lua and 'messages_per_second' or 'MessagesPerSecond'), l.MessagesPerSecond, 1, 20000)
    int_field(lp .. (lua and 'maximum_duration' or 'MaximumDuration'), l.MaximumDuration, 60)
    int_field(lp .. (lua and 'session' or 'Session'), l.Session, 0)
  end
  -- herald's trigger and staleness settings (the Lua form made them from durations)
  local hs = p.Herald
  int_field(lua and 'stale_after' or 'Herald.StaleAfterSeconds', hs.StaleAfterSeconds, 1)
  int_field(lua and 'schedule.event.delay' or 'Herald.TriggerDelaySeconds', hs.TriggerDelaySeconds, 0)
  int_field(lua and 'schedule.event.expiry' or 'Herald.TriggerExpirySeconds', hs.TriggerExpirySeconds, 1)
  if hs.CancelOnEventTypes ~= nil then
    event_types(lua and 'schedule.event.cancel_on' or 'Herald.CancelOnEventTypes', hs.CancelOnEventTypes, not lua)
  end
  if p.Hook ~= nil and (type(p.Hook) ~= 'table' or (p.Hook.Mode ~= nil and p.Hook.Mode ~= 'FILTER' and p.Hook.Mode ~= 'DELIVERY')) then
    fail('Hook.Mode', "'FILTER' or 'DELIVERY'")
  end
  p.Herald.Deliver = check_deliver(lua and 'deliver' or 'Herald.Deliver', p.Herald.Deliver)
  if p.Herald.Winner ~= nil then check_winner(p, lua, #additional + 1) end
  if p.AdditionalTreatments == nil or #p.AdditionalTreatments == 0 then p.AdditionalTreatments = json.array({}) end
  return sizes
end

local function instantiate(p, seg, hook, lua, predicate)
  local sizes = build(p, lua)
  p.SegmentId = seg.name
  return setmetatable({
    id = p.Name, name = p.Name, definition = p, segment = seg, hook = hook, predicate = predicate,
    holdout = p.HoldoutPercent or 0, sizes = sizes,
  }, Campaign)
end

-- The stored definition: canonical JSON, so a change to any of it makes a new version.
function Campaign:definition_json()
  return json.encode(self.definition, { sort = true })
end

-- The arm of a cohort: treatment index (0-based) or -1 for the holdout.
function Campaign:arm(cohort)
  cohort = tonumber(cohort)
  if cohort < self.holdout then return -1 end
  local edge = self.holdout
  for i, size in ipairs(self.sizes) do
    edge = edge + size
    if cohort < edge then return i - 1 end
  end
  return #self.sizes - 1
end

-- The cohorts of the A/B winner's test share (nil without one): the first TestPercent of
-- each treatment's cohorts, at least one, so every treatment is tested on its own endpoints.
function Campaign:test_cohorts()
  local w = self.definition.Herald.Winner
  if w == nil then return nil end
  local out, edge = {}, self.holdout
  for _, size in ipairs(self.sizes) do
    local k = math.max(1, math.floor(size * w.TestPercent / 100 + 0.5))
    for c = edge, edge + math.min(k, size) - 1 do out[#out + 1] = c end
    edge = edge + size
  end
  return out
end

-- The schedule of this version. 'IMMEDIATE' stands for when the campaign started: its first
-- run's time once it has run (a later version, say a corrected message, keeps the cadence
-- rather than starting it again, which would send a second time that day), else the version's
-- creation time. An event campaign has no runs of its own: it started when it was first
-- stored as an event campaign, where its trigger cursor starts, so an edit does not drop the
-- events from before it that are still to be processed.
function Campaign:schedule()
  if self._schedule == nil then
    self._schedule = assert(time.check_schedule(self.definition.Schedule, { now_ms = self:immediate_ms() }))
  end
  return self._schedule
end

function Campaign:immediate_ms()
  if self.definition.Schedule.Frequency == 'EVENT' then return self.event_since_ms or self.version_ms end
  return self.started_ms or self.version_ms
end

function Campaign:is_immediate()
  return self.definition.Schedule.StartTime == 'IMMEDIATE'
end

-- The schedules runs follow: stream 0 is the campaign's schedule (the holdout, the default
-- treatment and every treatment without its own schedule), stream k treatment k's own
-- Schedule. A treatment's schedule without QuietTime keeps the campaign's quiet time, so
-- overriding when a treatment is sent never drops the protection of quiet hours.
function Campaign:streams()
  if self._streams == nil then
    local def = self.definition
    local streams = { { id = 0, schedule = self:schedule(), immediate = self:is_immediate() } }
    for k, t in ipairs(def.AdditionalTreatments) do
      if t.Schedule ~= nil then
        local sdef = {}
        for f, v in pairs(t.Schedule) do sdef[f] = v end
        if sdef.QuietTime == nil then sdef.QuietTime = def.Schedule.QuietTime end
        streams[#streams + 1] = { id = k, treatment = k, immediate = sdef.StartTime == 'IMMEDIATE',
          schedule = assert(time.check_schedule(sdef, { now_ms = self:immediate_ms() })) }
      end
    end
    self._streams = streams
  end
  return self._streams
end

-- The stream treatment t (0-based) follows.
function Campaign:stream_of(t)
  local own = t > 0 and self.definition.AdditionalTreatments[t].Schedule ~= nil
  return own and t or 0
end

function Campaign:stale_after_ms()
  local s = self.definition.Herald.StaleAfterSeconds
  if s == nil then
    s = self.definition.Schedule.Frequency == 'EVENT' and campaign.DEFAULT_TRIGGER_STALE_AFTER_S
      or campaign.DEFAULT_STALE_AFTER_S
  end
  return s * 1000
end

-- A campaign's audience as stored data, so a stored copy runs without its source's file:
-- declarative segments as their WriteSegmentRequest, imports by stored id and version,
-- compositions of those. Returns the table, or nil and what cannot be stored.
local function encode_audience(seg)
  if seg.filter then return nil, 'segment filter' end
  if rawget(seg, 'compile') or rawget(seg, 'contains') then return nil, 'segment compile function' end
  if seg.children then
    local kids = {}
    for i, child in ipairs(seg.children) do
      local k, why = encode_audience(child)
      if k == nil then return nil, why end
      kids[i] = k
    end
    return { Name = seg.name, Op = seg.op, Children = kids }
  end
  if seg.static then return { Name = seg.name, StoredId = seg.id, Version = seg.version } end
  return { Name = seg.name, Request = seg.definition }
end

local function decode_audience(a)
  if a.Children then
    local kids = { name = a.Name }
    for i, child in ipairs(a.Children) do
      local k, err = decode_audience(child)
      if k == nil then return nil, err end
      kids[i] = k
    end
    return segment[a.Op:lower()](kids)
  end
  if a.StoredId then return segment.load(a.StoredId, { version = a.Version }) end
  local ok, seg = pcall(segment.from_pinpoint, a.Request, { name = a.Name })
  if not ok then return nil, seg end
  return seg
end

-- The Lua functions c depends on (nil: none), and its audience as JSON (nil: not storable).
local function origin(c)
  local lua = {}
  if c.hook then lua[#lua + 1] = 'hook' end
  if c.predicate then lua[#lua + 1] = 'event predicate' end
  local audience, why = encode_audience(c.segment)
  if audience == nil then lua[#lua + 1] = why end
  return #lua > 0 and table.concat(lua, ', ') or nil, audience and json.encode(audience, { sort = true })
end

-- The time of campaign id's first scheduled run (nil: none yet), where an IMMEDIATE schedule's
-- cadence starts.
local function first_run_ms(id)
  local first = store.query('SELECT min(scheduled_ms) AS at FROM campaign_runs WHERE app_id = ? AND campaign_id = ?'
    .. ' AND trigger_seq = 0', core.app(), id)
  return first and first[1] and first[1].at or nil
end

-- When campaign id was first stored as an event campaign (nil: never), where an IMMEDIATE
-- event schedule starts.
local function event_since_ms(id)
  local first = store.query('SELECT min(created_ms) AS at FROM campaign_versions WHERE app_id = ? AND campaign_id = ?'
    .. " AND CASE WHEN json_valid(definition) THEN json_extract(definition, '$.Schedule.Frequency') END = 'EVENT'",
    core.app(), id)
  return first and first[1] and first[1].at or nil
end

-- The definition file being loaded (set by the loader): campaigns record it as their source.
campaign.source = nil

-- While the loader runs a definition file (from mark() to commit() or rollback()), the
-- campaigns it defines are collected here and stored only once the whole file has loaded, all
-- in one transaction: a file that fails part-way stores nothing, so no process (a running
-- `herald run` takes stored versions at its next pass) adopts or sends what it defined.
local pending = nil

-- Stores campaign c's definition (a new version when it changed) and its origin: the file
-- that defines it (source; nil for a stored copy), its audience and the Lua it needs.
local function store_campaign(c, source)
  local version, version_ms = outbox.define_campaign(c.id, c.name, c:definition_json())
  c.version, c.version_ms = version, version_ms
  c.started_ms, c.event_since_ms = first_run_ms(c.id), event_since_ms(c.id)
  local lua, audience = origin(c)
  outbox.set_campaign_origin(c.id, source, audience, lua)
end

-- "file:line: " of the function `level` levels up from the caller, as error(msg, level) would
-- name it there ('' when that is not Lua code). Campaign code has no debug library: this is
-- where a campaign is defined, which errors about what its hook returns name (the hook's own
-- line is not known once it has returned).
local function where(level)
  local _, w = pcall(error, '', level + 2)
  return w
end

-- Where campaign c was defined, for an error about a second definition of its name.
-- c.defined_at is false for a stored copy, which no file defines.
local function defined_at(c)
  if c.defined_at == false then return ' (a stored copy: herald campaign copy)' end
  if c.defined_at == nil or c.defined_at == '' then return '' end
  return ' at ' .. c.defined_at:gsub(': $', '')
end

-- Its callers tail-call it, so their caller (the definition's line) is `level` up from here.
-- The error about a name defined twice names both definitions: the second at its line, the
-- first in the message, since two files (or two copies) may clash far apart.
local function register(c, level, stored_copy)
  local first = campaign.defined[c.name]
  if first then
    error('herald.campaign: a campaign named ' .. c.name .. ' is already defined'
      .. defined_at(first), level)
  end
  c.defined_at = not stored_copy and where(level)
  if pending and not stored_copy then
    pending[#pending + 1] = c
  else
    store_campaign(c, not stored_copy and campaign.source or nil)
  end
  campaign.defined[c.name] = c
  campaign.order[#campaign.order + 1] = c
  return c
end

local function raise(name, e, level)
  if type(e) == 'table' then
    local path = e.path ~= '' and e.path or 'campaign'
    error(string.format('herald.campaign %s: %s: %s', tostring(name), path, e.msg), level + 1)
  end
  error(e, level + 1)
end

local function define(def)
  local ok, c = pcall(function()
    local p, predicate = from_lua(def)
    if not segment.is_segment(def.segment) then fail('segment', 'required: a herald.segment') end
    return instantiate(p, def.segment, def.hook, true, predicate)
  end)
  if not ok then raise(type(def) == 'table' and def.name or '?', c, 3) end
  c.where = where(3)
  return register(c, 3)
end

-- A Pinpoint WriteCampaignRequest (JSON text or decoded table) as is. SegmentId names a
-- segment: pass it as opts.segment (or opts.segments = {id = segment}); opts.hook is the Lua
-- function a FILTER Hook calls; opts.predicate an event campaign's extra test.
function campaign.from_pinpoint(doc, opts)
  opts = opts or {}
  local name = '?'
  local ok, c = pcall(function()
    local p = doc
    if type(doc) == 'string' then
      local d, err = json.decode(doc)
      if d == nil then fail('', 'not JSON: ' .. tostring(err)) end
      p = d
    end
    if type(p) ~= 'table' then fail('', 'expected a WriteCampaignRequest object') end
    name = p.Name or '?'
    local seg = opts.segment or (opts.segments and opts.segments[p.SegmentId])
    if not segment.is_segment(seg) then
      fail('SegmentId', string.format("segment '%s': pass it as from_pinpoint(json, { segment = ... })", tostring(p.SegmentId)))
    end
    if p.Hook ~= nil and p.Hook.Mode == 'FILTER' and type(opts.hook) ~= 'function' then
      fail('Hook', 'a FILTER hook needs its Lua function: from_pinpoint(json, { hook = function(endpoints) ... end })')
    end
    return instantiate(p, seg, opts.hook, false, opts.predicate)
  end)
  if not ok then raise(name, c, 2) end
  c.where = where(2)
  return register(c, 2)
end

-- Defines a copy of a loaded campaign under new_name (same segment, hook and settings), in
-- the script that calls it: the copy is defined again whenever the script loads, so it keeps
-- the source's Lua functions. `herald campaign copy` makes a stored copy instead.
function campaign.copy(name, new_name)
  local src = campaign.defined[name]
  if src == nil then error('herald.campaign.copy: no campaign named ' .. tostring(name), 2) end
  local p = json.decode(src:definition_json())
  p.Name = new_name
  p.Herald.CopyOf = name
  local ok, c = pcall(instantiate, p, src.segment, src.hook, false, src.predicate)
  if not ok then raise(new_name, c, 2) end
  c.where = src.where
  return register(c, 2)
end

---------------------------------------------------------------------------------------------
-- Lifecycle and reports over the store (usable outside `herald run`, e.g. from the CLI)

local function q(sql, ...)
  local rows, err = store.query(sql, ...)
  if rows == nil then error(err, 0) end
  return rows
end

local function stored(name)
  return q('SELECT id, name, version, state, definition, source, error, pause_reason FROM campaigns WHERE app_id = ? AND id = ?',
    core.app(), name)[1]
end

-- Pause: no new runs, and the rows of a run in progress are not claimed until resume, which
-- continues exactly where it stopped. A COMPLETED campaign has nothing left to hold, and a
-- resume could not tell that it had completed. Returns true or nil, err.
function campaign.pause(name)
  local c = stored(name)
  if c == nil then return nil, 'unknown campaign ' .. tostring(name) end
  if c.state == 'DELETED' then return nil, 'campaign ' .. name .. ' is deleted' end
  if c.state == 'COMPLETED' then
    return nil, 'campaign ' .. name .. ' is COMPLETED: it has no runs left to pause'
  end
  outbox.set_campaign_state(name, 'PAUSED')
  return true
end

function campaign.resume(name)
  local c = stored(name)
  if c == nil then return nil, 'unknown campaign ' .. tostring(name) end
  if c.state ~= 'PAUSED' then return nil, 'campaign ' .. name .. ' is ' .. c.state .. ', not PAUSED' end
  local executing = q("SELECT count(*) AS n FROM campaign_runs WHERE app_id = ? AND campaign_id = ?"
    .. " AND state = 'EXECUTING'", core.app(), name)[1].n
  -- its definition failed to load while it was paused: it resumes INVALID, its rows held
  local state = c.error and 'INVALID' or executing > 0 and 'EXECUTING' or 'PENDING_NEXT_RUN'
  outbox.set_campaign_state(name, state)
  return true
end

-- Delete: no more runs; messages not yet sent are recorded SKIPPED (CAMPAIGN_DELETED).
function campaign.delete(name)
  local c = stored(name)
  if c == nil then return nil, 'unknown campaign ' .. tostring(name) end
  outbox.set_campaign_state(name, 'DELETED')
  outbox.cancel(name, 'CAMPAIGN_DELETED')
  return true
end

-- A stored copy of campaign name as new_name (`herald campaign copy`): its definition and
-- audience are stored, so it runs in any later `herald run` of this database and application
-- on its own, whatever files that run loads. A campaign that depends on Lua functions (a
-- hook, an event predicate, a segment filter) cannot be copied this way: the error says so
-- and points to herald.campaign.copy in its definition file. Returns true or nil, err.
function campaign.copy_stored(name, new_name)
  if type(new_name) ~= 'string' or not new_name:match('^[%w][%w_%-%.]*$') or #new_name > 255 then
    return nil, 'new name: up to 255 letters, digits, _ - . (starting with a letter or digit)'
  end
  local src = q('SELECT definition, audience FROM campaigns WHERE app_id = ? AND id = ?', core.app(), name)[1]
  if src == nil then return nil, 'unknown campaign ' .. tostring(name) end
  local p = json.decode(src.definition)
  p.Name = new_name
  p.Herald.CopyOf = name
  local def = json.encode(p, { sort = true })
  -- the definition as the copy's first load will store it, so that load makes no new version
  local seg = src.audience and decode_audience(json.decode(src.audience))
  if seg then
    local ok, c = pcall(instantiate, p, seg, nil, false, nil)
    if ok then def = c:definition_json() end
  end
  return outbox.copy_campaign(name, new_name, def)
end

-- Every campaign of definition file source becomes INVALID with err (the load failure, with
-- its file:line); its pending rows are held until the file loads again. Returns how many, or
-- nil and the store's error.
function campaign.invalidate_source(source, err)
  return outbox.invalidate_campaigns(nil, source, err)
end

-- Campaign id becomes INVALID with err (e.g. its run could not be materialised).
function campaign.invalidate(id, err)
  return outbox.invalidate_campaigns(id, nil, err)
end

-- The stored campaigns of the application: {id, state, version, source, error, copy_of}.
function campaign.list()
  local rows = q([[SELECT id, state, version, source, error, json_extract(definition, '$.Herald.CopyOf') AS copy_of
    FROM campaigns WHERE app_id = ? ORDER BY id]], core.app())
  return rows
end

local function iso(ms)
  return ms and time.format(ms) or nil
end

-- The name of treatment t (0-based; -1 the holdout) under a stored definition def: Pinpoint's
-- shape, or the {treatments = {{name =}}} that databases written by older builds hold. A
-- definition that is not stored (nil) or names no such treatment gives 'treatment N'. Runs
-- name their treatments from their own version: a later one may have fewer, or rename them.
function campaign.treatment_name(def, t)
  if t < 0 then return 'holdout' end
  if type(def) == 'table' then
    if type(def.treatments) == 'table' then
      local tr = def.treatments[t + 1]
      if type(tr) == 'table' and type(tr.name) == 'string' then return tr.name end
    elseif t == 0 then
      return type(def.TreatmentName) == 'string' and def.TreatmentName or 'default'
    elseif type(def.AdditionalTreatments) == 'table' then
      for _, a in ipairs(def.AdditionalTreatments) do
        if tonumber(a.Id) == t and type(a.TreatmentName) == 'string' then return a.TreatmentName end
      end
    end
  end
  return 'treatment ' .. t
end

-- The stored definitions of campaign id (of application app; nil: the current one) by
-- version: a function(version) -> the decoded definition, or nil when that version is not
-- stored. Each is read once (a stored version never changes).
function campaign.versions(id, app)
  local cache = {}
  return function(version)
    local d = cache[version]
    if d == nil then
      d = false
      local text = version and outbox.campaign_definition(id, version, app)
      if text then
        local ok, def = pcall(json.decode, text)
        if ok and type(def) == 'table' then d = def end
      end
      cache[version] = d
    end
    return d or nil
  end
end

-- Pinpoint's activity State and Result of activity a (a run's treatment) of run r, its
-- campaign in state cstate. Pinpoint's states, not the store's: a run in progress is RUNNING,
-- or PAUSED while its campaign is paused (or INVALID: its messages are held alike); what a
-- deletion cut short is CANCELLED, as is a run skipped whole (STALE, in its
-- ExecutionMetrics); a finished run is COMPLETED with its Result. Only a finished run has a
-- Result.
local function activity_state(r, a, cstate)
  if r.state == 'SKIPPED' then return 'CANCELLED', nil end
  if cstate == 'DELETED' and (r.state == 'EXECUTING' or a.ExecutionMetrics.CAMPAIGN_DELETED) then
    return 'CANCELLED', nil
  end
  if r.state == 'EXECUTING' then
    return (cstate == 'PAUSED' or cstate == 'INVALID') and 'PAUSED' or 'RUNNING', nil
  end
  return 'COMPLETED', r.result
end

-- Pinpoint's ActivityResponse, one per run and treatment, newest run first; nil, err for an
-- unknown campaign.
function campaign.activities(name)
  local c = stored(name)
  if c == nil then return nil, 'unknown campaign ' .. tostring(name) end
  local out = {}
  local runs = q('SELECT * FROM campaign_runs WHERE app_id = ? AND campaign_id = ? ORDER BY scheduled_ms DESC',
    core.app(), name)
  for _, r in ipairs(runs) do
    local groups = q([[SELECT treatment, state, reason, count(*) AS n FROM outbox WHERE run_id = ?
      GROUP BY treatment, state, reason ORDER BY treatment]], r.id)
    local zones = q([[SELECT treatment, count(DISTINCT coalesce(zone, '')) AS total,
      count(DISTINCT CASE WHEN state IN ('PENDING', 'CLAIMED') THEN coalesce(zone, '') END) AS open
      FROM outbox WHERE run_id = ? GROUP BY treatment]], r.id)
    local by = {}
    local function arm(t)
      local a = by[t]
      if a == nil then
        a = {
          ApplicationId = core.app(), CampaignId = name, Id = r.id .. ':' .. t,
          TreatmentId = t < 0 and 'holdout' or tostring(t),
          ScheduledStart = iso(r.scheduled_ms), Start = iso(r.started_ms), End = r.ended_at,
          TotalEndpointCount = 0, SuccessfulEndpointCount = 0, TimezonesTotalCount = 0,
          TimezonesCompletedCount = 0, ExecutionMetrics = {}, CampaignVersion = r.campaign_version,
        }
        by[t] = a
        out[#out + 1] = a
      end
      return a
    end
    if #groups == 0 then
      local arms = r.arms and json.decode(r.arms)
      local first = arms and arms[1] or 0
      local a = arm(first < 0 and (arms[2] or 0) or first)
      if r.reason then a.ExecutionMetrics[r.reason] = 1 end
    end
    for _, g in ipairs(groups) do
      local a = arm(g.treatment)
      a.TotalEndpointCount = a.TotalEndpointCount + g.n
      if g.state == 'SENT' then a.SuccessfulEndpointCount = a.SuccessfulEndpointCount + g.n end
      local key = g.reason or g.state
      a.ExecutionMetrics[key] = (a.ExecutionMetrics[key] or 0) + g.n
    end
    for _, z in ipairs(zones) do
      local a = arm(z.treatment)
      a.TimezonesTotalCount = z.total
      a.TimezonesCompletedCount = z.total - z.open
    end
    for _, a in pairs(by) do a.State, a.Result = activity_state(r, a, c.state) end
  end
  return out
end

-- The arm (treatment index, -1 the holdout) and its name of a cohort under a stored
-- definition: the same split as Campaign:arm.
local function stored_arm(def, cohort)
  local edge = def.HoldoutPercent or 0
  if cohort < edge then return -1, 'holdout' end
  local extra = def.AdditionalTreatments or {}
  local sizes = { def.Herald and def.Herald.DefaultSizePercent or 100 }
  for i, t in ipairs(extra) do sizes[i + 1] = t.SizePercent end
  local arm = #sizes - 1
  for i, size in ipairs(sizes) do
    edge = edge + size
    if cohort < edge then arm = i - 1; break end
  end
  return arm, campaign.treatment_name(def, arm)
end

-- For each run of campaign name: what happened to endpoint_id, and why.
function campaign.why(name, endpoint_id)
  local c = stored(name)
  if c == nil then return nil, 'unknown campaign ' .. tostring(name) end
  local out = {}
  local runs = q([[SELECT r.id, r.run_index, r.campaign_version, r.scheduled_ms, r.state AS run_state,
      r.reason AS run_reason, r.arms, o.treatment, o.state, o.reason, o.due_ms, o.zone, o.note, o.message_id,
      o.attempts, o.claimed_ms
    FROM campaign_runs r LEFT JOIN outbox o ON o.run_id = r.id AND o.endpoint_id = ?
    WHERE r.app_id = ? AND r.campaign_id = ? ORDER BY r.scheduled_ms]], endpoint_id, core.app(), name)
  local cohort = q('SELECT cohort_id FROM endpoints WHERE app_id = ? AND id = ?', core.app(), endpoint_id)[1]
  local defs = campaign.versions(name)
  local function arm_of(version)
    local def = defs(version)
    if cohort == nil or def == nil then return nil end
    return stored_arm(def, cohort.cohort_id)
  end
  for _, r in ipairs(runs) do
    local line = { run = r.id, index = r.run_index, version = r.campaign_version,
                   scheduled = iso(r.scheduled_ms), run_state = r.run_state }
    local arm, arm_name = arm_of(r.campaign_version)
    line.treatment, line.treatment_name = arm, arm_name
    if r.run_state == 'SKIPPED' then
      line.outcome, line.why = 'NOT_SENT', 'the whole run was skipped: ' .. tostring(r.run_reason)
    elseif r.state == nil then
      local arms = r.arms and json.decode(r.arms)
      local in_run = arms == nil or arm == nil
      for _, a in ipairs(arms or {}) do if a == arm then in_run = true end end
      if in_run then
        line.outcome, line.why = 'NOT_TARGETED', 'not in the segment when the run was materialised'
      elseif arm < 0 then
        line.outcome, line.why = 'NOT_IN_RUN', "the holdout is recorded on the campaign schedule's runs;"
          .. ' this run was for treatments with schedules of their own'
      else
        line.outcome, line.why = 'NOT_IN_RUN', string.format("its arm '%s' follows %s; this run was for other arms",
          arm_name, arm > 0 and defs(r.campaign_version).AdditionalTreatments[arm].Schedule
            and 'its own schedule' or "the campaign's schedule")
      end
    else
      -- the row's treatment, which an A/B decision may have changed from the cohort's arm
      line.treatment, line.state, line.reason = r.treatment, r.state, r.reason
      if r.treatment ~= arm then line.treatment_name = campaign.treatment_name(defs(r.campaign_version), r.treatment) end
      line.due, line.zone, line.zone_note, line.message_id = iso(r.due_ms), r.zone, r.note, r.message_id
      line.outcome = r.state
      line.why = r.reason or (r.state == 'PENDING' and 'due at ' .. iso(r.due_ms)) or r.state
      if r.state == 'WAITING' then line.why = 'held back until the A/B test of this run is decided' end
    end
    local d = q('SELECT decision, reason, decided_ms FROM ab_decisions WHERE run_id = ?', r.id)[1]
    if d then
      line.ab_decision = string.format('A/B decision at %s: %s, %s', iso(d.decided_ms), d.decision, d.reason)
    end
    out[#out + 1] = line
  end
  return out
end

function campaign.status(name)
  local c = stored(name)
  if c == nil then return nil, 'unknown campaign ' .. tostring(name) end
  local activities, err = campaign.activities(name)
  if activities == nil then error(err, 0) end
  return { Id = c.id, Name = c.name, State = c.state, Version = c.version, Source = c.source,
           Error = c.error, PauseReason = c.pause_reason, Definition = json.decode(c.definition),
           Activities = activities }
end

-- The lifecycle and report calls above fail at run time as Lua's convention has it: nil and
-- the store's message (a busy, read-only or missing database: it names the database and what
-- failed), not a raised error with a traceback, so the CLI or a script reports it in a line.
-- They are written raising; these wrappers answer.
for _, name in ipairs({ 'pause', 'resume', 'delete', 'copy_stored', 'invalidate_source', 'list', 'activities',
    'why', 'status' }) do
  local raising = campaign[name]
  campaign[name] = function(...)
    local r = table.pack(pcall(raising, ...))
    if not r[1] then
      return nil, (tostring(r[2]):match('^[^\n]*'):gsub('^[^\n]-%.lua:%d+: ', ''))
    end
    return table.unpack(r, 2, r.n)
  end
end

-- Loads the stored copies (`herald campaign copy`): each runs with its own stored definition
-- and audience. A copy whose audience no longer loads (a stored segment was removed) becomes
-- INVALID with the reason. Returns how many loaded, and the failures' messages.
function campaign.load_copies()
  local n, failures = 0, {}
  local rows = q([[SELECT id, definition, audience FROM campaigns WHERE app_id = ? AND state <> 'DELETED'
    AND source IS NULL AND audience IS NOT NULL AND json_extract(definition, '$.Herald.CopyOf') IS NOT NULL
    ORDER BY id]], core.app())
  for _, r in ipairs(rows) do
    if campaign.defined[r.id] == nil then
      local seg, err = decode_audience(json.decode(r.audience))
      local ok, c = false, err
      if seg then ok, c = pcall(instantiate, json.decode(r.definition), seg, nil, false, nil) end
      if ok then
        register(c, 1, true)
        n = n + 1
      else
        local msg = string.format('stored copy %s: %s', r.id, type(c) == 'table' and (c.path .. ': ' .. c.msg) or tostring(c))
        campaign.invalidate(r.id, msg)
        failures[#failures + 1] = msg
      end
    end
  end
  return n, failures
end

-- Takes the version of loaded campaign c that was stored after c loaded (`herald campaign load`
-- of an edited file while `herald run` runs, or another process): row is the stored {version,
-- version_ms, definition, audience, lua}. The stored definition is the version, and a
-- declarative segment is stored with it; Lua functions are not stored, so they stay those of
-- the files this process loaded: c's hook, its event predicate, and its Lua-filtered segment
-- when the version names the same segment. A version that needs one c was not loaded with
-- cannot be taken. Returns the campaign that replaces c (in campaign.defined and
-- campaign.order), or nil and why.
function campaign.adopt(c, row)
  local loaded = c.loaded or { hook = c.hook, predicate = c.predicate, segment = c.segment, where = c.where }
  local ok, p = pcall(json.decode, row.definition)
  if not ok or type(p) ~= 'table' then return nil, 'its stored definition is not JSON' end
  local lua = row.lua or ''
  local seg
  if row.audience then
    local err
    seg, err = decode_audience(json.decode(row.audience))
    if seg == nil then return nil, 'its segment does not load: ' .. tostring(err) end
  elseif p.SegmentId == loaded.segment.name then
    seg = loaded.segment
  else
    return nil, string.format("its segment '%s' has Lua code (%s) that this process did not load",
      tostring(p.SegmentId), lua)
  end
  local hook = type(p.Hook) == 'table' and loaded.hook or nil
  if hook == nil and type(p.Hook) == 'table' and p.Hook.Mode == 'FILTER' then
    return nil, 'its FILTER hook is a Lua function that this process did not load'
  end
  local predicate
  if lua:find('event predicate', 1, true) then
    predicate = loaded.predicate
    if predicate == nil then return nil, 'its event predicate is a Lua function that this process did not load' end
  end
  local okc, nc = pcall(instantiate, p, seg, hook, false, predicate)
  if not okc then return nil, type(nc) == 'table' and (nc.path .. ': ' .. nc.msg) or tostring(nc) end
  nc.version, nc.version_ms, nc.started_ms = row.version, row.version_ms, first_run_ms(c.id)
  nc.event_since_ms = event_since_ms(c.id)
  nc.loaded, nc.origin, nc.where = loaded, { audience = row.audience, lua = row.lua }, loaded.where
  nc.defined_at = c.defined_at
  campaign.defined[nc.name] = nc
  for i, x in ipairs(campaign.order) do
    if x == c then campaign.order[i] = nc end
  end
  return nc
end

-- A definition file that fails part-way leaves none of its campaigns behind: the loader
-- takes a mark before the file, which starts collecting its campaigns; once the file has
-- loaded, commit() stores them (the loader holds a store transaction around it), and on
-- failure rollback(mark) drops them, nothing of them stored.
function campaign.mark()
  pending = {}
  return #campaign.order
end

-- Stores the campaigns collected since mark(), with source as their definition file.
-- Returns how many.
function campaign.commit(source)
  local list = pending or {}
  pending = nil
  for _, c in ipairs(list) do store_campaign(c, source) end
  return #list
end

function campaign.rollback(mark)
  pending = nil
  for i = #campaign.order, mark + 1, -1 do
    campaign.defined[campaign.order[i].name] = nil
    campaign.order[i] = nil
  end
end

-- Not a tail call: define raises at its caller's caller, the script's line.
return setmetatable(campaign, { __call = function(_, def)
  local c = define(def)
  return c
end })
