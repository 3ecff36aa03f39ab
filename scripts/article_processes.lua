-- The article's multiprocessing example: five processes, each prints its
-- number, then the parent joins them.   conclua scripts/article_processes.lua
local function worker(num) print("Worker " .. num) end

local processes = {}
for i = 0, 4 do
  local p = spawn_process(worker, i)
  processes[#processes + 1] = p
end
for _, p in ipairs(processes) do p:join() end
