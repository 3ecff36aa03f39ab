/*
** runtime.c
** Runtimes and per-state contexts: what a state made by conclua carries.
**
** DESIGN. A runtime (rt) belongs to one host state and is shared by every
** worker spawned from it, directly or not: it keeps the list of workers
** (for conc.workers() and the wait at exit) and the host's state hooks.
** Each Lua state the runtime touches has a cstate: its runtime, the worker
** it runs (none for the host), the parker its blocking calls sleep on, and
** the flags a canceller or Ctrl-C raise. A conc C function finds it in
** one load: upvalue 1 of every conc function of a host state; in a worker
** state the functions are light and the cstate is in the state's extra
** space (conc_cs).
** A worker's state starts lazy: no library is open, _G and the string
** metatable only have an __index that opens them all on first use. A
** worker that never touches a global (one blocked on an event, one that
** returns a value) costs a bare lua_State; one that does pays for
** luaL_openlibs once, at that first touch.
*/

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

const char conc_libskey = 'l';
static const char CS_KEY = 'c';
static const char LAZYMT_KEY = 'z';

/* ------------------------------------------------------------ runtime */

/* Every runtime of the process, for the wait at exit. */
/* ------------------------------------------------------------ this thread */

CONC_TLS lua_State *volatile conc_tls_L;
CONC_TLS volatile sig_atomic_t conc_tls_unwinding;
void (*conc_opener)(lua_State *L, cstate *cs);

_Atomic int conc_wakers;

int conc_raise_cancel(lua_State *L) {
  conc_tls_unwinding = 1;
  lua_sethook(L, NULL, 0, 0);
  lua_pushliteral(L, "cancelled");     /* no position: the value join raises */
  return lua_error(L);
}

/* ------------------------------------------------------------ runtimes */

static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;
static rt *all_head;
static objlink all_link;
static pthread_once_t all_once = PTHREAD_ONCE_INIT;

static void all_init(void) {
  conc_fork_register(&all_link, &all_mu);
}

rt *conc_rt_new(void) {
  rt *r;
  /* the list lock is taken before runtime locks (conc_rt_exit_all), so the
  ** fork must lock it first too: it registers before any runtime */
  pthread_once(&all_once, all_init);
  conc_trace_init();
  r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  atomic_init(&r->refs, 1);
  atomic_init(&r->nlive, 1);                 /* its main state */
  pthread_mutex_init(&r->mu, NULL);
  r->pid = getpid();
  conc_fork_register(&r->link, &r->mu);
  pthread_mutex_lock(&all_mu);
  r->allnext = all_head;
  all_head = r;
  pthread_mutex_unlock(&all_mu);
  return r;
}

void conc_rt_retain(rt *r) {
  atomic_fetch_add(&r->refs, 1);
}

void conc_rt_release(rt *r) {
  if (atomic_fetch_sub(&r->refs, 1) != 1) return;
  pthread_mutex_lock(&all_mu);
  for (rt **p = &all_head; *p; p = &(*p)->allnext)
    if (*p == r) {
      *p = r->allnext;
      break;
    }
  pthread_mutex_unlock(&all_mu);
  conc_fork_unregister(&r->link);
  pthread_mutex_destroy(&r->mu);
  conc_paths_release(r->paths);
  free(r->hooks);
  while (r->luahooks) {
    msg *m = r->luahooks;
    r->luahooks = m->next;
    conc_msg_free(m);
  }
  free(r);
}

rt *conc_rt_take_unexited(void) {
  rt *r, *found = NULL;
  pthread_once(&all_once, all_init);
  pthread_mutex_lock(&all_mu);
  for (r = all_head; r; r = r->allnext) {
    int skip;
    pthread_mutex_lock(&r->mu);
    skip = r->closed || r->exited || r->pid != conc_getpid();
    if (!skip) r->exited = 1;
    pthread_mutex_unlock(&r->mu);
    if (!skip) {
      found = r;
      conc_rt_retain(r);
      break;
    }
  }
  pthread_mutex_unlock(&all_mu);
  return found;
}

/* How many runtimes of this process are open. */
int conc_rt_count(void) {
  int n = 0;
  pthread_once(&all_once, all_init);
  pthread_mutex_lock(&all_mu);
  for (rt *r = all_head; r; r = r->allnext)
    if (r->pid == conc_getpid() && !r->closed) n++;
  pthread_mutex_unlock(&all_mu);
  return n;
}

