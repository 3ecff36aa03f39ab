/*
** future.c
** Futures: the one-shot result of a call submitted to a pool, waitable
** from any thread of the process.
**
** DESIGN. A future is a refcounted slot: pending, then running (a worker
** has it), then settled once and for all, done (with the packed values
** of the call) or failed (with the packed error value). Whoever settles
** it (the pool's manager, in its own thread) stores the packed values
** and wakes every waiter under the future's lock; waiters (result, wait,
** conc.select) enlist a select node under the same lock, as they do with
** a worker's end (worker.c), so a waiter that delisted itself can never be
** touched by a late settle. Reading the result decodes the stored bytes
** without consuming them: any thread may ask again and gets the same
** values, or the same error raised. Settling twice is refused (the
** second settler learns that it lost), so a result that races with a
** terminate, or with a cancel, settles the future once. A future is
** pinned to its process: a forked child has no manager to settle it.
** Its lock is never taken in a forked child (pinned objects refuse every
** use there), so it need not be in the fork registry.
*/

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "modules.h"

enum { F_PENDING, F_RUNNING, F_DONE, F_FAILED, F_CANCELLED };

static const char *const state_names[] = {"pending", "running", "done",
                                          "failed", "cancelled"};

typedef struct future {
  cobj obj;
  int64_t id;
  pthread_mutex_t mu;          /* guards value and waiters, state changes */
  _Atomic int state;           /* written under mu, read without */
  msg *value;                  /* done: the values; failed: the error */
  selnode *waiters;
  uint64_t seq;                /* settled as the seq-th (as_completed) */
} future;

static _Atomic uint64_t settles;     /* futures settled so far */

static void future_destroy(cobj *o) {
  future *f = (future *)o;
  conc_msg_free(f->value);
  pthread_mutex_destroy(&f->mu);
  free(f);
}

cobj *conc_future_make(void) {
  static _Atomic int64_t next = 1;
  future *f = calloc(1, sizeof *f);
  if (f == NULL) return NULL;
  conc_obj_init(&f->obj, K_FUTURE);
  f->id = atomic_fetch_add(&next, 1);
  pthread_mutex_init(&f->mu, NULL);
  atomic_init(&f->state, F_PENDING);
  return &f->obj;
}

static int settled(int st) {
  return st >= F_DONE;
}

/* Settles f with 'value' (taken over; may be NULL), waking every waiter;
** 0 if it was settled already (value freed then). */
int conc_future_settle(cobj *o, int ok, msg *value) {
  future *f = (future *)o;
  pthread_mutex_lock(&f->mu);
  if (settled(atomic_load(&f->state))) {
    pthread_mutex_unlock(&f->mu);
    conc_msg_free(value);
    return 0;
  }
  f->value = value;
  f->seq = atomic_fetch_add(&settles, 1) + 1;
  atomic_store_explicit(&f->state, ok ? F_DONE : F_FAILED,
                        memory_order_release);
  conc_selq_wake_all(&f->waiters, SEL_SELF);
  pthread_mutex_unlock(&f->mu);
  return 1;
}

static future *check_future(lua_State *L, int arg) {
  return (future *)conc_obj_check(L, arg, K_FUTURE);
}

/* ------------------------------------------------------------ waiting */

static int fut_sel_try(cobj *o, selnode *n) {
  future *f = (future *)o;
  pthread_mutex_lock(&f->mu);
  if (settled(atomic_load(&f->state))) {
    if (conc_sel_claim(n->sw, n->index)) n->result = SEL_SELF;
    pthread_mutex_unlock(&f->mu);
    return 1;
  }
  conc_selq_push(&f->waiters, n);
  pthread_mutex_unlock(&f->mu);
  return 0;
}

static void fut_sel_delist(cobj *o, selnode *n) {
  future *f = (future *)o;
  pthread_mutex_lock(&f->mu);
  if (n->linked) conc_selq_remove(&f->waiters, n);
  pthread_mutex_unlock(&f->mu);
}

