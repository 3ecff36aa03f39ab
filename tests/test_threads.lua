-- spawn_thread and thread handles (docs/reference.md, "Threads").
local T = require "t"

T.test("join returns every value, nils and count kept", function()
  local t = spawn_thread(function(a, b) return a + b, nil, "x", nil end, 1, 2)
  local r = table.pack(t:join())
  T.eq(r.n, 4)
  T.eq(r[1], 3)
  T.eq(r[2], nil)
  T.eq(r[3], "x")
  T.eq(r[4], nil)
  local r2 = table.pack(t:join())          -- join again: same outcome
  T.eq(r2.n, 4)
  T.eq(r2[1], 3)
end)

T.test("no results and many results", function()
  T.eq(select("#", spawn_thread(function() end):join()), 0)
  local t = spawn_thread(function() return table.unpack((function()
    local v = {} for i = 1, 200 do v[i] = i end return v end)()) end)
  local r = table.pack(t:join())
  T.eq(r.n, 200)
  T.eq(r[200], 200)
end)

T.test("a fresh state with the standard libraries", function()
  local t = spawn_thread(function()
    return string.format("%05.1f", math.pi), ("abc"):upper(), "10" + 5,
           table.concat({1, 2}, "-"), utf8.char(233), type(io.write),
           type(os.time()), type(coroutine.wrap), type(debug.traceback),
           type(package.path), type(require), type(conc), type(spawn_thread),
           type(spawn_process), _G == _ENV, #arg
  end)
  local r = table.pack(pcall(t.join, t))
  T.eq(r[1], false, "arg is not copied into threads")
  local t2 = spawn_thread(function()
    return string.format("%05.1f", math.pi), ("abc"):upper(), "10" + 5,
           table.concat({1, 2}, "-"), utf8.char(233), type(io.write),
           type(os.time()), type(coroutine.wrap), type(debug.traceback),
           type(package.path), type(require), type(conc), type(spawn_thread),
           type(spawn_process), _G == _ENV, rawget(_G, "x_from_main")
  end)
  x_from_main = 1
  T.same({t2:join()}, {"003.1", "ABC", 15, "1-2", "é", "function", "number",
                       "function", "function", "string", "function", "table",
                       "function", "function", true, nil})
  x_from_main = nil
end)

T.test("a worker's own globals win over the libraries", function()
  local t = spawn_thread(function()
    print = function() return "mine" end
    return print(), math.abs(-2)
  end)
  T.same({t:join()}, {"mine", 2})
end)

T.test("globals of the spawner are not shared", function()
  shared_global = 5
  local t = spawn_thread(function()
    local before = shared_global
    shared_global = 6
    return before
  end)
  T.eq(t:join(), nil)
  T.eq(shared_global, 5)
  shared_global = nil
end)

T.test("package.path and cpath are inherited", function()
  local saved = package.path
  package.path = "/nowhere/?.lua;" .. saved
  local t = spawn_thread(function() return package.path, package.cpath end)
  local p, cp = t:join()
  T.eq(p, package.path)
  T.eq(cp, package.cpath)
  package.path = saved
end)

T.test("require of the stdlib and of files works in a thread", function()
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. T.q(dir))
  local f = assert(io.open(dir .. "/mymod_t.lua", "w"))
  f:write("return {answer = 42}")
  f:close()
  local saved = package.path
  package.path = dir .. "/?.lua;" .. saved
  local t = spawn_thread(function() return require("mymod_t").answer end)
  T.eq(t:join(), 42)
  package.path = saved
  os.remove(dir .. "/mymod_t.lua")
  os.remove(dir)
end)

T.test("string errors: thread id, name, message and traceback", function()
  local t = spawn_thread({name = "worker"}, function() error("boom") end)
  local err = T.raises("boom", t.join, t)
  T.ok(err:find("^thread %d+ %(worker%): ") ~= nil, err)
  T.ok(err:find("stack traceback:", 1, true), err)
  T.eq(t:status(), "failed")
  local err2 = T.raises("boom", t.join, t)    -- the same outcome again
  T.eq(err2, err)
end)

T.test("non-string errors are copied", function()
  local t = spawn_thread(function() error({code = 7, tags = {"a"}}) end)
  local ok, e = pcall(t.join, t)
  T.eq(ok, false)
  T.eq(type(e), "table")
  T.eq(e.code, 7)
  T.eq(e.tags[1], "a")
  local t2 = spawn_thread(function() error(42) end)
  local ok2, e2 = pcall(t2.join, t2)
  T.eq(ok2, false)
  T.eq(e2, 42)
end)

