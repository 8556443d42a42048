-- The providers file: channel profiles for delivery, in Lua, loaded by `herald run --providers
-- FILE` (or providers.lua next to the first campaign file) and by herald.send. Secrets come
-- from the environment (os.getenv) so the file can be committed. It returns a table:
--
--   return {
--     profiles = {
--       mail  = { type = 'smtp', url = 'smtps://mail.example.com:465', from = 'News <n@example.com>',
--                 username = os.getenv('SMTP_USER'), password = os.getenv('SMTP_PASSWORD'),
--                 starttls = 'required', list_unsubscribe = 'https://example.com/u/{{Id}}',
--                 one_click = true, sessions = 10, limits = { per_second = 50, per_day = 50000 } },
--       sms   = { type = 'sms', preset = 'twilio', url = 'https://api.twilio.com/...', account_sid =,
--                 auth_token = os.getenv('TWILIO_TOKEN'), from = '+15550100' },
--       sms2  = { type = 'sms', url = 'https://sms.example.com/send', json = { to = '{{Address}}',
--                 text = '{{Body}}', sender = '{{SenderId}}' } },
--       fcm   = { type = 'fcm', project_id = 'p', service_account = '/path/sa.json', url =, token_uri = },
--       apns  = { type = 'apns', url = 'https://api.push.apple.com', team_id =, key_id =, key_file =,
--                 topic = 'com.example.app', sandbox_url = },  -- APNS_SANDBOX endpoints go to
--                 -- sandbox_url: by default Apple's sandbox host when url is its production one
--       adm   = { type = 'adm', client_id = os.getenv('ADM_CLIENT_ID'), client_secret =
--                 os.getenv('ADM_CLIENT_SECRET'), url = 'https://api.amazon.com', token_uri = },
--       baidu = { type = 'baidu', api_key = os.getenv('BAIDU_API_KEY'), secret_key =
--                 os.getenv('BAIDU_SECRET_KEY'), url = 'https://api.tuisong.baidu.com/rest/3.0/push/single_device' },
--       hooks = { type = 'webhook', url = 'https://hooks.example.com/in', headers = { ... } },
--       mine  = { type = 'lua', send = function(msg) return true end },
--       out   = { type = 'file', path = 'messages.txt' },   -- or type = 'stdout'
--     },
--     channels = { EMAIL = 'mail', SMS = 'sms', GCM = 'fcm', APNS = 'apns', ADM = 'adm', BAIDU = 'baidu',
--                  CUSTOM = 'hooks' },
--     global = { per_second = 20000 },   -- a cap over every profile
--     retry = { max_attempts = 5, min_ms = 1000, max_ms = 300000 },
--     pause_after = 20,                  -- consecutive systemic failures before a campaign pauses
--     lanes = 4,                         -- claims in flight at once (each up to 256 messages)
--   }
local template = require 'herald.template'
local json = require 'herald.json'
local core_http = require 'herald.core.http'

local providers = {}

local TYPES = { smtp = true, sms = true, fcm = true, apns = true, adm = true, baidu = true,
                webhook = true, lua = true, file = true, stdout = true, http = true }
local CHANNELS = { EMAIL = true, SMS = true, GCM = true, APNS = true, APNS_SANDBOX = true,
                   APNS_VOIP = true, APNS_VOIP_SANDBOX = true, CUSTOM = true, ADM = true,
                   BAIDU = true, VOICE = true, IN_APP = true }
local LIMIT_KEYS = { per_second = true, per_minute = true, per_hour = true, per_day = true }

local function fail(where, msg) error(where .. ': ' .. msg, 0) end

local function check_limits(where, l)
  if l == nil then return nil end
  if type(l) ~= 'table' then fail(where, 'expected a table such as { per_second = 100 }') end
  for k, v in pairs(l) do
    if not LIMIT_KEYS[k] then fail(where .. '.' .. tostring(k), 'unknown window (per_second, per_minute, per_hour, per_day)') end
    if type(v) ~= 'number' or v <= 0 then fail(where .. '.' .. k, 'a positive number') end
  end
  return l
end

