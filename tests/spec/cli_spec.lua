local h = require 'helpers'

describe('herald binary', function()
  it('prints its version', function()
    local out, code = h.herald('--version')
    assert.are.equal(0, code)
    assert.matches('^herald %d+%.%d+%.%d+', out)
  end)

  it('runs a chunk with -e', function()
    local out, code = h.herald("-e 'print(1 + 41)'")
    assert.are.equal(0, code)
    assert.are.equal('42\n', out)
  end)

  it('runs a script with arg set as lua does', function()
    local dir = h.tmpdir()
    local path = h.write(dir .. '/args.lua', 'print(arg[0], arg[1], arg[2], select("#", ...))')
    local out, code = h.herald(path .. ' one two')
    assert.are.equal(0, code)
    assert.are.equal(path .. '\tone\ttwo\t2\n', out)
  end)

  it('reports a failing script with file and line and exits non-zero', function()
    local dir = h.tmpdir()
    local path = h.write(dir .. '/boom.lua', 'local x = 1\nerror("boom")\n')
    local out, code, err = h.herald(path)
    assert.are_not.equal(0, code)
    assert.matches('boom.lua:2: boom', err, 1, true)
  end)

  it('lets a script sleep on the loop', function()
    local out, code = h.herald([[-e 'local t0 = herald.monotonic_ms(); herald.sleep(30); print(herald.monotonic_ms() - t0 >= 30)']])
    assert.are.equal(0, code)
    assert.are.equal('true\n', out)
  end)

  -- herald.now_ms() is "now" for scripts: an event stamped with it must land today, not at
  -- the loop's monotonic count since boot (1970), and follow the manual clock as the
  -- scheduler does.
  it('gives herald.now_ms() as milliseconds since the epoch: an event stamped with it is stored now', function()
    local dir = h.tmpdir()
    local before = (os.time() - 1) * 1000
    local out, code, err = h.herald([[--db t.db -e '
      assert(herald.endpoints.put { Id = "e1", ChannelType = "EMAIL", Address = "ann@example.com" })
      local now = herald.now_ms()
      assert(herald.events.put("e1", { EventId = "v1", EventType = "visit", Timestamp = herald.time.format(now) }))
      print(now, herald.events.for_endpoint("e1")[1].Timestamp)']], { cwd = dir })
    local after = (os.time() + 1) * 1000
    assert.are.equal(0, code, err)
    local now, stamp = out:match('^(%d+)\t(%S+)\n$')
    now = tonumber(now)
    assert.is_true(now ~= nil and now >= before and now <= after,
      string.format('herald.now_ms() %s is not between %d and %d', out, before, after))
    assert.are.equal(now, herald.time.parse(stamp))
  end)

  it('gives herald.now_ms() from the manual clock, in scripts and in campaign files under --clock-start', function()
    local dir = h.tmpdir()
    local out, code, err = h.herald([[-e '
      require("herald.core.clock").set_manual(1800000000000)
      print(herald.now_ms())']])
    assert.are.equal(0, code, err)
    assert.are.equal('1800000000000\n', out)
    h.write(dir .. '/stamp.lua', [[
assert(herald.endpoints.put { Id = 'e1', ChannelType = 'EMAIL', Address = 'ann@example.com' })
assert(herald.events.put('e1', { EventId = 'v1', EventType = 'visit', Timestamp = herald.time.format(herald.now_ms()) }))
]])
    out, code, err = h.herald('--db t.db run --clock-start 2027-05-01T00:00:00Z stamp.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    out, code, err = h.herald([[--db t.db -e 'print(herald.events.for_endpoint("e1")[1].Timestamp)']],
      { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal('2027-05-01T00:00:00.000Z\n', out)
  end)

  it('refuses an unknown option with the usage', function()
    local _, code, err = h.herald('--frobnicate')
    assert.are.equal(2, code)
    assert.matches('unknown option %-%-frobnicate', err)
  end)

  it('answers --help for every command', function()
    local cli = require 'herald.cli'
    for _, name in ipairs(cli.order) do
      local out, code = h.herald(name .. ' --help')
      assert.are.equal(0, code, name)
      assert.matches('usage: herald ' .. name, out, 1, true)
      -- wrapped for a terminal: no line of the text runs past 100 columns
      local n = 0
      for line in (out .. '\n'):gmatch('(.-)\n') do
        n = n + 1
        local width = utf8.len(line) or #line
        assert(width <= 100, string.format('herald %s --help, line %d is %d columns: %s', name, n, width, line))
      end
    end
    -- help describes itself too, and still refuses a command it does not know
    local out, code = h.herald('help help')
    assert.are.equal(0, code)
    assert.matches('usage: herald help COMMAND', out, 1, true)
    local _, bad, err = h.herald('help frobnicate')
    assert.are.equal(2, bad)
    assert.matches('herald help: unknown command frobnicate', err, 1, true)
  end)
end)

describe('an error raised before the main task first waits', function()
  -- the task runs at once when spawned: its failure was reported as an unobserved task's too
  local function once(err, msg, tracebacks)
    assert.are.equal(1, h.count(err, msg), err)
    assert.are.equal(tracebacks or 1, h.count(err, 'stack traceback:'), err)
    assert.is_nil(err:find('task failed', 1, true), err)
  end

  it('is printed once for a script', function()
    local dir = h.tmpdir()
    local path = h.write(dir .. '/b.lua', 'error("boom")\n')
    local _, code, err = h.herald(path)
    assert.are.equal(1, code)
    once(err, 'b.lua:1: boom')
  end)

  it('is printed once for -e', function()
    local _, code, err = h.herald([[-e 'error("boom")']])
    assert.are.equal(1, code)
    once(err, '(command line):1: boom')
  end)

  it('is printed once for herald send', function()
    local dir = h.tmpdir()
    h.write(dir .. '/r.json', '{"TraceId": 5}')
    local _, code, err = h.herald('--db s.db send --request r.json --to a@example.com --channel EMAIL --body hi',
      { cwd = dir })
    assert.are_not.equal(0, code)
    -- a request refused by the command's own code: no frame of the user's, so no traceback
    once(err, 'herald.send: TraceId: expected a string', 0)
  end)
end)

describe('a task a script spawns and nobody waits for', function()
  it('makes the script exit 1 when it fails, after the script went on to its end', function()
    local dir = h.tmpdir()
    local path = h.write(dir .. '/bg.lua', [[
herald.spawn(function() herald.sleep(10); error('background boom') end)
herald.sleep(50)
print('main done')
]])
    local out, code, err = h.herald(path)
    assert.are.equal(1, code, err)
    assert.matches('main done', out, 1, true)
    assert.are.equal(1, h.count(err, 'herald: task failed: ' .. path .. ':1: background boom'), err)
    assert.matches('herald: 1 background task failed (above)', err, 1, true)
    -- one that ends well leaves the exit code alone
    local ok_path = h.write(dir .. '/fine.lua', "herald.spawn(function() herald.sleep(10) end)\nherald.sleep(50)\n")
    local _, code2, err2 = h.herald(ok_path)
    assert.are.equal(0, code2, err2)
    local _, code3, err3 = h.herald([[-e 'herald.spawn(function() error("x") end); herald.sleep(20)']])
    assert.are.equal(1, code3, err3)
  end)
end)

describe('herald campaign', function()
  local DEFS = [[
local all = herald.segment{ name = 'all' }
for _, name in ipairs{ 'dd', 'vipc' } do
  herald.campaign{ name = name, segment = all, deliver = { file = 'out.txt' }, message = { body = 'hi' },
    schedule = { start = '2099-05-03T09:00:00Z' } }
end
]]

  it('refuses an unknown option or an extra argument with the usage and exit 2, and changes nothing', function()
    local dir = h.tmpdir()
    h.write(dir .. '/d.lua', DEFS)
    local out, code, err = h.herald('--db c.db campaign load d.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local before = h.herald('--db c.db campaign list', { cwd = dir })
    assert.matches('dd%s+SCHEDULED', before)
    local cases = {
      { 'delete dd --dry-run', 'unknown option --dry-run' },
      { 'delete dd vipc', 'unexpected argument vipc' },
      { 'delete -f dd', 'unknown option -f' },
      { 'pause dd vipc', 'unexpected argument vipc' },
      { 'pause dd --now', 'unknown option --now' },
      { 'resume dd vipc', 'unexpected argument vipc' },
      { 'show dd vipc', 'unexpected argument vipc' },
      { 'status dd --json', 'unknown option --json' },
      { 'activities dd vipc', 'unexpected argument vipc' },
      { 'copy dd dd2 dd3', 'unexpected argument dd3' },
      { 'copy dd --force dd2', 'unknown option --force' },
      { 'copy dd', 'needs NAME and NEW_NAME' },
      { 'delete', 'needs NAME' },
      { 'list dd', 'unexpected argument dd' },
      { 'load --dry-run d.lua', 'unknown option --dry-run' },
    }
    for _, case in ipairs(cases) do
      out, code, err = h.herald('--db c.db campaign ' .. case[1], { cwd = dir })
      assert.are.equal(2, code, case[1])
      assert.are.equal('', out, case[1])
      assert.matches(case[2], err, 1, true)
      assert.matches('usage: herald campaign ACTION', err, 1, true)
    end
    assert.are.equal(before, (h.herald('--db c.db campaign list', { cwd = dir })))
    -- the same actions well formed still work
    out, code, err = h.herald('--db c.db campaign delete dd', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal('campaign dd: deleted\n', out)
  end)
end)
