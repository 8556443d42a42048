-- The campaign side of `herald run`, loaded in the sandbox next to the definitions: plans due
-- runs and materialises them into the outbox. The loop that calls these steps, and delivery,
-- live in the host (herald.runner, herald.deliver).
--
-- Planning is driven by what is stored, so a restart continues exactly: a campaign's runs are
-- written in the order their earliest zone receives them, and its next run is the first of
-- its streams' runs not recorded in campaign_runs from the last one's earliest instant on. A
-- run whose latest due time, after any quiet-time deferral, is more than the campaign's stale
-- bound (default one hour) in the past when it is planned (herald was down, or the campaign
-- paused) is recorded SKIPPED with reason STALE and the plan moves on; a later one is sent late.
local outbox = require 'herald.core.outbox'
local core = require 'herald.core'
local json = require 'herald.core.json'
local store = require 'herald.core.store'
local campaign = require 'herald.campaign'
local time = require 'herald.time'
local clock = require 'herald.core.clock'
local endpoints = require 'herald.endpoints'

local scheduler = {}

local function query(sql, ...)
  local rows, err = store.query(sql, ...)
  if rows == nil then error(err, 0) end
  return rows
end

-- Versions stored while this process runs (`herald campaign load` of an edited file): each
-- pass takes the newest stored version of every loaded campaign, so new runs, scheduled or
-- triggered, use it; runs already materialised keep their own. A version this process cannot
-- take (it needs a Lua function the files it loaded do not give) makes the campaign INVALID,
-- and it plans nothing more until restarted: `blocked` holds, per campaign, that version, the
-- origin it was stored with and the error. `notices` collects what happened for plan to report.
local blocked, notices = {}, {}

local function newer(c, r)
  local o = c.origin
  return r.version ~= c.version or (o ~= nil and (r.audience ~= o.audience or r.lua ~= o.lua))
end

local function same_origin(b, r)
  return b.version == r.version and b.audience == r.audience and b.lua == r.lua
end