int64_t conc_rt_nextid(void) {
  static _Atomic int64_t next = 1;
  return atomic_fetch_add(&next, 1);
}

/* ------------------------------------------------------------ cstate */

void conc_cs_init(cstate *cs, rt *r, struct worker *self) {
  memset(cs, 0, sizeof *cs);
  cs->rt = r;
  if (r) conc_rt_retain(r);
  cs->self = self;
  cs->ismain = self == NULL;
  conc_park_init(&cs->park);
  pthread_mutex_init(&cs->mu, NULL);
  atomic_init(&cs->blocked_word, NULL);
  atomic_init(&cs->interrupt, 0);
  atomic_init(&cs->waiting_on, NULL);
  atomic_init(&cs->wait_kind, -1);
  conc_mbuf_init(&cs->scratch);
}

cstate *conc_cs_new(rt *r, struct worker *self) {
  cstate *cs = malloc(sizeof *cs);
  if (cs) conc_cs_init(cs, r, self);
  return cs;
}

/* Releases what cs owns; the state it served is closed already. */
void conc_cs_fini(cstate *cs) {
  free(atomic_load(&cs->deadmsg));
  conc_msg_free_pending(cs);
  conc_mbuf_free(&cs->scratch);
  conc_park_destroy(&cs->park);
  pthread_mutex_destroy(&cs->mu);
  conc_paths_release(cs->paths);
  if (cs->rt) conc_rt_release(cs->rt);
}

void conc_cs_free(cstate *cs) {
  if (cs == NULL) return;
  conc_cs_fini(cs);
  free(cs);
}

/* ------------------------------------------------------------ paths */

/* package.path and cpath as a worker inherits them. A runtime keeps the
** last pair it handed out, so a thousand workers spawned from one state
** share one copy. */
paths *conc_paths_get(rt *r, const char *path, const char *cpath) {
  paths *p;
  pthread_mutex_lock(&r->mu);
  p = r->paths;
  if (p && ((p->path == NULL) == (path == NULL)) &&
      (path == NULL || strcmp(p->path, path) == 0) &&
      ((p->cpath == NULL) == (cpath == NULL)) &&
      (cpath == NULL || strcmp(p->cpath, cpath) == 0)) {
    atomic_fetch_add(&p->refs, 1);
    pthread_mutex_unlock(&r->mu);
    return p;
  }
  pthread_mutex_unlock(&r->mu);
  p = malloc(sizeof *p);
  if (p == NULL) return NULL;
  atomic_init(&p->refs, 2);                 /* the runtime's and ours */
  p->path = path ? strdup(path) : NULL;
  p->cpath = cpath ? strdup(cpath) : NULL;
  pthread_mutex_lock(&r->mu);
  {
    paths *old = r->paths;
    r->paths = p;
    pthread_mutex_unlock(&r->mu);
    conc_paths_release(old);
  }
  return p;
}

void conc_paths_release(paths *p) {
  if (p == NULL || atomic_fetch_sub(&p->refs, 1) != 1) return;
  free(p->path);
  free(p->cpath);
  free(p);
}

void conc_cs_setfuncs(lua_State *L, cstate *cs, const luaL_Reg *l) {
  for (; l->name; l++) {
    if (l->func == NULL) continue;
    if (cs && cs->light) {
      lua_pushcfunction(L, l->func);
    } else {
      lua_pushlightuserdata(L, cs);
      lua_pushcclosure(L, l->func, 1);
    }
    lua_setfield(L, -2, l->name);
  }
}

static int tostring_k(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* Pushes a message for the error value at idx (what tostring gives) and
** returns it. A __tostring that raises or returns no string gives
** "(error object is a T value)": this runs where no pcall is left to
** catch an error (a worker's last step, a forked child's). */
const char *conc_errmsg(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, tostring_k);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
  }
  return lua_tostring(L, -1);
}

/* Pushes conc function f of state cs (a closure, or light). */
void conc_cs_pushfunc(lua_State *L, cstate *cs, lua_CFunction f) {
  if (cs->light) {
    lua_pushcfunction(L, f);
  } else {
    lua_pushlightuserdata(L, cs);
    lua_pushcclosure(L, f, 1);
  }
}

