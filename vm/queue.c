/*
** queue.c
** conc.queue: many producers and consumers, across the threads of a
** process and every process forked after the queue was made.
**
** DESIGN. The queue is a ring of slots in one MAP_SHARED mapping (a
** large, lazily backed one: a slot holds a whole message, of any size up
** to half the ring). A short robust lock (slock) guards the indexes:
** 'tail' where the next slot goes, 'rnext' the next slot to take, 'head'
** the oldest slot not yet freed. A producer reserves a slot under the
** lock, copies its message with the lock released, then marks the slot
** READY; a consumer takes the first slot (FIFO: it waits while that slot
** is still being written), copies it out unlocked, then frees it; freed
** slots at the head give their space back. So messages arrive whole and
** never interleave, copies run in parallel, and nobody holds the lock
** while copying. Each slot records the id of the thread that owns it
** (writing or reading: owner.c), and a slot whose owner died is dropped
** whole, so a killed worker never blocks a queue: a consumer at the head
** of the line checks the producer of the slot it waits for (a trylock, no
** system call), senders of a full queue look for such slots before they
** give up and after each quiet spell, and the slot of a consumer killed
** while copying is freed (its message is lost with it). Telling that an
** owner died does not depend on reaping it. The index lock is taken over
** from an owner that died holding it, and the one that takes it over
** recounts 'count', the only index a death between two stores can leave
** wrong (each other one changes in a single store, and a slot is seen
** only once 'tail' has passed it). A slot that claims more than the ring
** holds is corrupt: the queue is then closed and emptied, never read
** past its end. A consumer allocates what it copies into before it takes
** a slot, so running out of memory leaves the message queued. Pages the
** ring no longer needs are given back (MADV_REMOVE, in batches: each
** give-back flushes the TLBs of every process mapping the queue), so a
** long-lived queue keeps little memory; whenever the queue is empty with
** no slot reserved or taken, position 'base' moves up to the head and the
** ring starts again at offset 0, whose first pages are never given back,
** so a queue kept nearly empty writes the same warm pages. A stream that
** its consumers keep up with is seldom empty, so it goes back to offset 0
** while its last slots are still queued: positions from there on form a
** second segment, mapped from offset 0, that grows up to the first one's
** head; one that would run into it starts a third where the first ends
** (ring_room, retire). A segment starts before its first slot and goes
** once its last slot is freed, so a slot keeps its offset. Each process
** maps the pages just ahead of where it writes or reads in one call
** (MADV_POPULATE_WRITE) instead of one fault per page. Waiters sleep
** on shared sequence words (futexes); select polls an eventfd doorbell,
** rung by producers while a select waits. 'unfinished' counts the values
** sent and not yet marked done (task_done, join): a value dropped with a
** dead producer or consumer stops counting.
*/

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "modules.h"

#define PAGE 4096u
#define SLOT_ALIGN 32u
#define HOT (1u << 20)          /* ring kept reserved ahead of the head */
/* freed pages are given back in batches this big: each give-back makes
** the kernel flush the TLBs of every process mapping the queue. Below HOT:
** a punch looks back at most HOT (advance_head), so a batch of HOT or more
** would skip the pages between the last punch and head - HOT for ever */
#define PUNCH_BATCH (128u * PAGE)
_Static_assert(PUNCH_BATCH <= HOT / 2, "a punch batch must fit well in HOT");

enum { S_RESERVED = 1, S_READY, S_TAKEN, S_FREE };

typedef struct qslot {
  _Atomic uint32_t state;
  uint32_t pad;
  uint64_t owner;               /* its owner's id while RESERVED or TAKEN */
  uint64_t len;
} qslot;

typedef struct qhdr {
  slock lock;
  _Atomic uint32_t dataseq, datanwait;     /* consumers sleep here */
  _Atomic uint32_t spaceseq, spacenwait;   /* producers sleep here */
  _Atomic uint32_t nselect;                /* selects polling the doorbell */
  _Atomic uint32_t closed;
  _Atomic uint64_t tail;
  uint64_t head, rnext;
  _Atomic int64_t count;                   /* reserved or ready */
  int64_t cap;                             /* -1: unbounded */
  uint64_t ringsz;
  uint64_t punched;                        /* pages below: given back */
  /* position base is at ring offset 0: moved up to the head whenever the
  ** queue is empty with nothing reserved (rebase), so that a queue kept
  ** nearly empty writes the same few pages again and again */
  uint64_t base;
  _Atomic uint32_t spin;                   /* conc_spin's budget */
  /* task_done and join: values sent and not yet marked done; joiners
  ** sleep on joinseq */
  _Atomic int64_t unfinished;
  _Atomic uint32_t joinseq, joinnwait;
  /* a stream that the consumers keep up with goes back to offset 0 while
  ** its last slots are still queued (ring_room): positions from segb on
  ** are at offset pos - segb, and, if that second segment runs into the
  ** first one's head, from segc on at offc + pos - segc; 0: none. Set and
  ** cleared under the lock, before (after) any slot of theirs is used */
  _Atomic uint64_t segb, segc;
  uint64_t offc;
} qhdr;

