-- conc.lock, semaphore, event, barrier (docs/reference.md, "Locks" to "Barriers"), across threads
-- and across processes forked after they were made.
local T = require "t"

T.test("lock: acquire, release, timeouts", function()
  local l = conc.lock()
  T.eq(l:acquire(), true)
  T.eq(l:locked(), true)
  T.eq(l:acquire(0), false)
  T.eq(l:acquire(0.02), false)
  l:release()
  T.eq(l:locked(), false)
  T.raises("release of an unlocked lock", l.release, l)
  T.eq(tostring(l), "<lock unlocked>")
end)

T.test("lock: mutual exclusion between threads", function()
  local l = conc.lock()
  local s = conc.shared()
  s.n = 0
  local ts = {}
  for i = 1, 4 do
    ts[i] = spawn_thread(function()
      for _ = 1, 500 do
        l:acquire()
        local v = s.n
        s.n = v + 1
        l:release()
      end
    end)
  end
  for i = 1, 4 do ts[i]:join() end
  T.eq(s.n, 2000)
end)

T.test("lock:with releases on error and returns results", function()
  local l = conc.lock()
  T.same({l:with(function(a, b) return a + b, "x" end, 1, 2)}, {3, "x"})
  T.eq(l:locked(), false)
  local err = T.raises("inner", l.with, l, function() error("inner") end)
  T.eq(l:locked(), false)
  T.raises("function expected", l.with, l, 5)
end)

T.test("lock: across processes", function()
  local l = conc.lock()
  l:acquire()
  local p = spawn_process(function()
    local t0 = conc.now()
    l:acquire()
    l:release()
    return conc.now() - t0
  end)
  conc.sleep(0.2)
  l:release()
  T.ok(p:join() >= 0.1)
end)

