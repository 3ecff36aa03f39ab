/*
** cond.c
** conc.rlock and conc.condition: the reentrant lock and the condition
** variable, between threads and between processes forked after the
** object was made.
**
** DESIGN. Both are shared-memory objects of shm.c, like sync.c's. An
** rlock is an slock (shm.c: its word holds the owner's id) plus a depth
** that only its owner touches. A condition holds a reference to its lock
** (a lock or an rlock, whose local record a forked child shares) and, in
** its own mapping, a table of waiter slots. A waiter takes a free slot
** and a ticket (its place in line) while it holds the lock, releases the
** lock (all of an rlock's depth), sleeps on its slot's own word until
** the slot is marked notified, and takes the lock again. notify(n) marks
** the n oldest waiting slots, so a notify wakes only waits that began
** before it (a wait that starts after it can never take its place: the
** notifier that waits next cannot swallow its own notify), and each woken
** waiter is woken on its own word, nobody else. A waiter that gives up
** (timeout, cancel) frees its slot with one compare-and-swap, which fails
** if a notify marked it first: it was notified after all (a cancelled
** one hands the notify on to the next in line). A slot whose waiter died
** (owner.c) is freed by the next notify that finds it.
*/

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "modules.h"

typedef struct srlock {
  slock s;                     /* first: a condition sees an slock */
  uint32_t depth;              /* its owner's acquisitions */
} srlock;

enum { W_FREE, W_WAITING, W_NOTIFIED };

typedef struct cslot {
  _Atomic uint32_t state;      /* W_* */
  _Atomic uint32_t seq;        /* its waiter sleeps here */
  _Atomic uint32_t nwait;
  uint32_t pad;
  uint64_t ticket;             /* its place in line */
  uint64_t owner;              /* its waiter (owner.c) */
} cslot;

#define COND_SIZE (64u * 1024u)
#define COND_SLOTS ((COND_SIZE - 64u) / sizeof(cslot))

typedef struct scond {
  _Atomic uint64_t tickets;    /* handed out so far */
  _Atomic uint32_t hi;         /* slots below it may be in use */
  _Atomic uint32_t waiting;    /* slots waiting (for tostring) */
  _Atomic uint32_t spin;       /* conc_spin's budget for a waiter */
  char pad[44];
  cslot slot[];
} scond;
_Static_assert(sizeof(scond) == 64, "scond: the header is 64 bytes");

typedef struct condobj {
  shmobj so;
  cobj *lock;                  /* a K_LOCK or K_RLOCK shmobj */
} condobj;

static void rlock_destroy(cobj *o) {
  conc_shmobj_destroy((shmobj *)o);
  free(o);
}

static shmobj *shm_make(lua_State *L, int kind, size_t size, size_t rec) {
  shmobj *o = calloc(1, rec);
  if (o == NULL || conc_shmobj_init(o, kind, size) != 0) {
    free(o);
    luaL_error(L, "cannot make a %s: %s", conc_kinds[kind]->name,
               strerror(errno ? errno : ENOMEM));
  }
  return o;
}

static int owned(slock *s) {
  return atomic_load(&s->word) == conc_owner_self();
}

/* ------------------------------------------------------------ rlock */

static srlock *rlock_check(lua_State *L) {
  return ((shmobj *)conc_obj_check(L, 1, K_RLOCK))->shm;
}

/* 1 acquired, 0 timed out; raises on a stop request. */
static int rlock_acquire_d(lua_State *L, srlock *r, double t) {
  if (owned(&r->s)) {
    if (r->depth == UINT32_MAX) luaL_error(L, "rlock acquired too many times");
    r->depth++;
    return 1;
  }
  if (!conc_sync_lock_acquire(L, &r->s, t)) return 0;
  r->depth = 1;
  return 1;
}

static void rlock_release_s(lua_State *L, srlock *r) {
  if (!owned(&r->s)) luaL_error(L, "release of an rlock it does not own");
  if (--r->depth == 0) conc_slock_unlock(&r->s);
}

