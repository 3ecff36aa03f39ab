/*
** thread.c
** spawn_thread: workers on OS threads, each with a fresh lua_State.
**
** DESIGN. spawn_thread copies fn and its arguments into one message
** (marshal.c), makes the worker record and hands both, as a job, to an OS
** thread: an idle one from the pool if there is one, else a new one. The
** thread makes a fresh state (a pooled thread made it while idle, off
** the spawner's path), and under lua_pcall runs the host's hooks
** (conclua_on_state) in it, then decodes the job into it and runs it,
** encodes the results (or the error and its traceback), closes the state
** (so __gc and __close run before anyone sees the end), then finishes the
** worker and goes back to the pool for a while.
** Cancellation costs nothing until asked for: cancel() sets the worker's
** flag, sends its OS thread a signal whose handler, running on that
** thread, sets a count hook on the running coroutine (the lua command's
** Ctrl-C trick), then wakes it out of any conc wait (conc_cs_wake): signal
** first, so the hook is set before a woken worker runs one instruction.
** Every cancellation point raises "cancelled": the hook, and each conc
** call that blocks (it checks the flag). A raise takes the hook off the
** raising state, so that the error unwinds like any other and the
** pending <close> variables and __close handlers run to their end; the
** catcher puts it back: a pcall or xpcall (conclua's own) that catches
** the error, or a coroutine.resume that returns it. The first catch
** gives the code after it a grace of CANCEL_GRACE instructions to clean
** up; any later one, none: the next instruction raises again, so a
** pcall in a loop cannot swallow a cancel. Catches inside the unwinding
** (a pcall in a __close handler) are the handler's own and put nothing
** back. Whatever fn then does, a worker that cancel() answered true for
** ends "cancelled" (conc_worker_finish). coroutine.resume and wrap are
** replaced so the thread always knows its running coroutine.
*/

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workers.h"
#include <lualib.h>

#define SIGCANCEL (SIGRTMIN + 4)


/* The worker context this OS thread runs (cancel); the running state is
** runtime.c's conc_tls_L. */
static CONC_TLS cstate *volatile tls_cs;

/* The worker this OS thread runs, or NULL (main, host, pool idle). */
worker *conc_thread_current_worker(void) {
  cstate *cs = tls_cs;
  return cs ? cs->self : NULL;
}

/* ------------------------------------------------------------ cancel */

/* Instructions the code after the first catch of a cancel may run. */
#define CANCEL_GRACE 1000

/* The first catch of a cancel had its grace. Only this thread and its
** signal handler touch it (conc_tls_unwinding: runtime.c). */
static CONC_TLS int tls_graced;

static int cancel_pending(void) {
  cstate *cs = tls_cs;
  return cs && cs->self && atomic_load(&cs->self->cancel);
}

static void cancel_hook(lua_State *L, lua_Debug *ar);

