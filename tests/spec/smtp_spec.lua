-- Email through the transport engine: the MIME a real SMTP server receives (read back with
-- Python's email package), SMTP reply classes, connection reuse, and bad input.
local S = require 'servers'
local http = require 'herald.http'

local here = debug.getinfo(1, 'S').source:match('^@(.*)/[^/]*$') or '.'
local mimecheck = here .. '/../helpers/mimecheck.py'

local function parse(path)
  local p = assert(io.popen("/usr/bin/python3 '" .. mimecheck .. "' '" .. path .. "'"))
  local fields = {}
  for line in p:lines() do
    local k, hex = line:match('^([^=]+)=(%x*)$')
    if k then fields[k] = hex:gsub('%x%x', function(x) return string.char(tonumber(x, 16)) end) end
  end
  p:close()
  return fields
end

local SUBJECT = 'Grüße aus Zürich — ваш заказ готов, and a long tail to make it fold over lines'
local TEXT = 'Hallo Zoë,\n.a line that starts with a dot\n' .. string.rep('long line ', 30)
  .. '\ntrailing spaces   \n= equals =\n'
local HTML = '<p>Hallo <b>Zoë</b> — <a href="https://example.com/?a=1&b=2">link</a></p>\n'

-- with(k, v): a copy of the send_mail request base with field k set to v.
local function mail_with(base)
  return function(k, v)
    local t = {}
    for key, val in pairs(base) do t[key] = val end
    t[k] = v
    return t
  end
end

-- That a channel's outcome o failed for good and alone (the message's own fault, not the
-- profile's: no pause), for a reason holding text (plain), or matching pattern when plain is false.
local function fails_alone(o, text, plain)
  assert.are.equal('permanent', o.verdict, o.reason)
  assert.is_false(o.systemic)
  assert.matches(text, o.reason, 1, plain ~= false)
end

describe('herald.http.send_mail', function()
  local store, sink

  setup(function()
    store = S.start_mailstore()
    sink = S.start_smtp_sink()
  end)
  teardown(function()
    if store then store:stop() end
    if sink then sink:stop() end
  end)

  it('sends a multipart/alternative message with the headers a campaign needs', function()
    local res, err = http.send_mail {
      url = store.url, from = 'Zoë from Herald <news@herald.example>',
      to = { 'Ann Example <ann@example.org>' }, subject = SUBJECT, text = TEXT, html = HTML,
      message_id = 'run-7/endpoint-42', headers = { ['X-Campaign'] = 'spring sale' },
      list_unsubscribe = { 'https://herald.example/u?t=abc', 'mailto:unsub@herald.example' },
      one_click = true,
    }
    assert.is_nil(err)
    assert.are.equal(250, res.status)
    assert.are.equal('<run-7/endpoint-42@herald.example>', res.message_id)
    local n = store:count()
    local msg = assert(store:message(n))
    assert.matches('"mail_from": "news@herald.example"', msg.envelope, 1, true)
    assert.matches('"rcpt_tos": ["ann@example.org"]', msg.envelope, 1, true)
    local f = parse(store.dir .. '/mail/' .. n .. '.eml')
    assert.are.equal('0', f.defects)
    assert.are.equal(SUBJECT, f.subject)
    assert.are.equal('Zoë from Herald <news@herald.example>', f.from)
    assert.are.equal('Ann Example <ann@example.org>', f.to)
    assert.are.equal('<run-7/endpoint-42@herald.example>', f['message-id'])
    assert.are.equal('<https://herald.example/u?t=abc>, <mailto:unsub@herald.example>',
      f['list-unsubscribe'])
    assert.are.equal('List-Unsubscribe=One-Click', f['list-unsubscribe-post'])
    assert.are.equal('spring sale', f['x-campaign'])
    assert.are.equal('1.0', f['mime-version'])
    assert.is_string(f.date)
    assert.are.equal('multipart/alternative', f['content-type'])
    assert.are.equal('2', f.parts)
    assert.are.equal('text/plain', f['part1-type'])
    assert.are.equal('utf-8', f['part1-charset'])
    assert.are.equal('0', f['part1-defects'])
    assert.are.equal((TEXT:gsub('\n', '\n')), f['part1-body'])
    assert.are.equal('text/html', f['part2-type'])
    assert.are.equal(HTML, f['part2-body'])
    -- every line of the raw message stays within the RFC's limits
    for line in msg.raw:gmatch('[^\n]*') do assert.is_true(#line <= 78, line) end
  end)

  it('sends List-Unsubscribe-Post only with an https: URI to post to (RFC 8058)', function()
    local function headers(unsub, key)
      assert(http.send_mail { url = store.url, from = 'a@herald.example', to = 'b@example.org', text = 'x',
                              message_id = key, list_unsubscribe = unsub, one_click = true })
      return parse(store.dir .. '/mail/' .. store:count() .. '.eml')
    end
    local f = headers('mailto:unsub@herald.example', 'oc-1')
    assert.are.equal('<mailto:unsub@herald.example>', f['list-unsubscribe'])
    assert.is_nil(f['list-unsubscribe-post'])
    f = headers('<http://herald.example/u>, <mailto:u@herald.example?subject=https:>', 'oc-2')
    assert.is_nil(f['list-unsubscribe-post'])
    f = headers({ 'mailto:unsub@herald.example', 'HTTPS://herald.example/u?t=1' }, 'oc-3')
    assert.are.equal('List-Unsubscribe=One-Click', f['list-unsubscribe-post'])
  end)

  it('sends a text-only message as a single part', function()
    local res = assert(http.send_mail { url = store.url, from = 'a@herald.example',
                                        to = 'b@example.org', subject = 'plain', text = 'just text',
                                        message_id = 'plain-1' })
    assert.are.equal(250, res.status)
    local f = parse(store.dir .. '/mail/' .. store:count() .. '.eml')
    assert.are.equal('text/plain', f['content-type'])
    assert.are.equal('just text\n', f['part1-body'])
    assert.is_nil(f['list-unsubscribe'])
  end)

  it('takes numbers for text fields', function()
    local res = assert(http.send_mail { url = store.url, from = 'a@herald.example', to = 'b@example.org',
                                        subject = 2027, text = 12.5, message_id = 42,
                                        headers = { ['X-Offer'] = 3 } })
    assert.are.equal('<42@herald.example>', res.message_id)
    local f = parse(store.dir .. '/mail/' .. store:count() .. '.eml')
    assert.are.equal('2027', f.subject)
    assert.are.equal('3', f['x-offer'])
    assert.are.equal('12.5\n', f['part1-body'])
  end)

  it('shows a subject that looks like an encoded word as it was written', function()
    -- Mail readers decode "=?charset?B?...?=" wherever it appears in a subject, so text that
    -- merely quotes one has to be encoded itself to reach the reader unchanged.
    local subject = 'Use code =?UTF-8?B?SGk=?= at checkout'
    assert(http.send_mail { url = store.url, from = 'a@herald.example', to = 'b@example.org',
                            subject = subject, text = 'x', message_id = 'ew-1',
                            headers = { ['X-Offer'] = 'literal =?utf-8?q?x?=' } })
    local n = store:count()
    local f = parse(store.dir .. '/mail/' .. n .. '.eml')
    assert.are.equal('0', f.defects)
    assert.are.equal(subject, f.subject)
    assert.are.equal('literal =?utf-8?q?x?=', f['x-offer'])
    assert.is_nil(store:message(n).raw:find('=?UTF-8?B?SGk=?=', 1, true))
  end)

  it('sends a subject with line breaks and control characters on one line', function()
    -- a rendered subject (an endpoint's attribute in it) must not end the header early, nor
    -- add one of its own
    local res = assert(http.send_mail { url = store.url, from = 'a@herald.example', to = 'b@example.org',
                                        subject = 'Hi Ann\r\nBcc: victim@evil.test\n\tand\1 Zoë',
                                        text = 'x', message_id = 'fold-1' })
    assert.are.equal(250, res.status)
    local n = store:count()
    local msg = store:message(n)
    local head = msg.raw:match('^(.-)\r\n\r\n')
    assert.is_nil(head:find('\r\nBcc:', 1, true), head)
    assert.matches('"rcpt_tos": ["b@example.org"]', msg.envelope, 1, true)
    local f = parse(store.dir .. '/mail/' .. n .. '.eml')
    assert.are.equal('0', f.defects)
    assert.are.equal('Hi Ann Bcc: victim@evil.test  and  Zoë', f.subject)
  end)

  it('folds a long ASCII subject and header at white space, and encodes a subject word too long for a line', function()
    local words = {}
    for i = 1, 160 do words[i] = 'w' .. i end
    local long = table.concat(words, ' ')           -- about 700 characters
    local subject = long .. '  ' .. long            -- over 1,100, two spaces in the middle
    local token = string.rep('x', 1100)             -- no white space to fold at
    for i, c in ipairs { { subject, long }, { 'Code ' .. token, 'short' } } do
      assert(http.send_mail { url = store.url, from = 'a@herald.example', to = 'b@example.org', text = 'x',
                              message_id = 'long-' .. i, subject = c[1], headers = { ['X-Offer'] = c[2] } })
      local n = store:count()
      local f = parse(store.dir .. '/mail/' .. n .. '.eml')
      assert.are.equal('0', f.defects)
      assert.are.equal(c[1], f.subject)
      assert.are.equal(c[2], f['x-offer'])
      local head = store:message(n).raw:match('^(.-)\r\n\r\n')
      for line in (head .. '\r\n'):gmatch('(.-)\r\n') do assert.is_true(#line <= 78, line) end
    end
    -- the ASCII subject is folded, not encoded: unfolding gives it back
    local head = store:message(store:count() - 1).raw:match('^(.-)\r\n\r\n')
    local folded = head:match('\r\nSubject: (.-)\r\n%S')
    assert.is_nil(folded:find('=?', 1, true))
    assert.are.equal(subject, (folded:gsub('\r\n', '')))
    -- a header of the caller's may be structured: a word too long for a line is refused
    local res, err, class = http.send_mail { url = store.url, from = 'a@herald.example', to = 'b@example.org',
                                             text = 'x', message_id = 'long-3', headers = { ['X-Offer'] = token } }
    assert.is_nil(res)
    assert.are.equal('invalid', class)
    assert.matches("headers['X-Offer']: a header line is longer than 998 characters", err, 1, true)
  end)

  it('encodes only the names in an address header, as in From', function()
    local res = assert(http.send_mail { url = store.url, from = 'a@herald.example', to = 'b@example.org',
                                        text = 'x', message_id = 'reply-1',
                                        headers = { ['Reply-To'] = 'Zoë Support <support@example.com>' } })
    assert.are.equal(250, res.status)
    local raw = store:message(store:count()).raw
    assert.matches('\r\nReply%-To: =%?UTF%-8%?B%?[^?]+%?= <support@example%.com>\r\n', raw)
    -- the channel tells its profile's headers from the message's own: a message whose own
    -- header cannot be sent fails alone, the profile's counts as systemic
    local smtp = require 'herald.channels.smtp'
    local ch = smtp.new { name = 'm', url = store.url, from = 'a@herald.example',
                          headers = { ['Sender'] = 'Zoë <zoë@example.com>' } }
    local out = ch:send { { address = 'b@example.org', body = 'x', title = 's', key = 'reply-2' },
                          { address = 'b@example.org', body = 'x', title = 's', key = 'reply-3', headers = {
                            Sender = 'Ann <ann@example.com>', ['Reply-To'] = 'Zoë <zoë@example.com>' } } }
    assert.are.equal('permanent', out[1].verdict)
    assert.is_true(out[1].systemic)
    assert.matches("headers['Sender']: 'zoë@example.com': a non-ASCII address", out[1].reason, 1, true)
    fails_alone(out[2], "headers['Reply-To']")
  end)

  it('takes the quoted-pairs of a quoted display name for what they stand for, escaping them once', function()
    local cases = {
      { '"A \\"Q\\" B" <news@herald.example>', 'A "Q" B', '\r\nFrom: "A \\"Q\\" B" <news@herald.example>\r\n' },
      { '"C:\\\\dir \\x" <news@herald.example>', 'C:\\dir x', '\r\nFrom: "C:\\\\dir x" <news@herald.example>\r\n' },
      -- a non-ASCII name is one encoded word of the name itself, no backslash in it
      { '"Zoë \\"Q\\"" <news@herald.example>', 'Zoë "Q"', '\r\nFrom: =?UTF-8?B?Wm/DqyAiUSI=?= <news@herald.example>\r\n' },
    }
    for i, c in ipairs(cases) do
      assert(http.send_mail { url = store.url, from = c[1], to = 'b@example.org', text = 'x', message_id = 'qp-' .. i })
      local n = store:count()
      local f = parse(store.dir .. '/mail/' .. n .. '.eml')
      assert.are.equal('0', f.defects)
      assert.are.equal(c[2], f['from-name'])
      assert.matches(c[3], store:message(n).raw, 1, true)
    end
  end)

  it('keeps the Message-ID of a retried message', function()
    local a = assert(http.send_mail { url = store.url, from = 'a@herald.example', to = 'b@example.org',
                                      text = 'x', message_id = 'same key' })
    local b = assert(http.send_mail { url = store.url, from = 'a@herald.example', to = 'b@example.org',
                                      text = 'x', message_id = 'same key' })
    assert.are.equal(a.message_id, b.message_id)
    assert.are.equal('<same=20key@herald.example>', a.message_id)
  end)

  it('classifies SMTP refusals: 5xx permanent, 4xx transient', function()
    local res, err, class, code = http.send_mail { url = store.url, from = 'a@herald.example',
                                                   to = 'reject@example.org', text = 'x', message_id = 'r1' }
    assert.is_nil(res)
    assert.are.equal('status', class)
    assert.are.equal(550, code)
    assert.matches('550', err)
    assert.are.equal('permanent', http.verdict(class, code, true))
    res, err, class, code = http.send_mail { url = store.url, from = 'a@herald.example',
                                             to = 'tempfail@example.org', text = 'x', message_id = 't1' }
    assert.is_nil(res)
    assert.are.equal('status', class)
    assert.are.equal(451, code)
    assert.are.equal('transient', http.verdict(class, code, true))
  end)

  it('keeps the server\'s words with a refusal', function()
    local res, err, _, code = http.send_mail { url = store.url, from = 'a@herald.example',
                                               to = 'reject@example.org', text = 'x', message_id = 'why-1' }
    assert.is_nil(res)
    assert.are.equal(550, code)
    assert.matches('RCPT failed: 550', err, 1, true)
    assert.matches('5.1.1 no such user', err, 1, true)
    res, err, _, code = http.send_mail { url = store.url, from = 'blocked@herald.example',
                                         to = 'b@example.org', text = 'x', message_id = 'why-2' }
    assert.is_nil(res)
    assert.are.equal(550, code)
    assert.matches('^MAIL failed: 550', err)
    assert.matches('5.7.1 sender rejected by policy', err, 1, true)
    -- the reason the channel gives delivery to record, still a hard bounce at RCPT
    local smtp = require 'herald.channels.smtp'
    local out = smtp.new { name = 'store', url = store.url, from = 'a@herald.example' }:send {
      { address = 'reject@example.org', body = 'x', title = 's', key = 'why-3' } }
    assert.are.equal('permanent', out[1].verdict)
    assert.are.equal('HARD_BOUNCE', out[1].feedback)
    assert.matches('5.1.1 no such user', out[1].reason, 1, true)
  end)

  it('takes only a refusal of the mailbox at RCPT for a hard bounce, not one on policy', function()
    local smtp = require 'herald.channels.smtp'
    local ch = smtp.new { name = 'store', url = store.url, from = 'a@herald.example' }
    local addrs = { 'reject@example.org', 'plainnouser.relay.sender@example.org', 'relaydenied@example.org',
                    'senderpolicy@example.org', 'sysfull@example.org', 'plainrelay@example.org',
                    'exonouser@example.org' }
    local msgs = {}
    for i, a in ipairs(addrs) do msgs[i] = { address = a, body = 'x', title = 's', key = 'policy-' .. i } end
    local out = ch:send(msgs)
    local got = {}
    for i, o in ipairs(out) do
      got[i] = { o.verdict, o.feedback or 'none', o.systemic and 'systemic' or 'own', o.reason:match('%(server: (%d+ %S*)') }
    end
    assert.are.same({
      -- 5.1.1 and a plain 550 naming the mailbox (the words of the address it quotes aside)
      { 'permanent', 'HARD_BOUNCE', 'own', '550 5.1.1' },
      { 'permanent', 'HARD_BOUNCE', 'own', '550 <plainnouser.relay.sender@example.org>:' },
      -- 5.7.1 (relaying, Postfix's sender checks at RCPT), 5.3.x, and a plain 550 naming
      -- relaying: every recipient would meet them, none is bounced
      { 'permanent', 'none', 'systemic', '550 5.7.1' },
      { 'permanent', 'none', 'systemic', '553 5.7.1' },
      { 'permanent', 'none', 'systemic', '550 5.3.4' },
      { 'permanent', 'none', 'systemic', '550 relaying' },
      -- Exchange Online's answer for an address it does not know (5.4.x: routing to the
      -- recipient) is the recipient's
      { 'permanent', 'HARD_BOUNCE', 'own', '550 5.4.1' },
    }, got)
  end)

  it('reuses the SMTP connection across messages', function()
    local before = http.stats().connections
    for i = 1, 25 do
      local res, err = http.send_mail { url = sink.url, from = 'a@herald.example', to = 'b@example.org',
                                        subject = 'n' .. i, text = 'body ' .. i, message_id = 'reuse-' .. i }
      assert.is_nil(err)
      assert.are.equal(250, res.status)
    end
    assert.are.equal(1, http.stats().connections - before)
  end)

  it('sends concurrently from several tasks', function()
    local done, failures = 0, 0
    for t = 1, 5 do
      herald.spawn(function()
        for i = 1, 10 do
          local res = http.send_mail { url = sink.url, from = 'a@herald.example', to = 'b@example.org',
                                       text = 'x', message_id = 'c' .. t .. '-' .. i }
          if res then done = done + 1 else failures = failures + 1 end
        end
      end)
    end
    while done + failures < 50 do herald.sleep(20) end
    assert.are.equal(50, done)
  end)

  it('keeps mails that share a limit to its count of sessions', function()
    local function send_all(limit)
      local own = S.start_smtp_sink()   -- a fresh server: every connection counted is opened here
      local before = http.stats().connections
      local done, failures = 0, 0
      for t = 1, 8 do
        herald.spawn(function()
          for i = 1, 5 do
            local res = http.send_mail { url = own.url, from = 'a@herald.example', to = 'b@example.org',
                                         text = 'x', message_id = 'lim' .. t .. '-' .. i, limit = limit }
            if res then done = done + 1 else failures = failures + 1 end
          end
        end)
      end
      while done + failures < 40 do herald.sleep(10) end
      own:stop()
      assert.are.equal(40, done)
      return http.stats().connections - before
    end
    assert.is_true(send_all(nil) > 2)
    local opened = send_all(http.limit(2))
    assert.is_true(opened >= 1 and opened <= 2, opened .. ' connections')
  end)

  it("gives back a mail waiting for one of its limit's sessions when its gate closes", function()
    local slow = S.start_smtp_sink { data_delay = 2 }
    local ok, err = pcall(function()
      local limit, gate = http.limit(1), http.gate()
      local results = {}
      -- the first holds the limit's one session for 2 s; the second waits behind the gate
      for i = 1, 2 do
        herald.spawn(function()
          results[i] = table.pack(http.send_mail { url = slow.url, from = 'a@herald.example', to = 'b@example.org',
                                                  text = 'x', message_id = 'gate' .. i, limit = limit,
                                                  gate = i == 2 and gate or nil })
        end)
      end
      herald.sleep(300)
      gate:close()
      for _ = 1, 50 do
        if results[2] then break end
        herald.sleep(20)
      end
      -- the second mail came back unsent while the first is still on the wire
      assert.is_table(results[2])
      assert.is_nil(results[1])
      assert.is_nil(results[2][1])
      assert.are.equal('recalled', results[2][3])
      assert.matches('not sent', results[2][2])
      for _ = 1, 200 do
        if results[1] then break end
        herald.sleep(20)
      end
      assert.is_table(results[1] and results[1][1])
      -- one sent behind the closed gate never goes out
      local res, _, class = http.send_mail { url = slow.url, from = 'a@herald.example', to = 'b@example.org',
                                             text = 'x', message_id = 'gate3', limit = limit, gate = gate }
      assert.is_nil(res)
      assert.are.equal('recalled', class)
    end)
    slow:stop()
    assert(ok, err)
  end)

  it('classifies a refused connection', function()
    local res, _, class = http.send_mail { url = 'smtp://127.0.0.1:' .. S.free_port(),
                                           from = 'a@herald.example', to = 'b@example.org',
                                           text = 'x', message_id = 'x1' }
    assert.is_nil(res)
    assert.are.equal('connect', class)
  end)

  it('fails STARTTLS when required and not offered', function()
    local res, _, class = http.send_mail { url = store.url, from = 'a@herald.example',
                                           to = 'b@example.org', text = 'x', message_id = 'tls1',
                                           starttls = 'required' }
    assert.is_nil(res)
    assert.are.equal('tls', class)
  end)

  it('does not send a mail that requires STARTTLS over a session another mail opened without it', function()
    -- the first mail only tries STARTTLS, which this server does not offer: its session stays
    -- plain text, open in the pool
    assert(http.send_mail { url = store.url, from = 'a@herald.example', to = 'b@example.org', text = 'x',
                            message_id = 'plain-before-tls' })
    local n = store:count()
    local res, err, class = http.send_mail { url = store.url, from = 'a@herald.example',
                                             to = 'b@example.org', text = 'secret', message_id = 'tls2',
                                             starttls = 'required' }
    assert.is_nil(res)
    assert.are.equal('tls', class)
    assert.matches('STARTTLS', err, 1, true)
    assert.are.equal(n, store:count())
  end)

  it('sends a message of many upload buffers intact, its lines that start with a dot included', function()
    -- Some 160 KB of lines that each start with a dot, one of them a lone dot (the end of data
    -- unless stuffed): whatever the size of libcurl's upload buffer, its boundaries fall next
    -- to a line start, where the stuffing has to carry across two reads.
    local lines = {}
    for i = 1, 30000 do lines[i] = (i % 3 == 0) and '.' or (i % 3 == 1 and '..' or '.x' .. i) end
    local text = table.concat(lines, '\n') .. '\n'
    local res, err = http.send_mail { url = store.url, from = 'a@herald.example', to = 'b@example.org',
                                      subject = 'dots', text = text, message_id = 'dots-1' }
    assert.is_nil(err)
    assert.are.equal(250, res.status)
    local n = store:count()
    local msg = assert(store:message(n))
    assert.is_true(#msg.raw > 2 * 65536, 'the message spans several upload buffers')
    assert.matches('\n%.\r?\n', msg.raw)   -- a lone dot reached the server as a line of its own
    local f = parse(store.dir .. '/mail/' .. n .. '.eml')
    assert.are.equal('0', f.defects)
    assert.are.equal(text, f['part1-body'])
  end)

  it('returns bad message data as invalid, naming the field', function()
    local with = mail_with { url = store.url, from = 'a@herald.example', to = 'b@example.org', text = 'x',
                             message_id = 'bad' }
    local cases = {
      { with('to', 'not an address'), "to[1]: 'not an address' is not an address" },
      { with('from', 'Ann <ann@>'), "from: 'ann@' is not an address" },
      { with('to', 'Zoë <zoë@example.org>'), "to[1]: 'zoë@example.org': a non-ASCII address needs SMTPUTF8" },
      { with('headers', { ['X-A'] = 'a\nBcc: x@y' }), "headers['X-A']: value missing or has a line break" },
      { with('headers', { Subject = 'again' }), "headers['Subject']: set by the message itself" },
      { with('text', nil), 'text or html: a message needs a body' },
    }
    for _, c in ipairs(cases) do
      local res, err, class = http.send_mail(c[1])
      assert.is_nil(res)
      assert.are.equal('invalid', class)
      assert.matches(c[2], err, 1, true)
    end
    assert.has_error(function() http.send_mail { url = store.url } end, "field 'from' is required")
    assert.has_error(function() http.send_mail(with('starttls', 'maybe')) end,
      "field 'starttls': expected 'no', 'try' or 'required', got 'maybe'")
  end)

  it('refuses an address with a second @, an empty domain label or a misplaced dot in its local part', function()
    local with = mail_with { url = store.url, from = 'a@herald.example', to = 'b@example.org', text = 'x',
                             message_id = 'addr' }
    local before = store:count()
    for _, c in ipairs {
      { 'to', 'ab@cd@example.com', "to[1]: 'ab@cd@example.com' is not an address (user@domain)" },
      { 'to', 'Ann <a@b@c>', "to[1]: 'a@b@c' is not an address (user@domain)" },
      { 'to', 'a@.example.com', "to[1]: 'a@.example.com' is not an address (user@domain)" },
      { 'to', 'a@example..com', "to[1]: 'a@example..com' is not an address (user@domain)" },
      -- a fully qualified name in DNS, but no Domain of RFC 5321
      { 'to', 'a@example.com.', "to[1]: 'a@example.com.' is not an address (user@domain)" },
      { 'to', '.ann@example.com', "to[1]: '.ann@example.com' is not an address (user@domain)" },
      { 'to', 'ann.@example.com', "to[1]: 'ann.@example.com' is not an address (user@domain)" },
      { 'to', 'ann..lee@example.com', "to[1]: 'ann..lee@example.com' is not an address (user@domain)" },
      { 'to', 'ann(x)@example.com', "to[1]: 'ann(x)@example.com' is not an address (user@domain)" },
      { 'from', 'News <news@@herald.example>', "from: 'news@@herald.example' is not an address (user@domain)" },
      { 'envelope_from', 'bounce@x@herald.example', "envelope_from: 'bounce@x@herald.example' is not an address (user@domain)" },
    } do
      local res, err, class = http.send_mail(with(c[1], c[2]))
      assert.is_nil(res, c[2])
      assert.are.equal('invalid', class)
      assert.are.equal(c[3], err)
    end
    assert.are.equal(before, store:count())
    -- dots, plus tags, apostrophes and a domain literal are fine
    for i, a in ipairs { 'first.last+tag@sub.example.co.uk', "o'brien@example.com", 'ann@[192.0.2.1]' } do
      assert(http.send_mail(with('to', 'Ann <' .. a .. '>')))
      local msg = store:message(store:count())
      assert.matches('"rcpt_tos": ["' .. a .. '"]', msg.envelope, 1, true)
      assert.matches('\r\nTo: "Ann" <' .. a .. '>\r\n', msg.raw, 1, true)
      assert.are.equal(before + i, store:count())
    end
  end)

  it('refuses the trace, resent and authentication headers servers or users write, as it refuses the ones it writes itself', function()
    local with = mail_with { url = store.url, from = 'a@herald.example', to = 'b@example.org', text = 'x',
                             message_id = 'trace' }
    for _, c in ipairs {
      { 'Return-Path', "headers['Return-Path']: written by the delivering server from the envelope sender (use envelope_from)" },
      { 'received', "headers['received']: a trace field, written by each server the message passes through" },
      { 'Resent-From', "headers['Resent-From']: marks a message resent by a user; a campaign's messages are new ones" },
      { 'RESENT-MESSAGE-ID', "headers['RESENT-MESSAGE-ID']: marks a message resent by a user; a campaign's messages are new ones" },
      { 'List-Unsubscribe-Post', "headers['List-Unsubscribe-Post']: set by the message itself (use its own field)" },
      { 'X-Herald-Message-Id', "headers['X-Herald-Message-Id']: set by the message itself (use its own field)" },
      { 'Authentication-Results', "headers['Authentication-Results']: written by the receiving server once it has checked the message (RFC 8601)" },
      { 'ARC-Seal', "headers['ARC-Seal']: written by servers that forward the message (RFC 8617)" },
      { 'DKIM-Signature', "headers['DKIM-Signature']: computed over each message by the signing server as it leaves (set up DKIM signing there)" },
    } do
      local res, err, class = http.send_mail(with('headers', { [c[1]] = 'x@example.com' }))
      assert.is_nil(res, c[1])
      assert.are.equal('invalid', class)
      assert.are.equal(c[2], err)
    end
    -- a message's own fails alone; the same from its profile would fail every message
    local smtp = require 'herald.channels.smtp'
    local ch = smtp.new { name = 'trace', url = store.url, from = 'a@herald.example', headers = { Received = 'from x' } }
    local out = ch:send { { address = 'b@example.org', body = 'x', title = 's', key = 'trace-1' } }
    assert.are.equal('permanent', out[1].verdict)
    assert.is_true(out[1].systemic)
    assert.matches("headers['Received']: a trace field", out[1].reason, 1, true)
    ch = smtp.new { name = 'trace', url = store.url, from = 'a@herald.example' }
    out = ch:send { { address = 'b@example.org', body = 'x', title = 's', key = 'trace-2',
                      headers = { ['Return-Path'] = '<other@example.org>' } } }
    fails_alone(out[1], "headers['Return-Path']: written by the delivering server")
  end)

  it("percent-encodes what the List-Unsubscribe template substitutes, keeping its own text and {{{x}}} as written", function()
    local smtp = require 'herald.channels.smtp'
    local context = require('herald.core.template').context
    local ch = smtp.new { name = 'unsub', url = store.url, from = 'a@herald.example', one_click = true,
      list_unsubscribe = '<https://herald.example/u?e={{Address}}&c={{Attributes.Code}}>, '
        .. '<mailto:unsub@herald.example?subject=unsubscribe-{{Id}}>' }
    local ep = { Id = 'ép 1', Address = 'ann+news@example.org', Attributes = { Code = { 'a b,<c>"d"#e?f&g%h' } } }
    -- delivery gives the endpoint as a stored template context, herald.send as a table
    local out = ch:send { { address = 'ann@example.org', body = 'x', title = 's', key = 'unsub-1', ctx = context(ep) },
                          { address = 'ann@example.org', body = 'x', title = 's', key = 'unsub-2', endpoint = ep } }
    local want = '<https://herald.example/u?e=ann%2Bnews%40example.org&c=a%20b%2C%3Cc%3E%22d%22%23e%3Ff%26g%25h>, '
      .. '<mailto:unsub@herald.example?subject=unsubscribe-%C3%A9p%201>'
    for i = 1, 2 do
      assert.are.equal('delivered', out[i].verdict, out[i].reason)
      local n = store:count() - 2 + i
      local f = parse(store.dir .. '/mail/' .. n .. '.eml')
      assert.are.equal('0', f.defects)
      assert.are.equal(want, f['list-unsubscribe'])
      assert.are.equal('List-Unsubscribe=One-Click', f['list-unsubscribe-post'])
    end
    -- a triple-stash is the author's: as it is, and the message builder still checks it
    ch = smtp.new { name = 'raw', url = store.url, from = 'a@herald.example', one_click = true,
                    list_unsubscribe = '{{{Attributes.Url}}}' }
    out = ch:send { { address = 'ann@example.org', body = 'x', title = 's', key = 'unsub-3',
                      endpoint = { Attributes = { Url = { 'https://herald.example/u?t=1&v=2' } } } },
                    { address = 'ann@example.org', body = 'x', title = 's', key = 'unsub-4',
                      endpoint = { Attributes = { Url = { 'https://herald.example/désabonner' } } } } }
    assert.are.equal('delivered', out[1].verdict, out[1].reason)
    local f = parse(store.dir .. '/mail/' .. store:count() .. '.eml')
    assert.are.equal('<https://herald.example/u?t=1&v=2>', f['list-unsubscribe'])
    assert.are.equal('List-Unsubscribe=One-Click', f['list-unsubscribe-post'])
    fails_alone(out[2], 'list_unsubscribe: ASCII URIs without line breaks')
  end)

  it("takes a message's own List-Unsubscribe and List-Unsubscribe-Post headers, as Pinpoint's messages give them, over the profile's", function()
    local smtp = require 'herald.channels.smtp'
    local ch = smtp.new { name = 'own', url = store.url, from = 'a@herald.example', one_click = true,
                          list_unsubscribe = '<https://herald.example/u?i={{Id}}>' }
    local own = { ['list-unsubscribe'] = '<https://shop.example/unsub?u=7>, <mailto:unsub@shop.example>',
                  ['List-Unsubscribe-Post'] = 'List-Unsubscribe=One-Click', ['X-Campaign'] = 'spring' }
    local out = ch:send {
      { address = 'ann@example.org', body = 'x', title = 's', key = 'own-1', endpoint = { Id = 'e1' }, headers = own },
      -- its own link without -Post: no One-Click, whatever the profile says of its own link
      { address = 'ann@example.org', body = 'x', title = 's', key = 'own-2', endpoint = { Id = 'e2' },
        headers = { ['List-Unsubscribe'] = '<https://shop.example/unsub?u=8>' } },
      -- none of its own: the profile's
      { address = 'ann@example.org', body = 'x', title = 's', key = 'own-3', endpoint = { Id = 'e3' } },
      -- a -Post that is not RFC 8058's fails alone
      { address = 'ann@example.org', body = 'x', title = 's', key = 'own-4', endpoint = { Id = 'e4' },
        headers = { ['List-Unsubscribe-Post'] = 'yes' } } }
    for i = 1, 3 do assert.are.equal('delivered', out[i].verdict, out[i].reason) end
    local n = store:count()
    local f1, f2, f3 = parse(store.dir .. '/mail/' .. (n - 2) .. '.eml'), parse(store.dir .. '/mail/' .. (n - 1) .. '.eml'),
      parse(store.dir .. '/mail/' .. n .. '.eml')
    assert.are.equal('0', f1.defects)
    assert.are.same({ '<https://shop.example/unsub?u=7>, <mailto:unsub@shop.example>', 'List-Unsubscribe=One-Click', 'spring' },
      { f1['list-unsubscribe'], f1['list-unsubscribe-post'], f1['x-campaign'] })
    assert.are.same({ '<https://shop.example/unsub?u=8>' }, { f2['list-unsubscribe'], f2['list-unsubscribe-post'] })
    assert.are.same({ '<https://herald.example/u?i=e3>', 'List-Unsubscribe=One-Click' },
      { f3['list-unsubscribe'], f3['list-unsubscribe-post'] })
    fails_alone(out[4], 'must be List-Unsubscribe=One-Click (RFC 8058)')
  end)

  it('fails a message alone, unsent, when its List-Unsubscribe cannot be rendered, rather than send it without one', function()
    local smtp = require 'herald.channels.smtp'
    -- six nested #each over 15 items is 15^6 steps: past the engine's bound for this endpoint only
    local each = ('{{#each Attributes.T}}'):rep(6) .. 'x' .. ('{{/each}}'):rep(6)
    local ch = smtp.new { name = 'deep', url = store.url, from = 'a@herald.example',
                          list_unsubscribe = '<https://herald.example/u?i={{Id}}&n=' .. each .. '>' }
    local many = {}
    for i = 1, 15 do many[i] = 't' .. i end
    local before = store:count()
    local out = ch:send { { address = 'ann@example.org', body = 'x', title = 's', key = 'deep-1',
                            endpoint = { Id = 'big', Attributes = { T = many } } },
                          { address = 'bob@example.org', body = 'x', title = 's', key = 'deep-2',
                            endpoint = { Id = 'small', Attributes = { T = { 'a' } } } } }
    fails_alone(out[1], '^RENDER_FAILED: list_unsubscribe: .*steps', false)
    assert.are.equal('delivered', out[2].verdict, out[2].reason)
    assert.are.equal(before + 1, store:count())
    local f = parse(store.dir .. '/mail/' .. store:count() .. '.eml')
    assert.are.equal('<https://herald.example/u?i=small&n=x>', f['list-unsubscribe'])
  end)
end)

describe('herald.http.send_mail over TLS with AUTH', function()
  local starttls, smtps

  setup(function()
    starttls = S.start_mailstore { tls = 'starttls', auth = 'herald:s3cret' }
    smtps = S.start_mailstore { tls = 'smtps', auth = 'herald:s3cret' }
  end)
  teardown(function()
    if starttls then starttls:stop() end
    if smtps then smtps:stop() end
  end)

  local function mail(server, extra)
    local t = { url = server.url, from = 'a@herald.example', to = 'b@example.org', subject = 'tls',
                text = 'secret text', message_id = 'tls-' .. math.random(1e9), ca_file = server.ca,
                username = 'herald', password = 's3cret' }
    for k, v in pairs(extra or {}) do
      if v == false then t[k] = nil else t[k] = v end
    end
    return http.send_mail(t)
  end

  it('upgrades with STARTTLS and authenticates', function()
    local res, err = mail(starttls, { starttls = 'required' })
    assert.is_nil(err)
    assert.are.equal(250, res.status)
    assert.are.equal(1, starttls:count())
    assert.matches('secret text', starttls:message(1).raw, 1, true)
  end)

  it('sends a mail that requires STARTTLS on a session of its own, not on a plain-text one another mail left open', function()
    local optional = S.start_mailstore { tls = 'starttls-optional' }
    local function send(key, mode)
      return http.send_mail { url = optional.url, from = 'a@herald.example', to = 'b@example.org',
                              text = 'text of ' .. key, message_id = key, ca_file = optional.ca,
                              starttls = mode }
    end
    local ok, err = pcall(function()
      assert(send('plain-1', 'no'))
      local before = http.stats().connections
      local res, e = send('tls-1', 'required')
      assert.is_nil(e)
      assert.are.equal(250, res.status)
      assert.are.equal(before + 1, http.stats().connections)
      assert.matches('"starttls": false', optional:message(1).envelope, 1, true)
      assert.matches('"starttls": true', optional:message(2).envelope, 1, true)
      -- mail that does not require TLS still goes
      assert(send('plain-2', 'no'))
      assert.are.equal(3, optional:count())
    end)
    optional:stop()
    assert(ok, err)
  end)

  it('verifies the server against the mail\'s own CA file, never by a session another CA file verified', function()
    -- a CA that did not sign the mailstore's certificate
    local other = S.make_ca(S.tmpdir('other-ca')).ca
    for _, mode in ipairs { 'required', 'try' } do
      assert(mail(starttls, { starttls = 'required' }))
      local stored, opened = starttls:count(), http.stats().connections
      -- the session the first mail left open was verified against the server's CA; this mail's
      -- CA file does not vouch for the server, so it goes nowhere
      local res, err, class = mail(starttls, { starttls = mode, ca_file = other })
      assert.is_nil(res, mode)
      assert.are.equal('tls', class, err)
      assert.are.equal(stored, starttls:count())
      assert.are.equal(opened + 1, http.stats().connections)
      -- libcurl closes the session a mail was stopped on; a mail of the first CA file opens
      -- the next, and the mail after it reuses that one, verified against the same CA file
      assert(mail(starttls, { starttls = 'required' }))
      assert(mail(starttls, { starttls = mode }))
      assert.are.equal(opened + 2, http.stats().connections)
      assert.are.equal(stored + 2, starttls:count())
    end
  end)

  it('speaks implicit TLS on smtps://', function()
    local res, err = mail(smtps)
    assert.is_nil(err)
    assert.are.equal(250, res.status)
    assert.are.equal(1, smtps:count())
  end)

  it('classifies a refused login as auth, permanent', function()
    local res, _, class = mail(starttls, { starttls = 'required', password = 'wrong' })
    assert.is_nil(res)
    assert.are.equal('auth', class)
    assert.are.equal('permanent', http.verdict(class))
  end)

  it('refuses a server certificate it cannot verify', function()
    local res, _, class = mail(smtps, { ca_file = false })
    assert.is_nil(res)
    assert.are.equal('tls', class)
  end)
end)

describe('herald.http.send_mail against servers that misbehave', function()
  local function mail(server, extra)
    local t = { url = server.url, from = 'a@herald.example', to = 'b@example.org', text = 'x',
                message_id = 'fault-' .. math.random(1e9) }
    for k, v in pairs(extra or {}) do t[k] = v end
    return http.send_mail(t)
  end

  it('takes a login refused for now (454) as transient and a wrong one (535) as permanent', function()
    local later = S.start_fault_smtp { auth_reply = '454 4.7.0 Temporary authentication failure' }
    local wrong = S.start_fault_smtp { auth_reply = '535 5.7.8 Authentication credentials invalid' }
    local ok, e = pcall(function()
      local login = { username = 'herald', password = 's3cret', starttls = 'no' }
      local res, _, class, code = mail(later, login)
      assert.is_nil(res)
      assert.are.equal('auth', class)
      assert.are.equal(454, code)
      assert.are.equal('transient', http.verdict(class, code, true))
      res, _, class, code = mail(wrong, login)
      assert.is_nil(res)
      assert.are.equal('auth', class)
      assert.are.equal(535, code)
      assert.are.equal('permanent', http.verdict(class, code, true))
      -- the channel retries the first later; both count as systemic (every message would fail)
      local smtp = require 'herald.channels.smtp'
      local msg = { address = 'b@example.org', body = 'x', title = 's', key = 'fault-ch-1' }
      local r = smtp.new { name = 'later', url = later.url, from = 'a@herald.example', username = 'herald',
                           password = 's3cret', starttls = 'no' }:send { msg }[1]
      assert.are.equal('transient', r.verdict)
      assert.is_true(r.systemic)
      r = smtp.new { name = 'wrong', url = wrong.url, from = 'a@herald.example', username = 'herald',
                     password = 's3cret', starttls = 'no' }:send { msg }[1]
      assert.are.equal('permanent', r.verdict)
      assert.is_true(r.systemic)
      assert.is_nil(r.feedback)
    end)
    later:stop()
    wrong:stop()
    assert(ok, e)
  end)

  it('opens new sessions after the server closed the idle ones', function()
    -- like Postfix's smtpd_timeout: "421 4.4.2 ... timeout" to a session idle for a second, then close
    local server = S.start_fault_smtp { idle = 1 }
    local ok, e = pcall(function()
      local smtp = require 'herald.channels.smtp'
      local ch = smtp.new { name = 'idle', url = server.url, from = 'a@herald.example', sessions = 3 }
      local function three(tag)
        local msgs = {}
        for i = 1, 3 do msgs[i] = { address = tag .. i .. '@example.org', body = 'x', title = 's', key = tag .. '-' .. i } end
        return ch:send(msgs)
      end
      local first = three('before')
      herald.sleep(1600)
      local idle_closed = 0
      for _, line in ipairs(server:commands()) do if line:match(' idle%-closed$') then idle_closed = idle_closed + 1 end end
      assert.is_true(idle_closed >= 1, 'the server closed no session')
      local second = three('after')
      for i = 1, 3 do
        assert.are.equal('delivered', first[i].verdict, first[i].reason)
        assert.are.equal('delivered', second[i].verdict, second[i].reason)
      end
    end)
    server:stop()
    assert(ok, e)
  end)

  it('sends a login only over TLS unless told otherwise', function()
    local server = S.start_fault_smtp()   -- offers AUTH, not STARTTLS
    local ok, e = pcall(function()
      local function auths()
        local n = 0
        for _, line in ipairs(server:commands()) do if line:match('^%d+ < AUTH') then n = n + 1 end end
        return n
      end
      local login = { username = 'herald', password = 's3cret' }
      local res, _, class = mail(server, login)
      assert.is_nil(res)
      assert.are.equal('tls', class)
      assert.are.equal(0, auths())
      -- the channel passes its profile's starttls, unset here
      local smtp = require 'herald.channels.smtp'
      local r = smtp.new { name = 'plain', url = server.url, from = 'a@herald.example', username = 'herald',
                           password = 's3cret' }:send { { address = 'b@example.org', body = 'x', title = 's', key = 'tls-ch-1' } }[1]
      assert.are_not.equal('delivered', r.verdict)
      assert.are.equal(0, auths())
      -- a profile that asks for less gets it
      login.starttls = 'try'
      assert(mail(server, login))
      assert.are.equal(1, auths())
      -- without credentials nothing needs hiding: STARTTLS when offered
      assert(mail(server))
    end)
    server:stop()
    assert(ok, e)
  end)

  it('records why a message was refused after its DATA', function()
    local server = S.start_fault_smtp()
    local ok, e = pcall(function()
      local smtp = require 'herald.channels.smtp'
      local out = smtp.new { name = 'fault', url = server.url, from = 'a@herald.example' }:send {
        { address = 'refuse@example.org', body = 'x', title = 's', key = 'refused-1' } }
      assert.are.equal('permanent', out[1].verdict)
      assert.matches('554 5.7.1 content rejected', out[1].reason, 1, true)
      assert.is_true(out[1].systemic)   -- the content, not the recipient: no bounce
      assert.is_nil(out[1].feedback)
    end)
    server:stop()
    assert(ok, e)
  end)
end)
