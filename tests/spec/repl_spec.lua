-- `herald repl`, driven through the real binary: piped stdin for the evaluation rules, and a
-- real terminal (tmux) for the prompt, line editing and history.
local h = require 'helpers'
local core = require 'herald.core'

local function repl(input, env)
  return h.herald('repl', { stdin = input, env = env })
end

describe('herald repl with piped input', function()
  it('prints the value of a return statement and nothing else', function()
    local out, code, err = repl('return 1+1\n')
    assert.are.equal('2\n', out)
    assert.are.equal('', err)
    assert.are.equal(0, code)
  end)

  it('prints the value of a bare expression', function()
    local out, code = repl('1+1\n')
    assert.are.equal('2\n', out)
    assert.are.equal(0, code)
  end)

  it('reads a last line that has no newline', function()
    local out, code = repl('return 40 + 2')
    assert.are.equal('42\n', out)
    assert.are.equal(0, code)
  end)

  it('prints nothing for a statement and keeps globals between inputs', function()
    local out, code = repl('x = 5\nx * 2\n')
    assert.are.equal('10\n', out)
    assert.are.equal(0, code)
  end)

  it('continues an unfinished function definition over several lines', function()
    local out, code, err = repl('function double(x)\n  local y = x * 2\n  return y\nend\ndouble(21)\n')
    assert.are.equal('42\n', out)
    assert.are.equal('', err)
    assert.are.equal(0, code)
  end)

  it('continues loops and table constructors over several lines', function()
    local input = 's = 0\nfor i = 1, 3 do\n  s = s + i\nend\nprint(s)\n{\n  1,\n  2,\n}\n'
    local out, code, err = repl(input)
    assert.are.equal('6\n{1, 2}\n', out)
    assert.are.equal('', err)
    assert.are.equal(0, code)
  end)

  it('pretty-prints a table with sorted keys', function()
    local out = repl('return {tags = {"a", "b"}, name = "ann", [2] = false, score = 1.5}\n')
    assert.are.equal('{[2] = false, name = "ann", score = 1.5, tags = {"a", "b"}}\n', out)
  end)

  it('lays a wide nested table out over indented lines', function()
    local out = repl('return {endpoint = {address = "someone@example.com", channel = "EMAIL"},'
      .. ' attributes = {interests = {"music", "travel", "food"}}, id = "e-1"}\n')
    assert.are.equal(table.concat({
      '{',
      '  attributes = {interests = {"music", "travel", "food"}},',
      '  endpoint = {address = "someone@example.com", channel = "EMAIL"},',
      '  id = "e-1",',
      '}',
    }, '\n') .. '\n', out)
  end)

  it('shows a table that contains itself with a cycle marker', function()
    local out, code = repl('t = {name = "loop"}\nt.self = t\nt.list = {t}\nt\n')
    assert.are.equal('{list = {<cycle: root>}, name = "loop", self = <cycle: root>}\n', out)
    assert.are.equal(0, code)
  end)

  it('prints every returned value, tab-separated', function()
    local out = repl('return 1, "two", nil, {3}, 4.0\n')
    assert.are.equal('1\ttwo\tnil\t{3}\t4.0\n', out)
  end)

  it('prints an error with its message, goes on with the next line, and exits 1', function()
    local out, code, err = repl('error("boom")\nnil + 1\nreturn "after"\n')
    assert.are.equal('after\n', out)
    assert.matches('stdin:1: boom', err, 1, true)
    assert.matches('stack traceback:', err, 1, true)
    assert.matches('attempt to perform arithmetic on a nil value', err, 1, true)
    assert.are.equal(1, code)
  end)

  it('exits 1 when an early input failed and the later ones ran', function()
    local out, code, err = repl('error("x")\nprint("after")\nreturn 1\n')
    assert.are.equal('after\n1\n', out)
    assert.matches('stdin:1: x', err, 1, true)
    assert.are.equal(1, code)
  end)

  it('shows an error value that is a table', function()
    local _, _, err = repl('error({code = 7})\n')
    assert.matches('(error object) {code = 7}', err, 1, true)
  end)

  it('reports a syntax error with its line, goes on, and exits 1', function()
    local out, code, err = repl('return = 1\nreturn "next"\n')
    assert.are.equal('next\n', out)
    assert.matches("stdin:1: unexpected symbol near '='", err, 1, true)
    assert.are.equal(1, code)
  end)

  it('reports an input left unfinished at the end and exits 1', function()
    local out, code, err = repl('function f()\n  return 1\n')
    assert.are.equal('', out)
    assert.matches("'end' expected", err, 1, true)
    assert.are.equal(1, code)
  end)

  it('exits 0 at end of input without output', function()
    local out, code, err = repl('')
    assert.are.equal('', out)
    assert.are.equal('', err)
    assert.are.equal(0, code)
  end)

  it('has the herald global loaded', function()
    local out = repl('return type(herald), herald.version\n')
    assert.are.equal('table\t' .. core.version() .. '\n', out)
  end)

  it('lets an input sleep on the loop', function()
    local out, code, err = repl('local t0 = herald.monotonic_ms()\n'
      .. 'herald.sleep(100)\nreturn "slept"\n'
      .. 'do local t0 = herald.monotonic_ms(); herald.sleep(100); return herald.monotonic_ms() - t0 >= 100 end\n')
    assert.are.equal('slept\ntrue\n', out)
    assert.are.equal('', err)
    assert.are.equal(0, code)
  end)

  it('advances background tasks while a later input waits', function()
    local out, code = repl('done = false\n'
      .. 'background = herald.spawn(function() herald.sleep(20); done = true end)\n'
      .. 'return done\nherald.sleep(200)\nreturn done\n')
    assert.are.equal('false\ntrue\n', out)
    assert.are.equal(0, code)
  end)

  it('refuses arguments', function()
    local _, code, err = h.herald('repl extra')
    assert.are.equal(2, code)
    assert.matches('unexpected argument extra', err, 1, true)
  end)
end)

