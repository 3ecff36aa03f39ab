/*
** pipe.c
** conc.pipe(): two connected duplex ends, for a parent and a forked child
** (or two threads).
**
** DESIGN. The ends are the two sockets of an AF_UNIX stream socketpair
** (duplex, and faster than pipe(2)), with close-on-exec. They block,
** but a call returns after a slice at most (SO_SNDTIMEO, SO_RCVTIMEO) or
** at once on a signal, so a wait still sees a stop; a send with a
** deadline tries without blocking (MSG_DONTWAIT) and polls instead. A
** recv waiting for a frame to begin polls too, deadline or not, after a
** spin (conc_park_poll): a peer that answers at once is seen at once, not
** after the wake-ups of a blocking recv; only the rest of a big frame is
** read blocking.
** A message is a frame: a u64 length, then marshal's remote form of the
** value. Threads of one process may share an end: a send holds the end's
** writer turn for a whole frame, a recv its reader turn, so frames never
** interleave; waiting for a turn or for the socket is a conc wait
** (cancellable, interruptible), and polls the socket with the parker.
** A reader keeps what it read past one frame for the next recv (and for
** select, which tries that buffer before polling).
** Fork gives both processes both ends. So that the death or close of one
** side is seen by the other, the first use of an end in a process that
** crossed a fork since the pipe was made closes, in that process, the
** other end if this process never used it: "each side keeps the end it
** uses". close() closes this process's copy only (the usual idiom of
** closing the unused end in the parent works). A peer that closed or died
** gives nil, "closed" to a reader, and an error, not SIGPIPE, to a writer;
** a frame cut short by a death is an error, never garbage. What arrives is
** the peer's word, not a fact: the buffer grows with the bytes that came,
** never to the length a frame claims, and a length no frame can have is
** corrupt (the end then reads as closed).
*/

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "modules.h"

/* What the two ends share: which of them this process has used. */
typedef struct pipepair {
  _Atomic int refs;
  pthread_mutex_t mu;
  objlink link;
  pid_t pid;                   /* process that made the pair */
  unsigned forkgen;            /* forks of that process before it */
  pid_t used[2];               /* the last process that used each end */
  unsigned usedgen[2];         /* and its fork count then */
  struct pend *end[2];
  struct cstate *maker;        /* the state that made it */
  _Atomic int threaded;        /* an end went to another state (a thread) */
} pipepair;

typedef struct pend {
  cobj obj;
  pthread_mutex_t mu;          /* guards what follows */
  objlink link;
  pipepair *pair;
  int side;
  int fd;                      /* -1 once closed in this process */
  int active;                  /* calls using fd now */
  _Atomic int closed;          /* close() was called here */
  int eof;                     /* the peer is gone */
  int reading, writing;        /* a thread holds the reader/writer turn */
  selnode *waiters;            /* threads waiting for a turn */
  char *in;                    /* bytes read past the frames taken */
  size_t inlen, incap;
} pend;

#define FRAME_HEAD 8
#define READ_CHUNK 65536
#define SLICE_MS 100

extern _Atomic unsigned conc_forkgen;

static void pair_release(pipepair *pp) {
  if (atomic_fetch_sub(&pp->refs, 1) != 1) return;
  conc_fork_unregister(&pp->link);
  pthread_mutex_destroy(&pp->mu);
  free(pp);
}

/* Blocking calls return within a slice (to check for stops); bigger
** buffers mean fewer trips for big messages (the kernel caps them). */
static void setup_socket(int fd) {
  struct timeval tv = {0, SLICE_MS * 1000};
  int size = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
}

static void pend_destroy(cobj *o) {
  pend *e = (pend *)o;
  pipepair *pp = e->pair;
  pthread_mutex_lock(&pp->mu);
  pp->end[e->side] = NULL;
  pthread_mutex_unlock(&pp->mu);
  conc_fork_unregister(&e->link);
  conc_fd_close(e->fd);
  free(e->in);
  pthread_mutex_destroy(&e->mu);
  free(e);
  pair_release(pp);
}

