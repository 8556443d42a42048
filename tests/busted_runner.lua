-- Runs busted inside herald: `herald tests/busted_runner.lua [busted options] [ROOT...]`.
-- Specs therefore exercise the real binary, its C modules and the stdlib it ships.
local here = debug.getinfo(1, 'S').source:match('^@(.*)/[^/]*$') or '.'
package.path = here .. '/?.lua;' .. here .. '/helpers/?.lua;' .. package.path
-- A spec that uses the store in this process without choosing a database gets a scratch
-- one: the default (herald.db in the working directory) would be the checkout's. Not through
-- helpers.tmpdir: busted gives each spec file fresh modules, except those loaded before it
-- starts, so requiring helpers here would share one instance among all the files.
do
  local p = io.popen('mktemp -d /tmp/herald-runner.XXXXXX')
  local dir = p:read('l')
  p:close()
  require('herald.core').set_db_path(dir .. '/runner.db')
end
require 'busted.runner'({ standalone = false, output = here .. '/summary_output.lua' })
