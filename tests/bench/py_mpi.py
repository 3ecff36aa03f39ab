"""tests/bench/py_mpi.py: mpi4py's side of the pool.mpi benchmarks.

    mpirun -np 4 python3 -m mpi4py.futures py_mpi.py MODE [N]

Rank 0 runs this; the other ranks are MPIPoolExecutor's workers. Each mode
does what bench_mpi.lua's mode of the same name does and prints one line
"RESULT key=value ...":
  map N        executor.map over N trivial items, default chunksize (1)  items_per_s
  map100 N     the same with chunksize=100                              items_per_s
  latency N    N submit -> result, one after the other                  us_per_task
  idle S       CPU of an idle worker rank over S seconds (%)             pct_core
"""
import os
import sys
import time

from mpi4py.futures import MPIPoolExecutor

clock = time.perf_counter


def incr(x):
    return x + 1


def getpid(_=None):
    return os.getpid()


def report(**values):
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in sorted(values.items())),
          flush=True)


def map_rate(ex, n, chunksize):
    list(ex.map(incr, range(8), chunksize=chunksize))
    t0 = clock()
    out = list(ex.map(incr, range(n), chunksize=chunksize))
    dt = clock() - t0
    assert len(out) == n and out[-1] == n
    report(items_per_s=n / dt)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    mode = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else None
    with MPIPoolExecutor() as ex:
        if mode == "map":
            map_rate(ex, n or 20000, 1)
        elif mode == "map100":
            map_rate(ex, n or 100000, 100)
        elif mode == "latency":
            n = n or 2000
            for _ in range(50):
                ex.submit(incr, 1).result()
            t0 = clock()
            for i in range(n):
                assert ex.submit(incr, i).result() == i + 1
            report(us_per_task=(clock() - t0) / n * 1e6)
        elif mode == "idle":
            pid = ex.submit(getpid).result()
            c0, t0 = cpu_seconds(pid), clock()
            time.sleep(n or 3)
            report(pct_core=100 * (cpu_seconds(pid) - c0) / (clock() - t0))
        else:
            sys.exit(f"py_mpi.py: unknown mode {mode}")


if __name__ == "__main__":
    main()
