/*
** core.h
** The core layer: runtime objects and their handles (object.c), message
** buffers (msg.c), runtimes and per-state contexts (runtime.c), wait
** queues and the claim protocol of waiters (waitq.c), objects in shared
** memory and their locks and sleeps (shm.c). It uses only the os layer.
**
** Lock order, outermost first (a thread never takes an earlier lock while
** holding a later one):
**   fork lock (fork.c) > runtime list lock (rt->mu) > object locks
**   (chan->mu, worker->mu, pool lock) > cstate->mu.
** Object locks are leaves among themselves: no code holds two at once,
** except the fork, which takes them all in registry order while no other
** runtime lock can be taken (fork.c). A shared table's slock (shtab.c) is
** held for copies only, and takes only the table of shm objects (shm.c's
** tab_mu) inside; it lives in shared memory, so a fork needs no care for
** it: its holder releases it in every process.
*/

#ifndef conc_core_h
#define conc_core_h

#include "conclua.h"
#include "os.h"

/* ------------------------------------------------------------ object.c */

/* The kinds of runtime objects that Lua handles refer to. */
enum {
  K_CHANNEL, K_THREAD, K_PROCESS, K_LOCK, K_SEMAPHORE, K_EVENT,
  K_BARRIER, K_SHARED, K_PIPE, K_QUEUE, K_FUTURE, K_PARCEL, K_POOL,
  K_RLOCK, K_CONDITION, K_TIMER,
  K_NKINDS
};

/* The header of every refcounted runtime object. 'refs' counts the Lua
** handles, messages and workers that hold it. */
typedef struct cobj {
  _Atomic int refs;
  int kind;
  uint64_t uid;           /* unique in the process tree (see conc_obj_newuid) */
} cobj;

struct cstate;
struct selnode;
struct msg;

/* What each kind provides. Unused entries are NULL. */
typedef struct kindinfo {
  int kind;               /* K_CHANNEL... */
  const char *tname;      /* metatable name: "conc.channel" */
  const char *name;       /* short name: "channel" */
  int shm;                /* lives in MAP_SHARED memory: crosses fork */
  int local;              /* meaningful in this process only */
  /* pinned to the process that made it: a forked child's copy raises
  ** "<name> <id> belongs to another process" (object.c) */
  int pinned;
  lua_Integer (*id)(cobj *o);      /* that id, or NULL: the creation number */
  /* a Lua handle of it was made in cs, or the last one went (or NULL) */
  void (*handle_made)(cobj *o, struct cstate *cs);
  void (*handle_gone)(cobj *o);
  void (*destroy)(cobj *o);
  const luaL_Reg *methods;
  int (*index)(lua_State *L);      /* __index for fields, or NULL */
  const char *const *fields;       /* their names (the REPL completes them) */
  int (*tostring)(lua_State *L);
  /* conc.select: take a ready value without blocking, or enlist 'n' to be
  ** told; see waitq.c for the protocol. */
  int (*sel_try)(cobj *o, struct selnode *n);
  void (*sel_delist)(cobj *o, struct selnode *n);
  /* a look without a lock, or NULL: nonzero if sel_try would likely take
  ** a value now, 0 if it would likely enlist (a hint: sel_try decides).
  ** A kind that has it never enlists a node its sel_try returns 1 for,
  ** and keeps nothing to undo for it: select does not delist that node */
  int (*sel_ready)(cobj *o);
  /* fds to poll for it (0 to 2 of them, in fds) instead of enlisting */
  int (*sel_fds)(cobj *o, int fds[2]);
  /* adds to the kind's metatable (on top of the stack), or NULL */
  void (*meta)(lua_State *L, struct cstate *cs);
} kindinfo;

/* The kinds, registered by init.c before any object is made. */
extern const kindinfo *conc_kinds[K_NKINDS];
void conc_obj_addkind(const kindinfo *k);

void conc_obj_init(cobj *o, int kind);
void conc_obj_retain(cobj *o);
void conc_obj_release(cobj *o);
uint64_t conc_obj_newuid(void);

