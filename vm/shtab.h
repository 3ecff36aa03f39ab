/*
** shtab.h
** The table of conc.shared in shared memory (shtab.c), as its Lua side
** (shared.c) sees it. Private to those two files.
*/

#ifndef conc_shtab_h
#define conc_shtab_h

#include "modules.h"

#define SHTAB_NOVALUE UINT64_MAX    /* an entry with no value (an update's) */
#define SHTAB_EMPTY 0
#define SHTAB_TOMB 1

typedef struct shslot {
  uint64_t hash;
  uint64_t off;                     /* the entry, or SHTAB_EMPTY / SHTAB_TOMB */
} shslot;

typedef struct shindex {
  uint64_t cap;                     /* a power of two */
  shslot slot[];
} shindex;

/* An object a value names. */
typedef struct shref {
  uint64_t uid;
  uint64_t token;                   /* the process holding the reference;
                                       0: released */
  uint64_t ptr;                     /* the object, in that process */
  int64_t label;                    /* its id, for messages */
  int32_t pid;                      /* that process */
  uint8_t kind, shm;
  uint8_t pad[2];
} shref;

typedef struct shent {
  uint64_t vlen;                    /* SHTAB_NOVALUE: no value */
  uint32_t klen, nrefs;
  slock ulock;                      /* held by an update of the key */
  shref refs[];                     /* then the key, padded to 8, the value */
} shent;

typedef struct shhdr {
  slock lock;                       /* guards everything below */
  _Atomic uint32_t dirty;           /* a holder is changing the structure */
  _Atomic uint32_t seq, nwait;      /* writers waiting for an update */
  uint32_t pad;
  uint64_t index;                   /* the index block */
  uint64_t count;                   /* keys with a value */
  uint64_t nent;                    /* entries: those and updates' */
  uint64_t slots;                   /* slots used: entries and tombstones */
  uint64_t border;                  /* keys 1..border have values (a hint) */
  uint64_t defer, ndefer;           /* the deferred releases */
  uint64_t defergen;                /* bumped when a release is deferred */
  _Atomic uint32_t spin;            /* conc_spin's budget for the lock */
  shheap heap;
} shhdr;
_Static_assert(sizeof(shhdr) <= 4096, "shared table header too big");

/* This process's record of a table. */
typedef struct shtab {
  shmobj so;
  uint64_t defergen;                /* last seen; guarded by the lock */
  int stored;                       /* this process stored objects in it */
} shtab;

#define A8(n) (((n) + 7) & ~(uint64_t)7)
#define AT(o, off) ((void *)((o)->base + (off)))   /* o: a shop */

static inline char *shtab_ekey(shent *e) {
  return (char *)(e->refs + e->nrefs);
}

static inline char *shtab_evalue(shent *e) {
  return shtab_ekey(e) + A8(e->klen);
}

static inline uint64_t shtab_entry_size(uint64_t klen, uint64_t nrefs,
                                        uint64_t vlen) {
  return sizeof(shent) + nrefs * sizeof(shref) + A8(klen) +
         (vlen == SHTAB_NOVALUE ? 0 : vlen);
}

/* One call's hold on a table: the lock, and the references to release
** once it is let go. */
typedef struct shop {
  shtab *t;
  shhdr *h;
  char *base;
  uint64_t token;                   /* my_token(), once needed (tok) */
  cobj **drop;
  size_t ndrop, capdrop;
  cobj *dropinl[8];
} shop;

/* A key in its canonical bytes (shared.c makes them). */
typedef struct skey {
  char buf[1 + 64];
  const char *p;
  size_t n;
  uint64_t hash;
} skey;

/* Why a value could not be read: the object it names. */
typedef struct badref {
  int kind;
  int64_t label;
} badref;

/* A read's copy of a small value, taken under the lock into the caller's
** stack: no allocation while the lock is held, and none at all when the
** value names no object (it is decoded from there). */
typedef struct vcopy {
  size_t n;
  int nrefs;
  cobj *refs[4];
  char bytes[192];
} vcopy;

