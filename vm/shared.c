/*
** shared.c
** conc.shared(): a table that every thread, and every process forked
** after it was made, sees (Python's Manager dict and Value).
**
** DESIGN. Shared memory, not a server. A server thread in the creator
** would make every access from another process a round trip through a
** socket (tens of microseconds: Python's Manager works so), cost a
** thread per table, and end the table with its creator; a mapping made
** before the fork is simply there in every child, at the cost of a
** memcpy, and threads use it as fast as a private table. So the table is
** one MAP_SHARED mapping: a header page, then a heap (shmheap.c) that the
** kernel backs as it fills, up to 1 GiB, and gives back as it empties.
** The header holds an slock (sync.c: robust against the death of its
** holder) that guards everything, the offset of the index (open
** addressing: 16-byte slots of hash and entry offset) and the heap's
** free lists. An entry is one heap block: the key's canonical bytes
** (2.0 and 2 are one key, as in Lua tables), the value as the bytes of
** section 6's format, the objects the value names, and an update lock.
** A write builds a new block and publishes it by one store into its
** slot, then frees the old block; only incr changes a number in place.
** Lua values are encoded before the lock is taken and decoded after it
** is released, so no Lua code, no allocation of Lua's and no error ever
** runs with the lock held: under it there are only copies of bytes.
** Death. A process may be killed anywhere. A holder marks the header
** dirty while it changes the structure; whoever takes the lock over from
** a dead holder finds the mark and rebuilds what could be half done: the
** heap's free lists from the blocks that the index reaches, the counts.
** Publication being one store, a dead writer leaves the table as it was
** before its write or as it is after it, never a mix. s:update(k, fn)
** holds the entry's own slock while fn runs unlocked: other writers of k
** sleep on the header's seq word and look, each fraction of a second,
** whether that holder still lives (slock_owner_dead); the update of a
** killed process is dropped whole and the old value stays. Readers never
** wait for an update: they see the old value.
** Objects. A value names runtime objects. Those that live in shared
** memory (locks, queues, shared tables...) are found again by uid in any
** process that has them; the others (channels, threads...) only in the
** process that stored them, which the entry knows by a token (the pid
** and random bits, new in each forked child). The storing process keeps
** a reference on each object while the entry lives. An entry dropped by
** another process leaves those releases on a deferred list, which the
** owner empties at its next access. Reading a value that names an
** object of another process raises '<kind> <id> belongs to another
** process', never hands out a copy.
*/

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "internal.h"

#define PAGE 4096u
#define VNONE UINT64_MAX            /* an entry with no value (an update's) */
#define SLOT_EMPTY 0
#define SLOT_TOMB 1
#define MINCAP 16                   /* index slots at the least */

typedef struct shslot {
  uint64_t hash;
  uint64_t off;                     /* the entry, or SLOT_EMPTY / SLOT_TOMB */
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
  uint64_t vlen;                    /* VNONE: no value */
  uint32_t klen, nrefs;
  slock ulock;                      /* held by an update of the key */
  shref refs[];                     /* then the key, padded to 8, the value */
} shent;

/* A release left to the process that holds the reference. */
typedef struct shdefer {
  uint64_t next;
  uint64_t token, ptr;
  int32_t pid;
  uint32_t pad;
} shdefer;

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
_Static_assert(sizeof(shhdr) <= PAGE, "shared table header too big");

/* This process's record of a table. */
typedef struct shtab {
  shmobj so;
  uint64_t defergen;                /* last seen; guarded by the lock */
  int stored;                       /* this process stored objects in it */
} shtab;

#define A8(n) (((n) + 7) & ~(uint64_t)7)
#define AT(o, off) ((void *)((o)->base + (off)))

static char *ekey(shent *e) {
  return (char *)(e->refs + e->nrefs);
}

static char *evalue(shent *e) {
  return ekey(e) + A8(e->klen);
}

static uint64_t entry_size(uint64_t klen, uint64_t nrefs, uint64_t vlen) {
  return sizeof(shent) + nrefs * sizeof(shref) + A8(klen) +
         (vlen == VNONE ? 0 : vlen);
}

/* ------------------------------------------------------------ process */

static _Atomic uint64_t ptoken;

/* Tables this process rebuilt after a holder's death (conc._stats). */
_Atomic int conc_shared_recoveries;

/* This process's token: its pid and 32 random bits, made afresh after a
** fork (a pid alone could be a dead process's, reused). */
static uint64_t my_token(void) {
  uint32_t pid = (uint32_t)conc_getpid(), r = 0;
  uint64_t t = atomic_load(&ptoken), nt;
  if (t != 0 && (uint32_t)(t >> 32) == pid) return t;
  while (r == 0)
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
      r = (uint32_t)(conc_now() * 1e9) ^ (uint32_t)(uintptr_t)&r;
  nt = ((uint64_t)pid << 32) | r;
  if (atomic_compare_exchange_strong(&ptoken, &t, nt)) return nt;
  return t;                         /* another thread made it first */
}

/* ------------------------------------------------------------ ops */

/* One call's hold on a table: the lock, and the references to release
** once it is let go. */
typedef struct op {
  shtab *t;
  shhdr *h;
  char *base;
  uint64_t token;                   /* my_token(), once needed (tok) */
  cobj **drop;
  size_t ndrop, capdrop;
  cobj *dropinl[8];
} op;

static uint64_t tok(op *o) {
  if (o->token == 0) o->token = my_token();
  return o->token;
}

static const char FULL[] = "shared table is full";
static const char TOOBIG[] = "value too big for a shared table";
static const char NOMEM[] = "not enough memory";

/* Releases o once the lock is let go (leaks it if out of memory: never
** a release under the lock, where a destructor could take it again). */
static void drop_later(op *o, cobj *obj) {
  if (o->ndrop == o->capdrop) {
    size_t cap = o->capdrop * 2;
    cobj **nd = o->drop == o->dropinl ? malloc(cap * sizeof *nd)
                                      : realloc(o->drop, cap * sizeof *nd);
    if (nd == NULL) return;
    if (o->drop == o->dropinl) memcpy(nd, o->dropinl, sizeof o->dropinl);
    o->drop = nd;
    o->capdrop = cap;
  }
  o->drop[o->ndrop++] = obj;
}

