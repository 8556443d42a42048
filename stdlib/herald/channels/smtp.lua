-- EMAIL over SMTP/SMTPS: one MIME message per endpoint (text + HTML alternatives, From, extra
-- Headers, List-Unsubscribe with the One-Click POST header, a Message-ID from the message id),
-- at most profile.sessions at once (the channel's, shared by every batch and delivery lane
-- that sends through it), so as many connections are opened and then reused. A 5xx reply is
-- permanent; 550/551/553 at RCPT refusing the mailbox (no such user) is a hard bounce and the
-- endpoint goes INACTIVE; one refusing on policy (relaying denied) is systemic.
local http = require 'herald.core.http'
local task = require 'herald.core.task'
local template = require 'herald.template'
local util = require 'herald.channels.util'

local smtp = {}
smtp.__index = smtp

function smtp.new(profile)
  local self = setmetatable({ profile = profile, limit = http.limit(profile.sessions or 10) }, smtp)
  if profile.list_unsubscribe then
    -- What its tags give is percent-encoded (its own text stays as written): an endpoint's
    -- value is one URI component, so a space, '>', ',' (between URIs, RFC 2369), '&' or '#'
    -- cannot break the header or unsubscribe another value; {{{x}}} stays raw, the author's
    -- choice, and the message builder still refuses a value that is not printable ASCII.
    local t, err = template.compile(profile.list_unsubscribe,
      { name = 'profiles.' .. profile.name .. '.list_unsubscribe', escape = 'uri' })
    if not t then error(err, 0) end
    self.unsub = t
  end
  return self
end

-- Fields of a refused message that are this message's own: the recipient, what was rendered
-- for it (subject, body, unsubscribe link) and its own headers. The message builder starts
-- each refusal with the field it concerns (runtime/smtp_message.h).
local MESSAGE_FIELDS = { subject = true, ['text or html'] = true, list_unsubscribe = true, message_id = true }

-- Whether the transport's refusal to build m (class 'invalid') is m's alone. Then m fails for
-- good and the campaign goes on: one endpoint's bad address or attribute must not pause it.
-- The sender (from, envelope_from), the profile's headers and whatever the transport itself
-- refused are the same for every message: systemic, retried and counted towards the pause.
local function message_fault(err, m)
  err = tostring(err)
  if err:find('^to%[%d+%]: ') then return true end
  local header = err:match("^headers%['(.-)'%]: ")
  if header then return m.headers ~= nil and m.headers[header] ~= nil end
  local field = err:match('^([%w_ ]-): ')
  return field ~= nil and MESSAGE_FIELDS[field] == true
end

-- Words of a refusal without an enhanced status code that say it is the server's policy
-- (relaying, the sender, spam filtering, a blocklist), not the recipient's mailbox.
local POLICY_WORDS = { 'relay', 'polic', 'sender', 'spam', 'block', 'blacklist', 'authenticat', 'reputation' }

-- Whose a 5xx refusal at RCPT is: 'recipient' (the mailbox or its address), 'systemic' (the
-- same for every recipient) or 'message' (neither: this message fails alone). By the RFC 3463
-- enhanced code, at the reply's start (RFC 2034) or, as qmail writes it, "(#5.7.1)" at the
-- end: X.1.x addresses the recipient but X.1.7/X.1.8 the sender (Postfix reports its sender
-- checks at RCPT), X.2.x is the mailbox, and so is X.4.x (routing) at RCPT: the recipient's
-- domain cannot be reached ("5.4.4 Unable to route"), or, as Exchange Online answers for an
-- address it does not know, "550 5.4.1 Recipient address rejected"; X.3.x (the mail system),
-- X.5.x (protocol) and X.7.x (security and policy: "550 5.7.1 Relaying denied") are not the
-- recipient's doing, and every message meets them alike. A reply without one is the
-- mailbox's unless its words say policy; addresses it quotes are left out of that reading.
local function rcpt_refusal(err)
  local text = tostring(err):match('%(server: (.*)$') or tostring(err)
  local subject, detail = text:match('^%d%d%d[ %-][245]%.(%d%d?%d?)%.(%d%d?%d?)')
  if not subject then subject, detail = text:match('#[245]%.(%d%d?%d?)%.(%d%d?%d?)') end
  subject, detail = tonumber(subject), tonumber(detail)
  if subject == 1 then return (detail == 7 or detail == 8) and 'systemic' or 'recipient' end
  if subject == 2 or subject == 4 then return 'recipient' end
  if subject == 3 or subject == 5 or subject == 7 then return 'systemic' end
  if subject then return 'message' end
  local words = text:gsub('<[^>]*>', ''):lower()
  for _, w in ipairs(POLICY_WORDS) do
    if words:find(w, 1, true) then return 'systemic' end
  end
  return 'recipient'
end

