/*
** pretty.c
** How the REPL shows a value: tables nested with their keys sorted,
** strings quoted, cycles marked, long and deep tables cut.
**
** DESIGN. conc_pretty_push renders one value into a growing buffer kept in a
** userdata box on the Lua stack, so that an error raised half-way (a
** __tostring that fails, Ctrl-C, out of memory) leaves nothing to free by
** hand. A table is first tried on one line ("flat"): the attempt stops as
** soon as it passes the room left on the line, and the buffer is cut back
** to where it began. When it does not fit, the table is laid out on
** several lines ("block"), one entry per line, with runs of short array
** items packed side by side. The tables on the path from the root to the
** one being shown sit in a set: meeting one of them again is a cycle and
** shows as <cycle>; a table that merely appears twice is shown twice.
** Entries come in a stable order: the array part 1..n first, then numbers,
** strings (in natural order: k2 before k10), booleans and other keys. Past
*PP_ITEMS
** entries a table ends with "... (N more)"; past PP_DEPTH levels a table
** shows as {...}; past PP_NODES values in all, values show as "...".
** Only __tostring runs user code: tables are walked raw, so a proxy with
** __index or __pairs shows what it really holds.
*/

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "init.h"

#define PP_DEPTH 6       /* tables nested deeper show as {...} */
#define PP_ITEMS 100     /* entries shown per table */
#define PP_NODES 4000    /* values shown in one rendering */
#define PP_INDENT 2

int conc_pretty_push(lua_State *L, int idx, int width, int col);

typedef struct ppbuf {
  char *p;
  size_t n, cap;
} ppbuf;

typedef struct pp {
  lua_State *L;
  ppbuf *b;
  int width;
  int nodes;
  int seen;            /* stack index of the set of tables being shown */
} pp;

/* A key, for sorting: its group, and what the group sorts by. */
typedef struct ppkey {
  int group;           /* 0 number, 1 string, 2 boolean, 3 other */
  lua_Number num;      /* numbers, booleans */
  const char *s;       /* strings (anchored in the keys table) */
  size_t len;
  const void *ptr;     /* others */
  int tnum;            /* their type */
  int slot;            /* index in the keys table */
} ppkey;

static int box_gc(lua_State *L) {
  ppbuf *b = lua_touserdata(L, 1);
  free(b->p);
  b->p = NULL;
  return 0;
}

static void put(pp *P, const char *s, size_t l) {
  ppbuf *b = P->b;
  if (b->cap - b->n < l) {
    size_t cap = b->cap ? b->cap : 256;
    char *np;
    while (cap - b->n < l) cap *= 2;
    np = realloc(b->p, cap);
    if (np == NULL) luaL_error(P->L, "not enough memory");
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, l);
  b->n += l;
}

#define puts_(P, s) put(P, s, strlen(s))

static void spaces(pp *P, int n) {
  while (n-- > 0) put(P, " ", 1);
}

/* The column the buffer ends at (bytes since the last newline). */
static int column(pp *P, int col0) {
  size_t i = P->b->n;
  while (i > 0 && P->b->p[i - 1] != '\n') i--;
  return (i == 0 ? col0 : 0) + (int)(P->b->n - i);
}

/* A string in double quotes, escaped so that Lua reads it back. */
static void put_quoted(pp *P, const char *s, size_t l) {
  put(P, "\"", 1);
  for (size_t i = 0; i < l; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    switch (c) {
      case '"': puts_(P, "\\\""); break;
      case '\\': puts_(P, "\\\\"); break;
      case '\n': puts_(P, "\\n"); break;
      case '\r': puts_(P, "\\r"); break;
      case '\t': puts_(P, "\\t"); break;
      default:
        if (c < 32 || c == 127) {
          snprintf(esc, sizeof esc, "\\%d", c);
          /* a digit right after would change the escape's meaning */
          if (i + 1 < l && s[i + 1] >= '0' && s[i + 1] <= '9')
            snprintf(esc, sizeof esc, "\\%03d", c);
          puts_(P, esc);
        } else {
          put(P, (const char *)&s[i], 1);
        }
    }
  }
  put(P, "\"", 1);
}


