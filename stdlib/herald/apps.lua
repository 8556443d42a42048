-- herald.apps: applications (Pinpoint's projects). Every endpoint and event belongs to one.
local store = require 'herald.core.store'

return {
  -- create(id [, name]) -> id, or nil, err
  create = store.app_create,
  -- list() -> list of {Id, Name, CreationDate}
  list = store.app_list,
}
