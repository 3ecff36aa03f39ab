/*
** mpi.c
** conc.mpi: ranks of an MPI job as workers and message ends, for
** conc.pool's pool.mpi and for scripts (SPEC section 9).
**
** DESIGN. One communication thread per rank owns every MPI call: it
** initialises MPI (MPI_THREAD_FUNNELED: no other thread ever calls MPI),
** sends what user threads queued, receives what arrives and finalises.
** User threads never block in MPI, so they stay cancellable, selectable
** and interruptible like any conc wait, and an idle rank does not burn a
** core: a rank blocked in MPI_Recv spins (Open MPI's: 96% of a core,
** measured here; MPICH's too), which is why no thread of ours ever
** blocks in MPI (mpi4py.futures' workers avoid it the same way: they poll
** with a back-off of 1 ms). This thread polls with MPI_Iprobe and, when
** nothing happened, polls again, yielding the core, for 200 us after the
** last message (an answer to it is likely then: a task's round trip takes
** about that long here), then sleeps on a condition variable: 20 us naps
** until 20 ms after the last message, then naps that double up to 1 ms
** (an idle rank: about 2.5% of a core). Queuing a message wakes it at
** once, so sends never wait for a nap; a message that arrives waits for
** the end of the receiver's nap at most.
**
** Messages travel on one MPI tag of a communicator of our own (a dup of
** MPI_COMM_WORLD), so those from one rank to another keep their order. A
** message is a 24-byte header (kind, port, total length) then its bytes
** in data frames of at most CHUNK bytes (1 GiB, under MPI's int count;
** CONCLUA_MPI_CHUNK for tests), sent with MPI_Isend from the message's own
** buffer. The receiver keeps, per source, the message being assembled.
** A received message goes to a conc.channel made by the core (mpiapi.h):
** the channel of an endpoint (source, port) if this rank made one, else
** the inbox of the port, made on first use, so that nothing is lost.
** Values are encoded by the core's marshaller with the sender's rank as
** a second value: recv gives value, source.
**
** Start: the first load in a process starts the thread, which calls
** MPI_Init_thread, then every rank gathers every rank's conclua, Lua and
** format versions and host (a mismatch is an error naming the rank and
** host, on every rank), and rank 0 broadcasts the key that guards
** bytecode in messages (marshal.c), so functions cross between ranks.
** On every rank but 0 the first load starts the rank's server (a thread
** that starts pool workers on request, pool._mpi_serve) which ends when
** rank 0 says bye. Loaded with -l there, luaopen_conc_mpi never returns:
** the rank serves until then and exits 0; a rank that runs the script
** (SPMD) waits at its end for its server, as for any thread. End: at exit (on_exit), each rank queues
** a bye to every other rank, keeps delivering until it has every other
** rank's bye and its sends completed, then finalises; so no rank
** finalises while another still sends to it. A rank that ends with a
** non-zero status while the other ranks run the script too (SPMD) calls
** MPI_Abort instead, so that they do not wait for it for ever. A rank
** that dies is the MPI runtime's affair: both Debian MPIs end the whole
** job (no ULFM fault tolerance there), which is why nothing here tries to
** survive it.
*/

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

#include <mpi.h>

#include <lauxlib.h>
#include <lua.h>

#include "../mpiapi.h"

#define TAG 7
#define MAGIC 0x6d706931u         /* "mpi1" */
#define SPIN_NS 200000L           /* ns: polls without a nap this long */
#define SLEEP_HOT 20000L          /* ns: the nap while messages flow */
#define HOT_NS 20000000L          /* how long they are taken to flow */
#define SLEEP_MAX 1000000L        /* the nap of an idle rank */
#define VERLEN 256

enum { F_DATA = 1, F_CLOSE = 2, F_BYE = 3 };
enum { S_NONE, S_STARTING, S_RUNNING, S_ENDING, S_DONE, S_FAILED };

typedef struct header {
  uint32_t magic, kind;
  int64_t port;
  uint64_t total;
} header;

/* A message queued by a user thread, then being sent. */
typedef struct outmsg {
  struct outmsg *next;
  int dest, kind;
  int64_t port;
  char *data;                 /* malloc'd; NULL for no bytes */
  size_t n;
  header h;
  MPI_Request *reqs;
  int nreq;
} outmsg;

/* A route: messages from src (-1: any) on port go to ch. */
typedef struct route {
  struct route *next;
  int src;
  int64_t port;
  void *ch;                   /* a channel reference */
  int ends;                   /* end handles that use it */
  int lazy;                   /* made by a message, no end wants it yet */
} route;

