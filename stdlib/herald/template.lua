-- Message templates: Pinpoint's Handlebars subset, compiled and rendered by the C engine
-- (runtime/template.h), and the versioned template store (runtime/template_store.h).
--
--   local t = herald.template.compile('Hi {{User.UserAttributes.FirstName.[0]}}', { name = 'hi' })
--   t:render(endpoint, { FirstName = { 'Jane' } })
--
-- Variables read from the top level look in the message's substitutions first, then the
-- endpoint, then the template's DefaultSubstitutions; a missing value renders as nothing.
-- Runtime failures (bad template text, unknown template, limits) return nil, err.
local core = require 'herald.core.template'

local template = {}

local TYPES = { EMAIL = true, SMS = true, PUSH = true }

-- Compiled texts for render(text, ...): campaign messages render the same few texts for
-- every endpoint. Bounded so generated texts cannot grow it without end.
local CACHE_MAX = 256
local cache, cached = {}, 0

local function compiled(text, escape)
  local key = (escape and 'h' or 't') .. text
  local t = cache[key]
  if t then return t end
  local err
  t, err = core.compile(text, 'template', escape)
  if not t then return nil, err end
  if cached >= CACHE_MAX then cache, cached = {}, 0 end
  cache[key] = t
  cached = cached + 1
  return t
end

-- Compiles text once; opts.name labels errors, opts.escape = false turns off HTML escaping
-- of {{x}} (on by default, as in Handlebars) and opts.escape = 'uri' percent-encodes it
-- instead (templates of URIs). Returns an object with :render(ctx, subs).
function template.compile(text, opts)
  if type(text) ~= 'string' then error('template.compile: text must be a string', 2) end
  opts = opts or {}
  local escape = opts.escape
  if escape == nil then escape = true end
  return core.compile(text, opts.name or 'template', escape)
end

-- Checks a template's syntax; returns true or nil, err.
function template.check(text)
  if type(text) ~= 'string' then return nil, 'must be a string' end
  local t, err = compiled(text, false)
  if not t then return nil, err end
  return true
end

local function render_stored(name, kind, ctx, opts)
  if not TYPES[kind] then error("template.render: type must be 'EMAIL', 'SMS' or 'PUSH'", 3) end
  opts = opts or {}
  return core.render(name, kind, ctx, opts.version, opts.substitutions)
end

-- Two forms:
--   render(text, ctx [, {escape=}])  renders a text (plain unless opts.escape) -> string
--   render(name, type, ctx [, {version=, substitutions=}])  renders a stored template's
--     active (or given) version -> its parts rendered, e.g. {Subject=, HtmlPart=, TextPart=}
function template.render(text, ctx, opts, more)
  if type(ctx) == 'string' then return render_stored(text, ctx, opts, more) end
  if type(text) ~= 'string' then error('template.render: text must be a string', 2) end
  local t, err = compiled(text, opts ~= nil and opts.escape == true)
  if not t then return nil, err end
  return t:render(ctx)
end

-- create{name=, type='EMAIL', Subject=, HtmlPart=, TextPart=, Headers=, DefaultSubstitutions=}
-- -> 1 (the first version, active) | nil, err
function template.create(def)
  if type(def) ~= 'table' then error('template.create: expected a table {name=, type=, ...}', 2) end
  local parts = {}
  for k, v in pairs(def) do
    if k ~= 'name' and k ~= 'type' then parts[k] = v end
  end
  if type(def.name) ~= 'string' then error('template.create: name is required', 2) end
  return core.create(def.name, def.type or 'EMAIL', parts)
end

-- Replaces the latest version's parts, or writes a new version with
-- opts.create_new_version; opts.version, when given, must be the latest. -> version | nil, err
function template.update(name, kind, parts, opts)
  if type(parts) ~= 'table' then error('template.update: parts must be a table', 2) end
  opts = opts or {}
  return core.update(name, kind, parts, opts.create_new_version, opts.version)
end

-- The active version (or the given one): its parts plus Name, Type, Version, ActiveVersion,
-- LatestVersion, CreationDate, LastModifiedDate.
function template.get(name, kind, version)
  return core.get(name, kind, version)
end

function template.versions(name, kind)
  return core.versions(name, kind)
end

function template.set_active(name, kind, version)
  return core.set_active(name, kind, version)
end

-- A prepared endpoint for rendering several templates without converting it each time.
template.context = core.context

return template
