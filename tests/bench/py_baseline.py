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
  thincr    N increments of d["n"] under a threading.Lock, 2 threads ops_per_s
  thrw      N stores and reads of a dict, 64 keys per thread, 2 threads
                                                                 ops_per_s
  mpvalue   N increments of a multiprocessing.Value under its own lock,
            2 processes                                          ops_per_s
  mgrincr   N increments of d["n"] in a Manager().dict() under a
            Manager().Lock(), 2 processes                        ops_per_s
  mgrrw     N stores and reads of a Manager().dict(), 64 keys per
            process, 2 processes                                 ops_per_s
  cond      N notify -> wake round trips between two threads on a
            threading.Condition                                  us_per_rt
  rlock     N acquire + release pairs of a threading.RLock       ns_per_pair
  timers    N pending threading.Timer(0.5 .. 0.6): RSS each, time to
            the last fired                                       bytes_each, s
  mpimapu   Pool(2).imap_unordered(f, range(N), chunksize=1)     items_per_s
  tpemap    ThreadPoolExecutor(2).map(f, range(N))               items_per_s
  mpqueue1k N strings of 1 KiB from a child process through mp.Queue msgs_per_s
  tpesubmit N ex.submit(f, i).result(), one at a time, on a
            ThreadPoolExecutor(2)                                us_per_rt
  ppesubmit the same on a ProcessPoolExecutor(2) (fork)          us_per_rt