/* Strict: the next call, return or instruction raises. */
static void arm_strict(lua_State *L) {
  lua_sethook(L, cancel_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* An error leaves L while a cancel is pending: no hook on L until a
** catcher sets it again, so that L's __close handlers run. */
static void unwind_begin(lua_State *L) {
  if (!cancel_pending()) return;
  conc_tls_unwinding = 1;                   /* first: the signal keeps out */
  lua_sethook(L, NULL, 0, 0);
}

static void cancel_hook(lua_State *L, lua_Debug *ar) {
  CONC_UNUSED(ar);
  if (!cancel_pending()) {
    lua_sethook(L, NULL, 0, 0);        /* a late signal for an older job */
    return;
  }
  conc_raise_cancel(L);
}

/* A catcher of L got an error, or a resume returned to L; 'inner': the
** catcher started inside an unwinding (a handler's own pcall). */
static void caught(lua_State *L, int inner) {
  if (inner || !cancel_pending()) return;
  if (conc_tls_unwinding && !tls_graced) {
    conc_tls_unwinding = 0;
    tls_graced = 1;
    lua_sethook(L, cancel_hook, LUA_MASKCOUNT, CANCEL_GRACE);
  } else {
    conc_tls_unwinding = 0;
    arm_strict(L);
  }
}

static void on_sigcancel(int sig) {
  int saved = errno;
  cstate *cs = tls_cs;
  lua_State *L = conc_tls_L;
  CONC_UNUSED(sig);
  if (cs && cs->self && atomic_load(&cs->self->cancel) && !conc_tls_unwinding) {
    if (L) arm_strict(L);
    if (cs->L && cs->L != L) arm_strict(cs->L);
  }
  errno = saved;
}

static pthread_once_t cancel_once = PTHREAD_ONCE_INIT;

static void cancel_install_once(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigcancel;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGCANCEL, &sa, NULL);
}

void conc_thread_cancel_install(void) {
  pthread_once(&cancel_once, cancel_install_once);
}

/* Asks w to stop; 1 if it was running (it then ends "cancelled"). The
** signal goes before the wake-up: a worker woken out of a conc wait
** runs its handler before anything else. */
int conc_thread_cancel(worker *w) {
  int running;
  pthread_mutex_lock(&w->mu);
  running = w->status == W_RUNNING;
  if (running && !atomic_exchange(&w->cancel, 1)) {
    if (w->hastid) pthread_kill(w->tid, SIGCANCEL);
    if (w->cs) conc_cs_wake(w->cs);
  }
  pthread_mutex_unlock(&w->mu);
  return running;
}

/* ------------------------------------------------------------ catching */

/* pcall and xpcall: the standard ones, plus the catch of a cancel. The
** context carries the slots below the results and whether the call
** began inside an unwinding (bit 8). */
#define CTX_INNER 0x100

static int catch_finish(lua_State *L, int status, lua_KContext ctx) {
  if (status == LUA_OK || status == LUA_YIELD)
    return lua_gettop(L) - (int)(ctx & 0xff);
  caught(L, (ctx & CTX_INNER) != 0);
  conc_cs_caught(L);
  lua_pushboolean(L, 0);
  lua_insert(L, -2);                   /* false, the error value */
  return 2;
}

static lua_KContext catch_ctx(int slots) {
  return (lua_KContext)slots | (conc_tls_unwinding ? CTX_INNER : 0);
}

int conc_thread_pcall(lua_State *L) {
  lua_KContext ctx;
  luaL_checkany(L, 1);
  ctx = catch_ctx(0);
  lua_pushboolean(L, 1);               /* the first result, if all goes well */
  lua_insert(L, 1);
  return catch_finish(L, lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0,
                                    ctx, catch_finish), ctx);
}

/* xpcall(f, msgh, ...): msgh stays at 2, true and f go above it. */
int conc_thread_xpcall(lua_State *L) {
  int nargs = lua_gettop(L) - 2;
  lua_KContext ctx;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  ctx = catch_ctx(2);
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);
  return catch_finish(L, lua_pcallk(L, nargs, LUA_MULTRET, 2, ctx,
                                    catch_finish), ctx);
}

/* ------------------------------------------------------------ coroutines */

/* Resumes co with narg values from L; the results' count, or -1 with the
** error on L. A cancel reaches co as it starts, and the caller as it
** gets control back (a catch, unless 'rethrow': wrap raises it on). */
static int resume_co(lua_State *L, lua_State *co, int narg, int rethrow) {
  int status, nres, inner = conc_tls_unwinding;
  lua_State *prev = conc_tls_L;
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  conc_tls_L = co;                    /* first: a signal now hooks co */
  if (!inner && cancel_pending()) arm_strict(co);
  status = lua_resume(co, L, narg, &nres);
  conc_tls_L = prev;
  if (status == LUA_OK || status == LUA_YIELD) {
    caught(L, inner);
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  if (!rethrow) {
    caught(L, inner);
    conc_cs_caught(L);
  } else if (cancel_pending()) {
    lua_sethook(co, NULL, 0, 0);       /* co's closing runs whole */
  }
  lua_xmove(co, L, 1);
  return -1;
}

int conc_thread_co_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  int r;
  luaL_argexpected(L, co, 1, "coroutine");
  r = resume_co(L, co, lua_gettop(L) - 1, 0);
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static int co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int r = resume_co(L, co, lua_gettop(L), 1);
  if (r < 0) {
    int st = lua_status(co);
    if (st != LUA_OK && st != LUA_YIELD) {
      st = lua_resetthread(co);       /* close its to-be-closed variables */
      lua_xmove(co, L, 1);
    }
    if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    unwind_begin(L);
    return lua_error(L);
  }
  return r;
}

int conc_thread_co_wrap(lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, co_wrapped, 1);
  return 1;
}

/* ------------------------------------------------------------ jobs */

