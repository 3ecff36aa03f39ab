/*
** init.h
** The init layer (init.c): the table of kinds, the conc library and the
** public API that opens everything; used by the command layer (main.c,
** repl.c, pretty.c).
*/

#ifndef conc_init_h
#define conc_init_h

#include "modules.h"

/* The stdlib: Lua sources built into the library (generated). */
typedef struct stdlib_mod {
  const char *name;
  const char *src;
  size_t len;
} stdlib_mod;
extern const stdlib_mod conc_stdlib[];

/* init.c */
/* Registers the kinds and names with the layers below; once (host_open
** calls it: every state opens through there). */
void conc_init(void);
extern const luaL_Reg conc_funcs[];            /* the conc table */
int conc_print(lua_State *L);                  /* print, a line at once */
int conc_spawn_thread(lua_State *L);           /* the globals */
int conc_spawn_process(lua_State *L);
/* Gives a state opened by luaL_openlibs everything conc adds: the conc
** table (global and package.loaded.conc), spawn_thread, spawn_process,
** the stdlib searcher, the coroutine functions, the library map. */
void conc_install(lua_State *L, cstate *cs);

#endif
