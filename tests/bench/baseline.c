/*
** tests/bench/baseline.c
** The C floors that conclua's benchmarks are compared with: the same job
** written by hand with pthreads, fork, pipes and the Lua C API, without
** any runtime in between.
**
**   gcc -O2 baseline.c $(pkg-config --cflags --libs lua5.4) -lpthread
**   baseline MODE [N]      prints one line "RESULT key=value ..."
**
** DESIGN. Each mode mirrors one conclua script of tests/bench/ and does the
** least work that still produces the same observable result, so a ratio
** conclua/baseline reads as "what the runtime costs on top of the floor":
**   spawn N     pthread_create, the thread makes a lua_State with the
**               standard libraries and closes it, pthread_join
**   cpu N       a Lua loop over 1..N in one state, then split over two
**               threads with a state each: the speedup
**   idle K      K threads, each holding a full lua_State, blocked on a
**               condition variable: RSS growth per thread
**   chan M      M int64 from a producer thread to the main thread through
**               a mutex + condvar ring of capacity 1024
**   pingpong R  R round trips through two one-slot rings (an echo thread)
**   bigstr I    a 10 MiB string from state A to state B on two threads:
**               copy into a malloc'd buffer, hand it over, push in B
**   bigtbl I    a 100000-integer table the same way (rawgeti into an
**               int64 array, createtable + rawseti in B)
**   fork N      fork, the child calls a Lua function of the inherited state
**               and writes its result on a pipe, parent reads and waitpids
**   pipebw MB   fork, the child writes MB MiB in 1 MiB writes to a pipe,
**               the parent reads it
**   pipepp R    fork, R round trips of an int64 through two pipes (the
**               child echoes what it reads)
**   pcall N     the Lua loop of bench_threads.lua's pcall mode in a stock
**               state: the standard pcall, N calls that return and N/10
**               that raise
** Times are CLOCK_MONOTONIC; bigstr and bigtbl report the median of their
** iterations, the others a total divided by the count.
*/

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ helpers */

static double clock_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fail(const char *what) {
  fprintf(stderr, "baseline: %s: %s\n", what, strerror(errno));
  exit(1);
}

static long vmrss_kb(void) {
  char line[128];
  long kb = -1;
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL) return -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld", &kb) == 1) break;
  fclose(f);
  return kb;
}

static void put_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("write");
    c += w;
    n -= (size_t)w;
  }
}

static void get_all(int fd, void *p, size_t n) {
  char *c = p;
  while (n > 0) {
    ssize_t r = read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) fail("read");
    c += r;
    n -= (size_t)r;
  }
}

static lua_State *fresh_state(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) fail("luaL_newstate");
  luaL_openlibs(L);
  return L;
}

static void run_lua(lua_State *L, const char *src, int nres) {
  if (luaL_loadstring(L, src) != LUA_OK || lua_pcall(L, 0, nres, 0) != LUA_OK) {
    fprintf(stderr, "baseline: %s\n", lua_tostring(L, -1));
    exit(1);
  }
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median_of(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, by_value);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A bounded FIFO of int64 guarded by one mutex and two condition
** variables: the textbook channel. */
typedef struct ring {
  pthread_mutex_t mu;
  pthread_cond_t can_put, can_get;
  int64_t *slot;
  size_t cap, first, used;
} ring;

static void ring_init(ring *q, size_t cap) {
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->can_put, NULL);
  pthread_cond_init(&q->can_get, NULL);
  q->slot = calloc(cap, sizeof *q->slot);
  if (q->slot == NULL) fail("calloc");
  q->cap = cap;
  q->first = q->used = 0;
}

static void ring_put(ring *q, int64_t v) {
  pthread_mutex_lock(&q->mu);
  while (q->used == q->cap) pthread_cond_wait(&q->can_put, &q->mu);
  q->slot[(q->first + q->used) % q->cap] = v;
  q->used++;
  pthread_cond_signal(&q->can_get);
  pthread_mutex_unlock(&q->mu);
}

