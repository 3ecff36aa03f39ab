/*
** deadlock.c
** Whether a runtime is deadlocked: its main state and every live thread
** stuck for ever, and nothing else that could wake one.
**
** DESIGN. The blocking path only counts (runtime.c): a stuck wait (one
** with no timeout, on an object only this process's threads can touch)
** adds itself to rt->nstuck, and each time it goes to sleep it says
** where (the word it sleeps on and the value it saw there before finding
** its condition false). When the count reaches the number of live states,
** the state that sleeps last runs this check, which errs
** towards 'no': it gives up at once if another runtime is open in the
** process (its states could reach our objects), if a child process of the
** runtime runs (it could release a shared lock, or its end be waited
** for), or if any thread is not stuck; otherwise it takes a snapshot of
** every state's sleeping word and value and looks again over a window of
** a few tenths of a second (longer than a lock's check for a dead owner):
** a wake-up changes the word, a state that leaves or enters a stuck wait
** changes the runtime's epoch, a new thread the count of live states. Only
** a snapshot that holds through the whole window is a deadlock. A word is
** read only while it is known to live: a state's own parker (the state is
** held under its worker's lock), or the shared word a state still sleeps
** on (its blocked_word, under the state's lock).
*/

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "workers.h"

#define WINDOW_STEPS 3
#define STEP_NS 120000000L        /* 3 x 0.12 s: over a lock's 0.2 s */

typedef struct sleeper {
  worker *w;                      /* NULL: the main state */
  _Atomic uint32_t *word;
  uint32_t val;
} sleeper;

static void nap(long ns) {
  struct timespec ts = {0, ns};
  nanosleep(&ts, NULL);
}

/* Whether c still sleeps where it said, on the value it said (and so was
** not woken since). With c alive; word not NULL. */
static int still(cstate *c, _Atomic uint32_t *word, uint32_t val) {
  int same;
  if (!atomic_load(&c->stuck) || atomic_load(&c->sleep_word) != word ||
      atomic_load(&c->sleep_val) != val)
    return 0;
  if (word == &c->park.seq) return atomic_load(word) == val;
  pthread_mutex_lock(&c->mu);
  same = atomic_load(&c->blocked_word) == word && atomic_load(word) == val;
  pthread_mutex_unlock(&c->mu);
  return same;
}

/* A snapshot of the stuck states of r into v (room for cap; *n of them):
** 1 taken, 0 not now (a state is not asleep yet), -1 no deadlock (a
** process runs, a thread is not stuck, memory ran out). */
static int snapshot(rt *r, cstate *main, sleeper *v, int cap, int *n) {
  int k = 0, res = 1;
  _Atomic uint32_t *mw = atomic_load(&main->sleep_word);
  if (mw == NULL) return 0;
  v[k].w = NULL;
  v[k].val = atomic_load(&main->sleep_val);
  v[k++].word = mw;
  if (!still(main, mw, v[0].val)) return 0;       /* woken already */
  pthread_mutex_lock(&r->mu);
  for (worker *w = r->head; w && res == 1; w = w->next) {
    cstate *c;
    _Atomic uint32_t *word;
    if (w->owner != conc_getpid()) continue;
    pthread_mutex_lock(&w->mu);
    if (w->status == W_RUNNING) {
      if (w->obj.kind != K_THREAD) {
        res = -1;                        /* a live child process */
      } else if ((c = w->cs) == NULL) {
        res = 0;                         /* starting, or ending */
      } else if (!atomic_load(&c->stuck)) {
        res = -1;
      } else if ((word = atomic_load(&c->sleep_word)) == NULL) {
        res = 0;                         /* not asleep yet, or woken */
      } else if (k == cap) {
        res = -1;
      } else {
        /* one read of the word: the state may wake (and clear it) now */
        v[k].w = w;
        v[k].val = atomic_load(&c->sleep_val);
        v[k].word = word;
        if (!still(c, word, v[k].val)) res = 0;
        k++;
      }
    }
    pthread_mutex_unlock(&w->mu);
  }
  pthread_mutex_unlock(&r->mu);
  *n = k;
  return res;
}

/* Whether every state of the snapshot still sleeps as it did. */
static int holds(rt *r, cstate *main, sleeper *v, int n) {
  int ok = 1;
  if (!still(main, v[0].word, v[0].val)) return 0;
  pthread_mutex_lock(&r->mu);
  for (int i = 1; i < n && ok; i++) {
    worker *w = v[i].w;
    int found = 0;
    for (worker *x = r->head; x; x = x->next) found |= x == w;
    if (!found) {
      ok = 0;
      break;
    }
    pthread_mutex_lock(&w->mu);
    ok = w->status == W_RUNNING && w->cs && still(w->cs, v[i].word, v[i].val);
    pthread_mutex_unlock(&w->mu);
  }
  pthread_mutex_unlock(&r->mu);
  return ok;
}

/* "deadlock: main waits on join thread 1; thread 1 (a) waits on lock 3". */
static char *message(rt *r, cstate *main) {
  size_t cap = 256, used;
  char *m = malloc(cap), b[96];
  const char *what;
  if (m == NULL) return NULL;
  what = conc_cs_describe_wait(main, b, sizeof b);
  used = (size_t)snprintf(m, cap, "deadlock: main waits on %s",
                          what ? what : "?");
  pthread_mutex_lock(&r->mu);
  for (worker *w = r->head; w; w = w->next) {
    char line[256];
    int k;
    if (w->owner != conc_getpid() || w->obj.kind != K_THREAD) continue;
    pthread_mutex_lock(&w->mu);
    what = w->status == W_RUNNING && w->cs
               ? conc_cs_describe_wait(w->cs, b, sizeof b) : NULL;
    k = what ? snprintf(line, sizeof line, "; thread %lld (%s) waits on %s",
                        (long long)w->id, w->name, what) : 0;
    pthread_mutex_unlock(&w->mu);
    if (k <= 0) continue;
    if (used + (size_t)k + 1 > cap) {
      char *nm = realloc(m, cap = (used + (size_t)k + 1) * 2);
      if (nm == NULL) break;
      m = nm;
    }
    memcpy(m + used, line, (size_t)k + 1);
    used += (size_t)k;
  }
  pthread_mutex_unlock(&r->mu);
  return m;
}

int conc_deadlock_find(cstate *cs) {
  rt *r = cs->rt;
  int cap = atomic_load(&r->nlive) + 1, n = 0, res;
  unsigned e0 = atomic_load(&r->stuck_epoch);
  int live = atomic_load(&r->nlive);
  sleeper *v;
  char *m, *old;
  if (!cs->ismain || atomic_load(&r->nstuck) < live || conc_rt_count() != 1 ||
      atomic_load(&conc_wakers) > 0)
    return 0;
  v = malloc(sizeof *v * (size_t)cap);
  if (v == NULL) return 0;
  /* a state not asleep yet, or woken, looks itself when it sleeps */
  res = snapshot(r, cs, v, cap, &n);
  if (res == 1 && n != live) res = 0;
  for (int step = 0; step < WINDOW_STEPS && res == 1; step++) {
    nap(STEP_NS);
    if (atomic_load(&r->stuck_epoch) != e0 ||
        atomic_load(&r->nlive) != live || !holds(r, cs, v, n))
      res = 0;
  }
  free(v);
  if (res != 1 || (m = message(r, cs)) == NULL) return 0;
  old = atomic_exchange(&cs->deadmsg, m);   /* two found it: one message */
  free(old);
  return 1;
}
