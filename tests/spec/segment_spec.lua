-- Segments through the real binary: one named spec per dimension and operator (Pinpoint's
-- semantics as README "Segments" states them), groups, base segments, versions, imports, the
-- Lua forms, filters, composition, the REPL helpers and definition errors.
local h = require 'helpers'
local s = require 'store_helpers'

-- 2026-06-18T12:00:00Z; every evaluation measures Recency from here.
local NOW = 1781784000000

local FIXTURE = [[
local NOW = 1781784000000
local clock = require 'herald.core.clock'
local S = herald.segment
local function put(ep, hours_ago)
  must(herald.endpoints.put(ep))
  if hours_ago then
    must(herald.events.put(ep.Id, { EventType = 'visit', Timestamp = clock.format(NOW - hours_ago * 3600000) }))
  end
end
put({ Id = 'e1', ChannelType = 'EMAIL', Address = 'ann@example.com',
  Demographic = { AppVersion = '1.0', Make = 'apple', Model = 'iPhone', Platform = 'ios' },
  Location = { Country = 'US', Latitude = 40.7128, Longitude = -74.0060 },
  Attributes = { plan = { 'pro' }, tags = { 'gold', 'vip' }, signup = { '2026-01-15T10:00:00Z' } },
  Metrics = { score = 10, visits = 3 },
  User = { UserId = 'u1', UserAttributes = { tier = { 'gold' }, born = { '1990-05-01' } } } }, 2)
put({ Id = 'e2', ChannelType = 'SMS', Address = '+15550000002',
  Demographic = { AppVersion = '2.0', Make = 'samsung', Model = 'Galaxy', Platform = 'android' },
  Location = { Country = 'FR', Latitude = 48.8566, Longitude = 2.3522 },
  Attributes = { plan = { 'free' }, tags = { 'silver' }, signup = { '2026-02-01' } },
  Metrics = { score = 5 }, User = { UserId = 'u1' } }, 72)
put({ Id = 'e3', ChannelType = 'EMAIL', Address = 'bob@example.com',
  Location = { Country = 'FR', Latitude = 48.8049, Longitude = 2.1204 },
  Attributes = { plan = { 'team', 'pro' }, signup = { '2026-01-15T23:30:00-05:00' } },
  Metrics = { score = 10.5 }, User = { UserId = 'u2' } }, 480)
put({ Id = 'e4', ChannelType = 'CUSTOM', Address = 'x4', Demographic = { Platform = 'web' } })
put({ Id = 'e5', ChannelType = 'EMAIL', Address = 'cy@example.com', Location = { Country = 'DE' },
  Attributes = { signup = { 'not a date' }, tags = { 'golden' } }, Metrics = { score = -1 } }, 960)
local function ids(seg)
  local out = seg:ids { now_ms = NOW }
  table.sort(out)
  return table.concat(out, ',')
end
local function dims(d) return ids(S.from_pinpoint { Name = 'x', Dimensions = d }) end
]]

local function run(code, db)
  local v, rc, err = s.run(db or s.db(), FIXTURE .. code)
  assert.are.equal(0, rc, err)
  return v
end

-- Members of a SegmentDimensions given as Lua source.
local function members(dims)
  return run('emit(dims(' .. dims .. '))')
end

