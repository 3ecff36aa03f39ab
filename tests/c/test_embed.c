/*
** test_embed.c
** The embedding API (docs/embedding.md) as a host program uses it:
** conclua_open, conclua_on_state, conclua_wait, and lua_close with
** workers around. Each case runs in a process of its own (runner.h).
*/

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "conclua.h"
#include "runner.h"

/* ------------------------------------------------------------ helpers */

static int traceback(lua_State *L) {
  luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
  return 1;
}

/* Runs a chunk in L; a Lua error fails the case. Leaves its results. */
static int run(lua_State *L, const char *code) {
  int base = lua_gettop(L);
  lua_pushcfunction(L, traceback);
  if (luaL_loadstring(L, code) != LUA_OK ||
      lua_pcall(L, 0, LUA_MULTRET, base + 1) != LUA_OK)
    FAIL("lua error: %s", lua_tostring(L, -1));
  lua_remove(L, base + 1);
  return lua_gettop(L) - base;
}

static lua_Integer run_int(lua_State *L, const char *code) {
  lua_Integer v;
  int n = run(L, code);
  if (n < 1 || !lua_isinteger(L, -n)) FAIL("no integer from: %s", code);
  v = lua_tointeger(L, -n);
  lua_pop(L, n);
  return v;
}

static int open_f(lua_State *L) {
  luaL_openlibs(L);
  conclua_open(L);
  return 0;
}

/* A host state the way host programs make one. */
static lua_State *host_new(void) {
  lua_State *L = luaL_newstate();
  CHECK(L != NULL);
  lua_pushcfunction(L, open_f);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) FAIL("open: %s", lua_tostring(L, -1));
  return L;
}

/* What host C functions count, whatever thread calls them. */
static atomic_int marks;
static atomic_int hook_calls;
static atomic_int hook_bad;          /* a hook found something wrong */
static lua_State *host_L;

static int c_mark(lua_State *L) {
  lua_pushinteger(L, atomic_fetch_add(&marks, 1) + 1);
  return 1;
}

/* Checks the state it is given, then adds mark() and hook_ud. */
static void hook_mark(lua_State *L, void *ud) {
  atomic_fetch_add(&hook_calls, 1);
  if (L == host_L || lua_gettop(L) != 0) atomic_store(&hook_bad, 1);
  if (lua_getglobal(L, "string") != LUA_TTABLE ||
      lua_getglobal(L, "conc") != LUA_TTABLE ||
      lua_getglobal(L, "spawn_thread") != LUA_TFUNCTION ||
      lua_getglobal(L, "spawn_process") != LUA_TFUNCTION)
    atomic_store(&hook_bad, 2);
  lua_settop(L, 0);
  lua_pushcfunction(L, c_mark);
  lua_setglobal(L, "mark");
  lua_pushinteger(L, (lua_Integer)(intptr_t)ud);
  lua_setglobal(L, "hook_ud");
}

/* The conclua next to this test program (build/tests/..: build/conclua),
** for start = "spawn". */
static void set_conclua_exe(void) {
  char path[4096];
  ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
  char *slash;
  CHECK(n > 0);
  path[n] = '\0';
  slash = strrchr(path, '/');
  CHECK(slash != NULL);
  strcpy(slash, "/../conclua");
  CHECK(access(path, X_OK) == 0);
  setenv("CONCLUA_EXE", path, 1);
}

/* Reads what was written to fd 2 since capture_stderr. */
static int saved_stderr = -1;
static FILE *captured;

static void capture_stderr(void) {
  fflush(stderr);
  captured = tmpfile();
  CHECK(captured != NULL);
  saved_stderr = dup(2);
  dup2(fileno(captured), 2);
}

static char *captured_text(void) {
  static char buf[16384];
  size_t n;
  fflush(stderr);
  dup2(saved_stderr, 2);
  close(saved_stderr);
  rewind(captured);
  n = fread(buf, 1, sizeof buf - 1, captured);
  buf[n] = '\0';
  fclose(captured);
  return buf;
}

