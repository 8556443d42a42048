-- `herald run FILE...`: loads campaign definitions in the sandbox and runs the scheduler.
local task = require 'herald.core.task'

local M = {}

M.usage = [[
usage: herald run [options] FILE...

Loads each FILE as campaign code (sandboxed: no io, os.execute or debug; an instruction
budget per call and a memory cap), then runs the scheduler: due runs are materialised into the
outbox and delivered. SIGINT or SIGTERM stops it cleanly: the batch being written finishes.

options:
  --until-idle   exit when nothing more is due (otherwise run until stopped)
  --verbose      log each run and recovery
  --memory MB    memory cap of the sandbox (default 64)
]]

local function fail(fmt, ...)
  io.stderr:write('herald run: ' .. string.format(fmt, ...) .. '\n')
  return 1
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
    elseif a == '--memory' then
      memory = tonumber(args[i + 1])
      if not memory or memory < 1 then return fail('--memory needs a size in MB') end
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

  local sandbox = require 'herald.sandbox'
  local sb = sandbox.new { memory = math.floor(memory * 1024 * 1024) }
  for _, f in ipairs(files) do
    local fh = io.open(f, 'r')
    if not fh then return fail('cannot open %s', f) end
    fh:close()
    local ok, err = sb:run_file(f)
    if not ok then
      io.stderr:write('herald run: ' .. tostring(err) .. '\n')
      return 1
    end
  end

  task.watch_signals()
  local failures_before = task.failures()
  local ok, err = sb:run([[
    local opts = ...
    local task = require 'herald.core.task'
    local scheduler = require 'herald.scheduler'
    task.spawn(function()
      if opts.verbose then opts.log = print end
      local result = scheduler.run(opts)
      scheduler.print_summary()
      if result.stopped then print('stopped: in-flight work written; run again to continue') end
    end)
  ]], '=(herald run)', opts)
  if not ok then
    io.stderr:write('herald run: ' .. tostring(err) .. '\n')
    return 1
  end
  task.run()
  if task.failures() > failures_before then return 1 end
  return 0
end

return M
