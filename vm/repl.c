/*
** repl.c
** The interactive loop of the conclua command.
**
** A chunk prints the values it returns (pretty.c shows tables), as in
** lua5.4: a line that is an expression runs as "return <line>", so its
** values print; a statement prints what a return at its end gives
** (return 1, 2), else nothing. An incomplete chunk asks for more lines
** on the second prompt until it compiles. Errors print with their
** traceback and the loop goes on.
**
** DESIGN. On a terminal, input comes through GNU readline's callback
** interface: the loop sleeps in poll() on stdin and on a self-pipe that
** the SIGINT, SIGWINCH and SIGCONT handlers write to, so Ctrl-C at the
** prompt simply abandons the line (and any pending continuation lines),
** and a resize or a return from Ctrl-Z reaches readline without its own
** signal handlers. While a chunk runs, docall arms the runtime's Ctrl-C
** instead (runtime.c): the running Lua code, or the conc call it blocks
** in, raises "interrupted!"; afterwards our prompt handler is back.
** Processes spawned meanwhile ignore SIGINT (conc_process_ignore_sigint): the
** terminal sends it to them too, and Ctrl-C is the REPL's.
** The poll also wakes every NOTICE_MS to tell about workers that failed
** with nobody joining them, above the line being edited, and it watches
** the children that no thread watches (their result pipes and pidfds),
** so that one that ends is reaped, and told about if it failed, at once.
** History is readline's list, loaded from and appended to a file one
** entry a line (newlines and backslashes escaped, so a multi-line chunk
** stays one entry); only chunks that compiled go to the file, and it is
** cut back to HISTORY_MAX entries when a session starts and ends.
** Tab completion resolves the dotted name before the cursor without
** running Lua code (raw reads, __index tables, conc handles' method
** lists); after a call, only a conc constructor's result is known (the
** kind it makes). At end of input the loop says which workers it waits
** for, and Ctrl-C during that wait stops them.
** Without a terminal there is no readline and no history: as in
** lua5.4 -i, lines are read with getline after the prompt and shown as
** lua5.4's readline shows them (the prompt, then the line read), and
** results go through the global print. On a terminal they go through a
** print the program replaced, else through the pretty-printer. A chunk's
** first line "=e" is "return e" (as in lua5.4), on a terminal or not.
*/

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include <dlfcn.h>

#include "init.h"

int conc_pretty_push(lua_State *L, int idx, int width, int col); /* pretty.c */
int conclua_pcall(lua_State *L, int narg, int nres,
                  lua_CFunction msgh);                      /* main.c */

#define HISTORY_MAX 1000      /* entries kept in the history file */
#define NOTICE_MS 250         /* how often the prompt checks on workers */

enum { IN_LINE, IN_EOF, IN_INTR };                 /* what input gave */
enum { CHUNK_EOF = -1, CHUNK_INTR = -2 };          /* besides LUA_OK... */

static lua_State *repl_L;     /* for completion and notices */
static int tty;               /* stdin is a terminal: readline, prompts */
static int echo = 1;          /* plain_line shows the line it read */
static int sigfd[2] = {-1, -1};   /* self-pipe of the prompt's handlers */
static char *histpath;        /* NULL: no history file */

/* ------------------------------------------------------------ readline */

/* GNU readline is loaded when a terminal needs it, not linked: a program
** that shows no prompt does not map it (nor libtinfo), and each of its
** spawn_process forks a smaller address space. Its functions and
** variables are used through rl, as RL(name). */
#define RL_SYMBOLS(X) \
  X(add_history) X(using_history) X(stifle_history) X(clear_history) \
  X(history_get) X(history_length) X(history_base) X(rl_outstream) \
  X(rl_eof_found) X(rl_callback_handler_install) \
  X(rl_callback_handler_remove) X(rl_callback_read_char) \
  X(rl_callback_sigcleanup) X(rl_redisplay) X(rl_prep_term_function) \
  X(rl_deprep_term_function) X(rl_variable_value) X(rl_resize_terminal) \
  X(rl_reset_screen_size) X(rl_replace_line) X(rl_readline_name) \
  X(rl_point) X(rl_end) X(rl_on_new_line) X(rl_line_buffer) \
  X(rl_free_line_state) X(rl_forced_update_display) \
  X(rl_completion_matches) X(rl_completion_append_character) \
  X(rl_completer_word_break_characters) X(rl_clear_visible_line) \
  X(rl_change_environment) X(rl_catch_sigwinch) X(rl_catch_signals) \
  X(rl_attempted_completion_over) X(rl_attempted_completion_function)

static struct {
#define RL_FIELD(s) __typeof__(&s) s;
  RL_SYMBOLS(RL_FIELD)
#undef RL_FIELD
} rl;

#define RL(s) (*rl.s)

#ifndef CONC_RL_SONAME
#define CONC_RL_SONAME "libreadline.so.8"
#endif

