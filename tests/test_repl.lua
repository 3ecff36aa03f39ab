-- The REPL (REPL.md), driven through a real terminal: each test starts
-- conclua in a tmux session of its own (its own server socket, so that
-- parallel runs never meet), types as a person would with send-keys and
-- reads the screen with capture-pane.
local T = require "t"

local function q(s) return T.q(s) end

local have_tmux = os.execute("command -v tmux >/dev/null 2>&1")
if not have_tmux then
  T.test("tmux is installed (make test-deps)", function()
    error("tmux not found: the REPL tests need it")
  end)
  T.done()
end

local slow = T.sanitizer and 4 or 1
local TIMEOUT = 10 * slow
local pid = assert(io.open("/proc/self/stat")):read("n")
local exe = (T.sh("realpath " .. q(T.conclua)):gsub("%s+$", ""))
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. q(dir)))
local count = 0

local Term = {}
Term.__index = Term

function Term:tmux(args)
  return T.sh("env -u TMUX tmux -L " .. q(self.sock) .. " " .. args)
end

-- Starts conclua in a fresh terminal 100x50. opts.args: command-line
-- arguments; opts.hist: the history file (one per test by default);
-- opts.env: more "VAR=value" words; opts.nohist: leave CONCLUA_HISTORY
-- unset (HOME is the test's directory).
function Term.open(opts)
  opts = opts or {}
  count = count + 1
  local self = setmetatable({}, Term)
  self.sock = string.format("conclua-test-%d-%d", pid, count)
  self.hist = opts.hist or string.format("%s/hist-%d", dir, count)
  local env = "env HOME=" .. q(dir)
  if not opts.nohist then env = env .. " CONCLUA_HISTORY=" .. q(self.hist) end
  if opts.env then env = env .. " " .. opts.env end
  local cmd = string.format('%s %s %s; echo "[exit $?]"; sleep 600', env,
                            q(exe), opts.args or "")
  local out, code = self:tmux("-f /dev/null new-session -d -x 100 -y 50 " ..
                              q(cmd))
  assert(code == 0, "tmux new-session: " .. out)
  self.path = self:tmux("display-message -p '#{socket_path}'"):gsub("%s+$", "")
  local ok, err = pcall(function()
    if opts.ready then self:wait(opts.ready) else self:prompts(1) end
  end)
  if not ok then
    self:close()
    error(err, 2)
  end
  return self
end

function Term:close()
  self:tmux("kill-server")
  if self.path ~= "" then os.remove(self.path) end   -- tmux leaves it
end

-- The screen and its scrollback, trailing blank lines dropped.
function Term:screen()
  local out = self:tmux("capture-pane -p -J -S -2000")
  local lines = {}
  for l in out:gmatch("([^\n]*)\n?") do lines[#lines + 1] = l end
  while #lines > 0 and lines[#lines]:match("^%s*$") do lines[#lines] = nil end
  return table.concat(lines, "\n")
end

-- Waits until the screen shows 'text' (plain) n times (default 1).
function Term:wait(text, n)
  n = n or 1
  local deadline = conc.now() + TIMEOUT
  local s
  repeat
    s = self:screen()
    local found, at = 0, 1
    while true do
      local i, j = s:find(text, at, true)
      if not i then break end
      found, at = found + 1, j + 1
    end
    if found >= n then return s end
    if s:find("\n%[exit %d+%]") and not text:find("[exit", 1, true) then break end
    conc.sleep(0.05)
  until conc.now() > deadline
  error(string.format("%q did not show; the screen:\n%s", text, s), 2)
end

function Term:keys(...)
  local k = {}
  for i = 1, select("#", ...) do k[i] = q((select(i, ...))) end
  self:tmux("send-keys " .. table.concat(k, " "))
end

function Term:type(text)
  self:tmux("send-keys -l " .. q(text))
end

local function isprompt(line)
  line = line:gsub("%s+$", "")
  return line == ">" or line:sub(1, 2) == "> "
end

-- The prompts on screen: lines that start with "> " (or are ">").
local function prompts(s)
  local n = 0
  for line in (s .. "\n"):gmatch("(.-)\n") do
    if isprompt(line) then n = n + 1 end
  end
  return n
end

-- Waits until the screen holds n prompts; returns it.
function Term:prompts(n)
  local deadline = conc.now() + TIMEOUT
  local s
  repeat
    s = self:screen()
    if prompts(s) >= n then return s end
    if s:find("\n%[exit %d+%]") then break end       -- conclua is gone
    conc.sleep(0.05)
  until conc.now() > deadline
  error(string.format("no prompt %d; the screen:\n%s", n, s), 2)
end

-- Ctrl-C until the screen holds n prompts: a Ctrl-C that lands before
-- the typed chunk starts running only clears an empty prompt, so under
-- load it may take another one. Returns the screen.
function Term:interrupt(n)
  local deadline = conc.now() + TIMEOUT
  repeat
    self:keys("C-c")
    local until_ = conc.now() + 1.5 * slow
    repeat
      local s = self:screen()
      if prompts(s) >= n then return s end
      conc.sleep(0.05)
    until conc.now() > until_
  until conc.now() > deadline
  error("Ctrl-C did not bring the prompt back; the screen:\n" .. self:screen(), 2)
end

-- Types a line and Enter, waits for the next prompt, and returns what
-- was printed in between.
function Term:run(line)
  local n = prompts(self:screen())
  self:type(line)
  self:keys("Enter")
  local s = self:prompts(n + 1)
  local lines = {}
  for l in (s .. "\n"):gmatch("(.-)\n") do
    lines[#lines + 1] = (l:gsub("%s+$", ""))
  end
  local last = #lines
  while not isprompt(lines[last]) do last = last - 1 end
  local first = last - 1
  while not isprompt(lines[first]) do first = first - 1 end
  return table.concat(lines, "\n", first + 1, last - 1)
end

-- Runs fn(term) in a fresh terminal, which is closed even on failure.
local function session(opts, fn)
  if fn == nil then opts, fn = {}, opts end
  local term = Term.open(opts)
  local ok, err = xpcall(fn, debug.traceback, term)
  if not ok then
    err = tostring(err) .. "\n-- screen:\n" .. term:screen()
  end
  term:close()
  if not ok then error(err, 0) end
end

local readfile = T.readfile

local function has(s, text)
  T.ok(s:find(text, 1, true), string.format("expected %q in:\n%s", text, s))
end

-- ------------------------------------------------------------ evaluating

T.test("an expression prints its values, a statement runs silently", function()
  session(function(t)
    T.eq(t:run("1 + 41"), "42")
    -- tabs between values: capture-pane shows them as spaces to the stops
    T.eq(t:run('1, "a", nil'), "1       a       nil")
    T.eq(t:run("x = 5"), "")
    T.eq(t:run("x * 2"), "10")
    T.eq(t:run('"top-level strings print as they are"'),
         "top-level strings print as they are")
    T.eq(t:run("print('hi') "), "hi")
  end)
end)

T.test("a statement that ends in return prints its values, as lua5.4", function()
  session(function(t)
    T.eq(t:run("return 1, 2"), "1       2")
    T.eq(t:run("local y = 3; return y"), "3")
    T.eq(t:run("if true then return 'from if' end"), "from if")
    T.eq(t:run("do local t = {n = 1} return t end"), "{n = 1}")
    T.eq(t:run("return nil"), "nil")
    T.eq(t:run("return"), "")
    T.eq(t:run("z = 1"), "")
    t:type("do local a = 20")                -- one chunk on two lines
    t:keys("Enter")
    t:type("return a + 1, 'two lines' end")
    t:keys("Enter")
    t:wait("21      two lines")
  end)
end)

T.test("incomplete input continues on the second prompt", function()
  session(function(t)
    t:type("function f(a)")
    t:keys("Enter")
    t:wait("\n>> ")
    t:type("return a * 2")
    t:keys("Enter")
    t:wait("\n>> ", 2)
    local n = prompts(t:screen())
    t:type("end")
    t:keys("Enter")
    t:prompts(n + 1)
    T.eq(t:run("f(21)"), "42")
    -- an expression may span lines too
    t:type("{1,")
    t:keys("Enter")
    t:wait("\n>> ", 3)
    n = prompts(t:screen())
    t:type("2}")
    t:keys("Enter")
    has(t:prompts(n + 1), "{1, 2}")
  end)
end)

T.test("errors print with a traceback and the REPL goes on", function()
  session(function(t)
    local out = t:run('error("boom")')
    has(out, "stdin:1: boom")
    has(out, "stack traceback:")
    has(out, "in function 'error'")
    out = t:run("local function g() local x = nil; return x.y end; g()")
    has(out, "attempt to index a nil value")
    has(out, "in local 'g'")
    has(t:run("error({code = 7})"), "{code = 7}")
    has(t:run("x = = 1"), "unexpected symbol near '='")
    T.eq(t:run("1 + 1"), "2")
  end)
end)

-- ------------------------------------------------------------ showing

T.test("tables pretty-print: nested, sorted, quoted", function()
  session(function(t)
    T.eq(t:run('{3, 2, 1, b = "x", a = {y = 2, x = 1}, ["k k"] = true, [10] = 0}'),
         '{3, 2, 1, [10] = 0, a = {x = 1, y = 2}, b = "x", ["k k"] = true}')
    T.eq(t:run('{s = "a\\nb\\"c"}'), '{s = "a\\nb\\"c"}')
    T.eq(t:run("{k10 = 1, k9 = 2, k1 = 3}"), "{k1 = 3, k9 = 2, k10 = 1}")
    T.eq(t:run("{}"), "{}")
    -- too long for one line: one entry a line, indented
    local out = t:run('{alpha = string.rep("a", 40), beta = string.rep("b", 40), ' ..
                      'gamma = {1, 2}}')
    T.eq(out, '{\n  alpha = "' .. string.rep("a", 40) .. '",\n' ..
              '  beta = "' .. string.rep("b", 40) .. '",\n' ..
              '  gamma = {1, 2}\n}')
    -- array items after a long one are packed on the lines that follow
    out = t:run('{{a = string.rep("x", 90), b = 1}, 1, 2, {c = 3}}')
    T.eq(out, '{\n  {\n    a = "' .. string.rep("x", 90) .. '",\n    b = 1\n  },\n' ..
              '  1, 2, {c = 3}\n}')
  end)
end)

T.test("cycles are marked, long and deep tables cut", function()
  session(function(t)
    t:run("c = {name = 'c'}; c.self = c")
    T.eq(t:run("c"), '{name = "c", self = <cycle>}')
    -- the same table twice is no cycle
    t:run("s = {1}")
    T.eq(t:run("{s, s}"), "{{1}, {1}}")
    t:run("long = {}; for i = 1, 250 do long[i] = i end")
    local out = t:run("long")
    has(out, "98, 99,")
    T.ok(out:find("%f[%d]100,"), out)
    has(out, "... (150 more)")
    T.ok(not out:find("101", 1, true), "item 101 shown:\n" .. out)
    t:run("d = {}; local x = d; for i = 1, 50 do x.next = {} x = x.next end")
    out = t:run("d")
    has(out, "{...}")
    T.ok(#out < 200, "deep table not cut:\n" .. out)
  end)
end)

T.test("conc handles print something readable", function()
  session(function(t)
    t:run("ch = conc.channel()")
    T.eq(t:run("ch"), "<channel 0 queued>")
    t:run('th = spawn_thread({name = "worker"}, function(c) return c:recv() end, ch)')
    has(t:run("th"), '"worker" running>')
    T.ok(t:run("th"):match('^<thread %d+ "worker" running>$'))
    t:run('p = spawn_process({name = "kid"}, function() return conc.sleep(60) end)')
    T.ok(t:run("p"):match('^<process %d+ "kid" running>$'))
    T.ok(t:run("{th, ch}"):match('^{<thread %d+ "worker" running>, <channel 0 queued>}$'))
    T.ok(t:run("conc.lock(), conc.event()"):match("^<lock unlocked>%s+<event clear>$"))
    t:run("ch:send(5)")
    T.eq(t:run("th:join()"), "5")
    T.ok(t:run("th"):match('^<thread %d+ "worker" done>$'))
    -- (a killed process nobody joined is also reported as a failure)
    T.ok(t:run("p:kill(), p:wait()"):match("^true%s+true\nkid: process %d+ killed by signal 15"))
    T.ok(t:run("p"):match('^<process %d+ "kid" killed>$'))
  end)
end)

-- ------------------------------------------------------------ completion

T.test("tab completes globals, fields and methods", function()
  session(function(t)
    t:type("pri")
    t:keys("Tab")
    t:wait("> print")
    t:keys("C-u")
    t:type("string.for")
    t:keys("Tab")
    t:wait("> string.format")
    t:keys("C-u")
    t:run("ch = conc.channel()")
    t:type("ch:se")
    t:keys("Tab")
    t:wait("> ch:send")
    t:type("(1)")
    t:keys("Enter")
    t:wait("true")
    t:run("th = spawn_thread(function() return 1 end)")
    t:type("th:jo")
    t:keys("Tab")
    t:wait("> th:join")
    t:keys("C-u")
    t:type("th.na")
    t:keys("Tab")
    t:wait("> th.name")
    t:keys("C-u")
    -- several matches: a second Tab lists them
    t:run("box = {apple = 1, apricot = 2, banana = 3}")
    t:type("box.ap")
    t:keys("Tab", "Tab")
    local s = t:wait("apricot")
    has(s, "apple")
    t:keys("C-u")
    -- methods of a table with a metatable, and of a string
    t:run("obj = setmetatable({}, {__index = {greet = function() return 'hi' end}})")
    t:type("obj:gr")
    t:keys("Tab")
    t:wait("> obj:greet")
    t:keys("C-u")
    t:run('str = "abc"')
    t:type("str:up")
    t:keys("Tab")
    t:wait("> str:upper")
    t:keys("C-u")
    t:run("th:join()")
  end)
end)

T.test("tab completes what a call returns, and no metamethods", function()
  session(function(t)
    -- a conc constructor's call: the methods of what it makes, never
    -- the globals (nothing is called to find out)
    t:type("conc.channel():se")
    t:keys("Tab")
    t:wait("> conc.channel():send")
    t:keys("C-u")
    t:type("conc.channel():")
    t:keys("Tab", "Tab")
    local s = t:wait(":recv")
    T.ok(not s:find(":print", 1, true), s)
    t:keys("C-u")
    t:type("spawn_thread(function() end):jo")
    t:keys("Tab")
    t:wait("> spawn_thread(function() end):join")
    t:keys("C-u")
    t:type("x = conc.queue(4):le")
    t:keys("Tab")
    t:wait("> x = conc.queue(4):len")
    t:keys("C-u")
    t:type('("abc"):up')
    t:keys("Tab")
    t:wait('> ("abc"):upper')
    t:keys("C-u")
    -- a Lua function's result is unknown without calling it: nothing
    t:run("f = function() return conc.channel() end")
    t:type("f():")
    t:keys("Tab", "Tab")
    t:type("X")
    s = t:wait("> f():X")
    T.ok(not s:find(":print", 1, true), s)
    t:keys("C-u")
    -- a pool's methods, not its metamethods until "__" is typed
    t:run('pl = require("conc.pool").threads(1)')
    t:type("pl:")
    t:keys("Tab", "Tab")
    s = t:wait("pl:submit")
    T.ok(not s:find("__close", 1, true), s)
    t:keys("C-u")
    t:type("pl:__")
    t:keys("Tab", "Tab")
    t:wait("pl:__close")
    t:keys("C-u")
    t:run("pl:close()")
  end)
end)

-- ------------------------------------------------------------ Ctrl-C

T.test("Ctrl-C interrupts a busy loop, the REPL stays intact", function()
  session(function(t)
    t:run("kept = 42")
    local n = prompts(t:screen())
    t:type("while true do end")
    t:keys("Enter")
    conc.sleep(0.3)
    local s = t:interrupt(n + 1)
    has(s, "interrupted!")
    T.eq(t:run("kept"), "42")
    -- and again: the handler is armed for every evaluation
    n = prompts(t:screen())
    t:type("for i = 1, math.huge do end")
    t:keys("Enter")
    conc.sleep(0.3)
    t:interrupt(n + 1)
    T.eq(t:run("kept + 1"), "43")
  end)
end)

T.test("Ctrl-C interrupts a blocked recv and join", function()
  session(function(t)
    t:run("ch = conc.channel()")
    local n = prompts(t:screen())
    t:type("ch:recv()")
    t:keys("Enter")
    conc.sleep(0.3)
    has(t:interrupt(n + 1), "interrupted!")
    t:run("th = spawn_thread(function(c) return c:recv() end, ch)")
    n = prompts(t:screen())
    t:type("th:join()")
    t:keys("Enter")
    conc.sleep(0.3)
    has(t:interrupt(n + 1), "interrupted!")
    t:run("ch:send('late')")
    T.eq(t:run("th:join()"), "late")
  end)
end)

T.test("Ctrl-C at the prompt clears the line or the pending chunk", function()
  session(function(t)
    local n = prompts(t:screen())
    t:keys("C-c")
    t:prompts(n + 1)
    t:type("half typed")
    t:keys("C-c")
    local s = t:prompts(n + 2)
    has(s, "> half typed^C")
    t:type("function g()")
    t:keys("Enter")
    t:wait(">> ")
    t:keys("C-c")
    t:prompts(n + 3)
    T.eq(t:run("g"), "nil")
    T.eq(t:run("7"), "7")
  end)
end)

T.test("processes started from the REPL do not die of its Ctrl-C", function()
  session(function(t)
    t:run('p = spawn_process(function() conc.sleep(0.5) return "alive" end)')
    t:run('q = spawn_process({start = "spawn"}, function() conc.sleep(0.5) return "too" end)')
    local n = prompts(t:screen())
    t:keys("C-c")
    t:prompts(n + 1)
    T.eq(t:run("p:join()"), "alive")
    T.eq(t:run("q:join()"), "too")
  end)
end)

-- ------------------------------------------------------------ Ctrl-D

T.test("Ctrl-D exits", function()
  session(function(t)
    t:run("x = 1")
    t:keys("C-d")
    local s = t:wait("[exit 0]")
    T.ok(not s:find("waiting for", 1, true))
  end)
end)

T.test("Ctrl-D waits for running workers and says so", function()
  session(function(t)
    t:run('th = spawn_thread({name = "slow"}, function() conc.sleep(1) end)')
    t:run('d = spawn_thread({name = "d", daemon = true}, function() conc.sleep(60) end)')
    t:keys("C-d")
    local s = t:wait("waiting for 1 worker")
    s = s:sub((s:find("waiting for", 1, true)))
    T.ok(s:match('^waiting for 1 worker: thread %d+ "slow"'), s)
    T.ok(not s:find('"d"', 1, true), "daemon listed:\n" .. s)
    t:wait("[exit 0]")
  end)
end)

T.test("Ctrl-C during the exit wait stops the workers", function()
  session(function(t)
    t:run('th = spawn_thread({name = "spin"}, function() while true do end end)')
    t:run('p = spawn_process({name = "nap"}, function() conc.sleep(60) end)')
    t:keys("C-d")
    t:wait("waiting for 2 workers")
    t:keys("C-c")
    local s = t:wait("[exit")
    has(s, "stopping 2 workers")
  end)
end)

T.test("one Ctrl-C at the exit wait: stopped on stderr, status 130", function()
  session(function(t)
    t:run('th = spawn_thread({name = "slow"}, function() local c <close> = ' ..
          'setmetatable({}, {__close = function() io.stderr:write("closed\\n") end}) ' ..
          'conc.sleep(60) end)')
    t:keys("C-d")
    t:wait("waiting for 1 worker")
    t:keys("C-c")
    local s = t:wait("[exit")
    s = s:sub((s:find("waiting for", 1, true)))
    T.ok(s:find('conclua: stopping 1 worker: thread %d+ "slow"\n'), s)
    has(s, "closed")
    has(s, "[exit 130]")
  end)
end)

-- ------------------------------------------------------------ prompts

T.test("_PROMPT and _PROMPT2 are honoured", function()
  session(function(t)
    t:type('_PROMPT = "lua$ "; _PROMPT2 = "...> "')
    t:keys("Enter")
    t:wait("\nlua$ ")
    t:type("if true then")
    t:keys("Enter")
    t:wait("\n...> ")
    t:type("x = 3 end")
    t:keys("Enter")
    t:wait("\nlua$ ", 2)
    t:type("x")
    t:keys("Enter")
    local s = t:wait("\nlua$ ", 3)
    has(s, "lua$ x\n3\nlua$")
  end)
end)

-- ------------------------------------------------------------ workers

T.test("workers started from the REPL are first-class", function()
  session(function(t)
    t:run("function f(a, b) return a + b, 'sum', nil end")
    T.eq(t:run("spawn_thread(f, 2, 3):join()"), "5       sum     nil")
    T.eq(t:run("spawn_process(f, 4, 5):join()"), "9       sum     nil")
    t:run("ch = conc.channel()")
    t:run('w = spawn_thread({name = "listener"}, function(c) return c:recv() end, ch)')
    local out = t:run("conc.workers()")
    has(out, 'name = "listener"')
    has(out, 'kind = "thread"')
    has(out, 'status = "running"')
    t:run("ch:send('bye')")
    T.eq(t:run("w:join()"), "bye")
    T.eq(t:run("#conc.workers()"), "0")
  end)
end)

T.test("a worker that fails unjoined is reported at the prompt", function()
  session(function(t)
    t:run('spawn_thread({name = "doomed"}, function() error("ka" .. "put") end)')
    -- told while the prompt waits, without a key pressed
    local s = t:wait("kaput")
    T.ok(s:match('doomed: stdin:1: kaput'), s)
    T.eq(t:run("1"), "1")
  end)
end)

T.test("a process that ends unjoined is reaped and reported at once", function()
  session(function(t)
    t:run('p = spawn_process({name = "crasher"}, function() conc.sleep(0.3) error("ka" .. "boom") end)')
    -- told while the prompt waits, without a key pressed
    local s = t:wait("kaboom")
    T.ok(s:match('crasher: stdin:1: kaboom'), s)
    T.eq(t:run("p:status(), conc._stats().children"), "failed  0")
    has(t:run("p:join()"), "kaboom")      -- join still raises it
    -- one that ends well leaves no zombie either
    t:run("q = spawn_process(function() return 1 end)")
    local deadline = conc.now() + 10
    repeat
      s = t:run("conc._stats().children")
    until s == "0" or conc.now() > deadline
    T.eq(s, "0")
    -- killed while a chunk runs: told before the next prompt
    t:run("k = spawn_process({name = 'victim'}, function() conc.sleep(30) end)")
    s = t:run("os.execute('kill -KILL ' .. k.pid) conc.sleep(0.2)")
    t:wait("victim: process")
    has(t:screen(), "killed by signal 9 (SIGKILL)")
    T.eq(t:run("k:status()"), "killed")
  end)
end)

-- ------------------------------------------------------------ history

T.test("without readline the REPL still runs, saying so", function()
  session({env = "CONCLUA_READLINE=libno-such-readline.so.0"}, function(t)
    has(t:screen(), "conclua: no line editing: libno-such-readline.so.0")
    T.eq(t:run("1 + 41"), "42")
    T.eq(t:run("x = 5"), "")
    T.eq(t:run("x * 2"), "10")
    t:keys("C-d")
    t:wait("[exit 0]")
  end)
end)

T.test("history is kept across sessions, a chunk as one entry", function()
  local hist = dir .. "/shared-history"
  os.remove(hist)
  session({hist = hist}, function(t)
    t:run("first = 1")
    local n = prompts(t:screen())
    t:type("function twice(x)")
    t:keys("Enter")
    t:type("return 2 * x")
    t:keys("Enter")
    t:type("end")
    t:keys("Enter")
    t:prompts(n + 1)
    t:run("broken = = 1")                -- not a complete statement
    t:type("function abandoned()")
    t:keys("Enter")
    t:wait(">> ")
    t:keys("C-c")
    t:prompts(n + 3)
    t:keys("C-d")
    t:wait("[exit 0]")
  end)
  local h = readfile(hist)
  T.eq(h, "first = 1\nfunction twice(x)\\nreturn 2 * x\\nend\n")
  session({hist = hist}, function(t)
    t:keys("Up")
    t:wait("> function twice(x)\nreturn 2 * x\nend")
    t:keys("Enter")
    T.eq(t:run("twice(21)"), "42")
    t:keys("Up", "Up", "Up")
    t:wait("> first = 1")
    t:keys("C-u")
  end)
end)

T.test("history goes to ~/.conclua_history unless CONCLUA_HISTORY says", function()
  local home_hist = dir .. "/.conclua_history"
  os.remove(home_hist)
  session({nohist = true}, function(t)
    t:run("from_home = 1")
    t:keys("C-d")
    t:wait("[exit 0]")
  end)
  T.eq(readfile(home_hist), "from_home = 1\n")
  os.remove(home_hist)
  session({nohist = true, env = "CONCLUA_HISTORY="}, function(t)
    t:run("nowhere = 1")
    t:keys("C-d")
    t:wait("[exit 0]")
  end)
  T.eq(readfile(home_hist), nil)
end)

T.test("the history file is bounded", function()
  local hist = dir .. "/big-history"
  local f = assert(io.open(hist, "w"))
  for i = 1, 1500 do f:write("old_", i, " = ", i, "\n") end
  f:close()
  session({hist = hist}, function(t)
    t:keys("Up")
    t:wait("> old_1500 = 1500")
    t:keys("C-u")
    t:run("newest = 1")
    t:keys("C-d")
    t:wait("[exit 0]")
  end)
  local lines = {}
  for l in readfile(hist):gmatch("[^\n]+") do lines[#lines + 1] = l end
  T.eq(#lines, 1000)
  T.eq(lines[#lines], "newest = 1")
  T.eq(lines[1], "old_502 = 502")
end)

-- ------------------------------------------------------------ no terminal

T.test("stdin not a terminal: input runs as a script; -i is lua5.4 -i", function()
  local out, code = T.sh("printf 'x = 2\\nprint(x * 21)\\n' | " .. q(exe))
  T.eq(code, 0)
  T.eq(out, "42\n")
  -- -i reads line by line as lua5.4 -i does: the prompts, each line read
  -- (its readline echoes them), values through print (test_cli has more)
  out = T.sh("printf '1 + 1\\nfunction f()\\nreturn 3\\nend\\nf(), \"s\"\\n' | " ..
             q(exe) .. " -i 2>&1")
  T.ok(out:find("\n> 1 %+ 1\n2\n> function f%(%)\n>> return 3\n>> end\n" ..
                "> f%(%), \"s\"\n3\ts\n> \n$"), out)
end)

T.test("the pretty printer's corners", function()
  session(function(t)
    T.eq(t:run('{[3] = "c", [-2] = "m", [0.5] = "h", [1] = "a", [true] = 1, [false] = 0, x = 1}'),
         '{"a", [-2] = "m", [0.5] = "h", [3] = "c", x = 1, [false] = 0, [true] = 1}')
    T.eq(t:run("{1, nil, 3}"), "{1, [3] = 3}")
    T.eq(t:run('{"\\1\\0012", "\\127", [""] = 0, ["end"] = 1, _ok = 2}'),
         '{"\\1\\0012", "\\127", [""] = 0, _ok = 2, ["end"] = 1}')
    T.eq(t:run('setmetatable({a = 1}, {__index = function() error("never") end, ' ..
               '__pairs = function() error("never") end})'), "{a = 1}")
    has(t:run('setmetatable({}, {__tostring = function() error("bad tostring") end})'),
        "stdin:1: bad tostring")
    T.eq(t:run('setmetatable({}, {__tostring = function() return "<mine>" end})'), "<mine>")
    T.eq(t:run('big = {} for i = 1, 20000 do big["k" .. i] = i end'), "")
    has(t:run("big") .. "\n", "  k100 = 100,\n  ... (19900 more)\n}\n")
    T.eq(t:run('"still going"'), "still going")
  end)
end)

T.test("on a terminal too, '=' on a chunk's first line is 'return'", function()
  session(function(t)
    T.eq(t:run("=1 + 1"), "2")
    T.eq(t:run("= {k = 'v'}"), '{k = "v"}')
    T.eq(t:run("="), "")
  end)
end)

T.test("on a terminal, results go through a print the program replaced", function()
  local mine = "print = function(...) " ..
               "io.write('[', select('#', ...), '] ', tostring((...)), '\\n') end"
  session({args = "-e " .. q(mine) .. " -i"}, function(t)
    T.ok(t:run("{1, 2}"):find("^%[1%] table: 0x%x+$"))
    T.eq(t:run("1, 'a'"), "[2] 1")
    T.eq(t:run("x = 1"), "")
    T.eq(t:run("print = nil"), "")
    has(t:run("42"), "error calling 'print' (attempt to call a nil value)")
  end)
  session({args = [[-e "saved = print; print = nil" -i]]}, function(t)
    has(t:run("1"), "error calling 'print'")
    T.eq(t:run("print = saved"), "")
    T.eq(t:run("{n = 1}"), "{n = 1}")            -- conclua's own print: pretty again
  end)
end)

T.test("conclua -i starts the REPL after the script", function()
  local script = T.tmpfile("greeting = 'hello from script'\n")
  session({args = "-i " .. q(script)}, function(t)
    T.eq(t:run("greeting"), "hello from script")
  end)
  os.remove(script)
end)

os.execute("rm -rf " .. q(dir))
T.done()
