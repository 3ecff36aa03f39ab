/*
** mpiapi.c
** conc._mpiapi(): the table of core functions that conc.mpi calls (see
** mpiapi.h for why it goes through a table).
*/

#include <stdlib.h>
#include <string.h>

#include "modules.h"
#include "mpiapi.h"

static int api_encode(lua_State *L, void *cs, int first, int n,
                      const char *root, char **out, size_t *outn, char *err,
                      size_t errsz) {
  mbuf b;
  conc_mbuf_init(&b);
  if (conc_marshal_encode(L, cs, first, n, &b,
                     MARSHAL_REMOTE | MARSHAL_NOSHM | MARSHAL_RANK, root, err,
                     errsz)) {
    conc_mbuf_free(&b);
    return -1;
  }
  *outn = b.n;
  *out = b.p;                  /* realloc'd memory: the caller frees it */
  b.p = NULL;
  b.n = b.cap = 0;
  conc_mbuf_free(&b);
  if (*out == NULL && (*out = malloc(1)) == NULL) {
    snprintf(err, errsz, "not enough memory");
    return -1;
  }
  return 0;
}

static void *api_chan_make(void) {
  return conc_chan_make();
}

static int api_chan_put(void *ch, const char *p, size_t n) {
  msg *m = conc_msg_copy(p, n);
  if (m == NULL) return -1;
  return conc_chan_put(ch, m);
}

static int api_chan_give(void *ch, char *p, size_t n) {
  mbuf b;
  msg *m;
  conc_mbuf_init(&b);
  b.p = p;
  b.n = b.cap = n;
  m = conc_msg_seal(&b);            /* moves a big block, copies a small one */
  conc_mbuf_free(&b);
  if (m == NULL) return -1;
  return conc_chan_put(ch, m);
}

static void api_chan_shut(void *ch) {
  conc_chan_shut(ch);
}

static size_t api_chan_len(void *ch) {
  return conc_chan_count(ch);
}

static void api_push(lua_State *L, void *cs, void *ch) {
  conc_obj_push(L, cs, ch);
}

static void api_release(void *ch) {
  conc_obj_release(ch);
}

static void api_chan_move(void *from, void *to) {
  conc_chan_move(from, to);
}

static const conc_mpiapi api = {
    CONC_MPIAPI_VERSION, CONCLUA_VERSION, LUA_RELEASE, conc_marshal_format, api_encode,
    conc_marshal_key, conc_marshal_setkey, api_chan_make, api_chan_put, api_chan_give,
    api_chan_shut,
    api_chan_len, api_push, api_release, api_chan_move};

/* conc._mpiapi() -> the table and the state's runtime, light userdata. */
int conc_mpiapi_get(lua_State *L) {
  cstate *cs = conc_cs(L);
  lua_pushlightuserdata(L, (void *)&api);
  lua_pushlightuserdata(L, cs);
  return 2;
}
