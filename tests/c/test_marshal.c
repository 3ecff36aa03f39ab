/*
** test_marshal.c
** The marshaller through its internal API: values encoded in one
** lua_State and decoded in another, object references and their counts,
** error messages, and a mutation test that feeds the decoder a large
** number of damaged messages.
**
** Three states: S, the sender, and R, the receiver, are host states
** (luaL_openlibs + conclua_open, each with its cstate); B is a bare state
** (luaL_openlibs only) decoded into with cs == NULL, where the decoder
** must refuse what needs a conclua state.
**
** The mutation test starts from a corpus of valid messages of many shapes
** (functions with shared upvalues, cycles, metatables, objects...), damages
** them with a deterministic PRNG (seed printed; CONCLUA_SEED overrides it,
** CONCLUA_MUTATIONS the count) and checks each decode returns an error
** with nothing pushed, or values that can be walked. Under `make asan`
** (CONCLUA_SANITIZER=asan) it runs at least 100,000 mutations, so a read
** out of bounds, a leak or undefined behaviour stops the program.
*/

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "init.h"
#include "walker.h"

/* Must match FUZZ_KEY in tests/fuzz/fuzz_decode.c. */
static const unsigned char FUZZ_KEY[16] = "conclua-fuzz-key";

static lua_State *S, *R, *B;
static cstate *Scs, *Rcs;
static int failed;
static char why[1024];

/* (through a copy: the arguments may name 'why' itself) */
#define FAIL(...)                                     \
  do {                                                \
    char tmp_[sizeof why];                            \
    snprintf(tmp_, sizeof tmp_, __VA_ARGS__);         \
    memcpy(why, tmp_, sizeof why);                    \
    return why;                                       \
  } while (0)
#define REQUIRE(c, ...) \
  do { if (!(c)) FAIL(__VA_ARGS__); } while (0)

static void run(const char *name, const char *(*fn)(void)) {
  int s = lua_gettop(S), r = lua_gettop(R), b = lua_gettop(B);
  const char *err = fn();
  if (err == NULL && (lua_gettop(S) != s || lua_gettop(R) != r ||
                      lua_gettop(B) != b))
    err = "a test left values on a stack";
  lua_settop(S, s);
  lua_settop(R, r);
  lua_settop(B, b);
  if (err) {
    failed++;
    printf("not ok - %s: %s\n", name, err);
  } else {
    printf("ok - %s\n", name);
  }
  fflush(stdout);
}

/* ------------------------------------------------------------ helpers */

static lua_State *newhost(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) abort();
  luaL_openlibs(L);
  conclua_open(L);
  return L;
}

/* Runs Lua code in L, leaving its results; returns how many, or -1 with
** the error in 'why'. */
static int dolua(lua_State *L, const char *code) {
  int base = lua_gettop(L);
  if (luaL_loadstring(L, code) != LUA_OK ||
      lua_pcall(L, 0, LUA_MULTRET, 0) != LUA_OK) {
    snprintf(why, sizeof why, "lua: %s", lua_tostring(L, -1));
    lua_settop(L, base);
    return -1;
  }
  return lua_gettop(L) - base;
}

/* Encodes the n values on top of L into b. */
static int encode(lua_State *L, cstate *cs, int n, mbuf *b, int flags,
                  const char *root, char *err, size_t errsz) {
  return conc_marshal_encode(L, cs, lua_gettop(L) - n + 1, n, b, flags, root, err,
                        errsz);
}

static int decode(lua_State *L, cstate *cs, const mbuf *b, int flags,
                  char *err, size_t errsz) {
  return conc_marshal_decode(L, cs, b->p, b->n, b->refs, b->nrefs, flags, err,
                        errsz);
}

/* Runs 'check' (a chunk that gets the n values on top of L as ...) and
** pops the values; NULL if it ran without error, else the error. */
static const char *check(lua_State *L, int n, const char *code) {
  int base = lua_gettop(L) - n;
  if (luaL_loadstring(L, code) != LUA_OK) {
    snprintf(why, sizeof why, "check does not compile: %s",
             lua_tostring(L, -1));
    lua_settop(L, base);
    return why;
  }
  lua_insert(L, base + 1);
  if (lua_pcall(L, n, 0, 0) != LUA_OK) {
    snprintf(why, sizeof why, "check: %s", lua_tostring(L, -1));
    lua_settop(L, base);
    return why;
  }
  lua_settop(L, base);
  return NULL;
}

/* make (run in S) gives the values; they go to R (objects by reference)
** and, unless bare is 0, to B too; 'verify' runs on them in each. */
static const char *roundtrip(const char *make, const char *verify, int bare) {
  mbuf b;
  char err[512];
  int n, got;
  const char *r;
  conc_mbuf_init(&b);
  n = dolua(S, make);
  REQUIRE(n >= 0, "%s", why);
  if (encode(S, Scs, n, &b, 0, "value", err, sizeof err) != 0) {
    lua_pop(S, n);
    conc_mbuf_free(&b);
    FAIL("encode: %s", err);
  }
  lua_pop(S, n);
  got = decode(R, Rcs, &b, 0, err, sizeof err);
  if (got != n) {
    conc_mbuf_free(&b);
    FAIL("decode in R gave %d values, wanted %d: %s", got, n,
         got < 0 ? err : "");
  }
  if ((r = check(R, n, verify)) != NULL) {
    conc_mbuf_free(&b);
    return r;
  }
  if (bare) {
    got = conc_marshal_decode(B, NULL, b.p, b.n, NULL, 0, 0, err, sizeof err);
    if (got != n) {
      conc_mbuf_free(&b);
      FAIL("decode in B gave %d values, wanted %d: %s", got, n,
           got < 0 ? err : "");
    }
    if ((r = check(B, n, verify)) != NULL) {
      conc_mbuf_free(&b);
      return r;
    }
  }
  conc_mbuf_free(&b);
  return NULL;
}

/* The error message of encoding what 'make' gives under 'root'. */
static const char *encode_error(const char *make, const char *root, int flags,
                                char *err, size_t errsz) {
  mbuf b;
  int n, r;
  conc_mbuf_init(&b);
  n = dolua(S, make);
  if (n < 0) return why;
  r = encode(S, Scs, n, &b, flags, root, err, errsz);
  lua_pop(S, n);
  if (r == 0) {
    conc_mbuf_free(&b);
    return "encoded, but should have failed";
  }
  if (b.n != 0 || b.nrefs != 0) {
    conc_mbuf_free(&b);
    return "the buffer was not reset after a failed encode";
  }
  conc_mbuf_free(&b);
  return NULL;
}

static int refcount(cobj *o) {
  return atomic_load(&o->refs);
}

/* The object behind the handle that is the value of global 'name' in S. */
static cobj *sobj(const char *name) {
  cobj *o;
  lua_getglobal(S, name);
  o = conc_obj_test(S, Scs, -1);
  lua_pop(S, 1);
  return o;
}

