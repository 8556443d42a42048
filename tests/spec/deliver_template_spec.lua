-- A treatment with only a TemplateConfiguration is delivered from the stored template: its
-- active version, or the version the reference pins.
local h = require 'helpers'

describe('treatments that name a stored template', function()
  it("send a push template's part for the endpoint's service over Default, and an email template's headers", function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', [[
      assert(herald.template.create{ name = 'alert', type = 'PUSH',
        Default = { Title = 'Default title', Body = 'default body' },
        APNS = { Body = 'iOS body for {{Id}}' }, GCM = { Title = 'Android title', Body = 'Android body' } })
      assert(herald.template.create{ name = 'mail', type = 'EMAIL', Subject = 'Hi', TextPart = 'text',
        Headers = { { Name = 'X-Plan', Value = '{{Attributes.plan.[0]}}' } } })
      assert(herald.endpoints.put{ Id = 'ios', ChannelType = 'APNS', Address = 'aa' })
      assert(herald.endpoints.put{ Id = 'android', ChannelType = 'GCM', Address = 'bb' })
      assert(herald.endpoints.put{ Id = 'kindle', ChannelType = 'ADM', Address = 'cc' })
      assert(herald.endpoints.put{ Id = 'inbox', ChannelType = 'EMAIL', Address = 'in@example.com',
        Attributes = { plan = { 'gold' } } })
      herald.campaign{ name = 'tp', segment = herald.segment{ name = 'all' }, deliver = 'channels',
        template = { push = 'alert', email = 'mail' } }
    ]])
    h.write(dir .. '/providers.lua', [[
      local json = require 'herald.json'
      local function record(m)
        local f = assert(io.open('seen.txt', 'a'))
        f:write(json.encode { ch = m.channel, title = m.title, body = m.body,
                              plan = m.headers and m.headers['X-Plan'] or json.null }, '\n')
        f:close()
        return true
      end
      return { profiles = { rec = { type = 'lua', send = record } },
               channels = { APNS = 'rec', GCM = 'rec', ADM = 'rec', EMAIL = 'rec' } }
    ]])
    local _, code, err = h.herald('--db c.db run --until-idle c.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local seen = {}
    for line in io.lines(dir .. '/seen.txt') do
      local r = require('herald.json').decode(line)
      seen[r.ch] = r
    end
    assert.are.same({ 'Default title', 'iOS body for ios' }, { seen.APNS.title, seen.APNS.body })
    assert.are.same({ 'Android title', 'Android body' }, { seen.GCM.title, seen.GCM.body })
    assert.are.same({ 'Default title', 'default body' }, { seen.ADM.title, seen.ADM.body })
    assert.are.equal('gold', seen.EMAIL.plan)
  end)

  it('render the active version, or a pinned one, per treatment', function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', [[
      assert(herald.template.create{ name = 'welcome', type = 'EMAIL',
        Subject = 'v1 for {{User.UserAttributes.Name}}', TextPart = 'v1 text', HtmlPart = '<p>v1</p>' })
      assert(herald.template.update('welcome', 'EMAIL',
        { Subject = 'v2 for {{User.UserAttributes.Name}}', TextPart = 'v2 text', HtmlPart = '<p>v2</p>' },
        { create_new_version = true }))
      assert(herald.template.set_active('welcome', 'EMAIL', 2))
      for i = 1, 40 do
        assert(herald.endpoints.put{ Id = 'e' .. i, ChannelType = 'EMAIL', Address = 'e' .. i .. '@example.com',
          User = { UserAttributes = { Name = { 'N' .. i } } } })
      end
      herald.campaign{ name = 'tpl', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        treatments = {
          { name = 'active', size = 50, template = { email = 'welcome' } },
          { name = 'pinned', size = 50, template = { email = { name = 'welcome', version = 1 } } },
        } }
    ]])
    local _, code, err = h.herald('--db c.db run --until-idle c.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local out = h.read(dir .. '/out.txt') or ''
    local messages, active, pinned = 0, 0, 0
    for block in (out .. '--- message '):gmatch('%-%-%- message (.-)\n%f[%-]') do
      messages = messages + 1
      local to = block:match('to: (%S+)')
      local n = to:match('^e(%d+)@')
      if block:find('treatment: active', 1, true) then
        active = active + 1
        assert.matches('subject: v2 for N' .. n, block, 1, true)
        assert.matches('v2 text', block, 1, true)
      else
        pinned = pinned + 1
        assert.matches('treatment: pinned', block, 1, true)
        assert.matches('subject: v1 for N' .. n, block, 1, true)
        assert.matches('<p>v1</p>', block, 1, true)
      end
    end
    assert.are.equal(40, messages)
    assert.is_true(active > 0 and pinned > 0)
  end)
end)
