-- Runs busted inside herald: `herald tests/busted_runner.lua [busted options] [ROOT...]`.
-- Specs therefore exercise the real binary, its C modules and the stdlib it ships.
local here = debug.getinfo(1, 'S').source:match('^@(.*)/[^/]*$') or '.'
package.path = here .. '/?.lua;' .. here .. '/helpers/?.lua;' .. package.path
require 'busted.runner'({ standalone = false, output = here .. '/summary_output.lua' })
