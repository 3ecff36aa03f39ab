/*
** test_orphans.c
** No child outlives its parent (docs/reference.md, "Processes"): a conclua script
** (orphans.lua, next to this file) spawns children of every kind and then
** ends one way or another, round after round. Each case is a child
** subreaper, so whatever the script leaves behind becomes its child: it
** reaps them and checks, pid by pid, that every process the script
** reported is gone within 2 seconds of the script's end, and that nothing
** at all is left (no orphan still running, no zombie: waitpid says there
** is no child).
**
** CONCLUA_ROUNDS multiplies the rounds (tests/stress.lua runs it so).
*/

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "conclua.h"
#include "runner.h"

#define MAXPIDS 4096
#define GRACE 2.0            /* gone within 2 seconds, as documented */

static char conclua[4096], script[4096];

/* build/tests/test_orphans: build/conclua; the script is in the sources. */
static void find_paths(void) {
  ssize_t n = readlink("/proc/self/exe", conclua, sizeof conclua - 32);
  char *slash;
  CHECK(n > 0);
  conclua[n] = '\0';
  slash = strrchr(conclua, '/');
  CHECK(slash != NULL);
  strcpy(slash, "/../conclua");
  CHECK(access(conclua, X_OK) == 0);
  snprintf(script, sizeof script, "%s", __FILE__);
  slash = strrchr(script, '/');
  strcpy(slash ? slash + 1 : script, "orphans.lua");
  CHECK(access(script, R_OK) == 0);
}

static int rounds(int n) {
  const char *env = getenv("CONCLUA_ROUNDS");
  int k = env ? atoi(env) : 1;
  return n * (k > 0 ? k : 1);
}

/* One run of the script: its pid, the read end of its stdout, and the
** pids it printed. */
typedef struct run {
  pid_t pid;
  int out;
  char buf[65536];
  size_t n;
  pid_t pids[MAXPIDS];
  int npids;
  int ready, total;            /* saw "ready [total]": pid lines due */
} run;

static void start(run *r, const char *what, const char *how) {
  int p[2];
  memset(r, 0, sizeof *r);
  CHECK(pipe2(p, O_CLOEXEC) == 0);
  r->pid = fork();
  CHECK(r->pid >= 0);
  if (r->pid == 0) {
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(p[1], 1);
    execl(conclua, conclua, script, what, how, (char *)NULL);
    _exit(127);
  }
  close(p[1]);
  r->out = p[0];
  fcntl(r->out, F_SETFL, O_NONBLOCK);
}

/* Takes in what the script printed so far; 0 at end of file. */
static int take_output(run *r) {
  for (;;) {
    ssize_t k = read(r->out, r->buf + r->n, sizeof r->buf - 1 - r->n);
    char *line, *nl;
    if (k == 0) return 0;
    if (k < 0) return errno == EINTR ? 1 : errno != EAGAIN ? 0 : 1;
    r->n += (size_t)k;
    r->buf[r->n] = '\0';
    line = r->buf;
    while ((nl = strchr(line, '\n')) != NULL) {
      int pid, total;
      *nl = '\0';
      if (sscanf(line, "pid %d", &pid) == 1) {
        if (r->npids < MAXPIDS) r->pids[r->npids++] = pid;
      } else if (strncmp(line, "ready", 5) == 0) {
        r->ready = 1;
        r->total = sscanf(line, "ready %d", &total) == 1 ? total : 0;
      }
      line = nl + 1;
    }
    r->n -= (size_t)(line - r->buf);
    memmove(r->buf, line, r->n);
  }
}

/* Reads until the script said ready and printed every pid it promised. */
static int is_ready(run *r) {
  return r->ready && r->npids >= r->total;
}

static void wait_ready(run *r, double limit) {
  double t0 = runner_now();
  while (!is_ready(r)) {
    struct pollfd pf = {r->out, POLLIN, 0};
    if (runner_now() - t0 > limit) FAIL("the script never got ready");
    poll(&pf, 1, 100);
    if (!take_output(r) && !is_ready(r))
      FAIL("the script ended before it was ready");
  }
}

/* Kills every child of this process and reaps them all: what a failing
** round leaves must not become pid 1's zombies. */
static void kill_children(void) {
  char path[64];
  int tries = 0;
  snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
  for (;;) {
    FILE *f = fopen(path, "r");
    int pid, any = 0;
    if (f) {
      while (fscanf(f, "%d", &pid) == 1) {
        kill(pid, SIGKILL);
        any = 1;
      }
      fclose(f);
    }
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    if (!any && waitpid(-1, NULL, WNOHANG) < 0) return;
    if (++tries > 2000) return;
    runner_sleep(0.005);
  }
}

