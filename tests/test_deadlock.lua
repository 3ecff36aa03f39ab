-- Deadlock detection (docs/reference.md, "Deadlocks"): the classic cases
-- raise "deadlock: ..." in the main thread; the non-cases, in loops, never
-- do.
local T = require "t"
local exe = T.q(T.conclua)

-- Cancels and joins what a deadlock left blocked.
local function clear(...)
  for _, t in ipairs({...}) do
    t:cancel()
    pcall(t.join, t)
  end
end

local function raises_deadlock(f, ...)
  local ok, err = pcall(f, ...)
  T.ok(not ok, "no error")
  T.ok(tostring(err):find("deadlock: main waits on ", 1, true), err)
  return err
end

T.test("main recv on a channel nobody else can send to", function()
  for _ = 1, 3 do
    local ch = conc.channel()
    local err = raises_deadlock(ch.recv, ch)
    T.ok(err:find("deadlock: main waits on recv channel %d+$"), err)
    -- a thread that waits too, on another channel: both are named
    local other = conc.channel()
    local t = spawn_thread({name = "waiter"}, function(c) return c:recv() end, other)
    err = raises_deadlock(ch.recv, ch)
    T.ok(err:find("; thread " .. t.id .. " (waiter) waits on recv channel ", 1, true), err)
    clear(t)
    -- and a send on a rendezvous channel nobody receives from
    local rv = conc.channel(0)
    err = raises_deadlock(rv.send, rv, 1)
    T.ok(err:find("send channel"), err)
  end
end)

T.test("two threads take two locks in opposite order while main joins", function()
  for _ = 1, 3 do
    local a, b = conc.lock(), conc.lock()
    local both = conc.barrier(2)
    local t1 = spawn_thread({name = "ab"}, function() a:acquire() both:wait() b:acquire() end)
    local t2 = spawn_thread({name = "ba"}, function() b:acquire() both:wait() a:acquire() end)
    local err = raises_deadlock(t1.join, t1)
    T.ok(err:find("main waits on join thread " .. t1.id, 1, true), err)
    T.ok(err:find("(ab) waits on lock", 1, true), err)
    T.ok(err:find("(ba) waits on lock", 1, true), err)
    clear(t1, t2)
  end
end)

T.test("a barrier that can never fill", function()
  for _ = 1, 3 do
    local b = conc.barrier(3)
    local t = spawn_thread(function() b:wait() end)
    local err = raises_deadlock(b.wait, b)
    T.ok(err:find("main waits on barrier %d+; thread %d+ %(thread%-%d+%) waits on barrier"), err)
    clear(t)
  end
end)

T.test("a select over channels nobody feeds; a join of a thread stuck on an event", function()
  local c1, c2 = conc.channel(), conc.channel()
  local err = raises_deadlock(conc.select, {c1, c2})
  T.ok(err:find("main waits on select"), err)
  local ev = conc.event()
  local t = spawn_thread(function() ev:wait() end)
  err = raises_deadlock(t.join, t)
  T.ok(err:find("waits on event %d+"), err)
  clear(t)
end)

T.test("not a deadlock: a sender that sends after a sleep", function()
  local ch = conc.channel()
  for i = 1, 200 do
    local t = spawn_thread(function(ch, i) conc.sleep(0.0005) ch:send(i) end, ch, i)
    T.eq(ch:recv(), i)
    t:join()
  end
end)

T.test("not a deadlock: timers", function()
  local ch = conc.channel()
  for _ = 1, 200 do
    local t = spawn_thread(function(ch) return ch:recv(0.001) end, ch)
    T.eq(select(2, ch:recv(0.001)), "timeout")
    T.eq(select(2, t:join()), "timeout")
  end
end)

