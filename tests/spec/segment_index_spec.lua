-- Value indexes for segments (runtime/segment.c, README "Indexes"), through the real binary:
-- explain() shows the index after `herald index add` and after creation on demand; every
-- operator gives the same members with and without an index, over list-valued attributes;
-- the CLI lists, adds and drops indexes and refuses bad names; imports, updates and deletes
-- keep the indexed values in step.
local h = require 'helpers'
local s = require 'store_helpers'

local NOW = 1781784000000 -- 2026-06-18T12:00:00Z

-- Endpoints with list-valued attributes, dates with and without zones, and metrics.
local FIXTURE = [[
local S = herald.segment
S.auto_index = false
local NOW = 1781784000000
local function put(ep) must(herald.endpoints.put(ep)) end
put({ Id = 'e1', ChannelType = 'EMAIL', Address = 'ann@example.com',
  Attributes = { plan = { 'gold', 'silver' }, signup = { '2026-01-15T10:00:00Z' } },
  Metrics = { score = 10, visits = 3 },
  User = { UserId = 'u1', UserAttributes = { tier = { 'gold' }, born = { '1990-05-01' } } } })
put({ Id = 'e2', ChannelType = 'EMAIL', Address = 'bo@example.com',
  Attributes = { plan = { 'free' }, signup = { '2026-02-01', '2026-03-01' } },
  Metrics = { score = 5 }, User = { UserAttributes = { tier = { 'silver', 'golden' } } } })
put({ Id = 'e3', ChannelType = 'EMAIL', Address = 'cy@example.com',
  Attributes = { plan = { 'team', 'gold' }, signup = { '2026-01-15T23:30:00-05:00' } },
  Metrics = { score = 10.5 } })
put({ Id = 'e4', ChannelType = 'CUSTOM', Address = 'x4' })
put({ Id = 'e5', ChannelType = 'EMAIL', Address = 'di@example.com',
  Attributes = { signup = { 'not a date' }, plan = { 'golden' } }, Metrics = { score = -1 } })
local function ids(seg)
  local out = seg:ids { now_ms = NOW }
  table.sort(out)
  return table.concat(out, ',')
end
local function plan_text(seg)
  return table.concat(seg:explain { now_ms = NOW }.plan, '\n')
end
]]

local function run(db, code, opts)
  local v, rc, err = s.run(db, code, opts)
  assert.are.equal(0, rc, err)
  return v
end

local function index_cli(db, args)
  return h.herald('--db ' .. h.shell_quote(db) .. ' index ' .. args)
end

-- One segment per operator (Dimensions as Lua source) and the members Pinpoint's semantics
-- give on the fixture.
local CASES = {
  { "{ Attributes = { plan = { AttributeType = 'INCLUSIVE', Values = { 'gold' } } } }", 'e1,e3' },
  { "{ Attributes = { plan = { AttributeType = 'INCLUSIVE', Values = { 'silver', 'free' } } } }", 'e1,e2' },
  { "{ Attributes = { plan = { AttributeType = 'EXCLUSIVE', Values = { 'gold' } } } }", 'e2,e4,e5' },
  { "{ Attributes = { plan = { AttributeType = 'CONTAINS', Values = { 'old' } } } }", 'e1,e3,e5' },
  { "{ Attributes = { signup = { AttributeType = 'BEFORE', Values = { '2026-01-16T05:00:00Z' } } } }", 'e1,e3' },
  { "{ Attributes = { signup = { AttributeType = 'AFTER', Values = { '2026-02-15' } } } }", 'e2' },
  { "{ Attributes = { signup = { AttributeType = 'BETWEEN', Values = { '2026-01-15T12:00:00Z', '2026-02-01' } } } }", 'e2,e3' },
  { "{ Attributes = { signup = { AttributeType = 'ON', Values = { '2026-01-15' } } } }", 'e1,e3' },
  { "{ UserAttributes = { tier = { AttributeType = 'INCLUSIVE', Values = { 'gold' } } } }", 'e1' },
  { "{ UserAttributes = { tier = { AttributeType = 'CONTAINS', Values = { 'gold' } } } }", 'e1,e2' },
  { "{ UserAttributes = { born = { AttributeType = 'BEFORE', Values = { '2000-01-01' } } } }", 'e1' },
  { "{ Metrics = { score = { ComparisonOperator = 'GREATER_THAN', Value = 5 } } }", 'e1,e3' },
  { "{ Metrics = { score = { ComparisonOperator = 'LESS_THAN', Value = 10 } } }", 'e2,e5' },
  { "{ Metrics = { score = { ComparisonOperator = 'GREATER_THAN_OR_EQUAL', Value = 10 } } }", 'e1,e3' },
  { "{ Metrics = { score = { ComparisonOperator = 'LESS_THAN_OR_EQUAL', Value = 5 } } }", 'e2,e5' },
  { "{ Metrics = { score = { ComparisonOperator = 'EQUAL', Value = 10.5 } } }", 'e3' },
  { "{ Metrics = { visits = { ComparisonOperator = 'EQUAL', Value = 3 } } }", 'e1' },
}