static void recover(op *o);
static void drain(op *o, int all);

static int lock_free(void *arg) {
  return atomic_load_explicit(&((slock *)arg)->word, memory_order_relaxed) == 0;
}

/* Takes the lock. 0, or -1 (the lock not held) when its last holder died
** changing the table and there is no memory to rebuild it now (the
** next holder tries again). Holds are short: a busy lock is watched for
** a moment (without writing its word) before slock_lock sleeps. */
static int op_relock(op *o) {
  slock *l = &o->h->lock;
  int tries = 0;
  while (!slock_try(l)) {
    if (++tries > 4 || !conc_spin(&o->h->spin, lock_free, l)) {
      slock_lock(l);
      break;
    }
  }
  if (atomic_load(&o->h->dirty)) {
    recover(o);
    if (atomic_load(&o->h->dirty)) {
      slock_unlock(&o->h->lock);
      return -1;
    }
  }
  if (o->h->defergen != o->t->defergen) drain(o, 0);
  return 0;
}

static int op_lock(op *o, shtab *t) {
  o->t = t;
  o->h = t->so.shm;
  o->base = t->so.shm;
  o->token = 0;                     /* made when an object needs it */
  o->drop = o->dropinl;
  o->ndrop = 0;
  o->capdrop = sizeof o->dropinl / sizeof o->dropinl[0];
  return op_relock(o);
}

/* Releases what the op dropped; the lock is not held any more. */
static void op_done(op *o) {
  for (size_t i = 0; i < o->ndrop; i++) obj_release(o->drop[i]);
  if (o->drop != o->dropinl) free(o->drop);
  o->drop = o->dropinl;
  o->ndrop = 0;
}

static void op_unlock(op *o) {
  slock_unlock(&o->h->lock);
  op_done(o);
}

/* Around changes of the structure (see recover): the mark is seen set
** before any of them and cleared after all of them. */
static void begin(op *o) {
  atomic_store_explicit(&o->h->dirty, 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
}

static void end(op *o) {
  atomic_store_explicit(&o->h->dirty, 0, memory_order_release);
}

/* ------------------------------------------------------------ keys */

typedef struct skey {
  char buf[1 + 64];
  const char *p;
  size_t n;
  uint64_t hash;
} skey;

static uint64_t fnv(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
  return h;
}

static void key_int(skey *k, lua_Integer i) {
  k->buf[0] = 'i';
  memcpy(k->buf + 1, &i, sizeof i);
  k->p = k->buf;
  k->n = 1 + sizeof i;
  k->hash = fnv(k->p, k->n);
}

/* The canonical bytes of the key at idx; raises for other types. Long
** strings are copied into a box that replaces the key on the stack. */
static void key_get(lua_State *L, int idx, skey *k) {
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      char *dst = k->buf;
      if (n >= UINT32_MAX) luaL_error(L, "shared table key too long");
      if (n >= sizeof k->buf - 1) dst = lua_newuserdatauv(L, n + 1, 0);
      dst[0] = 's';
      memcpy(dst + 1, s, n);
      if (dst != k->buf) lua_replace(L, idx);   /* the box keeps the bytes */
      k->p = dst;
      k->n = n + 1;
      break;
    }
    case LUA_TNUMBER: {
      lua_Integer i;
      lua_Number f = lua_tonumber(L, idx);
      int isint = lua_isinteger(L, idx);
      if (isint) i = lua_tointeger(L, idx);
      else if (isnan(f)) luaL_error(L, "shared table index is NaN");
      else isint = lua_numbertointeger(f, &i) && (lua_Number)i == f;
      if (isint) {              /* 2.0 and 2 are one key, as in tables */
        key_int(k, i);
        return;
      }
      k->buf[0] = 'f';
      memcpy(k->buf + 1, &f, sizeof f);
      k->p = k->buf;
      k->n = 1 + sizeof f;
      break;
    }
    case LUA_TBOOLEAN:
      k->buf[0] = 'b';
      k->buf[1] = (char)lua_toboolean(L, idx);
      k->p = k->buf;
      k->n = 2;
      break;
    default:
      luaL_error(L, "shared table keys must be strings, numbers or booleans "
                    "(got %s)", luaL_typename(L, idx));
  }
  k->hash = fnv(k->p, k->n);
}

static void key_push(lua_State *L, const char *key, size_t n) {
  switch (key[0]) {
    case 's': lua_pushlstring(L, key + 1, n - 1); break;
    case 'i': {
      lua_Integer i;
      memcpy(&i, key + 1, sizeof i);
      lua_pushinteger(L, i);
      break;
    }
    case 'f': {
      lua_Number f;
      memcpy(&f, key + 1, sizeof f);
      lua_pushnumber(L, f);
      break;
    }
    default: lua_pushboolean(L, key[1]); break;
  }
}

/* The integer of an integer key, for the border hint; 0 if none. */
static lua_Integer key_index(const char *key, size_t n) {
  lua_Integer i = 0;
  if (n == 1 + sizeof i && key[0] == 'i') memcpy(&i, key + 1, sizeof i);
  return i;
}

/* ------------------------------------------------------------ index */

static shindex *index_of(op *o) {
  return AT(o, o->h->index);
}

/* Whether the n bytes at a and b are the same; keys are mostly short. */
static int key_eq(const char *a, const char *b, size_t n) {
  uint64_t x, y, u, v;
  if (n < 8 || n > 16) return memcmp(a, b, n) == 0;
  memcpy(&x, a, 8);                 /* two 8-byte words, overlapping */
  memcpy(&y, b, 8);
  memcpy(&u, a + n - 8, 8);
  memcpy(&v, b + n - 8, 8);
  return ((x ^ y) | (u ^ v)) == 0;
}