/* A job: everything a thread needs, made by the spawner, so that a new
** thread waiting at once (on an event, say) has called malloc not once:
** its memory is its stack and its state's arena. */
typedef struct job {
  conc_task task;              /* first: what the thread pool runs */
  worker *w;
  msg *m;                      /* fn and its arguments, kept to the end */
  paths *paths;
  cstate cs;
} job;

static const char TB_KEY = 't';

/* The message handler: keeps the traceback aside, returns the error. */
static int job_msgh(lua_State *L) {
  luaL_traceback(L, L, NULL, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &TB_KEY);
  return 1;
}

/* Runs under lua_pcall: the host's hooks, then fn(args). The message
** stays the job's (freed with it), whatever raises. */
static int job_body(lua_State *L) {
  cstate *cs = conc_cs(L);
  msg *m = lua_touserdata(L, 1);
  char err[160];
  int n;
  lua_settop(L, 0);
  conc_state_run_hooks(L, cs);
  lua_settop(L, 0);
  n = conc_marshal_decode(L, cs, m->data, m->n, m->refs, m->nrefs, err,
                     sizeof err);
  if (n < 1) return luaL_error(L, "%s", n < 0 ? err : "no function");
  lua_call(L, n - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static char *dupstr(const char *s) {
  return s ? strdup(s) : NULL;
}

/* The error of a failed job, at the top of L: the message join raises,
** "thread 3 (name): message" and the traceback; and for a non-string
** error value, a copy of it to raise instead. */
static void job_error(lua_State *L, cstate *cs, worker *w, msg **result,
                      char **errmsg) {
  int e = lua_gettop(L);
  const char *tb;
  char err[256];
  lua_rawgetp(L, LUA_REGISTRYINDEX, &TB_KEY);
  tb = lua_tostring(L, -1);
  if (lua_type(L, e) != LUA_TSTRING &&
      conc_marshal_encode(L, cs, e, 1, &cs->scratch, 0, "error", err,
                     sizeof err) == 0)
    *result = conc_msg_seal(&cs->scratch);
  lua_pushfstring(L, "thread %I (%s): %s\n%s", (LUAI_UACINT)w->id, w->name,
                  conc_errmsg(L, e), tb ? tb : "stack traceback:");
  *errmsg = dupstr(lua_tostring(L, -1));
}

static void job_run(job *j, lua_State *L) {
  worker *w = j->w;
  cstate *cs = &j->cs;
  int status = W_DONE, cancelled, base;
  msg *result = NULL;
  char *errmsg = NULL;
  conc_cs_init(cs, w->rt, w);
  cs->cancel = &w->cancel;
  cs->paths = j->paths;              /* the cstate's reference now */
  j->paths = NULL;
  if (L == NULL) {
    conc_worker_finish(w, W_FAILED, NULL,
                  strdup("thread: not enough memory to start"));
    conc_cs_fini(cs);
    conc_rt_live_drop(w->rt);
    return;
  }
  cs->light = 1;
  cs->trace_tid = w->id;
  if (conc_trace_on) {
    char tn[96];
    snprintf(tn, sizeof tn, "thread %lld (%s)", (long long)w->id, w->name);
    conc_trace_thread(w->id, tn);
  }
  conc_state_bind(L, cs);
  conc_state_make_lazy(L, cs);
  /* set before the thread can be signalled (hastid): a cancel signal
  ** finds the state to hook */
  tls_cs = cs;
  conc_tls_L = L;
  conc_tls_unwinding = 0;
  tls_graced = 0;
  pthread_mutex_lock(&w->mu);
  w->cs = cs;
  w->tid = pthread_self();
  w->hastid = 1;
  cancelled = atomic_load(&w->cancel);
  pthread_mutex_unlock(&w->mu);
  if (cancelled) {
    status = W_CANCELLED;
  } else {
    lua_pushcfunction(L, job_msgh);
    base = lua_gettop(L);
    lua_pushlightuserdata(L, cs);
    lua_pushcclosure(L, job_body, 1);
    lua_pushlightuserdata(L, j->m);
    if (lua_pcall(L, 1, LUA_MULTRET, base) == LUA_OK) {
      char err[512] = "not enough memory";   /* if only the seal fails */
      int n = lua_gettop(L) - base;
      if (conc_marshal_encode(L, cs, base + 1, n, &cs->scratch, 0,
                              "results[%d]", err, sizeof err) == 0 &&
          (result = conc_msg_seal(&cs->scratch)) != NULL) {
        status = W_DONE;
      } else {
        char *m = malloc(strlen(err) + strlen(w->name) + 48);
        if (m)
          sprintf(m, "thread %lld (%s): %s", (long long)w->id, w->name, err);
        errmsg = m;
        status = W_FAILED;
      }
    } else if (atomic_load(&w->cancel)) {
      status = W_CANCELLED;
    } else {
      job_error(L, cs, w, &result, &errmsg);
      status = W_FAILED;
    }
  }
  /* no cancel signal may reach the state from here on: cancel stops
  ** signalling (hastid) and a signal already on its way finds nothing */
  pthread_mutex_lock(&w->mu);
  w->cs = NULL;
  w->hastid = 0;
  pthread_mutex_unlock(&w->mu);
  tls_cs = NULL;
  conc_tls_L = NULL;
  lua_sethook(L, NULL, 0, 0);
  conc_state_close(L);
  conc_cs_fini(cs);
  /* before the end is seen: the exit may write the trace out then */
  if (conc_trace_on) conc_trace_event('E', w->id, "run", NULL, NULL, 0);
  conc_worker_finish(w, status, result, errmsg);
  /* after the end is seen: a joiner is woken before the count drops */
  conc_rt_live_drop(w->rt);
}

static void job_free(job *j) {
  conc_msg_free(j->m);
  conc_paths_release(j->paths);
  conc_obj_release(&j->w->obj);
  free(j);
}

/* What the pool's OS thread runs: the job, then the job is gone. */
static void job_task(conc_task *t, lua_State *L) {
  job *j = (job *)t;
  job_run(j, L);
  job_free(j);
}

/* ------------------------------------------------------------ API */

/* Reads spawn_thread's / spawn_process's options table at index 1:
** name, daemon and, when start != NULL, start. */
void conc_spawn_options(lua_State *L, const char *fname, const char **name,
                   int *daemon, const char **start) {
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    if (k && strcmp(k, "name") == 0) {
      if (!lua_isstring(L, -1) || lua_type(L, -1) == LUA_TNUMBER)
        luaL_error(L, "bad option 'name' to '%s' (string expected, got %s)",
                   fname, luaL_typename(L, -1));
      *name = lua_tostring(L, -1);
    } else if (k && strcmp(k, "daemon") == 0) {
      if (!lua_isboolean(L, -1))
        luaL_error(L, "bad option 'daemon' to '%s' (boolean expected, got %s)",
                   fname, luaL_typename(L, -1));
      *daemon = lua_toboolean(L, -1);
    } else if (k && start && strcmp(k, "start") == 0) {
      if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "bad option 'start' to '%s' (string expected, got %s)",
                   fname, luaL_typename(L, -1));
      *start = lua_tostring(L, -1);
    } else {
      lua_pushvalue(L, -2);
      luaL_error(L, "bad argument #1 to '%s' (unknown option '%s')", fname,
                 luaL_tolstring(L, -1, NULL));
    }
    lua_pop(L, 1);
  }
}

