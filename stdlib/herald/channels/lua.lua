-- A channel whose send function is Lua: profile.send(msg) returns true when delivered, or
-- nil, reason[, 'transient' | 'permanent'] (default transient). msg has key, address,
-- channel, endpoint, title, body, html, data, campaign_id, treatment_id. It runs in the
-- delivery task, so it may wait (herald.http.request, herald.sleep).
local util = require 'herald.channels.util'
local guard = require 'herald.core.guard'

local luachannel = {}
luachannel.__index = luachannel

-- A send function runs on the delivery task: one that never returned (a loop that does not
-- end) would hold the task, and with it the whole process, which would then not even stop on
-- SIGTERM. Each call may run profile.max_instructions Lua instructions (default 100 million)
-- and profile.max_seconds (default 300, counting the waits it makes, checked as it runs):
-- past either it fails with the reason, as a transient failure of the profile's (retried, and
-- counting towards the campaign's pause).
function luachannel.new(profile)
  local bounds = { name = 'profiles.' .. tostring(profile.name) .. '.send',
                   instructions = profile.max_instructions or 100000000,
                   ms = math.floor((profile.max_seconds or 300) * 1000) }
  return setmetatable({ profile = profile, bounds = bounds }, luachannel)
end

function luachannel:send(msgs)
  local out = {}
  for i, m in ipairs(msgs) do
    -- the endpoint as a table for the user's function (delivery carries it as a context)
    if rawget(m, 'endpoint') == nil and rawget(m, 'ctx') ~= nil then m.endpoint = m.ctx:table() end
    if m.gate and m.gate:closed() then
      -- messages go one after the other: those whose gate closed meanwhile (the campaign
      -- paused, the process stopping) are given back unsent, as the transport gives back requests
      out[i] = util.recalled { class = 'recalled', detail = 'not sent: given back before it started' }
    else
      local ok, res, reason, kind = guard.call(self.bounds, self.profile.send, m)
      if not ok then
        out[i] = { verdict = 'transient', reason = 'send failed: ' .. tostring(res), systemic = true, error = true }
      elseif res then
        out[i] = { verdict = 'delivered' }
      else
        out[i] = { verdict = kind == 'permanent' and 'permanent' or 'transient', reason = tostring(reason or 'refused') }
      end
    end
  end
  return out
end

return luachannel
