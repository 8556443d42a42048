-- Expected time-zone values from outside herald: Python's zoneinfo over the same system tz
-- database, and date(1). Specs compare herald's answers with these, so no expected value comes
-- from herald's own code.
local h = require 'helpers'

local M = {}

local PRELUDE = [[
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo
UTC = timezone.utc
def ms(dt): return int(round(dt.timestamp() * 1000))
def wall(e_ms, z):
    d = datetime.fromtimestamp(e_ms / 1000, ZoneInfo(z))
    return d.strftime('%Y-%m-%dT%H:%M:%S') + ' ' + str(int(d.utcoffset().total_seconds()))
def to_utc(z, y, mo, d, h=0, mi=0, s=0):
    # fold=0 reads a skipped time with the offset before the change (forward by the gap) and
    # takes the first occurrence of a repeated one (PEP 495)
    return ms(datetime(y, mo, d, h, mi, s, tzinfo=ZoneInfo(z), fold=0))
def fold(z, y, mo, d, h=0, mi=0, s=0):
    a = datetime(y, mo, d, h, mi, s, tzinfo=ZoneInfo(z), fold=0)
    b = datetime(y, mo, d, h, mi, s, tzinfo=ZoneInfo(z), fold=1)
    back = datetime.fromtimestamp(a.timestamp(), ZoneInfo(z)).replace(tzinfo=None)
    if back != a.replace(tzinfo=None): return 'gap'
    if a.utcoffset() != b.utcoffset(): return 'overlap'
    return 'exact'
def transitions(z, y0, y1):
    # instants (s) where the offset changes, found hour by hour then to the second
    out = []
    t = int(datetime(y0, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(y1 + 1, 1, 1, tzinfo=UTC).timestamp())
    off = lambda t: datetime.fromtimestamp(t, ZoneInfo(z)).utcoffset()
    prev = off(t)
    while t < end:
        n = t + 3600
        if off(n) != prev:
            lo, hi = t, n
            while hi - lo > 1:
                m = (lo + hi) // 2
                if off(m) == prev: lo = m
                else: hi = m
            out.append(hi)
            prev = off(n)
        t = n
    return out
]]

-- Runs a Python program (after the prelude) and returns its output lines.
function M.python(src)
  local path = h.tmpdir() .. '/ref.py'
  h.write(path, PRELUDE .. src)
  local p = assert(io.popen('python3 ' .. h.shell_quote(path) .. ' 2>&1'))
  local out = p:read('a')
  local ok = p:close()
  assert(ok, 'python3 failed:\n' .. out)
  local lines = {}
  for line in out:gmatch('[^\n]+') do lines[#lines + 1] = line end
  return lines
end

-- Splits a line into fields; numbers become integers.
function M.fields(line)
  local t = {}
  for f in line:gmatch('%S+') do t[#t + 1] = math.tointeger(tonumber(f)) or f end
  return t
end

-- date(1)'s view of an instant (seconds) in zone, with format fmt.
function M.date(zone, seconds, fmt)
  local p = assert(io.popen(string.format('TZ=%s date -d @%d %s', h.shell_quote(zone), seconds,
    h.shell_quote('+' .. fmt))))
  local out = p:read('l')
  p:close()
  return out
end

return M
