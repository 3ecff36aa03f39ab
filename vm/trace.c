/*
** trace.c
** CONCLUA_TRACE=file: a Chrome trace-event file of what the workers do.
**
** DESIGN. The file is one JSON object, {"traceEvents":[...]}, that is
** valid after every write: each batch of events goes at the current end of
** the list, followed by the list's closing "]}", which the next batch
** overwrites (pwrite at a known offset). A script that fails, is
** interrupted or calls os.exit, even a process killed between two writes,
** leaves a file that parses; only the events still in memory are lost.
** Every process of the tree writes into the same file: the offset, the
** lock that guards it (a robust mutex: a child killed while holding it
** does not stop the others), the clock's origin and the counter of flow
** ids live in one shared page, inherited by forked children and, for
** start = "spawn", passed to the exec'd child with the file's descriptor
** (CONCLUA_TRACE_FDS). Events are buffered per process under a leaf
** mutex (only the shared page's lock is taken inside it; it is no fork
** lock): a forked child starts with a lock and an empty buffer of its
** own (the parent's events are the parent's to write). The buffer is written when
** it fills and when the process ends (conc_trace_exit).
** When off (the variable is not set), conc_trace_on is 0 and every hook
** in the code is one test of it.
*/

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

int conc_trace_on;

#define MAGIC 0x636f6e6374726331ULL       /* "conctrc1" */
#define FLUSH_AT (32 * 1024)

/* What every process of the tree shares. */
typedef struct tshared {
  uint64_t magic;
  pthread_mutex_t mu;          /* robust, process-shared: guards pos */
  int64_t pos;                 /* where the next batch goes */
  double t0;                   /* conc_now() when the trace began */
  _Atomic uint64_t flows;      /* the last flow id handed out */
} tshared;

static tshared *sh;
static int tfd = -1, shfd = -1;
static pthread_mutex_t bmu = PTHREAD_MUTEX_INITIALIZER;
static char *buf;
static size_t blen, bcap;
static pid_t ended;            /* the process whose end was written */
static pthread_once_t once = PTHREAD_ONCE_INIT;

static const char trailer[] = "\n]}\n";

/* Writes the buffer at the shared end, with the trailer after it. With
** bmu held. */
static void flush_locked(void) {
  int64_t pos;
  size_t n = blen, off = 0;
  int e;
  if (blen == 0 || sh == NULL) return;
  memcpy(buf + blen, trailer, sizeof trailer - 1);  /* room is kept */
  e = pthread_mutex_lock(&sh->mu);
  if (e == EOWNERDEAD) pthread_mutex_consistent(&sh->mu);
  else if (e != 0) return;
  pos = sh->pos;
  while (off < n + sizeof trailer - 1) {
    ssize_t k = pwrite(tfd, buf + off, n + sizeof trailer - 1 - off,
                       (off_t)(pos + (int64_t)off));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    off += (size_t)k;
  }
  if (off >= n) sh->pos = pos + (int64_t)n;
  pthread_mutex_unlock(&sh->mu);
  blen = 0;
}

/* Appends one event (its text, without the comma) to the buffer. */
static void append(const char *ev, size_t n) {
  pthread_mutex_lock(&bmu);
  if (blen + n + 2 + sizeof trailer > bcap) {
    size_t ncap = bcap ? bcap : FLUSH_AT + 1024;
    char *nb;
    while (blen + n + 2 + sizeof trailer > ncap) ncap *= 2;
    nb = realloc(buf, ncap);
    if (nb == NULL) {                   /* the event is lost, not the file */
      pthread_mutex_unlock(&bmu);
      return;
    }
    buf = nb;
    bcap = ncap;
  }
  buf[blen++] = ',';
  buf[blen++] = '\n';
  memcpy(buf + blen, ev, n);
  blen += n;
  if (blen >= FLUSH_AT) flush_locked();
  pthread_mutex_unlock(&bmu);
}

/* ------------------------------------------------------------ text */

typedef struct tbuf {
  char p[1024];
  size_t n;
} tbuf;

