-- Multi-window token buckets, next slots and Retry-After pauses on a manual clock.
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
    assert.are.equal(T0 + 500, next_slot)  -- 2/s refills one token in 500 ms
    clock.advance(500)
    assert.is_true((rl:take()))
    -- the minute window (3/min, a token per 20 s, refilling since T0) is empty too
    ok, next_slot = rl:take()
    assert.is_false(ok)
    assert.are.equal(T0 + 20000, next_slot)
    clock.advance(19499)
    assert.is_false((rl:take()))
    clock.advance(1)
    assert.is_true((rl:take()))
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
    assert.are.equal(T0 + 86400000 / 5, next_slot)
  end)

  it('accepts explicit windows', function()
    local rl = ratelimit.new { windows = { { limit = 3, period_ms = 10000 } } }
    assert.is_true((rl:take(3)))
    local _, next_slot = rl:take()
    assert.are.equal(T0 + 3334, next_slot)  -- ceil(10000 / 3)
  end)

  it('books successive slots with reserve instead of spinning', function()
    local rl = ratelimit.new { per_second = 10 }
    for _ = 1, 10 do assert.are.equal(T0, rl:reserve()) end
    local slots = {}
    for i = 1, 5 do slots[i] = rl:reserve() - T0 end
    assert.are.same({ 100, 200, 300, 400, 500 }, slots)
    -- a booked slot is honoured: take refuses until the bookings are paid for
    local ok, next_slot = rl:take()
    assert.is_false(ok)
    assert.are.equal(T0 + 600, next_slot)
    clock.advance(600)
    assert.is_true((rl:take()))
  end)

  it('shares a global cap between limits', function()
    local global = ratelimit.new { per_second = 3 }
    local a = ratelimit.new { per_second = 2, parent = global }
    local b = ratelimit.new { per_second = 2, parent = global }
    assert.is_true((a:take(2)))
    assert.is_true((b:take()))
    local ok, next_slot = b:take()
    assert.is_false(ok)  -- b has a token, the global cap has none
    assert.are.equal(T0 + 334, next_slot)
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
