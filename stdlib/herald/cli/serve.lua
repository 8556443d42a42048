-- `herald serve`: the engagement HTTP server (open pixel, click redirect, unsubscribe, PutEvents,
-- provider status webhooks).
local server = require 'herald.core.server'
local task = require 'herald.core.task'
local api = require 'herald.api'

local M = {}

M.usage = [[
usage: herald serve [options]

Runs the engagement server until SIGINT or SIGTERM:
  GET  /t/o/TOKEN   open pixel (a 1x1 GIF), records an open
  GET  /t/c/TOKEN   redirects (302) to the link the token signs, records a click
  GET  /t/u/TOKEN   unsubscribe page (a confirmation form; changes nothing)
  POST /t/u/TOKEN   RFC 8058 one-click unsubscribe (body List-Unsubscribe=One-Click)
  POST /v1/apps/APP/events           Pinpoint PutEvents (EventsRequest -> EventsResponse,
                                     per-item StatusCode 202 or 400; at most 100 events)
  POST /v1/apps/APP/webhooks/status  a provider notification {"MessageId", "Type": DELIVERY |
                                     BOUNCE | COMPLAINT | SMS, "BounceType": HARD | SOFT,
                                     "Status": SUCCESS | FAILURE | OPTOUT, "Timestamp", "Reason"}
  GET  /v1/apps/APP/campaigns/CAMPAIGN/kpis/daterange/KPI?start-time=ISO&end-time=ISO
                                     Pinpoint GetCampaignDateRangeKpi (CampaignDateRangeKpiResponse;
                                     the KPIs of herald.analytics.kpi, e.g. clicks-grouped-by-date)
  POST /v1/apps/APP/webhooks/mail    a bounce (RFC 3464 DSN) or complaint (RFC 5965 ARF) as
                                     the whole mail (message/rfc822): 202 recorded, 200
                                     ignored, 400 not a report, 404 no message matches
                                     (herald feedback --help describes what is recorded)
Opens, clicks and unsubscribes are stored as _email.open, _email.click and _email.unsubscribe
events (unsubscribe also sets OptOut ALL); a hard bounce makes the endpoint INACTIVE, a
complaint or SMS OPTOUT sets OptOut ALL (runtime/ingest.h has the details).
Tokens are signed with the key in $HERALD_TRACKING_KEY or, when unset, the database's
(generated on first use); mint them with herald.tracking.open_url{...} and friends.
Errors are JSON bodies {"Message": ..., "RequestID": ...}.

options:
  --listen HOST:PORT      address to listen on (default 127.0.0.1:8080; port 0: any free)
  --max-body BYTES        request body cap (default 4194304, Pinpoint's PutEvents limit); a
                          larger Content-Length is answered 413 at once (without the 100
                          Continue a client sending Expect: 100-continue waits for)
  --idle-timeout MS       close keep-alive connections idle this long (default 60000)
  --request-timeout MS    a request must arrive whole within this (default 30000)
  --max-connections N     default 10000
  --journal-min-hits N    an iteration with N or more hits (default 16) answers them once they
                          are in the journal file beside the database (<db>-hits) and stores
                          them later, in larger transactions; 0: every hit is in the database
                          before it is answered
  --journal-fold-hits N   store journaled hits once N are waiting (default 1024)
  --journal-fold-ms MS    ... or MS after the first of them (default 50)
A server that stops unexpectedly leaves its journal; the next `herald serve` on the database
stores what it holds before it listens.
]]

local function fail(fmt, ...)
  io.stderr:write('herald serve: ' .. string.format(fmt, ...) .. '\n')
  return 2
end

local NUMERIC = {
  ['--max-body'] = 'max_body',
  ['--idle-timeout'] = 'idle_timeout_ms',
  ['--request-timeout'] = 'request_timeout_ms',
  ['--max-connections'] = 'max_connections',
  ['--journal-min-hits'] = 'journal_min_hits',
  ['--journal-fold-hits'] = 'journal_fold_hits',
  ['--journal-fold-ms'] = 'journal_fold_ms',
}

function M.run(args)
  local opts = { listen = '127.0.0.1:8080', routes = api.routes() }
  local i = 1
  while args[i] do
    local a = args[i]
    local v = args[i + 1]
    if a == '--listen' then
      if v == nil then return fail('--listen needs HOST:PORT') end
      opts.listen = v
      i = i + 2
    elseif NUMERIC[a] then
      local n = tonumber(v)
      if n == nil or n ~= math.floor(n) or n < 0 then return fail('%s needs a whole number', a) end
      opts[NUMERIC[a]] = math.tointeger(n)
      i = i + 2
    else
      return fail('unknown option %s\n%s', a, M.usage)
    end
  end

  local ok, srv, err = pcall(server.start, opts)
  if not ok then
    io.stderr:write('herald serve: ' .. tostring(srv) .. '\n')
    return 1
  end
  if not srv then
    io.stderr:write('herald serve: ' .. err .. '\n')
    return 1
  end
  task.watch_signals()
  io.stdout:write(string.format('herald serve: listening on http://%s\n', srv:address()))
  io.stdout:flush()
  local cli = require 'herald.cli'
  local done, res = cli.run_task(function()
    -- a stop request cuts this sleep short
    while task.sleep(3600 * 1000) do end
    local s = srv:stats()
    srv:stop()
    io.stdout:write(string.format(
      'herald serve: stopped after %d requests (%d opens, %d clicks, %d unsubscribes, %d rejected tokens)\n',
      s.requests, s.opens, s.clicks, s.unsubscribes, s.rejected))
  end)
  if not done then
    io.stderr:write('herald serve: ' .. tostring(res) .. '\n')
    return 1
  end
  return 0
end

return M
