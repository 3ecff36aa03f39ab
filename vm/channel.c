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
** there is none does the message go into the ring (a pool's channel of
** calls serves its newest receiver instead: conc_chan_lifo). Capacity 0 makes a
** rendezvous channel: every send waits until a receiver takes the value.
** close() wakes every waiter; what is buffered can still be received, then
** recv gives nil, "closed". Every wait is a cancellation point and is
** interruptible by Ctrl-C. 'unfinished' counts the values sent and not
** marked done yet (task_done, join: Python's JoinableQueue); a send
** counts its value before a receiver can see it, and takes it back if
** the value does not go.
*/

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "modules.h"


/* A ring slot: a small value inline (no malloc), or a sealed message. */
typedef struct cslot {
  msg *m;
  uint32_t n;
  char inl[SEL_INLINE];
  uint64_t flow;                /* its trace flow id (trace.c), or 0 */
} cslot;

typedef struct chan {
  cobj obj;
  objlink link;
  _Atomic uint32_t spin;        /* conc_spin's budget */
  int lifo;                    /* receivers newest first (conc_chan_lifo) */
  int64_t unfinished;          /* sent, not marked done (under mu) */
  selnode *joinq;              /* join's waiters (under mu) */
  /* everything a send or a recv touches but the slot, on one cache line:
  ** a message then moves two lines from core to core, this one and its
  ** slot's */
  _Alignas(64) cmutex mu;
  _Atomic int closed;
  _Atomic size_t len;
  size_t head, ringsz;
  cslot *ring;
  lua_Integer cap;             /* -1: unbounded; 0: rendezvous */
  selnode *recvq, *sendq;
} chan;
_Static_assert(sizeof(chan) - offsetof(chan, mu) <= 64, "chan: one line");

/* What a sender hands over: bytes in its buffer (small, no references)
** or a sealed message. */
typedef struct offer {
  msg *m;
  const char *p;
  uint32_t n;
  uint64_t flow;
} offer;

static void chan_destroy(cobj *o) {
  chan *c = (chan *)o;
  conc_fork_unregister(&c->link);
  for (size_t i = 0; i < c->len; i++)
    conc_msg_free(c->ring[(c->head + i) % c->ringsz].m);
  free(c->ring);
  free(c);
}

int conc_chan_new(lua_State *L) {
  cstate *cs = conc_cs(L);
  lua_Integer cap = -1;
  chan *c;
  if (!lua_isnoneornil(L, 1)) {
    cap = luaL_checkinteger(L, 1);
    luaL_argcheck(L, cap >= 0, 1, "capacity must be non-negative");
  }
  c = aligned_alloc(64, (sizeof *c + 63) & ~(size_t)63);
  if (c == NULL) return luaL_error(L, "not enough memory");
  memset(c, 0, sizeof *c);
  conc_obj_init(&c->obj, K_CHANNEL);
  conc_cmutex_init(&c->mu);
  c->cap = cap;
  atomic_init(&c->len, 0);
  atomic_init(&c->closed, 0);
  atomic_init(&c->spin, 0);
  conc_fork_register_cm(&c->link, &c->mu);
  conc_obj_push(L, cs, &c->obj);
  conc_obj_release(&c->obj);             /* the handle holds it now */
  return 1;
}

static chan *check_chan(lua_State *L) {
  return (chan *)conc_obj_check(L, 1, K_CHANNEL);
}

static void enlist_receiver(chan *c, selnode *n) {
  if (c->lifo) conc_selq_push_front(&c->recvq, n);
  else conc_selq_push(&c->recvq, n);
}

void conc_chan_lifo(cobj *o) {
  ((chan *)o)->lifo = 1;
}

/* Whether the ring has room for one more message; grows it if needed.
** Called with the lock held: 1 room, 0 full, -1 it cannot grow (out of
** memory: not a reason to wait as if full). */
static int ring_room(chan *c) {
  size_t len = atomic_load_explicit(&c->len, memory_order_relaxed);
  if (c->cap >= 0 && (lua_Integer)len >= c->cap) return 0;
  if (len == c->ringsz) {
    size_t nsz = c->ringsz ? c->ringsz * 2 : 8;
    cslot *nr;
    if (c->cap > 0 && (lua_Integer)nsz > c->cap) nsz = (size_t)c->cap;
    nr = malloc(sizeof *nr * nsz);
    if (nr == NULL) return -1;          /* not full: out of memory */
    for (size_t i = 0; i < len; i++) nr[i] = c->ring[(c->head + i) % c->ringsz];
    free(c->ring);
    c->ring = nr;
    c->ringsz = nsz;
    c->head = 0;
  }
  return 1;
}

/* Copies an offer into a slot or a node (same layout of m, n, inl). */
static void place(msg **m, uint32_t *n, char *inl, uint64_t *flow,
                  const offer *o) {
  *m = o->m;
  *n = o->n;
  *flow = o->flow;
  if (o->m == NULL) memcpy(inl, o->p, o->n);
}

static void ring_push(chan *c, const offer *o) {
  size_t len = atomic_load_explicit(&c->len, memory_order_relaxed);
  cslot *s = &c->ring[(c->head + len) % c->ringsz];
  place(&s->m, &s->n, s->inl, &s->flow, o);
  atomic_store_explicit(&c->len, len + 1, memory_order_release);
}

static cslot *ring_pop(chan *c) {
  cslot *s = &c->ring[c->head];
  c->head = (c->head + 1) % c->ringsz;
  atomic_store_explicit(&c->len,
                        atomic_load_explicit(&c->len, memory_order_relaxed) - 1,
                        memory_order_release);
  return s;
}

/* Gives the offer to the oldest receiver still waiting; 1 if one took it. */
static int hand_to_receiver(chan *c, const offer *o) {
  selnode *n;
  while ((n = c->recvq) != NULL) {
    conc_selq_remove(&c->recvq, n);
    if (conc_sel_claim(n->sw, n->index)) {
      place(&n->m, &n->inln, n->inl, &n->flow, o);
      conc_sel_deliver(n, SEL_VALUE);
      return 1;
    }
  }
  return 0;
}

/* Moves the oldest waiting sender's value into node-like storage, or 0. */
static int take_from_sender(chan *c, msg **m, uint32_t *n, char *inl,
                            uint64_t *flow) {
  selnode *s = c->sendq;
  if (s == NULL) return 0;
  conc_selq_remove(&c->sendq, s);
  conc_sel_claim(s->sw, 0);
  *m = s->m;
  *n = s->inln;
  *flow = s->flow;
  if (s->m == NULL) memcpy(inl, s->inl, s->inln);
  s->m = NULL;
  conc_sel_deliver(s, SEL_TAKEN);
  return 1;
}

/* Takes a value if there is one into (m, n, inl): 1, 0 none, -1 closed.
** With the lock held. A freed ring slot lets a waiting sender in. */
static int take(chan *c, msg **m, uint32_t *n, char *inl, uint64_t *flow) {
  if (atomic_load_explicit(&c->len, memory_order_relaxed) > 0) {
    cslot *s = ring_pop(c);
    *m = s->m;
    *n = s->n;
    *flow = s->flow;
    if (s->m == NULL) memcpy(inl, s->inl, s->n);
    if (c->sendq && ring_room(c) > 0) {
      cslot tmp;
      if (take_from_sender(c, &tmp.m, &tmp.n, tmp.inl, &tmp.flow)) {
        offer o = {tmp.m, tmp.inl, tmp.n, tmp.flow};
        ring_push(c, &o);
      }
    }
    return 1;
  }
  if (take_from_sender(c, m, n, inl, flow)) return 1;
  return atomic_load_explicit(&c->closed, memory_order_relaxed) ? -1 : 0;
}

static int chan_ready(void *arg) {
  chan *c = arg;
  return atomic_load_explicit(&c->len, memory_order_acquire) ||
         atomic_load_explicit(&c->closed, memory_order_relaxed);
}

/* A blocked send or recv is over once its node has a result: it is set
** last, after the value. */
static int node_done(void *arg) {
  return ((selnode *)arg)->result != SEL_NONE;
}

/* A send that counted its value for join did not send it, with the
** lock held (undone_locked) or not (unsent). */
static void undone_locked(chan *c) {
  if (--c->unfinished == 0) conc_selq_wake_all(&c->joinq, SEL_DONE);
}

static void unsent(chan *c) {
  conc_cmutex_lock(&c->mu);
  undone_locked(c);
  conc_cmutex_unlock(&c->mu);
}

/* A big string at index 2 lent to a receiver that is waiting already
** (loan in core.h): 1 once it has its copy, -1 the channel is closed, 0
** no receiver took it, or no memory for the message (the encoding path
** then says so). */
static int send_lent(lua_State *L, cstate *cs, chan *c, uint64_t flow) {
  size_t len;
  const char *s = lua_tolstring(L, 2, &len);
  loan ln;
  deadline d;
  offer o;
  int taken;
  if (len < CONC_LOAN_MIN) return 0;
  if ((o.m = conc_msg_lend(s, len, &ln, &cs->park)) == NULL) return 0;
  o.p = NULL;
  o.n = 0;
  o.flow = flow;
  conc_cmutex_lock(&c->mu);
  if (atomic_load_explicit(&c->closed, memory_order_relaxed)) {
    conc_cmutex_unlock(&c->mu);
    conc_msg_free(o.m);
    return -1;
  }
  c->unfinished++;              /* before a receiver can see it */
  taken = hand_to_receiver(c, &o);
  if (!taken) undone_locked(c);
  conc_cmutex_unlock(&c->mu);
  if (!taken) {
    conc_msg_free(o.m);
    return 0;
  }
  conc_deadline_in(&d, -1);
  conc_wait_until(&cs->park, NULL, &d, conc_loan_done, &ln, NULL);
  return 1;
}

static int chan_send(lua_State *L) {
  cstate *cs = conc_cs(L);
  chan *c = check_chan(L);
  double t;
  offer o;
  selwait sw;
  selnode n;
  deadline d;
  const char *why = NULL;
  char err[512];
  int result, room, r;
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "cannot send nil");
  t = conc_opttimeout(L, 3);
  o.flow = 0;
  if (conc_trace_on) {
    char b[64];
    snprintf(b, sizeof b, "send channel %lld",
             (long long)conc_obj_number(&c->obj));
    o.flow = conc_trace_flow();
    conc_trace_event('s', cs->trace_tid, "message", "message", b, o.flow);
  }
  if (lua_type(L, 2) == LUA_TSTRING && (r = send_lent(L, cs, c, o.flow)) != 0) {
    if (r < 0) return luaL_error(L, "send on a closed channel");
    lua_pushboolean(L, 1);
    return 1;
  }
  if ((r = conc_marshal_encode(L, cs, 2, 1, &cs->scratch, 0, "value", err,
                               sizeof err)) != 0)
    return conc_msg_raise(L, r, err);
  o.m = NULL;
  o.p = cs->scratch.p;
  o.n = (uint32_t)cs->scratch.n;
  if (cs->scratch.n > SEL_INLINE || cs->scratch.nrefs > 0) {
    o.m = conc_msg_seal(&cs->scratch);
    if (o.m == NULL) {
      conc_mbuf_reset(&cs->scratch);
      return conc_nomem(L);
    }
  }
  conc_cmutex_lock(&c->mu);
  if (atomic_load_explicit(&c->closed, memory_order_relaxed)) {
    conc_cmutex_unlock(&c->mu);
    conc_msg_free(o.m);
    conc_mbuf_reset(&cs->scratch);
    return luaL_error(L, "send on a closed channel");
  }
  c->unfinished++;              /* before a receiver can see it */
  room = hand_to_receiver(c, &o) ? 2 : c->cap != 0 ? ring_room(c) : 0;
  if (room == 1) ring_push(c, &o);
  if (room != 0) {
    conc_cmutex_unlock(&c->mu);
    conc_mbuf_reset(&cs->scratch);
    if (room > 0) {
      lua_pushboolean(L, 1);
      return 1;
    }
    conc_msg_free(o.m);            /* an unbounded ring that cannot grow */
    unsent(c);
    return conc_nomem(L);
  }
  if (t == 0) {
    undone_locked(c);
    conc_cmutex_unlock(&c->mu);
    conc_msg_free(o.m);
    conc_mbuf_reset(&cs->scratch);
    lua_pushboolean(L, 0);
    return 1;
  }
  /* wait for a receiver to take it */
  conc_waiter_init(&sw, &n, &cs->park);
  place(&n.m, &n.inln, n.inl, &n.flow, &o);
  conc_mbuf_reset(&cs->scratch);
  conc_selq_push(&c->sendq, &n);
  conc_cmutex_unlock(&c->mu);
  conc_deadline_in(&d, t);
  conc_cs_waiting_obj(cs, "send", &c->obj);
  if (d.forever) conc_cs_stuck(cs, 1);
  conc_wait_until(&cs->park, cs, &d, node_done, &n, &why);
  if (d.forever) conc_cs_stuck(cs, 0);
  conc_cs_waiting(cs, NULL);
  result = n.result;            /* set last by a receiver or a close */
  if (result == SEL_NONE) {
    conc_cmutex_lock(&c->mu);
    if (n.linked) conc_selq_remove(&c->sendq, &n);
    result = n.result;
    conc_cmutex_unlock(&c->mu);
  }
  o.m = n.m;                    /* NULL once a receiver took it */
  if (result == SEL_TAKEN) {
    lua_pushboolean(L, 1);
    return 1;
  }
  conc_msg_free(o.m);
  unsent(c);
  if (result == SEL_CLOSED) return luaL_error(L, "send on a closed channel");
  if (why) return conc_cs_raisestop(L, cs, why);
  lua_pushboolean(L, 0);
  return 1;
}

