-- Differential test: random segment definitions (every dimension kind, groups, stored and
-- imported base segments, Lua filters, compositions) over random endpoints, evaluated by the
-- engine (SQL + endpoint views) and by a plain reference evaluator (tests/helpers/
-- segment_reference.lua). Any disagreement fails with the seed that reproduces it
-- (HERALD_SEGMENT_SEED=n pins the seeds; HERALD_SEGMENT_ROUNDS and HERALD_SEGMENT_PER_ROUND
-- change the default 4 rounds of 1,000 definitions, each round on its own database). The seeds
-- change with every run, so each run of the suite checks definitions the last did not. 2,500 a
-- round took 14.5 minutes on a slow host under the sanitizers and carried the CI run past its
-- 30; with 1,000 that run took 27.
-- Rounds take turns over the value indexes (runtime/segment.c): none (JSON only), indexes
-- created before the endpoints are written (the writer keeps them), indexes created after
-- (filled from the stored endpoints), and indexes created on demand by the segments. In every
-- round some endpoints are then updated and deleted, so the indexes must follow.
local h = require 'helpers'
local s = require 'store_helpers'

local here = debug.getinfo(1, 'S').source:match('^@(.*)/[^/]*$') or '.'
local REFERENCE = h.read(here .. '/../helpers/segment_reference.lua')

