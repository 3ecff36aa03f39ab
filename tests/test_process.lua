-- spawn_process and process handles (docs/reference.md, "Processes").
local T = require "t"

T.test("returns values through the pipe", function()
  local p = spawn_process(function(a, b) return a + b, "x", {k = {1, 2}}, nil end, 1, 2)
  local r = table.pack(p:join())
  T.eq(r.n, 4)
  T.eq(r[1], 3)
  T.eq(r[2], "x")
  T.eq(r[3].k[2], 2)
  T.eq(r[4], nil)
  T.eq(p:status(), "done")
  T.eq(p:exitcode(), 0)
  T.eq(p:alive(), false)
  local again = table.pack(p:join())
  T.eq(again[1], 3)
end)

T.test("fork semantics: the child has the caller's state", function()
  local upvalue = {n = 5}
  just_a_global = "from the parent"
  local p = spawn_process(function()
    upvalue.n = upvalue.n + 1            -- the child's copy
    return upvalue.n, just_a_global, io.stdout ~= nil
  end)
  local n, g, hasio = p:join()
  T.eq(n, 6)
  T.eq(g, "from the parent")
  T.eq(hasio, true)
  T.eq(upvalue.n, 5)                     -- the parent's is untouched
  just_a_global = nil
end)

T.test("joined, waited on and selected from several threads at once", function()
  -- one thread at a time watches the child; when a waiter with a short
  -- timeout gives that role up, a joiner waiting behind it takes it over
  for _ = 1, 5 do
    local p = spawn_process(function() conc.sleep(0.1) return "r" end)
    local waiter = spawn_thread(function(p)
      local n = 0
      while not p:wait(0.01) do n = n + 1 end
      return n
    end, p)
    local joiner = spawn_thread(function(p) return p:join() end, p)
    local selector = spawn_thread(function(p)
      local item, v = conc.select({p}, 10)
      return item == p, v
    end, p)
    T.eq(joiner:join(), "r")
    T.ok(waiter:join() >= 1, "the waiter timed out at least once")
    local same, v = selector:join()
    T.eq(same, true)
    T.eq(v, true)
    T.eq(p:join(), "r")
  end
end)

T.test("errors come back with the traceback", function()
  local p = spawn_process({name = "bad"}, function() error("child boom") end)
  local err = T.raises("child boom", p.join, p)
  T.ok(err:find("^process %d+ %(bad%): "), err)
  T.ok(err:find("stack traceback:", 1, true), err)
  T.eq(p:status(), "failed")
  T.eq(p:exitcode(), 1)
  local p2 = spawn_process(function() error({code = 3}) end)
  local ok, e = pcall(p2.join, p2)
  T.eq(ok, false)
  T.eq(type(e), "table")
  T.eq(e.code, 3)
end)

T.test("os.exit in the child", function()
  local p = spawn_process(function() os.exit(3) end)
  T.raises("process " .. p.pid .. " exited with status 3", p.join, p)
  T.eq(p:status(), "failed")
  T.eq(p:exitcode(), 3)
  local p0 = spawn_process(function() os.exit(0) end)
  T.eq(select("#", p0:join()), 0)
  T.eq(p0:exitcode(), 0)
  local pt = spawn_process(function() os.exit(true) end)
  pt:join()
  T.eq(pt:exitcode(), 0)
end)

T.test("kill by number and by name; exitcode is minus the signal", function()
  local p = spawn_process(function() conc.sleep(30) end)
  T.eq(p:exitcode(), nil)
  T.eq(p:alive(), true)
  T.eq(p:status(), "running")
  T.eq(p:kill("KILL"), true)
  T.raises("process " .. p.pid .. " killed by signal 9 (SIGKILL)", p.join, p)
  T.eq(p:status(), "killed")
  T.eq(p:exitcode(), -9)
  T.eq(p:kill(), false)                 -- reaped: nothing to signal
  local p2 = spawn_process(function() conc.sleep(30) end)
  p2:kill()                             -- SIGTERM by default
  T.raises("killed by signal 15 (SIGTERM)", p2.join, p2)
  T.eq(p2:exitcode(), -15)
  local p3 = spawn_process(function() conc.sleep(30) end)
  p3:kill("sigint")
  T.raises("(SIGINT)", p3.join, p3)
  local p4 = spawn_process(function() conc.sleep(30) end)
  p4:kill(9)
  T.eq(p4:wait(5), true)
  T.eq(p4:exitcode(), -9)
  T.raises("killed by signal 9", p4.join, p4)
  T.raises("unknown signal 'NOPE'", p4.kill, p4, "NOPE")
end)

