-- CONCLUA_TRACE=file (docs/trace.md): the Chrome trace-event file, parsed
-- with python3's json module; the events of known scripts.
local T = require "t"
local exe = T.q(T.conclua)

local have_python = os.execute("python3 -c 'import json' 2>/dev/null")

-- Runs script with the trace going to a new file; returns the output,
-- the exit status and the file's path.
local function traced(script, extra)
  local s = T.tmpfile(script)
  local tf = os.tmpname() .. ".json"
  local out, code = T.sh("CONCLUA_TRACE=" .. T.q(tf) .. " " .. exe .. " " ..
                         (extra or "") .. " " .. s .. " </dev/null")
  os.remove(s)
  return out, code, tf
end

-- The events of a trace file, one table each (ph, name, cat, pid, tid, id,
-- detail), read through python3's json module: nil and its complaint if
-- the file is no valid JSON or not the trace-event object.
local PARSE = [==[
import json, sys
d = json.load(open(sys.argv[1]))
assert isinstance(d, dict) and isinstance(d["traceEvents"], list)
for e in d["traceEvents"]:
    assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
    assert e["ph"] == "M" or isinstance(e["ts"], (int, float))
    name = e.get("name", "")
    if e["ph"] == "M": name = name + "=" + e["args"].get("name", "")
    detail = (e.get("args") or {}).get("detail", "")
    f = [e["ph"], name, e.get("cat", ""), str(e["pid"]), str(e["tid"]),
         str(e.get("id", "")), detail.split("\n")[0]]
    print("\x01".join(f))
]==]
local parser = T.tmpfile(PARSE, ".py")

