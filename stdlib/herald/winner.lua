-- herald.winner: the automatic A/B winner of a campaign run, on the host side of `herald run`.
--
-- A campaign with Herald.Winner (Lua form `winner = {...}`) sends each run's treatments to a
-- test share of its audience (the first TestPercent of every treatment's cohorts, so the split
-- is deterministic like the arms); the rest is materialised WAITING (reason AB_WAITING). The
-- run is decided:
--   * at its decide time (when the test share is due, plus DecideAfterSeconds): herald.ab.decide
--     with final = true,
--     so a significant leader wins and otherwise the policy applies (send_best: the leader,
--     send_default: treatment 0, stop: the rest is SKIPPED with reason AB_STOPPED);
--   * earlier, only when MinSample is set, every treatment has at least MinSample trials on
--     the metric (deliveries; sends for conversions) and the leader already wins
--     significantly. An early look that finds no significant winner waits for the decide time,
--     where the policy applies: the policy is never applied early.
-- The figures are analytics' (herald.analytics.report for the run): opens and clicks over
-- email deliveries (unique openers and clickers), conversions over sends. At decision time the rest
-- is still WAITING, so the figures are the test share's alone.
--
-- The decision (time, metric, per-arm x/n, rates with intervals, comparisons with p-values,
-- winner, policy, reason) is written to ab_decisions in the same transaction that releases
-- the rest to the winner's message (treatment = winner, due now), so a run is decided once and
-- a crash leaves either the rest waiting and no decision, or both done.
local store = require 'herald.core.store'
local core = require 'herald.core'
local json = require 'herald.core.json'
local outbox = require 'herald.core.outbox'
local ab = require 'herald.ab'
local analytics = require 'herald.analytics'
local time = require 'herald.time'

local M = {}

-- When a run's test share is due, by run id (false: the run has no test rows). A run is
-- written in one transaction and its test rows' first due times never change after (retries,
-- rate limits and claim-time quiet time move due_ms alone), so a run's is looked up once
-- rather than scanning its rows on every pass of the runner.
local test_due = {}

local RATE = { opens = 'open', clicks = 'click', conversions = 'conversion' }

-- An early look (MinSample, before the decide time) reads the run's figures from analytics,
-- which takes most of a second of CPU for a run of 200,000 endpoints, and the runner passes
-- every second (every 20 ms with event campaigns). So a run is looked at early at most once a
-- minute of the loop's clock, and no more often than every 100 times its last look's CPU
-- time: early looks keep to about 1% of the loop, whatever the run's size. The first look of
-- a process is not held back; the final one at the decide time never is.
local EARLY_LOOK_MS = 60 * 1000
local next_look = {}   -- run id -> the loop time of its next early look

local function q(sql, ...)
  local rows, err = store.query(sql, ...)
  if rows == nil then error('herald.winner: ' .. err, 0) end
  return rows
end

-- The instant a run's test share is due: the latest first due time of its rows not WAITING
-- for the decision (the holdout aside). That is its last zone's send in a local-time run,
-- which is written up to a day before it, and the end of quiet time for rows it holds; the
-- first due time, so that a retry or a rate limit does not put the decision off again and
-- again. nil when the run has no test rows.
local function test_due_ms(run)
  local due = test_due[run]
  if due == nil then
    due = q([[SELECT max(coalesce(first_due_ms, due_ms)) AS due FROM outbox
      WHERE run_id = ?1 AND state <> 'WAITING' AND treatment >= 0]], run)[1].due or false
    test_due[run] = due
  end
  return due or nil
end

-- A stored version never changes: its definition and Winner settings (false: none) by
-- app, campaign and version, decoded once rather than on every pass of the runner.
local versions = {}
local function version_winner(app, campaign, version)
  local key = app .. '\0' .. campaign .. '\0' .. version
  local v = versions[key]
  if v == nil then
    local text, err = outbox.campaign_definition(campaign, version, app)
    if text == nil then error('herald.winner: ' .. err, 0) end
    local def = json.decode(text)
    v = { def = def, winner = def.Herald and def.Herald.Winner or false }
    versions[key] = v
  end
  return v
end

-- Runs whose rows include none WAITING: a run's rows are written with it, in one
-- transaction, so one found without any never has some (it has no test, or was decided).
local none_waiting = {}
local function waiting(run)
  if none_waiting[run] then return false end
  if q("SELECT 1 AS y FROM outbox WHERE run_id = ?1 AND state = 'WAITING' LIMIT 1", run)[1] then return true end
  none_waiting[run] = true
  return false
end

