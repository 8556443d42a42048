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
-- Opening the store was once refused as locked past the 5 s busy timeout while a `herald run`
-- of deliver_spec paused a campaign on a loaded machine (a reader of a WAL store, cause not
-- found): such a refusal is said on stderr and the query tried again, twice at most.
function M.query(dir, db, sql)
  local out, code, err
  for attempt = 1, 3 do
    out, code, err = M.herald('--db ' .. M.shell_quote(db) .. ' -e ' .. M.shell_quote(
      'print(herald.json.encode(herald.json.array(assert(herald.db.query([[' .. sql .. ']])))))'),
      { cwd = dir })
    if code == 0 or attempt == 3 or not err:find('opening: database is locked', 1, true) then break end
    io.stderr:write('\n  query: opening ' .. db .. ' was refused as locked, trying again: ' .. err .. '\n')
  end
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

-- Stores EMAIL endpoints { {id, address}, ... } in a fresh directory's store db and sends each
-- one message of campaign c1 to the file msgs.txt. Returns the directory and the message id
-- per endpoint id.
function M.file_campaign(db, people)
  local dir = M.tmpdir()
  local src = {}
  for _, p in ipairs(people) do
    src[#src + 1] = string.format("assert(herald.endpoints.put { Id = %q, ChannelType = 'EMAIL', Address = %q })", p[1], p[2])
  end
  src[#src + 1] = "herald.campaign { name = 'c1', segment = herald.segment { name = 'all' },"
    .. " message = { subject = 'Hi', body = 'b' }, deliver = { file = 'msgs.txt' } }"
  M.write(dir .. '/c.lua', table.concat(src, '\n') .. '\n')
  local _, code, err = M.herald('--db ' .. db .. ' run --until-idle c.lua', { cwd = dir })
  assert(code == 0, err)
  local mid, n = {}, 0
  for _, r in ipairs(M.query(dir, db, "SELECT endpoint_id, message_id FROM outbox WHERE state = 'SENT'")) do
    mid[r.endpoint_id], n = r.message_id, n + 1
  end
  assert(n == #people, 'the campaign sent ' .. n .. ' of ' .. #people .. ' messages')
  return dir, mid
end

-- Runs the shell commands in dir while another process holds the store db (BEGIN IMMEDIATE).
-- The holder lets go once the commands are done or, with release_on = { FILE, TEXT }, as soon
-- as FILE (in dir) holds TEXT (herald saying it waits for the store, say). Returns the commands'
-- output and whether the holder let go on release_on's text.
function M.hold_store(dir, db, commands, release_on)
  M.write(dir .. '/hold.py', string.format([[
import os, sqlite3, time
c = sqlite3.connect(%q, isolation_level=None, timeout=30)
c.execute('BEGIN IMMEDIATE')
open('held', 'w').close()
watch, text = %q, %q
for _ in range(600):
    if os.path.exists('done'):
        break
    if watch and os.path.exists(watch) and text in open(watch).read():
        open('seen', 'w').close()
        break
    time.sleep(0.05)
c.execute('COMMIT')
]], db, release_on and release_on[1] or '', release_on and release_on[2] or ''))
  local out = M.sh('cd ' .. M.shell_quote(dir) .. ' && rm -f held seen done' ..
    (release_on and (' ' .. M.shell_quote(release_on[1])) or '') .. '; python3 hold.py & hp=$!;'
    .. ' for i in $(seq 200); do [ -e held ] && break; sleep 0.05; done;\n' .. commands .. '\ntouch done; wait $hp')
  assert(M.read(dir .. '/held'), 'the store was not held')
  return out, M.read(dir .. '/seen') ~= nil
end

return M
