/*
** reap.c
** Watching child processes: their results, their end, no zombie.
**
** DESIGN. One thread at a time watches a child (w->busy): it drains the
** result pipe as data comes (so a child with a big result never blocks on
** a full pipe) and reaps the child once it ended, then finishes the
** worker record, which wakes joiners and selects as a thread's end does.
** Whoever waits for the child (join, wait, select, status, the wait at
** exit) takes that role in turn; the others wait for the end on
** w->waiters, and take over if the watcher gives up (a timeout, a stop).
** The common case, spawn then join, runs no extra thread, which keeps
** fork cheap: a multithreaded parent pays for TLB shootdowns. A child to
** which no Lua handle is left is given to the reaper thread, started on
** demand, so it leaves no zombie either.
*/

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workers.h"

static pthread_mutex_t reap_mu = PTHREAD_MUTEX_INITIALIZER;
static objlink reap_link;
static worker **watched;       /* children the reaper watches */
static int nwatched, capwatched;
static int reap_efd = -1;      /* wakes the reaper when the list changes */
static int reap_running;

static const char *signame(int sig, char *buf, size_t n) {
  const char *a = sigabbrev_np(sig);
  if (a) snprintf(buf, n, "SIG%s", a);
  else snprintf(buf, n, "signal %d", sig);
  return buf;
}

/* Reads what the child sent so far, without blocking; 1 at end of file.
** The buffer starts small and doubles only when full: every page the
** parent writes between forks costs a copy-on-write fault, so a trivial
** result must not make it touch a big buffer. Out of memory, the result
** is given up (w->nomem: its join says so) and the rest read and dropped,
** so that the child can finish writing and exit. */
/* Reads and drops what w sends (drain, out of memory). Its own frame:
** a sink on drain's would reach a stack page deeper on every drain. */
static __attribute__((noinline)) int drop_rest(worker *w) {
  char sink[4096];
  for (;;) {
    ssize_t r = read(w->rfd, sink, sizeof sink);
    if (r > 0) continue;
    if (r == 0) return 1;
    if (errno == EINTR) continue;
    return errno != EAGAIN;
  }
}

static int drain(worker *w) {
  for (;;) {
    ssize_t r;
    if (w->nomem) return drop_rest(w);
    if (w->inbuf.cap == w->inbuf.n) {
      size_t cap = w->inbuf.cap ? w->inbuf.cap * 2 : 1024;
      char *np = realloc(w->inbuf.p, cap);
      if (np == NULL) {
        conc_mbuf_free(&w->inbuf);
        w->nomem = 1;
        continue;
      }
      w->inbuf.p = np;
      w->inbuf.cap = cap;
    }
    r = read(w->rfd, w->inbuf.p + w->inbuf.n, w->inbuf.cap - w->inbuf.n);
    if (r > 0) {
      w->inbuf.n += (size_t)r;
      continue;
    }
    if (r == 0) return 1;
    if (errno == EINTR) continue;
    return errno != EAGAIN;
  }
}

