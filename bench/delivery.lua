-- The delivery benchmark, run by bench/delivery.sh (bench/run's convention): prints one row
-- per measurement, tab-separated: name, herald seconds, reference seconds, target ratio, note.
-- Each side runs `--runs` times (default 2) and the best run counts, since the machine is
-- shared.
--
-- webhook-outbox, smtp-outbox: the whole campaign delivery path (bench/delivery_campaign.lua:
--   outbox claim, endpoint read, render, channel, batched report) against wrk / smtp-source.
--   The note gives the child's CPU per message by thread. On two cores the webhook row shares
--   them with nginx, which sleeps after almost every request when herald drives it (wrk keeps
--   it busy on a core of its own). nginx gets the loop thread's core only while that core is
--   mostly idle: with the loop's work replaced by a spin (an experiment: claims from a counter,
--   the same transport and lanes), 1-3 us of loop CPU per message gave 64,000-70,000/s, 7 us
--   44,600/s, 12 us 42,400/s, 23 us 41,600/s. Past a few us nginx runs on the transport's core,
--   woken by its sends, and preempts it after nearly every request, so the row sits at what
--   that one core does for both (~14 us transport + ~10 us nginx per message) whatever the loop
--   spends, up to a core. Outbox claim and report alone cost the loop 10-12 us per message
--   (42,000/s in that experiment); with nginx unable to preempt (SCHED_BATCH) the row ran
--   10-12% faster. A trace of the scheduler (perf record -e sched:sched_switch, 2 s of a run of
--   the lane, 28,000/s on a busy host) showed the transport thread preempted by nginx 15,900
--   times a second and the loop 3,800 times, while each core idled 18-29% of the time: a
--   socket's wakeup is synchronous, so nginx is placed on the core of the thread that sent,
--   and the transport, just run there, waits behind it instead of moving to the idle core.
-- memory: peak RSS of that path over --memory-messages (default 1,000,000) webhooks.
-- crash (not in all): kill -9 ten times during --crash-messages (100,000) webhooks; see below.
-- webhook: POSTs of a ~500-byte JSON body, each with its own Idempotency-Key, to nginx
--   (`return 200`, one worker, no access log) from herald's batch API with N connections,
--   against wrk POSTing the same body to the same nginx with the same connection count.
-- smtp: 2 KB messages to postfix's smtp-sink from herald (S tasks sending in turn over reused
--   connections), against smtp-source with the same count, size and sessions.
local root = arg[0]:match('^(.*)/bench/[^/]*$') or '.'
package.path = root .. '/tests/helpers/?.lua;' .. package.path
local S = require 'servers'
local http = require 'herald.http'

local opts = { what = 'all', connections = 50, messages = 200000, mails = 50000, sessions = 20,
               duration = 5, runs = 2, memory_messages = 1000000, crash_messages = 100000 }
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == 'webhook' or a == 'smtp' or a == 'all' or a == 'webhook-outbox' or a == 'smtp-outbox'
        or a == 'memory' or a == 'crash' then
      opts.what = a
    elseif a == '--connections' or a == '--messages' or a == '--mails' or a == '--sessions'
        or a == '--duration' or a == '--runs' or a == '--memory-messages' or a == '--crash-messages' then
      local v = tonumber(arg[i + 1])
      if not v then error(a .. ' needs a number', 0) end
      opts[a:sub(3):gsub('%-', '_')] = math.floor(v)
      i = i + 1
    else
      error('unknown argument ' .. a .. ' (webhook|smtp|webhook-outbox|smtp-outbox|memory|crash|all, --connections, --messages, --mails, --sessions, --duration, --runs, --memory-messages, --crash-messages)', 0)
    end
    i = i + 1
  end
end

-- Herald's target is >= 0.3x the reference's rate, i.e. at most 1/0.3 of its time.
local TARGET_RATIO = '3.33'

local function row(name, herald_s, ref_s, note)
  io.write(string.format('%s\t%.3f\t%.3f\t%s\t%s\n', name, herald_s, ref_s, TARGET_RATIO, note))
  io.stdout:flush()
end

local function rate(n, seconds) return string.format('%.0f/s', n / seconds) end

local function capture(cmd)
  local p = assert(io.popen(cmd, 'r'))
  local out = p:read('a')
  p:close()
  return out
end

local function now_s()
  return tonumber(capture('date +%s.%N'))