int conc_pipe_new(lua_State *L) {
  cstate *cs = conc_cs(L);
  int fds[2];
  pipepair *pp;
  pend *e[2];
  if (conc_fd_socketpair(fds) != 0)
    return luaL_error(L, "cannot make a pipe: %s", strerror(errno));
  pp = calloc(1, sizeof *pp);
  e[0] = calloc(1, sizeof(pend));
  e[1] = calloc(1, sizeof(pend));
  if (pp == NULL || e[0] == NULL || e[1] == NULL) {
    free(pp);
    free(e[0]);
    free(e[1]);
    conc_fd_close(fds[0]);
    conc_fd_close(fds[1]);
    return conc_nomem(L);
  }
  atomic_init(&pp->refs, 2);
  pthread_mutex_init(&pp->mu, NULL);
  conc_fork_register(&pp->link, &pp->mu);
  pp->pid = conc_getpid();
  pp->forkgen = atomic_load(&conc_forkgen);
  pp->maker = cs;
  for (int i = 0; i < 2; i++) {
    conc_obj_init(&e[i]->obj, K_PIPE);
    pthread_mutex_init(&e[i]->mu, NULL);
    conc_fork_register(&e[i]->link, &e[i]->mu);
    e[i]->pair = pp;
    e[i]->side = i;
    e[i]->fd = fds[i];
    setup_socket(fds[i]);
    pp->end[i] = e[i];
  }
  for (int i = 0; i < 2; i++) {
    conc_obj_push(L, cs, &e[i]->obj);
    conc_obj_release(&e[i]->obj);
  }
  return 2;
}

static pend *check_pend(lua_State *L) {
  return (pend *)conc_obj_check(L, 1, K_PIPE);
}

/* A handle of an end is made in state cs. In another state than the
** pair's maker (a thread; a forked child's copy of the maker is the maker
** still), an end unused in this process may be a thread's live one, not a
** copy that a fork left: claim_end then closes nothing. */
static void pipe_handle_made(cobj *o, struct cstate *cs) {
  pipepair *pp = ((pend *)o)->pair;
  if (cs != pp->maker) atomic_store(&pp->threaded, 1);
}

/* First use of e in a process, or since this process last forked, when
** it crossed a fork since the pair was made: the other end, unused here,
** belongs to the other side. */
static void claim_end(pend *e) {
  pipepair *pp = e->pair;
  pid_t me = conc_getpid();
  pend *other = NULL;
  int crossed;
  pthread_mutex_lock(&pp->mu);
  crossed = me != pp->pid || atomic_load(&conc_forkgen) != pp->forkgen;
  if (pp->used[e->side] != me ||
      pp->usedgen[e->side] != atomic_load(&conc_forkgen)) {
    pp->used[e->side] = me;
    pp->usedgen[e->side] = atomic_load(&conc_forkgen);
    other = pp->end[!e->side];
    /* the other end goes only if nothing else in this process holds it:
    ** one handle (the one the fork copied), never used here */
    if (crossed && other && !atomic_load(&pp->threaded) &&
        pp->used[!e->side] != me &&
        atomic_load(&other->obj.refs) == 1)
      conc_obj_retain(&other->obj);
    else
      other = NULL;
  }
  pthread_mutex_unlock(&pp->mu);
  if (other) {
    pthread_mutex_lock(&other->mu);
    if (other->fd >= 0 && other->active == 0) {
      conc_fd_close(other->fd);
      other->fd = -1;
      other->closed = 1;
    }
    pthread_mutex_unlock(&other->mu);
    conc_obj_release(&other->obj);
  }
}

/* ------------------------------------------------------------ turns */

/* Takes the reader (or writer) turn of e, waiting as a conc wait. With
** e->mu held on entry and exit. Returns NULL, or why it stopped. */
static const char *take_turn(pend *e, cstate *cs, int *turn,
                             const deadline *d, int *timedout) {
  *timedout = 0;
  while (*turn) {
    selwait sw;
    selnode n;
    const char *why;
    uint32_t seen;
    sw.park = &cs->park;
    atomic_init(&sw.won, 0);
    memset(&n, 0, sizeof n);
    n.sw = &sw;
    conc_selq_push(&e->waiters, &n);
    seen = conc_park_seq(&cs->park);
    pthread_mutex_unlock(&e->mu);
    why = conc_cs_stopreason(cs);
    if (why == NULL && conc_park_sleep(&cs->park, seen, d) == ETIMEDOUT)
      *timedout = 1;
    pthread_mutex_lock(&e->mu);
    if (n.linked) conc_selq_remove(&e->waiters, &n);
    if (why) return why;
    if (*timedout && *turn) return NULL;
    *timedout = 0;
  }
  *turn = 1;
  e->active++;
  return NULL;
}