/* ------------------------------------------------------------ open */

static int t_open_gives_everything(void) {
  lua_State *L = host_new();
  lua_pushstring(L, CONCLUA_VERSION);
  lua_setglobal(L, "VERSION");
  run(L,
      "assert(type(spawn_thread) == 'function')\n"
      "assert(type(spawn_process) == 'function')\n"
      "assert(type(conc) == 'table' and require('conc') == conc)\n"
      "assert(package.loaded.conc == conc and conc.version == VERSION)\n"
      "local ok, e = pcall(require, 'conc.nonexistent')\n"
      "assert(not ok and e:find(\"no built-in module 'conc.nonexistent'\","
      " 1, true), e)\n"
      "local t = spawn_thread(function(x)\n"
      "  return x + 1, type(conc), type(spawn_thread), type(spawn_process),\n"
      "         require('conc') == conc, string.upper('a'), conc.self()\n"
      "end, 41)\n"
      "local r = table.pack(t:join())\n"
      "assert(r[1] == 42 and r[2] == 'table' and r[3] == 'function')\n"
      "assert(r[4] == 'function' and r[5] == true and r[6] == 'A')\n"
      "assert(r[7] == t.id)\n"
      "local ch = conc.channel()\n"
      "spawn_thread(function() ch:send('hi') end)\n"
      "assert(ch:recv(10) == 'hi')\n"
      "assert(spawn_process(function(a) return a * 2 end, 21):join() == 42)\n"
      "local id, name = conc.self()\n"
      "assert(id == 0 and name == 'main')\n");
  CHECK_INT(conclua_wait(L), 0);
  lua_close(L);
  return 0;
}

/* The API on a healthy state, outside lua_pcall: a panic fails the case. */
static int on_panic(lua_State *L) {
  FAIL("panic: %s", lua_tostring(L, -1));
  return 0;
}

static int t_api_outside_pcall(void) {
  lua_State *L = luaL_newstate();
  int top;
  CHECK(L != NULL);
  lua_atpanic(L, on_panic);
  /* before conclua_open: nothing to do, nothing raised */
  CHECK_INT(conclua_wait(L), 0);
  conclua_on_state(L, hook_mark, NULL);
  CHECK_INT(lua_gettop(L), 0);
  luaL_openlibs(L);
  lua_pushinteger(L, 7);                 /* the host's own stack */
  top = lua_gettop(L);
  CHECK_INT(conclua_open(L), 0);
  CHECK_INT(lua_gettop(L), top);
  lua_getglobal(L, "conc");
  CHECK_INT(conclua_open(L), 0);         /* again: a no-op */
  lua_getglobal(L, "conc");
  CHECK(lua_rawequal(L, -1, -2));
  lua_pop(L, 2);
  conclua_on_state(L, NULL, NULL);       /* ignored */
  conclua_on_state(L, hook_mark, NULL);
  CHECK_INT(lua_gettop(L), top);
  run(L, "assert(spawn_thread(function() return mark() end):join() == 1)");
  CHECK_INT(conclua_wait(L), 0);
  CHECK_INT(lua_gettop(L), top);
  CHECK_INT(lua_tointeger(L, -1), 7);
  CHECK_INT(atomic_load(&hook_calls), 1);
  lua_close(L);
  return 0;
}

/* Only the base library: the host's choice; workers still get them all. */
static int t_open_bare_state(void) {
  lua_State *L = luaL_newstate();
  CHECK(L != NULL);
  lua_atpanic(L, on_panic);
  luaL_requiref(L, "_G", luaopen_base, 1);
  lua_pop(L, 1);
  CHECK_INT(conclua_open(L), 0);
  run(L,
      "local t = spawn_thread(function() return string.rep('a', 3) end)\n"
      "assert(t:join() == 'aaa')\n"
      "assert(type(conc.channel) == 'function')\n");
  lua_close(L);
  return 0;
}

