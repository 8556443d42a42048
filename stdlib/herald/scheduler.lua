-- The campaign side of `herald run`, loaded in the sandbox next to the definitions: plans due
-- runs and materialises them into the outbox. The loop that calls these steps, and delivery,
-- live in the host (herald.runner, herald.deliver).
local outbox = require 'herald.core.outbox'
local json = require 'herald.core.json'
local campaign = require 'herald.campaign'

local scheduler = {}

local function arm_name(c, treatment)
  if treatment < 0 then return 'holdout' end
  return c.treatments[treatment + 1].name
end

-- One outbox row per segment member: skipped ones carry Pinpoint's reason codes.
local function materialize(c, scheduled)
  local rows = {}
  c.segment:each(function(ep)
    local row = { endpoint_id = ep.Id, channel = ep.ChannelType, address = ep.Address,
                  due_ms = scheduled, treatment = c:arm(ep.CohortId), state = 'PENDING' }
    if ep.EndpointStatus == 'INACTIVE' then
      row.state, row.reason = 'SKIPPED', 'INACTIVE'
    elseif ep.OptOut == 'ALL' then
      row.state, row.reason = 'SKIPPED', 'OPT_OUT'
    elseif ep.Address == nil or ep.Address == '' then
      row.state, row.reason = 'SKIPPED', 'MISSING_ADDRESS'
    elseif row.treatment < 0 then
      row.state, row.reason = 'SKIPPED', 'HOLDOUT'
    end
    rows[#rows + 1] = row
  end)
  local run_id, created = outbox.materialize {
    campaign_id = c.id, version = c.version, scheduled_ms = scheduled, rows = rows,
  }
  return run_id, created, #rows
end

-- The steps below run inside the sandbox, each called by the host loop (herald.runner) as
-- its own sandboxed call: user code in one campaign (a filter that fails or runs away) fails
-- that step only, with its file and line, and the loop goes on.

-- What is due at now_ms: campaigns whose run should be materialised, the next start after
-- now, and the ids of every loaded campaign.
function scheduler.plan(now_ms)
  local due, ids, next_start = {}, {}, nil
  for i, c in ipairs(campaign.order) do
    ids[i] = c.id
    local at = c:scheduled_ms(c.version_ms)
    if at <= now_ms then
      due[#due + 1] = { id = c.id, at = at }
    elseif next_start == nil or at < next_start then
      next_start = at
    end
  end
  return { due = due, ids = ids, next_start = next_start }
end

-- Materialises campaign id's run at `at` (a no-op when it exists). Returns run id, created, n.
function scheduler.materialize(id, at)
  local c = campaign.defined[id]
  if c == nil then error('unknown campaign ' .. tostring(id)) end
  return materialize(c, at)
end

-- The ids of the loaded campaigns, as JSON, for the host's delivery to claim their rows.
function scheduler.campaign_ids()
  local ids = {}
  for i, c in ipairs(campaign.order) do ids[i] = c.id end
  return json.encode(json.array(ids))
end

function scheduler.describe(id)
  local c = campaign.defined[id]
  return c and { name = c.name, version = c.version } or nil
end

-- Per campaign: for each run, counts per arm of sent, failed, pending and skip reasons.
function scheduler.summary()
  local out = {}
  for _, c in ipairs(campaign.order) do
    local runs = {}
    for _, t in ipairs(outbox.tally(c.id)) do
      local run = runs[t.run_id]
      if run == nil then
        run = { run_id = t.run_id, state = t.run_state, arms = {}, order = {} }
        runs[t.run_id] = run
        runs[#runs + 1] = run
      end
      local name = arm_name(c, t.treatment)
      local arm = run.arms[name]
      if arm == nil then
        arm = { total = 0 }
        run.arms[name] = arm
        run.order[#run.order + 1] = name
      end
      arm.total = arm.total + t.count
      local key = t.state == 'SKIPPED' and t.reason or t.state
      arm[key] = (arm[key] or 0) + t.count
    end
    out[#out + 1] = { campaign = c.name, version = c.version, runs = runs }
  end
  return out
end

function scheduler.print_summary()
  for _, s in ipairs(scheduler.summary()) do
    print(string.format('campaign %s (version %d)', s.campaign, s.version))
    for _, run in ipairs(s.runs) do
      print(string.format('  run %d: %s', run.run_id, run.state))
      for _, name in ipairs(run.order) do
        local a = run.arms[name]
        local parts = {}
        for k, v in pairs(a) do
          if k ~= 'total' then parts[#parts + 1] = k .. ' ' .. v end
        end
        table.sort(parts)
        print(string.format('    %-12s %5d endpoints: %s', name, a.total, table.concat(parts, ', ')))
      end
    end
  end
end

return scheduler
