/*
** names.c
** The C functions that may cross between states, by name.
**
** A C function is only a pointer, meaningless to another state unless
** both agree on what it is: the functions of the standard libraries (found
** once by walking a scratch state) and of conc are named ("string.format",
** "conc.channel", "conc.channel:send"), and only those cross. The decoder
** turns a name back into the receiver's own function of that name.
** The layers above register their functions here (init.c, with
** conc_names_register and conc_names_replace) before the first state
** opens; names.c reads nobody's tables.
*/

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "values.h"

static cfname *byptr, *byname;
static int ncf, nbyname;          /* byptr has aliases too: ncf >= nbyname */
static pthread_once_t names_once = PTHREAD_ONCE_INIT;

/* What the layers above registered (init.c, before any state opens):
** conc's functions, and conclua's replacements of standard ones. */
static cfname *regs;
static int nregs, capregs;
static pthread_mutex_t regs_mu = PTHREAD_MUTEX_INITIALIZER;

/* A standard function conclua replaces in every state it opens: the
** standard one still crosses (a function that captured 'pcall' before
** require "conc"), by its name, and arrives as conclua's. */
static int is_replaced(const char *name) {
  for (int i = 0; i < nregs; i++)
    if (regs[i].closure < 0 && strcmp(name, regs[i].name) == 0) return 1;
  return 0;
}

static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)((const cfname *)a)->f;
  uintptr_t y = (uintptr_t)((const cfname *)b)->f;
  return x < y ? -1 : x > y;
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(((const cfname *)a)->name, ((const cfname *)b)->name);
}

static void names_add(cfname **v, int *n, int *cap, lua_CFunction f,
                      const char *name, int isconc, int closure) {
  if (*n == *cap) {
    *cap = *cap ? *cap * 2 : 256;
    *v = realloc(*v, sizeof **v * (size_t)*cap);
    if (*v == NULL) abort();
  }
  (*v)[*n].f = f;
  (*v)[*n].name = strdup(name);
  if ((*v)[*n].name == NULL) abort();
  (*v)[*n].isconc = isconc;
  (*v)[*n].closure = closure;
  (*n)++;
}

static void add_reg(lua_CFunction f, const char *name, int isconc,
                    int replaces) {
  pthread_mutex_lock(&regs_mu);
  names_add(&regs, &nregs, &capregs, f, name, isconc, replaces ? -1 : 0);
  pthread_mutex_unlock(&regs_mu);
}

void conc_names_register(const char *prefix, const luaL_Reg *l, int isconc) {
  char name[128];
  for (; l && l->name; l++) {
    snprintf(name, sizeof name, "%s%s", prefix, l->name);
    add_reg(l->func, name, isconc, 0);
  }
}

void conc_names_replace(lua_CFunction f, const char *name) {
  add_reg(f, name, 0, 1);
}

static void names_init(void) {
  cfname *v = NULL, *alias = NULL;
  int cap = 0, nalias = 0, acap = 0;
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
          if (is_replaced(name))
            names_add(&alias, &nalias, &acap, lua_tocfunction(L, -1), name,
                      0, closure);
          else
            names_add(&v, &ncf, &cap, lua_tocfunction(L, -1), name, 0,
                      closure);
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_close(L);
  for (int i = 0; i < nregs; i++)      /* conclua's own, in their place */
    names_add(&v, &ncf, &cap, regs[i].f, regs[i].name, regs[i].isconc, 0);
  nbyname = ncf;
  byname = malloc(sizeof *byname * (size_t)ncf);
  if (byname == NULL) abort();
  memcpy(byname, v, sizeof *v * (size_t)ncf);
  for (int i = 0; i < nalias; i++)     /* named, but not looked up by name */
    names_add(&v, &ncf, &cap, alias[i].f, alias[i].name, 0, alias[i].closure);
  for (int i = 0; i < nalias; i++) free((char *)alias[i].name);
  free(alias);
  byptr = v;
  qsort(byptr, (size_t)ncf, sizeof *byptr, cmp_ptr);
  qsort(byname, (size_t)nbyname, sizeof *byname, cmp_name);
}

const char *conc_cfunc_name(lua_CFunction f, int *isconc) {
  cfname key, *hit;
  pthread_once(&names_once, names_init);
  key.f = f;
  hit = bsearch(&key, byptr, (size_t)ncf, sizeof key, cmp_ptr);
  if (hit == NULL) return NULL;
  *isconc = hit->isconc;
  return hit->name;
}

const cfname *conc_cfunc_find(const char *name) {
  cfname key;
  pthread_once(&names_once, names_init);
  key.name = name;
  return bsearch(&key, byname, (size_t)nbyname, sizeof key, cmp_name);
}

lua_CFunction conc_cfunc_lookup(const char *name, size_t len, int *isconc) {
  char tmp[128];
  const cfname *hit;
  if (len >= sizeof tmp) return NULL;
  memcpy(tmp, name, len);
  tmp[len] = '\0';
  hit = conc_cfunc_find(tmp);
  if (hit == NULL) return NULL;
  *isconc = hit->isconc;
  return hit->f;
}

/* The map from standard library tables to their names (marshal.c). */
void conc_names_libmap(lua_State *L) {
  static const char *const libs[] = {
      "_G", "string", "table", "math", "io", "os", "coroutine", "utf8",
      "debug", "package", "conc", NULL};
  lua_newtable(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  for (int i = 0; libs[i]; i++) {
    if (lua_getfield(L, -1, libs[i]) == LUA_TTABLE && i > 0) {
      lua_pushstring(L, libs[i]);
      lua_rawset(L, -4);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &conc_libskey);
}
