/*
** alloc.c
** The allocator of worker states: small blocks packed in one region.
**
** DESIGN. A fresh lua_State makes a couple of hundred small objects
** (strings of the metamethod names and reserved words, tables, closures),
** and a worker that just waits on an event makes few more. With malloc
** each carries a header and a rounding, about a quarter of the whole. Lua
** tells the allocator the size of every block it frees or resizes, so
** blocks need no header at all: this allocator carves small blocks (up to
** SMALL bytes, in 8-byte classes) from a region of a few chunks (4 KB,
** then doubling, MAXARENA in all), keeps freed ones on a list per class
** for reuse, and hands bigger blocks, and small ones once the region is
** full, to malloc. The region is freed whole when the state closes. One
** state is used by one thread at a time, so nothing here locks.
*/

#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SMALL 2048
#define FINE 256                  /* 8-byte classes up to here, then 64 */
#define NCLASS (FINE / 8 + (SMALL - FINE) / 64)
#define CHUNK 4096
#define MAXARENA (60 * 1024)      /* so in_arena looks at 4 chunks at most */
/* What a worker that waits on an event needs, all told (the arena's
** record included): two pages. */
#ifndef FIRST_CHUNK
#define FIRST_CHUNK 8192
#endif

typedef struct chunk {
  struct chunk *next;
  size_t used, cap;
  _Alignas(16) char mem[];
} chunk;

typedef struct arena {
  chunk *head;                  /* the chunk carved now; older ones after */
  size_t total;                 /* capacity of all chunks */
  void *free[NCLASS];           /* freed blocks by class: a list through them */
  int warn;                     /* warnings: 0 off, 1 on, 2 continuing */
} arena;

static int in_arena(arena *a, void *p) {
  for (chunk *c = a->head; c; c = c->next)
    if ((char *)p >= c->mem && (char *)p < c->mem + c->cap) return 1;
  return 0;
}

static size_t class_of(size_t n, size_t *sz) {
  if (n <= FINE) {
    *sz = (n + 7) & ~(size_t)7;
    return *sz / 8 - 1;
  }
  *sz = (n + 63) & ~(size_t)63;
  return FINE / 8 + (*sz - FINE) / 64 - 1;
}

static void *small_alloc(arena *a, size_t n) {
  size_t sz, k = class_of(n, &sz);
  chunk *c = a->head;
  void *p = a->free[k];
  if (p) {
    a->free[k] = *(void **)p;
    return p;
  }
  if (c == NULL || c->cap - c->used < sz) {
    size_t cap = c ? (c->cap + sizeof(chunk)) * 2 - sizeof(chunk)
                   : FIRST_CHUNK - sizeof(chunk);
    if (a->total + cap > MAXARENA) return NULL;   /* full: malloc it */
    c = malloc(sizeof(chunk) + cap);
    if (c == NULL) return NULL;
    c->used = 0;
    c->cap = cap;
    c->next = a->head;
    a->head = c;
    a->total += cap;
  }
  p = c->mem + c->used;
  c->used += sz;
  return p;
}

static void small_free(arena *a, void *p, size_t n) {
  size_t sz, k = class_of(n, &sz);
  *(void **)p = a->free[k];
  a->free[k] = p;
}

/* Small blocks come from the arena; a block's size tells where it lives
** (Lua always passes it), except that a small block of a growing object
** may have come from malloc when the arena was full: in_arena decides
** then. */
static void *arena_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  arena *a = ud;
  int oldsmall = ptr != NULL && osize <= SMALL && osize > 0;
  if (nsize == 0) {
    if (ptr == NULL) return NULL;
    if (oldsmall && in_arena(a, ptr)) small_free(a, ptr, osize);
    else free(ptr);
    return NULL;
  }
  if (nsize <= SMALL) {
    void *np;
    size_t s1, s2;
    if (ptr && oldsmall && class_of(osize, &s1) == class_of(nsize, &s2) &&
        in_arena(a, ptr))
      return ptr;                              /* same class */
    np = small_alloc(a, nsize);
    if (np == NULL) np = malloc(nsize);
    if (np == NULL) return NULL;
    if (ptr) {
      memcpy(np, ptr, osize < nsize ? osize : nsize);
      if (oldsmall && in_arena(a, ptr)) small_free(a, ptr, osize);
      else free(ptr);
    }
    return np;
  }
  if (ptr && oldsmall && in_arena(a, ptr)) {   /* small -> big */
    void *np = malloc(nsize);
    if (np == NULL) return NULL;
    memcpy(np, ptr, osize);
    small_free(a, ptr, osize);
    return np;
  }
  return realloc(ptr, nsize);
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

/* A new state with its own arena; free it with state_close. The arena's
** own record sits at the start of its first chunk: one malloc in all. */
lua_State *state_new(void) {
  chunk *c = malloc(FIRST_CHUNK);
  arena *a;
  lua_State *L;
  size_t hdr = (sizeof(arena) + 15) & ~(size_t)15;
  if (c == NULL) return NULL;
  c->next = NULL;
  c->cap = FIRST_CHUNK - sizeof(chunk);
  c->used = hdr;
  a = (arena *)(void *)c->mem;
  memset(a, 0, sizeof *a);
  a->head = c;
  a->total = c->cap;
  L = lua_newstate(arena_alloc, a);
  if (L == NULL) {
    free(c);
    return NULL;
  }
  lua_atpanic(L, panic);
  lua_setwarnf(L, warnf, a);
  return L;
}

/* Closes L and frees its arena: the chunks, newest first; the first one,
** which holds the arena record, last. */
void state_close(lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  lua_close(L);
  if (f == arena_alloc) {
    arena *a = ud;
    chunk *c = a->head, *next;
    for (; c; c = next) {
      next = c->next;
      free(c);
    }
  }
}
