-- Shared by the channel modules: sending prepared HTTP requests through one batch, turning
-- outcomes into delivery verdicts, base64 and JSON helpers.
local http = require 'herald.core.http'
local clock = require 'herald.core.clock'
local core = require 'herald.core.deliver'
local json = require 'herald.json'

local util = {}

function util.base64(s)
  local b = core.b64url(s):gsub('-', '+'):gsub('_', '/')
  return b .. string.rep('=', (4 - #b % 4) % 4)
end

-- A profile's connections are a cap on its requests in flight, however many batches (delivery
-- lanes) send at once.
local limits = setmetatable({}, { __mode = 'k' })
local function profile_limit(profile)
  local l = limits[profile]
  if l == nil then
    l = http.limit(profile.connections or 50)
    limits[profile] = l
  end
  return l
end

-- Sends reqs ({body=, key=, url=, headers=, gate=}) as one batch with profile's connections,
-- method and TLS options; returns the outcomes as the batch gives them, by column (res.n,
-- res.seq[i] the index in reqs, res.verdict[i], res.status[i], res.class[i], res.detail[i],
-- res.retry_after_ms[i]), for callers that make no table per request. A request's gate is its
-- message's (msg.gate, set by delivery): closed before the request starts, it comes back
-- unsent (class 'recalled', util.recalled).
-- An empty batch for n requests to url (default the profile's), with the profile's options.
function util.http_batch(profile, n, url, opts)
  return http.batch {
    url = url or profile.url, method = opts.method or 'POST', limit = profile_limit(profile),
    concurrency = math.min(profile.connections or 50, n),
    timeout_ms = profile.timeout_ms or 30000, key_header = opts.key_header,
    headers = opts.headers, ca_file = profile.ca_file, http1 = opts.http1,
  }
end

local function open_batch(profile, reqs, opts)
  local b = util.http_batch(profile, #reqs, reqs[1].url, opts)
  for _, r in ipairs(reqs) do
    if r.url or r.headers or r.gate then
      b:add(r.body, r.key, { url = r.url, headers = r.headers, gate = r.gate })
    else
      b:add(r.body, r.key)
    end
  end
  return b
end

function util.send_http_columns(profile, reqs, opts)
  opts = opts or {}
  if #reqs == 0 then return { n = 0 } end
  local b <close> = open_batch(profile, reqs, opts)
  return b:wait()
end

-- Outcomes a channel tells delivery as they finish (send(msgs, progress)): in chunks of this
-- many, each recorded in a transaction of its own, so a process killed meanwhile has fewer
-- messages sent but unrecorded, which it would send again after its restart.
util.CHUNK = 64

-- The same, handing the outcome columns to take(res): all at once, or, when told is given, a
-- chunk at a time as they finish, each followed by told(res) unless it is every outcome. The
-- requests given back unsent when their gate closes end a chunk early: the caller gives their
-- messages back at once (a paused campaign's go back to PENDING), not when the requests on
-- the wire before them have finished too.
local RECALLED = { recalled = true }
util.RECALLED = RECALLED
function util.send_http_taking(profile, reqs, opts, take, told)
  if told == nil then
    take(util.send_http_columns(profile, reqs, opts))
    return
  end
  local b <close> = open_batch(profile, reqs, opts or {})
  local left = #reqs
  while left > 0 do
    local res = b:wait(math.min(util.CHUNK, left), RECALLED)
    if res.n == 0 then break end   -- nothing outstanding: a closed batch
    left = left - res.n
    take(res)
    if res.n < #reqs then told(res) end
  end
end

-- The same, with outcomes by index: {verdict=, status=, class=, detail=, retry_after_ms=}.
-- With progress (a channel's send(msgs, progress)) and to_verdicts (outcomes -> the channel's
-- verdicts, in step), the verdicts of finished requests go to progress(indexes, verdicts) in
-- chunks on the way; every outcome is returned as well.
function util.send_http(profile, reqs, opts, progress, to_verdicts)
  local out = {}
  local function take(res)
    for i = 1, res.n do
      out[res.seq[i]] = { verdict = res.verdict[i], status = res.status[i], class = res.class[i],
                          detail = res.detail[i], retry_after_ms = res.retry_after_ms[i] }
    end
  end
  util.send_http_taking(profile, reqs, opts, take, progress and to_verdicts and function(res)
    local outs = {}
    for i = 1, res.n do outs[i] = out[res.seq[i]] end
    progress(res.seq, to_verdicts(outs))
  end)
  return out
end

-- The same failure for each of n messages: a whole batch fails when no request could be made
-- (no access token, no signing key).
function util.fail_all(n, verdict, reason)
  local out = {}
  for i = 1, n do out[i] = { verdict = verdict, reason = reason, systemic = true } end
  return out
end

-- An OAuth2 access token for client (a channel object with profile and token_uri), kept in
-- client.access until a minute before it expires (the caller drops it when a send is refused).
-- form(now_ms) -> body | nil, reason makes the token request's body when a new token is due;
-- content_type is its type; name prefixes failures. -> token | nil, reason
function util.access_token(client, name, content_type, form)
  local now = clock.now()
  if client.access and now < client.expires_ms then return client.access end
  local body, ferr = form(now)
  if not body then return nil, name .. ' token: ' .. tostring(ferr) end
  local res, rerr = http.request {
    url = client.token_uri, method = 'POST', ca_file = client.profile.ca_file,
    headers = { ['Content-Type'] = content_type }, body = body,
  }
  if not res then return nil, name .. ' token: ' .. tostring(rerr) end
  local b = util.decode(res.body)
  if res.status ~= 200 or not b or type(b.access_token) ~= 'string' then
    -- an OAuth2 error answer names error and error_description (RFC 6749 section 5.2)
    local why = b and b.error and (tostring(b.error) .. ': ' .. tostring(b.error_description or ''))
      or tostring(res.body):sub(1, 200)
    return nil, name .. ' token: HTTP ' .. res.status .. ': ' .. why
  end
  client.access = b.access_token
  client.expires_ms = now + math.max((tonumber(b.expires_in) or 3600) - 60, 1) * 1000
  return client.access
end

-- Delivery verdicts from outcomes (util.send_http). judge(o) is asked about each outcome not
-- delivered (and, with opts.delivered, about delivered ones too, for providers that refuse a
-- message in a 200 answer's body) and returns the provider's reason (put before the HTTP
-- reason; a delivered outcome given one is refused) and what the refusal means: 'inactive'
-- (the device is gone: permanent, the endpoint made INACTIVE), 'token' (the credentials were
-- refused: transient and systemic; judge drops the cached token), 'retry' (the provider asks
-- to come back: transient and systemic), 'profile' (the provider refuses the profile's
-- configuration, a topic or certificate, which the next message would meet too: transient and
-- systemic), 'refused' (permanent, and the provider refuses the
-- whole batch), 'systemic' (the provider cannot take the batch) or nil (transport failures and
-- 5xx are systemic, the rest concern the message only).
function util.verdicts(res, judge, opts)
  local ask_delivered = opts and opts.delivered
  local out = {}
  for i, o in ipairs(res) do
    local r = util.unsent(o)
    local why, meaning
    if r == nil then
      r = { verdict = o.verdict, retry_after_ms = o.retry_after_ms }
      if o.verdict ~= 'delivered' or ask_delivered then why, meaning = judge(o) end
    end
    if not (r.held or r.recalled) and (o.verdict ~= 'delivered' or why) then
      r.reason = (why and (why .. ': ') or '') .. util.reason(o)
      if meaning == 'inactive' then
        r.verdict, r.feedback = 'permanent', 'INACTIVE'
      elseif meaning == 'token' or meaning == 'retry' or meaning == 'profile' then
        -- 'retry': the provider's passing state (APNs's IdleTimeout), no refusal
        r.verdict, r.systemic, r.unavailable = 'transient', true, meaning == 'retry' or nil
      elseif meaning == 'refused' then
        r.verdict, r.systemic = 'permanent', true
      else
        if r.verdict == 'delivered' then r.verdict = 'permanent' end
        r.systemic = meaning == 'systemic' or o.class ~= 'ok' or o.status >= 500
        r.unavailable = meaning ~= 'systemic' and util.unavailable(o) or nil
      end
    end
    out[i] = r
  end
  return out
end

-- The verdict of a request the transport held back unsent because the provider answered an
-- earlier one of the profile with 429 or 503 and Retry-After (class 'held', the time left in
-- retry_after_ms): transient, not the provider failing (it counts towards no pause), and
-- marked held so delivery gives the message back without spending an attempt.
function util.held(o)
  return { verdict = 'transient', held = true, retry_after_ms = o.retry_after_ms,
           reason = util.reason(o) }
end

-- The verdict of a request or mail given back unsent because its message's gate closed
-- before the transport started it (class 'recalled': the campaign was paused, or the process
-- is stopping): transient, not the provider failing, and marked recalled so delivery gives the
-- message back without spending an attempt.
function util.recalled(o)
  return { verdict = 'transient', recalled = true, reason = util.reason(o) }
end

-- Whether a failed outcome is the provider unavailable (down, unreachable, a connection
-- broken, a 5xx) rather than refusing the profile (a refused token, sender or topic): both are
-- systemic, but a message that meets unavailability on all its attempts is dead-lettered,
-- while one refused on all of them pauses its campaign (deliver.lua), as the same refusal
-- awaits every message.
local UNAVAILABLE = { timeout = true, connect = true, reset = true, protocol = true }
function util.unavailable(o)
  return UNAVAILABLE[o.class] == true or (o.class == 'ok' and (o.status or 0) >= 500)
end

-- The verdict of a request the provider refused with its throttle: a 429, or a 503 with
-- Retry-After (a 503 without one is the provider failing). The message is not at fault, nor is
-- the profile: like a held one it goes back without spending an attempt (a provider that
-- allows 10 a second would otherwise see a claim's burst refused and fail most of it for good
-- within seconds) and counts towards no pause; delivery holds the profile for the Retry-After,
-- or for a wait of its own that grows while the provider keeps refusing.
function util.throttled(o)
  return { verdict = 'transient', held = true, throttled = true, retry_after_ms = o.retry_after_ms,
           reason = util.reason(o) }
end

-- The verdict of an outcome that was never sent (util.held, util.recalled) or that the
-- provider's throttle refused (util.throttled), or nil.
function util.unsent(o)
  if o.class == 'held' then return util.held(o) end
  if o.class == 'recalled' then return util.recalled(o) end
  if o.class == 'ok' and (o.status == 429 or (o.status == 503 and o.retry_after_ms)) then
    return util.throttled(o)
  end
end

-- A short reason for a failed outcome: "HTTP 503: body start" or "timeout: text".
function util.reason(o)
  local d = o.detail and o.detail:gsub('%s+', ' '):sub(1, 200) or ''
  if o.class ~= 'ok' then return o.class .. (d ~= '' and (': ' .. d) or '') end
  return 'HTTP ' .. tostring(o.status) .. (d ~= '' and (': ' .. d) or '')
end

function util.decode(s)
  if not s then return nil end
  local ok, v = pcall(json.decode, s)
  if ok and type(v) == 'table' then return v end
end

-- String-valued map (FCM data and similar need strings).
function util.strings(t)
  if type(t) ~= 'table' then return nil end
  local out = {}
  for k, v in pairs(t) do out[tostring(k)] = type(v) == 'string' and v or json.encode(v) end
  return out
end

-- A campaign message's attribution as Pinpoint's push payloads carry it, so the mobile SDKs
-- can record _campaign.opened_notification (and the other push events) against the
-- campaign, treatment and run: {campaign_id=, treatment_id=, campaign_activity_id=} for a
-- campaign message (one with a run), nil for a direct one.
function util.campaign_attribution(m)
  if m.activity_id == nil or m.campaign_id == nil then return nil end
  return { campaign_id = tostring(m.campaign_id), treatment_id = tostring(m.treatment_id or 0),
           campaign_activity_id = tostring(m.activity_id) }
end

-- Android's form of it (FCM, ADM, Baidu data): flat `pinpoint.campaign.*` keys added to the
-- string map data (made when nil and there is something to add). Returns data.
function util.add_campaign_keys(data, m)
  local a = util.campaign_attribution(m)
  if a == nil then return data end
  data = data or {}
  for k, v in pairs(a) do data['pinpoint.campaign.' .. k] = v end
  return data
end

-- A JWS compact token: header and claims JSON, signed with alg.
function util.jwt(alg, header, claims, pem)
  local input = core.b64url(json.encode(header)) .. '.' .. core.b64url(json.encode(claims))
  local sig, err = core.sign(alg, pem, input)
  if not sig then return nil, err end
  return input .. '.' .. sig
end

-- application/x-www-form-urlencoded as PHP's urlencode writes it (letters, digits and -_.
-- kept, space as +, the rest %XX): the form bodies of token endpoints and Baidu's signature
-- base string use it.
function util.urlencode(s)
  return (tostring(s):gsub('[^%w%-%._ ]', function(c) return string.format('%%%02X', c:byte()) end):gsub(' ', '+'))
end

-- A form body from an array of {name, value} pairs (nil values left out).
function util.form(pairs_)
  local parts = {}
  for _, kv in ipairs(pairs_) do
    if kv[2] ~= nil then parts[#parts + 1] = util.urlencode(kv[1]) .. '=' .. util.urlencode(kv[2]) end
  end
  return table.concat(parts, '&')
end

function util.read_file(path)
  local f, err = io.open(path, 'rb')
  if not f then return nil, err end
  local s = f:read('a')
  f:close()
  return s
end

return util
