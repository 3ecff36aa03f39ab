/*
** test_owner.c
** Owner ids (owner.c) and the lock in shared memory built on them
** (slock, sync.c), through the internal API: an id is alive exactly as
** long as its thread, a killed process's ids are dead while it is still
** a zombie, ids never come back, and a lock (a queue's own, too) whose
** holder was killed inside it is taken over, by one waiter, which is told
** so. Each case runs in a process of its own (runner.h). Children are
** waited for with WNOWAIT: dead, but left unreaped, so every check below
** is made while the dead one is a zombie.
*/

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>

#include "init.h"
#include "chunk.h"
#include "runner.h"

/* Waits until the child has ended, leaving it a zombie. */
static void wait_dead(pid_t pid) {
  siginfo_t si;
  while (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) != 0)
    CHECK(errno == EINTR);
}

static void reap(pid_t pid) {
  int st;
  while (waitpid(pid, &st, 0) != pid) CHECK(errno == EINTR);
}

static void *thread_id(void *arg) {
  *(uint64_t *)arg = conc_owner_self();
  return NULL;
}

static uint64_t id_of_a_thread(void) {
  pthread_t t;
  uint64_t id = 0;
  CHECK(pthread_create(&t, NULL, thread_id, &id) == 0);
  CHECK(pthread_join(t, NULL) == 0);
  return id;
}

static int t_ids_follow_threads(void) {
  uint64_t me, a, b;
  CHECK(conc_owner_init() == 0);
  me = conc_owner_self();
  CHECK(me != 0 && me != OWNER_ANON);
  CHECK(conc_owner_self() == me);
  CHECK(!conc_owner_dead(me));
  a = id_of_a_thread();               /* that thread has ended */
  CHECK(a != 0 && a != me);
  CHECK(conc_owner_dead(a));
  CHECK(conc_owner_dead(a));               /* and stays dead */
  b = id_of_a_thread();               /* may reuse a's entry, not its id */
  CHECK(b != a && b != me);
  CHECK(conc_owner_dead(b));
  CHECK(conc_owner_dead(a));
  CHECK(!conc_owner_dead(me));
  CHECK(!conc_owner_dead(0));              /* nobody: never taken for dead */
  CHECK(!conc_owner_dead(OWNER_ANON));
  return 0;
}

/* A child's id is alive while it runs, dead once it is killed, before
** anyone reaps it; a child of the child too. */
static int t_killed_process_is_dead_unreaped(void) {
  int fds[2];
  uint64_t ids[2];
  pid_t pid;
  CHECK(conc_owner_init() == 0);
  CHECK(pipe(fds) == 0);
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    uint64_t v[2];
    v[0] = conc_owner_self();
    v[1] = id_of_a_thread() == v[0];  /* 1 would be wrong */
    if (write(fds[1], v, sizeof v) != sizeof v) _exit(1);
    for (;;) pause();
  }
  CHECK(read(fds[0], ids, sizeof ids) == sizeof ids);
  CHECK(ids[1] == 0);
  CHECK(ids[0] != conc_owner_self());      /* the child has ids of its own */
  CHECK(!conc_owner_dead(ids[0]));
  CHECK(kill(pid, SIGKILL) == 0);
  wait_dead(pid);
  CHECK(conc_owner_dead(ids[0]));          /* a zombie is dead */
  reap(pid);
  CHECK(conc_owner_dead(ids[0]));
  CHECK(!conc_owner_dead(conc_owner_self()));
  close(fds[0]);
  close(fds[1]);
  return 0;
}

/* Children killed holding a lock in shared memory: the next conc_slock_lock
** takes it over and says so; conc_slock_owner_dead frees one. */
static int t_lock_of_killed_holder(void) {
  slock *s;
  CHECK(conc_owner_init() == 0);
  s = conc_shm_alloc(4096);
  CHECK(s != NULL);
  for (int round = 0; round < 2; round++) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
      conc_slock_lock(s);
      raise(SIGKILL);                 /* dies holding it */
      _exit(1);
    }
    wait_dead(pid);
    CHECK(atomic_load(&s->word) != 0);
    if (round == 0) {
      double t0 = runner_now();
      CHECK_INT(conc_slock_lock(s), 1);    /* taken over: repair what it guards */
      CHECK(runner_now() - t0 < 5);
      CHECK(!conc_slock_try(s));
      conc_slock_unlock(s);
      CHECK_INT(conc_slock_lock(s), 0);    /* an ordinary lock again */
      conc_slock_unlock(s);
    } else {
      CHECK_INT(conc_slock_owner_dead(s), 1);
      CHECK(atomic_load(&s->word) == 0);
      CHECK(conc_slock_try(s));
      CHECK_INT(conc_slock_owner_dead(s), 0);   /* a live owner: kept */
      conc_slock_unlock(s);
    }
    reap(pid);
  }
  conc_shm_free(s, 4096);
  return 0;
}