/* An allocator that fails once a budget of growing allocations is
** spent (-1: no budget). Lua assumes shrinking never fails. */
static long alloc_budget = -1;

static void *budget_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(p);
    return NULL;
  }
  if (p == NULL || nsize > osize) {
    if (alloc_budget == 0) return NULL;
    if (alloc_budget > 0) alloc_budget--;
  }
  return realloc(p, nsize);
}

static int open_only(lua_State *L) {
  conclua_open(L);
  return 0;
}

/* conclua_open out of memory at every allocation in turn: raises under
** lua_pcall, leaks nothing, and a later conclua_open works. */
static int t_open_out_of_memory(void) {
  int failures = 0, succeeded = 0;
  for (long k = 0; k < 20000 && !succeeded; k++) {
    lua_State *L = lua_newstate(budget_alloc, NULL);
    int st;
    CHECK(L != NULL);
    lua_atpanic(L, on_panic);
    luaL_openlibs(L);
    lua_pushcfunction(L, open_only);
    alloc_budget = k;
    st = lua_pcall(L, 0, 0, 0);
    alloc_budget = -1;
    if (st == LUA_OK) {
      succeeded = 1;
    } else {
      failures++;
      lua_pop(L, 1);
      CHECK_INT(conclua_open(L), 0);    /* enough memory again */
    }
    if (k % 16 == 0 || succeeded)
      run(L, "assert(spawn_thread(function(x) return x end, 5):join() == 5)");
    lua_close(L);
  }
  CHECK(succeeded);
  CHECK(failures > 0);
  return 0;
}

/* ------------------------------------------------------------ hooks */

static int t_hook_runs_in_every_thread_state(void) {
  lua_State *L = host_new();
  host_L = L;
  conclua_on_state(L, hook_mark, (void *)(intptr_t)42);
  run(L,
      "assert(mark == nil)\n"              /* the host state: not hooked */
      "local ts = {}\n"
      "for i = 1, 3 do\n"
      "  ts[i] = spawn_thread(function()\n"
      "    local inner = spawn_thread(function()\n"
      "      return spawn_thread(function() mark() return hook_ud end):join()\n"
      "    end)\n"
      "    mark()\n"
      "    return inner:join(), hook_ud\n"
      "  end)\n"
      "end\n"
      "local quiet = spawn_thread(function() return 7 end)\n"
      "for i = 1, 3 do\n"
      "  local a, b = ts[i]:join()\n"
      "  assert(a == 42 and b == 42, tostring(a))\n"
      "end\n"
      "assert(quiet:join() == 7)\n"
      /* a process forked from a hooked thread is a copy of it */
      "local t = spawn_thread(function()\n"
      "  return spawn_process(function() return mark() end):join()\n"
      "end)\n"
      "assert(math.type(t:join()) == 'integer')\n");
  CHECK_INT(atomic_load(&hook_calls), 3 * 3 + 1 + 1);
  CHECK_INT(atomic_load(&marks), 6);
  CHECK_INT(atomic_load(&hook_bad), 0);
  lua_close(L);
  return 0;
}

static void hook_a(lua_State *L, void *ud) {
  (void)ud;
  lua_pushliteral(L, "a");
  lua_setglobal(L, "order");
}

static void hook_b(lua_State *L, void *ud) {
  (void)ud;
  lua_getglobal(L, "order");
  lua_pushliteral(L, "b");
  lua_concat(L, 2);
  lua_setglobal(L, "order");
}

static int t_hooks_run_in_order(void) {
  lua_State *L = host_new();
  conclua_on_state(L, hook_a, NULL);
  conclua_on_state(L, hook_b, NULL);
  run(L, "assert(spawn_thread(function() return order end):join() == 'ab')");
  lua_close(L);
  return 0;
}

/* A hook that raises fails that thread only, with the hook's message. */
static atomic_int refuse;

