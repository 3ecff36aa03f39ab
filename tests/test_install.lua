-- make install, pkg-config, the host program of docs/embedding.md, and
-- conc.so under the stock lua5.4 (docs/embedding.md), the way a user does it:
-- install to a temporary prefix, build docs/examples/host.c with the
-- flags pkg-config gives, run it, load the installed conc.so from lua5.4.
local T = require "t"

local q, build, san = T.q, T.build, T.sanitizer
local prefix = os.tmpname()
os.remove(prefix)
local work = prefix .. "/work"
-- A shell prefix: no make of ours around, nothing that finds conclua or
-- its library for the programs, pkg-config looking in the prefix.
local env = "unset MAKEFLAGS MAKELEVEL CONCLUA_EXE LD_LIBRARY_PATH; " ..
            "export PKG_CONFIG_PATH=" .. q(prefix .. "/lib/pkgconfig") .. "; "
local version = conc.version:match("^conclua (.*)$")

-- Code built against sanitized libraries needs the sanitizer's runtime;
-- lua5.4 is not built with it, so it gets it preloaded.
local sanflags, lua54cmd = "", "lua5.4"
if san == "asan" then
  sanflags = " -fsanitize=address,undefined"
  lua54cmd = "LD_PRELOAD=" .. q((T.sh("gcc -print-file-name=libasan.so")
                              :gsub("%s+$", ""))) .. " lua5.4"
elseif san == "tsan" then
  sanflags = " -fsanitize=thread"
  lua54cmd = "LD_PRELOAD=" .. q((T.sh("gcc -print-file-name=libtsan.so")
                              :gsub("%s+$", ""))) .. " lua5.4"
end

-- Runs cmd; fails the test unless it exits 0. Returns its output.
local function must(cmd)
  local out, code = T.sh(cmd)
  if code ~= 0 then
    error(string.format("%s\nexited %s:\n%s", cmd, tostring(code), out), 2)
  end
  return out
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function slurp(path) return assert(T.readfile(path)) end

