/*
** sync.c
** conc.lock, conc.semaphore, conc.event, conc.barrier: synchronisation
** between threads and between processes forked after the object was made.
**
** DESIGN. Each object is a shared-memory object of shm.c: its state is a
** few words in a page of its own, changed with atomics, and waiters sleep
** on its 'seq' word with conc_sync_wait. A lock is an slock (shm.c): a
** waiter that has slept for a while checks that the owner still lives and
** takes over a lock whose owner died, so a death never leaves the others
** waiting forever.
*/

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "modules.h"

static void sync_destroy(cobj *o) {
  conc_shmobj_destroy((shmobj *)o);
  free(o);
}

/* Makes a shared object of 'size' bytes and pushes its handle. */
static void *sync_new(lua_State *L, int kind, size_t size) {
  shmobj *o = calloc(1, sizeof *o);
  if (o == NULL || conc_shmobj_init(o, kind, size) != 0) {
    free(o);
    luaL_error(L, "cannot make a %s: %s", conc_kinds[kind]->name,
               strerror(errno ? errno : ENOMEM));
  }
  conc_obj_push(L, conc_cs(L), &o->obj);
  conc_obj_release(&o->obj);
  return o->shm;
}

static void *sync_check(lua_State *L, int kind) {
  return ((shmobj *)conc_obj_check(L, 1, kind))->shm;
}

static double opt_timeout(lua_State *L, int arg) {
  return conc_opttimeout(L, arg);
}

/* ------------------------------------------------------------ lock */

static int lock_try(void *state, void *arg) {
  CONC_UNUSED(arg);
  return conc_slock_try(state);
}

static int lock_try_now(void *state) {
  return conc_slock_try(state);
}

static int lock_check_owner(void *state, void *arg) {
  CONC_UNUSED(arg);
  conc_slock_owner_dead(state);
  return 0;
}

/* acquire: 1 acquired, 0 timed out; raises on a stop request. */
static int lock_acquire_d(lua_State *L, slock *s, double t) {
  cstate *cs = conc_cs(L);
  deadline d;
  const char *why = NULL;
  int stuck;
  int r;
  static _Thread_local _Atomic uint32_t spin;   /* conc_spin's budget */
  if (conc_slock_try(s)) return 1;
  if (t == 0) return 0;
  /* a lock held across cores is often let go within microseconds */
  if (conc_spin(&spin, lock_try_now, s)) return 1;
  conc_slock_owner_dead(s);
  conc_deadline_in(&d, t);
  stuck = d.forever && !conc_is_child;   /* a child shares it */
  if (stuck) conc_cs_stuck(cs, 1);
  conc_cs_waiting_obj(cs, "lock", conc_obj_test(L, cs, 1));
  r = conc_sync_wait(cs, &s->seq, &s->nwait, &d, lock_try, lock_check_owner, s,
                NULL, &why);
  conc_cs_waiting(cs, NULL);
  if (stuck) conc_cs_stuck(cs, 0);
  if (r != 1 && atomic_load(&s->word) == 0 && atomic_load(&s->nwait))
    conc_bump(&s->seq, &s->nwait, 1); /* pass on a wake-up we may have eaten */
  if (r < 0) conc_cs_raisestop(L, cs, why);
  return r;
}

static int lock_new(lua_State *L) {
  conc_checkoptions(L, 1, NULL);
  sync_new(L, K_LOCK, sizeof(slock));
  return 1;
}

static int lock_acquire(lua_State *L) {
  slock *s = sync_check(L, K_LOCK);
  lua_pushboolean(L, lock_acquire_d(L, s, opt_timeout(L, 2)));
  return 1;
}

static void lock_release_s(lua_State *L, slock *s) {
  if (atomic_load(&s->word) == 0)
    luaL_error(L, "release of an unlocked lock");
  conc_slock_unlock(s);
}

static int lock_release(lua_State *L) {
  lock_release_s(L, sync_check(L, K_LOCK));
  return 0;
}

static int lock_locked(lua_State *L) {
  slock *s = sync_check(L, K_LOCK);
  lua_pushboolean(L, atomic_load(&s->word) != 0);
  return 1;
}

