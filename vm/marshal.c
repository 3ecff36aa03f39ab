/*
** marshal.c
** Lua values <-> self-contained bytes: one format for threads and pipes.
**
** DESIGN. A message is MAGIC, VERSION, a varint count, then that many
** values, each a tag byte and its payload (little-endian, this machine's
** sizes):
**   NIL FALSE TRUE | INT8/16/32/64 n | FLOAT f64 | STR varint len, bytes
**   TABLE u32 narr, u32 nhash, flags, narr values (keys 1..narr, in
**         order), nhash key/value pairs, then the metatable if flags & 1
**   REF varint i     the i-th table or function of this message again
**   LFUNC u32 len, bytecode, u64 MAC, u8 nups, nups upvalues, each a
**         value or UPJOIN varint f, u8 n (shares upvalue n of function f)
**   CFUNC varint len, name   ("string.format": standard library or conc)
**   GLOBALS          the receiver's global table
**   LIB varint len, name     package.loaded[name] of the receiver
**   OBJ u8 kind, varint i    the i-th runtime object of the message
**   SHMOBJ u8 kind, u64 uid  a shared-memory object, for other processes
** Tables and Lua functions are numbered in the order they first appear,
** so shared sub-tables, cycles and functions keep their shape. Objects
** travel as references: an in-process message holds a reference on each
** (msg->refs) and names them by index, never by address.
** The decoder trusts nothing: every length is checked against what is
** left, nesting is bounded, and bytecode is loaded only when its SipHash
** MAC, keyed by a secret of this process tree, matches: random bytes from
** a dying peer can be rejected, never executed.
*/

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "values.h"

#define MAGIC 0xC7
#define VERSION 1
#define MAXDEPTH 1000
#define MAXPATH 200

enum {
  T_NIL, T_FALSE, T_TRUE, T_INT8, T_INT16, T_INT32, T_INT64, T_FLOAT,
  T_STR, T_TABLE, T_REF, T_LFUNC, T_UPJOIN, T_CFUNC, T_GLOBALS, T_LIB,
  T_OBJ, T_SHMOBJ
};

/* The encoder's reason when memory ran out: told apart by address. */
static const char NOMEM[] = "not enough memory";

/* ------------------------------------------------------------ integers */

/* An integer is its tag and then 1, 2, 4 or 8 bytes, the fewest that
** hold it (host order: messages stay on one machine). The one encoder
** and the one decoder of them. */

/* Writes v's tag and bytes at p (room for 9); returns how many. */
static size_t int_put(unsigned char *p, lua_Integer v) {
  if (v >= INT8_MIN && v <= INT8_MAX) {
    int8_t x = (int8_t)v;
    p[0] = T_INT8;
    memcpy(p + 1, &x, 1);
    return 2;
  } else if (v >= INT16_MIN && v <= INT16_MAX) {
    int16_t x = (int16_t)v;
    p[0] = T_INT16;
    memcpy(p + 1, &x, 2);
    return 3;
  } else if (v >= INT32_MIN && v <= INT32_MAX) {
    int32_t x = (int32_t)v;
    p[0] = T_INT32;
    memcpy(p + 1, &x, 4);
    return 5;
  } else {
    int64_t x = (int64_t)v;
    p[0] = T_INT64;
    memcpy(p + 1, &x, 8);
    return 9;
  }
}

/* The bytes after an integer tag, or 0 for a tag that is no integer. */
static size_t int_width(int tag) {
  switch (tag) {
    case T_INT8: return 1;
    case T_INT16: return 2;
    case T_INT32: return 4;
    case T_INT64: return 8;
    default: return 0;
  }
}

/* Reads the integer of 'tag' (int_width(tag) > 0) from p. */
static lua_Integer int_get(int tag, const unsigned char *p) {
  switch (tag) {
    case T_INT8: { int8_t v; memcpy(&v, p, 1); return v; }
    case T_INT16: { int16_t v; memcpy(&v, p, 2); return v; }
    case T_INT32: { int32_t v; memcpy(&v, p, 4); return v; }
    default: { int64_t v; memcpy(&v, p, 8); return (lua_Integer)v; }
  }
}

int conc_marshal_format(void) {
  return VERSION;
}

/* A one-value message: MAGIC VERSION 1 then the value. */
int conc_marshal_tonumber(const char *bytes, size_t n, lua_Integer *i,
                     lua_Number *f) {
  const unsigned char *p = (const unsigned char *)bytes;
  if (n < 4 || p[0] != MAGIC || p[1] != VERSION || p[2] != 1) return 0;
  if (int_width(p[3]) && n == 4 + int_width(p[3])) {
    *i = int_get(p[3], p + 4);
    return 1;
  }
  if (p[3] == T_FLOAT && n == 12) {
    double v;
    memcpy(&v, p + 4, 8);
    *f = (lua_Number)v;
    return 2;
  }
  return 0;
}

/* The 8 bytes of the number come last, so that a number can be changed
** in place by one store (shared.c). */
void conc_marshal_number(char out[MARSHAL_NUMLEN], int isint, lua_Integer i,
                    lua_Number f) {
  unsigned char *p = (unsigned char *)out;
  _Static_assert(MARSHAL_NUMLEN == 12, "one-number message size");
  p[0] = MAGIC;
  p[1] = VERSION;
  p[2] = 1;
  if (isint) {
    int64_t v = (int64_t)i;
    p[3] = T_INT64;
    memcpy(p + 4, &v, 8);
  } else {
    double v = (double)f;
    p[3] = T_FLOAT;
    memcpy(p + 4, &v, 8);
  }
}

/* ------------------------------------------------------------ encoder */