describe('segment dimensions', function()
  describe('Demographic', function()
    it('INCLUSIVE keeps endpoints whose field is one of the values', function()
      assert.are.equal('e1,e2', members [[{ Demographic = { Platform = { DimensionType = 'INCLUSIVE', Values = { 'ios', 'android' } } } }]])
    end)
    it('EXCLUSIVE keeps every other endpoint, including those without the field', function()
      assert.are.equal('e2,e3,e4,e5', members [[{ Demographic = { Platform = { DimensionType = 'EXCLUSIVE', Values = { 'ios' } } } }]])
    end)
    it('DimensionType defaults to INCLUSIVE', function()
      assert.are.equal('e2', members [[{ Demographic = { AppVersion = { Values = { '2.0' } } } }]])
    end)
    it('Channel reads ChannelType', function()
      assert.are.equal('e1,e3,e5', members [[{ Demographic = { Channel = { Values = { 'EMAIL' } } } }]])
      assert.are.equal('e2,e4', members [[{ Demographic = { Channel = { DimensionType = 'EXCLUSIVE', Values = { 'EMAIL' } } } }]])
    end)
    it('Make, Model and DeviceType (read from Model)', function()
      assert.are.equal('e1', members [[{ Demographic = { Make = { Values = { 'apple' } } } }]])
      assert.are.equal('e2', members [[{ Demographic = { Model = { Values = { 'Galaxy' } } } }]])
      assert.are.equal('e1', members [[{ Demographic = { DeviceType = { Values = { 'iPhone' } } } }]])
    end)
    it('Channel values are read in any case, as Country codes are', function()
      assert.are.equal('e1,e3,e5', members [[{ Demographic = { Channel = { Values = { 'email' } } } }]])
      assert.are.equal('e1,e3,e4,e5', members [[{ Demographic = { Channel = { DimensionType = 'EXCLUSIVE', Values = { 'sms' } } } }]])
    end)
    it('several demographic fields must all hold', function()
      assert.are.equal('e2', members [[{ Demographic = { Channel = { Values = { 'SMS', 'EMAIL' } }, Make = { Values = { 'samsung' } } } }]])
    end)
  end)

  describe('Location', function()
    it('Country INCLUSIVE and EXCLUSIVE (codes are case-insensitive in definitions)', function()
      assert.are.equal('e2,e3', members [[{ Location = { Country = { Values = { 'fr' } } } }]])
      assert.are.equal('e1,e4,e5', members [[{ Location = { Country = { DimensionType = 'EXCLUSIVE', Values = { 'FR' } } } }]])
    end)
    it('GPSPoint keeps endpoints within RangeInKilometers by great-circle distance', function()
      local paris = "{ Location = { GPSPoint = { Coordinates = { Latitude = 48.8566, Longitude = 2.3522 }, RangeInKilometers = %s } } }"
      assert.are.equal('e2,e3', members(paris:format('20')))   -- Versailles is ~17 km away
      assert.are.equal('e2', members(paris:format('5')))
      assert.are.equal('e2,e3', members(paris:format('5800'))) -- New York is ~5,837 km away
      assert.are.equal('e1,e2,e3', members(paris:format('5900')))
    end)
    it('GPSPoint across the antimeridian and near a pole', function()
      local v = run [[
        put({ Id = 'fiji', ChannelType = 'CUSTOM', Address = 'f', Location = { Latitude = -17.7, Longitude = 179.9 } })
        put({ Id = 'samoa', ChannelType = 'CUSTOM', Address = 's', Location = { Latitude = -17.7, Longitude = -179.9 } })
        put({ Id = 'pole', ChannelType = 'CUSTOM', Address = 'p', Location = { Latitude = 89.9, Longitude = 100 } })
        emit({ dims { Location = { GPSPoint = { Coordinates = { Latitude = -17.7, Longitude = 179.95 }, RangeInKilometers = 50 } } },
               dims { Location = { GPSPoint = { Coordinates = { Latitude = 89.95, Longitude = -80 }, RangeInKilometers = 30 } } } })]]
      assert.are.same({ 'fiji,samoa', 'pole' }, v)
    end)
  end)

  describe('Behavior.Recency', function()
    it('ACTIVE keeps endpoints with activity within the duration', function()
      local r = "{ Behavior = { Recency = { Duration = '%s', RecencyType = '%s' } } }"
      assert.are.equal('e1', members(r:format('HR_24', 'ACTIVE')))
      assert.are.equal('e1,e2', members(r:format('DAY_7', 'ACTIVE')))
      assert.are.equal('e1,e2', members(r:format('DAY_14', 'ACTIVE')))
      assert.are.equal('e1,e2,e3', members(r:format('DAY_30', 'ACTIVE')))
    end)
    it('INACTIVE keeps the others, including endpoints never active', function()
      local r = "{ Behavior = { Recency = { Duration = '%s', RecencyType = 'INACTIVE' } } }"
      assert.are.equal('e3,e4,e5', members(r:format('DAY_7')))
      assert.are.equal('e4,e5', members(r:format('DAY_30')))
    end)
  end)

  describe('Attributes', function()
    local a = "{ Attributes = { %s = { AttributeType = '%s', Values = { %s } } } }"
    it('INCLUSIVE matches any value of a list-valued attribute', function()
      assert.are.equal('e1,e3', members(a:format('plan', 'INCLUSIVE', "'pro'")))
    end)
    it('EXCLUSIVE keeps endpoints with no listed value, or without the attribute', function()
      assert.are.equal('e2,e4,e5', members(a:format('plan', 'EXCLUSIVE', "'pro'")))
    end)
    it('CONTAINS is a case-sensitive substring match', function()
      assert.are.equal('e1,e5', members(a:format('tags', 'CONTAINS', "'gold'")))
      assert.are.equal('e2', members(a:format('tags', 'CONTAINS', "'il'")))
      assert.are.equal('', members(a:format('tags', 'CONTAINS', "'GOLD'")))
    end)
    it('BEFORE compares instants; values that are not dates never match', function()
      assert.are.equal('e1', members(a:format('signup', 'BEFORE', "'2026-01-16'")))
    end)
    it('AFTER reads zone offsets', function()
      -- e3 signed up at 2026-01-15T23:30-05:00, which is 2026-01-16T04:30Z
      assert.are.equal('e2,e3', members(a:format('signup', 'AFTER', "'2026-01-16T00:00:00Z'")))
    end)
    it('AFTER a date alone means after that whole day (UTC)', function()
      -- e1 signed up at 2026-01-15T10:00Z, e3 at 2026-01-16T04:30Z, e2 on 2026-02-01 (midnight)
      assert.are.equal('e2,e3', members(a:format('signup', 'AFTER', "'2026-01-15'")))
      assert.are.equal('e1,e2,e3', members(a:format('signup', 'AFTER', "'2026-01-15T00:00:00Z'")))
      assert.are.equal('e2', members(a:format('signup', 'AFTER', "'2026-01-31'")))
    end)
    it('BETWEEN is inclusive at both ends', function()
      assert.are.equal('e1,e3', members(a:format('signup', 'BETWEEN', "'2026-01-15T10:00:00Z', '2026-01-16T04:30:00Z'")))
      assert.are.equal('e1', members(a:format('signup', 'BETWEEN', "'2026-01-15', '2026-01-16T04:29:59.999Z'")))
    end)
    it('BETWEEN with a date-only end includes that whole day (UTC)', function()
      -- e1 signed up at 2026-01-15T10:00Z, e3 at 2026-01-16T04:30Z, e2 on 2026-02-01 (midnight)
      assert.are.equal('e1', members(a:format('signup', 'BETWEEN', "'2026-01-01', '2026-01-15'")))
      assert.are.equal('e1', members(a:format('signup', 'BETWEEN', "'2026-01-15', '2026-01-15'")))
      assert.are.equal('e1,e3', members(a:format('signup', 'BETWEEN', "'2026-01-01', '2026-01-16'")))
      assert.are.equal('', members(a:format('signup', 'BETWEEN', "'2026-01-15T10:00:00.001Z', '2026-01-15'")))
      assert.are.equal('e1,e3', members(a:format('signup', 'BETWEEN', "'2026-01-15T10:00:00Z', '2026-01-31'")))
    end)
    it('ON compares the date as written, ignoring the time', function()
      assert.are.equal('e1,e3', members(a:format('signup', 'ON', "'2026-01-15T08:00:00Z'")))
      assert.are.equal('e2', members(a:format('signup', 'ON', "'2026-02-01'")))
    end)
    it('AttributeType defaults to INCLUSIVE; all attributes must hold', function()
      assert.are.equal('e1', members [[{ Attributes = { plan = { Values = { 'pro' } }, tags = { Values = { 'vip' } } } }]])
    end)
  end)

  describe('UserAttributes', function()
    it('INCLUSIVE and BEFORE over the user attributes', function()
      assert.are.equal('e1', members [[{ UserAttributes = { tier = { Values = { 'gold' } } } }]])
      assert.are.equal('e1', members [[{ UserAttributes = { born = { AttributeType = 'BEFORE', Values = { '2000-01-01' } } } }]])
      assert.are.equal('e2,e3,e4,e5', members [[{ UserAttributes = { tier = { AttributeType = 'EXCLUSIVE', Values = { 'gold' } } } }]])
    end)
  end)

  describe('Metrics', function()
    local m = "{ Metrics = { %s = { ComparisonOperator = '%s', Value = %s } } }"
    it('GREATER_THAN', function() assert.are.equal('e1,e3', members(m:format('score', 'GREATER_THAN', '5'))) end)
    it('LESS_THAN', function() assert.are.equal('e5', members(m:format('score', 'LESS_THAN', '5'))) end)
    it('GREATER_THAN_OR_EQUAL', function() assert.are.equal('e1,e3', members(m:format('score', 'GREATER_THAN_OR_EQUAL', '10'))) end)
    it('LESS_THAN_OR_EQUAL', function() assert.are.equal('e2,e5', members(m:format('score', 'LESS_THAN_OR_EQUAL', '5'))) end)
    it('EQUAL, integer against fraction', function()
      assert.are.equal('e1', members(m:format('score', 'EQUAL', '10.0')))
      assert.are.equal('e3', members(m:format('score', 'EQUAL', '10.5')))
    end)
    it('an absent metric never matches', function()
      assert.are.equal('e1', members(m:format('visits', 'GREATER_THAN', '-100')))
    end)
  end)
end)