/* lock:with(fn, ...): fn's results, the lock held meanwhile and released
** whatever happens. */
static int lock_with(lua_State *L) {
  slock *s = sync_check(L, K_LOCK);
  int n = lua_gettop(L), st;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lock_acquire_d(L, s, -1);
  st = lua_pcall(L, n - 2, LUA_MULTRET, 0);
  /* still ours (fn may have released it, and another thread taken it) */
  if (atomic_load(&s->word) == conc_owner_self()) conc_slock_unlock(s);
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L) - 1;
}

static int lock_tostring(lua_State *L) {
  slock *s = sync_check(L, K_LOCK);
  lua_pushfstring(L, "<lock %s>",
                  atomic_load(&s->word) ? "locked" : "unlocked");
  return 1;
}

/* ------------------------------------------------------------ semaphore */

typedef struct ssem {
  _Atomic int64_t count;
  _Atomic uint32_t seq;
  _Atomic uint32_t nwait;
  int64_t bound;               /* the most a bounded one holds; -1: none */
} ssem;

static int sem_try(void *state, void *arg) {
  ssem *s = state;
  int64_t c = atomic_load(&s->count);
  CONC_UNUSED(arg);
  while (c > 0)
    if (atomic_compare_exchange_weak(&s->count, &c, c - 1)) return 1;
  return 0;
}

static int sem_new(lua_State *L) {
  static const char *const known[] = {"bounded", NULL};
  lua_Integer n = luaL_optinteger(L, 1, 1);
  int bounded = 0;
  ssem *s;
  luaL_argcheck(L, n >= 0, 1, "count must be non-negative");
  conc_checkoptions(L, 2, known);
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "bounded");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
      luaL_error(L, "bad option 'bounded' to 'semaphore' (boolean expected, "
                    "got %s)", luaL_typename(L, -1));
    bounded = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  s = sync_new(L, K_SEMAPHORE, sizeof(ssem));
  atomic_store(&s->count, (int64_t)n);
  s->bound = bounded ? (int64_t)n : -1;
  return 1;
}

