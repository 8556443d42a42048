-- PUSH through Amazon Device Messaging: an OAuth2 access token from the client-credentials
-- grant (client_id and client_secret of the security profile, scope messaging:push) posted to
-- the token URI, cached until shortly before it expires; then one POST per device to
-- /messaging/registrations/ID/messages with ADM's type headers and a body of data (string
-- values: the title and body under Pinpoint's pinpoint.notification.* keys, then the message's
-- Data), consolidationKey (ADMMessage.ConsolidationKey, else the message id, so a retried
-- message collapses into the first) and expiresAfter (ADMMessage.ExpiresAfter, else
-- TimeToLive). InvalidRegistrationId and Unregistered make the endpoint INACTIVE; an expired
-- token is dropped and the message retried; 429 and 5xx are transient (Retry-After honoured).
local json = require 'herald.json'
local util = require 'herald.channels.util'

local adm = {}
adm.__index = adm

local SCOPE = 'messaging:push'
local TYPE_VERSION = 'com.amazon.device.messaging.ADMMessage@1.0'
local ACCEPT_TYPE = 'com.amazon.device.messaging.ADMSendResult@1.0'
local MAX_EXPIRES = 2678400  -- ADM keeps a message at most 31 days

function adm.new(profile)
  return setmetatable({
    profile = profile,
    token_uri = profile.token_uri or 'https://api.amazon.com/auth/o2/token',
    url = (profile.url or 'https://api.amazon.com') .. '/messaging/registrations/',
  }, adm)
end

-- The cached access token, or a new one. -> token | nil, reason
function adm:token()
  local p = self.profile
  return util.access_token(self, 'ADM', 'application/x-www-form-urlencoded;charset=UTF-8', function()
    return util.form { { 'grant_type', 'client_credentials' }, { 'scope', SCOPE },
                       { 'client_id', p.client_id }, { 'client_secret', p.client_secret } }
  end)
end

local function request(self, m)
  if m.raw then
    -- RawContent is ADM's message body (data, consolidationKey, expiresAfter), a copy with
    -- the attribution in its data; without a consolidationKey of its own a retry collapses
    -- into the first as any other message's does
    local body = {}
    for k, v in pairs(m.raw) do body[k] = v end
    body.data = util.add_campaign_keys(util.strings(body.data) or {}, m)
    if body.consolidationKey == nil then body.consolidationKey = m.key:sub(1, 64) end
    return { key = m.key, url = self.url .. util.urlencode(m.address) .. '/messages', body = json.encode(body),
             gate = m.gate }
  end
  local data = util.strings(m.data) or {}
  if m.silent then
    data['pinpoint.notification.silentPush'] = '1'
  else
    data['pinpoint.notification.title'] = m.title
    data['pinpoint.notification.body'] = m.body
  end
  util.add_campaign_keys(data, m)
  local expires = m.expires_after or m.ttl
  if expires then expires = math.max(60, math.min(MAX_EXPIRES, math.floor(expires))) end
  local body = { data = data, consolidationKey = (m.consolidation_key or m.key):sub(1, 64), expiresAfter = expires }
  return { key = m.key, url = self.url .. util.urlencode(m.address) .. '/messages', body = json.encode(body),
           gate = m.gate }
end

function adm:send(msgs, progress)
  local token, err = self:token()
  if not token then return util.fail_all(#msgs, 'transient', err) end
  local reqs = {}
  for i, m in ipairs(msgs) do reqs[i] = request(self, m) end
  local function judge(o)
    local b = util.decode(o.detail)
    local why = b and b.reason
    if why == 'InvalidRegistrationId' or why == 'Unregistered' or o.status == 410 then
      return why, 'inactive'
    elseif o.status == 401 or why == 'AccessTokenExpired' then
      self.access = nil
      return why, 'token'
    end
    return why
  end
  local function verdicts(res) return util.verdicts(res, judge) end
  local res = util.send_http(self.profile, reqs, { headers = {
    Authorization = 'Bearer ' .. token, ['Content-Type'] = 'application/json', Accept = 'application/json',
    ['X-Amzn-Type-Version'] = TYPE_VERSION, ['X-Amzn-Accept-Type'] = ACCEPT_TYPE } }, progress, verdicts)
  return verdicts(res)
end

return adm
