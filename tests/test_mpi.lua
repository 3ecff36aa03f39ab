-- conc.mpi and pool.mpi (SPEC section 9), with 2 to 4 ranks of mpirun on
-- this machine. Without an MPI (no build/conc/mpi.so, or no mpirun) the
-- tests that need one are reported as skipped, with the reason.
local T = require "t"

local q, build = T.q, T.build
local exe = T.conclua
local mod = build .. "/conc/mpi.so"
-- Open MPI refuses root and more ranks than cores without these; threads
-- inside a rank need --bind-to none.
local ENV = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " ..
            "OMPI_MCA_rmaps_base_oversubscribe=1 "
-- Under make asan: Open MPI leaves some 120 KB of its own allocations at
-- MPI_Finalize, in plugins it has unloaded by then (frames of an
-- "<unknown module>": no suppression can name them), so the ranks run
-- without the leak check; the other checks of ASan and UBSan stay on.
if T.sanitizer == "asan" then
  ENV = ENV .. "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1 "
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local why_not
if not exists(mod) then
  why_not = mod .. " was not built (no MPI found by pkg-config: " ..
            "apt-get install libopenmpi-dev openmpi-bin)"
elseif select(2, T.sh("command -v mpirun")) ~= 0 then
  why_not = "no mpirun (apt-get install openmpi-bin)"
end

-- Runs script under mpirun -np np (with -l conc.mpi when 'l'); returns
-- the output, the exit status and the seconds it took.
local function mpirun(np, script, l, env, path)
  path = path or T.tmpfile(script)
  local f = assert(io.open(path, "w"))
  f:write(script)
  f:close()
  local t0 = conc.now()
  local out, code = T.sh(string.format("%s%s timeout -k 2 60 mpirun --bind-to none -np %d %s %s%s",
                                       ENV, env or "", np, q(exe), l and "-l conc.mpi " or "",
                                       q(path)))
  os.remove(path)
  return out, code, conc.now() - t0
end

local function mpitest(name, fn)
  if why_not then return T.skip(name, why_not) end
  T.test(name, fn)
end

-- Needs no MPI: a conclua with no module next to it says why.
T.test("require 'conc.mpi' says when conclua was built without MPI", function()
  local dir = os.tmpname()
  os.remove(dir)
  T.sh("mkdir -p " .. q(dir) .. " && cp " .. q(exe) .. " " .. q(dir .. "/conclua"))
  local out = T.sh(q(dir .. "/conclua") .. " -e " ..
                   q("local ok, e = pcall(require, 'conc.mpi') print(ok, e)"))
  T.sh("rm -rf " .. q(dir))
  T.ok(out:find("false", 1, true), out)
  T.ok(out:find("conclua was built without MPI support", 1, true), out)
  local out2 = T.sh(q(dir .. "/conclua") .. " -e 1")   -- gone: nothing left
  T.ok(out2 ~= "", "the copy is removed")
end)

-- mpirun binds each rank to one core unless --bind-to none: a pool's
-- default size follows what the rank may use.
T.test("conc.cpu_count counts the CPUs of the affinity mask", function()
  if select(2, T.sh("command -v taskset")) ~= 0 then
    return T.skip("conc.cpu_count counts the CPUs of the affinity mask", "no taskset")
  end
  local out = T.sh("taskset -c 0 " .. q(exe) .. " -e 'print(conc.cpu_count())'")
  T.eq(out:match("^[^\n]*"), "1", out)
end)

mpitest("SPMD: every rank runs the script; rank, size, host, barrier, bcast", function()
  local out, code = mpirun(3, [[
    local mpi = require "conc.mpi"
    local r = mpi.rank()
    mpi.barrier()
    local v = mpi.bcast(r == 2 and {x = 42, f = function(a) return a + 1 end} or nil, 2)
    mpi.barrier()
    print(string.format("rank %d of %d on %s: %d %d", r, mpi.size(), mpi.host(),
                        v.x, v.f(r)))
  ]])
  T.eq(code, 0, out)
  local host = T.sh("hostname"):gsub("%s+$", "")
  for r = 0, 2 do
    T.ok(out:find(string.format("rank %d of 3 on %s: 42 %d", r, host, r + 1), 1, true), out)
  end
  T.raises("rank out of range", function()
    error(select(1, mpirun(2, "local mpi = require 'conc.mpi' mpi.bcast(1, 5)")))
  end)
end)

