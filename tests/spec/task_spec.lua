-- herald.core.task's signal: a task waits for other tasks' work without polling with sleeps
-- (delivery waits so for its lanes, its profiles' sends and an SMTP batch's mails).
local h = require 'helpers'
local task = require 'herald.core.task'

describe('task.signal', function()
  it('resumes the waiting task once another task notifies', function()
    local s = task.signal()
    local order = {}
    task.spawn(function()
      herald.sleep(30)
      order[#order + 1] = 'notified'
      s:notify()
    end)
    s:wait()
    order[#order + 1] = 'resumed'
    assert.are.same({ 'notified', 'resumed' }, order)
  end)

  it('remembers a notify that came before the wait, once', function()
    local s = task.signal()
    s:notify()
    s:wait()   -- returns at once: the notify was kept
    local order = {}
    task.spawn(function()
      herald.sleep(20)
      order[#order + 1] = 'notified again'
      s:notify()
    end)
    s:wait()   -- the first notify was used up: this one waits for the second
    order[#order + 1] = 'resumed'
    assert.are.same({ 'notified again', 'resumed' }, order)
  end)

  it('resumes the waiter from the loop, after the notifying task has stepped on', function()
    local s = task.signal()
    local notifier_went_on = false
    task.spawn(function()
      herald.sleep(10)
      s:notify()
      notifier_went_on = true
    end)
    s:wait()
    assert.is_true(notifier_went_on)
  end)

  it('refuses a second waiting task', function()
    local s = task.signal()
    local first_resumed = false
    task.spawn(function()
      s:wait()
      first_resumed = true
    end)
    assert.has_error(function() s:wait() end, 'another task waits on this signal')
    s:notify()
    herald.sleep(10)
    assert.is_true(first_resumed)
  end)

  it('gives up a wait with a timeout when the time runs out, or at a stop request', function()
    local s = task.signal()
    local t0 = task.now()
    assert.is_false(s:wait(50))
    assert.is_true(task.now() - t0 >= 50)
    task.spawn(function() herald.sleep(10); s:notify() end)
    assert.is_true(s:wait(5000))
    -- a stop request (SIGINT/SIGTERM) cuts it short, as it does sleeps, in a process of its own
    local out, code = h.herald('-e ' .. h.shell_quote(
      "local task = require('herald.core.task'); local s = task.signal(); "
      .. "task.spawn(function() local t0 = task.now(); local r = s:wait(5000); "
      .. "print(tostring(r), task.now() - t0 < 2000) end); "
      .. "task.spawn(function() task.sleep(50); task.request_stop() end)"))
    assert.are.equal(0, code)
    assert.are.equal('nil\ttrue\n', out)
  end)

  it('resumes its waiter although nothing else keeps the loop running', function()
    local out, code = h.herald('-e ' .. h.shell_quote(
      "local task = require('herald.core.task'); local s = task.signal(); "
      .. "task.spawn(function() s:wait(); print('resumed') end); s:notify(); print('notified')"))
    assert.are.equal(0, code)
    assert.are.equal('notified\nresumed\n', out)
  end)
end)