/* The package paths a worker spawned from L inherits. */
static paths *get_paths(lua_State *L, cstate *cs) {
  const char *path = NULL, *cpath = NULL;
  paths *p;
  int top = lua_gettop(L);
  if (cs->lazy) {                     /* not opened yet: what it inherited */
    if (cs->paths) atomic_fetch_add(&cs->paths->refs, 1);
    return cs->paths;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_LOADLIBNAME) == LUA_TTABLE) {
    lua_getfield(L, -1, "path");
    lua_getfield(L, -2, "cpath");
    path = lua_tostring(L, -2);
    cpath = lua_tostring(L, -1);
  }
  p = conc_paths_get(cs->rt, path, cpath);  /* copies them if new */
  lua_settop(L, top);
  return p;
}

int conc_thread_spawn(lua_State *L) {
  cstate *cs = conc_cs(L);
  const char *name = NULL;
  int daemon = 0, fi = 1, r;
  worker *w;
  job *j;
  msg *m;
  if (lua_type(L, 1) == LUA_TTABLE) {
    conc_spawn_options(L, "spawn_thread", &name, &daemon, NULL);
    fi = 2;
  }
  luaL_checktype(L, fi, LUA_TFUNCTION);
  m = conc_msg_encode(L, cs, fi, lua_gettop(L) - fi + 1, "spawn");
  j = calloc(1, sizeof *j);
  w = j ? conc_worker_new(cs->rt, &conc_thread_ops, name, daemon) : NULL;
  if (w == NULL) {
    free(j);
    conc_msg_free(m);
    return conc_nomem(L);
  }
  w->owner = conc_getpid();
  j->w = w;                       /* the job's reference */
  j->m = m;
  j->paths = get_paths(L, cs);
  atomic_fetch_add(&cs->rt->nlive, 1);   /* until its job ends */
  conc_worker_register(w);
  if (conc_trace_on) conc_worker_trace(cs, "spawn", w);
  conc_obj_push(L, cs, &w->obj);       /* the handle's reference */
  conc_thread_cancel_install();
  j->task.run = job_task;
  r = conc_threadpool_start(&j->task);
  if (r != 0) {                   /* job_free frees m */
    atomic_fetch_sub(&cs->rt->nlive, 1);
    conc_worker_finish(w, W_FAILED, NULL, NULL);
    conc_worker_unregister(w);
    job_free(j);
    return luaL_error(L, "cannot start thread: %s", strerror(r));
  }
  return 1;
}