-- Runs of the given campaigns (a list of ids; nil: all of the app) whose rest waits for a
-- decision, with their version's Winner settings and decide time: DecideAfterSeconds after
-- the test share is due (after the run's start when it has none). Only runs in progress of
-- versions with a winner are looked at (a run with WAITING rows is never COMPLETED). The
-- runner asks on every pass: a run without a winner costs a lookup in memory, not a read of
-- its rows.
function M.pending(ids)
  local app = core.app()
  local rows = q([[SELECT r.id, r.campaign_id, r.campaign_version, r.scheduled_ms, r.started_ms
    FROM campaign_runs r
    JOIN campaigns c ON c.app_id = r.app_id AND c.id = r.campaign_id
    WHERE r.app_id = ?1 AND r.state = 'EXECUTING' AND c.state NOT IN ('PAUSED', 'DELETED')
      AND (?2 IS NULL OR r.campaign_id IN (SELECT value FROM json_each(?2)))
      AND NOT EXISTS (SELECT 1 FROM ab_decisions d WHERE d.run_id = r.id)
    ORDER BY r.id]], app, ids and json.encode(json.array(ids)) or nil)
  local out = {}
  for _, r in ipairs(rows) do
    local v = version_winner(app, r.campaign_id, r.campaign_version)
    local w = v.winner
    if w and waiting(r.id) then
      local start = test_due_ms(r.id) or r.started_ms or r.scheduled_ms
      out[#out + 1] = {
        run = r.id, campaign = r.campaign_id, winner = w,
        treatments = #(v.def.AdditionalTreatments or {}) + 1,
        decide_ms = start + w.DecideAfterSeconds * 1000, definition = v.def,
      }
    end
  end
  return out
end

-- The arms {id = treatment, x, n} of a run on the metric, from analytics.
local function arms_of(p)
  local w = p.winner
  local report, err = analytics.report(p.campaign, { run = p.run, conversion = w.ConversionEvent,
    window_days = w.WindowDays })
  if report == nil then return nil, err end
  local by = {}
  for _, a in ipairs(report.arms) do by[a.treatment] = a end
  local arms = {}
  for t = 0, p.treatments - 1 do
    local r = by[t] and by[t].rates[RATE[w.Metric]]
    arms[#arms + 1] = { id = t, x = r and r.x or 0, n = r and r.n or 0 }
  end
  return arms
end

local function encode(result)
  local copy = {}
  for k, v in pairs(result) do copy[k] = v end
  copy.arms = json.array(result.arms)
  copy.comparisons = json.array(result.comparisons)
  return json.encode(copy, { sort = true })
end

-- The rest of a run is released at the decision, hours after the run's time: where that falls
-- in quiet time (in each zone of the run's audience), its rows are held to the end of it, or
-- skipped under the skip policy, as the run's first rows were. The quiet time is the winning
-- treatment's own schedule's, else the campaign's.
local function quiet_moves(p, winner, now_ms)
  local def = p.definition
  local sched = def.Schedule or {}
  local t = winner > 0 and def.AdditionalTreatments and def.AdditionalTreatments[winner]
  if t and t.Schedule then sched = { QuietTime = t.Schedule.QuietTime or sched.QuietTime,
                                     Timezone = t.Schedule.Timezone or sched.Timezone } end
  local qt = sched.QuietTime
  if qt == nil or qt.Start == nil or qt.End == nil then return nil end
  local skip = (def.Herald or {}).QuietTimePolicy == 'skip'
  local moves = {}
  local groups = q([[SELECT DISTINCT coalesce(zone, '') AS zone, max(due_ms, ?2) AS due FROM outbox
    WHERE run_id = ?1 AND state = 'WAITING']], p.run, now_ms)
  for _, g in ipairs(groups) do
    local quiet, ends = time.quiet(qt, g.due, g.zone ~= '' and g.zone or nil, sched.Timezone or 'UTC')
    if quiet then moves[#moves + 1] = { zone = g.zone, due_ms = g.due, new_due_ms = ends, skip = skip } end
  end
  return moves
end

-- Looks at one pending run at now_ms: decides and records when due. Returns the decision
-- table when one was recorded (with released = rows released), or nil and why not
-- ('wait' and the result of the look when it looked, or an error message).
function M.decide(p, now_ms)
  local w = p.winner
  local final = now_ms >= p.decide_ms
  if not final and (w.MinSample == nil or now_ms < (next_look[p.run] or now_ms)) then return nil, 'wait' end
  local cpu = os.clock()
  local arms, err = arms_of(p)
  if not final then
    next_look[p.run] = now_ms + math.max(EARLY_LOOK_MS, math.ceil((os.clock() - cpu) * 100 * 1000))
  end
  if arms == nil then return nil, err end
  local r = ab.decide { arms = arms, metric = w.Metric, policy = w.Policy, alpha = w.Alpha,
    min_sample = w.MinSample or 0, final = final, default = 0 }
  if not final and r.decision ~= 'winner' then return nil, 'wait', r end
  r.decided_ms = now_ms
  r.early = not final
  r.decide_ms = p.decide_ms
  local recorded, released = outbox.decide {
    campaign_id = p.campaign, run_id = p.run, decided_ms = now_ms, metric = w.Metric,
    decision = r.decision, winner = r.winner, policy = w.Policy, reason = r.reason,
    figures = encode(r), quiet = r.winner ~= nil and r.winner >= 0 and quiet_moves(p, r.winner, now_ms) or nil,
  }
  test_due[p.run] = nil
  if not recorded then return nil, 'decided already' end
  r.released = released
  return r
end

-- One pass for the runner: decides every due run of the campaigns ids. Returns the decisions
-- made ({campaign, run, result}) and the next instant a run falls due (nil when none waits).
-- A run with MinSample is looked at again until its decide time, at most once a minute.
function M.step(ids, now_ms)
  local made, next_ms = {}, nil
  for _, p in ipairs(M.pending(ids)) do
    local r, why = M.decide(p, now_ms)
    if r then
      made[#made + 1] = { campaign = p.campaign, run = p.run, result = r }
    else
      if why ~= 'wait' and why ~= 'decided already' then error(why, 0) end
      if next_ms == nil or p.decide_ms < next_ms then next_ms = p.decide_ms end
    end
  end
  return made, next_ms
end

-- The recorded decisions of a campaign (newest run first), figures decoded.
function M.decisions(campaign, opts)
  opts = opts or {}
  local rows = q([[SELECT run_id, decided_ms, metric, decision, winner, policy, released, reason,
      figures FROM ab_decisions WHERE app_id = ?1 AND campaign_id = ?2
      AND (?3 IS NULL OR run_id = ?3) ORDER BY run_id DESC]], opts.app or core.app(), campaign, opts.run)
  for _, r in ipairs(rows) do r.figures = json.decode(r.figures) end
  return rows
end

return M
