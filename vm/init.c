/*
** init.c
** What opens what: the conc table, the globals, the stdlib searcher, and
** the public entry points (conclua_open, luaopen_conc, conclua_on_state,
** conclua_wait).
**
** DESIGN. A host state (the conclua command's, an embedder's, or the
** stock lua5.4's after require "conc") gets a runtime and a cstate kept
** in a userdata box in its registry; the box's __gc, run when the host
** closes the state, waits for the non-daemon workers (as at the end of a
** Python program; exit.c: a Ctrl-C that ended the host's code, or one
** during the conclua command's wait, stops them instead), cancels the
** daemon threads and signals the daemon processes, retires the host's
** hooks (waiting for any that runs), then drops the state's hold on the
** runtime: workers still running keep it alive, so nothing they use is
** freed under them. Process-wide are only
** the thread pool, the reaper and the one-time signal, fork and exit
** handlers: any number of host states, each with its own runtime, live
** side by side.
** The public entry points never raise except conclua_open (and
** luaopen_conc, which Lua calls protected), and only when out of memory.
** Worker states get the same table lazily (runtime.c).
*/

#include <dirent.h>
#include <errno.h>
#include <dlfcn.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "init.h"
#include <lualib.h>

/* ------------------------------------------------------------ conc.* */

static int conc_sleep(lua_State *L) {
  cstate *cs = conc_cs(L);
  lua_Number s = luaL_checknumber(L, 1);
  deadline d;
  const char *why = NULL;
  luaL_argcheck(L, s >= 0 && !isnan(s), 1, "non-negative number expected");
  conc_deadline_in(&d, s == HUGE_VAL ? -1 : (double)s);
  conc_cs_waiting(cs, "sleep");
  for (;;) {
    uint32_t seen = conc_park_seq(&cs->park);
    if ((why = conc_cs_stopreason(cs)) != NULL) break;
    if (conc_deadline_passed(&d)) break;
    conc_park_sleep(&cs->park, seen, &d);
  }
  conc_cs_waiting(cs, NULL);
  if (why) return conc_cs_raisestop(L, cs, why);
  return 0;
}

static int conc_nowf(lua_State *L) {
  lua_pushnumber(L, (lua_Number)conc_now());
  return 1;
}

