/*
** test_frames.c
** Untrusted bytes (docs/values.md, "Between processes"): what a pipe, a queue, a child's
** result pipe or the job pipe of a start = "spawn" child delivers is
** forged here, below the Lua API, and the reader must answer with a
** `corrupt message` error (or a timeout while the claimed bytes have not
** come), never allocate more than what arrived, and leave the end usable
** or closed. Allocations are watched through VmPeak, the peak of the
** process's address space: allocating what a forged length claims would
** raise it by that much, even untouched. Each case runs in a process of
** its own (runner.h).
*/

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "init.h"
#include "chunk.h"
#include "runner.h"

#define MiB (1024.0 * 1024.0)

/* The peak of this process's address space, in bytes. */
static double vm_peak(void) {
  char line[256];
  double kb = -1;
  FILE *f = fopen("/proc/self/status", "r");
  CHECK(f != NULL);
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmPeak: %lf kB", &kb) == 1) break;
  fclose(f);
  CHECK(kb > 0);
  return kb * 1024;
}

/* A host state, with corrupt_then_closed(e, pattern): e:recv raises an
** error containing pattern, and then e reports closed. */
static lua_State *host_new(void) {
  lua_State *L = luaL_newstate();
  CHECK(L != NULL);
  luaL_openlibs(L);
  conclua_open(L);
  run(L,
      "function corrupt_then_closed(e, pattern)\n"
      "  local ok, err = pcall(e.recv, e, 5)\n"
      "  assert(not ok and err:find(pattern, 1, true), err)\n"
      "  local v, why = e:recv(1)\n"
      "  assert(v == nil and why == 'closed', tostring(why))\n"
      "end\n");
  return L;
}

/* Whether fd is one of the n in list. */
static int listed(const int *list, int n, int fd) {
  for (int i = 0; i < n; i++)
    if (list[i] == fd) return 1;
  return 0;
}

/* The open fds that are sockets, into list (up to max); how many. */
static int sockets(int *list, int max) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;
  CHECK(d != NULL);
  while ((e = readdir(d)) != NULL && n < max) {
    struct stat st;
    int fd = atoi(e->d_name);
    if (e->d_name[0] != '.' && fd != dirfd(d) && fstat(fd, &st) == 0 &&
        S_ISSOCK(st.st_mode))
      list[n++] = fd;
  }
  closedir(d);
  return n;
}

/* Makes the globals a, b = conc.pipe() and returns the raw socket of b,
** the one whose bytes a reads. */
static int pipe_with_raw_b(lua_State *L) {
  int before[64], after[64], nb, na, fresh[2], k = 0;
  char buf[64];
  nb = sockets(before, 64);
  run(L, "a, b = conc.pipe()");
  na = sockets(after, 64);
  for (int i = 0; i < na; i++)
    if (!listed(before, nb, after[i]) && k < 2) fresh[k++] = after[i];
  CHECK_INT(k, 2);
  /* which is b's: the one that receives what a sends */
  run(L, "a:send('probe')");
  for (int i = 0; i < 2; i++) {
    ssize_t r = recv(fresh[i], buf, sizeof buf, MSG_DONTWAIT);
    if (r > 0) return fresh[i];
  }
  FAIL("cannot tell the pipe's sockets apart");
  return -1;
}

static void send_head(int fd, uint64_t len) {
  CHECK(conc_fd_write_all(fd, &len, sizeof len) == 0);
}

/* ------------------------------------------------------------ pipes */

