/*
** process.c
** spawn_process: workers in forked (or freshly executed) child processes.
**
** DESIGN. The parent makes a result pipe, flushes stdio, and forks with
** every runtime lock held (pthread_atfork: objreg_lockall), so the child,
** which has only the forking thread, inherits no lock that some other
** thread holds. The child runs fn on its copy of the calling state, writes
** one frame to the pipe, a header (status, message length, payload
** length), the error message if any, and the results or error value in
** marshal's remote form, then waits for its own workers and _exits. It
** never returns into the parent's Lua code nor runs its exit handlers.
** In the parent, one reaper thread per process watches every child with
** poll(): a pidfd (readable once the child ended) and the result pipe,
** which it drains as data comes, so a child with a big result never
** blocks on a full pipe. When the child ends it reaps it (waitpid), reads
** what is left, and finishes the worker record, which wakes joiners and
** selects exactly like a thread's end. Since the reaper holds a reference
** to each child it watches, a handle collected early leaves no zombie,
** and processes look like threads to everything else in the runtime.
** start = "spawn" executes a fresh conclua that reads fn and its
** arguments from a pipe (process_child_main) and answers the same way.
*/

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include <lualib.h>

#ifndef CONCLUA_BINDIR
#define CONCLUA_BINDIR "/usr/local/bin"
#endif

/* The frame a child sends back. */
typedef struct frame {
  uint32_t magic;
  uint32_t status;             /* 0 returned, 1 raised */
  uint64_t msglen;             /* error message bytes that follow */
  uint64_t len;                /* marshal payload bytes after that */
} frame;

#define FRAME_MAGIC 0x636f6e63u

extern char **environ;

static _Atomic pid_t cached_pid;
const char *conc_self_exe;     /* set by the conclua command's main */

/* The thread id, cached: gettid is a system call. */
static __thread __attribute__((tls_model("initial-exec"))) uint32_t tls_tid;

uint32_t conc_gettid(void) {
  if (tls_tid == 0) tls_tid = (uint32_t)syscall(SYS_gettid);
  return tls_tid;
}

pid_t conc_getpid(void) {
  pid_t p = atomic_load_explicit(&cached_pid, memory_order_relaxed);
  if (p == 0) {
    p = getpid();
    atomic_store(&cached_pid, p);
  }
  return p;
}

/* ------------------------------------------------------------ reaper */

static pthread_mutex_t reap_mu = PTHREAD_MUTEX_INITIALIZER;
static objlink reap_link;
static worker **watched;       /* children the reaper watches */
static int nwatched, capwatched;
static int reap_efd = -1;      /* wakes the reaper when the list changes */
static int reap_running;

static const char *signame(int sig, char *buf, size_t n) {
  const char *a = sigabbrev_np(sig);
  if (a) snprintf(buf, n, "SIG%s", a);
  else snprintf(buf, n, "signal %d", sig);
  return buf;
}

/* Reads what the child sent so far, without blocking; 1 at end of file. */
static int drain(worker *w) {
  for (;;) {
    ssize_t r;
    if (w->inbuf.cap - w->inbuf.n < 65536) {
      size_t cap = w->inbuf.cap ? w->inbuf.cap * 2 : 65536;
      char *np = realloc(w->inbuf.p, cap);
      if (np == NULL) return 1;           /* give up on the result */
      w->inbuf.p = np;
      w->inbuf.cap = cap;
    }
    r = read(w->rfd, w->inbuf.p + w->inbuf.n, w->inbuf.cap - w->inbuf.n);
    if (r > 0) {
      w->inbuf.n += (size_t)r;
      continue;
    }
    if (r == 0) return 1;
    if (errno == EINTR) continue;
    return errno != EAGAIN;
  }
}

