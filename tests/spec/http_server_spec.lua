-- The engagement server, driven over loopback by python3 (http.client and raw sockets) and
-- curl: a `herald serve` subprocess for the protocol, and one started in-process for the
-- Lua binding and its counters.
local h = require 'helpers'
local server = require 'herald.core.server'
local tracking = require 'herald.tracking'

local KEY = 'spec-tracking-key-0123456789abcdef'

local function sh(cmd)
  local p = assert(io.popen(cmd, 'r'))
  local out = p:read('a')
  local _, _, code = p:close()
  return out, code
end

-- Runs a python3 program with HOST and PORT set; returns its stdout and exit code. The program
-- prints `key<TAB>value` lines, returned as a table too (repeated keys become lists).
local function py(port, program)
  local dir = h.tmpdir()
  local path = h.write(dir .. '/probe.py', 'HOST = "127.0.0.1"\nPORT = ' .. port .. '\n' .. program)
  local out, code = sh('python3 ' .. h.shell_quote(path) .. ' 2>&1')
  local kv = {}
  for line in out:gmatch('[^\n]+') do
    local k, v = line:match('^([%w_]+)\t(.*)$')
    if k then
      if kv[k] == nil then kv[k] = v
      elseif type(kv[k]) == 'table' then table.insert(kv[k], v)
      else kv[k] = { kv[k], v } end
    end
  end
  assert(code == 0, 'python3 probe failed:\n' .. out)
  return kv, out
end

-- Starts `herald serve` in the background, its output in dir (default: a new one) and its
-- database db (default: dir/h.db); returns {pid, port, dir}.
local function start_serve(extra, env, dir, db)
  dir = dir or h.tmpdir()
  db = db or (dir .. '/h.db')
  os.remove(dir .. '/out')
  os.remove(dir .. '/pid')
  os.remove(dir .. '/rc')
  env = env or ('HERALD_TRACKING_KEY=' .. h.shell_quote(KEY))
  local inner = env .. ' ' .. h.shell_quote(h.exe) .. ' --db ' .. h.shell_quote(db) ..
    ' serve --listen 127.0.0.1:0 ' .. (extra or '') .. ' > ' .. h.shell_quote(dir .. '/out') ..
    ' 2> ' .. h.shell_quote(dir .. '/err') .. ' & echo $! > ' .. h.shell_quote(dir .. '/pid') ..
    '; wait $!; echo $? > ' .. h.shell_quote(dir .. '/rc')
  os.execute('sh -c ' .. h.shell_quote(inner) .. ' > /dev/null 2>&1 &')
  local port = h.wait_for(function()
    local out = h.read(dir .. '/out') or ''
    return tonumber(out:match('listening on http://127%.0%.0%.1:(%d+)'))
  end, 20000, function() return 'herald serve to listen (stderr: ' .. tostring(h.read(dir .. '/err')) .. ')' end)
  local pid = h.wait_for(function() return tonumber((h.read(dir .. '/pid') or ''):match('%d+')) end,
    5000, 'the pid')
  return { pid = pid, port = port, dir = dir }
end

-- SIGTERM; returns the exit code and stdout.
local function stop_serve(s)
  os.execute('kill -TERM ' .. s.pid)
  local rc = h.wait_for(function() return tonumber((h.read(s.dir .. '/rc') or ''):match('%d+')) end,
    20000, 'herald serve to exit')
  return rc, h.read(s.dir .. '/out'), h.read(s.dir .. '/err')
end

local function alive(s)
  return os.execute('kill -0 ' .. s.pid .. ' 2>/dev/null') == true
end

local function ids(extra)
  local t = { app = 'default', campaign = 'spring', run = 7, treatment = 1, endpoint = 'ep-42',
    message_id = 'msg-42-7', key = KEY }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

-- A python3 function for py() programs: sends requests (bytes) in one write, so the server
-- reads them in one loop iteration, and returns the answers and their request ids.
local PIPELINE = [[
import socket, re
def pipeline(reqs):
    s = socket.create_connection((HOST, PORT), timeout=10)
    s.sendall(b"".join(reqs))
    data = b""
    while data.count(b"HTTP/1.1 ") < len(reqs):
        d = s.recv(1 << 20)
        if not d: break
        data += d
    return data, [m.group(1).decode() for m in re.finditer(rb"x-amzn-RequestId: (\S+)", data)]
]]

local function token_of(url) return url:match('/t/%a/(.*)$') end

