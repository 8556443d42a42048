-- Campaigns: a segment, a message per treatment, a holdout, a schedule and a delivery channel.
--
-- Audience split follows Pinpoint: every endpoint has a CohortId 0-99 fixed at creation;
-- cohorts [0, holdout) are the holdout, the following SizePercent cohorts go to the first
-- treatment, and so on, so an endpoint stays in the same arm across runs and versions.
local segment = require 'herald.segment'
local template = require 'herald.template'
local json = require 'herald.core.json'
local outbox = require 'herald.core.outbox'

local campaign = {}

local Campaign = {}
Campaign.__index = Campaign

campaign.defined = {}   -- name -> campaign, in definition order too
campaign.order = {}

local function fail(path, msg)
  error({ path = path, msg = msg }, 0)
end

local function check_template(path, text)
  local ok, err = template.check(text)
  if not ok then fail(path, err) end
end

local function check_message(path, m)
  if type(m) ~= 'table' then fail(path, 'expected a table { subject =, body = }') end
  for k in pairs(m) do
    if k ~= 'subject' and k ~= 'body' and k ~= 'html' then
      fail(path .. '.' .. tostring(k), 'unknown field (allowed: subject, body, html)')
    end
  end
  if m.body == nil then fail(path .. '.body', 'required') end
  check_template(path .. '.body', m.body)
  if m.subject ~= nil then check_template(path .. '.subject', m.subject) end
  if m.html ~= nil then check_template(path .. '.html', m.html) end
end

