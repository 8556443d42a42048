-- SMS through an HTTP provider: the Twilio-style form preset (To, From, Body; basic auth with
-- account_sid:auth_token) or a JSON body whose string values are templates over the message
-- (Address, Body, OriginationNumber, SenderId, MessageType, Keyword, EntityId and TemplateId,
-- the ids India's DLT registration gives, and MessageId). A refusal because the recipient
-- opted out (Twilio error 21610; with the JSON body, profile.opt_out_pattern, by default any
-- "opt out"/"opted out"/"opt_out", in the provider's error code or message; with the Twilio
-- preset, in its error message only when a pattern is given) opts the endpoint out of
-- everything, as Pinpoint does on a STOP reply. A refusal that merely quotes the message
-- ("Reply STOP to opt out") fails that message alone. A refusal of the sender (the
-- From number or sender id: Twilio errors in SENDER_REFUSED) is the profile's, not the
-- recipient's: systemic, as SMTP's refused MAIL FROM is.
local json = require 'herald.json'
local template = require 'herald.template'
local util = require 'herald.channels.util'

local sms = {}
sms.__index = sms

-- Twilio error codes that refuse the From rather than the recipient: 21212 invalid From,
-- 21603 From missing, 21606 From not SMS-capable, 21659 From not a Twilio number, 21660 From
-- not of this account, 21611 From's queue full.
local SENDER_REFUSED = { [21212] = true, [21603] = true, [21606] = true, [21611] = true, [21659] = true,
                         [21660] = true }

-- The JSON body's shape with every string in it that has a tag (at any depth: a batch API may
-- take `to` as a list or nest the message) compiled as a template; other values stay as they
-- are.
local COMPILED = {}
local function compile_json(v, name)
  if type(v) == 'string' and v:find('{{', 1, true) then
    local t, err = template.compile(v, { name = name, escape = false })
    if not t then error(err, 0) end
    return setmetatable({ t = t }, COMPILED)
  elseif type(v) == 'table' and v ~= json.null then
    local out = {}
    for k, x in pairs(v) do out[k] = compile_json(x, name .. '.' .. tostring(k)) end
    return setmetatable(out, getmetatable(v))
  end
  return v
end

-- A member of an object whose template renders empty (a SenderId the message and profile do
-- not give) is left out rather than sent as "": providers refuse an empty sender or type where
-- an absent one takes the account's default. List items stay, so positions keep their meaning.
local function render_json(c, vars)
  if type(c) ~= 'table' or c == json.null then return c end
  if getmetatable(c) == COMPILED then return c.t:render(vars) end
  local out = {}
  for k, x in pairs(c) do
    local v = render_json(x, vars)
    if not (v == '' and type(k) == 'string' and getmetatable(x) == COMPILED) then out[k] = v end
  end
  return setmetatable(out, getmetatable(c))
end

function sms.new(profile)
  local self = setmetatable({ profile = profile }, sms)
  if profile.preset == 'twilio' then
    local sid, token = profile.account_sid, profile.auth_token
    if type(sid) ~= 'string' or type(token) ~= 'string' then
      error('profiles.' .. profile.name .. ': the twilio preset needs account_sid and auth_token', 0)
    end
    self.auth = 'Basic ' .. util.base64(sid .. ':' .. token)
  else
    self.body = compile_json(profile.json, 'profiles.' .. profile.name .. '.json')
  end
  -- Twilio says an opt-out with its own code (21610): a pattern is read only when given
  self.opt_out = profile.opt_out_pattern or (not self.auth and '[Oo]pt%a*[%s_%-]?[Oo]ut') or nil
  return self
end