/* recv with a timeout; pushes what recv returns. */
static int chan_recv_d(lua_State *L, cstate *cs, chan *c, double t) {
  msg *m = NULL;
  uint32_t len = 0;
  uint64_t flow = 0;
  char inl[SEL_INLINE];
  selwait sw;
  selnode n;
  deadline d;
  const char *why = NULL;
  int r, result;
  conc_cmutex_lock(&c->mu);
  r = take(c, &m, &len, inl, &flow);
  if (r == 0 && t != 0) {
    /* spin a little: a sender on another core may be just about to send */
    conc_cmutex_unlock(&c->mu);
    conc_spin(&c->spin, chan_ready, c);
    conc_cmutex_lock(&c->mu);
    r = take(c, &m, &len, inl, &flow);
  }
  if (r != 0 || t == 0) {
    conc_cmutex_unlock(&c->mu);
    if (r > 0) {
      if (flow) conc_trace_event('f', cs->trace_tid, "message", "message",
                                 NULL, flow);
      return conc_sel_push_value(L, cs, m, inl, len);
    }
    lua_pushnil(L);
    lua_pushstring(L, r < 0 ? "closed" : "timeout");
    return 2;
  }
  conc_waiter_init(&sw, &n, &cs->park);
  enlist_receiver(c, &n);
  conc_cmutex_unlock(&c->mu);
  conc_deadline_in(&d, t);
  conc_cs_waiting_obj(cs, "recv", &c->obj);
  if (d.forever) conc_cs_stuck(cs, 1);
  conc_wait_until(&cs->park, cs, &d, node_done, &n, &why);
  if (d.forever) conc_cs_stuck(cs, 0);
  conc_cs_waiting(cs, NULL);
  /* a sender that handed a value over unlinked the node, filled it, then
  ** set its result: nothing left to do under the lock (and the woken
  ** thread does not fight the sender for it) */
  result = n.result;
  if (result == SEL_NONE) {
    conc_cmutex_lock(&c->mu);
    if (n.linked) conc_selq_remove(&c->recvq, &n);
    result = n.result;
    conc_cmutex_unlock(&c->mu);
  }
  if (result == SEL_VALUE) return conc_sel_push(L, cs, &n);
  if (result == SEL_CLOSED) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (why) return conc_cs_raisestop(L, cs, why);
  lua_pushnil(L);
  lua_pushliteral(L, "timeout");
  return 2;
}

