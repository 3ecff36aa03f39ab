/*
** exit.c
** The end of a runtime: the wait for its workers, the Ctrl-C that stops
** them instead, the report of failures nobody joined, the daemons.
**
** DESIGN. At the end of the main chunk (or of the REPL's input, or in
** os.exit, or when a host state closes) the runtime waits for each
** running worker that is not a daemon, like Python does, then prints the
** failures that no join saw and stops the daemons: threads cancelled
** (given a moment to unwind), processes sent SIGTERM (then SIGKILL).
** The conclua command arms Ctrl-C during that wait. One Ctrl-C, or a
** main chunk that an uncaught Ctrl-C ended, stops the workers rather than
** waiting on: every running thread of the process is cancelled and every
** process sent SIGTERM, daemons too; a line on stderr names the ones the
** exit was waiting for. They get STOP_GRACE seconds to end (their __close
** handlers run); a process still there after it gets SIGKILL, and a
** thread still there (inside a C call that is not conclua's) is left to
** the process's exit; both are named on stderr. A second Ctrl-C cuts the
** grace short. The runtime is then marked stopped: later waits (the
** host state's close, the exit handler) do not wait again, and the
** command exits with status 130. Workers the Ctrl-C stopped are not
** reported as failures; processes the terminal's Ctrl-C killed first
** (it reaches the whole process group) count among the stopped.
*/

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers.h"

#define STOP_GRACE 1.0         /* seconds the stopped get before SIGKILL */

static int running_thread(worker *w) {
  return w->obj.kind == K_THREAD && w->owner == conc_getpid() &&
         conc_worker_status(w) == W_RUNNING;
}

/* The exit found the threads it waits for deadlocked: says so, and
** cancels every thread of the runtime (they end "cancelled"). */
static void deadlock_at_exit(rt *r, cstate *cs) {
  int n;
  worker **v = conc_rt_pick(r, running_thread, &n);
  char *m = atomic_exchange(&cs->deadmsg, NULL);
  atomic_store(&cs->deadlocked, 0);
  flockfile(stderr);
  fprintf(stderr, "conclua: at exit, %s: the threads are cancelled\n",
          m ? m : "deadlock");
  fflush(stderr);
  funlockfile(stderr);
  free(m);
  for (int i = 0; i < n; i++) {
    conc_thread_cancel(v[i]);
    conc_obj_release(&v[i]->obj);
  }
  free(v);
}

/* Waits for w until the deadline; cs (may be NULL) can interrupt it. 1
** ended, 0 deadline, -1 interrupted (or, for cs, a deadlock: told). */
static int wait_one(worker *w, cstate *cs, const deadline *d) {
  const char *why = NULL;
  parker own, *p = cs ? &cs->park : &own;
  /* the main state waiting for a thread for ever: a deadlock there is
  ** told and the threads stopped (deadlock_at_exit), not waited for */
  int stuck = cs && cs->ismain && d->forever && w->obj.kind == K_THREAD;
  int r;
  if (cs == NULL) conc_park_init(&own);
  if (stuck) {
    conc_cs_waiting_obj(cs, "join", &w->obj);
    conc_cs_stuck(cs, 1);
  }
  r = w->ops->wait(p, cs, w, d, &why);
  if (stuck) {
    conc_cs_stuck(cs, 0);
    conc_cs_waiting(cs, NULL);
  }
  if (cs == NULL) conc_park_destroy(&own);
  if (r < 0 && why == conc_why_deadlock) deadlock_at_exit(w->rt, cs);
  return r;
}

/* ------------------------------------------------------------ report */

/* "name: error" and its traceback, the error without the "thread 3
** (name): " a join would show before it. */
static void report_one(worker *w) {
  const char *e = w->errmsg ? w->errmsg : "failed";
  char tag[160];
  const char *p;
  snprintf(tag, sizeof tag, "(%s): ", w->name);
  p = strstr(e, tag);
  if (p && p - e < 32) e = p + strlen(tag);
  flockfile(stderr);
  fprintf(stderr, "%s: %s\n", w->name, e);
  fflush(stderr);
  funlockfile(stderr);
}

/* Prints the failures nobody joined, once each (not those of workers a
** Ctrl-C stopped: the stop said so already); returns how many of them
** were not daemons (what conclua_wait reports). */
int conc_rt_report_failures(rt *r) {
  int count = 0;
  for (;;) {
    worker *w, *found = NULL;
    int quiet = 0;
    pthread_mutex_lock(&r->mu);
    for (w = r->head; w; w = w->next) {
      pthread_mutex_lock(&w->mu);
      if (conc_worker_isfailure(w->status) && !w->joined && !w->reported) {
        w->reported = 1;
        quiet = w->stopped;
        found = w;
        conc_obj_retain(&w->obj);
      }
      pthread_mutex_unlock(&w->mu);
      if (found) break;
    }
    pthread_mutex_unlock(&r->mu);
    if (found == NULL) break;
    if (!quiet) {
      report_one(found);
      if (!found->daemon) count++;
    }
    conc_worker_unregister(found);
    conc_obj_release(&found->obj);
  }
  return count;
}

