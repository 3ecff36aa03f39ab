-- conc.pool: pools of worker threads or processes, map and futures.
--
--   local pool = require "conc.pool"
--   local p = pool.threads(4)            -- or pool.processes(4)
--   local squares = p:map(function(x) return x * x end, {1, 2, 3})
--   local f = p:submit(string.rep, "ab", 3)
--   print(f:result())                    --> ababab
--   p:close()
--
-- DESIGN. Each worker has an inbox of its own (a channel for threads, a
-- queue for processes) and every worker answers on one shared results
-- channel or queue. A function goes to a worker once ("def"); then work
-- names it by number. Work is a submitted call, or a range of a map's
-- list: the pool carves ranges as workers have room, big while much is
-- left and smaller towards the end (guided scheduling), so small items
-- cost little and big ones still spread over every worker; the worker
-- sends back the range's results in one message. Each worker has at most
-- two messages in flight. There is no thread in the pool's own state:
-- whoever waits (map, result, wait, as_completed, close) pumps: sends
-- what is pending, takes what came back. Waiting selects over the results
-- and the worker handles, so a worker process that dies is noticed at
-- once: its work fails with how it died, and a new worker takes its place.

local conc = require "conc"

local pool = {}

local Pool = {}
Pool.__index = Pool
local Future = {}
Future.__index = Future

local unpack, pack = table.unpack, table.pack
local now = conc.now
local MAX_RANGE = 256

-- ------------------------------------------------------------ workers

-- The loop every worker runs. Messages: def {k, fn} and undef {k} (the
-- function of a map, sent once to each worker it reaches, dropped when
-- the map ends); call {id, fn, args} (the function comes with each call,
-- so that it carries its upvalues as they are then); map {id, k, items};
-- stop.
local function worker_loop(inbox, results, wid)
  local defs = {}
  local traceback = debug.traceback
  while true do
    local m = inbox:recv()
    if m == nil or m.op == "stop" then return end
    if m.op == "def" then
      defs[m.k] = m.fn
    elseif m.op == "undef" then
      defs[m.k] = nil
    elseif m.op == "call" then
      local a = m.args
      results:send({wid = wid, id = m.id,
                    r = pack(xpcall(m.fn, traceback, unpack(a, 1, a.n)))})
    else                         -- a range of a map: one value per item
      local fn, items, vals = defs[m.k], m.items, {}
      local n, err = #items, nil
      for i = 1, n do
        local ok, v = xpcall(fn, traceback, items[i])
        if not ok then
          err = v
          break
        end
        vals[i] = v
      end
      results:send({wid = wid, id = m.id, vals = vals, n = n, err = err})
    end
  end
end

-- A pool is closed when it is collected (and so at exit) by the __gc of
-- a guard. Finalizers run newest first, and a handle's own __gc releases
-- it: the guard must be newer than every handle the pool holds, so each
-- new worker gets a new guard and the old one goes inert.
local guard_mt = {__gc = function(g)
  local p = g.pool
  if p and p.open then pcall(Pool.close, p) end
end}

local function new_guard(p)
  if p.guard then p.guard.pool = nil end
  p.guard = setmetatable({pool = p}, guard_mt)
end

local function start_worker(p, slot)
  local inbox = p.kind == "threads" and conc.channel() or conc.queue()
  local spawn = p.kind == "threads" and spawn_thread or spawn_process
  local name = string.format("pool-%s-%d", p.kind == "threads" and "thread" or "process", slot)
  local h = spawn({name = name, daemon = true}, worker_loop, inbox, p.results, slot)
  p.workers[slot] = {h = h, inbox = inbox, defs = {}, inflight = {}, count = 0,
                     slot = slot}
  p.select_list = nil
  if p.guard then new_guard(p) end
end

local function new_pool(kind, n)
  if n == nil then n = conc.cpu_count() end
  if math.type(n) ~= "integer" or n < 1 then
    error(string.format("bad argument #1 to '%s' (positive integer expected, got %s)",
                        kind, tostring(n)), 3)
  end
  local p = setmetatable({
    kind = kind, n = n, workers = {}, nextid = 0, nextk = 0,
    fns = {},                                 -- map number -> its function
    calls = {}, chead = 1, ctail = 0,         -- submitted calls not sent yet
    maps = {},                                -- maps with ranges left to send
    work = {},                                -- id -> work in flight
    live = 0,                                 -- calls and maps not settled
    settled = 0,                              -- completion counter
    open = true,
  }, Pool)
  p.results = kind == "threads" and conc.channel() or conc.queue()
  for i = 1, n do start_worker(p, i) end
  new_guard(p)
  return p
