-- A/B statistics for treatments and holdouts: proportions with confidence intervals, the
-- two-proportion z-test, differences and lift over the holdout, a Bayesian P(best), sample
-- sizes, and the automatic-winner decision.
--
-- Conventions: a rate is x successes out of n trials (x opens out of n deliveries, ...).
-- Confidence levels are two-sided (0.95 unless given). Every function that can be asked
-- something it cannot answer (n = 0, a rate of 0 in a ratio's denominator, ...) returns
-- nil, message; definition errors (a negative count, x > n) raise.
--
-- Numerics, all implemented here (Lua 5.4 has no erf):
-- * erfc: the Taylor series of erf with all-positive terms, erf(x) = 2/sqrt(pi) exp(-x^2)
--   sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)), for |x| < 2.5 (no cancellation, ~1e-16 absolute);
--   beyond, the continued fraction of erfc evaluated by the modified Lentz method, which keeps
--   relative accuracy far into the tail.
-- * the normal quantile: Acklam's rational approximation (relative error ~1e-9) refined by
--   Halley steps against the erfc-based CDF, so it is as accurate as the CDF itself.
-- * log-gamma: Lanczos (g = 7, 9 terms), ~1e-15 relative.
-- * P(best) and expected loss under Beta(1 + x, 1 + n - x) posteriors by deterministic
--   numerical integration on a grid that follows every arm's posterior mass (see p_best).
local ab = {}

local sqrt, exp, log, abs, huge, pi = math.sqrt, math.exp, math.log, math.abs, math.huge, math.pi

local function check_count(x, n, what)
  what = what or 'count'
  if type(x) ~= 'number' or type(n) ~= 'number' or x ~= x or n ~= n then
    error(string.format('%s: x and n must be numbers (got %s, %s)', what, type(x), type(n)), 3)
  end
  if n < 0 or x < 0 or x > n or x ~= math.floor(x) or n ~= math.floor(n) then
    error(string.format('%s: need integers 0 <= x <= n (got x=%s, n=%s)', what, tostring(x),
      tostring(n)), 3)
  end
end

local function check_level(level)
  level = level or 0.95
  if type(level) ~= 'number' or not (level > 0 and level < 1) then
    error('confidence level must be in (0, 1), got ' .. tostring(level), 3)
  end
  return level
end

-- erf / erfc ------------------------------------------------------------------------------

local TWO_OVER_SQRT_PI = 2 / sqrt(pi)

local function erf_series(x)
  -- x >= 0 and small: all terms positive
  local x2 = x * x
  local term = x
  local sum = x
  local k = 0
  repeat
    k = k + 1
    term = term * 2 * x2 / (2 * k + 1)
    sum = sum + term
  until term <= sum * 1e-17
  return TWO_OVER_SQRT_PI * exp(-x2) * sum
end

-- erfc(x) for x >= 2.5: erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))
local function erfc_cf(x)
  local tiny = 1e-300
  local f = x
  local C, D = f, 0
  for k = 1, 500 do
    local a = k / 2
    D = x + a * D
    if D == 0 then D = tiny end
    C = x + a / C
    if C == 0 then C = tiny end
    D = 1 / D
    local delta = C * D
    f = f * delta
    if abs(delta - 1) < 1e-16 then break end
  end
  return exp(-x * x) / sqrt(pi) / f
end

function ab.erfc(x)
  if x ~= x then return x end
  if x < 0 then return 2 - ab.erfc(-x) end
  if x == huge then return 0 end
  if x < 2.5 then return 1 - erf_series(x) end
  return erfc_cf(x)
end

function ab.erf(x)
  if x ~= x then return x end
  if x < 0 then return -ab.erf(-x) end
  if x < 2.5 then return erf_series(x) end
  return 1 - erfc_cf(x)
end

local SQRT2 = sqrt(2)

-- Standard normal CDF.
function ab.normal_cdf(z)
  return 0.5 * ab.erfc(-z / SQRT2)
end

-- Standard normal density.
local function normal_pdf(z)
  return exp(-0.5 * z * z) / sqrt(2 * pi)
end
ab.normal_pdf = normal_pdf

