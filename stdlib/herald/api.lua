-- herald.api: routes of Pinpoint's REST API that are answered in Lua, mounted on the engagement
-- server by `herald serve` and `herald run --serve` (server.start{routes = api.routes()}).
--
-- GET /v1/apps/{app}/campaigns/{campaign}/kpis/daterange/{kpi}?start-time=ISO&end-time=ISO
--   Pinpoint's GetCampaignDateRangeKpi (kpis/daily/{kpi}, herald's first path for it, answers
--   the same). The answer is one page: there is no NextToken. The answer (200) is a CampaignDateRangeKpiResponse
--   {ApplicationId, CampaignId, KpiName, StartTime, EndTime, KpiResult = {Rows = {{GroupedBys,
--   Values = {{Key, Type, Value}}}}}}, computed by herald.analytics.kpi (the KPIs of the REPL
--   and of `herald report`). start-time and end-time bound the period, [start, end]: as in
--   Pinpoint, an inclusive range, so what happened at end-time itself counts. They are
--   ISO-8601 instants (an offset or Z; a time without one is UTC); without start-time the
--   period starts with the campaign, without end-time it ends now. Errors are Pinpoint-style
--   {"Message", "RequestID"}: 404 for an unknown application or campaign, 400 for an unknown
--   KPI name (the message lists the known ones), a date that is not ISO-8601, or an end
--   before the start.
local json = require 'herald.core.json'
local store = require 'herald.core.store'
local clock = require 'herald.core.clock'
local analytics = require 'herald.analytics'
local time = require 'herald.time'

local M = {}

local function unescape(s)
  return (s:gsub('+', ' '):gsub('%%(%x%x)', function(x) return string.char(tonumber(x, 16)) end))
end

local function query_args(q)
  local out = {}
  for pair in (q or ''):gmatch('[^&]+') do
    local k, v = pair:match('^([^=]*)=?(.*)$')
    out[unescape(k)] = unescape(v)
  end
  return out
end

local function error_body(status, req, message)
  return status, json.encode({ Message = message, RequestID = req.request_id })
end

-- The stored form of an instant: events and send times are compared as text in this form.
local function stored_form(ms)
  return os.date('!%Y-%m-%dT%H:%M:%S', ms // 1000) .. string.format('.%03dZ', ms % 1000)
end

local function exists(sql, ...)
  local rows, err = store.query(sql, ...)
  if rows == nil then error(err, 0) end
  return #rows > 0
end

local known_kpis = {}
for _, k in ipairs(analytics.KPIS) do known_kpis[k] = true end

function M.campaign_kpi(req)
  local p = {}
  for k, v in pairs(req.params) do p[k] = unescape(v) end
  if not exists('SELECT 1 FROM applications WHERE id = ?', p.app) then
    return error_body(404, req, string.format("application '%s' not found", p.app))
  end
  if not exists('SELECT 1 FROM campaigns WHERE app_id = ? AND id = ?', p.app, p.campaign) then
    return error_body(404, req, string.format("campaign '%s' not found in application '%s'", p.campaign, p.app))
  end
  if not known_kpis[p.kpi] then
    return error_body(400, req, string.format("unknown KPI '%s' (one of: %s)", p.kpi,
      table.concat(analytics.KPIS, ', ')))
  end
  local args = query_args(req.query)
  local range = {}
  for _, name in ipairs({ 'start-time', 'end-time' }) do
    local v = args[name]
    if v ~= nil then
      local ms, err = time.parse(v)
      if ms == nil then
        return error_body(400, req, string.format('%s: not an ISO-8601 date and time (%s): %s', name, tostring(err), v))
      end
      range[name] = ms
    end
  end
  local start_ms, end_ms = range['start-time'], range['end-time'] or clock.now()
  if start_ms and start_ms > end_ms then
    return error_body(400, req, 'end-time is before start-time')
  end
  local r, err = analytics.kpi(p.campaign, p.kpi, { app = p.app,
    start_time = start_ms and stored_form(start_ms), end_time = stored_form(end_ms) })
  if r == nil then return error_body(400, req, err) end
  for _, row in ipairs(r.KpiResult.Rows) do
    row.GroupedBys = json.array(row.GroupedBys)
    row.Values = json.array(row.Values)
  end
  return 200, json.encode({
    ApplicationId = p.app, CampaignId = p.campaign, KpiName = r.KpiName,
    StartTime = start_ms and time.format(start_ms) or r.StartTime,
    EndTime = time.format(end_ms),
    KpiResult = { Rows = json.array(r.KpiResult.Rows) },
  })
end

-- The routes, for herald.core.server.start{routes = ...}.
function M.routes()
  return {
    { method = 'GET', pattern = '/v1/apps/{app}/campaigns/{campaign}/kpis/daterange/{kpi}',
      handler = M.campaign_kpi },
    { method = 'GET', pattern = '/v1/apps/{app}/campaigns/{campaign}/kpis/daily/{kpi}',
      handler = M.campaign_kpi },
  }
end

return M