/* Any value but a table shown as data: tostring, strings quoted. */
static void put_atom(pp *P, int idx) {
  size_t l;
  const char *s;
  if (lua_type(P->L, idx) == LUA_TSTRING) {
    s = lua_tolstring(P->L, idx, &l);
    put_quoted(P, s, l);
    return;
  }
  s = luaL_tolstring(P->L, idx, &l);
  put(P, s, l);
  lua_pop(P->L, 1);
}

/* The key part of an entry: "name = " or "[key] = ". */
static void put_key(pp *P, int idx) {
  size_t l;
  const char *s;
  if (lua_type(P->L, idx) == LUA_TSTRING) {
    s = lua_tolstring(P->L, idx, &l);
    if (conc_isname(s, l)) {
      put(P, s, l);
      puts_(P, " = ");
      return;
    }
  }
  put(P, "[", 1);
  if (lua_type(P->L, idx) == LUA_TTABLE) {   /* by address, not content */
    char a[64];
    snprintf(a, sizeof a, "table: %p", lua_topointer(P->L, idx));
    puts_(P, a);
  } else {
    put_atom(P, idx);
  }
  puts_(P, "] = ");
}

/* ------------------------------------------------------------ entries */

static int isdig(char c) {
  return c >= '0' && c <= '9';
}

/* Strings in "natural" order: runs of digits compare as numbers, so
** key2 comes before key10. Ties fall back to plain byte order. */
static int natcmp(const char *a, size_t la, const char *b, size_t lb) {
  size_t i = 0, j = 0, m;
  int c;
  while (i < la && j < lb) {
    if (isdig(a[i]) && isdig(b[j])) {
      size_t si = i, sj = j, ei, ej;
      while (si < la && a[si] == '0') si++;
      while (sj < lb && b[sj] == '0') sj++;
      for (ei = si; ei < la && isdig(a[ei]); ei++) {}
      for (ej = sj; ej < lb && isdig(b[ej]); ej++) {}
      if (ei - si != ej - sj) return ei - si < ej - sj ? -1 : 1;
      if ((c = memcmp(a + si, b + sj, ei - si)) != 0) return c;
      i = ei;
      j = ej;
    } else {
      if (a[i] != b[j])
        return (unsigned char)a[i] < (unsigned char)b[j] ? -1 : 1;
      i++;
      j++;
    }
  }
  if (i < la || j < lb) return i < la ? 1 : -1;
  m = la < lb ? la : lb;
  if ((c = memcmp(a, b, m)) != 0) return c;
  return la < lb ? -1 : la > lb;
}

static int keycmp(const void *a, const void *b) {
  const ppkey *x = a, *y = b;
  if (x->group != y->group) return x->group < y->group ? -1 : 1;
  switch (x->group) {
    case 0:
    case 2:
      if (x->num != y->num) return x->num < y->num ? -1 : 1;
      return x->slot < y->slot ? -1 : x->slot > y->slot;
    case 1:
      return natcmp(x->s, x->len, y->s, y->len);
    default:
      if (x->tnum != y->tnum) return x->tnum < y->tnum ? -1 : 1;
      if (x->ptr != y->ptr)
        return (uintptr_t)x->ptr < (uintptr_t)y->ptr ? -1 : 1;
      return 0;
  }
}

/* The entries of the table at t, in showing order. Pushes the keys table
** (slot i holds a key) and a userdata with the sorted ppkeys; returns the
** number of keys past the array part, *na the array part's length. */
static int entries(pp *P, int t, lua_Integer *na, ppkey **out) {
  lua_State *L = P->L;
  lua_Integer n = 0;
  int nk = 0, keys;
  ppkey *v;
  while (lua_rawgeti(L, t, n + 1) != LUA_TNIL) {
    lua_pop(L, 1);
    n++;
  }
  lua_pop(L, 1);
  *na = n;
  lua_newtable(L);
  keys = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (lua_isinteger(L, -1)) {
      lua_Integer i = lua_tointeger(L, -1);
      if (i >= 1 && i <= n) continue;
    }
    lua_pushvalue(L, -1);
    lua_rawseti(L, keys, ++nk);
  }
  v = lua_newuserdatauv(L, sizeof *v * (size_t)(nk ? nk : 1), 0);
  for (int i = 0; i < nk; i++) {
    int tp = lua_rawgeti(L, keys, i + 1);
    memset(&v[i], 0, sizeof v[i]);
    v[i].slot = i + 1;
    v[i].tnum = tp;
    if (tp == LUA_TNUMBER) {
      v[i].group = 0;
      v[i].num = lua_tonumber(L, -1);
    } else if (tp == LUA_TSTRING) {
      v[i].group = 1;
      v[i].s = lua_tolstring(L, -1, &v[i].len);
    } else if (tp == LUA_TBOOLEAN) {
      v[i].group = 2;
      v[i].num = lua_toboolean(L, -1);
    } else {
      v[i].group = 3;
      v[i].ptr = lua_topointer(L, -1);
    }
    lua_pop(L, 1);
  }
  qsort(v, (size_t)nk, sizeof *v, keycmp);
  *out = v;
  return nk;
}

