-- require "conc.pool" (SPEC section 7).
local T = require "t"
local pool = require "conc.pool"

for _, kind in ipairs({"threads", "processes"}) do
  T.test(kind .. ": map keeps the input order, chunksize too", function()
    local p = pool[kind](2)
    local list = {}
    for i = 1, 1000 do list[i] = i end
    local out = p:map(function(x) return x * x end, list)
    T.eq(#out, 1000)
    for i = 1, 1000 do T.eq(out[i], i * i) end
    local out3 = p:map(function(x) return x .. "!" end, {"a", "b", "c", "d", "e"},
                       {chunksize = 2})
    T.same(out3, {"a!", "b!", "c!", "d!", "e!"})
    T.same(p:map(tostring, {}), {})
    p:close()
  end)

  T.test(kind .. ": map raises the worker's error with its traceback", function()
    local p = pool[kind](2)
    local err = T.raises("item 7 is bad", p.map, p, function(x)
      if x == 7 then error("item " .. x .. " is bad") end
      return x
    end, {1, 2, 3, 4, 5, 6, 7, 8, 9})
    T.ok(err:find("stack traceback:", 1, true), err)
    T.ok(err:find("pool%-%a+%-%d: "), err)
    -- the pool still works afterwards
    T.same(p:map(function(x) return -x end, {1, 2}), {-1, -2})
    p:close()
  end)

  T.test(kind .. ": submit, futures, result, done, wait", function()
    local p = pool[kind](2)
    local f = p:submit(function(a, b) return a + b, nil, "three" end, 1, 2)
    local r = table.pack(f:result())
    T.eq(r.n, 3)
    T.eq(r[1], 3)
    T.eq(r[3], "three")
    T.eq(f:done(), true)
    T.eq(f:wait(0), true)
    local slow = p:submit(conc.sleep, 0.3)
    T.eq(slow:wait(0.01), false)
    T.eq(slow:done(), false)
    T.raises("timeout", slow.result, slow, 0.01)
    T.eq(slow:wait(), true)
    local bad = p:submit(function() error({code = 5}) end)
    local ok, e = pcall(bad.result, bad)
    T.eq(ok, false)
    T.eq(e.code, 5)
    local bad2 = p:submit(function() error("plain") end)
    local err = T.raises("plain", bad2.result, bad2)
    T.ok(err:find("stack traceback:", 1, true), err)
    T.eq(tostring(f), "<future done>")
    p:close()
  end)

  T.test(kind .. ": as_completed yields in completion order", function()
    local p = pool[kind](4)
    local fs = {}
    for i, d in ipairs({0.3, 0.0, 0.15}) do
      fs[i] = p:submit(function(s) conc.sleep(s) return s end, d)
    end
    local order = {}
    for f in pool.as_completed(fs) do order[#order + 1] = f:result() end
    T.same(order, {0.0, 0.15, 0.3})
    p:close()
  end)

  T.test(kind .. ": close waits for queued work", function()
    local p = pool[kind](2)
    local fs = {}
    for i = 1, 10 do fs[i] = p:submit(function(x) conc.sleep(0.01) return x end, i) end
    p:close()
    for i = 1, 10 do
      T.eq(fs[i]:done(), true)
      T.eq(fs[i]:result(), i)
    end
    T.raises("pool is closed", p.submit, p, print)
    p:close()                               -- twice is fine
  end)

  T.test(kind .. ": terminate stops now; pending work fails", function()
    local p = pool[kind](2)
    local fs = {}
    for i = 1, 6 do fs[i] = p:submit(function() conc.sleep(5) end) end
    conc.sleep(0.1)
    p:terminate()
    for i = 1, 6 do T.raises("pool terminated", fs[i].result, fs[i]) end
  end)

  T.test(kind .. ": bad arguments", function()
    local p = pool[kind](1)
    T.raises("function expected", p.map, p, 5, {})
    T.raises("table expected", p.map, p, print, 5)
    T.raises("unknown option 'chunk'", p.map, p, print, {}, {chunk = 2})
    T.raises("chunksize must be a positive integer", p.map, p, print, {1}, {chunksize = 0})
    T.raises("function expected", p.submit, p, "x")
    T.raises("positive integer expected", pool[kind], 0)
    p:close()
  end)
end

T.test("default size is the number of cores", function()
  local p = pool.threads()
  T.eq(p.n, conc.cpu_count())
  T.eq(tostring(p), "<pool of " .. conc.cpu_count() .. " threads>")
  p:close()
end)

T.test("a worker process that dies: its work fails, the pool goes on", function()
  local p = pool.processes(2)
  local f = p:submit(function() conc.sleep(30) end)
  conc.sleep(0.2)
  -- kill the worker that runs it
  for _, w in ipairs(p.workers) do
    if next(w.inflight) then w.h:kill("KILL") end
  end
  local err = T.raises("killed by signal 9 (SIGKILL)", f.result, f, 10)
  T.ok(err:find("pool worker died: process %d+"), err)
  -- replaced: the pool still has two workers and works
  T.same(p:map(function(x) return x + 1 end, {1, 2, 3, 4}), {2, 3, 4, 5})
  p:close()
end)

T.test("a result sent just before the worker dies is kept", function()
  -- the worker answers A, then exits at once: the end of the process may
  -- be seen before the answer, which must still count
  for _ = 1, 30 do
    local p = pool.processes(1)
    local a = p:submit(function() return "A" end)
    local b = p:submit(function() os.exit(3) end)
    T.eq(a:result(10), "A")
    T.raises("exited with status 3", b.result, b, 10)
    p:close()
  end
end)

T.test("a pool that is collected is closed, its workers stopped", function()
  do
    local p = pool.threads(2)
    p:map(function(x) return x end, {1, 2, 3})
  end
  collectgarbage()
  collectgarbage()
  -- the leak check of the harness sees no thread left
end)

T.test("pools alive at exit are shut down, no orphans", function()
  local script = T.tmpfile([[
    local pool = require "conc.pool"
    local p = pool.processes(2)
    local q = pool.threads(2)
    local f = p:submit(function() return 1 end)
    print(f:result(), q:map(function(x) return x end, {7})[1])
    io.write(p.workers[1].h.pid, " ", p.workers[2].h.pid, "\n")
  ]])
  local out, code = T.sh(T.q(T.conclua) .. " " .. script)
  T.eq(code, 0)
  local a, b = out:match("(%d+) (%d+)")
  T.ok(a and b, out)
  for _, pid in ipairs({a, b}) do
    T.ok(not os.execute("kill -0 " .. pid .. " 2>/dev/null"), "orphan " .. pid)
  end
  os.remove(script)
end)

T.test("a pool whose worker was replaced still closes at exit", function()
  -- the replacement's handles are newer than the pool's first ones: at
  -- exit the pool must still close (finishing its queued work) before
  -- they are released
  local marker = os.tmpname()
  os.remove(marker)
  local script = T.tmpfile(string.format([[
    local pool = require "conc.pool"
    local p = pool.processes(1)
    local f = p:submit(function() os.exit(3) end)
    assert(not pcall(f.result, f))
    p:submit(function(path)
      conc.sleep(0.2)
      local out = assert(io.open(path, "w"))
      out:write("done")
      out:close()
    end, %q)
    io.write(p.workers[1].h.pid, "\n")
  ]], marker))
  local log = os.tmpname()
  -- output to a file: an orphan holding the pipe would hang T.sh
  local _, code = T.sh(T.q(T.conclua) .. " " .. script .. " >" .. T.q(log) .. " 2>&1")
  local f = assert(io.open(log))
  local out = f:read("a")
  f:close()
  T.eq(code, 0, out)
  local pid = out:match("^(%d+)\n")
  T.ok(pid, out)
  local alive = os.execute("kill -0 " .. pid .. " 2>/dev/null")
  if alive then os.execute("kill -KILL " .. pid) end
  T.ok(not alive, "orphan " .. pid)
  local m = io.open(marker)
  T.ok(m, "the queued work was done before exit")
  if m then m:close() end
  os.remove(marker)
  os.remove(log)
  os.remove(script)
end)

T.test("progress: nothing on stderr when it is not a terminal", function()
  local script = T.tmpfile([[
    local pool = require "conc.pool"
    local p = pool.threads(2)
    local t = {} for i = 1, 100 do t[i] = i end
    print(#p:map(function(x) return x end, t, {progress = true}))
  ]])
  local out = T.sh(T.q(T.conclua) .. " " .. script .. " 2>&1")
  T.eq(out, "100\n")
  os.remove(script)
end)

T.test("a long queue of calls keeps every call; fn goes with its current upvalues", function()
  local p = pool.threads(1)
  local fs = {}
  for i = 1, 10 do fs[i] = p:submit(function(x) conc.sleep(0.01) return x end, i) end
  for i = 1, 6 do T.eq(fs[i]:result(10), i) end
  local late = p:submit(function() return "late" end)
  T.eq(late:result(10), "late")
  for i = 7, 10 do T.eq(fs[i]:result(10), i) end
  local k = 2
  local function f(x) return x * k end
  T.same(p:map(f, {1, 2, 3}), {2, 4, 6})
  k = 10
  T.same(p:map(f, {1, 2, 3}), {10, 20, 30})
  T.eq(p:submit(f, 1):result(10), 10)
  p:close()
end)

T.test("an argument that cannot be copied fails its own future only", function()
  for _, kind in ipairs({"threads", "processes"}) do
    local p = pool[kind](1)
    local slow = function(t) conc.sleep(t) return t end
    local f1, f2 = p:submit(slow, 0.05), p:submit(slow, 0.05)
    local bad = p:submit(function(x) return x end, coroutine.create(print))
    T.eq(f1:result(10), 0.05)
    T.eq(f2:result(10), 0.05)
    T.raises("cannot transfer a value of type 'thread'", bad.result, bad, 10)
    local list = {1, 2, coroutine.create(print), 4}
    T.raises("cannot transfer a value of type 'thread'", p.map, p, slow, list)
    T.eq(p:submit(function() return "after" end):result(10), "after")
    p:close()
  end
end)

T.done()
