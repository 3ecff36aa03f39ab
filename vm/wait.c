/*
** wait.c
** Time, deadlines, futexes and parkers: how a conc call sleeps.
**
** DESIGN. Every blocking conc call sleeps on one word. For objects of one
** process (channels, worker handles) that word is the caller's parker: the
** object keeps a list of waiting nodes and wakes exactly the waiter it
** hands something to (no thundering herd). For objects in shared memory
** (locks, events...) it is a sequence word inside the object, bumped on
** every change a waiter may care about. Either way the protocol is: read
** the word, test the condition, sleep only if the word is unchanged; a
** waker changes the condition, bumps the word, then wakes. Deadlines are
** absolute CLOCK_MONOTONIC times, so a loop that wakes early re-waits only
** for what is left. A parker can also sleep in poll() on fds: the waker
** then writes to an eventfd, which is async-signal-safe like FUTEX_WAKE,
** so a signal handler (Ctrl-C) can wake a sleeping thread.
*/

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "os.h"

double conc_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void conc_deadline_in(deadline *d, double seconds) {
  if (seconds < 0 || seconds > 1e9) {
    d->forever = 1;
    return;
  }
  d->forever = 0;
  clock_gettime(CLOCK_MONOTONIC, &d->at);
  double whole = floor(seconds);
  long ns = (long)((seconds - whole) * 1e9);
  d->at.tv_sec += (time_t)whole;
  d->at.tv_nsec += ns;
  if (d->at.tv_nsec >= 1000000000L) {
    d->at.tv_sec++;
    d->at.tv_nsec -= 1000000000L;
  }
}

int conc_deadline_passed(const deadline *d) {
  struct timespec now;
  if (d == NULL || d->forever) return 0;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec > d->at.tv_sec ||
         (now.tv_sec == d->at.tv_sec && now.tv_nsec >= d->at.tv_nsec);
}

double conc_deadline_left(const deadline *d) {
  struct timespec now;
  double left;
  if (d == NULL || d->forever) return 1e9;
  clock_gettime(CLOCK_MONOTONIC, &now);
  left = (double)(d->at.tv_sec - now.tv_sec) +
         (double)(d->at.tv_nsec - now.tv_nsec) * 1e-9;
  return left > 0 ? left : 0;
}

double conc_opttimeout(lua_State *L, int arg) {
  lua_Number t;
  if (lua_type(L, arg) <= LUA_TNIL) return -1;       /* none or nil */
  t = luaL_checknumber(L, arg);
  luaL_argcheck(L, t >= 0, arg, "timeout must be a non-negative number");
  if (t == HUGE_VAL) return -1;
  return (double)t;
}

int conc_futex_wait(_Atomic uint32_t *w, uint32_t v, const deadline *d,
               int shared) {
  int op = FUTEX_WAIT_BITSET | (shared ? 0 : FUTEX_PRIVATE_FLAG);
  long r = syscall(SYS_futex, (uint32_t *)w, op, v,
                   d == NULL || d->forever ? NULL : &d->at, NULL,
                   FUTEX_BITSET_MATCH_ANY);
  if (r == 0) return 0;
  return errno;
}

void conc_futex_wake(_Atomic uint32_t *w, int n, int shared) {
  int op = FUTEX_WAKE | (shared ? 0 : FUTEX_PRIVATE_FLAG);
  int saved = errno;
  syscall(SYS_futex, (uint32_t *)w, op, n, NULL, NULL, 0);
  errno = saved;
}

