-- Campaign code under `herald run` is sandboxed: every bad script gets a clear error with its
-- file and line, and the runtime goes on with the rest.
local h = require 'helpers'
local S = require 'servers'

local GOOD = [[
herald.endpoints.put{ Id = 'g1', ChannelType = 'EMAIL', Address = 'g1@example.com' }
herald.campaign{ name = 'good', segment = herald.segment{ name = 'everyone' },
  message = { subject = 'hello', body = 'hi {{Address}}' }, deliver = { file = 'good.txt' } }
]]

-- Runs `herald run --until-idle bad.lua good.lua` in a fresh directory.
local function run_with(bad_source)
  local dir = h.tmpdir()
  h.write(dir .. '/bad.lua', bad_source)
  h.write(dir .. '/good.lua', GOOD)
  local out, code, err = h.herald('--db q.db run --until-idle bad.lua good.lua', { cwd = dir })
  return dir, out, code, err
end

local function good_was_delivered(dir)
  local sent = h.read(dir .. '/good.txt') or ''
  assert.are.equal(1, h.count(sent, '--- message '))
  assert.matches('to: g1@example.com', sent, 1, true)
end

describe('herald run with bad campaign code', function()
  it('reports a syntax error with file and line', function()
    local dir, _, code, err = run_with('local x = 1\nherald.campaign{ name = \n')
    assert.are_not.equal(0, code)
    assert.matches('bad.lua:3:', err, 1, true)
    good_was_delivered(dir)
  end)

  it('stops an endless loop with "instruction budget exceeded" and goes on', function()
    local dir, _, code, err = run_with('local n = 0\nwhile true do n = n + 1 end\n')
    assert.are_not.equal(0, code)
    assert.matches('instruction budget exceeded', err, 1, true)
    assert.matches('bad.lua:2', err, 1, true)
    good_was_delivered(dir)
  end)

  it('stops a loop that tries to pcall its way past the budget', function()
    local dir, _, code, err = run_with('while true do pcall(function() while true do end end) end\n')
    assert.are_not.equal(0, code)
    assert.matches('instruction budget exceeded', err, 1, true)
    good_was_delivered(dir)
  end)

  it('stops string.rep of 2^40 bytes with a memory limit error and goes on', function()
    local dir, _, code, err = run_with('local s = string.rep("x", 2^40)\n')
    assert.are_not.equal(0, code)
    assert.matches('memory limit', err, 1, true)
    good_was_delivered(dir)
  end)

  it('stops endless table growth with a memory limit error and goes on', function()
    local dir, _, code, err = run_with('local t = {}\nlocal i = 0\nwhile true do i = i + 1; t[i] = {i} end\n')
    assert.are_not.equal(0, code)
    assert.matches('memory limit', err, 1, true)
    good_was_delivered(dir)
  end)

  it('refuses a bytecode chunk', function()
    local dir = h.tmpdir()
    h.write(dir .. '/bytecode.lua', string.dump(load('return 1')))
    h.write(dir .. '/good.lua', GOOD)
    local _, code, err = h.herald('--db q.db run --until-idle bytecode.lua good.lua', { cwd = dir })
    assert.are_not.equal(0, code)
    assert.matches('bytecode is refused', err, 1, true)
    good_was_delivered(dir)
  end)

  it('names io, os.execute and debug when a script reaches for them', function()
    for _, expr in ipairs({ 'io.open("x")', 'os.execute("true")', 'debug.traceback()' }) do
      local global = expr:match('^(%a+)')
      local dir, _, code, err = run_with('local r = ' .. expr .. '\n')
      assert.are_not.equal(0, code, expr)
      assert.matches(global, err, 1, true)
      assert.matches('bad.lua:1', err, 1, true)
      good_was_delivered(dir)
    end
  end)

  it('leaves none of a failing file\'s campaigns behind', function()
    local dir, out, code = run_with([[
      herald.campaign{ name = 'half', segment = herald.segment{ name = 'all' }, message = { body = 'x' } }
      error('definition file gives up')
    ]])
    assert.are_not.equal(0, code)
    assert.is_nil(out:find('campaign half', 1, true))
    good_was_delivered(dir)
  end)

  it('fails only the campaign whose filter runs away, with its file and line', function()
    local dir, out, code, err = run_with([[
      herald.campaign{ name = 'spinner', message = { body = 'x' },
        segment = herald.segment{ name = 'spin', filter = function(ep)
          while true do end
        end } }
    ]])
    assert.are_not.equal(0, code)
    assert.matches('instruction budget exceeded', err, 1, true)
    assert.matches('bad.lua:3', err, 1, true)
    good_was_delivered(dir)
    assert.matches('campaign good', out, 1, true)
  end)
end)

