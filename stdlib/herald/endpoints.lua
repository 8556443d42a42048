-- herald.endpoints: Pinpoint-shaped endpoints in the store (runtime/endpoint.h has the rules).
-- Every function takes an optional last argument {app = ID} (default: --app / $HERALD_APP).
-- Runtime failures return nil, message (the message starts with the field path).
local store = require 'herald.core.store'

local M = {}

local function app_of(opts)
  if opts == nil then return nil end
  if type(opts) ~= 'table' then error('options must be a table such as {app = "id"}', 3) end
  return opts.app
end

-- put(endpoint [, opts]) -> the stored endpoint (EndpointResponse shape) or nil, err.
-- Fields absent from `endpoint` keep their stored values; herald.json.null clears one.
function M.put(endpoint, opts)
  if type(endpoint) ~= 'table' then error('herald.endpoints.put expects a table', 2) end
  return store.endpoint_put(endpoint, app_of(opts))
end

function M.get(id, opts) return store.endpoint_get(id, app_of(opts)) end

-- delete(id [, opts]) -> the endpoint as it was, or nil, err.
function M.delete(id, opts) return store.endpoint_delete(id, app_of(opts)) end

-- by_user(user_id [, opts]) -> list of the user's endpoints, oldest EffectiveDate first.
function M.by_user(user_id, opts) return store.endpoint_by_user(user_id, app_of(opts)) end

-- scan{batch = 500, app =} -> iterator over lists of endpoints, in storage order.
function M.scan(opts)
  opts = opts or {}
  local batch = opts.batch or 500
  local after = 0
  return function()
    if after == nil then return nil end
    local list, last = store.endpoint_scan(after, batch, opts.app)
    if list == nil then error(last, 2) end
    if #list == 0 then
      after = nil
      return nil
    end
    after = last
    return list
  end
end

function M.count(opts) return store.endpoint_count(app_of(opts)) end

return M