static int chan_recv(lua_State *L) {
  chan *c = check_chan(L);
  return chan_recv_d(L, conc_cs(L), c, conc_opttimeout(L, 2));
}

/* Closes c and wakes every waiter. */
void conc_chan_shut(cobj *o) {
  chan *c = (chan *)o;
  selnode *n;
  conc_cmutex_lock(&c->mu);
  atomic_store(&c->closed, 1);
  while ((n = c->recvq) != NULL) {
    conc_selq_remove(&c->recvq, n);
    conc_sel_deliver(n, SEL_CLOSED);
  }
  while ((n = c->sendq) != NULL) {
    conc_selq_remove(&c->sendq, n);
    conc_sel_deliver(n, SEL_CLOSED);
  }
  conc_cmutex_unlock(&c->mu);
}

static int chan_close(lua_State *L) {
  conc_chan_shut((cobj *)check_chan(L));
  return 0;
}

/* For a producer with no Lua state (conc.mpi's communication thread). */
cobj *conc_chan_make(void) {
  chan *c = aligned_alloc(64, (sizeof *c + 63) & ~(size_t)63);
  if (c == NULL) return NULL;
  memset(c, 0, sizeof *c);
  conc_obj_init(&c->obj, K_CHANNEL);
  conc_cmutex_init(&c->mu);
  c->cap = -1;
  atomic_init(&c->len, 0);
  atomic_init(&c->closed, 0);
  atomic_init(&c->spin, 0);
  conc_fork_register_cm(&c->link, &c->mu);
  return &c->obj;
}

