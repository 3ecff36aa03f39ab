/*
** test_oom.c
** Out of memory, on demand: every allocation conclua makes (its own
** malloc, calloc and realloc calls, which this program wraps with the
** linker's --wrap, and those of the Lua states it makes, through a
** lua_Alloc of its own) counts, and the k-th one from when the injector
** is armed fails, alone or with every later one (memory gone for good).
** A case sweeps k over an operation until the operation no longer meets
** a failure: each run must either succeed, or raise exactly `not enough
** memory` as Lua does, and leave the state working; under `make asan` a
** leak on any of those paths fails the case at exit. Only the armed
** process fails (a forked child allocates freely). The host's Lua
** library is a shared one: its own calls to malloc are not wrapped, only
** the states' allocators are. CONCLUA_OOM_FROM=k starts the sweeps at k
** (to look at one failure). Each k is printed to the case's output.
*/

#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>

#include "init.h"
#include "chunk.h"
#include "runner.h"

/* ------------------------------------------------------------ injector */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);

static _Atomic int inj_armed;
static _Atomic long inj_next;       /* allocations still to let through */
static _Atomic int inj_all;         /* then fail all of them, not one */
static _Atomic int inj_c_only;      /* spare the Lua states' allocations */
static _Atomic long inj_failed;     /* failures injected */
static pid_t inj_pid;
/* or: fail reallocs of an existing block to exactly this size */
static _Atomic size_t inj_grow_to;

static int inject(void) {
  if (!atomic_load(&inj_armed) || getpid() != inj_pid) return 0;
  if (atomic_fetch_sub(&inj_next, 1) > 0) return 0;
  if (!atomic_load(&inj_all)) atomic_store(&inj_armed, 0);
  atomic_fetch_add(&inj_failed, 1);
  return 1;
}

void *__wrap_malloc(size_t n) {
  return inject() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t m) {
  return inject() ? NULL : __real_calloc(n, m);
}

void *__wrap_realloc(void *p, size_t n) {
  if (p != NULL && n != 0 && n == atomic_load(&inj_grow_to) &&
      getpid() == inj_pid) {
    atomic_store(&inj_grow_to, 0);
    atomic_fetch_add(&inj_failed, 1);
    return NULL;
  }
  return n != 0 && inject() ? NULL : __real_realloc(p, n);
}

/* Fails the k-th allocation from now (0: the next), and with all = 1
** every one after it too. */
static void arm(long k, int all) {
  inj_pid = getpid();
  atomic_store(&inj_failed, 0);
  atomic_store(&inj_all, all);
  atomic_store(&inj_next, k);
  atomic_store(&inj_armed, 1);
}

/* Stops failing; returns how many failures were injected. */
static long disarm(void) {
  atomic_store(&inj_armed, 0);
  return atomic_load(&inj_failed);
}

/* The states' allocator: Lua's default one, through the injector. */
static void *state_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  CONC_UNUSED(ud);
  CONC_UNUSED(osize);
  if (nsize == 0) {
    free(p);
    return NULL;
  }
  if (atomic_load(&inj_c_only)) return __real_realloc(p, nsize);
  return realloc(p, nsize);               /* __wrap_realloc */
}

/* ------------------------------------------------------------ Lua */

static int open_f(lua_State *L) {
  luaL_openlibs(L);
  conclua_open(L);
  return 0;
}

static lua_State *host_new(void) {
  lua_State *L = lua_newstate(state_alloc, NULL);
  CHECK(L != NULL);
  lua_pushcfunction(L, open_f);
  CHECK(lua_pcall(L, 0, 0, 0) == LUA_OK);
  return L;
}

/* Lua's message, or a worker's failure that was that: "thread 7
** (thread-7): not enough memory" (its join reports how it ended). */
static int is_nomem(const char *msg) {
  static const char tail[] = "): not enough memory";
  size_t n = msg ? strlen(msg) : 0;
  if (msg == NULL) return 0;
  if (strcmp(msg, "not enough memory") == 0) return 1;
  return (strncmp(msg, "thread ", 7) == 0 || strncmp(msg, "process ", 8) == 0) &&
         n > sizeof tail && strcmp(msg + n - (sizeof tail - 1), tail) == 0;
}