/* Messages (compare by address: shtab_wait_idle's answers). */
extern const char conc_shtab_full[], conc_shtab_toobig[], conc_shtab_nomem[],
    conc_shtab_self_update[];

/* Makes t's mapping and the empty table in it; 0, or -1 and errno. */
int conc_shtab_create(shtab *t);
/* t's last reference in this process goes: the objects this process
** stored are released, then the mapping is unmapped. */
void conc_shtab_destroy(shtab *t);

/* Takes the lock: 0, or -1 (not held) when the table is broken and there
** is no memory to rebuild it now. unlock lets go and then releases what
** the op dropped; done only releases (the lock let go already). */
int conc_shtab_lock(shop *o, shtab *t);
void conc_shtab_unlock(shop *o);
void conc_shtab_done(shop *o);
/* Around a change of the structure: the mark a dead holder leaves (see
** shtab.c's recover), set before any of the changes and cleared after
** all of them. Only a holder's death makes another see it, so program
** order is enough (a CPU retires stores in order, and the taker reads
** memory only once the holder is gone): a compiler barrier, no fence. */
static inline void shtab_begin(shop *o) {
  atomic_store_explicit(&o->h->dirty, 1, memory_order_relaxed);
  atomic_signal_fence(memory_order_seq_cst);
}

static inline void shtab_end(shop *o) {
  atomic_store_explicit(&o->h->dirty, 0, memory_order_release);
}

uint64_t conc_shtab_hash(const char *p, size_t n);
void conc_shtab_key_int(skey *k, lua_Integer i);

/* With the lock held. k's slot, or NULL; then *ins (may be NULL) is where
** it would go. */
shslot *conc_shtab_slot(shop *o, const skey *k, shslot **ins);
shent *conc_shtab_find(shop *o, const skey *k);
static inline shindex *shtab_index(shop *o) {
  return AT(o, o->h->index);
}
/* Waits until no update of another thread holds k (the lock let go
** meanwhile); then k's slot in *s, where it would go in *ins. NULL, or
** conc_shtab_self_update (the lock held), or a stop reason or conc_shtab_nomem
*(the
** lock not held). */
const char *conc_shtab_wait_held(shop *o, cstate *cs, const skey *k, shslot **s,
                            shslot **ins, shent *e);   /* its slow part */
static inline const char *shtab_wait_idle(shop *o, cstate *cs,
                                          const skey *k, shslot **s,
                                          shslot **ins) {
  shent *e;
  *s = conc_shtab_slot(o, k, ins);
  e = *s ? AT(o, (*s)->off) : NULL;
  if (e == NULL || atomic_load(&e->ulock.word) == 0) return NULL;
  return conc_shtab_wait_held(o, cs, k, s, ins, e);
}
/* Whether this thread's update holds e. */
int conc_shtab_held(shent *e);

/* In a dirty section. Puts a new entry for k, its value the vlen bytes
** at v (SHTAB_NOVALUE: none) naming the objects refs, in k's slot s in
** place of its entry there, or with s NULL in ins (as conc_shtab_slot gave
** them); the entry takes the references over, its offset goes in *off
** (may be NULL). NULL, or why not (conc_shtab_full, conc_shtab_toobig: nothing
** changed). */
const char *conc_shtab_put(shop *o, const skey *k, shslot *s, shslot *ins,
                      const char *v, uint64_t vlen, cobj *const *refs,
                      int nrefs, uint64_t *off);
void conc_shtab_unpublish(shop *o, shslot *s);   /* discards k's entry */

/* With the lock held: a message with a copy of e's value, its objects
** referenced; NULL when out of memory or an object is another process's
** (bad->kind >= 0). */
msg *conc_shtab_value(shop *o, shent *e, badref *bad);
/* The same into c when small (1), else into *m (0); -1 as above. */
int conc_shtab_copy(shop *o, shent *e, vcopy *c, msg **m, badref *bad);
/* After the lock: the message of c; NULL out of memory. */
msg *conc_shtab_copy_msg(vcopy *c);

#endif
