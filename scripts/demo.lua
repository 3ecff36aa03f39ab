-- A short tour: the claims of the article about threads and processes,
-- measured on this machine.       conclua scripts/demo.lua  (make demo)
--
-- The article (Python's multiprocessing vs threading) says: processes cost
-- more memory and more to start and to talk to; threads are cheap but, in
-- Python, only suit I/O-bound work (the GIL runs one thread at a time).
-- conclua threads each have their own Lua state and run in parallel.
-- Every conclusion it prints is derived from the numbers of the run that
-- prints it, and says so when two figures are within this run's noise.

local now = conc.now
local cores = conc.cpu_count()

local function median(xs)
  table.sort(xs)
  return xs[(#xs + 1) // 2]
end

-- A measure: the median of several runs, and the lowest and highest (the
-- noise of this machine right now); of five runs or more, the fastest
-- and the slowest are left out of that range, so that one run that the
-- machine stalled does not make two figures look alike.
local function measure(times)
  table.sort(times)
  local cut = #times >= 5 and 1 or 0
  return {med = median(times), lo = times[1 + cut], hi = times[#times - cut]}
end

-- Runs f(rounds) a few times: the time per round, in seconds.
local function timeit(f, rounds, reps)
  local times = {}
  for r = 1, reps or 5 do
    collectgarbage()
    local t0 = now()
    f(rounds)
    times[r] = (now() - t0) / rounds
  end
  return measure(times)
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
  local function rounds(k)
    for i = 1, k do ping:send(i) pong:recv() end
  end
  rounds(200)          -- warm: the echo thread started, the waits learned
  local cost = timeit(rounds, n)
  ping:close()
  t:join()
  return cost
end

local function process_roundtrip(n)
  local a, b = conc.pipe()
  local p = spawn_process(function()
    for v in b:iter() do b:send(v) end
  end)
  local function rounds(k)
    for i = 1, k do a:send(i) a:recv() end
  end
  rounds(200)          -- warm, as for threads
  local cost = timeit(rounds, n)
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

local N, PIECES = 24000000, 4

local function pieces()
  local out, step = {}, N // PIECES
  for k = 0, PIECES - 1 do out[#out + 1] = {k * step + 1, (k + 1) * step} end
  return out
end

-- I/O-bound: 8 tasks that each wait 100 ms (a request, a disk read...).
local IO_TASKS, IO_WAIT = 8, 0.1
local function io_task() conc.sleep(IO_WAIT) return 1 end

local function serial_once(job)
  local t0 = now()
  if job == "cpu" then
    for _, r in ipairs(pieces()) do cpu_piece(r[1], r[2]) end
  else
    for _ = 1, IO_TASKS do io_task() end
  end
  return now() - t0
end

local function parallel_once(job, spawn)
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

-- Each way three times, interleaved, so that a slow moment of the machine
-- falls on all three alike.
local REPS = 3
local results = {}
for _, job in ipairs({"cpu", "io"}) do
  local t = {serial = {}, threads = {}, processes = {}}
  for r = 1, REPS do
    t.serial[r] = serial_once(job)
    t.threads[r] = parallel_once(job, spawn_thread)
    t.processes[r] = parallel_once(job, spawn_process)
  end
  results[job] = {serial = measure(t.serial), threads = measure(t.threads),
                  processes = measure(t.processes)}
end

-- ------------------------------------------------------------ report
-- Every sentence below is derived from the numbers of this run: two
-- measures whose ranges (lowest to highest run) overlap are "about the
-- same", whatever their medians say.
local function apart(a, b)
  return a.hi < b.lo or b.hi < a.lo
end

-- "3.2x more" when a costs more than b beyond the noise, "3.2x less" when
-- less, else "about the same".
local function compare(a, b)
  if not apart(a, b) then return "about the same (within noise)", 0 end
  if a.med > b.med then return string.format("%.1fx more", a.med / b.med), 1 end
  return string.format("%.1fx less", b.med / a.med), -1
end

local function exact(x) return {med = x, lo = x, hi = x} end

local function row(name, a, b)
  print(string.format("  %-28s %16s %16s", name, a, b))
end

local function us(m)
  local x = m.med * 1e6
  return string.format(x < 10 and "%.1f us" or "%.0f us", x)
end
local function kb(k) return string.format("%.0f KB", k) end
local function secs(m) return string.format("%.2f s", m.med) end

print(string.format("conclua demo: threads and processes on this machine (%d cores)\n", cores))
row("", "threads", "processes")
row("spawn + join", us(spawn_thread_cost), us(spawn_process_cost))
row("memory per idle worker", kb(thread_mem), process_mem and kb(process_mem) or "n/a")
row("message round trip", us(rt_thread) .. " (ch)", us(rt_process) .. " (pipe)")
for _, job in ipairs({"cpu", "io"}) do
  local r = results[job]
  row(job == "cpu" and "CPU-bound, 4 pieces" or "I/O-bound, 8 waits of 100 ms",
      string.format("%s (%.1fx)", secs(r.threads), r.serial.med / r.threads.med),
      string.format("%s (%.1fx)", secs(r.processes), r.serial.med / r.processes.med))
end
print(string.format("  (serial: CPU-bound %s, I/O-bound %s; (Nx): faster than serial;",
                    secs(results.cpu.serial), secs(results.io.serial)))
print(string.format("   medians of %d to 5 runs, memory measured once)\n", REPS))

-- The article's claims, each with the two costs as bars (longer: costs
-- more; each row scaled to its larger cost) and what this run says.
local claims = {
  {"processes cost more to start", spawn_thread_cost, spawn_process_cost},
  {"processes use more memory", exact(thread_mem), process_mem and exact(process_mem)},
  {"talking to a process costs more", rt_thread, rt_process},
  {"CPU-bound: only processes help", results.cpu.threads, results.cpu.processes},
  {"I/O-bound: threads are enough", results.io.threads, results.io.processes},
}
local WIDTH = 20
local function bar(x, top)
  local n = math.max(1, math.floor(WIDTH * x / top + 0.5))
  return string.rep("#", n) .. string.rep(" ", WIDTH - n)
end
print("The article's claims, measured (bars: what each costs, time or memory; longer costs more)")
print(string.format("  %-32s %-22s %-22s %s", "claim", "threads", "processes", "here"))
local verdicts = {}
for k, c in ipairs(claims) do
  local name, t, p = c[1], c[2], c[3]
  if p == nil then
    print(string.format("  %-32s %-22s %-22s %s", name, bar(1, 1), "", "not measured"))
  else
    local top = math.max(t.med, p.med)
    local words, sign = compare(p, t)
    local holds
    if k <= 3 then          -- processes cost more
      holds = sign > 0 and "holds: processes " .. words
              or sign == 0 and "no difference here" or "does not hold: processes " .. words
    elseif k == 4 then      -- threads would not help CPU-bound work
      local speedup = results.cpu.serial.med / t.med
      holds = (apart(t, results.cpu.serial) and t.med < results.cpu.serial.med)
              and string.format("does not hold: threads %.1fx faster than serial", speedup)
              or "holds here: threads no faster than serial"
    else                    -- threads are enough for waiting
      holds = sign >= 0 and "holds: threads as fast or faster"
              or "does not hold: processes " .. words:gsub("less", "faster")
    end
    verdicts[k] = holds
    print(string.format("  %-32s %-22s %-22s %s", name, bar(t.med, top), bar(p.med, top), holds))
  end
end
print()

-- "cost 8.6x more to start than" / "cost about as much to start as" (the
-- table above says "no difference here" for the same)
local function costs(a, b, what)
  local words, sign = compare(a, b)
  if sign == 0 then return "cost about as much " .. what .. " as" end
  return "cost " .. words .. " " .. what .. " than"
end

-- "were 1.8x faster than" / "were about as fast as (within noise)"
local function pace(a, b)
  if not apart(a, b) then return "were about as fast as (within noise)" end
  local r = math.max(a.med, b.med) / math.min(a.med, b.med)
  local how = r < 1.05 and "slightly" or string.format("%.1fx", r)
  return "were " .. how .. (a.med < b.med and " faster than" or " slower than")
end

local lines = {}
lines[#lines + 1] = string.format(
  "On this run a process %s a thread, %s, and a message to it %s a channel " ..
  "message to a thread.",
  costs(spawn_process_cost, spawn_thread_cost, "to start"),
  process_mem and costs(exact(process_mem), exact(thread_mem), "in memory") ..
    " a thread" or "its memory was not measured",
  costs(rt_process, rt_thread, ""):gsub("  ", " "))
if cores > 1 then
  local cpu = results.cpu
  lines[#lines + 1] = string.format(
    "CPU-bound work ran %.1fx faster than serial on threads and %.1fx on " ..
    "processes: threads %s processes. conclua threads run Lua in parallel " ..
    "(a state each, no global lock), unlike Python's.",
    cpu.serial.med / cpu.threads.med, cpu.serial.med / cpu.processes.med,
    pace(cpu.threads, cpu.processes))
else
  lines[#lines + 1] = "One core here: CPU-bound work cannot go faster in parallel."
end
local io = results.io
lines[#lines + 1] = string.format(
  "I/O-bound work ran %.1fx faster than serial on threads and %.1fx on " ..
  "processes: threads %s processes.",
  io.serial.med / io.threads.med, io.serial.med / io.processes.med,
  pace(io.threads, io.processes))
lines[#lines + 1] =
  "Processes isolate: a crash, a leak or os.exit in a child cannot harm " ..
  "the parent, and a fork starts from the parent's state."
for _, l in ipairs(lines) do print(l) end
