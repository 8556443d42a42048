-- An A/B test that picks its winner by itself: 20% of the audience (outside a 10% holdout)
-- gets subject A or B; four hours later the treatment with the better click rate goes to the
-- rest. When neither wins significantly at alpha 0.05, the leader is sent (send_best; the
-- other policies are send_default, treatment A, and stop, which sends the rest nothing).
--
-- In one go on a manual clock (test share at 09:00, decision and the rest at 13:00):
--   herald --db ab.db run --verbose --until-idle --clock-start 2026-12-01T09:00:00Z scripts/ab_winner.lua
-- or in two phases, with clicks arriving in between:
--   herald --db ab.db run --verbose --until 2026-12-01T10:00:00Z --clock-start 2026-12-01T09:00:00Z scripts/ab_winner.lua
--   herald --db ab.db why ab-winner reader-050          # WAITING: held back for the decision
--   ... clicks arrive (herald serve, tracking links) ...
--   herald --db ab.db run --verbose --until-idle --clock-start 2026-12-01T10:00:00Z scripts/ab_winner.lua
--   herald --db ab.db report ab-winner                  # figures, and the decision with its numbers
--
-- The test share is the first 20% of each treatment's cohorts (CohortId, fixed per endpoint):
-- cohorts 0-9 are the holdout, 10-18 test A, 55-63 test B, the others wait for the decision.
-- With min_sample, the run is decided before the four hours are up as soon as both arms have
-- 30 deliveries and one of them already wins significantly.
for i = 1, 500 do
  assert(herald.endpoints.put {
    Id = string.format('reader-%03d', i), ChannelType = 'EMAIL',
    Address = string.format('reader%03d@example.com', i),
  })
end

herald.campaign {
  name = 'ab-winner',
  segment = herald.segment { name = 'readers' },
  schedule = '2026-12-01T09:00:00Z',
  holdout = 10,
  treatments = {
    { name = 'A: discount', size = 45,
      message = { subject = '20% off everything this weekend', body = 'Use code WEEKEND20.' } },
    { name = 'B: curiosity', size = 45,
      message = { subject = 'We picked something for you', body = 'Use code WEEKEND20.' } },
  },
  winner = { test_percent = 20, metric = 'clicks', decide_after = '4h', min_sample = 30,
             alpha = 0.05, policy = 'send_best' },
  deliver = { file = 'ab-winner-messages.txt' },
}
