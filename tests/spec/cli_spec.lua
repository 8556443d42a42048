local h = require 'helpers'

describe('herald binary', function()
  it('prints its version', function()
    local out, code = h.herald('--version')
    assert.are.equal(0, code)
    assert.matches('^herald %d+%.%d+%.%d+', out)
  end)

  it('runs a chunk with -e', function()
    local out, code = h.herald("-e 'print(1 + 41)'")
    assert.are.equal(0, code)
    assert.are.equal('42\n', out)
  end)

  it('runs a script with arg set as lua does', function()
    local dir = h.tmpdir()
    local path = h.write(dir .. '/args.lua', 'print(arg[0], arg[1], arg[2], select("#", ...))')
    local out, code = h.herald(path .. ' one two')
    assert.are.equal(0, code)
    assert.are.equal(path .. '\tone\ttwo\t2\n', out)
  end)

  it('reports a failing script with file and line and exits non-zero', function()
    local dir = h.tmpdir()
    local path = h.write(dir .. '/boom.lua', 'local x = 1\nerror("boom")\n')
    local out, code, err = h.herald(path)
    assert.are_not.equal(0, code)
    assert.matches('boom.lua:2: boom', err, 1, true)
  end)

  it('lets a script sleep on the loop', function()
    local out, code = h.herald([[-e 'local t0 = herald.now_ms(); herald.sleep(30); print(herald.now_ms() - t0 >= 30)']])
    assert.are.equal(0, code)
    assert.are.equal('true\n', out)
  end)

  it('refuses an unknown option with the usage', function()
    local _, code, err = h.herald('--frobnicate')
    assert.are.equal(2, code)
    assert.matches('unknown option %-%-frobnicate', err)
  end)

  it('answers --help for every command', function()
    local cli = require 'herald.cli'
    for _, name in ipairs(cli.order) do
      local out, code = h.herald(name .. ' --help')
      assert.are.equal(0, code, name)
      assert.matches('usage: herald ' .. name, out, 1, true)
    end
    -- help describes itself too, and still refuses a command it does not know
    local out, code = h.herald('help help')
    assert.are.equal(0, code)
    assert.matches('usage: herald help COMMAND', out, 1, true)
    local _, bad, err = h.herald('help frobnicate')
    assert.are.equal(2, bad)
    assert.matches('herald help: unknown command frobnicate', err, 1, true)
  end)
end)
