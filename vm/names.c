/*
** names.c
** The C functions that may cross between states, by name.
**
** A C function is only a pointer, meaningless to another state unless
** both agree on what it is: the functions of the standard libraries (found
** once by walking a scratch state) and of conc are named ("string.format",
** "conc.channel", "conc.channel:send"), and only those cross. The decoder
** turns a name back into the receiver's own function of that name.
*/

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ------------------------------------------------------------ names */

/* The C functions allowed to cross: every function of the standard
** libraries (found by walking a scratch state once) and every function
** of conc, by name. */

static cfname *byptr, *byname;
static int ncf;
static pthread_once_t names_once = PTHREAD_ONCE_INIT;


static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)((const cfname *)a)->f;
  uintptr_t y = (uintptr_t)((const cfname *)b)->f;
  return x < y ? -1 : x > y;
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(((const cfname *)a)->name, ((const cfname *)b)->name);
}

static void names_add(cfname **v, int *cap, lua_CFunction f,
                      const char *name, int isconc, int closure) {
  if (ncf == *cap) {
    *cap = *cap ? *cap * 2 : 256;
    *v = realloc(*v, sizeof **v * (size_t)*cap);
    if (*v == NULL) abort();
  }
  (*v)[ncf].f = f;
  (*v)[ncf].name = strdup(name);
  if ((*v)[ncf].name == NULL) abort();
  (*v)[ncf].isconc = isconc;
  (*v)[ncf].closure = closure;
  ncf++;
}

static void names_init(void) {
  cfname *v = NULL;
  int cap = 0;
  char name[128];
  lua_State *L = luaL_newstate();
  if (L == NULL) abort();
  luaL_openlibs(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, -2)) {          /* each library */
    if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1)) {
      const char *lib = lua_tostring(L, -2);
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
          int closure = lua_getupvalue(L, -1, 1) != NULL;
          if (closure) lua_pop(L, 1);
          snprintf(name, sizeof name, "%s.%s", lib, lua_tostring(L, -2));
          if (strcmp(name, "coroutine.resume") != 0 &&
              strcmp(name, "coroutine.wrap") != 0 &&
              strcmp(name, "_G.print") != 0)
            names_add(&v, &cap, lua_tocfunction(L, -1), name, 0, closure);
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_close(L);
  /* conclua's own coroutine.resume and wrap replace the standard ones */
  names_add(&v, &cap, thread_co_resume, "coroutine.resume", 0, 0);
  names_add(&v, &cap, thread_co_wrap, "coroutine.wrap", 0, 0);
  names_add(&v, &cap, conc_print, "_G.print", 0, 0);
  for (const luaL_Reg *r = conc_funcs; r->name; r++) {
    snprintf(name, sizeof name, "conc.%s", r->name);
    names_add(&v, &cap, r->func, name, 1, 0);
  }
  names_add(&v, &cap, conc_spawn_thread, "_G.spawn_thread", 1, 0);
  names_add(&v, &cap, conc_spawn_process, "_G.spawn_process", 1, 0);
  for (int k = 0; k < K_NKINDS; k++) {
    const luaL_Reg *r = conc_kinds[k]->methods;
    for (; r && r->name; r++) {
      snprintf(name, sizeof name, "conc.%s:%s", conc_kinds[k]->name, r->name);
      names_add(&v, &cap, r->func, name, 1, 0);
    }
  }
  byname = malloc(sizeof *byname * (size_t)ncf);
  if (byname == NULL) abort();
  memcpy(byname, v, sizeof *v * (size_t)ncf);
  byptr = v;
  qsort(byptr, (size_t)ncf, sizeof *byptr, cmp_ptr);
  qsort(byname, (size_t)ncf, sizeof *byname, cmp_name);
}

const char *cfunc_name(lua_CFunction f, int *isconc) {
  cfname key, *hit;
  pthread_once(&names_once, names_init);
  key.f = f;
  hit = bsearch(&key, byptr, (size_t)ncf, sizeof key, cmp_ptr);
  if (hit == NULL) return NULL;
  *isconc = hit->isconc;
  return hit->name;
}

const cfname *cfunc_find(const char *name) {
  cfname key;
  pthread_once(&names_once, names_init);
  key.name = name;
  return bsearch(&key, byname, (size_t)ncf, sizeof key, cmp_name);
}

lua_CFunction cfunc_lookup(const char *name, size_t len, int *isconc) {
  char tmp[128];
  const cfname *hit;
  if (len >= sizeof tmp) return NULL;
  memcpy(tmp, name, len);
  tmp[len] = '\0';
  hit = cfunc_find(tmp);
  if (hit == NULL) return NULL;
  *isconc = hit->isconc;
  return hit->f;
}