/* ------------------------------------------------------------ rendering */

static int flat(pp *P, int idx, int depth, size_t stop);
static void block(pp *P, int idx, int depth, int indent, int col0);

/* Values that need no layout: everything but a plain table that is not
** cut, not a cycle and not past the limits. Returns 1 if it wrote. */
static int special(pp *P, int idx, int depth) {
  lua_State *L = P->L;
  if (P->nodes >= PP_NODES) {
    puts_(P, "...");
    return 1;
  }
  P->nodes++;
  if (lua_type(L, idx) != LUA_TTABLE) {
    put_atom(P, idx);
    return 1;
  }
  if (luaL_getmetafield(L, idx, "__tostring") != LUA_TNIL) {
    lua_pop(L, 1);
    put_atom(P, idx);
    return 1;
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, P->seen) != LUA_TNIL) {
    lua_pop(L, 1);
    puts_(P, "<cycle>");
    return 1;
  }
  lua_pop(L, 1);
  lua_pushnil(L);
  if (!lua_next(L, idx)) {
    puts_(P, "{}");
    return 1;
  }
  lua_pop(L, 2);
  if (depth >= PP_DEPTH) {
    puts_(P, "{...}");
    return 1;
  }
  return 0;
}

static void mark(pp *P, int idx, int on) {
  lua_pushvalue(P->L, idx);
  if (on) lua_pushboolean(P->L, 1);
  else lua_pushnil(P->L);
  lua_rawset(P->L, P->seen);
}

static void put_more(pp *P, lua_Integer more) {
  char m[64];
  snprintf(m, sizeof m, "... (%lld more)", (long long)more);
  puts_(P, m);
}

/* One line: returns 0 as soon as the buffer passes 'stop'. */
static int flat(pp *P, int idx, int depth, size_t stop) {
  lua_State *L = P->L;
  lua_Integer na, shown = 0, total;
  int nk, top = lua_gettop(L), ok = 1;
  ppkey *v;
  if (special(P, idx, depth)) return P->b->n <= stop;
  luaL_checkstack(L, 8, "table too deep to show");
  {  /* a count cut at PP_ITEMS first: a big table cannot fit on a line,
     ** and listing and sorting all its keys to learn that costs seconds */
    lua_Integer c = 0;
    lua_pushnil(L);
    while (c < PP_ITEMS && lua_next(L, idx)) {
      lua_pop(L, 1);
      c++;
    }
    lua_settop(L, top);
    if (P->b->n + (size_t)c * 3 > stop) return 0;
  }
  nk = entries(P, idx, &na, &v);
  total = na + nk;
  if (P->b->n + (size_t)(total > PP_ITEMS ? PP_ITEMS : total) * 3 > stop) {
    lua_settop(L, top);
    return 0;                       /* cannot fit: skip the attempt */
  }
  mark(P, idx, 1);
  put(P, "{", 1);
  for (lua_Integer i = 1; ok && i <= na && shown < PP_ITEMS; i++, shown++) {
    if (i > 1) puts_(P, ", ");
    lua_rawgeti(L, idx, i);
    ok = flat(P, lua_gettop(L), depth + 1, stop);
    lua_pop(L, 1);
  }
  for (int k = 0; ok && k < nk && shown < PP_ITEMS; k++, shown++) {
    if (shown > 0) puts_(P, ", ");
    lua_rawgeti(L, top + 1, v[k].slot);
    put_key(P, lua_gettop(L));
    lua_rawget(L, idx);
    ok = flat(P, lua_gettop(L), depth + 1, stop);
    lua_pop(L, 1);
  }
  if (ok && shown < total) {
    puts_(P, ", ");
    put_more(P, total - shown);
  }
  if (ok) put(P, "}", 1);
  mark(P, idx, 0);
  lua_settop(L, top);
  return ok && P->b->n <= stop;
}