/* Many threads contend for a lock while children holding it are killed:
** each takeover goes to exactly one waiter, the others keep waiting, and
** the lock still excludes. */
static slock *cs_lock;
static _Atomic int inside, overlap, takeovers, stop;

static void *contend(void *arg) {
  CONC_UNUSED(arg);
  while (!atomic_load(&stop)) {
    if (conc_slock_lock(cs_lock)) atomic_fetch_add(&takeovers, 1);
    if (atomic_fetch_add(&inside, 1) != 0) atomic_store(&overlap, 1);
    atomic_fetch_sub(&inside, 1);
    conc_slock_unlock(cs_lock);
  }
  return NULL;
}

static int t_takeover_goes_to_one_waiter(void) {
  pthread_t ts[4];
  CHECK(conc_owner_init() == 0);
  cs_lock = conc_shm_alloc(4096);
  CHECK(cs_lock != NULL);
  for (int i = 0; i < 4; i++)
    CHECK(pthread_create(&ts[i], NULL, contend, NULL) == 0);
  for (int k = 0; k < 5; k++) {
    int fds[2];
    char c;
    pid_t pid;
    CHECK(pipe(fds) == 0);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
      conc_slock_lock(cs_lock);
      if (write(fds[1], "x", 1) != 1) _exit(1);
      for (;;) pause();               /* killed holding it */
    }
    CHECK(read(fds[0], &c, 1) == 1);
    CHECK(kill(pid, SIGKILL) == 0);
    wait_dead(pid);
    while (atomic_load(&takeovers) < k + 1) runner_sleep(0.01);
    reap(pid);
    close(fds[0]);
    close(fds[1]);
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < 4; i++) CHECK(pthread_join(ts[i], NULL) == 0);
  CHECK_INT(atomic_load(&takeovers), 5);
  CHECK_INT(atomic_load(&overlap), 0);
  conc_shm_free(cs_lock, 4096);
  return 0;
}

/* ------------------------------------------------------------ queue */

/* A process killed inside a queue's own lock (the slock that opens the
** queue's shared header) blocks nobody: the others take the lock over
** and the queue goes on, its count right. */
static int t_queue_lock_holder_killed(void) {
  lua_State *L = luaL_newstate();
  cobj *o;
  slock *qlock;
  pid_t pid;
  CHECK(L != NULL);
  luaL_openlibs(L);
  conclua_open(L);
  run(L, "q = conc.queue(4) q:send('a') q:send('b')");
  lua_getglobal(L, "q");
  o = conc_obj_test(L, conc_cs_of(L), -1);
  CHECK(o != NULL && o->kind == K_QUEUE);
  qlock = ((shmobj *)o)->shm;         /* the header starts with its lock */
  lua_pop(L, 1);
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    conc_slock_lock(qlock);
    raise(SIGKILL);
    _exit(1);
  }
  wait_dead(pid);
  run(L,
      "local t0 = conc.now()\n"
      "assert(q:recv(5) == 'a')\n"
      "assert(q:send('c', 5) and q:send('d', 5) and q:send('e', 5))\n"
      "assert(q:len() == 4, q:len())\n"
      "assert(q:send('f', 0) == false)\n"
      "for _, w in ipairs({'b', 'c', 'd', 'e'}) do assert(q:recv(5) == w) end\n"
      "assert(select(2, q:recv(0)) == 'timeout')\n"
      "assert(conc.now() - t0 < 5)\n");
  reap(pid);
  lua_close(L);
  return 0;
}

static const tcase cases[] = {
    {"ids_follow_threads", t_ids_follow_threads, 20},
    {"killed_process_is_dead_unreaped", t_killed_process_is_dead_unreaped, 20},
    {"lock_of_killed_holder", t_lock_of_killed_holder, 20},
    {"takeover_goes_to_one_waiter", t_takeover_goes_to_one_waiter, 60},
    {"queue_lock_holder_killed", t_queue_lock_holder_killed, 30},
    {NULL, NULL, 0}};

int main(int argc, char **argv) {
  return run_cases(cases, argc, argv);
}
