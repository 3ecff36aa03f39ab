-- tests/lib/t.lua: the little harness every tests/test_*.lua uses.
--
--   local T = require "t"
--   T.test("name", function() T.eq(1 + 1, 2) end)
--   T.done()
--
-- Each test prints "ok - name" or "not ok - name: why". After each test
-- of threads or processes the harness checks that no fd, child process or
-- OS thread was left behind (T.noleaks = false turns that off for a file).

local T = {noleaks = true}
local passed, failed = 0, 0
local only = os.getenv("CONCLUA_ONLY")

local function fmt(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

function T.eq(got, want, what)
  if got ~= want and not (got ~= got and want ~= want) then
    error((what and what .. ": " or "") .. "expected " .. fmt(want) ..
          ", got " .. fmt(got), 2)
  end
end

function T.ok(v, what)
  if not v then error(what or "expected a true value", 2) end
  return v
end

-- Calls f(...) and expects an error whose message contains 'pattern'
-- (a plain substring). Returns the message.
function T.raises(pattern, f, ...)
  local ok, err = pcall(f, ...)
  if ok then error("expected an error matching " .. fmt(pattern), 2) end
  local msg = type(err) == "string" and err or tostring(err)
  if pattern and not msg:find(pattern, 1, true) then
    error("expected an error matching " .. fmt(pattern) .. ", got " ..
          fmt(msg), 2)
  end
  return err
end

-- Deep equality for plain tables.
function T.same(a, b, path)
  path = path or "value"
  if type(a) ~= type(b) then
    error(path .. ": expected " .. type(b) .. ", got " .. type(a), 2)
  end
  if type(a) ~= "table" then
    if a ~= b and not (a ~= a and b ~= b) then
      error(path .. ": expected " .. fmt(b) .. ", got " .. fmt(a), 2)
    end
    return
  end
  for k, v in pairs(b) do T.same(a[k], v, path .. "." .. tostring(k)) end
  for k in pairs(a) do
    if b[k] == nil then error(path .. ": unexpected key " .. tostring(k), 2) end
  end
end

-- What a clean process looks like between tests.
local tsan = os.getenv("CONCLUA_SANITIZER") == "tsan"
local function census()
  local s = conc._stats()
  -- ThreadSanitizer runs a background thread of its own
  return s.fds, s.children, s.threads - s.idle - s.reaper - 1 - (tsan and 1 or 0)
end

-- Waits (up to 5 s) for leftovers to settle: workers finishing, the
-- reaper reaping, collected handles releasing their fds.
local function leaks(fd0)
  local deadline = conc.now() + 5
  local fds, children, threads
  repeat
    collectgarbage()
    collectgarbage()
    fds, children, threads = census()
    if fds <= fd0 and children == 0 and threads <= 0 then return nil end
    conc.sleep(0.01)
  until conc.now() > deadline
  return string.format("leaked: %d fds, %d children, %d threads",
                       fds - fd0, children, threads)
end

-- A state keeps an eventfd for waits that poll fds (made on first use):
-- make it now, so it is not counted as a leak of the first such test.
-- (The timeout is long enough that select gets past its spinning and
-- polls even on a slow sanitizer build.)
do
  local a, b = conc.pipe()
  conc.select({a}, 0.05)
  a:close()
  b:close()
end

function T.test(name, fn)
  if only and not name:find(only, 1, true) then return end
  local fd0 = census()
  local ok, err = xpcall(fn, debug.traceback)
  if ok and T.noleaks then
    local l = leaks(fd0)
    if l then ok, err = false, l end
  end
  if ok then
    passed = passed + 1
    print("ok - " .. name)
  else
    failed = failed + 1
    print("not ok - " .. name .. ": " .. tostring(err):gsub("\n", "\n# "))
  end
  io.stdout:flush()
end

-- A test that cannot run here: named with the reason, counted apart by
-- run.lua (never as passed).
function T.skip(name, why)
  if only and not name:find(only, 1, true) then return end
  print("skip - " .. name .. ": " .. why)
  io.stdout:flush()
end

function T.done()
  print(string.format("# %d passed, %d failed", passed, failed))
  io.stdout:flush()
  os.exit(failed == 0 and 0 or 1)
end

-- The conclua binary running these tests, for tests that start it.
T.conclua = arg and arg[-1] or "conclua"
T.build = os.getenv("CONCLUA_BUILD") or "build"
T.sanitizer = os.getenv("CONCLUA_SANITIZER")

-- Runs a shell command; returns its output, and its exit status.
function T.sh(cmd)
  local f = assert(io.popen(cmd .. " 2>&1", "r"))
  local out = f:read("a")
  local _, _, code = f:close()
  return out, code
end

-- Quotes a string for the shell.
function T.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Reads a whole file; nil and the error when it cannot be opened.
function T.readfile(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("a")
  f:close()
  return s
end

-- Writes a temporary file; returns its path.
function T.tmpfile(content, suffix)
  local path = os.tmpname() .. (suffix or ".lua")
  local f = assert(io.open(path, "w"))
  f:write(content)
  f:close()
  return path
end

-- Lua source that defines ready(...): prints "ready <own pid> ..." for
-- T.ctrl_c.
T.READY = [[
  local function ready(...)
    local me = assert(io.open("/proc/self/stat")):read("n")
    print("ready " .. table.concat({me, ...}, " "))
    io.stdout:flush()
  end
]]

-- Runs the shell command cmd (with 'input' on its stdin if given) in the
-- background, as a user's Ctrl-C would find it: once its output shows
-- "ready <pid> [<pid>...]" (the script prints its own pid first), sends
-- the first pid SIGINT 'times' times (default 1; each after the first
-- once the output says "stopping") and waits (up to 30 s) for cmd to
-- end. Returns the output (stdout and stderr), the exit status (nil if it
-- did not end: it is then killed), the pids, and the seconds from the
-- first SIGINT to the end.
function T.ctrl_c(cmd, input, times)
  local out_file = os.tmpname()
  local rc_file = out_file .. ".rc"
  local in_file = input and T.tmpfile(input, ".in") or "/dev/null"
  os.execute(string.format("(%s < %s > %s 2>&1; echo $? > %s) &", cmd,
                           T.q(in_file), T.q(out_file), T.q(rc_file)))
  local function output() return T.readfile(out_file) or "" end
  local t0 = conc.now()
  local pids
  repeat
    conc.sleep(0.02)
    local l = output():match("ready ([%d ]+)")
    if l then
      pids = {}
      for pid in l:gmatch("%d+") do pids[#pids + 1] = pid end
    end
  until pids or conc.now() - t0 > 30 or T.readfile(rc_file)
  if not pids then
    os.remove(out_file)
    os.remove(rc_file)
    if input then os.remove(in_file) end
    error("the command never got ready:\n" .. output(), 2)
  end
  t0 = conc.now()
  for i = 1, times or 1 do
    if i > 1 then
      local t1 = conc.now()
      repeat conc.sleep(0.02) until output():find("stopping") or conc.now() - t1 > 10
    end
    os.execute("kill -INT " .. pids[1])
  end
  local rc
  repeat
    conc.sleep(0.02)
    rc = tonumber(T.readfile(rc_file) or "")
  until rc or conc.now() - t0 > 30
  local dt = conc.now() - t0
  local text = output()
  if not rc then os.execute("kill -KILL " .. pids[1] .. " 2>/dev/null") end
  os.remove(out_file)
  os.remove(rc_file)
  if input then os.remove(in_file) end
  return text, rc, pids, dt
end

return T