static int sem_acquire(lua_State *L) {
  cstate *cs = conc_cs(L);
  ssem *s = sync_check(L, K_SEMAPHORE);
  double t = opt_timeout(L, 2);
  deadline d;
  const char *why = NULL;
  int stuck;
  int r;
  if (sem_try(s, NULL)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (t == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  conc_deadline_in(&d, t);
  stuck = d.forever && !conc_is_child;   /* a child shares it */
  if (stuck) conc_cs_stuck(cs, 1);
  conc_cs_waiting_obj(cs, "semaphore", conc_obj_test(L, cs, 1));
  r = conc_sync_wait(cs, &s->seq, &s->nwait, &d, sem_try, NULL, s, NULL, &why);
  conc_cs_waiting(cs, NULL);
  if (stuck) conc_cs_stuck(cs, 0);
  if (r != 1 && atomic_load(&s->count) > 0 && atomic_load(&s->nwait))
    conc_bump(&s->seq, &s->nwait, 1);
  if (r < 0) return conc_cs_raisestop(L, cs, why);
  lua_pushboolean(L, r);
  return 1;
}

/* release: the count goes up by n, unless that passes the bound of a
** bounded semaphore or INT64_MAX; then it raises and nothing changes. */
static int sem_release(lua_State *L) {
  ssem *s = sync_check(L, K_SEMAPHORE);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  int64_t c = atomic_load(&s->count), most;
  luaL_argcheck(L, n >= 1, 2, "count must be positive");
  most = s->bound >= 0 ? s->bound : INT64_MAX;
  do {
    if (c > most - (int64_t)n)
      return luaL_error(L, s->bound >= 0
                               ? "semaphore released too many times"
                               : "semaphore count would overflow");
  } while (!atomic_compare_exchange_weak(&s->count, &c, c + (int64_t)n));
  conc_bump(&s->seq, &s->nwait, (int)(n > INT32_MAX ? INT32_MAX : n));
  return 0;
}

static int sem_value(lua_State *L) {
  ssem *s = sync_check(L, K_SEMAPHORE);
  lua_pushinteger(L, (lua_Integer)atomic_load(&s->count));
  return 1;
}

static int sem_tostring(lua_State *L) {
  ssem *s = sync_check(L, K_SEMAPHORE);
  lua_pushfstring(L, "<semaphore %I>", (LUAI_UACINT)atomic_load(&s->count));
  return 1;
}

/* ------------------------------------------------------------ event */

typedef struct sevent {
  _Atomic uint32_t flag;
  _Atomic uint32_t seq;
  _Atomic uint32_t nwait;
} sevent;

static int event_isset_fn(void *state, void *arg) {
  CONC_UNUSED(arg);
  return atomic_load(&((sevent *)state)->flag) != 0;
}

static int event_new(lua_State *L) {
  conc_checkoptions(L, 1, NULL);
  sync_new(L, K_EVENT, sizeof(sevent));
  return 1;
}

static int event_set(lua_State *L) {
  sevent *e = sync_check(L, K_EVENT);
  atomic_store(&e->flag, 1);
  conc_bump(&e->seq, &e->nwait, INT32_MAX);
  return 0;
}

static int event_clear(lua_State *L) {
  sevent *e = sync_check(L, K_EVENT);
  atomic_store(&e->flag, 0);
  return 0;
}

static int event_is_set(lua_State *L) {
  sevent *e = sync_check(L, K_EVENT);
  lua_pushboolean(L, atomic_load(&e->flag) != 0);
  return 1;
}

static int event_wait(lua_State *L) {
  cstate *cs = conc_cs(L);
  sevent *e = sync_check(L, K_EVENT);
  double t = opt_timeout(L, 2);
  deadline d;
  const char *why = NULL;
  int stuck;
  int r;
  if (atomic_load(&e->flag) || t == 0) {
    lua_pushboolean(L, atomic_load(&e->flag) != 0);
    return 1;
  }
  conc_deadline_in(&d, t);
  stuck = d.forever && !conc_is_child;   /* a child shares it */
  if (stuck) conc_cs_stuck(cs, 1);
  conc_cs_waiting_obj(cs, "event", conc_obj_test(L, cs, 1));
  r = conc_sync_wait(cs, &e->seq, &e->nwait, &d, event_isset_fn, NULL, e, NULL,
                &why);
  conc_cs_waiting(cs, NULL);
  if (stuck) conc_cs_stuck(cs, 0);
  if (r < 0) return conc_cs_raisestop(L, cs, why);
  lua_pushboolean(L, r);
  return 1;
}

static int event_tostring(lua_State *L) {
  sevent *e = sync_check(L, K_EVENT);
  lua_pushfstring(L, "<event %s>", atomic_load(&e->flag) ? "set" : "clear");
  return 1;
}

/* ------------------------------------------------------------ barrier */

/* The state word: the generation (bits 33-63, one more at each trip),
** the mode (bits 31-32) and how many parties are inside (bits 0-30). A
** party that arrives on a broken barrier raises; one that arrives while
** it resets waits until the parties of the broken round have left. Only
** a trip changes the generation, so a waiter that sees it change passed;
** one that sees the mode change under the same generation is broken. */
enum { B_FILLING, B_BROKEN, B_RESETTING };

#define B_COUNT(st) ((uint32_t)((st) & 0x7fffffffu))
#define B_MODE(st) ((int)(((st) >> 31) & 3u))
#define B_GEN(st) ((uint32_t)((st) >> 33))
#define B_MAKE(gen, mode, count) \
  (((uint64_t)(gen) << 33) | ((uint64_t)(mode) << 31) | (uint64_t)(count))

typedef struct sbarrier {
  _Atomic uint64_t state;
  _Atomic uint32_t seq;
  _Atomic uint32_t nwait;
  uint32_t parties;
} sbarrier;

/* A waiter of generation *arg may go: it tripped or the barrier broke. */
static int barrier_passed(void *state, void *arg) {
  uint64_t st = atomic_load(&((sbarrier *)state)->state);
  return B_GEN(st) != *(uint32_t *)arg || B_MODE(st) != B_FILLING;
}

static int barrier_open(void *state, void *arg) {
  CONC_UNUSED(arg);
  return B_MODE(atomic_load(&((sbarrier *)state)->state)) != B_RESETTING;
}

static int barrier_new(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  sbarrier *b;
  luaL_argcheck(L, n >= 1, 1, "parties must be positive");
  luaL_argcheck(L, n <= INT32_MAX, 1, "too many parties");
  conc_checkoptions(L, 2, NULL);
  b = sync_new(L, K_BARRIER, sizeof(sbarrier));
  b->parties = (uint32_t)n;
  return 1;
}

/* A waiter of generation gen leaves without passing: one fewer inside;
** 'brk' also breaks the barrier (a timeout). 1 if the generation had
** tripped meanwhile (it passed after all). The last to leave a resetting
** barrier opens it. */
static int barrier_leave(sbarrier *b, uint32_t gen, int brk) {
  uint64_t st = atomic_load(&b->state), nst;
  for (;;) {
    int mode;
    uint32_t count;
    if (B_GEN(st) != gen) return 1;
    mode = B_MODE(st);
    count = B_COUNT(st) - 1;
    if (mode == B_FILLING && brk) mode = B_BROKEN;
    if (mode == B_RESETTING && count == 0) mode = B_FILLING;
    nst = B_MAKE(gen, mode, count);
    if (atomic_compare_exchange_weak(&b->state, &st, nst)) break;
  }
  if (B_MODE(nst) != B_MODE(st)) conc_bump(&b->seq, &b->nwait, INT32_MAX);
  return 0;
}

/* wait: the arrival index (0 for the first), or false on timeout (which
** breaks the barrier); raises "broken barrier" if it is or gets broken. */
static int barrier_wait(lua_State *L) {
  cstate *cs = conc_cs(L);
  sbarrier *b = sync_check(L, K_BARRIER);
  double t = opt_timeout(L, 2);
  uint64_t st, nst;
  uint32_t gen, idx;
  deadline d;
  const char *why = NULL;
  int stuck;
  int r;
  conc_deadline_in(&d, t);
  for (;;) {                        /* arrive */
    st = atomic_load(&b->state);
    if (B_MODE(st) == B_BROKEN) return luaL_error(L, "broken barrier");
    if (B_MODE(st) == B_RESETTING) {
      conc_cs_waiting(cs, "barrier");
      r = conc_sync_wait(cs, &b->seq, &b->nwait, &d, barrier_open, NULL, b,
                         NULL, &why);
      conc_cs_waiting(cs, NULL);
      if (r < 0) return conc_cs_raisestop(L, cs, why);
      if (r == 0) {
        lua_pushboolean(L, 0);
        return 1;
      }
      continue;
    }
    gen = B_GEN(st);
    idx = B_COUNT(st);
    if (idx + 1 == b->parties)
      nst = B_MAKE(gen + 1, B_FILLING, 0);           /* the last: trip */
    else
      nst = st + 1;
    if (atomic_compare_exchange_weak(&b->state, &st, nst)) break;
  }
  if (idx + 1 == b->parties) {
    conc_bump(&b->seq, &b->nwait, INT32_MAX);
    lua_pushinteger(L, idx);
    return 1;
  }
  stuck = d.forever && !conc_is_child;   /* a child shares it */
  if (stuck) conc_cs_stuck(cs, 1);
  conc_cs_waiting_obj(cs, "barrier", conc_obj_test(L, cs, 1));
  r = conc_sync_wait(cs, &b->seq, &b->nwait, &d, barrier_passed, NULL, b, &gen,
                     &why);
  conc_cs_waiting(cs, NULL);
  if (stuck) conc_cs_stuck(cs, 0);
  st = atomic_load(&b->state);
  if (r == 1 && B_GEN(st) == gen) {        /* broken: leave, and raise */
    if (!barrier_leave(b, gen, 0)) return luaL_error(L, "broken barrier");
  } else if (r != 1) {           /* timeout breaks it; a stop does not */
    if (barrier_leave(b, gen, r == 0)) r = 1;
  }
  if (r == 1) {
    lua_pushinteger(L, idx);
    return 1;
  }
  if (r < 0) return conc_cs_raisestop(L, cs, why);
  lua_pushboolean(L, 0);
  return 1;
}

/* abort: breaks it; every waiter and every later wait raises "broken
** barrier" until reset. */
static int barrier_abort(lua_State *L) {
  sbarrier *b = sync_check(L, K_BARRIER);
  uint64_t st = atomic_load(&b->state), nst;
  do {
    if (B_MODE(st) == B_BROKEN) return 0;
    nst = B_MAKE(B_GEN(st), B_BROKEN, B_COUNT(st));
  } while (!atomic_compare_exchange_weak(&b->state, &st, nst));
  conc_bump(&b->seq, &b->nwait, INT32_MAX);
  return 0;
}

/* reset: back to empty; those waiting raise "broken barrier", and new
** arrivals wait until they have left. */
static int barrier_reset(lua_State *L) {
  sbarrier *b = sync_check(L, K_BARRIER);
  uint64_t st = atomic_load(&b->state), nst;
  do {
    nst = B_MAKE(B_GEN(st), B_COUNT(st) ? B_RESETTING : B_FILLING,
                 B_COUNT(st));
  } while (!atomic_compare_exchange_weak(&b->state, &st, nst));
  conc_bump(&b->seq, &b->nwait, INT32_MAX);
  return 0;
}

static int barrier_broken(lua_State *L) {
  sbarrier *b = sync_check(L, K_BARRIER);
  lua_pushboolean(L, B_MODE(atomic_load(&b->state)) == B_BROKEN);
  return 1;
}

static int barrier_tostring(lua_State *L) {
  sbarrier *b = sync_check(L, K_BARRIER);
  lua_pushfstring(L, "<barrier %I/%I>",
                  (LUAI_UACINT)B_COUNT(atomic_load(&b->state)),
                  (LUAI_UACINT)b->parties);
  return 1;
}

static int barrier_parties(lua_State *L) {
  sbarrier *b = sync_check(L, K_BARRIER);
  lua_pushinteger(L, b->parties);
  return 1;
}

/* ------------------------------------------------------------ tables */

int conc_sync_lock(lua_State *L) { return lock_new(L); }
int conc_sync_lock_acquire(lua_State *L, slock *s, double t) {
  return lock_acquire_d(L, s, t);
}
int conc_sync_semaphore(lua_State *L) { return sem_new(L); }
int conc_sync_event(lua_State *L) { return event_new(L); }
int conc_sync_barrier(lua_State *L) { return barrier_new(L); }

static const luaL_Reg lock_methods[] = {
    {"acquire", lock_acquire}, {"release", lock_release},
    {"with", lock_with},       {"locked", lock_locked},
    {NULL, NULL}};
static const luaL_Reg sem_methods[] = {
    {"acquire", sem_acquire}, {"release", sem_release},
    {"value", sem_value},     {NULL, NULL}};
static const luaL_Reg event_methods[] = {
    {"set", event_set},   {"clear", event_clear},
    {"is_set", event_is_set}, {"wait", event_wait},
    {NULL, NULL}};
static const luaL_Reg barrier_methods[] = {
    {"wait", barrier_wait},   {"parties", barrier_parties},
    {"abort", barrier_abort}, {"reset", barrier_reset},
    {"broken", barrier_broken}, {NULL, NULL}};

const kindinfo conc_lock_kind = {
    .kind = K_LOCK,
    .tname = "conc.lock",
    .name = "lock",
    .shm = 1,
    .destroy = sync_destroy,
    .methods = lock_methods,
    .tostring = lock_tostring};
const kindinfo conc_semaphore_kind = {
    .kind = K_SEMAPHORE,
    .tname = "conc.semaphore",
    .name = "semaphore",
    .shm = 1,
    .destroy = sync_destroy,
    .methods = sem_methods,
    .tostring = sem_tostring};
const kindinfo conc_event_kind = {
    .kind = K_EVENT,
    .tname = "conc.event",
    .name = "event",
    .shm = 1,
    .destroy = sync_destroy,
    .methods = event_methods,
    .tostring = event_tostring};
const kindinfo conc_barrier_kind = {
    .kind = K_BARRIER,
    .tname = "conc.barrier",
    .name = "barrier",
    .shm = 1,
    .destroy = sync_destroy,
    .methods = barrier_methods,
    .tostring = barrier_tostring};