mpitest("-l conc.mpi: only rank 0 runs the script; the job's status is rank 0's", function()
  local out, code = mpirun(3, [[
    local mpi = require "conc.mpi"
    print("script on rank " .. mpi.rank() .. " of " .. mpi.size())
    mpi.barrier()
    print("served:", mpi.bcast("v"))
  ]], true)
  T.eq(code, 0, out)
  T.ok(out:find("script on rank 0 of 3", 1, true), out)
  T.ok(not out:find("script on rank [12]"), out)
  T.ok(out:find("served:\tv", 1, true), out)
  local out2, code2, secs = mpirun(2, "error('failing on purpose')", true)
  T.ok(code2 ~= 0, "status " .. tostring(code2))
  T.ok(out2:find("failing on purpose", 1, true), out2)
  T.ok(secs < 10, secs)
  local out3, code3 = mpirun(2, "os.exit(3)", true)
  T.eq(code3, 3, out3)
end)

mpitest("pool.mpi: map, submit, futures, errors naming rank and host, close", function()
  local out, code = mpirun(4, [[
    local pool = require "conc.pool"
    local mpi = require "conc.mpi"
    local p = pool.mpi()
    print("n", p.n)
    local r = p:map(function(x) return x * x end, {1, 2, 3, 4, 5, 6, 7})
    print("map", table.concat(r, ","), r.n)
    local r2 = p:map(function(x) return x + 1 end, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {chunksize = 3})
    print("chunked", table.concat(r2, ","))
    local fs = {}
    for i = 1, 6 do
      fs[i] = p:submit(function(a) return a * 10, require("conc.mpi").rank() end, i)
    end
    local ranks, sum = {}, 0
    for f in pool.as_completed(fs, 30) do
      local v, rk = f:result()
      sum = sum + v
      ranks[rk] = true
    end
    print("sum", sum, ranks[0] == nil)
    local bad = p:submit(function() error("boom") end)
    local ok, e = pcall(bad.result, bad)
    print("error", e)
    print("map error", select(2, pcall(p.map, p, function(x)
      if x == 3 then error("three") end return x end, {1, 2, 3, 4})))
    print("transfer", select(2, pcall(p.map, p, function(x) return x end,
                                      {1, conc.channel()})))
    local f = p:submit(function(c) return 1 end, conc.channel())
    print("arg", select(2, pcall(f.result, f)))
    local g = p:submit(function() return conc.channel() end)
    print("result", select(2, pcall(g.result, g)))
    p:close()
    print("closed", pcall(p.submit, p, print))
  ]], true)
  T.eq(code, 0, out)
  local host = T.sh("hostname"):gsub("%s+$", "")
  T.ok(out:find("n\t3", 1, true), out)
  T.ok(out:find("map\t1,4,9,16,25,36,49\t7", 1, true), out)
  T.ok(out:find("chunked\t2,3,4,5,6,7,8,9,10,11", 1, true), out)
  T.ok(out:find("sum\t210\ttrue", 1, true), out)
  T.ok(out:find("error\trank [123] %(" .. host:gsub("%p", "%%%0") .. "%): [^\n]*boom\nstack traceback:\n"),
       out)
  T.ok(out:find("map error\trank [123] %(.-%): .-three"), out)
  T.ok(out:find("transfer\tmap item 2: cannot transfer a value of type 'channel' to another rank",
                1, true), out)
  T.ok(out:find("arg\tcannot transfer a value of type 'channel' to another rank", 1, true), out)
  T.ok(out:find("result\tcannot transfer a value of type 'channel' to another rank (results[1])",
                1, true), out)
  T.ok(out:find("closed\tfalse\tpool is closed"), out)
end)