end

function pool.threads(n) return new_pool("threads", n) end
function pool.processes(n) return new_pool("processes", n) end

-- ------------------------------------------------------------ dispatch

-- A map's function gets a number, under which each worker keeps the copy
-- it was sent until the map ends (forget).
local function define(p, fn)
  p.nextk = p.nextk + 1
  p.fns[p.nextk] = fn
  return p.nextk
end

local function forget(p, k)
  p.fns[k] = nil
  for _, w in ipairs(p.workers) do
    if w.defs[k] then
      w.defs[k] = nil
      pcall(w.inbox.send, w.inbox, {op = "undef", k = k})
    end
  end
end

local function send(p, w, k, msg)
  if k and not w.defs[k] then
    w.inbox:send({op = "def", k = k, fn = p.fns[k]})
    w.defs[k] = true
  end
  p.nextid = p.nextid + 1
  msg.id = p.nextid
  w.inbox:send(msg)
  w.count = w.count + 1
  w.inflight[msg.id] = true
  return msg.id
end

local function settle_call(p, c, ok, values, err)
  p.live = p.live - 1
  p.settled = p.settled + 1
  c.sink(ok, values, err, p.settled)
end

local function fail_range(p, r, err)
  local m = r.map
  if not m.failed then m.failed = err end
  m.done = m.done + r.n
end