static void put(tbuf *b, const char *fmt, ...) {
  va_list ap;
  int k;
  if (b->n >= sizeof b->p) return;
  va_start(ap, fmt);
  k = vsnprintf(b->p + b->n, sizeof b->p - b->n, fmt, ap);
  va_end(ap);
  if (k > 0) b->n += (size_t)k;
  if (b->n >= sizeof b->p) b->n = sizeof b->p - 1;
}

/* A JSON string, quoted; cut to leave room for the rest of the event. */
static void put_str(tbuf *b, const char *s) {
  size_t lim = sizeof b->p - 160;
  put(b, "\"");
  for (; s && *s && b->n < lim; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') put(b, "\\%c", c);
    else if (c == '\n') put(b, "\\n");
    else if (c == '\t') put(b, "\\t");
    else if (c < 0x20 || c == 0x7f) put(b, "\\u%04x", c);
    else b->p[b->n++] = (char)c;
  }
  /* a multibyte character cut in two would make the file invalid */
  if (s && *s) {
    while (b->n > 0 && ((unsigned char)b->p[b->n - 1] & 0xC0) == 0x80) b->n--;
    if (b->n > 0 && ((unsigned char)b->p[b->n - 1] & 0xC0) == 0xC0) b->n--;
    put(b, "...");
  }
  put(b, "\"");
}

static double ts_now(void) {
  return (conc_now() - sh->t0) * 1e6;
}

/* ------------------------------------------------------------ events */

void conc_trace_event(int ph, int64_t tid, const char *cat, const char *name,
                      const char *detail, uint64_t id) {
  tbuf b;
  if (!conc_trace_on || sh == NULL) return;
  b.n = 0;
  put(&b, "{\"ph\":\"%c\",\"pid\":%d,\"tid\":%lld,\"ts\":%.3f", ph,
      (int)conc_getpid(), (long long)tid, ts_now());
  if (ph == 'M') {              /* thread_name, or process_name for tid -1 */
    put(&b, ",\"name\":\"%s\",\"args\":{\"name\":",
        cat);
    put_str(&b, name);
    put(&b, "}}");
    append(b.p, b.n);
    return;
  }
  if (cat) {
    put(&b, ",\"cat\":");
    put_str(&b, cat);
  }
  if (name) {
    put(&b, ",\"name\":");
    put_str(&b, name);
  }
  if (ph == 'i') put(&b, ",\"s\":\"t\"");
  if (ph == 's' || ph == 'f') put(&b, ",\"id\":%llu", (unsigned long long)id);
  if (ph == 'f') put(&b, ",\"bp\":\"e\"");
  if (detail) {
    put(&b, ",\"args\":{\"detail\":");
    put_str(&b, detail);
    put(&b, "}");
  }
  put(&b, "}");
  append(b.p, b.n);
}

uint64_t conc_trace_flow(void) {
  if (sh == NULL) return 0;
  return atomic_fetch_add(&sh->flows, 1) + 1;
}

void conc_trace_thread(int64_t tid, const char *name) {
  conc_trace_event('M', tid, "thread_name", name, NULL, 0);
  if (tid != 0) conc_trace_event('B', tid, "run", name, NULL, 0);
}

void conc_trace_process(const char *name) {
  conc_trace_event('M', 0, "process_name", name, NULL, 0);
  conc_trace_event('M', 0, "thread_name", "main", NULL, 0);
  conc_trace_event('B', 0, "run", name, NULL, 0);
}

/* The process ends: its main track's run span closes and the buffer is
** written. Once per process; a no-op when off. */
void conc_trace_exit(void) {
  if (!conc_trace_on || sh == NULL || ended == conc_getpid()) return;
  ended = conc_getpid();
  conc_trace_event('E', 0, "run", NULL, NULL, 0);
  pthread_mutex_lock(&bmu);
  flush_locked();
  pthread_mutex_unlock(&bmu);
}

/* The trace's descriptors, for an exec'd child (start = "spawn"): 2 when
** on, with the file's and the shared page's in fds. */
int conc_trace_fds(int fds[2]) {
  if (!conc_trace_on || sh == NULL) return 0;
  fds[0] = tfd;
  fds[1] = shfd;
  return 2;
}