/* Loads readline once (CONCLUA_READLINE names another library to load):
** NULL, or why it cannot be had. */
static const char *rl_load(void) {
  static char why[256];
  static int loaded;
  const char *name = getenv("CONCLUA_READLINE");
  void *h;
  if (loaded) return NULL;
  if (name == NULL || *name == '\0') name = CONC_RL_SONAME;
  if ((h = dlopen(name, RTLD_NOW | RTLD_LOCAL)) == NULL) {
    snprintf(why, sizeof why, "%s", dlerror());
    return why;
  }
#define RL_LOOK(s)                                                   \
  if ((*(void **)&rl.s = dlsym(h, #s)) == NULL) {                   \
    snprintf(why, sizeof why, "%s has no %s", name, #s);             \
    dlclose(h);                                                      \
    return why;                                                      \
  }
  RL_SYMBOLS(RL_LOOK)
#undef RL_LOOK
  loaded = 1;
  return NULL;
}

/* ------------------------------------------------------------ signals */

static void on_signal(int sig) {
  int saved = errno;
  char c = sig == SIGINT ? 'i' : sig == SIGCONT ? 'c' : 'w';
  ssize_t r = write(sigfd[1], &c, 1);      /* full pipe: one is enough */
  CONC_UNUSED(r);
  errno = saved;
}

static struct sigaction old_int, old_winch, old_cont;

static void signals_install(int on) {
  if (on) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGWINCH, &sa, &old_winch);
    sigaction(SIGCONT, &sa, &old_cont);
  } else {
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGWINCH, &old_winch, NULL);
    sigaction(SIGCONT, &old_cont, NULL);
  }
}

/* Reads what the handlers wrote while a line is being edited: returns 1
** if a Ctrl-C came among it. A resize goes to readline; after a stop
** (Ctrl-Z, then fg) the shell has set the terminal its own way, so it
** is prepared again and the line redrawn. */
static int drain_signals(void) {
  char b[64];
  ssize_t n;
  int intr = 0, cont = 0;
  while ((n = read(sigfd[0], b, sizeof b)) > 0) {
    for (ssize_t i = 0; i < n; i++) {
      if (b[i] == 'i') intr = 1;
      else if (b[i] == 'c') cont = 1;
      else RL(rl_resize_terminal)();
    }
  }
  if (cont && !intr) {
    if (RL(rl_deprep_term_function)) (*RL(rl_deprep_term_function))();
    if (RL(rl_prep_term_function)) (*RL(rl_prep_term_function))(1);
    RL(rl_forced_update_display)();
  }
  return intr;
}

/* Whether a Ctrl-C came since the line was read (before the chunk's own
** handler is armed); other signals are dropped: the screen size is read
** again before each prompt. */
static int take_interrupt(void) {
  char b[64];
  ssize_t n;
  int intr = 0;
  if (sigfd[0] < 0) return 0;
  while ((n = read(sigfd[0], b, sizeof b)) > 0)
    for (ssize_t i = 0; i < n; i++) intr |= b[i] == 'i';
  return intr;
}

/* A Ctrl-C that came when the chunk had already finished leaves its hook
** and flag behind: take them back, so that the next chunk starts clean. */
static void settle_interrupt(lua_State *L) {
  cstate *cs = conc_cs_of(L);
  if (cs && atomic_exchange(&cs->interrupt, 0)) lua_sethook(L, NULL, 0, 0);
}

/* ------------------------------------------------------------ workers */

/* Whether some worker failed and nobody joined it or was told yet. */
static int failures_pending(lua_State *L) {
  cstate *cs = conc_cs_of(L);
  int found = 0;
  if (cs == NULL) return 0;
  pthread_mutex_lock(&cs->rt->mu);
  for (worker *w = cs->rt->head; w && !found; w = w->next) {
    pthread_mutex_lock(&w->mu);
    found = (w->status == W_FAILED || w->status == W_KILLED) && !w->joined &&
            !w->reported;
    pthread_mutex_unlock(&w->mu);
  }
  pthread_mutex_unlock(&cs->rt->mu);
  return found;
}

static void report_failures(lua_State *L) {
  cstate *cs = conc_cs_of(L);
  fflush(stdout);
  if (cs) conc_rt_report_failures(cs->rt);
  fflush(stderr);
}

/* The end of input: wait for the workers, saying so; Ctrl-C stops them
** (exit.c: threads are cancelled, processes get SIGTERM, conclua exits
** with status 130). */
static void wait_at_exit(lua_State *L) {
  cstate *cs = conc_cs_of(L);
  char names[512];
  int n = cs ? conc_rt_awaited(cs->rt, names, sizeof names) : 0;
  if (n == 0) return;
  conc_interrupt_target(cs);        /* armed before the message invites it */
  conc_interrupt_install(1);
  printf("waiting for %d worker%s: %s (Ctrl-C to stop %s)\n", n,
         n == 1 ? "" : "s", names, n == 1 ? "it" : "them");
  fflush(stdout);
  conc_rt_exit_wait(cs->rt, cs, 0, "conclua");
  conc_interrupt_install(0);
}

/* ------------------------------------------------------------ history */

/* The file: $CONCLUA_HISTORY (empty: none), else ~/.conclua_history. */
static char *hist_pathname(void) {
  const char *p = getenv("CONCLUA_HISTORY"), *home;
  char *s;
  if (p) return p[0] ? strdup(p) : NULL;
  home = getenv("HOME");
  if (home == NULL || home[0] == '\0') return NULL;
  s = malloc(strlen(home) + sizeof "/.conclua_history");
  if (s) sprintf(s, "%s/.conclua_history", home);
  return s;
}

/* One entry as one line: "\\" and "\n" escaped. Returns a new string. */
static char *hist_encode(const char *e) {
  size_t n = 0;
  char *s, *d;
  for (const char *p = e; *p; p++) n += (*p == '\\' || *p == '\n') ? 2 : 1;
  s = d = malloc(n + 2);
  if (s == NULL) return NULL;
  for (const char *p = e; *p; p++) {
    if (*p == '\\') *d++ = '\\', *d++ = '\\';
    else if (*p == '\n') *d++ = '\\', *d++ = 'n';
    else *d++ = *p;
  }
  *d++ = '\n';
  *d = '\0';
  return s;
}

