-- An A/B test of send times: the same reminder on Tuesday mornings or on Saturday evenings,
-- each at the reader's own local time, for four weeks, with a 10% holdout.
--
--   herald --db sendtime.db run --clock-start 2027-03-01T00:00:00Z --until-idle scripts/send_time_test.lua
--   herald --db sendtime.db campaign activities send-time
--   herald --db sendtime.db why send-time reader-15
--
-- The holdout and arm A follow the campaign's schedule; arm B has a schedule of its own. Every
-- reader stays in one arm (by CohortId) for the whole test, and the holdout is recorded once
-- per run of the campaign's schedule.
local zones = { 'Europe/Paris', 'America/New_York', 'Asia/Tokyo' }
for i = 1, 60 do
  assert(herald.endpoints.put {
    Id = string.format('reader-%02d', i), ChannelType = 'EMAIL',
    Address = string.format('reader%02d@example.com', i),
    Demographic = { Timezone = zones[i % #zones + 1] },
  })
end

local body = 'Your saved articles are waiting.'
herald.campaign {
  name = 'send-time',
  segment = herald.segment { name = 'readers' },
  holdout = 10,
  schedule = { start = '2027-03-02T08:00:00', ['end'] = '2027-03-28T00:00:00', frequency = 'WEEKLY',
               is_local_time = true },
  quiet_time = { start = '22:00', ['end'] = '07:00' },
  treatments = {
    { name = 'A: Tuesday 08:00', size = 45, message = { subject = 'Start your week informed', body = body } },
    { name = 'B: Saturday 18:00', size = 45, message = { subject = 'Something for your weekend', body = body },
      schedule = { start = '2027-03-06T18:00:00', ['end'] = '2027-03-28T00:00:00', frequency = 'WEEKLY',
                   is_local_time = true } },
  },
  deliver = { file = 'send-time-messages.txt' },
}