typedef struct enc {
  lua_State *L;
  cstate *cs;
  mbuf *b;
  int flags;
  int seen;          /* stack index of: table/function -> ref index;
                        upvalue id -> -(ref * 256 + n) - 1; 0 if not yet */
  int undo;          /* stack index of keys to forget on a rollback */
  int nundo;
  int libs;          /* stack index of the state's library map, or 0 */
  int inmeta;        /* > 0 while trying a metatable */
  int nref;
  int depth;
  int globals;       /* stack index of the sender's globals table */
  const char *why;   /* what went wrong, for the message */
  const char *badtype;
  char path[MAXPATH + 1];  /* path below the root, built while unwinding */
  size_t pathlen;
  int pathcut;
  char whybuf[96];   /* room for a 'why' made up on the spot */
} enc;

static int put(enc *e, const void *p, size_t n) {
  if (conc_mbuf_reserve(e->b, n)) {
    e->why = NOMEM;
    return -1;
  }
  memcpy(e->b->p + e->b->n, p, n);
  e->b->n += n;
  return 0;
}

static int putbyte(enc *e, int c) {
  unsigned char u = (unsigned char)c;
  return put(e, &u, 1);
}

static int putvar(enc *e, uint64_t v) {
  unsigned char tmp[10];
  int n = 0;
  do {
    tmp[n] = (unsigned char)(v & 0x7f);
    v >>= 7;
    if (v) tmp[n] |= 0x80;
    n++;
  } while (v);
  return put(e, tmp, (size_t)n);
}

static void path_prepend(enc *e, const char *seg) {
  size_t sl = strlen(seg);
  if (e->pathcut) return;
  if (e->pathlen + sl > MAXPATH) {
    e->pathcut = 1;
    return;
  }
  memmove(e->path + sl, e->path, e->pathlen + 1);
  memcpy(e->path, seg, sl);
  e->pathlen += sl;
}


/* The path segment for key at stack index k. */
static void path_key(enc *e, int k) {
  lua_State *L = e->L;
  char seg[64];
  switch (lua_type(L, k)) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, k, &n);
      if (n <= 40 && conc_isname(s, n))
        snprintf(seg, sizeof seg, ".%s", s);
      else
        snprintf(seg, sizeof seg, "[\"%.*s%s\"]", n > 30 ? 30 : (int)n, s,
                 n > 30 ? "..." : "");
      break;
    }
    case LUA_TNUMBER:
      if (lua_isinteger(L, k))
        snprintf(seg, sizeof seg, "[%lld]", (long long)lua_tointeger(L, k));
      else
        snprintf(seg, sizeof seg, "[%.14g]", (double)lua_tonumber(L, k));
      break;
    case LUA_TBOOLEAN:
      snprintf(seg, sizeof seg, "[%s]", lua_toboolean(L, k) ? "true" : "false");
      break;
    default:
      snprintf(seg, sizeof seg, "[<%s>]", luaL_typename(L, k));
  }
  path_prepend(e, seg);
}

static int fail(enc *e, int idx, const char *why) {
  e->badtype = luaL_typename(e->L, idx);
  e->why = why;
  return -1;
}

static int enc_value(enc *e, int idx);

/* Looks v (at idx) up in the seen table: its ref index, or 0. */
static int seen_get(enc *e, const void *key) {
  lua_Integer r;
  if (e->seen == 0) return 0;
  lua_rawgetp(e->L, e->seen, key);
  r = lua_tointeger(e->L, -1);
  lua_pop(e->L, 1);
  return (int)r;
}

/* Makes the tables the encoder keeps on the stack. Called by the first
** table or function met, which is a top-level value: nothing of the
** traversal sits above them yet. */
static void enc_prepare(enc *e) {
  lua_State *L = e->L;
  if (e->seen) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e->globals = lua_gettop(L);
  lua_newtable(L);
  e->seen = lua_gettop(L);
  lua_newtable(L);
  e->undo = lua_gettop(L);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &conc_libskey) == LUA_TTABLE)
    e->libs = lua_gettop(L);
  else
    lua_pop(L, 1);
}

static void seen_set(enc *e, const void *key, lua_Integer v) {
  lua_State *L = e->L;
  lua_pushinteger(L, v);
  lua_rawsetp(L, e->seen, key);
  if (e->inmeta) {
    lua_pushlightuserdata(L, (void *)key);
    lua_rawseti(L, e->undo, ++e->nundo);
  }
}

static int enc_int(enc *e, lua_Integer v) {
  unsigned char tmp[9];
  return put(e, tmp, int_put(tmp, v));
}

static int enc_str(enc *e, int tag, const char *s, size_t n) {
  if (conc_mbuf_reserve(e->b, n + 11)) {
    e->why = NOMEM;
    return -1;
  }
  if (putbyte(e, tag) || putvar(e, n)) return -1;
  memcpy(e->b->p + e->b->n, s, n);
  e->b->n += n;
  return 0;
}

static void patch32(mbuf *b, size_t at, uint32_t v) {
  memcpy(b->p + at, &v, 4);
}

/* A library table of the sender (string, math, ...), by name, or NULL;
** the name stays alive in the state's library map. */
static const char *libname(enc *e, int idx) {
  const char *name;
  if (e->libs == 0) return NULL;
  lua_pushvalue(e->L, idx);
  lua_rawget(e->L, e->libs);
  name = lua_tostring(e->L, -1);
  lua_pop(e->L, 1);
  return name;
}