local function events(tf)
  local out, code = T.sh("python3 " .. T.q(parser) .. " " .. T.q(tf))
  if code ~= 0 then return nil, out end
  local v = {}
  for line in out:gmatch("[^\n]+") do
    local f = {}
    for x in (line .. "\1"):gmatch("(.-)\1") do f[#f + 1] = x end
    v[#v + 1] = {ph = f[1], name = f[2], cat = f[3], pid = tonumber(f[4]),
                 tid = tonumber(f[5]), id = f[6], detail = f[7]}
  end
  return v
end

local function find(v, ph, pat)
  local n, first = 0, nil
  for _, e in ipairs(v) do
    if e.ph == ph and e.name:find(pat) then
      n = n + 1
      first = first or e
    end
  end
  return first, n
end

-- Every track's B and E pair up (E never before its B): what a viewer
-- needs to draw the spans.
local function balanced(v)
  local depth = {}
  for _, e in ipairs(v) do
    local k = e.pid .. "/" .. e.tid
    if e.ph == "B" then depth[k] = (depth[k] or 0) + 1
    elseif e.ph == "E" then
      depth[k] = (depth[k] or 0) - 1
      if depth[k] < 0 then return false, "E before B on " .. k end
    end
  end
  for k, d in pairs(depth) do
    if d ~= 0 then return false, d .. " open span(s) on " .. k end
  end
  return true
end

if not have_python then
  T.skip("the trace file", "no python3 to parse it")
  return T.done()
end

T.test("a known script: tracks, runs, waits, instants and flows", function()
  local out, code, tf = traced([[
    local ch = conc.channel()
    local t = spawn_thread({name = "producer"}, function(ch)
      for i = 1, 3 do ch:send(i) end
      return "ok"
    end, ch)
    for i = 1, 3 do assert(ch:recv() == i) end
    assert(t:join() == "ok")
    local bad = spawn_thread(function() error("boom") end)
    assert(not pcall(bad.join, bad))
    local idle = spawn_thread({name = "idle"}, function(ch) ch:recv() end, conc.channel())
    while not (conc.workers()[1] or {}).waiting_on do conc.sleep(0.001) end
    idle:cancel()
    assert(not pcall(idle.join, idle))
    local p = spawn_process(function() return 42 end)
    assert(p:join() == 42)
    print("pid", p.pid)
  ]])
  T.eq(code, 0, out)
  local pid = tonumber(out:match("pid\t(%d+)"))
  local v = assert(events(tf))
  T.ok(balanced(v))
  local main = find(v, "M", "^process_name=conclua$")
  T.ok(main, "the main process is named")
  local th = find(v, "M", "^thread_name=thread %d+ %(producer%)$")
  T.ok(th and th.pid == main.pid, "the producer has a track")
  T.ok(find(v, "B", "^thread %d+ %(producer%)$"), "its run span")
  T.ok(find(v, "i", "^spawn thread " .. th.tid .. "$"), "spawn")
  T.ok(find(v, "i", "^exit thread " .. th.tid .. "$"), "exit")
  local f = find(v, "i", "^failure thread %d+$")
  T.ok(f and f.detail:find("boom", 1, true), "failure, with the error")
  T.ok(find(v, "i", "^cancel thread %d+$"), "cancel, on the canceller's track")
  T.ok(find(v, "i", "^cancelled thread %d+$"), "cancelled, on the thread's")
  T.ok(find(v, "B", "^join thread %d+$") or true)
  T.ok(find(v, "B", "^recv channel %d+$"), "a wait span names the object")
  -- one flow per message: an s on the producer's track, its f on main's
  local s, ns = {}, 0
  for _, e in ipairs(v) do
    if e.ph == "s" then s[e.id] = e; ns = ns + 1 end
  end
  T.eq(ns, 3)
  local nf = 0
  for _, e in ipairs(v) do
    if e.ph == "f" then
      nf = nf + 1
      T.ok(s[e.id] and s[e.id].tid == th.tid and e.tid == 0, "flow " .. e.id)
    end
  end
  T.eq(nf, 3)
  -- the child process: its own track, in the same file
  local pn = find(v, "M", "^process_name=process " .. pid .. " ")
  T.ok(pn and pn.pid == pid, "the child names its track")
  local pb = find(v, "B", "^process " .. pid)
  T.ok(pb and pb.pid == pid, "the child's run span")
  T.ok(find(v, "i", "^exit process " .. pid .. "$"), "its exit, seen by the parent")
  os.remove(tf)
end)

T.test("processes started with start = 'spawn' write into the same file", function()
  local out, code, tf = traced([[
    local p = spawn_process({start = "spawn"}, function()
      local t = spawn_thread(function() return 1 end)
      t:join()
      return "spawned"
    end)
    print("pid", p.pid, p:join())
  ]])
  T.eq(code, 0, out)
  local pid = tonumber(out:match("pid\t(%d+)\tspawned"))
  T.ok(pid, out)
  local v = assert(events(tf))
  T.ok(balanced(v))
  local th = find(v, "M", "^thread_name=thread %d+")
  T.ok(th and th.pid == pid, "the spawned child's thread has a track")
  os.remove(tf)
end)

T.test("valid JSON when the script fails, calls os.exit or is interrupted", function()
  local out, code, tf = traced([[
    local t = spawn_thread(function() return 1 end)
    t:join()
    error("the script fails")
  ]])
  T.eq(code, 1, out)
  local v, err = events(tf)
  T.ok(v, err)
  T.ok(find(v, "i", "^exit thread"))
  os.remove(tf)
  out, code, tf = traced([[
    local ch = conc.channel()
    spawn_thread(function(ch) ch:send("x") end, ch)
    ch:recv()
    os.exit(3)
  ]])
  T.eq(code, 3, out)
  v, err = events(tf)
  T.ok(v, err)
  T.ok(balanced(v))
  os.remove(tf)
  out, code, tf = traced([[
    local p = spawn_process(function()
      spawn_thread(function() end):join()
      os.exit(5)
    end)
    print(p:join())
  ]])
  v, err = events(tf)
  T.ok(v, err)
  T.ok(find(v, "i", "^os.exit$"), "the child's os.exit")
  os.remove(tf)
  tf = os.tmpname() .. ".json"
  local s = T.tmpfile(T.READY .. [[
    local ch = conc.channel()
    spawn_thread(function(ch) ch:recv() end, ch)
    ready()
    ch:recv()
  ]])
  out, code = T.ctrl_c("CONCLUA_TRACE=" .. T.q(tf) .. " " .. exe .. " " .. s)
  T.eq(code, 130, out)
  v, err = events(tf)
  T.ok(v, err)
  T.ok(find(v, "B", "^recv channel %d+$"), "the wait it was in")
  os.remove(s)
  os.remove(tf)
end)

T.test("off by default; a file it cannot open is said, and the script runs", function()
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir " .. T.q(dir))
  local s = T.tmpfile("spawn_thread(function() end):join() print('ran')")
  local abs = T.conclua:sub(1, 1) == "/" and T.conclua or
              T.sh("pwd"):gsub("\n$", "") .. "/" .. T.conclua
  local out, code = T.sh("cd " .. T.q(dir) .. " && " .. T.q(abs) .. " " .. s)
  T.eq(code, 0)
  T.eq(T.sh("ls -A " .. T.q(dir)), "")
  out, code = T.sh("CONCLUA_TRACE=" .. T.q(dir .. "/no/such/dir.json") .. " " ..
                   exe .. " " .. s)
  T.eq(code, 0, out)
  T.ok(out:find("CONCLUA_TRACE: cannot open", 1, true), out)
  T.ok(out:find("ran", 1, true), out)
  os.execute("rm -rf " .. T.q(dir))
  os.remove(s)
end)

T.test("a conclua that a traced script runs leaves the trace alone", function()
  local out, code, tf = traced([[
    spawn_thread(function() end):join()
    assert(os.execute(arg[-1] .. " -e 'spawn_thread(function() end):join()'"))
  ]])
  T.eq(code, 0, out)
  local v = assert(events(tf))
  local _, n = find(v, "M", "^process_name=")
  T.eq(n, 1)
  os.remove(tf)
end)

os.remove(parser)
T.done()