/* How many CPUs this process may run on: with one, spinning only delays
** the thread it waits for. */
static int usable_cpus(void) {
  static _Atomic int n;
  int v = atomic_load_explicit(&n, memory_order_relaxed);
  if (v == 0) {
    cpu_set_t set;
    v = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    if (v < 1) v = 1;
    atomic_store_explicit(&n, v, memory_order_relaxed);
  }
  return v;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* A parker's spin before it sleeps, in nanoseconds: a wake-up from sleep
** costs tens of microseconds on a VM (the other vCPU halted), far more
** than spinning through a short wait. */
#define PARK_SPIN_MIN 2000
#define PARK_SPIN_MAX 60000

void conc_park_init(parker *p) {
  atomic_init(&p->seq, 0);
  atomic_init(&p->efd, -1);
  atomic_init(&p->polling, 0);
  atomic_init(&p->wakers, 0);
  atomic_init(&p->sleeping, 0);
  p->spin_ns = PARK_SPIN_MIN;
}

/* A waker may still be inside conc_park_wake after its waiter saw the news
** and left (conc_sel_deliver): wait for it before the parker goes. */
void conc_park_destroy(parker *p) {
  int fd;
  while (atomic_load(&p->wakers) > 0) sched_yield();
  fd = atomic_exchange(&p->efd, -1);
  if (fd >= 0) close(fd);
}

uint32_t conc_park_seq(parker *p) {
  return atomic_load(&p->seq);
}

static int64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Spins until seq moves from 'seen' or p->spin_ns pass (not past the
** deadline): 1 if it moved. With fds (nfds of them), looks at them too,
** every few microseconds (a poll that does not wait): then their count,
** when some are ready. */
static int park_spin(parker *p, uint32_t seen, const deadline *d, int64_t t0,
                     struct pollfd *fds, int nfds) {
  int64_t end = t0 + p->spin_ns;
  if (d && !d->forever) {
    int64_t at = (int64_t)d->at.tv_sec * 1000000000 + d->at.tv_nsec;
    if (at < end) end = at;
  }
  for (int round = 1;; round++) {
    for (int i = 0; i < 8; i++) {
      if (atomic_load_explicit(&p->seq, memory_order_acquire) != seen) return 1;
      for (int k = 0; k < 8; k++) cpu_relax();
    }
    if (nfds && round % 2 == 0) {
      int r = poll(fds, (nfds_t)nfds, 0);
      if (r > 0) return r;
    }
    if (mono_ns() >= end) return 0;
  }
}

/* The owner's spin learns from its waits: one that a spin ended, or that
** a wake-up ended soon after the spin gave up, makes the next spin long
** enough to cover it (up to PARK_SPIN_MAX); a longer one, or a timeout,
** halves it. Only the owner reads and writes spin_ns. */
static uint32_t spin_clamp(int64_t ns) {
  return (uint32_t)(ns < PARK_SPIN_MIN ? PARK_SPIN_MIN
                    : ns > PARK_SPIN_MAX ? PARK_SPIN_MAX : ns);
}

static void spin_learn_spun(parker *p, int64_t took) {
  if (2 * took > p->spin_ns) p->spin_ns = spin_clamp(2 * took);
}

static void spin_learn_slept(parker *p, int64_t t0, int timedout) {
  int64_t took = mono_ns() - t0;
  if (!timedout && took < PARK_SPIN_MAX)
    p->spin_ns = spin_clamp(took + took / 2);
  else
    p->spin_ns = spin_clamp(p->spin_ns / 2);
}

int conc_park_sleep(parker *p, uint32_t seen, const deadline *d) {
  int r;
  int64_t t0 = 0;
  if (usable_cpus() > 1) {
    t0 = mono_ns();
    if (park_spin(p, seen, d, t0, NULL, 0)) {
      spin_learn_spun(p, mono_ns() - t0);
      return 0;
    }
  }
  /* say we sleep before the last look at seq: a waker that bumps seq
  ** after our look sees the flag and makes the system call */
  atomic_store(&p->sleeping, 1);
  if (atomic_load(&p->seq) != seen) {
    atomic_store(&p->sleeping, 0);
    return 0;
  }
  r = conc_futex_wait(&p->seq, seen, d, 0);
  atomic_store(&p->sleeping, 0);
  if (r == ETIMEDOUT && atomic_load(&p->seq) == seen) {
    if (t0) spin_learn_slept(p, t0, 1);
    return ETIMEDOUT;
  }
  if (t0) spin_learn_slept(p, t0, 0);
  return 0;  /* woken, changed already (EAGAIN) or a signal: re-test */
}

void conc_park_wake(parker *p) {
  atomic_fetch_add(&p->seq, 1);
  if (atomic_load(&p->polling)) {
    int fd = atomic_load(&p->efd);
    uint64_t one = 1;
    int saved = errno;
    ssize_t r = write(fd, &one, sizeof one);
    CONC_UNUSED(r);   /* EAGAIN: the counter is already non-zero */
    errno = saved;
    return;
  }
  if (atomic_load(&p->sleeping)) conc_futex_wake(&p->seq, 1, 0);
}

int conc_park_poll(parker *p, uint32_t seen, struct pollfd *fds, int nfds,
              const deadline *d) {
  int efd = atomic_load(&p->efd);
  int ms, r, err;
  int64_t t0 = 0;
  if (efd < 0) {
    efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) return -1;
    atomic_store(&p->efd, efd);
  }
  if (usable_cpus() > 1) {
    t0 = mono_ns();
    if ((r = park_spin(p, seen, d, t0, fds, nfds)) != 0) {
      spin_learn_spun(p, mono_ns() - t0);
      /* seq moved (re-test), or r fds ready */
      return atomic_load(&p->seq) != seen ? 0 : r;
    }
  }
  atomic_store(&p->polling, 1);
  if (atomic_load(&p->seq) != seen) {
    atomic_store(&p->polling, 0);
    return 0;
  }
  fds[nfds].fd = efd;
  fds[nfds].events = POLLIN;
  fds[nfds].revents = 0;
  if (d == NULL || d->forever) {
    ms = -1;
  } else {
    double left = conc_deadline_left(d);
    ms = left > INT_MAX / 1000 ? INT_MAX : (int)ceil(left * 1000);
  }
  r = poll(fds, (nfds_t)nfds + 1, ms);
  err = errno;
  atomic_store(&p->polling, 0);
  if (t0) spin_learn_slept(p, t0, r == 0 && atomic_load(&p->seq) == seen);
  if (r < 0 && err == EINTR) return 0;
  errno = err;
  if (r > 0 && fds[nfds].revents) {
    uint64_t v;
    ssize_t rr = read(efd, &v, sizeof v);  /* drain: the seq says why */
    CONC_UNUSED(rr);
    r--;
  }
  return r;
}

