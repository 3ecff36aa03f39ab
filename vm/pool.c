/*
** pool.c
** The handle of a pool (require "conc.pool"): what every thread that
** holds the pool shares, and the pools' end at exit.
**
** DESIGN. A pool is run by its manager, a daemon thread (stdlib
** conc/pool.lua) that owns the workers, schedules the work and settles
** the futures; the pool object is only what the threads that submit work
** need to reach it: the manager's request channel, the pool's state
** (open, closed, terminated: a submit to a closed pool raises at once,
** from any thread) and its size and name. So a pool crosses between the
** threads of a process by reference, like a channel, and any number of
** threads submit and map at once, each to its own futures and replies.
** The manager does not hold the pool object, so the pool is collected
** once no thread holds it: its destroy settles the pool's lifeline, a
** future the manager selects on, and the manager finishes the queued
** work and stops. At exit, every pool of the runtime still running is
** told the same, and the exit waits for its manager like for a worker
** that is not a daemon (a Ctrl-C stops it like the others) before the
** daemons are stopped: a pool is closed when collected and at exit. The
** handle's methods (map, submit, close...) forward to those written in
** the module, which any state loads on first use: a thread that was
** only handed a pool can call p:map.
*/

#include <stdlib.h>
#include <string.h>

#include "modules.h"

enum { P_OPEN, P_CLOSED, P_TERMINATED };

static const char *const pstate_names[] = {"open", "closed", "terminated",
                                           NULL};

typedef struct pool {
  cobj obj;
  int64_t id;
  rt *rt;                      /* the runtime whose exit closes it */
  lua_Integer n;
  char *kind, *name;
  _Atomic int state;           /* P_*; only ever grows */
  cobj *requests;              /* the manager's channel */
  cobj *calls;                 /* a thread pool's calls, to its workers */
  cobj *lifeline;              /* a future: settled when the pool goes */
  cobj *manager;               /* the manager's thread; under pools_mu */
  int exiting;                 /* pool_exit took it; under pools_mu */
  struct pool *prev, *next;    /* every pool of the process */
} pool;

/* The list of pools; its lock is taken by fork like an object's (a child
** made while another thread holds it can still make pools). */
static pthread_mutex_t pools_mu = PTHREAD_MUTEX_INITIALIZER;
static pool *pools;
static objlink pools_link;
static pthread_once_t pools_once = PTHREAD_ONCE_INIT;

static void pool_exit(rt *r);

static void pools_init(void) {
  conc_fork_register(&pools_link, &pools_mu);
  conc_rt_exit_hook = pool_exit;
}

static void pool_destroy(cobj *o) {
  pool *p = (pool *)o;
  pthread_mutex_lock(&pools_mu);
  if (p->prev) p->prev->next = p->next;
  else pools = p->next;
  if (p->next) p->next->prev = p->prev;
  pthread_mutex_unlock(&pools_mu);
  conc_future_settle(p->lifeline, 1, NULL);  /* nobody can submit any more */
  conc_obj_release(p->lifeline);
  conc_obj_release(p->requests);
  conc_obj_release(p->calls);
  conc_obj_release(p->manager);
  conc_rt_release(p->rt);
  free(p->kind);
  free(p->name);
  free(p);
}

static pool *check_pool(lua_State *L, int arg) {
  return (pool *)conc_obj_check(L, arg, K_POOL);
}

