-- tests/bench/bench_mpi.lua: pool.mpi's figures, run under MPI:
--
--   mpirun -np 4 conclua -l conc.mpi bench_mpi.lua MODE [N]
--
-- Rank 0 runs this; the other ranks serve as pool workers. Modes (what
-- they print in the RESULT line):
--   map N         pool.mpi():map over N trivial items, default options   items_per_s
--   map100 N      the same with chunksize 100                           items_per_s
--   latency N     N submit -> result, one after the other               us_per_task
--   idle S        CPU of an idle worker rank over S seconds (%)          pct_core
-- Without conc.mpi it prints UNAVAILABLE (run.sh then says n/a).
local common = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local report = common.report
local now = conc.now

local mode, n = arg[1], tonumber(arg[2])
local ok, mpi = pcall(require, "conc.mpi")
if not ok then
  print("UNAVAILABLE " .. tostring(mpi):gsub("\n.*", ""))
  os.exit(0)
end
local pool = require "conc.pool"
local p = pool.mpi()

local function incr(x) return x + 1 end

local function map_rate(count, opts)
  p:map(incr, {1, 2, 3, 4, 5, 6, 7, 8}, opts)
  local list = {}
  for i = 1, count do list[i] = i end
  local t0 = now()
  local out = p:map(incr, list, opts)
  local dt = now() - t0
  assert(out.n == count and out[count] == count + 1, "wrong results")
  report{items_per_s = count / dt}
end

local modes = {}
function modes.map(count) map_rate(count or 100000, nil) end
function modes.map100(count) map_rate(count or 100000, {chunksize = 100}) end

function modes.latency(count)
  count = count or 2000
  for _ = 1, 50 do p:submit(incr, 1):result() end
  local t0 = now()
  for i = 1, count do assert(p:submit(incr, i):result() == i + 1) end
  report{us_per_task = (now() - t0) / count * 1e6}
end

local function cpu_seconds(pid)
  local f = assert(io.open("/proc/" .. pid .. "/stat"))
  local s = f:read("a")
  f:close()
  local t = {}
  for w in s:gsub("^.-%) ", ""):gmatch("%S+") do t[#t + 1] = w end
  return (tonumber(t[12]) + tonumber(t[13])) / 100      -- utime + stime
end

function modes.idle(seconds)
  seconds = seconds or 3
  local pid = p:submit(function() return io.open("/proc/self/stat"):read("n") end):result()
  local c0, t0 = cpu_seconds(pid), now()
  conc.sleep(seconds)
  report{pct_core = 100 * (cpu_seconds(pid) - c0) / (now() - t0)}
end

if not modes[mode] then
  io.stderr:write("bench_mpi.lua: unknown mode ", tostring(mode), "\n")
  os.exit(2)
end
modes[mode](n)
p:close()