cstate *conc_cs_of(lua_State *L) {
  cstate *cs;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &CS_KEY);
  cs = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return cs;
}

/* Records cs as the context of L: a light userdata for worker states
** (the thread frees cs after lua_close), the box itself for hosts. */
void conc_state_bind(lua_State *L, cstate *cs) {
  cs->L = L;
  if (cs->light) *(cstate **)lua_getextraspace(L) = cs;
  lua_pushlightuserdata(L, cs);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &CS_KEY);
}

const char conc_why_cancelled[] = "cancelled";
const char conc_why_interrupted[] = "interrupted!";
const char conc_why_deadlock[] = "deadlock";

/* ------------------------------------------------------------ deadlock */

int (*conc_deadlock_check)(cstate *cs);
int conc_is_child;

void conc_cs_stuck(cstate *cs, int on) {
  rt *r = cs->rt;
  if (r == NULL) return;
  atomic_store(&cs->sleep_word, NULL);
  if (on) {
    atomic_store(&cs->stuck, 1);
    if (cs->ismain) atomic_store(&r->main_stuck, cs);
    atomic_fetch_add(&r->nstuck, 1);
  } else {
    atomic_fetch_sub(&r->nstuck, 1);
    if (cs->ismain) {
      /* a thread that read main_stuck may still wake it: the main state
      ** may end (its cstate freed) once it is out of this wait */
      atomic_store(&r->main_stuck, NULL);
      while (atomic_load(&r->main_users) > 0) sched_yield();
    }
    atomic_store(&cs->stuck, 0);
  }
  atomic_fetch_add(&r->stuck_epoch, 1);
}

/* The main state while it is stuck, kept from leaving its wait until
** main_unuse: NULL when it is not stuck. */
static cstate *main_use(rt *r) {
  cstate *m;
  atomic_fetch_add(&r->main_users, 1);
  if ((m = atomic_load(&r->main_stuck)) == NULL)
    atomic_fetch_sub(&r->main_users, 1);
  return m;
}

static void main_unuse(rt *r) {
  atomic_fetch_sub(&r->main_users, 1);
}

void conc_rt_live_drop(rt *r) {
  cstate *m;
  atomic_fetch_sub(&r->nlive, 1);
  /* the count may be full now, with everyone asleep: the main state
  ** looks again */
  if (atomic_load(&r->nstuck) >= atomic_load(&r->nlive) &&
      (m = main_use(r)) != NULL) {
    conc_cs_wake(m);
    main_unuse(r);
  }
}

int conc_cs_sleeps(cstate *cs, _Atomic uint32_t *word, uint32_t val) {
  rt *r = cs->rt;
  cstate *m;
  atomic_store(&cs->sleep_val, val);
  atomic_store(&cs->sleep_word, word);
  if (atomic_load(&r->nstuck) < atomic_load(&r->nlive)) return 0;
  /* the count is full: the last state to sleep looks */
  if (conc_deadlock_check == NULL || (m = main_use(r)) == NULL) return 0;
  if (m == cs) {                        /* the main state itself looks */
    main_unuse(r);
    return conc_deadlock_check(m);
  }
  if (conc_deadlock_check(m)) {
    atomic_store(&m->deadlocked, 1);    /* the main state raises it */
    conc_cs_wake(m);
  }
  main_unuse(r);
  return 0;
}

const char *conc_cs_stopreason(cstate *cs) {
  if (cs->stuck && atomic_load_explicit(&cs->deadlocked, memory_order_acquire))
    return conc_why_deadlock;
  if (cs->cancel && atomic_load_explicit(cs->cancel, memory_order_acquire))
    return conc_why_cancelled;
  if (atomic_load_explicit(&cs->interrupt, memory_order_acquire))
    return conc_why_interrupted;
  return NULL;
}

static void host_wait(cstate *cs, int on);
static void host_settle(cstate *cs);

