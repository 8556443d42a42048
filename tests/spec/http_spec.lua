-- The transport engine against a real nginx: keep-alive reuse, HTTP/2 multiplexing over TLS,
-- failure classes, Retry-After, bounded bodies, batches, and stop requests.
local h = require 'helpers'
local S = require 'servers'
local http = require 'herald.http'
local clock = require 'herald.core.clock'

-- Access-log rows whose Idempotency-Key starts with prefix.
local function rows_with(server, prefix)
  local out = {}
  for _, r in ipairs(server:requests()) do
    if r.key and r.key:sub(1, #prefix) == prefix then out[#out + 1] = r end
  end
  return out
end

-- nginx logs a request as it finalises it, a moment after the response: wait for n rows.
local function wait_rows(server, prefix, n)
  local rows
  for _ = 1, 40 do
    rows = rows_with(server, prefix)
    if #rows >= n then break end
    herald.sleep(25)
  end
  return rows
end

local function distinct(rows, field)
  local seen, n = {}, 0
  for _, r in ipairs(rows) do
    if not seen[r[field]] then seen[r[field]] = true; n = n + 1 end
  end
  return n
end

describe('herald.http', function()
  local ng

  setup(function() ng = S.start_nginx() end)
  teardown(function() if ng then ng:stop() end end)

  it('reuses one keep-alive connection for sequential requests', function()
    local before = http.stats().connections
    for i = 1, 20 do
      local res, err = http.request { url = ng.url .. '/ok', headers = { ['Idempotency-Key'] = 'seq-' .. i } }
      assert.is_nil(err)
      assert.are.equal(200, res.status)
      assert.are.equal('ok\n', res.body)
      assert.are.equal('delivered', res.verdict)
    end
    local rows = wait_rows(ng, 'seq-', 20)
    assert.are.equal(20, #rows)
    assert.are.equal(1, distinct(rows, 'connection'))
    assert.are.equal(1, http.stats().connections - before)
  end)

  it('multiplexes concurrent requests over one HTTP/2 connection over TLS', function()
    -- Ten 2-second requests finish in about 2 s on one connection only if they run as
    -- concurrent streams.
    local b <close> = http.batch { url = ng.tls_url .. '/slow', method = 'GET', concurrency = 10,
                                   ca_file = ng.ca, key_header = 'Idempotency-Key' }
    local t0 = herald.monotonic_ms()
    for i = 1, 10 do b:add('', 'h2-' .. i) end
    local out = b:wait()
    local elapsed = herald.monotonic_ms() - t0
    assert.are.equal(10, out.n)
    for i = 1, out.n do assert.are.equal(200, out.status[i]) end
    assert.is_true(elapsed < 3500, 'took ' .. elapsed .. ' ms')
    local rows = wait_rows(ng, 'h2-', 10)
    assert.are.equal(10, #rows)
    assert.are.equal(1, distinct(rows, 'connection'))
    for _, r in ipairs(rows) do assert.are.equal('HTTP/2.0', r.protocol) end
  end)

  it('reports the negotiated protocol of a response', function()
    local res = assert(http.request { url = ng.tls_url .. '/ok', ca_file = ng.ca })
    assert.are.equal(2, res.http_version)
    res = assert(http.request { url = ng.tls_url .. '/ok', ca_file = ng.ca, http1 = true })
    assert.are.equal(1, res.http_version)
  end)

  it('round-trips a binary body and headers', function()
    local parts = {}
    for i = 0, 100000 do parts[#parts + 1] = string.char(i % 256) end
    local body = table.concat(parts)
    local res = assert(http.request { url = ng.url .. '/echo', method = 'PUT', body = body })
    assert.are.equal(200, res.status)
    assert.are.equal(#body, #res.body)
    assert.is_true(res.body == body)
    res = assert(http.request { url = ng.url .. '/headers',
                                headers = { 'X-Test: two words', 'Idempotency-Key: hdr-1' } })
    assert.are.equal('two words', res.body)
    assert.are.equal('hdr-1', res.headers['x-seen-key'])
    assert.is_string(res.headers['content-length'])
  end)

  it('sends a number given for a string field as its text', function()
    -- the converted text must outlive the conversion: collect garbage hard while requests run
    local garbage = {}
    for i = 1, 50 do
      for k = 1, 200 do garbage[k] = { i, k, tostring(k) } end
      local res = assert(http.request { url = ng.url .. '/echo', method = 'PUT', body = 4200 + i })
      assert.are.equal(tostring(4200 + i), res.body)
      collectgarbage('step', 0)
    end
  end)

  it('surfaces 429 with Retry-After as transient', function()
    local res = assert(http.request { url = ng.url .. '/limited', body = '{}' })
    assert.are.equal(429, res.status)
    assert.are.equal(7000, res.retry_after_ms)
    assert.are.equal('7', res.headers['retry-after'])
    assert.are.equal('transient', res.verdict)
    -- a server's absurd delay is held to a day (and does not overflow)
    res = assert(http.request { url = ng.url .. '/limited-long', body = '{}' })
    assert.are.equal(24 * 3600 * 1000, res.retry_after_ms)
  end)

  it('classifies server errors as transient and client errors as permanent', function()
    local res = assert(http.request { url = ng.url .. '/fail' })
    assert.are.equal(500, res.status)
    assert.are.equal('transient', res.verdict)
    res = assert(http.request { url = ng.url .. '/missing' })
    assert.are.equal(404, res.status)
    assert.are.equal('permanent', res.verdict)
  end)

  it('classifies a timeout', function()
    local t0 = herald.monotonic_ms()
    local res, err, class = http.request { url = ng.url .. '/slow', timeout_ms = 300 }
    assert.is_nil(res)
    assert.are.equal('timeout', class)
    assert.matches('timed out', err)
    assert.is_true(herald.monotonic_ms() - t0 < 1500)
    assert.are.equal('transient', http.verdict(class))
  end)

  it('classifies a refused connection', function()
    local port = S.free_port()
    local res, err, class = http.request { url = 'http://127.0.0.1:' .. port .. '/' }
    assert.is_nil(res)
    assert.are.equal('connect', class)
    assert.matches(tostring(port), err, 1, true)
    assert.are.equal('transient', http.verdict(class))
  end)

  it('classifies an untrusted certificate as a TLS failure', function()
    -- Without ca_file only the system's trust anchors count, and they do not know the test CA.
    local res, _, class = http.request { url = ng.tls_url .. '/ok' }
    assert.is_nil(res)
    assert.are.equal('tls', class)
  end)

  it('classifies a reply that is not HTTP as a transient protocol failure', function()
    local fault = S.start_fault_http()
    local ok, e = pcall(function()
      local res, err, class = http.request { url = fault.url .. '/garbage', timeout_ms = 2000 }
      assert.is_nil(res, err)
      assert.are.equal('protocol', class)
      assert.are.equal('transient', http.verdict(class))
      -- on a connection reused from the pool as well
      assert.are.equal(200, assert(http.request { url = fault.url .. '/ok' }).status)
      res, err, class = http.request { url = fault.url .. '/garbage', timeout_ms = 2000 }
      assert.is_nil(res, err)
      assert.are.equal('protocol', class)
      local b <close> = http.batch { url = fault.url .. '/garbage' }
      b:add('x', 'k1')
      local out = b:wait()
      assert.are.equal('protocol', out.class[1])
      assert.are.equal('transient', out.verdict[1])
    end)
    fault:stop()
    assert(ok, e)
  end)

  it('classifies a malformed URL as invalid and permanent', function()
    local res, _, class = http.request { url = 'ftp://127.0.0.1/' }
    assert.is_nil(res)
    assert.are.equal('invalid', class)
    assert.are.equal('permanent', http.verdict(class))
  end)

  it('keeps at most max_body bytes of a response', function()
    local res = assert(http.request { url = ng.url .. '/echo', body = '0123456789', max_body = 4 })
    assert.are.equal('0123', res.body)
    assert.is_true(res.truncated)
    assert.are.equal('delivered', res.verdict)
  end)

  -- One request at a time reuses one transfer and its easy handle, which keeps its options
  -- from one request to the next when they are alike: nothing of a request may reach the next.
  it('sends each request with its own method, body, headers and URL on a reused handle', function()
    local function send(req, key)
      req.headers = req.headers or {}
      req.headers['Idempotency-Key'] = key
      return http.request(req)
    end
    assert(send({ url = ng.url .. '/echo', method = 'PUT', body = 'one' }, 'reuse-1'))
    local res = assert(send({ url = ng.url .. '/echo', body = 'two' }, 'reuse-2'))
    assert.are.equal('two', res.body)
    res = assert(send({ url = ng.url .. '/headers', headers = { ['X-Test'] = 'three' } }, 'reuse-3'))
    assert.are.equal('three', res.body)
    res = assert(send({ url = ng.url .. '/headers' }, 'reuse-4'))
    assert.are.equal('', res.body)   -- the previous request's X-Test is not sent again
    assert(send({ url = ng.url .. '/ok', method = 'HEAD' }, 'reuse-5'))
    res = assert(send({ url = ng.url .. '/ok' }, 'reuse-6'))
    assert.are.equal('ok\n', res.body)
    assert.is_nil(send({ url = 'http://127.0.0.1:1/refused', body = 'x' }, 'reuse-7'))
    assert(send({ url = ng.url .. '/echo', method = 'DELETE' }, 'reuse-8'))
    res = assert(send({ url = ng.url .. '/echo', body = 'nine' }, 'reuse-9'))
    assert.are.equal('nine', res.body)
    local rows = wait_rows(ng, 'reuse-', 8)
    table.sort(rows, function(a, b) return a.key < b.key end)
    local seen = {}
    for _, r in ipairs(rows) do seen[#seen + 1] = r.key .. ' ' .. r.method .. ' ' .. r.uri end
    assert.are.same({ 'reuse-1 PUT /echo', 'reuse-2 POST /echo', 'reuse-3 GET /headers',
                      'reuse-4 GET /headers', 'reuse-5 HEAD /ok', 'reuse-6 GET /ok',
                      'reuse-8 DELETE /echo', 'reuse-9 POST /echo' }, seen)
  end)

  it('raises on a request definition error', function()
    assert.has_error(function() http.request {} end, "field 'url' is required")
    assert.has_error(function() http.request { url = ng.url, headers = { 'X: a\r\nY: b' } } end,
      "field 'headers': a header contains a line break")
    -- a plain coroutine inside a task is not a task: nothing could resume it
    local ok, err = coroutine.wrap(function() return pcall(http.request, { url = ng.url .. '/ok' }) end)()
    assert.is_false(ok)
    assert.matches('must run in a task', err, 1, true)
  end)

  it('posts many bodies with bounded concurrency and one key per request', function()
    local bodies, keys = {}, {}
    for i = 1, 1000 do
      bodies[i] = '{"n":' .. i .. '}'
      keys[i] = 'many-' .. i
    end
    local s = http.post_many { url = ng.url .. '/ok', bodies = bodies, keys = keys, concurrency = 10,
                               key_header = 'Idempotency-Key',
                               headers = { ['Content-Type'] = 'application/json' } }
    assert.are.equal(1000, s.sent)
    assert.are.equal(1000, s.delivered)
    assert.are.equal(1000, s.statuses[200])
    local rows = wait_rows(ng, 'many-', 1000)
    assert.are.equal(1000, #rows)
    local seen = {}
    for _, r in ipairs(rows) do
      assert.is_nil(seen[r.key])
      seen[r.key] = true
    end
    assert.is_true(distinct(rows, 'connection') <= 10)
    -- outcomes carry the key back with the verdict
    local out = s.outcomes
    local keyed = {}
    for i = 1, out.n do keyed[out.key[i]] = out.verdict[i] end
    assert.are.equal('delivered', keyed['many-1000'])
  end)

  it('hands outcomes back in batches as they complete', function()
    local b <close> = http.batch { url = ng.url .. '/fail', concurrency = 2 }
    for i = 1, 5 do b:add('x', i) end
    local first = b:wait(2)
    assert.is_true(first.n >= 2)
    local rest = b:wait()
    assert.are.equal(5, first.n + rest.n)
    assert.are.equal(500, rest.status[rest.n])
    assert.are.equal('transient', rest.verdict[rest.n])
    assert.are.equal('broken\n', rest.detail[rest.n])
    local queued, in_flight, ready = b:stats()
    assert.are.same({ 0, 0, 0 }, { queued, in_flight, ready })
    b:close()
    assert.has_error(function() b:add('x') end, 'the batch is closed')
  end)

  -- Outcomes of a batch whose requests are all handed over wake the loop only with the last one
  -- in flight; a task waiting for fewer must still get them as they come.
  it('answers a wait for some outcomes while a slow request is still in flight', function()
    local b <close> = http.batch { url = ng.url .. '/ok', concurrency = 4 }
    b:add('x', 'slow', { url = ng.url .. '/slow' })
    for i = 1, 3 do b:add('x', 'fast-' .. i) end
    local t0 = clock.now()
    local first = b:wait(3)
    -- /slow answers after 2 s: the wait ends long before, with the three fast outcomes
    assert.is_true(clock.now() - t0 < 1500, 'the wait took ' .. (clock.now() - t0) .. ' ms')
    assert.are.equal(3, first.n)
    for i = 1, 3 do assert.are.equal('delivered', first.verdict[i]) end
    local _, in_flight = b:stats()
    assert.are.equal(1, in_flight)
    local rest = b:wait()
    assert.are.equal(1, rest.n)
    assert.are.equal('slow', rest.key[1])
  end)

  it('answers a wait at once from outcomes that came in before anyone waited', function()
    local b <close> = http.batch { url = ng.url .. '/ok', concurrency = 4 }
    b:add('x', 'slow', { url = ng.url .. '/slow' })
    for i = 1, 3 do b:add('x', 'fast-' .. i) end
    -- nobody waits while the fast ones finish: their outcomes are in, but nothing woke the loop
    herald.sleep(500)
    local t0 = clock.now()
    local first = b:wait(1)
    assert.is_true(clock.now() - t0 < 1000, 'the wait took ' .. (clock.now() - t0) .. ' ms')
    assert.is_true(first.n >= 1)
    for i = 1, first.n do assert.matches('^fast%-', first.key[i]) end
    local rest = b:wait()
    assert.are.equal(4, first.n + rest.n)
    assert.are.equal('slow', rest.key[rest.n])
  end)

  it('refills from the loop a batch larger than the requests it hands over at once', function()
    local b <close> = http.batch { url = ng.url .. '/ok', concurrency = 2 }
    local n = 1100   -- the window is 1,024 items for this concurrency
    for i = 1, n do b:add('x', 'window-' .. i) end
    local out = b:wait()
    assert.are.equal(n, out.n)
    local seen = {}
    for i = 1, out.n do
      assert.are.equal('delivered', out.verdict[i])
      seen[out.key[i]] = true
    end
    for i = 1, n do assert.is_true(seen['window-' .. i]) end
  end)

  it("gives back a gate's requests not yet started when it closes, and sends the rest", function()
    ng:clear_log()
    local gate = http.gate()
    local b <close> = http.batch { url = ng.url .. '/ok', limit = http.limit(1), concurrency = 1,
                                   key_header = 'Idempotency-Key' }
    b:add('a', 'open-1', { url = ng.url .. '/slow' })   -- 2 s on the wire
    for i = 2, 4 do b:add('x', 'gate-' .. i, { gate = gate }) end
    b:add('y', 'open-5')
    assert.is_false(gate:closed())
    herald.spawn(function() herald.sleep(300); gate:close() end)
    -- the three waiting behind the gate come back when it closes, the first still on the wire
    -- (what is on the wire behind a gate finishes as well: see deliver_spec)
    local first = b:wait(3)
    assert.are.equal(3, first.n)
    local keys = {}
    for i = 1, first.n do
      keys[#keys + 1] = first.key[i]
      assert.are.equal('recalled', first.class[i])
      assert.are.equal('transient', first.verdict[i])
      assert.are.equal(0, first.status[i])
      assert.matches('not sent', first.detail[i])
    end
    table.sort(keys)
    assert.are.same({ 'gate-2', 'gate-3', 'gate-4' }, keys)
    assert.is_true(gate:closed())
    -- what was on the wire finishes; an item behind no gate goes out
    local rest = b:wait()
    local got = {}
    for i = 1, rest.n do got[rest.key[i]] = rest.status[i] end
    assert.are.same({ ['open-1'] = 200, ['open-5'] = 200 }, got)
    -- an item handed over after the close comes back without going out
    b:add('z', 'gate-6', { gate = gate })
    assert.are.equal('recalled', b:wait().class[1])
    assert.has_error(function() b:add('w', 'bad', { gate = 'open' }) end, 'item 7: gate must be a gate (http.gate())')
    wait_rows(ng, '', 2)
    herald.sleep(100)   -- a request sent behind the gate would be logged by now as well
    local rows = ng:requests()
    local sent = {}
    for _, r in ipairs(rows) do sent[#sent + 1] = r.key end
    table.sort(sent)
    assert.are.same({ 'open-1', 'open-5' }, sent)
  end)

  -- Delivery waits for a chunk of outcomes at a time: one asking for recalled ones as well gives
  -- a paused campaign's messages back while the requests on the wire before them still run.
  it('ends a wait that asks for them when requests come back recalled, the requests on the wire still running', function()
    local gate = http.gate()
    local b <close> = http.batch { url = ng.url .. '/slow', limit = http.limit(2), concurrency = 2,
                                   key_header = 'Idempotency-Key' }
    b:add('a', 'wire-1')   -- /slow: 2 s on the wire
    b:add('b', 'wire-2')
    for i = 1, 5 do b:add('x', 'back-' .. i, { gate = gate }) end
    herald.spawn(function() herald.sleep(300); gate:close() end)
    -- asked for all seven, the waits end with the five given back while the two run on
    local back = {}
    while #back < 5 do
      local out = b:wait(7 - #back, { recalled = true })
      assert.is_true(out.n >= 1)
      for i = 1, out.n do
        assert.are.equal('recalled', out.class[i])
        back[#back + 1] = out.key[i]
      end
    end
    table.sort(back)
    assert.are.same({ 'back-1', 'back-2', 'back-3', 'back-4', 'back-5' }, back)
    local queued, in_flight, ready = b:stats()
    assert.are.same({ 0, 2, 0 }, { queued, in_flight, ready })
    local rest = b:wait(2, { recalled = true })
    assert.are.same({ 2, 200, 200 }, { rest.n, rest.status[1], rest.status[2] })
    local okw, werr = pcall(b.wait, b, 1, true)
    assert.is_false(okw)
    assert.matches('table expected, got boolean', werr, 1, true)
  end)

  it("holds a group's requests not yet started while a 429 or 503 Retry-After runs", function()
    ng:clear_log()
    local limit = http.limit(1)
    local b <close> = http.batch { url = ng.url .. '/ok', limit = limit, concurrency = 1,
                                   key_header = 'Idempotency-Key' }
    b:add('a', 'held-1', { url = ng.url .. '/limited' })
    for i = 2, 4 do b:add('x', 'held-' .. i) end
    local out = b:wait()
    assert.are.equal(4, out.n)
    local by_key = {}
    for i = 1, out.n do by_key[out.key[i]] = i end
    assert.are.equal(429, out.status[by_key['held-1']])
    for i = 2, 4 do
      local k = by_key['held-' .. i]
      assert.are.equal('held', out.class[k])
      assert.are.equal('transient', out.verdict[k])
      assert.is_true(out.retry_after_ms[k] > 6000 and out.retry_after_ms[k] <= 7000, tostring(out.retry_after_ms[k]))
      assert.matches('Retry%-After', out.detail[k])
    end
    -- another batch of the same group is held too; one of a group of its own is not
    local b2 <close> = http.batch { url = ng.url .. '/ok', limit = limit, key_header = 'Idempotency-Key' }
    b2:add('y', 'held-5')
    assert.are.equal('held', b2:wait().class[1])
    local b3 <close> = http.batch { url = ng.url .. '/ok', key_header = 'Idempotency-Key' }
    b3:add('z', 'free-1')
    assert.are.equal(200, b3:wait().status[1])
    -- a 503 with Retry-After holds as well
    local b4 <close> = http.batch { url = ng.url .. '/busy-1s', limit = http.limit(1), concurrency = 1,
                                    key_header = 'Idempotency-Key' }
    b4:add('u', 'busy-1')
    b4:add('v', 'busy-2')
    local out4 = b4:wait()
    local classes = { [out4.key[1]] = out4.class[1], [out4.key[2]] = out4.class[2] }
    assert.are.same({ ['busy-1'] = 'ok', ['busy-2'] = 'held' }, classes)
    local rows = wait_rows(ng, '', 3)
    assert.are.same({ 'held-1', 'free-1', 'busy-1' }, { rows[1].key, rows[2].key, rows[3].key })
    assert.are.equal(3, #ng:requests())
  end)

  it('takes a url and headers per batch item', function()
    local b <close> = http.batch { url = ng.url .. '/ok', concurrency = 4, key_header = 'Idempotency-Key' }
    b:add('a', 'item-1')
    b:add('b', 'item-2', { url = ng.url .. '/limited' })
    b:add('c', 'item-3', { url = ng.url .. '/headers', headers = { ['X-Test'] = 'per item' } })
    local out = b:wait()
    assert.are.equal(3, out.n)
    local by_key = {}
    for i = 1, out.n do by_key[out.key[i]] = i end
    assert.are.equal(200, out.status[by_key['item-1']])
    local limited = by_key['item-2']
    assert.are.equal(429, out.status[limited])
    assert.are.equal(7000, out.retry_after_ms[limited])
    assert.are.equal('transient', out.verdict[limited])
    assert.are.equal('slow down\n', out.detail[limited])
    local uris = {}
    for _, r in ipairs(wait_rows(ng, 'item-', 3)) do uris[r.key] = r.uri end
    assert.are.same({ ['item-1'] = '/ok', ['item-2'] = '/limited', ['item-3'] = '/headers' }, uris)
    assert.has_error(function() b:add('x', 'bad\r\nkey') end,
      'item 4: the key must be a string or a number without line breaks')
    assert.has_error(function() b:add('x', 'k', { headers = { X = 'a\nb' } }) end,
      'item 4: headers must be strings without line breaks')
    assert.has_error(function() b:add(42) end, 'item 4: the body must be a string')
  end)

  it('sends an idempotency key of any length whole', function()
    -- a webhook call for 50 endpoints lists their 50 message ids in one key (~1,850 characters)
    local key = ('long-key-' .. string.rep('0123456789abcdef,', 120)):sub(1, 2000)
    local b <close> = http.batch { url = ng.url .. '/headers', key_header = 'Idempotency-Key', concurrency = 2 }
    b:add('x', key)
    b:add('x', 987654321)   -- a number goes out as tostring writes it
    b:add('x', 2.5)
    local out = b:wait()
    assert.are.equal(3, out.n)
    for i = 1, 3 do assert.are.equal(200, out.status[i]) end
    local rows = wait_rows(ng, 'long-key-', 1)
    assert.are.equal(1, #rows)
    assert.are.equal(2000, #rows[1].key)
    assert.are.equal(key, rows[1].key)
    assert.are.equal(1, #wait_rows(ng, '987654321', 1))
    assert.are.equal(1, #wait_rows(ng, '2.5', 1))
  end)

  it('sends the item options add checked, whatever the table says when the item goes out', function()
    local b <close> = http.batch { url = ng.url .. '/ok', concurrency = 50 }
    for _ = 1, 1030 do b:add('x') end   -- more than the window (1,024): the next item waits its turn
    local opts = { url = ng.url .. '/headers', headers = { ['X-Test'] = 'fine', ['Idempotency-Key'] = 'toctou-sent' } }
    b:add('x', nil, opts)
    opts.headers['Idempotency-Key'] = nil
    opts.headers['X-Test'] = 'fine\r\nIdempotency-Key: toctou-injected'
    opts.url = ng.url .. '/missing'
    local out = b:wait()
    assert.are.equal(1031, out.n)
    for i = 1, out.n do assert.are.equal('delivered', out.verdict[i]) end
    local rows = wait_rows(ng, 'toctou-', 1)
    assert.are.equal(1, #rows)
    assert.are.equal('toctou-sent', rows[1].key)
    assert.are.equal('/headers', rows[1].uri)
  end)

  it('refuses a method, key header, key or item url that could break the request head', function()
    local token = "expected a token (letters, digits and !#$%&'*+-.^_`|~)"
    assert.has_error(function() http.batch { url = ng.url, key_header = 'Idempotency-Key: x\r\nX-Injected: yes' } end,
      "field 'key_header': " .. token)
    assert.has_error(function() http.batch { url = ng.url, method = 'POST /x HTTP/1.1\r\nX-Injected: yes' } end,
      "field 'method': " .. token)
    assert.has_error(function() http.request { url = ng.url, method = 'GET\0' } end, "field 'method': " .. token)
    local b <close> = http.batch { url = ng.url .. '/ok', key_header = 'Idempotency-Key' }
    assert.has_error(function() b:add('x', 'k\0\r\nX-Injected: yes') end,
      'item 1: the key must be a string or a number without line breaks')
    assert.has_error(function() b:add('x', 'k', { url = ng.url .. '/ok\0X-Injected: yes' }) end,
      'item 1: url must be a string without line breaks')
    assert.has_error(function() b:add('x', 'k', { headers = { ['X-A'] = 'a\0b' } }) end,
      'item 1: headers must be strings without line breaks')
    assert.are.equal(1, b:add('x', 'k', { headers = { 'X-A: a', ['X-B'] = 'b' } }))
    assert.are.equal(200, b:wait().status[1])
  end)

  -- libcurl reads the proxy variables on every transfer unless told there is no proxy; the
  -- client tells it so only when the environment names none (runtime/http_client.c).
  it('sends through the proxy the environment names, and goes direct when it names none', function()
    local dir = h.tmpdir()
    local script = h.write(dir .. '/proxy.lua', [[
      local res, err, class = herald.http.request{ url = 'http://hook.invalid/ok', timeout_ms = 10000,
                                                    headers = { ['Idempotency-Key'] = 'proxy-request-' .. arg[1] } }
      local b <close> = herald.http.batch{ url = 'http://hook.invalid/ok', concurrency = 2, key_header = 'Idempotency-Key' }
      b:add('{}', 'proxy-batch-' .. arg[1])
      local out = b:wait()
      print(res and res.status or class, out.status[1] or out.class[1])
    ]])
    -- nginx takes the absolute-form requests a client sends its proxy and answers /ok itself
    local out, code, err = h.herald(h.shell_quote(script) .. ' a', { env = { http_proxy = ng.url } })
    assert.are.equal(0, code, err)
    assert.are.equal('200\t200\n', out)
    assert.are.equal(1, #wait_rows(ng, 'proxy-request-a', 1))
    assert.are.equal(1, #wait_rows(ng, 'proxy-batch-a', 1))
    -- without it the host does not resolve: nothing reaches nginx
    out, code, err = h.herald(h.shell_quote(script) .. ' b', { env = { http_proxy = '' } })
    assert.are.equal(0, code, err)
    assert.are_not.equal('200\t200\n', out)
    assert.are.equal(0, #rows_with(ng, 'proxy-request-b'))
    assert.are.equal(0, #rows_with(ng, 'proxy-batch-b'))
  end)

  it('reports refused connections per request in a batch', function()
    local b <close> = http.batch { url = 'http://127.0.0.1:' .. S.free_port() .. '/', concurrency = 3 }
    b:add_many({ 'a', 'b', 'c', 'd' })
    local out = b:wait()
    assert.are.equal(4, out.n)
    for i = 1, 4 do
      assert.are.equal('connect', out.class[i])
      assert.are.equal('transient', out.verdict[i])
    end
  end)

  it('backs off exponentially between a minimum and a maximum', function()
    assert.are.equal(1000, http.backoff(1, 1000, 60000, 0))
    assert.are.equal(8000, http.backoff(4, 1000, 60000, 0))
    assert.are.equal(60000, http.backoff(20, 1000, 60000, 0))
    for attempt = 1, 12 do
      local d = http.backoff(attempt, 1000, 60000, 0.5)
      local full = math.min(60000, 1000 * 2 ^ (attempt - 1))
      -- at the minimum the jitter goes upwards (up to half the minimum more)
      local hi = full == 1000 and 1500 or full
      assert.is_true(d >= math.max(1000, full / 2) and d <= hi, attempt .. ': ' .. d)
    end
    -- first retries of many failures spread out instead of all coming back at once
    local seen = {}
    for _ = 1, 50 do seen[http.backoff(1, 1000, 60000, 0.5)] = true end
    local distinct = 0
    for _ in pairs(seen) do distinct = distinct + 1 end
    assert.is_true(distinct > 10, distinct .. ' distinct first delays')
    assert.are.equal(1000, http.backoff(1, 1000, 1000, 0.5))  -- never past the maximum
  end)

  it('lets a transfer in flight finish when a stop is requested', function()
    local dir = h.tmpdir()
    local script = h.write(dir .. '/stop.lua', string.format([[
      local task = require 'herald.core.task'
      local got
      herald.spawn(function()
        local res, err, class = herald.http.request{ url = %q, timeout_ms = 10000 }
        got = res and (res.status .. ' ' .. res.body) or (err .. ' ' .. class)
      end)
      local slept
      herald.spawn(function() herald.sleep(10000); slept = require('herald.core').stopping() end)
      herald.sleep(200)
      task.request_stop()
      while got == nil do herald.sleep(50) end
      print(got, slept)
    ]], ng.url .. '/slow'))
    local out, code, err = h.herald(script)
    assert.are.equal(0, code, err)
    assert.are.equal('200 done\n\ttrue\n', out)
  end)

  it('cancels transfers in flight cleanly at shutdown', function()
    local dir = h.tmpdir()
    local script = h.write(dir .. '/shutdown.lua', string.format([[
      local task = require 'herald.core.task'
      herald.spawn(function() herald.http.request{ url = %q }; print('request resumed') end)
      local b = herald.http.batch{ url = %q, method = 'GET', concurrency = 2 }
      b:add_many{ '', '', '' }
      herald.spawn(function() b:wait(); print('batch resumed') end)
      herald.spawn(function() herald.sleep(100); task.stop() end)
      print('started')
    ]], ng.url .. '/slow', ng.url .. '/slow'))
    local t0 = herald.monotonic_ms()
    local out, code, err = h.herald(script)
    assert.are.equal(0, code, err)
    assert.are.equal('started\n', out)
    assert.is_true(herald.monotonic_ms() - t0 < 1800)
  end)

  it('exits when its work is done although the server keeps the connection open', function()
    -- nginx keeps idle connections for 120 s; the pooled connection's poll must not hold the
    -- loop, or every `herald run` would wait for the server to hang up
    local dir = h.tmpdir()
    local script = h.write(dir .. '/idle.lua', string.format([[
      local res = assert(herald.http.request { url = %q })
      local again = assert(herald.http.request { url = %q })
      print(res.status, again.status, herald.http.stats().connections)
    ]], ng.url .. '/ok', ng.url .. '/ok'))
    local t0 = herald.monotonic_ms()
    local out, code, err = h.herald(script)
    assert.are.equal(0, code, err)
    assert.are.equal('200\t200\t1\n', out)
    assert.is_true(herald.monotonic_ms() - t0 < 5000, 'exited after ' .. (herald.monotonic_ms() - t0) .. ' ms')
  end)

  it('replaces a pooled connection the server closed while it was idle', function()
    -- a process of its own, so the pool holds exactly one connection; after /short-keepalive
    -- nginx closes it once it has been idle for 1 s
    local dir = h.tmpdir()
    local script = h.write(dir .. '/reopen.lua', string.format([[
      local first = assert(herald.http.request { url = %q })
      assert(first.status == 200, first.status)
      herald.sleep(1500)
      for i = 1, 5 do
        local r = assert(herald.http.request { url = %q, headers = { ['Idempotency-Key'] = 'after-close-' .. i } })
        assert(r.status == 200, r.status)
      end
      print(herald.http.stats().connections)
    ]], ng.url .. '/short-keepalive', ng.url .. '/ok'))
    local out, code, err = h.herald(script)
    assert.are.equal(0, code, err)
    assert.are.equal('2\n', out)
    local rows = wait_rows(ng, 'after-close-', 5)
    assert.are.equal(5, #rows)
    assert.are.equal(1, distinct(rows, 'connection'))
  end)

  it('caps connections per host', function()
    http.configure { max_host_connections = 2 }
    local bodies, keys = {}, {}
    for i = 1, 100 do bodies[i] = 'x'; keys[i] = 'cap-' .. i end
    local ok, s = pcall(http.post_many, { url = ng.url .. '/ok', bodies = bodies, keys = keys,
                                          key_header = 'Idempotency-Key', concurrency = 10 })
    http.configure { max_host_connections = 64 }
    assert(ok, s)
    assert.are.equal(100, s.delivered)
    local rows = wait_rows(ng, 'cap-', 100)
    assert.are.equal(100, #rows)
    assert.is_true(distinct(rows, 'connection') <= 2)
  end)

  it('keeps the connections of two hosts alive at 50 each', function()
    -- fresh servers, so every connection counted was opened here
    local pause = '      location = /pause { echo_sleep 0.01; echo ok; }\n'
    local a = S.start_nginx { tls = false, locations = pause }
    local b = S.start_nginx { tls = false, locations = pause }
    local ok, e = pcall(function()
      local before = http.stats().connections
      local finished, delivered = 0, 0
      for _, server in ipairs { a, b } do
        herald.spawn(function()
          local bodies = {}
          for i = 1, 1000 do bodies[i] = 'x' end
          local s = http.post_many { url = server.url .. '/pause', bodies = bodies, concurrency = 50 }
          delivered = delivered + s.delivered
          finished = finished + 1
        end)
      end
      while finished < 2 do herald.sleep(20) end
      assert.are.equal(2000, delivered)
      local opened = http.stats().connections - before
      assert.is_true(opened <= 2 * 50 + 10, opened .. ' connections for 2,000 requests')
    end)
    a:stop()
    b:stop()
    assert(ok, e)
  end)

  it('starts the clock of a transfer beyond the host cap only when its turn comes', function()
    -- a fresh server; /half answers after half a second
    local half = S.start_nginx { locations = '      location = /half { echo_sleep 0.5; echo ok; }\n' }
    http.configure { max_host_connections = 2 }
    local ok, e = pcall(function()
      -- eight at once over two connections: four rounds of half a second, each within 1.2 s
      local b <close> = http.batch { url = half.url .. '/half', method = 'GET', concurrency = 8, timeout_ms = 1200 }
      for _ = 1, 8 do b:add('') end
      local out = b:wait()
      assert.are.equal(8, out.n)
      for i = 1, out.n do assert.are.equal('delivered', out.verdict[i], out.detail[i]) end
      -- over HTTP/2 the cap counts connections, which carry many streams: once the host has
      -- answered over HTTP/2, the rest go at once (two rounds, not four)
      local h2 <close> = http.batch { url = half.tls_url .. '/half', method = 'GET', concurrency = 8,
                                      timeout_ms = 1200, ca_file = half.ca }
      for _ = 1, 8 do h2:add('') end
      local t0 = clock.now()
      out = h2:wait()
      local elapsed = clock.now() - t0
      for i = 1, out.n do assert.are.equal('delivered', out.verdict[i], out.detail[i]) end
      assert.is_true(elapsed < 1700, 'took ' .. elapsed .. ' ms')
    end)
    http.configure { max_host_connections = 64 }
    half:stop()
    assert(ok, e)
  end)

  it('keeps batches that share a limit to its count of transfers in flight', function()
    -- a fresh server, so every connection counted was opened here
    local slow = S.start_nginx { tls = false, locations = '      location = /pause { echo_sleep 0.05; echo ok; }\n' }
    local ok, e = pcall(function()
      local function two_batches(prefix, limit)
        local finished, delivered = 0, 0
        for b = 1, 2 do
          herald.spawn(function()
            local batch <close> = http.batch { url = slow.url .. '/pause', concurrency = 3, limit = limit,
                                               key_header = 'Idempotency-Key' }
            for i = 1, 12 do batch:add('x', prefix .. b .. '-' .. i) end
            local out = batch:wait()
            for i = 1, out.n do if out.verdict[i] == 'delivered' then delivered = delivered + 1 end end
            finished = finished + 1
          end)
        end
        while finished < 2 do herald.sleep(10) end
        assert.are.equal(24, delivered)
        return distinct(wait_rows(slow, prefix, 24), 'connection')
      end
      -- without a shared limit each batch keeps its own 3 in flight
      assert.is_true(two_batches('apart-', nil) > 3)
      local shared = http.limit(3)
      local conns = two_batches('shared-', shared)
      assert.is_true(conns >= 1 and conns <= 3, conns .. ' connections')
    end)
    slow:stop()
    assert(ok, e)
  end)
end)
