-- A pipeline of threads joined by channels:
--
--   producer --lines--> 3 parsers --records--> consumer (main)
--                                 --rejects-->
--
-- The producer makes web-server log lines (a few malformed); parsers turn
-- lines into records; the main thread selects over records and rejects,
-- totals them, and reports when nothing came for a while. Shutdown is by
-- closing: the producer closes 'lines' when done, the last parser to
-- finish closes 'records' and 'rejects', and select then says "closed".
-- A stop event ends everything early (here: after a time budget).
--
--   conclua scripts/pipeline.lua [lines] [seconds]

local LINES = tonumber(arg[1]) or 20000
local BUDGET = tonumber(arg[2]) or 5
local PARSERS = 3

local lines = conc.channel(64)      -- bounded: a slow parser slows the producer
local records = conc.channel(64)
local rejects = conc.channel()
local stop = conc.event()
local stats = conc.shared()         -- counters every thread can bump

-- Producer: deterministic fake log lines, every 50th one malformed, with
-- one stall halfway. When 'lines' is full it sends with a timeout, so that
-- it notices 'stop' even if the parsers are stuck; it closes 'lines'
-- however it ends.
local producer = spawn_thread({name = "producer"}, function(n)
  local paths = {"/", "/index.html", "/about", "/api/items", "/missing"}
  local sent = 0
  for i = 1, n do
    local line
    if i % 50 == 0 then
      line = "garbage " .. i
    else
      local path = paths[i % #paths + 1]
      local status = path == "/missing" and 404 or 200
      line = string.format("10:%02d:%02d GET %s %d %d", i // 60 % 60, i % 60,
                           path, status, (i * 37) % 2000)
    end
    if not lines:send(line, 0) then    -- full: the parsers are behind
      stats:incr("full")
      while not lines:send(line, 0.1) do
        if stop:is_set() then goto done end
      end
    end
    if i == n // 2 then conc.sleep(0.7) end   -- the source stalls once
    sent = sent + 1
    if stop:is_set() then break end
  end
  ::done::
  lines:close()
  return sent
end, LINES)

-- Parsers: a record per good line, the line itself per bad one. The last
-- one out closes the downstream channels (the counter decides who).
local function parser()
  for line in lines:iter() do
    local path, status, size = line:match("^%d+:%d+:%d+ GET (%S+) (%d+) (%d+)$")
    if path then
      records:send({path = path, status = tonumber(status), bytes = tonumber(size)})
    else
      rejects:send(line)
    end
  end
  if stats:incr("parsers_done") == PARSERS then
    records:close()
    rejects:close()
  end
end

local parsers = {}
for i = 1, PARSERS do
  parsers[i] = spawn_thread({name = "parser-" .. i}, parser)
end

-- Consumer: the main thread. select gives whichever channel has a value;
-- nil, "timeout" when none did within 0.5 s; nil, "closed" once both are
-- closed and drained.
local deadline = conc.now() + BUDGET
local by_status, bytes, n_records, n_rejects, idle = {}, {}, 0, 0, 0
while true do
  local ch, v = conc.select({records, rejects}, 0.5)
  if ch == records then
    n_records = n_records + 1
    by_status[v.status] = (by_status[v.status] or 0) + 1
    bytes[v.path] = (bytes[v.path] or 0) + v.bytes
  elseif ch == rejects then
    n_rejects = n_rejects + 1
  elseif v == "timeout" then
    idle = idle + 1
    print("nothing for 0.5 s; workers: " .. #conc.workers())
  else                                   -- "closed": the pipeline drained
    break
  end
  if not stop:is_set() and conc.now() > deadline then
    print("time budget spent: stopping the producer")
    stop:set()
  end
end

local sent = producer:join()
for _, t in ipairs(parsers) do t:join() end

print(string.format("%d lines sent, %d records, %d rejected%s", sent, n_records,
                    n_rejects, stop:is_set() and " (stopped early)" or ""))
assert(n_records + n_rejects == sent, "a line was lost")
local codes = {}
for code in pairs(by_status) do codes[#codes + 1] = code end
table.sort(codes)
for _, code in ipairs(codes) do print(string.format("  status %d: %d", code, by_status[code])) end
local paths = {}
for path in pairs(bytes) do paths[#paths + 1] = path end
table.sort(paths)
for _, path in ipairs(paths) do print(string.format("  %-12s %8d bytes", path, bytes[path])) end
print(string.format("'lines' was full %d times; the consumer timed out %d times",
                    stats.full or 0, idle))
