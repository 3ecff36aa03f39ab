/*
** internal.h
** Declarations shared by the files of vm/; none of this is exported from
** libconclua (everything is built with -fvisibility=hidden, and only
** conclua.h marks symbols default).
**
** Lock order, outermost first (a thread never takes an earlier lock while
** holding a later one):
**   fork lock (process.c) > runtime list lock (rt->mu) > object locks
**   (chan->mu, worker->mu, pool lock) > cstate->mu.
** Object locks are leaves among themselves: no code holds two at once,
** except the fork, which takes them all in registry order while no other
** runtime lock can be taken (objreg_lockall). A shared table's slock
** (shtab.c) is held for copies only, and takes only the table of shm
** objects (sync.c's tab_mu) inside; it lives in shared memory, so a fork
** needs no care for it: its holder releases it in every process.
*/

#ifndef conc_internal_h
#define conc_internal_h

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "conclua.h"

#define CONC_UNUSED(x) ((void)(x))
/* Thread-local, and readable from a signal handler (no lazy allocation). */
#define CONC_TLS __thread __attribute__((tls_model("initial-exec")))

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define CONC_SANITIZED 1
#endif

/* ------------------------------------------------------------ fdio.c */

/* Every fd the runtime makes has O_CLOEXEC. Reads and writes retry on
** EINTR and on short counts. */
int fd_pipe(int fds[2]);                       /* 0, or -1 and errno */
int fd_socketpair(int fds[2]);                 /* SOCK_STREAM, 0 or -1 */
int fd_write_all(int fd, const void *p, size_t n);   /* 0, or -1 + errno */
/* Reads exactly n bytes: returns n, fewer at end of file, -1 on error. */
ssize_t fd_read_full(int fd, void *p, size_t n);
/* Reads exactly n bytes into a buffer it allocates (*out, to free): 0, or
** -1 (end of file first, an error, or no memory). It never allocates much
** more than what arrived, whatever n claims. */
int fd_read_alloc(int fd, size_t n, char **out);
int fd_set_nonblock(int fd, int on);
void fd_close(int fd);                         /* keeps errno */
int fd_count(void);                            /* open fds of the process */

/* ------------------------------------------------------------ wait.c */

double conc_now(void);                 /* CLOCK_MONOTONIC, seconds */

/* An absolute CLOCK_MONOTONIC deadline, or none (wait forever). */
typedef struct deadline {
  int forever;
  struct timespec at;
} deadline;

void deadline_in(deadline *d, double seconds);   /* seconds < 0: forever */
/* These take NULL for no deadline. */
int deadline_passed(const deadline *d);
double deadline_left(const deadline *d);         /* seconds, >= 0 */
/* Reads an optional timeout argument: nil/none -> -1 (forever); a
** non-negative number (math.huge: forever); anything else raises. */
double conc_opttimeout(lua_State *L, int arg);

/* Futexes. 'shared' selects a process-shared futex (for words in
** MAP_SHARED memory). futex_wait returns 0 when woken (maybe spuriously),
** ETIMEDOUT at the deadline, EAGAIN if *w != v, EINTR on a signal. */
int futex_wait(_Atomic uint32_t *w, uint32_t v, const deadline *d, int shared);
void futex_wake(_Atomic uint32_t *w, int n, int shared);

/* A parker: what one OS thread sleeps on inside a blocking conc call.
** A waiter reads park_seq, checks its condition, then park_sleep(seen);
** any waker that changed the condition before calling park_wake makes
** park_sleep return. park_wake is async-signal-safe. */
typedef struct parker {
  _Atomic uint32_t seq;
  _Atomic int efd;          /* an eventfd for park_poll, made lazily */
  _Atomic int polling;      /* the owner sleeps in park_poll */
  _Atomic int wakers;       /* sel_deliver calls still touching it */
  _Atomic int sleeping;     /* the owner is in (or entering) futex_wait */
} parker;

/* Spins (adaptively, and only with two CPUs or more) until ready(arg);
** 1 if it became ready. 'budget' is the caller's, per object. */
int conc_spin(_Atomic uint32_t *budget, int (*ready)(void *), void *arg);

/* An adaptive (spin, then sleep) mutex for short critical sections. */
void conc_mutex_init(pthread_mutex_t *mu);

void park_init(parker *p);
void park_destroy(parker *p);
uint32_t park_seq(parker *p);
int park_sleep(parker *p, uint32_t seen, const deadline *d); /* 0/ETIMEDOUT */
void park_wake(parker *p);
/* Sleeps in poll() on fds plus the parker: returns poll's result (0 on
** timeout), -1 with errno on error. 'seen' as for park_sleep. The array
** must have room for nfds + 1 entries: the parker's eventfd goes last. */
struct pollfd;
int park_poll(parker *p, uint32_t seen, struct pollfd *fds, int nfds,
              const deadline *d);