int conc_cs_raisestop(lua_State *L, cstate *cs, const char *why) {
  if (why == conc_why_deadlock) {
    char *m = atomic_exchange(&cs->deadmsg, NULL);
    atomic_store(&cs->deadlocked, 0);
    lua_pushstring(L, m ? m : "deadlock");
    free(m);
    return luaL_error(L, "%s", lua_tostring(L, -1));
  }
  if (why == conc_why_interrupted) {
    atomic_store(&cs->interrupt, 0);
    lua_sethook(L, NULL, 0, 0);
    host_settle(cs);
    return luaL_error(L, "%s", why);
  }
  return conc_raise_cancel(L);   /* "cancelled", without a position */
}

/* Every blocking conc call says here when it starts and ends waiting: a
** host state's waits are where a host's Ctrl-C gets in (see Ctrl-C). */
static void set_waiting(cstate *cs, const char *what, int kind,
                        lua_Integer num) {
  if (what) {               /* only this thread writes: a seqlock's writer */
    uint32_t s = atomic_load_explicit(&cs->wait_seq, memory_order_relaxed);
    atomic_store_explicit(&cs->wait_seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&cs->wait_kind, kind, memory_order_relaxed);
    atomic_store_explicit(&cs->wait_num, num, memory_order_relaxed);
    atomic_store_explicit(&cs->wait_seq, s + 2, memory_order_release);
  }
  atomic_store_explicit(&cs->waiting_on, what, memory_order_release);
  if (conc_trace_on) {
    if (what) {
      char b[96];
      conc_trace_event('B', cs->trace_tid, "wait",
                       conc_cs_describe_wait(cs, b, sizeof b), NULL, 0);
    } else {
      conc_trace_event('E', cs->trace_tid, "wait", NULL, NULL, 0);
    }
  }
  if (cs->ishost && cs->self == NULL) host_wait(cs, what != NULL);
}

void conc_cs_waiting(cstate *cs, const char *what) {
  set_waiting(cs, what, -1, 0);
}

void conc_cs_waiting_obj(cstate *cs, const char *what, const cobj *o) {
  if (o) set_waiting(cs, what, o->kind, conc_obj_number(o));
  else set_waiting(cs, what, -1, 0);
}

