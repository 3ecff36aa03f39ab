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

return M