"""
import multiprocessing
import queue
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
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


def two_workers(start, count, work, args):
    """Runs work(go, w, k, *args) on two workers made by start (a Thread
    or Process class), k = count // 2 each, timed from the go (an Event
    they wait on) to the end of both."""
    go = (threading.Event() if start is threading.Thread else FORK.Event())
    k = count // 2
    ws = [start(target=work, args=(go, w, k) + args) for w in (1, 2)]
    for w in ws:
        w.start()
    time.sleep(0.05)
    t0 = clock()
    go.set()
    for w in ws:
        w.join()
        if getattr(w, "exitcode", 0) != 0:
            raise RuntimeError("worker failed")
    return clock() - t0, 2 * k


def incr_locked(go, w, k, d, lock):
    go.wait()
    for _ in range(k):
        with lock:
            d["n"] = d["n"] + 1


def store_read(go, w, k, d):
    go.wait()
    keys = [f"w{w}k{i}" for i in range(64)]
    for i in range(1, k // 2 + 1):
        key = keys[i % 64]
        d[key] = i
        if d[key] != i:
            raise RuntimeError("wrong value read back")


def value_incr(go, w, k, v):
    go.wait()
    for _ in range(k):
        with v.get_lock():
            v.value += 1


def thincr(n):
    d = {"n": 0}
    dt, total = two_workers(threading.Thread, n, incr_locked,
                            (d, threading.Lock()))
    if d["n"] != total:
        raise RuntimeError("lost increments")
    report(ops_per_s=total / dt)


def thrw(n):
    dt, total = two_workers(threading.Thread, n, store_read, ({},))
    report(ops_per_s=total / dt)


def mpvalue(n):
    v = FORK.Value("q", 0)
    dt, total = two_workers(FORK.Process, n, value_incr, (v,))
    if v.value != total:
        raise RuntimeError("lost increments")
    report(ops_per_s=total / dt)


def mgrincr(n):
    with FORK.Manager() as m:
        d = m.dict()
        d["n"] = 0
        dt, total = two_workers(FORK.Process, n, incr_locked, (d, m.Lock()))
        if d["n"] != total:
            raise RuntimeError("lost increments")
    report(ops_per_s=total / dt)


def mgrrw(n):
    with FORK.Manager() as m:
        d = m.dict()
        dt, total = two_workers(FORK.Process, n, store_read, (d,))
    report(ops_per_s=total / dt)


def cond(n):
    c = threading.Condition()
    turn = [0]

    def side(me, other):
        with c:
            for _ in range(n):
                while turn[0] != me:
                    c.wait()
                turn[0] = other
                c.notify()

    t = threading.Thread(target=side, args=(1, 0))
    t.start()
    t0 = clock()
    side(0, 1)
    t.join()
    report(us_per_rt=(clock() - t0) / n * 1e6)


def rlock(n):
    r = threading.RLock()
    for _ in range(1000):
        r.acquire()
        r.release()
    t0 = clock()
    for _ in range(n):
        r.acquire()
        r.release()
    report(ns_per_pair=(clock() - t0) / n * 1e9)


def timers(n):
    fired = threading.Semaphore(0)
    rss0 = vmrss_kb()
    t0 = clock()
    ts = [threading.Timer(0.5 + (i % 1000) * 1e-4, fired.release)
          for i in range(n)]
    for t in ts:
        t.start()
    each = (vmrss_kb() - rss0) * 1024 / n
    for _ in range(n):
        fired.acquire()
    dt = clock() - t0
    for t in ts:
        t.join()
    report(bytes_each=each, s=dt)


def mpimapu(n):
    with FORK.Pool(2) as pool:
        list(pool.imap_unordered(incr, range(8), chunksize=1))
        t0 = clock()
        total = sum(pool.imap_unordered(incr, range(n), chunksize=1))
        dt = clock() - t0
        if total != n * (n - 1) // 2 + n:
            raise RuntimeError("wrong results")
    report(items_per_s=n / dt)


def produce1k(q, start, n):
    msg = "x" * 1023 + "\n"
    start.get()
    for _ in range(n):
        q.put(msg)


def mpqueue1k(n):
    q, start = FORK.Queue(), FORK.Queue()
    p = FORK.Process(target=produce1k, args=(q, start, n))
    p.start()
    t0 = clock()
    start.put(True)
    total = 0
    for _ in range(n):
        total += len(q.get())
    dt = clock() - t0
    p.join()
    if total != n * 1024:
        raise RuntimeError("lost messages")
    report(msgs_per_s=n / dt)


def submit_rt(ex, n):
    with ex:
        for i in range(50):
            ex.submit(incr, i).result()
        t0 = clock()
        for i in range(n):
            if ex.submit(incr, i).result() != i + 1:
                raise RuntimeError("wrong result")
        dt = clock() - t0
    report(us_per_rt=dt / n * 1e6)


def tpesubmit(n):
    submit_rt(ThreadPoolExecutor(2), n)


def ppesubmit(n):
    submit_rt(ProcessPoolExecutor(2, mp_context=FORK), n)


def tpemap(n):
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(incr, range(8)))
        t0 = clock()
        total = sum(ex.map(incr, range(n)))
        dt = clock() - t0
        if total != n * (n - 1) // 2 + n:
            raise RuntimeError("wrong results")
    report(items_per_s=n / dt)


def echo_conn(conn, n):
    for _ in range(n):
        conn.send(conn.recv())


def mppipe(n):
    warm = 200
    a, b = FORK.Pipe()
    p = FORK.Process(target=echo_conn, args=(b, n + warm))
    p.start()
    for i in range(warm):
        a.send(i)
        a.recv()
    t0 = clock()
    for i in range(n):
        a.send(i)
        if a.recv() != i:
            raise RuntimeError("wrong echo")
    dt = clock() - t0
    p.join()
    report(us_per_rt=dt / n * 1e6)


MODES = {
    "spawn": (spawn, 1000),
    "idle": (idle, 1000),
    "chan": (chan, 200000),
    "mpspawn": (mpspawn, 100),
    "mpqueue": (mpqueue, 50000),
    "mppool": (lambda n: pool_rate(FORK.Pool(2), n), 20000),
    "threadpool": (lambda n: pool_rate(ThreadPool(2), n), 20000),
    "thincr": (thincr, 400000),
    "thrw": (thrw, 400000),
    "mpvalue": (mpvalue, 200000),
    "mgrincr": (mgrincr, 10000),
    "mgrrw": (mgrrw, 20000),
    "cond": (cond, 20000),
    "rlock": (rlock, 2000000),
    "timers": (timers, 10000),
    "mpimapu": (mpimapu, 20000),
    "tpemap": (tpemap, 20000),
    "mpqueue1k": (mpqueue1k, 50000),
    "tpesubmit": (tpesubmit, 5000),
    "ppesubmit": (ppesubmit, 5000),
    "mppipe": (mppipe, 20000),
}

if __name__ == "__main__":
    fn, default = MODES[sys.argv[1]]
    fn(int(sys.argv[2]) if len(sys.argv) > 2 else default)
