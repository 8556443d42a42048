-- The scheduler loop of `herald run`, on the host side. Definitions and every piece of user
-- code live in a sandbox; each step that can run user code (materialising a campaign's run,
-- delivering a batch) is its own sandboxed call, so a failing or runaway campaign fails that
-- step with its file and line while the loop and the other campaigns go on. A stop request
-- (SIGINT/SIGTERM) cuts the sleep short; the step in hand finishes writing first. A step
-- that meets a busy store (another process holding it past the busy timeout: an import, a
-- second herald) or a failing one (disk full, I/O error, read-only) fails no campaign: the
-- loop waits a second and tries it again.
local core = require 'herald.core'
local task = require 'herald.core.task'
local clock = require 'herald.core.clock'
local outbox = require 'herald.core.outbox'
local sandbox = require 'herald.sandbox'
local sandbox_core = require 'herald.core.sandbox'
local campaign = require 'herald.campaign'
local deliver = require 'herald.deliver'
local winner = require 'herald.winner'
local db = require 'herald.db'
local store_transaction = require('herald.core.deliver').transaction

local runner = {}
runner.__index = runner

local CLAIM_BATCH = 256
local POLL_MS = 1000
local EVENT_POLL_MS = 20
-- A pass of delivery ends after this long (its lanes finish the claims they hold) so the loop
-- goes round: event triggers, new runs and A/B decisions are not held up behind a large
-- campaign's whole audience.
local DRAIN_BUDGET_MS = 250
-- The least time from the start of one pass to the next, when nothing is due at once.
local MIN_PASS_MS = 20
-- How long the loop waits before it tries again what a busy or failing store refused.
local BUSY_WAIT_MS = 1000
-- How many times loading tries a file again while the store is busy, a second apart (as
-- delivery does with what it must write): a minute, then the load fails, the store blamed.
local LOAD_TRIES = 60
-- A run that is to end (--until-idle, --until, a manual clock) gives up after the store has
-- failed or stayed busy this long without a break, rather than wait for ever as a daemon
-- does: a batch job on a full disk exits 1 instead of hanging. HERALD_STORE_PATIENCE_MS sets
-- it (specs shorten it).
local STORE_PATIENCE_MS = tonumber(os.getenv('HERALD_STORE_PATIENCE_MS') or '') or 10 * 60 * 1000

-- What the store's failure err is (nil: err is not one, it is the failure of what ran): a
-- busy store, or one that failed itself. Neither is a campaign's fault.
local function store_trouble(err)
  if db.busy(err) then return 'the store is busy (another process holds it)' end
  if db.unavailable(err) then return 'the store failed (no fault of the campaigns)' end
  return nil
end

-- new{memory =, budget =, log = function(msg), err = function(msg)}
function runner.new(opts)
  opts = opts or {}
  local sb = sandbox.new { memory = opts.memory, budget = opts.budget }
  return setmetatable({
    sb = sb,
    log = opts.log or function() end,
    err = opts.err or function(msg) io.stderr:write('herald run: ' .. msg .. '\n') end,
    failures = 0,
    busy = nil,        -- {what =, err =}: the first step of this pass the store refused
    busy_passes = 0,   -- passes in a row that met one
    trigger_batch = {}, -- campaign id -> the smaller batch its triggers are processed in
  }, runner)
end

-- Calls scheduler.NAME(...) in the sandbox. Returns true, results... or false, the error
-- after reporting it (the store's failure, busy or not, is noted for the pass's wait instead:
-- store_trouble(err) tells).
function runner:step(name, ...)
  local r = table.pack(self.sb:run('local name = ...; local s = require "herald.scheduler";'
    .. ' return s[name](select(2, ...))', '=(herald run)', name, ...))
  if not r[1] then
    local err = tostring(r[2])
    if store_trouble(err) then
      self:met_busy(name, err)
    else
      self.failures = self.failures + 1
      self.err(err)
    end
    return false, err
  end
  return table.unpack(r, 1, r.n)
end

-- The first line of a load error (file:line: message), without the traceback.
local function headline(err)
  return (tostring(err):match('^[^\n]*'))
end