-- Acklam's coefficients.
local A = { -3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
  1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00 }
local B = { -5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
  6.680131188771972e+01, -1.328068155288572e+01 }
local C = { -7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
  -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00 }
local D = { 7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
  3.754408661907416e+00 }
local P_LOW = 0.02425

local function acklam(p)
  if p < P_LOW then
    local q = sqrt(-2 * log(p))
    return (((((C[1] * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5]) * q + C[6]) /
      ((((D[1] * q + D[2]) * q + D[3]) * q + D[4]) * q + 1)
  elseif p <= 1 - P_LOW then
    local q = p - 0.5
    local r = q * q
    return (((((A[1] * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * r + A[6]) * q /
      (((((B[1] * r + B[2]) * r + B[3]) * r + B[4]) * r + B[5]) * r + 1)
  else
    local q = sqrt(-2 * log(1 - p))
    return -(((((C[1] * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5]) * q + C[6]) /
      ((((D[1] * q + D[2]) * q + D[3]) * q + D[4]) * q + 1)
  end
end

-- Inverse of the standard normal CDF: the z with normal_cdf(z) = p.
function ab.normal_quantile(p)
  if type(p) ~= 'number' or p ~= p or p < 0 or p > 1 then
    error('normal_quantile: p must be in [0, 1], got ' .. tostring(p), 2)
  end
  if p == 0 then return -huge end
  if p == 1 then return huge end
  local x = acklam(p)
  -- Halley steps on the lower tail so precision holds for p near 0 (and by symmetry near 1).
  local lower = p <= 0.5
  local target = lower and p or 1 - p
  if not lower then x = -x end
  for _ = 1, 3 do
    local e = ab.normal_cdf(x) - target
    local u = e / normal_pdf(x)
    local step = u / (1 + x * u / 2)
    x = x - step
    if abs(step) < 1e-15 * (1 + abs(x)) then break end
  end
  return lower and x or -x
end

-- z for a two-sided confidence level (1.959963985 for 0.95).
function ab.z_for_level(level)
  level = check_level(level)
  return ab.normal_quantile(1 - (1 - level) / 2)
end

-- Gamma and Beta ----------------------------------------------------------------------------

local LANCZOS = { 0.99999999999980993, 676.5203681218851, -1259.1392167224028,
  771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012,
  9.9843695780195716e-6, 1.5056327351493116e-7 }

function ab.lgamma(x)
  if x < 0.5 then
    -- reflection: Gamma(x) Gamma(1-x) = pi / sin(pi x)
    return log(pi / abs(math.sin(pi * x))) - ab.lgamma(1 - x)
  end
  x = x - 1
  local a = LANCZOS[1]
  local t = x + 7.5
  for i = 2, 9 do a = a + LANCZOS[i] / (x + i - 1) end
  return 0.5 * log(2 * pi) + (x + 0.5) * log(t) - t + log(a)
end

function ab.lbeta(a, b)
  return ab.lgamma(a) + ab.lgamma(b) - ab.lgamma(a + b)
end

-- Proportions --------------------------------------------------------------------------------

-- Wilson score interval for x out of n: lo, hi. n = 0 gives the whole range [0, 1].
function ab.wilson(x, n, level)
  check_count(x, n, 'wilson')
  level = check_level(level)
  if n == 0 then return 0, 1 end
  local z = ab.z_for_level(level)
  local p = x / n
  local z2 = z * z
  local denom = 1 + z2 / n
  local centre = (p + z2 / (2 * n)) / denom
  local half = z / denom * sqrt(p * (1 - p) / n + z2 / (4 * n * n))
  local lo, hi = centre - half, centre + half
  -- the interval contains 0 (or 1) exactly when x is 0 (or n); keep rounding from moving it
  if x == 0 then lo = 0 end
  if x == n then hi = 1 end
  return math.max(0, lo), math.min(1, hi)
end

-- Wald interval p +- z sqrt(p(1-p)/n), clipped to [0, 1]; for comparison only: it collapses to
-- a point at x = 0 and undercovers at small n, which is why wilson is the default.
function ab.wald(x, n, level)
  check_count(x, n, 'wald')
  level = check_level(level)
  if n == 0 then return 0, 1 end
  local z = ab.z_for_level(level)
  local p = x / n
  local half = z * sqrt(p * (1 - p) / n)
  return math.max(0, p - half), math.min(1, p + half)
end

-- A rate with its Wilson interval: {x=, n=, rate=, lo=, hi=, level=}. rate is nil when n = 0.
function ab.proportion(x, n, level)
  check_count(x, n, 'proportion')
  level = check_level(level)
  local lo, hi = ab.wilson(x, n, level)
  return { x = x, n = n, rate = n > 0 and x / n or nil, lo = lo, hi = hi, level = level }
end

-- Two-proportion z-test with the pooled standard error (H0: p1 = p2).
-- Returns {z=, p_value= (two-sided), p1=, p2=, pooled=, se=} or nil, err.
function ab.z_test(x1, n1, x2, n2)
  check_count(x1, n1, 'z_test (first)')
  check_count(x2, n2, 'z_test (second)')
  if n1 == 0 or n2 == 0 then return nil, 'z_test: a group has no trials' end
  local p1, p2 = x1 / n1, x2 / n2
  local pooled = (x1 + x2) / (n1 + n2)
  local se = sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
  local z, p_value
  if se == 0 then
    -- both rates are 0 (or both 1): no evidence of any difference
    z, p_value = 0, 1
  else
    z = (p1 - p2) / se
    p_value = math.min(1, ab.erfc(abs(z) / SQRT2))
  end
  return { z = z, p_value = p_value, p1 = p1, p2 = p2, pooled = pooled, se = se }
end

-- Difference p1 - p2 with Newcombe's hybrid score interval (his method 10, built from the two
-- Wilson intervals; good coverage at small counts, unlike the Wald difference).
-- Returns {diff=, lo=, hi=, level=, wald_lo=, wald_hi=} or nil, err.
function ab.difference(x1, n1, x2, n2, level)
  check_count(x1, n1, 'difference (first)')
  check_count(x2, n2, 'difference (second)')
  level = check_level(level)
  if n1 == 0 or n2 == 0 then return nil, 'difference: a group has no trials' end
  local p1, p2 = x1 / n1, x2 / n2
  local l1, u1 = ab.wilson(x1, n1, level)
  local l2, u2 = ab.wilson(x2, n2, level)
  local d = p1 - p2
  local z = ab.z_for_level(level)
  local se = sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
  return {
    diff = d,
    lo = d - sqrt((p1 - l1) ^ 2 + (u2 - p2) ^ 2),
    hi = d + sqrt((u1 - p1) ^ 2 + (p2 - l2) ^ 2),
    level = level,
    wald_lo = d - z * se,
    wald_hi = d + z * se,
  }
end

-- Relative lift of a treatment over the holdout, (p_t - p_h) / p_h, with the interval of the
-- log risk ratio: log(p_t/p_h) +- z sqrt(1/x_t - 1/n_t + 1/x_h - 1/n_h), mapped back by
-- exp(.) - 1. When the treatment has no successes the log is undefined: 0.5 is added to
-- every count of successes and of failures (x + 0.5 of n + 1, Haldane-Anscombe) for the
-- interval only, and `corrected` says so.
-- Returns {lift=, lo=, hi=, ratio=, level=, corrected=} or nil, err (no holdout successes:
-- the lift is not defined).
function ab.lift(xt, nt, xh, nh, level)
  check_count(xt, nt, 'lift (treatment)')
  check_count(xh, nh, 'lift (holdout)')
  level = check_level(level)
  if nt == 0 or nh == 0 then return nil, 'lift: a group has no trials' end
  if xh == 0 then return nil, 'lift: the holdout has no successes, so relative lift is not defined' end
  local pt, ph = xt / nt, xh / nh
  local ratio = pt / ph
  local cx, cn, corrected = 0, 0, false
  if xt == 0 then cx, cn, corrected = 0.5, 1, true end
  local a, b = xt + cx, nt + cn
  local c, d = xh + cx, nh + cn
  local lr = log((a / b) / (c / d))
  local se = sqrt(1 / a - 1 / b + 1 / c - 1 / d)
  local z = ab.z_for_level(level)
  return {
    lift = ratio - 1,
    ratio = ratio,
    lo = exp(lr - z * se) - 1,
    hi = exp(lr + z * se) - 1,
    level = level,
    corrected = corrected,
  }
end

-- Bayesian view ------------------------------------------------------------------------------

-- P(best) and expected loss for arms {{x=, n=}, ...} under Beta(1, 1) priors (posterior
-- Beta(1 + x, 1 + n - x)).
--
-- P(arm i is best) = integral f_i(t) prod_{j ~= i} F_j(t) dt. The integral runs on the union of
-- per-arm grids (each arm: its posterior mean +- 12 sd, `points` points, clipped to [0, 1]), so
-- a narrow posterior next to a wide one is still resolved. Densities come from lgamma; each
-- CDF is the cumulative trapezoid of its density on that grid, normalised to 1. Expected loss
-- of choosing i is E[max_j p_j] - E[p_i], with E[max] = hi - integral prod_j F_j over [lo, hi].
-- Deterministic; accurate to ~1e-6 with the default 2000 points per arm.
-- Returns {p_best = {...}, expected_loss = {...}}.
function ab.p_best(arms, opts)
  opts = opts or {}
  local points = opts.points or 2000
  local k = #arms
  if k == 0 then error('p_best: no arms', 2) end
  local params = {}
  for i, a in ipairs(arms) do
    check_count(a.x, a.n, 'p_best arm ' .. i)
    local al, be = 1 + a.x, 1 + a.n - a.x
    params[i] = { a = al, b = be, lnorm = ab.lbeta(al, be), mean = al / (al + be) }
  end
  local grid = {}
  for _, p in ipairs(params) do
    local s = p.a + p.b
    local sd = sqrt(p.a * p.b / (s * s * (s + 1)))
    local lo, hi = math.max(0, p.mean - 12 * sd), math.min(1, p.mean + 12 * sd)
    for j = 0, points do grid[#grid + 1] = lo + (hi - lo) * j / points end
  end
  table.sort(grid)
  local xs = {}
  for _, t in ipairs(grid) do
    if #xs == 0 or t - xs[#xs] > 1e-15 then xs[#xs + 1] = t end
  end
  local m = #xs
  local pdf, cdf = {}, {}
  for i, p in ipairs(params) do
    local f = {}
    for j = 1, m do
      local t = xs[j]
      local v
      if (t <= 0 and p.a > 1) or (t >= 1 and p.b > 1) then
        v = 0
      else
        local la = p.a > 1 and (p.a - 1) * log(t) or 0
        local lb = p.b > 1 and (p.b - 1) * log(1 - t) or 0
        v = exp(la + lb - p.lnorm)
      end
      f[j] = v
    end
    local F = { 0 }
    for j = 2, m do F[j] = F[j - 1] + 0.5 * (f[j] + f[j - 1]) * (xs[j] - xs[j - 1]) end
    local total = F[m]
    for j = 1, m do
      F[j] = F[j] / total
      f[j] = f[j] / total
    end
    pdf[i], cdf[i] = f, F
  end
  local best = {}
  for i = 1, k do
    local g = {}
    for j = 1, m do
      local v = pdf[i][j]
      for o = 1, k do
        if o ~= i then v = v * cdf[o][j] end
      end
      g[j] = v
    end
    local s = 0
    for j = 2, m do s = s + 0.5 * (g[j] + g[j - 1]) * (xs[j] - xs[j - 1]) end
    best[i] = s
  end
  local total = 0
  for i = 1, k do total = total + best[i] end
  for i = 1, k do best[i] = best[i] / total end
  local prodF = {}
  for j = 1, m do
    local v = 1
    for i = 1, k do v = v * cdf[i][j] end
    prodF[j] = v
  end
  local integral = 0
  for j = 2, m do integral = integral + 0.5 * (prodF[j] + prodF[j - 1]) * (xs[j] - xs[j - 1]) end
  local emax = xs[m] - integral
  local loss = {}
  for i = 1, k do loss[i] = math.max(0, emax - params[i].mean) end
  return { p_best = best, expected_loss = loss }
end

-- Sample size ---------------------------------------------------------------------------------

-- Trials needed per arm to detect rates p1 vs p2 with a two-sided test at alpha and the given
-- power (normal approximation with the pooled variance under H0):
-- n = (z_{1-alpha/2} sqrt(2 pbar (1 - pbar)) + z_{power} sqrt(p1 q1 + p2 q2))^2 / (p1 - p2)^2.
function ab.sample_size(p1, p2, alpha, power)
  alpha = alpha or 0.05
  power = power or 0.8
  for _, v in ipairs({ p1, p2, alpha, power }) do
    if type(v) ~= 'number' or not (v > 0 and v < 1) then
      error('sample_size: rates, alpha and power must be in (0, 1)', 2)
    end
  end
  if p1 == p2 then return nil, 'sample_size: the rates are equal, no sample detects no difference' end
  local za = ab.normal_quantile(1 - alpha / 2)
  local zb = ab.normal_quantile(power)
  local pbar = (p1 + p2) / 2
  local num = za * sqrt(2 * pbar * (1 - pbar)) + zb * sqrt(p1 * (1 - p1) + p2 * (1 - p2))
  return math.ceil(num * num / ((p1 - p2) ^ 2))
end

-- Automatic winner --------------------------------------------------------------------------

local POLICIES = { send_best = true, send_default = true, stop = true }
local METRICS = { opens = true, clicks = true, conversions = true }

-- Decides the winner of an A/B test.
--   arms        {{id=, n=, x=}, ...}: per treatment, trials (deliveries) and successes on
--               the metric; the holdout is not an arm (it receives nothing either way).
--   metric      'opens' | 'clicks' | 'conversions' (recorded with the decision)
--   min_sample  trials every arm needs before a decision (default 0)
--   alpha       significance level (default 0.05), Bonferroni-split over the k-1 comparisons
--               of the leader against the others
--   policy      when no arm wins significantly: 'send_best' (the leader), 'send_default'
--               (the arm named by `default`), 'stop' (send nothing more)
--   default     id of the default arm (required for send_default)
--   final       true when the test window is over: decide even below min_sample
-- Returns a table that can be recorded as is:
--   {decision = 'wait'|'winner'|'send_best'|'send_default'|'stop', winner = id or nil,
--    reason = text, metric, alpha, alpha_per_comparison, min_sample, policy,
--    leader = id (nil when no arm has a trial: then the default is sent, or nothing under stop),
--    arms = {{id, n, x, rate, lo, hi, p_best, expected_loss}...},
--    comparisons = {{id, against = leader id, z, p_value, significant, diff, diff_lo, diff_hi}...}}
function ab.decide(opts)
  if type(opts) ~= 'table' then error('decide: expects a table of options', 2) end
  local arms = opts.arms
  if type(arms) ~= 'table' or #arms < 2 then error('decide: arms needs at least two treatments', 2) end
  local metric = opts.metric or 'clicks'
  if not METRICS[metric] then
    error('decide: metric must be opens, clicks or conversions, got ' .. tostring(metric), 2)
  end
  local policy = opts.policy or 'send_best'
  if not POLICIES[policy] then
    error('decide: policy must be send_best, send_default or stop, got ' .. tostring(policy), 2)
  end
  local alpha = opts.alpha or 0.05
  if type(alpha) ~= 'number' or not (alpha > 0 and alpha < 1) then
    error('decide: alpha must be in (0, 1), got ' .. tostring(alpha), 2)
  end
  local min_sample = opts.min_sample or 0
  if type(min_sample) ~= 'number' or min_sample < 0 then
    error('decide: min_sample must be a count >= 0', 2)
  end
  local ids = {}
  for i, a in ipairs(arms) do
    if type(a) ~= 'table' then error('decide: arms[' .. i .. '] must be a table', 2) end
    if a.id == nil then error('decide: arms[' .. i .. '] has no id', 2) end
    if ids[a.id] then error('decide: arms[' .. i .. ']: duplicate id ' .. tostring(a.id), 2) end
    ids[a.id] = true
    if type(a.x) ~= 'number' or type(a.n) ~= 'number' or a.x < 0 or a.x > a.n
      or a.x ~= math.floor(a.x) or a.n ~= math.floor(a.n) then
      error(string.format('decide: arms[%d] (%s): need integers 0 <= x <= n', i, tostring(a.id)), 2)
    end
  end
  if policy == 'send_default' and (opts.default == nil or not ids[opts.default]) then
    error('decide: policy send_default needs default = the id of one of the arms', 2)
  end

  local k = #arms
  local per = alpha / (k - 1)
  local bayes = ab.p_best(arms)
  local out = {
    metric = metric, alpha = alpha, alpha_per_comparison = per, min_sample = min_sample,
    policy = policy, default = opts.default, arms = {}, comparisons = {},
  }
  local leader
  for i, a in ipairs(arms) do
    local lo, hi = ab.wilson(a.x, a.n)
    out.arms[i] = {
      id = a.id, n = a.n, x = a.x, rate = a.n > 0 and a.x / a.n or nil, lo = lo, hi = hi,
      p_best = bayes.p_best[i], expected_loss = bayes.expected_loss[i],
    }
    local r = a.n > 0 and a.x / a.n or -1
    if leader == nil or r > leader.r then leader = { i = i, r = r } end
  end
  local lead = arms[leader.i]
  out.leader = lead.id

  local short = {}
  for _, a in ipairs(arms) do
    if a.n < min_sample then short[#short + 1] = tostring(a.id) .. ' (' .. a.n .. ')' end
  end
  if #short > 0 and not opts.final then
    out.decision = 'wait'
    out.reason = string.format('below the minimum sample of %d: %s', min_sample,
      table.concat(short, ', '))
    return out
  end

  local all_significant = lead.n > 0
  for i, a in ipairs(arms) do
    if i ~= leader.i then
      local c = { id = a.id, against = lead.id }
      local t = a.n > 0 and lead.n > 0 and ab.z_test(lead.x, lead.n, a.x, a.n)
      if t then
        local d = ab.difference(lead.x, lead.n, a.x, a.n, 1 - per)
        c.z, c.p_value = t.z, t.p_value
        c.diff, c.diff_lo, c.diff_hi = d.diff, d.lo, d.hi
        c.significant = t.p_value < per and t.z > 0
      else
        c.significant = false
      end
      if not c.significant then all_significant = false end
      out.comparisons[#out.comparisons + 1] = c
    end
  end

  local trials = 0
  for _, a in ipairs(arms) do trials = trials + a.n end
  if trials == 0 then
    -- Nothing measured in any arm (opens or clicks of a campaign that delivered no email, say):
    -- there is no leader to send, only the default, and the reason says why.
    local why = string.format('no trials on %s in any treatment%s', metric,
      metric ~= 'conversions' and ' (opens and clicks count email deliveries)' or '')
    if policy == 'stop' then
      out.decision = 'stop'
      out.reason = why .. '; stopping'
    else
      out.decision = policy == 'send_default' and 'send_default' or 'send_best'
      out.winner = opts.default ~= nil and opts.default or arms[1].id
      out.reason = string.format('%s; sending the default %s', why, tostring(out.winner))
    end
    out.leader = nil
    return out
  end

  if all_significant then
    out.decision = 'winner'
    out.winner = lead.id
    out.reason = string.format('%s leads on %s and beats every other treatment at p < %.4g',
      tostring(lead.id), metric, per)
  elseif policy == 'send_best' then
    out.decision = 'send_best'
    out.winner = lead.id
    out.reason = string.format('no significant winner at alpha %.4g; sending the leader %s',
      alpha, tostring(lead.id))
  elseif policy == 'send_default' then
    out.decision = 'send_default'
    out.winner = opts.default
    out.reason = string.format('no significant winner at alpha %.4g; sending the default %s',
      alpha, tostring(opts.default))
  else
    out.decision = 'stop'
    out.reason = string.format('no significant winner at alpha %.4g; stopping', alpha)
  end
  if #short > 0 then out.reason = out.reason .. ' (test window over below the minimum sample)' end
  return out
end

return ab