/* Tables whose metatable was rolled back still need a mark: they come out
** plain. What cannot be copied inside a metatable is dropped with it. */
static int enc_meta(enc *e, int idx, size_t flagpos) {
  lua_State *L = e->L;
  size_t mark = e->b->n;
  int marknref = e->nref, markrefs = e->b->nrefs, marknundo = e->nundo;
  if (!lua_getmetatable(L, idx)) return 0;
  e->inmeta++;
  if (enc_value(e, lua_gettop(L)) == 0) {
    e->inmeta--;
    e->b->p[flagpos] |= 1;
    lua_pop(L, 1);
    return 0;
  }
  e->inmeta--;
  if (e->why == NOMEM) {
    lua_pop(L, 1);
    return -1;
  }
  /* roll back: bytes, refs taken, and table numbers given out */
  e->b->n = mark;
  while (e->b->nrefs > markrefs) conc_obj_release(e->b->refs[--e->b->nrefs]);
  for (int i = marknundo + 1; i <= e->nundo; i++) {
    lua_rawgeti(L, e->undo, i);
    lua_pushnil(L);
    lua_rawset(L, e->seen);
  }
  e->nundo = marknundo;
  e->nref = marknref;
  e->why = NULL;
  e->badtype = NULL;
  e->pathlen = 0;
  e->path[0] = '\0';
  e->pathcut = 0;
  lua_pop(L, 1);
  return 0;
}

static int enc_table(enc *e, int idx) {
  lua_State *L = e->L;
  const char *lib;
  size_t head;
  uint32_t narr = 0, nhash = 0;
  int arraymode = 1;
  enc_prepare(e);
  if (lua_rawequal(L, idx, e->globals)) return putbyte(e, T_GLOBALS);
  if ((lib = libname(e, idx)) != NULL)
    return enc_str(e, T_LIB, lib, strlen(lib));
  seen_set(e, lua_topointer(L, idx), ++e->nref);
  if (putbyte(e, T_TABLE)) return -1;
  head = e->b->n;
  if (put(e, "\0\0\0\0\0\0\0\0\0", 9)) return -1;   /* narr, nhash, flags */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int top = lua_gettop(L), isnum;
    if (e->b->cap - e->b->n < 9 && conc_mbuf_reserve(e->b, 4096)) {
      e->why = NOMEM;
      lua_settop(L, top - 2);
      return -1;
    }
    lua_Integer k;
    if (arraymode && lua_type(L, top - 1) == LUA_TNUMBER &&
        (k = lua_tointegerx(L, top - 1, &isnum), isnum) &&
        k == (lua_Integer)narr + 1) {
      narr++;
      /* the common array of integers: written here, no call per value */
      if (lua_isinteger(L, top) && e->b->cap - e->b->n >= 9) {
        lua_Integer v = lua_tointeger(L, top);
        unsigned char *p = (unsigned char *)e->b->p + e->b->n;
        if (v >= INT8_MIN && v <= INT8_MAX) {
          p[0] = T_INT8;
          p[1] = (unsigned char)(int8_t)v;
          e->b->n += 2;
        } else if (v >= INT32_MIN && v <= INT32_MAX) {
          int32_t x = (int32_t)v;
          p[0] = T_INT32;
          memcpy(p + 1, &x, 4);
          e->b->n += 5;
        } else {
          int64_t x = (int64_t)v;
          p[0] = T_INT64;
          memcpy(p + 1, &x, 8);
          e->b->n += 9;
        }
        lua_settop(L, top - 1);
        continue;
      }
      if (enc_value(e, top)) {
        path_key(e, top - 1);
        lua_pop(L, 2);
        return -1;
      }
    } else {
      arraymode = 0;
      nhash++;
      if (enc_value(e, top - 1)) {
        char seg[64];
        snprintf(seg, sizeof seg, "[<%s key>]", luaL_typename(L, top - 1));
        e->pathlen = 0;
        e->path[0] = '\0';
        path_prepend(e, seg);
        lua_pop(L, 2);
        return -1;
      }
      if (enc_value(e, top)) {
        path_key(e, top - 1);
        lua_pop(L, 2);
        return -1;
      }
    }
    lua_pop(L, 1);
  }
  patch32(e->b, head, narr);
  patch32(e->b, head + 4, nhash);
  return enc_meta(e, idx, head + 8);
}

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  enc *e = ud;
  CONC_UNUSED(L);
  return put(e, p, sz) ? 1 : 0;
}

static int enc_lfunc(enc *e, int idx) {
  lua_State *L = e->L;
  size_t lenpos, start;
  uint64_t mac;
  int fref, nups = 0;
  lua_Debug ar;
  enc_prepare(e);
  fref = ++e->nref;
  seen_set(e, lua_topointer(L, idx), fref);
  if (putbyte(e, T_LFUNC)) return -1;
  lenpos = e->b->n;
  if (put(e, "\0\0\0\0", 4)) return -1;
  start = e->b->n;
  lua_pushvalue(L, idx);
  if (lua_dump(L, dump_writer, e, 0) != 0) {
    lua_pop(L, 1);
    if (e->why == NULL) e->why = "cannot dump function";
    return -1;
  }
  lua_pop(L, 1);
  patch32(e->b, lenpos, (uint32_t)(e->b->n - start));
  mac = conc_marshal_mac(e->b->p + start, e->b->n - start);
  if (put(e, &mac, 8)) return -1;
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">u", &ar);
  nups = ar.nups;
  if (putbyte(e, nups)) return -1;
  for (int i = 1; i <= nups; i++) {
    void *id = lua_upvalueid(L, idx, i);
    int prev = seen_get(e, id);
    if (prev < 0) {
      int code = -prev - 1;
      if (putbyte(e, T_UPJOIN) || putvar(e, (uint64_t)(code >> 8)) ||
          putbyte(e, code & 0xff))
        return -1;
      continue;
    }
    seen_set(e, id, -((lua_Integer)fref * 256 + i) - 1);
    {
      const char *uname = lua_getupvalue(L, idx, i);
      char seg[64];
      if (enc_value(e, lua_gettop(L))) {
        snprintf(seg, sizeof seg, "<upvalue %s>",
                 uname && *uname ? uname : "?");
        path_prepend(e, seg);
        lua_pop(L, 1);
        return -1;
      }
      lua_pop(L, 1);
    }
  }
  return 0;
}

