/*
** fork.c
** The process and thread ids, and fork safety: the registry of locks a
** fork takes, the fork lock, and the handlers that run around a fork.
**
** DESIGN. A forked child has only the thread that forked. Every lock of
** the runtime that another thread could hold at that moment registers
** here (conc_fork_register); the prepare handler takes them all in
** registry order and both sides release them after, so the child
** inherits no lock held by a thread it does not have. A process with one
** thread skips that (no other thread can hold one), and each lock written
** would be a page the parent copies on write while the child lives.
** The layers above do not call each other from here: the child's fresh
** start (the thread pool has no threads, the reaper no children) is done
** by the handlers they register (conc_fork_onchild), and the work at exit
** by the one conc_fork_install is given.
** spawn_process forks under the fork lock (conc_fork_lock): once the
** exit handlers ran, exit unregisters the atfork handlers, and a child
** forked without them would keep the lifeline's write end (lifeline.c);
** the lock makes "forks are closed" and a fork exclude each other.
*/

#include <stdio.h>
#include <stdlib.h>
#include <sys/single_threaded.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "os.h"

static _Atomic pid_t cached_pid;

/* The thread id, cached: gettid is a system call. */
static CONC_TLS uint32_t tls_tid;

uint32_t conc_gettid(void) {
  if (tls_tid == 0) tls_tid = (uint32_t)syscall(SYS_gettid);
  return tls_tid;
}

pid_t conc_getpid(void) {
  pid_t p = atomic_load_explicit(&cached_pid, memory_order_relaxed);
  if (p == 0) {
    p = getpid();
    atomic_store(&cached_pid, p);
  }
  return p;
}

/* ------------------------------------------------------------ registry */

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static objlink reg_head = {&reg_head, &reg_head, NULL, NULL};

static void reg_link(objlink *l) {
  pthread_mutex_lock(&reg_mu);
  l->next = &reg_head;
  l->prev = reg_head.prev;
  reg_head.prev->next = l;
  reg_head.prev = l;
  pthread_mutex_unlock(&reg_mu);
}

void conc_fork_register(objlink *l, pthread_mutex_t *mu) {
  l->mu = mu;
  l->cm = NULL;
  reg_link(l);
}

void conc_fork_register_cm(objlink *l, cmutex *cm) {
  l->mu = NULL;
  l->cm = cm;
  reg_link(l);
}

void conc_fork_unregister(objlink *l) {
  pthread_mutex_lock(&reg_mu);
  l->prev->next = l->next;
  l->next->prev = l->prev;
  l->next = l->prev = l;
  pthread_mutex_unlock(&reg_mu);
}

/* The registry lock stays held until unlock_all, so no lock comes or
** goes meanwhile. */
static void lock_all(void) {
  objlink *l;
  pthread_mutex_lock(&reg_mu);
  for (l = reg_head.next; l != &reg_head; l = l->next) {
    if (l->mu) pthread_mutex_lock(l->mu);
    else conc_cmutex_lock(l->cm);
  }
}

/* In the child the forking thread is the only one left and it owns
** every lock taken above, so plain unlocks are right on both sides. */
static void unlock_all(void) {
  objlink *l;
  for (l = reg_head.prev; l != &reg_head; l = l->prev) {
    if (l->mu) pthread_mutex_unlock(l->mu);
    else conc_cmutex_unlock(l->cm);
  }
  pthread_mutex_unlock(&reg_mu);
}

/* ------------------------------------------------------------ handlers */

_Atomic unsigned conc_forkgen;      /* forks this process made */

/* The runtime's locks are held for a fork. Atomic: a host's own fork in
** another thread may run these handlers too. */
static _Atomic int fork_locked;

#define MAXCHILD 8
static void (*child_fns[MAXCHILD])(void);
static _Atomic int nchild;

