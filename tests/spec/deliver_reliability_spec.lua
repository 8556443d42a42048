-- Delivery reliability against real servers: kill -9 at random moments of a large campaign,
-- and a sink that fails a fifth of its requests in every way a provider can.
--
-- The crash spec uses HERALD_CRASH_N endpoints (default 20,000 so the suite stays quick under
-- the sanitizer build). The full 100,000 of issue 5 is `bash bench/delivery.sh crash` (release
-- build, the same kill loop around the delivery path without the campaign file): `herald run`
-- cannot materialise 100,000 endpoints on this machine within the sandbox's 10 s step budget.
local h = require 'helpers'
local S = require 'servers'
local json = require 'herald.json'

local function query(dir, sql) return h.query(dir, 'd.db', sql) end

local function endpoints_csv(path, n)
  local f = assert(io.open(path, 'w'))
  f:write('Id,ChannelType,Address\n')
  for i = 1, n do f:write(string.format('ep-%06d,CUSTOM,hook-%d\n', i, i)) end
  f:close()
end

-- The most messages in flight at a kill: runner.lua's claim size times the delivery lanes
-- (providers' `lanes`, 4 unless the providers file says otherwise).
local IN_FLIGHT = 256 * 4

describe('delivery reliability', function()
  it('loses nothing and duplicates only keys the sink saw when killed -9 ten times', function()
    local n = tonumber(os.getenv('HERALD_CRASH_N') or '') or 20000
    local ng = S.start_nginx { tls = false }
    local ok, e = pcall(function()
      local dir = h.tmpdir()
      endpoints_csv(dir .. '/eps.csv', n)
      local _, code, err = h.herald('--db d.db import endpoints eps.csv', { cwd = dir })
      assert.are.equal(0, code, err)
      h.write(dir .. '/c.lua', [[
        herald.campaign { name = 'crash', segment = herald.segment { name = 'all' }, holdout = 10,
          message = { body = 'Hi {{Id}}' }, deliver = 'channels' }
      ]])
      h.write(dir .. '/providers.lua', string.format([[
        return { profiles = { hooks = { type = 'webhook', url = %q, connections = 20 } }, channels = { CUSTOM = 'hooks' } }
      ]], ng.url .. '/ok'))
      math.randomseed(os.time())
      local kills, mid, last_sent = 0, 0, 0
      -- Each kill lands at a random point of the sending: once the sink has logged a random
      -- number of further requests (up to a tenth of the audience), or at once if herald ends.
      for _ = 1, 10 do
        local target = last_sent + math.random(1, n // 10)
        local out = h.sh('cd ' .. h.shell_quote(dir) .. ' && (' .. h.shell_quote(h.exe)
          .. ' --db d.db run --until-idle c.lua >>out.txt 2>>err.txt & pid=$!; '
          .. 'while kill -0 $pid 2>/dev/null && [ "$(wc -l < ' .. h.shell_quote(ng.log) .. ')" -lt ' .. target .. ' ]; do sleep 0.01; done; '
          .. 'if kill -0 $pid 2>/dev/null; then kill -9 $pid; echo killed; fi; { wait $pid; } 2>/dev/null; true)')
        if out:find('killed') then
          kills = kills + 1
          local done = query(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'")
          local sent_now = done[1] and done[1].n or 0
          if sent_now < n * 9 // 10 then mid = mid + 1 end
        end
        last_sent = tonumber((h.sh('wc -l < ' .. h.shell_quote(ng.log)))) or last_sent
      end
      local _, code2, err2 = h.herald('--db d.db run --until-idle c.lua', { cwd = dir })
      assert.are.equal(0, code2, err2)

      local rows = query(dir, "SELECT o.message_id, o.state, o.reason FROM outbox o")
      assert.are.equal(n, #rows)
      local lines, keys, distinct = 0, {}, 0
      for _, r in ipairs(ng:requests()) do
        if r.uri == '/ok' and r.key then
          lines = lines + 1
          if not keys[r.key] then distinct = distinct + 1 end
          keys[r.key] = (keys[r.key] or 0) + 1
        end
      end
      local sent, holdout = 0, 0
      for _, r in ipairs(rows) do
        if r.state == 'SENT' then
          sent = sent + 1
          assert.is_truthy(keys[r.message_id], 'no request carried ' .. r.message_id)
        else
          assert.are.equal('SKIPPED', r.state)
          assert.are.equal('HOLDOUT', r.reason)
          assert.is_nil(keys[r.message_id])
          holdout = holdout + 1
        end
      end
      assert.are.equal(n, sent + holdout)
      assert.are.equal(sent, distinct)
      local dups = lines - distinct
      io.stderr:write(string.format('\n  crash: %d endpoints, %d kills (%d while sending), %d sent, %d duplicate requests (bound %d)\n',
        n, kills, mid, sent, dups, kills * IN_FLIGHT))
      assert.is_true(mid >= 8, 'only ' .. mid .. ' kills landed while messages were being sent')
      assert.is_true(dups <= kills * IN_FLIGHT)
    end)
    ng:stop()
    assert(ok, e)
  end)

  it('delivers each message once or dead-letters it when a fifth of requests fail in every way', function()
    -- nginx's $request_id is random hex per request: 3 of 16 first digits (~19%) meet a fault,
    -- chosen by the second digit: 429 with Retry-After, 500, 503, a reset connection (444), or
    -- a stall past the client's timeout. A message can meet several faults over its attempts.
    local ng = S.start_nginx { tls = false, locations = [[
      location = /flaky {
        if ($request_id ~ "^[0-2][0-2]") { rewrite ^ /fault429 last; }
        if ($request_id ~ "^[0-2][3-5]") { return 500 "broken\n"; }
        if ($request_id ~ "^[0-2][6-8]") { return 503 "unavailable\n"; }
        if ($request_id ~ "^[0-2][9ab]") { return 444; }
        if ($request_id ~ "^[0-2]") { rewrite ^ /stall last; }
        return 200 "ok\n";
      }
      location = /fault429 { internal; add_header Retry-After 1 always; return 429 "slow down\n"; }
      location = /stall { internal; echo_sleep 3; echo "late"; }
    ]] }
    local ok, e = pcall(function()
      local dir = h.tmpdir()
      endpoints_csv(dir .. '/eps.csv', 500)
      local _, code, err = h.herald('--db d.db import endpoints eps.csv', { cwd = dir })
      assert.are.equal(0, code, err)
      h.write(dir .. '/c.lua', [[
        herald.campaign { name = 'faults', segment = herald.segment { name = 'all' },
          message = { body = 'Hi {{Id}}' }, deliver = 'channels' }
      ]])
      h.write(dir .. '/providers.lua', string.format([[
        return { profiles = { hooks = { type = 'webhook', url = %q, connections = 20, timeout_ms = 500 } },
                 channels = { CUSTOM = 'hooks' }, retry = { max_attempts = 4, min_ms = 50, max_ms = 200 },
                 pause_after = 1000 }
      ]], ng.url .. '/flaky'))
      local _, code2, err2 = h.herald('--db d.db run --until-idle c.lua', { cwd = dir })
      assert.are.equal(0, code2, err2)
      local rows = query(dir, "SELECT message_id, state, reason, attempts FROM outbox")
      local delivered = {}
      local by_key = {}
      for _, r in ipairs(ng:requests()) do
        if r.key then
          by_key[r.key] = (by_key[r.key] or 0) + 1
          if r.status == 200 and r.uri == '/flaky' then delivered[r.key] = (delivered[r.key] or 0) + 1 end
        end
      end
      local sent, dead = 0, 0
      for _, r in ipairs(rows) do
        assert.is_true(r.attempts >= 1 and r.attempts <= 4, 'attempts ' .. r.attempts)
        -- libcurl resends a request once by itself when a reused connection turns out closed
        -- before any reply (nginx's 444), so the sink may log two requests for one attempt.
        assert.is_true((by_key[r.message_id] or 0) <= 2 * 4, 'requests for one message ' .. tostring(by_key[r.message_id]))
        if r.state == 'SENT' then
          sent = sent + 1
          assert.are.equal(1, delivered[r.message_id])
        else
          assert.are.equal('FAILED', r.state)
          assert.matches('^DEAD_LETTER: 4 attempts', r.reason)
          assert.is_nil(delivered[r.message_id])
          dead = dead + 1
        end
      end
      assert.are.equal(500, sent + dead)
      local failed_requests = 0
      for _, r in ipairs(ng:requests()) do
        if r.status ~= 200 then failed_requests = failed_requests + 1 end
      end
      -- the faults happened (about a fifth of all requests) and most messages got through
      assert.is_true(failed_requests > 50, failed_requests .. ' failed requests')
      assert.is_true(sent > 480, sent .. ' sent')
    end)
    ng:stop()
    assert(ok, e)
  end)
end)

-- Several processes on one store (two `herald run`, or containers sharing a volume): rows in
-- flight belong to a claimer, a random token with a heartbeat (runtime/claimer.c), not to a
-- pid that another PID namespace reuses.
describe('processes sharing a store', function()
  local task = require 'herald.core.task'
  local q = h.shell_quote
  local ng

  setup(function()
    ng = S.start_nginx { tls = false, locations = [[
      location = /half { echo_sleep 0.5; echo "done"; }
      location = /five { echo_sleep 5; echo "done"; }
    ]] }
  end)
  teardown(function() if ng then ng:stop() end end)

  local function count(dir, where)
    return query(dir, 'SELECT count(*) AS n FROM outbox WHERE ' .. where)[1].n
  end

  local function campaign(dir, n, path, connections)
    endpoints_csv(dir .. '/eps.csv', n)
    local _, code, err = h.herald('--db d.db import endpoints eps.csv', { cwd = dir })
    assert.are.equal(0, code, err)
    h.write(dir .. '/c.lua', [[
      herald.campaign { name = 'shared', segment = herald.segment { name = 'all' },
        message = { body = 'Hi {{Id}}' }, deliver = 'channels' }
    ]])
    h.write(dir .. '/providers.lua', string.format([[
      return { profiles = { hooks = { type = 'webhook', url = %q, connections = %d } }, channels = { CUSTOM = 'hooks' } }
    ]], ng.url .. path, connections))
  end

  -- each look at the store is a herald process: every 250 ms is often enough
  local function poll(pred, ms, what) return h.wait_for(pred, ms, what, 250) end

  local function running(pid) return select(2, h.sh('kill -0 ' .. pid .. ' 2>/dev/null')) == 0 end

  -- Starts `[prefix] herald --db d.db ARGS` in dir in the background, under a shell that waits
  -- for it so that its end is reaped at once; name.out and name.err get its output. Returns
  -- the pid of what was started (prefix's, when there is one).
  local started = {}
  local function start(dir, name, args, prefix)
    local cmd = (prefix or '') .. q(h.exe) .. ' --db d.db ' .. args .. ' >' .. name .. '.out 2>' .. name .. '.err'
    h.sh('cd ' .. q(dir) .. ' && (sh -c ' .. q(cmd .. ' & echo $! >' .. name .. '.pid; wait') .. ' >/dev/null 2>&1 &)')
    local pid = tonumber(poll(function() return (h.read(dir .. '/' .. name .. '.pid') or ''):match('%d+') end,
      5000, name .. ' to start'))
    started[#started + 1] = pid
    return pid
  end

  -- In a PID namespace of its own, herald is pid 1 there and unshare's child here. unshare
  -- ignores SIGTERM; when it is killed, herald gets SIGTERM.
  local NEW_NS = 'unshare -pf --mount-proc --kill-child=TERM '

  after_each(function()
    for _, pid in ipairs(started) do
      if running(pid) then h.sh('kill -9 ' .. pid) end
    end
    started = {}
  end)

  -- Stops herald started as pid (its prefix's child, when it has one) as SIGTERM does.
  local function stop(pid)
    local child = tonumber((h.sh('pgrep -P ' .. pid)):match('%d+'))
    h.sh('kill -TERM ' .. (child or pid) .. ' 2>/dev/null')
    poll(function() return not running(pid) end, 30000, 'herald to stop')
  end

  -- The 200 responses nginx gave, by idempotency key.
  local function delivered()
    local keys = {}
    for _, r in ipairs(ng:requests()) do
      if r.key and r.status == 200 then keys[r.key] = (keys[r.key] or 0) + 1 end
    end
    return keys
  end

  local function unshare_usable()
    local _, code = h.sh('unshare -pf --mount-proc true >/dev/null 2>&1')
    if code == 0 then return true end
    io.stderr:write('\n  skipped: `unshare -pf --mount-proc` is not usable here (it needs root or user'
      .. ' namespaces); the liveness rules are still checked with claimers written in the store\n')
    return false
  end

  -- Starts `herald run --until-idle c.lua [args]` in dir (env before it) so that it can be made
  -- to fail its writes: once all n rows are claimed and on the wire, herald may write no more
  -- than 4 KB into any file, so SQLite can no longer write its log, as on a full disk. SIGXFSZ
  -- is ignored, so writes fail instead of killing herald. Returns its pid once it says the
  -- outcomes wait; a.err gets its output and then "rc=N".
  local function run_on_failing_disk(dir, n, env, args)
    local cmd = 'trap "" XFSZ; echo $$ >a.pid; ' .. (env or '') .. ' exec ' .. q(h.exe)
      .. ' --db d.db run --until-idle ' .. (args or '') .. ' c.lua'
    h.sh('cd ' .. q(dir) .. ' && ({ sh -c ' .. q(cmd) .. ' 2>&1; echo rc=$?; } | cat >a.err &) >/dev/null 2>&1')
    local pid = tonumber(poll(function() return (h.read(dir .. '/a.pid') or ''):match('%d+') end, 5000,
      'herald to start'))
    started[#started + 1] = pid
    poll(function() return count(dir, "state = 'CLAIMED'") == n end, 30000, 'herald to claim the run')
    local _, code, err = h.sh('python3 -c ' .. q('import resource; resource.prlimit(' .. pid
      .. ', resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))'))
    assert.are.equal(0, code, err)
    poll(function() return (h.read(dir .. '/a.err') or ''):find('outcomes wait here', 1, true) end, 30000,
      'herald to wait with the outcomes')
    return pid
  end

  local function ended(dir)
    poll(function() return (h.read(dir .. '/a.err') or ''):find('rc=', 1, true) end, 60000, 'herald to end')
    return h.read(dir .. '/a.err')
  end

  it('waits with sent messages for a store that fails under them (disk full), then records them: none sent twice', function()
    local dir = h.tmpdir()
    ng:clear_log()
    campaign(dir, 100, '/five', 100)
    local pid = run_on_failing_disk(dir, 100)
    -- the messages are out, not yet recorded
    assert.are.equal(100, count(dir, "state = 'CLAIMED'"))
    task.sleep(1500)
    local _, code, err = h.sh('python3 -c ' .. q('import resource; resource.prlimit(' .. pid
      .. ', resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))'))
    assert.are.equal(0, code, err)
    local out = ended(dir)
    assert.matches('rc=0\n', out, 1, true)
    assert.matches('herald: recording %d+ outcomes failed, trying again %(the messages are out, their outcomes '
      .. 'wait here%): .*disk I/O error', out)
    assert.matches('herald: recording %d+ outcomes: written after %d+ tries', out)
    assert.are.equal(100, count(dir, "state = 'SENT'"))
    assert.are.equal('COMPLETED', query(dir, 'SELECT state FROM campaign_runs')[1].state)
    local keys, requests = delivered(), 0
    for _, r in ipairs(query(dir, 'SELECT message_id FROM outbox')) do
      assert.are.equal(1, keys[r.message_id], 'delivered ' .. tostring(keys[r.message_id]) .. ' times: ' .. r.message_id)
    end
    for _ in pairs(keys) do requests = requests + 1 end
    assert.are.equal(100, requests)
    -- the same store again: nothing was left in doubt to send a second time
    local _, code2, err2 = h.herald('--db d.db run --until-idle c.lua', { cwd = dir })
    assert.are.equal(0, code2, err2)
    assert.is_nil(err2:find('recovered', 1, true), err2)
    assert.are.equal(100, #ng:requests())
  end)

  it('gives up on outcomes the store refuses past its patience, on a manual clock too, and says they are in doubt', function()
    local dir = h.tmpdir()
    ng:clear_log()
    campaign(dir, 100, '/five', 100)
    -- the manual clock stands still while herald waits: the patience is real time
    run_on_failing_disk(dir, 100, 'HERALD_STORE_PATIENCE_MS=2000', '--clock-start 2026-01-01T00:00:00Z')
    local out = ended(dir)
    assert.matches('rc=1\n', out, 1, true)
    assert.matches('herald run: delivering: the store failed %(no fault of the campaigns%), giving up: .*disk I/O error', out)
    assert.matches('herald run: 100 messages were sent but the store refused their outcomes: their rows stay '
      .. 'CLAIMED, and the next start sends them again\n', out, 1, true)
    assert.are.equal(100, count(dir, "state = 'CLAIMED'"))
  end)

  it('says which outcomes a stop left unwritten when the store refuses them, and fails the run', function()
    local dir = h.tmpdir()
    ng:clear_log()
    campaign(dir, 100, '/five', 100)
    local pid = run_on_failing_disk(dir, 100)
    h.sh('kill -TERM ' .. pid)
    local out = ended(dir)
    assert.matches('rc=1\n', out, 1, true)
    assert.matches('herald run: 100 messages were sent but the store refused their outcomes', out, 1, true)
    assert.matches('stopped: run again to continue', out, 1, true)
    assert.is_nil(out:find('work in hand was written', 1, true), out)
  end)

  it('gives back the rows of a process killed -9 while another runs, without a restart', function()
    local dir = h.tmpdir()
    ng:clear_log()
    campaign(dir, 200, '/half', 5)
    local a = start(dir, 'a', 'run c.lua')
    poll(function() return count(dir, "state = 'CLAIMED'") == 200 end, 30000, 'A to claim the run')
    local b = start(dir, 'b', 'run c.lua')
    -- B registers at its first heartbeat: both are live claimers, and A's rows stay A's
    local claimers = poll(function()
      local rows = query(dir, 'SELECT id, token, pid FROM claimers ORDER BY id')
      return #rows == 2 and rows
    end, 20000, 'B to register as a claimer')
    assert.are.same({ a, b }, { claimers[1].pid, claimers[2].pid })
    assert.are_not.equal(claimers[1].token, claimers[2].token)
    assert.are.equal(0, count(dir, "state = 'CLAIMED' AND claimed_by <> " .. claimers[1].id))
    local in_flight = count(dir, "state = 'CLAIMED'")
    assert.is_true(in_flight > 0, 'A sent everything before it was killed')

    h.sh('kill -9 ' .. a)
    local killed = task.now()
    poll(function() return count(dir, "state = 'CLAIMED' AND claimed_by = " .. claimers[1].id) == 0 end,
      60000, "A's rows to be given back")
    -- in B's own PID namespace A's pid is gone: B gives its rows back at its next heartbeat
    local took = task.now() - killed
    assert.is_true(took < 15000, 'given back after ' .. took .. ' ms')
    poll(function() return count(dir, "state = 'SENT'") == 200 end, 60000, 'B to send the rest')
    poll(function() return query(dir, 'SELECT state FROM campaign_runs')[1].state == 'COMPLETED' end,
      10000, 'the run to complete')
    stop(b)
    assert.matches('recovered %d+ in%-doubt messages of a process that stopped', h.read(dir .. '/b.err'))
    local keys = delivered()
    for _, r in ipairs(query(dir, 'SELECT message_id FROM outbox')) do
      assert.is_truthy(keys[r.message_id], 'never delivered: ' .. r.message_id)
    end
  end)

  it('leaves the rows of a live process in another PID namespace alone, both being pid 1', function()
    if not unshare_usable() then
      pending('unshare -pf --mount-proc is not usable')
      return
    end
    local dir = h.tmpdir()
    ng:clear_log()
    campaign(dir, 100, '/five', 100)
    local a = start(dir, 'a', 'run --until-idle --verbose c.lua', NEW_NS)
    poll(function() return count(dir, "state = 'CLAIMED'") == 100 end, 30000, 'A to claim the run')
    assert.are.equal(1, query(dir, 'SELECT pid FROM claimers')[1].pid)
    local b = start(dir, 'b', 'run --until-idle --verbose c.lua', NEW_NS)
    poll(function() return not running(a) and not running(b) end, 60000, 'A and B to finish')
    -- B started, looked and ended while A's messages were in flight, and left them to A
    local b_out = h.read(dir .. '/b.out')
    assert.matches('CLAIMED 100', b_out)
    assert.is_nil(b_out:find('recovered', 1, true))
    assert.are.equal(100, count(dir, "state = 'SENT'"))
    assert.are.same({ 100, 100 }, { ng:key_counts('/five') })
  end)

  it('gives back the rows of a process killed in another PID namespace once its heartbeat is old', function()
    if not unshare_usable() then
      pending('unshare -pf --mount-proc is not usable')
      return
    end
    local dir = h.tmpdir()
    ng:clear_log()
    campaign(dir, 100, '/slow', 10)
    local a = start(dir, 'a', 'run c.lua', NEW_NS)
    poll(function() return count(dir, "state = 'CLAIMED'") == 100 end, 30000, 'A to claim the run')
    local mine = "state = 'CLAIMED' AND claimed_by = " .. query(dir, 'SELECT id FROM claimers')[1].id
    local b = start(dir, 'b', 'run c.lua', NEW_NS)
    poll(function() return query(dir, 'SELECT count(*) AS n FROM claimers')[1].n == 2 end, 20000,
      'B to register as a claimer')
    assert.is_true(count(dir, mine) > 0, 'A sent everything before it was killed')
    h.sh('kill -9 $(pgrep -P ' .. a .. ')')
    local killed = task.now()
    poll(function() return count(dir, mine) == 0 end, 90000, "A's rows to be given back")
    -- B cannot see A's pid: it waits for A's heartbeat to be 45 s old
    local took = task.now() - killed
    assert.is_true(took >= 30000 and took <= 60000, 'given back after ' .. took .. ' ms')
    poll(function() return count(dir, "state = 'SENT'") == 100 end, 60000, 'B to send them')
    stop(b)
    assert.matches('recovered %d+ in%-doubt messages of a process that stopped', h.read(dir .. '/b.err'))
  end)

  -- A script that makes campaign `cl` with n messages (in one run) and claims them.
  local function claimed(n)
    return string.format([[
      local outbox = require 'herald.core.outbox'
      local rows = {}
      for i = 1, %d do
        assert(herald.endpoints.put { Id = 'e' .. i, ChannelType = 'CUSTOM', Address = 'x' .. i })
        rows[i] = { endpoint_id = 'e' .. i, treatment = 0, channel = 'CUSTOM', address = 'x' .. i, due_ms = 1000 }
      end
      outbox.define_campaign('cl', 'cl', herald.json.encode {
        Name = 'cl', TreatmentName = 't', AdditionalTreatments = herald.json.array {},
        MessageConfiguration = { DefaultMessage = { Body = 'b' } } })
      local seq = outbox.trigger_cursor('cl')
      outbox.trigger { campaign_id = 'cl', version = 1, now_ms = 1000, from_seq = seq, to_seq = seq + 1, rows = rows }
      assert(#outbox.claim(herald.now_ms(), 100, '["cl"]') == %d)
    ]], n, n)
  end

  it('takes a claimer for dead by its heartbeat, or by its pid only in the same PID namespace', function()
    local dir = h.tmpdir()
    h.write(dir .. '/claim.lua', claimed(8))
    local _, code, err = h.herald('--db d.db claim.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    -- the script registered itself; it has ended, so its pid is gone from this namespace
    local me = query(dir, 'SELECT id, pid, pid_ns FROM claimers')
    assert.are.equal(1, #me)
    me = me[1]
    assert.is_truthy(me.pid_ns, 'no PID namespace read from /proc')
    local now = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    h.sqlite(dir, 'd.db', string.format([[
      INSERT INTO claimers(id, token, host, pid, pid_ns, started_ms, heartbeat_ms) VALUES
        (101, 'alive', 'h', 1, '%s', 0, %s),
        (102, 'pid 1 elsewhere', 'h', 1, 'another-boot/4:1', 0, %s),
        (103, 'gone pid elsewhere', 'h', %d, 'another-boot/4:1', 0, %s),
        (104, 'stale', 'h', 1, '%s', 0, %s - 46000),
        (105, 'no namespace', 'h', %d, NULL, 0, %s);
      UPDATE outbox SET claimed_by = CASE endpoint_id WHEN 'e3' THEN 101 WHEN 'e4' THEN 102
        WHEN 'e5' THEN 103 WHEN 'e6' THEN 104 WHEN 'e7' THEN NULL WHEN 'e8' THEN 105
        ELSE claimed_by END;
    ]], me.pid_ns, now, now, me.pid, now, me.pid_ns, now, me.pid, now))
    local out, code2, err2 = h.herald('--db d.db -e "print(require(\'herald.core.outbox\').recover())"', { cwd = dir })
    assert.are.equal(0, code2, err2)
    -- e1, e2: the script's, its pid gone here; e6: a heartbeat 46 s old although pid 1 lives;
    -- e7: claimed by no claimer. Kept: a live pid here, pid 1 of another namespace, a gone pid
    -- number of another namespace, and one whose namespace is not known.
    assert.are.equal('4', out:match('%d+'))
    assert.are.same({ { endpoint_id = 'e3' }, { endpoint_id = 'e4' }, { endpoint_id = 'e5' }, { endpoint_id = 'e8' } },
      query(dir, "SELECT endpoint_id FROM outbox WHERE state = 'CLAIMED' ORDER BY endpoint_id"))
    assert.are.same({ { id = 101 }, { id = 102 }, { id = 103 }, { id = 105 } },
      query(dir, 'SELECT id FROM claimers ORDER BY id'))
  end)

  it('does not let a process taken for dead settle the rows given back meanwhile', function()
    local dir = h.tmpdir()
    h.write(dir .. '/claim.lua', claimed(3) .. string.format([[
      -- this process stalls: another sees its heartbeat 46 s old and gives its rows back
      assert(os.execute("sqlite3 d.db 'UPDATE claimers SET heartbeat_ms = heartbeat_ms - 46000'"))
      assert(os.execute(%q .. " --db d.db -e \"assert(require('herald.core.outbox').recover() == 3)\""))
      local rows = herald.db.query("SELECT id FROM outbox ORDER BY id")
      -- its late outcomes are passed over: the rows may be in flight elsewhere now
      outbox.report_batch { { id = rows[1].id, state = 'FAILED', reason = 'PERMANENT: late' },
                            { id = rows[2].id, state = 'PENDING', due_ms = herald.now_ms() + 3600000, reason = 'RETRY: late' } }
      require('herald.core.deliver').defer_batch { { id = rows[3].id, due_ms = 9000 } }
      -- claimed again, under a claimer of its own again, they are its own
      local again = outbox.claim(herald.now_ms(), 100, '["cl"]')
      assert(#again == 3)
      local reports = {}
      for i, r in ipairs(again) do reports[i] = { id = r.id, state = 'SENT' } end
      outbox.report_batch(reports)
    ]], h.exe))
    local _, code, err = h.herald('--db d.db claim.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.same({ { state = 'SENT', attempts = 2 }, { state = 'SENT', attempts = 2 }, { state = 'SENT', attempts = 2 } },
      query(dir, 'SELECT state, attempts FROM outbox ORDER BY id'))
    assert.are.equal(1, query(dir, 'SELECT count(*) AS n FROM claimers')[1].n)
  end)
end)