static void hook_refuse(lua_State *L, void *ud) {
  (void)ud;
  if (atomic_load(&refuse)) luaL_error(L, "hook refused");
  lua_pushboolean(L, 1);
  lua_setglobal(L, "hooked");
}

static int c_set_refuse(lua_State *L) {
  atomic_store(&refuse, lua_toboolean(L, 1));
  return 0;
}

static int t_hook_error_fails_the_thread(void) {
  lua_State *L = host_new();
  conclua_on_state(L, hook_refuse, NULL);
  lua_register(L, "set_refuse", c_set_refuse);
  run(L,
      "set_refuse(true)\n"
      "local t = spawn_thread(function() return 1 end)\n"
      "local ok, e = pcall(t.join, t)\n"
      "assert(not ok and e:find('hook refused', 1, true), e)\n"
      "assert(t:status() == 'failed')\n"
      "set_refuse(false)\n"
      "assert(spawn_thread(function() return hooked end):join() == true)\n");
  CHECK_INT(conclua_wait(L), 0);
  lua_close(L);
  return 0;
}

/* start = "spawn" runs a fresh conclua: the host's hooks cannot run
** there, and the host's functions are not there. */
static int t_spawned_process_has_no_hooks(void) {
  lua_State *L;
  set_conclua_exe();
  L = host_new();
  conclua_on_state(L, hook_mark, NULL);
  run(L,
      "local p = spawn_process({start = 'spawn'}, function(x)\n"
      "  return x, mark == nil, type(conc.channel)\n"
      "end, 'x')\n"
      "local x, nomark, ch = p:join()\n"
      "assert(x == 'x' and nomark == true and ch == 'function')\n");
  CHECK_INT(atomic_load(&hook_calls), 0);
  lua_close(L);
  return 0;
}

/* ------------------------------------------------------------ wait */

static int t_wait_counts_unjoined_failures(void) {
  lua_State *L = host_new();
  const char *err;
  double t0;
  conclua_on_state(L, hook_mark, NULL);
  run(L,
      "spawn_thread(function() error('boom one') end)\n"
      "spawn_thread({name = 'second'}, function() error('boom two') end)\n"
      "local c = spawn_thread(function() error('boom three') end)\n"
      "assert(not pcall(c.join, c))\n"
      "local d = spawn_thread({daemon = true}, function()\n"
      "  error('boom daemon')\n"
      "end)\n"
      "assert(d:wait(30))\n"
      "spawn_process(function() error('proc boom') end)\n"
      "spawn_thread(function() conc.sleep(0.2) mark() end)\n"
      "spawn_thread({daemon = true}, function() conc.event():wait() end)\n");
  capture_stderr();
  t0 = runner_now();
  CHECK_INT(conclua_wait(L), 3);
  err = captured_text();
  CHECK(runner_now() - t0 >= 0.15);
  CHECK_INT(atomic_load(&marks), 1);
  if (!strstr(err, "boom one") || !strstr(err, "second: ") ||
      !strstr(err, "boom two") || !strstr(err, "proc boom") ||
      !strstr(err, "boom daemon") || strstr(err, "boom three"))
    FAIL("unexpected report on stderr:\n%s", err);
  capture_stderr();
  CHECK_INT(conclua_wait(L), 0);         /* each failure is told once */
  err = captured_text();
  if (err[0]) FAIL("reported again:\n%s", err);
  lua_close(L);                          /* cancels the blocked daemon */
  return 0;
}