/* What a source is sending us, while its data frames arrive. */
typedef struct partial {
  char *buf;
  size_t total, got;
  int64_t port;
} partial;

static const conc_mpiapi *api;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake;       /* the comm thread sleeps here */
static pthread_cond_t changed;    /* state, bye from rank 0 */
static pthread_t comm;
static _Atomic int state = S_NONE;   /* written under mu */
static pid_t mpipid;              /* the process that runs MPI */
static int myrank, nranks;
static char myhost[MPI_MAX_PROCESSOR_NAME + 1];
static char (*hosts)[MPI_MAX_PROCESSOR_NAME + 1];
static char initerr[1024];
static int serving;               /* -l on a rank other than 0 */
static int spmd;                  /* the script runs on every rank */
static int bye0;                  /* rank 0 said bye */
static int ending_status = -1;    /* set by the exit handler */
static size_t chunk = (size_t)1 << 30;
static outmsg *qhead, **qtail = &qhead;   /* queued, under mu */
#define NBUCKETS 256
static route *routes[NBUCKETS];            /* by port, under mu */
static int64_t nextport;
static char *bye_bytes;           /* {op = "bye"}, 0 encoded: for the server */
static size_t bye_len;
static MPI_Comm world;

/* ------------------------------------------------------------ routes */

/* Where a message goes: to the endpoint for (source, port) if this rank
** made one; else to the inbox of the port if there is one; else to a
** route made for (source, port) on the spot (lazy), where it waits for an
** endpoint of that source, or for an inbox of the port, which then takes
** what such routes hold, in order. So nothing that arrives early is lost,
** whichever end the receiver makes later. */

static route **bucket(int64_t port) {
  return &routes[((uint64_t)port * 0x9E3779B97F4A7C15ull) >> 56];
}

static route *route_find(int src, int64_t port) {
  for (route *r = *bucket(port); r; r = r->next)
    if (r->src == src && r->port == port) return r;
  return NULL;
}

static void route_drop(route *r) {
  for (route **p = bucket(r->port); *p; p = &(*p)->next)
    if (*p == r) {
      *p = r->next;
      break;
    }
  api->chan_shut(r->ch);
  api->release(r->ch);
  free(r);
}

/* The route (src, port), made if missing; NULL out of memory. Under mu.
** An inbox (src -1) takes over what the lazy routes of its port hold. */
static route *route_get(int src, int64_t port, int lazy) {
  route *r = route_find(src, port), **b = bucket(port);
  if (r) {
    if (!lazy) r->lazy = 0;
    return r;
  }
  r = calloc(1, sizeof *r);
  if (r == NULL || (r->ch = api->chan_make()) == NULL) {
    free(r);
    return NULL;
  }
  r->src = src;
  r->port = port;
  r->lazy = lazy;
  r->next = *b;
  *b = r;
  if (src < 0) {
    for (route *o = r->next, *next; o; o = next) {
      next = o->next;
      if (o->port == port && o->lazy && o->ends == 0) {
        api->chan_move(o->ch, r->ch);
        route_drop(o);
      }
    }
  }
  return r;
}

/* The route a message from src on port goes to, or NULL (out of
** memory). Under mu. */
static route *route_for(int src, int64_t port) {
  route *r = route_find(src, port);
  if (r == NULL || r->lazy) {
    route *inbox = route_find(-1, port);
    if (inbox) r = inbox;
  }
  if (r == NULL) r = route_get(src, port, 1);
  return r;
}

/* Delivers a copy of the n bytes of a message (closed: dropped). Under
** mu. */
static void deliver(int src, int64_t port, const char *p, size_t n) {
  route *r = route_for(src, port);
  if (r) api->chan_put(r->ch, p, n);
}

/* The same, taking over the malloc'd block p. */
static void deliver_block(int src, int64_t port, char *p, size_t n) {
  route *r = route_for(src, port);
  if (r) api->chan_give(r->ch, p, n);
  else free(p);
}

/* ------------------------------------------------------------ the thread */

static void post(outmsg *m) {
  size_t nframes = m->n ? (m->n + chunk - 1) / chunk : 0;
  m->h.magic = MAGIC;
  m->h.kind = (uint32_t)m->kind;
  m->h.port = m->port;
  m->h.total = m->n;
  m->reqs = malloc(sizeof *m->reqs * (nframes + 1));
  if (m->reqs == NULL) {           /* out of memory: as MPI would abort */
    fprintf(stderr, "conc.mpi: not enough memory to send\n");
    MPI_Abort(world, 1);
  }
  MPI_Isend(&m->h, (int)sizeof m->h, MPI_BYTE, m->dest, TAG, world, &m->reqs[0]);
  for (size_t i = 0; i < nframes; i++) {
    size_t off = i * chunk, len = m->n - off < chunk ? m->n - off : chunk;
    MPI_Isend(m->data + off, (int)len, MPI_BYTE, m->dest, TAG, world,
              &m->reqs[i + 1]);
  }
  m->nreq = (int)nframes + 1;
}

