-- The scheduler loop of `herald run`: materialises due runs into the outbox, delivers due
-- outbox rows through the campaign's channel, and sleeps until the next due time. It runs as
-- a task; a stop request (SIGINT/SIGTERM) ends it after the batch in hand is written.
local core = require 'herald.core'
local task = require 'herald.core.task'
local clock = require 'herald.core.clock'
local outbox = require 'herald.core.outbox'
local json = require 'herald.core.json'
local filechannel = require 'herald.core.filechannel'
local campaign = require 'herald.campaign'
local template = require 'herald.template'

local scheduler = {}

local CLAIM_BATCH = 256
local POLL_MS = 1000

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

local function render(c, row, ep)
  local t = c.treatments[row.treatment + 1]
  local m = t.message
  local lines = {
    '--- message ' .. row.message_id,
    'campaign: ' .. c.name .. '  treatment: ' .. t.name,
    'to: ' .. row.address .. ' (' .. row.channel .. ')',
  }
  local subject, body, html, err
  if m.subject then
    subject, err = template.render(m.subject, ep)
    if not subject then return nil, err end
    lines[#lines + 1] = 'subject: ' .. subject
  end
  body, err = template.render(m.body, ep)
  if not body then return nil, err end
  lines[#lines + 1] = ''
  lines[#lines + 1] = body
  if m.html then
    html, err = template.render(m.html, ep, { escape = true })
    if not html then return nil, err end
    lines[#lines + 1] = ''
    lines[#lines + 1] = html
  end
  return table.concat(lines, '\n') .. '\n\n'
end

local function deliver(rows)
  local endpoints = require('herald').endpoints
  local reports = {}
  for i, row in ipairs(rows) do
    local c = campaign.defined[row.campaign_id]
    local ep = endpoints.get(row.endpoint_id)
    local report = { id = row.id, state = 'SENT' }
    if ep == nil then
      report.state, report.reason = 'FAILED', 'ENDPOINT_DELETED'
    else
      local text, err = render(c, row, ep)
      if text then
        local ok, werr = filechannel.write(c.deliver.path, text)
        if not ok then report.state, report.reason = 'FAILED', werr end
      else
        report.state, report.reason = 'FAILED', 'RENDER_FAILED: ' .. err
      end
    end
    reports[i] = report
  end
  outbox.report_batch(reports)
  return #rows
end

-- Runs until stopped, or (opts.until_idle) until nothing more is due. Returns counts.
function scheduler.run(opts)
  opts = opts or {}
  local log = opts.log or function() end
  local recovered = outbox.recover()
  if recovered > 0 then log(string.format('recovered %d in-doubt messages', recovered)) end

  local ids = {}
  for i, c in ipairs(campaign.order) do ids[i] = c.id end
  local ids_json = json.encode(ids)
  local done = {}
  local sent = 0

  while not core.stopping() do
    local now = clock.now()
    local next_start
    for _, c in ipairs(campaign.order) do
      if not done[c.id] then
        local at = c:scheduled_ms(c.version_ms)
        if at <= now then
          local run_id, created, n = materialize(c, at)
          if created then
            log(string.format('campaign %s v%d: run %d materialised for %d endpoints', c.name,
              c.version, run_id, n))
          end
          done[c.id] = true
        elseif next_start == nil or at < next_start then
          next_start = at
        end
      end
    end

    repeat
      local rows = outbox.claim(now, CLAIM_BATCH, ids_json)
      sent = sent + deliver(rows)
    until #rows < CLAIM_BATCH or core.stopping()
    outbox.complete_runs()

    local next_due = outbox.next_due(ids_json)
    local wake = next_start
    if next_due and (wake == nil or next_due < wake) then wake = next_due end
    if wake == nil and opts.until_idle then break end
    local wait = POLL_MS
    if wake then wait = math.max(0, math.min(POLL_MS, wake - clock.now())) end
    if clock.is_manual() then
      if wake == nil then break end
      clock.advance(math.max(wake - clock.now(), 0))
      wait = 0
    end
    task.sleep(wait)
  end
  return { sent = sent, stopped = core.stopping() }
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
