-- Multi-window limits, next slots and Retry-After pauses on a manual clock. A window is a hard
-- cap: no span of its period admits more than its limit.
local ratelimit = require 'herald.ratelimit'
local clock = require 'herald.core.clock'

local T0 = 1767225600000  -- 2026-01-01T00:00:00Z

describe('herald.ratelimit', function()
  before_each(function() clock.set_manual(T0) end)
  after_each(function() clock.set_manual(nil) end)

  it('grants a burst up to the smallest window, then names the next slot', function()
    local rl = ratelimit.new { per_second = 2, per_minute = 3 }
    assert.is_true((rl:take()))
    assert.is_true((rl:take()))
    local ok, next_slot = rl:take()
    assert.is_false(ok)
    assert.are.equal(T0 + 1000, next_slot)  -- the two leave the second's span a second later
    clock.advance(999)
    assert.is_false((rl:take()))
    clock.advance(1)
    assert.is_true((rl:take()))
    -- the minute window (3/min) is full until the first two are a minute old
    ok, next_slot = rl:take()
    assert.is_false(ok)
    assert.are.equal(T0 + 60000, next_slot)
    clock.advance(58999)
    assert.is_false((rl:take()))
    clock.advance(1)
    assert.is_true((rl:take()))
  end)

  it('answers check() as take() would, admitting nothing', function()
    local parent = ratelimit.new { per_second = 3 }
    local rl = ratelimit.new { per_second = 2, parent = parent }
    for _ = 1, 5 do assert.is_true((rl:check())) end
    assert.is_true((rl:take()))
    assert.is_true((rl:take()))
    local ok, next_slot = rl:check()
    assert.is_false(ok)
    assert.are.equal(T0 + 1000, next_slot)
    -- the parent's room is looked at too
    local other = ratelimit.new { per_second = 5, parent = parent }
    assert.is_true((other:check()))
    assert.is_true((other:take()))
    ok, next_slot = other:check()
    assert.is_false(ok)
    assert.are.equal(T0 + 1000, next_slot)
    rl:pause(5000)
    assert.are.same({ false, T0 + 5000 }, { rl:check() })
  end)

  it('sends at a fractional rate: half a message a second is one every two seconds', function()
    local rl = ratelimit.new { per_second = 0.5 }
    assert.is_true((rl:take()))
    local ok, next_slot = rl:take()
    assert.is_false(ok)
    assert.are.equal(T0 + 2000, next_slot)
    clock.advance(1999)
    assert.is_false((rl:take()))
    clock.advance(1)
    assert.is_true((rl:take()))
  end)

  it('does not take tokens when it refuses', function()
    local rl = ratelimit.new { per_second = 10, per_hour = 12 }
    assert.is_true((rl:take(10)))
    assert.is_false((rl:take(3)))
    assert.are.equal(2, math.floor(rl:tokens(2) + 0.5))  -- the hour window still holds 2
    clock.advance(1000)
    assert.is_false((rl:take(3)))
    assert.is_true((rl:take(2)))
  end)

  it('computes day-window slots', function()
    local rl = ratelimit.new { per_day = 5 }
    for _ = 1, 5 do assert.is_true((rl:take())) end
    local ok, next_slot = rl:take()
    assert.is_false(ok)
    assert.are.equal(T0 + 86400000, next_slot)  -- the five leave the window a day after they went
  end)

  it('accepts explicit windows', function()
    local rl = ratelimit.new { windows = { { limit = 3, period_ms = 10000 } } }
    assert.is_true((rl:take(3)))
    local _, next_slot = rl:take()
    assert.are.equal(T0 + 10000, next_slot)
  end)

  it('books successive slots with reserve instead of spinning', function()
    local rl = ratelimit.new { per_second = 10 }
    for _ = 1, 10 do assert.are.equal(T0, rl:reserve()) end
    for _ = 1, 10 do assert.are.equal(T0 + 1000, rl:reserve()) end
    assert.are.equal(T0 + 2000, rl:reserve())
    -- a booked slot is honoured: take refuses until the bookings are paid for
    local ok, next_slot = rl:take()
    assert.is_false(ok)
    assert.are.equal(T0 + 2000, next_slot)
    clock.advance(2000)
    assert.is_true((rl:take()))
  end)

  it('shares a global cap between limits', function()
    local global = ratelimit.new { per_second = 3 }
    local a = ratelimit.new { per_second = 2, parent = global }
    local b = ratelimit.new { per_second = 2, parent = global }
    assert.is_true((a:take(2)))
    assert.is_true((b:take()))
    local ok, next_slot = b:take()
    assert.is_false(ok)  -- b has room for one, the global cap has none
    assert.are.equal(T0 + 1000, next_slot)
    assert.are.equal(1, math.floor(b:tokens(1) + 0.5))
  end)

  it('pauses for a Retry-After', function()
    local rl = ratelimit.new { per_second = 100 }
    assert.is_true((rl:take()))
    rl:pause(7000)
    local ok, next_slot = rl:take()
    assert.is_false(ok)
    assert.are.equal(T0 + 7000, next_slot)
    assert.are.equal(T0 + 7000, rl:reserve())
    clock.advance(7000)
    assert.is_true((rl:take()))
  end)

  it('says when a request can never fit', function()
    local rl = ratelimit.new { per_second = 5 }
    local ok, next_slot = rl:take(6)
    assert.is_false(ok)
    assert.is_nil(next_slot)
    assert.is_nil(rl:reserve(6))
  end)

  it('refills nothing when the clock goes back', function()
    local rl = ratelimit.new { per_second = 1 }
    assert.is_true((rl:take()))
    clock.set_manual(T0 - 5000)
    assert.is_false((rl:take()))
    clock.set_manual(T0 + 1000)
    assert.is_true((rl:take()))
  end)

  -- The most of sorted times that fall in one span [t, t + period).
  local function most_in_span(times, period)
    local most, first = 0, 1
    for last = 1, #times do
      while times[last] - times[first] >= period do first = first + 1 end
      most = math.max(most, last - first + 1)
    end
    return most
  end

  -- Asks at each time of `at` (ascending) and returns the times granted.
  local function ask_at(rl, at)
    local granted = {}
    for _, t in ipairs(at) do
      clock.set_manual(t)
      if rl:take() then granted[#granted + 1] = t end
    end
    return granted
  end

  local function count_between(times, from, to)
    local n = 0
    for _, t in ipairs(times) do
      if t >= from and t < to then n = n + 1 end
    end
    return n
  end

  it('admits 5 in any minute under per_minute = 5, and 5 every minute to a steady stream', function()
    -- asked every second for ten minutes: 5 each minute, the first 5 as a burst
    local at = {}
    for k = 0, 599 do at[#at + 1] = T0 + k * 1000 end
    local granted = ask_at(ratelimit.new { per_minute = 5 }, at)
    assert.are.equal(5, count_between(granted, T0, T0 + 60000))
    assert.are.equal(5, most_in_span(granted, 60000))
    assert.are.equal(50, #granted)
    for m = 0, 9 do
      assert.are.equal(5, count_between(granted, T0 + m * 60000, T0 + (m + 1) * 60000), 'minute ' .. m)
    end

    -- a caller that comes back at each next slot it is given
    clock.set_manual(T0)
    local rl = ratelimit.new { per_minute = 5 }
    granted = {}
    while clock.now() < T0 + 600000 do
      local ok, next_slot = rl:take()
      if ok then granted[#granted + 1] = clock.now() else clock.set_manual(next_slot) end
    end
    assert.are.equal(5, most_in_span(granted, 60000))
    assert.are.equal(50, #granted)

    -- at random moments, with bursts, for half an hour
    math.randomseed(7)
    at = {}
    local t = T0
    while t < T0 + 1800000 do
      at[#at + 1] = t
      t = t + (math.random() < 0.2 and 0 or math.random(0, 4000))
    end
    granted = ask_at(ratelimit.new { per_minute = 5 }, at)
    assert.are.equal(5, most_in_span(granted, 60000))
    assert.is_true(#granted >= 142, #granted .. ' granted in 30 minutes')
  end)

  it('never admits more than per_day = 1000 in any 24 hours, and close to 1000 a day steadily', function()
    local DAY = 86400000
    math.randomseed(11)
    local at, t = {}, T0
    -- about 1,400 asks a day for four days, some in bursts of a few hundred
    while t < T0 + 4 * DAY do
      if math.random() < 0.002 then
        for _ = 1, math.random(100, 300) do at[#at + 1] = t end
      else
        at[#at + 1] = t
      end
      t = t + math.random(0, 120000)
    end
    local granted = ask_at(ratelimit.new { per_day = 1000 }, at)
    assert.is_true(most_in_span(granted, DAY) <= 1000)
    for d = 0, 3 do
      local n = count_between(granted, T0 + d * DAY, T0 + (d + 1) * DAY)
      assert.is_true(n <= 1000 and n >= 970, 'day ' .. d .. ': ' .. n)
    end
  end)

  it('keeps the same small state whatever its limit and however much it admitted', function()
    -- collected until nothing more goes: garbage of earlier specs in this process (finalizers
    -- that free more in a later cycle) must not fall between two readings
    local function bytes()
      local before
      repeat
        before = collectgarbage('count')
        collectgarbage('collect')
      until collectgarbage('count') >= before
      return collectgarbage('count') * 1024
    end
    local base = bytes()
    local small = ratelimit.new { per_day = 10 }
    local small_size = bytes() - base
    small = nil  -- luacheck: ignore
    base = bytes()
    local big = ratelimit.new { per_day = 1000000 }
    local big_size = bytes() - base
    assert.are.equal(small_size, big_size)
    assert.is_true(big_size < 4096, big_size .. ' bytes')
    -- 200,000 admissions over two days leave it as it was
    local granted = 0
    for _ = 1, 200000 do
      if big:take() then granted = granted + 1 end
      clock.advance(864)
    end
    local after = bytes() - base
    assert.are.equal(200000, granted)
    assert.are.equal(big_size, after)
  end)

  it('carries its state to another limit with export and import: what was taken, the next slot, the pause', function()
    local a = ratelimit.new { per_second = 2, per_day = 3 }
    assert.is_true((a:take()))
    clock.advance(3600000)
    assert.is_true((a:take(2)))
    local b = ratelimit.new { per_second = 2, per_day = 3 }
    assert.is_true(b:import(a:export()))
    -- b counts what a took: the day is full until the first of them is a day old
    assert.are.same({ false, T0 + 86400000 }, { b:check() })
    clock.set_manual(T0 + 86400000)
    assert.is_true((b:take()))
    assert.are.same({ false, T0 + 86400000 + 3600000 }, { b:take() })
    -- a pause goes along, and a later import never shortens one
    b:pause(7200000)
    assert.is_true(a:import(b:export()))
    assert.are.same({ false, clock.now() + 7200000 }, { a:check() })
    local c = ratelimit.new { per_second = 2, per_day = 3 }
    c:pause(9000000)
    assert.is_true(c:import(a:export()))
    assert.are.same({ false, clock.now() + 9000000 }, { c:check() })
  end)

  it('never admits more than its limit in any day when two copies pass the state between them', function()
    -- two processes on one store: each reads the state before taking and writes it after
    local DAY = 86400000
    local copies = { ratelimit.new { per_day = 50, per_second = 5 }, ratelimit.new { per_day = 50, per_second = 5 } }
    local state = copies[1]:export()
    math.randomseed(5)
    local granted, t = {}, T0
    while t < T0 + 3 * DAY do
      clock.set_manual(t)
      local rl = copies[math.random(1, 2)]
      assert.is_true(rl:import(state))
      if rl:take() then granted[#granted + 1] = t end
      state = rl:export()
      t = t + math.random(0, 3000000)
    end
    local most, first = 0, 1
    for last = 1, #granted do
      while granted[last] - granted[first] >= DAY do first = first + 1 end
      most = math.max(most, last - first + 1)
    end
    assert.are.equal(50, most)
    -- each copy alone would have let through up to 50 a day of its own
    assert.is_true(#granted <= 150, #granted .. ' granted')
  end)

  it('carries over the windows of the same period when the configuration changed', function()
    local a = ratelimit.new { per_second = 10, per_day = 3 }
    assert.is_true((a:take(3)))
    a:pause(2000)
    -- the day's quota raised to 5 and an hour window added: the 3 sent still count against
    -- the day, the hour window counts what it counted before
    local b = ratelimit.new { per_day = 5, per_hour = 4 }
    assert.is_true((b:take()))
    assert.is_true(b:import(a:export()))
    assert.are.same({ false, T0 + 2000 }, { b:check() })
    clock.advance(2000)
    assert.is_true((b:take(2)))
    -- (the day's sub-interval of 24 minutes counts until its latest admission is a day old)
    assert.are.same({ false, T0 + 86400000 + 2000 }, { b:check() })
    assert.are.equal(1, math.floor(b:tokens(1) + 0.5))  -- the hour: 3 of its own
    -- a state without the day window leaves the day's count as it was
    local c = ratelimit.new { per_minute = 100 }
    assert.is_true(b:import(c:export()))
    assert.are.same({ false, T0 + 86400000 + 2000 }, { b:check() })
  end)

  it('refuses a state it did not export, keeping its own', function()
    local a = ratelimit.new { per_second = 2 }
    assert.is_true((a:take()))
    local good = a:export()
    local b = ratelimit.new { per_second = 2 }
    assert.is_true((b:take(2)))
    for _, bad in ipairs({ '', 'garbage', good:sub(1, -2), good .. 'x', 'HRL\2' .. good:sub(5),
                           good:sub(1, 12) .. '\9' .. good:sub(14) }) do
      local ok, err = b:import(bad)
      assert.is_nil(ok)
      assert.is_string(err)
    end
    -- a sub-interval whose admission is not in it
    local moved = good:sub(1, -9) .. string.pack('<i8', T0 + 5000)
    assert.is_nil((b:import(moved)))
    assert.are.same({ false, T0 + 1000 }, { b:check() })
  end)

  it('counts its changes: admissions and longer pauses, not refusals, checks or shorter pauses', function()
    local rl = ratelimit.new { per_second = 1 }
    local n = rl:changes()
    rl:check()
    assert.is_false((rl:take(2)))
    assert.are.equal(n, rl:changes())
    assert.is_true((rl:take()))
    assert.are.equal(n + 1, rl:changes())
    rl:pause(5000)
    rl:pause(1000)
    assert.are.equal(n + 2, rl:changes())
    -- windows = {}: a limit that only pauses, whose admissions change nothing
    local free = ratelimit.new { windows = {} }
    for _ = 1, 100 do assert.is_true((free:take())) end
    assert.are.equal(0, free:changes())
    free:pause(1000)
    assert.are.same({ false, T0 + 1000 }, { free:check() })
    assert.are.equal(1, free:changes())
  end)

  it('rejects bad definitions with the field name', function()
    assert.has_error(function() ratelimit.new {} end,
      'a rate limit needs a window (per_second, per_minute, per_hour, per_day or windows) or a parent')
    assert.has_error(function() ratelimit.new { per_second = -1 } end,
      'per_second: expected a positive number')
    assert.has_error(function() ratelimit.new { windows = { { limit = 1 } } } end,
      'windows[1].period_ms: expected a positive integer')
    assert.has_error(function() ratelimit.new { per_minute = 1, parent = {} } end,
      'parent: expected an open rate limit')
    local rl = ratelimit.new { per_second = 1 }
    assert.has_error(function() rl:take(0) end)
  end)
end)
