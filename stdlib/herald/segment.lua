-- Segments: who a campaign reaches (Pinpoint's model, reference/pinpoint.md §2, plus Lua).
--
-- A segment is a declarative definition, kept in Pinpoint's WriteSegmentRequest shape
-- (Dimensions and SegmentGroups), an optional Lua `filter`, or a composition of segments
-- (all/any/none). The declarative part compiles to one parameterised SQL condition over the
-- endpoints table (alias e); no user string ever enters the SQL text. The filter runs only on
-- rows the SQL keeps, in batches, over a read-only endpoint view whose fields are pushed from
-- SQL as columns: the fields a filter reads are found by running it on the first rows with a
-- recording view, and any other field is loaded on demand.
--
-- Semantics that Pinpoint leaves open, fixed here (the README lists them):
-- - EXCLUSIVE is the negation of INCLUSIVE: an endpoint without the field or attribute is kept.
-- - List-valued attributes match when any value matches (INCLUSIVE, CONTAINS, dates); EXCLUSIVE
--   keeps an endpoint when no value is in the list.
-- - BEFORE, AFTER and BETWEEN compare instants (ISO-8601 date or date-time, UTC without a
--   zone, milliseconds); BETWEEN is inclusive, a date-only end and a date-only AFTER value stand
--   for that whole day (UTC: AFTER 2026-01-31 starts on 2026-02-01), and a start after the end is
--   refused; ON compares the calendar date as written.
--   Values that are not dates never match a date operator.
-- - A metric that is absent never matches.
-- - An empty combination (no groups, no dimensions, no base segments) keeps every endpoint;
--   Include, Type and SourceType default to ALL. Dimensions and SegmentGroups both present:
--   both hold.
-- - DeviceType reads Demographic.Model (endpoints carry no separate device type).
-- - Country and Channel values are read in any case (endpoints store them upper-case).
local core = require 'herald.core.segment'
local json = require 'herald.core.json'
local clock = require 'herald.core.clock'
local digest = require 'herald.core.digest'

local segment = {}

local Segment = {}
Segment.__index = Segment

local BATCH = 1000

local SET_TYPES = { 'INCLUSIVE', 'EXCLUSIVE' }
local ATTRIBUTE_TYPES = { 'INCLUSIVE', 'EXCLUSIVE', 'CONTAINS', 'BEFORE', 'AFTER', 'BETWEEN', 'ON' }
local METRIC_OPERATORS = {
  GREATER_THAN = '>', LESS_THAN = '<', GREATER_THAN_OR_EQUAL = '>=', LESS_THAN_OR_EQUAL = '<=',
  EQUAL = '=',
}
local METRIC_NAMES = { 'GREATER_THAN', 'LESS_THAN', 'GREATER_THAN_OR_EQUAL',
  'LESS_THAN_OR_EQUAL', 'EQUAL' }
local DURATIONS = { HR_24 = 86400000, DAY_7 = 7 * 86400000, DAY_14 = 14 * 86400000,
  DAY_30 = 30 * 86400000 }
local DURATION_NAMES = { 'HR_24', 'DAY_7', 'DAY_14', 'DAY_30' }
local RECENCY_TYPES = { 'ACTIVE', 'INACTIVE' }
local COMBINATIONS = { 'ALL', 'ANY', 'NONE' }
local DEMOGRAPHIC_COLUMNS = {
  AppVersion = 'app_version', Channel = 'channel_type', DeviceType = 'model', Make = 'make',
  Model = 'model', Platform = 'platform',
}
local DEMOGRAPHIC_NAMES = { 'AppVersion', 'Channel', 'DeviceType', 'Make', 'Model', 'Platform' }
-- The ChannelType values an endpoint may have (runtime/endpoint.c channel_types): a Channel
-- value outside them could only ever match nothing.
local CHANNEL_TYPES = { 'PUSH', 'GCM', 'APNS', 'APNS_SANDBOX', 'APNS_VOIP', 'APNS_VOIP_SANDBOX',
  'ADM', 'SMS', 'VOICE', 'EMAIL', 'BAIDU', 'CUSTOM', 'IN_APP' }
local CHANNEL_SET = {}
for _, t in ipairs(CHANNEL_TYPES) do CHANNEL_SET[t] = true end
local DAY_MS = 86400000


---------------------------------------------------------------------------------------------
-- Validation: the definition is checked and copied into a canonical Pinpoint-shaped table.
-- Errors are raised as { msg = 'Field.Path: reason', path =, reason = } and turned into
-- messages at the caller's line by the public entry points.

local function fail(path, fmt, ...)
  local reason = string.format(fmt, ...)
  error({ msg = path .. ': ' .. reason, path = path, reason = reason }, 0)
end

local function one_of(path, v, allowed)
  for _, a in ipairs(allowed) do
    if v == a then return v end
  end
  if type(v) == 'string' then
    fail(path, "'%s' is not one of %s", v, table.concat(allowed, ', '))
  end
  fail(path, 'required, one of %s', table.concat(allowed, ', '))
end

local function check_keys(path, t, allowed)
  for k in pairs(t) do
    local ok = false
    for _, a in ipairs(allowed) do
      if k == a then ok = true end
    end
    if not ok then
      fail(path == '' and tostring(k) or path .. '.' .. tostring(k),
        'unknown field (allowed: %s)', table.concat(allowed, ', '))
    end
  end
end

local function table_at(path, v, required)
  if v == nil and not required then return nil end
  if type(v) ~= 'table' then fail(path, 'expected an object') end
  return v
end

local function string_list(path, v)
  if type(v) ~= 'table' or #v == 0 then fail(path, 'required, a non-empty list of strings') end
  local out = {}
  for i, s in ipairs(v) do
    if type(s) ~= 'string' then fail(path .. '[' .. i .. ']', 'expected a string') end
    out[i] = s
  end
  return out
end

local function set_dimension(path, v)
  table_at(path, v, true)
  check_keys(path, v, { 'DimensionType', 'Values' })
  return {
    DimensionType = v.DimensionType == nil and 'INCLUSIVE'
      or one_of(path .. '.DimensionType', v.DimensionType, SET_TYPES),
    Values = string_list(path .. '.Values', v.Values),
  }
end

local function instant(path, s)
  local ms, day = core.instant(s)
  if ms == nil then
    fail(path, "'%s' is not an ISO-8601 date or date-time (2026-11-29 or 2026-11-29T10:00:00Z)", s)
  end
  return ms, day
end

-- The last instant a BETWEEN end or an AFTER value stands for: a date-only one is the whole of
-- that day (UTC), as ON would read it, so { '2026-01-01', '2026-01-31' } includes
-- 2026-01-31T10:00:00Z and AFTER '2026-01-31' does not.
-- Instants are whole milliseconds, so the day's last one is the next midnight less 1.
local function between_end(s)
  local ms = core.instant(s)
  if s:match('^%d%d%d%d%-%d%d%-%d%d$') then return ms + DAY_MS - 1 end
  return ms
end

local function attribute_dimension(path, v)
  table_at(path, v, true)
  check_keys(path, v, { 'AttributeType', 'Values' })
  local t = v.AttributeType == nil and 'INCLUSIVE'
    or one_of(path .. '.AttributeType', v.AttributeType, ATTRIBUTE_TYPES)
  local values = string_list(path .. '.Values', v.Values)
  if (t == 'BEFORE' or t == 'AFTER') and #values ~= 1 then
    fail(path .. '.Values', '%s takes exactly one date, got %d values', t, #values)
  elseif t == 'BETWEEN' and #values ~= 2 then
    fail(path .. '.Values', 'BETWEEN takes two dates (start and end), got %d values', #values)
  end
  if t == 'BEFORE' or t == 'AFTER' or t == 'BETWEEN' or t == 'ON' then
    for i, s in ipairs(values) do instant(path .. '.Values[' .. i .. ']', s) end
  end
  if t == 'BETWEEN' and core.instant(values[1]) > between_end(values[2]) then
    fail(path .. '.Values', "BETWEEN's start '%s' is after its end '%s'", values[1], values[2])
  end
  return { AttributeType = t, Values = values }
end

local function attribute_map(path, v)
  if v == nil then return nil end
  table_at(path, v, true)
  local out = {}
  for name, d in pairs(v) do
    if type(name) ~= 'string' or name == '' then
      fail(path, 'attribute names are non-empty strings')
    end
    out[name] = attribute_dimension(path .. '.' .. name, d)
  end
  return out
end

local function finite(path, v)
  if v == nil then fail(path, 'required, a finite number') end
  if type(v) ~= 'number' or v ~= v or v == math.huge or v == -math.huge then
    fail(path, 'expected a finite number')
  end
  return v
end

local function metric_map(path, v)
  if v == nil then return nil end
  table_at(path, v, true)
  local out = {}
  for name, d in pairs(v) do
    if type(name) ~= 'string' or name == '' then
      fail(path, 'metric names are non-empty strings')
    end
    local p = path .. '.' .. name
    table_at(p, d, true)
    check_keys(p, d, { 'ComparisonOperator', 'Value' })
    out[name] = {
      ComparisonOperator = one_of(p .. '.ComparisonOperator', d.ComparisonOperator, METRIC_NAMES),
      Value = finite(p .. '.Value', d.Value),
    }
  end
  return out
end

local function dimensions(path, v)
  table_at(path, v, true)
  check_keys(path, v, { 'Attributes', 'UserAttributes', 'Metrics', 'Demographic', 'Location',
    'Behavior' })
  local out = {
    Attributes = attribute_map(path .. '.Attributes', v.Attributes),
    UserAttributes = attribute_map(path .. '.UserAttributes', v.UserAttributes),
    Metrics = metric_map(path .. '.Metrics', v.Metrics),
  }
  if v.Demographic ~= nil then
    local p = path .. '.Demographic'
    table_at(p, v.Demographic, true)
    check_keys(p, v.Demographic, DEMOGRAPHIC_NAMES)
    out.Demographic = {}
    for k, d in pairs(v.Demographic) do out.Demographic[k] = set_dimension(p .. '.' .. k, d) end
    local c = out.Demographic.Channel
    for i, s in ipairs(c and c.Values or {}) do
      if not CHANNEL_SET[s:upper()] then
        fail(p .. '.Channel.Values[' .. i .. ']', "'%s' is not a ChannelType (one of %s)", s,
          table.concat(CHANNEL_TYPES, ', '))
      end
      c.Values[i] = s:upper()
    end
  end
  if v.Location ~= nil then
    local p = path .. '.Location'
    table_at(p, v.Location, true)
    check_keys(p, v.Location, { 'Country', 'GPSPoint' })
    out.Location = {}
    if v.Location.Country ~= nil then
      local c = set_dimension(p .. '.Country', v.Location.Country)
      for i, s in ipairs(c.Values) do
        if not s:match('^%a%a$') then
          fail(p .. '.Country.Values[' .. i .. ']', "'%s' is not an ISO 3166-1 alpha-2 code", s)
        end
        c.Values[i] = s:upper()
      end
      out.Location.Country = c
    end
    if v.Location.GPSPoint ~= nil then
      local g = table_at(p .. '.GPSPoint', v.Location.GPSPoint, true)
      check_keys(p .. '.GPSPoint', g, { 'Coordinates', 'RangeInKilometers' })
      local c = table_at(p .. '.GPSPoint.Coordinates', g.Coordinates, true)
      check_keys(p .. '.GPSPoint.Coordinates', c, { 'Latitude', 'Longitude' })
      local lat = finite(p .. '.GPSPoint.Coordinates.Latitude', c.Latitude)
      local lon = finite(p .. '.GPSPoint.Coordinates.Longitude', c.Longitude)
      if lat < -90 or lat > 90 then
        fail(p .. '.GPSPoint.Coordinates.Latitude', 'outside -90..90')
      end
      if lon < -180 or lon > 180 then
        fail(p .. '.GPSPoint.Coordinates.Longitude', 'outside -180..180')
      end
      local r = g.RangeInKilometers == nil and 0
        or finite(p .. '.GPSPoint.RangeInKilometers', g.RangeInKilometers)
      if r < 0 then fail(p .. '.GPSPoint.RangeInKilometers', 'must not be negative') end
      out.Location.GPSPoint = { Coordinates = { Latitude = lat, Longitude = lon },
        RangeInKilometers = r }
    end
  end
  if v.Behavior ~= nil then
    local p = path .. '.Behavior'
    table_at(p, v.Behavior, true)
    check_keys(p, v.Behavior, { 'Recency' })
    local r = table_at(p .. '.Recency', v.Behavior.Recency, true)
    check_keys(p .. '.Recency', r, { 'Duration', 'RecencyType' })
    out.Behavior = { Recency = {
      Duration = one_of(p .. '.Recency.Duration', r.Duration, DURATION_NAMES),
      RecencyType = one_of(p .. '.Recency.RecencyType', r.RecencyType, RECENCY_TYPES),
    } }
  end
  return out
end

local function list_of(path, v, each)
  if v == nil then return {} end
  if type(v) ~= 'table' then fail(path, 'expected a list') end
  local out = {}
  for i, x in ipairs(v) do out[i] = each(path .. '[' .. i .. ']', x) end
  return out
end

local function source_segment(path, v)
  table_at(path, v, true)
  check_keys(path, v, { 'Id', 'Version' })
  if type(v.Id) ~= 'string' or v.Id == '' then fail(path .. '.Id', 'required, a segment id') end
  if v.Version ~= nil and math.type(v.Version) ~= 'integer' then
    fail(path .. '.Version', 'expected a whole number')
  end
  return { Id = v.Id, Version = v.Version }
end

local function segment_groups(path, v)
  table_at(path, v, true)
  check_keys(path, v, { 'Groups', 'Include' })
  return {
    Include = v.Include == nil and 'ALL' or one_of(path .. '.Include', v.Include, COMBINATIONS),
    Groups = list_of(path .. '.Groups', v.Groups, function(p, g)
      table_at(p, g, true)
      check_keys(p, g, { 'Dimensions', 'SourceSegments', 'SourceType', 'Type' })
      return {
        Dimensions = list_of(p .. '.Dimensions', g.Dimensions, dimensions),
        SourceSegments = list_of(p .. '.SourceSegments', g.SourceSegments, source_segment),
        SourceType = g.SourceType == nil and 'ALL'
          or one_of(p .. '.SourceType', g.SourceType, COMBINATIONS),
        Type = g.Type == nil and 'ALL' or one_of(p .. '.Type', g.Type, COMBINATIONS),
      }
    end),
  }
end

-- A WriteSegmentRequest -> its canonical copy.
local function write_segment_request(v)
  table_at('WriteSegmentRequest', v, true)
  check_keys('', v, { 'Name', 'Dimensions', 'SegmentGroups', 'tags' })
  if v.Name ~= nil and type(v.Name) ~= 'string' then fail('Name', 'expected a string') end
  return {
    Name = v.Name,
    Dimensions = v.Dimensions ~= nil and dimensions('Dimensions', v.Dimensions) or nil,
    SegmentGroups = v.SegmentGroups ~= nil and segment_groups('SegmentGroups', v.SegmentGroups)
      or nil,
    tags = v.tags,
  }
end

---------------------------------------------------------------------------------------------
-- The concise Lua form, translated to the Pinpoint shape (same meaning, one compiler). The
-- Pinpoint checks then run on the translation; so that their errors name the keys the user
-- wrote (`near.lat`, not `Dimensions.Location.GPSPoint.Coordinates.Latitude`), the
-- translation records in `alias` which user key each Pinpoint path it writes stands for.

-- Values given as one string or a list under the user's key `path`, written at Pinpoint path
-- `pp`: an error about the list or an element names `path` (`path[2]` for a list element).
local function concise_values(alias, pp, path, v)
  alias[pp] = path
  if type(v) ~= 'string' then return v end
  alias[pp .. '[1]'] = path
  return { v }
end

local function concise_set(alias, pp, path, v)
  alias[pp] = path
  if type(v) == 'string' then
    return { DimensionType = 'INCLUSIVE', Values = concise_values(alias, pp .. '.Values', path, v) }
  end
  if type(v) == 'table' and v.not_in ~= nil then
    check_keys(path, v, { 'not_in' })
    return { DimensionType = 'EXCLUSIVE',
      Values = concise_values(alias, pp .. '.Values', path .. '.not_in', v.not_in) }
  end
  if type(v) == 'table' and #v > 0 then
    return { DimensionType = 'INCLUSIVE', Values = concise_values(alias, pp .. '.Values', path, v) }
  end
  fail(path, 'expected a value, a list of values or { not_in = list }')
end

local ATTRIBUTE_WORDS = { not_in = 'EXCLUSIVE', contains = 'CONTAINS', before = 'BEFORE',
  after = 'AFTER', between = 'BETWEEN', on = 'ON' }

local function concise_attribute(alias, pp, path, v)
  alias[pp] = path
  if type(v) == 'string' or (type(v) == 'table' and #v > 0) then
    return { AttributeType = 'INCLUSIVE',
      Values = concise_values(alias, pp .. '.Values', path, v) }
  end
  if type(v) == 'table' then
    local word, values = next(v)
    if word ~= nil and next(v, word) == nil and ATTRIBUTE_WORDS[word] then
      return { AttributeType = ATTRIBUTE_WORDS[word],
        Values = concise_values(alias, pp .. '.Values', path .. '.' .. word, values) }
    end
  end
  fail(path, 'expected a value, a list of values, or one of { not_in = }, { contains = }, ' ..
    '{ before = }, { after = }, { between = {from, to} }, { on = }')
end

local METRIC_WORDS = { gt = 'GREATER_THAN', lt = 'LESS_THAN', ge = 'GREATER_THAN_OR_EQUAL',
  le = 'LESS_THAN_OR_EQUAL', eq = 'EQUAL' }

local function concise_metric(alias, pp, path, v)
  alias[pp] = path
  if type(v) == 'number' then
    alias[pp .. '.Value'] = path
    return { ComparisonOperator = 'EQUAL', Value = v }
  end
  if type(v) == 'table' then
    local word, value = next(v)
    if word ~= nil and next(v, word) == nil and METRIC_WORDS[word] then
      alias[pp .. '.Value'] = path .. '.' .. word
      return { ComparisonOperator = METRIC_WORDS[word], Value = value }
    end
  end
  fail(path, 'expected a number or one of { gt = }, { lt = }, { ge = }, { le = }, { eq = }')
end

local CONCISE_DEMOGRAPHIC = { app_version = 'AppVersion', channel = 'Channel',
  device_type = 'DeviceType', make = 'Make', model = 'Model', platform = 'Platform' }
local CONCISE_KEYS = { 'name', 'description', 'filter', 'app_version', 'channel', 'device_type',
  'make', 'model', 'platform', 'country', 'near', 'active', 'inactive', 'attributes',
  'user_attributes', 'metrics' }

-- def -> SegmentDimensions (or nil when def has none), alias (Pinpoint path -> user key).
local function concise_dimensions(def)
  check_keys('', def, CONCISE_KEYS)
  local d, alias = {}, {}
  for word, field in pairs(CONCISE_DEMOGRAPHIC) do
    if def[word] ~= nil then
      d.Demographic = d.Demographic or {}
      d.Demographic[field] = concise_set(alias, 'Dimensions.Demographic.' .. field, word,
        def[word])
    end
  end
  if def.country ~= nil then
    d.Location = { Country = concise_set(alias, 'Dimensions.Location.Country', 'country',
      def.country) }
  end
  if def.near ~= nil then
    local n = table_at('near', def.near, true)
    check_keys('near', n, { 'lat', 'lon', 'km' })
    local pp = 'Dimensions.Location.GPSPoint'
    alias[pp], alias[pp .. '.Coordinates'] = 'near', 'near'
    alias[pp .. '.Coordinates.Latitude'] = 'near.lat'
    alias[pp .. '.Coordinates.Longitude'] = 'near.lon'
    alias[pp .. '.RangeInKilometers'] = 'near.km'
    d.Location = d.Location or {}
    d.Location.GPSPoint = { Coordinates = { Latitude = n.lat, Longitude = n.lon },
      RangeInKilometers = n.km }
  end
  if def.active ~= nil and def.inactive ~= nil then
    fail('active', 'give active or inactive, not both')
  end
  local word = def.active ~= nil and 'active' or def.inactive ~= nil and 'inactive' or nil
  if word then
    alias['Dimensions.Behavior.Recency.Duration'] = word
    d.Behavior = { Recency = { Duration = def[word], RecencyType = word:upper() } }
  end
  for _, pair in ipairs { { 'attributes', 'Attributes' },
      { 'user_attributes', 'UserAttributes' } } do
    local key, field = pair[1], pair[2]
    local v = def[key]
    if v ~= nil then
      table_at(key, v, true)
      alias['Dimensions.' .. field] = key
      d[field] = {}
      for k, x in pairs(v) do
        d[field][k] = concise_attribute(alias, 'Dimensions.' .. field .. '.' .. tostring(k),
          key .. '.' .. tostring(k), x)
      end
    end
  end
  if def.metrics ~= nil then
    table_at('metrics', def.metrics, true)
    alias['Dimensions.Metrics'] = 'metrics'
    d.Metrics = {}
    for k, x in pairs(def.metrics) do
      d.Metrics[k] = concise_metric(alias, 'Dimensions.Metrics.' .. tostring(k),
        'metrics.' .. tostring(k), x)
    end
  end
  return next(d) and d or nil, alias
end

-- The user's key for a Pinpoint path the concise form wrote: the longest recorded prefix,
-- with the rest of the path kept (`...Values[2]` -> `attributes.plan[2]`).
local function concise_path(alias, path)
  local best
  for k in pairs(alias) do
    local rest = path:sub(#k + 1, #k + 1)
    if path:sub(1, #k) == k and (rest == '' or rest == '.' or rest == '[') and
        (best == nil or #k > #best) then
      best = k
    end
  end
  if best == nil then return path end
  return alias[best] .. path:sub(#best + 1)
end

---------------------------------------------------------------------------------------------
-- Stored segments

local function prepare(sql)
  local st, err = core.prepare(sql)
  if st == nil then error(err, 0) end
  return st
end

local function app_of(opts)
  return opts and opts.app or core.app()
end

-- The stored row of segment id at version (latest when nil), or nil.
local function stored(id, version, app)
  local st <close> = prepare(
    'SELECT version, name, segment_type, definition FROM segments WHERE app_id = :app AND ' ..
    'id = :id AND (:version = 0 OR version = :version) ORDER BY version DESC LIMIT 1')
  st:bind { app = app, id = id, version = version or 0 }
  local v, name, kind, def = st:first()
  if v == nil then return nil end
  return { version = v, name = name, type = kind, definition = json.decode(def) }
end

-- The canonical request of a stored declarative row, or nil, err: a version stored before a
-- check was added (a BETWEEN whose start is after its end, a Channel no endpoint can have)
-- is reported, not raised as a bare validation table.
local function stored_request(id, row)
  local ok, res = pcall(write_segment_request, row.definition)
  if ok then return res end
  return nil, string.format("segment '%s' version %d: %s", id, row.version,
    type(res) == 'table' and res.msg or tostring(res))
end

---------------------------------------------------------------------------------------------
-- Compilation to SQL. A compiler carries the parameters, the time Recency is measured from
-- and the stored segments being expanded (to refuse cycles).

local Compiler = {}
Compiler.__index = Compiler

-- The value indexes of app (runtime/segment.c): 'Kind.name' -> index id.
local function value_indexes(app)
  local st <close> = prepare('SELECT id, kind, name FROM value_indexes WHERE app_id = :app')
  st:bind { app = app }
  local n, ids, kinds, names = st:fetch(100000)
  if n == nil then error(ids, 0) end
  local out = {}
  for i = 1, n do out[kinds[i] .. '.' .. names[i]] = ids[i] end
  return out
end

local function new_compiler(opts)
  local app = opts.app or core.app()
  -- used: every attribute and metric the definition reads, 'Kind.name' -> { kind, name }.
  -- probe: the SQL checks given endpoints (contains()) or is not run; no indexed condition
  -- drives it, so none is measured (Compiler:indexed).
  return setmetatable({ params = {}, n = 0, now_ms = opts.now_ms or clock.now(),
    app = app, expanding = {}, clauses = {}, indexes = value_indexes(app), used = {},
    probe = opts.probe }, Compiler)
end

function Compiler:param(v)
  self.n = self.n + 1
  local name = 's' .. self.n
  self.params[name] = v
  return ':' .. name
end

function Compiler:list(values)
  local out = {}
  for i, v in ipairs(values) do out[i] = self:param(v) end
  return table.concat(out, ', ')
end

local function combine(op, parts)
  if #parts == 0 then return '1' end
  if op == 'ANY' then return '(' .. table.concat(parts, ' OR ') .. ')' end
  if op == 'NONE' then return 'NOT (' .. table.concat(parts, ' OR ') .. ')' end
  if #parts == 1 then return parts[1] end
  return '(' .. table.concat(parts, ' AND ') .. ')'
end

function Compiler:set(column, d)
  local list = self:list(d.Values)
  if d.DimensionType == 'EXCLUSIVE' then
    return '(e.' .. column .. ' IS NULL OR e.' .. column .. ' NOT IN (' .. list .. '))'
  end
  return '(e.' .. column .. ' IS NOT NULL AND e.' .. column .. ' IN (' .. list .. '))'
end

-- An indexed condition that matches at most segment.drive_limit values drives the query:
-- SQLite reads the matching endpoints by id instead of scanning them all. Reading one
-- endpoint by id costs about as much as scanning ten, so a larger set is better checked row
-- by row (measured on 1,000,000 endpoints: a third of them read by id took 5 times the scan).
segment.drive_limit = 10000

-- The endpoints whose indexed value of 'Kind.name' satisfies cond (over indexed_values.value
-- and .instant), as a condition on e; nil when that name has no index. Two forms, same
-- meaning: `e.id IN (...)` lets SQLite start from the index (used when the condition is
-- selective, `drivable` says it can use the index's order, and the compiler is not making
-- contains()'s one-row check, where building the whole list would dominate); otherwise a
-- correlated EXISTS looks up the endpoint's own values (index indexed_values_endpoint).
-- The table keeps its name (no alias) so that EXPLAIN QUERY PLAN names it.
function Compiler:indexed(key, cond, drivable)
  local id = self.indexes[key]
  if id == nil then return nil end
  local where = 'indexed_values.index_id = ' .. self:param(id) .. ' AND ' .. cond
  if drivable and not self.probe then
    local limit = math.tointeger(segment.drive_limit) or 0
    local st <close> = prepare('SELECT count(*) FROM (SELECT 1 FROM indexed_values WHERE ' ..
      where .. ' LIMIT ' .. (limit + 1) .. ')')
    st:bind(self.params)
    local n, err = st:first()
    if n == nil then error(err, 0) end
    if n <= limit then
      return 'e.id IN (SELECT indexed_values.endpoint_id FROM indexed_values WHERE ' .. where .. ')'
    end
  end
  return 'EXISTS (SELECT 1 FROM indexed_values WHERE indexed_values.endpoint_id = e.id AND ' ..
    where .. ')'
end

-- The rows of json_each over the values of attribute `name` in column, as `j`.
function Compiler:attribute_values(column, name)
  if name:find('"', 1, true) then
    -- A JSON path label cannot quote '"': select the member by key instead.
    return 'json_each(e.' .. column .. ') a, json_each(a.value) j WHERE a.key = ' ..
      self:param(name) .. ' AND '
  end
  return 'json_each(e.' .. column .. ', ' .. self:param('$."' .. name .. '"') .. ') j WHERE '
end

local ATTRIBUTE_COLUMNS = { Attributes = 'attributes', UserAttributes = 'user_attributes' }

-- An attribute dimension. With a value index the condition reads indexed_values (value is
-- the element, instant its date-time); without, json_each over the endpoint's JSON (j).
function Compiler:attribute(kind, name, d)
  local key = kind .. '.' .. name
  self.used[key] = { kind, name }
  local t, values = d.AttributeType, d.Values
  local index = self.indexes[key] ~= nil
  local value = index and 'indexed_values.value' or 'j.value'
  local cond
  if t == 'INCLUSIVE' or t == 'EXCLUSIVE' then
    cond = value .. ' IN (' .. self:list(values) .. ')'
  elseif t == 'CONTAINS' then
    local parts = {}
    for i, v in ipairs(values) do parts[i] = 'instr(' .. value .. ', ' .. self:param(v) .. ') > 0' end
    cond = '(' .. table.concat(parts, ' OR ') .. ')'
  elseif t == 'ON' then
    local days = {}
    for i, v in ipairs(values) do days[i] = select(2, core.instant(v)) end
    cond = 'herald_day(' .. value .. ') IN (' .. self:list(days) .. ')'
  else
    local instant = index and 'indexed_values.instant' or 'herald_instant(j.value)'
    local a = self:param((core.instant(values[1])))
    if t == 'BEFORE' then cond = instant .. ' < ' .. a
    elseif t == 'AFTER' then cond = instant .. ' > ' .. self:param(between_end(values[1]))
    else cond = instant .. ' BETWEEN ' .. a .. ' AND ' .. self:param(between_end(values[2])) end
  end
  local drivable = t ~= 'EXCLUSIVE' and t ~= 'CONTAINS' and t ~= 'ON'
  local member = self:indexed(key, cond, drivable) or ('EXISTS (SELECT 1 FROM ' ..
    self:attribute_values(ATTRIBUTE_COLUMNS[kind], name) .. cond .. ')')
  if t == 'EXCLUSIVE' then return 'NOT ' .. member end
  return member
end

function Compiler:metric(name, d)
  local key = 'Metrics.' .. name
  self.used[key] = { 'Metrics', name }
  local op = METRIC_OPERATORS[d.ComparisonOperator]
  if self.indexes[key] then
    return self:indexed(key, 'indexed_values.value ' .. op .. ' ' .. self:param(d.Value), true)
  end
  local value
  if name:find('"', 1, true) then
    value = '(SELECT j.value FROM json_each(e.metrics) j WHERE j.key = ' .. self:param(name) .. ')'
  else
    value = 'json_extract(e.metrics, ' .. self:param('$."' .. name .. '"') .. ')'
  end
  return 'coalesce(' .. value .. ' ' .. op .. ' ' .. self:param(d.Value) .. ', 0)'
end

function Compiler:gps(g)
  local lat, lon = g.Coordinates.Latitude, g.Coordinates.Longitude
  local r = g.RangeInKilometers
  local parts = {}
  -- A conservative bounding box first, so the exact distance runs on few rows.
  local angle = r / 6371.0
  local dlat = math.deg(angle) * (1 + 1e-9) + 1e-7
  parts[#parts + 1] = 'e.latitude BETWEEN ' .. self:param(lat - dlat) .. ' AND ' ..
    self:param(lat + dlat)
  if angle < math.pi / 2 and lat + dlat < 90 and lat - dlat > -90 then
    local s = math.sin(angle) / math.cos(math.rad(lat))
    if s < 1 then
      local dlon = math.deg(math.asin(s)) * (1 + 1e-9) + 1e-7
      if lon - dlon > -180 and lon + dlon < 180 then
        parts[#parts + 1] = 'e.longitude BETWEEN ' .. self:param(lon - dlon) .. ' AND ' ..
          self:param(lon + dlon)
      end
    end
  end
  parts[#parts + 1] = 'herald_km(' .. self:param(lat) .. ', ' .. self:param(lon) ..
    ', e.latitude, e.longitude) <= ' .. self:param(r)
  return 'coalesce(' .. table.concat(parts, ' AND ') .. ', 0)'
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- SegmentDimensions -> SQL; every criterion must hold. `label` prefixes explain()'s clauses.
function Compiler:dimensions(d, label)
  local parts = {}
  local function add(name, sql)
    parts[#parts + 1] = sql
    if label then self.clauses[#self.clauses + 1] = { label = label .. name, sql = sql } end
  end
  for _, k in ipairs(sorted_keys(d.Demographic)) do
    add('Demographic.' .. k, self:set(DEMOGRAPHIC_COLUMNS[k], d.Demographic[k]))
  end
  if d.Location and d.Location.Country then
    add('Location.Country', self:set('country', d.Location.Country))
  end
  if d.Location and d.Location.GPSPoint then
    add('Location.GPSPoint', self:gps(d.Location.GPSPoint))
  end
  if d.Behavior then
    local r = d.Behavior.Recency
    local cutoff = self:param(clock.format(self.now_ms - DURATIONS[r.Duration]))
    if r.RecencyType == 'ACTIVE' then
      add('Behavior.Recency', 'coalesce(e.last_activity >= ' .. cutoff .. ', 0)')
    else
      add('Behavior.Recency', '(e.last_activity IS NULL OR e.last_activity < ' .. cutoff .. ')')
    end
  end
  for _, k in ipairs(sorted_keys(d.Attributes)) do
    add('Attributes.' .. k, self:attribute('Attributes', k, d.Attributes[k]))
  end
  for _, k in ipairs(sorted_keys(d.UserAttributes)) do
    add('UserAttributes.' .. k, self:attribute('UserAttributes', k, d.UserAttributes[k]))
  end
  for _, k in ipairs(sorted_keys(d.Metrics)) do
    add('Metrics.' .. k, self:metric(k, d.Metrics[k]))
  end
  return combine('ALL', parts)
end

function Compiler:source(src, path)
  local row = stored(src.Id, src.Version, self.app)
  if row == nil then
    fail(path .. '.Id', "no segment '%s'%s in application '%s'", src.Id,
      src.Version and (' version ' .. src.Version) or '', self.app)
  end
  if row.type == 'IMPORT' then
    return 'EXISTS (SELECT 1 FROM segment_members m WHERE m.app_id = e.app_id AND ' ..
      'm.segment_id = ' .. self:param(src.Id) .. ' AND m.version = ' .. self:param(row.version) ..
      ' AND m.endpoint_id = e.id)'
  end
  local key = src.Id .. '@' .. row.version
  if self.expanding[key] then fail(path, "segment '%s' refers to itself", src.Id) end
  local def, err = stored_request(src.Id, row)
  if def == nil then fail(path, '%s', err) end
  self.expanding[key] = true
  local sql = self:request(def)
  self.expanding[key] = nil
  return sql
end

-- A canonical WriteSegmentRequest -> SQL.
function Compiler:request(def, label)
  local parts = {}
  if def.Dimensions then parts[#parts + 1] = self:dimensions(def.Dimensions, label and '') end
  if def.SegmentGroups then
    local groups = {}
    for gi, g in ipairs(def.SegmentGroups.Groups) do
      local path = 'SegmentGroups.Groups[' .. gi .. ']'
      local sources, dims = {}, {}
      for si, s in ipairs(g.SourceSegments) do
        sources[si] = self:source(s, path .. '.SourceSegments[' .. si .. ']')
      end
      for di, d in ipairs(g.Dimensions) do
        dims[di] = self:dimensions(d, label and (path .. '.Dimensions[' .. di .. '].'))
      end
      groups[gi] = combine('ALL', { combine(g.SourceType, sources), combine(g.Type, dims) })
      if label then self.clauses[#self.clauses + 1] = { label = path, sql = groups[gi] } end
    end
    parts[#parts + 1] = combine(def.SegmentGroups.Include, groups)
  end
  return combine('ALL', parts)
end

---------------------------------------------------------------------------------------------
-- Segment objects

local watchers = {}

local function new_segment(fields)
  local seg = setmetatable(fields, Segment)
  for _, fn in pairs(watchers) do fn(seg) end
  return seg
end

-- watch(fn) -> stop(): fn(seg) is called for every segment made until stop() (`herald index
-- SCRIPT` learns this way which segments a script defines).
function segment.watch(fn)
  local key = {}
  watchers[key] = fn
  return function() watchers[key] = nil end
end

-- Raises a validation failure at the caller's caller (the script that defined the segment).
local function checked(level, fn, ...)
  local r = table.pack(pcall(fn, ...))
  if r[1] then return table.unpack(r, 2, r.n) end
  local e = r[2]
  if type(e) == 'table' and e.msg then error('herald.segment: ' .. e.msg, level + 1) end
  error(e, 0)
end

-- Checks now that every stored base segment exists, so a definition naming a missing one
-- fails where it is written.
local function check_sources(def, app)
  local c = new_compiler { app = app, probe = true }
  c:request(def)
end

local function define(def)
  if type(def) ~= 'table' then error('herald.segment: expected a table', 2) end
  if type(def.name) ~= 'string' or def.name == '' then
    error('herald.segment: name: required, a non-empty string', 2)
  end
  if def.filter ~= nil and type(def.filter) ~= 'function' then
    error('herald.segment ' .. def.name .. ': filter: must be a function(endpoint) -> boolean', 2)
  end
  local request = checked(2, function()
    local dims, alias = concise_dimensions(def)
    local ok, res = pcall(write_segment_request, { Name = def.name, Dimensions = dims })
    if ok then return res end
    if type(res) == 'table' and res.path then
      fail(concise_path(alias, res.path), '%s', res.reason)
    end
    error(res, 0)
  end)
  return new_segment { name = def.name, description = def.description, filter = def.filter,
    definition = request }
end

-- from_pinpoint(json_text_or_table [, {name =, filter =}]) -> segment
function segment.from_pinpoint(doc, opts)
  opts = opts or {}
  if type(doc) == 'string' then
    local ok, decoded = pcall(json.decode, doc)
    if not ok or type(decoded) ~= 'table' then
      error('herald.segment.from_pinpoint: not a JSON object: ' .. tostring(decoded), 2)
    end
    doc = decoded
  end
  local request = checked(2, write_segment_request, doc)
  local name = opts.name or request.Name
  if type(name) ~= 'string' or name == '' then
    error('herald.segment.from_pinpoint: Name: required, a non-empty string', 2)
  end
  if opts.filter ~= nil and type(opts.filter) ~= 'function' then
    error('herald.segment.from_pinpoint: filter: must be a function(endpoint) -> boolean', 2)
  end
  checked(2, check_sources, request, opts.app)
  return new_segment { name = name, filter = opts.filter, definition = request }
end

local function compose(op)
  return function(list)
    if type(list) ~= 'table' then
      error('herald.segment.' .. op .. ': expected a list of segments', 2)
    end
    local names = {}
    for i, s in ipairs(list) do
      if getmetatable(s) ~= Segment then
        error('herald.segment.' .. op .. ': item ' .. i .. ' is not a segment', 2)
      end
      names[i] = s.name
    end
    local name = list.name or (op .. '(' .. table.concat(names, ', ') .. ')')
    return new_segment { name = name, op = op:upper(), children = { table.unpack(list) } }
  end
end
segment.all = compose('all')
segment.any = compose('any')
segment.none = compose('none')

-- SQL of a segment that is not a composition, into compiler c.
local function leaf_sql(seg, c, label)
  local sql = c:request(seg.definition, label)
  if seg.static then
    sql = combine('ALL', { sql, 'EXISTS (SELECT 1 FROM segment_members m WHERE m.app_id = ' ..
      'e.app_id AND m.segment_id = ' .. c:param(seg.id) .. ' AND m.version = ' ..
      c:param(seg.version) .. ' AND m.endpoint_id = e.id)' })
  end
  return sql
end

local function has_filter(seg)
  if seg.filter then return true end
  for _, child in ipairs(seg.children or {}) do
    if has_filter(child) then return true end
  end
  return false
end

-- Every clause the compiler emits is two-valued (never NULL), so NOT and NONE keep endpoints
-- whose fields are missing, as the reference semantics say.

-- The SQL condition and the Lua predicate of seg. With filters under ANY or NONE, the SQL is
-- a superset and the predicate decides, asking each child's contains().
local function compile_into(seg, c, opts)
  if not seg.children then
    return leaf_sql(seg, c, opts.label), seg.filter
  end
  local wheres, filters = {}, {}
  for i, child in ipairs(seg.children) do
    wheres[i], filters[i] = compile_into(child, c, { now_ms = opts.now_ms, app = opts.app })
  end
  if not has_filter(seg) then return combine(seg.op, wheres), nil end
  if seg.op == 'ALL' then
    local fs = {}
    for i = 1, #seg.children do
      if filters[i] then fs[#fs + 1] = filters[i] end
    end
    return combine('ALL', wheres), function(ep)
      for _, f in ipairs(fs) do
        if not f(ep) then return false end
      end
      return true
    end
  end
  local function member(i, ep)
    return seg.children[i]:contains(ep.Id, opts)
  end
  if seg.op == 'ANY' then
    return combine('ANY', wheres), function(ep)
      for i = 1, #seg.children do
        if member(i, ep) then return true end
      end
      return false
    end
  end
  -- NONE: children without a filter exclude in SQL; the others in the predicate.
  local plain = {}
  for i, child in ipairs(seg.children) do
    if not has_filter(child) then plain[#plain + 1] = wheres[i] end
  end
  return combine('NONE', plain), function(ep)
    for i, child in ipairs(seg.children) do
      if has_filter(child) and member(i, ep) then return false end
    end
    return true
  end
end

-- Indexes created on demand. When a segment is compiled (count, ids, each, sample, explain,
-- campaign materialisation; not contains(), which must stay a cheap read), every attribute
-- and metric it reads that has no value index gets one, recorded in the store, so the next
-- evaluation is answered from the index. Creating one reads the application's endpoints once
-- (about a second per million endpoints) in one short write transaction. segment.auto_index =
-- false turns this off (`herald index` still creates them). A creation that fails (the store
-- is busy or read-only) is not retried by this process; the segment then reads the JSON.
segment.auto_index = true
local demand_failed = {}

-- Creates the missing indexes that compiler c found; true when it created any.
local function create_on_demand(c)
  if not segment.auto_index then return false end
  local created = false
  for key, used in pairs(c.used) do
    local tried = c.app .. '\0' .. key
    if c.indexes[key] == nil and not demand_failed[tried] and core.index_check(used[1], used[2]) then
      local ok, err = core.index_add(used[1], used[2], c.app, 'demand')
      if ok == nil then demand_failed[tried] = err else created = true end
    end
  end
  return created
end

-- compile([opts]) -> { where =, params =, filter = }. opts.now_ms: the time Recency counts
-- back from (default now); opts.app: the application that stored base segments belong to.
-- Creates the value indexes the segment lacks first (segment.auto_index).
function Segment:compile(opts)
  opts = opts or {}
  local c = new_compiler(opts)
  local where, filter = checked(2, compile_into, self, c, opts)
  if create_on_demand(c) then
    c = new_compiler(opts)
    where, filter = checked(2, compile_into, self, c, opts)
  end
  return { where = where, params = c.params, filter = filter }
end

---------------------------------------------------------------------------------------------
-- Evaluation

local function query_params(compiled, app)
  local p = {}
  for k, v in pairs(compiled.params) do p[k] = v end
  p.app = app
  return p
end

-- Endpoint view: fields a filter reads, pushed as SQL columns. Each field is a path with an
-- SQL expression; `list` fields hold JSON arrays and are decoded (cached by text, read-only).
local SCALAR_FIELDS = {
  Id = 'e.id', ChannelType = 'e.channel_type', Address = 'e.address',
  EndpointStatus = 'e.endpoint_status', OptOut = 'e.opt_out',
  EffectiveDate = 'e.effective_date', CreationDate = 'e.creation_date',
  CohortId = 'CAST(e.cohort_id AS TEXT)', ApplicationId = 'e.app_id', RequestId = 'e.request_id',
}
local SUB_FIELDS = {
  Demographic = { AppVersion = 'e.app_version', Locale = 'e.locale', Make = 'e.make',
    Model = 'e.model', ModelVersion = 'e.model_version', Platform = 'e.platform',
    PlatformVersion = 'e.platform_version', Timezone = 'e.timezone' },
  Location = { City = 'e.city', Country = 'e.country', Latitude = 'e.latitude',
    Longitude = 'e.longitude', PostalCode = 'e.postal_code', Region = 'e.region' },
  User = { UserId = 'e.user_id' },
}
local MAP_COLUMNS = { Attributes = 'attributes', Metrics = 'metrics',
  UserAttributes = 'user_attributes' }

local readonly_mt = {
  __newindex = function() error('segment endpoint views are read-only', 2) end,
}

local function readonly(values)
  return setmetatable({}, { __index = values, __len = function() return #values end,
    __newindex = readonly_mt.__newindex, __pairs = function() return next, values, nil end })
end

local list_cache, list_cache_size = {}, 0

local function readonly_list(text)
  local l = list_cache[text]
  if l then return l end
  l = readonly(json.decode(text))
  if list_cache_size > 10000 then list_cache, list_cache_size = {}, 0 end
  list_cache[text] = l
  list_cache_size = list_cache_size + 1
  return l
end

-- A view over the current row. fields: list of { table = name, key = k, sql = expr,
-- params = {}, list = bool }; returns the top table and a setter that fills one row.
local function new_view(app, fields, on_miss)
  local tables, pushed = {}, {}
  -- current.id, or current.rowid when the stream does not fetch ids (count()).
  local current = { id = nil, rowid = nil, full = nil }
  local function id()
    if current.id == nil then
      local st <close> = prepare('SELECT id FROM endpoints WHERE rowid = :rowid')
      st:bind { rowid = current.rowid }
      current.id = st:first()
    end
    return current.id
  end
  local function full()
    if current.full == nil then
      local ep = require('herald.endpoints').get(id(), { app = app })
      current.full = ep or {}
    end
    return current.full
  end
  local function make(name, parent_get)
    local t = {}
    pushed[name] = {}
    setmetatable(t, {
      __index = function(_, k)
        if pushed[name][k] then return nil end
        if on_miss then on_miss(name, k) end
        local src = parent_get()
        local v = src and src[k]
        if type(v) == 'table' then return readonly(v) end
        return v
      end,
      __newindex = readonly_mt.__newindex,
      __pairs = function()
        return next, parent_get() or {}, nil
      end,
    })
    tables[name] = t
    return t
  end
  local top = make('top', full)
  local user = make('User', function() return full().User end)
  for _, n in ipairs { 'Demographic', 'Location', 'Attributes', 'Metrics' } do
    local sub = make(n, function() return full()[n] end)
    rawset(top, n, sub)
    pushed.top[n] = true
  end
  local ua = make('UserAttributes', function() return (full().User or {}).UserAttributes end)
  rawset(user, 'UserAttributes', ua)
  pushed.User.UserAttributes = true
  rawset(top, 'User', user)
  pushed.top.User = true
  rawset(top, 'events', function(_, o)
    o = o or {}
    return require('herald.core.store').event_for_endpoint(id(), o.since, o.type,
      o.limit or 100, app)
  end)
  pushed.top.events = true
  for _, f in ipairs(fields) do pushed[f.table][f.key] = true end
  return top, tables, current
end

-- view([opts]) -> function(id [, ep]) returning the filter's view of endpoint id: the view
-- contains() and campaign runs evaluate a filter on, the one stream() gives its rows (with
-- ep:events, and Demographic, Location, User and the maps always tables). Nothing is read
-- until the filter reads a field; then the endpoint is loaded once (ep, when the caller holds
-- it already, saves that read). The one view is reused for each id: a filter must not keep it.
function segment.view(opts)
  local top, _, current = new_view(app_of(opts), {})
  return function(id, ep)
    current.id, current.rowid, current.full = id, nil, ep
    return top
  end
end

-- Streams the SQL survivors of seg and calls on_member(rowid, id) for each member. With a
-- filter, the fields it reads are pushed as SQL columns as they are discovered.
local function stream(seg, opts, on_member, without_ids)
  local app = app_of(opts)
  local compiled = seg:compile { now_ms = opts.now_ms, app = app }
  local params = query_params(compiled, app)
  local base = ' FROM endpoints e WHERE e.app_id = :app AND (' .. compiled.where .. ')'
  local filter = compiled.filter
  if filter == nil then
    local st <close> = prepare('SELECT e.rowid, e.id' .. base)
    st:bind(params)
    while true do
      local n, rowids, ids = st:fetch(BATCH)
      if n == nil then error(rowids, 0) end
      if n == 0 then break end
      for i = 1, n do on_member(rowids[i], ids[i]) end
    end
    return
  end
  -- The filter's view starts with no pushed field: a read of a field that is not pushed loads
  -- the full endpoint once for that row and records the field. At the next batch boundary the
  -- query restarts after the last row with the recorded fields as columns. Batches start
  -- small and double while no field is new, so the slow reads stay few. The scan is in rowid
  -- order (NOT INDEXED), which makes the restart point exact.
  local fields, seen, dirty = {}, {}, false
  local function on_miss(tname, k)
    local key = tname .. '.' .. tostring(k)
    if seen[key] or type(k) ~= 'string' then return end
    seen[key] = true
    local sql, list
    if tname == 'top' then sql = SCALAR_FIELDS[k]
    elseif SUB_FIELDS[tname] then sql = SUB_FIELDS[tname][k]
    elseif MAP_COLUMNS[tname] and not k:find('["\\]') then
      -- herald_member skips building a parse tree; json_extract handles escaped text.
      local col = 'e.' .. MAP_COLUMNS[tname]
      sql = { key = k, path = '$."' .. k .. '"', col = col }
      list = tname ~= 'Metrics'
    end
    if sql then
      fields[#fields + 1] = { table = tname, key = k, sql = sql, list = list }
      dirty = true
    end
  end
  local after, size = 0, 16
  local first = without_ids and 2 or 3 -- the batch index of the first field column
  while true do
    local cols = { 'e.rowid' }
    if not without_ids then cols[2] = 'e.id' end
    for i, f in ipairs(fields) do
      if type(f.sql) == 'table' then
        params['k' .. i], params['p' .. i] = f.sql.key, f.sql.path
        cols[#cols + 1] = string.format("CASE WHEN instr(%s, '\\') THEN json_extract(%s, :p%d) " ..
          "ELSE herald_member(%s, :k%d) END", f.sql.col, f.sql.col, i, f.sql.col, i)
      else
        cols[#cols + 1] = f.sql
      end
    end
    local top, tables, current = new_view(app, fields, on_miss)
    local nf = #fields
    local ftables, fkeys, flist = {}, {}, {}
    for i, f in ipairs(fields) do
      ftables[i], fkeys[i], flist[i] = tables[f.table], f.key, f.list
    end
    params.after = after
    local st <close> = prepare('SELECT ' .. table.concat(cols, ', ') ..
      ' FROM endpoints e NOT INDEXED WHERE e.app_id = :app AND e.rowid > :after AND (' ..
      compiled.where .. ') ORDER BY e.rowid')
    st:bind(params)
    dirty = false
    repeat
      local batch = { st:fetch(size) }
      local n = batch[1]
      if n == nil then error(batch[2], 0) end
      if n == 0 then return end
      local rowids, ids = batch[2], without_ids and {} or batch[3]
      for i = 1, n do
        current.rowid, current.id, current.full = rowids[i], ids[i], nil
        for f = 1, nf do
          local v = batch[f + first][i]
          if v ~= nil and flist[f] then v = readonly_list(v) end
          rawset(ftables[f], fkeys[f], v)
        end
        if filter(top) then on_member(rowids[i], ids[i]) end
      end
      after = rowids[n]
      if not dirty then size = math.min(BATCH, size * 2) end
    until dirty
  end
end

-- count([opts]) -> number of members. opts: app, now_ms.
function Segment:count(opts)
  opts = opts or {}
  local app = app_of(opts)
  if not has_filter(self) then
    local compiled = self:compile { now_ms = opts.now_ms, app = app }
    local st <close> = prepare('SELECT count(*) FROM endpoints e WHERE e.app_id = :app AND (' ..
      compiled.where .. ')')
    st:bind(query_params(compiled, app))
    local n, err = st:first()
    if n == nil then error(err, 0) end
    return n
  end
  local n = 0
  stream(self, opts, function() n = n + 1 end, true)
  return n
end

-- ids([opts]) -> list of member endpoint ids, in storage order.
function Segment:ids(opts)
  local out = {}
  stream(self, opts or {}, function(_, id) out[#out + 1] = id end)
  return out
end

-- each(fn [, opts]): fn(endpoint) for every member, as full endpoints (EndpointResponse
-- shape), read in batches; memory holds one batch of ids at a time.
function Segment:each(fn, opts)
  opts = opts or {}
  local endpoints = require('herald.endpoints')
  local pending = {}
  local function flush()
    local ids = pending
    pending = {}
    for _, id in ipairs(ids) do
      local ep = endpoints.get(id, { app = app_of(opts) })
      if ep then fn(ep) end
    end
  end
  stream(self, opts, function(_, id)
    pending[#pending + 1] = id
    if #pending >= BATCH then flush() end
  end)
  flush()
end

-- sample([n = 10 [, opts]]) -> up to n members picked at random (full endpoints).
function Segment:sample(n, opts)
  n = n or 10
  local picked, seen = {}, 0
  stream(self, opts or {}, function(_, id)
    seen = seen + 1
    if #picked < n then picked[#picked + 1] = id
    else
      local j = math.random(seen)
      if j <= n then picked[j] = id end
    end
  end)
  local out, endpoints = {}, require('herald.endpoints')
  for _, id in ipairs(picked) do out[#out + 1] = endpoints.get(id, opts) end
  return out
end

-- contains(endpoint_id [, opts]) -> boolean. The statement is prepared once per segment and
-- application; Recency cutoffs are refreshed every second.
function Segment:contains(id, opts)
  opts = opts or {}
  local app = app_of(opts)
  local now = opts.now_ms or clock.now()
  local cache = rawget(self, '_contains')
  if cache == nil or cache.app ~= app or cache.now_ms ~= opts.now_ms or
      (opts.now_ms == nil and now - cache.at > 1000) then
    if cache then cache.st:close() end
    local c = new_compiler { now_ms = now, app = app, probe = true }
    local where, filter = checked(2, compile_into, self, c, opts)
    cache = { app = app, at = now, now_ms = opts.now_ms, filter = filter,
      params = query_params({ params = c.params }, app),
      st = prepare('SELECT 1 FROM endpoints e WHERE e.app_id = :app AND e.id = :id AND (' ..
        where .. ')') }
    rawset(self, '_contains', cache)
  end
  cache.params.id = id
  cache.st:bind(cache.params)
  local found = cache.st:first() ~= nil
  if not found or cache.filter == nil then return found end
  return cache.filter(segment.view { app = app }(id)) and true or false
end

local explain_mt = {
  __tostring = function(x)
    local lines = { 'segment ' .. x.name, 'SQL: ' .. x.sql, 'plan:' }
    for _, p in ipairs(x.plan) do lines[#lines + 1] = '  ' .. p end
    lines[#lines + 1] = 'clauses (endpoints each keeps on its own):'
    for _, cl in ipairs(x.clauses) do
      lines[#lines + 1] = string.format('  %-40s %d', cl.label, cl.count)
    end
    lines[#lines + 1] = 'declarative total: ' .. x.declarative
    if x.filtered then lines[#lines + 1] = 'after the Lua filter: ' .. x.filtered end
    if #x.indexes > 0 then lines[#lines + 1] = 'attribute and metric indexes:' end
    for _, ix in ipairs(x.indexes) do
      lines[#lines + 1] = string.format('  %-40s %s', ix.name, ix.note)
    end
    return table.concat(lines, '\n')
  end,
}

-- explain([opts]) -> { sql, params, plan = {lines}, clauses = {{label, sql, count}},
-- declarative = n, filtered = n or nil, indexes = {{name, indexed, note}} }; tostring()
-- renders it for the REPL. Missing value indexes are created first, as compile() does.
function Segment:explain(opts)
  opts = opts or {}
  local app = app_of(opts)
  local c = new_compiler { now_ms = opts.now_ms, app = app }
  local function run() return compile_into(self, c, { label = true }) end
  local where = checked(2, run)
  if create_on_demand(c) then
    c = new_compiler { now_ms = opts.now_ms, app = app }
    where = checked(2, run)
  end
  local params = query_params({ params = c.params }, app)
  local sql = 'SELECT count(*) FROM endpoints e WHERE e.app_id = :app AND (' .. where .. ')'
  local out = setmetatable({ name = self.name, sql = sql, params = params, plan = {},
    clauses = {}, indexes = {} }, explain_mt)
  for _, key in ipairs(sorted_keys(c.used)) do
    local kind, name = c.used[key][1], c.used[key][2]
    local note
    if c.indexes[key] then
      note = 'value index #' .. c.indexes[key]
    else
      local ok, why = core.index_check(kind, name)
      if not ok then note = 'not indexable: ' .. why
      elseif demand_failed[app .. '\0' .. key] then
        note = 'no index (creating it failed: ' .. demand_failed[app .. '\0' .. key] .. ')'
      else note = 'no index; `herald index add ' .. key .. '` would help' end
    end
    out.indexes[#out.indexes + 1] = { name = key, indexed = c.indexes[key] ~= nil, note = note }
  end
  local st <close> = prepare('EXPLAIN QUERY PLAN ' .. sql)
  st:bind(params)
  local n, _, _, _, detail = st:fetch(1000)
  for i = 1, n or 0 do out.plan[i] = detail[i] end
  local function count(cond)
    local q <close> = prepare('SELECT count(*) FROM endpoints e WHERE e.app_id = :app AND (' ..
      cond .. ')')
    q:bind(params)
    return (q:first())
  end
  for i, cl in ipairs(c.clauses) do
    out.clauses[i] = { label = cl.label, sql = cl.sql, count = count(cl.sql) }
  end
  out.declarative = count(where)
  if has_filter(self) then out.filtered = self:count(opts) end
  return out
end

-- indexable([opts]) -> sorted list of the attributes and metrics ('Attributes.plan',
-- 'UserAttributes.tier', 'Metrics.score') the declarative part reads, through compositions
-- and stored base segments.
function Segment:indexable(opts)
  opts = opts or {}
  local c = new_compiler { now_ms = opts.now_ms, app = app_of(opts), probe = true }
  checked(2, compile_into, self, c, opts)
  return sorted_keys(c.used)
end

function Segment:__tostring()
  return 'segment ' .. self.name
end

-- to_pinpoint() -> the WriteSegmentRequest (a table) of a declarative segment.
function Segment:to_pinpoint()
  if self.children or self.static then
    error('herald.segment: ' .. self.name .. ' is a composition or an import; it has no ' ..
      'WriteSegmentRequest form', 2)
  end
  return self.definition
end

---------------------------------------------------------------------------------------------
-- Stored segments: versions and imports.

-- save(seg [, {id =, app =}]) -> id, version. A Lua filter or a composition cannot be stored.
function segment.save(seg, opts)
  opts = opts or {}
  if getmetatable(seg) ~= Segment then error('herald.segment.save: expected a segment', 2) end
  if seg.children or seg.filter or seg.static then
    error('herald.segment.save: ' .. seg.name .. ': only declarative segments are stored ' ..
      '(no filter, no composition; imports are stored by herald.segment.import)', 2)
  end
  local id = opts.id or seg.id or seg.name
  local app = app_of(opts)
  checked(2, check_sources, seg.definition, app)
  local version, err = core.save(id, seg.name, 'DIMENSIONAL', json.encode(seg.definition), app)
  if version == nil then return nil, err end
  return id, version
end
Segment.save = segment.save

-- load(id [, {version =, app =}]) -> segment (latest version unless one is pinned), or nil, err.
function segment.load(id, opts)
  opts = opts or {}
  local app = app_of(opts)
  local row = stored(id, opts.version, app)
  if row == nil then
    return nil, string.format("no segment '%s'%s in application '%s'", id,
      opts.version and (' version ' .. opts.version) or '', app)
  end
  local def, err = {}, nil
  if row.type ~= 'IMPORT' then def, err = stored_request(id, row) end
  if def == nil then return nil, err end
  local seg = new_segment { name = row.name, id = id, version = row.version, definition = def }
  if row.type == 'IMPORT' then seg.static = true end
  return seg
end

-- versions(id [, opts]) -> list of { version =, name =, type =, creation_date = }.
function segment.versions(id, opts)
  local st <close> = prepare('SELECT version, name, segment_type, creation_date FROM segments ' ..
    'WHERE app_id = :app AND id = :id ORDER BY version')
  st:bind { app = app_of(opts), id = id }
  local n, v, name, kind, created = st:fetch(100000)
  local out = {}
  for i = 1, n do
    out[i] = { version = v[i], name = name[i], type = kind[i], creation_date = created[i] }
  end
  return out
end

-- Set by the loader of definition files (runner:load) while one runs. A definition file runs
-- again on every `herald run` and `herald campaign load`; registering its import's rows each
-- time would undo every later change to those endpoints, so there an import is applied only
-- when its data changed since the stored version.
segment.loading_definitions = false

-- The digest of one more endpoint request after digest h: canonical JSON (sorted keys), so
-- the same rows give the same digest whatever order their keys were read in.
local function digest_step(h, req)
  return digest.md5_hex(h .. json.encode(req, { sort = true }))
end

-- import(path, {name =, id =, format = 'csv'|'json', app =}) -> segment, or nil, err.
-- The file is read as `herald import endpoints` reads it (runtime/import.c, through the host,
-- so campaign code can import too: there, paths are relative, below the working directory):
-- the format from the extension, any case (.csv; .json, .jsonl, .ndjson), else from the
-- content. Endpoint rows are registered (created or updated) and become the members; a file
-- whose only column is User.UserId adds every endpoint of each user. All or nothing: any bad
-- row leaves the store unchanged and the error names the file and line. The version records
-- a digest of the rows; while a definition file loads, an import whose name, format and
-- digest match the stored version returns that version and writes nothing.
function segment.import(path, opts)
  opts = opts or {}
  if type(path) ~= 'string' then error('herald.segment.import: path: expected a file name', 2) end
  local name = opts.name or path:match('([^/]+)%.%w+$') or path
  local id = opts.id or name
  local app = app_of(opts)
  local format = opts.format
  if format ~= nil and format ~= 'csv' and format ~= 'json' then
    error("herald.segment.import: format: '" .. tostring(format) .. "' is not one of csv, json", 2)
  end
  if segment.loading_definitions then
    local h = ''
    local read, rerr = core.each_endpoint_request(path, format, function(req)
      h = digest_step(h, req)
      return true
    end)
    if read == nil then return nil, rerr end
    local row = stored(id, nil, app)
    if row and row.type == 'IMPORT' and row.name == name and row.definition.Digest == h and
        row.definition.Format == read:upper() then
      return new_segment { name = name, id = id, version = row.version, static = true,
        definition = {} }
    end
  end
  local endpoints = require('herald.endpoints')
  local ok, res = pcall(core.atomic, function()
    local members, h = {}, ''
    -- nil, err stops the read; C prefixes err with the file and line
    local function add_row(req)
      if type(req) ~= 'table' or json.is_array(req) then return nil, 'not a JSON object' end
      h = digest_step(h, req)
      local keys = {}
      for k in pairs(req) do keys[#keys + 1] = k end
      local user = type(req.User) == 'table' and req.User.UserId
      if #keys == 1 and keys[1] == 'User' and user and next(req.User, next(req.User)) == nil then
        local list, err = endpoints.by_user(user, { app = app })
        if list == nil then return nil, err end
        for _, ep in ipairs(list) do members[#members + 1] = ep.Id end
        return true
      end
      local ep, err = endpoints.put(req, { app = app })
      if ep == nil then return nil, err end
      members[#members + 1] = ep.Id
      return true
    end
    local read, rerr = core.each_endpoint_request(path, format, add_row)
    if read == nil then error(rerr, 0) end
    local version, err = core.save(id, name, 'IMPORT', json.encode { Name = name, Format =
      read:upper(), Digest = h }, app)
    if version == nil then error(err, 0) end
    local added, aerr = core.add_members(id, version, members, app)
    if not added then error(aerr, 0) end
    return version
  end)
  if not ok then return nil, tostring(res) end
  return new_segment { name = name, id = id, version = res, static = true, definition = {} }
end

---------------------------------------------------------------------------------------------
-- Value indexes (runtime/segment.c): 'Attributes.NAME', 'UserAttributes.NAME', 'Metrics.NAME'.

local INDEX_FORMS = 'Attributes.NAME, UserAttributes.NAME or Metrics.NAME'

-- 'Kind.name' -> kind, name; or nil, message naming the allowed forms.
local function index_spec(spec)
  if type(spec) ~= 'string' then return nil, 'expected a string: ' .. INDEX_FORMS end
  local kind, name = spec:match('^([^.]*)%.(.*)$')
  if kind == nil then
    return nil, string.format("'%s': expected %s", spec, INDEX_FORMS)
  end
  local ok, err = core.index_check(kind, name)
  if not ok then return nil, err end
  return kind, name
end

-- index_add(spec [, opts]) -> true (created) or false (it existed), or nil, err.
function segment.index_add(spec, opts)
  local kind, name = index_spec(spec)
  if kind == nil then return nil, name end
  return core.index_add(kind, name, app_of(opts), opts and opts.origin or 'lua')
end

-- index_drop(spec [, opts]) -> true (dropped) or false (there was none), or nil, err.
function segment.index_drop(spec, opts)
  local kind, name = index_spec(spec)
  if kind == nil then return nil, name end
  return core.index_drop(kind, name, app_of(opts))
end

-- indexes([opts]) -> list of { name = 'Kind.name', origin =, creation_date =, rows =,
-- endpoints = } of the application, by name.
function segment.indexes(opts)
  local st <close> = prepare('SELECT i.kind || \'.\' || i.name, i.origin, i.creation_date, ' ..
    'count(v.endpoint_id), count(DISTINCT v.endpoint_id) FROM value_indexes i ' ..
    'LEFT JOIN indexed_values v ON v.index_id = i.id WHERE i.app_id = :app GROUP BY i.id ' ..
    'ORDER BY 1')
  st:bind { app = app_of(opts) }
  local n, names, origins, dates, rows, eps = st:fetch(100000)
  if n == nil then error(names, 0) end
  local out = {}
  for i = 1, n do
    out[i] = { name = names[i], origin = origins[i], creation_date = dates[i], rows = rows[i],
      endpoints = eps[i] }
  end
  return out
end

segment.is_segment = function(v) return getmetatable(v) == Segment end

return setmetatable(segment, { __call = function(_, def) return define(def) end })