/* A mutex that spins a little before it sleeps: object locks are held
** for a few instructions, and a futex sleep costs far more. */
void conc_mutex_init(pthread_mutex_t *mu) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
  pthread_mutex_init(mu, &a);
  pthread_mutexattr_destroy(&a);
}

/* ------------------------------------------------------------ spinning */

#define SPIN_MIN 64
#define SPIN_MAX 16384

/* Spins while ready(arg) is false, for at most the budget (pauses); the
** budget grows when spinning pays (the wait ended while spinning) and
** shrinks when it does not. 1 if ready. A wake-up from sleep costs tens
** of microseconds across cores on a VM; a short spin saves it. */
int conc_spin(_Atomic uint32_t *budget, int (*ready)(void *), void *arg) {
  uint32_t b, i;
  if (usable_cpus() < 2) return 0;
  b = atomic_load_explicit(budget, memory_order_relaxed);
  if (b < SPIN_MIN) b = SPIN_MIN;
  for (i = 0; i < b; i += 8) {
    /* look every 8 pauses: each look pulls the watched cache line away
    ** from the thread about to write it */
    if (ready(arg)) {
      if (b < SPIN_MAX)
        atomic_store_explicit(budget, b * 2, memory_order_relaxed);
      return 1;
    }
    for (int k = 0; k < 8; k++) cpu_relax();
  }
  atomic_store_explicit(budget, b > SPIN_MIN ? b / 2 : SPIN_MIN,
                        memory_order_relaxed);
  return 0;
}

/* ------------------------------------------------------------ cmutex */

void conc_cmutex_init(cmutex *m) {
  atomic_init(&m->v, 0);
}

#define CMUTEX_SPIN 400

void conc_cmutex_lock(cmutex *m) {
  uint32_t c = 0;
  if (atomic_compare_exchange_strong_explicit(
          &m->v, &c, 1, memory_order_acquire, memory_order_relaxed))
    return;
  if (usable_cpus() > 1) {
    for (int i = 0; i < CMUTEX_SPIN; i++) {
      cpu_relax();
      c = atomic_load_explicit(&m->v, memory_order_relaxed);
      if (c == 0 && atomic_compare_exchange_weak_explicit(&m->v, &c, 1,
                                                          memory_order_acquire,
                                                          memory_order_relaxed))
        return;
    }
  }
  /* sleep, marking the lock as having sleepers (2) */
  c = atomic_exchange_explicit(&m->v, 2, memory_order_acquire);
  while (c != 0) {
    conc_futex_wait(&m->v, 2, NULL, 0);
    c = atomic_exchange_explicit(&m->v, 2, memory_order_acquire);
  }
}

void conc_cmutex_unlock(cmutex *m) {
  if (atomic_fetch_sub_explicit(&m->v, 1, memory_order_release) != 1) {
    atomic_store_explicit(&m->v, 0, memory_order_release);
    conc_futex_wake(&m->v, 1, 0);
  }
}