static void fullgc(lua_State *L) {
  lua_gc(L, LUA_GCCOLLECT, 0);
  lua_gc(L, LUA_GCCOLLECT, 0);
}

/* ------------------------------------------------------------ values */

static const char *t_scalars(void) {
  return roundtrip(
      "local s = {} for i = 0, 255 do s[#s + 1] = string.char(i) end\n"
      "return nil, true, false, 0, 127, -128, 128, -129, 32767, -32768,\n"
      "  32768, -32769, 2147483647, -2147483648, 2147483648, -2147483649,\n"
      "  math.maxinteger, math.mininteger, 0.0, -0.0, 1.0, 2^53, 2^63,\n"
      "  1/0, -1/0, 0/0, 5e-324, math.pi, '', 'a\\0b', table.concat(s),\n"
      "  string.rep('\\0\\255', 100000)",
      "local v = table.pack(...)\n"
      "assert(v.n == 32, 'count ' .. v.n)\n"
      "assert(v[1] == nil and v[2] == true and v[3] == false)\n"
      "local ints = {0, 127, -128, 128, -129, 32767, -32768, 32768, -32769,\n"
      "  2147483647, -2147483648, 2147483648, -2147483649,\n"
      "  math.maxinteger, math.mininteger}\n"
      "for i, x in ipairs(ints) do\n"
      "  assert(math.type(v[3 + i]) == 'integer' and v[3 + i] == x,\n"
      "         'integer ' .. x .. ' came as ' .. tostring(v[3 + i]))\n"
      "end\n"
      "local fl = {0.0, -0.0, 1.0, 2^53, 2^63, 1/0, -1/0}\n"
      "for i, x in ipairs(fl) do\n"
      "  assert(math.type(v[18 + i]) == 'float' and v[18 + i] == x,\n"
      "         'float ' .. x)\n"
      "end\n"
      "assert(1 / v[19] == 1/0 and 1 / v[20] == -1/0, 'sign of zero')\n"
      "assert(v[26] ~= v[26] and math.type(v[26]) == 'float', 'NaN')\n"
      "assert(v[27] == 5e-324 and v[28] == math.pi)\n"
      "assert(v[29] == '' and v[30] == 'a\\0b' and #v[30] == 3)\n"
      "for i = 0, 255 do assert(v[31]:byte(i + 1) == i, 'byte ' .. i) end\n"
      "assert(v[32] == string.rep('\\0\\255', 100000))\n",
      1);
}

/* Small integers take fewer bytes: the sizes of one-value messages. */
static const char *t_int_widths(void) {
  static const struct { const char *v; size_t n; } cases[] = {
      {"return 5", 5},           {"return -100", 5},
      {"return 300", 6},         {"return -30000", 6},
      {"return 70000", 8},       {"return -2000000000", 8},
      {"return 2^40 // 1", 12},  {"return math.mininteger", 12},
      {"return 1.0", 12},        {"return true", 4}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mbuf b;
    char err[256];
    conc_mbuf_init(&b);
    REQUIRE(dolua(S, cases[i].v) == 1, "%s", why);
    REQUIRE(encode(S, Scs, 1, &b, 0, "value", err, sizeof err) == 0, "%s",
            err);
    lua_pop(S, 1);
    if (b.n != cases[i].n) {
      size_t got = b.n;
      conc_mbuf_free(&b);
      FAIL("%s: %zu bytes, expected %zu", cases[i].v, got, cases[i].n);
    }
    conc_mbuf_free(&b);
  }
  return NULL;
}

static const char *t_tables(void) {
  return roundtrip(
      "local shared = {'s'}\n"
      "local cyc = {} cyc.self = cyc\n"
      "local a, b = {name = 'a'}, {name = 'b'} a.next, b.next = b, a\n"
      "local k = {key = true}\n"
      "local nested = {1, {2, {3, {4}}}, x = {y = {z = 'deep'}}}\n"
      "local mixed = {1, nil, 3, [10] = 10, [1.5] = 'f', [true] = 't',\n"
      "  [-1] = 'neg', ['\\0'] = 'nul', [k] = 'tablekey', kref = k}\n"
      "local big = {} for i = 1, 100000 do big[i] = i end\n"
      "return {shared, shared, {shared}}, cyc, a, nested, mixed, big, shared",
      "local sh, cyc, a, nested, mixed, big, shared = ...\n"
      "assert(sh[1] == sh[2] and sh[2] == sh[3][1], 'shared in one value')\n"
      "assert(sh[1] == shared, 'shared across the values of a message')\n"
      "assert(cyc.self == cyc, 'cycle')\n"
      "assert(a.next.next == a and a.next.name == 'b', 'two-table cycle')\n"
      "assert(nested[2][2][2][1] == 4 and nested.x.y.z == 'deep')\n"
      "assert(mixed[1] == 1 and mixed[2] == nil and mixed[3] == 3)\n"
      "assert(mixed[10] == 10 and mixed[1.5] == 'f' and mixed[true] == 't')\n"
      "assert(mixed[-1] == 'neg' and mixed['\\0'] == 'nul')\n"
      "assert(mixed[mixed.kref] == 'tablekey' and mixed.kref.key)\n"
      "local n = 0 for _ in pairs(mixed) do n = n + 1 end\n"
      "assert(n == 9, 'keys: ' .. n)\n"
      "assert(#big == 100000)\n"
      "for i = 1, #big do\n"
      "  if big[i] ~= i or math.type(big[i]) ~= 'integer' then\n"
      "    error('big[' .. i .. ']')\n"
      "  end\n"
      "end\n",
      1);
}

static const char *t_metatables(void) {
  return roundtrip(
      "local P = {} P.__index = P\n"
      "function P.new(x, y) return setmetatable({x = x, y = y}, P) end\n"
      "function P:len2() return self.x * self.x + self.y * self.y end\n"
      "function P.__add(a, b) return P.new(a.x + b.x, a.y + b.y) end\n"
      "local dropped = setmetatable({1, 2}, {__index = print,\n"
      "                                      bad = coroutine.create(print)})\n"
      "local selfmeta = {} setmetatable(selfmeta, selfmeta)\n"
      "selfmeta.__index = function() return 'dflt' end\n"
      "return P.new(3, 4), P.new(1, 1), dropped, selfmeta",
      "local p, q, dropped, sm = ...\n"
      "assert(p:len2() == 25, 'method')\n"
      "assert((p + q):len2() == 41, '__add')\n"
      "assert(getmetatable(p) == getmetatable(q), 'one metatable')\n"
      "assert(getmetatable(dropped) == nil, 'an uncopyable metatable drops')\n"
      "assert(dropped[1] == 1 and dropped[2] == 2)\n"
      "assert(getmetatable(sm) == sm and sm.anything == 'dflt')\n",
      1);
}

