/*
** fuzz_decode.c
** libFuzzer target for the decoder (conc_marshal_decode): any bytes must give
** an error with nothing pushed, or values that can be walked; never a
** crash, a hang, a leak or undefined behaviour. Built by `make fuzz`
** (clang, -fsanitize=fuzzer,address,undefined).
**
** Each input is decoded three ways: into a state with a conclua state
** and a fixed list of object references (as a message between threads),
** into the same state as a message from another process (no references:
** objects by shared-memory uid), and into a bare state with no conclua
** state at all (which must refuse objects and conc functions). The target
** links only the values layer and those below (vm/tools/layers.sh).
**
** The bytecode key is fixed (FUZZ_KEY), and the seeds in
** tests/fuzz/corpus/seed-* are encoded under it (tests/c/test_marshal.c
** writes them when CONCLUA_FUZZ_CORPUS names a directory), so the
** functions of the seeds load and the fuzzer explores what follows them:
** upvalues, joins, references. It cannot make new bytecode load, which is
** the point of the MAC. Decoded functions are never called: a mutated
** message may legitimately hold os.exit or io.write.
*/

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "values.h"
#include "../c/walker.h"

/* Must match FUZZ_KEY in tests/c/test_marshal.c. */
static const unsigned char FUZZ_KEY[16] = "conclua-fuzz-key";

/* The references a thread message would carry: kinds in this order, so
** a seed made of (channel, lock, event, channel, lock, event...) finds
** the kinds it names at its indices. */
#define NREFS 12

static lua_State *H, *B;       /* host state; bare state */
static cstate *Hcs;
static cobj *refs[NREFS];
static int walker_h, walker_b;
static unsigned long runs;

typedef struct call {
  cstate *cs;
  const uint8_t *p;
  size_t n;
  cobj **refs;
  int nrefs, result;
  char err[256];
} call;

/* Under lua_pcall: a memory error raised inside the decoder is caught. */
static int pdecode(lua_State *L) {
  call *c = lua_touserdata(L, 1);
  int base;
  lua_settop(L, 0);
  base = lua_gettop(L);
  c->result = conc_marshal_decode(L, c->cs, (const char *)c->p, c->n, c->refs,
                             c->nrefs, c->err, sizeof c->err);
  if (c->result < 0) {
    if (lua_gettop(L) != base) abort();     /* an error pushes nothing */
    return 0;
  }
  if (lua_gettop(L) != base + c->result) abort();
  return c->result;
}

static void one(lua_State *L, int walker, cstate *cs, const uint8_t *p,
                size_t n, cobj **r, int nr) {
  call c;
  int top = lua_gettop(L);
  memset(&c, 0, sizeof c);
  c.cs = cs;
  c.p = p;
  c.n = n;
  c.refs = r;
  c.nrefs = nr;
  lua_rawgeti(L, LUA_REGISTRYINDEX, walker);
  lua_pushcfunction(L, pdecode);
  lua_pushlightuserdata(L, &c);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) {
    /* only memory errors may escape the decoder */
    const char *m = lua_tostring(L, -1);
    if (m == NULL || strstr(m, "not enough memory") == NULL) {
      fprintf(stderr, "decoder raised: %s\n", m ? m : "?");
      abort();
    }
    lua_settop(L, top);
    return;
  }
  if (c.result < 0) {
    if (strncmp(c.err, "corrupt message (", 17) != 0) {
      fprintf(stderr, "unexpected error: %s\n", c.err);
      abort();
    }
    lua_settop(L, top);
    return;
  }
  if (lua_pcall(L, c.result, 1, 0) != LUA_OK) {
    fprintf(stderr, "walking decoded values: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, top);
}

static int load_walker(lua_State *L) {
  if (luaL_dostring(L, WALKER_LUA) != LUA_OK) abort();
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* The target links the values layer and those below only (make fuzz):
** no module, no init. It registers what init.c would, in small: a kind
** for every kind number (the decoder pushes handles of any kind), and a
** few conc function names, so that messages naming them decode. */
static void stub_destroy(cobj *o) {
  free(o);
}

static int stub_function(lua_State *L) {
  return luaL_error(L, "a decoded function is never called");
}

static const char *const kind_names[K_NKINDS] = {
    [K_CHANNEL] = "channel", [K_THREAD] = "thread",  [K_PROCESS] = "process",
    [K_LOCK] = "lock",       [K_SEMAPHORE] = "semaphore",
    [K_EVENT] = "event",     [K_BARRIER] = "barrier", [K_SHARED] = "shared",
    [K_PIPE] = "pipe",       [K_QUEUE] = "queue",     [K_FUTURE] = "future",
    [K_PARCEL] = "parcel",   [K_POOL] = "pool"};
static kindinfo stub_kinds[K_NKINDS];
static char tnames[K_NKINDS][32];

static void register_stubs(void) {
  static const luaL_Reg funcs[] = {
      {"channel", stub_function}, {"lock", stub_function},
      {"event", stub_function},   {"select", stub_function},
      {"sleep", stub_function},   {"now", stub_function},
      {NULL, NULL}};
  static const luaL_Reg channel_methods[] = {
      {"send", stub_function}, {"recv", stub_function}, {NULL, NULL}};
  for (int k = 0; k < K_NKINDS; k++) {
    snprintf(tnames[k], sizeof tnames[k], "conc.%s", kind_names[k]);
    stub_kinds[k].kind = k;
    stub_kinds[k].tname = tnames[k];
    stub_kinds[k].name = kind_names[k];
    stub_kinds[k].destroy = stub_destroy;
    stub_kinds[k].methods = k == K_CHANNEL ? channel_methods : NULL;
    conc_obj_addkind(&stub_kinds[k]);
  }
  conc_names_register("conc.", funcs, 1);
  conc_names_register("conc.channel:", channel_methods, 1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  static const int order[3] = {K_CHANNEL, K_LOCK, K_EVENT};
  rt *r;
  (void)argc;
  (void)argv;
  conc_marshal_setkey(FUZZ_KEY);
  register_stubs();
  H = luaL_newstate();
  B = luaL_newstate();
  if (H == NULL || B == NULL) abort();
  luaL_openlibs(H);
  luaL_openlibs(B);
  r = conc_rt_new();
  Hcs = r ? conc_cs_new(r, NULL) : NULL;
  if (Hcs == NULL) abort();
  conc_rt_release(r);                        /* the cstate holds it */
  conc_state_bind(H, Hcs);
  conc_names_libmap(H);
  /* the objects stay alive for the whole run: refs holds them */
  for (int i = 0; i < NREFS; i++) {
    refs[i] = calloc(1, sizeof *refs[i]);
    if (refs[i] == NULL) abort();
    conc_obj_init(refs[i], order[i % 3]);
  }
  walker_h = load_walker(H);
  walker_b = load_walker(B);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  one(H, walker_h, Hcs, data, size, refs, NREFS);
  one(H, walker_h, Hcs, data, size, NULL, 0);
  one(B, walker_b, NULL, data, size, NULL, 0);
  if (++runs % 512 == 0) {
    lua_gc(H, LUA_GCCOLLECT, 0);
    lua_gc(B, LUA_GCCOLLECT, 0);
  }
  return 0;
}