-- Fields of a provider's error body that are its own words about the refusal: its code and
-- message, at the top or in an `error` object or an `errors` list. Other fields may quote the
-- request (the message's text) back.
local ERROR_FIELDS = { 'code', 'error', 'error_code', 'errorCode', 'message', 'error_message', 'errorMessage',
                       'reason', 'detail', 'description', 'title', 'type' }

local function error_words(v, into, depth)
  if depth > 4 then return into end
  if type(v) == 'string' or math.type(v) then
    into[#into + 1] = tostring(v)
  elseif type(v) == 'table' and v ~= json.null then
    for _, k in ipairs(ERROR_FIELDS) do
      if v[k] ~= nil then error_words(v[k], into, depth + 1) end
    end
    if type(v.errors) == 'table' then
      for _, e in ipairs(v.errors) do error_words(e, into, depth + 1) end
    end
  end
  return into
end

-- Whether the provider's refusal (detail: its body, err: that body decoded) says the recipient
-- opted out by the pattern. A message's own text ("Reply STOP to opt out"), quoted in the
-- words, is no part of them: the texts of the batch's messages are taken out before a match
-- is believed.
function sms:says_opted_out(detail, err, msgs)
  if not self.opt_out or not detail then return false end
  local words = err and table.concat(error_words(err, {}, 0), '\n') or detail
  if not words:find(self.opt_out) then return false end
  local seen = {}
  for _, m in ipairs(msgs or {}) do
    local text = m.body and tostring(m.body)
    if text and text ~= '' and not seen[text] then
      seen[text] = true
      local i = words:find(text, 1, true)
      while i do
        words = words:sub(1, i - 1) .. '\n' .. words:sub(i + #text)
        i = words:find(text, i, true)
      end
    end
  end
  return words:find(self.opt_out) ~= nil
end

local function form(t)
  local parts = {}
  for _, kv in ipairs(t) do
    if kv[2] ~= nil then
      parts[#parts + 1] = kv[1] .. '=' .. tostring(kv[2]):gsub('[^%w%-%._~]', function(c)
        return string.format('%%%02X', c:byte())
      end)
    end
  end
  return table.concat(parts, '&')
end

function sms:request(m)
  local from = m.origination_number or self.profile.from
  local vars = { Address = m.address, Body = m.body, OriginationNumber = from,
                 SenderId = m.sender_id or self.profile.sender_id, MessageType = m.message_type or 'TRANSACTIONAL',
                 Keyword = m.keyword, EntityId = m.entity_id, TemplateId = m.template_id, MessageId = m.key }
  if self.auth then
    -- Twilio takes one From: the message's own sender (its SenderId, else its
    -- OriginationNumber) over the profile's defaults
    local sender = m.sender_id or m.origination_number or self.profile.sender_id or self.profile.from
    return { key = m.key, gate = m.gate, body = form { { 'To', m.address }, { 'From', sender }, { 'Body', m.body } },
             headers = { Authorization = self.auth, ['Content-Type'] = 'application/x-www-form-urlencoded' } }
  end
  return { key = m.key, gate = m.gate, body = json.encode(render_json(self.body, vars)),
           headers = { ['Content-Type'] = 'application/json' } }
end

function sms:send(msgs, progress)
  local reqs = {}
  for i, m in ipairs(msgs) do reqs[i] = self:request(m) end
  local function verdicts(res) return self:verdicts(res, msgs) end
  local res = util.send_http(self.profile, reqs, { key_header = 'Idempotency-Key', headers = self.profile.headers },
    progress, verdicts)
  return verdicts(res)
end

function sms:verdicts(res, msgs)
  local out = {}
  for i, o in ipairs(res) do
    local r = util.unsent(o) or { verdict = o.verdict, retry_after_ms = o.retry_after_ms }
    if r.held or r.recalled then
      -- never sent: nothing for the provider to have said about the number
    elseif o.verdict ~= 'delivered' then
      r.reason = util.reason(o)
      local err = util.decode(o.detail)
      -- Only the provider's refusal of this number (a 4xx) can say it opted out: a 5xx or a
      -- failed connection that happens to quote the message ("reply STOP to opt out") cannot.
      local refused = o.class == 'ok' and o.status >= 400 and o.status < 500
      local code = err and tonumber(err.code)
      if refused and self.auth and SENDER_REFUSED[code] then
        -- the same refusal awaits every message of the profile: retried, counted towards
        -- the campaign's pause, never the audience's permanent failure
        r.verdict, r.systemic, r.reason = 'transient', true, 'SENDER_REFUSED: ' .. r.reason
      elseif refused and (code == 21610 or self:says_opted_out(o.detail, err, msgs)) then
        r.verdict, r.feedback, r.reason = 'permanent', 'OPT_OUT', 'OPT_OUT: ' .. r.reason
      end
      r.unavailable = not r.systemic and util.unavailable(o) or nil
      r.systemic = r.systemic or o.class ~= 'ok' or o.status >= 500 or o.status == 401 or o.status == 403
    end
    out[i] = r
  end
  return out
end

return sms
