-- `herald campaign pause|resume|delete|copy|status|activities NAME`: lifecycle over the store.
local campaign = require 'herald.campaign'
local json = require 'herald.core.json'

local M = {}

M.usage = [[
usage: herald campaign ACTION NAME [NEW_NAME]

actions:
  pause NAME       stop new runs and hold the run in progress (its rows are not claimed)
  resume NAME      continue a paused campaign exactly where it stopped
  delete NAME      no more runs; messages not yet sent are recorded CAMPAIGN_DELETED
  copy NAME NEW    store a copy of NAME's current definition as NEW (version 1, SCHEDULED)
  status NAME      state, version, definition and activities, as JSON
  activities NAME  Pinpoint ActivityResponse items per run and treatment, as JSON
]]

local ACTIONS = { pause = campaign.pause, resume = campaign.resume, delete = campaign.delete }

function M.run(args)
  local action, name = args[1], args[2]
  if action == nil or name == nil then
    io.stderr:write(M.usage)
    return 2
  end
  local ok, err
  if ACTIONS[action] then
    ok, err = ACTIONS[action](name)
    if ok then print(string.format('campaign %s: %s', name, action == 'delete' and 'deleted' or action .. 'd')) end
  elseif action == 'copy' then
    if args[3] == nil then
      io.stderr:write('herald campaign copy: needs NAME and NEW_NAME\n')
      return 2
    end
    ok, err = campaign.copy_stored(name, args[3])
    if ok then print(string.format('campaign %s copied to %s', name, args[3])) end
  elseif action == 'status' or action == 'activities' then
    local res
    if action == 'status' then res, err = campaign.status(name) else res = campaign.activities(name) end
    if res then
      ok = true
      print(json.encode(res, { sort = true, pretty = true }))
    end
  else
    io.stderr:write('herald campaign: unknown action ' .. action .. '\n' .. M.usage)
    return 2
  end
  if not ok then
    io.stderr:write('herald campaign: ' .. tostring(err) .. '\n')
    return 1
  end
  return 0
end

return M