-- A detached tmux session gives the REPL a real terminal: keys go in with send-keys and the
-- screen comes back with capture-pane.
local function have_tmux()
  return os.execute('command -v tmux >/dev/null 2>&1') == true
end

local Term = {}
Term.__index = Term

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true
end

function Term.start(env)
  local dir = h.tmpdir()
  local self = setmetatable({ socket = dir .. '/tmux.sock' }, Term)
  -- The shell writes the exit status on the screen once the REPL is gone (remain-on-exit
  -- keeps the pane to read it). It shares the REPL's process group, so it traps Ctrl-C
  -- rather than dying of it; a trapped signal is back to its default in the REPL.
  local cmd = 'trap : INT; env'
  for k, v in pairs(env or {}) do cmd = cmd .. ' ' .. k .. '=' .. h.shell_quote(v) end
  cmd = cmd .. ' ' .. h.shell_quote(h.exe) .. ' repl; echo "[exit status $?]"'
  assert(sh(self:tmux('-f /dev/null new-session -d -s repl -x 100 -y 40 ' .. h.shell_quote(cmd))
    .. ' \\; set-option -t repl remain-on-exit on'), 'tmux could not start a session')
  return self
end

function Term:tmux(args)
  return 'tmux -S ' .. h.shell_quote(self.socket) .. ' ' .. args
end

function Term:type(text)
  assert(sh(self:tmux('send-keys -t repl -l ' .. h.shell_quote(text))))
end

function Term:keys(...)
  assert(sh(self:tmux('send-keys -t repl ' .. table.concat({ ... }, ' '))))
end

function Term:query(args)
  local p = io.popen(self:tmux(args) .. ' 2>/dev/null')
  local s = p:read('a')
  p:close()
  return s
end

-- The screen with wrapped lines joined and trailing blanks removed.
function Term:screen()
  return (self:query('capture-pane -p -J -t repl'):gsub('[ \t]+\n', '\n'))
end

-- Polls until pred(screen) is true; fails with the screen after 20 s (the sanitizer build
-- starts slowly on a busy machine).
function Term:wait_for(what, pred)
  local screen
  for _ = 1, 400 do
    screen = self:screen()
    if pred(screen) then return screen end
    os.execute('sleep 0.05')
  end
  error('timed out waiting for ' .. what .. '; the screen shows:\n' .. screen, 2)
