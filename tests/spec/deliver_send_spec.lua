-- Direct messages (herald.send and `herald send`) with Pinpoint's per-address DeliveryStatus,
-- against the provider emulator and nginx.
local h = require 'helpers'
local S = require 'servers'
local json = require 'herald.json'
local send = require 'herald.send'
local endpoints = require 'herald.endpoints'

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
    -- the address and the endpoint are the same phone: one of them is the duplicate
    local a, e = res.Result['+15550000011'].DeliveryStatus, res.EndpointResult['send-ep1'].DeliveryStatus
    assert.is_true((a == 'SUCCESSFUL' and e == 'DUPLICATE') or (a == 'DUPLICATE' and e == 'SUCCESSFUL'), a .. ' ' .. e)
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

  it('sends to every endpoint of a user (SendUsersMessages)', function()
    assert(endpoints.put { Id = 'u-sms', ChannelType = 'SMS', Address = '+15550000071', User = { UserId = 'user-7' } })
    assert(endpoints.put { Id = 'u-sms2', ChannelType = 'SMS', Address = '+15550000099', User = { UserId = 'user-7' } })
    local res = send({ Users = { ['user-7'] = { Substitutions = { Code = { '1234' } } } },
                       MessageConfiguration = { SMSMessage = { Body = 'Code {{Code}}' } } }, { providers = sms_providers() })
    assert.are.equal('SUCCESSFUL', res.UsersResult['user-7']['u-sms'].DeliveryStatus)
    assert.are.equal('OPT_OUT', res.UsersResult['user-7']['u-sms2'].DeliveryStatus)
    -- the provider's opt-out reply opts the endpoint out, as Pinpoint does on STOP
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

  it('sends through a Lua channel and keeps message ids stable for a TraceId', function()
    local got = {}
    local cfg = { profiles = { mine = { type = 'lua', send = function(m) got[#got + 1] = m; return true end } },
                  channels = { EMAIL = 'mine' } }
    local req = { Addresses = { ['a@example.com'] = { ChannelType = 'EMAIL' } }, TraceId = 'same',
                  MessageConfiguration = { EmailMessage = { Title = 'T', Body = 'B {{Address}}' } } }
    local r1 = send(req, { providers = cfg })
    local r2 = send(req)
    assert.are.equal('SUCCESSFUL', r1.Result['a@example.com'].DeliveryStatus)
    assert.are.equal(r1.Result['a@example.com'].MessageId, r2.Result['a@example.com'].MessageId)
    assert.are.equal('B a@example.com', got[1].body)
    assert.are.equal(got[1].key, got[2].key)
  end)

  it('sends a message whose Substitutions are empty, as Pinpoint accepts them', function()
    local got = {}
    local cfg = { profiles = { mine = { type = 'lua', send = function(m) got[#got + 1] = m; return true end } },
                  channels = { SMS = 'mine' } }
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
