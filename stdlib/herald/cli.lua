-- Command-line interface: global options, then a subcommand or a script to run.
local core = require 'herald.core'
local task = require 'herald.core.task'
local sandbox_core = require 'herald.core.sandbox'
local store = require 'herald.core.store'

local cli = {}

local USAGE = [[
usage: herald [options] SCRIPT.lua [args...]   run a script with the runtime loaded
       herald [options] -e CHUNK               run a Lua chunk
       herald [options] COMMAND [args...]      run a command

commands:
%s
global options:
  --db PATH     database file (default ./herald.db, or $HERALD_DB)
  --app ID      application (Pinpoint project) to work in (default "default", or $HERALD_APP)
  -e CHUNK      run CHUNK
  --version     print the version
  -h, --help    this text; `herald COMMAND --help` describes a command
]]

-- Commands register here: name -> { summary =, usage =, module = } where module's run(args)
-- returns an exit code.
cli.commands = {}
cli.order = {}

function cli.command(name, spec)
  cli.commands[name] = spec
  cli.order[#cli.order + 1] = name
end

cli.command('repl', { summary = 'interactive Lua prompt with the runtime loaded', module = 'herald.cli.repl' })
cli.command('run', { summary = 'load campaign definitions and run the scheduler', module = 'herald.cli.run' })
cli.command('import', { summary = 'import endpoints or events from CSV / NDJSON', module = 'herald.cli.import' })
cli.command('send', { summary = 'send direct messages (Pinpoint SendMessages / SendUsersMessages)', module = 'herald.cli.send' })
cli.command('serve', { summary = 'run the engagement HTTP server (opens, clicks, unsubscribes, PutEvents)', module = 'herald.cli.serve' })
cli.command('feedback', { summary = 'record bounces and complaints that arrive as mail (DSN, ARF)', module = 'herald.cli.feedback' })
cli.command('report', { summary = 'campaign results per treatment and holdout (table or HTML)', module = 'herald.cli.report' })
cli.command('campaign', { summary = 'pause, resume, delete, copy a campaign; status and activities', module = 'herald.cli.campaign' })
cli.command('index', { summary = 'list, add and drop the attribute and metric indexes segments use', module = 'herald.cli.index' })
cli.command('why', { summary = 'what happened to an endpoint in each run of a campaign, and why', module = 'herald.cli.why' })
cli.command('help', { summary = 'describe a command', module = 'herald.cli' })

local function eprintf(fmt, ...)
  io.stderr:write(string.format(fmt, ...))
end
cli.eprintf = eprintf

function cli.usage()
  local lines = {}
  for _, name in ipairs(cli.order) do
    lines[#lines + 1] = string.format('  %-10s %s', name, cli.commands[name].summary)
  end
  return string.format(USAGE, table.concat(lines, '\n') .. '\n')
end

-- Runs fn(...) as the main task, drives the loop until idle, and reports a failure.
-- Returns true, results or false, error message.
function cli.run_task(fn, ...)
  local handle = task.spawn_observed(function(...)
    return fn(...)
  end, ...)
  task.run()
  if not handle.done then
    return false, 'the main task did not finish (the loop stopped while it waited)'
  end
  if not handle.ok then return false, handle.error end
  return true, handle.results
end

-- A store error as one line: without the Lua position a raising call puts in front and the
-- traceback after (the store's message names the database and what failed).
local function store_message(err)
  return (tostring(err):match('^[^\n]*'):gsub('^[^\n]-%.lua:%d+: ', ''))
end

-- Opens the store now (it opens on first use otherwise), so that a command says that the
-- database cannot be opened (a missing directory, a read-only file system, another process
-- holding it exclusively, not a database) in one line naming it, before it loads or reads
-- anything that would take the blame. Returns true, or nil and the store's message.
function cli.open_store()
  local ok, rows, err = pcall(store.query, 'SELECT 1')
  if ok and rows then return true end
  return nil, store_message(ok and err or rows)
end

-- files without the repeats: a file named twice (by whatever path) is loaded once, as its
-- campaigns would otherwise clash with themselves. The first naming of each is kept, in order.
function cli.distinct_files(files)
  local seen, out = {}, {}
  for _, f in ipairs(files) do
    local key = sandbox_core.realpath(f) or f
    if not seen[key] then
      seen[key] = true
      out[#out + 1] = f
    end
  end
  return out
end

-- The exit code of a script or chunk whose main task finished: 1 when a task it spawned and
-- nobody waited for failed meanwhile (its error is printed as it happens), as a script's
-- failure must not pass unnoticed in a shell or a CI job. before: task.failures() at its start.
local function background_failures(before)
  local n = task.failures() - before
  if n == 0 then return 0 end
  eprintf('herald: %d background task%s failed (above)\n', n, n == 1 and '' or 's')
  return 1
end

local function run_script(path, script_args, argv)
  _G.herald = require 'herald'
  local fn, err = loadfile(path, 't')
  if not fn then
    eprintf('herald: %s\n', err)
    return 1
  end
  local a = { [0] = path, [-1] = argv[0] }
  for i, v in ipairs(script_args) do a[i] = v end
  _G.arg = a
  local failed = task.failures()
  local ok, res = cli.run_task(fn, table.unpack(script_args))
  if not ok then
    eprintf('herald: %s\n', res)
    return 1
  end
  return background_failures(failed)
end

local function run_chunk(chunk)
  _G.herald = require 'herald'
  local fn, err = load(chunk, '=(command line)', 't')
  if not fn then
    eprintf('herald: %s\n', err)
    return 1
  end
  local failed = task.failures()
  local ok, res = cli.run_task(fn)
  if not ok then
    eprintf('herald: %s\n', res)
    return 1
  end
  return background_failures(failed)
end

-- Reads the global options; returns the index of the first remaining argument, or nil and an
-- exit code when the options alone decided what to do.
local function global_options(argv)
  local i = 1
  local chunks = {}
  while argv[i] do
    local a = argv[i]
    if a == '--db' or a == '--app' then
      local v = argv[i + 1]
      if v == nil then
        eprintf('herald: %s needs a value\n', a)
        return nil, 2
      end
      if a == '--db' then core.set_db_path(v) else core.set_app(v) end
      i = i + 2
    elseif a:match('^%-%-db=') then
      core.set_db_path(a:sub(6)); i = i + 1
    elseif a:match('^%-%-app=') then
      core.set_app(a:sub(7)); i = i + 1
    elseif a == '--version' or a == '-v' then
      print('herald ' .. core.version() .. ' (' .. _VERSION .. ')')
      return nil, 0
    elseif a == '-h' or a == '--help' then
      io.stdout:write(cli.usage())
      return nil, 0
    elseif a == '-e' then
      if argv[i + 1] == nil then
        eprintf('herald: -e needs a chunk\n')
        return nil, 2
      end
      chunks[#chunks + 1] = argv[i + 1]
      i = i + 2
    elseif a == '--' then
      return i + 1, nil, chunks
    elseif a:sub(1, 1) == '-' and a ~= '-' then
      eprintf('herald: unknown option %s\n%s', a, cli.usage())
      return nil, 2
    else
      break
    end
  end
  return i, nil, chunks
end

-- True when args asks for help (so every subcommand answers --help the same way).
function cli.wants_help(args)
  for _, a in ipairs(args) do
    if a == '-h' or a == '--help' then return true end
  end
  return false
end

function cli.run(args)
  local name = args[1]
  if name == nil then
    io.stdout:write(cli.usage())
    return 0
  end
  -- `herald help --help` and `herald help help` describe help itself, as every command
  -- answers --help
  if name == 'help' or name == '-h' or name == '--help' then
    io.stdout:write(cli.usage_text)
    return 0
  end
  local spec = cli.commands[name]
  if spec == nil then
    eprintf('herald help: unknown command %s\n', tostring(name))
    return 2
  end
  local m = require(spec.module)
  io.stdout:write(m.usage)
  return 0
end
cli.usage_text = 'usage: herald help COMMAND\n\nDescribes COMMAND (the same text as `herald COMMAND --help`).\n'

function cli.main(argv)
  local first, code, chunks = global_options(argv)
  if first == nil then return code end
  for _, chunk in ipairs(chunks) do
    local rc = run_chunk(chunk)
    if rc ~= 0 then return rc end
  end
  local target = argv[first]
  if target == nil then
    if #chunks > 0 then return 0 end
    io.stdout:write(cli.usage())
    return 0
  end
  local rest = {}
  for j = first + 1, #argv do rest[#rest + 1] = argv[j] end
  local spec = cli.commands[target]
  if spec and not target:match('%.lua$') then
    if target == 'help' then return cli.run(rest) end   -- `help --help` included
    local m = require(spec.module)
    if cli.wants_help(rest) then
      io.stdout:write(m.usage)
      return 0
    end
    return m.run(rest)
  end
  if not target:match('%.lua$') and not io.open(target, 'r') then
    eprintf('herald: unknown command or script: %s\n%s', target, cli.usage())
    return 2
  end
  return run_script(target, rest, argv)
end

return cli
