-- Values that cross from one state to another (docs/values.md), through
-- spawn_thread (function, upvalues, arguments, results), channels, and the
-- pipe of a forked or spawned process.
local T = require "t"

-- The ways a value can travel; each returns the receiver's copy.
local function via_args(v)          -- in as an argument, back as a result
  return spawn_thread(function(x) return x end, v):join()
end
local function via_upvalue(v)
  return spawn_thread(function() return v end):join()
end
local function via_channel(v)       -- same state, but still a copy
  local ch = conc.channel()
  ch:send(v)
  local r = ch:recv()
  ch:close()
  return r
end
local function via_thread_channel(v)  -- sent by another thread
  local ch = conc.channel()
  local t = spawn_thread(function(c, x) c:send(x) end, ch, v)
  local r = ch:recv()
  t:join()
  return r
end
local ways = {
  {"args", via_args}, {"upvalue", via_upvalue}, {"channel", via_channel},
  {"thread channel", via_thread_channel},
}

-- The message of an error raised by f(...), without its position.
local function errof(f, ...)
  local ok, err = pcall(f, ...)
  if ok then error("expected an error", 2) end
  return (tostring(err):gsub("^[^\n]-:%d+: ", ""))
end

local function nop() end

-- The first process starts the runtime's reaper, which keeps an fd open
-- for good: start it before the harness counts fds.
spawn_process(nop):join()

-- ------------------------------------------------------------ scalars

