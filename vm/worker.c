/*
** worker.c
** What threads and processes have in common: identity, the end of a
** worker and who hears of it, the outcome a join returns, the list of a
** runtime's workers (the wait at exit is exit.c's).
**
** DESIGN. A worker is a refcounted object held by its handles, by the
** code that runs it (the OS thread, or the parent's process record) and
** by its runtime's list. It stays on the list while it runs and, when it
** failed, until a join has seen the failure or the exit report has
** printed it; a worker that ended well leaves the list at once. Waiters
** (join, wait, select) enlist a select node under the worker's lock;
** conc_worker_finish claims and wakes each of them under the same lock, so a
** waiter that returns (after delisting itself under that lock) can never
** be touched by a late wake-up.
*/

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers.h"

void conc_worker_destroy(cobj *o) {
  worker *w = (worker *)o;
  conc_fork_unregister(&w->link);
  conc_msg_free(w->result);
  free(w->errmsg);
  free(w->name);
  conc_mbuf_free(&w->inbuf);
  pthread_mutex_destroy(&w->mu);
  conc_rt_release(w->rt);
  free(w);
}

/* "process-12" into buf: by hand, since printf's frame is deep enough to
** make a spawn_process write one more stack page, and every page the
** parent writes between forks is a copy-on-write fault. */
static const char *default_name(char *buf, const char *kind, int64_t id) {
  char digits[24];
  size_t n = strlen(kind);
  int k = 0;
  uint64_t u = (uint64_t)id;
  do digits[k++] = (char)('0' + u % 10);
  while ((u /= 10) != 0);
  memcpy(buf, kind, n);
  buf[n++] = '-';
  while (k > 0) buf[n++] = digits[--k];
  buf[n] = '\0';
  return buf;
}

worker *conc_worker_new(rt *r, int kind, const char *name, int daemon) {
  worker *w = calloc(1, sizeof *w);
  char buf[48];
  if (w == NULL) return NULL;
  conc_obj_init(&w->obj, kind);
  w->id = conc_rt_nextid();
  if (name == NULL)
    name = default_name(buf, kind == K_THREAD ? "thread" : "process", w->id);
  w->name = strdup(name);
  if (w->name == NULL) {
    free(w);
    return NULL;
  }
  w->rt = r;
  conc_rt_retain(r);
  w->daemon = daemon;
  atomic_init(&w->status, W_RUNNING);
  w->pidfd = w->rfd = -1;
  atomic_init(&w->cancel, 0);
  atomic_init(&w->handles, 0);
  conc_mbuf_init(&w->inbuf);
  pthread_mutex_init(&w->mu, NULL);
  conc_fork_register(&w->link, &w->mu);
  return w;
}

/* The runtime's list holds a reference while the worker is on it. */
void conc_worker_register(worker *w) {
  rt *r = w->rt;
  conc_obj_retain(&w->obj);
  pthread_mutex_lock(&r->mu);
  w->registered = 1;
  w->next = r->head;
  w->prev = NULL;
  if (r->head) r->head->prev = w;
  r->head = w;
  pthread_mutex_unlock(&r->mu);
}

void conc_worker_unregister(worker *w) {
  rt *r = w->rt;
  int was;
  pthread_mutex_lock(&r->mu);
  was = w->registered;
  if (was) {
    if (w->prev) w->prev->next = w->next;
    else r->head = w->next;
    if (w->next) w->next->prev = w->prev;
    w->registered = 0;
    w->prev = w->next = NULL;
  }
  pthread_mutex_unlock(&r->mu);
  if (was) conc_obj_release(&w->obj);
}

int conc_worker_isfailure(int st) {
  return st == W_FAILED || st == W_KILLED;
}

/* A cancel that conc_thread_cancel answered true for (under w->mu, while the
** worker ran) decides the end, whatever the worker's code did after it:
** its results or error are dropped (outside the lock: dropping them may
** destroy objects, whose locks are not taken under another's). */
void conc_worker_finish(worker *w, int status, msg *result, char *errmsg) {
  msg *drop = NULL;
  char *droperr = NULL;
  pthread_mutex_lock(&w->mu);
  if (atomic_load(&w->cancel) && status != W_CANCELLED) {
    drop = result;
    droperr = errmsg;
    result = NULL;
    errmsg = NULL;
    status = W_CANCELLED;
  }
  w->result = result;
  w->errmsg = errmsg;
  atomic_store_explicit(&w->status, status, memory_order_release);
  conc_selq_wake_all(&w->waiters, SEL_DONE);
  pthread_mutex_unlock(&w->mu);
  conc_msg_free(drop);
  free(droperr);
  /* Its lock is not for forked children any more: they never take it
  ** (handles of another process's workers are refused), and fork need
  ** not touch it. */
  conc_fork_unregister(&w->link);
  if (!conc_worker_isfailure(status)) conc_worker_unregister(w);
}

