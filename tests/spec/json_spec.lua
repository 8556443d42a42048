-- herald.json's encoder writes compact text straight from Lua values; jansson's dump is the
-- reference it must match byte for byte ({ jansson = true } takes that path), including the
-- errors it leaves to jansson to word.
local json = require 'herald.json'

local PIECES = { 'a', 'é', '"', '\\', '\n', '\t', '\r', '\b', '\f', '\1', '\31', '/', '日本', '\0',
                 ' ', '\u{2028}', '\u{1F600}', '\127', 'abc' }
local REALS = { 0.1, 1.5, -0.0, 1e20, 1e-5, 123456789.125, 3.14159265358979, 1 / 3, 2 ^ 53, 1e300,
                -2.5e-300, 100.0, 5e-324, 1e21, 123e-7 }

local function rstr()
  local t = {}
  for i = 1, math.random(0, 6) do t[i] = PIECES[math.random(#PIECES)] end
  return table.concat(t)
end

local function rval(d)
  local k = math.random(d > 3 and 7 or 10)
  if k == 1 then return math.random(-1000000, 1000000)
  elseif k == 2 then return REALS[math.random(#REALS)] * (math.random() < 0.5 and 1 or -1)
  elseif k == 3 then return rstr()
  elseif k == 4 then return math.random() < 0.5
  elseif k == 5 then return json.null
  elseif k == 6 then return math.random() < 0.5 and math.maxinteger or math.mininteger
  elseif k == 7 then return math.random() * 1e6
  elseif k == 8 then
    local t = {}
    for i = 1, math.random(0, 4) do t[i] = rval(d + 1) end
    return t
  elseif k == 9 then
    local t = {}
    for i = 1, math.random(0, 4) do t[rstr() .. i] = rval(d + 1) end
    return t
  end
  local t = json.array {}
  for i = 1, math.random(0, 3) do t[i] = rval(d + 1) end
  return t
end

describe('json.encode', function()
  it('writes what jansson writes for 5000 random values', function()
    math.randomseed(20261129)
    local differ = 0
    for _ = 1, 5000 do
      local v = rval(0)
      local a, ea = json.encode(v)
      local b, eb = json.encode(v, { jansson = true })
      if a ~= b or ea ~= eb then
        differ = differ + 1
        if differ == 1 then
          assert.are.equal(b or eb, a or ea)
        end
      end
    end
    assert.are.equal(0, differ)
  end)

  it('writes what jansson writes for long strings, whatever byte comes where', function()
    -- plain text is copied eight bytes at a time: a byte to escape or check at every offset,
    -- in strings, keys and template contexts
    local specials = { '"', '\\', '\n', '\1', '\31', '\0', '\127', ' ', '~', '\u{e9}', '\u{65e5}',
                       '\u{1F600}', '\255', '\xed\xa0\x80' }
    for len = 0, 40 do
      for _, c in ipairs(specials) do
        for at = 0, len do
          local s = ('abcdefghijklmnopqrstuvwxyz0123456789ABCD'):sub(1, len)
          s = s:sub(1, at) .. c .. s:sub(at + 1)
          for _, v in ipairs({ s, { [s] = s }, { s, s .. s } }) do
            local a, ea = json.encode(v)
            local b, eb = json.encode(v, { jansson = true })
            if a ~= b or ea ~= eb then assert.are.equal(b or eb, a or ea) end
          end
        end
      end
    end
    local ctx = require('herald.core.template').context { Address = ('x'):rep(30) .. '"\u{e9}\t' .. ('y'):rep(9) }
    assert.are.equal(json.encode({ ctx }, { jansson = true }), json.encode { ctx })
  end)

  it('words bad values as jansson does, with the path', function()
    local cases = {
      { { 'a\255' }, '[1]: string is not valid UTF-8' },
      { { k = { 'ok', '\xed\xa0\x80' } }, 'k[2]: string is not valid UTF-8' },
      { { ['k\255'] = 1 }, 'an object key is not valid UTF-8' },
      { { f = print }, 'f: cannot encode a function value' },
      { { 0 / 0 }, '[1]: expected a finite number' },
      { { x = { y = 1 / 0 } }, 'x.y: expected a finite number' },
    }
    for _, c in ipairs(cases) do
      local s, err = json.encode(c[1])
      assert.is_nil(s)
      assert.are.equal(c[2], err)
      local _, jerr = json.encode(c[1], { jansson = true })
      assert.are.equal(jerr, err)
    end
    local deep = {}
    local cur = deep
    for _ = 1, 250 do cur.x = {}; cur = cur.x end
    local s, err = json.encode(deep)
    assert.is_nil(s)
    assert.truthy(err:find('nested too deeply', 1, true))
  end)

  it('writes a template context as the JSON it holds, inside other values too', function()
    local ctx = require('herald.core.template').context {
      Id = 'ep-1', Address = 'a@example.com', Attributes = { plan = { 'pro', 'gold' } }, Metrics = { n = 1.5 },
      User = { UserAttributes = { name = { 'Zoë "Z" \\ 東京\n\t\1/' } } },
      Location = { Latitude = 47.6062, Longitude = -1e-7 }, Demographic = { Count = 3, Big = 2 ^ 53 },
      Flags = { on = true, off = false, list = { 1, 2.5, 'x', { deep = { 'y' } } } }, Empty = {},
    }
    local text = json.encode { Endpoints = { ['ep-1'] = ctx }, n = 1 }
    assert.are.equal(json.encode({ Endpoints = { ['ep-1'] = ctx }, n = 1 }, { jansson = true }), text)
    local back = json.decode(text)
    assert.are.equal('a@example.com', back.Endpoints['ep-1'].Address)
    assert.are.same({ 'pro', 'gold' }, back.Endpoints['ep-1'].Attributes.plan)
    assert.are.equal(1.5, back.Endpoints['ep-1'].Metrics.n)
    assert.is_nil(json.encode { f = io.stdout })   -- other userdata stays refused
  end)

  it('keeps jansson\'s reading of tables that mix integer and string keys', function()
    local mixed = { [1] = 1, ['1'] = 2 }
    assert.are.equal(json.encode(mixed, { jansson = true }), json.encode(mixed))
    -- a key with a NUL inside would be cut there and merge with another: refused on both paths
    local nul = { ['a\0x'] = 1, ['a\0y'] = 2, b = 3 }
    for _, opts in ipairs({ {}, { jansson = true } }) do
      local out, err = json.encode(nul, opts)
      assert.is_nil(out)
      assert.are.equal('an object key contains a NUL character (\\u0000)', err)
    end
    local out, err = json.encode({ k = { ['x\0'] = 1 } })
    assert.is_nil(out)
    assert.are.equal('k: an object key contains a NUL character (\\u0000)', err)
    assert.are.equal(json.encode({ [1] = 1, x = 2 }, { jansson = true }), json.encode { [1] = 1, x = 2 })
    assert.are.equal('[]', json.encode(json.array {}))
    assert.are.equal('{}', json.encode {})
    assert.are.equal('"a\\u0000b"', json.encode('a\0b'))
    assert.are.equal('1.0', json.encode(1.0))
    assert.are.equal('1e20', json.encode(1e20))
    assert.are.equal('1.0000000000000001e-5', json.encode(1e-5))
  end)
end)
