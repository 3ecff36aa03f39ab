/*
** waitq.c
** Wait queues: how a blocked call, or a conc.select, waits for an object.
**
** DESIGN. A waiter makes a node (selnode) that points at its selwait: its
** parker and a 'won' word. It enlists the node on the object's queue
** under the object's lock, sleeps on its parker (conc_wait_until), and
** delists the node under the lock again before it returns, so no object
** touches the waiter's stack afterwards. An object that has something for
** a waiter claims its selwait with one compare-and-swap (conc_sel_claim):
** the first claim wins, so a select waiting on several objects is given
** one value, and only the winner is woken (conc_sel_deliver). Objects
** that only tell waiters to look again (a pipe's turn came free, a
** watcher gave up) wake them all without a claim (conc_selq_nudge_all).
** select.c builds conc.select on this; each blocking method of a module
** is the one-node case.
*/

#include <errno.h>
#include <string.h>

#include "core.h"

void conc_waiter_init(selwait *sw, selnode *n, parker *p) {
  sw->park = p;
  atomic_init(&sw->won, 0);
  memset(n, 0, sizeof *n);
  n->sw = sw;
}

int conc_wait_until(parker *p, cstate *cs, const deadline *d,
                    int (*done)(void *arg), void *arg, const char **why) {
  for (;;) {
    uint32_t seen = conc_park_seq(p);
    int r;
    if ((r = done(arg)) != 0) return r;
    if (cs && (*why = conc_cs_stopreason(cs)) != NULL) return -1;
    if (cs && cs->stuck && conc_cs_sleeps(cs, &p->seq, seen)) {
      *why = conc_why_deadlock;
      return -1;
    }
    if (conc_park_sleep(p, seen, d) == ETIMEDOUT) return done(arg);
  }
}

int conc_waiter_won(void *sw) {
  return atomic_load(&((selwait *)sw)->won) != 0;
}

int conc_sel_claim(selwait *sw, int index) {
  int expect = 0;
  return atomic_compare_exchange_strong(&sw->won, &expect, index + 1);
}

void conc_sel_deliver(selnode *n, int result) {
  parker *p = n->sw->park;      /* n may be gone once result is set */
  atomic_fetch_add(&p->wakers, 1);
  atomic_store(&n->result, result);
  conc_park_wake(p);
  atomic_fetch_sub(&p->wakers, 1);
}

void conc_selq_push(selnode **head, selnode *n) {
  /* FIFO: append at the tail, kept as head->prev */
  if (*head == NULL) {
    n->next = NULL;
    n->prev = n;
    *head = n;
  } else {
    selnode *tail = (*head)->prev;
    tail->next = n;
    n->prev = tail;
    n->next = NULL;
    (*head)->prev = n;
  }
  n->linked = 1;
}

void conc_selq_push_front(selnode **head, selnode *n) {
  n->next = *head;
  n->prev = *head ? (*head)->prev : n;
  if (*head) (*head)->prev = n;
  *head = n;
  n->linked = 1;
}

void conc_selq_remove(selnode **head, selnode *n) {
  if (!n->linked) return;
  if (*head == n) {
    *head = n->next;
    if (*head) (*head)->prev = n->prev;
  } else {
    n->prev->next = n->next;
    if (n->next) n->next->prev = n->prev;
    else (*head)->prev = n->prev;
  }
  n->next = n->prev = NULL;
  n->linked = 0;
}

void conc_selq_wake_all(selnode **q, int result) {
  selnode *n;
  while ((n = *q) != NULL) {
    conc_selq_remove(q, n);
    if (conc_sel_claim(n->sw, n->index)) {
      n->result = result;
      conc_park_wake(n->sw->park);
    }
  }
}

void conc_selq_nudge_all(selnode **q) {
  selnode *n;
  while ((n = *q) != NULL) {
    conc_selq_remove(q, n);
    conc_park_wake(n->sw->park);
  }
}