/* Waits until f is settled or the deadline passes: 1 settled, 0 not;
** raises the stop request of cs (cancel, Ctrl-C). */
static int fut_await(lua_State *L, cstate *cs, future *f, double seconds) {
  selwait sw;
  selnode n;
  deadline d;
  const char *why = NULL;
  if (settled(atomic_load_explicit(&f->state, memory_order_acquire))) return 1;
  if (seconds == 0) return 0;
  conc_waiter_init(&sw, &n, &cs->park);
  if (fut_sel_try(&f->obj, &n)) return 1;
  conc_deadline_in(&d, seconds);
  conc_cs_waiting_obj(cs, "result", &f->obj);
  conc_wait_until(&cs->park, cs, &d, conc_waiter_won, &sw, &why);
  conc_cs_waiting(cs, NULL);
  fut_sel_delist(&f->obj, &n);
  if (atomic_load(&sw.won)) return 1;
  if (why) conc_cs_raisestop(L, cs, why);
  return 0;
}

/* Pushes the stored values (done) or error value (failed). */
static int fut_push_value(lua_State *L, cstate *cs, future *f) {
  char err[160];
  int k;
  if (f->value == NULL) return 0;
  k = conc_marshal_decode(L, cs, f->value->data, f->value->n, f->value->refs,
                     f->value->nrefs, err, sizeof err);
  if (k < 0) return luaL_error(L, "%s", err);
  return k;
}

static int fut_result(lua_State *L) {
  cstate *cs = conc_cs(L);
  future *f = check_future(L, 1);
  double t = conc_opttimeout(L, 2);
  int st, k;
  if (!fut_await(L, cs, f, t)) return luaL_error(L, "timeout");
  lua_settop(L, 1);
  st = atomic_load_explicit(&f->state, memory_order_acquire);
  if (st == F_CANCELLED) {
    lua_pushliteral(L, "cancelled");
    return lua_error(L);
  }
  k = fut_push_value(L, cs, f);
  if (st == F_DONE) return k;
  if (k == 0) lua_pushnil(L);
  lua_settop(L, 2);                    /* the error value */
  return lua_error(L);
}

static int fut_wait(lua_State *L) {
  cstate *cs = conc_cs(L);
  future *f = check_future(L, 1);
  lua_pushboolean(L, fut_await(L, cs, f, conc_opttimeout(L, 2)));
  return 1;
}

static int fut_done(lua_State *L) {
  future *f = check_future(L, 1);
  lua_pushboolean(L, settled(atomic_load(&f->state)));
  return 1;
}

/* f:cancel() -> true if it had not started: it never will, and result
** raises "cancelled"; false once it runs or is settled. */
static int fut_cancel(lua_State *L) {
  future *f = check_future(L, 1);
  int expect = F_PENDING, ok;
  pthread_mutex_lock(&f->mu);
  ok = atomic_compare_exchange_strong(&f->state, &expect, F_CANCELLED);
  if (ok) {
    f->seq = atomic_fetch_add(&settles, 1) + 1;
    conc_selq_wake_all(&f->waiters, SEL_SELF);
  }
  pthread_mutex_unlock(&f->mu);
  lua_pushboolean(L, ok);
  return 1;
}

static int fut_cancelled(lua_State *L) {
  future *f = check_future(L, 1);
  lua_pushboolean(L, atomic_load(&f->state) == F_CANCELLED);
  return 1;
}

/* f:error([seconds]) -> the error value of a failed future; nil for one
** that is done or cancelled; raises timeout like result. */
static int fut_error(lua_State *L) {
  cstate *cs = conc_cs(L);
  future *f = check_future(L, 1);
  double t = conc_opttimeout(L, 2);
  if (!fut_await(L, cs, f, t)) return luaL_error(L, "timeout");
  lua_settop(L, 1);
  if (atomic_load_explicit(&f->state, memory_order_acquire) != F_FAILED ||
      fut_push_value(L, cs, f) == 0)
    lua_pushnil(L);
  lua_settop(L, 2);
  return 1;
}

/* ------------------------------------------------------------ the pool's side
 */

/* kit.start(f) -> true if it was pending (it is running now). */
static int fut_start(lua_State *L) {
  future *f = check_future(L, 1);
  int expect = F_PENDING, ok;
  pthread_mutex_lock(&f->mu);
  ok = atomic_compare_exchange_strong(&f->state, &expect, F_RUNNING);
  pthread_mutex_unlock(&f->mu);
  lua_pushboolean(L, ok);
  return 1;
}

