-- Real servers for specs and benchmarks, each on a free loopback port in its own temporary
-- directory: nginx (HTTP/1.1 and HTTP/2 over TLS with a test CA), postfix's smtp-sink, and an
-- aiosmtpd server that keeps messages. start_* returns a server table with :stop().
local S = {}

local here = debug.getinfo(1, 'S').source:match('^@(.*)/[^/]*$') or '.'

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true
end

local function capture(cmd)
  local p = assert(io.popen(cmd, 'r'))
  local out = p:read('a')
  p:close()
  return out
end

local function write(path, content)
  local f = assert(io.open(path, 'wb'))
  f:write(content)
  f:close()
end

local function read(path)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local s = f:read('a')
  f:close()
  return s
end
S.read = read

function S.tmpdir(tag)
  return (capture('mktemp -d /tmp/herald-' .. (tag or 'server') .. '.XXXXXX'):gsub('%s+$', ''))
end

-- A loopback port nobody listens on (the kernel picks it; a race with another process taking
-- it before the server binds is possible but rare).
function S.free_port()
  local out = capture([[/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']])
  return assert(tonumber(out), 'cannot find a free port')
end

-- Waits until something accepts connections on port (up to ~10 s).
function S.wait_port(port)
  return sh('bash -c ' .. q('for i in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/' .. port
    .. ') 2>/dev/null && exit 0; sleep 0.05; done; exit 1'))
end

function S.have(cmd)
  return sh('command -v ' .. q(cmd) .. ' >/dev/null 2>&1 || test -x ' .. q(cmd))
end

-- A test CA and a server certificate for localhost / 127.0.0.1 (EC keys: fast to make).
function S.make_ca(dir)
  local script = [[
set -e
cd ]] .. q(dir) .. [[

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
  -out ca.pem -days 2 -subj /CN=herald-test-ca >/dev/null 2>&1
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key \
  -out server.csr -subj /CN=localhost >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
  -days 2 -extfile ext.cnf >/dev/null 2>&1
]]
  assert(sh('bash -c ' .. q(script)), 'openssl could not make the test CA')
  return { ca = dir .. '/ca.pem', cert = dir .. '/server.pem', key = dir .. '/server.key' }
end

local function kill_pid(pid, sig)
  if pid then sh('kill -' .. (sig or 'TERM') .. ' ' .. pid .. ' 2>/dev/null') end
end

-- Waits for pid to exit (up to ~5 s), then kills it for good.
local function reap(pid)
  if not pid then return end
  sh('for i in $(seq 100); do kill -0 ' .. pid .. ' 2>/dev/null || exit 0; sleep 0.05; done; kill -KILL '
    .. pid .. ' 2>/dev/null; exit 0')
end

-- Starts cmd in the background with its output in log; returns its pid.
local function spawn(cmd, log)
  local out = capture('(' .. cmd .. ') >' .. q(log) .. ' 2>&1 & echo $!')
  return assert(tonumber(out), 'cannot start: ' .. cmd)
end

-- nginx on two ports: `port` (HTTP/1.1 cleartext) and `tls_port` (HTTP/1.1 and HTTP/2 over TLS
-- with a test CA at server.ca). Locations:
--   /ok      200 "ok"                      /echo    200 with the request body
--   /limited 429 with Retry-After: 7       /fail    500
--   /limited-long 429 with a Retry-After of more seconds than milliseconds can hold
--   /limited-1s 429 with Retry-After: 1   /busy-1s 503 with Retry-After: 1
--   /slow    200 after 2 s                 /headers 200 echoing X-Test and Idempotency-Key
-- The access log (server.log) has one line per request:
--   connection serial, requests on it, protocol, method, uri, status, request length,
--   Idempotency-Key, time the request ended (seconds since the epoch, to the ms).
-- opts.workers (default 1), opts.tls (default true), opts.locations (more location blocks),
-- opts.http (directives of the http block, such as a limit_req_zone).
function S.start_nginx(opts)
  opts = opts or {}
  local dir = S.tmpdir('nginx')
  local port, tls_port = S.free_port(), S.free_port()
  local certs = opts.tls ~= false and S.make_ca(dir) or nil
  sh('mkdir -p ' .. q(dir .. '/tmp'))
  local locations = [[
      location = /ok { return 200 "ok\n"; }
      location = /short-keepalive { keepalive_timeout 1s; return 200 "ok\n"; }
      location = /echo { echo_read_request_body; echo_request_body; }
      location = /limited { add_header Retry-After 7 always; return 429 "slow down\n"; }
      location = /limited-1s { add_header Retry-After 1 always; return 429 "slow down\n"; }
      location = /busy-1s { add_header Retry-After 1 always; return 503 "busy\n"; }
      location = /limited-long { add_header Retry-After 99999999999999999999 always; return 429 "later\n"; }
      location = /fail { return 500 "broken\n"; }
      location = /slow { echo_sleep 2; echo "done"; }
      location = /headers { add_header X-Seen-Key $http_idempotency_key always; return 200 "$http_x_test"; }
]] .. (opts.locations or '')
  local tls_server = ''
  if certs then
    tls_server = string.format([[
    server {
      listen 127.0.0.1:%d ssl http2;
      ssl_certificate %s;
      ssl_certificate_key %s;
      http2_max_concurrent_streams 128;
%s    }
]], tls_port, certs.cert, certs.key, locations)
  end
  local conf = string.format([[
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes %d;
pid %s/nginx.pid;
error_log %s/error.log warn;
%s
events { worker_connections 4096; }
http {
  log_format herald '$connection $connection_requests $server_protocol $request_method $uri $status $request_length $http_idempotency_key $msec';
  access_log %s;
  client_body_temp_path %s/tmp/body;
  proxy_temp_path %s/tmp/proxy;
  fastcgi_temp_path %s/tmp/fastcgi;
  uwsgi_temp_path %s/tmp/uwsgi;
  scgi_temp_path %s/tmp/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_buffer_size 64k;
%s
  server {
    listen 127.0.0.1:%d;
%s  }
%s}
]], opts.workers or 1, dir, dir, (capture('id -u'):match('^0') and 'user root;' or ''),
    opts.access_log == false and 'off' or (dir .. '/access.log herald'),
    dir, dir, dir, dir, dir, opts.http or '', port, locations, tls_server)
  write(dir .. '/nginx.conf', conf)
  local ok = sh('nginx -p ' .. q(dir) .. ' -c ' .. q(dir .. '/nginx.conf') .. ' -e ' .. q(dir .. '/error.log')
    .. ' >' .. q(dir .. '/start.log') .. ' 2>&1')
  assert(ok, 'nginx did not start: ' .. (read(dir .. '/start.log') or '') .. (read(dir .. '/error.log') or ''))
  assert(S.wait_port(port), 'nginx is not listening on ' .. port)
  local server = {
    dir = dir, port = port, tls_port = tls_port, ca = certs and certs.ca,
    url = 'http://127.0.0.1:' .. port, tls_url = 'https://localhost:' .. tls_port,
    log = dir .. '/access.log',
  }
  -- Access log lines as tables (nginx writes them when a request ends).
  function server:requests()
    local rows = {}
    for line in (read(self.log) or ''):gmatch('[^\n]+') do
      local conn, n, proto, method, uri, status, len, key, at = line:match(
        '^(%d+) (%d+) (%S+) (%S+) (%S+) (%d+) (%d+) (%S*) ([%d%.]+)$')
      if conn then
        rows[#rows + 1] = { connection = tonumber(conn), nth = tonumber(n), protocol = proto,
                            method = method, uri = uri, status = tonumber(status),
                            length = tonumber(len), key = key ~= '-' and key or nil,
                            time = tonumber(at) }
      end
    end
    return rows
  end
  -- Requests to uri in the access log, and how many distinct Idempotency-Keys they carried.
  function server:key_counts(uri)
    local n, distinct, seen = 0, 0, {}
    for _, r in ipairs(self:requests()) do
      if r.uri == uri then
        n = n + 1
        if r.key and not seen[r.key] then
          seen[r.key] = true
          distinct = distinct + 1
        end
      end
    end
    return n, distinct
  end
  function server:clear_log()
    write(self.log, '')
    sh('kill -USR1 $(cat ' .. q(self.dir .. '/nginx.pid') .. ') 2>/dev/null')
  end
  function server:stop()
    local pid = tonumber(read(self.dir .. '/nginx.pid') or '')
    kill_pid(pid, 'QUIT')
    reap(pid)
  end
  return server
end

-- A server process started with cmd (its output in log), listening on port: the server
-- table, its url scheme://HOST:port (host default 127.0.0.1), and stop().
local function spawned(name, cmd, dir, port, log, scheme, host)
  local pid = spawn(cmd, log)
  assert(S.wait_port(port), name .. ' is not listening: ' .. (read(log) or ''))
  local server = { dir = dir, port = port, pid = pid, url = scheme .. '://' .. (host or '127.0.0.1') .. ':' .. port }
  function server:stop()
    kill_pid(self.pid)
    reap(self.pid)
  end
  return server
end

-- postfix's smtp-sink: accepts everything and keeps nothing. opts.backlog (default 1024),
-- opts.data_delay (seconds before it answers DATA: a mail that stays on the wire that long).
function S.start_smtp_sink(opts)
  opts = opts or {}
  local dir = S.tmpdir('smtp-sink')
  local port = S.free_port()
  local user = capture('id -u'):match('^0') and '-u nobody ' or ''
  local delay = opts.data_delay and ('-w ' .. opts.data_delay .. ' ') or ''
  return spawned('smtp-sink', 'exec smtp-sink ' .. user .. delay .. '-c 127.0.0.1:' .. port .. ' ' .. (opts.backlog or 1024),
    dir, port, dir .. '/sink.log', 'smtp')
end

-- An aiosmtpd server that keeps messages as DIR/N.eml (+ N.json envelopes); recipients
-- tempfail*@ get 451 and reject*@ get 550 (and the refusals at RCPT that are not the mailbox's,
-- by local part: see mailstore.py). opts.tls = 'starttls' (required), 'starttls-optional'
-- (offered, not required) or 'smtps' (with a test CA at server.ca), opts.auth =
-- 'user:password' (AUTH required). Each envelope records whether its session used STARTTLS.
function S.start_mailstore(opts)
  opts = opts or {}
  local dir = S.tmpdir('mailstore')
  local port = S.free_port()
  sh('mkdir -p ' .. q(dir .. '/mail'))
  local extra, certs = '', nil
  if opts.tls then
    certs = S.make_ca(dir)
    extra = ' --' .. opts.tls .. ' ' .. q(certs.cert) .. ' ' .. q(certs.key)
  end
  if opts.auth then extra = extra .. ' --auth ' .. q(opts.auth) end
  local server = spawned('aiosmtpd', 'exec /usr/bin/python3 ' .. q(here .. '/mailstore.py') .. ' ' .. port .. ' '
    .. q(dir .. '/mail') .. extra, dir, port, dir .. '/server.log', opts.tls == 'smtps' and 'smtps' or 'smtp',
    opts.tls and 'localhost' or nil)
  server.ca = certs and certs.ca
  -- Message n as {raw =, envelope = json text}, or nil when not (yet) stored.
  function server:message(n)
    local raw = read(self.dir .. '/mail/' .. n .. '.eml')
    if not raw then return nil end
    return { raw = raw, envelope = read(self.dir .. '/mail/' .. n .. '.json') }
  end
  function server:count()
    local n = 0
    while read(self.dir .. '/mail/' .. (n + 1) .. '.eml') do n = n + 1 end
    return n
  end
  return server
end

-- The fault SMTP server (faultsmtp.py): no STARTTLS, AUTH offered; opts.auth_reply answers
-- AUTH with that line, opts.idle (seconds) closes idle sessions with a 421. reject*@ recipients
-- get 550 at RCPT, refuse*@ ones 554 after DATA. server:commands() -> the log lines so far.
function S.start_fault_smtp(opts)
  opts = opts or {}
  local dir = S.tmpdir('faultsmtp')
  local port = S.free_port()
  local extra = ''
  if opts.auth_reply then extra = extra .. ' --auth-reply ' .. q(opts.auth_reply) end
  if opts.idle then extra = extra .. ' --idle ' .. q(opts.idle) end
  local log = dir .. '/commands.log'
  local server = spawned('faultsmtp', 'exec /usr/bin/python3 ' .. q(here .. '/faultsmtp.py') .. ' ' .. port .. ' '
    .. q(log) .. extra, dir, port, dir .. '/server.log', 'smtp')
  function server:commands()
    local lines = {}
    for line in (read(log) or ''):gmatch('[^\n]+') do lines[#lines + 1] = line end
    return lines
  end
  return server
end

-- The fault HTTP server (faulthttp.py): /garbage answers with something that is not HTTP.
function S.start_fault_http()
  local dir = S.tmpdir('faulthttp')
  local port = S.free_port()
  return spawned('faulthttp', 'exec /usr/bin/python3 ' .. q(here .. '/faulthttp.py') .. ' ' .. port,
    dir, port, dir .. '/server.log', 'http')
end

-- A private Postfix instance (its own configuration, queue and log under a temporary
-- directory; needs root, which hands the queue to the postfix user): it accepts mail from
-- 127.0.0.1 on server.url, relays every recipient to opts.relay_port and delivers mail for
-- example.com (bounces to a sender there) to the maildir server.maildir. Postfix writes the
-- delivery status notifications itself: 5xx from the relay bounces at once; a 4xx defers and,
-- after delay_warning_time (opts.delay_warning, default off), sends a delay notice.
function S.start_postfix(opts)
  local dir = S.tmpdir('postfix')
  local port = S.free_port()
  for _, d in ipairs({ 'etc', 'spool', 'data', 'mail' }) do sh('mkdir -p ' .. q(dir .. '/' .. d)) end
  assert(sh('chmod 755 ' .. q(dir) .. ' && chown postfix ' .. q(dir .. '/data') .. ' && chown nobody ' .. q(dir .. '/mail')),
    'start_postfix needs root (chown to postfix and nobody)')
  write(dir .. '/etc/main.cf', string.format([[
compatibility_level = 3.6
queue_directory = %s/spool
data_directory = %s/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = %s/maillog
maillog_file_prefixes = %s
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mail.example.com
mydomain = example.com
myorigin = example.com
mydestination =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:%d
smtp_dns_support_level = disabled
virtual_mailbox_domains = example.com
virtual_mailbox_base = %s/mail
virtual_mailbox_maps = static:Maildir/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
alias_maps =
alias_database =
smtputf8_enable = no
biff = no
notify_classes =
service_throttle_time = 1s
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
delay_warning_time = %s
]], dir, dir, dir, dir, opts.relay_port, dir, opts.delay_warning or '0h'))
  local services = {
    'pickup unix n - n 60 1 pickup', 'cleanup unix n - n - 0 cleanup', 'qmgr unix n - n 300 1 qmgr',
    'rewrite unix - - n - - trivial-rewrite', 'bounce unix - - n - 0 bounce', 'defer unix - - n - 0 bounce',
    'trace unix - - n - 0 bounce', 'verify unix - - n - 1 verify', 'flush unix n - n 1000? 0 flush',
    'proxymap unix - - n - - proxymap', 'smtp unix - - n - - smtp', 'relay unix - - n - - smtp',
    'showq unix n - n - - showq', 'error unix - - n - - error', 'retry unix - - n - - error',
    'discard unix - - n - - discard', 'virtual unix - n n - - virtual', 'anvil unix - - n - 1 anvil',
    'scache unix - - n - 1 scache', 'postlog unix-dgram n - n - 1 postlogd',
  }
  write(dir .. '/etc/master.cf', '127.0.0.1:' .. port .. ' inet n - n - - smtpd\n' .. table.concat(services, '\n') .. '\n')
  local ok = sh('postfix -c ' .. q(dir .. '/etc') .. ' start >' .. q(dir .. '/start.log') .. ' 2>&1')
  assert(ok, 'postfix did not start: ' .. (read(dir .. '/start.log') or '') .. (read(dir .. '/maillog') or ''))
  assert(S.wait_port(port), 'postfix is not listening: ' .. (read(dir .. '/maillog') or ''))
  local server = { dir = dir, port = port, url = 'smtp://127.0.0.1:' .. port,
                   maildir = dir .. '/mail/Maildir', log = dir .. '/maillog' }
  -- The names in the maildir's new/ (Postfix creates the maildir on its first delivery).
  function server:new_mail()
    local names = {}
    local p = io.popen('ls -1 ' .. q(self.maildir .. '/new') .. ' 2>/dev/null')
    for line in p:lines() do names[#names + 1] = line end
    p:close()
    return names
  end
  function server:stop()
    sh('postfix -c ' .. q(self.dir .. '/etc') .. ' stop >/dev/null 2>&1')
  end
  return server
end

-- The provider emulator (tests/fixtures/provider_emulator.py) behind nginx: plain HTTP on
-- server.url for the token endpoint, FCM, SMS and webhooks, HTTP/2 over TLS on server.tls_url
-- for APNs (the emulator refuses requests that did not arrive over HTTP/2). Keys: an RSA
-- service account (server.service_account, a JSON file) and an APNs P-256 key
-- (server.apns_key). server.direct_url reaches the emulator without nginx (Baidu signs the
-- URL the client addressed). server:requests() -> the emulator's log as tables.
function S.start_emulator()
  local dir = S.tmpdir('emulator')
  local script = [[
set -e
cd ]] .. q(dir) .. [[

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key >/dev/null 2>&1
openssl pkey -in sa.key -pubout -out sa.pub >/dev/null 2>&1
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out apns.key >/dev/null 2>&1
openssl pkey -in apns.key -pubout -out apns.pub >/dev/null 2>&1
]]
  assert(sh('bash -c ' .. q(script)), 'openssl could not make the emulator keys')
  local port = S.free_port()
  local pid = spawn('exec /usr/bin/python3 ' .. q(here .. '/../fixtures/provider_emulator.py') .. ' ' .. port
    .. ' ' .. q(dir .. '/requests.log') .. ' ' .. q(dir .. '/sa.pub') .. ' ' .. q(dir .. '/apns.pub'),
    dir .. '/emulator.log')
  assert(S.wait_port(port), 'the emulator is not listening: ' .. (read(dir .. '/emulator.log') or ''))
  local ng = S.start_nginx { locations = string.format([[
      location /emu/ {
        proxy_pass http://127.0.0.1:%d/;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Proto $server_protocol;
        proxy_set_header Host $http_host;
      }
]], port) }
  local key = read(dir .. '/sa.key')
  local sa = dir .. '/service-account.json'
  write(sa, require('herald.json').encode {
    type = 'service_account', project_id = 'demo-project', private_key_id = 'k1',
    private_key = key, client_email = 'herald@demo-project.iam.gserviceaccount.com',
    token_uri = ng.url .. '/emu/token',
  })
  local server = { dir = dir, pid = pid, nginx = ng, url = ng.url .. '/emu', tls_url = ng.tls_url .. '/emu',
                   direct_url = 'http://127.0.0.1:' .. port,
                   ca = ng.ca, service_account = sa, apns_key = dir .. '/apns.key',
                   team_id = 'TEAM123456', key_id = 'KEY1234567', topic = 'com.example.app',
                   project_id = 'demo-project' }
  function server:requests()
    local rows = {}
    local json = require('herald.json')
    for line in (read(self.dir .. '/requests.log') or ''):gmatch('[^\n]+') do rows[#rows + 1] = json.decode(line) end
    return rows
  end
  function server:stop()
    ng:stop()
    kill_pid(self.pid)
    reap(self.pid)
  end
  return server
end

return S
