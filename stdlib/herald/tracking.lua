-- Tracking links for email: open pixel, click redirect and unsubscribe URLs with signed tokens
-- (see runtime/tracking.h). Each function takes
--   {app =, campaign =, run =, treatment =, endpoint =, message_id =, base =, key =}
-- (click_url also url =) and returns the URL, or nil, err. base is the server's public URL
-- (default $HERALD_TRACKING_BASE or http://127.0.0.1:8080); key a secret string overriding
-- the runtime's key.
local server = require 'herald.core.server'

local M = {}

local function base_of(opts)
  local base = opts.base or os.getenv('HERALD_TRACKING_BASE') or 'http://127.0.0.1:8080'
  return (base:gsub('/+$', ''))
end

local function url(kind, prefix, opts)
  if type(opts) ~= 'table' then error('herald.tracking: expects a table of fields', 3) end
  local t = {}
  for k, v in pairs(opts) do t[k] = v end
  t.kind = kind
  if kind ~= 'click' then t.url = nil end
  local token, err = server.mint(t)
  if not token then return nil, err end
  return base_of(opts) .. prefix .. token
end

function M.open_url(opts) return url('open', '/t/o/', opts) end
function M.click_url(opts) return url('click', '/t/c/', opts) end
function M.unsubscribe_url(opts) return url('unsubscribe', '/t/u/', opts) end

-- The fields a token carries, or nil, err when it is not a valid token of that kind.
function M.verify(token, kind, opts)
  return server.verify(token, kind or 'open', opts)
end

return M