local SCRIPT = [=[
local ref = (function() %s end)()
local SEED, SEGMENTS, INDEXES = %d, %d, %q
math.randomseed(SEED)
local R = math.random
local S = herald.segment
local function pick(t) return t[R(#t)] end
local NOW = 1781784000000 -- 2026-06-18T12:00:00Z

local WORDS = { 'gold', 'silver', 'bronze', 'gold-plus', 'old', 'sil', 'Gold' }
local PIECES = { 'ol', 'gold', 'x', 'il', 'G', '-' }
local DOMAINS = { AppVersion = { '1.0', '1.1', '2.0' }, Make = { 'apple', 'samsung', 'google' },
  Model = { 'a1', 'b2', 'c3' }, Platform = { 'ios', 'android', 'web' },
  Channel = { 'EMAIL', 'SMS', 'CUSTOM', 'APNS' } }
DOMAINS.DeviceType = DOMAINS.Model
local DEMOGRAPHIC = { 'AppVersion', 'Channel', 'DeviceType', 'Make', 'Model', 'Platform' }
local COUNTRIES = { 'US', 'FR', 'DE', 'JP' }
local CENTRES = { { 48.85, 2.35 }, { 40.7, -74.0 }, { -33.9, 151.2 }, { 10, 179.95 }, { 89.95, 0 } }
local ATTRS = { 'plan', 'tags', 'signup', 'we"ird' }
local UATTRS = { 'tier', 'born' }
local METRICS = { 'score', 'visits', 'we"ird' }
local OPS = { 'GREATER_THAN', 'LESS_THAN', 'GREATER_THAN_OR_EQUAL', 'LESS_THAN_OR_EQUAL', 'EQUAL' }
local ATYPES = { 'INCLUSIVE', 'EXCLUSIVE', 'CONTAINS', 'BEFORE', 'AFTER', 'BETWEEN', 'ON' }

local function date(valid_only)
  local r = R(20)
  if not valid_only and r == 1 then return 'not a date' end
  if not valid_only and r == 2 then return '2026-02-30' end
  local d = string.format('2026-%%02d-%%02d', R(1, 2), R(1, 28))
  if R(3) == 1 then return d end
  local t = string.format('T%%02d:%%02d', R(0, 23), R(0, 59))
  if R(2) == 1 then t = t .. string.format(':%%02d', R(0, 59)) end
  if R(3) == 1 and #t > 6 then t = t .. '.' .. tostring(R(0, 999)) end
  return d .. t .. pick { '', 'Z', '+02:00', '-05:30' }
end

local function values(n, gen)
  local out = {}
  for i = 1, n do out[i] = gen() end
  return out
end

local function attr_values(name)
  if name == 'signup' or name == 'born' then return values(R(0, 3), date) end
  return values(R(0, 3), function() return pick(WORDS) end)
end

-- Value indexes: half of the names (and the odd one with a '"') in 'before' and 'after'.
S.auto_index = INDEXES == 'auto'
-- A low drive limit mixes both forms of indexed conditions (Compiler:indexed).
if INDEXES ~= 'after' then S.drive_limit = 40 end
local INDEXED = { 'Attributes.plan', 'Attributes.signup', 'Attributes.we"ird',
  'UserAttributes.born', 'Metrics.score', 'Metrics.we"ird' }
local function add_indexes()
  for _, n in ipairs(INDEXED) do assert(S.index_add(n)) end
end
if INDEXES == 'before' then add_indexes() end

-- Endpoints
local endpoints = {}
for i = 1, 250 do
  local ch = pick { 'EMAIL', 'SMS', 'CUSTOM' }
  local ep = { Id = 'ep' .. i, ChannelType = ch,
    Address = ch == 'EMAIL' and ('u' .. i .. '@example.com') or ch == 'SMS' and
      string.format('+1555%%07d', i) or ('x' .. i),
    Demographic = {}, Location = {}, Attributes = {}, Metrics = {}, User = {} }
  for _, k in ipairs { 'AppVersion', 'Make', 'Model', 'Platform' } do
    if R(4) > 1 then ep.Demographic[k] = pick(DOMAINS[k]) end
  end
  if R(4) > 1 then ep.Location.Country = pick(COUNTRIES) end
  if R(3) > 1 then
    local c = pick(CENTRES)
    ep.Location.Latitude = math.max(-90, math.min(90, c[1] + (R() - 0.5) * 4))
    ep.Location.Longitude = c[2] + (R() - 0.5) * 4
    if ep.Location.Longitude > 180 then ep.Location.Longitude = ep.Location.Longitude - 360 end
  end
  for _, a in ipairs(ATTRS) do
    if R(3) > 1 then
      local v = attr_values(a)
      if #v > 0 then ep.Attributes[a] = v end
    end
  end
  for _, m in ipairs(METRICS) do
    if R(3) > 1 then ep.Metrics[m] = R(2) == 1 and R(0, 10) or R(0, 100) / 10 end
  end
  if R(4) > 1 then ep.User.UserId = 'user' .. R(60) end
  ep.User.UserAttributes = {}
  for _, a in ipairs(UATTRS) do
    if R(2) > 1 then
      local v = attr_values(a)
      if #v > 0 then ep.User.UserAttributes[a] = v end
    end
  end
  local stored, err = herald.endpoints.put(ep)
  if not stored then error(ep.Id .. ': ' .. err) end
  if R(10) > 3 then
    for _ = 1, R(3) do
      local t = NOW - R(0, 40 * 24) * 3600000 - R(0, 3599) * 1000
      local ok, eerr = herald.events.put(ep.Id, { EventType = 'visit',
        Timestamp = require('herald.core.clock').format(t) })
      if not ok then error(eerr) end
      ep.LastActivityMs = math.max(ep.LastActivityMs or 0, t)
    end
  end
  endpoints[#endpoints + 1] = ep
end

-- Updates (an attribute, a user attribute or a metric replaced or removed) and deletes.
for _ = 1, 60 do
  local ep = pick(endpoints)
  local change = { Attributes = {}, Metrics = {}, User = { UserAttributes = {} } }
  local a, u, m = pick(ATTRS), pick(UATTRS), pick(METRICS)
  local v = attr_values(a)
  ep.Attributes[a] = #v > 0 and v or nil
  change.Attributes[a] = #v > 0 and v or herald.json.null
  v = attr_values(u)
  ep.User.UserAttributes[u] = #v > 0 and v or nil
  change.User.UserAttributes[u] = #v > 0 and v or herald.json.null
  ep.Metrics[m] = R(3) > 1 and R(0, 10) or nil
  change.Metrics[m] = ep.Metrics[m] or herald.json.null
  change.Id = ep.Id
  local ok, err = herald.endpoints.put(change)
  if not ok then error(ep.Id .. ': ' .. err) end
end
for _ = 1, 10 do
  local i = R(#endpoints)
  assert(herald.endpoints.delete(endpoints[i].Id))
  table.remove(endpoints, i)
end
if INDEXES == 'after' then add_indexes() end

-- Random definitions
local stored_ids = {}
local function dims()
  local d = {}
  if R(3) == 1 then
    d.Demographic = {}
    for _ = 1, R(2) do
      local k = pick(DEMOGRAPHIC)
      d.Demographic[k] = { DimensionType = R(3) == 1 and 'EXCLUSIVE' or (R(2) == 1 and 'INCLUSIVE' or nil),
        Values = values(R(1, 3), function() return pick(DOMAINS[k]) end) }
    end
  end
  if R(4) == 1 then
    d.Location = { Country = { DimensionType = R(3) == 1 and 'EXCLUSIVE' or 'INCLUSIVE',
      Values = values(R(1, 2), function() return pick(COUNTRIES) end) } }
  end
  if R(5) == 1 then
    d.Location = d.Location or {}
    local c = pick(CENTRES)
    d.Location.GPSPoint = { Coordinates = { Latitude = math.max(-90, math.min(90, c[1] + (R() - 0.5))),
      Longitude = math.max(-180, math.min(180, c[2] + (R() - 0.5))) },
      RangeInKilometers = pick { R(0, 50), R(0, 300), R(0, 5000) + R() } }
  end
  if R(5) == 1 then
    d.Behavior = { Recency = { Duration = pick { 'HR_24', 'DAY_7', 'DAY_14', 'DAY_30' },
      RecencyType = pick { 'ACTIVE', 'INACTIVE' } } }
  end
  for _, kind in ipairs { { 'Attributes', ATTRS }, { 'UserAttributes', UATTRS } } do
    if R(3) == 1 then
      d[kind[1]] = {}
      for _ = 1, R(2) do
        local t = pick(ATYPES)
        local v
        if t == 'CONTAINS' then v = values(R(1, 2), function() return pick(PIECES) end)
        elseif t == 'BEFORE' or t == 'AFTER' then v = { date(true) }
        elseif t == 'BETWEEN' then
          -- In order: a start after the end is refused (a date-only end is its whole day).
          v = { date(true), date(true) }
          local b = ref.instant(v[2]) + (v[2]:find('T', 1, true) and 0 or 86400000)
          if ref.instant(v[1]) >= b then v = { v[2], v[1] } end
        elseif t == 'ON' then v = values(R(1, 2), function() return date(true) end)
        else v = values(R(1, 3), function() return pick(WORDS) end) end
        d[kind[1]][pick(kind[2])] = { AttributeType = t, Values = v }
      end
    end
  end
  if R(3) == 1 then
    d.Metrics = {}
    for _ = 1, R(2) do
      d.Metrics[pick(METRICS)] = { ComparisonOperator = pick(OPS),
        Value = R(2) == 1 and R(0, 10) or R(0, 100) / 10 }
    end
  end
  return d
end

local function request(allow_sources)
  local req = { Name = 'r' }
  if R(2) == 1 then req.Dimensions = dims() end
  if R(2) == 1 or req.Dimensions == nil then
    local groups = {}
    for gi = 1, R(0, 3) do
      local g = { Dimensions = {}, SourceSegments = {} }
      for di = 1, R(0, 2) do g.Dimensions[di] = dims() end
      if allow_sources and #stored_ids > 0 then
        for si = 1, R(0, 2) do
          local id = pick(stored_ids)
          g.SourceSegments[si] = { Id = id, Version = R(3) == 1 and R(2) or nil }
        end
      end
      g.Type = R(4) > 1 and pick { 'ALL', 'ANY', 'NONE' } or nil
      g.SourceType = R(4) > 1 and pick { 'ALL', 'ANY', 'NONE' } or nil
      groups[gi] = g
    end
    req.SegmentGroups = { Groups = groups, Include = R(4) > 1 and pick { 'ALL', 'ANY', 'NONE' } or nil }
  end
  return req
end

local ctx = { now_ms = NOW, stored = {} }
for i = 1, 4 do
  local id = 'd' .. i
  ctx.stored[id] = {}
  for _ = 1, 2 do
    local req = request(true)
    local seg = S.from_pinpoint(req, { name = id })
    local _, version = assert(S.save(seg, { id = id }))
    ctx.stored[id][version] = req
  end
  stored_ids[#stored_ids + 1] = id
end
-- An imported segment: two versions from user-id-only CSV files.
ctx.stored.imp = {}
for v = 1, 2 do
  local users, members = {}, {}
  local lines = { 'User.UserId' }
  for _ = 1, 12 do
    local u = 'user' .. R(60)
    if not users[u] then users[u] = true lines[#lines + 1] = u end
  end
  for _, ep in ipairs(endpoints) do
    if ep.User.UserId and users[ep.User.UserId] then members[ep.Id] = true end
  end
  local path = os.getenv('SEGMENT_TMP') .. '/imp' .. v .. '.csv'
  local f = assert(io.open(path, 'w'))
  f:write(table.concat(lines, '\n'), '\n')
  f:close()
  local seg = assert(S.import(path, { id = 'imp', name = 'imp' }))
  assert(seg.version == v)
  ctx.stored.imp[v] = { members = members }
end
stored_ids[#stored_ids + 1] = 'imp'

local FILTERS = {
  function(ep) return (ep.Metrics.score or -1) > 5 end,
  function(ep) local t = ep.Attributes.tags return t ~= nil and #t >= 2 end,
  function(ep) return ep.ChannelType == 'EMAIL' and (ep.Location.Country == 'US' or ep.User.UserId ~= nil) end,
  function(ep)
    for _, v in ipairs(ep.User.UserAttributes.tier or {}) do
      if v:find('old', 1, true) then return true end
    end
    return (ep.Demographic.Platform or '') == 'web'
  end,
}

-- A random segment and its reference predicate.
local function random_segment(depth)
  local r = R(20)
  if depth < 2 and r == 1 then
    local op = pick { 'all', 'any', 'none' }
    local kids, preds, texts = {}, {}, {}
    for i = 1, R(2, 3) do kids[i], preds[i], texts[i] = random_segment(depth + 1) end
    local seg = S[op](kids)
    return seg, function(ep)
      local any, all = false, true
      for _, p in ipairs(preds) do
        if p(ep) then any = true else all = false end
      end
      if op == 'all' then return all elseif op == 'any' then return any end
      return not any
    end, op .. ' { ' .. table.concat(texts, ' ; ') .. ' }'
  end
  local req = request(true)
  local filter = R(8) == 1 and pick(FILTERS) or nil
  local seg
  if R(2) == 1 then seg = S.from_pinpoint(herald.json.encode(req), { filter = filter })
  else seg = S.from_pinpoint(req, { filter = filter }) end
  return seg, function(ep)
    return ref.matches(req, ep, ctx) and (filter == nil or filter(ep) and true or false)
  end, herald.json.encode(req) .. (filter and ' + filter' or '')
end

local compared, mismatches, nonempty, partial = 0, {}, 0, 0
for k = 1, SEGMENTS do
  local seg, pred, text = random_segment(0)
  local got = {}
  for _, id in ipairs(seg:ids { now_ms = NOW }) do got[id] = true end
  local want, n = {}, 0
  for _, ep in ipairs(endpoints) do
    if pred(ep) then want[ep.Id] = true n = n + 1 end
  end
  local bad, first = {}, nil
  for _, ep in ipairs(endpoints) do
    if (got[ep.Id] or false) ~= (want[ep.Id] or false) then
      bad[#bad + 1] = ep.Id .. (want[ep.Id] and ' expected' or ' unexpected')
      first = first or ep
    end
  end
  local probe = pick(endpoints).Id
  if seg:contains(probe, { now_ms = NOW }) ~= (want[probe] or false) then
    bad[#bad + 1] = 'contains(' .. probe .. ')'
  end
  if k %% 50 == 0 and seg:count { now_ms = NOW } ~= n then bad[#bad + 1] = 'count' end
  compared = compared + 1
  if n > 0 then nonempty = nonempty + 1 end
  if n > 0 and n < #endpoints then partial = partial + 1 end
  if #bad > 0 and #mismatches < 3 then
    mismatches[#mismatches + 1] = { index = k, definition = text,
      sql = seg.children and '' or seg:compile { now_ms = NOW }.where,
      differences = table.concat(bad, ', ', 1, math.min(#bad, 8)),
      endpoint = first and herald.json.encode(herald.endpoints.get(first.Id)) .. ' last activity ' ..
        tostring(first.LastActivityMs) or '' }
  end
end
emit { compared = compared, mismatches = mismatches, nonempty = nonempty, partial = partial,
  indexes = #S.indexes() }
]=]

describe('segments: engine against the reference evaluator', function()
  local rounds, per_round = tonumber(os.getenv("HERALD_SEGMENT_ROUNDS") or 4),
    tonumber(os.getenv("HERALD_SEGMENT_PER_ROUND") or 1000)
  local MODES = { 'none', 'before', 'after', 'auto' }
  for round = 1, rounds do
    local mode = MODES[(round - 1) % #MODES + 1]
    it('agrees on ' .. per_round .. ' random segments (round ' .. round .. ', indexes: ' .. mode ..
        ')', function()
      local seed = tonumber(os.getenv('HERALD_SEGMENT_SEED') or '') or (os.time() * 10 + round)
      local dir = h.tmpdir()
      local v, rc, err = s.run(dir .. '/herald.db', SCRIPT:format(REFERENCE, seed, per_round, mode),
        { env = { SEGMENT_TMP = dir } })
      assert.are.equal(0, rc, 'seed ' .. seed .. ': ' .. tostring(err))
      assert.are.equal(per_round, v.compared)
      if #v.mismatches > 0 then
        local m = v.mismatches[1]
        error(string.format('seed %d (HERALD_SEGMENT_SEED=%d): segment %d disagrees: %s\n' ..
          'definition: %s\nSQL: %s\nfirst endpoint: %s', seed, seed, m.index, m.differences,
          m.definition, m.sql, m.endpoint), 0)
      end
      -- The indexed rounds must really have read from indexes (auto: every name was used).
      local want = ({ none = 0, before = 6, after = 6, auto = 9 })[mode]
      assert.are.equal(want, v.indexes)
      -- The generator must produce segments that split the endpoints, or the test proves little.
      assert.is_true(v.partial > per_round / 4, 'only ' .. v.partial .. ' segments split the endpoints')
    end)
  end
end)
