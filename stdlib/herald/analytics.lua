-- herald.analytics: campaign results per run (Pinpoint's campaign activity) and treatment, the
-- holdout included, from the outbox and the events store; A/B statistics through herald.ab;
-- KPIs in Pinpoint's KpiResult shape.
--
-- Definitions (reference/pinpoint.md §5.3; the counting is done by SQLite):
--   sends        outbox rows SENT
--   failed       outbox rows FAILED (refused for good, retries spent, could not be built)
--   attempted    sends + failed
--   hard bounces endpoints with an _email.hardbounce of the run (once per run and endpoint):
--                bounce notices of sent messages, and recipients refused at hand-over (SMTP
--                RCPT), whose messages are FAILED
--   deliveries   sends - hard bounces of sent messages; the delivery rate is deliveries /
--                attempted (Pinpoint's successful-delivery-rate), over every channel
--   per channel  sends, failed, attempted and deliveries are also kept for email (EMAIL) and
--                push (GCM, APNS*, ADM, BAIDU) alone: the email figures are over email
--                messages only, so a campaign's SMS do not dilute them. The hard bounce rate
--                is hard bounces / email attempted
--   unique deliveries  distinct endpoints with a delivered message (SENT, no hard bounce of
--                its run) in the group: a campaign's runs or a date count an endpoint once
--   opens        endpoints with an _email.open (unique opens); open rate = opens / email
--                deliveries; push opens (_campaign.opened_notification) over push deliveries
--   clicks       _email.click events where a recipient's clicks in the same clock hour (UTC)
--                count once, across links; clickers = endpoints that clicked, and the click
--                rate is clickers / email deliveries
--   unsubscribes endpoints with an _email.unsubscribe; rate over email deliveries
--   conversions  endpoints with an event of the conversion type (opts.conversion) attributed
--                to the campaign: each such event goes to the last message the endpoint got
--                from the campaign before it, if that message is less than the window old
--                (opts.window_days, default 7). A holdout endpoint's "message" is its own
--                row's due time (as a treatment's is its actual send: in a local-time run,
--                when the run reached the member's zone), so the holdout is watched over the
--                same window. The rate is
--                conversions / sends (holdout: / holdout members), so every arm counts the
--                endpoints it was meant to reach, whatever happened to the message.
-- Engagement events are tied to a run and treatment by their attributes campaign_id,
-- campaign_activity_id and treatment_id (what the engagement server writes).
local store = require 'herald.core.store'
local core = require 'herald.core'
local json = require 'herald.core.json'
local ab = require 'herald.ab'
local campaigns = require 'herald.campaign'

local M = {}

M.DEFAULT_WINDOW_DAYS = 7
local DAY_MS = 86400000

local ENGAGEMENT = {
  '_email.delivered', '_email.open', '_email.click', '_email.hardbounce', '_email.softbounce',
  '_email.complaint', '_email.unsubscribe', '_campaign.opened_notification',
  '_SMS.SUCCESS', '_SMS.FAILURE', '_SMS.OPTOUT',
}

local function q(sql, ...)
  local rows, err = store.query(sql, ...)
  if not rows then error('herald.analytics: ' .. err, 0) end
  return rows
end

local function in_list(list)
  local parts = {}
  for i, v in ipairs(list) do parts[i] = "'" .. v:gsub("'", "''") .. "'" end
  return table.concat(parts, ', ')
end

local SEND_TIME = "coalesce(o.updated_ms, o.due_ms)"

-- Pinpoint's push channel types (deliver.lua's PUSH); opened_notification is theirs alone.
local PUSH_CHANNELS = { GCM = true, APNS = true, APNS_SANDBOX = true, APNS_VOIP = true,
                        APNS_VOIP_SANDBOX = true, ADM = true, BAIDU = true }

local function arm_key(run, treatment) return run .. ':' .. treatment end

-- The raw counts of a campaign: per (run, treatment), and per (run, treatment, date).
local function collect(app, campaign, opts)
  local since = opts.start_time or '0000'
  local till = opts.end_time or '9999'
  local runs = q([[SELECT id, scheduled_ms, state, campaign_version FROM campaign_runs
    WHERE app_id = ?1 AND campaign_id = ?2 ORDER BY id]], app, campaign)
  local counts, daily = {}, {}
  local function cell(run, treatment, day)
    local t = counts
    local k = arm_key(run, treatment)
    if day then
      daily[day] = daily[day] or {}
      t = daily[day]
    end
    local c = t[k]
    if c == nil then
      c = { run = run, treatment = treatment, targeted = 0, sends = 0, failed = 0, skipped = 0,
            email_sends = 0, email_failed = 0, push_sends = 0, push_failed = 0,
            holdout = 0, pending = 0, events = {}, endpoints = {}, hours = {}, unsent_bounces = 0,
            conversions = 0, conversion_events = 0 }
      t[k] = c
    end
    return c
  end
  -- A row's day is its UTC day number (floored, for times before 1970 too), named once per group: a
  -- date text made for every row, three times with the bounds, took two thirds of a report's
  -- time (0.58 s of 0.84 s for a 200,000-endpoint run). The bounds compare texts, as the
  -- events' do, and only when they are given.
  local sent_at = "strftime('%Y-%m-%dT%H:%M:%fZ', " .. SEND_TIME .. " / 1000.0, 'unixepoch')"
  local bounds = ''
  if opts.start_time then bounds = bounds .. ' AND ' .. sent_at .. ' >= ?3' end
  if opts.end_time then bounds = bounds .. ' AND ' .. sent_at .. ' <= ?4' end
  local outbox_sql = string.format([[SELECT o.run_id AS run, o.treatment, o.state, o.reason,
      (%s - ((%s %% 86400000) + 86400000) %% 86400000) / 86400000 AS day, o.channel, count(*) AS n
    FROM outbox o JOIN campaign_runs r ON r.id = o.run_id
    WHERE r.app_id = ?1 AND r.campaign_id = ?2%s
    GROUP BY 1, 2, 3, 4, 5, 6]], SEND_TIME, SEND_TIME, bounds)
  local day_names = {}
  -- the statement takes as many parameters as its highest number
  local nparams = opts.end_time and 4 or opts.start_time and 3 or 2
  for _, row in ipairs(q(outbox_sql, table.unpack({ app, campaign, since, till }, 1, nparams))) do
    local name = day_names[row.day]
    if name == nil then
      name = os.date('!%Y-%m-%d', row.day * 86400)
      day_names[row.day] = name
    end
    row.day = name
    local kind = row.channel == 'EMAIL' and 'email_' or PUSH_CHANNELS[row.channel] and 'push_' or nil
    for _, c in ipairs({ cell(row.run, row.treatment), cell(row.run, row.treatment, row.day) }) do
      c.targeted = c.targeted + row.n
      if kind and (row.state == 'SENT' or row.state == 'FAILED') then
        local k = kind .. (row.state == 'SENT' and 'sends' or 'failed')
        c[k] = c[k] + row.n
      end
      if row.state == 'SENT' then c.sends = c.sends + row.n
      elseif row.state == 'FAILED' then c.failed = c.failed + row.n
      elseif row.reason == 'HOLDOUT' then c.holdout = c.holdout + row.n
      elseif row.state == 'SKIPPED' then c.skipped = c.skipped + row.n
      else c.pending = c.pending + row.n end
    end
  end

  -- The campaign's engagement events are read once (their attributes parsed once) and grouped
  -- twice, over the whole span and by day: two statements each reading and parsing them took
  -- 0.40 s for 78,000 events where this takes 0.28 s.
  local aggregates = [[count(*) AS events, count(DISTINCT ep) AS endpoints,
        count(DISTINCT ep || '|' || substr(ts, 1, 13)) AS hours,
        count(DISTINCT CASE WHEN type = '_email.hardbounce' AND EXISTS (SELECT 1 FROM outbox o
          WHERE o.run_id = ev.run AND o.endpoint_id = ev.ep AND o.state = 'FAILED') THEN ep END) AS unsent]]
  local events_sql = [[WITH ev AS MATERIALIZED (
        SELECT CAST(json_extract(attributes, '$.campaign_activity_id') AS INTEGER) AS run,
               CAST(json_extract(attributes, '$.treatment_id') AS INTEGER) AS treatment,
               event_type AS type, endpoint_id AS ep, timestamp AS ts
        FROM events
        WHERE app_id = ?1 AND event_type IN (]] .. in_list(ENGAGEMENT) .. [[)
          AND json_extract(attributes, '$.campaign_id') = ?2 AND timestamp >= ?3 AND timestamp <= ?4)
      SELECT 0 AS by_day, run, treatment, type, NULL AS day, ]] .. aggregates .. [[
      FROM ev GROUP BY run, treatment, type
      UNION ALL
      SELECT 1, run, treatment, type, substr(ts, 1, 10), ]] .. aggregates .. [[
      FROM ev GROUP BY run, treatment, type, substr(ts, 1, 10)]]
  for _, row in ipairs(q(events_sql, app, campaign, since, till)) do
    if row.run and row.treatment then
      local by_day = row.by_day == 1
      local c = cell(row.run, row.treatment, by_day and row.day or nil)
      c.events[row.type] = row.events
      c.endpoints[row.type] = row.endpoints
      c.hours[row.type] = row.hours
      -- a hard bounce at hand-over: its message is FAILED, not among the sends
      if row.type == '_email.hardbounce' then c.unsent_bounces = row.unsent end
    end
  end

  if opts.conversion then
    local window = math.floor((opts.window_days or M.DEFAULT_WINDOW_DAYS) * DAY_MS)
    for _, by_day in ipairs({ false, true }) do
      local sql = string.format([[WITH msgs AS (
          SELECT o.endpoint_id AS ep, o.run_id AS run, o.treatment AS t,
                 CASE WHEN o.treatment < 0 THEN coalesce(o.first_due_ms, o.due_ms) ELSE %s END AS at
          FROM outbox o JOIN campaign_runs r ON r.id = o.run_id
          WHERE r.app_id = ?1 AND r.campaign_id = ?2 AND (o.state = 'SENT' OR o.reason = 'HOLDOUT')),
        conv AS (
          SELECT e.endpoint_id AS ep, e.timestamp AS ts,
                 CAST(round((julianday(e.timestamp) - 2440587.5) * 86400000.0) AS INTEGER) AS ms
          FROM events e
          WHERE e.app_id = ?1 AND e.event_type = ?3 AND e.timestamp >= ?5 AND e.timestamp <= ?6
            AND e.endpoint_id IN (SELECT ep FROM msgs)),
        hit AS (
          SELECT c.ep, c.ts, m.run, m.t FROM conv c
          JOIN msgs m ON m.ep = c.ep AND m.at <= c.ms AND c.ms < m.at + ?4
          WHERE NOT EXISTS (SELECT 1 FROM msgs m2 WHERE m2.ep = c.ep AND m2.at <= c.ms
                            AND (m2.at > m.at OR (m2.at = m.at AND m2.run > m.run))))
        SELECT run, t AS treatment, %s AS day, count(*) AS events, count(DISTINCT ep) AS endpoints
        FROM hit GROUP BY run, t%s]], SEND_TIME, by_day and 'substr(ts, 1, 10)' or 'NULL',
        by_day and ', substr(ts, 1, 10)' or '')
      for _, row in ipairs(q(sql, app, campaign, opts.conversion, window, since, till)) do
        local c = cell(row.run, row.treatment, by_day and row.day or nil)
        c.conversions = row.endpoints
        c.conversion_events = row.events
      end
    end
  end
  return runs, counts, daily
end

-- Sends less the hard bounces of sent messages (a bounce at hand-over failed its message,
-- which was never among the sends).
local function deliveries(sends, hard_bounces, unsent_bounces)
  return math.max(sends - math.max(hard_bounces - unsent_bounces, 0), 0)
end

-- Figures of one arm from the cells that make it up (one per run).
local function figures(cells, is_holdout)
  local f = { targeted = 0, sends = 0, failed = 0, skipped = 0, holdout = 0, pending = 0,
              email_sends = 0, email_failed = 0, push_sends = 0, push_failed = 0,
              hard_bounces = 0, unsent_bounces = 0, soft_bounces = 0, complaints = 0, opens = 0, open_events = 0,
              clicks = 0, clickers = 0, click_events = 0, unsubscribes = 0, push_opens = 0,
              conversions = 0, conversion_events = 0 }
  for _, c in ipairs(cells) do
    for _, k in ipairs({ 'targeted', 'sends', 'failed', 'skipped', 'holdout', 'pending',
                         'email_sends', 'email_failed', 'push_sends', 'push_failed', 'unsent_bounces', 'conversions', 'conversion_events' }) do
      f[k] = f[k] + c[k]
    end
    f.hard_bounces = f.hard_bounces + (c.endpoints['_email.hardbounce'] or 0)
    f.soft_bounces = f.soft_bounces + (c.endpoints['_email.softbounce'] or 0)
    f.complaints = f.complaints + (c.endpoints['_email.complaint'] or 0)
    f.opens = f.opens + (c.endpoints['_email.open'] or 0)
    f.open_events = f.open_events + (c.events['_email.open'] or 0)
    f.clicks = f.clicks + (c.hours['_email.click'] or 0)
    f.clickers = f.clickers + (c.endpoints['_email.click'] or 0)
    f.click_events = f.click_events + (c.events['_email.click'] or 0)
    f.unsubscribes = f.unsubscribes + (c.endpoints['_email.unsubscribe'] or 0)
    f.push_opens = f.push_opens + (c.endpoints['_campaign.opened_notification'] or 0)
  end
  f.attempted = f.sends + f.failed
  f.deliveries = deliveries(f.sends, f.hard_bounces, f.unsent_bounces)
  -- hard bounces are email's (_email.hardbounce), so they come off the email sends alone
  f.email_attempted = f.email_sends + f.email_failed
  f.email_deliveries = deliveries(f.email_sends, f.hard_bounces, f.unsent_bounces)
  f.push_attempted = f.push_sends + f.push_failed
  f.push_deliveries = f.push_sends
  -- An endpoint can open a message and later hard-bounce (a provider's late notice), so unique
  -- openers may exceed deliveries; a rate over deliveries is capped at 1. Email engagement is
  -- over email messages only: a campaign's SMS are never opened nor clicked through email.
  local base = is_holdout and f.holdout or f.sends
  local email = f.email_deliveries
  f.rates = {
    delivery = ab.proportion(math.min(f.deliveries, f.attempted), f.attempted),
    hard_bounce = ab.proportion(math.min(f.hard_bounces, f.email_attempted), f.email_attempted),
    open = ab.proportion(math.min(f.opens, email), email),
    click = ab.proportion(math.min(f.clickers, email), email),
    unsubscribe = ab.proportion(math.min(f.unsubscribes, email), email),
    push_open = ab.proportion(math.min(f.push_opens, f.push_deliveries), f.push_deliveries),
    conversion = ab.proportion(math.min(f.conversions, base), base),
  }
  return f
end

local function campaign_info(app, campaign)
  local rows = q('SELECT name, version, definition FROM campaigns WHERE app_id = ?1 AND id = ?2',
    app, campaign)
  if #rows == 0 then return nil end
  local ok, def = pcall(json.decode, rows[1].definition)
  if not ok or type(def) ~= 'table' then
    return nil, string.format("campaign '%s': its stored definition is not valid JSON: %s", campaign,
      tostring(def))
  end
  return { name = rows[1].name, version = rows[1].version, definition = def }
end

local function check_opts(opts)
  if opts == nil then return {} end
  if type(opts) ~= 'table' then error('herald.analytics: options must be a table', 3) end
  local known = { app = true, run = true, conversion = true, window_days = true, start_time = true,
                  end_time = true }
  for k in pairs(opts) do
    if not known[k] then
      error('herald.analytics: unknown option ' .. tostring(k) .. ' (app, run, conversion, '
        .. 'window_days, start_time, end_time)', 3)
    end
  end
  if opts.run ~= nil and math.type(opts.run) ~= 'integer' then
    error('herald.analytics: run must be an integer run id', 3)
  end
  if opts.window_days ~= nil and (type(opts.window_days) ~= 'number' or opts.window_days <= 0) then
    error('herald.analytics: window_days must be a positive number', 3)
  end
  if opts.conversion ~= nil and (type(opts.conversion) ~= 'string' or opts.conversion == '') then
    error('herald.analytics: conversion must be an event type', 3)
  end
  return opts
end

local METRICS = { 'open', 'click', 'conversion' }

-- An arm of a report across runs is a treatment number with a name: a treatment keeps adding
-- up across versions while both stay, and a version that renames or renumbers its treatments
-- (v2's single 'default' where v1 had 'A') starts arms of its own rather than merging figures
-- of different messages. The holdout is one arm whatever the version.
local function arm_id(t, name)
  return t < 0 and 'holdout' or (t .. ':' .. name)
end

local function sorted_keys(set)
  local list = {}
  for k in pairs(set) do list[#list + 1] = k end
  table.sort(list)
  return list
end

-- Orders arms (treatments by their first version, then number; the holdout last) and
-- labels them: by name, or where two share a name (a treatment moved to another number) with
-- the versions they ran in, 'A (v1)', and if need be their number. Returns arm key -> label.
local function label_arms(arms)
  for _, a in ipairs(arms) do a.version_list = sorted_keys(a.versions) end
  table.sort(arms, function(a, b)
    if (a.treatment < 0) ~= (b.treatment < 0) then return b.treatment < 0 end
    if a.version_list[1] ~= b.version_list[1] then return a.version_list[1] < b.version_list[1] end
    if a.treatment ~= b.treatment then return a.treatment < b.treatment end
    return a.name < b.name
  end)
  local labels = {}
  local function clashes(label_of)
    local seen = {}
    for _, a in ipairs(arms) do
      local l = label_of(a)
      seen[l] = (seen[l] or 0) + 1
    end
    return seen
  end
  local n = clashes(function(a) return a.name end)
  for _, a in ipairs(arms) do
    labels[a.key] = n[a.name] > 1 and string.format('%s (v%s)', a.name, table.concat(a.version_list, ', v')) or a.name
  end
  n = clashes(function(a) return labels[a.key] end)
  for _, a in ipairs(arms) do
    if n[labels[a.key]] > 1 then labels[a.key] = labels[a.key] .. ' #' .. a.treatment end
  end
  return labels
end

-- The automatic A/B winner's recorded decisions (herald.winner), one per run, with the
-- figures they were taken on and treatment names.
local function decisions(name_of, app, campaign, run)
  local out = {}
  local rows = q([[SELECT run_id, decided_ms, metric, decision, winner, policy, released, reason,
      figures FROM ab_decisions WHERE app_id = ?1 AND campaign_id = ?2 AND (?3 IS NULL OR run_id = ?3)
    ORDER BY run_id]], app, campaign, run)
  for _, r in ipairs(rows) do
    local f = json.decode(r.figures) or {}
    local d = { run = r.run_id, decided = os.date('!%Y-%m-%dT%H:%M:%SZ', r.decided_ms // 1000),
      metric = r.metric, decision = r.decision, policy = r.policy, released = r.released,
      reason = r.reason, early = f.early, winner = r.winner and name_of(r.run_id, r.winner) or nil,
      arms = {}, comparisons = {} }
    for i, a in ipairs(f.arms or {}) do
      d.arms[i] = { name = name_of(r.run_id, a.id), x = a.x, n = a.n, rate = a.rate, lo = a.lo, hi = a.hi }
    end
    for i, c in ipairs(f.comparisons or {}) do
      d.comparisons[i] = { name = name_of(r.run_id, c.id), against = name_of(r.run_id, c.against),
        z = c.z, p_value = c.p_value, significant = c.significant }
    end
    out[#out + 1] = d
  end
  return out
end

-- report(campaign_id, {app =, run =, conversion =, window_days =}) -> report table, or nil, err.
-- {campaign, name, version, app, runs = {{id, scheduled, state}}, conversion, window_days,
--  arms = {{treatment, name (label), versions, <counts>, rates = {delivery, open, click, unsubscribe,
--  hard_bounce, conversion = {x, n, rate, lo, hi}}, lift = {lift, lo, hi} (treatments, when
--  there is a holdout with conversions)}}, tests = {{metric, a, b, z, p_value}},
--  p_best = {metric = {name = probability}}, daily = {{date, arms = {name = {deliveries,
--  conversions}}}}, decisions = {{run, decided, metric, decision, winner (name or nil),
--  policy, released, reason, early, arms = {{name, x, n, rate, lo, hi}}, comparisons = {{name,
--  against, z, p_value, significant}}}} (automatic A/B winner, herald.winner)}
-- With an automatic winner, the rest of a run's audience is released to the winning treatment
-- after the decision, so that treatment's figures then include it; the decision keeps the
-- test share's figures it was taken on.
function M.report(campaign, opts)
  if type(campaign) ~= 'string' then error('herald.analytics.report: expects a campaign id', 2) end
  opts = check_opts(opts)
  local app = opts.app or core.app()
  local info, ierr = campaign_info(app, campaign)
  if ierr then return nil, ierr end
  if info == nil then return nil, string.format("no campaign '%s' in application '%s'", campaign, app) end
  local runs, counts, daily = collect(app, campaign, opts)
  -- each run's treatments are named by the version it ran
  local defs, version_of = campaigns.versions(campaign, app), {}
  for _, r in ipairs(runs) do version_of[r.id] = r.campaign_version end
  local function name_of(run, t) return campaigns.treatment_name(defs(version_of[run]), t) end
  if opts.run then
    local found
    for _, r in ipairs(runs) do if r.id == opts.run then found = r end end
    if not found then return nil, string.format("campaign '%s' has no run %d", campaign, opts.run) end
    runs = { found }
  end
  local wanted = {}
  for _, r in ipairs(runs) do wanted[r.id] = true end

  local by_arm, order = {}, {}
  for _, c in pairs(counts) do
    if wanted[c.run] then
      local name = name_of(c.run, c.treatment)
      local key = arm_id(c.treatment, name)
      local arm = by_arm[key]
      if arm == nil then
        arm = { key = key, treatment = c.treatment, name = name, cells = {}, versions = {} }
        by_arm[key] = arm
        order[#order + 1] = arm
      end
      arm.cells[#arm.cells + 1] = c
      arm.versions[version_of[c.run]] = true
    end
  end
  local labels = label_arms(order)

  local report = {
    campaign = campaign, name = info.name, version = info.version, app = app,
    conversion = opts.conversion, window_days = opts.window_days or M.DEFAULT_WINDOW_DAYS,
    runs = {}, arms = {}, tests = {}, p_best = {}, daily = {},
  }
  for i, r in ipairs(runs) do
    local at = os.date('!%Y-%m-%dT%H:%M:%SZ', r.scheduled_ms // 1000)
    report.runs[i] = { id = r.id, scheduled = at, state = r.state, version = r.campaign_version }
  end
  local holdout
  for _, arm in ipairs(order) do
    local f = figures(arm.cells, arm.treatment < 0)
    f.treatment = arm.treatment
    f.name = labels[arm.key]
    f.versions = arm.version_list
    report.arms[#report.arms + 1] = f
    if arm.treatment < 0 then holdout = f end
  end
  local treatments = {}
  for _, a in ipairs(report.arms) do
    if a.treatment >= 0 then treatments[#treatments + 1] = a end
  end
  if holdout and opts.conversion then
    for _, a in ipairs(treatments) do
      a.lift = ab.lift(a.conversions, a.sends, holdout.conversions, holdout.holdout)
    end
  end
  for _, m in ipairs(METRICS) do
    if m ~= 'conversion' or opts.conversion then
      for i = 1, #treatments do
        for j = i + 1, #treatments do
          local a, b = treatments[i].rates[m], treatments[j].rates[m]
          local z = ab.z_test(a.x, a.n, b.x, b.n)
          if z then
            report.tests[#report.tests + 1] = { metric = m, a = treatments[i].name,
              b = treatments[j].name, z = z.z, p_value = z.p_value }
          end
        end
      end
      if #treatments >= 2 then
        local arms = {}
        for i, a in ipairs(treatments) do arms[i] = { x = a.rates[m].x, n = a.rates[m].n } end
        local pb = ab.p_best(arms)
        report.p_best[m] = {}
        for i, a in ipairs(treatments) do report.p_best[m][a.name] = pb.p_best[i] end
      end
    end
  end

  report.decisions = decisions(name_of, app, campaign, opts.run)

  local days = {}
  for day in pairs(daily) do days[#days + 1] = day end
  table.sort(days)
  for _, day in ipairs(days) do
    local entry = { date = day, arms = {} }
    for _, c in pairs(daily[day]) do
      if wanted[c.run] then
        local name = name_of(c.run, c.treatment)
        name = labels[arm_id(c.treatment, name)] or name
        local e = entry.arms[name] or { deliveries = 0, conversions = 0 }
        local hard = c.endpoints['_email.hardbounce'] or 0
        e.deliveries = e.deliveries + deliveries(c.sends, hard, c.unsent_bounces)
        e.conversions = e.conversions + c.conversions
        entry.arms[name] = e
      end
    end
    report.daily[#report.daily + 1] = entry
  end
  return report
end

-- KPIs ---------------------------------------------------------------------------------------

local function ratio(x, n) return n > 0 and x / n or 0 end

-- name -> {value key, type, function(figures) -> value}
local KPI_VALUES = {
  ['successful-delivery-rate'] = { 'SuccessfulDeliveryRate', 'Double',
    function(f) return ratio(f.deliveries, f.attempted) end },
  ['hard-bounce-rate'] = { 'HardBounceRate', 'Double', function(f) return f.rates.hard_bounce.rate or 0 end },
  ['email-open-rate'] = { 'EmailOpenRate', 'Double', function(f) return f.rates.open.rate or 0 end },
  ['direct-email-opens'] = { 'DirectEmailOpens', 'Long', function(f) return f.open_events end },
  -- distinct endpoints: counted by unique_deliveries, not from the per-run figures
  ['unique-deliveries'] = { 'UniqueDeliveries', 'Long', function(_, unique) return unique end },
  ['clicks'] = { 'Clicks', 'Long', function(f) return f.clicks end },
  ['successful-deliveries'] = { 'SuccessfulDeliveries', 'Long', function(f) return f.deliveries end },
  ['attempted-deliveries'] = { 'AttemptedDeliveries', 'Long', function(f) return f.attempted end },
  ['push-open-rate'] = { 'PushOpenRate', 'Double', function(f) return f.rates.push_open.rate or 0 end },
  ['direct-push-opens'] = { 'DirectPushOpens', 'Long', function(f) return f.push_opens end },
}

M.KPIS = {}
for base in pairs(KPI_VALUES) do
  M.KPIS[#M.KPIS + 1] = base
  M.KPIS[#M.KPIS + 1] = base .. '-grouped-by-campaign-activity'
  M.KPIS[#M.KPIS + 1] = base .. '-grouped-by-date'
end
table.sort(M.KPIS)

-- Pinpoint's unique-deliveries: "the number of unique endpoints that messages were delivered
-- to", so an endpoint reached by several runs counts once for the campaign (once a date in
-- -grouped-by-date, once a run in -grouped-by-campaign-activity). Delivered is SENT with no
-- hard bounce of its run in the period, as deliveries are counted. Returns group key -> count.
local function unique_deliveries(app, campaign, opts, group)
  local sent_at = "strftime('%Y-%m-%dT%H:%M:%fZ', " .. SEND_TIME .. " / 1000.0, 'unixepoch')"
  local key = group == 'date' and ('substr(' .. sent_at .. ', 1, 10)')
    or group == 'campaign-activity' and 'CAST(o.run_id AS TEXT)' or "''"
  local sql = string.format([[WITH bounced AS (
      SELECT DISTINCT CAST(json_extract(attributes, '$.campaign_activity_id') AS INTEGER) AS run,
             endpoint_id AS ep
      FROM events WHERE app_id = ?1 AND event_type = '_email.hardbounce'
        AND json_extract(attributes, '$.campaign_id') = ?2 AND timestamp >= ?3 AND timestamp <= ?4)
    SELECT %s AS k, count(DISTINCT o.endpoint_id) AS n
    FROM outbox o JOIN campaign_runs r ON r.id = o.run_id
    WHERE r.app_id = ?1 AND r.campaign_id = ?2 AND o.state = 'SENT' AND o.treatment >= 0
      AND (?5 IS NULL OR o.run_id = ?5) AND %s >= ?3 AND %s <= ?4
      AND NOT EXISTS (SELECT 1 FROM bounced b WHERE b.run = o.run_id AND b.ep = o.endpoint_id)
    GROUP BY 1]], key, sent_at, sent_at)
  local out = {}
  for _, row in ipairs(q(sql, app, campaign, opts.start_time or '0000', opts.end_time or '9999', opts.run)) do
    out[row.k] = row.n
  end
  return out
end

local function value_text(v, typ)
  if typ == 'Long' then return tostring(math.tointeger(v) or math.floor(v)) end
  return string.format('%.17g', v)
end

-- kpi(campaign_id, name, {app =, run =, start_time =, end_time =}) -> GetCampaignDateRangeKpi's
-- answer {KpiName, KpiResult = {Rows = {{GroupedBys = {{Key, Type, Value}}, Values = {{Key,
-- Type, Value}}}}}, StartTime, EndTime}, or nil, err. Values are strings, as in Pinpoint.
-- name is one of M.KPIS: a base name alone (one row for the campaign), or with
-- -grouped-by-campaign-activity (a row per run, GroupedBys CampaignActivity) or
-- -grouped-by-date (a row per UTC date, GroupedBys Date; deliveries on the date they were
-- sent, opens and clicks on the date they happened). start_time and end_time (instants in the
-- stored form, YYYY-MM-DDTHH:MM:SS.sssZ) bound the period with both ends included, as
-- Pinpoint's inclusive date range.
function M.kpi(campaign, name, opts)
  if type(campaign) ~= 'string' or type(name) ~= 'string' then
    error('herald.analytics.kpi: expects a campaign id and a KPI name', 2)
  end
  opts = check_opts(opts)
  local base, group = name:match('^(.-)%-grouped%-by%-(.+)$')
  base = base or name
  local spec = KPI_VALUES[base]
  if spec == nil or (group and group ~= 'campaign-activity' and group ~= 'date') then
    return nil, string.format("unknown KPI '%s' (one of: %s)", name, table.concat(M.KPIS, ', '))
  end
  local app = opts.app or core.app()
  local info, ierr = campaign_info(app, campaign)
  if ierr then return nil, ierr end
  if info == nil then return nil, string.format("no campaign '%s' in application '%s'", campaign, app) end
  local runs, counts, daily = collect(app, campaign, opts)
  local groups, keys = {}, {}
  local function add(key, c)
    if opts.run and c.run ~= opts.run then return end
    if not groups[key] then
      groups[key] = {}
      keys[#keys + 1] = key
    end
    table.insert(groups[key], c)
  end
  if group == 'date' then
    for day, cells in pairs(daily) do
      for _, c in pairs(cells) do if c.treatment >= 0 then add(day, c) end end
    end
  else
    for _, c in pairs(counts) do
      if c.treatment >= 0 then add(group and tostring(c.run) or '', c) end
    end
  end
  table.sort(keys, function(a, b)
    if group == 'campaign-activity' then return tonumber(a) < tonumber(b) end
    return a < b
  end)
  local unique = base == 'unique-deliveries' and unique_deliveries(app, campaign, opts, group) or {}
  local rows = {}
  for _, key in ipairs(keys) do
    local f = figures(groups[key], false)
    local row = { GroupedBys = {}, Values = { { Key = spec[1], Type = spec[2],
      Value = value_text(spec[3](f, unique[key] or 0), spec[2]) } } }
    if group then
      row.GroupedBys[1] = { Key = group == 'date' and 'Date' or 'CampaignActivity', Type = 'String', Value = key }
    end
    rows[#rows + 1] = row
  end
  if #rows == 0 and not group then
    rows[1] = { GroupedBys = {}, Values = { { Key = spec[1], Type = spec[2], Value = value_text(0, spec[2]) } } }
  end
  local first = runs[1] and os.date('!%Y-%m-%dT%H:%M:%SZ', runs[1].scheduled_ms // 1000)
  return {
    KpiName = name,
    KpiResult = { Rows = rows },
    StartTime = opts.start_time or first,
    EndTime = opts.end_time or os.date('!%Y-%m-%dT%H:%M:%SZ'),
  }
end

return M