/* A frame claiming a gigabyte, then a terabyte less one byte: the reader
** waits for the bytes (a timeout), holding no more than what came; cut
** off, it raises; then the end reports closed. */
static int t_pipe_forged_length(void) {
  lua_State *L = host_new();
  int b = pipe_with_raw_b(L);
  char junk[1000];
  double peak;
  memset(junk, 'j', sizeof junk);
  send_head(b, (uint64_t)1 << 30);
  CHECK(conc_fd_write_all(b, junk, sizeof junk) == 0);
  peak = vm_peak();
  run(L,
      "local v, why = a:recv(0.3)\n"
      "assert(v == nil and why == 'timeout', tostring(why))\n");
  CHECK(vm_peak() - peak < 32 * MiB);
  run(L, "a, b = nil, nil collectgarbage()");
  b = pipe_with_raw_b(L);
  send_head(b, ((uint64_t)1 << 40) - 1);
  for (int i = 0; i < 1024; i++)        /* a megabyte of it comes */
    CHECK(conc_fd_write_all(b, junk, sizeof junk) == 0);
  peak = vm_peak();
  run(L,
      "for _ = 1, 3 do\n"
      "  local v, why = a:recv(0.2)\n"   /* no retry of a huge allocation */
      "  assert(v == nil and why == 'timeout', tostring(why))\n"
      "end\n");
  CHECK(vm_peak() - peak < 32 * MiB);
  CHECK(shutdown(b, SHUT_WR) == 0);
  run(L,
      "corrupt_then_closed(a, 'pipe closed in the middle of a message')\n");
  lua_close(L);
  return 0;
}

/* Past the largest frame there is: corrupt, then closed. */
static int t_pipe_length_past_any_frame(void) {
  lua_State *L = host_new();
  int b = pipe_with_raw_b(L);
  double peak;
  send_head(b, ((uint64_t)1 << 40) + 1);
  peak = vm_peak();
  run(L,
      "corrupt_then_closed(a, 'corrupt message on pipe')\n"
      "assert(select(2, conc.select({a}, 1)) == 'closed')\n");
  CHECK(vm_peak() - peak < 32 * MiB);
  lua_close(L);
  return 0;
}

/* A whole frame of garbage: corrupt, and the next frame is read. */
static int t_pipe_garbage_frame(void) {
  lua_State *L = host_new();
  int b = pipe_with_raw_b(L);
  send_head(b, 5);
  CHECK(conc_fd_write_all(b, "\xc7\x01\x01\x08\xff", 5) == 0);
  run(L,
      "local ok, err = pcall(a.recv, a, 5)\n"
      "assert(not ok and err:find('corrupt message', 1, true), err)\n"
      "b:send({42})\n"
      "assert(a:recv(5)[1] == 42)\n");
  lua_close(L);
  return 0;
}

/* ------------------------------------------------------------ queues */

/* The first slot of a queue's ring, after its header page: the ring is
** the queue's own layout (queue.c: a qslot is state, pad, owner, len). */
static uint64_t *first_slot_len(lua_State *L) {
  cobj *o;
  lua_getglobal(L, "q");
  o = conc_obj_test(L, conc_cs_of(L), -1);
  lua_pop(L, 1);
  CHECK(o != NULL && o->kind == K_QUEUE);
  return (uint64_t *)(void *)((char *)((shmobj *)o)->shm + 4096 + 16);
}

static int t_queue_forged_slot(void) {
  static const uint64_t forged[] = {(uint64_t)1 << 40, 1 << 20, UINT64_MAX};
  lua_State *L = host_new();
  for (int i = 0; i < 3; i++) {
    uint64_t *len;
    double peak;
    run(L, "q = conc.queue() q:send('hello') q:send('world')");
    len = first_slot_len(L);
    CHECK(*len > 5 && *len < 64);       /* the message's encoded size */
    *len = forged[i];
    peak = vm_peak();
    run(L,
        "corrupt_then_closed(q, 'corrupt message on queue')\n"
        "assert(q:len() == 0)\n"
        "local ok2, err2 = pcall(q.send, q, 1)\n"
        "assert(not ok2 and err2:find('send on a closed queue', 1, true))\n");
    CHECK(vm_peak() - peak < 32 * MiB);
  }
  lua_close(L);
  return 0;
}

/* ------------------------------------------------------------ children */

/* In a forked child: the write end of its result pipe (the only pipe it
** writes that is not stdio's nor the runner's). */
static int result_fd(void) {
  for (int fd = 3; fd < 1024; fd++) {
    struct stat st;
    int fl = fcntl(fd, F_GETFL);
    if (fd == runner_why_fd || fl < 0 || (fl & O_ACCMODE) != O_WRONLY ||
        fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode))
      continue;
    return fd;
  }
  return -1;
}