static void hist_decode(char *s) {          /* in place, newline gone */
  char *d = s;
  for (char *p = s; *p && *p != '\n'; p++) {
    if (p[0] == '\\' && p[1] == 'n') *d++ = '\n', p++;
    else if (p[0] == '\\' && p[1] == '\\') *d++ = '\\', p++;
    else *d++ = *p;
  }
  *d = '\0';
}

/* The file's lines; NULL (and *n = 0) when it cannot be read. */
static char **hist_read(size_t *n) {
  FILE *f = fopen(histpath, "re");
  char **v = NULL, *line = NULL;
  size_t cap = 0, lcap = 0;
  *n = 0;
  if (f == NULL) return NULL;
  while (getline(&line, &lcap, f) > 0) {
    if (*n == cap) {
      char **nv = realloc(v, sizeof *v * (cap = cap ? cap * 2 : 64));
      if (nv == NULL) break;
      v = nv;
    }
    v[(*n)++] = line;
    line = NULL;
    lcap = 0;
  }
  free(line);
  fclose(f);
  return v;
}

/* Keeps the file's last HISTORY_MAX lines (a new file, renamed over). */
static void hist_trim(char **v, size_t n) {
  char *tmp;
  int fd;
  FILE *f;
  if (n <= HISTORY_MAX) return;
  tmp = malloc(strlen(histpath) + sizeof ".XXXXXX");
  if (tmp == NULL) return;
  sprintf(tmp, "%s.XXXXXX", histpath);
  fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0 || (f = fdopen(fd, "w")) == NULL) {
    if (fd >= 0) {
      close(fd);
      unlink(tmp);
    }
    free(tmp);
    return;
  }
  for (size_t i = n - HISTORY_MAX; i < n; i++) fputs(v[i], f);
  if (fclose(f) == 0) rename(tmp, histpath);
  else unlink(tmp);
  free(tmp);
}