static int64_t ring_get(ring *q) {
  int64_t v;
  pthread_mutex_lock(&q->mu);
  while (q->used == 0) pthread_cond_wait(&q->can_get, &q->mu);
  v = q->slot[q->first];
  q->first = (q->first + 1) % q->cap;
  q->used--;
  pthread_cond_signal(&q->can_put);
  pthread_mutex_unlock(&q->mu);
  return v;
}

static pthread_t start_thread(void *(*fn)(void *), void *arg) {
  pthread_t t;
  int r = pthread_create(&t, NULL, fn, arg);
  if (r != 0) {
    errno = r;
    fail("pthread_create");
  }
  return t;
}

/* ------------------------------------------------------------ spawn */

static void *spawn_body(void *arg) {
  lua_close(fresh_state());
  return arg;
}

static void mode_spawn(long n) {
  double t0;
  for (int i = 0; i < 20; i++) pthread_join(start_thread(spawn_body, NULL), NULL);
  t0 = clock_s();
  for (long i = 0; i < n; i++) pthread_join(start_thread(spawn_body, NULL), NULL);
  printf("RESULT us_per_op=%.2f\n", (clock_s() - t0) / (double)n * 1e6);
}

/* ------------------------------------------------------------ cpu */

/* The same loop as bench_threads.lua's. */
static const char *CPU_LOOP =
    "local a, b = ... local s = 0\n"
    "for i = a, b do s = (s + i * i) % 1000000007 end\n"
    "return s";

typedef struct span {
  lua_Integer from, to, sum;
} span;

static void *cpu_body(void *arg) {
  span *s = arg;
  lua_State *L = fresh_state();
  if (luaL_loadstring(L, CPU_LOOP) != LUA_OK) fail("load");
  lua_pushinteger(L, s->from);
  lua_pushinteger(L, s->to);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) fail("pcall");
  s->sum = lua_tointeger(L, -1);
  lua_close(L);
  return NULL;
}

static void mode_cpu(long n) {
  span whole = {1, n, 0};
  span half[2] = {{1, n / 2, 0}, {n / 2 + 1, n, 0}};
  pthread_t t[2];
  double t0, serial, par;
  t0 = clock_s();
  cpu_body(&whole);
  serial = clock_s() - t0;
  t0 = clock_s();
  for (int i = 0; i < 2; i++) t[i] = start_thread(cpu_body, &half[i]);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  par = clock_s() - t0;
  if ((half[0].sum + half[1].sum) % 1000000007 != whole.sum) {
    fprintf(stderr, "baseline: cpu sums differ\n");
    exit(1);
  }
  printf("RESULT serial_s=%.3f par_s=%.3f speedup=%.3f\n", serial, par,
         serial / par);
}

/* ------------------------------------------------------------ idle */

static struct {
  pthread_mutex_t mu;
  pthread_cond_t changed;
  long ready;
  int go;
} idle = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};

static void *idle_body(void *arg) {
  lua_State *L = fresh_state();
  pthread_mutex_lock(&idle.mu);
  idle.ready++;
  pthread_cond_broadcast(&idle.changed);
  while (!idle.go) pthread_cond_wait(&idle.changed, &idle.mu);
  pthread_mutex_unlock(&idle.mu);
  lua_close(L);
  return arg;
}

static void mode_idle(long k) {
  pthread_t *t = malloc(sizeof *t * (size_t)k);
  long before, after;
  double t0, up;
  if (t == NULL) fail("malloc");
  before = vmrss_kb();
  t0 = clock_s();
  for (long i = 0; i < k; i++) t[i] = start_thread(idle_body, NULL);
  pthread_mutex_lock(&idle.mu);
  while (idle.ready < k) pthread_cond_wait(&idle.changed, &idle.mu);
  pthread_mutex_unlock(&idle.mu);
  up = clock_s() - t0;
  after = vmrss_kb();
  pthread_mutex_lock(&idle.mu);
  idle.go = 1;
  pthread_cond_broadcast(&idle.changed);
  pthread_mutex_unlock(&idle.mu);
  for (long i = 0; i < k; i++) pthread_join(t[i], NULL);
  free(t);
  printf("RESULT kb_per_thread=%.2f rss_mb=%.1f up_s=%.3f\n",
         (double)(after - before) / (double)k, (double)after / 1024, up);
}

