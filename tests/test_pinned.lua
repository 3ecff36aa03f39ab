-- Objects pinned to their process (docs/reference.md, "Conventions": objects pinned to their process): a channel, a
-- thread or process handle, a pool or a future used in a forked child
-- raise "<kind> <id> belongs to another process" at once.
local T = require "t"
local pool = require "conc.pool"

-- Runs fn in a forked child; its results, which must come within 20 s.
local function in_child(fn, ...)
  local p = spawn_process(fn, ...)
  T.ok(p:wait(20), "the child finished at once")
  return p:join()
end

-- The message of the error fn(...) raises, or "no error".
local function why(fn, ...)
  local ok, err = pcall(fn, ...)
  return ok and "no error" or tostring(err)
end

T.test("a parent's channel used in a child raises at once", function()
  local ch = conc.channel()
  ch:send("kept")
  local t0 = conc.now()
  local r = table.pack(in_child(function()
    return why(ch.recv, ch), why(ch.send, ch, 1), why(ch.len, ch), why(ch.close, ch),
           why(ch.iter, ch), tostring(ch), why(ch.recv, ch, 0)
  end))
  T.ok(conc.now() - t0 < 20, "no wait")
  for i = 1, 5 do
    T.ok(r[i]:find("channel %d+ belongs to another process"), r[i])
    T.ok(not r[i]:find("conclua stdlib", 1, true), r[i])
  end
  T.ok(r[6]:find("^<channel %d+ of process %d+>$"), r[6])
  T.ok(r[7]:find("belongs to another process", 1, true), r[7])
  T.eq(ch:recv(0), "kept", "the parent's channel is as it was")
  ch:send(2)
  T.eq(ch:recv(0), 2)
end)

T.test("thread and process handles of the parent, in a child", function()
  local ev = conc.event()
  local t = spawn_thread(function() ev:wait(30) return "t" end)
  local sib = spawn_process(function() ev:wait(30) return "sib" end)
  local r = table.pack(in_child(function()
    return why(t.join, t), why(t.wait, t, 0), why(t.status, t), why(t.cancel, t),
           why(function() return t.name end), why(sib.join, sib), why(sib.kill, sib),
           why(sib.status, sib), why(sib.exitcode, sib), tostring(t)
  end))
  for i = 1, 5 do
    T.ok(r[i]:find("thread " .. t.id .. " belongs to another process", 1, true), r[i])
  end
  for i = 6, 9 do
    T.ok(r[i]:find("process " .. sib.pid .. " belongs to another process", 1, true), r[i])
  end
  T.ok(r[10]:find("^<thread %d+ of process %d+>$"), r[10])
  ev:set()
  T.eq(t:join(), "t")
  T.eq(sib:join(), "sib")
end)

T.test("a parent's pool and futures, in a child", function()
  for _, kind in ipairs({"threads", "processes"}) do
    local p = pool[kind](1)
    local f = p:submit(function() return 42 end)
    T.eq(f:result(30), 42)
    local r = table.pack(in_child(function()
      return why(p.map, p, print, {1}), why(p.submit, p, print), why(p.close, p),
             why(function() return p.n end), why(f.result, f), why(f.wait, f),
             why(f.done, f), why(p.terminate, p), why(pool.as_completed, {f})
    end))
    for i = 1, 4 do
      T.ok(r[i]:find("pool %d+ belongs to another process"), r[i])
      T.ok(not r[i]:find("conclua stdlib", 1, true), r[i])
    end
    for i = 5, 7 do T.ok(r[i]:find("future %d+ belongs to another process"), r[i]) end
    T.ok(r[9]:find("item 1 is future %d+, which belongs to another process"), r[9])
    T.ok(r[8]:find("pool %d+ belongs to another process"), r[8])
    -- the child's copies went away with it; the pool is the parent's still
    T.eq(p:submit(function() return "after" end):result(30), "after")
    T.same(p:map(function(x) return x * 2 end, {1, 2}), {2, 4, n = 2})
    p:close()
  end
end)

T.test("select, send and the encoder refuse a parent's objects in a child", function()
  local ch = conc.channel()
  local r = table.pack(in_child(function()
    local mine = conc.channel()
    local sel = why(conc.select, {mine, ch}, 0)
    local sent = why(mine.send, mine, {inner = ch})
    mine:send("own")                       -- the child's own channel works
    return sel, sent, mine:recv(0)
  end))
  T.ok(r[1]:find("item 2: channel %d+ belongs to another process"), r[1])
  T.ok(r[2]:find("cannot transfer a value of type 'conc.channel' (value.inner): channel ", 1, true), r[2])
  T.ok(r[2]:find("channel %d+ belongs to another process"), r[2])
  T.eq(r[3], "own")
end)

T.test("a child collects the parent's handles without harm", function()
  local ch = conc.channel()
  for i = 1, 3 do ch:send(i) end
  local p = pool.threads(1)
  local f = p:submit(function() return 1 end)
  f:wait(30)
  in_child(function()
    ch, p, f = nil, nil, nil
    collectgarbage()
    collectgarbage()
    return true
  end)
  T.eq(ch:len(), 3)
  T.eq(p:submit(function() return "alive" end):result(30), "alive")
  p:close()
end)

T.test("objects shared by memory still work in a child", function()
  local q, lock = conc.queue(), conc.lock()
  T.eq(in_child(function()
    lock:acquire()
    q:send("from child")
    lock:release()
    return true
  end), true)
  T.eq(q:recv(5), "from child")
end)

T.test("a grandchild: the objects of its own parent are foreign too", function()
  local out = in_child(function()
    local ch = conc.channel()
    local p = spawn_process(function() return pcall(ch.len, ch) end)
    local ok, err = p:join()
    return tostring(ok) .. " " .. tostring(err)
  end)
  T.ok(out:find("^false .*channel %d+ belongs to another process"), out)
end)

T.done()
