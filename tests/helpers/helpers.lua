-- Shared spec helpers: run the herald binary as a subprocess, make temporary files.
local core = require 'herald.core'

local M = {}

M.exe = core.exe_path()

function M.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local tmp_root, tmp_n = nil, 0
function M.tmpdir()
  if tmp_root == nil then
    local p = io.popen('mktemp -d /tmp/herald-spec.XXXXXX')
    tmp_root = p:read('l')
    p:close()
  end
  repeat
    tmp_n = tmp_n + 1
  until os.execute('mkdir ' .. M.shell_quote(tmp_root .. '/' .. tmp_n) .. ' 2>/dev/null')
  return tmp_root .. '/' .. tmp_n
end

function M.write(path, content)
  local f = assert(io.open(path, 'wb'))
  f:write(content)
  f:close()
  return path
end

function M.read(path)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local s = f:read('a')
  f:close()
  return s
end

M.root = os.getenv('HERALD_TEST_ROOT') or (core.stdlib_dir() .. '/..')

-- Runs `herald ARGS` (a shell fragment) and returns stdout, exit code, stderr.
-- opts.stdin feeds standard input; opts.env is a table of environment variables; opts.cwd
-- the directory to run in.
function M.herald(args, opts)
  opts = opts or {}
  local dir = M.tmpdir()
  local errf = dir .. '/stderr'
  local env = ''
  for k, v in pairs(opts.env or {}) do env = env .. k .. '=' .. M.shell_quote(v) .. ' ' end
  local input = ''
  if opts.stdin then
    M.write(dir .. '/stdin', opts.stdin)
    input = ' < ' .. M.shell_quote(dir .. '/stdin')
  else
    input = ' < /dev/null'
  end
  local cd = opts.cwd and ('cd ' .. M.shell_quote(opts.cwd) .. ' && ') or ''
  local cmd = cd .. env .. M.shell_quote(M.exe) .. ' ' .. args .. input .. ' 2> ' .. M.shell_quote(errf)
  local p = io.popen(cmd, 'r')
  local out = p:read('a')
  local _, _, code = p:close()
  return out, code, M.read(errf) or ''
end

-- Runs a shell command; returns stdout and the exit code.
function M.sh(cmd)
  local p = io.popen(cmd, 'r')
  local out = p:read('a')
  local _, _, code = p:close()
  return out, code
end

-- Counts the non-overlapping occurrences of a plain string.
function M.count(haystack, needle)
  local n, i = 0, 1
  while true do
    local j = haystack:find(needle, i, true)
    if not j then return n end
    n, i = n + 1, j + #needle
  end
end

-- Rows of a read-only query on the store DB (a path relative to dir), decoded from JSON.
function M.query(dir, db, sql)
  local out, code, err = M.herald('--db ' .. M.shell_quote(db) .. ' -e ' .. M.shell_quote(
    'print(herald.json.encode(herald.json.array(assert(herald.db.query([[' .. sql .. ']])))))'),
    { cwd = dir })
  if code ~= 0 then error('query failed (exit ' .. tostring(code) .. '): ' .. err, 2) end
  return require('herald.json').decode(out)
end

-- Runs SQL statements on the store DB (relative to dir) with the sqlite3 tool: fast, and
-- independent of herald's own writers. Any herald command migrates the database first, so
-- the schema is there.
function M.sqlite(dir, db, sql)
  local _, code, err = M.herald('--db ' .. M.shell_quote(db) .. ' -e "herald.endpoints.count()"', { cwd = dir })
  if code ~= 0 then error('migrating ' .. db .. ' failed (exit ' .. tostring(code) .. '): ' .. err, 2) end
  local file = M.write(M.tmpdir() .. '/statements.sql', sql)
  local out, rc = M.sh('cd ' .. M.shell_quote(dir) .. ' && sqlite3 ' .. M.shell_quote(db) .. ' < '
    .. M.shell_quote(file) .. ' 2>&1')
  if rc ~= 0 then error('sqlite3 ' .. db .. ' failed (exit ' .. tostring(rc) .. '): ' .. out, 2) end
end

-- Writes endpoints into the store DB (relative to dir) in one transaction through M.sqlite.
-- Each row has id and optionally channel (EMAIL), address, status (ACTIVE), opt_out (NONE),
-- cohort (0) and tz.
function M.endpoints_sql(dir, db, rows)
  local lines = { 'BEGIN;' }
  for _, r in ipairs(rows) do
    lines[#lines + 1] = string.format(
      "INSERT INTO endpoints(app_id, id, channel_type, address, endpoint_status, opt_out, cohort_id,"
      .. " effective_date, creation_date, timezone) VALUES ('default', '%s', '%s', %s, '%s', '%s', %d,"
      .. " '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', %s);",
      r.id, r.channel or 'EMAIL', r.address and ("'" .. r.address .. "'") or 'NULL',
      r.status or 'ACTIVE', r.opt_out or 'NONE', r.cohort or 0, r.tz and ("'" .. r.tz .. "'") or 'NULL')
  end
  lines[#lines + 1] = 'COMMIT;'
  M.sqlite(dir, db, table.concat(lines, '\n'))
end

-- Polls pred every every_ms (default 20) inside a herald task until it returns a true value
-- (returned), or raises after ms milliseconds naming what (a string, or a function giving one).
function M.wait_for(pred, ms, what, every_ms)
  local task = require 'herald.core.task'
  local deadline = task.now() + ms
  while task.now() < deadline do
    local v = pred()
    if v then return v end
    task.sleep(every_ms or 20)
  end
  error('timed out waiting for ' .. (type(what) == 'function' and what() or what), 2)
end

-- Starts `herald --db DB serve` in dir on a free port (env: 'NAME=value ...' put before the
-- command, or nil); returns { pid =, port = }. The caller stops it with os.execute('kill ' .. pid).
function M.start_serve(dir, db, env)
  local inner = (env and (env .. ' ') or '') .. M.shell_quote(M.exe) .. ' --db ' .. M.shell_quote(db)
    .. ' serve --listen 127.0.0.1:0 > serve.out 2> serve.err & echo $! > serve.pid; wait'
  os.execute('cd ' .. M.shell_quote(dir) .. ' && sh -c ' .. M.shell_quote(inner) .. ' > /dev/null 2>&1 &')
  local port = M.wait_for(function()
    return tonumber((M.read(dir .. '/serve.out') or ''):match('listening on http://127%.0%.0%.1:(%d+)'))
  end, 20000, function() return 'herald serve to listen: ' .. tostring(M.read(dir .. '/serve.err')) end)
  local pid = M.wait_for(function() return tonumber((M.read(dir .. '/serve.pid') or ''):match('%d+')) end,
    5000, 'the server pid')
  return { pid = pid, port = port }
end

return M