static int enc_cfunc(enc *e, int idx) {
  int isconc = 0;
  const char *name = conc_cfunc_name(lua_tocfunction(e->L, idx), &isconc);
  if (name == NULL)
    return fail(e, idx, "only C functions of the standard libraries and conc "
                        "can cross");
  return enc_str(e, T_CFUNC, name, strlen(name));
}

static int enc_obj(enc *e, int idx) {
  cobj *o = e->cs ? conc_obj_test(e->L, e->cs, idx) : NULL;
  const kindinfo *k;
  if (o == NULL) return fail(e, idx, NULL);
  k = conc_kinds[o->kind];
  if (conc_obj_foreign(o, e->whybuf, 64)) {       /* a forked child's copy */
    size_t len = strlen(e->whybuf);
    snprintf(e->whybuf + len, sizeof e->whybuf - len,
             " belongs to another process");
    e->badtype = k->tname;
    e->why = e->whybuf;
    return -1;
  }
  if (e->flags & MARSHAL_RANK) {          /* "... 'channel' to another rank" */
    e->badtype = k->name;
    e->why = NULL;
    return -1;
  }
  if (e->flags & MARSHAL_NOSHM) {
    e->badtype = k->tname;
    e->why = "a process started with start = 'spawn' shares nothing";
    return -1;
  }
  if (e->flags & MARSHAL_REMOTE) {
    unsigned char tmp[10];
    if (!k->shm) {
      e->badtype = k->tname;
      e->why = "it works between the threads of one process only";
      return -1;
    }
    tmp[0] = T_SHMOBJ;
    tmp[1] = (unsigned char)o->kind;
    memcpy(tmp + 2, &o->uid, 8);
    return put(e, tmp, 10);
  } else {
    int i = conc_mbuf_addref(e->b, o);
    if (i < 0) {
      e->why = NOMEM;
      return -1;
    }
    if (putbyte(e, T_OBJ) || putbyte(e, o->kind)) return -1;
    return putvar(e, (uint64_t)i);
  }
}

static int enc_value(enc *e, int idx) {
  lua_State *L = e->L;
  int r;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      return putbyte(e, T_NIL);
    case LUA_TBOOLEAN:
      return putbyte(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE);
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) return enc_int(e, lua_tointeger(L, idx));
      {
        double d = (double)lua_tonumber(L, idx);
        unsigned char tmp[9];
        tmp[0] = T_FLOAT;
        memcpy(tmp + 1, &d, 8);
        return put(e, tmp, 9);
      }
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      return enc_str(e, T_STR, s, n);
    }
    case LUA_TTABLE:
    case LUA_TFUNCTION: {
      int prev = seen_get(e, lua_topointer(L, idx));
      if (prev > 0) return putbyte(e, T_REF) || putvar(e, (uint64_t)prev);
      if (lua_iscfunction(L, idx)) return enc_cfunc(e, idx);
      if (e->depth >= MAXDEPTH) {
        e->why = "nested more than 1000 levels deep";
        e->badtype = luaL_typename(L, idx);
        return -1;
      }
      if (!lua_checkstack(L, 8)) {
        e->why = "stack overflow";
        return -1;
      }
      e->depth++;
      r = lua_istable(L, idx) ? enc_table(e, idx) : enc_lfunc(e, idx);
      e->depth--;
      return r;
    }
    case LUA_TUSERDATA:
      return enc_obj(e, idx);
    default:
      return fail(e, idx, NULL);
  }
}

static void enc_message(enc *e, const char *root, char *err, size_t errsz) {
  const char *sep = e->pathcut ? "..." : "";
  if (e->why == NOMEM) {
    snprintf(err, errsz, "%s", NOMEM);   /* as Lua says it */
  } else if (e->badtype == NULL) {
    snprintf(err, errsz, "cannot transfer %s (%s%s%s)",
             e->why ? e->why : "value", root, sep, e->path);
  } else if (e->why) {
    snprintf(err, errsz, "cannot transfer a value of type '%s' (%s%s%s): %s",
             e->badtype, root, sep, e->path, e->why);
  } else {
    snprintf(err, errsz, "cannot transfer a value of type '%s'%s (%s%s%s)",
             e->badtype, e->flags & MARSHAL_RANK ? " to another rank" : "",
             root, sep, e->path);
  }
}

/* One number, boolean or short string: the common message, encoded
** without setting up the traversal. 0 done, 1 not such a value, -1 out
** of memory. */
static int encode_scalar(lua_State *L, int idx, mbuf *b) {
  unsigned char *p;
  size_t n = 0;
  const char *s = NULL;
  int t = lua_type(L, idx);
  if (t == LUA_TSTRING) {
    s = lua_tolstring(L, idx, &n);
    if (n > 127) return 1;
  } else if (t != LUA_TNUMBER && t != LUA_TBOOLEAN) {
    return 1;
  }
  if (b->cap - b->n < 140 && conc_mbuf_reserve(b, 140)) return -1;
  p = (unsigned char *)b->p + b->n;
  p[0] = MAGIC;
  p[1] = VERSION;
  p[2] = 1;
  if (t == LUA_TSTRING) {
    p[3] = T_STR;
    p[4] = (unsigned char)n;
    memcpy(p + 5, s, n);
    b->n += 5 + n;
  } else if (t == LUA_TBOOLEAN) {
    p[3] = lua_toboolean(L, idx) ? T_TRUE : T_FALSE;
    b->n += 4;
  } else if (lua_isinteger(L, idx)) {
    b->n += 3 + int_put(p + 3, lua_tointeger(L, idx));
  } else {
    double d = (double)lua_tonumber(L, idx);
    p[3] = T_FLOAT;
    memcpy(p + 4, &d, 8);
    b->n += 12;
  }
  return 0;
}