describe('segment groups', function()
  it('Include ANY, ALL and NONE combine the groups', function()
    local v = run [[
      local g1 = { Dimensions = { { Demographic = { Platform = { Values = { 'ios' } } } } } }
      local g2 = { Dimensions = { { Location = { Country = { Values = { 'DE', 'US' } } } } } }
      local function inc(i) return ids(S.from_pinpoint { Name = 'g', SegmentGroups = { Include = i, Groups = { g1, g2 } } }) end
      emit { inc('ANY'), inc('ALL'), inc('NONE'), inc(nil) }]]
    assert.are.same({ 'e1,e5', 'e1', 'e2,e3,e4', 'e1' }, v)
  end)
  it('Type combines a group\'s dimension sets', function()
    local v = run [[
      local d = { { Demographic = { Platform = { Values = { 'ios' } } } }, { Demographic = { Platform = { Values = { 'web' } } } } }
      local function t(x) return ids(S.from_pinpoint { Name = 'g', SegmentGroups = { Groups = { { Type = x, Dimensions = d } } } }) end
      emit { t('ANY'), t('ALL'), t('NONE') }]]
    assert.are.same({ 'e1,e4', '', 'e2,e3,e5' }, v)
  end)
  it('SourceSegments are combined by SourceType and narrowed by the dimensions', function()
    local v = run [[
      must(S.save(S{ name = 'french', country = 'FR' }))
      must(S.save(S{ name = 'german', country = 'DE' }))
      local function g(group) return ids(S.from_pinpoint { Name = 'g', SegmentGroups = { Groups = { group } } }) end
      local both = { { Id = 'french' }, { Id = 'german' } }
      emit { g { SourceSegments = { { Id = 'french' } }, Dimensions = { { Metrics = { score = { ComparisonOperator = 'GREATER_THAN', Value = 6 } } } } },
             g { SourceSegments = both, SourceType = 'ANY' },
             g { SourceSegments = both, SourceType = 'NONE' },
             g { SourceSegments = both, SourceType = 'ALL' } }]]
    assert.are.same({ 'e3', 'e2,e3,e5', 'e1,e4', '' }, v)
  end)
  it('Dimensions and SegmentGroups together must both hold', function()
    assert.are.equal('e3', run [[emit(ids(S.from_pinpoint { Name = 'b', Dimensions = { Demographic = { Channel = { Values = { 'EMAIL' } } } },
      SegmentGroups = { Groups = { { Dimensions = { { Location = { Country = { Values = { 'FR' } } } } } } } } }))]])
  end)
end)

