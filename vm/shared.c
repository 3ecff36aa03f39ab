/*
** shared.c
** conc.shared(): a table that every thread, and every process forked
** after it was made, sees (Python's Manager dict and Value).
**
** DESIGN. The storage is shared memory, not a server thread in the
** creator. A server would make every access from another process a round
** trip through a socket (tens of microseconds: Python's Manager works
** so), cost a thread per table, and end the table with its creator; a
** MAP_SHARED mapping made before the fork is simply there in every
** child, at the cost of a memcpy under a robust lock, and threads use it
** as fast as they used a private table. shtab.c keeps the table in that
** mapping (its DESIGN says how a death anywhere leaves it whole); this
** file is the Lua side: keys in a canonical form (strings, numbers,
** booleans; 2.0 and 2 are one key, as in Lua tables), values encoded
** before the table's lock is taken and decoded after it is let go, so no
** Lua code, no Lua allocation and no error ever runs with it held.
** s:update(k, fn) holds k while fn runs, in a protected call, so that k
** is let go whatever fn does. Reading a value that names an object of
** another process raises '<kind> <id> belongs to another process', never
** hands out a copy.
*/

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "shtab.h"

/* The canonical bytes of the key at idx; raises for other types. Long
** strings are copied into a box that replaces the key on the stack. */
static void key_get(lua_State *L, int idx, skey *k) {
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      char *dst = k->buf;
      if (n >= UINT32_MAX) luaL_error(L, "shared table key too long");
      if (n >= sizeof k->buf - 1) dst = lua_newuserdatauv(L, n + 1, 0);
      dst[0] = 's';
      memcpy(dst + 1, s, n);
      if (dst != k->buf) lua_replace(L, idx);   /* the box keeps the bytes */
      k->p = dst;
      k->n = n + 1;
      break;
    }
    case LUA_TNUMBER: {
      lua_Integer i;
      lua_Number f = lua_tonumber(L, idx);
      int isint = lua_isinteger(L, idx);
      if (isint) i = lua_tointeger(L, idx);
      else if (isnan(f)) luaL_error(L, "shared table index is NaN");
      else isint = lua_numbertointeger(f, &i) && (lua_Number)i == f;
      if (isint) {              /* 2.0 and 2 are one key, as in tables */
        conc_shtab_key_int(k, i);
        return;
      }
      k->buf[0] = 'f';
      memcpy(k->buf + 1, &f, sizeof f);
      k->p = k->buf;
      k->n = 1 + sizeof f;
      break;
    }
    case LUA_TBOOLEAN:
      k->buf[0] = 'b';
      k->buf[1] = (char)lua_toboolean(L, idx);
      k->p = k->buf;
      k->n = 2;
      break;
    default:
      luaL_error(L, "shared table keys must be strings, numbers or booleans "
                    "(got %s)", luaL_typename(L, idx));
  }
  k->hash = conc_shtab_hash(k->p, k->n);
}

static void key_push(lua_State *L, const char *key, size_t n) {
  switch (key[0]) {
    case 's': lua_pushlstring(L, key + 1, n - 1); break;
    case 'i': {
      lua_Integer i;
      memcpy(&i, key + 1, sizeof i);
      lua_pushinteger(L, i);
      break;
    }
    case 'f': {
      lua_Number f;
      memcpy(&f, key + 1, sizeof f);
      lua_pushnumber(L, f);
      break;
    }
    default: lua_pushboolean(L, key[1]); break;
  }
}

/* ------------------------------------------------------------ values */

static shtab *check_shared(lua_State *L) {
  return (shtab *)conc_obj_check(L, 1, K_SHARED);
}

static int raise_bad(lua_State *L, const badref *bad) {
  if (bad->kind < 0) return luaL_error(L, "%s", conc_shtab_nomem);
  return luaL_error(L, "%s %I belongs to another process",
                    bad->kind < K_NKINDS ? conc_kinds[bad->kind]->name
                                         : "object",
                    (LUAI_UACINT)bad->label);
}