/* n values will never be marked done (dropped with a dead producer or
** consumer, or with a corrupt queue): they stop counting for join. Never
** below 0 (a death between two stores may have left it short). */
static void qundone(qhdr *h, int64_t n) {
  int64_t u = atomic_load(&h->unfinished), v;
  do {
    v = u > n ? u - n : 0;
  } while (!atomic_compare_exchange_weak(&h->unfinished, &u, v));
  if (v == 0 && u != 0) conc_bump(&h->joinseq, &h->joinnwait, INT32_MAX);
}

typedef struct queue {
  shmobj so;
  int efd;                      /* the doorbell, inherited by fork */
  /* this process's page tables map the ring up to these positions, for
  ** sending and for receiving (ring_ahead); fpid: the process they are
  ** of (a forked child starts again from 0) */
  _Atomic uint64_t wfront, rfront;
  /* and the ring's first pages, offsets below kfront (< KEEP: never given
  ** back, so mapped for good) */
  _Atomic uint64_t kfront;
  _Atomic uint32_t fpid;
} queue;

#define RING(h) ((char *)(h) + PAGE)

static uint64_t slot_size(uint64_t len) {
  return (sizeof(qslot) + len + SLOT_ALIGN - 1) & ~(uint64_t)(SLOT_ALIGN - 1);
}

/* The ring offset of a position. The base moves only while no slot is
** reserved or taken, or (retire) no slot below the new base is, and a
** segment starts before its first slot is reserved: a position a thread
** holds keeps its offset. */
static uint64_t off_of(const qhdr *h, uint64_t pos) {
  uint64_t s = atomic_load_explicit(&h->segc, memory_order_acquire);
  if (s && pos >= s) return (h->offc + (pos - s)) % h->ringsz;
  s = atomic_load_explicit(&h->segb, memory_order_acquire);
  if (s && pos >= s) return pos - s;
  return (pos - h->base) % h->ringsz;
}

static qslot *slot_at(qhdr *h, uint64_t pos) {
  return (qslot *)(void *)(RING(h) + off_of(h, pos));
}

/* Copies between a private buffer and the ring at pos, wrapping. */
static void ring_put(qhdr *h, uint64_t pos, const char *p, size_t n) {
  uint64_t off = off_of(h, pos), first = h->ringsz - off;
  if (first >= n) {
    memcpy(RING(h) + off, p, n);
  } else {
    memcpy(RING(h) + off, p, first);
    memcpy(RING(h), p + first, n - first);
  }
}

static void ring_get(qhdr *h, uint64_t pos, char *p, size_t n) {
  uint64_t off = off_of(h, pos), first = h->ringsz - off;
  if (first >= n) {
    memcpy(p, RING(h) + off, n);
  } else {
    memcpy(p, RING(h) + off, first);
    memcpy(p + first, RING(h), n - first);
  }
}

/* Gives back the pages of positions [from, to) of the ring, but for the
** first KEEP bytes of the ring, where a rebased queue writes again. */
#define KEEP (64u * PAGE)

/* Gives back the whole pages of [from, to), positions of one segment. */
static void punch_piece(qhdr *h, uint64_t from, uint64_t to) {
  uint64_t off = off_of(h, from), n = to - from;
  while (n > 0) {
    uint64_t k = n < h->ringsz - off ? n : h->ringsz - off;
    uint64_t lo = (off + PAGE - 1) & ~(uint64_t)(PAGE - 1);
    uint64_t hi = (off + k) & ~(uint64_t)(PAGE - 1);
    if (lo < KEEP) lo = KEEP;
    if (hi > lo) madvise(RING(h) + lo, (size_t)(hi - lo), MADV_REMOVE);
    n -= k;
    off = (off + k) % h->ringsz;
  }
}

static void ring_punch(qhdr *h, uint64_t from, uint64_t to) {
  if (from < h->base) from = h->base;
  while (from < to) {
    uint64_t lim = to, b = atomic_load(&h->segb), c = atomic_load(&h->segc);
    if (b > from && b < lim) lim = b;
    if (c > from && c < lim) lim = c;
    punch_piece(h, from, lim);
    from = lim;
  }
}