/* ------------------------------------------------------------ objects */

/* The kinds of runtime objects that Lua handles refer to. */
enum {
  K_CHANNEL, K_THREAD, K_PROCESS, K_LOCK, K_SEMAPHORE, K_EVENT,
  K_BARRIER, K_SHARED, K_PIPE, K_QUEUE, K_FUTURE, K_PARCEL, K_POOL,
  K_NKINDS
};

/* The header of every refcounted runtime object. 'refs' counts the Lua
** handles, messages and workers that hold it. */
typedef struct cobj {
  _Atomic int refs;
  int kind;
  uint64_t uid;           /* unique in the process tree (see obj_newuid) */
} cobj;

struct cstate;
struct selnode;
struct msg;

/* What each kind provides. Unused entries are NULL. */
typedef struct kindinfo {
  const char *tname;      /* metatable name: "conc.channel" */
  const char *name;       /* short name: "channel" */
  int shm;                /* lives in MAP_SHARED memory: crosses fork */
  int local;              /* meaningful in this process only */
  void (*destroy)(cobj *o);
  const luaL_Reg *methods;
  int (*index)(lua_State *L);      /* __index for fields, or NULL */
  int (*tostring)(lua_State *L);
  /* conc.select: take a ready value without blocking, or enlist 'n' to be
  ** told; see select.c for the protocol. */
  int (*sel_try)(cobj *o, struct selnode *n);
  void (*sel_delist)(cobj *o, struct selnode *n);
  /* fds to poll for it (0 to 2 of them, in fds) instead of enlisting */
  int (*sel_fds)(cobj *o, int fds[2]);
  /* adds to the kind's metatable (on top of the stack), or NULL */
  void (*meta)(lua_State *L, struct cstate *cs);
} kindinfo;

extern const kindinfo *conc_kinds[K_NKINDS];

void obj_init(cobj *o, int kind);
void obj_retain(cobj *o);
void obj_release(cobj *o);
uint64_t obj_newuid(void);

/* Pushes a handle for 'o' (taking one more reference); the same object
** pushed twice in one state gives the same userdata. */
void obj_push(lua_State *L, struct cstate *cs, cobj *o);
/* The object behind argument 'arg' of kind 'kind', or raises
** "bad argument #arg to 'f' (conc.channel expected, got ...)". */
cobj *obj_check(lua_State *L, int arg, int kind);
/* The object behind any conc handle at idx, or NULL. */
cobj *obj_test(lua_State *L, struct cstate *cs, int idx);
void obj_newmetatable(lua_State *L, struct cstate *cs, int kind);
/* A pinned object (of a kind that means nothing outside the process that
** made it: object.c's table) of another process, a forked child's copy
** of its parent's: 1, with "channel 3" (kind and id) in buf. */
int obj_foreign(const cobj *o, char *buf, size_t n);
/* Raises "<name> <id> belongs to another process" if o is foreign. */
void obj_checkhome(lua_State *L, cobj *o);

/* Fork safety of process-local objects: every object whose lock must not
** be held across fork registers here. */
/* A lock for the hottest short sections (a channel's): spins longer than
** a pthread mutex before it sleeps, and wakes only when someone sleeps
** (wait.c). 0 free, 1 held, 2 held with sleepers. */
typedef struct cmutex {
  _Atomic uint32_t v;
} cmutex;
void cmutex_init(cmutex *m);
void cmutex_lock(cmutex *m);
void cmutex_unlock(cmutex *m);

typedef struct objlink {
  struct objlink *prev, *next;
  pthread_mutex_t *mu;         /* the object's lock: one or the other */
  cmutex *cm;
} objlink;
void objreg_add(objlink *l, pthread_mutex_t *mu);
void objreg_add_cm(objlink *l, cmutex *cm);
void objreg_remove(objlink *l);
void objreg_lockall(void);        /* before fork */
void objreg_unlockall(int child); /* after fork, in parent and child */

/* ------------------------------------------------------------ marshal.c */

/* A growing byte buffer plus the references to runtime objects that the
** bytes name by index. Owned by one thread. */
typedef struct mbuf {
  char *p;
  size_t n, cap;
  cobj **refs;
  int nrefs, refcap;
} mbuf;

