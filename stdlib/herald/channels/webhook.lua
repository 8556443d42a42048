-- CUSTOM / webhook channel: Pinpoint's custom-channel payload POSTed to a URL, at most 50
-- endpoints per call (profile.endpoints_per_call, default 1 so each call carries exactly one
-- message and its Idempotency-Key is the message id; with more, the key lists the ids). A call
-- of several carries one Message and Data for all its Endpoints, as Pinpoint's does, so it
-- groups only messages that share all of them and their campaign, treatment and run, and
-- never one endpoint twice.
local json = require 'herald.json'
local util = require 'herald.channels.util'
local digest = require 'herald.core.digest'
local clock = require 'herald.core.clock'

local webhook = {}
webhook.__index = webhook

function webhook.new(profile)
  local per = profile.endpoints_per_call or 1
  if math.type(per) ~= 'integer' or per < 1 or per > 50 then
    error('profiles.' .. profile.name .. '.endpoints_per_call: 1..50 (Pinpoint sends at most 50)', 0)
  end
  local headers = { ['Content-Type'] = 'application/json' }
  for k, v in pairs(profile.headers or {}) do headers[k] = v end
  return setmetatable({ profile = profile, per = per, headers = headers, secret = profile.signing_secret }, webhook)
end

-- With a signing_secret, every call carries Herald-Signature: t=<unix seconds>,v1=<hex
-- HMAC-SHA256 of "<t>.<body>" under the secret>, so the receiver can tell herald's calls from
-- anyone else's who knows the URL, and refuse an old one replayed (by t).
local function signature(secret, body, now_s)
  return string.format('t=%d,v1=%s', now_s, digest.hmac_sha256_hex(secret, now_s .. '.' .. body))
end

local function sign(self, reqs)
  if self.secret == nil then return end
  local now_s = clock.now() // 1000
  for _, r in ipairs(reqs) do r.headers = { ['Herald-Signature'] = signature(self.secret, r.body, now_s) } end
end

-- Endpoints go out as stored: a campaign message carries its endpoint as a template context
-- (json.encode writes a context as the JSON it holds), a direct message as a table.
function webhook.payload(group)
  local m = group[1]
  local eps = {}
  for _, x in ipairs(group) do
    -- a direct message to an address has no endpoint id: the address stands for it
    local id = x.endpoint_id or x.address
    if eps[id] == nil then eps[id] = rawget(x, 'ctx') or x.endpoint end
  end
  return json.encode {
    Message = { Body = m.body, Title = m.title },
    Data = m.custom_data or m.data or m.body,
    ApplicationId = m.app_id, CampaignId = m.campaign_id, TreatmentId = tostring(m.treatment_id),
    ActivityId = m.activity_id, ScheduledTime = m.scheduled_time,
    Endpoints = json.object(eps),
  }
end

-- What the messages of one call must share: every field the payload takes from its first
-- message (Data and Message are rendered per endpoint, and a hook's overrides are per
-- endpoint too), each length-prefixed so no two different tuples make the same key.
local function group_key(m)
  local data = m.custom_data
  if data == nil and m.data ~= nil then data = json.encode(m.data) end
  local parts = {}
  for i, v in ipairs({ m.campaign_id or false, m.treatment_id or false, m.activity_id or false,
                       m.scheduled_time or false, m.url or false, m.title or false, m.body or false,
                       data or false }) do
    local s = v == false and '' or tostring(v)
    parts[i] = (v == false and '-' or '+') .. #s .. ':' .. s
  end
  return table.concat(parts)
end

local function verdict(o)
  local unsent = util.unsent(o)
  if unsent then return unsent end
  return { verdict = o.verdict, retry_after_ms = o.retry_after_ms,
           reason = o.verdict ~= 'delivered' and util.reason(o) or nil,
           systemic = o.class ~= 'ok' or o.status >= 500 or o.status == 401 or o.status == 403,
           unavailable = util.unavailable(o) or nil }
end

webhook.verdict = verdict

-- Whether delivery's webhook lane (herald.core.lane) may send this channel's campaign
-- messages: it writes one-endpoint calls and does not sign them.
function webhook:lane_ok()
  return self.per == 1 and self.secret == nil
end

-- The batch options of every call: send's and the lane's requests go out alike.
local function batch_opts(self)
  return { key_header = 'Idempotency-Key', headers = self.headers, http1 = self.profile.http1 }
end

-- An empty batch for n of the lane's requests.
function webhook:lane_batch(n)
  return util.http_batch(self.profile, n, nil, batch_opts(self))
end

-- Outcomes are read-only to the caller: every plain delivery shares one.
local DELIVERED = { verdict = 'delivered', systemic = false }

-- Outcomes of one-message calls come to progress(indexes, outcomes) in chunks as they finish,
-- when a progress function is given (util.CHUNK); the whole list is returned as well.
function webhook:send(msgs, progress)
  local reqs, groups = {}, nil
  if self.per == 1 then
    -- one message per call, its Idempotency-Key the message id
    for i, m in ipairs(msgs) do reqs[i] = { body = webhook.payload { m }, key = m.key, url = m.url, gate = m.gate } end
  else
    groups = {}
    local open = {}
    for i, m in ipairs(msgs) do
      local gk = group_key(m)
      local g = open[gk]
      local id = m.endpoint_id or m.address
      if g == nil or #g >= self.per or g.ids[id] then
        g = { idx = {}, ids = {} }
        open[gk] = g
        groups[#groups + 1] = g
      end
      g[#g + 1] = m
      g.idx[#g.idx + 1] = i
      g.ids[id] = true
    end
    for gi, g in ipairs(groups) do
      local keys = {}
      for k, m in ipairs(g) do keys[k] = m.key end
      -- a call's messages are of one campaign, so behind one gate
      reqs[gi] = { body = webhook.payload(g), key = table.concat(keys, ','), url = g[1].url, gate = g[1].gate }
    end
  end
  sign(self, reqs)
  local opts = batch_opts(self)
  local out = {}
  if groups == nil then
    local function take(res)
      local seq, verdicts, after = res.seq, res.verdict, res.retry_after_ms
      for i = 1, res.n do
        if verdicts[i] == 'delivered' and after[i] == nil then
          out[seq[i]] = DELIVERED
        else
          out[seq[i]] = verdict { verdict = verdicts[i], status = res.status[i], class = res.class[i],
                                  detail = res.detail[i], retry_after_ms = after[i] }
        end
      end
    end
    util.send_http_taking(self.profile, reqs, opts, take, progress and function(res)
      local outs = {}
      for i = 1, res.n do outs[i] = out[res.seq[i]] end
      progress(res.seq, outs)
    end)
    return out
  end
  local res = util.send_http(self.profile, reqs, opts)
  for gi, g in ipairs(groups) do
    local r = verdict(res[gi])
    for _, i in ipairs(g.idx) do out[i] = r end
  end
  return out
end

return webhook