static int shared_index(lua_State *L) {
  shtab *t = check_shared(L);
  skey k;
  shop o;
  shent *e;
  msg *m = NULL;
  badref bad = {-1, 0};
  vcopy c;
  int r = -2;                       /* -2: no value */
  key_get(L, 2, &k);
  if (conc_shtab_lock(&o, t)) return luaL_error(L, "%s", conc_shtab_nomem);
  e = conc_shtab_find(&o, &k);
  if (e && e->vlen != SHTAB_NOVALUE) r = conc_shtab_copy(&o, e, &c, &m, &bad);
  conc_shtab_unlock(&o);
  if (r == 1 && c.nrefs == 0) {     /* a Lua error now leaves nothing held */
    char err[160];
    int n = conc_marshal_decode(L, conc_cs(L), c.bytes, c.n, NULL, 0, err,
                           sizeof err);
    if (n < 0) return luaL_error(L, "%s", err);
    return n;
  }
  if (r == 1 && (m = conc_shtab_copy_msg(&c)) == NULL)
    return luaL_error(L, "%s", conc_shtab_nomem);
  if (r >= 0) return conc_msg_push(L, conc_cs(L), m);
  if (r == -1) return raise_bad(L, &bad);
  lua_pushnil(L);
  return 1;
}

/* __index: the methods first, then the data. */
static int shared_meta_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL) return 1;
    lua_pop(L, 1);
  }
  return shared_index(L);
}

/* Raises what shtab_wait_idle returned, letting go of what o holds. */
static int raise_wait(lua_State *L, shop *o, cstate *cs, const char *why) {
  if (why == conc_shtab_self_update) {
    conc_shtab_unlock(o);
    return luaL_error(L, "%s", why);
  }
  conc_shtab_done(o);
  if (why == conc_shtab_nomem) return luaL_error(L, "%s", why);
  return conc_cs_raisestop(L, cs, why);
}

/* ------------------------------------------------------------ writes */

/* Raises unless an entry for k with the value in b fits the heap. */
static void check_size(lua_State *L, shtab *t, const skey *k, const mbuf *b) {
  shhdr *h = t->so.shm;
  if (shtab_entry_size(k->n, (uint64_t)b->nrefs, b->n) >
      conc_shheap_max(&h->heap)) {
    size_t n = b->n;
    conc_mbuf_reset(&conc_cs(L)->scratch);
    luaL_error(L, "value too big for a shared table (%I bytes)",
               (LUAI_UACINT)n);
  }
}

/* Stores the value encoded in the state's scratch buffer under k, or
** removes k; waits while an update holds k. */
static void store(lua_State *L, shtab *t, const skey *k, int remove) {
  cstate *cs = conc_cs(L);
  mbuf *b = &cs->scratch;
  const char *why, *err = NULL;
  shslot *s, *ins;
  shop o;
  if (conc_shtab_lock(&o, t)) {
    conc_mbuf_reset(b);
    luaL_error(L, "%s", conc_shtab_nomem);
  }
  why = shtab_wait_idle(&o, cs, k, &s, &ins);
  if (why) {
    conc_mbuf_reset(b);
    raise_wait(L, &o, cs, why);
  }
  shtab_begin(&o);
  if (remove) {
    if (s) conc_shtab_unpublish(&o, s);
  } else {
    err = conc_shtab_put(&o, k, s, ins, b->p, b->n, b->refs, b->nrefs, NULL);
    if (err == NULL) b->nrefs = 0;  /* the entry holds those references */
  }
  shtab_end(&o);
  conc_shtab_unlock(&o);
  if (b->nrefs) conc_mbuf_reset(b);      /* (only refs need more than that) */
  else b->n = 0;
  if (err) luaL_error(L, "%s", err);
}

static int shared_newindex(lua_State *L) {
  shtab *t = check_shared(L);
  cstate *cs = conc_cs(L);
  char err[512];
  skey k;
  key_get(L, 2, &k);
  if (lua_isnil(L, 3)) {
    store(L, t, &k, 1);
    return 0;
  }
  if (conc_marshal_encode(L, cs, 3, 1, &cs->scratch, 0, "value", err,
                     sizeof err) != 0)
    return luaL_error(L, "%s", err);
  check_size(L, t, &k, &cs->scratch);
  store(L, t, &k, 0);
  return 0;
}

/* ------------------------------------------------------------ reads */

