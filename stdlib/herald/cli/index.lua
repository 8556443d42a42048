-- `herald index`: list, add and drop the value indexes segments read attributes and metrics
-- from, or create every index the segments of a script use.
local segment = require 'herald.segment'
local transaction = require('herald.core.deliver').transaction

local M = {}

M.usage = [[
usage: herald index                      list the indexes of the application
       herald index add NAME...          create indexes
       herald index drop NAME...         remove indexes
       herald index SCRIPT.lua [args]    run SCRIPT and index what its segments use

NAME is Attributes.NAME, UserAttributes.NAME or Metrics.NAME (a name has 1 to 50 characters and
no # : ? \ or /). add and drop change all the NAMEs given or none: a NAME that cannot be
indexed, or that drop finds no index of, is reported and nothing is created or dropped (exit
status 1). With SCRIPT, the names its segments read that cannot be indexed are reported and the
others are created. A segment dimension over an indexed attribute or metric is answered from
the index instead of reading every endpoint's JSON. Segments also create the indexes they need
when they are evaluated (herald.segment.auto_index); indexes are kept up to date by every
endpoint write, import and delete. The list shows each index's values (rows), the endpoints
that have one, who created it (cli, demand, lua) and when.
]]

local function list()
  local rows = segment.indexes()
  if #rows == 0 then
    print('no indexes (herald index add Attributes.NAME creates one)')
    return 0
  end
  print(string.format('%-40s %10s %10s  %-7s %s', 'NAME', 'VALUES', 'ENDPOINTS', 'ORIGIN',
    'CREATED'))
  for _, r in ipairs(rows) do
    print(string.format('%-40s %10d %10d  %-7s %s', r.name, r.rows, r.endpoints, r.origin,
      r.creation_date))
  end
  return 0
end

-- Applies fn to each name, reporting each: a name that fails is reported and the others go
-- on. A script's segments may read names that cannot be indexed; the others still help.
local function each_name(action, names, fn)
  local status = 0
  for _, name in ipairs(names) do
    local ok, err = fn(name)
    if ok == nil then
      io.stderr:write('herald index ' .. action .. ': ' .. err .. '\n')
      status = 1
    else
      print(name .. ': ' .. ok)
    end
  end
  return status
end

-- What a command line asks for happens whole or not at all, in one store transaction: a
-- mistyped NAME among several leaves the store as it was, rather than half changed, and
-- every bad NAME is reported, not only the first.
local ROLLBACK = {}
local function all_names(action, past, names, fn)
  if #names == 0 then
    io.stderr:write('herald index ' .. action .. ': needs at least one NAME\n' .. M.usage)
    return 2
  end
  local done, bad, seen = {}, {}, {}
  local ok, err = pcall(transaction, function()
    for _, name in ipairs(names) do
      if not seen[name] then
        seen[name] = true
        local res, why = fn(name)
        if res == nil then bad[#bad + 1] = why else done[#done + 1] = name .. ': ' .. res end
      end
    end
    if #bad > 0 then error(ROLLBACK) end
  end)
  if not ok then
    if err ~= ROLLBACK then bad[#bad + 1] = tostring(err) end
    for _, why in ipairs(bad) do io.stderr:write('herald index ' .. action .. ': ' .. why .. '\n') end
    io.stderr:write('herald index ' .. action .. ': nothing ' .. past .. '\n')
    return 1
  end
  for _, line in ipairs(done) do print(line) end
  return 0
end

local function add_one(name)
  local created, err = segment.index_add(name, { origin = 'cli' })
  if created == nil then return nil, err end
  return created and 'created' or 'exists'
end

local function add(names)
  return all_names('add', 'created', names, add_one)
end

local function drop(names)
  return all_names('drop', 'dropped', names, function(name)
    local dropped, err = segment.index_drop(name)
    if dropped == nil then return nil, err end
    if not dropped then return nil, name .. ': no such index (herald index lists them)' end
    return 'dropped'
  end)
end

-- Runs the script as `herald SCRIPT.lua` would, noting the segments it makes, then indexes
-- what they read. Names that cannot be indexed are reported and skipped.
local function from_script(path, args)
  _G.herald = require 'herald'
  local fn, err = loadfile(path, 't')
  if not fn then
    io.stderr:write('herald index: ' .. err .. '\n')
    return 1
  end
  local made = {}
  local stop = segment.watch(function(seg) made[#made + 1] = seg end)
  local a = { [0] = path }
  for i, v in ipairs(args) do a[i] = v end
  _G.arg = a
  local auto = segment.auto_index
  segment.auto_index = false -- create them below, where each is reported
  local ok, res = require('herald.cli').run_task(fn, table.unpack(args))
  segment.auto_index = auto
  stop()
  if not ok then
    io.stderr:write('herald index: ' .. path .. ': ' .. tostring(res) .. '\n')
    return 1
  end
  local names, seen = {}, {}
  for _, seg in ipairs(made) do
    local used_ok, used = pcall(seg.indexable, seg)
    if not used_ok then
      io.stderr:write('herald index: segment ' .. seg.name .. ': ' .. tostring(used) .. '\n')
      return 1
    end
    for _, n in ipairs(used) do
      if not seen[n] then
        seen[n] = true
        names[#names + 1] = n
      end
    end
  end
  table.sort(names)
  if #names == 0 then
    print(string.format('%s: its %d segments read no attribute or metric', path, #made))
    return 0
  end
  return each_name('add', names, add_one)
end

function M.run(args)
  local action = args[1]
  local rest = { table.unpack(args, 2) }
  if action == nil then return list() end
  if action == 'list' then
    if #rest > 0 then
      io.stderr:write("herald index list: takes no NAME, got '" .. rest[1] .. "'\n" .. M.usage)
      return 2
    end
    return list()
  end
  if action == 'add' then return add(rest) end
  if action == 'drop' then return drop(rest) end
  if action:match('%.lua$') then return from_script(action, rest) end
  io.stderr:write("herald index: unknown action '" .. action .. "'\n" .. M.usage)
  return 2
end

return M