-- Notes a failure of what (a step) on a busy or failing store, for the wait at the end of
-- the pass; it is no failure of the run.
function runner:met_busy(what, err)
  self.busy = self.busy or { what = what, err = err }
end

-- After a pass that met a busy or failing store: waits, then the loop goes round and tries
-- again. Said on the first such pass and every tenth, not every second of a long import.
-- Returns false, without waiting, once a run that is to end has met the store's failures for
-- longer than its patience (self.patience_ms): the loop then gives up.
function runner:wait_busy()
  self.busy_passes = self.busy_passes + 1
  if self.busy_passes == 1 then self.trouble_since = task.now() end
  if self.patience_ms and task.now() - self.trouble_since >= self.patience_ms then
    self.gave_up = string.format('%s: %s for %d s, giving up: %s', self.busy.what, store_trouble(self.busy.err),
      (task.now() - self.trouble_since) // 1000, headline(self.busy.err))
    self.busy = nil
    return false
  end
  if self.busy_passes == 1 or self.busy_passes % 10 == 0 then
    self.err(string.format('%s: %s, trying again: %s', self.busy.what, store_trouble(self.busy.err),
      headline(self.busy.err)))
  end
  self.busy = nil
  task.sleep(BUSY_WAIT_MS)
  return true
end

-- What the store's commit says when a write inside the transaction failed (runtime/store.c).
local INNER_FAILURE = 'transaction rolled back by an inner failure'

-- A load error that does not name its file (a memory or time limit, a store error) gets the
-- file's name in front, so the report says which file failed.
local function naming(f, err)
  err = tostring(err)
  local base = f:match('[^/]*$')
  if headline(err):find(base .. ':', 1, true) then return err end
  return f .. ': ' .. err
end

-- Runs definition file f (source: its real path) inside one store transaction, which stores
-- its campaigns once it has loaded. Returns true, or false and the error with the file's
-- campaigns dropped again (nothing of them was stored).
function runner:load_file(f, source)
  local _, mark = self.sb:run('local c = require("herald.campaign"); c.source = ...; ' ..
    'require("herald.segment").loading_definitions = true; return c.mark()',
    '=(herald run)', source)
  local ok, err = pcall(store_transaction, function()
    local okf, ferr = self.sb:run_file(f)
    if not okf then error(ferr, 0) end
    local okc, cerr = self.sb:run('return require("herald.campaign").commit(...)', '=(herald run)', source)
    if not okc then error(cerr, 0) end
  end)
  self.sb:run('require("herald.campaign").source = nil; ' ..
    'require("herald.segment").loading_definitions = false')
  if ok then return true end
  if tostring(err):find(INNER_FAILURE, 1, true) then
    -- The file ran to its end, but a write it made failed and it went on (it handled the
    -- error): the store rolled the whole file back, so say why in the file's terms.
    err = 'a write of this file to the store failed and the file went on; a definition ' ..
      'file is stored whole or not at all, so nothing of it was stored'
  end
  self.sb:run('require("herald.campaign").rollback(...)', '=(herald run)', mark)
  return false, tostring(err)
end

-- Calls fn(...) (which answers a result, or false or nil and the error) again while the
-- store is busy, a second apart, at most LOAD_TRIES times, saying so (what names the work) on
-- the first wait and every tenth. Returns fn's last answer.
function runner:patiently(what, fn, ...)
  for attempt = 1, LOAD_TRIES do
    local r = table.pack(fn(...))
    if r[1] or not db.busy(r[2]) or attempt == LOAD_TRIES or core.stopping() then
      return table.unpack(r, 1, r.n)
    end
    if attempt == 1 or attempt % 10 == 0 then
      self.err(string.format('%s: %s, trying again: %s', what, store_trouble(r[2]), headline(r[2])))
    end
    task.sleep(BUSY_WAIT_MS)
  end
end

-- Reports err, the store's failure that stopped loading file f (nil: the stored copies):
-- nothing is made INVALID for it, and what was stored stays as it was.
function runner:store_failed(f, err)
  self.failures = self.failures + 1
  self.err(string.format('%s: %s; %s', store_trouble(err), headline(err),
    f and (f .. ' was not loaded: nothing of it was stored and its stored campaigns are as they were')
      or 'the stored copies were not loaded'))
end

-- Loads definition files; a file that fails leaves none of its campaigns behind (they are
-- stored only once the whole file has loaded, together in one transaction), and the
-- campaigns it defined before (stored with it as their source) keep their stored version and
-- become INVALID with the error until it loads again. Then the stored copies load.
-- The file runs inside that transaction too, so what it writes as it runs (a segment import
-- registers its endpoints there and then) is undone with its campaigns when it fails; imports
-- apply only when their data changed (herald.segment.loading_definitions).
-- A busy store is no failure of a file: the file is tried again a second later, for up to a
-- minute. A store that stays busy, or fails itself (disk full, I/O error, read-only), stops
-- the load with nothing made INVALID. Runs in a task (it waits). Returns whether every file
-- loaded, and the store's error when the store stopped it.
function runner:load(files)
  local ok_all = true
  for _, f in ipairs(files) do
    local source = sandbox_core.realpath(f) or f
    local ok, err = self:patiently(f, self.load_file, self, f, source)
    if not ok and store_trouble(err) then
      self:store_failed(f, err)
      return false, err
    end
    if not ok then
      err = naming(f, err)
      self.failures = self.failures + 1
      self.err(err)
      ok_all = false
      local n, ierr = self:patiently(f .. ': marking its stored campaigns INVALID',
        campaign.invalidate_source, source, headline(err))
      if n == nil then
        self.failures = self.failures + 1
        self.err(string.format('%s: its stored campaigns could not be marked INVALID: %s', f, ierr))
        if store_trouble(ierr) then return false, ierr end
      elseif n > 0 then
        self.err(string.format('%s: %d stored campaign%s of this file %s INVALID; their pending messages are held',
          f, n, n == 1 and '' or 's', n == 1 and 'is' or 'are'))
      end
    end
  end
  local ok, n, failures = self:patiently('loading stored copies', function()
    return self.sb:run('return require("herald.campaign").load_copies()')
  end)
  if not ok and store_trouble(n) then
    self:store_failed(nil, n)
    return false, n
  end
  if not ok then
    failures = { n }
  end
  for _, msg in ipairs(failures or {}) do
    self.failures = self.failures + 1
    self.err(tostring(msg))
    ok_all = false
  end
  return ok_all
end

-- Processes the new events of event campaign id, a batch in a sandboxed call of its own, so a
-- predicate that fails or runs past the budget fails this campaign alone. A batch that fails
-- is tried again halved, and the campaign keeps the smaller batch: the events before a failing
-- one still fire, and a predicate that is merely slow over a whole batch gets through in
-- smaller ones. A single event that fails makes the campaign INVALID (its cursor stays before
-- that event): invalidate[id] gets the error. Returns whether a full batch was read (more
-- events are waiting).
function runner:trigger(id, now, full, invalidate)
  while true do
    local batch = self.trigger_batch[id]
    local r = table.pack(self.sb:run('local s = require "herald.scheduler"; return s.trigger(...)',
      '=(herald run)', id, now, batch))
    if r[1] then return r[2] >= r[3] end
    local err = tostring(r[2])
    if store_trouble(err) then
      self:met_busy('triggers', err)
      return false
    end
    batch = batch or full
    if batch <= 1 then
      self.failures = self.failures + 1
      self.err(string.format('campaign %s: %s', id, err))
      invalidate[id] = headline(err)
      return false
    end
    self.trigger_batch[id] = batch // 2
  end
end

-- Materialises campaign id's run `index` at `at`: the sandbox prepares it, the host writes it
-- (outbox.materialize_run, one transaction) and the segment's Lua filter and the hook judge its
-- rows in batches, each batch a sandboxed call of its own with its own instruction budget and
-- time limit, as event batches are (Pinpoint gives a hook 15 s per batch of endpoints): a
-- filter or hook over a large audience gets through, and one that fails or runs away on a
-- batch fails the run, with its own file:line. Returns as step: true, run id, created, total
-- rows; or false and the error, reported (the store's failure noted for the pass's wait).
function runner:materialize(id, at, index)
  local ok, spec, lua = self:step('materialize_spec', id, at, index)
  if not ok then return false, spec end
  local failure
  if lua then
    spec.filter = function(rows)
      local okf, verdicts = self.sb:run('local s = require "herald.scheduler"; return s.filter_rows(...)',
        '=(herald run)', id, rows)
      if not okf then
        failure = tostring(verdicts)
        error(failure, 0)
      end
      return verdicts
    end
  end
  local okm, run_id, created = pcall(outbox.materialize_run, spec)
  local okt, total = self:step('materialized', okm and run_id or nil)
  if not okm then
    -- the filter's or hook's own error as the sandbox gave it (its file:line, its traceback)
    local err = failure or tostring(run_id)
    if store_trouble(err) then
      self:met_busy('campaign ' .. id .. ': materialising a run', err)
    else
      self.failures = self.failures + 1
      self.err(string.format('campaign %s: %s', id, err))
    end
    return false, err
  end
  if not okt then return false, total end
  return true, run_id, created, total
end

local function all_failed(due, failed)
  for _, d in ipairs(due) do
    if not failed[d.id .. '@' .. d.at] then return false end
  end
  return true
end

-- Runs the loop inside a task. opts.until_idle ends it when nothing more is due; opts.until_ms
-- when nothing more is due before that instant (for a manual clock running months ahead).
function runner:loop(opts)
  opts = opts or {}
  if opts.until_idle or opts.until_ms or clock.is_manual() then self.patience_ms = STORE_PATIENCE_MS end
  -- a claim's outcomes wait for the store as long as the loop would (nil: for ever)
  deliver.store_patience_ms = self.patience_ms
  local recovered
  while true do
    local okr, r = pcall(outbox.recover)
    if okr then
      recovered = r
      break
    end
    if not store_trouble(r) then error(r, 0) end
    self:met_busy('recovering in-doubt messages', r)
    if not self:wait_busy() then return { gave_up = self.gave_up } end
    if core.stopping() then return { stopped = true } end
  end
  self.busy_passes = 0
  if recovered > 0 then
    self.log(string.format('recovered %d in-doubt messages; they are retried with the same message id',
      recovered))
  end
  local failed = {}
  -- campaign id -> the error that makes it INVALID, until the store has taken it
  local invalidate = {}
  local last_refresh
  while not core.stopping() do
    local now = clock.now()
    local progressed = false
    local ok, plan = self:step('plan', now)
    if not ok then
      if not self.busy then break end
      if not self:wait_busy() then return { gave_up = self.gave_up } end
      goto continue
    end
    for _, v in ipairs(plan.versions) do
      if v.error then
        self.failures = self.failures + 1
        self.err(string.format('campaign %s: %s', v.id, v.error))
      else
        self.log(string.format('campaign %s: version %d stored; new runs use it', v.id, v.version))
      end
    end
    for _, d in ipairs(plan.due) do
      local key = d.id .. '@' .. d.at
      if not failed[key] then
        local okm, run_id, created, n = self:materialize(d.id, d.at, d.index)
        if okm then
          progressed = true
          if created then
            self.log(string.format('campaign %s: run %d materialised for %d endpoints', d.id, run_id, n))
          end
        elseif not store_trouble(run_id) then
          -- the campaign's own failure (its code, its definition); the store's (busy, its disk
          -- full, an I/O error) is not one: the run is materialised on a later pass, once the
          -- store takes it
          failed[key] = true
          invalidate[d.id] = headline(run_id)
        end
      end
    end

    local okt, trigger_ids, full = self:step('triggers')
    local events, more_events = okt and #trigger_ids > 0, false
    for _, id in ipairs(okt and trigger_ids or {}) do
      if not invalidate[id] and self:trigger(id, now, full, invalidate) then more_events = true end
    end
    if more_events then progressed = true end

    for id, err in pairs(invalidate) do
      local oki, ierr = self:step('mark_invalid', id, err)
      if oki or not store_trouble(ierr) then invalidate[id] = nil end
    end

    local okids, ids_json = self:step('campaign_ids')
    if not okids then
      if not self.busy then break end
      if not self:wait_busy() then return { gave_up = self.gave_up } end
      goto continue
    end
    -- A/B winners before delivery, so a released rest goes out in this pass
    local okw, made, next_decision = pcall(winner.step, plan.ids, now)
    if not okw then
      if store_trouble(made) then
        self:met_busy('A/B decisions', made)
      else
        self.failures = self.failures + 1
        self.err(tostring(made))
      end
      made, next_decision = {}, nil
    end
    for _, d in ipairs(made) do
      progressed = true
      local r = d.result
      self.log(string.format('campaign %s: run %d A/B decision %s (%s): %s; %d waiting endpoints %s',
        d.campaign, d.run, r.decision, r.metric, r.reason, r.released,
        r.winner and ('get treatment ' .. r.winner) or 'are skipped (AB_STOPPED)'))
    end
    local drain_start = clock.now()
    local function enough()
      return core.stopping() or clock.now() - drain_start >= DRAIN_BUDGET_MS
    end
    -- A store that fails under the delivery (disk full, I/O errors) is waited for like one that
    -- fails elsewhere in the pass: a claim it refused left nothing claimed, and the outcomes
    -- of messages already out were waited for in place (deliver.store_patience_ms).
    local okd, n, next_due = pcall(deliver.drain, now, CLAIM_BATCH, ids_json, enough)
    if not okd then
      if not store_trouble(n) then error(n, 0) end
      if self.patience_ms and deliver.in_doubt() > 0 and not core.stopping() then
        -- the outcomes waited in place for the whole patience already: no second window
        self.gave_up = string.format('delivering: %s, giving up: %s', store_trouble(n), headline(n))
        return { gave_up = self.gave_up, in_doubt = deliver.in_doubt() }
      end
      self:met_busy('delivering', n)
      n, next_due = 0, nil
    end
    if n > 0 then progressed = true end
    -- states follow the runs; between events they change only with what was done
    if progressed or last_refresh == nil or clock.now() - last_refresh >= POLL_MS then
      self:step('refresh_states', clock.now())
      last_refresh = clock.now()
    end

    -- What a busy store refused is tried again after a wait, even on a manual clock (which
    -- must not move past a run not yet materialised).
    if self.busy then
      if not self:wait_busy() then return { gave_up = self.gave_up } end
      goto continue
    end
    self.busy_passes = 0
    local wake = plan.next_start
    if next_due and (wake == nil or next_due < wake) then wake = next_due end
    if next_decision and (wake == nil or next_decision < wake) then wake = next_decision end
    -- More runs due now (a campaign had several, one is materialised per pass): go round.
    if #plan.due > 0 and not all_failed(plan.due, failed) then wake = clock.now() end
    if more_events then wake = clock.now() end
    -- Something due when this pass looked that nothing could take (its campaign failed):
    -- wait rather than spin. What fell due while the pass ran (a timer fires up to a
    -- millisecond before the wall clock reaches its due time, so a claim at `now` can miss a
    -- row due a moment later) is taken by going round at once, not a second later.
    if wake and wake <= now and not progressed then
      if clock.is_manual() then break end
      wake = clock.now() + POLL_MS
    end
    if wake == nil and opts.until_idle then break end
    if opts.until_ms and (wake == nil or wake > opts.until_ms) then break end
    if clock.is_manual() then
      if wake == nil then break end
      clock.advance(math.max(wake - clock.now(), 0))
    else
      -- event campaigns poll the events table often: the trigger latency budget is 100 ms
      local poll = events and EVENT_POLL_MS or POLL_MS
      local wait = poll
      if wake then wait = math.max(0, math.min(poll, wake - clock.now())) end
      -- Rows paced by a rate limit fall due a message-interval apart (every 0.5 ms at 2,000
      -- messages/s): going round for each would spend a pass on one or two rows, and the
      -- passes alone kept a core busy. Rows due within MIN_PASS_MS of the last pass's start wait
      -- for the next, which takes them together; the limit still decides how many go.
      if wake and wake > now then wait = math.max(wait, now + MIN_PASS_MS - clock.now()) end
      task.sleep(wait)
    end
    ::continue::
  end
  -- one last try for outcomes a stop found unwritten
  pcall(deliver.write_unwritten)
  return { stopped = core.stopping(), in_doubt = deliver.in_doubt() }
end

function runner:print_summary()
  local ok, notices = self:step('print_summary')
  for _, line in ipairs(ok and notices or {}) do self.err(line) end
end

function runner:close()
  self.sb:close()
end

return runner
