-- `herald campaign list|show|load|pause|resume|delete|copy|status|activities`: lifecycle over
-- the store.
local campaign = require 'herald.campaign'
local json = require 'herald.core.json'
local cli = require 'herald.cli'

local M = {}

M.usage = [[
usage: herald campaign ACTION [NAME [NEW_NAME] | FILE...]

actions:
  list             every stored campaign: state, version, definition file, error
  show NAME        one campaign: state, version, definition file, error, runs per treatment
  load FILE...     load definition files and store their campaigns' definitions without
                   running them (a running `herald run` takes the new versions for its next
                   runs); a file that fails makes the campaigns it defined INVALID
  pause NAME       stop new runs and hold the run in progress (its rows are not claimed);
                   not for a COMPLETED or DELETED campaign
  resume NAME      continue a paused campaign exactly where it stopped
  delete NAME      no more runs; messages not yet sent are recorded CAMPAIGN_DELETED
  copy NAME NEW    store a copy of NAME (definition and segment) as NEW (version 1, SCHEDULED);
                   it runs in any later `herald run` on its own. A campaign with Lua functions
                   (hook, event predicate, segment filter) is copied in its definition file
                   with herald.campaign.copy instead.
  status NAME      state, version, definition file, error, why delivery paused it (PauseReason),
                   definition and activities, as JSON
  activities NAME  Pinpoint ActivityResponse items per run and treatment, as JSON

A campaign is INVALID while its definition file fails to load (the error names the file and
line) or after its run failed to materialise; its pending messages are held, not sent, and go
out when it leaves INVALID (the file loads again), subject to MaximumDuration.
]]

local ACTIONS = { pause = campaign.pause, resume = campaign.resume, delete = campaign.delete }

local function list()
  local rows, err = campaign.list()
  if rows == nil then return nil, err end
  if #rows == 0 then print('no campaigns') end
  for _, r in ipairs(rows) do
    local from = r.source or (r.copy_of and ('stored copy of ' .. r.copy_of)) or '-'
    print(string.format('%-24s %-16s v%-4d %s', r.id, r.state, r.version, from))
    if r.error then print('  error: ' .. r.error) end
  end
  return true
end

local function show(name)
  local st, err = campaign.status(name)
  if st == nil then return nil, err end
  print(string.format('campaign %s: %s, version %d', st.Id, st.State, st.Version))
  local def = st.Definition
  if st.Source then print('defined in ' .. st.Source) end
  if def.Herald and def.Herald.CopyOf then print('copy of ' .. def.Herald.CopyOf) end
  if st.Error then print('error: ' .. st.Error) end
  if st.PauseReason then print('paused by delivery: ' .. st.PauseReason) end
  -- each run's treatments are named by the version it ran (a later one may rename them)
  local defs = campaign.versions(name)
  for _, a in ipairs(st.Activities) do
    local t = a.TreatmentId == 'holdout' and -1 or tonumber(a.TreatmentId)
    local version = a.CampaignVersion ~= st.Version and string.format(' (version %d)', a.CampaignVersion) or ''
    print(string.format('  %s %-9s %-12s %s: %d of %d sent%s', a.ScheduledStart, a.State,
      campaign.treatment_name(defs(a.CampaignVersion), t), a.Result or '', a.SuccessfulEndpointCount,
      a.TotalEndpointCount, version))
  end
  return true
end

-- Loads FILEs as `herald run` does (a campaign that loads leaves INVALID; a busy store is
-- waited for), without running or planning anything.
local function load(files)
  local runner = require('herald.runner').new {
    err = function(msg) io.stderr:write('herald campaign load: ' .. msg .. '\n') end,
  }
  local done, res = cli.run_task(function() return runner:load(files) end)
  runner:close()
  if not done then
    io.stderr:write('herald campaign load: ' .. tostring(res) .. '\n')
    return 1
  end
  local ok = res[1]
  if ok then print(string.format('loaded %d file%s', #files, #files == 1 and '' or 's')) end
  return ok and 0 or 1
end

-- The operands each action takes: how many (max nil: any number) and what an error calls
-- them. Anything else on the line is refused before the store is touched: a misspelt option
-- or a second name must not be taken for a plain delete of the first.
local OPERANDS = {
  list = { min = 0, max = 0 },
  load = { min = 1, needs = 'FILE...' },
  show = { min = 1, max = 1, needs = 'NAME' },
  pause = { min = 1, max = 1, needs = 'NAME' },
  resume = { min = 1, max = 1, needs = 'NAME' },
  delete = { min = 1, max = 1, needs = 'NAME' },
  status = { min = 1, max = 1, needs = 'NAME' },
  activities = { min = 1, max = 1, needs = 'NAME' },
  copy = { min = 2, max = 2, needs = 'NAME and NEW_NAME' },
}

local function usage_error(action, fmt, ...)
  io.stderr:write('herald campaign ' .. action .. ': ' .. string.format(fmt, ...) .. '\n' .. M.usage)
  return 2
end

function M.run(args)
  local action = args[1]
  if action == nil then
    io.stderr:write(M.usage)
    return 2
  end
  local operands = OPERANDS[action]
  if operands == nil then
    io.stderr:write('herald campaign: unknown action ' .. action .. '\n' .. M.usage)
    return 2
  end
  -- campaign names start with a letter or digit (and a file can be named ./-f), so a
  -- leading '-' is always an option
  for i = 2, #args do
    if args[i]:sub(1, 1) == '-' then return usage_error(action, 'unknown option %s', args[i]) end
  end
  local n = #args - 1
  if n < operands.min then return usage_error(action, 'needs %s', operands.needs) end
  if operands.max and n > operands.max then
    return usage_error(action, 'unexpected argument %s', args[operands.max + 2])
  end
  local name = args[2]
  -- a database that cannot be opened is said as such, in one line, before anything is read
  -- or a file loads and takes the blame
  local opened, oerr = cli.open_store()
  if not opened then
    io.stderr:write('herald campaign: ' .. oerr .. '\n')
    return 1
  end
  if action == 'load' then return load(cli.distinct_files(table.move(args, 2, #args, 1, {}))) end
  local ok, err
  if action == 'list' then
    ok, err = list()
  elseif action == 'show' then
    ok, err = show(name)
  elseif ACTIONS[action] then
    ok, err = ACTIONS[action](name)
    if ok then print(string.format('campaign %s: %s', name, action == 'delete' and 'deleted' or action .. 'd')) end
  elseif action == 'copy' then
    ok, err = campaign.copy_stored(name, args[3])
    if ok then print(string.format('campaign %s copied to %s', name, args[3])) end
  else -- status or activities
    local res
    if action == 'status' then res, err = campaign.status(name) else res, err = campaign.activities(name) end
    if res then
      ok = true
      print(json.encode(res, { sort = true, pretty = true }))
    end
  end
  if not ok then
    io.stderr:write('herald campaign: ' .. tostring(err) .. '\n')
    return 1
  end
  return 0
end

return M