/* k's slot, or NULL; then *ins (if not NULL) is where k would go. */
static shslot *find_slot(op *o, const skey *k, shslot **ins) {
  shindex *ix = index_of(o);
  uint64_t mask = ix->cap - 1, i = k->hash & mask;
  shslot *tomb = NULL;
  for (;;) {
    shslot *s = &ix->slot[i];
    if (s->off == SLOT_EMPTY) {
      if (ins) *ins = tomb ? tomb : s;
      return NULL;
    }
    if (s->off == SLOT_TOMB) {
      if (tomb == NULL) tomb = s;
    } else if (s->hash == k->hash) {
      shent *e = AT(o, s->off);
      if (e->klen == k->n && key_eq(ekey(e), k->p, k->n)) return s;
    }
    i = (i + 1) & mask;
  }
}

static shent *find(op *o, const skey *k) {
  shslot *s = find_slot(o, k, NULL);
  return s ? AT(o, s->off) : NULL;
}

/* The smallest power of two >= MINCAP with room for n entries at a
** quarter full. */
static uint64_t cap_for(uint64_t n) {
  uint64_t cap = MINCAP;
  while (cap / 4 < n) cap *= 2;
  return cap;
}

/* Rebuilds the index with 'cap' slots (tombstones go). 0, or -1 when
** the heap has no room (the old index stays). In a dirty section. */
static int index_resize(op *o, uint64_t cap) {
  shhdr *h = o->h;
  shindex *ox = index_of(o), *nx;
  uint64_t off = shheap_alloc(&h->heap, o->base,
                              sizeof(shindex) + cap * sizeof(shslot));
  if (off == 0) return -1;
  nx = AT(o, off);
  nx->cap = cap;
  memset(nx->slot, 0, cap * sizeof(shslot));
  for (uint64_t i = 0; i < ox->cap; i++) {
    shslot *s = &ox->slot[i];
    uint64_t j;
    if (s->off <= SLOT_TOMB) continue;
    for (j = s->hash & (cap - 1); nx->slot[j].off != SLOT_EMPTY;
         j = (j + 1) & (cap - 1))
      ;
    nx->slot[j] = *s;
  }
  off = h->index;
  h->index = (uint64_t)((char *)nx - o->base);    /* one store: published */
  h->slots = h->nent;
  shheap_free(&h->heap, o->base, off);
  return 0;
}

/* ------------------------------------------------------------ entries */

/* memcpy, with the short copies of keys and small numbers inline. */
static void copy_bytes(char *dst, const char *src, size_t n) {
  uint64_t x, y;
  if (n < 8 || n > 16) {
    memcpy(dst, src, n);
    return;
  }
  memcpy(&x, src, 8);               /* two 8-byte words, overlapping */
  memcpy(&y, src + n - 8, 8);
  memcpy(dst, &x, 8);
  memcpy(dst + n - 8, &y, 8);
}

/* A new entry for k (refs: the objects its value names, their references
** taken over by the entry once it is published). 0 when there is no
** room, then *why says why. */
static uint64_t entry_new(op *o, const skey *k, const char *v, uint64_t vlen,
                          cobj *const *refs, int nrefs, const char **why) {
  uint64_t size = entry_size(k->n, (uint64_t)nrefs, vlen);
  uint64_t off = shheap_alloc(&o->h->heap, o->base, size);
  shent *e;
  if (off == 0) {
    *why = size > shheap_max(&o->h->heap) ? TOOBIG : FULL;
    return 0;
  }
  e = AT(o, off);
  e->vlen = vlen;
  e->klen = (uint32_t)k->n;
  e->nrefs = (uint32_t)nrefs;
  atomic_init(&e->ulock.word, 0);
  atomic_init(&e->ulock.seq, 0);
  atomic_init(&e->ulock.nwait, 0);
  atomic_init(&e->ulock.pid, 0);
  for (int i = 0; i < nrefs; i++) {
    cobj *obj = refs[i];
    shref *r = &e->refs[i];
    memset(r, 0, sizeof *r);
    r->uid = obj->uid;
    r->token = tok(o);
    r->ptr = (uint64_t)(uintptr_t)obj;
    r->pid = (int32_t)conc_getpid();
    r->kind = (uint8_t)obj->kind;
    r->shm = (uint8_t)conc_kinds[obj->kind]->shm;
    if (obj->kind == K_THREAD) r->label = ((worker *)obj)->id;
    else if (obj->kind == K_PROCESS) r->label = ((worker *)obj)->pid;
    else r->label = (int64_t)(obj->uid & 0xffffffffu);
  }
  copy_bytes(ekey(e), k->p, k->n);
  if (vlen != VNONE) copy_bytes(evalue(e), v, vlen);
  return off;
}

static void defer_push(op *o, const shref *r);

/* Frees the entry at off (out of the index already) and lets go of the
** references it holds. In a dirty section. */
static void entry_discard(op *o, uint64_t off) {
  shent *e = AT(o, off);
  for (uint32_t i = 0; i < e->nrefs; i++) {
    shref *r = &e->refs[i];
    if (r->token == tok(o)) drop_later(o, (cobj *)(uintptr_t)r->ptr);
    else if (r->token != 0) defer_push(o, r);
  }
  shheap_free(&o->h->heap, o->base, off);
}

/* Puts the entry at off, made for k, in k's slot s (from find_slot):
** it replaces k's old entry (discarded), or, with s NULL, takes the slot
** ins. 0, or -1 when the index cannot grow (nothing changed: the caller
** frees off). In a dirty section. */
static int publish(op *o, const skey *k, shslot *s, shslot *ins,
                   uint64_t off) {
  shhdr *h = o->h;
  shent *e = AT(o, off);
  if (s) {
    shent *old = AT(o, s->off);
    uint64_t prev = s->off;
    h->count += (e->vlen != VNONE) - (old->vlen != VNONE);
    s->off = off;
    entry_discard(o, prev);
    return 0;
  }
  if ((h->slots + 1) * 2 > index_of(o)->cap) {
    if (index_resize(o, cap_for(h->nent + 1)) != 0) return -1;
    find_slot(o, k, &ins);
  }
  if (ins->off == SLOT_EMPTY) h->slots++;
  ins->hash = k->hash;
  ins->off = off;
  h->nent++;
  h->count += e->vlen != VNONE;
  return 0;
}

