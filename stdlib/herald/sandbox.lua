-- herald.sandbox: run campaign code sandboxed from host mode (the REPL, scripts, specs).
--   local sb = herald.sandbox.new{ memory = 8 * 2^20, budget = 10^6 }
--   local ok, a, b = sb:run(code, 'name.lua', args...)   -- true, results... | false, message
--   sb:run_file(path, args...); sb:spawn(code, name, args...) -> task (task:done(), task:result())
--   sb:memory() -> bytes in use; sb:close() (also on __gc and __close)
local core = require 'herald.core.sandbox'

local M = {}

local OPTIONS = { memory = 'bytes', budget = 'instructions', time_ms = 'milliseconds' }

local function limit(opts, name)
  local v = opts[name]
  if v == nil then return 0 end
  if math.type(v) ~= 'integer' and not (type(v) == 'number' and v == math.floor(v)) or v <= 0 then
    error(string.format("herald.sandbox: option '%s' must be a positive whole number of %s, got %s",
      name, OPTIONS[name], tostring(v)), 3)
  end
  return math.tointeger(v)
end

-- new{memory =, budget =, time_ms =} -> sandbox | nil, message
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= 'table' then
    error('herald.sandbox.new: expected a table of options, got ' .. type(opts), 2)
  end
  for k in pairs(opts) do
    if OPTIONS[k] == nil then
      error(string.format("herald.sandbox.new: unknown option '%s' (memory, budget, time_ms)",
        tostring(k)), 2)
    end
  end
  return core.new(limit(opts, 'memory'), limit(opts, 'budget'), limit(opts, 'time_ms'))
end

-- run(code, opts) runs code in a fresh sandbox and closes it: true, results... | false, message.
-- opts takes new's options and `chunkname`.
function M.run(code, opts)
  opts = opts or {}
  local limits = {}
  for k, v in pairs(opts) do
    if k ~= 'chunkname' then limits[k] = v end
  end
  local sb, err = M.new(limits)
  if not sb then return false, err end
  local res = table.pack(sb:run(code, opts.chunkname))
  sb:close()
  return table.unpack(res, 1, res.n)
end

return M