/* The child ended (status from waitpid): makes the outcome from the
** reply it sent, or from how it died. */
static void conclude(worker *w, int wst) {
  int status;
  msg *result = NULL;
  char *errmsg = NULL;
  char buf[256], sb[32];
  reply f;
  int replied = 0;
  if (w->inbuf.n >= sizeof f) {
    memcpy(&f, w->inbuf.p, sizeof f);
    replied = f.magic == REPLY_MAGIC && f.status <= 1 &&
             f.msglen <= w->inbuf.n - sizeof f &&
             f.len == w->inbuf.n - sizeof f - f.msglen;
  }
  if (WIFSIGNALED(wst)) {
    w->exitcode = -WTERMSIG(wst);
  } else {
    w->exitcode = WEXITSTATUS(wst);
  }
  if (w->nomem && !WIFSIGNALED(wst)) {
    errmsg = strdup("not enough memory");
    status = W_FAILED;
  } else if (replied && f.status == 0 && !WIFSIGNALED(wst)) {
    result = conc_msg_copy(w->inbuf.p + sizeof f + f.msglen, (size_t)f.len);
    status = W_DONE;
    if (result == NULL) {
      errmsg = strdup("not enough memory");
      status = W_FAILED;
    }
  } else if (replied && f.status == 1) {
    errmsg = malloc((size_t)f.msglen + 1);
    if (errmsg) {
      memcpy(errmsg, w->inbuf.p + sizeof f, (size_t)f.msglen);
      errmsg[f.msglen] = '\0';
    }
    if (f.len)
      result = conc_msg_copy(w->inbuf.p + sizeof f + f.msglen, (size_t)f.len);
    status = W_FAILED;
  } else if (WIFSIGNALED(wst)) {
    snprintf(buf, sizeof buf, "process %d killed by signal %d (%s)",
             (int)w->pid, WTERMSIG(wst), signame(WTERMSIG(wst), sb, sizeof sb));
    errmsg = strdup(buf);
    status = W_KILLED;
  } else if (WEXITSTATUS(wst) == 0 && w->inbuf.n > 0) {
    /* it exited as after a return, but what it sent is no reply */
    snprintf(buf, sizeof buf, "process %d: corrupt message", (int)w->pid);
    errmsg = strdup(buf);
    status = W_FAILED;
  } else if (WEXITSTATUS(wst) == 0) {
    status = W_DONE;                /* os.exit(0): nothing returned */
  } else {
    snprintf(buf, sizeof buf, "process %d exited with status %d", (int)w->pid,
             WEXITSTATUS(wst));
    errmsg = strdup(buf);
    status = W_FAILED;
  }
  conc_mbuf_free(&w->inbuf);
  conc_worker_finish(w, status, result, errmsg);
}

/* ------------------------------------------------------------ watching */

/* One thread at a time watches a child (w->busy): it drains the result
** pipe as data comes and reaps the child once it ended. Whoever waits
** takes that role; the others wait for the end on w->waiters, and take
** over if the watcher gives up (a timeout, a stop). A child nobody has a
** handle to any more is watched by the reaper thread, so it leaves no
** zombie; the common case (spawn, then join) has no extra thread, which
** keeps fork cheap (a multithreaded parent pays for TLB shootdowns). */

/* 1: taken; 0: someone else watches; -1: the child ended already. */
static int role_take(worker *w) {
  int r;
  pthread_mutex_lock(&w->mu);
  if (conc_worker_status(w) != W_RUNNING) r = -1;
  else if (w->busy) {
    w->contended = 1;
    r = 0;
  } else {
    w->busy = 1;
    r = 1;
  }
  pthread_mutex_unlock(&w->mu);
  return r;
}

static int reaper_watch(worker *w);

/* Gives the role up. If some thread found it taken meanwhile, the waiters
** are told, so that one of them takes it (waking them after every quick
** look would have two selects on one child wake each other forever). A
** running child that no handle refers to any more goes to the reaper. */
static void role_give(worker *w) {
  int orphan;
  pthread_mutex_lock(&w->mu);
  orphan = atomic_load(&w->handles) == 0 &&
           conc_worker_status(w) == W_RUNNING && w->owner == conc_getpid();
  pthread_mutex_unlock(&w->mu);
  if (orphan && reaper_watch(w) == 0) return;  /* the reaper has the role */
  pthread_mutex_lock(&w->mu);
  w->busy = 0;
  if (w->contended) {
    w->contended = 0;
    conc_selq_nudge_all(&w->waiters);
  }
  pthread_mutex_unlock(&w->mu);
}

/* With the role: drains the pipe; if the child ended, reaps it and
** finishes its record. 1 if it ended. Never blocks. */
static int proc_step(worker *w) {
  int wst = 0;
  pid_t r;
  if (w->pid <= 0) {           /* the spawn failed before there was a child */
    pthread_mutex_lock(&w->mu);
    w->reaped = 1;
    pthread_mutex_unlock(&w->mu);
    conc_worker_finish(w, W_FAILED, NULL, strdup("process: it never started"));
    return 1;
  }
  if (w->rfd >= 0 && drain(w)) {       /* end of file: all it will send */
    conc_fd_close(w->rfd);
    w->rfd = -1;
  }
  pthread_mutex_lock(&w->mu);
  do r = waitpid(w->pid, &wst, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == w->pid || (r < 0 && errno == ECHILD)) {
    w->reaped = 1;
    if (r < 0) wst = 0;                /* reaped by someone else */
  }
  pthread_mutex_unlock(&w->mu);
  if (!w->reaped) return 0;
  conc_lifeline_ended(w->pid);
  if (w->rfd >= 0) {
    drain(w);
    conc_fd_close(w->rfd);
    w->rfd = -1;
  }
  conc_fd_close(w->pidfd);
  w->pidfd = -1;
  conclude(w, wst);
  return 1;
}