static void outmsg_free(outmsg *m) {
  free(m->data);
  free(m->reqs);
  free(m);
}

/* Receives what has arrived: 1 if anything did. *byes counts byes. */
static int receive(partial *parts, int *byes) {
  int any = 0;
  for (int round = 0; round < 64; round++) {
    int flag = 0, cnt = 0, src;
    MPI_Status st;
    partial *pt;
    MPI_Iprobe(MPI_ANY_SOURCE, TAG, world, &flag, &st);
    if (!flag) break;
    any = 1;
    src = st.MPI_SOURCE;
    pt = &parts[src];
    MPI_Get_count(&st, MPI_BYTE, &cnt);
    if (pt->buf) {                        /* a data frame */
      if ((size_t)cnt > pt->total - pt->got) {
        fprintf(stderr, "conc.mpi: rank %d sent a frame too long\n", src);
        MPI_Abort(world, 1);
      }
      MPI_Recv(pt->buf + pt->got, cnt, MPI_BYTE, src, TAG, world, MPI_STATUS_IGNORE);
      pt->got += (size_t)cnt;
      if (pt->got == pt->total) {
        pthread_mutex_lock(&mu);
        deliver_block(src, pt->port, pt->buf, pt->total);
        pthread_mutex_unlock(&mu);
        pt->buf = NULL;
      }
      continue;
    }
    header h;
    if (cnt != (int)sizeof h) {
      fprintf(stderr, "conc.mpi: rank %d sent a bad header\n", src);
      MPI_Abort(world, 1);
    }
    MPI_Recv(&h, cnt, MPI_BYTE, src, TAG, world, MPI_STATUS_IGNORE);
    if (h.magic != MAGIC) {
      fprintf(stderr, "conc.mpi: rank %d sent a bad header\n", src);
      MPI_Abort(world, 1);
    }
    if (h.kind == F_BYE) {
      (*byes)++;
      if (src == 0) {            /* the rank's server ends (pool._mpi_serve) */
        pthread_mutex_lock(&mu);
        if (bye_bytes) deliver(0, -1, bye_bytes, bye_len);
        bye0 = 1;
        pthread_cond_broadcast(&changed);
        pthread_mutex_unlock(&mu);
      }
    } else if (h.kind == F_CLOSE) {
      pthread_mutex_lock(&mu);
      route *r = route_find(src, h.port);
      if (r) api->chan_shut(r->ch);
      pthread_mutex_unlock(&mu);
    } else if (h.total == 0) {
      pthread_mutex_lock(&mu);
      deliver(src, h.port, "", 0);
      pthread_mutex_unlock(&mu);
    } else {
      pt->buf = malloc(h.total);
      if (pt->buf == NULL) {
        fprintf(stderr, "conc.mpi: not enough memory for a message of %llu bytes "
                "from rank %d\n", (unsigned long long)h.total, src);
        MPI_Abort(world, 1);
      }
      pt->total = h.total;
      pt->got = 0;
      pt->port = h.port;
    }
  }
  return any;
}