/* A sealed message: what travels through a channel or to a thread. */
typedef struct msg {
  struct msg *next;       /* for the owner's lists */
  size_t n;
  int nrefs;
  cobj **refs;
  char *data;             /* points into 'inl' or to a separate block */
  int owndata;            /* data is a block of its own */
  _Alignas(void *) char inl[];  /* refs first: pointer-aligned */
} msg;

enum {
  MARSHAL_REMOTE = 1,     /* for another process: no local object refs */
  MARSHAL_NOSHM = 2,      /* for an unrelated process: no objects at all */
  MARSHAL_RANK = 4        /* with NOSHM: for another MPI rank (the words) */
};

void mbuf_init(mbuf *b);
void mbuf_free(mbuf *b);          /* releases the refs it holds */
void mbuf_reset(mbuf *b);         /* ditto, keeps the memory */
int mbuf_reserve(mbuf *b, size_t extra);   /* room for extra more: 0, -1 */
int mbuf_addref(mbuf *b, cobj *o);         /* retains o; its index, or -1 */

/* Encodes the 'n' values at L[first..first+n-1]. 'root' names them for
** errors: "args" gives args[1], args[2]...; "fn" names a single value.
** Returns 0, or -1 with an error message in 'err' and 'b' reset; out of
** memory, the message is "not enough memory" (raise it with msg_raise).
** Never raises; b stays the caller's. */
int marshal_encode(lua_State *L, struct cstate *cs, int first, int n,
                   mbuf *b, int flags, const char *root,
                   char *err, size_t errsz);
/* Decodes a buffer made by marshal_encode, pushing its values. Returns
** how many, or -1 with a message in err (nothing pushed). Safe against
** any bytes. 'refs' must be the buffer's refs (local) or NULL (remote). */
int marshal_decode(lua_State *L, struct cstate *cs, const char *p, size_t n,
                   cobj **refs, int nrefs, int flags, char *err, size_t errsz);
int marshal_format(void);         /* the format's version */
/* conc._mpiapi (mpiapi.c): the core functions conc.mpi calls. */
int conc_mpiapi_get(lua_State *L);
/* A message holding a copy of n bytes (no references), or NULL. */
msg *msg_alloc(size_t n);
msg *msg_copy(const void *p, size_t n);
/* A copy of m holding its own references; NULL on out of memory. */
msg *msg_dup(const msg *m);
/* A message with room for n bytes and nrefs references (m->refs), not
** filled yet: m->nrefs is 0 until the caller stored them. */
msg *msg_new(size_t n, int nrefs);
/* If the n bytes at p are a message of one number: 1 integer (in *i),
** 2 float (in *f); else 0. */
int marshal_tonumber(const char *p, size_t n, lua_Integer *i, lua_Number *f);
/* Writes a message of one number, MARSHAL_NUMLEN bytes; its last 8 are
** the number's. */
#define MARSHAL_NUMLEN 12
void marshal_number(char out[MARSHAL_NUMLEN], int isint, lua_Integer i,
                    lua_Number f);
/* Seals b into a message (b is left empty); NULL on out of memory. */
msg *msg_seal(mbuf *b);
void msg_free(msg *m);
/* Decodes m into L and frees it; on failure raises with the message
** (m is freed either way). Returns the number of values pushed. */
int msg_push(lua_State *L, struct cstate *cs, msg *m);
int msg_push_flags(lua_State *L, struct cstate *cs, msg *m, int flags);
void msg_free_pending(struct cstate *cs);
/* Encodes n values into a message, raising a Lua error on failure. */
msg *msg_encode(lua_State *L, struct cstate *cs, int first, int n,
                const char *root);
/* Raises Lua's own out-of-memory error message, "not enough memory", with
** no position in front (luaL_error would add the caller's). */
int conc_nomem(lua_State *L);
/* Raises a message of marshal_encode or marshal_decode: out of memory as
** conc_nomem does, anything else like luaL_error. */
int msg_raise(lua_State *L, const char *err);

/* The keyed hash that guards bytecode; the key is per process tree. */
void marshal_key(unsigned char key[16]);
void marshal_setkey(const unsigned char key[16]);
uint64_t siphash24(const unsigned char key[16], const void *p, size_t n);
uint64_t marshal_mac(const void *p, size_t n);   /* keyed by marshal_key */

/* Registry key of a state's map from standard library tables to their
** names (string, math...): those cross by name. */
extern const char conc_libskey;

/* Names of the C functions that may cross: standard libraries and conc
** (names.c). */
typedef struct cfname {
  lua_CFunction f;
  const char *name;
  int isconc;                /* 1: a conc function (needs the cstate) */
  int closure;               /* 1: a standard closure, fetch it by name */
} cfname;
const cfname *cfunc_find(const char *name);
const char *cfunc_name(lua_CFunction f, int *isconc);
lua_CFunction cfunc_lookup(const char *name, size_t len, int *isconc);