-- Sends work to the workers with room, a message each per round (every
-- idle worker gets some before any gets a second): calls first, then
-- map ranges.
local function dispatch(p)
  for round = 1, 2 do
  for _, w in ipairs(p.workers) do
    if w.count < round then
      local c = p.calls[p.chead]
      if c then
        p.calls[p.chead] = nil
        p.chead = p.chead + 1
        c.worker = w
        local ok, id = pcall(send, p, w, nil, {op = "call", fn = c.fn, args = c.args})
        if ok then p.work[id] = c
        else settle_call(p, c, false, nil, id) end      -- its args cannot go
      else
        local m = p.maps[1]
        if not m then goto done end
        local left = m.n - m.next + 1
        -- a share of what is left, in whole chunks
        local size = math.max(m.chunk, math.min(MAX_RANGE, left // (2 * p.n)))
        size = math.min(left, (size + m.chunk - 1) // m.chunk * m.chunk)
        local items = table.move(m.list, m.next, m.next + size - 1, 1, {})
        local r = {map = m, first = m.next, n = size, worker = w}
        m.next = m.next + size
        if m.next > m.n then table.remove(p.maps, 1) end
        local ok, id = pcall(send, p, w, m.k, {op = "map", k = m.k, items = items})
        if ok then p.work[id] = r
        else fail_range(p, r, id) end                   -- its items cannot go
      end
    end
  end
  end
  ::done::
  if p.chead > p.ctail then p.calls, p.chead, p.ctail = {}, 1, 0 end
end

local function take(p, msg)
  local w = p.workers[msg.wid]
  local r = p.work[msg.id]
  if w and w.inflight[msg.id] then
    w.inflight[msg.id] = nil
    w.count = w.count - 1
  end
  if r == nil then return end
  p.work[msg.id] = nil
  local who = w and w.h.name or "pool worker"
  if r.map then
    local m = r.map
    if msg.err then
      local e = msg.err
      if type(e) == "string" then e = who .. ": " .. e end
      fail_range(p, r, e)
    else
      table.move(msg.vals, 1, r.n, r.first, m.out)
      m.done = m.done + r.n
    end
  else
    local res = msg.r
    if res[1] then
      settle_call(p, r, true, pack(unpack(res, 2, res.n)))
    else
      local e = res[2]
      if type(e) == "string" then e = who .. ": " .. e end
      settle_call(p, r, false, nil, e)
    end
  end
end

-- A worker ended while it should not have: its work fails, a new worker
-- takes its place.
local function worker_died(p, w)
  local ok, err = pcall(w.h.join, w.h)
  -- What it sent before it ended is already in the results (select may
  -- have seen the end first, racing with the results' readiness): take
  -- that before failing the rest.
  while next(w.inflight) ~= nil do
    local msg = p.results:recv(0)
    if msg == nil then break end
    take(p, msg)
  end
  local why = "pool worker died: " .. (ok and (w.h.name .. " ended") or tostring(err))
  for id in pairs(w.inflight) do
    local r = p.work[id]
    if r then
      p.work[id] = nil
      if r.map then fail_range(p, r, why) else settle_call(p, r, false, nil, why) end
    end
  end
  start_worker(p, w.slot)
end

-- Dispatches, then waits (until the deadline) for one answer or one
-- worker's end. False on timeout.
local function pump(p, timeout)
  dispatch(p)
  local list = p.select_list
  if not list then
    list = {p.results}
    for _, w in ipairs(p.workers) do list[#list + 1] = w.h end
    p.select_list = list
  end
  local item, v = conc.select(list, timeout)
  if item == nil then
    if v == "timeout" then return false end
    error("pool: results closed")
  end
  if item == p.results then
    take(p, v)
  else
    for _, w in ipairs(p.workers) do
      if w.h == item then
        worker_died(p, w)
        break
      end
    end
  end
  return true
end

-- ------------------------------------------------------------ futures

local function check_pool(p, name)
  if getmetatable(p) ~= Pool then
    error(string.format("bad argument #1 to '%s' (pool expected, got %s)", name,
                        type(p)), 3)
  end
  if not p.open then error("pool is closed", 3) end
end

function Pool:submit(fn, ...)
  check_pool(self, "submit")
  if type(fn) ~= "function" then
    error(string.format("bad argument #1 to 'submit' (function expected, got %s)",
                        type(fn)), 2)
  end
  local f = setmetatable({pool = self, state = "pending"}, Future)
  self.ctail = self.ctail + 1
  self.calls[self.ctail] = {fn = fn, args = pack(...),
    sink = function(ok, values, err, seq)
      f.seq = seq
      if ok then f.state, f.values = "done", values
      else f.state, f.err = "failed", err end
    end}
  self.live = self.live + 1
  dispatch(self)
  return f
end

local function check_future(f, name)
  if getmetatable(f) ~= Future then
    error(string.format("bad argument #1 to '%s' (future expected, got %s)", name,
                        type(f)), 3)
  end
end

local function check_timeout(t, name)
  if t ~= nil and (type(t) ~= "number" or t < 0 or t ~= t) then
    error(string.format("bad argument #1 to '%s' (non-negative number expected)", name), 3)
  end
end

-- Pumps until f settles or the deadline passes; true if it settled.
local function await(f, timeout)
  local deadline = timeout and now() + timeout
  while f.state == "pending" do
    local left = deadline and deadline - now()
    if left and left <= 0 then return false end
    pump(f.pool, left)
  end
  return true
end

function Future:wait(timeout)
  check_future(self, "wait")
  check_timeout(timeout, "wait")
  return await(self, timeout)
end

function Future:done()
  check_future(self, "done")
  if self.state == "pending" then pump(self.pool, 0) end
  return self.state ~= "pending"
end

function Future:result(timeout)
  check_future(self, "result")
  check_timeout(timeout, "result")
  if not await(self, timeout) then error("timeout", 2) end
  if self.state == "failed" then error(self.err, 0) end
  return unpack(self.values, 1, self.values.n)
end

function Future:__tostring()
  return string.format("<future %s>", self.state)
end

-- The futures of the list, in the order they settle.
function pool.as_completed(futures)
  if type(futures) ~= "table" then
    error("bad argument #1 to 'as_completed' (table expected, got " .. type(futures) .. ")", 2)
  end
  local left = {}
  for i, f in ipairs(futures) do
    check_future(f, "as_completed")
    left[i] = f
  end
  return function()
    while #left > 0 do
      local best
      for i, f in ipairs(left) do
        if f.state ~= "pending" and (best == nil or f.seq < left[best].seq) then
          best = i
        end
      end
      if best then return table.remove(left, best) end
      pump(left[1].pool)
    end
    return nil
  end
end

-- ------------------------------------------------------------ map

local function progress_bar(total)
  if not conc._isatty(io.stderr) then return nil end
  local t0, last = now(), 0
  return function(done, final)
    local t = now()
    if not final and t - last < 0.1 then return end
    last = t
    local rate = done / math.max(t - t0, 1e-9)
    local eta = rate > 0 and (total - done) / rate or 0
    local width = 30
    local fill = total > 0 and math.floor(width * done / total) or width
    io.stderr:write(string.format("\r[%s%s] %d/%d  %.0f/s  ETA %.0fs ",
                                  string.rep("#", fill), string.rep(".", width - fill),
                                  done, total, rate, eta))
    if final then io.stderr:write("\n") end
    io.stderr:flush()
  end
end

function Pool:map(fn, list, opts)
  check_pool(self, "map")
  if type(fn) ~= "function" then
    error(string.format("bad argument #1 to 'map' (function expected, got %s)", type(fn)), 2)
  end
  if type(list) ~= "table" then
    error(string.format("bad argument #2 to 'map' (table expected, got %s)", type(list)), 2)
  end
  opts = opts or {}
  if type(opts) ~= "table" then
    error(string.format("bad argument #3 to 'map' (table expected, got %s)", type(opts)), 2)
  end
  for key in pairs(opts) do
    if key ~= "chunksize" and key ~= "progress" then
      error(string.format("bad argument #3 to 'map' (unknown option '%s')", tostring(key)), 2)
    end
  end
  local chunk = opts.chunksize or 1
  if math.type(chunk) ~= "integer" or chunk < 1 then
    error("bad argument #3 to 'map' (chunksize must be a positive integer)", 2)
  end
  local n = #list
  local m = {k = define(self, fn), list = list, n = n, next = 1, chunk = chunk,
             out = {}, done = 0}
  if n == 0 then return {} end
  self.maps[#self.maps + 1] = m
  self.live = self.live + 1
  local bar = opts.progress and progress_bar(n)
  -- protected, so that an interrupt, a cancel or an error of the pool
  -- leaves no map behind that later calls would wait for
  local ok, err = pcall(function()
    while m.done < n and not m.failed do
      pump(self)
      if bar then bar(m.done) end
    end
  end)
  if bar then bar(m.done, true) end
  self.live = self.live - 1
  forget(self, m.k)
  if not ok or m.failed then
    for i, x in ipairs(self.maps) do       -- what is not sent yet: dropped
      if x == m then table.remove(self.maps, i) break end
    end
    m.next = n + 1
    error(ok and m.failed or err, 0)
  end
  return m.out
end

-- ------------------------------------------------------------ ending

local function stop_workers(p, how)
  for _, w in ipairs(p.workers) do
    if how == "terminate" then
      if p.kind == "threads" then w.h:cancel() else w.h:kill("KILL") end
    else
      pcall(w.inbox.send, w.inbox, {op = "stop"})
    end
  end
  for _, w in ipairs(p.workers) do pcall(w.h.join, w.h) end
end

-- close: the queued work is done, then the workers stop.
function Pool:close()
  if getmetatable(self) ~= Pool then
    error("bad argument #1 to 'close' (pool expected)", 2)
  end
  if not self.open then return end
  self.open = false
  while next(self.work) ~= nil or self.calls[self.chead] or self.maps[1] do
    pump(self)
  end
  stop_workers(self, "close")
end

-- terminate: the workers stop now; what they had, or had not started,
-- fails.
function Pool:terminate()
  if getmetatable(self) ~= Pool then
    error("bad argument #1 to 'terminate' (pool expected)", 2)
  end
  if not self.open then return end
  self.open = false
  stop_workers(self, "terminate")
  for id, r in pairs(self.work) do
    self.work[id] = nil
    if r.map then fail_range(self, r, "pool terminated")
    else settle_call(self, r, false, nil, "pool terminated") end
  end
  for i = self.chead, self.ctail do
    settle_call(self, self.calls[i], false, nil, "pool terminated")
  end
  self.calls, self.chead, self.ctail = {}, 1, 0
  for _, m in ipairs(self.maps) do
    m.failed = m.failed or "pool terminated"
  end
  self.maps = {}
end

function Pool:__tostring()
  return string.format("<pool of %d %s%s>", self.n, self.kind,
                       self.open and "" or ", closed")
end

Pool.__close = Pool.close

return pool
