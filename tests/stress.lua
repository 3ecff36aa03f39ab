-- tests/stress.lua: concurrency scenarios in loops of many runs, hunting
-- rare deadlocks, races, lost or doubled messages and leaks.
--
--   conclua tests/stress.lua [scenario...] [-n SCALE]      (make stress)
--
-- SCALE multiplies the run counts (default 1). A watchdog thread ends the
-- process (exit 2) if a scenario stops making progress. The last line is
-- "N passed, N failed", one count per scenario.

local scale, wanted = 1, {}
local i = 1
while i <= #arg do
  if arg[i] == "-n" then
    scale = tonumber(arg[i + 1])
    i = i + 2
  else
    wanted[arg[i]] = true
    i = i + 1
  end
end

local progress = conc.shared()
progress.beat = 0
progress.name = ""

-- The watchdog: no heartbeat for 60 s means a hang.
spawn_thread({daemon = true}, function(p)
  local last, since = -1, conc.now()
  while true do
    conc.sleep(1)
    local beat = p.beat
    if beat ~= last then
      last, since = beat, conc.now()
    elseif conc.now() - since > 60 then
      io.stderr:write("stress: no progress in '", p.name, "' for 60 s: hang\n")
      io.stderr:flush()
      os.exit(2, false)
    end
  end
end, progress)

local function beat() progress:incr("beat") end