/* Takes k's entry out of the index and discards it. In a dirty section. */
static void unpublish(op *o, shslot *s) {
  shhdr *h = o->h;
  shent *e = AT(o, s->off);
  uint64_t off = s->off;
  if (e->vlen != VNONE) {
    lua_Integer i = key_index(ekey(e), e->klen);
    h->count--;
    if (i >= 1 && (uint64_t)i <= h->border) h->border = (uint64_t)i - 1;
  }
  s->off = SLOT_TOMB;
  h->nent--;
  entry_discard(o, off);
  if (h->nent * 16 < index_of(o)->cap && index_of(o)->cap > MINCAP)
    index_resize(o, cap_for(h->nent));   /* no room: it stays as it is */
}

/* ------------------------------------------------------------ deferred */

/* Leaves the release of r's object to the process holding it. When the
** list grows long, the records of dead processes go first. In a dirty
** section; out of room, the reference is lost (its process leaks it). */
static void defer_push(op *o, const shref *r) {
  shhdr *h = o->h;
  uint64_t off;
  shdefer *d;
  if (h->ndefer >= 64) {
    uint64_t *link = &h->defer;
    while (*link) {
      shdefer *x = AT(o, *link);
      if (kill(x->pid, 0) != 0 && errno == ESRCH) {
        uint64_t dead = *link;
        *link = x->next;
        h->ndefer--;
        shheap_free(&h->heap, o->base, dead);
      } else {
        link = &x->next;
      }
    }
  }
  off = shheap_alloc(&h->heap, o->base, sizeof *d);
  if (off == 0) return;
  d = AT(o, off);
  d->token = r->token;
  d->ptr = r->ptr;
  d->pid = r->pid;
  d->next = h->defer;
  h->defer = off;
  h->ndefer++;
  h->defergen++;
}

/* Takes this process's deferred releases (all: also when the list did
** not change since it last looked). */
static void drain(op *o, int all) {
  shhdr *h = o->h;
  uint64_t *link = &h->defer;
  if (!all && h->defergen == o->t->defergen) return;
  o->t->defergen = h->defergen;
  if (!o->t->stored) return;      /* none can be ours */
  begin(o);
  while (*link) {
    shdefer *x = AT(o, *link);
    if (x->token == tok(o)) {
      uint64_t off = *link;
      drop_later(o, (cobj *)(uintptr_t)x->ptr);
      *link = x->next;
      h->ndefer--;
      shheap_free(&h->heap, o->base, off);
    } else {
      link = &x->next;
    }
  }
  end(o);
}

/* ------------------------------------------------------------ recovery */

/* The last holder of the lock died while changing the structure: makes
** the heap again from the blocks still reached (the index, its entries,
** the deferred list), and the counts from the index. Entries and the
** index are published whole, so what is reached is whole. */
static void recover(op *o) {
  shhdr *h = o->h;
  shheap *hp = &h->heap;
  shindex *ix = NULL;
  uint64_t *live, n = 0, nindex = 0, nentries = 0, cap = 0, i, j;
  if (shheap_valid(hp, o->base, h->index)) {
    ix = index_of(o);
    cap = ix->cap;
    if (cap < MINCAP || (cap & (cap - 1)) != 0 ||
        sizeof(shindex) + cap * sizeof(shslot) >
            shheap_size(o->base, h->index)) {
      ix = NULL;
      cap = 0;
    }
  }
  live = malloc((cap + 4 + h->ndefer) * sizeof *live);
  if (live == NULL) return;         /* stays dirty: the next holder tries */
  if (ix) live[n++] = h->index, nindex = 1;
  else h->index = 0;
  for (i = 0; i < cap; i++) {
    uint64_t off = ix->slot[i].off;
    shent *e;
    if (off <= SLOT_TOMB) continue;
    if (!shheap_valid(hp, o->base, off)) {
      ix->slot[i].off = SLOT_TOMB;
      continue;
    }
    e = AT(o, off);
    /* an update lock taken half-way (the word, not yet the pid) */
    if (atomic_load(&e->ulock.word) && atomic_load(&e->ulock.pid) <= 0)
      atomic_store(&e->ulock.word, 0);
    if (e->vlen == VNONE && atomic_load(&e->ulock.word) == 0) {
      ix->slot[i].off = SLOT_TOMB;  /* a placeholder no update holds */
    } else {
      live[n++] = off;
      nentries++;
    }
  }
  {                                 /* the deferred list, while it is whole
                                       (one more than counted: the count
                                       may not have caught up) */
    uint64_t *link = &h->defer, k = 0;
    while (*link && k <= h->ndefer && shheap_valid(hp, o->base, *link)) {
      live[n++] = *link;
      link = &((shdefer *)AT(o, *link))->next;
      k++;
    }
    *link = 0;
    h->ndefer = k;
  }
  if (shheap_rebuild(hp, o->base, live, n) != 0) {
    free(live);
    return;
  }
  /* blocks the rebuild refused (none, unless the heap was overwritten):
  ** the records that named them go */
  j = 0;
  if (ix && live[j++] == 0) ix = NULL, cap = 0, h->index = 0;
  for (i = 0; i < cap; i++) {
    if (ix->slot[i].off <= SLOT_TOMB) continue;
    if (live[j++] == 0) ix->slot[i].off = SLOT_TOMB;
  }
  j = nindex + nentries;            /* the deferred nodes come last */
  {
    uint64_t *link = &h->defer;
    while (*link) {
      if (live[j++] == 0) {
        *link = 0;
        break;
      }
      link = &((shdefer *)AT(o, *link))->next;
    }
  }
  free(live);
  h->count = h->nent = h->slots = h->border = 0;
  for (i = 0; i < cap; i++) {
    uint64_t off = ix->slot[i].off;
    shent *e;
    if (off == SLOT_EMPTY) continue;
    h->slots++;
    if (off == SLOT_TOMB) continue;
    e = AT(o, off);
    h->nent++;
    h->count += e->vlen != VNONE;
  }
  if (h->index == 0) {
    uint64_t off = shheap_alloc(hp, o->base,
                                sizeof(shindex) + MINCAP * sizeof(shslot));
    if (off == 0) return;
    ix = AT(o, off);
    ix->cap = MINCAP;
    memset(ix->slot, 0, MINCAP * sizeof(shslot));
    h->index = off;
  }
  h->defergen++;
  end(o);
  atomic_fetch_add(&conc_shared_recoveries, 1);
}

