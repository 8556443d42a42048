-- The `herald` table scripts see. Submodules load on first use, so `herald -e` stays fast and
-- a script pays only for what it touches.
local core = require 'herald.core'
local task = require 'herald.core.task'
local clock = require 'herald.core.clock'

-- now_ms is the runtime's clock, the one the scheduler and the store read: milliseconds since
-- the epoch (what an event's Timestamp or a segment's now_ms means), the manual clock under
-- `herald run --clock-start`. monotonic_ms is the loop's clock, which herald.sleep's timers
-- follow: for measuring how long something took, as the wall clock may be stepped.
local herald = {
  version = core.version(),
  sleep = task.sleep,
  spawn = task.spawn,
  now_ms = clock.now,
  monotonic_ms = task.now,
}

-- name -> module that provides it
local submodules = {
  cli = 'herald.cli',
  pretty = 'herald.pretty',
  progress = 'herald.progress',
  segment = 'herald.segment',
  ab = 'herald.ab',
  analytics = 'herald.analytics',
  winner = 'herald.winner',
  tracking = 'herald.tracking',
  campaign = 'herald.campaign',
  template = 'herald.template',
  scheduler = 'herald.scheduler',
  http = 'herald.http',
  ratelimit = 'herald.ratelimit',
  sandbox = 'herald.sandbox',
  time = 'herald.time',
  endpoints = 'herald.endpoints',
  events = 'herald.events',
  db = 'herald.db',
  apps = 'herald.apps',
  json = 'herald.json',
  send = 'herald.send',
  providers = 'herald.providers',
}

function herald.register(name, module_name)
  submodules[name] = module_name
end

return setmetatable(herald, {
  __index = function(t, k)
    local name = submodules[k]
    if name == nil then return nil end
    local m = require(name)
    rawset(t, k, m)
    return m
  end,
})