static void hist_free(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

static void hist_load(void) {
  size_t n;
  char **v;
  RL(stifle_history)(HISTORY_MAX);
  if (histpath == NULL) return;
  v = hist_read(&n);
  hist_trim(v, n);
  for (size_t i = n > HISTORY_MAX ? n - HISTORY_MAX : 0; i < n; i++) {
    hist_decode(v[i]);
    if (v[i][0]) RL(add_history)(v[i]);
  }
  hist_free(v, n);
}

static void hist_close(void) {
  size_t n;
  char **v;
  if (histpath == NULL) return;
  v = hist_read(&n);
  hist_trim(v, n);
  hist_free(v, n);
}

/* Adds an entry to this session's list and, if 'keep', to the file.
** Blank entries and repeats of the previous one are skipped. */
static void hist_add(const char *entry, int keep) {
  HIST_ENTRY *last;
  const char *p = entry;
  while (*p == ' ' || *p == '\t' || *p == '\n') p++;
  if (!tty || *p == '\0') return;
  last = RL(history_length) > 0
             ? RL(history_get)(RL(history_base) + RL(history_length) - 1)
             : NULL;
  if (last && strcmp(last->line, entry) == 0) return;
  RL(add_history)(entry);
  if (keep && histpath) {
    char *line = hist_encode(entry);
    int fd = open(histpath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0 && line) conc_fd_write_all(fd, line, strlen(line));
    if (fd >= 0) close(fd);
    free(line);
  }
}

/* ------------------------------------------------------------ input */

static char *got_line;
static int got_done;
static int rl_started;        /* readline has been initialized */

static void on_line(char *line) {
  got_line = line;
  got_done = 1;
  RL(rl_callback_handler_remove)();     /* no prompt again until asked */
}

/* Ctrl-C while editing: show ^C after the text, drop the line. */
static void cancel_line(void) {
  RL(rl_point) = RL(rl_end);
  RL(rl_redisplay)();
  fputs("^C", RL(rl_outstream));     /* before the terminal is restored: that */
  fflush(RL(rl_outstream));          /* may return the cursor to column 0 */
  RL(rl_free_line_state)();
  RL(rl_callback_sigcleanup)();
  RL(rl_replace_line)("", 0);
  RL(rl_callback_handler_remove)();
  fputs("\n", RL(rl_outstream));
  fflush(RL(rl_outstream));
  RL(using_history)();
}

/* Failures reported while a line is being edited go above it. */
static void notice_at_prompt(lua_State *L) {
  if (!failures_pending(L)) return;
  RL(rl_clear_visible_line)();
  fflush(RL(rl_outstream));
  report_failures(L);
  RL(rl_on_new_line)();
  RL(rl_redisplay)();
}

/* The prompt watches the running children that no thread watches (a
** join, a select, the reaper): their result pipe and pidfd go into its
** poll, so one that ends is reaped at once and, if it failed, reported
** (nothing else would look at it before some later conc call). */
typedef struct watchset {
  worker **v;                  /* the children, retained */
  int n;
  struct pollfd *fds;          /* stdin, the self-pipe, then theirs */
  int *of;                     /* fds[i] belongs to v[of[i]] (i >= 2) */
  int nfds;
} watchset;

static int running_child(worker *w) {
  return w->obj.kind == K_PROCESS && w->owner == conc_getpid() &&
         conc_worker_status(w) == W_RUNNING;
}

/* 0, or -1 when out of memory (then only stdin and the self-pipe). */
static int watch_begin(lua_State *L, watchset *ws) {
  static struct pollfd two[2];
  cstate *cs = conc_cs_of(L);
  memset(ws, 0, sizeof *ws);
  if (cs) ws->v = conc_rt_pick(cs->rt, running_child, &ws->n);
  ws->fds = malloc(sizeof *ws->fds * (size_t)(2 + 2 * ws->n));
  ws->of = malloc(sizeof *ws->of * (size_t)(2 + 2 * ws->n));
  if (ws->fds == NULL || ws->of == NULL) {
    free(ws->fds);
    free(ws->of);
    ws->fds = two;
    ws->of = NULL;
  }
  ws->fds[0].fd = STDIN_FILENO;
  ws->fds[0].events = POLLIN;
  ws->fds[1].fd = sigfd[0];
  ws->fds[1].events = POLLIN;
  ws->nfds = 2;
  for (int i = 0; ws->of && i < ws->n; i++) {
    int f[2], k = conc_proc_sel_fds(&ws->v[i]->obj, f);
    for (int j = 0; j < k; j++) {
      ws->fds[ws->nfds].fd = f[j];
      ws->fds[ws->nfds].events = POLLIN;
      ws->of[ws->nfds++] = i;
    }
  }
  return ws->of ? 0 : -1;
}

/* After the poll: steps the children that had news; 1 if one ended. */
static int watch_end(watchset *ws) {
  int ended = 0, last = -1;
  for (int i = 2; i < ws->nfds; i++)
    if (ws->fds[i].revents && ws->of[i] != last) {
      last = ws->of[i];
      ended |= conc_process_poll(ws->v[last]);
    }
  for (int i = 0; i < ws->n; i++) conc_obj_release(&ws->v[i]->obj);
  free(ws->v);
  if (ws->of) {
    free(ws->fds);
    free(ws->of);
  }
  return ended;
}

/* Before a prompt: children that ended while a chunk ran are reaped (and
** their failures then reported). */
static void poll_children(lua_State *L) {
  watchset ws;
  watch_begin(L, &ws);
  for (int i = 2; i < ws.nfds; i++) ws.fds[i].revents = POLLIN;
  watch_end(&ws);
}

static int tty_line(lua_State *L, const char *prompt, char **out) {
  got_line = NULL;
  got_done = 0;
  fflush(stdout);
  fflush(stderr);
  if (rl_started) RL(rl_reset_screen_size)();  /* it may have changed since */
  rl_started = 1;
  RL(rl_callback_handler_install)(prompt, on_line);
  while (!got_done) {
    watchset ws;
    int r, e, ended, in, sig;
    watch_begin(L, &ws);
    r = poll(ws.fds, (nfds_t)ws.nfds, NOTICE_MS);
    e = errno;
    if (r < 0)
      for (int i = 0; i < ws.nfds; i++) ws.fds[i].revents = 0;
    in = ws.fds[0].revents;
    sig = ws.fds[1].revents;
    ended = watch_end(&ws);
    if (r < 0 && e != EINTR) {
      RL(rl_callback_handler_remove)();
      return IN_EOF;
    }
    if (r == 0 || ended) notice_at_prompt(L);
    if (r <= 0) continue;
    if ((sig & POLLIN) && drain_signals()) {
      cancel_line();
      return IN_INTR;
    }
    if (in & (POLLIN | POLLHUP | POLLERR)) RL(rl_callback_read_char)();
  }
  RL(using_history)();
  if (got_line == NULL) {          /* Ctrl-D: end the line on the screen */
    const char *bp = RL(rl_variable_value)("enable-bracketed-paste");
    /* readline 8 ends it itself when it leaves bracketed-paste mode, and
    ** keeps doing so after every line until rl_eof_found is reset */
    if (!RL(rl_eof_found) || !bp || strcmp(bp, "on") != 0)
      fputc('\n', RL(rl_outstream));
    RL(rl_eof_found) = 0;
    fflush(RL(rl_outstream));
    return IN_EOF;
  }
  *out = got_line;
  return IN_LINE;
}

/* Without a terminal, as lua5.4 -i (whose readline echoes what it
** reads): the prompt, then the line read, on stdout. */
static int plain_line(const char *prompt, char **out) {
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  fputs(prompt, stdout);
  fflush(stdout);
  n = getline(&line, &cap, stdin);
  if (n < 0) {
    free(line);
    return IN_EOF;
  }
  if (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
  if (echo) {
    fwrite(line, 1, (size_t)n, stdout);
    fputc('\n', stdout);
    fflush(stdout);
  }
  *out = line;
  return IN_LINE;
}

static int prompt_k(lua_State *L) {
  int first = lua_toboolean(L, 1);
  if (lua_getglobal(L, first ? "_PROMPT" : "_PROMPT2") == LUA_TNIL)
    lua_pushstring(L, first ? "> " : ">> ");
  luaL_tolstring(L, -1, NULL);
  return 1;
}

/* _PROMPT or _PROMPT2 as a new string, the default if it fails. */
static char *prompt_of(lua_State *L, int first) {
  char *p = NULL;
  lua_pushcfunction(L, prompt_k);
  lua_pushboolean(L, first);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) p = strdup(lua_tostring(L, -1));
  lua_pop(L, 1);
  return p ? p : strdup(first ? "> " : ">> ");
}

/* The line as a string; on the first line of a chunk, "=e" is
** "return e", as in lua5.4 (a habit of Lua 5.1's REPL). */
static int pushline_k(lua_State *L) {
  const char *line = lua_touserdata(L, 1);
  if (lua_toboolean(L, 2) && line[0] == '=')
    lua_pushfstring(L, "return %s", line + 1);
  else
    lua_pushstring(L, line);
  return 1;
}

/* Reads a line and pushes it: IN_LINE, or IN_EOF / IN_INTR (nothing
** pushed). The malloc'd line is freed before anything can raise. */
static int pushline(lua_State *L, int first) {
  char *line = NULL, *prompt = prompt_of(L, first);
  const char *p = prompt ? prompt : first ? "> " : ">> ";
  int r, st;
  r = tty ? tty_line(L, p, &line) : plain_line(p, &line);
  free(prompt);
  if (r != IN_LINE) return r;
  lua_pushcfunction(L, pushline_k);
  lua_pushlightuserdata(L, line);
  lua_pushboolean(L, first);
  st = lua_pcall(L, 2, 1, 0);
  free(line);
  if (st != LUA_OK) {
    lua_pop(L, 1);
    return IN_EOF;
  }
  return IN_LINE;
}

/* A syntax error that only says the chunk ended too soon. */
static int incomplete(lua_State *L, int status) {
  if (status == LUA_ERRSYNTAX) {
    size_t lmsg;
    const char *msg = lua_tolstring(L, -1, &lmsg);
    const char *eof = "<eof>";
    size_t le = strlen(eof);
    if (msg && lmsg >= le && strcmp(msg + lmsg - le, eof) == 0) return 1;
  }
  return 0;
}

/* Reads and compiles one chunk. LUA_OK: the function on top (an
** expression is compiled as "return <expression>"); LUA_ERRSYNTAX: the
** message on top; CHUNK_EOF or CHUNK_INTR: nothing pushed. */
static int readchunk(lua_State *L) {
  int r = pushline(L, 1), retmore = 0;
  if (r != IN_LINE) return r == IN_EOF ? CHUNK_EOF : CHUNK_INTR;
  for (;;) {
    size_t len;
    const char *buf = lua_tolstring(L, -1, &len);
    const char *ret = lua_pushfstring(L, "return %s", buf);
    int st = luaL_loadbuffer(L, ret, strlen(ret), "=stdin"), more;
    if (st == LUA_OK) {
      lua_remove(L, -2);                      /* the "return" text */
      hist_add(buf, 1);
      lua_remove(L, -2);                      /* buf */
      return LUA_OK;
    }
    more = incomplete(L, st);
    lua_pop(L, 2);                            /* message, "return" text */
    retmore = more;
    st = luaL_loadbuffer(L, buf, len, "=stdin");
    if (st == LUA_OK) {
      hist_add(buf, 1);
      lua_remove(L, -2);
      return LUA_OK;
    }
    if (!(more || incomplete(L, st))) {
      hist_add(buf, 0);                      /* to fix it, not to keep */
      lua_remove(L, -2);
      return st;
    }
    lua_pop(L, 1);
    r = pushline(L, 0);
    if (r == IN_INTR) {
      lua_pop(L, 1);
      return CHUNK_INTR;
    }
    if (r == IN_EOF) {                  /* Ctrl-D: what is there is wrong */
      buf = lua_tolstring(L, -1, &len);
      hist_add(buf, 0);
      if (retmore) {                    /* an unfinished expression */
        buf = lua_pushfstring(L, "return %s", buf);
        lua_remove(L, -2);
        len = strlen(buf);
      }
      st = luaL_loadbuffer(L, buf, len, "=stdin");
      lua_remove(L, -2);
      if (st == LUA_OK) {               /* cannot be, but be sure */
        lua_pop(L, 1);
        lua_pushliteral(L, "unexpected end of input");
        st = LUA_ERRSYNTAX;
      }
      return st;
    }
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
}

/* ------------------------------------------------------------ output */

static int term_width(void) {
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    return ws.ws_col;
  return 80;
}

/* Prints its arguments on one line, tab-separated: strings as they are,
** tables laid out (pretty.c), anything else through tostring. */
static int show_k(lua_State *L) {
  int n = lua_gettop(L), width = term_width(), col = 0;
  for (int i = 1; i <= n; i++) {
    size_t l;
    const char *s;
    if (i > 1) {
      fputc('\t', stdout);
      col = (col / 8 + 1) * 8;
    }
    if (lua_type(L, i) == LUA_TSTRING) s = lua_tolstring(L, i, &l);
    else if (lua_type(L, i) == LUA_TTABLE)
      s = (conc_pretty_push(L, i, width, col), lua_tolstring(L, -1, &l));
    else s = luaL_tolstring(L, i, &l);
    fwrite(s, 1, l, stdout);
    for (size_t k = l; k > 0; k--) {
      if (s[k - 1] == '\n') {
        col = (int)(l - k);
        break;
      }
      if (k == 1) col += (int)l;
    }
    if (lua_gettop(L) > n) lua_pop(L, 1);
  }
  fputc('\n', stdout);
  fflush(stdout);
  return 0;
}

static int pretty_k(lua_State *L) {
  return conc_pretty_push(L, 1, term_width(), 0);
}

/* The message handler: a string for any error value (tables shown as
** the REPL shows them), plus the traceback. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    lua_pushcfunction(L, pretty_k);
    lua_pushvalue(L, 1);
    if (lua_type(L, 1) == LUA_TTABLE && lua_pcall(L, 1, 1, 0) == LUA_OK)
      msg = lua_pushfstring(L, "error object: %s", lua_tostring(L, -1));
    else
      msg = lua_pushfstring(L, "(error object is a %s value)",
                            luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Runs the function below its narg arguments, Ctrl-C armed (main.c's
** conclua_pcall), then settles a Ctrl-C that came too late to stop it. */
static int docall(lua_State *L, int narg, int nres) {
  int st = conclua_pcall(L, narg, nres, msghandler);
  settle_interrupt(L);
  return st;
}

/* An error: its message and traceback, without the frame of the REPL
** itself at the bottom. */
static void report(lua_State *L) {
  size_t l;
  const char *msg = lua_tolstring(L, -1, &l);
  const char *tail = "\n\t[C]: in ?";
  size_t tl = strlen(tail);
  if (msg == NULL) msg = "(error object is not a string)", l = strlen(msg);
  if (l >= tl && memcmp(msg + l - tl, tail, tl) == 0) l -= tl;
  fflush(stdout);
  fprintf(stderr, "conclua: %.*s\n", (int)l, msg);
  fflush(stderr);
  lua_pop(L, 1);
}

/* Whether results are to go through the global print: always without a
** terminal (as in lua5.4), and on a terminal when the program replaced
** conclua's print (by nil too). A raw read: no code of the program runs
** outside a protected call. */
static int user_print(lua_State *L) {
  int stock;
  if (!tty) return 1;
  lua_pushglobaltable(L);
  lua_pushliteral(L, "print");
  lua_rawget(L, -2);
  stock = lua_tocfunction(L, -1) == conc_print;
  lua_pop(L, 2);
  return !stock;
}

/* print(...) with the global print, found as lua5.4 finds it. */
static int print_k(lua_State *L) {
  int n = lua_gettop(L);
  lua_getglobal(L, "print");
  lua_insert(L, 1);
  lua_call(L, n, 0);
  return 0;
}

/* print's own error, as it is: the REPL says it came from print. */
static int print_msgh(lua_State *L) {
  CONC_UNUSED(L);
  return 1;
}

/* Prints the n results on top through print_k; on error, leaves the
** message "error calling 'print' (...)" on top. */
static int call_print(lua_State *L, int n) {
  int st;
  lua_pushcfunction(L, print_k);
  lua_insert(L, -(n + 1));
  st = conclua_pcall(L, n, 0, print_msgh);
  settle_interrupt(L);
  if (st != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL)
      msg = lua_pushfstring(L, "error object is a %s value",
                            luaL_typename(L, -1));
    lua_pushfstring(L, "error calling 'print' (%s)", msg);
  }
  return st;
}

/* Runs the chunk on top and prints what it returned, if anything. */
static void evaluate(lua_State *L) {
  int base = lua_gettop(L) - 1, st;
  if (tty && take_interrupt()) {
    lua_settop(L, base);
    lua_pushliteral(L, "interrupted!");
    report(L);
    return;
  }
  st = docall(L, 0, LUA_MULTRET);
  if (st == LUA_OK && lua_gettop(L) > base) {
    int n = lua_gettop(L) - base;
    if (!lua_checkstack(L, LUA_MINSTACK)) {   /* an error, not the end */
      lua_settop(L, base);
      lua_pushliteral(L, "too many results to print");
      st = LUA_ERRRUN;
    } else if (user_print(L)) {
      st = call_print(L, n);
    } else {
      lua_pushcfunction(L, show_k);
      lua_insert(L, base + 1);
      st = docall(L, n, 0);
    }
  }
  if (st != LUA_OK) report(L);
  lua_settop(L, base);
}

/* ------------------------------------------------------------ completion */

static char **cand;           /* the matches of the current completion */
static int ncand, candpos;

static const char *const *const keywords = conc_reserved;

/* Fields of conc handles besides their methods (t.id, p.pid...). */
static const char *const *handle_fields(int kind) {
  static const char *const none[] = {NULL};
  return conc_kinds[kind]->fields ? conc_kinds[kind]->fields : none;
}

/* The __index table of the value at idx's metatable, pushed; 0 if none. */
static int index_table(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  if (lua_getfield(L, -1, "__index") == LUA_TTABLE) {
    lua_remove(L, -2);
    return 1;
  }
  lua_pop(L, 2);
  return 0;
}

/* v[key] without running Lua code: raw reads along __index tables; conc
** handles answer through their own (C) __index. Pushes the value. */
static void safe_index(lua_State *L, int v, const char *key) {
  cstate *cs = conc_cs_of(L);
  v = lua_absindex(L, v);
  if (cs && conc_obj_test(L, cs, v)) {
    lua_getfield(L, v, key);
    return;
  }
  lua_pushvalue(L, v);
  for (int hops = 0; hops < 16; hops++) {
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_pushstring(L, key);
      if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_remove(L, -2);
        return;
      }
      lua_pop(L, 1);
    }
    if (!index_table(L, -1)) break;
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
  lua_pushnil(L);
}