T.test("lock: a process that dies holding it does not block others, reaped or not", function()
  local function state(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    local s = f and f:read("a")
    if f then f:close() end
    return s and s:match("^%d+ %b() (%a)")
  end
  for _, reap in ipairs({true, false, false}) do
    local l = conc.lock()
    local p = spawn_process(function() l:acquire() conc.sleep(60) end)
    local t0 = conc.now()
    while not l:locked() and conc.now() - t0 < 10 do conc.sleep(0.001) end
    T.eq(l:locked(), true)
    p:kill("KILL")
    if reap then
      T.raises("killed by signal 9", p.join, p)
    else
      while state(p.pid) ~= "Z" and conc.now() - t0 < 10 do conc.sleep(0.001) end
      T.eq(state(p.pid), "Z", "the killed holder is a zombie")
    end
    T.eq(l:acquire(10), true)        -- taken over from the dead owner
    l:release()
    if not reap then
      T.eq(state(p.pid), "Z", "still a zombie")
      T.raises("killed by signal 9", p.join, p)
    end
  end
end)

T.test("lock: a cancelled waiter passes the wake-up on", function()
  local l = conc.lock()
  l:acquire()
  local a = spawn_thread(function() return l:acquire(10) end)
  local b = spawn_thread(function() local ok = l:acquire(10) if ok then l:release() end return ok end)
  conc.sleep(0.05)
  a:cancel()
  T.raises("cancelled", a.join, a)
  l:release()
  T.eq(b:join(), true)
end)

T.test("semaphore", function()
  local s = conc.semaphore(2)
  T.eq(s:acquire(), true)
  T.eq(s:acquire(), true)
  T.eq(s:acquire(0), false)
  T.eq(s:value(), 0)
  local t = spawn_thread(function() return s:acquire(5) end)
  conc.sleep(0.02)
  s:release()
  T.eq(t:join(), true)
  s:release(2)
  T.eq(s:value(), 2)
  T.raises("count must be non-negative", conc.semaphore, -1)
  T.raises("count must be positive", s.release, s, 0)
  T.eq(tostring(s), "<semaphore 2>")
end)

T.test("semaphore: a count that would overflow raises", function()
  local s = conc.semaphore(math.maxinteger)
  T.raises("semaphore count would overflow", s.release, s)
  T.eq(s:value(), math.maxinteger, "nothing changed")
  T.eq(tostring(s), "<semaphore " .. math.maxinteger .. ">")
  local t = conc.semaphore(1)
  T.raises("semaphore count would overflow", t.release, t, math.maxinteger)
  T.eq(t:value(), 1)
  t:release(math.maxinteger - 1)
  T.eq(t:value(), math.maxinteger)
  T.eq(t:acquire(0), true)
  T.eq(t:value(), math.maxinteger - 1)
end)

T.test("semaphore: bounded", function()
  local s = conc.semaphore(2, {bounded = true})
  T.raises("semaphore released too many times", s.release, s)
  T.eq(s:value(), 2)
  s:acquire()
  s:acquire()
  T.raises("semaphore released too many times", s.release, s, 3)
  s:release(2)
  T.eq(s:value(), 2)
  T.raises("semaphore released too many times", s.release, s)
  local open = conc.semaphore(1, {bounded = false})
  open:release()
  T.eq(open:value(), 2)
  T.raises("bad option 'bounded' to 'semaphore' (boolean expected, got number)",
           conc.semaphore, 1, {bounded = 1})
  -- across processes, the bound holds too
  local b = conc.semaphore(1, {bounded = true})
  b:acquire()
  local p = spawn_process(function()
    b:release()
    return pcall(b.release, b)
  end)
  local ok, err = p:join()
  T.eq(ok, false)
  T.ok(err:find("released too many times"), err)
end)

T.test("constructors raise on an option they do not know", function()
  T.raises("bad argument #1 to 'lock' (unknown option 'reentrant')",
           function() conc.lock({reentrant = true}) end)
  T.raises("bad argument #2 to 'semaphore' (unknown option 'bound')",
           function() conc.semaphore(1, {bound = true}) end)
  T.raises("bad argument #1 to 'event' (unknown option 'set')",
           function() conc.event({set = true}) end)
  T.raises("bad argument #2 to 'barrier' (unknown option 'timeout')",
           function() conc.barrier(2, {timeout = 1}) end)
  T.raises("bad argument #1 to 'shared' (unknown option '1')",
           function() conc.shared({"x"}) end)
  T.raises("bad argument #1 to 'spawn_thread' (unknown option 'deamon')",
           function() spawn_thread({deamon = true}, function() end) end)
  T.raises("bad argument #1 to 'spawn_process' (unknown option 'stat')",
           function() spawn_process({stat = "fork"}, function() end) end)
  T.raises("(unknown option 'reentrant')", conc.lock, {reentrant = true})
  T.raises("table expected, got number", conc.lock, 1)
  -- no options, or an empty table, are fine
  T.eq(tostring(conc.lock({})), "<lock unlocked>")
  T.eq(tostring(conc.lock(nil)), "<lock unlocked>")
  T.eq(tostring(conc.event({})), "<event clear>")
  T.eq(tostring(conc.barrier(1, {})), "<barrier 0/1>")
  T.eq(tostring(conc.shared({})), "<shared 0 keys>")
end)

T.test("tostrings show big numbers whole", function()
  local max = math.maxinteger
  T.eq(tostring(conc.channel(max)), "<channel 0/" .. max .. " queued>")
  T.eq(tostring(conc.channel(2^31)), "<channel 0/2147483648 queued>")
  T.eq(tostring(conc.queue(max)), "<queue 0/" .. max .. " queued>")
  T.eq(tostring(conc.queue(2^32 + 1)), "<queue 0/4294967297 queued>")
  T.eq(tostring(conc.semaphore(max)), "<semaphore " .. max .. ">")
  local b = conc.barrier(2147483647)
  T.eq(tostring(b), "<barrier 0/2147483647>")
  T.raises("too many parties", conc.barrier, 2147483648)
end)

T.test("semaphore across processes", function()
  local s = conc.semaphore(0)
  local p = spawn_process(function() return s:acquire(5) end)
  conc.sleep(0.05)
  s:release()
  T.eq(p:join(), true)
end)

T.test("event across processes and threads", function()
  local e = conc.event()
  local p = spawn_process(function() return e:wait(5) end)
  local t = spawn_thread(function() return e:wait(5) end)
  conc.sleep(0.05)
  e:set()
  T.eq(p:join(), true)
  T.eq(t:join(), true)
end)

T.test("barrier", function()
  local b = conc.barrier(3)
  T.eq(b:parties(), 3)
  local ts = {}
  for i = 1, 3 do ts[i] = spawn_thread(function() return b:wait(5) end) end
  local seen = {}
  for i = 1, 3 do
    local idx = ts[i]:join()
    T.eq(math.type(idx), "integer")
    seen[idx] = true
  end
  T.ok(seen[0] and seen[1] and seen[2])
  -- reusable; a timeout breaks it (Python's threading.Barrier) until reset
  T.eq(b:wait(0.02), false)
  T.eq(b:broken(), true)
  T.raises("broken barrier", b.wait, b, 1)
  b:reset()
  T.eq(b:broken(), false)
  local t2 = {}
  for i = 1, 2 do t2[i] = spawn_thread(function() return b:wait(5) end) end
  T.ok(b:wait(5))
  for i = 1, 2 do T.ok(t2[i]:join()) end
  T.raises("parties must be positive", conc.barrier, 0)
  T.raises("number expected", conc.barrier)
end)

T.test("barrier: abort and reset wake the waiters with broken barrier", function()
  local b = conc.barrier(3)
  local ts = {}
  for i = 1, 2 do ts[i] = spawn_thread(function() return b:wait(5) end) end
  conc.sleep(0.05)
  T.eq(tostring(b), "<barrier 2/3>")
  b:abort()
  for i = 1, 2 do T.raises("broken barrier", ts[i].join, ts[i]) end
  T.raises("broken barrier", b.wait, b)
  b:abort()                                  -- again: nothing changes
  b:reset()
  T.eq(tostring(b), "<barrier 0/3>")
  -- a reset while parties wait breaks their round; the next round works
  local w = spawn_thread(function() return b:wait(5) end)
  conc.sleep(0.05)
  b:reset()
  T.raises("broken barrier", w.join, w)
  for i = 1, 2 do ts[i] = spawn_thread(function() return b:wait(5) end) end
  local mine = b:wait(5)
  local sum = mine
  for i = 1, 2 do sum = sum + ts[i]:join() end
  T.eq(sum, 0 + 1 + 2)
  -- a timeout breaks it for the others too, and across processes
  local p = spawn_process(function()
    local ok, e = pcall(b.wait, b, 5)
    return ok, e
  end)
  conc.sleep(0.1)
  T.eq(b:wait(0.05), false)
  local ok, e = p:join()
  T.eq(ok, false)
  T.ok(e:find("broken barrier", 1, true))
  b:reset()
  T.eq(b:broken(), false)
end)

T.test("barrier across processes", function()
  local b = conc.barrier(3)
  local ps = {}
  for i = 1, 2 do ps[i] = spawn_process(function() return b:wait(5) end) end
  local mine = b:wait(5)
  T.ok(mine)
  for i = 1, 2 do T.ok(ps[i]:join()) end
end)

T.test("waits are cancellation points", function()
  local s, e, b = conc.semaphore(0), conc.event(), conc.barrier(2)
  local ts = {
    spawn_thread(function() s:acquire() end),
    spawn_thread(function() e:wait() end),
    spawn_thread(function() b:wait() end),
  }
  conc.sleep(0.05)
  for _, t in ipairs(ts) do t:cancel() end
  for _, t in ipairs(ts) do T.raises("cancelled", t.join, t) end
end)

T.test("handles cross to threads by reference", function()
  local l = conc.lock()
  local t = spawn_thread(function(x) return x end, l)
  local back = t:join()
  T.ok(back == l)
  l:acquire()
  T.eq(back:locked(), true)
  l:release()
end)

T.test("rlock: reentrant for its owner, exclusive for others", function()
  local r = conc.rlock()
  T.eq(r:acquire(), true)
  T.eq(r:acquire(0), true)
  T.eq(tostring(r), "<rlock locked by me>")
  local t = spawn_thread(function() return r:acquire(0.05), tostring(r) end)
  local got, shown = t:join()
  T.eq(got, false)
  T.eq(shown, "<rlock locked>")
  r:release()
  T.eq(r:locked(), true)                 -- once more to go
  r:release()
  T.eq(r:locked(), false)
  T.raises("release of an rlock it does not own", r.release, r)
  -- another thread may not release it
  r:acquire()
  local t2 = spawn_thread(function() return pcall(r.release, r) end)
  local ok, e = t2:join()
  T.eq(ok, false)
  T.ok(e:find("release of an rlock it does not own", 1, true))
  T.same({r:with(function(a) return r:with(function() return a + 1 end) end, 1)}, {2})
  r:release()
  T.eq(r:locked(), false)
  T.raises("inner", r.with, r, function() error("inner") end)
  T.eq(r:locked(), false)
  T.raises("unknown option 'x'", conc.rlock, {x = 1})
end)

T.test("rlock: across processes, and a dead owner's is taken over", function()
  local r = conc.rlock()
  local s = conc.shared()
  s.n = 0
  local ps = {}
  for i = 1, 3 do
    ps[i] = spawn_process(function()
      for _ = 1, 200 do
        r:with(function() r:with(function() s.n = s.n + 1 end) end)
      end
    end)
  end
  for i = 1, 3 do ps[i]:join() end
  T.eq(s.n, 600)
  local p = spawn_process(function() r:acquire(); r:acquire(); conc.sleep(30) end)
  conc.sleep(0.1)
  p:kill("KILL")
  p:wait()
  T.eq(r:acquire(5), true)
  r:release()
end)

T.test("condition: wait, notify, notify_all, wait_for", function()
  local c = conc.condition()
  T.raises("wait on a condition whose lock is not held", c.wait, c)
  T.raises("notify of a condition whose lock is not held", c.notify, c)
  c:acquire()
  local t0 = conc.now()
  T.eq(c:wait(0.05), false)              -- nobody notifies
  T.ok(conc.now() - t0 >= 0.04)
  c:notify()                             -- nobody waits: nothing
  c:release()
  local s = conc.shared()
  s.ready = 0
  local ts = {}
  for i = 1, 4 do
    ts[i] = spawn_thread(function()
      return c:with(function()
        s.ready = s.ready + 1
        return c:wait(5)
      end)
    end)
  end
  while c:with(function() return s.ready end) < 4 do conc.sleep(0.01) end
  c:with(function() c:notify(1) end)
  conc.sleep(0.1)
  local done = 0
  for i = 1, 4 do if not ts[i]:alive() then done = done + 1 end end
  T.eq(done, 1, "notify(1) wakes one")
  c:with(function() c:notify(2) end)
  conc.sleep(0.1)
  done = 0
  for i = 1, 4 do if not ts[i]:alive() then done = done + 1 end end
  T.eq(done, 3, "notify(2) wakes two more")
  c:with(function() c:notify_all() end)
  for i = 1, 4 do T.eq(ts[i]:join(), true) end
  -- wait_for: the predicate's value, or its last one at the timeout
  s.n = 0
  local t = spawn_thread(function()
    return c:with(function() return c:wait_for(function() return s.n >= 3 and s.n end, 5) end)
  end)
  for _ = 1, 3 do
    conc.sleep(0.01)
    c:with(function() s.n = s.n + 1; c:notify_all() end)
  end
  T.eq(t:join(), 3)
  T.eq(c:with(function() return c:wait_for(function() return false end, 0.03) end), false)
  T.raises("function expected", c.wait_for, c, 1)
end)

T.test("condition: over a lock or an rlock, its depth kept", function()
  local r = conc.rlock()
  local c = conc.condition(r)
  r:acquire(); r:acquire()
  local t = spawn_thread(function()
    local got = r:acquire(5)            -- wait released every level
    c:notify()
    r:release()
    return got
  end)
  T.eq(c:wait(5), true)
  T.eq(t:join(), true)
  r:release()
  T.eq(r:locked(), true)                 -- the depth came back: 2
  r:release()
  T.eq(r:locked(), false)
  local l = conc.lock()
  local c2 = conc.condition(l)
  T.eq(c2:acquire(), true)
  T.eq(l:locked(), true)
  T.eq(c2:wait(0.01), false)
  T.eq(l:locked(), true)
  c2:release()
  T.eq(l:locked(), false)
  T.raises("lock or rlock expected, got number", conc.condition, 5)
  T.raises("lock or rlock expected", conc.condition, conc.event())
  T.raises("release of a condition it does not hold", c2.release, c2)
end)

T.test("condition: across processes; cancel and timeouts lose no notify", function()
  local c = conc.condition()
  local s = conc.shared()
  s.go = false
  local ps = {}
  for i = 1, 2 do
    ps[i] = spawn_process(function()
      return c:with(function() return c:wait_for(function() return s.go end, 5) end)
    end)
  end
  conc.sleep(0.1)
  c:with(function() s.go = true; c:notify_all() end)
  for i = 1, 2 do T.eq(ps[i]:join(), true) end
  -- a cancelled waiter hands its wake-up on
  local a = spawn_thread(function() return c:with(function() return c:wait(5) end) end)
  local b = spawn_thread(function() return c:with(function() return c:wait(5) end) end)
  conc.sleep(0.05)
  a:cancel()
  T.raises("cancelled", a.join, a)
  c:with(function() c:notify() end)
  T.eq(b:join(), true)
  T.eq(tostring(c), "<condition 0 waiting>")
end)

T.test("condition: a notifier that waits next cannot swallow its own notify", function()
  -- ping-pong: each side notifies, then waits for its turn
  local c, s = conc.condition(), conc.shared()
  s.turn = 0
  local function side(me, other, n)
    c:acquire()
    for _ = 1, n do
      while s.turn ~= me do T.ok(c:wait(5), "a lost wake-up") end
      s.turn = other
      c:notify()
    end
    c:release()
    return true
  end
  local t = spawn_thread(side, 1, 0, 2000)
  T.eq(side(0, 1, 2000), true)
  T.eq(t:join(), true)
  T.eq(tostring(c), "<condition 0 waiting>")
end)

T.test("condition: the same ping-pong between processes, over an rlock", function()
  local c, s = conc.condition(conc.rlock()), conc.shared()
  s.turn = 0
  local function side(me, other, n)
    c:acquire()
    for _ = 1, n do
      while s.turn ~= me do
        if not c:wait(5) then error("a lost wake-up") end
      end
      s.turn = other
      c:notify()
    end
    c:release()
    return true
  end
  local p = spawn_process(side, 1, 0, 2000)
  T.eq(side(0, 1, 2000), true)
  T.eq(p:join(), true)
  T.eq(s.turn, 0)
end)

T.done()