/* Gives the turn back (e->mu held); closes the fd if close() came
** meanwhile and nobody uses it any more. */
static void give_turn(pend *e, int *turn) {
  *turn = 0;
  e->active--;
  conc_selq_nudge_all(&e->waiters);
  if (e->closed && e->active == 0 && e->fd >= 0) {
    conc_fd_close(e->fd);
    e->fd = -1;
  }
}

/* ------------------------------------------------------------ send */

/* Blocking socket calls return after a slice at most (SO_SNDTIMEO and
** SO_RCVTIMEO), or at once on a signal (cancel, Ctrl-C), so the caller
** can check for a stop request. */

/* Sends one frame. 0 sent, ETIMEDOUT (nothing sent by the deadline), -1
** stop request (*why), -2 closed here meanwhile, or an errno. *started
** tells whether bytes went out (a frame, once begun, is finished: the
** deadline only counts before its first byte). */
static int write_frame(pend *e, cstate *cs, const char *p, size_t n,
                       const deadline *d, const char **why, int *started) {
  uint64_t len = n;
  size_t off = 0, total = FRAME_HEAD + n;
  *started = 0;
  while (off < total) {
    struct iovec iov[2];
    struct msghdr mh;
    int nonblock = !*started && d && !d->forever;
    ssize_t w;
    memset(&mh, 0, sizeof mh);
    if (off < FRAME_HEAD) {
      iov[0].iov_base = (char *)&len + off;
      iov[0].iov_len = FRAME_HEAD - off;
      iov[1].iov_base = (char *)p;
      iov[1].iov_len = n;
      mh.msg_iovlen = 2;
    } else {
      iov[0].iov_base = (char *)p + (off - FRAME_HEAD);
      iov[0].iov_len = total - off;
      mh.msg_iovlen = 1;
    }
    mh.msg_iov = iov;
    w = sendmsg(e->fd, &mh, MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0));
    if (w > 0) {
      off += (size_t)w;
      *started = 1;
      continue;
    }
    if (w < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
      return errno;
    if ((*why = conc_cs_stopreason(cs)) != NULL) return -1;
    if (atomic_load(&e->closed)) return -2;
    if (nonblock) {
      struct pollfd pf[2];       /* conc_park_poll adds its eventfd */
      if (conc_deadline_passed(d)) return ETIMEDOUT;
      pf[0].fd = e->fd;
      pf[0].events = POLLOUT;
      conc_park_poll(&cs->park, conc_park_seq(&cs->park), pf, 1, d);
    }
  }
  return 0;
}

static int pipe_send(lua_State *L) {
  cstate *cs = conc_cs(L);
  pend *e = check_pend(L);
  double t;
  char err[512];
  deadline d;
  const char *why = NULL;
  int r, timedout, started;
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "cannot send nil");
  t = conc_opttimeout(L, 3);
  if ((r = conc_marshal_encode(L, cs, 2, 1, &cs->scratch, MARSHAL_REMOTE,
                               "value", err, sizeof err)) != 0)
    return conc_msg_raise(L, r, err);
  claim_end(e);
  conc_deadline_in(&d, t);
  pthread_mutex_lock(&e->mu);
  if (e->fd < 0 || atomic_load(&e->closed)) {
    pthread_mutex_unlock(&e->mu);
    conc_mbuf_reset(&cs->scratch);
    return luaL_error(L, "send on a closed pipe");
  }
  conc_cs_waiting_obj(cs, "send", &e->obj);
  why = take_turn(e, cs, &e->writing, &d, &timedout);
  if (why || timedout) {
    pthread_mutex_unlock(&e->mu);
    conc_cs_waiting(cs, NULL);
    conc_mbuf_reset(&cs->scratch);
    if (why) return conc_cs_raisestop(L, cs, why);
    lua_pushboolean(L, 0);
    return 1;
  }
  if (e->fd < 0 || atomic_load(&e->closed)) {   /* closed while we waited */
    give_turn(e, &e->writing);
    pthread_mutex_unlock(&e->mu);
    conc_cs_waiting(cs, NULL);
    conc_mbuf_reset(&cs->scratch);
    return luaL_error(L, "send on a closed pipe");
  }
  pthread_mutex_unlock(&e->mu);
  r = write_frame(e, cs, cs->scratch.p, cs->scratch.n, &d, &why, &started);
  pthread_mutex_lock(&e->mu);
  if (r != 0 && started) {
    /* cut short: the peer must not read a half frame as anything, so
    ** this end sends no more (later sends fail); it can still receive */
    shutdown(e->fd, SHUT_WR);
  }
  give_turn(e, &e->writing);
  pthread_mutex_unlock(&e->mu);
  conc_cs_waiting(cs, NULL);
  conc_mbuf_reset(&cs->scratch);
  if (r == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (r == ETIMEDOUT) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (r == -1) return conc_cs_raisestop(L, cs, why);
  if (r == -2 || r == EPIPE || r == ECONNRESET)
    return luaL_error(L, "send on a closed pipe");
  return luaL_error(L, "pipe send failed: %s", strerror(r));
}