/* Gathers every rank's versions and host; a mismatch goes to initerr. */
static void check_versions(void) {
  char mine[VERLEN], *all;
  const char *fake = getenv("CONCLUA_MPI_TEST_VERSION");   /* "rank:text" */
  snprintf(mine, sizeof mine, "%s, %s, format %d", api->conclua, api->lua,
           api->format());
  if (fake && atoi(fake) == myrank && strchr(fake, ':'))
    snprintf(mine, sizeof mine, "%s", strchr(fake, ':') + 1);
  all = calloc((size_t)nranks, VERLEN);
  hosts = calloc((size_t)nranks, sizeof *hosts);
  if (all == NULL || hosts == NULL) {
    fprintf(stderr, "conc.mpi: not enough memory\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Allgather(mine, VERLEN, MPI_CHAR, all, VERLEN, MPI_CHAR, world);
  MPI_Allgather(myhost, (int)sizeof *hosts, MPI_CHAR, hosts, (int)sizeof *hosts,
                MPI_CHAR, world);
  for (int r = 1; r < nranks; r++) {
    if (strcmp(all + (size_t)r * VERLEN, all) != 0) {
      snprintf(initerr, sizeof initerr,
               "conc.mpi: rank %d (%s) runs %s, but rank 0 (%s) runs %s", r,
               hosts[r], all + (size_t)r * VERLEN, hosts[0], all);
      break;
    }
  }
  free(all);
}

static void *comm_main(void *arg) {
  int provided, namelen = 0, byes = 0, bye_sent = 0;
  long sleep_ns = 0;
  struct timespec last = {0, 0};  /* when something last happened */
  unsigned char key[16];
  partial *parts;
  outmsg *sending = NULL;
  (void)arg;
  prctl(PR_SET_TIMERSLACK, 1UL);            /* short sleeps stay short */
  MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_dup(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(world, &myrank);
  MPI_Comm_size(world, &nranks);
  MPI_Get_processor_name(myhost, &namelen);
  myhost[namelen] = '\0';
  check_versions();
  if (provided < MPI_THREAD_FUNNELED && initerr[0] == '\0')
    snprintf(initerr, sizeof initerr, "conc.mpi: this MPI cannot have a thread "
             "of its own make the MPI calls (no MPI_THREAD_FUNNELED)");
  api->key(key);
  MPI_Bcast(key, 16, MPI_BYTE, 0, world);
  if (myrank != 0) api->setkey(key);
  parts = calloc((size_t)nranks, sizeof *parts);
  if (parts == NULL) {
    fprintf(stderr, "conc.mpi: not enough memory\n");
    MPI_Abort(world, 1);
  }
  pthread_mutex_lock(&mu);
  state = S_RUNNING;
  pthread_cond_broadcast(&changed);
  pthread_mutex_unlock(&mu);
  for (;;) {
    outmsg *q, *m, **pp;
    int did = 0, ending;
    pthread_mutex_lock(&mu);
    q = qhead;
    qhead = NULL;
    qtail = &qhead;
    ending = state == S_ENDING;
    if (ending && ending_status > 0 && spmd) {
      pthread_mutex_unlock(&mu);
      MPI_Abort(world, ending_status);      /* nobody else would end */
    }
    pthread_mutex_unlock(&mu);
    if (ending && !bye_sent) {      /* after what the user queued before */
      outmsg **t = &q;
      while (*t) t = &(*t)->next;
      for (int r = 0; r < nranks; r++) {
        if (r == myrank) continue;
        outmsg *b = calloc(1, sizeof *b);
        if (b == NULL) MPI_Abort(world, 1);
        b->dest = r;
        b->kind = F_BYE;
        *t = b;
        t = &b->next;
      }
      bye_sent = 1;
    }
    while ((m = q) != NULL) {
      q = m->next;
      did = 1;
      if (m->dest == myrank) {            /* to ourselves: no MPI */
        pthread_mutex_lock(&mu);
        if (m->kind == F_DATA && m->data) {
          deliver_block(myrank, m->port, m->data, m->n);
          m->data = NULL;
        } else if (m->kind == F_DATA) {
          deliver(myrank, m->port, "", 0);
        }
        pthread_mutex_unlock(&mu);
        outmsg_free(m);
        continue;
      }
      post(m);
      m->next = sending;
      sending = m;
    }
    for (pp = &sending; (m = *pp) != NULL;) {
      int flag = 0;
      MPI_Testall(m->nreq, m->reqs, &flag, MPI_STATUSES_IGNORE);
      if (flag) {
        *pp = m->next;
        outmsg_free(m);
        did = 1;
      } else {
        pp = &m->next;
      }
    }
    did |= receive(parts, &byes);
    if (bye_sent && byes >= nranks - 1 && sending == NULL) break;
    if (did) {
      clock_gettime(CLOCK_MONOTONIC, &last);
      sleep_ns = 0;
      continue;
    }
    {
      struct timespec t;
      clock_gettime(CLOCK_MONOTONIC, &t);
      long since = (t.tv_sec - last.tv_sec) * 1000000000L + (t.tv_nsec - last.tv_nsec);
      if (since < SPIN_NS)
        sleep_ns = 0;             /* an answer is likely now: poll, yielding */
      else if (since < HOT_NS)
        sleep_ns = SLEEP_HOT;     /* or soon: look often */
      else
        sleep_ns = sleep_ns > SLEEP_HOT ? sleep_ns * 2 : 2 * SLEEP_HOT;
    }
    if (sleep_ns > SLEEP_MAX) sleep_ns = SLEEP_MAX;
    if (sleep_ns == 0) {
      sched_yield();
      continue;
    }
    pthread_mutex_lock(&mu);
    if (qhead == NULL && (state == S_ENDING) == ending) {
      struct timespec at;
      clock_gettime(CLOCK_MONOTONIC, &at);
      at.tv_nsec += sleep_ns;
      if (at.tv_nsec >= 1000000000L) {
        at.tv_sec++;
        at.tv_nsec -= 1000000000L;
      }
      pthread_cond_timedwait(&wake, &mu, &at);
    }
    pthread_mutex_unlock(&mu);
  }
  for (int r = 0; r < nranks; r++) free(parts[r].buf);
  free(parts);
  MPI_Comm_free(&world);
  MPI_Finalize();
  pthread_mutex_lock(&mu);
  state = S_DONE;
  pthread_cond_broadcast(&changed);
  pthread_mutex_unlock(&mu);
  return NULL;
}

/* Queues a message (taking data); 0, or -1 when MPI is ending. */
static int enqueue(int dest, int kind, int64_t port, char *data, size_t n) {
  outmsg *m = calloc(1, sizeof *m);
  if (m == NULL) {
    free(data);
    errno = ENOMEM;
    return -1;
  }
  m->dest = dest;
  m->kind = kind;
  m->port = port;
  m->data = data;
  m->n = n;
  pthread_mutex_lock(&mu);
  if (state != S_RUNNING) {
    pthread_mutex_unlock(&mu);
    free(data);
    free(m);
    errno = EPIPE;
    return -1;
  }
  *qtail = m;
  qtail = &m->next;
  pthread_cond_signal(&wake);
  pthread_mutex_unlock(&mu);
  return 0;
}

/* The exit of the process, from any thread: bye to every rank, then
** MPI_Finalize (or MPI_Abort, see DESIGN). */
static void at_exit(int status, void *arg) {
  (void)arg;
  if (getpid() != mpipid) return;          /* a forked child */
  pthread_mutex_lock(&mu);
  if (state != S_RUNNING) {
    pthread_mutex_unlock(&mu);
    return;
  }
  ending_status = status;
  state = S_ENDING;
  pthread_cond_signal(&wake);
  while (state != S_DONE) pthread_cond_wait(&changed, &mu);
  pthread_mutex_unlock(&mu);
  pthread_join(comm, NULL);
}

static void atfork_child(void) {
  state = S_NONE;                  /* MPI is the parent's */
  qhead = NULL;
  qtail = &qhead;
  pthread_mutex_init(&mu, NULL);
}

/* ------------------------------------------------------------ start */

/* Keeps this module and libmpi loaded for good, libmpi's symbols global
** (Open MPI's plugins need them; lua's loadlib opens modules RTLD_LOCAL):
** the communication thread and the exit handler outlive lua_close. */
static void pin(void) {
  Dl_info info;
  if (dladdr((void *)&pin, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE | RTLD_NOLOAD);
  if (dladdr((void *)&MPI_Init_thread, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NODELETE | RTLD_NOLOAD);
}

/* Starts MPI once per process; raises on failure. */
static void start(lua_State *L) {
  pthread_condattr_t ca;
  const char *c;
  int err;
  pthread_mutex_lock(&mu);
  if (state == S_RUNNING || state == S_STARTING) {
    while (state == S_STARTING) pthread_cond_wait(&changed, &mu);
    pthread_mutex_unlock(&mu);
    return;
  }
  if (state != S_NONE) {
    pthread_mutex_unlock(&mu);
    luaL_error(L, "conc.mpi: the MPI job is ending");
  }
  state = S_STARTING;
  pthread_mutex_unlock(&mu);
  pin();
  if ((c = getenv("CONCLUA_MPI_CHUNK")) != NULL && atol(c) > 0)
    chunk = (size_t)atol(c);
  if (chunk > (size_t)INT_MAX) chunk = (size_t)INT_MAX;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&wake, &ca);
  pthread_cond_init(&changed, NULL);
  pthread_condattr_destroy(&ca);
  mpipid = getpid();
  if ((err = pthread_create(&comm, NULL, comm_main, NULL)) != 0) {
    pthread_mutex_lock(&mu);
    state = S_NONE;
    pthread_mutex_unlock(&mu);
    luaL_error(L, "conc.mpi: cannot start the communication thread: %s",
               strerror(err));
  }
  pthread_mutex_lock(&mu);
  while (state == S_STARTING) pthread_cond_wait(&changed, &mu);
  pthread_mutex_unlock(&mu);
  pthread_atfork(NULL, NULL, atfork_child);
  on_exit(at_exit, NULL);
}

/* ------------------------------------------------------------ Lua */

static int check_running(lua_State *L) {
  if (getpid() != mpipid)
    return luaL_error(L, "conc.mpi: MPI belongs to the parent process");
  if (state != S_RUNNING) return luaL_error(L, "conc.mpi: the MPI job is ending");
  return 0;
}

static int check_rank(lua_State *L, int arg) {
  lua_Integer r = luaL_checkinteger(L, arg);
  luaL_argcheck(L, r >= 0 && r < nranks, arg,
                lua_pushfstring(L, "rank out of range (0 to %d)", nranks - 1));
  return (int)r;
}

static int64_t check_tag(lua_State *L, int arg) {
  lua_Integer t = luaL_optinteger(L, arg, 0);
  luaL_argcheck(L, t >= 0 && t <= INT32_MAX, arg, "tag out of range (0 to 2^31-1)");
  return t;
}

/* Encodes the value at idx with our rank and queues it for dest. */
static int send_value(lua_State *L, int dest, int64_t port, int idx) {
  char err[512], *data;
  size_t n;
  check_running(L);
  luaL_argcheck(L, !lua_isnoneornil(L, idx), idx, "cannot send nil");
  lua_pushvalue(L, idx);
  lua_pushinteger(L, myrank);
  if (api->encode(L, lua_touserdata(L, lua_upvalueindex(1)), lua_gettop(L) - 1, 2,
                  "value", &data, &n, err, sizeof err)) {
    lua_pushstring(L, err);
    return lua_error(L);
  }
  lua_pop(L, 2);
  if (enqueue(dest, F_DATA, port, data, n))
    return luaL_error(L, errno == ENOMEM ? "not enough memory"
                                         : "conc.mpi: the MPI job is ending");
  lua_pushboolean(L, 1);
  return 1;
}

#define T_END "conc.mpi.endpoint"
#define T_INBOX "conc.mpi.inbox"

typedef struct end {
  int peer;                   /* -1 for an inbox */
  int64_t port;
  route *r;                   /* its route, for good */
  int closed;
} end;

static end *check_end(lua_State *L, int arg) {
  end *e = luaL_testudata(L, arg, T_END);
  if (e == NULL) e = luaL_checkudata(L, arg, T_INBOX);
  return e;
}

/* Pushes a handle of route r's channel: the end's uservalue 1. */
static int push_end(lua_State *L, int peer, int64_t port, int src) {
  end *e = lua_newuserdatauv(L, sizeof *e, 1);
  route *r;
  e->peer = peer;
  e->port = port;
  e->r = NULL;
  e->closed = 0;
  luaL_setmetatable(L, peer < 0 ? T_INBOX : T_END);
  pthread_mutex_lock(&mu);
  r = route_get(src, port, 0);
  if (r) {
    r->ends++;
    api->push(L, lua_touserdata(L, lua_upvalueindex(1)), r->ch);
  }
  pthread_mutex_unlock(&mu);
  if (r == NULL) return luaL_error(L, "not enough memory");
  lua_setiuservalue(L, -2, 1);
  e->r = r;
  return 1;
}

/* mpi.endpoint(rank [, tag]) */
static int mpi_endpoint(lua_State *L) {
  int peer = check_rank(L, 1);
  int64_t port = check_tag(L, 2);
  check_running(L);
  return push_end(L, peer, port, peer);
}

/* mpi.inbox([tag]) */
static int mpi_inbox(lua_State *L) {
  int64_t port = check_tag(L, 1);
  check_running(L);
  return push_end(L, -1, port, -1);
}

/* mpi._inbox(port), any integer port (negative ones are conclua's) */
static int mpi_xinbox(lua_State *L) {
  int64_t port = luaL_checkinteger(L, 1);
  check_running(L);
  return push_end(L, -1, port, -1);
}

/* mpi._endpoint(rank, port), any integer port */
static int mpi_xendpoint(lua_State *L) {
  int peer = check_rank(L, 1);
  int64_t port = luaL_checkinteger(L, 2);
  check_running(L);
  return push_end(L, peer, port, peer);
}

/* mpi._send(rank, port, value) */
static int mpi_xsend(lua_State *L) {
  int dest = check_rank(L, 1);
  int64_t port = luaL_checkinteger(L, 2);
  return send_value(L, dest, port, 3);
}

/* mpi._newport() -> a port of conclua's, unique in the job */
static int mpi_newport(lua_State *L) {
  int64_t k;
  pthread_mutex_lock(&mu);
  k = ++nextport;
  pthread_mutex_unlock(&mu);
  lua_pushinteger(L, -(lua_Integer)((k << 20) + myrank) - 1000);
  return 1;
}

/* mpi._drop(port): the routes of a port of conclua's are closed, and
** forgotten once no end uses them. */
static int mpi_drop(lua_State *L) {
  int64_t port = luaL_checkinteger(L, 1);
  pthread_mutex_lock(&mu);
  for (route *r = *bucket(port), *next; r; r = next) {
    next = r->next;
    if (r->port != port) continue;
    if (r->ends == 0) route_drop(r);
    else api->chan_shut(r->ch);
  }
  pthread_mutex_unlock(&mu);
  return 0;
}

static int end_send(lua_State *L) {
  end *e = luaL_checkudata(L, 1, T_END);
  if (e->closed) return luaL_error(L, "send on a closed endpoint");
  return send_value(L, e->peer, e->port, 2);
}

/* The channel's method 'name' on the end's channel, with the arguments
** after the end. */
static int end_forward(lua_State *L, const char *name) {
  int n = lua_gettop(L);
  check_end(L, 1);
  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, -1, name);
  lua_insert(L, 2);
  lua_insert(L, 3);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L) - 1;
}

static int end_recv(lua_State *L) {
  return end_forward(L, "recv");
}

static int end_iter(lua_State *L) {
  lua_settop(L, 1);
  return end_forward(L, "iter");
}

static int end_len(lua_State *L) {
  end *e = check_end(L, 1);
  lua_pushinteger(L, (lua_Integer)(e->r ? api->chan_len(e->r->ch) : 0));
  return 1;
}

/* close: no more sends from here; what came can still be received, then
** recv says closed; an endpoint's peer is told (its endpoint for us
** closes the same way). */
static int end_close(lua_State *L) {
  end *e = check_end(L, 1);
  route *r = e->r;
  if (r == NULL || e->closed) return 0;
  e->closed = 1;
  pthread_mutex_lock(&mu);
  api->chan_shut(r->ch);
  pthread_mutex_unlock(&mu);
  if (e->peer >= 0 && state == S_RUNNING && getpid() == mpipid)
    enqueue(e->peer, F_CLOSE, e->port, NULL, 0);
  return 0;
}

static int end_gc(lua_State *L) {
  end *e = check_end(L, 1);
  if (e->r) {
    pthread_mutex_lock(&mu);
    if (--e->r->ends == 0 && e->r->src >= 0) e->r->lazy = 1;   /* an inbox may take it */
    pthread_mutex_unlock(&mu);
    e->r = NULL;
  }
  return 0;
}

static int end_select(lua_State *L) {
  check_end(L, 1);
  lua_getiuservalue(L, 1, 1);
  return 1;
}

static int end_tostring(lua_State *L) {
  end *e = check_end(L, 1);
  if (e->peer >= 0)
    lua_pushfstring(L, "<mpi endpoint to rank %d, tag %I%s>", e->peer,
                    (LUAI_UACINT)e->port, e->closed ? ", closed" : "");
  else
    lua_pushfstring(L, "<mpi inbox, tag %I%s>", (LUAI_UACINT)e->port,
                    e->closed ? ", closed" : "");
  return 1;
}

static int mpi_rank(lua_State *L) {
  lua_pushinteger(L, myrank);
  return 1;
}

static int mpi_size(lua_State *L) {
  lua_pushinteger(L, nranks);
  return 1;
}

/* mpi.host([rank]) */
static int mpi_host(lua_State *L) {
  int r = lua_isnoneornil(L, 1) ? myrank : check_rank(L, 1);
  lua_pushstring(L, hosts[r]);
  return 1;
}

/* mpi._serving() -> whether this rank only serves (-l, rank > 0) */
static int mpi_serving(lua_State *L) {
  lua_pushboolean(L, serving);
  return 1;
}

/* mpi._spmd() -> whether the script runs on every rank */
static int mpi_spmd(lua_State *L) {
  lua_pushboolean(L, spmd);
  return 1;
}

static const luaL_Reg end_methods[] = {
    {"send", end_send}, {"recv", end_recv}, {"iter", end_iter},
    {"close", end_close}, {"len", end_len}, {NULL, NULL}};

static const luaL_Reg funcs[] = {
    {"rank", mpi_rank},         {"size", mpi_size},
    {"host", mpi_host},         {"endpoint", mpi_endpoint},
    {"inbox", mpi_inbox},       {"_inbox", mpi_xinbox},     {"_endpoint", mpi_xendpoint},
    {"_send", mpi_xsend},       {"_newport", mpi_newport},
    {"_drop", mpi_drop},        {"_serving", mpi_serving},
    {"_spmd", mpi_spmd},
    {NULL, NULL}};

/* The functions of a state have its runtime ('cs') as their upvalue. */
static void make_meta(lua_State *L, void *cs, const char *tname, int sends) {
  luaL_newmetatable(L, tname);
  luaL_newlibtable(L, end_methods);
  lua_pushlightuserdata(L, cs);
  luaL_setfuncs(L, end_methods, 1);
  if (!sends) {
    lua_pushnil(L);
    lua_setfield(L, -2, "send");
  }
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, end_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, end_select);
  lua_setfield(L, -2, "__select");
  lua_pushcfunction(L, end_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}

/* barrier and bcast, on conclua's own ports (-2, -3) */
static const char lua_part[] =
    "local mpi, conc = ...\n"
    "local send, inbox, ep, rank, size = mpi._send, mpi._inbox, mpi._endpoint, mpi.rank(), mpi.size()\n"
    "local spmd = mpi._spmd()\n"
    "function mpi.barrier()\n"
    "  if not spmd then\n"
    "    -- under -l the other ranks serve: wait until each one's server answers\n"
    "    local port = mpi._newport()\n"
    "    local box = inbox(port)\n"
    "    for r = 1, size - 1 do send(r, -1, {op = 'ping', port = port}) end\n"
    "    for _ = 1, size - 1 do box:recv() end\n"
    "    mpi._drop(port)\n"
    "    return\n"
    "  end\n"
    "  if rank == 0 then\n"
    "    for r = 1, size - 1 do ep(r, -2):recv() end\n"
    "    for r = 1, size - 1 do send(r, -2, true) end\n"
    "  else\n"
    "    send(0, -2, true)\n"
    "    ep(0, -2):recv()\n"
    "  end\n"
    "end\n"
    "function mpi.bcast(value, root)\n"
    "  root = root or 0\n"
    "  if math.type(root) ~= 'integer' or root < 0 or root >= size then\n"
    "    error(string.format(\"bad argument #2 to 'bcast' (rank out of range (0 to %d))\", size - 1), 2)\n"
    "  end\n"
    "  if not spmd then return value end   -- under -l nobody else runs the script\n"
    "  if rank == root then\n"
    "    if value == nil then error(\"bad argument #1 to 'bcast' (cannot send nil)\", 2) end\n"
    "    for r = 0, size - 1 do if r ~= root then send(r, -3, value) end end\n"
    "    return value\n"
    "  end\n"
    "  return (ep(root, -3):recv())\n"
    "end\n";

/* Whether a Lua function is on the call stack: require from a script,
** not from -l. */
static int from_script(lua_State *L) {
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "S", &ar);
    if (strcmp(ar.what, "C") != 0) return 1;
  }
  return 0;
}