end

-- A JSON body of the webhook's shape, padded to about 500 bytes.
local function webhook_body()
  local base = '{"Message":{"Body":"Your order has shipped and will arrive on Tuesday.",'
    .. '"Title":"Order update"},"Data":{"campaign":"spring-sale","treatment":"0"},'
    .. '"CampaignId":"c0ffee0123456789","TreatmentId":"0","Endpoints":{"ep-000001":{'
    .. '"ChannelType":"CUSTOM","Address":"https://hooks.example.com/ep-000001","Attributes":'
    .. '{"plan":["pro"],"region":["eu-west-1"]},"User":{"UserId":"user-000001"}}},"Pad":"'
  return base .. string.rep('x', 498 - #base) .. '"}'
end

local function bench_webhook()
  local ng = S.start_nginx { tls = false, access_log = false }
  local url = ng.url .. '/ok'
  local body = webhook_body()
  local total, conns = opts.messages, opts.connections
  http.configure { max_host_connections = conns }

  -- Warm up (connections, nginx buffers) outside the measurement.
  http.post_many { url = url, bodies = { body, body, body }, concurrency = 3 }

  -- Messages are fed as the outbox will feed them: chunks of rows with their keys, outcomes
  -- collected in batches.
  local function herald_run()
    local b <close> = http.batch { url = url, concurrency = conns, key_header = 'Idempotency-Key',
                                   headers = { ['Content-Type'] = 'application/json' } }
    local CHUNK = 10000
    local bodies, keys = {}, {}
    local added, delivered, failed = 0, 0, 0
    local t0 = now_s()
    while delivered + failed < total do
      local queued = b:stats()
      if added < total and queued < CHUNK then
        local n = math.min(CHUNK, total - added)
        for i = 1, n do
          bodies[i] = body
          keys[i] = 'msg-' .. (added + i)
        end
        for i = n + 1, #bodies do bodies[i] = nil; keys[i] = nil end
        b:add_many(bodies, keys)
        added = added + n
      end
      local out = b:wait(math.min(CHUNK // 2, total - delivered - failed))
      local verdict = out.verdict
      for i = 1, out.n do
        if verdict[i] == 'delivered' then delivered = delivered + 1 else failed = failed + 1 end
      end
    end
    local elapsed = now_s() - t0
    if failed > 0 then error('webhook: ' .. failed .. ' requests failed', 0) end
    return elapsed
  end

  local dir = S.tmpdir('wrk')
  local f = assert(io.open(dir .. '/post.lua', 'w'))
  f:write(string.format('wrk.method = "POST"\nwrk.body = %q\nwrk.headers["Content-Type"] = "application/json"\n', body))
  f:close()
  -- wrk runs for a duration; its rate gives the time it would take for the same count.
  local function wrk_run()
    local out = capture(string.format('wrk -t1 -c%d -d%ds -s %s %s 2>&1', conns, opts.duration,
      dir .. '/post.lua', url))
    local r = tonumber(out:match('Requests/sec:%s*([%d%.]+)'))
    if not r then error('wrk did not report a rate:\n' .. out, 0) end
    if out:match('Non%-2xx') or out:match('Socket errors') then error('wrk saw errors:\n' .. out, 0) end
    return total / r
  end

  local best_h, best_r = math.huge, math.huge
  for _ = 1, opts.runs do
    best_h = math.min(best_h, herald_run())
    best_r = math.min(best_r, wrk_run())
  end
  ng:stop()
  local floor = total / best_h >= 20000 and '' or ' (below 20,000/s: MISSED)'
  row('webhook', best_h, best_r, string.format(
    '%d POSTs of %d B to nginx return 200, %d connections: herald %s vs wrk %s%s; transport engine alone (webhook-outbox has the whole delivery path)',
    total, #body, conns, rate(total, best_h), rate(total, best_r), floor))
end

local function bench_smtp()
  local sink = S.start_smtp_sink { backlog = 1024 }
  local total, sessions = opts.mails, opts.sessions
  local text = string.rep('The quick brown fox jumps over the lazy dog. ', 60):sub(1, 1700)
  -- Warm up the connections.
  assert(http.send_mail { url = sink.url, from = 'bench@herald.example', to = 'sink@example.org',
                          subject = 'warm', text = 'x', message_id = 'warm' })
  local size
  do
    local msg = http.build_mail { from = 'Herald Bench <bench@herald.example>', to = 'sink@example.org',
                                  subject = 'Your weekly digest', text = text,
                                  message_id = 'size-probe' }
    size = #msg
  end
  local function herald_run()
    local sent, failed, next_n = 0, 0, 0
    local t0 = now_s()
    local running = sessions
    for _ = 1, sessions do
      herald.spawn(function()
        while next_n < total do
          next_n = next_n + 1
          local res = http.send_mail { url = sink.url, from = 'Herald Bench <bench@herald.example>',
                                       to = 'sink@example.org', subject = 'Your weekly digest',
                                       text = text, message_id = 'bench-' .. next_n }
          if res then sent = sent + 1 else failed = failed + 1 end
        end
        running = running - 1
      end)
    end
    while running > 0 do herald.sleep(5) end
    local elapsed = now_s() - t0
    if failed > 0 then error('smtp: ' .. failed .. ' messages failed', 0) end
    return elapsed
  end

  local function source_run()
    local t1 = now_s()
    local out = capture(string.format('smtp-source -d -s %d -l %d -m %d -f bench@herald.example '
      .. '-t sink@example.org 127.0.0.1:%d 2>&1', sessions, size, total, sink.port))
    local elapsed = now_s() - t1
    if out:match('fatal') or out:match('error') then error('smtp-source failed:\n' .. out, 0) end
    return elapsed
  end

  local best_h, best_r = math.huge, math.huge
  for _ = 1, opts.runs do
    best_h = math.min(best_h, herald_run())
    best_r = math.min(best_r, source_run())
  end
  sink:stop()
  row('smtp', best_h, best_r, string.format(
    '%d messages of %d B to smtp-sink over %d reused connections: herald %s vs smtp-source %s',
    total, size, sessions, rate(total, best_h), rate(total, best_r)))
end

-- The campaign rows: the whole delivery path of `herald run` (outbox claim, endpoint read,
-- render, the channel, outcomes recorded in chunks as they come) in a child herald on a fresh store
-- whose endpoints were imported beforehand (not timed). Returns seconds, body size, the child's
-- peak RSS in KB and its CPU per message as text ("loop X us + transport Y us").
local function campaign_child(kind, url, n, conns)
  local dir = S.tmpdir('bench-campaign')
  local f = assert(io.open(dir .. '/eps.csv', 'w'))
  f:write('Id,ChannelType,Address\n')
  local channel = kind == 'webhook' and 'CUSTOM' or 'EMAIL'
  for i = 1, n do f:write(string.format('ep-%07d,%s,a%d@example.org\n', i, channel, i)) end
  f:close()
  local exe = require('herald.core').exe_path()
  local out = capture(string.format('cd %s && %s --db d.db import endpoints eps.csv >/dev/null 2>&1 && '
    .. '/usr/bin/time -f "rss %%M" %s --db d.db %s/bench/delivery_campaign.lua %s %s %d %d 2>&1; rm -rf %s',
    dir, exe, exe, root, kind, url, n, conns, dir))
  local secs, sent, failed, size = out:match('([%d%.]+) (%d+) (%d+) (%d+)')
  local rss = tonumber(out:match('rss (%d+)'))
  local loop_us, other_us = out:match('cpu ([%d%.]+) ([%d%.]+)')
  if not secs then error(kind .. ' campaign run failed:\n' .. out, 0) end
  if tonumber(sent) ~= n then error(string.format('%s campaign: %s of %d sent, %s failed', kind, sent, n, failed), 0) end
  return tonumber(secs), tonumber(size), rss, string.format('loop %s us + transport %s us', loop_us, other_us)
end

-- nginx's worker: CPU seconds so far and how often it went to sleep (voluntary context
-- switches), to tell what a request costs the server under each client.
local function nginx_worker(ng)
  local master = (io.open(ng.dir .. '/nginx.pid') or error('no nginx pid')):read('l')
  local pid = capture('pgrep -P ' .. master):match('%d+')
  local stat = assert(io.open('/proc/' .. pid .. '/stat')):read('a')
  local utime, stime = stat:match('^%d+ %b() %S+ ' .. string.rep('%S+ ', 10) .. '(%d+) (%d+)')
  local status = assert(io.open('/proc/' .. pid .. '/status')):read('a')
  return (tonumber(utime) + tonumber(stime)) / 100, tonumber(status:match('\nvoluntary_ctxt_switches:%s*(%d+)'))
end

-- What requests cost nginx between two nginx_worker readings: "N us, asleep after 1 in M".
local function server_cost(before, after, requests)
  local cpu, sleeps = after[1] - before[1], after[2] - before[2]
  return string.format('%.1f us a request, asleep after 1 in %.1f', cpu * 1e6 / requests,
    requests / math.max(sleeps, 1))
end

local function bench_campaign_webhook()
  local ng = S.start_nginx { tls = false, access_log = false }
  local url = ng.url .. '/ok'
  local total, conns = opts.messages, opts.connections
  local best_h, size, rss, cpu, server_h = math.huge, 0, 0, '', ''
  local best_r, server_r = math.huge, ''
  local dir = S.tmpdir('wrk')
  for _ = 1, opts.runs do
    -- the child's setup (import, writing the outbox) does not reach nginx
    local before = { nginx_worker(ng) }
    local s, sz, r, c = campaign_child('webhook', url, total, conns)
    local after = { nginx_worker(ng) }
    if s < best_h then best_h, size, rss, cpu, server_h = s, sz, r, c, server_cost(before, after, total) end
    local f = assert(io.open(dir .. '/post.lua', 'w'))
    f:write(string.format('wrk.method = "POST"\nwrk.body = %q\nwrk.headers["Content-Type"] = "application/json"\n'
      .. 'wrk.headers["Idempotency-Key"] = "0123456789abcdef0123456789abcdef"\n', string.rep('x', size)))
    f:close()
    before = { nginx_worker(ng) }
    local out = capture(string.format('wrk -t1 -c%d -d%ds -s %s %s 2>&1', conns, opts.duration, dir .. '/post.lua', url))
    after = { nginx_worker(ng) }
    local r = tonumber(out:match('Requests/sec:%s*([%d%.]+)'))
    if not r then error('wrk did not report a rate:\n' .. out, 0) end
    local done = tonumber(out:match('(%d+) requests in'))
    if total / r < best_r then best_r, server_r = total / r, server_cost(before, after, done or r * opts.duration) end
  end
  ng:stop()
  local floor = total / best_h >= 20000 and '' or ' (below 20,000/s: MISSED)'
  row('webhook-outbox', best_h, best_r, string.format(
    '%d campaign messages (Pinpoint custom-channel JSON, %d B) to nginx return 200 with outbox claim/report, %d connections: herald %s vs wrk %s%s; peak RSS %d MB; CPU per message: %s; nginx: %s under herald, %s under wrk',
    total, size, conns, rate(total, best_h), rate(total, best_r), floor, rss // 1024, cpu, server_h, server_r))
end

local function bench_campaign_smtp()
  local sink = S.start_smtp_sink { backlog = 1024 }
  local total, sessions = opts.mails, opts.sessions
  local best_h, size, rss, cpu = math.huge, 0, 0, ''
  local best_r = math.huge
  for _ = 1, opts.runs do
    local s, sz, r, c = campaign_child('smtp', sink.url, total, sessions)
    if s < best_h then best_h, size, rss, cpu = s, sz, r, c end
    local t1 = now_s()
    local out = capture(string.format('smtp-source -d -s %d -l %d -m %d -f bench@herald.example '
      .. '-t sink@example.org 127.0.0.1:%d 2>&1', sessions, 2048, total, sink.port))
    if out:match('fatal') or out:match('error') then error('smtp-source failed:\n' .. out, 0) end
    best_r = math.min(best_r, now_s() - t1)
  end
  sink:stop()
  row('smtp-outbox', best_h, best_r, string.format(
    '%d campaign emails (~2 KB MIME) to smtp-sink with outbox claim/report, %d sessions: herald %s vs smtp-source %s; peak RSS %d MB; CPU per message: %s',
    total, sessions, rate(total, best_h), rate(total, best_r), rss // 1024, cpu))
end

local function bench_memory()
  local ng = S.start_nginx { tls = false, access_log = false }
  local n = opts.memory_messages
  local s, _, rss = campaign_child('webhook', ng.url .. '/ok', n, opts.connections)
  ng:stop()
  io.write(string.format('%s\t%.3f\t%.3f\t%s\t%s\n', 'memory-outbox', rss / 1024, 100, '1.00',
    string.format('peak RSS %.0f MB delivering %d campaign messages with outbox bookkeeping (%s); target <= 100 MB%s',
      rss / 1024, n, rate(n, s), rss / 1024 <= 100 and '' or ' (MISSED)')))
  io.stdout:flush()
end

-- crash: the issue's crash check at full size (the spec runs a smaller audience under the
-- sanitizer): kill -9 the delivering process ten times at random points of the sending,
-- restart each time; then every message must have reached the sink (nginx logs each request's
-- Idempotency-Key) and any duplicate is a key the sink had already seen.
-- The most messages in flight at a kill: delivery_campaign.lua's claims of 256 in the default
-- 4 lanes.
local IN_FLIGHT = 256 * 4

local function bench_crash()
  local n = opts.crash_messages
  local ng = S.start_nginx { tls = false }
  local dir = S.tmpdir('bench-crash')
  local f = assert(io.open(dir .. '/eps.csv', 'w'))
  f:write('Id,ChannelType,Address\n')
  for i = 1, n do f:write(string.format('ep-%07d,CUSTOM,a%d\n', i, i)) end
  f:close()
  local exe = require('herald.core').exe_path()
  capture(string.format('cd %s && %s --db d.db import endpoints eps.csv', dir, exe))
  local cmd = string.format('%s --db d.db %s/bench/delivery_campaign.lua webhook %s/ok %d %d', exe, root, ng.url, n,
    opts.connections)
  local function logged()
    return tonumber(capture('wc -l < ' .. ng.log)) or 0
  end
  math.randomseed(os.time())
  local kills, t0 = 0, now_s()
  for _ = 1, 10 do
    local target = logged() + math.random(1, n // 12)
    local out = capture(string.format('cd %s && (%s >/dev/null 2>&1 & pid=$!; while kill -0 $pid 2>/dev/null '
      .. '&& [ "$(wc -l < %s)" -lt %d ]; do sleep 0.01; done; if kill -0 $pid 2>/dev/null; then kill -9 $pid; '
      .. 'echo killed; fi; { wait $pid; } 2>/dev/null; true)', dir, cmd, ng.log, target))
    if out:find('killed') then kills = kills + 1 end
  end
  local last = capture(string.format('cd %s && %s 2>&1', dir, cmd))
  local elapsed = now_s() - t0
  local keys, lines, distinct = {}, 0, 0
  for _, r in ipairs(ng:requests()) do
    if r.key then
      lines = lines + 1
      if not keys[r.key] then distinct = distinct + 1; keys[r.key] = true end
    end
  end
  local missing = 0
  local q = assert(io.open(dir .. '/sent.lua', 'w'))
  q:write([[for _, r in ipairs(assert(herald.db.query("SELECT message_id AS m FROM outbox WHERE state = 'SENT'"))) do print(r.m) end]])
  q:close()
  local ids = capture(string.format('cd %s && %s --db d.db sent.lua', dir, exe))
  local sent = 0
  for id in ids:gmatch('[^\n]+') do
    sent = sent + 1
    if not keys[id] then missing = missing + 1 end
  end
  ng:stop()
  capture('rm -rf ' .. dir)
  local dups = lines - distinct
  local ok = sent == n and missing == 0 and distinct == n and dups <= kills * IN_FLIGHT
  io.write(string.format('crash\t%d\t%d\t-\t%d endpoints, %d kill -9 while sending, %d sent, %d missing at the sink, '
    .. '%d duplicate requests (bound %d = kills x %d in flight: 4 lanes of 256), %.0f s in all: %s (last run: %s)\n',
    dups, kills * IN_FLIGHT, n, kills, sent, missing, dups, kills * IN_FLIGHT, IN_FLIGHT, elapsed, ok and 'PASS' or 'FAIL',
    last:gsub('%s+$', '')))
  io.stdout:flush()
end

if opts.what == 'crash' then bench_crash() end
if opts.what == 'webhook-outbox' or opts.what == 'all' then bench_campaign_webhook() end
if opts.what == 'smtp-outbox' or opts.what == 'all' then bench_campaign_smtp() end
if opts.what == 'memory' or opts.what == 'all' then bench_memory() end
if opts.what == 'webhook' or opts.what == 'all' then bench_webhook() end
if opts.what == 'smtp' or opts.what == 'all' then bench_smtp() end
