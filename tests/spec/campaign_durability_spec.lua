-- Durable runs: kill -9 of the herald process during materialisation and between runs, then
-- restart: no run is lost, duplicated or half-materialised.
local h = require 'helpers'

local function q(dir, sql) return h.query(dir, 'c.db', sql) end

-- count endpoints through the sqlite3 tool (a recursive CTE), cohorts spread evenly
local function populate(dir, count)
  h.sqlite(dir, 'c.db', string.format([[
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d)
    INSERT INTO endpoints(app_id, id, channel_type, address, cohort_id, effective_date, creation_date)
    SELECT 'default', printf('e%%07d', i), 'EMAIL', printf('u%%07d@example.com', i), i %% 100,
      '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z' FROM n;]], count))
end

-- Starts herald run in the background, kills it with SIGKILL after `delay` seconds.
local function run_and_kill(dir, args, delay)
  local out, code = h.sh('cd ' .. h.shell_quote(dir) .. ' && (' .. h.shell_quote(h.exe) ..
    ' --db c.db run ' .. args .. ' >> out.log 2>> err.log & pid=$!; sleep ' .. delay ..
    '; kill -9 $pid; wait $pid; echo "rc=$?") 2>/dev/null')
  assert.are.equal(0, code, out)
end

-- Every run is whole: its recorded total equals its rows, and equals the audience.
local function assert_runs_whole(dir, audience)
  for _, r in ipairs(q(dir, [[SELECT r.id, r.total, r.state, (SELECT count(*) FROM outbox o WHERE o.run_id = r.id) AS rows
      FROM campaign_runs r]])) do
    assert.are.equal(audience, r.rows, 'run ' .. r.id .. ' is half-materialised')
    assert.are.equal(r.total, r.rows)
  end
end

describe('kill -9', function()
  it('during materialisation leaves no run or a whole one, and the restart finishes it once', function()
    local dir = h.tmpdir()
    local N = 60000
    populate(dir, N)
    h.write(dir .. '/big.lua', [[
      herald.campaign{ name = 'big', segment = herald.segment{ name = 'all' }, holdout = 98,
        message = { body = 'hello' }, deliver = { file = 'out.txt' } }
    ]])
    local seen_none, seen_whole, kills = false, false, 0
    for _, delay in ipairs({ '0.3', '0.8', '1.5', '2.5' }) do
      run_and_kill(dir, 'big.lua', delay)
      local runs = q(dir, 'SELECT count(*) AS n FROM campaign_runs')[1].n
      assert.is_true(runs <= 1)
      if runs == 0 then seen_none = true else seen_whole = true end
      kills = kills + 1
      assert_runs_whole(dir, N)
    end
    assert.are.equal(4, kills)
    local _, code, err = h.herald('--db c.db run --until-idle big.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal(1, q(dir, 'SELECT count(*) AS n FROM campaign_runs')[1].n)
    assert_runs_whole(dir, N)
    local sent = q(dir, "SELECT count(*) AS n, count(DISTINCT endpoint_id) AS d FROM outbox WHERE state = 'SENT'")[1]
    assert.are.equal(N * 2 / 100, sent.n)
    assert.are.equal(sent.n, sent.d)
    -- a message interrupted between writing and recording is retried with the same id: the
    -- file may repeat an id, but holds every sent one and no other
    local ids = {}
    for id in h.read(dir .. '/out.txt'):gmatch('%-%-%- message (%S+)') do ids[id] = true end
    local distinct = 0
    for _ in pairs(ids) do distinct = distinct + 1 end
    assert.are.equal(sent.n, distinct)
  end)

  it('between runs of a recurring campaign loses and repeats no run', function()
    local dir = h.tmpdir()
    local N = 2000
    populate(dir, N)
    h.write(dir .. '/hourly.lua', [[
      herald.campaign{ name = 'hourly', segment = herald.segment{ name = 'all' }, holdout = 90,
        schedule = { start = '2027-01-01T00:00:00Z', ['end'] = '2027-01-02T00:00:00Z', frequency = 'HOURLY' },
        message = { body = 'tick' }, deliver = { file = 'out.txt' } }
    ]])
    for _, delay in ipairs({ '0.5', '1', '1.5', '2' }) do
      run_and_kill(dir, '--until-idle --clock-start 2026-12-31T23:59:00Z hourly.lua', delay)
      assert_runs_whole(dir, N)
    end
    local _, code, err = h.herald('--db c.db run --until-idle --clock-start 2026-12-31T23:59:00Z hourly.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local runs = q(dir, 'SELECT count(*) AS n, count(DISTINCT scheduled_ms) AS d, min(run_index) AS lo, max(run_index) AS hi'
      .. " FROM campaign_runs WHERE state = 'COMPLETED'")[1]
    assert.are.same({ n = 25, d = 25, lo = 0, hi = 24 }, runs)
    assert_runs_whole(dir, N)
    assert.are.equal(25 * 200, q(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'")[1].n)
  end)
end)
