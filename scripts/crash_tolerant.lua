-- A process pool that survives its workers dying.
--
-- Some tasks raise an error (the worker lives on), some call os.exit (the
-- worker process ends), one has its worker killed with SIGKILL (as the
-- kernel's out-of-memory killer would). The pool notices each death at
-- once, fails the task that worker was running ("pool worker died"),
-- gives the tasks waiting behind it to the other workers, and starts a
-- new worker; the results of every other task are kept.
--
--   conclua scripts/crash_tolerant.lua

local pool = require "conc.pool"

local WORKERS = 2

-- The task: 3, 8 and 12 call os.exit, 5 raises, 10 kills its own process
-- (os.execute runs a shell whose parent, $PPID, is the worker).
local function task(i)
  if i == 3 or i == 8 or i == 12 then os.exit(i) end
  if i == 5 then error("task 5 does not like its input") end
  if i == 10 then
    os.execute("kill -KILL $PPID")
    conc.sleep(5)                         -- never reached
  end
  conc.sleep(0.01 * (i % 3))              -- some work
  return i * i
end

local function live_workers()
  local n = 0
  for _, w in ipairs(conc.workers()) do
    if w.kind == "process" then n = n + 1 end
  end
  return n
end

local p = pool.processes(WORKERS)
local futures, index = {}, {}
for i = 1, 14 do
  futures[i] = p:submit(task, i)
  index[futures[i]] = i
end

-- The outcomes as they come.
local results, died = {}, {}
print("14 tasks on " .. WORKERS .. " worker processes")
for f in pool.as_completed(futures) do
  local i = index[f]
  local ok, v = pcall(f.result, f)
  if ok then
    results[i] = v
    print(string.format("  task %2d -> %d", i, v))
  else
    local why = tostring(v):match("^[^\n]*")   -- the first line; the rest is a traceback
    print(string.format("  task %2d failed: %s", i, why))
    if why:find("pool worker died", 1, true) then died[#died + 1] = i end
  end
end
table.sort(died)
print("the tasks whose worker died: " .. table.concat(died, " "))
assert(table.concat(died, " ") == "3 8 10 12", "only the crashing tasks fail")

-- The pool is whole: as many workers as at the start, and map still works.
local squares = p:map(function(x) return x * x end, {1, 2, 3, 4})
print(string.format("the pool still has %d worker processes; map gives %s",
                    live_workers(), table.concat(squares, " ")))
p:close()

local kept = {}
for i = 1, 14 do if results[i] then kept[#kept + 1] = i end end
print("results kept for tasks " .. table.concat(kept, " "))
assert(#kept == 9, "every task that does not crash or raise has its result")
