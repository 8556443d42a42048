-- bench/campaigns.sh helper: materialises one run of a campaign with a 10% holdout and three
-- treatments over every endpoint, and prints the seconds it took and the rows written.
local clock = require 'herald.core.clock'
local scheduler = require 'herald.scheduler'
local outbox = require 'herald.core.outbox'
local c = herald.campaign {
  name = 'bench', segment = herald.segment { name = 'all' }, holdout = 10,
  schedule = { start = '2099-01-01T00:00:00Z' },
  treatments = {
    { name = 'A', size = 30, message = { subject = 'A', body = 'a' } },
    { name = 'B', size = 30, message = { subject = 'B', body = 'b' } },
    { name = 'C', size = 30, message = { subject = 'C', body = 'c' } },
  },
}
local at = c:schedule():run(0).ms
local t0 = clock.now()
local start = os.clock()
-- as the runner does it: the run's specification, then the writer (no Lua filter here)
local spec = scheduler.materialize_spec(c.id, at, 0)
local run_id, created = outbox.materialize_run(spec)
local total = scheduler.materialized(run_id)
local wall = (clock.now() - t0) / 1000
assert(created, 'the run existed already')
io.write(string.format('%.3f %d %.3f\n', wall, total, os.clock() - start))
