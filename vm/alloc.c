/*
** alloc.c
** The allocator of worker states: a fresh state packed in one block.
**
** DESIGN. A fresh lua_State makes a couple of hundred small objects
** (strings of the metamethod names and reserved words, tables, closures),
** and a worker that just waits on an event makes few more. With malloc
** each carries a header and a rounding, about a quarter of the whole. Lua
** tells the allocator the size of every block it frees or resizes, so
** blocks need no header at all: this allocator carves small blocks (up to
** SMALL bytes) one after the other from a single block of ARENA bytes,
** keeps freed ones on a list per size class for reuse, and hands bigger
** blocks, and everything once the block is used up, to malloc. The block
** is sized so that a lazy worker holding a couple of handles (waiting on
** an event, say) fits: its thread then calls malloc not once while it
** waits, which spares it a malloc arena's per-thread cache and pages.
** One state is used by one thread at a time, so nothing here locks. The
** block is freed when the state closes.
*/

#include <stdlib.h>
#include <string.h>

#include "os.h"

#define SMALL 2048
#define FINE 256                  /* 8-byte classes up to here, then 64 */
#define NCLASS (FINE / 8 + (SMALL - FINE) / 64)
#ifndef ARENA
#define ARENA 9216      /* 8 KiB overflowed by ~0.5 KiB for such a worker */
#endif

typedef struct arena {
  char *base, *top, *end;       /* the block: carved up to top */
  void *free[NCLASS];           /* freed blocks by class: a list through them */
  int warn;                     /* warnings: 0 off, 1 on, 2 continuing */
} arena;

static size_t class_of(size_t n, size_t *sz) {
  if (n <= FINE) {
    *sz = (n + 7) & ~(size_t)7;
    return *sz / 8 - 1;
  }
  *sz = (n + 63) & ~(size_t)63;
  return FINE / 8 + (*sz - FINE) / 64 - 1;
}

static int in_arena(arena *a, void *p) {
  return (char *)p >= a->base && (char *)p < a->end;
}

/* A small block from the arena, or NULL when it is used up. */
static void *small_alloc(arena *a, size_t n) {
  size_t sz, k = class_of(n, &sz);
  void *p = a->free[k];
  if (p) {
    a->free[k] = *(void **)p;
    return p;
  }
  if ((size_t)(a->end - a->top) < sz) return NULL;
  p = a->top;
  a->top += sz;
  return p;
}

static void small_free(arena *a, void *p, size_t n) {
  size_t sz, k = class_of(n, &sz);
  *(void **)p = a->free[k];
  a->free[k] = p;
}

/* A block of the arena is always small, and Lua always passes its size:
** in_arena tells, by address, where any block lives. */
static void *arena_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  arena *a = ud;
  int mine = ptr != NULL && in_arena(a, ptr);
  void *np;
  if (nsize == 0) {
    if (mine) small_free(a, ptr, osize);
    else free(ptr);
    return NULL;
  }
  if (!mine) {
    if (ptr == NULL && nsize <= SMALL && (np = small_alloc(a, nsize)) != NULL)
      return np;
    return realloc(ptr, nsize);
  }
  if (nsize <= SMALL) {
    size_t s1, s2;
    if (class_of(osize, &s1) == class_of(nsize, &s2)) return ptr;
    np = small_alloc(a, nsize);
  } else {
    np = NULL;
  }
  if (np == NULL && (np = malloc(nsize)) == NULL) return NULL;
  memcpy(np, ptr, osize < nsize ? osize : nsize);
  small_free(a, ptr, osize);
  return np;
}

static int panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  lua_writestringerror("PANIC: unprotected error in call to Lua API (%s)\n",
                       msg ? msg : "error object is not a string");
  return 0;
}

/* Warnings as the stock lua command shows them: off until "@on". */
static void warnf(void *ud, const char *msg, int tocont) {
  arena *a = ud;
  if (a->warn != 2 && !tocont && *msg == '@') {      /* a control message */
    if (strcmp(msg, "@off") == 0) a->warn = 0;
    else if (strcmp(msg, "@on") == 0) a->warn = 1;
    return;
  }
  if (a->warn == 0) return;
  if (a->warn == 1) lua_writestringerror("%s", "Lua warning: ");
  lua_writestringerror("%s", msg);
  if (tocont) {
    a->warn = 2;
  } else {
    lua_writestringerror("%s", "\n");
    a->warn = 1;
  }
}

/* A new state with its own arena; close it with conc_state_close. The arena's
** record sits at the start of its block: one malloc in all. */
lua_State *conc_state_new(void) {
  char *block = malloc(ARENA);
  size_t hdr = (sizeof(arena) + 15) & ~(size_t)15;
  arena *a;
  lua_State *L;
  if (block == NULL) return NULL;
  a = (arena *)(void *)block;
  memset(a, 0, sizeof *a);
  a->base = block + hdr;
  a->top = a->base;
  a->end = block + ARENA;
  L = lua_newstate(arena_alloc, a);
  if (L == NULL) {
    free(block);
    return NULL;
  }
  lua_atpanic(L, panic);
  lua_setwarnf(L, warnf, a);
  return L;
}

void conc_state_close(lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  lua_close(L);
  if (f == arena_alloc) free(ud);       /* the block starts with the arena */
}
