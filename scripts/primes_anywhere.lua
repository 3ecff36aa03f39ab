-- Counts the primes below a bound, a range per task, on whatever pool the
-- script finds: processes of this machine under conclua, or the ranks of
-- an MPI job under mpirun. The code of the work is the same either way;
-- only the line that makes the pool differs.
--
--   conclua scripts/primes_anywhere.lua [bound]
--   mpirun -np 4 conclua -l conc.mpi scripts/primes_anywhere.lua [bound]
--   mpirun -np 4 conclua scripts/primes_anywhere.lua [bound]     (SPMD)

local pool = require "conc.pool"

local bound = math.tointeger(tonumber(arg[1] or "")) or 2000000

-- Under mpirun (Open MPI or MPICH say so in the environment), the pool is
-- the job's ranks; started without -l, every rank runs this script, and
-- every rank but 0 stops here and serves as a worker until rank 0 ends.
local p, where
if os.getenv("OMPI_COMM_WORLD_SIZE") or os.getenv("PMI_SIZE") then
  local mpi = require "conc.mpi"
  if mpi.rank() ~= 0 then return end
  p = pool.mpi()
  where = string.format("%d ranks of an MPI job", p.n)
else
  p = pool.processes()
  where = string.format("%d local processes", p.n)
end

-- One task: the primes in [lo, hi), by a sieve of that segment with the
-- primes up to sqrt(hi). It runs on a worker: everything it needs comes
-- in its arguments.
local function count(range)
  local lo, hi = range[1], range[2]
  local limit = math.floor(math.sqrt(hi)) + 1
  local small, composite = {}, {}
  for i = 2, limit do
    if not small[i] then
      for j = i * i, limit, i do small[j] = true end
    end
  end
  for i = 2, limit do
    if not small[i] then
      local start = math.max(i * i, (lo + i - 1) // i * i)
      for j = start, hi - 1, i do composite[j - lo] = true end
    end
  end
  local n = 0
  for x = math.max(lo, 2), hi - 1 do
    if not composite[x - lo] then n = n + 1 end
  end
  return n
end

local ranges, step = {}, 50000
for lo = 0, bound - 1, step do ranges[#ranges + 1] = {lo, math.min(lo + step, bound)} end

local t0 = conc.now()
local counts = p:map(count, ranges)
local total = 0
for _, n in ipairs(counts) do total = total + n end
p:close()
print(string.format("%d primes below %d, %d ranges on %s in %.2f s", total, bound,
                    #ranges, where, conc.now() - t0))
