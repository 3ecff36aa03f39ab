/*
** object.c
** Runtime objects and their Lua handles.
**
** DESIGN. A channel, lock, thread... is a C object with a reference count
** (cobj). A Lua state sees it through a full userdata holding the pointer;
** each handle, each message that names the object and each worker that
** uses it holds one reference, and the last release destroys it. One state
** has at most one handle per object: a weak-valued table in the registry
** maps the object's address to its userdata, so a channel that comes back
** through a message is == (and the same table key) as the one sent.
** The objects whose mutexes must not be held across fork() register in a
** list; fork takes all of them (objreg_lockall) so the child never inherits
** a lock held by a thread it does not have.
*/

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

const kindinfo *conc_kinds[K_NKINDS] = {
    &channel_kind, &thread_kind,    &process_kind, &lock_kind,
    &semaphore_kind, &event_kind,   &barrier_kind, &shared_kind,
    &pipe_kind,    &queue_kind};

typedef struct handle {
  cobj *o;
} handle;

static const char HANDLES_KEY = 'h';

void obj_init(cobj *o, int kind) {
  atomic_init(&o->refs, 1);
  o->kind = kind;
  o->uid = obj_newuid();
}

void obj_retain(cobj *o) {
  atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
}

void obj_release(cobj *o) {
  if (o && atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1)
    conc_kinds[o->kind]->destroy(o);
}

/* Unique across the process tree: the creating pid and a counter. */
uint64_t obj_newuid(void) {
  static _Atomic uint64_t counter;
  uint64_t c = atomic_fetch_add(&counter, 1) + 1;
  return ((uint64_t)(uint32_t)conc_getpid() << 32) | (c & 0xffffffffu);
}

static int handle_gc(lua_State *L) {
  handle *h = lua_touserdata(L, 1);
  if (h->o) {
    cobj *o = h->o;
    h->o = NULL;
    if (o->kind == K_PROCESS) process_handle_gone((worker *)o);
    obj_release(o);
  }
  return 0;
}

static int handle_eq(lua_State *L) {
  handle *a = lua_touserdata(L, 1), *b = lua_touserdata(L, 2);
  lua_pushboolean(L, a && b && a->o == b->o);
  return 1;
}

/* A handle is released by its __gc; finalizers of other objects (a pool's
** close at exit) may still reach it afterwards. */
static int handle_tostring(lua_State *L) {
  handle *h = lua_touserdata(L, 1);
  const kindinfo *k;
  if (h->o == NULL) {
    luaL_getmetafield(L, 1, "__name");
    lua_pushfstring(L, "<%s released>", lua_tostring(L, -1));
    return 1;
  }
  k = conc_kinds[h->o->kind];
  if (k->tostring) return k->tostring(L);
  lua_pushfstring(L, "<%s %p>", k->name, (void *)h->o);
  return 1;
}

/* __index: methods first, then the kind's fields. */
static int handle_index(lua_State *L) {
  handle *h = lua_touserdata(L, 1);
  const kindinfo *k;
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(2));
  if (!lua_isnil(L, -1)) return 1;
  if (h->o == NULL) return luaL_error(L, "handle already released");
  k = conc_kinds[h->o->kind];
  if (k->index == NULL) return 1;
  lua_pop(L, 1);
  return k->index(L);
}

/* Makes the metatable of 'kind' in L's registry if it is not there. */
void obj_newmetatable(lua_State *L, cstate *cs, int kind) {
  const kindinfo *k = conc_kinds[kind];
  if (luaL_newmetatable(L, k->tname)) {
    static const luaL_Reg meta[] = {{"__gc", handle_gc},
                                    {"__eq", handle_eq},
                                    {"__tostring", handle_tostring},
                                    {NULL, NULL}};
    cs_setfuncs(L, cs, meta);
    lua_newtable(L);                           /* methods */
    if (k->methods) cs_setfuncs(L, cs, k->methods);
    if (k->index) {                            /* fields too: a function */
      lua_pushlightuserdata(L, cs);
      lua_pushvalue(L, -2);
      lua_pushcclosure(L, handle_index, 2);
      lua_setfield(L, -3, "__index");
      lua_pop(L, 1);
    } else {                                   /* methods only: faster */
      lua_setfield(L, -2, "__index");
    }
    lua_pushliteral(L, "conc");
    lua_setfield(L, -2, "__metatable");        /* getmetatable(h) */
    if (k->meta) k->meta(L, cs);
  }
  if (cs) cs->mt[kind] = lua_topointer(L, -1);
  lua_pop(L, 1);
}

