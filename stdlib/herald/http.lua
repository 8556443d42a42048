-- herald.http: HTTP(S) and SMTP(S) through the runtime's transport engine (libcurl multi on the
-- event loop). Calls that wait yield the calling task; runtime failures return nil, err, class
-- where class is one of timeout, connect, reset, tls, status, auth, invalid, protocol (and, for
-- requests never sent, held and recalled).
--
-- Batches are the throughput path (and the outbox's seam): no task per request.
--   local b <close> = http.batch{url=, concurrency=50, key_header='Idempotency-Key', headers=}
--   b:add(body, key[, {url=, headers=}])       -- or b:add_many(bodies, keys[, options])
--   local out = b:wait([min])                  -- yields until min outcomes (default: all)
--   local out = b:wait(min, {recalled = true}) -- or until items come back recalled (below)
--   -- out.n, and arrays out.seq, out.key, out.status, out.class, out.verdict,
--   -- out.retry_after_ms, out.detail (failure text or the start of a failure body)
-- Batches given the same limit (http.limit(n)) have at most n transfers in flight between them.
-- An item added with a gate (b:add(body, key, {gate = g}), g = http.gate(); send_mail's gate=)
-- comes back unsent, class 'recalled', if g:close() comes before the transport has started it.
local core = require 'herald.core.http'

local http = {
  request = core.request,       -- {method=, url=, headers=, body=, timeout_ms=, ...} -> response
  send_mail = core.send_mail,   -- {url=, from=, to=, subject=, text=, html=, message_id=, ...}
  build_mail = core.build_mail, -- the RFC 5322 text send_mail would send, and its Message-ID
  batch = core.batch,           -- {url=, concurrency=, headers=, key_header=, limit=, ...} -> batch
  limit = core.limit,           -- (n) -> a cap of n transfers at once that batches share (limit=)
  gate = core.gate,             -- () -> a gate: g:close(), g:closed() (gate= of an item or a mail)
  verdict = core.verdict,       -- (class, status[, smtp]) -> delivered | transient | permanent
  backoff = core.backoff,       -- (attempt, min_ms, max_ms[, jitter]) -> delay ms
  configure = core.configure,   -- {max_host_connections=, max_total_connections=, ...}
  stats = core.stats,           -- {in_flight=, connections=}
}

-- post_many{url=, bodies={...}, keys={...}, concurrency=N, headers=, key_header=, timeout_ms=}
-- POSTs every body with at most `concurrency` requests in flight, without a task per request.
-- Returns {sent=, delivered=, transient=, permanent=, statuses={[code]=count},
-- classes={[class]=count}, outcomes=} where outcomes is what batch:wait() returns.
function http.post_many(opts)
  if type(opts) ~= 'table' then error('post_many: expected a table of options', 2) end
  if type(opts.bodies) ~= 'table' then error("post_many: field 'bodies' must be a list of strings", 2) end
  local b <close> = core.batch {
    url = opts.url, method = opts.method, headers = opts.headers, concurrency = opts.concurrency,
    timeout_ms = opts.timeout_ms, key_header = opts.key_header, ca_file = opts.ca_file,
    http1 = opts.http1,
  }
  b:add_many(opts.bodies, opts.keys)
  local out = b:wait()
  local summary = { sent = out.n, delivered = 0, transient = 0, permanent = 0, statuses = {},
                    classes = {}, outcomes = out }
  local status, class, verdict = out.status, out.class, out.verdict
  for i = 1, out.n do
    local v = verdict[i]
    summary[v] = summary[v] + 1
    local s = status[i]
    if s ~= 0 then summary.statuses[s] = (summary.statuses[s] or 0) + 1 end
    local c = class[i]
    if c ~= 'ok' then summary.classes[c] = (summary.classes[c] or 0) + 1 end
  end
  return summary
end

return http