int conc_cond_rlock(lua_State *L) {
  shmobj *o;
  conc_checkoptions(L, 1, NULL);
  o = shm_make(L, K_RLOCK, sizeof(srlock), sizeof(shmobj));
  conc_obj_push(L, conc_cs(L), &o->obj);
  conc_obj_release(&o->obj);
  return 1;
}

static int rlock_acquire(lua_State *L) {
  srlock *r = rlock_check(L);
  lua_pushboolean(L, rlock_acquire_d(L, r, conc_opttimeout(L, 2)));
  return 1;
}

static int rlock_release(lua_State *L) {
  rlock_release_s(L, rlock_check(L));
  return 0;
}

static int rlock_locked(lua_State *L) {
  srlock *r = rlock_check(L);
  lua_pushboolean(L, atomic_load(&r->s.word) != 0);
  return 1;
}

/* Runs the function at 2 with the arguments above it, holding the lock
** at slock s once more (acquired already), and releases that once if it
** is still the caller's; fn's results. */
static int with_held(lua_State *L, slock *s, int rlock) {
  int st = lua_pcall(L, lua_gettop(L) - 2, LUA_MULTRET, 0);
  if (owned(s)) {
    if (!rlock) conc_slock_unlock(s);
    else if (--((srlock *)s)->depth == 0) conc_slock_unlock(s);
  }
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L) - 1;
}