local stdlib = {}
for rel in T.sh("cd stdlib 2>/dev/null && find . -name '*.lua' | sort")
             :gmatch("%./([^\n]+)") do
  stdlib[#stdlib + 1] = rel
end

local installed = {
  "bin/conclua", "lib/libconclua.so", "lib/libconclua.a",
  "include/conclua.h", "lib/lua/5.4/conc.so", "lib/pkgconfig/conclua.pc",
  "share/man/man1/conclua.1",
}
for _, rel in ipairs(stdlib) do installed[#installed + 1] = "share/lua/5.4/" .. rel end
-- conc.mpi, when this build has it (an MPI was found)
if exists(build .. "/conc/mpi.so") then installed[#installed + 1] = "lib/lua/5.4/conc/mpi.so" end

-- Installs once, for whichever test comes first (CONCLUA_ONLY may pick
-- any of them).
local done_install = false
local function install()
  if not done_install then
    must(env .. "make -s install BUILD=" .. q(build) .. " PREFIX=" .. q(prefix))
    must("mkdir -p " .. q(work))
    done_install = true
  end
end

T.test("make install puts every file in place", function()
  install()
  for _, rel in ipairs(installed) do
    T.ok(exists(prefix .. "/" .. rel), "missing " .. rel)
  end
  for _, rel in ipairs(stdlib) do
    T.eq(slurp(prefix .. "/share/lua/5.4/" .. rel), slurp("stdlib/" .. rel), rel)
  end
  T.eq(slurp(prefix .. "/include/conclua.h"), slurp("vm/conclua.h"))
  T.eq(must(q(prefix .. "/bin/conclua") .. " -e 'print(conc.version)'"),
       conc.version .. "\n")
end)

T.test("pkg-config gives the flags for both libraries", function()
  install()
  T.eq(must(env .. "pkg-config --modversion conclua"), version .. "\n")
  local cflags = must(env .. "pkg-config --cflags conclua")
  T.ok(cflags:find("-I" .. prefix .. "/include", 1, true), cflags)
  T.ok(cflags:find("lua5.4", 1, true), cflags)          -- Requires: lua5.4
  local libs = must(env .. "pkg-config --libs conclua")
  for _, want in ipairs({"-L" .. prefix .. "/lib", "-lconclua", "-llua5.4",
                         "-Wl,-rpath," .. prefix .. "/lib"}) do
    T.ok(libs:find(want, 1, true), "no " .. want .. " in " .. libs)
  end
  local static = must(env .. "pkg-config --libs --static conclua")
  for _, want in ipairs({"-lconclua", "-llua5.4", "-pthread", "-ldl", "-lm"}) do
    T.ok(static:find(want, 1, true), "no " .. want .. " in " .. static)
  end
  -- the public header stands on its own
  must(env .. "printf '#include <conclua.h>\\nint main(void) { lua_State " ..
       "*L = 0; return conclua_wait(L); }\\n' | cc -Wall -Wextra -Werror " ..
       "-fsyntax-only -x c $(pkg-config --cflags conclua) -")
end)

T.test("docs/embedding.md shows docs/examples/host.c verbatim", function()
  local doc = slurp("docs/embedding.md")
  local block = doc:match("\n```c\n(.-)```\n")
  T.ok(block, "no ```c block in docs/embedding.md")
  T.eq(block, slurp("docs/examples/host.c"))
end)

local demo_out = "host: sum 30, calls 8, host child\n"

-- Runs a host binary: the demo, and unless 'demo_only', a script that
-- fails and a script that leaves a failed worker unjoined.
local function check_host(exe, demo_only)
  T.eq(must(env .. q(exe) .. " 2>&1"), demo_out)
  if demo_only then return end
  local script = T.tmpfile([[
    assert(select("#", ...) == 2 and arg[1] == "a" and arg[0]:find("%.lua$"))
    assert(spawn_thread(function() return host_count(5) end):join() == 5)
    spawn_thread(function() conc.sleep(0.1) error("worker " .. host_name) end)
  ]])
  local out, code = T.sh(env .. q(exe) .. " " .. q(script) .. " a b")
  T.ok(code ~= 0, "exit status 0 with a failed worker")
  T.ok(out:find("worker host", 1, true), out)
  os.remove(script)
  script = T.tmpfile("error('script fails')")
  out, code = T.sh(env .. q(exe) .. " " .. q(script))
  T.ok(code ~= 0 and out:find("script fails", 1, true), out)
  os.remove(script)
end

T.test("the host program, linked to libconclua.so", function()
  install()
  local exe = work .. "/host_shared"
  must(env .. "cc -Wall -Wextra -Werror docs/examples/host.c" .. sanflags ..
       " $(pkg-config --cflags --libs conclua) -o " .. q(exe))
  local dyn = must("readelf -d " .. q(exe))
  T.ok(dyn:find("NEEDED.-%[libconclua%.so%.0%]"), dyn)
  T.ok(dyn:find("R[UN]*PATH.-%[" .. (prefix .. "/lib"):gsub("%p", "%%%0") ..
                "%]"), dyn)
  local ldd = must(env .. "ldd " .. q(exe))
  T.ok(ldd:find("libconclua.so.0 => " .. prefix .. "/lib/libconclua.so.0",
                1, true), ldd)
  check_host(exe)
end)

T.test("the host program, linked to libconclua.a", function()
  install()
  if not san then                 -- sanitizers cannot link -static
    local exe = work .. "/host_static"
    must(env .. "cc -static docs/examples/host.c" ..
         " $(pkg-config --cflags --libs --static conclua) -o " .. q(exe))
    T.ok(must("readelf -d " .. q(exe)):find("no dynamic section"),
         "not a static executable")
    check_host(exe, true)
  end
  -- only conclua static, as docs/embedding.md says
  local exe = work .. "/host_mixed"
  must(env .. "cc docs/examples/host.c" .. sanflags ..
       " $(pkg-config --cflags conclua)" ..
       " -L$(pkg-config --variable=libdir conclua) -l:libconclua.a" ..
       " $(pkg-config --libs --static lua5.4) -pthread -o " .. q(exe))
  T.ok(not must("readelf -d " .. q(exe)):find("libconclua"),
       "linked to libconclua.so")
  check_host(exe, true)
end)

-- Runs a script under lua5.4 with the installed conc.so on its cpath:
-- returns its stdout, its stderr and its exit status.
local function lua54(code)
  local script = T.tmpfile('package.cpath = "' .. prefix ..
                           '/lib/lua/5.4/?.so;" .. package.cpath\n' .. code)
  local errfile = os.tmpname()
  local out, status = T.sh(env .. "{ " .. lua54cmd .. " " .. q(script) ..
                           " 2>" .. q(errfile) .. "; }")
  local err = slurp(errfile)
  os.remove(script)
  os.remove(errfile)
  return out, err, status
end

T.test("conc.so under lua5.4", function()
  install()
  local out = must(env .. lua54cmd .. " -e 'package.cpath=\"" .. prefix ..
                   "/lib/lua/5.4/?.so;\"..package.cpath; local conc = " ..
                   "require \"conc\"; print(spawn_thread(function() " ..
                   "return 1 end):join())'")
  T.eq(out, "1\n")
  local err, code
  out, err, code = lua54([[
    local c = require "conc"
    assert(c == conc and package.loaded.conc == conc)
    assert(type(spawn_thread) == "function" and type(spawn_process) == "function")
    print(spawn_thread(function()
      return spawn_thread(function() return require("conc") == conc end):join()
    end):join())
    print(spawn_process(function() return "forked" end):join())
    print(spawn_process({start = "spawn"}, function()
      local f = io.popen("readlink /proc/$PPID/exe")  -- which conclua runs
      local exe = f:read("l")
      f:close()
      return "spawned " .. exe
    end):join())
    local ch = conc.channel()
    spawn_thread(function() for i = 1, 3 do ch:send(i) end ch:close() end)
    local sum = 0
    for v in ch:iter() do sum = sum + v end
    print(sum)
    spawn_thread(function() error("never joined") end)
    spawn_thread(function() conc.sleep(0.3) print("late") end)
  ]])
  T.eq(code, 0)
  T.eq(out, "true\nforked\nspawned " .. prefix .. "/bin/conclua\n6\nlate\n")
  T.ok(err:find("never joined", 1, true), err)
end)

T.test("lua5.4's os.exit waits for the workers too", function()
  install()
  local out, _, code = lua54([[
    require "conc"
    spawn_thread(function() conc.sleep(0.2) io.write("late\n") end)
    spawn_thread({daemon = true}, function() conc.event():wait() end)
    os.exit(3)
  ]])
  T.eq(out, "late\n")
  T.eq(code, 3)
end)

-- lua5.4 running a script (or reading lines) from the installed conc.so,
-- Ctrl-C'ed as a user would (T.ctrl_c).
local function lua54_ctrl_c(code, args, times)
  local script = T.tmpfile('package.cpath = "' .. prefix ..
                           '/lib/lua/5.4/?.so;" .. package.cpath\n' ..
                           T.READY .. code)
  local out, rc, pids = T.ctrl_c(env .. lua54cmd .. " " .. q(script) ..
                                 (args or ""), nil, times)
  os.remove(script)
  return out, rc, pids
end

T.test("Ctrl-C interrupts blocking conc calls under lua5.4", function()
  install()
  for _, call in ipairs({
      "spawn_thread({daemon = true}, function() conc.sleep(60) end):join()",
      "conc.channel():recv()", "conc.sleep(60)",
      "local l = conc.lock() l:acquire() l:acquire()",
      "conc.select({conc.channel()})", "conc.event():wait()"}) do
    local out, rc = lua54_ctrl_c('require "conc"\nready()\n' .. call .. "\n")
    T.eq(rc, 1, call .. ":\n" .. out)
    T.ok(out:find("lua5.4: [^\n]*interrupted!\nstack traceback:"), call .. ":\n" .. out)
  end
  -- the script ended by it: its workers are stopped, not waited for, as
  -- conclua does
  local out, rc, pids = lua54_ctrl_c([[
    require "conc"
    local p = spawn_process({name = "nap"}, function() conc.sleep(60) end)
    spawn_thread({name = "slow"}, function() conc.sleep(60) end)
    ready(p.pid)
    p:join()
  ]])
  T.eq(rc, 1, out)
  T.ok(out:find("interrupted!", 1, true), out)
  T.ok(out:find('lua5.4: stopping 2 workers: process ' .. pids[2] ..
                ' "nap", thread %d+ "slow"'), out)
  -- lua.c's own Ctrl-C still works: a busy loop, and a pcall that catches
  -- (the script then goes on, and its end waits for its workers)
  out, rc = lua54_ctrl_c('require "conc"\nready()\nwhile true do end\n')
  T.eq(rc, 1, out)
  T.ok(out:find("interrupted!", 1, true), out)
  out, rc = lua54_ctrl_c([[
    require "conc"
    ready()
    print(pcall(conc.sleep, 60))
    spawn_thread(function() conc.sleep(0.2) print("late") end)
    print("goes on")
  ]])
  T.eq(rc, 0, out)
  T.ok(out:find("false\tinterrupted!\ngoes on\nlate\n", 1, true), out)
end)

T.test("Ctrl-C interrupts a blocking conc call in a piped lua5.4 -i", function()
  install()
  -- lua.c reads a line only once the one before has run: the blocked recv
  -- is interrupted, and the session goes on with the next lines
  local lines = table.concat({
    'package.cpath = "' .. prefix .. '/lib/lua/5.4/?.so;" .. package.cpath',
    'conc = require "conc"',
    (T.READY:gsub("local function", "function"):gsub("\n%s*", " ")),
    'ready()',
    'conc.channel():recv()',
    'print("after", 1 + 1)', ""}, "\n")
  local out, rc = T.ctrl_c(env .. lua54cmd .. " -i", lines)
  T.eq(rc, 0, out)
  T.ok(out:find("stdin:1: interrupted!\nstack traceback:\n\t[C]: in method 'recv'",
                1, true), out)
  T.ok(out:find("after\t2", 1, true), out)
end)

T.test("only conclua_* and luaopen_conc are exported", function()
  install()
  for _, lib in ipairs({build .. "/libconclua.so", build .. "/conc.so",
                        prefix .. "/lib/libconclua.so",
                        prefix .. "/lib/lua/5.4/conc.so"}) do
    local seen = {}
    for name in must("nm -D --defined-only " .. q(lib)):gmatch("%S+ %a (%S+)") do
      local ok = name:find("^conclua_") or name == "luaopen_conc" or
                 name == "_init" or name == "_fini"
      T.ok(ok, lib .. " exports " .. name)
      seen[name] = true
    end
    for _, want in ipairs({"conclua_open", "conclua_on_state", "conclua_wait",
                           "luaopen_conc"}) do
      T.ok(seen[want], lib .. " does not export " .. want)
    end
  end
end)

-- `man conclua`: the page installs, renders with its sections, and groff
-- finds nothing to warn about in it.
local function have(cmds)
  return select(2, T.sh("command -v " .. cmds .. " >/dev/null")) == 0
end

local function test_if(ok, name, why, fn)
  if ok then T.test(name, fn) else T.skip(name, why) end
end

test_if(have("man") and have("groff"), "the manual page",
        "man or groff is not installed (Debian: man-db groff-base)", function()
  install()
  local page = prefix .. "/share/man/man1/conclua.1"
  local text = must("MANWIDTH=80 man -l " .. q(page) .. " 2>&1")
  for _, section in ipairs({"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS",
                            "ENVIRONMENT", "EXIT STATUS", "FILES", "EXAMPLES",
                            "SEE ALSO"}) do
    T.ok(text:find("\n" .. section .. "\n", 1, true), "section " .. section)
  end
  for _, var in ipairs({"LUA_INIT", "LUA_PATH", "CONCLUA_TRACE",
                        "OMPI_ALLOW_RUN_AS_ROOT"}) do
    T.ok(text:find(var, 1, true), "names " .. var)
  end
  T.eq(must("groff -ww -z -man " .. q(page) .. " 2>&1"), "")
  T.ok(slurp(page):find('"' .. conc.version .. '"', 1, true),
       "the page's version is " .. conc.version)
end)

-- luarocks make, as the rockspec at the top says: conc.so and conc.pool
-- in a rock tree, required from the stock lua5.4.
test_if(have("luarocks") and not san, "luarocks make into a tree of its own",
        san and "the rock is built without the sanitizer, lua5.4 cannot load it here"
            or "luarocks is not installed (Debian: luarocks)", function()
  local tree = prefix .. "/rocks"
  local src = prefix .. "/rocksrc"
  must("mkdir -p " .. q(src) .. " && cp -r Makefile conclua-dev-1.rockspec vm stdlib " ..
       q(src))
  must(env .. "cd " .. q(src) .. " && luarocks --lua-version=5.4 --tree=" ..
       q(tree) .. " make 2>&1")
  local out = must(env .. "cd / && LUA_CPATH=" .. q(tree .. "/lib/lua/5.4/?.so") ..
    " LUA_PATH=" .. q(tree .. "/share/lua/5.4/?.lua") .. " lua5.4 -e " ..
    q('local conc = require "conc"; local pool = require "conc.pool"\n' ..
      'local p = pool.processes(2)\n' ..
      'print(table.concat(p:map(function(x) return x * x end, {1, 2, 3}), " "))\n' ..
      'p:close()\n' ..
      'print(conc.spawn_thread(function() return conc.version end):join())'))
  T.eq(out, "1 4 9\n" .. conc.version .. "\n")
  T.ok(must("luarocks --lua-version=5.4 --tree=" .. q(tree) .. " list 2>&1")
         :find("conclua", 1, true), "the rock is listed")
  -- conc.mpi comes with it when this tree built one
  T.eq(exists(tree .. "/lib/lua/5.4/conc/mpi.so"), exists(build .. "/conc/mpi.so"))
end)

test_if(exists(build .. "/conc/mpi.so"), "the installed conclua finds the installed conc.mpi",
        "this build has no conc/mpi.so (no MPI found)", function()
  install()
  -- one rank, no mpirun (MPI's singleton start); Open MPI's own
  -- leftovers at exit are not this test's business under make asan
  local out = must(env .. "ASAN_OPTIONS=detect_leaks=0 " .. q(prefix .. "/bin/conclua") ..
                   " -e 'local mpi, where = require \"conc.mpi\" print(mpi.rank(), mpi.size(), " ..
                   "where)'")
  T.ok(out:find("^0\t1\t" .. prefix:gsub("%p", "%%%0") .. "/bin/%.%./lib/lua/5%.4/conc/mpi%.so\n"),
       out)
end)

T.test("make uninstall removes what install put", function()
  install()
  must(env .. "make -s uninstall BUILD=" .. q(build) .. " PREFIX=" .. q(prefix))
  for _, rel in ipairs(installed) do
    T.ok(not exists(prefix .. "/" .. rel), "left " .. rel)
  end
end)

os.execute("rm -rf " .. q(prefix))
T.done()