/* The position where the page of pos starts, in pos's segment. */
static uint64_t page_start(const qhdr *h, uint64_t pos) {
  uint64_t p = pos - off_of(h, pos) % PAGE;
  uint64_t b = atomic_load(&h->segb), c = atomic_load(&h->segc);
  if (c && pos >= c && p < c) p = c;
  else if (b && pos >= b && p < b) p = b;
  return p;
}

/* With the lock held: a segment whose slots are all freed goes, and the
** next one is then reached from the base (the same offsets). The first
** segment's freed pages go back then, but for those the second one
** spans already (it wrote them again). */
static void retire(qhdr *h) {
  uint64_t b = atomic_load(&h->segb), c = atomic_load(&h->segc);
  if (b && h->head >= b) {
    uint64_t from = h->punched, bend = (c ? c : atomic_load(&h->tail)) - b;
    if (h->head >= HOT && from < h->head - HOT) from = h->head - HOT;
    if (from < h->base) from = h->base;
    if (from < b && off_of(h, from) + (b - from) != (b - h->base) % h->ringsz)
      from = b - (b - h->base) % h->ringsz;  /* from where this lap began */
    if (from < b && off_of(h, from) < bend) {
      uint64_t skip = bend - off_of(h, from);
      from = skip < b - from ? from + skip : b;
    }
    ring_punch(h, from, b);
    h->base = b;
    h->punched = b;
    atomic_store_explicit(&h->segb, 0, memory_order_release);
    b = 0;
  }
  if (!b && c && h->head >= c) {
    h->base = c - h->offc;
    h->punched = c;
    atomic_store_explicit(&h->segc, 0, memory_order_release);
  }
}

/* Before this process touches the ring at positions [pos, end): maps the
** pages from there to AHEAD past end in one call, where touching them
** would fault once per page. On a VM a fault costs microseconds, and
** with 1 KiB messages each process would take one every four messages
** (the ring is 1 GiB of positions; pages behind the head are given
** back, so each page is new when written). MADV_POPULATE_WRITE (Linux
** 5.14) changes no byte; without it the pages fault in as before. */
#define AHEAD (64u * 1024u)

static _Atomic int populate_off;

static void ring_ahead(queue *q, _Atomic uint64_t *front, uint64_t pos,
                       uint64_t end) {
  qhdr *h = q->so.shm;
  uint32_t me = (uint32_t)conc_getpid();
  uint64_t from, to, f;
  if (atomic_load_explicit(&populate_off, memory_order_relaxed)) return;
  if (atomic_load(&q->fpid) != me) {      /* first use in this process */
    atomic_store(&q->wfront, 0);
    atomic_store(&q->rfront, 0);
    atomic_store(&q->kfront, 0);
    atomic_store(&q->fpid, me);
  }
  if (off_of(h, pos) + (end - pos) <= atomic_load(&q->kfront)) return;
  f = atomic_load(front);
  if (end <= f) return;
  from = (pos > f ? pos : f) & ~(uint64_t)(PAGE - 1);
  to = (end + AHEAD + PAGE - 1) & ~(uint64_t)(PAGE - 1);
  if (to - from > h->ringsz) to = from + h->ringsz;
  atomic_store(front, to);                /* racing threads: both map */
  while (from < to) {
    uint64_t off = off_of(h, from) & ~(uint64_t)(PAGE - 1), n = to - from;
    if (n > h->ringsz - off) n = h->ringsz - off;
    if (madvise(RING(h) + off, (size_t)n, MADV_POPULATE_WRITE) != 0 &&
        (errno == EINVAL || errno == ENOSYS)) {
      atomic_store(&populate_off, 1);     /* an older kernel */
      return;
    }
    if (off <= atomic_load(&q->kfront) && off < KEEP)
      atomic_store(&q->kfront, off + n < KEEP ? off + n : KEEP);
    from += n;
  }
}

/* The largest message a slot may hold. */
static uint64_t max_len(const qhdr *h) {
  return (h->ringsz - HOT) / 2 - sizeof(qslot);
}

/* Whether the slot at pos, below tail, is one a producer could have
** written: it fits in what lies before tail. */
static int slot_sane(qhdr *h, uint64_t pos, uint64_t tail) {
  const qslot *s = slot_at(h, pos);
  return s->len <= max_len(h) && slot_size(s->len) <= tail - pos;
}

