/*
** owner.c
** Owner ids: who holds a lock or a queue slot in shared memory, and
** whether that thread still lives.
**
** DESIGN. Every OS thread that takes something in shared memory gets a
** token: an entry of an arena mapped MAP_SHARED once per process, before
** its first shared object is made, so that every process that can see a
** shared object (one forked after it was made) sees the arena of the
** object's maker too. An entry is a robust, process-shared mutex that its
** thread locks when it gets the entry and holds for the rest of its life.
** However the thread ends (it returns, exits, execs, is killed, or its
** whole process is), the kernel marks that mutex owner-died as the thread
** exits, before the process is a zombie and whether or not anyone reaps
** it. An owner is recorded as an id: the entry's index and its
** generation, which grows each time the entry goes to another thread, so
** an id never comes back (a reused pid or thread id cannot make a dead
** owner look alive). Whether the owner of an id lives is a trylock of its
** entry, with no system call: busy and of the same generation, alive;
** owner-died or free, dead (the checker then frees the entry for reuse).
** An OS thread that lives on keeps its token: a pooled thread waiting for
** work still holds what its last Lua thread held.
*/

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#include "os.h"

#define MAXTOKENS (1u << 17)        /* live threads of a process tree */

typedef union token {
  struct {
    pthread_mutex_t mu;             /* held by the token's thread */
    _Atomic uint32_t gen;           /* 0 until the entry is made */
  } t;
  char line[64];                    /* one cache line each */
} token;

typedef struct arena {
  _Atomic uint32_t made;            /* entries handed out so far */
  _Atomic uint32_t cursor;          /* where a search for a free one starts */
  char pad[56];
  token tok[MAXTOKENS];
} arena;

static arena *A;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;
static int arena_errno;

static __thread __attribute__((tls_model("initial-exec"))) uint64_t tls_id;

/* A fork's child runs on a thread of its own, which has no id yet (the
** forking thread's id is the parent's). */
static void forget_id(void) {
  tls_id = 0;
}

static void arena_make(void) {
  void *p = mmap(NULL, sizeof(arena), PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    arena_errno = errno;
    return;
  }
  A = p;
  pthread_atfork(NULL, NULL, forget_id);
}

int conc_owner_init(void) {
  pthread_once(&arena_once, arena_make);
  if (A == NULL) {
    errno = arena_errno ? arena_errno : ENOMEM;
    return -1;
  }
  return 0;
}

static uint64_t make_id(uint32_t i, uint32_t gen) {
  return (uint64_t)gen << 32 | (uint64_t)(i + 1);
}

/* Gives entry i, held by the calling thread, a new generation: ids of
** its earlier owners are dead from now on. */
static uint64_t renew(uint32_t i) {
  uint32_t gen = atomic_load(&A->tok[i].t.gen) + 1;
  if (gen == 0) gen = 1;
  atomic_store(&A->tok[i].t.gen, gen);
  return make_id(i, gen);
}

/* An entry for the calling thread: a free one, or one whose thread died,
** or a new one. OWNER_ANON when none is left. */
static uint64_t token_take(void) {
  uint32_t made = atomic_load(&A->made), start, i;
  pthread_mutexattr_t at;
  if (made > MAXTOKENS) made = MAXTOKENS;
  start = made ? atomic_load(&A->cursor) % made : 0;
  for (uint32_t k = 0; k < made; k++) {
    int r;
    i = (start + k) % made;
    if (atomic_load(&A->tok[i].t.gen) == 0) continue;  /* being made */
    r = pthread_mutex_trylock(&A->tok[i].t.mu);
    if (r == EOWNERDEAD) pthread_mutex_consistent(&A->tok[i].t.mu);
    else if (r != 0) continue;
    atomic_store(&A->cursor, i + 1);
    return renew(i);
  }
  i = atomic_fetch_add(&A->made, 1);
  if (i >= MAXTOKENS) {
    atomic_store(&A->made, MAXTOKENS);
    return OWNER_ANON;
  }
  pthread_mutexattr_init(&at);
  pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&A->tok[i].t.mu, &at);
  pthread_mutexattr_destroy(&at);
  pthread_mutex_lock(&A->tok[i].t.mu);
  return renew(i);                  /* published: searches may try it */
}

uint64_t conc_owner_self(void) {
  if (tls_id != 0) return tls_id;
  if (A == NULL) return OWNER_ANON;   /* no shared object made here */
  tls_id = token_take();
  return tls_id;
}

int conc_owner_dead(uint64_t id) {
  uint32_t i = (uint32_t)id - 1, gen = (uint32_t)(id >> 32);
  int r;
  if (id == 0 || id == OWNER_ANON || A == NULL ||
      i >= atomic_load(&A->made) || i >= MAXTOKENS)
    return 0;                       /* not an owner we can tell about */
  if (atomic_load(&A->tok[i].t.gen) != gen) return 1;
  r = pthread_mutex_trylock(&A->tok[i].t.mu);
  if (r == EBUSY) return atomic_load(&A->tok[i].t.gen) != gen;
  if (r != 0 && r != EOWNERDEAD) return 0;
  /* its thread ended: the entry is free for another thread */
  if (r == EOWNERDEAD) pthread_mutex_consistent(&A->tok[i].t.mu);
  if (atomic_load(&A->tok[i].t.gen) == gen) renew(i);
  pthread_mutex_unlock(&A->tok[i].t.mu);
  return 1;
}