/* ------------------------------------------------------------ values */

static shtab *check_shared(lua_State *L) {
  return (shtab *)obj_check(L, 1, K_SHARED);
}

/* Why a value could not be read: the object it names. */
typedef struct badref {
  int kind;
  int64_t label;
} badref;

/* Takes a reference on each object e's value names, into refs; 0, or
** -1 (nothing held) when one is not in this process: bad says which. */
static int entry_refs(op *o, shent *e, cobj **refs, badref *bad) {
  for (uint32_t i = 0; i < e->nrefs; i++) {
    shref *r = &e->refs[i];
    cobj *obj = NULL;
    if (r->token == tok(o)) {
      obj = (cobj *)(uintptr_t)r->ptr;
      obj_retain(obj);
    } else if (r->shm) {
      obj = shm_lookup(r->uid);
    }
    if (obj == NULL) {
      bad->kind = r->kind;
      bad->label = r->label;
      for (uint32_t j = 0; j < i; j++) drop_later(o, refs[j]);
      return -1;
    }
    refs[i] = obj;
  }
  return 0;
}

/* A message holding a copy of e's value and a reference on each object
** it names; NULL (nothing held) when out of memory or when an object is
** not in this process (then bad->kind >= 0). */
static msg *entry_value(op *o, shent *e, badref *bad) {
  msg *m = msg_new((size_t)e->vlen, (int)e->nrefs);
  bad->kind = -1;
  if (m == NULL) return NULL;
  if (entry_refs(o, e, m->refs, bad) != 0) {
    free(m);
    return NULL;
  }
  m->nrefs = (int)e->nrefs;
  memcpy(m->data, evalue(e), (size_t)e->vlen);
  return m;
}

/* A read's copy of a small value, taken under the lock into the caller's
** stack: no allocation while the lock is held, and none at all when the
** value names no object (it is decoded from there). */
typedef struct vcopy {
  size_t n;
  int nrefs;
  cobj *refs[4];
  char bytes[192];
} vcopy;

/* Under the lock: copies e's value into c if it is small (1), else into
** a message (*m, 0); -1 as entry_value's NULL. */
static int entry_copy(op *o, shent *e, vcopy *c, msg **m, badref *bad) {
  bad->kind = -1;
  if (e->vlen > sizeof c->bytes || e->nrefs > 4) {
    *m = entry_value(o, e, bad);
    return *m ? 0 : -1;
  }
  if (entry_refs(o, e, c->refs, bad) != 0) return -1;
  c->n = (size_t)e->vlen;
  c->nrefs = (int)e->nrefs;
  memcpy(c->bytes, evalue(e), c->n);
  return 1;
}

/* After the lock: the message of a small copy; NULL out of memory (the
** references released). */
static msg *copy_msg(vcopy *c) {
  msg *m = msg_new(c->n, c->nrefs);
  if (m == NULL) {
    for (int i = 0; i < c->nrefs; i++) obj_release(c->refs[i]);
    return NULL;
  }
  memcpy(m->refs, c->refs, (size_t)c->nrefs * sizeof *c->refs);
  m->nrefs = c->nrefs;
  memcpy(m->data, c->bytes, c->n);
  return m;
}

static int raise_bad(lua_State *L, const badref *bad) {
  if (bad->kind < 0) return luaL_error(L, "%s", NOMEM);
  return luaL_error(L, "%s %I belongs to another process",
                    bad->kind < K_NKINDS ? conc_kinds[bad->kind]->name
                                         : "object",
                    (LUAI_UACINT)bad->label);
}

static int shared_index(lua_State *L) {
  shtab *t = check_shared(L);
  skey k;
  op o;
  shent *e;
  msg *m = NULL;
  badref bad = {-1, 0};
  vcopy c;
  int r = -2;                       /* -2: no value */
  key_get(L, 2, &k);
  if (op_lock(&o, t)) return luaL_error(L, "%s", NOMEM);
  e = find(&o, &k);
  if (e && e->vlen != VNONE) r = entry_copy(&o, e, &c, &m, &bad);
  op_unlock(&o);
  if (r == 1 && c.nrefs == 0) {     /* a Lua error now leaves nothing held */
    char err[160];
    int n = marshal_decode(L, conc_cs(L), c.bytes, c.n, NULL, 0, 0, err,
                           sizeof err);
    if (n < 0) return luaL_error(L, "%s", err);
    return n;
  }
  if (r == 1 && (m = copy_msg(&c)) == NULL) return luaL_error(L, "%s", NOMEM);
  if (r >= 0) return msg_push(L, conc_cs(L), m);
  if (r == -1) return raise_bad(L, &bad);
  lua_pushnil(L);
  return 1;
}

/* __index: the methods first, then the data. */
static int shared_meta_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL) return 1;
    lua_pop(L, 1);
  }
  return shared_index(L);
}

/* ------------------------------------------------------------ waiting */

static const char SELF_UPDATE[] =
    "a shared key cannot be changed inside its own update";

static int held_by_me(shent *e) {
  return atomic_load(&e->ulock.word) == conc_gettid() &&
         atomic_load(&e->ulock.pid) == (int32_t)conc_getpid();
}

typedef struct idlewait {
  op *o;
  const skey *k;
  int nolock;                       /* op_relock failed: not held */
} idlewait;

/* sync_wait's test: takes the lock and keeps it when k is not held by an
** update of another thread. */
static int key_idle(void *state, void *arg) {
  idlewait *w = state;
  shent *e;
  CONC_UNUSED(arg);
  if (op_relock(w->o)) return w->nolock = 1;
  e = find(w->o, w->k);
  if (e == NULL || atomic_load(&e->ulock.word) == 0 || held_by_me(e))
    return 1;
  slock_unlock(&w->o->h->lock);
  return 0;
}

