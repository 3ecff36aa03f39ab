/*
** fdio.c
** File descriptors the runtime makes: always O_CLOEXEC (set at creation:
** setting it later races with a fork in another thread), reads and writes
** that retry on EINTR and finish short counts, and writes that give EPIPE
** instead of SIGPIPE, whatever the process does with that signal: the
** conclua command ignores it, but a host program or lua5.4 (conc.so) may
** not, and a runtime inside them must not kill them.
*/

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "os.h"

int conc_fd_pipe(int fds[2]) {
  return pipe2(fds, O_CLOEXEC);
}

int conc_fd_socketpair(int fds[2]) {
  return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds);
}

/* write() to a pipe or file with SIGPIPE blocked on this thread; a
** SIGPIPE it raised is taken back before unblocking. If one was pending
** already, SIGPIPE is blocked (pending ones are) and this write's merges
** with it: nothing to do. */
static ssize_t write_nosigpipe(int fd, const void *p, size_t n) {
  sigset_t pipeset, old, pending;
  ssize_t w;
  int e;
  sigemptyset(&pipeset);
  sigaddset(&pipeset, SIGPIPE);
  if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE))
    return write(fd, p, n);
  pthread_sigmask(SIG_BLOCK, &pipeset, &old);
  w = write(fd, p, n);
  e = errno;
  /* not only on EPIPE: a write cut short by the reader leaving returns
  ** the count written and raises SIGPIPE all the same */
  if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE)) {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipeset, NULL, &zero) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  errno = e;
  return w;
}

/* Writes all n bytes. On a socket, send() with MSG_NOSIGNAL so a closed
** peer is EPIPE, not a signal; on anything else write_nosigpipe(). */
int conc_fd_write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  int sock = 1;
  while (n > 0) {
    ssize_t w;
    if (sock) {
      w = send(fd, c, n, MSG_NOSIGNAL);
      if (w < 0 && errno == ENOTSOCK) {
        sock = 0;
        continue;
      }
    } else {
      w = write_nosigpipe(fd, c, n);
    }
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

ssize_t conc_fd_read_full(int fd, void *p, size_t n) {
  char *c = p;
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, c + got, n - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

/* The length is the writer's word: the buffer grows with what came (at
** most doubling it, or 64 KiB), so a length never backed by bytes costs
** no more than the bytes that did come. */
int conc_fd_read_alloc(int fd, size_t n, char **out) {
  size_t got = 0;
  char *p = NULL;
  *out = NULL;
  for (;;) {
    size_t step = got > 65536 ? got : 65536, cap;
    char *np;
    ssize_t r;
    cap = n - got < step ? n : got + step;
    np = realloc(p, cap ? cap : 1);
    if (np == NULL) break;
    p = np;
    r = conc_fd_read_full(fd, p + got, cap - got);
    if (r < 0 || (size_t)r != cap - got) break;
    got = cap;
    if (got == n) {
      *out = p;
      return 0;
    }
  }
  free(p);
  return -1;
}

int conc_fd_set_nonblock(int fd, int on) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -1;
  fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  return fcntl(fd, F_SETFL, fl);
}

void conc_fd_close(int fd) {
  int saved = errno;
  if (fd >= 0) close(fd);
  errno = saved;
}

/* Counts the entries of /proc/self/fd, minus the one opendir uses. */
int conc_fd_count(void) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;
  if (d == NULL) return -1;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1;
}
