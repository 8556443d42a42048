-- herald.ab against known values: textbook examples, and values computed independently by
-- python3 (statistics.NormalDist, math.erfc, math.lgamma, random.betavariate) in a subprocess.
local ab = require 'herald.ab'

-- Runs a python3 program that prints numbers separated by whitespace; returns them as a list.
local function py(program)
  local f = assert(io.popen("python3 -c '" .. program:gsub("'", "'\\''") .. "'", 'r'))
  local out = f:read('a')
  local ok = f:close()
  assert(ok, 'python3 failed: ' .. program)
  local nums = {}
  for w in out:gmatch('%S+') do nums[#nums + 1] = assert(tonumber(w), 'not a number: ' .. w) end
  return nums
end

local function near(expected, got, tol, what)
  assert(type(got) == 'number', (what or '') .. ': not a number: ' .. tostring(got))
  if math.abs(expected - got) > tol then
    error(string.format('%s: expected %.12g, got %.12g (tolerance %g)', what or 'value', expected,
      got, tol), 2)
  end
end

local function rel(expected, got, tol, what)
  local scale = math.max(math.abs(expected), 1e-300)
  if math.abs(expected - got) / scale > tol then
    error(string.format('%s: expected %.15g, got %.15g (relative tolerance %g)', what or 'value',
      expected, got, tol), 2)
  end
end

describe('herald.ab normal distribution', function()
  it('gives the textbook quantiles', function()
    near(1.959963985, ab.normal_quantile(0.975), 1e-9, 'z 0.975')
    near(1.644853627, ab.normal_quantile(0.95), 1e-9, 'z 0.95')
    near(2.575829304, ab.normal_quantile(0.995), 1e-9, 'z 0.995')
    near(-3.090232306, ab.normal_quantile(0.001), 1e-9, 'z 0.001')
    near(0, ab.normal_quantile(0.5), 1e-15, 'z 0.5')
    near(1.959963985, ab.z_for_level(0.95), 1e-9, 'level 0.95')
    assert.are.equal(-math.huge, ab.normal_quantile(0))
    assert.are.equal(math.huge, ab.normal_quantile(1))
  end)

  it('matches python NormalDist.inv_cdf across the range, tails included', function()
    local ps = { 1e-12, 1e-9, 1e-6, 1e-4, 0.001, 0.0242, 0.02425, 0.0243, 0.1, 0.25, 0.4, 0.5,
      0.6, 0.8, 0.9, 0.97575, 0.99, 0.999, 0.999999, 1 - 1e-9 }
    local list = {}
    for i, p in ipairs(ps) do list[i] = string.format('%.17g', p) end
    local want = py('from statistics import NormalDist\nfor p in [' .. table.concat(list, ',') ..
      ']: print(repr(NormalDist().inv_cdf(p)))')
    for i, p in ipairs(ps) do
      rel(want[i] == 0 and 1 or want[i], want[i] == 0 and 1 + ab.normal_quantile(p) or ab.normal_quantile(p),
        1e-9, 'quantile ' .. p)
    end
  end)

  it('matches python erfc and NormalDist.cdf, with relative accuracy in the far tail', function()
    local zs = { -37, -20, -8.5, -6, -3.5, -2.5, -1.96, -1, -0.3, 0, 0.2, 1, 1.7, 1.7677,
      1.7678, 2.4, 3.1, 5, 8 }
    local list = {}
    for i, z in ipairs(zs) do list[i] = string.format('%.17g', z) end
    local want = py('import math\nfor z in [' .. table.concat(list, ',') ..
      ']: print(repr(0.5 * math.erfc(-z / math.sqrt(2))))')
    for i, z in ipairs(zs) do
      rel(want[i], ab.normal_cdf(z), 1e-12, 'cdf ' .. z)
    end
    near(0.9750021048517795, ab.normal_cdf(1.96), 1e-15, 'cdf 1.96')
    local xs = { 0.1, 1, 2.49, 2.5, 2.51, 4, 10, 26 }
    list = {}
    for i, x in ipairs(xs) do list[i] = string.format('%.17g', x) end
    local e = py('import math\nfor x in [' .. table.concat(list, ',') .. ']: print(repr(math.erfc(x)), repr(math.erf(x)))')
    for i, x in ipairs(xs) do
      rel(e[2 * i - 1], ab.erfc(x), 1e-13, 'erfc ' .. x)
      rel(e[2 * i], ab.erf(x), 1e-14, 'erf ' .. x)
    end
  end)

  it('computes log-gamma like python math.lgamma', function()
    local xs = { 0.5, 1, 1.5, 2, 3.7, 10, 101, 12345.5, 1e6 }
    local list = {}
    for i, x in ipairs(xs) do list[i] = string.format('%.17g', x) end
    local want = py('import math\nfor x in [' .. table.concat(list, ',') .. ']: print(repr(math.lgamma(x)))')
    for i, x in ipairs(xs) do near(want[i], ab.lgamma(x), 1e-9 * math.max(1, math.abs(want[i])), 'lgamma ' .. x) end
  end)
end)

describe('herald.ab proportions', function()
  it('gives the Wilson interval for 81 of 263 (the textbook example: 0.2553 to 0.3662)', function()
    local lo, hi = ab.wilson(81, 263)
    near(0.2553, lo, 5e-5, 'lo')
    near(0.3662, hi, 5e-5, 'hi')
    local want = py([[
from statistics import NormalDist
import math
z = NormalDist().inv_cdf(0.975)
for x, n in [(81, 263), (0, 10), (10, 10), (1, 2), (5000, 100000)]:
    p = x / n
    c = (p + z*z/(2*n)) / (1 + z*z/n)
    h = z / (1 + z*z/n) * math.sqrt(p*(1-p)/n + z*z/(4*n*n))
    print(repr(max(0.0, c - h)), repr(min(1.0, c + h)))
]])
    local cases = { { 81, 263 }, { 0, 10 }, { 10, 10 }, { 1, 2 }, { 5000, 100000 } }
    for i, c in ipairs(cases) do
      local l, u = ab.wilson(c[1], c[2])
      near(want[2 * i - 1], l, 1e-12, 'wilson lo ' .. c[1] .. '/' .. c[2])
      near(want[2 * i], u, 1e-12, 'wilson hi ' .. c[1] .. '/' .. c[2])
    end
    local p = ab.proportion(81, 263, 0.95)
    near(81 / 263, p.rate, 1e-15, 'rate')
    assert.are.equal(0.95, p.level)
  end)

  it('keeps the Wilson interval inside [0, 1] and away from a point at 0 successes, unlike Wald', function()
    local lo, hi = ab.wilson(0, 20)
    assert.are.equal(0, lo)
    assert.is_true(hi > 0.1 and hi < 0.2)
    local wlo, whi = ab.wald(0, 20)
    assert.are.equal(0, wlo)
    assert.are.equal(0, whi)
    lo, hi = ab.wald(81, 263)
    near(0.30798 - 1.959963985 * math.sqrt(0.30798 * 0.69202 / 263), lo, 1e-4, 'wald lo')
    near(0.30798 + 1.959963985 * math.sqrt(0.30798 * 0.69202 / 263), hi, 1e-4, 'wald hi')
    local l0, h0 = ab.wilson(0, 0)
    assert.are.same({ 0, 1 }, { l0, h0 })
  end)

  it('raises on counts that cannot be', function()
    assert.has_error(function() ab.wilson(5, 3) end)
    assert.has_error(function() ab.wilson(-1, 3) end)
    assert.has_error(function() ab.wilson(1.5, 3) end)
    assert.has_error(function() ab.wilson(1, 3, 1.2) end)
    assert.has_error(function() ab.wilson('1', 3) end)
  end)
end)

describe('herald.ab two-proportion test', function()
  it('matches an independent pooled z-test', function()
    local cases = { { 200, 1000, 250, 1000 }, { 56, 70, 48, 80 }, { 1, 50, 0, 50 },
      { 4500, 100000, 4700, 100000 }, { 30, 30, 29, 30 } }
    local prog = { 'from statistics import NormalDist\nimport math\nfor x1, n1, x2, n2 in [' }
    for _, c in ipairs(cases) do prog[#prog + 1] = string.format('(%d,%d,%d,%d),', table.unpack(c)) end
    prog[#prog + 1] = [[]:
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1/n1 + 1/n2))
    z = (x1/n1 - x2/n2) / se
    print(repr(z), repr(2 * (1 - NormalDist().cdf(abs(z)))))
]]
    local want = py(table.concat(prog))
    for i, c in ipairs(cases) do
      local t = assert(ab.z_test(table.unpack(c)))
      near(want[2 * i - 1], t.z, 1e-10, 'z ' .. i)
      near(want[2 * i], t.p_value, 1e-10, 'p ' .. i)
    end
  end)

  it('reports no difference when both groups are at 0 and refuses empty groups', function()
    local t = ab.z_test(0, 100, 0, 200)
    assert.are.equal(0, t.z)
    assert.are.equal(1, t.p_value)
    local none, err = ab.z_test(0, 0, 1, 10)
    assert.is_nil(none)
    assert.matches('no trials', err)
  end)

  it("gives Newcombe's interval for a difference (56/70 vs 48/80: 0.0524 to 0.3339)", function()
    local d = assert(ab.difference(56, 70, 48, 80))
    near(0.2, d.diff, 1e-12, 'diff')
    near(0.0524, d.lo, 5e-5, 'lo')
    near(0.3339, d.hi, 5e-5, 'hi')
    local w = py('import math\nfrom statistics import NormalDist\nz = NormalDist().inv_cdf(0.975)\n' ..
      'se = math.sqrt(0.8*0.2/70 + 0.6*0.4/80)\nprint(repr(0.2 - z*se), repr(0.2 + z*se))')
    near(w[1], d.wald_lo, 1e-12, 'wald lo')
    near(w[2], d.wald_hi, 1e-12, 'wald hi')
  end)
