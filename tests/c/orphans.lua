-- tests/c/orphans.lua: the parent that test_orphans.c ends in every way.
--
--   conclua tests/c/orphans.lua TREE|RACE END
--
-- TREE spawns children of every kind: plain and daemon, start = "spawn",
-- forked from the main thread and from a thread that has ended since,
-- children with children of their own (forked and spawned), the workers
-- of a process pool. It prints "pid N" for each, "ready", and ends as END
-- says: "wait" (until the test kills it), "exit" (the main chunk ends),
-- "error" (an uncaught error), "osexit" (os.exit in the main thread).
-- Non-daemon children end by themselves where the parent waits for them.
--
-- RACE keeps spawning daemons from the main thread and from a thread,
-- printing "pid N" for each, until it is killed ("wait") or a third
-- thread calls os.exit ("osexit"): children forked while the parent
-- ends.

local what, how = arg[1], arg[2]
local forever = function() conc.sleep(3600) end

if what == "RACE" then
  local function spawner()
    for _ = 1, 400 do
      local p = spawn_process({daemon = true}, function() conc.sleep(3600) end)
      print("pid " .. p.pid)
      conc.sleep(0.002)
    end
  end
  spawn_thread({daemon = true}, spawner)
  print("ready")
  if how == "osexit" then
    spawn_thread(function()
      conc.sleep(0.005 + math.random() * 0.05)
      os.exit(7)
    end)
  end
  spawner()
  conc.sleep(3600)
  return
end

local pool = require "conc.pool"
local pids = conc.queue()
local ends = how ~= "wait"
local plain = ends and function() conc.sleep(0.1) end or forever
local expected = 0

local function spawn(opts, fn, ...)
  local p = spawn_process(opts, fn, ...)
  pids:send(p.pid)
  expected = expected + 1
  return p
end

spawn({}, plain)
spawn({daemon = true}, forever)
spawn({start = "spawn", daemon = true}, forever)
-- a child with children of its own
spawn({daemon = true}, function()
  pids:send(spawn_process(plain).pid)
  pids:send(spawn_process({daemon = true}, forever).pid)
  pids:send(spawn_process({start = "spawn"}, forever).pid)
  forever()
end)
expected = expected + 3
-- a spawned child with a forked child (it prints that one itself: a
-- queue cannot go to a fresh conclua)
spawn({start = "spawn", daemon = true}, function()
  print("pid " .. spawn_process({daemon = true}, function() conc.sleep(3600) end).pid)
  conc.sleep(3600)
end)
-- forked from a thread that then ends
spawn_thread(function(pids, plain, forever)
  pids:send(spawn_process(plain).pid)
  pids:send(spawn_process({daemon = true}, forever).pid)
end, pids, plain, forever):join()
expected = expected + 2
-- a process pool, its workers started
local workers = pool.processes(2)
workers:map(function(x) return x end, {1, 2, 3, 4})

local printed = 0
for _, w in ipairs(conc.workers()) do
  if w.kind == "process" and w.name:find("^pool%-") then
    print("pid " .. w.pid)
    printed = printed + 1
  end
end
for _ = 1, expected do print("pid " .. assert(pids:recv(30), "a child never said")) end
-- the spawned child prints one pid line itself, maybe not yet
print("ready " .. printed + expected + 1)
io.stdout:flush()

if how == "wait" then
  conc.sleep(3600)
elseif how == "error" then
  error("the parent fails")
elseif how == "osexit" then
  os.exit(0)
end