static void add_cand(lua_State *L, int set, const char *name) {
  lua_pushboolean(L, 1);
  lua_setfield(L, set, name);
}


/* Adds the identifier keys of the table at t (functions only if 'meth').
** Names of metamethods (__index, __close...) a user seldom means: only
** once "__" is typed. */
static void add_keys(lua_State *L, int t, int set, const char *prefix,
                     int meth) {
  size_t pl = strlen(prefix);
  int meta = strncmp(prefix, "__", 2) == 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -2);
      if (strncmp(k, prefix, pl) == 0 && conc_isname_z(k) &&
          (meta || strncmp(k, "__", 2) != 0) &&
          (!meth || lua_type(L, -1) == LUA_TFUNCTION))
        add_cand(L, set, k);
    }
    lua_pop(L, 1);
  }
}

/* The methods (and, unless 'meth', fields) of a conc handle of kind k. */
static void add_kind_members(lua_State *L, int kind, int set,
                             const char *prefix, int meth) {
  const luaL_Reg *m = conc_kinds[kind]->methods;
  size_t pl = strlen(prefix);
  for (; m && m->name; m++)
    if (strncmp(m->name, prefix, pl) == 0) add_cand(L, set, m->name);
  if (!meth) {
    for (const char *const *f = handle_fields(kind); *f; f++)
      if (strncmp(*f, prefix, pl) == 0) add_cand(L, set, *f);
  }
}