/* ------------------------------------------------------------ chan */

static ring q_data, q_ctl;
static long n_msgs;

static void *producer(void *arg) {
  ring_get(&q_ctl);
  for (long i = 1; i <= n_msgs; i++) ring_put(&q_data, i);
  return arg;
}

static void mode_chan(long m) {
  pthread_t t;
  int64_t sum = 0;
  double t0, dt;
  ring_init(&q_data, 1024);
  ring_init(&q_ctl, 1);
  n_msgs = m;
  t = start_thread(producer, NULL);
  t0 = clock_s();
  ring_put(&q_ctl, 1);
  for (long i = 0; i < m; i++) sum += ring_get(&q_data);
  dt = clock_s() - t0;
  pthread_join(t, NULL);
  if (sum != (int64_t)m * (m + 1) / 2) {
    fprintf(stderr, "baseline: lost messages\n");
    exit(1);
  }
  printf("RESULT msgs_per_s=%.0f\n", (double)m / dt);
}

/* ------------------------------------------------------------ pingpong */

static void *echo(void *arg) {
  for (long i = 0; i < n_msgs; i++) ring_put(&q_ctl, ring_get(&q_data));
  return arg;
}

static void mode_pingpong(long r) {
  const long warm = 200;
  pthread_t t;
  double t0;
  ring_init(&q_data, 1);
  ring_init(&q_ctl, 1);
  n_msgs = r + warm;
  t = start_thread(echo, NULL);
  for (long i = 0; i < warm; i++) {
    ring_put(&q_data, i);
    ring_get(&q_ctl);
  }
  t0 = clock_s();
  for (long i = 0; i < r; i++) {
    ring_put(&q_data, i);
    if (ring_get(&q_ctl) != i) {
      fprintf(stderr, "baseline: wrong echo\n");
      exit(1);
    }
  }
  printf("RESULT us_per_rt=%.3f\n", (clock_s() - t0) / (double)r * 1e6);
  pthread_join(t, NULL);
}

/* ------------------------------------------------------------ big */

/* The sending thread owns state A with the value; on each request it
** serialises the value into a fresh malloc'd block and hands the pointer
** over. The main thread (state B) rebuilds the value and frees the block:
** two copies, as few as a shared-nothing design can do. */
static int big_table;
static long big_iters;

static void *big_sender(void *arg) {
  lua_State *A = fresh_state();
  run_lua(A, big_table ? "local t = {} for i = 1, 100000 do t[i] = i end return t"
                       : "return ('0123456789abcdef'):rep(10 * 1024 * 1024 // 16)",
          1);
  for (long it = 0; it < big_iters; it++) {
    void *block;
    ring_get(&q_ctl);
    if (big_table) {
      lua_Integer n = luaL_len(A, -1);
      int64_t *v = malloc(sizeof *v * (size_t)(n + 1));
      if (v == NULL) fail("malloc");
      v[0] = n;
      for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(A, -1, i);
        v[i] = lua_tointeger(A, -1);
        lua_pop(A, 1);
      }
      block = v;
    } else {
      size_t len;
      const char *s = lua_tolstring(A, -1, &len);
      char *b = malloc(sizeof len + len);
      if (b == NULL) fail("malloc");
      memcpy(b, &len, sizeof len);
      memcpy(b + sizeof len, s, len);
      block = b;
    }
    ring_put(&q_data, (int64_t)(intptr_t)block);
  }
  lua_close(A);
  return arg;
}