mpitest("pool.mpi: options, threads per rank, terminate, no worker ranks", function()
  local out, code = mpirun(3, [[
    local pool = require "conc.pool"
    local p = pool.mpi({ranks = {2}, threads = 2})
    print("n", p.n)
    local fs = {}
    for i = 1, 4 do fs[i] = p:submit(function() return require("conc.mpi").rank() end) end
    local seen = {}
    for _, f in ipairs(fs) do seen[f:result()] = true end
    print("ranks", seen[1] == nil, seen[2])
    local slow = p:submit(function() conc.sleep(30) return 1 end)
    conc.sleep(0.3)
    local t0 = conc.now()
    p:terminate()
    print("terminated", select(2, pcall(slow.result, slow)), conc.now() - t0 < 5)
    print(pcall(pool.mpi, {ranks = {0}}))
    print(pcall(pool.mpi, {bogus = 1}))
  ]], true)
  T.eq(code, 0, out)
  T.ok(out:find("n\t2", 1, true), out)
  T.ok(out:find("ranks\ttrue\ttrue", 1, true), out)
  T.ok(out:find("terminated\tpool terminated\ttrue", 1, true), out)
  T.ok(out:find("ranks[1]: 0 is not a worker rank", 1, true), out)
  T.ok(out:find("unknown option 'bogus'", 1, true), out)
  local out2, code2 = mpirun(1, [[
    print(pcall(require("conc.pool").mpi))
  ]], true)
  T.eq(code2, 0, out2)
  T.ok(out2:find("pool.mpi: no worker ranks (run under mpirun -np N, N >= 2)", 1, true), out2)
end)

mpitest("the stock lua5.4 with conc.so; a pool left open finishes its work at exit", function()
  local path = T.tmpfile([[
    local p = require("conc.pool").mpi()
    print(p:submit(function() return _VERSION .. " on rank " .. require("conc.mpi").rank() end):result())
  ]])
  -- lua5.4 is not built with the sanitizer: it gets its runtime preloaded
  local lua54 = "lua5.4"
  if T.sanitizer == "asan" then
    lua54 = "-x LD_PRELOAD=" .. q((T.sh("gcc -print-file-name=libasan.so"):gsub("%s+$", ""))) ..
            " lua5.4"
  end
  local out, code = T.sh(string.format("%s LUA_CPATH=%s timeout -k 2 60 mpirun --bind-to none -np 2 " ..
                                       "%s -l conc.mpi %s", ENV, q(build .. "/?.so;;"), lua54, q(path)))
  os.remove(path)
  T.eq(code, 0, out)
  T.ok(out:find("Lua 5.4 on rank 1", 1, true), out)
  local mark = os.tmpname()
  os.remove(mark)
  local out2, code2 = mpirun(2, string.format([[
    local p = require("conc.pool").mpi()
    p:submit(function(path) conc.sleep(0.3) io.open(path, "w"):write("done"):close() end, %q)
  ]], mark), true)
  T.eq(code2, 0, out2)
  T.eq(T.readfile(mark), "done", "the queued task ran before the job ended")
  os.remove(mark)
end)

mpitest("processes forked on a rank work, and cannot use its MPI", function()
  local out, code = mpirun(2, [[
    local mpi = require "conc.mpi"
    local pr = spawn_process(function() return "child", pcall(mpi.inbox, 3) end)
    print(pr:join())
    local p = require("conc.pool").processes(2)
    print("local", table.concat(p:map(function(x) return x * 2 end, {1, 2, 3}), ","))
    p:close()
    local q = require("conc.pool").mpi()
    print("remote", q:submit(function() return spawn_process(function() return 7 end):join() end):result())
  ]], true)
  T.eq(code, 0, out)
  T.ok(out:find("child\tfalse\tconc.mpi: MPI belongs to the parent process", 1, true), out)
  T.ok(out:find("local\t2,4,6", 1, true), out)
  T.ok(out:find("remote\t7", 1, true), out)
end)