static int encode_values(lua_State *L, cstate *cs, int first, int n,
                         mbuf *b, int flags, const char *root, char *err,
                         size_t errsz);

typedef struct encarg {
  cstate *cs;
  int n, flags, r;
  mbuf *b;
  const char *root;
  char *err;
  size_t errsz;
} encarg;

/* Under encode_protected's lua_pcall: the values are arguments 2.. */
static int encode_body(lua_State *L) {
  encarg *a = lua_touserdata(L, 1);
  a->r = encode_values(L, a->cs, 2, a->n, a->b, a->flags, a->root, a->err,
                       a->errsz);
  return 0;
}

/* A scalar goes straight into b. Anything else is encoded into a buffer
** of the encoder's own (b's storage, taken over), put back in b at the
** end: the Lua calls of the encoder can run finalizers, and a finalizer
** that sends something encodes into b too (usually the state's scratch
** buffer) and must not clobber a message half made. The encoder runs
** under lua_pcall, so that when a Lua allocation fails (a memory error)
** its buffer, held in this C frame, is freed rather than lost; with the
** state's hook (a cancel's, a Ctrl-C's) set aside meanwhile, so that the
** call gives a pending stop no new place to be raised (the encoder of a
** thread's results runs where nothing could catch it). So it never
** raises. */
int conc_marshal_encode(lua_State *L, cstate *cs, int first, int n, mbuf *b,
                   int flags, const char *root, char *err, size_t errsz) {
  mbuf own;
  encarg a;
  lua_Hook hook;
  int r, st, mask = 0, count = 0;
  if (n == 1) {
    conc_mbuf_reset(b);
    r = encode_scalar(L, first, b);
    if (r == 0) return 0;
    if (r < 0) {
      snprintf(err, errsz, "%s", NOMEM);
      return CONC_ENOMEM;
    }
  }
  if (!lua_checkstack(L, n + 2)) {
    snprintf(err, errsz, "cannot transfer values: stack overflow");
    return -1;
  }
  own = *b;
  conc_mbuf_init(b);
  a.cs = cs;
  a.n = n;
  a.flags = flags;
  a.r = -1;
  a.b = &own;
  a.root = root;
  a.err = err;
  a.errsz = errsz;
  lua_pushcfunction(L, encode_body);
  lua_pushlightuserdata(L, &a);
  for (int i = 0; i < n; i++) lua_pushvalue(L, first + i);
  if ((hook = lua_gethook(L)) != NULL) {
    mask = lua_gethookmask(L);
    count = lua_gethookcount(L);
    lua_sethook(L, NULL, 0, 0);
  }
  st = lua_pcall(L, n + 1, 0, 0);
  /* back, unless a signal handler set a hook of its own meanwhile */
  if (hook != NULL && lua_gethook(L) == NULL) lua_sethook(L, hook, mask, count);
  conc_mbuf_free(b);               /* what a finalizer's send left there */
  if (st != LUA_OK) {
    conc_mbuf_free(&own);
    if (st == LUA_ERRMEM)
      snprintf(err, errsz, "%s", NOMEM);
    else
      snprintf(err, errsz, "cannot transfer values: %s",
               lua_isstring(L, -1) ? lua_tostring(L, -1) : "error");
    lua_pop(L, 1);
    return st == LUA_ERRMEM ? CONC_ENOMEM : -1;
  }
  *b = own;
  return a.r;
}

static int encode_values(lua_State *L, cstate *cs, int first, int n,
                         mbuf *b, int flags, const char *root, char *err,
                         size_t errsz) {
  enc e;
  int top = lua_gettop(L);
  memset(&e, 0, offsetof(enc, path));     /* the path buffer needs no zeroing */
  e.path[0] = '\0';
  e.pathlen = 0;
  e.pathcut = 0;
  e.L = L;
  e.cs = cs;
  e.b = b;
  e.flags = flags;
  conc_mbuf_reset(b);
  if (!lua_checkstack(L, 8)) {
    snprintf(err, errsz, "cannot transfer values: stack overflow");
    return -1;
  }
  if (putbyte(&e, MAGIC) || putbyte(&e, VERSION) || putvar(&e, (uint64_t)n))
    goto failed;
  for (int i = 0; i < n; i++) {
    if (enc_value(&e, first + i)) {
      char name[64];
      if (strcmp(root, "spawn") == 0) {      /* fn, then its arguments */
        if (i == 0) snprintf(name, sizeof name, "fn");
        else snprintf(name, sizeof name, "args[%d]", i);
      } else if (strstr(root, "%d")) {
        snprintf(name, sizeof name, root, i + 1);
      } else {
        snprintf(name, sizeof name, "%s", root);
      }
      lua_settop(L, top);
      conc_mbuf_reset(b);
      enc_message(&e, name, err, errsz);
      return e.why == NOMEM ? CONC_ENOMEM : -1;
    }
  }
  lua_settop(L, top);
  return 0;
failed:
  lua_settop(L, top);
  conc_mbuf_reset(b);
  snprintf(err, errsz, "%s", NOMEM);
  return CONC_ENOMEM;
}

/* ------------------------------------------------------------ decoder */

typedef struct dec {
  lua_State *L;
  cstate *cs;
  const unsigned char *p, *end;
  cobj **refs;
  int nrefs;
  int reftab;        /* stack index: ref number -> value */
  int nref;
  int depth;
  const char *err;
} dec;

static int bad(dec *d, const char *why) {
  if (d->err == NULL) d->err = why;
  return -1;
}