const char *conc_cs_describe_wait(cstate *cs, char *buf, size_t n) {
  for (int tries = 0; tries < 100; tries++) {
    uint32_t s = atomic_load_explicit(&cs->wait_seq, memory_order_acquire);
    const char *what =
        atomic_load_explicit(&cs->waiting_on, memory_order_acquire);
    int kind = atomic_load_explicit(&cs->wait_kind, memory_order_relaxed);
    lua_Integer num = atomic_load_explicit(&cs->wait_num, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    if ((s & 1) || s != atomic_load_explicit(&cs->wait_seq,
                                             memory_order_relaxed))
      continue;                /* being changed: look again */
    if (what == NULL) return NULL;
    if (kind >= 0 && kind < K_NKINDS && conc_kinds[kind] &&
        strcmp(what, conc_kinds[kind]->name) == 0)   /* "event 2" */
      snprintf(buf, n, "%s %lld", what, (long long)num);
    else if (kind >= 0 && kind < K_NKINDS && conc_kinds[kind])
      snprintf(buf, n, "%s %s %lld", what, conc_kinds[kind]->name,
               (long long)num);
    else
      snprintf(buf, n, "%s", what);
    return buf;
  }
  return NULL;
}

void conc_cs_block_on(cstate *cs, _Atomic uint32_t *word, int shared) {
  pthread_mutex_lock(&cs->mu);
  cs->blocked_shared = shared;
  atomic_store(&cs->blocked_word, word);
  pthread_mutex_unlock(&cs->mu);
}

void conc_cs_unblock(cstate *cs) {
  pthread_mutex_lock(&cs->mu);
  atomic_store(&cs->blocked_word, NULL);
  pthread_mutex_unlock(&cs->mu);
}

/* Wakes the thread of cs out of any conc wait: its parker, or the shared
** word it sleeps on (bumped first: see wait.c). Not for signal handlers:
** they use cs_wake_signal. */
void conc_cs_wake(cstate *cs) {
  _Atomic uint32_t *w;
  pthread_mutex_lock(&cs->mu);
  w = atomic_load(&cs->blocked_word);
  if (w) {
    atomic_fetch_add(w, 1);
    conc_futex_wake(w, INT32_MAX, cs->blocked_shared);
  }
  conc_park_wake(&cs->park);
  pthread_mutex_unlock(&cs->mu);
}

/* The same from a signal handler running on the thread of cs itself:
** that thread cannot be inside conc_cs_block_on/conc_cs_unblock concurrently,
*and
** the object it sleeps on stays alive while it does. */
static void cs_wake_signal(cstate *cs) {
  _Atomic uint32_t *w = atomic_load(&cs->blocked_word);
  if (w) {
    atomic_fetch_add(w, 1);
    conc_futex_wake(w, INT32_MAX, cs->blocked_shared);
  }
  conc_park_wake(&cs->park);
}

/* ------------------------------------------------------------ lazy state */

static int lazy_global(lua_State *L) {          /* __index(_G, k) */
  cstate *cs = conc_cs_of(L);
  if (cs->lazy) conc_cs_materialize(L, cs);
  lua_settop(L, 2);
  lua_rawget(L, 1);
  return 1;
}

/* A string metamethod (an index like ("x"):upper(), or arithmetic like
** "10" + 1): open the libraries, then do what the real one does. */
static int lazy_strmeta(lua_State *L, const char *event) {
  cstate *cs = conc_cs_of(L);
  int n = lua_gettop(L);
  if (cs->lazy) conc_cs_materialize(L, cs);
  lua_pushliteral(L, "");
  if (!luaL_getmetafield(L, -1, event))
    return luaL_error(L, "string metamethod missing");
  lua_replace(L, -2);
  if (!lua_isfunction(L, -1)) {        /* __index is the string table */
    lua_pushvalue(L, 2);
    lua_gettable(L, -2);
    return 1;
  }
  lua_insert(L, 1);
  lua_call(L, n, 1);
  return 1;
}

/* One light function per event: nothing to allocate in the state. */
#define LAZY(ev) \
  static int lazy_##ev(lua_State *L) { return lazy_strmeta(L, "__" #ev); }
LAZY(index) LAZY(add) LAZY(sub) LAZY(mul) LAZY(div) LAZY(mod) LAZY(pow)
LAZY(unm) LAZY(idiv)

static const luaL_Reg strevents[] = {
    {"__index", lazy_index}, {"__add", lazy_add},   {"__sub", lazy_sub},
    {"__mul", lazy_mul},     {"__div", lazy_div},   {"__mod", lazy_mod},
    {"__pow", lazy_pow},     {"__unm", lazy_unm},   {"__idiv", lazy_idiv},
    {NULL, NULL}};

/* Makes L, a fresh state bound to cs, lazy: its libraries open on first
** use of a global or of a string method. */
void conc_state_make_lazy(lua_State *L, cstate *cs) {
  cs->lazy = 1;
  lua_pushglobaltable(L);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, lazy_global);
  lua_setfield(L, -2, "__index");
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &LAZYMT_KEY);
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
  lua_pushliteral(L, "");
  lua_createtable(L, 0, 9);
  luaL_setfuncs(L, strevents, 0);
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
}

/* Opens every library in a lazy state. Globals the worker set already
** win over the libraries' (a worker may define its own print first). */
void conc_cs_materialize(lua_State *L, cstate *cs) {
  int g, saved;
  if (!cs->lazy) return;
  cs->lazy = 0;
  luaL_checkstack(L, 8, NULL);
  lua_pushglobaltable(L);
  g = lua_gettop(L);
  if (lua_getmetatable(L, g)) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &LAZYMT_KEY);
    if (lua_rawequal(L, -1, -2)) {
      lua_pushnil(L);
      lua_setmetatable(L, g);
    }
    lua_pop(L, 2);
  }
  lua_newtable(L);
  saved = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, g)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, saved);
  }
  luaL_openlibs(L);
  conc_opener(L, cs);
  lua_pushnil(L);
  while (lua_next(L, saved)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, g);
  }
  lua_settop(L, g - 1);
}

/* Calls one hook (a hookent on the C stack of conc_state_run_hooks) with a
** clean stack. */
static int call_hook(lua_State *L) {
  hookent *e = lua_touserdata(L, 1);
  lua_settop(L, 0);
  e->fn(L, e->ud);
  return 0;
}

