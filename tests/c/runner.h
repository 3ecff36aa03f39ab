/*
** runner.h
** A small test runner for the C tests (libuv's habit): each case runs in
** a process of its own, forked from the runner, with a time limit, its
** stdout and stderr kept in a temporary file. The runner prints
** "ok - name" or "not ok - name: why" (and, on failure, the case's
** output as "# " lines), then "# N passed, N failed", and exits 1 if any
** case failed.
**
**   static int t_something(void) { CHECK(1 + 1 == 2); return 0; }
**   static const tcase cases[] = {{"something", t_something, 10}, {0}};
**   int main(int argc, char **argv) { return run_cases(cases, argc, argv); }
**
** A case passes when it returns 0 and its process then exits cleanly
** (exit(), so sanitizers' exit checks run: a leak fails the case). CHECK
** and FAIL end the case at once with a reason. Arguments select cases by
** name; CONCLUA_ONLY selects those whose name contains it.
*/

#ifndef conclua_test_runner_h
#define conclua_test_runner_h

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct tcase {
  const char *name;
  int (*fn)(void);
  double timeout;        /* seconds, before any sanitizer factor */
} tcase;

static int runner_why_fd = -1;  /* where a failing case writes why */

/* Ends the running case with a reason (printed after "not ok - name: "). */
static void test_fail(const char *file, int line, const char *fmt, ...) {
  char buf[1024];
  int n = snprintf(buf, sizeof buf, "%s:%d: ", file, line);
  va_list ap;
  va_start(ap, fmt);
  if (n >= 0 && n < (int)sizeof buf)
    vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
  va_end(ap);
  if (runner_why_fd >= 0) {
    ssize_t w = write(runner_why_fd, buf, strlen(buf));
    (void)w;
  }
  fflush(stdout);
  fflush(stderr);
  _exit(1);
}

#define FAIL(...) test_fail(__FILE__, __LINE__, __VA_ARGS__)
#define CHECK(c) \
  do { \
    if (!(c)) FAIL("check failed: %s", #c); \
  } while (0)
#define CHECK_INT(got, want) \
  do { \
    long long g_ = (long long)(got), w_ = (long long)(want); \
    if (g_ != w_) FAIL("%s: expected %lld, got %lld", #got, w_, g_); \
  } while (0)

static double runner_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void runner_sleep(double s) {
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Prints a file's lines as "# " comments. */
static void runner_dump(FILE *f) {
  char line[1024];
  int bol = 1;
  rewind(f);
  while (fgets(line, sizeof line, f)) {
    if (bol) fputs("# ", stdout);
    fputs(line, stdout);
    bol = strchr(line, '\n') != NULL;
  }
  if (!bol) putchar('\n');
}

/* Runs one case in a child; 1 passed, 0 failed. */
static int run_case(const tcase *c, double factor) {
  int why[2], status = 0, done = 0;
  char reason[1100] = "";
  FILE *out = tmpfile();
  double limit = c->timeout * factor, t0 = runner_now();
  pid_t pid;
  ssize_t n;
  fflush(stdout);
  fflush(stderr);
  if (out == NULL || pipe(why) != 0) {
    printf("not ok - %s: cannot set up: %s\n", c->name, strerror(errno));
    return 0;
  }
  pid = fork();
  if (pid < 0) {
    printf("not ok - %s: fork: %s\n", c->name, strerror(errno));
    return 0;
  }
  if (pid == 0) {
    close(why[0]);
    runner_why_fd = why[1];
    dup2(fileno(out), 1);
    dup2(fileno(out), 2);
    setpgid(0, 0);                   /* its children die with it */
    if (c->fn() != 0) FAIL("the case returned nonzero");
    fflush(NULL);
    exit(0);
  }
  close(why[1]);
  while (!done) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      done = 1;
    } else if (r < 0 && errno != EINTR) {
      break;
    } else if (runner_now() - t0 > limit) {
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      snprintf(reason, sizeof reason, "timed out after %.0f s", limit);
      break;
    } else {
      runner_sleep(0.005);
    }
  }
  kill(-pid, SIGKILL);                /* leftovers of the case, if any */
  if (reason[0] == '\0') {
    n = read(why[0], reason, sizeof reason - 1);
    reason[n > 0 ? n : 0] = '\0';
  }
  close(why[0]);
  if (done && reason[0] == '\0' &&
      !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    if (WIFSIGNALED(status))
      snprintf(reason, sizeof reason, "killed by signal %d (%s)",
               WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
      snprintf(reason, sizeof reason, "exited with status %d",
               WEXITSTATUS(status));
  }
  if (reason[0] == '\0') {
    printf("ok - %s\n", c->name);
  } else {
    printf("not ok - %s: %s\n", c->name, reason);
    runner_dump(out);
  }
  fclose(out);
  fflush(stdout);
  return reason[0] == '\0';
}

static int run_cases(const tcase *cases, int argc, char **argv) {
  const char *only = getenv("CONCLUA_ONLY");
  double factor = getenv("CONCLUA_SANITIZER") ? 5 : 1;
  int passed = 0, failed = 0;
  signal(SIGPIPE, SIG_DFL);           /* hosts do not ignore it */
  for (const tcase *c = cases; c->name; c++) {
    int wanted = argc <= 1;
    for (int i = 1; i < argc; i++)
      if (strcmp(argv[i], c->name) == 0) wanted = 1;
    if (!wanted || (only && !strstr(c->name, only))) continue;
    if (run_case(c, factor)) passed++;
    else failed++;
  }
  printf("# %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

#endif
