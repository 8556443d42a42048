-- herald.pretty, exercised in-process through the stdlib the binary ships.
local pretty = require 'herald.pretty'

describe('herald.pretty', function()
  describe('scalars', function()
    it('writes numbers so integers and floats differ and floats read back exactly', function()
      assert.are.equal('42', pretty.format(42))
      assert.are.equal('-7', pretty.format(-7))
      assert.are.equal('1.0', pretty.format(1.0))
      assert.are.equal('1.5', pretty.format(1.5))
      assert.are.equal('0.30000000000000004', pretty.format(0.1 + 0.2))
      assert.are.equal(0.1 + 0.2, tonumber(pretty.format(0.1 + 0.2)))
      assert.are.equal('1e+100', pretty.format(1e100))
      assert.are.equal('inf', pretty.format(math.huge))
      assert.are.equal('-inf', pretty.format(-math.huge))
      assert.are.equal('nan', pretty.format(0 / 0))
      assert.are.equal('9223372036854775807', pretty.format(math.maxinteger))
    end)

    it('writes booleans and nil', function()
      assert.are.equal('true', pretty.format(true))
      assert.are.equal('false', pretty.format(false))
      assert.are.equal('nil', pretty.format(nil))
    end)

    it('quotes strings with escapes that Lua reads back', function()
      local cases = {
        'plain', 'say "hi"', 'back\\slash', 'line\nbreak', 'tab\there', 'bell\a',
        'nul\0', 'nul\0' .. '1 before a digit', '\27[0m', 'del\127', 'café ☕',
      }
      for _, s in ipairs(cases) do
        local q = pretty.quote(s)
        assert.are.equal(s, load('return ' .. q)(), q)
        assert.is_nil(q:find('[%c]'), 'control byte left in ' .. q)
      end
      assert.are.equal('"line\\nbreak"', pretty.quote('line\nbreak'))
      assert.are.equal('"say \\"hi\\""', pretty.quote('say "hi"'))
      assert.are.equal('"\\0001"', pretty.quote('\0' .. '1'))
      assert.are.equal('"\\27[0m"', pretty.quote('\27[0m'))
      assert.are.equal('"café"', pretty.quote('café'))
    end)

    it('writes the bytes of a string that is not UTF-8 as hex escapes', function()
      local s = 'caf\xE9'
      assert.are.equal('"caf\\xE9"', pretty.quote(s))
      assert.are.equal(s, load('return ' .. pretty.quote(s))())
    end)

    it('shows functions, threads and userdata by type', function()
      assert.are.equal('<function>', pretty.format(print))
      assert.are.equal('<thread>', pretty.format(coroutine.create(print)))
      assert.are.equal('<userdata FILE*>', pretty.format(io.stdout))
      assert.are.equal('{<function>, f = <function>}', pretty.format({ print, f = print }))
    end)
  end)

  describe('tables', function()
    it('writes an empty table as {}', function()
      assert.are.equal('{}', pretty.format({}))
    end)

    it('lists the array part, then numbers, then strings, then other keys, in order', function()
      local t = {
        'a', 'b', [5] = 'five', [-1] = 'minus', [2.5] = 'half', zeta = 1, alpha = 2,
        ['two words'] = 3, ['end'] = 4, [true] = 5, [false] = 6,
      }
      assert.are.equal('{"a", "b", [-1] = "minus", [2.5] = "half", [5] = "five", alpha = 2, '
        .. '["end"] = 4, ["two words"] = 3, zeta = 1, [false] = 6, [true] = 5}',
        pretty.format(t, { width = 200 }))
    end)

    it('nests small tables inline', function()
      assert.are.equal('{a = {b = {c = 1}}, list = {1, 2, {3}}}',
        pretty.format({ a = { b = { c = 1 } }, list = { 1, 2, { 3 } } }))
    end)

    it('puts a table wider than the width on indented lines', function()
      local t = { name = 'a fairly long name for an endpoint', nested = { x = 1, y = { 'deep' } },
                  tags = { 'one', 'two' } }
      assert.are.equal(table.concat({
        '{',
        '  name = "a fairly long name for an endpoint",',
        '  nested = {x = 1, y = {"deep"}},',
        '  tags = {"one", "two"},',
        '}',
      }, '\n'), pretty.format(t, { width = 40 }))
      assert.are.equal(table.concat({
        '{',
        '  name = "a fairly long name for an endpoint",',
        '  nested = {',
        '    x = 1,',
        '    y = {"deep"},',
        '  },',
        '  tags = {"one", "two"},',
        '}',
      }, '\n'), pretty.format(t, { width = 24 }))
    end)

    it('fills lines with a long list of short values', function()
      local t = {}
      for i = 1, 12 do t[i] = i * 100 end
      assert.are.equal('{\n  100, 200, 300, 400, 500,\n  600, 700, 800, 900, 1000,\n'
        .. '  1100, 1200\n}', pretty.format(t, { width = 30 }))
    end)

    it('honours the indent option', function()
      assert.are.equal('{\n    a = 1,\n    b = 2,\n}', pretty.format({ a = 1, b = 2 }, { width = 5, indent = '    ' }))
    end)

    it('marks a cycle with the path where the table was entered instead of looping', function()
      local t = { name = 'root table' }
      t.self = t
      t.child = { back = t, list = {} }
      t.child.list[1] = t.child
      assert.are.equal('{child = {back = <cycle: root>, list = {<cycle: root.child>}}, '
        .. 'name = "root table", self = <cycle: root>}', pretty.format(t, { width = 200 }))
    end)

    it('prints a table shared by two branches twice, since that is no cycle', function()
      local shared = { 1 }
      assert.are.equal('{a = {1}, b = {1}}', pretty.format({ a = shared, b = shared }))
    end)

    it('stops at the depth limit', function()
      local t = { a = { b = { c = { d = {} } } } }
      assert.are.equal('{a = {…}}', pretty.format(t, { depth = 1 }))
      assert.are.equal('{a = {b = {c = {…}}}}', pretty.format(t, { depth = 3 }))
      assert.are.equal('{a = {b = {c = {d = {}}}}}', pretty.format(t, { depth = 4 }))
    end)

    it('stops at the item limit and says how many were left out', function()
      local t = { 10, 20, 30, 40, x = 1, y = 2 }
      assert.are.equal('{10, 20, … (4 more)}', pretty.format(t, { items = 2 }))
      assert.are.equal('{10, 20, 30, 40, x = 1, … (1 more)}', pretty.format(t, { items = 5 }))
      assert.are.equal('{\n  10,\n  20,\n  … (4 more)\n}', pretty.format(t, { items = 2, width = 5 }))
    end)

    it('shows the first keys in sorted order when the item limit cuts a big table', function()
      local t = {}
      for i = 26, 1, -1 do t[string.char(96 + i)] = i end
      t[100] = 'n'
      assert.are.equal('{[100] = "n", a = 1, b = 2, … (24 more)}', pretty.format(t, { items = 3 }))
      local big = {}
      for i = 1, 50000 do big['k' .. i] = i end
      assert.are.equal('{k1 = 1, k10 = 10, k100 = 100, … (49997 more)}', pretty.format(big, { items = 3 }))
    end)

    it('terminates on a deep chain with the default limits', function()
      local chain = {}
      local node = chain
      for _ = 1, 10000 do
        node.next = {}
        node = node.next
      end
      local s = pretty.format(chain)
      assert.matches('{…}', s, 1, true)
      assert.is_true(#s < 200)
    end)

    it('reads contents raw, without running __index or __pairs', function()
      local calls = 0
      local t = setmetatable({ a = 1 }, {
        __index = function() calls = calls + 1 end,
        __pairs = function() calls = calls + 1 return next, {}, nil end,
      })
      assert.are.equal('{a = 1}', pretty.format(t))
      assert.are.equal(0, calls)
    end)

    it('uses __tostring when a table defines it, and the contents when it fails', function()
      local obj = setmetatable({ id = 1 }, { __tostring = function(o) return 'Obj#' .. o.id end })
      assert.are.equal('{item = Obj#1}', pretty.format({ item = obj }))
      local broken = setmetatable({ id = 2 }, { __tostring = function() error('no') end })
      assert.are.equal('{id = 2}', pretty.format(broken))
    end)

    it('writes keys that are tables or functions by type', function()
      assert.are.equal('{[<table>] = 1}', pretty.format({ [{}] = 1 }))
      assert.are.equal('{[<function>] = 1}', pretty.format({ [print] = 1 }))
    end)
  end)

  describe('options', function()
    it('refuses bad options with a message naming them', function()
      assert.has_error(function() pretty.format(1, { depth = 0 }) end,
        'pretty: option depth must be a positive integer')
      assert.has_error(function() pretty.format(1, { items = 'x' }) end,
        'pretty: option items must be a positive integer')
      assert.has_error(function() pretty.format(1, { indent = 2 }) end,
        'pretty: option indent must be a string')
      assert.has_error(function() pretty.format(1, { colour = true }) end,
        'pretty: unknown option colour')
    end)
  end)

  it('is callable and reachable as herald.pretty', function()
    local herald = require 'herald'
    assert.are.equal(pretty, herald.pretty)
    assert.are.equal('{1}', herald.pretty({ 1 }))
  end)

  it('prints values tab-separated with pretty.print', function()
    local h = require 'helpers'
    local out, code = h.herald([[-e 'herald.pretty.print(1, "s", {a = true})']])
    assert.are.equal(0, code)
    assert.are.equal('1\t"s"\t{a = true}\n', out)
  end)
end)
