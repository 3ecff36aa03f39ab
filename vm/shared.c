/*
** shared.c
** conc.shared(): a table that every thread it is passed to sees.
**
** DESIGN. A hash map from keys (strings, numbers, booleans, in a small
** canonical byte form: 2.0 and 2 are one key, as in Lua tables) to sealed
** messages, under one mutex. A write encodes the value before taking the
** lock; a read copies the message under the lock and decodes it after,
** so no Lua code and no error ever runs with the lock held. update(k, fn)
** marks the entry busy, runs fn unlocked, then stores the result: other
** writers of that key wait (readers see the old value), and an error in
** fn leaves the old value. incr works on the bytes of a number directly.
*/

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct sentry {
  struct sentry *next;
  uint64_t hash;
  msg *val;                    /* NULL: no value (a busy placeholder) */
  int busy;                    /* an update runs on it */
  cstate *updater;             /* the state running that update */
  size_t klen;
  char key[];
} sentry;

typedef struct shtab {
  cobj obj;
  pthread_mutex_t mu;
  objlink link;
  sentry **b;
  size_t nb, count;
  selnode *waiters;            /* threads waiting for a busy entry */
} shtab;

static void shtab_destroy(cobj *o) {
  shtab *t = (shtab *)o;
  objreg_remove(&t->link);
  for (size_t i = 0; i < t->nb; i++) {
    sentry *e = t->b[i], *next;
    for (; e; e = next) {
      next = e->next;
      msg_free(e->val);
      free(e);
    }
  }
  free(t->b);
  pthread_mutex_destroy(&t->mu);
  free(t);
}

int shared_new(lua_State *L) {
  shtab *t = calloc(1, sizeof *t);
  if (t == NULL) return luaL_error(L, "not enough memory");
  obj_init(&t->obj, K_SHARED);
  pthread_mutex_init(&t->mu, NULL);
  objreg_add(&t->link, &t->mu);
  obj_push(L, conc_cs(L), &t->obj);
  obj_release(&t->obj);
  return 1;
}

static shtab *check_shared(lua_State *L) {
  return (shtab *)obj_check(L, 1, K_SHARED);
}

/* ------------------------------------------------------------ keys */

typedef struct skey {
  char buf[1 + 64];
  const char *p;
  size_t n;
  uint64_t hash;
} skey;

static uint64_t fnv(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
  return h;
}

/* The canonical bytes of the key at idx; raises for other types. Long
** strings point into the Lua string (valid while it is on the stack). */
static void key_get(lua_State *L, int idx, skey *k) {
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      if (n < sizeof k->buf - 1) {
        k->buf[0] = 's';
        memcpy(k->buf + 1, s, n);
        k->p = k->buf;
        k->n = n + 1;
      } else {
        k->p = NULL;           /* filled below from a box */
        k->n = n + 1;
        {
          char *box = lua_newuserdatauv(L, n + 1, 0);
          box[0] = 's';
          memcpy(box + 1, s, n);
          lua_replace(L, idx);  /* the box keeps the bytes for the call */
          k->p = box;
        }
      }
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
        k->buf[0] = 'i';
        memcpy(k->buf + 1, &i, sizeof i);
        k->n = 1 + sizeof i;
      } else {
        k->buf[0] = 'f';
        memcpy(k->buf + 1, &f, sizeof f);
        k->n = 1 + sizeof f;
      }
      k->p = k->buf;
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
  k->hash = fnv(k->p, k->n);
}

static void key_push(lua_State *L, const sentry *e) {
  switch (e->key[0]) {
    case 's': lua_pushlstring(L, e->key + 1, e->klen - 1); break;
    case 'i': {
      lua_Integer i;
      memcpy(&i, e->key + 1, sizeof i);
      lua_pushinteger(L, i);
      break;
    }
    case 'f': {
      lua_Number f;
      memcpy(&f, e->key + 1, sizeof f);
      lua_pushnumber(L, f);
      break;
    }
    default: lua_pushboolean(L, e->key[1]); break;
  }
}

/* ------------------------------------------------------------ map */

static sentry **find(shtab *t, const skey *k) {
  sentry **p;
  if (t->nb == 0) return NULL;
  for (p = &t->b[k->hash & (t->nb - 1)]; *p; p = &(*p)->next)
    if ((*p)->hash == k->hash && (*p)->klen == k->n &&
        memcmp((*p)->key, k->p, k->n) == 0)
      return p;
  return NULL;
}