int conc_chan_put(cobj *o, msg *m) {
  chan *c = (chan *)o;
  offer of = {m, m->data, (uint32_t)m->n, 0};  /* no trace flow: not sent here */
  int room;
  conc_cmutex_lock(&c->mu);
  if (atomic_load_explicit(&c->closed, memory_order_relaxed)) {
    conc_cmutex_unlock(&c->mu);
    conc_msg_free(m);
    return -1;
  }
  room = hand_to_receiver(c, &of) ? 2 : ring_room(c);
  if (room == 1) ring_push(c, &of);
  conc_cmutex_unlock(&c->mu);
  if (room < 0) {
    conc_msg_free(m);
    return -1;
  }
  return 0;
}

/* Moves what is queued in 'from' to the end of 'to', in order. */
void conc_chan_move(cobj *from, cobj *to) {
  chan *c = (chan *)from;
  for (;;) {
    msg *m = NULL;
    uint32_t n = 0;
    uint64_t flow;                          /* 0: put from C (conc.mpi) */
    char inl[SEL_INLINE];
    int r;
    conc_cmutex_lock(&c->mu);
    r = take(c, &m, &n, inl, &flow);
    conc_cmutex_unlock(&c->mu);
    if (r <= 0) return;
    if (m == NULL && (m = conc_msg_copy(inl, n)) == NULL) return;
    conc_chan_put(to, m);
  }
}

