/*
** shm.c
** Runtime objects whose state lives in shared memory, so that it crosses
** fork: their pages and the table of them by uid, the sleep on a shared
** word (conc_sync_wait), and the lock that survives its owner (slock).
**
** DESIGN. Each such object keeps its state in a MAP_SHARED page of its
** own, so a forked child shares it rather than copying it; the page is
** unmapped when the last handle of this process lets go, and the kernel
** frees it when every process did. Waiters sleep on a 'seq' word (a
** process-shared futex) that every change a waiter may care about bumps
** (conc_bump), so the usual read-seq, test, sleep-if-unchanged protocol
** of wait.c never loses a wake-up; a canceller or Ctrl-C bumps the same
** word to wake its target (conc_cs_block_on). Every shared object of the
** process is also in a table by uid, so one that comes back through a
** pipe finds its local record (conc_shm_lookup).
** An slock's word holds its owner's id (owner.c; 0: free), set and
** cleared in one atomic step, so a waiter can tell that the owner died
** whenever it died: a waiter that has slept for a while checks, and takes
** over a lock whose owner died (a killed process, zombie or reaped, an
** exited thread). The kernel's robust-mutex owner-died mark says so, not
** a probe by pid that a zombie or a reused pid would fool. Unlike a
** robust mutex, any thread may release it.
*/

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core.h"

/* How often a waiter checks that a lock's owner is alive. */
#define OWNER_CHECK 0.2

/* ------------------------------------------------------------ pages */