static int getbyte(dec *d, int *c) {
  if (d->p >= d->end) return bad(d, "truncated");
  *c = *d->p++;
  return 0;
}

static int getbytes(dec *d, void *out, size_t n) {
  if ((size_t)(d->end - d->p) < n) return bad(d, "truncated");
  memcpy(out, d->p, n);
  d->p += n;
  return 0;
}

static int getvar(dec *d, uint64_t *v) {
  uint64_t r = 0;
  int shift = 0;
  for (;;) {
    int c;
    if (getbyte(d, &c)) return -1;
    if (shift >= 64 || (shift == 63 && (c & 0x7e)))
      return bad(d, "bad varint");
    r |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) break;
    shift += 7;
  }
  *v = r;
  return 0;
}

static size_t left(dec *d) {
  return (size_t)(d->end - d->p);
}

/* Numbers the table or function on top of the stack. */
static void ref_add(dec *d) {
  lua_pushvalue(d->L, -1);
  lua_rawseti(d->L, d->reftab, ++d->nref);
}

static int dec_value(dec *d);

static int dec_table(dec *d) {
  lua_State *L = d->L;
  uint32_t narr, nhash;
  int flags, t;
  if (getbytes(d, &narr, 4) || getbytes(d, &nhash, 4) || getbyte(d, &flags))
    return -1;
  if (narr > left(d) || nhash > left(d) / 2 || (flags & ~1))
    return bad(d, "bad table header");
  lua_createtable(L, (int)narr, (int)nhash);
  ref_add(d);
  t = lua_gettop(L);
  for (uint32_t i = 1; i <= narr; i++) {
    /* the common array of small integers: read here, no call per value */
    if (d->end - d->p >= 5 && (*d->p == T_INT8 || *d->p == T_INT32)) {
      if (*d->p == T_INT8) {
        lua_pushinteger(L, (int8_t)d->p[1]);
        d->p += 2;
      } else {
        int32_t v;
        memcpy(&v, d->p + 1, 4);
        lua_pushinteger(L, v);
        d->p += 5;
      }
      lua_rawseti(L, t, (lua_Integer)i);
      continue;
    }
    if (dec_value(d)) return -1;
    if (lua_isnil(L, -1))
      lua_pop(L, 1);
    else
      lua_rawseti(L, t, (lua_Integer)i);
  }
  for (uint32_t i = 0; i < nhash; i++) {
    if (dec_value(d)) return -1;
    if (lua_isnil(L, -1) ||
        (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1) &&
         isnan(lua_tonumber(L, -1))))
      return bad(d, "bad table key");
    if (dec_value(d)) return -1;
    if (lua_isnil(L, -1))
      lua_pop(L, 2);
    else
      lua_rawset(L, t);
  }
  if (flags & 1) {
    if (dec_value(d)) return -1;
    if (!lua_istable(L, -1)) return bad(d, "bad metatable");
    lua_setmetatable(L, t);
  }
  return 0;
}

typedef struct chunk {
  const char *p;
  size_t n;
} chunk;

static const char *chunk_reader(lua_State *L, void *ud, size_t *sz) {
  chunk *c = ud;
  CONC_UNUSED(L);
  *sz = c->n;
  c->n = 0;
  return *sz ? c->p : NULL;
}

static int dec_lfunc(dec *d) {
  lua_State *L = d->L;
  uint32_t len;
  uint64_t mac;
  int nups, f;
  lua_Debug ar;
  chunk c;
  if (getbytes(d, &len, 4)) return -1;
  if (len > left(d) || len < 4) return bad(d, "bad function length");
  c.p = (const char *)d->p;
  c.n = len;
  d->p += len;
  if (getbytes(d, &mac, 8)) return -1;
  if (mac != conc_marshal_mac(c.p, len))
    return bad(d, "function failed its check");
  if (c.p[0] != LUA_SIGNATURE[0]) return bad(d, "not a function");
  if (lua_load(L, chunk_reader, &c, "=?", "b") != LUA_OK) {
    lua_pop(L, 1);
    return bad(d, "function does not load");
  }
  ref_add(d);
  f = lua_gettop(L);
  if (getbyte(d, &nups)) return -1;
  lua_pushvalue(L, f);
  lua_getinfo(L, ">u", &ar);
  if (ar.nups != nups) return bad(d, "bad upvalue count");
  for (int i = 1; i <= nups; i++) {
    if (d->p < d->end && *d->p == T_UPJOIN) {
      uint64_t g;
      int n;
      d->p++;
      if (getvar(d, &g) || getbyte(d, &n)) return -1;
      if (g < 1 || g > (uint64_t)d->nref) return bad(d, "bad upvalue join");
      lua_rawgeti(L, d->reftab, (lua_Integer)g);
      if (lua_type(L, -1) != LUA_TFUNCTION || lua_iscfunction(L, -1) || n < 1 ||
          lua_getupvalue(L, -1, n) == NULL) {
        lua_pop(L, 1);
        return bad(d, "bad upvalue join");
      }
      lua_pop(L, 1);
      lua_upvaluejoin(L, f, i, lua_gettop(L), n);
      lua_pop(L, 1);
    } else {
      if (dec_value(d)) return -1;
      lua_setupvalue(L, f, i);
    }
  }
  return 0;
}

static int dec_name(dec *d, const char **s, size_t *n) {
  uint64_t len;
  if (getvar(d, &len)) return -1;
  if (len > left(d)) return bad(d, "bad name");
  *s = (const char *)d->p;
  *n = (size_t)len;
  d->p += len;
  return 0;
}

