-- A weekly newsletter at 09:00 in each reader's own time zone, never during quiet hours.
--
--   herald --db weekly.db run --clock-start 2027-01-01T00:00:00Z --until-idle scripts/weekly_local.lua
--
-- With --clock-start the scheduler runs on a manual clock: the twelve Monday runs of the first
-- quarter go by in seconds. Without it, herald runs in real time until stopped.
local zones = { 'Europe/Paris', 'America/New_York', 'Asia/Tokyo', 'Australia/Sydney', 'Asia/Kolkata' }
for i = 1, 50 do
  assert(herald.endpoints.put {
    Id = string.format('reader-%02d', i), ChannelType = 'EMAIL',
    Address = string.format('reader%02d@example.com', i),
    -- every tenth reader has no time zone: they follow the campaign's (recorded per endpoint)
    Demographic = { Timezone = i % 10 ~= 0 and zones[i % #zones + 1] or nil },
    User = { UserAttributes = { FirstName = { 'Reader ' .. i } } },
  })
end

herald.campaign {
  name = 'weekly-digest',
  segment = herald.segment { name = 'readers' },
  schedule = {
    start = '2027-01-04T09:00:00', ['end'] = '2027-03-31T23:59:00', frequency = 'WEEKLY',
    timezone = 'Europe/London', is_local_time = true,
  },
  -- 08:45-09:30 is quiet: the 09:00 send waits until 09:30 local (policy 'skip' would drop it)
  quiet_time = { start = '08:45', ['end'] = '09:30', policy = 'defer' },
  limits = { daily = 1 },
  message = {
    email = { subject = 'Your weekly digest, {{User.UserAttributes.FirstName}}',
              text = 'Hello {{User.UserAttributes.FirstName}}, here is what happened this week.',
              from = 'digest@example.com' },
  },
  deliver = { file = 'weekly-messages.txt' },
}