describe('a segment filter or hook over a large audience', function()
  it('gets a fresh instruction budget for each batch of rows, not one for the whole run', function()
    local dir = h.tmpdir()
    local rows = {}
    for i = 1, 600 do rows[i] = { id = string.format('e%04d', i), address = string.format('u%d@example.com', i) } end
    h.endpoints_sql(dir, 'q.db', rows)
    -- each endpoint costs the filter and the hook some 20000 instructions: a batch of 50 rows
    -- about a million, well inside the budget of 4 million; all 600 rows 12 million, past it
    h.write(dir .. '/big.lua', [[
local function spin() local n = 0 for i = 1, 5000 do n = n + i end return n end
herald.campaign{ name = 'filtered', message = { body = 'f' }, deliver = { file = 'f.txt' },
  segment = herald.segment{ name = 'some', filter = function(ep) spin() return ep.Id <= 'e0300' end } }
herald.campaign{ name = 'hooked', message = { body = 'h' }, deliver = { file = 'h.txt' },
  segment = herald.segment{ name = 'all' },
  hook = function(eps)
    local keep = {}
    for _, e in ipairs(eps) do spin() if e.Id > 'e0300' then keep[#keep + 1] = e end end
    return keep
  end }
]])
    h.write(dir .. '/drive.lua', [[
local r = require('herald.runner').new { budget = 4000000 }
assert(r:load { 'big.lua' })
r:loop { until_idle = true }
print('failures: ' .. r.failures)
r:close()
]])
    local out, code, err = h.herald('--db q.db drive.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.matches('failures: 0', out, 1, true)
    assert.are.same({ { campaign_id = 'filtered', state = 'SENT', n = 300 },
                      { campaign_id = 'hooked', state = 'SENT', n = 300 },
                      { campaign_id = 'hooked', state = 'SKIPPED', n = 300 } },
      h.query(dir, 'q.db', 'SELECT r.campaign_id, o.state, count(*) AS n FROM outbox o'
        .. ' JOIN campaign_runs r ON r.id = o.run_id GROUP BY 1, 2 ORDER BY 1, 2'))
  end)
end)

describe('herald.segment.import in campaign code', function()
  it('reads files below the working directory through the host, and no other', function()
    local dir = h.tmpdir()
    h.write(dir .. '/vip.csv', 'Id,ChannelType,Address\nv1,EMAIL,v1@example.com\nv2,EMAIL,v2@example.com\n')
    os.execute('mkdir -p ' .. dir .. '/lists')
    h.write(dir .. '/lists/more.ndjson', '{"Id":"m1","ChannelType":"EMAIL","Address":"m1@example.com"}\n')
    h.write(dir .. '/vip.lua', [[
      local vip = assert(herald.segment.import('vip.csv'))
      local more = assert(herald.segment.import('lists/more.ndjson'))
      print('more', more:count())
      print('absolute', select(2, herald.segment.import(]] .. string.format('%q', dir .. '/vip.csv') .. [[)))
      print('up', select(2, herald.segment.import('../vip.csv')))
      herald.campaign{ name = 'vip', segment = vip, message = { subject = 's', body = 'hi' }, deliver = { file = 'vip.txt' } }
    ]])
    local out, code, err = h.herald('--db q.db run --until-idle vip.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.matches('more\t1', out, 1, true)
    assert.matches('absolute\t' .. dir .. '/vip.csv: campaign code reads only relative paths below the working directory', out, 1, true)
    assert.matches('up\t../vip.csv: campaign code reads only relative paths below the working directory', out, 1, true)
    local sent = h.read(dir .. '/vip.txt') or ''
    assert.are.equal(2, h.count(sent, '--- message '))
    assert.matches('to: v1@example.com', sent, 1, true)
    assert.matches('to: v2@example.com', sent, 1, true)
  end)
end)

-- Outcomes of HTTP transfers reach a task from the event loop; in a sandbox at its memory cap
-- the tables that carry them may not fit. The task gets the memory error, not the process.
describe('herald run with campaign code at its memory cap', function()
  local ng

  setup(function() ng = S.start_nginx { tls = false } end)
  teardown(function() if ng then ng:stop() end end)

  -- Runs before and body as a task that fills the sandbox up to its cap in between (with ever
  -- smaller pieces, so what is left is a few bytes) and lets go of about 100 KB, and a second
  -- task that reports how the first ended.
  local function run_full(body, before)
    local dir = h.tmpdir()
    h.write(dir .. '/full.lua', [[
local http = require 'herald.http'
local function fill()
  local hog, n = nil, 0
  for _, size in ipairs { 1048576, 65536, 4096, 256, 16 } do
    pcall(function() while true do n = n + 1; hog = { next = hog, s = string.rep('x', size) .. n } end end)
  end
  local freed = 0
  while freed < 100000 do freed = freed + #hog.s + 64; hog = hog.next end
  return hog
end
local t = herald.spawn(function()
]] .. (before or '') .. [[
  local hog = fill()
]] .. body .. [[
end)
herald.spawn(function()
  while not t.done do herald.sleep(20) end
  print('the runtime goes on; the task ended ok:', t.ok)
end)
]])
    return h.herald('--db q.db run --until-idle full.lua', { cwd = dir })
  end

  it('fails the task whose batch outcomes do not fit', function()
    local out, code, err = run_full(string.format([[
  local b = http.batch { url = %q, concurrency = 50 }
  for i = 1, 2000 do b:add('x') end
  local out = b:wait()
  print('outcomes', out.n, hog ~= nil)
]], ng.url .. '/ok'))
    assert.are_not.equal(134, code, err)
    assert.matches('herald: task failed: memory limit exceeded', err, 1, true)
    assert.matches("in method 'wait'", err, 1, true)
    assert.are.equal('the runtime goes on; the task ended ok:\tfalse\n', out)
  end)

  it('lets the task catch the memory error and take the outcomes once it has room', function()
    local out, code, err = run_full(string.format([[
  local b = http.batch { url = %q, concurrency = 50 }
  for i = 1, 2000 do b:add('x', i) end
  local ok = pcall(b.wait, b)
  hog = nil
  local out = b:wait()
  print('first wait', ok, 'then', out.n, out.verdict[out.n], out.key[1] ~= nil)
]], ng.url .. '/ok'))
    assert.are.equal(0, code, err)
    assert.are.equal('first wait\tfalse\tthen\t2000\tdelivered\ttrue\n'
      .. 'the runtime goes on; the task ended ok:\ttrue\n', out)
  end)

  it('fails the task whose response does not fit', function()
    local out, code, err = run_full(string.format([[
  local res = http.request { url = %q, body = big }
  print('response', #res.body, hog ~= nil)
]], ng.url .. '/echo'), "  local big = string.rep('y', 300000)\n")
    assert.are_not.equal(134, code, err)
    assert.matches('herald: task failed: memory limit exceeded', err, 1, true)
    assert.matches("http.request'", err, 1, true)
    assert.are.equal('the runtime goes on; the task ended ok:\tfalse\n', out)
  end)
end)

describe('herald run with a hook that fails inside its run\'s transaction', function()
  it('fails that campaign alone when TitleOverride is not a string, and keeps the others\' records', function()
    local dir, out, code, err = run_with([[
      herald.campaign{ name = 'override', segment = herald.segment{ name = 'all' },
        message = { subject = 'x', body = 'x' }, deliver = { file = 'override.txt' },
        hook = function(eps)
          for _, e in ipairs(eps) do e.TitleOverride = { 'a', 'list' } end
          return eps
        end }
    ]])
    assert.are_not.equal(0, code)
    -- named by the hook's checks (or, behind them, by the run's writer in C)
    assert.matches("TitleOverride[^\n]* must be a string", err)
    good_was_delivered(dir)
    assert.are.equal('INVALID', h.query(dir, 'q.db', "SELECT state FROM campaigns WHERE id = 'override'")[1].state)
    -- what this process sent is stored: a second run sends nothing again
    assert.are.equal(1, h.query(dir, 'q.db', "SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id WHERE r.campaign_id = 'good' AND o.state = 'SENT'")[1].n)
    h.write(dir .. '/good.txt', '')
    local _, code2 = h.herald('--db q.db run --until-idle good.lua', { cwd = dir })
    assert.are.equal(0, code2)
    assert.are.equal(0, h.count(h.read(dir .. '/good.txt') or '', '--- message '))
  end)
end)

describe('herald.db.query in campaign code', function()
  local SPIN = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"

  it('ends a runaway query at the sandbox time limit, however the script catches it', function()
    local dir = h.tmpdir()
    h.write(dir .. '/spin.lua', string.format([[
local sb = herald.sandbox.new { time_ms = 300 }
local c = os.clock()
local ok, err = sb:run([==[local ok = pcall(herald.db.query, %q) return 'swallowed']==], 'q.lua')
print(ok, err, os.clock() - c < 5)
]], SPIN))
    local out = h.sh('cd ' .. h.shell_quote(dir) .. ' && timeout -s KILL 30 ' .. h.shell_quote(h.exe) .. ' --db q.db spin.lua 2>&1')
    assert.matches('^false\tq.lua:1: time limit exceeded %(300 ms%)', out)
    assert.matches('\ttrue\n$', out)
  end)

  it('is stopped by SIGTERM and the run ends', function()
    local dir = h.tmpdir()
    h.write(dir .. '/good.lua', GOOD)
    h.write(dir .. '/spin.lua', string.format([[
herald.campaign{ name = 'spin', segment = herald.segment{ name = 'all' },
  message = { subject = 'x', body = 'x' }, deliver = { file = 'spin.txt' },
  hook = function(eps) herald.db.query(%q) return eps end }
]], SPIN))
    -- SIGTERM 3 s in; the run must end within 4 s of it (before the 10 s time limit)
    local out = h.sh('cd ' .. h.shell_quote(dir) .. ' && { ' .. h.shell_quote(h.exe)
      .. ' --db q.db run --until-idle good.lua spin.lua >out 2>err & P=$!; sleep 3; kill -TERM $P; i=0;'
      .. ' while kill -0 $P 2>/dev/null && [ $i -lt 40 ]; do sleep 0.1; i=$((i+1)); done;'
      .. ' if kill -0 $P 2>/dev/null; then echo still running; kill -KILL $P; fi; wait $P; }')
    assert.are.equal('', out)
    assert.matches('interrupted: herald is stopping', h.read(dir .. '/err'), 1, true)
  end)

  it('finalizes its statement when the rows pass the memory cap, so the store stays writable', function()
    local dir = h.tmpdir()
    h.write(dir .. '/big.lua', [[
for i = 1, 40 do herald.endpoints.put{ Id = 'e' .. i, ChannelType = 'EMAIL', Address = i .. '@example.com' } end
local sb = herald.sandbox.new { memory = 8 * 2^20 }
print(sb:run("return herald.db.query('SELECT a.id, b.id AS b, c.id AS c, d.id AS d FROM endpoints a, endpoints b, endpoints c, endpoints d')", 'q.lua'))
-- another process writes; this one must see it and still write
os.execute(string.format('%q --db q.db put.lua', require('herald.core').exe_path()))
print(#herald.db.query('SELECT id FROM endpoints'))
print(herald.endpoints.put{ Id = 'last', ChannelType = 'EMAIL', Address = 'l@example.com' } ~= nil)
]])
    h.write(dir .. '/put.lua', "herald.endpoints.put{ Id = 'other', ChannelType = 'EMAIL', Address = 'o@example.com' }\n")
    local out = h.sh('cd ' .. h.shell_quote(dir) .. ' && timeout -s KILL 60 ' .. h.shell_quote(h.exe) .. ' --db q.db big.lua 2>&1')
    assert.matches('^false\tmemory limit exceeded', out)
    assert.matches('\n41\ntrue\n$', out)
  end)
end)
