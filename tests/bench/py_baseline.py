"""tests/bench/py_baseline.py: the Python side of conclua's benchmarks.

    python3 py_baseline.py MODE [N]     prints one line "RESULT key=value ..."

Each mode does what the conclua script of the same row does, with Python's
threading and multiprocessing (always the 'fork' start method):
  spawn     threading.Thread(target=f).start() + join            us_per_op
  idle      N threads blocked on a threading.Event: RSS per thread kb_per_thread
  chan      N ints from a producer thread through queue.Queue    msgs_per_s
  mpspawn   multiprocessing Process(target=f).start() + join     us_per_op
  mpqueue   N ints from a child process through mp.Queue         msgs_per_s
  mppool    Pool(2).imap(f, range(N), chunksize=1)               items_per_s
  threadpool  ThreadPool(2).imap(f, range(N), chunksize=1)       items_per_s
"""
import multiprocessing
import queue
import sys
import threading
import time
from multiprocessing.pool import ThreadPool

FORK = multiprocessing.get_context("fork")
clock = time.perf_counter


def vmrss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def report(**values):
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in values.items()),
          flush=True)


def one():
    return 1


def incr(x):
    return x + 1


def spawn(n):
    for _ in range(20):
        t = threading.Thread(target=one)
        t.start()
        t.join()
    t0 = clock()
    for _ in range(n):
        t = threading.Thread(target=one)
        t.start()
        t.join()
    report(us_per_op=(clock() - t0) / n * 1e6)


def idle(n):
    go = threading.Event()
    ready = threading.Semaphore(0)

    def body():
        ready.release()
        go.wait()

    before = vmrss_kb()
    t0 = clock()
    threads = [threading.Thread(target=body) for _ in range(n)]
    for t in threads:
        t.start()
    for _ in range(n):
        ready.acquire()
    up = clock() - t0
    after = vmrss_kb()
    go.set()
    for t in threads:
        t.join()
    report(kb_per_thread=(after - before) / n, rss_mb=after / 1024, up_s=up)


def produce(q, start, n):
    start.get()
    for i in range(1, n + 1):
        q.put(i)


def drain(q, start, n):
    t0 = clock()
    start.put(True)
    total = 0
    for _ in range(n):
        total += q.get()
    dt = clock() - t0
    if total != n * (n + 1) // 2:
        raise RuntimeError("lost messages")
    return dt


def chan(n):
    q, start = queue.Queue(1024), queue.Queue()
    t = threading.Thread(target=produce, args=(q, start, n))
    t.start()
    dt = drain(q, start, n)
    t.join()
    report(msgs_per_s=n / dt)


def mpspawn(n):
    for _ in range(5):
        p = FORK.Process(target=one)
        p.start()
        p.join()
    t0 = clock()
    for _ in range(n):
        p = FORK.Process(target=one)
        p.start()
        p.join()
        if p.exitcode != 0:
            raise RuntimeError("child failed")
    report(us_per_op=(clock() - t0) / n * 1e6)


def mpqueue(n):
    q, start = FORK.Queue(), FORK.Queue()
    p = FORK.Process(target=produce, args=(q, start, n))
    p.start()
    dt = drain(q, start, n)
    p.join()
    report(msgs_per_s=n / dt)


def pool_rate(pool, n):
    with pool:
        list(pool.imap(incr, range(8), chunksize=1))
        t0 = clock()
        out = list(pool.imap(incr, range(n), chunksize=1))
        dt = clock() - t0
        if out[-1] != n or len(out) != n:
            raise RuntimeError("wrong results")
    report(items_per_s=n / dt)


MODES = {
    "spawn": (spawn, 1000),
    "idle": (idle, 1000),
    "chan": (chan, 200000),
    "mpspawn": (mpspawn, 100),
    "mpqueue": (mpqueue, 50000),
    "mppool": (lambda n: pool_rate(FORK.Pool(2), n), 20000),
    "threadpool": (lambda n: pool_rate(ThreadPool(2), n), 20000),
}

if __name__ == "__main__":
    fn, default = MODES[sys.argv[1]]
    fn(int(sys.argv[2]) if len(sys.argv) > 2 else default)
