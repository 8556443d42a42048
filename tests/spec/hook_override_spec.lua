-- A FILTER hook's TitleOverride/BodyOverride reach the message on every channel but email, as
-- in Pinpoint.
local h = require 'helpers'

describe('FILTER hook overrides', function()
  it('replace title and body for SMS and leave email alone', function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', [[
      assert(herald.endpoints.put{ Id = 'sms', ChannelType = 'SMS', Address = '+15550000001' })
      assert(herald.endpoints.put{ Id = 'mail', ChannelType = 'EMAIL', Address = 'm@example.com' })
      herald.campaign{ name = 'hooked', segment = herald.segment{ name = 'all' },
        message = { subject = 'Plain title', body = 'Plain body' }, deliver = { file = 'out.txt' },
        hook = function(eps)
          for _, ep in ipairs(eps) do
            ep.TitleOverride = 'Hook title ' .. ep.Id
            ep.BodyOverride = 'Hook body ' .. ep.Id
          end
          return eps
        end }
    ]])
    local _, code, err = h.herald('--db c.db run --until-idle c.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local out = h.read(dir .. '/out.txt')
    local sms = out:match('to: %+15550000001 %(SMS%)(.-)\n%-%-%-') or out:match('to: %+15550000001 %(SMS%)(.*)$')
    local mail = out:match('to: m@example%.com %(EMAIL%)(.-)\n%-%-%-') or out:match('to: m@example%.com %(EMAIL%)(.*)$')
    assert.is_not_nil(sms, out)
    assert.is_not_nil(mail, out)
    assert.matches('subject: Hook title sms', sms, 1, true)
    assert.matches('Hook body sms', sms, 1, true)
    assert.matches('subject: Plain title', mail, 1, true)
    assert.matches('Plain body', mail, 1, true)
    assert.is_nil(mail:find('Hook', 1, true))
  end)

  it('are checked: a TitleOverride that is not a string fails the campaign, naming the field and where', function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', [[
      assert(herald.endpoints.put{ Id = 'sms', ChannelType = 'SMS', Address = '+15550000001' })
      herald.campaign{ name = 'hooked', segment = herald.segment{ name = 'all' },
        message = { subject = 'Plain title', body = 'Plain body' }, deliver = { file = 'out.txt' },
        hook = function(eps)
          for _, ep in ipairs(eps) do ep.TitleOverride = { 'a list' } end
          return eps
        end }
    ]])
    local _, code, err = h.herald('--db c.db run --until-idle c.lua', { cwd = dir })
    assert.are_not.equal(0, code)
    assert.matches("campaign hooked: c.lua:2: the hook's TitleOverride for endpoint 'sms' must be a string, not a table",
      err, 1, true)
    assert.is_nil(h.read(dir .. '/out.txt'))
  end)
end)

describe('what a FILTER hook returns', function()
  -- ten SMS endpoints e1..e10; the hook is the campaign's
  local function run(hook)
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', [[
      for i = 1, 10 do
        assert(herald.endpoints.put{ Id = 'e' .. i, ChannelType = 'SMS', Address = '+1555000000' .. (i - 1),
          Metrics = { visits = i } })
      end
      herald.campaign{ name = 'hooked', segment = herald.segment{ name = 'all' },
        message = { body = 'b' }, deliver = { file = 'out.txt' },
        hook = ]] .. hook .. [[ }
    ]])
    local _, code, err = h.herald('--db c.db run --until-idle c.lua', { cwd = dir })
    local states = {}
    for _, r in ipairs(h.query(dir, 'c.db', "SELECT coalesce(reason, state) AS s, count(*) AS n FROM outbox GROUP BY 1 ORDER BY 1")) do
      states[r.s] = r.n
    end
    return states, code, err
  end

  it('a map of id to boolean keeps those marked true and drops those marked false', function()
    local states, code, err = run([[function(eps)
      local keep = {}
      for _, e in ipairs(eps) do keep[e.Id] = e.Metrics.visits >= 7 end
      return keep
    end]])
    assert.are.equal(0, code, err)
    assert.are.same({ SENT = 4, FILTERED_BY_HOOK = 6 }, states)
  end)

  it('a map value that is neither an endpoint nor a boolean is an error naming where', function()
    local states, code, err = run([[function(eps)
      local keep = {}
      for _, e in ipairs(eps) do keep[e.Id] = 1 end
      return keep
    end]])
    assert.are_not.equal(0, code)
    assert.matches("campaign hooked: c.lua:5: the hook's entry for 'e%d+' must be an endpoint, true %(keep%) or false %(drop%), not a number", err)
    assert.are.same({}, states)
  end)

  it('of the wrong type is an error naming where, without herald\'s own lines in front', function()
    local states, code, err = run('function(eps) end')
    assert.are_not.equal(0, code)
    assert.matches('herald run: campaign hooked: c.lua:5: the hook must return the endpoints to keep', err, 1, true)
    assert.are.same({}, states)
    -- an error the hook raises carries its own file:line and nothing of herald's before it
    _, code, err = run([[function(eps)
      error('no luck')
    end]])
    assert.are_not.equal(0, code)
    assert.matches('herald run: campaign hooked: c.lua:8: no luck', err, 1, true)
    assert.is_nil(err:match('[^\n]*'):find('scheduler.lua', 1, true))
  end)
end)
