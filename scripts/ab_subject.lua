-- An A/B test of two subject lines with a 10% holdout, then the statistics.
--
--   herald --db ab.db run --until-idle scripts/ab_subject.lua
--   herald --db ab.db campaign activities subject-test
--
-- Arms follow each endpoint's CohortId (0-99, fixed at creation): cohorts 0-9 are the holdout,
-- 10-54 get subject A, 55-99 subject B, in every run and every version of the campaign.
for i = 1, 400 do
  assert(herald.endpoints.put {
    Id = string.format('shopper-%03d', i), ChannelType = 'EMAIL',
    Address = string.format('shopper%03d@example.com', i),
    OptOut = i % 40 == 0 and 'ALL' or 'NONE',
  })
end

herald.campaign {
  name = 'subject-test',
  segment = herald.segment { name = 'shoppers' },
  holdout = 10,
  treatments = {
    { name = 'A: discount', size = 45,
      message = { subject = '20% off everything this weekend', body = 'Use code WEEKEND20.' } },
    { name = 'B: curiosity', size = 45,
      message = { subject = 'We picked something for you', body = 'Use code WEEKEND20.' } },
  },
  deliver = { file = 'ab-messages.txt' },
}