/* A pid the script reported is still one of its processes: it exists
** and is in this case's process group (a pid reused since by some other
** program on the machine is not). */
static int alive_here(pid_t pid) {
  return kill(pid, 0) == 0 && getpgid(pid) == getpgrp();
}

/* ... and has not ended: no zombie. */
static int running_here(pid_t pid) {
  char path[64], st = 0;
  FILE *f;
  if (!alive_here(pid)) return 0;
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  if ((f = fopen(path, "r")) == NULL) return 0;
  if (fscanf(f, "%*d (%*[^)]) %c", &st) != 1) st = 0;
  fclose(f);
  return st != 0 && st != 'Z' && st != 'X';
}

static const char *describe(pid_t pid, char *buf, size_t n) {
  char path[64], stat[256] = "";
  FILE *f;
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  f = fopen(path, "r");
  if (f) {
    if (fgets(stat, sizeof stat, f) == NULL) stat[0] = '\0';
    fclose(f);
  }
  stat[strcspn(stat, "\n")] = '\0';
  {
    char wchan[64] = "", fdp[64];
    int fds = 0;
    DIR *d;
    struct dirent *e;
    snprintf(path, sizeof path, "/proc/%d/wchan", (int)pid);
    f = fopen(path, "r");
    if (f) {
      if (fgets(wchan, sizeof wchan, f) == NULL) wchan[0] = '\0';
      fclose(f);
    }
    snprintf(fdp, sizeof fdp, "/proc/%d/fd", (int)pid);
    if ((d = opendir(fdp)) != NULL) {
      while ((e = readdir(d)) != NULL) fds += e->d_name[0] != '.';
      closedir(d);
    }
    snprintf(buf, n, "%d [%.40s] wchan %s, %d fds", (int)pid, stat, wchan, fds);
  }
  return buf;
}

/* The script has ended: reaps its leftovers, which are this process's
** children now, until there is none; fails if any is still there GRACE
** seconds after the end. */
static void check_gone(run *r, double ended) {
  int reaped = 0;
  for (;;) {
    int st;
    pid_t p = waitpid(-1, &st, WNOHANG);
    if (p > 0) {
      reaped++;
      continue;
    }
    if (p < 0 && errno == ECHILD) break;     /* nothing left at all */
    if (runner_now() - ended > GRACE) {
      char msg[900] = "", one[128];
      int shown = 0;
      take_output(r);
      for (int i = 0; i < r->npids && shown < 5; i++)
        if (alive_here(r->pids[i])) {
          size_t len = strlen(msg);
          snprintf(msg + len, sizeof msg - len, " %s",
                   describe(r->pids[i], one, sizeof one));
          shown++;
        }
      kill_children();
      FAIL("children still there %.1f s after the parent ended (%d reported, "
           "%d reaped here):%s", GRACE, r->npids, reaped,
           shown ? msg : " (none of those it reported)");
    }
    runner_sleep(0.002);
  }
  for (int i = 0; i < r->npids; i++)
    if (alive_here(r->pids[i])) {
      char one[128];
      FAIL("reported child %s still exists", describe(r->pids[i], one, sizeof one));
    }
}

/* Waits for the script itself to end (reading its output meanwhile);
** returns its wait status and when it ended. */
static int wait_end(run *r, double limit, double *ended) {
  double t0 = runner_now();
  int st;
  for (;;) {
    pid_t p = waitpid(r->pid, &st, WNOHANG);
    if (p == r->pid) break;
    if (runner_now() - t0 > limit) {
      kill_children();
      FAIL("the script did not end in %.0f s", limit);
    }
    take_output(r);
    runner_sleep(0.002);
  }
  *ended = runner_now();
  take_output(r);
  return st;
}

/* How a round ends: a signal from here (sig), or the script's own end
** with exit status code. */
static void one_round(const char *what, const char *how, int sig, int code,
                      double delay) {
  run *r = malloc(sizeof *r);
  double ended;
  int st;
  CHECK(r != NULL);
  start(r, what, how);
  wait_ready(r, 60);
  if (strcmp(what, "TREE") == 0 && strcmp(how, "wait") == 0)
    for (int i = 0; i < r->npids; i++)   /* none died before its parent */
      if (!running_here(r->pids[i])) {
        char one[128];
        kill(r->pid, SIGKILL);
        kill_children();
        FAIL("child %s ended before its parent did", describe(r->pids[i], one, sizeof one));
      }
  if (sig) {
    if (delay > 0) runner_sleep(delay);
    take_output(r);
    kill(r->pid, sig);
  }
  st = wait_end(r, 60, &ended);
  if (sig) {
    if (!WIFSIGNALED(st) || WTERMSIG(st) != sig) {
      kill_children();
      FAIL("the script was not ended by signal %d (status %#x)", sig, st);
    }
  } else if (!WIFEXITED(st) || WEXITSTATUS(st) != code) {
    kill_children();
    FAIL("the script ended with status %#x, not exit %d", st, code);
  }
  check_gone(r, ended);
  if (strcmp(what, "TREE") == 0 && r->npids < 13) FAIL("only %d pids", r->npids);
  close(r->out);
  free(r);
}