/* Pushes the receiver's own closure of the conc function f called 'name'
** ("conc.sleep", or "conc.channel:send" for a method), so that it is ==
** to the receiver's conc.sleep; returns 0, pushing nothing, if there is
** none. */
static int conc_own(lua_State *L, cstate *cs, const char *name,
                    lua_CFunction f) {
  const char *colon = strchr(name, ':');
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 16)) return 0;
  if (cs->lazy) conc_cs_materialize(L, cs);
  if (colon == NULL) {
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (strncmp(name, "_G.", 3) == 0) {        /* spawn_thread, spawn_process */
      if (lua_getfield(L, -1, "_G") == LUA_TTABLE)
        lua_getfield(L, -1, name + 3);
    } else if (lua_getfield(L, -1, "conc") == LUA_TTABLE) {
      lua_getfield(L, -1, name + 5);
    }
  } else {
    size_t kl = (size_t)(colon - name) - 5;
    int k;
    for (k = 0; k < K_NKINDS; k++)
      if (strlen(conc_kinds[k]->name) == kl &&
          memcmp(conc_kinds[k]->name, name + 5, kl) == 0)
        break;
    if (k == K_NKINDS) return 0;
    conc_obj_newmetatable(L, cs, k);        /* if the state has none yet */
    luaL_getmetatable(L, conc_kinds[k]->tname);
    /* __index is the methods table, or (for kinds with fields) a closure
    ** whose second upvalue is */
    int t = lua_getfield(L, -1, "__index");
    if (t == LUA_TTABLE ||
        (t == LUA_TFUNCTION && lua_getupvalue(L, -1, 2) != NULL &&
         lua_istable(L, -1)))
      lua_getfield(L, -1, colon + 1);
  }
  if (lua_tocfunction(L, -1) != f) {
    lua_settop(L, top);
    return 0;
  }
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
  return 1;
}

static int dec_cfunc(dec *d) {
  lua_State *L = d->L;
  const char *s;
  size_t n;
  int isconc = 0;
  lua_CFunction f;
  char name[128];
  const cfname *hit;
  if (dec_name(d, &s, &n)) return -1;
  f = conc_cfunc_lookup(s, n, &isconc);
  if (f == NULL) return bad(d, "unknown C function");
  memcpy(name, s, n);
  name[n] = '\0';
  if (isconc) {
    if (d->cs == NULL) return bad(d, "conc functions need a conclua state");
    /* in a light state the receiver's own is this very light function */
    if (d->cs->light || !conc_own(L, d->cs, name, f))
      conc_cs_pushfunc(L, d->cs, f);
    return 0;
  }
  hit = conc_cfunc_find(name);
  /* by name: the receiver's own function of that name. A lazy receiver
  ** has opened nothing yet: its own will be this very function. */
  if (!hit->closure && d->cs && d->cs->lazy) {
    lua_pushcfunction(L, f);
    return 0;
  }
  if (hit->closure && d->cs && d->cs->lazy) conc_cs_materialize(L, d->cs);
  {
    const char *dot = strchr(name, '.');
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushlstring(L, name, (size_t)(dot - name));
    lua_rawget(L, -2);
    if (lua_istable(L, -1)) {
      lua_pushstring(L, dot + 1);
      lua_rawget(L, -2);
    } else {
      lua_pushnil(L);
    }
    if (lua_isfunction(L, -1)) {
      lua_replace(L, -3);
      lua_pop(L, 1);
      return 0;
    }
    lua_pop(L, 3);
    if (hit->closure) return bad(d, "C function not available here");
    lua_pushcfunction(L, f);
  }
  return 0;
}

static int dec_lib(dec *d) {
  lua_State *L = d->L;
  const char *s;
  size_t n;
  if (dec_name(d, &s, &n)) return -1;
  if (d->cs && d->cs->lazy) conc_cs_materialize(L, d->cs);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushlstring(L, s, n);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return bad(d, "unknown library");
  }
  return 0;
}

static int dec_obj(dec *d, int remote) {
  int kind;
  cobj *o;
  if (getbyte(d, &kind)) return -1;
  if (kind >= K_NKINDS) return bad(d, "bad object kind");
  if (d->cs == NULL) return bad(d, "objects need a conclua state");
  if (remote) {
    uint64_t uid;
    if (getbytes(d, &uid, 8)) return -1;
    o = conc_shm_lookup(uid);
    if (o == NULL || o->kind != kind)
      return bad(d, "a conc object made by another process after this one "
                    "was forked");
  } else {
    uint64_t i;
    if (getvar(d, &i)) return -1;
    if (d->refs == NULL || i >= (uint64_t)d->nrefs) return bad(d, "bad object");
    o = d->refs[i];
    if (o->kind != kind) return bad(d, "bad object");
  }
  conc_obj_push(d->L, d->cs, o);
  if (remote) conc_obj_release(o);   /* conc_shm_lookup gave a reference */
  return 0;
}

