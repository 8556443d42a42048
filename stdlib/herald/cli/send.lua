-- `herald send`: direct messages through the providers file, with Pinpoint's per-address
-- results.
local json = require 'herald.json'

local M = {}

M.usage = [[
usage: herald send [options]

Sends one message now, through the providers file, and prints Pinpoint's MessageResponse
(or with --user, SendUsersMessageResponse: Result is user -> endpoint -> result) as JSON: a
DeliveryStatus per address, endpoint or user endpoint (SUCCESSFUL, THROTTLED,
TEMPORARY_FAILURE, PERMANENT_FAILURE, UNKNOWN_FAILURE, OPT_OUT, DUPLICATE). --user cannot be
combined with --to or --endpoint (two Pinpoint requests). The exit status is 0 when every
message was SUCCESSFUL, 1 otherwise.

An address on the application's opt-out list (an SMS STOP or an email complaint of an earlier
direct message to it, posted to `herald serve`'s status webhook) is OPT_OUT and not sent to,
whether named by --to or an endpoint's. See the list and lift an entry with
  herald -e "print(herald.json.encode(herald.send.optouts()))"
  herald -e "print(herald.send.lift_optout('SMS', '+15550101'))"

options:
  --providers FILE   the providers file (default: ./providers.lua)
  --to ADDRESS       an address (repeatable); needs --channel
  --channel TYPE     EMAIL, SMS, GCM, APNS, ... for --to addresses
  --endpoint ID      an endpoint of the store (repeatable)
  --user ID          every endpoint of a user (repeatable)
  --title TEXT       the subject or push title (a template)
  --body TEXT        the message body (a template)
  --html TEXT        the HTML body of an email (a template)
  --trace-id ID      makes message ids (the idempotency keys) repeatable
  --request FILE     a SendMessages request as JSON ({Addresses, Endpoints, Users,
                     MessageConfiguration, TraceId}); the options above add to it
]]

local function fail(fmt, ...)
  io.stderr:write('herald send: ' .. string.format(fmt, ...) .. '\n')
  return 2
end

function M.run(args)
  local o = { to = {}, endpoints = {}, users = {} }
  local i = 1
  local VALUE = { ['--providers'] = 'providers', ['--channel'] = 'channel', ['--title'] = 'title',
                  ['--body'] = 'body', ['--html'] = 'html', ['--trace-id'] = 'trace', ['--request'] = 'request' }
  local LIST = { ['--to'] = 'to', ['--endpoint'] = 'endpoints', ['--user'] = 'users' }
  while args[i] do
    local a = args[i]
    local v = args[i + 1]
    if VALUE[a] or LIST[a] then
      if v == nil then return fail('%s needs a value', a) end
      if VALUE[a] then o[VALUE[a]] = v else table.insert(o[LIST[a]], v) end
      i = i + 2
    else
      return fail('unknown argument %s (see herald help send)', a)
    end
  end
  local req = {}
  if o.request then
    local f, err = io.open(o.request, 'r')
    if not f then return fail('%s', err) end
    local ok, r = pcall(json.decode, f:read('a'))
    f:close()
    if not ok or type(r) ~= 'table' then return fail('%s: not a JSON object: %s', o.request, tostring(r)) end
    req = r
  end
  req.MessageConfiguration = req.MessageConfiguration or {}
  if o.body or o.title or o.html then
    local d = { Title = o.title, Body = o.body }
    req.MessageConfiguration.DefaultMessage = d
    req.MessageConfiguration.EmailMessage = { Title = o.title, Body = o.body, HtmlBody = o.html }
  end
  if next(req.MessageConfiguration) == nil then return fail('give --body (or --request with a MessageConfiguration)') end
  if #o.to > 0 then
    if not o.channel then return fail('--to needs --channel') end
    req.Addresses = req.Addresses or {}
    for _, a in ipairs(o.to) do req.Addresses[a] = { ChannelType = o.channel } end
  end
  for _, e in ipairs(o.endpoints) do
    req.Endpoints = req.Endpoints or {}
    req.Endpoints[e] = {}
  end
  for _, u in ipairs(o.users) do
    req.Users = req.Users or {}
    req.Users[u] = {}
  end
  if not (req.Addresses or req.Endpoints or req.Users) then return fail('give --to, --endpoint, --user or --request') end
  req.TraceId = o.trace or req.TraceId

  local pfile = o.providers
  if pfile == nil then
    local f = io.open('providers.lua', 'r')
    if f then
      f:close()
      pfile = 'providers.lua'
    end
  end
  if pfile then
    local ok, cfg = pcall(require('herald.providers').load, pfile)
    if not ok then return fail('%s', tostring(cfg)) end
    require('herald.deliver').configure(cfg)
  end
  local ok, res = require('herald.cli').run_task(function() return require('herald.send').send(req) end)
  if not ok then return fail('%s', tostring(res)) end
  res = res[1]
  print(json.encode(res, { sort = true }))
  local all = true
  local function check(t)
    for _, r in pairs(t) do if r.DeliveryStatus ~= 'SUCCESSFUL' then all = false end end
  end
  if req.Users ~= nil then
    for _, t in pairs(res.Result) do check(t) end
  else
    check(res.Result)
    check(res.EndpointResult)
  end
  return all and 0 or 1
end

return M