/* The names one may write after "v." or "v:" (meth), into set. */
static void add_members(lua_State *L, int v, int set, const char *prefix,
                        int meth) {
  cstate *cs = conc_cs_of(L);
  cobj *o;
  v = lua_absindex(L, v);
  if (cs && (o = conc_obj_test(L, cs, v)) != NULL) {
    add_kind_members(L, o->kind, set, prefix, meth);
    if (strncmp(prefix, "__", 2) == 0 && lua_getmetatable(L, v)) {
      add_keys(L, lua_gettop(L), set, prefix, meth);   /* asked for */
      lua_pop(L, 1);
    }
    return;
  }
  lua_pushvalue(L, v);
  for (int hops = 0; hops < 16; hops++) {
    if (lua_type(L, -1) == LUA_TTABLE)
      add_keys(L, lua_gettop(L), set, prefix, meth);
    if (!index_table(L, -1)) break;
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
}

/* The kind of handle that calling the function at f makes, if it is a
** conc constructor: a function of the conc table named after a kind
** (conc.channel makes a channel), or spawn_thread / spawn_process (the
** globals or conc's). -1 for anything else. Nothing is called. */
static int made_kind(lua_State *L, int f) {
  char made[32] = "";
  int top = lua_gettop(L), kind = -1;
  f = lua_absindex(L, f);
  if (!lua_iscfunction(L, f)) return -1;
  lua_pushglobaltable(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "conc");
  for (int t = top + 1; t <= top + 3 && !made[0]; t += 2) {   /* _G, conc */
    if (lua_type(L, t) != LUA_TTABLE) continue;
    lua_pushnil(L);
    while (lua_next(L, t)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_rawequal(L, f, -1) &&
          (t != top + 1 || strncmp(lua_tostring(L, -2), "spawn_", 6) == 0))
        snprintf(made, sizeof made, "%s", lua_tostring(L, -2));
      lua_pop(L, 1);
    }
  }
  lua_settop(L, top);
  if (strncmp(made, "spawn_", 6) == 0)
    memmove(made, made + 6, strlen(made) - 5);
  for (int k = 0; made[0] && k < K_NKINDS; k++)
    if (strcmp(conc_kinds[k]->name, made) == 0) kind = k;
  return kind;
}

