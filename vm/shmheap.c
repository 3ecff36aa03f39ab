/*
** shmheap.c
** A heap inside one MAP_SHARED mapping: the memory of a conc.shared table,
** seen by every process forked after the table was made.
**
** DESIGN. A buddy allocator. The mapping is a page of the owner's header
** (which holds the 'shheap' record) and then 2^order bytes, reserved at
** once but backed lazily by the kernel. Blocks are named by their offset
** from the start of the mapping (0: none), never by address, since each
** process may map it elsewhere. Every block starts with an 8-byte header
** (state and order); a free block also holds the links of its free list,
** one list per order. Freeing merges a block with its buddy while the
** buddy is free and of the same order, so the heap does not fragment for
** ever. The heap is carved from the bottom up: below 'top' every byte is
** in a block, above it nothing was ever written (so a buddy that lies
** there reads as no block), and a block no free list can give is cut at
** the top, the gap below it going to the free lists. So a table touches
** the pages its data needs, not one page per order as splitting a single
** big block would.
** Small blocks freed go to a short stack of their order first, from which
** the next allocation of that order takes them back at once, without
** splitting and merging: the common case of a value replaced by one of
** the same size costs a few instructions.
** Memory is given back to the kernel in batches: once a megabyte or a
** quarter of what is in use has been freed since the last time, the
** pages of free blocks of two pages or more are punched (MADV_REMOVE),
** all but the page of the block's header. A block whose pages are known
** to be given back is 'clean' and is not punched again.
** The caller does the locking. A process may die in the middle of any
** change; the caller knows (its own 'dirty' mark) and then calls
** conc_shheap_rebuild with the blocks that its data still reaches: the free
** lists are made again as everything else. So no step here has to be
** atomic, and a dead process never leaves memory lost for good.
*/

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "os.h"

#define PAGE 4096u
#define PAGE_ORDER 12
#define BLK_USED 0xA5
#define BLK_FREE 0x5A

typedef struct blk {
  uint8_t state;
  uint8_t order;
  uint8_t clean;                /* free: its pages but the first given back */
  uint8_t pad[5];
  uint64_t prev, next;          /* free: the list of its order */
} blk;

#define HDR 8u                  /* bytes before a block's payload */
_Static_assert(sizeof(blk) <= (1u << SHHEAP_MINORDER), "min block too small");

static blk *at(char *base, uint64_t off) {
  return (blk *)(void *)(base + off);
}

static uint64_t buddy_of(uint64_t off, unsigned k) {
  return ((off - PAGE) ^ ((uint64_t)1 << k)) + PAGE;
}

static void list_push(shheap *hp, char *base, uint64_t off, unsigned k,
                      int clean) {
  blk *b = at(base, off);
  b->state = BLK_FREE;
  b->order = (uint8_t)k;
  b->clean = (uint8_t)clean;
  b->prev = 0;
  b->next = hp->free[k];
  if (b->next) at(base, b->next)->prev = off;
  hp->free[k] = off;
}

static void list_unlink(shheap *hp, char *base, uint64_t off) {
  blk *b = at(base, off);
  if (b->prev) at(base, b->prev)->next = b->next;
  else hp->free[b->order] = b->next;
  if (b->next) at(base, b->next)->prev = b->prev;
}

size_t conc_shheap_mapsize(unsigned order) {
  return PAGE + ((size_t)1 << order);
}

void conc_shheap_init(shheap *hp, char *base, unsigned order) {
  CONC_UNUSED(base);
  memset(hp, 0, sizeof *hp);
  hp->order = order;
  hp->top = PAGE;
}

/* Half the heap: a block of the whole heap could never be cut, the first
** blocks being there already. */
size_t conc_shheap_max(const shheap *hp) {
  return ((size_t)1 << (hp->order - 1)) - HDR;
}

static unsigned order_for(size_t n) {
  unsigned k = SHHEAP_MINORDER;
  while (((uint64_t)1 << k) < n + HDR) k++;
  return k;
}

static void quick_flush(shheap *hp, char *base, int q);
static void merge_push(shheap *hp, char *base, uint64_t off, unsigned k,
                       int clean);