/* The child ended (status from waitpid): makes the outcome from the
** frame it sent, or from how it died. */
static void conclude(worker *w, int wst) {
  int status;
  msg *result = NULL;
  char *errmsg = NULL;
  char buf[256], sb[32];
  frame f;
  int framed = 0;
  if (w->inbuf.n >= sizeof f) {
    memcpy(&f, w->inbuf.p, sizeof f);
    framed = f.magic == FRAME_MAGIC && f.status <= 1 &&
             f.msglen <= w->inbuf.n - sizeof f &&
             f.len == w->inbuf.n - sizeof f - f.msglen;
  }
  if (WIFSIGNALED(wst)) {
    w->exitcode = -WTERMSIG(wst);
  } else {
    w->exitcode = WEXITSTATUS(wst);
  }
  if (framed && f.status == 0 && !WIFSIGNALED(wst)) {
    result = msg_copy(w->inbuf.p + sizeof f + f.msglen, (size_t)f.len);
    status = W_DONE;
  } else if (framed && f.status == 1) {
    errmsg = malloc((size_t)f.msglen + 1);
    if (errmsg) {
      memcpy(errmsg, w->inbuf.p + sizeof f, (size_t)f.msglen);
      errmsg[f.msglen] = '\0';
    }
    if (f.len)
      result = msg_copy(w->inbuf.p + sizeof f + f.msglen, (size_t)f.len);
    status = W_FAILED;
  } else if (WIFSIGNALED(wst)) {
    snprintf(buf, sizeof buf, "process %d killed by signal %d (%s)",
             (int)w->pid, WTERMSIG(wst), signame(WTERMSIG(wst), sb, sizeof sb));
    errmsg = strdup(buf);
    status = W_KILLED;
  } else if (WEXITSTATUS(wst) == 0) {
    status = W_DONE;                /* os.exit(0): nothing returned */
  } else {
    snprintf(buf, sizeof buf, "process %d exited with status %d", (int)w->pid,
             WEXITSTATUS(wst));
    errmsg = strdup(buf);
    status = W_FAILED;
  }
  mbuf_free(&w->inbuf);
  worker_finish(w, status, result, errmsg);
}

/* ------------------------------------------------------------ watching */

/* One thread at a time watches a child (w->busy): it drains the result
** pipe as data comes and reaps the child once it ended. Whoever waits
** takes that role; the others wait for the end on w->waiters, and take
** over if the watcher gives up (a timeout, a stop). A child nobody has a
** handle to any more is watched by the reaper thread, so it leaves no
** zombie; the common case (spawn, then join) has no extra thread, which
** keeps fork cheap (a multithreaded parent pays for TLB shootdowns). */

/* 1: taken; 0: someone else watches; -1: the child ended already. */
static int role_take(worker *w) {
  int r;
  pthread_mutex_lock(&w->mu);
  if (worker_status(w) != W_RUNNING) r = -1;
  else if (w->busy) r = 0;
  else {
    w->busy = 1;
    r = 1;
  }
  pthread_mutex_unlock(&w->mu);
  return r;
}

/* Gives the role up; waiters are told, so that one of them takes it. */
static void role_give(worker *w) {
  selnode *n;
  pthread_mutex_lock(&w->mu);
  w->busy = 0;
  while ((n = w->waiters) != NULL) {
    selq_remove(&w->waiters, n);
    park_wake(n->sw->park);
  }
  pthread_mutex_unlock(&w->mu);
}

/* With the role: drains the pipe; if the child ended, reaps it and
** finishes its record. 1 if it ended. Never blocks. */
static int proc_step(worker *w) {
  int wst = 0;
  pid_t r;
  if (w->rfd >= 0 && drain(w)) {       /* end of file: all it will send */
    fd_close(w->rfd);
    w->rfd = -1;
  }
  pthread_mutex_lock(&w->mu);
  do r = waitpid(w->pid, &wst, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == w->pid || (r < 0 && errno == ECHILD)) {
    w->reaped = 1;
    if (r < 0) wst = 0;                /* reaped by someone else */
  }
  pthread_mutex_unlock(&w->mu);
  if (!w->reaped) return 0;
  if (w->rfd >= 0) {
    drain(w);
    fd_close(w->rfd);
    w->rfd = -1;
  }
  fd_close(w->pidfd);
  w->pidfd = -1;
  conclude(w, wst);
  return 1;
}

