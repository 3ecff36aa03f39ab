/*
** workers.h
** The workers layer: spawned threads and processes. What both are to
** their runtime and handles (worker.c), threads (thread.c) and the pool
** of OS threads they run on (threadpool.c), processes (process.c), the
** child's side (child.c), the watcher of children (reap.c), the wait and
** the Ctrl-C at exit (exit.c). It uses the values layer and those below.
*/

#ifndef conc_workers_h
#define conc_workers_h

#include "values.h"

/* ------------------------------------------------------------ worker.c */

enum { W_RUNNING, W_DONE, W_FAILED, W_CANCELLED, W_KILLED };

struct worker;

/* What a kind of worker does in its own way; thread.c and process.c fill
** one in each, so that worker.c, exit.c, select.c and the REPL need not
** tell them apart. */
typedef struct workerops {
  int kind;                    /* K_THREAD, K_PROCESS */
  const char *name;            /* "thread", "process" */
  /* Waits for its end on p; cs (may be NULL) can stop the wait: 1 ended,
  ** 0 at the deadline, -1 on a stop request (*why). */
  int (*wait)(parker *p, struct cstate *cs, struct worker *w,
              const deadline *d, const char **why);
  /* Looks, without blocking, whether it ended (reaping a process): 1 if
  ** it did; NULL when its status says it. */
  int (*poll)(struct worker *w);
  /* Asks it to stop: a thread's cancel, a process's SIGTERM; 1 if asked. */
  int (*stop)(struct worker *w);
  /* The number that names it in messages: a thread's id, a process's pid. */
  lua_Integer (*number)(struct worker *w);
  const char *numfield;        /* that number's field on handles: "id", "pid" */
  const char *notmine;         /* the error for a handle of another process */
} workerops;

/* A spawned thread or process, as seen by its runtime and handles. */
typedef struct worker {
  cobj obj;                    /* K_THREAD or K_PROCESS */
  const workerops *ops;
  rt *rt;
  int64_t id;
  char *name;
  int daemon;
  pthread_mutex_t mu;          /* guards the fields below */
  objlink link;                /* in the fork registry while it runs */
  _Atomic int status;          /* written under mu, read without */
  int joined;                  /* a join has seen the failure */
  int reported;                /* the exit report printed it */
  int stopped;                 /* a Ctrl-C stopped it: no failure report */
  int registered;              /* on rt's list */
  struct selnode *waiters;     /* select nodes waiting for the end */
  msg *result;                 /* results (done) or error value (failed) */
  char *errmsg;                /* "message\ntraceback" when failed */
  _Atomic int cancel;
  cstate *cs;                  /* a running thread's state */
  pthread_t tid;               /* the OS thread while running */
  int hastid;
  struct worker *prev, *next;  /* rt list */
  /* processes */
  pid_t pid;
  int pidfd, rfd;
  int exitcode;                /* status, or -signal */
  int reaped;
  int busy;                    /* a thread watches the child (reap.c) */
  int contended;               /* another thread found it busy meanwhile */
  _Atomic int handles;         /* Lua handles of a process */
  mbuf inbuf;                  /* result bytes read so far */
  int nomem;                   /* they did not fit in memory (reap.c) */
  pid_t owner;                 /* the process that spawned it */
} worker;

worker *conc_worker_new(rt *r, const workerops *ops, const char *name,
                        int daemon);
/* The methods every worker handle has, for the kinds' tables, and its
** fields (id, name and the ops' number) and tostring. */
int conc_worker_join(lua_State *L);
int conc_worker_wait_m(lua_State *L);
int conc_worker_status_m(lua_State *L);
int conc_worker_alive(lua_State *L);
int conc_worker_index(lua_State *L);
int conc_worker_tostring(lua_State *L);

void conc_worker_destroy(cobj *o);
void conc_worker_register(worker *w);
void conc_worker_unregister(worker *w);
/* Marks the end (status, result/error owned by the worker now) and wakes
** every waiter. */
void conc_worker_finish(worker *w, int status, msg *result, char *errmsg);
/* deadlock.c: whether the runtime of cs, its main state, is deadlocked
** (then 1, the message in cs->deadmsg); init.c registers it with the
** core as conc_deadlock_check. */
int conc_deadlock_find(cstate *cs);
/* A trace's instant on the track of cs: "spawn thread 3" (verb, w). */
void conc_worker_trace(cstate *cs, const char *verb, worker *w);
/* Waits until the worker finished or the deadline passed; 1 finished, 0
** timeout, or raises the stop request of cs. */
int conc_worker_wait(lua_State *L, cstate *cs, worker *w, const deadline *d);
int conc_worker_status(worker *w);
int conc_worker_wait_end(parker *p, cstate *cs, worker *w, const deadline *d,
                    const char **why, int watched);
const char *conc_worker_statusname(int st);
int conc_worker_push_outcome(lua_State *L, cstate *cs, worker *w);
/* The exit waits for w from now on, as for a worker that is not a daemon
** (a pool's manager with work to finish). */
void conc_worker_await(worker *w);
int conc_worker_isfailure(int status);
void conc_rt_forget_workers(rt *r);
worker **conc_rt_pick(rt *r, int (*pick)(worker *w), int *n);
int conc_worker_sel_try(cobj *o, struct selnode *n);
void conc_worker_sel_delist(cobj *o, struct selnode *n);
void conc_worker_list(lua_State *L, cstate *cs);

/* ------------------------------------------------------------ thread.c */