/* ------------------------------------------------------------ runtime.c */

/* Package paths a worker inherits, shared by the workers of a runtime. */
typedef struct paths {
  _Atomic int refs;
  char *path, *cpath;          /* NULL: the state's own default */
} paths;

typedef struct hookent {
  conclua_hook fn;
  void *ud;
} hookent;

/* One runtime per host state (and per conclua command). Workers of the
** runtime hold references to it, so it outlives its host state while
** they run. */
typedef struct rt {
  _Atomic int refs;
  pthread_mutex_t mu;          /* guards everything below */
  struct worker *head;         /* registered workers, newest first */
  hookent *hooks;
  int nhooks, hookcap;
  int hooks_running;           /* hooks being called right now */
  pid_t pid;                   /* the process the list belongs to */
  int closed;                  /* the host state is gone */
  int exited;                  /* the exit handler took care of it */
  int stopped;                 /* a Ctrl-C stopped its workers (exit.c) */
  int sigint_exit;             /* ... and the run ends with status 130 */
  paths *paths;                /* the last paths handed to a worker */
  objlink link;
  struct rt *allnext;          /* the process's list of runtimes */
} rt;

/* Per-state context: every conc C function of a state gets it as upvalue
** 1. For a worker it lives as long as the worker's state. */
typedef struct cstate {
  rt *rt;
  struct worker *self;         /* NULL in a host or main state */
  lua_State *L;
  parker park;
  pthread_mutex_t mu;          /* guards blocked_word against cancellers */
  _Atomic(_Atomic uint32_t *) blocked_word;  /* shm futex slept on */
  int blocked_shared;
  _Atomic int interrupt;       /* Ctrl-C: set by a signal handler */
  const char *_Atomic waiting_on;  /* what the state blocks on, or NULL */
  mbuf scratch;                /* encode buffer, owned by the state */
  msg *pending;                /* messages being decoded (msg_push) */
  int lazy;                    /* standard libraries not opened yet */
  paths *paths;                /* package paths, applied when opened */
  const void *mt[K_NKINDS];    /* metatables of handle kinds, or NULL */
  int ishost;                  /* a host or main state (cstate in a box) */
  int gone;                    /* its box was finalized: calls raise */
  int ctrlc_uncaught;          /* a host's Ctrl-C raised "interrupted!" in
                                  a conc wait and nothing caught it yet */
  int light;                   /* conc functions are light C functions and
                                  the cstate is in the state's extra space
                                  (worker states: no closure to pay for) */
} cstate;

#define CS_UPVAL lua_upvalueindex(1)

/* The cstate of the running conc C function: upvalue 1 in a host state,
** the extra space of the state in a worker state (light functions have
** no upvalue: lua_touserdata gives NULL). */
static inline cstate *conc_cs(lua_State *L) {
  cstate *cs = (cstate *)lua_touserdata(L, CS_UPVAL);
  if (cs == NULL) return *(cstate **)lua_getextraspace(L);
  if (cs->gone) luaL_error(L, "conc: the runtime of this state is closed");
  return cs;
}
_Static_assert(LUA_EXTRASPACE >= sizeof(void *), "no room for the cstate");

rt *rt_new(void);
void rt_retain(rt *r);
void rt_release(rt *r);
int64_t rt_nextid(void);

cstate *cs_new(rt *r, struct worker *self);
void cs_free(cstate *cs);
void cs_init(cstate *cs, rt *r, struct worker *self);   /* cs in place */
void cs_fini(cstate *cs);
/* The shared copy of these paths (a reference to release), or NULL. */
paths *paths_get(rt *r, const char *path, const char *cpath);
void paths_release(paths *p);
/* Registers funcs with the cstate as their only upvalue (or as light
** functions in a light state). */
const char *conc_errmsg(lua_State *L, int idx);
void cs_setfuncs(lua_State *L, cstate *cs, const luaL_Reg *l);
void cs_pushfunc(lua_State *L, cstate *cs, lua_CFunction f);
/* The cstate of a state made by conclua_open, or NULL. */
cstate *cs_of(lua_State *L);
/* The stop request pending for the state: "cancelled" for a cancelled
** worker, "interrupted!" after Ctrl-C; NULL when none. */
const char *cs_stopreason(cstate *cs);
/* Raises the stop request (clearing an interrupt); only call when
** cs_stopreason returned non-NULL, with no lock held. */
int cs_raisestop(lua_State *L, cstate *cs, const char *why);
/* Publishes what the state blocks on, for conc.workers(). */
void cs_waiting(cstate *cs, const char *what);
/* Around a sleep on a shm futex word: lets a canceller wake it. */
void cs_block_on(cstate *cs, _Atomic uint32_t *word, int shared);
void cs_unblock(cstate *cs);
/* Wakes the state's thread out of any conc wait. */
void cs_wake(cstate *cs);
/* Opens the standard libraries of a lazy worker state now. */
void cs_materialize(lua_State *L, cstate *cs);