T.test("integers and floats keep their subtype and value", function()
  local values = {
    0, 1, -1, 127, 128, -128, -129, 255, 256, 32767, 32768, -32768, -32769,
    65535, 65536, 2147483647, 2147483648, -2147483648, -2147483649,
    4294967296, math.maxinteger, math.mininteger, math.maxinteger - 1,
    0.0, 1.0, -1.0, 2.0, 127.0, 128.0, -1.5, 0.1, math.pi, 2^53, 2^63,
    -2^63, 1e308, -1e308, 2.2250738585072014e-308, 5e-324, -5e-324,
  }
  for _, w in ipairs(ways) do
    local r = w[2](values)
    T.eq(#r, #values, w[1])
    for i, v in ipairs(values) do
      T.eq(math.type(r[i]), math.type(v), w[1] .. " subtype of #" .. i)
      T.eq(string.format("%a", r[i]), string.format("%a", v),
           w[1] .. " value of #" .. i)
    end
  end
end)

T.test("nil and booleans", function()
  for _, w in ipairs(ways) do
    T.eq(w[2](true), true, w[1])
    T.eq(w[2](false), false, w[1])
    T.same(w[2]({true, false, n = false}), {true, false, n = false}, w[1])
  end
  local r = table.pack(spawn_thread(function(...) return ... end,
                                    nil, false, nil):join())
  T.eq(r.n, 3)
  T.eq(r[2], false)
end)

T.test("NaN, inf and -0.0", function()
  for _, w in ipairs(ways) do
    local r = w[2]({0/0, 1/0, -1/0, -0.0, 0.0})
    T.ok(r[1] ~= r[1], w[1] .. ": NaN")
    T.eq(math.type(r[1]), "float", w[1])
    T.eq(r[2], math.huge, w[1])
    T.eq(r[3], -math.huge, w[1])
    T.eq(1 / r[4], -math.huge, w[1] .. ": -0.0 keeps its sign")
    T.eq(1 / r[5], math.huge, w[1] .. ": 0.0 stays positive")
    T.eq(math.type(r[4]), "float", w[1])
  end
  -- the receiver sees them too, not just the round trip
  local a, b, c, d = spawn_thread(function(nan, inf, nz)
    return nan ~= nan, inf == math.huge, 1 / nz, math.type(nz)
  end, 0/0, 1/0, -0.0):join()
  T.eq(a, true)
  T.eq(b, true)
  T.eq(c, -math.huge)
  T.eq(d, "float")
end)

-- ------------------------------------------------------------ strings

T.test("strings with every byte value", function()
  local bytes = {}
  for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
  local all = table.concat(bytes)
  local cases = {"", "\0", "\0\0\0", "a\0b", "\255\254\0", all,
                 all:reverse(), ("\0x"):rep(1000)}
  for _, w in ipairs(ways) do
    local r = w[2](cases)
    for i, s in ipairs(cases) do
      T.eq(#r[i], #s, w[1] .. " length of #" .. i)
      T.ok(r[i] == s, w[1] .. ": bytes of #" .. i)
    end
  end
  -- and as table keys
  local t = {}
  for i, s in ipairs(cases) do t[s] = i end
  local r = via_args(t)
  for i, s in ipairs(cases) do T.eq(r[s], i) end
  -- the receiver sees every byte
  T.eq(spawn_thread(function(s)
    for i = 0, 255 do if s:byte(i + 1) ~= i then return i end end
    return #s
  end, all):join(), 256)
end)

T.test("big strings", function()
  local big = string.rep("0123456789abcdef\0", 256 * 1024)   -- 4.25 MB
  for _, w in ipairs(ways) do
    local r = w[2](big)
    T.eq(#r, #big, w[1])
    T.ok(r == big, w[1] .. ": same bytes")
  end
  local r = via_channel({big, big, k = big})
  T.ok(r[1] == big and r[2] == big and r.k == big)
end)

-- ------------------------------------------------------------ tables

T.test("nested tables and keys of every copyable type", function()
  local v = {
    1, 2, "three", {4, {5, {6}}},
    name = "x", [true] = "t", [false] = "f", [1.5] = "float key",
    [-7] = "negative", [0] = "zero", [math.maxinteger] = "max",
    ["with space"] = {deep = {deeper = {deepest = "bottom"}}},
    ["\0key"] = 1,
  }
  for _, w in ipairs(ways) do
    local r = w[2](v)
    T.same(r, v)
    T.ok(r ~= v, w[1] .. ": a copy")
    T.eq(r[1.5], "float key")
  end
end)

T.test("holes, mixed array and hash parts", function()
  local v = {1, nil, 3, nil, 5, [10] = 10, [100] = 100, x = "x"}
  for _, w in ipairs(ways) do
    local r = w[2](v)
    T.eq(r[1], 1) T.eq(r[2], nil) T.eq(r[3], 3) T.eq(r[4], nil)
    T.eq(r[5], 5) T.eq(r[10], 10) T.eq(r[100], 100) T.eq(r.x, "x")
    local n = 0
    for _ in pairs(r) do n = n + 1 end
    T.eq(n, 6, w[1] .. ": no extra keys")
  end
end)

T.test("a table as key is copied with its contents", function()
  local k = {id = 1}
  local v = {[k] = "value", other = k}
  for _, w in ipairs(ways) do
    local r = w[2](v)
    local rk = r.other
    T.ok(rk ~= k, w[1] .. ": a copy")
    T.eq(rk.id, 1)
    T.eq(r[rk], "value", w[1] .. ": the key is the same table as r.other")
  end
end)

T.test("shared sub-tables arrive as one table", function()
  local a = {"shared"}
  local v = {x = a, y = a, list = {a, a, {a}}}
  for _, w in ipairs(ways) do
    local r = w[2](v)
    T.ok(r.x == r.y and r.y == r.list[1] and r.list[1] == r.list[2] and
         r.list[2] == r.list[3][1], w[1] .. ": identity kept")
    r.x[1] = "changed"
    T.eq(r.list[3][1][1], "changed", w[1])
    T.eq(a[1], "shared", w[1] .. ": the sender's table is untouched")
  end
  -- across the values of one message: arguments, results
  local same, back1, back2 = spawn_thread(function(p, q)
    return p == q, p, q
  end, a, a):join()
  T.eq(same, true, "arguments of one spawn share")
  T.ok(back1 == back2, "results of one join share")
  local r1, r2 = spawn_thread(function()
    local t = {}
    return t, {t}
  end):join()
  T.ok(r1 == r2[1])
  -- two messages are two copies
  local ch = conc.channel()
  ch:send(a)
  ch:send(a)
  T.ok(ch:recv() ~= ch:recv(), "separate sends give separate copies")
end)

T.test("cycles", function()
  local selfref = {}
  selfref.me = selfref
  local a, b = {name = "a"}, {name = "b"}
  a.next, b.next = b, a
  local ring = {}
  local node = ring
  for i = 1, 100 do node.next = {i = i} node = node.next end
  node.next = ring
  local v = {selfref, a, ring, list = {selfref, b}}
  for _, w in ipairs(ways) do
    local r = w[2](v)
    T.ok(r[1].me == r[1], w[1] .. ": self cycle")
    T.ok(r[2].next.next == r[2] and r[2].next.name == "b", w[1] .. ": pair")
    T.ok(r.list[2] == r[2].next and r.list[1] == r[1], w[1])
    local n, k = r[3], 0
    repeat n, k = n.next, k + 1 until n == r[3] or k > 200
    T.eq(k, 101, w[1] .. ": ring length")
  end
  -- the receiver builds on them
  T.eq(spawn_thread(function(t) return t.me.me.me == t end, selfref):join(),
       true)
end)

T.test("big tables round trip", function()
  local arr, hash = {}, {}
  for i = 1, 100000 do arr[i] = i end
  for i = 1, 20000 do hash["k" .. i] = i * 0.5 end
  local n, sum, r = spawn_thread(function(t)
    local s = 0
    for i = 1, #t do s = s + t[i] end
    return #t, s, t
  end, arr):join()
  T.eq(n, 100000)
  T.eq(sum, 100000 * 100001 // 2)
  T.eq(#r, 100000)
  for i = 1, 100000 do
    if r[i] ~= i or math.type(r[i]) ~= "integer" then T.eq(r[i], i) end
  end
  local h = via_channel(hash)
  local count = 0
  for k, v in pairs(h) do
    count = count + 1
    if hash[k] ~= v then T.eq(v, hash[k], k) end
  end
  T.eq(count, 20000)
end)

-- ------------------------------------------------------------ metatables

local Point = {}
Point.__index = Point
function Point.new(x, y) return setmetatable({x = x, y = y}, Point) end
function Point:len2() return self.x * self.x + self.y * self.y end
function Point.__add(a, b) return Point.new(a.x + b.x, a.y + b.y) end
function Point.__eq(a, b) return a.x == b.x and a.y == b.y end
function Point.__tostring(p) return "(" .. p.x .. ", " .. p.y .. ")" end

T.test("a class with methods arrives usable", function()
  local p, q = Point.new(3, 4), Point.new(1, 1)
  for _, w in ipairs(ways) do
    local r = w[2]({p, q})
    T.eq(r[1]:len2(), 25, w[1])
    T.eq(tostring(r[1] + r[2]), "(4, 5)", w[1])
    T.ok(r[1] + r[2] == Point.new(4, 5), w[1] .. ": __eq")
    T.ok(getmetatable(r[1]) == getmetatable(r[2]), w[1] ..
         ": one metatable for both")
    T.ok(getmetatable(r[1]) ~= Point, w[1] .. ": a copy of the class")
  end
  -- used in the receiver
  T.same({spawn_thread(function(a, b)
    local s = a + b
    return s:len2(), tostring(s), getmetatable(s) == getmetatable(a)
  end, p, q):join()}, {41, "(4, 5)", true})
end)

T.test("a metatable that cannot be copied is dropped", function()
  local bad = setmetatable({1, 2, k = "v"},
                           {__index = function() return 0 end,
                            log = io.stdout})
  for _, w in ipairs(ways) do
    local r = w[2]({bad, "after"})
    T.eq(getmetatable(r[1]), nil, w[1] .. ": metatable dropped")
    T.same(r[1], {1, 2, k = "v"})
    T.eq(r[2], "after")
  end
  -- deeper: a sub-table's metatable fails, the outer one stays
  local co = coroutine.create(nop)
  local inner = setmetatable({}, {bad = co})
  local outer = setmetatable({}, {__index = {inner = inner, x = 5}})
  local x, mt = spawn_thread(function(t)
    return t.x, getmetatable(t.inner)
  end, outer):join()
  T.eq(x, 5)
  T.eq(mt, nil)
end)

T.test("a dropped metatable does not disturb shared values", function()
  local S = {v = 1}
  local n = 0
  local function inc() n = n + 1 return n end
  local function get() return n end
  -- S, inc and get are first met inside the metatable that is dropped
  local t = setmetatable({}, {shared = S, inc = inc, co = coroutine.create(nop)})
  local r = table.pack(spawn_thread(function(tt, s1, s2, a, b)
    a() a()
    return getmetatable(tt), s1 == s2, s1.v, b()
  end, t, S, S, inc, get):join())
  T.eq(r[1], nil)
  T.eq(r[2], true)
  T.eq(r[3], 1)
  T.eq(r[4], 2, "inc and get still share n")
end)

T.test("metatables with cycles, __metatable and __gc", function()
  local t = {}
  setmetatable(t, {__index = t, __metatable = "locked"})
  local r = via_channel(t)
  T.eq(getmetatable(r), "locked")
  local seen = spawn_thread(function(x)
    local ok = pcall(setmetatable, x, {})
    return ok
  end, t):join()
  T.eq(seen, false, "still protected in the receiver")
  local collected = spawn_thread(function(x)
    x = nil
    collectgarbage()
    collectgarbage()
    return gc_ran == true
  end, setmetatable({}, {__gc = function() gc_ran = true end})):join()
  T.eq(collected, true, "the copied __gc runs in the receiver")
  T.eq(rawget(_G, "gc_ran"), nil, "and not in the sender")
end)

-- ------------------------------------------------------------ functions

T.test("functions with upvalues", function()
  local base, list = 10, {1, 2, 3}
  local name = "n\0ame"
  local function add(x) return x + base end
  local function sum()
    local s = 0
    for _, v in ipairs(list) do s = s + v end
    return s
  end
  local function both(x) return add(x) + sum(), name end
  for _, w in ipairs(ways) do
    local f = w[2](both)
    local a, b = f(1)
    T.eq(a, 17, w[1])
    T.eq(b, name, w[1])
  end
  -- upvalues are copies: the receiver's changes stay there
  local counter = 0
  local function bump() counter = counter + 1 return counter end
  T.eq(spawn_thread(function() bump() return bump() end):join(), 2)
  T.eq(counter, 0)
  -- a closure made in the receiver from a copied factory
  local function factory(k) return function() k = k + 1 return k end end
  T.same({spawn_thread(function(mk)
    local c1, c2 = mk(0), mk(100)
    c1() c2()
    return c1(), c2()
  end, factory):join()}, {2, 102})
  -- variadic functions and a function that returns a function
  local function va(...) return select("#", ...), ... end
  local r = via_args(va)
  T.same({r(1, nil, 3)}, {3, 1, nil, 3})
  local mk = via_channel(function() return function() return base end end)
  T.eq(mk()(), 10)
end)

T.test("two closures sharing an upvalue still share it", function()
  local n = 0
  local function inc() n = n + 1 return n end
  local function get() return n end
  local function reset() n = 0 end
  -- as separate arguments
  T.same({spawn_thread(function(a, b, c)
    a() a() a()
    local x = b()
    c()
    return x, b(), a()
  end, inc, get, reset):join()}, {3, 0, 1})
  -- as upvalues of the thread's function
  T.same({spawn_thread(function() inc() inc() return get() end):join()}, {2})
  -- inside a table, and through a channel
  for _, w in ipairs(ways) do
    local r = w[2]({inc = inc, get = get})
    r.inc() r.inc()
    T.eq(r.get(), 2, w[1])
  end
  T.eq(n, 0, "the sender's upvalue is untouched")
  -- closures of one factory call share; of two calls they do not
  local function pair()
    local k = 0
    return function() k = k + 1 end, function() return k end
  end
  local i1, g1 = pair()
  local i2, g2 = pair()
  T.same({spawn_thread(function(a1, b1, a2, b2)
    a1() a1() a2()
    return b1(), b2()
  end, i1, g1, i2, g2):join()}, {2, 1})
end)

T.test("a shared upvalue that holds a table keeps both sharing", function()
  local state = {count = 0}
  local function add() state.count = state.count + 1 end
  local function swap() state = {count = 100} end
  local function read() return state.count end
  T.same({spawn_thread(function(a, s, r)
    a() a()
    local before = r()
    s() a()
    return before, r()
  end, add, swap, read):join()}, {2, 101})
end)

T.test("recursive local functions", function()
  local function fib(k) if k < 2 then return k end return fib(k - 1) + fib(k - 2) end
  local iseven, isodd
  function iseven(k) if k == 0 then return true end return isodd(k - 1) end
  function isodd(k) if k == 0 then return false end return iseven(k - 1) end
  T.eq(spawn_thread(fib, 20):join(), 6765)
  T.eq(spawn_thread(function() return fib(15) end):join(), 610)
  T.same({spawn_thread(function(e, o) return e(10), o(7), e(7) end,
                       iseven, isodd):join()}, {true, true, false})
  local f = via_channel(fib)
  T.eq(f(10), 55)
  T.ok(f ~= fib, "a copy")
end)

T.test("the same function twice arrives as one function", function()
  local function f() return 1 end
  for _, w in ipairs(ways) do
    local r = w[2]({f, f, {f}})
    T.ok(r[1] == r[2] and r[2] == r[3][1], w[1])
  end
end)

T.test("_ENV of a copied function is the receiver's globals", function()
  marker = "sender"
  local function read() return marker, _ENV == _G end
  local function write(v) marker = v end
  T.same({spawn_thread(function(r, w)
    marker = "receiver"
    local a = r()
    w("written")
    return a, marker
  end, read, write):join()}, {"receiver", "written"})
  T.eq(marker, "sender", "the sender's globals are not touched")
  T.same({spawn_thread(read):join()}, {nil, true})
  -- a function whose _ENV is a table of its own takes a copy of it
  local env = {y = 7}
  local f
  do local _ENV = env function f() y = y + 1 return y end end
  T.eq(spawn_thread(f):join(), 8)
  T.eq(env.y, 7)
  local g = load("return z", "chunk", "t", {z = 9})
  T.eq(via_args(g)(), 9)
  marker = nil
end)

T.test("_G and library tables arrive as the receiver's own", function()
  string.sender_only = true
  local r = {spawn_thread(function(g, s, m, t, i, o, c, u, d, p, cc, mix)
    return g == _G, s == string, m == math, t == table, i == io, o == os,
           c == coroutine, u == utf8, d == debug, p == package, cc == conc,
           mix.g == _G and mix.s == string, string.sender_only == nil
  end, _G, string, math, table, io, os, coroutine, utf8, debug, package, conc,
                         {g = _G, s = string}):join()}
  string.sender_only = nil
  T.eq(#r, 13)
  for i = 1, #r do T.eq(r[i], true, "value " .. i) end
  -- through a channel in the same state: the very same tables
  local back = via_channel({_G, string, math})
  T.ok(back[1] == _G and back[2] == string and back[3] == math)
end)

T.test("standard C functions and conc functions cross by name", function()
  local ch = conc.channel()
  local r = {spawn_thread(function(f)
    return f.print == print, f.format == string.format,
           f.require == require, f.pairs == pairs, f.floor == math.floor,
           f.concat == table.concat, f.insert == table.insert,
           f.wrap == coroutine.wrap, f.sleep == conc.sleep,
           f.channel == conc.channel,
           f.spawn(function() return 1 end):join() == 1,
           f.format("%05.1f", 3.14159), f.require("conc") == conc,
           f.send(f.ch, "sent by method")
  end, {print = print, format = string.format, require = require,
        pairs = pairs, floor = math.floor, concat = table.concat,
        insert = table.insert, wrap = coroutine.wrap, sleep = conc.sleep,
        channel = conc.channel, spawn = spawn_thread, send = ch.send,
        ch = ch}):join()}
  T.same(r, {true, true, true, true, true, true, true, true, true, true,
             true, "003.1", true, true})
  T.eq(ch:recv(), "sent by method")
  -- the copies work where they arrive
  local w = spawn_thread(function(wrap, mk)
    local gen = wrap(function() coroutine.yield(1) coroutine.yield(2) end)
    local c = mk()
    c:send(gen() + gen())
    return c:recv()
  end, coroutine.wrap, conc.channel):join()
  T.eq(w, 3)
  -- methods of handles are the receiver's own too
  T.same({spawn_thread(function(acquire, send)
    local l, c = conc.lock(), conc.channel()
    return acquire == l.acquire, send == c.send
  end, conc.lock().acquire, ch.send):join()}, {true, true})
  T.ok(via_channel(conc.sleep) == conc.sleep)
  T.ok(via_channel(ch.recv) == ch.recv)
  T.ok(via_channel(print) == print)
  T.ok(via_channel(string.format) == string.format)
  T.ok(via_channel(require) == require)
end)

-- ------------------------------------------------------------ objects

T.test("runtime objects travel by reference", function()
  local ch, lock, ev = conc.channel(), conc.lock(), conc.event()
  local sem, bar, sh = conc.semaphore(1), conc.barrier(2), conc.shared()
  sh.x = 1
  local t = spawn_thread(function(c, l, e, s, b, shd)
    local keyed = {[c] = "channel", [l] = "lock"}
    c:send(keyed)
    l:acquire()
    e:set()
    s:acquire()
    shd.x = shd.x + 1
    b:wait()
    return c, l, e, s, b, shd
  end, ch, lock, ev, sem, bar, sh)
  local keyed = ch:recv()
  T.eq(keyed[ch], "channel", "a channel works as a key where it arrives")
  T.eq(keyed[lock], "lock")
  T.eq(ev:wait(10), true)
  bar:wait(10)
  local c, l, e, s, b, shd = t:join()
  T.ok(c == ch and l == lock and e == ev and s == sem and b == bar and
       shd == sh, "== holds")
  T.ok(rawequal(c, ch) and rawequal(l, lock), "one handle per object")
  T.eq(lock:acquire(0), false, "the thread took the very same lock")
  T.eq(sem:acquire(0), false, "and the same semaphore")
  T.eq(sh.x, 2)
end)

T.test("a channel sent through a channel is the same channel", function()
  local ch, inner = conc.channel(), conc.channel()
  ch:send(inner)
  local r = ch:recv()
  T.ok(r == inner and rawequal(r, inner))
  local t = {[inner] = 1}
  T.eq(t[r], 1)
  -- from another thread, which uses it
  local t2 = spawn_thread(function(c)
    local got = c:recv()
    got:send("through the received channel")
    c:send({got, got})
  end, ch)
  ch:send(inner)
  T.eq(inner:recv(), "through the received channel")
  local pair = ch:recv()
  T.ok(pair[1] == inner and pair[2] == inner)
  t2:join()
end)

T.test("thread handles travel by reference", function()
  local t = spawn_thread(function() return "done" end)
  local got, same = spawn_thread(function(h) return h:join(), h end, t):join()
  T.eq(got, "done")
  T.ok(same == t)
end)

-- ------------------------------------------------------------ refusals

T.test("untransferable values: exact messages and paths", function()
  local f = io.stdout
  T.eq(errof(spawn_thread, nop, 1, {log = io.stdout}),
       "cannot transfer a value of type 'userdata' (args[2].log)")
  T.eq(errof(spawn_thread, nop, io.stdout),
       "cannot transfer a value of type 'userdata' (args[1])")
  T.eq(errof(spawn_thread, function() return f end),
       "cannot transfer a value of type 'userdata' (fn<upvalue f>)")
  T.eq(errof(spawn_thread, {name = "x"}, nop, {a = {b = {1, 2, f}}}),
       "cannot transfer a value of type 'userdata' (args[1].a.b[3])")
  T.eq(errof(spawn_thread, nop, {["a b"] = {[2.5] = {[true] = f}}}),
       "cannot transfer a value of type 'userdata' " ..
       "(args[1][\"a b\"][2.5][true])")
  T.eq(errof(spawn_thread, nop, {[f] = 1}),
       "cannot transfer a value of type 'userdata' (args[1][<userdata key>])")
  local ch = conc.channel()
  T.eq(errof(ch.send, ch, {a = {b = {1, 2, f}}}),
       "cannot transfer a value of type 'userdata' (value.a.b[3])")
  T.eq(errof(ch.send, ch, f),
       "cannot transfer a value of type 'userdata' (value)")
  local t = spawn_thread(function() return 1, io.stdout end)
  local err = errof(t.join, t)
  T.eq(err, string.format("thread %d (%s): cannot transfer a value of " ..
                          "type 'userdata' (results[2])", t.id, t.name))
end)

T.test("coroutines are refused", function()
  local co = coroutine.create(nop)
  T.eq(errof(spawn_thread, nop, co),
       "cannot transfer a value of type 'thread' (args[1])")
  T.eq(errof(spawn_thread, function() return co end),
       "cannot transfer a value of type 'thread' (fn<upvalue co>)")
  local ch = conc.channel()
  T.eq(errof(ch.send, ch, {list = {co}}),
       "cannot transfer a value of type 'thread' (value.list[1])")
  T.eq(errof(ch.send, ch, (coroutine.running())),
       "cannot transfer a value of type 'thread' (value)")
end)

T.test("C functions from elsewhere are refused", function()
  local msg = "cannot transfer a value of type 'function' (%s): only C " ..
              "functions of the standard libraries and conc can cross"
  -- C functions that no library table names: iterators, metamethods
  T.eq(errof(spawn_thread, nop, string.gmatch("a", "a")),
       msg:format("args[1]"))
  local ch = conc.channel()
  T.eq(errof(ch.send, ch, {it = select(1, ipairs({}))}),
       msg:format("value.it"))
  T.eq(errof(ch.send, ch, getmetatable("").__add), msg:format("value"))
end)

T.test("a C function from a C module is refused", function()
  local lua_inc = T.sh("pkg-config --cflags lua5.4"):gsub("%s+$", "")
  local dir = os.tmpname()
  os.remove(dir)
  T.sh("mkdir " .. T.q(dir))
  local src = dir .. "/foreign.c"
  local f = assert(io.open(src, "w"))
  f:write([[
#include <lua.h>
static int hello(lua_State *L) { lua_pushliteral(L, "hello"); return 1; }
int luaopen_foreign(lua_State *L) {
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, hello);
  lua_setfield(L, -2, "hello");
  return 1;
}
]])
  f:close()
  local out, code = T.sh("cc -shared -fPIC " .. lua_inc .. " -o " ..
                         T.q(dir .. "/foreign.so") .. " " .. T.q(src))
  T.eq(code, 0, "compiling a test module: " .. out)
  local saved = package.cpath
  package.cpath = dir .. "/?.so;" .. saved
  local mod = require "foreign"
  package.cpath = saved
  package.loaded.foreign = nil
  T.eq(mod.hello(), "hello")
  T.eq(errof(spawn_thread, nop, 1, mod),
       "cannot transfer a value of type 'function' (args[2].hello): only C " ..
       "functions of the standard libraries and conc can cross")
  local ch = conc.channel()
  T.eq(errof(ch.send, ch, mod.hello),
       "cannot transfer a value of type 'function' (value): only C " ..
       "functions of the standard libraries and conc can cross")
  T.sh("rm -rf " .. T.q(dir))
end)

T.test("nothing is half sent: a failed send leaves the channel empty", function()
  local ch = conc.channel()
  local inner = conc.channel()
  T.raises("cannot transfer", ch.send, ch, {1, 2, inner, io.stdout})
  T.eq(ch:len(), 0)
  local v, why = ch:recv(0)
  T.eq(v, nil)
  T.eq(why, "timeout")
  ch:send("next")                     -- the channel still works
  T.eq(ch:len(), 1)
  T.eq(ch:recv(), "next")
  -- a bounded, full channel: the error comes before any waiting
  local b = conc.channel(1)
  b:send(1)
  T.raises("cannot transfer", b.send, b, {io.stdout}, 5)
  T.eq(b:len(), 1)
  T.eq(b:recv(), 1)
end)

T.test("nothing is half sent: a failed spawn starts nothing", function()
  local ch = conc.channel()
  local before = #conc.workers()
  local threads = conc._stats().threads
  for _ = 1, 20 do
    T.raises("cannot transfer", spawn_thread, function(c)
      c:send("ran")
    end, ch, io.stdout)
    T.raises("cannot transfer", spawn_thread, function()
      ch:send("ran")
      return io.stdout
    end, coroutine.create(nop))
  end
  T.eq(#conc.workers(), before, "no worker registered")
  T.eq(conc._stats().threads, threads, "no OS thread started")
  conc.sleep(0.05)
  T.eq(ch:len(), 0, "the function never ran")
  -- and spawning still works
  T.eq(spawn_thread(function(c) c:send("ran") return 1 end, ch):join(), 1)
  T.eq(ch:recv(), "ran")
end)

T.test("very deep nesting gives a clear error", function()
  local deep = {}
  for _ = 1, 100000 do deep = {deep} end
  local pattern = "nested more than 1000 levels deep"
  T.raises(pattern, spawn_thread, nop, deep)
  T.raises(pattern, spawn_thread, function() return deep end)
  local ch = conc.channel()
  T.raises(pattern, ch.send, ch, deep)
  T.eq(ch:len(), 0)
  local t = spawn_thread(function()
    local d = {}
    for _ = 1, 100000 do d = {d} end
    return d
  end)
  T.raises(pattern, t.join, t)
  -- deep functions (closures nested in closures) too
  local f = function() return 0 end
  for _ = 1, 2000 do local g = f f = function() return g() + 1 end end
  T.raises(pattern, ch.send, ch, f)
  -- a nesting within the limit is fine
  local ok = {}
  for _ = 1, 900 do ok = {ok} end
  local r = via_args(ok)
  local depth = 0
  while r[1] do r, depth = r[1], depth + 1 end
  T.eq(depth, 900)
end)

-- ------------------------------------------------------------ processes

T.test("values back from a forked process", function()
  local n = 0
  local function inc() n = n + 1 return n end
  local function get() return n end
  local lock = conc.lock()
  local p = spawn_process(function()
    local t = {1, 2.0, -0.0, 0/0, "a\0b", math.mininteger}
    t.self = t
    return t, inc, get, lock, Point.new(1, 2), string, print
  end)
  local t, f, g, l, pt, s, pr = p:join()
  T.ok(t.self == t)
  T.eq(math.type(t[1]), "integer")
  T.eq(math.type(t[2]), "float")
  T.eq(1 / t[3], -math.huge)
  T.ok(t[4] ~= t[4])
  T.eq(t[5], "a\0b")
  T.eq(t[6], math.mininteger)
  f() f()
  T.eq(g(), 2, "functions from a child keep sharing their upvalue")
  T.ok(l == lock, "a lock comes back as the same lock")
  T.eq(pt:len2(), 5)
  T.ok(s == string and pr == print)
  local p2 = spawn_process(function() return conc.channel() end)
  T.raises("cannot transfer a value of type 'conc.channel' (results[1]): " ..
           "it works between the threads of one process only", p2.join, p2)
  local p3 = spawn_process(function() return io.stdout end)
  T.raises("cannot transfer a value of type 'userdata' (results[1])",
           p3.join, p3)
end)

T.test("values copied into a spawned process", function()
  local shared = {v = 5}
  shared.self = shared
  local n = 0
  local function inc() n = n + 1 end
  local function get() return n end
  local p = spawn_process({start = "spawn"}, function(t, a, b, x)
    a() a()
    return t.self == t, t.v + x, b(), _ENV == _G, 1 / -0.0 == 1 / x
  end, shared, inc, get, -0.0)
  T.same({p:join()}, {true, 5, 2, true, true})
  local lock = conc.lock()
  T.eq(errof(spawn_process, {start = "spawn"}, nop, lock),
       "cannot transfer a value of type 'conc.lock' (args[1]): a process " ..
       "started with start = 'spawn' shares nothing")
end)

T.done()
