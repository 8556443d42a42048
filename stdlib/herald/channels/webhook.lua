-- CUSTOM / webhook channel: Pinpoint's custom-channel payload POSTed to a URL, at most 50
-- endpoints per call (profile.endpoints_per_call, default 1 so each call carries exactly one
-- message and its Idempotency-Key is the message id; with more, the key lists the ids).
local json = require 'herald.json'
local util = require 'herald.channels.util'

local webhook = {}
webhook.__index = webhook

function webhook.new(profile)
  local per = profile.endpoints_per_call or 1
  if math.type(per) ~= 'integer' or per < 1 or per > 50 then
    error('profiles.' .. profile.name .. '.endpoints_per_call: 1..50 (Pinpoint sends at most 50)', 0)
  end
  local headers = { ['Content-Type'] = 'application/json' }
  for k, v in pairs(profile.headers or {}) do headers[k] = v end
  return setmetatable({ profile = profile, per = per, headers = headers }, webhook)
end

-- Endpoints go out as stored: a campaign message carries its endpoint as a template context
-- (ctx:json()), a direct message as a table.
function webhook.payload(group)
  local m = group[1]
  local head = json.encode {
    Message = { Body = m.body, Title = m.title },
    Data = m.custom_data or m.data or m.body,
    ApplicationId = m.app_id, CampaignId = m.campaign_id, TreatmentId = tostring(m.treatment_id),
    ActivityId = m.activity_id, ScheduledTime = m.scheduled_time,
  }
  local parts, seen = {}, {}
  for _, x in ipairs(group) do
    if not seen[x.endpoint_id] then
      seen[x.endpoint_id] = true
      local ep = rawget(x, 'ctx')
      parts[#parts + 1] = json.encode(x.endpoint_id) .. ':' .. (ep and ep:json() or json.encode(x.endpoint))
    end
  end
  return head:sub(1, -2) .. ',"Endpoints":{' .. table.concat(parts, ',') .. '}}'
end

function webhook:send(msgs)
  local groups, reqs = {}, {}
  local open = {}
  for i, m in ipairs(msgs) do
    local gk = tostring(m.campaign_id) .. '\0' .. tostring(m.treatment_id) .. '\0' .. (m.url or '')
    local g = open[gk]
    if g == nil or #g >= self.per then
      g = { idx = {} }
      open[gk] = g
      groups[#groups + 1] = g
    end
    g[#g + 1] = m
    g.idx[#g.idx + 1] = i
  end
  for gi, g in ipairs(groups) do
    local keys = {}
    for k, m in ipairs(g) do keys[k] = m.key end
    reqs[gi] = { body = webhook.payload(g), key = table.concat(keys, ','), url = g[1].url }
  end
  local res = util.send_http(self.profile, reqs, { key_header = 'Idempotency-Key', headers = self.headers,
                                                   http1 = self.profile.http1 })
  local out = {}
  for gi, g in ipairs(groups) do
    local o = res[gi]
    local r = { verdict = o.verdict, retry_after_ms = o.retry_after_ms,
                reason = o.verdict ~= 'delivered' and util.reason(o) or nil,
                systemic = o.class ~= 'ok' or o.status >= 500 or o.status == 401 or o.status == 403 }
    for _, i in ipairs(g.idx) do out[i] = r end
  end
  return out
end

return webhook
