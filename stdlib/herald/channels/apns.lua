-- PUSH through APNs over HTTP/2: a provider token (ES256 JWT with the team id and key id)
-- renewed every 40 minutes (APNs refuses tokens older than an hour and renewals more often
-- than every 20 minutes), one POST per device to /3/device/TOKEN with apns-topic,
-- apns-push-type (APNSPushType, else background for silent pushes), apns-priority (Priority,
-- 5 for a background push), apns-expiration from TimeToLive and apns-collapse-id
-- (CollapseId, else the message id). The payload carries Sound, Badge, ThreadId and Category
-- in aps, MediaUrl as data.media-url with mutable-content, and a URL or DEEP_LINK action's Url
-- as data.pinpoint.deeplink, as Pinpoint's iOS payloads do. 410 Unregistered and 400
-- BadDeviceToken make the endpoint INACTIVE, as does an Address that would change the request
-- path (not sent); 403 ExpiredProviderToken renews the token and retries. A refusal of the profile's configuration
-- (PROFILE_REFUSED: its topic, certificate or key) is systemic: retried and counted towards
-- the campaign's pause rather than failing the audience for good.
local clock = require 'herald.core.clock'
local json = require 'herald.json'
local util = require 'herald.channels.util'

local apns = {}
apns.__index = apns

-- Apple's reasons that every message of the profile would meet alike: the topic (the bundle
-- id the key may not push to, or none), the certificate, a key of another team or environment,
-- and requests APNs cannot route (BadPath, MethodNotAllowed) or read (DuplicateHeaders,
-- InvalidPushType, MissingProviderToken: herald writes them the same for every message).
local PROFILE_REFUSED = {
  TopicDisallowed = true, BadTopic = true, MissingTopic = true, BadCertificate = true,
  BadCertificateEnvironment = true, Forbidden = true, MissingProviderToken = true,
  UnrelatedKeyIdInToken = true, BadEnvironmentKeyInToken = true, BadPath = true,
  MethodNotAllowed = true, DuplicateHeaders = true, InvalidPushType = true,
}

local RENEW_MS = 40 * 60 * 1000
local MIN_RENEW_MS = 20 * 60 * 1000  -- APNs answers faster renewals with TooManyProviderTokenUpdates
local PRODUCTION = 'https://api.push.apple.com'
local SANDBOX = 'https://api.sandbox.push.apple.com'

function apns.new(profile)
  local key = profile.key
  if key == nil then
    local err
    key, err = util.read_file(profile.key_file)
    if not key then error('profiles.' .. profile.name .. '.key_file: ' .. tostring(err), 0) end
  end
  local url = profile.url or PRODUCTION
  -- APNS_SANDBOX tokens (development builds) exist only on Apple's sandbox host: sent to
  -- production they come back BadDeviceToken, which would make the endpoint INACTIVE
  local sandbox = profile.sandbox_url or (url:gsub('/+$', '') == PRODUCTION and SANDBOX or url)
  return setmetatable({ profile = profile, key = key, url = url, sandbox_url = sandbox }, apns)
end