T.test("wait with a timeout", function()
  local ev = conc.event()
  local p = spawn_process(function() ev:wait(10) return "ok" end)
  T.eq(p:wait(0.05), false)
  ev:set()
  T.eq(p:wait(5), true)
  T.eq(p:join(), "ok")
end)

T.test("pid, name, id, tostring", function()
  local p = spawn_process({name = "named"}, function() return conc.self() end)
  local id, name = p:join()
  T.eq(name, "named")
  T.eq(id, p.id)
  T.eq(p.name, "named")
  T.eq(math.type(p.pid), "integer")
  T.eq(tostring(p), '<process ' .. p.pid .. ' "named" done>')
end)

T.test("options are checked", function()
  T.raises("function expected", spawn_process, 1)
  T.raises("unknown option 'x'", spawn_process, {x = 1}, print)
  T.raises("'fork' or 'spawn' expected, got 'clone'", spawn_process,
           {start = "clone"}, print)
end)

T.test("results that cannot cross fail the child", function()
  local p = spawn_process(function() return conc.channel() end)
  T.raises("cannot transfer a value of type 'conc.channel' (results[1])",
           p.join, p)
end)

T.test("output is flushed before the fork: nothing printed twice", function()
  local script = T.tmpfile([[
    io.write("before\n")          -- buffered (stdout is a pipe or a file)
    local ps = {}
    for i = 0, 4 do ps[#ps + 1] = spawn_process(function() print("Worker " .. i) end) end
    for _, p in ipairs(ps) do p:join() end
    print("after")
  ]])
  local out = T.sh(T.q(T.conclua) .. " " .. script .. " | sort")
  local counts = {}
  for line in out:gmatch("[^\n]+") do counts[line] = (counts[line] or 0) + 1 end
  for i = 0, 4 do T.eq(counts["Worker " .. i], 1, "Worker " .. i) end
  T.eq(counts["after"], 1)
  local file = os.tmpname()
  T.sh(T.q(T.conclua) .. " " .. script .. " > " .. file)
  local f = io.open(file)
  local text = f:read("a")
  f:close()
  local _, n = text:gsub("before", "")
  T.eq(n, 1, "buffered output duplicated in a file")
  os.remove(file)
  os.remove(script)
end)

T.test("spawn from threads while others hammer channels", function()
  local ch = conc.channel(8)
  local stop = conc.event()
  local hammers = {}
  for i = 1, 4 do
    hammers[i] = spawn_thread(function()
      local n = 0
      while not stop:is_set() do ch:send(i, 0.01) ch:recv(0.01) n = n + 1 end
      return n
    end)
  end
  local spawners = {}
  for i = 1, 2 do
    spawners[i] = spawn_thread(function()
      local s = 0
      for j = 1, 25 do s = s + spawn_process(function() return j end):join() end
      return s
    end)
  end
  for i = 1, 2 do T.eq(spawners[i]:join(), 325) end
  stop:set()
  for i = 1, 4 do hammers[i]:join() end
end)

T.test("many sequential spawns: no fd or zombie growth", function()
  local n = T.sanitizer and 100 or 400
  local fd0 = conc._stats().fds
  for i = 1, n do
    local p = spawn_process(function() return i end)
    T.eq(p:join(), i)
  end
  T.ok(conc._stats().fds <= fd0 + 1, "fds grew")
  T.eq(conc._stats().zombies, 0)
end)

T.test("a collected handle leaves no zombie", function()
  do spawn_process(function() return 1 end) end
  collectgarbage()
  collectgarbage()
  local t0 = conc.now()
  while conc._stats().children > 0 and conc.now() - t0 < 5 do conc.sleep(0.01) end
  T.eq(conc._stats().children, 0)
end)

T.test("processes in workers() and the exit wait", function()
  local ev = conc.event()
  local p = spawn_process({name = "listed"}, function() ev:wait(10) end)
  local found
  for _, w in ipairs(conc.workers()) do if w.pid == p.pid then found = w end end
  T.ok(found)
  T.eq(found.kind, "process")
  T.eq(found.name, "listed")
  ev:set()
  p:join()
end)

T.test("start = 'spawn': a fresh conclua, values copied in", function()
  local k = 10
  local p = spawn_process({start = "spawn", name = "fresh"}, function(a)
    local id, name = conc.self()
    return a + k, id, name, type(just_a_global)
  end, 5)
  just_a_global = 1
  local v, id, name, g = p:join()
  just_a_global = nil
  T.eq(v, 15)
  T.eq(name, "fresh")
  T.eq(id, p.id)
  T.eq(g, "nil")
  local p2 = spawn_process({start = "spawn"}, function() error("spawned boom") end)
  T.raises("spawned boom", p2.join, p2)
  T.raises("cannot transfer a value of type 'conc.lock'", spawn_process,
           {start = "spawn"}, function() end, conc.lock())
end)

T.test("daemon children are terminated when the parent exits", function()
  local script = T.tmpfile([[
    local p = spawn_process({daemon = true}, function() conc.sleep(60) end)
    io.write(p.pid, "\n")
  ]])
  local out = T.sh(T.q(T.conclua) .. " " .. script)
  local pid = tonumber(out:match("%d+"))
  T.ok(pid, out)
  local t0 = conc.now()
  local alive
  repeat
    alive = os.execute("kill -0 " .. pid .. " 2>/dev/null")
    if alive then conc.sleep(0.05) end
  until not alive or conc.now() - t0 > 5
  T.ok(not alive, "daemon child still running")
  os.remove(script)
end)

-- Whether a pid is a process still running (a zombie has ended).
local function running(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local st = f:read("a"):match("^%d+ %b() (%a)")
  f:close()
  return st ~= nil and st ~= "Z" and st ~= "X"
end

T.test("a script killed with SIGKILL takes its workers with it", function()
  -- what a user writes: a pool of processes, a daemon logger, a helper
  -- started from a thread; then the script is killed
  local script = T.tmpfile([[
    local pool = require "conc.pool"
    local log = conc.queue()
    local logger = spawn_process({daemon = true}, function()
      for line in log:iter() do io.stderr:write(line, "\n") end
    end)
    local crunch = pool.processes(2)
    local squares = crunch:map(function(x) return x * x end, {1, 2, 3, 4})
    log:send("squares: " .. table.concat(squares, " "))
    local helper = spawn_thread(function()
      return spawn_process(function() conc.sleep(60) end).pid
    end):join()
    local pids = {logger.pid, helper}
    for _, w in ipairs(conc.workers()) do
      if w.kind == "process" and w.name:find("pool") then pids[#pids + 1] = w.pid end
    end
    print(table.concat(pids, " "))
    io.stdout:flush()
    conc.sleep(60)
  ]])
  local out = os.tmpname()
  local pid = tonumber((T.sh(T.q(T.conclua) .. " " .. script .. " > " .. out ..
                             " 2>/dev/null & echo $!")))
  local pids, t0 = nil, conc.now()
  repeat
    conc.sleep(0.02)
    local text = T.readfile(out) or ""
    if text:find("\n") then pids = text end
  until pids or conc.now() - t0 > 30
  T.ok(pids, "the script never printed its workers")
  local list = {}
  for p in pids:gmatch("%d+") do list[#list + 1] = tonumber(p) end
  T.eq(#list, 4)
  for _, p in ipairs(list) do T.ok(running(p), "worker " .. p .. " not running") end
  os.execute("kill -KILL " .. pid)
  local left
  t0 = conc.now()
  repeat
    left = {}
    for _, p in ipairs(list) do if running(p) then left[#left + 1] = p end end
    if #left > 0 then conc.sleep(0.02) end
  until #left == 0 or conc.now() - t0 > 2
  for _, p in ipairs(left) do os.execute("kill -KILL " .. p) end
  T.eq(#left, 0, "workers still running 2 s after the parent was killed")
  os.remove(script)
  os.remove(out)
end)

T.test("the parent waits for non-daemon children at exit", function()
  local script = T.tmpfile([[
    spawn_process(function() conc.sleep(0.2) print("child done") end)
    print("main done")
  ]])
  local out = T.sh(T.q(T.conclua) .. " " .. script)
  T.eq(out, "main done\nchild done\n")
  os.remove(script)
end)

T.test("unjoined failures are reported at exit", function()
  local script = T.tmpfile([[
    spawn_process({name = "sad"}, function() error("nobody joined me") end)
    spawn_thread({name = "sadthread"}, function() error("me neither") end)
  ]])
  local out, code = T.sh(T.q(T.conclua) .. " " .. script)
  T.ok(out:find("\nsad: ", 1, true) or out:find("^sad: "), out)
  T.ok(out:find("nobody joined me", 1, true), out)
  T.ok(out:find("sadthread: ", 1, true) and out:find("me neither", 1, true), out)
  T.eq(code, 0)
  os.remove(script)
end)

T.done()