/* With the lock held: frees slots at the head, gives back pages. Slots
** taken by a consumer that died are freed too (their message is lost
** with it). */
static void advance_head(qhdr *h) {
  uint64_t old = h->head;
  while (h->head < h->rnext) {
    qslot *s = slot_at(h, h->head);
    uint32_t st = atomic_load(&s->state);
    if (st == S_TAKEN && conc_owner_dead(s->owner)) {
      atomic_store(&s->state, S_FREE);
      st = S_FREE;
      qundone(h, 1);
    }
    if (st != S_FREE) break;
    h->head += slot_size(s->len);
  }
  if (h->head != old) {
    retire(h);
    /* producers may reserve up to head + ringsz - HOT, so the freed
    ** positions from head - HOT on cannot be in use again yet: their
    ** pages can go (older ones were handled by an earlier call, or by
    ** qfinish for a big message) */
    uint64_t from = h->punched;
    if (h->head >= HOT && from < h->head - HOT) from = h->head - HOT;
    int empty = h->head == h->rnext && h->head == atomic_load(&h->tail);
    /* (not while a second segment runs: it writes the first one's freed
    ** pages again) */
    if (!atomic_load(&h->segb) &&
        (h->head - from >= PUNCH_BATCH ||
         (empty && h->head - h->base > KEEP))) {
      ring_punch(h, from, h->head);
      /* the page of the head is in use still: the next punch takes it */
      h->punched = page_start(h, h->head);
    }
    if (empty && h->head != h->base) {
      /* nothing reserved or taken: start again at offset 0 (punched
      ** first: a punch never looks below the base) */
      h->punched = h->head;
      h->base = h->head;
    }
    conc_bump(&h->spaceseq, &h->spacenwait, INT32_MAX);
  }
}

/* With the lock held: whether a slot of need bytes fits at the tail.
** With one segment, a slot that would run past KEEP goes to offset 0
** instead when the queued slots (one run, not across the ring's end)
** leave room there: a second segment begins, so a stream that the
** consumers keep up with writes the same warm pages over and over, where
** running on would take a fresh page every few messages and give one
** back. The second segment grows up to the first one's head; if it would
** run into it, a third begins where the first ends and runs on through
** fresh pages (a consumer that fell behind), never past the ring's end
** while the second is in use. */
static int ring_room(qhdr *h, uint64_t need) {
  uint64_t tail = atomic_load(&h->tail), b, c, toff, hoff;
  if (tail + need - h->head > h->ringsz - HOT) return 0;
  retire(h);
  b = atomic_load(&h->segb);
  c = atomic_load(&h->segc);
  if (c) return h->offc + (tail - c) + need <= h->ringsz;
  if (b) {
    uint64_t aend = (b - h->base) % h->ringsz;   /* the first one's end */
    if ((tail - b) + need <= off_of(h, h->head)) return 1;
    if (aend + need > h->ringsz) return 0;
    h->offc = aend;
    atomic_store_explicit(&h->segc, tail, memory_order_release);
    return 1;
  }
  toff = off_of(h, tail);
  hoff = off_of(h, h->head);
  if (toff + need > KEEP && need <= KEEP / 4 && h->head < tail &&
      tail - h->head <= KEEP && hoff >= need &&
      hoff + (tail - h->head) == toff)
    atomic_store_explicit(&h->segb, tail, memory_order_release);
  return 1;
}

/* With the lock held: drops the slots of producers that died while
** writing them, anywhere in the queue (a consumer drops the one at the
** head of the line itself); 1 if it dropped any. */
static int drop_orphans(qhdr *h) {
  uint64_t pos = h->rnext, tail = atomic_load(&h->tail);
  int dropped = 0;
  while (pos < tail && slot_sane(h, pos, tail)) {
    qslot *s = slot_at(h, pos);
    if (atomic_load(&s->state) == S_RESERVED && conc_owner_dead(s->owner)) {
      atomic_store(&s->state, S_FREE);
      atomic_fetch_sub(&h->count, 1);
      qundone(h, 1);
      dropped = 1;
    }
    pos += slot_size(s->len);
  }
  if (dropped) conc_bump(&h->spaceseq, &h->spacenwait, INT32_MAX);
  return dropped;
}

/* Takes the queue's lock. When it was taken over from a process that
** died holding it, the section that process was in may be half done:
** each index changes in one store and a slot counts only once 'tail' has
** passed it, so only 'count' can be wrong. It is counted again, and
** every waiter is woken to look again. */
static void qlock(qhdr *h) {
  uint64_t pos, tail;
  int64_t n = 0;
  if (!conc_slock_lock(&h->lock)) return;
  pos = h->rnext;
  tail = atomic_load(&h->tail);
  while (pos < tail && slot_sane(h, pos, tail)) {
    qslot *s = slot_at(h, pos);
    uint32_t st = atomic_load(&s->state);
    if (st == S_RESERVED || st == S_READY) n++;
    pos += slot_size(s->len);
  }
  atomic_store(&h->count, n);
  conc_bump(&h->dataseq, &h->datanwait, INT32_MAX);
  conc_bump(&h->spaceseq, &h->spacenwait, INT32_MAX);
}

