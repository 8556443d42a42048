-- The sandbox for campaign code, driven through herald.sandbox in the real binary.
local h = require 'helpers'
local sandbox = require 'herald.sandbox'

local MiB = 1024 * 1024

-- Runs code in sb and returns the error message, failing the test if the run succeeded.
local function failure(sb, code, name, ...)
  local res = table.pack(sb:run(code, name, ...))
  assert.is_false(res[1], 'expected the run to fail, it returned ' .. tostring(res[2]))
  assert.is_string(res[2])
  return res[2]
end

describe('herald.sandbox', function()
  local sb
  before_each(function()
    sb = assert(sandbox.new { memory = 8 * MiB, budget = 10 ^ 6 })
  end)
  after_each(function()
    sb:close()
  end)

  it('runs code and copies results back, tables included', function()
    local ok, n, s, t, b, none = sb:run("local t = {1, 2, k = {deep = 'x'}}; t.self = t; return 42, 's', t, true, nil")
    assert.is_true(ok)
    assert.are.equal(42, n)
    assert.are.equal('s', s)
    assert.are.same({ 1, 2 }, { t[1], t[2] })
    assert.are.equal('x', t.k.deep)
    assert.are.equal(t, t.self)
    assert.is_true(b)
    assert.is_nil(none)
  end)

  it('passes arguments in and refuses values that cannot cross', function()
    local ok, a, b = sb:run('local x, t = ...; return x * 2, t.list[2]', 'args', 21, { list = { 'a', 'b' } })
    assert.is_true(ok)
    assert.are.equal(42, a)
    assert.are.equal('b', b)
    local ok2, err = sb:run('return ...', 'args', print)
    assert.is_false(ok2)
    assert.matches('argument 1: a function value cannot enter the sandbox', err, 1, true)
    local ok3, err3 = sb:run('return function() end')
    assert.is_false(ok3)
    assert.matches('result 1: a function value cannot leave the sandbox', err3, 1, true)
  end)

  describe('errors', function()
    it('gives file:line for a syntax error in a file', function()
      local path = h.write(h.tmpdir() .. '/broken.lua', 'local a = 1\nlocal b = = 2\n')
      local ok, err = sb:run_file(path)
      assert.is_false(ok)
      assert.matches(path .. ':2: unexpected symbol near \'=\'', err, 1, true)
    end)

    it('reports an error in a nested function at its file:line with a traceback', function()
      local path = h.write(h.tmpdir() .. '/nested.lua', table.concat({
        'local function inner(x)',
        '  if x > 1 then',
        '    error("boom at " .. x)',
        '  end',
        'end',
        'local function outer() inner(2) end',
        'outer()',
      }, '\n'))
      local ok, err = sb:run_file(path)
      assert.is_false(ok)
      assert.matches(path .. ':3: boom at 2', err, 1, true)
      assert.matches('stack traceback:', err, 1, true)
      assert.matches(path .. ':6:', err, 1, true)
      assert.matches(path .. ':7:', err, 1, true)
    end)

    it('skips a #! line in a file and keeps its line numbers', function()
      local path = h.write(h.tmpdir() .. '/script.lua', '#!/usr/bin/env herald\nlocal x = 1\nerror("line " .. 3)\n')
      local ok, err = sb:run_file(path)
      assert.is_false(ok)
      assert.matches(path .. ':3: line 3', err, 1, true)
    end)

    it('names the chunk given to run', function()
      assert.matches('^campaign.lua:2: attempt to call a nil value', failure(sb, 'local f\nf()', 'campaign.lua'))
    end)

    it('reports a missing file', function()
      local ok, err = sb:run_file('/nonexistent/campaign.lua')
      assert.is_false(ok)
      assert.matches('cannot open /nonexistent/campaign.lua', err, 1, true)
    end)
  end)

  describe('instruction budget', function()
    it('stops an endless loop and the sandbox goes on', function()
      assert.matches('^loop.lua:1: instruction budget exceeded %(1000000 instructions%)',
        failure(sb, 'while true do end', 'loop.lua'))
      local ok, v = sb:run('return 1 + 1')
      assert.is_true(ok)
      assert.are.equal(2, v)
    end)

    it('cannot be swallowed by pcall, xpcall, coroutines or a replaced error', function()
      local escapes = {
        'while true do pcall(function() while true do end end) end',
        'while true do xpcall(function() while true do end end, function() while true do end end) end',
        'while true do coroutine.resume(coroutine.create(function() while true do end end)) end',
        'while true do pcall(coroutine.wrap(function() while true do end end)) end',
        'local ok = pcall(function() while true do end end); error("swallowed: " .. tostring(ok))',
        'local co = coroutine.create(function() while true do end end); coroutine.resume(co); return "finished"',
        'while true do pcall(error, setmetatable({}, {__tostring = function() while true do end end})) end',
      }
      for _, code in ipairs(escapes) do
        assert.matches('instruction budget exceeded', failure(sb, code, 'escape.lua'), 1, true)
        assert.is_true((sb:run('return true')))
      end
    end)

    it('leaves xpcall handlers working for ordinary errors, and yields inside xpcall', function()
      local ok, caught, msg = sb:run('return xpcall(function() error("x") end, function(e) return "handled: " .. e end)', 'xp.lua')
      assert.is_true(ok)
      assert.is_false(caught)
      assert.are.equal('handled: xp.lua:1: x', msg)
      local task = assert(sb:spawn('return xpcall(function() herald.sleep(5) return 7 end, print)'))
      while not task:done() do herald.sleep(5) end
      assert.are.same({ true, true, 7 }, { task:result() })
    end)

    it('never runs __close handlers of a coroutine the budget killed (hooks are off there)', function()
      local setup = [[
        local mt = {}
        local obj = setmetatable({}, mt)
        mt.__close = function() while true do end end
      ]]
      for _, code in ipairs {
        'local co = coroutine.create(function() local x <close> = obj; while true do end end)\n' ..
          'coroutine.resume(co); coroutine.close(co)',
        'pcall(coroutine.wrap(function() local x <close> = obj; while true do end end))',
      } do
        assert.matches('instruction budget exceeded', failure(sb, setup .. code), 1, true)
      end
      local task = assert(sb:spawn(setup .. 'local x <close> = obj; herald.sleep(1) while true do end'))
      while not task:done() do herald.sleep(5) end
      assert.matches('instruction budget exceeded', select(2, task:result()), 1, true)
      local ok, closed = sb:run('local log = {} do local x <close> = setmetatable({}, {__close = function() log[1] = "closed" end}) end return log[1]')
      assert.is_true(ok)
      assert.are.equal('closed', closed)
      local ok2, a, b, c = sb:run([[
        local gen = coroutine.wrap(function(x) local y = coroutine.yield(x + 1) return y * 2 end)
        local first = gen(1)
        local second = gen(10)
        local ok, err = pcall(gen)
        return first, second, err
      ]])
      assert.is_true(ok2)
      assert.are.same({ 2, 20 }, { a, b })
      assert.matches('cannot resume dead coroutine', c, 1, true)
    end)

    it('counts short coroutines and C loops over huge ranges', function()
      assert.matches('instruction budget exceeded',
        failure(sb, 'while true do coroutine.wrap(function() for i = 1, 50 do end end)() end'), 1, true)
      local t0 = os.clock()
      assert.matches('instruction budget exceeded', failure(sb, 'table.move({}, 1, 1e12, 2)'), 1, true)
      assert.matches('tables with a __len metamethod are not supported',
        failure(sb, 'table.insert(setmetatable({}, {__len = function() return 2^62 end}), 1, 0)'), 1, true)
      assert.matches('instruction budget exceeded',
        failure(sb, 'local t = {} for i = 1, 2000 do t[i] = i end while true do table.insert(t, 1, 0) table.remove(t, 1) end'),
        1, true)
      assert.is_true(os.clock() - t0 < 1)
      local ok, n = sb:run('local t = {} for i = 1, 1000 do table.insert(t, i) end table.insert(t, 1, 0) table.remove(t, 1) return #t')
      assert.is_true(ok)
      assert.are.equal(1000, n)
    end)

    it('applies a wall-clock limit as a backstop', function()
      local slow = assert(sandbox.new { budget = 10 ^ 12, time_ms = 100 })
      local ok, err = slow:run('while true do end')
      slow:close()
      assert.is_false(ok)
      assert.matches('time limit exceeded (100 ms)', err, 1, true)
    end)
  end)

  describe('memory cap', function()
    it('refuses string.rep("x", 2^40) and keeps working', function()
      assert.matches('memory limit exceeded (8 MiB)', failure(sb, 'return string.rep("x", 2^40)'), 1, true)
      assert.is_true((sb:run('return 1')))
    end)

    it('stops endless table growth, frees the garbage and runs again', function()
      local t0 = os.clock()
      local err = failure(sb, 'local t = {} while true do t[#t + 1] = ("x"):rep(64) .. #t end')
      assert.matches('memory limit exceeded (8 MiB)', err, 1, true)
      assert.is_true(os.clock() - t0 < 2)
      assert.is_true(sb:memory() < 2 * MiB, 'garbage left: ' .. sb:memory())
      local ok, v = sb:run('local t = {} for i = 1, 1000 do t[i] = i end return #t')
      assert.is_true(ok)
      assert.are.equal(1000, v)
    end)

    it('reports a memory error the script re-raised', function()
      assert.matches('memory limit exceeded (8 MiB)',
        failure(sb, 'local ok, e = pcall(function() local t = {} while true do t[#t+1] = {} end end) error(e)'),
        1, true)
    end)
  end)

  describe('bytecode', function()
    local dumped = string.dump(function() return 'from bytecode' end)

    it('is refused by run and run_file', function()
      assert.matches('bytecode is refused', failure(sb, dumped), 1, true)
      local path = h.write(h.tmpdir() .. '/compiled.luac', dumped)
      local ok, err = sb:run_file(path)
      assert.is_false(ok)
      assert.matches(path .. ': bytecode is refused', err, 1, true)
    end)

    it('is refused by load inside the sandbox, whatever the mode', function()
      local ok, f, err = sb:run('return load(...)', 'l', dumped)
      assert.is_true(ok)
      assert.is_nil(f)
      assert.matches('bytecode is refused', err, 1, true)
      local ok2, f2, err2 = sb:run('return load(..., "x", "b")', 'l', dumped)
      assert.is_true(ok2)
      assert.is_nil(f2)
      assert.matches('bytecode is refused', err2, 1, true)
      local ok3, f3, err3 = sb:run([[
        local parts = {...}
        local i = 0
        return load(function() i = i + 1; return parts[i] end)
      ]], 'l', dumped:sub(1, 4), dumped:sub(5))
      assert.is_true(ok3)
      assert.is_nil(f3)
      assert.matches('bytecode is refused', err3, 1, true)
    end)

    it('load of text gets the caller\'s environment by default', function()
      local ok, v = sb:run('y = 5; return load("return y * 2")()')
      assert.is_true(ok)
      assert.are.equal(10, v)
      local ok2, v2 = sb:run('return load("return z", "c", "t", {z = 7})()')
      assert.is_true(ok2)
      assert.are.equal(7, v2)
    end)
  end)

  describe('environment', function()
    it('refuses what campaign code may not touch, naming it', function()
      local denied = {
        io = 'io is not available', ['io.open'] = 'io is not available',
        ['os.execute'] = 'os.execute is not available', ['os.exit'] = 'os.exit is not available',
        ['os.remove'] = 'os.remove is not available', debug = 'debug is not available',
        collectgarbage = 'collectgarbage is not available', ['string.dump'] = 'string.dump is not available',
        package = 'package is not available', dofile = 'dofile is not available',
        loadfile = 'loadfile is not available',
      }
      for expr, message in pairs(denied) do
        local err = failure(sb, 'return ' .. expr, 'deny.lua')
        assert.matches('^deny.lua:1: ' .. message:gsub('%.', '%%.'), err)
      end
    end)

    it('gives the allow-listed libraries', function()
      local ok, a, b, c, d, e = sb:run([[
        return math.max(1, 3), table.concat({'a', 'b'}, ','), utf8.char(72), type(os.time()), select('#', 1, 2)
      ]])
      assert.is_true(ok)
      assert.are.same({ 3, 'a,b', 'H', 'number', 2 }, { a, b, c, d, e })
    end)

    it('raises on reading an undefined global; assignment makes a global of that chunk only', function()
      assert.matches("^g.lua:1: undefined global 'nope'", failure(sb, 'return nope', 'g.lua'))
      local ok, v = sb:run('counter = 41; counter = counter + 1; return counter, _G.counter')
      assert.is_true(ok)
      assert.are.equal(42, v)
      assert.matches("undefined global 'counter'", failure(sb, 'return counter'), 1, true)
    end)

    it('keeps one script from poisoning string methods or libraries for another', function()
      assert.is_true((sb:run([[
        string.upper = function() return 'pwned' end
        string.find = nil
        math.floor = function() return 0 end
        string = {}
      ]])))
      local ok, a, b, c, d = sb:run("return ('a'):upper(), string.upper('b'), ('abc'):find('b'), math.floor(2.5)")
      assert.is_true(ok)
      assert.are.same({ 'A', 'B', 2, 2 }, { a, b, c, d })
    end)

    it('hides the string metatable', function()
      local ok, mt = sb:run('return getmetatable("")')
      assert.is_true(ok)
      assert.are.equal('protected', mt)
      assert.matches('attempt to index', failure(sb, 'getmetatable("").__index.upper = nil'), 1, true)
      assert.matches('cannot change a protected metatable',
        failure(sb, 'setmetatable(_G, nil)'), 1, true)
    end)

    it('keeps herald read-only and require limited to campaign modules', function()
      local ok, version = sb:run('return herald.version, require("herald").version')
      assert.is_true(ok)
      assert.are.equal(herald.version, version)
      assert.matches('herald is read-only', failure(sb, 'herald.sleep = nil'), 1, true)
      assert.matches("module 'herald.cli' is not available", failure(sb, 'require "herald.cli"'), 1, true)
      assert.matches("module 'io' is not available", failure(sb, 'require "io"'), 1, true)
      assert.matches("module 'herald.core.sandbox' is not available",
        failure(sb, 'require "herald.core.sandbox"'), 1, true)
    end)

    it('refuses __gc metamethods, which would run without the budget', function()
      assert.matches('__gc metamethods are not available',
        failure(sb, 'setmetatable({}, {__gc = function() while true do end end})'), 1, true)
    end)
  end)

  describe('pattern matching', function()
    it('refuses a backtracking bomb at once, as method and as library function', function()
      for _, code in ipairs {
        'return ("a"):rep(300):find(".-.-.-b")',
        'return string.match(("a"):rep(300), ".-.-.-b")',
        'for m in ("a"):rep(300):gmatch(".-.-.-b") do end',
        'return (("a"):rep(300):gsub(".-.-.-b", ""))',
      } do
        local t0 = os.clock()
        local err = failure(sb, code, 'bomb.lua')
        assert.is_true(os.clock() - t0 < 0.2)
        assert.matches('^bomb.lua:%d: string%.%a+: pattern too costly for campaign code', err)
      end
    end)

    it('keeps ordinary patterns working', function()
      local template = ('Dear {{name}}, your order {{order}} ships on {{date}}.\n'):rep(60)
      assert.is_true(#template > 3000)
      local ok, y, m, d, rendered, count, fields = sb:run([[
        local template = ...
        local y, m, d = ("2026-11-29"):match("(%d+)-(%d+)-(%d+)")
        local vars = {name = "Ada", order = "A-17", date = "Monday"}
        local rendered, count = template:gsub("{{(%w+)}}", vars)
        local fields = {}
        for f in ("a,b,,c"):gmatch("([^,]*)") do fields[#fields + 1] = f end
        assert(string.find("x.y", ".", 1, true) == 2)
        assert(("  trim me  "):match("^%s*(.-)%s*$") == "trim me")
        return y, m, d, rendered, count, fields
      ]], 'patterns.lua', template)
      assert.is_true(ok, y)
      assert.are.same({ '2026', '11', '29' }, { y, m, d })
      assert.are.equal(180, count)
      assert.matches('^Dear Ada, your order A%-17 ships on Monday%.\n', rendered)
      assert.are.same({ 'a', 'b', '', 'c' }, fields)
    end)
    it('gives the same results as stock Lua for the patterns it admits', function()
      -- Random patterns (malformed ones included) over random subjects, compared with the
      -- host's unwrapped string library; the error location prefix differs, the rest may not.
      local tokens = { 'a', 'b', '.', '%a', '%d', '[ab]', '[^a]', '(', ')', '%b()', '%f[%a]', '%1',
        '$', '^', '-', '*', '+', '?', '[', '%', ',', '.-', 'a*' }
      local alphabet = { 'a', 'b', '(', ')', '1', ',', ' ' }
      local code = [[
        local fn, s, p = ...
        local r = table.pack(pcall(string[fn], s, p, fn == 'gsub' and '<%0>' or nil))
        if fn == 'gmatch' and r[1] then
          local out = {}
          for a, b in r[2] do out[#out + 1] = tostring(a) .. '|' .. tostring(b) end
          return true, table.concat(out, ';')
        end
        return table.unpack(r, 1, r.n)
      ]]
      local stock = load(code)
      local strip = function(v) return type(v) == 'string' and v:gsub('^[^:]*:%d+: ', '') or v end
      local seed = 1
      local function rnd(n)  -- a fixed sequence, independent of math.random's state
        seed = (seed * 1103515245 + 12345) % 2147483648
        return seed % n + 1
      end
      for _ = 1, 400 do
        local p, subject = {}, {}
        for _ = 1, rnd(6) do p[#p + 1] = tokens[rnd(#tokens)] end
        for _ = 1, rnd(40) - 1 do subject[#subject + 1] = alphabet[rnd(#alphabet)] end
        local fn = ({ 'find', 'match', 'gmatch', 'gsub' })[rnd(4)]
        p, subject = table.concat(p), table.concat(subject)
        local got = table.pack(sb:run(code, 'fuzz', fn, subject, p))
        assert.is_true(got[1], got[2])
        local want = table.pack(stock(fn, subject, p))
        local expected, actual = { fn, subject, p }, { fn, subject, p }
        for k = 1, math.max(want.n, got.n - 1) do
          expected[k + 3], actual[k + 3] = strip(want[k]), strip(got[k + 1])
        end
        assert.are.same(expected, actual)
      end
    end)
  end)

  describe('tasks', function()
    it('lets campaign code herald.sleep as a task of the sandbox', function()
      local task = assert(sb:spawn([[
        local t0 = herald.monotonic_ms()
        herald.sleep(30)
        return herald.monotonic_ms() - t0, 'woke'
      ]], 'sleepy.lua'))
      assert.is_false(task:done())
      assert.are.same({ nil, 'the task is still running' }, { task:result() })
      local deadline = herald.monotonic_ms() + 2000
      while not task:done() and herald.monotonic_ms() < deadline do herald.sleep(10) end
      local ok, waited, word = task:result()
      assert.is_true(ok)
      assert.is_true(waited >= 30)
      assert.are.equal('woke', word)
    end)

    it('gives each resume a budget and reports a task that exceeds it', function()
      local task = assert(sb:spawn('herald.sleep(5) while true do end', 'spin.lua'))
      while not task:done() do herald.sleep(5) end
      local ok, err = task:result()
      assert.is_false(ok)
      assert.matches('spin.lua:1: instruction budget exceeded', err, 1, true)
    end)

    it('does not refill the budget when the script spawns tasks', function()
      -- In a child process: the tasks the spent budget kills report themselves on stderr.
      local out, code, err = h.herald([[-e 'local sb = herald.sandbox.new{budget = 10^6}
        print(sb:run("while true do herald.spawn(function() end) end", "spawner.lua"))']])
      assert.are.equal(0, code, err)
      assert.matches('^false\tspawner.lua:1: instruction budget exceeded', out)
    end)

    it('cancels pending sleeps when the sandbox closes', function()
      local other = assert(sandbox.new {})
      local task = assert(other:spawn('herald.sleep(20) return 1'))
      other:close()
      herald.sleep(40)  -- the timer must not resume a task of the closed state
      assert.has_error(function() task:done() end, "the task's sandbox is closed")
    end)
  end)

  describe('lifecycle and options', function()
    it('closes twice, by __close and by __gc safely', function()
      do
        local scoped <close> = assert(sandbox.new {})
        assert.is_true((scoped:run('return 1')))
        scoped:close()
      end
      local s = assert(sandbox.new {})
      s:close()
      s:close()
      assert.has_error(function() s:run('return 1') end, 'the sandbox is closed')
      sandbox.new {}
      collectgarbage()
    end)

    it('reports memory in use', function()
      local before = sb:memory()
      assert.is_true(before > 0)
      local task = assert(sb:spawn('local big = ("x"):rep(2^20) herald.sleep(10) return #big'))
      assert.is_true(sb:memory() >= before + 2 ^ 20)
      while not task:done() do herald.sleep(5) end
      assert.are.same({ true, 2 ^ 20 }, { task:result() })
    end)

    it('runs a chunk in a fresh sandbox with herald.sandbox.run', function()
      local ok, v = sandbox.run('return 6 * 7')
      assert.is_true(ok)
      assert.are.equal(42, v)
      local ok2, err = sandbox.run('while true do end', { budget = 10000, chunkname = 'once.lua' })
      assert.is_false(ok2)
      assert.matches('once.lua:1: instruction budget exceeded (10000 instructions)', err, 1, true)
    end)

    it('checks its options', function()
      assert.has_error(function() sandbox.new { memory = -1 } end,
        "herald.sandbox: option 'memory' must be a positive whole number of bytes, got -1")
      assert.has_error(function() sandbox.new { budjet = 1 } end,
        "herald.sandbox.new: unknown option 'budjet' (memory, budget, time_ms)")
      local s, err = sandbox.new { memory = 1024 }
      assert.is_nil(s)
      assert.matches('memory limit', err, 1, true)
    end)
  end)
end)
