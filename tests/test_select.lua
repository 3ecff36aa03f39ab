-- conc.select (docs/reference.md, "select"): the first ready of channels, pipe ends,
-- queues and worker handles.
local T = require "t"

T.test("the first ready channel, its value taken", function()
  local a, b = conc.channel(), conc.channel()
  b:send("from b")
  local item, v = conc.select({a, b})
  T.ok(item == b)
  T.eq(v, "from b")
  T.eq(b:len(), 0)
end)

T.test("of several ready items the first wins; the rest are still checked", function()
  local a, b, c = conc.channel(), conc.channel(), conc.channel()
  b:send("b1") c:send("c1") a:send("a1")
  local item, v = conc.select({a, b, c})
  T.ok(item == a) T.eq(v, "a1")
  item, v = conc.select({a, b, c})
  T.ok(item == b) T.eq(v, "b1")
  -- before a thread handle (no lock-free look), a ready channel still wins
  local t = spawn_thread(function() return 1 end)
  t:join()
  item, v = conc.select({a, c, t})
  T.ok(item == c) T.eq(v, "c1")
  item, v = conc.select({a, t, b})
  T.ok(item == t) T.eq(v, true)
  -- a bad item after a ready one raises all the same, and takes nothing
  b:send("b2")
  T.raises("item 2 is a number", conc.select, {b, 42})
  T.eq(b:len(), 1)
  T.eq(b:recv(), "b2")
  -- values sent to the items not taken stay where they are
  a:send("a2") c:send("c2")
  item = conc.select({a, c})
  T.ok(item == a) T.eq(c:recv(), "c2")
end)

T.test("waits for a sender", function()
  local a, b = conc.channel(), conc.channel()
  local t = spawn_thread(function() conc.sleep(0.05) a:send(42) end)
  local item, v = conc.select({a, b}, 5)
  T.ok(item == a)
  T.eq(v, 42)
  t:join()
end)

T.test("timeout and closed", function()
  local a, b = conc.channel(), conc.channel()
  local item, why = conc.select({a, b}, 0.05)
  T.eq(item, nil)
  T.eq(why, "timeout")
  item, why = conc.select({a, b}, 0)
  T.eq(why, "timeout")
  a:close()
  b:close()
  item, why = conc.select({a, b})
  T.eq(item, nil)
  T.eq(why, "closed")
  -- closing while waiting
  local c, d = conc.channel(), conc.channel()
  local t = spawn_thread(function() conc.sleep(0.05) c:close() d:close() end)
  item, why = conc.select({c, d}, 5)
  T.eq(why, "closed")
  t:join()
end)

T.test("a closed channel does not hide a live one", function()
  local a, b = conc.channel(), conc.channel()
  a:close()
  local t = spawn_thread(function() conc.sleep(0.05) b:send("live") end)
  local item, v = conc.select({a, b}, 5)
  T.ok(item == b)
  T.eq(v, "live")
  t:join()
end)

T.test("finished threads and processes are ready with true", function()
  local t = spawn_thread(function() conc.sleep(0.05) return 1 end)
  local ch = conc.channel()
  local item, v = conc.select({ch, t}, 5)
  T.ok(item == t)
  T.eq(v, true)
  T.eq(t:join(), 1)
  local p = spawn_process(function() conc.sleep(0.05) end)
  item, v = conc.select({ch, p}, 5)
  T.ok(item == p)
  T.eq(v, true)
  p:join()
  item, v = conc.select({p})          -- stays ready
  T.ok(item == p)
end)

T.test("each value goes to exactly one select", function()
  local ch = conc.channel()
  local other = conc.channel()
  local n = 400
  local takers = {}
  for i = 1, 4 do
    takers[i] = spawn_thread(function()
      local got = {}
      while true do
        local item, v = conc.select({ch, other}, 2)
        if item == nil or v == "stop" then break end
        got[#got + 1] = v
      end
      return got
    end)
  end
  for i = 1, n do ch:send(i) end
  for i = 1, 4 do other:send("stop") end
  local seen, count = {}, 0
  for i = 1, 4 do
    for _, v in ipairs(takers[i]:join()) do
      T.ok(not seen[v], "twice: " .. v)
      seen[v] = true
      count = count + 1
    end
  end
  T.eq(count, n)
end)

T.test("pipe ends and queues", function()
  local a, b = conc.pipe()
  local q = conc.queue()
  local ch = conc.channel()
  local p = spawn_process(function() conc.sleep(0.05) b:send("pipe") end)
  local item, v = conc.select({ch, a, q}, 5)
  T.ok(item == a)
  T.eq(v, "pipe")
  p:join()
  local p2 = spawn_process(function() conc.sleep(0.05) q:send("queue") end)
  item, v = conc.select({ch, a, q}, 5)
  T.ok(item == q)
  T.eq(v, "queue")
  p2:join()
  a:close()
  b:close()
end)

T.test("an item with __select stands for the object it names", function()
  local ch = conc.channel()
  local item = setmetatable({}, {__select = function(self) return ch end})
  spawn_thread(function() conc.sleep(0.05) ch:send("late") end)
  local got, v = conc.select({conc.channel(), item}, 5)
  T.ok(got == item, "the item itself is returned")
  T.eq(v, "late")
  local odd = setmetatable({}, {__select = function() return 5 end})
  T.raises("item 1 is a number", conc.select, {odd})
  local bad = setmetatable({}, {__select = function() error("no object") end})
  T.raises("no object", conc.select, {bad})
end)

T.test("bad lists", function()
  T.raises("empty list", conc.select, {})
  T.raises("table expected", conc.select, conc.channel())
  T.raises("item 2 is a number", conc.select, {conc.channel(), 5})
  T.raises("item 1 is a conc.lock", conc.select, {conc.lock()})
  T.raises("timeout must be a non-negative number", conc.select,
           {conc.channel()}, -2)
end)

T.test("select is a cancellation point", function()
  local t = spawn_thread(function() return conc.select({conc.channel()}) end)
  conc.sleep(0.02)
  t:cancel()
  T.raises("cancelled", t.join, t)
end)

T.test("many items", function()
  local chans = {}
  for i = 1, 50 do chans[i] = conc.channel() end
  chans[37]:send("thirty-seven")
  local item, v = conc.select(chans)
  T.ok(item == chans[37])
  T.eq(v, "thirty-seven")
end)

T.done()
