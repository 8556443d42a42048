-- A treatment with only a TemplateConfiguration is delivered from the stored template: its
-- active version, or the version the reference pins.
local h = require 'helpers'

-- Script text that stores a campaign definition as it is, with no check on the way in (as an
-- older herald did), and writes a run of it for endpoints e1..en: define(id, def, n).
local STORE_RAW = [[
  local outbox = require 'herald.core.outbox'
  local function define(id, def, n)
    def.Name, def.TreatmentName, def.AdditionalTreatments = id, 'default', herald.json.array{}
    outbox.define_campaign(id, id, herald.json.encode(def))
    local rows = {}
    for i = 1, n do rows[i] = { endpoint_id = 'e' .. i, treatment = 0, channel = 'EMAIL', address = 'e' .. i .. '@example.com', due_ms = 0 } end
    local seq = outbox.trigger_cursor(id)
    outbox.trigger{ campaign_id = id, version = 1, now_ms = 0, from_seq = seq, to_seq = seq + 1, rows = rows }
  end
]]

-- Runs c.lua in dir (`herald run --until-idle`) with the given channels routed to a Lua
-- channel that writes, for each message m, the JSON object `fields` (a Lua table constructor
-- over m, hd = m.headers or {}, and N = json.null) to seen.txt. Returns those objects by channel.
local function run_recorded(dir, fields, channels)
  h.write(dir .. '/providers.lua', string.format([[
    local json = require 'herald.json'
    local N = json.null
    local function record(m)
      local hd = m.headers or {}
      local f = assert(io.open('seen.txt', 'a'))
      f:write(json.encode(%s), '\n')
      f:close()
      return true
    end
    local channels = {}
    for _, c in ipairs { %s } do channels[c] = 'rec' end
    return { profiles = { rec = { type = 'lua', send = record } }, channels = channels }
  ]], fields, "'" .. table.concat(channels, "', '") .. "'"))
  local _, code, err = h.herald('--db c.db run --until-idle c.lua', { cwd = dir })
  assert.are.equal(0, code, err)
  local seen = {}
  for line in io.lines(dir .. '/seen.txt') do
    local r = require('herald.json').decode(line)
    seen[r.ch] = r
  end
  return seen
