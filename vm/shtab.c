/*
** shtab.c
** The table of conc.shared in shared memory: every thread and every
** process forked after it was made reads and writes the same one.
**
** DESIGN. The table is one MAP_SHARED mapping (why not a server:
** shared.c): a header page, then a heap (shmheap.c) that the kernel
** backs as it fills, up to 1 GiB, and gives back as it empties.
** The header holds an slock (sync.c: robust against the death of its
** holder) that guards everything, the offset of the index (open
** addressing: 16-byte slots of hash and entry offset) and the heap's
** free lists. An entry is one heap block: the key's canonical bytes, the
** value as the bytes of section 6's format, the objects the value names,
** and an update lock. A write builds a new block and publishes it by one
** store into its slot, then frees the old block; only incr changes a
** number in place, by one store. Under the lock there are only copies of
** bytes: the Lua side (shared.c) encodes before and decodes after.
** Death. A process may be killed anywhere. A holder marks the header
** dirty while it changes the structure; whoever takes the lock over from
** a dead holder finds the mark and rebuilds what could be half done: the
** heap's free lists from the blocks that the index reaches, the counts.
** Publication being one store, a dead writer leaves the table as it was
** before its write or as it is after it, never a mix. An update holds
** the entry's own slock while its function runs unlocked: other writers
** of the key sleep on the header's seq word and look, each fraction of a
** second, whether that holder still lives (conc_slock_owner_dead); the update
** of a killed process is dropped whole and the old value stays. Readers
** never wait for an update: they see the old value.
** Objects. A value names runtime objects. Those that live in shared
** memory (locks, queues, shared tables...) are found again by uid in any
** process that has them; the others (channels, threads...) only in the
** process that stored them, which the entry knows by a token (the pid
** and random bits, new in each forked child). The storing process keeps
** a reference on each object while the entry lives. An entry dropped by
** another process leaves those releases on a deferred list, which the
** owner empties at its next access.
*/

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "shtab.h"

#define PAGE 4096u
#define MINCAP 16                   /* index slots at the least */

/* A release left to the process that holds the reference. */
typedef struct shdefer {
  uint64_t next;
  uint64_t token, ptr;
  int32_t pid;
  uint32_t pad;
} shdefer;

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

/* The process token, made once an object needs it. */
static uint64_t tok(shop *o) {
  if (o->token == 0) o->token = my_token();
  return o->token;
}

const char conc_shtab_full[] = "shared table is full";
const char conc_shtab_toobig[] = "value too big for a shared table";
const char conc_shtab_nomem[] = "not enough memory";

