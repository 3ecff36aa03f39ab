/*
** values.h
** The values layer: what crosses from one state to another. The names of
** the C functions that may cross (names.c), the encoder and decoder of
** values (marshal.c), packed values (parcel.c). It uses the core below.
*/

#ifndef conc_values_h
#define conc_values_h

#include "core.h"

/* ------------------------------------------------------------ marshal.c */

enum {
  MARSHAL_REMOTE = 1,     /* for another process: no local object refs */
  MARSHAL_NOSHM = 2,      /* for an unrelated process: no objects at all */
  MARSHAL_RANK = 4        /* with NOSHM: for another MPI rank (the words) */
};

/* Encodes the 'n' values at L[first..first+n-1]. 'root' names them for
** errors: "args" gives args[1], args[2]...; "fn" names a single value.
** Returns 0, or -1 with an error message in 'err' and 'b' reset; out of
** memory, the message is "not enough memory" (raise it with conc_msg_raise).
** Never raises; b stays the caller's. */
int conc_marshal_encode(lua_State *L, struct cstate *cs, int first, int n,
                   mbuf *b, int flags, const char *root,
                   char *err, size_t errsz);
/* Decodes a buffer made by conc_marshal_encode, pushing its values. Returns
** how many, or -1 with a message in err (nothing pushed). Safe against
** any bytes. 'refs' must be the buffer's refs (local) or NULL (remote). */
int conc_marshal_decode(lua_State *L, struct cstate *cs, const char *p,
                        size_t n, cobj **refs, int nrefs, char *err,
                        size_t errsz);
int conc_marshal_format(void);         /* the format's version */
/* If the n bytes at p are a message of one number: 1 integer (in *i),
** 2 float (in *f); else 0. */
int conc_marshal_tonumber(const char *p, size_t n, lua_Integer *i,
                          lua_Number *f);
/* Writes a message of one number, MARSHAL_NUMLEN bytes; its last 8 are
** the number's. */
#define MARSHAL_NUMLEN 12
void conc_marshal_number(char out[MARSHAL_NUMLEN], int isint, lua_Integer i,
                    lua_Number f);
/* Decodes m into L and frees it; on failure raises with the message
** (m is freed either way). Returns the number of values pushed. */
int conc_msg_push(lua_State *L, struct cstate *cs, msg *m);
/* Encodes n values into a message, raising a Lua error on failure. */
msg *conc_msg_encode(lua_State *L, struct cstate *cs, int first, int n,
                const char *root);
/* ------------------------------------------------------------ names.c */


/* Names of the C functions that may cross: standard libraries and conc
** (names.c). */
typedef struct cfname {
  lua_CFunction f;
  const char *name;
  int isconc;                /* 1: a conc function (needs the cstate) */
  int closure;               /* 1: a standard closure, fetch it by name */
} cfname;
/* Registers the functions of l as prefix..name ("conc.channel:" "send");
** isconc: they need the cstate. Before the first state opens. */
void conc_names_register(const char *prefix, const luaL_Reg *l, int isconc);
/* f replaces the standard function of that name ("coroutine.resume") in
** the states conclua opens. */
void conc_names_replace(lua_CFunction f, const char *name);
const cfname *conc_cfunc_find(const char *name);
/* Gives L its map from library tables to their names (conc_libskey). */
void conc_names_libmap(lua_State *L);
const char *conc_cfunc_name(lua_CFunction f, int *isconc);
lua_CFunction conc_cfunc_lookup(const char *name, size_t len, int *isconc);

/* ------------------------------------------------------------ parcel.c */

/* Packed values (kit.pack, kit.unpack). */
extern const luaL_Reg conc_parcel_funcs[];
/* A new message holding a copy of the packed values at idx (a string or
** a parcel); raises on a bad argument or out of memory. */
msg *conc_parcel_tomsg(lua_State *L, int idx);
extern const kindinfo conc_parcel_kind;

#endif
