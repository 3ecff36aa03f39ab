-- tests/bench/common.lua: what bench_threads.lua and bench_procs.lua share
-- (loaded with dofile from the directory of the script).
local M = {}

-- Prints the line run.sh reads: "RESULT key=value ...", keys sorted.
function M.report(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = string.format("%s=%.3f", k, t[k]) end
  print("RESULT " .. table.concat(out, " "))
end

-- Messages per second: count small integers sent through q by a worker
-- that spawn starts, received here. The worker waits for a go on start
-- first, so that its start-up is not timed.
function M.stream(spawn, q, start, count)
  local worker = spawn(function()
    start:recv()
    for i = 1, count do q:send(i) end
  end)
  local t0 = conc.now()
  start:send(true)
  local sum = 0
  for _ = 1, count do sum = sum + q:recv() end
  local dt = conc.now() - t0
  worker:join()
  assert(sum == count * (count + 1) // 2, "lost messages")
  return count / dt
end

-- Runs work(s, w, k) on two workers (spawn: spawn_thread or spawn_process)
-- at once, k = count // 2 each, on one conc.shared s; the workers wait
-- for a go on an event first, so their start-up is not timed. Returns the
-- seconds from the go to the end of both, and s.
local function two_workers(spawn, count, work)
  local s, go = conc.shared(), conc.event()
  local k = count // 2
  local ws = {}
  for w = 1, 2 do
    ws[w] = spawn(function() go:wait() work(s, w, k) end)
  end
  conc.sleep(0.05)
  local t0 = conc.now()
  go:set()
  for w = 1, 2 do ws[w]:join() end
  return conc.now() - t0, s, 2 * k
end

-- Atomic increments of one key: ops per second.
function M.shared_incr(spawn, count)
  local dt, s, n = two_workers(spawn, count, function(s, _, k)
    for _ = 1, k do s:incr("n") end
  end)
  assert(s.n == n, "lost increments")
  return n / dt
end

-- Stores and reads of 64 keys per worker (each store and each read is an
-- op): ops per second.
function M.shared_rw(spawn, count)
  local dt, s, n = two_workers(spawn, count, function(s, w, k)
    local keys = {}
    for i = 0, 63 do keys[i] = "w" .. w .. "k" .. i end
    for i = 1, k // 2 do
      local key = keys[i % 64]
      s[key] = i
      if s[key] ~= i then error("wrong value read back") end
    end
  end)
  assert(s.w1k1 ~= nil and s.w2k1 ~= nil, "lost stores")
  return n / dt
end

return M
