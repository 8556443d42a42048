-- A Pinpoint WriteSegmentRequest loaded as is, saved as a versioned segment, then used as the
-- base segment of a second one.   build/bin/herald --db /tmp/seg-demo.db scripts/segments_pinpoint.lua
local S = herald.segment

local people = {
  { 'ann@example.com', 'FR', 'pro', 12, 'ios' },
  { 'bob@example.com', 'FR', 'free', 3, 'android' },
  { 'cy@example.com', 'DE', 'pro', 40, 'ios' },
  { 'dee@example.com', 'US', 'team', 7, 'web' },
}
for i, p in ipairs(people) do
  assert(herald.endpoints.put { Id = 'demo-' .. i, ChannelType = 'EMAIL', Address = p[1],
    Location = { Country = p[2] }, Demographic = { Platform = p[5] },
    Attributes = { plan = { p[3] }, signup = { string.format('2026-0%d-15T09:00:00Z', i) } },
    Metrics = { orders = p[4] } })
end

-- The document a Pinpoint export or the CreateSegment API would carry.
local paying_europe = S.from_pinpoint [[
{
  "Name": "paying-europe",
  "Dimensions": {
    "Location": { "Country": { "DimensionType": "INCLUSIVE", "Values": ["FR", "DE"] } },
    "Attributes": { "plan": { "AttributeType": "INCLUSIVE", "Values": ["pro", "team"] } },
    "Metrics": { "orders": { "ComparisonOperator": "GREATER_THAN_OR_EQUAL", "Value": 5 } }
  }
}]]
print(paying_europe.name, paying_europe:count())

local id, version = assert(S.save(paying_europe))
print('saved', id, 'version', version)

-- Groups: the saved segment as a base, narrowed to iOS, or anyone who signed up after March.
local ios_or_recent = S.from_pinpoint {
  Name = 'ios-or-recent',
  SegmentGroups = {
    Include = 'ANY',
    Groups = {
      { SourceSegments = { { Id = 'paying-europe' } },
        Dimensions = { { Demographic = { Platform = { Values = { 'ios' } } } } } },
      { Dimensions = { { Attributes = { signup = { AttributeType = 'AFTER',
        Values = { '2026-03-01T00:00:00Z' } } } } } },
    },
  },
}
print(ios_or_recent.name, ios_or_recent:count(), ios_or_recent:contains('demo-4'))
print(ios_or_recent:explain())
