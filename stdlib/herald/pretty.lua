-- Pretty-printer for Lua values: deterministic, readable text for the REPL and for reports.
--
--   pretty.format(value [, opts]) -> string     (also pretty(value [, opts]))
--   pretty.quote(s) -> s as a Lua string literal
--   pretty.print(...)                           formats each value, tab-separated, on stdout
--
-- Tables list their array part first, then the other keys sorted (numbers, then strings, then
-- the rest by type). A table that fits on one line within opts.width is written inline;
-- otherwise one entry per line, indented (a plain list of short values fills its lines). A table met again inside itself is written as a
-- <cycle: PATH> marker naming where it was first entered, so cycles never loop. Tables nested
-- deeper than opts.depth show as {…}; past opts.items entries a table ends with "… (N more)".
-- Functions, threads and userdata show as their type. Contents are read with rawget/next, so
-- printing never runs an __index or __pairs; a table with __tostring shows that text.
local pretty = {}

pretty.defaults = {
  depth = 6,     -- nesting levels shown
  items = 100,   -- entries shown per table
  width = 80,    -- columns an inline table may reach
  indent = '  ',
}

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
  repeat return then true until while]]):gmatch('%a+') do
  KEYWORDS[w] = true
end

local ESCAPES = {
  ['"'] = '\\"', ['\\'] = '\\\\', ['\a'] = '\\a', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t', ['\v'] = '\\v',
}

-- s as a double-quoted Lua literal. Control bytes become escapes; valid UTF-8 text stays
-- readable, while a string that is not valid UTF-8 has its high bytes written as \xHH.
function pretty.quote(s)
  local out = s:gsub('([\0-\31\127"\\])(%d?)', function(c, digit)
    local e = ESCAPES[c]
    if e then return e .. digit end
    -- A decimal escape followed by a digit must be three digits long to stay unambiguous.
    local fmt = digit ~= '' and '\\%03d' or '\\%d'
    return fmt:format(c:byte()) .. digit
  end)
  if utf8.len(out) == nil then
    out = out:gsub('[\128-\255]', function(c) return ('\\x%02X'):format(c:byte()) end)
  end
  return '"' .. out .. '"'
end

-- Floats print with the shortest of 14 or 17 significant digits that reads back exactly, and
-- always look like floats (1.0, not 1), so the output tells integers and floats apart.
local function format_number(n)
  if math.type(n) == 'integer' then return tostring(n) end
  if n ~= n then return 'nan' end
  if n == math.huge then return 'inf' end
  if n == -math.huge then return '-inf' end
  local s = ('%.14g'):format(n)
  if tonumber(s) ~= n then s = ('%.17g'):format(n) end
  if s:match('^%-?%d+$') then s = s .. '.0' end
  return s
end

local function is_identifier(k)
  return type(k) == 'string' and k:match('^[%a_][%w_]*$') ~= nil and not KEYWORDS[k]
end

local function opaque(v)
  local t = type(v)
  if t == 'userdata' then
    local mt = getmetatable(v)
    local name = type(mt) == 'table' and rawget(mt, '__name')
    if type(name) == 'string' then return '<userdata ' .. name .. '>' end
  end
  return '<' .. t .. '>'
end

local function scalar(v)
  local t = type(v)
  if t == 'string' then return pretty.quote(v) end
  if t == 'number' then return format_number(v) end
  if t == 'boolean' or t == 'nil' then return tostring(v) end
  return nil
end

local function key_text(k)
  if is_identifier(k) then return k end
  return '[' .. (scalar(k) or opaque(k)) .. ']'
end

local KEY_CLASS = { number = 1, string = 2, boolean = 3 }

local function key_before(a, b)
  local ta, tb = type(a), type(b)
  local ca, cb = KEY_CLASS[ta] or 4, KEY_CLASS[tb] or 4
  if ca ~= cb then return ca < cb end
  if ta == 'number' or ta == 'string' then return a < b end
  if ta == 'boolean' then return (not a) and b end
  if ta ~= tb then return ta < tb end
  return tostring(a) < tostring(b)
end

local function custom_text(v)
  local mt = getmetatable(v)
  if type(mt) ~= 'table' or rawget(mt, '__tostring') == nil then return nil end
  local ok, s = pcall(tostring, v)
  if ok and type(s) == 'string' then return s end
  return nil
end