end

-- Waits for the REPL to exit and returns its exit status.
function Term:wait_exit()
  local screen = self:wait_for('the exit', function(s) return s:find('%[exit status %d+%]') end)
  return tonumber(screen:match('%[exit status (%d+)%]'))
end

function Term:close()
  sh(self:tmux('kill-server') .. ' >/dev/null 2>&1')
end

local function count_lines(screen, text)
  local n = 0
  for line in screen:gmatch('[^\n]*') do
    if line == text then n = n + 1 end
  end
  return n
end

local function prompted(screen)
  return screen:match('\n> *\n') ~= nil or screen:match('\n> *$') ~= nil
end

describe('herald repl on a terminal', function()
  local history

  before_each(function()
    history = h.tmpdir() .. '/history'
  end)

  it('shows a banner and a prompt, evaluates, recalls history with Up, and exits 0 on Ctrl-D', function()
    if not have_tmux() then
      pending('tmux is not installed')
      return
    end
    local term = Term.start({ HERALD_HISTORY = history })
    finally(function() term:close() end)
    local screen = term:wait_for('the prompt', prompted)
    assert.matches('^herald ' .. core.version():gsub('%.', '%%.') .. ' %(Lua 5%.4%)', screen)
    assert.matches('Ctrl%-D', screen)

    term:type('return 6 * 7')
    term:keys('Enter')
    term:wait_for('the first 42', function(s) return count_lines(s, '42') == 1 end)

    term:keys('Up')
    term:wait_for('the recalled line', function(s) return count_lines(s, '> return 6 * 7') == 2 end)
    term:keys('Enter')
    term:wait_for('the second 42', function(s) return count_lines(s, '42') == 2 end)

    term:type('function f(x)')
    term:keys('Enter')
    term:wait_for('the continuation prompt', function(s) return s:find('\n>> *\n') ~= nil end)
    term:type('return {x = x}')
    term:keys('Enter')
    term:type('end')
    term:keys('Enter')
    term:type('f(1)')
    term:keys('Enter')
    term:wait_for('the table', function(s) return count_lines(s, '{x = 1}') == 1 end)

    term:keys('C-d')
    assert.are.equal(0, term:wait_exit())
  end)

  it('drops the line being typed on Ctrl-C and stops a running input', function()
    if not have_tmux() then
      pending('tmux is not installed')
      return
    end
    local term = Term.start({ HERALD_HISTORY = '' })
    finally(function() term:close() end)
    term:wait_for('the prompt', prompted)

    term:type('return "dropped" ..')
    term:wait_for('the typed line', function(s) return s:find('> return "dropped" ..', 1, true) end)
    term:keys('C-c')
    term:wait_for('the dropped line', function(s) return s:find('> return "dropped" ..^C', 1, true) end)

    term:type('function f()')
    term:keys('Enter')
    term:wait_for('the continuation prompt', function(s) return s:find('\n>> *\n') ~= nil end)
    term:keys('C-c')
    term:type('return "kept"')
    term:keys('Enter')
    term:wait_for('the next input', function(s) return count_lines(s, 'kept') == 1 end)

    term:type('io.write("spinning\\n") io.flush() while true do end')
    term:keys('Enter')
    term:wait_for('the loop', function(s) return count_lines(s, 'spinning') == 1 end)
    term:keys('C-c')
    local screen = term:wait_for('the interruption', function(s) return s:find('interrupted', 1, true) end)
    assert.matches('stdin:1: in main chunk', screen, 1, true)
    term:type('return "after"')
    term:keys('Enter')
    term:wait_for('the next input', function(s) return count_lines(s, 'after') == 1 end)

    term:keys('C-d')
    assert.are.equal(0, term:wait_exit())
    assert.is_nil(term:screen():find('dropped"$'), 'the dropped line ran')
  end)

  it('sleeps the full time after a prompt sat idle, and Ctrl-C stops a runaway query', function()
    if not have_tmux() then
      pending('tmux is not installed')
      return
    end
    local term = Term.start({ HERALD_HISTORY = '', HERALD_DB = h.tmpdir() .. '/q.db' })
    finally(function() term:close() end)
    term:wait_for('the prompt', prompted)
    os.execute('sleep 3')
    term:type('local c = os.time() herald.sleep(2500) return "slept", os.time() - c >= 2')
    term:keys('Enter')
    term:wait_for('the sleep', function(s) return s:find('\nslept%s+%a') end)
    assert.matches('\nslept%s+true', term:screen())

    term:type('io.write("querying\\n") io.flush() return herald.db.query("WITH RECURSIVE c(x) AS '
      .. '(SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c")')
    term:keys('Enter')
    term:wait_for('the query', function(s) return count_lines(s, 'querying') == 1 end)
    term:keys('C-c')
    term:wait_for('the interruption', function(s) return s:find('interrupted', 1, true) end)
    term:type('return "after"')
    term:keys('Enter')
    term:wait_for('the next input', function(s) return count_lines(s, 'after') == 1 end)
    term:keys('C-d')
    assert.are.equal(0, term:wait_exit())
  end)

  it('completes global names and fields with Tab', function()
    if not have_tmux() then
      pending('tmux is not installed')
      return
    end
    local term = Term.start({ HERALD_HISTORY = '' })
    finally(function() term:close() end)
    term:wait_for('the prompt', prompted)
    term:type('string.up')
    term:keys('Tab')
    term:wait_for('the completed name', function(s) return s:find('> string.upper', 1, true) end)
    term:type('("abc")')
    term:keys('Enter')
    term:wait_for('the result', function(s) return count_lines(s, 'ABC') == 1 end)

    term:type('name = "x"')
    term:keys('Enter')
    term:type('return name:le')
    term:keys('Tab')
    term:wait_for('the completed method', function(s) return s:find('return name:len', 1, true) end)
    term:type('()')
    term:keys('Enter')
    term:wait_for('the method result', function(s) return count_lines(s, '1') == 1 end)
  end)

  it('keeps history in $HERALD_HISTORY across sessions', function()
    if not have_tmux() then
      pending('tmux is not installed')
      return
    end
    local first = Term.start({ HERALD_HISTORY = history })
    finally(function() first:close() end)
    first:wait_for('the prompt', prompted)
    first:type('return "from the first session"')
    first:keys('Enter')
    first:wait_for('the result', function(s) return count_lines(s, 'from the first session') == 1 end)
    first:keys('C-d')
    assert.are.equal(0, first:wait_exit())
    first:close()

    local saved = h.read(history)
    assert.is_not_nil(saved, 'no history file was written')
    assert.matches('from', saved, 1, true)
    local p = io.popen('stat -c %a ' .. h.shell_quote(history))
    assert.are.equal('600', p:read('l'))
    p:close()

    local second = Term.start({ HERALD_HISTORY = history })
    finally(function() second:close() end)
    second:wait_for('the prompt', prompted)
    second:keys('Up')
    second:keys('Enter')
    second:wait_for('the recalled result', function(s)
      return count_lines(s, 'from the first session') == 1
        and count_lines(s, '> return "from the first session"') == 1
    end)
  end)
end)