static void queue_destroy(cobj *o) {
  queue *q = (queue *)o;
  conc_fd_close(q->efd);
  conc_shmobj_destroy(&q->so);
  free(q);
}

int conc_queue_new(lua_State *L) {
  lua_Integer cap = -1;
  queue *q;
  qhdr *h;
  static const uint64_t sizes[] = {1ull << 30, 1ull << 28, 1ull << 26,
                                   1ull << 24, 0};
  if (!lua_isnoneornil(L, 1)) {
    cap = luaL_checkinteger(L, 1);
    luaL_argcheck(L, cap >= 1, 1, "capacity must be positive");
  }
  q = calloc(1, sizeof *q);
  if (q == NULL) return conc_nomem(L);
  q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (q->efd < 0) {
    free(q);
    return luaL_error(L, "cannot make a queue: %s", strerror(errno));
  }
  for (int i = 0; sizes[i]; i++)
    if (conc_shmobj_init(&q->so, K_QUEUE, PAGE + sizes[i]) == 0) break;
  if (q->so.shm == NULL) {
    conc_fd_close(q->efd);
    free(q);
    return luaL_error(L, "cannot make a queue: %s", strerror(errno));
  }
  h = q->so.shm;
  h->ringsz = q->so.size - PAGE;
  h->cap = cap;
  conc_obj_push(L, conc_cs(L), &q->so.obj);
  conc_obj_release(&q->so.obj);
  return 1;
}

static queue *check_queue(lua_State *L) {
  return (queue *)conc_obj_check(L, 1, K_QUEUE);
}

/* Sleeps on 'seq' (seen: its value before the test that failed) with the
** lock released; back with the lock held. -1 stop, 0 deadline, 1 woken,
** 2 a quiet spell passed (time to look for dead owners). */
static int qsleep(qhdr *h, cstate *cs, _Atomic uint32_t *seq,
                  _Atomic uint32_t *nwait, uint32_t seen, const deadline *d,
                  const char **why) {
  deadline slice;
  int r = 1;
  conc_slock_unlock(&h->lock);
  conc_cs_block_on(cs, seq, 1);
  atomic_fetch_add(nwait, 1);
  if ((*why = conc_cs_stopreason(cs)) != NULL) {
    r = -1;
  } else if (conc_deadline_passed(d)) {
    r = 0;
  } else {
    conc_deadline_in(&slice, 0.2);          /* then look for dead owners */
    if (!d->forever && conc_deadline_left(d) < 0.2) slice = *d;
    if (conc_futex_wait(seq, seen, &slice, 1) == ETIMEDOUT) r = 2;
  }
  atomic_fetch_sub(nwait, 1);
  conc_cs_unblock(cs);
  qlock(h);
  return r;
}

/* ------------------------------------------------------------ send */

static void ring_doorbell(queue *q) {
  uint64_t one = 1;
  ssize_t r = write(q->efd, &one, sizeof one);
  CONC_UNUSED(r);
}

/* Puts n bytes as one message. 1 sent, 0 deadline; raises otherwise. */
static int qput(lua_State *L, queue *q, cstate *cs, const char *p, size_t n,
                const deadline *d) {
  qhdr *h = q->so.shm;
  uint64_t need = slot_size(n), pos, me = conc_owner_self();
  qslot *s;
  const char *why = NULL;
  int look = 0;
  if (n > max_len(h))
    return luaL_error(L, "message too big for a queue (%I bytes)",
                      (LUAI_UACINT)n);
  qlock(h);
  for (;;) {
    uint32_t seen = atomic_load(&h->spaceseq);
    int r;
    if (atomic_load(&h->closed)) {
      conc_slock_unlock(&h->lock);
      return luaL_error(L, "send on a closed queue");
    }
    if ((h->cap < 0 || atomic_load(&h->count) < h->cap) &&
        ring_room(h, need))
      break;
    advance_head(h);
    if (atomic_load(&h->spaceseq) != seen) continue;
    /* full: before giving up, and after each quiet spell, look for what
    ** dead producers left (a scan of the queue: not at every wake-up) */
    if (look || conc_deadline_passed(d)) {
      look = 0;
      if (drop_orphans(h)) continue;
    }
    if (conc_deadline_passed(d)) {
      conc_slock_unlock(&h->lock);
      return 0;
    }
    conc_cs_waiting_obj(cs, "send", conc_obj_test(L, cs, 1));
    r = qsleep(h, cs, &h->spaceseq, &h->spacenwait, seen, d, &why);
    conc_cs_waiting(cs, NULL);
    if (r < 0) {
      conc_slock_unlock(&h->lock);
      return conc_cs_raisestop(L, cs, why);
    }
    look = r != 1;
  }
  pos = atomic_load(&h->tail);
  s = slot_at(h, pos);
  s->owner = me;
  s->len = n;
  atomic_store(&s->state, S_RESERVED);
  atomic_fetch_add(&h->unfinished, 1);
  atomic_store(&h->tail, pos + need);
  atomic_fetch_add(&h->count, 1);
  conc_slock_unlock(&h->lock);
  ring_ahead(q, &q->wfront, pos, pos + need);
  ring_put(h, pos + sizeof(qslot), p, n);
  atomic_store_explicit(&s->state, S_READY, memory_order_release);
  conc_bump(&h->dataseq, &h->datanwait, 1);
  if (atomic_load(&h->nselect)) ring_doorbell(q);
  return 1;
}

