-- SMS through an HTTP provider: the Twilio-style form preset (To, From, Body; basic auth with
-- account_sid:auth_token) or a JSON body whose string values are templates over the message
-- (Address, Body, OriginationNumber, SenderId, MessageType, Keyword, EntityId and TemplateId,
-- the ids India's DLT registration gives, and MessageId). A refusal because the recipient
-- opted out (Twilio error 21610, or profile.opt_out_pattern in the body) opts the endpoint
-- out of everything, as Pinpoint does on a STOP reply. A refusal of the sender (the
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

-- The JSON body's shape with every string in it (at any depth: a batch API may take `to` as a
-- list or nest the message) compiled as a template; other values stay as they are.
local COMPILED = {}
local function compile_json(v, name)
  if type(v) == 'string' then
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

local function render_json(c, vars)
  if type(c) ~= 'table' or c == json.null then return c end
  if getmetatable(c) == COMPILED then return c.t:render(vars) end
  local out = {}
  for k, x in pairs(c) do out[k] = render_json(x, vars) end
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
  self.opt_out = profile.opt_out_pattern or '[Oo]pt%a*[%s_%-]?[Oo]ut'
  return self
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
  local function verdicts(res) return self:verdicts(res) end
  local res = util.send_http(self.profile, reqs, { key_header = 'Idempotency-Key', headers = self.profile.headers },
    progress, verdicts)
  return verdicts(res)
end

function sms:verdicts(res)
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
      elseif refused and (code == 21610 or (o.detail and o.detail:find(self.opt_out))) then
        r.verdict, r.feedback, r.reason = 'permanent', 'OPT_OUT', 'OPT_OUT: ' .. r.reason
      end
      r.systemic = r.systemic or o.class ~= 'ok' or o.status >= 500 or o.status == 401 or o.status == 403
    end
    out[i] = r
  end
  return out
end

return sms