/* complete(path, sep, prefix, what) -> a set of names: the globals and
** keywords (sep ""), or the members of the value at path (what
** "value"), of what calling the function at path gives ("call"), or of
** a string ("string"). */
static int complete_k(lua_State *L) {
  const char *path = lua_tostring(L, 1), *sep = lua_tostring(L, 2);
  const char *prefix = lua_tostring(L, 3), *what = lua_tostring(L, 4);
  int set;
  lua_newtable(L);
  set = lua_gettop(L);
  if (strcmp(what, "string") == 0) {
    lua_pushliteral(L, "");
    add_members(L, -1, set, prefix, sep[0] == ':');
    lua_pushvalue(L, set);
    return 1;
  }
  lua_pushglobaltable(L);
  if (sep[0] == '\0') {
    size_t pl = strlen(prefix);
    add_members(L, -1, set, prefix, 0);
    for (int i = 0; keywords[i]; i++)
      if (strncmp(keywords[i], prefix, pl) == 0) add_cand(L, set, keywords[i]);
    lua_pushvalue(L, set);
    return 1;
  }
  while (*path) {                      /* walk a.b.c from _G */
    const char *dot = strchr(path, '.');
    size_t l = dot ? (size_t)(dot - path) : strlen(path);
    lua_pushlstring(L, path, l);
    if (!conc_isname_z(lua_tostring(L, -1))) return 0;
    safe_index(L, -2, lua_tostring(L, -1));
    lua_remove(L, -2);
    lua_remove(L, -2);
    if (lua_isnil(L, -1)) return 0;
    path += l + (dot ? 1 : 0);
  }
  if (strcmp(what, "call") == 0) {
    int kind = made_kind(L, -1);
    if (kind < 0) return 0;
    add_kind_members(L, kind, set, prefix, sep[0] == ':');
  } else {
    add_members(L, -1, set, prefix, sep[0] == ':');
  }
  lua_pushvalue(L, set);
  return 1;
}

/* What comes before a "." or ":" that follows no name: the expression
** that ends at line[end]. A call "f(...)" gives "call" and f's dotted
** name (*callee, malloc'd); a string literal in parentheses "string";
** anything else (a method's result, an index, a number) NULL. */
static const char *before_sep(const char *line, int end, char **callee) {
  int i = end - 1, close, open, j, k;
  *callee = NULL;
  while (i >= 0 && (line[i] == ' ' || line[i] == '\t')) i--;
  if (i < 0 || line[i] != ')') return NULL;
  close = i;
  for (int depth = 0; i >= 0; i--) {  /* the "(" that matches */
    char c = line[i];
    if (c == '"' || c == '\'') {       /* back over a string literal */
      int q = i - 1;
      while (q >= 0 && !(line[q] == c && (q == 0 || line[q - 1] != '\\'))) q--;
      if (q < 0) return NULL;
      i = q;
    } else if (c == ')') {
      depth++;
    } else if (c == '(' && --depth == 0) {
      break;
    }
  }
  if (i < 0) return NULL;
  open = j = i;
  while (j > 0 && (line[j - 1] == ' ' || line[j - 1] == '\t')) j--;
  k = j;
  while (k > 0 && (line[k - 1] == '.' || conc_isnamechar(line[k - 1])))
    k--;
  if (k == j) {                         /* ( expression ) */
    int a = open + 1, b = close - 1;
    while (a <= b && (line[a] == ' ' || line[a] == '\t')) a++;
    while (b >= a && (line[b] == ' ' || line[b] == '\t')) b--;
    if (b > a && (line[a] == '"' || line[a] == '\'') && line[b] == line[a]) {
      for (int q = a + 1; q < b; q++)
        if (line[q] == line[a] && line[q - 1] != '\\') return NULL;
      return "string";
    }
    return NULL;
  }
  if (k > 0 && line[k - 1] == ':') return NULL;   /* a method's result */
  for (int q = k; q + 1 < j; q++)                 /* a .. b(): b */
    if (line[q] == '.' && line[q + 1] == '.') k = q + 2;
  if (k >= j || line[k] == '.' || line[j - 1] == '.') return NULL;
  *callee = strndup(line + k, (size_t)(j - k));
  return *callee ? "call" : NULL;
}