static int queue_send(lua_State *L) {
  cstate *cs = conc_cs(L);
  queue *q = check_queue(L);
  char err[512];
  deadline d;
  int r;
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "cannot send nil");
  conc_deadline_in(&d, conc_opttimeout(L, 3));
  if ((r = conc_marshal_encode(L, cs, 2, 1, &cs->scratch, MARSHAL_REMOTE,
                               "value", err, sizeof err)) != 0)
    return conc_msg_raise(L, r, err);
  r = qput(L, q, cs, cs->scratch.p, cs->scratch.n, &d);
  conc_mbuf_reset(&cs->scratch);
  lua_pushboolean(L, r);
  return 1;
}

/* ------------------------------------------------------------ recv */

enum { Q_GOT, Q_EMPTY, Q_CLOSED, Q_CORRUPT, Q_NOMEM };

/* With the lock held: takes the first ready slot (or, with take 0, says
** where it is), if the head of the line is ready. Slots of dead producers
** are dropped. A slot that cannot be one closes and empties the queue
** (Q_CORRUPT): what lies past it cannot be found. */
static int qnext_locked(qhdr *h, uint64_t *pos, int take) {
  uint64_t tail;
  while (h->rnext < (tail = atomic_load(&h->tail))) {
    qslot *s = slot_at(h, h->rnext);
    uint32_t st = atomic_load_explicit(&s->state, memory_order_acquire);
    if (!slot_sane(h, h->rnext, tail) ||
        (st != S_RESERVED && st != S_READY && st != S_TAKEN &&
         st != S_FREE)) {
      atomic_store(&h->closed, 1);
      h->rnext = h->head = tail;
      qundone(h, atomic_exchange(&h->count, 0));
      conc_bump(&h->dataseq, &h->datanwait, INT32_MAX);
      conc_bump(&h->spaceseq, &h->spacenwait, INT32_MAX);
      return Q_CORRUPT;
    }
    if (st == S_READY) {
      *pos = h->rnext;
      if (!take) return Q_GOT;   /* only a look: it stays the queue's */
      s->owner = conc_owner_self();
      atomic_store(&s->state, S_TAKEN);
      h->rnext += slot_size(s->len);
      atomic_fetch_sub(&h->count, 1);
      conc_bump(&h->spaceseq, &h->spacenwait, INT32_MAX);
      return Q_GOT;
    }
    if (st == S_RESERVED) {
      if (!conc_owner_dead(s->owner)) return Q_EMPTY;   /* being written */
      atomic_store(&s->state, S_FREE);       /* its producer died */
      atomic_fetch_sub(&h->count, 1);
      qundone(h, 1);
      conc_bump(&h->spaceseq, &h->spacenwait, INT32_MAX);
    }
    h->rnext += slot_size(s->len);             /* FREE or TAKEN: skip */
    advance_head(h);
  }
  return atomic_load(&h->closed) ? Q_CLOSED : Q_EMPTY;
}

/* With the lock held: the message to copy the next slot into (*m), then
** the slot, taken. Out of memory (Q_NOMEM) the slot stays the queue's. */
static int qtake_locked(qhdr *h, uint64_t *pos, msg **m) {
  int r = qnext_locked(h, pos, 0);
  if (r != Q_GOT) return r;
  if ((*m = conc_msg_alloc((size_t)slot_at(h, *pos)->len)) == NULL)
    return Q_NOMEM;
  return qnext_locked(h, pos, 1);      /* the same slot: the lock is held */
}