/* In a forked child: writes its argument, raw, as its result and exits
** as a child that returned would. */
static int forge(lua_State *L) {
  size_t n;
  const char *bytes = luaL_checklstring(L, 1, &n);
  int fd = result_fd();
  if (fd < 0 || conc_fd_write_all(fd, bytes, n) != 0) _exit(9);
  _exit(0);
}

/* Pushes a frame header and its first bytes as one string. */
static void push_frame(lua_State *L, uint64_t len, const char *bytes,
                       size_t n) {
  reply f = {REPLY_MAGIC, 0, 0, len};
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, (const char *)&f, sizeof f);
  luaL_addlstring(&b, bytes, n);
  luaL_pushresult(&b);
}

/* A child that sends what is not the frame of a result, and exits 0, did
** not return nothing: its join raises. */
static int t_child_forged_result(void) {
  lua_State *L = host_new();
  lua_register(L, "forge", forge);
  push_frame(L, (uint64_t)1 << 40, "\xc7\x01\x01\x00", 4);  /* huge */
  lua_setglobal(L, "huge");
  push_frame(L, 5, "\xc7\x01\x01\x08\xff", 5);    /* bytes, no values */
  lua_setglobal(L, "payload");
  run(L,
      "for _, bytes in ipairs({huge, 'not a frame at all, but long enough', payload}) do\n"
      "  local p = spawn_process(forge, bytes)\n"
      "  local ok, err = pcall(p.join, p)\n"
      "  assert(not ok, 'a forged result was taken for a return')\n"
      "  assert(err:find('corrupt message', 1, true), err)\n"
      "end\n");
  lua_close(L);
  return 0;
}

/* The job pipe of a start = "spawn" child (key, id, four lengths, then
** the name, paths and payload) claiming a gigabyte of payload that never
** comes: the child gives up (status 3) without allocating it. */
static int t_spawn_pipe_forged_length(void) {
  int jfd[2], rfd[2], st;
  pid_t pid;
  CHECK(pipe(jfd) == 0 && pipe(rfd) == 0);
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    char a[16], b[16];
    char *argv[] = {(char *)"conclua", (char *)"--conc-child", a, b,
                    (char *)"-1", NULL};   /* no lifeline */
    double peak;
    int r;
    close(jfd[1]);
    snprintf(a, sizeof a, "%d", jfd[0]);
    snprintf(b, sizeof b, "%d", rfd[1]);
    peak = vm_peak();
    r = conc_process_child_main(5, argv, conclua_open);
    _exit(r != 3 ? 10 : vm_peak() - peak < 32 * MiB ? 0 : 11);
  }
  {
    unsigned char key[16] = {0};
    int64_t id = 1;
    uint64_t lens[4] = {1, 0, 0, (uint64_t)1 << 30};
    CHECK(conc_fd_write_all(jfd[1], key, sizeof key) == 0);
    CHECK(conc_fd_write_all(jfd[1], &id, sizeof id) == 0);
    CHECK(conc_fd_write_all(jfd[1], lens, sizeof lens) == 0);
    CHECK(conc_fd_write_all(jfd[1], "x", 1) == 0);
    CHECK(conc_fd_write_all(jfd[1], "\xc7\x01\x01", 3) == 0);
    close(jfd[1]);
  }
  CHECK(waitpid(pid, &st, 0) == pid);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 11)
    FAIL("the child allocated the length it was told");
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  close(jfd[0]);
  close(rfd[0]);
  close(rfd[1]);
  return 0;
}

static const tcase cases[] = {
    {"pipe_forged_length", t_pipe_forged_length, 30},
    {"pipe_length_past_any_frame", t_pipe_length_past_any_frame, 20},
    {"pipe_garbage_frame", t_pipe_garbage_frame, 20},
    {"queue_forged_slot", t_queue_forged_slot, 20},
    {"child_forged_result", t_child_forged_result, 30},
    {"spawn_pipe_forged_length", t_spawn_pipe_forged_length, 20},
    {NULL, NULL, 0}};

int main(int argc, char **argv) {
  return run_cases(cases, argc, argv);
}