-- The stored state of each campaign, after taking the versions stored since the last pass.
local function states()
  local out = {}
  for _, r in ipairs(query('SELECT id, state, version, audience, lua, error FROM campaigns WHERE app_id = ?', core.app())) do
    out[r.id] = r.state
    local c = campaign.defined[r.id]
    if c and r.state ~= 'DELETED' and newer(c, r) then
      local b = blocked[r.id]
      if b == nil or not same_origin(b, r) then
        local row = query('SELECT version, last_modified_ms AS version_ms, definition, audience, lua FROM campaigns'
          .. ' WHERE app_id = ? AND id = ?', core.app(), r.id)[1]
        local nc, err = campaign.adopt(c, row)
        if nc then
          blocked[r.id] = nil
          notices[#notices + 1] = { id = r.id, version = row.version }
        else
          b = { version = r.version, audience = r.audience, lua = r.lua, error = string.format(
            'version %d, stored after this process loaded the campaign, cannot be run here: %s;'
            .. ' restart herald run to run it', row.version, err) }
          blocked[r.id] = b
          notices[#notices + 1] = { id = r.id, version = row.version, error = b.error }
        end
      end
      -- the error stands until restart, even when a later load clears it
      if b and r.error ~= b.error then
        campaign.invalidate(r.id, b.error)
        if r.state ~= 'PAUSED' then out[r.id] = 'INVALID' end
      end
    end
  end
  return out
end

-- When the earliest zone receives run r of stream s (its instant unless local time shifts it).
local function earliest_of(r) return r.earliest_ms or r.ms end

-- Where planning stands, from what is stored: runs are written in order of the instant their
-- earliest zone receives them (a local-time run reaches UTC+14 up to a day before its nominal
-- time, so it may be written before another stream's run at an earlier instant). `frontier`
-- is the largest such instant among the stored runs (nil: none yet), `last` the latest stored
-- run instant, `stored` the set of stored run instants from the frontier on, `any` whether a
-- run is stored at all. A stored run's earliest instant is that of the streams that fire at
-- it (its own instant when none do, as after a new version moved a schedule).
local function progress(c)
  local app = core.app()
  local top = query('SELECT max(scheduled_ms) AS ms FROM campaign_runs WHERE app_id = ? AND campaign_id = ?'
    .. ' AND trigger_seq = 0', app, c.id)[1]
  if top == nil or top.ms == nil then return { stored = {}, any = false } end
  local function earliest_at(ms)
    local e = ms
    for _, s in ipairs(c:streams()) do
      local r = s.schedule:next_run(ms - 1)
      if r and r.ms == ms then e = math.min(e, earliest_of(r)) end
    end
    return e
  end
  -- a run before the last one's earliest instant cannot have a later earliest instant
  local frontier, stored = nil, {}
  for _, r in ipairs(query('SELECT scheduled_ms FROM campaign_runs WHERE app_id = ? AND campaign_id = ?'
      .. ' AND trigger_seq = 0 AND scheduled_ms >= ?', app, c.id, earliest_at(top.ms))) do
    stored[r.scheduled_ms] = true
    local e = earliest_at(r.scheduled_ms)
    if frontier == nil or e > frontier then frontier = e end
  end
  return { frontier = frontier, last = top.ms, stored = stored, any = true }
end

-- The next run of stream s still to write: the first not stored whose earliest instant is not
-- before the frontier, or that falls after the last stored run (a stream a new version added
-- or moved: written in order, its earlier runs would already be stored). A one-off schedule
-- runs once: a new version moves its StartTime only if later; an IMMEDIATE one-off does not
-- run again.
local function stream_next(s, p)
  local sched = s.schedule
  if p.frontier == nil then return sched:run(0) end
  if sched.frequency == 'ONCE' and s.immediate and p.any then return nil end
  local r = sched:next_run(p.frontier - 1)
  while r and (p.stored[r.ms] or (earliest_of(r) < p.frontier and r.ms <= p.last)) do r = sched:next_run(r.ms) end
  return r
end

-- Per zone of the audience, when the endpoints of stream s receive its run: {stream, zone,
-- due_ms, skip_reason, zone_used, note}, quiet time applied (deferred or skipped). A zone
-- whose due time, after any deferral, is more than the stale bound before now_ms is STALE,
-- as a whole run that late would be: sent now, it would arrive at some other hour there.
-- Nothing when the stream neither follows local time nor has quiet time (the run's own
-- instant holds for every zone).
local function zone_dues(c, s, run, now_ms)
  local out = {}
  local sched = s.schedule
  local quiet = sched.quiet_time
  if not sched.is_local_time and quiet == nil then return out end
  local policy = c.definition.Herald.QuietTimePolicy
  local rows = query("SELECT DISTINCT coalesce(timezone, '') AS z FROM endpoints WHERE app_id = ?", core.app())
  for _, r in ipairs(rows) do
    local zone = r.z or ''
    local item = { stream = s.id, zone = zone, due_ms = run.ms }
    local used, note
    if sched.is_local_time then
      local due
      due, used, note = time.local_delivery(run, zone ~= '' and zone or nil, sched.timezone)
      if due == nil then error(used, 0) end
      item.due_ms = due
    end
    if quiet then
      local is_quiet, ends, qused, qnote = time.quiet(quiet, item.due_ms, zone ~= '' and zone or nil, sched.timezone)
      if is_quiet == nil then error(ends, 0) end
      used, note = qused, note or qnote
      if is_quiet then
        if policy == 'skip' then item.skip_reason = 'QUIET_TIME' else item.due_ms = ends end
      end
    end
    if not s.immediate and now_ms - item.due_ms > c:stale_after_ms() then item.skip_reason = 'STALE' end
    item.zone_used, item.note = used, note
    out[#out + 1] = item
  end
  return out
end

-- Whether a due run is still to be sent at now_ms: its latest zone's time is within the stale
-- bound, or quiet time defers some zone to a time that is (that zone was not late yet).
local function in_time(c, best, now_ms)
  if best.immediate or now_ms - best.latest <= c:stale_after_ms() then return true end
  if c.definition.Herald.QuietTimePolicy == 'skip' then return false end
  for _, f in ipairs(best.fires) do
    if f.stream.schedule.quiet_time then
      for _, item in ipairs(zone_dues(c, f.stream, f.run, now_ms)) do
        if item.skip_reason ~= 'STALE' then return true end
      end
    end
  end
  return false
end

-- The next run of c to materialise at now_ms: {at, index} when due, else nil and the instant
-- it becomes due (nil when the schedule has no more runs). A run is one instant of any of
-- c's streams (its schedule and the treatments' own): arms whose stream fires then. Runs are
-- taken in order of their earliest zone's time, so a local-time stream's early zones are not
-- held back behind another stream's later one. Stale runs are recorded here.
local function next_run(c, now_ms)
  if c:schedule().frequency == 'EVENT' then return nil end
  local p = progress(c)
  while true do
    local next_of, best = {}, nil
    for _, s in ipairs(c:streams()) do
      local r = stream_next(s, p)
      if r then
        next_of[#next_of + 1] = { stream = s, run = r }
        local e = earliest_of(r)
        if best == nil or e < best.earliest or (e == best.earliest and r.ms < best.ms) then
          best = { ms = r.ms, index = r.index, earliest = e }
        end
      end
    end
    if best == nil then return nil end
    if best.earliest > now_ms then return nil, best.earliest end
    -- every stream whose next run falls at that instant is part of the run
    best.latest, best.fires = best.ms, {}
    for _, f in ipairs(next_of) do
      local r = f.run
      if r.ms == best.ms then
        best.fires[#best.fires + 1] = f
        best.latest = math.max(best.latest, r.latest_ms or r.ms)
        if f.stream.immediate and r.index == 0 then best.immediate = true end
      end
    end
    if in_time(c, best, now_ms) then return { at = best.ms, index = best.index } end
    outbox.skip_run(c.id, c.version, best.ms, best.index, 'STALE')
    p.stored[best.ms], p.any = true, true
    if p.frontier == nil or best.earliest > p.frontier then p.frontier = best.earliest end
    if p.last == nil or best.ms > p.last then p.last = best.ms end
  end
end

-- The steps below run inside the sandbox, each called by the host loop (herald.runner) as
-- its own sandboxed call: user code in one campaign (a filter that fails or runs away) fails
-- that step only, with its file and line, and the loop goes on.

-- What is due at now_ms: runs to materialise, the next start after now, and the ids of every
-- loaded campaign. Paused, deleted and INVALID campaigns plan nothing (an INVALID one's missed
-- runs meet the stale bound once it is back).
function scheduler.plan(now_ms)
  local due, ids, next_start = {}, {}, nil
  local st = states()
  for i, c in ipairs(campaign.order) do
    ids[i] = c.id
    local state = st[c.id]
    if state ~= 'PAUSED' and state ~= 'DELETED' and state ~= 'INVALID' and not blocked[c.id] then
      local run, at = next_run(c, now_ms)
      if run then
        due[#due + 1] = { id = c.id, at = run.at, index = run.index }
      elseif at and (next_start == nil or at < next_start) then
        next_start = at
      end
    end
  end
  local taken = notices
  notices = {}
  return { due = due, ids = ids, next_start = next_start, versions = taken }
end

-- Appends stream s's zones for its run to out (see zone_dues).
local function zones_of(c, s, run, out)
  for _, item in ipairs(zone_dues(c, s, run, clock.now())) do out[#out + 1] = item end
end

-- What a FILTER hook returns: a list of the endpoints (or ids) to keep, or a map of id to an
-- endpoint (kept, maybe with TitleOverride / BodyOverride), true (kept) or false (dropped).
-- Anything else is an error naming where the campaign giving the hook is defined.
local function hook_verdicts(c, eps, idx, verdicts)
  local kept = c.hook(eps)
  local function wrong(fmt, ...)
    error(string.format('%s' .. fmt, c.where or '', ...), 0)
  end
  if type(kept) ~= 'table' then
    wrong('the hook must return the endpoints to keep (a list of endpoints or ids, or a map of id'
      .. ' to an endpoint, true or false), not a %s', type(kept))
  end
  local keep = {}
  for k, v in pairs(kept) do
    if type(k) == 'string' then
      if type(v) == 'table' or v == true then
        keep[k] = v
      elseif v ~= false then
        wrong("the hook's entry for '%s' must be an endpoint, true (keep) or false (drop), not a %s", k, type(v))
      end
    elseif math.type(k) == 'integer' and type(v) == 'table' and type(v.Id) == 'string' then
      keep[v.Id] = v
    elseif math.type(k) == 'integer' and type(v) == 'string' then
      keep[v] = true
    else
      wrong("the hook's entry %s must be an endpoint or an endpoint id (in a list), not a %s",
        tostring(k), type(v) == 'table' and 'table without an Id' or type(v))
    end
  end
  for id, i in pairs(idx) do
    local v = keep[id]
    if v == nil then
      verdicts[i] = 'FILTERED_BY_HOOK'
    elseif type(v) == 'table' and (v.TitleOverride ~= nil or v.BodyOverride ~= nil) then
      for _, field in ipairs({ 'TitleOverride', 'BodyOverride' }) do
        if v[field] ~= nil and type(v[field]) ~= 'string' then
          wrong("the hook's %s for endpoint '%s' must be a string, not a %s", field, id, type(v[field]))
        end
      end
      verdicts[i] = { TitleOverride = v.TitleOverride, BodyOverride = v.BodyOverride }
    end
  end
end

-- The Lua side of materialisation: the segment's filter (rows it rejects are not members) and
-- the FILTER hook (audience it drops is FILTERED_BY_HOOK), on batches of 50 rows. The filter
-- sees the view count(), ids() and contains() give it (segment.view), so a segment has the
-- same members in a run; the endpoint is read only when the filter reads a field or the hook
-- needs it.
local function row_filter(c, seg_filter)
  local view = seg_filter and require('herald.segment').view()
  return function(rows)
    local verdicts, eps, idx = {}, {}, {}
    for i, r in ipairs(rows) do
      local hooked = c.hook and r.state == 'PENDING'
      local ep = hooked and endpoints.get(r.endpoint_id) or nil
      if (hooked and ep == nil) or (seg_filter and not seg_filter(view(r.endpoint_id, ep))) then
        verdicts[i] = 'drop'
      elseif hooked then
        eps[#eps + 1] = ep
        idx[ep.Id] = i
      end
    end
    if #eps > 0 then hook_verdicts(c, eps, idx, verdicts) end
    return verdicts
  end
end

-- The run being materialised: {id =, filter =} while its rows go through the segment's Lua
-- filter and the hook (filter_rows), nil otherwise.
local materializing = nil

-- What outbox.materialize_run needs for campaign id's run `index` at `at` (the arms whose
-- stream has a run at that instant, the holdout when the campaign's own schedule has), and
-- whether its rows go through Lua (a segment filter, a hook). The host materialises the run
-- and calls filter_rows for each batch of rows, each batch a sandboxed call of its own with
-- its own instruction budget and time limit (herald.runner), so a filter or hook gets through
-- an audience of any size.
function scheduler.materialize_spec(id, at, index)
  local c = campaign.defined[id]
  if c == nil then error('unknown campaign ' .. tostring(id)) end
  local zones, fires = {}, {}
  for _, s in ipairs(c:streams()) do
    local run = s.schedule:next_run(at - 1)
    if run and run.ms == at then
      fires[s.id] = true
      zones_of(c, s, run, zones)
    end
  end
  if next(fires) == nil then error(string.format('campaign %s has no run %s at %s', id, tostring(index), tostring(at))) end
  local arm_stream, arms, every = {}, {}, fires[0] == true
  if fires[0] then arms[1] = -1 end
  for t = 0, #c.sizes - 1 do
    local sid = c:stream_of(t)
    arm_stream[t + 1] = fires[sid] and sid or -1
    if fires[sid] then arms[#arms + 1] = t end
    if sid ~= 0 then every = false end
  end
  local q = c.segment:compile()
  local limits = c.definition.Limits or {}
  materializing = nil
  if q.filter or c.hook then materializing = { id = c.id, filter = row_filter(c, q.filter) } end
  return {
    campaign_id = c.id, version = c.version, scheduled_ms = at, run_index = index or 0,
    where = q.where, params = q.params, holdout = c.holdout, sizes = c.sizes,
    zones = zones, default_due_ms = at,
    -- every arm on the campaign's schedule: the plain statement, no per-arm streams
    arm_stream = not every and arm_stream or nil, without_holdout = not fires[0],
    arms = not every and json.encode(json.array(arms)) or nil,
    daily_cap = limits.Daily, total_cap = limits.Total,
    max_duration_ms = limits.MaximumDuration and limits.MaximumDuration * 1000 or nil,
    test_cohorts = c:test_cohorts(),
  }, materializing ~= nil
end

-- The verdicts on a batch of the rows of the run materialize_spec(id, ...) prepared (see
-- outbox.materialize_run's filter).
function scheduler.filter_rows(id, rows)
  local m = materializing
  if m == nil or m.id ~= id then error('no run of campaign ' .. tostring(id) .. ' is being materialised', 0) end
  return m.filter(rows)
end

-- After the host materialised (or failed to materialise) the run: the Lua side is let go.
-- Returns run run_id's total rows (nil without one).
function scheduler.materialized(run_id)
  materializing = nil
  if run_id == nil then return nil end
  return query('SELECT total FROM campaign_runs WHERE id = ?', run_id)[1].total
end

local invalid = {}

-- A campaign whose run could not be materialised (its code failed) is INVALID, with the
-- error, for the rest of this process; the next `herald run` tries again.
function scheduler.mark_invalid(id, err)
  invalid[id] = true
  campaign.invalidate(id, err or 'its run could not be materialised')
end

---------------------------------------------------------------------------------------------
-- Event triggers: each EVENT campaign reads the events table after its cursor (events from
-- herald.events.put, PutEvents and imports alike), and writes the messages its events make
-- together with the new cursor position, so an event fires a trigger once.

local TRIGGER_BATCH = 1000

local COMPARE = {
  GREATER_THAN = function(a, b) return a > b end, GREATER_THAN_OR_EQUAL = function(a, b) return a >= b end,
  LESS_THAN = function(a, b) return a < b end, LESS_THAN_OR_EQUAL = function(a, b) return a <= b end,
  EQUAL = function(a, b) return a == b end,
}

local function member(list, v)
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end

local function event_matches(f, ev)
  local system = ev.event_type:sub(1, 1) == '_'
  if (f.FilterType == 'SYSTEM') ~= system then return false end
  local d = f.Dimensions
  local inside = member(d.EventType.Values, ev.event_type)
  if (d.EventType.DimensionType or 'INCLUSIVE') == 'INCLUSIVE' then
    if not inside then return false end
  elseif inside then
    return false
  end
  for name, a in pairs(d.Attributes or {}) do
    local v = ev.attributes[name]
    local t = a.AttributeType or 'INCLUSIVE'
    if t == 'INCLUSIVE' and not member(a.Values, v) then return false end
    if t == 'EXCLUSIVE' and member(a.Values, v) then return false end
    if t == 'CONTAINS' then
      local any = false
      for _, x in ipairs(a.Values) do
        if type(v) == 'string' and v:find(x, 1, true) then any = true end
      end
      if not any then return false end
    end
  end
  for name, m in pairs(d.Metrics or {}) do
    local v = ev.metrics[name]
    if type(v) ~= 'number' or not COMPARE[m.ComparisonOperator](v, m.Value) then return false end
  end
  return true
end

local function skip_reason(c, ep, arm)
  if ep.EndpointStatus == 'INACTIVE' then return 'INACTIVE' end
  if ep.OptOut == 'ALL' then return 'OPT_OUT' end
  if ep.Address == nil or ep.Address == '' then return 'MISSING_ADDRESS' end
  if arm < 0 then return 'HOLDOUT' end
  return nil
end

local function in_segment(seg, ep)
  if seg.contains then return seg:contains(ep.Id) end
  local q = seg:compile()
  if q.where ~= '1' then error('segment ' .. seg.name .. ' has an SQL condition and no contains()', 0) end
  return q.filter == nil or q.filter(ep)
end

local function trigger_campaign(c, now_ms, batch)
  local f = c.definition.Schedule.EventFilter
  local h = c.definition.Herald
  local cancel_types = h.CancelOnEventTypes or {}
  local delay_ms = (h.TriggerDelaySeconds or 0) * 1000
  local expiry_ms = h.TriggerExpirySeconds and h.TriggerExpirySeconds * 1000
  local stale_ms = c:stale_after_ms()
  -- Pinpoint sends for the events that occur between the schedule's StartTime and EndTime
  local sched = c:schedule()
  local cursor = outbox.trigger_cursor(c.id)
  local events = query('SELECT seq, endpoint_id, event_id, event_type, timestamp, attributes, metrics, arrival'
    .. ' FROM events WHERE app_id = ? AND seq > ? ORDER BY seq LIMIT ?', core.app(), cursor, batch)
  if #events == 0 then return 0 end
  local rows, by_endpoint, cancels, cancelled = {}, {}, {}, {}
  for _, ev in ipairs(events) do
    if member(cancel_types, ev.event_type) then
      local i = by_endpoint[ev.endpoint_id]
      if i then rows[i] = false; by_endpoint[ev.endpoint_id] = nil end
      if not cancelled[ev.endpoint_id] then
        cancels[#cancels + 1] = ev.endpoint_id
        cancelled[ev.endpoint_id] = true
      end
    elseif by_endpoint[ev.endpoint_id] == nil then
      ev.attributes = json.decode(ev.attributes or '{}') or {}
      ev.metrics = json.decode(ev.metrics or '{}') or {}
      local at = time.parse(ev.timestamp) or now_ms
      local fresh = expiry_ms == nil or now_ms - at <= expiry_ms
      local in_window = at >= sched.start_ms and (sched.end_ms == nil or at <= sched.end_ms)
      if fresh and in_window and event_matches(f, ev) then
        local ep = endpoints.get(ev.endpoint_id)
        if ep and in_segment(c.segment, ep) and (c.predicate == nil or c.predicate(ev, ep)) then
          local arm = c:arm(ep.CohortId)
          local due, reason = math.max(at + delay_ms, now_ms), skip_reason(c, ep, arm)
          -- read more than the stale bound after it was due (herald down, the campaign paused
          -- or INVALID): not sent, as a stale run is not; late from its arrival at the earliest
          if reason == nil and now_ms - math.max(at + delay_ms, time.parse(ev.arrival) or at) > stale_ms then
            reason = 'STALE'
          end
          -- quiet time holds for triggered messages as for scheduled ones, in the endpoint's zone
          -- (the campaign's when it has none): deferred to its end, or skipped under 'skip'
          local zone = ep.Demographic and ep.Demographic.Timezone
          if sched.quiet_time and reason == nil then
            local quiet, ends = time.quiet(sched.quiet_time, due, zone, sched.timezone)
            if quiet == nil then error(ends, 0) end
            if quiet then
              if h.QuietTimePolicy == 'skip' then reason = 'QUIET_TIME' else due = ends end
            end
          end
          rows[#rows + 1] = {
            endpoint_id = ep.Id, treatment = arm, channel = ep.ChannelType, address = ep.Address,
            due_ms = due, event_seq = ev.seq, reason = reason,
            -- kept so quiet time is looked at in the endpoint's zone again when it is sent
            zone = type(zone) == 'string' and zone or nil,
          }
          by_endpoint[ep.Id] = #rows
        end
      end
    end
  end
  local kept = {}
  for _, r in ipairs(rows) do if r then kept[#kept + 1] = r end end
  local limits = c.definition.Limits or {}
  outbox.trigger {
    campaign_id = c.id, version = c.version, now_ms = now_ms, from_seq = cursor, to_seq = events[#events].seq,
    rows = kept, cancels = cancels, daily_cap = limits.Daily, total_cap = limits.Total,
    max_duration_ms = limits.MaximumDuration and limits.MaximumDuration * 1000 or nil,
  }
  return #events
end

-- The EVENT campaigns whose new events are to be processed (paused, deleted and INVALID
-- ones read none: their events wait), and the batch size. The host processes each campaign in
-- a sandboxed call of its own (scheduler.trigger), so one whose predicate fails or runs past
-- the budget fails alone.
function scheduler.triggers()
  local ids = {}
  local st = states()
  for _, c in ipairs(campaign.order) do
    local state = st[c.id]
    if c:schedule().frequency == 'EVENT' and state ~= 'PAUSED' and state ~= 'DELETED' and state ~= 'INVALID'
        and not blocked[c.id] and not invalid[c.id] then
      ids[#ids + 1] = c.id
    end
  end
  return ids, TRIGGER_BATCH
end

-- Processes up to batch (default TRIGGER_BATCH) new events for EVENT campaign id. Returns how
-- many events it read and the batch size: a full batch means more are waiting.
function scheduler.trigger(id, now_ms, batch)
  local c = campaign.defined[id]
  if c == nil or c:schedule().frequency ~= 'EVENT' then error('unknown event campaign ' .. tostring(id), 0) end
  batch = batch or TRIGGER_BATCH
  return trigger_campaign(c, now_ms, batch), batch
end

-- Moves each campaign to the state its runs say (PAUSED and DELETED stay as they are). An
-- INVALID one is left alone: looking for its next run would record its missed runs STALE
-- while it is INVALID.
function scheduler.refresh_states(now_ms)
  local stored = {}
  for _, r in ipairs(query('SELECT id, state FROM campaigns WHERE app_id = ?', core.app())) do stored[r.id] = r.state end
  for _, c in ipairs(campaign.order) do
    if invalid[c.id] or blocked[c.id] or stored[c.id] == 'INVALID' then goto continue end
    local r = query("SELECT count(*) AS n, sum(state = 'EXECUTING') AS executing FROM campaign_runs"
      .. ' WHERE app_id = ? AND campaign_id = ?', core.app(), c.id)[1]
    local state
    if (r.executing or 0) > 0 then
      state = 'EXECUTING'
    else
      local ok, run, at = pcall(next_run, c, now_ms)
      local more = ok and (run ~= nil or at ~= nil)
      -- an event campaign waits for events until its EndTime
      local s = c:schedule()
      if s.frequency == 'EVENT' then more = s.end_ms == nil or now_ms <= s.end_ms end
      if more then state = r.n > 0 and 'PENDING_NEXT_RUN' or 'SCHEDULED' else state = 'COMPLETED' end
    end
    outbox.advance_campaign_state(c.id, state)
    ::continue::
  end
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

-- Per campaign: for each run, counts per arm of sent, failed, pending and skip reasons, the
-- arms named by the run's own version (an earlier one may have had other treatments).
function scheduler.summary()
  local out = {}
  for _, c in ipairs(campaign.order) do
    local runs, by_id = {}, {}
    local defs, version_of = campaign.versions(c.id), {}
    for _, r in ipairs(query('SELECT id, campaign_version FROM campaign_runs WHERE app_id = ? AND campaign_id = ?',
        core.app(), c.id)) do
      version_of[r.id] = r.campaign_version
    end
    for _, t in ipairs(outbox.tally(c.id)) do
      local run = by_id[t.run_id]
      if run == nil then
        run = { run_id = t.run_id, state = t.run_state, version = version_of[t.run_id], arms = {}, order = {} }
        by_id[t.run_id] = run
        runs[#runs + 1] = run
      end
      local name = campaign.treatment_name(defs(run.version), t.treatment)
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
    -- a paused campaign's messages wait for its resume: how many (an A/B run's rest too, whose
    -- decision waits for the resume as well), and why it paused
    local paused
    local st = query('SELECT state, pause_reason FROM campaigns WHERE app_id = ? AND id = ?', core.app(), c.id)[1]
    if st and st.state == 'PAUSED' then
      local waiting = query([[SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id
        WHERE r.app_id = ? AND r.campaign_id = ? AND o.state IN ('PENDING', 'CLAIMED', 'WAITING')]], core.app(), c.id)[1].n
      paused = { reason = st.pause_reason, waiting = waiting }
    end
    out[#out + 1] = { campaign = c.name, version = c.version, runs = runs, paused = paused }
  end
  return out
end

-- Prints the summary; returns the lines the caller should also say on stderr.
function scheduler.print_summary()
  local notices = {}
  for _, s in ipairs(scheduler.summary()) do
    print(string.format('campaign %s (version %d)', s.campaign, s.version))
    for _, run in ipairs(s.runs) do
      print(string.format('  run %d: %s%s', run.run_id, run.state,
        run.version ~= s.version and string.format(' (version %s)', tostring(run.version)) or ''))
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
    -- said on stderr too: a run that ends (--until-idle) with a paused campaign has not sent
    -- everything, though nothing more was due
    local p = s.paused
    if p then
      local why = type(p.reason) == 'string' and (': ' .. p.reason) or ''
      local line = string.format('campaign %s is PAUSED%s; %d messages wait for `herald campaign resume %s`',
        s.campaign, why, p.waiting, s.campaign)
      print('  ' .. line)
      notices[#notices + 1] = line
    end
  end
  return notices
end

return scheduler