local INDEXED = { 'Attributes.plan', 'Attributes.signup', 'UserAttributes.tier',
  'UserAttributes.born', 'Metrics.score', 'Metrics.visits' }

describe('segment value indexes', function()
  it('give the same members as the JSON for every operator, and the plan reads them', function()
    local db = s.db()
    local segs = {}
    for i, c in ipairs(CASES) do
      segs[i] = "S.from_pinpoint { Name = 'c" .. i .. "', Dimensions = " .. c[1] .. ' }'
    end
    local eval = 'local out = {}\n'
    for i, src in ipairs(segs) do
      eval = eval .. ('do local seg = %s; out[%d] = { ids = ids(seg), count = seg:count { now_ms = NOW }, ' ..
        'plan = plan_text(seg) } end\n'):format(src, i)
    end
    local before = run(db, FIXTURE .. eval .. 'emit(out)')
    local out, rc, err = index_cli(db, 'add ' .. table.concat(INDEXED, ' '))
    assert.are.equal(0, rc, err)
    for _, n in ipairs(INDEXED) do assert.truthy(out:find(n .. ': created', 1, true), out) end
    local prelude = 'local S = herald.segment\nS.auto_index = false\nlocal NOW = ' .. NOW ..
      '\n' .. FIXTURE:match('local function ids.*$')
    local after = run(db, prelude .. eval .. 'emit(out)')
    -- drive_limit 0: no indexed condition drives; each is checked per endpoint.
    local probed = run(db, prelude .. 'S.drive_limit = 0\n' .. eval .. 'emit(out)')
    for i, c in ipairs(CASES) do
      assert.are.equal(c[2], before[i].ids, c[1])
      assert.are.equal(c[2], after[i].ids, c[1])
      local n = select(2, c[2]:gsub(',', '')) + 1
      assert.are.equal(n, before[i].count, c[1])
      assert.are.equal(n, after[i].count, c[1])
      assert.is_nil(before[i].plan:find('indexed_values', 1, true), before[i].plan)
      assert.truthy(after[i].plan:find('indexed_values', 1, true), c[1] .. '\n' .. after[i].plan)
      assert.are.equal(c[2], probed[i].ids, c[1])
      assert.are.equal(n, probed[i].count, c[1])
      assert.truthy(probed[i].plan:find('indexed_values', 1, true), c[1] .. '\n' .. probed[i].plan)
    end
  end)

  it('explain() says which names have an index and suggests herald index for the others', function()
    local db = s.db()
    local v = run(db, FIXTURE .. [[
local seg = S { name = 'x', attributes = { plan = 'gold' }, metrics = { score = { gt = 1 } } }
local before = seg:explain { now_ms = NOW }
must(S.index_add('Attributes.plan'))
local after = seg:explain { now_ms = NOW }
local odd = S { name = 'odd', attributes = { ['a:b'] = 'x' } }:explain { now_ms = NOW }
emit { before = tostring(before), after = tostring(after), after_plan = after.plan,
  indexes = after.indexes, odd = tostring(odd), declarative = after.declarative }
]])
    assert.truthy(v.before:find('Attributes.plan%s+no index; `herald index add Attributes.plan` would help'), v.before)
    assert.truthy(v.after:find('Attributes.plan%s+value index #1'), v.after)
    assert.truthy(v.after:find('Metrics.score%s+no index; `herald index add Metrics.score`'), v.after)
    assert.truthy(table.concat(v.after_plan, '\n'):find('SEARCH indexed_values USING PRIMARY KEY %(index_id=%? AND value=%?%)'),
      table.concat(v.after_plan, '\n'))
    assert.are.same({ name = 'Attributes.plan', indexed = true, note = 'value index #1' }, v.indexes[1])
    assert.are.equal(false, v.indexes[2].indexed)
    assert.are.equal(2, v.declarative)
    assert.truthy(v.odd:find("Attributes.a:b%s+not indexable: Attributes.a:b: names may not contain # : %? \\ or /"), v.odd)
  end)

  it('are created on demand when a segment is evaluated, once, and kept across processes', function()
    local db = s.db()
    local v = run(db, FIXTURE .. [[
S.auto_index = true
local seg = S { name = 'x', attributes = { plan = 'gold' }, user_attributes = { tier = { contains = 'gold' } } }
local n = seg:count { now_ms = NOW }
local list = S.indexes()
local explained = seg:explain { now_ms = NOW }
-- contains() never creates one: it is the cheap membership check of triggers.
local other = S { name = 'y', metrics = { visits = 3 } }
local hit = other:contains('e1', { now_ms = NOW })
emit { n = n, list = list, plan = explained.plan, after_contains = #S.indexes(), hit = hit }
]])
    assert.are.equal(1, v.n)
    assert.are.equal(2, #v.list)
    assert.are.equal('Attributes.plan', v.list[1].name)
    assert.are.equal('demand', v.list[1].origin)
    -- e1 gold and silver, e2 free, e3 team and gold, e5 golden: 6 values of 4 endpoints.
    assert.are.equal(6, v.list[1].rows)
    assert.are.equal(4, v.list[1].endpoints)
    assert.are.equal('UserAttributes.tier', v.list[2].name)
    assert.truthy(table.concat(v.plan, '\n'):find('indexed_values', 1, true))
    assert.are.equal(2, v.after_contains)
    assert.is_true(v.hit)
    -- A new process finds them recorded and does not create them again.
    local w = run(db, [[
local seg = herald.segment { name = 'x', attributes = { plan = 'gold' } }
local plan = table.concat(seg:explain().plan, '\n')
emit { plan = plan, n = #herald.segment.indexes(), created = herald.segment.indexes()[1].creation_date }
]])
    assert.truthy(w.plan:find('indexed_values', 1, true), w.plan)
    assert.are.equal(2, w.n)
    assert.are.equal(v.list[1].creation_date, w.created)
    local out, rc = index_cli(db, '')
    assert.are.equal(0, rc)
    assert.truthy(out:find('Attributes.plan%s+6%s+4%s+demand'), out)
  end)

  it('follow endpoint updates and deletes in the same transaction', function()
    local db = s.db()
    local v = run(db, FIXTURE .. [[
must(S.index_add('Attributes.plan'))
must(S.index_add('Metrics.score'))
local gold = S { name = 'g', attributes = { plan = 'gold' } }
local high = S { name = 'h', metrics = { score = { ge = 10 } } }
local r = { ids(gold) .. ' ' .. ids(high) }
must(herald.endpoints.put { Id = 'e2', Attributes = { plan = { 'gold' } }, Metrics = { score = 11 } })
must(herald.endpoints.put { Id = 'e1', Attributes = { plan = herald.json.null },
  Metrics = { score = herald.json.null } })
r[2] = ids(gold) .. ' ' .. ids(high)
must(herald.endpoints.delete('e3'))
r[3] = ids(gold) .. ' ' .. ids(high)
must(herald.endpoints.put { Id = 'e3', ChannelType = 'EMAIL', Address = 'cy@example.com',
  Attributes = { plan = { 'gold', 'gold' } } })
r[4] = ids(gold) .. ' ' .. ids(high)
emit { r = r, indexes = S.indexes() }
]])
    assert.are.same({ 'e1,e3 e1,e3', 'e2,e3 e2,e3', 'e2 e2', 'e2,e3 e2' }, v.r)
    -- plan: e2 gold, e3 gold (once), e5 golden; score: e2 11, e5 -1.
    assert.are.equal(3, v.indexes[1].rows)
    assert.are.equal(2, v.indexes[2].rows)
  end)

  it('follow imports, and a failed import leaves them as they were', function()
    local db = s.db()
    local dir = h.tmpdir()
    run(db, FIXTURE .. "must(S.index_add('Attributes.plan'))")
    local good = h.write(dir .. '/good.ndjson',
      '{"Id":"i1","ChannelType":"EMAIL","Address":"i1@example.com","Attributes":{"plan":["gold","x"]}}\n' ..
      '{"Id":"e1","Attributes":{"plan":["free"]}}\n')
    local bad = h.write(dir .. '/bad.ndjson',
      '{"Id":"i2","ChannelType":"EMAIL","Address":"i2@example.com","Attributes":{"plan":["gold"]}}\n' ..
      '{"Id":"i3","ChannelType":"EMAIL","Address":"not an address"}\n')
    local _, rc, err = s.import(db, 'endpoints', good)
    assert.are.equal(0, rc, err)
    local _, brc, berr = s.import(db, 'endpoints', bad)
    assert.are_not.equal(0, brc)
    assert.truthy(berr:find('bad.ndjson:2', 1, true), berr)
    local v = run(db, [[
local S = herald.segment
S.auto_index = false
local out = S { name = 'g', attributes = { plan = 'gold' } }:ids()
table.sort(out)
local x = S { name = 'x', attributes = { plan = { 'x', 'free' } } }:ids()
table.sort(x)
emit { gold = table.concat(out, ','), x = table.concat(x, ','), rows = S.indexes()[1].rows }
]])
    assert.are.equal('e3,i1', v.gold)
    assert.are.equal('e1,e2,i1', v.x)
    -- e1 free, e2 free, e3 team+gold, e5 golden, i1 gold+x
    assert.are.equal(7, v.rows)
  end)

  describe('herald index', function()
    it('lists, adds and drops indexes', function()
      local db = s.db()
      run(db, FIXTURE)
      local out, rc = index_cli(db, '')
      assert.are.equal(0, rc)
      assert.truthy(out:find('no indexes', 1, true), out)
      out, rc = index_cli(db, 'add Attributes.plan Metrics.score')
      assert.are.equal(0, rc)
      assert.are.equal('Attributes.plan: created\nMetrics.score: created\n', out)
      out, rc = index_cli(db, 'add Attributes.plan')
      assert.are.equal(0, rc)
      assert.are.equal('Attributes.plan: exists\n', out)
      out = index_cli(db, 'list')
      assert.truthy(out:find('Attributes.plan%s+6%s+4%s+cli%s+%d%d%d%d%-'), out)
      assert.truthy(out:find('Metrics.score%s+4%s+4%s+cli'), out)
      out, rc = index_cli(db, 'drop Metrics.score')
      assert.are.equal(0, rc)
      assert.are.equal('Metrics.score: dropped\n', out)
      out = index_cli(db, '')
      assert.is_nil(out:find('Metrics.score', 1, true), out)
    end)

    it('drops or adds all the NAMEs given or none, naming each one that is wrong', function()
      local db = s.db()
      run(db, FIXTURE)
      local out, rc, err = index_cli(db, 'add Attributes.plan Metrics.score')
      assert.are.equal(0, rc, err)
      -- A NAME that is not an index: an error naming it, and the index named with it stays.
      out, rc, err = index_cli(db, 'drop Metrics.score Metrics.nothing UserAttributes.tier')
      assert.are.equal(1, rc, out)
      assert.are.equal('', out)
      assert.truthy(err:find('herald index drop: Metrics.nothing: no such index', 1, true), err)
      assert.truthy(err:find('herald index drop: UserAttributes.tier: no such index', 1, true), err)
      assert.truthy(err:find('nothing dropped', 1, true), err)
      assert.is_nil(err:find('Metrics.score', 1, true), err)
      out = index_cli(db, '')
      assert.truthy(out:find('Metrics.score', 1, true), out)
      assert.truthy(out:find('Attributes.plan', 1, true), out)
      -- A NAME that cannot be an index is the same.
      out, rc, err = index_cli(db, 'drop Attributes.plan plan')
      assert.are.equal(1, rc, out)
      assert.truthy(err:find("'plan': expected Attributes.NAME", 1, true), err)
      assert.truthy(index_cli(db, ''):find('Attributes.plan', 1, true))
      -- add creates none of its NAMEs when one cannot be indexed.
      out, rc, err = index_cli(db, "add Metrics.visits 'Attributes.a:b'")
      assert.are.equal(1, rc, out)
      assert.truthy(err:find('Attributes.a:b: names may not contain', 1, true), err)
      assert.truthy(err:find('nothing created', 1, true), err)
      assert.is_nil(index_cli(db, ''):find('Metrics.visits', 1, true))
      -- A NAME given twice is dropped once.
      out, rc, err = index_cli(db, 'drop Metrics.score Attributes.plan Metrics.score')
      assert.are.equal(0, rc, err)
      assert.are.equal('Metrics.score: dropped\nAttributes.plan: dropped\n', out)
      out, rc, err = index_cli(db, 'drop Metrics.score')
      assert.are.equal(1, rc, out)
      assert.truthy(err:find('Metrics.score: no such index', 1, true), err)
    end)

    it('refuses bad names with the allowed forms', function()
      local db = s.db()
      local cases = {
        { 'plan', "'plan': expected Attributes.NAME, UserAttributes.NAME or Metrics.NAME" },
        { 'UserMetrics.x', "'UserMetrics' cannot be indexed: give Attributes.NAME, UserAttributes.NAME or Metrics.NAME" },
        { 'Attributes.', 'Attributes: the name is empty' },
        { "'Attributes.a/b'", 'Attributes.a/b: names may not contain # : ? \\ or /' },
        { "'Metrics.a#b'", 'Metrics.a#b: names may not contain' },
        { 'Attributes.' .. string.rep('n', 51), '51 characters; names have at most 50' },
      }
      for _, c in ipairs(cases) do
        local _, rc, err = index_cli(db, 'add ' .. c[1])
        assert.are.equal(1, rc, c[1])
        assert.truthy(err:find(c[2], 1, true), err)
      end
      local _, rc, err = index_cli(db, 'add')
      assert.are.equal(2, rc)
      assert.truthy(err:find('needs at least one NAME', 1, true), err)
      _, rc, err = index_cli(db, 'frobnicate')
      assert.are.equal(2, rc)
      assert.truthy(err:find("unknown action 'frobnicate'", 1, true), err)
      _, rc, err = index_cli(db, 'drop')
      assert.are.equal(2, rc)
      assert.truthy(err:find('drop: needs at least one NAME', 1, true), err)
      _, rc, err = index_cli(db, 'list Attributes.plan')
      assert.are.equal(2, rc)
      assert.truthy(err:find("list: takes no NAME, got 'Attributes.plan'", 1, true), err)
      local out
      out, rc = index_cli(db, '--help')
      assert.are.equal(0, rc)
      assert.truthy(out:find('^usage: herald index'), out)
      -- A name of 50 characters is fine.
      _, rc, err = index_cli(db, 'add Attributes.' .. string.rep('n', 50))
      assert.are.equal(0, rc, err)
    end)

    it('indexes what the segments of a script use', function()
      local db = s.db()
      local dir = h.tmpdir()
      run(db, FIXTURE .. [[
must(S.save(S { name = 'base', metrics = { visits = 1 } }, { id = 'base' }))
]])
      local script = h.write(dir .. '/segs.lua', [[
local S = herald.segment
local a = S { name = 'a', attributes = { plan = 'gold' }, country = 'US' }
local b = S.from_pinpoint { Name = 'b', SegmentGroups = { Groups = { { SourceSegments = { { Id = 'base' } },
  Dimensions = { { UserAttributes = { tier = { AttributeType = 'CONTAINS', Values = { 'g' } } } } } } } } }
S.any { a, b, S { name = 'odd', attributes = { ['x:y'] = 'z' } } }
]])
      local out, rc, err = index_cli(db, h.shell_quote(script))
      assert.are.equal(1, rc, out)
      assert.are.equal('Attributes.plan: created\nMetrics.visits: created\nUserAttributes.tier: created\n', out)
      assert.truthy(err:find('Attributes.x:y: names may not contain', 1, true), err)
      out = index_cli(db, '')
      assert.truthy(out:find('Metrics.visits%s+1%s+1'), out)
      local bad = h.write(dir .. '/bad.lua', 'local x = herald.segment { name = 1 }')
      _, rc, err = index_cli(db, h.shell_quote(bad))
      assert.are.equal(1, rc)
      assert.truthy(err:find('bad.lua:1', 1, true), err)
    end)
  end)
end)
