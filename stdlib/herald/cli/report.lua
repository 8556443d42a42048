-- `herald report CAMPAIGN`: a campaign's results per treatment and holdout (herald.analytics) as
-- a terminal table, or as a self-contained HTML page with charts (--html FILE).
local analytics = require 'herald.analytics'

local M = {}

M.usage = [[
usage: herald report CAMPAIGN [options]

Prints the campaign's figures per treatment and holdout: endpoints, sends, failed messages
(refused for good, retries spent, or not built), hard bounces (bounce notices, and recipients
refused at SMTP RCPT, whose messages are among the failed), deliveries (sends minus the hard
bounces of sent messages) and the delivery rate (deliveries over sends and failed), unique
opens, clicks (a recipient's clicks in one clock hour count once), unsubscribes and
conversions, with rates (opens, clicks and unsubscribes over email deliveries alone), 95%
intervals (Wilson), two-proportion tests between treatments, P(best) and the lift of each
treatment over the holdout.

options:
  --run N              one run (campaign activity) instead of all runs
  --conversion TYPE    the event type that counts as a conversion (e.g. purchase); each one is
                       credited to the last message the endpoint got from the campaign within
                       the window; holdout endpoints are watched from when their run was
                       due for them (in a local-time run, their zone's send time)
  --window DAYS        the conversion window (default 7)
  --html FILE          also write a self-contained HTML page with charts to FILE
]]

local function fail(fmt, ...)
  io.stderr:write('herald report: ' .. string.format(fmt, ...) .. '\n')
  return 2
end

local function pct(x) return string.format('%.1f%%', 100 * x) end

-- A rate with its interval: "12.5% [8.1%-18.7%]"; "-" without a denominator.
local function rate_text(r)
  if r == nil or r.rate == nil then return '-' end
  return string.format('%s [%s-%s]', pct(r.rate), pct(r.lo), pct(r.hi))
end

local function signed_pct(x) return string.format('%+.1f%%', 100 * x) end

local function lift_text(l)
  if l == nil then return '-' end
  return string.format('%s [%s,%s]', signed_pct(l.lift), signed_pct(l.lo), signed_pct(l.hi))
end

-- The holdout gets no message, so only its size and conversions mean something.
local function count_text(arm, k)
  if arm.treatment < 0 then return '-' end
  return tostring(arm[k])
end

-- The rows of the table: {label, key, function(arm, report) -> text}. The HTML page shows
-- the same texts, so the two can be compared cell by cell.
local function rows(report)
  local list = {
    { 'endpoints', 'endpoints', function(a) return tostring(a.treatment < 0 and a.holdout or a.targeted) end },
    { 'sends', 'sends', function(a) return count_text(a, 'sends') end },
    { 'failed', 'failed', function(a) return count_text(a, 'failed') end },
    { 'hard bounces', 'hard_bounces', function(a) return count_text(a, 'hard_bounces') end },
    { 'deliveries', 'deliveries', function(a) return count_text(a, 'deliveries') end },
    { 'delivery rate', 'delivery_rate', function(a) return rate_text(a.treatment >= 0 and a.rates.delivery or nil) end },
    { 'opens (unique)', 'opens', function(a) return count_text(a, 'opens') end },
    { 'open rate', 'open_rate', function(a) return rate_text(a.treatment >= 0 and a.rates.open or nil) end },
    { 'clicks', 'clicks', function(a) return count_text(a, 'clicks') end },
    { 'click rate', 'click_rate', function(a) return rate_text(a.treatment >= 0 and a.rates.click or nil) end },
    { 'unsubscribes', 'unsubscribes', function(a) return count_text(a, 'unsubscribes') end },
    { 'unsubscribe rate', 'unsubscribe_rate', function(a) return rate_text(a.treatment >= 0 and a.rates.unsubscribe or nil) end },
  }
  if report.conversion then
    list[#list + 1] = { 'conversions', 'conversions', function(a) return tostring(a.conversions) end }
    list[#list + 1] = { 'conversion rate', 'conversion_rate', function(a) return rate_text(a.rates.conversion) end }
    list[#list + 1] = { 'lift over holdout', 'lift', function(a) return lift_text(a.lift) end }
  end
  local metric = report.conversion and 'conversion' or 'click'
  if report.p_best[metric] then
    list[#list + 1] = { 'P(best ' .. metric .. ')', 'p_best', function(a)
      local p = report.p_best[metric][a.name]
      return p and pct(p) or '-'
    end }
  end
  return list
end

local function header(report)
  local lines = { string.format('campaign %s (version %d), application %s', report.name,
    report.version, report.app) }
  for _, r in ipairs(report.runs) do
    lines[#lines + 1] = string.format('run %d: scheduled %s, %s%s', r.id, r.scheduled, r.state,
      r.version ~= report.version and string.format(' (version %s)', tostring(r.version)) or '')
  end
  if #report.runs == 0 then lines[#lines + 1] = 'no runs yet' end
  if report.conversion then
    lines[#lines + 1] = string.format('conversion: %s within %g days of the last message',
      report.conversion, report.window_days)
  end
  return lines
end

local function test_lines(report)
  local lines = {}
  for _, t in ipairs(report.tests) do
    lines[#lines + 1] = string.format('%s rate: %s vs %s: z = %.3f, p = %.4f%s', t.metric, t.a, t.b,
      t.z, t.p_value, t.p_value < 0.05 and ' (significant at 5%)' or '')
  end
  return lines
end

local function decision_lines(report)
  local lines = {}
  for _, d in ipairs(report.decisions or {}) do
    local arms = {}
    for _, a in ipairs(d.arms) do
      arms[#arms + 1] = string.format('%s %d/%d%s', a.name, a.x, a.n, a.rate and (' ' .. pct(a.rate)) or '')
    end
    local tests = {}
    for _, c in ipairs(d.comparisons) do
      if c.p_value then tests[#tests + 1] = string.format('%s vs %s p = %.4f', c.against, c.name, c.p_value) end
    end
    lines[#lines + 1] = string.format('run %d, %s%s on %s: %s -> %s (%s); %s%s; %d waiting endpoints %s',
      d.run, d.decided, d.early and ' (early, minimum sample reached)' or '', d.metric, d.decision,
      d.winner or 'none', d.reason, table.concat(arms, ', '),
      #tests > 0 and ('; ' .. table.concat(tests, ', ')) or '', d.released,
      d.winner and ('got ' .. d.winner) or 'skipped (AB_STOPPED)')
  end
  return lines
end

function M.table(report)
  local out = header(report)
  out[#out + 1] = ''
  local cols = { { 'metric' } }
  for _, a in ipairs(report.arms) do cols[#cols + 1] = { a.name } end
  for _, row in ipairs(rows(report)) do
    cols[1][#cols[1] + 1] = row[1]
    for i, a in ipairs(report.arms) do
      local c = cols[i + 1]
      c[#c + 1] = row[3](a, report)
    end
  end
  local widths = {}
  for i, c in ipairs(cols) do
    widths[i] = 0
    for _, s in ipairs(c) do widths[i] = math.max(widths[i], utf8.len(s) or #s) end
  end
  for r = 1, #cols[1] do
    local parts = {}
    for i, c in ipairs(cols) do
      local s = c[r]
      local pad = string.rep(' ', widths[i] - (utf8.len(s) or #s))
      parts[i] = i == 1 and s .. pad or pad .. s
    end
    out[#out + 1] = table.concat(parts, '   ')
  end
  -- a titled, indented section after a blank line; none without lines
  local function section(title, lines)
    if #lines == 0 then return end
    out[#out + 1] = ''
    out[#out + 1] = title
    for _, l in ipairs(lines) do out[#out + 1] = '  ' .. l end
  end
  section('two-proportion z-tests between treatments:', test_lines(report))
  section('automatic A/B winner decisions:', decision_lines(report))
  return table.concat(out, '\n') .. '\n'
end

-- HTML ---------------------------------------------------------------------------------------

local function esc(s)
  return (tostring(s):gsub('[&<>"\']', { ['&'] = '&amp;', ['<'] = '&lt;', ['>'] = '&gt;',
    ['"'] = '&quot;', ["'"] = '&#39;' }))
end

local COLOURS = { '#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b' }
local HOLDOUT_COLOUR = '#7f7f7f'

local function colour(report, name)
  local i = 0
  for _, a in ipairs(report.arms) do
    if a.treatment >= 0 then i = i + 1 end
    if a.name == name then return a.treatment < 0 and HOLDOUT_COLOUR or COLOURS[(i - 1) % #COLOURS + 1] end
  end
  return HOLDOUT_COLOUR
end

local function fmt(n) return string.format('%.1f', n) end

-- Bars of rates with their intervals, one group per metric.
local function rates_chart(report)
  local metrics = { { 'open', 'open rate' }, { 'click', 'click rate' } }
  if report.conversion then metrics[#metrics + 1] = { 'conversion', 'conversion rate' } end
  local arms = report.arms
  local W, H, top, bottom, left = 640, 260, 20, 40, 50
  local plot_h = H - top - bottom
  local maxv = 0.01
  for _, m in ipairs(metrics) do
    for _, a in ipairs(arms) do
      local r = a.rates[m[1]]
      if r.hi and (a.treatment >= 0 or m[1] == 'conversion') then maxv = math.max(maxv, r.hi) end
    end
  end
  local svg = { string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" aria-label="rates per treatment">', W, H) }
  for k = 0, 4 do
    local y = top + plot_h - plot_h * k / 4
    svg[#svg + 1] = string.format('<line x1="%d" y1="%s" x2="%d" y2="%s" stroke="#ddd"/><text x="%d" y="%s" font-size="11" text-anchor="end">%s</text>',
      left, fmt(y), W - 10, fmt(y), left - 4, fmt(y + 4), esc(pct(maxv * k / 4)))
  end
  local group_w = (W - left - 20) / #metrics
  for gi, m in ipairs(metrics) do
    local gx = left + (gi - 1) * group_w
    local bw = (group_w - 30) / math.max(#arms, 1)
    for ai, a in ipairs(arms) do
      local r = a.rates[m[1]]
      if r.rate and (a.treatment >= 0 or m[1] == 'conversion') then
        local x = gx + 15 + (ai - 1) * bw
        local h = plot_h * r.rate / maxv
        svg[#svg + 1] = string.format('<rect x="%s" y="%s" width="%s" height="%s" fill="%s"><title>%s %s: %s</title></rect>',
          fmt(x + 2), fmt(top + plot_h - h), fmt(bw - 4), fmt(h), colour(report, a.name), esc(a.name), m[2], esc(rate_text(r)))
        local cx = x + bw / 2
        local ylo, yhi = top + plot_h - plot_h * r.lo / maxv, top + plot_h - plot_h * r.hi / maxv
        svg[#svg + 1] = string.format('<path d="M%s %sV%sM%s %sH%sM%s %sH%s" stroke="#000" stroke-width="1.5" fill="none"/>',
          fmt(cx), fmt(ylo), fmt(yhi), fmt(cx - 5), fmt(ylo), fmt(cx + 5), fmt(cx - 5), fmt(yhi), fmt(cx + 5))
      end
    end
    svg[#svg + 1] = string.format('<text x="%s" y="%d" font-size="12" text-anchor="middle">%s</text>',
      fmt(gx + group_w / 2), H - 15, m[2])
  end
  svg[#svg + 1] = '</svg>'
  return table.concat(svg, '\n')
end

-- Deliveries and conversions per day, a line per arm.
local function time_chart(report)
  local W, H, top, bottom, left = 640, 240, 20, 40, 50
  local days = report.daily
  local names = {}
  for _, a in ipairs(report.arms) do names[#names + 1] = a.name end
  local maxv = 1
  for _, d in ipairs(days) do
    for _, e in pairs(d.arms) do maxv = math.max(maxv, e.deliveries, e.conversions) end
  end
  local plot_h, plot_w = H - top - bottom, W - left - 20
  local svg = { string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" aria-label="deliveries and conversions over time">', W, H) }
  for k = 0, 4 do
    local y = top + plot_h - plot_h * k / 4
    svg[#svg + 1] = string.format('<line x1="%d" y1="%s" x2="%d" y2="%s" stroke="#ddd"/><text x="%d" y="%s" font-size="11" text-anchor="end">%d</text>',
      left, fmt(y), W - 10, fmt(y), left - 4, fmt(y + 4), math.floor(maxv * k / 4 + 0.5))
  end
  local function xof(i)
    if #days <= 1 then return left + plot_w / 2 end
    return left + plot_w * (i - 1) / (#days - 1)
  end
  for i, d in ipairs(days) do
    if #days <= 8 or i % math.ceil(#days / 8) == 1 then
      svg[#svg + 1] = string.format('<text x="%s" y="%d" font-size="11" text-anchor="middle">%s</text>',
        fmt(xof(i)), H - 20, esc(d.date))
    end
  end
  for _, name in ipairs(names) do
    for _, series in ipairs({ { 'deliveries', '' }, { 'conversions', ' stroke-dasharray="5 3"' } }) do
      local pts = {}
      for i, d in ipairs(days) do
        local e = d.arms[name]
        local v = e and e[series[1]] or 0
        pts[#pts + 1] = fmt(xof(i)) .. ',' .. fmt(top + plot_h - plot_h * v / maxv)
      end
      local holdout = name == 'holdout'
      if #pts > 0 and (series[1] == 'conversions' and report.conversion or series[1] == 'deliveries' and not holdout) then
        svg[#svg + 1] = string.format('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>',
          table.concat(pts, ' '), colour(report, name), series[2])
        for _, p in ipairs(pts) do
          local x, y = p:match('([^,]+),(.+)')
          svg[#svg + 1] = string.format('<circle cx="%s" cy="%s" r="3.5" fill="%s"/>', x, y, colour(report, name))
        end
      end
    end
  end
  svg[#svg + 1] = string.format('<text x="%d" y="%d" font-size="11">solid: deliveries, dashed: conversions (UTC dates)</text>', left, H - 4)
  svg[#svg + 1] = '</svg>'
  return table.concat(svg, '\n')
end

-- Lift of each treatment over the holdout with its interval, around a zero line.
local function lift_chart(report)
  local lifts = {}
  for _, a in ipairs(report.arms) do
    if a.lift then lifts[#lifts + 1] = a end
  end
  if #lifts == 0 then
    return '<p class="note">No lift to show: it needs a holdout, --conversion and at least one holdout conversion.</p>'
  end
  local W, row_h, left = 640, 34, 150
  local H = #lifts * row_h + 40
  local lo, hi = -0.1, 0.1
  for _, a in ipairs(lifts) do
    lo = math.min(lo, a.lift.lo, a.lift.lift)
    hi = math.max(hi, a.lift.hi, a.lift.lift)
  end
  local function xof(v) return left + (W - left - 20) * (v - lo) / (hi - lo) end
  local svg = { string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" aria-label="lift over the holdout">', W, H) }
  svg[#svg + 1] = string.format('<line x1="%s" y1="10" x2="%s" y2="%d" stroke="#444" stroke-dasharray="3 3"/><text x="%s" y="%d" font-size="11" text-anchor="middle">0%%</text>',
    fmt(xof(0)), fmt(xof(0)), H - 25, fmt(xof(0)), H - 10)
  for i, a in ipairs(lifts) do
    local y = 20 + (i - 1) * row_h
    local x0, x1 = xof(math.min(0, a.lift.lift)), xof(math.max(0, a.lift.lift))
    svg[#svg + 1] = string.format('<text x="%d" y="%s" font-size="12" text-anchor="end">%s</text>', left - 8, fmt(y + 14), esc(a.name))
    svg[#svg + 1] = string.format('<rect x="%s" y="%s" width="%s" height="18" fill="%s" opacity="0.8"><title>%s</title></rect>',
      fmt(x0), fmt(y + 2), fmt(math.max(x1 - x0, 1)), colour(report, a.name), esc(lift_text(a.lift)))
    svg[#svg + 1] = string.format('<path d="M%s %sH%s" stroke="#000" stroke-width="2"/>',
      fmt(xof(a.lift.lo)), fmt(y + 11), fmt(xof(a.lift.hi)))
  end
  svg[#svg + 1] = '</svg>'
  return table.concat(svg, '\n')
end

local CSS = [[
body { font-family: sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
.legend span { display: inline-block; margin-right: 16px; font-size: 12px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: middle; }
.note { color: #666; font-size: 12px; }
]]

function M.html(report)
  local out = { '<!doctype html>', '<html lang="en"><head><meta charset="utf-8">',
    '<title>' .. esc('herald report: ' .. report.name) .. '</title>',
    '<style>' .. CSS .. '</style></head><body>',
    '<h1>' .. esc('Campaign ' .. report.name) .. '</h1>' }
  for _, l in ipairs(header(report)) do out[#out + 1] = '<p class="note">' .. esc(l) .. '</p>' end
  out[#out + 1] = '<div class="legend">'
  for _, a in ipairs(report.arms) do
    out[#out + 1] = string.format('<span><i style="background:%s"></i>%s</span>', colour(report, a.name), esc(a.name))
  end
  out[#out + 1] = '</div>'
  out[#out + 1] = '<h2>Figures</h2><table id="figures"><thead><tr><th>metric</th>'
  for _, a in ipairs(report.arms) do out[#out + 1] = '<th>' .. esc(a.name) .. '</th>' end
  out[#out + 1] = '</tr></thead><tbody>'
  for _, row in ipairs(rows(report)) do
    out[#out + 1] = '<tr><th>' .. esc(row[1]) .. '</th>'
    for _, a in ipairs(report.arms) do
      out[#out + 1] = string.format('<td class="num" data-metric="%s" data-arm="%s">%s</td>',
        esc(row[2]), esc(a.name), esc(row[3](a, report)))
    end
    out[#out + 1] = '</tr>'
  end
  out[#out + 1] = '</tbody></table>'
  -- a heading and the list it opens; none without lines
  local function list(opening, lines)
    if #lines == 0 then return end
    out[#out + 1] = opening
    for _, l in ipairs(lines) do out[#out + 1] = '<li>' .. esc(l) .. '</li>' end
    out[#out + 1] = '</ul>'
  end
  list('<h2>Tests between treatments</h2><ul>', test_lines(report))
  list('<h2>Automatic A/B winner decisions</h2><ul id="decisions">', decision_lines(report))
  out[#out + 1] = '<h2>Rates per treatment (bars: 95% intervals)</h2>'
  out[#out + 1] = rates_chart(report)
  out[#out + 1] = '<h2>Deliveries and conversions over time</h2>'
  out[#out + 1] = time_chart(report)
  out[#out + 1] = '<h2>Lift over the holdout (conversion rate, 95% interval)</h2>'
  out[#out + 1] = lift_chart(report)
  out[#out + 1] = '</body></html>'
  return table.concat(out, '\n') .. '\n'
end

function M.run(args)
  local campaign, opts, html = nil, {}, nil
  local i = 1
  while args[i] do
    local a, v = args[i], args[i + 1]
    if a == '--run' then
      opts.run = math.tointeger(tonumber(v))
      if not opts.run then return fail('--run needs a run id (a whole number)') end
      i = i + 2
    elseif a == '--conversion' then
      if not v or v == '' then return fail('--conversion needs an event type') end
      opts.conversion = v
      i = i + 2
    elseif a == '--window' then
      opts.window_days = tonumber(v)
      if not opts.window_days or opts.window_days <= 0 then return fail('--window needs a positive number of days') end
      i = i + 2
    elseif a == '--html' then
      if not v then return fail('--html needs a file name') end
      html = v
      i = i + 2
    elseif a:sub(1, 2) == '--' then
      return fail('unknown option %s\n%s', a, M.usage)
    elseif campaign then
      return fail('one campaign at a time (got %s and %s)', campaign, a)
    else
      campaign = a
      i = i + 1
    end
  end
  if not campaign then
    io.stderr:write(M.usage)
    return 2
  end
  local report, err = analytics.report(campaign, opts)
  if not report then
    io.stderr:write('herald report: ' .. err .. '\n')
    return 1
  end
  io.stdout:write(M.table(report))
  if html then
    local fh, ferr = io.open(html, 'w')
    if not fh then
      io.stderr:write('herald report: ' .. ferr .. '\n')
      return 1
    end
    local ok, werr = fh:write(M.html(report))
    fh:close()
    if not ok then
      io.stderr:write('herald report: ' .. html .. ': ' .. tostring(werr) .. '\n')
      return 1
    end
    io.stdout:write('wrote ' .. html .. '\n')
  end
  return 0
end

return M
