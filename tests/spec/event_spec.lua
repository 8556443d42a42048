-- Events through the real binary (runtime/event.h): idempotence, last activity, limits.
local s = require 'store_helpers'

local SETUP = [[
must(herald.endpoints.put{Id="e1", ChannelType="EMAIL", Address="ann@example.com"})
must(herald.endpoints.put{Id="e2", ChannelType="EMAIL", Address="bob@example.com"})
]]

describe('herald.events', function()
  it('stores a repeated event once and keeps the latest activity', function()
    local v, rc, err = s.run(s.db(), SETUP .. [[
      local id1, new1 = must(herald.events.put("e1", {EventId="ev1", EventType="_email.open", Timestamp="2026-11-02T10:00:00Z"}))
      local id2, new2 = must(herald.events.put("e1", {EventId="ev1", EventType="_email.open", Timestamp="2026-11-02T10:00:00Z"}))
      must(herald.events.put("e1", {EventId="ev2", EventType="_email.click", Timestamp="2026-11-03T09:00:00+01:00",
        Attributes={url="https://example.com"}, Metrics={count=1}, Session={Id="s1", StartTimestamp="2026-11-03T07:59:00Z"},
        AppPackageName="shop"}))
      must(herald.events.put("e1", {EventId="ev0", EventType="_email.open", Timestamp="2026-10-01T00:00:00Z"}))
      local rows = must(herald.db.query("SELECT id, last_activity FROM endpoints ORDER BY id"))
      local n = must(herald.db.query("SELECT count(*) AS n FROM events"))[1].n
      emit({id1 = id1, new1 = new1, new2 = new2, rows = rows, n = n,
            all = must(herald.events.for_endpoint("e1"))})]])
    assert.are.equal(0, rc, err)
    assert.are.equal('ev1', v.id1)
    assert.is_true(v.new1)
    assert.is_false(v.new2)
    assert.are.equal(3, v.n)
    assert.are.equal('2026-11-03T08:00:00.000Z', v.rows[1].last_activity)
    assert.is_nil(v.rows[2].last_activity)
    assert.are.equal(3, #v.all)
    local newest = v.all[1]
    assert.are.equal('ev2', newest.EventId)
    assert.are.equal('https://example.com', newest.Attributes.url)
    assert.are.equal(1, newest.Metrics.count)
    assert.are.equal('s1', newest.Session.Id)
    assert.are.equal('shop', newest.AppPackageName)
  end)

  it('derives a stable id from the content when EventId is absent', function()
    local v, rc, err = s.run(s.db(), SETUP .. [[
      local ev = {EventType="custom", Timestamp="2026-11-02T10:00:00Z", Attributes={k="v"}}
      local a, new_a = must(herald.events.put("e1", ev))
      local b, new_b = must(herald.events.put("e1", {EventType="custom", Timestamp="2026-11-02T12:00:00+02:00", Attributes={k="v"}}))
      local c = must(herald.events.put("e2", ev))
      local batch = must(herald.events.put_batch{{EndpointId="e1", EventType="custom",
        Timestamp="2026-11-02T10:00:00.000Z", Attributes={k="v"}}})
      emit({same = a == b, new_a = new_a, new_b = new_b, other = a ~= c, batch_new = batch})]])
    assert.are.equal(0, rc, err)
    assert.are.same({same = true, new_a = true, new_b = false, other = true, batch_new = 0}, v)
  end)

  it('filters events of an endpoint by time, type and count', function()
    local v, rc, err = s.run(s.db(), SETUP .. [[
      for i = 1, 6 do
        must(herald.events.put("e1", {EventId="ev" .. i, EventType=i % 2 == 0 and "buy" or "view",
          Timestamp=string.format("2026-11-%02dT00:00:00Z", i)}))
      end
      local function ids(list) local r = {} for _, e in ipairs(list) do r[#r + 1] = e.EventId end return r end
      emit({since = ids(must(herald.events.for_endpoint("e1", {since="2026-11-04"}))),
            buys = ids(must(herald.events.for_endpoint("e1", {type="buy"}))),
            two = ids(must(herald.events.for_endpoint("e1", {limit=2}))),
            bad = select(2, herald.events.for_endpoint("e1", {since="soon"}))})]])
    assert.are.equal(0, rc, err)
    assert.are.same({'ev6', 'ev5', 'ev4'}, v.since)
    assert.are.same({'ev6', 'ev4', 'ev2'}, v.buys)
    assert.are.same({'ev6', 'ev5'}, v.two)
    assert.matches("since: 'soon' is not an ISO-8601 date", v.bad, 1, true)
  end)

  local cases = {
    {'a missing EventType', '{Timestamp="2026-11-01T00:00:00Z"}', 'EventType: required'},
    {'a missing Timestamp', '{EventType="x"}', 'Timestamp: required'},
    {'a Timestamp that is not ISO-8601', '{EventType="x", Timestamp="11/01/2026"}', 'Timestamp: expected an ISO-8601 date'},
    {'an attribute value over 200 characters', '{EventType="x", Timestamp="2026-11-01", Attributes={k=string.rep("v", 201)}}', 'Attributes.k: value longer than 200 characters'},
    {'more than 40 attribute and metric keys', '{EventType="x", Timestamp="2026-11-01", Attributes=(function() local t = {} for i = 1, 30 do t["a" .. i] = "v" end return t end)(), Metrics=(function() local t = {} for i = 1, 11 do t["m" .. i] = i end return t end)()}', '41 attribute and metric keys; at most 40 per event'},
    {'a metric that is not a number', '{EventType="x", Timestamp="2026-11-01", Metrics={m="lots"}}', 'Metrics.m: expected a finite number'},
    {'a session without an id', '{EventType="x", Timestamp="2026-11-01", Session={StartTimestamp="2026-11-01"}}', 'Session.Id: required'},
    {'an unknown field', '{EventType="x", Timestamp="2026-11-01", Colour="red"}', 'Colour: unknown field'},
  }
  local script = {SETUP, 'local r = {}'}
  for i, c in ipairs(cases) do
    script[#script + 1] = string.format('do local id, msg = herald.events.put("e1", %s) r[%d] = {ok = id ~= nil, msg = msg} end', c[2], i)
  end
  script[#script + 1] = [[
    local id, unknown = herald.events.put("nope", {EventType="x", Timestamp="2026-11-01"})
    emit({list = r, unknown = unknown, n = must(herald.db.query("SELECT count(*) AS n FROM events"))[1].n})]]
  local data, rc, err = s.run(s.db(), table.concat(script, '\n'))

  for i, c in ipairs(cases) do
    it('refuses ' .. c[1] .. ' naming the field', function()
      assert.are.equal(0, rc, err)
      assert.is_false(data.list[i].ok)
      assert.matches(c[3], data.list[i].msg, 1, true)
    end)
  end

  it('refuses an event of an unknown endpoint and stores none of the refused', function()
    assert.are.equal(0, rc, err)
    assert.matches("EndpointId: no endpoint 'nope' in application 'default'", data.unknown, 1, true)
    assert.are.equal(0, data.n)
  end)

  it('stores a batch all or nothing, naming the bad item', function()
    local v, code, e = s.run(s.db(), SETUP .. [[
      local n = must(herald.events.put_batch{
        {EndpointId="e1", EventId="a", EventType="x", Timestamp="2026-11-01"},
        {EndpointId="e2", EventId="b", EventType="x", Timestamp="2026-11-02"}})
      local again = must(herald.events.put_batch{{EndpointId="e1", EventId="a", EventType="x", Timestamp="2026-11-01"}})
      local bad, msg = herald.events.put_batch{
        {EndpointId="e1", EventId="c", EventType="x", Timestamp="2026-11-03"},
        {EndpointId="e2", EventId="d", EventType="x"}}
      emit({n = n, again = again, bad = bad == nil, msg = msg,
            total = must(herald.db.query("SELECT count(*) AS n FROM events"))[1].n})]])
    assert.are.equal(0, code, e)
    assert.are.equal(2, v.n)
    assert.are.equal(0, v.again)
    assert.is_true(v.bad)
    assert.matches('[2].Timestamp: required', v.msg, 1, true)
    assert.are.equal(2, v.total)
  end)
  it('refuses ids and values with a NUL inside, naming the field, instead of cutting them', function()
    local dir = s.db():match('^(.*)/[^/]*$')
    -- the line a JSON import reads decodes to an Id with a NUL in it
    local f = assert(io.open(dir .. '/list.ndjson', 'w'))
    f:write('{"Id":"vip\\u0000-x","ChannelType":"EMAIL","Address":"other@example.com"}\n')
    f:close()
    local v, rc, err = s.run(dir .. '/herald.db', [[
      must(herald.endpoints.put{Id="vip", ChannelType="EMAIL", Address="vip@example.com", Attributes={tier={"gold"}}})
      local function refused(f, ...) local ok, msg = f(...) return ok == nil and msg or 'accepted' end
      local r = {
        id = refused(herald.endpoints.put, {Id="vip\0-x", ChannelType="EMAIL", Address="other@example.com"}),
        address = refused(herald.endpoints.put, {Id="n2", ChannelType="EMAIL", Address="a@example.com\0x"}),
        channel = refused(herald.endpoints.put, {Id="n3", ChannelType="EMAIL\0x", Address="b@example.com"}),
        user = refused(herald.endpoints.put, {Id="n4", ChannelType="EMAIL", Address="c@example.com", User={UserId="u\0v"}}),
        value = refused(herald.endpoints.put, {Id="n5", ChannelType="EMAIL", Address="d@example.com", Attributes={tier={"a\0b"}}}),
        name = refused(herald.endpoints.put, {Id="n6", ChannelType="EMAIL", Address="e@example.com", Attributes={["tier\0x"]={"free"}}}),
        city = refused(herald.endpoints.put, {Id="n7", ChannelType="EMAIL", Address="f@example.com", Location={City="P\0x"}}),
        get = refused(herald.endpoints.get, "vip\0-x"),
        delete = refused(herald.endpoints.delete, "vip\0-x"),
        event_endpoint = refused(herald.events.put, "vip\0zz", {EventType="buy", Timestamp="2026-11-01T00:00:00Z"}),
        event_type = refused(herald.events.put, "vip", {EventType="buy\0x", Timestamp="2026-11-01T00:00:00Z"}),
        event_value = refused(herald.events.put, "vip", {EventType="buy", Timestamp="2026-11-01T00:00:00Z", Attributes={k="a\0b"}}),
        import = select(2, herald.segment.import("list.ndjson")),
      }
      emit({r = r, endpoints = must(herald.db.query("SELECT id, address, attributes FROM endpoints")),
            events = must(herald.db.query("SELECT count(*) AS n FROM events"))[1].n})]], { cwd = dir })
    assert.are.equal(0, rc, err)
    local nul = 'contains a NUL character (\\u0000)'
    local want = { id = 'Id', address = 'Address', channel = 'ChannelType', user = 'User.UserId',
      value = 'Attributes.tier[0]', name = 'Attributes', city = 'Location.City', get = 'Id', delete = 'Id',
      event_endpoint = 'EndpointId', event_type = 'EventType', event_value = 'Attributes.k' }
    for k, field in pairs(want) do
      assert.are.equal(field .. ': ' .. (k == 'name' and 'an object key ' or '') .. nul, v.r[k], k)
    end
    -- an import line is refused by the reader `herald import endpoints` uses, at its line
    assert.matches('^list%.ndjson:1: invalid JSON at column %d+: \\u0000 is not allowed', v.r.import)
    assert.are.same({ { id = 'vip', address = 'vip@example.com', attributes = '{"tier":["gold"]}' } }, v.endpoints)
    assert.are.equal(0, v.events)
  end)
end)
