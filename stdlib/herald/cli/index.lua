-- `herald index`: list, add and drop the value indexes segments read attributes and metrics
-- from, or create every index the segments of a script use.
local segment = require 'herald.segment'

local M = {}

M.usage = [[
usage: herald index                      list the indexes of the application
       herald index add NAME...          create indexes
       herald index drop NAME...         remove indexes
       herald index SCRIPT.lua [args]    run SCRIPT and index what its segments use

NAME is Attributes.NAME, UserAttributes.NAME or Metrics.NAME (a name has 1 to 50 characters
and no # : ? \ or /). A segment dimension over an indexed attribute or metric is answered from
the index instead of reading every endpoint's JSON. Segments also create the indexes they
need when they are evaluated (herald.segment.auto_index); indexes are kept up to date by every
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

local function each_name(action, names, fn)
  if #names == 0 then
    io.stderr:write('herald index ' .. action .. ': needs at least one NAME\n' .. M.usage)
    return 2
  end
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

local function add(names)
  return each_name('add', names, function(name)
    local created, err = segment.index_add(name, { origin = 'cli' })
    if created == nil then return nil, err end
    return created and 'created' or 'exists'
  end)
end

local function drop(names)
  return each_name('drop', names, function(name)
    local dropped, err = segment.index_drop(name)
    if dropped == nil then return nil, err end
    return dropped and 'dropped' or 'no such index'
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
  return add(names)
end

function M.run(args)
  local action = args[1]
  if action == nil or action == 'list' then return list() end
  local rest = { table.unpack(args, 2) }
  if action == 'add' then return add(rest) end
  if action == 'drop' then return drop(rest) end
  if action:match('%.lua$') then return from_script(action, rest) end
  io.stderr:write("herald index: unknown action '" .. action .. "'\n" .. M.usage)
  return 2
end

return M