local scenarios = {}
local order = {}
local function scenario(name, runs, fn)
  scenarios[name] = {runs = math.max(1, math.floor(runs * scale)), fn = fn}
  order[#order + 1] = name
end

-- Joins the consumers, each returning the list of what it received, and
-- checks that want messages arrived in all, none twice.
local function each_once(consumers, want)
  local seen, n = {}, 0
  for _, c in ipairs(consumers) do
    for _, v in ipairs(c:join()) do
      assert(not seen[v], "duplicated message " .. v)
      seen[v] = true
      n = n + 1
    end
  end
  assert(n == want, "lost messages: " .. n)
end

-- Many producers, many consumers on one bounded channel: every message
-- arrives exactly once.
scenario("mpmc", 1000, function()
  local ch = conc.channel(8)
  local np, nc, per = 4, 4, 50
  local ps, cs = {}, {}
  for p = 1, np do
    ps[p] = spawn_thread(function() for k = 1, per do ch:send(p * 1000 + k) end end)
  end
  for c = 1, nc do
    cs[c] = spawn_thread(function()
      local got = {}
      for v in ch:iter() do got[#got + 1] = v end
      return got
    end)
  end
  for p = 1, np do ps[p]:join() end
  ch:close()
  each_once(cs, np * per)
end)

-- Consumers select over two channels fed by two producers each; once
-- both are closed and drained, select says "closed".
scenario("select", 1000, function()
  local a, b = conc.channel(4), conc.channel(4)
  local per = 40
  local ps = {}
  for k, ch in ipairs({a, a, b, b}) do
    ps[k] = spawn_thread(function() for j = 1, per do ch:send(k * 1000 + j) end end)
  end
  local cs = {}
  for c = 1, 3 do
    cs[c] = spawn_thread(function()
      local got = {}
      while true do
        local item, v = conc.select({a, b})
        if item == nil then
          assert(v == "closed", v)
          break
        end
        got[#got + 1] = v
      end
      return got
    end)
  end
  for k = 1, 4 do ps[k]:join() end
  a:close()
  b:close()
  each_once(cs, 4 * per)
end)

-- Sequential spawns: a stable fd count, no zombies.
scenario("spawns", 10000, function(run, runs)
  local p = spawn_process(function(x) return x end, run)
  assert(p:join() == run)
  if run % 1000 == 0 or run == runs then
    collectgarbage()
    local s = conc._stats()
    assert(s.zombies == 0, "zombies: " .. s.zombies)
    progress.fds = progress.fds or s.fds
    assert(s.fds <= progress.fds + 2, "fds grew: " .. s.fds)
  end
end)

-- No child outlives its parent: test_orphans (a C test, the subreaper
-- that adopts what a killed conclua leaves), each case in turn with 5
-- times the rounds of make test: hundreds of parents ended while they
-- spawn, by os.exit in a thread, by SIGTERM and by SIGKILL.
local orphan_cases = {
  "parent SIGKILLed: every child gone", "parent SIGTERMed: every child gone",
  "parent exits: every child gone", "parent fails: every child gone",
  "os.exit in the main thread: every child gone",
  "os.exit in a thread while others spawn", "parent killed while spawning",
}
scenario("orphans", 2 * #orphan_cases, function(run)
  local exe = (os.getenv("CONCLUA_BUILD") or "build") .. "/tests/test_orphans"
  local case = orphan_cases[(run - 1) % #orphan_cases + 1]
  local f = assert(io.popen("CONCLUA_ROUNDS=5 " .. exe .. " '" .. case .. "' 2>&1"))
  local out = f:read("a")
  local ok = f:close()
  assert(ok and out:find("# 1 passed, 0 failed", 1, true), out)
end)

-- The other way round: a child forked from a thread lives on once that
-- thread has ended and its OS thread has retired from the pool (after 5
-- idle seconds), as long as the parent process does.
scenario("orphans_thread_retired", 1, function()
  local ev = conc.event()
  local p = spawn_thread(function(ev)
    return spawn_process(function() ev:wait(60) return "still here" end)
  end, ev):join()
  local t0 = conc.now()         -- its OS thread goes back to the pool...
  while conc._stats().idle == 0 and conc.now() - t0 < 5 do conc.sleep(0.01) end
  assert(conc._stats().idle > 0, "the OS thread never went idle")
  t0 = conc.now()               -- ...and retires after 5 idle seconds
  while conc._stats().idle > 0 and conc.now() - t0 < 30 do conc.sleep(0.1) end
  assert(conc._stats().idle == 0, "the pooled OS thread never retired")
  assert(p:alive(), "the child died with the thread that forked it")
  ev:set()
  assert(p:join() == "still here")
end)

-- Forks taken while four threads hammer channels: no deadlock.
scenario("fork_hammer", 200, function(run)
  if run == 1 then
    local ch = conc.channel(16)
    local stop = conc.event()
    progress.hammer_stop = nil
    for k = 1, 4 do
      spawn_thread({daemon = true}, function()
        while not stop:is_set() do ch:send(k, 0.001) ch:recv(0.001) end
      end)
    end
    scenarios.fork_hammer.stop = stop
  end
  local p = spawn_process(function() return run * 2 end)
  assert(p:join() == run * 2)
  if run == scenarios.fork_hammer.runs then scenarios.fork_hammer.stop:set() end
end)

-- Processes and threads through one queue, whole messages, once each.
scenario("queue", 200, function(run)
  local q = conc.queue(16)
  local out = conc.queue()
  local ps = {}
  for k = 1, 2 do
    ps[k] = spawn_process(function()
      for j = 1, 20 do q:send({k, j, string.rep("q", (j * 997 + run) % 9000)}) end
    end)
  end
  local t = spawn_thread(function() for j = 1, 20 do q:send({3, j, ""}) end end)
  local seen, n = {}, 0
  for _ = 1, 60 do
    local m = q:recv(30)
    assert(m, "queue: nothing in 30 s")
    local key = m[1] * 100 + m[2]
    assert(not seen[key], "duplicated message")
    seen[key] = true
    n = n + 1
  end
  for k = 1, 2 do ps[k]:join() end
  t:join()
  assert(n == 60)
  out:close()
end)

-- Cancel threads while they block in every kind of wait.
scenario("cancel", 300, function()
  local ch, ev, lk = conc.channel(), conc.event(), conc.lock()
  lk:acquire()
  local ts = {
    spawn_thread(function() ch:recv() end),
    spawn_thread(function() ev:wait() end),
    spawn_thread(function() lk:acquire() end),
    spawn_thread(function() conc.select({ch}) end),
    spawn_thread(function() conc.sleep(10) end),
  }
  for _, t in ipairs(ts) do t:cancel() end
  for _, t in ipairs(ts) do
    local ok, err = pcall(t.join, t)
    assert(not ok and err == "cancelled", tostring(err))
  end
  lk:release()
end)

local passed, failed = 0, 0
for _, name in ipairs(order) do
  if next(wanted) == nil or wanted[name] then
    local s = scenarios[name]
    progress.name = name
    local t0 = conc.now()
    local ok, err = true, nil
    for run = 1, s.runs do
      ok, err = pcall(s.fn, run, s.runs)
      beat()
      if not ok then
        err = string.format("run %d of %d: %s", run, s.runs, tostring(err))
        break
      end
    end
    if ok then
      passed = passed + 1
      print(string.format("ok - %s: %d runs (%.1fs)", name, s.runs, conc.now() - t0))
    else
      failed = failed + 1
      print(string.format("not ok - %s: %s", name, err))
    end
    io.stdout:flush()
  end
end
print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
