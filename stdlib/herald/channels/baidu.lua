-- PUSH through Baidu Cloud Push (REST API 3.0, push/single_device): one form POST per device
-- with apikey, timestamp, channel_id, device_type (3, Android), msg_type (1 notification, 0 a
-- pass-through message for silent pushes), msg (the notification as JSON: title, description,
-- custom_content from Data), msg_expires from TimeToLive, and sign: the MD5 (lowercase hex) of
-- the urlencoded string METHOD + URL + every other parameter as key=value sorted by key +
-- secret key. Baidu answers {request_id, response_params} or {request_id, error_code,
-- error_msg}: 30608 (no such channel binding) and 30607 (channel expired) make the endpoint
-- INACTIVE; 30600 (server error), 30699 (over the request limit) and 5xx are transient; 30603
-- (authentication) fails every message of the profile.
local clock = require 'herald.core.clock'
local digest = require 'herald.core.digest'
local json = require 'herald.json'
local util = require 'herald.channels.util'

local baidu = {}
baidu.__index = baidu

local INACTIVE = { [30607] = true, [30608] = true }
local TRANSIENT = { [30600] = true, [30699] = true }
local MAX_EXPIRES = 604800  -- Baidu keeps an offline device's message at most 7 days

function baidu.new(profile)
  return setmetatable({
    profile = profile,
    url = profile.url or 'https://api.tuisong.baidu.com/rest/3.0/push/single_device',
    device_type = profile.device_type or 3,
  }, baidu)
end

-- The sign parameter over params (a name -> string table without sign).
function baidu.sign(method, url, params, secret)
  local keys = {}
  for k in pairs(params) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = { method, url }
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. '=' .. params[k] end
  parts[#parts + 1] = secret
  return digest.md5_hex(util.urlencode(table.concat(parts)))
end

function baidu:request(m)
  local p = self.profile
  local msg
  local silent = m.silent
  if m.raw then
    -- RawContent is Baidu's msg: a notification when it has a description (Baidu's required
    -- field of one), else a pass-through message; a copy, with the attribution in its
    -- custom_content or, passed through, beside its keys
    msg = {}
    for k, v in pairs(m.raw) do msg[k] = v end
    silent = type(msg.description) ~= 'string'
    if silent then
      util.add_campaign_keys(msg, m)
    elseif msg.custom_content == nil or (type(msg.custom_content) == 'table' and not json.is_array(msg.custom_content)) then
      local cc = {}
      for k, v in pairs(msg.custom_content or {}) do cc[k] = v end
      msg.custom_content = util.add_campaign_keys(next(cc) and cc or nil, m)
    end
  elseif silent then
    msg = util.add_campaign_keys(util.strings(m.data), m) or {}
  else
    msg = { title = m.title, description = m.body or '',
            custom_content = util.add_campaign_keys(util.strings(m.data), m) }
  end
  local params = {
    apikey = p.api_key, timestamp = tostring(clock.now() // 1000), channel_id = m.address,
    device_type = tostring(self.device_type), msg_type = silent and '0' or '1', msg = json.encode(msg),
  }
  if m.ttl then params.msg_expires = tostring(math.max(1, math.min(MAX_EXPIRES, math.floor(m.ttl)))) end
  params.sign = baidu.sign('POST', self.url, params, p.secret_key)
  local fields = {}
  for k, v in pairs(params) do fields[#fields + 1] = { k, v } end
  table.sort(fields, function(a, b) return a[1] < b[1] end)
  return { key = m.key, url = self.url, body = util.form(fields), gate = m.gate }
end

function baidu:send(msgs, progress)
  local reqs = {}
  for i, m in ipairs(msgs) do reqs[i] = self:request(m) end
  local function judge(o)
    local b = util.decode(o.detail)
    local code = b and tonumber(b.error_code)
    if not code then return nil end
    local why = code .. ' ' .. tostring(b.error_msg)
    if INACTIVE[code] then return why, 'inactive' end
    if TRANSIENT[code] then return why, 'retry' end
    if code == 30603 then return why, 'refused' end
    return why
  end
  -- Baidu refuses a message in the body of a 200 answer as well
  local function verdicts(res) return util.verdicts(res, judge, { delivered = true }) end
  local res = util.send_http(self.profile, reqs, { headers = {
    ['Content-Type'] = 'application/x-www-form-urlencoded;charset=utf-8',
    ['User-Agent'] = 'BCCS_SDK/3.0 (herald) Lua/5.4 (Baidu Push Server SDK V3.0.0)' } }, progress, verdicts)
  return verdicts(res)
end

return baidu