/* A state made for a worker, with its own small-block allocator
** (alloc.c); close it with state_close. */
lua_State *state_new(void);
void state_close(lua_State *L);
void state_bind(lua_State *L, cstate *cs);
/* Runs the runtime's hooks in L, a new worker state; raises the error of
** a hook that raised (call it under lua_pcall). */
void state_run_hooks(lua_State *L, cstate *cs);
/* The host state of r closes: clears the hooks and waits for those that
** run. */
void rt_close_hooks(rt *r);

/* The interrupt target of the process (REPL and scripts): the SIGINT
** handler sets its flag, wakes it and sets a hook on its running state. */
void conc_interrupt_target(cstate *cs);
/* cs goes away: it stops being the interrupt target if it was. */
void conc_interrupt_forget(cstate *cs);
void conc_interrupt_install(int on);         /* calls nest */
void conc_interrupt_rearm(void);      /* armed again after a first Ctrl-C */
/* Takes a pending Ctrl-C of cs (1 if there was one) and the hook it set. */
int conc_interrupt_take(cstate *cs);
/* The interrupt target if it is r's and runs on this thread, else NULL. */
cstate *conc_interrupt_for(rt *r);
/* How many Ctrl-C the handler has seen so far. */
unsigned conc_interrupt_count(void);
/* A catcher (pcall, resume) in L caught an error. */
void cs_caught(lua_State *L);

/* ------------------------------------------------------------ worker.c */

enum { W_RUNNING, W_DONE, W_FAILED, W_CANCELLED, W_KILLED };
enum { WK_THREAD, WK_PROCESS };