function smtp:send_one(m)
  local p = self.profile
  local headers = {}
  for k, v in pairs(p.headers or {}) do headers[k] = v end
  -- Pinpoint's messages give List-Unsubscribe and List-Unsubscribe-Post as headers (a
  -- campaign's, a template's, a request's): they become the message's own unsubscribe fields,
  -- over the profile's list_unsubscribe, and the builder writes the headers from them.
  local own_unsub, post
  for k, v in pairs(m.headers or {}) do
    local lk = k:lower()
    if lk == 'list-unsubscribe' then own_unsub = v
    elseif lk == 'list-unsubscribe-post' then post = v
    else headers[k] = v end
  end
  local bad_post = post ~= nil and http.mail_header_problem('List-Unsubscribe-Post', post)
  if bad_post then
    -- a template's rendered value: this message's own fault
    return { verdict = 'permanent', systemic = false,
             reason = "SMTP invalid: headers['List-Unsubscribe-Post']: " .. bad_post }
  end
  local unsub, one_click = own_unsub, post ~= nil
  if unsub == nil and self.unsub then
    -- Sent without it, a bulk message would leave its recipient no way out and break the
    -- mailbox providers' bulk-sender rules: a render that fails (an engine limit this
    -- endpoint's data reaches) fails the message alone.
    local rerr
    unsub, rerr = self.unsub:render(m.ctx or m.endpoint)
    if unsub == nil then
      return { verdict = 'permanent', reason = 'RENDER_FAILED: list_unsubscribe: ' .. tostring(rerr), systemic = false }
    end
    one_click = one_click or p.one_click
  end
  local res, err, class, code = http.send_mail {
    url = p.url, from = m.from or p.from, to = { m.address }, subject = m.title or '',
    text = m.body, html = m.html, message_id = m.key, headers = headers,
    list_unsubscribe = unsub,
    one_click = (one_click and unsub ~= nil) or nil,
    username = p.username, password = p.password, starttls = p.starttls,
    ca_file = p.ca_file, timeout_ms = p.timeout_ms, envelope_from = p.envelope_from,
    limit = self.limit, gate = m.gate,
  }
  if res then return { verdict = 'delivered' } end
  -- given back before a session took it (its gate closed): never sent
  if class == 'recalled' then return util.recalled { class = class, detail = err } end
  local verdict = http.verdict(class, code or 0, true)
  local r = { verdict = verdict, reason = 'SMTP ' .. tostring(code or class) .. ': ' .. tostring(err),
              systemic = class ~= 'status' and not (class == 'invalid' and message_fault(err, m)),
              unavailable = util.unavailable { class = class } or nil }
  -- Only a refusal of the recipient (at RCPT) is a hard bounce. The same codes at MAIL FROM or
  -- after DATA refuse the sender or the content (a DMARC or policy rejection): every message
  -- would fail alike, so they count towards the pause and leave the endpoint as it is. So do
  -- refusals at RCPT that are not about the mailbox (rcpt_refusal). The transport's text
  -- starts with the command that failed; the server's own words follow.
  local at_rcpt = tostring(err):find('^RCPT failed') ~= nil
  if verdict == 'permanent' and at_rcpt then
    local whose = rcpt_refusal(err)
    if whose == 'systemic' then
      r.systemic = true
    elseif whose == 'recipient' and (code == 550 or code == 551 or code == 553) then
      r.feedback = 'HARD_BOUNCE'
    end
  elseif class == 'status' and not at_rcpt then
    r.systemic = true
  end
  return r
end

-- Every message is handed to the transport at once, in a task of its own; the channel's limit
-- keeps profile.sessions of them in flight and starts the next as one finishes. Outcomes come
-- to progress(indexes, outcomes) in chunks as they finish (util.CHUNK), when a progress
-- function is given; the whole list is returned as well. Mails given back unsent (their gate
-- closed: a paused campaign's) are told on the loop's next turn, with the others the gate gave
-- back meanwhile, rather than when a chunk is full, so their messages go back to PENDING while
-- the mails on the wire before them finish.
function smtp:send(msgs, progress)
  local out, done, all_done = {}, 0, task.signal()
  local told_idx, told_out, telling = {}, {}, false
  local function tell()
    if #told_idx == 0 then return end
    local idx, outs = told_idx, told_out
    told_idx, told_out = {}, {}
    progress(idx, outs)
  end
  for i, m in ipairs(msgs) do
    task.spawn(function()
      local ok, r = pcall(self.send_one, self, m)
      -- a raise (a bad option, a field of the wrong type) fails every message alike: it is
      -- retried and counts towards the campaign's pause, as deliver.send_items does for a
      -- channel that raises
      out[i] = ok and r or { verdict = 'transient', reason = 'channel ' .. self.profile.name .. ': ' .. tostring(r),
                             systemic = true, error = true }
      done = done + 1
      if progress and done < #msgs then
        told_idx[#told_idx + 1], told_out[#told_out + 1] = i, out[i]
        if #told_idx >= util.CHUNK then
          tell()
        elseif out[i].recalled and not telling then
          telling = true
          task.spawn(function()
            task.sleep(0)
            telling = false
            -- the last outcome came meanwhile: the caller takes the rest from send's result
            if done < #msgs then tell() end
          end)
        end
      end
      if done == #msgs then all_done:notify() end
    end)
  end
  if done < #msgs then all_done:wait() end
  return out
end

return smtp
