-- PUSH through FCM HTTP v1: an OAuth2 access token obtained by posting an RS256-signed JWT
-- (the service account's client_email and private_key) to the token URI, cached until shortly
-- before it expires; then one POST per device to projects/ID/messages:send. UNREGISTERED, and
-- INVALID_ARGUMENT for a token that is not an FCM registration token, make the endpoint
-- INACTIVE; a 401 drops the cached token and retries. SENDER_ID_MISMATCH (a 403 about one
-- token, registered to another Firebase project) fails that message alone; another 403
-- (PERMISSION_DENIED on the project) is the profile's: systemic. A message's ImageUrl goes
-- in notification.image, its Sound and IconReference in android.notification, Priority,
-- CollapseKey, RestrictedPackageName and TimeToLive (what is left of it) in android, and what
-- a tap does (Url, Action) and its images in the data keys Pinpoint's Android SDK reads.
local clock = require 'herald.core.clock'
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

-- The FCM message of a RawContent: an FCM v1 message (under `message`, or SNS's
-- `fcmV1Message.message`), or Pinpoint's GCM payload (notification, data, priority,
-- time_to_live, collapse_key, restricted_package_name) in its v1 form.
local function raw_message(r)
  local v1 = type(r.fcmV1Message) == 'table' and r.fcmV1Message.message or r.message
  local msg = {}
  if type(v1) == 'table' then
    for k, v in pairs(v1) do msg[k] = v end
    return msg
  end
  msg.data = r.data
  local android = {}
  if type(r.notification) == 'table' then
    -- v1's notification holds title, body and image; the rest is Android's
    local n, an = r.notification, {}
    msg.notification = { title = n.title, body = n.body, image = n.image }
    for k, v in pairs(n) do
      if k ~= 'title' and k ~= 'body' and k ~= 'image' then an[k == 'android_channel_id' and 'channel_id' or k] = v end
    end
    if next(an) then android.notification = an end
  end
  if r.priority ~= nil then android.priority = r.priority == 'high' and 'high' or 'normal' end
  if math.type(r.time_to_live) == 'integer' then android.ttl = r.time_to_live .. 's' end
  android.collapse_key = r.collapse_key
  android.restricted_package_name = r.restricted_package_name
  if next(android) then msg.android = android end
  return msg
end

-- The keys Pinpoint's Android payloads carry in data for what a tap does and the images the
-- SDK draws: pinpoint.url (Action URL), pinpoint.deeplink (DEEP_LINK), pinpoint.openApp
-- (OPEN_APP) and pinpoint.notification.imageUrl, imageIconUrl and imageSmallIconUrl.
local function add_pinpoint_keys(data, m)
  local keys = {}
  if m.action == 'URL' and m.action_url then keys['pinpoint.url'] = m.action_url
  elseif m.action == 'DEEP_LINK' and m.action_url then keys['pinpoint.deeplink'] = m.action_url
  elseif m.action == 'OPEN_APP' then keys['pinpoint.openApp'] = 'true' end
  keys['pinpoint.notification.imageUrl'] = m.image_url
  keys['pinpoint.notification.imageIconUrl'] = m.image_icon_url
  keys['pinpoint.notification.imageSmallIconUrl'] = m.small_image_icon_url
  if next(keys) == nil then return data end
  data = data or {}
  for k, v in pairs(keys) do data[k] = v end
  return data
end

-- The seconds of TimeToLive ttl left at now_ms for a message first due at first_ms: a retried
-- message does not outlive its TimeToLive (0 once it has run out: FCM's "now or never").
local function ttl_left(ttl, first_ms, now_ms)
  ttl = math.tointeger(ttl) or math.floor(ttl)
  if first_ms == nil or ttl <= 0 then return math.max(ttl, 0) end
  return math.max(ttl - math.max(now_ms - first_ms, 0) // 1000, 0)
end

local function message(m)
  if m.raw then
    -- RawContent over every other field; sent to this endpoint only, with the attribution
    local msg = raw_message(m.raw)
    msg.token, msg.topic, msg.condition = m.address, nil, nil
    msg.data = util.add_campaign_keys(util.strings(msg.data), m)
    return json.encode { message = msg }
  end
  local data = add_pinpoint_keys(util.strings(m.data), m)
  local msg = { token = m.address, data = util.add_campaign_keys(data, m) }
  local android = {
    ttl = m.ttl and (ttl_left(m.ttl, m.first_due_ms, clock.now()) .. 's') or nil,
    -- the message's Priority ('normal' or 'high', as Firebase's examples of android.priority)
    priority = m.priority or (m.silent and 'normal' or 'high'),
    collapse_key = m.collapse_key,
    restricted_package_name = m.restricted_package_name,
  }
  if not m.silent then
    msg.notification = { title = m.title, body = m.body, image = m.image_url }
    -- Android's own: the sound (a raw resource, or "default"), the small icon (a drawable,
    -- IconReference) and the image again for Android's own notification
    local an = { sound = m.sound, icon = m.icon_reference, image = m.image_url }
    if next(an) then android.notification = an end
  end
  msg.android = android
  return json.encode { message = msg }
end

-- FCM's error answer: its error object, and the error code it puts in details[].errorCode
-- (or error.status). -> code, message | nil
local function fcm_error(detail)
  local e = util.decode(detail)
  e = e and e.error
  if type(e) ~= 'table' then return nil end
  local message = type(e.message) == 'string' and e.message or ''
  for _, d in ipairs(type(e.details) == 'table' and e.details or {}) do
    if type(d) == 'table' and d.errorCode then return d.errorCode, message end
  end
  return e.status, message
end

-- FCM answers a token that is no FCM registration token (truncated, of another service) with
-- INVALID_ARGUMENT and this message; a bad payload gets INVALID_ARGUMENT with another one.
local function bad_token(message)
  return message:lower():find('not a valid fcm registration token', 1, true) ~= nil
end

function fcm:send(msgs, progress)
  local token, err = self:token()
  if not token then return util.fail_all(#msgs, 'transient', err) end
  local reqs = {}
  for i, m in ipairs(msgs) do reqs[i] = { key = m.key, body = message(m), url = self.url, gate = m.gate } end
  -- SENDER_ID_MISMATCH from a token or two is theirs (registered to another project); from
  -- every token of a batch (of several) the profile's project is what is wrong, and failing
  -- the whole audience for good would not undo it
  local mismatch_all
  local function judge(o)
    local code, why = fcm_error(o.detail)
    if code == 'UNREGISTERED' or (code == 'INVALID_ARGUMENT' and bad_token(why)) then
      return code, 'inactive'
    elseif o.status == 401 then
      self.access = nil
      return code, 'token'
    elseif code == 'SENDER_ID_MISMATCH' then
      if mismatch_all then return 'PROFILE_REFUSED: ' .. code, 'profile' end
      return code
    end
    -- another 403 (PERMISSION_DENIED: the service account may not send for the project)
    -- holds for every message of the batch
    return code, o.status == 403 and 'systemic' or nil
  end
  local function verdicts(res)
    local answered, mismatched = 0, 0
    for _, o in ipairs(res) do
      if o.class == 'ok' then
        answered = answered + 1
        if o.status == 403 and fcm_error(o.detail) == 'SENDER_ID_MISMATCH' then mismatched = mismatched + 1 end
      end
    end
    mismatch_all = mismatched >= 2 and mismatched == answered
    return util.verdicts(res, judge)
  end
  local res = util.send_http(self.profile, reqs, {
    headers = { Authorization = 'Bearer ' .. token, ['Content-Type'] = 'application/json' } }, progress, verdicts)
  return verdicts(res)
end

return fcm