T.test("results that cannot be copied fail the thread", function()
  local t = spawn_thread(function() return 1, io.stdout end)
  local err = T.raises("cannot transfer a value of type 'userdata' (results[2])",
                       t.join, t)
  T.eq(t:status(), "failed")
  T.ok(err:find("^thread %d+"))
end)

T.test("options: name and daemon; bad options", function()
  local t = spawn_thread({name = "alpha"}, function() return conc.self() end)
  local id, name = t:join()
  T.eq(id, t.id)
  T.eq(name, "alpha")
  T.eq(t.name, "alpha")
  local d = spawn_thread({daemon = true}, function() return 1 end)
  T.eq(d:join(), 1)
  T.raises("unknown option 'bogus'", spawn_thread, {bogus = 1}, print)
  T.raises("bad option 'name'", spawn_thread, {name = 1}, print)
  T.raises("bad option 'daemon'", spawn_thread, {daemon = "yes"}, print)
  T.raises("bad argument #1 to 'spawn_thread' (function expected, got number)",
           spawn_thread, 42)
  T.raises("bad argument #2 to 'spawn_thread' (function expected, got no value)",
           spawn_thread, {name = "x"})
  T.raises("function expected", spawn_thread)
end)

T.test("ids are unique, the main thread is 0", function()
  local id, name = conc.self()
  T.eq(id, 0)
  T.eq(name, "main")
  local seen = {}
  local ts = {}
  for i = 1, 20 do ts[i] = spawn_thread(function() return conc.self() end) end
  for i = 1, 20 do
    local tid = ts[i]:join()
    T.eq(tid, ts[i].id)
    T.ok(not seen[tid], "duplicate id")
    seen[tid] = true
  end
  T.eq(ts[1].name, "thread-" .. ts[1].id)
end)

T.test("wait, status, alive", function()
  local ev = conc.event()
  local t = spawn_thread(function() ev:wait() return "done" end)
  T.eq(t:status(), "running")
  T.eq(t:alive(), true)
  T.eq(t:wait(0.05), false)
  T.eq(t:wait(0), false)
  ev:set()
  T.eq(t:wait(), true)
  T.eq(t:status(), "done")
  T.eq(t:alive(), false)
  T.eq(t:wait(0), true)
  T.eq(t:join(), "done")
  T.raises("timeout must be a non-negative number", t.wait, t, -1)
  T.raises("number expected", t.wait, t, "x")
end)

T.test("tostring of a handle", function()
  local t = spawn_thread({name = "w"}, function() end)
  t:join()
  T.eq(tostring(t), '<thread ' .. t.id .. ' "w" done>')
end)

T.test("two threads run Lua at once (no global lock)", function()
  -- each thread spins in pure Lua until it sees the other running: with
  -- one lock around the VM (a GIL) neither could spin while the other
  -- holds it... but preemption could still interleave them, so this only
  -- checks that both states run side by side without any conc call; the
  -- speed-up is measured by make bench
  local s = conc.shared()
  s.a, s.b = 0, 0
  local function side(me, other)
    s[me] = 1
    local t0 = conc.now()
    while s[other] == 0 and conc.now() - t0 < 20 do end
    return s[other]
  end
  local a = spawn_thread(side, "a", "b")
  local b = spawn_thread(side, "b", "a")
  T.eq(a:join(), 1)
  T.eq(b:join(), 1)
end)

T.test("cancel a pure Lua loop", function()
  -- ThreadSanitizer holds signals back until the thread calls into libc,
  -- which a pure Lua loop never does: nothing to test there
  if T.sanitizer == "tsan" then return end
  local t = spawn_thread(function() while true do end end)
  conc.sleep(0.02)
  T.eq(t:cancel(), true)
  T.raises("cancelled", t.join, t)
  T.eq(t:status(), "cancelled")
  T.eq(t:cancel(), false)                  -- not running any more
end)

T.test("cancel cannot be swallowed by pcall", function()
  -- ThreadSanitizer holds signals back until the thread calls into libc,
  -- which a pure Lua loop never does: nothing to test there
  if T.sanitizer == "tsan" then return end
  local t = spawn_thread(function()
    local caught = 0
    while true do
      local ok = pcall(function() while true do end end)
      caught = caught + 1
    end
  end)
  conc.sleep(0.02)
  t:cancel()
  T.raises("cancelled", t.join, t)
  T.eq(t:status(), "cancelled")
end)

