-- Direct messages with Pinpoint's SendMessages / SendUsersMessages semantics:
--
--   local res = herald.send {
--     Addresses = { ['+15550101'] = { ChannelType = 'SMS', Substitutions = {...}, BodyOverride = '...' } },
--     Endpoints = { ['ep-1'] = { Substitutions = {...} } },
--     Users     = { ['user-1'] = {} },                     -- every endpoint of the user
--     MessageConfiguration = { SMSMessage = { Body = 'Hi {{User.UserAttributes.FirstName}}' },
--                              DefaultMessage = { Body = '...' } },
--     TraceId = 'order-1234',                              -- part of every message's id
--   }
--   res.Result[address].DeliveryStatus, res.EndpointResult[id], res.UsersResult[user][endpoint]
--
-- DeliveryStatus is SUCCESSFUL, THROTTLED (over a provider limit: not sent), TEMPORARY_FAILURE,
-- PERMANENT_FAILURE, UNKNOWN_FAILURE, OPT_OUT (the endpoint opted out, or the provider says the
-- recipient did) or DUPLICATE (the same channel and address earlier in the request). Messages
-- go through the providers file herald.deliver is configured with (opts.providers: a path or a
-- table), concurrently; the call waits, so it runs in a task. The MessageId of each is its
-- idempotency key, derived from TraceId (or a fresh request id) and the address.
local deliver = require 'herald.deliver'
local providers = require 'herald.providers'
local outbox = require 'herald.core.outbox'
local endpoints = require 'herald.endpoints'
local json = require 'herald.json'

local send = {}

local PUSH = { APNS = 'APNSMessage', APNS_SANDBOX = 'APNSMessage', APNS_VOIP = 'APNSMessage',
               APNS_VOIP_SANDBOX = 'APNSMessage', GCM = 'GCMMessage', ADM = 'ADMMessage',
               BAIDU = 'BaiduMessage' }

local function channel_message(config, channel)
  local key = (channel == 'EMAIL' and 'EmailMessage') or (channel == 'SMS' and 'SMSMessage')
    or (channel == 'VOICE' and 'VoiceMessage') or PUSH[channel]
  local m = key and config[key]
  if m == nil and PUSH[channel] then m = config.DefaultPushNotificationMessage end
  return m or config.DefaultMessage
end

local function fail(msg) error('herald.send: ' .. msg, 3) end

-- Merges Substitutions: the message's own (lower precedence) under the address's.
local function merged(a, b)
  if a == nil then return b end
  if b == nil then return a end
  local out = {}
  for k, v in pairs(a) do out[k] = v end
  for k, v in pairs(b) do out[k] = v end
  return out
end

local request_seq = 0

local function status_code(status)
  return ({ SUCCESSFUL = 200, THROTTLED = 429, TEMPORARY_FAILURE = 503, PERMANENT_FAILURE = 400,
            UNKNOWN_FAILURE = 500, OPT_OUT = 400, DUPLICATE = 400 })[status]
end