void conc_worker_await(worker *w) {
  pthread_mutex_lock(&w->rt->mu);
  w->daemon = 0;
  pthread_mutex_unlock(&w->rt->mu);
}

int conc_worker_status(worker *w) {
  return atomic_load(&w->status);
}

const char *conc_worker_statusname(int st) {
  switch (st) {
    case W_RUNNING: return "running";
    case W_DONE: return "done";
    case W_FAILED: return "failed";
    case W_CANCELLED: return "cancelled";
    default: return "killed";
  }
}

int conc_worker_sel_try(cobj *o, selnode *n) {
  worker *w = (worker *)o;
  pthread_mutex_lock(&w->mu);
  if (w->status != W_RUNNING) {
    if (conc_sel_claim(n->sw, n->index)) n->result = SEL_DONE;
    pthread_mutex_unlock(&w->mu);
    return 1;
  }
  conc_selq_push(&w->waiters, n);
  pthread_mutex_unlock(&w->mu);
  return 0;
}

void conc_worker_sel_delist(cobj *o, selnode *n) {
  worker *w = (worker *)o;
  pthread_mutex_lock(&w->mu);
  if (n->linked) conc_selq_remove(&w->waiters, n);
  pthread_mutex_unlock(&w->mu);
}

/* Sleeps on parker p until w ends (a thread's last step, or the reaper
** or another thread reaping a process), the deadline passes or cs (if
** any) is asked to stop. 1 ended, 0 timeout, -1 stop (why in *why); with
** 'watched', 2 when the thread watching the process gave that role up
** (the caller may take it). */
int conc_worker_wait_end(parker *p, cstate *cs, worker *w, const deadline *d,
                    const char **why, int watched) {
  selwait sw;
  selnode n;
  int r = 0;
  sw.park = p;
  atomic_init(&sw.won, 0);
  memset(&n, 0, sizeof n);
  n.sw = &sw;
  if (conc_worker_sel_try(&w->obj, &n)) return 1;
  for (;;) {
    uint32_t seen = conc_park_seq(p);
    if (atomic_load(&sw.won)) {
      r = 1;
      break;
    }
    if (watched) {
      int gone;
      pthread_mutex_lock(&w->mu);
      /* unlinked by the watcher giving up; or it gave up before this
      ** node was on the list, and nobody watches */
      gone = !n.linked || !w->busy;
      pthread_mutex_unlock(&w->mu);
      if (gone) {
        r = 2;
        break;
      }
    }
    if (cs && (*why = conc_cs_stopreason(cs)) != NULL) {
      r = -1;
      break;
    }
    if (conc_park_sleep(p, seen, d) == ETIMEDOUT && !atomic_load(&sw.won)) {
      r = 0;
      break;
    }
  }
  conc_worker_sel_delist(&w->obj, &n);
  if (atomic_load(&sw.won)) r = 1;
  return r;
}

int conc_worker_wait(lua_State *L, cstate *cs, worker *w, const deadline *d) {
  const char *why = NULL;
  int r;
  conc_cs_waiting(cs, "join");
  if (w->obj.kind == K_PROCESS)
    r = conc_process_wait(cs, &cs->park, w, d, &why);
  else
    r = conc_worker_wait_end(&cs->park, cs, w, d, &why, 0);
  conc_cs_waiting(cs, NULL);
  if (r < 0) conc_cs_raisestop(L, cs, why);
  return r;
}

/* What join gives once w ended: the results, or the error raised. */
int conc_worker_push_outcome(lua_State *L, cstate *cs, worker *w) {
  int st = conc_worker_status(w);
  char err[160];
  if (st == W_DONE) {
    int n = 0;
    if (w->result) {
      n = conc_marshal_decode(L, cs, w->result->data, w->result->n,
                         w->result->refs, w->result->nrefs,
                         w->obj.kind == K_PROCESS ? MARSHAL_REMOTE : 0, err,
                         sizeof err);
      if (n < 0) return luaL_error(L, "%s", err);
    }
    return n;
  }
  pthread_mutex_lock(&w->mu);
  w->joined = 1;
  pthread_mutex_unlock(&w->mu);
  conc_worker_unregister(w);
  if (st == W_CANCELLED) {
    lua_pushliteral(L, "cancelled");
    return lua_error(L);
  }
  if (w->result) {      /* a non-string error value, copied */
    int n = conc_marshal_decode(L, cs, w->result->data, w->result->n,
                           w->result->refs, w->result->nrefs,
                           w->obj.kind == K_PROCESS ? MARSHAL_REMOTE : 0,
                           err, sizeof err);
    if (n < 0) return luaL_error(L, "%s", err);
    lua_settop(L, lua_gettop(L) - n + 1);
    return lua_error(L);
  }
  lua_pushstring(L, w->errmsg ? w->errmsg : "failed");
  return lua_error(L);
}

