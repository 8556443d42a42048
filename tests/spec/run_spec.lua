local h = require 'helpers'
local S = require 'servers'

local function quickstart(dir)
  return h.herald('--db q.db run --until-idle ' .. h.shell_quote(h.root .. '/scripts/quickstart.lua'),
    { cwd = dir })
end

local function query(dir, sql)
  local out, code, err = h.herald("--db q.db -e " .. h.shell_quote(
    "for _, r in ipairs(herald.db.query([[" .. sql .. "]])) do print(r.n) end"), { cwd = dir })
  assert.are.equal(0, code, err)
  return tonumber(out:match('%d+'))
end

describe('herald run', function()
  it('runs the quickstart: holdout gets nothing, every other member gets one message', function()
    local dir = h.tmpdir()
    local out, code, err = quickstart(dir)
    assert.are.equal(0, code, err)
    assert.matches('campaign winter%-reading %(version 1%)', out)
    assert.matches('holdout', out)

    local messages = h.read(dir .. '/quickstart-messages.txt')
    local sent = query(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'")
    local holdout = query(dir, "SELECT count(*) AS n FROM outbox WHERE reason = 'HOLDOUT'")
    local optout = query(dir, "SELECT count(*) AS n FROM outbox WHERE reason = 'OPT_OUT'")
    assert.is_true(sent > 0 and holdout > 0 and optout > 0)
    assert.are.equal(sent, h.count(messages, '--- message '))
    -- every holdout endpoint's address is absent from what was delivered
    local out2 = h.herald("--db q.db -e " .. h.shell_quote([[
      for _, r in ipairs(herald.db.query("SELECT o.address FROM outbox o WHERE o.reason = 'HOLDOUT'")) do
        print(r.address)
      end]]), { cwd = dir })
    for addr in out2:gmatch('[^\n]+') do
      assert.is_nil(messages:find('to: ' .. addr, 1, true), addr .. ' is in the holdout')
    end
    -- arms follow the cohort: holdout = cohorts 0-9, A = 10-54, B = 55-99
    local misplaced = query(dir, [[SELECT count(*) AS n FROM outbox o JOIN endpoints e ON e.id = o.endpoint_id
      WHERE NOT ((o.treatment = -1 AND e.cohort_id < 10) OR (o.treatment = 0 AND e.cohort_id BETWEEN 10 AND 54)
             OR (o.treatment = 1 AND e.cohort_id >= 55))]])
    assert.are.equal(0, misplaced)
  end)

  it('sends nothing twice when run again', function()
    local dir = h.tmpdir()
    local _, code, err = quickstart(dir)
    assert.are.equal(0, code, err)
    local first = h.read(dir .. '/quickstart-messages.txt')
    local out, code2, err2 = quickstart(dir)
    assert.are.equal(0, code2, err2)
    assert.are.equal(first, h.read(dir .. '/quickstart-messages.txt'))
    assert.matches('campaign winter%-reading %(version 1%)', out)
    assert.are.equal(1, query(dir, 'SELECT count(*) AS n FROM campaign_runs'))
  end)

  it('stops cleanly on SIGTERM and SIGINT', function()
    for _, sig in ipairs({ 'TERM', 'INT' }) do
      local dir = h.tmpdir()
      h.write(dir .. '/later.lua', [[
        herald.endpoints.put{ Id = 'a', ChannelType = 'EMAIL', Address = 'a@example.com' }
        herald.campaign{ name = 'later', segment = herald.segment{ name = 'all' },
          schedule = { start = '2099-01-01T00:00:00Z' }, message = { body = 'hi' } }
      ]])
      local out, code = h.sh('cd ' .. h.shell_quote(dir) .. ' && (' .. h.shell_quote(h.exe) ..
        ' --db q.db run later.lua > out.txt 2> err.txt & pid=$!; sleep 1; kill -' .. sig ..
        ' $pid; wait $pid; echo "rc=$?")')
      assert.are.equal(0, code)
      assert.matches('rc=0', out, 1, true)
      assert.matches('stopped', h.read(dir .. '/out.txt'))
    end
  end)

  it('stops at once on a second SIGTERM while a Lua channel holds the first, and the message is delivered after the restart', function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', [[
      assert(herald.endpoints.put{ Id = 'a', ChannelType = 'EMAIL', Address = 'a@example.com' })
      herald.campaign{ name = 'held', segment = herald.segment{ name = 'all' },
        message = { subject = 'Hi', body = 'Hi {{Id}}' }, deliver = 'channels' }
    ]])
    -- a send that waits on and on (within its bounds for an hour), after saying it started
    h.write(dir .. '/providers.lua', [[
      return { profiles = { stuck = { type = 'lua', max_seconds = 3600, send = function(m)
        local f = assert(io.open('started.txt', 'w')); f:close()
        while true do herald.sleep(50) end
      end } }, channels = { EMAIL = 'stuck' } }
    ]])
    local out = h.sh(table.concat({
      'cd ' .. h.shell_quote(dir),
      h.shell_quote(h.exe) .. ' --db q.db run c.lua > out.txt 2> err.txt & pid=$!',
      'for i in $(seq 200); do [ -f started.txt ] && break; sleep 0.05; done',
      'kill -TERM $pid; sleep 1',
      'kill -0 $pid 2> /dev/null && echo "running after the first"',
      'kill -TERM $pid; start=$(date +%s%N)',
      '(sleep 10; kill -KILL $pid 2> /dev/null) & dog=$!',
      'wait $pid; rc=$?; echo "rc=$rc after $(( ($(date +%s%N) - start) / 1000000 )) ms"',
      'kill $dog 2> /dev/null; wait $dog 2> /dev/null; true',
    }, '\n'))
    assert.matches('running after the first', out, 1, true)
    local rc, ms = out:match('rc=(%d+) after (%d+) ms')
    assert.are.equal('143', rc, out)
    assert.is_true(tonumber(ms) < 2000, ms .. ' ms to stop')
    -- nothing was lost: started again with a channel that delivers, the message goes out
    h.write(dir .. '/providers.lua', [[
      return { profiles = { ok = { type = 'lua', send = function(m)
        local f = assert(io.open('sent.txt', 'a')); f:write(m.address, '\n'); f:close()
        return true
      end } }, channels = { EMAIL = 'ok' } }
    ]])
    local _, code, err = h.herald('--db q.db run --until-idle c.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal('a@example.com\n', h.read(dir .. '/sent.txt'))
    assert.are.equal(1, query(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'"))
  end)

  it('takes a version stored by herald campaign load while it runs: new runs use it', function()
    local dir = h.tmpdir()
    h.endpoints_sql(dir, 'q.db', { { id = 'ep1', address = 'a@example.com' }, { id = 'ep2', address = 'b@example.com' } })
    -- v1: 'trig' fires on visits, 'later' is for 2099 with a hook, 'pred' fires on buys
    local function def(v, later_start, predicate)
      return string.format([[
        local all = herald.segment{ name = 'all' }
        herald.campaign{ name = 'trig', segment = all, deliver = { file = 'trig.txt' },
          schedule = { event = { types = { 'visit' } } }, message = { subject = 'trig %s', body = 'b' } }
        herald.campaign{ name = 'later', segment = all, deliver = { file = 'later.txt' }, schedule = %q,
          message = { subject = 'later %s', body = 'b' },
          hook = function(eps) local keep = {} for _, e in ipairs(eps) do if e.Id == 'ep1' then keep[#keep + 1] = e end end return keep end }
        herald.campaign{ name = 'pred', segment = all, deliver = { file = 'pred.txt' },
          schedule = { event = { types = { 'buy' }%s } }, message = { subject = 'pred %s', body = 'b' } }
      ]], v, later_start, v, predicate and ', predicate = function() return true end' or '', v)
    end
    h.write(dir .. '/c.lua', def('v1', '2099-01-01T00:00:00Z'))
    local inner = h.shell_quote(h.exe) .. ' --db q.db run --verbose c.lua > out.txt 2> err.txt & echo $! > pid; wait $!; echo $? > rc'
    os.execute('cd ' .. h.shell_quote(dir) .. ' && sh -c ' .. h.shell_quote(inner) .. ' > /dev/null 2>&1 &')
    local pid = h.wait_for(function() return tonumber((h.read(dir .. '/pid') or ''):match('%d+')) end, 5000, 'pid')
    finally(function() os.execute('kill -TERM ' .. pid .. ' 2> /dev/null') end)
    local function event(ep, type)
      local _, code, err = h.herald('--db q.db -e ' .. h.shell_quote(string.format([[assert(herald.events.put('%s',
        { EventId = '%s-%s', EventType = '%s', Timestamp = herald.time.format(require('herald.core.clock').now()) }))]],
        ep, ep, type, type)), { cwd = dir })
      assert.are.equal(0, code, err)
    end
    local function messages(file) return h.count(h.read(dir .. '/' .. file) or '', '--- message ') end
    h.wait_for(function() return #h.query(dir, 'q.db', "SELECT id FROM campaigns WHERE source IS NOT NULL") == 3 end,
      20000, 'the campaigns to load')
    event('ep1', 'visit')
    h.wait_for(function() return messages('trig.txt') == 1 end, 20000, 'the first triggered message')

    -- v2 is stored by another process: a new subject for each, 'later' due in a second, and
    -- 'pred' gets an event predicate, a Lua function the running process never loaded
    h.write(dir .. '/c.lua', def('v2', os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 1), true))
    local out, code, err = h.herald('--db q.db campaign load c.lua', { cwd = dir })
    assert.are.equal(0, code, err .. out)
    event('ep2', 'visit')
    event('ep1', 'buy')
    h.wait_for(function() return messages('trig.txt') == 2 and messages('later.txt') == 1 end, 20000,
      function() return 'v2 messages: ' .. (h.read(dir .. '/err.txt') or '') end)
    local trig = h.read(dir .. '/trig.txt')
    assert.are.equal(1, h.count(trig, 'subject: trig v1'))
    assert.are.equal(1, h.count(trig, 'subject: trig v2'))
    -- the hook it loaded still filters 'later'
    local later = h.read(dir .. '/later.txt')
    assert.matches('to: a@example.com (EMAIL)\nsubject: later v2\n', later, 1, true)
    local pred = h.wait_for(function()
      local r = h.query(dir, 'q.db', "SELECT state, error FROM campaigns WHERE id = 'pred'")[1]
      return r.state == 'INVALID' and r
    end, 20000, "'pred' to be INVALID")
    assert.matches('version 2, stored after this process loaded the campaign, cannot be run here: its event predicate is a'
      .. ' Lua function that this process did not load; restart herald run to run it', pred.error, 1, true)
    assert.are.same({ { campaign_id = 'later', v = 2 }, { campaign_id = 'trig', v = 1 }, { campaign_id = 'trig', v = 2 } },
      h.query(dir, 'q.db', 'SELECT campaign_id, campaign_version AS v FROM campaign_runs ORDER BY campaign_id, id'))
    assert.is_nil(h.read(dir .. '/pred.txt'))

    os.execute('kill -TERM ' .. pid)
    local rc = h.wait_for(function() return tonumber((h.read(dir .. '/rc') or ''):match('%d+')) end, 20000, 'exit')
    assert.are.equal(1, rc)
    assert.matches('campaign trig: version 2 stored; new runs use it', h.read(dir .. '/out.txt'), 1, true)
    assert.matches('herald run: campaign pred: version 2, stored after', h.read(dir .. '/err.txt'), 1, true)
    -- restarted, it loads the file and runs version 2 with its predicate: the buy is sent for
    out, code, err = h.herald('--db q.db run --until-idle c.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.matches('subject: pred v2\n', h.read(dir .. '/pred.txt') or '', 1, true)
  end)

  it('materialises a run that falls due while another process holds the store, once it is free', function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', [[
      if herald.endpoints.count() == 0 then
        for i = 1, 20 do assert(herald.endpoints.put{ Id = 'e' .. i, ChannelType = 'EMAIL', Address = 'e' .. i .. '@example.com' }) end
      end
      herald.campaign{ name = 'due', segment = herald.segment{ name = 'all' }, message = { body = 'hi {{Id}}' },
        deliver = { file = 'out.txt' } }
    ]])
    for _, args in ipairs({ 'campaign load c.lua', 'campaign pause due' }) do
      local _, code, err = h.herald('--db q.db ' .. args, { cwd = dir })
      assert.are.equal(0, code, args .. ': ' .. err)
    end
    -- While `herald run` goes round, another process resumes the campaign and, without letting
    -- go of the store in between, holds it (an import, say) far past herald's busy timeout: the
    -- run falls due at herald's next pass, with the store busy.
    h.write(dir .. '/hold.py', [[
import sqlite3, time
time.sleep(1.5)
c = sqlite3.connect('q.db', isolation_level=None, timeout=30)
c.execute('BEGIN IMMEDIATE')
c.execute("UPDATE campaigns SET state = 'PENDING_NEXT_RUN', pause_reason = NULL WHERE id = 'due'")
c.execute('COMMIT')
c.execute('BEGIN IMMEDIATE')
time.sleep(2.5)
open('released', 'w').close()
c.execute('COMMIT')
]])
    local out = h.sh('cd ' .. h.shell_quote(dir) .. ' && (HERALD_BUSY_TIMEOUT_MS=200 ' .. h.shell_quote(h.exe)
      .. ' --db q.db run c.lua > a.out 2> a.err & pid=$!; python3 hold.py;'
      .. ' for i in $(seq 100); do [ "$(grep -c "hi e" out.txt 2>/dev/null)" = 20 ] && break; sleep 0.1; done;'
      .. ' kill -TERM $pid; wait $pid; echo "rc=$?")')
    local stderr = h.read(dir .. '/a.err') or ''
    assert.is_truthy(h.read(dir .. '/released'), 'the store was not held')
    assert.matches('database is locked', stderr, 1, true)
    -- the run went out whole once the store was free, and the campaign did not fail
    assert.are.equal(20, h.count(h.read(dir .. '/out.txt') or '', 'hi e'), stderr)
    assert.matches('rc=0', out, 1, true)
    assert.are.same({ { state = 'COMPLETED' } }, h.query(dir, 'q.db', "SELECT state, error FROM campaigns WHERE id = 'due'"))
  end)

  -- Starts `herald run` delivering 100 messages of channel through profile (one at a time, each
  -- a while on the wire), sends it SIGTERM once the shell condition ready holds, and checks
  -- that it stops at once, with the messages not yet sent PENDING again, no attempt spent.
  -- Returns how many were sent.
  local function stop_while_sending(channel, profile, ready)
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', string.format([[
      for i = 1, 100 do
        assert(herald.endpoints.put { Id = string.format('ep-%%03d', i), ChannelType = %q, Address = 'r' .. i .. '@example.com' })
      end
      herald.campaign { name = 'p', segment = herald.segment { name = 'all' },
        message = { subject = 'Hi', body = 'Hi {{Id}}' }, deliver = 'channels' }
    ]], channel))
    -- one claim takes all 100
    h.write(dir .. '/providers.lua', string.format('return { profiles = { out = %s }, channels = { %s = %q } }',
      profile, channel, 'out'))
    local out = h.sh(table.concat({
      'cd ' .. h.shell_quote(dir),
      h.shell_quote(h.exe) .. ' --db q.db run c.lua > out.txt 2> err.txt & pid=$!',
      'for i in $(seq 200); do ' .. ready .. ' && break; sleep 0.05; done',
      -- a service manager's stop: SIGTERM, and SIGKILL if that takes too long
      'kill -TERM $pid; start=$(date +%s%N)',
      '(sleep 10; kill -KILL $pid 2> /dev/null) & dog=$!',
      'wait $pid; rc=$?; echo "rc=$rc after $(( ($(date +%s%N) - start) / 1000000 )) ms"',
      'kill $dog 2> /dev/null; wait $dog 2> /dev/null; true',
    }, '\n'))
    local rc, ms = out:match('rc=(%d+) after (%d+) ms')
    assert.are.equal('0', rc, out .. (h.read(dir .. '/err.txt') or ''))
    -- the message on the wire finishes; nothing waits for the rest
    assert.is_true(tonumber(ms) < 3000, ms .. ' ms to stop')
    assert.matches('stopped', h.read(dir .. '/out.txt'))
    local sent = query(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'")
    assert.is_true(sent <= 10, sent .. ' sent')
    -- the rest are due again with no attempt spent, for the next start
    assert.are.equal(100 - sent, query(dir, [[SELECT count(*) AS n FROM outbox WHERE state = 'PENDING' AND attempts = 0
      AND reason LIKE 'STOPPED:%']]))
    return sent
  end

  it('gives the messages not yet sent back to the outbox on SIGTERM rather than sending them first', function()
    local ng = S.start_nginx { tls = false, locations = 'location = /half { echo_sleep 0.5; echo "done"; }\n' }
    local ok, err = pcall(function()
      local sent = stop_while_sending('CUSTOM',
        string.format("{ type = 'webhook', url = %q, connections = 1 }", ng.url .. '/half'),
        '[ -s ' .. h.shell_quote(ng.log) .. ' ]')
      -- each message sent is one request
      assert.are.same({ sent, sent }, { ng:key_counts('/half') })
    end)
    ng:stop()
    assert(ok, err)
  end)

  it('gives the mails not yet sent back to the outbox on SIGTERM', function()
    local sink = S.start_smtp_sink { data_delay = 1 }
    local ok, err = pcall(function()
      stop_while_sending('EMAIL', string.format("{ type = 'smtp', url = %q, from = 'news@example.com', sessions = 1 }",
        sink.url), 'sleep 2')
    end)
    sink:stop()
    assert(ok, err)
  end)

  it('gives the messages a Lua channel has not sent yet back to the outbox on SIGTERM', function()
    stop_while_sending('EMAIL', "{ type = 'lua', send = function(m) herald.sleep(500); return true end }", 'sleep 2')
  end)

  it('says that the database cannot be opened in one line, blaming no campaign file', function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', "herald.campaign{ name = 'x', segment = herald.segment{ name = 'all' }, message = { body = 'b' } }\n")
    local out, code, err = h.herald('--db missing/q.db run --until-idle c.lua', { cwd = dir })
    assert.are.equal(1, code)
    assert.are.equal('', out)
    assert.are.equal('herald run: missing/q.db: cannot open database: unable to open database file\n', err)
  end)

  it('reports a definition error with the file and line and exits non-zero', function()
    local dir = h.tmpdir()
    h.write(dir .. '/bad.lua', "local s = herald.segment{ name = 'all' }\nherald.campaign{ name = 'x', segment = s, holdout = 120, message = { body = 'b' } }\n")
    local _, code, err = h.herald('--db q.db run --until-idle bad.lua', { cwd = dir })
    assert.are_not.equal(0, code)
    assert.matches('bad.lua:2:', err, 1, true)
    assert.matches('holdout: a whole percentage 0%-100', err)
  end)

  it('loads a file named twice (by any path) once, as herald campaign load does', function()
    local dir = h.tmpdir()
    h.endpoints_sql(dir, 'q.db', { { id = 'e1', address = 'ann@example.com' } })
    h.write(dir .. '/d.lua', [[
local all = herald.segment{ name = 'all' }
herald.campaign{ name = 'dd', segment = all, deliver = { file = 'out.txt' }, message = { body = 'hi' },
  schedule = { start = '2027-05-01T12:00:00Z' } }
]])
    local out, code, err = h.herald('--db q.db campaign load d.lua ./d.lua ' .. h.shell_quote(dir .. '/d.lua'),
      { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal('loaded 1 file\n', out)
    out, code, err = h.herald('--db q.db run --clock-start 2027-05-01T00:00:00Z d.lua ./d.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal('', err)
    assert.matches('default%s+1 endpoints: SENT 1', out)
    assert.are.equal(1, h.count(h.read(dir .. '/out.txt'), '--- message '))
    assert.are.equal(0, query(dir, "SELECT count(*) AS n FROM campaigns WHERE state = 'INVALID'"))
  end)

  it('names both files and lines when two files define one campaign name', function()
    local dir = h.tmpdir()
    local def = "local all = herald.segment{ name = 'all' }\n"
      .. "herald.campaign{ name = 'dd', segment = all, deliver = { file = 'out.txt' }, message = { body = 'hi' } }\n"
    h.write(dir .. '/one.lua', def)
    h.write(dir .. '/two.lua', '\n' .. def)
    local _, code, err = h.herald('--db q.db run --until-idle one.lua two.lua', { cwd = dir })
    assert.are.equal(1, code)
    assert.matches('two.lua:3: herald.campaign: a campaign named dd is already defined at one.lua:2\n',
      err, 1, true)
    _, code, err = h.herald('--db q.db campaign load two.lua one.lua', { cwd = dir })
    assert.are.equal(1, code)
    assert.matches('one.lua:2: herald.campaign: a campaign named dd is already defined at two.lua:3\n',
      err, 1, true)
  end)

  it('names both lines when one file defines a campaign name twice, by any form', function()
    local dir = h.tmpdir()
    h.write(dir .. '/twice.lua', [[
local all = herald.segment{ name = 'all' }
herald.campaign{ name = 'dd', segment = all, deliver = { file = 'out.txt' }, message = { body = 'hi' } }
herald.campaign.copy('dd', 'ee')
herald.campaign.from_pinpoint({ Name = 'ee', MessageConfiguration = { DefaultMessage = { Body = 'hi' } },
  Schedule = { StartTime = 'IMMEDIATE' } }, { segment = all })
]])
    local _, code, err = h.herald('--db q.db campaign load twice.lua', { cwd = dir })
    assert.are.equal(1, code)
    assert.matches('twice.lua:4: herald.campaign: a campaign named ee is already defined at twice.lua:3\n',
      err, 1, true)
    h.write(dir .. '/again.lua', [[
local all = herald.segment{ name = 'all' }
herald.campaign{ name = 'dd', segment = all, deliver = { file = 'out.txt' }, message = { body = 'hi' } }
herald.campaign{ name = 'dd', segment = all, deliver = { file = 'out.txt' }, message = { body = 'hi' } }
]])
    _, code, err = h.herald('--db q.db campaign load again.lua', { cwd = dir })
    assert.are.equal(1, code)
    assert.matches('again.lua:3: herald.campaign: a campaign named dd is already defined at again.lua:2\n',
      err, 1, true)
  end)

  it("shows a definition error's traceback with the script's frames, not herald's own", function()
    local dir = h.tmpdir()
    h.write(dir .. '/bad.lua', [[
local function define(name)
  herald.campaign{ name = name, segment = herald.segment{ name = 'all' }, deliver = 'nowhere',
    message = { body = 'hi' } }
end
define('dd')
]])
    local _, code, err = h.herald('--db q.db run --until-idle bad.lua', { cwd = dir })
    assert.are.equal(1, code)
    assert.matches("bad.lua:2: herald.campaign dd: deliver: expected 'stdout'", err, 1, true)
    -- the script's two frames, in order, and none of the stdlib's that checked the definition
    assert.matches("stack traceback:\n\tbad.lua:2: in [^\n]*define[^\n]*\n\tbad.lua:5: in main chunk", err)
    assert.is_nil(err:find('stdlib/herald/', 1, true), err)
    assert.is_nil(err:find("[C]: in function 'error'", 1, true), err)
    -- the same from a plain script (run as a task) and a herald.send request refused
    h.write(dir .. '/send.lua', "\nherald.send { Addresses = { ['+15550001111'] = { ChannelType = 'SMS' } },\n"
      .. "  MessageConfiguration = { SMSMessage = { Body = 5 } } }\n")
    _, code, err = h.herald('--db q.db send.lua', { cwd = dir })
    assert.are.equal(1, code)
    assert.are.equal('herald: send.lua:2: herald.send: MessageConfiguration.SMSMessage.Body: expected a string\n'
      .. 'stack traceback:\n\tsend.lua:2: in main chunk\n', err)
    -- an error of the script's own keeps its frames
    h.write(dir .. '/oops.lua', "local function f() local x = nil; return x.y end\nf()\n")
    _, code, err = h.herald('--db q.db run --until-idle oops.lua', { cwd = dir })
    assert.are.equal(1, code)
    assert.matches("oops.lua:1: attempt to index a nil value %(local 'x'%)\nstack traceback:\n\toops.lua:1: in [^\n]*f[^\n]*\n\toops.lua:2: in main chunk", err)
  end)
end)