/* Releases o once the lock is let go (leaks it if out of memory: never
** a release under the lock, where a destructor could take it again). */
static void drop_later(shop *o, cobj *obj) {
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

static void recover(shop *o);
static void drain(shop *o, int all);

static int lock_free(void *arg) {
  return atomic_load_explicit(&((slock *)arg)->word, memory_order_relaxed) == 0;
}

/* Takes the lock. 0, or -1 (the lock not held) when its last holder died
** changing the table and there is no memory to rebuild it now (the
** next holder tries again). Holds are short: a busy lock is watched for
** a moment (without writing its word) before conc_slock_lock sleeps. */
static int relock(shop *o) {
  slock *l = &o->h->lock;
  int tries = 0;
  while (!conc_slock_try(l)) {
    if (++tries > 4 || !conc_spin(&o->h->spin, lock_free, l)) {
      conc_slock_lock(l);
      break;
    }
  }
  if (atomic_load(&o->h->dirty)) {
    recover(o);
    if (atomic_load(&o->h->dirty)) {
      conc_slock_unlock(&o->h->lock);
      return -1;
    }
  }
  if (o->h->defergen != o->t->defergen) drain(o, 0);
  return 0;
}

int conc_shtab_lock(shop *o, shtab *t) {
  o->t = t;
  o->h = t->so.shm;
  o->base = t->so.shm;
  o->token = 0;                     /* made when an object needs it */
  o->drop = o->dropinl;
  o->ndrop = 0;
  o->capdrop = sizeof o->dropinl / sizeof o->dropinl[0];
  return relock(o);
}

/* Releases what the op dropped; the lock is not held any more. */
void conc_shtab_done(shop *o) {
  for (size_t i = 0; i < o->ndrop; i++) conc_obj_release(o->drop[i]);
  if (o->drop != o->dropinl) free(o->drop);
  o->drop = o->dropinl;
  o->ndrop = 0;
}

void conc_shtab_unlock(shop *o) {
  conc_slock_unlock(&o->h->lock);
  conc_shtab_done(o);
}

/* ------------------------------------------------------------ keys */

uint64_t conc_shtab_hash(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;   /* FNV-1a */
  return h;
}

void conc_shtab_key_int(skey *k, lua_Integer i) {
  k->buf[0] = 'i';
  memcpy(k->buf + 1, &i, sizeof i);
  k->p = k->buf;
  k->n = 1 + sizeof i;
  k->hash = conc_shtab_hash(k->p, k->n);
}

/* The integer of an integer key, for the border hint; 0 if none. */
static lua_Integer key_index(const char *key, size_t n) {
  lua_Integer i = 0;
  if (n == 1 + sizeof i && key[0] == 'i') memcpy(&i, key + 1, sizeof i);
  return i;
}

/* ------------------------------------------------------------ index */

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
shslot *conc_shtab_slot(shop *o, const skey *k, shslot **ins) {
  shindex *ix = shtab_index(o);
  uint64_t mask = ix->cap - 1, i = k->hash & mask;
  shslot *tomb = NULL;
  for (;;) {
    shslot *s = &ix->slot[i];
    if (s->off == SHTAB_EMPTY) {
      if (ins) *ins = tomb ? tomb : s;
      return NULL;
    }
    if (s->off == SHTAB_TOMB) {
      if (tomb == NULL) tomb = s;
    } else if (s->hash == k->hash) {
      shent *e = AT(o, s->off);
      if (e->klen == k->n && key_eq(shtab_ekey(e), k->p, k->n)) return s;
    }
    i = (i + 1) & mask;
  }
}

shent *conc_shtab_find(shop *o, const skey *k) {
  shslot *s = conc_shtab_slot(o, k, NULL);
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
static int index_resize(shop *o, uint64_t cap) {
  shhdr *h = o->h;
  shindex *ox = shtab_index(o), *nx;
  uint64_t off = conc_shheap_alloc(&h->heap, o->base,
                              sizeof(shindex) + cap * sizeof(shslot));
  if (off == 0) return -1;
  nx = AT(o, off);
  nx->cap = cap;
  memset(nx->slot, 0, cap * sizeof(shslot));
  for (uint64_t i = 0; i < ox->cap; i++) {
    shslot *s = &ox->slot[i];
    uint64_t j;
    if (s->off <= SHTAB_TOMB) continue;
    for (j = s->hash & (cap - 1); nx->slot[j].off != SHTAB_EMPTY;
         j = (j + 1) & (cap - 1))
      ;
    nx->slot[j] = *s;
  }
  off = h->index;
  h->index = (uint64_t)((char *)nx - o->base);    /* one store: published */
  h->slots = h->nent;
  conc_shheap_free(&h->heap, o->base, off);
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
static uint64_t entry_new(shop *o, const skey *k, const char *v,
                          uint64_t vlen, cobj *const *refs, int nrefs,
                          const char **why) {
  uint64_t size = shtab_entry_size(k->n, (uint64_t)nrefs, vlen);
  uint64_t off = conc_shheap_alloc(&o->h->heap, o->base, size);
  shent *e;
  if (off == 0) {
    *why = size > conc_shheap_max(&o->h->heap) ? conc_shtab_toobig
                                               : conc_shtab_full;
    return 0;
  }
  e = AT(o, off);
  e->vlen = vlen;
  e->klen = (uint32_t)k->n;
  e->nrefs = (uint32_t)nrefs;
  atomic_init(&e->ulock.word, 0);
  atomic_init(&e->ulock.seq, 0);
  atomic_init(&e->ulock.nwait, 0);
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
    r->label = (int64_t)conc_obj_number(obj);
  }
  copy_bytes(shtab_ekey(e), k->p, k->n);
  if (vlen != SHTAB_NOVALUE) copy_bytes(shtab_evalue(e), v, vlen);
  return off;
}

static void defer_push(shop *o, const shref *r);

/* Frees the entry at off (out of the index already) and lets go of the
** references it holds. In a dirty section. */
static void entry_discard(shop *o, uint64_t off) {
  shent *e = AT(o, off);
  for (uint32_t i = 0; i < e->nrefs; i++) {
    shref *r = &e->refs[i];
    if (r->token == tok(o)) drop_later(o, (cobj *)(uintptr_t)r->ptr);
    else if (r->token != 0) defer_push(o, r);
  }
  conc_shheap_free(&o->h->heap, o->base, off);
}

/* Puts the entry at off, made for k, in k's slot s (from conc_shtab_slot):
** it replaces k's old entry (discarded), or, with s NULL, takes the slot
** ins. 0, or -1 when the index cannot grow (nothing changed: the caller
** frees off). In a dirty section. */
static int publish(shop *o, const skey *k, shslot *s, shslot *ins,
                   uint64_t off) {
  shhdr *h = o->h;
  shent *e = AT(o, off);
  if (s) {
    shent *old = AT(o, s->off);
    uint64_t prev = s->off;
    h->count += (e->vlen != SHTAB_NOVALUE) - (old->vlen != SHTAB_NOVALUE);
    s->off = off;
    entry_discard(o, prev);
    return 0;
  }
  if ((h->slots + 1) * 2 > shtab_index(o)->cap) {
    if (index_resize(o, cap_for(h->nent + 1)) != 0) return -1;
    conc_shtab_slot(o, k, &ins);
  }
  if (ins->off == SHTAB_EMPTY) h->slots++;
  ins->hash = k->hash;
  ins->off = off;
  h->nent++;
  h->count += e->vlen != SHTAB_NOVALUE;
  return 0;
}

/* Takes k's entry out of the index and discards it. In a dirty section. */
void conc_shtab_unpublish(shop *o, shslot *s) {
  shhdr *h = o->h;
  shent *e = AT(o, s->off);
  uint64_t off = s->off;
  if (e->vlen != SHTAB_NOVALUE) {
    lua_Integer i = key_index(shtab_ekey(e), e->klen);
    h->count--;
    if (i >= 1 && (uint64_t)i <= h->border) h->border = (uint64_t)i - 1;
  }
  s->off = SHTAB_TOMB;
  h->nent--;
  entry_discard(o, off);
  if (h->nent * 16 < shtab_index(o)->cap && shtab_index(o)->cap > MINCAP)
    index_resize(o, cap_for(h->nent));   /* no room: it stays as it is */
}

const char *conc_shtab_put(shop *o, const skey *k, shslot *s, shslot *ins,
                      const char *v, uint64_t vlen, cobj *const *refs,
                      int nrefs, uint64_t *off) {
  const char *why = NULL;
  uint64_t e = entry_new(o, k, v, vlen, refs, nrefs, &why);
  if (e == 0) return why;
  if (publish(o, k, s, ins, e) != 0) {
    conc_shheap_free(&o->h->heap, o->base, e);
    return conc_shtab_full;
  }
  if (nrefs) o->t->stored = 1;
  if (off) *off = e;
  return NULL;
}

/* ------------------------------------------------------------ deferred */

/* Leaves the release of r's object to the process holding it. When the
** list grows long, the records of dead processes go first. In a dirty
** section; out of room, the reference is lost (its process leaks it). */
static void defer_push(shop *o, const shref *r) {
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
        conc_shheap_free(&h->heap, o->base, dead);
      } else {
        link = &x->next;
      }
    }
  }
  off = conc_shheap_alloc(&h->heap, o->base, sizeof *d);
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
static void drain(shop *o, int all) {
  shhdr *h = o->h;
  uint64_t *link = &h->defer;
  if (!all && h->defergen == o->t->defergen) return;
  o->t->defergen = h->defergen;
  if (!o->t->stored) return;      /* none can be ours */
  shtab_begin(o);
  while (*link) {
    shdefer *x = AT(o, *link);
    if (x->token == tok(o)) {
      uint64_t off = *link;
      drop_later(o, (cobj *)(uintptr_t)x->ptr);
      *link = x->next;
      h->ndefer--;
      conc_shheap_free(&h->heap, o->base, off);
    } else {
      link = &x->next;
    }
  }
  shtab_end(o);
}