int conc_thread_spawn(lua_State *L);                /* spawn_thread */
void conc_thread_cancel_install(void);
int conc_thread_cancel(worker *w);
/* Coroutine functions that keep the cancellation hook on the running
** coroutine, and pcall and xpcall that put it back after a catch. */
int conc_thread_co_resume(lua_State *L);
int conc_thread_co_wrap(lua_State *L);
int conc_thread_pcall(lua_State *L);
int conc_thread_xpcall(lua_State *L);
worker *conc_thread_current_worker(void);
paths *conc_thread_paths(lua_State *L);
int conc_thread_launch(rt *r, const char *name, msg *m, paths *p);
/* spawn_thread's and spawn_process's options table at index 1. */
void conc_spawn_options(lua_State *L, const char *fname, const char **name,
                        int *daemon, const char **start);
extern const kindinfo conc_thread_kind;
extern const workerops conc_thread_ops;

/* ------------------------------------------------------------ threadpool.c */

/* A task for an OS thread of the pool. run gets a fresh worker state
** (NULL when none could be made) and owns it; the task may be freed by
** run. L is the pool's own. */
typedef struct conc_task {
  void (*run)(struct conc_task *t, lua_State *L);
  lua_State *L;
} conc_task;
/* Runs t on an idle OS thread of the pool or a new one: 0, or an errno
** (t was not run). */
int conc_threadpool_start(conc_task *t);
int conc_threadpool_idle(void);              /* idle OS threads in the pool */

/* ------------------------------------------------------------ process.c */

int conc_process_spawn(lua_State *L);               /* spawn_process */
int conc_process_signal(worker *w, int sig);
/* SIGTERM to the daemon children of r, then SIGKILL after a second. */
void conc_process_stop_daemons(rt *r);
extern const char *conc_self_exe;
extern const kindinfo conc_process_kind;
extern const workerops conc_process_ops;
void conc_process_atfork_install(void);

/* ------------------------------------------------------------ child.c */

/* What a child process sends back on its result pipe, once, as it ends
** (child.c writes it, reap.c reads it): this header, then msglen bytes
** of error message ("message\ntraceback"), then len bytes of marshal's
** remote form: the results, or the error value. */
typedef struct reply {
  uint32_t magic;              /* REPLY_MAGIC */
  uint32_t status;             /* 0 returned, 1 raised */
  uint64_t msglen;
  uint64_t len;
} reply;
#define REPLY_MAGIC 0x636f6e63u

/* What a start = "spawn" child reads from its job pipe (child.c writes
** and reads it): this header, then lens[0] bytes of name, lens[1] of
** package.path and lens[2] of package.cpath (0: the default), then
** lens[3] bytes of marshal's remote form of fn and its arguments. */
typedef struct spawnjob {
  unsigned char key[16];       /* the process tree's bytecode key */
  int64_t id;                  /* the worker's id in the parent */
  uint64_t lens[4];
} spawnjob;

void conc_child_run(lua_State *L, cstate *cs, worker *w, int fd, int first,
                    int n, const sigset_t *mask);
/* The conclua command's path (for start = "spawn"), or NULL. */
const char *conc_exe_path(char *buf, size_t n);
int conc_spawn_exec(lua_State *L, cstate *cs, worker *w, int fi, int n,
                    const char *exe, int rfd[2], int lfd, int lkept);
/* The main of a start = "spawn" child; 'open' opens conc in its state
** (conclua_open: the command layer passes it). */
int conc_process_child_main(int argc, char **argv, int (*open)(lua_State *L));
/* Children spawned from now on ignore SIGINT (the interactive REPL). */
void conc_process_ignore_sigint(int on);

/* ------------------------------------------------------------ reap.c */

void conc_reap_init(void);
/* Waits for a child to end (draining its result, reaping it) on parker
** p; cs, if not NULL, can stop it. 1 ended, 0 deadline, -1 stop (*why). */
int conc_process_wait(parker *p, cstate *cs, worker *w, const deadline *d,
                      const char **why);
/* Checks, without blocking, whether a child ended; 1 if it did. */
int conc_process_poll(worker *w);
/* The last Lua handle of a process is gone (the reaper takes over). */
void conc_process_handle_gone(cobj *o);
int conc_process_reaper_running(void);
int conc_proc_sel_try(cobj *o, struct selnode *n);
int conc_proc_sel_fds(cobj *o, int fds[2]);

/* ------------------------------------------------------------ exit.c */

/* Waits for the non-daemon workers of r and prints the unjoined failures
** (daemons' too); 'self' (may be NULL) is skipped. Returns how many of
** the failures printed were not daemons'. conc_rt_waitall_cs stops
** waiting when cs (may be NULL) is asked to stop. */
int conc_rt_waitall(rt *r, worker *self);
int conc_rt_waitall_cs(rt *r, worker *self, cstate *cs);
/* The wait at exit, which a Ctrl-C turns into a stop: 2 when this call
** decided that the run ends with status 130, 1 when an earlier one did,
** 0 otherwise. */
int conc_rt_exit_wait(rt *r, cstate *cs, int interrupted, const char *prog);
/* Called by conc_rt_exit_wait before it waits (unless a Ctrl-C ended the
** main chunk): set by pool.c when a pool is made, it closes the pools of
** r and has the exit wait for their managers to finish their queued
** work. */
extern void (*conc_rt_exit_hook)(rt *r);
/* How many workers the exit waits for, listed in buf (if not NULL). */
int conc_rt_awaited(rt *r, char *buf, size_t n);
/* Prints the failures of r's workers that nobody joined or reported yet
** (stderr), marks them reported; returns how many. */
int conc_rt_report_failures(rt *r);
void conc_rt_shutdown(rt *r);
/* At exit: every runtime still open waits, then stops its daemons. */
void conc_rt_exit_all(void);

#endif