local function parse_time(path, s)
  local y, mo, d, h, mi, sec = s:match('^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)Z$')
  if not y then fail(path, "expected 'IMMEDIATE' or a UTC time like 2026-12-01T09:00:00Z, got '" .. s .. "'") end
  -- days from civil date (proleptic Gregorian), so no dependency on the local time zone
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo < 1 or mo > 12 or d < 1 or d > 31 then fail(path, "not a valid date: '" .. s .. "'") end
  local yy = mo <= 2 and y - 1 or y
  local era = (yy >= 0 and yy or yy - 399) // 400
  local yoe = yy - era * 400
  local doy = (153 * (mo + (mo > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return ((days * 24 + tonumber(h)) * 60 + tonumber(mi)) * 60000 + tonumber(sec) * 1000
end

local function check_deliver(path, d)
  if d == nil or d == 'stdout' then return { type = 'stdout' } end
  if d == 'channels' then return { type = 'channels' } end
  if type(d) == 'table' and type(d.file) == 'string' and d.file ~= '' then
    return { type = 'file', path = d.file }
  end
  if type(d) == 'table' and type(d.provider) == 'string' and d.provider ~= '' then
    return { type = 'provider', provider = d.provider }
  end
  fail(path, "expected 'stdout', 'channels' (route by channel type through the providers file), { file = 'relative/path' } or { provider = 'profile name' }")
end

-- limits = { messages_per_second = N }: Pinpoint's Limits.MessagesPerSecond (1-20,000).
local function check_limits(path, l)
  if l == nil then return nil end
  if type(l) ~= 'table' then fail(path, 'expected { messages_per_second = N }') end
  for k in pairs(l) do
    if k ~= 'messages_per_second' then fail(path .. '.' .. tostring(k), 'unknown field (allowed: messages_per_second)') end
  end
  local mps = l.messages_per_second
  if math.type(mps) ~= 'integer' or mps < 1 or mps > 20000 then
    fail(path .. '.messages_per_second', 'a whole number 1-20000 (as Pinpoint)')
  end
  return { MessagesPerSecond = mps }
end
local ALLOWED = { name = true, description = true, segment = true, schedule = true,
                  holdout = true, treatments = true, message = true, deliver = true,
                  limits = true }

local function build(def)
  if type(def) ~= 'table' then fail('', 'expected a table') end
  for k in pairs(def) do
    if not ALLOWED[k] then fail(tostring(k), 'unknown field') end
  end
  if type(def.name) ~= 'string' or not def.name:match('^[%w][%w_%-%.]*$') then
    fail('name', 'required: letters, digits, _ - . (starting with a letter or digit)')
  end
  if not segment.is_segment(def.segment) then fail('segment', 'required: a herald.segment') end

  local holdout = def.holdout or 0
  if math.type(holdout) ~= 'integer' or holdout < 0 or holdout > 100 then
    fail('holdout', 'a whole percentage 0-100')
  end

  local treatments = {}
  if def.treatments ~= nil then
    if def.message ~= nil then fail('message', 'give either message or treatments, not both') end
    if type(def.treatments) ~= 'table' or #def.treatments == 0 then
      fail('treatments', 'a non-empty list')
    end
    if #def.treatments > 5 then fail('treatments', 'at most 5 treatments (Pinpoint allows 5)') end
    local total = holdout
    for i, t in ipairs(def.treatments) do
      local p = 'treatments[' .. i .. ']'
      if type(t) ~= 'table' then fail(p, 'expected a table') end
      if math.type(t.size) ~= 'integer' or t.size < 1 or t.size > 100 then
        fail(p .. '.size', 'a whole percentage 1-100')
      end
      check_message(p .. '.message', t.message)
      total = total + t.size
      treatments[i] = { name = t.name or ('treatment ' .. (i - 1)), size = t.size, message = t.message }
    end
    if total ~= 100 then
      fail('treatments', string.format('holdout (%d) and treatment sizes must add up to 100, not %d', holdout, total))
    end
  else
    check_message('message', def.message)
    treatments[1] = { name = 'default', size = 100 - holdout, message = def.message }
  end

  local start = 'IMMEDIATE'
  if def.schedule ~= nil then
    local s = def.schedule
    if type(s) == 'table' then s = s.start end
    if s ~= 'IMMEDIATE' then
      if type(s) ~= 'string' then fail('schedule', "expected 'IMMEDIATE' or { start = 'YYYY-MM-DDTHH:MM:SSZ' }") end
      parse_time('schedule.start', s)
    end
    start = s
  end

  return setmetatable({
    id = def.name,
    name = def.name,
    description = def.description,
    segment = def.segment,
    holdout = holdout,
    treatments = treatments,
    start = start,
    deliver = check_deliver('deliver', def.deliver),
    limits = check_limits('limits', def.limits),
  }, Campaign)
end

-- A Lua message { subject =, body =, html = } in Pinpoint's MessageConfiguration terms: the
-- email message, and the default message other channels fall back to.
local function message_configuration(m)
  return {
    EmailMessage = { Title = m.subject, Body = m.body, HtmlBody = m.html },
    DefaultMessage = { Title = m.subject, Body = m.body },
  }
end

-- The stored definition: Pinpoint's WriteCampaignRequest shape (what delivery reads for a
-- run's version) plus herald's own settings under "Herald", as canonical JSON: a change to
-- any of it makes a new version.
function Campaign:definition_json()
  local default = self.treatments[1]
  local additional = {}
  for i = 2, #self.treatments do
    local t = self.treatments[i]
    additional[#additional + 1] = {
      Id = tostring(i - 1), TreatmentName = t.name, SizePercent = t.size,
      MessageConfiguration = message_configuration(t.message),
    }
  end
  return json.encode({
    Name = self.name,
    SegmentId = self.segment.name,
    HoldoutPercent = self.holdout,
    TreatmentName = default.name,
    MessageConfiguration = message_configuration(default.message),
    AdditionalTreatments = #additional > 0 and additional or json.array({}),
    Schedule = { StartTime = self.start, Frequency = 'ONCE' },
    Herald = { DefaultSizePercent = default.size, Deliver = self.deliver },
    Limits = self.limits,
  }, { sort = true })
end

-- The arm of a cohort: treatment index (0-based) or -1 for the holdout.
function Campaign:arm(cohort)
  cohort = tonumber(cohort)
  if cohort < self.holdout then return -1 end
  local edge = self.holdout
  for i, t in ipairs(self.treatments) do
    edge = edge + t.size
    if cohort < edge then return i - 1 end
  end
  return #self.treatments - 1
end

function Campaign:scheduled_ms(version_ms)
  if self.start == 'IMMEDIATE' then return version_ms end
  return parse_time('schedule.start', self.start)
end

local function define(def)
  local ok, c = pcall(build, def)
  if not ok then
    if type(c) == 'table' then
      local name = type(def) == 'table' and def.name or '?'
      error(string.format('herald.campaign %s: %s: %s', tostring(name), c.path, c.msg), 2)
    end
    error(c, 2)
  end
  if campaign.defined[c.name] then
    error('herald.campaign: a campaign named ' .. c.name .. ' is already defined', 2)
  end
  local version, version_ms = outbox.define_campaign(c.id, c.name, c:definition_json())
  c.version, c.version_ms = version, version_ms
  campaign.defined[c.name] = c
  campaign.order[#campaign.order + 1] = c
  return c
end

-- A definition file that fails part-way leaves none of its campaigns behind: the loader
-- takes a mark before the file and rolls back to it on failure.
function campaign.mark()
  return #campaign.order
end

function campaign.rollback(mark)
  for i = #campaign.order, mark + 1, -1 do
    campaign.defined[campaign.order[i].name] = nil
    campaign.order[i] = nil
  end
end

return setmetatable(campaign, { __call = function(_, def) return define(def) end })
