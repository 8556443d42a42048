-- `herald import` through the real binary: formats, all-or-nothing, errors naming file:line,
-- progress, and databases that are corrupt or locked.
local h = require 'helpers'
local s = require 'store_helpers'

local HEADER = 'Id,ChannelType,Address,User.UserId,User.UserAttributes.FirstName,Attributes.Interests,' ..
  'Attributes.Interests,Metrics.score,Demographic.Timezone,Location.Country,Location.Latitude\n'

local function file(name, content)
  return h.write(h.tmpdir() .. '/' .. name, content)
end

local function get(db, id, app)
  return s.run(db, string.format('emit(must(herald.endpoints.get(%q%s)))', id,
    app and (', {app=%q}'):format(app) or ''))
end

describe('herald import endpoints', function()
  it('reads CSV with dotted headers, repeated columns, quoting and CRLF', function()
    local db = s.db()
    local path = file('contacts.csv', HEADER ..
      'c1,EMAIL,ann@example.com,u1,Ann,"music, live",books,4.5,Europe/Paris,FR,48.85\r\n' ..
      'c2,SMS,+14155550100,u2,"Bob ""B"" Jr",,,,America/New_York,US,\r\n' ..
      '\r\n' ..
      'c3,EMAIL,"multi@example.com",,,"line one\nline two",,-1,,,\r\n')
    local out, code, err = s.import(db, 'endpoints', path)
    assert.are.equal(0, code, err)
    assert.matches('^imported 3 endpoints from .*contacts%.csv in [%d.]+ s\n$', out)
    local c1 = get(db, 'c1')
    assert.are.same({'music, live', 'books'}, c1.Attributes.Interests)
    assert.are.same({'Ann'}, c1.User.UserAttributes.FirstName)
    assert.are.equal('u1', c1.User.UserId)
    assert.are.equal(4.5, c1.Metrics.score)
    assert.are.equal('Europe/Paris', c1.Demographic.Timezone)
    assert.are.equal(48.85, c1.Location.Latitude)
    local c2 = get(db, 'c2')
    assert.are.same({'Bob "B" Jr'}, c2.User.UserAttributes.FirstName)
    assert.is_nil(c2.Attributes.Interests) -- empty cells are absent
    assert.is_nil(c2.Metrics.score)
    local c3 = get(db, 'c3')
    assert.are.same({'line one\nline two'}, c3.Attributes.Interests)
    assert.are.equal(-1, c3.Metrics.score)
  end)

  it('reads newline-delimited JSON, detected by extension or content', function()
    local db = s.db()
    local lines = '{"Id":"j1","ChannelType":"EMAIL","Address":"j1@example.com","Attributes":{"Ride":["Bus"]}}\n' ..
      '\n{"Id":"j2","ChannelType":"APNS","Address":"token-2","User":{"UserId":"u"}}\n'
    local _, code, err = s.import(db, 'endpoints', file('e.ndjson', lines))
    assert.are.equal(0, code, err)
    local _, code2, err2 = s.import(db, 'endpoints', file('endpoints.txt', '{"Id":"j3","ChannelType":"EMAIL","Address":"j3@example.com"}\n'))
    assert.are.equal(0, code2, err2)
    assert.are.equal(3, s.count(db))
    assert.are.same({'Bus'}, get(db, 'j1').Attributes.Ride)
  end)

  it('updates existing endpoints on a second import', function()
    local db = s.db()
    assert.are.equal(0, select(2, s.import(db, 'endpoints', file('a.csv', 'Id,ChannelType,Address,Attributes.Plan\nx,EMAIL,x@example.com,free\n'))))
    assert.are.equal(0, select(2, s.import(db, 'endpoints', file('b.csv', 'Id,Attributes.Plan\nx,pro\n'))))
    local x = get(db, 'x')
    assert.are.same({'pro'}, x.Attributes.Plan)
    assert.are.equal('x@example.com', x.Address)
    assert.are.equal(1, s.count(db))
  end)

  local bad = {
    {'an invalid address', 'contacts.csv', HEADER .. 'c1,EMAIL,ann@example.com,,,,,,,,\nc2,EMAIL,bob@,,,,,,,,\n',
      "contacts.csv:3: Address: 'bob@' is not a valid email address for ChannelType EMAIL"},
    {'an unknown ChannelType', 'contacts.csv', 'ChannelType,Address\nEMAIL,a@example.com\nPIGEON,loft 3\n',
      "contacts.csv:3: ChannelType: 'PIGEON' is not one of"},
    {'an unterminated quote', 'quotes.csv', 'ChannelType,Address\nEMAIL,a@example.com\nEMAIL,"b@example.com\n',
      'quotes.csv:3: field 2: a quoted field is never closed'},
    {'text after a closing quote', 'quotes.csv', 'ChannelType,Address\nEMAIL,"a@example.com"x\n',
      'quotes.csv:2: field 2: text after the closing quote'},
    {'a stray quote', 'quotes.csv', 'ChannelType,Address\nEMAIL,a"b@example.com\n',
      'quotes.csv:2: field 2: a quote inside an unquoted field'},
    {'a row with too many fields', 'wide.csv', 'ChannelType,Address\nEMAIL,a@example.com\nEMAIL,b@example.com,extra\n',
      'wide.csv:3: 3 fields; the header has 2'},
    {'an unknown header', 'head.csv', 'ChannelType,Address,Colour\nEMAIL,a@example.com,red\n',
      "head.csv:1: column 3: unknown header 'Colour'"},
    {'an unknown header after blank lines', 'head.csv', '\n\nChannelType,Address,Colour\nEMAIL,a@example.com,red\n',
      "head.csv:3: column 3: unknown header 'Colour'"},
    -- only Attributes.X and User.UserAttributes.X are lists; another repeated column would keep
    -- one of its values and drop the others
    {'a repeated Address column', 'dup.csv', 'Id,ChannelType,Address,Address\nc1,EMAIL,ann@example.com,bob@example.com\n',
      "dup.csv:1: column 4: 'Address' repeats column 3"},
    {'a repeated User.UserId column', 'dup.csv', 'User.UserId,ChannelType,Address,User.UserId\nu1,EMAIL,ann@example.com,u2\n',
      "dup.csv:1: column 4: 'User.UserId' repeats column 1"},
    {'a repeated Demographic column', 'dup.csv', '\nChannelType,Demographic.Timezone,Address,Demographic.Timezone\nEMAIL,Europe/Paris,ann@example.com,Asia/Tokyo\n',
      "dup.csv:2: column 4: 'Demographic.Timezone' repeats column 2"},
    {'a repeated Location column', 'dup.csv', 'ChannelType,Address,Location.Latitude,Attributes.A,Attributes.A,Location.Latitude\nEMAIL,ann@example.com,1,x,y,2\n',
      "dup.csv:1: column 6: 'Location.Latitude' repeats column 3"},
    {'a repeated Metrics column', 'dup.csv', 'ChannelType,Metrics.score,Address,Metrics.score\nEMAIL,1,ann@example.com,2\n',
      "dup.csv:1: column 4: 'Metrics.score' repeats column 2"},
    {'a metric that is not a number', 'm.csv', 'ChannelType,Address,Metrics.score\nEMAIL,a@example.com,high\n',
      "m.csv:2: Metrics.score: 'high' is not a number"},
    {'an attribute value over 100 characters', 'long.csv', 'ChannelType,Address,Attributes.Bio\nEMAIL,a@example.com,' .. string.rep('x', 101) .. '\n',
      'long.csv:2: Attributes.Bio[0]: attribute value longer than 100 characters'},
    {'a malformed JSON line', 'e.ndjson', '{"ChannelType":"EMAIL","Address":"a@example.com"}\n{"ChannelType":"EMAIL",\n',
      'e.ndjson:2: invalid JSON'},
    {'a JSON line with a bad field', 'e.ndjson', '{"ChannelType":"EMAIL","Address":"a@example.com"}\n\n{"ChannelType":"EMAIL","Address":"b@example.com","Demographic":{"Timezone":"Moon/Base"}}\n',
      "e.ndjson:3: Demographic.Timezone: 'Moon/Base' is not a time zone"},
    {'an Id with a NUL byte (cut there, it would name endpoint seed)', 'nul.csv', 'Id,ChannelType,Address\nseed\0-x,EMAIL,x@example.com\n',
      'nul.csv:2: Id: contains a NUL character (\\u0000)'},
    {'a JSON line that is not an object', 'e.ndjson', '{"ChannelType":"EMAIL","Address":"a@example.com"}\n[1,2]\n',
      'e.ndjson:2: endpoint: expected an object'},
  }
  for _, c in ipairs(bad) do
    it('rolls back the whole import on ' .. c[1] .. ' and names file:line and field', function()
      local db = s.db()
      local _, code0 = s.import(db, 'endpoints', file('seed.csv', 'Id,ChannelType,Address\nseed,EMAIL,seed@example.com\n'))
      assert.are.equal(0, code0)
      local before = s.count(db)
      local out, code, err = s.import(db, 'endpoints', file(c[2], c[3]))
      assert.are.equal(1, code)
      assert.are.equal('', out)
      assert.matches(c[4], err, 1, true)
      assert.matches('nothing was imported', err, 1, true)
      assert.are.equal(before, s.count(db))
    end)
  end

  it('gives the same results with the parser on the calling thread', function()
    local db = s.db()
    local rows = {}
    for i = 1, 2500 do rows[#rows + 1] = ('{"Id":"t%d","ChannelType":"EMAIL","Address":"t%d@example.com"}'):format(i, i) end
    local env = {env = {HERALD_IMPORT_THREADS = '0'}}
    local out, code, err = s.import(db, 'endpoints', file('t.ndjson', table.concat(rows, '\n') .. '\n'), nil, env)
    assert.are.equal(0, code, err)
    assert.matches('imported 2500 endpoints', out, 1, true)
    rows[2001] = '{"Id":"bad","ChannelType":"EMAIL","Address":"nope"}'
    local _, code2, err2 = s.import(db, 'endpoints', file('t2.ndjson', table.concat(rows, '\n') .. '\n'), nil, env)
    assert.are.equal(1, code2)
    assert.matches("t2.ndjson:2001: Address: 'nope' is not a valid email address", err2, 1, true)
    local csv = {'Id,ChannelType,Address'}
    for i = 1, 2500 do csv[#csv + 1] = ('c%d,SMS,+1415555%04d'):format(i, i) end
    csv[2400] = 'c2399,SMS,"+1415'
    local _, code3, err3 = s.import(db, 'endpoints', file('t3.csv', table.concat(csv, '\n') .. '\n'), nil, env)
    assert.are.equal(1, code3)
    assert.matches('t3.csv:2400: field 3: a quoted field is never closed', err3, 1, true)
    assert.are.equal(2500, s.count(db))
  end)

  -- A first import skips the duplicate-address and per-user lookups while the parser's counts
  -- prove them empty; repeats within the file must still get Pinpoint's rules, on both paths.
  for _, threads in ipairs({'0', '1'}) do
    it('applies the address and user rules within a first import (threads=' .. threads .. ')', function()
      local env = {env = {HERALD_IMPORT_THREADS = threads}}
      local lines = {
        '{"Id":"a1","ChannelType":"EMAIL","Address":"same@example.com"}',
        '{"Id":"b1","ChannelType":"EMAIL","Address":"other@example.com"}',
        '{"Id":"a2","ChannelType":"EMAIL","Address":"same@example.com"}',
        '{"Id":"b1","Attributes":{"Plan":"pro"}}',
        '{"Id":"b2","ChannelType":"EMAIL","Address":"other@example.com"}',
      }
      local db = s.db()
      local out, code, err = s.import(db, 'endpoints', file('dup.ndjson', table.concat(lines, '\n') .. '\n'), nil, env)
      assert.are.equal(0, code, err)
      assert.matches('imported 5 endpoints', out, 1, true)
      assert.are.equal('INACTIVE', get(db, 'a1').EndpointStatus)
      assert.are.equal('ACTIVE', get(db, 'a2').EndpointStatus)
      -- b1's update names no address: its stored one is still the older of the two.
      assert.are.same({'pro'}, get(db, 'b1').Attributes.Plan)
      assert.are.equal('INACTIVE', get(db, 'b1').EndpointStatus)
      assert.are.equal('ACTIVE', get(db, 'b2').EndpointStatus)

      local users = {}
      for i = 1, 16 do
        users[#users + 1] = ('{"Id":"u%d","ChannelType":"EMAIL","Address":"u%d@example.com","User":{"UserId":"u"}}'):format(i, i)
      end
      local db2 = s.db()
      local _, code2, err2 = s.import(db2, 'endpoints', file('users.ndjson', table.concat(users, '\n') .. '\n'), nil, env)
      assert.are.equal(1, code2)
      assert.matches("users.ndjson:16: User.UserId: user 'u' already has 15 endpoints", err2, 1, true)
      assert.are.equal(0, s.count(db2))
      users[16] = nil
      local _, code3, err3 = s.import(db2, 'endpoints', file('users15.ndjson', table.concat(users, '\n') .. '\n'), nil, env)
      assert.are.equal(0, code3, err3)
      assert.are.equal(15, s.count(db2))
    end)
  end

  it('honours --app and refuses an unknown one', function()
    local db = s.db()
    assert.are.equal(0, select(2, s.run(db, 'must(herald.apps.create("shop"))')))
    local path = file('a.csv', 'Id,ChannelType,Address\nx,EMAIL,x@example.com\n')
    local _, code, err = s.import(db, 'endpoints', path, '--app shop')
    assert.are.equal(0, code, err)
    assert.are.equal(1, s.count(db, 'shop'))
    assert.are.equal(0, s.count(db))
    assert.are.equal('shop', get(db, 'x', 'shop').ApplicationId)
    local _, code2, err2 = s.import(db, 'endpoints', path, '--app nowhere')
    assert.are.equal(1, code2)
    assert.matches("unknown application 'nowhere'", err2, 1, true)
  end)

  it('reports a missing file', function()
    local _, code, err = s.import(s.db(), 'endpoints', '/nonexistent/contacts.csv')
    assert.are.equal(1, code)
    assert.matches('/nonexistent/contacts.csv: No such file or directory', err, 1, true)
  end)

  it('shows progress only on a terminal (or when forced)', function()
    local rows = {'Id,ChannelType,Address'}
    for i = 1, 3000 do rows[#rows + 1] = ('p%d,EMAIL,p%d@example.com'):format(i, i) end
    local path = file('p.csv', table.concat(rows, '\n') .. '\n')
    local _, code, err = s.import(s.db(), 'endpoints', path)
    assert.are.equal(0, code, err)
    assert.are.equal('', err) -- stderr is a file here: silent
    -- HERALD_PROGRESS=1 draws even off a terminal; the line has count, rate and ETA.
    local lua = [[
      local p = herald.progress.new('testing', 'rows', 100)
      p:update(50)
      io.stderr:write('|')
      p:finish()]]
    local _, code2, err2 = h.herald('-e ' .. h.shell_quote(lua), {env = {HERALD_PROGRESS = '1'}})
    assert.are.equal(0, code2)
    assert.matches('testing: 50 rows  [%d.]+[kM]?/s   50%%  ETA %d+s|', err2)
  end)
end)

describe('herald import events', function()
  it('imports NDJSON events idempotently and updates last activity', function()
    local db = s.db()
    assert.are.equal(0, select(2, s.import(db, 'endpoints', file('e.csv', 'Id,ChannelType,Address\ne1,EMAIL,e1@example.com\n'))))
    local path = file('events.ndjson',
      '{"EndpointId":"e1","EventId":"a","EventType":"_email.open","Timestamp":"2026-11-01T10:00:00Z"}\n' ..
      '{"EndpointId":"e1","EventType":"purchase","Timestamp":"2026-11-05T10:00:00Z","Metrics":{"amount":12.5}}\n')
    local out, code, err = s.import(db, 'events', path)
    assert.are.equal(0, code, err)
    assert.matches('^imported 2 events from .*events%.ndjson in [%d.]+ s\n$', out)
    local out2, code2 = s.import(db, 'events', path)
    assert.are.equal(0, code2)
    assert.matches('(0 new, 2 already stored)', out2, 1, true)
    local v = s.run(db, [[emit({n = must(herald.db.query("SELECT count(*) AS n FROM events"))[1].n,
      last = herald.db.query("SELECT last_activity FROM endpoints")[1].last_activity})]])
    assert.are.equal(2, v.n)
    assert.are.equal('2026-11-05T10:00:00.000Z', v.last)
  end)

  it('rolls back all events when one names an unknown endpoint', function()
    local db = s.db()
    assert.are.equal(0, select(2, s.import(db, 'endpoints', file('e.csv', 'Id,ChannelType,Address\ne1,EMAIL,e1@example.com\n'))))
    local path = file('events.ndjson',
      '{"EndpointId":"e1","EventId":"a","EventType":"open","Timestamp":"2026-11-01T10:00:00Z"}\n' ..
      '{"EndpointId":"ghost","EventId":"b","EventType":"open","Timestamp":"2026-11-01T10:00:00Z"}\n')
    local _, code, err = s.import(db, 'events', path)
    assert.are.equal(1, code)
    assert.matches("events.ndjson:2: EndpointId: no endpoint 'ghost' in application 'default'", err, 1, true)
    local v = s.run(db, [[emit(must(herald.db.query("SELECT count(*) AS n FROM events"))[1].n)]])
    assert.are.equal(0, v)
  end)

  it('explains its usage', function()
    local _, code, err = h.herald('import nonsense x.csv')
    assert.are.equal(2, code)
    assert.matches('usage: herald import endpoints FILE', err, 1, true)
  end)
end)

describe('a bad database file', function()
  it('gives a clear message and a non-zero exit when the file is not a database', function()
    local dir = h.tmpdir()
    local db = h.write(dir .. '/garbage.db', string.rep('this is not a database\0\1\2\3', 400))
    local _, code, err = h.herald('--db ' .. h.shell_quote(db) .. " -e 'herald.endpoints.count()'")
    assert.are.equal(1, code)
    assert.matches('garbage.db: opening: file is not a database', err, 1, true)
    local out, code2, err2 = s.import(db, 'endpoints', file('a.csv', 'ChannelType,Address\nEMAIL,a@example.com\n'))
    assert.are.equal(1, code2)
    assert.are.equal('', out)
    assert.matches('^herald import: .*garbage%.db: opening: file is not a database\n$', err2)
    assert.is_nil(err2:find('AddressSanitizer', 1, true))
  end)

  describe('locked by another process', function()
    local pidfiles = {}
    -- Holds an exclusive transaction open in the sqlite3 shell until the test ends: a shell
    -- feeds it the script, then sleeps with the pipe open.
    local function hold_lock(db)
      local dir = h.tmpdir()
      local ready = dir .. '/ready'
      pidfiles = {dir .. '/feeder.pid', dir .. '/sqlite3.pid'}
      h.write(dir .. '/lock.sql', 'BEGIN EXCLUSIVE;\nCREATE TABLE IF NOT EXISTS lock_holder(x);\n.print locked\n')
      os.execute(string.format(
        [[sh -c 'echo $$ > %s/feeder.pid; cat %s/lock.sql; exec sleep 30' | sqlite3 %s > %s 2>&1 & echo $! > %s/sqlite3.pid]],
        dir, dir, h.shell_quote(db), ready, dir))
      for _ = 1, 200 do
        if (h.read(ready) or ''):find('locked', 1, true) then return end
        os.execute('sleep 0.05')
      end
      error('the sqlite3 shell did not take the lock: ' .. (h.read(ready) or ''))
    end

    after_each(function()
      for _, f in ipairs(pidfiles) do
        local pid = (h.read(f) or ''):match('%d+')
        if pid then os.execute('kill ' .. pid .. ' 2>/dev/null') end
      end
      pidfiles = {}
    end)

    it('refuses an import with a "locked" message', function()
      local db = s.db()
      assert.are.equal(0, select(2, s.run(db, 'emit(herald.endpoints.count())')))
      hold_lock(db)
      local out, code, err = s.import(db, 'endpoints', file('a.csv', 'ChannelType,Address\nEMAIL,a@example.com\n'), nil,
        {env = {HERALD_BUSY_TIMEOUT_MS = '100'}})
      assert.are.equal(1, code)
      assert.are.equal('', out)
      assert.matches('database is locked', err, 1, true)
    end)

    it('refuses to open a database another process holds exclusively', function()
      local db = h.tmpdir() .. '/rollback.db'
      assert.is_true(os.execute('sqlite3 ' .. h.shell_quote(db) .. ' "CREATE TABLE t(x)"'))
      hold_lock(db)
      local _, code, err = h.herald('--db ' .. h.shell_quote(db) .. " -e 'herald.endpoints.count()'",
        {env = {HERALD_BUSY_TIMEOUT_MS = '100'}})
      assert.are.equal(1, code)
      assert.matches('database is locked', err, 1, true)
    end)
  end)
end)
