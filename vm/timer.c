/*
** timer.c
** conc.timer: an object that becomes ready once some seconds have
** passed, and, given a function, runs it on a daemon thread then
** (Python's threading.Timer).
**
** DESIGN. A pending timer costs no thread: one service thread per
** process keeps every pending timer in a binary heap ordered by deadline
** and sleeps on its parker until the earliest one, or until a new timer
** comes first. When a timer's time comes the service marks it fired and
** wakes its waiters (wait, conc.select: their nodes are enlisted on the
** timer, waitq.c's protocol), all under the service's one lock, which
** guards the heap and every timer's state and waiters; it then starts
** the timer's function, if any, as a daemon thread of the runtime that
** made it (thread.c's conc_thread_launch), outside that lock. The heap
** holds a reference to each pending timer, so a timer whose handles were
** collected still fires its function; a cancel takes it off the heap at
** once (and a waiter or select then gets false or "closed"). A timer is
** pinned to its process. In a forked child the parent's service thread
** does not exist: the first timer made there starts the child's own,
** with an empty heap. The service thread starts with the first timer and
** ends when none is pending; the next timer starts it again.
*/

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "modules.h"

enum { T_PENDING, T_FIRED, T_CANCELLED };

static const char *const state_names[] = {"pending", "fired", "cancelled"};

typedef struct timer {
  cobj obj;
  int64_t id;
  deadline at;
  int state;                   /* T_*: under the service's lock */
  int heapi;                   /* its place in the heap, or -1 */
  selnode *waiters;
  msg *call;                   /* fn and its arguments, or NULL */
  paths *paths;                /* the paths its thread inherits */
  rt *rt;                      /* whose daemon runs call */
} timer;

static struct {
  pthread_mutex_t mu;
  objlink link;
  parker park;                 /* the service sleeps here */
  timer **heap;
  size_t n, cap;
  pid_t pid;                   /* the process the service runs in, or 0 */
} svc = {.mu = PTHREAD_MUTEX_INITIALIZER};

static pthread_once_t svc_once = PTHREAD_ONCE_INIT;

static void svc_init(void) {
  conc_fork_register(&svc.link, &svc.mu);
  conc_park_init(&svc.park);
}

/* ------------------------------------------------------------ the heap */

static int before(const timer *a, const timer *b) {
  if (a->at.at.tv_sec != b->at.at.tv_sec)
    return a->at.at.tv_sec < b->at.at.tv_sec;
  return a->at.at.tv_nsec < b->at.at.tv_nsec;
}

static void heap_set(size_t i, timer *t) {
  svc.heap[i] = t;
  t->heapi = (int)i;
}

static void heap_up(size_t i) {
  timer *t = svc.heap[i];
  while (i > 0 && before(t, svc.heap[(i - 1) / 2])) {
    heap_set(i, svc.heap[(i - 1) / 2]);
    i = (i - 1) / 2;
  }
  heap_set(i, t);
}

static void heap_down(size_t i) {
  timer *t = svc.heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= svc.n) break;
    if (c + 1 < svc.n && before(svc.heap[c + 1], svc.heap[c])) c++;
    if (!before(svc.heap[c], t)) break;
    heap_set(i, svc.heap[c]);
    i = c;
  }
  heap_set(i, t);
}

static void heap_remove(timer *t) {
  size_t i = (size_t)t->heapi;
  timer *last = svc.heap[--svc.n];
  t->heapi = -1;
  if (i == svc.n) return;
  heap_set(i, last);
  heap_down(i);
  heap_up((size_t)last->heapi);
}

/* ------------------------------------------------------------ the service */

/* Wakes the waiters of t, fired (they get true) or cancelled (false,
** "closed"); under svc.mu. */
static void wake_waiters(timer *t) {
  if (t->state == T_FIRED) {
    conc_selq_wake_all(&t->waiters, SEL_DONE);
  } else {
    selnode *n;
    while ((n = t->waiters) != NULL) {
      conc_selq_remove(&t->waiters, n);
      conc_sel_deliver(n, SEL_CLOSED);
    }
  }
}

/* Starts the function of a fired timer, unless its runtime is closed. */
static void run_call(timer *t) {
  msg *m = t->call;
  paths *p = t->paths;
  int closed;
  t->call = NULL;
  t->paths = NULL;
  pthread_mutex_lock(&t->rt->mu);
  closed = t->rt->closed;
  pthread_mutex_unlock(&t->rt->mu);
  if (closed) {
    conc_msg_free(m);
    conc_paths_release(p);
    return;
  }
  conc_thread_launch(t->rt, "timer", m, p);
}