/* Copies the taken slot at pos out into m, and frees the slot. */
static void qfinish(queue *q, uint64_t pos, msg *m) {
  qhdr *h = q->so.shm;
  qslot *s = slot_at(h, pos);
  size_t n = (size_t)s->len;
  ring_ahead(q, &q->rfront, pos, pos + slot_size(n));
  ring_get(h, pos + sizeof(qslot), m->inl, n);
  if (n >= 16 * PAGE)         /* a big payload: give its pages back now */
    ring_punch(h, pos + sizeof(qslot), pos + sizeof(qslot) + n);
  qlock(h);
  atomic_store(&s->state, S_FREE);
  advance_head(h);
  conc_slock_unlock(&h->lock);
}

struct qwatch {
  qhdr *h;
  uint64_t tail;
};

static int queue_moved(void *arg) {
  struct qwatch *w = arg;
  return atomic_load(&w->h->tail) != w->tail || atomic_load(&w->h->closed);
}

/* Gets a message, waiting until the deadline: Q_GOT (*m), Q_EMPTY at the
** deadline, Q_CLOSED; raises a stop request or a corrupt queue. */
static int qget(lua_State *L, queue *q, cstate *cs, const deadline *d,
                msg **m) {
  qhdr *h = q->so.shm;
  const char *why = NULL;
  uint64_t pos;
  int r, spun = 0;
  qlock(h);
  for (;;) {
    uint32_t seen = atomic_load(&h->dataseq);
    r = qtake_locked(h, &pos, m);
    if (r != Q_EMPTY) break;
    if (!spun && !d->forever && conc_deadline_left(d) == 0) break;
    if (!spun) {               /* a producer may be a moment away */
      struct qwatch qw = {h, atomic_load(&h->tail)};
      conc_slock_unlock(&h->lock);
      conc_spin(&h->spin, queue_moved, &qw);
      spun = 1;
      qlock(h);
      continue;
    }
    conc_cs_waiting_obj(cs, "recv", conc_obj_test(L, cs, 1));
    r = qsleep(h, cs, &h->dataseq, &h->datanwait, seen, d, &why);
    conc_cs_waiting(cs, NULL);
    if (r < 0) {
      conc_slock_unlock(&h->lock);
      return conc_cs_raisestop(L, cs, why);
    }
    if (r == 0) {
      r = Q_EMPTY;
      break;
    }
  }
  conc_slock_unlock(&h->lock);
  if (r == Q_CORRUPT) luaL_error(L, "corrupt message on queue");
  if (r == Q_NOMEM) conc_nomem(L);          /* the message stays queued */
  if (r != Q_GOT) return r;
  qfinish(q, pos, *m);
  return Q_GOT;
}

static int push_msg(lua_State *L, cstate *cs, msg *m) {
  return conc_msg_push(L, cs, m);
}

static int queue_recv_d(lua_State *L, double t) {
  cstate *cs = conc_cs(L);
  queue *q = check_queue(L);
  deadline d;
  msg *m = NULL;
  int r;
  conc_deadline_in(&d, t);
  r = qget(L, q, cs, &d, &m);
  if (r == Q_GOT) return push_msg(L, cs, m);
  lua_pushnil(L);
  lua_pushstring(L, r == Q_CLOSED ? "closed" : "timeout");
  return 2;
}

static int queue_recv(lua_State *L) {
  return queue_recv_d(L, conc_opttimeout(L, 2));
}

static int queue_close(lua_State *L) {
  queue *q = check_queue(L);
  qhdr *h = q->so.shm;
  qlock(h);
  atomic_store(&h->closed, 1);
  conc_slock_unlock(&h->lock);
  conc_bump(&h->dataseq, &h->datanwait, INT32_MAX);
  conc_bump(&h->spaceseq, &h->spacenwait, INT32_MAX);
  ring_doorbell(q);
  return 0;
}

/* q:task_done(): one value received is done with. */
static int queue_task_done(lua_State *L) {
  qhdr *h = check_queue(L)->so.shm;
  int64_t u = atomic_load(&h->unfinished);
  do {
    if (u <= 0) return luaL_error(L, "task_done called too many times");
  } while (!atomic_compare_exchange_weak(&h->unfinished, &u, u - 1));
  if (u == 1) conc_bump(&h->joinseq, &h->joinnwait, INT32_MAX);
  return 0;
}

static int all_done(void *state, void *arg) {
  CONC_UNUSED(arg);
  return atomic_load(&((qhdr *)state)->unfinished) <= 0;
}

