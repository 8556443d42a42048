-- The template store: Pinpoint's template types, versions and active version, in SQLite.
local h = require 'helpers'
local core = require 'herald.core'
local template = require('herald').template

local endpoint = {
  Id = 'ep-1', Address = 'jane@example.com', ChannelType = 'EMAIL',
  User = { UserId = 'u1', UserAttributes = { FirstName = { 'Jane' } } },
  Attributes = { plan = { 'gold <vip>' }, empty = {} },
}

describe('template store', function()
  local saved_db
  setup(function() saved_db = core.db_path() end)
  teardown(function() core.set_db_path(saved_db) end)
  before_each(function() core.set_db_path(h.tmpdir() .. '/templates.db') end)

  local function welcome()
    return assert(template.create {
      name = 'welcome', type = 'EMAIL',
      Subject = 'Hi {{User.UserAttributes.FirstName}}',
      HtmlPart = '<p>Plan: {{Attributes.plan}}</p>{{#if Attributes.plan}}<b>member</b>{{/if}}',
      TextPart = 'Plan: {{Attributes.plan}}',
      Headers = { { Name = 'X-Plan', Value = '{{Attributes.plan.[0]}}' } },
      DefaultSubstitutions = '{"User.UserAttributes.FirstName": "there", "Attributes": {"plan": "free"}}',
    })
  end

  it('creates version 1, active, and renders its parts', function()
    assert.are.equal(1, welcome())
    local t = assert(template.get('welcome', 'EMAIL'))
    assert.are.same({ 'welcome', 'EMAIL', 1, 1, 1 }, { t.Name, t.Type, t.Version, t.ActiveVersion, t.LatestVersion })
    assert.are.equal('Hi {{User.UserAttributes.FirstName}}', t.Subject)
    assert.matches('^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$', t.CreationDate)

    local r = assert(template.render('welcome', 'EMAIL', endpoint))
    assert.are.equal('Hi Jane', r.Subject)
    assert.are.equal('<p>Plan: gold &lt;vip&gt;</p><b>member</b>', r.HtmlPart)
    assert.are.equal('Plan: gold <vip>', r.TextPart)
    assert.are.same({ { Name = 'X-Plan', Value = 'gold <vip>' } }, r.Headers)
    assert.is_nil(r.DefaultSubstitutions)
  end)

  it("percent-encodes what a List-Unsubscribe header substitutes, as a profile's list_unsubscribe does", function()
    assert.are.equal(1, template.create { name = 'unsub-enc', Subject = 's', Headers = {
      { Name = 'list-unsubscribe', Value = '<https://shop.example/u?p={{Attributes.plan.[0]}}>' },
      { Name = 'X-Plan', Value = '{{Attributes.plan.[0]}}' } } })
    local r = assert(template.render('unsub-enc', 'EMAIL', endpoint))
    assert.are.same({ { Name = 'list-unsubscribe', Value = '<https://shop.example/u?p=gold%20%3Cvip%3E>' },
                      { Name = 'X-Plan', Value = 'gold <vip>' } }, r.Headers)
  end)

  it('fills missing and empty values from DefaultSubstitutions; the endpoint wins over them', function()
    welcome()
    local r = assert(template.render('welcome', 'EMAIL', { Attributes = { plan = {} } }))
    assert.are.equal('Hi there', r.Subject)
    assert.are.equal('Plan: free', r.TextPart)
    r = assert(template.render('welcome', 'EMAIL', endpoint))
    assert.are.equal('Hi Jane', r.Subject)
  end)

  it('lets message substitutions win over the endpoint and the defaults', function()
    welcome()
    local r = assert(template.render('welcome', 'EMAIL', endpoint, {
      substitutions = { ['User.UserAttributes.FirstName'] = { 'Boss' }, ['Attributes.plan'] = { 'platinum' } } }))
    assert.are.equal('Hi Boss', r.Subject)
    assert.are.equal('Plan: platinum', r.TextPart)
    assert.are.equal('platinum', r.Headers[1].Value)
  end)

  it('reads false, 0 and "" defaults as falsy, as the same values on the endpoint', function()
    assert(template.create { name = 'flags', type = 'SMS',
      Body = '{{#if Flag}}promo{{else}}none{{/if}}|{{#if Count}}n={{Count}}{{else}}zero{{/if}}|'
        .. '{{#if Coupon}}code={{Coupon}}{{else}}nocode{{/if}}|{{Count.[0]}}',
      DefaultSubstitutions = '{"Flag": false, "Count": 0, "Coupon": ""}' })
    assert.are.equal('none|zero|nocode|0', assert(template.render('flags', 'SMS', {})).Body)
    assert.are.equal('none|zero|nocode|0', assert(template.render('flags', 'SMS', { Flag = false, Count = 0, Coupon = '' })).Body)
    assert.are.equal('promo|n=3|code=X|3', assert(template.render('flags', 'SMS', { Flag = true, Count = { 3 }, Coupon = 'X' })).Body)
  end)

  it('renders with an empty substitutions table as with none', function()
    welcome()
    local r = assert(template.render('welcome', 'EMAIL', endpoint, { substitutions = {} }))
    assert.are.equal('Hi Jane', r.Subject)
    assert.are.equal('Plan: gold <vip>', r.TextPart)
  end)

  it('refuses a second template of the same name and type, but not of another type', function()
    welcome()
    local ok, err = template.create { name = 'welcome', type = 'EMAIL', Subject = 'x' }
    assert.is_nil(ok)
    assert.are.equal("EMAIL template 'welcome' already exists", err)
    assert.are.equal(1, template.create { name = 'welcome', type = 'SMS', Body = 'Hi {{Id}}' })
    assert.are.equal('Hi ep-1', template.render('welcome', 'SMS', endpoint).Body)
  end)

  it('overwrites the latest version unless asked for a new one', function()
    welcome()
    assert.are.equal(1, template.update('welcome', 'EMAIL', { Subject = 'Hello {{Id}}' }))
    local t = template.get('welcome', 'EMAIL')
    assert.are.same({ 1, 1, 'Hello {{Id}}' }, { t.Version, t.LatestVersion, t.Subject })
    assert.is_nil(t.HtmlPart)  -- an update replaces the parts, as Pinpoint's does
    assert.are.equal('Hello ep-1', template.render('welcome', 'EMAIL', endpoint).Subject)

    assert.are.equal(2, template.update('welcome', 'EMAIL', { Subject = 'v2 {{Id}}' }, { create_new_version = true }))
    assert.are.equal(3, template.update('welcome', 'EMAIL', { Subject = 'v3 {{Id}}' }, { create_new_version = true }))
    assert.are.equal(3, template.update('welcome', 'EMAIL', { Subject = 'v3b {{Id}}' }, { version = 3 }))
    assert.are.equal('v3b {{Id}}', template.get('welcome', 'EMAIL', 3).Subject)
    assert.are.equal('v2 {{Id}}', template.get('welcome', 'EMAIL', 2).Subject)
  end)

  it('keeps the active version until set_active, and renders any version on request', function()
    welcome()
    template.update('welcome', 'EMAIL', { Subject = 'v2 {{Id}}' }, { create_new_version = true })
    template.update('welcome', 'EMAIL', { Subject = 'v3 {{Id}}' }, { create_new_version = true })
    local t = template.get('welcome', 'EMAIL')
    assert.are.same({ 1, 1, 3 }, { t.Version, t.ActiveVersion, t.LatestVersion })
    assert.are.equal('Hi Jane', template.render('welcome', 'EMAIL', endpoint).Subject)
    assert.are.equal('v3 ep-1', template.render('welcome', 'EMAIL', endpoint, { version = 3 }).Subject)

    assert.is_true(template.set_active('welcome', 'EMAIL', 2))
    assert.are.equal('v2 ep-1', template.render('welcome', 'EMAIL', endpoint).Subject)
    local versions = template.versions('welcome', 'EMAIL')
    assert.are.equal(3, #versions)
    for i, v in ipairs(versions) do
      assert.are.equal(i, v.Version)
      assert.are.equal(i == 2, v.Active)
      assert.is_string(v.CreationDate)
    end
  end)

  it('recompiles a version overwritten after it was rendered', function()
    welcome()
    assert.are.equal('Hi Jane', template.render('welcome', 'EMAIL', endpoint).Subject)
    template.update('welcome', 'EMAIL', { Subject = 'Changed {{Id}}' })
    assert.are.equal('Changed ep-1', template.render('welcome', 'EMAIL', endpoint).Subject)
  end)

  it('never reuses a version number and refuses updates to an older version', function()
    welcome()
    template.update('welcome', 'EMAIL', { Subject = 'v2' }, { create_new_version = true })
    local ok, err = template.update('welcome', 'EMAIL', { Subject = 'old' }, { version = 1 })
    assert.is_nil(ok)
    assert.are.equal("EMAIL template 'welcome': version 1 is not the latest version (2)", err)
    ok, err = template.set_active('welcome', 'EMAIL', 5)
    assert.is_nil(ok)
    assert.are.equal("EMAIL template 'welcome' has no version 5", err)
    ok, err = template.get('welcome', 'EMAIL', 9)
    assert.is_nil(ok)
    assert.are.equal("EMAIL template 'welcome' has no version 9", err)
  end)

  it('names the template, version, part, line and column of a template error and stores nothing', function()
    welcome()
    local ok, err = template.update('welcome', 'EMAIL', {
      Subject = 'fine', HtmlPart = '<p>\n  <b>{{#if Attributes.plan}}gold</b>\n</p>' }, { create_new_version = true })
    assert.is_nil(ok)
    assert.are.equal('welcome(v2).HtmlPart: line 2, column 6: unclosed {{#if}}', err)
    assert.are.equal(1, template.get('welcome', 'EMAIL').LatestVersion)
    ok, err = template.create { name = 'bad', type = 'SMS', Body = 'Hi {{shout Id}}' }
    assert.is_nil(ok)
    assert.are.equal("bad(v1).Body: line 1, column 6: unknown helper 'shout'", err)
    ok, err = template.get('bad', 'SMS')
    assert.is_nil(ok)
    assert.are.equal("no SMS template 'bad'", err)
  end)

  it('validates names, types and fields as Pinpoint does', function()
    local cases = {
      { { name = '-x', Subject = 's' }, "template name '-x': use letters, digits, '_' and '-', starting with a letter or digit" },
      { { name = 'a b', Subject = 's' }, "template name 'a b': use letters, digits, '_' and '-', starting with a letter or digit" },
      { { name = ('n'):rep(129), Subject = 's' }, 'template name must be 1 to 128 characters, got 129' },
      { { name = 'x', type = 'FAX', Body = 's' }, "template type must be EMAIL, SMS or PUSH, got 'FAX'" },
      { { name = 'x', type = 'SMS', Body = 'b', Subject = 's' },
        "x(v1): unknown field 'Subject' for an SMS template (allowed: Body, DefaultSubstitutions, TemplateDescription, RecommenderId)" },
      { { name = 'x', Subject = 42 }, 'x(v1).Subject: must be a string' },
      { { name = 'x', Subject = 's', DefaultSubstitutions = '{not json' },
        "x(v1).DefaultSubstitutions: must be a JSON object text like '{\"FirstName\": \"there\"}': string or '}' expected near 'not'" },
      { { name = 'x', Subject = 's', Headers = { { Name = 'X-A' } } }, 'x(v1).Headers[1].Value: must be a string' },
      { { name = 'x', Subject = 's', Headers = { { Name = 'Message-ID', Value = '<{{Id}}@example.com>' } } },
        'x(v1).Headers[1].Name: set by the message itself (use its own field)' },
      { { name = 'x', Subject = 's', Headers = { { Name = 'X-Plan', Value = 'gold' }, { Name = 'x-plan', Value = 'silver' } } },
        "x(v1).Headers[2].Name: 'x-plan' is given twice" },
      { { name = 'x', Subject = 's', Headers = { { Name = 'X Plan', Value = 'gold' } } },
        "x(v1).Headers[1].Name: invalid header name (printable ASCII without spaces or ':')" },
      -- Pinpoint's limits on a MessageHeader: 126 characters of name, 870 of value
      { { name = 'x', Subject = 's', Headers = { { Name = 'X-' .. string.rep('n', 125), Value = 'gold' } } },
        'x(v1).Headers[1].Name: at most 126 characters' },
      { { name = 'x', Subject = 's', Headers = { { Name = 'X-Plan', Value = string.rep('g', 871) } } },
        'x(v1).Headers[1].Value: at most 870 characters, rendered attributes included' },
      { { name = 'x', type = 'PUSH', Default = { Title = 't', Action = 'JUMP' } },
        "x(v1).Default.Action: must be OPEN_APP, DEEP_LINK or URL, got 'JUMP'" },
      { { name = 'x', type = 'PUSH', APNS = { Colour = 'red' } },
        "x(v1).APNS: unknown field 'Colour' for a push message (allowed: Action, Title, Body, Url, ImageUrl, ImageIconUrl, SmallImageIconUrl, MediaUrl, RawContent, Sound)" },
    }
    for _, c in ipairs(cases) do
      local ok, err = template.create(c[1])
      assert.is_nil(ok)
      assert.are.equal(c[2], err)
    end
    assert.are.equal(1, template.create { name = ('n'):rep(128), Subject = 's' })
    assert.are.equal(1, template.create { name = '9_a-b', Subject = 's' })
    -- List-Unsubscribe and its -Post, as Pinpoint's templates give them, are taken
    assert.are.equal(1, template.create { name = 'unsub', Subject = 's', Headers = {
      { Name = 'List-Unsubscribe', Value = '<https://shop.example/u?e={{Id}}>' },
      { Name = 'List-Unsubscribe-Post', Value = 'List-Unsubscribe=One-Click' } } })
  end)

  it('refuses a name, type or part name with a NUL inside, naming it, rather than cut to reach another template', function()
    assert.are.equal(1, template.create { name = 'vip', Subject = 'for vip' })
    local nul = 'contains a NUL character (\\u0000)'
    local function refused(f, ...)
      local ok, err = f(...)
      assert.is_nil(ok)
      return err
    end
    assert.are.equal('name: ' .. nul, refused(template.create, { name = 'vip\0-x', Subject = 'other' }))
    assert.are.equal('type: ' .. nul, refused(template.create, { name = 'vip2', type = 'EMAIL\0-x', Subject = 'other' }))
    assert.are.equal('name: ' .. nul, refused(template.update, 'vip\0-x', 'EMAIL', { Subject = 'other' }))
    assert.are.equal('parts: a table key ' .. nul, refused(template.update, 'vip', 'EMAIL', { ['Subject\0-x'] = 'other' }))
    assert.are.equal('name: ' .. nul, refused(template.get, 'vip\0-x', 'EMAIL'))
    assert.are.equal('name: ' .. nul, refused(template.versions, 'vip\0-x', 'EMAIL'))
    assert.are.equal('name: ' .. nul, refused(template.set_active, 'vip\0-x', 'EMAIL', 1))
    assert.are.equal('name: ' .. nul, refused(template.render, 'vip\0-x', 'EMAIL', endpoint))
    local t = assert(template.get('vip', 'EMAIL'))
    assert.are.same({ 1, 1, 'for vip' }, { t.Version, t.LatestVersion, t.Subject })
    assert.is_nil(template.get('vip2', 'EMAIL'))
  end)

  it('renders every templated part of a push template', function()
    assert.are.equal(1, template.create {
      name = 'promo', type = 'PUSH',
      Default = { Title = 'Hi {{User.UserAttributes.FirstName.[0]}}', Body = '{{upper Attributes.plan}}', Action = 'URL',
                  Url = 'https://example.com/{{Id}}' },
      APNS = { Title = 'iOS {{Id}}', Sound = 'default' },
      GCM = { Body = 'Android {{Id}}' },
    })
    local r = assert(template.render('promo', 'PUSH', endpoint))
    assert.are.same({ Title = 'Hi Jane', Body = 'GOLD <VIP>', Action = 'URL', Url = 'https://example.com/ep-1' }, r.Default)
    assert.are.same({ Title = 'iOS ep-1', Sound = 'default' }, r.APNS)
    assert.are.same({ Body = 'Android ep-1' }, r.GCM)
  end)

  it('returns render failures as nil, err', function()
    local big = ('{{#each @root.L}}'):rep(6) .. 'x' .. ('{{/each}}'):rep(6)
    assert.are.equal(1, template.create { name = 'bomb', type = 'SMS', Body = big })
    local list = {}
    for i = 1, 15 do list[i] = i end
    local ok, err = template.render('bomb', 'SMS', { L = list })
    assert.is_nil(ok)
    assert.matches('^bomb%(v1%)%.Body: line 1, column %d+: rendering took more than 1000000 steps$', err)
    ok, err = template.render('nope', 'SMS', endpoint)
    assert.is_nil(ok)
    assert.are.equal("no SMS template 'nope'", err)
  end)

  it('keeps templates across reopening the database', function()
    welcome()
    local path = core.db_path()
    core.set_db_path(h.tmpdir() .. '/other.db')
    assert.is_nil((template.get('welcome', 'EMAIL')))
    core.set_db_path(path)
    assert.are.equal('Hi Jane', template.render('welcome', 'EMAIL', endpoint).Subject)
  end)
end)
