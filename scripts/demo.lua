-- A short tour: the claims of the article about threads and processes,
-- measured on this machine.       conclua scripts/demo.lua  (make demo)
--
-- The article (Python's multiprocessing vs threading) says: processes cost
-- more memory and more to start and to talk to; threads are cheap but, in
-- Python, only suit I/O-bound work (the GIL runs one thread at a time).
-- conclua threads each have their own Lua state and run in parallel, so
-- here threads suit both kinds of work.

local now = conc.now
local cores = conc.cpu_count()

local function median(xs)
  table.sort(xs)
  return xs[(#xs + 1) // 2]
end

-- Runs f(rounds) a few times; the median time per round, in seconds.
local function timeit(f, rounds, reps)
  local times = {}
  for r = 1, reps or 3 do
    collectgarbage()
    local t0 = now()
    f(rounds)
    times[r] = (now() - t0) / rounds
  end
  return median(times)
end

local function us(s) return string.format("%.0f us", s * 1e6) end
local function kb(k) return string.format("%.0f KB", k) end

-- ------------------------------------------------------------ spawn
local trivial = function() return 1 end
local spawn_thread_cost = timeit(function(n)
  for _ = 1, n do spawn_thread(trivial):join() end
end, 200)
local spawn_process_cost = timeit(function(n)
  for _ = 1, n do spawn_process(trivial):join() end
end, 20)

-- ------------------------------------------------------------ memory
local function rss_kb() return conc._stats().rss_kb end

local function thread_memory(n)
  local ev = conc.event()
  collectgarbage()
  local before = rss_kb()
  local ts = {}
  for i = 1, n do ts[i] = spawn_thread(function() ev:wait() end) end
  conc.sleep(0.2)
  local after = rss_kb()
  ev:set()
  for i = 1, n do ts[i]:join() end
  return (after - before) / n
end

-- A child's own share of memory: its proportional set size (pages it
-- shares with the parent after fork count for a fraction).
local function pss_kb(pid)
  local f = io.open("/proc/" .. pid .. "/smaps_rollup")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return tonumber(text:match("Pss:%s+(%d+)"))
end

local function process_memory(n)
  local ev = conc.event()
  local ps, total, counted = {}, 0, 0
  for i = 1, n do ps[i] = spawn_process(function() ev:wait() end) end
  conc.sleep(0.3)
  for i = 1, n do
    local k = pss_kb(ps[i].pid)
    if k then total, counted = total + k, counted + 1 end
  end
  ev:set()
  for i = 1, n do ps[i]:join() end
  return counted > 0 and total / counted or nil
end

local thread_mem = thread_memory(200)
local process_mem = process_memory(10)

-- ------------------------------------------------------------ messages
local function thread_roundtrip(n)
  local ping, pong = conc.channel(), conc.channel()
  local t = spawn_thread(function()
    for v in ping:iter() do pong:send(v) end
  end)
  local cost = timeit(function(k)
    for i = 1, k do ping:send(i) pong:recv() end
  end, n)
  ping:close()
  t:join()
  return cost
end

local function process_roundtrip(n)
  local a, b = conc.pipe()
  local p = spawn_process(function()
    for v in b:iter() do b:send(v) end
  end)
  local cost = timeit(function(k)
    for i = 1, k do a:send(i) a:recv() end
  end, n)
  a:close()
  p:join()
  b:close()
  return cost
end

local rt_thread = thread_roundtrip(2000)
local rt_process = process_roundtrip(500)

-- ------------------------------------------------------------ work
-- CPU-bound: sums of squares over ranges, in 4 pieces.
local function cpu_piece(a, b)
  local s = 0
  for i = a, b do s = (s + i * i) % 1000000007 end
  return s
end

local N, PIECES = 8000000, 4

local function pieces()
  local out, step = {}, N // PIECES
  for k = 0, PIECES - 1 do out[#out + 1] = {k * step + 1, (k + 1) * step} end
  return out
end

-- I/O-bound: 8 tasks that each wait 100 ms (a request, a disk read...).
local IO_TASKS, IO_WAIT = 8, 0.1
local function io_task() conc.sleep(IO_WAIT) return 1 end

local function serial(job)
  local t0 = now()
  if job == "cpu" then
    for _, r in ipairs(pieces()) do cpu_piece(r[1], r[2]) end
  else
    for _ = 1, IO_TASKS do io_task() end
  end
  return now() - t0
end

local function parallel(job, spawn)
  local t0 = now()
  local ws = {}
  if job == "cpu" then
    for _, r in ipairs(pieces()) do ws[#ws + 1] = spawn(cpu_piece, r[1], r[2]) end
  else
    for _ = 1, IO_TASKS do ws[#ws + 1] = spawn(io_task) end
  end
  for _, w in ipairs(ws) do w:join() end
  return now() - t0
end

local results = {}
for _, job in ipairs({"cpu", "io"}) do
  local s = serial(job)
  results[job] = {serial = s, threads = parallel(job, spawn_thread),
                  processes = parallel(job, spawn_process)}
end

-- ------------------------------------------------------------ report
local function row(name, a, b)
  print(string.format("  %-28s %14s %14s", name, a, b))
end

print(string.format("conclua demo: threads and processes on this machine (%d cores)\n", cores))
row("", "threads", "processes")
row("spawn + join", us(spawn_thread_cost), us(spawn_process_cost))
row("memory per idle worker", kb(thread_mem), process_mem and kb(process_mem) or "n/a")
row("message round trip", us(rt_thread) .. " (ch)", us(rt_process) .. " (pipe)")
print()

local function speed(job, label)
  local r = results[job]
  print(string.format("  %-28s serial %.2fs | threads %.2fs (%.1fx) | processes %.2fs (%.1fx)",
                      label, r.serial, r.threads, r.serial / r.threads,
                      r.processes, r.serial / r.processes))
end
speed("cpu", "CPU-bound (4 pieces)")
speed("io", "I/O-bound (8 waits of 100 ms)")
print()

local cpu, io = results.cpu, results.io
local lines = {}
lines[#lines + 1] = string.format(
  "Processes cost %.0fx more to start and %.0fx more memory, and a message to one " ..
  "costs %.1fx a channel message to a thread.",
  spawn_process_cost / spawn_thread_cost,
  process_mem and process_mem / thread_mem or 0, rt_process / rt_thread)
if cores > 1 then
  lines[#lines + 1] = string.format(
    "CPU-bound work: threads %.1fx and processes %.1fx faster than serial. Unlike " ..
    "Python's, conclua threads run Lua in parallel (a state each, no global lock), " ..
    "so threads suit CPU-bound work too, at a fraction of the cost.",
    cpu.serial / cpu.threads, cpu.serial / cpu.processes)
else
  lines[#lines + 1] = "One core here: CPU-bound work cannot go faster in parallel."
end
lines[#lines + 1] = string.format(
  "I/O-bound work: threads %.1fx and processes %.1fx faster than serial; threads " ..
  "are the cheaper way to wait in parallel.", io.serial / io.threads,
  io.serial / io.processes)
lines[#lines + 1] =
  "Use processes for isolation: a crash, a leak or os.exit in a child cannot harm " ..
  "the parent, and a fork starts from the parent's state."
for _, l in ipairs(lines) do print(l) end