/* Waits for the child of w to end, on parker p; cs (may be NULL) can
** stop the wait. 1 ended, 0 deadline, -1 stop (*why). */
int conc_process_wait(parker *p, cstate *cs, worker *w, const deadline *d,
                 const char **why) {
  for (;;) {
    int r = role_take(w);
    if (r < 0) return 1;
    if (r == 0) {                      /* watched by another: wait */
      r = conc_worker_wait_end(p, cs, w, d, why, 1);
      if (r == 2) continue;            /* the watcher gave up: take over */
      return r;
    }
    for (;;) {                         /* watch it ourselves */
      struct pollfd pf[3];
      int k = 0;
      uint32_t seen = conc_park_seq(p);
      if (proc_step(w)) {
        role_give(w);
        return 1;
      }
      if (cs && (*why = conc_cs_stopreason(cs)) != NULL) {
        role_give(w);
        return -1;
      }
      if (conc_deadline_passed(d)) {
        role_give(w);
        return 0;
      }
      if (w->rfd >= 0) {
        pf[k].fd = w->rfd;
        pf[k++].events = POLLIN;
      }
      pf[k].fd = w->pidfd;
      pf[k++].events = POLLIN;
      conc_park_poll(p, seen, pf, k, d);
    }
  }
}

/* Checks without blocking whether the child ended (if nobody watches,
** and it is this process's child). */
int conc_process_poll(worker *w) {
  if (w->owner == conc_getpid() && role_take(w) == 1) {
    proc_step(w);
    role_give(w);
  }
  return conc_worker_status(w) != W_RUNNING;
}

/* select: steps the child (its fds woke the select); a node already
** enlisted is claimed by the end of the child, if that came. */
int conc_proc_sel_try(cobj *o, selnode *n) {
  worker *w = (worker *)o;
  int linked;
  conc_process_poll(w);
  pthread_mutex_lock(&w->mu);
  linked = n->linked;
  pthread_mutex_unlock(&w->mu);
  if (linked) return atomic_load(&n->sw->won) != 0;
  return conc_worker_sel_try(o, n);
}

/* select polls the child's pipe and pidfd, unless another thread
** watches it (it will finish the record, which wakes the select). */
int conc_proc_sel_fds(cobj *o, int fds[2]) {
  worker *w = (worker *)o;
  int k = 0;
  pthread_mutex_lock(&w->mu);
  if (!w->busy && conc_worker_status(w) == W_RUNNING) {
    if (w->rfd >= 0) fds[k++] = w->rfd;
    if (w->pidfd >= 0) fds[k++] = w->pidfd;
  }
  pthread_mutex_unlock(&w->mu);
  return k;
}

/* ------------------------------------------------------------ reaper */