/* A new block of order k cut at the top, or 0 when the top is too high.
** The gap up to the block's alignment goes to the free lists. */
static uint64_t carve(shheap *hp, char *base, unsigned k) {
  uint64_t size = (uint64_t)1 << k, end = PAGE + ((uint64_t)1 << hp->order);
  uint64_t a = ((hp->top - PAGE + size - 1) & ~(size - 1)) + PAGE;
  uint64_t from = hp->top;
  if (a + size > end) return 0;
  hp->top = a + size;           /* first: then a death leaves no header
                                   written above the top (see rebuild) */
  while (from < a) {
    unsigned j = SHHEAP_MINORDER;
    while (((from - PAGE) & (((uint64_t)1 << (j + 1)) - 1)) == 0 &&
           from + ((uint64_t)1 << (j + 1)) <= a)
      j++;
    merge_push(hp, base, from, j, 1);   /* pages never written: clean */
    from += (uint64_t)1 << j;
  }
  return a;
}

uint64_t conc_shheap_alloc(shheap *hp, char *base, size_t n) {
  unsigned k, j;
  uint64_t off;
  int clean;
  if (n > conc_shheap_max(hp)) return 0;
  k = order_for(n);
  if (k < SHHEAP_MINORDER + SHHEAP_QORDERS && hp->nquick[k - SHHEAP_MINORDER])
    return hp->quick[k - SHHEAP_MINORDER][--hp->nquick[k - SHHEAP_MINORDER]];
  for (j = k; j <= hp->order && hp->free[j] == 0; j++)
    ;
  if (j > hp->order) {              /* cut at the top, or what waits */
    int kept = 0;                   /* for reuse, then again */
    off = carve(hp, base, k);
    if (off) {
      at(base, off)->state = BLK_USED;
      at(base, off)->order = (uint8_t)k;
      hp->used += (uint64_t)1 << k;
      return off + HDR;
    }
    for (unsigned q = 0; q < SHHEAP_QORDERS; q++) kept |= hp->nquick[q] != 0;
    if (!kept) return 0;
    quick_flush(hp, base, -1);
    return conc_shheap_alloc(hp, base, n);
  }
  off = hp->free[j];
  clean = at(base, off)->clean;
  list_unlink(hp, base, off);
  while (j > k) {               /* split: the upper halves go free */
    j--;
    list_push(hp, base, off + ((uint64_t)1 << j), j, clean);
  }
  at(base, off)->state = BLK_USED;
  at(base, off)->order = (uint8_t)k;
  hp->used += (uint64_t)1 << k;
  return off + HDR;
}

size_t conc_shheap_size(char *base, uint64_t p) {
  return ((size_t)1 << at(base, p - HDR)->order) - HDR;
}

/* Gives back the pages of every free block of two pages or more that is
** not clean yet, but the first page (its header). */
static void trim(shheap *hp, char *base) {
  for (unsigned k = PAGE_ORDER + 1; k <= hp->order; k++)
    for (uint64_t off = hp->free[k]; off; off = at(base, off)->next) {
      blk *b = at(base, off);
      if (b->clean) continue;
      madvise(base + off + PAGE, ((size_t)1 << k) - PAGE, MADV_REMOVE);
      b->clean = 1;
    }
  hp->freed = 0;
}

/* Puts the free block (off, k) on its list, merged first with its free
** buddies. A buddy above the top reads as no block (never written). */
static void merge_push(shheap *hp, char *base, uint64_t off, unsigned k,
                       int clean) {
  while (k < hp->order) {
    uint64_t bud = buddy_of(off, k);
    blk *b = at(base, bud);
    if (bud >= hp->top || b->state != BLK_FREE || b->order != k) break;
    list_unlink(hp, base, bud);
    if (bud < off) off = bud;
    k++;
    clean = 0;
  }
  /* a block of a page or less has nothing to punch: clean */
  list_push(hp, base, off, k, clean || k <= PAGE_ORDER);
}

/* Frees a block for good. */
static void release(shheap *hp, char *base, uint64_t off) {
  unsigned k = at(base, off)->order;
  hp->used -= (uint64_t)1 << k;
  hp->freed += (uint64_t)1 << k;
  merge_push(hp, base, off, k, 0);
}

