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

-- Big strings, lent to receivers that wait already (copied once) or
-- encoded for those that do not, on channels of capacity 0, 1 and 2;
-- every other run one more receiver is cancelled while it takes them.
-- Nothing is doubled, nothing is lost but the one a cancelled receiver
-- may have been holding, and no sender waits for ever for a copy.
scenario("big_loans", 300, function(run)
  local ch, seen = conc.channel(run % 3), conc.channel()
  local pad = 256 * 1024
  local ps = {}
  for p = 1, 2 do
    ps[p] = spawn_thread(function()
      local base = string.rep("x", pad)
      for k = 1, 5 do ch:send(base .. (p * 100 + k)) end
    end)
  end
  local function receiver(how)
    return spawn_thread(function()
      while true do
        local v
        if how == "select" then
          local item
          item, v = conc.select({ch})
          if item == nil then break end
        else
          v = ch:recv()
          if v == nil then break end
        end
        assert(#v > pad and v:sub(1, 8) == "xxxxxxxx", "bad string")
        seen:send(tonumber(v:sub(pad + 1)))
      end
    end)
  end
  local rs = {receiver("recv"), receiver("select")}
  local victim = run % 2 == 0 and receiver("recv")
  if victim then
    conc.sleep(math.random() * 0.002)
    victim:cancel()
  end
  for p = 1, 2 do ps[p]:join() end
  ch:close()
  for _, r in ipairs(rs) do r:join() end
  if victim then pcall(victim.join, victim) end
  seen:close()
  local got, n = {}, 0
  for id in seen:iter() do
    assert(not got[id], "duplicated message " .. id)
    got[id] = true
    n = n + 1
  end
  assert(n == 10 or victim and n == 9, "lost messages: " .. n)
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
-- Streams of small messages (the ring goes back to its start while the
-- last ones are still queued, and runs past them when its consumers fall
-- behind), with a big one now and then, two producers and two consumers
-- that pause at random: every message once, whole, in each producer's
-- order; every fifth run a producer is killed mid-stream, and what it
-- sent before arrives all the same.
scenario("queue_stream", 100, function(run)
  local q, out = conc.queue(run % 4 == 0 and 32 or nil), conc.queue()
  local per = 1500
  local function body(k, j)
    local n = j % 151 == 0 and 70000 or 700 + (j * 37 + k) % 2000
    return string.rep(string.char(96 + k), n)
  end
  local ps = {}
  for k = 1, 2 do
    ps[k] = spawn_process(function()
      for j = 1, per do q:send(k .. ":" .. j .. ":" .. body(k, j)) end
    end)
  end
  local cs = {}
  for c = 1, 2 do
    cs[c] = spawn_process(function()
      local last, bad = {0, 0}, 0
      for m in q:iter() do
        local k, j, b = m:match("^(%d):(%d+):(.*)$")
        k, j = tonumber(k), tonumber(j)
        if not k or b ~= body(k, j) or j <= last[k] then bad = bad + 1 end
        last[k] = j
        out:send(k * 100000 + j)
        if math.random(400) == 1 then conc.sleep(math.random() * 0.01) end
      end
      return bad
    end)
  end
  local killed = run % 5 == 0
  if killed then
    conc.sleep(math.random() * 0.05)
    ps[2]:kill("KILL")
  end
  ps[1]:join()
  if killed then pcall(ps[2].join, ps[2]) else ps[2]:join() end
  q:close()
  for c = 1, 2 do assert(cs[c]:join() == 0, "a message out of order or not whole") end
  out:close()
  local seen, n, top = {}, 0, {0, 0}
  for v in out:iter() do
    assert(not seen[v], "duplicated message " .. v)
    seen[v] = true
    n = n + 1
    local k, j = v // 100000, v % 100000
    if j > top[k] then top[k] = j end
  end
  -- each producer's messages up to the last one seen all arrived (a
  -- killed one may have lost only the message it was writing)
  for k = 1, 2 do
    local missing = 0
    for j = 1, top[k] do if not seen[k * 100000 + j] then missing = missing + 1 end end
    assert(missing <= (killed and k == 2 and 1 or 0), "lost messages: " .. missing)
  end
  assert(killed or n == 2 * per, "lost messages: " .. n)
end)

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

-- A kill storm on one queue: producer and consumer processes SIGKILLed
-- at random moments (mid-send of a big message, holding a slot, inside
-- the queue's lock), left unreaped for a while, and replaced. Nothing may
-- hang; a message that a producer finished sending arrives exactly once,
-- except one per killed consumer at most (the message it had taken when
-- it died, lost with it); a message whose producer died while sending it
-- arrives whole or not at all. Each process logs what it finished to a
-- file of its own, one line per message, so the logs survive its death.
local function lines(path)
  local t = {}
  local f = io.open(path)
  if f then
    for l in f:lines() do t[#t + 1] = l end
    f:close()
  end
  os.remove(path)
  return t
end

local function queue_kill(run, procs)
  local caps = {1, 4, nil}
  local q = conc.queue(caps[run % 3 + 1])
  local per, dir = 150, os.tmpname()
  local nextk, killed_consumers = 0, 0
  local function producer()
    nextk = nextk + 1
    local k, path = nextk, dir .. ".p" .. nextk
    local p = spawn_process(function()
      local log = assert(io.open(path, "w"))
      log:setvbuf("line")
      for j = 1, per do
        local r = (k * 7919 + j * 104729) % 100
        local n = r < 70 and r or r < 95 and r * 650 or r * 30000
        q:send({k, j, string.rep(string.char(65 + j % 26), n)})
        log:write(k, " ", j, "\n")     -- sent whole
      end
    end)
    procs[#procs + 1] = {p = p, kind = "producer", k = k, path = path}
  end
  local function consumer()
    nextk = nextk + 1
    local path = dir .. ".c" .. nextk
    local c = spawn_process(function()
      local log = assert(io.open(path, "w"))
      log:setvbuf("line")
      while true do
        local m, why = q:recv(30)
        if m == nil then
          assert(why == "closed", "consumer: " .. tostring(why))
          return
        end
        local n = #m[3]
        assert(m[3] == string.rep(string.char(65 + m[2] % 26), n), "torn message")
        log:write(m[1], " ", m[2], "\n")
      end
    end)
    procs[#procs + 1] = {p = c, kind = "consumer", path = path}
  end
  for _ = 1, 3 do producer() end
  for _ = 1, 3 do consumer() end
  local zombies = {}
  local kills = 4 + run % 4
  for _ = 1, kills do
    conc.sleep(0.002 + math.random() * 0.03)
    local live = {}
    for _, e in ipairs(procs) do
      if not e.killed and e.p:status() == "running" then live[#live + 1] = e end
    end
    if #live > 0 then
      local e = live[math.random(#live)]
      e.killed = e.p:kill("KILL")
      if e.killed then
        zombies[#zombies + 1] = e
        if e.kind == "consumer" then killed_consumers = killed_consumers + 1 end
        if e.kind == "producer" then producer() else consumer() end
      end
    end
    beat()
  end
  -- the killed stay unreaped while the rest finish
  for _, e in ipairs(procs) do
    if e.kind == "producer" and not e.killed then
      assert(e.p:wait(30), "a producer hung")
      assert(e.p:status() == "done", e.p:status())
    end
  end
  q:close()
  for _, e in ipairs(procs) do
    if e.kind == "consumer" and not e.killed then
      assert(e.p:wait(30), "a consumer hung")
      local ok, err = pcall(e.p.join, e.p)
      assert(ok, "a consumer failed: " .. tostring(err))
    end
  end
  for _, e in ipairs(zombies) do pcall(e.p.join, e.p) end
  -- what arrived, once
  local got, sent, lastsent = {}, {}, {}
  for _, e in ipairs(procs) do
    for _, l in ipairs(lines(e.path)) do
      local k, j = l:match("^(%d+) (%d+)$")
      if k then                             -- a cut last line is skipped
        k, j = tonumber(k), tonumber(j)
        local key = k * 100000 + j
        if e.kind == "consumer" then
          assert(not got[key], "message " .. k .. "/" .. j .. " arrived twice")
          got[key] = true
        else
          sent[key] = true
          lastsent[k] = math.max(lastsent[k] or 0, j)
        end
      end
    end
  end
  os.remove(dir)
  local lost = 0
  for key in pairs(sent) do
    if not got[key] then lost = lost + 1 end
  end
  assert(lost <= killed_consumers, string.format(
    "%d messages sent whole were lost (%d consumers killed)", lost, killed_consumers))
  for key in pairs(got) do
    local k, j = key // 100000, key % 100000
    -- from a producer, at most the one past its last logged
    assert(sent[key] or j == (lastsent[k] or 0) + 1,
           "message " .. k .. "/" .. j .. " was never sent")
  end
  for _, e in ipairs(procs) do
    if e.kind == "producer" and not e.killed then
      assert(lastsent[e.k] == per, "a surviving producer did not finish")
    end
  end
end

scenario("queue_kill", 30, function(run)
  local procs = {}
  local ok, err = pcall(queue_kill, run, procs)
  if not ok then                    -- leave nothing running behind
    for _, e in ipairs(procs) do e.p:kill("KILL") pcall(e.p.join, e.p) end
    error(err, 0)
  end
end)

-- A kill storm on one lock: processes take it in turns, and some are
-- SIGKILLed, inside it or not, and left unreaped; the others never wait
-- for ever (each death is taken over), and each finishes its turns.
scenario("lock_kill", 30, function(run)
  local l, turns = conc.lock(), 60
  local ps = {}
  for k = 1, 4 do
    ps[k] = spawn_process(function()
      for _ = 1, turns do
        assert(l:acquire(30), "a dead holder kept the lock")
        conc.sleep(0.0003)             -- a moment inside
        l:release()
      end
      return turns
    end)
  end
  local killed = {}
  for _ = 1, 1 + run % 3 do
    conc.sleep(0.001 + math.random() * 0.02)
    local k = math.random(#ps)
    if not killed[k] and ps[k]:kill("KILL") then killed[k] = true end
  end
  for k, p in ipairs(ps) do
    assert(p:wait(40), "a process hung on the lock")
    if not killed[k] then assert(p:join() == turns) else pcall(p.join, p) end
  end
  assert(l:acquire(5), "the lock stayed held")
  l:release()
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

-- Cancel, at random moments of their start and with both cores kept
-- busy, threads that catch their cancel and would return: once cancel()
-- said true the thread ends "cancelled", and a thread that started ran
-- its __close handler whole.
local hog_stop
scenario("cancel_caught", 3000, function(run, runs)
  if run == 1 then
    hog_stop = conc.event()
    for _ = 1, 2 do
      spawn_thread({daemon = true}, function()
        while not hog_stop:is_set() do
          local x = 0
          for k = 1, 20000 do x = x + k end
        end
      end)
    end
  end
  local ch = conc.channel()
  local t = spawn_thread(function()
    local c <close> = setmetatable({}, {__close = function()
      local s = 0
      for i = 1, 1000 do s = s + i end
      ch:send(s)
    end})
    ch:send("started")
    pcall(conc.sleep, 10)
    pcall(conc.sleep, 10)
    return "done"
  end)
  if run % 3 ~= 0 then conc.sleep((run % 7) * 0.0005) end
  local ok = t:cancel()
  assert(t:wait(30), "a cancelled thread did not end")
  if ok then assert(t:status() == "cancelled", t:status()) end
  if ch:recv(0) == "started" then
    local v = ch:recv(0)
    assert(v == 500500, "__close did not run whole: " .. tostring(v))
  end
  if run == runs then hog_stop:set() end
end)

-- A Ctrl-C that lands as the main chunk ends, or as the wait at exit
-- begins, still stops the workers (status 130, what it stopped on
-- stderr): SIGINT is armed from the first chunk to the end of the wait.
local exe = arg and arg[-1] or "conclua"
local ctrlc_script = os.tmpname() .. ".lua"
do
  local f = assert(io.open(ctrlc_script, "w"))
  f:write([[
    spawn_thread({name = "slow"}, function() conc.sleep(60) end)
    io.write("ready ", assert(io.open("/proc/self/stat")):read("n"), "\n")
    io.stdout:flush()
  ]])
  f:close()
end
scenario("ctrl_c_at_exit", 200, function(run, runs)
  local out = os.tmpname()
  local rc = out .. ".rc"
  os.execute(string.format("(%q %q > %q 2>&1; echo $? > %q) &", exe,
                           ctrlc_script, out, rc))
  local function read(path)
    local f = io.open(path)
    local s = f and f:read("a") or ""
    if f then f:close() end
    return s
  end
  local pid, t0 = nil, conc.now()
  repeat
    pid = read(out):match("ready (%d+)")
    if not pid then conc.sleep(0.001) end
  until pid or conc.now() - t0 > 30
  assert(pid, "never ready: " .. read(out))
  if run % 2 == 0 then conc.sleep((run % 10) * 0.0005) end
  os.execute("kill -INT " .. pid)
  local code
  t0 = conc.now()
  repeat
    code = tonumber(read(rc))
    if not code then conc.sleep(0.005) end
  until code or conc.now() - t0 > 30
  local text = read(out)
  os.remove(out)
  os.remove(rc)
  if run == runs then os.remove(ctrlc_script) end
  assert(code == 130, "exit status " .. tostring(code) .. ": " .. text)
  assert(text:find('stopping 1 worker: thread %d+ "slow"'), text)
end)

-- Shared tables under a kill storm: three processes update a pair of
-- counters atomically, rewrite big values and count hits; one of them is
-- SIGKILLed at a random moment (in the middle of an update, of a copy
-- under the table's lock, anywhere). The others must go on, the pair must
-- add up (a killed update is dropped whole), no value may be torn, and
-- the table must stay usable.
local rebuilt = 0              -- by the survivors, after a death
scenario("shared_kill", 150, function(run, runs)
  local s, ready = conc.shared(), conc.semaphore(0)
  s.pair = {n = 0}
  s.stop = false
  local size = 300000 + run % 7
  local ws = {}
  for id = 1, 3 do
    ws[id] = spawn_process(function()
      local big = string.rep(string.char(64 + id), size + id)
      ready:release()
      while not s.stop do
        s:update("pair", function(p)
          p.n = p.n + 1
          p[id] = (p[id] or 0) + 1
          return p
        end)
        s["big" .. id] = big
        s:incr("hits")
      end
      return conc._stats().shared_recoveries
    end)
  end
  for _ = 1, 3 do assert(ready:acquire(30), "workers did not start") end
  conc.sleep(math.random() * 0.03)
  local victim = ws[math.random(3)]
  victim:kill("KILL")
  pcall(victim.join, victim)
  conc.sleep(math.random() * 0.02)
  s.stop = true
  for _, w in ipairs(ws) do
    if w ~= victim then rebuilt = rebuilt + w:join() end
  end
  local p, sum = s.pair, 0
  for id = 1, 3 do sum = sum + (p[id] or 0) end
  assert(p.n == sum, string.format("pair: n = %d, parts add up to %d", p.n, sum))
  local keys = 0
  for k, v in pairs(s) do
    keys = keys + 1
    local id = type(k) == "string" and tonumber(k:match("^big(%d)$"))
    if id then
      assert(#v == size + id and v == string.rep(string.char(64 + id), #v),
             "torn value at " .. k)
    end
  end
  assert(tostring(s) == "<shared " .. keys .. " keys>", tostring(s))
  s.after = run
  assert(s.after == run and s:incr("hits") > 0)
  if run == runs then
    assert(rebuilt + conc._stats().shared_recoveries > 0,
           "no kill caught a writer changing the table: nothing tested")
  end
end)

-- Atomic incr from threads and processes at once.
scenario("shared_incr", 200, function()
  local s = conc.shared()
  local ws = {}
  for i = 1, 4 do
    local spawn = i % 2 == 0 and spawn_thread or spawn_process
    ws[i] = spawn(function() for _ = 1, 250 do s:incr("n") end end)
  end
  for _, w in ipairs(ws) do w:join() end
  assert(s.n == 1000, "lost increments: " .. tostring(s.n))
end)

-- Pools: one pool shared by several threads, each mapping and
-- submitting at once; every thread gets its own results, all of them.
local pool = require "conc.pool"
local shared_pools = {}
scenario("pool_shared", 300, function(run)
  local kind = run % 2 == 0 and "threads" or "processes"
  shared_pools[kind] = shared_pools[kind] or pool[kind](2)
  local p = shared_pools[kind]
  local function work(p, t, run)
    local list = {}
    for i = 1, 100 do list[i] = run * 10000 + t * 1000 + i end
    local r = p:map(function(x) return x + 1 end, list)
    assert(r.n == 100, "n")
    for i = 1, 100 do assert(r[i] == list[i] + 1, "map item " .. i) end
    local fs = {}
    for i = 1, 10 do fs[i] = p:submit(function(a, b) return a * b end, t, i) end
    for i = 1, 10 do assert(fs[i]:result(60) == t * i, "future " .. i) end
    return true
  end
  local ts = {}
  for t = 1, 3 do ts[t] = spawn_thread(work, p, t, run) end
  assert(work(p, 4, run))
  for t = 1, 3 do assert(ts[t]:join() == true) end
  if run >= 299 then p:close() shared_pools[kind] = nil end
end)

-- A kill storm on a process pool: workers SIGKILLed at random while a
-- map and futures run. Only what a dead worker was running fails, with
-- "pool worker died"; everything else gives its right result; the pool
-- is whole afterwards.
scenario("pool_kill_storm", 100, function(run)
  local pids = conc.queue()
  local p = pool.processes(3)
  local function task(q, x, s)
    local f = io.open("/proc/self/stat") local pid = f:read("n") f:close()
    q:send(pid)
    conc.sleep(s)
    return x * 2
  end
  local fs = {}
  for i = 1, 30 do fs[i] = p:submit(task, pids, i, 0.002 * (i % 4)) end
  local mapper = spawn_thread(function(p, q, task)
    local ok, r = pcall(p.map, p, function(x) return task(q, x, 0.001) end, (function()
      local l = {} for i = 1, 60 do l[i] = i end return l end)(), {chunksize = 1})
    if ok then
      for i = 1, 60 do assert(r[i] == i * 2, "map item " .. i) end
      return "ok"
    end
    assert(tostring(r):find("pool worker died", 1, true), tostring(r))
    return "died"
  end, p, pids, task)
  local kills = 0
  for _ = 1, 3 do
    local pid = pids:recv(30)
    conc.sleep(math.random() * 0.01)
    if pid and os.execute("kill -KILL " .. pid .. " 2>/dev/null") then kills = kills + 1 end
  end
  local died = 0
  for i = 1, 30 do
    local ok, v = pcall(fs[i].result, fs[i], 60)
    if ok then assert(v == i * 2, "future " .. i .. ": " .. tostring(v))
    else
      assert(tostring(v):find("pool worker died", 1, true), tostring(v))
      died = died + 1
    end
  end
  local m = mapper:join()
  if m == "died" then died = died + 1 end
  assert(died <= kills, died .. " failed for " .. kills .. " kills")
  local r = p:map(function(x) return -x end, {1, 2, 3, 4})
  assert(r[1] == -1 and r[4] == -4 and r.n == 4)
  p:close()
  while pids:recv(0) do end
end)

-- close and terminate racing with submitters on other threads: every
-- future settles (its result, or "pool is closed" / "pool terminated"),
-- every map returns or raises; nothing hangs.
scenario("pool_close_race", 300, function(run)
  local kind = run % 2 == 0 and "threads" or "processes"
  local p = pool[kind](2)
  local function submitter(p)
    local fs, out = {}, {ok = 0, closed = 0}
    for i = 1, 20 do
      local ok, f = pcall(p.submit, p, function(x) return x end, i)
      if ok then fs[#fs + 1] = {f, i}
      else assert(tostring(f):find("pool is closed", 1, true), tostring(f)) out.closed = out.closed + 1 end
    end
    local ok, r = pcall(p.map, p, function(x) return x end, {1, 2, 3, 4, 5, 6})
    assert(ok or tostring(r):find("pool", 1, true), tostring(r))
    for _, e in ipairs(fs) do
      local ok2, v = pcall(e[1].result, e[1], 60)
      if ok2 then assert(v == e[2]) out.ok = out.ok + 1
      else assert(tostring(v):find("pool is closed", 1, true) or
                  tostring(v):find("pool terminated", 1, true), tostring(v)) end
    end
    return true
  end
  local ts = {}
  for t = 1, 2 do ts[t] = spawn_thread(submitter, p) end
  conc.sleep(math.random() * 0.005)
  if run % 3 == 0 then p:terminate() else p:close() end
  for t = 1, 2 do assert(ts[t]:join() == true) end
end)

-- Pools dropped with work queued: collected, they finish it and stop.
scenario("pool_collect", 200, function(run)
  local seen = conc.queue()
  do
    local p = pool[run % 2 == 0 and "threads" or "processes"](1)
    for i = 1, 3 do p:submit(function(q, i) q:send(i) end, seen, i) end
  end
  collectgarbage()
  collectgarbage()
  for i = 1, 3 do assert(seen:recv(60) == i, "queued work done") end
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
