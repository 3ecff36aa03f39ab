/*
** os.h
** The os layer, the bottom of vm/: file descriptors (fdio.c), clocks,
** futexes and parkers (wait.c), forks and ids (fork.c), owner ids
** (owner.c), the shared-memory heap (shmheap.c), the lifeline of children
** (lifeline.c), the allocator of worker states (alloc.c). It knows no
** runtime object: only the OS, libc and Lua's official API.
** Every global of vm/ carries the conc_ prefix (or conclua_, luaopen_conc
** for the public API); vm/tools/layers.sh (make layers) checks that, and
** that no file uses one of a layer above its own.
*/

#ifndef conc_os_h
#define conc_os_h

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define CONC_UNUSED(x) ((void)(x))
/* Thread-local, and readable from a signal handler (no lazy allocation). */
#define CONC_TLS __thread __attribute__((tls_model("initial-exec")))

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define CONC_SANITIZED 1
#endif

/* ------------------------------------------------------------ fdio.c */

/* Every fd the runtime makes has O_CLOEXEC. Reads and writes retry on
** EINTR and on short counts. */
int conc_fd_pipe(int fds[2]);                       /* 0, or -1 and errno */
int conc_fd_socketpair(int fds[2]);                 /* SOCK_STREAM, 0 or -1 */
int conc_fd_write_all(int fd, const void *p, size_t n);   /* 0, or -1 + errno */
/* Reads exactly n bytes: returns n, fewer at end of file, -1 on error. */
ssize_t conc_fd_read_full(int fd, void *p, size_t n);
/* Reads exactly n bytes into a buffer it allocates (*out, to free): 0, or
** -1 (end of file first, an error, or no memory). It never allocates much
** more than what arrived, whatever n claims. */
int conc_fd_read_alloc(int fd, size_t n, char **out);
int conc_fd_set_nonblock(int fd, int on);
void conc_fd_close(int fd);                         /* keeps errno */
int conc_fd_count(void); /* open fds of the process */

/* ------------------------------------------------------------ wait.c */

double conc_now(void);                 /* CLOCK_MONOTONIC, seconds */

/* An absolute CLOCK_MONOTONIC deadline, or none (wait forever). */
typedef struct deadline {
  int forever;
  struct timespec at;
} deadline;

void conc_deadline_in(deadline *d, double seconds);   /* seconds < 0: forever */
/* These take NULL for no deadline. */
int conc_deadline_passed(const deadline *d);
double conc_deadline_left(const deadline *d);         /* seconds, >= 0 */
/* Reads an optional timeout argument: nil/none -> -1 (forever); a
** non-negative number (math.huge: forever); anything else raises. */
double conc_opttimeout(lua_State *L, int arg);

/* Futexes. 'shared' selects a process-shared futex (for words in
** MAP_SHARED memory). conc_futex_wait returns 0 when woken (maybe spuriously),
** ETIMEDOUT at the deadline, EAGAIN if *w != v, EINTR on a signal. */
int conc_futex_wait(_Atomic uint32_t *w, uint32_t v, const deadline *d,
                    int shared);
void conc_futex_wake(_Atomic uint32_t *w, int n, int shared);

/* A parker: what one OS thread sleeps on inside a blocking conc call.
** A waiter reads conc_park_seq, checks its condition, then
*conc_park_sleep(seen);
** any waker that changed the condition before calling conc_park_wake makes
** conc_park_sleep return. conc_park_wake is async-signal-safe. */
typedef struct parker {
  _Atomic uint32_t seq;
  _Atomic int efd;          /* an eventfd for conc_park_poll, made lazily */
  _Atomic int polling;      /* the owner sleeps in conc_park_poll */
  _Atomic int wakers;       /* conc_sel_deliver calls still touching it */
  _Atomic int sleeping;     /* the owner is in (or entering) conc_futex_wait */
  uint32_t spin_ns;         /* how long the owner spins before it sleeps */
} parker;

/* Spins (adaptively, and only with two CPUs or more) until ready(arg);
** 1 if it became ready. 'budget' is the caller's, per object. */
int conc_spin(_Atomic uint32_t *budget, int (*ready)(void *), void *arg);

void conc_park_init(parker *p);
void conc_park_destroy(parker *p);
uint32_t conc_park_seq(parker *p);
int conc_park_sleep(parker *p, uint32_t seen,
                    const deadline *d); /* 0/ETIMEDOUT */
void conc_park_wake(parker *p);
/* Sleeps in poll() on fds plus the parker: returns poll's result (0 on
** timeout), -1 with errno on error. 'seen' as for conc_park_sleep. The array
** must have room for nfds + 1 entries: the parker's eventfd goes last. */
struct pollfd;
int conc_park_poll(parker *p, uint32_t seen, struct pollfd *fds, int nfds,
              const deadline *d);

