-- conc.pool: pools of worker threads or processes, map and futures.
--
--   local pool = require "conc.pool"
--   local p = pool.threads(4)            -- or pool.processes(4)
--   local squares = p:map(function(x) return x * x end, {1, 2, 3})
--   local f = p:submit(string.rep, "ab", 3)
--   print(f:result())                    --> ababab
--   p:close()
--
-- DESIGN. A pool is an executor: its manager, a daemon thread of its own,
-- owns the workers, schedules the work, watches the workers end and
-- settles the futures, whatever the threads that submitted the work do
-- meanwhile. Those threads reach it through the pool object (vm/pool.c):
-- a handle that crosses between threads by reference, holding the
-- manager's request channel, so any number of threads submit and map at
-- once. A submit sends the manager a future (vm/future.c, a one-shot slot
-- any thread can wait on) with the packed call; a thread pool's submit
-- sends it instead on the pool's channel of calls, which every worker
-- selects on beside its inbox (newest receiver first): the worker that
-- takes it settles the future, and a close or terminate shuts that
-- channel and has the workers drain it (shut_calls). A map sends its ranges of
-- items, packed, with a reply channel of its own, and gathers the
-- results that come back there. Arguments and results are packed once
-- where they are made and unpacked once where they are used (vm/parcel.c):
-- the manager routes them unopened (a thread worker settles its call's
-- future itself: one hop less). The manager hands work out as
-- workers have room, a message each per round, two at most in flight per
-- worker, calls before map ranges. The submitter of a map cuts its list
-- in ranges sized to what is left (guided scheduling: big while much is
-- left, smaller towards the end), so small items cost little and big
-- ones still spread over every worker; it packs and sends them in
-- batches, so the workers start on the first ones while it packs the
-- rest, and an item that cannot be copied stops the map before anything
-- after it is sent. The manager selects over the requests, the answers,
-- every worker's handle and the pool's lifeline (settled when the pool
-- is collected, or at exit): a worker that ends is noticed at once, the
-- messages it never took from its inbox go back to the queue, only the
-- task it was running fails, and a new worker takes its place before any
-- more work is sent. close() lets the queued work finish; terminate()
-- stops the workers now and fails what is left with "pool terminated".
-- How a task reaches a worker, how the answer comes back, how a worker
-- starts, stops and is seen to end is a transport (one per kind of
-- worker: threads, processes, the ranks of an MPI job), so a new kind of
-- worker is one table.

local conc = require "conc"
local kit = conc._poolkit()
local pack, unpack = kit.pack, kit.unpack

local pool = {}
local Pool = {}                 -- the methods of pool handles
kit.register(Pool)

-- The methods of Pool are called by the handle's own (C) methods: their
-- caller is that far up.
local CALLER = 3