__attribute__((visibility("default"))) int luaopen_conc_mpi(lua_State *L) {
  int first = state == S_NONE;
  int script = from_script(L);
  void *cs;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "conc");
  lua_call(L, 1, 1);                       /* conc, at 1 after settop */
  lua_replace(L, 1);
  lua_settop(L, 1);
  lua_getfield(L, 1, "_mpiapi");
  if (!lua_isfunction(L, -1)) return luaL_error(L, "conc.mpi: this conc has no _mpiapi");
  lua_call(L, 0, 2);
  api = lua_touserdata(L, -2);
  cs = lua_touserdata(L, -1);
  lua_pop(L, 2);
  if (api == NULL || api->version != CONC_MPIAPI_VERSION)
    return luaL_error(L, "conc.mpi: built for another version of conclua");
  if (first) spmd = script;
  start(L);
  if (initerr[0]) return luaL_error(L, "%s", initerr);
  make_meta(L, cs, T_END, 1);
  make_meta(L, cs, T_INBOX, 0);
  luaL_newlibtable(L, funcs);              /* 2 */
  lua_pushlightuserdata(L, cs);
  luaL_setfuncs(L, funcs, 1);
  if (luaL_loadbuffer(L, lua_part, sizeof lua_part - 1, "=[conc.mpi]") != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  lua_call(L, 2, 0);
  if (first && myrank != 0) {
    /* the server of pool workers, a thread of its own until rank 0 ends:
    ** rank 0's bye hands it this message */
    char err[256];
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "bye");
    lua_setfield(L, -2, "op");
    lua_pushinteger(L, 0);
    if (api->encode(L, cs, lua_gettop(L) - 1, 2, "value", &bye_bytes, &bye_len, err,
                    sizeof err))
      return luaL_error(L, "conc.mpi: %s", err);
    lua_pop(L, 2);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "conc.pool");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "_mpi_start_server");
    lua_call(L, 0, 0);
    lua_pop(L, 1);
    if (!script) {                         /* -l: serve until rank 0 ends */
      serving = 1;
      pthread_mutex_lock(&mu);
      while (!bye0 && state == S_RUNNING) pthread_cond_wait(&changed, &mu);
      pthread_mutex_unlock(&mu);
      fflush(NULL);
      exit(0);
    }
  }
  return 1;
}