void *conc_shm_alloc(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void conc_shm_free(void *p, size_t size) {
  if (p) munmap(p, size);
}

#define NBUCKETS 256

static pthread_mutex_t tab_mu = PTHREAD_MUTEX_INITIALIZER;
static objlink tab_link;
static shmobj *table[NBUCKETS];
static pthread_once_t tab_once = PTHREAD_ONCE_INIT;

static void tab_init(void) {
  conc_fork_register(&tab_link, &tab_mu);
}

/* Makes o's shared page and files it by uid; 0 or -1. */
int conc_shmobj_init(shmobj *o, int kind, size_t size) {
  unsigned b;
  conc_obj_init(&o->obj, kind);
  o->size = size;
  o->shm = NULL;
  if (conc_owner_init() != 0) return -1;     /* before a fork can share o */
  o->shm = conc_shm_alloc(size);
  if (o->shm == NULL) return -1;
  pthread_once(&tab_once, tab_init);
  b = (unsigned)(o->obj.uid % NBUCKETS);
  pthread_mutex_lock(&tab_mu);
  o->next = table[b];
  table[b] = o;
  pthread_mutex_unlock(&tab_mu);
  return 0;
}

void conc_shmobj_destroy(shmobj *o) {
  unsigned b = (unsigned)(o->obj.uid % NBUCKETS);
  pthread_mutex_lock(&tab_mu);
  for (shmobj **p = &table[b]; *p; p = &(*p)->next)
    if (*p == o) {
      *p = o->next;
      break;
    }
  pthread_mutex_unlock(&tab_mu);
  conc_shm_free(o->shm, o->size);
}

cobj *conc_shm_lookup(uint64_t uid) {
  cobj *found = NULL;
  pthread_once(&tab_once, tab_init);
  pthread_mutex_lock(&tab_mu);
  for (shmobj *o = table[uid % NBUCKETS]; o; o = o->next)
    if (o->obj.uid == uid) {
      int r = atomic_load(&o->obj.refs);   /* retain unless being freed */
      while (r > 0 && !atomic_compare_exchange_weak(&o->obj.refs, &r, r + 1))
        ;
      if (r > 0) found = &o->obj;
      break;
    }
  pthread_mutex_unlock(&tab_mu);
  return found;
}

/* ------------------------------------------------------------ waiting */

/* Sleeps on a shared seq word until 'ready' says so. Returns 1 ready, 0
** timeout, -1 stop (*why set). 'ready' runs after each wake-up with the
** seq value read before it, and 'idle' (may be NULL) after a sleep of
** OWNER_CHECK without news. */
int conc_sync_wait(cstate *cs, _Atomic uint32_t *seq, _Atomic uint32_t *nwait,
                     const deadline *d, ready_fn ready, ready_fn idle,
                     void *state, void *arg, const char **why) {
  int r = 0;
  conc_cs_block_on(cs, seq, 1);
  atomic_fetch_add(nwait, 1);
  for (;;) {
    uint32_t s = atomic_load(seq);
    deadline slice;
    if (ready(state, arg)) {
      r = 1;
      break;
    }
    if ((*why = conc_cs_stopreason(cs)) != NULL) {
      r = -1;
      break;
    }
    if (conc_deadline_passed(d)) break;
    /* a stuck wait looks for a dead owner before every sleep, not after
    ** a quiet slice only: the deadlock check must not take a lock that
    ** its dead owner left for one that nobody will release */
    if (cs->stuck && idle) idle(state, arg);
    if (cs->stuck && conc_cs_sleeps(cs, seq, s)) {
      *why = conc_why_deadlock;
      r = -1;
      break;
    }
    conc_deadline_in(&slice, OWNER_CHECK);
    if (!d->forever && conc_deadline_left(d) < OWNER_CHECK) slice = *d;
    if (conc_futex_wait(seq, s, &slice, 1) == ETIMEDOUT && idle)
      idle(state, arg);
  }
  atomic_fetch_sub(nwait, 1);
  conc_cs_unblock(cs);
  return r;
}

void conc_bump(_Atomic uint32_t *seq, _Atomic uint32_t *nwait, int n) {
  atomic_fetch_add(seq, 1);
  if (atomic_load(nwait)) conc_futex_wake(seq, n, 1);
}

/* ------------------------------------------------------------ slock */

/* The lock word holds the owner's id (0: free), set and cleared in one
** atomic step, so a waiter can tell that the owner died whenever it
** died. */

int conc_slock_try(slock *s) {
  uint64_t zero = 0;
  return atomic_compare_exchange_strong(&s->word, &zero, conc_owner_self());
}

/* Frees the lock if its owner is gone; 1 if it did. */
int conc_slock_owner_dead(slock *s) {
  uint64_t owner = atomic_load(&s->word);
  if (owner == 0 || !conc_owner_dead(owner)) return 0;
  if (atomic_compare_exchange_strong(&s->word, &owner, 0)) {
    conc_bump(&s->seq, &s->nwait, INT32_MAX);
    return 1;
  }
  return 0;
}

/* For short critical sections of the runtime: waits as long as it takes,
** with no cancellation. An owner that died holding the lock hands it
** straight to the waiter that notices (1), so that one alone repairs what
** the dead owner left half done before anyone else gets in. */
int conc_slock_lock(slock *s) {
  uint64_t me = conc_owner_self();
  int spins = 0;
  for (;;) {
    uint64_t owner = 0;
    uint32_t seq;
    deadline d;
    int r = 0;
    if (atomic_compare_exchange_strong(&s->word, &owner, me)) return 0;
    if (++spins < 100) continue;
    seq = atomic_load(&s->seq);
    atomic_fetch_add(&s->nwait, 1);
    owner = 0;
    if (atomic_compare_exchange_strong(&s->word, &owner, me)) {
      atomic_fetch_sub(&s->nwait, 1);
      return 0;
    }
    conc_deadline_in(&d, OWNER_CHECK);
    if (conc_futex_wait(&s->seq, seq, &d, 1) == ETIMEDOUT) {
      owner = atomic_load(&s->word);
      if (owner != 0 && conc_owner_dead(owner) &&
          atomic_compare_exchange_strong(&s->word, &owner, me))
        r = 1;
    }
    atomic_fetch_sub(&s->nwait, 1);
    if (r) return 1;
  }
}

void conc_slock_unlock(slock *s) {
  atomic_store(&s->word, 0);
  conc_bump(&s->seq, &s->nwait, 1);
}