end)

describe('herald.ab lift over the holdout', function()
  it('matches an independent log risk ratio interval', function()
    local want = py([[
import math
from statistics import NormalDist
z = NormalDist().inv_cdf(0.975)
for xt, nt, xh, nh in [(300, 10000, 200, 10000), (12, 400, 9, 380), (5, 100, 5, 100)]:
    rr = (xt/nt) / (xh/nh)
    se = math.sqrt(1/xt - 1/nt + 1/xh - 1/nh)
    print(repr(rr - 1), repr(math.exp(math.log(rr) - z*se) - 1), repr(math.exp(math.log(rr) + z*se) - 1))
]])
    local cases = { { 300, 10000, 200, 10000 }, { 12, 400, 9, 380 }, { 5, 100, 5, 100 } }
    for i, c in ipairs(cases) do
      local l = assert(ab.lift(table.unpack(c)))
      near(want[3 * i - 2], l.lift, 1e-12, 'lift ' .. i)
      near(want[3 * i - 1], l.lo, 1e-12, 'lo ' .. i)
      near(want[3 * i], l.hi, 1e-12, 'hi ' .. i)
      assert.is_false(l.corrected)
    end
    local l = ab.lift(300, 10000, 200, 10000)
    near(0.5, l.lift, 1e-12, '3% over 2% is +50%')
    assert.is_true(l.lo > 0, 'a lift that large at this sample excludes 0')
  end)

  it('corrects a treatment with no successes and refuses a holdout with none', function()
    local l = assert(ab.lift(0, 100, 5, 100))
    assert.are.equal(-1, l.lift)
    assert.is_true(l.corrected)
    assert.is_true(l.lo > -1 and l.hi > l.lo)
    local none, err = ab.lift(5, 100, 0, 100)
    assert.is_nil(none)
    assert.matches('holdout has no successes', err)
  end)
end)