/* kit.pool(kind, n, name, requests, lifeline [, calls]) -> a new open
** pool. calls: the channel its submitters hand calls to, straight to the
** workers (thread pools), served newest receiver first. */
static int pool_new(lua_State *L) {
  cstate *cs = conc_cs(L);
  const char *kind = luaL_checkstring(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  const char *name = luaL_optstring(L, 3, NULL);
  cobj *requests = conc_obj_check(L, 4, K_CHANNEL);
  cobj *lifeline = conc_obj_check(L, 5, K_FUTURE);
  cobj *calls = lua_isnoneornil(L, 6) ? NULL : conc_obj_check(L, 6, K_CHANNEL);
  static _Atomic int64_t next = 1;
  pool *p = calloc(1, sizeof *p);
  if (p == NULL || (p->kind = strdup(kind)) == NULL ||
      (name && (p->name = strdup(name)) == NULL)) {
    if (p) free(p->kind);
    free(p);
    return luaL_error(L, "not enough memory");
  }
  pthread_once(&pools_once, pools_init);
  conc_obj_init(&p->obj, K_POOL);
  p->id = atomic_fetch_add(&next, 1);
  p->n = n;
  atomic_init(&p->state, P_OPEN);
  p->requests = requests;
  conc_obj_retain(requests);
  p->lifeline = lifeline;
  conc_obj_retain(lifeline);
  if ((p->calls = calls) != NULL) {
    conc_chan_lifo(calls);
    conc_obj_retain(calls);
  }
  p->rt = cs->rt;
  conc_rt_retain(p->rt);
  pthread_mutex_lock(&pools_mu);
  p->next = pools;
  if (pools) pools->prev = p;
  pools = p;
  pthread_mutex_unlock(&pools_mu);
  conc_obj_push(L, cs, &p->obj);
  conc_obj_release(&p->obj);
  return 1;
}

/* kit.setmanager(p, thread): the manager the exit waits for. */
static int pool_setmanager(lua_State *L) {
  pool *p = check_pool(L, 1);
  cobj *w = conc_obj_check(L, 2, K_THREAD);
  cobj *old;
  conc_obj_retain(w);
  pthread_mutex_lock(&pools_mu);
  old = p->manager;
  p->manager = w;
  pthread_mutex_unlock(&pools_mu);
  conc_obj_release(old);
  return 0;
}

/* kit.manager(p) -> the manager's thread, or nil. */
static int pool_manager(lua_State *L) {
  pool *p = check_pool(L, 1);
  cobj *w;
  pthread_mutex_lock(&pools_mu);
  w = p->manager;
  if (w) conc_obj_retain(w);
  pthread_mutex_unlock(&pools_mu);
  if (w == NULL) return 0;
  conc_obj_push(L, conc_cs(L), w);
  conc_obj_release(w);
  return 1;
}

/* kit.requests(p) -> the manager's channel, and the channel of calls
** (or nil). */
static int pool_requests(lua_State *L) {
  pool *p = check_pool(L, 1);
  cstate *cs = conc_cs(L);
  conc_obj_push(L, cs, p->requests);
  if (p->calls == NULL) return 1;
  conc_obj_push(L, cs, p->calls);
  return 2;
}

/* kit.mark(p, state) -> the state before, and whether it changed: a pool is
** closed, then maybe terminated, never opened again. */
static int pool_mark(lua_State *L) {
  pool *p = check_pool(L, 1);
  int want = luaL_checkoption(L, 2, NULL, pstate_names);
  int old = atomic_load(&p->state);
  while (old < want && !atomic_compare_exchange_weak(&p->state, &old, want)) {
  }
  lua_pushstring(L, pstate_names[old]);
  lua_pushboolean(L, old < want);
  return 2;
}

/* ------------------------------------------------------------ the Lua side */

static const char METHODS_KEY = 'm';

/* kit.register(methods): the table where handles find map, submit... */
static int pool_register(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &METHODS_KEY);
  return 0;
}

/* Pushes the method table of conc.pool in L, loading the module if
** this state has not yet (a thread that was handed a pool). */
static void push_methods(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &METHODS_KEY) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_getglobal(L, "require");          /* opens a lazy state's libraries */
  lua_pushliteral(L, "conc.pool");
  lua_call(L, 1, 0);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &METHODS_KEY) != LUA_TTABLE)
    luaL_error(L, "conc.pool did not load");
}

/* Calls the method 'name' written in Lua with this call's arguments. The
** handle's own methods are these forwarders, so that a pool's methods
** are listed, completed and named like any handle's. */
static int call_lua(lua_State *L, const char *name) {
  int n = lua_gettop(L);
  push_methods(L);
  if (lua_getfield(L, -1, name) != LUA_TFUNCTION)
    return luaL_error(L, "conc.pool has no method '%s'", name);
  lua_replace(L, -2);
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

#define LUA_METHOD(m) \
  static int pool_##m(lua_State *L) { return call_lua(L, #m); }
LUA_METHOD(map) LUA_METHOD(submit) LUA_METHOD(close) LUA_METHOD(terminate)
LUA_METHOD(starmap) LUA_METHOD(imap) LUA_METHOD(imap_unordered)

/* __close: p:close(). */
static int pool_close_mm(lua_State *L) {
  lua_settop(L, 1);
  return call_lua(L, "close");
}

static int pool_index(lua_State *L) {
  pool *p = check_pool(L, 1);
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "n") == 0) lua_pushinteger(L, p->n);
  else if (k && strcmp(k, "kind") == 0) lua_pushstring(L, p->kind);
  else if (k && strcmp(k, "name") == 0 && p->name) lua_pushstring(L, p->name);
  else if (k && strcmp(k, "id") == 0) lua_pushinteger(L, p->id);
  else lua_pushnil(L);
  return 1;
}

static void pool_meta(lua_State *L, cstate *cs) {
  conc_cs_pushfunc(L, cs, pool_close_mm);
  lua_setfield(L, -2, "__close");
}

static int pool_tostring(lua_State *L) {
  pool *p = check_pool(L, 1);
  int st = atomic_load(&p->state);
  lua_pushfstring(L, "<pool of %I %s%s>", (LUAI_UACINT)p->n, p->kind,
                  st == P_OPEN ? "" : ", closed");
  return 1;
}

lua_Integer conc_pool_id(cobj *o) {
  return (lua_Integer)((pool *)o)->id;
}

/* ------------------------------------------------------------ exit */