static int rlock_with(lua_State *L) {
  srlock *r = rlock_check(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  rlock_acquire_d(L, r, -1);
  return with_held(L, &r->s, 1);
}

static int rlock_tostring(lua_State *L) {
  srlock *r = rlock_check(L);
  if (atomic_load(&r->s.word) == 0)
    lua_pushliteral(L, "<rlock unlocked>");
  else
    lua_pushfstring(L, "<rlock locked%s>", owned(&r->s) ? " by me" : "");
  return 1;
}

/* ------------------------------------------------------------ condition */

static condobj *cond_check(lua_State *L) {
  return (condobj *)conc_obj_check(L, 1, K_CONDITION);
}

static slock *cond_lock(condobj *c) {
  return ((shmobj *)c->lock)->shm;
}

static int cond_isr(condobj *c) {
  return c->lock->kind == K_RLOCK;
}

static void cond_destroy(cobj *o) {
  condobj *c = (condobj *)o;
  conc_shmobj_destroy(&c->so);
  if (c->lock) conc_obj_release(c->lock);
  free(c);
}

int conc_cond_condition(lua_State *L) {
  cstate *cs = conc_cs(L);
  cobj *lock = NULL;
  condobj *c;
  if (!lua_isnoneornil(L, 1)) {
    lock = conc_obj_test(L, cs, 1);
    if (lock == NULL || (lock->kind != K_LOCK && lock->kind != K_RLOCK))
      return luaL_typeerror(L, 1, "lock or rlock");
  }
  if (lua_gettop(L) > 1) luaL_argcheck(L, lua_isnone(L, 2), 2, "no value expected");
  c = (condobj *)shm_make(L, K_CONDITION, COND_SIZE, sizeof(condobj));
  if (lock) {
    conc_obj_retain(lock);
    c->lock = lock;
  } else {
    shmobj *r = calloc(1, sizeof *r);
    if (r == NULL || conc_shmobj_init(r, K_RLOCK, sizeof(srlock)) != 0) {
      free(r);
      cond_destroy(&c->so.obj);
      return luaL_error(L, "cannot make a condition: %s",
                        strerror(errno ? errno : ENOMEM));
    }
    c->lock = &r->obj;
  }
  conc_obj_push(L, cs, &c->so.obj);
  conc_obj_release(&c->so.obj);
  return 1;
}

/* Acquires the condition's lock once more: 1, or 0 on timeout. */
static int cond_acquire_d(lua_State *L, condobj *c, double t) {
  if (cond_isr(c)) return rlock_acquire_d(L, (srlock *)cond_lock(c), t);
  return conc_sync_lock_acquire(L, cond_lock(c), t);
}

static int cond_acquire(lua_State *L) {
  condobj *c = cond_check(L);
  lua_pushboolean(L, cond_acquire_d(L, c, conc_opttimeout(L, 2)));
  return 1;
}

static int cond_release(lua_State *L) {
  condobj *c = cond_check(L);
  slock *s = cond_lock(c);
  if (cond_isr(c)) {
    rlock_release_s(L, (srlock *)s);
  } else {
    if (!owned(s)) luaL_error(L, "release of a condition it does not hold");
    conc_slock_unlock(s);
  }
  return 0;
}

static int cond_with(lua_State *L) {
  condobj *c = cond_check(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  cond_acquire_d(L, c, -1);
  return with_held(L, cond_lock(c), cond_isr(c));
}

static int slot_notified(void *state, void *arg) {
  CONC_UNUSED(arg);
  return atomic_load(&((cslot *)state)->state) == W_NOTIFIED;
}

static int slot_ready(void *state) {
  return slot_notified(state, NULL);
}

/* Marks the oldest waiting slot notified and wakes its waiter; 0 if
** none waits. Slots of waiters that died are freed on the way. */
static int notify_one(scond *k) {
  uint32_t hi = atomic_load(&k->hi);
  for (;;) {
    cslot *best = NULL;
    uint32_t expect = W_WAITING;
    for (uint32_t i = 0; i < hi; i++) {
      cslot *c = &k->slot[i];
      if (atomic_load(&c->state) != W_WAITING) continue;
      if (conc_owner_dead(c->owner)) {
        uint32_t w = W_WAITING;
        if (atomic_compare_exchange_strong(&c->state, &w, W_FREE))
          atomic_fetch_sub(&k->waiting, 1);
        continue;
      }
      if (best == NULL || c->ticket < best->ticket) best = c;
    }
    if (best == NULL) return 0;
    if (atomic_compare_exchange_strong(&best->state, &expect, W_NOTIFIED)) {
      atomic_fetch_sub(&k->waiting, 1);
      conc_bump(&best->seq, &best->nwait, 1);
      return 1;
    }
    /* it gave up meanwhile: look again */
  }
}

/* wait: 1 notified, 0 timed out, the lock held again either way. On a
** stop request it raises without the lock. */
static int cond_wait_d(lua_State *L, condobj *c, double t) {
  cstate *cs = conc_cs(L);
  scond *k = c->so.shm;
  slock *s = cond_lock(c);
  uint32_t depth = 1, i, hi, expect = W_WAITING;
  const char *why = NULL;
  cslot *me = NULL;
  deadline d;
  int r;
  if (!owned(s)) luaL_error(L, "wait on a condition whose lock is not held");
  for (i = 0; i < COND_SLOTS && me == NULL; i++) {   /* a free slot */
    uint32_t f = W_FREE;
    if (atomic_load(&k->slot[i].state) == W_FREE &&
        atomic_compare_exchange_strong(&k->slot[i].state, &f, W_WAITING))
      me = &k->slot[i];
  }
  if (me == NULL) luaL_error(L, "too many waiters on a condition");
  hi = atomic_load(&k->hi);
  while (hi < i && !atomic_compare_exchange_weak(&k->hi, &hi, i))
    ;
  me->owner = conc_owner_self();
  me->ticket = atomic_fetch_add(&k->tickets, 1);
  atomic_fetch_add(&k->waiting, 1);
  if (cond_isr(c)) {
    depth = ((srlock *)s)->depth;
    ((srlock *)s)->depth = 0;
  }
  conc_slock_unlock(s);
  conc_deadline_in(&d, t);
  /* a notify from another core often comes within microseconds (the
  ** notifier's turn is short): spin for it before sleeping */
  if (conc_spin(&k->spin, slot_ready, me)) {
    r = 1;
  } else {
    conc_cs_waiting(cs, "condition");
    r = conc_sync_wait(cs, &me->seq, &me->nwait, &d, slot_notified, NULL, me,
                       NULL, &why);
    conc_cs_waiting(cs, NULL);
  }
  if (r != 1) {                 /* give the slot back, unless notified */
    if (atomic_compare_exchange_strong(&me->state, &expect, W_FREE))
      atomic_fetch_sub(&k->waiting, 1);
    else if (r == 0)
      r = 1;
    else {                       /* a cancelled waiter's notify goes on */
      atomic_store(&me->state, W_FREE);
      notify_one(k);
    }
  } else {
    atomic_store(&me->state, W_FREE);
  }
  if (r < 0) return conc_cs_raisestop(L, cs, why);
  conc_sync_lock_acquire(L, s, -1);
  if (cond_isr(c)) ((srlock *)s)->depth = depth;
  return r;
}

static int cond_wait(lua_State *L) {
  condobj *c = cond_check(L);
  lua_pushboolean(L, cond_wait_d(L, c, conc_opttimeout(L, 2)));
  return 1;
}

/* wait_for(pred [, seconds]): waits until pred() gives a true value and
** returns it, or returns pred's last value once the time is out. */
static int cond_wait_for(lua_State *L) {
  condobj *c = cond_check(L);
  double t = conc_opttimeout(L, 3);
  deadline d;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  conc_deadline_in(&d, t);
  for (;;) {
    double left;
    lua_settop(L, 3);
    lua_pushvalue(L, 2);
    lua_call(L, 0, 1);
    if (lua_toboolean(L, -1)) return 1;
    if (d.forever) {
      left = -1;
    } else {
      left = conc_deadline_left(&d);
      if (left <= 0) return 1;
    }
    cond_wait_d(L, c, left);
  }
}

static void notify_n(lua_State *L, condobj *c, lua_Integer n) {
  if (!owned(cond_lock(c)))
    luaL_error(L, "notify of a condition whose lock is not held");
  while (n-- > 0 && notify_one(c->so.shm))
    ;
}

static int cond_notify(lua_State *L) {
  condobj *c = cond_check(L);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 0, 2, "count must be non-negative");
  notify_n(L, c, n);
  return 0;
}

static int cond_notify_all(lua_State *L) {
  notify_n(L, cond_check(L), LUA_MAXINTEGER);
  return 0;
}

static int cond_tostring(lua_State *L) {
  condobj *c = cond_check(L);
  scond *k = c->so.shm;
  lua_pushfstring(L, "<condition %I waiting>",
                  (LUAI_UACINT)atomic_load(&k->waiting));
  return 1;
}

/* ------------------------------------------------------------ tables */

static const luaL_Reg rlock_methods[] = {
    {"acquire", rlock_acquire}, {"release", rlock_release},
    {"with", rlock_with},       {"locked", rlock_locked},
    {NULL, NULL}};
static const luaL_Reg cond_methods[] = {
    {"acquire", cond_acquire},   {"release", cond_release},
    {"with", cond_with},         {"wait", cond_wait},
    {"wait_for", cond_wait_for}, {"notify", cond_notify},
    {"notify_all", cond_notify_all}, {NULL, NULL}};

const kindinfo conc_rlock_kind = {
    .kind = K_RLOCK,
    .tname = "conc.rlock",
    .name = "rlock",
    .shm = 1,
    .destroy = rlock_destroy,
    .methods = rlock_methods,
    .tostring = rlock_tostring};
const kindinfo conc_condition_kind = {
    .kind = K_CONDITION,
    .tname = "conc.condition",
    .name = "condition",
    .shm = 1,
    .destroy = cond_destroy,
    .methods = cond_methods,
    .tostring = cond_tostring};
