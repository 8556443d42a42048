-- Helpers for the store specs: run a Lua script against a database in a fresh process and
-- read back what it emitted as JSON.
local h = require 'helpers'
local json = require 'herald.core.json'

local M = {}

local PRELUDE = [[
local json = herald.json
local function emit(v) io.write(assert(json.encode(v == nil and json.null or v))) end
local function must(v, ...) if v == nil then error((...), 2) end return v, ... end
]]

function M.db()
  return h.tmpdir() .. '/herald.db'
end

-- Runs code with `emit(value)` available; returns the decoded emitted value, exit code,
-- stderr and raw stdout.
function M.run(db, code, opts)
  local path = h.write(h.tmpdir() .. '/script.lua', PRELUDE .. code)
  local out, rc, err = h.herald('--db ' .. h.shell_quote(db) .. ' ' .. h.shell_quote(path), opts)
  local value = nil
  if out ~= '' then value = json.decode(out) end
  return value, rc, err, out
end

function M.import(db, kind, file, extra, opts)
  return h.herald('--db ' .. h.shell_quote(db) .. ' ' .. (extra or '') .. ' import ' .. kind ..
    ' ' .. h.shell_quote(file), opts)
end

function M.count(db, app)
  local v = M.run(db, string.format('emit(must(herald.endpoints.count(%s)))',
    app and ('{app=%q}'):format(app) or ''))
  return v
end

return M