/* The CPUs this process may run on (its affinity mask: mpirun binds a
** rank to one core by default, taskset and cgroups narrow it too), else
** the online ones. */
static int conc_cpu_count(lua_State *L) {
  cpu_set_t set;
  long n = 0;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

static int conc_self(lua_State *L) {
  cstate *cs = conc_cs(L);
  if (cs->self) {
    lua_pushinteger(L, cs->self->id);
    lua_pushstring(L, cs->self->name);
  } else {
    lua_pushinteger(L, 0);
    lua_pushliteral(L, "main");
  }
  lua_pushinteger(L, (lua_Integer)conc_getpid());
  return 3;
}

/* conc.type(v): the kind of conclua object v is ("channel"...), or nil. */
static int conc_typef(lua_State *L) {
  cobj *o = conc_obj_test(L, conc_cs(L), 1);
  luaL_checkany(L, 1);
  if (o == NULL) lua_pushnil(L);
  else lua_pushstring(L, conc_kinds[o->kind]->name);
  return 1;
}

/* A hook of conc.on_worker: calls the copy of the function in the new
** worker state. */
static void on_worker_hook(lua_State *L, void *ud) {
  msg *m = ud;
  char err[160];
  int n = conc_marshal_decode(L, conc_cs_of(L), m->data, m->n, m->refs,
                              m->nrefs, err, sizeof err);
  if (n < 1) luaL_error(L, "conc.on_worker: %s", n < 0 ? err : "no function");
  lua_call(L, n - 1, 0);
}

/* conc.on_worker(fn): fn, copied, runs in every thread and pool worker
** state the runtime makes from now on, before the worker's function (a
** conclua_on_state hook; the copy lives as long as the runtime). */
static int conc_on_worker(lua_State *L) {
  cstate *cs = conc_cs(L);
  msg *m;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  m = conc_msg_encode(L, cs, 1, 1, "on_worker");
  pthread_mutex_lock(&cs->rt->mu);
  m->next = cs->rt->luahooks;
  cs->rt->luahooks = m;
  pthread_mutex_unlock(&cs->rt->mu);
  conclua_on_state(L, on_worker_hook, m);
  return 0;
}

static int conc_workers(lua_State *L) {
  conc_worker_list(L, conc_cs(L));
  return 1;
}

/* Field k of the table at idx as text into buf ("" when absent). */
static const char *top_field(lua_State *L, int idx, const char *k, char *buf,
                             size_t n) {
  lua_getfield(L, idx, k);
  snprintf(buf, n, "%s", lua_isnil(L, -1) ? "" : luaL_tolstring(L, -1, NULL));
  lua_settop(L, idx);
  return buf;
}

/* conc.top(): conc.workers() as a table on stdout, a line a worker (id,
** kind, pid, state, what it waits on, name); returns how many. What the
** REPL shows of the workers, at one look. */
static int conc_top(lua_State *L) {
  char line[400], id[24], kind[16], pid[16], wait[100], name[200];
  lua_Integer n;
  int list;
  lua_settop(L, 0);
  conc_worker_list(L, conc_cs(L));
  list = lua_gettop(L);
  n = luaL_len(L, list);
  snprintf(line, sizeof line, "%5s  %-7s  %7s  %-7s  %-24s  %s\n", "id",
           "kind", "pid", "state", "waits on", "name");
  fputs(line, stdout);
  for (lua_Integer i = 1; i <= n; i++) {
    int e;
    lua_geti(L, list, i);
    e = lua_gettop(L);
    top_field(L, e, "id", id, sizeof id);
    top_field(L, e, "kind", kind, sizeof kind);
    top_field(L, e, "pid", pid, sizeof pid);
    top_field(L, e, "waiting_on", wait, sizeof wait);
    top_field(L, e, "name", name, sizeof name);
    snprintf(line, sizeof line, "%5s  %-7s  %7s  %-7s  %-24s  %s\n", id, kind,
             pid, *wait ? "waiting" : "running", wait, name);
    fwrite(line, 1, strlen(line), stdout);
    lua_settop(L, list);
  }
  fflush(stdout);
  lua_pushinteger(L, n);
  return 1;
}

/* conc._isatty(file or fd): whether it is a terminal (the pool's
** progress bar draws only on one). */
static int conc_isatty(lua_State *L) {
  int fd = -1;
  if (lua_isinteger(L, 1)) {
    fd = (int)lua_tointeger(L, 1);
  } else {
    luaL_Stream *s = luaL_checkudata(L, 1, LUA_FILEHANDLE);
    if (s->closef != NULL && s->f != NULL) fd = fileno(s->f);
  }
  lua_pushboolean(L, fd >= 0 && isatty(fd));
  return 1;
}

/* Internal counters for tests: open fds, live threads, unreaped children. */
static int conc_stats(lua_State *L) {
  FILE *f;
  char line[256];
  lua_newtable(L);
  lua_pushinteger(L, conc_fd_count());
  lua_setfield(L, -2, "fds");
  lua_pushinteger(L, conc_threadpool_idle());
  lua_setfield(L, -2, "idle");
  lua_pushinteger(L, conc_process_reaper_running());
  lua_setfield(L, -2, "reaper");
  lua_pushinteger(L, atomic_load(&conc_shared_recoveries));
  lua_setfield(L, -2, "shared_recoveries");
  lua_pushinteger(L, conc_timer_pending());
  lua_setfield(L, -2, "timers");
  f = fopen("/proc/self/status", "re");
  if (f) {
    while (fgets(line, sizeof line, f)) {
      long v;
      if (sscanf(line, "Threads: %ld", &v) == 1) {
        lua_pushinteger(L, v);
        lua_setfield(L, -2, "threads");
      } else if (sscanf(line, "VmRSS: %ld", &v) == 1) {
        lua_pushinteger(L, v);
        lua_setfield(L, -2, "rss_kb");
      }
    }
    fclose(f);
  }
  {
    /* children of every thread of the process: a child belongs to the
    ** thread that forked it (a pool's manager forks its workers) */
    char path[64];
    int children = 0, zombies = 0;
    DIR *tasks = opendir("/proc/self/task");
    struct dirent *t;
    while (tasks && (t = readdir(tasks)) != NULL) {
      if (t->d_name[0] == '.') continue;
      snprintf(path, sizeof path, "/proc/self/task/%.20s/children", t->d_name);
      f = fopen(path, "re");
      if (f) {
        int pid;
        while (fscanf(f, "%d", &pid) == 1) {
          char sp[64];
          FILE *s;
          children++;
          snprintf(sp, sizeof sp, "/proc/%d/stat", pid);
          s = fopen(sp, "re");
          if (s) {
            char st = 0;
            if (fscanf(s, "%*d (%*[^)]) %c", &st) == 1 && st == 'Z') zombies++;
            fclose(s);
          }
        }
        fclose(f);
      }
    }
    if (tasks) closedir(tasks);
    lua_pushinteger(L, children);
    lua_setfield(L, -2, "children");
    lua_pushinteger(L, zombies);
    lua_setfield(L, -2, "zombies");
  }
  return 1;
}

/* The globals spawn_thread and spawn_process. */
int conc_spawn_thread(lua_State *L) {
  return conc_thread_spawn(L);
}

int conc_spawn_process(lua_State *L) {
  return conc_process_spawn(L);
}

const luaL_Reg conc_funcs[] = {
    {"spawn_thread", conc_thread_spawn},
    {"spawn_process", conc_process_spawn},
    {"channel", conc_chan_new},
    {"select", conc_select},
    {"lock", conc_sync_lock},
    {"semaphore", conc_sync_semaphore},
    {"event", conc_sync_event},
    {"barrier", conc_sync_barrier},
    {"rlock", conc_cond_rlock},
    {"condition", conc_cond_condition},
    {"timer", conc_timer_new},
    {"shared", conc_shared_new},
    {"pipe", conc_pipe_new},
    {"queue", conc_queue_new},
    {"sleep", conc_sleep},
    {"now", conc_nowf},
    {"cpu_count", conc_cpu_count},
    {"self", conc_self},
    {"type", conc_typef},
    {"on_worker", conc_on_worker},
    {"workers", conc_workers},
    {"top", conc_top},
    {"_stats", conc_stats},
    {"_isatty", conc_isatty},
    {"_poolkit", conc_pool_kit},
    {"_mpiapi", conc_mpiapi_get},
    {NULL, NULL}};

/* print, with the whole line written at once: lines of threads that
** print together never mix. Otherwise the standard print. */
int conc_print(lua_State *L) {
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_addchar(&b, '\n');
  luaL_pushresult(&b);
  {
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    flockfile(stdout);
    fwrite(s, 1, len, stdout);
    fflush(stdout);
    funlockfile(stdout);
  }
  return 0;
}

/* ------------------------------------------------------------ stdlib */

/* conc.mpi is a C module of its own (it links MPI, the core never does):
** next to the binary, as make builds it (build/conc/mpi.so), or where
** make install puts it. Pushes its loader and path (2), or the searcher's
** message (1). */
static int search_mpi(lua_State *L) {
  static const char *const where[] = {"/conc/mpi.so",
                                      "/../lib/lua/5.4/conc/mpi.so"};
  char exe[4096], path[4200], *slash;
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    lua_pushliteral(L, "conc.mpi: no /proc/self/exe to look next to");
    return 1;
  }
  exe[n] = '\0';
  if ((slash = strrchr(exe, '/')) != NULL) *slash = '\0';
  for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
    snprintf(path, sizeof path, "%s%s", exe, where[i]);
    if (access(path, R_OK) != 0) continue;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loadlib");
    lua_pushstring(L, path);
    lua_pushliteral(L, "luaopen_conc_mpi");
    lua_call(L, 2, 2);
    if (!lua_isfunction(L, -2)) {
      lua_pushfstring(L, "conc.mpi: cannot load '%s': %s", path,
                      lua_tostring(L, -1));
      return 1;
    }
    lua_pop(L, 1);
    lua_pushstring(L, path);
    return 2;
  }
  snprintf(path, sizeof path, "%s%s", exe, where[0]);
  lua_pushfstring(L, "conc.mpi: conclua was built without MPI support "
                  "(no '%s')", path);
  return 1;
}