describe('stored segments', function()
  it('every save is a new version; a base segment can pin one', function()
    local v = run [[
      local _, v1 = must(S.save(S{ name = 'where', country = 'FR' }))
      local _, v2 = must(S.save(S{ name = 'where', country = 'DE' }))
      local function src(version)
        return ids(S.from_pinpoint { Name = 'p', SegmentGroups = { Groups = { { SourceSegments = { { Id = 'where', Version = version } } } } } })
      end
      local latest = must(S.load('where'))
      emit { v1, v2, src(1), src(nil), ids(latest), latest.version, ids(must(S.load('where', { version = 1 }))),
             #S.versions('where') }]]
    assert.are.same({ 1, 2, 'e2,e3', 'e5', 'e5', 2, 'e2,e3', 2 }, v)
  end)
  it('a missing base segment or version is an error naming the field', function()
    local v = run [[
      local ok, err = pcall(S.from_pinpoint, { Name = 'p', SegmentGroups = { Groups = { { SourceSegments = { { Id = 'ghost' } } } } } })
      must(S.save(S{ name = 'one', country = 'FR' }))
      local ok2, err2 = pcall(S.from_pinpoint, { Name = 'p', SegmentGroups = { Groups = { { SourceSegments = { { Id = 'one', Version = 7 } } } } } })
      emit { ok, err, ok2, err2, S.load('ghost') == nil }]]
    assert.is_false(v[1])
    assert.matches("SegmentGroups.Groups[1].SourceSegments[1].Id: no segment 'ghost'", v[2], 1, true)
    assert.is_false(v[3])
    assert.matches("no segment 'one' version 7", v[4], 1, true)
    assert.is_true(v[5])
  end)
  it('a stored version that no longer passes the checks is reported, not raised', function()
    local v = run [[
      local core = require 'herald.core.segment'
      must(core.save('old', 'old', 'DIMENSIONAL', herald.json.encode { Name = 'old', Dimensions = { Attributes = {
        signup = { AttributeType = 'BETWEEN', Values = { '2026-02-01', '2026-01-01' } } } } }, 'default'))
      local seg, err = S.load('old')
      local ok, err2 = pcall(S.from_pinpoint, { Name = 'x', SegmentGroups = { Groups = { { SourceSegments = { { Id = 'old' } } } } } })
      emit { seg == nil, err, ok, err2 }]]
    assert.is_true(v[1])
    assert.are.equal("segment 'old' version 1: Dimensions.Attributes.signup.Values: BETWEEN's start '2026-02-01' is after its end '2026-01-01'", v[2])
    assert.is_false(v[3])
    assert.matches("SegmentGroups.Groups[1].SourceSegments[1]: segment 'old' version 1: Dimensions.Attributes.signup.Values: BETWEEN's start", v[4], 1, true)
  end)
  it('an id, name, member or index name with a NUL inside is refused, naming it, not cut to reach another', function()
    local v = run [[
      local core = require 'herald.core.segment'
      must(S.save(S{ name = 'vip', country = 'FR' }))
      local function refused(f, ...) local ok, msg = f(...) return ok == nil and msg or 'accepted' end
      local r = {
        id = refused(S.save, S{ name = 'vip', country = 'DE' }, { id = 'vip\0-x' }),
        by_name = refused(S.save, S{ name = 'vip\0-x', country = 'DE' }),   -- its id unless given one
        index = refused(S.index_add, 'Attributes.tier\0-x'),
        drop = refused(S.index_drop, 'Attributes.tier\0-x'),
        members = refused(core.add_members, 'vip', 1, { 'e1', 'e2\0-x' }),
      }
      emit { r = r, versions = #S.versions('vip'), members = ids(must(S.load('vip'))),
             indexes = must(herald.db.query('SELECT count(*) AS n FROM value_indexes'))[1].n,
             rows = must(herald.db.query('SELECT count(*) AS n FROM segment_members'))[1].n }]]
    local nul = 'contains a NUL character (\\u0000)'
    assert.are.same({ id = 'id: ' .. nul, by_name = 'id: ' .. nul, index = 'name: ' .. nul, drop = 'name: ' .. nul,
                      members = 'members[2]: ' .. nul }, v.r)
    -- vip keeps its one version, its members and no index was made
    assert.are.same({ 1, 'e2,e3', 0, 0 }, { v.versions, v.members, v.indexes, v.rows })
  end)
  it('a segment that refers to itself is refused', function()
    local v = run [[
      must(S.save(S.from_pinpoint { Name = 'loop', Dimensions = {} }))
      must(S.save(S.from_pinpoint { Name = 'loop', SegmentGroups = { Groups = { { SourceSegments = { { Id = 'loop', Version = 1 } } } } } }))
      must(S.save(S.from_pinpoint { Name = 'loop', SegmentGroups = { Groups = { { SourceSegments = { { Id = 'loop' } } } } } }))
      local ok, err = pcall(function() return S.load('loop'):count() end)
      emit { ok, err }]]
    assert.is_false(v[1])
    assert.matches("refers to itself", v[2], 1, true)
  end)
end)

describe('imported segments', function()
  it('a User.UserId-only CSV expands to every endpoint of each user, fixed at import', function()
    local dir = h.tmpdir()
    h.write(dir .. '/users.csv', 'User.UserId\nu1\nnobody\n')
    local v = run(([[
      local seg = must(S.import(%q, { name = 'vip-users' }))
      local before = ids(seg)
      put({ Id = 'e9', ChannelType = 'CUSTOM', Address = 'n', User = { UserId = 'u1' } })
      emit { before, ids(seg), seg.version, seg:contains('e2'), seg:contains('e3'),
        ids(S.from_pinpoint { Name = 'x', SegmentGroups = { Groups = { { SourceSegments = { { Id = 'vip-users' } },
          Dimensions = { { Demographic = { Channel = { Values = { 'SMS' } } } } } } } } }) }]]):format(dir .. '/users.csv'))
    assert.are.same({ 'e1,e2', 'e1,e2', 1, true, false, 'e2' }, v)
  end)
  it('endpoint rows (NDJSON and CSV) are registered and become the members', function()
    local dir = h.tmpdir()
    h.write(dir .. '/new.ndjson', '{"Id":"n1","ChannelType":"EMAIL","Address":"n1@example.com","Attributes":{"Ride":["Bus"]}}\n' ..
      '{"Id":"e4","ChannelType":"CUSTOM","Address":"x4"}\n')
    h.write(dir .. '/new.csv', 'ChannelType,Address,Location.Country,Attributes.Ride,Attributes.Ride,Metrics.km\n' ..
      'SMS,+15550001111,fr,Bus,Train,12.5\n')
    local v = run(([[
      local a = must(S.import(%q))
      local b = must(S.import(%q, { id = 'csv' }))
      local rows = must(herald.db.query("SELECT country, attributes, metrics FROM endpoints WHERE address = '+15550001111'"))
      emit { ids(a), a.name, b:count(), rows[1] }]]):format(dir .. '/new.ndjson', dir .. '/new.csv'))
    assert.are.same({ 'e4,n1', 'new', 1, { country = 'FR', attributes = '{"Ride":["Bus","Train"]}', metrics = '{"km":12.5}' } }, v)
  end)
  it('reads CSV as the endpoint importer does: a BOM, quoted line breaks, and a row of the wrong width refused', function()
    local dir = h.tmpdir()
    h.write(dir .. '/q.csv', '\239\187\191Id,ChannelType,Address,Location.City\r\n'
      .. 'q1,EMAIL,q1@example.com,"Paris, France"\r\nq2,EMAIL,q2@example.com,"two\nlines"\r\n')
    h.write(dir .. '/wide.csv', 'Id,ChannelType,Address,Location.City\n\nw1,EMAIL,w1@example.com,Paris, France\n')
    local v = run(([[
      local seg = must(S.import(%q))
      local rows = must(herald.db.query("SELECT id, city FROM endpoints WHERE id IN ('q1', 'q2') ORDER BY id"))
      local bad, err = S.import(%q)
      emit { ids(seg), rows[1].city, rows[2].city, bad == nil, err, herald.endpoints.get('w1') == nil }]]):format(
        dir .. '/q.csv', dir .. '/wide.csv'))
    assert.are.same({ 'q1,q2', 'Paris, France', 'two\nlines', true, dir .. '/wide.csv:3: 5 fields; the header has 4', true }, v)
  end)
  it('tells CSV from JSON as `herald import endpoints` does: extension in any case, duplicate JSON keys refused', function()
    local dir = h.tmpdir()
    h.write(dir .. '/VIP.CSV', 'Id,ChannelType,Address\nu1,EMAIL,u1@example.com\n')
    h.write(dir .. '/list.txt', 'Id,ChannelType,Address\nu2,EMAIL,u2@example.com\n')
    h.write(dir .. '/dup.ndjson', '{"Id":"d1","ChannelType":"EMAIL","Address":"d1@example.com"}\n' ..
      '{"Id":"d2","ChannelType":"EMAIL","Address":"a@example.com","Address":"b@example.com"}\n')
    local v = run(([[
      local up = must(S.import(%q))
      local txt = must(S.import(%q))
      local bad, err = S.import(%q)
      emit { ids(up), up.name, ids(txt), bad == nil, err, herald.endpoints.get('d1') == nil }]]):format(
        dir .. '/VIP.CSV', dir .. '/list.txt', dir .. '/dup.ndjson'))
    assert.are.same({ 'u1', 'VIP', 'u2', true }, { v[1], v[2], v[3], v[4] })
    assert.matches(dir .. '/dup.ndjson:2: invalid JSON at column', v[5], 1, true)
    assert.matches('duplicate object key', v[5], 1, true)
    assert.is_true(v[6])
  end)
  it('is all or nothing: a bad row leaves no segment and no endpoint, naming the line', function()
    local dir = h.tmpdir()
    h.write(dir .. '/bad.ndjson', '{"Id":"n1","ChannelType":"EMAIL","Address":"n1@example.com"}\n' ..
      '{"Id":"n2","ChannelType":"EMAIL","Address":"not-an-email"}\n')
    local v = run(([[
      local seg, err = S.import(%q)
      emit { seg == nil, err, herald.endpoints.get('n1') == nil, S.load('bad') == nil }]]):format(dir .. '/bad.ndjson'))
    assert.is_true(v[1])
    assert.matches('bad.ndjson:2: Address', v[2], 1, true)
    assert.is_true(v[3])
    assert.is_true(v[4])
  end)
end)

describe('imports in definition files', function()
  local function herald(dir, args, env)
    return h.herald('--db c.db ' .. args, { cwd = dir, env = env })
  end
  local function state(dir)
    local v = h.query(dir, 'c.db', "SELECT (SELECT json_extract(attributes, '$.tier[0]') FROM endpoints WHERE id = 'v1') AS tier, " ..
      "(SELECT group_concat(version) FROM segments WHERE id = 'vip') AS versions, " ..
      "(SELECT count(*) FROM endpoints WHERE id = 'w1') AS w1, (SELECT count(*) FROM segments WHERE id = 'more') AS more, " ..
      "(SELECT count(*) FROM campaigns WHERE id = 'late') AS late")
    return v[1]
  end
  -- A directory with vip.csv (v1, tier gold) and c.lua, a campaign file importing it, loaded once.
  local function loaded_vip_campaign()
    local dir = h.tmpdir()
    h.write(dir .. '/vip.csv', 'Id,ChannelType,Address,Attributes.tier\nv1,EMAIL,v1@example.com,gold\n')
    h.write(dir .. '/c.lua', [[
local vip = herald.segment.import('vip.csv')
herald.campaign{ name = 'vipc', segment = vip, deliver = { file = 'out.txt' }, message = { body = 'hi' },
  schedule = { start = '2027-05-01T12:00:00Z' } }
]])
    local _, code, err = herald(dir, 'campaign load c.lua')
    assert.are.equal(0, code, err)
    return dir
  end
  it('apply only when the file changed, so a reload keeps later endpoint changes', function()
    local dir = loaded_vip_campaign()
    local _, code, err
    _, code, err = herald(dir, '-e ' .. h.shell_quote("assert(herald.endpoints.put{ Id = 'v1', Attributes = { tier = { 'silver' } } })"))
    assert.are.equal(0, code, err)
    _, code, err = herald(dir, 'campaign load c.lua')
    assert.are.equal(0, code, err)
    _, code, err = herald(dir, 'run --until 2027-05-01T00:00:00Z c.lua', { HERALD_CLOCK_START = '2027-04-30T00:00:00Z' })
    assert.are.equal(0, code, err)
    assert.are.same({ tier = 'silver', versions = '1', w1 = 0, more = 0, late = 0 }, state(dir))
    -- the same rows written differently (other column order, a BOM) are the same data
    h.write(dir .. '/vip.csv', '\239\187\191Address,Id,Attributes.tier,ChannelType\r\nv1@example.com,v1,gold,EMAIL\r\n')
    _, code, err = herald(dir, 'campaign load c.lua')
    assert.are.equal(0, code, err)
    assert.are.same({ tier = 'silver', versions = '1', w1 = 0, more = 0, late = 0 }, state(dir))
    -- changed data is a new version, applied
    h.write(dir .. '/vip.csv', 'Id,ChannelType,Address,Attributes.tier\nv1,EMAIL,v1@example.com,platinum\n')
    _, code, err = herald(dir, 'campaign load c.lua')
    assert.are.equal(0, code, err)
    assert.are.same({ tier = 'platinum', versions = '1,2', w1 = 0, more = 0, late = 0 }, state(dir))
    -- outside definition files an import is an explicit act: applied every time
    _, code, err = herald(dir, '-e ' .. h.shell_quote("assert(herald.endpoints.put{ Id = 'v1', Attributes = { tier = { 'silver' } } }) " ..
      "assert(herald.segment.import('vip.csv'))"))
    assert.are.equal(0, code, err)
    assert.are.same({ tier = 'platinum', versions = '1,2,3', w1 = 0, more = 0, late = 0 }, state(dir))
  end)
  it('are undone with the campaigns of a file that fails after them', function()
    local dir = loaded_vip_campaign()
    h.write(dir .. '/more.csv', 'Id,ChannelType,Address\nw1,EMAIL,w1@example.com\n')
    local _, code, err
    h.write(dir .. '/vip.csv', 'Id,ChannelType,Address,Attributes.tier\nv1,EMAIL,v1@example.com,platinum\n')
    h.write(dir .. '/c.lua', [[
local vip = herald.segment.import('vip.csv')
local more = herald.segment.import('more.csv')
herald.campaign{ name = 'late', segment = more, deliver = { file = 'out.txt' }, message = { body = 'hi' },
  schedule = { start = '2027-05-01T12:00:00Z' } }
error('broken after the imports')
]])
    _, code, err = herald(dir, 'campaign load c.lua')
    assert.are_not.equal(0, code)
    assert.matches('c.lua:5: broken after the imports', err, 1, true)
    _, code, err = herald(dir, 'run --until 2027-05-01T00:00:00Z c.lua', { HERALD_CLOCK_START = '2027-04-30T00:00:00Z' })
    assert.are_not.equal(0, code)
    assert.are.same({ tier = 'gold', versions = '1', w1 = 0, more = 0, late = 0 }, state(dir))
    -- a failed import the file handles still fails the file: its writes are all or nothing
    h.write(dir .. '/bad.csv', 'Id,ChannelType,Address\nb1,EMAIL,not-an-address\n')
    h.write(dir .. '/h.lua', [[
local seg = herald.segment.import('more.csv')
local bad = herald.segment.import('bad.csv') or seg
]])
    _, code, err = herald(dir, 'campaign load h.lua')
    assert.are_not.equal(0, code)
    assert.matches('h.lua: a write of this file to the store failed and the file went on', err, 1, true)
    assert.are.same({ tier = 'gold', versions = '1', w1 = 0, more = 0, late = 0 }, state(dir))
  end)
end)

describe('segment Lua forms', function()
  it('the concise form means the same as the Pinpoint form', function()
    local v = run [[
      local concise = S{ name = 'c', channel = 'EMAIL', country = { not_in = 'DE' }, platform = { not_in = { 'android' } },
        attributes = { plan = 'pro', signup = { before = '2026-03-01' } }, metrics = { score = { ge = 10 } }, active = 'DAY_30' }
      local pinpoint = S.from_pinpoint(herald.json.encode(concise:to_pinpoint()))
      emit { ids(concise), ids(pinpoint), concise:to_pinpoint().Dimensions.Location.Country.DimensionType }]]
    assert.are.same({ 'e1,e3', 'e1,e3', 'EXCLUSIVE' }, v)
  end)
  it('channel values are read in any case, in and out', function()
    local v = run [[
      emit { ids(S{ name = 'a', channel = 'email' }), ids(S{ name = 'b', channel = { not_in = 'sms' } }),
             ids(S{ name = 'c', channel = { 'Sms', 'custom' } }), S{ name = 'd', channel = 'email' }:to_pinpoint().Dimensions.Demographic.Channel.Values }]]
    assert.are.same({ 'e1,e3,e5', 'e1,e3,e4,e5', 'e2,e4', { 'EMAIL' } }, v)
  end)
  it('between with a date-only end includes that whole day, as on does', function()
    local v = run [[
      emit { ids(S{ name = 'a', attributes = { signup = { between = { '2026-01-01', '2026-01-15' } } } }),
             ids(S{ name = 'b', attributes = { signup = { on = '2026-01-15' } } }),
             ids(S{ name = 'c', user_attributes = { born = { between = { '1990-05-01', '1990-05-01' } } } }) }]]
    assert.are.same({ 'e1', 'e1,e3', 'e1' }, v)
  end)
  it('concise near, inactive, user_attributes and the other attribute words', function()
    local v = run [[
      emit { ids(S{ name = 'a', near = { lat = 48.8566, lon = 2.3522, km = 20 } }),
             ids(S{ name = 'b', inactive = 'DAY_7' }),
             ids(S{ name = 'c', user_attributes = { born = { on = '1990-05-01' } } }),
             ids(S{ name = 'd', attributes = { tags = { contains = 'old' }, signup = { between = { '2026-01-01', '2026-12-31' } } } }),
             ids(S{ name = 'e', attributes = { signup = { after = '2026-01-20' } }, metrics = { score = { lt = 6 } } }),
             ids(S{ name = 'f', metrics = { score = 10 }, make = 'apple', model = 'iPhone', app_version = '1.0', device_type = 'iPhone' }) }]]
    assert.are.same({ 'e2,e3', 'e3,e4,e5', 'e1', 'e1', 'e2', 'e1' }, v)
  end)
  it('a filter sees only the rows the SQL keeps, through a read-only view', function()
    local v = run [[
      local seen = {}
      local seg = S{ name = 'f', country = 'FR', filter = function(ep)
        seen[ep.Id] = true
        return ep.Metrics.score > 6 and ep.Attributes.plan[1] == 'team' and #ep.Attributes.plan == 2
      end }
      local n = seg:count { now_ms = NOW }
      local list = {}
      for id in pairs(seen) do list[#list + 1] = id end
      table.sort(list)
      local writer = S{ name = 'w', country = 'FR', filter = function(ep) ep.Attributes.plan[1] = 'x' return true end }
      local ok, err = pcall(writer.count, writer)
      emit { n, table.concat(list, ','), ok, err }]]
    assert.are.equal(1, v[1])
    assert.are.equal('e2,e3', v[2])
    assert.is_false(v[3])
    assert.matches('views are read-only', v[4], 1, true)
  end)
  it('a filter reads any field, users, and recent events on demand', function()
    local v = run [[
      local seg = S{ name = 'f', filter = function(ep)
        local evs = ep:events()
        return ep.User.UserId == 'u1' and #evs == 1 and evs[1].EventType == 'visit' and ep.Location.Country ~= nil
          and ep.CohortId ~= nil and ep.EffectiveDate ~= nil
      end }
      local each = {}
      seg:each(function(ep) each[#each + 1] = ep.Id .. ':' .. ep.Address end)
      table.sort(each)
      emit { ids(seg), seg:contains('e1'), seg:contains('e3'), table.concat(each, ' ') }]]
    assert.are.same({ 'e1,e2', true, false, 'e1:ann@example.com e2:+15550000002' }, v)
  end)
  it('a filter that fails stops the evaluation with the script line', function()
    local dir = h.tmpdir()
    local path = h.write(dir .. '/f.lua', FIXTURE:gsub('must%(', 'assert(') ..
      "S{ name = 'boom', filter = function(ep)\n  return ep.Metrics.nothing > 1\nend }:count()\n")
    local _, rc, err = h.herald('--db ' .. h.shell_quote(dir .. '/h.db') .. ' ' .. h.shell_quote(path))
    assert.are_not.equal(0, rc)
    assert.matches('f.lua:%d+: attempt to compare', err)
  end)
end)

describe('segments in campaign code', function()
  it('evaluate inside the sandbox, where a runaway filter stops at its line', function()
    local v = run [[
      local fine = [=[local S = require('herald').segment
        return S{ name = 'ok', country = 'FR', filter = function(ep) return ep.Metrics.score > 6 end }:count()]=]
      local spin = [=[local S = require('herald').segment
        local s = S{ name = 'spin', filter = function(ep)
          while true do end
        end }
        return pcall(s.count, s)]=]
      local sb = must(herald.sandbox.new { budget = 10^7, memory = 32 * 2^20 })
      local ok1, n = sb:run(fine, 'fine.lua')
      local ok2, err = sb:run(spin, 'spin.lua')
      emit { ok1, n, ok2, err }]]
    assert.is_true(v[1], v[2])
    assert.are.equal(1, v[2])
    assert.is_false(v[3])
    assert.matches('spin.lua:3: instruction budget exceeded', v[4], 1, true)
  end)
end)

describe('segment composition', function()
  it('all, any and none over declarative and filtered segments', function()
    local v = run [[
      local fr = S{ name = 'fr', country = 'FR' }
      local email = S{ name = 'email', channel = 'EMAIL' }
      local high = S{ name = 'high', filter = function(ep) return (ep.Metrics.score or 0) >= 10 end }
      emit { ids(S.all { fr, email }), ids(S.any { fr, email }), ids(S.none { fr, email }),
             ids(S.all { email, high }), ids(S.any { fr, high }), ids(S.none { fr, high }),
             S.any { fr, high }:contains('e1'), S.none { fr, high }:contains('e1'), S.none { fr, high }:contains('e4'),
             S.all { fr, email, name = 'named' }.name }]]
    assert.are.same({ 'e3', 'e1,e2,e3,e5', 'e4', 'e1,e3', 'e1,e2,e3', 'e4,e5', true, false, true, 'named' }, v)
  end)
end)

describe('segment REPL helpers', function()
  it('explain shows the SQL, the plan and what each clause keeps', function()
    local v = run [[
      local seg = S{ name = 'x', country = 'FR', attributes = { plan = 'pro' }, metrics = { score = { gt = 5 } } }
      local x = seg:explain { now_ms = NOW }
      emit { x.sql, #x.plan > 0, x.clauses, x.declarative, tostring(x) }]]
    assert.matches('SELECT count%(%*%) FROM endpoints e WHERE e.app_id = :app', v[1])
    assert.is_true(v[2])
    local counts = {}
    for _, c in ipairs(v[3]) do counts[c.label] = c.count end
    assert.are.same({ ['Location.Country'] = 2, ['Attributes.plan'] = 2, ['Metrics.score'] = 2 }, counts)
    assert.are.equal(1, v[4])
    assert.matches('Attributes.plan%s+2', v[5])
    assert.matches('plan:', v[5])
  end)
  it('count, sample and contains', function()
    local v = run [[
      local seg = S{ name = 'x', channel = 'EMAIL' }
      local sample = seg:sample(2)
      local all = seg:sample(10)
      emit { seg:count(), #sample, sample[1].ChannelType, #all, seg:contains('e1'), seg:contains('e2'), seg:contains('nope') }]]
    assert.are.same({ 3, 2, 'EMAIL', 3, true, false, false }, v)
  end)
  it('compile() gives a condition other engines can embed, with named parameters only', function()
    local v = run [[
      local seg = S{ name = 'x', country = 'FR', attributes = { ["it's"] = "'); DROP TABLE endpoints; --", ['we"ird'] = 'v' } }
      put({ Id = 'q', ChannelType = 'CUSTOM', Address = 'q', Location = { Country = 'FR' },
        Attributes = { ["it's"] = { "'); DROP TABLE endpoints; --" }, ['we"ird'] = { 'v' } } })
      local c = seg:compile()
      local st = require('herald.core.segment').prepare('SELECT e.id FROM endpoints e WHERE e.app_id = :app AND (' .. c.where .. ')')
      c.params.app = 'default'
      st:bind(c.params)
      local n, idlist = st:fetch(10)
      emit { c.where:find("DROP", 1, true) == nil, c.where:find("it's", 1, true) == nil, n, idlist[1], c.filter == nil, herald.endpoints.count() }]]
    assert.are.same({ true, true, 1, 'q', true, 6 }, v)
  end)
end)

describe('segment definition errors', function()
  local function err_of(code)
    local v = run('local ok, err = pcall(function() ' .. code .. ' end) emit { ok, err }')
    assert.is_false(v[1])
    return v[2]
  end
  it('name the field path and the allowed values', function()
    assert.matches("Dimensions.Attributes.plan.AttributeType: 'LIKE' is not one of INCLUSIVE, EXCLUSIVE, CONTAINS, BEFORE, AFTER, BETWEEN, ON",
      err_of [[S.from_pinpoint { Name = 'x', Dimensions = { Attributes = { plan = { AttributeType = 'LIKE', Values = { 'a' } } } } }]], 1, true)
    assert.matches("Dimensions.Behavior.Recency.Duration: 'DAY_90' is not one of HR_24, DAY_7, DAY_14, DAY_30",
      err_of [[S.from_pinpoint { Name = 'x', Dimensions = { Behavior = { Recency = { Duration = 'DAY_90', RecencyType = 'ACTIVE' } } } }]], 1, true)
    assert.matches("Dimensions.Foo: unknown field (allowed: Attributes, UserAttributes, Metrics, Demographic, Location, Behavior)",
      err_of [[S.from_pinpoint { Name = 'x', Dimensions = { Foo = {} } }]], 1, true)
    assert.matches("Dimensions.Metrics.score.ComparisonOperator: 'ABOVE' is not one of GREATER_THAN",
      err_of [[S.from_pinpoint { Name = 'x', Dimensions = { Metrics = { score = { ComparisonOperator = 'ABOVE', Value = 1 } } } }]], 1, true)
    assert.matches("SegmentGroups.Groups[1].Type: 'SOME' is not one of ALL, ANY, NONE",
      err_of [[S.from_pinpoint { Name = 'x', SegmentGroups = { Groups = { { Type = 'SOME' } } } }]], 1, true)
    assert.matches("Dimensions.Demographic.Platform.Values: required, a non-empty list of strings",
      err_of [[S.from_pinpoint { Name = 'x', Dimensions = { Demographic = { Platform = { Values = {} } } } }]], 1, true)
  end)
  it('refuse malformed dates and a BETWEEN without two values', function()
    assert.matches("Dimensions.Attributes.signup.Values[1]: '2026-02-30' is not an ISO-8601 date",
      err_of [[S.from_pinpoint { Name = 'x', Dimensions = { Attributes = { signup = { AttributeType = 'AFTER', Values = { '2026-02-30' } } } } }]], 1, true)
    assert.matches("Dimensions.Attributes.signup.Values: BETWEEN takes two dates (start and end), got 1 values",
      err_of [[S.from_pinpoint { Name = 'x', Dimensions = { Attributes = { signup = { AttributeType = 'BETWEEN', Values = { '2026-01-01' } } } } }]], 1, true)
    -- The concise form is checked as the Pinpoint request it stands for, under its own keys.
    assert.matches("attributes.signup.before: 'soon' is not an ISO-8601 date",
      err_of [[S{ name = 'x', attributes = { signup = { before = 'soon' } } }]], 1, true)
  end)
  it('refuse a BETWEEN whose start is after its end, naming the field', function()
    assert.matches("Dimensions.Attributes.signup.Values: BETWEEN's start '2026-01-03' is after its end '2025-12-01'",
      err_of [[S.from_pinpoint { Name = 'x', Dimensions = { Attributes = { signup = { AttributeType = 'BETWEEN', Values = { '2026-01-03', '2025-12-01' } } } } }]], 1, true)
    assert.matches("SegmentGroups.Groups[1].Dimensions[1].UserAttributes.born.Values: BETWEEN's start '2026-01-16' is after its end '2026-01-15'",
      err_of [[S.from_pinpoint { Name = 'x', SegmentGroups = { Groups = { { Dimensions = { { UserAttributes = { born = { AttributeType = 'BETWEEN', Values = { '2026-01-16', '2026-01-15' } } } } } } } } }]], 1, true)
    assert.matches("script.lua:%d+: herald.segment: attributes.signup.between: BETWEEN's start '2026%-01%-03' is after its end '2025%-12%-01'",
      err_of [[S{ name = 'x', attributes = { signup = { between = { '2026-01-03', '2025-12-01' } } } }]])
  end)
  it('refuse a Channel that is no endpoint ChannelType, listing them', function()
    assert.matches("Dimensions.Demographic.Channel.Values[2]: 'FAX' is not a ChannelType (one of PUSH, GCM, APNS, APNS_SANDBOX, APNS_VOIP, APNS_VOIP_SANDBOX, ADM, SMS, VOICE, EMAIL, BAIDU, CUSTOM, IN_APP)",
      err_of [[S.from_pinpoint { Name = 'x', Dimensions = { Demographic = { Channel = { Values = { 'EMAIL', 'FAX' } } } } }]], 1, true)
    assert.matches("channel: 'mail' is not a ChannelType (one of PUSH,", err_of [[S{ name = 'x', channel = 'mail' }]], 1, true)
    assert.matches("channel.not_in[2]: 'fax' is not a ChannelType", err_of [[S{ name = 'x', channel = { not_in = { 'sms', 'fax' } } }]], 1, true)
  end)
  it('concise form errors name the key the user wrote, at the script line', function()
    local function at_line(want, code)
      assert.matches('script.lua:%d+: herald.segment: ' .. want:gsub('%p', '%%%0') .. '$', err_of(code))
    end
    at_line('near.lat: outside -90..90', [[S{ name = 'x', near = { lat = 100, lon = 2, km = 5 } }]])
    at_line('near.lon: required, a finite number', [[S{ name = 'x', near = { lat = 10, km = 5 } }]])
    at_line('near.km: must not be negative', [[S{ name = 'x', near = { lat = 10, lon = 2, km = -1 } }]])
    at_line('metrics.v.gt: expected a finite number', [[S{ name = 'x', metrics = { v = { gt = '3' } } }]])
    at_line('metrics.v: expected a finite number', [[S{ name = 'x', metrics = { v = 0/0 } }]])
    at_line("active: 'DAY_8' is not one of HR_24, DAY_7, DAY_14, DAY_30", [[S{ name = 'x', active = 'DAY_8' }]])
    at_line("inactive: 'week' is not one of HR_24, DAY_7, DAY_14, DAY_30", [[S{ name = 'x', inactive = 'week' }]])
    at_line('attributes.plan[2]: expected a string', [[S{ name = 'x', attributes = { plan = { 'pro', 7 } } }]])
    at_line("attributes.signup.between[2]: '2026-13-01' is not an ISO-8601 date or date-time (2026-11-29 or 2026-11-29T10:00:00Z)",
      [[S{ name = 'x', attributes = { signup = { between = { '2026-01-01', '2026-13-01' } } } }]])
    at_line('user_attributes.born.after: AFTER takes exactly one date, got 2 values',
      [[S{ name = 'x', user_attributes = { born = { after = { '2026-01-01', '2026-02-01' } } } }]])
    at_line('country.not_in: required, a non-empty list of strings', [[S{ name = 'x', country = { not_in = {} } }]])
    at_line("country[2]: 'France' is not an ISO 3166-1 alpha-2 code", [[S{ name = 'x', country = { 'FR', 'France' } }]])
    at_line("platform.not_in[1]: expected a string", [[S{ name = 'x', platform = { not_in = { true } } }]])
  end)
  it('concise form errors name the key; definitions fail at the script line', function()
    assert.matches("colour: unknown field", err_of [[S{ name = 'x', colour = 'red' }]], 1, true)
    assert.matches("metrics.score: expected a number or one of", err_of [[S{ name = 'x', metrics = { score = { above = 1 } } }]], 1, true)
    assert.matches("country: 'France' is not an ISO 3166-1 alpha-2 code", err_of [[S{ name = 'x', country = 'France' }]], 1, true)
    assert.matches('script.lua:%d+: herald.segment: colour', err_of [[S{ name = 'x', colour = 'red' }]])
    assert.matches('not a JSON object', err_of [[S.from_pinpoint('{"Name": ')]], 1, true)
  end)
  it('the existing predicate-only form keeps working', function()
    local v = run [[
      local seg = S{ name = 'all' }
      emit { seg:count(), S.is_segment(seg), S.is_segment({}), tostring(seg), seg:compile().where }]]
    assert.are.same({ 5, true, false, 'segment all', '1' }, v)
  end)
end)