/* sync_wait's quiet-spell check: takes over the key from a dead update,
** whose placeholder (if it had no value) goes. */
static int key_owner_check(void *state, void *arg) {
  idlewait *w = state;
  shslot *s;
  int dead = 0;
  CONC_UNUSED(arg);
  if (op_relock(w->o)) return 0;
  s = find_slot(w->o, w->k, NULL);
  if (s) {
    shent *e = AT(w->o, s->off);
    dead = slock_owner_dead(&e->ulock);
    if (dead && e->vlen == VNONE) {
      begin(w->o);
      unpublish(w->o, s);
      end(w->o);
    }
  }
  slock_unlock(&w->o->h->lock);
  if (dead) bump(&w->o->h->seq, &w->o->h->nwait, INT32_MAX);  /* the others */
  return 0;
}

/* With the lock held: waits until no update of another thread holds k
** (the lock is let go meanwhile), and returns with it held, k's slot in
** *s and where it would go in *ins (as find_slot). NULL, or SELF_UPDATE
** (an update of this thread holds k: it would wait for itself), or a
** stop reason or NOMEM (then the lock is not held). */
static const char *wait_held(op *o, cstate *cs, const skey *k, shslot **s,
                             shslot **ins, shent *e) {
  idlewait w = {o, k, 0};
  deadline d;
  const char *why = NULL;
  if (held_by_me(e)) return SELF_UPDATE;
  slock_unlock(&o->h->lock);
  deadline_in(&d, -1);
  cs_waiting(cs, "shared");
  sync_wait(cs, &o->h->seq, &o->h->nwait, &d, key_idle, key_owner_check, &w,
            NULL, &why);
  cs_waiting(cs, NULL);
  if (why) return why;
  if (w.nolock) return NOMEM;
  *s = find_slot(o, k, ins);
  e = *s ? AT(o, (*s)->off) : NULL;
  if (e && atomic_load(&e->ulock.word) != 0) return SELF_UPDATE;
  return NULL;
}

static inline const char *wait_idle(op *o, cstate *cs, const skey *k,
                                    shslot **s, shslot **ins) {
  shent *e;
  *s = find_slot(o, k, ins);
  e = *s ? AT(o, (*s)->off) : NULL;
  if (e == NULL || atomic_load(&e->ulock.word) == 0) return NULL;
  return wait_held(o, cs, k, s, ins, e);
}

/* Raises what wait_idle returned, letting go of what the op holds. */
static int raise_wait(lua_State *L, op *o, cstate *cs, const char *why) {
  if (why == SELF_UPDATE) {
    op_unlock(o);
    return luaL_error(L, "%s", why);
  }
  op_done(o);
  if (why == NOMEM) return luaL_error(L, "%s", why);
  return cs_raisestop(L, cs, why);
}

/* ------------------------------------------------------------ writes */

/* Raises unless an entry for k with the value in b fits the heap. */
static void check_size(lua_State *L, shtab *t, const skey *k, const mbuf *b) {
  shhdr *h = t->so.shm;
  if (entry_size((uint32_t)k->n, (uint32_t)b->nrefs, b->n) >
      shheap_max(&h->heap)) {
    size_t n = b->n;
    mbuf_reset(&conc_cs(L)->scratch);
    luaL_error(L, "value too big for a shared table (%I bytes)",
               (LUAI_UACINT)n);
  }
}

/* Stores the value encoded in the state's scratch buffer under k, or
** removes k; waits while an update holds k. */
static void store(lua_State *L, shtab *t, const skey *k, int remove) {
  cstate *cs = conc_cs(L);
  mbuf *b = &cs->scratch;
  const char *why, *err = NULL;
  shslot *s, *ins;
  op o;
  if (op_lock(&o, t)) {
    mbuf_reset(b);
    luaL_error(L, "%s", NOMEM);
  }
  why = wait_idle(&o, cs, k, &s, &ins);
  if (why) {
    mbuf_reset(b);
    raise_wait(L, &o, cs, why);
  }
  begin(&o);
  if (remove) {
    if (s) unpublish(&o, s);
  } else {
    uint64_t off = entry_new(&o, k, b->p, b->n, b->refs, b->nrefs, &err);
    if (off && publish(&o, k, s, ins, off) != 0) {
      shheap_free(&o.h->heap, o.base, off);
      err = FULL;
    } else if (off) {
      if (b->nrefs) t->stored = 1;
      b->nrefs = 0;               /* the entry holds those references now */
    }
  }
  end(&o);
  op_unlock(&o);
  mbuf_reset(b);
  if (err) luaL_error(L, "%s", err);
}

static int shared_newindex(lua_State *L) {
  shtab *t = check_shared(L);
  cstate *cs = conc_cs(L);
  char err[512];
  skey k;
  key_get(L, 2, &k);
  if (lua_isnil(L, 3)) {
    store(L, t, &k, 1);
    return 0;
  }
  if (marshal_encode(L, cs, 3, 1, &cs->scratch, 0, "value", err,
                     sizeof err) != 0)
    return luaL_error(L, "%s", err);
  check_size(L, t, &k, &cs->scratch);
  store(L, t, &k, 0);
  return 0;
}

/* ------------------------------------------------------------ reads */

