/*
** process.c
** spawn_process: workers in forked (or freshly executed) child processes;
** process handles; fork safety.
**
** DESIGN. The parent makes a result pipe, flushes stdio (holding the
** stdout and stderr locks, so no other thread buffers output meanwhile),
** blocks signals, and forks with every runtime lock held (fork.c's
** handlers), so the child, which has only the forking thread,
** inherits no lock that some other thread holds. The child's side is in
** child.c: it runs fn, writes one reply to the pipe and _exits. The write
** end is closed in the parent before the next fork can start, so no
** sibling inherits it. Watching the child, draining its answer, reaping
** it is reap.c's; the record then ends like a thread's, so processes look
** like threads to joins, selects and the wait at exit.
** start = "spawn" executes a fresh conclua instead (child.c). Either way
** the child hangs on the parent's lifeline (lifeline.c), which kills it
** when the parent process ends, however it ends.
** A process with one thread skips those locks: no other thread can hold
** one or print meanwhile, and each lock written is a page the parent
** then copies on write while the child lives (a fault that costs tens of
** microseconds on a virtual machine).
*/

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/single_threaded.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workers.h"

const char *conc_self_exe;     /* set by the conclua command's main */

/* At exit (also after os.exit): wait for the non-daemon workers of every
** runtime still open, then stop the daemons (fork.c closes forks then). */
static void install_once(void) {
  unsigned char key[16];
  /* the bytecode key is per process tree: make it before the first fork,
  ** or parent and child would each draw their own and reject each
  ** other's functions */
  conc_marshal_key(key);
  conc_reap_init();
  conc_lifeline_init();
  conc_lifeline_make();   /* now, not at the first spawn: fds stay put */
  conc_fork_install(conc_rt_exit_all);
}

void conc_process_atfork_install(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, install_once);
}

/* A spawn_process that comes after the exit handlers. In a worker
** thread, or in the thread that runs exit (a host's own exit handler
** closing a state whose finalizer spawns), it fails: a host's handler
** may still wait for the workers, and a thread cannot wait for its own
** exit. The main or a host thread, while another thread ends the
** process, waits for the end (a cancellation point like any wait): an
** error there would end it, and its process, a second time. */
static int spawn_too_late(lua_State *L, cstate *cs) {
  const char *why;
  if (cs->self || conc_fork_exiting())
    return luaL_error(L, "cannot start process: the process is exiting");
  conc_cs_waiting(cs, "exit");
  for (;;) {
    uint32_t seen = conc_park_seq(&cs->park);
    if ((why = conc_cs_stopreason(cs)) != NULL) break;
    conc_park_sleep(&cs->park, seen, NULL);
  }
  conc_cs_waiting(cs, NULL);
  return conc_cs_raisestop(L, cs, why);
}

int conc_process_spawn(lua_State *L) {
  cstate *cs = conc_cs(L);
  const char *name = NULL, *start = "fork", *exe = NULL;
  int spawn;                           /* start = "spawn": exec a conclua */
  int daemon = 0, fi = 1, n, rfd[2], lfd, lkept;
  char exebuf[512];
  worker *w;
  pid_t pid;
  if (lua_type(L, 1) == LUA_TTABLE) {
    conc_spawn_options(L, "spawn_process", &name, &daemon, &start);
    fi = 2;
  }
  luaL_checktype(L, fi, LUA_TFUNCTION);
  if (strcmp(start, "fork") != 0 && strcmp(start, "spawn") != 0)
    return luaL_error(L, "bad option 'start' to 'spawn_process' ('fork' or "
                         "'spawn' expected, got '%s')", start);
  spawn = strcmp(start, "spawn") == 0;
  if (spawn && (exe = conc_exe_path(exebuf, sizeof exebuf)) == NULL)
    return luaL_error(L, "start = 'spawn' needs the conclua command: set "
                         "CONCLUA_EXE to its path");
  n = lua_gettop(L) - fi + 1;
  conc_process_atfork_install();
  w = conc_worker_new(cs->rt, &conc_process_ops, name, daemon);
  if (w == NULL) return conc_nomem(L);
  conc_obj_push(L, cs, &w->obj);       /* the handle holds the reference */
  conc_obj_release(&w->obj);
  if (conc_fd_pipe(rfd) != 0)
    return luaL_error(L, "cannot start process: %s", strerror(errno));
  /* no /proc: the child goes unguarded; any other failure is the fds' */
  if ((lfd = conc_lifeline_take(&lkept)) < 0 && errno != ENOENT &&
      errno != EACCES) {
    int e = errno;
    conc_fd_close(rfd[0]);
    conc_fd_close(rfd[1]);
    return luaL_error(L, "cannot start process: %s", strerror(e));
  }
  if (spawn) {
    conc_spawn_exec(L, cs, w, fi, n, exe, rfd, lfd, lkept);
    pid = w->pid;
  } else {
    /* no other thread may buffer output between the flush and the fork;
    ** signals wait until the child has its own handlers */
    sigset_t all, old;
    int alone = __libc_single_threaded;
    sigfillset(&all);
    if (conc_fork_lock(alone) < 0) {
      conc_fd_close(rfd[0]);
      conc_fd_close(rfd[1]);
      conc_lifeline_given(lfd, lkept, -1);
      return spawn_too_late(L, cs);
    }
    if (!alone) {
      flockfile(stdout);
      flockfile(stderr);
    }
    fflush(NULL);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = conc_fork_spawn(lfd);
    if (!alone) {
      funlockfile(stderr);
      funlockfile(stdout);
    }
    if (pid == 0) {
      conc_fork_unlock(alone);
      conc_fd_close(rfd[0]);
      conc_child_run(L, cs, w, rfd[1], fi, n, &old);     /* does not return */
    }
    /* the parent's copy of the write end goes at once; a sibling that
    ** another thread forked since the pipe was made may hold one too,
    ** which is why the child's end is learned from its pidfd, not from
    ** end of file on the pipe */
    conc_fd_close(rfd[1]);
    conc_lifeline_given(lfd, lkept, pid);   /* the child arms its copy */
    conc_fork_unlock(alone);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
      int e = errno;
      conc_fd_close(rfd[0]);
      return luaL_error(L, "cannot start process: %s", strerror(e));
    }
    w->pid = pid;
  }
  w->owner = conc_getpid();
  w->rfd = rfd[0];
  conc_fd_set_nonblock(w->rfd, 1);
  w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (w->pidfd < 0) {
    int e = errno;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    conc_lifeline_ended(pid);
    conc_fd_close(w->rfd);
    w->rfd = -1;
    conc_worker_finish(w, W_KILLED, NULL, strdup("process: cannot watch it"));
    return luaL_error(L, "cannot watch process: %s", strerror(e));
  }
  conc_worker_register(w);
  if (conc_trace_on) conc_worker_trace(cs, "spawn", w);
  return 1;
}