describe('herald.ab Bayesian view', function()
  it('matches the closed form of P(B > A) for two Beta posteriors', function()
    -- P(B > A) = sum_{i=0}^{aB-1} B(aA+i, bA+bB) / ((bB+i) B(1+i, bB) B(aA, bA)) (Evan Miller)
    local cases = { { 10, 100, 15, 100 }, { 40, 1000, 52, 1000 }, { 3, 20, 2, 25 }, { 0, 10, 0, 10 } }
    local prog = { 'import math\ndef lb(a, b): return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)\nfor xa, na, xb, nb in [' }
    for _, c in ipairs(cases) do prog[#prog + 1] = string.format('(%d,%d,%d,%d),', table.unpack(c)) end
    prog[#prog + 1] = [[]:
    aA, bA, aB, bB = 1 + xa, 1 + na - xa, 1 + xb, 1 + nb - xb
    s = sum(math.exp(lb(aA + i, bA + bB) - math.log(bB + i) - lb(1 + i, bB) - lb(aA, bA)) for i in range(aB))
    print(repr(s))
]]
    local want = py(table.concat(prog))
    for i, c in ipairs(cases) do
      local r = ab.p_best({ { x = c[1], n = c[2] }, { x = c[3], n = c[4] } })
      near(want[i], r.p_best[2], 1e-5, 'P(B best) case ' .. i)
      near(1, r.p_best[1] + r.p_best[2], 1e-12, 'sums to 1')
    end
  end)

  it('agrees with a python Monte Carlo for three arms, and is deterministic', function()
    local arms = { { x = 30, n = 500 }, { x = 42, n = 500 }, { x = 38, n = 520 } }
    local want = py([[
import random
random.seed(12345)
arms = [(30, 500), (42, 500), (38, 520)]
wins = [0, 0, 0]
loss = [0.0, 0.0, 0.0]
N = 200000
for _ in range(N):
    d = [random.betavariate(1 + x, 1 + n - x) for x, n in arms]
    m = max(d)
    wins[d.index(m)] += 1
    for i in range(3): loss[i] += m - d[i]
print(*[w / N for w in wins], *[l / N for l in loss])
]])
    local r = ab.p_best(arms)
    for i = 1, 3 do
      near(want[i], r.p_best[i], 0.006, 'P(best) arm ' .. i)
      near(want[3 + i], r.expected_loss[i], 3e-4, 'expected loss arm ' .. i)
    end
    assert.are.same(r, ab.p_best(arms))
  end)

  it('resolves a narrow posterior next to a wide one', function()
    local r = ab.p_best({ { x = 5, n = 10 }, { x = 50000, n = 100000 } })
    near(0.5, r.p_best[1], 0.01, 'wide arm')
    near(1, r.p_best[1] + r.p_best[2], 1e-12, 'sum')
  end)
end)

