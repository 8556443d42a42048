-- Bounces and complaints that arrive as mail: a campaign sends real mail through an SMTP server
-- that keeps it (aiosmtpd); the messages it kept go back inside RFC 3464 delivery status
-- notifications and RFC 5965 feedback reports built from the fixtures in tests/fixtures/mail
-- (structured as the RFCs' examples and a Postfix bounce), read by `herald feedback` from a
-- maildir and posted to the server's /webhooks/mail. The last spec has a private Postfix relay
-- the campaign's mail and write the bounce and delay notices itself.
local h = require 'helpers'
local S = require 'servers'
local json = require 'herald.json'
local feedback = require 'herald.core.feedback'
local task = require 'herald.core.task'

local fixtures = h.root .. '/tests/fixtures/mail/'

local function fixture(name) return assert(h.read(fixtures .. name), name) end

local function fill(text, subs)
  return (text:gsub('@@([%w_]+)@@', function(k) return assert(subs[k], 'no ' .. k) end))
end

local function query(dir, sql) return h.query(dir, 'd.db', sql) end

local function base64(s)
  local dir = h.tmpdir()
  h.write(dir .. '/in', s)
  local out = h.sh('base64 -w 76 ' .. h.shell_quote(dir .. '/in'))
  return out
end

local function header_block(raw) return raw:match('^(.-\r\n)\r\n') end

-- Reports about the mail of a campaign: sends n messages and returns {dir, mail = {address ->
-- {raw, message_id, endpoint_id}}}.
local function sent_campaign(n)
  local store = S.start_mailstore()
  local ok, res = pcall(function()
    local dir = h.tmpdir()
    h.write(dir .. '/c.lua', string.format([[
      for i = 1, %d do
        assert(herald.endpoints.put { Id = 'ep-' .. i, ChannelType = 'EMAIL', Address = 'reader' .. i .. '@example.org' })
      end
      herald.campaign { name = 'spring', segment = herald.segment { name = 'all' },
        message = { subject = 'Spring', body = 'Hello', html = '<p>Hello</p>' }, deliver = 'channels' }
    ]], n))
    h.write(dir .. '/providers.lua', string.format([[
      return { profiles = { mail = { type = 'smtp', url = %q, from = 'News <news@example.com>' } },
               channels = { EMAIL = 'mail' } }
    ]], store.url))
    local _, code, err = h.herald('--db d.db run --until-idle c.lua', { cwd = dir })
    assert.are.equal(0, code, err)
    assert.are.equal(n, store:count())
    local rows = query(dir, 'SELECT endpoint_id, message_id, address FROM outbox')
    local by_id = {}
    for _, r in ipairs(rows) do by_id[r.message_id] = r end
    local mail = {}
    for i = 1, n do
      local raw = store:message(i).raw
      local key = raw:match('\r\nX%-Herald%-Message%-Id: ([^\r\n]+)')
      local row = assert(by_id[key], 'the mail carries no outbox message id')
      assert.matches('Message%-ID: <' .. key:gsub('%p', '%%%0') .. '@example.com>', raw)
      mail[row.address] = { raw = raw, message_id = key, endpoint_id = row.endpoint_id }
    end
    return { dir = dir, mail = mail }
  end)
  store:stop()
  assert(ok, res)
  return res
end

local function hard_bounce(rcpt, original)
  return fill(fixture('dsn_hard.eml'), { RCPT = rcpt, ORIGINAL = original })
end

local function delayed(rcpt, headers)
  local status = fill(fixture('dsn_delayed.status'), { RCPT = rcpt })
  return fill(fixture('dsn_delayed.eml'), { STATUS_BASE64 = base64(status), HEADERS = headers })
end

local function arf(rcpt, kind, original)
  return fill(fixture('arf.eml'), { RCPT = rcpt, TYPE = kind, ORIGINAL = original })
end

-- The original as a mailbox provider that strips headers it does not know (the X- header)
-- quotes it: only the Message-ID is left to match.
local function without_x_header(raw)
  return (raw:gsub('X%-Herald%-Message%-Id: [^\r\n]+\r\n', ''))
end

describe('bounces and complaints by mail', function()
  local f

  setup(function() f = sent_campaign(6) end)

  it('records hard and soft bounces and complaints from a maildir, leaving what it cannot match', function()
    local m1, m2 = f.mail['reader1@example.org'], f.mail['reader2@example.org']
    local m3, m4 = f.mail['reader3@example.org'], f.mail['reader4@example.org']
    local md = f.dir .. '/Maildir'
    assert(os.execute('mkdir -p ' .. md .. '/new ' .. md .. '/cur ' .. md .. '/tmp'))
    local stranger = m1.raw:gsub('Message%-ID: <[^>]+>', 'Message-ID: <not-ours-1@example.com>')
      :gsub('X%-Herald%-Message%-Id: [^\r\n]+\r\n', '')
    local msgs = {
      ['1.hard'] = hard_bounce('reader1@example.org', m1.raw),
      ['2.soft'] = delayed('reader2@example.org', header_block(m2.raw)),
      ['3.abuse'] = arf('reader3@example.org', 'abuse', without_x_header(m3.raw)),
      ['4.notspam'] = arf('reader4@example.org', 'not-spam', m4.raw),
      ['5.stranger'] = hard_bounce('someone@example.org', stranger),
      ['6.autoreply'] = fixture('autoreply.eml'),
    }
    for name, text in pairs(msgs) do h.write(md .. '/new/' .. name, text) end
    local out, code, err = h.herald('--db d.db feedback Maildir', { cwd = f.dir })
    assert.are.equal(1, code, err)
    assert.matches('3 recorded, 1 ignored, 1 unmatched, 1 malformed', err, 1, true)
    local lines = {}
    for line in out:gmatch('[^\n]+') do
      local name, result, detail = line:match('^Maildir/new/(%S+) (%u+) (.*)$')
      lines[name] = { result = result, detail = detail }
    end
    assert.are.equal('RECORDED', lines['1.hard'].result)
    assert.matches('_email.hardbounce endpoint ' .. m1.endpoint_id, lines['1.hard'].detail, 1, true)
    assert.matches('failed 5.1.1 reader1@example.org: 550 5.1.1', lines['1.hard'].detail, 1, true)
    assert.are.equal('RECORDED', lines['2.soft'].result)
    assert.matches('_email.softbounce endpoint ' .. m2.endpoint_id, lines['2.soft'].detail, 1, true)
    assert.are.equal('RECORDED', lines['3.abuse'].result)
    assert.matches('_email.complaint endpoint ' .. m3.endpoint_id, lines['3.abuse'].detail, 1, true)
    assert.are.equal('IGNORED', lines['4.notspam'].result)
    assert.matches('not-spam: not a complaint', lines['4.notspam'].detail, 1, true)
    assert.are.equal('UNMATCHED', lines['5.stranger'].result)
    assert.matches("message not-ours-1: MessageId: no message 'not-ours-1'", lines['5.stranger'].detail, 1, true)
    assert.are.equal('MALFORMED', lines['6.autoreply'].result)
    assert.matches('not a report: Content-Type text/plain, expected multipart/report', lines['6.autoreply'].detail, 1, true)

    -- processed mail moved to cur/ (seen), the rest is still in new/, nothing lost
    assert.are.same({ '5.stranger', '6.autoreply' }, feedback.entries(md .. '/new'))
    assert.are.same({ '1.hard:2,S', '2.soft:2,S', '3.abuse:2,S', '4.notspam:2,S' }, feedback.entries(md .. '/cur'))
    assert.are.equal(msgs['1.hard'], h.read(md .. '/cur/1.hard:2,S'))

    -- the events carry the campaign's ids; the endpoints changed as Pinpoint's would
    -- (the sends themselves are _campaign.send and _email.send events of their own)
    local ev = query(f.dir, "SELECT endpoint_id, event_type, attributes FROM events WHERE event_type LIKE '_email.%'"
      .. " AND event_type <> '_email.send' ORDER BY endpoint_id")
    assert.are.equal(3, #ev)
    local want = { [m1.endpoint_id] = '_email.hardbounce', [m2.endpoint_id] = '_email.softbounce',
                   [m3.endpoint_id] = '_email.complaint' }
    local msg_of = { [m1.endpoint_id] = m1.message_id, [m2.endpoint_id] = m2.message_id, [m3.endpoint_id] = m3.message_id }
    for _, e in ipairs(ev) do
      assert.are.equal(want[e.endpoint_id], e.event_type)
      local a = json.decode(e.attributes)
      assert.are.equal('spring', a.campaign_id)
      assert.are.equal('0', a.treatment_id)
      assert.are.equal(msg_of[e.endpoint_id], a.message_id)
      assert.is_truthy(tonumber(a.campaign_activity_id))
    end
    local eps = query(f.dir, 'SELECT id, endpoint_status AS s, opt_out AS o FROM endpoints ORDER BY id')
    local by = {}
    for _, e in ipairs(eps) do by[e.id] = e end
    assert.are.equal('INACTIVE', by[m1.endpoint_id].s)
    assert.are.equal('ACTIVE', by[m2.endpoint_id].s)
    assert.are.equal('NONE', by[m2.endpoint_id].o)
    assert.are.equal('ALL', by[m3.endpoint_id].o)
    assert.are.equal('NONE', by[m4.endpoint_id].o)

    -- a second pass finds the same two, and the same report again records one event
    local out2, code2 = h.herald('--db d.db feedback --json Maildir ' .. h.shell_quote(md .. '/cur/1.hard:2,S'), { cwd = f.dir })
    assert.are.equal(1, code2)
    local results = {}
    for line in out2:gmatch('[^\n]+') do
      local r = json.decode(line)
      results[#results + 1] = r.result
    end
    assert.are.same({ 'UNMATCHED', 'MALFORMED', 'RECORDED' }, results)
    assert.are.equal(1, query(f.dir, "SELECT count(*) AS n FROM events WHERE event_type = '_email.hardbounce'")[1].n)
  end)

  it('takes reports over HTTP at /v1/apps/APP/webhooks/mail', function()
    local m5, m6 = f.mail['reader5@example.org'], f.mail['reader6@example.org']
    local dir = f.dir
    local srv = h.start_serve(dir, 'd.db')
    local port, pid = srv.port, srv.pid
    local ok, e = pcall(function()
      local reqs = {
        { method = 'POST', path = '/v1/apps/default/webhooks/mail', body = arf('reader5@example.org', 'fraud', m5.raw),
          headers = { ['Content-Type'] = 'message/rfc822' } },
        { method = 'POST', path = '/v1/apps/default/webhooks/mail', body = delayed('reader6@example.org', header_block(m6.raw)) },
        { method = 'POST', path = '/v1/apps/default/webhooks/mail', body = arf('reader6@example.org', 'auth-failure', m6.raw) },
        { method = 'POST', path = '/v1/apps/default/webhooks/mail', body = fixture('autoreply.eml') },
        { method = 'POST', path = '/v1/apps/default/webhooks/mail',
          body = hard_bounce('x@example.org', m5.raw:gsub('X%-Herald%-Message%-Id: [^\r\n]+', 'X-Herald-Message-Id: gone-0001')) },
        { method = 'POST', path = '/v1/apps/nope/webhooks/mail', body = hard_bounce('reader5@example.org', m5.raw) },
      }
      h.write(dir .. '/requests.json', json.encode(reqs))
      local out, code = h.sh('python3 ' .. h.shell_quote(h.root .. '/tests/helpers/http_batch.py') .. ' ' .. port
        .. ' ' .. h.shell_quote(dir .. '/requests.json') .. ' 2>&1')
      assert(code == 0, out)
      local a = json.decode(out)
      assert.are.equal(202, a[1].status, a[1].body)
      assert.are.same({ EventType = '_email.complaint', EndpointId = m5.endpoint_id, MessageId = m5.message_id,
                        Message = 'Accepted' }, json.decode(a[1].body))
      assert.are.equal(202, a[2].status, a[2].body)
      assert.are.equal('_email.softbounce', json.decode(a[2].body).EventType)
      assert.are.equal(200, a[3].status)
      assert.matches('Ignored: Feedback-Type auth-failure', json.decode(a[3].body).Message, 1, true)
      assert.are.equal(400, a[4].status)
      assert.matches('expected multipart/report', json.decode(a[4].body).Message, 1, true)
      assert.are.equal(404, a[5].status)
      assert.matches("no message 'gone-0001'", json.decode(a[5].body).Message, 1, true)
      assert.are.equal(404, a[6].status)
      assert.matches("application 'nope'", json.decode(a[6].body).Message, 1, true)
      assert.are.equal('ALL', query(dir, "SELECT opt_out AS o FROM endpoints WHERE id = '" .. m5.endpoint_id .. "'")[1].o)
    end)
    os.execute('kill ' .. pid .. ' 2>/dev/null')
    assert(ok, e)
  end)

  it('names the part or field that makes a report unusable', function()
    local orig = f.mail['reader1@example.org'].raw
    local good = hard_bounce('reader1@example.org', orig)
    local cases = {
      { good:gsub('report%-type=delivery%-status', 'report-type=disposition-notification'),
        "report-type 'disposition-notification' is not delivery-status or feedback-report" },
      { good:gsub('Content%-Type: message/delivery%-status', 'Content-Type: text/plain'),
        'multipart/report: no message/delivery-status part' },
      { good:gsub('Action: failed\r\n', ''), 'message/delivery-status: no recipient fields with an Action' },
      { good:gsub('Status: 5%.1%.1', 'Status: 9.9'), "Status '9.9' of reader1@example.org is not a status code" },
      { good:gsub('Status: 5%.1%.1', 'Status: 2.0.0'), 'Action failed with the success Status 2.0.0' },
      { arf('reader1@example.org', 'spam', orig), "Feedback-Type 'spam' is not one of" },
      { arf('reader1@example.org', 'abuse', orig):gsub('Feedback%-Type: abuse\r\n', ''),
        'message/feedback-report: no Feedback-Type field' },
      { '', 'not a mail message' },
    }
    for _, c in ipairs(cases) do
      local r, err = feedback.parse(c[1])
      assert.is_nil(r)
      assert.matches(c[2], err, 1, true)
    end
    -- relayed (no outcome yet) and delivered notifications
    local relayed = assert(feedback.parse(good:gsub('Action: failed', 'Action: relayed'):gsub('Status: 5%.1%.1', 'Status: 2.0.0')))
    assert.are.equal('NONE', relayed.kind)
    local delivered = assert(feedback.parse(good:gsub('Action: failed', 'Action: delivered'):gsub('Status: 5%.1%.1', 'Status: 2.0.0')))
    assert.are.equal('DELIVERED', delivered.kind)
    -- a Message-ID whose key needed encoding decodes back to it
    local encoded = assert(feedback.parse(hard_bounce('a@example.org',
      'Message-ID: <run=2F7=3Dx@example.com>\r\nSubject: s\r\n\r\nbody\r\n')))
    assert.are.equal('run/7=x', encoded.message_id)
    assert.are.equal('Message-ID', encoded.matched_by)
    -- no original part: parsed, but matches nothing
    local bare = assert(feedback.parse(hard_bounce('a@example.org', '')
      :gsub('Content%-Type: message/rfc822', 'Content-Type: text/plain')))
    assert.is_nil(bare.message_id)
    assert.are.equal('HARD_BOUNCE', bare.kind)
  end)

  it('records the bounce and the delay notice Postfix writes for a campaign it relayed', function()
    local remote = S.start_mailstore()
    local pf
    local ok, e = pcall(function()
      pf = S.start_postfix { relay_port = remote.port, delay_warning = '1s' }
      local dir = h.tmpdir()
      h.write(dir .. '/c.lua', [[
        for i, a in ipairs({ 'reader1@example.org', 'reject2@example.org', 'tempfail3@example.org' }) do
          assert(herald.endpoints.put { Id = 'pf-' .. i, ChannelType = 'EMAIL', Address = a })
        end
        herald.campaign { name = 'relayed', segment = herald.segment { name = 'all' },
          message = { subject = 'Relayed', body = 'Hello' }, deliver = 'channels' }
      ]])
      h.write(dir .. '/providers.lua', string.format([[
        return { profiles = { mail = { type = 'smtp', url = %q, from = 'News <news@example.com>' } },
                 channels = { EMAIL = 'mail' } }
      ]], pf.url))
      local _, code, err = h.herald('--db d.db run --until-idle c.lua', { cwd = dir })
      assert.are.equal(0, code, err)
      assert.are.equal(3, query(dir, "SELECT count(*) AS n FROM outbox WHERE state = 'SENT'")[1].n)
      -- Postfix relays; the remote server refuses reject2 (550) and defers tempfail3 (451)
      local deadline = os.time() + 30
      while #pf:new_mail() < 2 and os.time() < deadline do task.sleep(200) end
      assert.are.equal(2, #pf:new_mail(), 'Postfix wrote no notices: ' .. tostring(h.read(pf.log)))
      local out, fcode, ferr = h.herald('--db d.db feedback ' .. h.shell_quote(pf.maildir), { cwd = dir })
      assert.are.equal(0, fcode, out .. ferr)
      assert.matches('2 recorded, 0 ignored, 0 unmatched, 0 malformed', ferr, 1, true)
      assert.matches('RECORDED _email.hardbounce endpoint pf%-2 message %S+: failed 5.1.1 reject2@example.org', out)
      assert.matches('RECORDED _email.softbounce endpoint pf%-3 message %S+: delayed 4.%d.%d+ tempfail3@example.org', out)
      assert.are.same({}, pf:new_mail())
      local eps = {}
      for _, r in ipairs(query(dir, 'SELECT id, endpoint_status AS s FROM endpoints')) do eps[r.id] = r.s end
      assert.are.same({ ['pf-1'] = 'ACTIVE', ['pf-2'] = 'INACTIVE', ['pf-3'] = 'ACTIVE' }, eps)
    end)
    if pf then pf:stop() end
    remote:stop()
    assert(ok, e)
  end)
end)

describe('bounces and complaints of direct mail', function()
  it('reach the endpoint a `herald send` mail went to, or the endpoint with its address', function()
    local store = S.start_mailstore()
    local ok, e = pcall(function()
      local dir = h.tmpdir()
      h.write(dir .. '/providers.lua', string.format([[
        return { profiles = { mail = { type = 'smtp', url = %q, from = 'News <news@example.com>' } },
                 channels = { EMAIL = 'mail' } }
      ]], store.url))
      local _, c0, e0 = h.herald([[--db d.db -e "assert(herald.endpoints.put{ Id='d-1', ChannelType='EMAIL', Address='reader@example.org' })
        assert(herald.endpoints.put{ Id='d-2', ChannelType='EMAIL', Address='other@example.org' })"]], { cwd = dir })
      assert.are.equal(0, c0, e0)
      local out1, c1, e1 = h.herald('--db d.db send --endpoint d-1 --title Hi --body Hello', { cwd = dir })
      assert.are.equal(0, c1, e1)
      local out2, c2, e2 = h.herald('--db d.db send --channel EMAIL --to other@example.org --title Hi --body Hello', { cwd = dir })
      assert.are.equal(0, c2, e2)
      local mid1 = json.decode(out1).EndpointResult['d-1'].MessageId
      local mid2 = json.decode(out2).Result['other@example.org'].MessageId
      assert.are.equal(2, store:count())
      local raw = {}
      for i = 1, 2 do
        local r = store:message(i).raw
        raw[r:match('\r\nX%-Herald%-Message%-Id: ([^\r\n]+)')] = r
      end
      h.write(dir .. '/1.hard', hard_bounce('reader@example.org', raw[mid1]))
      h.write(dir .. '/2.abuse', arf('other@example.org', 'abuse', without_x_header(raw[mid2])))
      local out, code, err = h.herald('--db d.db feedback 1.hard 2.abuse', { cwd = dir })
      assert.are.equal(0, code, out .. err)
      assert.matches('RECORDED _email.hardbounce endpoint d%-1 message ' .. mid1:gsub('%p', '%%%0'), out)
      assert.matches('RECORDED _email.complaint endpoint d%-2 message ' .. mid2:gsub('%p', '%%%0'), out)
      local eps = {}
      for _, r in ipairs(query(dir, 'SELECT id, endpoint_status AS s, opt_out AS o FROM endpoints')) do eps[r.id] = r.s .. ' ' .. r.o end
      assert.are.same({ ['d-1'] = 'INACTIVE NONE', ['d-2'] = 'ACTIVE ALL' }, eps)
      local ev = query(dir, "SELECT endpoint_id, attributes FROM events WHERE event_type IN ('_email.hardbounce', '_email.complaint')"
        .. ' ORDER BY endpoint_id')
      assert.are.same({ mid1, mid2 }, { json.decode(ev[1].attributes).message_id, json.decode(ev[2].attributes).message_id })

      -- a complaint of a mail to an address no endpoint has puts the address on the opt-out list
      local out3, c3, e3 = h.herald('--db d.db send --channel EMAIL --to nobody@example.org --title Hi --body Hello', { cwd = dir })
      assert.are.equal(0, c3, e3)
      local mid3 = json.decode(out3).Result['nobody@example.org'].MessageId
      local r3 = store:message(3).raw
      assert.are.equal(mid3, r3:match('\r\nX%-Herald%-Message%-Id: ([^\r\n]+)'))
      h.write(dir .. '/3.abuse', arf('nobody@example.org', 'abuse', r3))
      out, code, err = h.herald('--db d.db feedback 3.abuse', { cwd = dir })
      assert.are.equal(0, code, out .. err)
      assert.matches('RECORDED _email.complaint address on the opt-out list message ' .. mid3, out, 1, true)
      -- (other@example.org's complaint above was of a mail sent --to the address: listed too)
      local listed = query(dir, 'SELECT channel, address, source FROM address_optouts ORDER BY address')
      assert.are.same({ { channel = 'EMAIL', address = 'nobody@example.org', source = '_email.complaint' },
                        { channel = 'EMAIL', address = 'other@example.org', source = '_email.complaint' } }, listed)
      -- posted to the server again: accepted (recorded once), no EndpointId where there is none
      local srv = h.start_serve(dir, 'd.db')
      local port, pid = srv.port, srv.pid
      h.write(dir .. '/requests.json', json.encode({ { method = 'POST', path = '/v1/apps/default/webhooks/mail',
        body = arf('nobody@example.org', 'abuse', r3) } }))
      local answers, hc = h.sh('python3 ' .. h.shell_quote(h.root .. '/tests/helpers/http_batch.py') .. ' ' .. port
        .. ' ' .. h.shell_quote(dir .. '/requests.json') .. ' 2>&1')
      os.execute('kill ' .. pid)
      assert.are.equal(0, hc, answers)
      local a = json.decode(answers)[1]
      assert.are.equal(202, a.status, a.body)
      assert.are.same({ EventType = '_email.complaint', MessageId = mid3, Message = 'Accepted' }, json.decode(a.body))
    end)
    store:stop()
    assert(ok, e)
  end)
end)

describe('bounces of mail sent to a file', function()
  -- A campaign that wrote its mail to a file: a report quotes the X-Herald-Message-Id header
  -- alone. Returns the directory and the message id per endpoint.
  local function file_campaign()
    return h.file_campaign('d.db', { { 'e1', 'ann@example.com' }, { 'e2', 'bob@example.com' } })
  end

  local function bounce_of(rcpt, message_id)
    return hard_bounce(rcpt, 'X-Herald-Message-Id: ' .. message_id .. '\r\nSubject: Hi\r\n\r\nb\r\n')
  end

  local function status(dir, id)
    return query(dir, "SELECT endpoint_status AS s FROM endpoints WHERE id = '" .. id .. "'")[1].s
  end

  local function hardbounces(dir)
    return query(dir, "SELECT count(*) AS n FROM events WHERE event_type = '_email.hardbounce'")[1].n
  end

  -- Runs the python3 script with the store held by another writer (BEGIN IMMEDIATE, released
  -- when the script ends unless it did: lock.execute('ROLLBACK')); EXE is herald. The script's
  -- lines "name\tvalue" come back as a table.
  local function while_held(dir, script)
    h.write(dir .. '/held.py', [[
import json, os, sqlite3, subprocess, sys
lock = sqlite3.connect(os.path.join(sys.argv[1], 'd.db'), isolation_level=None, timeout=5)
lock.execute('BEGIN IMMEDIATE')
EXE = sys.argv[2]
]] .. script .. [[

if lock.in_transaction: lock.execute('ROLLBACK')
]])
    local out, code = h.sh('cd ' .. h.shell_quote(dir) .. ' && python3 held.py ' .. h.shell_quote(dir) .. ' '
      .. h.shell_quote(h.exe) .. ' 2>&1')
    assert.are.equal(0, code, out)
    local kv = {}
    for k, v in out:gmatch('([%w_]+)\t([^\n]*)') do kv[k] = v end
    return kv
  end

  it("a report read again changes nothing the endpoint's owner changed since", function()
    local dir, mid = file_campaign()
    h.write(dir .. '/1.hard', bounce_of('ann@example.com', mid.e1))
    local out, code, err = h.herald('--db d.db feedback 1.hard', { cwd = dir })
    assert.are.equal(0, code, out .. err)
    assert.are.equal('INACTIVE', status(dir, 'e1'))
    -- the address corrected, then the same report read again
    local _, c1, e1 = h.herald([[--db d.db -e "assert(herald.endpoints.put{ Id='e1', ChannelType='EMAIL', Address='ann2@example.com' })"]],
      { cwd = dir })
    assert.are.equal(0, c1, e1)
    assert.are.equal('ACTIVE', status(dir, 'e1'))
    out, code, err = h.herald('--db d.db feedback 1.hard', { cwd = dir })
    assert.are.equal(0, code, out .. err)
    assert.are.equal('ACTIVE', status(dir, 'e1'))
    -- a first bounce of an address the endpoint no longer has
    local _, c2, e2 = h.herald([[--db d.db -e "assert(herald.endpoints.put{ Id='e2', ChannelType='EMAIL', Address='bob2@example.com' })"]],
      { cwd = dir })
    assert.are.equal(0, c2, e2)
    h.write(dir .. '/2.hard', bounce_of('bob@example.com', mid.e2))
    out, code, err = h.herald('--db d.db feedback 2.hard', { cwd = dir })
    assert.are.equal(0, code, out .. err)
    assert.matches('2.hard RECORDED _email.hardbounce endpoint e2', out, 1, true)
    assert.are.equal('ACTIVE', status(dir, 'e2'))
    assert.are.equal(2, hardbounces(dir))
  end)

  it('keeps the mail and exits 75 while another process holds the store, and records it the next time', function()
    local dir, mid = file_campaign()
    local md = dir .. '/Maildir'
    assert(os.execute('mkdir -p ' .. md .. '/new ' .. md .. '/cur ' .. md .. '/tmp'))
    h.write(md .. '/new/1.hard', bounce_of('ann@example.com', mid.e1))
    h.write(md .. '/new/2.hard', bounce_of('bob@example.com', mid.e2))
    local kv = while_held(dir, [[
p = subprocess.run([EXE, '--db', 'd.db', 'feedback', 'Maildir'], capture_output=True, text=True,
                   env=dict(os.environ, HERALD_BUSY_TIMEOUT_MS='200'))
print('rc\t%d' % p.returncode)
print('out\t' + json.dumps(p.stdout))
print('err\t' + json.dumps(p.stderr))
]])
    local out, err = json.decode(kv.out), json.decode(kv.err)
    assert.are.equal('75', kv.rc, out .. err)
    -- one line for the mail it met; it read no further
    assert.matches('^Maildir/new/1%.hard BUSY the store is busy %(.*database is locked.*%): nothing recorded, the mail stays\n$', out)
    assert.matches('0 recorded, 0 ignored, 0 unmatched, 0 malformed\n', err, 1, true)
    assert.matches('herald feedback: stopped: the store is busy', err, 1, true)
    assert.is_nil(err:find('traceback', 1, true))
    assert.are.same({ '1.hard', '2.hard' }, feedback.entries(md .. '/new'))
    assert.are.equal(0, hardbounces(dir))
    -- the store free again, the same run records both
    local out2, code2, err2 = h.herald('--db d.db feedback Maildir', { cwd = dir })
    assert.are.equal(0, code2, out2 .. err2)
    assert.are.same({}, feedback.entries(md .. '/new'))
    assert.are.equal(2, hardbounces(dir))
  end)

  it('answers a report posted while another process holds the store 503 with Retry-After', function()
    local dir, mid = file_campaign()
    h.write(dir .. '/1.hard', bounce_of('ann@example.com', mid.e1))
    local srv = h.start_serve(dir, 'd.db', 'HERALD_BUSY_TIMEOUT_MS=200')
    local ok, kv = pcall(while_held, dir, string.format([[
import http.client
body = open('1.hard', 'rb').read()
def post():
    c = http.client.HTTPConnection('127.0.0.1', %d, timeout=10)
    c.request('POST', '/v1/apps/default/webhooks/mail', body=body)
    r = c.getresponse()
    msg = json.loads(r.read())['Message']
    return '%%d|%%s|%%s' %% (r.status, r.headers.get('Retry-After'), 'database is locked' in msg)
print('held\t' + post())
lock.execute('ROLLBACK')
print('free\t' + post())
]], srv.port))
    os.execute('kill ' .. srv.pid)
    assert(ok, kv)
    assert.are.equal('503|1|True', kv.held)
    assert.are.equal('202|None|False', kv.free)
    assert.are.equal('INACTIVE', status(dir, 'e1'))
    assert.are.equal(1, hardbounces(dir))
  end)
end)
