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
--   res.Result[address].DeliveryStatus, res.EndpointResult[id]      -- MessageResponse
--   res.Result[user][endpoint].DeliveryStatus                       -- with Users: SendUsersMessageResponse
--
-- A request with Users is a SendUsersMessages request and answers its response
-- ({ApplicationId, RequestId, Result = {user = {endpoint = result}}}); it cannot also have
-- Addresses or Endpoints, as the two Pinpoint requests cannot be combined.
--
-- DeliveryStatus is SUCCESSFUL, THROTTLED (over a provider limit: not sent), TEMPORARY_FAILURE
-- (worth sending again: a provider fault, or a systemic refusal such as refused credentials or
-- a refused sender, with the provider's reason, to send again once the profile is fixed),
-- PERMANENT_FAILURE, UNKNOWN_FAILURE, OPT_OUT (the endpoint opted out; the address is on the
-- app's opt-out list; for an address, an endpoint of the app with that channel and address
-- opted out; or the provider says the recipient did) or DUPLICATE (a message to the same channel and address is sent by an entry
-- before it: Addresses, then Endpoints, then Users, each in sorted order). Messages
-- go through the providers file herald.deliver is configured with (opts.providers: a path or a
-- table), concurrently; the call waits, so it runs in a task. The MessageId of each is its
-- idempotency key, derived from TraceId (or a fresh random request id) and the address. Each
-- message sent is recorded (direct_messages, runtime/outbox.h: 30 days) so provider receipts
-- and bounce or complaint mail of its id reach its endpoint.
--
-- The opt-out list: an SMS OPTOUT (a STOP reply) or an email COMPLAINT of a message sent to an
-- address the request named puts its channel and address on the app's list (the status webhook,
-- runtime/ingest.c), whether or not an endpoint has the address, and so does the provider's own
-- answer to such a message that the recipient opted out (Source 'provider:' and the profile's
-- name, Reason the answer); a message to the address, named or an endpoint's, is then OPT_OUT
-- and not sent. A message to an endpoint records an opt-out on the endpoint instead.
--   herald.send.optouts { channel = 'SMS', address = '+15550101' }   -- both optional
--     -> { { ChannelType, Address, Source = '_SMS.OPTOUT', MessageId, Reason, Timestamp }, ... }
--   herald.send.lift_optout('SMS', '+15550101')   -- true when it was on the list
--
-- TemplateConfiguration names a stored template per channel kind (EmailTemplate,
-- SMSTemplate, PushTemplate, with an optional Version): a channel whose message gives no
-- content of its own (only settings such as FromAddress or MessageType) takes it from the
-- template, rendered with the Substitutions (the message's under the address's or endpoint's,
-- over the template's DefaultSubstitutions). EmailMessage.SimpleEmail.Headers go out with the
-- mail; Context (the request's, under an address's or endpoint's own) is added to a push
-- message's data. JSON nulls in the request count as absent.
local deliver = require 'herald.deliver'
local providers = require 'herald.providers'
local outbox = require 'herald.core.outbox'
local endpoints = require 'herald.endpoints'
local json = require 'herald.json'
local store = require 'herald.core.store'
local clock = require 'herald.core.clock'
local campaign = require 'herald.campaign'

local send = {}

local PUSH = { APNS = 'APNSMessage', APNS_SANDBOX = 'APNSMessage', APNS_VOIP = 'APNSMessage',
               APNS_VOIP_SANDBOX = 'APNSMessage', GCM = 'GCMMessage', ADM = 'ADMMessage',
               BAIDU = 'BaiduMessage' }

local function channel_message(config, channel)
  local key = deliver.message_key(channel)
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

-- A request id no other request (of this process or another) shares: the idempotency keys
-- derive from it, so two requests must never get the same one.
local function fresh_request_id()
  local f = io.open('/dev/urandom', 'rb')
  local bytes = f and f:read(16)
  if f then f:close() end
  request_seq = request_seq + 1
  if bytes == nil or #bytes < 16 then
    -- no /dev/urandom: the time, the process's sequence and Lua's own random numbers
    return string.format('%x-%d-%08x%08x', os.time(), request_seq, math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  end
  return (bytes:gsub('.', function(c) return string.format('%02x', c:byte()) end))
end

-- A copy of a decoded request without its JSON nulls (Pinpoint's JSON may carry "X": null for
-- a field left out).
local function without_nulls(v, depth)
  if v == json.null then return nil end
  if type(v) ~= 'table' or depth > 32 then return v end
  local out = {}
  for k, x in pairs(v) do
    if x ~= json.null then out[k] = without_nulls(x, depth + 1) end
  end
  return setmetatable(out, getmetatable(v))
end

-- Whether a channel message gives content, not only settings.
local function has_content(m)
  local simple = type(m.SimpleEmail) == 'table' and m.SimpleEmail or {}
  return m.Title ~= nil or m.Body ~= nil or m.HtmlBody ~= nil or m.RawContent ~= nil or type(m.Data) == 'string'
    or simple.Subject ~= nil or simple.TextPart ~= nil or simple.HtmlPart ~= nil
end


-- Whether an endpoint of app with this channel and address opted out: an address the request
-- names is refused as its endpoint would be.
local function address_opted_out(app, channel, address)
  local rows, err = store.query("SELECT 1 AS x FROM endpoints WHERE app_id = ? AND address = ? AND channel_type = ?"
                                .. " AND opt_out = 'ALL' LIMIT 1", app, address, channel)
  if rows == nil then error('herald.send: ' .. tostring(err), 0) end
  return rows[1] ~= nil
end

-- The app's opt-out list entry for channel and address, or nil.
local function listed_optout(app, channel, address)
  local rows, err = store.query('SELECT source, message_id, opted_out_at FROM address_optouts'
                                .. ' WHERE app_id = ? AND channel = ? AND address = ?', app, channel, address)
  if rows == nil then error('herald.send: ' .. tostring(err), 0) end
  return rows[1]
end

-- The request's shape, checked before anything is sent: a field of the wrong type is refused
-- with its path (MessageConfiguration.SMSMessage.Body: expected a string), as a campaign
-- definition's is, rather than failing inside rendering or being passed on to a provider.
local function refuse(msg) error('herald.send: ' .. msg, 0) end

local MESSAGE_KEYS = { ADMMessage = true, APNSMessage = true, BaiduMessage = true, DefaultMessage = true,
  DefaultPushNotificationMessage = true, EmailMessage = true, GCMMessage = true, SMSMessage = true,
  VoiceMessage = true, CustomMessage = true }
local STRING_FIELDS = { 'Action', 'Body', 'Title', 'HtmlBody', 'Url', 'ImageUrl', 'ImageIconUrl',
  'SmallImageIconUrl', 'IconReference', 'Sound', 'Priority', 'RestrictedPackageName', 'RawContent',
  'APNSPushType', 'Category', 'ThreadId', 'CollapseId', 'MediaUrl', 'PreferredAuthenticationMethod',
  'ConsolidationKey', 'ExpiresAfter', 'MD5', 'Keyword', 'OriginationNumber', 'SenderId', 'EntityId',
  'TemplateId', 'FromAddress', 'FeedbackForwardingAddress', 'LanguageCode', 'VoiceId' }

-- An object of name = value; values are strings, or numbers and booleans a channel writes as
-- strings (push data goes out as strings)
local SCALAR = { string = true, number = true, boolean = true }
local function check_map(path, t, what)
  if type(t) ~= 'table' then refuse(path .. ': expected an object of ' .. what) end
  for k, v in pairs(t) do
    if type(k) ~= 'string' then refuse(path .. ': expected an object of ' .. what .. ', not a list') end
    if not SCALAR[type(v)] then refuse(path .. '.' .. k .. ': expected a string, number or boolean') end
  end
end

-- Substitutions: name -> list of strings (Pinpoint's), or a string
local function check_substitutions(path, t)
  if t == nil then return end
  if type(t) ~= 'table' then refuse(path .. ': expected an object of name = { values }') end
  for k, v in pairs(t) do
    if type(k) ~= 'string' then refuse(path .. ': expected an object of name = { values }, not a list') end
    if type(v) == 'table' then
      for i, x in pairs(v) do
        if math.type(i) ~= 'integer' or type(x) ~= 'string' then refuse(path .. '.' .. k .. ': expected a list of strings') end
      end
    elseif type(v) ~= 'string' then
      refuse(path .. '.' .. k .. ': expected a list of strings')
    end
  end
end

local function check_part(path, t)
  if t == nil then return end
  if type(t) ~= 'table' then refuse(path .. ': expected an object { Data =, Charset = }') end
  for _, f in ipairs({ 'Data', 'Charset' }) do
    if t[f] ~= nil and type(t[f]) ~= 'string' then refuse(path .. '.' .. f .. ': expected a string') end
  end
end

local function check_message(path, m)
  if type(m) ~= 'table' then refuse(path .. ': expected an object') end
  for _, f in ipairs(STRING_FIELDS) do
    if m[f] ~= nil and type(m[f]) ~= 'string' then refuse(path .. '.' .. f .. ': expected a string') end
  end
  if m.MessageType ~= nil and m.MessageType ~= 'TRANSACTIONAL' and m.MessageType ~= 'PROMOTIONAL' then
    refuse(path .. ".MessageType: 'TRANSACTIONAL' or 'PROMOTIONAL', not " .. tostring(m.MessageType))
  end
  if m.SilentPush ~= nil and type(m.SilentPush) ~= 'boolean' then refuse(path .. '.SilentPush: expected true or false') end
  if m.Action ~= nil and m.Action ~= 'OPEN_APP' and m.Action ~= 'DEEP_LINK' and m.Action ~= 'URL' then
    refuse(path .. ".Action: 'OPEN_APP', 'DEEP_LINK' or 'URL', not " .. m.Action)
  end
  if m.Priority ~= nil and campaign.push_priority(m.Priority) == nil then
    refuse(path .. ".Priority: 'normal' or 'high' (or APNs's '5' or '10'), not " .. tostring(m.Priority))
  end
  for _, f in ipairs({ 'TimeToLive', 'Badge' }) do
    if m[f] ~= nil and math.type(m[f]) ~= 'integer' then refuse(path .. '.' .. f .. ': expected a whole number') end
  end
  if m.Data ~= nil and type(m.Data) ~= 'string' then check_map(path .. '.Data', m.Data, 'strings') end
  check_substitutions(path .. '.Substitutions', m.Substitutions)
  if m.Headers ~= nil then
    local hp, why = campaign.header_list_problem(path .. '.Headers', m.Headers)
    if hp then refuse(hp .. ': ' .. why) end
  end
  if m.SimpleEmail ~= nil then
    local se = m.SimpleEmail
    if type(se) ~= 'table' then refuse(path .. '.SimpleEmail: expected an object') end
    for _, f in ipairs({ 'Subject', 'TextPart', 'HtmlPart' }) do check_part(path .. '.SimpleEmail.' .. f, se[f]) end
    if se.Headers ~= nil then
      local hp, why = campaign.header_list_problem(path .. '.SimpleEmail.Headers', se.Headers)
      if hp then refuse(hp .. ': ' .. why) end
    end
  end
end

-- An entry of Addresses, Endpoints or Users: its overrides
local function check_entry(path, spec)
  if type(spec) ~= 'table' then refuse(path .. ': expected an object') end
  for _, f in ipairs({ 'ChannelType', 'BodyOverride', 'TitleOverride', 'RawContent' }) do
    if spec[f] ~= nil and type(spec[f]) ~= 'string' then refuse(path .. '.' .. f .. ': expected a string') end
  end
  check_substitutions(path .. '.Substitutions', spec.Substitutions)
  if spec.Context ~= nil then check_map(path .. '.Context', spec.Context, 'strings') end
end

local function check_request(req)
  local config = req.MessageConfiguration
  if type(config) ~= 'table' then refuse('MessageConfiguration is required') end
  for k, m in pairs(config) do
    if not MESSAGE_KEYS[k] then
      local known = {}
      for name in pairs(MESSAGE_KEYS) do known[#known + 1] = name end
      table.sort(known)
      refuse(string.format('MessageConfiguration.%s: not a message type (%s)', tostring(k), table.concat(known, ', ')))
    end
    check_message('MessageConfiguration.' .. k, m)
  end
  if req.Context ~= nil then check_map('Context', req.Context, 'strings') end
  for _, field in ipairs({ 'Addresses', 'Endpoints', 'Users' }) do
    local t = req[field]
    if t ~= nil then
      if type(t) ~= 'table' then refuse(field .. ': expected an object') end
      for k, spec in pairs(t) do
        if type(k) ~= 'string' then refuse(field .. ': expected an object keyed by ' .. (field == 'Addresses' and 'address' or 'id')) end
        check_entry(field .. '.' .. k, spec)
      end
    end
  end
end

local function status_code(status)
  return ({ SUCCESSFUL = 200, THROTTLED = 429, TEMPORARY_FAILURE = 503, PERMANENT_FAILURE = 400,
            UNKNOWN_FAILURE = 500, OPT_OUT = 400, DUPLICATE = 400 })[status]
end

function send.send(req, opts)
  if type(req) ~= 'table' then fail('expected a table { Addresses =, Endpoints =, Users =, MessageConfiguration = }') end
  req = without_nulls(req, 0)
  opts = opts or {}
  if opts.providers ~= nil then
    local cfg = opts.providers
    cfg = type(cfg) == 'string' and providers.load(cfg) or providers.check(cfg, 'providers')
    deliver.configure(cfg)
  end
  -- the caller's line, not this file's, with the field path
  local okc, cerr = pcall(check_request, req)
  if not okc then error(cerr, 2) end
  local config = req.MessageConfiguration
  local tconfig = req.TemplateConfiguration
  if tconfig ~= nil and type(tconfig) ~= 'table' then fail('TemplateConfiguration: expected a table') end
  if req.TraceId ~= nil and type(req.TraceId) ~= 'string' then fail('TraceId: expected a string') end
  -- A message's id (its idempotency key) is made from the TraceId and the address as C strings:
  -- cut at a NUL, 'order-1\0b' would give order-1's ids, and its messages would be taken for
  -- those already sent.
  if req.TraceId and req.TraceId:find('\0', 1, true) then fail('TraceId: contains a NUL character (\\u0000)') end
  for _, field in ipairs({ 'Addresses', 'Endpoints', 'Users' }) do
    if type(req[field]) == 'table' then
      for k in pairs(req[field]) do
        if type(k) == 'string' and k:find('\0', 1, true) then
          fail(string.format('%s: %q contains a NUL character (\\u0000)', field, k))
        end
      end
    end
  end
  local request_id = req.TraceId or fresh_request_id()
  local app = opts.app or require('herald.core').app()

  if req.Users ~= nil and (req.Addresses ~= nil or req.Endpoints ~= nil) then
    fail('Users (SendUsersMessages) cannot be combined with Addresses or Endpoints (SendMessages): send them apart')
  end
  -- RawContent (a push message's, or an address's or endpoint's over it) must be a JSON
  -- object: refused with the request rather than sent as something else
  local function check_raw(m, path)
    if type(m) == 'table' and m.RawContent ~= nil then
      local _, err = deliver.raw_content(m, path)
      if err then fail(err) end
    end
  end
  for _, key in ipairs({ 'APNSMessage', 'GCMMessage', 'ADMMessage', 'BaiduMessage', 'DefaultPushNotificationMessage',
                         'DefaultMessage' }) do
    check_raw(config[key], 'MessageConfiguration.' .. key)
  end
  for _, field in ipairs({ 'Addresses', 'Endpoints', 'Users' }) do
    if type(req[field]) == 'table' then
      for k, spec in pairs(req[field]) do check_raw(spec, field .. '.' .. tostring(k)) end
    end
  end

  -- One entry per message to send: {address=, channel=, ctx=, subs=, override=, result=}
  local work = {}
  local function add(address, channel, ctx, spec, endpoint_id, result_slot)
    local r = { Address = address }
    result_slot(r)
    if type(channel) ~= 'string' then
      r.DeliveryStatus, r.StatusMessage = 'PERMANENT_FAILURE', 'ChannelType is required'
      return
    end
    if ctx and ctx.OptOut == 'ALL' then
      r.DeliveryStatus, r.StatusMessage = 'OPT_OUT', 'the endpoint opted out'
      return
    end
    local listed = listed_optout(app, channel, address)
    if listed then
      r.DeliveryStatus, r.StatusMessage = 'OPT_OUT', string.format(
        'the address is on the opt-out list (%s of message %s at %s; herald.send.lift_optout takes it off)',
        listed.source, listed.message_id, listed.opted_out_at)
      return
    end
    if ctx == nil and address_opted_out(app, channel, address) then
      -- Pinpoint keeps opt-outs per address: a STOP recorded on an endpoint holds for its number
      r.DeliveryStatus, r.StatusMessage = 'OPT_OUT', 'an endpoint with this address opted out'
      return
    end
    -- EndpointStatus is not looked at: Pinpoint's SendMessages ignores it (only campaigns and
    -- journeys leave INACTIVE endpoints out), so a direct message reaches a device a campaign
    -- would skip
    work[#work + 1] = { address = address, channel = channel, ctx = ctx or { Address = address, ChannelType = channel },
                        spec = spec or {}, endpoint_id = endpoint_id, result = r }
  end

  -- sorted keys: which of two entries to one address is sent (the other DUPLICATE) must not
  -- depend on hash order
  local function sorted(t)
    local keys = {}
    for k in pairs(t or {}) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    return keys
  end

  local result, endpoint_result, users_result = {}, {}, {}
  for _, address in ipairs(sorted(req.Addresses)) do
    local spec = req.Addresses[address]
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
  for _, id in ipairs(sorted(req.Endpoints)) do
    add_endpoint(id, req.Endpoints[id], function(r) endpoint_result[id] = r end)
  end
  for _, user in ipairs(sorted(req.Users)) do
    users_result[user] = {}
    -- the user's endpoints oldest first
    local eps = endpoints.by_user(user, app and { app = app } or nil) or {}
    for _, ep in ipairs(eps) do
      add_endpoint(ep.Id, req.Users[user], function(r) users_result[user][ep.Id] = r end)
    end
  end

  -- channel and address of the messages going out: an entry is a DUPLICATE only of one that is
  -- sent, not of one refused (opted out, unroutable, failing to render)
  local seen = {}
  local items = {}
  -- one store transaction for the request's takes: each profile limit is read and written once
  -- (herald.deliver keeps them in the store, shared by every process on it)
  deliver.with_limits(function()
    for _, w in ipairs(work) do
      local r = w.result
      local m = channel_message(config, w.channel)
      local profile, rerr = deliver.route_channel(w.channel)
      local subs = merged(merged(config.DefaultMessage and config.DefaultMessage.Substitutions, m and m.Substitutions),
                          w.spec.Substitutions)
      -- Pinpoint: a push message's RawContent (the address's or endpoint's over the
      -- message's) is its whole payload, over every other field
      local raw
      if PUSH[w.channel] then
        local owner = w.spec.RawContent ~= nil and w.spec or (m and m.RawContent ~= nil and m) or nil
        if owner then raw = deliver.raw_content(owner, '') end
      end
      local from_template, terr
      if (m == nil or not has_content(m)) and raw == nil then
        from_template, terr = deliver.template_message(tconfig, w.channel, w.ctx, subs)
      end
      if terr then
        r.DeliveryStatus, r.StatusMessage = 'PERMANENT_FAILURE', terr
      elseif m == nil and from_template == nil and raw == nil then
        r.DeliveryStatus, r.StatusMessage = 'PERMANENT_FAILURE', 'no message for channel ' .. w.channel
      elseif profile == nil then
        r.DeliveryStatus, r.StatusMessage = 'PERMANENT_FAILURE', rerr
      else
        m = m or {}
        local simple = type(m.SimpleEmail) == 'table' and m.SimpleEmail or {}
        local title, body, html, err
        if from_template then
          title, body, html = from_template.Title, from_template.Body, from_template.HtmlBody
          if w.spec.TitleOverride then title, err = deliver.render_text(w.spec.TitleOverride, w.ctx, false, subs) end
          if not err and w.spec.BodyOverride then body, err = deliver.render_text(w.spec.BodyOverride, w.ctx, false, subs) end
          -- a push template's RawContent is the whole payload, as a message's is
          if not err and PUSH[w.channel] and from_template.RawContent ~= nil then
            raw, err = deliver.raw_content(from_template, 'TemplateConfiguration.PushTemplate')
          end
        else
          local title_t = w.spec.TitleOverride or m.Title or (simple.Subject and simple.Subject.Data)
          local body_t = w.spec.BodyOverride or m.Body or (simple.TextPart and simple.TextPart.Data)
          local html_t = m.HtmlBody or (simple.HtmlPart and simple.HtmlPart.Data)
          local e1, e2, e3
          title, e1 = deliver.render_text(title_t, w.ctx, false, subs)
          body, e2 = deliver.render_text(body_t, w.ctx, false, subs)
          html, e3 = deliver.render_text(html_t, w.ctx, true, subs)
          err = e1 or e2 or e3
        end
        local custom_data
        if not err and type(m.Data) == 'string' then
          -- CustomMessage.Data: the string the receiver gets as the payload's Data, rendered
          custom_data, err = deliver.render_text(m.Data, w.ctx, false, subs)
        end
        -- the template's headers, then the message's own over them (Headers over
        -- SimpleEmail.Headers), rendered as the body is
        local headers
        if not err then
          headers, err = deliver.email_headers(w.ctx, subs, from_template and from_template.Headers,
            deliver.header_map(simple.Headers), deliver.header_map(m.Headers))
        end
        local data = type(m.Data) == 'table' and m.Data or nil
        if PUSH[w.channel] then
          -- the request's Context under the address's or endpoint's own
          local function map(t) return type(t) == 'table' and t or nil end
          local context = merged(map(req.Context), map(w.spec.Context))
          if context then
            local d = {}
            for k, v in pairs(data or {}) do d[k] = v end
            for k, v in pairs(context) do d[k] = v end
            data = d
          end
        end
        if err then
          r.DeliveryStatus, r.StatusMessage = 'PERMANENT_FAILURE', 'RENDER_FAILED: ' .. err
        else
          local dkey = w.channel .. '\0' .. w.address
          local key = outbox.message_id(app or '', 'send:' .. request_id, 0, w.channel .. ':' .. w.address)
          local granted = not seen[dkey] and deliver.take(profile)
          if seen[dkey] then
            r.DeliveryStatus, r.StatusMessage = 'DUPLICATE', 'a message to this address is sent by an entry before it'
          elseif not granted then
            r.MessageId = key
            r.DeliveryStatus, r.StatusMessage = 'THROTTLED', 'over the limits of profile ' .. profile.name
          else
            seen[dkey] = true
            r.MessageId = key
            -- in the limits' transaction, before the message leaves: a receipt may come back
            -- before this call returns
            outbox.record_direct(key, w.endpoint_id, w.channel, w.address, app)
            local msg = {
              key = key, address = w.address, channel = w.channel, endpoint_id = w.endpoint_id,
              endpoint = w.ctx, title = title, body = body, html = html, headers = headers, custom_data = custom_data,
              raw = raw,
              data = data, from = m.FromAddress,
              silent = m.SilentPush == true, ttl = tonumber(m.TimeToLive),
              consolidation_key = m.ConsolidationKey, expires_after = tonumber(m.ExpiresAfter),
              origination_number = m.OriginationNumber, sender_id = m.SenderId,
              message_type = m.MessageType, keyword = m.Keyword, entity_id = m.EntityId,
              template_id = m.TemplateId, campaign_id = req.TraceId,
              treatment_id = 0, first_due_ms = clock.now(),
            }
            -- a push message's own settings (Sound, Badge, Url, MediaUrl, Priority, ...)
            if PUSH[w.channel] then
              deliver.push_fields(m, msg)
              if from_template then deliver.template_push_settings(from_template, msg) end
            end
            items[#items + 1] = { profile = profile, w = w, msg = msg }
          end
        end
      end
    end
  end)

  if #items > 0 then
    local out = deliver.send_items(items)
    for i, it in ipairs(items) do
      local o, r = out[i], it.w.result
      -- A systemic refusal (the profile's credentials, a refused sender) is the profile's
      -- fault, not the recipient's: the same message goes once the profile is fixed, as a
      -- campaign retries it (herald.deliver's settle).
      local verdict = o.verdict
      if verdict == 'permanent' and o.systemic then verdict = 'transient' end
      r.StatusMessage = o.reason
      if verdict == 'delivered' then
        r.DeliveryStatus = 'SUCCESSFUL'
      elseif o.error then
        r.DeliveryStatus = 'UNKNOWN_FAILURE'
      elseif o.feedback == 'OPT_OUT' then
        r.DeliveryStatus = 'OPT_OUT'
        if it.w.endpoint_id == nil then
          -- The provider's answer that a named address opted out holds as its STOP would
          -- (runtime/ingest.c): on the app's list, the next message to it is refused unsent.
          -- An endpoint's opt-out is recorded on the endpoint (deliver.feedback below).
          local ok, err = outbox.add_optout(it.w.channel, it.w.address, 'provider:' .. it.profile.name,
                                            it.msg.key, o.reason, app)
          if not ok then r.StatusMessage = tostring(o.reason) .. ' (not put on the opt-out list: ' .. tostring(err) .. ')' end
        end
      elseif o.held then
        -- not sent: the provider asked to wait (Retry-After) after an earlier request
        r.DeliveryStatus = 'THROTTLED'
      elseif verdict == 'transient' then
        r.DeliveryStatus = 'TEMPORARY_FAILURE'
      elseif verdict == 'permanent' then
        r.DeliveryStatus = 'PERMANENT_FAILURE'
      else
        r.DeliveryStatus = 'UNKNOWN_FAILURE'
      end
      -- the provider's Retry-After holds its profile for later sends too, as for campaigns
      deliver.hold(it.profile, o.retry_after_ms)
      if o.feedback and it.w.endpoint_id then deliver.feedback(it.w.endpoint_id, o.feedback, app) end
    end
  end

  local function finish(t)
    for _, r in pairs(t) do r.StatusCode = status_code(r.DeliveryStatus) end
  end
  finish(result)
  finish(endpoint_result)
  for _, t in pairs(users_result) do finish(t) end
  if req.Users ~= nil then
    return { RequestId = request_id, ApplicationId = app, Result = users_result }
  end
  return { RequestId = request_id, ApplicationId = app, Result = result, EndpointResult = endpoint_result }
end

local function optional_string(fn, name, v)
  if v ~= nil and type(v) ~= 'string' then error(string.format('%s: %s: expected a string', fn, name), 3) end
end

-- The app's opt-out list (opts.channel, opts.address: only those; opts.app: another app's),
-- sorted by channel and address; nil, err when the store fails.
function send.optouts(opts)
  if opts ~= nil and type(opts) ~= 'table' then
    error('herald.send.optouts: expected a table { channel =, address =, app = } or nothing', 2)
  end
  opts = opts or {}
  for _, k in ipairs({ 'channel', 'address', 'app' }) do optional_string('herald.send.optouts', k, opts[k]) end
  local rows, err = store.query('SELECT channel, address, source, message_id, reason, opted_out_at FROM address_optouts'
                                .. ' WHERE app_id = ? AND (?2 IS NULL OR channel = ?2) AND (?3 IS NULL OR address = ?3)'
                                .. ' ORDER BY channel, address',
                                opts.app or require('herald.core').app(), opts.channel, opts.address)
  if rows == nil then return nil, 'herald.send.optouts: ' .. tostring(err) end
  local out = {}
  for i, r in ipairs(rows) do
    out[i] = { ChannelType = r.channel, Address = r.address, Source = r.source, MessageId = r.message_id,
               Reason = r.reason, Timestamp = r.opted_out_at }
  end
  return json.array(out)
end

-- Takes channel and address off the app's opt-out list (opts.app: another app's), when the
-- recipient asked for messages again: true when it was on it, false when not; nil, err when the
-- store fails.
function send.lift_optout(channel, address, opts)
  if type(channel) ~= 'string' then error('herald.send.lift_optout: channel: expected a string such as \'SMS\'', 2) end
  if type(address) ~= 'string' then error('herald.send.lift_optout: address: expected a string', 2) end
  if opts ~= nil and type(opts) ~= 'table' then error('herald.send.lift_optout: expected a table { app = } or nothing', 2) end
  optional_string('herald.send.lift_optout', 'app', opts and opts.app)
  local lifted, err = outbox.lift_optout(channel, address, opts and opts.app or require('herald.core').app())
  if lifted == nil then return nil, 'herald.send.lift_optout: ' .. tostring(err) end
  return lifted
end

return setmetatable(send, { __call = function(_, req, opts) return send.send(req, opts) end })