/* package.searchers entry: modules built into the library. */
int conc_searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (strcmp(name, "conc.mpi") == 0) return search_mpi(L);
  for (const stdlib_mod *m = conc_stdlib; m->name; m++) {
    if (strcmp(m->name, name) == 0) {
      char chunk[128];
      snprintf(chunk, sizeof chunk, "=[conclua stdlib %s]", name);
      if (luaL_loadbuffer(L, m->src, m->len, chunk) != LUA_OK)
        return lua_error(L);
      lua_pushfstring(L, ":conclua:%s", name);
      return 2;
    }
  }
  /* Only names of conclua's own namespace say they are not built in:
  ** for any other name, require's message is the stock one. */
  if (strcmp(name, "conc") != 0 && strncmp(name, "conc.", 5) != 0)
    return 0;
  lua_pushfstring(L, "no built-in module '%s'", name);
  return 1;
}

/* Puts the searcher second, after package.preload's. */
static void add_searcher(lua_State *L) {
  lua_Integer n;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_LOADLIBNAME) != LUA_TTABLE ||
      lua_getfield(L, -1, "searchers") != LUA_TTABLE) {
    lua_settop(L, lua_gettop(L) - 3);
    return;
  }
  n = (lua_Integer)lua_rawlen(L, -1);
  for (lua_Integer i = 1; i <= n; i++) {     /* installed already? */
    lua_rawgeti(L, -1, i);
    if (lua_tocfunction(L, -1) == conc_searcher) {
      lua_pop(L, 4);
      return;
    }
    lua_pop(L, 1);
  }
  for (lua_Integer i = n; i >= 2; i--) {
    lua_rawgeti(L, -1, i);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushcfunction(L, conc_searcher);
  lua_rawseti(L, -2, n >= 1 ? 2 : 1);
  lua_pop(L, 3);
}


