-- conc.channel (docs/reference.md, "Channels"): between the threads of one process.
local T = require "t"

T.test("send and recv in order, values copied", function()
  local ch = conc.channel()
  local t = {1, {2}}
  ch:send(t)
  t[1] = 99
  ch:send("x")
  ch:send(3.5)
  ch:send(false)
  T.eq(ch:len(), 4)
  local got = ch:recv()
  T.eq(got[1], 1)
  T.eq(got[2][1], 2)
  T.ok(got ~= t)
  T.eq(ch:recv(), "x")
  T.eq(ch:recv(), 3.5)
  T.eq(ch:recv(), false)
  T.eq(ch:len(), 0)
end)

T.test("recv timeouts", function()
  local ch = conc.channel()
  local v, why = ch:recv(0)
  T.eq(v, nil)
  T.eq(why, "timeout")
  local t0 = conc.now()
  v, why = ch:recv(0.05)
  T.eq(why, "timeout")
  T.ok(conc.now() - t0 >= 0.05)
  T.raises("timeout must be a non-negative number", ch.recv, ch, -1)
end)

T.test("close: drain, then nil, closed", function()
  local ch = conc.channel()
  ch:send(1)
  ch:send(2)
  ch:close()
  T.eq(ch:recv(), 1)
  T.eq(ch:recv(), 2)
  local v, why = ch:recv()
  T.eq(v, nil)
  T.eq(why, "closed")
  T.raises("send on a closed channel", ch.send, ch, 3)
  ch:close()                            -- closing twice is fine
end)

T.test("close wakes blocked receivers and senders", function()
  local ch = conc.channel()
  local r = spawn_thread(function() return ch:recv() end)
  local full = conc.channel(1)
  full:send("a")
  local s = spawn_thread(function() return pcall(full.send, full, "b") end)
  conc.sleep(0.05)
  ch:close()
  full:close()
  local v, why = r:join()
  T.eq(v, nil)
  T.eq(why, "closed")
  local ok, err = s:join()
  T.eq(ok, false)
  T.ok(err:find("closed", 1, true), err)
  T.eq(full:recv(), "a")                -- what was buffered stays
end)

T.test("nil is refused, bad arguments", function()
  local ch = conc.channel()
  T.raises("bad argument #1 to 'send' (cannot send nil)",
           function() ch:send(nil) end)
  T.raises("bad argument #1 to 'send' (cannot send nil)",
           function() ch:send() end)
  T.raises("capacity must be non-negative", conc.channel, -1)
  T.raises("number has no integer representation", conc.channel, 1.5)
  T.raises("conc.channel expected, got number", ch.send, 5, 1)
  T.raises("conc.channel expected", ch.recv, conc.lock())
  T.raises("number expected", ch.send, ch, 1, "soon")
end)

T.test("a failed send leaves the channel as it was", function()
  local ch = conc.channel(2)
  ch:send(1)
  T.raises("cannot transfer a value of type 'userdata' (value.f)", ch.send, ch,
           {f = io.stdout})
  T.raises("cannot transfer a value of type 'thread' (value)", ch.send, ch,
           coroutine.create(print))
  T.eq(ch:len(), 1)
  T.eq(ch:recv(), 1)
  T.eq(ch:recv(0), nil)
end)

T.test("bounded: send blocks when full, times out", function()
  local ch = conc.channel(2)
  T.eq(ch:send(1), true)
  T.eq(ch:send(2), true)
  T.eq(ch:send(3, 0), false)
  T.eq(ch:send(3, 0.05), false)
  T.eq(ch:len(), 2)
  local t = spawn_thread(function() return ch:send(3) end)
  conc.sleep(0.02)
  T.eq(ch:recv(), 1)
  T.eq(t:join(), true)
  T.eq(ch:recv(), 2)
  T.eq(ch:recv(), 3)
end)

T.test("rendezvous: capacity 0", function()
  local ch = conc.channel(0)
  T.eq(ch:send(1, 0), false)           -- nobody is receiving
  local t = spawn_thread(function() return ch:recv() end)
  T.eq(ch:send("hand", 5), true)
  T.eq(t:join(), "hand")
  local s = spawn_thread(function() return ch:send("back") end)
  T.eq(ch:recv(), "back")
  T.eq(s:join(), true)
end)