/* ------------------------------------------------------------ recv */

#define MAXFRAME ((uint64_t)1 << 40)
#define KEEP_BUFFER (64u << 20)   /* a bigger input buffer is freed after use */

/* The length of the frame at the start of the buffer, or -1 for none yet;
** -2 if the bytes cannot be a frame. */
static int64_t frame_len(pend *e) {
  uint64_t len;
  if (e->inlen < FRAME_HEAD) return -1;
  memcpy(&len, e->in, FRAME_HEAD);
  if (len > MAXFRAME) return -2;
  return (int64_t)len;
}

static int frame_ready(pend *e) {
  int64_t len = frame_len(e);
  if (len == -2) return -1;
  return len >= 0 && e->inlen - FRAME_HEAD >= (uint64_t)len;
}

/* Drops the first frame of the buffer. */
static void frame_drop(pend *e) {
  size_t n = FRAME_HEAD + (size_t)frame_len(e);
  e->inlen -= n;
  memmove(e->in, e->in + n, e->inlen);
  if (e->inlen == 0 && e->incap > KEEP_BUFFER) {
    free(e->in);
    e->in = NULL;
    e->incap = 0;
  }
}

/* Reads into the buffer: at most what fits the frame being read, or a
** chunk. 'wait' blocks (a slice at most). 1 read something, 0 nothing
** (EAGAIN, EINTR), -1 end of file or error (e->eof set), -2 no memory.
** The length a frame claims is the peer's word, not a fact: the buffer
** grows with the bytes that came (at most doubling them, or a chunk), so
** a forged length costs no more memory than the bytes sent. */
static int fill(pend *e, int wait) {
  size_t want = READ_CHUNK, room = e->incap - e->inlen;
  int64_t len = frame_len(e);
  int whole = 0;
  ssize_t r;
  if (len >= 0 && FRAME_HEAD + (size_t)len > e->inlen) {
    size_t rest = FRAME_HEAD + (size_t)len - e->inlen;
    if (rest > want) {             /* a big frame: straight to its place */
      size_t grow = e->inlen > READ_CHUNK ? e->inlen : READ_CHUNK;
      want = rest;
      if (want > room && want > grow) want = room > grow ? room : grow;
      whole = 1;
    }
  }
  if (room < want) {
    size_t cap = e->incap ? e->incap : READ_CHUNK;
    char *np;
    if (whole) cap = e->inlen + want;
    while (cap - e->inlen < want) cap *= 2;
    np = realloc(e->in, cap);
    if (np == NULL) return -2;
    e->in = np;
    e->incap = cap;
  }
  r = recv(e->fd, e->in + e->inlen, whole ? want : e->incap - e->inlen,
           wait ? (whole ? MSG_WAITALL : 0) : MSG_DONTWAIT);
  if (r > 0) {
    e->inlen += (size_t)r;
    return 1;
  }
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    return 0;
  e->eof = 1;
  return -1;
}

enum { GOT, EMPTY, CLOSED, CUT, CORRUPT, NOMEM, STOP };

/* Whether the frame being read has more than a chunk still to come. */
static int frame_big(pend *e) {
  int64_t len = frame_len(e);
  return len >= 0 && FRAME_HEAD + (size_t)len > e->inlen + READ_CHUNK;
}

