-- SMS through an HTTP provider: the Twilio-style form preset (To, From, Body; basic auth with
-- account_sid:auth_token) or a JSON body whose string values are templates over the message
-- (Address, Body, OriginationNumber, SenderId, MessageType, Keyword). A refusal because the
-- recipient opted out (Twilio error 21610, or profile.opt_out_pattern in the body) opts the
-- endpoint out of everything, as Pinpoint does on a STOP reply.
local json = require 'herald.json'
local template = require 'herald.template'
local util = require 'herald.channels.util'

local sms = {}
sms.__index = sms

function sms.new(profile)
  local self = setmetatable({ profile = profile, templates = {}, compiled = {} }, sms)
  if profile.preset == 'twilio' then
    local sid, token = profile.account_sid, profile.auth_token
    if type(sid) ~= 'string' or type(token) ~= 'string' then
      error('profiles.' .. profile.name .. ': the twilio preset needs account_sid and auth_token', 0)
    end
    self.auth = 'Basic ' .. util.base64(sid .. ':' .. token)
  else
    for k, v in pairs(profile.json) do
      if type(v) == 'string' then
        local t, err = template.compile(v, { name = 'profiles.' .. profile.name .. '.json.' .. k, escape = false })
        if not t then error(err, 0) end
        self.templates[k], self.compiled[k] = t, true
      else
        self.templates[k] = v
      end
    end
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
                 Keyword = m.keyword, MessageId = m.key }
  if self.auth then
    return { key = m.key, body = form { { 'To', m.address }, { 'From', vars.SenderId or from }, { 'Body', m.body } },
             headers = { Authorization = self.auth, ['Content-Type'] = 'application/x-www-form-urlencoded' } }
  end
  local body = {}
  for k, t in pairs(self.templates) do
    if self.compiled[k] then body[k] = t:render(vars) else body[k] = t end
  end
  return { key = m.key, body = json.encode(body), headers = { ['Content-Type'] = 'application/json' } }
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
    local r = { verdict = o.verdict, retry_after_ms = o.retry_after_ms }
    if o.verdict ~= 'delivered' then
      r.reason = util.reason(o)
      local err = util.decode(o.detail)
      -- Only the provider's refusal of this number (a 4xx) can say it opted out: a 5xx or a
      -- failed connection that happens to quote the message ("reply STOP to opt out") cannot.
      local refused = o.class == 'ok' and o.status >= 400 and o.status < 500
      if refused and ((err and tonumber(err.code) == 21610) or (o.detail and o.detail:find(self.opt_out))) then
        r.verdict, r.feedback, r.reason = 'permanent', 'OPT_OUT', 'OPT_OUT: ' .. r.reason
      end
      r.systemic = o.class ~= 'ok' or o.status >= 500 or o.status == 401 or o.status == 403
    end
    out[i] = r
  end
  return out
end

return sms