/* A reference to o unless its last one is gone already (its destroy
** may be waiting for pools_mu). */
static int retain_live(cobj *o) {
  int r = atomic_load(&o->refs);
  while (r > 0)
    if (atomic_compare_exchange_weak(&o->refs, &r, r + 1)) return 1;
  return 0;
}

/* The exit (conc_rt_exit_hook): every pool of r still running is closed, and
** the exit waits for its manager as for a worker that is not a daemon,
** so its queued work finishes first (and one Ctrl-C stops it, as it stops
** the rest: exit.c). Nothing here waits or raises. */
static void pool_exit(rt *r) {
  for (;;) {
    pool *p;
    worker *w = NULL;
    int live = 0;
    pthread_mutex_lock(&pools_mu);
    for (p = pools; p; p = p->next) {
      if (p->rt == r && !p->exiting && p->manager &&
          (uint32_t)(p->obj.uid >> 32) == (uint32_t)conc_getpid()) {
        p->exiting = 1;
        w = (worker *)p->manager;
        conc_obj_retain(&w->obj);
        live = retain_live(&p->obj);   /* else its destroy tells the manager */
        break;
      }
    }
    pthread_mutex_unlock(&pools_mu);
    if (p == NULL) return;
    if (live) {
      int old = P_OPEN;
      atomic_compare_exchange_strong(&p->state, &old, P_CLOSED);
      conc_future_settle(p->lifeline, 1, NULL);
      conc_obj_release(&p->obj);
    }
    conc_worker_await(w);
    conc_obj_release(&w->obj);
  }
}

/* kit.state(v) -> the state of pool v; or nil, why v cannot be used and
** whether that is a bad argument (not a pool) rather than a forked
** child's use of its parent's pool. Never raises: conc.pool raises in
** its own words, at its caller's position. */
static int pool_kstate(lua_State *L) {
  cobj *o = conc_obj_test(L, conc_cs(L), 1);
  char what[64];
  if (o == NULL || o->kind != K_POOL) {
    lua_pushnil(L);
    if (o == NULL && lua_type(L, 1) == LUA_TUSERDATA &&
        luaL_testudata(L, 1, "conc.pool"))
      lua_pushliteral(L, "handle already released");
    else
      lua_pushfstring(L, "pool expected, got %s",
                      o ? conc_kinds[o->kind]->name : luaL_typename(L, 1));
    lua_pushboolean(L, 1);
    return 3;
  }
  if (conc_obj_foreign(o, what, sizeof what)) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s belongs to another process", what);
    lua_pushboolean(L, 0);
    return 3;
  }
  lua_pushstring(L, pstate_names[atomic_load(&((pool *)o)->state)]);
  return 1;
}

/* kit.take(guard, calls, list [, timeout]) -> what conc.select(list,
** timeout) gives. A call it takes from calls (a {f, p} from a submitter)
** is the worker's in the same C step: guard.f is its future before any
** Lua instruction or hook runs, so that a cancel (terminate) arriving
** next fails the future in guard's __close instead of losing it. */
static int pool_take(lua_State *L) {
  int n;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 4);
  lua_rotate(L, 1, 2);                  /* list, timeout, guard, calls */
  n = conc_select(L);                   /* the same upvalue: our cstate */
  if (n >= 2 && lua_rawequal(L, -n, 4) && lua_type(L, -n + 1) == LUA_TTABLE) {
    lua_pushliteral(L, "f");
    lua_rawget(L, -n);                  /* the message, one slot lower now */
    lua_pushliteral(L, "f");
    lua_insert(L, -2);
    lua_rawset(L, 3);
  }
  return n;
}

/* conc._poolkit() -> the functions conc.pool is built on. */
int conc_pool_kit(lua_State *L) {
  static const luaL_Reg kit[] = {
      {"pool", pool_new},          {"state", pool_kstate},
      {"mark", pool_mark},         {"requests", pool_requests},
      {"manager", pool_manager},   {"setmanager", pool_setmanager},
      {"register", pool_register}, {"take", pool_take},
      {NULL, NULL}};
  cstate *cs = conc_cs(L);
  lua_createtable(L, 0, 8);
  conc_cs_setfuncs(L, cs, kit);
  conc_cs_setfuncs(L, cs, conc_parcel_funcs);
  conc_cs_setfuncs(L, cs, conc_future_funcs);
  return 1;
}

static const luaL_Reg pool_methods[] = {
    {"map", pool_map},     {"submit", pool_submit},
    {"close", pool_close}, {"terminate", pool_terminate},
    {"starmap", pool_starmap}, {"imap", pool_imap},
    {"imap_unordered", pool_imap_unordered}, {NULL, NULL}};

const kindinfo conc_pool_kind = {
    .kind = K_POOL,
    .tname = "conc.pool",
    .name = "pool",
    .local = 1,
    .destroy = pool_destroy,
    .methods = pool_methods,
    .index = pool_index,
    .tostring = pool_tostring,
    .meta = pool_meta,
    .pinned = 1,
    .id = conc_pool_id};