/* A lock for the hottest short sections (a channel's): spins longer than
** a pthread mutex before it sleeps, and wakes only when someone sleeps
** (wait.c). 0 free, 1 held, 2 held with sleepers. */
typedef struct cmutex {
  _Atomic uint32_t v;
} cmutex;
void conc_cmutex_init(cmutex *m);
void conc_cmutex_lock(cmutex *m);
void conc_cmutex_unlock(cmutex *m);

/* ------------------------------------------------------------ fork.c */

uint32_t conc_gettid(void);            /* cached: no system call */
pid_t conc_getpid(void);               /* cached; right after fork too */
extern _Atomic unsigned conc_forkgen;  /* forks this process made */

/* The locks a fork must take (every one another thread could hold while
** a thread forks) register here, a pthread mutex or a cmutex. */
typedef struct objlink {
  struct objlink *prev, *next;
  pthread_mutex_t *mu;         /* the object's lock: one or the other */
  cmutex *cm;
} objlink;
void conc_fork_register(objlink *l, pthread_mutex_t *mu);
void conc_fork_register_cm(objlink *l, cmutex *cm);
void conc_fork_unregister(objlink *l);
/* Runs fn in every forked child, after the lifeline and in the order of
** registration (a fixed handful of callers: the thread pool, the reaper). */
void conc_fork_onchild(void (*fn)(void));
/* Installs the atfork handlers and an atexit handler that runs at_exit
** and then closes forks; once (later calls change nothing). */
void conc_fork_install(void (*at_exit)(void));
/* The fork lock, taken by spawn_process around its fork ('alone': the
** process has one thread, no lock needed): 0, or -1 once forks are
** closed (nothing held then). */
int conc_fork_lock(int alone);
void conc_fork_unlock(int alone);
/* Forks a spawn_process child, which arms the lifeline read end lfd. */
pid_t conc_fork_spawn(int lfd);
/* This thread is the one running the exit handlers. */
int conc_fork_exiting(void);

/* ------------------------------------------------------------ owner.c */

/* Owner ids: a thread of the process tree, for records in shared memory
** of who holds what. 0 is nobody; OWNER_ANON is a thread that could get
** no id (more than 131072 live ones), never taken for dead. conc_owner_init
** makes the arena of ids: call it before making a shared object (0, or -1
** and errno). conc_owner_self is the calling thread's id; conc_owner_dead(id)
** is 1 once that thread has ended (returned, killed, exited, exec'ed),
** whether or not its process was reaped. Both are a few atomic operations,
** no system call. */
#define OWNER_ANON UINT64_MAX
int conc_owner_init(void);
uint64_t conc_owner_self(void);
int conc_owner_dead(uint64_t id);

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
size_t conc_shheap_mapsize(unsigned order);          /* the mapping for it */
void conc_shheap_init(shheap *hp, char *base, unsigned order);
size_t conc_shheap_max(const shheap *hp);           /* the biggest block */
/* A block of n bytes or more (its offset), or 0 when there is no room. */
uint64_t conc_shheap_alloc(shheap *hp, char *base, size_t n);
void conc_shheap_free(shheap *hp, char *base, uint64_t p);
size_t conc_shheap_size(char *base, uint64_t p);    /* what the block holds */
/* Whether p can be a used block of this heap. */
int conc_shheap_valid(const shheap *hp, char *base, uint64_t p);
/* Makes the free lists again from the n live blocks (any order); sets
** live[i] to 0 for one that is no block or overlaps another. 0, or -1
** out of memory (nothing changed). */
int conc_shheap_rebuild(shheap *hp, char *base, uint64_t *live, size_t n);

/* ------------------------------------------------------------ lifeline.c */

/* A child dies with its parent, however the parent ends. */
void conc_lifeline_init(void);           /* once, before the first fork */
int conc_lifeline_make(void);            /* 0, or -1 and errno */
/* A read end for one child to arm, or -1 and errno (ENOENT, EACCES: no
** /proc, the child goes unguarded). Hand it back with conc_lifeline_given
** once the child has it (pid; -1 if no child was made). */
int conc_lifeline_take(int *kept);
void conc_lifeline_given(int fd, int kept, pid_t pid);
void conc_lifeline_ended(pid_t pid);     /* a child was reaped */
/* A child (pid self) arms the read end made for it. */
void conc_lifeline_arm(int fd, pid_t self);
/* In the child (self) of any fork; 'mine' is the read end made for a
** spawn_process child, else -1. */
void conc_lifeline_atfork_child(int mine, pid_t self);

/* ------------------------------------------------------------ alloc.c */

/* A state made for a worker, with its own small-block allocator; close
** it with conc_state_close. */
lua_State *conc_state_new(void);
void conc_state_close(lua_State *L);

#endif