T.test("cancel wakes blocking calls", function()
  local ev, ev2 = conc.event(), conc.event()
  local ch = conc.channel()
  local lk = conc.lock()
  lk:acquire()
  local workers = {
    spawn_thread(function() ev:wait() end),
    spawn_thread(function() ch:recv() end),
    spawn_thread(function() conc.sleep(100) end),
    spawn_thread(function() lk:acquire() end),
    spawn_thread(function() spawn_thread(function() ev2:wait() end):join() end),
    spawn_thread(function() conc.select({conc.channel()}, 100) end),
  }
  conc.sleep(0.05)
  for _, t in ipairs(workers) do t:cancel() end
  for i, t in ipairs(workers) do
    T.raises("cancelled", t.join, t)
    T.eq(t:status(), "cancelled", "worker " .. i)
  end
  lk:release()
  ev2:set()         -- the grandchild: cancelling its joiner left it running
end)

T.test("cancel inside coroutines", function()
  -- ThreadSanitizer holds signals back until the thread calls into libc,
  -- which a pure Lua loop never does: nothing to test there
  if T.sanitizer == "tsan" then return end
  local t1 = spawn_thread(function()
    local co = coroutine.wrap(function() while true do end end)
    co()
  end)
  local t2 = spawn_thread(function()
    local co = coroutine.create(function() while true do coroutine.yield() end end)
    while true do coroutine.resume(co) end
  end)
  conc.sleep(0.02)
  t1:cancel()
  t2:cancel()
  T.raises("cancelled", t1.join, t1)
  T.raises("cancelled", t2.join, t2)
end)

-- Spinning threads that keep both cores busy: a woken worker then often
-- runs on the canceller's core before the canceller goes on (the window
-- in which a cancel used to be swallowed). They stop on 'stop'.
local function hogs(n)
  local stop = conc.event()
  local ts = {}
  for i = 1, n do
    ts[i] = spawn_thread(function()
      while not stop:is_set() do
        local x = 0
        for k = 1, 20000 do x = x + k end
      end
    end)
  end
  return function()
    stop:set()
    for _, t in ipairs(ts) do t:join() end
  end
end