mpitest("messages of any size arrive whole and in order (in chunks)", function()
  -- CONCLUA_MPI_CHUNK makes the frames small, so that a message of a few
  -- hundred kilobytes takes the path of one past MPI's int count
  local out, code = mpirun(2, [[
    local mpi = require "conc.mpi"
    local pool = require "conc.pool"
    local p = pool.mpi()
    local big = {}
    for i = 1, 20000 do big[i] = i * 3 end
    local s = string.rep("abc", 100000)
    local r = p:map(function(t) return {#t, t[#t], #(t.s or "")} end,
                    {big, {s = s, 1}, {}})
    print("map", r[1][1], r[1][2], r[2][3], r[3][1])
    local back = p:submit(function(n) return string.rep("z", n) end, 777777):result()
    print("back", #back, back:sub(1, 3))
    -- an endpoint: mixed sizes keep their order
    local e = mpi.endpoint(1, 5)
    for i = 1, 20 do e:send(i % 3 == 0 and string.rep("q", 5000 * i) or i) end
    e:send("end")
  ]], true, "CONCLUA_MPI_CHUNK=1000 ")
  T.eq(code, 0, out)
  T.ok(out:find("map\t20000\t60000\t300000\t0", 1, true), out)
  T.ok(out:find("back\t777777\tzzz", 1, true), out)
  local out2, code2 = mpirun(2, [[
    local mpi = require "conc.mpi"
    if mpi.rank() == 0 then
      local e = mpi.endpoint(1, 5)
      for i = 1, 20 do e:send(i % 3 == 0 and string.rep("q", 5000 * i) or i) end
      print("echo", e:recv(20))
    else
      local e = mpi.endpoint(0, 5)
      local ok = true
      for i = 1, 20 do
        local v, src = e:recv(20)
        local want = i % 3 == 0 and string.rep("q", 5000 * i) or i
        ok = ok and v == want and src == 0
      end
      e:send(ok and "in order" or "out of order")
    end
  ]], false, "CONCLUA_MPI_CHUNK=1000 ")
  T.eq(code2, 0, out2)
  T.ok(out2:find("echo\tin order\t1", 1, true), out2)
end)

mpitest("endpoints and inboxes: channel methods, conc.select, close", function()
  local out, code = mpirun(3, [[
    local mpi = require "conc.mpi"
    local r, n = mpi.rank(), mpi.size()
    if r == 0 then
      local box = mpi.inbox(3)
      local ch = conc.channel()
      ch:send("local")
      local got = {}
      for i = 1, 2 * (n - 1) + 1 do
        local item, v, src = conc.select({box, ch}, 20)
        if item == ch then got[#got + 1] = v
        else got[#got + 1] = v.msg .. "@" .. src end
      end
      table.sort(got)
      print("got", table.concat(got, " "))
      print("timeout", conc.select({box}, 0.1))
      local e = mpi.endpoint(1, 9)
      e:send({hello = "one", f = function(x) return x * 2 end})
      print("reply", e:recv(20))
      e:close()
      local it = mpi.endpoint(2, 11)
      local seen = {}
      for v, src in it:iter() do seen[#seen + 1] = v .. "/" .. src end
      print("iter", table.concat(seen, " "), it:len())
      print("send closed", pcall(e.send, e, 1))
      print("nil", pcall(e.send, mpi.endpoint(1), nil))
      print("bad rank", pcall(mpi.endpoint, 7))
      print("bad tag", pcall(mpi.inbox, -1))
      print("object", pcall(e.send, mpi.endpoint(2), {conc.channel()}))
    else
      local e = mpi.endpoint(0, 3)
      e:send({msg = "a" .. r})
      e:send({msg = "b" .. r})
      if r == 2 then
        local it = mpi.endpoint(0, 11)
        for i = 1, 3 do it:send(i) end
        it:close()
      end
      if r == 1 then
        local back = mpi.endpoint(0, 9)
        local v = back:recv(20)
        back:send(v.hello .. v.f(21))
        print("after close", back:recv(20))
      end
    end
    mpi.barrier()
  ]])
  T.eq(code, 0, out)
  T.ok(out:find("got\ta1@1 a2@2 b1@1 b2@2 local", 1, true), out)
  T.ok(out:find("timeout\tnil\ttimeout", 1, true), out)
  T.ok(out:find("reply\tone42\t1", 1, true), out)
  T.ok(out:find("iter\t1/2 2/2 3/2\t0", 1, true), out)
  T.ok(out:find("send closed\tfalse\t.-send on a closed endpoint"), out)
  T.ok(out:find("after close\tnil\tclosed", 1, true), out)
  T.ok(out:find("nil\tfalse\t.-cannot send nil"), out)
  T.ok(out:find("bad rank\tfalse\t.-rank out of range %(0 to 2%)"), out)
  T.ok(out:find("bad tag\tfalse\t.-tag out of range"), out)
  T.ok(out:find("object\tfalse\t.-cannot transfer a value of type 'channel' to another rank"), out)
end)

mpitest("every rank checks the versions: a mismatch names rank and host", function()
  local out, code = mpirun(3, "print('ran')", true,
                           "CONCLUA_MPI_TEST_VERSION='2:conclua 9.9.9, Lua 5.4.4, format 1' ")
  T.ok(code ~= 0, out)
  T.ok(not out:find("ran\n", 1, true), out)
  T.ok(out:find("conc.mpi: rank 2 %(.-%) runs conclua 9.9.9, Lua 5.4.4, format 1, but " ..
                "rank 0 %(.-%) runs " .. conc.version:gsub("%p", "%%%0")), out)
end)

mpitest("a rank that dies ends the job, non-zero, within 10 seconds", function()
  local mark = "mpidead" .. math.random(1 << 30)
  local path = os.tmpname() .. mark .. ".lua"
  local out, code, secs = mpirun(3, [[
    local pool = require "conc.pool"
    local p = pool.mpi()
    local pid = p:submit(function() return io.open("/proc/self/stat"):read("n") end):result()
    os.execute("kill -9 " .. pid)
    p:map(function(x) conc.sleep(0.2) return x end, {1, 2, 3, 4, 5, 6})
    conc.sleep(60)
  ]], true, nil, path)
  T.ok(code ~= 0, "status " .. tostring(code) .. "\n" .. out)
  T.ok(secs < 10, secs)
  conc.sleep(0.5)
  -- [m]: the pattern does not match pgrep's own shell
  local left = T.sh("pgrep -f '[m]pidead" .. mark:sub(8) .. "'")
  T.eq(left:gsub("%s+", ""), "", "processes left")
end)

mpitest("scripts/primes_anywhere.lua runs unchanged on ranks, with -l and SPMD", function()
  for _, l in ipairs({true, false}) do
    local out, code = T.sh(string.format("%s timeout -k 2 60 mpirun --bind-to none -np 3 %s %s " ..
                                         "scripts/primes_anywhere.lua 1000000", ENV, q(exe),
                                         l and "-l conc.mpi" or ""))
    T.eq(code, 0, out)
    T.ok(out:find("^78498 primes below 1000000, 20 ranges on 2 ranks of an MPI job"), out)
  end
end)

mpitest("an idle worker rank uses a few percent of a core at most", function()
  local out, code = mpirun(3, [[
    local pool = require "conc.pool"
    local p = pool.mpi()
    p:map(function(x) return x end, {1, 2, 3, 4})
    local pid = p:submit(function() return io.open("/proc/self/stat"):read("n") end):result()
    local function cpu(pid)
      local f = assert(io.open("/proc/" .. pid .. "/stat"))
      local s = f:read("a")
      f:close()
      local t = {}
      for w in s:gsub("^.-%) ", ""):gmatch("%S+") do t[#t + 1] = w end
      return (tonumber(t[12]) + tonumber(t[13])) / 100   -- utime + stime
    end
    local c0, t0 = cpu(pid), conc.now()
    conc.sleep(3)
    print(string.format("idle %.2f", (cpu(pid) - c0) / (conc.now() - t0)))
  ]], true)
  T.eq(code, 0, out)
  local idle = tonumber(out:match("idle ([%d.]+)"))
  T.ok(idle and idle < 0.05, out)
end)

T.done()