-- Raises "bad argument #i to 'fname' (why)" at 'level' as error() takes
-- it from the function that calls this one (Lua's luaL_argerror).
local function argerror(i, fname, why, level)
  error(string.format("bad argument #%d to '%s' (%s)", i, fname, why), level + 1)
end

-- The same for a value of the wrong type.
local function typeerror(i, fname, expected, got, level)
  argerror(i, fname, expected .. " expected, got " .. type(got), level + 1)
end

local tpack, tunpack = table.pack, table.unpack
local now = conc.now
-- A range is at most MAX_RANGE items and, once the items' size is known,
-- about RANGE_BYTES: a range costs the manager a few microseconds, so
-- ranges of small items are long, and ranges of big ones stay small
-- messages.
local MAX_RANGE = 2048
local RANGE_BYTES = 1 << 20
local BATCH = 16                -- ranges per message after the first

-- ------------------------------------------------------------ workers

-- The loop of every worker, thread or process: messages arrive in its
-- inbox, answers go to the pool's results; 'remote' when the answers go
-- to another process (packed as bytes only). Messages: def {k, fn} and
-- undef {k} (a map's function, sent once to each worker it reaches,
-- dropped when the map ends); call {id, p = fn and its arguments, packed}
-- (the function comes with each call, with its upvalues as they are
-- then); map {id, k, first, n, items = packed list}; stop. Answers:
-- {wid, id, ok, p = the packed results or error value}. A call may come
-- with its future f (a thread worker's: one hop less back to whoever
-- waits): the worker settles it and answers {wid, id, ok, direct}.
-- A thread pool's worker also takes calls {f, p} straight from their
-- submitters, on the pool's channel of calls: it starts the future,
-- settles it, and the manager never hears of it; drain (the calls are
-- closed: take what is left of them) is answered {wid, callsdone}.
local function worker_loop(inbox, results, wid, name, remote, poolid, cfg, calls)
  cfg = cfg or {}                        -- a rank's worker has no options
  debug.getregistry()["conc.pool worker of"] = poolid
  -- the pool's initializer first: a worker whose initializer fails ends
  -- at once, and says so (the pool is then broken: no worker could run)
  if cfg.init then
    local args = cfg.initargs or {}
    local ok, e = pcall(cfg.init, table.unpack(args, 1, args.n or #args))
    if not ok then return {initfailed = name .. ": " .. tostring(e)} end
  end
  local tasks, maxtasks = 0, cfg.maxtasks
  local kit = conc._poolkit()
  local pack, unpack = kit.pack, kit.unpack
  local tpack, tunpack = table.pack, table.unpack
  local traceback = debug.traceback
  local defs = {}
  -- a task's error as its submitter sees it: a message names the worker
  local function failed(e)
    if type(e) == "string" then e = name .. ": " .. e end
    return pack(remote, "error", e) or
           pack(remote, "error", name .. ": (error object is a " .. type(e) .. " value)")
  end
  local function call(t)
    return t[1](tunpack(t, 2, t.n))
  end
  -- an answer too big for the results goes as an error of its own
  local function answer(a)
    local ok, e = pcall(results.send, results, a)
    if not ok then
      a.ok, a.p = false, pack(remote, "error", "the results cannot be sent: " .. tostring(e))
      results:send(a)
    end
  end
  -- runs a packed call: ok, and its packed results or error
  local function run(packed)
    local okd, t = pcall(function() return tpack(unpack(packed)) end)
    local r = okd and tpack(xpcall(call, traceback, t)) or
              {false, "the call cannot be received: " .. tostring(t)}
    if not r[1] then return false, failed(r[2]) end
    local p, err = pack(remote, "results[%d]", tunpack(r, 2, r.n))
    if not p then return false, pack(remote, "error", err) end
    return true, p
  end
  -- a task is over: true when this worker has done its share
  local function counted()
    tasks = tasks + 1
    return maxtasks ~= nil and tasks >= maxtasks
  end
  -- a call from its submitter. kit.take makes it this worker's (guard.f)
  -- in the step that takes it; whatever ends the worker before the call
  -- is settled (a cancel: terminate) fails its future in guard's __close,
  -- which the unwinding of a cancel runs to its end
  local guard <close> = setmetatable({}, {__close = function(g, e)
    local f = g.f
    g.f = nil
    if f == nil or f:done() then return end
    local why = e == "cancelled" and "pool terminated" or
                "pool worker died: " .. name .. ": " .. tostring(e)
    kit.settle(f, false, pack(remote, "error", why))
  end})
  local function direct(m)
    if kit.start(m.f) then                 -- else cancelled before it ran
      local ok, p = run(m.p)
      conc.sleep(0)             -- a cancel raises here, not in the settle
      kit.settle(m.f, ok, p)
    end
    guard.f = nil
  end
  local take = kit.take
  local sel, drain = calls and {inbox, calls}, calls and {calls}
  while true do
    local m
    if sel then
      local item, v = take(guard, calls, sel)
      if item == calls then
        direct(v)
        if counted() then return end
      elseif item == nil then            -- both closed
        return
      else
        m = v
      end
    else
      m = inbox:recv()
      if m == nil then return end
    end
    local op = m and m.op
    if m == nil then                    -- a call, run above
    elseif op == "stop" then
      return
    elseif op == "drain" then
      sel = nil
      while true do
        local item, v = take(guard, calls, drain, 0)
        if item ~= calls then break end
        direct(v)
        if counted() then return end
      end
      answer({wid = wid, callsdone = true})
    elseif op == "def" then
      local ok, fn = pcall(unpack, m.fn)
      defs[m.k] = ok and fn or function() error(fn, 0) end
    elseif op == "undef" then
      defs[m.k] = nil
    elseif op == "call" then
      local ok, p = run(m.p)
      if m.f then                -- settled here; the manager hears it is done
        -- a worker being cancelled (terminate) raises here instead of
        -- settling with its 'cancelled': the manager says terminated
        conc.sleep(0)
        kit.settle(m.f, ok, p)
        answer({wid = wid, id = m.id, ok = ok, direct = true})
      else
        answer({wid = wid, id = m.id, ok = ok, p = p})
      end
      if counted() then return end                 -- replaced now
    else                        -- a range of a map: one value per item
      local fn, vals, err = defs[m.k], {}, nil
      local ok, items = pcall(unpack, m.items)
      if not ok then
        err = failed(string.format("map items %d to %d cannot be received: %s", m.first,
                                   m.first + m.n - 1, tostring(items)))
      else
        for i = 1, m.n do
          local ok2, v = xpcall(fn, traceback, items[i])
          if not ok2 then
            err = failed(v)
            break
          end
          vals[i] = v
        end
      end
      local p
      if not err then
        p = pack(remote, "result", vals)
        if not p then           -- which result cannot go: that item's error
          for i = 1, m.n do
            local _, e = pack(remote, "result", vals[i])
            if e then
              err = pack(remote, "error", string.format("map item %d: %s", m.first + i - 1, e))
              break
            end
          end
          err = err or pack(remote, "error", "map: results cannot be copied")
        end
      end
      answer({wid = wid, id = m.id, ok = err == nil, p = p or err})
      if counted() then return end
    end
  end
end

-- ------------------------------------------------------------ transports

-- One table per kind of worker. direct: a call goes with its future, for
-- the worker to settle. start(P, slot) -> a worker record w whose
-- w.h is selectable and ready once the worker has ended; send(w, m);
-- take(w) -> a message still in w's inbox, without waiting (a dead
-- worker's untaken work); stop(w) asks it to end after what it has;
-- kill(w) ends it now; results() -> the one channel or queue every worker
-- answers on; remote: packed values must be bytes only ("rank": not even
-- shared objects); finish(P), if any, runs once the workers are gone.
local transports = {}

-- Workers of this machine: an inbox each, made by 'box' (a channel; or a
-- queue, made before the fork so that the child has it), one results
-- object for all, started by 'spawn', stopped at once by 'kill'.
local function local_workers(kind, box, spawn, kill)
  local remote = box == conc.queue
  return {
    remote = remote,
    direct = not remote,
    results = box,
    start = function(P, slot)
      local inbox = box()
      local name = P.prefix .. "-" .. kind .. "-" .. slot
      local h = spawn({name = name, daemon = true}, worker_loop, inbox, P.results,
                      slot, name, remote, P.id, P.cfg, P.callsch)
      return {slot = slot, h = h, inbox = inbox, name = name}
    end,
    send = function(w, m) w.inbox:send(m) end,
    take = function(w) return w.inbox:recv(0) end,
    stop = function(w) w.inbox:send({op = "stop"}) end,
    kill = kill,
  }
end

transports.threads = local_workers("thread", conc.channel, spawn_thread,
                                   function(w) w.h:cancel() end)
transports.processes = local_workers("process", conc.queue, spawn_process,
                                     function(w) w.h:kill("KILL") end)

-- Worker ranks of an MPI job (conc.mpi, vm/mpi/mpi.c). Each worker is a
-- thread of a rank, started by that rank's server (pool._mpi_serve, a
-- thread conc.mpi starts on every rank but 0) on request, with an
-- inbox on a port of its own; answers come to one inbox of the manager;
-- the end of each worker comes to a port that a watcher thread of the
-- manager's rank waits on, so that w.h is a thread handle like the
-- others' (selectable once the worker has ended). Values cross packed as
-- for another rank: bytes only, no object at all. What a rank was sent
-- cannot be taken back (take gives nothing): a worker that ends fails the
-- tasks it had; a rank that dies ends the whole job (see conc.mpi).
local MPI_CONTROL = -1
local result_ports = setmetatable({}, {__mode = "k"})

transports.mpi = {
  remote = "rank",
  direct = false,
  results = function()
    local mpi = require "conc.mpi"
    local port = mpi._newport()
    local box = mpi._inbox(port)
    result_ports[box] = port
    return box
  end,
  start = function(P, slot)
    local mpi = require "conc.mpi"
    local ranks = P.cfg.ranks
    local rank = ranks[(slot - 1) % #ranks + 1]
    local name = string.format("rank %d (%s)", rank, mpi.host(rank))
    local inport, endport = mpi._newport(), mpi._newport()
    local h = spawn_thread({name = P.prefix .. "-" .. P.id .. "-rank-" .. slot, daemon = true},
                           function(r, port)
                             local m = require "conc.mpi"
                             local why = m._endpoint(r, port):recv()
                             m._drop(port)
                             return why
                           end, rank, endport)
    mpi._send(rank, MPI_CONTROL, {op = "start", inport = inport, resport = result_ports[P.results],
                                  endport = endport, slot = slot, name = name, pool = P.id})
    return {slot = slot, h = h, rank = rank, inport = inport, name = name}
  end,
  send = function(w, m) require("conc.mpi")._send(w.rank, w.inport, m) end,
  take = function() return nil end,
  stop = function(w) require("conc.mpi")._send(w.rank, w.inport, {op = "stop"}) end,
  kill = function(w) require("conc.mpi")._send(w.rank, MPI_CONTROL, {op = "kill", inport = w.inport}) end,
  -- the workers are gone: so is the port of their answers
  finish = function(P)
    if P.results then require("conc.mpi")._drop(result_ports[P.results]) end
  end,
}

-- A worker of pool.mpi, on its rank: the loop of every worker, its
-- answers sent to the manager's rank ('owner').
function pool._mpi_worker(inport, resport, slot, name, poolid, owner)
  local mpi = require "conc.mpi"
  local send = mpi._send
  local results = {send = function(_, a) return send(owner, resport, a) end}
  return worker_loop(mpi._endpoint(owner, inport), results, slot, name, "rank", poolid)
end

-- The server of a rank: starts the workers that pools of other ranks ask
-- for, cancels them on terminate, tells each pool when its worker has
-- ended, and ends when rank 0 does (conc.mpi hands it a bye then).
function pool._mpi_serve()
  local ok, mpi = pcall(require, "conc.mpi")
  if not ok then return end             -- the job ended before this started
  local ctl = mpi._inbox(MPI_CONTROL)
  local workers = {}                     -- inport -> {h, endport, owner}
  local function worker_main(...) return require("conc.pool")._mpi_worker(...) end
  while true do
    local list = {ctl}
    for _, w in pairs(workers) do list[#list + 1] = w.h end
    local item, m, src = conc.select(list)
    if item == ctl then
      if m.op == "start" then
        local ok, h = pcall(spawn_thread, {name = "pool-" .. m.pool .. "-worker-" .. m.slot,
                                           daemon = true},
                            worker_main, m.inport, m.resport, m.slot, m.name, m.pool, src)
        if ok then
          workers[m.inport] = {h = h, endport = m.endport, owner = src}
        else
          mpi._send(src, m.endport, "cannot start a worker: " .. tostring(h))
        end
      elseif m.op == "kill" then
        local w = workers[m.inport]
        if w then w.h:cancel() end
      elseif m.op == "ping" then         -- mpi.barrier under -l
        mpi._send(src, m.port, true)
      elseif m.op == "bye" then          -- rank 0 ends: so does the service
        return
      end
    else
      for port, w in pairs(workers) do
        if w.h == item then
          workers[port] = nil
          local ok, err = pcall(w.h.join, w.h)
          mpi._drop(port)
          pcall(mpi._send, w.owner, w.endport, ok and "ended" or tostring(err))
          break
        end
      end
    end
  end
end

-- Not a daemon: a rank that runs the script too (SPMD) waits at its end
-- for rank 0 to end, serving meanwhile.
function pool._mpi_start_server()
  spawn_thread({name = "mpi-server"},
               function() return require("conc.pool")._mpi_serve() end)
end

-- ------------------------------------------------------------ the manager

-- Its state P: workers[slot] = {slot, h, inbox, name, count (answers
-- owed), inflight[id], defs[k]}; calls[chead..ctail]: the calls {f, p}
-- not sent yet; maps: the maps with ranges to send now, oldest first;
-- bykey[reply]: each map still going, {reply, k, fnp, ranges[rnext..
-- rtail] (not sent yet), out (ranges sent, not answered), last (every
-- range has come), dropped}; work[id]: a call or a range a worker has.

local function new_worker(P, slot)
  local w = P.T.start(P, slot)
  w.count, w.inflight, w.defs = 0, {}, {}
  P.workers[slot] = w
  P.sel = nil
  if P.callsshut then pcall(P.T.send, w, {op = "drain"}) end
  return w
end

-- A thread pool's calls go straight to its workers (P.callsch). Closed
-- once the pool closes: a submitter then goes through the manager, and
-- each worker finishes what is left and says so (callsdone).
local function shut_calls(P)
  if P.callsch == nil or P.callsshut then return end
  P.callsshut = true
  P.callsch:close()
  for _, w in pairs(P.workers) do pcall(P.T.send, w, {op = "drain"}) end
end

local function calls_done(P)
  if P.callsch == nil then return true end
  if not P.callsshut then return false end
  for _, w in pairs(P.workers) do
    if not w.callsdone then return false end
  end
  return P.callsch:len() == 0
end

local function select_list(P)
  if not P.sel then
    local list = {P.requests, P.results}
    if not P.closing then list[#list + 1] = P.lifeline end
    for _, w in pairs(P.workers) do list[#list + 1] = w.h end
    P.sel = list
  end
  return P.sel
end

-- The packed form of an error value, for a future or a map's reply.
local function packed_error(e)
  return pack(false, "error", e) or pack(false, "error", tostring(e))
end

-- m has no more ranges to send (now, or ever).
local function unlist(P, m)
  for i, x in ipairs(P.maps) do
    if x == m then return table.remove(P.maps, i) end
  end
end

local function forget_map(P, m)
  P.bykey[m.reply] = nil
  unlist(P, m)
  for _, w in pairs(P.workers) do
    if w.defs[m.k] then
      w.defs[m.k] = nil
      pcall(P.T.send, w, {op = "undef", k = m.k})
    end
  end
end

-- A map is over once every range it will have has been answered.
local function map_check(P, m)
  if m.out == 0 and (m.dropped or (m.last and m.rnext > m.rtail)) then
    forget_map(P, m)
  end
end

-- The map is dropped (failed, or its submitter gave up): what was not
-- sent never will be; if 'packed' (an error value), its reply says so.
-- Dropped already (a second range failed, or the submitter's drop came
-- after a failure), it may be over now.
local function map_drop(P, m, packed)
  if m.dropped then return map_check(P, m) end
  m.dropped = true
  if packed then m.reply:send({err = packed}) end
  unlist(P, m)
  map_check(P, m)
end

local function map_fail(P, m, e)
  map_drop(P, m, packed_error(e))
end

local function fail_work(P, r, e)
  if r.f then kit.settle(r.f, false, packed_error(e))
  else
    local m = r.map
    m.out = m.out - 1
    map_fail(P, m, e)
  end
end

local function send_work(P, w, r, m)
  P.nextid = P.nextid + 1
  m.id = P.nextid
  local ok, err = pcall(P.T.send, w, m)
  if not ok then return fail_work(P, r, "pool: cannot send the work: " .. tostring(err)) end
  r.w = w
  w.count = w.count + 1
  w.inflight[m.id] = true
  P.work[m.id] = r
end

-- Sends work to the workers with room, a message each per round (every
-- idle worker gets some before any gets a second): calls first, then
-- map ranges.
-- The next call to send (its future now running), or nil.
local function next_call(P)
  while true do
    local c = P.calls[P.chead]
    if c == nil then
      if P.chead ~= 1 then P.calls, P.chead, P.ctail = {}, 1, 0 end   -- compact
      return nil
    end
    P.calls[P.chead] = nil
    P.chead = P.chead + 1
    if c.started or kit.start(c.f) then       -- not when it was cancelled
      c.started = true
      return c
    end
  end
end

local function dispatch(P)
  for round = 1, 2 do
    for _, w in pairs(P.workers) do
      if w.count < round then
        local c = next_call(P)
        if c then
          send_work(P, w, c, {op = "call", p = c.p, f = P.T.direct and c.f or nil})
        else
          local m = P.maps[1]
          if not m then return end
          local r = m.ranges[m.rnext]
          m.ranges[m.rnext] = nil
          m.rnext = m.rnext + 1
          if m.rnext > m.rtail then table.remove(P.maps, 1) end
          if not w.defs[m.k] then
            w.defs[m.k] = true
            pcall(P.T.send, w, {op = "def", k = m.k, fn = m.fnp})
          end
          m.out = m.out + 1
          r.map = m
          send_work(P, w, r, {op = "map", k = m.k, first = r.first, n = r.count,
                              items = r.items})
        end
      end
    end
  end
end

-- An answer from a worker.
local function take(P, a)
  local w = P.workers[a.wid]
  if a.callsdone then
    if w then w.callsdone = true end
    return
  end
  if w and w.inflight[a.id] then
    w.inflight[a.id] = nil
    w.count = w.count - 1
  end
  local r = P.work[a.id]
  if r == nil then return end          -- its map was dropped, or terminated
  P.work[a.id] = nil
  if r.f then
    if not a.direct then kit.settle(r.f, a.ok, a.p) end
  else
    local m = r.map
    m.out = m.out - 1
    if not a.ok then
      map_drop(P, m, a.p)
    else
      if not m.dropped then m.reply:send({first = r.first, count = r.count, p = a.p}) end
      map_check(P, m)
    end
  end
end

local function drain_results(P)
  while true do
    local a = P.results:recv(0)
    if a == nil then return end
    take(P, a)
  end
end

-- Puts work that a worker never took back at the front of the queue.
local function requeue(P, r)
  if r.f then
    P.chead = P.chead - 1
    P.calls[P.chead] = r
  else
    local m = r.map
    m.out = m.out - 1
    if m.dropped then return map_check(P, m) end
    if m.rnext > m.rtail then table.insert(P.maps, 1, m) end   -- listed again
    m.rnext = m.rnext - 1
    m.ranges[m.rnext] = r
  end
end

local function idle(P)
  return P.calls[P.chead] == nil and next(P.bykey) == nil and next(P.work) == nil and
         calls_done(P)
end

-- The calls no worker took fail with e.
local function refuse_calls(P, e)
  if P.callsch == nil then return end
  shut_calls(P)
  while true do
    local c = P.callsch:recv(0)
    if c == nil then return end
    kit.settle(c.f, false, packed_error(e))
  end
end

-- Everything not finished fails with e.
local function fail_all(P, e)
  refuse_calls(P, e)
  for id, r in pairs(P.work) do
    P.work[id] = nil
    fail_work(P, r, e)
  end
  for i = P.chead, P.ctail do
    local c = P.calls[i]
    if c then kit.settle(c.f, false, packed_error(e)) end
  end
  P.calls, P.chead, P.ctail = {}, 1, 0
  for _, m in pairs(P.bykey) do map_fail(P, m, e) end
end

-- A worker ended while it should not have: what it never took goes back
-- to the queue, the task it was running fails with how it ended, and a
-- new worker takes its place.
local function worker_died(P, w)
  local ok, err = pcall(w.h.join, w.h)
  P.workers[w.slot] = nil
  P.sel = nil
  if ok and type(err) == "table" and err.initfailed then
    P.broken = P.broken or "pool initializer failed: " .. err.initfailed
    err = P.broken
    ok = false
  end
  drain_results(P)                     -- what it answered before it ended
  local back = {}
  while true do
    local okm, m = pcall(P.T.take, w)
    if not okm or m == nil then break end
    if m.id and P.work[m.id] then back[#back + 1] = m.id end
  end
  for i = #back, 1, -1 do
    local id = back[i]
    w.inflight[id] = nil
    requeue(P, P.work[id])
    P.work[id] = nil
  end
  local why = "pool worker died: " .. (ok and (w.name .. " ended") or tostring(err))
  for id in pairs(w.inflight) do
    local r = P.work[id]
    if r then
      P.work[id] = nil
      fail_work(P, r, why)
    end
  end
  if P.broken then return fail_all(P, P.broken) end
  if P.stopping or (P.closing and idle(P)) then return end
  local okw, werr = pcall(new_worker, P, w.slot)
  if not okw and next(P.workers) == nil then    -- nobody left to do the work
    P.broken = "pool worker died, and no new one can start: " .. tostring(werr)
    fail_all(P, P.broken)
  end
end

local function refuse(r, why)
  if r.op == "call" then kit.settle(r.f, false, packed_error(why))
  elseif r.op == "map" or r.op == "more" then r.reply:send({err = packed_error(why)}) end
end

local function request(P, r)
  local op = r.op
  if op == "call" then
    if P.broken then return refuse(r, P.broken) end
    P.ctail = P.ctail + 1
    P.calls[P.ctail] = {f = r.f, p = r.p}
  elseif op == "map" or op == "more" then
    local m = P.bykey[r.reply]
    if op == "map" then
      if P.broken then return refuse(r, P.broken) end
      P.nextk = P.nextk + 1
      m = {reply = r.reply, k = P.nextk, fnp = r.fn, ranges = {}, rnext = 1,
           rtail = 0, out = 0}
      P.bykey[r.reply] = m
    end
    if m == nil or m.dropped then return end
    local had = m.rnext <= m.rtail
    for _, x in ipairs(r.ranges) do
      m.rtail = m.rtail + 1
      m.ranges[m.rtail] = x
    end
    m.last = r.last
    if not had and m.rnext <= m.rtail then P.maps[#P.maps + 1] = m end
    map_check(P, m)
  elseif op == "drop" then
    local m = P.bykey[r.reply]
    if m then map_drop(P, m) end
  elseif op == "close" then
    P.closing = true
    shut_calls(P)
  elseif op == "terminate" then
    P.closing, P.terminating = true, true
    shut_calls(P)
  end
end

local function stop_workers(P, kill)
  P.stopping = true
  for _, w in pairs(P.workers) do
    if kill then pcall(P.T.kill, w) else pcall(P.T.stop, w) end
  end
  for _, w in pairs(P.workers) do pcall(w.h.join, w.h) end
end

local function run(P)
  while true do
    dispatch(P)
    if P.terminating or (P.closing and idle(P)) then break end
    local item, v = conc.select(select_list(P))
    if item == P.requests then
      request(P, v)
    elseif item == P.results then
      take(P, v)
      drain_results(P)
    elseif item == P.lifeline then
      P.closing = true
      P.sel = nil
      shut_calls(P)
    else
      for _, w in pairs(P.workers) do
        if w.h == item then
          worker_died(P, w)
          break
        end
      end
    end
  end
end

-- The manager's thread: starts the workers, tells 'ready' how that went,
-- then runs the pool until it is closed, collected or terminated.
function pool._manage(id, kind, n, requests, lifeline, ready, cfg, calls)
  local P = {id = id, kind = kind, n = n, T = transports[kind], requests = requests,
             lifeline = lifeline, callsch = calls, prefix = cfg.name or "pool", cfg = cfg,
             workers = {}, calls = {},
             chead = 1, ctail = 0, maps = {}, bykey = {}, work = {},
             nextid = 0, nextk = 0}
  local ok, err = pcall(function()
    P.results = P.T.results()
    for slot = 1, n do new_worker(P, slot) end
  end)
  if not ok then
    stop_workers(P, true)
    ready:send({err = tostring(err)})
    return
  end
  ready:send({ok = true})
  ok, err = pcall(run, P)
  if P.terminating then
    stop_workers(P, true)
    fail_all(P, "pool terminated")
  elseif not ok then
    stop_workers(P, true)
    fail_all(P, "pool manager failed: " .. tostring(err))
  else
    stop_workers(P, false)
  end
  if P.T.finish then pcall(P.T.finish, P) end
  -- what came in meanwhile, or comes from now on, is refused
  refuse_calls(P, P.terminating and "pool terminated" or "pool is closed")
  requests:close()
  while true do
    local r = requests:recv(0)
    if r == nil then break end
    refuse(r, P.terminating and "pool terminated" or "pool is closed")
  end
end

-- ------------------------------------------------------------ the pool

-- The options of pool.threads and pool.processes: a table for the
-- manager (initializer, its arguments, the most tasks per worker, name).
local POOL_OPTS = {n = true, initializer = true, initargs = true,
                   maxtasksperchild = true, name = true}

local function pool_options(kind, opts)
  local cfg = {}
  for key in pairs(opts) do
    if not POOL_OPTS[key] then
      argerror(1, kind, "unknown option '" .. tostring(key) .. "'", 4)
    end
  end
  local function bad(key, expected)
    error(string.format("bad option '%s' to '%s' (%s expected, got %s)", key, kind,
                        expected, type(opts[key])), 5)
  end
  if opts.initializer ~= nil and type(opts.initializer) ~= "function" then
    bad("initializer", "function")
  end
  if opts.initargs ~= nil and type(opts.initargs) ~= "table" then bad("initargs", "table") end
  local m = opts.maxtasksperchild
  if m ~= nil and (math.type(m) ~= "integer" or m < 1) then
    bad("maxtasksperchild", "positive integer")
  end
  if opts.name ~= nil and type(opts.name) ~= "string" then bad("name", "string") end
  cfg.init, cfg.initargs, cfg.maxtasks, cfg.name =
    opts.initializer, opts.initargs, m, opts.name
  return opts.n, cfg
end

-- extra: what a kind adds to the manager's table (pool.mpi's ranks).
local function new_pool(kind, n, extra)
  local cfg = {}
  if type(n) == "table" then n, cfg = pool_options(kind, n) end
  for k, v in pairs(extra or {}) do cfg[k] = v end
  if n == nil then n = conc.cpu_count() end
  if math.type(n) ~= "integer" or n < 1 then
    argerror(1, kind, "positive integer expected, got " .. tostring(n), 3)
  end
  local requests, lifeline, ready = conc.channel(), kit.future(), conc.channel()
  local calls = transports[kind].direct and conc.channel() or nil
  local p = kit.pool(kind, n, cfg.name, requests, lifeline, calls)
  local ok, h = pcall(spawn_thread,
                      {name = (cfg.name or "pool-" .. p.id) .. "-manager", daemon = true},
                      function(...) return require("conc.pool")._manage(...) end,
                      p.id, kind, n, requests, lifeline, ready, cfg, calls)
  if not ok then
    kit.mark(p, "terminated")
    error(string.format("%s: cannot start the pool: %s", kind, tostring(h)), 3)
  end
  kit.setmanager(p, h)
  local item, r = conc.select({ready, h})
  if item == h then                      -- the manager failed to start
    kit.mark(p, "terminated")
    error(string.format("%s: cannot start the pool: %s", kind,
                        select(2, pcall(h.join, h))), 3)
  end
  if not r.ok then
    kit.mark(p, "terminated")
    h:wait()
    error(string.format("%s: cannot start the workers: %s", kind, r.err), 3)
  end
  return p
end

function pool.threads(n) return new_pool("threads", n) end
function pool.processes(n) return new_pool("processes", n) end

-- pool.mpi([n | opts]): workers on the ranks of an MPI job (conc.mpi);
-- opts: n (workers, spread over the ranks), ranks (a list; default every
-- rank but this one), threads (workers per rank, default 1).
function pool.mpi(opts)
  local ok, mpi = pcall(require, "conc.mpi")
  if not ok then
    if tostring(mpi):find("built without MPI support", 1, true) then
      error("pool.mpi: conclua was built without MPI support", 2)
    end
    error("pool.mpi: " .. tostring(mpi), 2)
  end
  local n, ranks, threads
  if type(opts) == "table" then
    for k in pairs(opts) do
      if k ~= "n" and k ~= "ranks" and k ~= "threads" then
        error(string.format("bad argument #1 to 'mpi' (unknown option '%s')", tostring(k)), 2)
      end
    end
    n, ranks, threads = opts.n, opts.ranks, opts.threads
  elseif opts ~= nil then
    n = opts
  end
  local size, me = mpi.size(), mpi.rank()
  if size < 2 then error("pool.mpi: no worker ranks (run under mpirun -np N, N >= 2)", 2) end
  if ranks == nil then
    ranks = {}
    for r = 0, size - 1 do if r ~= me then ranks[#ranks + 1] = r end end
  elseif type(ranks) ~= "table" or #ranks == 0 then
    error("bad argument #1 to 'mpi' (ranks must be a non-empty list)", 2)
  else
    for i, r in ipairs(ranks) do
      if math.type(r) ~= "integer" or r < 0 or r >= size or r == me then
        error(string.format("bad argument #1 to 'mpi' (ranks[%d]: %s is not a worker rank, 0 to %d but %d)",
                            i, tostring(r), size - 1, me), 2)
      end
    end
  end
  if threads ~= nil and (math.type(threads) ~= "integer" or threads < 1) then
    error("bad argument #1 to 'mpi' (threads must be a positive integer)", 2)
  end
  n = n or #ranks * (threads or 1)
  return new_pool("mpi", n, {ranks = ranks})
end

-- Raises e again at 'level' (2: the caller of the function that calls
-- this). An error raised inside this module (an interrupt in a wait,
-- say) has this file's position: it gets the caller's instead.
local HERE = "^%[conclua stdlib conc%.pool%]:%d+: "
local function rethrow(e, level)
  if type(e) == "string" and e:find(HERE) then
    error((e:gsub(HERE, "")), level + 1)
  end
  error(e, 0)
end

-- What a state keeps of each pool it uses: whether its values go to
-- other processes, and the manager's channel.
local info_of = setmetatable({}, {__mode = "k"})

local function info(p)
  local i = info_of[p]
  if i == nil then
    local requests, calls = kit.requests(p)
    i = {remote = p.kind == "mpi" and "rank" or p.kind ~= "threads", requests = requests,
         calls = calls, n = p.n}
    info_of[p] = i
  end
  return i
end

-- The pool's state; raises the way a method of 'name' should.
local function check(p, name)
  local st, why, isarg = kit.state(p)
  if st then return st end
  if isarg then
    argerror(1, name, why, CALLER + 1)
  end
  error(why, CALLER + 1)
end

local function send(p, m)
  local i = info(p)
  if not pcall(i.requests.send, i.requests, m) then error("pool is closed", CALLER + 1) end
end

function Pool:submit(fn, ...)
  local st = check(self, "submit")
  if type(fn) ~= "function" then
    typeerror(1, "submit", "function", fn, CALLER)
  end
  if st ~= "open" then error("pool is closed", CALLER) end
  local f = kit.future()
  local p, err = pack(info(self).remote, "spawn", fn, ...)
  if not p then                          -- fails its own future only
    kit.settle(f, false, packed_error(err))
    return f
  end
  -- straight to a worker (a thread pool), else (or once its calls are
  -- closed) through the manager
  local calls = info(self).calls
  if calls == nil or not pcall(calls.send, calls, {f = f, p = p}) then
    send(self, {op = "call", f = f, p = p})
  end
  return f
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

-- The error of the first item of list[first..first+size-1] that cannot
-- be packed, in the words of that item.
local function item_error(list, first, size, remote)
  for i = first, first + size - 1 do
    local _, e = pack(remote, "args[1]", list[i])
    if e then return string.format("map item %d: %s", i, e) end
  end
  return "map: the items cannot be copied"
end

-- Checks map's arguments and sends the work: a running map M whose
-- replies map_next takes. 'fname' names the method in errors, raised at
-- 'level' (the level of the method's caller from here).
local MAP_OPTS = {chunksize = true, progress = true, timeout = true}

local function map_begin(self, fname, fn, list, opts, level)
  local st = check(self, fname)
  if type(fn) ~= "function" then
    typeerror(1, fname, "function", fn, level)
  end
  if type(list) ~= "table" then
    typeerror(2, fname, "table", list, level)
  end
  opts = opts or {}
  if type(opts) ~= "table" then
    typeerror(3, fname, "table", opts, level)
  end
  for key in pairs(opts) do
    if not MAP_OPTS[key] then
      argerror(3, fname, "unknown option '" .. tostring(key) .. "'", level)
    end
  end
  local chunk = opts.chunksize or 1
  if math.type(chunk) ~= "integer" or chunk < 1 then
    argerror(3, fname, "chunksize must be a positive integer", level)
  end
  local timeout = opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0 or timeout ~= timeout) then
    argerror(3, fname, "timeout must be a non-negative number", level)
  end
  if st ~= "open" then error("pool is closed", level) end
  local n = #list
  local M = {n = n, done = 0, pool = self, deadline = timeout and now() + timeout}
  if n == 0 then return M end
  local i = info(self)
  local remote, requests = i.remote, i.requests
  local fnp, ferr = pack(remote, "fn", fn)
  if not fnp then error(ferr, level) end
  local reply = conc.channel()
  M.reply, M.requests = reply, requests
  M.bar = opts.progress and progress_bar(n)
  local nxt, argerr = 1, nil
  local function put(m)
    if not pcall(requests.send, requests, m) then error("pool is closed", 0) end
  end
  -- protected, so that a failure, an interrupt or a cancel leaves nothing
  -- of this map queued in the pool
  local ok, err = pcall(function()
    local batch, sent = {}, false
    local first_batch = 2 * i.n
    local cap = MAX_RANGE         -- how many items make a range: the first
    local one = pack(remote, "args", {list[1]})            -- item says first
    if type(one) == "string" then
      cap = math.max(1, math.min(MAX_RANGE, RANGE_BYTES // #one))
    end
    while nxt <= n do
      local left = n - nxt + 1
      local size
      if chunk >= left then
        size = left
      else                      -- a share of what is left, in whole chunks
        size = math.max(chunk, math.min(cap, left // (2 * i.n)))
        size = math.min(left, (size + chunk - 1) // chunk * chunk)
      end
      local items = pack(remote, "args", table.move(list, nxt, nxt + size - 1, 1, {}))
      if not items then
        argerr = item_error(list, nxt, size, remote)
        error(argerr, 0)
      end
      local bytes = type(items) == "string" and #items or 64 * size
      cap = math.max(1, math.min(MAX_RANGE, cap * 4, RANGE_BYTES * size // bytes))
      batch[#batch + 1] = {first = nxt, count = size, items = items}
      nxt = nxt + size
      if nxt > n or #batch >= (sent and BATCH or first_batch) then
        if sent then
          put({op = "more", reply = reply, ranges = batch, last = nxt > n})
        else
          put({op = "map", reply = reply, fn = fnp, ranges = batch, last = nxt > n})
          sent = true
        end
        batch = {}
      end
    end
  end)
  if not ok then
    pcall(requests.send, requests, {op = "drop", reply = reply})
    if argerr then error(argerr, level) end
    rethrow(err, level)
  end
  M.manager = kit.manager(self)
  return M
end

-- The next range of results of M: {first, count, vals}; raises the map's
-- error, "timeout" past its deadline, or "pool is closed". Unprotected:
-- run it under map_guard.
local function map_next(M)
  local function wait()
    if not M.deadline then return 1 end
    local left = M.deadline - now()
    if left <= 0 then error("timeout", 0) end
    return math.min(1, left)
  end
  local r = M.reply:recv(wait())
  while r == nil do              -- nothing yet: is there still a manager?
    if not M.manager:alive() and M.reply:len() == 0 then error("pool is closed", 0) end
    r = M.reply:recv(wait())
  end
  if r.err then error(unpack(r.err), 0) end
  M.done = M.done + r.count
  if M.bar then M.bar(M.done, M.done == M.n) end
  return r.first, r.count, unpack(r.p)
end

-- The map is over, all done (ok) or not (err): what is left of it in the
-- pool is dropped, and err raised at 'level'.
local function map_finish(M, ok, err, level)
  if M.finished then return end
  M.finished = true
  if not ok then
    if M.bar then M.bar(M.done, true) end
    pcall(M.requests.send, M.requests, {op = "drop", reply = M.reply})
    rethrow(err, level + 1)
  end
end

-- Gathers the results of a map begun (M) into a list, in order; called by
-- map and starmap, whose caller is CALLER + 1 from here (they call it in
-- parentheses, which is not a tail call, so that frame stays counted).
local function map_gather(M)
  local out = {n = M.n}
  if M.n == 0 then return out end
  local ok, err = pcall(function()
    while M.done < M.n do
      local first, count, vals = map_next(M)
      table.move(vals, 1, count, first, out)
    end
  end)
  map_finish(M, ok, err, CALLER + 1)
  return out
end

function Pool:map(fn, list, opts)
  local M = map_begin(self, "map", fn, list, opts, CALLER + 1)
  return (map_gather(M))
end

-- starmap: map with fn(table.unpack(args)) for each list of arguments.
function Pool:starmap(fn, list, opts)
  if type(fn) ~= "function" then typeerror(1, "starmap", "function", fn, CALLER) end
  if type(list) ~= "table" then typeerror(2, "starmap", "table", list, CALLER) end
  for i = 1, #list do
    if type(list[i]) ~= "table" then
      argerror(2, "starmap", string.format("item %d is a %s, not a list of arguments",
                                           i, type(list[i])), CALLER)
    end
  end
  local call = function(args) return (fn(table.unpack(args, 1, args.n or #args))) end
  local M = map_begin(self, "starmap", call, list, opts, CALLER + 1)
  return (map_gather(M))
end

-- imap and imap_unordered: an iterator of i, result (and a closing value
-- for the generic for: a loop left early drops the rest of the map).
local function imap(self, fname, ordered, fn, list, opts)
  local M = map_begin(self, fname, fn, list, opts, CALLER + 2)
  local got, nextout = {}, 1     -- results that came, by index
  local queue, qhead, qtail = {}, 1, 0   -- unordered: indexes, as they came
  local function more()
    local ok, first, count, vals = pcall(map_next, M)
    if not ok then map_finish(M, false, first, 2) end
    for k = 1, count do
      got[first + k - 1] = {vals[k]}
      if not ordered then
        qtail = qtail + 1
        queue[qtail] = first + k - 1
      end
    end
  end
  local function iter()
    if M.finished and nextout > M.n then return nil end
    if ordered then
      while nextout <= M.n and got[nextout] == nil do more() end
      if nextout > M.n then M.finished = true return nil end
      local i = nextout
      local v = got[i][1]
      got[i], nextout = nil, i + 1
      if nextout > M.n then M.finished = true end
      return i, v
    end
    while queue[qhead] == nil do
      if M.done >= M.n then M.finished = true return nil end
      more()
    end
    local i = queue[qhead]
    queue[qhead] = nil
    qhead = qhead + 1
    local v = got[i][1]
    got[i] = nil
    nextout = nextout + 1
    return i, v
  end
  local closer = setmetatable({}, {__close = function()
    if M.n > 0 and not M.finished then
      M.finished = true
      pcall(M.requests.send, M.requests, {op = "drop", reply = M.reply})
    end
  end})
  if M.n == 0 then M.finished = true end
  return iter, nil, nil, closer
end

function Pool:imap(fn, list, opts)
  return imap(self, "imap", true, fn, list, opts)
end

function Pool:imap_unordered(fn, list, opts)
  return imap(self, "imap_unordered", false, fn, list, opts)
end

-- ------------------------------------------------------------ ending

-- The pool goes to 'state' (the first time, the manager is told 'op'),
-- then waits for the manager to end: it has stopped every worker then.
-- Not from a worker of the pool itself, which the manager waits for.
local function ending(p, state, op)
  local _, changed = kit.mark(p, state)
  if changed then
    local i = info(p)
    pcall(i.requests.send, i.requests, {op = op})
  end
  local h = kit.manager(p)
  if h and debug.getregistry()["conc.pool worker of"] ~= p.id then
    local ok, err = pcall(h.wait, h)
    if not ok then rethrow(err, CALLER + 1) end
  end
end

-- close: the queued work is done, then the workers stop.
function Pool:close()
  check(self, "close")
  ending(self, "closed", "close")
end

-- terminate: the workers stop now; what they had, or had not started,
-- fails.
function Pool:terminate()
  check(self, "terminate")
  ending(self, "terminated", "terminate")
end

-- ------------------------------------------------------------ futures

-- The futures of the list, in the order they finish; raises timeout when
-- 'seconds' pass first.
function pool.as_completed(futures, seconds)
  if type(futures) ~= "table" then
    typeerror(1, "as_completed", "table", futures, 2)
  end
  if seconds ~= nil and (type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds) then
    argerror(2, "as_completed", "non-negative number expected", 2)
  end
  local left = {}
  for k, f in ipairs(futures) do
    local ok, why = kit.isfuture(f)
    if not ok then
      argerror(1, "as_completed", string.format("item %d %s", k, why), 2)
    end
    left[k] = f
  end
  local deadline = seconds and now() + seconds
  local ready, rnext = {}, 1          -- settled, in the order they were
  return function()
    while true do
      local f = ready[rnext]
      if f then
        ready[rnext] = nil
        rnext = rnext + 1
        return f
      end
      if #left == 0 then return nil end
      local done = kit.settled(left)
      if #done > 0 then               -- they move from left to ready
        ready, rnext = {}, 1
        local gone = {}
        for j, k in ipairs(done) do
          ready[j] = left[k]
          gone[k] = true
        end
        local rest = {}
        for k, x in ipairs(left) do
          if not gone[k] then rest[#rest + 1] = x end
        end
        left = rest
        goto continue
      end
      local wait = deadline and math.max(0, deadline - now())
      do
        local ok, item = pcall(conc.select, left, wait)
        if not ok then rethrow(item, 2) end
        if item == nil then error("timeout", 2) end
      end
      ::continue::
    end
  end
end

-- wait: done and pending, two lists, once 'mode' is met ("all": every
-- future is settled, "first": one is, "error": one failed or all are
-- settled) or 'seconds' passed.
local WAIT_MODES = {all = true, first = true, error = true}

function pool.wait(futures, seconds, mode)
  if type(futures) ~= "table" then typeerror(1, "wait", "table", futures, 2) end
  if seconds ~= nil and (type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds) then
    argerror(2, "wait", "non-negative number expected", 2)
  end
  mode = mode or "all"
  if not WAIT_MODES[mode] then
    argerror(3, "wait", "'all', 'first' or 'error' expected, got " .. tostring(mode), 2)
  end
  for k, f in ipairs(futures) do
    local ok, why = kit.isfuture(f)
    if not ok then argerror(1, "wait", string.format("item %d %s", k, why), 2) end
  end
  local deadline = seconds and now() + seconds
  while true do
    local settled = kit.settled(futures)
    local met = #settled == #futures or (mode == "first" and #settled > 0)
    if not met and mode == "error" then
      for _, k in ipairs(settled) do
        local f = futures[k]
        if not f:cancelled() and f:error(0) ~= nil then met = true break end
      end
    end
    local wait = deadline and math.max(0, deadline - now())
    if met or wait == 0 then
      local done, pending, isdone = {}, {}, {}
      for _, k in ipairs(settled) do isdone[k] = true end
      for k, f in ipairs(futures) do
        if isdone[k] then done[#done + 1] = f else pending[#pending + 1] = f end
      end
      return done, pending
    end
    local left = {}
    for k, f in ipairs(futures) do
      if not f:done() then left[#left + 1] = f end
    end
    if #left > 0 then          -- else they settled meanwhile: look again
      local ok, err = pcall(conc.select, left, wait)
      if not ok then rethrow(err, 2) end
    end
  end
end

return pool
