-- The interactive prompt behind `herald repl`.
--
-- Input follows lua.c: a line is first tried as `return <line>`, so an expression prints its
-- values, then as a statement; a chunk that ends too early (a syntax error at <eof>) continues
-- on the next line. Each input runs as a task on the loop, so waiting calls such as
-- herald.sleep work at the prompt; tasks it spawns in the background advance while later inputs
-- run. Values print tab-separated, strings as they are and everything else through
-- herald.pretty. An error prints its message and traceback on stderr and the prompt goes on.
-- Locals end with their input, as in lua.c; globals stay. On a terminal, Tab completes global
-- names and fields, and Ctrl-C drops the line being typed or stops the running input (at its
-- next Lua instruction, so a sleep in progress ends first); Ctrl-D exits.
--
-- On a terminal there is a banner, a prompt, line editing and a history kept in
-- $HERALD_HISTORY (empty: no file) or ~/.herald_history. With stdin not a terminal the REPL
-- reads plain lines and prints only results, so `echo 'return 1+1' | herald repl` prints 2;
-- it reads to the end after an error too, and then exits 1.
local core = require 'herald.core'
local task = require 'herald.core.task'
local readline = require 'herald.core.readline'
local pretty = require 'herald.pretty'

local repl = {}

repl.prompt = '> '
repl.continuation_prompt = '>> '
repl.history_limit = 1000

local function report(msg)
  io.stdout:flush()
  io.stderr:write(msg, '\n')
end

-- The history file, or nil when history is not kept.
function repl.history_path()
  local path = os.getenv('HERALD_HISTORY')
  if path ~= nil then return path ~= '' and path or nil end
  local home = os.getenv('HOME')
  if home ~= nil and home ~= '' then return home .. '/.herald_history' end
  return nil
end

-- lua.c's rule: a chunk is incomplete when its syntax error is reported at the end of input.
local function incomplete(err)
  return err:sub(-5) == '<eof>'
end

-- Compiles an input. Returns the function; or nil, true, message when more lines could
-- complete it; or nil, false, message for a syntax error.
function repl.compile(src)
  local fn, err_expr = load('return ' .. src, '=stdin', 't')
  if fn then return fn end
  local err
  fn, err = load(src, '=stdin', 't')
  if fn then return fn end
  -- `{` alone is a statement error but the start of a table expression: wait for more.
  if incomplete(err) then return nil, true, err end
  if incomplete(err_expr) then return nil, true, err_expr end
  return nil, false, err
end

local function error_text(err)
  if type(err) == 'string' then return err end
  local mt = getmetatable(err)
  if type(mt) == 'table' and rawget(mt, '__tostring') then
    local ok, s = pcall(tostring, err)
    if ok and type(s) == 'string' then return s end
  end
  return '(error object) ' .. pretty.format(err, { depth = 3 })
end

-- Message handler: the message with a traceback of the user's frames only (the REPL's own
-- frames below xpcall say nothing about the input).
local function traceback(err)
  local tb = debug.traceback(error_text(err), 2)
  local cut = tb:find("\n%s*%[C%]: in function 'xpcall'")
  if cut then tb = tb:sub(1, cut - 1) end
  return tb
end

-- Runs fn as a task and drives the loop until that task is done. Returns a table.pack of
-- true and fn's results, or of false and an error text.
-- With interruptible set, a Ctrl-C caught by readline.catch_interrupt stops the input with an
-- "interrupted" error at its next Lua instruction (a wait in progress ends first).
function repl.execute(fn, interruptible)
  local result
  local driving = false
  local handle = task.spawn_observed(function()
    if interruptible then readline.watch_interrupt() end
    result = table.pack(xpcall(fn, traceback))
    -- Stop only a loop we are driving: a stop requested while the loop is idle would make its
    -- next run return at once.
    if driving then task.stop() end
  end)
  local failure
  while not handle.done do
    driving = true
    local idle = task.run()
    driving = false
    if idle and not handle.done then
      failure = 'the input yielded without waiting for anything, so nothing will resume it'
      break
    end
  end
  if failure then return table.pack(false, failure) end
  if not handle.ok then return table.pack(false, handle.error) end
  return result
end