static int shared_len(lua_State *L) {
  shtab *t = check_shared(L);
  uint64_t n;
  op o;
  if (op_lock(&o, t)) return luaL_error(L, "%s", NOMEM);
  n = o.h->border;
  while (n < (uint64_t)LUA_MAXINTEGER) {
    skey k;
    shent *e;
    key_int(&k, (lua_Integer)n + 1);
    e = find(&o, &k);
    if (e == NULL || e->vlen == VNONE) break;
    n++;
  }
  o.h->border = n;
  op_unlock(&o);
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

/* A snapshot of the entries, in a box that frees what it holds when
** collected. */
typedef struct snapit {
  msg *v;
  size_t klen;
  char key[];
} snapit;

typedef struct snap {
  size_t n;
  snapit **it;
} snap;

static int snap_gc(lua_State *L) {
  snap *s = lua_touserdata(L, 1);
  for (size_t i = 0; i < s->n; i++) {
    if (s->it[i]) msg_free(s->it[i]->v);
    free(s->it[i]);
  }
  free(s->it);
  s->n = 0;
  s->it = NULL;
  return 0;
}

static int shared_pairs(lua_State *L) {
  shtab *t = check_shared(L);
  cstate *cs = conc_cs(L);
  snap *s = lua_newuserdatauv(L, sizeof *s, 0);
  badref bad = {-1, 0};
  int failed = 0;
  size_t i;
  op o;
  s->n = 0;
  s->it = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, snap_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  if (op_lock(&o, t)) return luaL_error(L, "%s", NOMEM);
  s->it = calloc(o.h->count ? o.h->count : 1, sizeof *s->it);
  if (s->it == NULL) failed = 1;
  for (i = 0; !failed && i < index_of(&o)->cap; i++) {
    shslot *sl = &index_of(&o)->slot[i];
    shent *e;
    snapit *it;
    if (sl->off <= SLOT_TOMB) continue;
    e = AT(&o, sl->off);
    if (e->vlen == VNONE || s->n == o.h->count) continue;
    it = malloc(sizeof *it + e->klen);
    if (it == NULL || (it->v = entry_value(&o, e, &bad)) == NULL) {
      free(it);
      failed = 1;
      break;
    }
    it->klen = e->klen;
    memcpy(it->key, ekey(e), e->klen);
    s->it[s->n++] = it;
  }
  op_unlock(&o);
  if (failed) return raise_bad(L, &bad);
  lua_createtable(L, 0, (int)(s->n < INT32_MAX ? s->n : 0));
  for (i = 0; i < s->n; i++) {
    msg *v = s->it[i]->v;
    key_push(L, s->it[i]->key, s->it[i]->klen);
    s->it[i]->v = NULL;
    msg_push(L, cs, v);
    lua_rawset(L, -3);
  }
  {
    int isconc;
    lua_pushcfunction(L, cfunc_lookup("_G.next", 7, &isconc));
    lua_insert(L, -2);
  }
  lua_pushnil(L);
  return 3;
}

/* ------------------------------------------------------------ incr */

/* s:incr(k [, n]): adds n (default 1) to a number (absent: 0) at once. */
static int shared_incr(lua_State *L) {
  shtab *t = check_shared(L);
  cstate *cs = conc_cs(L);
  lua_Integer ii = 0, di = 1;
  lua_Number fi = 0, df = 1;
  int dint = 1, kind = 1;
  const char *why, *err = NULL;
  char num[MARSHAL_NUMLEN];
  shslot *s, *ins;
  shent *e;
  skey k;
  op o;
  key_get(L, 2, &k);
  if (!lua_isnoneornil(L, 3)) {
    luaL_checknumber(L, 3);
    dint = lua_isinteger(L, 3);
    if (dint) di = lua_tointeger(L, 3);
    else df = lua_tonumber(L, 3);
  }
  if (op_lock(&o, t)) return luaL_error(L, "%s", NOMEM);
  why = wait_idle(&o, cs, &k, &s, &ins);
  if (why) return raise_wait(L, &o, cs, why);
  e = s ? AT(&o, s->off) : NULL;
  if (e && e->vlen != VNONE)
    kind = marshal_tonumber(evalue(e), (size_t)e->vlen, &ii, &fi);
  if (kind == 0) {
    err = "cannot incr: value is not a number";
  } else {
    if (kind == 1 && dint) {
      ii = (lua_Integer)((lua_Unsigned)ii + (lua_Unsigned)di);   /* wraps, as + */
    } else {
      fi = (kind == 1 ? (lua_Number)ii : fi) + (dint ? (lua_Number)di : df);
      kind = 2;
    }
    marshal_number(num, kind == 1, ii, fi);
    if (e && e->vlen == MARSHAL_NUMLEN &&
        memcmp(evalue(e), num, MARSHAL_NUMLEN - 8) == 0) {
      /* the same form: the number's 8 bytes change, in one store */
      memcpy(evalue(e) + MARSHAL_NUMLEN - 8, num + MARSHAL_NUMLEN - 8, 8);
    } else {
      uint64_t off;
      begin(&o);
      off = entry_new(&o, &k, num, MARSHAL_NUMLEN, NULL, 0, &err);
      if (off && publish(&o, &k, s, ins, off) != 0) {
        shheap_free(&o.h->heap, o.base, off);
        err = FULL;
      }
      end(&o);
    }
  }
  op_unlock(&o);
  if (err) return luaL_error(L, "%s", err);
  if (kind == 1) lua_pushinteger(L, ii);
  else lua_pushnumber(L, fi);
  return 1;
}

/* ------------------------------------------------------------ update */

/* What an update hands to its protected call. */
typedef struct upd {
  msg *old;                         /* the old value, or NULL */
  cstate *cs;
} upd;

/* fn(old) in a protected call: decodes the old value, calls fn, encodes
** what it returned (unless nil) into the state's scratch buffer, and
** returns it. */
static int update_call(lua_State *L) {
  upd *u = lua_touserdata(L, 2);
  msg *old = u->old;
  char err[512];
  u->old = NULL;
  lua_settop(L, 1);
  if (old) msg_push(L, u->cs, old);
  else lua_pushnil(L);
  lua_call(L, 1, 1);
  if (!lua_isnil(L, -1) &&
      marshal_encode(L, u->cs, lua_gettop(L), 1, &u->cs->scratch, 0, "value",
                     err, sizeof err) != 0)
    return luaL_error(L, "%s", err);
  return 1;
}

/* After the update's call, with the lock held: stores its outcome in
** k's entry, which this thread holds. NULL or an error message. */
static const char *update_end(op *o, const skey *k, int ok, int isnil,
                              mbuf *b) {
  shslot *s = find_slot(o, k, NULL);
  shent *e = s ? AT(o, s->off) : NULL;
  const char *err = NULL;
  if (e == NULL || !held_by_me(e))   /* it was taken for a dead one's */
    return ok ? "a shared key was taken over during its update" : NULL;
  begin(o);
  if (ok && !isnil) {
    uint64_t off = entry_new(o, k, b->p, b->n, b->refs, b->nrefs, &err);
    if (off) {
      publish(o, k, s, NULL, off);    /* it replaces: never fails */
      if (b->nrefs) o->t->stored = 1;
      b->nrefs = 0;
    } else {
      ok = 0;
    }
  }
  if (ok && isnil) unpublish(o, s);
  else if (!ok && e->vlen == VNONE) unpublish(o, s);
  else if (!ok) slock_unlock(&e->ulock);
  end(o);
  return err;
}

/* s:update(k, fn): stores fn(old value), holding k meanwhile; returns
** the new value. An error in fn leaves the old value. */
static int shared_update(lua_State *L) {
  shtab *t = check_shared(L);
  cstate *cs = conc_cs(L);
  upd u = {NULL, cs};
  badref bad = {-1, 0};
  const char *why, *err;
  shslot *s, *ins;
  shent *e;
  skey k;
  op o;
  int st;
  key_get(L, 2, &k);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  lua_pushcfunction(L, update_call);  /* what the call needs, pushed now: */
  lua_pushvalue(L, 3);                /* no allocation once k is held */
  lua_pushlightuserdata(L, &u);
  if (op_lock(&o, t)) return luaL_error(L, "%s", NOMEM);
  why = wait_idle(&o, cs, &k, &s, &ins);
  if (why) return raise_wait(L, &o, cs, why);
  e = s ? AT(&o, s->off) : NULL;
  if (e && e->vlen != VNONE) {
    u.old = entry_value(&o, e, &bad);
    if (u.old == NULL) {
      op_unlock(&o);
      return raise_bad(L, &bad);
    }
  } else if (e == NULL) {             /* a placeholder holds the key */
    uint64_t off;
    const char *room = FULL;
    begin(&o);
    off = entry_new(&o, &k, NULL, VNONE, NULL, 0, &room);
    if (off == 0 || publish(&o, &k, NULL, ins, off) != 0) {
      if (off) shheap_free(&o.h->heap, o.base, off);
      end(&o);
      op_unlock(&o);
      return luaL_error(L, "%s", room);
    }
    end(&o);
    e = AT(&o, off);
  }
  begin(&o);                          /* word then pid: see recover */
  slock_try(&e->ulock);
  end(&o);
  op_unlock(&o);
  st = lua_pcall(L, 2, 1, 0);
  msg_free(u.old);                    /* if the call never took it */
  if (op_lock(&o, t)) {               /* the table is broken: let k go */
    slock_unlock(&e->ulock);          /* (a held entry stays where it is) */
    err = NOMEM;
  } else {
    err = update_end(&o, &k, st == LUA_OK, st == LUA_OK && lua_isnil(L, -1),
                     &cs->scratch);
    op_unlock(&o);
  }
  mbuf_reset(&cs->scratch);
  bump(&o.h->seq, &o.h->nwait, INT32_MAX);
  if (err) return luaL_error(L, "%s", err);
  if (st != LUA_OK) return lua_error(L);
  return 1;
}

/* ------------------------------------------------------------ object */

static int shared_tostring(lua_State *L) {
  uint64_t n;
  op o;
  if (op_lock(&o, check_shared(L))) return luaL_error(L, "%s", NOMEM);
  n = o.h->count;
  op_unlock(&o);
  lua_pushfstring(L, n == 1 ? "<shared %I key>" : "<shared %I keys>",
                  (LUAI_UACINT)n);
  return 1;
}

/* The last reference of this process: the objects it stored are
** released (no read in this process can reach them any more). */
static void shtab_destroy(cobj *obj) {
  shtab *t = (shtab *)obj;
  op o;
  if (t->stored && op_lock(&o, t) == 0) {
    for (uint64_t i = 0; i < index_of(&o)->cap; i++) {
      shslot *s = &index_of(&o)->slot[i];
      shent *e;
      if (s->off <= SLOT_TOMB) continue;
      e = AT(&o, s->off);
      for (uint32_t j = 0; j < e->nrefs; j++)
        if (e->refs[j].token == tok(&o)) {
          drop_later(&o, (cobj *)(uintptr_t)e->refs[j].ptr);
          e->refs[j].token = 0;
        }
    }
    drain(&o, 1);
    op_unlock(&o);
  }
  shmobj_destroy(&t->so);
  free(t);
}

int shared_new(lua_State *L) {
  static const unsigned orders[] = {30, 28, 26, 24};
  shtab *t;
  shhdr *h;
  op o;
  uint64_t off;
  unsigned order = 0;
  conc_checkoptions(L, 1, NULL);
  t = calloc(1, sizeof *t);
  if (t == NULL) return luaL_error(L, "%s", NOMEM);
  for (size_t i = 0; i < sizeof orders / sizeof orders[0]; i++) {
    order = orders[i];
    if (shmobj_init(&t->so, K_SHARED, shheap_mapsize(order)) == 0) break;
  }
  if (t->so.shm == NULL) {
    free(t);
    return luaL_error(L, "cannot make a shared table: %s", strerror(errno));
  }
  h = t->so.shm;
  shheap_init(&h->heap, t->so.shm, order);
  o.base = t->so.shm;
  off = shheap_alloc(&h->heap, o.base,
                     sizeof(shindex) + MINCAP * sizeof(shslot));
  ((shindex *)AT(&o, off))->cap = MINCAP;   /* the slots: fresh zero pages */
  h->index = off;
  obj_push(L, conc_cs(L), &t->so.obj);
  obj_release(&t->so.obj);
  return 1;
}

static const luaL_Reg shared_methods[] = {
    {"incr", shared_incr}, {"update", shared_update}, {NULL, NULL}};

/* The metatable of shared handles: object.c's, plus these. */
static void shared_meta(lua_State *L, cstate *cs) {
  static const luaL_Reg meta[] = {{"__newindex", shared_newindex},
                                  {"__len", shared_len},
                                  {"__pairs", shared_pairs},
                                  {NULL, NULL}};
  cs_setfuncs(L, cs, meta);
  lua_pushlightuserdata(L, cs);
  lua_newtable(L);
  cs_setfuncs(L, cs, shared_methods);
  lua_pushcclosure(L, shared_meta_index, 2);
  lua_setfield(L, -2, "__index");
}

const kindinfo shared_kind = {
    "conc.shared", "shared", 1, 0, shtab_destroy, shared_methods, NULL,
    shared_tostring, NULL, NULL, NULL, shared_meta};