describe('herald.ab sample size', function()
  it('matches the pooled-variance formula computed independently', function()
    local want = py([[
import math
from statistics import NormalDist
N = NormalDist()
for p1, p2, a, pw in [(0.10, 0.12, 0.05, 0.8), (0.02, 0.025, 0.05, 0.9), (0.5, 0.6, 0.01, 0.8)]:
    za, zb = N.inv_cdf(1 - a/2), N.inv_cdf(pw)
    pb = (p1 + p2) / 2
    n = (za*math.sqrt(2*pb*(1-pb)) + zb*math.sqrt(p1*(1-p1) + p2*(1-p2)))**2 / (p1-p2)**2
    print(math.ceil(n))
]])
    assert.are.equal(want[1], ab.sample_size(0.10, 0.12, 0.05, 0.8))
    assert.are.equal(want[2], ab.sample_size(0.02, 0.025, 0.05, 0.9))
    assert.are.equal(want[3], ab.sample_size(0.5, 0.6, 0.01, 0.8))
    -- the usual rule of thumb for 10% vs 12% at 80% power: about 3,800 per arm
    assert.is_true(want[1] > 3700 and want[1] < 3900)
    assert.is_nil((ab.sample_size(0.1, 0.1)))
  end)
end)

describe('herald.ab automatic winner', function()
  local clear = {
    { id = 'A', n = 5000, x = 500 },
    { id = 'B', n = 5000, x = 640 },
  }
  local close = {
    { id = 'A', n = 2000, x = 200 },
    { id = 'B', n = 2000, x = 212 },
    { id = 'C', n = 2000, x = 190 },
  }

  it('waits below the minimum sample', function()
    local d = ab.decide { arms = clear, metric = 'clicks', min_sample = 6000 }
    assert.are.equal('wait', d.decision)
    assert.is_nil(d.winner)
    assert.matches('minimum sample of 6000: A %(5000%), B %(5000%)', d.reason)
  end)

  it('names a significant winner with the numbers it used', function()
    local d = ab.decide { arms = clear, metric = 'clicks', min_sample = 1000, alpha = 0.05, policy = 'stop' }
    assert.are.equal('winner', d.decision)
    assert.are.equal('B', d.winner)
    assert.are.equal('B', d.leader)
    assert.are.equal(1, #d.comparisons)
    local c = d.comparisons[1]
    assert.are.equal('A', c.id)
    assert.are.equal('B', c.against)
    local t = ab.z_test(640, 5000, 500, 5000)
    assert.are.equal(t.z, c.z)
    assert.is_true(c.p_value < 0.05 and c.significant)
    assert.is_true(c.diff_lo > 0)
    assert.is_true(d.arms[2].p_best > 0.99)
    assert.are.equal(0.128, d.arms[2].rate)
    assert.are.equal('clicks', d.metric)
  end)

  it('applies each policy when nothing wins significantly', function()
    local best = ab.decide { arms = close, metric = 'opens', policy = 'send_best' }
    assert.are.equal('send_best', best.decision)
    assert.are.equal('B', best.winner)
    near(0.05 / 2, best.alpha_per_comparison, 1e-15, 'Bonferroni')
    assert.are.equal(2, #best.comparisons)
    for _, c in ipairs(best.comparisons) do assert.is_false(c.significant) end

    local default = ab.decide { arms = close, metric = 'opens', policy = 'send_default', default = 'C' }
    assert.are.equal('send_default', default.decision)
    assert.are.equal('C', default.winner)

    local stop = ab.decide { arms = close, metric = 'conversions', policy = 'stop' }
    assert.are.equal('stop', stop.decision)
    assert.is_nil(stop.winner)
    assert.matches('no significant winner', stop.reason)
  end)

  it('sends the default, saying so, when no arm has a single trial', function()
    -- opens of a campaign that delivered no email: nothing to lead on
    local none = { { id = 0, n = 0, x = 0 }, { id = 1, n = 0, x = 0 }, { id = 2, n = 0, x = 0 } }
    local best = ab.decide { arms = none, metric = 'opens', policy = 'send_best', default = 1, final = true }
    assert.are.equal('send_best', best.decision)
    assert.are.equal(1, best.winner)
    assert.is_nil(best.leader)
    assert.are.equal('no trials on opens in any treatment (opens and clicks count email deliveries); sending the default 1',
      best.reason)
    local stop = ab.decide { arms = none, metric = 'conversions', policy = 'stop', final = true }
    assert.are.equal('stop', stop.decision)
    assert.is_nil(stop.winner)
    assert.are.equal('no trials on conversions in any treatment; stopping', stop.reason)
    -- one trial anywhere is data: the usual rules apply
    local one = ab.decide { arms = { { id = 0, n = 0, x = 0 }, { id = 1, n = 1, x = 1 } }, policy = 'send_best', final = true }
    assert.are.equal(1, one.winner)
    assert.matches('no significant winner', one.reason)
  end)

  it('decides below the minimum sample once the test window is over', function()
    local d = ab.decide { arms = close, min_sample = 10000, final = true, policy = 'send_best' }
    assert.are.equal('send_best', d.decision)
    assert.matches('below the minimum sample', d.reason)
  end)

  it('needs more than Bonferroni-adjusted significance with several arms', function()
    -- B over A alone is significant at 0.05 (p ~ 0.03) but not at 0.05/2 with a third arm
    local two = ab.decide { arms = { { id = 'A', n = 3000, x = 300 }, { id = 'B', n = 3000, x = 352 } }, policy = 'stop' }
    local p = two.comparisons[1].p_value
    assert.is_true(p < 0.05 and p > 0.025, 'p = ' .. p)
    assert.are.equal('winner', two.decision)
    local three = ab.decide { arms = { { id = 'A', n = 3000, x = 300 }, { id = 'B', n = 3000, x = 352 },
      { id = 'C', n = 3000, x = 280 } }, policy = 'stop' }
    assert.are.equal('stop', three.decision)
  end)

  it('returns a record of plain values only', function()
    local d = ab.decide { arms = close, policy = 'send_best' }
    local function plain(v, path)
      local t = type(v)
      if t == 'table' then
        for k, x in pairs(v) do plain(x, path .. '.' .. tostring(k)) end
      else
        assert(t == 'number' or t == 'string' or t == 'boolean', path .. ' is a ' .. t)
      end
    end
    plain(d, 'decision')
  end)

  it('rejects bad definitions with the field named', function()
    assert.has_error(function() ab.decide { arms = clear, policy = 'coin' } end,
      'decide: policy must be send_best, send_default or stop, got coin')
    assert.has_error(function() ab.decide { arms = clear, metric = 'likes' } end,
      'decide: metric must be opens, clicks or conversions, got likes')
    assert.has_error(function() ab.decide { arms = clear, policy = 'send_default' } end,
      'decide: policy send_default needs default = the id of one of the arms')
    assert.has_error(function() ab.decide { arms = { { id = 'A', n = 1, x = 2 }, { id = 'B', n = 1, x = 0 } } } end,
      'decide: arms[1] (A): need integers 0 <= x <= n')
    assert.has_error(function() ab.decide { arms = { { id = 'A', n = 1, x = 0 } } } end,
      'decide: arms needs at least two treatments')
    assert.has_error(function() ab.decide { arms = { { id = 'A', n = 1, x = 0 }, { id = 'A', n = 1, x = 0 } } } end,
      'decide: arms[2]: duplicate id A')
  end)
end)
