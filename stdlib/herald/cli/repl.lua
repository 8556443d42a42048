-- `herald repl`: the interactive prompt (stdlib/herald/repl.lua).
local repl = require 'herald.repl'

local command = {}

command.usage = [[
usage: herald repl        (global options such as --db PATH and --app ID go before `repl`)

Interactive Lua with the runtime loaded (the global `herald`). An expression prints its
values (tables pretty-printed); an unfinished chunk continues on the next line; an error
prints and the prompt goes on. Each input runs as a task, so herald.sleep(ms) works.
Locals last for one input, as in `lua`; globals stay.

On a terminal: line editing (libedit; ~/.editrc applies), Tab completes names and fields,
Ctrl-C drops the line or stops the running input, Ctrl-D ends the session. History is kept
in $HERALD_HISTORY, or ~/.herald_history when that is unset (set it empty to keep none).
With stdin not a terminal, lines are read plainly and only results are printed:
  echo 'return 1+1' | herald repl      prints 2
An error there prints and the input goes on; the exit status is then 1.
]]

function command.run(args)
  if #args > 0 then
    io.stderr:write('herald repl: unexpected argument ' .. args[1] .. '\n' .. command.usage)
    return 2
  end
  return repl.run()
end

return command