/* Waits for the child of w to end, on parker p; cs (may be NULL) can
** stop the wait. 1 ended, 0 deadline, -1 stop (*why). */
int process_wait(cstate *cs, parker *p, worker *w, const deadline *d,
                 const char **why) {
  for (;;) {
    int r = role_take(w);
    if (r < 0) return 1;
    if (r == 0) {                      /* watched by another: wait */
      selwait sw;
      selnode n;
      int res = 0, retry = 0;
      sw.park = p;
      atomic_init(&sw.won, 0);
      memset(&n, 0, sizeof n);
      n.sw = &sw;
      if (worker_sel_try(&w->obj, &n)) return 1;
      for (;;) {
        uint32_t seen = park_seq(p);
        if (atomic_load(&sw.won)) {
          res = 1;
          break;
        }
        pthread_mutex_lock(&w->mu);
        retry = !n.linked;             /* the watcher gave up */
        pthread_mutex_unlock(&w->mu);
        if (retry) break;
        if (cs && (*why = cs_stopreason(cs)) != NULL) {
          res = -1;
          break;
        }
        if (park_sleep(p, seen, d) == ETIMEDOUT && !atomic_load(&sw.won)) break;
      }
      worker_sel_delist(&w->obj, &n);
      if (atomic_load(&sw.won)) return 1;
      if (retry) continue;
      return res;
    }
    for (;;) {                         /* watch it ourselves */
      struct pollfd pf[3];
      int k = 0;
      uint32_t seen = park_seq(p);
      if (proc_step(w)) {
        role_give(w);
        return 1;
      }
      if (cs && (*why = cs_stopreason(cs)) != NULL) {
        role_give(w);
        return -1;
      }
      if (deadline_passed(d)) {
        role_give(w);
        return 0;
      }
      if (w->rfd >= 0) {
        pf[k].fd = w->rfd;
        pf[k++].events = POLLIN;
      }
      pf[k].fd = w->pidfd;
      pf[k++].events = POLLIN;
      park_poll(p, seen, pf, k, d);
    }
  }
}

/* Checks without blocking whether the child ended (if nobody watches). */
int process_poll(worker *w) {
  if (role_take(w) == 1) {
    proc_step(w);
    role_give(w);
  }
  return worker_status(w) != W_RUNNING;
}

/* select: steps the child (its fds woke the select); a node already
** enlisted is claimed by the end of the child, if that came. */
static int proc_sel_try(cobj *o, selnode *n) {
  worker *w = (worker *)o;
  int linked;
  process_poll(w);
  pthread_mutex_lock(&w->mu);
  linked = n->linked;
  pthread_mutex_unlock(&w->mu);
  if (linked) return atomic_load(&n->sw->won) != 0;
  return worker_sel_try(o, n);
}

/* select polls the child's pipe and pidfd, unless another thread
** watches it (it will finish the record, which wakes the select). */
static int proc_sel_fds(cobj *o, int fds[2]) {
  worker *w = (worker *)o;
  int k = 0;
  pthread_mutex_lock(&w->mu);
  if (!w->busy && worker_status(w) == W_RUNNING) {
    if (w->rfd >= 0) fds[k++] = w->rfd;
    if (w->pidfd >= 0) fds[k++] = w->pidfd;
  }
  pthread_mutex_unlock(&w->mu);
  return k;
}

/* ------------------------------------------------------------ reaper */

static void *reaper_main(void *arg) {
  struct pollfd *fds = NULL;
  int cap = 0;
  CONC_UNUSED(arg);
  for (;;) {
    int n, i;
    pthread_mutex_lock(&reap_mu);
    if (nwatched == 0) {             /* nothing left: stop, no fd behind */
      reap_running = 0;
      fd_close(reap_efd);
      reap_efd = -1;
      pthread_mutex_unlock(&reap_mu);
      break;
    }
    if (cap < 2 * nwatched + 1) {
      cap = 2 * nwatched + 1;
      free(fds);
      fds = malloc(sizeof *fds * (size_t)cap);
      if (fds == NULL) abort();
    }
    fds[0].fd = reap_efd;
    fds[0].events = POLLIN;
    for (i = 0; i < nwatched; i++) {
      fds[1 + 2 * i].fd = watched[i]->pidfd;
      fds[1 + 2 * i].events = POLLIN;
      fds[2 + 2 * i].fd = watched[i]->rfd;
      fds[2 + 2 * i].events = POLLIN;
    }
    n = nwatched;
    pthread_mutex_unlock(&reap_mu);
    if (poll(fds, (nfds_t)(1 + 2 * n), -1) < 0 && errno != EINTR) continue;
    if (fds[0].revents) {
      uint64_t v;
      ssize_t r = read(reap_efd, &v, sizeof v);
      CONC_UNUSED(r);
    }
    for (i = 0; i < n; i++) {
      worker *w;
      if (fds[1 + 2 * i].revents == 0 && fds[2 + 2 * i].revents == 0) continue;
      pthread_mutex_lock(&reap_mu);
      w = watched[i];
      pthread_mutex_unlock(&reap_mu);
      if (proc_step(w)) {
        pthread_mutex_lock(&reap_mu);
        for (int k = 0; k < nwatched; k++)
          if (watched[k] == w) {
            watched[k] = watched[--nwatched];
            break;
          }
        pthread_mutex_unlock(&reap_mu);
        role_give(w);
        obj_release(&w->obj);
        break;                       /* the list changed: poll again */
      }
    }
  }
  free(fds);
  return NULL;
}

