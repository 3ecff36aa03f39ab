-- tests/bench/bench_threads.lua: conclua's side of the thread benchmarks.
--
--   conclua tests/bench/bench_threads.lua MODE [N]
--
-- Prints one line "RESULT key=value ..." (what run.sh reads). Each mode
-- does what the mode of the same name in baseline.c does, through
-- spawn_thread, channels and events instead of pthreads and condvars:
--   spawn N     spawn_thread(trivial function):join()           us_per_op
--   cpu N       a Lua loop over 1..N here, then split over two
--               threads                                         speedup
--   idle K      K threads blocked on a conc.event               kb_per_thread
--   chan M      M integers from a producer thread, channel(1024) msgs_per_s
--   pingpong R  R round trips over two channels (an echo thread) us_per_rt
--   bigstr I    a 10 MiB string from a thread, per iteration    ms (median)
--   bigtbl I    a 100000-integer table, the same way            ms (median)
--   pcall N     in a thread, N pcalls of a function that returns and
--               N/10 of one that raises (conclua's own pcall,
--               which a cancel cannot get past)                 ns_ok, ns_err
--   shared_incr N   N s:incr("n") on a conc.shared, split over two
--               threads                                         ops_per_s
--   shared_rw N     N stores and reads (s[k] = i; s[k]) of 64 keys
--               per thread, split over two threads              ops_per_s
--   cond R      R notify -> wake round trips between two threads
--               on a conc.condition (a turn in a conc.shared)   us_per_rt
--   rlock N     N acquire + release pairs of a conc.rlock        ns_per_pair
--   timers K    K pending conc.timer(0.5 .. 0.6): RSS each, and the
--               time from the first made to the last fired      bytes_each, s
--   imap_threads M   pool.threads(2):imap_unordered over M trivial
--               items                                           items_per_s

local mode, n = arg[1], tonumber(arg[2])
local now = conc.now

local common = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local report = common.report

local function vmrss_kb()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmRSS:%s*(%d+)")
    if kb then return tonumber(kb) end
  end
  error("no VmRSS in /proc/self/status")
end