/* ------------------------------------------------------------ recovery */

/* The last holder of the lock died while changing the structure: makes
** the heap again from the blocks still reached (the index, its entries,
** the deferred list), and the counts from the index. Entries and the
** index are published whole, so what is reached is whole. */
static void recover(shop *o) {
  shhdr *h = o->h;
  shheap *hp = &h->heap;
  shindex *ix = NULL;
  uint64_t *live, n = 0, nindex = 0, nentries = 0, cap = 0, i, j;
  if (conc_shheap_valid(hp, o->base, h->index)) {
    ix = shtab_index(o);
    cap = ix->cap;
    if (cap < MINCAP || (cap & (cap - 1)) != 0 ||
        sizeof(shindex) + cap * sizeof(shslot) >
            conc_shheap_size(o->base, h->index)) {
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
    if (off <= SHTAB_TOMB) continue;
    if (!conc_shheap_valid(hp, o->base, off)) {
      ix->slot[i].off = SHTAB_TOMB;
      continue;
    }
    e = AT(o, off);
    if (e->vlen == SHTAB_NOVALUE && atomic_load(&e->ulock.word) == 0) {
      ix->slot[i].off = SHTAB_TOMB;  /* a placeholder no update holds */
    } else {
      live[n++] = off;
      nentries++;
    }
  }
  {                                 /* the deferred list, while it is whole
                                       (one more than counted: the count
                                       may not have caught up) */
    uint64_t *link = &h->defer, k = 0;
    while (*link && k <= h->ndefer && conc_shheap_valid(hp, o->base, *link)) {
      live[n++] = *link;
      link = &((shdefer *)AT(o, *link))->next;
      k++;
    }
    *link = 0;
    h->ndefer = k;
  }
  if (conc_shheap_rebuild(hp, o->base, live, n) != 0) {
    free(live);
    return;
  }
  /* blocks the rebuild refused (none, unless the heap was overwritten):
  ** the records that named them go */
  j = 0;
  if (ix && live[j++] == 0) ix = NULL, cap = 0, h->index = 0;
  for (i = 0; i < cap; i++) {
    if (ix->slot[i].off <= SHTAB_TOMB) continue;
    if (live[j++] == 0) ix->slot[i].off = SHTAB_TOMB;
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
    if (off == SHTAB_EMPTY) continue;
    h->slots++;
    if (off == SHTAB_TOMB) continue;
    e = AT(o, off);
    h->nent++;
    h->count += e->vlen != SHTAB_NOVALUE;
  }
  if (h->index == 0) {
    uint64_t off = conc_shheap_alloc(hp, o->base,
                                sizeof(shindex) + MINCAP * sizeof(shslot));
    if (off == 0) return;
    ix = AT(o, off);
    ix->cap = MINCAP;
    memset(ix->slot, 0, MINCAP * sizeof(shslot));
    h->index = off;
  }
  h->defergen++;
  shtab_end(o);
  atomic_fetch_add(&conc_shared_recoveries, 1);
}

/* ------------------------------------------------------------ values */

/* Takes a reference on each object e's value names, into refs; 0, or
** -1 (nothing held) when one is not in this process: bad says which. */
static int entry_refs(shop *o, shent *e, cobj **refs, badref *bad) {
  for (uint32_t i = 0; i < e->nrefs; i++) {
    shref *r = &e->refs[i];
    cobj *obj = NULL;
    if (r->token == tok(o)) {
      obj = (cobj *)(uintptr_t)r->ptr;
      conc_obj_retain(obj);
    } else if (r->shm) {
      obj = conc_shm_lookup(r->uid);
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
msg *conc_shtab_value(shop *o, shent *e, badref *bad) {
  msg *m = conc_msg_new((size_t)e->vlen, (int)e->nrefs);
  bad->kind = -1;
  if (m == NULL) return NULL;
  if (entry_refs(o, e, m->refs, bad) != 0) {
    free(m);
    return NULL;
  }
  m->nrefs = (int)e->nrefs;
  memcpy(m->data, shtab_evalue(e), (size_t)e->vlen);
  return m;
}

/* Under the lock: copies e's value into c if it is small (1), else into
** a message (*m, 0); -1 as conc_shtab_value's NULL. */
int conc_shtab_copy(shop *o, shent *e, vcopy *c, msg **m, badref *bad) {
  bad->kind = -1;
  if (e->vlen > sizeof c->bytes || e->nrefs > 4) {
    *m = conc_shtab_value(o, e, bad);
    return *m ? 0 : -1;
  }
  if (entry_refs(o, e, c->refs, bad) != 0) return -1;
  c->n = (size_t)e->vlen;
  c->nrefs = (int)e->nrefs;
  memcpy(c->bytes, shtab_evalue(e), c->n);
  return 1;
}

/* After the lock: the message of a small copy; NULL out of memory (the
** references released). */
msg *conc_shtab_copy_msg(vcopy *c) {
  msg *m = conc_msg_new(c->n, c->nrefs);
  if (m == NULL) {
    for (int i = 0; i < c->nrefs; i++) conc_obj_release(c->refs[i]);
    return NULL;
  }
  memcpy(m->refs, c->refs, (size_t)c->nrefs * sizeof *c->refs);
  m->nrefs = c->nrefs;
  memcpy(m->data, c->bytes, c->n);
  return m;
}

/* ------------------------------------------------------------ waiting */

const char conc_shtab_self_update[] =
    "a shared key cannot be changed inside its own update";

int conc_shtab_held(shent *e) {
  return atomic_load(&e->ulock.word) == conc_owner_self();
}

typedef struct idlewait {
  shop *o;
  const skey *k;
  int nolock;                       /* relock failed: not held */
} idlewait;

/* conc_sync_wait's test: takes the lock and keeps it when k is not held by an
** update of another thread. */
static int key_idle(void *state, void *arg) {
  idlewait *w = state;
  shent *e;
  CONC_UNUSED(arg);
  if (relock(w->o)) return w->nolock = 1;
  e = conc_shtab_find(w->o, w->k);
  if (e == NULL || atomic_load(&e->ulock.word) == 0 || conc_shtab_held(e))
    return 1;
  conc_slock_unlock(&w->o->h->lock);
  return 0;
}

/* conc_sync_wait's quiet-spell check: takes over the key from a dead update,
** whose placeholder (if it had no value) goes. */
static int key_owner_check(void *state, void *arg) {
  idlewait *w = state;
  shslot *s;
  int dead = 0;
  CONC_UNUSED(arg);
  if (relock(w->o)) return 0;
  s = conc_shtab_slot(w->o, w->k, NULL);
  if (s) {
    shent *e = AT(w->o, s->off);
    dead = conc_slock_owner_dead(&e->ulock);
    if (dead && e->vlen == SHTAB_NOVALUE) {
      shtab_begin(w->o);
      conc_shtab_unpublish(w->o, s);
      shtab_end(w->o);
    }
  }
  conc_slock_unlock(&w->o->h->lock);
  if (dead)
    conc_bump(&w->o->h->seq, &w->o->h->nwait, INT32_MAX); /* the others */
  return 0;
}

const char *conc_shtab_wait_held(shop *o, cstate *cs, const skey *k, shslot **s,
                            shslot **ins, shent *e) {
  idlewait w = {o, k, 0};
  deadline d;
  const char *why = NULL;
  if (conc_shtab_held(e)) return conc_shtab_self_update;
  conc_slock_unlock(&o->h->lock);
  conc_deadline_in(&d, -1);
  conc_cs_waiting(cs, "shared");
  conc_sync_wait(cs, &o->h->seq, &o->h->nwait, &d, key_idle, key_owner_check,
                 &w, NULL, &why);
  conc_cs_waiting(cs, NULL);
  if (why) return why;
  if (w.nolock) return conc_shtab_nomem;
  *s = conc_shtab_slot(o, k, ins);
  e = *s ? AT(o, (*s)->off) : NULL;
  if (e && atomic_load(&e->ulock.word) != 0) return conc_shtab_self_update;
  return NULL;
}


/* ------------------------------------------------------------ the table */

int conc_shtab_create(shtab *t) {
  static const unsigned orders[] = {30, 28, 26, 24};
  unsigned order = 0;
  shhdr *h;
  shop o;
  uint64_t off;
  for (size_t i = 0; i < sizeof orders / sizeof orders[0]; i++) {
    order = orders[i];
    if (conc_shmobj_init(&t->so, K_SHARED, conc_shheap_mapsize(order)) == 0)
      break;
  }
  if (t->so.shm == NULL) return -1;
  h = t->so.shm;
  conc_shheap_init(&h->heap, t->so.shm, order);
  o.base = t->so.shm;
  off = conc_shheap_alloc(&h->heap, o.base,
                     sizeof(shindex) + MINCAP * sizeof(shslot));
  ((shindex *)AT(&o, off))->cap = MINCAP;   /* the slots: fresh zero pages */
  h->index = off;
  return 0;
}

void conc_shtab_destroy(shtab *t) {
  shop o;
  if (t->stored && conc_shtab_lock(&o, t) == 0) {
    for (uint64_t i = 0; i < shtab_index(&o)->cap; i++) {
      shslot *s = &shtab_index(&o)->slot[i];
      shent *e;
      if (s->off <= SHTAB_TOMB) continue;
      e = AT(&o, s->off);
      for (uint32_t j = 0; j < e->nrefs; j++)
        if (e->refs[j].token == tok(&o)) {
          drop_later(&o, (cobj *)(uintptr_t)e->refs[j].ptr);
          e->refs[j].token = 0;
        }
    }
    drain(&o, 1);
    conc_shtab_unlock(&o);
  }
  conc_shmobj_destroy(&t->so);
}