/* The entry of k, made if missing; NULL when out of memory. */
static sentry *find_or_add(shtab *t, const skey *k) {
  sentry **p = find(t, k), *e;
  if (p) return *p;
  if (t->count + 1 > t->nb) {          /* grow: load factor 1 */
    size_t nb = t->nb ? t->nb * 2 : 16;
    sentry **nbk = calloc(nb, sizeof *nbk);
    if (nbk == NULL) return NULL;
    for (size_t i = 0; i < t->nb; i++) {
      sentry *x = t->b[i], *next;
      for (; x; x = next) {
        next = x->next;
        x->next = nbk[x->hash & (nb - 1)];
        nbk[x->hash & (nb - 1)] = x;
      }
    }
    free(t->b);
    t->b = nbk;
    t->nb = nb;
  }
  e = malloc(sizeof *e + k->n);
  if (e == NULL) return NULL;
  e->hash = k->hash;
  e->val = NULL;
  e->busy = 0;
  e->updater = NULL;
  e->klen = k->n;
  memcpy(e->key, k->p, k->n);
  e->next = t->b[k->hash & (t->nb - 1)];
  t->b[k->hash & (t->nb - 1)] = e;
  t->count++;
  return e;
}

static void remove_entry(shtab *t, const skey *k) {
  sentry **p = find(t, k), *e;
  if (p == NULL) return;
  e = *p;
  *p = e->next;
  t->count--;
  free(e);
}

static const char SELF_UPDATE[] =
    "a shared key cannot be changed inside its own update";

/* Waits (lock held on entry and exit) until k's entry is not busy. The
** lock is dropped while sleeping. Returns a stop reason, SELF_UPDATE if
** the update holding the entry is the caller's own (it would wait for
** itself), or NULL. */
static const char *wait_idle(shtab *t, cstate *cs, const skey *k) {
  for (;;) {
    sentry **p = find(t, k);
    selwait sw;
    selnode n;
    const char *why;
    uint32_t seen;
    if (p == NULL || !(*p)->busy) return NULL;
    if ((*p)->updater == cs) return SELF_UPDATE;
    sw.park = &cs->park;
    atomic_init(&sw.won, 0);
    memset(&n, 0, sizeof n);
    n.sw = &sw;
    selq_push(&t->waiters, &n);
    seen = park_seq(&cs->park);
    pthread_mutex_unlock(&t->mu);
    cs_waiting(cs, "shared");
    why = cs_stopreason(cs);
    if (why == NULL) park_sleep(&cs->park, seen, NULL);
    cs_waiting(cs, NULL);
    pthread_mutex_lock(&t->mu);
    if (n.linked) selq_remove(&t->waiters, &n);
    if (why) return why;
  }
}

/* Raises what wait_idle returned (the lock released). */
static int raise_wait(lua_State *L, cstate *cs, const char *why) {
  if (why == SELF_UPDATE) return luaL_error(L, "%s", why);
  return cs_raisestop(L, cs, why);
}

static void wake_all(shtab *t) {
  selnode *n;
  while ((n = t->waiters) != NULL) {
    selq_remove(&t->waiters, n);
    park_wake(n->sw->park);
  }
}

/* ------------------------------------------------------------ Lua */

