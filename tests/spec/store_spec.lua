-- Endpoints, applications and read-only SQL through the real binary (runtime/endpoint.h).
local s = require 'store_helpers'

local EMAIL = '{Id="e1", ChannelType="EMAIL", Address="ann@example.com"}'

describe('herald.endpoints', function()
  it('round-trips an endpoint in the EndpointResponse shape', function()
    local db = s.db()
    local e, rc, err = s.run(db, [[
      must(herald.endpoints.put{Id="e1", ChannelType="EMAIL", Address="ann@example.com",
        User={UserId="u1", UserAttributes={FirstName={"Ann"}}},
        Attributes={Interests={"music","books"}, Plan="pro"}, Metrics={score=3.5},
        Demographic={Timezone="Europe/Paris", Locale="fr_FR", Platform="ios"},
        Location={Country="fr", City="Paris", Latitude=48.8, Longitude=2.3},
        EffectiveDate="2026-11-29T12:00:00+02:00", RequestId="r1"})
      emit(must(herald.endpoints.get("e1")))]])
    assert.are.equal(0, rc, err)
    assert.are.equal('e1', e.Id)
    assert.are.equal('default', e.ApplicationId)
    assert.are.equal('EMAIL', e.ChannelType)
    assert.are.equal('ann@example.com', e.Address)
    assert.are.equal('ACTIVE', e.EndpointStatus)
    assert.are.equal('NONE', e.OptOut)
    assert.are.equal('u1', e.User.UserId)
    assert.are.same({'Ann'}, e.User.UserAttributes.FirstName)
    assert.are.same({'music', 'books'}, e.Attributes.Interests)
    assert.are.same({'pro'}, e.Attributes.Plan)
    assert.are.equal(3.5, e.Metrics.score)
    assert.are.equal('Europe/Paris', e.Demographic.Timezone)
    assert.are.equal('fr_FR', e.Demographic.Locale)
    assert.are.equal('FR', e.Location.Country)
    assert.are.equal(48.8, e.Location.Latitude)
    assert.are.equal('2026-11-29T10:00:00.000Z', e.EffectiveDate)
    assert.matches('^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$', e.CreationDate)
    assert.are.equal('r1', e.RequestId)
    local cohort = tonumber(e.CohortId)
    assert.is_true(cohort >= 0 and cohort <= 99)
  end)

  it('merges an update: included attributes replaced, absent kept, null removes', function()
    local db = s.db()
    local v, rc, err = s.run(db, [[
      local a = must(herald.endpoints.put{Id="e1", ChannelType="EMAIL", Address="ann@example.com",
        Attributes={Interests={"music"}, Plan={"free"}, Old={"x"}}, Metrics={score=1},
        Demographic={Timezone="Europe/Paris", Locale="fr_FR"}})
      local b = must(herald.endpoints.put{Id="e1", Attributes={Plan={"pro"}, Old=json.null},
        Metrics={visits=2}, Demographic={Locale="en_GB"}})
      emit({a=a, b=b})]])
    assert.are.equal(0, rc, err)
    local a, b = v.a, v.b
    assert.are.same({'music'}, b.Attributes.Interests)
    assert.are.same({'pro'}, b.Attributes.Plan)
    assert.is_nil(b.Attributes.Old)
    assert.are.equal(1, b.Metrics.score)
    assert.are.equal(2, b.Metrics.visits)
    assert.are.equal('Europe/Paris', b.Demographic.Timezone)
    assert.are.equal('en_GB', b.Demographic.Locale)
    assert.are.equal('ann@example.com', b.Address)
    assert.are.equal(a.CohortId, b.CohortId)
    assert.are.equal(a.CreationDate, b.CreationDate)
  end)

  it('generates an id when none is given', function()
    local e, rc, err = s.run(s.db(), 'emit(must(herald.endpoints.put{ChannelType="SMS", Address="+33612345678"}))')
    assert.are.equal(0, rc, err)
    assert.matches('^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$', e.Id)
  end)

  it('deletes an endpoint and reports a missing one', function()
    local v, rc, err = s.run(s.db(), 'must(herald.endpoints.put' .. EMAIL .. [[)
      local gone = must(herald.endpoints.delete("e1"))
      local none, msg = herald.endpoints.get("e1")
      local again, msg2 = herald.endpoints.delete("e1")
      emit({gone = gone.Id, none = none == nil, msg = msg, msg2 = msg2, n = herald.endpoints.count()})]])
    assert.are.equal(0, rc, err)
    assert.are.equal('e1', v.gone)
    assert.is_true(v.none)
    assert.matches("Id: no endpoint 'e1' in application 'default'", v.msg, 1, true)
    assert.matches("no endpoint 'e1'", v.msg2, 1, true)
    assert.are.equal(0, v.n)
  end)

  it('lists the endpoints of a user', function()
    local v, rc, err = s.run(s.db(), [[
      must(herald.endpoints.put{Id="a", ChannelType="EMAIL", Address="a@example.com", User={UserId="u1"}})
      must(herald.endpoints.put{Id="b", ChannelType="SMS", Address="+14155550100", User={UserId="u1"}})
      must(herald.endpoints.put{Id="c", ChannelType="EMAIL", Address="c@example.com", User={UserId="u2"}})
      local ids = {}
      for _, e in ipairs(must(herald.endpoints.by_user("u1"))) do ids[#ids + 1] = e.Id end
      table.sort(ids)
      emit({ids = ids, none = #must(herald.endpoints.by_user("nobody"))})]])
    assert.are.equal(0, rc, err)
    assert.are.same({'a', 'b'}, v.ids)
    assert.are.equal(0, v.none)
  end)

  it('makes the older endpoint with the same address INACTIVE', function()
    local v, rc, err = s.run(s.db(), [[
      must(herald.endpoints.put{Id="old", ChannelType="EMAIL", Address="same@example.com"})
      must(herald.endpoints.put{Id="other", ChannelType="EMAIL", Address="other@example.com"})
      must(herald.endpoints.put{Id="new", ChannelType="EMAIL", Address="same@example.com"})
      emit({old = herald.endpoints.get("old").EndpointStatus,
            new = herald.endpoints.get("new").EndpointStatus,
            other = herald.endpoints.get("other").EndpointStatus})]])
    assert.are.equal(0, rc, err)
    assert.are.same({old = 'INACTIVE', new = 'ACTIVE', other = 'ACTIVE'}, v)
  end)

  it('refuses a 16th non-push endpoint of a user', function()
    local v, rc, err = s.run(s.db(), [[
      for i = 1, 15 do
        must(herald.endpoints.put{Id="e" .. i, ChannelType="EMAIL", Address="u" .. i .. "@example.com", User={UserId="u"}})
      end
      local e, msg = herald.endpoints.put{Id="e16", ChannelType="EMAIL", Address="u16@example.com", User={UserId="u"}}
      emit({refused = e == nil, msg = msg, n = #herald.endpoints.by_user("u"), stored = herald.endpoints.get("e16") ~= nil})]])
    assert.are.equal(0, rc, err)
    assert.is_true(v.refused)
    assert.matches("User.UserId: user 'u' already has 15 endpoints", v.msg, 1, true)
    assert.are.equal(15, v.n)
    assert.is_false(v.stored)
  end)

  it('lets a 16th push endpoint retire the oldest push endpoint of the user', function()
    local v, rc, err = s.run(s.db(), [[
      for i = 1, 15 do
        local ch = i <= 3 and "APNS" or "EMAIL"
        local addr = ch == "APNS" and ("token" .. i) or ("u" .. i .. "@example.com")
        must(herald.endpoints.put{Id="e" .. i, ChannelType=ch, Address=addr, User={UserId="u"},
          EffectiveDate=string.format("2026-01-%02dT00:00:00Z", 20 - i)})
      end
      must(herald.endpoints.put{Id="p16", ChannelType="GCM", Address="token16", User={UserId="u"}})
      local evicted = herald.endpoints.get("e3")
      emit({n = #herald.endpoints.by_user("u"), status = evicted.EndpointStatus,
            user = evicted.User and evicted.User.UserId or json.null,
            e1 = herald.endpoints.get("e1").EndpointStatus})]])
    assert.are.equal(0, rc, err)
    assert.are.equal(15, v.n)
    assert.are.equal('INACTIVE', v.status) -- e3 has the oldest EffectiveDate of the push endpoints
    assert.are_not.equal('u', v.user) -- and it lost its UserId
    assert.are.equal('ACTIVE', v.e1)
  end)

  it('refuses a 16th PUSH endpoint and never retires a PUSH or APNS_SANDBOX one, as Pinpoint lists them', function()
    local v, rc, err = s.run(s.db(), [[
      for i = 1, 15 do
        local ch = i == 1 and "PUSH" or i == 2 and "APNS_SANDBOX" or i == 3 and "GCM" or "EMAIL"
        local addr = i <= 3 and ("token" .. i) or ("u" .. i .. "@example.com")
        must(herald.endpoints.put{Id="e" .. i, ChannelType=ch, Address=addr, User={UserId="u"},
          EffectiveDate=string.format("2026-01-%02dT00:00:00Z", 10 + i)})
      end
      local e, msg = herald.endpoints.put{Id="p16", ChannelType="PUSH", Address="token16", User={UserId="u"}}
      must(herald.endpoints.put{Id="g17", ChannelType="GCM", Address="token17", User={UserId="u"}})
      emit({refused = e == nil, msg = msg, e1 = herald.endpoints.get("e1").EndpointStatus,
            e2 = herald.endpoints.get("e2").EndpointStatus, e3 = herald.endpoints.get("e3").EndpointStatus})]])
    assert.are.equal(0, rc, err)
    assert.is_true(v.refused)
    assert.matches("a PUSH endpoint is refused", v.msg, 1, true)
    -- the GCM endpoint is replaced although the PUSH and APNS_SANDBOX ones are older
    assert.are.same({ 'ACTIVE', 'ACTIVE', 'INACTIVE' }, { v.e1, v.e2, v.e3 })
  end)

  it('keeps CohortId within 0-99, stable, and spread evenly over many ids', function()
    local h = require 'helpers'
    local dir = h.tmpdir()
    local lines = {}
    for i = 1, 10000 do
      lines[#lines + 1] = string.format('{"Id":"id-%d","ChannelType":"EMAIL","Address":"x%d@example.com"}', i, i)
    end
    h.write(dir .. '/c.ndjson', table.concat(lines, '\n') .. '\n')
    local db = dir .. '/c.db'
    local _, code, ierr = s.import(db, 'endpoints', dir .. '/c.ndjson')
    assert.are.equal(0, code, ierr)
    local before = s.run(db, 'emit(herald.endpoints.get("id-42").CohortId)')
    local after, rc2, err2 = s.run(db, [[
      must(herald.endpoints.put{Id="id-42", Address="changed@example.com", Attributes={a={"b"}}})
      emit({cohort = herald.endpoints.get("id-42").CohortId,
            rows = must(herald.db.query("SELECT cohort_id AS c, count(*) AS n FROM endpoints GROUP BY cohort_id ORDER BY c"))})]])
    assert.are.equal(0, rc2, err2)
    assert.are.equal(before, after.cohort)
    assert.are.equal(100, #after.rows)
    for _, r in ipairs(after.rows) do
      assert.is_true(r.c >= 0 and r.c <= 99)
      assert.is_true(r.n > 50 and r.n < 150, 'cohort ' .. r.c .. ' has ' .. r.n .. ' of 10000')
    end
  end)

  it('refuses an unknown application and works in a created one', function()
    local v, rc, err = s.run(s.db(), [[
      local e, msg = herald.endpoints.put({Id="x", ChannelType="EMAIL", Address="x@example.com"}, {app="nope"})
      must(herald.apps.create("shop", "The shop"))
      local dup, dupmsg = herald.apps.create("shop")
      local bad, badmsg = herald.apps.create("no spaces")
      must(herald.endpoints.put({Id="x", ChannelType="EMAIL", Address="x@example.com"}, {app="shop"}))
      local ids = {}
      for _, a in ipairs(herald.apps.list()) do ids[#ids + 1] = a.Id end
      emit({msg = msg, dupmsg = dupmsg, badmsg = badmsg, ids = ids,
            in_shop = herald.endpoints.count{app="shop"}, in_default = herald.endpoints.count(),
            app = herald.endpoints.get("x", {app="shop"}).ApplicationId})]])
    assert.are.equal(0, rc, err)
    assert.matches("unknown application 'nope'", v.msg, 1, true)
    assert.matches("already exists", v.dupmsg, 1, true)
    assert.matches("Id: 'no spaces'", v.badmsg, 1, true)
    assert.are.same({'default', 'shop'}, v.ids)
    assert.are.equal(1, v.in_shop)
    assert.are.equal(0, v.in_default)
    assert.are.equal('shop', v.app)
  end)

  it('honours --app on the command line', function()
    local db = s.db()
    local _, rc, err = s.run(db, 'must(herald.apps.create("shop"))')
    assert.are.equal(0, rc, err)
    local h = require 'helpers'
    local out, code, e2 = h.herald('--db ' .. h.shell_quote(db) .. ' --app shop -e ' ..
      h.shell_quote('assert(herald.endpoints.put{Id="x", ChannelType="EMAIL", Address="x@example.com"}) print(herald.endpoints.count())'))
    assert.are.equal(0, code, e2)
    assert.are.equal('1\n', out)
    assert.are.equal(0, s.count(db))
    assert.are.equal(1, s.count(db, 'shop'))
  end)
end)

describe('endpoint validation', function()
  local long51 = string.rep('n', 51)
  local cases = {
    {'an unknown ChannelType', '{Id="x", ChannelType="FAX", Address="a@example.com"}', "ChannelType: 'FAX' is not one of PUSH GCM APNS"},
    {'a missing ChannelType', '{Id="x", Address="a@example.com"}', 'ChannelType: required for a new endpoint'},
    {'a missing Address', '{Id="x", ChannelType="EMAIL"}', 'Address: required for a new endpoint'},
    {'a bad email address', '{Id="x", ChannelType="EMAIL", Address="bob@"}', "Address: 'bob@' is not a valid email address for ChannelType EMAIL"},
    {'an email without a domain dot', '{Id="x", ChannelType="EMAIL", Address="bob@localhost"}', "Address: 'bob@localhost' is not a valid email address"},
    {'a phone number that is not E.164', '{Id="x", ChannelType="SMS", Address="0612345678"}', "Address: '0612345678' is not an E.164 phone number"},
    {'a voice number with letters', '{Id="x", ChannelType="VOICE", Address="+1555CALLME"}', 'is not an E.164 phone number'},
    {'a push token with whitespace', '{Id="x", ChannelType="APNS", Address="tok en"}', "Address: 'tok en' is not a device token for ChannelType APNS"},
    {'an empty push token', '{Id="x", ChannelType="GCM", Address=""}', 'is not a device token for ChannelType GCM'},
    {'an unknown EndpointStatus', EMAIL:sub(1, -2) .. ', EndpointStatus="GONE"}', "EndpointStatus: 'GONE' is not one of ACTIVE INACTIVE"},
    {'an unknown OptOut', EMAIL:sub(1, -2) .. ', OptOut="SOME"}', "OptOut: 'SOME' is not one of ALL NONE"},
    {'an attribute name over 50 characters', EMAIL:sub(1, -2) .. ', Attributes={' .. long51 .. '={"v"}}}', 'Attributes.' .. long51 .. ': attribute name longer than 50 characters'},
    {'an attribute value over 100 characters', EMAIL:sub(1, -2) .. ', Attributes={a={"ok", string.rep("v", 101)}}}', 'Attributes.a[1]: attribute value longer than 100 characters'},
    {'more than 50 values', EMAIL:sub(1, -2) .. ', Attributes={a=(function() local t = {} for i = 1, 51 do t[i] = "v" .. i end return t end)()}}', 'Attributes.a: 51 values; at most 50 values per attribute'},
    {'a user attribute value over 100 characters', EMAIL:sub(1, -2) .. ', User={UserId="u", UserAttributes={n={string.rep("v", 101)}}}}', 'User.UserAttributes.n[0]: attribute value longer than 100 characters'},
    {'a metric that is not a number', EMAIL:sub(1, -2) .. ', Metrics={m="high"}}', 'Metrics.m: expected a finite number'},
    {'an infinite metric', EMAIL:sub(1, -2) .. ', Metrics={m=1/0}}', 'Metrics.m: expected a finite number'},
    {'an unknown time zone', EMAIL:sub(1, -2) .. ', Demographic={Timezone="Mars/Olympus"}}', "Demographic.Timezone: 'Mars/Olympus' is not a time zone of the tz database"},
    {'a time zone path escaping the tz database', EMAIL:sub(1, -2) .. ', Demographic={Timezone="../../etc/passwd"}}', "Demographic.Timezone: '../../etc/passwd' is not a time zone"},
    {'an absolute time zone path', EMAIL:sub(1, -2) .. ', Demographic={Timezone="/usr/share/zoneinfo/UTC"}}', 'is not a time zone'},
    {'a tz database file that is not a zone', EMAIL:sub(1, -2) .. ', Demographic={Timezone="zone.tab"}}', "'zone.tab' is not a time zone"},
    {'an unknown country', EMAIL:sub(1, -2) .. ', Location={Country="XX"}}', "Location.Country: 'XX' is not an ISO 3166-1 alpha-2 or alpha-3 country code"},
    {'a latitude out of range', EMAIL:sub(1, -2) .. ', Location={Latitude=91}}', 'Location.Latitude: 91 is outside -90..90'},
    {'a longitude out of range', EMAIL:sub(1, -2) .. ', Location={Longitude=-180.5}}', 'Location.Longitude: -180.5 is outside -180..180'},
    {'a date that is not ISO-8601', EMAIL:sub(1, -2) .. ', EffectiveDate="yesterday"}', "EffectiveDate: 'yesterday' is not an ISO-8601 date"},
    {'an impossible date', EMAIL:sub(1, -2) .. ', EffectiveDate="2026-02-30T10:00:00Z"}', "EffectiveDate: '2026-02-30T10:00:00Z' is not an ISO-8601 date"},
    {'an unknown field', '{Id="x", ChannelType="EMAIL", Adress="a@example.com"}', 'Adress: unknown field'},
    {'an unknown Demographic field', EMAIL:sub(1, -2) .. ', Demographic={Colour="red"}}', 'Demographic.Colour: unknown field'},
    {'an endpoint over 15 KB', EMAIL:sub(1, -2) .. ', Attributes=(function() local t = {} for i = 1, 45 do t["k" .. i] = {string.rep("x", 99), string.rep("y", 99), string.rep("z", 99), string.rep("w", 99)} end return t end)()}', "endpoint: .* bytes; Pinpoint's limit is 15 KB per endpoint"},
  }
  -- One process checks every case: each put must fail and leave nothing behind.
  local script = {'local results = {}'}
  for i, c in ipairs(cases) do
    script[#script + 1] = string.format('do local e, msg = herald.endpoints.put(%s) results[%d] = {stored = e ~= nil, msg = msg} end', c[2], i)
  end
  script[#script + 1] = 'emit({list = results, count = herald.endpoints.count()})'
  local data, rc, err = s.run(s.db(), table.concat(script, '\n'))
  local results = data and data.list or {}

  for i, c in ipairs(cases) do
    it('refuses ' .. c[1] .. ' naming the field', function()
      assert.are.equal(0, rc, err)
      local r = results[i]
      assert.is_false(r.stored)
      local plain = not c[3]:find('.*', 1, true)
      assert.matches(c[3], r.msg, 1, plain)
    end)
  end

  it('stores nothing for refused endpoints', function()
    assert.are.equal(0, data.count)
  end)

  it('accepts alpha-3 countries (kept as alpha-2, so a segment on FR finds them), IANA zones and E.164 numbers', function()
    local v, code, e = s.run(s.db(), [[
      local ep = must(herald.endpoints.put{Id="ok", ChannelType="SMS", Address="+442071838750",
        Location={Country="fra"}, Demographic={Timezone="America/Argentina/Buenos_Aires"}})
      ep.fr = herald.segment{ name = 'fr', country = 'FR' }:count()
      emit(ep)]])
    assert.are.equal(0, code, e)
    assert.are.equal('FR', v.Location.Country)
    assert.are.equal(1, v.fr)
    assert.are.equal('America/Argentina/Buenos_Aires', v.Demographic.Timezone)
  end)

  it('caps an application at 250 attribute, metric and user attribute keys', function()
    local v, code, e = s.run(s.db(), [[
      for i = 1, 5 do
        local attrs = {}
        for k = 1, 50 do attrs["a" .. i .. "_" .. k] = {"v"} end
        must(herald.endpoints.put{Id="e" .. i, ChannelType="EMAIL", Address="e" .. i .. "@example.com", Attributes=attrs})
      end
      local e, msg = herald.endpoints.put{Id="e6", ChannelType="EMAIL", Address="e6@example.com", Metrics={new_metric=1}}
      local reuse = herald.endpoints.put{Id="e7", ChannelType="EMAIL", Address="e7@example.com", Attributes={a1_1={"again"}}}
      must(herald.apps.create("other"))
      local other = herald.endpoints.put({Id="e8", ChannelType="EMAIL", Address="e8@example.com", Metrics={new_metric=1}}, {app="other"})
      emit({refused = e == nil, msg = msg, reuse = reuse ~= nil, other = other ~= nil})]])
    assert.are.equal(0, code, e)
    assert.is_true(v.refused)
    assert.matches("Metrics.new_metric: application 'default' already has 250 attribute, metric and user attribute keys", v.msg, 1, true)
    assert.is_true(v.reuse)
    assert.is_true(v.other)
  end)
end)

describe('herald.db.query', function()
  it('returns rows and binds parameters', function()
    local v, rc, err = s.run(s.db(), 'must(herald.endpoints.put' .. EMAIL .. [[)
      emit(must(herald.db.query("SELECT id, channel_type AS ch, cohort_id FROM endpoints WHERE address = ? AND ?", "ann@example.com", true)))]])
    assert.are.equal(0, rc, err)
    assert.are.equal(1, #v)
    assert.are.equal('e1', v[1].id)
    assert.are.equal('EMAIL', v[1].ch)
  end)

  it('refuses writes, several statements and wrong parameter counts', function()
    local v, rc, err = s.run(s.db(), 'must(herald.endpoints.put' .. EMAIL .. [[)
      local r = {}
      for _, sql in ipairs{"DELETE FROM endpoints", "UPDATE endpoints SET address = 'x'",
          "DROP TABLE endpoints", "SELECT 1; DELETE FROM endpoints", "PRAGMA user_version = 9",
          "ATTACH DATABASE ':memory:' AS x"} do
        local rows, msg = herald.db.query(sql)
        r[#r + 1] = {ok = rows ~= nil, msg = msg}
      end
      local rows, msg = herald.db.query("SELECT ?")
      r[#r + 1] = {ok = rows ~= nil, msg = msg}
      emit({r = r, count = herald.endpoints.count()})]])
    local count = v and v.count
    v = v and v.r
    assert.are.equal(0, rc, err)
    for i = 1, 3 do
      assert.is_false(v[i].ok)
      assert.matches('only read-only statements', v[i].msg, 1, true)
    end
    assert.matches('one statement at a time', v[4].msg, 1, true)
    assert.is_false(v[5].ok)
    assert.is_false(v[6].ok)
    assert.matches('not authorized', v[6].msg, 1, true)
    assert.matches('1 parameters, 0 given', v[7].msg, 1, true)
    assert.are.equal(1, count)
  end)
end)

describe('herald.json', function()
  it('round-trips null, empty arrays and objects, integers and UTF-8', function()
    local v, rc, err, out = s.run(s.db(), [[
      local doc = json.decode('{"a":null,"b":[],"c":{},"d":[1,2.5,"é"],"e":true}')
      local again = json.encode(doc, {sort=true})
      local enc_err = select(2, json.encode({f = print}))
      local dec_val, dec_err = json.decode('{"a":')
      emit({again = again, null_is_sentinel = doc.a == json.null, int = math.type(doc.d[1]),
            enc_err = enc_err, dec_err = dec_err, forced = json.encode(json.array{}),
            mixed = json.encode({1, 2, x = 3}, {sort=true}), badkey = select(2, json.encode({[true] = 1}))})]])
    assert.are.equal(0, rc, err)
    assert.are.equal('{"a":null,"b":[],"c":{},"d":[1,2.5,"é"],"e":true}', v.again)
    assert.is_true(v.null_is_sentinel)
    assert.are.equal('integer', v.int)
    assert.matches('f: cannot encode a function value', v.enc_err, 1, true)
    assert.matches('line 1', v.dec_err, 1, true)
    assert.are.equal('[]', v.forced)
    assert.are.equal('{"1":1,"2":2,"x":3}', v.mixed)
    assert.matches('object keys must be strings or integers', v.badkey, 1, true)
  end)
end)