-- The byte offset of the first character of template text s outside its tags ({{...}},
-- {{!-- ... --}}) that is not printable ASCII, or nil.
local function first_unprintable_literal(s)
  local i = 1
  while true do
    local open = s:find('{{', i, true)
    local bad = s:find('[^\32-\126]', i)
    if bad and (open == nil or bad < open) then return bad end
    if open == nil then return nil end
    local comment = s:sub(open, open + 4) == '{{!--'
    local close = comment and s:find('--}}', open + 5, true) or s:find('}}', open + 2, true)
    -- an unclosed tag: template.check has refused it
    if close == nil then return nil end
    i = close + (comment and 4 or 2)
  end
end

-- Whether a List-Unsubscribe template may give an https: URI (RFC 8058 §3.1: the one-click
-- POST goes to it). Its URIs are separated by commas; one that a tag starts (rendered per
-- endpoint) cannot be told here, and the message builder leaves the POST header out of a
-- rendered value without one.
local function may_give_https(s)
  if s == nil then return false end
  local marked, i = {}, 1
  while true do
    local open = s:find('{{', i, true)
    marked[#marked + 1] = s:sub(i, (open or 0) - 1)
    if open == nil then break end
    local comment = s:sub(open, open + 4) == '{{!--'
    local close = comment and s:find('--}}', open + 5, true) or s:find('}}', open + 2, true)
    if close == nil then break end
    if not comment then marked[#marked + 1] = '\1' end
    i = close + (comment and 4 or 2)
  end
  for uri in (table.concat(marked) .. ','):gmatch('([^,]*),') do
    uri = uri:gsub('^[%s<]*', '')
    if uri:sub(1, 1) == '\1' or uri:sub(1, 6):lower() == 'https:' then return true end
  end
  return false
end

local function need_string(where, p, k)
  if type(p[k]) ~= 'string' or p[k] == '' then fail(where .. '.' .. k, 'required (a string)') end
end

local REQUIRED = {
  smtp = { 'url', 'from' }, sms = { 'url' }, webhook = { 'url' }, http = { 'url' },
  fcm = { 'project_id', 'service_account' }, apns = { 'team_id', 'key_id', 'topic' },
  adm = { 'client_id', 'client_secret' }, baidu = { 'api_key', 'secret_key' },
  file = { 'path' }, lua = {}, stdout = {},
}

-- The fields each type of profile reads (its channel module, herald.channels.<module>, and
-- delivery's rate limits): anything else is a misspelling that would otherwise run with the
-- defaults (no auth header, no rate limit), so it stops the load. Types sending over HTTP
-- share the transport's fields.
local HTTP = { 'url', 'connections', 'timeout_ms', 'ca_file' }
local FIELDS = {
  smtp = { 'url', 'from', 'envelope_from', 'username', 'password', 'starttls', 'ca_file', 'timeout_ms',
           'sessions', 'headers', 'list_unsubscribe', 'one_click' },
  sms = { 'preset', 'account_sid', 'auth_token', 'json', 'from', 'sender_id', 'opt_out_pattern', 'headers', HTTP },
  webhook = { 'headers', 'endpoints_per_call', 'http1', 'signing_secret', HTTP },
  fcm = { 'project_id', 'service_account', 'token_uri', HTTP },
  apns = { 'team_id', 'key_id', 'key', 'key_file', 'topic', 'sandbox_url', HTTP },
  adm = { 'client_id', 'client_secret', 'token_uri', HTTP },
  baidu = { 'api_key', 'secret_key', 'device_type', HTTP },
  lua = { 'send', 'max_instructions', 'max_seconds' }, file = { 'path' }, stdout = {},
}
FIELDS.http = FIELDS.webhook
local ALLOWED = {}   -- type -> { set = { field = true }, list = { 'type', 'limits', ... } }
for t, own in pairs(FIELDS) do
  local a = { set = { name = true } }   -- name: set by the loader from the profile's key
  local list = {}
  local function add(k)
    if type(k) == 'table' then
      for _, x in ipairs(k) do add(x) end
    elseif not a.set[k] then
      a.set[k], list[#list + 1] = true, k
    end
  end
  add { 'type', 'limits' }
  add(own)
  a.list = list
  ALLOWED[t] = a
end

-- Edit distance, for a hint at the field a misspelt one was meant to be.
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a:byte(i) == b:byte(j) and 0 or 1))
    end
    prev = cur
  end
  return prev[#b]
end

local function check_fields(where, p)
  local allowed = ALLOWED[p.type]
  local unknown = {}
  for k in pairs(p) do
    if not allowed.set[k] then unknown[#unknown + 1] = k end
  end
  if #unknown == 0 then return end
  -- the first in name order, so the same file always gets the same error
  table.sort(unknown, function(a, b) return tostring(a) < tostring(b) end)
  local k = unknown[1]
  local hint = ''
  if type(k) == 'string' then
    local best, best_d
    for _, known in ipairs(allowed.list) do
      local d = distance(k, known)
      if d <= 2 and d < #known and (best_d == nil or d < best_d) then best, best_d = known, d end
    end
    if best then hint = "; did you mean '" .. best .. "'?" end
  end
  fail(where .. (type(k) == 'string' and '.' .. k or '[' .. tostring(k) .. ']'),
    'unknown field (a ' .. p.type .. ' profile has ' .. table.concat(allowed.list, ', ') .. ')' .. hint)
end

local function check_profile(where, p)
  if type(p) ~= 'table' then fail(where, 'expected a table with a type') end
  if not TYPES[p.type] then
    fail(where .. '.type', "one of smtp, sms, fcm, apns, adm, baidu, webhook, http, lua, file, stdout, not '"
      .. tostring(p.type) .. "'")
  end
  check_fields(where, p)
  for _, k in ipairs(REQUIRED[p.type]) do need_string(where, p, k) end
  if p.type == 'lua' and type(p.send) ~= 'function' then fail(where .. '.send', 'required (a function(msg))') end
  if p.signing_secret ~= nil and (type(p.signing_secret) ~= 'string' or p.signing_secret == '') then
    fail(where .. '.signing_secret', 'a non-empty string (os.getenv of a variable that is set)')
  end
  if p.max_instructions ~= nil and (math.type(p.max_instructions) ~= 'integer' or p.max_instructions < 1) then
    fail(where .. '.max_instructions', 'a positive whole number (Lua instructions a send may run)')
  end
  if p.max_seconds ~= nil and (type(p.max_seconds) ~= 'number' or p.max_seconds * 1000 < 1 or p.max_seconds > 86400) then
    fail(where .. '.max_seconds', 'seconds a send may take, from 0.001 to 86400')
  end
  if p.type == 'sms' and p.preset ~= nil and p.preset ~= 'twilio' then
    fail(where .. '.preset', "'twilio' or absent (then json = {...} is the body template)")
  end
  if p.type == 'sms' and p.preset == nil and type(p.json) ~= 'table' then
    fail(where .. '.json', "required without a preset: the JSON body, values are templates")
  end
  if p.type == 'apns' and p.key == nil and p.key_file == nil then fail(where .. '.key', 'key (PEM text) or key_file is required') end
  if p.type == 'baidu' and p.device_type ~= nil and p.device_type ~= 3 and p.device_type ~= 4 then
    fail(where .. '.device_type', '3 (Android, the default) or 4 (iOS)')
  end
  if p.connections ~= nil and (math.type(p.connections) ~= 'integer' or p.connections < 1
                               or p.connections > 10000) then
    fail(where .. '.connections', 'an integer from 1 to 10000')
  end
  if p.sessions ~= nil and (math.type(p.sessions) ~= 'integer' or p.sessions < 1 or p.sessions > 1000) then
    fail(where .. '.sessions', 'an integer from 1 to 1000')
  end
  if p.type == 'sms' and p.preset == 'twilio' then
    for _, k in ipairs({ 'account_sid', 'auth_token' }) do
      if type(p[k]) ~= 'string' or p[k] == '' then
        fail(where .. '.' .. k, 'required by the twilio preset (a string; when it comes from os.getenv, that variable is unset)')
      end
    end
  end
  if p.type == 'sms' and p.preset == nil then
    -- every string in the body is a template: checked now rather than at the first message
    local function check_json(path, v, depth)
      if depth > 16 then fail(path, 'nested too deeply') end
      if type(v) == 'string' then
        local ok, err = template.check(v)
        if not ok then fail(path, err) end
      elseif type(v) == 'table' then
        for k, x in pairs(v) do check_json(path .. '.' .. tostring(k), x, depth + 1) end
      elseif type(v) ~= 'number' and type(v) ~= 'boolean' and v ~= json.null then
        fail(path, 'a string template, number, boolean, table or herald.json.null')
      end
    end
    check_json(where .. '.json', p.json, 0)
  end
  if p.type == 'smtp' and p.starttls ~= nil and p.starttls ~= 'no' and p.starttls ~= 'try' and p.starttls ~= 'required' then
    fail(where .. '.starttls', "'no', 'try' or 'required', not '" .. tostring(p.starttls) .. "'")
  end
  if p.type == 'smtp' and p.list_unsubscribe ~= nil then
    if type(p.list_unsubscribe) ~= 'string' then fail(where .. '.list_unsubscribe', 'a URL template (a string)') end
    local ok, err = template.check(p.list_unsubscribe)
    if not ok then fail(where .. '.list_unsubscribe', err) end
    -- The header carries URIs in printable ASCII on one line (RFC 2369), and the message builder
    -- refuses anything else: every message of the profile would fail for good, one by one.
    -- The template's own text is checked here; what its tags render comes from each endpoint
    -- and fails that endpoint's message alone.
    local at = first_unprintable_literal(p.list_unsubscribe)
    if at then
      fail(where .. '.list_unsubscribe', string.format('URIs in printable ASCII on one line (RFC 2369), but byte %d '
        .. 'is 0x%02X: percent-encode it', at, p.list_unsubscribe:byte(at)))
    end
  end
  if p.type == 'smtp' and p.one_click ~= nil then
    if type(p.one_click) ~= 'boolean' then fail(where .. '.one_click', 'true or false') end
    -- List-Unsubscribe-Post without an https: URI to post to is a header receivers distrust
    if p.one_click and not may_give_https(p.list_unsubscribe) then
      fail(where .. '.one_click', 'needs an https: URI in list_unsubscribe (RFC 8058)')
    end
  end
  if p.headers ~= nil then
    if type(p.headers) ~= 'table' then fail(where .. '.headers', 'expected a table name = value') end
    for k, v in pairs(p.headers) do
      if type(k) ~= 'string' or not k:match('^[!#-\'*+%-.0-9A-Z^_`a-z|~]+$') then
        fail(where .. '.headers', 'header names are tokens (letters, digits, -), not ' .. string.format('%q', tostring(k)))
      end
      if type(v) ~= 'string' or v:find('[\r\n%z]') then
        fail(where .. '.headers.' .. k, 'a string on one line')
      end
      -- the message builder refuses these in every message of the profile (a header it writes
      -- itself, a trace or a resent field): said now, not by a campaign pausing mid-delivery
      local reserved = p.type == 'smtp' and core_http.mail_header_reserved(k)
      if reserved then fail(where .. '.headers.' .. k, reserved) end
    end
  end
  if p.timeout_ms ~= nil and (math.type(p.timeout_ms) ~= 'integer' or p.timeout_ms < 1) then
    fail(where .. '.timeout_ms', 'a positive integer (milliseconds)')
  end
  if (p.type == 'webhook' or p.type == 'http') and p.endpoints_per_call ~= nil
      and (math.type(p.endpoints_per_call) ~= 'integer' or p.endpoints_per_call < 1 or p.endpoints_per_call > 50) then
    fail(where .. '.endpoints_per_call', 'an integer from 1 to 50 (Pinpoint sends at most 50 endpoints per call)')
  end
  p.limits = check_limits(where .. '.limits', p.limits)
  return p
end

-- Checks a providers table; errors name the file and the field.
function providers.check(cfg, source)
  source = source or 'providers'
  if type(cfg) ~= 'table' then fail(source, 'must return a table { profiles = {...}, channels = {...} }') end
  for k in pairs(cfg) do
    if k ~= 'profiles' and k ~= 'channels' and k ~= 'global' and k ~= 'retry' and k ~= 'pause_after'
        and k ~= 'lanes' then
      fail(source .. ': ' .. tostring(k), 'unknown field (profiles, channels, global, retry, pause_after, lanes)')
    end
  end
  local profiles = cfg.profiles or {}
  if type(profiles) ~= 'table' then fail(source .. ': profiles', 'expected a table name = profile') end
  for name, p in pairs(profiles) do
    if type(name) ~= 'string' then fail(source .. ': profiles', 'names must be strings') end
    p.name = name
    check_profile(source .. ': profiles.' .. name, p)
  end
  local channels = cfg.channels or {}
  if type(channels) ~= 'table' then fail(source .. ': channels', 'expected a table CHANNEL_TYPE = profile name') end
  for ch, name in pairs(channels) do
    if not CHANNELS[ch] then fail(source .. ': channels.' .. tostring(ch), 'not a Pinpoint channel type') end
    if profiles[name] == nil then fail(source .. ': channels.' .. ch, "no profile named '" .. tostring(name) .. "'") end
  end
  cfg.profiles, cfg.channels = profiles, channels
  cfg.global = check_limits(source .. ': global', cfg.global)
  local r = cfg.retry or {}
  if type(r) ~= 'table' then fail(source .. ': retry', 'expected { max_attempts =, min_ms =, max_ms = }') end
  cfg.retry = { max_attempts = r.max_attempts or 5, min_ms = r.min_ms or 1000, max_ms = r.max_ms or 300000,
                jitter = r.jitter or 0.5 }
  if math.type(cfg.retry.max_attempts) ~= 'integer' or cfg.retry.max_attempts < 1 then
    fail(source .. ': retry.max_attempts', 'a positive integer')
  end
  -- checked here, not at the first retry: a bad bound found mid-delivery would leave the claim's
  -- messages unrecorded
  local rt = cfg.retry
  -- whole milliseconds (1000.0 is taken as 1000; 100.5 and math.huge are refused)
  local min_ms = type(rt.min_ms) == 'number' and math.tointeger(rt.min_ms)
  if not min_ms or min_ms < 0 then fail(source .. ': retry.min_ms', 'a whole number of milliseconds >= 0') end
  local max_ms = type(rt.max_ms) == 'number' and math.tointeger(rt.max_ms)
  if not max_ms or max_ms < min_ms then
    fail(source .. ': retry.max_ms', 'a whole number of milliseconds >= retry.min_ms (' .. tostring(min_ms) .. ')')
  end
  rt.min_ms, rt.max_ms = min_ms, max_ms
  if type(rt.jitter) ~= 'number' or rt.jitter < 0 or rt.jitter > 1 then fail(source .. ': retry.jitter', 'a number from 0 to 1') end
  cfg.pause_after = cfg.pause_after or 20
  if math.type(cfg.pause_after) ~= 'integer' or cfg.pause_after < 1 then
    fail(source .. ': pause_after', 'a positive integer (consecutive systemic failures before a campaign pauses)')
  end
  cfg.lanes = cfg.lanes or 4
  if math.type(cfg.lanes) ~= 'integer' or cfg.lanes < 1 or cfg.lanes > 16 then
    fail(source .. ': lanes', 'an integer from 1 to 16')
  end
  return cfg
end

-- Loads a providers file: operator configuration, run on the host like the command line
-- itself (a Lua channel's send function may use herald.http and the rest). Returns the checked
-- table; errors name the file.
function providers.load(path)
  local env = setmetatable({ herald = require 'herald' }, { __index = _G })
  local chunk, err = loadfile(path, 't', env)
  if not chunk then error(err, 0) end
  -- bounded as a Lua channel's send is: a file that never finishes loading would hang the
  -- command, which could not then be stopped by SIGTERM either
  local ok, cfg = require('herald.core.guard').call({ name = path, instructions = 100000000, ms = 60000 }, chunk)
  if not ok then error(tostring(cfg), 0) end
  return providers.check(cfg, path)
end

-- The configuration used when no providers file is given: the built-in stdout channel.
function providers.default()
  return providers.check({}, 'providers')
end

return providers