static int shared_index(lua_State *L) {
  shtab *t = check_shared(L);
  skey k;
  sentry **p;
  msg *copy = NULL;
  key_get(L, 2, &k);
  pthread_mutex_lock(&t->mu);
  p = find(t, &k);
  if (p && (*p)->val) copy = msg_dup((*p)->val);
  pthread_mutex_unlock(&t->mu);
  if (copy == NULL) {
    lua_pushnil(L);
    return 1;
  }
  return msg_push(L, conc_cs(L), copy);
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

/* Stores m (NULL: removes) under k, waiting for a busy entry. */
static void store(lua_State *L, shtab *t, const skey *k, msg *m) {
  cstate *cs = conc_cs(L);
  const char *why;
  sentry *e;
  msg *old = NULL;
  pthread_mutex_lock(&t->mu);
  why = wait_idle(t, cs, k);
  if (why) {
    pthread_mutex_unlock(&t->mu);
    msg_free(m);
    raise_wait(L, cs, why);
  }
  if (m == NULL) {
    sentry **p = find(t, k);
    if (p) {
      old = (*p)->val;
      remove_entry(t, k);
    }
  } else {
    e = find_or_add(t, k);
    if (e == NULL) {
      pthread_mutex_unlock(&t->mu);
      msg_free(m);
      luaL_error(L, "not enough memory");
    }
    old = e->val;
    e->val = m;
  }
  pthread_mutex_unlock(&t->mu);
  msg_free(old);
}

static int shared_newindex(lua_State *L) {
  shtab *t = check_shared(L);
  skey k;
  msg *m = NULL;
  key_get(L, 2, &k);
  if (!lua_isnil(L, 3)) m = msg_encode(L, conc_cs(L), 3, 1, "value");
  store(L, t, &k, m);
  return 0;
}

static int shared_len(lua_State *L) {
  shtab *t = check_shared(L);
  lua_Integer n = 0;
  pthread_mutex_lock(&t->mu);
  for (;;) {
    skey k;
    sentry **p;
    lua_Integer i = n + 1;
    k.buf[0] = 'i';
    memcpy(k.buf + 1, &i, sizeof i);
    k.p = k.buf;
    k.n = 1 + sizeof i;
    k.hash = fnv(k.p, k.n);
    p = find(t, &k);
    if (p == NULL || (*p)->val == NULL) break;
    n++;
  }
  pthread_mutex_unlock(&t->mu);
  lua_pushinteger(L, n);
  return 1;
}

/* A snapshot of the entries, in a box that frees its copies when
** collected. */
typedef struct snap {
  size_t n;
  sentry **e;                  /* copies: key bytes and a value copy */
} snap;

static int snap_gc(lua_State *L) {
  snap *s = lua_touserdata(L, 1);
  for (size_t i = 0; i < s->n; i++) {
    if (s->e[i]) {
      msg_free(s->e[i]->val);
      free(s->e[i]);
    }
  }
  free(s->e);
  s->n = 0;
  s->e = NULL;
  return 0;
}

static int shared_pairs(lua_State *L) {
  shtab *t = check_shared(L);
  cstate *cs = conc_cs(L);
  snap *s = lua_newuserdatauv(L, sizeof *s, 0);
  size_t i, j = 0;
  int oom = 0;
  s->n = 0;
  s->e = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, snap_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  pthread_mutex_lock(&t->mu);
  s->e = calloc(t->count ? t->count : 1, sizeof *s->e);
  if (s->e == NULL) oom = 1;
  for (i = 0; i < t->nb && !oom; i++) {
    for (sentry *e = t->b[i]; e && !oom; e = e->next) {
      sentry *c;
      if (e->val == NULL) continue;
      c = malloc(sizeof *c + e->klen);
      if (c == NULL || (c->val = msg_dup(e->val)) == NULL) {
        free(c);
        oom = 1;
        break;
      }
      c->klen = e->klen;
      memcpy(c->key, e->key, e->klen);
      s->e[j++] = c;
      s->n = j;
    }
  }
  pthread_mutex_unlock(&t->mu);
  if (oom) return luaL_error(L, "not enough memory");
  lua_createtable(L, 0, (int)s->n);
  for (i = 0; i < s->n; i++) {
    msg *v = s->e[i]->val;
    key_push(L, s->e[i]);
    s->e[i]->val = NULL;
    msg_push(L, cs, v);
    lua_rawset(L, -3);
  }
  {
    int isconc;
    lua_pushcfunction(L, cfunc_lookup("_G.next", 7, &isconc));
    lua_insert(L, -2);
  }
  lua_pushnil(L);
  return 3;
}

/* s:incr(k [, n]): adds n (default 1) to a number (absent: 0) at once. */
static int shared_incr(lua_State *L) {
  shtab *t = check_shared(L);
  cstate *cs = conc_cs(L);
  skey k;
  lua_Integer ii = 0, di = 1;
  lua_Number fi = 0, df = 1;
  int dint = 1, kind;
  const char *why, *bad = NULL;
  sentry *e;
  msg *nm;
  key_get(L, 2, &k);
  if (!lua_isnoneornil(L, 3)) {
    luaL_checknumber(L, 3);
    dint = lua_isinteger(L, 3);
    if (dint) di = lua_tointeger(L, 3);
    else df = lua_tonumber(L, 3);
  }
  pthread_mutex_lock(&t->mu);
  why = wait_idle(t, cs, &k);
  if (why) {
    pthread_mutex_unlock(&t->mu);
    return raise_wait(L, cs, why);
  }
  e = find_or_add(t, &k);
  if (e == NULL) {
    pthread_mutex_unlock(&t->mu);
    return luaL_error(L, "not enough memory");
  }
  kind = e->val ? msg_tonumber(e->val, &ii, &fi) : 1;
  if (kind == 0) {
    bad = "value is not a number";
    nm = NULL;
  } else if (kind == 1 && dint) {
    ii = (lua_Integer)((lua_Unsigned)ii + (lua_Unsigned)di);
    nm = msg_fromnumber(1, ii, 0);
  } else {
    lua_Number a = kind == 1 ? (lua_Number)ii : fi;
    fi = a + (dint ? (lua_Number)di : df);
    nm = msg_fromnumber(0, 0, fi);
    kind = 2;
  }
  if (nm) {
    msg_free(e->val);
    e->val = nm;
  } else if (bad == NULL) {
    bad = "not enough memory";
  }
  if (e->val == NULL) remove_entry(t, &k);
  pthread_mutex_unlock(&t->mu);
  if (bad) return luaL_error(L, "cannot incr: %s", bad);
  if (kind == 1) lua_pushinteger(L, ii);
  else lua_pushnumber(L, fi);
  return 1;
}

/* s:update(k, fn): stores fn(old value) with the entry held; returns the
** new value. An error in fn leaves the old value. */
static int shared_update(lua_State *L) {
  shtab *t = check_shared(L);
  cstate *cs = conc_cs(L);
  skey k;
  const char *why;
  sentry *e;
  msg *old = NULL, *nm = NULL;
  int st;
  key_get(L, 2, &k);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  pthread_mutex_lock(&t->mu);
  why = wait_idle(t, cs, &k);
  if (why) {
    pthread_mutex_unlock(&t->mu);
    return raise_wait(L, cs, why);
  }
  e = find_or_add(t, &k);
  if (e == NULL || (e->val && (old = msg_dup(e->val)) == NULL)) {
    if (e && e->val == NULL) remove_entry(t, &k);
    pthread_mutex_unlock(&t->mu);
    return luaL_error(L, "not enough memory");
  }
  e->busy = 1;
  e->updater = cs;
  pthread_mutex_unlock(&t->mu);
  lua_pushvalue(L, 3);
  if (old) msg_push(L, cs, old);
  else lua_pushnil(L);
  st = lua_pcall(L, 1, 1, 0);
  if (st == LUA_OK && !lua_isnil(L, -1)) {
    char err[256];
    if (marshal_encode(L, cs, lua_gettop(L), 1, &cs->scratch, 0, "value", err,
                       sizeof err) != 0) {
      lua_pushstring(L, err);
      st = LUA_ERRRUN;
    } else if ((nm = msg_seal(&cs->scratch)) == NULL) {
      lua_pushliteral(L, "not enough memory");
      st = LUA_ERRMEM;
    }
  }
  pthread_mutex_lock(&t->mu);
  e = *find(t, &k);           /* busy entries are never removed */
  e->busy = 0;
  e->updater = NULL;
  if (st == LUA_OK) {
    old = e->val;
    e->val = nm;
  } else {
    old = NULL;
  }
  if (e->val == NULL) remove_entry(t, &k);
  wake_all(t);
  pthread_mutex_unlock(&t->mu);
  msg_free(old);
  if (st != LUA_OK) return lua_error(L);
  return 1;
}

static int shared_tostring(lua_State *L) {
  shtab *t = check_shared(L);
  size_t n;
  pthread_mutex_lock(&t->mu);
  n = t->count;
  pthread_mutex_unlock(&t->mu);
  lua_pushfstring(L, "<shared %d keys>", (int)n);
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
  cs_setfuncs(L, cs, meta);
  lua_pushlightuserdata(L, cs);
  lua_newtable(L);
  cs_setfuncs(L, cs, shared_methods);
  lua_pushcclosure(L, shared_meta_index, 2);
  lua_setfield(L, -2, "__index");
}

const kindinfo shared_kind = {
    "conc.shared", "shared", 0, 1, shtab_destroy, shared_methods, NULL,
    shared_tostring, NULL, NULL, NULL, shared_meta};