size_t conc_chan_count(cobj *o) {
  return atomic_load(&((chan *)o)->len);
}

/* ch:task_done(): one value received is done with. */
static int chan_task_done(lua_State *L) {
  chan *c = check_chan(L);
  conc_cmutex_lock(&c->mu);
  if (c->unfinished <= 0) {
    conc_cmutex_unlock(&c->mu);
    return luaL_error(L, "task_done called too many times");
  }
  undone_locked(c);
  conc_cmutex_unlock(&c->mu);
  return 0;
}

/* ch:join([seconds]): true once every value sent was marked done. */
static int chan_join(lua_State *L) {
  cstate *cs = conc_cs(L);
  chan *c = check_chan(L);
  double t = conc_opttimeout(L, 2);
  selwait sw;
  selnode n;
  deadline d;
  const char *why = NULL;
  int done;
  conc_cmutex_lock(&c->mu);
  done = c->unfinished == 0;
  if (done || t == 0) {
    conc_cmutex_unlock(&c->mu);
    lua_pushboolean(L, done);
    return 1;
  }
  conc_waiter_init(&sw, &n, &cs->park);
  conc_selq_push(&c->joinq, &n);
  conc_cmutex_unlock(&c->mu);
  conc_deadline_in(&d, t);
  conc_cs_waiting(cs, "join");
  conc_wait_until(&cs->park, cs, &d, conc_waiter_won, &sw, &why);
  conc_cs_waiting(cs, NULL);
  conc_cmutex_lock(&c->mu);
  if (n.linked) conc_selq_remove(&c->joinq, &n);
  conc_cmutex_unlock(&c->mu);
  done = atomic_load(&sw.won) != 0;
  if (!done && why) return conc_cs_raisestop(L, cs, why);
  lua_pushboolean(L, done);
  return 1;
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
    lua_pushfstring(L, "<channel %I queued%s>", (LUAI_UACINT)len,
                    atomic_load(&c->closed) ? ", closed" : "");
  else
    lua_pushfstring(L, "<channel %I/%I queued%s>", (LUAI_UACINT)len,
                    (LUAI_UACINT)c->cap,
                    atomic_load(&c->closed) ? ", closed" : "");
  return 1;
}