/* ------------------------------------------------------------ wait */

/* A running worker of this process that the exit waits for. */
static int awaited(worker *w) {
  return !w->daemon && (!w->owner || w->owner == conc_getpid()) &&
         conc_worker_status(w) == W_RUNNING;
}

/* Waits for the awaited workers of r but 'self' (may be NULL); 1 when cs
** (may be NULL) was interrupted first, 0 when none is left (or r was
** stopped: those left are not waited for). */
static int wait_awaited(rt *r, worker *self, cstate *cs) {
  for (;;) {
    worker *w, *found = NULL;
    deadline d;
    if (cs && conc_cs_stopreason(cs)) return 1;
    pthread_mutex_lock(&r->mu);
    for (w = r->stopped ? NULL : r->head; w; w = w->next) {
      if (w != self && awaited(w)) {
        found = w;
        conc_obj_retain(&w->obj);
        break;
      }
    }
    pthread_mutex_unlock(&r->mu);
    if (found == NULL) return 0;
    conc_deadline_in(&d, -1);
    wait_one(found, cs, &d);
    conc_obj_release(&found->obj);
  }
}

int conc_rt_waitall_cs(rt *r, worker *self, cstate *cs) {
  wait_awaited(r, self, cs);
  return conc_rt_report_failures(r);
}

int conc_rt_waitall(rt *r, worker *self) {
  return conc_rt_waitall_cs(r, self, NULL);
}

/* Appends 'thread 3 "w"' or 'process 412 "p"' to buf (size n, *used
** bytes so far, always terminated), after ", " unless first. */
static void describe(char *buf, size_t n, size_t *used, worker *w,
                     int first) {
  int k;
  if (*used + 1 >= n) return;
  k = snprintf(buf + *used, n - *used, "%s%s %lld \"%s\"", first ? "" : ", ",
               w->ops->name, (long long)w->ops->number(w), w->name);
  if (k > 0) *used += (size_t)k < n - *used ? (size_t)k : n - *used - 1;
}

/* How many workers the exit waits for, oldest first in buf (if any). */
int conc_rt_awaited(rt *r, char *buf, size_t n) {
  int count;
  size_t used = 0;
  worker **v = conc_rt_pick(r, awaited, &count);
  if (buf && n) buf[0] = '\0';
  for (int i = count - 1; i >= 0; i--) {
    if (buf && n) describe(buf, n, &used, v[i], i == count - 1);
    conc_obj_release(&v[i]->obj);
  }
  free(v);
  return count;
}

/* ------------------------------------------------------------ stop */

/* What a Ctrl-C stops: the running workers of this process, daemons
** too (the exit stops those anyway), and the processes that the Ctrl-C
** itself killed (no failure to report). */
static int stoppable(worker *w) {
  int yes;
  if (w->owner && w->owner != conc_getpid()) return 0;
  pthread_mutex_lock(&w->mu);
  yes = w->status == W_RUNNING ||
        (w->obj.kind == K_PROCESS && w->status == W_KILLED &&
         w->exitcode == -SIGINT && !w->joined && !w->reported);
  pthread_mutex_unlock(&w->mu);
  return yes;
}

/* Stops the workers of r (see DESIGN); cs, if any, is the interrupt
** target, armed by the caller: a second Ctrl-C ends the grace. Returns
** how many of the stopped were awaited (not daemons). */
static int rt_stop(rt *r, cstate *cs, const char *prog) {
  int n, listed = 0, cut = 0;
  worker **v;
  char names[1024];
  size_t used = 0;
  deadline d;
  pthread_mutex_lock(&r->mu);
  r->stopped = 1;
  pthread_mutex_unlock(&r->mu);
  v = conc_rt_pick(r, stoppable, &n);
  for (int i = n - 1; i >= 0; i--)              /* oldest first */
    if (!v[i]->daemon)
      describe(names, sizeof names, &used, v[i], listed++ == 0);
  if (listed) {
    fprintf(stderr, "%s: stopping %d worker%s: %s\n", prog, listed,
            listed == 1 ? "" : "s", names);
    fflush(stderr);
  }
  for (int i = n - 1; i >= 0; i--) {
    worker *w = v[i];
    pthread_mutex_lock(&w->mu);
    w->stopped = 1;
    pthread_mutex_unlock(&w->mu);
    w->ops->stop(w);
  }
  conc_deadline_in(&d, STOP_GRACE);
  for (int i = n - 1; i >= 0 && !cut; i--)
    if (wait_one(v[i], cs, &d) < 0) cut = 1;    /* a second Ctrl-C */
  for (int i = n - 1; i >= 0; i--) {
    worker *w = v[i];
    if (conc_worker_status(w) != W_RUNNING) continue;
    if (w->obj.kind == K_PROCESS) {
      conc_deadline_in(&d, STOP_GRACE);
      conc_process_signal(w, SIGKILL);
      wait_one(w, NULL, &d);
      if (!w->daemon && !cut)
        fprintf(stderr, "%s: process %d \"%s\" ignored SIGTERM: killed\n",
                prog, (int)w->pid, w->name);
    } else if (!w->daemon) {
      fprintf(stderr, "%s: thread %lld \"%s\" did not stop (inside a C "
              "call?): exiting without it\n", prog, (long long)w->id,
              w->name);
    }
  }
  fflush(stderr);
  for (int i = 0; i < n; i++) conc_obj_release(&v[i]->obj);
  free(v);
  return listed;
}