T.test("iter ends when closed and drained", function()
  local ch = conc.channel()
  local t = spawn_thread(function()
    for i = 1, 5 do ch:send(i) end
    ch:close()
  end)
  local got = {}
  for v in ch:iter() do got[#got + 1] = v end
  T.same(got, {1, 2, 3, 4, 5})
  t:join()
end)

T.test("handles by reference: the same channel everywhere", function()
  local ch = conc.channel()
  local reply = conc.channel()
  local t = spawn_thread(function(c)
    local back = c:recv()
    back:send("via the channel that came through a channel")
    return c
  end, ch)
  ch:send(reply)
  T.eq(reply:recv(), "via the channel that came through a channel")
  local same = t:join()
  T.ok(same == ch, "handle came back as the same object")
  local keyed = {[ch] = 1}
  T.eq(keyed[same], 1)
  T.eq(rawequal(same, ch), true)
end)

T.test("a channel outlives the state that made it", function()
  local t = spawn_thread(function()
    local c = conc.channel()
    c:send("kept")
    return c
  end)
  local c = t:join()
  T.eq(c:recv(), "kept")
end)

T.test("tostring", function()
  local ch = conc.channel(3)
  ch:send(1)
  T.eq(tostring(ch), "<channel 1/3 queued>")
  T.eq(tostring(conc.channel()), "<channel 0 queued>")
end)

T.test("one producer, one consumer, many messages", function()
  local ch = conc.channel(64)
  local n = 20000
  local p = spawn_thread(function()
    for i = 1, n do ch:send(i) end
    ch:close()
  end)
  local sum, count, last = 0, 0, 0
  for v in ch:iter() do
    T.eq(v, last + 1)
    last = v
    sum = sum + v
    count = count + 1
  end
  p:join()
  T.eq(count, n)
  T.eq(sum, n * (n + 1) // 2)
end)

T.test("many producers, many consumers: nothing lost or doubled", function()
  local ch = conc.channel(16)
  local done = conc.channel()
  local np, nc, per = 4, 4, 2000
  local producers, consumers = {}, {}
  for p = 1, np do
    producers[p] = spawn_thread(function()
      for i = 1, per do ch:send(p * 100000 + i) end
    end)
  end
  for c = 1, nc do
    consumers[c] = spawn_thread(function()
      local seen = {}
      for v in ch:iter() do seen[#seen + 1] = v end
      return seen
    end)
  end
  for p = 1, np do producers[p]:join() end
  ch:close()
  local all = {}
  local count = 0
  for c = 1, nc do
    for _, v in ipairs(consumers[c]:join()) do
      T.ok(not all[v], "duplicate " .. v)
      all[v] = true
      count = count + 1
    end
  end
  T.eq(count, np * per)
  done:close()
end)

T.test("big values", function()
  local ch = conc.channel()
  local big = string.rep("0123456789", 1e6)
  local t = spawn_thread(function() return #ch:recv() end)
  ch:send(big)
  T.eq(t:join(), #big)
  local arr = {}
  for i = 1, 100000 do arr[i] = i end
  ch:send(arr)
  local back = ch:recv()
  T.eq(#back, 100000)
  T.eq(back[99999], 99999)
end)

T.test("recv is a cancellation point and interruptible", function()
  local ch = conc.channel()
  local t = spawn_thread(function() return ch:recv() end)
  conc.sleep(0.02)
  t:cancel()
  T.raises("cancelled", t.join, t)
  ch:send("still works")
  T.eq(ch:recv(), "still works")
end)

T.test("task_done and join (Python's JoinableQueue)", function()
  local ch = conc.channel()
  T.eq(ch:join(), true, "nothing sent: done")
  T.raises("task_done called too many times", ch.task_done, ch)
  for i = 1, 5 do ch:send(i) end
  T.eq(ch:join(0), false)
  T.eq(ch:join(0.02), false)
  local w = spawn_thread(function()
    for _ in ch:iter() do conc.sleep(0.005); ch:task_done() end
  end)
  T.eq(ch:join(5), true)
  T.raises("task_done called too many times", ch.task_done, ch)
  ch:close()
  w:join()
  -- received is not done: join waits for task_done
  local c1 = conc.channel()
  c1:send("x")
  T.eq(c1:recv(), "x")
  local j = spawn_thread(function() return c1:join(5) end)
  conc.sleep(0.05)
  T.eq(j:alive(), true)
  c1:task_done()
  T.eq(j:join(), true)
  -- a send that does not go is not counted
  local full = conc.channel(1)
  full:send(1)
  T.eq(full:send(2, 0), false)
  T.eq(full:send(2, 0.01), false)
  full:recv()
  full:task_done()
  T.eq(full:join(0), true)
  local rv = conc.channel(0)
  T.eq(rv:send("no one", 0.01), false)
  T.eq(rv:join(0), true)
  -- join is a cancellation point
  local c2 = conc.channel()
  c2:send(1)
  local t = spawn_thread(function() return c2:join() end)
  conc.sleep(0.02)
  t:cancel()
  T.raises("cancelled", t.join, t)
  T.raises("non-negative", c2.join, c2, -1)
end)

-- A string of 256 KiB or more sent to a receiver that waits already is
-- copied once, from the sender's bytes (docs/values.md, "Cost").
local function bigstring(n, seed)
  local unit = {}
  for i = 1, 251 do unit[i] = string.char((i * 7 + seed) % 256) end
  local s = table.concat(unit)
  return (s:rep(n // #s + 1)):sub(1, n - 2) .. "<" .. string.char(seed % 256)
end

T.test("big strings arrive whole, to a receiver waiting or not", function()
  local sizes = {256 * 1024 - 1, 256 * 1024, 1024 * 1024 + 3, 4 << 20}
  local ch, ready = conc.channel(), conc.channel()
  local t = spawn_thread(function()
    local got = {}
    for i = 1, #sizes do
      ready:send(i)
      got[i] = ch:recv()                          -- waiting before the send
    end
    for i = 1, #sizes do
      ready:send(i)
      local _, v = conc.select{ch}                -- waiting in a select
      got[#sizes + i] = v
    end
    ready:send("buffered")
    conc.sleep(0.05)
    for i = 1, #sizes do got[2 * #sizes + i] = ch:recv() end
    return got, collectgarbage("isrunning")
  end)
  for i = 1, #sizes do
    ready:recv()
    conc.sleep(0.01)
    T.eq(ch:send(bigstring(sizes[i], i)), true)
  end
  for i = 1, #sizes do
    ready:recv()
    conc.sleep(0.01)
    ch:send(bigstring(sizes[i], 10 + i))
  end
  ready:recv()
  for i = 1, #sizes do ch:send(bigstring(sizes[i], 20 + i)) end
  local got, running = t:join()
  for k = 0, 2 do
    for i = 1, #sizes do
      local want = bigstring(sizes[i], 10 * k + i)
      T.ok(got[k * #sizes + i] == want, "string " .. (k * #sizes + i))
    end
  end
  T.eq(running, true)                             -- the collector goes on
end)

T.test("a big string's receiver keeps a stopped collector stopped", function()
  local ch, ready = conc.channel(), conc.channel()
  local t = spawn_thread(function()
    collectgarbage("stop")
    ready:send(true)
    local v = ch:recv()
    return #v, collectgarbage("isrunning")
  end)
  ready:recv()
  conc.sleep(0.01)
  ch:send(bigstring(1 << 20, 3))
  local n, running = t:join()
  T.eq(n, 1 << 20)
  T.eq(running, false)
end)

T.test("big strings from many senders, to receivers that come and go", function()
  local ch, out = conc.channel(2), conc.channel()
  local senders = {}
  for s = 1, 3 do
    senders[s] = spawn_thread(function()
      for i = 1, 15 do ch:send(bigstring(300000 + s * 1000 + i, s * 31 + i)) end
    end)
  end
  local receivers = {}
  for r = 1, 2 do
    receivers[r] = spawn_thread(function()
      local bad = 0
      for v in ch:iter() do
        local n = #v
        local s, i = (n - 300000) // 1000, (n - 300000) % 1000
        if v ~= bigstring(n, s * 31 + i) then bad = bad + 1 end
        out:send(n)
      end
      return bad
    end)
  end
  for s = 1, 3 do senders[s]:join() end
  ch:close()
  T.eq(receivers[1]:join() + receivers[2]:join(), 0)
  T.eq(out:len(), 45)
end)

T.test("a big string's receiver cancelled meanwhile: the sender goes on", function()
  local big = bigstring(1 << 20, 5)
  for round = 1, 40 do
    local ch, ready = conc.channel(1), conc.channel()
    local t = spawn_thread(function()
      ready:send(true)
      return #ch:recv()
    end)
    ready:recv()
    if round % 2 == 0 then conc.sleep(0.001) end
    t:cancel()
    T.eq(ch:send(big, 5), true)
    local ok, n = pcall(t.join, t)
    T.ok(ok and n == #big or not ok and tostring(n):find("cancelled"),
         tostring(n))
    -- a value the receiver did not take is still there
    if not ok and ch:len() == 1 then T.eq(#ch:recv(), #big) end
  end
end)

T.done()
