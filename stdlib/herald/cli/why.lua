-- `herald why CAMPAIGN ENDPOINT`: for each run, what happened to the endpoint and why.
local campaign = require 'herald.campaign'
local endpoints = require 'herald.endpoints'

local M = {}

M.usage = [[
usage: herald why CAMPAIGN ENDPOINT

For each run of CAMPAIGN: the endpoint's arm, state (SENT, PENDING, SKIPPED, ...), the reason
code when it was not sent (OPT_OUT, HOLDOUT, QUIET_TIME, DAILY_CAP, ...), its due time and the
zone it followed; or why the run did not reach it at all. In a run with an automatic A/B
winner, the rest of the audience is WAITING (AB_WAITING) until the run is decided, and the
run's recorded decision is shown.
]]

function M.run(args)
  if args[1] == nil or args[2] == nil then
    io.stderr:write(M.usage)
    return 2
  end
  local lines, err = campaign.why(args[1], args[2])
  if lines == nil then
    io.stderr:write('herald why: ' .. err .. '\n')
    return 1
  end
  -- An endpoint no run ever wrote a message for and that is not stored (a misspelt id) is an
  -- error, not "not in the segment" for every run. One deleted since its messages were written
  -- is still explained by them.
  local any_message = false
  for _, l in ipairs(lines) do any_message = any_message or l.state ~= nil end
  if not any_message and endpoints.get(args[2]) == nil then
    io.stderr:write(string.format("herald why: no endpoint '%s' in the application\n", args[2]))
    return 1
  end
  if #lines == 0 then print(string.format('campaign %s has no runs yet', args[1])) end
  for _, l in ipairs(lines) do
    local head = string.format('run %d (#%d, version %d, %s):', l.run, l.index, l.version, l.scheduled)
    if l.state == nil then
      print(head .. ' ' .. l.outcome .. ': ' .. l.why)
    else
      local arm = l.treatment < 0 and 'holdout' or string.format("treatment %d '%s'", l.treatment, l.treatment_name or '?')
      local extra = {}
      if l.due then extra[#extra + 1] = 'due ' .. l.due end
      if l.zone then extra[#extra + 1] = 'zone ' .. l.zone end
      if l.zone_note then extra[#extra + 1] = 'zone fell back: ' .. l.zone_note end
      print(string.format('%s %s, %s%s (%s) message %s', head, arm, l.state,
        l.reason and (': ' .. l.reason) or '', table.concat(extra, ', '), l.message_id))
      if l.state == 'WAITING' then print('  ' .. l.why) end
    end
    if l.ab_decision then print('  ' .. l.ab_decision) end
  end
  return 0
end

return M
