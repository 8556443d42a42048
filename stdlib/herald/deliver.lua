-- Delivery of due outbox rows, on the host side of `herald run`. Each row's message comes from
-- the stored definition of the version its run started with (Pinpoint's MessageConfiguration),
-- rendered by the template engine (compiled once per text), and goes out through a channel
-- profile of the providers file (herald.providers): the campaign's Herald.Deliver names a
-- profile ({type = 'provider', provider = NAME}), or routes by channel type
-- ({type = 'channels'}), or is the built-in stdout/file channel.
--
-- Per batch: claim, render, rate-limit (per campaign: Limits.MessagesPerSecond; per profile:
-- its windows under the global cap; a message over a limit is deferred to its next slot
-- without using an attempt), send every profile's messages concurrently on the loop, then
-- write outcomes in one transaction: SENT; PENDING again with exponential backoff and jitter
-- (or the receiver's Retry-After) for transient failures; FAILED with the provider's reason
-- for permanent ones and, after the retry bound, FAILED 'DEAD_LETTER: ...'. After
-- pause_after consecutive systemic failures (connection, TLS, 5xx, refused credentials) the
-- campaign is PAUSED with the reason and its rows are no longer claimed. The idempotency key
-- is the outbox message id throughout. Limits are kept in the store (with_limits), so every
-- process on it counts against the same windows.
local outbox = require 'herald.core.outbox'
local core = require 'herald.core.deliver'
local clock = require 'herald.core.clock'
local task = require 'herald.core.task'
local http = require 'herald.core.http'
local ratelimit = require 'herald.core.ratelimit'
local store = require 'herald.core.store'
local json = require 'herald.json'
local db = require 'herald.db'
local template = require 'herald.template'
local tcore = require 'herald.core.template'
local lane = require 'herald.core.lane'
local util = require 'herald.channels.util'
local endpoints = require 'herald.endpoints'
local providers = require 'herald.providers'
local hcore = require 'herald.core'
local time = require 'herald.time'
local campaign = require 'herald.campaign'

local deliver = {}

local PUSH = { APNS = 'APNSMessage', APNS_SANDBOX = 'APNSMessage', APNS_VOIP = 'APNSMessage',
               APNS_VOIP_SANDBOX = 'APNSMessage', GCM = 'GCMMessage', ADM = 'ADMMessage',
               BAIDU = 'BaiduMessage' }

local CHANNEL_MODULES = { smtp = 'herald.channels.smtp', sms = 'herald.channels.sms',
                          http = 'herald.channels.webhook', webhook = 'herald.channels.webhook',
                          fcm = 'herald.channels.fcm', apns = 'herald.channels.apns',
                          adm = 'herald.channels.adm', baidu = 'herald.channels.baidu',
                          lua = 'herald.channels.lua', file = 'herald.channels.file',
                          stdout = 'herald.channels.file' }

local state = {
  config = nil,        -- the checked providers table
  channels = {},       -- profile name -> channel object
  limits = {},         -- profile name -> rate limit
  steps = {},          -- profile name -> the window its held-back messages are paced by, or false
  campaign_limits = {},-- campaign id and MessagesPerSecond -> rate limit
  global = nil,
  systemic = {},       -- campaign id -> consecutive systemic failures
  paused = {},         -- campaign id -> reason (paused by this process)
  throttled = {},     -- profile name -> the provider's throttle refusals since its last delivery
  paced = {},          -- run (and profile) -> {at =, n =}: the slot its deferrals take now, how many took it
  npaced = 0,
  rng = 0x2545F491,
  -- lane: of the messages sent, those the webhook lane sent (herald.core.lane)
  stats = { sent = 0, retried = 0, failed = 0, dead = 0, deferred = 0, lane = 0 },
}
deliver.stats = state.stats

-- Routes by definition and channel, for the providers table in use (configure starts afresh);
-- so are the webhook lane's specs (lane_choice), by definition and treatment.
local routes = setmetatable({}, { __mode = 'k' })
local lane_specs = setmetatable({}, { __mode = 'k' })

-- Uses the providers table cfg (from herald.providers.load) from now on.
function deliver.configure(cfg)
  state.config = cfg or providers.default()
  state.channels, state.limits, state.campaign_limits, state.steps = {}, {}, {}, {}
  routes = setmetatable({}, { __mode = 'k' })
  lane_specs = setmetatable({}, { __mode = 'k' })
  state.global = state.config.global and ratelimit.new(state.config.global) or nil
end

function deliver.config()
  if state.config == nil then deliver.configure(nil) end
  return state.config
end

local BUILTIN = { stdout = { name = '(stdout)', type = 'stdout' } }

-- The channel object of a profile, created on first use.
local function channel_for(profile)
  local ch = state.channels[profile.name]
  if ch == nil then
    ch = require(CHANNEL_MODULES[profile.type]).new(profile)
    state.channels[profile.name] = ch
  end
  return ch
end

-- Limits are kept in the store (table rate_limits, runtime/ratelimit_store.c) so that every
-- process on it, and this one after a restart, counts against the same windows and honours
-- the same Retry-After: limits live in memory only as copies. Within with_limits(fn), a limit
-- fn uses is read from the store when first used (only when another process wrote it since
-- this one last read or wrote it) and written back before the commit when it changed; SQLite
-- serializes writers, so no two processes spend the same room. A claim reads each of its
-- limits once and writes the ones it took from once, whatever the number of its rows.
local synced = setmetatable({}, { __mode = 'k' })  -- limit -> { key =, gen =, saved = }
local session = nil                                -- the limits of the current with_limits

local function sync(l, key)
  if session[l] then return end
  session[l] = true
  session[#session + 1] = l
  local s = synced[l]
  if s == nil then
    -- gen: the stored generation this copy is in step with (-1: none); saved: l:changes()
    -- when it last was (its changes since are this process's, not yet written)
    s = { key = key, gen = -1, saved = l:changes() }
    synced[l] = s
  end
  -- a change not written yet (a pause the store refused) is written with the stored state,
  -- which keeps the longer pause
  local unwritten = l:changes() ~= s.saved
  local gen, loaded, err = ratelimit.load(l, hcore.app(), key, s.gen)
  s.gen = gen
  if loaded and not unwritten then s.saved = l:changes() end
  if err then
    io.stderr:write('herald: ' .. err .. ' (this process\'s count replaces it)\n')
    s.saved = -1
  end
end

-- Runs fn(...) in a store transaction with the limits it uses shared through the store;
-- returns fn's results (up to four). Inside another with_limits, fn joins it.
local function with_limits(fn, ...)
  if session then return fn(...) end
  session = {}
  local ok, a, b, c, d = pcall(core.transaction, function(...)
    local r1, r2, r3, r4 = fn(...)
    local app = hcore.app()
    for _, l in ipairs(session) do
      local s = synced[l]
      local changes = l:changes()
      if changes ~= s.saved then
        s.gen = ratelimit.save(l, app, s.key)
        s.saved = changes
      end
    end
    return r1, r2, r3, r4
  end, ...)
  local used = session
  session = nil
  if not ok then
    -- what was written rolled back: read the stored state again at the next use
    for _, l in ipairs(used) do synced[l].gen = -1 end
    error(a, 0)
  end
  return a, b, c, d
end
deliver.with_limits = with_limits

-- Every profile has a limit of its own, even without windows, so a Retry-After pauses that
-- provider alone; it sits under the global cap when there is one.
local UNLIMITED = { windows = {} }

local PERIODS = { per_second = 1000, per_minute = 60000, per_hour = 3600000, per_day = 86400000 }

-- The window of the shortest period among limits tables (a profile's, the global cap's):
-- {limit, period_ms}, the pace messages held back by them come back at; nil when none.
local function shortest_window(...)
  local best
  for i = 1, select('#', ...) do
    for k, v in pairs(select(i, ...) or {}) do
      local ws = k == 'windows' and v or (PERIODS[k] and { { limit = v, period_ms = PERIODS[k] } }) or {}
      for _, w in ipairs(ws) do
        if best == nil or w.period_ms < best.period_ms
            or (w.period_ms == best.period_ms and w.limit < best.limit) then
          -- whole messages: half a message a second is one every two seconds
          best = w.limit < 1 and { limit = 1, period_ms = w.period_ms / w.limit }
            or { limit = math.floor(w.limit), period_ms = w.period_ms }
        end
      end
    end
  end
  return best
end

local function profile_limit(profile)
  local l = state.limits[profile.name]
  if l == nil then
    local opts = {}
    for k, v in pairs(profile.limits or UNLIMITED) do opts[k] = v end
    opts.parent = state.global
    l = ratelimit.new(opts)
    state.limits[profile.name] = l
    -- messages held back by the profile come back as its shortest window (or the global
    -- cap's) admits them: so many each period
    state.steps[profile.name] = shortest_window(profile.limits, state.config and state.config.global) or false
  end
  if session then
    if state.global then sync(state.global, 'global') end
    -- the key is made only when the limit is first used in the session, not for every row
    if not session[l] then sync(l, 'profile:' .. profile.name) end
  end
  return l, state.steps[profile.name] or nil
end

-- A campaign's MessagesPerSecond limit (or nil) and the time between two of its messages (ms,
-- fractional: 700 a second is 1.43 ms, not 2). By the limit's value, so a new version of the
-- campaign with another MessagesPerSecond is held to it at once.
local function campaign_limit(campaign_id, def)
  local mps = def.Limits and tonumber(def.Limits.MessagesPerSecond)
  if not mps or mps <= 0 then return nil end
  local key = campaign_id .. '\0' .. mps
  local l = state.campaign_limits[key]
  if l == nil then
    l = ratelimit.new { per_second = mps }
    state.campaign_limits[key] = l
  end
  -- stored by its value too: a version with another limit starts its own count
  if session and not session[l] then sync(l, 'campaign:' .. campaign_id .. ':' .. mps) end
  return l, 1000 / mps
end

-- Books the next of the slots deferrals under key take, `limit` every `period_ms` (a
-- campaign's MessagesPerSecond: one every 1000/MPS ms, fractional; a profile's shortest
-- window: its limit each period), no earlier than slot. Returns the whole ms the row is due.
-- Keys are per run (pace_key), so slots booked for rows that never come back (a run expired
-- with its backlog) hold up no later run; but an event-triggered campaign's runs, one per
-- event, go on at once, and cursors of their own put every run's held rows on the same next
-- slot, where all but a few were claimed only to be deferred again (a backlog of 40 triggered
-- messages at 5 a second took 167 claims): its key is the campaign.
local function pace(key, slot, limit, period_ms)
  local c = state.paced[key]
  if c == nil then
    state.npaced = state.npaced + 1
    if state.npaced > 4096 then
      -- a long-running process: forget cursors long past
      local now, n = clock.now(), 0
      for k, v in pairs(state.paced) do
        if v.at < now - 3600000 then state.paced[k] = nil else n = n + 1 end
      end
      state.npaced = n + 1
    end
    c = { at = slot, n = 0 }
    state.paced[key] = c
  elseif c.at < slot then
    c.at, c.n = slot, 0
  end
  if c.n >= limit then c.at, c.n = c.at + period_ms, 0 end
  c.n = c.n + 1
  return math.ceil(c.at)
end

-- The key a row's held-back messages are paced under (pace), with suffix for a profile's.
local function pace_key(def, row, suffix)
  local key = def.Schedule and def.Schedule.Frequency == 'EVENT' and ('campaign ' .. row.campaign_id)
    or ('run ' .. row.run_id)
  return suffix and (key .. '\0' .. suffix) or key
end

-- t[k], made an empty table on first use.
local function sub(t, k)
  local v = t[k]
  if v == nil then
    v = {}
    t[k] = v
  end
  return v
end

-- Definitions by campaign and version: a version never changes once stored.
local definitions = {}

local function definition(campaign_id, version)
  local versions = sub(definitions, campaign_id)
  local d = versions[version]
  if d == nil then
    local text, err = outbox.campaign_definition(campaign_id, version)
    if text == nil then return nil, err end
    d = json.decode(text)
    versions[version] = d
  end
  return d
end

local function treatment_config(def, treatment)
  if treatment == 0 then
    return def.TreatmentName, def.MessageConfiguration, def.TemplateConfiguration
  end
  for _, t in ipairs(def.AdditionalTreatments or {}) do
    if tonumber(t.Id) == treatment then
      return t.TreatmentName, t.MessageConfiguration, t.TemplateConfiguration
    end
  end
end

-- The MessageConfiguration key of a channel type's own message (EmailMessage, SMSMessage,
-- APNSMessage, ...), or nil.
function deliver.message_key(channel)
  return (channel == 'EMAIL' and 'EmailMessage') or (channel == 'SMS' and 'SMSMessage')
    or (channel == 'VOICE' and 'VoiceMessage') or (channel == 'CUSTOM' and 'CustomMessage') or PUSH[channel]
end

local NULL = json.null
local EMPTY = {}
local function present(v) return v ~= nil and v ~= NULL end

-- Compiled templates by text, by escaping (true: HTML, 'uri': percent-encoded, false: none;
-- template.compile caches nothing, so keep them here); the text itself is the key, so a
-- lookup copies nothing.
local compiled, ncompiled = { [true] = {}, [false] = {}, uri = {} }, 0
local function compiled_text(text, escape)
  if escape ~= 'uri' then escape = escape == true end
  local t = compiled[escape][text]
  if t == nil then
    local err
    t, err = template.compile(text, { escape = escape })
    if not t then return nil, err end
    if ncompiled > 1024 then compiled, ncompiled = { [true] = {}, [false] = {}, uri = {} }, 0 end
    compiled[escape][text] = t
    ncompiled = ncompiled + 1
  end
  return t
end

local function render_text(text, ctx, escape, subs)
  if not present(text) then return nil end
  local t, err = compiled_text(text, escape)
  if not t then return nil, err end
  return t:render(ctx, subs)
end
deliver.render_text = render_text

-- Where a campaign's messages go: a profile (for this row's channel) or nil, reason.
local function find_route(def, channel)
  local d = def.Herald and def.Herald.Deliver or { type = 'stdout' }
  local cfg = deliver.config()
  local custom = def.CustomDeliveryConfiguration
  local custom_types = type(custom) == 'table' and type(custom.EndpointTypes) == 'table' and custom.EndpointTypes or {}
  local to_custom = channel == 'CUSTOM'
  for _, t in ipairs(custom_types) do if t == channel then to_custom = true end end
  -- Pinpoint's CustomDeliveryConfiguration: the endpoint types it lists go to DeliveryUri.
  if to_custom and type(custom) == 'table' and type(custom.DeliveryUri) == 'string'
      and custom.DeliveryUri:match('^https?://') then
    local name = 'custom:' .. custom.DeliveryUri
    cfg.profiles[name] = cfg.profiles[name] or { name = name, type = 'webhook', url = custom.DeliveryUri, custom_delivery = true }
    return cfg.profiles[name]
  end
  if d.type == 'file' then
    return { name = 'file:' .. d.path, type = 'file', path = d.path }
  elseif d.type == 'provider' then
    local p = cfg.profiles[d.provider]
    if p == nil then return nil, "NO_PROVIDER: no profile named '" .. tostring(d.provider) .. "' in the providers file" end
    return p
  elseif d.type == 'channels' then
    local name = cfg.channels[channel] or (channel:match('^APNS') and cfg.channels.APNS)
    if name == nil then return nil, 'NO_PROVIDER: the providers file routes no ' .. channel .. ' channel' end
    return cfg.profiles[name]
  end
  return BUILTIN.stdout
end

local function route(def, channel)
  local by_channel = sub(routes, def)
  local r = by_channel[channel]
  if r == nil then
    local profile, err = find_route(def, channel)
    r = { profile, err }
    by_channel[channel] = r
  end
  return r[1], r[2]
end

-- The profile the providers file routes a channel type to, or nil, reason.
function deliver.route_channel(channel)
  return route({ Herald = { Deliver = { type = 'channels' } } }, channel)
end

-- Takes a slot from the profile's limits now: true, or false and the next slot. Takes of
-- many messages go inside one with_limits, which reads and writes the limits once.
function deliver.take(profile)
  return with_limits(function() return profile_limit(profile):take() end)
end

-- Holds the profile for ms (a provider's Retry-After): nothing is sent through it meanwhile,
-- by any process on the store. A pause no longer than the one written already is not written
-- again (a claim's held messages all bring the same Retry-After). When the store cannot take
-- it, this process still holds the profile, and its next claim writes the pause.
function deliver.hold(profile, ms)
  if not (ms and ms > 0) then return end
  local l = profile_limit(profile)
  l:pause(ms)
  local s = synced[l]
  if s and s.saved == l:changes() then return end
  local ok, err = pcall(with_limits, function() profile_limit(profile):pause(ms) end)
  if not ok then
    io.stderr:write('herald: the Retry-After of profile ' .. profile.name
      .. ' is not written to the store yet, other processes do not see it: ' .. tostring(err) .. '\n')
  end
end

-- Builds the message for a claimed row: a table channels understand, or nil, reason.
-- A treatment's TemplateConfiguration names a stored template per channel type; Pinpoint
-- uses it where the treatment has no message of its own for the channel. The parts come back
-- rendered (the template's active version unless the reference pins one).
local TEMPLATE_KIND = { EMAIL = { 'EmailTemplate', 'EMAIL' }, SMS = { 'SMSTemplate', 'SMS' } }
local PUSH_PART = { APNS = 'APNS', APNS_SANDBOX = 'APNS', APNS_VOIP = 'APNS', APNS_VOIP_SANDBOX = 'APNS',
                    GCM = 'GCM', ADM = 'ADM', BAIDU = 'Baidu' }

-- Headers as channels take them (name -> value): from Pinpoint's list of {Name =, Value =}
-- (EmailMessage.Headers, an email template's Headers) or a name -> value table already; nil
-- when there are none.
local function header_map(h)
  if not present(h) or type(h) ~= 'table' then return nil end
  local out
  for k, v in pairs(h) do
    local name, value = k, v
    if math.type(k) == 'integer' and type(v) == 'table' then name, value = v.Name, v.Value end
    if type(name) == 'string' and present(value) and type(value) ~= 'table' then
      out = out or {}
      out[name] = tostring(value)
    end
  end
  return out
end
deliver.header_map = header_map

-- An email's headers for one recipient, name -> value: the message's own (each map of ...
-- over the one before it) over the template's (template_h, rendered already), a name matched
-- whatever its case. The message's values are templates, as its body is (Pinpoint renders a
-- header's message variables: a List-Unsubscribe URL of the recipient's own), rendered here
-- for ctx with subs. Each value is checked once rendered, as an attribute can bring a line
-- break or go past Pinpoint's 870 characters: nil, reason then. nil when there are none.
local function email_headers(ctx, subs, template_h, ...)
  local out, names = nil, {}
  for k, v in pairs(template_h or EMPTY) do
    out = out or {}
    out[k], names[k:lower()] = v, k
  end
  for i = 1, select('#', ...) do
    for k, v in pairs(select(i, ...) or EMPTY) do
      local lower = k:lower()
      -- what a List-Unsubscribe substitutes is percent-encoded, as in a profile's
      -- list_unsubscribe: an attribute with '&' or '>' in it stays one URI parameter
      local text, err = render_text(v, ctx, lower == 'list-unsubscribe' and 'uri', subs)
      if err then return nil, "headers['" .. k .. "']: " .. err end
      out = out or {}
      if names[lower] then out[names[lower]] = nil end
      out[k], names[lower] = text or '', k
    end
  end
  for k, v in pairs(out or EMPTY) do
    local why = http.mail_header_problem(k, v)
    if why then return nil, "headers['" .. k .. "']: " .. why end
  end
  return out
end
deliver.email_headers = email_headers

-- The fields of a push template's part (Pinpoint's PushNotificationTemplate: Default, APNS,
-- GCM, ADM, Baidu) a message takes: its content, what a tap does, its images, sound and
-- RawContent, the payload that overrides all the rest.
local TEMPLATE_PUSH_FIELDS = { 'Title', 'Body', 'Action', 'Url', 'ImageUrl', 'ImageIconUrl',
                               'SmallImageIconUrl', 'MediaUrl', 'Sound', 'RawContent' }
-- ... and the message's names for its settings (push_fields)
local TEMPLATE_PUSH_SETTINGS = { Action = 'action', Url = 'action_url', ImageUrl = 'image_url',
                                 ImageIconUrl = 'image_icon_url', SmallImageIconUrl = 'small_image_icon_url',
                                 MediaUrl = 'media_url', Sound = 'sound' }

-- The parts of the stored template a TemplateConfiguration names for a channel, rendered for
-- ctx with substitutions subs (the template's DefaultSubstitutions under them): nil when it
-- names none for the channel, or nil, reason [, true when the template or the version it pins
-- does not exist: no message of the campaign can be rendered, which is the campaign's fault,
-- not the recipient's].
local function template_message(tconfig, channel, ep, subs)
  if not present(tconfig) or type(tconfig) ~= 'table' then return nil end
  local kind = TEMPLATE_KIND[channel] or (PUSH[channel] and { 'PushTemplate', 'PUSH' })
  local ref = kind and tconfig[kind[1]]
  if not present(ref) or type(ref) ~= 'table' or type(ref.Name) ~= 'string' then return nil end
  local version
  if present(ref.Version) then
    -- definitions are checked when stored; a definition stored before that check could still
    -- hold anything, and must fail its rows rather than stop delivery
    version = math.tointeger(tonumber(ref.Version))
    if version == nil or version < 1 then
      return nil, 'RENDER_FAILED: TemplateConfiguration.' .. kind[1] .. '.Version is not a version number: '
        .. tostring(ref.Version)
    end
  end
  local parts, err, code = template.render(ref.Name, kind[2], ep, { version = version, substitutions = subs })
  if not parts then
    if code == 'NOT_FOUND' then return nil, 'TEMPLATE_NOT_FOUND: ' .. tostring(err), true end
    return nil, 'RENDER_FAILED: ' .. tostring(err)
  end
  if kind[2] == 'EMAIL' then
    return { Title = parts.Subject, Body = parts.TextPart, HtmlBody = parts.HtmlPart, Headers = header_map(parts.Headers) }
  elseif kind[2] == 'SMS' then
    return { Body = parts.Body }
  end
  -- A push template has a Default part and one per service (APNS, GCM, ADM, Baidu): the
  -- service's part, where it gives a field, wins over Default, as in Pinpoint.
  local d = present(parts.Default) and parts.Default or {}
  local own = parts[PUSH_PART[channel] or ''] or {}
  local out = {}
  for _, k in ipairs(TEMPLATE_PUSH_FIELDS) do
    if present(own[k]) then out[k] = own[k] else out[k] = d[k] end
  end
  return out
end
deliver.template_message = template_message

-- A push template's settings (template_message's Action, Url, images, Sound), rendered for the
-- endpoint, into msg under the message's own: a field msg already has (its own, or through its
-- metatable the campaign message's) is kept, as an email template's headers are under the
-- message's.
function deliver.template_push_settings(rendered, msg)
  for field, key in pairs(TEMPLATE_PUSH_SETTINGS) do
    local v = rendered[field]
    if type(v) == 'string' and v ~= '' and msg[key] == nil then msg[key] = v end
  end
end

-- A message's fields that come from its message configuration alone (the sender, TTL,
-- headers, ...) are worked out once per configuration and reached through the message's
-- metatable; the message itself holds what differs per endpoint. It carries its endpoint as
-- the template context read from the store (msg.ctx: channels send it as stored); a Lua
-- channel gets msg.endpoint as a table (channels/lua.lua).
local STATIC = setmetatable({}, { __mode = 'k' })

-- A push message's own settings (Pinpoint's Message, APNSMessage, GCMMessage and
-- DefaultPushNotificationMessage) under the names the push channels read: what a tap does
-- (action, and the action_url it opens for URL and DEEP_LINK; not `url`, which a webhook
-- takes for its destination), images and media, sound, badge, priority ('normal' or 'high':
-- campaign.push_priority), collapse ids, thread and category. Fields of another type than Pinpoint's
-- are left out. Campaign messages call ImageSmallIconUrl what GCMMessage calls
-- SmallImageIconUrl.
local function push_fields(m, into)
  into = into or {}
  local function str(k) local v = m[k]; if type(v) == 'string' and v ~= '' then return v end end
  into.action = str('Action')
  into.action_url = str('Url')
  into.image_url = str('ImageUrl')
  into.image_icon_url = str('ImageIconUrl')
  into.small_image_icon_url = str('SmallImageIconUrl') or str('ImageSmallIconUrl')
  into.media_url = str('MediaUrl')
  into.sound = str('Sound')
  into.badge = math.tointeger(tonumber(m.Badge))
  into.priority = campaign.push_priority(m.Priority)
  into.collapse_id = str('CollapseId')
  into.collapse_key = str('CollapseKey')
  into.thread_id = str('ThreadId')
  into.category = str('Category')
  into.push_type = str('APNSPushType')
  into.restricted_package_name = str('RestrictedPackageName')
  into.icon_reference = str('IconReference')
  return into
end
deliver.push_fields = push_fields

local function static_fields(m, def, name, key)
  local s = STATIC[key]
  if s == nil then
    local data = present(m.Data) and m.Data or nil
    s = {
      campaign_name = def.Name, treatment_name = name,
      data = type(data) ~= 'string' and data or nil,
      from = present(m.FromAddress) and m.FromAddress or nil,
      silent = m.SilentPush == true, ttl = tonumber(m.TimeToLive),
      origination_number = present(m.OriginationNumber) and m.OriginationNumber or nil,
      sender_id = present(m.SenderId) and m.SenderId or nil,
      message_type = present(m.MessageType) and m.MessageType or nil,
      keyword = present(m.Keyword) and m.Keyword or nil,
      entity_id = present(m.EntityId) and m.EntityId or nil,
      template_id = present(m.TemplateId) and m.TemplateId or nil,
      headers = header_map(m.Headers),
      app_id = hcore.app(),
    }
    -- headers with message variables are rendered for each recipient (prepare)
    for _, v in pairs(s.headers or EMPTY) do
      if v:find('{{', 1, true) then s.header_variables = true end
    end
    push_fields(m, s)
    s.__index = s
    STATIC[key] = s
  end
  return s
end

-- A run's rows share their due time: format it once.
local last_due, last_iso
local function scheduled_time(due_ms)
  if due_ms ~= last_due then
    last_due = due_ms
    last_iso = os.date('!%Y-%m-%dT%H:%M:%S', due_ms // 1000) .. string.format('.%03dZ', due_ms % 1000)
  end
  return last_iso
end

-- Whether a message gives content (rather than only settings such as FromAddress,
-- MessageType or OriginationNumber, which Pinpoint campaigns that use a template carry beside
-- it).
local function has_content(m)
  return present(m.Title) or present(m.Body) or present(m.HtmlBody) or present(m.Subject)
    or type(m.Data) == 'string' or present(m.RawContent)
end

-- A push message's RawContent decoded (once per message configuration: channels copy what
-- they change): a JSON object, or nil and the reason, the field named by path.
local RAW = setmetatable({}, { __mode = 'k' })
local function raw_content(m, path)
  local r = RAW[m]
  if r == nil then
    local v, err = nil, nil
    if type(m.RawContent) ~= 'string' then
      err = 'expected a string of JSON, not a ' .. type(m.RawContent)
    else
      v, err = json.decode(m.RawContent)
      if v ~= nil and (type(v) ~= 'table' or v == json.null or json.is_array(v)) then
        v, err = nil, 'expected a JSON object'
      end
    end
    r = { value = v, err = err and (path .. '.RawContent: ' .. tostring(err)) }
    RAW[m] = r
  end
  return r.value, r.err
end
deliver.raw_content = raw_content

-- A message configuration's own message for channel and its DefaultMessage, each nil when absent.
local function channel_messages(config, channel)
  if not present(config) then return nil, nil end
  local key = deliver.message_key(channel)
  return key and present(config[key]) and config[key] or nil,
         present(config.DefaultMessage) and config.DefaultMessage or nil
end

-- The message for a row. Its content comes from the channel's own message when that has any,
-- else from the stored template the treatment's TemplateConfiguration names for the channel,
-- else from DefaultMessage; its settings (sender, TTL, headers, ...) from the channel's own
-- message, else DefaultMessage. Returns the message, or nil, reason [, true when the fault is
-- the campaign's: a stored template it names is missing].
local function prepare(row, def, ep, profile)
  local name, config, tconfig = treatment_config(def, row.treatment)
  if config == nil and tconfig == nil then return nil, 'NO_TREATMENT' end
  -- endpoints routed to a CustomDeliveryConfiguration get the CustomMessage, as in Pinpoint
  local channel = profile.custom_delivery and 'CUSTOM' or row.channel
  local own, default = channel_messages(config, channel)
  local rendered
  if own == nil or not has_content(own) then
    local terr, missing
    rendered, terr, missing = template_message(tconfig, row.channel, ep)
    if terr then return nil, terr, missing end
  end
  local m = rendered or (own and has_content(own) and own) or default or own
  if m == nil then return nil, 'NO_MESSAGE_FOR_CHANNEL' end
  -- Pinpoint: a push message's RawContent is its whole payload, over every other field; so is
  -- a push template's
  local raw, rerr
  if PUSH[channel] and present(m.RawContent) then
    raw, rerr = raw_content(m, (rendered and 'TemplateConfiguration.PushTemplate')
      or (m == own and deliver.message_key(channel)) or 'DefaultMessage')
    if rerr then return nil, 'INVALID_MESSAGE: ' .. rerr end
  end
  local settings = own or default
  local title, body, html, err
  if rendered then
    title = present(m.Title) and m.Title or nil
    body = present(m.Body) and m.Body or nil
  else
    title, err = render_text(m.Title or m.Subject, ep)
    if err then return nil, 'RENDER_FAILED: ' .. err end
    body, err = render_text(m.Body, ep)
    if err then return nil, 'RENDER_FAILED: ' .. err end
  end
  -- Pinpoint honours a hook's overrides on every channel but email.
  if row.channel ~= 'EMAIL' then
    if present(row.title_override) then title = row.title_override end
    if present(row.body_override) then body = row.body_override end
  end
  if rendered then
    html = present(m.HtmlBody) and m.HtmlBody or nil
  else
    html, err = render_text(m.HtmlBody, ep, true)
    if err then return nil, 'RENDER_FAILED: ' .. err end
  end
  local custom_data
  if type(m.Data) == 'string' then
    -- CustomMessage.Data: a string the receiver gets as the payload's Data, rendered
    custom_data, err = render_text(m.Data, ep)
    if err then return nil, 'RENDER_FAILED: ' .. err end
  end
  local static = static_fields(settings or EMPTY, def, name, settings or tconfig or config)
  local msg = setmetatable({
    key = row.message_id, address = row.address, channel = row.channel,
    endpoint_id = row.endpoint_id, ctx = ep,
    campaign_id = row.campaign_id, treatment_id = row.treatment,
    activity_id = row.run_id and tostring(row.run_id) or nil,
    scheduled_time = scheduled_time(row.due_ms),
    -- when the message was first due: a push's TimeToLive counts from then, not from a retry
    first_due_ms = row.first_due_ms or row.due_ms,
    title = title, body = body, html = html, custom_data = custom_data, raw = raw,
  }, static)
  if rendered and PUSH[channel] then deliver.template_push_settings(rendered, msg) end
  if (rendered and rendered.Headers) or static.header_variables then
    -- the template's headers, under the message's own, rendered for the endpoint (the
    -- message's own without variables are the same for all, reached through static)
    local h, herr = email_headers(ep, nil, rendered and rendered.Headers, static.headers)
    if herr then return nil, 'RENDER_FAILED: ' .. herr end
    msg.headers = h
  end
  return msg
end

-- The outcome of a message its channel told none of: retried. When the channel raised err
-- (raised: a key file it cannot read, a bug in a Lua channel) it has sent nothing we know of:
-- the failure counts towards the campaign's pause, rather than the whole group failing for good.
local function no_outcome(profile, raised, err)
  if not raised then return { verdict = 'transient', reason = 'no outcome' } end
  return { verdict = 'transient', reason = 'channel ' .. profile.name .. ': ' .. tostring(err),
           systemic = true, error = true }
end

-- Sends prepared messages grouped by profile, every profile's batch in its own task so they
-- overlap on the loop; returns outcomes by the index of `items` ({profile=, msg=}). A channel
-- that can tell outcomes as they finish (all but a Lua channel and a webhook with several
-- endpoints per call) hands them to progress(indexes, outcomes) on the way, by the index of
-- `items`. progress gets every chunk even after a call of it raised (deliver.pump keeps what
-- it could not record and records it with a later chunk); the second result is the error of
-- the last call when that one raised.
function deliver.send_items(items, progress)
  local groups, order = {}, {}
  for i, it in ipairs(items) do
    local g = groups[it.profile.name]
    if g == nil then
      g = { profile = it.profile, msgs = {}, idx = {} }
      groups[it.profile.name] = g
      order[#order + 1] = g
    end
    g.msgs[#g.msgs + 1] = it.msg
    g.idx[#g.idx + 1] = i
  end
  local out, pending, all_done, progress_err = {}, #order, nil, nil
  local function run(g)
    local told = nil
    if progress then
      told = function(ks, outs)
        local idx = {}
        for j, k in ipairs(ks) do idx[j] = g.idx[k] end
        local ok, err = pcall(progress, idx, outs)
        progress_err = not ok and err or nil
      end
    end
    local ok, res = pcall(function() return channel_for(g.profile):send(g.msgs, told) end)
    for k, i in ipairs(g.idx) do out[i] = ok and res[k] or no_outcome(g.profile, not ok, res) end
    pending = pending - 1
    if pending == 0 and all_done then all_done:notify() end
  end
  if #order == 1 then
    run(order[1])
  else
    all_done = task.signal()
    for _, g in ipairs(order) do task.spawn(run, g) end
    if pending > 0 then all_done:wait() end
  end
  return out, progress_err
end

local function backoff(attempts)
  local r = deliver.config().retry
  return http.backoff(attempts, r.min_ms, r.max_ms, r.jitter)
end

-- Provider feedback on an endpoint (of app, default the current one). A write that fails (the
-- endpoint deleted meanwhile) is reported, not raised: the message's outcome stands.
function deliver.feedback(endpoint_id, kind, app)
  local ok, err = true, nil
  local opts = app and { app = app } or nil
  -- an endpoint deleted meanwhile is not made again by its feedback
  if endpoints.get(endpoint_id, opts) == nil then return end
  if kind == 'INACTIVE' or kind == 'HARD_BOUNCE' then
    ok, err = endpoints.put({ Id = endpoint_id, EndpointStatus = 'INACTIVE' }, opts)
  elseif kind == 'OPT_OUT' then
    ok, err = endpoints.put({ Id = endpoint_id, OptOut = 'ALL' }, opts)
  end
  if not ok then
    io.stderr:write('herald: provider feedback ' .. tostring(kind) .. ' for endpoint ' .. tostring(endpoint_id)
      .. ' not recorded: ' .. tostring(err) .. '\n')
  end
end

local with_retries

-- Pauses a campaign for reason; why (default: the systemic failures rule) is what campaign
-- show and status give as its PauseReason. A busy store is waited for (with_retries), as
-- for the outcomes, rather than ending delivery with the claim's rows CLAIMED.
local function pause(campaign_id, reason, why)
  if state.paused[campaign_id] then return end
  state.paused[campaign_id] = reason
  -- a campaign deleted (or made invalid) meanwhile stays so: pausing it would let a resume
  -- bring it back
  local now = store.query('SELECT state FROM campaigns WHERE app_id = ? AND id = ?', hcore.app(), campaign_id)
  local st = now and now[1] and now[1].state
  if st == 'DELETED' or st == 'INVALID' then return end
  local n = deliver.config().pause_after
  with_retries('pausing campaign ' .. campaign_id, outbox.set_campaign_state, campaign_id, 'PAUSED', hcore.app(),
    why or string.format('%d consecutive systemic failures, the last: %s', n, reason))
  io.stderr:write(why and string.format('herald: campaign %s paused: %s\n', campaign_id, why)
    or string.format('herald: campaign %s paused after %d consecutive systemic failures: %s\n', campaign_id, n, reason))
end

-- The campaigns to claim from: ids_json without the paused ones (nil: every campaign not
-- paused). Returns a JSON array or nil when ids_json is nil and none is paused.
local function claimable(ids_json)
  local app = hcore.app()
  local paused = store.query("SELECT id FROM campaigns WHERE app_id = ? AND state = 'PAUSED'", app)
  local skip = {}
  for _, r in ipairs(paused or {}) do skip[r.id] = true end
  -- A campaign this process paused is skipped until it is resumed (`herald campaign resume`,
  -- from another process, changes only the stored state): then its failure count starts over.
  for id in pairs(state.paused) do
    if not skip[id] then state.paused[id], state.systemic[id] = nil, 0 end
  end
  if next(skip) == nil then return ids_json end
  local ids = {}
  if ids_json then
    for _, id in ipairs(json.decode(ids_json)) do if not skip[id] then ids[#ids + 1] = id end end
  else
    for _, r in ipairs(store.query("SELECT id FROM campaigns WHERE app_id = ? AND state != 'PAUSED'", app) or {}) do
      if not skip[r.id] then ids[#ids + 1] = r.id end
    end
  end
  return json.encode(json.array(ids))
end

-- Claims up to max rows due at now_ms of the campaigns in ids_json (a JSON array; nil = all),
-- sends them and records the outcomes. Returns how many were claimed and the next due time.
-- A campaign's FILTER hook may give an endpoint TitleOverride/BodyOverride, kept on its outbox
-- row. Only rows of hooked campaigns are looked up, in one query per claim.
local function attach_overrides(rows)
  local ids = {}
  for _, row in ipairs(rows) do
    local def = definition(row.campaign_id, row.campaign_version)
    if def and def.Hook ~= nil then ids[#ids + 1] = row.id end
  end
  if #ids == 0 then return end
  local found = db.query('SELECT id, title_override, body_override FROM outbox'
    .. ' WHERE id IN (SELECT value FROM json_each(?1))'
    .. ' AND (title_override IS NOT NULL OR body_override IS NOT NULL)', json.encode(ids))
  local by_id = {}
  for _, r in ipairs(found or {}) do by_id[r.id] = r end
  for _, row in ipairs(rows) do
    local r = by_id[row.id]
    if r then row.title_override, row.body_override = r.title_override, r.body_override end
  end
end

-- A row's quiet time, by definition and treatment (a treatment's own schedule without one
-- keeps the campaign's, as when runs are written): the hours, the zone to fall back on and the
-- policy; false when it has none.
local windows = setmetatable({}, { __mode = 'k' })
local function quiet_window(def, treatment)
  local by_t = sub(windows, def)
  local w = by_t[treatment]
  if w == nil then
    local sched = type(def.Schedule) == 'table' and def.Schedule or EMPTY
    local own
    for _, t in ipairs(treatment ~= 0 and def.AdditionalTreatments or EMPTY) do
      if tonumber(t.Id) == treatment and type(t.Schedule) == 'table' then own = t.Schedule end
    end
    local qt = own and present(own.QuietTime) and own.QuietTime or sched.QuietTime
    if not present(qt) or qt.Start == nil or qt.End == nil then qt = nil end
    local ext = type(def.Herald) == 'table' and def.Herald or EMPTY
    w = qt and { quiet = qt, tz = (own and own.Timezone) or sched.Timezone or 'UTC',
                 skip = ext.QuietTimePolicy == 'skip', zones = {} } or false
    by_t[treatment] = w
  end
  return w
end

-- Whether a claimed row is in its quiet time at now_ms: nil when not; else 'QUIET_TIME' and,
-- under the defer policy, when it ends. Rows wait past their time (a paused campaign resumed,
-- herald down, a backlog under MessagesPerSecond, retries), so quiet time is looked at again
-- when they are sent, not only when the run was written: a message due before quiet time must
-- not go out in it.
local function in_quiet_time(def, row, now_ms)
  local w = quiet_window(def, row.treatment)
  if not w then return nil end
  -- one answer per zone for the claim's instant
  local zone = row.zone or ''
  local z = w.zones[zone]
  if z == nil or z.at ~= now_ms then
    local quiet, ends = time.quiet(w.quiet, now_ms, zone ~= '' and zone or nil, w.tz)
    -- an unusable zone was dealt with when the run was written: the row goes as planned
    z = { at = now_ms, ends = quiet and ends or false }
    w.zones[zone] = z
  end
  if z.ends then return 'QUIET_TIME', not w.skip and z.ends or nil end
  return nil
end

-- Whether a claimed row of an event-triggered campaign is stale at now_ms. Pinpoint drops a
-- message of an event-based campaign it cannot deliver within five minutes, and the bound
-- (Herald.StaleAfterSeconds, 5 minutes by default) holds until the message goes out, not only
-- when it is written: one written in time but left waiting (herald stopped, the campaign
-- paused, a backlog under MessagesPerSecond, a provider's Retry-After) is not sent hours late.
-- Late counts from its first due time, which retries and rate-limit deferrals leave as it
-- was: a retry past the bound is not tried again either (Pinpoint does not redeliver then).
-- Quiet time under the defer policy is the one wait by design: as a scheduled run's staleness
-- counts from its deferred due time, a message that quiet time holds when its bound runs out
-- (in time when quiet time began) is due when quiet time ends and has the bound again from
-- then: 21:58's message caught at 22:00 goes at 07:00, 21:00's does not. Only once, or a bound
-- longer than the hours outside quiet time would be renewed every night.
local function is_stale(def, row, now_ms)
  local sched = type(def.Schedule) == 'table' and def.Schedule or EMPTY
  if sched.Frequency ~= 'EVENT' then return false end
  local ext = type(def.Herald) == 'table' and def.Herald or EMPTY
  local bound = (tonumber(ext.StaleAfterSeconds) or campaign.DEFAULT_TRIGGER_STALE_AFTER_S) * 1000
  local due = row.first_due_ms
  if now_ms - due <= bound then return false end
  local w = quiet_window(def, row.treatment)
  if not w or w.skip then return true end
  -- an unusable zone was dealt with when the row was written: no quiet time to wait for
  local quiet, ends = time.quiet(w.quiet, due, row.zone, w.tz)
  if quiet then due = ends end
  local deadline = due + bound
  quiet, ends = time.quiet(w.quiet, deadline, row.zone, w.tz)
  if quiet then deadline = ends + bound end
  return now_ms > deadline
end

-- The webhook lane (herald.core.lane): a claim's rows that need nothing but their endpoint
-- read, their text rendered and Pinpoint's custom-channel payload written are prepared, sent
-- and, when delivered, settled without a Lua table each; everything else about them (quiet
-- time, staleness, limits, hooks, stored templates, signing, failures) is the general path's,
-- which the rows of any campaign that needs one of those take. A spec says how to write a
-- group's payloads: one per definition and treatment, false when its rows take the general
-- path. It is made from the same parts prepare reads, so the payload is the one
-- webhook.payload writes for them.
local function text_part(v)
  if not present(v) then return nil end
  if type(v) ~= 'string' then return false end
  return compiled_text(v, false) or false
end

local function make_lane_spec(def, campaign_id, treatment)
  local sched = type(def.Schedule) == 'table' and def.Schedule or EMPTY
  if def.Hook ~= nil or sched.Frequency == 'EVENT' or quiet_window(def, treatment) then return false end
  local mps = type(def.Limits) == 'table' and tonumber(def.Limits.MessagesPerSecond)
  if mps and mps > 0 then return false end
  local profile = route(def, 'CUSTOM')
  if profile == nil or CHANNEL_MODULES[profile.type] ~= 'herald.channels.webhook'
      or profile.limits ~= nil or deliver.config().global ~= nil then
    return false
  end
  local okc, ch = pcall(channel_for, profile)
  if not okc or not ch:lane_ok() then return false end
  local name, config, tconfig = treatment_config(def, treatment)
  if not present(config) or type(config) ~= 'table' then return false end
  -- as prepare chooses (no stored template has a CUSTOM part)
  local own, default = channel_messages(config, 'CUSTOM')
  local m = (own and has_content(own) and own) or default or own
  if type(m) ~= 'table' or present(m.HtmlBody) then return false end
  local title, body = text_part(m.Title or m.Subject), text_part(m.Body)
  local data = nil
  if type(m.Data) == 'string' then data = text_part(m.Data) end
  if title == false or body == false or data == false then return false end
  local settings = own or default
  local static = static_fields(settings or EMPTY, def, name, settings or tconfig or config)
  if static.header_variables then return false end
  local data_json
  if data == nil and static.data ~= nil then
    data_json = json.encode(static.data)
    if data_json == nil then return false end
  end
  return { profile = profile, spec = lane.spec {
    app_id = static.app_id, profile = profile, body = body, title = title, data = data, data_json = data_json,
  } }
end

-- outbox.claim's chooser: the lane spec for a group of claimed rows, or nil.
local function lane_choice(campaign_id, version, treatment, channel)
  if channel ~= 'CUSTOM' or state.paused[campaign_id] then return nil end
  local def = definition(campaign_id, version)
  if def == nil then return nil end
  local by_t = sub(lane_specs, def)
  local s = by_t[treatment]
  if s == nil then
    s = make_lane_spec(def, campaign_id, treatment)
    by_t[treatment] = s
  end
  -- a profile held by a Retry-After sends nothing now: the general path defers its rows
  if not s or not profile_limit(s.profile):check() then return nil end
  return s.spec
end

-- Renders and routes a claim's rows: reports (rows that cannot be sent), defers (rows over a
-- limit or in quiet time) and items to send.
local function prepare_rows(rows, now_ms)
  local reports, defers, items = {}, {}, {}
  for _, row in ipairs(rows) do
    local def, err = definition(row.campaign_id, row.campaign_version)
    local ep, profile, msg, missing
    local why_not, until_ms
    -- stale first: a message too late to go is not held to the end of quiet time either
    if def and is_stale(def, row, now_ms) then
      reports[#reports + 1] = { id = row.id, state = 'SKIPPED', reason = 'STALE' }
      goto continue
    end
    if def then why_not, until_ms = in_quiet_time(def, row, now_ms) end
    if why_not then
      if until_ms then
        defers[#defers + 1] = { id = row.id, due_ms = until_ms }
      else
        reports[#reports + 1] = { id = row.id, state = 'SKIPPED', reason = why_not }
      end
      goto continue
    end
    if def then
      ep = tcore.endpoint_context(row.endpoint_id)
      if ep == nil then err = 'ENDPOINT_DELETED' end
    end
    if def and ep then profile, err = route(def, row.channel) end
    if profile then msg, err, missing = prepare(row, def, ep, profile) end
    if def and ep and (state.paused[row.campaign_id] or profile == nil or missing) then
      -- A route the providers file lacks (a misspelt profile, a channel it does not route), or
      -- a stored template the campaign names that does not exist (not yet created, a version
      -- that was never written), is no fault of the recipients': rather than fail the whole
      -- audience for good, the campaign pauses with the reason and its messages wait,
      -- unspent, for the fix and the resume. So do the rest of a claim's rows of a campaign
      -- paused meanwhile.
      if profile == nil then
        pause(row.campaign_id, err, 'cannot deliver: ' .. tostring(err)
          .. ' (fix the providers file, then resume the campaign)')
      elseif missing then
        pause(row.campaign_id, err, 'cannot deliver: ' .. tostring(err)
          .. ' (create the template, then resume the campaign)')
      end
      reports[#reports + 1] = { id = row.id, state = 'RELEASED', due_ms = now_ms,
                                reason = 'PAUSED: ' .. tostring(err or state.paused[row.campaign_id]) }
    elseif msg == nil then
      reports[#reports + 1] = { id = row.id, state = 'FAILED', reason = err }
    else
      -- Limits: a row over its campaign's or profile's limit waits for the next slot. The
      -- campaign's limit is only looked at first, and taken from once the profile has granted,
      -- so a row the profile holds back spends none of the campaign's rate.
      local granted, slot = true, nil
      local cl, cstep = campaign_limit(row.campaign_id, def)
      local pl, pstep = profile_limit(profile)
      local by_campaign = false
      if cl then
        granted, slot = cl:check()
        by_campaign = not granted
      end
      if granted then granted, slot = pl:take() end
      if granted and cl then cl:take() end
      if granted then
        items[#items + 1] = { profile = profile, msg = msg, row = row }
      else
        -- Rows over a limit come back one message-interval apart (the campaign's
        -- MessagesPerSecond, else the profile's pace), not all at the first free slot, where
        -- each would be claimed again only for all but one to be deferred again (a backlog
        -- claimed over and over at every slot). The limit still decides when they go. A row
        -- held back by its profile keeps to that profile's slots, whatever the campaign's
        -- other profiles are waiting for.
        slot = slot or (now_ms + 1000)
        local due = slot
        if by_campaign then
          due = pace(pace_key(def, row), slot, 1, cstep)
        elseif pstep then
          due = pace(pace_key(def, row, profile.name), slot, pstep.limit, pstep.period_ms)
        end
        defers[#defers + 1] = { id = row.id, due_ms = due }
      end
    end
    ::continue::
  end
  return reports, defers, items
end

-- Claims and prepares in one transaction: if preparing fails, the rows are not left claimed.
-- Rows held back by a limit go back to PENDING at their slots in the same transaction: left
-- CLAIMED until the claim's sends finished (seconds, with a slow provider), they counted as
-- messages in flight towards their endpoints' Daily and Total caps meanwhile, and another
-- campaign's message to the endpoint claimed then was skipped for a cap it had not reached.
local function claim_and_prepare(now_ms, max, ids_json)
  local rows, fast = outbox.claim(now_ms, max, ids_json, nil, lane_choice)
  attach_overrides(rows)
  local reports, defers, items = prepare_rows(rows, now_ms)
  local claimed = #rows
  if fast then
    claimed = claimed + fast:total()
    for _, r in ipairs(fast:failures()) do reports[#reports + 1] = r end
    if fast:count() == 0 then fast = nil end
  end
  if #defers > 0 then core.defer_batch(defers) end
  return { claimed = claimed, reports = reports, defers = defers, items = items, fast = fast }
end

-- A store write that fails (the store busy past its timeout while another process writes a
-- large run, or holds a long transaction) is tried again, a second apart, for about a
-- minute before the error is raised: a daemon waits for the store rather than dying with its
-- outcomes unwritten. what says what was being done, for the message.
local STORE_TRIES = 60

-- Calls fn(...) until the store takes it, a second between tries, while waits(err, attempt)
-- says the refusal is worth waiting for, saying so (what, then note) at the first refusal and
-- every tenth; raises the store's error once it does not. Returns fn's results (up to four).
local function retry_store(what, note, waits, fn, ...)
  local attempt = 0
  while true do
    local ok, a, b, c, d = pcall(fn, ...)
    if ok then return a, b, c, d end
    attempt = attempt + 1
    if not waits(a, attempt) then error(a, 0) end
    if attempt == 1 or attempt % 10 == 0 then
      io.stderr:write('herald: ' .. what .. ' failed, trying again' .. note .. ': ' .. tostring(a) .. '\n')
    end
    task.sleep(1000)
  end
end

-- only a busy store is waited for, STORE_TRIES times: any other failure is raised at once
local function busy_for_a_while(err, attempt) return attempt < STORE_TRIES and db.busy(err) end

function with_retries(what, fn, ...)
  return retry_store(what, '', busy_for_a_while, fn, ...)
end

-- How long a claim's outcomes wait for a store that refuses them (busy, or failing: disk full,
-- I/O errors) before the error is raised; nil waits until they are written. `herald run`
-- sets it to its own patience (a run that is to end gives up, a daemon waits); a script that
-- drains by itself waits a minute, as for a busy store before.
deliver.store_patience_ms = 60000

-- What until_written gave up on (the patience spent, or a stop requested, while the store
-- refused it), oldest first: {what =, fn =, args =, outcomes = n}. It is written before
-- anything more is claimed (deliver.drain), and counted by deliver.in_doubt().
local unwritten = {}

-- Writes what must be written, fn(...), once the messages it is about are out: the outcomes of
-- sent messages (else their rows stay CLAIMED and the next start sends them again:
-- duplicates). A busy or failing store is waited for in place,
-- a second between tries, saying so now and then, until it takes them, the patience runs out
-- (real time: a manual clock stands still meanwhile) or the process is asked to stop;
-- meanwhile this lane claims nothing more. Given up on, the write is kept for later
-- (unwritten) and the store's error raised. outcomes: how many sent messages' outcomes it
-- holds.
local function until_written(what, outcomes, fn, ...)
  local since, refused, args = task.now(), 0, table.pack(...)
  retry_store(what, ' (the messages are out, their outcomes wait here)', function(err, attempt)
    if not (db.busy(err) or db.unavailable(err)) then return false end
    local patience = deliver.store_patience_ms
    if hcore.stopping() or (patience and task.now() - since >= patience) then
      unwritten[#unwritten + 1] = { what = what, fn = fn, args = args, outcomes = outcomes }
      return false
    end
    refused = attempt
    return true
  end, fn, ...)
  if refused > 0 then io.stderr:write('herald: ' .. what .. ': written after ' .. refused .. ' tries\n') end
end

-- How many messages were sent whose outcomes could not be written (see until_written): their
-- rows stay CLAIMED, and if this process ends before it writes them, the next start sends
-- them again.
function deliver.in_doubt()
  local n = 0
  for _, u in ipairs(unwritten) do n = n + u.outcomes end
  return n
end

-- Writes what until_written gave up on, oldest first; raises the store's error at the first
-- that it still refuses.
function deliver.write_unwritten()
  while unwritten[1] do
    local u = unwritten[1]
    u.fn(table.unpack(u.args, 1, u.args.n))
    table.remove(unwritten, 1)
    io.stderr:write('herald: ' .. u.what .. ': written at last\n')
  end
end

-- The claim's last outcomes: they must be written, or the rows stay CLAIMED and a restart
-- sends them again.
local function report_all(reports)
  until_written('recording ' .. #reports .. ' outcomes', #reports, outbox.report_batch, reports)
end

-- A claim's messages not yet on the wire go back to the outbox when their campaign is paused,
-- deleted or made invalid (by this process or any other) or when the process is asked to stop,
-- rather than holding the pause, or the stop, until the whole claim has gone out. Each message
-- carries its campaign's gate (msg.gate, an http gate); channels hand it to the transport with
-- the request or mail, and closing it brings back unsent ('recalled') every one still waiting
-- for a connection, which the pump reports RELEASED (PENDING again, no attempt spent). What is
-- on the wire finishes; the channels tell the recalled outcomes as they come back, not with
-- the chunk of the answers before them (util.send_http_taking, smtp:send), so those messages
-- are PENDING again about CHECK_MS after the pause. While pumps send, a watcher looks up the
-- states of the campaigns being sent every CHECK_MS, in one query, and closes their gates at
-- once at a stop request.
local CHECK_MS = 250
local HOLDING = { PAUSED = true, DELETED = true, INVALID = true }
local sending = {}                                    -- campaign id -> { gate =, claims = }
local closed_why = setmetatable({}, { __mode = 'k' }) -- gate -> the campaign state, or STOPPED
local watch = { running = false, wake = nil, failed = false }

local function close_gate(cid, why)
  local s = sending[cid]
  if s == nil then return end
  sending[cid] = nil
  closed_why[s.gate] = why
  s.gate:close()
end

local function check_gates()
  if hcore.stopping() then
    for cid in pairs(sending) do close_gate(cid, 'STOPPED') end
    return
  end
  local ids = {}
  for cid in pairs(sending) do ids[#ids + 1] = cid end
  if #ids == 0 then return end
  local rows, err = store.query('SELECT id, state FROM campaigns WHERE app_id = ? AND id IN (SELECT value FROM json_each(?))',
    hcore.app(), json.encode(ids))
  if rows == nil then error(err, 0) end
  local now = {}
  for _, r in ipairs(rows) do now[r.id] = r.state end
  for _, cid in ipairs(ids) do
    local st = now[cid] or 'DELETED'
    if HOLDING[st] then
      close_gate(cid, st)
      io.stderr:write(string.format('herald: campaign %s is %s: its messages not yet sent go back to the outbox\n', cid, st))
    end
  end
end

local function watcher()
  repeat
    watch.wake:wait(CHECK_MS)   -- cut short by a stop request
    if next(sending) ~= nil then
      local ok, err = pcall(check_gates)
      if not ok and not watch.failed then
        -- the store busy, say: the next look may do
        watch.failed = true
        io.stderr:write('herald: looking up the states of the campaigns being sent failed (tried again): '
          .. tostring(err) .. '\n')
      end
    end
  until next(sending) == nil
  watch.running = false
end

-- The gate of a claim's messages of campaign cid, taken for the claim until leave_gates.
local function enter_gate(cid)
  local s = sending[cid]
  if s == nil then
    local g = http.gate()
    if hcore.stopping() then
      -- stopping already: nothing of this claim goes out
      closed_why[g] = 'STOPPED'
      g:close()
      return g
    end
    s = { gate = g, claims = 0 }
    sending[cid] = s
    if not watch.running then
      watch.running, watch.failed = true, false
      watch.wake = watch.wake or task.signal()
      task.spawn(watcher)
    end
  end
  s.claims = s.claims + 1
  return s.gate
end

-- The claim is done with its gates (campaign id -> gate).
local function leave_gates(gates)
  for cid, g in pairs(gates) do
    local s = sending[cid]
    if s and s.gate == g then
      s.claims = s.claims - 1
      if s.claims == 0 then sending[cid] = nil end
    end
  end
  if next(sending) == nil and watch.running then watch.wake:notify() end
end

-- Sends the lane's requests through its profile's webhook channel and settles their outcomes
-- as they come, a chunk at a time (util.CHUNK), as deliver.send_items does the general path's:
-- a delivery by delivered(campaign_id, row_id, profile_name), anything else by settle(item, o,
-- now) with the outcome the channel would give it; after each chunk, flush() records them.
-- A request with no outcome (the batch failed) is retried, as send_items has it. Returns the
-- error of the last flush when it raised (what it could not write is written later).
local function send_lane(fast, gates, settle, delivered, flush)
  local profile = fast:profile()
  local n, ids, cids = fast:count(), fast:ids(), fast:cids()
  local done, flush_err = {}, nil
  local function item(s)
    return { row = fast:row(s), profile = profile, msg = { gate = gates[cids[s]] } }
  end
  local ok, err = pcall(function()
    local ch = channel_for(profile)
    local b <close> = ch:lane_batch(n)
    fast:submit(b, gates)
    local left = n
    while left > 0 do
      local res = b:wait(math.min(util.CHUNK, left), util.RECALLED)
      if res.n == 0 then break end
      left = left - res.n
      local now = clock.now()
      local seq, verdicts, after = res.seq, res.verdict, res.retry_after_ms
      for i = 1, res.n do
        local s = seq[i]
        done[s] = true
        if verdicts[i] == 'delivered' and after[i] == nil then
          delivered(cids[s], ids[s], profile.name)
        else
          settle(item(s), ch.verdict { verdict = verdicts[i], status = res.status[i], class = res.class[i],
                                       detail = res.detail[i], retry_after_ms = after[i] }, now)
        end
      end
      local fok, ferr = pcall(flush)
      flush_err = not fok and ferr or nil
    end
  end)
  local now = clock.now()
  for s = 1, n do
    if not done[s] then
      settle(item(s), no_outcome(profile, not ok, err), now)
    end
  end
  return flush_err
end

-- Outcomes are recorded as the channel tells them (in chunks, each in a transaction of its
-- own), so the messages sent but not yet recorded when a process is killed, which it sends
-- again after its restart, are at most a chunk's worth per lane rather than a whole claim.
function deliver.pump(now_ms, max, ids_json)
  ids_json = claimable(ids_json)
  local cfg = deliver.config()
  -- a claim that fails leaves nothing claimed (its transaction rolls back): tried again
  local c = with_retries('claiming', with_limits, claim_and_prepare, now_ms, max, ids_json)
  local reports, defers, items, fast = c.reports, c.defers, c.items, c.fast
  local fb = {}
  if #items > 0 or fast then
    local gates = {}
    for _, it in ipairs(items) do
      local cid = it.row.campaign_id
      gates[cid] = gates[cid] or enter_gate(cid)
      it.msg.gate = gates[cid]
    end
    if fast then
      for _, cid in ipairs(fast:campaigns()) do gates[cid] = gates[cid] or enter_gate(cid) end
    end
    -- a delivery: the campaign's systemic count and the profile's throttle start over, and a
    -- bare id is reported SENT (outbox.report_batch)
    local function sent(cid, id, profile_name)
      state.systemic[cid] = 0
      state.throttled[profile_name] = nil
      state.stats.sent = state.stats.sent + 1
      reports[#reports + 1] = id
    end
    local function settle(it, o, now)
      local row = it.row
      local cid = row.campaign_id
      -- A systemic refusal (credentials, a refused sender, a channel that cannot start) is
      -- not the recipient's doing: the message is retried, never failed for good.
      local verdict = o.verdict
      if verdict == 'permanent' and o.systemic then verdict = 'transient' end
      if verdict == 'delivered' then
        sent(cid, row.id, it.profile.name)
      elseif o.held then
        -- Never sent (the provider asked this profile to wait: 429/503 with Retry-After), or
        -- refused by the provider's throttle (util.throttled). The message goes back without
        -- spending an attempt, due when the wait is over, and the profile is held as long:
        -- the Retry-After, else a wait that doubles (the retry settings' backoff) with each
        -- refusal until the provider delivers again. Neither counts towards a pause.
        local wait = o.retry_after_ms
        if wait == nil then
          local n = (state.throttled[it.profile.name] or 0) + 1
          state.throttled[it.profile.name] = n
          wait = backoff(n)
        end
        wait = math.max(wait, 1)
        -- a throttle of one recipient's (APNs's TooManyRequests: too many to one device) holds
        -- back that message alone
        if not o.per_recipient then deliver.hold(it.profile, wait) end
        state.stats.deferred = state.stats.deferred + 1
        reports[#reports + 1] = { id = row.id, state = 'RELEASED', due_ms = now + wait,
                                  reason = (o.throttled and 'THROTTLED: ' or 'RETRY_AFTER: ') .. tostring(o.reason) }
      elseif o.recalled then
        -- Never sent: its campaign's gate closed before the transport started it (see
        -- check_gates). It goes back without spending an attempt, for the resume or the restart.
        state.stats.deferred = state.stats.deferred + 1
        reports[#reports + 1] = { id = row.id, state = 'RELEASED', due_ms = now,
                                  reason = tostring(closed_why[it.msg.gate] or 'RECALLED') .. ': ' .. tostring(o.reason) }
      else
        local pausing = false
        if o.systemic then
          state.systemic[cid] = (state.systemic[cid] or 0) + 1
          -- A refusal of the profile (a bad token, a refused sender) is never the message's:
          -- one refused on all its attempts pauses the campaign, as pause_after systemic
          -- failures in a row do, rather than failing for good (a campaign of a few messages
          -- to a profile with a bad token would otherwise lose them all before the rule's
          -- count was reached). A provider unavailable (5xx, timeouts, broken connections)
          -- on all of them dead-letters the message.
          pausing = state.systemic[cid] >= cfg.pause_after
          if not pausing and verdict == 'transient' and not o.unavailable
              and row.attempts >= cfg.retry.max_attempts then
            pausing = string.format('a message failed all its %d attempts for a reason not its own, the last: %s',
              row.attempts, tostring(o.reason))
          end
        else
          -- the provider answered (a bad address, say): the failures are not consecutive
          state.systemic[cid] = 0
        end
        -- A hard bounce of a message that fails for good is recorded with its outcome, as
        -- a bounce notice of it would be (an _email.hardbounce with the campaign's attributes,
        -- the endpoint INACTIVE), so analytics count it; other feedback updates the endpoint.
        local bounce = verdict == 'permanent' and o.feedback == 'HARD_BOUNCE'
        if o.feedback and not bounce then fb[#fb + 1] = { row.endpoint_id, o.feedback } end
        deliver.hold(it.profile, o.retry_after_ms)
        local why = closed_why[it.msg.gate]
        if verdict == 'transient' and (state.paused[cid] or pausing or (why and why ~= 'STOPPED')) then
          -- Paused (here or elsewhere) while this message was on the wire: it waits for the
          -- resume, and the claim does not count as one of its attempts, so a pause never burns
          -- the audience.
          state.stats.retried = state.stats.retried + 1
          reports[#reports + 1] = { id = row.id, state = 'RELEASED', due_ms = now,
                                    reason = 'PAUSED: ' .. tostring(o.reason) }
        elseif verdict == 'permanent' then
          state.stats.failed = state.stats.failed + 1
          reports[#reports + 1] = { id = row.id, state = 'FAILED', reason = 'PERMANENT: ' .. tostring(o.reason),
                                    hard_bounce = bounce and tostring(o.reason) or nil }
        elseif row.attempts >= cfg.retry.max_attempts then
          state.stats.dead = state.stats.dead + 1
          reports[#reports + 1] = { id = row.id, state = 'FAILED',
                                    reason = 'DEAD_LETTER: ' .. row.attempts .. ' attempts, last: ' .. tostring(o.reason) }
        else
          state.stats.retried = state.stats.retried + 1
          local delay = math.max(backoff(row.attempts), o.retry_after_ms or 0)
          reports[#reports + 1] = { id = row.id, state = 'PENDING', due_ms = now + delay,
                                    reason = 'RETRY: ' .. tostring(o.reason) }
        end
        -- After the row's own outcome is kept. A pause the store still refuses after the
        -- retries is reported rather than raised, so the claim's outcomes are written all the
        -- same (not left CLAIMED); the rule pauses the campaign at its next failures.
        if pausing then
          local okp, perr = pcall(pause, cid, o.reason, type(pausing) == 'string' and pausing or nil)
          if not okp then
            io.stderr:write('herald: campaign ' .. cid .. ' could not be paused: ' .. tostring(perr) .. '\n')
          end
          -- the claim's requests still waiting are not sent only to fail as well
          close_gate(cid, 'PAUSED')
        end
      end
    end
    -- a delivery the lane settles: what settle does for one, from the row's id alone
    local function delivered(cid, id, profile_name)
      sent(cid, id, profile_name)
      state.stats.lane = state.stats.lane + 1
    end
    local function flush()
      -- kept until written: if this write fails, the next chunk's (or the last) carries them
      outbox.report_batch(reports)
      reports = {}
      for _, f in ipairs(fb) do deliver.feedback(f[1], f[2]) end
      fb = {}
    end
    local settled = {}
    local function progress(idx, outs)
      local now = clock.now()
      for j, i in ipairs(idx) do
        settled[i] = true
        settle(items[i], outs[j], now)
      end
      flush()
    end
    -- the lane's requests go out beside the general path's, in a task of their own
    local lane_done, lane_err, lane_fail, lane_live = nil, nil, nil, fast ~= nil
    if fast then
      task.spawn(function()
        local okl, r = pcall(send_lane, fast, gates, settle, delivered, flush)
        if okl then lane_err = r else lane_fail = r end
        lane_live = false
        if lane_done then lane_done:notify() end
      end)
    end
    local ok, out, progress_err = true, {}, nil
    if #items > 0 then ok, out, progress_err = pcall(deliver.send_items, items, progress) end
    if lane_live then
      lane_done = task.signal()
      lane_done:wait()
    end
    leave_gates(gates)
    if not ok then error(out, 0) end
    if lane_fail ~= nil then error(lane_fail, 0) end
    progress_err = progress_err or lane_err
    if progress_err ~= nil then
      io.stderr:write('herald: recording outcomes as they came failed (retried at the end of the claim): '
        .. tostring(progress_err) .. '\n')
    end
    local now = clock.now()
    for i = 1, #items do
      if not settled[i] then settle(items[i], out[i], now) end
    end
  end
  -- the outcomes first: messages already delivered must be recorded whatever happens next
  report_all(reports)
  -- (the rows held back by a limit were given back with the claim)
  state.stats.deferred = state.stats.deferred + #defers
  for _, f in ipairs(fb) do deliver.feedback(f[1], f[2]) end
  -- A full claim means more is due at once: runs are closed when the claims run short.
  if c.claimed < max then with_retries('closing runs', outbox.complete_runs) end
  return c.claimed, outbox.next_due(ids_json)
end

-- Delivers everything due at now_ms: the providers file's `lanes` pumps (default 4) claim in
-- turn, so one lane's claim, render and report run while other lanes' messages are on the
-- wire; with one lane the loop and the transport would take turns instead. Four lanes keep the
-- transport fed while a lane waits for the last answers of its claim (webhook-outbox: 12% more
-- messages/s than two lanes, measured interleaved). Each lane stops
-- at its first short claim (or when stop() says so). Messages in flight at once: at most
-- lanes * max. Returns how many rows were claimed and the next due time.
function deliver.drain(now_ms, max, ids_json, stop)
  -- what an earlier drain could not write goes first: its rows stay CLAIMED until then
  deliver.write_unwritten()
  local lanes = deliver.config().lanes or 4
  local total, next_due, failure, live = 0, nil, nil, lanes
  local all_done = task.signal()
  -- once a claim came back short, everything due at now_ms is taken: a lane that has not
  -- claimed yet would only claim nothing (a transaction, a look for the next due time and a
  -- pass over the runs to close, each time a rate limit lets a few rows through)
  local drained = false
  local function lane()
    local ok, err = pcall(function()
      while not drained do
        local n, nd = deliver.pump(now_ms, max, ids_json)
        total = total + n
        next_due = nd   -- the lane that finishes last has looked last
        if n < max then drained = true end
        if stop and stop() then break end
      end
    end)
    if not ok and failure == nil then failure = err end
    live = live - 1
    if live == 0 then all_done:notify() end
  end
  for _ = 2, lanes do task.spawn(lane) end
  lane()
  if live > 0 then all_done:wait() end
  if failure ~= nil then error(failure, 0) end
  return total, next_due
end

return deliver
