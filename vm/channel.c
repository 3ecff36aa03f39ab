/*
** channel.c
** conc.channel: a FIFO of copied values between the threads of a process.
**
** DESIGN. A channel is a ring of sealed messages under one mutex, plus
** two queues of waiting nodes (select.c): receivers waiting for a value
** and senders waiting for room. A value is encoded before the lock is
** taken, so a send that fails (untransferable value) leaves the channel as
** it was. A sender first hands its message straight to the oldest waiting
** receiver (claiming that receiver's selwait: a receiver in a select may
** have been served by another item already, and is then skipped); only if
** there is none does the message go into the ring. Capacity 0 makes a
** rendezvous channel: every send waits until a receiver takes the value.
** close() wakes every waiter; what is buffered can still be received, then
** recv gives nil, "closed". Every wait is a cancellation point and is
** interruptible by Ctrl-C.
*/

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Short waits end faster by spinning than by sleeping: a wake-up from
** futex costs tens of microseconds across cores on a VM. */
#define SPIN_TRIES 200

typedef struct chan {
  cobj obj;
  pthread_mutex_t mu;
  objlink link;
  msg **ring;
  size_t ringsz, head;
  _Atomic size_t len;
  lua_Integer cap;             /* -1: unbounded; 0: rendezvous */
  _Atomic int closed;
  selnode *recvq, *sendq;
} chan;