static const char *t_functions(void) {
  const char *r;
  lua_pushliteral(R, "receiver");
  lua_setglobal(R, "where");
  lua_pushliteral(B, "bare");
  lua_setglobal(B, "where");
  r = roundtrip(
      "where = 'sender'\n"
      "local n = 0\n"
      "local function inc() n = n + 1 return n end\n"
      "local function get() return n end\n"
      "local function fib(k) if k < 2 then return k end\n"
      "  return fib(k - 1) + fib(k - 2) end\n"
      "local t = {} local function tf() return t end t.f = tf\n"
      "local function env() return where, _ENV == _G end\n"
      "local function setg(v) newglobal = v end\n"
      "local function pair()\n"
      "  local k = 0 return function() k = k + 1 end, function() return k end\n"
      "end\n"
      "local i1, g1 = pair() local i2, g2 = pair()\n"
      "return inc, get, fib, tf, env, setg, {i1, g1, i2, g2}, inc",
      "local inc, get, fib, tf, env, setg, pairs4, inc2 = ...\n"
      "inc() inc()\n"
      "assert(get() == 2, 'shared upvalue: ' .. get())\n"
      "assert(inc == inc2, 'one function')\n"
      "assert(fib(15) == 610, 'recursive')\n"
      "assert(tf().f == tf, 'cycle through an upvalue')\n"
      "local w, isg = env()\n"
      "assert(w == where and w ~= 'sender' and isg, '_ENV: ' .. tostring(w))\n"
      "setg(42) assert(newglobal == 42, 'globals of the receiver')\n"
      "newglobal = nil\n"
      "pairs4[1]() pairs4[1]() pairs4[3]()\n"
      "assert(pairs4[2]() == 2 and pairs4[4]() == 1, 'separate upvalues')\n",
      1);
  lua_pushnil(R);
  lua_setglobal(R, "where");
  lua_pushnil(B);
  lua_setglobal(B, "where");
  return r;
}

static const char *t_libraries(void) {
  const char *r = roundtrip(
      "string.sender_only = 1\n"
      "return _G, string, math, table, {g = _G, s = string}, print,\n"
      "  string.format, require, pairs",
      "local g, s, m, t, mix, pr, fmt, req, prs = ...\n"
      "assert(g == _G and s == string and m == math and t == table)\n"
      "assert(mix.g == _G and mix.s == string)\n"
      "assert(string.sender_only == nil, 'the receiver\\'s own string')\n"
      "assert(pr == print and fmt == string.format and prs == pairs)\n"
      "assert(req == require, 'require is the receiver\\'s')\n"
      "assert(fmt('%03d', 7) == '007')\n",
      1);
  dolua(S, "string.sender_only = nil");
  if (r) return r;
  /* conc functions and the conc table need a conclua state */
  r = roundtrip(
      "local ch = conc.channel()\n"
      "return conc.sleep, conc.channel, ch.send, conc, ch, coroutine.wrap",
      "local sleep, mk, send, c, ch, wrap = ...\n"
      "assert(wrap == coroutine.wrap, 'conclua coroutine.wrap')\n"
      "assert(sleep == conc.sleep and mk == conc.channel and c == conc)\n"
      "assert(send == ch.send, 'a method is the receiver\\'s own')\n"
      "sleep(0)\n"
      "send(ch, 'x') assert(ch:recv() == 'x')\n",
      0);
  if (r) return r;
  {
    mbuf b;
    char err[256];
    int n, top = lua_gettop(B);
    conc_mbuf_init(&b);
    n = dolua(S, "return conc.sleep");
    REQUIRE(n == 1, "%s", why);
    REQUIRE(encode(S, Scs, 1, &b, 0, "value", err, sizeof err) == 0, "%s",
            err);
    lua_pop(S, 1);
    n = conc_marshal_decode(B, NULL, b.p, b.n, NULL, 0, 0, err, sizeof err);
    conc_mbuf_free(&b);
    REQUIRE(n == -1 && lua_gettop(B) == top, "conc.sleep decoded without a "
            "conclua state");
    REQUIRE(strcmp(err, "corrupt message (conc functions need a conclua "
                   "state)") == 0, "message: %s", err);
    conc_mbuf_init(&b);
    REQUIRE(dolua(S, "return {conc}") == 1, "%s", why);
    REQUIRE(encode(S, Scs, 1, &b, 0, "value", err, sizeof err) == 0, "%s",
            err);
    lua_pop(S, 1);
    n = conc_marshal_decode(B, NULL, b.p, b.n, NULL, 0, 0, err, sizeof err);
    conc_mbuf_free(&b);
    REQUIRE(n == -1 && lua_gettop(B) == top, "conc decoded in a bare state");
    REQUIRE(strcmp(err, "corrupt message (unknown library)") == 0,
            "message: %s", err);
  }
  return NULL;
}

/* A worker's state is lazy (no library open); decoding a library table or
** require opens them. */
static const char *t_lazy_receiver(void) {
  lua_State *W = conc_state_new();
  cstate *cs = conc_cs_new(Rcs->rt, NULL);
  mbuf b;
  char err[256];
  int n;
  const char *r = NULL;
  REQUIRE(W && cs, "no memory");
  conc_state_bind(W, cs);
  conc_state_make_lazy(W, cs);
  conc_mbuf_init(&b);
  n = dolua(S, "return string, require, conc.now, 'plain'");
  if (n != 4) { r = why; goto done; }
  if (encode(S, Scs, 4, &b, 0, "value", err, sizeof err) != 0) {
    lua_pop(S, 4);
    r = "encode failed";
    goto done;
  }
  lua_pop(S, 4);
  n = decode(W, cs, &b, 0, err, sizeof err);
  if (n != 4) { snprintf(why, sizeof why, "decode: %s", err); r = why; goto done; }
  r = check(W, 4,
            "local s, req, now, p = ...\n"
            "assert(s == string and s.upper('a') == 'A', 'string')\n"
            "assert(req == require and now == conc.now and p == 'plain')\n");
done:
  conc_mbuf_free(&b);
  conc_state_close(W);
  conc_cs_free(cs);
  return r;
}

/* ------------------------------------------------------------ objects */