/* Frees for good the small blocks kept for reuse: those of stack q, or
** of every stack with q < 0. */
static void quick_flush(shheap *hp, char *base, int q) {
  for (unsigned i = 0; i < SHHEAP_QORDERS; i++) {
    if (q >= 0 && (unsigned)q != i) continue;
    while (hp->nquick[i] > 0)
      release(hp, base, hp->quick[i][--hp->nquick[i]] - HDR);
  }
}

void conc_shheap_free(shheap *hp, char *base, uint64_t p) {
  unsigned k = at(base, p - HDR)->order;
  if (k < SHHEAP_MINORDER + SHHEAP_QORDERS) {   /* kept used, for reuse */
    unsigned q = k - SHHEAP_MINORDER;
    if (hp->nquick[q] == SHHEAP_QUICK) quick_flush(hp, base, (int)q);
    hp->quick[q][hp->nquick[q]++] = p;
    return;
  }
  release(hp, base, p - HDR);
  if (hp->freed >= ((uint64_t)1 << 20) && hp->freed >= hp->used / 4)
    trim(hp, base);
}

/* Frees, below the node (off, k), what no live block covers. live[lo..hi)
** are the starts of the valid live blocks inside it, sorted. */
static void rebuild_node(shheap *hp, char *base, uint64_t off, unsigned k,
                         const uint64_t *live, size_t lo, size_t hi) {
  uint64_t mid;
  size_t m;
  if (off >= hp->top) return;       /* never written: no block */
  if (lo == hi && off + ((uint64_t)1 << k) <= hp->top) {
    list_push(hp, base, off, k, k <= PAGE_ORDER);
    return;
  }
  if (live[lo] == off && at(base, off)->order == k) {   /* it is that block */
    hp->used += (uint64_t)1 << k;
    return;
  }
  mid = off + ((uint64_t)1 << (k - 1));
  for (m = lo; m < hi && live[m] < mid; m++)
    ;
  rebuild_node(hp, base, off, k - 1, live, lo, m);
  rebuild_node(hp, base, mid, k - 1, live, m, hi);
}

typedef struct livent {
  uint64_t off;                 /* block start */
  size_t idx;                   /* its place in the caller's array */
} livent;

static int cmp_live(const void *a, const void *b) {
  uint64_t x = ((const livent *)a)->off, y = ((const livent *)b)->off;
  return x < y ? -1 : x > y;
}

int conc_shheap_rebuild(shheap *hp, char *base, uint64_t *live, size_t n) {
  livent *s = malloc((n ? n : 1) * sizeof *s);
  uint64_t *starts = malloc((n ? n : 1) * sizeof *starts);
  uint64_t end = PAGE;
  size_t i, m = 0;
  if (s == NULL || starts == NULL) {
    free(s);
    free(starts);
    return -1;
  }
  for (i = 0; i < n; i++) {
    s[i].off = live[i] - HDR;
    s[i].idx = i;
  }
  qsort(s, n, sizeof *s, cmp_live);
  for (i = 0; i < n; i++) {     /* keep the blocks that can be blocks */
    uint64_t off = s[i].off;
    if (off < end || !conc_shheap_valid(hp, base, off + HDR)) {
      live[s[i].idx] = 0;       /* overlaps another, or is no block */
      continue;
    }
    end = off + ((uint64_t)1 << at(base, off)->order);
    starts[m++] = off;
  }
  memset(hp->free, 0, sizeof hp->free);
  memset(hp->nquick, 0, sizeof hp->nquick);   /* those are not reached */
  hp->used = 0;
  rebuild_node(hp, base, PAGE, hp->order, starts, 0, m);
  free(s);
  free(starts);
  trim(hp, base);
  return 0;
}

int conc_shheap_valid(const shheap *hp, char *base, uint64_t p) {
  uint64_t off = p - HDR, top = hp->top;
  blk *b;
  unsigned k;
  if (p < PAGE + HDR || p >= top || (p & 7) != 0) return 0;
  b = at(base, off);
  k = b->order;
  return b->state == BLK_USED && k >= SHHEAP_MINORDER && k <= hp->order &&
         ((off - PAGE) & (((uint64_t)1 << k) - 1)) == 0 &&
         off + ((uint64_t)1 << k) <= top;
}
