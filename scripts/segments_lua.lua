-- The concise Lua form, a Lua filter and composition.
--   build/bin/herald --db /tmp/seg-demo.db scripts/segments_lua.lua
local S = herald.segment

for i = 1, 200 do
  assert(herald.endpoints.put { Id = 'lua-' .. i, ChannelType = i % 5 == 0 and 'SMS' or 'EMAIL',
    Address = i % 5 == 0 and string.format('+1555%07d', i) or ('user' .. i .. '@example.com'),
    Location = { Country = ({ 'FR', 'DE', 'US', 'JP' })[i % 4 + 1],
      Latitude = 48.85 + (i % 10) * 0.05, Longitude = 2.35 },
    Attributes = { interests = { ({ 'books', 'music', 'travel' })[i % 3 + 1], 'news' } },
    Metrics = { visits = i % 17 } })
end

-- Same meaning as a WriteSegmentRequest (see seg:to_pinpoint()).
local readers = S {
  name = 'readers',
  channel = 'EMAIL',
  country = { not_in = 'JP' },
  attributes = { interests = 'books' },
  metrics = { visits = { ge = 3 } },
}
print(readers.name, readers:count())
print(herald.json.encode(readers:to_pinpoint()))

-- Near Paris, with a Lua predicate for what the declarative model cannot say.
local paris_regulars = S {
  name = 'paris-regulars',
  near = { lat = 48.8566, lon = 2.3522, km = 15 },
  filter = function(ep)
    return ep.Metrics.visits % 2 == 0 and #ep.Attributes.interests == 2
  end,
}
print(paris_regulars.name, paris_regulars:count())

local either = S.any { readers, paris_regulars, name = 'readers-or-paris' }
local neither = S.none { readers, paris_regulars }
print(either.name, either:count(), neither.name, neither:count())
for _, ep in ipairs(either:sample(3)) do print('  sample', ep.Id, ep.Address) end
