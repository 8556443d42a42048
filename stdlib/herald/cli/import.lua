-- herald import endpoints|events FILE: bulk import, all or nothing (runtime/import.h).
local core = require 'herald.core'
local store = require 'herald.core.store'

local M = {}

M.usage = [[
usage: herald import endpoints FILE [--format csv|json] [--app ID]
       herald import events FILE [--app ID]

Imports FILE into the store in one transaction: a bad row imports nothing and the error names
file:line, the field and the reason.

endpoints  CSV with Pinpoint's dotted headers, e.g.
             Id,ChannelType,Address,User.UserId,User.UserAttributes.FirstName,
             Attributes.Interests,Attributes.Interests,Metrics.score,Demographic.Timezone,
             Location.Country
           (a repeated Attributes.X / User.UserAttributes.X column adds a value to that list,
           any other column may appear once; an empty cell is left out), or newline-delimited
           JSON endpoint objects
           ({"Id": ..., "ChannelType": "EMAIL", "Address": ..., "Attributes": {...}, ...}).
           The format follows the extension (.csv; .json .jsonl .ndjson) or the content.
events     newline-delimited JSON events, one object per line:
             {"EndpointId": "e1", "EventId": "ev1", "EventType": "_email.open",
              "Timestamp": "2026-11-29T10:00:00Z", "Attributes": {...}, "Metrics": {...}}
           Without EventId the id is a hash of the content; a repeated event is stored once.

Progress (count, rate, ETA) is shown on stderr when it is a terminal.
]]

local function fail(fmt, ...)
  io.stderr:write('herald import: ', string.format(fmt, ...), '\n')
  return 1
end

function M.run(args)
  local what, file, format = nil, nil, nil
  local i = 1
  while args[i] do
    local a = args[i]
    if a == '--format' then
      format = args[i + 1]
      if format ~= 'csv' and format ~= 'json' then return fail('--format is csv or json') end
      i = i + 2
    elseif a == '--app' then
      if not args[i + 1] then return fail('--app needs a value') end
      core.set_app(args[i + 1])
      i = i + 2
    elseif a:sub(1, 1) == '-' and a ~= '-' then
      return fail('unknown option %s\n%s', a, M.usage)
    elseif what == nil then
      what = a; i = i + 1
    elseif file == nil then
      file = a; i = i + 1
    else
      return fail('unexpected argument %s', a)
    end
  end
  if what ~= 'endpoints' and what ~= 'events' then
    io.stderr:write(M.usage)
    return 2
  end
  if file == nil then return fail('which file? (herald import %s FILE)', what) end
  if what == 'events' and format == 'csv' then return fail('events are imported from NDJSON only') end

  -- Opening the store raises when the database is corrupt or locked; report it plainly.
  local ok, rows, seconds, inserted = pcall(function()
    if what == 'endpoints' then return store.import_endpoints(file, nil, format) end
    return store.import_events(file, nil)
  end)
  -- Opening errors carry the Lua position of the call; the message itself is what matters.
  if not ok then return fail('%s', (tostring(rows):gsub('^[^\n]-%.lua:%d+: ', ''))) end
  if rows == nil then return fail('%s', seconds) end
  local extra = ''
  if what == 'events' and inserted < rows then
    extra = string.format(' (%d new, %d already stored)', inserted, rows - inserted)
  end
  io.stdout:write(string.format('imported %d %s from %s in %.2f s%s\n', rows, what, file,
    seconds, extra))
  return 0
end

return M
