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
** The objects whose mutexes must not be held across fork() register
** with fork.c, which takes them all around a fork.
** The kinds are init.c's table, registered here (conc_obj_addkind): this
** file knows a kind only by what its kindinfo says.
** A kind marked pinned (a channel, a thread, a pool...) means nothing
** outside the process that made it: a forked child has a copy of the
** parent's objects, but no thread, waiter or worker of the parent is
** there to answer. Its creation number (uid) names the process that made
** it, so the one check is a compare with the cached pid, done where every
** use goes through: conc_obj_check (every method and field), conc_obj_test's
** callers that act on an object (select, the encoder). Using a parent's
** pinned object in a child raises "channel 3 belongs to another process"
** at once instead of waiting for ever. Its handles still print, compare
** and collect; collecting does not tear the child's copy down (its locks
** may be held by a parent thread, its fds are the parent's), so a child
** leaves what it inherited alone.
*/

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

const kindinfo *conc_kinds[K_NKINDS];

void conc_obj_addkind(const kindinfo *k) {
  conc_kinds[k->kind] = k;
}

typedef struct handle {
  cobj *o;
} handle;

static const char HANDLES_KEY = 'h';

void conc_obj_init(cobj *o, int kind) {
  atomic_init(&o->refs, 1);
  o->kind = kind;
  o->uid = conc_obj_newuid();
}

void conc_obj_retain(cobj *o) {
  atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
}

/* Whether o is pinned to a process other than this one (a child's copy
** of a parent's object). */
static int away(const cobj *o) {
  return conc_kinds[o->kind]->pinned &&
         conc_obj_home(o) != (uint32_t)conc_getpid();
}

void conc_obj_release(cobj *o) {
  if (o && atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1) {
    if (away(o)) return;        /* a child's copy of a parent's object */
    conc_kinds[o->kind]->destroy(o);
  }
}

int conc_obj_foreign(const cobj *o, char *buf, size_t n) {
  const kindinfo *k = conc_kinds[o->kind];
  if (!away(o)) return 0;
  snprintf(buf, n, "%s %lld", k->name, (long long)conc_obj_number(o));
  return 1;
}

lua_Integer conc_obj_number(const cobj *o) {
  const kindinfo *k = conc_kinds[o->kind];
  return k->id ? k->id((cobj *)o) : (lua_Integer)(o->uid & 0xffffffffu);
}

void conc_obj_checkhome(lua_State *L, cobj *o) {
  char what[64];
  if (conc_obj_foreign(o, what, sizeof what))
    luaL_error(L, "%s belongs to another process", what);
}

/* Unique across the process tree: the creating pid and a counter. */
uint64_t conc_obj_newuid(void) {
  static _Atomic uint64_t counter;
  uint64_t c = atomic_fetch_add(&counter, 1) + 1;
  return ((uint64_t)(uint32_t)conc_getpid() << 32) | (c & 0xffffffffu);
}

static int handle_gc(lua_State *L) {
  handle *h = lua_touserdata(L, 1);
  if (h->o) {
    cobj *o = h->o;
    h->o = NULL;
    if (conc_kinds[o->kind]->handle_gone) conc_kinds[o->kind]->handle_gone(o);
    conc_obj_release(o);
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
  char what[64];
  if (h->o == NULL) {
    luaL_getmetafield(L, 1, "__name");
    lua_pushfstring(L, "<%s released>", lua_tostring(L, -1));
    return 1;
  }
  if (conc_obj_foreign(h->o, what, sizeof what)) {   /* printing is no use */
    lua_pushfstring(L, "<%s of process %d>", what, (int)conc_obj_home(h->o));
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
void conc_obj_newmetatable(lua_State *L, cstate *cs, int kind) {
  const kindinfo *k = conc_kinds[kind];
  if (luaL_newmetatable(L, k->tname)) {
    static const luaL_Reg meta[] = {{"__gc", handle_gc},
                                    {"__eq", handle_eq},
                                    {"__tostring", handle_tostring},
                                    {NULL, NULL}};
    conc_cs_setfuncs(L, cs, meta);
    lua_newtable(L);                           /* methods */
    if (k->methods) conc_cs_setfuncs(L, cs, k->methods);
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

void conc_obj_push(lua_State *L, cstate *cs, cobj *o) {
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
  if (cs == NULL || cs->mt[o->kind] == NULL)
    conc_obj_newmetatable(L, cs, o->kind);
  luaL_setmetatable(L, conc_kinds[o->kind]->tname);
  conc_obj_retain(o);
  h->o = o;
  if (conc_kinds[o->kind]->handle_made) conc_kinds[o->kind]->handle_made(o, cs);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, -3, o);
  lua_remove(L, -2);
}

cobj *conc_obj_check(lua_State *L, int arg, int kind) {
  cstate *cs = lua_touserdata(L, CS_UPVAL);
  handle *h;
  /* fast path: compare the metatable with the one this state made */
  if (cs && cs->mt[kind] && lua_getmetatable(L, arg)) {
    const void *mt = lua_topointer(L, -1);
    lua_pop(L, 1);
    if (mt == cs->mt[kind] && lua_type(L, arg) == LUA_TUSERDATA) {
      h = lua_touserdata(L, arg);
      if (h->o == NULL) luaL_argerror(L, arg, "handle already released");
      if (away(h->o)) conc_obj_checkhome(L, h->o);
      return h->o;
    }
  }
  h = luaL_checkudata(L, arg, conc_kinds[kind]->tname);
  if (h->o == NULL) luaL_argerror(L, arg, "handle already released");
  if (away(h->o)) conc_obj_checkhome(L, h->o);
  return h->o;
}

cobj *conc_obj_test(lua_State *L, cstate *cs, int idx) {
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

/* The registry key of the table whose slot i + 1 holds the handle of
** cs->objcache[i], so that its address stays that handle's. */
static const char objcache_key = 0;

cobj *conc_obj_test_slot(lua_State *L, cstate *cs, int idx, int slot) {
  void *u = lua_touserdata(L, idx);
  cobj *o;
  if (u != NULL && u == cs->objcache[slot] && (o = ((handle *)u)->o) != NULL)
    return o;
  o = conc_obj_test(L, cs, idx);
  if (o == NULL || o->kind != K_CHANNEL) return o;  /* channels only: no
                                                   fds kept open by it */
  idx = lua_absindex(L, idx);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &objcache_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, CONC_OBJCACHE, 0);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &objcache_key);
  }
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, slot + 1);
  lua_pop(L, 1);
  cs->objcache[slot] = u;
  return o;
}
