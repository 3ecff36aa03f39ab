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

worker *conc_worker_new(rt *r, const workerops *ops, const char *name,
                        int daemon) {
  worker *w = calloc(1, sizeof *w);
  char buf[48];
  if (w == NULL) return NULL;
  conc_obj_init(&w->obj, ops->kind);
  w->ops = ops;
  w->id = conc_rt_nextid();
  if (name == NULL)
    name = default_name(buf, ops->name, w->id);
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
void conc_worker_trace(cstate *cs, const char *verb, worker *w) {
  char b[96];
  snprintf(b, sizeof b, "%s %s %lld", verb, w->ops->name,
           (long long)w->ops->number(w));
  conc_trace_event('i', cs ? cs->trace_tid : 0, "worker", b, w->name, 0);
}

/* The end of w in a trace: on its own track for a thread, on the
** parent's main track for a process (the reaper tells it). */
static void trace_end(worker *w, int status, const char *errmsg) {
  char b[96];
  const char *verb = status == W_DONE ? "exit"
                     : status == W_FAILED ? "failure"
                     : status == W_CANCELLED ? "cancelled" : "killed";
  snprintf(b, sizeof b, "%s %s %lld", verb, w->ops->name,
           (long long)w->ops->number(w));
  conc_trace_event('i', w->obj.kind == K_THREAD ? w->id : 0, "worker", b,
                   errmsg ? errmsg : w->name, 0);
}

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
  /* before the end is seen: the exit may write the trace out then */
  if (conc_trace_on) trace_end(w, status, errmsg);
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
typedef struct endwait {
  selwait sw;
  selnode n;
  worker *w;
  int watched;
} endwait;

static int end_done(void *arg) {
  endwait *e = arg;
  int gone;
  if (atomic_load(&e->sw.won)) return 1;
  if (!e->watched) return 0;
  pthread_mutex_lock(&e->w->mu);
  /* unlinked by the watcher giving up; or it gave up before this node
  ** was on the list, and nobody watches */
  gone = !e->n.linked || !e->w->busy;
  pthread_mutex_unlock(&e->w->mu);
  return gone ? 2 : 0;
}

int conc_worker_wait_end(parker *p, cstate *cs, worker *w, const deadline *d,
                         const char **why, int watched) {
  endwait e;
  int r;
  conc_waiter_init(&e.sw, &e.n, p);
  e.w = w;
  e.watched = watched;
  if (conc_worker_sel_try(&w->obj, &e.n)) return 1;
  r = conc_wait_until(p, cs, d, end_done, &e, why);
  conc_worker_sel_delist(&w->obj, &e.n);
  if (atomic_load(&e.sw.won)) r = 1;
  return r;
}

int conc_worker_wait(lua_State *L, cstate *cs, worker *w, const deadline *d) {
  const char *why = NULL;
  /* a thread's end only this process's threads can bring */
  int stuck = d->forever && w->obj.kind == K_THREAD;
  int r;
  conc_cs_waiting_obj(cs, "join", &w->obj);
  if (stuck) conc_cs_stuck(cs, 1);
  r = w->ops->wait(&cs->park, cs, w, d, &why);
  if (stuck) conc_cs_stuck(cs, 0);
  conc_cs_waiting(cs, NULL);
  if (r < 0) conc_cs_raisestop(L, cs, why);
  return r;
}

/* ------------------------------------------------------------ handles */

/* The worker behind argument 1 of a common method, or raises. */
static worker *check_worker(lua_State *L) {
  cstate *cs = conc_cs(L);
  int kind = K_THREAD;
  worker *w;
  if (lua_getmetatable(L, 1)) {              /* which of the two kinds */
    if (cs->mt[K_PROCESS] == lua_topointer(L, -1)) kind = K_PROCESS;
    lua_pop(L, 1);
  }
  w = (worker *)conc_obj_check(L, 1, kind);
  if (w->owner != conc_getpid())
    luaL_error(L, w->ops->notmine, (LUAI_UACINT)w->ops->number(w));
  return w;
}

int conc_worker_join(lua_State *L) {
  cstate *cs = conc_cs(L);
  worker *w = check_worker(L);
  deadline d;
  if (cs->self == w)
    return luaL_error(L, "a %s cannot join itself", w->ops->name);
  conc_deadline_in(&d, -1);
  conc_worker_wait(L, cs, w, &d);
  return conc_worker_push_outcome(L, cs, w);
}

int conc_worker_wait_m(lua_State *L) {
  cstate *cs = conc_cs(L);
  worker *w = check_worker(L);
  deadline d;
  double t = conc_opttimeout(L, 2);
  if (cs->self == w && t < 0)
    return luaL_error(L, "a %s cannot wait for itself", w->ops->name);
  conc_deadline_in(&d, t);
  lua_pushboolean(L, conc_worker_wait(L, cs, w, &d));
  return 1;
}

/* status, alive and tostring look first (a process is reaped if it ended
** and nobody watches it), as a poll loop expects. */
static int looked_status(worker *w) {
  if (w->ops->poll) w->ops->poll(w);
  return conc_worker_status(w);
}

int conc_worker_status_m(lua_State *L) {
  worker *w = check_worker(L);
  lua_pushstring(L, conc_worker_statusname(looked_status(w)));
  return 1;
}

int conc_worker_alive(lua_State *L) {
  worker *w = check_worker(L);
  lua_pushboolean(L, looked_status(w) == W_RUNNING);
  return 1;
}

/* __index for the fields: id, name, and the ops' number (pid). */
int conc_worker_index(lua_State *L) {
  worker *w = *(worker **)lua_touserdata(L, 1);   /* the handle's object */
  const char *k = lua_tostring(L, 2);
  conc_obj_checkhome(L, &w->obj);
  if (k && strcmp(k, "id") == 0) lua_pushinteger(L, w->id);
  else if (k && strcmp(k, "name") == 0) lua_pushstring(L, w->name);
  else if (k && strcmp(k, w->ops->numfield) == 0)
    lua_pushinteger(L, w->ops->number(w));
  else lua_pushnil(L);
  return 1;
}

int conc_worker_tostring(lua_State *L) {
  worker *w = *(worker **)lua_touserdata(L, 1);
  int st = looked_status(w);
  lua_pushfstring(L, "<%s %I \"%s\" %s>", w->ops->name,
                  (LUAI_UACINT)w->ops->number(w), w->name,
                  conc_worker_statusname(st));
  return 1;
}

/* What join gives once w ended: the results, or the error raised. */
int conc_worker_push_outcome(lua_State *L, cstate *cs, worker *w) {
  int st = conc_worker_status(w);
  char err[160];
  if (st == W_DONE) {
    int n = 0;
    if (w->result) {
      n = conc_marshal_decode(L, cs, w->result->data, w->result->n,
                         w->result->refs, w->result->nrefs, err,
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
  const workerops *ops;
  lua_Integer number;
  int status;
  int waits;                   /* wait holds what it waits on */
  char wait[96];
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
      if (w->owner != conc_getpid()) continue;     /* a forked copy */
      conc_obj_retain(&w->obj);
      ws[nw++] = w;
    }
  }
  pthread_mutex_unlock(&r->mu);
  if (ws == NULL) luaL_error(L, "not enough memory");
  for (int i = 0; i < nw; i++) {
    int st;
    w = ws[i];
    if (w->ops->poll) w->ops->poll(w);
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
        v[n].ops = w->ops;
        v[n].number = w->ops->number(w);
        v[n].status = st;
        v[n].waits = w->cs && conc_cs_describe_wait(w->cs, v[n].wait,
                                                   sizeof v[n].wait);
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
    lua_pushstring(L, v[i].ops->name);
    lua_setfield(L, -2, "kind");
    if (strcmp(v[i].ops->numfield, "id") != 0) {
      lua_pushinteger(L, v[i].number);
      lua_setfield(L, -2, v[i].ops->numfield);
    }
    lua_pushstring(L, conc_worker_statusname(v[i].status));
    lua_setfield(L, -2, "status");
    if (v[i].waits) {
      lua_pushstring(L, v[i].wait);
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
  atomic_store(&r->nlive, 1);    /* the child's main state alone */
  atomic_store(&r->nstuck, 0);
  atomic_store(&r->main_stuck, NULL);
  atomic_store(&r->main_users, 0);  /* the parent's threads are not here */
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