/* ------------------------------------------------------------ listing */

typedef struct winfo {
  int64_t id;
  char *name;
  int kind;
  pid_t pid;
  int status;
  const char *waiting;
} winfo;

/* conc.workers(): the live threads and processes of the runtime. The
** list is copied under the runtime's lock; processes are polled after,
** since a process that ended leaves the list (which takes that lock). */
void conc_worker_list(lua_State *L, cstate *cs) {
  rt *r = cs->rt;
  winfo *v = NULL;
  worker **ws = NULL;
  int n = 0, nw = 0, cap = 0, oom = 0;
  worker *w;
  pthread_mutex_lock(&r->mu);
  for (w = r->head; w; w = w->next) nw++;
  ws = malloc(sizeof *ws * (size_t)(nw ? nw : 1));
  nw = 0;
  if (ws) {
    for (w = r->head; w; w = w->next) {
      if (w->obj.kind == K_PROCESS && w->owner != conc_getpid()) continue;
      conc_obj_retain(&w->obj);
      ws[nw++] = w;
    }
  }
  pthread_mutex_unlock(&r->mu);
  if (ws == NULL) luaL_error(L, "not enough memory");
  for (int i = 0; i < nw; i++) {
    int st;
    w = ws[i];
    if (w->obj.kind == K_PROCESS) conc_process_poll(w);
    pthread_mutex_lock(&w->mu);
    st = w->status;
    if (st == W_RUNNING && !oom) {
      if (n == cap) {
        winfo *nv = realloc(v, sizeof *v * (size_t)(cap = cap ? cap * 2 : 16));
        if (nv == NULL) oom = 1;
        else v = nv;
      }
      if (!oom) {
        v[n].id = w->id;
        v[n].name = strdup(w->name);
        v[n].kind = w->obj.kind;
        v[n].pid = w->pid;
        v[n].status = st;
        v[n].waiting = w->cs ? atomic_load(&w->cs->waiting_on) : NULL;
        if (v[n].name == NULL) oom = 1;
        else n++;
      }
    }
    pthread_mutex_unlock(&w->mu);
  }
  for (int i = 0; i < nw; i++) conc_obj_release(&ws[i]->obj);
  free(ws);
  if (oom) {
    for (int i = 0; i < n; i++) free(v[i].name);
    free(v);
    luaL_error(L, "not enough memory");
  }
  lua_createtable(L, n, 0);
  for (int i = n - 1, k = 1; i >= 0; i--, k++) {   /* oldest first */
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, v[i].id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, v[i].name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, v[i].kind == K_THREAD ? "thread" : "process");
    lua_setfield(L, -2, "kind");
    if (v[i].kind == K_PROCESS) {
      lua_pushinteger(L, v[i].pid);
      lua_setfield(L, -2, "pid");
    }
    lua_pushstring(L, conc_worker_statusname(v[i].status));
    lua_setfield(L, -2, "status");
    if (v[i].waiting) {
      lua_pushstring(L, v[i].waiting);
      lua_setfield(L, -2, "waiting_on");
    }
    lua_rawseti(L, -2, k);
  }
  for (int i = 0; i < n; i++) free(v[i].name);
  free(v);
}

/* In a forked child: the workers on the list are the parent's. */
void conc_rt_forget_workers(rt *r) {
  r->head = NULL;                /* their records stay, as the parent's */
  r->hooks_running = 0;          /* so are the threads running hooks */
  r->pid = conc_getpid();
}

/* The workers of r that pick says yes to, each retained, in a malloc'd
** array (*n of them; as many as memory allows). The caller releases
** each and frees the array. */
worker **conc_rt_pick(rt *r, int (*pick)(worker *w), int *n) {
  worker **v = NULL;
  int cap = 0;
  *n = 0;
  pthread_mutex_lock(&r->mu);
  for (worker *w = r->head; w; w = w->next) {
    if (!pick(w)) continue;
    if (*n == cap) {
      worker **nv = realloc(v, sizeof *v * (size_t)(cap = cap ? cap * 2 : 8));
      if (nv == NULL) break;
      v = nv;
    }
    conc_obj_retain(&w->obj);
    v[(*n)++] = w;
  }
  pthread_mutex_unlock(&r->mu);
  return v;
}