static const char *t_objects(void) {
  mbuf b;
  char err[256];
  cobj *o;
  int r0, n, top;
  const char *r;
  conc_mbuf_init(&b);
  REQUIRE(dolua(S, "obj_ch = conc.channel()") == 0, "%s", why);
  o = sobj("obj_ch");
  REQUIRE(o != NULL, "no channel object");
  r0 = refcount(o);
  REQUIRE(r0 == 1, "a fresh channel has %d references", r0);
  REQUIRE(dolua(S, "return obj_ch, {obj_ch, k = {[obj_ch] = 1}}") == 2, "%s",
          why);
  REQUIRE(encode(S, Scs, 2, &b, 0, "value", err, sizeof err) == 0, "%s", err);
  lua_pop(S, 2);
  REQUIRE(b.nrefs >= 1, "no reference taken");
  REQUIRE(refcount(o) == r0 + b.nrefs, "the buffer holds %d, count is %d",
          b.nrefs, refcount(o));
  /* without a state for objects: refused, nothing pushed */
  top = lua_gettop(B);
  n = decode(B, NULL, &b, 0, err, sizeof err);
  REQUIRE(n == -1 && lua_gettop(B) == top, "objects decoded without a state");
  REQUIRE(strcmp(err, "corrupt message (objects need a conclua state)") == 0,
          "message: %s", err);
  /* without the buffer's refs: refused */
  top = lua_gettop(R);
  n = conc_marshal_decode(R, Rcs, b.p, b.n, NULL, 0, 0, err, sizeof err);
  REQUIRE(n == -1 && lua_gettop(R) == top, "objects decoded without refs");
  /* in R: one handle, the same object */
  n = decode(R, Rcs, &b, 0, err, sizeof err);
  REQUIRE(n == 2, "decode: %s", err);
  REQUIRE(conc_obj_test(R, Rcs, -2) == o, "not the same object");
  REQUIRE(refcount(o) == r0 + b.nrefs + 1, "R's handle holds one: %d",
          refcount(o));
  r = check(R, 2,
            "local ch, t = ...\n"
            "assert(rawequal(ch, t[1]) and t.k[ch] == 1, 'one handle')\n"
            "ch:send('from R')\n");
  if (r) { conc_mbuf_free(&b); return r; }
  REQUIRE(dolua(S, "assert(obj_ch:recv(0) == 'from R')") == 0, "%s", why);
  conc_mbuf_reset(&b);
  REQUIRE(refcount(o) == r0 + 1, "after reset: %d", refcount(o));
  fullgc(R);
  REQUIRE(refcount(o) == r0, "R collected its handle: %d", refcount(o));
  /* sealed messages and copies hold references of their own */
  {
    msg *m, *c;
    REQUIRE(dolua(S, "return obj_ch") == 1, "%s", why);
    REQUIRE(encode(S, Scs, 1, &b, 0, "value", err, sizeof err) == 0, "%s",
            err);
    lua_pop(S, 1);
    m = conc_msg_seal(&b);
    REQUIRE(m && b.nrefs == 0 && b.n == 0, "seal");
    c = conc_msg_dup(m);
    REQUIRE(c && refcount(o) == r0 + 2, "dup: %d", refcount(o));
    conc_msg_free(c);
    REQUIRE(refcount(o) == r0 + 1, "free the copy: %d", refcount(o));
    n = conc_msg_push(R, Rcs, m);              /* frees m */
    REQUIRE(n == 1 && conc_obj_test(R, Rcs, -1) == o, "conc_msg_push");
    lua_pop(R, 1);
    fullgc(R);
    REQUIRE(refcount(o) == r0, "after conc_msg_push and gc: %d", refcount(o));
  }
  /* a failed encode keeps no reference */
  r = encode_error("return obj_ch, {obj_ch, obj_ch, io.stdout}", "args[%d]",
                   0, err, sizeof err);
  if (r) { conc_mbuf_free(&b); return r; }
  REQUIRE(strcmp(err, "cannot transfer a value of type 'userdata' "
                 "(args[2][3])") == 0, "message: %s", err);
  REQUIRE(refcount(o) == r0, "failed encode left %d refs", refcount(o));
  /* a dropped metatable gives back the references taken inside it */
  REQUIRE(dolua(S, "return setmetatable({}, {ch = obj_ch, "
                   "co = coroutine.create(print)})") == 1, "%s", why);
  REQUIRE(encode(S, Scs, 1, &b, 0, "value", err, sizeof err) == 0, "%s", err);
  lua_pop(S, 1);
  REQUIRE(b.nrefs == 0 && refcount(o) == r0, "rolled back metatable kept "
          "%d refs", b.nrefs);
  conc_mbuf_free(&b);
  REQUIRE(dolua(S, "obj_ch = nil collectgarbage() collectgarbage()") == 0,
          "%s", why);
  return NULL;
}

/* Between processes: objects in shared memory cross by uid, others are
** refused. */
static const char *t_remote_objects(void) {
  mbuf b;
  char err[256];
  cobj *o;
  int n, r0;
  const char *r;
  conc_mbuf_init(&b);
  REQUIRE(dolua(S, "obj_lock = conc.lock()") == 0, "%s", why);
  o = sobj("obj_lock");
  r0 = refcount(o);
  REQUIRE(dolua(S, "return obj_lock, {obj_lock}") == 2, "%s", why);
  REQUIRE(encode(S, Scs, 2, &b, MARSHAL_REMOTE, "value", err, sizeof err) == 0,
          "%s", err);
  lua_pop(S, 2);
  REQUIRE(b.nrefs == 0, "a remote message holds no local references");
  n = conc_marshal_decode(R, Rcs, b.p, b.n, NULL, 0, MARSHAL_REMOTE, err,
                     sizeof err);
  REQUIRE(n == 2, "decode: %s", err);
  REQUIRE(conc_obj_test(R, Rcs, -2) == o, "the same lock");
  r = check(R, 2, "local l, t = ... assert(l == t[1])\n"
                  "assert(l:acquire(0)) l:release()");
  if (r) { conc_mbuf_free(&b); return r; }
  fullgc(R);
  REQUIRE(refcount(o) == r0, "lookup reference given back: %d", refcount(o));
  n = conc_marshal_decode(B, NULL, b.p, b.n, NULL, 0, MARSHAL_REMOTE, err,
                     sizeof err);
  REQUIRE(n == -1, "a remote object without a state");
  conc_mbuf_free(&b);
  r = encode_error("return conc.channel()", "value", MARSHAL_REMOTE, err,
                   sizeof err);
  if (r) return r;
  REQUIRE(strcmp(err, "cannot transfer a value of type 'conc.channel' "
                 "(value): it works between the threads of one process "
                 "only") == 0, "message: %s", err);
  r = encode_error("return 1, {l = obj_lock}", "spawn",
                   MARSHAL_REMOTE | MARSHAL_NOSHM, err, sizeof err);
  if (r) return r;
  REQUIRE(strcmp(err, "cannot transfer a value of type 'conc.lock' "
                 "(args[1].l): a process started with start = 'spawn' "
                 "shares nothing") == 0, "message: %s", err);
  REQUIRE(dolua(S, "obj_lock = nil collectgarbage()") == 0, "%s", why);
  return NULL;
}

/* ------------------------------------------------------------ errors */

