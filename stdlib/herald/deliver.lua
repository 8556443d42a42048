-- Delivery of due outbox rows, on the host side of `herald run`. It needs no campaign code:
-- each row's message comes from the stored definition of the version its run started with
-- (Pinpoint's MessageConfiguration), rendered by the template engine, and goes out through
-- the campaign's channel. Outcomes are written back in one transaction per batch.
local outbox = require 'herald.core.outbox'
local filechannel = require 'herald.core.filechannel'
local json = require 'herald.json'
local template = require 'herald.template'
local endpoints = require 'herald.endpoints'

local deliver = {}

local PUSH = { APNS = 'APNSMessage', APNS_SANDBOX = 'APNSMessage', APNS_VOIP = 'APNSMessage',
               APNS_VOIP_SANDBOX = 'APNSMessage', GCM = 'GCMMessage', ADM = 'ADMMessage',
               BAIDU = 'BaiduMessage' }

-- Definitions by "campaign@version": a version never changes once stored.
local definitions = {}

local function definition(row)
  local key = row.campaign_id .. '@' .. row.campaign_version
  local d = definitions[key]
  if d == nil then
    local text, err = outbox.campaign_definition(row.campaign_id, row.campaign_version)
    if text == nil then return nil, err end
    d = json.decode(text)
    definitions[key] = d
  end
  return d
end

local function treatment_config(def, treatment)
  if treatment == 0 then return def.TreatmentName, def.MessageConfiguration end
  for _, t in ipairs(def.AdditionalTreatments or {}) do
    if tonumber(t.Id) == treatment then return t.TreatmentName, t.MessageConfiguration end
  end
end

-- The message for an endpoint's channel: the channel's own, else DefaultMessage.
local function channel_message(config, channel)
  local key = (channel == 'EMAIL' and 'EmailMessage') or (channel == 'SMS' and 'SMSMessage')
    or (channel == 'CUSTOM' and 'CustomMessage') or PUSH[channel]
  return (key and config[key]) or config.DefaultMessage
end

local function render_part(text, ep, escape)
  if text == nil or text == json.null then return nil end
  return template.render(text, ep, { escape = escape })
end

local function render(row, def, ep)
  local name, config = treatment_config(def, row.treatment)
  if config == nil then return nil, 'NO_TREATMENT' end
  local m = channel_message(config, row.channel)
  if m == nil then return nil, 'NO_MESSAGE_FOR_CHANNEL' end
  local subject, body, html, err
  subject, err = render_part(m.Title, ep)
  if err then return nil, 'RENDER_FAILED: ' .. err end
  body, err = render_part(m.Body, ep)
  if err then return nil, 'RENDER_FAILED: ' .. err end
  html, err = render_part(m.HtmlBody, ep, true)
  if err then return nil, 'RENDER_FAILED: ' .. err end
  local lines = {
    '--- message ' .. row.message_id,
    'campaign: ' .. def.Name .. '  treatment: ' .. tostring(name),
    'to: ' .. row.address .. ' (' .. row.channel .. ')',
  }
  if subject then lines[#lines + 1] = 'subject: ' .. subject end
  lines[#lines + 1] = ''
  lines[#lines + 1] = body or ''
  if html then
    lines[#lines + 1] = ''
    lines[#lines + 1] = html
  end
  return table.concat(lines, '\n') .. '\n\n'
end

local function send(row)
  local def, err = definition(row)
  if def == nil then return 'FAILED', err end
  local ep = endpoints.get(row.endpoint_id)
  if ep == nil then return 'FAILED', 'ENDPOINT_DELETED' end
  local text, reason = render(row, def, ep)
  if text == nil then return 'FAILED', reason end
  local target = def.Herald and def.Herald.Deliver or { type = 'stdout' }
  local ok, werr = filechannel.write(target.type == 'file' and target.path or nil, text)
  if not ok then return 'FAILED', werr end
  return 'SENT'
end

-- Claims up to max rows due at now_ms of the campaigns in ids_json (a JSON array; nil = all),
-- sends them and records the outcomes. Returns how many were claimed and the next due time.
function deliver.pump(now_ms, max, ids_json)
  local rows = outbox.claim(now_ms, max, ids_json)
  local reports = {}
  for i, row in ipairs(rows) do
    local state, reason = send(row)
    reports[i] = { id = row.id, state = state, reason = reason }
  end
  outbox.report_batch(reports)
  outbox.complete_runs()
  return #rows, outbox.next_due(ids_json)
end

return deliver
