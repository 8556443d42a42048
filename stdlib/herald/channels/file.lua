-- The built-in channel: messages as text blocks on stdout or appended to a file.
local filechannel = require 'herald.core.filechannel'

local file = {}
file.__index = file

function file.new(profile) return setmetatable({ profile = profile }, file) end

local function text(m)
  local lines = {
    '--- message ' .. m.key,
    'campaign: ' .. tostring(m.campaign_name) .. '  treatment: ' .. tostring(m.treatment_name),
    'to: ' .. m.address .. ' (' .. m.channel .. ')',
  }
  if m.title then lines[#lines + 1] = 'subject: ' .. m.title end
  lines[#lines + 1] = ''
  lines[#lines + 1] = m.body or ''
  if m.html then
    lines[#lines + 1] = ''
    lines[#lines + 1] = m.html
  end
  return table.concat(lines, '\n') .. '\n\n'
end

function file:send(msgs)
  local out = {}
  for i, m in ipairs(msgs) do
    local path = m.file_path or (self.profile.type == 'file' and self.profile.path or nil)
    local ok, err = filechannel.write(path, text(m))
    out[i] = ok and { verdict = 'delivered' } or { verdict = 'transient', reason = tostring(err), systemic = true }
  end
  return out
end

return file