/* Gets a whole frame into the buffer, waiting until the deadline. With
** the reader turn held. */
static int get_frame(pend *e, cstate *cs, const deadline *d, const char **why) {
  for (;;) {
    int f = frame_ready(e), r;
    if (f > 0) return GOT;
    if (f < 0) return CORRUPT;
    if (e->eof) return e->inlen ? CUT : CLOSED;
    r = fill(e, 0);
    if (r > 0) continue;
    if (r == -2) return NOMEM;
    if (r < 0) continue;                  /* eof: reported above */
    if ((*why = conc_cs_stopreason(cs)) != NULL) return STOP;
    if (atomic_load(&e->closed)) return CLOSED;
    if ((d == NULL || d->forever) && frame_big(e)) {
      fill(e, 1);                         /* block: a slice at most */
    } else {
      /* the next frame: spun for, then polled (with the parker, which a
      ** stop request wakes): a peer that answers at once is seen at once,
      ** not after two wake-ups of a blocking recv */
      struct pollfd pf[2];       /* conc_park_poll adds its eventfd */
      if (conc_deadline_passed(d)) return EMPTY;
      pf[0].fd = e->fd;
      pf[0].events = POLLIN;
      conc_park_poll(&cs->park, conc_park_seq(&cs->park), pf, 1, d);
    }
  }
}

typedef struct decarg {
  cstate *cs;
  const char *p;
  size_t n;
  char err[160];
} decarg;

static int decode_body(lua_State *L) {
  decarg *a = lua_touserdata(L, 1);
  int n;
  lua_pop(L, 1);
  n = conc_marshal_decode(L, a->cs, a->p, a->n, NULL, 0, a->err,
                     sizeof a->err);
  if (n < 0) {
    lua_pushstring(L, a->err);
    return lua_error(L);
  }
  return n;
}

static int push_failure(lua_State *L, int r) {
  switch (r) {
    case CUT: return luaL_error(L, "pipe closed in the middle of a message");
    case CORRUPT: return luaL_error(L, "corrupt message on pipe");
    default: return conc_nomem(L);
  }
}