-- Prints the values of a repl.execute result that succeeded.
function repl.show(result)
  if result.n < 2 then return end
  local out = {}
  for i = 2, result.n do
    local v = result[i]
    if type(v) == 'string' then
      out[#out + 1] = v
    else
      local ok, s = pcall(pretty.format, v)
      out[#out + 1] = ok and s or ('<cannot print a ' .. type(v) .. ': ' .. tostring(s) .. '>')
    end
  end
  io.stdout:write(table.concat(out, '\t'), '\n')
end

local KEYWORDS = {
  'and', 'break', 'do', 'else', 'elseif', 'end', 'false', 'for', 'function', 'goto', 'if',
  'in', 'local', 'nil', 'not', 'or', 'repeat', 'return', 'then', 'true', 'until', 'while',
}

-- The table whose fields complete a value: a table itself, or the __index table of its
-- metatable (string methods for a string). Lookups are raw so completing runs no user code.
local function fields_of(v)
  local tables = {}
  if type(v) == 'table' then tables[1] = v end
  local mt = getmetatable(v)
  local index = type(mt) == 'table' and rawget(mt, '__index')
  if type(index) == 'table' then tables[#tables + 1] = index end
  return tables
end

-- Tab completion: word is what precedes the cursor back to a separator, such as `herald.sl`
-- or `s:up`. Returns the words that complete it, sorted.
function repl.complete(word)
  local path, sep, prefix = word:match('^(.-)([.:]?)([%a_][%w_]*)$')
  if path == nil then
    path, sep, prefix = word:match('^(.-)([.:])$')
    prefix = ''
  end
  if path == nil or (path == '' and sep ~= '') then return {} end
  if sep == '' then path, prefix = '', path .. prefix end
  local candidates, seen = {}, {}
  local function add(name)
    if not seen[name] and name:sub(1, #prefix) == prefix then
      seen[name] = true
      candidates[#candidates + 1] = path .. sep .. name
    end
  end
  local scope
  if path == '' then
    scope = { _G }
    for _, k in ipairs(KEYWORDS) do add(k) end
  else
    local v = _G
    for name in path:gmatch('[^.:]+') do
      local found
      for _, t in ipairs(fields_of(v)) do
        found = rawget(t, name)
        if found ~= nil then break end
      end
      if found == nil then return {} end
      v = found
    end
    scope = fields_of(v)
  end
  for _, t in ipairs(scope) do
    for k, v in next, t do
      if type(k) == 'string' and k:match('^[%a_][%w_]*$')
          and (sep ~= ':' or type(v) == 'function') then
        add(k)
      end
    end
  end
  table.sort(candidates)
  return candidates
end

local History = {}
History.__index = History

local function open_history()
  local path = repl.history_path()
  readline.history_limit(repl.history_limit)
  if path == nil then return setmetatable({}, History) end
  local ok, err = readline.load_history(path)
  if not ok then
    -- Saving over a file we could not read would lose it: keep this session's history in
    -- memory only.
    report('herald repl: ' .. err .. ' (history will not be saved)')
    path = nil
  end
  return setmetatable({ path = path }, History)
end

function History:add(src)
  if not src:find('%S') or src == self.last then return end
  self.last = src
  readline.add_history(src)
  if self.path then
    local ok, err = readline.save_history(self.path)
    if not ok then
      report('herald repl: ' .. err .. ' (history will not be saved)')
      self.path = nil
    end
  end
end

local INTERRUPTED = {}

-- Reads one input (continuing over lines while it is incomplete). Returns the source and its
-- compiled function or compile error; or nil at end of input, nil, INTERRUPTED when Ctrl-C
-- abandoned the input, nil, message on a read error.
local function read_input(prompt, prompt2)
  local line, err = readline.readline(prompt)
  if line == false then return nil, INTERRUPTED end
  if line == nil then return nil, err end
  local src = line
  local fn, more, msg = repl.compile(src)
  while fn == nil and more do
    line, err = readline.readline(prompt2)
    if line == false then return nil, INTERRUPTED end
    if line == nil then
      if err then return nil, err end
      break
    end
    src = src .. '\n' .. line
    fn, more, msg = repl.compile(src)
  end
  return src, fn, msg
end

-- Runs the REPL until end of input. Returns the process exit code.
function repl.run()
  _G.herald = require 'herald'
  local interactive = readline.isatty()
  local history
  local prompt, prompt2 = '', ''
  if interactive then
    io.stdout:write(('herald %s (%s): expressions print their value, Ctrl-D exits\n')
      :format(core.version(), _VERSION))
    history = open_history()
    readline.set_completer(repl.complete)
    readline.catch_interrupt(true)
    prompt, prompt2 = repl.prompt, repl.continuation_prompt
  end
  local code = 0
  while true do
    local src, fn, msg = read_input(prompt, prompt2)
    if src then
      if history then history:add(src) end
      local failed = fn == nil
      if fn then
        local result = repl.execute(fn, interactive)
        if result[1] then repl.show(result) else report(result[2]) end
        failed = not result[1]
      else
        report(msg)
      end
      -- Piped input goes on after an error, but its exit status says one happened (as
      -- `lua - < file` would fail), so a script that feeds the REPL can tell.
      if failed and not interactive then code = 1 end
    elseif fn == INTERRUPTED then
      -- Ctrl-C at a prompt drops what was typed, as a shell does.
      io.stdout:write('^C\n')
    elseif fn ~= nil then
      report('herald repl: ' .. fn)
      code = 1
      break
    else
      break
    end
  end
  if interactive then
    readline.catch_interrupt(false)
    io.stdout:write('\n')
  end
  return code
end

return repl
