-- herald.events: events of endpoints (runtime/event.h). A repeated event (same endpoint and
-- EventId) is stored once. Runtime failures return nil, message.
local store = require 'herald.core.store'

local M = {}

local function app_of(opts)
  if opts == nil then return nil end
  if type(opts) ~= 'table' then error('options must be a table such as {app = "id"}', 3) end
  return opts.app
end

-- put(endpoint_id, event [, opts]) -> event id, true when new (false for a repeat)
function M.put(endpoint_id, event, opts)
  if type(event) ~= 'table' then error('herald.events.put expects an event table', 2) end
  return store.event_put(endpoint_id, event, app_of(opts))
end

-- put_batch(list [, opts]) -> number of new events; each item names its EndpointId. All or
-- nothing: one bad item stores none and the error names it ("[3].Timestamp: ...").
function M.put_batch(list, opts)
  if type(list) ~= 'table' then error('herald.events.put_batch expects a list of events', 2) end
  return store.event_put_batch(list, app_of(opts))
end

-- for_endpoint(id [, {since = ISO-8601, type = EventType, limit = n, app = ID}]) -> list of
-- events, newest first.
function M.for_endpoint(id, opts)
  opts = opts or {}
  if type(opts) ~= 'table' then error('options must be a table', 2) end
  return store.event_for_endpoint(id, opts.since, opts.type, opts.limit, opts.app)
end

return M
