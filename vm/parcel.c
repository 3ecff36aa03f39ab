/*
** parcel.c
** Packed values: marshalled once where they are made, unpacked once where
** they are used, carried unopened in between (the pool's arguments and
** results).
**
** DESIGN. A pool's manager routes every argument and result between the
** threads that submit work and the workers that do it, and must not pay
** for copying them: a map's items are packed by the submitter (one encode,
** as a send would do), ride through the manager and a worker's inbox as
** they are, and are unpacked by the worker (one decode); results go back
** the same way. Packed values are a plain string of marshalled bytes when
** they hold no object (the common case, and the only one between
** processes: remote bytes name shared objects by uid), and otherwise a
** parcel: a refcounted object that holds the sealed message with its
** references, so a channel passed as an argument comes along, and that
** crosses between the threads of one process by reference like any
** handle. Packing never raises for a value that cannot be copied: it
** returns nil and the message ("cannot transfer ... (args[1])"), for the
** pool to put in its own words. Unpacking does not consume: the same
** bytes can be unpacked again (a future's result, read twice).
*/

#include <stdlib.h>
#include <string.h>

#include "values.h"

typedef struct parcel {
  cobj obj;
  msg *m;                      /* owned; holds the references */
} parcel;

static void parcel_destroy(cobj *o) {
  parcel *p = (parcel *)o;
  conc_msg_free(p->m);
  free(p);
}

/* kit.pack(remote, root, ...) -> packed values, or nil and the message.
** 'root' names the values in that message as conc_marshal_encode does
** ("args[%d]", "spawn", "result"). remote: true for another process of
** the tree, "rank" for another MPI rank (no object at all). */
static int parcel_pack(lua_State *L) {
  cstate *cs = conc_cs(L);
  int remote = lua_type(L, 1) == LUA_TSTRING
                   ? MARSHAL_REMOTE | MARSHAL_NOSHM | MARSHAL_RANK
                   : lua_toboolean(L, 1) ? MARSHAL_REMOTE : 0;
  const char *root = luaL_checkstring(L, 2);
  int n = lua_gettop(L) - 2;
  char err[512];
  parcel *p;
  msg *m;
  if (conc_marshal_encode(L, cs, 3, n, &cs->scratch, remote,
                     root, err, sizeof err)) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  if (cs->scratch.nrefs == 0) {       /* bytes only: a string */
    lua_pushlstring(L, cs->scratch.p, cs->scratch.n);
    conc_mbuf_reset(&cs->scratch);
    return 1;
  }
  p = malloc(sizeof *p);
  m = p ? conc_msg_seal(&cs->scratch) : NULL;
  if (m == NULL) {
    free(p);
    conc_mbuf_reset(&cs->scratch);
    return luaL_error(L, "not enough memory");
  }
  conc_obj_init(&p->obj, K_PARCEL);
  p->m = m;
  conc_obj_push(L, cs, &p->obj);
  conc_obj_release(&p->obj);               /* the handle holds it */
  return 1;
}

/* The bytes and references of the packed values at idx. */
static void parcel_view(lua_State *L, int idx, const char **data, size_t *n,
                        cobj ***refs, int *nrefs) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    *data = lua_tolstring(L, idx, n);
    *refs = NULL;
    *nrefs = 0;
  } else {
    parcel *p = (parcel *)conc_obj_check(L, idx, K_PARCEL);
    *data = p->m->data;
    *n = p->m->n;
    *refs = p->m->refs;
    *nrefs = p->m->nrefs;
  }
}

/* kit.unpack(packed) -> the values. */
static int parcel_unpack(lua_State *L) {
  cstate *cs = conc_cs(L);
  const char *data;
  size_t n;
  cobj **refs;
  int nrefs, k;
  char err[160];
  parcel_view(L, 1, &data, &n, &refs, &nrefs);
  k = conc_marshal_decode(L, cs, data, n, refs, nrefs, err, sizeof err);
  if (k < 0) {                        /* no position: the pool words it */
    lua_pushstring(L, err);
    return lua_error(L);
  }
  return k;
}

msg *conc_parcel_tomsg(lua_State *L, int idx) {
  const char *data;
  size_t n;
  cobj **refs;
  int nrefs;
  msg *m;
  parcel_view(L, idx, &data, &n, &refs, &nrefs);
  if (nrefs == 0) {
    m = conc_msg_copy(data, n);
  } else {
    parcel *p = (parcel *)conc_obj_check(L, idx, K_PARCEL);
    m = conc_msg_dup(p->m);
  }
  if (m == NULL) luaL_error(L, "not enough memory");
  return m;
}

const luaL_Reg conc_parcel_funcs[] = {
    {"pack", parcel_pack}, {"unpack", parcel_unpack}, {NULL, NULL}};

const kindinfo conc_parcel_kind = {
    .kind = K_PARCEL,
    .tname = "conc.parcel",
    .name = "parcel",
    .local = 1,
    .destroy = parcel_destroy,
    .pinned = 1};
