-- `herald run FILE...`: loads campaign definitions in the sandbox and runs the scheduler.
local task = require 'herald.core.task'
local clock = require 'herald.core.clock'
local time = require 'herald.time'
local runner = require 'herald.runner'
local server = require 'herald.core.server'
local cli = require 'herald.cli'

local M = {}

M.usage = [[
usage: herald run [options] FILE...

Loads each FILE as campaign code (sandboxed: no io, os.execute or debug; an instruction budget
per call and a memory cap), then runs the scheduler: due runs are materialised into the outbox
and delivered. A file named twice (by any path) loads once; two files that define one campaign
name are an error at the second's line that names the first's. A file that fails to load is
reported with its line and leaves none of its campaigns behind; a campaign whose code fails at
run time is reported and the others go on; the exit status is then 1. SIGINT or SIGTERM stops
the loop cleanly: messages claimed but not yet sent go back to the outbox (no attempt spent),
those already sent have their outcome written, and the next `herald run` continues where it
stopped.

options:
  --until-idle   exit when nothing more is due (otherwise run until stopped); a campaign
                 left PAUSED is named on stderr with the messages waiting for its resume. A
                 store that fails or stays busy for 10 minutes without a break ends such a
                 run with status 1 (a run without an end waits for it)
  --verbose      log each run materialised and each recovery
  --memory MB    memory cap of the sandbox (default 64)
  --providers F  the providers file (channel profiles; see herald.providers); by default
                 providers.lua next to the first FILE when there is one
  --serve HOST:PORT
                 also run the engagement server (tracking links, PutEvents, status and mail
                 webhooks, campaign KPIs; see `herald serve --help`) on the same loop; it
                 stops with the scheduler
  --clock-start ISO  run on a manual clock starting at ISO (or $HERALD_CLOCK_START): the loop
                 jumps from one due instant to the next, so months of a recurring schedule run
                 in seconds; implies exiting when nothing more is due
  --until ISO    exit when nothing more is due before ISO
]]

local function fail(fmt, ...)
  io.stderr:write('herald run: ' .. string.format(fmt, ...) .. '\n')
  return 2
end

function M.run(args)
  local opts = { until_idle = false, verbose = false }
  local files = {}
  local memory = 64
  local i = 1
  while args[i] do
    local a = args[i]
    if a == '--until-idle' then
      opts.until_idle = true
    elseif a == '--verbose' then
      opts.verbose = true
    elseif a == '--providers' then
      opts.providers = args[i + 1]
      if not opts.providers then return fail('--providers needs a file') end
      i = i + 1
    elseif a == '--serve' then
      opts.serve = args[i + 1]
      if not opts.serve then return fail('--serve needs HOST:PORT') end
      i = i + 1
    elseif a == '--memory' then
      memory = tonumber(args[i + 1])
      if not memory or memory < 1 then return fail('--memory needs a size in MB') end
      i = i + 1
    elseif a == '--clock-start' or a == '--until' then
      local ms, err = time.parse(args[i + 1] or '')
      if not ms then return fail('%s: %s', a, err) end
      if a == '--clock-start' then opts.clock_start = ms else opts.until_ms = ms end
      i = i + 1
    elseif a:sub(1, 2) == '--' then
      return fail('unknown option %s', a)
    else
      files[#files + 1] = a
    end
    i = i + 1
  end
  if #files == 0 then
    io.stderr:write(M.usage)
    return 2
  end
  for _, f in ipairs(files) do
    local fh = io.open(f, 'r')
    if not fh then return fail('cannot open %s', f) end
    fh:close()
  end
  files = cli.distinct_files(files)

  local pfile = opts.providers
  if pfile == nil then
    local near = (files[1]:match('^(.*)/[^/]*$') or '.') .. '/providers.lua'
    local fh = io.open(near, 'r')
    if fh then
      fh:close()
      pfile = near
    end
  end
  if pfile then
    local ok, cfg = pcall(require('herald.providers').load, pfile)
    if not ok then return fail('%s', tostring(cfg)) end
    require('herald.deliver').configure(cfg)
  end

  local env_start = os.getenv('HERALD_CLOCK_START')
  if opts.clock_start == nil and env_start and env_start ~= '' then
    local ms, err = time.parse(env_start)
    if not ms then return fail('HERALD_CLOCK_START: %s', err) end
    opts.clock_start = ms
  end
  if opts.clock_start then clock.set_manual(opts.clock_start) end
  -- a database that cannot be opened is the store's failure, said as such, before any file
  -- loads and would take the blame for it
  local opened, oerr = cli.open_store()
  if not opened then
    io.stderr:write('herald run: ' .. oerr .. '\n')
    return 1
  end
  local r = runner.new {
    memory = math.floor(memory * 1024 * 1024),
    log = opts.verbose and function(msg) print(msg) end or nil,
  }
  local srv
  if opts.serve then
    local oks, s, serr = pcall(server.start, { listen = opts.serve, routes = require('herald.api').routes() })
    if not oks or not s then
      io.stderr:write('herald run: --serve: ' .. tostring(oks and serr or s) .. '\n')
      r:close()
      return 1
    end
    srv = s
    io.stdout:write(string.format('herald run: serving on http://%s\n', srv:address()))
    io.stdout:flush()
  end
  task.watch_signals()
  -- loading waits (in a task) while the store is busy; a store that stays busy or fails
  -- stops herald run before the loop, nothing made INVALID for it
  local ok, res = cli.run_task(function()
    local _, store_err = r:load(files)
    local result = store_err and { store_failed = true } or r:loop(opts)
    if srv then srv:stop() end
    return result
  end)
  if not ok then
    if srv then srv:stop() end
    io.stderr:write('herald run: ' .. tostring(res) .. '\n')
    r:close()
    return 1
  end
  local result = res[1]
  if result.store_failed then
    r:close()
    return 1
  end
  -- messages sent whose outcomes the store refused to the end: said, and the run fails
  local in_doubt = (result.in_doubt or 0) > 0 and string.format('herald run: %d messages were sent but the store '
    .. 'refused their outcomes: their rows stay CLAIMED, and the next start sends them again\n', result.in_doubt)
  if result.gave_up then
    -- claimed messages go back at the next start (recovery), as after a kill
    io.stderr:write('herald run: ' .. result.gave_up .. '; run again once the store is fixed\n')
    if in_doubt then io.stderr:write(in_doubt) end
    r:close()
    return 1
  end
  r:print_summary()
  if in_doubt then
    io.stderr:write(in_doubt)
    if result.stopped then print('stopped: run again to continue') end
    r:close()
    return 1
  end
  if result.stopped then print('stopped: work in hand was written; run again to continue') end
  r:close()
  return r.failures > 0 and 1 or 0
end

return M
