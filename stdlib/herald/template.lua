-- Message personalisation for the built-in channels: Pinpoint's variable syntax over the
-- endpoint, `{{Attributes.Plan}}`, `{{User.UserAttributes.FirstName.[0]}}`,
-- `{{User.UserAttributes.[Last Name].[0]}}`, and `{{{raw}}}`. A list renders its values
-- joined by ", "; a missing value renders as nothing, as in Pinpoint. (Handlebars blocks and
-- helpers arrive with the C template engine of the delivery layer.)
local template = {}

local function path_parts(path)
  local parts = {}
  local i, n = 1, #path
  while i <= n do
    local c = path:sub(i, i)
    if c == '[' then
      local close = path:find(']', i, true)
      if not close then return nil, "unclosed '[' in {{" .. path .. '}}' end
      parts[#parts + 1] = path:sub(i + 1, close - 1)
      i = close + 1
      if path:sub(i, i) == '.' then i = i + 1 end
    else
      local dot = path:find('.', i, true) or (n + 1)
      parts[#parts + 1] = path:sub(i, dot - 1)
      i = dot + 1
    end
  end
  return parts
end

local function lookup(value, parts)
  for _, p in ipairs(parts) do
    if type(value) ~= 'table' then return nil end
    local idx = tonumber(p)
    if idx and value[1] ~= nil then
      value = value[idx + 1]
    else
      value = value[p]
    end
  end
  return value
end

local function to_text(v)
  if v == nil then return '' end
  if type(v) == 'table' then
    local out = {}
    for i, x in ipairs(v) do out[i] = tostring(x) end
    return table.concat(out, ', ')
  end
  return tostring(v)
end

local html_escapes = { ['&'] = '&amp;', ['<'] = '&lt;', ['>'] = '&gt;', ['"'] = '&quot;',
                       ["'"] = '&#x27;', ['`'] = '&#x60;', ['='] = '&#x3D;' }

local function escape_html(s)
  return (s:gsub('[&<>"\'`=]', html_escapes))
end

-- Checks a template's variables; returns true or nil, err.
function template.check(text)
  if type(text) ~= 'string' then return nil, 'must be a string' end
  for raw, inner in text:gmatch('{{({?)%s*([^}]-)%s*}?}}') do
    if inner == '' then return nil, 'empty {{}}' end
    local ok, err = path_parts(inner)
    if not ok then return nil, err end
  end
  return true
end

-- Renders text against ctx (an endpoint table). opts.escape = true HTML-escapes {{x}}.
function template.render(text, ctx, opts)
  local escape = opts and opts.escape
  return (text:gsub('({{{?)%s*([^}]-)%s*}?}}', function(open, inner)
    local parts = path_parts(inner)
    if not parts then return '' end
    local s = to_text(lookup(ctx, parts))
    if escape and open == '{{' then s = escape_html(s) end
    return s
  end))
end

return template
