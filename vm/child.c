/*
** child.c
** The child's side of spawn_process: running fn, answering, leaving;
** and start = "spawn", a fresh conclua given fn and its arguments.
**
** A forked child runs fn on its copy of the calling state, in a coroutine
** of its own so that an error's traceback shows the child's levels only.
** It sends one reply (workers.h: header, error message, results or error
** value in marshal's remote form), waits for the workers it spawned itself,
*flushes
** stdio and _exits: it never returns into the parent's code nor runs the
** parent's exit handlers (os.exit is replaced in the child to that end).
** A spawned child reads everything from a pipe (a spawnjob, workers.h),
** key first, so that the functions it is sent pass their check.
*/

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "workers.h"

#ifndef CONCLUA_BINDIR
#define CONCLUA_BINDIR "/usr/local/bin"
#endif

extern char **environ;

/* ------------------------------------------------------------ child */

/* Sends the reply: header, error message and payload in one writev loop,
** with SIGPIPE blocked for good (the child is about to exit: a pending
** one dies with it), so a parent gone is an error, not a signal. */
static void child_send(int fd, int failed, const char *emsg, size_t elen,
                       mbuf *payload) {
  reply f;
  struct iovec iov[3];
  int i = 0, n = 0;
  sigset_t pipeset;
  f.magic = REPLY_MAGIC;
  f.status = (uint32_t)failed;
  f.msglen = elen;
  f.len = payload ? payload->n : 0;
  iov[n].iov_base = &f;
  iov[n++].iov_len = sizeof f;
  if (elen) {
    iov[n].iov_base = (void *)emsg;
    iov[n++].iov_len = elen;
  }
  if (f.len) {
    iov[n].iov_base = payload->p;
    iov[n++].iov_len = payload->n;
  }
  sigemptyset(&pipeset);
  sigaddset(&pipeset, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipeset, NULL);
  while (i < n) {
    ssize_t w = writev(fd, iov + i, n - i);
    if (w < 0) {
      if (errno == EINTR) continue;
      break;
    }
    while (i < n && (size_t)w >= iov[i].iov_len) w -= (ssize_t)iov[i++].iov_len;
    if (i < n) {
      iov[i].iov_base = (char *)iov[i].iov_base + w;
      iov[i].iov_len -= (size_t)w;
    }
  }
  conc_fd_close(fd);
}

static int child_rfd = -1;     /* where a child's os.exit reports from */

/* Set by the interactive REPL: Ctrl-C is the REPL's, not its children's
** (they are in the terminal's process group too). A "spawn" child learns
** it from its initial signal mask, which has SIGINT blocked. */
static _Atomic int children_ignore_sigint;

void conc_process_ignore_sigint(int on) {
  atomic_store(&children_ignore_sigint, on);
}

/* os.exit in a child: flush, wait for its own workers, _exit. The
** parent's exit handlers are not the child's to run. */
static int child_exit(lua_State *L) {
  int code;
  cstate *cs = conc_cs_of(L);
  if (lua_isboolean(L, 1))
    code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    code = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  if (child_rfd >= 0) conc_fd_close(child_rfd);
  if (cs) {
    conc_rt_waitall(cs->rt, NULL);
    conc_rt_shutdown(cs->rt);       /* its daemons: cancelled, or SIGTERM */
  }
  fflush(NULL);
  if (conc_trace_on) {
    conc_trace_event('i', 0, "worker", "os.exit", NULL, 0);
    conc_trace_exit();
  }
  _exit(code);
  return 0;
}

