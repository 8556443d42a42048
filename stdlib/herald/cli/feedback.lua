-- `herald feedback`: bounces (RFC 3464 delivery status notifications) and complaints (RFC 5965
-- feedback-loop reports) that arrive as mail, recorded as the status webhook records them.
local feedback = require 'herald.core.feedback'
local json = require 'herald.json'
local read = require('herald.channels.util').read_file

local M = {}

M.usage = [[
usage: herald feedback [--json] MAILDIR_OR_FILE...

Reads bounce and complaint reports and records them against the messages herald sent:
  a maildir (a directory with new/): every message in new/; a message that was recorded or
           needs nothing (IGNORED) moves to cur/ (flag S), the others stay in new/;
  a file:  one message (.eml), left where it is.
A delivery status notification (multipart/report; report-type=delivery-status) whose
recipient failed or was delayed with Status 5.x.x is a hard bounce (_email.hardbounce, the
endpoint becomes INACTIVE), with 4.x.x a soft bounce (_email.softbounce); Action delivered
records _email.delivered. A feedback report (report-type=feedback-report) of type abuse,
fraud, virus or other is a complaint (_email.complaint, OptOut ALL). Events carry
campaign_id, treatment_id, campaign_activity_id and message_id. The original message is
found through its X-Herald-Message-Id header, else its Message-ID (runtime/feedback.h).

One line per message: PATH RESULT details, RESULT one of
  RECORDED   the event type, endpoint and message id
  IGNORED    a well-formed report that asks for nothing (relayed, not-spam, ...)
  UNMATCHED  no message herald sent matches (the mail stays)
  MALFORMED  not a delivery status or feedback report; the reason names the part or field
  BUSY       the store was busy (another process held it past the busy timeout,
             HERALD_BUSY_TIMEOUT_MS): nothing recorded, the mail stays, and herald feedback
             stops there; what it did not read stays where it is too, for the next run
options:
  --json   one JSON object per line instead ({path, result, event_type, endpoint_id, ...})
Exit status: 0 when every message was recorded or ignored, 1 when any was unmatched or
malformed, 2 for a usage error or an unreadable path, 75 (EX_TEMPFAIL, "try again later")
when the store was busy: run it again once the other process is done.
]]

local function fail(fmt, ...)
  io.stderr:write('herald feedback: ' .. string.format(fmt, ...) .. '\n')
  return 2
end

-- sysexits.h's EX_TEMPFAIL: a temporary failure, the same run later may succeed
local EXIT_BUSY = 75

local function is_dir(path)
  return feedback.entries(path) ~= nil
end

local function report(path, r, as_json)
  if as_json then
    local o = { path = path }
    for k, v in pairs(r) do o[k] = v end
    io.write(json.encode(o), '\n')
    return
  end
  local detail
  if r.result == 'RECORDED' then
    -- no endpoint: the address went on the application's opt-out list (a complaint of a direct
    -- mail to an address no endpoint has)
    local who = (r.endpoint_id or '') ~= '' and ('endpoint ' .. r.endpoint_id) or 'address on the opt-out list'
    detail = string.format('%s %s message %s: %s', r.event_type, who, r.message_id, r.reason or '')
  elseif r.result == 'UNMATCHED' and r.message_id then
    detail = 'message ' .. r.message_id .. ': ' .. (r.reason or '')
  elseif r.result == 'BUSY' then
    detail = 'the store is busy (' .. (r.reason or '') .. '): nothing recorded, the mail stays'
  else
    detail = r.reason or ''
  end
  io.write(string.format('%s %s %s\n', path, r.result, detail))
end

function M.run(args)
  local paths, as_json = {}, false
  for _, a in ipairs(args) do
    if a == '--json' then as_json = true
    elseif a:sub(1, 2) == '--' then return fail('unknown option %s (see herald feedback --help)', a)
    else paths[#paths + 1] = a end
  end
  if #paths == 0 then return fail('give at least one maildir or message file') end
  local counts = { RECORDED = 0, IGNORED = 0, UNMATCHED = 0, MALFORMED = 0, BUSY = 0 }
  local function one(path, text)
    local r = feedback.process(text)
    counts[r.result] = counts[r.result] + 1
    report(path, r, as_json)
    return r.result == 'RECORDED' or r.result == 'IGNORED'
  end
  for _, p in ipairs(paths) do
    -- the next message would wait out the busy timeout again, most likely for nothing
    if counts.BUSY > 0 then break end
    if is_dir(p) then
      local new = p .. '/new'
      local names, err = feedback.entries(new)
      if not names then return fail('%s is not a maildir (%s)', p, err) end
      if not is_dir(p .. '/cur') then return fail('%s is not a maildir: no cur/', p) end
      for _, name in ipairs(names) do
        if counts.BUSY > 0 then break end
        local path = new .. '/' .. name
        local text, rerr = read(path)
        if not text then return fail('%s', rerr) end
        if one(path, text) then
          -- maildir: a message that has been read moves to cur/ with its info (":2,S", seen)
          local base = name:gsub(':2,.*$', '')
          local ok, merr = os.rename(path, p .. '/cur/' .. base .. ':2,S')
          if not ok then return fail('moving %s to cur/: %s', path, merr) end
        end
      end
    else
      local text, err = read(p)
      if not text then return fail('%s', err) end
      one(p, text)
    end
  end
  if not as_json then
    io.stderr:write(string.format('herald feedback: %d recorded, %d ignored, %d unmatched, %d malformed\n',
      counts.RECORDED, counts.IGNORED, counts.UNMATCHED, counts.MALFORMED))
  end
  if counts.BUSY > 0 then
    io.stderr:write('herald feedback: stopped: the store is busy (another process holds it past the busy '
      .. 'timeout); the mail not recorded stays where it is: run herald feedback again later\n')
    return EXIT_BUSY
  end
  return (counts.UNMATCHED + counts.MALFORMED > 0) and 1 or 0
end

return M