/* A spawned thread or process, as seen by its runtime and handles. */
typedef struct worker {
  cobj obj;                    /* K_THREAD or K_PROCESS */
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
  const char *proc_waiting;    /* process: unused */
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

worker *worker_new(rt *r, int kind, const char *name, int daemon);
void worker_destroy(cobj *o);
void worker_register(worker *w);
void worker_unregister(worker *w);
/* Marks the end (status, result/error owned by the worker now) and wakes
** every waiter. */
void worker_finish(worker *w, int status, msg *result, char *errmsg);
/* Waits until the worker finished or the deadline passed; 1 finished, 0
** timeout, or raises the stop request of cs. */
int worker_wait(lua_State *L, cstate *cs, worker *w, const deadline *d);
int worker_status(worker *w);
int worker_wait_end(parker *p, cstate *cs, worker *w, const deadline *d,
                    const char **why, int watched);
const char *worker_statusname(int st);
int worker_push_outcome(lua_State *L, cstate *cs, worker *w);
/* Waits for the non-daemon workers of r and prints the unjoined failures
** (daemons' too); 'self' (may be NULL) is skipped. Returns how many of
** the failures printed were not daemons'. rt_waitall_cs stops waiting
** when cs (may be NULL) is asked to stop. */
int rt_waitall(rt *r, worker *self);
int rt_waitall_cs(rt *r, worker *self, cstate *cs);
/* The wait at exit, which a Ctrl-C turns into a stop (exit.c): 2 when
** this call decided that the run ends with status 130, 1 when an earlier
** one did, 0 otherwise. */
int rt_exit_wait(rt *r, cstate *cs, int interrupted, const char *prog);
/* Called by rt_exit_wait before it waits (unless a Ctrl-C ended the main
** chunk): set by pool.c when a pool is made, it closes the pools of r and
** has the exit wait for their managers to finish their queued work. */
extern void (*rt_exit_hook)(rt *r);
/* The exit waits for w from now on, as for a worker that is not a daemon
** (a pool's manager with work to finish). */
void worker_await(worker *w);
/* How many workers the exit waits for, listed in buf (if not NULL). */
int rt_awaited(rt *r, char *buf, size_t n);
int worker_isfailure(int status);
void rt_forget_workers(rt *r);
worker **rt_pick(rt *r, int (*pick)(worker *w), int *n);
/* Prints the failures of r's workers that nobody joined or reported yet
** (stderr), marks them reported; returns how many. */
int rt_report_failures(rt *r);
/* Every open runtime of the process: wait, then stop daemons (atexit). */
void rt_exit_all(void);
void rt_shutdown(rt *r);
int worker_sel_try(cobj *o, struct selnode *n);
void worker_sel_delist(cobj *o, struct selnode *n);
void worker_list(lua_State *L, cstate *cs);

/* ------------------------------------------------------------ thread.c */

int thread_spawn(lua_State *L);                /* spawn_thread */
void thread_cancel_install(void);
int thread_cancel(worker *w);
/* Coroutine functions that keep the cancellation hook on the running
** coroutine, and pcall and xpcall that put it back after a catch. */
int thread_co_resume(lua_State *L);
int thread_co_wrap(lua_State *L);
int thread_pcall(lua_State *L);
int thread_xpcall(lua_State *L);
/* Raises "cancelled" in L, a state of the calling (cancelled) worker. */
int thread_raise_cancel(lua_State *L);
void thread_set_current(lua_State *L);
worker *thread_current_worker(void);
lua_State *thread_get_current(void);
void threadpool_atfork_child(void);
int threadpool_idle(void);              /* idle OS threads in the pool */
extern const kindinfo thread_kind;

/* ------------------------------------------------------------ process.c */

int process_spawn(lua_State *L);               /* spawn_process */
/* Waits for a child to end (draining its result, reaping it) on parker
** p; cs, if not NULL, can stop it. 1 ended, 0 deadline, -1 stop (*why). */
int process_wait(cstate *cs, parker *p, worker *w, const deadline *d,
                 const char **why);
/* Checks, without blocking, whether a child ended; 1 if it did. */
int process_poll(worker *w);
void pipe_handle_made(cobj *o, struct cstate *cs);
int process_signal(worker *w, int sig);
/* The last Lua handle of a process is gone (the reaper takes over). */
void process_handle_gone(worker *w);
/* SIGTERM to the daemon children of r, then SIGKILL after a second. */
void process_stop_daemons(rt *r);
extern const char *conc_self_exe;
int process_reaper_running(void);
extern const kindinfo process_kind;
void process_atfork_install(void);
pid_t conc_getpid(void);                       /* cached; right after fork */
uint32_t conc_gettid(void);                    /* cached too */
int process_child_main(int argc, char **argv); /* start = "spawn" child */
/* Children spawned from now on ignore SIGINT (the interactive REPL). */
void process_ignore_sigint(int on);

/* The frame a child process sends back (child.c writes, reap.c reads). */
typedef struct frame {
  uint32_t magic;
  uint32_t status;             /* 0 returned, 1 raised */
  uint64_t msglen;             /* error message bytes that follow */
  uint64_t len;                /* marshal payload bytes after that */
} frame;
#define FRAME_MAGIC 0x636f6e63u

/* child.c */
void child_run(lua_State *L, cstate *cs, worker *w, int fd, int first, int n,
               const sigset_t *mask);
const char *conclua_exe(char *buf, size_t n);
int spawn_exec(lua_State *L, cstate *cs, worker *w, int fi, int n,
               const char *exe, int rfd[2], int lfd, int lkept);

/* lifeline.c: a child dies with its parent, however the parent ends. */
void lifeline_init(void);                /* once, before the first fork */
int lifeline_make(void);                 /* 0, or -1 and errno */
/* A read end for one child to arm, or -1 and errno (ENOENT, EACCES: no
** /proc, the child goes unguarded). Hand it back with lifeline_given
** once the child has it (pid; -1 if no child was made). */
int lifeline_take(int *kept);
void lifeline_given(int fd, int kept, pid_t pid);
void lifeline_ended(pid_t pid);          /* a child was reaped */
/* A child (pid self) arms the read end made for it. */
void lifeline_arm(int fd, pid_t self);
/* In the child (self) of any fork; 'mine' is the read end made for a
** spawn_process child, else -1. */
void lifeline_atfork_child(int mine, pid_t self);

/* reap.c */
void reap_init(void);
void reap_atfork_child(void);
int proc_sel_try(cobj *o, struct selnode *n);
int proc_sel_fds(cobj *o, int fds[2]);

/* ------------------------------------------------------------ select.c */

/* What a node got: a value, closed, done (select gives true), taken (a
** sender's value went), or ready (select gives the item itself). */
enum { SEL_NONE, SEL_VALUE, SEL_CLOSED, SEL_DONE, SEL_TAKEN, SEL_SELF };

/* Small messages travel inline (no malloc): up to this many bytes. */
#define SEL_INLINE 48

/* One waiter's registration with one object (see select.c). Several
** nodes of one conc.select share a selwait; the first object to claim it
** wins. */
typedef struct selwait {
  parker *park;
  _Atomic int won;           /* 0, or the winning node's index + 1 */
} selwait;

typedef struct selnode {
  struct selnode *prev, *next;
  selwait *sw;
  int index;
  int linked;
  _Atomic int result;        /* SEL_* delivered, or SEL_CLOSED */
  int flags;                 /* the object's own bookkeeping */
  msg *m;                    /* value handed over (read it only after the
                                node is delisted, under the object's lock),
                                or offered by a blocked sender */
  uint32_t inln;             /* or, when m is NULL, a small value inline */
  char inl[SEL_INLINE];
} selnode;

/* Pushes the value a select node received (freeing it); the count. */
int sel_push_value(lua_State *L, struct cstate *cs, msg *m, const char *inl,
                   uint32_t n);
int sel_push(lua_State *L, struct cstate *cs, selnode *n);

int sel_claim(selwait *sw, int index);
/* Sets n's result and wakes its waiter, which may then go on without
** taking the object's lock again: its parker is held meanwhile. Read the
** node's fields (n->m...) only before. */
void sel_deliver(selnode *n, int result);
void selq_push(struct selnode **head, selnode *n);
void selq_remove(struct selnode **head, selnode *n);
/* Claims and wakes every node of q with 'result' (SEL_DONE, SEL_SELF),
** under the lock that guards q. */
void selq_wake_all(struct selnode **q, int result);
int conc_select(lua_State *L);

/* ------------------------------------------------------------ pools */

/* parcel.c: packed values (kit.pack, kit.unpack). */
extern const luaL_Reg parcel_funcs[];
/* A new message holding a copy of the packed values at idx (a string or
** a parcel); raises on a bad argument or out of memory. */
msg *parcel_tomsg(lua_State *L, int idx);

/* future.c */
cobj *future_make(void);                 /* a pending future, or NULL */
/* Settles f with value (taken over; may be NULL) and wakes its waiters;
** 0 if it was settled already. */
int future_settle(cobj *f, int ok, msg *value);
int future_new(lua_State *L);            /* kit.future */
extern const luaL_Reg future_funcs[];    /* kit.future, settle, settled... */
lua_Integer future_id(cobj *f);

/* pool.c */
int pool_kit(lua_State *L);              /* conc._poolkit */
lua_Integer pool_id(cobj *p);

/* ------------------------------------------------------------ modules */

extern const kindinfo channel_kind, lock_kind, semaphore_kind, event_kind,
    barrier_kind, shared_kind, pipe_kind, queue_kind, future_kind,
    parcel_kind, pool_kind;

int chan_new(lua_State *L);
/* Channels fed from C with no Lua state (conc.mpi, see mpiapi.c): an
** unbounded channel (one reference, the caller's; NULL out of memory);
** chan_put hands m over without waiting (0; -1 closed or out of memory,
** m freed either way); chan_shut is close(). */
cobj *chan_make(void);
int chan_put(cobj *o, msg *m);
void chan_shut(cobj *o);
size_t chan_count(cobj *o);
void chan_move(cobj *from, cobj *to);   /* what is queued, in order */
int sync_lock(lua_State *L);
int sync_semaphore(lua_State *L);
int sync_event(lua_State *L);
int sync_barrier(lua_State *L);
int shared_new(lua_State *L);
extern _Atomic int conc_shared_recoveries;     /* for conc._stats */
int pipe_new(lua_State *L);
int queue_new(lua_State *L);

/* Objects whose state lives in shared memory, so it crosses fork: the
** local record, its page, and its place in the table by uid (sync.c). */
typedef struct shmobj {
  cobj obj;
  void *shm;
  size_t size;
  struct shmobj *next;
} shmobj;
int shmobj_init(shmobj *o, int kind, size_t size);   /* 0, or -1 + errno */
void shmobj_destroy(shmobj *o);

/* Owner ids (owner.c): a thread of the process tree, for records in
** shared memory of who holds what. 0 is nobody; OWNER_ANON is a thread
** that could get no id (more than 131072 live ones), never taken for
** dead. owner_init makes the arena of ids: call it before making a shared
** object (0, or -1 and errno). owner_self is the calling thread's id;
** owner_dead(id) is 1 once that thread has ended (returned, killed,
** exited, exec'ed), whether or not its process was reaped. Both are a
** few atomic operations, no system call. */
#define OWNER_ANON UINT64_MAX
int owner_init(void);
uint64_t owner_self(void);
int owner_dead(uint64_t id);

/* A lock in shared memory that survives the death of its owner: the
** word holds the owner's id (owner.c), 0 when free (sync.c). */
typedef struct slock {
  _Atomic uint64_t word;
  _Atomic uint32_t seq;        /* waiters sleep here */
  _Atomic uint32_t nwait;
} slock;
int slock_try(slock *s);
/* For short sections, with no cancellation: waits as long as it takes.
** Returns 1 if it took the lock over from an owner that died holding it
** (what the lock guards may be half changed: the caller repairs it), 0
** otherwise. */
int slock_lock(slock *s);
void slock_unlock(slock *s);
int slock_owner_dead(slock *s); /* frees the lock of a dead owner; 1 if so */

/* Bumps a shared sequence word and wakes n of its sleepers. */
void bump(_Atomic uint32_t *seq, _Atomic uint32_t *nwait, int n);
/* Sleeps on a shared seq word until ready(state, arg): 1 ready, 0 at the
** deadline, -1 on a stop request of cs (*why). 'idle', if any, runs
** after each quiet fraction of a second (e.g. to check for dead owners). */
typedef int (*ready_fn)(void *state, void *arg);
int sync_wait(cstate *cs, _Atomic uint32_t *seq, _Atomic uint32_t *nwait,
              const deadline *d, ready_fn ready, ready_fn idle, void *state,
              void *arg, const char **why);

/* Raises unless the argument at 'arg' is absent, nil, or a table whose
** keys are all among 'known' (NULL-terminated; NULL: no option at all):
** "bad argument #1 to 'lock' (unknown option 'reentrant')" (sync.c). */
void conc_checkoptions(lua_State *L, int arg, const char *const *known);

/* ------------------------------------------------------------ shmheap.c */

/* A heap of buddy blocks in one MAP_SHARED mapping (see shmheap.c): the
** mapping is a page for the owner's header, holding this record, then
** 2^order bytes. Blocks are offsets from the mapping's start, 0 none.
** The caller locks. */
#define SHHEAP_MINORDER 5
#define SHHEAP_ORDERS 48
#define SHHEAP_QORDERS 5       /* orders 5..9 keep freed blocks for reuse */
#define SHHEAP_QUICK 16        /* that many of each */
typedef struct shheap {
  uint32_t order, pad;
  uint64_t top;                /* below: carved into blocks; above: untouched */
  uint64_t used;               /* bytes in used blocks */
  uint64_t freed;              /* bytes freed since pages were given back */
  uint64_t free[SHHEAP_ORDERS];  /* free lists, by order */
  uint32_t nquick[SHHEAP_QORDERS];
  uint64_t quick[SHHEAP_QORDERS][SHHEAP_QUICK];   /* freed, kept used */
} shheap;
size_t shheap_mapsize(unsigned order);          /* the mapping for it */
void shheap_init(shheap *hp, char *base, unsigned order);
size_t shheap_max(const shheap *hp);           /* the biggest block */
/* A block of n bytes or more (its offset), or 0 when there is no room. */
uint64_t shheap_alloc(shheap *hp, char *base, size_t n);
void shheap_free(shheap *hp, char *base, uint64_t p);
size_t shheap_size(char *base, uint64_t p);    /* what the block holds */
/* Whether p can be a used block of this heap. */
int shheap_valid(const shheap *hp, char *base, uint64_t p);
/* Makes the free lists again from the n live blocks (any order); sets
** live[i] to 0 for one that is no block or overlaps another. 0, or -1
** out of memory (nothing changed). */
int shheap_rebuild(shheap *hp, char *base, uint64_t *live, size_t n);

/* Shared memory for objects that cross fork (sync.c). */
void *shm_alloc(size_t size);
void shm_free(void *p, size_t size);
/* The shm object with this uid mapped in this process, with a reference
** taken, or NULL. */
cobj *shm_lookup(uint64_t uid);

/* The stdlib: Lua sources built into the library (generated). */
typedef struct stdlib_mod {
  const char *name;
  const char *src;
  size_t len;
} stdlib_mod;
extern const stdlib_mod conc_stdlib[];

/* init.c */
extern const luaL_Reg conc_funcs[];            /* the conc table */
int conc_print(lua_State *L);                  /* print, a line at once */
int conc_spawn_thread(lua_State *L);           /* the globals */
int conc_spawn_process(lua_State *L);
/* Gives a state opened by luaL_openlibs everything conc adds: the conc
** table (global and package.loaded.conc), spawn_thread, spawn_process,
** the stdlib searcher, the coroutine functions, the library map. */
void conc_install(lua_State *L, cstate *cs);
void state_make_lazy(lua_State *L, cstate *cs);
/* spawn_thread's and spawn_process's options table at index 1. */
void spawn_options(lua_State *L, const char *fname, const char **name,
                   int *daemon, const char **start);

#endif