end

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
    local seen = run_recorded(dir, "{ ch = m.channel, title = m.title, body = m.body, plan = hd['X-Plan'] or N }",
      { 'APNS', 'GCM', 'ADM', 'EMAIL' })
    assert.are.same({ 'Default title', 'iOS body for ios' }, { seen.APNS.title, seen.APNS.body })
    assert.are.same({ 'Android title', 'Android body' }, { seen.GCM.title, seen.GCM.body })
    assert.are.same({ 'Default title', 'default body' }, { seen.ADM.title, seen.ADM.body })
    assert.are.equal('gold', seen.EMAIL.plan)
  end)

  it("send a push template's tap action, URL, images, sound and RawContent, rendered per endpoint, under the message's own settings", function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', [[
      assert(herald.template.create{ name = 'alert', type = 'PUSH',
        Default = { Title = 'Your order', Body = 'is on its way', Action = 'URL',
                    Url = 'https://example.com/o/{{Id}}', Sound = 'default' },
        APNS = { MediaUrl = 'https://cdn.example.com/{{Id}}.png' },
        GCM = { ImageUrl = 'https://cdn.example.com/{{Id}}-wide.png', SmallImageIconUrl = 'https://cdn.example.com/i.png',
                Sound = 'chime' },
        ADM = { RawContent = '{"data": {"order": "{{Id}}"}}' } })
      assert(herald.endpoints.put{ Id = 'ios', ChannelType = 'APNS', Address = 'aa' })
      assert(herald.endpoints.put{ Id = 'android', ChannelType = 'GCM', Address = 'bb' })
      assert(herald.endpoints.put{ Id = 'kindle', ChannelType = 'ADM', Address = 'cc' })
      herald.campaign.from_pinpoint(herald.json.encode{
        Name = 'push-settings', Schedule = { StartTime = 'IMMEDIATE' },
        -- settings only: the content comes from the template, this sound over the template's
        MessageConfiguration = { GCMMessage = { Sound = 'bell' } },
        TemplateConfiguration = { PushTemplate = { Name = 'alert' } },
        Herald = { Deliver = { type = 'channels' } },
      }, { segment = herald.segment{ name = 'all' } })
    ]])
    local seen = run_recorded(dir, [[{ ch = m.channel, title = m.title or N, action = m.action or N,
      url = m.action_url or N, sound = m.sound or N, media = m.media_url or N, image = m.image_url or N,
      small = m.small_image_icon_url or N, raw = m.raw and json.encode(m.raw) or N }]], { 'APNS', 'GCM', 'ADM' })
    local null = require('herald.json').null
    assert.are.same({ 'Your order', 'URL', 'https://example.com/o/ios', 'default', 'https://cdn.example.com/ios.png', null },
      { seen.APNS.title, seen.APNS.action, seen.APNS.url, seen.APNS.sound, seen.APNS.media, seen.APNS.raw })
    assert.are.same({ 'URL', 'https://example.com/o/android', 'bell', 'https://cdn.example.com/android-wide.png',
                      'https://cdn.example.com/i.png' },
      { seen.GCM.action, seen.GCM.url, seen.GCM.sound, seen.GCM.image, seen.GCM.small })
    assert.are.same({ data = { order = 'kindle' } }, require('herald.json').decode(seen.ADM.raw))
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
  it("take the content from the template when the channel's message gives only settings, and keep those settings", function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', [[
      assert(herald.template.create{ name = 'mail', type = 'EMAIL', Subject = 'Hi {{User.UserAttributes.Name}}',
        TextPart = 'text for {{Id}}', HtmlPart = '<p>html</p>',
        Headers = { { Name = 'X-Plan', Value = 'gold' }, { Name = 'X-Tag', Value = 'from template' } } })
      assert(herald.template.create{ name = 'sms', type = 'SMS', Body = 'Code for {{Id}}' })
      assert(herald.endpoints.put{ Id = 'mail-1', ChannelType = 'EMAIL', Address = 'm1@example.com',
        User = { UserAttributes = { Name = { 'Ann' } } } })
      assert(herald.endpoints.put{ Id = 'sms-1', ChannelType = 'SMS', Address = '+15550101' })
      herald.campaign.from_pinpoint(herald.json.encode{
        Name = 'settings-only', Schedule = { StartTime = 'IMMEDIATE' },
        MessageConfiguration = {
          EmailMessage = { FromAddress = 'news@example.com', Headers = { { Name = 'X-Tag', Value = 'spring' } } },
          SMSMessage = { MessageType = 'TRANSACTIONAL', OriginationNumber = '+15550100' },
        },
        TemplateConfiguration = { EmailTemplate = { Name = 'mail' }, SMSTemplate = { Name = 'sms' } },
        Herald = { Deliver = { type = 'channels' } },
      }, { segment = herald.segment{ name = 'all' } })
    ]])
    local seen = run_recorded(dir, [[{ ch = m.channel, title = m.title or N, body = m.body or N,
      html = m.html or N, from = m.from or N, tag = hd['X-Tag'] or N, plan = hd['X-Plan'] or N,
      type = m.message_type or N, number = m.origination_number or N }]], { 'EMAIL', 'SMS' })
    assert.are.same({ 'Hi Ann', 'text for mail-1', '<p>html</p>', 'news@example.com' },
      { seen.EMAIL.title, seen.EMAIL.body, seen.EMAIL.html, seen.EMAIL.from })
    -- the message's headers over the template's
    assert.are.same({ 'spring', 'gold' }, { seen.EMAIL.tag, seen.EMAIL.plan })
    assert.are.same({ 'Code for sms-1', 'TRANSACTIONAL', '+15550100' }, { seen.SMS.body, seen.SMS.type, seen.SMS.number })
  end)

  it("send a Lua campaign's email headers, stored as Pinpoint's Headers list in name order", function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', [[
      assert(herald.endpoints.put{ Id = 'mail-1', ChannelType = 'EMAIL', Address = 'm1@example.com' })
      herald.campaign{ name = 'tagged', segment = herald.segment{ name = 'all' }, deliver = 'channels',
        message = { email = { subject = 'Hi', text = 'body', headers = { ['X-Tag'] = 'spring', ['X-Plan'] = 'gold',
          -- taken as Pinpoint's messages give it: the email channel makes it the message's own
          ['List-Unsubscribe'] = '<https://shop.example/u?e=1>' } } } }
    ]])
    local seen = run_recorded(dir, [[{ ch = m.channel, tag = hd['X-Tag'] or N, plan = hd['X-Plan'] or N,
      unsub = hd['List-Unsubscribe'] or N }]], { 'EMAIL' })
    assert.are.same({ 'spring', 'gold', '<https://shop.example/u?e=1>' }, { seen.EMAIL.tag, seen.EMAIL.plan, seen.EMAIL.unsub })
    local def = require('herald.json').decode(h.query(dir, 'c.db', "SELECT definition FROM campaigns WHERE id = 'tagged'")[1].definition)
    assert.are.same({ { Name = 'List-Unsubscribe', Value = '<https://shop.example/u?e=1>' }, { Name = 'X-Plan', Value = 'gold' },
      { Name = 'X-Tag', Value = 'spring' } }, def.MessageConfiguration.EmailMessage.Headers)
  end)

  it("render a campaign's email header values for each endpoint, and fail alone a message whose header renders badly", function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', [[
      assert(herald.endpoints.put{ Id = 'ann', ChannelType = 'EMAIL', Address = 'ann@example.com',
        Attributes = { token = { 'tk-ann' } } })
      assert(herald.endpoints.put{ Id = 'bob', ChannelType = 'EMAIL', Address = 'bob@example.com',
        Attributes = { token = { 'a b&c>' } } })
      -- an attribute that would inject a header line, and one past Pinpoint's 870 characters
      assert(herald.endpoints.put{ Id = 'eve', ChannelType = 'EMAIL', Address = 'eve@example.com',
        Attributes = { token = { 'x\r\nBcc: all@example.com' } } })
      assert(herald.endpoints.put{ Id = 'long', ChannelType = 'EMAIL', Address = 'long@example.com',
        Attributes = { token = { string.rep('t', 100), string.rep('u', 100), string.rep('v', 100), string.rep('w', 100),
          string.rep('x', 100), string.rep('y', 100), string.rep('z', 100), string.rep('s', 100), string.rep('r', 100) } } })
      herald.campaign.from_pinpoint(herald.json.encode{
        Name = 'per-recipient', Schedule = { StartTime = 'IMMEDIATE' },
        MessageConfiguration = { EmailMessage = { Title = 'Hi', Body = 'body', Headers = {
          { Name = 'List-Unsubscribe', Value = '<https://shop.example/u?t={{#each Attributes.token}}{{this}}{{/each}}>' },
          { Name = 'X-Recipient', Value = '{{Id}}' }, { Name = 'X-Token', Value = '{{Attributes.token.[0]}}' },
          { Name = 'X-Tag', Value = 'spring' } } } },
        Herald = { Deliver = { type = 'channels' } },
      }, { segment = herald.segment{ name = 'all' } })
    ]])
    local seen = run_recorded(dir, [[{ ch = m.endpoint_id, unsub = hd['List-Unsubscribe'] or N,
      who = hd['X-Recipient'] or N, tag = hd['X-Tag'] or N, token = hd['X-Token'] or N }]], { 'EMAIL' })
    assert.are.same({ ch = 'ann', unsub = '<https://shop.example/u?t=tk-ann>', who = 'ann', tag = 'spring',
                      token = 'tk-ann' }, seen.ann)
    -- what List-Unsubscribe substitutes is percent-encoded, as in a profile's list_unsubscribe
    assert.are.same({ ch = 'bob', unsub = '<https://shop.example/u?t=a%20b%26c%3E>', who = 'bob', tag = 'spring',
                      token = 'a b&c>' }, seen.bob)
    assert.is_nil(seen.eve)
    assert.is_nil(seen.long)
    local rows = {}
    for _, r in ipairs(h.query(dir, 'c.db', 'SELECT endpoint_id, state, reason FROM outbox')) do rows[r.endpoint_id] = r end
    assert.are.equal('SENT', rows.ann.state)
    assert.are.equal('FAILED', rows.eve.state)
    assert.matches("RENDER_FAILED: headers['X-Token']: value missing or has a line break", rows.eve.reason, 1, true)
    assert.are.equal('FAILED', rows.long.state)
    assert.matches("RENDER_FAILED: headers['List-Unsubscribe']: at most 870 characters", rows.long.reason, 1, true)
  end)

  it('refuse a TemplateConfiguration version that is not a version number, and fail the rows of one stored before', function()
    local dir = h.tmpdir()
    h.write(dir .. '/bad.lua', [[
      herald.campaign{ name = 'c', segment = herald.segment{ name = 'all' }, deliver = { file = 'out.txt' },
        template = { email = { name = 'mail', version = '1.5' } } }
    ]])
    local _, code, err = h.herald('--db c.db run --until-idle bad.lua', { cwd = dir })
    assert.are_not.equal(0, code)
    assert.matches('template.email.version', err, 1, true)
    h.write(dir .. '/bad2.lua', [[
      herald.campaign.from_pinpoint(herald.json.encode{ Name = 'p', Schedule = { StartTime = 'IMMEDIATE' },
        TemplateConfiguration = { EmailTemplate = { Name = 'mail', Version = 'latest' } } },
        { segment = herald.segment{ name = 'all' } })
    ]])
    _, code, err = h.herald('--db c.db run --until-idle bad2.lua', { cwd = dir })
    assert.are_not.equal(0, code)
    assert.matches('TemplateConfiguration.EmailTemplate.Version', err, 1, true)
    -- A definition stored as it is (no check on the way in): its rows fail, the other
    -- campaign's are sent in the same delivery.
    h.write(dir .. '/c.lua', STORE_RAW .. [[
      assert(herald.template.create{ name = 'mail', type = 'EMAIL', Subject = 'v1 {{Id}}', TextPart = 'text v1' })
      for i = 1, 3 do assert(herald.endpoints.put{ Id = 'e' .. i, ChannelType = 'EMAIL', Address = 'e' .. i .. '@example.com' }) end
      define('raw', { TemplateConfiguration = { EmailTemplate = { Name = 'mail', Version = '1.5' } },
                      Herald = { Deliver = { type = 'file', path = 'out.txt' } } }, 3)
      define('other', { MessageConfiguration = { EmailMessage = { Title = 'other {{Id}}', Body = 'b' } },
                        Herald = { Deliver = { type = 'file', path = 'other.txt' } } }, 3)
      require('herald.deliver').drain(require('herald.core.clock').now(), 256, nil)
    ]])
    _, code, err = h.herald('--db d.db c.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local other = h.read(dir .. '/other.txt') or ''
    local n = 0
    for _ in other:gmatch('subject: other e%d') do n = n + 1 end
    assert.are.equal(3, n)
    assert.is_nil(h.read(dir .. '/out.txt'))
    local rows = h.query(dir, 'd.db', [[SELECT o.state, o.reason FROM outbox o JOIN campaign_runs r ON r.id = o.run_id
      WHERE r.campaign_id = 'raw']])
    assert.are.equal(3, #rows)
    for _, r in ipairs(rows) do
      assert.are.equal('FAILED', r.state)
      assert.matches('Version is not a version number: 1.5', r.reason, 1, true)
    end
  end)

  it('refuse a campaign naming a template or a version that does not exist, with its field', function()
    local dir = h.tmpdir()
    h.write(dir .. '/t.lua', [[
      assert(herald.template.create{ name = 'mail', type = 'EMAIL', Subject = 's', TextPart = 't' })
    ]])
    local _, code, err = h.herald('--db c.db t.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local cases = {
      { [[herald.campaign{ name = 'c', segment = herald.segment{ name = 'all' }, deliver = 'channels',
            template = { email = 'mial' } }]], "herald.campaign c: campaign.template.email: no EMAIL template 'mial'" },
      { [[herald.campaign{ name = 'c', segment = herald.segment{ name = 'all' }, deliver = 'channels',
            template = { sms = { name = 'mail' } } }]], "herald.campaign c: campaign.template.sms.name: no SMS template 'mail'" },
      { [[herald.campaign{ name = 'c', segment = herald.segment{ name = 'all' }, deliver = 'channels',
            treatments = { { size = 50, template = { email = 'mail' } },
                           { size = 50, template = { email = { name = 'mail', version = 3 } } } } }]],
        "herald.campaign c: treatments[2].template.email.version: EMAIL template 'mail' has no version 3" },
      { [[herald.campaign.from_pinpoint(herald.json.encode{ Name = 'p', Schedule = { StartTime = 'IMMEDIATE' },
            TemplateConfiguration = { EmailTemplate = { Name = 'mail', Version = '2' } } },
            { segment = herald.segment{ name = 'all' } })]], "TemplateConfiguration.EmailTemplate.Version: EMAIL template 'mail' has no version 2" },
      { [[herald.campaign.from_pinpoint(herald.json.encode{ Name = 'p', Schedule = { StartTime = 'IMMEDIATE' },
            AdditionalTreatments = { { SizePercent = 50, TemplateConfiguration = { PushTemplate = { Name = 'mail' } } } } },
            { segment = herald.segment{ name = 'all' } })]],
        "AdditionalTreatments[0].TemplateConfiguration.PushTemplate.Name: no PUSH template 'mail'" },
    }
    for i, case in ipairs(cases) do
      h.write(dir .. '/bad' .. i .. '.lua', case[1] .. '\n')
      _, code, err = h.herald('--db c.db run --until-idle bad' .. i .. '.lua', { cwd = dir })
      assert.are.equal(1, code, 'case ' .. i)
      assert.matches('bad' .. i .. '.lua:1:', err, 1, true)
      assert.matches(case[2], err, 1, true)
    end
    -- nothing of them was stored
    assert.are.equal(0, h.query(dir, 'c.db', 'SELECT count(*) AS n FROM campaigns')[1].n)
  end)

  it('pause a campaign whose template is missing when its messages go, and send them all once it exists and the campaign is resumed', function()
    local dir = h.tmpdir()
    -- stored as it is (as by an older herald, which did not look): no check on the way in
    h.write(dir .. '/c.lua', STORE_RAW .. [[
      for i = 1, 5 do assert(herald.endpoints.put{ Id = 'e' .. i, ChannelType = 'EMAIL', Address = 'e' .. i .. '@example.com' }) end
      define('later', { TemplateConfiguration = { EmailTemplate = { Name = 'news' } },
                        Herald = { Deliver = { type = 'file', path = 'out.txt' } } }, 5)
      define('pinned', { TemplateConfiguration = { EmailTemplate = { Name = 'mail', Version = '4' } },
                         Herald = { Deliver = { type = 'file', path = 'pinned.txt' } } }, 5)
      assert(herald.template.create{ name = 'mail', type = 'EMAIL', Subject = 'v1 {{Id}}', TextPart = 'text v1' })
      require('herald.deliver').drain(require('herald.core.clock').now(), 256, nil)
    ]])
    local _, code, err = h.herald('--db d.db c.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.matches("campaign later paused: cannot deliver: TEMPLATE_NOT_FOUND: no EMAIL template 'news' (create the template, then resume the campaign)", err, 1, true)
    assert.matches("campaign pinned paused: cannot deliver: TEMPLATE_NOT_FOUND: EMAIL template 'mail' has no version 4", err, 1, true)
    assert.is_nil(h.read(dir .. '/out.txt'))
    assert.is_nil(h.read(dir .. '/pinned.txt'))
    -- every message waits, not one attempt spent
    for _, r in ipairs(h.query(dir, 'd.db', [[SELECT r.campaign_id, o.state, o.attempts, o.reason FROM outbox o
        JOIN campaign_runs r ON r.id = o.run_id]])) do
      assert.are.same({ 'PENDING', 0 }, { r.state, r.attempts }, r.campaign_id)
      assert.matches('PAUSED: TEMPLATE_NOT_FOUND: ', r.reason, 1, true)
    end
    local st = h.query(dir, 'd.db', "SELECT id, state FROM campaigns ORDER BY id")
    assert.are.same({ { id = 'later', state = 'PAUSED' }, { id = 'pinned', state = 'PAUSED' } }, st)
    -- the template is created and the campaign resumed: every message goes, once
    h.write(dir .. '/fix.lua', [[
      assert(herald.template.create{ name = 'news', type = 'EMAIL', Subject = 'news for {{Id}}', TextPart = 'n' })
      assert(herald.campaign.resume('later'))
      require('herald.deliver').drain(require('herald.core.clock').now(), 256, nil)
    ]])
    _, code, err = h.herald('--db d.db fix.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    local out = h.read(dir .. '/out.txt') or ''
    local seen = {}
    for id in out:gmatch('subject: news for (e%d)') do seen[#seen + 1] = id end
    table.sort(seen)
    assert.are.same({ 'e1', 'e2', 'e3', 'e4', 'e5' }, seen)
    assert.are.equal(5, h.query(dir, 'd.db', [[SELECT count(*) AS n FROM outbox o JOIN campaign_runs r ON r.id = o.run_id
      WHERE r.campaign_id = 'later' AND o.state = 'SENT' AND o.attempts = 1]])[1].n)
    -- the pinned one stays paused, its messages held
    assert.is_nil(h.read(dir .. '/pinned.txt'))
    assert.are.equal('PAUSED', h.query(dir, 'd.db', "SELECT state FROM campaigns WHERE id = 'pinned'")[1].state)
  end)
end)