/* Tries the value flat in the room left on the line; lays it out on
** several lines when it does not fit. */
static void value(pp *P, int idx, int depth, int indent, int col0) {
  size_t start = P->b->n;
  int nodes = P->nodes;
  int room = P->width - column(P, col0) - 1;
  if (room > 0 && flat(P, idx, depth, start + (size_t)room)) return;
  P->b->n = start;
  P->nodes = nodes;
  block(P, idx, depth, indent, col0);
}

static void block(pp *P, int idx, int depth, int indent, int col0) {
  lua_State *L = P->L;
  lua_Integer na, shown = 0, total;
  int nk, top = lua_gettop(L), inner = indent + PP_INDENT;
  int packed = 0;        /* the line holds array items that fitted */
  ppkey *v;
  if (special(P, idx, depth)) return;
  luaL_checkstack(L, 8, "table too deep to show");
  nk = entries(P, idx, &na, &v);
  total = na + nk;
  mark(P, idx, 1);
  put(P, "{", 1);
  for (lua_Integer i = 1; i <= na && shown < PP_ITEMS; i++, shown++) {
    lua_rawgeti(L, idx, i);
    if (packed) {                  /* try it after the previous one */
      size_t start = P->b->n;
      int nodes = P->nodes;
      int room;
      puts_(P, ", ");
      room = P->width - column(P, col0) - 1;
      if (room > 0 &&
          flat(P, lua_gettop(L), depth + 1, P->b->n + (size_t)room)) {
        lua_pop(L, 1);
        continue;
      }
      P->b->n = start;
      P->nodes = nodes;
    }
    if (i > 1) put(P, ",", 1);
    put(P, "\n", 1);
    spaces(P, inner);
    {
      size_t start = P->b->n;
      value(P, lua_gettop(L), depth + 1, inner, col0);
      packed = memchr(P->b->p + start, '\n', P->b->n - start) == NULL;
    }
    lua_pop(L, 1);
  }
  for (int k = 0; k < nk && shown < PP_ITEMS; k++, shown++) {
    if (shown > 0) put(P, ",", 1);
    put(P, "\n", 1);
    spaces(P, inner);
    lua_rawgeti(L, top + 1, v[k].slot);
    put_key(P, lua_gettop(L));
    lua_rawget(L, idx);
    value(P, lua_gettop(L), depth + 1, inner, col0);
    lua_pop(L, 1);
  }
  if (shown < total) {
    put(P, ",\n", 2);
    spaces(P, inner);
    put_more(P, total - shown);
  }
  put(P, "\n", 1);
  spaces(P, indent);
  put(P, "}", 1);
  mark(P, idx, 0);
  lua_settop(L, top);
}

/* Pushes the value at idx as the REPL shows it inside a table (strings
** quoted), laid out for a line 'width' wide whose first 'col' columns are
** taken. Returns 1. May raise (a __tostring that fails, memory). */
int conc_pretty_push(lua_State *L, int idx, int width, int col) {
  pp P;
  int top;
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 20, "not enough stack to show a value");
  P.b = lua_newuserdatauv(L, sizeof *P.b, 0);
  memset(P.b, 0, sizeof *P.b);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, box_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  top = lua_gettop(L);
  lua_newtable(L);
  P.L = L;
  P.seen = lua_gettop(L);
  P.width = width > 20 ? width : 20;
  P.nodes = 0;
  value(&P, idx, 0, 0, col);
  lua_pushlstring(L, P.b->p ? P.b->p : "", P.b->n);
  lua_replace(L, top);             /* the box goes; its __gc frees */
  lua_settop(L, top);
  return 1;
}
