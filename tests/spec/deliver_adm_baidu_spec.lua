-- ADM and Baidu push channels against the provider emulator (tests/fixtures/provider_emulator.py),
-- which checks what Amazon and Baidu check: the client-credentials token and its scope, ADM's
-- type headers, string data, consolidation key and expiry bounds; Baidu's apikey, timestamp
-- window and MD5 signature. End to end through a campaign (`herald run`) and through
-- herald.send.
local h = require 'helpers'
local S = require 'servers'
local json = require 'herald.json'
local send = require 'herald.send'
local endpoints = require 'herald.endpoints'

local function query(dir, sql) return h.query(dir, 'd.db', sql) end

-- A campaign file: endpoints of channel with the given addresses, and a Pinpoint-shaped campaign
-- whose MessageConfiguration is config (Lua source).
local function campaign_dir(channel, addresses, config)
  local dir = h.tmpdir()
  local eps = {}
  for i, a in ipairs(addresses) do
    eps[#eps + 1] = string.format("assert(herald.endpoints.put { Id = 'ep-%d', ChannelType = %q, Address = %q, "
      .. "User = { UserAttributes = { FirstName = { 'Reader%d' } } } })", i, channel, a, i)
  end
  h.write(dir .. '/c.lua', table.concat(eps, '\n') .. string.format([[

    herald.campaign.from_pinpoint({ Name = 'push', SegmentId = 'all', Schedule = { StartTime = 'IMMEDIATE' },
      MessageConfiguration = %s, Herald = { Deliver = { type = 'channels' } } },
      { segment = herald.segment { name = 'all' } })
  ]], config))
  return dir
end

local function rows(dir)
  local out = {}
  for _, r in ipairs(query(dir, 'SELECT endpoint_id, state, reason, attempts, message_id FROM outbox')) do out[r.endpoint_id] = r end
  return out
end