static int dec_value(dec *d) {
  lua_State *L = d->L;
  int tag, r;
  if (getbyte(d, &tag)) return -1;
  switch (tag) {
    case T_NIL: lua_pushnil(L); return 0;
    case T_FALSE: lua_pushboolean(L, 0); return 0;
    case T_TRUE: lua_pushboolean(L, 1); return 0;
    case T_INT8: case T_INT16: case T_INT32: case T_INT64: {
      unsigned char v[8];
      if (getbytes(d, v, int_width(tag))) return -1;
      lua_pushinteger(L, int_get(tag, v));
      return 0;
    }
    case T_FLOAT: {
      double v;
      if (getbytes(d, &v, 8)) return -1;
      lua_pushnumber(L, (lua_Number)v);
      return 0;
    }
    case T_STR: {
      uint64_t n;
      if (getvar(d, &n)) return -1;
      if (n > left(d)) return bad(d, "truncated string");
      lua_pushlstring(L, (const char *)d->p, (size_t)n);
      d->p += n;
      return 0;
    }
    case T_REF: {
      uint64_t i;
      if (getvar(d, &i)) return -1;
      if (i < 1 || i > (uint64_t)d->nref) return bad(d, "bad reference");
      lua_rawgeti(L, d->reftab, (lua_Integer)i);
      return 0;
    }
    case T_TABLE:
    case T_LFUNC:
      if (d->depth >= MAXDEPTH) return bad(d, "nested too deep");
      /* room for this level: the table or function, a key and a value,
      ** and what decoding one of them pushes */
      if (!lua_checkstack(L, 8)) return bad(d, "stack overflow");
      if (d->reftab == 0) {     /* at depth 0: nothing above it to disturb */
        lua_newtable(L);
        d->reftab = lua_gettop(L);
      }
      d->depth++;
      r = tag == T_TABLE ? dec_table(d) : dec_lfunc(d);
      d->depth--;
      return r;
    case T_CFUNC: return dec_cfunc(d);
    case T_GLOBALS:
      lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
      return 0;
    case T_LIB: return dec_lib(d);
    case T_OBJ: return dec_obj(d, 0);
    case T_SHMOBJ: return dec_obj(d, 1);
    default: return bad(d, "bad tag");
  }
}

int conc_marshal_decode(lua_State *L, cstate *cs, const char *p, size_t n,
                   cobj **refs, int nrefs, char *err,
                   size_t errsz) {
  dec d;
  uint64_t count;
  int c, base = lua_gettop(L);
  const unsigned char *u = (const unsigned char *)p;
  /* the common message: one number or boolean, no traversal needed */
  if (n >= 4 && u[0] == MAGIC && u[1] == VERSION && u[2] == 1) {
    if (int_width(u[3]) && n == 4 + int_width(u[3])) {
      lua_pushinteger(L, int_get(u[3], u + 4));
      return 1;
    }
    switch (u[3]) {
      case T_TRUE:
      case T_FALSE:
        if (n == 4) {
          lua_pushboolean(L, u[3] == T_TRUE);
          return 1;
        }
        break;
    }
  }
  memset(&d, 0, sizeof d);
  d.L = L;
  d.cs = cs;
  d.p = (const unsigned char *)p;
  d.end = d.p + n;
  d.refs = refs;
  d.nrefs = nrefs;
  if (getbyte(&d, &c) || c != MAGIC || getbyte(&d, &c) || c != VERSION) {
    bad(&d, "not a conclua message");
    goto failed;
  }
  if (getvar(&d, &count)) goto failed;
  if (count > left(&d) || count > 1000000) {
    bad(&d, "bad value count");
    goto failed;
  }
  if (!lua_checkstack(L, (int)count + 8)) {
    bad(&d, "too many values");
    goto failed;
  }
  for (uint64_t i = 0; i < count; i++) {
    if (dec_value(&d)) goto failed;
  }
  if (d.p != d.end) {
    bad(&d, "trailing bytes");
    goto failed;
  }
  if (d.reftab) lua_remove(L, d.reftab);
  return (int)count;
failed:
  lua_settop(L, base);
  snprintf(err, errsz, "corrupt message (%s)", d.err ? d.err : "bad data");
  return -1;
}

/* ------------------------------------------------------------ messages */

msg *conc_msg_encode(lua_State *L, cstate *cs, int first, int n,
                const char *root) {
  char err[512];
  msg *m;
  int r = conc_marshal_encode(L, cs, first, n, &cs->scratch, 0, root, err,
                              sizeof err);
  if (r != 0) conc_msg_raise(L, r, err);
  m = conc_msg_seal(&cs->scratch);
  if (m == NULL) {
    conc_mbuf_reset(&cs->scratch);
    conc_nomem(L);
  }
  return m;
}

static int loan_copy(lua_State *L) {
  msg *m = lua_touserdata(L, 1);
  lua_pushlstring(L, m->data, m->n);
  return 1;
}

/* A loan's one copy. The lender waits for it, so nothing in between may
** wait on anything: the collector is held (no finalizer runs), and an
** error (out of memory, a cancel's hook) is caught to let the lender go
** before it is raised again. */
static int push_loan(lua_State *L, msg *m) {
  int gc, st;
  if (!lua_checkstack(L, 3)) {
    conc_msg_free(m);
    return conc_nomem(L);
  }
  gc = lua_gc(L, LUA_GCISRUNNING);      /* -1 inside a finalizer: held */
  if (gc == 1) lua_gc(L, LUA_GCSTOP);
  lua_pushcfunction(L, loan_copy);
  lua_pushlightuserdata(L, m);
  st = lua_pcall(L, 1, 1, 0);
  if (gc == 1) lua_gc(L, LUA_GCRESTART);
  conc_msg_free(m);
  if (st != LUA_OK) return lua_error(L);
  return 1;
}

/* Decodes m onto L's stack and frees it.
** Meanwhile m is on the state's pending list: a finalizer run by an
** allocation of the decoder may decode messages of its own, stacked
** above m; one cut short by a Lua error (out of memory) stays there, and
** is freed when the decode below it ends, or with the state. */
int conc_msg_push(lua_State *L, cstate *cs, msg *m) {
  char err[160];
  int n;
  if (m->owndata == MSG_LOAN) return push_loan(L, m);
  m->next = cs->pending;
  cs->pending = m;
  n = conc_marshal_decode(L, cs, m->data, m->n, m->refs, m->nrefs, err,
                     sizeof err);
  for (;;) {
    msg *top = cs->pending;
    cs->pending = top->next;
    conc_msg_free(top);
    if (top == m) break;
  }
  if (n < 0) conc_msg_raise(L, n, err);
  return n;
}

