-- The delivery benchmark (run through bench/delivery). Measures the transport engine alone:
-- the outbox bookkeeping (claim, report, batched commits) is added by the outbox integration.
--
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
               duration = 10 }
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == 'webhook' or a == 'smtp' or a == 'all' then
      opts.what = a
    elseif a == '--connections' or a == '--messages' or a == '--mails' or a == '--sessions'
        or a == '--duration' then
      local v = tonumber(arg[i + 1])
      if not v then error(a .. ' needs a number', 0) end
      opts[a:sub(3)] = math.floor(v)
      i = i + 1
    else
      error('unknown argument ' .. a .. ' (webhook|smtp|all, --connections, --messages, --mails, --sessions, --duration)', 0)
    end
    i = i + 1
  end
end

local function row(name, herald_v, ref_v, unit)
  io.write(string.format('%s\t%.0f\t%.0f\t%s\n', name, herald_v, ref_v, unit))
  io.stdout:flush()
  io.stderr:write(string.format('%s: herald/reference = %.2f\n', name, herald_v / ref_v))
end

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

  -- Warm up both sides (connections, nginx buffers) outside the measurement.
  http.post_many { url = url, bodies = { body, body, body }, concurrency = 3 }

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
  local herald_rate = total / (now_s() - t0)
  if failed > 0 then io.stderr:write('webhook: ' .. failed .. ' requests failed\n') end

  local dir = S.tmpdir('wrk')
  local f = assert(io.open(dir .. '/post.lua', 'w'))
  f:write(string.format('wrk.method = "POST"\nwrk.body = %q\nwrk.headers["Content-Type"] = "application/json"\n', body))
  f:close()
  local out = capture(string.format('wrk -t1 -c%d -d%ds -s %s %s 2>&1', conns, opts.duration,
    dir .. '/post.lua', url))
  local wrk_rate = tonumber(out:match('Requests/sec:%s*([%d%.]+)'))
  ng:stop()
  if not wrk_rate then error('wrk did not report a rate:\n' .. out, 0) end
  row(string.format('webhook POST %dB x%d, %d conns', #body, total, conns), herald_rate, wrk_rate,
    'req/s')
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
  while running > 0 do herald.sleep(10) end
  local herald_rate = total / (now_s() - t0)
  if failed > 0 then io.stderr:write('smtp: ' .. failed .. ' messages failed\n') end

  local t1 = now_s()
  local out = capture(string.format('smtp-source -d -s %d -l %d -m %d -f bench@herald.example '
    .. '-t sink@example.org 127.0.0.1:%d 2>&1', sessions, size, total, sink.port))
  local ref_rate = total / (now_s() - t1)
  sink:stop()
  if out:match('fatal') then error('smtp-source failed:\n' .. out, 0) end
  row(string.format('smtp %dB x%d, %d sessions', size, total, sessions), herald_rate, ref_rate, 'msg/s')
end

if opts.what == 'webhook' or opts.what == 'all' then bench_webhook() end
if opts.what == 'smtp' or opts.what == 'all' then bench_smtp() end