describe('ADM and Baidu push', function()
  local emu

  setup(function() emu = S.start_emulator() end)
  teardown(function() if emu then emu:stop() end end)

  local function adm_providers(dir, secret_env, extra)
    h.write(dir .. '/providers.lua', string.format([[
      return { profiles = { adm = { type = 'adm', url = %q, token_uri = %q,
                 client_id = os.getenv('TEST_ADM_ID'), client_secret = os.getenv(%q) } },
               channels = { ADM = 'adm' }, retry = { max_attempts = 3, min_ms = 50, max_ms = 200 } %s }
    ]], emu.url, emu.url .. '/auth/o2/token', secret_env, extra or ''))
  end

  local ADM_ENV = { TEST_ADM_ID = 'amzn1.application-oa2-client.test', TEST_ADM_SECRET = 'adm-secret',
                    TEST_WRONG_SECRET = 'guess' }

  it('sends ADM messages with a cached client-credentials token; bad registrations make endpoints INACTIVE', function()
    local dir = campaign_dir('ADM', { 'amzn1.adm-registration.v3.one', 'amzn1.adm-registration.v3.two',
      'invalid-three', 'unregistered-four', 'busy-five' }, [[{ ADMMessage = {
        Title = 'Hello {{User.UserAttributes.FirstName}}', Body = 'Spring sale', TimeToLive = '3600' } }]])
    adm_providers(dir, 'TEST_ADM_SECRET')
    local _, code, err = h.herald('--db d.db run --until-idle c.lua', { cwd = dir, env = ADM_ENV })
    assert.are.equal(0, code, err)
    local r = rows(dir)
    assert.are.equal('SENT', r['ep-1'].state, tostring(r['ep-1'].reason))
    assert.are.equal('SENT', r['ep-2'].state)
    assert.are.equal('FAILED', r['ep-3'].state)
    assert.matches('InvalidRegistrationId', r['ep-3'].reason)
    assert.are.equal('FAILED', r['ep-4'].state)
    assert.matches('Unregistered', r['ep-4'].reason)
    -- 429 MaxRateExceeded is ADM's throttle: the second request went out after Retry-After,
    -- and the refused one spent no attempt
    assert.are.equal('SENT', r['ep-5'].state)
    assert.are.equal(1, r['ep-5'].attempts)
    local st = {}
    for _, e in ipairs(query(dir, 'SELECT id, endpoint_status AS s FROM endpoints')) do st[e.id] = e.s end
    assert.are.same({ ['ep-1'] = 'ACTIVE', ['ep-2'] = 'ACTIVE', ['ep-3'] = 'INACTIVE', ['ep-4'] = 'INACTIVE',
                      ['ep-5'] = 'ACTIVE' }, st)
    local tokens, one, busy = 0, nil, {}
    for _, q in ipairs(emu:requests()) do
      if q.path == '/auth/o2/token' and q.body:find('adm-secret', 1, true) then tokens = tokens + 1 end
      if q.path == '/messaging/registrations/amzn1.adm-registration.v3.one/messages' then one = q end
      if q.path == '/messaging/registrations/busy-five/messages' then busy[#busy + 1] = q.status end
    end
    assert.are.equal(1, tokens)
    assert.are.same({ 429, 200 }, busy)
    assert.are.equal(200, one.status)
    local b = json.decode(one.body)
    assert.are.equal('Hello Reader1', b.data['pinpoint.notification.title'])
    assert.are.equal('Spring sale', b.data['pinpoint.notification.body'])
    -- the campaign's attribution, for the SDK's _campaign.opened_notification
    assert.are.equal('push', b.data['pinpoint.campaign.campaign_id'])
    assert.are.equal('0', b.data['pinpoint.campaign.treatment_id'])
    assert.are.equal(tostring(query(dir, 'SELECT id FROM campaign_runs')[1].id), b.data['pinpoint.campaign.campaign_activity_id'])
    -- a campaign message has no ConsolidationKey: the message id is, so a retry collapses
    assert.are.equal(r['ep-1'].message_id, b.consolidationKey)
    assert.are.equal(3600, b.expiresAfter)
    assert.matches('^Bearer Atc|', one.headers.authorization)
    assert.are.equal('com.amazon.device.messaging.ADMMessage@1.0', one.headers['x-amzn-type-version'])
  end)

  -- The campaign's one message had its three attempts refused for the profile's fault: it
  -- waits for the fix, and the campaign pauses with the reason, rather than it failing for good.
  it('retries ADM messages while the token is refused, then pauses the campaign with the reason', function()
    local dir = campaign_dir('ADM', { 'amzn1.adm-registration.v3.x' }, [[{ ADMMessage = { Title = 't', Body = 'b' } }]])
    adm_providers(dir, 'TEST_WRONG_SECRET')
    local _, code, err = h.herald('--db d.db run --until-idle c.lua', { cwd = dir, env = ADM_ENV })
    assert.are.equal(0, code, err)
    local r = rows(dir)['ep-1']
    assert.are.equal('PENDING', r.state)
    assert.matches('ADM token: HTTP 401: invalid_client', r.reason, 1, true)
    local c = query(dir, "SELECT state, pause_reason FROM campaigns WHERE id = 'push'")[1]
    assert.are.equal('PAUSED', c.state)
    assert.matches('a message failed all its 3 attempts for a reason not its own, the last: ADM token: HTTP 401: invalid_client',
      c.pause_reason, 1, true)
  end)

  local function baidu_providers(dir, secret)
    h.write(dir .. '/providers.lua', string.format([[
      return { profiles = { baidu = { type = 'baidu', url = %q, api_key = 'baidu-api-key',
                 secret_key = os.getenv('TEST_BAIDU_SECRET') } },
               channels = { BAIDU = 'baidu' }, retry = { max_attempts = 2, min_ms = 50, max_ms = 100 } }
    ]], emu.direct_url .. '/rest/3.0/push/single_device'))
    return { TEST_BAIDU_SECRET = secret }
  end

  it('sends Baidu pushes with a signed request; an unbound channel makes the endpoint INACTIVE', function()
    local dir = campaign_dir('BAIDU', { '3957217761224410001', '3957217761224410002', 'gone-3' },
      [[{ BaiduMessage = { Title = 'Hello {{User.UserAttributes.FirstName}}', Body = 'A & B ~ 100% {{Address}}',
          TimeToLive = '600' } }]])
    local env = baidu_providers(dir, 'baidu-secret-key')
    local _, code, err = h.herald('--db d.db run --until-idle c.lua', { cwd = dir, env = env })
    assert.are.equal(0, code, err)
    local r = rows(dir)
    assert.are.equal('SENT', r['ep-1'].state, tostring(r['ep-1'].reason))
    assert.are.equal('SENT', r['ep-2'].state)
    assert.are.equal('FAILED', r['ep-3'].state)
    assert.matches('30608 Bind Relation Not Found', r['ep-3'].reason, 1, true)
    assert.are.equal('INACTIVE', query(dir, "SELECT endpoint_status AS s FROM endpoints WHERE id = 'ep-3'")[1].s)
    local got
    for _, q in ipairs(emu:requests()) do
      if q.path == '/rest/3.0/push/single_device' and q.body:find('3957217761224410001', 1, true) then got = q end
    end
    assert.are.equal(200, got.status)
    local form = {}
    for k, v in got.body:gmatch('([^&=]+)=([^&]*)') do
      form[k] = v:gsub('+', ' '):gsub('%%(%x%x)', function(x) return string.char(tonumber(x, 16)) end)
    end
    assert.are.equal('1', form.msg_type)
    assert.are.equal('3', form.device_type)
    assert.are.equal('600', form.msg_expires)
    assert.matches('^%x+$', form.sign)
    local msg = json.decode(form.msg)
    assert.are.equal('Hello Reader1', msg.title)
    assert.are.equal('A & B ~ 100% 3957217761224410001', msg.description)
    assert.are.equal('0', msg.custom_content['pinpoint.campaign.treatment_id'])
    assert.are.equal(tostring(query(dir, 'SELECT id FROM campaign_runs')[1].id),
      msg.custom_content['pinpoint.campaign.campaign_activity_id'])
  end)

  -- The form of the Baidu request whose body has needle.
  local function baidu_form(needle)
    local got
    for _, q in ipairs(emu:requests()) do
      if q.path == '/rest/3.0/push/single_device' and q.body:find(needle, 1, true) then got = q end
    end
    local form = {}
    for k, v in got.body:gmatch('([^&=]+)=([^&]*)') do
      form[k] = v:gsub('+', ' '):gsub('%%(%x%x)', function(x) return string.char(tonumber(x, 16)) end)
    end
    return form, got.status
  end

  it("sends ADM's and Baidu's RawContent as the message, over its other fields, with the campaign's attribution", function()
    local dir = campaign_dir('ADM', { 'amzn1.adm-registration.v3.raw' }, [==[{ ADMMessage = {
        Title = 'ignored', Body = 'ignored', ExpiresAfter = 120,
        RawContent = '{"data":{"offer":"Sale","pct":50},"expiresAfter":3600}' } }]==])
    adm_providers(dir, 'TEST_ADM_SECRET')
    local _, code, err = h.herald('--db d.db run --until-idle c.lua', { cwd = dir, env = ADM_ENV })
    assert.are.equal(0, code, err)
    local r = rows(dir)['ep-1']
    assert.are.equal('SENT', r.state, tostring(r.reason))
    local b
    for _, q in ipairs(emu:requests()) do
      if q.path == '/messaging/registrations/amzn1.adm-registration.v3.raw/messages' then b = json.decode(q.body) end
    end
    local run = tostring(query(dir, 'SELECT id FROM campaign_runs')[1].id)
    -- ADM takes string values only
    assert.are.same({ offer = 'Sale', pct = '50', ['pinpoint.campaign.campaign_id'] = 'push',
      ['pinpoint.campaign.treatment_id'] = '0', ['pinpoint.campaign.campaign_activity_id'] = run }, b.data)
    assert.are.equal(3600, b.expiresAfter)
    assert.are.equal(r.message_id, b.consolidationKey)

    -- Baidu: a notification (it has a description) and a pass-through message
    dir = campaign_dir('BAIDU', { '3957217761224410031', '3957217761224410032' }, [==[{ BaiduMessage = {
        Title = 'ignored', Body = 'ignored',
        RawContent = '{"title":"Sale","description":"50% off","custom_content":{"deeplink":"app://sale"}}' } }]==])
    local env = baidu_providers(dir, 'baidu-secret-key')
    _, code, err = h.herald('--db d.db run --until-idle c.lua', { cwd = dir, env = env })
    assert.are.equal(0, code, err)
    assert.are.same({ { state = 'SENT', n = 2 } }, query(dir, 'SELECT state, count(*) AS n FROM outbox GROUP BY state'))
    run = tostring(query(dir, 'SELECT id FROM campaign_runs')[1].id)
    local form, status = baidu_form('3957217761224410031')
    assert.are.equal(200, status)
    assert.are.equal('1', form.msg_type)
    assert.are.same({ title = 'Sale', description = '50% off', custom_content = { deeplink = 'app://sale',
      ['pinpoint.campaign.campaign_id'] = 'push', ['pinpoint.campaign.treatment_id'] = '0',
      ['pinpoint.campaign.campaign_activity_id'] = run } }, json.decode(form.msg))

    dir = campaign_dir('BAIDU', { '3957217761224410033' }, [==[{ BaiduMessage = {
        RawContent = '{"sync":"inbox"}' } }]==])
    env = baidu_providers(dir, 'baidu-secret-key')
    _, code, err = h.herald('--db d.db run --until-idle c.lua', { cwd = dir, env = env })
    assert.are.equal(0, code, err)
    form = baidu_form('3957217761224410033')
    assert.are.equal('0', form.msg_type)
    assert.are.equal('inbox', json.decode(form.msg).sync)
    assert.are.equal('push', json.decode(form.msg)['pinpoint.campaign.campaign_id'])
  end)

  it("retries a Baidu message refused for the profile's wrong secret key: the refusal is systemic, not the recipient's", function()
    local dir = campaign_dir('BAIDU', { '3957217761224410009' }, [[{ BaiduMessage = { Title = 't', Body = 'b' } }]])
    local env = baidu_providers(dir, 'not-the-secret')
    local _, code, err = h.herald('--db d.db run --until-idle c.lua', { cwd = dir, env = env })
    assert.are.equal(0, code, err)
    local r = rows(dir)['ep-1']
    -- retried up to the bound, then the campaign pauses: the message waits for the fix
    assert.are.equal('PENDING', r.state)
    local c = query(dir, "SELECT state, pause_reason FROM campaigns WHERE id = 'push'")[1]
    assert.are.equal('PAUSED', c.state)
    assert.matches('a message failed all its 2 attempts for a reason not its own, the last: 30603 Authentication Failed, sign not valid',
      c.pause_reason, 1, true)
  end)

  it('sends ADM and Baidu direct messages through herald.send with per-address results', function()
    assert(endpoints.put { Id = 'send-adm', ChannelType = 'ADM', Address = 'unregistered-send' })
    local res = send({
      Addresses = { ['amzn1.adm-registration.v3.send'] = { ChannelType = 'ADM' },
                    ['3957217761224410077'] = { ChannelType = 'BAIDU' },
                    ['gone-send'] = { ChannelType = 'BAIDU' } },
      Endpoints = { ['send-adm'] = {} },
      MessageConfiguration = {
        ADMMessage = { Title = 'Direct', Body = 'to ADM', ConsolidationKey = 'direct-1', ExpiresAfter = '120',
                       Data = { promo = 'SPRING', n = 3 } },
        BaiduMessage = { Title = 'Direct', Body = 'to Baidu', SilentPush = true, Data = { k = 'v' } } },
    }, { providers = {
      profiles = {
        adm = { type = 'adm', url = emu.url, token_uri = emu.url .. '/auth/o2/token',
                client_id = 'amzn1.application-oa2-client.test', client_secret = 'adm-secret' },
        baidu = { type = 'baidu', url = emu.direct_url .. '/rest/3.0/push/single_device',
                  api_key = 'baidu-api-key', secret_key = 'baidu-secret-key' } },
      channels = { ADM = 'adm', BAIDU = 'baidu' } } })
    assert.are.equal('SUCCESSFUL', res.Result['amzn1.adm-registration.v3.send'].DeliveryStatus,
      tostring(res.Result['amzn1.adm-registration.v3.send'].StatusMessage))
    assert.are.equal('SUCCESSFUL', res.Result['3957217761224410077'].DeliveryStatus,
      tostring(res.Result['3957217761224410077'].StatusMessage))
    assert.are.equal('PERMANENT_FAILURE', res.Result['gone-send'].DeliveryStatus)
    assert.matches('30608', res.Result['gone-send'].StatusMessage)
    assert.are.equal('PERMANENT_FAILURE', res.EndpointResult['send-adm'].DeliveryStatus)
    assert.matches('Unregistered', res.EndpointResult['send-adm'].StatusMessage)
    assert.are.equal('INACTIVE', endpoints.get('send-adm').EndpointStatus)
    local adm_body, baidu_form
    for _, q in ipairs(emu:requests()) do
      if q.path == '/messaging/registrations/amzn1.adm-registration.v3.send/messages' then adm_body = json.decode(q.body) end
      if q.path == '/rest/3.0/push/single_device' and q.body:find('3957217761224410077', 1, true) then baidu_form = q.body end
    end
    assert.are.equal('direct-1', adm_body.consolidationKey)
    assert.are.equal(120, adm_body.expiresAfter)
    assert.are.equal('Direct', adm_body.data['pinpoint.notification.title'])
    assert.is_nil(adm_body.data['pinpoint.campaign.campaign_id'])   -- no campaign to attribute
    assert.are.equal('SPRING', adm_body.data.promo)
    assert.are.equal('3', adm_body.data.n)
    -- a silent Baidu push is a pass-through message (msg_type 0) carrying the data
    assert.matches('msg_type=0', baidu_form, 1, true)
    assert.matches('msg=%7B%22k%22%3A%22v%22%7D', baidu_form, 1, true)
  end)

  it('names the providers file field an ADM or Baidu profile is missing', function()
    local dir = campaign_dir('ADM', { 'x' }, [[{ ADMMessage = { Body = 'b' } }]])
    h.write(dir .. '/providers.lua', [[
      return { profiles = { adm = { type = 'adm', client_id = 'id', client_secret = os.getenv('UNSET_SECRET') } } }
    ]])
    local _, code, err = h.herald('--db d.db run --until-idle c.lua', { cwd = dir })
    assert.are_not.equal(0, code)
    assert.matches('providers.lua: profiles.adm.client_secret: required', err, 1, true)
    h.write(dir .. '/providers.lua', [[
      return { profiles = { b = { type = 'baidu', api_key = 'k', secret_key = 's', device_type = 5 } } }
    ]])
    _, code, err = h.herald('--db d.db run --until-idle c.lua', { cwd = dir })
    assert.are_not.equal(0, code)
    assert.matches('providers.lua: profiles.b.device_type: 3 (Android, the default) or 4 (iOS)', err, 1, true)
  end)
end)
