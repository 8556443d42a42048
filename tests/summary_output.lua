-- busted output handler: a line per failing test with its message, then one summary line
-- `N passed, N failed, N skipped` that tools/test adds up.
return function(options)
  local busted = require 'busted'
  local handler = require 'busted.outputHandlers.base'()

  local function full_name(element)
    return handler.getFullName(element)
  end

  local function trace_of(element)
    if element.trace and element.trace.short_src then
      return element.trace.short_src .. ':' .. tostring(element.trace.currentline)
    end
    return '?'
  end

  handler.testEnd = function(element, parent, status, debug)
    if status == 'success' then
      io.stdout:write('.')
    elseif status == 'pending' then
      io.stdout:write('s')
    else
      io.stdout:write(status == 'error' and 'E' or 'F')
    end
    io.stdout:flush()
    return nil, true
  end

  handler.suiteEnd = function()
    io.stdout:write('\n')
    local function report(list, label)
      for _, t in ipairs(list) do
        io.stdout:write(string.format('%s: %s\n  at %s\n  %s\n', label, full_name(t.element),
          trace_of(t), tostring(t.message):gsub('\n', '\n  ')))
      end
    end
    report(handler.failures, 'FAILED')
    report(handler.errors, 'ERROR')
    local failed = handler.failuresCount + handler.errorsCount
    io.stdout:write(string.format('%d passed, %d failed, %d skipped\n',
      handler.successesCount, failed, handler.pendingsCount))
    return nil, true
  end

  busted.subscribe({ 'test', 'end' }, handler.testEnd, { predicate = handler.cancelOnPending })
  busted.subscribe({ 'suite', 'end' }, handler.suiteEnd)
  busted.subscribe({ 'error', 'file' }, function(element, parent, message)
    io.stdout:write(string.format('ERROR loading %s: %s\n', element.name or '?', tostring(message)))
    return nil, true
  end)
  return handler
end
