/*
** threadpool.c
** The OS threads that workers run on, kept for reuse.
**
** DESIGN. A spawn hands a task to an idle OS thread of the pool if there
** is one (a wake of its parker), else to a new thread, detached, with a
** small stack. A task runs with a fresh worker state: a pooled thread
** made one while it was idle (off the spawner's path); for a new thread
** the spawner makes it, so that a thread that waits at once (on an event,
** say) calls malloc not once. After the task the thread stays idle for
** IDLE_SECONDS, up to twice the CPUs plus two of them, then ends. In a
** forked child the pool's threads do not exist: the pool starts empty.
*/

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workers.h"

#ifdef CONC_SANITIZED
#define STACK_SIZE (16u << 20)
#else
#define STACK_SIZE (2u << 20)
#endif
#define IDLE_SECONDS 5.0

/* An OS thread of the pool. It lives on the thread's own stack. */
typedef struct pthr {
  struct pthr *next;
  parker park;
  _Atomic(conc_task *) task;
  lua_State *spare;            /* a fresh state, made while idle */
} pthr;

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static objlink pool_link;
static pthr *pool_idle;
static int pool_nidle, pool_max;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

/* In a forked child the pool's threads do not exist. */
static void pool_atfork_child(void) {
  pool_idle = NULL;
  pool_nidle = 0;
}

static void pool_init(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  pool_max = (int)(n > 0 ? n : 1) * 2 + 2;
  conc_fork_register(&pool_link, &pool_mu);
  conc_fork_onchild(pool_atfork_child);
}

int conc_threadpool_idle(void) {
  int n;
  pthread_mutex_lock(&pool_mu);
  n = pool_nidle;
  pthread_mutex_unlock(&pool_mu);
  return n;
}

/* Goes idle: offers itself to spawners until a task comes (returned) or
** it has been idle long enough (NULL: the thread ends). */
static conc_task *pool_wait(pthr *self) {
  deadline d;
  conc_task *j;
  pthread_mutex_lock(&pool_mu);
  if (pool_nidle >= pool_max) {
    pthread_mutex_unlock(&pool_mu);
    return NULL;
  }
  atomic_store(&self->task, NULL);
  self->next = pool_idle;
  pool_idle = self;
  pool_nidle++;
  pthread_mutex_unlock(&pool_mu);
  if (self->spare == NULL) self->spare = conc_state_new();
  conc_deadline_in(&d, IDLE_SECONDS);
  for (;;) {
    uint32_t seen = conc_park_seq(&self->park);
    if ((j = atomic_load(&self->task)) != NULL) return j;
    if (conc_park_sleep(&self->park, seen, &d) == ETIMEDOUT) {
      pthread_mutex_lock(&pool_mu);
      j = atomic_load(&self->task);
      if (j == NULL) {                 /* still idle: leave the pool */
        pthr **p;
        for (p = &pool_idle; *p; p = &(*p)->next)
          if (*p == self) {
            *p = self->next;
            pool_nidle--;
            break;
          }
      }
      pthread_mutex_unlock(&pool_mu);
      return j;
    }
  }
}

static void *pool_thread(void *arg) {
  pthr self;
  conc_task *j = arg;
  memset(&self, 0, sizeof self);
  conc_park_init(&self.park);
  while (j != NULL) {
    lua_State *L = j->L;              /* made by the spawner, or */
    j->L = NULL;
    if (L == NULL) L = self.spare ? self.spare : conc_state_new();  /* ours */
    else if (self.spare) {
      conc_state_close(self.spare);
    }
    self.spare = NULL;
    j->run(j, L);                     /* j may be gone after */
    j = pool_wait(&self);
  }
  if (self.spare) conc_state_close(self.spare);
  conc_park_destroy(&self.park);
  return NULL;
}

int conc_threadpool_start(conc_task *j) {
  pthr *t;
  pthread_t tid;
  pthread_attr_t attr;
  int r;
  pthread_once(&pool_once, pool_init);
  pthread_mutex_lock(&pool_mu);
  t = pool_idle;
  if (t) {
    pool_idle = t->next;
    pool_nidle--;
    atomic_store(&t->task, j);
    conc_park_wake(&t->park);   /* under the lock: t cannot leave meanwhile */
    pthread_mutex_unlock(&pool_mu);
    return 0;
  }
  pthread_mutex_unlock(&pool_mu);
  j->L = conc_state_new(); /* here: the new thread mallocs nothing */
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, STACK_SIZE);
  r = pthread_create(&tid, &attr, pool_thread, j);
  pthread_attr_destroy(&attr);
  if (r != 0 && j->L) {
    conc_state_close(j->L);
    j->L = NULL;
  }
  return r;
}
