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
end)