static char *gen_cand(const char *text, int state) {
  CONC_UNUSED(text);
  if (state == 0) candpos = 0;
  return candpos < ncand ? strdup(cand[candpos++]) : NULL;
}

static void free_cand(void) {
  for (int i = 0; i < ncand; i++) free(cand[i]);
  free(cand);
  cand = NULL;
  ncand = 0;
}

static char **complete(const char *text, int start, int end) {
  lua_State *L = repl_L;
  const char *word = text, *cut, *sepp = NULL, *what = "value";
  char *path = NULL;
  char sep[2] = {0, 0};
  int top = lua_gettop(L);
  CONC_UNUSED(end);
  RL(rl_attempted_completion_over) = 1;     /* never file names */
  RL(rl_completion_append_character) = '\0';
  free_cand();
  while ((cut = strstr(word, "..")) != NULL) word = cut + 2;   /* a..b */
  for (const char *p = word; *p; p++)
    if (*p == '.' || *p == ':') sepp = p;
  if (sepp == word) {                   /* after "(...)": a call's result? */
    what = before_sep(RL(rl_line_buffer), start + (int)(word - text), &path);
    if (what == NULL) return NULL;      /* never the globals */
    sep[0] = *sepp;
  } else if (sepp) {
    path = strndup(word, (size_t)(sepp - word));
    sep[0] = *sepp;
    if (path == NULL || strchr(path, ':')) {
      free(path);
      return NULL;
    }
  }
  lua_pushcfunction(L, complete_k);
  lua_pushstring(L, path ? path : "");
  lua_pushstring(L, sep);
  lua_pushstring(L, sepp ? sepp + 1 : word);
  lua_pushstring(L, what);
  free(path);
  if (lua_pcall(L, 4, 1, 0) == LUA_OK && lua_istable(L, -1)) {
    size_t keep = (size_t)((sepp ? sepp + 1 : word) - text);
    int cap = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      const char *name = lua_tostring(L, -2);
      char *full;
      lua_pop(L, 1);
      if (ncand == cap) {
        char **nc =
            realloc(cand, sizeof *cand * (size_t)(cap = cap ? cap * 2 : 32));
        if (nc == NULL) break;
        cand = nc;
      }
      full = malloc(keep + strlen(name) + 1);
      if (full == NULL) break;
      memcpy(full, text, keep);
      strcpy(full + keep, name);
      cand[ncand++] = full;
    }
  }
  lua_settop(L, top);
  if (ncand == 0) return NULL;
  return RL(rl_completion_matches)(text, gen_cand);
}

/* ------------------------------------------------------------ the loop */

static void tty_open(void) {
  RL(rl_readline_name) = "conclua";
  RL(rl_catch_signals) = 0;
  RL(rl_catch_sigwinch) = 0;
  RL(rl_change_environment) = 0;
  RL(rl_attempted_completion_function) = complete;
  RL(rl_completer_word_break_characters) =
      (char *)" \t\n\"'`@$><=;|&{(,+-*/%^#~[]!)}";
  histpath = hist_pathname();
  hist_load();
  if (conc_fd_pipe(sigfd) == 0) {
    conc_fd_set_nonblock(sigfd[0], 1);
    conc_fd_set_nonblock(sigfd[1], 1);
    signals_install(1);
  }
  conc_process_ignore_sigint(1);
}

static void tty_close(void) {
  conc_process_ignore_sigint(0);
  if (sigfd[0] >= 0) {
    signals_install(0);
    conc_fd_close(sigfd[0]);
    conc_fd_close(sigfd[1]);
    sigfd[0] = sigfd[1] = -1;
  }
  hist_close();
  free(histpath);
  histpath = NULL;
  free_cand();
  RL(clear_history)();
}

int conclua_repl(lua_State *L) {
  const char *why;
  int st;
  repl_L = L;
  tty = isatty(STDIN_FILENO);
  if (tty && (why = rl_load()) != NULL) {     /* a terminal that echoes */
    fprintf(stderr, "conclua: no line editing: %s\n", why);
    tty = echo = 0;
  }
  if (tty) tty_open();
  lua_settop(L, 0);
  for (;;) {
    if (tty) {
      poll_children(L);
      report_failures(L);
    }
    st = readchunk(L);
    if (st == CHUNK_EOF) break;
    if (st == CHUNK_INTR) continue;
    if (st == LUA_OK) evaluate(L);
    else report(L);
    lua_settop(L, 0);
  }
  lua_settop(L, 0);
  if (tty) {
    wait_at_exit(L);
    tty_close();
  } else {                      /* the line the last prompt was on ends */
    fputc('\n', stdout);
    fflush(stdout);
  }
  repl_L = NULL;
  return 0;
}