/* The buffer's lock is no fork lock: a child that forked while another
** thread held it starts with a lock and a buffer of its own, and leaves
** the parent's events to the parent. */
static void at_fork_child(void) {
  pthread_mutex_init(&bmu, NULL);
  buf = NULL;
  blen = bcap = 0;
  ended = 0;
}

static void at_exit(void) {
  conc_trace_exit();
}

/* A child exec'd by a traced parent: the parent's file and page. 1 if
** they are there (the variable names descriptors this process has). */
static int attach(const char *fds) {
  int a, b;
  struct stat st;
  tshared *p;
  if (sscanf(fds, "%d,%d", &a, &b) != 2) return 0;
  if (fstat(b, &st) != 0 || st.st_size != (off_t)sizeof *p) return 0;
  p = mmap(NULL, sizeof *p, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
  if (p == MAP_FAILED) return 0;
  if (p->magic != MAGIC || fstat(a, &st) != 0 || !S_ISREG(st.st_mode)) {
    munmap(p, sizeof *p);
    return 0;
  }
  fcntl(a, F_SETFD, FD_CLOEXEC);
  fcntl(b, F_SETFD, FD_CLOEXEC);
  sh = p;
  tfd = a;
  shfd = b;
  return 1;
}

/* The root of a traced tree: the file, made empty, and the page. */
static int create(const char *path) {
  pthread_mutexattr_t ma;
  char head[160], env[48];
  int n;
  tfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (tfd < 0) {
    fprintf(stderr, "conclua: CONCLUA_TRACE: cannot open %s: %s\n", path,
            strerror(errno));
    return 0;
  }
  shfd = memfd_create("conclua-trace", MFD_CLOEXEC);
  if (shfd < 0 || ftruncate(shfd, sizeof *sh) != 0 ||
      (sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED, shfd,
                 0)) == MAP_FAILED) {
    fprintf(stderr, "conclua: CONCLUA_TRACE: %s\n", strerror(errno));
    sh = NULL;
    if (shfd >= 0) close(shfd);
    close(tfd);
    tfd = shfd = -1;
    return 0;
  }
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&sh->mu, &ma);
  pthread_mutexattr_destroy(&ma);
  sh->t0 = conc_now();
  atomic_init(&sh->flows, 0);
  /* the first entry of the list is the root's own name: every later
  ** event is written with a comma in front */
  n = snprintf(head, sizeof head,
               "{\"traceEvents\":[\n{\"ph\":\"M\",\"pid\":%d,\"tid\":0,"
               "\"name\":\"process_sort_index\",\"args\":{\"sort_index\":0}}",
               (int)getpid());
  if (pwrite(tfd, head, (size_t)n, 0) != n ||
      pwrite(tfd, trailer, sizeof trailer - 1, n) !=
          (ssize_t)(sizeof trailer - 1)) {
    fprintf(stderr, "conclua: CONCLUA_TRACE: cannot write %s\n", path);
    munmap(sh, sizeof *sh);
    close(shfd);
    close(tfd);
    sh = NULL;
    tfd = shfd = -1;
    return 0;
  }
  sh->pos = n;
  sh->magic = MAGIC;
  snprintf(env, sizeof env, "%d,%d", tfd, shfd);
  setenv("CONCLUA_TRACE_FDS", env, 1);
  return 1;
}

static void init(void) {
  const char *path = getenv("CONCLUA_TRACE");
  const char *fds = getenv("CONCLUA_TRACE_FDS");
  int root;
  if (path == NULL || *path == '\0') return;
  /* a program run by a traced one (os.execute) inherits the variables,
  ** not the descriptors: it traces nothing rather than empty the file */
  if (fds) {
    if (!attach(fds)) return;
    root = 0;
  } else {
    if (!create(path)) return;
    root = 1;
  }
  conc_fork_onchild(at_fork_child);
  atexit(at_exit);
  conc_trace_on = 1;
  /* a child names its own track (conc_child_run) */
  if (root) conc_trace_process("conclua");
}

/* Reads CONCLUA_TRACE once, before the first runtime has a worker. */
void conc_trace_init(void) {
  pthread_once(&once, init);
}
