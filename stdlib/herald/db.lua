-- herald.db: read-only SQL over the store, for the REPL and ad-hoc reports.
--   herald.db.query('SELECT id FROM endpoints WHERE country = ?', 'FR') -> list of row tables
--   herald.db.busy(err) -> whether a store error is a busy store, worth trying again
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

return {
  query = store.query,
  busy = busy,
}
