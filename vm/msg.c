/*
** msg.c
** Encode buffers, sealed messages, and the key that guards bytecode.
**
** A message owns its bytes and a reference on each runtime object it
** names; freeing it releases them. The SipHash key is made once per
** process tree (random, before the first fork: a forked child has the
** same, a spawned one is given it) and guards every function a message
** carries (marshal.c).
*/

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core.h"

/* ------------------------------------------------------------ siphash */

static unsigned char hashkey[16];
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void key_init(void) {
  size_t got = 0;
  while (got < sizeof hashkey) {
    ssize_t r = getrandom(hashkey + got, sizeof hashkey - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      abort();  /* no entropy source: nothing safe to fall back on */
    }
    got += (size_t)r;
  }
}

void conc_marshal_key(unsigned char key[16]) {
  pthread_once(&key_once, key_init);
  memcpy(key, hashkey, sizeof hashkey);
}

void conc_marshal_setkey(const unsigned char key[16]) {
  pthread_once(&key_once, key_init);
  memcpy(hashkey, key, sizeof hashkey);
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                     \
  do {                                                               \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);        \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                           \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                           \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);        \
  } while (0)

static uint64_t load64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;  /* little-endian machines only, like the rest of the format */
}

/* SipHash-2-4 (Aumasson and Bernstein), 64-bit output. */
uint64_t conc_siphash24(const unsigned char key[16], const void *data,
                        size_t n) {
  const unsigned char *p = data;
  uint64_t k0 = load64(key), k1 = load64(key + 8);
  uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
  uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
  uint64_t b = (uint64_t)n << 56, m;
  size_t i, tail = n & 7;
  for (i = 0; i + 8 <= n; i += 8) {
    m = load64(p + i);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  for (size_t j = 0; j < tail; j++) b |= (uint64_t)p[i + j] << (8 * j);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t conc_marshal_mac(const void *p, size_t n) {
  pthread_once(&key_once, key_init);
  return conc_siphash24(hashkey, p, n);
}

/* ------------------------------------------------------------ buffers */

void conc_mbuf_init(mbuf *b) {
  memset(b, 0, sizeof *b);
}

void conc_mbuf_reset(mbuf *b) {
  for (int i = 0; i < b->nrefs; i++) conc_obj_release(b->refs[i]);
  b->nrefs = 0;
  b->n = 0;
}

void conc_mbuf_free(mbuf *b) {
  conc_mbuf_reset(b);
  free(b->p);
  free(b->refs);
  conc_mbuf_init(b);
}

int conc_mbuf_reserve(mbuf *b, size_t extra) {
  size_t need = b->n + extra, cap;
  char *np;
  if (need < b->n) return -1;                       /* overflow */
  if (need <= b->cap) return 0;
  cap = b->cap ? b->cap : 256;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  np = realloc(b->p, cap);
  if (np == NULL) return -1;
  b->p = np;
  b->cap = cap;
  return 0;
}

int conc_mbuf_addref(mbuf *b, cobj *o) {
  if (b->nrefs == b->refcap) {
    int cap = b->refcap ? b->refcap * 2 : 4;
    cobj **nr = realloc(b->refs, sizeof *nr * (size_t)cap);
    if (nr == NULL) return -1;
    b->refs = nr;
    b->refcap = cap;
  }
  conc_obj_retain(o);
  b->refs[b->nrefs] = o;
  return b->nrefs++;
}

/* Small payloads are copied next to the message header, so one malloc
** holds both; big ones move into the message and the buffer starts
** afresh. The object references come first (pointer-aligned). */
#define SEAL_COPY_MAX 4096

msg *conc_msg_seal(mbuf *b) {
  size_t refsz = (size_t)b->nrefs * sizeof(cobj *);
  size_t inl = b->n <= SEAL_COPY_MAX ? b->n : 0;
  msg *m = malloc(sizeof *m + refsz + inl);
  if (m == NULL) return NULL;
  m->next = NULL;
  m->n = b->n;
  m->nrefs = b->nrefs;
  m->refs = (cobj **)(void *)m->inl;
  if (refsz) memcpy(m->refs, b->refs, refsz);
  b->nrefs = 0;                 /* the message owns those references now */
  if (b->n <= SEAL_COPY_MAX) {
    m->data = m->inl + refsz;
    m->owndata = MSG_INLINE;
    if (b->n) memcpy(m->data, b->p, b->n);
    b->n = 0;
  } else {
    m->data = b->p;
    m->owndata = MSG_OWN;
    b->p = NULL;
    b->cap = b->n = 0;
  }
  return m;
}

void conc_msg_free(msg *m) {
  if (m == NULL) return;
  for (int i = 0; i < m->nrefs; i++) conc_obj_release(m->refs[i]);
  if (m->owndata == MSG_OWN) free(m->data);
  if (m->owndata == MSG_LOAN) {
    /* the lender may return (and its stack go) once done is set */
    parker *p = m->loan->park;
    atomic_fetch_add(&p->wakers, 1);
    atomic_store(&m->loan->done, 1);
    conc_park_wake(p);
    atomic_fetch_sub(&p->wakers, 1);
  }
  free(m);
}

msg *conc_msg_lend(const char *p, size_t n, loan *ln, parker *park) {
  msg *m = malloc(sizeof *m);
  if (m == NULL) return NULL;
  atomic_init(&ln->done, 0);
  ln->park = park;
  m->next = NULL;
  m->n = n;
  m->nrefs = 0;
  m->refs = NULL;
  m->data = (char *)p;
  m->owndata = MSG_LOAN;
  m->loan = ln;
  return m;
}

int conc_loan_done(void *ln) {
  return atomic_load(&((loan *)ln)->done);
}

/* A message with room for n bytes of data inline, not filled yet. */
msg *conc_msg_alloc(size_t n) {
  msg *m = malloc(sizeof *m + n);
  if (m == NULL) return NULL;
  m->next = NULL;
  m->n = n;
  m->nrefs = 0;
  m->refs = NULL;
  m->owndata = MSG_INLINE;
  m->data = m->inl;
  return m;
}

msg *conc_msg_new(size_t n, int nrefs) {
  size_t refsz = (size_t)nrefs * sizeof(cobj *);
  msg *m = malloc(sizeof *m + refsz + n);
  if (m == NULL) return NULL;
  m->next = NULL;
  m->n = n;
  m->nrefs = 0;
  m->refs = (cobj **)(void *)m->inl;
  m->data = m->inl + refsz;
  m->owndata = MSG_INLINE;
  return m;
}

msg *conc_msg_copy(const void *p, size_t n) {
  msg *m = conc_msg_alloc(n);
  if (m) memcpy(m->inl, p, n);
  return m;
}

msg *conc_msg_dup(const msg *m) {
  size_t refsz = (size_t)m->nrefs * sizeof(cobj *);
  msg *c = malloc(sizeof *c + refsz + m->n);
  if (c == NULL) return NULL;
  c->next = NULL;
  c->n = m->n;
  c->nrefs = m->nrefs;
  c->refs = (cobj **)(void *)c->inl;
  for (int i = 0; i < m->nrefs; i++) {
    c->refs[i] = m->refs[i];
    conc_obj_retain(c->refs[i]);
  }
  c->data = c->inl + refsz;
  c->owndata = MSG_INLINE;
  memcpy(c->data, m->data, m->n);
  return c;
}

/* ------------------------------------------------------------ helpers */

int conc_nomem(lua_State *L) {
  lua_pushliteral(L, "not enough memory");
  return lua_error(L);
}

int conc_msg_raise(lua_State *L, int code, const char *err) {
  if (code == CONC_ENOMEM) return conc_nomem(L);
  return luaL_error(L, "%s", err);
}

void conc_msg_free_pending(cstate *cs) {
  while (cs->pending) {
    msg *m = cs->pending;
    cs->pending = m->next;
    conc_msg_free(m);
  }
}
