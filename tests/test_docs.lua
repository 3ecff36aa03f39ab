-- tests/test_docs.lua: the examples of docs/*.md run, the scripts of
-- scripts/ run, and the reference names every function and method.
--
-- How a fenced block of docs/*.md is treated, by its info string:
--
--   ```lua          a script: it runs in a fresh conclua process of its
--                   own (working directory: the repository), and must
--                   exit 0 with nothing on stderr
--   ```lua stderr   the same, but it may write on stderr
--   ```lua no-run   a fragment, not run (keep these rare)
--   anything else   (```c, ```sh, ```) not looked at
--
-- Expected output: in a block that runs, every comment "--> text" is one
-- line that the block prints, in order; when a block has such comments it
-- must print exactly those lines, no more. Runs of blanks match any runs
-- of blanks (print's tabs are written as spaces) and "..." matches any
-- text (a pid, an address, a time). A block with no "-->" comment may
-- print anything.
--
-- REPL.md is not run: its blocks are interactive transcripts.

local T = require "t"

local function read(path) return assert(T.readfile(path)) end

local function ls(pattern)
  local out = {}
  local p = assert(io.popen("ls " .. pattern .. " 2>/dev/null"))
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  table.sort(out)
  return out
end

-- The fenced blocks of a markdown text: {line =, info =, code =}.
local function blocks(text)
  local out, cur, n = {}, nil, 0
  for line in (text .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    if cur then
      if line:match("^%s*```%s*$") then
        out[#out + 1] = cur
        cur = nil
      else
        cur.code[#cur.code + 1] = line
      end
    else
      local info = line:match("^%s*```%s*(.-)%s*$")
      if info then cur = {line = n, info = info, code = {}} end
    end
  end
  assert(cur == nil, "unterminated code block at line " .. (cur and cur.line or 0))
  for _, b in ipairs(out) do b.code = table.concat(b.code, "\n") .. "\n" end
  return out
end

local function squash(s)
  return (s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""))
end

-- The expected lines: the "--> text" comments, in order.
local function expected(code)
  local want = {}
  for line in code:gmatch("[^\n]*") do
    local text = line:match("^.-%-%->%s?(.*)$")
    if text then want[#want + 1] = squash(text) end
  end
  return want
end

local function matches(got, want)
  local pat = "^" .. want:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"):gsub("%%%.%%%.%%%.", ".-") .. "$"
  return squash(got):find(pat) ~= nil
end

-- Runs a script file; returns its stdout, stderr and exit status.
local function run(path, args, seconds)
  local err = os.tmpname()
  local out, code = T.sh(string.format("(timeout -k 5 %d %s %s %s 2>%s)", seconds,
                                       T.q(T.conclua), T.q(path), args or "", T.q(err)))
  local stderr = read(err)
  os.remove(err)
  return out, stderr, code
end

local function check_block(page, b)
  local path = T.tmpfile(b.code)
  local out, stderr, code = run(path, nil, 60)
  os.remove(path)
  local where = page .. ":" .. b.line
  T.eq(code, 0, where .. ": exit status (stderr: " .. stderr .. ")")
  if not b.info:find("stderr", 1, true) then
    T.eq(stderr, "", where .. ": stderr")
  end
  local want = expected(b.code)
  if #want == 0 then return end
  local got = {}
  for line in out:gmatch("([^\n]*)\n") do got[#got + 1] = line end
  for i = 1, math.max(#want, #got) do
    if got[i] == nil or want[i] == nil or not matches(got[i], want[i]) then
      error(string.format("%s: output line %d: expected %q, got %q\n# whole output:\n%s",
                          where, i, want[i] or "(nothing)", got[i] or "(nothing)", out), 0)
    end
  end
end

-- ------------------------------------------------------------ examples

local pages = ls("docs/*.md")
T.ok(#pages > 0, "docs/*.md found (run from the repository)")
local ran = 0
for _, page in ipairs(pages) do
  for _, b in ipairs(blocks(read(page))) do
    local lang, tag = b.info:match("^(%S*)%s*(.*)$")
    if lang == "lua" then
      T.ok(tag == "" or tag == "no-run" or tag == "stderr",
           page .. ":" .. b.line .. ": unknown tag '" .. tag .. "'")
      if tag ~= "no-run" then
        ran = ran + 1
        T.test(page .. ":" .. b.line, function() check_block(page, b) end)
      end
    end
  end
end

T.test("the expected-output convention itself", function()
  T.ok(matches("1\t2", "1 2"))
  T.ok(matches("process 123 exited", "process ... exited"))
  T.ok(not matches("12", "1"))
  T.ok(not matches("a.b", "a%b"))
  T.same(expected("print(1) --> 1\n-- not this\n--> two  words\n"), {"1", "two words"})
  T.ok(ran >= 50, "examples found: " .. ran)
end)

-- ------------------------------------------------------------ scripts

-- What each script must print (besides exiting 0 with a clean stderr),
-- and its arguments.
local script_checks = {
  ["article_processes.lua"] = {"Worker 4"},
  ["article_threads.lua"] = {"Worker 4"},
  ["wordcount.lua"] = {"files, %d+ words"},
  -- pipeline: 20000 lines under a 100 s budget, which even a slow
  -- (sanitized, loaded) machine cannot spend, so no stop cuts it short
  ["pipeline.lua"] = {"20000 lines sent, 19600 records, 400 rejected\n", "20000 100"},
  ["crash_tolerant.lua"] = {"results kept for tasks 1 2 4 6 7 9 11 13 14\n"},
  ["demo.lua"] = {"I/O%-bound work"},
  ["primes_anywhere.lua"] = {"^148933 primes below 2000000, 40 ranges on %d+ local processes"},
}

local readme = read("scripts/README.md")
for _, path in ipairs(ls("scripts/*.lua")) do
  local name = path:match("[^/]+$")
  -- the demo takes seconds of forks and 200 threads: too slow under the
  -- sanitizers, which run the whole suite
  if name ~= "demo.lua" or not T.sanitizer then
    T.test("scripts/" .. name, function()
      T.ok(readme:find(name, 1, true), "scripts/README.md lists " .. name)
      local check = script_checks[name]
      T.ok(check, "a check for " .. name .. " in tests/test_docs.lua")
      local out, stderr, code = run(path, check[2], 120)
      T.eq(code, 0, name .. ": exit status (stderr: " .. stderr .. ")")
      T.eq(stderr, "", name .. ": stderr")
      T.ok(out:find(check[1]), name .. " prints " .. check[1] .. ":\n" .. out)
    end)
  end
end

T.test("wordcount: given files, over processes", function()
  local f = T.tmpfile("the cat and the hat\nThe end\n", ".txt")
  local out, stderr, code = run("scripts/wordcount.lua", "-p " .. T.q(f), 60)
  os.remove(f)
  T.eq(code, 0, stderr)
  T.ok(out:find("1 files, 7 words, 5 distinct, counted by %d+ processes"), out)
  T.ok(out:find("\n%s+3  the\n"), out)
end)

-- ------------------------------------------------------------ coverage

-- The methods of a handle, read past the "conc" __metatable guard: the
-- __index table, or the methods table behind a C __index.
local function methods(h)
  local idx = debug.getmetatable(h).__index
  if type(idx) == "function" then
    for i = 1, 5 do
      local _, v = debug.getupvalue(idx, i)
      if type(v) == "table" then idx = v break end
    end
  end
  local names = {}
  for k, v in pairs(idx) do
    if type(v) == "function" and not k:find("^_") then names[#names + 1] = k end
  end
  table.sort(names)
  return names
end

T.test("the reference has a heading for every function and method", function()
  local headings = {}
  for line in read("docs/reference.md"):gmatch("[^\n]+") do
    if line:find("^### ") then headings[#headings + 1] = line end
  end
  local missing = {}
  local function need(name)
    for _, h in ipairs(headings) do
      if h:find(name, 1, true) then return end
    end
    missing[#missing + 1] = name
  end
  need("spawn_thread(")
  need("spawn_process(")
  for k, v in pairs(conc) do
    if not k:find("^_") and type(v) == "function" then need("conc." .. k .. "(") end
  end
  need("conc.version")
  local a, b = conc.pipe()
  local t = spawn_thread(function() end)
  local p = spawn_process(function() end)
  local kinds = {
    {"t", t}, {"p", p}, {"ch", conc.channel()}, {"a", a}, {"q", conc.queue()},
    {"lock", conc.lock()}, {"sem", conc.semaphore(1)}, {"ev", conc.event()},
    {"b", conc.barrier(1)}, {"s", conc.shared()},
    {"rl", conc.rlock()}, {"cond", conc.condition()}, {"tm", conc.timer(0)},
  }
  for _, k in ipairs(kinds) do
    for _, m in ipairs(methods(k[2])) do need(k[1] .. ":" .. m .. "(") end
  end
  t:join()
  p:join()
  a:close()
  b:close()
  local pool = require "conc.pool"
  for k in pairs(pool) do
    if not k:find("^_") then need("pool." .. k .. "(") end
  end
  local pl = pool.threads(1)
  local f = pl:submit(function() end)
  f:wait()
  for _, m in ipairs(methods(pl)) do need("p:" .. m .. "(") end
  for _, m in ipairs(methods(f)) do need("f:" .. m .. "(") end
  pl:close()
  T.ok(#missing == 0, "docs/reference.md lacks: " .. table.concat(missing, ", "))
end)

T.test("README.md links every page of docs/", function()
  local top = read("README.md")
  for _, page in ipairs(pages) do
    T.ok(top:find("(" .. page .. ")", 1, true), "README.md links " .. page)
  end
end)

T.test("docs/architecture.md and make layers place every file of vm/", function()
  local arch = read("docs/architecture.md")
  local tool = read("vm/tools/layers.sh")
  local table_of_layers = tool:match("LAYERS='(.-)'")
  T.ok(table_of_layers, "vm/tools/layers.sh has its table of layers")
  local files = {}
  for _, path in ipairs(ls("vm/*.c")) do
    local name = path:match("vm/(.-)%.c$")
    files[name] = true
    T.ok(arch:find("`" .. name .. ".c`", 1, true),
         "docs/architecture.md describes " .. name .. ".c")
    T.ok((" " .. table_of_layers .. " "):find("%s" .. name .. "%s"),
         "vm/tools/layers.sh gives " .. name .. ".c a layer")
  end
  for name in arch:gmatch("| `([%w_]+)%.c`") do
    T.ok(files[name] or name == "stdlib_gen",
         "docs/architecture.md describes " .. name .. ".c, which is not in vm/")
  end
end)

T.done()