/* Set around the fork of spawn_process (under the fork lock when there
** are threads): the lifeline read end made for the child, and which
** thread forks it (the address of its tls_tid: fork keeps it, no other
** thread has it), so the child knows it is a spawn_process child and not
** popen's or a host's fork in another thread. Not thread-local: the
** parent resets it after the fork, and this page is written then anyway
** (conc_forkgen), a TLS page not: every page the parent writes while the
** child lives is a copy-on-write fault. */
static _Atomic int spawn_lfd = -1;
static _Atomic uintptr_t spawn_thread;

static void atfork_prepare(void) {
  int locked = !__libc_single_threaded;
  atomic_store_explicit(&fork_locked, locked, memory_order_relaxed);
  if (locked) lock_all();
}

static void atfork_parent(void) {
  atomic_fetch_add(&conc_forkgen, 1);
  if (atomic_load_explicit(&fork_locked, memory_order_relaxed)) unlock_all();
}

/* The child: one thread; the parent's lifeline is not its (before any
** code but these handlers runs), nor what the other layers reset. */
static void atfork_child(void) {
  pid_t self = getpid();
  int i, n;
  atomic_store(&cached_pid, self);
  tls_tid = 0;
  if (atomic_load_explicit(&fork_locked, memory_order_relaxed)) unlock_all();
  conc_lifeline_atfork_child(
      atomic_load(&spawn_thread) == (uintptr_t)&tls_tid
          ? atomic_load(&spawn_lfd) : -1, self);
  atomic_store(&spawn_lfd, -1);       /* not for the child's own forks */
  n = atomic_load_explicit(&nchild, memory_order_acquire);
  for (i = 0; i < n; i++) child_fns[i]();
}

/* The slot is filled before the count that makes a child call it grows:
** a fork meanwhile sees the handlers that were complete. */
void conc_fork_onchild(void (*fn)(void)) {
  static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  int i;
  pthread_mutex_lock(&mu);
  i = atomic_load_explicit(&nchild, memory_order_relaxed);
  if (i >= MAXCHILD) abort();           /* a fixed set of callers */
  child_fns[i] = fn;
  atomic_store_explicit(&nchild, i + 1, memory_order_release);
  pthread_mutex_unlock(&mu);
}

/* ------------------------------------------------------------ fork lock */

static pthread_mutex_t fork_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int forks_closed;
static _Atomic uintptr_t exit_thread;    /* the one running exit (tls_tid) */
static void (*exit_fn)(void);
static pthread_once_t install_once = PTHREAD_ONCE_INIT;

/* At exit (also after os.exit): the work of the layers above, then no
** more forks. */
static void at_exit(void) {
  if (exit_fn) exit_fn();
  pthread_mutex_lock(&fork_mu);
  atomic_store(&exit_thread, (uintptr_t)&tls_tid);
  atomic_store(&forks_closed, 1);
  pthread_mutex_unlock(&fork_mu);
}

static void install(void) {
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
  atexit(at_exit);
}

void conc_fork_install(void (*at_exit_fn)(void)) {
  exit_fn = at_exit_fn;
  pthread_once(&install_once, install);
}

int conc_fork_exiting(void) {
  return atomic_load(&exit_thread) == (uintptr_t)&tls_tid;
}

int conc_fork_lock(int alone) {
  if (!alone) pthread_mutex_lock(&fork_mu);
  if (atomic_load(&forks_closed)) {
    if (!alone) pthread_mutex_unlock(&fork_mu);
    return -1;
  }
  return 0;
}

void conc_fork_unlock(int alone) {
  if (!alone) pthread_mutex_unlock(&fork_mu);
}

pid_t conc_fork_spawn(int lfd) {
  pid_t pid;
  atomic_store_explicit(&spawn_lfd, lfd, memory_order_relaxed);
  atomic_store_explicit(&spawn_thread, (uintptr_t)&tls_tid,
                        memory_order_relaxed);
  pid = fork();
  if (pid != 0) atomic_store_explicit(&spawn_lfd, -1, memory_order_relaxed);
  return pid;
}
