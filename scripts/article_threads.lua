-- The article's threading example: five threads, each prints its number,
-- then the main thread joins them.   conclua scripts/article_threads.lua
local function worker(num) print("Worker " .. num) end

local threads = {}
for i = 0, 4 do
  local t = spawn_thread(worker, i)
  threads[#threads + 1] = t
end
for _, t in ipairs(threads) do t:join() end