int process_reaper_running(void) {
  int r;
  pthread_mutex_lock(&reap_mu);
  r = reap_running;
  pthread_mutex_unlock(&reap_mu);
  return r;
}

/* Hands a child (whose role the caller holds) to the reaper, which keeps
** a reference and the role until the child ended. */
static int reaper_watch(worker *w) {
  int r = 0;
  pthread_mutex_lock(&reap_mu);
  if (reap_efd < 0) reap_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (reap_efd < 0 || (nwatched == capwatched &&
                       (capwatched = capwatched ? capwatched * 2 : 16,
                        !(watched = realloc(watched, sizeof *watched *
                                                         (size_t)capwatched))))) {
    pthread_mutex_unlock(&reap_mu);
    return ENOMEM;
  }
  obj_retain(&w->obj);
  watched[nwatched++] = w;
  if (!reap_running) {
    pthread_t tid;
    pthread_attr_t attr;
    sigset_t all, old;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256u << 10);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);   /* the reaper takes none */
    r = pthread_create(&tid, &attr, reaper_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (r == 0) reap_running = 1;
    else {
      nwatched--;
      obj_release(&w->obj);
    }
  } else {
    uint64_t one = 1;
    ssize_t wr = write(reap_efd, &one, sizeof one);
    CONC_UNUSED(wr);
  }
  pthread_mutex_unlock(&reap_mu);
  return r;
}

/* The last Lua handle of a process went away: a child still running is
** handed to the reaper (unless a thread watches it: it will reap it). */
void process_handle_gone(worker *w) {
  if (atomic_fetch_sub(&w->handles, 1) != 1) return;
  if (role_take(w) != 1) return;
  if (proc_step(w) || reaper_watch(w) != 0) role_give(w);
}

/* ------------------------------------------------------------ fork */

static void atfork_prepare(void) {
  objreg_lockall();
}

_Atomic unsigned conc_forkgen;      /* forks this process made */

static void atfork_parent(void) {
  atomic_fetch_add(&conc_forkgen, 1);
  objreg_unlockall(0);
}