/* Runs the host's hooks in a new worker state, libraries open first so a
** hook finds what a host state has. Each hook runs under lua_pcall, so a
** hook that raises (out of memory, say) fails the worker and nothing
** else; the first such error is raised here once the hook has been
** counted out. While a hook runs, rt->hooks_running counts it: the host
** closing its state waits for that count to drop after clearing the
** list, so no hook (nor its 'ud') is used once lua_close returned. */
void conc_state_run_hooks(lua_State *L, cstate *cs) {
  rt *r = cs->rt;
  int any;
  pthread_mutex_lock(&r->mu);
  any = !r->closed && r->nhooks > 0;
  pthread_mutex_unlock(&r->mu);
  if (!any) return;                   /* the state stays lazy */
  conc_cs_materialize(L, cs);
  for (int i = 0;; i++) {
    hookent e;
    int st;
    pthread_mutex_lock(&r->mu);
    if (r->closed || i >= r->nhooks) {
      pthread_mutex_unlock(&r->mu);
      return;
    }
    e = r->hooks[i];
    r->hooks_running++;
    pthread_mutex_unlock(&r->mu);
    lua_pushcfunction(L, call_hook);
    lua_pushlightuserdata(L, &e);
    st = lua_pcall(L, 1, 0, 0);
    pthread_mutex_lock(&r->mu);
    r->hooks_running--;
    pthread_mutex_unlock(&r->mu);
    if (st != LUA_OK) lua_error(L);
  }
}

/* The host state closes: no hook starts from now on, and those running
** have returned when this does (the caller made sure no lock is held). */
void conc_rt_close_hooks(rt *r) {
  pthread_mutex_lock(&r->mu);
  r->closed = 1;
  r->nhooks = 0;
  while (r->hooks_running > 0 && r->pid == conc_getpid()) {
    struct timespec ts = {0, 1000000};
    pthread_mutex_unlock(&r->mu);
    nanosleep(&ts, NULL);
    pthread_mutex_lock(&r->mu);
  }
  pthread_mutex_unlock(&r->mu);
}

/* ------------------------------------------------------------ Ctrl-C
**
** Two ways for a Ctrl-C to reach a state's Lua code and conc waits.
** The conclua command names its state the target and arms its own
** handler (conc_interrupt_install): the handler sets the target's flag,
** wakes its wait and hooks its running code, which raises
** "interrupted!". Any other host (lua5.4 with conc.so, an embedder) gets
** no handler of conclua's: SIGINT stays whatever the host made it. A host
** that wants its Lua code stopped on Ctrl-C does what lua.c does, a
** handler of its own that sets a hook on its state; but the hook only
** fires when Lua code runs, never in a conc call that blocks. So, for
** the time such a call waits (conc_cs_waiting) and only when SIGINT has a
** handler of the host's, conclua wraps that handler: the wrapper calls
** it, and if it hooked the host's main state, also sets the state's flag
** and wakes the wait, which raises "interrupted!" and takes the hook off
** (it did what the hook would have done). When the wait ends the host's
** handler is put back, unless the host changed it meanwhile (lua.c's
** resets itself to SIG_DFL). A host with SIG_DFL or SIG_IGN, or whose
** handler does not hook its state, sees nothing change. */

static cstate *volatile sigint_cs;
static volatile sig_atomic_t sigint_seen;     /* Ctrl-C handled so far */

/* The dispositions that conc_interrupt_install replaced, innermost last
** (only the target's thread arms and disarms). */
#define SIGINT_NEST 8
static struct sigaction sigint_saved[SIGINT_NEST];
static int sigint_depth;

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  cstate *cs = sigint_cs;
  CONC_UNUSED(ar);
  lua_sethook(L, NULL, 0, 0);
  if (cs) atomic_store(&cs->interrupt, 0);
  luaL_error(L, "interrupted!");
}

/* SIGINT: the first one interrupts what the target state runs (a hook
** for Lua code, a wake-up for a conc wait); the handler then steps aside
** so that a second Ctrl-C kills the process, as with the lua command. */
static pthread_t sigint_thread;

static void on_sigint(int sig) {
  int saved = errno;
  cstate *cs = sigint_cs;
  lua_State *L;
  if (!pthread_equal(pthread_self(), sigint_thread)) {
    pthread_kill(sigint_thread, sig);  /* it is the target's to handle */
    errno = saved;
    return;
  }
  signal(SIGINT, SIG_DFL);
  sigint_seen++;
  if (cs) {
    atomic_store(&cs->interrupt, 1);
    cs_wake_signal(cs);
    L = conc_tls_L;
    if (L == NULL) L = cs->L;
    lua_sethook(L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT,
                1);
  }
  errno = saved;
}