function send.send(req, opts)
  if type(req) ~= 'table' then fail('expected a table { Addresses =, Endpoints =, Users =, MessageConfiguration = }') end
  opts = opts or {}
  if opts.providers ~= nil then
    local cfg = opts.providers
    cfg = type(cfg) == 'string' and providers.load(cfg) or providers.check(cfg, 'providers')
    deliver.configure(cfg)
  end
  local config = req.MessageConfiguration
  if type(config) ~= 'table' then fail('MessageConfiguration is required') end
  request_seq = request_seq + 1
  local request_id = req.TraceId or string.format('%x-%d', os.time(), request_seq)
  local app = opts.app or require('herald.core').app()

  -- One entry per message to send: {address=, channel=, ctx=, subs=, override=, result=}
  local work = {}
  local seen = {}
  local function add(address, channel, ctx, spec, endpoint_id, result_slot)
    local r = { Address = address }
    result_slot(r)
    if type(channel) ~= 'string' then
      r.DeliveryStatus, r.StatusMessage = 'PERMANENT_FAILURE', 'ChannelType is required'
      return
    end
    local dkey = channel .. '\0' .. address
    if seen[dkey] then
      r.DeliveryStatus, r.StatusMessage = 'DUPLICATE', 'the same message to this address is earlier in the request'
      return
    end
    seen[dkey] = true
    if ctx and ctx.OptOut == 'ALL' then
      r.DeliveryStatus, r.StatusMessage = 'OPT_OUT', 'the endpoint opted out'
      return
    end
    -- EndpointStatus is not looked at: Pinpoint's SendMessages ignores it (only campaigns and
    -- journeys leave INACTIVE endpoints out), so a direct message reaches a device a campaign
    -- would skip
    work[#work + 1] = { address = address, channel = channel, ctx = ctx or { Address = address, ChannelType = channel },
                        spec = spec or {}, endpoint_id = endpoint_id, result = r }
  end

  local result, endpoint_result, users_result = {}, {}, {}
  for address, spec in pairs(req.Addresses or {}) do
    if type(spec) ~= 'table' then fail('Addresses.' .. tostring(address) .. ': expected a table with ChannelType') end
    add(address, spec.ChannelType, nil, spec, nil, function(r) result[address] = r end)
  end
  local function add_endpoint(id, spec, slot)
    local ep = endpoints.get(id, app and { app = app } or nil)
    if ep == nil then
      slot({ DeliveryStatus = 'PERMANENT_FAILURE', StatusMessage = 'no endpoint ' .. id })
      return
    end
    add(ep.Address, ep.ChannelType, ep, spec, id, slot)
  end
  for id, spec in pairs(req.Endpoints or {}) do
    add_endpoint(id, spec, function(r) endpoint_result[id] = r end)
  end
  for user, spec in pairs(req.Users or {}) do
    users_result[user] = {}
    local eps = endpoints.by_user(user, app and { app = app } or nil) or {}
    for _, ep in ipairs(eps) do
      add_endpoint(ep.Id, spec, function(r) users_result[user][ep.Id] = r end)
    end
  end

  local items = {}
  for _, w in ipairs(work) do
    local r = w.result
    local m = channel_message(config, w.channel)
    local profile, rerr = deliver.route_channel(w.channel)
    if m == nil then
      r.DeliveryStatus, r.StatusMessage = 'PERMANENT_FAILURE', 'no message for channel ' .. w.channel
    elseif profile == nil then
      r.DeliveryStatus, r.StatusMessage = 'PERMANENT_FAILURE', rerr
    else
      local subs = merged(merged(config.DefaultMessage and config.DefaultMessage.Substitutions, m.Substitutions),
                          w.spec.Substitutions)
      local simple = m.SimpleEmail or {}
      local title_t = w.spec.TitleOverride or m.Title or (simple.Subject and simple.Subject.Data)
      local body_t = w.spec.BodyOverride or m.Body or (simple.TextPart and simple.TextPart.Data)
      local html_t = m.HtmlBody or (simple.HtmlPart and simple.HtmlPart.Data)
      local title, e1 = deliver.render_text(title_t, w.ctx, false, subs)
      local body, e2 = deliver.render_text(body_t, w.ctx, false, subs)
      local html, e3 = deliver.render_text(html_t, w.ctx, true, subs)
      local err = e1 or e2 or e3
      if err then
        r.DeliveryStatus, r.StatusMessage = 'PERMANENT_FAILURE', 'RENDER_FAILED: ' .. err
      else
        local key = outbox.message_id(app or '', 'send:' .. request_id, 0, w.channel .. ':' .. w.address)
        r.MessageId = key
        local granted = deliver.take(profile)
        if not granted then
          r.DeliveryStatus, r.StatusMessage = 'THROTTLED', 'over the limits of profile ' .. profile.name
        else
          items[#items + 1] = { profile = profile, w = w, msg = {
            key = key, address = w.address, channel = w.channel, endpoint_id = w.endpoint_id,
            endpoint = w.ctx, title = title, body = body, html = html,
            data = type(m.Data) == 'table' and m.Data or nil, from = m.FromAddress,
            silent = m.SilentPush == true, ttl = tonumber(m.TimeToLive),
            consolidation_key = m.ConsolidationKey, expires_after = tonumber(m.ExpiresAfter),
            origination_number = m.OriginationNumber, sender_id = m.SenderId,
            message_type = m.MessageType, keyword = m.Keyword, campaign_id = req.TraceId,
            treatment_id = 0,
          } }
        end
      end
    end
  end

  if #items > 0 then
    local out = deliver.send_items(items)
    for i, it in ipairs(items) do
      local o, r = out[i], it.w.result
      if o.verdict == 'delivered' then
        r.DeliveryStatus = 'SUCCESSFUL'
      elseif o.error then
        r.DeliveryStatus = 'UNKNOWN_FAILURE'
      elseif o.feedback == 'OPT_OUT' then
        r.DeliveryStatus = 'OPT_OUT'
      elseif o.verdict == 'transient' then
        r.DeliveryStatus = 'TEMPORARY_FAILURE'
      elseif o.verdict == 'permanent' then
        r.DeliveryStatus = 'PERMANENT_FAILURE'
      else
        r.DeliveryStatus = 'UNKNOWN_FAILURE'
      end
      r.StatusMessage = o.reason
      if o.feedback and it.w.endpoint_id then deliver.feedback(it.w.endpoint_id, o.feedback) end
    end
  end

  local function finish(t)
    for _, r in pairs(t) do r.StatusCode = status_code(r.DeliveryStatus) end
  end
  finish(result)
  finish(endpoint_result)
  for _, t in pairs(users_result) do finish(t) end
  return { RequestId = request_id, ApplicationId = app, Result = result, EndpointResult = endpoint_result,
           UsersResult = users_result }
end

return setmetatable(send, { __call = function(_, req, opts) return send.send(req, opts) end })
