-- conc.shared (docs/reference.md, "Shared tables"): a table every thread sees, and every
-- process forked after it was made.
local T = require "t"

T.test("store and read copies", function()
  local s = conc.shared()
  local t = {1, 2}
  s.k = t
  t[1] = 99
  T.eq(s.k[1], 1)
  T.ok(s.k ~= s.k, "each read is a fresh copy")
  s[1] = "one"
  s[2.0] = "two"
  s[true] = "yes"
  T.eq(s[1], "one")
  T.eq(s[2], "two")
  T.eq(s[true], "yes")
  s.k = nil
  T.eq(s.k, nil)
  T.raises("keys must be strings, numbers or booleans", function() s[{}] = 1 end)
  T.raises("NaN", function() s[0/0] = 1 end)
  T.raises("cannot transfer a value of type 'userdata' (value)", function()
    s.x = io.stdout
  end)
end)

T.test("seen by every thread", function()
  local s = conc.shared()
  s.greeting = "hello"
  local t = spawn_thread(function(sh)
    local g = sh.greeting
    sh.reply = g .. " back"
    return g
  end, s)
  T.eq(t:join(), "hello")
  T.eq(s.reply, "hello back")
end)

T.test("pairs and #", function()
  local s = conc.shared()
  for i = 1, 5 do s[i] = i * i end
  s.name = "x"
  T.eq(#s, 5)
  local keys = 0
  for k, v in pairs(s) do
    keys = keys + 1
    if k == "name" then T.eq(v, "x") else T.eq(v, k * k) end
  end
  T.eq(keys, 6)
  s[3] = nil
  T.eq(#s, 2)
  T.eq(tostring(s), "<shared 5 keys>")
end)

T.test("tostring counts keys in words", function()
  local s = conc.shared()
  T.eq(tostring(s), "<shared 0 keys>")
  s.a = 1
  T.eq(tostring(s), "<shared 1 key>")
  s.b = 2
  T.eq(tostring(s), "<shared 2 keys>")
  s.a, s.b = nil, nil
  T.eq(tostring(s), "<shared 0 keys>")
end)

T.test("incr is atomic", function()
  local s = conc.shared()
  local ts = {}
  for i = 1, 4 do
    ts[i] = spawn_thread(function() for _ = 1, 2000 do s:incr("n") end end)
  end
  for i = 1, 4 do ts[i]:join() end
  T.eq(s.n, 8000)
  T.eq(s:incr("n", 5), 8005)
  T.eq(s:incr("f", 0.5), 0.5)
  T.eq(math.type(s.n), "integer")
  s.str = "x"
  T.raises("value is not a number", s.incr, s, "str")
  T.raises("number expected", s.incr, s, "n", "x")
end)

T.test("update is an atomic read-modify-write", function()
  local s = conc.shared()
  s.list = {}
  local ts = {}
  for i = 1, 4 do
    ts[i] = spawn_thread(function()
      for j = 1, 100 do
        s:update("list", function(l) l[#l + 1] = i * 1000 + j return l end)
      end
    end)
  end
  for i = 1, 4 do ts[i]:join() end
  T.eq(#s.list, 400)
  T.eq(s:update("new", function(old) T.eq(old, nil) return 7 end), 7)
  T.eq(s.new, 7)
end)

T.test("an error in update leaves the old value", function()
  local s = conc.shared()
  s.v = 1
  T.raises("nope", s.update, s, "v", function() error("nope") end)
  T.eq(s.v, 1)
  T.raises("cannot transfer", s.update, s, "v", function() return io.stdout end)
  T.eq(s.v, 1)
  s:update("v", function() return nil end)
  T.eq(s.v, nil)
end)

T.test("changing a key inside its own update is an error, not a hang", function()
  local s = conc.shared()
  s.x = 1
  T.raises("cannot be changed inside its own update", s.update, s, "x",
           function(v) s.x = 5 return v + 1 end)
  T.raises("cannot be changed inside its own update", s.update, s, "x",
           function(v) s:incr("x") return v end)
  T.eq(s.x, 1)
  T.eq(s:update("x", function(v) s.y = v return v * 10 end), 10)
  T.eq(s.y, 1)
end)

T.test("a writer waiting for an update can be cancelled", function()
  local s, inside, go = conc.shared(), conc.event(), conc.event()
  s.k = 1
  local u = spawn_thread(function()
    return s:update("k", function(v) inside:set() go:wait() return v + 1 end)
  end)
  T.eq(inside:wait(10), true)
  local w = spawn_thread(function() s.k = 100 end)
  local t0 = conc.now()
  while conc.now() - t0 < 10 do
    local busy
    for _, x in ipairs(conc.workers()) do
      if x.id == w.id and x.waiting_on == "shared" then busy = true end
    end
    if busy then break end
    conc.sleep(0.01)
  end
  T.eq(w:cancel(), true)
  T.raises("cancelled", w.join, w)
  go:set()
  T.eq(u:join(), 2)
  T.eq(s.k, 2, "the cancelled write never happened")
end)

-- ------------------------------------------------------------ processes

T.test("four processes each incr 1000 times: 4000", function()
  local s = conc.shared()
  local ps = {}
  for i = 1, 4 do
    ps[i] = spawn_process(function() for _ = 1, 1000 do s:incr("n") end end)
  end
  for i = 1, 4 do ps[i]:join() end
  T.eq(s.n, 4000)
  T.eq(math.type(s.n), "integer")
end)

T.test("processes and threads see each other's writes, pairs and #", function()
  local s = conc.shared()
  s.from_parent = {1, 2, {deep = "x"}}
  local p = spawn_process(function()
    local seen = s.from_parent[3].deep
    for i = 1, 10 do s[i] = i * i end
    s.from_child = "c"
    s.from_parent = nil
    return seen
  end)
  T.eq(p:join(), "x")
  T.eq(s.from_child, "c")
  T.eq(s.from_parent, nil)
  T.eq(#s, 10)
  local t = spawn_thread(function()
    local n = 0
    for k, v in pairs(s) do n = n + 1 end
    return n, #s
  end)
  T.same({t:join()}, {11, 10})
  -- a sibling forked later sees it all too
  local q = spawn_process(function()
    local keys = 0
    for _ in pairs(s) do keys = keys + 1 end
    return keys, s[7], tostring(s)
  end)
  T.same({q:join()}, {11, 49, "<shared 11 keys>"})
end)

T.test("update is atomic across processes and threads", function()
  local s = conc.shared()
  s.list = {}
  local ws = {}
  for i = 1, 3 do
    ws[#ws + 1] = spawn_process(function()
      for j = 1, 40 do
        s:update("list", function(l) l[#l + 1] = i * 100 + j return l end)
      end
    end)
    ws[#ws + 1] = spawn_thread(function()
      for j = 1, 40 do
        s:update("list", function(l) l[#l + 1] = -(i * 100 + j) return l end)
      end
    end)
  end
  for _, w in ipairs(ws) do w:join() end
  local l, seen = s.list, {}
  T.eq(#l, 240)
  for _, v in ipairs(l) do
    T.ok(not seen[v], "no update lost or doubled")
    seen[v] = true
  end
end)

T.test("incr from threads and processes at once", function()
  local s = conc.shared()
  local ws = {}
  for i = 1, 2 do
    ws[#ws + 1] = spawn_process(function() for _ = 1, 2000 do s:incr("n") s:incr("f", 0.5) end end)
    ws[#ws + 1] = spawn_thread(function() for _ = 1, 2000 do s:incr("n") s:incr("f", 0.5) end end)
  end
  for _, w in ipairs(ws) do w:join() end
  T.eq(s.n, 8000)
  T.eq(s.f, 4000.0)
end)

T.test("a process killed inside an update does not hold the key", function()
  local s, inside = conc.shared(), conc.event()
  s.k = "old"
  local p = spawn_process(function()
    s:update("k", function(v) inside:set() conc.sleep(60) return "new" end)
  end)
  T.eq(inside:wait(10), true)
  T.eq(s.k, "old", "readers see the old value meanwhile")
  p:kill("KILL")
  T.raises("killed by signal 9", p.join, p)
  local t0 = conc.now()
  s.k = "after"                    -- waits for the dead update no longer
  T.ok(conc.now() - t0 < 5, "taken over from the dead update")
  T.eq(s.k, "after")
  T.eq(s:incr("other"), 1)
  -- an update of a key that did not exist: the placeholder goes too
  inside:clear()                   -- before the child can set it
  local q = spawn_process(function()
    s:update("fresh", function() inside:set() conc.sleep(60) return 1 end)
  end)
  T.eq(inside:wait(10), true)
  q:kill("KILL")
  T.raises("killed by signal 9", q.join, q)
  T.eq(s:update("fresh", function(v) return (v or 0) + 10 end), 10)
  T.eq(tostring(s), "<shared 3 keys>")
  -- and other processes update it as before
  spawn_process(function() s:update("k", function(v) return v .. "+" end) end):join()
  T.eq(s.k, "after+")
end)

T.test("processes killed while writing leave the table whole", function()
  -- children rewrite big values (long copies under the table's lock) and
  -- are killed at random moments; after each kill the table must read
  -- whole, and stay usable. A kill that caught a child holding the lock
  -- shows as a take-over (the next access waits for the owner check).
  local s = conc.shared()
  local big = 2 * 1024 * 1024
  local rounds = 8
  local recovered = conc._stats().shared_recoveries
  for round = 1, rounds do
    local started = conc.event()
    local p = spawn_process(function()
      local vals = {}
      for j = 0, 3 do
        local c = string.char(65 + (round + j) % 26)
        vals[j] = {c = c, data = string.rep(c, big + j)}
      end
      started:set()
      local i = 0
      while true do
        i = i + 1
        s["v" .. i % 4] = vals[i % 4]
        s:incr("writes")
      end
    end)
    T.eq(started:wait(10), true)
    conc.sleep(0.02 + math.random() * 0.05)
    p:kill("KILL")
    T.raises("killed by signal 9", p.join, p)
    local n = 0
    for k, v in pairs(s) do
      n = n + 1
      if k ~= "writes" then
        T.eq(#v.data >= big, true, "whole value")
        T.eq(v.data, string.rep(v.c, #v.data), "no torn value")
      end
    end
    T.eq(tostring(s), "<shared " .. n .. " key" .. (n == 1 and ">" or "s>"))
    s.after = round
    T.eq(s.after, round)
    s.after = nil
  end
  T.ok(s.writes > 0)
  -- the table was rebuilt after some of those deaths (each kill had about
  -- even odds to catch the child copying under the lock)
  T.ok(conc._stats().shared_recoveries > recovered, "a death under the lock was seen")
end)

T.test("a value naming a channel is read where the channel lives", function()
  local s = conc.shared()
  local ch, lock = conc.channel(), conc.lock()
  s.both = {ch = ch, lock = lock}
  local t = spawn_thread(function()
    local v = s.both
    v.ch:send("via the table")
    return v.lock == lock
  end)
  T.eq(t:join(), true)
  T.eq(ch:recv(0), "via the table")
  T.ok(s.both.ch == ch, "the same channel")
  local p = spawn_process(function()
    local ok1, e1 = pcall(function() return s.both end)
    local ok2, e2 = pcall(pairs, s)
    s.lock = lock                 -- a lock crosses: shared memory
    return ok1, e1, ok2, e2, s.lock == lock
  end)
  local ok1, e1, ok2, e2, same = p:join()
  T.eq(ok1, false)
  T.ok(e1:find("channel %d+ belongs to another process"), e1)
  T.eq(ok2, false)
  T.ok(e2:find("belongs to another process"), e2)
  T.eq(same, true)
  T.ok(s.lock == lock, "the parent reads the child's lock as its own")
  -- a child's own channel does not reach the parent either
  local q = spawn_process(function() s.mine = conc.channel() end)
  q:join()
  T.raises("belongs to another process", function() return s.mine end)
  s.mine = nil                    -- but it can be removed
  s.both = nil
  collectgarbage()
end)

T.test("objects a table holds are let go: removed elsewhere, or the table gone", function()
  -- pipe ends hold fds: the harness's leak check after the test sees any
  -- end the table kept
  local s = conc.shared()
  local a, b = conc.pipe()
  s.p = a
  a = nil
  b:close()
  collectgarbage()
  T.ok(s.p ~= nil, "the table keeps the end alive")
  spawn_process(function() s.p = nil end):join()   -- removed by another process
  T.eq(s.p, nil)                                     -- (this access releases it)
  local c, d = conc.pipe()
  s.q = {c, d}
  c, d = nil, nil
  s.q[1]:close()
  s.q[2]:close()
  s = nil                                            -- the table goes: so do they
  collectgarbage()
  collectgarbage()
end)

T.test("a shared table crosses queues and pipes to processes", function()
  local s, q = conc.shared(), conc.queue()
  local p = spawn_process(function()
    q:send(s)                     -- made before the fork: the same table
    local other = conc.shared()
    other.x = 1
    q:send(other)                 -- made in the child: the parent cannot
  end)
  local back = q:recv(10)
  T.ok(back == s, "the same table")
  back.k = "v"
  T.eq(s.k, "v")
  T.raises("made by another process", q.recv, q, 10)
  p:join()
end)

-- Shared memory this process has mapped in, in KB (sanitizers' shadow
-- memory is not in it).
local function shmem_kb()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^RssShmem:%s*(%d+)")
    if kb then return tonumber(kb) end
  end
  error("no RssShmem in /proc/self/status")
end

T.test("big values, many keys, memory given back", function()
  local s = conc.shared()
  local mb = string.rep("m", 8 * 1024 * 1024)
  s.big = mb
  T.eq(spawn_process(function() return #s.big, s.big == mb end):join(), #mb)
  T.eq(s.big, mb)
  s.big = nil
  local rss0 = shmem_kb()
  local n = 20000
  local chunk = string.rep("x", 1000)
  for i = 1, n do s[i] = chunk .. i end
  T.eq(#s, n)
  T.eq(s[12345], chunk .. 12345)
  local p = spawn_process(function()
    local c = 0
    for k, v in pairs(s) do if v == chunk .. k then c = c + 1 end end
    return c, #s
  end)
  T.same({p:join()}, {n, n})
  local rss1 = shmem_kb()
  T.ok(rss1 - rss0 > 20000, "the values take memory: " .. (rss1 - rss0) .. " KB")
  for i = n, 1, -1 do s[i] = nil end
  T.eq(#s, 0)
  T.eq(tostring(s), "<shared 0 keys>")
  local rss2 = shmem_kb()
  T.ok(rss2 - rss0 < (rss1 - rss0) / 4,
       string.format("memory given back: %d KB of %d KB kept", rss2 - rss0, rss1 - rss0))
  s.again = 1
  T.eq(s.again, 1)
end)

T.test("keys of every kind across processes", function()
  local s = conc.shared()
  local long = string.rep("k", 300)
  spawn_process(function() s[long], s[2.5], s[false], s[-7], s[2] = 1, 2, 3, 4, 5 end):join()
  T.same({s[long], s[2.5], s[false], s[-7], s[2.0]}, {1, 2, 3, 4, 5})
  local keys = {}
  for k in pairs(s) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  T.same(keys, {"-7", "2", "2.5", "false", long})
end)

T.test("a program as a user writes it: word counts from a process pool", function()
  -- Python's Manager().dict() pattern: workers put results in a shared
  -- table, the parent watches progress and reads the totals
  local pool = require "conc.pool"
  local counts, progress = conc.shared(), conc.shared()
  local texts = {}
  for i = 1, 40 do
    texts[i] = string.rep("the quick brown fox ", i % 5 + 1) .. "jumps " .. i
  end
  local p = pool.processes(2)
  local done = p:map(function(text)
    for w in text:gmatch("%a+") do counts:incr(w) end
    progress:incr("texts")
    return true
  end, texts)
  p:close()
  T.eq(#done, 40)
  T.eq(progress.texts, 40)
  local want = {}
  for _, text in ipairs(texts) do
    for w in text:gmatch("%a+") do want[w] = (want[w] or 0) + 1 end
  end
  local got = {}
  for w, n in pairs(counts) do got[w] = n end
  T.same(got, want)
  T.eq(tostring(counts), "<shared 5 keys>")
end)

T.test("bad arguments", function()
  local s = conc.shared()
  T.raises("unknown option 'size'", conc.shared, {size = 10})
  T.raises("table expected", conc.shared, 5)
  T.raises("function expected", s.update, s, "k", 1)
  T.raises("keys must be strings, numbers or booleans", s.incr, s, {})
  T.raises("shared expected", s.incr, 5, "k")
end)

T.done()