void conc_install(lua_State *L, cstate *cs) {
  luaL_checkstack(L, 8, NULL);
  lua_createtable(L, 0, 24);
  conc_cs_setfuncs(L, cs, conc_funcs);
  lua_pushliteral(L, CONCLUA_VERSION);
  lua_setfield(L, -2, "version");
  /* the globals are functions of their own, so that an error names them
  ** 'spawn_thread' rather than 'conc.spawn_thread' */
  conc_cs_pushfunc(L, cs, conc_spawn_thread);
  lua_setglobal(L, "spawn_thread");
  conc_cs_pushfunc(L, cs, conc_spawn_process);
  lua_setglobal(L, "spawn_process");
  lua_pushvalue(L, -1);
  lua_setglobal(L, "conc");
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "conc");
  lua_pushcfunction(L, conc_print);
  lua_setglobal(L, "print");
  /* pcall and xpcall that a cancelled thread cannot swallow a cancel with */
  lua_pushcfunction(L, conc_thread_pcall);
  lua_setglobal(L, "pcall");
  lua_pushcfunction(L, conc_thread_xpcall);
  lua_setglobal(L, "xpcall");
  /* coroutine.resume and wrap that keep track of the running coroutine */
  if (lua_getfield(L, -1, LUA_COLIBNAME) == LUA_TTABLE) {
    lua_pushcfunction(L, conc_thread_co_resume);
    lua_setfield(L, -2, "resume");
    lua_pushcfunction(L, conc_thread_co_wrap);
    lua_setfield(L, -2, "wrap");
  }
  /* the package paths a worker inherited */
  if (lua_getfield(L, -2, LUA_LOADLIBNAME) == LUA_TTABLE && cs->paths) {
    if (cs->paths->path) {
      lua_pushstring(L, cs->paths->path);
      lua_setfield(L, -2, "path");
    }
    if (cs->paths->cpath) {
      lua_pushstring(L, cs->paths->cpath);
      lua_setfield(L, -2, "cpath");
    }
  }
  lua_pop(L, 4);
  add_searcher(L);
  conc_names_libmap(L);
}