function apns:token()
  local now = clock.now()
  -- a token APNs refused is replaced as soon as it may be (20 minutes after it was minted),
  -- not sent again until its own renewal
  local refused_may_go = self.refused and now - self.minted_ms >= MIN_RENEW_MS
  if self.jwt and now < self.renew_ms and not refused_may_go then return self.jwt end
  local t, err = util.jwt('ES256', { alg = 'ES256', kid = self.profile.key_id },
    { iss = self.profile.team_id, iat = now // 1000 }, self.key)
  if not t then return nil, 'APNs token: ' .. err end
  self.jwt, self.renew_ms, self.minted_ms, self.refused = t, now + RENEW_MS, now, false
  return t
end

-- Why an address cannot go into the request path /3/device/TOKEN as it is, or nil. Apple's
-- device tokens are hexadecimal, while an endpoint's Address may hold any character but
-- whitespace: a '/', '?', '#' or '%' (percent-encoding it is no cure: a server or proxy on the
-- way may decode it) or a dot segment would take the message to another path of the host,
-- another device's or none. Letters, digits and "-._~" never change a path.
local function unfit_token(address)
  if address == '.' or address == '..' then return 'is a dot segment' end
  local c = address:match('[^0-9A-Za-z._~%-]')
  if c == nil then return nil end
  return 'holds ' .. (c:match('^%p$') and ("'" .. c .. "'") or string.format('byte 0x%02X', c:byte()))
end

-- The apns-expiration of a message with TimeToLive ttl (seconds) first due at first_ms: 0
-- for a TimeToLive of 0 (Apple: deliver once, do not store), else the moment the TimeToLive
-- runs out counted from when the message was first due, so that a retried message does not
-- outlive it. nil without a TimeToLive.
local function expiration(ttl, first_ms)
  if ttl == nil then return nil end
  ttl = math.tointeger(ttl) or math.floor(ttl)
  if ttl <= 0 then return '0' end
  return tostring((first_ms or clock.now()) // 1000 + ttl)
end

function apns:request(m, token)
  local p = self.profile
  local payload, silent
  -- Pinpoint's keys of an iOS payload, under data.pinpoint (the campaign's attribution, the
  -- link a tap opens) and data (media-url, which a notification service extension fetches)
  local pinpoint, extra = {}, {}
  if m.raw then
    -- RawContent is the whole payload (a copy: the decoded table is the configuration's); a
    -- payload that only wakes the app (content-available, nothing to show) is a background push
    payload = {}
    for k, v in pairs(m.raw) do payload[k] = v end
    local aps = type(payload.aps) == 'table' and payload.aps or {}
    silent = aps['content-available'] == 1 and aps.alert == nil and aps.sound == nil and aps.badge == nil
  else
    silent = m.silent
    local aps
    if silent then
      aps = { ['content-available'] = 1 }
    else
      aps = { alert = { title = m.title, body = m.body }, sound = m.sound, badge = m.badge,
              ['thread-id'] = m.thread_id, category = m.category }
      -- a campaign's image (ImageUrl, the only image its Lua form has) stands for MediaUrl
      local media = m.media_url or m.image_url
      if media then
        aps['mutable-content'] = 1
        extra['media-url'] = media
      end
      -- iOS's SDK opens data.pinpoint.deeplink on a tap, for a web URL as for a deep link;
      -- OPEN_APP (the default action) opens the app, with no link
      if (m.action == 'URL' or m.action == 'DEEP_LINK') and m.action_url then pinpoint.deeplink = m.action_url end
    end
    payload = { aps = aps }
    for k, v in pairs(m.data or {}) do if k ~= 'aps' then payload[k] = v end end
  end
  -- iOS's form of the campaign attribution: data.pinpoint.campaign (beside the message's own
  -- data.* keys when it has a `data` object; a `data` of another type is the message's)
  pinpoint.campaign = util.campaign_attribution(m)
  if next(pinpoint) then extra.pinpoint = pinpoint end
  if next(extra) and (payload.data == nil or (type(payload.data) == 'table' and not json.is_array(payload.data))) then
    -- copies: the message's data table is its treatment's, shared by every message
    local data = {}
    for k, v in pairs(payload.data or {}) do data[k] = v end
    for k, v in pairs(extra) do
      if k == 'pinpoint' and type(data.pinpoint) == 'table' then
        local merged = {}
        for pk, pv in pairs(data.pinpoint) do merged[pk] = pv end
        for pk, pv in pairs(v) do merged[pk] = pv end
        v = merged
      end
      data[k] = v
    end
    payload.data = data
  end
  local voip = m.channel:find('VOIP') ~= nil
  local push_type = voip and 'voip' or m.push_type or (silent and 'background' or 'alert')
  -- a background push must go at priority 5; otherwise the message's Priority (normal: 5),
  -- high (10) by default
  local priority = (silent or push_type == 'background' or m.priority == 'normal') and '5' or '10'
  local headers = {
    authorization = 'bearer ' .. token,
    ['apns-topic'] = voip and (p.topic .. '.voip') or p.topic,
    ['apns-push-type'] = push_type,
    ['apns-priority'] = priority,
    -- the message's CollapseId (as given: one over APNs's 64 bytes is refused as
    -- BadCollapseId rather than cut to a prefix another id may share); without one, its id:
    -- a message sent again (a retry after a lost answer) replaces the copy the device may
    -- already show rather than showing twice
    ['apns-collapse-id'] = m.collapse_id or m.key:sub(1, 64),
    ['apns-id'] = m.apns_id,
    ['apns-expiration'] = expiration(m.ttl, m.first_due_ms),
  }
  return { key = m.key, body = json.encode(payload), headers = headers, gate = m.gate,
           url = (m.channel:find('SANDBOX') and self.sandbox_url or self.url) .. '/3/device/' .. m.address }
end

function apns:send(msgs, progress)
  local token, err = self:token()
  -- a signing key that cannot be read or used fails every message alike: retried, and counted
  -- towards the campaign's pause rather than failing the audience for good
  if not token then return util.fail_all(#msgs, 'transient', err) end
  -- an address that would change the request path is not sent: it fails for good with the
  -- endpoint made INACTIVE, as APNs's BadDeviceToken does for any token that is not one
  local reqs, sent, out = {}, {}, {}
  for i, m in ipairs(msgs) do
    local why = unfit_token(m.address)
    if why then
      out[i] = { verdict = 'permanent', feedback = 'INACTIVE',
                 reason = 'INVALID_DEVICE_TOKEN: not sent: an APNs device token is hexadecimal, and this Address '
                   .. why .. ', which would change the request path /3/device/TOKEN' }
    else
      reqs[#reqs + 1] = self:request(m, token)
      sent[#reqs] = i
    end
  end
  -- DeviceTokenNotForTopic from a token or two is their app's, not this one's; from every
  -- token of a batch (of several) the topic is what is wrong
  local not_for_topic
  local function judge(o)
    local body = util.decode(o.detail)
    local why = body and body.reason
    if o.status == 410 or why == 'BadDeviceToken' or why == 'Unregistered' or why == 'ExpiredToken' then
      return why, 'inactive'
    elseif PROFILE_REFUSED[why] or (why == 'DeviceTokenNotForTopic' and not_for_topic) then
      return 'PROFILE_REFUSED: ' .. why, 'profile'
    elseif why == 'ExpiredProviderToken' or why == 'InvalidProviderToken' then
      -- a fresh token at the next send once the current one may be replaced (see token()): a
      -- token refused for its key or team (a configuration mistake) is not minted again on
      -- every claim
      self.refused = true
      return why, 'token'
    elseif why == 'TooManyProviderTokenUpdates' or why == 'IdleTimeout' then
      return why, 'retry'
    end
    -- the rest concern the message (BadCollapseId, BadExpirationDate, BadPriority,
    -- PayloadEmpty, PayloadTooLarge, ...) or its device (TooManyRequests: a 429, retried)
    return why
  end
  local function verdicts(res)
    local answered, refused = 0, 0
    for _, o in ipairs(res) do
      if o.class == 'ok' then
        answered = answered + 1
        local body = o.status == 400 and util.decode(o.detail)
        if body and body.reason == 'DeviceTokenNotForTopic' then refused = refused + 1 end
      end
    end
    not_for_topic = refused >= 2 and refused == answered
    local vs = util.verdicts(res, judge)
    -- APNs's 429 (TooManyRequests) is of one device token sent too many in a row: that
    -- message waits, the profile's other devices do not
    for i, o in ipairs(res) do
      if vs[i].throttled and o.status == 429 then vs[i].per_recipient = true end
    end
    return vs
  end
  local told = progress and function(idx, vs)
    local at = {}
    for k, j in ipairs(idx) do at[k] = sent[j] end
    progress(at, vs)
  end
  local res = util.send_http(self.profile, reqs, { headers = { ['Content-Type'] = 'application/json' } },
    told, verdicts)
  local vs = verdicts(res)
  for j = 1, #reqs do out[sent[j]] = vs[j] end
  return out
end

return apns