static void setup(void) {
  find_paths();
  CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
}

/* ------------------------------------------------------------ cases */

/* Rounds of TREE ended by signal sig from here, or by the script's own
** end (how) with exit status code. */
static int tree(const char *how, int sig, int code) {
  setup();
  for (int i = 0; i < rounds(3); i++) one_round("TREE", how, sig, code, 0);
  return 0;
}

static int t_sigkill(void) { return tree("wait", SIGKILL, 0); }
static int t_sigterm(void) { return tree("wait", SIGTERM, 0); }
static int t_normal_exit(void) { return tree("exit", 0, 0); }
static int t_uncaught_error(void) { return tree("error", 0, 1); }
static int t_osexit_main(void) { return tree("osexit", 0, 0); }

/* Children forked while the parent ends: os.exit in a thread, or a
** signal, at a random moment while two threads spawn daemons. */
static int t_osexit_thread_while_spawning(void) {
  setup();
  for (int i = 0; i < rounds(100); i++) one_round("RACE", "osexit", 0, 7, 0);
  return 0;
}

static int t_killed_while_spawning(void) {
  setup();
  srand((unsigned)getpid());
  for (int i = 0; i < rounds(100); i++)
    one_round("RACE", "wait", i % 2 ? SIGKILL : SIGTERM, 0,
              (double)(rand() % 50) / 1000.0);
  return 0;
}

/* A host whose own exit handler closes its state, where a finalizer
** spawns a process: conclua's exit handler has run by then (it was
** registered later), forks are over, and the spawn must fail at once
** rather than wait for an exit that is this very thread's. */
static lua_State *exit_L;

static void close_at_exit(void) {
  lua_close(exit_L);
}

/* A host state that an exit handler of the host closes, running code. */
static void exit_host(const char *code) {
  atexit(close_at_exit);             /* before conclua's: runs after it */
  exit_L = luaL_newstate();
  CHECK(exit_L != NULL);
  luaL_openlibs(exit_L);
  conclua_open(exit_L);
  CHECK(luaL_dostring(exit_L, code) == LUA_OK);
}

static int t_spawn_from_an_exit_handler(void) {
  static const char code[] =
      "late = setmetatable({}, {__gc = function()\n"
      "  local ok, e = pcall(spawn_process, function() end)\n"
      "  io.stderr:write(ok and 'spawned\\n' or e .. '\\n')\n"
      "  if ok then e:join() end\n"
      "end})\n";
  exit_host(code);
  return 0;                          /* the runner's exit() does the rest */
}

/* os.exit in a daemon thread while a worker thread spawns in a loop, in
** a host whose exit handler then closes the state (and so waits for the
** workers that are not daemons): the worker's next spawn fails, it
** ends, the wait ends. (With a thread that is not a daemon calling
** os.exit, that wait would wait for it too: a hang of its own.) */
static int t_exit_while_a_worker_spawns(void) {
  static const char code[] =
      "spawn_thread(function()\n"
      "  while true do spawn_process(function() end):join() end\n"
      "end)\n"
      "spawn_thread({daemon = true}, function() conc.sleep(0.2) os.exit(0) end)\n";
  exit_host(code);
  runner_sleep(15);                  /* os.exit ends the case before */
  FAIL("os.exit in the thread did not end the process");
  return 1;
}

static const tcase cases[] = {
    {"parent SIGKILLed: every child gone", t_sigkill, 120},
    {"parent SIGTERMed: every child gone", t_sigterm, 120},
    {"parent exits: every child gone", t_normal_exit, 120},
    {"parent fails: every child gone", t_uncaught_error, 120},
    {"os.exit in the main thread: every child gone", t_osexit_main, 120},
    {"os.exit in a thread while others spawn", t_osexit_thread_while_spawning, 300},
    {"parent killed while spawning", t_killed_while_spawning, 300},
    {"spawn_process from an exit handler fails, no hang",
     t_spawn_from_an_exit_handler, 20},
    {"os.exit while a worker thread spawns, then lua_close at exit",
     t_exit_while_a_worker_spawns, 20},
    {NULL, NULL, 0}};

int main(int argc, char **argv) {
  return run_cases(cases, argc, argv);
}