/* ------------------------------------------------------------ the kinds */

/* Every kind of runtime object, as linit.c lists Lua's libraries: the
** layers below know a kind only by its number and what is registered. */
static const kindinfo *const kinds[] = {
    &conc_channel_kind, &conc_thread_kind,    &conc_process_kind,
    &conc_lock_kind,    &conc_semaphore_kind, &conc_event_kind,
    &conc_barrier_kind, &conc_shared_kind,    &conc_pipe_kind,
    &conc_queue_kind,   &conc_future_kind,    &conc_parcel_kind,
    &conc_pool_kind,    &conc_rlock_kind,     &conc_condition_kind,
    &conc_timer_kind};
_Static_assert(sizeof kinds / sizeof kinds[0] == K_NKINDS, "a kind is missing");

/* Registers the kinds, the C functions that may cross (names.c) and what
** opens conc in a worker's state; once, before the first state opens. */
static void init_once(void) {
  char prefix[32];
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    conc_obj_addkind(kinds[i]);
  conc_names_replace(conc_thread_co_resume, "coroutine.resume");
  conc_names_replace(conc_thread_co_wrap, "coroutine.wrap");
  conc_names_replace(conc_print, "_G.print");
  conc_names_replace(conc_thread_pcall, "_G.pcall");
  conc_names_replace(conc_thread_xpcall, "_G.xpcall");
  conc_names_register("conc.", conc_funcs, 1);
  conc_names_register("_G.", (const luaL_Reg[]){
      {"spawn_thread", conc_spawn_thread},
      {"spawn_process", conc_spawn_process},
      {NULL, NULL}}, 1);
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    snprintf(prefix, sizeof prefix, "conc.%s:", kinds[i]->name);
    conc_names_register(prefix, kinds[i]->methods, 1);
  }
  conc_opener = conc_install;
  conc_deadlock_check = conc_deadlock_find;
}

void conc_init(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, init_once);
}

/* ------------------------------------------------------------ hosts */

static const char BOX_KEY = 'b';

/* The cstate lives in the box, so that its memory lasts until the state
** is freed: finalizers that run after the box's (objects given a __gc
** before conc was opened) may still call conc functions, which then
** raise (cs->gone). */
typedef struct hostbox {
  int open;                    /* cs is initialised and not finalized */
  cstate cs;
} hostbox;

/* The host state closes: wait like Python does at exit, stop daemons,
** retire the hooks, let go of the runtime. Workers still running (a
** daemon that ignored its cancellation) keep the runtime alive. */
static int hostbox_gc(lua_State *L) {
  hostbox *b = lua_touserdata(L, 1);
  cstate *cs = &b->cs;
  if (!b->open) return 0;
  b->open = 0;
  if (cs->rt->pid == conc_getpid()) {
    /* the conclua command's state: a Ctrl-C may stop the wait (os.exit
    ** with close set; the main chunk's end waited already); a host's
    ** state that a Ctrl-C in a conc call ended (lua5.4's script): no wait,
    ** the workers are stopped */
    cstate *target = conc_interrupt_for(cs->rt);
    int ctrlc = conc_rt_exit_wait(cs->rt, target, cs->ctrlc_uncaught,
                             program_invocation_short_name);
    conc_rt_shutdown(cs->rt);
    if (ctrlc == 2 && target) {          /* the command's own exit status */
      fflush(NULL);
      _exit(128 + SIGINT);
    }
  }
  conc_rt_close_hooks(cs->rt);
  conc_interrupt_forget(cs);
  conc_cs_fini(cs);
  cs->rt = NULL;
  cs->gone = 1;
  return 0;
}