static void mode_big(int table, long iters) {
  lua_State *B = fresh_state();
  double *ms = malloc(sizeof *ms * (size_t)iters);
  pthread_t t;
  if (ms == NULL) fail("malloc");
  big_table = table;
  big_iters = iters;
  ring_init(&q_data, 1);
  ring_init(&q_ctl, 1);
  t = start_thread(big_sender, NULL);
  for (long it = 0; it < iters; it++) {
    void *block;
    double t0;
    lua_gc(B, LUA_GCCOLLECT, 0);
    t0 = clock_s();
    ring_put(&q_ctl, 1);
    block = (void *)(intptr_t)ring_get(&q_data);
    if (table) {
      int64_t *v = block;
      lua_createtable(B, (int)v[0], 0);
      for (int64_t i = 1; i <= v[0]; i++) {
        lua_pushinteger(B, v[i]);
        lua_rawseti(B, -2, i);
      }
    } else {
      size_t len;
      memcpy(&len, block, sizeof len);
      lua_pushlstring(B, (char *)block + sizeof len, len);
    }
    free(block);
    ms[it] = (clock_s() - t0) * 1e3;
    if (luaL_len(B, -1) != (table ? 100000 : 10 * 1024 * 1024)) {
      fprintf(stderr, "baseline: wrong size\n");
      exit(1);
    }
    lua_pop(B, 1);
  }
  pthread_join(t, NULL);
  printf("RESULT ms=%.3f\n", median_of(ms, (int)iters));
  free(ms);
  lua_close(B);
}

/* ------------------------------------------------------------ fork */

static void mode_fork(long n) {
  lua_State *L = fresh_state();
  double t0;
  run_lua(L, "return function() return 1 end", 1);
  lua_setglobal(L, "trivial");
  t0 = clock_s();
  for (long i = 0; i < n; i++) {
    int fds[2], st;
    int64_t res = 0;
    pid_t pid;
    if (pipe2(fds, O_CLOEXEC) != 0) fail("pipe");
    pid = fork();
    if (pid < 0) fail("fork");
    if (pid == 0) {
      close(fds[0]);
      lua_getglobal(L, "trivial");
      res = lua_pcall(L, 0, 1, 0) == LUA_OK ? lua_tointeger(L, -1) : -1;
      put_all(fds[1], &res, sizeof res);
      _exit(0);
    }
    close(fds[1]);
    get_all(fds[0], &res, sizeof res);
    close(fds[0]);
    while (waitpid(pid, &st, 0) < 0)
      if (errno != EINTR) fail("waitpid");
    if (res != 1) {
      fprintf(stderr, "baseline: child returned %lld\n", (long long)res);
      exit(1);
    }
  }
  printf("RESULT us_per_op=%.2f\n", (clock_s() - t0) / (double)n * 1e6);
  lua_close(L);
}

/* ------------------------------------------------------------ pipebw */

static void mode_pipebw(long mb) {
  const size_t chunk = 1 << 20;
  char *buf = malloc(chunk);
  int fds[2], st;
  long long got = 0;
  double t0, dt;
  pid_t pid;
  if (buf == NULL) fail("malloc");
  memset(buf, 'x', chunk);
  if (pipe2(fds, O_CLOEXEC) != 0) fail("pipe");
  t0 = clock_s();
  pid = fork();
  if (pid < 0) fail("fork");
  if (pid == 0) {
    close(fds[0]);
    for (long i = 0; i < mb; i++) put_all(fds[1], buf, chunk);
    _exit(0);
  }
  close(fds[1]);
  for (;;) {
    ssize_t r = read(fds[0], buf, chunk);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail("read");
    if (r == 0) break;
    got += r;
  }
  dt = clock_s() - t0;
  close(fds[0]);
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) fail("waitpid");
  if (got != (long long)mb * (long long)chunk) {
    fprintf(stderr, "baseline: pipe lost bytes\n");
    exit(1);
  }
  printf("RESULT mb_per_s=%.0f\n", (double)got / 1048576.0 / dt);
  free(buf);
}

