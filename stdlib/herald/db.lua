-- herald.db: read-only SQL over the store, for the REPL and ad-hoc reports.
--   herald.db.query('SELECT id FROM endpoints WHERE country = ?', 'FR') -> list of row tables
-- One statement; writes and ATTACH are refused (change data through herald.endpoints /
-- herald.events). A row is a table keyed by column name; NULL columns are absent.
local store = require 'herald.core.store'

return {
  query = store.query,
}