/* ------------------------------------------------------------ handle */

static worker *check_proc(lua_State *L, int arg) {
  worker *w = (worker *)conc_obj_check(L, arg, K_PROCESS);
  if (w->owner != conc_getpid())
    luaL_error(L, conc_process_ops.notmine, (LUAI_UACINT)w->pid);
  return w;
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
    return luaL_argerror(
        L, arg,
        lua_pushfstring(L, "unknown signal '%s'", lua_tostring(L, arg)));
  }
}

/* Signals the child unless it was reaped (its pid may be another's by
** then): 1 sent, 0 reaped already, minus errno if kill failed. */
int conc_process_signal(worker *w, int sig) {
  int r = 0;
  pthread_mutex_lock(&w->mu);
  if (!w->reaped && w->pid > 0) r = kill(w->pid, sig) == 0 ? 1 : -errno;
  pthread_mutex_unlock(&w->mu);
  return r;
}

/* kill([signal]): true if sent, false if the process was already reaped. */
static int proc_kill(lua_State *L) {
  worker *w = check_proc(L, 1);
  int r = conc_process_signal(w, signal_arg(L, 2));
  if (conc_trace_on && r > 0) conc_worker_trace(conc_cs(L), "kill", w);
  if (r < 0 && r != -ESRCH)
    return luaL_error(L, "cannot signal process %d: %s", (int)w->pid,
                      strerror(-r));
  lua_pushboolean(L, r > 0);
  return 1;
}

static int proc_exitcode(lua_State *L) {
  worker *w = check_proc(L, 1);
  if (!conc_process_poll(w)) lua_pushnil(L);
  else lua_pushinteger(L, w->exitcode);
  return 1;
}

static const luaL_Reg proc_methods[] = {
    {"join", conc_worker_join},     {"wait", conc_worker_wait_m},
    {"status", conc_worker_status_m}, {"alive", conc_worker_alive},
    {"kill", proc_kill},            {"exitcode", proc_exitcode},
    {NULL, NULL}};

static lua_Integer process_number(worker *w) {
  return (lua_Integer)w->pid;
}

static int process_stop(worker *w) {
  return conc_process_signal(w, SIGTERM) > 0;
}

const workerops conc_process_ops = {
    .kind = K_PROCESS,
    .name = "process",
    .wait = conc_process_wait,
    .poll = conc_process_poll,
    .stop = process_stop,
    .number = process_number,
    .numfield = "pid",
    .notmine = "process %I is not a child of this process"};

static lua_Integer process_id(cobj *o) {
  return (lua_Integer)((worker *)o)->pid;
}

static void process_handle_made(cobj *o, cstate *cs) {
  CONC_UNUSED(cs);
  atomic_fetch_add(&((worker *)o)->handles, 1);
}

const kindinfo conc_process_kind = {
    .kind = K_PROCESS,
    .tname = "conc.process",
    .name = "process",
    .local = 1,
    .destroy = conc_worker_destroy,
    .methods = proc_methods,
    .index = conc_worker_index,
    .fields = (const char *const[]){"pid", "name", NULL},
    .tostring = conc_worker_tostring,
    .sel_try = conc_proc_sel_try,
    .sel_delist = conc_worker_sel_delist,
    .sel_fds = conc_proc_sel_fds,
    .pinned = 1,
    .id = process_id,
    .handle_made = process_handle_made,
    .handle_gone = conc_process_handle_gone};

/* ------------------------------------------------------------ exit */

/* Daemon children get SIGTERM when the parent leaves; then a moment to
** go before SIGKILL, and the reaper reaps them. */
static int own_daemon_process(worker *w) {
  return w->obj.kind == K_PROCESS && w->daemon && w->owner == conc_getpid();
}

void conc_process_stop_daemons(rt *r) {
  int n;
  worker **v = conc_rt_pick(r, own_daemon_process, &n);
  deadline d;
  for (int i = 0; i < n; i++) conc_process_signal(v[i], SIGTERM);
  conc_deadline_in(&d, 1.0);               /* one second for them all */
  for (int i = 0; i < n; i++) {
    parker p;
    const char *why;
    conc_park_init(&p);
    if (conc_process_wait(&p, NULL, v[i], &d, &why) != 1) {
      deadline forever;
      conc_process_signal(v[i], SIGKILL);
      conc_deadline_in(&forever, -1);
      conc_process_wait(&p, NULL, v[i], &forever, &why);
    }
    conc_park_destroy(&p);
    conc_obj_release(&v[i]->obj);
  }
  free(v);
}

