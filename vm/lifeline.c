/*
** lifeline.c
** No child outlives its parent: the lifeline pipe.
**
** DESIGN. A process that spawns children makes one pipe, once. It keeps
** the write end, and it alone holds it; each child hangs on a read end.
** However the parent ends (exit, os.exit from any thread, an uncaught
** signal, SIGKILL), the kernel closes that write end, and every child's
** read end sees end of file. A child hears of it without a thread and
** without a poll: its read end is set O_ASYNC with F_SETSIG = SIGKILL
** and itself as owner (F_SETOWN), so the kernel kills it the moment the
** last write end goes. A child's own children hang on its lifeline in
** turn, so a whole tree goes, leaves last. What makes it hold:
** - Only the parent holds the write end. Every process forked from it
**   (a spawn_process child, popen's, a host's own fork) closes its copy
**   in the fork's child handler, before any other code runs there; a
**   "spawn" child never has it (close-on-exec). The pipe is made under a
**   lock that fork takes, so no fork sees it half made. Forks stop once
**   the exit handlers are done (process.c): exit then unregisters the
**   fork handlers.
** - Owner and signal belong to an open file description, and fork shares
**   descriptions: set on one inherited by all, only the last child to
**   set itself as owner would be told. So each living child arms a read
**   description that no other living child arms. The parent keeps one,
**   already set to O_ASYNC and SIGKILL with no owner (which signals no
**   one), and lends it to one child at a time: a spawn and a join in
**   turn cost the parent no system call. While it is lent, the parent
**   opens more through its /proc/self/fd entry (each open makes a new
**   description of the same pipe). Copies that other forks inherit do no
**   harm: only its child arms one, and readers do not keep a pipe's
**   write end open.
** - A parent that ended before the child armed: the child reads the pipe
**   once after arming (nobody ever writes to it); end of file means the
**   write end is gone already, and the child kills itself.
** PR_SET_PDEATHSIG would be simpler but fires when the forking *thread*
** ends, and children are forked from worker threads (and pooled OS
** threads that are reused or retired) that end long before the process.
** The cost is the child's: a close, an fcntl and a read, on the path of
** every spawn and join, since the parent waits for the child (a child
** that opened /proc itself would pay ten times that: its /proc entries
** are new; each system call there delays its answer). Without /proc
** mounted no description can be opened and children run unguarded.
*/

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "os.h"

static pthread_mutex_t ll_mu = PTHREAD_MUTEX_INITIALIZER;  /* guards: */
static objlink ll_link;
static int down_w = -1;     /* this process's write end */
static int kept = -1;       /* a read end for children, and the one the
                               others are opened from (its /proc entry) */
static pid_t kept_by;       /* the child kept is lent to (0: free, -1:
                               being forked) */
static int made;            /* the pipe was made (in this process) */
static int up = -1;         /* armed: the one this process hangs on */

void conc_lifeline_init(void) {
  conc_fork_register(&ll_link, &ll_mu);
}

/* A new description of the pipe's read end, set to signal SIGKILL once
** a child sets itself as owner; -1 and errno. */
static int reopen(int from) {
  char path[32];
  int fd;
  snprintf(path, sizeof path, "/proc/self/fd/%d", from);
  do fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd >= 0 && (fcntl(fd, F_SETSIG, SIGKILL) != 0 ||
                  fcntl(fd, F_SETFL, O_NONBLOCK | O_ASYNC) != 0)) {
    int e = errno;
    conc_fd_close(fd);
    errno = e;
    fd = -1;
  }
  return fd;
}

/* The pipe and the kept read end, made on first use: 0, or -1 and
** errno (ENOENT, EACCES: no /proc; nothing is kept then). The parent
** keeps no other read end: the kept one is enough to open more. Call it
** with ll_mu held. */
static int make(void) {
  int p[2], e;
  if (made) return kept >= 0 ? 0 : (errno = ENOENT, -1);
  if (conc_fd_pipe(p) != 0) return -1;
  kept = reopen(p[0]);
  e = errno;
  conc_fd_close(p[0]);
  if (kept < 0) {
    conc_fd_close(p[1]);
    if (e == ENOENT || e == EACCES) made = 1;   /* for good */
    errno = e;
    return -1;
  }
  down_w = p[1];
  kept_by = 0;
  made = 1;
  return 0;
}

int conc_lifeline_make(void) {
  int r;
  pthread_mutex_lock(&ll_mu);
  r = make();
  pthread_mutex_unlock(&ll_mu);
  return r;
}

/* A read end for one child to arm. Each child arms one that no other
** living child has: a spawn and a join in turn use the same one, kept
** by the parent and free again when its child is reaped; while it is
** lent, a new one is opened (and closed once the child has it). */
int conc_lifeline_take(int *is_kept) {
  int fd, e = 0;
  pthread_mutex_lock(&ll_mu);
  if (make() != 0) {
    e = errno;
    fd = -1;
  } else if (kept_by == 0) {
    kept_by = -1;
    fd = kept;
  } else if ((fd = reopen(kept)) < 0) {
    e = errno;
  }
  *is_kept = fd >= 0 && fd == kept;
  pthread_mutex_unlock(&ll_mu);
  errno = e;
  return fd;
}

/* The child pid (-1: none was made) has fd now: the kept one is lent to
** it, another is closed here. */
void conc_lifeline_given(int fd, int is_kept, pid_t pid) {
  if (!is_kept) {
    if (fd >= 0) conc_fd_close(fd);
    return;
  }
  pthread_mutex_lock(&ll_mu);
  kept_by = pid > 0 ? pid : 0;
  pthread_mutex_unlock(&ll_mu);
}

void conc_lifeline_ended(pid_t pid) {
  pthread_mutex_lock(&ll_mu);
  if (kept_by == pid) kept_by = 0;
  pthread_mutex_unlock(&ll_mu);
}

/* Arms fd, a read end of the parent's lifeline (set to signal SIGKILL)
** that no other living process arms, for process 'self'. Two system
** calls: they are on the path of every spawn and join, as the child's
** own work. Async-signal-safe: it runs in the child of a fork. */
void conc_lifeline_arm(int fd, pid_t self) {
  ssize_t r;
  char c;
  if (fcntl(fd, F_SETOWN, self) != 0) {
    conc_fd_close(fd);
    return;
  }
  up = fd;
  do r = read(fd, &c, 1);
  while (r < 0 && errno == EINTR);
  if (r == 0) kill(self, SIGKILL);     /* the parent is gone already */
}

/* In the child of any fork: the parent's lifeline is not the child's,
** nor the one the parent hangs on. 'mine' (-1 if none: not a
** spawn_process child) is the read end made for this child. */
void conc_lifeline_atfork_child(int mine, pid_t self) {
  if (down_w >= 0) conc_fd_close(down_w);
  if (kept >= 0 && kept != mine) conc_fd_close(kept);
  if (up >= 0) conc_fd_close(up);
  down_w = kept = up = -1;
  kept_by = 0;
  made = 0;
  if (mine >= 0) conc_lifeline_arm(mine, self);
}