static void *reaper_main(void *arg) {
  struct pollfd *fds = NULL;
  int cap = 0;
  CONC_UNUSED(arg);
  for (;;) {
    int n, i;
    pthread_mutex_lock(&reap_mu);
    if (nwatched == 0) {             /* nothing left: stop, no fd behind */
      reap_running = 0;
      conc_fd_close(reap_efd);
      reap_efd = -1;
      pthread_mutex_unlock(&reap_mu);
      break;
    }
    if (cap < 2 * nwatched + 1) {
      cap = 2 * nwatched + 1;
      free(fds);
      fds = malloc(sizeof *fds * (size_t)cap);
      if (fds == NULL) abort();
    }
    fds[0].fd = reap_efd;
    fds[0].events = POLLIN;
    for (i = 0; i < nwatched; i++) {
      fds[1 + 2 * i].fd = watched[i]->pidfd;
      fds[1 + 2 * i].events = POLLIN;
      fds[2 + 2 * i].fd = watched[i]->rfd;
      fds[2 + 2 * i].events = POLLIN;
    }
    n = nwatched;
    pthread_mutex_unlock(&reap_mu);
    if (poll(fds, (nfds_t)(1 + 2 * n), -1) < 0 && errno != EINTR) continue;
    if (fds[0].revents) {
      uint64_t v;
      ssize_t r = read(reap_efd, &v, sizeof v);
      CONC_UNUSED(r);
    }
    for (i = 0; i < n; i++) {
      worker *w;
      if (fds[1 + 2 * i].revents == 0 && fds[2 + 2 * i].revents == 0) continue;
      pthread_mutex_lock(&reap_mu);
      w = watched[i];
      pthread_mutex_unlock(&reap_mu);
      if (proc_step(w)) {
        pthread_mutex_lock(&reap_mu);
        for (int k = 0; k < nwatched; k++)
          if (watched[k] == w) {
            watched[k] = watched[--nwatched];
            break;
          }
        pthread_mutex_unlock(&reap_mu);
        role_give(w);
        conc_obj_release(&w->obj);
        break;                       /* the list changed: poll again */
      }
    }
  }
  free(fds);
  return NULL;
}

int conc_process_reaper_running(void) {
  int r;
  pthread_mutex_lock(&reap_mu);
  r = reap_running;
  pthread_mutex_unlock(&reap_mu);
  return r;
}

/* Hands a child (whose role the caller holds) to the reaper, which keeps
** a reference and the role until the child ended. */
static int reaper_watch(worker *w) {
  int r = 0;
  pthread_mutex_lock(&reap_mu);
  if (reap_efd < 0) reap_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (reap_efd >= 0 && nwatched == capwatched) {
    int cap = capwatched ? capwatched * 2 : 16;
    worker **nw = realloc(watched, sizeof *watched * (size_t)cap);
    if (nw != NULL) {               /* else the list stays as it was */
      watched = nw;
      capwatched = cap;
    }
  }
  if (reap_efd < 0 || nwatched == capwatched) {
    pthread_mutex_unlock(&reap_mu);
    return ENOMEM;
  }
  conc_obj_retain(&w->obj);
  watched[nwatched++] = w;
  if (!reap_running) {
    pthread_t tid;
    pthread_attr_t attr;
    sigset_t all, old;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256u << 10);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);   /* the reaper takes none */
    r = pthread_create(&tid, &attr, reaper_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (r == 0) reap_running = 1;
    else {
      nwatched--;
      conc_obj_release(&w->obj);
    }
  } else {
    uint64_t one = 1;
    ssize_t wr = write(reap_efd, &one, sizeof one);
    CONC_UNUSED(wr);
  }
  pthread_mutex_unlock(&reap_mu);
  return r;
}

/* The last Lua handle of a process went away: a child still running is
** handed to the reaper (unless a thread watches it: it will reap it). */
void conc_process_handle_gone(cobj *o) {
  worker *w = (worker *)o;
  if (atomic_fetch_sub(&w->handles, 1) != 1) return;
  /* a forked child collecting its copy of a handle: the child is not its
  ** own, and w->mu may have been held by a thread it does not have */
  if (w->owner != conc_getpid()) return;
  if (role_take(w) != 1) return;
  if (proc_step(w) || reaper_watch(w) != 0) role_give(w);
}

/* ------------------------------------------------------------ fork */

/* In a forked child the reaper and the parent's children are not its. */
static void reap_atfork_child(void) {
  for (int i = 0; i < nwatched; i++) {
    conc_fd_close(watched[i]->pidfd);
    conc_fd_close(watched[i]->rfd);
  }
  nwatched = 0;
  capwatched = 0;
  watched = NULL;               /* the parent's array: left alone */
  reap_running = 0;
  if (reap_efd >= 0) {
    conc_fd_close(reap_efd);
    reap_efd = -1;
  }
}

void conc_reap_init(void) {
  conc_fork_register(&reap_link, &reap_mu);
  conc_fork_onchild(reap_atfork_child);
}
