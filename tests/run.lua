-- tests/run.lua: runs the suite and prints "N passed, N failed" last.
--
--   conclua tests/run.lua [name...]
--
-- Each tests/test_<name>.lua runs in a conclua process of its own, and
-- each C test in $CONCLUA_BUILD/tests/ as a program of its own, with a
-- time limit; a file that crashes or hangs counts as a failure. Names
-- given select the files to run (test_threads.lua: "threads").

local build = os.getenv("CONCLUA_BUILD") or "build"
local san = os.getenv("CONCLUA_SANITIZER")
local exe = arg[-1]
local limit = san and 600 or 240

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function list(cmd)
  local t = {}
  local f = io.popen(cmd)
  for line in f:lines() do t[#t + 1] = line end
  f:close()
  table.sort(t)
  return t
end

local wanted = {}
for i = 1, #arg do wanted[arg[i]] = true end
local function selected(name)
  return next(wanted) == nil or wanted[name]
end

local jobs = {}
for _, path in ipairs(list("ls tests/test_*.lua 2>/dev/null")) do
  local name = path:match("test_(.-)%.lua$")
  if selected(name) then
    jobs[#jobs + 1] = {name = name, cmd = q(exe) .. " " .. q(path)}
  end
end
for _, path in ipairs(list("ls " .. q(build .. "/tests") .. "/test_* 2>/dev/null")) do
  local name = path:match("test_([%w_]+)$")
  if name and selected("c_" .. name) or (name and selected(name)) then
    jobs[#jobs + 1] = {name = "c_" .. name, cmd = q(path)}
  end
end

local passed, failed, skipped, t0 = 0, 0, 0, conc.now()
for _, job in ipairs(jobs) do
  local cmd = string.format("LUA_PATH='tests/lib/?.lua;;' timeout -k 5 %d %s 2>&1",
                            limit, job.cmd)
  local f = io.popen(cmd)
  local p, n, lines, started = 0, 0, {}, conc.now()
  for line in f:lines() do
    if line:match("^ok ") then
      p = p + 1
    elseif line:match("^skip ") then         -- named, with its reason
      skipped = skipped + 1
      print(job.name .. ": " .. line)
    elseif line:match("^not ok ") then
      n = n + 1
      print(job.name .. ": " .. line)
    elseif not line:match("^# %d+ passed") then
      lines[#lines + 1] = line
    end
  end
  local _, how, code = f:close()
  if code ~= 0 and n == 0 then
    n = n + 1
    print(string.format("not ok - %s: exited with %s %s", job.name, how, code))
    for i = math.max(1, #lines - 30), #lines do print("# " .. lines[i]) end
  elseif n > 0 then
    for i = math.max(1, #lines - 30), #lines do print("# " .. lines[i]) end
  end
  print(string.format("%-16s %3d passed, %d failed (%.1fs)", job.name, p, n,
                      conc.now() - started))
  io.stdout:flush()
  passed, failed = passed + p, failed + n
end
print(string.format("(%.1fs)", conc.now() - t0))
if skipped > 0 then print(string.format("%d skipped", skipped)) end
print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