/* Runs 'setup' unarmed, then 'op' (a chunk that checks its own results
** and returns nothing) with the k-th allocation failing, for k = 0, 1,
** ... until op meets no failure; then 'check' unarmed, which must find
** the state working. Each failure must raise 'not enough memory' as Lua
** says it (is_nomem). Returns the number of runs that failed. */
static int sweep(const char *setup, const char *op, const char *check,
                 int all) {
  int failures = 0;
  const char *from = getenv("CONCLUA_OOM_FROM");   /* to debug one k */
  for (long k = from ? atol(from) : 0;; k++) {
    lua_State *L = host_new();
    int st;
    long hit;
    run(L, setup);
    CHECK(luaL_loadstring(L, op) == LUA_OK);
    fprintf(stderr, "k = %ld\n", k);     /* shown if the case fails */
    arm(k, all);
    st = lua_pcall(L, 0, 0, 0);
    hit = disarm();
    if (st != LUA_OK) {
      const char *msg = lua_tostring(L, -1);
      if (hit == 0) FAIL("k = %ld: failed with no failure injected: %s", k, msg);
      if (!is_nomem(msg))
        FAIL("k = %ld: out of memory reported as: %s", k,
             msg ? msg : "(not a string)");
      failures++;
      lua_pop(L, 1);
    }
    run(L, check);
    lua_close(L);
    if (hit == 0) break;                /* op ran through: swept it all */
    CHECK(k < 100000);
  }
  return failures;
}

/* ------------------------------------------------------------ cases */

/* The bug: "cannot transfer not enough memory (args[1])". A value too
** big for the memory left is refused with Lua's own message. */
static int t_encode_says_not_enough_memory(void) {
  lua_State *L = host_new();
  run(L, "ch = conc.channel() big = string.rep('x', 1 << 20)\n"
         "t = {} for i = 1, 8 do t[i] = big end");
  CHECK(luaL_loadstring(L, "ch:send(t)") == LUA_OK);
  atomic_store(&inj_c_only, 1);  /* the encoder's buffer fails, not Lua */
  arm(0, 1);
  CHECK(lua_pcall(L, 0, 0, 0) != LUA_OK);
  CHECK(disarm() > 0);
  atomic_store(&inj_c_only, 0);
  if (strcmp(lua_tostring(L, -1), "not enough memory") != 0)
    FAIL("got: %s", lua_tostring(L, -1));
  lua_pop(L, 1);
  run(L, "ch:send({big}) assert(#ch:recv()[1] == 1 << 20)");
  lua_close(L);
  return 0;
}

static const char *TABLE =
    "local function value()\n"
    "  local t = {name = 'v', list = {}, [1.5] = true}\n"
    "  for i = 1, 40 do t.list[i] = {i, tostring(i) .. string.rep('p', i)} end\n"
    "  t.self = t\n"
    "  return t\n"
    "end\n"
    "local function same(v)\n"
    "  assert(v.name == 'v' and #v.list == 40 and v.self == v and v[1.5])\n"
    "  for i = 1, 40 do assert(v.list[i][2] == tostring(i) .. string.rep('p', i)) end\n"
    "end\n";


/* After a failure, what was sent and not received is still there whole
** (a value whose receiver ran out of memory while copying it out waits
** for the next recv), then a new value arrives. */
static const char *AFTER =
    "local got = {}\n"
    "tx(1)\n"
    "repeat local v = rx() got[#got + 1] = v until v == 1 or v == nil\n"
    "assert(got[#got] == 1, 'the new value did not come')\n"
    "assert(#got <= 2, 'more left than the one value')\n"
    "if #got == 2 then same(got[1]) end\n";

static void sweep_both(const char *setup, const char *ends) {
  char op[4096], check[4096];
  snprintf(op, sizeof op, "%s%stx(value())\nsame(rx())\n", TABLE, ends);
  snprintf(check, sizeof check, "%s%s%s", TABLE, ends, AFTER);
  CHECK(sweep(setup, op, check, 0) > 0);     /* one allocation fails */
  CHECK(sweep(setup, op, check, 1) > 0);     /* every one from then on */
}

static int t_channel_send_recv(void) {
  sweep_both("ch = conc.channel()",
             "local function tx(v) ch:send(v) end\n"
             "local function rx() return ch:recv(0) end\n");
  return 0;
}

static int t_queue_send_recv(void) {
  sweep_both("q = conc.queue()",
             "local function tx(v) q:send(v) end\n"
             "local function rx() return q:recv(0) end\n");
  return 0;
}

static int t_pipe_send_recv(void) {
  sweep_both("a, b = conc.pipe()",
             "local function tx(v) a:send(v) end\n"
             "local function rx() return b:recv(5) end\n");
  return 0;
}

static int t_select_recv(void) {
  sweep_both("ch, q, a, b = conc.channel(), conc.queue(), conc.pipe()",
             "local function tx(v) q:send(v) end\n"
             "local function rx()\n"
             "  local item, v = conc.select({ch, b, q}, 0.2)\n"
             "  assert(item == q or item == nil, 'wrong item')\n"
             "  return v ~= 'timeout' and v or nil\n"
             "end\n");
  sweep_both("ch, q, a, b = conc.channel(), conc.queue(), conc.pipe()",
             "local function tx(v) a:send(v) end\n"
             "local function rx()\n"
             "  local item, v = conc.select({ch, q, b}, 0.2)\n"
             "  assert(item == b or item == nil, 'wrong item')\n"
             "  return v ~= 'timeout' and v or nil\n"
             "end\n");
  return 0;
}