/* cs is the state Ctrl-C interrupts; it runs on the calling thread. */
void conc_interrupt_target(cstate *cs) {
  sigint_thread = pthread_self();
  sigint_cs = cs;
}

void conc_interrupt_forget(cstate *cs) {
  if (sigint_cs == cs) sigint_cs = NULL;
}

static void set_on_sigint(struct sigaction *old) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, old);
}

/* on: Ctrl-C interrupts the target from now on (a pending one is
** forgotten); off: back to what the matching 'on' replaced. Calls nest,
** so that the command can keep it armed from its first chunk to the end
** of the wait at exit, with no moment in between where SIGINT kills. */
void conc_interrupt_install(int on) {
  if (on) {
    if (sigint_cs) atomic_store(&sigint_cs->interrupt, 0);
    set_on_sigint(sigint_depth < SIGINT_NEST ? &sigint_saved[sigint_depth]
                                             : NULL);
    sigint_depth++;
  } else if (sigint_depth > 0) {
    sigint_depth--;
    if (sigint_depth < SIGINT_NEST)
      sigaction(SIGINT, &sigint_saved[sigint_depth], NULL);
  }
}

/* Armed again after a Ctrl-C, which made the handler step aside. */
void conc_interrupt_rearm(void) {
  if (sigint_depth == 0) return;
  if (sigint_cs) atomic_store(&sigint_cs->interrupt, 0);
  set_on_sigint(NULL);
}

unsigned conc_interrupt_count(void) {
  return (unsigned)sigint_seen;
}

static void drop_interrupt_hook(lua_State *L) {
  if (L && lua_gethook(L) == interrupt_hook) lua_sethook(L, NULL, 0, 0);
}

int conc_interrupt_take(cstate *cs) {
  int was = atomic_exchange(&cs->interrupt, 0);
  drop_interrupt_hook(cs->L);
  drop_interrupt_hook(conc_tls_L);
  return was;
}

cstate *conc_interrupt_for(rt *r) {
  cstate *cs = sigint_cs;
  if (cs && cs->rt == r && pthread_equal(pthread_self(), sigint_thread))
    return cs;
  return NULL;
}

/* ------------------------------------------------------------ a host's Ctrl-C
 */

static pthread_mutex_t host_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction host_old;      /* the host's handler, wrapped */
static _Atomic int host_waiters;       /* waits sharing the wrapping */
static int host_wrapped;
static pthread_t host_thread;          /* a thread that waits (set before
                                          host_waiters counts it) */
static CONC_TLS cstate *tls_host_cs;      /* this thread's waiting state */
static CONC_TLS lua_Hook tls_host_hook;   /* the hook the host's handler set */

static int is_host_handler(const struct sigaction *sa);

static void on_sigint_host(int sig, siginfo_t *si, void *uc) {
  int saved = errno;
  cstate *cs = tls_host_cs;
  lua_Hook before = NULL, after;
  if (cs == NULL && atomic_load(&host_waiters) > 0 &&
      !pthread_equal(pthread_self(), host_thread)) {
    pthread_kill(host_thread, sig);          /* for the waiting thread */
    errno = saved;
    return;
  }
  if (cs) before = lua_gethook(cs->L);
  if (host_old.sa_flags & SA_SIGINFO) host_old.sa_sigaction(sig, si, uc);
  else if (is_host_handler(&host_old)) host_old.sa_handler(sig);
  if (cs && (after = lua_gethook(cs->L)) != NULL && after != before) {
    tls_host_hook = after;
    atomic_store(&cs->interrupt, 1);
    cs_wake_signal(cs);
  }
  errno = saved;
}

static int is_host_handler(const struct sigaction *sa) {
  if (sa->sa_flags & SA_SIGINFO) return sa->sa_sigaction != on_sigint_host;
  return sa->sa_handler != SIG_DFL && sa->sa_handler != SIG_IGN &&
         sa->sa_handler != on_sigint;
}