/* q:join([seconds]): true once every value sent was marked done. */
static int queue_join(lua_State *L) {
  cstate *cs = conc_cs(L);
  qhdr *h = check_queue(L)->so.shm;
  double t = conc_opttimeout(L, 2);
  const char *why = NULL;
  deadline d;
  int r;
  if (all_done(h, NULL) || t == 0) {
    lua_pushboolean(L, all_done(h, NULL));
    return 1;
  }
  conc_deadline_in(&d, t);
  conc_cs_waiting(cs, "join");
  r = conc_sync_wait(cs, &h->joinseq, &h->joinnwait, &d, all_done, NULL, h,
                     NULL, &why);
  conc_cs_waiting(cs, NULL);
  if (r < 0) return conc_cs_raisestop(L, cs, why);
  lua_pushboolean(L, r);
  return 1;
}

static int queue_len(lua_State *L) {
  queue *q = check_queue(L);
  qhdr *h = q->so.shm;
  lua_pushinteger(L, (lua_Integer)atomic_load(&h->count));
  return 1;
}

static int queue_iter_next(lua_State *L) {
  int n;
  lua_settop(L, 1);
  n = queue_recv_d(L, -1);
  if (n == 2 && lua_isnil(L, -2)) return 0;
  return n;
}

static int queue_iter(lua_State *L) {
  check_queue(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, queue_iter_next, 1);
  lua_pushvalue(L, 1);
  return 2;
}

static int queue_tostring(lua_State *L) {
  queue *q = check_queue(L);
  qhdr *h = q->so.shm;
  if (h->cap < 0)
    lua_pushfstring(L, "<queue %I queued%s>",
                    (LUAI_UACINT)atomic_load(&h->count),
                    atomic_load(&h->closed) ? ", closed" : "");
  else
    lua_pushfstring(L, "<queue %I/%I queued%s>",
                    (LUAI_UACINT)atomic_load(&h->count), (LUAI_UACINT)h->cap,
                    atomic_load(&h->closed) ? ", closed" : "");
  return 1;
}

/* ------------------------------------------------------------ select */

/* select: the first message now (claimed before it is taken), else the
** doorbell is polled. The selector counts itself in nselect so that
** producers ring. */
static int queue_sel_try(cobj *o, selnode *n) {
  queue *q = (queue *)o;
  qhdr *h = q->so.shm;
  uint64_t v, pos;
  int r;
  if (!n->flags) {
    atomic_fetch_add(&h->nselect, 1);
    n->flags = 1;
  }
  if (read(q->efd, &v, sizeof v) > 0) n->flags = 2;   /* we drained it */
  /* look first (skipping what dead producers left), take only once the
  ** select is claimed: a message taken for a select that another item
  ** won would be lost. A ready slot stays ready while we hold the lock. */
  qlock(h);
  r = qnext_locked(h, &pos, 0);
  if (r == Q_GOT) {
    /* the message to copy into first: out of memory, the select goes on
    ** waiting and the message stays queued (there is no error to give) */
    msg *m = conc_msg_alloc((size_t)slot_at(h, pos)->len);
    if (m == NULL || !conc_sel_claim(n->sw, n->index)) {
      conc_slock_unlock(&h->lock);
      conc_msg_free(m);
      return m != NULL;
    }
    qnext_locked(h, &pos, 1);        /* the same slot: the lock was held */
    conc_slock_unlock(&h->lock);
    qfinish(q, pos, m);
    n->m = m;
    n->result = SEL_VALUE;
    return 1;
  }
  conc_slock_unlock(&h->lock);
  if (r == Q_CLOSED || r == Q_CORRUPT) n->result = SEL_CLOSED;
  return 0;
}

static void queue_sel_delist(cobj *o, selnode *n) {
  queue *q = (queue *)o;
  qhdr *h = q->so.shm;
  if (n->flags) atomic_fetch_sub(&h->nselect, 1);
  /* we drained the doorbell: if messages are left, whether or not we
  ** took one (a drain may have swallowed rings meant for others), ring
  ** it again for the other selectors */
  if (n->flags == 2 && atomic_load(&h->count) > 0) ring_doorbell(q);
  n->flags = 0;
}

static int queue_sel_fds(cobj *o, int fds[2]) {
  fds[0] = ((queue *)o)->efd;
  return 1;
}

static const luaL_Reg queue_methods[] = {
    {"send", queue_send}, {"recv", queue_recv}, {"close", queue_close},
    {"len", queue_len},   {"iter", queue_iter}, {"task_done", queue_task_done},
    {"join", queue_join}, {NULL, NULL}};

const kindinfo conc_queue_kind = {
    .kind = K_QUEUE,
    .tname = "conc.queue",
    .name = "queue",
    .shm = 1,
    .destroy = queue_destroy,
    .methods = queue_methods,
    .tostring = queue_tostring,
    .sel_try = queue_sel_try,
    .sel_delist = queue_sel_delist,
    .sel_fds = queue_sel_fds};