static int shared_len(lua_State *L) {
  shtab *t = check_shared(L);
  uint64_t n;
  shop o;
  if (conc_shtab_lock(&o, t)) return luaL_error(L, "%s", conc_shtab_nomem);
  n = o.h->border;
  while (n < (uint64_t)LUA_MAXINTEGER) {
    skey k;
    shent *e;
    conc_shtab_key_int(&k, (lua_Integer)n + 1);
    e = conc_shtab_find(&o, &k);
    if (e == NULL || e->vlen == SHTAB_NOVALUE) break;
    n++;
  }
  o.h->border = n;
  conc_shtab_unlock(&o);
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

/* A snapshot of the entries, in a box that frees what it holds when
** collected. */
typedef struct snapit {
  msg *v;
  size_t klen;
  char key[];
} snapit;

typedef struct snap {
  size_t n;
  snapit **it;
} snap;

static int snap_gc(lua_State *L) {
  snap *s = lua_touserdata(L, 1);
  for (size_t i = 0; i < s->n; i++) {
    if (s->it[i]) conc_msg_free(s->it[i]->v);
    free(s->it[i]);
  }
  free(s->it);
  s->n = 0;
  s->it = NULL;
  return 0;
}

static int shared_pairs(lua_State *L) {
  shtab *t = check_shared(L);
  cstate *cs = conc_cs(L);
  snap *s = lua_newuserdatauv(L, sizeof *s, 0);
  badref bad = {-1, 0};
  int failed = 0;
  size_t i;
  shop o;
  s->n = 0;
  s->it = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, snap_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  if (conc_shtab_lock(&o, t)) return luaL_error(L, "%s", conc_shtab_nomem);
  s->it = calloc(o.h->count ? o.h->count : 1, sizeof *s->it);
  if (s->it == NULL) failed = 1;
  for (i = 0; !failed && i < shtab_index(&o)->cap; i++) {
    shslot *sl = &shtab_index(&o)->slot[i];
    shent *e;
    snapit *it;
    if (sl->off <= SHTAB_TOMB) continue;
    e = AT(&o, sl->off);
    if (e->vlen == SHTAB_NOVALUE || s->n == o.h->count) continue;
    it = malloc(sizeof *it + e->klen);
    if (it == NULL || (it->v = conc_shtab_value(&o, e, &bad)) == NULL) {
      free(it);
      failed = 1;
      break;
    }
    it->klen = e->klen;
    memcpy(it->key, shtab_ekey(e), e->klen);
    s->it[s->n++] = it;
  }
  conc_shtab_unlock(&o);
  if (failed) return raise_bad(L, &bad);
  lua_createtable(L, 0, (int)(s->n < INT32_MAX ? s->n : 0));
  for (i = 0; i < s->n; i++) {
    msg *v = s->it[i]->v;
    key_push(L, s->it[i]->key, s->it[i]->klen);
    s->it[i]->v = NULL;
    conc_msg_push(L, cs, v);
    lua_rawset(L, -3);
  }
  {
    int isconc;
    lua_pushcfunction(L, conc_cfunc_lookup("_G.next", 7, &isconc));
    lua_insert(L, -2);
  }
  lua_pushnil(L);
  return 3;
}

/* ------------------------------------------------------------ incr */

/* s:incr(k [, n]): adds n (default 1) to a number (absent: 0) at once. */
static int shared_incr(lua_State *L) {
  shtab *t = check_shared(L);
  cstate *cs = conc_cs(L);
  lua_Integer ii = 0, di = 1;
  lua_Number fi = 0, df = 1;
  int dint = 1, kind = 1;
  const char *why, *err = NULL;
  char num[MARSHAL_NUMLEN];
  shslot *s, *ins;
  shent *e;
  skey k;
  shop o;
  key_get(L, 2, &k);
  if (!lua_isnoneornil(L, 3)) {
    luaL_checknumber(L, 3);
    dint = lua_isinteger(L, 3);
    if (dint) di = lua_tointeger(L, 3);
    else df = lua_tonumber(L, 3);
  }
  if (conc_shtab_lock(&o, t)) return luaL_error(L, "%s", conc_shtab_nomem);
  why = shtab_wait_idle(&o, cs, &k, &s, &ins);
  if (why) return raise_wait(L, &o, cs, why);
  e = s ? AT(&o, s->off) : NULL;
  if (e && e->vlen != SHTAB_NOVALUE)
    kind = conc_marshal_tonumber(shtab_evalue(e), (size_t)e->vlen, &ii, &fi);
  if (kind == 0) {
    err = "cannot incr: value is not a number";
  } else {
    if (kind == 1 && dint) {
      /* wraps around, as + does */
      ii = (lua_Integer)((lua_Unsigned)ii + (lua_Unsigned)di);
    } else {
      fi = (kind == 1 ? (lua_Number)ii : fi) + (dint ? (lua_Number)di : df);
      kind = 2;
    }
    conc_marshal_number(num, kind == 1, ii, fi);
    if (e && e->vlen == MARSHAL_NUMLEN &&
        memcmp(shtab_evalue(e), num, MARSHAL_NUMLEN - 8) == 0) {
      /* the same form: the number's 8 bytes change, in one store */
      memcpy(shtab_evalue(e) + MARSHAL_NUMLEN - 8, num + MARSHAL_NUMLEN - 8, 8);
    } else {
      shtab_begin(&o);
      err = conc_shtab_put(&o, &k, s, ins, num, MARSHAL_NUMLEN, NULL, 0, NULL);
      shtab_end(&o);
    }
  }
  conc_shtab_unlock(&o);
  if (err) return luaL_error(L, "%s", err);
  if (kind == 1) lua_pushinteger(L, ii);
  else lua_pushnumber(L, fi);
  return 1;
}

/* ------------------------------------------------------------ update */

/* What an update hands to its protected call. */
typedef struct upd {
  msg *old;                         /* the old value, or NULL */
  cstate *cs;
} upd;

/* fn(old) in a protected call: decodes the old value, calls fn, encodes
** what it returned (unless nil) into the state's scratch buffer, and
** returns it. */
static int update_call(lua_State *L) {
  upd *u = lua_touserdata(L, 2);
  msg *old = u->old;
  char err[512];
  u->old = NULL;
  lua_settop(L, 1);
  if (old) conc_msg_push(L, u->cs, old);
  else lua_pushnil(L);
  lua_call(L, 1, 1);
  if (!lua_isnil(L, -1) &&
      conc_marshal_encode(L, u->cs, lua_gettop(L), 1, &u->cs->scratch, 0,
                          "value", err, sizeof err) != 0)
    return luaL_error(L, "%s", err);
  return 1;
}

/* After the update's call, with the lock held: stores its outcome in
** k's entry, which this thread holds. NULL or an error message. */
static const char *update_end(shop *o, const skey *k, int ok, int isnil,
                              mbuf *b) {
  shslot *s = conc_shtab_slot(o, k, NULL);
  shent *e = s ? AT(o, s->off) : NULL;
  const char *err = NULL;
  if (e == NULL || !conc_shtab_held(e))   /* it was taken for a dead one's */
    return ok ? "a shared key was taken over during its update" : NULL;
  shtab_begin(o);
  if (ok && !isnil) {               /* it replaces: the index stays */
    err = conc_shtab_put(o, k, s, NULL, b->p, b->n, b->refs, b->nrefs, NULL);
    if (err == NULL) b->nrefs = 0;
    else ok = 0;
  }
  if (ok && isnil) conc_shtab_unpublish(o, s);
  else if (!ok && e->vlen == SHTAB_NOVALUE) conc_shtab_unpublish(o, s);
  else if (!ok) conc_slock_unlock(&e->ulock);
  shtab_end(o);
  return err;
}

/* s:update(k, fn): stores fn(old value), holding k meanwhile; returns
** the new value. An error in fn leaves the old value. */
static int shared_update(lua_State *L) {
  shtab *t = check_shared(L);
  cstate *cs = conc_cs(L);
  upd u = {NULL, cs};
  badref bad = {-1, 0};
  const char *why, *err;
  shslot *s, *ins;
  shent *e;
  skey k;
  shop o;
  int st;
  key_get(L, 2, &k);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  lua_pushcfunction(L, update_call);  /* what the call needs, pushed now: */
  lua_pushvalue(L, 3);                /* no allocation once k is held */
  lua_pushlightuserdata(L, &u);
  if (conc_shtab_lock(&o, t)) return luaL_error(L, "%s", conc_shtab_nomem);
  why = shtab_wait_idle(&o, cs, &k, &s, &ins);
  if (why) return raise_wait(L, &o, cs, why);
  e = s ? AT(&o, s->off) : NULL;
  if (e && e->vlen != SHTAB_NOVALUE) {
    u.old = conc_shtab_value(&o, e, &bad);
    if (u.old == NULL) {
      conc_shtab_unlock(&o);
      return raise_bad(L, &bad);
    }
  } else if (e == NULL) {             /* a placeholder holds the key */
    uint64_t off = 0;
    shtab_begin(&o);
    err = conc_shtab_put(&o, &k, NULL, ins, NULL, SHTAB_NOVALUE, NULL, 0, &off);
    shtab_end(&o);
    if (err) {
      conc_shtab_unlock(&o);
      return luaL_error(L, "%s", err);
    }
    e = AT(&o, off);
  }
  shtab_begin(&o);                  /* word then pid: see shtab.c */
  conc_slock_try(&e->ulock);
  shtab_end(&o);
  conc_shtab_unlock(&o);
  st = lua_pcall(L, 2, 1, 0);
  conc_msg_free(u.old);                    /* if the call never took it */
  if (conc_shtab_lock(&o, t)) { /* the table is broken: let k go */
    conc_slock_unlock(&e->ulock); /* (a held entry stays where it is) */
    err = conc_shtab_nomem;
  } else {
    err = update_end(&o, &k, st == LUA_OK, st == LUA_OK && lua_isnil(L, -1),
                     &cs->scratch);
    conc_shtab_unlock(&o);
  }
  conc_mbuf_reset(&cs->scratch);
  conc_bump(&o.h->seq, &o.h->nwait, INT32_MAX);
  if (err) return luaL_error(L, "%s", err);
  if (st != LUA_OK) return lua_error(L);
  return 1;
}

/* ------------------------------------------------------------ object */

static int shared_tostring(lua_State *L) {
  uint64_t n;
  shop o;
  if (conc_shtab_lock(&o, check_shared(L)))
    return luaL_error(L, "%s", conc_shtab_nomem);
  n = o.h->count;
  conc_shtab_unlock(&o);
  lua_pushfstring(L, n == 1 ? "<shared %I key>" : "<shared %I keys>",
                  (LUAI_UACINT)n);
  return 1;
}

/* The last reference of this process: the objects it stored are
** released (no read in this process can reach them any more). */
static void shared_destroy(cobj *obj) {
  conc_shtab_destroy((shtab *)obj);
  free(obj);
}

int conc_shared_new(lua_State *L) {
  shtab *t;
  conc_checkoptions(L, 1, NULL);
  t = calloc(1, sizeof *t);
  if (t == NULL) return luaL_error(L, "%s", conc_shtab_nomem);
  if (conc_shtab_create(t) != 0) {
    free(t);
    return luaL_error(L, "cannot make a shared table: %s", strerror(errno));
  }
  conc_obj_push(L, conc_cs(L), &t->so.obj);
  conc_obj_release(&t->so.obj);
  return 1;
}

static const luaL_Reg shared_methods[] = {
    {"incr", shared_incr}, {"update", shared_update}, {NULL, NULL}};

/* The metatable of shared handles: object.c's, plus these. */
static void shared_meta(lua_State *L, cstate *cs) {
  static const luaL_Reg meta[] = {{"__newindex", shared_newindex},
                                  {"__len", shared_len},
                                  {"__pairs", shared_pairs},
                                  {NULL, NULL}};
  conc_cs_setfuncs(L, cs, meta);
  lua_pushlightuserdata(L, cs);
  lua_newtable(L);
  conc_cs_setfuncs(L, cs, shared_methods);
  lua_pushcclosure(L, shared_meta_index, 2);
  lua_setfield(L, -2, "__index");
}

const kindinfo conc_shared_kind = {
    .kind = K_SHARED,
    .tname = "conc.shared",
    .name = "shared",
    .shm = 1,
    .destroy = shared_destroy,
    .methods = shared_methods,
    .tostring = shared_tostring,
    .meta = shared_meta};
