-- INVALID campaigns (a definition file that fails to load) and stored copies that run on
-- their own, each through several separate herald processes.
local h = require 'helpers'
local json = require 'herald.json'

local function q(dir, sql) return h.query(dir, 'c.db', sql) end

local function n(dir, sql)
  return q(dir, sql)[1].n
end

-- count endpoints: e01.. with cohort i-1; odd ones EMAIL in Tokyo, even ones SMS in New York
local function endpoints(dir, count)
  local rows = {}
  for i = 1, count do
    local email = i % 2 == 1
    rows[i] = { id = string.format('e%02d', i), channel = email and 'EMAIL' or 'SMS',
      address = email and string.format('u%02d@example.com', i) or string.format('+1555000%04d', i),
      cohort = (i - 1) * 5 % 100, tz = email and 'Asia/Tokyo' or 'America/New_York' }
  end
  h.endpoints_sql(dir, 'c.db', rows)
end

local function herald(dir, args, env)
  return h.herald('--db c.db ' .. args, { cwd = dir, env = env })
end

-- 'local' is due at 09:00 on each endpoint's clock (Tokyo 00:00 UTC, New York 13:00 UTC);
-- 'other' runs daily.
local GOOD = [[
local all = herald.segment{ name = 'all' }
herald.campaign{ name = 'local', segment = all, deliver = { file = 'out.txt' }, message = { body = 'hi' },
  schedule = { start = '2027-05-03T09:00:00', is_local_time = true } }
herald.campaign{ name = 'other', segment = all, deliver = { file = 'other.txt' }, message = { body = 'o' },
  schedule = { start = '2027-05-01T12:00:00Z', frequency = 'DAILY', ['end'] = '2027-05-10T00:00:00Z' } }
]]