/* The wait at exit: see DESIGN. 'cs' is the interrupt target (the
** conclua command's state, on this thread) or NULL: nothing interrupts
** the wait then. 'interrupted': an uncaught Ctrl-C ended the main chunk.
** Returns 2 when the run is to end by Ctrl-C (exit status 130): the
** wait was interrupted, or the chunk was and workers were stopped; 1
** when an earlier call decided so; else 0. */
void (*conc_rt_exit_hook)(rt *r);

int conc_rt_exit_wait(rt *r, cstate *cs, int interrupted, const char *prog) {
  int stop = 0, done, was;
  if (cs) {
    conc_interrupt_target(cs);
    if (conc_interrupt_take(cs)) stop = 1;      /* came before the arming */
    conc_interrupt_install(1);
  }
  if (conc_rt_exit_hook && !stop && !interrupted)
    conc_rt_exit_hook(r); /* pools */
  if (!stop && !interrupted) stop = wait_awaited(r, NULL, cs);
  pthread_mutex_lock(&r->mu);
  done = r->stopped;                            /* by an earlier call */
  pthread_mutex_unlock(&r->mu);
  if ((stop || interrupted) && !done) {
    if (cs) conc_interrupt_rearm();             /* for a second one */
    if (rt_stop(r, cs, prog) > 0) stop = 1;
  }
  if (cs) {
    conc_interrupt_install(0);
    conc_interrupt_take(cs);
  }
  conc_rt_report_failures(r);
  pthread_mutex_lock(&r->mu);
  was = r->sigint_exit;
  if (stop) r->sigint_exit = 1;
  pthread_mutex_unlock(&r->mu);
  return was ? 1 : stop ? 2 : 0;
}

/* ------------------------------------------------------------ daemons */

static int own_thread(worker *w) {
  return w->obj.kind == K_THREAD && w->owner == conc_getpid();
}

/* After the wait at exit: cancel daemon threads (and give them a moment
** to unwind, unless a stop gave them theirs already), signal daemon
** processes. */
void conc_rt_shutdown(rt *r) {
  int n, stopped;
  worker **v = conc_rt_pick(r, own_thread, &n);
  deadline d;
  pthread_mutex_lock(&r->mu);
  stopped = r->stopped;
  pthread_mutex_unlock(&r->mu);
  for (int i = 0; i < n; i++) conc_thread_cancel(v[i]);
  conc_deadline_in(&d, stopped ? 0 : 1.0);
  for (int i = 0; i < n; i++) {
    wait_one(v[i], NULL, &d);
    conc_obj_release(&v[i]->obj);
  }
  free(v);
  conc_process_stop_daemons(r);
}

/* At exit: runtimes whose host state was never closed (os.exit, a host
** that exits without lua_close) still wait for their workers. Not when a
** worker thread itself calls exit: others may be waiting for it (a join),
** so waiting for them could wait forever; daemons are still stopped.
** In the conclua command a Ctrl-C during that wait stops the workers,
** and the process then ends with status 130 (exit.c). */
void conc_rt_exit_all(void) {
  int from_worker = conc_thread_current_worker() != NULL;
  for (;;) {
    rt *found = conc_rt_take_unexited();
    if (found == NULL) return;
    if (from_worker) {
      conc_process_stop_daemons(found);
    } else {
      int ctrlc = conc_rt_exit_wait(found, conc_interrupt_for(found), 0,
                               "conclua");
      conc_rt_shutdown(found);
      if (ctrlc == 2) {
        fflush(NULL);
        conc_trace_exit();
        _exit(128 + SIGINT);
      }
    }
    conc_rt_release(found);
  }
}