/* kit.settle(f, ok, packed) -> true, or false if it was settled already. */
static int fut_settle(lua_State *L) {
  future *f = check_future(L, 1);
  int ok = lua_toboolean(L, 2);
  msg *m = lua_isnoneornil(L, 3) ? NULL : conc_parcel_tomsg(L, 3);
  lua_pushboolean(L, conc_future_settle(&f->obj, ok, m));
  return 1;
}

static int fut_tostring(lua_State *L) {
  future *f = check_future(L, 1);
  lua_pushfstring(L, "<future %s>", state_names[atomic_load(&f->state)]);
  return 1;
}

lua_Integer conc_future_id(cobj *o) {
  return (lua_Integer)((future *)o)->id;
}

/* kit.isfuture(v) -> true if v is a future of this process; else false
** and why not. */
static int fut_is(lua_State *L) {
  cobj *o = conc_obj_test(L, conc_cs(L), 1);
  char what[64];
  if (o == NULL || o->kind != K_FUTURE) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "is not a future");
    return 2;
  }
  if (conc_obj_foreign(o, what, sizeof what)) {
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "is %s, which belongs to another process", what);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

typedef struct doneat {
  lua_Integer index;
  uint64_t seq;
} doneat;

static int by_seq(const void *a, const void *b) {
  uint64_t x = ((const doneat *)a)->seq, y = ((const doneat *)b)->seq;
  return x < y ? -1 : x > y;
}

/* kit.settled(list) -> the indexes of the futures of the list that are
** settled, in the order they were (a list, maybe empty). Other values
** of the list are skipped. */
static int fut_settled(lua_State *L) {
  cstate *cs = conc_cs(L);
  lua_Integer n = luaL_len(L, 1), k = 0;
  doneat *v;
  char what[64];
  luaL_argcheck(L, n >= 0 && n <= 10000000, 1, "too many futures");
  v = lua_newuserdatauv(L, sizeof *v * (size_t)(n ? n : 1), 0);  /* GC'd */
  for (lua_Integer i = 1; i <= n; i++) {
    future *f;
    lua_rawgeti(L, 1, i);
    f = (future *)conc_obj_test(L, cs, -1);
    lua_pop(L, 1);
    if (f == NULL || f->obj.kind != K_FUTURE) continue;
    if (conc_obj_foreign(&f->obj, what,
                         sizeof what)) { /* its lock is not ours */
      lua_pushfstring(L, "%s belongs to another process", what);
      return lua_error(L);
    }
    pthread_mutex_lock(&f->mu);
    if (settled(atomic_load(&f->state))) {
      v[k].index = i;
      v[k].seq = f->seq;
      k++;
    }
    pthread_mutex_unlock(&f->mu);
  }
  qsort(v, (size_t)k, sizeof *v, by_seq);
  lua_createtable(L, (int)k, 0);
  for (lua_Integer i = 0; i < k; i++) {
    lua_pushinteger(L, v[i].index);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* kit.future() -> a new pending future. */
int conc_future_new(lua_State *L) {
  cstate *cs = conc_cs(L);
  cobj *f = conc_future_make();
  if (f == NULL) return luaL_error(L, "not enough memory");
  conc_obj_push(L, cs, f);
  conc_obj_release(f);
  return 1;
}

const luaL_Reg conc_future_funcs[] = {
    {"future", conc_future_new}, {"isfuture", fut_is}, {"settled", fut_settled},
    {"start", fut_start},   {"settle", fut_settle}, {NULL, NULL}};

static const luaL_Reg fut_methods[] = {
    {"result", fut_result}, {"wait", fut_wait}, {"done", fut_done},
    {"cancel", fut_cancel}, {"cancelled", fut_cancelled},
    {"error", fut_error},   {NULL, NULL}};

const kindinfo conc_future_kind = {
    .kind = K_FUTURE,
    .tname = "conc.future",
    .name = "future",
    .local = 1,
    .destroy = future_destroy,
    .methods = fut_methods,
    .tostring = fut_tostring,
    .sel_try = fut_sel_try,
    .sel_delist = fut_sel_delist,
    .pinned = 1,
    .id = conc_future_id};