/* A worker given value() returns it: 'spawn' is the call that starts it
** (a Lua expression), 'check' a run that must work afterwards. */
static void sweep_worker(const char *spawn, const char *check) {
  char op[4096];
  snprintf(op, sizeof op, "%slocal w = %s\nsame(w:join())\n", TABLE, spawn);
  CHECK(sweep("", op, check, 0) > 0);
}

static int t_thread_args_and_results(void) {
  sweep_worker("spawn_thread(function(v) return v end, value())",
               "assert(spawn_thread(function(x) return x end, 3):join() == 3)");
  return 0;
}

static int t_process_result(void) {
  sweep_worker("spawn_process(function() return value() end)",
               "assert(spawn_process(function() return 4 end):join() == 4)");
  return 0;
}

/* The parent has no room for a child's big result: the join says so (it
** said the child returned nothing), and the child, whose result is read
** and dropped, is not left blocked on a full pipe. */
static int t_process_result_too_big_for_parent(void) {
  lua_State *L = host_new();
  run(L, "p = spawn_process(function() return string.rep('r', 8 << 20) end)\n"
         "assert(#p:join() == 8 << 20)\n"
         "p = spawn_process(function() return string.rep('r', 8 << 20) end)");
  atomic_store(&inj_c_only, 1);         /* the runtime's buffers only */
  arm(0, 1);
  run(L, "assert(p:wait(30), 'the child was left blocked')");
  CHECK(disarm() > 0);
  atomic_store(&inj_c_only, 0);
  run(L,
      "local ok, err = pcall(p.join, p)\n"
      "assert(not ok and err == 'not enough memory', tostring(err))\n"
      "assert(spawn_process(function() return 5 end):join() == 5)");
  lua_close(L);
  return 0;
}

/* Children of this thread not reaped yet, zombies or still dying: one
** killed is not a zombie at once, so "no zombie now" is not "all reaped". */
static int count_children(void) {
  char path[64];
  int n = 0, pid;
  FILE *f;
  snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
  f = fopen(path, "r");
  if (f == NULL) return -1;
  while (fscanf(f, "%d", &pid) == 1) n++;
  fclose(f);
  return n;
}

/* vm/reap.c grew the reaper's list with watched = realloc(watched, ...):
** out of memory, the list was lost while the reaper still used it (the
** next child handed over was written through a null pointer). Now the
** list is kept and the child is handed over again, so all are reaped. */
static int t_reaper_list_survives_oom(void) {
  lua_State *L = luaL_newstate();
  double t0;
  CHECK(L != NULL);
  luaL_openlibs(L);
  conclua_open(L);
  /* 20 children nobody holds: each goes to the reaper; the 17th makes
  ** its list grow from 16 to 32 entries, and that realloc fails */
  inj_pid = getpid();
  atomic_store(&inj_failed, 0);
  atomic_store(&inj_grow_to, 32 * sizeof(void *));
  run(L,
      "pids = {}\n"
      "for i = 1, 20 do\n"
      "  local p = spawn_process(function() conc.sleep(60) end)\n"
      "  pids[i] = p.pid\n"
      "  p = nil collectgarbage() collectgarbage()\n"
      "end\n");
  CHECK_INT(atomic_load(&inj_failed), 1);
  run(L, "for _, pid in ipairs(pids) do os.execute('kill -9 ' .. pid) end");
  t0 = runner_now();
  while (count_children() != 0 && runner_now() - t0 < 20) runner_sleep(0.01);
  CHECK_INT(count_children(), 0);
  lua_close(L);
  return 0;
}

static const tcase cases[] = {
    {"encode_says_not_enough_memory", t_encode_says_not_enough_memory, 20},
    {"channel_send_recv", t_channel_send_recv, 60},
    {"queue_send_recv", t_queue_send_recv, 60},
    {"pipe_send_recv", t_pipe_send_recv, 60},
    {"select_recv", t_select_recv, 120},
    {"thread_args_and_results", t_thread_args_and_results, 120},
    {"process_result", t_process_result, 120},
    {"process_result_too_big_for_parent", t_process_result_too_big_for_parent, 60},
    {"reaper_list_survives_oom", t_reaper_list_survives_oom, 60},
    {NULL, NULL, 0}};

int main(int argc, char **argv) {
  return run_cases(cases, argc, argv);
}
