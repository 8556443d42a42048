-- Direct messages (herald.send and `herald send`) with Pinpoint's per-address DeliveryStatus,
-- against the provider emulator and nginx.
local h = require 'helpers'
local S = require 'servers'
local json = require 'herald.json'
local send = require 'herald.send'
local endpoints = require 'herald.endpoints'

-- A providers table whose profile `mine`, a Lua channel, keeps every message it is given in
-- `got` and routes the given channel types to it. Returns got and the table.
local function recording(...)
  local got, channels = {}, {}
  for _, ch in ipairs({ ... }) do channels[ch] = 'mine' end
  return got, { profiles = { mine = { type = 'lua', send = function(m) got[#got + 1] = m; return true end } },
                channels = channels }
end

describe('herald.send', function()
  local emu, ng

  setup(function()
    emu = S.start_emulator()
    ng = S.start_nginx { tls = false }
  end)

  teardown(function()
    if emu then emu:stop() end
    if ng then ng:stop() end
  end)

  local function sms_providers(extra)
    local p = { type = 'sms', url = emu.url .. '/sms',
                json = { to = '{{Address}}', text = '{{Body}}', sender = '{{SenderId}}', kind = '{{MessageType}}' } }
    for k, v in pairs(extra or {}) do p[k] = v end
    return { profiles = { sms = p }, channels = { SMS = 'sms' } }
  end

  it('answers SUCCESSFUL, OPT_OUT and DUPLICATE per address through a JSON SMS API', function()
    assert(endpoints.put { Id = 'send-ep1', ChannelType = 'SMS', Address = '+15550000011',
                           User = { UserAttributes = { FirstName = { 'Ana' } } } })
    local res = send({
      Addresses = { ['+15550000012'] = { ChannelType = 'SMS', Substitutions = { FirstName = { 'Bo' } } },
                    ['+15550000099'] = { ChannelType = 'SMS' },
                    ['+15550000011'] = { ChannelType = 'SMS' } },
      Endpoints = { ['send-ep1'] = {} },
      MessageConfiguration = { SMSMessage = { Body = 'Hi {{FirstName}}{{User.UserAttributes.FirstName}}',
                                              SenderId = 'HERALD', MessageType = 'PROMOTIONAL' } },
      TraceId = 'trace-1',
    }, { providers = sms_providers() })
    assert.are.equal('SUCCESSFUL', res.Result['+15550000012'].DeliveryStatus)
    assert.are.equal(200, res.Result['+15550000012'].StatusCode)
    assert.are.equal('OPT_OUT', res.Result['+15550000099'].DeliveryStatus)
    -- the address and the endpoint are the same phone: Addresses come first, the endpoint is
    -- the duplicate
    assert.are.equal('SUCCESSFUL', res.Result['+15550000011'].DeliveryStatus)
    assert.are.equal('DUPLICATE', res.EndpointResult['send-ep1'].DeliveryStatus)
    local bodies = {}
    for _, r in ipairs(emu:requests()) do
      if r.path == '/sms' then bodies[#bodies + 1] = json.decode(r.body) end
    end
    local found
    for _, b in ipairs(bodies) do if b.to == '+15550000012' then found = b end end
    assert.are.equal('Hi Bo', found.text)
    assert.are.equal('HERALD', found.sender)
    assert.are.equal('PROMOTIONAL', found.kind)
  end)

  it('answers OPT_OUT without sending to an opted-out endpoint, and THROTTLED over a limit', function()
    assert(endpoints.put { Id = 'send-out', ChannelType = 'SMS', Address = '+15550000044', OptOut = 'ALL' })
    local res = send({ Endpoints = { ['send-out'] = {} }, MessageConfiguration = { DefaultMessage = { Body = 'x' } } },
                     { providers = sms_providers() })
    assert.are.equal('OPT_OUT', res.EndpointResult['send-out'].DeliveryStatus)
    for _, r in ipairs(emu:requests()) do assert.is_nil(r.body:find('+15550000044', 1, true)) end
    -- an INACTIVE endpoint is sent to: SendMessages ignores EndpointStatus
    assert(endpoints.put { Id = 'send-idle', ChannelType = 'SMS', Address = '+15550000045', EndpointStatus = 'INACTIVE' })
    local idle = send({ Endpoints = { ['send-idle'] = {} }, MessageConfiguration = { DefaultMessage = { Body = 'x' } } },
                      { providers = sms_providers() })
    assert.are.equal('SUCCESSFUL', idle.EndpointResult['send-idle'].DeliveryStatus)
    -- a provider fault whose body quotes "opt out" is a failure to retry, not an opt-out
    local fault = send({ Addresses = { ['+15550000098'] = { ChannelType = 'SMS' } },
                         MessageConfiguration = { DefaultMessage = { Body = 'Sale! Reply STOP to opt out' } } },
                       { providers = sms_providers() })
    assert.are.equal('TEMPORARY_FAILURE', fault.Result['+15550000098'].DeliveryStatus)

    local res2 = send({ Addresses = { ['+15550000051'] = { ChannelType = 'SMS' }, ['+15550000052'] = { ChannelType = 'SMS' },
                                      ['+15550000053'] = { ChannelType = 'SMS' } },
                        MessageConfiguration = { DefaultMessage = { Body = 'x' } } },
                      { providers = sms_providers { limits = { per_minute = 2 } } })
    local counts = {}
    for _, r in pairs(res2.Result) do counts[r.DeliveryStatus] = (counts[r.DeliveryStatus] or 0) + 1 end
    assert.are.equal(2, counts.SUCCESSFUL)
    assert.are.equal(1, counts.THROTTLED)
  end)

  it('answers TEMPORARY_FAILURE, PERMANENT_FAILURE and UNKNOWN_FAILURE', function()
    local res = send({ Addresses = { ['+15550000061'] = { ChannelType = 'SMS' } },
                       MessageConfiguration = { DefaultMessage = { Body = 'x' } } },
                     { providers = sms_providers { url = ng.url .. '/fail' } })
    assert.are.equal('TEMPORARY_FAILURE', res.Result['+15550000061'].DeliveryStatus)
    assert.matches('HTTP 500', res.Result['+15550000061'].StatusMessage)

    local apns = { profiles = { apns = { type = 'apns', url = emu.tls_url, ca_file = emu.ca, team_id = emu.team_id,
                   key_id = emu.key_id, key_file = emu.apns_key, topic = emu.topic } }, channels = { APNS = 'apns' } }
    local res2 = send({ Addresses = { ['not-a-token'] = { ChannelType = 'APNS' } },
                        MessageConfiguration = { APNSMessage = { Title = 't', Body = 'b' } } }, { providers = apns })
    assert.are.equal('PERMANENT_FAILURE', res2.Result['not-a-token'].DeliveryStatus)
    assert.matches('BadDeviceToken', res2.Result['not-a-token'].StatusMessage)

    local res3 = send({ Addresses = { ['x@example.com'] = { ChannelType = 'EMAIL' } },
                        MessageConfiguration = { DefaultMessage = { Body = 'b' } } },
                      { providers = { profiles = { boom = { type = 'lua', send = function() error('exploded') end } },
                                      channels = { EMAIL = 'boom' } } })
    assert.are.equal('UNKNOWN_FAILURE', res3.Result['x@example.com'].DeliveryStatus)
    assert.matches('exploded', res3.Result['x@example.com'].StatusMessage)
  end)

  it("answers TEMPORARY_FAILURE with the provider's reason when it refuses the profile, not the recipient", function()
    -- Twilio refusing the credentials (401, 20003), Baidu the apikey (30603): every message of
    -- the profile meets the same refusal until the profile is fixed
    local res = send({ Addresses = { ['+15550000073'] = { ChannelType = 'SMS' },
                                     ['3957217761224410071'] = { ChannelType = 'BAIDU' } },
                       MessageConfiguration = { DefaultMessage = { Body = 'x' }, BaiduMessage = { Title = 't', Body = 'b' } } },
                     { providers = { profiles = {
                         sms = { type = 'sms', preset = 'twilio', url = emu.url .. '/twilio/Messages.json',
                                 account_sid = 'AC_test', auth_token = 'not-the-token', from = '+15550100' },
                         baidu = { type = 'baidu', url = emu.direct_url .. '/rest/3.0/push/single_device',
                                   api_key = 'not-the-key', secret_key = 'baidu-secret-key' } },
                       channels = { SMS = 'sms', BAIDU = 'baidu' } } })
    local sms, baidu = res.Result['+15550000073'], res.Result['3957217761224410071']
    assert.are.same({ 'TEMPORARY_FAILURE', 503 }, { sms.DeliveryStatus, sms.StatusCode })
    assert.matches('HTTP 401', sms.StatusMessage, 1, true)
    assert.matches('Authenticate', sms.StatusMessage, 1, true)
    assert.are.same({ 'TEMPORARY_FAILURE', 503 }, { baidu.DeliveryStatus, baidu.StatusCode })
    assert.matches('30603 Authentication Failed, apikey not found', baidu.StatusMessage, 1, true)
  end)

  it("puts an address the provider answers opted out on the app's opt-out list, so nothing more goes to it", function()
    local function requests_to(number)
      local n = 0
      for _, r in ipairs(emu:requests()) do
        if r.path == '/sms' and r.body:find(number, 1, true) then n = n + 1 end
      end
      return n
    end
    local req = { Addresses = { ['+15550000399'] = { ChannelType = 'SMS' } },
                  MessageConfiguration = { DefaultMessage = { Body = 'x' } } }
    local first = send(req, { providers = sms_providers() }).Result['+15550000399']
    assert.are.same({ 'OPT_OUT', 400 }, { first.DeliveryStatus, first.StatusCode })
    assert.are.equal(1, requests_to('+15550000399'))
    local listed = send.optouts { channel = 'SMS', address = '+15550000399' }
    assert.are.equal(1, #listed)
    assert.are.equal('provider:sms', listed[1].Source)
    assert.are.equal(first.MessageId, listed[1].MessageId)
    assert.matches('recipient has opted out', listed[1].Reason, 1, true)
    local again = send(req, { providers = sms_providers() }).Result['+15550000399']
    assert.are.equal('OPT_OUT', again.DeliveryStatus)
    assert.matches('the address is on the opt-out list (provider:sms of message ' .. first.MessageId, again.StatusMessage, 1, true)
    assert.are.equal(1, requests_to('+15550000399'))
    -- an address with a NUL inside is refused, not cut to lift this one
    assert.are.same({ nil, 'herald.send.lift_optout: address: contains a NUL character (\\u0000)' },
                    { send.lift_optout('SMS', '+15550000399\0-x') })
    assert.are.equal(1, #send.optouts { channel = 'SMS', address = '+15550000399' })
    -- an endpoint's opt-out is recorded on the endpoint, as before, not on the list
    assert(endpoints.put { Id = 'send-optout-ep', ChannelType = 'SMS', Address = '+15550000499' })
    local ep = send({ Endpoints = { ['send-optout-ep'] = {} }, MessageConfiguration = { DefaultMessage = { Body = 'x' } } },
                    { providers = sms_providers() }).EndpointResult['send-optout-ep']
    assert.are.equal('OPT_OUT', ep.DeliveryStatus)
    assert.are.equal('ALL', endpoints.get('send-optout-ep').OptOut)
    assert.are.equal(0, #send.optouts { address = '+15550000499' })
  end)

  it("takes a refusal that quotes the message (\"Reply STOP to opt out\") for the message's failure, not an opt-out", function()
    local twilio = { profiles = { sms = { type = 'sms', preset = 'twilio', url = emu.url .. '/twilio/Messages.json',
                     account_sid = 'AC_test', auth_token = 'secret', from = '+15550100' } }, channels = { SMS = 'sms' } }
    local msg = { DefaultMessage = { Body = 'Sale! Reply STOP to opt out' } }
    -- the JSON API quotes the text in its error and echoes the request; Twilio in its message
    for _, case in ipairs { { 'send-echo-json', '+15550000597', sms_providers(), 'CONTENT_REFUSED' },
                            { 'send-echo-tw', '+15550000697', twilio, '21617' } } do
      local id, number, providers, why = case[1], case[2], case[3], case[4]
      assert(endpoints.put { Id = id, ChannelType = 'SMS', Address = number })
      local r = send({ Endpoints = { [id] = {} }, MessageConfiguration = msg }, { providers = providers }).EndpointResult[id]
      assert.are.same({ 'PERMANENT_FAILURE', 400 }, { r.DeliveryStatus, r.StatusCode }, id)
      assert.matches(why, r.StatusMessage, 1, true)
      assert.is_nil(r.StatusMessage:find('OPT_OUT', 1, true), r.StatusMessage)
      assert.are.equal('NONE', endpoints.get(id).OptOut)
      assert.are.equal(0, #send.optouts { address = number })
    end
    -- the provider's error in words of its own: a profile's opt_out_pattern reads its code
    assert(endpoints.put { Id = 'send-unsub', ChannelType = 'SMS', Address = '+15550000596' })
    local plain = send({ Endpoints = { ['send-unsub'] = {} }, MessageConfiguration = { DefaultMessage = { Body = 'x' } } },
                       { providers = sms_providers() }).EndpointResult['send-unsub']
    assert.are.equal('PERMANENT_FAILURE', plain.DeliveryStatus)
    assert.are.equal('NONE', endpoints.get('send-unsub').OptOut)
    local told = send({ Endpoints = { ['send-unsub'] = {} }, MessageConfiguration = { DefaultMessage = { Body = 'x' } } },
                      { providers = sms_providers { opt_out_pattern = 'UNSUBSCRIBED' } }).EndpointResult['send-unsub']
    assert.are.equal('OPT_OUT', told.DeliveryStatus)
    assert.are.equal('ALL', endpoints.get('send-unsub').OptOut)
  end)

  it("renders the JSON SMS body's strings at any depth and gives Twilio the message's own sender", function()
    local res = send({ Addresses = { ['+15550000061'] = { ChannelType = 'SMS' } },
                       MessageConfiguration = { SMSMessage = { Body = 'nested', MessageType = 'PROMOTIONAL',
                                                               OriginationNumber = '+15550177' } } },
                     { providers = sms_providers { json = { to = '{{Address}}', text = '{{Body}}',
                       meta = { tags = { '{{MessageType}}', 'fixed' }, from = '{{OriginationNumber}}', n = 3 } } } })
    assert.are.equal('SUCCESSFUL', res.Result['+15550000061'].DeliveryStatus)
    local found
    for _, r in ipairs(emu:requests()) do
      if r.path == '/sms' and r.body:find('+15550000061', 1, true) then found = json.decode(r.body) end
    end
    assert.are.same({ tags = { 'PROMOTIONAL', 'fixed' }, from = '+15550177', n = 3 }, found.meta)
    -- India's DLT registration ids, as a campaign's SMSMessage gives them too
    local dlt = send({ Addresses = { ['+919800000002'] = { ChannelType = 'SMS' } },
                       MessageConfiguration = { SMSMessage = { Body = 'otp', EntityId = '1201159100000000001',
                                                               TemplateId = '1207161700000000002' } } },
                     { providers = sms_providers { json = { to = '{{Address}}', text = '{{Body}}',
                       pe_id = '{{EntityId}}', template_id = '{{TemplateId}}' } } })
    assert.are.equal('SUCCESSFUL', dlt.Result['+919800000002'].DeliveryStatus)
    found = nil
    for _, r in ipairs(emu:requests()) do
      if r.path == '/sms' and r.body:find('+919800000002', 1, true) then found = json.decode(r.body) end
    end
    assert.are.same({ to = '+919800000002', text = 'otp', pe_id = '1201159100000000001',
                      template_id = '1207161700000000002' }, found)
    -- a member rendering empty is left out, not sent as ""; a list keeps its items
    local bare = send({ Addresses = { ['+15550000063'] = { ChannelType = 'SMS' } },
                        MessageConfiguration = { SMSMessage = { Body = 'no sender' } } },
                      { providers = sms_providers { json = { to = '{{Address}}', text = '{{Body}}', tags = { '{{SenderId}}', 'x' },
                        sender = '{{SenderId}}', keyword = '{{Keyword}}', note = '' } } })
    assert.are.equal('SUCCESSFUL', bare.Result['+15550000063'].DeliveryStatus)
    found = nil
    for _, r in ipairs(emu:requests()) do
      if r.path == '/sms' and r.body:find('+15550000063', 1, true) then found = json.decode(r.body) end
    end
    assert.are.same({ to = '+15550000063', text = 'no sender', tags = { '', 'x' }, note = '' }, found)
    local tw = send({ Addresses = { ['+15550000062'] = { ChannelType = 'SMS' } },
                      MessageConfiguration = { SMSMessage = { Body = 'hi', OriginationNumber = '+15550177' } } },
                    { providers = { profiles = { sms = { type = 'sms', preset = 'twilio', url = emu.url .. '/twilio/Messages.json',
                      account_sid = 'AC_test', auth_token = 'secret', from = '+15550100', sender_id = 'BRAND' } },
                      channels = { SMS = 'sms' } } })
    assert.are.equal('SUCCESSFUL', tw.Result['+15550000062'].DeliveryStatus)
    local from
    for _, r in ipairs(emu:requests()) do
      if r.path == '/twilio/Messages.json' and r.body:find('15550000062', 1, true) then from = r.body:match('From=([^&]*)') end
    end
    assert.are.equal('%2B15550177', from)
  end)

  it('sends to every endpoint of a user (SendUsersMessages)', function()
    assert(endpoints.put { Id = 'u-sms', ChannelType = 'SMS', Address = '+15550000071', User = { UserId = 'user-7' } })
    assert(endpoints.put { Id = 'u-sms2', ChannelType = 'SMS', Address = '+15550000199', User = { UserId = 'user-7' } })
    local res = send({ Users = { ['user-7'] = { Substitutions = { Code = { '1234' } } } },
                       MessageConfiguration = { SMSMessage = { Body = 'Code {{Code}}' } } }, { providers = sms_providers() })
    -- SendUsersMessageResponse: Result is user -> endpoint -> result
    local keys = {}
    for k in pairs(res) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.are.same({ 'ApplicationId', 'RequestId', 'Result' }, keys)
    assert.are.equal('SUCCESSFUL', res.Result['user-7']['u-sms'].DeliveryStatus)
    assert.are.equal('OPT_OUT', res.Result['user-7']['u-sms2'].DeliveryStatus)
    local ok, err = pcall(send, { Users = { ['user-7'] = {} }, Endpoints = { ['u-sms'] = {} },
                                  MessageConfiguration = { SMSMessage = { Body = 'x' } } })
    assert.is_false(ok)
    assert.matches('herald.send: Users (SendUsersMessages) cannot be combined with Addresses or Endpoints', err, 1, true)
    -- the provider's opt-out reply opts the endpoint out, as Pinpoint does on STOP (a number of
    -- its own: the first spec's +15550000099 is on the app's opt-out list, so not sent to)
    assert.are.equal('ALL', endpoints.get('u-sms2').OptOut)
    local texts = {}
    for _, r in ipairs(emu:requests()) do
      if r.path == '/sms' then texts[json.decode(r.body).to] = json.decode(r.body).text end
    end
    assert.are.equal('Code 1234', texts['+15550000071'])
  end)

  it('sends a silent push as APNs background with priority 5 and TimeToLive as apns-expiration', function()
    local token = string.rep('ab', 32)
    local apns = { profiles = { apns = { type = 'apns', url = emu.tls_url, ca_file = emu.ca, team_id = emu.team_id,
                   key_id = emu.key_id, key_file = emu.apns_key, topic = emu.topic } }, channels = { APNS = 'apns' } }
    local res = send({ Addresses = { [token] = { ChannelType = 'APNS' } },
                       MessageConfiguration = { APNSMessage = { SilentPush = true, TimeToLive = 600,
                                                                Data = { sync = 'inbox' } } } }, { providers = apns })
    assert.are.equal('SUCCESSFUL', res.Result[token].DeliveryStatus, res.Result[token].StatusMessage)
    local last
    for _, r in ipairs(emu:requests()) do if r.path == '/3/device/' .. token then last = r end end
    assert.are.equal('background', last.headers['apns-push-type'])
    assert.are.equal('5', last.headers['apns-priority'])
    local exp = tonumber(last.headers['apns-expiration'])
    assert.is_true(math.abs(exp - (os.time() + 600)) < 30)
    assert.are.equal(res.Result[token].MessageId, last.headers['apns-collapse-id'])
    local body = json.decode(last.body)
    assert.are.equal(1, body.aps['content-available'])
    assert.are.equal('inbox', body.sync)
  end)

  it("carries APNSMessage's and GCMMessage's push fields into the APNs request and the FCM message", function()
    local ios, ios2, android = string.rep('d1', 32), string.rep('d2', 32), 'send-fields-tok'
    local cfg = { profiles = {
      apns = { type = 'apns', url = emu.tls_url, ca_file = emu.ca, team_id = emu.team_id,
               key_id = emu.key_id, key_file = emu.apns_key, topic = emu.topic },
      fcm = { type = 'fcm', url = emu.url, project_id = emu.project_id, service_account = emu.service_account } },
      channels = { APNS = 'apns', GCM = 'fcm' } }
    local res = send({ Addresses = { [ios] = { ChannelType = 'APNS' }, [android] = { ChannelType = 'GCM' } },
      MessageConfiguration = {
        APNSMessage = { Title = 'T', Body = 'B', Sound = 'chime.caf', Badge = 3, Priority = 'normal',
                        CollapseId = 'news', ThreadId = 'thread-1', Category = 'NEWS', TimeToLive = 0,
                        MediaUrl = 'https://cdn.example.com/a.png', Action = 'URL', Url = 'https://example.com/sale',
                        Data = { k = 'v' } },
        GCMMessage = { Title = 'T', Body = 'B', Sound = 'chime', ImageUrl = 'https://cdn.example.com/big.png',
                       ImageIconUrl = 'https://cdn.example.com/icon.png', SmallImageIconUrl = 'https://cdn.example.com/small.png',
                       IconReference = 'ic_news', CollapseKey = 'news', RestrictedPackageName = 'com.example.app',
                       Priority = 'normal', TimeToLive = 600, Action = 'DEEP_LINK', Url = 'app://sale' } } },
      { providers = cfg })
    assert.are.equal('SUCCESSFUL', res.Result[ios].DeliveryStatus, res.Result[ios].StatusMessage)
    assert.are.equal('SUCCESSFUL', res.Result[android].DeliveryStatus, res.Result[android].StatusMessage)
    local a, f
    for _, r in ipairs(emu:requests()) do
      if r.path == '/3/device/' .. ios then a = r end
      if r.status == 200 and r.body:find('"' .. android .. '"', 1, true) then f = json.decode(r.body).message end
    end
    assert.are.equal('5', a.headers['apns-priority'])
    assert.are.equal('news', a.headers['apns-collapse-id'])
    -- TimeToLive 0: delivered once, not stored
    assert.are.equal('0', a.headers['apns-expiration'])
    assert.are.equal('alert', a.headers['apns-push-type'])
    assert.are.same({ aps = { alert = { title = 'T', body = 'B' }, sound = 'chime.caf', badge = 3,
                              ['thread-id'] = 'thread-1', category = 'NEWS', ['mutable-content'] = 1 },
                      k = 'v', data = { ['media-url'] = 'https://cdn.example.com/a.png',
                                        pinpoint = { deeplink = 'https://example.com/sale' } } },
                    json.decode(a.body))
    assert.are.same({ title = 'T', body = 'B', image = 'https://cdn.example.com/big.png' }, f.notification)
    local ttl = f.android.ttl
    f.android.ttl = nil
    assert.matches('^%d+s$', ttl)
    assert.is_true(tonumber(ttl:sub(1, -2)) <= 600 and tonumber(ttl:sub(1, -2)) >= 590, ttl)
    assert.are.same({ priority = 'normal', collapse_key = 'news', restricted_package_name = 'com.example.app',
                      notification = { sound = 'chime', icon = 'ic_news', image = 'https://cdn.example.com/big.png' } },
                    f.android)
    assert.are.same({ ['pinpoint.deeplink'] = 'app://sale',
                      ['pinpoint.notification.imageUrl'] = 'https://cdn.example.com/big.png',
                      ['pinpoint.notification.imageIconUrl'] = 'https://cdn.example.com/icon.png',
                      ['pinpoint.notification.imageSmallIconUrl'] = 'https://cdn.example.com/small.png' }, f.data)

    -- DefaultPushNotificationMessage's fields, for a channel without its own message; Priority
    -- high, and no CollapseId: the message id, which makes a resent copy replace the first
    res = send({ Addresses = { [ios2] = { ChannelType = 'APNS' } },
      MessageConfiguration = { DefaultPushNotificationMessage = { Body = 'B', Sound = 'default', Priority = 'high',
                                                                   Action = 'DEEP_LINK', Url = 'app://inbox' } } },
      { providers = cfg })
    assert.are.equal('SUCCESSFUL', res.Result[ios2].DeliveryStatus, res.Result[ios2].StatusMessage)
    for _, r in ipairs(emu:requests()) do if r.path == '/3/device/' .. ios2 then a = r end end
    assert.are.equal('10', a.headers['apns-priority'])
    assert.are.equal(res.Result[ios2].MessageId, a.headers['apns-collapse-id'])
    assert.is_nil(a.headers['apns-expiration'])
    assert.are.same({ aps = { alert = { body = 'B' }, sound = 'default' }, data = { pinpoint = { deeplink = 'app://inbox' } } },
                    json.decode(a.body))
  end)

  it("sends an APNs RawContent as the whole payload, an address's over the message's, and refuses one not JSON", function()
    local one, two = string.rep('c1', 32), string.rep('c2', 32)
    local apns = { profiles = { apns = { type = 'apns', url = emu.tls_url, ca_file = emu.ca, team_id = emu.team_id,
                   key_id = emu.key_id, key_file = emu.apns_key, topic = emu.topic } }, channels = { APNS = 'apns' } }
    local raw = '{"aps":{"alert":{"title":"Sale","body":"50% off"},"badge":3},"deeplink":"app://sale"}'
    local res = send({ Addresses = { [one] = { ChannelType = 'APNS' },
                                     [two] = { ChannelType = 'APNS', RawContent = '{"aps":{"content-available":1},"sync":"inbox"}' } },
                       MessageConfiguration = { APNSMessage = { RawContent = raw } } }, { providers = apns })
    assert.are.equal('SUCCESSFUL', res.Result[one].DeliveryStatus, res.Result[one].StatusMessage)
    assert.are.equal('SUCCESSFUL', res.Result[two].DeliveryStatus, res.Result[two].StatusMessage)
    local got = {}
    for _, r in ipairs(emu:requests()) do got[r.path] = r end
    assert.are.same(json.decode(raw), json.decode(got['/3/device/' .. one].body))
    assert.are.equal('alert', got['/3/device/' .. one].headers['apns-push-type'])
    -- only wakes the app: a background push
    assert.are.same({ aps = { ['content-available'] = 1 }, sync = 'inbox' }, json.decode(got['/3/device/' .. two].body))
    assert.are.equal('background', got['/3/device/' .. two].headers['apns-push-type'])
    assert.are.equal('5', got['/3/device/' .. two].headers['apns-priority'])
    -- not a JSON object: the request is refused, naming the field
    local ok, err = pcall(send, { Addresses = { [one] = { ChannelType = 'APNS' } },
      MessageConfiguration = { APNSMessage = { RawContent = '{"aps":{"alert":' } } }, { providers = apns })
    assert.is_false(ok)
    assert.matches('herald.send: MessageConfiguration.APNSMessage.RawContent: ', err, 1, true)
    ok, err = pcall(send, { Addresses = { [one] = { ChannelType = 'APNS', RawContent = '"text"' } },
      MessageConfiguration = { APNSMessage = { Body = 'b' } } }, { providers = apns })
    assert.is_false(ok)
    assert.matches('Addresses.' .. one .. '.RawContent: expected a JSON object', err, 1, true)
  end)

  it('sends through a Lua channel and keeps message ids stable for a TraceId', function()
    local got, cfg = recording('EMAIL')
    local req = { Addresses = { ['a@example.com'] = { ChannelType = 'EMAIL' } }, TraceId = 'same',
                  MessageConfiguration = { EmailMessage = { Title = 'T', Body = 'B {{Address}}' } } }
    local r1 = send(req, { providers = cfg })
    local r2 = send(req)
    assert.are.equal('SUCCESSFUL', r1.Result['a@example.com'].DeliveryStatus)
    assert.are.equal(r1.Result['a@example.com'].MessageId, r2.Result['a@example.com'].MessageId)
    assert.are.equal('B a@example.com', got[1].body)
    assert.are.equal(got[1].key, got[2].key)
  end)

  it('refuses a request field of the wrong type with its path, sending nothing', function()
    local got, cfg = recording('SMS', 'EMAIL', 'GCM')
    local to = { ['+15550001111'] = { ChannelType = 'SMS' }, ['a@example.com'] = { ChannelType = 'EMAIL' } }
    local cases = {
      { { SMSMessage = { Body = 5 } }, 'MessageConfiguration.SMSMessage.Body: expected a string' },
      { { SMSMessage = { Body = 'x', EntityId = {} } }, 'MessageConfiguration.SMSMessage.EntityId: expected a string' },
      { { SMSMessage = { Body = 'x', MessageType = 'LOUD' } },
        "MessageConfiguration.SMSMessage.MessageType: 'TRANSACTIONAL' or 'PROMOTIONAL', not LOUD" },
      { { SMSMessage = { Body = 'x', Substitutions = 'no' } },
        'MessageConfiguration.SMSMessage.Substitutions: expected an object of name = { values }' },
      { { SMSMessage = { Body = 'x', Substitutions = { n = { 1 } } } },
        'MessageConfiguration.SMSMessage.Substitutions.n: expected a list of strings' },
      { { EmailMessage = { SimpleEmail = { Subject = { Data = 5 } } } },
        'MessageConfiguration.EmailMessage.SimpleEmail.Subject.Data: expected a string' },
      { { EmailMessage = { SimpleEmail = { Headers = { { Name = 'X-A' } } } } },
        'MessageConfiguration.EmailMessage.SimpleEmail.Headers[0]: expected { Name = string, Value = string }' },
      { { EmailMessage = { SimpleEmail = { Headers = { { Name = 'X-A', Value = '1' }, { Name = 'Resent-From', Value = 'a@example.com' } } } } },
        'MessageConfiguration.EmailMessage.SimpleEmail.Headers[1].Name: marks a message resent by a user' },
      { { EmailMessage = { Body = 'x', Headers = { { Name = 'X-A', Value = 'one\ntwo' } } } },
        'MessageConfiguration.EmailMessage.Headers[0].Value: value missing or has a line break' },
      { { EmailMessage = { Body = 'x', FromAddress = 7 } }, 'MessageConfiguration.EmailMessage.FromAddress: expected a string' },
      { { GCMMessage = { Body = 'x', TimeToLive = '1h' } }, 'MessageConfiguration.GCMMessage.TimeToLive: expected a whole number' },
      { { GCMMessage = { Body = 'x', Data = { k = { 1 } } } },
        'MessageConfiguration.GCMMessage.Data.k: expected a string, number or boolean' },
      { { SmsMessage = { Body = 'x' } }, 'MessageConfiguration.SmsMessage: not a message type (ADMMessage, APNSMessage,' },
      { { GCMMessage = { Body = 'x', Priority = 'urgent' } },
        "MessageConfiguration.GCMMessage.Priority: 'normal' or 'high' (or APNs's '5' or '10'), not urgent" },
      { { APNSMessage = { Body = 'x', Action = 'OPEN_URL' } },
        "MessageConfiguration.APNSMessage.Action: 'OPEN_APP', 'DEEP_LINK' or 'URL', not OPEN_URL" },
      { { APNSMessage = { Body = 'x', Badge = 1.5 } }, 'MessageConfiguration.APNSMessage.Badge: expected a whole number' },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(send, { Addresses = to, MessageConfiguration = c[1] }, { providers = cfg })
      assert.is_false(ok, c[2])
      assert.matches('herald.send: ' .. c[2], err, 1, true)
    end
    local ok, err = pcall(send, { Addresses = { ['a@example.com'] = { ChannelType = 'EMAIL', BodyOverride = 3 } },
                                  MessageConfiguration = { DefaultMessage = { Body = 'x' } } })
    assert.is_false(ok)
    assert.matches('herald.send: Addresses.a@example.com.BodyOverride: expected a string', err, 1, true)
    ok, err = pcall(send, { Addresses = to, Context = { n = { 1 } }, MessageConfiguration = { DefaultMessage = { Body = 'x' } } })
    assert.is_false(ok)
    assert.matches('herald.send: Context.n: expected a string, number or boolean', err, 1, true)
    assert.are.equal(0, #got)
    -- the right types go out
    local r = send({ Addresses = to, MessageConfiguration = {
      SMSMessage = { Body = 'Hi {{n}}', MessageType = 'PROMOTIONAL', Substitutions = { n = { 'Ann' } } },
      EmailMessage = { SimpleEmail = { Subject = { Data = 'S' }, TextPart = { Data = 'T' },
                                       Headers = { { Name = 'X-A', Value = '1' } } } } } })
    assert.are.equal('SUCCESSFUL', r.Result['+15550001111'].DeliveryStatus)
    assert.are.equal('SUCCESSFUL', r.Result['a@example.com'].DeliveryStatus)
    assert.are.equal(2, #got)
  end)

  it('refuses a TraceId or an address with a NUL inside, which would give another message its id', function()
    local got, cfg = recording('EMAIL')
    local config = { EmailMessage = { Title = 'T', Body = 'B' } }
    local r = send({ Addresses = { ['a@example.com'] = { ChannelType = 'EMAIL' } }, TraceId = 'order-1',
                     MessageConfiguration = config }, { providers = cfg })
    assert.are.equal('SUCCESSFUL', r.Result['a@example.com'].DeliveryStatus)
    local ok, err = pcall(send, { Addresses = { ['a@example.com'] = { ChannelType = 'EMAIL' } },
                                  TraceId = 'order-1\0b', MessageConfiguration = config })
    assert.is_false(ok)
    assert.matches('herald.send: TraceId: contains a NUL character', err, 1, true)
    ok, err = pcall(send, { Addresses = { ['a@example.com\0x'] = { ChannelType = 'EMAIL' } },
                            TraceId = 'order-1', MessageConfiguration = config })
    assert.is_false(ok)
    assert.matches('herald.send: Addresses: "a@example.com\\0x" contains a NUL character', err, 1, true)
    assert.are.equal(1, #got)
  end)

  it('sends a message whose Substitutions are empty, as Pinpoint accepts them', function()
    local got, cfg = recording('SMS')
    local req = json.decode([[{
      "Addresses": { "+15550000061": { "ChannelType": "SMS", "Substitutions": {} } },
      "MessageConfiguration": { "SMSMessage": { "Body": "Hello {{Address}}", "Substitutions": {} } } }]])
    local res = send(req, { providers = cfg })
    assert.are.equal('SUCCESSFUL', res.Result['+15550000061'].DeliveryStatus, res.Result['+15550000061'].StatusMessage)
    assert.are.equal('Hello +15550000061', got[1].body)
  end)
end)

describe('herald send', function()
  it('prints the MessageResponse and exits 1 unless every message succeeded', function()
    local emu = S.start_emulator()
    local ok, e = pcall(function()
      local dir = h.tmpdir()
      h.write(dir .. '/providers.lua', string.format([[
        return { profiles = { sms = { type = 'sms', preset = 'twilio', url = %q, account_sid = 'AC_test',
                 auth_token = 'secret', from = '+15550100' } }, channels = { SMS = 'sms' } }
      ]], emu.url .. '/twilio/Messages.json'))
      local out, code, err = h.herald('--db d.db send --channel SMS --to +15550000011 --body hello', { cwd = dir })
      assert.are.equal(0, code, err)
      assert.are.equal('SUCCESSFUL', json.decode(out).Result['+15550000011'].DeliveryStatus)
      local out2, code2 = h.herald('--db d.db send --channel SMS --to +15550000011 --to +15550000099 --body hi', { cwd = dir })
      assert.are.equal(1, code2)
      assert.are.equal('OPT_OUT', json.decode(out2).Result['+15550000099'].DeliveryStatus)
      local _, code3, err3 = h.herald('--db d.db send --to +1 --body x', { cwd = dir })
      assert.are.equal(2, code3)
      assert.matches('--to needs --channel', err3, 1, true)
    end)
    emu:stop()
    assert(ok, e)
  end)
end)

describe('herald.send request fields', function()
  -- A Lua channel that keeps what it was given.
  local got
  local function recorder(channels)
    got = {}
    local ch = {}
    for _, c in ipairs(channels) do ch[c] = 'rec' end
    return { profiles = { rec = { type = 'lua', send = function(m)
      got[#got + 1] = { channel = m.channel, address = m.address, title = m.title, body = m.body, html = m.html,
                        from = m.from, headers = m.headers, data = m.data, key = m.key }
      return true
    end } }, channels = ch }
  end

  it("renders TemplateConfiguration's template when the channel's message gives only settings", function()
    assert(require('herald.template').create { name = 'send-mail', type = 'EMAIL', Subject = 'Hi {{FirstName}}',
      TextPart = 'Plan {{Plan}} for {{Address}}', HtmlPart = '<b>{{FirstName}}</b>',
      DefaultSubstitutions = '{"FirstName": "friend", "Plan": "free"}',
      Headers = { { Name = 'X-From-Template', Value = 'yes' } } })
    local res = send({
      Addresses = { ['bo@example.com'] = { ChannelType = 'EMAIL', Substitutions = { FirstName = { 'Bo' } } },
                    ['cy@example.com'] = { ChannelType = 'EMAIL' } },
      MessageConfiguration = { EmailMessage = { FromAddress = 'news@example.com', Substitutions = { Plan = { 'gold' } },
        SimpleEmail = { Headers = { { Name = 'X-Tag', Value = 'spring' } } } } },
      TemplateConfiguration = { EmailTemplate = { Name = 'send-mail' } },
    }, { providers = recorder { 'EMAIL' } })
    assert.are.equal('SUCCESSFUL', res.Result['bo@example.com'].DeliveryStatus)
    local by = {}
    for _, m in ipairs(got) do by[m.address] = m end
    -- the address's Substitutions over the message's, over the template's defaults
    assert.are.same({ 'Hi Bo', 'Plan gold for bo@example.com', '<b>Bo</b>', 'news@example.com' },
      { by['bo@example.com'].title, by['bo@example.com'].body, by['bo@example.com'].html, by['bo@example.com'].from })
    assert.are.equal('Hi friend', by['cy@example.com'].title)
    assert.are.same({ ['X-From-Template'] = 'yes', ['X-Tag'] = 'spring' }, by['cy@example.com'].headers)
  end)

  it("renders an email's header values as its body is, and fails alone the address one renders badly for", function()
    local res = send({
      Addresses = { ['bo@example.com'] = { ChannelType = 'EMAIL', Substitutions = { Token = { 'tk bo&1' } } },
                    ['cy@example.com'] = { ChannelType = 'EMAIL', Substitutions = { Token = { 'a\r\nBcc: x@example.com' } } } },
      MessageConfiguration = { EmailMessage = { FromAddress = 'news@example.com',
        SimpleEmail = { Subject = { Data = 'Hi' }, TextPart = { Data = 'body' },
                        Headers = { { Name = 'X-Tag', Value = 'spring' }, { Name = 'x-to', Value = 'simple' } } },
        -- Headers over SimpleEmail.Headers, a name matched whatever its case
        Headers = { { Name = 'List-Unsubscribe', Value = '<https://shop.example/u?t={{Token}}>' },
                    { Name = 'X-To', Value = '{{Address}}' }, { Name = 'X-Token', Value = '{{Token}}' } } } },
    }, { providers = recorder { 'EMAIL' } })
    assert.are.equal('SUCCESSFUL', res.Result['bo@example.com'].DeliveryStatus, res.Result['bo@example.com'].StatusMessage)
    assert.are.equal(1, #got)
    -- what List-Unsubscribe substitutes is percent-encoded, as in a profile's list_unsubscribe
    assert.are.same({ ['X-Tag'] = 'spring', ['X-To'] = 'bo@example.com', ['X-Token'] = 'tk bo&1',
                      ['List-Unsubscribe'] = '<https://shop.example/u?t=tk%20bo%261>' }, got[1].headers)
    assert.are.equal('PERMANENT_FAILURE', res.Result['cy@example.com'].DeliveryStatus)
    assert.matches("RENDER_FAILED: headers['X-Token']: value missing or has a line break",
      res.Result['cy@example.com'].StatusMessage, 1, true)
  end)

  it("takes a push template's tap action, URL, sound and RawContent under the message's own settings", function()
    assert(require('herald.template').create { name = 'send-push', type = 'PUSH',
      Default = { Title = 'Sale', Body = 'starts now', Action = 'DEEP_LINK', Url = 'shop://sale/{{Address}}', Sound = 'chime' },
      ADM = { RawContent = '{"data": {"to": "{{Address}}"}}' } })
    local seen = {}
    local providers = { profiles = { rec = { type = 'lua', send = function(m)
      seen[m.address] = { action = m.action, url = m.action_url, sound = m.sound, raw = m.raw, title = m.title }
      return true
    end } }, channels = { GCM = 'rec', ADM = 'rec' } }
    local res = send({
      Addresses = { ['tok-a'] = { ChannelType = 'GCM' }, ['tok-k'] = { ChannelType = 'ADM' } },
      MessageConfiguration = { GCMMessage = { Sound = 'bell' } },
      TemplateConfiguration = { PushTemplate = { Name = 'send-push' } },
    }, { providers = providers })
    assert.are.equal('SUCCESSFUL', res.Result['tok-a'].DeliveryStatus, res.Result['tok-a'].StatusMessage)
    assert.are.equal('SUCCESSFUL', res.Result['tok-k'].DeliveryStatus, res.Result['tok-k'].StatusMessage)
    -- the message's own Sound over the template's
    assert.are.same({ action = 'DEEP_LINK', url = 'shop://sale/tok-a', sound = 'bell', title = 'Sale' }, seen['tok-a'])
    assert.are.same({ data = { to = 'tok-k' } }, seen['tok-k'].raw)
  end)

  it('adds Context to push data, takes JSON nulls as absent and gives requests without a TraceId ids of their own', function()
    local req = json.decode [[{
      "Addresses": { "tok-1": { "ChannelType": "GCM", "Context": { "orderId": "o-1" }, "BodyOverride": null } },
      "Context": { "orderId": "o-0", "campaign": "spring" },
      "MessageConfiguration": { "GCMMessage": { "Body": "hello", "Title": null, "Data": { "d": "1" } } },
      "TraceId": null
    }]]
    local r1 = send(req, { providers = recorder { 'GCM' } })
    assert.are.equal('SUCCESSFUL', r1.Result['tok-1'].DeliveryStatus)
    assert.are.same({ d = '1', orderId = 'o-1', campaign = 'spring' }, got[1].data)
    assert.are.equal('hello', got[1].body)
    local r2 = send(req, { providers = recorder { 'GCM' } })
    assert.are_not.equal(r1.RequestId, r2.RequestId)
    assert.are_not.equal(r1.Result['tok-1'].MessageId, r2.Result['tok-1'].MessageId)
  end)

  it('gives DUPLICATE only to an entry after one that is sent, whatever the hash order', function()
    -- the older endpoint of each address opted out: the newer one is a valid recipient
    for i = 1, 6 do
      local addr = 'shared' .. i .. '@example.com'
      assert(endpoints.put { Id = 'dup-old' .. i, ChannelType = 'EMAIL', Address = addr, OptOut = 'ALL' })
      assert(endpoints.put { Id = 'dup-new' .. i, ChannelType = 'EMAIL', Address = addr })
      local res = send({ Endpoints = { ['dup-old' .. i] = {}, ['dup-new' .. i] = {} },
                         MessageConfiguration = { DefaultMessage = { Title = 't', Body = 'b' } } },
                       { providers = recorder { 'EMAIL' } })
      assert.are.equal('OPT_OUT', res.EndpointResult['dup-old' .. i].DeliveryStatus)
      assert.are.equal('SUCCESSFUL', res.EndpointResult['dup-new' .. i].DeliveryStatus)
      assert.are.equal(1, #got)
    end
    -- an entry that fails to render is not sent either: the next one to the address is
    assert(endpoints.put { Id = 'dup-sms', ChannelType = 'SMS', Address = '+15550000081' })
    local res = send({ Addresses = { ['+15550000081'] = { ChannelType = 'SMS', BodyOverride = '{{#if}}' } },
                       Endpoints = { ['dup-sms'] = {} },
                       MessageConfiguration = { DefaultMessage = { Body = 'b' } } },
                     { providers = recorder { 'SMS' } })
    assert.are.equal('PERMANENT_FAILURE', res.Result['+15550000081'].DeliveryStatus)
    assert.are.equal('SUCCESSFUL', res.EndpointResult['dup-sms'].DeliveryStatus)
    -- two entries that are both sent: the one earlier in sorted order wins, every time
    for _ = 1, 4 do
      local r = send({ Addresses = { ['+15550000081'] = { ChannelType = 'SMS' } }, Endpoints = { ['dup-sms'] = {} },
                       MessageConfiguration = { DefaultMessage = { Body = 'b' } } }, { providers = recorder { 'SMS' } })
      assert.are.equal('SUCCESSFUL', r.Result['+15550000081'].DeliveryStatus)
      assert.are.equal('DUPLICATE', r.EndpointResult['dup-sms'].DeliveryStatus)
      assert.are.equal(1, #got)
    end
  end)

  it('sends a CUSTOM message to an address through a webhook', function()
    local ng = S.start_nginx { tls = false }
    local ok, e = pcall(function()
      local res = send({ Addresses = { alice = { ChannelType = 'CUSTOM' } },
                         MessageConfiguration = { CustomMessage = { Data = 'hello' } } },
                       { providers = { profiles = { hook = { type = 'webhook', url = ng.url .. '/ok' } },
                                       channels = { CUSTOM = 'hook' } } })
      assert.are.equal('SUCCESSFUL', res.Result.alice.DeliveryStatus, res.Result.alice.StatusMessage)
    end)
    ng:stop()
    assert(ok, e)
  end)

  it("answers THROTTLED for addresses held back by the provider's Retry-After, sending them nothing", function()
    local ng = S.start_nginx { tls = false }
    local ok, e = pcall(function()
      local res = send({ Addresses = { a = { ChannelType = 'CUSTOM' }, b = { ChannelType = 'CUSTOM' },
                                       c = { ChannelType = 'CUSTOM' } },
                         MessageConfiguration = { CustomMessage = { Data = 'hello' } } },
                       { providers = { profiles = { hook = { type = 'webhook', url = ng.url .. '/limited', connections = 1 } },
                                       channels = { CUSTOM = 'hook' } } })
      local counts = {}
      for _, r in pairs(res.Result) do counts[r.DeliveryStatus] = (counts[r.DeliveryStatus] or 0) + 1 end
      -- the one sent was refused with 429 (the provider's throttle); the other two never left
      assert.are.same({ THROTTLED = 3 }, counts)
      assert.are.equal(1, h.wait_for(function() return #ng:requests() > 0 and #ng:requests() end, 2000, 'the request'))
      -- the wait holds later sends through the profile as well
      local again = send({ Addresses = { d = { ChannelType = 'CUSTOM' } },
                           MessageConfiguration = { CustomMessage = { Data = 'hello' } } })
      assert.are.equal('THROTTLED', again.Result.d.DeliveryStatus)
      herald.sleep(200)
      assert.are.equal(1, #ng:requests())
    end)
    ng:stop()
    assert(ok, e)
  end)
end)

describe('herald send receipts', function()
  -- Starts `herald serve` on dir/d.db; returns its pid and port.
  local function start_serve(dir)
    local srv = h.start_serve(dir, 'd.db')
    return srv.pid, srv.port
  end

  local function post_status(port, note)
    local out = h.sh('curl -s -w "\\n%{http_code}" -X POST -H "Content-Type: application/json" --data-binary '
      .. h.shell_quote(json.encode(note)) .. ' http://127.0.0.1:' .. port .. '/v1/apps/default/webhooks/status')
    local body, code = out:match('^(.*)\n(%d+)%s*$')
    return tonumber(code), body
  end

  local function file_providers(dir)
    h.write(dir .. '/providers.lua', [[
      return { profiles = { out = { type = 'file', path = 'out.txt' } }, channels = { EMAIL = 'out', SMS = 'out' } }
    ]])
  end

  it("records a provider's STOP for a direct message and sends nothing more to the number", function()
    local dir = h.tmpdir()
    file_providers(dir)
    local _, c0, e0 = h.herald([[--db d.db -e "assert(herald.endpoints.put{ Id='bob-sms', ChannelType='SMS', Address='+15550003333' })
      assert(herald.endpoints.put{ Id='cy-sms', ChannelType='SMS', Address='+15550004444' })"]], { cwd = dir })
    assert.are.equal(0, c0, e0)
    local out1, c1, e1 = h.herald('--db d.db send --endpoint bob-sms --body Promo1', { cwd = dir })
    assert.are.equal(0, c1, e1)
    local mid = json.decode(out1).EndpointResult['bob-sms'].MessageId
    local out2, c2, e2 = h.herald('--db d.db send --channel SMS --to +15550004444 --body Promo2', { cwd = dir })
    assert.are.equal(0, c2, e2)
    local mid2 = json.decode(out2).Result['+15550004444'].MessageId
    local pid, port = start_serve(dir)
    local ok, e = pcall(function()
      local code, body = post_status(port, { MessageId = mid, Type = 'SMS', Status = 'OPTOUT' })
      assert.are.equal(202, code, body)
      assert.are.same({ EventType = '_SMS.OPTOUT', EndpointId = 'bob-sms', Message = 'Accepted' }, json.decode(body))
      -- a message to an address reaches the endpoint with that channel and address
      local code2, body2 = post_status(port, { MessageId = mid2, Type = 'SMS', Status = 'SUCCESS' })
      assert.are.equal(202, code2, body2)
      assert.are.equal('cy-sms', json.decode(body2).EndpointId)
    end)
    os.execute('kill ' .. pid)
    assert(ok, e)
    local ev = h.query(dir, 'd.db', "SELECT endpoint_id, event_type, attributes FROM events WHERE event_type LIKE '_SMS.%' ORDER BY endpoint_id")
    assert.are.equal(2, #ev)
    assert.are.same({ 'bob-sms', '_SMS.OPTOUT', mid }, { ev[1].endpoint_id, ev[1].event_type, json.decode(ev[1].attributes).message_id })
    assert.are.same({ 'cy-sms', '_SMS.SUCCESS', mid2 }, { ev[2].endpoint_id, ev[2].event_type, json.decode(ev[2].attributes).message_id })
    assert.are.equal('ALL', h.query(dir, 'd.db', "SELECT opt_out FROM endpoints WHERE id = 'bob-sms'")[1].opt_out)
    -- the number opted out: neither its endpoint nor the bare address is sent to
    local out3, c3 = h.herald('--db d.db send --endpoint bob-sms --body Promo3', { cwd = dir })
    assert.are.equal(1, c3)
    assert.are.equal('OPT_OUT', json.decode(out3).EndpointResult['bob-sms'].DeliveryStatus)
    local out4, c4 = h.herald('--db d.db send --channel SMS --to +15550003333 --body Promo4', { cwd = dir })
    assert.are.equal(1, c4)
    local r4 = json.decode(out4).Result['+15550003333']
    assert.are.equal('OPT_OUT', r4.DeliveryStatus)
    assert.is_nil(r4.MessageId)
    local sent = h.read(dir .. '/out.txt')
    assert.are.same({ 1, 1, 0, 0 }, { h.count(sent, 'Promo1'), h.count(sent, 'Promo2'), h.count(sent, 'Promo3'), h.count(sent, 'Promo4') })
  end)

  it("keeps a STOP or a complaint of a message to an address on the app's opt-out list, endpoint or none", function()
    local dir = h.tmpdir()
    file_providers(dir)
    local _, c0, e0 = h.herald([[--db d.db -e "assert(herald.endpoints.put{ Id='dee-sms', ChannelType='SMS', Address='+15550005555' })"]],
                               { cwd = dir })
    assert.are.equal(0, c0, e0)
    local function sent(args, key)
      local out, code, err = h.herald('--db d.db send ' .. args, { cwd = dir })
      assert.are.equal(0, code, err)
      return json.decode(out).Result[key].MessageId
    end
    -- two addresses no endpoint has, and one an endpoint has
    local sms = sent('--channel SMS --to +15550006666 --body Promo1', '+15550006666')
    local mail = sent('--channel EMAIL --to eve@example.com --title Hi --body Mail1', 'eve@example.com')
    local dee = sent('--channel SMS --to +15550005555 --body Promo2', '+15550005555')
    local pid, port = start_serve(dir)
    local ok, e = pcall(function()
      local code, body = post_status(port, { MessageId = sms, Type = 'SMS', Status = 'OPTOUT', Reason = 'STOP',
                                             Timestamp = '2026-03-01T10:00:00Z' })
      assert.are.equal(202, code, body)
      assert.are.same({ EventType = '_SMS.OPTOUT', OptOut = { ChannelType = 'SMS', Address = '+15550006666' },
                        Message = 'Accepted' }, json.decode(body))
      -- the provider's retry changes nothing
      local again, body_again = post_status(port, { MessageId = sms, Type = 'SMS', Status = 'OPTOUT',
                                                    Timestamp = '2026-03-02T10:00:00Z' })
      assert.are.equal(202, again, body_again)
      local code2, body2 = post_status(port, { MessageId = mail, Type = 'COMPLAINT' })
      assert.are.equal(202, code2, body2)
      assert.are.same({ EventType = '_email.complaint', OptOut = { ChannelType = 'EMAIL', Address = 'eve@example.com' },
                        Message = 'Accepted' }, json.decode(body2))
      -- the endpoint with the address is opted out as before, and the address listed as well
      local code3, body3 = post_status(port, { MessageId = dee, Type = 'SMS', Status = 'OPTOUT' })
      assert.are.equal(202, code3, body3)
      assert.are.same({ EventType = '_SMS.OPTOUT', EndpointId = 'dee-sms',
                        OptOut = { ChannelType = 'SMS', Address = '+15550005555' }, Message = 'Accepted' }, json.decode(body3))
      -- a receipt that asks for nothing still has nothing to record without an endpoint
      local code4, body4 = post_status(port, { MessageId = sms, Type = 'SMS', Status = 'SUCCESS' })
      assert.are.equal(404, code4, body4)
      assert.matches('which no endpoint of application', body4, 1, true)
    end)
    os.execute('kill ' .. pid)
    assert(ok, e)
    assert.are.equal('ALL', h.query(dir, 'd.db', "SELECT opt_out FROM endpoints WHERE id = 'dee-sms'")[1].opt_out)
    assert.are.same({ { channel = 'EMAIL', address = 'eve@example.com', source = '_email.complaint', message_id = mail },
                      { channel = 'SMS', address = '+15550005555', source = '_SMS.OPTOUT', message_id = dee },
                      { channel = 'SMS', address = '+15550006666', source = '_SMS.OPTOUT', message_id = sms, reason = 'STOP',
                        opted_out_at = '2026-03-01T10:00:00.000Z' } },
      h.query(dir, 'd.db', "SELECT channel, address, source, message_id, reason,"
        .. " CASE WHEN message_id = '" .. sms .. "' THEN opted_out_at END AS opted_out_at"
        .. " FROM address_optouts ORDER BY channel, address"))

    -- nothing more goes to a listed address, whether the request names it or an endpoint has it
    local out1, c1 = h.herald('--db d.db send --channel SMS --to +15550006666 --body Promo3', { cwd = dir })
    assert.are.equal(1, c1)
    local r1 = json.decode(out1).Result['+15550006666']
    assert.are.same({ 'OPT_OUT', 400 }, { r1.DeliveryStatus, r1.StatusCode })
    assert.is_nil(r1.MessageId)
    assert.matches('on the opt-out list (_SMS.OPTOUT of message ' .. sms, r1.StatusMessage, 1, true)
    assert.matches('herald.send.lift_optout', r1.StatusMessage, 1, true)
    h.write(dir .. '/s.lua', [[
      assert(herald.endpoints.put { Id = 'eve-mail', ChannelType = 'EMAIL', Address = 'eve@example.com' })
      local cfg = herald.providers.load('providers.lua')
      local res = herald.send({ Addresses = { ['eve@example.com'] = { ChannelType = 'EMAIL' } },
                                Endpoints = { ['eve-mail'] = {} },
                                MessageConfiguration = { DefaultMessage = { Title = 'Hi', Body = 'Mail2' } } }, { providers = cfg })
      print(res.Result['eve@example.com'].DeliveryStatus, res.EndpointResult['eve-mail'].DeliveryStatus,
            res.EndpointResult['eve-mail'].StatusMessage)
      local list = herald.send.optouts { channel = 'SMS' }
      print(#list, list[2].Address, list[2].Source, list[2].MessageId == ']] .. sms .. [[', list[2].Reason, list[2].Timestamp)
      print(#herald.send.optouts(), #herald.send.optouts { address = 'nobody@example.com' })
      print(herald.send.lift_optout('SMS', '+15550006666'), herald.send.lift_optout('SMS', '+15550006666'))
      print(select(2, pcall(function() herald.send.lift_optout('SMS') end)))
      print(select(2, pcall(function() herald.send.optouts { channel = 1 } end)))
    ]])
    local out2, c2, e2 = h.herald('--db d.db s.lua', { cwd = dir })
    assert.are.equal(0, c2, e2)
    local lines = {}
    for l in out2:gmatch('[^\n]+') do lines[#lines + 1] = l end
    assert.matches('^OPT_OUT\tOPT_OUT\tthe address is on the opt%-out list %(_email%.complaint of message ', lines[1])
    assert.are.equal('2\t+15550006666\t_SMS.OPTOUT\ttrue\tSTOP\t2026-03-01T10:00:00.000Z', lines[2])
    assert.are.equal('3\t0', lines[3])
    assert.are.equal('true\tfalse', lines[4])
    assert.matches('s.lua:12: herald.send.lift_optout: address: expected a string', lines[5], 1, true)
    assert.matches('s.lua:13: herald.send.optouts: channel: expected a string', lines[6], 1, true)
    -- lifted: the number is sent to again
    local out3, c3, e3 = h.herald('--db d.db send --channel SMS --to +15550006666 --body Promo4', { cwd = dir })
    assert.are.equal(0, c3, e3)
    assert.are.equal('SUCCESSFUL', json.decode(out3).Result['+15550006666'].DeliveryStatus)
    local out_txt = h.read(dir .. '/out.txt')
    assert.are.same({ 1, 1, 0, 0, 1 }, { h.count(out_txt, 'Promo1'), h.count(out_txt, 'Mail1'), h.count(out_txt, 'Promo3'),
                                         h.count(out_txt, 'Mail2'), h.count(out_txt, 'Promo4') })
  end)

  it("changes an endpoint and the opt-out list once, and only while it has the message's address", function()
    local dir = h.tmpdir()
    file_providers(dir)
    local _, c0, e0 = h.herald([[--db d.db -e "assert(herald.endpoints.put{ Id='fay-sms', ChannelType='SMS', Address='+15550007001' })
      assert(herald.endpoints.put{ Id='gil-sms', ChannelType='SMS', Address='+15550007002' })"]], { cwd = dir })
    assert.are.equal(0, c0, e0)
    local function sent(args, key, res)
      local out, code, err = h.herald('--db d.db send ' .. args, { cwd = dir })
      assert.are.equal(0, code, err)
      return json.decode(out)[res][key].MessageId
    end
    local function run(src)
      local _, code, err = h.herald('--db d.db -e ' .. h.shell_quote(src), { cwd = dir })
      assert.are.equal(0, code, err)
    end
    local function opt_out(id)
      return h.query(dir, 'd.db', "SELECT opt_out FROM endpoints WHERE id = '" .. id .. "'")[1].opt_out
    end
    local fay = sent('--endpoint fay-sms --body Promo1', 'fay-sms', 'EndpointResult')
    local gil = sent('--channel SMS --to +15550007002 --body Promo2', '+15550007002', 'Result')
    -- fay's number changed after her message went out: the old number's STOP is not hers
    run("assert(herald.endpoints.put{ Id='fay-sms', ChannelType='SMS', Address='+15550007009' })")
    local pid, port = start_serve(dir)
    local ok, e = pcall(function()
      local code, body = post_status(port, { MessageId = fay, Type = 'SMS', Status = 'OPTOUT' })
      assert.are.equal(202, code, body)
      assert.are.equal('NONE', opt_out('fay-sms'))
      -- gil's STOP opts his endpoint out and lists his number; he asks for messages again
      code, body = post_status(port, { MessageId = gil, Type = 'SMS', Status = 'OPTOUT' })
      assert.are.equal(202, code, body)
      assert.are.equal('ALL', opt_out('gil-sms'))
      run([[assert(herald.send.lift_optout('SMS', '+15550007002'))
        assert(herald.endpoints.put{ Id='gil-sms', ChannelType='SMS', Address='+15550007002', OptOut='NONE' })]])
      -- the provider's retry of the STOP changes neither
      code, body = post_status(port, { MessageId = gil, Type = 'SMS', Status = 'OPTOUT' })
      assert.are.equal(202, code, body)
      assert.are.same({ EventType = '_SMS.OPTOUT', EndpointId = 'gil-sms', Message = 'Accepted' }, json.decode(body))
    end)
    os.execute('kill ' .. pid)
    assert(ok, e)
    assert.are.equal('NONE', opt_out('gil-sms'))
    assert.are.same({}, h.query(dir, 'd.db', 'SELECT address FROM address_optouts'))
    assert.are.same({ { endpoint_id = 'fay-sms', n = 1 }, { endpoint_id = 'gil-sms', n = 1 } },
      h.query(dir, 'd.db', "SELECT endpoint_id, count(*) AS n FROM events WHERE event_type = '_SMS.OPTOUT'"
        .. ' GROUP BY 1 ORDER BY 1'))
  end)

  it('prints the SendUsersMessageResponse for --user', function()
    local dir = h.tmpdir()
    file_providers(dir)
    local _, c0, e0 = h.herald([[--db d.db -e "assert(herald.endpoints.put{ Id='u1-mail', ChannelType='EMAIL', Address='ann@example.com', User={UserId='ann'} })"]], { cwd = dir })
    assert.are.equal(0, c0, e0)
    local out, code, err = h.herald('--db d.db send --user ann --body Hi', { cwd = dir })
    assert.are.equal(0, code, err)
    local res = json.decode(out)
    assert.are.equal('SUCCESSFUL', res.Result.ann['u1-mail'].DeliveryStatus)
    assert.are.equal('default', res.ApplicationId)
    assert.is_nil(res.EndpointResult)
    assert.is_nil(res.UsersResult)
    local _, code2, err2 = h.herald('--db d.db send --user ann --channel SMS --to +15550001111 --body Hi', { cwd = dir })
    assert.are.equal(2, code2)
    assert.matches('cannot be combined with Addresses or Endpoints', err2, 1, true)
  end)

  it('keeps the record of a direct message 30 days', function()
    local dir = h.tmpdir()
    h.write(dir .. '/s.lua', [[
      local clock = require 'herald.core.clock'
      local cfg = { profiles = { rec = { type = 'lua', send = function() return true end } }, channels = { SMS = 'rec' } }
      local function one(a)
        local r = herald.send({ Addresses = { [a] = { ChannelType = 'SMS' } },
                                MessageConfiguration = { DefaultMessage = { Body = 'b' } } }, { providers = cfg })
        return r.Result[a].MessageId
      end
      clock.set_manual(clock.now())
      local first = one('+15550000001')
      clock.advance(30 * 86400 * 1000)
      local second = one('+15550000002')
      clock.advance(1)
      local third = one('+15550000003')
      local ids = {}
      for _, r in ipairs(herald.db.query('SELECT message_id FROM direct_messages ORDER BY sent_ms')) do ids[#ids + 1] = r.message_id end
      print(table.concat(ids, ' ') == second .. ' ' .. third, #ids)
    ]])
    local out, code, err = h.herald('--db d.db s.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal('true\t2', out:match('^(.-)%s*$'))
  end)
end)

describe('herald send ids', function()
  it('differ between two runs without a TraceId', function()
    local dir = h.tmpdir()
    h.write(dir .. '/providers.lua', [[
      return { profiles = { rec = { type = 'lua', send = function() return true end } }, channels = { SMS = 'rec' } }
    ]])
    local out1, c1, e1 = h.herald('--db d.db send --channel SMS --to +15550000011 --body one', { cwd = dir })
    assert.are.equal(0, c1, e1)
    local out2, c2, e2 = h.herald('--db d.db send --channel SMS --to +15550000011 --body two', { cwd = dir })
    assert.are.equal(0, c2, e2)
    local a, b = json.decode(out1), json.decode(out2)
    assert.are_not.equal(a.RequestId, b.RequestId)
    assert.are_not.equal(a.Result['+15550000011'].MessageId, b.Result['+15550000011'].MessageId)
  end)
end)