-- The keys of t outside its array part 1..n: the first `limit` of them in display order, and
-- how many there are. Only the shown keys are kept sorted, so a huge table costs one pass.
local function first_keys(t, n, limit)
  local keys, count = {}, 0
  for k in next, t do
    if not (math.type(k) == 'integer' and k >= 1 and k <= n) then
      count = count + 1
      if #keys < limit or (limit > 0 and key_before(k, keys[limit])) then
        local lo, hi = 1, #keys + 1
        while lo < hi do
          local mid = (lo + hi) // 2
          if key_before(k, keys[mid]) then hi = mid else lo = mid + 1 end
        end
        table.insert(keys, lo, k)
        keys[limit + 1] = nil
      end
    end
  end
  return keys, count
end

-- Renders table t whose text starts at column col, nested depth levels deep (the value given
-- to format is depth 1). path names t for cycle markers.
local function render_table(t, st, depth, col, path)
  local custom = custom_text(t)
  if custom then return custom end
  local seen = st.open[t]
  if seen then return '<cycle: ' .. seen .. '>' end
  if next(t) == nil then return '{}' end
  if depth > st.depth then return '{…}' end

  local n = 0
  while rawget(t, n + 1) ~= nil do n = n + 1 end
  local keys, nkeys = first_keys(t, n, st.items - n)

  st.open[t] = path
  local total = n + nkeys
  local shown = math.min(total, st.items)
  local pad = st.indent:rep(depth)
  local items, multiline = {}, false
  for i = 1, shown do
    local k = i <= n and i or keys[i - n]
    local v = rawget(t, k)
    local prefix = i <= n and '' or key_text(k) .. ' = '
    local s
    if type(v) == 'table' then
      local child = path .. (is_identifier(k) and '.' .. k or '[' .. (scalar(k) or opaque(k)) .. ']')
      s = render_table(v, st, depth + 1, #pad + #prefix, child)
    else
      s = scalar(v) or opaque(v)
    end
    if s:find('\n', 1, true) then multiline = true end
    items[i] = prefix .. s
  end
  st.open[t] = nil

  local more = total > shown and ('… (' .. (total - shown) .. ' more)') or nil
  if not multiline then
    local line = '{' .. table.concat(items, ', ') .. (more and ', ' .. more or '') .. '}'
    if col + #line <= st.width then return line end
  end
  local close_pad = st.indent:rep(depth - 1)
  if not multiline and nkeys == 0 then
    -- A long list of short values fills lines instead of taking one line each.
    if more then items[#items + 1] = more end
    local lines, line = {}, pad
    for i, item in ipairs(items) do
      local piece = item .. (i < #items and ',' or '')
      if line ~= pad and #line + 1 + #piece > st.width then
        lines[#lines + 1] = line
        line = pad
      end
      line = line == pad and pad .. piece or line .. ' ' .. piece
    end
    lines[#lines + 1] = line
    return '{\n' .. table.concat(lines, '\n') .. '\n' .. close_pad .. '}'
  end
  return '{\n' .. pad .. table.concat(items, ',\n' .. pad) .. ','
    .. (more and '\n' .. pad .. more or '') .. '\n' .. close_pad .. '}'
end

local function render(v, st)
  if type(v) == 'table' then return render_table(v, st, 1, 0, 'root') end
  return scalar(v) or opaque(v)
end

local function check_options(opts)
  local st = { open = {} }
  for k, default in pairs(pretty.defaults) do
    local v = opts[k]
    if v == nil then v = default end
    if k == 'indent' then
      if type(v) ~= 'string' then error('pretty: option indent must be a string', 3) end
    elseif math.type(v) ~= 'integer' or v < 1 then
      error('pretty: option ' .. k .. ' must be a positive integer', 3)
    end
    st[k] = v
  end
  for k in pairs(opts) do
    if pretty.defaults[k] == nil then error('pretty: unknown option ' .. tostring(k), 3) end
  end
  return st
end

function pretty.format(v, opts)
  local st = check_options(opts or {})
  return render(v, st)
end

function pretty.print(...)
  local out = {}
  for i = 1, select('#', ...) do
    out[i] = pretty.format((select(i, ...)))
  end
  io.stdout:write(table.concat(out, '\t'), '\n')
end

return setmetatable(pretty, {
  __call = function(_, v, opts) return pretty.format(v, opts) end,
})
