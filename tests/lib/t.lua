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

return T
