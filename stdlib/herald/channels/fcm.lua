-- PUSH through FCM HTTP v1: an OAuth2 access token obtained by posting an RS256-signed JWT
-- (the service account's client_email and private_key) to the token URI, cached until shortly
-- before it expires; then one POST per device to projects/ID/messages:send. UNREGISTERED makes
-- the endpoint INACTIVE; a 401 drops the cached token and retries.
local json = require 'herald.json'
local util = require 'herald.channels.util'

local fcm = {}
fcm.__index = fcm

local SCOPE = 'https://www.googleapis.com/auth/firebase.messaging'

function fcm.new(profile)
  local sa = profile.service_account
  if type(sa) == 'string' then
    local text, err = util.read_file(sa)
    if not text then error('profiles.' .. profile.name .. '.service_account: ' .. tostring(err), 0) end
    sa = util.decode(text)
    if not sa then error('profiles.' .. profile.name .. '.service_account: not a JSON service account file', 0) end
  end
  if type(sa.client_email) ~= 'string' or type(sa.private_key) ~= 'string' then
    error('profiles.' .. profile.name .. '.service_account: needs client_email and private_key', 0)
  end
  return setmetatable({
    profile = profile, sa = sa,
    token_uri = profile.token_uri or sa.token_uri or 'https://oauth2.googleapis.com/token',
    url = (profile.url or 'https://fcm.googleapis.com') .. '/v1/projects/' .. profile.project_id .. '/messages:send',
  }, fcm)
end

-- The cached access token, or a new one. -> token | nil, reason
function fcm:token()
  return util.access_token(self, 'FCM', 'application/x-www-form-urlencoded', function(now)
    local iat = now // 1000
    local assertion, err = util.jwt('RS256', { alg = 'RS256', typ = 'JWT', kid = self.sa.private_key_id },
      { iss = self.sa.client_email, scope = SCOPE, aud = self.token_uri, iat = iat, exp = iat + 3600 },
      self.sa.private_key)
    if not assertion then return nil, err end
    return 'grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=' .. assertion
  end)
end

local function message(m)
  local msg = { token = m.address, data = util.add_campaign_keys(util.strings(m.data), m) }
  if not m.silent then msg.notification = { title = m.title, body = m.body } end
  local android = {}
  if m.ttl then android.ttl = tostring(m.ttl) .. 's' end
  if m.silent then android.priority = 'normal' else android.priority = 'high' end
  msg.android = android
  return json.encode { message = msg }
end

-- The error status FCM puts in details[].errorCode (or error.status).
local function error_code(detail)
  local e = util.decode(detail)
  e = e and e.error
  if type(e) ~= 'table' then return nil end
  for _, d in ipairs(e.details or {}) do
    if type(d) == 'table' and d.errorCode then return d.errorCode end
  end
  return e.status
end

function fcm:send(msgs, progress)
  local token, err = self:token()
  if not token then return util.fail_all(#msgs, 'transient', err) end
  local reqs = {}
  for i, m in ipairs(msgs) do reqs[i] = { key = m.key, body = message(m), url = self.url, gate = m.gate } end
  local function judge(o)
    local code = error_code(o.detail)
    if code == 'UNREGISTERED' then
      return code, 'inactive'
    elseif o.status == 401 then
      self.access = nil
      return code, 'token'
    end
    -- a 403 (permission denied on the project) holds for every message of the batch
    return code, o.status == 403 and 'systemic' or nil
  end
  local function verdicts(res) return util.verdicts(res, judge) end
  local res = util.send_http(self.profile, reqs, {
    headers = { Authorization = 'Bearer ' .. token, ['Content-Type'] = 'application/json' } }, progress, verdicts)
  return verdicts(res)
end

return fcm