/* The child: one thread; the parent's reaper, pool and fds are not its. */
static void atfork_child(void) {
  atomic_store(&cached_pid, getpid());
  tls_tid = 0;
  objreg_unlockall(1);
  threadpool_atfork_child();
  for (int i = 0; i < nwatched; i++) {
    fd_close(watched[i]->pidfd);
    fd_close(watched[i]->rfd);
  }
  nwatched = 0;
  capwatched = 0;
  watched = NULL;               /* the parent's array: left alone */
  reap_running = 0;
  if (reap_efd >= 0) {
    fd_close(reap_efd);
    reap_efd = -1;
  }
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* At exit (also after os.exit): wait for the non-daemon workers of every
** runtime still open, then stop the daemons. */
static void at_exit(void) {
  rt_exit_all();
}

static void atfork_install_once(void) {
  unsigned char key[16];
  /* the bytecode key is per process tree: make it before the first fork,
  ** or parent and child would each draw their own and reject each
  ** other's functions */
  marshal_key(key);
  objreg_add(&reap_link, &reap_mu);
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
  atexit(at_exit);
}

void process_atfork_install(void) {
  pthread_once(&atfork_once, atfork_install_once);
}

/* ------------------------------------------------------------ child */

/* Sends the frame and leaves: never returns. */
static void child_send(int fd, int failed, const char *emsg, size_t elen,
                       mbuf *payload) {
  frame f;
  f.magic = FRAME_MAGIC;
  f.status = (uint32_t)failed;
  f.msglen = elen;
  f.len = payload ? payload->n : 0;
  if (fd_write_all(fd, &f, sizeof f) == 0 && (elen == 0 ||
      fd_write_all(fd, emsg, elen) == 0) && f.len)
    fd_write_all(fd, payload->p, payload->n);
  fd_close(fd);
}

static int child_rfd = -1;     /* where a child's os.exit reports from */

/* Set by the interactive REPL: Ctrl-C is the REPL's, not its children's
** (they are in the terminal's process group too). A "spawn" child learns
** it from its initial signal mask, which has SIGINT blocked. */
static _Atomic int children_ignore_sigint;

void process_ignore_sigint(int on) {
  atomic_store(&children_ignore_sigint, on);
}

/* os.exit in a child: flush, wait for its own workers, _exit. The
** parent's exit handlers are not the child's to run. */
static int child_exit(lua_State *L) {
  int code;
  cstate *cs = cs_of(L);
  if (lua_isboolean(L, 1))
    code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    code = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  if (child_rfd >= 0) fd_close(child_rfd);
  if (cs) rt_waitall(cs->rt, NULL);
  fflush(NULL);
  _exit(code);
  return 0;
}

/* Runs the n values at L[first..] as fn(args...) in this (child) process,
** reports to fd and exits. */
static void child_run(lua_State *L, cstate *cs, worker *w, int fd, int first,
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
                  (mask == NULL && sigismember(&cur, SIGINT)) ? SIG_IGN : SIG_DFL;
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
  rt_forget_workers(cs->rt);
  cs->self = w;
  w->owner = conc_getpid();
  atomic_store(&cs->interrupt, 0);
  thread_set_current(L);
  /* os.exit reports like a return would not: exit status only */
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_OSLIBNAME) == LUA_TTABLE) {
    lua_pushcfunction(L, child_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_pop(L, 2);
  /* fn runs in a coroutine of its own: its traceback then shows the
  ** child's frames only, not the parent's below spawn_process */
  co = lua_newthread(L);
  base = lua_gettop(L);
  for (int i = 0; i < n; i++) lua_pushvalue(L, first + i);
  lua_xmove(L, co, n);
  thread_set_current(co);
  st = lua_resume(co, L, n - 1, &nres);
  thread_set_current(L);
  if (st == LUA_YIELD) {
    lua_settop(co, 0);
    lua_pushliteral(co, "attempt to yield from outside a coroutine");
    st = LUA_ERRRUN;
  }
  mbuf_init(&out);
  if (st == LUA_OK) {
    if (marshal_encode(co, cs, lua_gettop(co) - nres + 1, nres, &out,
                       MARSHAL_REMOTE, "results[%d]", err, sizeof err) != 0) {
      lua_pushfstring(L, "process %d (%s): %s", (int)getpid(), w->name, err);
      failed = 1;
    }
  } else {
    int e = lua_gettop(co);
    if (lua_type(co, e) != LUA_TSTRING &&
        marshal_encode(co, cs, e, 1, &out, MARSHAL_REMOTE, "error", err,
                       sizeof err) != 0)
      mbuf_reset(&out);
    luaL_traceback(L, co, NULL, 0);
    lua_pushfstring(L, "process %d (%s): %s\n%s", (int)getpid(), w->name,
                    luaL_tolstring(co, e, NULL), lua_tostring(L, -1));
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
  if (cs->rt->head) rt_waitall(cs->rt, NULL);  /* it spawned workers */
  fflush(NULL);
  _exit(failed ? 1 : 0);
}

/* ------------------------------------------------------------ spawn */

static pthread_mutex_t fork_mu = PTHREAD_MUTEX_INITIALIZER;

/* Finds the conclua command for start = "spawn": $CONCLUA_EXE; the
** running conclua itself; else, for a host or lua5.4, the one installed
** with the code running this (PREFIX/lib/libconclua.so and
** PREFIX/lib/lua/5.4/conc.so give PREFIX/bin/conclua; a build directory
** holds both); the one of the prefix this was built for; one on PATH. */
static const char *conclua_exe(char *buf, size_t n) {
  static const char *const rel[] = {"/../bin/conclua", "/../../../bin/conclua",
                                    "/conclua", NULL};
  const char *e = getenv("CONCLUA_EXE");
  Dl_info info;
  if (e && *e) return e;
  if (conc_self_exe) return conc_self_exe;
  if (dladdr((void *)conclua_exe, &info) && info.dli_fname &&
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

/* Everything a fresh conclua needs, in one pipe write: key, id, name,
** package paths, then fn and its arguments. */
static int spawn_exec(lua_State *L, cstate *cs, worker *w, int fi, int n,
                      const char *exe, int rfd[2]) {
  int jfd[2];
  char err[512], fdarg[2][16];
  mbuf b;
  unsigned char key[16];
  char *path = NULL, *cpath = NULL;
  uint64_t lens[4];
  pid_t pid;
  mbuf_init(&b);
  if (marshal_encode(L, cs, fi, n, &b, MARSHAL_REMOTE | MARSHAL_NOSHM, "spawn",
                     err, sizeof err) != 0) {
    mbuf_free(&b);
    fd_close(rfd[0]);
    fd_close(rfd[1]);
    return luaL_error(L, "%s", err);
  }
  if (fd_pipe(jfd) != 0) {
    mbuf_free(&b);
    fd_close(rfd[0]);
    fd_close(rfd[1]);
    return luaL_error(L, "cannot start process: %s", strerror(errno));
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
  {
    /* dup2 of an fd onto itself clears its close-on-exec flag: the two
    ** pipe ends, and only they, cross the exec */
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t sa;
    sigset_t all, none;
    char *args[5];
    int e;
    args[0] = (char *)exe;
    args[1] = (char *)"--conc-child";
    args[2] = fdarg[0];
    args[3] = fdarg[1];
    args[4] = NULL;
    sigfillset(&all);
    sigemptyset(&none);
    if (atomic_load(&children_ignore_sigint)) sigaddset(&none, SIGINT);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, jfd[0], jfd[0]);
    posix_spawn_file_actions_adddup2(&fa, rfd[1], rfd[1]);
    posix_spawnattr_init(&sa);
    posix_spawnattr_setflags(&sa, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
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
  fd_close(jfd[0]);
  fd_close(rfd[1]);
  if (pid < 0) {
    int e = errno;
    fd_close(jfd[1]);
    fd_close(rfd[0]);
    mbuf_free(&b);
    free(path);
    free(cpath);
    return luaL_error(L, "cannot start process: %s", strerror(e));
  }
  w->pid = pid;
  marshal_key(key);
  lens[0] = (uint64_t)strlen(w->name);
  lens[1] = path ? strlen(path) : 0;
  lens[2] = cpath ? strlen(cpath) : 0;
  lens[3] = b.n;
  /* the child may die first: EPIPE is fine, the reaper reports it */
  if (fd_write_all(jfd[1], key, sizeof key) == 0 &&
      fd_write_all(jfd[1], &w->id, sizeof w->id) == 0 &&
      fd_write_all(jfd[1], lens, sizeof lens) == 0 &&
      fd_write_all(jfd[1], w->name, (size_t)lens[0]) == 0 &&
      (!lens[1] || fd_write_all(jfd[1], path, (size_t)lens[1]) == 0) &&
      (!lens[2] || fd_write_all(jfd[1], cpath, (size_t)lens[2]) == 0))
    fd_write_all(jfd[1], b.p, b.n);
  fd_close(jfd[1]);
  mbuf_free(&b);
  free(path);
  free(cpath);
  return 0;
}

int process_spawn(lua_State *L) {
  cstate *cs = conc_cs(L);
  const char *name = NULL, *start = "fork", *exe = NULL;
  int daemon = 0, fi = 1, n, rfd[2];
  char exebuf[512];
  worker *w;
  pid_t pid;
  if (lua_type(L, 1) == LUA_TTABLE) {
    spawn_options(L, "spawn_process", &name, &daemon, &start);
    fi = 2;
  }
  luaL_checktype(L, fi, LUA_TFUNCTION);
  if (strcmp(start, "fork") != 0 && strcmp(start, "spawn") != 0)
    return luaL_error(L, "bad option 'start' to 'spawn_process' ('fork' or "
                         "'spawn' expected, got '%s')", start);
  if (start[0] == 's' && (exe = conclua_exe(exebuf, sizeof exebuf)) == NULL)
    return luaL_error(L, "start = 'spawn' needs the conclua command: set "
                         "CONCLUA_EXE to its path");
  n = lua_gettop(L) - fi + 1;
  process_atfork_install();
  w = worker_new(cs->rt, WK_PROCESS, name, daemon);
  if (w == NULL) return luaL_error(L, "not enough memory");
  obj_push(L, cs, &w->obj);       /* the handle holds the reference */
  obj_release(&w->obj);
  if (fd_pipe(rfd) != 0)
    return luaL_error(L, "cannot start process: %s", strerror(errno));
  if (start[0] == 's') {
    spawn_exec(L, cs, w, fi, n, exe, rfd);
    pid = w->pid;
  } else {
    /* no other thread may buffer output between the flush and the fork;
    ** signals wait until the child has its own handlers */
    sigset_t all, old;
    sigfillset(&all);
    pthread_mutex_lock(&fork_mu);
    flockfile(stdout);
    flockfile(stderr);
    fflush(NULL);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = fork();
    funlockfile(stderr);
    funlockfile(stdout);
    if (pid == 0) {
      pthread_mutex_unlock(&fork_mu);
      fd_close(rfd[0]);
      child_run(L, cs, w, rfd[1], fi, n, &old);     /* does not return */
    }
    /* closed before the next fork: no sibling inherits the write end, so
    ** end of file on the pipe means this child is gone */
    fd_close(rfd[1]);
    pthread_mutex_unlock(&fork_mu);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
      int e = errno;
      fd_close(rfd[0]);
      return luaL_error(L, "cannot start process: %s", strerror(e));
    }
    w->pid = pid;
  }
  w->owner = conc_getpid();
  w->rfd = rfd[0];
  fd_set_nonblock(w->rfd, 1);
  w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (w->pidfd < 0) {
    int e = errno;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fd_close(w->rfd);
    w->rfd = -1;
    worker_finish(w, W_KILLED, NULL, strdup("process: cannot watch it"));
    return luaL_error(L, "cannot watch process: %s", strerror(e));
  }
  worker_register(w);
  return 1;
}

/* ------------------------------------------------------------ handle */

static worker *check_proc(lua_State *L, int arg) {
  worker *w = (worker *)obj_check(L, arg, K_PROCESS);
  if (w->owner != conc_getpid())
    luaL_error(L, "process %d is not a child of this process", (int)w->pid);
  return w;
}

static int proc_join(lua_State *L) {
  cstate *cs = conc_cs(L);
  worker *w = check_proc(L, 1);
  deadline d;
  deadline_in(&d, -1);
  worker_wait(L, cs, w, &d);
  return worker_push_outcome(L, cs, w);
}

static int proc_wait(lua_State *L) {
  cstate *cs = conc_cs(L);
  worker *w = check_proc(L, 1);
  deadline d;
  deadline_in(&d, conc_opttimeout(L, 2));
  lua_pushboolean(L, worker_wait(L, cs, w, &d));
  return 1;
}

static int proc_status(lua_State *L) {
  worker *w = check_proc(L, 1);
  lua_pushstring(L, worker_statusname(worker_status(w)));
  return 1;
}

static int proc_alive(lua_State *L) {
  worker *w = check_proc(L, 1);
  lua_pushboolean(L, worker_status(w) == W_RUNNING);
  return 1;
}

static int signal_arg(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return SIGTERM;
  if (lua_type(L, arg) == LUA_TNUMBER) {
    lua_Integer s = luaL_checkinteger(L, arg);
    luaL_argcheck(L, s >= 0 && s < NSIG, arg, "invalid signal number");
    return (int)s;
  } else {
    const char *name = luaL_checkstring(L, arg);
    char up[32];
    size_t i;
    for (i = 0; name[i] && i < sizeof up - 1; i++)
      up[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 32 : name[i]);
    up[i] = '\0';
    name = strncmp(up, "SIG", 3) == 0 ? up + 3 : up;
    for (int s = 1; s < NSIG; s++) {
      const char *a = sigabbrev_np(s);
      if (a && strcmp(a, name) == 0) return s;
    }
    return luaL_argerror(L, arg,
                         lua_pushfstring(L, "unknown signal '%s'", lua_tostring(L, arg)));
  }
}

/* kill([signal]): true if sent, false if the process was already reaped. */
static int proc_kill(lua_State *L) {
  worker *w = check_proc(L, 1);
  int sig = signal_arg(L, 2), r = 0, e = 0;
  pthread_mutex_lock(&w->mu);
  if (!w->reaped) {              /* the pid is still ours: no reuse race */
    r = kill(w->pid, sig) == 0;
    if (!r) e = errno;
  }
  pthread_mutex_unlock(&w->mu);
  if (!r && e && e != ESRCH)
    return luaL_error(L, "cannot signal process %d: %s", (int)w->pid,
                      strerror(e));
  lua_pushboolean(L, r);
  return 1;
}

static int proc_exitcode(lua_State *L) {
  worker *w = check_proc(L, 1);
  if (worker_status(w) == W_RUNNING) lua_pushnil(L);
  else lua_pushinteger(L, w->exitcode);
  return 1;
}

static int proc_index(lua_State *L) {
  worker *w = (worker *)obj_check(L, 1, K_PROCESS);
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "pid") == 0) lua_pushinteger(L, w->pid);
  else if (k && strcmp(k, "name") == 0) lua_pushstring(L, w->name);
  else if (k && strcmp(k, "id") == 0) lua_pushinteger(L, w->id);
  else lua_pushnil(L);
  return 1;
}

static int proc_tostring(lua_State *L) {
  worker *w = (worker *)obj_check(L, 1, K_PROCESS);
  lua_pushfstring(L, "<process %d \"%s\" %s>", (int)w->pid, w->name,
                  worker_statusname(worker_status(w)));
  return 1;
}

static const luaL_Reg proc_methods[] = {
    {"join", proc_join},     {"wait", proc_wait},
    {"status", proc_status}, {"alive", proc_alive},
    {"kill", proc_kill},     {"exitcode", proc_exitcode},
    {NULL, NULL}};

const kindinfo process_kind = {
    "conc.process", "process", 0, 1, worker_destroy, proc_methods, proc_index,
    proc_tostring, proc_sel_try, worker_sel_delist, proc_sel_fds, NULL};

/* ------------------------------------------------------------ exit */

/* Daemon children get SIGTERM when the parent leaves; then a moment to
** go before SIGKILL, and the reaper reaps them. */
void process_stop_daemons(rt *r) {
  worker **v = NULL;
  int n = 0, cap = 0;
  pthread_mutex_lock(&r->mu);
  for (worker *w = r->head; w; w = w->next) {
    if (w->obj.kind != K_PROCESS || !w->daemon || w->owner != conc_getpid())
      continue;
    if (n == cap) {
      worker **nv = realloc(v, sizeof *v * (size_t)(cap = cap ? cap * 2 : 8));
      if (nv == NULL) break;
      v = nv;
    }
    obj_retain(&w->obj);
    v[n++] = w;
  }
  pthread_mutex_unlock(&r->mu);
  for (int i = 0; i < n; i++) {
    pthread_mutex_lock(&v[i]->mu);
    if (!v[i]->reaped) kill(v[i]->pid, SIGTERM);
    pthread_mutex_unlock(&v[i]->mu);
  }
  for (int i = 0; i < n; i++) {
    deadline d;
    parker p;
    const char *why;
    park_init(&p);
    deadline_in(&d, 1.0);
    if (process_wait(NULL, &p, v[i], &d, &why) != 1) {
      pthread_mutex_lock(&v[i]->mu);
      if (!v[i]->reaped) kill(v[i]->pid, SIGKILL);
      pthread_mutex_unlock(&v[i]->mu);
      deadline_in(&d, -1);
      process_wait(NULL, &p, v[i], &d, &why);
    }
    park_destroy(&p);
    obj_release(&v[i]->obj);
  }
  free(v);
}

/* ------------------------------------------------------------ spawned */

/* The child side of start = "spawn": conclua --conc-child JOBFD RESFD. */
int process_child_main(int argc, char **argv) {
  int jfd, rfd, n;
  unsigned char key[16];
  int64_t id;
  uint64_t lens[4];
  char *name = NULL, *path = NULL, *cpath = NULL, *payload = NULL;
  lua_State *L;
  cstate *cs;
  rt *r;
  worker *w;
  char err[256];
  if (argc < 4) return 2;
  jfd = atoi(argv[2]);
  rfd = atoi(argv[3]);
  fcntl(jfd, F_SETFD, FD_CLOEXEC);
  fcntl(rfd, F_SETFD, FD_CLOEXEC);
  if (fd_read_full(jfd, key, sizeof key) != sizeof key ||
      fd_read_full(jfd, &id, sizeof id) != sizeof id ||
      fd_read_full(jfd, lens, sizeof lens) != sizeof lens ||
      lens[0] > 4096 || lens[1] > 65536 || lens[2] > 65536)
    return 3;
  name = calloc(1, (size_t)lens[0] + 1);
  path = calloc(1, (size_t)lens[1] + 1);
  cpath = calloc(1, (size_t)lens[2] + 1);
  payload = malloc(lens[3] ? (size_t)lens[3] : 1);
  if (!name || !path || !cpath || !payload) return 3;
  if (fd_read_full(jfd, name, (size_t)lens[0]) != (ssize_t)lens[0] ||
      fd_read_full(jfd, path, (size_t)lens[1]) != (ssize_t)lens[1] ||
      fd_read_full(jfd, cpath, (size_t)lens[2]) != (ssize_t)lens[2] ||
      fd_read_full(jfd, payload, (size_t)lens[3]) != (ssize_t)lens[3])
    return 3;
  fd_close(jfd);
  marshal_setkey(key);
  L = luaL_newstate();
  if (L == NULL) return 3;
  luaL_openlibs(L);
  conclua_open(L);
  cs = cs_of(L);
  r = cs->rt;
  w = worker_new(r, WK_PROCESS, name, 0);
  if (w == NULL) return 3;
  w->id = id;
  if (lens[1]) {
    lua_getglobal(L, "package");
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, cpath);
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
  }
  n = marshal_decode(L, cs, payload, (size_t)lens[3], NULL, 0, MARSHAL_REMOTE,
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
  child_run(L, cs, w, rfd, lua_gettop(L) - n + 1, n, NULL);
  return 0;
}
