-- herald.progress: a progress line on stderr for long work (count, rate, percentage and ETA
-- when the total is known); silent when stderr is not a terminal (HERALD_PROGRESS=1 forces it).
--   local p = herald.progress.new('segmenting', 'endpoints', total)
--   p:update(n [, done]) ... local seconds = p:finish()
return require 'herald.core.progress'
