/*
** select.c
** conc.select: wait for the first of several channels, pipe ends, queues,
** worker handles and futures.
**
** DESIGN. The waiter makes one node per item, all sharing one selwait
** (its parker and a 'won' word). It offers each node to its object in
** turn (sel_try): an object that can deliver right away claims the
** selwait and hands the value over; otherwise it enlists the node under
** its own lock. Later, an object that gets something to deliver (a value,
** the end of a worker) claims the selwait with one compare-and-swap: the
** first claim wins, the value goes straight into the winning node, and
** only that waiter is woken. Objects that use fds (pipes, queues,
** processes) are polled instead of enlisting. A closed channel never
** wins: it marks its node SEL_CLOSED and wakes the waiter, which returns
** nil, "closed" once every item is closed. Whatever happens, every node
** is delisted (under its object's lock) before select returns, so no
** object can touch the waiter's stack afterwards.
*/

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "modules.h"

/* Pushes a received value: a message (freed), or else n bytes inline
** (a copy on the caller's stack: nothing to free if decoding raises). */
int conc_sel_push_value(lua_State *L, cstate *cs, msg *m, const char *inl,
                   uint32_t n) {
  char err[160];
  int k;
  if (m) return conc_msg_push(L, cs, m);
  k = conc_marshal_decode(L, cs, inl, n, NULL, 0, err, sizeof err);
  if (k < 0) return luaL_error(L, "%s", err);
  return k;
}

int conc_sel_push(lua_State *L, cstate *cs, selnode *n) {
  msg *m = n->m;
  n->m = NULL;
  if (n->flow) {
    conc_trace_event('f', cs->trace_tid, "message", "message", NULL, n->flow);
    n->flow = 0;
  }
  return conc_sel_push_value(L, cs, m, n->inl, n->inln);
}

#define SMALL 8

/* A node's first offer: it belongs to sw, as item i. */
static void node_init(selnode *n, selwait *sw, lua_Integer i) {
  n->prev = n->next = NULL;
  n->sw = sw;
  n->index = (int)i;
  n->linked = 0;
  n->flags = 0;
  n->m = NULL;
  n->inln = 0;
  n->flow = 0;
}

typedef struct selitem {
  cobj *o;
  const kindinfo *k;
} selitem;

/* The first item at or after i that is not closed, or n. */
static lua_Integer next_open(const selnode *nodes, lua_Integer n,
                             lua_Integer i) {
  while (i < n && nodes[i].result == SEL_CLOSED) i++;
  return i;
}

/* Each item i not closed (a closed channel never wins: select skips it). */
#define each_open(i) \
  for (i = next_open(nodes, n, 0); i < n; i = next_open(nodes, n, i + 1))