/* A wait of host state cs starts (on) or ends. */
static void host_wait(cstate *cs, int on) {
  if (sigint_depth > 0) return;          /* the command's own is armed */
  if (on) {
    cs->ctrlc_uncaught = 0;              /* the code went on after it */
    if (tls_host_cs) return;             /* an outer wait of this thread */
    pthread_mutex_lock(&host_mu);
    if (atomic_load(&host_waiters) == 0) {
      struct sigaction cur, sa, prev;
      sigaction(SIGINT, NULL, &cur);
      if (is_host_handler(&cur)) {
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigint_host;
        sa.sa_mask = cur.sa_mask;
        sa.sa_flags = cur.sa_flags | SA_SIGINFO;
        host_old = cur;
        sigaction(SIGINT, &sa, &prev);
        host_wrapped = 1;
        if (memcmp(&prev.sa_handler, &cur.sa_handler,
                   sizeof cur.sa_handler) != 0) {
          /* the host's handler ran in between, and changed SIGINT: if
          ** it hooked the state, that is the stop this wait is for */
          sigaction(SIGINT, &prev, NULL);
          host_wrapped = 0;
          if ((tls_host_hook = lua_gethook(cs->L)) != NULL)
            atomic_store(&cs->interrupt, 1);
        }
      }
    }
    if (host_wrapped) {
      host_thread = pthread_self();
      tls_host_cs = cs;
      atomic_fetch_add(&host_waiters, 1);
    }
    pthread_mutex_unlock(&host_mu);
  } else if (tls_host_cs == cs) {
    pthread_mutex_lock(&host_mu);
    tls_host_cs = NULL;
    if (atomic_fetch_sub(&host_waiters, 1) == 1) {
      struct sigaction cur;
      sigaction(SIGINT, NULL, &cur);
      if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigint_host)
        sigaction(SIGINT, &host_old, NULL);
      host_wrapped = 0;
    }
    pthread_mutex_unlock(&host_mu);
  }
}

/* Whether any host's Ctrl-C was ever raised in this process. */
static _Atomic int host_raised;

/* The interrupt is raised: the hook the host's handler set has done its
** work. Until something catches the error, the state is one that a
** Ctrl-C ends: its close stops the workers rather than wait (init.c), as
** the conclua command does after a chunk that an uncaught Ctrl-C ended. */
static void host_settle(cstate *cs) {
  if (tls_host_hook == NULL) return;
  if (cs->L && lua_gethook(cs->L) == tls_host_hook)
    lua_sethook(cs->L, NULL, 0, 0);
  tls_host_hook = NULL;
  cs->ctrlc_uncaught = 1;
  atomic_store(&host_raised, 1);
}

void conc_cs_caught(lua_State *L) {
  cstate *cs;
  if (!atomic_load_explicit(&host_raised, memory_order_relaxed)) return;
  if ((cs = conc_cs_of(L)) != NULL) cs->ctrlc_uncaught = 0;
}

void conc_checkoptions(lua_State *L, int arg, const char *const *known) {
  if (lua_isnoneornil(L, arg)) return;
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    const char *const *k = known;
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING)
      for (; k && *k; k++)
        if (strcmp(*k, lua_tostring(L, -1)) == 0) break;
    if (k == NULL || *k == NULL) {
      lua_pushvalue(L, -1);       /* tolstring changes a number key */
      luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s'",
                                            luaL_tolstring(L, -1, NULL)));
    }
  }
}

/* ------------------------------------------------------------ names */

int conc_isnamechar(int c) {
  return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9');
}

const char *const conc_reserved[] = {
    "and", "break", "do", "else", "elseif", "end", "false", "for",
    "function", "goto", "if", "in", "local", "nil", "not", "or", "repeat",
    "return", "then", "true", "until", "while", NULL};

int conc_isname(const char *s, size_t n) {
  const char *const *reserved = conc_reserved;
  if (n == 0 || (s[0] >= '0' && s[0] <= '9')) return 0;
  for (size_t i = 0; i < n; i++)
    if (!conc_isnamechar((unsigned char)s[i])) return 0;
  for (int i = 0; reserved[i]; i++)
    if (strlen(reserved[i]) == n && memcmp(reserved[i], s, n) == 0) return 0;
  return 1;
}

int conc_isname_z(const char *s) {
  return s != NULL && conc_isname(s, strlen(s));
}
