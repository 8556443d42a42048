-- A plain reference evaluator of Pinpoint segment definitions over in-memory endpoints, for
-- the differential spec. It shares no code with stdlib/herald/segment.lua: its own date
-- parser, distance and combination rules, written from the semantics the README states.
--   ref.matches(request, endpoint, ctx) -> boolean
-- request: a WriteSegmentRequest (Dimensions, SegmentGroups) with defaults filled or not;
-- endpoint: an EndpointRequest-shaped table plus Id and LastActivityMs;
-- ctx: { now_ms =, stored = { [id] = { [version] = request or { members = set } } } }.
local M = {}

local DEMOGRAPHIC = { AppVersion = function(ep) return ep.Demographic and ep.Demographic.AppVersion end,
  Channel = function(ep) return ep.ChannelType end,
  DeviceType = function(ep) return ep.Demographic and ep.Demographic.Model end,
  Make = function(ep) return ep.Demographic and ep.Demographic.Make end,
  Model = function(ep) return ep.Demographic and ep.Demographic.Model end,
  Platform = function(ep) return ep.Demographic and ep.Demographic.Platform end }

local DURATION_MS = { HR_24 = 86400000, DAY_7 = 604800000, DAY_14 = 1209600000,
  DAY_30 = 2592000000 }

local function is_leap(y) return (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0 end

local MONTH_DAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function leaps_before(y) -- leap years in [1, y)
  local x = y - 1
  return x // 4 - x // 100 + x // 400
end

local function day_number(y, m, d)
  local days = 365 * (y - 1970) + leaps_before(y) - leaps_before(1970)
  for i = 1, m - 1 do
    days = days + MONTH_DAYS[i] + ((i == 2 and is_leap(y)) and 1 or 0)
  end
  return days + d - 1
end

-- ISO-8601 -> ms, day (the written date), or nil.
function M.instant(s)
  if type(s) ~= 'string' then return nil end
  local y, mo, d, rest = s:match('^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$')
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo < 1 or mo > 12 then return nil end
  local dim = MONTH_DAYS[mo] + ((mo == 2 and is_leap(y)) and 1 or 0)
  if d < 1 or d > dim then return nil end
  local day = day_number(y, mo, d)
  if rest == '' then return day * 86400000, day end
  local h, mi, tail = rest:match('^T(%d%d):(%d%d)(.*)$')
  if not h then return nil end
  local sec, milli = 0, 0
  local s2, t2 = tail:match('^:(%d%d)(.*)$')
  if s2 then
    sec, tail = tonumber(s2), t2
    if tail:sub(1, 1) == '.' then
      local f, t3 = tail:match('^%.(%d+)(.*)$')
      if not f then return nil end
      milli, tail = tonumber((f .. '00'):sub(1, 3)), t3
    end
  end
  h, mi = tonumber(h), tonumber(mi)
  if h > 23 or mi > 59 or sec > 59 then return nil end
  local offset = 0
  if tail == 'Z' or tail == '' then
    offset = 0
  else
    local sign, oh, om = tail:match('^([+-])(%d%d):(%d%d)$')
    if not sign then return nil end
    oh, om = tonumber(oh), tonumber(om)
    if oh > 23 or om > 59 then return nil end
    offset = (sign == '-' and -1 or 1) * (oh * 60 + om)
  end
  return ((day * 86400 + h * 3600 + mi * 60 + sec - offset * 60) * 1000 + milli), day
end

function M.km(lat1, lon1, lat2, lon2)
  local r = math.pi / 180
  local p1, p2 = lat1 * r, lat2 * r
  local dp, dl = (lat2 - lat1) * r, (lon2 - lon1) * r
  local a = math.sin(dp / 2) * math.sin(dp / 2) +
    math.cos(p1) * math.cos(p2) * math.sin(dl / 2) * math.sin(dl / 2)
  if a > 1 then a = 1 end
  return 2 * 6371.0 * math.asin(math.sqrt(a))
end

local function in_list(v, list)
  for _, x in ipairs(list) do
    if x == v then return true end
  end
  return false
end

local function set_match(v, d)
  local inside = v ~= nil and in_list(v, d.Values)
  if (d.DimensionType or 'INCLUSIVE') == 'EXCLUSIVE' then return not inside end
  return inside
end

local function any_value(list, pred)
  for _, v in ipairs(list or {}) do
    if pred(v) then return true end
  end
  return false
end

local function attribute_match(list, d)
  local t = d.AttributeType or 'INCLUSIVE'
  if t == 'INCLUSIVE' then return any_value(list, function(v) return in_list(v, d.Values) end) end
  if t == 'EXCLUSIVE' then return not any_value(list, function(v) return in_list(v, d.Values) end) end
  if t == 'CONTAINS' then
    return any_value(list, function(v)
      for _, s in ipairs(d.Values) do
        if v:find(s, 1, true) then return true end
      end
      return false
    end)
  end
  if t == 'ON' then
    local days = {}
    for _, s in ipairs(d.Values) do days[#days + 1] = select(2, M.instant(s)) end
    return any_value(list, function(v)
      local _, day = M.instant(v)
      return day ~= nil and in_list(day, days)
    end)
  end
  local a = M.instant(d.Values[1])
  local b = d.Values[2] and M.instant(d.Values[2])
  -- A BETWEEN end or an AFTER value written as a date alone stands for that whole day (UTC).
  local whole_day = t == 'BETWEEN' and not d.Values[2]:find('T', 1, true)
  local after_day = t == 'AFTER' and not d.Values[1]:find('T', 1, true)
  return any_value(list, function(v)
    local x = M.instant(v)
    if x == nil then return false end
    if t == 'BEFORE' then return x < a end
    if t == 'AFTER' then return x > (after_day and a + 86400000 - 1 or a) end
    if whole_day then return x >= a and x < b + 86400000 end
    return x >= a and x <= b
  end)
end

local COMPARE = {
  GREATER_THAN = function(a, b) return a > b end,
  LESS_THAN = function(a, b) return a < b end,
  GREATER_THAN_OR_EQUAL = function(a, b) return a >= b end,
  LESS_THAN_OR_EQUAL = function(a, b) return a <= b end,
  EQUAL = function(a, b) return a == b end,
}

local function dimensions_match(dims, ep, ctx)
  for k, d in pairs(dims.Demographic or {}) do
    if not set_match(DEMOGRAPHIC[k](ep), d) then return false end
  end
  local loc = dims.Location or {}
  local eloc = ep.Location or {}
  if loc.Country and not set_match(eloc.Country, loc.Country) then return false end
  if loc.GPSPoint then
    if eloc.Latitude == nil or eloc.Longitude == nil then return false end
    local c = loc.GPSPoint.Coordinates
    if M.km(c.Latitude, c.Longitude, eloc.Latitude, eloc.Longitude) >
      (loc.GPSPoint.RangeInKilometers or 0) then
      return false
    end
  end
  if dims.Behavior then
    local r = dims.Behavior.Recency
    local cutoff = ctx.now_ms - DURATION_MS[r.Duration]
    local active = ep.LastActivityMs ~= nil and ep.LastActivityMs >= cutoff
    if (r.RecencyType == 'ACTIVE') ~= active then return false end
  end
  for name, d in pairs(dims.Attributes or {}) do
    if not attribute_match((ep.Attributes or {})[name], d) then return false end
  end
  local uattrs = (ep.User or {}).UserAttributes or {}
  for name, d in pairs(dims.UserAttributes or {}) do
    if not attribute_match(uattrs[name], d) then return false end
  end
  for name, d in pairs(dims.Metrics or {}) do
    local v = (ep.Metrics or {})[name]
    if v == nil or not COMPARE[d.ComparisonOperator](v, d.Value) then return false end
  end
  return true
end

-- Combines a list of booleans computed on demand.
local function combine(op, n, get)
  if n == 0 then return true end
  op = op or 'ALL'
  if op == 'ALL' then
    for i = 1, n do
      if not get(i) then return false end
    end
    return true
  end
  local any = false
  for i = 1, n do
    if get(i) then any = true break end
  end
  if op == 'ANY' then return any end
  return not any
end

function M.matches(req, ep, ctx)
  if req.Dimensions and not dimensions_match(req.Dimensions, ep, ctx) then return false end
  local sg = req.SegmentGroups
  if sg == nil then return true end
  local groups = sg.Groups or {}
  return combine(sg.Include, #groups, function(gi)
    local g = groups[gi]
    local sources, dims = g.SourceSegments or {}, g.Dimensions or {}
    local base = combine(g.SourceType, #sources, function(si)
      local s = sources[si]
      local versions = ctx.stored[s.Id]
      local v = s.Version
      if v == nil then
        v = 0
        for k in pairs(versions) do v = math.max(v, k) end
      end
      local stored = versions[v]
      if stored.members then return stored.members[ep.Id] == true end
      return M.matches(stored, ep, ctx)
    end)
    return base and combine(g.Type, #dims, function(di) return dimensions_match(dims[di], ep, ctx) end)
  end)
end

return M
