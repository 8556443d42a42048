-- Segments: who a campaign reaches. This first form takes a Lua predicate over endpoints;
-- Pinpoint's declarative dimensions compile to SQL in the segment engine.
local segment = {}

local Segment = {}
Segment.__index = Segment

local BATCH = 500

-- segment{ name =, filter = function(ep) ... end } -> segment. Raises at the caller's line
-- when the definition is wrong.
local function define(def)
  if type(def) ~= 'table' then error('herald.segment: expected a table', 2) end
  if type(def.name) ~= 'string' or def.name == '' then
    error('herald.segment: name: required, a non-empty string', 2)
  end
  if def.filter ~= nil and type(def.filter) ~= 'function' then
    error('herald.segment ' .. def.name .. ': filter: must be a function(endpoint) -> boolean', 2)
  end
  for k in pairs(def) do
    if k ~= 'name' and k ~= 'filter' and k ~= 'description' then
      error('herald.segment ' .. def.name .. ': unknown field ' .. tostring(k) ..
        ' (allowed: name, description, filter)', 2)
    end
  end
  return setmetatable({ name = def.name, description = def.description, filter = def.filter },
    Segment)
end

-- Calls fn(endpoint) for every member, reading endpoints in batches.
function Segment:each(fn)
  local endpoints = require('herald').endpoints
  local filter = self.filter
  for batch in endpoints.scan { batch = BATCH } do
    for _, ep in ipairs(batch) do
      if filter == nil or filter(ep) then fn(ep) end
    end
  end
end

-- The segment as a query for engines that select endpoints in SQL (campaign
-- materialisation): `where` is a boolean SQL expression over the endpoints table aliased `e`,
-- using only named parameters (:name) whose values are in `params`, never spliced strings;
-- `filter`, when present, must still be applied to the rows the SQL keeps.
function Segment:compile()
  return { where = '1', params = {}, filter = self.filter }
end

function Segment:count()
  local n = 0
  self:each(function() n = n + 1 end)
  return n
end

function Segment:sample(n)
  local out = {}
  n = n or 10
  self:each(function(ep)
    if #out < n then out[#out + 1] = ep end
  end)
  return out
end

function Segment:__tostring()
  return 'segment ' .. self.name
end

segment.is_segment = function(v) return getmetatable(v) == Segment end

return setmetatable(segment, { __call = function(_, def) return define(def) end })