static void *svc_main(void *arg) {
  sigset_t all;
  CONC_UNUSED(arg);
  sigfillset(&all);                /* signals are for the Lua threads */
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  for (;;) {
    uint32_t seen = conc_park_seq(&svc.park);
    timer *due = NULL;
    deadline d = {.forever = 1};
    pthread_mutex_lock(&svc.mu);
    if (svc.n > 0) {
      timer *t = svc.heap[0];
      if (conc_deadline_passed(&t->at)) {
        heap_remove(t);
        t->state = T_FIRED;
        wake_waiters(t);
        due = t;                 /* the heap's reference, ours now */
      } else {
        d = t->at;
      }
    } else {                     /* none pending: no thread either */
      svc.pid = 0;
      pthread_mutex_unlock(&svc.mu);
      return NULL;
    }
    pthread_mutex_unlock(&svc.mu);
    if (due) {
      if (due->call) run_call(due);      /* its thread is live first */
      atomic_fetch_sub(&conc_wakers, 1);
      conc_obj_release(&due->obj);
      continue;
    }
    conc_park_sleep(&svc.park, seen, &d);
  }
  return NULL;
}

/* Puts t (with a reference for the heap) on the heap, starting the
** service if this process has none yet; 0, or an errno. */
static int svc_add(timer *t) {
  int e = 0, first;
  pthread_once(&svc_once, svc_init);
  pthread_mutex_lock(&svc.mu);
  if (svc.pid != conc_getpid()) {  /* none running, or a fork's copy's */
    pthread_t tid;
    pthread_attr_t attr;
    svc.n = 0;                        /* the parent's timers are not ours */
    atomic_store(&conc_wakers, 0);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    e = pthread_create(&tid, &attr, svc_main, NULL);
    pthread_attr_destroy(&attr);
    if (e == 0) svc.pid = conc_getpid();
  }
  if (e == 0 && svc.n == svc.cap) {
    size_t cap = svc.cap ? svc.cap * 2 : 64;
    timer **h = realloc(svc.heap, sizeof *h * cap);
    if (h == NULL) e = ENOMEM;
    else {
      svc.heap = h;
      svc.cap = cap;
    }
  }
  if (e == 0) {
    atomic_fetch_add(&conc_wakers, 1);   /* a deadlock is none meanwhile */
    svc.n++;
    heap_set(svc.n - 1, t);
    heap_up(svc.n - 1);
  }
  first = e == 0 && t->heapi == 0;
  pthread_mutex_unlock(&svc.mu);
  if (first) conc_park_wake(&svc.park);   /* it sleeps until a later one */
  return e;
}

/* ------------------------------------------------------------ Lua side */

static void timer_destroy(cobj *o) {
  timer *t = (timer *)o;
  conc_msg_free(t->call);
  conc_paths_release(t->paths);
  if (t->rt) conc_rt_release(t->rt);
  free(t);
}

static timer *check_timer(lua_State *L) {
  return (timer *)conc_obj_check(L, 1, K_TIMER);
}

/* conc.timer(seconds [, fn, ...]) */
int conc_timer_new(lua_State *L) {
  static _Atomic int64_t next = 1;
  cstate *cs = conc_cs(L);
  lua_Number s = luaL_checknumber(L, 1);
  timer *t;
  msg *m = NULL;
  int e;
  luaL_argcheck(L, s >= 0 && s == s, 1, "non-negative number expected");
  luaL_argcheck(L, s < 1e9, 1, "too long");
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TFUNCTION);
    m = conc_msg_encode(L, cs, 2, lua_gettop(L) - 1, "timer");
  } else if (lua_gettop(L) > 2) {
    luaL_checktype(L, 2, LUA_TFUNCTION);      /* arguments, no function */
  }
  t = calloc(1, sizeof *t);
  if (t == NULL) {
    conc_msg_free(m);
    return conc_nomem(L);
  }
  conc_obj_init(&t->obj, K_TIMER);
  t->id = atomic_fetch_add(&next, 1);
  t->heapi = -1;
  t->call = m;
  conc_deadline_in(&t->at, (double)s);
  if (m) {
    conc_thread_cancel_install();
    t->paths = conc_thread_paths(L);
    t->rt = cs->rt;
    conc_rt_retain(t->rt);
  }
  conc_obj_push(L, cs, &t->obj);          /* the handle's reference */
  conc_obj_retain(&t->obj);               /* the heap's */
  e = svc_add(t);
  if (e != 0) {                           /* the handle keeps the only one */
    t->state = T_CANCELLED;
    conc_obj_release(&t->obj);
    conc_obj_release(&t->obj);
    return luaL_error(L, "cannot start the timer service: %s", strerror(e));
  }
  conc_obj_release(&t->obj);              /* conc_obj_init's */
  return 1;
}