T.test("a cancel answered true always ends cancelled (300 runs)", function()
  local unhog = hogs(2)
  local wrong = {}
  for i = 1, 300 do
    local t = spawn_thread(function()
      pcall(conc.sleep, 10)
      pcall(conc.sleep, 10)
      return "done"
    end)
    conc.sleep(0.002)
    local ok = t:cancel()
    T.ok(t:wait(30), "run " .. i .. ": the cancelled thread did not end")
    if ok and t:status() ~= "cancelled" then
      wrong[#wrong + 1] = i .. ": " .. t:status()
    end
  end
  unhog()
  T.eq(#wrong, 0, "runs that did not end cancelled: " ..
                  table.concat(wrong, ", ", 1, math.min(#wrong, 10)))
end)

T.test("every cancellation point after a caught cancel raises again", function()
  local bodies = {
    function() pcall(conc.sleep, 60) conc.sleep(60) end,
    function() pcall(conc.sleep, 60) conc.channel():recv() end,
    function() while true do pcall(conc.sleep, 60) end end,
    function() while true do pcall(conc.event().wait, conc.event()) end end,
  }
  if T.sanitizer ~= "tsan" then      -- tsan holds signals back in pure Lua
    bodies[#bodies + 1] = function() pcall(conc.sleep, 60) while true do end end
    bodies[#bodies + 1] = function()
      while true do pcall(function() while true do end end) end
    end
  end
  for i, body in ipairs(bodies) do
    local t = spawn_thread(body)
    conc.sleep(0.02)
    local t0 = conc.now()
    T.eq(t:cancel(), true)
    T.ok(t:wait(30), "body " .. i .. " swallowed its cancel")
    T.ok(conc.now() - t0 < 30, "body " .. i)
    T.raises("cancelled", t.join, t)
    T.eq(t:status(), "cancelled", "body " .. i)
  end
end)

T.test("a worker that returns after catching its cancel ends cancelled", function()
  local ch = conc.channel()
  local t = spawn_thread(function()
    local ok, err = pcall(conc.sleep, 10)
    ch:send(err)                       -- the grace after the catch
    return "swallowed"
  end)
  conc.sleep(0.05)
  T.eq(t:cancel(), true)
  T.eq(ch:recv(30), "cancelled")
  T.raises("cancelled", t.join, t)
  T.eq(t:status(), "cancelled")
  T.eq(t:cancel(), false)
end)

-- What the handlers of a cancelled thread saw: one line per handler, in
-- the order they ran.
local function closes(body)
  local ch = conc.channel()
  local t = spawn_thread(body, ch)
  T.eq(ch:recv(30), "ready")
  conc.sleep(0.02)
  T.eq(t:cancel(), true)
  T.raises("cancelled", t.join, t)
  T.eq(t:status(), "cancelled")
  local got = {}
  while true do
    local v = ch:recv(0)
    if v == nil then break end
    got[#got + 1] = v
  end
  return table.concat(got, ",")
end

T.test("<close> and __close run when a thread is cancelled", function()
  -- each handler runs Lua code of its own to the end (a loop, a call)
  local function body(block)
    return function(ch)
      local function closer(tag)
        return setmetatable({}, {__close = function(_, e)
          local s = 0
          for i = 1, 100000 do s = s + i end      -- long enough to be cut
          ch:send(tag .. ":" .. tostring(e) .. ":" .. s)
        end})
      end
      local outer <close> = closer("outer")
      do
        local inner <close> = closer("inner")
        ch:send("ready")
        block()
      end
    end
  end
  local want = "inner:cancelled:5000050000,outer:cancelled:5000050000"
  T.eq(closes(body(function() conc.sleep(100) end)), want)
  T.eq(closes(body(function() conc.event():wait() end)), want)
  if T.sanitizer ~= "tsan" then     -- tsan holds signals back in pure Lua
    T.eq(closes(body(function() while true do end end)), want)
  end
end)

T.test("__close runs on cancel through pcall, coroutines and handlers", function()
  -- closed by the pcall that catches the cancel, then by the outer one
  T.eq(closes(function(ch)
    local a <close> = setmetatable({}, {__close = function() ch:send("a") end})
    pcall(function()
      local b <close> = setmetatable({}, {__close = function() ch:send("b") end})
      ch:send("ready")
      conc.sleep(100)
    end)
    conc.sleep(100)                   -- raises again at once
    ch:send("not reached")
  end), "b,a")
  -- a coroutine's own variables, through coroutine.wrap
  T.eq(closes(function(ch)
    local a <close> = setmetatable({}, {__close = function() ch:send("a") end})
    coroutine.wrap(function()
      local c <close> = setmetatable({}, {__close = function() ch:send("c") end})
      ch:send("ready")
      conc.sleep(100)
    end)()
  end), "c,a")
  -- a handler's own pcall and coroutine work inside the unwinding
  T.eq(closes(function(ch)
    local a <close> = setmetatable({}, {__close = function()
      local ok = pcall(error, "x")
      local co = coroutine.wrap(function() coroutine.yield("y") end)
      ch:send("a" .. tostring(ok) .. co())
    end})
    ch:send("ready")
    conc.sleep(100)
  end), "afalsey")
end)

T.test("a program that cancels its workers at a deadline", function()
  -- as a user writes it from the reference: workers take jobs from a
  -- channel, clean up in a __close handler, log what pcall caught
  local jobs, log = conc.channel(), conc.channel()
  local workers = {}
  for i = 1, 4 do
    workers[i] = spawn_thread({name = "w" .. i}, function()
      local bye <close> = setmetatable({}, {__close = function(_, err)
        log:send(select(2, conc.self()) .. " " .. tostring(err))
      end})
      for job in jobs:iter() do
        local ok, err = pcall(conc.sleep, job)
        if not ok then log:send("caught " .. err) end
      end
    end)
  end
  for _ = 1, 1000 do jobs:send(0.01) end
  conc.sleep(0.1)
  for _, w in ipairs(workers) do T.eq(w:cancel(), true) end
  for _, w in ipairs(workers) do
    T.raises("cancelled", w.join, w)
    T.eq(w:status(), "cancelled")
  end
  local closed, caught = {}, 0
  while true do
    local line = log:recv(0)
    if line == nil then break end
    if line:find("^caught ") then
      T.eq(line, "caught cancelled")
      caught = caught + 1
    else
      local name, err = line:match("^(%S+) (.*)$")
      T.eq(err, "cancelled", line)
      T.ok(not closed[name], "closed twice: " .. name)
      closed[name] = true
    end
  end
  for i = 1, 4 do T.ok(closed["w" .. i], "w" .. i .. " did not clean up") end
  T.ok(caught <= 4, caught)
end)

T.test("pcall and xpcall behave as the standard ones", function()
  local t = spawn_thread(function()
    local r = {}
    r[1] = select("#", pcall(function() return 1, nil, 3 end))
    r[2] = select(2, pcall(error, "e", 0))
    r[3] = select(2, xpcall(error, function(m) return "h:" .. m end, "m", 0))
    r[4] = select(2, xpcall(function(a, b) return a + b end, print, 2, 3))
    r[5] = select(2, pcall(pcall))
    local co = coroutine.wrap(function()
      return pcall(function() return coroutine.yield(1) + 1 end)
    end)
    r[6] = co()
    r[7] = select(2, co(41))
    r[8] = select(2, pcall(xpcall, print))
    return table.concat(r, "|")
  end)
  T.eq(t:join(), "4|e|h:m|5|bad argument #1 to 'pcall' (value expected)|1|42|" ..
                 "bad argument #2 to 'xpcall' (function expected, got no value)")
  T.eq(pcall, spawn_thread(function() return pcall end):join())
end)

T.test("a collected handle leaves the thread running and awaited", function()
  local ch = conc.channel()
  do
    spawn_thread(function() conc.sleep(0.1) ch:send("still here") end)
  end
  collectgarbage()
  collectgarbage()
  T.eq(ch:recv(2), "still here")
end)

T.test("a handle released by its __gc, reached by a later finalizer", function()
  -- finalizers run newest first: at exit the handle goes before the
  -- older table whose finalizer still uses it
  local script = T.tmpfile([[
    local t
    setmetatable({}, {__gc = function()
      print(pcall(function() return t.id end))
      print(tostring(t), pcall(t.join, t))
    end})
    t = spawn_thread(function() return 1 end)
    t:join()
  ]])
  local out, code = T.sh(T.q(T.conclua) .. " " .. script)
  os.remove(script)
  T.eq(code, 0, out)
  T.ok(out:find("false\t[^\n]*handle already released\n<conc.thread released>\tfalse"), out)
end)

T.test("a thread cannot join itself", function()
  local ch = conc.channel()
  local t = spawn_thread(function()
    local me = ch:recv()
    return pcall(me.join, me)
  end)
  ch:send(t)
  local ok, err = t:join()
  T.eq(ok, false)
  T.ok(err:find("cannot join itself", 1, true), err)
end)

T.test("handles cross to other threads", function()
  local inner = spawn_thread(function() return "inner" end)
  local outer = spawn_thread(function(h) return h:join() end, inner)
  T.eq(outer:join(), "inner")
end)

T.test("nested threads", function()
  local t = spawn_thread(function()
    local a = spawn_thread(function() return 1 end)
    local b = spawn_thread(function()
      return spawn_thread(function() return 2 end):join()
    end)
    return a:join() + b:join()
  end)
  T.eq(t:join(), 3)
end)

T.test("conc.sleep, conc.now, conc.cpu_count", function()
  local t0 = conc.now()
  conc.sleep(0.05)
  local dt = conc.now() - t0
  T.ok(dt >= 0.05 and dt < 2, dt)
  T.eq(math.type(conc.now()), "float")
  T.ok(conc.cpu_count() >= 1)
  T.eq(math.type(conc.cpu_count()), "integer")
  conc.sleep(0)
  T.raises("non-negative", conc.sleep, -1)
  T.raises("number expected", conc.sleep, "x")
end)

T.test("events", function()
  local ev = conc.event()
  T.eq(ev:is_set(), false)
  T.eq(ev:wait(0), false)
  T.eq(ev:wait(0.01), false)
  local ts = {}
  for i = 1, 4 do ts[i] = spawn_thread(function() return ev:wait(5) end) end
  conc.sleep(0.02)
  ev:set()
  for i = 1, 4 do T.eq(ts[i]:join(), true) end
  T.eq(ev:is_set(), true)
  T.eq(ev:wait(), true)
  ev:clear()
  T.eq(ev:is_set(), false)
  T.eq(tostring(ev), "<event clear>")
end)

T.test("many threads at once", function()
  local n = T.sanitizer and 300 or 2000
  local ev = conc.event()
  local ts = {}
  for i = 1, n do ts[i] = spawn_thread(function(k) ev:wait() return k end, i) end
  ev:set()
  local sum = 0
  for i = 1, n do sum = sum + ts[i]:join() end
  T.eq(sum, n * (n + 1) // 2)
end)

T.test("workers() lists live threads with what they wait on", function()
  local ev = conc.event()
  local t = spawn_thread({name = "sleeper"}, function() ev:wait() end)
  conc.sleep(0.05)
  local found
  for _, w in ipairs(conc.workers()) do
    if w.id == t.id then found = w end
  end
  T.ok(found, "not listed")
  T.eq(found.name, "sleeper")
  T.eq(found.kind, "thread")
  T.eq(found.status, "running")
  T.ok(found.waiting_on:find("^event %d+$"), found.waiting_on)
  ev:set()
  t:join()
  for _, w in ipairs(conc.workers()) do T.ok(w.id ~= t.id, "still listed") end
end)

T.test("spawn from a thread while others run", function()
  local ts = {}
  for i = 1, 8 do
    ts[i] = spawn_thread(function()
      local s = 0
      for j = 1, 20 do s = s + spawn_thread(function(x) return x end, j):join() end
      return s
    end)
  end
  for i = 1, 8 do T.eq(ts[i]:join(), 210) end
end)

T.test("conc.self() gives the pid; conc.type names conclua objects", function()
  local id, name, pid = conc.self()
  T.eq(id, 0)
  T.eq(name, "main")
  T.eq(math.type(pid), "integer")
  local t = spawn_thread(function() return select(3, conc.self()) end)
  T.eq(t:join(), pid, "a thread runs in its maker's process")
  local p = spawn_process(function() return select(3, conc.self()) end)
  T.eq(p:join(), p.pid)
  local a, b = conc.pipe()
  local pool = require "conc.pool"
  local pl = pool.threads(1)
  local f = pl:submit(function() end)
  f:wait()
  local objs = {
    thread = t, process = p, channel = conc.channel(), pipe = a,
    queue = conc.queue(), lock = conc.lock(), rlock = conc.rlock(),
    condition = conc.condition(), semaphore = conc.semaphore(1),
    event = conc.event(), barrier = conc.barrier(1), shared = conc.shared(),
    timer = conc.timer(0), pool = pl, future = f,
  }
  for kind, o in pairs(objs) do T.eq(conc.type(o), kind) end
  for _, v in ipairs({1, "channel", {}, print, io.stdout, coroutine.create(print), true}) do
    T.eq(conc.type(v), nil)
  end
  T.eq(conc.type(nil), nil)
  T.raises("value expected", conc.type)
  pl:close()
  a:close()
  b:close()
end)

T.test("conc.on_worker runs in every later thread and pool worker", function()
  -- hooks stay with the runtime: this one runs in a fresh conclua process
  local p = spawn_process({start = "spawn"}, function()
    local before = spawn_thread(function() return SETUP end)
    before:wait()
    local tag = "ready"
    conc.on_worker(function() SETUP = tag; package.loaded.mymod = {v = 7} end)
    local t = spawn_thread(function() return SETUP, require("mymod").v end)
    local nested = spawn_thread(function()
      return spawn_thread(function() return SETUP end):join()
    end)
    local pool = require "conc.pool"
    local pt, pp = pool.threads(1), pool.processes(1)
    local r1 = pt:submit(function() return SETUP end):result()
    local r2 = pp:submit(function() return SETUP end):result()
    pt:close()
    pp:close()
    conc.on_worker(function() error("setup failed", 0) end)
    local bad = spawn_thread(function() return "ran" end)
    local ok, e = pcall(bad.join, bad)
    local a, v = t:join()
    return before:join(), a, v, nested:join(), r1, r2, ok, e
  end)
  local before, a, v, nested, r1, r2, ok, e = p:join()
  T.eq(before, nil, "only states made afterwards")
  T.eq(a, "ready")
  T.eq(v, 7)
  T.eq(nested, "ready")
  T.eq(r1, "ready")
  T.eq(r2, "ready")
  T.eq(ok, false)
  T.ok(e:find("setup failed", 1, true), e)
  T.raises("function expected", conc.on_worker, 1)
  local out = io.stdout
  T.raises("cannot transfer", conc.on_worker, function() return out end)
end)

T.done()