/* Gives L a runtime; returns its cstate. Raises only on memory errors;
** L is marked as opened (conc_cs_of) only once everything is in place, so a
** failed open can be retried. */
static cstate *host_open(lua_State *L) {
  hostbox *b;
  rt *r;
  cstate *cs = conc_cs_of(L);
  if (cs) return cs;
  conc_init();
  b = lua_newuserdatauv(L, sizeof *b, 0);
  b->open = 0;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, hostbox_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &BOX_KEY);   /* drops an older box */
  r = conc_rt_new();
  if (r == NULL) luaL_error(L, "not enough memory");
  cs = &b->cs;
  conc_cs_init(cs, r, NULL);
  conc_rt_release(r);                        /* the cstate holds it */
  lua_pop(L, 1);
  cs->ishost = 1;
  b->open = 1;                          /* the box owns cs from here */
  conc_thread_cancel_install();
  conc_process_atfork_install();
  conc_install(L, cs);
  /* cs->L is the main thread, what a host's Ctrl-C handler hooks (L may
  ** be a coroutine: require "conc" from one) */
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  conc_state_bind(lua_tothread(L, -1), cs);
  lua_pop(L, 1);
  return cs;
}

static int open_protected(lua_State *L) {
  host_open(L);
  return 0;
}

/* Raises (lua_error) only when out of memory, like luaL_openlibs. */
int conclua_open(lua_State *L) {
  luaL_checkstack(L, LUA_MINSTACK, NULL);
  lua_pushcfunction(L, open_protected);
  lua_call(L, 0, 0);
  return 0;
}

/* A conc.so loaded by lua5.4 must never be unloaded: its threads (idle
** ones in the pool, daemons) and its exit handler may still run its code
** at exit. */
static void pin_module(void) {
  Dl_info info;
  if (dladdr((void *)pin_module, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

int luaopen_conc(lua_State *L) {
  pin_module();
  host_open(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "conc");
  return 1;
}

/* Not under lua_pcall: nothing here may raise. */
void conclua_on_state(lua_State *L, conclua_hook hook, void *ud) {
  cstate *cs;
  rt *r;
  if (hook == NULL || !lua_checkstack(L, 1) || (cs = conc_cs_of(L)) == NULL)
    return;
  r = cs->rt;
  pthread_mutex_lock(&r->mu);
  if (r->closed) {
    pthread_mutex_unlock(&r->mu);
    return;
  }
  if (r->nhooks == r->hookcap) {
    int cap = r->hookcap ? r->hookcap * 2 : 4;
    hookent *nh = realloc(r->hooks, sizeof *nh * (size_t)cap);
    if (nh == NULL) {
      pthread_mutex_unlock(&r->mu);
      return;
    }
    r->hooks = nh;
    r->hookcap = cap;
  }
  r->hooks[r->nhooks].fn = hook;
  r->hooks[r->nhooks].ud = ud;
  r->nhooks++;
  pthread_mutex_unlock(&r->mu);
}

/* Not under lua_pcall either. From a host state a Ctrl-C the host
** routes to it (conc_interrupt_target) ends the wait early. */
int conclua_wait(lua_State *L) {
  cstate *cs;
  if (!lua_checkstack(L, 1) || (cs = conc_cs_of(L)) == NULL) return 0;
  return conc_rt_waitall_cs(cs->rt, cs->self, cs->self ? NULL : cs);
}
