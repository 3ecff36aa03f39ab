/*
** mpiapi.h
** The narrow interface between the core and conc.mpi (vm/mpi/mpi.c).
**
** conc.mpi is a C module of its own that links MPI; the core never does.
** It must not link a second copy of the core either: loaded into conclua
** (or into lua5.4 next to conc.so), a copy of its own would have its own
** objects, kinds, bytecode key and runtime list, and the channels it made
** would mean nothing to the conc.select of the core that runs the script.
** So the module calls into the core that is loaded, through this table of
** functions, which conc._mpiapi() returns as a light userdata. These are
** every core function conc.mpi calls; it uses nothing else but the Lua
** API. Objects are opaque to it, and so is the state's runtime ('cs',
** the second value conc._mpiapi() returns in that state), which the
** functions that touch a Lua state take.
*/

#ifndef conc_mpiapi_h
#define conc_mpiapi_h

#include <stddef.h>
#include <lua.h>

#define CONC_MPIAPI_VERSION 1

typedef struct conc_mpiapi {
  int version;                 /* CONC_MPIAPI_VERSION */
  const char *conclua;         /* CONCLUA_VERSION of the core */
  const char *lua;             /* LUA_RELEASE the core was built with */
  int (*format)(void);         /* the marshal format's version */
  /* Encodes the n values at L[first..] for another rank (no object at
  ** all; the words of MARSHAL_RANK) into a malloc'd block (*out, *outn,
  ** the caller's to free): 0, or -1 with the message in err. Never
  ** raises. */
  int (*encode)(lua_State *L, void *cs, int first, int n, const char *root,
                char **out, size_t *outn, char *err, size_t errsz);
  /* The 16-byte key that guards bytecode in messages (marshal.c). */
  void (*key)(unsigned char key[16]);
  void (*setkey)(const unsigned char key[16]);
  /* Unbounded channels fed from any thread with no Lua state: make
  ** (one reference, the caller's; NULL out of memory); put a copy of
  ** encoded bytes (0, or -1 closed or out of memory); shut (close); len;
  ** push a Lua handle of it (a conc.channel) on L; release a reference. */
  void *(*chan_make)(void);
  int (*chan_put)(void *ch, const char *p, size_t n);
  /* the same, taking over a malloc'd block p (freed either way): no copy
  ** of a big message */
  int (*chan_give)(void *ch, char *p, size_t n);
  void (*chan_shut)(void *ch);
  size_t (*chan_len)(void *ch);
  void (*push)(lua_State *L, void *cs, void *ch);
  void (*release)(void *ch);
  /* moves what is queued in one channel to the end of another */
  void (*chan_move)(void *from, void *to);
} conc_mpiapi;

#endif