void obj_push(lua_State *L, cstate *cs, cobj *o) {
  handle *h;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &HANDLES_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_newtable(L);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &HANDLES_KEY);
  }
  if (lua_rawgetp(L, -1, o) == LUA_TUSERDATA) {
    handle *old = lua_touserdata(L, -1);
    if (old->o == o) {          /* not a stale entry being finalized */
      lua_remove(L, -2);
      return;
    }
  }
  lua_pop(L, 1);
  h = lua_newuserdatauv(L, sizeof *h, 0);
  h->o = NULL;
  if (cs == NULL || cs->mt[o->kind] == NULL) obj_newmetatable(L, cs, o->kind);
  luaL_setmetatable(L, conc_kinds[o->kind]->tname);
  obj_retain(o);
  h->o = o;
  if (o->kind == K_PROCESS) atomic_fetch_add(&((worker *)o)->handles, 1);
  if (o->kind == K_PIPE) pipe_handle_made(o, cs);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, -3, o);
  lua_remove(L, -2);
}

cobj *obj_check(lua_State *L, int arg, int kind) {
  cstate *cs = lua_touserdata(L, CS_UPVAL);
  handle *h;
  /* fast path: compare the metatable with the one this state made */
  if (cs && cs->mt[kind] && lua_getmetatable(L, arg)) {
    const void *mt = lua_topointer(L, -1);
    lua_pop(L, 1);
    if (mt == cs->mt[kind] && lua_type(L, arg) == LUA_TUSERDATA) {
      h = lua_touserdata(L, arg);
      if (h->o == NULL) luaL_argerror(L, arg, "handle already released");
      return h->o;
    }
  }
  h = luaL_checkudata(L, arg, conc_kinds[kind]->tname);
  if (h->o == NULL) luaL_argerror(L, arg, "handle already released");
  return h->o;
}

cobj *obj_test(lua_State *L, cstate *cs, int idx) {
  const void *mt;
  int k;
  if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx))
    return NULL;
  mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  for (k = 0; k < K_NKINDS; k++) {
    if (cs->mt[k] == mt) {
      handle *h = lua_touserdata(L, idx);
      return h->o;
    }
  }
  return NULL;
}

/* ------------------------------------------------------------ fork */

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static objlink reg_head = {&reg_head, &reg_head, NULL, NULL};

static void objreg_link(objlink *l) {
  pthread_mutex_lock(&reg_mu);
  l->next = &reg_head;
  l->prev = reg_head.prev;
  reg_head.prev->next = l;
  reg_head.prev = l;
  pthread_mutex_unlock(&reg_mu);
}

void objreg_add(objlink *l, pthread_mutex_t *mu) {
  l->mu = mu;
  l->cm = NULL;
  objreg_link(l);
}

void objreg_add_cm(objlink *l, cmutex *cm) {
  l->mu = NULL;
  l->cm = cm;
  objreg_link(l);
}

void objreg_remove(objlink *l) {
  pthread_mutex_lock(&reg_mu);
  l->prev->next = l->next;
  l->next->prev = l->prev;
  l->next = l->prev = l;
  pthread_mutex_unlock(&reg_mu);
}

/* Called with the fork lock held, so no other fork runs. The registry
** lock stays held until objreg_unlockall, so no object comes or goes. */
void objreg_lockall(void) {
  objlink *l;
  pthread_mutex_lock(&reg_mu);
  for (l = reg_head.next; l != &reg_head; l = l->next) {
    if (l->mu) pthread_mutex_lock(l->mu);
    else cmutex_lock(l->cm);
  }
}

/* In the child the forking thread is the only one left and it owns
** every lock taken above, so plain unlocks are right on both sides. */
void objreg_unlockall(int child) {
  objlink *l;
  CONC_UNUSED(child);
  for (l = reg_head.prev; l != &reg_head; l = l->prev) {
    if (l->mu) pthread_mutex_unlock(l->mu);
    else cmutex_unlock(l->cm);
  }
  pthread_mutex_unlock(&reg_mu);
}