/* select: a value now, or enlisted among the receivers. The claim
** comes before the take, so a select that another item won already
** takes nothing from here. */
static int chan_sel_try(cobj *o, selnode *n) {
  chan *c = (chan *)o;
  conc_cmutex_lock(&c->mu);
  if (atomic_load_explicit(&c->len, memory_order_relaxed) > 0 || c->sendq) {
    if (conc_sel_claim(n->sw, n->index) &&
        take(c, &n->m, &n->inln, n->inl, &n->flow) > 0)
      n->result = SEL_VALUE;
    conc_cmutex_unlock(&c->mu);
    return 1;
  }
  if (atomic_load_explicit(&c->closed, memory_order_relaxed))
    n->result = SEL_CLOSED;
  else
    enlist_receiver(c, n);
  conc_cmutex_unlock(&c->mu);
  return 0;
}

static int chan_sel_ready(cobj *o) {
  return atomic_load_explicit(&((chan *)o)->len, memory_order_relaxed) > 0;
}

static void chan_sel_delist(cobj *o, selnode *n) {
  chan *c = (chan *)o;
  conc_cmutex_lock(&c->mu);
  if (n->linked) conc_selq_remove(&c->recvq, n);
  conc_cmutex_unlock(&c->mu);
}

static const luaL_Reg chan_methods[] = {
    {"send", chan_send},   {"recv", chan_recv},     {"close", chan_close},
    {"len", chan_len},     {"iter", chan_iter},     {"closed", chan_closed},
    {"task_done", chan_task_done}, {"join", chan_join}, {NULL, NULL}};

const kindinfo conc_channel_kind = {
    .kind = K_CHANNEL,
    .tname = "conc.channel",
    .name = "channel",
    .local = 1,
    .destroy = chan_destroy,
    .methods = chan_methods,
    .tostring = chan_tostring,
    .sel_try = chan_sel_try,
    .sel_delist = chan_sel_delist,
    .sel_ready = chan_sel_ready,
    .pinned = 1};