describe('INVALID campaigns', function()
  it('hold their messages while their definition file fails to load, and leave INVALID when it loads', function()
    local dir = h.tmpdir()
    endpoints(dir, 20)
    h.write(dir .. '/w.lua', GOOD)
    -- Tokyo has its message, New York's is pending
    local _, code, err = herald(dir, 'run --clock-start 2027-05-02T00:00:00Z --until 2027-05-03T06:00:00Z w.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(10, h.count(h.read(dir .. '/out.txt'), '--- message '))
    assert.are.equal(10, n(dir, "SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
      .. " WHERE r.campaign_id = 'local' AND o.state = 'PENDING'"))
    local out
    out, code = herald(dir, 'campaign pause other')
    assert.are.equal(0, code, out)

    -- a syntax error, a runtime error, a validation error: each named with file:line
    local broken = {
      { GOOD .. '\nherald.campaign{ name = \n', 'w.lua:8: unexpected symbol near <eof>' },
      { GOOD .. '\nlocal x = nil\nx.field = 1\n', 'w.lua:8: attempt to index a nil value' },
      { GOOD:gsub("body = 'hi' }", "body = 'hi' }, holdout = 120"), 'w.lua:2: herald.campaign local: holdout: a whole percentage 0-100' },
    }
    for i, case in ipairs(broken) do
      h.write(dir .. '/w.lua', case[1])
      _, code, err = herald(dir, 'run --until-idle w.lua', { HERALD_CLOCK_START = string.format('2027-05-03T%02d:00:00Z', 6 + i) })
      assert.are_not.equal(0, code)
      assert.matches(case[2], err, 1, true)
      assert.matches('w.lua: 2 stored campaigns of this file are INVALID; their pending messages are held', err, 1, true)
      local rows = q(dir, "SELECT id, state, error, source FROM campaigns ORDER BY id")
      -- the paused one keeps PAUSED, with the error
      assert.are.same({ 'INVALID', 'PAUSED' }, { rows[1].state, rows[2].state })
      for _, r in ipairs(rows) do
        assert.matches(case[2], r.error, 1, true)
        assert.matches('/w.lua$', r.source)
      end
      -- nothing sent, nothing lost, no new run while INVALID
      assert.are.equal(10, n(dir, "SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
        .. " WHERE r.campaign_id = 'local' AND o.state = 'PENDING'"))
      assert.are.equal(10, h.count(h.read(dir .. '/out.txt'), '--- message '))
    end
    assert.are.equal(2, n(dir, "SELECT count(*) AS n FROM campaign_runs WHERE campaign_id = 'other'"))
    -- list and show say why
    out = herald(dir, 'campaign list')
    assert.matches('local%s+INVALID%s+v1%s+/[^\n]*/w%.lua\n  error: w%.lua:2: herald%.campaign local: holdout', out)
    assert.matches('other%s+PAUSED', out)
    out = herald(dir, 'campaign show local')
    assert.matches('campaign local: INVALID, version 1', out, 1, true)
    assert.matches('error: w.lua:2: herald.campaign local: holdout', out, 1, true)
    local st = json.decode((herald(dir, 'campaign status local')))
    assert.are.equal('INVALID', st.State)
    assert.matches('holdout', st.Error)
    -- resuming a paused campaign whose file fails leaves it INVALID, its rows held
    out, code = herald(dir, 'campaign resume other')
    assert.are.equal(0, code, out)
    assert.are.equal('INVALID', q(dir, "SELECT state FROM campaigns WHERE id = 'other'")[1].state)

    -- `herald campaign load` of a file that still fails changes nothing; of the fixed file,
    -- the campaigns leave INVALID
    _, code, err = herald(dir, 'campaign load w.lua')
    assert.are_not.equal(0, code)
    assert.matches('herald campaign load: w.lua:2:', err, 1, true)
    h.write(dir .. '/w.lua', GOOD)
    out, code, err = herald(dir, 'campaign load w.lua')
    assert.are.equal(0, code, err)
    assert.are.same({ { id = 'local', state = 'PENDING_NEXT_RUN' }, { id = 'other', state = 'PENDING_NEXT_RUN' } },
      q(dir, 'SELECT id, state FROM campaigns WHERE error IS NULL ORDER BY id'))
    -- the held messages go out, once each
    _, code, err = herald(dir, 'run --until 2027-05-03T14:00:00Z w.lua', { HERALD_CLOCK_START = '2027-05-03T10:00:00Z' })
    assert.are.equal(0, code, err)
    assert.are.equal(20, h.count(h.read(dir .. '/out.txt'), '--- message '))
    assert.are.equal(20, n(dir, "SELECT count(DISTINCT o.endpoint_id) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
      .. " WHERE r.campaign_id = 'local' AND o.state = 'SENT'"))
    assert.are.equal('COMPLETED', q(dir, "SELECT state FROM campaigns WHERE id = 'local'")[1].state)
    -- a run whose hook fails: the campaign is INVALID with the error, for this process
    h.write(dir .. '/w.lua', GOOD .. [[
herald.campaign{ name = 'hooked', segment = herald.segment{ name = 'all' }, deliver = { file = 'h.txt' },
  message = { body = 'h' }, schedule = { start = '2027-05-04T00:00:00Z' },
  hook = function(eps) error('no luck') end }
]])
    _, code, err = herald(dir, 'run --until 2027-05-04T01:00:00Z w.lua', { HERALD_CLOCK_START = '2027-05-04T00:00:00Z' })
    assert.are_not.equal(0, code)
    local row = q(dir, "SELECT state, error FROM campaigns WHERE id = 'hooked'")[1]
    assert.are.equal('INVALID', row.state)
    assert.matches('w.lua:8: no luck', row.error, 1, true)
  end)
end)

describe('a definition file that fails part-way', function()
  it('stores none of its definitions: its campaigns keep their stored version and become INVALID', function()
    local dir = h.tmpdir()
    endpoints(dir, 4)
    local head = [[
local all = herald.segment{ name = 'all' }
herald.campaign{ name = 'pa', segment = all, deliver = { file = 'out.txt' }, message = { body = 'version %s' },
  schedule = { start = '2027-05-01T12:00:00Z' } }
]]
    h.write(dir .. '/p.lua', head:format('one'))
    local _, code, err = herald(dir, 'campaign load p.lua')
    assert.are.equal(0, code, err)
    -- a new version of pa, a new campaign pb and a Lua copy of pa, then an error
    h.write(dir .. '/p.lua', head:format('TWO') .. [[
herald.campaign{ name = 'pb', segment = all, deliver = { file = 'out.txt' }, message = { body = 'b' },
  schedule = { start = '2027-05-01T12:00:00Z' } }
herald.campaign.copy('pa', 'pc')
error('a mistake further down')
]])
    for _, args in ipairs({ 'campaign load p.lua', 'run --until-idle p.lua' }) do
      _, code, err = herald(dir, args, { HERALD_CLOCK_START = '2027-05-01T11:00:00Z' })
      assert.are_not.equal(0, code)
      assert.matches('p.lua:7: a mistake further down', err, 1, true)
      assert.are.same({ { id = 'pa', state = 'INVALID', version = 1 } },
        q(dir, 'SELECT id, state, version FROM campaigns ORDER BY id'))
      assert.are.same({ { campaign_id = 'pa', version = 1 } },
        q(dir, 'SELECT campaign_id, version FROM campaign_versions ORDER BY 1, 2'))
    end
    assert.are.equal(0, n(dir, 'SELECT count(*) AS n FROM campaign_runs'))
    assert.is_nil(h.read(dir .. '/out.txt'))
  end)

  it('is named in a load error that names no file (a memory limit)', function()
    local dir = h.tmpdir()
    h.write(dir .. '/mem.lua', "local t = {} for i = 1, 1e8 do t[i] = ('x'):rep(64) .. i end\n")
    local _, code, err = herald(dir, 'campaign load mem.lua')
    assert.are_not.equal(0, code)
    assert.matches('herald campaign load: mem.lua: memory limit exceeded', err, 1, true)
  end)
end)

describe('a campaign made INVALID while herald run runs', function()
  it('plans no run and reads no event until it loads again; then the stale bound applies', function()
    local dir = h.tmpdir()
    local GOOD_FILE = [[
herald.endpoints.put{ Id = 'a', ChannelType = 'EMAIL', Address = 'a@example.com' }
local all = herald.segment{ name = 'all' }
herald.campaign{ name = 'daily', segment = all, deliver = { file = 'out.txt' }, message = { subject = 'd', body = 'b' },
  schedule = { start = '2027-01-01T09:00:00Z', frequency = 'DAILY' } }
herald.campaign{ name = 'cart', segment = all, deliver = { file = 'cart.txt' }, message = { subject = 'c', body = 'b' },
  schedule = { start = '2027-01-01T00:00:00Z', event = { types = { 'cart.add' } }, }, stale_after = '3d' }
]]
    h.write(dir .. '/daily.lua', GOOD_FILE)
    h.write(dir .. '/good.lua', GOOD_FILE)
    -- one `herald run` on a manual clock; another process loads the file broken, then fixed
    h.write(dir .. '/drive.lua', [[
local clock = require 'herald.core.clock'
local runner = require 'herald.runner'
local exe = ...
local function at(iso) return herald.time.parse(iso) end
clock.set_manual(at('2027-01-01T08:00:00Z'))
local r = runner.new {}
assert(r:load { 'daily.lua' })
local function loop_until(iso) r:loop { until_ms = at(iso) }; clock.set_manual(at(iso)) end
local function load(file)
  os.execute('cp ' .. file .. ' daily.lua && ' .. exe .. ' --db c.db campaign load daily.lua 2> /dev/null')
end
loop_until('2027-01-01T10:00:00Z')
local f = io.open('broken.lua', 'w'); f:write('herald.campaign{ name =\n'); f:close()
load('broken.lua')
loop_until('2027-01-02T12:00:00Z')
assert(herald.events.put('a', { EventId = 'e1', EventType = 'cart.add', Timestamp = '2027-01-02T12:00:00Z' }))
loop_until('2027-01-03T09:30:00Z')
local n = herald.db.query("SELECT count(*) AS n FROM campaign_runs WHERE campaign_id = 'daily'")[1].n
local c = herald.db.query("SELECT count(*) AS n FROM trigger_cursors WHERE campaign_id = 'cart'"
  .. " AND last_seq >= (SELECT seq FROM events WHERE event_id = 'e1')")[1].n
print(string.format('while INVALID: %d runs, %d cursors moved', n, c))
load('good.lua')
loop_until('2027-01-03T10:00:00Z')
r:close()
]])
    local out, code, err = h.herald('--db c.db drive.lua ' .. h.shell_quote(h.shell_quote(h.exe)), { cwd = dir })
    assert.are.equal(0, code, err)
    assert.matches('while INVALID: 1 runs, 0 cursors moved', out, 1, true)
    -- Jan 2's run is past the stale bound when the campaign is back, Jan 3's (30 min late) is
    -- sent; the event read once the campaign is back fires (within its 3 days' bound)
    assert.are.same({ { at = '2027-01-01 09:00:00', state = 'COMPLETED' }, { at = '2027-01-02 09:00:00', state = 'SKIPPED', reason = 'STALE' },
      { at = '2027-01-03 09:00:00', state = 'COMPLETED' } },
      q(dir, "SELECT datetime(scheduled_ms / 1000, 'unixepoch') AS at, state, reason FROM campaign_runs WHERE campaign_id = 'daily' ORDER BY id"))
    assert.are.equal(2, h.count(h.read(dir .. '/out.txt'), '--- message '))
    assert.are.equal(1, h.count(h.read(dir .. '/cart.txt') or '', '--- message '))
  end)
end)

describe('stored copies', function()
  it('run in a later process on their own; campaigns with Lua functions are copied in Lua', function()
    local dir = h.tmpdir()
    endpoints(dir, 20)
    h.write(dir .. '/src.lua', [[
local emails = herald.segment{ name = 'emails', channel = 'EMAIL' }
herald.campaign{ name = 'spring', segment = emails, deliver = { file = 'out.txt' },
  treatments = { { name = 'A', size = 50, message = { body = 'a' } },
                 { name = 'B', size = 50, message = { body = 'b' }, schedule = { start = '2027-06-02T10:00:00Z' } } },
  schedule = { start = '2027-06-01T10:00:00Z' } }
herald.campaign{ name = 'hooked', segment = emails, deliver = { file = 'hooked.txt' }, message = { body = 'h' },
  schedule = { start = '2027-06-01T10:00:00Z' },
  hook = function(eps) local keep = {} for _, e in ipairs(eps) do if e.Id < 'e10' then keep[#keep + 1] = e end end return keep end }
herald.campaign.copy('hooked', 'hooked-lua')
]])
    -- process 1: store the definitions (nothing runs)
    local out, code, err = herald(dir, 'campaign load src.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(0, n(dir, 'SELECT count(*) AS n FROM campaign_runs'))
    -- process 2: copy
    out, code = herald(dir, 'campaign copy spring spring-2')
    assert.are.equal(0, code, out)
    _, code, err = herald(dir, 'campaign copy hooked hooked-2')
    assert.are.equal(1, code)
    assert.matches("campaign 'hooked' depends on Lua functions (hook) that are not stored", err, 1, true)
    assert.matches("herald.campaign.copy('hooked', 'NEW')", err, 1, true)
    _, code, err = herald(dir, 'campaign copy spring "bad name"')
    assert.are.equal(1, code)
    assert.matches('new name', err, 1, true)
    out = herald(dir, 'campaign list')
    assert.matches('spring%-2%s+SCHEDULED%s+v1%s+stored copy of spring', out)
    -- process 3 loads another file only: the stored copy runs on its own, with spring's
    -- segment (the 10 EMAIL endpoints) and treatments (B on its own schedule)
    h.write(dir .. '/other.lua', [[
herald.campaign{ name = 'unrelated', segment = herald.segment{ name = 'none', channel = 'PUSH' },
  deliver = { file = 'u.txt' }, message = { body = 'u' }, schedule = { start = '2027-06-01T10:00:00Z' } }
]])
    _, code, err = herald(dir, 'run --until-idle other.lua', { HERALD_CLOCK_START = '2027-06-01T09:00:00Z' })
    assert.are.equal(0, code, err)
    assert.are.same({ { campaign_id = 'spring-2', treatment = 0, n = 5 }, { campaign_id = 'spring-2', treatment = 1, n = 5 } },
      q(dir, "SELECT r.campaign_id, o.treatment, count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
        .. " WHERE o.state = 'SENT' AND r.campaign_id <> 'unrelated' GROUP BY 1, 2 ORDER BY 1, 2"))
    assert.are.equal(0, n(dir, "SELECT count(*) AS n FROM outbox o JOIN endpoints e ON e.id = o.endpoint_id"
      .. " WHERE e.channel_type <> 'EMAIL'"))
    assert.are.equal(10, h.count(h.read(dir .. '/out.txt'), '--- message '))
    -- spring itself was not loaded: it did not run
    assert.are.equal(0, n(dir, "SELECT count(*) AS n FROM campaign_runs WHERE campaign_id IN ('spring', 'hooked', 'hooked-lua')"))
    -- process 4 loads the source file: the Lua copy runs with the hook, the stored copy is done
    _, code, err = herald(dir, 'run --until-idle src.lua', { HERALD_CLOCK_START = '2027-06-01T09:30:00Z' })
    assert.are.equal(0, code, err)
    assert.are.same({ { campaign_id = 'hooked', n = 5 }, { campaign_id = 'hooked-lua', n = 5 } },
      q(dir, "SELECT r.campaign_id, count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
        .. " WHERE o.state = 'SENT' AND r.campaign_id LIKE 'hooked%' GROUP BY 1 ORDER BY 1"))
    assert.are.equal(10, n(dir, "SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id"
      .. " WHERE r.campaign_id = 'spring-2'"))
    local st = json.decode((herald(dir, 'campaign status spring-2')))
    assert.are.equal('COMPLETED', st.State)
    assert.is_nil(st.Source)
    -- loading the copy stored no new version of it
    assert.are.equal(1, st.Version)
  end)
end)

-- A store that is busy (another process holds it past the busy timeout) or fails itself (its
-- disk full, an I/O error) is no fault of a campaign: nothing is made INVALID for it.
describe("the store's failures", function()
  local FILE = [[
herald.campaign{ name = 'due', segment = herald.segment{ name = 'all' }, message = { body = '%s {{Id}}' },
  deliver = { file = 'out.txt' } }
]]

  local function setup(count, body)
    local dir = h.tmpdir()
    local rows = {}
    for i = 1, count do rows[i] = { id = string.format('e%04d', i), address = string.format('u%04d@example.com', i) } end
    h.endpoints_sql(dir, 'c.db', rows)
    h.write(dir .. '/c.lua', string.format(FILE, body or 'hi'))
    local _, code, err = herald(dir, 'campaign load c.lua')
    assert.are.equal(0, code, err)
    return dir
  end

  -- Runs `herald --db c.db ARGS` while another process holds the store (BEGIN IMMEDIATE), far
  -- past herald's busy timeout: the holder lets go once herald says it is waiting for the
  -- store, or once herald has ended without waiting. Returns herald's exit code, stdout and
  -- stderr, and whether the holder saw herald wait.
  local function while_held(dir, args)
    local out, seen = h.hold_store(dir, 'c.db', 'HERALD_BUSY_TIMEOUT_MS=200 ' .. h.shell_quote(h.exe)
      .. ' --db c.db ' .. args .. ' > a.out 2> a.err < /dev/null; echo "rc=$?"', { 'a.err', 'trying again' })
    return tonumber(out:match('rc=(%d+)')), h.read(dir .. '/a.out') or '', h.read(dir .. '/a.err') or '', seen
  end

  it('are waited for when a definition file loads while another process holds the store', function()
    local dir = setup(5)
    -- `herald run`: the file loads once the store is free, and its campaign runs
    local code, _, err, seen = while_held(dir, 'run --until-idle c.lua')
    assert.is_true(seen, err)
    assert.matches('herald run: c.lua: the store is busy (another process holds it), trying again: '
      .. 'c.db: starting a transaction: database is locked\n', err, 1, true)
    assert.are.equal(0, code, err)
    assert.is_nil(err:find('INVALID', 1, true))
    assert.are.same({ { state = 'COMPLETED', version = 1 } }, q(dir, 'SELECT state, version, error FROM campaigns'))
    assert.are.equal(5, h.count(h.read(dir .. '/out.txt') or '', 'hi e'))
    -- `herald campaign load` of an edited file: version 2 is stored once the store is free
    h.write(dir .. '/c.lua', string.format(FILE, 'hello'))
    local out
    code, out, err, seen = while_held(dir, 'campaign load c.lua')
    assert.is_true(seen, err)
    assert.matches('herald campaign load: c.lua: the store is busy (another process holds it), trying again: ',
      err, 1, true)
    assert.are.equal(0, code, err)
    assert.are.equal('loaded 1 file\n', out)
    assert.are.same({ { state = 'COMPLETED', version = 2 } }, q(dir, 'SELECT state, version, error FROM campaigns'))
  end)

  it('are reported in a line, not a traceback, when a failing file cannot make its campaigns INVALID', function()
    local dir = setup(3)
    h.write(dir .. '/c.lua', "local s = herald.segment{ name = 'all' }\n"
      .. "herald.campaign{ name = 'due', segment = s, holdout = 120, message = { body = 'b' } }\n")
    -- Another process keeps the database open (its -wal and -shm files stay), and herald may
    -- not write past the first 512 bytes of a file: it opens and reads the store, but no
    -- write reaches it (SQLite's "disk I/O error", as on a failing disk).
    h.write(dir .. '/keep.py', [[
import os, sqlite3, time
c = sqlite3.connect('c.db', isolation_level=None)
c.execute('SELECT count(*) FROM campaigns').fetchall()
open('open', 'w').close()
for _ in range(600):
    if os.path.exists('done'):
        break
    time.sleep(0.05)
]])
    local out = h.sh('cd ' .. h.shell_quote(dir) .. ' && python3 keep.py & kp=$!;'
      .. ' cd ' .. h.shell_quote(dir) .. ' && for i in $(seq 200); do [ -e open ] && break; sleep 0.05; done;'
      .. " sh -c \"trap '' XFSZ; ulimit -S -f 1; exec " .. h.shell_quote(h.exe)
      .. ' --db c.db run --until-idle c.lua < /dev/null 2>&1"; echo "rc=$?"; touch done; wait $kp')
    assert.matches('c.lua:2: herald.campaign due: holdout', out, 1, true)
    assert.matches('herald run: c.lua: its stored campaigns could not be marked INVALID: c.db: ', out, 1, true)
    assert.matches('disk I/O error', out, 1, true)
    -- the file's own error has its traceback (its line); herald's frames have no place here
    assert.is_nil(out:find('[C]', 1, true), out)
    assert.is_nil(out:find('stdlib/herald', 1, true), out)
    assert.matches('rc=1\n', out, 1, true)
  end)

  it('make no campaign INVALID when its run cannot be written (disk failing): the run is written once it can', function()
    local dir = setup(1000)
    -- herald may write no more than 64 KB into any file at first (128 blocks of 512 bytes):
    -- the store opens and the file loads, but the run's rows do not fit (SQLite says "disk I/O
    -- error", as on a failing disk). Once herald says it waits for the store, the limit is lifted.
    local out = h.sh('cd ' .. h.shell_quote(dir) .. ' && { sh -c "trap \'\' XFSZ; ulimit -S -f 128; '
      .. h.shell_quote(h.exe) .. ' --db c.db run --until-idle c.lua < /dev/null & echo \\$! > pid; wait \\$!; echo rc=\\$?" 2>&1 | cat > all.txt & };'
      .. ' for i in $(seq 600); do grep -q "trying again\\|^rc=" all.txt 2> /dev/null && break; sleep 0.05; done;'
      .. ' python3 -c "import resource; resource.prlimit($(cat pid), resource.RLIMIT_FSIZE,'
      .. ' (resource.RLIM_INFINITY, resource.RLIM_INFINITY))" 2>&1; wait; cat all.txt')
    assert.matches('herald run: campaign due: materialising a run: the store failed (no fault of the campaigns), '
      .. 'trying again: c.db: ', out, 1, true)
    assert.is_nil(out:find('INVALID', 1, true), out)
    assert.matches('rc=0\n', out, 1, true)
    assert.are.same({ { state = 'COMPLETED' } }, q(dir, 'SELECT state, error FROM campaigns'))
    assert.are.equal(1000, n(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'"))
    assert.are.equal(1000, h.count(h.read(dir .. '/out.txt') or '', 'hi e'))
  end)

  it('end a run that is to end (--until-idle) once the store has failed past its patience, and lose nothing', function()
    local dir = setup(1000)
    -- the disk stays failing (the run's rows never fit): the run gives up after 3 s, not never
    local out = h.sh('cd ' .. h.shell_quote(dir) .. ' && sh -c "trap \'\' XFSZ; ulimit -S -f 128;'
      .. ' HERALD_STORE_PATIENCE_MS=3000 ' .. h.shell_quote(h.exe) .. ' --db c.db run --until-idle c.lua < /dev/null;'
      .. ' echo rc=\\$?" 2>&1')
    assert.matches('herald run: campaign due: materialising a run: the store failed (no fault of the campaigns), '
      .. 'trying again: c.db: ', out, 1, true)
    assert.matches('herald run: campaign due: materialising a run: the store failed %(no fault of the campaigns%) for %d+ s, '
      .. 'giving up: c%.db: .*; run again once the store is fixed\n', out)
    assert.matches('rc=1\n', out, 1, true)
    assert.is_nil(out:find('INVALID', 1, true), out)
    assert.are.equal(0, n(dir, 'SELECT count(*) AS n FROM outbox'))
    -- the disk fixed, the next run sends every message
    local _, code, err = herald(dir, 'run --until-idle c.lua')
    assert.are.equal(0, code, err)
    assert.are.equal(1000, n(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'"))
    assert.are.equal(1000, h.count(h.read(dir .. '/out.txt') or '', 'hi e'))
  end)
end)