/* Pushes a handle for 'o' (taking one more reference); the same object
** pushed twice in one state gives the same userdata. */
void conc_obj_push(lua_State *L, struct cstate *cs, cobj *o);
/* The object behind argument 'arg' of kind 'kind', or raises
** "bad argument #arg to 'f' (conc.channel expected, got ...)". */
cobj *conc_obj_check(lua_State *L, int arg, int kind);
/* The object behind any conc handle at idx, or NULL. */
cobj *conc_obj_test(lua_State *L, struct cstate *cs, int idx);
/* The same for item 'slot' (< CONC_OBJCACHE) of a list that is looked at
** again and again (conc.select's): a channel handle seen in that slot
** before is known by its address (a registry reference keeps it), with
** no metatable look. */
cobj *conc_obj_test_slot(lua_State *L, struct cstate *cs, int idx, int slot);
void conc_obj_newmetatable(lua_State *L, struct cstate *cs, int kind);
static inline uint32_t conc_obj_home(const cobj *o) {
  return (uint32_t)(o->uid >> 32);     /* the process that made it */
}
/* A pinned object (of a kind that means nothing outside the process that
** made it: object.c's table) of another process, a forked child's copy
** of its parent's: 1, with "channel 3" (kind and id) in buf. */
int conc_obj_foreign(const cobj *o, char *buf, size_t n);
/* The number that names o in messages: its kind's id, or its creation
** number. */
lua_Integer conc_obj_number(const cobj *o);
/* Raises "<name> <id> belongs to another process" if o is foreign. */
void conc_obj_checkhome(lua_State *L, cobj *o);

/* ------------------------------------------------------------ msg.c */

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
  int owndata;            /* MSG_INLINE, MSG_OWN or MSG_LOAN */
  struct loan *loan;      /* MSG_LOAN's lender (not set otherwise) */
  _Alignas(void *) char inl[];  /* refs first: pointer-aligned */
} msg;

enum { MSG_INLINE, MSG_OWN, MSG_LOAN };

/* A big string handed over in one copy. A sender whose receiver is
** already waiting lends it the bytes of its Lua string (anchored on the
** sender's stack) in a message of kind MSG_LOAN, which holds no encoding:
** data and n are the string itself. The receiver builds its string from
** them, and pushing or freeing the message sets 'done' and wakes the
** sender, which waits for that (not interruptibly: it is one memcpy away)
** before its bytes may go. */
typedef struct loan {
  _Atomic int done;
  parker *park;           /* the lender's */
} loan;

#define CONC_LOAN_MIN (256 * 1024)   /* smaller strings are copied twice */

msg *conc_msg_lend(const char *p, size_t n, loan *ln, parker *park);
int conc_loan_done(void *ln);        /* a done for conc_wait_until */

void conc_mbuf_init(mbuf *b);
void conc_mbuf_free(mbuf *b);          /* releases the refs it holds */
void conc_mbuf_reset(mbuf *b);         /* ditto, keeps the memory */
int conc_mbuf_reserve(mbuf *b, size_t extra);   /* room for extra more: 0, -1 */
int conc_mbuf_addref(mbuf *b, cobj *o); /* retains o; its index, or -1 */

/* A message holding a copy of n bytes (no references), or NULL. */
msg *conc_msg_alloc(size_t n);
msg *conc_msg_copy(const void *p, size_t n);
/* A copy of m holding its own references; NULL on out of memory. */
msg *conc_msg_dup(const msg *m);
/* A message with room for n bytes and nrefs references (m->refs), not
** filled yet: m->nrefs is 0 until the caller stored them. */
msg *conc_msg_new(size_t n, int nrefs);
/* Seals b into a message (b is left empty); NULL on out of memory. */
msg *conc_msg_seal(mbuf *b);
void conc_msg_free(msg *m);
void conc_msg_free_pending(struct cstate *cs);
/* Raises Lua's own out-of-memory error message, "not enough memory", with
** no position in front (luaL_error would add the caller's). */
int conc_nomem(lua_State *L);
/* What conc_marshal_encode and conc_marshal_decode return when memory
** ran out (the message then says so too). */
#define CONC_ENOMEM (-2)
#define CONC_OBJCACHE 8          /* conc_obj_test_slot's slots */
/* Raises a failure of conc_marshal_encode or conc_marshal_decode (its
** return code and message): out of memory as conc_nomem does, anything
** else like luaL_error. */
int conc_msg_raise(lua_State *L, int code, const char *err);