local function median(v)
  table.sort(v)
  local m = #v
  return m % 2 == 1 and v[(m + 1) // 2] or (v[m // 2] + v[m // 2 + 1]) / 2
end

local modes = {}

function modes.spawn(count)
  local function trivial() return 1 end
  for _ = 1, 20 do spawn_thread(trivial):join() end
  local t0 = now()
  for _ = 1, count do spawn_thread(trivial):join() end
  report{us_per_op = (now() - t0) / count * 1e6}
end

-- The same loop as baseline.c's.
local function loop(a, b)
  local s = 0
  for i = a, b do s = (s + i * i) % 1000000007 end
  return s
end

function modes.cpu(count)
  local t0 = now()
  local whole = loop(1, count)
  local serial = now() - t0
  t0 = now()
  local t1 = spawn_thread(loop, 1, count // 2)
  local t2 = spawn_thread(loop, count // 2 + 1, count)
  local sum = (t1:join() + t2:join()) % 1000000007
  local par = now() - t0
  assert(sum == whole, "sums differ")
  report{serial_s = serial, par_s = par, speedup = serial / par}
end

function modes.idle(count)
  local go, ready = conc.event(), conc.semaphore(0)
  local threads = {}
  collectgarbage()
  local before = vmrss_kb()
  local t0 = now()
  for i = 1, count do
    threads[i] = spawn_thread(function() ready:release() go:wait() end)
  end
  for _ = 1, count do ready:acquire() end
  local up = now() - t0
  local after = vmrss_kb()
  go:set()
  for i = 1, count do threads[i]:join() end
  report{kb_per_thread = (after - before) / count, rss_mb = after / 1024,
         up_s = up}
end

function modes.chan(count)
  report{msgs_per_s = common.stream(spawn_thread, conc.channel(1024),
                                    conc.channel(1), count)}
end

function modes.pingpong(rounds)
  local warm = 200
  local ping, pong = conc.channel(1), conc.channel(1)
  local echo = spawn_thread(function()
    for _ = 1, rounds + warm do pong:send(ping:recv()) end
  end)
  for i = 1, warm do ping:send(i) pong:recv() end
  local t0 = now()
  for i = 1, rounds do
    ping:send(i)
    if pong:recv() ~= i then error("wrong echo") end
  end
  report{us_per_rt = (now() - t0) / rounds * 1e6}
  echo:join()
end

-- The sender thread keeps the value; each request makes it send the value
-- again, and the time runs from the request to the value received here.
local function big(iters, make, size)
  local req, data = conc.channel(1), conc.channel(1)
  local sender = spawn_thread(function()
    local v = make()
    for _ = 1, iters do
      req:recv()
      data:send(v)
    end
  end)
  local ms = {}
  for i = 1, iters do
    collectgarbage()
    local t0 = now()
    req:send(true)
    local v = data:recv()
    ms[i] = (now() - t0) * 1e3
    assert(#v == size, "wrong size")
  end
  sender:join()
  report{ms = median(ms)}
end

function modes.bigstr(iters)
  big(iters, function()
    return string.rep("0123456789abcdef", 10 * 1024 * 1024 // 16)
  end, 10 * 1024 * 1024)
end

function modes.bigtbl(iters)
  big(iters, function()
    local t = {}
    for i = 1, 100000 do t[i] = i end
    return t
  end, 100000)
end

-- The same loop as baseline.c's PCALL_LOOP.
function modes.pcall(count)
  local ok, err = spawn_thread(function(n, now)
    local f = function(x) return x end
    local g = function() error('x', 0) end
    for i = 1, n // 10 do pcall(f, i) pcall(g) end
    local t0 = now()
    for i = 1, n do pcall(f, i) end
    local t1 = now()
    for i = 1, n // 10 do pcall(g) end
    local t2 = now()
    return (t1 - t0) / n * 1e9, (t2 - t1) / (n // 10) * 1e9
  end, count, now):join()
  report{ns_ok = ok, ns_err = err}
end

function modes.shared_incr(count)
  report{ops_per_s = common.shared_incr(spawn_thread, count)}
end

function modes.shared_rw(count)
  report{ops_per_s = common.shared_rw(spawn_thread, count)}
end

function modes.cond(rounds)
  local c, s = conc.condition(), conc.shared()
  s.turn = 0
  -- each side waits for its turn, takes it, and hands it over
  local function side(me, other, n)
    c:acquire()
    for _ = 1, n do
      while s.turn ~= me do c:wait() end
      s.turn = other
      c:notify()
    end
    c:release()
  end
  local t = spawn_thread(side, 1, 0, rounds)
  local t0 = now()
  side(0, 1, rounds)
  t:join()
  report{us_per_rt = (now() - t0) / rounds * 1e6}
end

-- A value that is already there, taken with conc.select from a list of
-- 8 channels (the 5th ready) or with the channel's own recv.
local function take(count, how)
  local chans = {}
  for i = 1, 8 do chans[i] = conc.channel(1) end
  local ch = chans[5]
  for i = 1, 1000 do ch:send(i) how(chans, ch) end
  local t0 = now()
  for i = 1, count do
    ch:send(i)
    local v = how(chans, ch)
    if v ~= i then error("wrong value") end
  end
  return (now() - t0) / count * 1e9
end

function modes.select8(count)
  report{ns_per_op = take(count, function(chans)
    local _, v = conc.select(chans)
    return v
  end)}
end

function modes.recv1(count)
  report{ns_per_op = take(count, function(_, ch) return ch:recv() end)}
end

function modes.rlock(count)
  local r = conc.rlock()
  for _ = 1, 1000 do r:acquire() r:release() end
  local t0 = now()
  for _ = 1, count do r:acquire() r:release() end
  report{ns_per_pair = (now() - t0) / count * 1e9}
end

function modes.timers(count)
  collectgarbage()
  local rss0 = vmrss_kb()
  local t0 = now()
  local ts = {}
  for i = 1, count do ts[i] = conc.timer(0.5 + (i % 1000) * 1e-4) end
  local each = (vmrss_kb() - rss0) * 1024 / count
  for i = 1, count do assert(ts[i]:wait(10), "a timer did not fire") end
  report{bytes_each = each, s = now() - t0}
end

function modes.imap_threads(count)
  local p = require("conc.pool").threads(2)
  local incr = function(x) return x + 1 end
  for _ in p:imap_unordered(incr, {1, 2, 3, 4, 5, 6, 7, 8}, {chunksize = 1}) do end
  local list = {}
  for i = 1, count do list[i] = i end
  local t0, sum = now(), 0
  for _, v in p:imap_unordered(incr, list, {chunksize = 1}) do sum = sum + v end
  local dt = now() - t0
  p:close()
  assert(sum == count * (count + 1) // 2 + count, "wrong results")
  report{items_per_s = count / dt}
end

local defaults = {spawn = 1000, cpu = 60000000, idle = 1000, chan = 200000,
                  pingpong = 20000, bigstr = 15, bigtbl = 15, pcall = 3000000,
                  shared_incr = 400000, shared_rw = 400000, cond = 20000,
                  rlock = 2000000, timers = 10000, imap_threads = 20000,
                  select8 = 500000, recv1 = 500000}
if not modes[mode] then
  io.stderr:write("bench_threads.lua: unknown mode ", tostring(mode), "\n")
  os.exit(2)
end
modes[mode](n or defaults[mode])
