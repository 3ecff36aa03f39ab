-- conc.shared (SPEC section 5): a table every thread sees.
local T = require "t"

T.test("store and read copies", function()
  local s = conc.shared()
  local t = {1, 2}
  s.k = t
  t[1] = 99
  T.eq(s.k[1], 1)
  T.ok(s.k ~= s.k, "each read is a fresh copy")
  s[1] = "one"
  s[2.0] = "two"
  s[true] = "yes"
  T.eq(s[1], "one")
  T.eq(s[2], "two")
  T.eq(s[true], "yes")
  s.k = nil
  T.eq(s.k, nil)
  T.raises("keys must be strings, numbers or booleans", function() s[{}] = 1 end)
  T.raises("NaN", function() s[0/0] = 1 end)
  T.raises("cannot transfer a value of type 'userdata' (value)", function()
    s.x = io.stdout
  end)
end)

T.test("seen by every thread", function()
  local s = conc.shared()
  s.greeting = "hello"
  local t = spawn_thread(function(sh)
    local g = sh.greeting
    sh.reply = g .. " back"
    return g
  end, s)
  T.eq(t:join(), "hello")
  T.eq(s.reply, "hello back")
end)

T.test("pairs and #", function()
  local s = conc.shared()
  for i = 1, 5 do s[i] = i * i end
  s.name = "x"
  T.eq(#s, 5)
  local keys = 0
  for k, v in pairs(s) do
    keys = keys + 1
    if k == "name" then T.eq(v, "x") else T.eq(v, k * k) end
  end
  T.eq(keys, 6)
  s[3] = nil
  T.eq(#s, 2)
  T.eq(tostring(s), "<shared 5 keys>")
end)

T.test("incr is atomic", function()
  local s = conc.shared()
  local ts = {}
  for i = 1, 4 do
    ts[i] = spawn_thread(function() for _ = 1, 2000 do s:incr("n") end end)
  end
  for i = 1, 4 do ts[i]:join() end
  T.eq(s.n, 8000)
  T.eq(s:incr("n", 5), 8005)
  T.eq(s:incr("f", 0.5), 0.5)
  T.eq(math.type(s.n), "integer")
  s.str = "x"
  T.raises("value is not a number", s.incr, s, "str")
  T.raises("number expected", s.incr, s, "n", "x")
end)

T.test("update is an atomic read-modify-write", function()
  local s = conc.shared()
  s.list = {}
  local ts = {}
  for i = 1, 4 do
    ts[i] = spawn_thread(function()
      for j = 1, 100 do
        s:update("list", function(l) l[#l + 1] = i * 1000 + j return l end)
      end
    end)
  end
  for i = 1, 4 do ts[i]:join() end
  T.eq(#s.list, 400)
  T.eq(s:update("new", function(old) T.eq(old, nil) return 7 end), 7)
  T.eq(s.new, 7)
end)

T.test("an error in update leaves the old value", function()
  local s = conc.shared()
  s.v = 1
  T.raises("nope", s.update, s, "v", function() error("nope") end)
  T.eq(s.v, 1)
  T.raises("cannot transfer", s.update, s, "v", function() return io.stdout end)
  T.eq(s.v, 1)
  s:update("v", function() return nil end)
  T.eq(s.v, nil)
end)

T.test("changing a key inside its own update is an error, not a hang", function()
  local s = conc.shared()
  s.x = 1
  T.raises("cannot be changed inside its own update", s.update, s, "x",
           function(v) s.x = 5 return v + 1 end)
  T.raises("cannot be changed inside its own update", s.update, s, "x",
           function(v) s:incr("x") return v end)
  T.eq(s.x, 1)
  T.eq(s:update("x", function(v) s.y = v return v * 10 end), 10)
  T.eq(s.y, 1)
end)

T.done()