/* The keyed hash that guards bytecode; the key is per process tree. */
void conc_marshal_key(unsigned char key[16]);
void conc_marshal_setkey(const unsigned char key[16]);
uint64_t conc_siphash24(const unsigned char key[16], const void *p, size_t n);
uint64_t conc_marshal_mac(const void *p,
                          size_t n); /* keyed by conc_marshal_key */

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
  struct msg *luahooks;        /* conc.on_worker's functions, by next */
  pid_t pid;                   /* the process the list belongs to */
  int closed;                  /* the host state is gone */
  int exited;                  /* the exit handler took care of it */
  int stopped;                 /* a Ctrl-C stopped its workers (exit.c) */
  int sigint_exit;             /* ... and the run ends with status 130 */
  paths *paths;                /* the last paths handed to a worker */
  /* deadlock detection (runtime.c): the states of the runtime alive in
  ** this process (its main state and its threads), how many of them are
  ** stuck (in a wait with no timeout that only this process's threads
  ** could end), a count of every change of the latter, the one of them
  ** the main state was last woken for, and the main state while stuck */
  _Atomic int nlive, nstuck;
  _Atomic unsigned stuck_epoch, poked_epoch;
  struct cstate *_Atomic main_stuck;
  _Atomic int main_users;      /* threads using main_stuck's state now */
  objlink link;
  struct rt *allnext;          /* the process's list of runtimes */
} rt;

