-- The conclua command as a user runs it (docs/getting-started.md, README.md): options, the arg
-- table, errors and exit codes, stdin, signals, the wait at exit.
local T = require "t"
local exe = T.q(T.conclua)

local function run(args, input)
  local cmd = exe .. " " .. args
  if input then
    local f = T.tmpfile(input, ".in")
    cmd = cmd .. " < " .. f
    local out, code = T.sh(cmd)
    os.remove(f)
    return out, code
  end
  return T.sh(cmd .. " < /dev/null")
end

T.test("-v names conclua and the Lua it hosts", function()
  local out, code = run("-v")
  T.eq(code, 0)
  T.ok(out:find("^conclua %d+%.%d+%.%d+"), out)
  T.ok(out:find("Lua 5.4", 1, true), out)
end)

T.test("a script, its arguments and the arg table", function()
  local s = T.tmpfile([[
    print(select("#", ...), ...)
    print(arg[0], arg[1], arg[2], arg[-1] ~= nil, #arg)
  ]])
  local out, code = run("-W " .. s .. " one two")
  T.eq(code, 0)
  T.eq(out, "2\tone\ttwo\n" .. s .. "\tone\ttwo\ttrue\t2\n")
  os.remove(s)
end)

T.test("-e, -l and -l g=mod, in order", function()
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  local f = io.open(dir .. "/clitestmod.lua", "w")
  f:write("return {v = 7}")
  f:close()
  local out, code = T.sh("LUA_PATH='" .. dir .. "/?.lua' " .. exe ..
                         " -l clitestmod -l m2=clitestmod -e 'print(clitestmod.v, m2.v)' -e 'x = 1' -e 'print(x)' </dev/null")
  T.eq(code, 0)
  T.eq(out, "7\t7\n1\n")
  os.remove(dir .. "/clitestmod.lua")
  os.remove(dir)
end)

T.test("an uncaught error: conclua: message, traceback, exit 1", function()
  -- the prefix is the command's name as it was run (argv[0]), as lua.c
  -- has it: "conclua" from the PATH, the path itself here
  local me = T.conclua .. ": "
  local s = T.tmpfile("local function f() error('kaboom') end\nf()\n")
  local out, code = run(s)
  T.eq(code, 1)
  T.eq(out:sub(1, #me), me, out)
  T.ok(out:find("^.-: .-:1: kaboom"), out)
  T.ok(out:find("stack traceback:", 1, true), out)
  os.remove(s)
  out, code = run("-e 'error({})'")
  T.eq(code, 1)
  T.ok(out:find(me .. "(error object is a table value)", 1, true), out)
  out, code = run("no_such_file.lua")
  T.eq(code, 1)
  T.ok(out:find(me .. "cannot open no_such_file.lua", 1, true) == 1, out)
  local bindir = T.sh("dirname " .. exe):gsub("%s+$", "")
  out, code = T.sh("PATH=" .. T.q(bindir) .. ":$PATH conclua -e 'error(\"x\")' 2>&1 </dev/null")
  T.eq(code, 1)
  T.ok(out:find("^conclua: %(command line%):1: x\n"), out)
  out, code = run("-e 'syntax error here'")
  T.eq(code, 1)
end)

T.test("bad options print the usage", function()
  local out, code = run("-z")
  T.eq(code, 1)
  T.ok(out:find("unrecognized option '-z'", 1, true), out)
  T.ok(out:find("usage:", 1, true), out)
  out, code = run("-e")
  T.eq(code, 1)
  T.ok(out:find("'-e' needs argument", 1, true), out)
end)

T.test("stdin: '-' and a non-terminal stdin run as a script", function()
  local out, code = run("-", "print('from stdin', ...)")
  T.eq(code, 0)
  T.eq(out, "from stdin\n")
  out, code = run("", "print(1 + 1)\nlocal t = spawn_thread(function() return 'ok' end)\nprint(t:join())\n")
  T.eq(code, 0)
  T.eq(out, "2\nok\n")
  out, code = run("- a b", "print(...)")
  T.eq(out, "a\tb\n")
end)

T.test("-- stops the options", function()
  local s = T.tmpfile("print(...)")
  local out = run("-- " .. s .. " -v")
  T.eq(out, "-v\n")
  os.remove(s)
end)

T.test("-E ignores LUA_INIT; LUA_INIT runs otherwise", function()
  local out = T.sh("LUA_INIT='print(\"init\")' " .. exe .. " -e 'print(2)' </dev/null")
  T.eq(out, "init\n2\n")
  out = T.sh("LUA_INIT='print(\"init\")' " .. exe .. " -E -e 'print(2)' </dev/null")
  T.eq(out, "2\n")
  local s = T.tmpfile("print('from file')")
  out = T.sh("LUA_INIT_5_4=@" .. s .. " " .. exe .. " -e 'print(3)' </dev/null")
  T.eq(out, "from file\n3\n")
  os.remove(s)
end)

T.test("-i runs the script then reads statements", function()
  local s = T.tmpfile("x = 40")
  local out, code = run("-i " .. s, "print(x + 2)\n")
  T.eq(code, 0)
  T.ok(out:find("42", 1, true), out)
  os.remove(s)
end)

T.test("the exit waits for non-daemon threads, not daemons", function()
  local s = T.tmpfile([[
    spawn_thread(function() conc.sleep(0.2) print("worker done") end)
    spawn_thread({daemon = true}, function() conc.sleep(60) print("never") end)
    print("main done")
  ]])
  local t0 = conc.now()
  local out, code = run(s)
  T.eq(code, 0)
  T.eq(out, "main done\nworker done\n")
  T.ok(conc.now() - t0 < 30, "waited for the daemon")
  os.remove(s)
end)

-- The last threads end while the main state waits for them at exit: the
-- main state leaves and is freed at once, and a thread that read it as
-- the stuck main state must not wake it after that (an ASan build saw it).
T.test("threads ending just as the script ends, 200 runs: each exits 0", function()
  local s = T.tmpfile([[
    local jobs, results = conc.channel(), conc.channel()
    for _ = 1, 2 do
      spawn_thread(function()
        for n in jobs:iter() do results:send(n * n) end
      end)
    end
    for n = 1, 5 do jobs:send(n) end
    jobs:close()
    local sum = 0
    for _ = 1, 5 do sum = sum + results:recv() end
    print(sum)
  ]])
  local out, code = T.sh("for i in $(seq 200); do " .. exe .. " " .. s ..
                         " || { echo \"run $i failed: $?\"; exit 1; }; done")
  T.eq(code, 0, out)
  T.eq(out, string.rep("55\n", 200))
  os.remove(s)
end)

T.test("os.exit still waits for the workers", function()
  local s = T.tmpfile([[
    spawn_thread(function() conc.sleep(0.2) print("worker done") end)
    os.exit(3)
  ]])
  local out, code = run(s)
  T.eq(code, 3)
  T.eq(out, "worker done\n")
  os.remove(s)
end)

T.test("unjoined failures are reported at exit, with the name", function()
  local s = T.tmpfile([[
    spawn_thread({name = "reporter"}, function() error("lost error") end)
    local joined = spawn_thread(function() error("seen") end)
    pcall(joined.join, joined)
  ]])
  local out, code = run(s)
  T.eq(code, 0)
  T.ok(out:find("reporter: ", 1, true), out)
  T.ok(out:find("lost error", 1, true), out)
  T.ok(out:find("stack traceback:", 1, true), out)
  T.ok(not out:find("seen", 1, true), "a joined failure was reported")
  os.remove(s)
end)

-- Runs the script src in the background until it prints "ready", sends
-- it SIGINT, waits for it to end and returns what it printed.
local function interrupted(src)
  local s = T.tmpfile(src)
  local out_file = os.tmpname()
  local pid = T.sh(exe .. " " .. s .. " > " .. out_file .. " 2>&1 & echo $!"):match("%d+")
  local function output()
    local f = io.open(out_file)
    local text = f and f:read("a") or ""
    if f then f:close() end
    return text
  end
  local t0 = conc.now()
  repeat conc.sleep(0.02) until output():find("ready") or conc.now() - t0 > 10
  os.execute("kill -INT " .. pid)
  t0 = conc.now()
  while os.execute("kill -0 " .. pid .. " 2>/dev/null") and conc.now() - t0 < 10 do
    conc.sleep(0.02)
  end
  local text = output()
  os.remove(out_file)
  os.remove(s)
  return text
end

T.test("kill -INT interrupts a running script", function()
  local text = interrupted([[
    io.write("ready\n") io.stdout:flush()
    while true do end
  ]])
  T.ok(text:find("interrupted!", 1, true), text)
  T.ok(text:find("stack traceback", 1, true), text)
end)

T.test("kill -INT interrupts a blocked join", function()
  local text = interrupted([[
    local ev = conc.event()
    local t = spawn_thread({daemon = true}, function() ev:wait() end)
    io.write("ready\n") io.stdout:flush()
    t:join()
  ]])
  T.ok(text:find("interrupted!", 1, true), text)
end)

T.test("a piped REPL session", function()
  local out, code = run("-i", "x = 1\nx + 41\nfunction f(a)\n  return a * 2\nend\nf(21)\n")
  T.eq(code, 0)
  T.ok(out:find("42\n42", 1, true) or out:find("42.*42"), out)
end)

-- ------------------------------------------------------------ -i without a terminal, as lua5.4 -i

-- stdout of conclua -i (stderr apart, in a file) with 'input' on stdin,
-- the version line cut off.
local function piped_i(pre, input)
  local f, e = T.tmpfile(input, ".in"), os.tmpname()
  local out, code = T.sh("(" .. exe .. " " .. pre .. " -i < " .. f .. " 2> " .. e .. ")")
  local err = T.readfile(e)
  os.remove(f)
  os.remove(e)
  local banner = out:match("^conclua [^\n]*\n")
  T.ok(banner, "no version line:\n" .. out)
  return out:sub(#banner + 1), err, code
end

T.test("piped -i: the prompts and each line read, as lua5.4's readline shows them", function()
  local out, err, code = piped_i("", "x = 1\nx + 41\nfunction f(a)\n  return a * 2\nend\nf(21)\n")
  T.eq(code, 0)
  T.eq(err, "")
  T.eq(out, "> x = 1\n> x + 41\n42\n> function f(a)\n>>   return a * 2\n" ..
            ">> end\n> f(21)\n42\n> \n")
  -- _PROMPT and _PROMPT2, read anew for each line; the last line needs no newline
  out = piped_i([[-e "_PROMPT='lua$ ' _PROMPT2='...'"]],
                "if true then\nprint('in')\nend\n_PROMPT = 1\n2")
  T.eq(out, "lua$ if true then\n...print('in')\n...end\nin\nlua$ _PROMPT = 1\n12\n2\n1\n")
  -- any value, through tostring: a __tostring runs once per prompt
  local counting = "local n = 0 _PROMPT = setmetatable({}, {__tostring = " ..
                   "function() n = n + 1 return '[' .. n .. ']' end})"
  out = piped_i("-e " .. T.q(counting), "a = 2\nn\n")
  T.eq(out, "[1]a = 2\n[2]n\nnil\n[3]\n")
  -- a failing __tostring: the default prompt
  out = piped_i([[-e "_PROMPT2 = setmetatable({}, {__tostring = function() error('no') end})"]],
                "do\nend\n")
  T.eq(out, "> do\n>> end\n> \n")
end)

T.test("piped -i: '=' on a chunk's first line is 'return'", function()
  local out, err = piped_i("", "a = 'b\\nc'\n=a\n= 1, 2\n=\n")
  T.eq(out, "> a = 'b\\nc'\n> =a\nb\nc\n> = 1, 2\n1\t2\n> =\n> \n")
  T.eq(err, "")
  -- not on a continuation line
  out, err = piped_i("", "x = (\n=1)\n")
  T.ok(err:find("stdin:2: unexpected symbol near '='", 1, true), err)
end)

T.test("piped -i: results go through the global print, whatever it is", function()
  local mine = "print = function(...) " ..
               "io.write('<', select('#', ...), '>', tostring((...)), '\\n') end"
  local out, err, code = piped_i("-e " .. T.q(mine), "1, 2\n{}\n'x'\n")
  T.eq(code, 0)
  T.eq(err, "")
  T.ok(out:find("> 1, 2\n<2>1\n> {}\n<1>table: 0x%x+\n> 'x'\n<1>x\n> \n$"), out)
  -- the stock print: tables as tostring shows them, no pretty-printing
  out = piped_i("", "{1, 2}\nnil, false\n")
  T.ok(out:find("^> {1, 2}\ntable: 0x%x+\n> nil, false\nnil\tfalse\n> \n$"), out)
  out, err, code = piped_i([[-e "print = nil"]], "10\nx = 3\nx\n")
  T.eq(code, 0)
  T.eq(out, "> 10\n> x = 3\n> x\n> \n")
  local _, n = err:gsub("error calling 'print' %(attempt to call a nil value%)", "")
  T.eq(n, 2, err)
  out, err = piped_i([[-e "print = function() error({}) end"]], "1\n")
  T.ok(err:find("error calling 'print' (error object is a table value)", 1, true), err)
  -- a lookup of print that raises is an error of print's, and the loop goes on
  local strict = "setmetatable(_G, {__index = function(_, k) error('strict: ' .. k, 0) end}) " ..
                 "print = nil"
  out, err = piped_i("-e " .. T.q(strict), "1\nio.write('after\\n')\n")
  T.ok(err:find("error calling 'print' (strict: print)", 1, true), err)
  T.ok(out:find("\nafter\n", 1, true), out)
end)

T.test("a failed require says what lua5.4 says; conc.* names say they are not built in", function()
  local out, code = run([[-e "require 'no_such_mod_xyz'"]])
  T.eq(code, 1)
  T.ok(out:find("module 'no_such_mod_xyz' not found:", 1, true), out)
  T.ok(out:find("no field package.preload['no_such_mod_xyz']", 1, true), out)
  T.ok(out:find("no file './no_such_mod_xyz.lua'", 1, true), out)
  T.ok(not out:find("built-in", 1, true), out)
  out, code = run([[-e "require 'conc.no_such'"]])
  T.eq(code, 1)
  T.ok(out:find("module 'conc.no_such' not found:\n\tno field package.preload['conc.no_such']\n" ..
                "\tno built-in module 'conc.no_such'\n\tno file", 1, true), out)
  -- and the message is lua5.4's, line for line, for a name that is not conclua's
  local cmd = [[ -e "local ok, m = pcall(require, 'no_such_mod_xyz') print(m)" </dev/null]]
  local ref, rcode = T.sh("env LUA_PATH='./?.lua' LUA_CPATH='./?.so' lua5.4" .. cmd)
  T.eq(rcode, 0, ref)
  T.eq(T.sh("env LUA_PATH='./?.lua' LUA_CPATH='./?.so' " .. exe .. cmd), ref)
end)

T.test("the article's examples print each line once", function()
  for _, script in ipairs({"scripts/article_processes.lua", "scripts/article_threads.lua"}) do
    local out, code = T.sh(exe .. " " .. script .. " | sort")
    T.eq(code, 0)
    T.eq(out, "Worker 0\nWorker 1\nWorker 2\nWorker 3\nWorker 4\n", script)
  end
end)

-- ------------------------------------------------------------ Ctrl-C and the wait at exit

-- conclua with these arguments, Ctrl-C'ed as T.ctrl_c does it.
local function ctrl_c(args, input, times)
  return T.ctrl_c(exe .. " " .. args, input, times)
end

local function gone(pid)
  local t0 = conc.now()
  while os.execute("kill -0 " .. pid .. " 2>/dev/null") do
    if conc.now() - t0 > 5 then return false end
    conc.sleep(0.02)
  end
  return true
end

local READY = T.READY

T.test("one Ctrl-C during the exit wait stops the workers: status 130", function()
  local s = T.tmpfile(READY .. [[
    spawn_thread({name = "slow"}, function()
      local c <close> = setmetatable({}, {__close = function()
        io.stderr:write("slow closed\n")
      end})
      conc.sleep(60)
    end)
    local p = spawn_process({name = "nap"}, function() conc.sleep(60) end)
    spawn_thread({name = "bg", daemon = true}, function() conc.sleep(60) end)
    ready(p.pid)
  ]])
  local out, rc, pids = ctrl_c(T.q(s))
  os.remove(s)
  T.eq(rc, 130, out)
  T.ok(out:find('conclua: stopping 2 workers: thread %d+ "slow", process ' ..
                pids[2] .. ' "nap"\n'), out)
  T.ok(out:find("slow closed", 1, true), out)
  T.ok(not out:find("bg", 1, true), "the daemon is not one the exit waited for:\n" .. out)
  T.ok(not out:find("signal", 1, true), "a stopped worker reported as failed:\n" .. out)
  T.ok(gone(pids[2]), "the process outlived conclua")
end)

T.test("Ctrl-C in a join of the main chunk stops the workers as well", function()
  local s = T.tmpfile(READY .. [[
    local t = spawn_thread({name = "slow"}, function() conc.sleep(60) end)
    local p = spawn_process({name = "nap"}, function() conc.sleep(60) end)
    ready(p.pid)
    t:join()
  ]])
  local out, rc, pids = ctrl_c(T.q(s))
  os.remove(s)
  T.eq(rc, 130, out)
  T.ok(out:find("interrupted!", 1, true), out)
  T.ok(out:find('stopping 2 workers: thread %d+ "slow", process ' .. pids[2]), out)
  T.ok(gone(pids[2]), "the process outlived conclua")
end)

T.test("Ctrl-C with no worker left: interrupted!, status 1 as lua", function()
  local s = T.tmpfile(READY .. [[
    ready()
    conc.channel():recv()
  ]])
  local out, rc = ctrl_c(T.q(s))
  os.remove(s)
  T.eq(rc, 1, out)
  T.ok(out:find("interrupted!", 1, true), out)
  T.ok(not out:find("stopping", 1, true), out)
end)

-- A script whose worker process "deaf" ignores SIGTERM (a C function of
-- a module built for the test), Ctrl-C'ed 'times' times: what ctrl_c
-- returns.
local function deaf(times)
  local c = T.tmpfile([[
    #include <signal.h>
    int conc_test_ignterm(void *L) { (void)L; signal(SIGTERM, SIG_IGN); return 0; }
  ]], ".c")
  local so = c:gsub("%.c$", ".so")
  local out, code = T.sh("cc -shared -fPIC -o " .. T.q(so) .. " " .. T.q(c))
  os.remove(c)
  T.eq(code, 0, out)
  local s = T.tmpfile(READY .. [[
    local p = spawn_process({name = "deaf"}, function()
      package.loadlib(]] .. string.format("%q", so) .. [[, "conc_test_ignterm")()
      conc.sleep(60)
    end)
    conc.sleep(0.2)                 -- it ignores SIGTERM by now
    ready(p.pid)
  ]])
  local rc, pids, dt
  out, rc, pids, dt = ctrl_c(T.q(s), nil, times)
  os.remove(s)
  os.remove(so)
  return out, rc, pids, dt
end

T.test("a worker that ignores SIGTERM is killed after a grace", function()
  local out, rc, pids, dt = deaf(1)
  T.eq(rc, 130, out)
  T.ok(out:find('stopping 1 worker: process ' .. pids[2] .. ' "deaf"', 1, true), out)
  T.ok(out:find('process ' .. pids[2] .. ' "deaf" ignored SIGTERM: killed', 1, true), out)
  T.ok(dt < 20, dt)
  T.ok(gone(pids[2]), "the process outlived conclua")
end)

T.test("a second Ctrl-C ends the grace at once", function()
  local out, rc, pids = deaf(2)
  T.eq(rc, 130, out)
  T.ok(out:find("stopping 1 worker", 1, true), out)
  T.ok(gone(pids[2]), "the process outlived conclua")
end)

T.test("Ctrl-C stops the exit wait of a piped REPL and of os.exit", function()
  -- the REPL reads a line at a time: one line each
  local out, rc = ctrl_c("-i", READY:gsub("local function", "function")
                                    :gsub("\n%s*", " ") .. "\n" .. [[
    th = spawn_thread({name = "slow"}, function() conc.sleep(60) end)
    ready()
  ]])
  T.eq(rc, 130, out)
  T.ok(out:find('stopping 1 worker: thread %d+ "slow"'), out)
  local s = T.tmpfile(READY .. [[
    spawn_thread({name = "slow"}, function() conc.sleep(60) end)
    ready()
    os.exit(3)
  ]])
  out, rc = ctrl_c(T.q(s))
  os.remove(s)
  T.eq(rc, 130, out)
  T.ok(out:find('stopping 1 worker: thread %d+ "slow"'), out)
end)

T.done()