describe('herald repl history file', function()
  it('keeps only the newest 1000 entries', function()
    if not have_tmux() then
      pending('tmux is not installed')
      return
    end
    local history = h.tmpdir() .. '/history'
    local lines = { '_HiStOrY_V2_' }
    for i = 1, 1200 do lines[#lines + 1] = 'old' .. i end
    h.write(history, table.concat(lines, '\n') .. '\n')
    local term = Term.start({ HERALD_HISTORY = history })
    finally(function() term:close() end)
    term:wait_for('the prompt', prompted)
    term:keys('Up')
    term:wait_for('the newest old entry', function(s) return s:find('> old1200', 1, true) end)
    term:keys('C-u')
    term:type('return "newest"')
    term:keys('Enter')
    term:wait_for('the result', function(s) return count_lines(s, 'newest') == 1 end)
    term:keys('C-d')
    assert.are.equal(0, term:wait_exit())
    local saved = {}
    for line in h.read(history):gmatch('[^\n]+') do saved[#saved + 1] = line end
    assert.are.equal(1001, #saved)
    assert.are.equal('_HiStOrY_V2_', saved[1])
    assert.are.equal('old202', saved[2])
    assert.matches('newest', saved[1001], 1, true)
  end)

  it('says so when the history cannot be read, and the REPL still works', function()
    if not have_tmux() then
      pending('tmux is not installed')
      return
    end
    local dir = h.tmpdir()
    local term = Term.start({ HERALD_HISTORY = dir })
    finally(function() term:close() end)
    term:wait_for('the prompt', prompted)
    local screen = term:screen()
    assert.matches('cannot read history ' .. dir, screen, 1, true)
    assert.matches('history will not be saved', screen, 1, true)
    term:type('return 2 + 2')
    term:keys('Enter')
    term:wait_for('the result', function(s) return count_lines(s, '4') == 1 end)
    term:keys('C-d')
    assert.are.equal(0, term:wait_exit())
  end)
end)

describe('herald.repl in-process', function()
  local repl = require 'herald.repl'

  it('compiles an expression, a statement, an unfinished chunk and a syntax error', function()
    assert.are.equal(3, repl.compile('1 + 2')())
    assert.is_function(repl.compile('x_from_spec = 1'))
    local fn, more, msg = repl.compile('function f()')
    assert.is_nil(fn)
    assert.is_true(more)
    assert.matches('<eof>$', msg)
    fn, more = repl.compile('{')
    assert.is_nil(fn)
    assert.is_true(more)
    fn, more, msg = repl.compile('return = 1')
    assert.is_nil(fn)
    assert.is_false(more)
    assert.matches("stdin:1: unexpected symbol near '='", msg, 1, true)
  end)

  it('completes globals, keywords, fields and methods without running user code', function()
    assert.are.same({ 'string' }, repl.complete('strin'))
    assert.are.same({ 'while' }, repl.complete('whil'))
    assert.are.same({ 'string.upper' }, repl.complete('string.up'))
    assert.are.same({ 'math.max', 'math.maxinteger' }, repl.complete('math.max'))
    _G.spec_text = 'abc'
    assert.are.same({ 'spec_text:upper' }, repl.complete('spec_text:up'))
    local called = false
    _G.spec_proxy = setmetatable({}, { __index = function() called = true end })
    assert.are.same({}, repl.complete('spec_proxy.any.thing'))
    assert.is_false(called)
    assert.are.same({}, repl.complete('no_such_global.x'))
    assert.are.same({}, repl.complete('.x'))
    _G.spec_text, _G.spec_proxy = nil, nil
  end)

  it('runs an input as a task and returns its values or its error', function()
    local r = repl.execute(function() herald_spec_task = require('herald.core.task').in_task() return 1, nil end)
    assert.are.same({ true, 1, nil, n = 3 }, r)
    assert.is_true(herald_spec_task)
    herald_spec_task = nil
    r = repl.execute(function() error('spec failure') end)
    assert.is_false(r[1])
    assert.matches('spec failure', r[2], 1, true)
    assert.is_nil(r[2]:find("in function 'xpcall'", 1, true))
  end)

  it('reads the history file from $HERALD_HISTORY, and none when it is empty', function()
    local out = h.herald([[-e 'print(require("herald.repl").history_path())']],
      { env = { HERALD_HISTORY = '/tmp/somewhere' } })
    assert.are.equal('/tmp/somewhere\n', out)
    out = h.herald([[-e 'print(require("herald.repl").history_path())']], { env = { HERALD_HISTORY = '' } })
    assert.are.equal('nil\n', out)
    local p = io.popen('env -u HERALD_HISTORY HOME=/home/spec ' .. h.shell_quote(h.exe)
      .. [[ -e 'print(require("herald.repl").history_path())' </dev/null]])
    out = p:read('a')
    p:close()
    assert.are.equal('/home/spec/.herald_history\n', out)
  end)
end)