/* Per-state context: every conc C function of a state gets it as upvalue
** 1. For a worker it lives as long as the worker's state. */
typedef struct cstate {
  rt *rt;
  struct worker *self;         /* NULL in a host or main state */
  _Atomic int *cancel;         /* the worker's cancel request, or NULL */
  lua_State *L;
  parker park;
  pthread_mutex_t mu;          /* guards blocked_word against cancellers */
  _Atomic(_Atomic uint32_t *) blocked_word;  /* shm futex slept on */
  int blocked_shared;
  _Atomic int interrupt;       /* Ctrl-C: set by a signal handler */
  const char *_Atomic waiting_on;  /* what the state blocks on, or NULL */
  /* the object it blocks on (conc_cs_waiting_obj): its kind, or -1, and
  ** number; wait_seq is odd while they change */
  _Atomic int wait_kind;
  _Atomic lua_Integer wait_num;
  _Atomic uint32_t wait_seq;
  int64_t trace_tid;           /* its track in a trace: a thread's id, or 0 */
  int ismain;                  /* the main state of its process */
  _Atomic int stuck;           /* counted in rt->nstuck (conc_cs_stuck) */
  /* while stuck, where it last went to sleep: the word and the value it
  ** saw there before it found its condition false (conc_cs_sleeps) */
  _Atomic(_Atomic uint32_t *) sleep_word;
  _Atomic uint32_t sleep_val;
  char *_Atomic deadmsg;        /* the deadlock it raises (malloc'd) */
  _Atomic int deadlocked;      /* a thread found it: raise deadmsg */
  mbuf scratch;                /* encode buffer, owned by the state */
  msg *pending;                /* messages being decoded (conc_msg_push) */
  int lazy;                    /* standard libraries not opened yet */
  paths *paths;                /* package paths, applied when opened */
  const void *mt[K_NKINDS];    /* metatables of handle kinds, or NULL */
  void *objcache[CONC_OBJCACHE];  /* conc_obj_test_slot's handles */
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

/* The Lua state this OS thread runs now (the running coroutine, for the
** signal handlers), and whether a cancel is unwinding it: the error is on
** its way up and no catcher outside the unwinding took it yet. */
extern CONC_TLS lua_State *volatile conc_tls_L;
extern CONC_TLS volatile sig_atomic_t conc_tls_unwinding;
/* What may wake a state later from outside every conc wait (a pending
** timer: timer.c counts them). While there is any, no wait is a deadlock
** (deadlock.c). */
extern _Atomic int conc_wakers;
/* Raises "cancelled" in L, a state of the calling (cancelled) worker. */
int conc_raise_cancel(lua_State *L);
/* Opens conc in a state (init.c's conc_install, which init.c sets here:
** the core does not know the modules). */
extern void (*conc_opener)(lua_State *L, struct cstate *cs);

rt *conc_rt_new(void);
/* A runtime the exit has not taken care of yet (open, of this process),
** marked as taken, with a reference; NULL when none is left. */
rt *conc_rt_take_unexited(void);
void conc_rt_retain(rt *r);
int conc_rt_count(void);          /* the open runtimes of this process */
void conc_rt_release(rt *r);
int64_t conc_rt_nextid(void);

cstate *conc_cs_new(rt *r, struct worker *self);
void conc_cs_free(cstate *cs);
void conc_cs_init(cstate *cs, rt *r, struct worker *self);   /* cs in place */
void conc_cs_fini(cstate *cs);
/* The shared copy of these paths (a reference to release), or NULL. */
paths *conc_paths_get(rt *r, const char *path, const char *cpath);
void conc_paths_release(paths *p);
/* Registers funcs with the cstate as their only upvalue (or as light
** functions in a light state). */
const char *conc_errmsg(lua_State *L, int idx);
void conc_cs_setfuncs(lua_State *L, cstate *cs, const luaL_Reg *l);
void conc_cs_pushfunc(lua_State *L, cstate *cs, lua_CFunction f);
/* Raises unless the argument at 'arg' is absent, nil, or a table whose
** keys are all among 'known' (NULL-terminated; NULL: no option at all):
** "bad argument #1 to 'lock' (unknown option 'reentrant')" (runtime.c). */
void conc_checkoptions(lua_State *L, int arg, const char *const *known);
/* Lua's Name (an identifier that is no reserved word): conc_isname for n
** bytes, conc_isname_z for a string (NULL: no); conc_isnamechar for one
** of its characters. For keys printed as t.key and completed. */
int conc_isname(const char *s, size_t n);
int conc_isname_z(const char *s);
int conc_isnamechar(int c);
extern const char *const conc_reserved[];   /* Lua's reserved words */
/* Registry key of a state's map from standard library tables to their
** names (string, math...): those cross by name. */
extern const char conc_libskey;
/* The cstate of a state made by conclua_open, or NULL. */
cstate *conc_cs_of(lua_State *L);
/* The stop request pending for the state: "cancelled" for a cancelled
** worker, "interrupted!" after Ctrl-C; NULL when none. */
const char *conc_cs_stopreason(cstate *cs);
/* The two stop reasons it returns, told apart by address; and a third
** that the waits themselves give (conc_cs_sleeps): a deadlock. */
extern const char conc_why_cancelled[], conc_why_interrupted[];
extern const char conc_why_deadlock[];
/* Deadlock detection. A wait with no timeout that only the threads of
** this process could end (a channel, a thread's join, a lock, a
** semaphore, an event or a barrier of a process that is no child) is
** 'stuck': conc_cs_stuck(cs, 1) before it, (cs, 0) after. Each time a
** stuck wait goes to sleep (after its condition was false) it calls
** conc_cs_sleeps with the word it sleeps on and the value it read there
** first. When the count of stuck states is full, the state that sleeps
** last checks (conc_deadlock_check, the workers layer's: it needs the
** list of workers); a deadlock found puts the message in the main
** state's deadmsg: conc_cs_sleeps returns 1 if cs is that state, else
** it marks the main state deadlocked and wakes it, and its wait's
** conc_cs_stopreason says conc_why_deadlock. */
void conc_cs_stuck(cstate *cs, int on);
/* A thread of r ended (after its end was seen): one live state less. */
void conc_rt_live_drop(rt *r);
int conc_cs_sleeps(cstate *cs, _Atomic uint32_t *word, uint32_t val);
extern int (*conc_deadlock_check)(cstate *cs);
/* This process is a child of a conclua process: its shared objects may be
** in its parent's and siblings' hands (no wait on one is stuck). */
extern int conc_is_child;
/* Raises the stop request (clearing an interrupt); only call when
** conc_cs_stopreason returned non-NULL, with no lock held. */
int conc_cs_raisestop(lua_State *L, cstate *cs, const char *why);
/* Publishes what the state blocks on, for conc.workers(). */
void conc_cs_waiting(cstate *cs, const char *what);
/* The same, naming the object too ("recv" on channel 3; o may be NULL). */
void conc_cs_waiting_obj(cstate *cs, const char *what, const cobj *o);
/* What cs waits on, in words ("recv channel 3"), into buf; NULL when it
** does not wait. Safe from another thread while cs lives. */
const char *conc_cs_describe_wait(cstate *cs, char *buf, size_t n);
/* Around a sleep on a shm futex word: lets a canceller wake it. */
void conc_cs_block_on(cstate *cs, _Atomic uint32_t *word, int shared);
void conc_cs_unblock(cstate *cs);
/* Wakes the state's thread out of any conc wait. */
void conc_cs_wake(cstate *cs);
/* Opens the standard libraries of a lazy worker state now. */
void conc_cs_materialize(lua_State *L, cstate *cs);
/* Makes L, a new worker state, lazy: its standard libraries and conc open
** at the first use of a global (conc_opener). */
void conc_state_make_lazy(lua_State *L, cstate *cs);

void conc_state_bind(lua_State *L, cstate *cs);
/* Runs the runtime's hooks in L, a new worker state; raises the error of
** a hook that raised (call it under lua_pcall). */
void conc_state_run_hooks(lua_State *L, cstate *cs);
/* The host state of r closes: clears the hooks and waits for those that
** run. */
void conc_rt_close_hooks(rt *r);

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
void conc_cs_caught(lua_State *L);

/* ------------------------------------------------------------ trace.c */

/* CONCLUA_TRACE (trace.c): 1 when a trace is being written. Every hook
** tests it first: conc_trace_on && (conc_trace_event(...), 0). */
extern int conc_trace_on;
void conc_trace_init(void);                /* reads the environment, once */
/* One event on track tid of this process: ph 'B' (begin a span named
** name, of category cat), 'E' (end the innermost), 'i' (an instant,
** detail in its args), 's' and 'f' (a flow's start and end, id). */
void conc_trace_event(int ph, int64_t tid, const char *cat, const char *name,
                      const char *detail, uint64_t id);
uint64_t conc_trace_flow(void);        /* a new flow id, unique in the tree */
void conc_trace_thread(int64_t tid, const char *name);  /* a track starts */
void conc_trace_process(const char *name);    /* this process's track */
void conc_trace_exit(void);                /* the process ends: written out */
int conc_trace_fds(int fds[2]);            /* for an exec'd child: 2, or 0 */

/* ------------------------------------------------------------ waitq.c */

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
  uint64_t flow;             /* the value's trace flow id, or 0 */
} selnode;