/* Runs the n values at L[first..] as fn(args...) in this (child) process,
** reports to fd and exits. */
void conc_child_run(lua_State *L, cstate *cs, worker *w, int fd, int first,
                      int n, const sigset_t *mask) {
  int base, st, nres = 0, failed = 0;
  lua_State *co;
  char err[512];
  mbuf out;
  struct sigaction sa;
  sigset_t cur;
  /* SIGINT blocked on entry of a "spawn" child (mask == NULL): its parent
  ** is interactive. A forked child comes with every signal blocked (the
  ** fork blocks them until the child has its own handlers). */
  pthread_sigmask(SIG_BLOCK, NULL, &cur);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = atomic_load(&children_ignore_sigint) ||
                          (mask == NULL && sigismember(&cur, SIGINT))
                      ? SIG_IGN
                      : SIG_DFL;
  sigaction(SIGINT, &sa, NULL);
  sigemptyset(&cur);
  sigaddset(&cur, SIGINT);
  pthread_sigmask(SIG_UNBLOCK, &cur, NULL);
  sa.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  conc_interrupt_target(NULL);
  if (mask) pthread_sigmask(SIG_SETMASK, mask, NULL);
  child_rfd = fd;
  /* this process's runtime: the parent's workers are not its own */
  conc_rt_forget_workers(cs->rt);
  cs->self = w;
  cs->ismain = 1;
  atomic_store(&cs->stuck, 0);
  conc_is_child = 1;
  w->owner = conc_getpid();
  cs->trace_tid = 0;
  if (conc_trace_on) {
    char tn[96];
    snprintf(tn, sizeof tn, "process %d (%s)", (int)getpid(), w->name);
    conc_trace_process(tn);
  }
  atomic_store(&cs->interrupt, 0);
  conc_tls_L = L;
  /* os.exit reports like a return would not: exit status only */
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_OSLIBNAME) == LUA_TTABLE) {
    lua_pushcfunction(L, child_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_pop(L, 2);
  /* fn runs in a coroutine of its own: its traceback then shows the
  ** child's levels only, not the parent's below spawn_process */
  co = lua_newthread(L);
  base = lua_gettop(L);
  for (int i = 0; i < n; i++) lua_pushvalue(L, first + i);
  lua_xmove(L, co, n);
  conc_tls_L = co;
  st = lua_resume(co, L, n - 1, &nres);
  conc_tls_L = L;
  if (st == LUA_YIELD) {
    lua_settop(co, 0);
    lua_pushliteral(co, "attempt to yield from outside a coroutine");
    st = LUA_ERRRUN;
  }
  conc_mbuf_init(&out);
  if (st == LUA_OK) {
    if (conc_marshal_encode(co, cs, lua_gettop(co) - nres + 1, nres, &out,
                       MARSHAL_REMOTE, "results[%d]", err, sizeof err) != 0) {
      lua_pushfstring(L, "process %d (%s): %s", (int)getpid(), w->name, err);
      failed = 1;
    }
  } else {
    int e = lua_gettop(co);
    if (lua_type(co, e) != LUA_TSTRING &&
        conc_marshal_encode(co, cs, e, 1, &out, MARSHAL_REMOTE, "error", err,
                       sizeof err) != 0)
      conc_mbuf_reset(&out);
    lua_pushvalue(co, e);
    lua_xmove(co, L, 1);
    conc_errmsg(L, -1);
    luaL_traceback(L, co, NULL, 0);
    lua_pushfstring(L, "process %d (%s): %s\n%s", (int)getpid(), w->name,
                    lua_tostring(L, -2), lua_tostring(L, -1));
    failed = 1;
  }
  CONC_UNUSED(base);
  if (failed) {
    size_t elen;
    const char *emsg = lua_tolstring(L, -1, &elen);
    child_send(fd, 1, emsg, elen, out.n ? &out : NULL);
  } else {
    child_send(fd, 0, NULL, 0, &out);
  }
  child_rfd = -1;
  if (cs->rt->head) {                /* it spawned workers */
    conc_rt_waitall(cs->rt, NULL);
    conc_rt_shutdown(cs->rt); /* its daemons: cancelled, or SIGTERM */
  }
  fflush(NULL);
  if (conc_trace_on) {
    conc_trace_event('i', 0, "worker", failed ? "failure" : "exit",
                     failed ? lua_tostring(L, -1) : NULL, 0);
    conc_trace_exit();
  }
  _exit(failed ? 1 : 0);
}

/* ------------------------------------------------------------ spawn */


/* Finds the conclua command for start = "spawn": $CONCLUA_EXE; the
** running conclua itself; else, for a host or lua5.4, the one installed
** with the code running this (PREFIX/lib/libconclua.so and
** PREFIX/lib/lua/5.4/conc.so give PREFIX/bin/conclua; a build directory
** holds both); the one of the prefix this was built for; one on PATH. */
const char *conc_exe_path(char *buf, size_t n) {
  static const char *const rel[] = {"/../bin/conclua", "/../../../bin/conclua",
                                    "/conclua", NULL};
  const char *e = getenv("CONCLUA_EXE");
  Dl_info info;
  if (e && *e) return e;
  if (conc_self_exe) return conc_self_exe;
  if (dladdr((void *)conc_exe_path, &info) && info.dli_fname &&
      strchr(info.dli_fname, '/')) {
    const char *slash = strrchr(info.dli_fname, '/');
    int dirlen = (int)(slash - info.dli_fname);
    for (int i = 0; rel[i]; i++) {
      if (snprintf(buf, n, "%.*s%s", dirlen, info.dli_fname, rel[i]) <
              (int)n && access(buf, X_OK) == 0)
        return buf;
    }
  }
  snprintf(buf, n, "%s/conclua", CONCLUA_BINDIR);
  if (access(buf, X_OK) == 0) return buf;
  if ((e = getenv("PATH")) != NULL) {
    while (*e) {
      size_t len = strcspn(e, ":");
      if (len > 0 && snprintf(buf, n, "%.*s/conclua", (int)len, e) < (int)n &&
          access(buf, X_OK) == 0)
        return buf;
      e += len;
      if (*e == ':') e++;
    }
  }
  return NULL;
}

/* Everything a fresh conclua needs, on its job pipe (a spawnjob:
** workers.h). Hands lfd, the lifeline
** read end for the child (or -1), back, whatever happens. */
int conc_spawn_exec(lua_State *L, cstate *cs, worker *w, int fi, int n,
                      const char *exe, int rfd[2], int lfd, int lkept) {
  int jfd[2];
  char err[512], fdarg[3][16];
  mbuf b;
  spawnjob job;
  char *path = NULL, *cpath = NULL;
  pid_t pid;
  conc_mbuf_init(&b);
  if (conc_marshal_encode(L, cs, fi, n, &b, MARSHAL_REMOTE | MARSHAL_NOSHM,
                          "spawn", err, sizeof err) != 0) {
    conc_mbuf_free(&b);
    conc_fd_close(rfd[0]);
    conc_fd_close(rfd[1]);
    conc_lifeline_given(lfd, lkept, -1);
    return luaL_error(L, "%s", err);
  }
  if (conc_fd_pipe(jfd) != 0) {
    int e = errno;
    conc_mbuf_free(&b);
    conc_fd_close(rfd[0]);
    conc_fd_close(rfd[1]);
    conc_lifeline_given(lfd, lkept, -1);
    return luaL_error(L, "cannot start process: %s", strerror(e));
  }
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_LOADLIBNAME) == LUA_TTABLE) {
    lua_getfield(L, -1, "path");
    lua_getfield(L, -2, "cpath");
    path = lua_isstring(L, -2) ? strdup(lua_tostring(L, -2)) : NULL;
    cpath = lua_isstring(L, -1) ? strdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 2);
  }
  lua_pop(L, 2);
  snprintf(fdarg[0], sizeof fdarg[0], "%d", jfd[0]);
  snprintf(fdarg[1], sizeof fdarg[1], "%d", rfd[1]);
  snprintf(fdarg[2], sizeof fdarg[2], "%d", lfd);
  {
    /* dup2 of an fd onto itself clears its close-on-exec flag: the two
    ** pipe ends and the lifeline's read end, and only they, cross the
    ** exec */
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t sa;
    sigset_t all, none;
    char *args[6];
    int e;
    args[0] = (char *)exe;
    args[1] = (char *)"--conc-child";
    args[2] = fdarg[0];
    args[3] = fdarg[1];
    args[4] = fdarg[2];
    args[5] = NULL;
    sigfillset(&all);
    sigemptyset(&none);
    if (atomic_load(&children_ignore_sigint)) sigaddset(&none, SIGINT);
    int tfds[2], nt = conc_trace_fds(tfds);
    posix_spawn_file_actions_init(&fa);
    /* and, for a trace, its file and shared page (trace.c) */
    for (int i = 0; i < nt; i++)
      posix_spawn_file_actions_adddup2(&fa, tfds[i], tfds[i]);
    posix_spawn_file_actions_adddup2(&fa, jfd[0], jfd[0]);
    posix_spawn_file_actions_adddup2(&fa, rfd[1], rfd[1]);
    if (lfd >= 0) posix_spawn_file_actions_adddup2(&fa, lfd, lfd);
    posix_spawnattr_init(&sa);
    posix_spawnattr_setflags(&sa,
                             POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    posix_spawnattr_setsigdefault(&sa, &all);
    posix_spawnattr_setsigmask(&sa, &none);
    fflush(NULL);
    e = posix_spawn(&pid, exe, &fa, &sa, args, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&sa);
    if (e != 0) {
      pid = -1;
      errno = e;
    }
  }
  conc_fd_close(jfd[0]);
  conc_fd_close(rfd[1]);
  conc_lifeline_given(lfd, lkept, pid);
  if (pid < 0) {
    int e = errno;
    conc_fd_close(jfd[1]);
    conc_fd_close(rfd[0]);
    conc_mbuf_free(&b);
    free(path);
    free(cpath);
    return luaL_error(L, "cannot start process: %s", strerror(e));
  }
  w->pid = pid;
  conc_marshal_key(job.key);
  job.id = w->id;
  job.lens[0] = (uint64_t)strlen(w->name);
  job.lens[1] = path ? strlen(path) : 0;
  job.lens[2] = cpath ? strlen(cpath) : 0;
  job.lens[3] = b.n;
  /* the child may die first: EPIPE is fine, the reaper reports it */
  if (conc_fd_write_all(jfd[1], &job, sizeof job) == 0 &&
      conc_fd_write_all(jfd[1], w->name, (size_t)job.lens[0]) == 0 &&
      (!job.lens[1] ||
       conc_fd_write_all(jfd[1], path, (size_t)job.lens[1]) == 0) &&
      (!job.lens[2] ||
       conc_fd_write_all(jfd[1], cpath, (size_t)job.lens[2]) == 0))
    conc_fd_write_all(jfd[1], b.p, b.n);
  conc_fd_close(jfd[1]);
  conc_mbuf_free(&b);
  free(path);
  free(cpath);
  return 0;
}