/* lua_close with workers still running: waits for the non-daemon ones,
** stops the daemons (their states are closed: __gc runs), no crash, and
** nothing leaks (the sanitizer build checks at exit). */
static int t_close_with_workers_running(void) {
  lua_State *L = host_new();
  pid_t daemon_pid;
  double t0, took;
  conclua_on_state(L, hook_mark, NULL);
  run(L,
      "spawn_thread(function() conc.sleep(0.3) mark() end)\n"
      "local ready = conc.channel()\n"
      "spawn_thread({daemon = true}, function()\n"
      "  local x = setmetatable({}, {__gc = function() mark() end})\n"
      "  ready:send(1)\n"
      "  conc.channel():recv()\n"
      "end)\n"
      "spawn_thread({daemon = true}, function()\n"
      "  local x = setmetatable({}, {__gc = function() mark() end})\n"
      "  ready:send(1)\n"
      "  while true do end\n"
      "end)\n"
      "spawn_process(function() conc.sleep(0.2) end)\n"
      "daemon_pid = spawn_process({daemon = true}, function()\n"
      "  conc.sleep(60)\n"
      "end).pid\n"
      "ready:recv() ready:recv()\n");
  daemon_pid = (pid_t)run_int(L, "return daemon_pid");
  t0 = runner_now();
  lua_close(L);
  took = runner_now() - t0;
  CHECK(took >= 0.25);
  /* ThreadSanitizer holds a signal back until the thread makes a call
  ** it intercepts, which a pure Lua loop never does: there the looping
  ** daemon cannot be cancelled */
  if (getenv("CONCLUA_SANITIZER") && !strcmp(getenv("CONCLUA_SANITIZER"), "tsan"))
    CHECK(atomic_load(&marks) >= 2);
  else
    CHECK_INT(atomic_load(&marks), 3);
  CHECK(kill(daemon_pid, 0) == -1 && errno == ESRCH);
  CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD);
  return 0;
}

/* A host that exits without lua_close: the exit handler waits for the
** workers all the same. */
static int t_exit_without_close_waits(void) {
  int fds[2];
  char buf[64];
  ssize_t n;
  pid_t pid;
  int status;
  CHECK(pipe(fds) == 0);
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    lua_State *L = host_new();
    close(fds[0]);
    lua_pushinteger(L, fds[1]);
    lua_setglobal(L, "FD");
    run(L,
        "spawn_thread(function(fd)\n"
        "  conc.sleep(0.2)\n"
        "  local f = io.open('/proc/self/fd/' .. fd, 'w')\n"
        "  f:write('late') f:close()\n"
        "end, FD)\n");
    exit(0);
  }
  close(fds[1]);
  n = read(fds[0], buf, sizeof buf - 1);
  close(fds[0]);
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(n == 4 && memcmp(buf, "late", 4) == 0);
  return 0;
}

/* Daemons spawning daemons while the host closes: once lua_close has
** returned, no hook of the host runs any more. */
static int t_no_hook_after_close(void) {
  lua_State *L = host_new();
  int seen;
  conclua_on_state(L, hook_mark, NULL);
  run(L,
      "spawn_thread({daemon = true}, function()\n"
      "  while true do\n"
      "    spawn_thread({daemon = true}, function() mark() end)\n"
      "  end\n"
      "end)\n"
      "local t = conc.now()\n"
      "while conc.now() - t < 0.1 do conc.sleep(0.01) end\n");
  lua_close(L);
  seen = atomic_load(&hook_calls);
  CHECK(seen > 0);
  runner_sleep(0.2);
  CHECK_INT(atomic_load(&hook_calls), seen);
  return 0;
}

/* ------------------------------------------------------------ two hosts */

static atomic_int arrived;
static atomic_int gate_open;

/* Returns true once two threads called it (within 20 s). */
static int c_rendezvous(lua_State *L) {
  double t0 = runner_now();
  atomic_fetch_add(&arrived, 1);
  while (atomic_load(&arrived) < 2 && runner_now() - t0 < 20)
    runner_sleep(0.001);
  lua_pushboolean(L, atomic_load(&arrived) >= 2);
  return 1;
}

static int c_gate(lua_State *L) {
  double t0 = runner_now();
  while (!atomic_load(&gate_open) && runner_now() - t0 < 20)
    runner_sleep(0.001);
  lua_pushboolean(L, atomic_load(&gate_open));
  return 1;
}