static void chan_destroy(cobj *o) {
  chan *c = (chan *)o;
  objreg_remove(&c->link);
  for (size_t i = 0; i < c->len; i++)
    msg_free(c->ring[(c->head + i) % c->ringsz]);
  free(c->ring);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

int chan_new(lua_State *L) {
  cstate *cs = conc_cs(L);
  lua_Integer cap = -1;
  chan *c;
  if (!lua_isnoneornil(L, 1)) {
    cap = luaL_checkinteger(L, 1);
    luaL_argcheck(L, cap >= 0, 1, "capacity must be non-negative");
  }
  c = calloc(1, sizeof *c);
  if (c == NULL) return luaL_error(L, "not enough memory");
  obj_init(&c->obj, K_CHANNEL);
  pthread_mutex_init(&c->mu, NULL);
  c->cap = cap;
  atomic_init(&c->len, 0);
  atomic_init(&c->closed, 0);
  objreg_add(&c->link, &c->mu);
  obj_push(L, cs, &c->obj);
  obj_release(&c->obj);             /* the handle holds it now */
  return 1;
}

static chan *check_chan(lua_State *L) {
  return (chan *)obj_check(L, 1, K_CHANNEL);
}

/* Whether the ring has room for one more message; grows it if needed.
** Called with the lock held; 0 when full (or out of memory). */
static int ring_room(chan *c) {
  size_t len = atomic_load_explicit(&c->len, memory_order_relaxed);
  if (c->cap >= 0 && (lua_Integer)len >= c->cap) return 0;
  if (len == c->ringsz) {
    size_t nsz = c->ringsz ? c->ringsz * 2 : 8;
    msg **nr;
    if (c->cap > 0 && (lua_Integer)nsz > c->cap) nsz = (size_t)c->cap;
    nr = malloc(sizeof *nr * nsz);
    if (nr == NULL) return 0;
    for (size_t i = 0; i < len; i++) nr[i] = c->ring[(c->head + i) % c->ringsz];
    free(c->ring);
    c->ring = nr;
    c->ringsz = nsz;
    c->head = 0;
  }
  return 1;
}

static void ring_push(chan *c, msg *m) {
  size_t len = atomic_load_explicit(&c->len, memory_order_relaxed);
  c->ring[(c->head + len) % c->ringsz] = m;
  atomic_store_explicit(&c->len, len + 1, memory_order_release);
}

static msg *ring_pop(chan *c) {
  msg *m = c->ring[c->head];
  c->head = (c->head + 1) % c->ringsz;
  atomic_store_explicit(&c->len, atomic_load_explicit(&c->len, memory_order_relaxed) - 1,
                        memory_order_release);
  return m;
}

/* Gives m to the oldest receiver still waiting; 1 if one took it. */
static int hand_to_receiver(chan *c, msg *m) {
  selnode *n;
  while ((n = c->recvq) != NULL) {
    selq_remove(&c->recvq, n);
    if (sel_claim(n->sw, n->index)) {
      n->m = m;
      n->result = SEL_VALUE;
      park_wake(n->sw->park);
      return 1;
    }
  }
  return 0;
}

/* Takes the message of the oldest waiting sender, or NULL. */
static msg *take_from_sender(chan *c) {
  selnode *n = c->sendq;
  msg *m;
  if (n == NULL) return NULL;
  selq_remove(&c->sendq, n);
  sel_claim(n->sw, 0);
  m = n->m;
  n->m = NULL;
  n->result = SEL_TAKEN;
  park_wake(n->sw->park);
  return m;
}

/* Takes a value if there is one: 1 (in *m), 0 none, -1 closed. With the
** lock held. A taken ring slot lets a waiting sender in. */
static int take(chan *c, msg **m) {
  if (atomic_load_explicit(&c->len, memory_order_relaxed) > 0) {
    *m = ring_pop(c);
    if (c->sendq && ring_room(c)) {
      msg *sm = take_from_sender(c);
      if (sm) ring_push(c, sm);
    }
    return 1;
  }
  if ((*m = take_from_sender(c)) != NULL) return 1;
  return atomic_load_explicit(&c->closed, memory_order_relaxed) ? -1 : 0;
}

static void spin_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static int chan_send(lua_State *L) {
  cstate *cs = conc_cs(L);
  chan *c = check_chan(L);
  double t;
  msg *m;
  selwait sw;
  selnode n;
  deadline d;
  const char *why = NULL;
  int result;
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "cannot send nil");
  t = conc_opttimeout(L, 3);
  m = msg_encode(L, cs, 2, 1, "value");
  pthread_mutex_lock(&c->mu);
  if (atomic_load_explicit(&c->closed, memory_order_relaxed)) {
    pthread_mutex_unlock(&c->mu);
    msg_free(m);
    return luaL_error(L, "send on a closed channel");
  }
  if (hand_to_receiver(c, m)) {
    pthread_mutex_unlock(&c->mu);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (c->cap != 0 && ring_room(c)) {
    ring_push(c, m);
    pthread_mutex_unlock(&c->mu);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (t == 0) {
    pthread_mutex_unlock(&c->mu);
    msg_free(m);
    lua_pushboolean(L, 0);
    return 1;
  }
  /* wait for a receiver to take it */
  sw.park = &cs->park;
  atomic_init(&sw.won, 0);
  memset(&n, 0, sizeof n);
  n.sw = &sw;
  n.m = m;
  selq_push(&c->sendq, &n);
  pthread_mutex_unlock(&c->mu);
  deadline_in(&d, t);
  cs_waiting(cs, "send");
  for (;;) {
    uint32_t seen = park_seq(&cs->park);
    if (atomic_load(&sw.won) || n.result != SEL_NONE) break;
    if ((why = cs_stopreason(cs)) != NULL) break;
    if (park_sleep(&cs->park, seen, &d) == ETIMEDOUT) break;
  }
  cs_waiting(cs, NULL);
  pthread_mutex_lock(&c->mu);
  if (n.linked) selq_remove(&c->sendq, &n);
  result = n.result;
  m = n.m;                      /* NULL once a receiver took it */
  pthread_mutex_unlock(&c->mu);
  if (result == SEL_TAKEN) {
    lua_pushboolean(L, 1);
    return 1;
  }
  msg_free(m);
  if (result == SEL_CLOSED) return luaL_error(L, "send on a closed channel");
  if (why) return cs_raisestop(L, cs, why);
  lua_pushboolean(L, 0);
  return 1;
}

/* recv with a deadline; pushes what recv returns. */
static int chan_recv_d(lua_State *L, cstate *cs, chan *c, double t) {
  msg *m = NULL;
  selwait sw;
  selnode n;
  deadline d;
  const char *why = NULL;
  int r, result;
  pthread_mutex_lock(&c->mu);
  r = take(c, &m);
  if (r == 0 && t != 0) {
    /* spin a little: a sender on another core may be just about to send */
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < SPIN_TRIES; i++) {
      if (atomic_load_explicit(&c->len, memory_order_acquire) ||
          atomic_load_explicit(&c->closed, memory_order_relaxed))
        break;
      spin_pause();
    }
    pthread_mutex_lock(&c->mu);
    r = take(c, &m);
  }
  if (r != 0 || t == 0) {
    pthread_mutex_unlock(&c->mu);
    if (r > 0) return msg_push(L, cs, m);
    lua_pushnil(L);
    lua_pushstring(L, r < 0 ? "closed" : "timeout");
    return 2;
  }
  sw.park = &cs->park;
  atomic_init(&sw.won, 0);
  memset(&n, 0, sizeof n);
  n.sw = &sw;
  selq_push(&c->recvq, &n);
  pthread_mutex_unlock(&c->mu);
  deadline_in(&d, t);
  cs_waiting(cs, "recv");
  for (;;) {
    uint32_t seen = park_seq(&cs->park);
    if (atomic_load(&sw.won) || n.result != SEL_NONE) break;
    if ((why = cs_stopreason(cs)) != NULL) break;
    if (park_sleep(&cs->park, seen, &d) == ETIMEDOUT) break;
  }
  cs_waiting(cs, NULL);
  pthread_mutex_lock(&c->mu);
  if (n.linked) selq_remove(&c->recvq, &n);
  result = n.result;
  m = n.m;
  pthread_mutex_unlock(&c->mu);
  if (result == SEL_VALUE) return msg_push(L, cs, m);
  if (result == SEL_CLOSED) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (why) return cs_raisestop(L, cs, why);
  lua_pushnil(L);
  lua_pushliteral(L, "timeout");
  return 2;
}

static int chan_recv(lua_State *L) {
  chan *c = check_chan(L);
  return chan_recv_d(L, conc_cs(L), c, conc_opttimeout(L, 2));
}

static int chan_close(lua_State *L) {
  chan *c = check_chan(L);
  selnode *n;
  pthread_mutex_lock(&c->mu);
  atomic_store(&c->closed, 1);
  while ((n = c->recvq) != NULL) {
    selq_remove(&c->recvq, n);
    n->result = SEL_CLOSED;
    park_wake(n->sw->park);
  }
  while ((n = c->sendq) != NULL) {
    selq_remove(&c->sendq, n);
    n->result = SEL_CLOSED;
    park_wake(n->sw->park);
  }
  pthread_mutex_unlock(&c->mu);
  return 0;
}

static int chan_len(lua_State *L) {
  chan *c = check_chan(L);
  lua_pushinteger(L, (lua_Integer)atomic_load(&c->len));
  return 1;
}

static int chan_closed(lua_State *L) {
  chan *c = check_chan(L);
  lua_pushboolean(L, atomic_load(&c->closed));
  return 1;
}

static int chan_iter_next(lua_State *L) {
  chan *c = check_chan(L);
  int n = chan_recv_d(L, conc_cs(L), c, -1);
  if (n == 2 && lua_isnil(L, -2)) return 0;    /* closed: the loop ends */
  return n;
}

static int chan_iter(lua_State *L) {
  check_chan(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, chan_iter_next, 1);
  lua_pushvalue(L, 1);
  return 2;
}

static int chan_tostring(lua_State *L) {
  chan *c = check_chan(L);
  size_t len = atomic_load(&c->len);
  if (c->cap < 0)
    lua_pushfstring(L, "<channel %d queued%s>", (int)len,
                    atomic_load(&c->closed) ? ", closed" : "");
  else
    lua_pushfstring(L, "<channel %d/%d queued%s>", (int)len, (int)c->cap,
                    atomic_load(&c->closed) ? ", closed" : "");
  return 1;
}

/* select: a value now, or enlisted among the receivers. The claim
** comes before the take, so a select that another item won already
** takes nothing from here. */
static int chan_sel_try(cobj *o, selnode *n) {
  chan *c = (chan *)o;
  msg *m = NULL;
  pthread_mutex_lock(&c->mu);
  if (atomic_load_explicit(&c->len, memory_order_relaxed) > 0 || c->sendq) {
    if (sel_claim(n->sw, n->index) && take(c, &m) > 0) {
      n->m = m;
      n->result = SEL_VALUE;
    }
    pthread_mutex_unlock(&c->mu);
    return 1;
  }
  if (atomic_load_explicit(&c->closed, memory_order_relaxed))
    n->result = SEL_CLOSED;
  else
    selq_push(&c->recvq, n);
  pthread_mutex_unlock(&c->mu);
  return 0;
}

static void chan_sel_delist(cobj *o, selnode *n) {
  chan *c = (chan *)o;
  pthread_mutex_lock(&c->mu);
  if (n->linked) selq_remove(&c->recvq, n);
  pthread_mutex_unlock(&c->mu);
}

static const luaL_Reg chan_methods[] = {
    {"send", chan_send},   {"recv", chan_recv},     {"close", chan_close},
    {"len", chan_len},     {"iter", chan_iter},     {"closed", chan_closed},
    {NULL, NULL}};

const kindinfo channel_kind = {
    "conc.channel", "channel", 0, 1, chan_destroy, chan_methods, NULL,
    chan_tostring, chan_sel_try, chan_sel_delist, NULL, NULL};