/* ------------------------------------------------------------ spawned */

/* The child side of start = "spawn": conclua --conc-child JOBFD RESFD
** LIFELINEFD. */
int conc_process_child_main(int argc, char **argv, int (*open)(lua_State *L)) {
  int jfd, rfd, lfd, n;
  spawnjob job;
  const uint64_t *lens = job.lens;
  char *name = NULL, *path = NULL, *cpath = NULL, *payload = NULL;
  lua_State *L;
  cstate *cs;
  rt *r;
  worker *w;
  char err[256];
  if (argc < 5) return 2;
  lfd = atoi(argv[4]);
  if (lfd >= 0) {                      /* first of all */
    fcntl(lfd, F_SETFD, FD_CLOEXEC);
    conc_lifeline_arm(lfd, getpid());
  }
  jfd = atoi(argv[2]);
  rfd = atoi(argv[3]);
  fcntl(jfd, F_SETFD, FD_CLOEXEC);
  fcntl(rfd, F_SETFD, FD_CLOEXEC);
  if (conc_fd_read_full(jfd, &job, sizeof job) != sizeof job ||
      lens[0] > 4096 || lens[1] > 65536 || lens[2] > 65536)
    return 3;
  name = calloc(1, (size_t)lens[0] + 1);
  path = calloc(1, (size_t)lens[1] + 1);
  cpath = calloc(1, (size_t)lens[2] + 1);
  if (!name || !path || !cpath) return 3;
  /* the payload's length is the pipe's word: read as it comes */
  if (conc_fd_read_full(jfd, name, (size_t)lens[0]) != (ssize_t)lens[0] ||
      conc_fd_read_full(jfd, path, (size_t)lens[1]) != (ssize_t)lens[1] ||
      conc_fd_read_full(jfd, cpath, (size_t)lens[2]) != (ssize_t)lens[2] ||
      conc_fd_read_alloc(jfd, (size_t)lens[3], &payload) != 0)
    return 3;
  conc_fd_close(jfd);
  conc_marshal_setkey(job.key);
  L = luaL_newstate();
  if (L == NULL) return 3;
  luaL_openlibs(L);
  open(L);
  cs = conc_cs_of(L);
  r = cs->rt;
  w = conc_worker_new(r, &conc_process_ops, name, 0);
  if (w == NULL) return 3;
  w->id = job.id;
  if (lens[1]) {
    lua_getglobal(L, "package");
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, cpath);
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
  }
  n = conc_marshal_decode(L, cs, payload, (size_t)lens[3], NULL, 0,
                     err, sizeof err);
  if (n < 1) {
    lua_pushfstring(L, "process %d (%s): %s", (int)getpid(), name, err);
    child_send(rfd, 1, lua_tostring(L, -1), strlen(lua_tostring(L, -1)), NULL);
    return 1;
  }
  free(payload);
  free(name);
  free(path);
  free(cpath);
  conc_child_run(L, cs, w, rfd, lua_gettop(L) - n + 1, n, NULL);
  return 0;
}