T.test("not a deadlock: a conc.timer that will send (no thread while it is pending)", function()
  local ch = conc.channel()
  for i = 1, 20 do
    conc.timer(0.4 + i * 0.001, function(ch, i) ch:send(i) end, ch, i)
    T.eq(ch:recv(), i)                  -- main alone, stuck, but a timer waits
  end
  -- and once no timer is pending, the same wait is a deadlock again
  local t = conc.timer(0.05, function() end)
  t:wait()
  conc.sleep(0.1)                         -- its thread has ended
  local ok, e = pcall(ch.recv, ch)
  T.ok(not ok and tostring(e):find("deadlock: ", 1, true), tostring(e))
end)

T.test("not a deadlock: hand-offs between threads, in a loop", function()
  local ping, pong = conc.channel(0), conc.channel(0)
  local l = conc.lock()
  local t = spawn_thread(function(ping, pong, l)
    for v in ping:iter() do
      l:acquire() l:release()
      pong:send(v + 1)
    end
  end, ping, pong, l)
  for i = 1, 2000 do
    ping:send(i)
    l:acquire() l:release()
    T.eq(pong:recv(), i + 1)
  end
  ping:close()
  t:join()
end)

T.test("not a deadlock: a child process that will write, or release a lock", function()
  for _ = 1, 50 do
    local q = conc.queue()
    local p = spawn_process(function(q) conc.sleep(0.002) q:send("hi") end, q)
    T.eq(q:recv(), "hi")
    p:join()
  end
  for _ = 1, 50 do
    local l, ev = conc.lock(), conc.event()
    local p = spawn_process(function(l, ev)
      l:acquire() ev:set() conc.sleep(0.002) l:release()
    end, l, ev)
    ev:wait(5)
    -- main joins a thread stuck on the lock: the child is alive, it will let go
    local t = spawn_thread(function(l) l:acquire() l:release() return "got" end, l)
    T.eq(t:join(), "got")
    p:join()
  end
end)

T.test("not a deadlock: a lock that a dead child process held is taken over", function()
  for _ = 1, 30 do
    local l = conc.lock()
    spawn_process(function(l) l:acquire() end, l):join()
    local t = spawn_thread(function(l) l:acquire() l:release() return "took over" end, l)
    T.eq(t:join(), "took over")
  end
end)

T.test("not a deadlock: a worker inside os.execute", function()
  local ch = conc.channel()
  for _ = 1, 30 do
    local t = spawn_thread(function(ch) os.execute("sleep 0.01") ch:send("done") end, ch)
    T.eq(ch:recv(), "done")
    t:join()
  end
end)

T.test("not a deadlock: a cancel before the join", function()
  for _ = 1, 200 do
    local ch = conc.channel()
    local t = spawn_thread(function(ch) ch:recv() end, ch)
    t:cancel()
    T.ok(not pcall(t.join, t))
  end
end)

T.test("an uncaught deadlock ends the script; one at exit is told and stopped", function()
  local s = T.tmpfile([[
    local ch = conc.channel()
    spawn_thread(function() conc.channel():recv() end)
    ch:recv()
  ]])
  local t0 = conc.now()
  local out, code = T.sh(exe .. " " .. s .. " </dev/null")
  T.eq(code, 1, out)
  T.ok(out:find(":3: deadlock: main waits on recv channel %d+; thread 1 %(thread%-1%) waits on recv channel %d+"), out)
  T.ok(conc.now() - t0 < 10, "it ended")
  os.remove(s)
  -- a worker iterates over a channel that the script forgets to close
  s = T.tmpfile([[
    local ch = conc.channel()
    spawn_thread({name = "consumer"}, function() for v in ch:iter() do end end)
    ch:send(1)
    print("main done")
  ]])
  out, code = T.sh(exe .. " " .. s .. " </dev/null")
  T.ok(out:find("main done", 1, true), out)
  T.ok(out:find("conclua: at exit, deadlock: main waits on join thread 1; thread 1 %(consumer%) waits on recv channel %d+: the threads are cancelled"), out)
  os.remove(s)
end)

T.done()
