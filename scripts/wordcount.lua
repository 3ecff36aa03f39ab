-- A parallel word count: each file is counted by a worker of a pool, the
-- main thread merges the counts and prints the most frequent words.
--
--   conclua scripts/wordcount.lua [-p] [file...]
--
-- With no files it counts conclua's own scripts/ and docs/. -p uses a pool
-- of processes instead of threads (same code; only the pool differs).

local pool = require "conc.pool"

local use_processes = false
local files = {}
for _, a in ipairs(arg) do
  if a == "-p" then use_processes = true else files[#files + 1] = a end
end

-- No files given: the .lua and .md files beside this script and in docs/.
if #files == 0 then
  local here = arg[0]:match("^(.*)/") or "."
  local cmd = string.format("ls '%s'/*.lua '%s'/../docs/*.md 2>/dev/null", here, here)
  local ls = assert(io.popen(cmd))
  for path in ls:lines() do files[#files + 1] = path end
  ls:close()
end

-- Runs in a worker: the words of one file and how often each appears.
-- Errors (a missing file) travel back to map, which raises them.
local function count(path)
  local f = assert(io.open(path, "r"))
  local text = f:read("a")
  f:close()
  local counts, total = {}, 0
  for word in text:gmatch("%a%a[%w_']*") do  -- two letters or more
    word = word:lower()
    counts[word] = (counts[word] or 0) + 1
    total = total + 1
  end
  return {path = path, counts = counts, total = total}
end

local t0 = conc.now()
local p = use_processes and pool.processes() or pool.threads()
local ok, per_file = pcall(p.map, p, count, files)
p:close()
if not ok then
  io.stderr:write("wordcount: ", tostring(per_file), "\n")
  os.exit(1)
end

-- Merge in the main thread.
local counts, total = {}, 0
for _, r in ipairs(per_file) do
  for word, n in pairs(r.counts) do counts[word] = (counts[word] or 0) + n end
  total = total + r.total
end
local elapsed = conc.now() - t0

local words = {}
for word in pairs(counts) do words[#words + 1] = word end
table.sort(words, function(a, b)
  if counts[a] ~= counts[b] then return counts[a] > counts[b] end
  return a < b
end)

print(string.format("%d files, %d words, %d distinct, counted by %d %s in %.3f s",
                    #files, total, #words, p.n,
                    use_processes and "processes" or "threads", elapsed))
for i = 1, math.min(10, #words) do
  print(string.format("%6d  %s", counts[words[i]], words[i]))
end