int conc_select(lua_State *L) {
  cstate *cs = conc_cs(L);
  selitem small_items[SMALL], *items = small_items;
  selnode small_nodes[SMALL], *nodes = small_nodes;
  char small_offered[SMALL], *offered = small_offered;
  struct pollfd small_fds[2 * SMALL + 1], *fds = small_fds;
  selwait sw;
  deadline d;
  lua_Integer n, i;
  int nfd = 0, stop = 0, allclosed = 0, stuck;
  const char *why = NULL;
  char what[64];
  uint32_t pid = (uint32_t)conc_getpid();
  luaL_checktype(L, 1, LUA_TTABLE);
  conc_deadline_in(&d, conc_opttimeout(L, 2));
  if (lua_getmetatable(L, 1)) {      /* a __len to respect */
    lua_pop(L, 1);
    n = luaL_len(L, 1);
  } else {
    n = (lua_Integer)lua_rawlen(L, 1);
  }
  luaL_argcheck(L, n > 0, 1, "empty list");
  luaL_argcheck(L, n <= 100000, 1, "too many items");
  if (n <= SMALL) luaL_checkstack(L, (int)n + 8, "too many items");
  if (n > SMALL) {   /* boxes that the GC frees, even if we raise */
    items = lua_newuserdatauv(L, sizeof *items * (size_t)n, 0);
    nodes = lua_newuserdatauv(L, sizeof *nodes * (size_t)n, 0);
    fds = lua_newuserdatauv(L, sizeof *fds * (size_t)(2 * n + 1), 0);
    offered = lua_newuserdatauv(L, (size_t)n, 0);
  }
  for (i = 0; i < n; i++) {
    int stand_in = 0;
    cobj *o;
    lua_rawgeti(L, 1, i + 1);
    items[i].o = o = i < CONC_OBJCACHE ? conc_obj_test_slot(L, cs, -1, (int)i)
                                       : conc_obj_test(L, cs, -1);
    /* an item of a module built on conc objects (conc.mpi's ends) names
    ** the object to wait on with a __select metamethod; it stays on the
    ** stack while the select runs, and the item is what select returns */
    if (o == NULL && luaL_getmetafield(L, -1, "__select") != LUA_TNIL) {
      luaL_checkstack(L, 4, "too many items");
      lua_insert(L, -2);
      lua_call(L, 1, 1);
      items[i].o = o = conc_obj_test(L, cs, -1);
      stand_in = o != NULL;
    }
    if (o == NULL || conc_kinds[o->kind]->sel_try == NULL)
      return luaL_argerror(L, 1, lua_pushfstring(L,
                        "item %d is a %s, not a channel, pipe end, queue, "
                        "thread, process, timer or future", (int)i + 1,
                        o ? conc_kinds[o->kind]->tname
                                   : luaL_typename(L, -1)));
    items[i].k = conc_kinds[o->kind];
    if (items[i].k->pinned && conc_obj_home(o) != pid &&
        conc_obj_foreign(o, what, sizeof what))
      return luaL_argerror(L, 1, lua_pushfstring(L,
                           "item %d: %s belongs to another process", (int)i + 1,
                           what));
    /* a short list stays on the stack (one pop less per item); a long
    ** one does not, but for its stand-ins */
    if (!stand_in && n > SMALL) lua_pop(L, 1);
    /* the rest of the node when it is first offered (node_init) */
    atomic_init(&nodes[i].result, 0);
    offered[i] = 0;
  }
  sw.park = &cs->park;
  atomic_init(&sw.won, 0);
  /* the common case, an item that has a value already: look without
  ** locks along the list, so that the items before it are not enlisted
  ** and delisted for nothing. The look stops at the first item that
  ** cannot be looked at this way (the first ready item must win). */
  for (i = 0; i < n; i++) {
    if (items[i].k->sel_ready == NULL) break;
    if (!items[i].k->sel_ready(items[i].o)) continue;
    node_init(&nodes[i], &sw, i);
    offered[i] = 1;
    if (items[i].k->sel_try(items[i].o, &nodes[i])) {
      offered[i] = 2;     /* answered at once: never enlisted (sel_ready) */
      break;
    }
  }
  if (i < n && atomic_load(&sw.won)) goto done;
  /* stuck when only this process's threads could end it: channels and
  ** threads, no timeout */
  stuck = d.forever;
  for (i = 0; i < n && stuck; i++)
    stuck = items[i].o->kind == K_CHANNEL || items[i].o->kind == K_THREAD;
  conc_cs_waiting(cs, "select");
  if (stuck) conc_cs_stuck(cs, 1);
  for (;;) {
    int offer = 0;
    /* offer each item once (an object keeps an enlisted node until it
    ** delivers, or until another item won), and fd items every time
    ** round (their sel_try knows whether they enlisted) */
    each_open(i) {
      if (atomic_load(&sw.won)) break;
      if (offered[i] && !items[i].k->sel_fds) continue;
      if (!offered[i]) node_init(&nodes[i], &sw, i);
      offered[i] = 1;
      if (items[i].k->sel_try(items[i].o, &nodes[i])) break;
    }
    while (!offer) {
      uint32_t seen = conc_park_seq(&cs->park);
      if (atomic_load(&sw.won)) break;
      if (next_open(nodes, n, 0) == n) {
        allclosed = 1;
        break;
      }
      if ((why = conc_cs_stopreason(cs)) != NULL) {
        stop = 1;
        break;
      }
      if (conc_deadline_passed(&d)) break;
      nfd = 0;
      each_open(i) {
        int f[2], k;
        if (!items[i].k->sel_fds) continue;
        k = items[i].k->sel_fds(items[i].o, f);
        for (int j = 0; j < k; j++) {
          fds[nfd].fd = f[j];
          fds[nfd].events = POLLIN;
          fds[nfd].revents = 0;
          nfd++;
        }
      }
      if (stuck && conc_cs_sleeps(cs, &cs->park.seq, seen)) {
        why = conc_why_deadlock;
        stop = 1;
        break;
      }
      if (nfd)
        conc_park_poll(&cs->park, seen, fds, nfd, &d);
      else
        conc_park_sleep(&cs->park, seen, &d);
      /* woken: offer again what is not enlisted (an fd is ready, or an
      ** object dropped a node without a value, as a process does when
      ** the thread watching it gives up) */
      offer = 1;
    }
    if (!offer) break;
  }
  if (stuck) conc_cs_stuck(cs, 0);
  conc_cs_waiting(cs, NULL);
done:
  for (i = 0; i < n; i++)   /* an item never offered was never enlisted */
    if (offered[i] == 1 && items[i].k->sel_delist)
      items[i].k->sel_delist(items[i].o, &nodes[i]);
  if (atomic_load(&sw.won)) {
    int w = atomic_load(&sw.won) - 1;
    lua_rawgeti(L, 1, w + 1);
    if (nodes[w].result == SEL_VALUE)
      return 1 + conc_sel_push(L, cs, &nodes[w]);
    if (nodes[w].result == SEL_SELF) lua_pushvalue(L, -1);   /* a future */
    else lua_pushboolean(L, 1);
    return 2;
  }
  if (stop) return conc_cs_raisestop(L, cs, why);
  lua_pushnil(L);
  lua_pushstring(L, allclosed ? "closed" : "timeout");
  return 2;
}
