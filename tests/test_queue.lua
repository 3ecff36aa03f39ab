-- conc.queue (docs/reference.md, "Queues"): many producers and consumers, processes
-- and threads.
local T = require "t"

T.test("FIFO within a process", function()
  local q = conc.queue()
  for i = 1, 10 do q:send(i) end
  T.eq(q:len(), 10)
  for i = 1, 10 do T.eq(q:recv(), i) end
  T.eq(select(2, q:recv(0)), "timeout")
  T.eq(tostring(q), "<queue 0 queued>")
end)

T.test("many producer processes, many consumers: whole and once", function()
  local q = conc.queue()
  local out = conc.queue()
  local np, per = 3, 300
  local producers, consumers = {}, {}
  for k = 1, np do
    producers[k] = spawn_process(function()
      for i = 1, per do q:send({k = k, i = i, pad = string.rep("p", (i * 37) % 5000)}) end
    end)
  end
  for c = 1, 2 do
    consumers[c] = spawn_process(function()
      local n = 0
      while true do
        local m = q:recv(5)
        if m == nil or m == "stop" then break end
        T.eq(#m.pad, (m.i * 37) % 5000)
        out:send(m.k * 100000 + m.i)
        n = n + 1
      end
      return n
    end)
  end
  for k = 1, np do producers[k]:join() end
  q:send("stop")
  q:send("stop")
  local total = consumers[1]:join() + consumers[2]:join()
  T.eq(total, np * per)
  local seen = {}
  for _ = 1, total do
    local v = out:recv(5)
    T.ok(not seen[v], "twice")
    seen[v] = true
  end
end)

T.test("messages far beyond PIPE_BUF", function()
  local q = conc.queue()
  local sizes = {5000, 70000, 3 * 1024 * 1024}
  local ps = {}
  for i, n in ipairs(sizes) do
    ps[i] = spawn_process(function() q:send(string.rep(string.char(64 + i), n)) end)
  end
  local got = {}
  for _ = 1, #sizes do
    local s = q:recv(10)
    T.eq(s, string.rep(s:sub(1, 1), #s))
    got[#s] = true
  end
  for i = 1, #sizes do ps[i]:join() T.ok(got[sizes[i]]) end
end)

T.test("a queue emptied again and again (it starts over at its front) keeps every message whole and in order", function()
  -- each round: a few messages of mixed sizes (one of them big enough to
  -- give its pages back at once), then, every other round, the producer
  -- waits until the queue is empty, which moves the ring's start
  local q, ack = conc.queue(), conc.queue()
  local rounds = 150
  local function body(r, i) return string.rep(string.char(65 + (r + i) % 26), (r * 131 + i * 977) % 9000) end
  local p = spawn_process(function()
    for r = 1, rounds do
      for i = 1, 4 do q:send({r = r, i = i, s = body(r, i)}) end
      if r % 10 == 0 then q:send({r = r, i = 5, s = string.rep("B", 80000)}) end
      if r % 2 == 0 then ack:recv(10) end
    end
  end)
  local last = 0
  for r = 1, rounds do
    for i = 1, r % 10 == 0 and 5 or 4 do
      local m = q:recv(10)
      T.eq(m.r * 10 + m.i, r * 10 + i)
      T.ok(m.s == (i == 5 and string.rep("B", 80000) or body(r, i)), "message " .. r .. "." .. i .. " is whole")
      last = last + 1
    end
    if r % 2 == 0 then T.eq(q:len(), 0) ack:send(true) end
  end
  p:join()
  T.eq(last, rounds * 4 + rounds // 10)
  T.eq(select(2, q:recv(0)), "timeout")
end)

T.test("a queue that carries far more than it holds gives its pages back", function()
  -- 600 MB of 1 KiB messages, the consumer falling behind now and then so
  -- that the queue seldom empties: what stays resident is a few hundred
  -- KB (the ring's first pages and those near the head), not pages left
  -- behind by each give-back
  local function shmem_kb()
    for l in io.lines("/proc/self/status") do
      local v = l:match("^RssShmem:%s+(%d+)")
      if v then return tonumber(v) end
    end
  end
  local kb0 = shmem_kb()
  local q = conc.queue()
  local p = spawn_process(function()
    local msg = string.rep("x", 1000)
    for i = 1, 600000 do q:send(msg .. string.rep("y", i % 40)) end
  end)
  for i = 1, 600000 do
    q:recv(10)
    if i % 2000 == 0 then conc.sleep(0.002) end
  end
  p:join()
  local kept = shmem_kb() - kb0
  T.ok(kept < 1500, "resident after 600 MB went through: " .. kept .. " KB")
end)

T.test("a stream the consumer keeps up with, falls behind on and catches up with: whole and in order", function()
  -- a consumer that keeps up lets the ring go back to its start while the
  -- last messages are still queued; one that falls behind makes that run
  -- into them and go on past them; big messages come in between
  local n = 30000
  local function msg(i)
    local len = i % 97 == 0 and 70000 or 1000 + i % 50
    return string.format("%08d", i) .. string.rep(string.char(97 + i % 26), len)
  end
  for _, cap in ipairs({false, 64}) do
    local q = cap and conc.queue(cap) or conc.queue()
    local p = spawn_process(function()
      for i = 1, n do q:send(msg(i)) end
    end)
    local bad = 0
    for i = 1, n do
      local m = q:recv(10)
      if m ~= msg(i) then bad = bad + 1 end
      if i % 3000 == 0 then conc.sleep(0.02) end      -- behind
      if i % 7000 == 0 then conc.sleep(0.002) end
    end
    p:join()
    T.eq(bad, 0)
    T.eq(select(2, q:recv(0)), "timeout")
  end
end)

T.test("two producers and two consumers streaming: each message once, whole", function()
  local q, out = conc.queue(), conc.queue()
  local n = 8000
  local ps, cs = {}, {}
  for k = 1, 2 do
    ps[k] = spawn_process(function()
      for i = 1, n do q:send(string.format("%d:%06d:", k, i) .. string.rep("z", 900 + i % 200)) end
    end)
  end
  for c = 1, 2 do
    cs[c] = spawn_process(function()
      local got, bad = 0, 0
      for m in q:iter() do
        local k, i, body = m:match("^(%d):(%d+):(z*)$")
        if not k or #body ~= 900 + tonumber(i) % 200 then bad = bad + 1 end
        out:send(k * 1000000 + tonumber(i))
        got = got + 1
        if got % 1500 == 0 then conc.sleep(0.01) end
      end
      return bad
    end)
  end
  for k = 1, 2 do ps[k]:join() end
  q:close()
  T.eq(cs[1]:join() + cs[2]:join(), 0)
  local seen, count = {}, 0
  while true do
    local v = out:recv(0)
    if v == nil then break end
    T.ok(not seen[v], "twice: " .. v)
    seen[v] = true
    count = count + 1
  end
  T.eq(count, 2 * n)
end)

T.test("capacity bounds what is queued", function()
  local q = conc.queue(2)
  T.eq(q:send(1), true)
  T.eq(q:send(2), true)
  T.eq(q:send(3, 0), false)
  T.eq(q:send(3, 0.05), false)
  local p = spawn_process(function() return q:send(3, 5) end)
  conc.sleep(0.05)
  T.eq(q:recv(), 1)
  T.eq(p:join(), true)
  T.eq(q:recv(), 2)
  T.eq(q:recv(), 3)
  T.raises("capacity must be positive", conc.queue, 0)
end)

T.test("close: drain, then closed; send errors", function()
  local q = conc.queue()
  q:send("last")
  q:close()
  T.eq(q:recv(), "last")
  local v, why = q:recv()
  T.eq(why, "closed")
  T.raises("send on a closed queue", q.send, q, 1)
  local q2 = conc.queue()
  local p = spawn_process(function() return q2:recv(10) end)
  conc.sleep(0.05)
  q2:close()
  T.eq(p:join(), nil)
end)

T.test("threads share a queue too", function()
  local q = conc.queue()
  local t = spawn_thread(function() for i = 1, 100 do q:send(i) end end)
  local s = 0
  for _ = 1, 100 do s = s + q:recv() end
  T.eq(s, 5050)
  t:join()
end)

T.test("a producer killed while writing does not block the queue", function()
  local q = conc.queue()
  local p = spawn_process(function()
    q:send("before")
    q:send(string.rep("z", 200 * 1024 * 1024))   -- killed while copying
  end)
  T.eq(q:recv(5), "before")
  p:kill("KILL")
  T.raises("killed by signal 9", p.join, p)
  local p2 = spawn_process(function() q:send("after") end)
  local v = q:recv(5)
  T.ok(v == "after" or (type(v) == "string" and #v == 200 * 1024 * 1024), tostring(v and #v))
  p2:join()
end)

-- The state letter of a process in /proc ("Z" for a zombie), or nil.
local function proc_state(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s:match("^%d+ %b() (%a)")
end

local BIG = 64 * 1024 * 1024

-- Starts a producer of one BIG message on q and kills it while it copies
-- the message into its slot (q:len() counts the slot once reserved).
-- Returns its handle, not joined (a zombie until someone reaps it).
local function kill_mid_send(q, big)
  local p = spawn_process(function() q:send(big) end)
  local t0 = conc.now()
  while q:len() == 0 and conc.now() - t0 < 30 do end
  p:kill("KILL")
  return p
end

T.test("a producer killed mid-send, not yet reaped, does not block the queue", function()
  local big = string.rep("z", BIG)
  local cut = 0
  for _ = 1, 3 do
    local q = conc.queue()
    local p = kill_mid_send(q, big)
    local t0 = conc.now()
    while proc_state(p.pid) ~= "Z" and conc.now() - t0 < 10 do conc.sleep(0.001) end
    T.eq(proc_state(p.pid), "Z", "the killed producer is a zombie")
    local p2 = spawn_process(function() q:send("after") end)
    local v, why = q:recv(10)
    if v == "after" then
      cut = cut + 1                 -- killed mid-copy: dropped whole
    else                            -- or it had finished: whole
      T.ok(v == big, "neither 'after' nor the whole message: " ..
           tostring(why or #v))
      T.eq(q:recv(10), "after")
    end
    T.eq(proc_state(p.pid), "Z", "still a zombie")
    T.eq(q:len(), 0)
    T.eq(select(2, q:recv(0)), "timeout")
    p2:join()
    T.raises("killed by signal 9", p.join, p)
  end
  T.ok(cut > 0, "no producer was killed mid-copy")
end)

T.test("recv(0) skips the slot of a dead producer, reaped or not", function()
  local big = string.rep("z", BIG)
  for _, reap in ipairs({false, true}) do
    local q = conc.queue()
    local p = kill_mid_send(q, big)
    if reap then T.raises("killed by signal 9", p.join, p) end
    q:send("next")
    local v, t0 = nil, conc.now()
    repeat v = q:recv(0) until v ~= nil or conc.now() - t0 > 10
    T.ok(v == "next" or v == big, "recv(0) never got past the dead slot")
    if not reap then T.raises("killed by signal 9", p.join, p) end
  end
end)

T.test("conc.queue(1): the slot of a dead producer goes back to senders", function()
  local big = string.rep("z", BIG)
  for _, reap in ipairs({false, true}) do
    local q = conc.queue(1)
    local p = kill_mid_send(q, big)
    if reap then T.raises("killed by signal 9", p.join, p) end
    local ok = q:send("x", 10)
    if not ok and q:recv(0) == big then   -- the producer had finished
      ok = q:send("x", 10)
    end
    T.eq(ok, true, "send blocked for ever behind a dead producer's slot")
    T.eq(q:len(), 1)
    T.eq(q:recv(0), "x")
    local s = spawn_process(function() return q:send("y", 0) end)
    T.eq(s:join(), true)
    T.eq(q:recv(0), "y")
    if not reap then T.raises("killed by signal 9", p.join, p) end
  end
end)

T.test("a consumer killed while copying a message out, not yet reaped, gives its space back", function()
  local big, other = string.rep("c", BIG), string.rep("d", BIG)
  local q, cut = conc.queue(1), false
  for _ = 1, 3 do
    q:send(big)
    local c = spawn_process(function() return #q:recv() end)
    local t0 = conc.now()
    while q:len() == 1 and conc.now() - t0 < 30 do end
    c:kill("KILL")
    while proc_state(c.pid) ~= "Z" and conc.now() - t0 < 30 do conc.sleep(0.001) end
    T.eq(proc_state(c.pid), "Z", "the killed consumer is a zombie")
    T.eq(q:len(), 0)
    -- a gigabyte through the ring, which has to wrap past the dead
    -- consumer's slot: only once that slot is freed
    for i = 1, 20 do
      T.eq(q:send(i % 2 == 0 and big or other, 10), true, "send " .. i)
      local v = q:recv(10)
      T.eq(v and #v, BIG)
    end
    cut = not pcall(c.join, c)      -- else it had taken the message whole
    if cut then break end
  end
  T.ok(cut, "no consumer was killed mid-copy")
end)

T.test("a job queue whose worker is killed mid-run and reaped only at the end", function()
  for _ = 1, 3 do
    local jobs, results = conc.queue(4), conc.queue()
    local function worker()
      for job in jobs:iter() do
        results:send({id = job.id, blob = string.rep("r", 1024 * 1024)})
      end
    end
    local workers = {}
    for i = 1, 3 do workers[i] = spawn_process(worker) end
    local feeder = spawn_thread(function(jobs)
      for id = 1, 60 do jobs:send({id = id}) end
      jobs:close()
    end, jobs)
    local t0 = conc.now()
    while results:len() < 5 and conc.now() - t0 < 10 do conc.sleep(0.001) end
    local victim = workers[2]
    victim:kill("KILL")                  -- likely while it sends a result
    workers[2] = spawn_process(worker)
    feeder:join()
    for i = 1, 3 do workers[i]:join() end
    local got, n = {}, 0
    while true do
      local r = results:recv(0)
      if r == nil then break end
      T.ok(not got[r.id], "a result came twice")
      T.eq(#r.blob, 1024 * 1024)
      got[r.id], n = true, n + 1
    end
    T.ok(n >= 59, n .. " results: more than the killed worker's job lost")
    T.raises("killed by signal 9", victim.join, victim)
  end
end)

T.test("iter and select", function()
  local q = conc.queue()
  local p = spawn_process(function() for i = 1, 3 do q:send(i) end q:close() end)
  local got = {}
  for v in q:iter() do got[#got + 1] = v end
  T.same(got, {1, 2, 3})
  p:join()
end)

T.test("selects in several threads: every message to exactly one, none waits", function()
  for _ = 1, 100 do
    local q, go = conc.queue(), conc.event()
    local sel = {}
    for i = 1, 3 do
      sel[i] = spawn_thread(function(q, go)
        go:wait()
        return select(2, conc.select({q}))
      end, q, go)
    end
    go:set()
    for i = 1, 3 do q:send(i) end
    local stuck = 0
    for i = 1, 3 do
      if not sel[i]:wait(5) then stuck = stuck + 1 end
    end
    for _ = 1, stuck do q:send("release") end    -- let a stuck one end
    local got = {}
    for i = 1, 3 do got[i] = sel[i]:join() end
    T.eq(stuck, 0, "selectors still waiting with messages queued")
    table.sort(got, function(a, b) return tostring(a) < tostring(b) end)
    T.same(got, {1, 2, 3})
  end
end)

T.test("task_done and join across processes (Python's JoinableQueue)", function()
  local q = conc.queue()
  T.eq(q:join(0), true)
  T.raises("task_done called too many times", q.task_done, q)
  for i = 1, 40 do q:send(i) end
  T.eq(q:join(0.02), false)
  local ps = {}
  for i = 1, 2 do
    ps[i] = spawn_process(function()
      for _ in q:iter() do q:task_done() end
    end)
  end
  T.eq(q:join(10), true)
  q:close()
  for i = 1, 2 do ps[i]:join() end
  T.raises("task_done called too many times", q.task_done, q)
  -- a joiner in another process
  local q2 = conc.queue(4)
  local j = spawn_process(function() return q2:join(10) end)
  for i = 1, 3 do q2:send(i) end
  for _ = 1, 3 do q2:recv(); q2:task_done() end
  T.eq(j:join(), true)
end)

T.test("join: a value dropped with a killed producer stops counting", function()
  local q = conc.queue()
  local p = spawn_process(function()
    q:send("before")
    q:send(string.rep("z", 200 * 1024 * 1024))   -- killed while copying
  end)
  T.eq(q:recv(5), "before")
  q:task_done()
  p:kill("KILL")
  T.raises("killed by signal 9", p.join, p)
  -- the big one arrived whole, or was dropped: either way join ends
  local v = q:recv(0.5)
  if v then q:task_done() end
  T.eq(q:join(5), true)
end)

T.done()