static int tm_sel_try(cobj *o, selnode *n) {
  timer *t = (timer *)o;
  int r = 1;
  pthread_mutex_lock(&svc.mu);
  if (t->state == T_FIRED) {
    if (conc_sel_claim(n->sw, n->index)) n->result = SEL_DONE;
  } else if (t->state == T_CANCELLED) {
    n->result = SEL_CLOSED;
    r = 0;
  } else {
    conc_selq_push(&t->waiters, n);
    r = 0;
  }
  pthread_mutex_unlock(&svc.mu);
  return r;
}

static void tm_sel_delist(cobj *o, selnode *n) {
  timer *t = (timer *)o;
  pthread_mutex_lock(&svc.mu);
  if (n->linked) conc_selq_remove(&t->waiters, n);
  pthread_mutex_unlock(&svc.mu);
}

static int node_settled(void *arg) {
  selnode *n = arg;
  return atomic_load(&n->sw->won) != 0 || atomic_load(&n->result) != 0;
}

/* tm:wait([seconds]) -> true once fired; false on timeout, or if it was
** cancelled. */
static int tm_wait(lua_State *L) {
  cstate *cs = conc_cs(L);
  timer *t = check_timer(L);
  double s = conc_opttimeout(L, 2);
  selwait sw;
  selnode n;
  deadline d;
  const char *why = NULL;
  int won;
  conc_waiter_init(&sw, &n, &cs->park);
  if (tm_sel_try(&t->obj, &n)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (n.result == SEL_CLOSED || s == 0) {
    tm_sel_delist(&t->obj, &n);
    lua_pushboolean(L, 0);
    return 1;
  }
  conc_deadline_in(&d, s);
  conc_cs_waiting(cs, "timer");
  conc_wait_until(&cs->park, cs, &d, node_settled, &n, &why);
  conc_cs_waiting(cs, NULL);
  tm_sel_delist(&t->obj, &n);
  won = atomic_load(&sw.won) != 0;
  if (!won && why) return conc_cs_raisestop(L, cs, why);
  lua_pushboolean(L, won);
  return 1;
}

/* tm:cancel() -> true if it was pending: it never fires now. */
static int tm_cancel(lua_State *L) {
  timer *t = check_timer(L);
  int was = 0;
  msg *m = NULL;
  paths *p = NULL;
  pthread_mutex_lock(&svc.mu);
  if (t->state == T_PENDING) {
    was = 1;
    t->state = T_CANCELLED;
    if (t->heapi >= 0) {
      heap_remove(t);
      atomic_fetch_sub(&conc_wakers, 1);
    }
    wake_waiters(t);
    m = t->call;
    p = t->paths;
    t->call = NULL;
    t->paths = NULL;
  }
  pthread_mutex_unlock(&svc.mu);
  conc_msg_free(m);
  conc_paths_release(p);
  if (was) conc_obj_release(&t->obj);     /* the heap's reference */
  lua_pushboolean(L, was);
  return 1;
}

static int tm_state(lua_State *L) {
  timer *t = check_timer(L);
  int st;
  pthread_mutex_lock(&svc.mu);
  st = t->state;
  pthread_mutex_unlock(&svc.mu);
  lua_pushstring(L, state_names[st]);
  return 1;
}

static int tm_tostring(lua_State *L) {
  timer *t = check_timer(L);
  int st;
  pthread_mutex_lock(&svc.mu);
  st = t->state;
  pthread_mutex_unlock(&svc.mu);
  lua_pushfstring(L, "<timer %s>", state_names[st]);
  return 1;
}

static lua_Integer timer_id(cobj *o) {
  return (lua_Integer)((timer *)o)->id;
}

/* How many timers are pending in this process (conc._stats). */
lua_Integer conc_timer_pending(void) {
  size_t n;
  pthread_once(&svc_once, svc_init);
  pthread_mutex_lock(&svc.mu);
  n = svc.pid == conc_getpid() ? svc.n : 0;
  pthread_mutex_unlock(&svc.mu);
  return (lua_Integer)n;
}

static const luaL_Reg tm_methods[] = {
    {"wait", tm_wait}, {"cancel", tm_cancel}, {"state", tm_state},
    {NULL, NULL}};

const kindinfo conc_timer_kind = {
    .kind = K_TIMER,
    .tname = "conc.timer",
    .name = "timer",
    .local = 1,
    .pinned = 1,
    .id = timer_id,
    .destroy = timer_destroy,
    .methods = tm_methods,
    .tostring = tm_tostring,
    .sel_try = tm_sel_try,
    .sel_delist = tm_sel_delist};
