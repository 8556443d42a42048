-- herald.db: read-only SQL over the store, for the REPL and ad-hoc reports.
--   herald.db.query('SELECT id FROM endpoints WHERE country = ?', 'FR') -> list of row tables
--   herald.db.busy(err) -> whether a store error is a busy store, worth trying again
--   herald.db.unavailable(err) -> whether a store error is the store's own failure (disk full,
--     I/O error, read-only, cannot open): no fault of what was being done
-- One statement; writes and ATTACH are refused (change data through herald.endpoints /
-- herald.events). A row is a table keyed by column name; NULL columns are absent.
local store = require 'herald.core.store'

-- Whether err (a store's error message, or an error raised with one, traceback and all) says
-- the store was busy: another process (an import, another herald) held it past the busy
-- timeout. Such a failure is no fault of what was being done and passes, so callers wait and
-- try again; any other store error stands. SQLite's own words are matched, not any 'busy' or
-- 'locked' in the message, so a campaign or reason of that name is not taken for one.
local BUSY = { 'database is locked', 'database table is locked', 'database schema is locked' }
local function busy(err)
  local msg = tostring(err)
  for _, words in ipairs(BUSY) do
    if msg:find(words, 1, true) then return true end
  end
  return false
end

-- Whether err says the store itself failed: its disk is full, the disk or file system gave an
-- I/O error, the database or its directory is read-only, or the file cannot be opened. Such a
-- failure says nothing about the campaign or data at hand (they are not to be marked failed
-- for it) and may pass once an operator frees space or fixes the mount, unlike a constraint
-- or a bad value. SQLite's own words again (SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY,
-- SQLITE_CANTOPEN).
local UNAVAILABLE = {
  'database or disk is full', 'disk I/O error', 'attempt to write a readonly database',
  'unable to open database file',
}
local function unavailable(err)
  local msg = tostring(err)
  for _, words in ipairs(UNAVAILABLE) do
    if msg:find(words, 1, true) then return true end
  end
  return false
end

return {
  query = store.query,
  busy = busy,
  unavailable = unavailable,
}