static void hook_which(lua_State *L, void *ud) {
  lua_pushinteger(L, (lua_Integer)(intptr_t)ud);
  lua_setglobal(L, "which");
  lua_pushcfunction(L, c_rendezvous);
  lua_setglobal(L, "rendezvous");
  lua_pushcfunction(L, c_gate);
  lua_setglobal(L, "gate");
}

static int t_two_host_states(void) {
  lua_State *L1 = host_new(), *L2 = host_new();
  double t0;
  conclua_on_state(L1, hook_which, (void *)1);
  conclua_on_state(L2, hook_which, (void *)2);
  /* threads of both runtimes run at once, each with its host's hook;
  ** L1's waits for L2's to come, so it is still on L1's list */
  run(L1, "t = spawn_thread(function() return which, rendezvous() end)");
  CHECK_INT(run_int(L1, "return #conc.workers()"), 1);
  run(L2, "t = spawn_thread(function() return which, rendezvous() end)");
  run(L1, "local w, ok = t:join() assert(w == 1 and ok == true)");
  run(L2, "local w, ok = t:join() assert(w == 2 and ok == true)");
  /* one's wait ignores the other's workers */
  run(L2, "g = spawn_thread(function() return gate() and which end)");
  CHECK_INT(run_int(L1, "return #conc.workers()"), 0);
  CHECK_INT(run_int(L2, "return #conc.workers()"), 1);
  t0 = runner_now();
  CHECK_INT(conclua_wait(L1), 0);
  CHECK(runner_now() - t0 < 10);
  CHECK_INT(run_int(L2, "return g:alive() and 1 or 0"), 1);
  /* closing one leaves the other working */
  lua_close(L1);
  CHECK_INT(run_int(L2, "return g:alive() and 1 or 0"), 1);
  atomic_store(&gate_open, 1);
  CHECK_INT(conclua_wait(L2), 0);
  CHECK_INT(run_int(L2, "return g:join()"), 2);
  CHECK_INT(run_int(L2, "return spawn_thread(function() return which end)"
                        ":join()"), 2);
  lua_close(L2);
  return 0;
}

/* ------------------------------------------------------------ Ctrl-C */

/* A host's own Ctrl-C, done the way lua.c does it: the handler hooks the
** state, the hook raises. conclua adds no handler of its own; a blocking
** conc call still ends when the host's handler asks the state to stop. */
static lua_State *sig_L;
static atomic_int sig_calls;
static int sig_hooks;               /* the handler hooks sig_L */

static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

