-- tests/bench/bench_procs.lua: conclua's side of the process benchmarks.
--
--   conclua tests/bench/bench_procs.lua MODE [N]
--
-- Prints one line "RESULT key=value ..." for run.sh, or
-- "UNAVAILABLE <what>" when the feature the mode measures does not exist
-- in this build (run.sh shows that row as not implemented).
--   spawn N       spawn_process(trivial function):join()          us_per_op
--   pipebw MB     MB strings of 1 MiB from a child over conc.pipe  mb_per_s
--   pipepp R      R round trips of an integer to a child that echoes it
--                 over conc.pipe                                  us_per_rt
--   queue M       M small integers from a child over conc.queue   msgs_per_s
--   queue1k M     M strings of 1 KiB from a child over conc.queue msgs_per_s
--   submit_threads N    N p:submit(f, i):result() round trips, one
--                       at a time, on pool.threads(2)            us_per_rt
--   submit_processes N  the same on pool.processes(2)            us_per_rt
--   pool_processes M   pool.processes(2):map over M trivial items items_per_s
--   pool_threads M     pool.threads(2):map, the same              items_per_s
--   imap_processes M   pool.processes(2):imap_unordered, the same items_per_s
--   shared_incr N  N s:incr("n") on a conc.shared, split over two
--                  processes                                    ops_per_s
--   shared_rw N    N stores and reads (s[k] = i; s[k]) of 64 keys per
--                  process, split over two processes            ops_per_s

local mode, n = arg[1], tonumber(arg[2])
local now = conc.now

local common = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local report = common.report

-- Stops the script with UNAVAILABLE when calling f fails the way a missing
-- feature does; returns f's results otherwise.
local function need(what, f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] then
    io.stderr:write("bench_procs.lua: ", what, ": ", tostring(r[2]), "\n")
    print("UNAVAILABLE " .. what)
    os.exit(0)
  end
  return table.unpack(r, 2, r.n)
end

local modes = {}

function modes.spawn(count)
  local function trivial() return 1 end
  for _ = 1, 5 do spawn_process(trivial):join() end
  local t0 = now()
  for _ = 1, count do
    if spawn_process(trivial):join() ~= 1 then error("wrong result") end
  end
  report{us_per_op = (now() - t0) / count * 1e6}
end

function modes.pipebw(mb)
  local a, b = need("conc.pipe", conc.pipe)
  local chunk = string.rep("x", 1024 * 1024)
  local t0 = now()
  local child = spawn_process(function()
    for _ = 1, mb do b:send(chunk) end
  end)
  local got = 0
  for _ = 1, mb do got = got + #a:recv() end
  local dt = now() - t0
  child:join()
  assert(got == mb * 1024 * 1024, "lost bytes")
  report{mb_per_s = mb / dt}
end

function modes.pipepp(rounds)
  local a, b = need("conc.pipe", conc.pipe)
  local warm = 200
  local echo = spawn_process(function()
    for v in b:iter() do b:send(v) end
  end)
  for i = 1, warm do a:send(i) a:recv() end
  local t0 = now()
  for i = 1, rounds do
    a:send(i)
    if a:recv() ~= i then error("wrong echo") end
  end
  report{us_per_rt = (now() - t0) / rounds * 1e6}
  a:close()
  echo:join()
end

function modes.queue(count)
  local q = need("conc.queue", conc.queue)
  report{msgs_per_s = common.stream(spawn_process, q, conc.queue(), count)}
end

function modes.queue1k(count)
  local q = need("conc.queue", conc.queue)
  local start = conc.queue()
  local worker = spawn_process(function()
    local msg = string.rep("x", 1023) .. "\n"
    start:recv()
    for _ = 1, count do q:send(msg) end
  end)
  local t0 = now()
  start:send(true)
  local bytes = 0
  for _ = 1, count do bytes = bytes + #q:recv() end
  local dt = now() - t0
  worker:join()
  assert(bytes == count * 1024, "lost messages")
  report{msgs_per_s = count / dt}
end

local function incr(x) return x + 1 end

-- One task at a time: the latency a caller of submit(...):result() feels.
local function submit_rt(kind, count)
  local pool = need("conc.pool", require, "conc.pool")
  local p = pool[kind](2)
  for i = 1, 50 do assert(p:submit(incr, i):result() == i + 1) end
  local t0 = now()
  for i = 1, count do
    if p:submit(incr, i):result() ~= i + 1 then error("wrong result") end
  end
  local dt = now() - t0
  p:close()
  report{us_per_rt = dt / count * 1e6}
end

function modes.submit_threads(count) submit_rt("threads", count) end
function modes.submit_processes(count) submit_rt("processes", count) end

local function pool_rate(kind, count)
  local pool = need("conc.pool", require, "conc.pool")
  local p = pool[kind](2)
  p:map(incr, {1, 2, 3, 4, 5, 6, 7, 8}, {chunksize = 1})
  local list = {}
  for i = 1, count do list[i] = i end
  local t0 = now()
  local out = p:map(incr, list, {chunksize = 1})
  local dt = now() - t0
  p:close()
  assert(#out == count and out[count] == count + 1, "wrong results")
  report{items_per_s = count / dt}
end

function modes.imap_processes(count)
  local pool = need("conc.pool", require, "conc.pool")
  local p = pool.processes(2)
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

function modes.pool_processes(count) pool_rate("processes", count) end
function modes.pool_threads(count) pool_rate("threads", count) end

function modes.shared_incr(count)
  report{ops_per_s = common.shared_incr(spawn_process, count)}
end

function modes.shared_rw(count)
  report{ops_per_s = common.shared_rw(spawn_process, count)}
end

local defaults = {spawn = 300, pipebw = 256, queue = 50000,
                  pool_processes = 20000, pool_threads = 20000, imap_processes = 20000,
                  shared_incr = 200000, shared_rw = 200000, queue1k = 50000,
                  submit_threads = 5000, submit_processes = 5000}
if not modes[mode] then
  io.stderr:write("bench_procs.lua: unknown mode ", tostring(mode), "\n")
  os.exit(2)
end
modes[mode](n or defaults[mode])