static int pipe_recv(lua_State *L) {
  cstate *cs = conc_cs(L);
  pend *e = check_pend(L);
  deadline d;
  const char *why = NULL;
  int r = EMPTY, timedout, st = LUA_OK, base;
  conc_deadline_in(&d, conc_opttimeout(L, 2));
  claim_end(e);
  lua_settop(L, 1);
  base = lua_gettop(L);
  pthread_mutex_lock(&e->mu);
  if (e->fd < 0 || atomic_load(&e->closed)) {
    pthread_mutex_unlock(&e->mu);
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  conc_cs_waiting_obj(cs, "recv", &e->obj);
  why = take_turn(e, cs, &e->reading, &d, &timedout);
  if (why == NULL && !timedout) {
    pthread_mutex_unlock(&e->mu);
    r = get_frame(e, cs, &d, &why);
    if (r == GOT) {
      /* decode in place, under the turn; protected, so the turn is given
      ** back even if decoding raises */
      decarg a;
      a.cs = cs;
      a.p = e->in + FRAME_HEAD;
      a.n = (size_t)frame_len(e);
      lua_pushcfunction(L, decode_body);
      lua_pushlightuserdata(L, &a);
      st = lua_pcall(L, 1, LUA_MULTRET, 0);
      if (st != LUA_ERRMEM) frame_drop(e);   /* out of memory: kept */
    }
    pthread_mutex_lock(&e->mu);
    if (r == CUT || r == CORRUPT) {       /* nothing sane can follow */
      e->eof = 1;
      e->inlen = 0;
    }
    give_turn(e, &e->reading);
  }
  pthread_mutex_unlock(&e->mu);
  conc_cs_waiting(cs, NULL);
  if (r == GOT) {
    if (st != LUA_OK) return lua_error(L);
    return lua_gettop(L) - base;
  }
  if (why) return conc_cs_raisestop(L, cs, why);
  if (r == CLOSED) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (r == EMPTY) {
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  return push_failure(L, r);
}

/* ------------------------------------------------------------ misc */

/* close(): an end this process used is shut down, so the peer sees it
** whatever copies fork made; an end it never used (the copy a fork left
** here) is only closed here. */
static int pipe_close(lua_State *L) {
  pend *e = check_pend(L);
  int mine;
  pthread_mutex_lock(&e->pair->mu);
  mine = e->pair->used[e->side] == conc_getpid();
  pthread_mutex_unlock(&e->pair->mu);
  pthread_mutex_lock(&e->mu);
  if (e->fd >= 0 && !atomic_load(&e->closed) && mine)
    shutdown(e->fd, SHUT_RDWR);
  atomic_store(&e->closed, 1);
  if (e->active == 0 && e->fd >= 0) {
    conc_fd_close(e->fd);
    e->fd = -1;
  }
  conc_selq_nudge_all(&e->waiters);
  pthread_mutex_unlock(&e->mu);
  return 0;
}

static int pipe_iter_next(lua_State *L) {
  int n;
  lua_settop(L, 1);
  n = pipe_recv(L);
  if (n == 2 && lua_isnil(L, -2)) return 0;
  return n;
}

static int pipe_iter(lua_State *L) {
  check_pend(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, pipe_iter_next, 1);
  lua_pushvalue(L, 1);
  return 2;
}

static int pipe_tostring(lua_State *L) {
  pend *e = check_pend(L);
  lua_pushfstring(L, "<pipe end %d%s>", e->side + 1,
                  e->fd < 0 ? " closed" : "");
  return 1;
}

/* select: a buffered or readable frame now (claimed before it is taken),
** else the fd is polled. */
static int pipe_sel_try(cobj *o, selnode *n) {
  pend *e = (pend *)o;
  int r = EMPTY;
  claim_end(e);
  pthread_mutex_lock(&e->mu);
  if (e->fd < 0 || atomic_load(&e->closed)) {
    n->result = SEL_CLOSED;
    pthread_mutex_unlock(&e->mu);
    return 0;
  }
  if (e->reading) {
    /* another thread reads: it may leave frames in e->in that the socket
    ** no longer shows; be woken when it gives the turn back */
    if (!n->linked) conc_selq_push(&e->waiters, n);
    pthread_mutex_unlock(&e->mu);
    return 0;
  }
  e->reading = 1;
  e->active++;
  pthread_mutex_unlock(&e->mu);
  for (;;) {
    int f = frame_ready(e);
    if (f < 0) {
      r = CORRUPT;
      break;
    }
    if (f > 0) {
      /* copied before the claim: a select claimed must get its value */
      msg *m = conc_msg_copy(e->in + FRAME_HEAD, (size_t)frame_len(e));
      if (m == NULL) {
        r = NOMEM;
      } else if (conc_sel_claim(n->sw, n->index)) {
        frame_drop(e);
        n->m = m;
        n->result = SEL_VALUE;
        r = GOT;
      } else {
        conc_msg_free(m);             /* another item won */
      }
      break;
    }
    if (e->eof) {
      r = e->inlen ? CUT : CLOSED;
      break;
    }
    f = fill(e, 0);
    if (f == 0) break;
    if (f == -2) {
      r = NOMEM;
      break;
    }
  }
  pthread_mutex_lock(&e->mu);
  if (r != EMPTY && r != GOT && r != NOMEM) {
    n->result = SEL_CLOSED;     /* closed, cut short or corrupt: done */
    e->eof = 1;
  }                             /* out of memory: the frame waits */
  give_turn(e, &e->reading);
  pthread_mutex_unlock(&e->mu);
  return r == GOT || atomic_load(&n->sw->won) != 0;
}

static void pipe_sel_delist(cobj *o, selnode *n) {
  pend *e = (pend *)o;
  pthread_mutex_lock(&e->mu);
  if (n->linked) conc_selq_remove(&e->waiters, n);
  pthread_mutex_unlock(&e->mu);
}

/* The socket, unless another thread reads it (the select then waits for
** that thread to give the turn back: see pipe_sel_try). */
static int pipe_sel_fds(cobj *o, int fds[2]) {
  pend *e = (pend *)o;
  int k;
  pthread_mutex_lock(&e->mu);
  fds[0] = e->fd;
  k = fds[0] >= 0 && !e->reading;
  pthread_mutex_unlock(&e->mu);
  return k;
}

static const luaL_Reg pipe_methods[] = {
    {"send", pipe_send}, {"recv", pipe_recv}, {"close", pipe_close},
    {"iter", pipe_iter}, {NULL, NULL}};

const kindinfo conc_pipe_kind = {
    .kind = K_PIPE,
    .tname = "conc.pipe",
    .name = "pipe",
    .local = 1,
    .destroy = pend_destroy,
    .methods = pipe_methods,
    .tostring = pipe_tostring,
    .sel_try = pipe_sel_try,
    .sel_delist = pipe_sel_delist,
    .sel_fds = pipe_sel_fds,
    .handle_made = pipe_handle_made};