/* A node n of a waiter that sleeps on p, not on any queue yet. */
void conc_waiter_init(selwait *sw, selnode *n, parker *p);
/* Sleeps on p until done(arg) is not 0, the deadline passes or cs (may
** be NULL) is asked to stop: done's value, 0 at the deadline (done
** looked at once more), -1 on a stop request (*why). */
int conc_wait_until(parker *p, struct cstate *cs, const deadline *d,
                    int (*done)(void *arg), void *arg, const char **why);

/* A done for conc_wait_until: the selwait was claimed. */
int conc_waiter_won(void *sw);
int conc_sel_claim(selwait *sw, int index);
/* Sets n's result and wakes its waiter, which may then go on without
** taking the object's lock again: its parker is held meanwhile. Read the
** node's fields (n->m...) only before. */
void conc_sel_deliver(selnode *n, int result);
void conc_selq_push(struct selnode **head, selnode *n);
/* Newest first: the waiter that came last is served first. */
void conc_selq_push_front(struct selnode **head, selnode *n);
void conc_selq_remove(struct selnode **head, selnode *n);
/* Claims and wakes every node of q with 'result' (SEL_DONE, SEL_SELF),
** under the lock that guards q. */
void conc_selq_wake_all(struct selnode **q, int result);
/* Delists every node of q and wakes its waiter to look again (no claim),
** under the lock that guards q. */
void conc_selq_nudge_all(struct selnode **q);
/* ------------------------------------------------------------ shm.c */

/* Objects whose state lives in shared memory, so it crosses fork: the
** local record, its page, and its place in the table by uid (shm.c). */
typedef struct shmobj {
  cobj obj;
  void *shm;
  size_t size;
  struct shmobj *next;
} shmobj;
int conc_shmobj_init(shmobj *o, int kind, size_t size);   /* 0, or -1 + errno */
void conc_shmobj_destroy(shmobj *o);

/* A lock in shared memory that survives the death of its owner: the
** word holds the owner's id (owner.c), 0 when free (shm.c). */
typedef struct slock {
  _Atomic uint64_t word;
  _Atomic uint32_t seq;        /* waiters sleep here */
  _Atomic uint32_t nwait;
} slock;
int conc_slock_try(slock *s);
/* For short sections, with no cancellation: waits as long as it takes.
** Returns 1 if it took the lock over from an owner that died holding it
** (what the lock guards may be half changed: the caller repairs it), 0
** otherwise. */
int conc_slock_lock(slock *s);
void conc_slock_unlock(slock *s);
int conc_slock_owner_dead(
    slock *s); /* frees the lock of a dead owner; 1 if so */

/* Bumps a shared sequence word and wakes n of its sleepers. */
void conc_bump(_Atomic uint32_t *seq, _Atomic uint32_t *nwait, int n);
/* Sleeps on a shared seq word until ready(state, arg): 1 ready, 0 at the
** deadline, -1 on a stop request of cs (*why). 'idle', if any, runs
** after each quiet fraction of a second (e.g. to check for dead owners). */
typedef int (*ready_fn)(void *state, void *arg);
int conc_sync_wait(cstate *cs, _Atomic uint32_t *seq, _Atomic uint32_t *nwait,
              const deadline *d, ready_fn ready, ready_fn idle, void *state,
              void *arg, const char **why);

/* Shared memory for objects that cross fork (shm.c). */
void *conc_shm_alloc(size_t size);
void conc_shm_free(void *p, size_t size);
/* The shm object with this uid mapped in this process, with a reference
** taken, or NULL. */
cobj *conc_shm_lookup(uint64_t uid);

#endif