describe('herald serve', function()
  local s, base
  setup(function()
    s = start_serve('--request-timeout 400 --idle-timeout 800 --max-body 100000')
    base = 'http://127.0.0.1:' .. s.port
  end)
  teardown(function()
    if s then
      local rc = stop_serve(s)
      assert.are.equal(0, rc)
    end
  end)

  it('serves several requests on one keep-alive connection', function()
    local open = tracking.open_url(ids { base = base })
    local click = tracking.click_url(ids { base = base, url = 'https://example.com/a' })
    local kv = py(s.port, string.format([[
import http.client
c = http.client.HTTPConnection(HOST, PORT, timeout=5)
sock = None
for path in [%q, %q, "/nope", %q]:
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    if sock is None: sock = c.sock
    print("status\t%%d" %% r.status)
    print("same\t%%s" %% (c.sock is sock))
]], open:gsub('^http://[^/]+', ''), click:gsub('^http://[^/]+', ''), open:gsub('^http://[^/]+', '')))
    assert.are.same({ '200', '302', '404', '200' }, kv.status)
    assert.are.same({ 'True', 'True', 'True', 'True' }, kv.same)
  end)

  it('answers pipelined requests in order', function()
    local open = tracking.open_url(ids { base = base }):gsub('^http://[^/]+', '')
    local kv = py(s.port, string.format([[
import socket, re
s = socket.create_connection((HOST, PORT), timeout=5)
s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET %s HTTP/1.1\r\nHost: x\r\n\r\nPOST /t/o/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while True:
    d = s.recv(65536)
    if not d: break
    data += d
for m in re.finditer(rb"HTTP/1\.1 (\d+)", data):
    print("status\t" + m.group(1).decode())
print("close\t%%s" %% (b"Connection: close" in data))
]], open))
    assert.are.same({ '404', '200', '405', '404' }, kv.status)
    assert.are.equal('True', kv.close)
  end)

  it('answers 20,000 pipelined requests to a client that reads late, in order', function()
    local kv = py(s.port, [[
import socket, threading, time, re
N = 20000
s = socket.create_connection((HOST, PORT), timeout=10)
reqs = b"".join(b"GET /n%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(N))
t = threading.Thread(target=s.sendall, args=(reqs,))
t.start()
time.sleep(0.5)  # the server's answers pile up: it must stop reading, not buffer without end
data = b""
while data.count(b"HTTP/1.1 404") < N:
    d = s.recv(1 << 20)
    if not d: break
    data += d
t.join()
ids = [int(m.group(1), 16) for m in re.finditer(rb'"RequestID":"[0-9a-f-]*-([0-9a-f]{12})"', data)]
print("answered	%d" % data.count(b"HTTP/1.1 404"))
print("ordered	%s" % (ids == sorted(ids) and len(ids) == N))
]])
    assert.are.equal('20000', kv.answered)
    assert.are.equal('True', kv.ordered)
  end)

  it('answers 404, 405, 413, 431 and 400 with Pinpoint-style JSON bodies', function()
    local unsub = tracking.unsubscribe_url(ids { base = base }):gsub('^http://[^/]+', '')
    local kv = py(s.port, string.format([[
import http.client, json, socket
def show(name, status, headers, body):
    j = json.loads(body)
    print(name + "\t%%d|%%s|%%s" %% (status, j["Message"], j["RequestID"] == headers.get("x-amzn-RequestId") and len(j["RequestID"]) == 36))
c = http.client.HTTPConnection(HOST, PORT, timeout=5)
c.request("GET", "/v1/apps/x/nothing")
r = c.getresponse(); show("notfound", r.status, r.headers, r.read())
c.request("DELETE", "/t/o/abc")
r = c.getresponse(); print("allow\t" + r.headers["Allow"]); show("method", r.status, r.headers, r.read())
c.request("POST", %q, body=b"x" * 200000, headers={"Content-Type": "application/x-www-form-urlencoded"})
r = c.getresponse(); print("closed413\t" + str(r.headers.get("Connection"))); show("large", r.status, r.headers, r.read())
c = http.client.HTTPConnection(HOST, PORT, timeout=5)
c.request("GET", "/t/o/abc", headers={"X-Big": "y" * 40000})
r = c.getresponse(); show("headers", r.status, r.headers, r.read())
s = socket.create_connection((HOST, PORT), timeout=5)
s.sendall(b"GET /t/o/abc HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
data = b""
while True:
    d = s.recv(65536)
    if not d: break
    data += d
head, body = data.split(b"\r\n\r\n", 1)
print("malformed\t" + head.split(b"\r\n")[0].decode() + "|" + json.loads(body)["Message"])
]], unsub))
    assert.are.equal('404|no such resource|True', kv.notfound)
    assert.are.equal('GET', kv.allow)
    assert.are.equal('405|method DELETE is not allowed here (allowed: GET)|True', kv.method)
    assert.are.equal('413|request body exceeds the size limit|True', kv.large)
    assert.are.equal('close', kv.closed413)
    assert.are.equal('431|request line and headers exceed the size limit|True', kv.headers)
    assert.matches('^HTTP/1%.1 400 Bad Request|malformed request: ', kv.malformed)
  end)

  it('refuses a body over the cap from its Content-Length, before reading it', function()
    local kv = py(s.port, [[
import socket
s = socket.create_connection((HOST, PORT), timeout=5)
s.sendall(b"POST /t/u/abc HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
print("head\t" + s.recv(65536).split(b"\r\n")[0].decode())
]])
    assert.are.equal('HTTP/1.1 413 Payload Too Large', kv.head)
  end)

  it('survives random garbage and still serves a valid request', function()
    local open = tracking.open_url(ids { base = base }):gsub('^http://[^/]+', '')
    local kv = py(s.port, string.format([[
import random, socket, http.client
random.seed(20261129)
answered = 0
for i in range(60):
    s = socket.create_connection((HOST, PORT), timeout=5)
    n = random.choice([1, 7, 100, 3000, 70000])
    junk = bytes(random.getrandbits(8) for _ in range(n))
    if i %% 3 == 0: junk = b"GET /" + junk
    if i %% 5 == 0: junk = b"POST /t/u/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + junk
    try:
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        if s.recv(100).startswith(b"HTTP/1.1 4"): answered += 1
    except (OSError, socket.timeout):
        pass
    s.close()
print("answered\t%%d" %% answered)
c = http.client.HTTPConnection(HOST, PORT, timeout=5)
c.request("GET", %q)
r = c.getresponse()
print("after\t%%d" %% r.status)
]], open))
    assert.is_true(tonumber(kv.answered) > 30, 'garbage answered with 4xx: ' .. kv.answered)
    assert.are.equal('200', kv.after)
    assert.is_true(alive(s))
  end)

  it('returns a 1x1 GIF for the open pixel, also to HEAD without the body', function()
    local open = tracking.open_url(ids { base = base }):gsub('^http://[^/]+', '')
    local kv = py(s.port, string.format([[
import http.client, struct
c = http.client.HTTPConnection(HOST, PORT, timeout=5)
c.request("GET", %q)
r = c.getresponse(); b = r.read()
print("type\t" + r.headers["Content-Type"])
print("cache\t" + r.headers["Cache-Control"])
print("magic\t" + b[:6].decode())
print("size\t%%dx%%d" %% struct.unpack("<HH", b[6:10]))
print("len\t%%d|%%s" %% (len(b), r.headers["Content-Length"]))
print("trailer\t%%d" %% b[-1])
c.request("HEAD", %q)
r = c.getresponse(); b = r.read()
print("head\t%%d|%%s|%%d" %% (r.status, r.headers["Content-Length"], len(b)))
]], open, open))
    assert.are.equal('image/gif', kv.type)
    assert.matches('no%-store', kv.cache)
    assert.are.equal('GIF89a', kv.magic)
    assert.are.equal('1x1', kv.size)
    assert.are.equal('43|43', kv.len)
    assert.are.equal('59', kv.trailer) -- ';'
    assert.are.equal('200|43|0', kv.head)
  end)

  it('redirects a click to the exact signed URL', function()
    local target = 'https://shop.example.com/p/%C3%A9t%C3%A9?utm_source=herald&x=a%20b&y=1;2#top'
    local click = tracking.click_url(ids { base = base, url = target })
    local out = sh('curl -s -o /dev/null -w "%{http_code} %{redirect_url}" ' .. h.shell_quote(click))
    assert.are.equal('302 ' .. target, out)
  end)

  it('rejects tampered, forged, truncated and wrong-kind tokens with 400 JSON', function()
    local click = tracking.click_url(ids { base = base, url = 'https://example.com/' })
    local tok = token_of(click)
    local flipped = tok:sub(1, 20) .. (tok:sub(21, 21) == 'A' and 'B' or 'A') .. tok:sub(22)
    local forged = token_of(tracking.click_url(ids { base = base, url = 'https://evil.example/',
      key = 'another-key-that-is-long-enough' }))
    local open_tok = token_of(tracking.open_url(ids { base = base }))
    local paths = {
      '/t/c/' .. flipped, '/t/c/' .. forged, '/t/c/' .. tok:sub(1, #tok - 3), '/t/c/' .. open_tok,
      '/t/o/' .. tok, '/t/c/' .. tok .. 'A', '/t/c/%00%ff', '/t/c/' .. string.rep('A', 5000),
      '/t/u/' .. open_tok,
    }
    local list = {}
    for i, p in ipairs(paths) do list[i] = string.format('%q', p) end
    local kv = py(s.port, [[
import http.client, json
c = http.client.HTTPConnection(HOST, PORT, timeout=5)
for p in []] .. table.concat(list, ', ') .. [[]:
    c.request("GET", p)
    r = c.getresponse()
    print("r\t%d|%s|%s" % (r.status, json.loads(r.read())["Message"], r.headers.get("Location")))
]])
    assert.are.equal(#paths, #kv.r)
    for i, r in ipairs(kv.r) do
      assert.are.equal('400|invalid tracking token|None', r, paths[i])
    end
    local good = sh('curl -s -o /dev/null -w "%{http_code}" ' .. h.shell_quote(click))
    assert.are.equal('302', good)
  end)

  it('accepts the RFC 8058 one-click POST and shows a form on GET', function()
    local unsub = tracking.unsubscribe_url(ids { base = base })
    local page = sh('curl -s -w "|%{http_code}" ' .. h.shell_quote(unsub))
    assert.matches('<form method="post">', page, 1, true)
    assert.matches('|200$', page)
    local post = sh('curl -s -w "|%{http_code}" -d List-Unsubscribe=One-Click ' .. h.shell_quote(unsub))
    assert.matches('You are unsubscribed.', post, 1, true)
    assert.matches('|200$', post)
    local multipart = sh('curl -s -o /dev/null -w "%{http_code}" -F List-Unsubscribe=One-Click ' .. h.shell_quote(unsub))
    assert.are.equal('200', multipart)
    local wrong = sh('curl -s -w "|%{http_code}" -d unsubscribe=yes ' .. h.shell_quote(unsub))
    assert.matches('List-Unsubscribe=One-Click', wrong, 1, true)
    assert.matches('|400$', wrong)
  end)

  it('answers a slow request with 408 and closes idle connections', function()
    local kv = py(s.port, [[
import socket, time
s = socket.create_connection((HOST, PORT), timeout=5)
t0 = time.time()
s.sendall(b"GET /t/o/abc HTTP/1.1\r\nHost: x\r\n")
for _ in range(3):
    time.sleep(0.1)
    s.sendall(b"X-Slow: 1\r\n")
data = b""
while True:
    d = s.recv(65536)
    if not d: break
    data += d
print("slow\t" + data.split(b"\r\n")[0].decode())
print("slow_s\t%.2f" % (time.time() - t0))
s = socket.create_connection((HOST, PORT), timeout=5)
t0 = time.time()
print("idle\t%r" % s.recv(100))
print("idle_s\t%.2f" % (time.time() - t0))
]])
    assert.are.equal('HTTP/1.1 408 Request Timeout', kv.slow)
    assert.is_true(tonumber(kv.slow_s) >= 0.35 and tonumber(kv.slow_s) < 3, kv.slow_s)
    assert.are.equal("b''", kv.idle)
    assert.is_true(tonumber(kv.idle_s) >= 0.7 and tonumber(kv.idle_s) < 3, kv.idle_s)
  end)

  it('refuses a PutEvents item whose Events is not an object whole, storing nothing of it', function()
    local kv = py(s.port, string.format([[
import http.client, json, sqlite3
c = http.client.HTTPConnection(HOST, PORT, timeout=5)
c.request("POST", "/v1/apps/default/events", body=json.dumps({"BatchItem": {
    "pe-list": {"Endpoint": {"ChannelType": "EMAIL", "Address": "pe-list@example.com"}, "Events": []},
    "pe-null": {"Endpoint": {"ChannelType": "EMAIL", "Address": "bad@"}, "Events": None}}}))
r = c.getresponse()
res = json.loads(r.read())["Results"]
print("status\t%%d" %% r.status)
for k in ("pe-list", "pe-null"):
    e = res[k]["EndpointItemResponse"]
    print(k.replace("-", "_") + "\t%%d|%%s|%%s" %% (e["StatusCode"], e["Message"], json.dumps(res[k].get("EventsItemResponse"))))
n = sqlite3.connect(%q).execute("SELECT count(*) FROM endpoints WHERE id LIKE 'pe-%%'").fetchone()[0]
print("stored\t%%d" %% n)
]], s.dir .. '/h.db'))
    assert.are.equal('202', kv.status)
    assert.are.equal('400|Events: expected an object of event id -> Event; nothing of this item is stored|{}',
      kv.pe_list)
    assert.are.equal(kv.pe_list, kv.pe_null)
    assert.are.equal('0', kv.stored)
  end)

  it('records an attribute key an accepted item brings after a refused item brought it', function()
    -- the refused item's key is rolled back with it; the accepted one must record it again,
    -- or the application's key count (250 at most) misses a key its endpoints hold
    local kv = py(s.port, string.format([[
import http.client, json, sqlite3
c = http.client.HTTPConnection(HOST, PORT, timeout=5)
c.request("POST", "/v1/apps/default/events", body=json.dumps({"BatchItem": {
    "ak-bad": {"Endpoint": {"ChannelType": "EMAIL", "Address": "bad@", "Attributes": {"ghostkey": ["x"]}}},
    "ak-good": {"Endpoint": {"ChannelType": "EMAIL", "Address": "ak-good@example.com",
                             "Attributes": {"ghostkey": ["y"]}}}}}))
r = c.getresponse()
res = json.loads(r.read())["Results"]
print("bad\t%%d" %% res["ak-bad"]["EndpointItemResponse"]["StatusCode"])
print("good\t%%d" %% res["ak-good"]["EndpointItemResponse"]["StatusCode"])
db = sqlite3.connect(%q)
print("keys\t%%d" %% db.execute("SELECT count(*) FROM attribute_keys WHERE app_id = 'default' AND name = 'ghostkey'").fetchone()[0])
print("stored\t%%s" %% db.execute("SELECT group_concat(id) FROM endpoints WHERE id LIKE 'ak-%%'").fetchone()[0])
]], s.dir .. '/h.db'))
    assert.are.equal('400', kv.bad)
    assert.are.equal('202', kv.good)
    assert.are.equal('ak-good', kv.stored)
    assert.are.equal('1', kv.keys)
  end)

  it('answers Expect: 100-continue before the body is sent, and 413 unread for a body over the cap', function()
    local kv = py(s.port, [[
import socket, time
def head(body_len, version=b"HTTP/1.1", expect=b"100-continue"):
    return (b"POST /v1/apps/default/events " + version + b"\r\nHost: x\r\nExpect: " + expect +
            b"\r\nContent-Length: %d\r\n\r\n" % body_len)
def first(s, wait):
    s.settimeout(wait)
    try:
        return s.recv(65536)
    except socket.timeout:
        return b""
body = b'{"BatchItem": {}}'
s = socket.create_connection((HOST, PORT), timeout=5)
s.sendall(head(len(body)))
t0 = time.time()
print("interim\t%r" % first(s, 0.5))
print("interim_fast\t%s" % (time.time() - t0 < 0.4))
s.sendall(body)
print("final\t" + first(s, 5).split(b"\r\n")[0].decode())
s = socket.create_connection((HOST, PORT), timeout=5)
s.sendall(head(len(body), expect=b"100-Continue"))
print("case\t%r" % first(s, 0.5))
s = socket.create_connection((HOST, PORT), timeout=5)
s.sendall(head(len(body), version=b"HTTP/1.0"))
print("http10\t%r" % first(s, 0.3))
s = socket.create_connection((HOST, PORT), timeout=5)
s.sendall(head(200000))
print("large\t" + first(s, 5).split(b"\r\n")[0].decode())
]])
    assert.are.equal("b'HTTP/1.1 100 Continue\\r\\n\\r\\n'", kv.interim)
    assert.are.equal('True', kv.interim_fast)
    assert.are.equal('HTTP/1.1 202 Accepted', kv.final)
    assert.are.equal(kv.interim, kv.case)
    assert.are.equal("b''", kv.http10)
    assert.are.equal('HTTP/1.1 413 Payload Too Large', kv.large)
  end)

  it('closes after a response when the client asks, and speaks HTTP/1.0 keep-alive', function()
    local kv = py(s.port, [[
import socket
def exchange(req):
    s = socket.create_connection((HOST, PORT), timeout=5)
    s.sendall(req)
    data = b""
    while True:
        d = s.recv(65536)
        if not d: break
        data += d
        if req.startswith(b"GET /ka"): break
    return data
d = exchange(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
print("close\t%s" % (b"Connection: close" in d))
d = exchange(b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
print("ka10\t%s" % (b"Connection: keep-alive" in d))
d = exchange(b"GET /x HTTP/1.0\r\n\r\n")
print("plain10\t%s" % (b"Connection: close" in d))
]])
    assert.are.equal('True', kv.close)
    assert.are.equal('True', kv.ka10)
    assert.are.equal('True', kv.plain10)
  end)
end)

describe('herald serve group commit', function()
  -- Every click of a loop iteration is stored in one transaction, and the answers of that
  -- iteration are written only after it commits.
  local s, base, db
  setup(function()
    s = start_serve()
    base = 'http://127.0.0.1:' .. s.port
    db = s.dir .. '/h.db'
    local _, code, err = h.herald('--db ' .. h.shell_quote(db) .. [[ -e "
      for _, id in ipairs{'ep-42', 'ep-7', 'ep-trap', 'ep-head'} do
        assert(herald.endpoints.put{Id = id, ChannelType = 'EMAIL', Address = id .. '@example.com'})
      end"]])
    assert.are.equal(0, code, err)
    -- a store failure for one endpoint's events only (herald.db is read-only: python writes it)
    local out, rc = sh('python3 -c ' .. h.shell_quote(string.format([[
import sqlite3
c = sqlite3.connect(%q, isolation_level=None, timeout=5)
c.execute("CREATE TRIGGER spec_trap BEFORE INSERT ON events WHEN NEW.endpoint_id = 'ep-trap' "
          "BEGIN SELECT RAISE(ABORT, 'the trap refuses the event'); END")
]], db)) .. ' 2>&1')
    assert.are.equal(0, rc, out)
  end)
  teardown(function()
    if s then assert.are.equal(0, (stop_serve(s))) end
  end)

  -- the path of a click token for base
  local function path_of(extra)
    local t = { base = base, url = 'https://example.com/landing' }
    for k, v in pairs(extra or {}) do t[k] = v end
    return (tracking.click_url(ids(t)):gsub('^http://[^/]+', ''))
  end

  it('answers a click only once it is stored, even while another writer holds the database', function()
    local kv = py(s.port, string.format([[
import socket, sqlite3, time, re
DB = %q
lock = sqlite3.connect(DB, isolation_level=None, timeout=5)
lock.execute("BEGIN IMMEDIATE")  # the server cannot commit until this ends
s = socket.create_connection((HOST, PORT), timeout=5)
s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n")
s.settimeout(0.8)
try:
    early = s.recv(65536)
except socket.timeout:
    early = b""
print("early\t%%d" %% len(early))
lock.execute("ROLLBACK")
s.settimeout(10)
data = b""
while b"\r\n\r\n" not in data:
    d = s.recv(65536)
    if not d: break
    data += d
rid = re.search(rb"x-amzn-RequestId: (\S+)", data).group(1).decode()
# read at once: the event must be there when its answer is
n = sqlite3.connect(DB).execute("SELECT count(*) FROM events WHERE event_type = '_email.click' AND event_id = ?", (rid,)).fetchone()[0]
print("status\t" + data.split(b"\r\n")[0].decode())
print("stored\t%%d" %% n)
]], db, path_of()))
    assert.are.equal('0', kv.early)
    assert.are.equal('HTTP/1.1 302 Found', kv.status)
    assert.are.equal('1', kv.stored)
  end)

  it('answers HEAD on an open or click link as GET does, without a body, and records nothing', function()
    -- link scanners and proxies send HEAD: an open or a click counted for it would feed the
    -- reports, the KPIs and the A/B winner
    local open = tracking.open_url(ids { base = base, endpoint = 'ep-head' }):gsub('^http://[^/]+', '')
    local kv = py(s.port, string.format([[
import http.client, sqlite3
c = http.client.HTTPConnection(HOST, PORT, timeout=5)
for name, path in (("open", %q), ("click", %q)):
    c.request("HEAD", path)
    r = c.getresponse(); b = r.read()
    print(name + "\t%%d|%%s|%%s|%%s|%%d" %% (r.status, r.headers["Content-Type"], r.headers["Location"],
          r.headers["Cache-Control"], len(b)))
# a hit is stored before its answer (a quiet iteration): any event of the HEADs is there now
n = sqlite3.connect(%q).execute("SELECT count(*) FROM events WHERE endpoint_id = 'ep-head'").fetchone()[0]
print("after_head\t%%d" %% n)
c.request("GET", %q)
r = c.getresponse(); r.read()
rows = sqlite3.connect(%q).execute("SELECT event_type, count(*) FROM events WHERE endpoint_id = 'ep-head' GROUP BY 1").fetchall()
print("after_get\t%%d|%%s" %% (r.status, ",".join("%%s=%%d" %% row for row in rows)))
]], open, path_of { endpoint = 'ep-head' }, db, path_of { endpoint = 'ep-head' }, db))
    assert.are.equal('200|image/gif|None|no-store, no-cache, must-revalidate, private|0', kv.open)
    assert.are.equal('302|None|https://example.com/landing|no-store|0', kv.click)
    assert.are.equal('0', kv.after_head)
    assert.are.equal('302|_email.click=1', kv.after_get)
  end)

  it('stores every click of a pipelined burst it answered (journaled first: a busy iteration)', function()
    local kv = py(s.port, string.format([[
import socket, sqlite3, re, time
DB = %q
N = 500
s = socket.create_connection((HOST, PORT), timeout=10)
s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" * N)
data = b""
while data.count(b"HTTP/1.1 302") < N:
    d = s.recv(1 << 20)
    if not d: break
    data += d
ids = [m.group(1).decode() for m in re.finditer(rb"x-amzn-RequestId: (\S+)", data)]
c = sqlite3.connect(DB)
deadline = time.time() + 5  # journaled hits reach the store within the fold time (50 ms)
while True:
    stored = set(r[0] for r in c.execute("SELECT event_id FROM events WHERE event_type = '_email.click' AND endpoint_id = 'ep-7'"))
    n = sum(1 for i in ids if i in stored)
    if n == len(ids) or time.time() > deadline: break
    time.sleep(0.02)
print("answered\t%%d" %% data.count(b"HTTP/1.1 302"))
print("stored\t%%d" %% n)
print("events\t%%d" %% len(stored))
]], db, path_of { endpoint = 'ep-7' }))
    assert.are.equal('500', kv.answered)
    assert.are.equal('500', kv.stored)
    assert.are.equal('500', kv.events)
  end)

  it('loses no click of a batch to the clicks in it that cannot be stored', function()
    local good = path_of { message_id = 'msg-good' }
    local bad = {
      path_of { endpoint = 'ep-gone', message_id = 'msg-gone' },           -- no such endpoint
      path_of { message_id = 'msg-' .. string.rep('x', 240) },             -- over the attribute limit
      path_of { endpoint = 'ep-trap', message_id = 'msg-trap' },           -- the store refuses it
    }
    local reqs = {}
    for i = 1, 3 do
      reqs[#reqs + 1] = good
      reqs[#reqs + 1] = bad[i]
    end
    reqs[#reqs + 1] = good
    local list = {}
    for i, p in ipairs(reqs) do list[i] = string.format('b"GET %s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"', p) end
    local kv = py(s.port, PIPELINE .. string.format([[
import sqlite3
DB = %q
data, ids = pipeline([]] .. table.concat(list, ', ') .. [[])
c = sqlite3.connect(DB)
for i in ids:
    row = c.execute("SELECT json_extract(attributes, '$.message_id') FROM events WHERE event_id = ?", (i,)).fetchone()
    print("row\t%%s" %% (row[0][:8] if row else "-"))
]], db))
    assert.are.same({ 'msg-good', '-', 'msg-good', '-', 'msg-good', '-', 'msg-good' }, kv.row)
    local err = h.read(s.dir .. '/err')
    assert.matches("recording _email.click of message msg%-gone: no endpoint 'ep%-gone' in application 'default'", err)
    assert.matches('recording _email.click of message msg%-x+: message_id: longer than 200 characters', err)
    assert.matches('recording _email.click of message msg%-trap: .*the trap refuses the event', err)
  end)

  it('answers a client that half-closes right after its request', function()
    local kv = py(s.port, string.format([[
import socket
s = socket.create_connection((HOST, PORT), timeout=5)
s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n")
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    d = s.recv(65536)
    if not d: break
    data += d
print("status\t" + data.split(b"\r\n")[0].decode())
]], path_of()))
    assert.are.equal('HTTP/1.1 302 Found', kv.status)
  end)
end)

describe('herald serve on a busy store', function()
  it('answers PutEvents 503 with Retry-After while another writer holds the store', function()
    local s = start_serve(nil, 'HERALD_TRACKING_KEY=' .. h.shell_quote(KEY) .. ' HERALD_BUSY_TIMEOUT_MS=200')
    local kv = py(s.port, string.format([[
import http.client, json, sqlite3
lock = sqlite3.connect(%q, isolation_level=None, timeout=5)
lock.execute("BEGIN IMMEDIATE")
c = http.client.HTTPConnection(HOST, PORT, timeout=10)
for name, path, body in (("events", "/v1/apps/default/events", {"BatchItem": {"b1": {
        "Endpoint": {"ChannelType": "EMAIL", "Address": "b1@example.com"},
        "Events": {"v": {"EventType": "x", "Timestamp": "2026-11-01T00:00:00Z"}}}}}),):
    c.request("POST", path, body=json.dumps(body))
    r = c.getresponse()
    print(name + "\t%%d|%%s|%%s" %% (r.status, r.headers.get("Retry-After"), "database is locked" in json.loads(r.read())["Message"]))
lock.execute("ROLLBACK")
c.request("POST", "/v1/apps/default/events", body=json.dumps({"BatchItem": {"b1": {
    "Endpoint": {"ChannelType": "EMAIL", "Address": "b1@example.com"}}}}))
print("after\t%%d" %% c.getresponse().status)
]], s.dir .. '/h.db'))
    assert.are.equal(0, (stop_serve(s)))
    assert.are.equal('503|1|True', kv.events)
    assert.are.equal('202', kv.after)
  end)
end)

describe('herald serve hit journal', function()
  -- A busy iteration's hits are answered once they are in <db>-hits; a server killed before
  -- it stored them leaves them there, and the next server stores them before it listens.
  local function seed(dir)
    local _, code, err = h.herald('--db ' .. h.shell_quote(dir .. '/h.db') .. [[ -e "
      assert(herald.endpoints.put{Id = 'ep-42', ChannelType = 'EMAIL', Address = 'a@example.com'})
      assert(herald.endpoints.put{Id = 'ep-7', ChannelType = 'EMAIL', Address = 'b@example.com'})"]])
    assert.are.equal(0, code, err)
  end

  -- Sends n pipelined requests for path in one write; returns the request ids answered, the
  -- events of those ids in the store right after the last answer, and the journal's size.
  local function burst(s, paths, db)
    local list = {}
    for i, p in ipairs(paths) do list[i] = string.format('b"GET %s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"', p) end
    return py(s.port, PIPELINE .. string.format([[
import sqlite3, os
DB = %q
data, ids = pipeline([]] .. table.concat(list, ', ') .. [[])
c = sqlite3.connect(DB)
stored = sum(c.execute("SELECT count(*) FROM events WHERE event_id = ?", (i,)).fetchone()[0] for i in ids)
print("answered\t%%d" %% data.count(b"HTTP/1.1 302"))
print("stored\t%%d" %% stored)
print("journal\t%%s" %% (os.path.getsize(DB + "-hits") if os.path.exists(DB + "-hits") else "none"))
for i in ids: print("id\t" + i)
]], db or (s.dir .. '/h.db')))
  end

  local function count(dir, sql)
    local out = sh('sqlite3 ' .. h.shell_quote(dir .. '/h.db') .. ' ' .. h.shell_quote(sql))
    return tonumber(out:match('%d+'))
  end

  it('keeps the answered hits of a killed server and stores them at the next start', function()
    local s = start_serve('--journal-fold-ms 600000')
    seed(s.dir)
    local base = 'http://127.0.0.1:' .. s.port
    local paths = {}
    for i = 1, 40 do
      local t = ids { base = base, url = 'https://example.com/' .. i, message_id = 'msg-' .. i,
                      endpoint = i % 2 == 0 and 'ep-42' or 'ep-7' }
      paths[i] = (tracking.click_url(t):gsub('^http://[^/]+', ''))
    end
    paths[41] = (tracking.open_url(ids { base = base, message_id = 'msg-open' }):gsub('^http://[^/]+', ''))
    local kv = burst(s, paths)
    assert.are.equal('40', kv.answered)            -- and one open pixel
    assert.are.equal(41, #kv.id)
    assert.are.equal('0', kv.stored)               -- not in the store yet: in the journal
    assert.is_true(tonumber(kv.journal) > 0)
    os.execute('kill -KILL ' .. s.pid)
    h.wait_for(function() return h.read(s.dir .. '/rc') end, 10000, 'the killed server to exit')
    -- a record the killed server was writing when it died: cut short, ignored
    local f = assert(io.open(s.dir .. '/h.db-hits', 'ab'))
    f:write('\200\0\0\0garbage')
    f:close()

    local again = start_serve('', nil, s.dir)
    local err = h.read(again.dir .. '/err') or ''
    assert.matches('41 tracking hits of a server that stopped unexpectedly %(and the incomplete record', err)
    local where = {}
    for i, id in ipairs(kv.id) do where[i] = "'" .. id .. "'" end
    local list = table.concat(where, ',')
    assert.are.equal(41, count(s.dir, 'SELECT count(*) FROM events WHERE event_id IN (' .. list .. ')'))
    assert.are.equal(40, count(s.dir, "SELECT count(*) FROM events WHERE event_type = '_email.click'"))
    assert.are.equal(1, count(s.dir, "SELECT count(*) FROM events WHERE event_type = '_email.open'"))
    assert.are.equal(20, count(s.dir, "SELECT count(DISTINCT json_extract(attributes, '$.url')) FROM events "
      .. "WHERE endpoint_id = 'ep-42' AND event_type = '_email.click'"))
    -- the journal is emptied once stored, and removed when the server stops
    assert.are.equal(0, #(h.read(s.dir .. '/h.db-hits') or 'x'))
    assert.are.equal(0, (stop_serve(again)))
    assert.is_nil(io.open(s.dir .. '/h.db-hits', 'rb'))
  end)

  it('stores journaled hits when stopped, and goes straight to the store with --journal-min-hits 0', function()
    local s = start_serve('--journal-fold-ms 600000')
    seed(s.dir)
    local base = 'http://127.0.0.1:' .. s.port
    local paths = {}
    for i = 1, 30 do paths[i] = (tracking.click_url(ids { base = base, url = 'https://example.com/' .. i })
      :gsub('^http://[^/]+', '')) end
    local kv = burst(s, paths)
    assert.are.equal('30', kv.answered)
    assert.are.equal('0', kv.stored)
    assert.are.equal(0, (stop_serve(s)))
    assert.are.equal(30, count(s.dir, "SELECT count(*) FROM events WHERE event_type = '_email.click'"))
    assert.is_nil(io.open(s.dir .. '/h.db-hits', 'rb'))

    local direct = start_serve('--journal-min-hits 0', nil, s.dir)
    kv = burst(direct, paths)
    assert.are.equal('30', kv.answered)
    assert.are.equal('30', kv.stored)              -- in the store before they were answered
    assert.are.equal('none', kv.journal)
    assert.are.equal(0, (stop_serve(direct)))
  end)

  it('leaves the journal to the first server on a database; a second stores before answering', function()
    local first = start_serve('--journal-fold-ms 600000')
    seed(first.dir)
    local second = start_serve('--journal-fold-ms 600000', nil, nil, first.dir .. '/h.db')
    local paths = {}
    for i = 1, 30 do paths[i] = (tracking.click_url(ids { base = 'http://x', url = 'https://example.com/' .. i })
      :gsub('^http://[^/]+', '')) end
    local kv = burst(second, paths, first.dir .. '/h.db')
    assert.are.equal('30', kv.answered)
    assert.are.equal('30', kv.stored)    -- the first server holds the journal
    assert.are.equal('0', kv.journal)
    kv = burst(first, paths)
    assert.are.equal('30', kv.answered)
    assert.are.equal('0', kv.stored)
    assert.is_true(tonumber(kv.journal) > 0)
    assert.are.equal(0, (stop_serve(second)))
    assert.are.equal(0, (stop_serve(first)))
    assert.are.equal(60, count(first.dir, "SELECT count(*) FROM events WHERE event_type = '_email.click'"))
  end)
end)

describe('herald serve lifecycle', function()
  it('reports its counters when stopped by SIGTERM', function()
    local s = start_serve()
    local base = 'http://127.0.0.1:' .. s.port
    sh('curl -s -o /dev/null ' .. h.shell_quote(tracking.open_url(ids { base = base })))
    sh('curl -s -o /dev/null ' .. h.shell_quote(tracking.click_url(ids { base = base, url = 'http://a.example/' })))
    sh('curl -s -o /dev/null ' .. base .. '/t/c/bogus')
    local rc, out = stop_serve(s)
    assert.are.equal(0, rc)
    assert.matches('stopped after 3 requests %(1 opens, 1 clicks, 0 unsubscribes, 1 rejected tokens%)', out)
  end)

  it('signs with a key kept in the database, shared by every process on it', function()
    local s = start_serve('', 'HERALD_TRACKING_KEY=')
    local db = s.dir .. '/h.db'
    local out, code, err = h.herald('--db ' .. h.shell_quote(db) ..
      [[ -e "print(herald.tracking.open_url{campaign='c', endpoint='e', base='http://127.0.0.1:]] .. s.port .. [['})"]],
      { env = { HERALD_TRACKING_KEY = '' } })
    assert.are.equal(0, code, err)
    local url = out:match('%S+')
    assert.are.equal('200', sh('curl -s -o /dev/null -w "%{http_code}" ' .. h.shell_quote(url)))
    -- the spec's own key is not the database's
    local other = tracking.open_url(ids { base = 'http://127.0.0.1:' .. s.port })
    assert.are.equal('400', sh('curl -s -o /dev/null -w "%{http_code}" ' .. h.shell_quote(other)))
    assert.are.equal(0, (stop_serve(s)))
  end)

  it('closes connections over --max-connections at once', function()
    local s = start_serve('--max-connections 1')
    local kv = py(s.port, [[
import socket, http.client
a = http.client.HTTPConnection(HOST, PORT, timeout=5)
a.request("GET", "/x"); a.getresponse().read()
b = socket.create_connection((HOST, PORT), timeout=5)
print("refused\t%r" % b.recv(100))
a.close()
import time; time.sleep(0.2)
c = http.client.HTTPConnection(HOST, PORT, timeout=5)
c.request("GET", "/x"); print("later\t%d" % c.getresponse().status)
]])
    assert.are.equal("b''", kv.refused)
    assert.are.equal('404', kv.later)
    assert.are.equal(0, (stop_serve(s)))
  end)

  it('refuses bad options', function()
    local _, code, err = h.herald('serve --listen nowhere')
    assert.are.equal(1, code)
    assert.matches('listen: expected HOST:PORT, got nowhere', err)
    _, code, err = h.herald('serve --max-body lots')
    assert.are.equal(2, code)
    assert.matches('--max-body needs a whole number', err, 1, true)
  end)
end)

describe('herald.core.server in-process', function()
  it('serves on the loop, stores hits as events, passes them to on_hit and stops', function()
    local core = require 'herald.core'
    local saved_db = core.db_path()
    local dir = h.tmpdir()
    core.set_db_path(dir .. '/h.db')
    assert(require('herald').endpoints.put { Id = 'ep-42', ChannelType = 'EMAIL', Address = 'ep42@example.com' })
    local hits = {}
    local srv = assert(server.start { listen = '127.0.0.1:0', key = KEY, on_hit = function(hit)
      hits[#hits + 1] = hit
      if hit.kind == 'click' then error('recorder down') end
    end })
    local port = srv:port()
    assert.is_true(port > 0)
    assert.are.equal('127.0.0.1:' .. port, srv:address())
    local base = 'http://127.0.0.1:' .. port
    -- the client runs in the background while this task sleeps, so the loop serves it
    local open = tracking.open_url(ids { base = base })
    local click = tracking.click_url(ids { base = base, url = 'https://example.com/' })
    os.execute('(curl -s -o /dev/null ' .. h.shell_quote(open) .. ' ' .. h.shell_quote(open) ..
      '; curl -s -o /dev/null ' .. h.shell_quote(click) .. '; curl -s -o /dev/null ' .. base ..
      '/t/o/forged; echo done > ' .. h.shell_quote(dir .. '/done') .. ') > /dev/null 2>&1 &')
    h.wait_for(function() return h.read(dir .. '/done') end, 20000, 'the clients')
    local st = srv:stats()
    assert.are.equal(2, st.opens)
    assert.are.equal(1, st.clicks)
    assert.are.equal(1, st.rejected)
    assert.are.equal(4, st.requests)
    assert.are.equal(1, st.client_errors)
    assert.are.equal(3, st.connections)
    assert.are.equal(1, st.record_failures) -- the click's on_hit raised; the redirect still went out
    assert.are.equal(3, #hits)
    assert.are.equal('open', hits[1].kind)
    assert.are.equal('click', hits[3].kind)
    assert.are.equal('https://example.com/', hits[3].url)
    assert.matches('^curl/', hits[1].user_agent)
    assert.are.equal(36, #hits[1].request_id)
    hits[1].user_agent, hits[1].request_id = nil, nil
    assert.are.same({ kind = 'open', app = 'default', campaign = 'spring', run = 7, treatment = 1,
      endpoint = 'ep-42', message_id = 'msg-42-7' }, hits[1])
    -- every hit was stored, the click with its link, whatever on_hit did
    local rows = assert(require('herald').db.query(
      "SELECT event_type, json_extract(attributes, '$.url') AS url FROM events ORDER BY seq"))
    assert.are.same({ { event_type = '_email.open' }, { event_type = '_email.open' },
      { event_type = '_email.click', url = 'https://example.com/' } }, rows)
    srv:stop()
    srv:stop()
    core.set_db_path(saved_db)
    assert.has_error(function() srv:stats() end, 'the server is stopped')
  end)

  it('reports a port in use and a bad address as nil, err', function()
    local a = assert(server.start { listen = '127.0.0.1:0', key = KEY })
    local b, err = server.start { listen = a:address(), key = KEY }
    assert.is_nil(b)
    assert.matches('address already in use', err)
    a:stop()
    local c, err2 = server.start { listen = '300.1.1.1:80', key = KEY }
    assert.is_nil(c)
    assert.matches('300.1.1.1 is not an IP address', err2)
  end)

  it('mints tokens that verify, and refuses bad fields by name', function()
    local url = tracking.click_url(ids { url = 'https://example.com/x' })
    local t = assert(tracking.verify(token_of(url), 'click', { key = KEY }))
    assert.are.same({ kind = 'click', app = 'default', campaign = 'spring', run = 7, treatment = 1,
      endpoint = 'ep-42', message_id = 'msg-42-7', url = 'https://example.com/x' }, t)
    local none, err = tracking.verify(token_of(url), 'open', { key = KEY })
    assert.is_nil(none)
    assert.are.equal('invalid tracking token', err)
    local u, e = tracking.click_url(ids { url = 'javascript:alert(1)' })
    assert.is_nil(u)
    assert.matches('url must be http%(s%)', e)
    u, e = tracking.click_url(ids { url = 'https://example.com/a b' })
    assert.is_nil(u)
    assert.matches('without spaces', e)
    u, e = tracking.open_url(ids { endpoint = '' })
    assert.is_nil(u)
    assert.matches('endpoint is required', e)
    u, e = tracking.open_url(ids { campaign = string.rep('c', 300) })
    assert.is_nil(u)
    assert.matches('campaign is longer than 256 bytes', e)
    assert.has_error(function() tracking.open_url(ids { key = 'short' }) end,
      'tracking key: needs at least 16 bytes')
  end)
end)