static const char *t_errors(void) {
  static const struct { const char *make, *root, *want; } cases[] = {
      {"return print, 1, {log = io.stdout}", "spawn",
       "cannot transfer a value of type 'userdata' (args[2].log)"},
      {"local f = io.stdout return function() return f end", "spawn",
       "cannot transfer a value of type 'userdata' (fn<upvalue f>)"},
      {"return {a = {b = {1, 2, coroutine.create(print)}}}", "value",
       "cannot transfer a value of type 'thread' (value.a.b[3])"},
      {"return 1, 2, io.stderr", "results[%d]",
       "cannot transfer a value of type 'userdata' (results[3])"},
      {"return {[io.stdout] = 1}", "value",
       "cannot transfer a value of type 'userdata' (value[<userdata key>])"},
      {"return {['not an ident'] = {[2.5] = {[false] = io.stdout}}}", "value",
       "cannot transfer a value of type 'userdata' "
       "(value[\"not an ident\"][2.5][false])"},
      {"return {it = string.gmatch('', '')}", "value",
       "cannot transfer a value of type 'function' (value.it): only C "
       "functions of the standard libraries and conc can cross"},
      {"local t = {} for i = 1, 2000 do t = {t} end return t", "value",
       NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char err[512];
    const char *r = encode_error(cases[i].make, cases[i].root, 0, err,
                                 sizeof err);
    if (r) FAIL("case %zu: %s", i + 1, r);
    if (cases[i].want) {
      REQUIRE(strcmp(err, cases[i].want) == 0, "case %zu: got \"%s\"",
              i + 1, err);
    } else {
      REQUIRE(strstr(err, "cannot transfer a value of type 'table' (value") &&
              strstr(err, "): nested more than 1000 levels deep"),
              "deep: got \"%s\"", err);
    }
  }
  return NULL;
}

/* ------------------------------------------------------------ decoder */

/* A one-value message of what 'code' returns. */
static const char *encode1(const char *code, mbuf *b) {
  static char err[256];
  if (dolua(S, code) != 1) return why;
  if (encode(S, Scs, 1, b, 0, "value", err, sizeof err) != 0) {
    lua_pop(S, 1);
    return err;
  }
  lua_pop(S, 1);
  return NULL;
}

/* Decodes p[0..n) in R (and B), wanting an error that contains 'want'. */
static const char *want_error(const char *p, size_t n, const char *want) {
  char err[256];
  int top = lua_gettop(R), r;
  r = conc_marshal_decode(R, Rcs, p, n, NULL, 0, 0, err, sizeof err);
  REQUIRE(r == -1, "decoded %d values, wanted the error '%s'", r, want);
  REQUIRE(lua_gettop(R) == top, "values left after an error");
  REQUIRE(strstr(err, want) != NULL, "error \"%s\", wanted '%s'", err, want);
  top = lua_gettop(B);
  r = conc_marshal_decode(B, NULL, p, n, NULL, 0, 0, err, sizeof err);
  REQUIRE(r == -1 && lua_gettop(B) == top, "B decoded what R refused");
  return NULL;
}

static const char *t_bad_messages(void) {
  mbuf b;
  const char *r;
  char *p;
  conc_mbuf_init(&b);
  if ((r = encode1("return {1, 'two', {3}}", &b)) != NULL) return r;
  p = malloc(b.n + 1);
  REQUIRE(p, "no memory");
  memcpy(p, b.p, b.n);
  if ((r = want_error(p, 0, "truncated")) ||
      (r = want_error("\xc7", 1, "truncated")) ||
      (r = want_error("x\x01\x01\x00", 4, "not a conclua message")))
    goto done;
  p[1] ^= 0x40;                                /* version */
  if ((r = want_error(p, b.n, "not a conclua message"))) goto done;
  p[1] ^= 0x40;
  p[b.n] = 0;                                  /* one byte too many */
  if ((r = want_error(p, b.n + 1, "trailing bytes"))) goto done;
  /* every strict prefix is truncated */
  for (size_t i = 0; i < b.n; i++)
    if ((r = want_error(p, i, ""))) goto done;
  /* a huge count */
  if ((r = want_error("\xc7\x01\xff\xff\xff\xff\x0f", 7, "bad value count")))
    goto done;
done:
  free(p);
  conc_mbuf_free(&b);
  return r;
}

/* Bytecode loads only when its MAC matches: flip one byte of the code, or
** change the key, and the function is refused before lua_load sees it. */
static const char *t_bytecode_mac(void) {
  mbuf b;
  char err[256];
  unsigned char key[16], other[16];
  const char *r;
  size_t at;
  int n;
  conc_mbuf_init(&b);
  if ((r = encode1("local up = 7 return function(x) return x + up end", &b)))
    return r;
  /* the dump starts with LUA_SIGNATURE ("\x1bLua") */
  for (at = 0; at + 4 <= b.n; at++)
    if (memcmp(b.p + at, LUA_SIGNATURE, 4) == 0) break;
  REQUIRE(at + 4 <= b.n, "no bytecode in the message");
  n = decode(R, Rcs, &b, 0, err, sizeof err);
  REQUIRE(n == 1, "intact: %s", err);
  r = check(R, 1, "local f = ... assert(f(1) == 8)");
  if (r) { conc_mbuf_free(&b); return r; }
  for (size_t i = at; i < at + 40 && i < b.n; i++) {
    b.p[i] ^= 0x01;
    n = decode(R, Rcs, &b, 0, err, sizeof err);
    b.p[i] ^= 0x01;
    if (n != -1 || strstr(err, "function failed its check") == NULL) {
      conc_mbuf_free(&b);
      FAIL("byte %zu of the code flipped: %d, %s", i - at, n, err);
    }
  }
  conc_marshal_key(key);
  memcpy(other, key, 16);
  other[3] ^= 0x55;
  conc_marshal_setkey(other);
  n = decode(R, Rcs, &b, 0, err, sizeof err);
  conc_marshal_setkey(key);
  conc_mbuf_free(&b);
  REQUIRE(n == -1 && strstr(err, "function failed its check"),
          "another key: %d, %s", n, err);
  return NULL;
}

/* Pre-computed prefix of a table header: the bytes a one-element array
** table takes before its element, taken from a real encoding. */
static const char *t_deep_messages(void) {
  mbuf b;
  const char *r;
  char err[256];
  char *deep, hdr[10];
  size_t hn = 10, n, levels = 100000;
  int got, top;
  conc_mbuf_init(&b);
  if ((r = encode1("return {{}}", &b)) != NULL) return r;
  /* MAGIC VERSION count(1), then the outer table: tag + 9 bytes */
  REQUIRE(b.n == 3 + 10 + 10, "unexpected shape: %zu bytes", b.n);
  memcpy(hdr, b.p + 3, hn);
  deep = malloc(3 + levels * hn + 10);
  REQUIRE(deep, "no memory");
  memcpy(deep, b.p, 3);
  n = 3;
  for (size_t i = 0; i < levels; i++, n += hn) memcpy(deep + n, hdr, hn);
  memcpy(deep + n, b.p + 13, 10);              /* the innermost {} */
  n += 10;
  conc_mbuf_free(&b);
  r = want_error(deep, n, "nested too deep");
  if (r == NULL) {
    /* 900 levels are fine */
    size_t m = 3 + 900 * hn;
    memcpy(deep + m, deep + n - 10, 10);
    m += 10;
    top = lua_gettop(R);
    got = conc_marshal_decode(R, Rcs, deep, m, NULL, 0, 0, err, sizeof err);
    if (got != 1) {
      snprintf(why, sizeof why, "900 levels: %s", err);
      r = why;
    } else {
      r = check(R, 1, "local t, d = ..., 0\n"
                      "while t[1] do t, d = t[1], d + 1 end\n"
                      "assert(d == 900, d)");
    }
    lua_settop(R, top);
  }
  free(deep);
  return r;
}

/* ------------------------------------------------------------ mutation */

typedef struct sample {
  char *p;
  size_t n;
  cobj **refs;        /* the message's own references, or NULL */
  int nrefs;
  int remote;
  msg *m;             /* holds p and refs when local */
} sample;

static sample corpus[64];
static int ncorpus;

static const char *const shapes[] = {
    "return nil",
    "return true, false, 0, -1, 127, 128, -32769, 2^40 // 1, math.mininteger",
    "return 1.5, 0/0, -0.0, 1/0, -1/0, 5e-324",
    "return '', 'abc\\0def', string.rep('x', 300)",
    "return {1, 2, 3, 'four', 5.5}",
    "return {a = 1, b = {c = {d = {e = 'deep'}}}}",
    "return {[1.5] = 1, [true] = 2, k = 3, [-7] = 4, [0] = 5}",
    "local x = {1} return {a = x, b = x, {x, x}}",
    "local t = {} t.self = t t[1] = t return t",
    "local a, b = {}, {} a.n, b.n = b, a return a, b",
    "local P = {} P.__index = P function P:m() return self.v end\n"
    "return setmetatable({v = 1}, P), setmetatable({v = 2}, P)",
    "local t = {} setmetatable(t, t) t.__index = t return t",
    "local n = 0 local function inc() n = n + 1 return n end\n"
    "local function get() return n end return inc, get, {inc, get}",
    "local function fib(k) if k < 2 then return k end\n"
    "  return fib(k - 1) + fib(k - 2) end return fib",
    "local t = {} local function f() return t end t.f = f return f, t",
    "local a, b, c = 1, 'two', {3}\n"
    "local function f() return a, b, c end\n"
    "local function g() a = a + 1 return c end\n"
    "return {f = f, g = g}, function() return b, f end",
    "return function(...) return select('#', ...) end",
    "return _G, string, math, {g = _G, lib = table}",
    "return print, string.format, require, pairs, coroutine.wrap",
    "return conc.sleep, conc.channel, conc.now",
    "local t = {} for i = 1, 200 do t[i] = i * 3 end return t",
    "local t = {} for i = 1, 40 do t = {t, i} end return t",
    "local t = {} for i = 1, 30 do t['k' .. i] = {i, tostring(i)} end\n"
    "return t",
    "return 1, 'two', {3}, function() return 4 end, nil, false",
    NULL};

/* Shapes with objects: local references (and a remote form for shm). */
static const char *const objshapes[] = {
    "local ch = conc.channel() return ch, {ch, [ch] = 1}",
    "local l, e = conc.lock(), conc.event() return {l = l, e = e}, l",
    "local ch = conc.channel() return ch.send, ch, function() return ch end",
    NULL};

static const char *add_sample(const char *code, int flags) {
  mbuf b;
  char err[256];
  int n;
  sample *s = &corpus[ncorpus];
  REQUIRE(ncorpus < (int)(sizeof corpus / sizeof corpus[0]), "corpus full");
  conc_mbuf_init(&b);
  n = dolua(S, code);
  REQUIRE(n >= 0, "%s", why);
  if (encode(S, Scs, n, &b, flags, "value", err, sizeof err) != 0) {
    lua_pop(S, n);
    conc_mbuf_free(&b);
    FAIL("corpus %s: %s", code, err);
  }
  lua_pop(S, n);
  memset(s, 0, sizeof *s);
  s->remote = (flags & MARSHAL_REMOTE) != 0;
  s->m = conc_msg_seal(&b);
  conc_mbuf_free(&b);
  REQUIRE(s->m, "no memory");
  s->p = s->m->data;
  s->n = s->m->n;
  s->refs = s->m->nrefs ? s->m->refs : NULL;
  s->nrefs = s->m->nrefs;
  ncorpus++;
  return NULL;
}

static const char *build_corpus(void) {
  const char *r;
  for (int i = 0; shapes[i]; i++)
    if ((r = add_sample(shapes[i], 0))) return r;
  for (int i = 0; objshapes[i]; i++)
    if ((r = add_sample(objshapes[i], 0))) return r;
  /* locks and events live in shared memory: they have a remote form */
  if ((r = add_sample(objshapes[1], MARSHAL_REMOTE))) return r;
  return NULL;
}

static void free_corpus(void) {
  for (int i = 0; i < ncorpus; i++) conc_msg_free(corpus[i].m);
  ncorpus = 0;
}

/* xorshift64*: small, deterministic, good enough to pick mutations. */
static uint64_t rng;
static uint64_t rnd(void) {
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 0x2545F4914F6CDD1DULL;
}
static size_t below(size_t n) {
  return n ? (size_t)(rnd() % n) : 0;
}

static int walker_ref(lua_State *L) {
  if (luaL_dostring(L, WALKER_LUA) != LUA_OK) return LUA_NOREF;
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Damages buf (of len *n, capacity cap) in place, one to four times. */
static void mutate(char *buf, size_t *n, size_t cap) {
  static const uint32_t interesting[] = {
      0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff,
      0x7fffffff, 0x80000000u, 0xfffffffeu, 0xffffffffu, 1000, 100000};
  int times = 1 + (int)below(4);
  for (int t = 0; t < times; t++) {
    size_t len = *n;
    switch (below(10)) {
      case 0:                                   /* flip bits */
        if (len) buf[below(len)] ^= (char)(1u << below(8));
        break;
      case 1:                                   /* a random byte */
        if (len) buf[below(len)] = (char)rnd();
        break;
      case 2:                                   /* a tag-like byte */
        if (len) buf[below(len)] = (char)(below(2) ? below(20) : 0x80 | below(20));
        break;
      case 3:                                   /* truncate */
        *n = below(len + 1);
        break;
      case 4: {                                 /* insert random bytes */
        size_t k = 1 + below(16), at = below(len + 1);
        if (len + k > cap) break;
        memmove(buf + at + k, buf + at, len - at);
        for (size_t i = 0; i < k; i++) buf[at + i] = (char)rnd();
        *n = len + k;
        break;
      }
      case 5: {                                 /* delete a range */
        size_t at, k;
        if (len == 0) break;
        at = below(len);
        k = 1 + below(len - at < 32 ? len - at : 32);
        memmove(buf + at, buf + at + k, len - at - k);
        *n = len - k;
        break;
      }
      case 6: {                                 /* splice another sample */
        const sample *o = &corpus[below((size_t)ncorpus)];
        size_t at = below(len + 1), from = below(o->n + 1);
        size_t k = o->n - from;
        if (at + k > cap) k = cap - at;
        memcpy(buf + at, o->p + from, k);
        *n = at + k;
        break;
      }
      case 7: {                                 /* insert a chunk of another */
        const sample *o = &corpus[below((size_t)ncorpus)];
        size_t from = below(o->n), k = 1 + below(64), at = below(len + 1);
        if (o->n == 0) break;
        if (from + k > o->n) k = o->n - from;
        if (len + k > cap) break;
        memmove(buf + at + k, buf + at, len - at);
        memcpy(buf + at, o->p + from, k);
        *n = len + k;
        break;
      }
      case 8: {                                 /* an interesting u32 */
        uint32_t v = interesting[below(sizeof interesting /
                                       sizeof interesting[0])];
        if (len < 4) break;
        memcpy(buf + below(len - 3), &v, 4);
        break;
      }
      default: {                                /* duplicate a range */
        size_t at, k;
        if (len == 0) break;
        at = below(len);
        k = 1 + below(len - at < 64 ? len - at : 64);
        if (len + k > cap) break;
        memmove(buf + at + k, buf + at, len - at);
        *n = len + k;
        break;
      }
    }
  }
}

typedef struct mstats {
  long ok, err, values;
} mstats;

/* Decodes one buffer in L (cs may be NULL) and checks the outcome. */
static const char *feed(lua_State *L, cstate *cs, int walker, const char *p,
                        size_t n, cobj **refs, int nrefs, int flags,
                        mstats *st) {
  char err[256];
  int top = lua_gettop(L), got;
  /* a block of exactly n bytes, so that ASan sees any read past the end */
  char *exact = malloc(n ? n : 1);
  REQUIRE(exact, "no memory");
  if (n) memcpy(exact, p, n);
  got = conc_marshal_decode(L, cs, exact, n, refs, nrefs, flags, err, sizeof err);
  free(exact);
  if (got < 0) {
    REQUIRE(lua_gettop(L) == top, "an error left %d values",
            lua_gettop(L) - top);
    REQUIRE(strncmp(err, "corrupt message (", 17) == 0, "error: %s", err);
    st->err++;
    return NULL;
  }
  REQUIRE(lua_gettop(L) == top + got, "%d values reported, %d pushed", got,
          lua_gettop(L) - top);
  lua_rawgeti(L, LUA_REGISTRYINDEX, walker);
  lua_insert(L, top + 1);
  if (lua_pcall(L, got, 1, 0) != LUA_OK)
    FAIL("walking decoded values: %s", lua_tostring(L, -1));
  st->values += lua_tointeger(L, -1);
  lua_settop(L, top);
  st->ok++;
  return NULL;
}

/* Saves a buffer that failed, for a rerun (the fuzz target takes it as
** an argument: build/fuzz/fuzz_decode FILE); returns the path. */
static const char *dump(const char *p, size_t n) {
  static char path[256];
  const char *dir = getenv("TMPDIR");
  FILE *f;
  snprintf(path, sizeof path, "%s/conclua-marshal-%ld.bin",
           dir && *dir ? dir : "/tmp", (long)getpid());
  f = fopen(path, "wb");
  if (f == NULL) return "(not saved)";
  fwrite(p, 1, n, f);
  fclose(f);
  return path;
}

static long mutations(void) {
  const char *env = getenv("CONCLUA_MUTATIONS");
  const char *san = getenv("CONCLUA_SANITIZER");
  if (env && *env) return atol(env);
  return san && strcmp(san, "asan") == 0 ? 120000 : 200000;
}

static const char *t_mutations(void) {
  enum { CAP = 1 << 16 };
  static char buf[CAP];
  const char *r = NULL, *env = getenv("CONCLUA_SEED");
  long count = mutations(), singles = 0;
  mstats st = {0, 0, 0};
  int wr = walker_ref(R), wb = walker_ref(B);
  int rcounts[64][8];
  size_t before, after;
  double t0 = conc_now(), slowest = 0;
  uint64_t seed = env && *env ? strtoull(env, NULL, 0) : 0x00c0ffee5eedULL;
  REQUIRE(wr != LUA_NOREF && wb != LUA_NOREF, "walker does not compile");
  rng = seed ? seed : 1;
  printf("# mutation seed %llu (CONCLUA_SEED), %ld mutations\n",
         (unsigned long long)seed, count);
  for (int i = 0; i < ncorpus; i++)
    for (int k = 0; k < corpus[i].nrefs && k < 8; k++)
      rcounts[i][k] = refcount(corpus[i].refs[k]);
  /* every sample decodes intact, in both states */
  for (int i = 0; i < ncorpus; i++) {
    const sample *s = &corpus[i];
    int fl = s->remote ? MARSHAL_REMOTE : 0;
    mstats one = {0, 0, 0};
    if ((r = feed(R, Rcs, wr, s->p, s->n, s->refs, s->nrefs, fl, &one)))
      return r;
    REQUIRE(one.ok == 1, "sample %d does not decode", i);
  }
  /* exhaustive: every single bit flipped, every sample */
  for (int i = 0; i < ncorpus; i++) {
    sample *s = &corpus[i];
    int fl = s->remote ? MARSHAL_REMOTE : 0;
    memcpy(buf, s->p, s->n);
    for (size_t at = 0; at < s->n; at++) {
      for (int bit = 0; bit < 8; bit++) {
        buf[at] ^= (char)(1 << bit);
        if ((r = feed(R, Rcs, wr, buf, s->n, s->refs, s->nrefs, fl, &st)) ||
            (r = feed(B, NULL, wb, buf, s->n, NULL, 0, fl, &st))) {
          char tmp[sizeof why];
          snprintf(tmp, sizeof tmp, "sample %d, bit %zu: %s (saved in %s)",
                   i, at * 8 + (size_t)bit, r, dump(buf, s->n));
          memcpy(why, tmp, sizeof why);
          r = why;
          goto out;
        }
        buf[at] ^= (char)(1 << bit);
        singles++;
      }
    }
    fullgc(R);
    fullgc(B);
  }
  fullgc(R);
  before = (size_t)lua_gc(R, LUA_GCCOUNT, 0) * 1024 +
           (size_t)lua_gc(R, LUA_GCCOUNTB, 0);
  /* random damage, several operators stacked */
  for (long it = 0; it < count; it++) {
    const sample *s = &corpus[below((size_t)ncorpus)];
    size_t n;
    double t1;
    int mode = (int)below(4);
    if (below(50) == 0) {                       /* pure garbage */
      n = below(below(2) ? 64 : 2048);
      for (size_t i = 0; i < n; i++) buf[i] = (char)rnd();
      if (n >= 2 && below(2)) {
        buf[0] = corpus[0].p[0];                /* MAGIC, VERSION */
        buf[1] = corpus[0].p[1];
      }
    } else {
      memcpy(buf, s->p, s->n);
      n = s->n;
      mutate(buf, &n, sizeof buf);
    }
    t1 = conc_now();
    switch (mode) {
      case 0:                                   /* R with the refs */
        r = feed(R, Rcs, wr, buf, n, s->refs, s->nrefs,
                 s->remote ? MARSHAL_REMOTE : 0, &st);
        break;
      case 1:                                   /* R as from a process */
        r = feed(R, Rcs, wr, buf, n, NULL, 0, MARSHAL_REMOTE, &st);
        break;
      default:                                  /* B: no conclua state */
        r = feed(B, NULL, wb, buf, n, NULL, 0, 0, &st);
        break;
    }
    if (conc_now() - t1 > slowest) slowest = conc_now() - t1;
    if (r) {
      char tmp[sizeof why];
      snprintf(tmp, sizeof tmp, "iteration %ld (seed %llu): %s (saved in "
               "%s)", it, (unsigned long long)seed, r, dump(buf, n));
      memcpy(why, tmp, sizeof why);
      r = why;
      goto out;
    }
    if ((it & 1023) == 1023) {
      fullgc(R);
      fullgc(B);
    }
  }
  fullgc(R);
  fullgc(B);
  after = (size_t)lua_gc(R, LUA_GCCOUNT, 0) * 1024 +
          (size_t)lua_gc(R, LUA_GCCOUNTB, 0);
  printf("# %ld single-bit flips, %ld random mutations: %ld decoded (%ld "
         "values walked), %ld refused; %.2fs, slowest %.2f ms\n",
         singles, count, st.ok, st.values, st.err, conc_now() - t0,
         slowest * 1e3);
  REQUIRE(st.ok > 0 && st.err > 0, "mutations should give both outcomes");
  REQUIRE(after < before + 256 * 1024, "R grew from %zu to %zu bytes", before,
          after);
  for (int i = 0; i < ncorpus; i++)
    for (int k = 0; k < corpus[i].nrefs && k < 8; k++)
      REQUIRE(refcount(corpus[i].refs[k]) == rcounts[i][k],
              "sample %d object %d: %d references, was %d", i, k,
              refcount(corpus[i].refs[k]), rcounts[i][k]);
out:
  luaL_unref(R, LUA_REGISTRYINDEX, wr);
  luaL_unref(B, LUA_REGISTRYINDEX, wb);
  return r;
}

static const char *t_corpus(void) {
  return build_corpus();
}

/* The seeds of tests/fuzz/corpus: the corpus above, plus objects in the
** order of the fuzz target's references (channel, lock, event, ...). */
static const char *t_write_fuzz_corpus(void) {
  const char *dir = getenv("CONCLUA_FUZZ_CORPUS");
  char path[512];
  int n = 0;
  for (int i = 0; i < ncorpus; i++) {
    FILE *f;
    if (corpus[i].remote) continue;
    if (corpus[i].nrefs) continue;       /* their refs mean nothing there */
    snprintf(path, sizeof path, "%s/seed-%02d", dir, n++);
    f = fopen(path, "wb");
    REQUIRE(f, "cannot write %s", path);
    fwrite(corpus[i].p, 1, corpus[i].n, f);
    fclose(f);
  }
  {
    mbuf b;
    char err[256];
    FILE *f;
    int k;
    static const int kinds[] = {K_CHANNEL, K_LOCK, K_EVENT};
    conc_mbuf_init(&b);
    k = dolua(S, "local c, l, e = conc.channel(), conc.lock(), conc.event()\n"
                 "return c, l, e, function() return c, l, e end, {c, l, e}");
    REQUIRE(k == 5, "%s", why);
    REQUIRE(encode(S, Scs, 5, &b, 0, "value", err, sizeof err) == 0, "%s",
            err);
    lua_pop(S, 5);
    for (int i = 0; i < b.nrefs; i++)
      REQUIRE(b.refs[i]->kind == kinds[i % 3], "object %d out of order", i);
    snprintf(path, sizeof path, "%s/seed-%02d", dir, n++);
    f = fopen(path, "wb");
    REQUIRE(f, "cannot write %s", path);
    fwrite(b.p, 1, b.n, f);
    fclose(f);
    conc_mbuf_free(&b);
  }
  printf("# wrote %d seeds to %s\n", n, dir);
  return NULL;
}

/* ------------------------------------------------------------ main */

int main(void) {
  /* the fuzz target's key, so that seeds written here load there */
  conc_marshal_setkey(FUZZ_KEY);
  S = newhost();
  R = newhost();
  B = luaL_newstate();
  if (B == NULL) abort();
  luaL_openlibs(B);
  Scs = conc_cs_of(S);
  Rcs = conc_cs_of(R);
  if (Scs == NULL || Rcs == NULL || conc_cs_of(B) != NULL) {
    printf("not ok - setup: no cstate\n");
    return 1;
  }
  run("scalars: subtypes, NaN, -0.0, inf, every byte", t_scalars);
  run("small integers take fewer bytes", t_int_widths);
  run("tables: shared, cycles, keys, holes, 100000 integers", t_tables);
  run("metatables: classes, dropped, self", t_metatables);
  run("functions: upvalues, joins, recursion, _ENV", t_functions);
  run("libraries and C functions by name", t_libraries);
  run("a lazy worker state as the receiver", t_lazy_receiver);
  run("objects by reference, counted", t_objects);
  run("shared-memory objects between processes", t_remote_objects);
  run("errors name the type and the path", t_errors);
  run("bad headers, trailing bytes, truncation", t_bad_messages);
  run("bytecode needs its MAC", t_bytecode_mac);
  run("deep messages: an error, not a crash", t_deep_messages);
  run("a corpus of valid messages", t_corpus);
  if (getenv("CONCLUA_FUZZ_CORPUS") && ncorpus > 0)
    run("fuzz seeds written", t_write_fuzz_corpus);
  if (ncorpus > 0) run("mutated messages never crash, hang or leak",
                       t_mutations);
  free_corpus();
  lua_close(B);
  lua_close(R);
  lua_close(S);
  printf("# %d failed\n", failed);
  return failed ? 1 : 0;
}