/* ------------------------------------------------------------ pipepp */

static void mode_pipepp(long r) {
  const long warm = 200;
  int to[2], from[2], st;
  int64_t v;
  double t0;
  pid_t pid;
  if (pipe2(to, O_CLOEXEC) != 0 || pipe2(from, O_CLOEXEC) != 0) fail("pipe");
  pid = fork();
  if (pid < 0) fail("fork");
  if (pid == 0) {
    close(to[1]);
    close(from[0]);
    for (long i = 0; i < r + warm; i++) {
      get_all(to[0], &v, sizeof v);
      put_all(from[1], &v, sizeof v);
    }
    _exit(0);
  }
  close(to[0]);
  close(from[1]);
  for (long i = 0; i < warm; i++) {
    v = i;
    put_all(to[1], &v, sizeof v);
    get_all(from[0], &v, sizeof v);
  }
  t0 = clock_s();
  for (long i = 0; i < r; i++) {
    v = i;
    put_all(to[1], &v, sizeof v);
    get_all(from[0], &v, sizeof v);
    if (v != i) {
      fprintf(stderr, "baseline: wrong echo\n");
      exit(1);
    }
  }
  printf("RESULT us_per_rt=%.3f\n", (clock_s() - t0) / (double)r * 1e6);
  close(to[1]);
  close(from[0]);
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) fail("waitpid");
}

/* ------------------------------------------------------------ pcall */

/* The same loop as bench_threads.lua's (now: a clock in seconds). */
static const char *PCALL_LOOP =
    "local n, now = ...\n"
    "local f = function(x) return x end\n"
    "local g = function() error('x', 0) end\n"
    "for i = 1, n // 10 do pcall(f, i) pcall(g) end\n"
    "local t0 = now()\n"
    "for i = 1, n do pcall(f, i) end\n"
    "local t1 = now()\n"
    "for i = 1, n // 10 do pcall(g) end\n"
    "local t2 = now()\n"
    "return (t1 - t0) / n * 1e9, (t2 - t1) / (n // 10) * 1e9";

static int lua_clock(lua_State *L) {
  lua_pushnumber(L, clock_s());
  return 1;
}

static void mode_pcall(long n) {
  lua_State *L = fresh_state();
  if (luaL_loadstring(L, PCALL_LOOP) != LUA_OK) fail("load");
  lua_pushinteger(L, n);
  lua_pushcfunction(L, lua_clock);
  if (lua_pcall(L, 2, 2, 0) != LUA_OK) fail("pcall");
  printf("RESULT ns_ok=%.3f ns_err=%.3f\n", lua_tonumber(L, -2),
         lua_tonumber(L, -1));
  lua_close(L);
}

/* ------------------------------------------------------------ main */

static const struct {
  const char *name;
  long dflt;
  void (*run)(long);
} modes[] = {
    {"spawn", 1000, mode_spawn},
    {"cpu", 60000000, mode_cpu},
    {"idle", 1000, mode_idle},
    {"chan", 200000, mode_chan},
    {"pingpong", 20000, mode_pingpong},
    {"fork", 300, mode_fork},
    {"pipebw", 256, mode_pipebw},
    {"pipepp", 20000, mode_pipepp},
    {"pcall", 3000000, mode_pcall},
};

int main(int argc, char **argv) {
  long n;
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) {
    fprintf(stderr, "usage: baseline MODE [N] (modes: see the file's header)\n");
    return 2;
  }
  n = argc > 2 ? atol(argv[2]) : 0;
  if (strcmp(argv[1], "bigstr") == 0 || strcmp(argv[1], "bigtbl") == 0) {
    mode_big(argv[1][3] == 't', n > 0 ? n : 15);
    return 0;
  }
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
    if (strcmp(argv[1], modes[i].name) == 0) {
      modes[i].run(n > 0 ? n : modes[i].dflt);
      return 0;
    }
  fprintf(stderr, "baseline: unknown mode '%s'\n", argv[1]);
  return 2;
}