/* The package paths a thread spawned later from L will inherit (a
** reference to release), or NULL. */
paths *conc_thread_paths(lua_State *L) {
  return get_paths(L, conc_cs(L));
}

/* Starts a daemon thread of runtime r named 'name' that runs m (fn and
** its arguments, as conc_msg_encode made them; taken over, like p) from
** any OS thread, with no Lua state at hand (conc.timer's service): 0, or
** an errno. Nobody holds a handle of it: it shows in conc.workers(). */
int conc_thread_launch(rt *r, const char *name, msg *m, paths *p) {
  job *j = calloc(1, sizeof *j);
  worker *w = j ? conc_worker_new(r, &conc_thread_ops, name, 1) : NULL;
  int e;
  if (w == NULL) {
    free(j);
    conc_msg_free(m);
    conc_paths_release(p);
    return ENOMEM;
  }
  w->owner = conc_getpid();
  j->w = w;
  j->m = m;
  j->paths = p;
  atomic_fetch_add(&r->nlive, 1);        /* until its job ends */
  conc_worker_register(w);
  j->task.run = job_task;
  e = conc_threadpool_start(&j->task);
  if (e != 0) {
    atomic_fetch_sub(&r->nlive, 1);
    conc_worker_finish(w, W_FAILED, NULL, NULL);
    conc_worker_unregister(w);
    job_free(j);
  }
  return e;
}

/* ------------------------------------------------------------ handle */

static int thread_cancel_m(lua_State *L) {
  worker *w = (worker *)conc_obj_check(L, 1, K_THREAD);
  if (w->owner != conc_getpid())
    luaL_error(L, conc_thread_ops.notmine, (LUAI_UACINT)w->id);
  if (conc_trace_on) conc_worker_trace(conc_cs(L), "cancel", w);
  lua_pushboolean(L, conc_thread_cancel(w));
  return 1;
}

static const luaL_Reg thread_methods[] = {
    {"join", conc_worker_join},     {"wait", conc_worker_wait_m},
    {"status", conc_worker_status_m}, {"alive", conc_worker_alive},
    {"cancel", thread_cancel_m},    {NULL, NULL}};

static lua_Integer thread_id(cobj *o) {
  return (lua_Integer)((worker *)o)->id;
}

static lua_Integer thread_number(worker *w) {
  return (lua_Integer)w->id;
}

static int thread_wait_end(parker *p, cstate *cs, worker *w, const deadline *d,
                           const char **why) {
  return conc_worker_wait_end(p, cs, w, d, why, 0);
}

const workerops conc_thread_ops = {
    .kind = K_THREAD,
    .name = "thread",
    .wait = thread_wait_end,
    .stop = conc_thread_cancel,
    .number = thread_number,
    .numfield = "id",
    .notmine = "thread %I belongs to another process"};

const kindinfo conc_thread_kind = {
    .kind = K_THREAD,
    .tname = "conc.thread",
    .name = "thread",
    .local = 1,
    .destroy = conc_worker_destroy,
    .methods = thread_methods,
    .index = conc_worker_index,
    .fields = (const char *const[]){"id", "name", NULL},
    .tostring = conc_worker_tostring,
    .sel_try = conc_worker_sel_try,
    .sel_delist = conc_worker_sel_delist,
    .pinned = 1,
    .id = thread_id};