static void host_sigint(int sig) {
  (void)sig;
  atomic_fetch_add(&sig_calls, 1);
  if (sig_hooks)
    lua_sethook(sig_L, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void pause_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* Sends the process SIGINT after 'arg' ms (from a thread: the kernel
** may hand it to any thread, which must pass it on). */
static void *send_sigint(void *arg) {
  pause_ms((int)(intptr_t)arg);
  kill(getpid(), SIGINT);
  return NULL;
}

/* Watches SIGINT's disposition while 'watching': whether it was ever
** anything but SIG_DFL. */
static atomic_int watching, saw_handler;

static void *watch_sigint(void *arg) {
  (void)arg;
  while (atomic_load(&watching)) {
    struct sigaction cur;
    sigaction(SIGINT, NULL, &cur);
    if ((cur.sa_flags & SA_SIGINFO) || cur.sa_handler != SIG_DFL)
      atomic_store(&saw_handler, 1);
    pause_ms(1);
  }
  return NULL;
}

static int t_no_sigint_handler_for_a_host_without_one(void) {
  lua_State *L = host_new();
  pthread_t th;
  atomic_store(&watching, 1);
  CHECK(pthread_create(&th, NULL, watch_sigint, NULL) == 0);
  run(L, "local ch = conc.channel() ch:recv(0.2) conc.sleep(0.1) "
         "spawn_thread(function() conc.sleep(0.1) end):join()");
  atomic_store(&watching, 0);
  pthread_join(th, NULL);
  CHECK(!atomic_load(&saw_handler));
  lua_close(L);
  return 0;
}

/* Runs code (which blocks) while a thread sends SIGINT after 100 ms;
** returns the error message, or NULL if code returned. */
static const char *blocked_sigint(lua_State *L, const char *code) {
  pthread_t th;
  int st;
  sig_L = L;
  CHECK(pthread_create(&th, NULL, send_sigint, (void *)(intptr_t)100) == 0);
  lua_pushcfunction(L, traceback);
  CHECK(luaL_loadstring(L, code) == LUA_OK);
  st = lua_pcall(L, 0, 0, -2);
  pthread_join(th, NULL);
  return st == LUA_OK ? NULL : lua_tostring(L, -1);
}

static int t_host_sigint_handler_interrupts_a_wait(void) {
  lua_State *L = host_new();
  struct sigaction sa, cur;
  const char *err;
  const char *const waits[] = {
      "conc.channel():recv()", "conc.sleep(30)",
      "spawn_thread({daemon = true}, function() conc.sleep(30) end):join()",
      "local l = conc.lock() l:acquire() l:acquire()",
      "conc.select({conc.channel()})", "conc.event():wait()", NULL};
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = host_sigint;
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGINT, &sa, NULL) == 0);
  sig_hooks = 1;
  for (int i = 0; waits[i]; i++) {
    atomic_store(&sig_calls, 0);
    err = blocked_sigint(L, waits[i]);
    if (err == NULL || strstr(err, "interrupted!") == NULL)
      FAIL("%s: %s", waits[i], err ? err : "returned");
    CHECK_INT(atomic_load(&sig_calls), 1);
    CHECK(lua_gethook(L) == NULL);       /* its work is done */
    lua_settop(L, 0);
    sigaction(SIGINT, NULL, &cur);       /* the host's own is back */
    CHECK(!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == host_sigint);
  }
  CHECK_INT(run_int(L, "return 1 + 1"), 2);   /* no stale hook */
  sig_hooks = 0;
  lua_close(L);
  return 0;
}

static int t_host_sigint_handler_that_does_not_hook(void) {
  lua_State *L = host_new();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = host_sigint;
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGINT, &sa, NULL) == 0);
  sig_hooks = 0;
  atomic_store(&sig_calls, 0);
  if (blocked_sigint(L, "conc.sleep(0.5)") != NULL)
    FAIL("the wait was interrupted: %s", lua_tostring(L, -1));
  CHECK_INT(atomic_load(&sig_calls), 1);
  lua_close(L);
  return 0;
}

/* ------------------------------------------------------------ main */

static const tcase cases[] = {
    {"open_gives_everything", t_open_gives_everything, 20},
    {"api_outside_pcall", t_api_outside_pcall, 20},
    {"open_bare_state", t_open_bare_state, 20},
    {"open_out_of_memory", t_open_out_of_memory, 60},
    {"hook_runs_in_every_thread_state", t_hook_runs_in_every_thread_state, 20},
    {"hooks_run_in_order", t_hooks_run_in_order, 20},
    {"hook_error_fails_the_thread", t_hook_error_fails_the_thread, 20},
    {"spawned_process_has_no_hooks", t_spawned_process_has_no_hooks, 20},
    {"wait_counts_unjoined_failures", t_wait_counts_unjoined_failures, 20},
    {"close_with_workers_running", t_close_with_workers_running, 20},
    {"exit_without_close_waits", t_exit_without_close_waits, 20},
    {"no_hook_after_close", t_no_hook_after_close, 20},
    {"two_host_states", t_two_host_states, 30},
    {"no_sigint_handler_for_a_host_without_one",
     t_no_sigint_handler_for_a_host_without_one, 20},
    {"host_sigint_handler_interrupts_a_wait",
     t_host_sigint_handler_interrupts_a_wait, 20},
    {"host_sigint_handler_that_does_not_hook",
     t_host_sigint_handler_that_does_not_hook, 20},
    {NULL, NULL, 0}};

int main(int argc, char **argv) {
  return run_cases(cases, argc, argv);
}
