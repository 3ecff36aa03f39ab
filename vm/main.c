/*
** main.c
** The conclua command: the options and arg table of the stock lua
** command, a runtime with threads and processes, and the wait at exit.
**
** main makes the state and runs pmain under lua_pcall; every message goes
** through report(), prefixed by the command's name as it was run
** (argv[0], as lua.c has it), and every chunk through docall(), whose
** handler adds the traceback. Ctrl-C while a chunk runs raises
** "interrupted!" in it (a second Ctrl-C kills the process). At the end
** pmain waits for the workers (exit.c): one Ctrl-C during that wait, or
** a chunk that an uncaught Ctrl-C ended while workers run, stops them,
** and conclua exits with status 130.
*/

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "init.h"
#include "lualib.h"

#define PROGNAME "conclua"

static const char *progname = PROGNAME;

int conclua_repl(lua_State *L);      /* repl.c */

static void print_usage(const char *badoption) {
  fprintf(stderr, "%s: ", progname);
  if (badoption[1] == 'e' || badoption[1] == 'l')
    fprintf(stderr, "'%s' needs argument\n", badoption);
  else
    fprintf(stderr, "unrecognized option '%s'\n", badoption);
  fprintf(stderr,
          "usage: %s [options] [script [args]]\n"
          "Available options are:\n"
          "  -e stat   execute string 'stat'\n"
          "  -i        enter interactive mode after executing 'script'\n"
          "  -l mod    require library 'mod' into global 'mod'\n"
          "  -l g=mod  require library 'mod' into global 'g'\n"
          "  -v        show version information\n"
          "  -E        ignore environment variables\n"
          "  -W        turn warnings on\n"
          "  --        stop handling options\n"
          "  -         stop handling options and execute stdin\n",
          progname);
  fflush(stderr);
}

static void message(const char *pname, const char *msg) {
  if (pname) fprintf(stderr, "%s: ", pname);
  fprintf(stderr, "%s\n", msg);
  fflush(stderr);
}

/* Prints the error at the top of L (if status is one) and pops it. */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    message(progname, msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
  }
  return status;
}

/* The message handler: a string for any error object, plus traceback. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Runs the function below its narg arguments with message handler msgh,
** Ctrl-C armed (for the running Lua code and any conc call it blocks
** in). The REPL runs its chunks through it too. */
int conclua_pcall(lua_State *L, int narg, int nres, lua_CFunction msgh) {
  int status, base = lua_gettop(L) - narg;
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  conc_interrupt_target(conc_cs_of(L));
  conc_interrupt_install(1);
  status = lua_pcall(L, narg, nres, base);
  conc_interrupt_install(0);
  lua_remove(L, base);
  return status;
}

/* A chunk ended by a Ctrl-C that nothing caught. */
static int interrupted;

/* Whether the error at the top of L is the "interrupted!" of a Ctrl-C
** that came during the call (not a chunk's own error("interrupted!")). */
static int is_interrupt(lua_State *L, unsigned seen) {
  const char *msg = lua_tostring(L, -1);
  const char *nl;
  size_t n, k = sizeof "interrupted!" - 1;
  if (msg == NULL || conc_interrupt_count() == seen) return 0;
  nl = strchr(msg, '\n');
  n = nl ? (size_t)(nl - msg) : strlen(msg);
  return n >= k && memcmp(msg + n - k, "interrupted!", k) == 0;
}

static int docall(lua_State *L, int narg, int nres) {
  unsigned seen = conc_interrupt_count();
  int status = conclua_pcall(L, narg, nres, msghandler);
  if (status != LUA_OK && is_interrupt(L, seen)) interrupted = 1;
  return status;
}

static void print_version(void) {
  printf("%s (%s)  Copyright (C) 1994-2022 Lua.org, PUC-Rio\n",
         CONCLUA_VERSION, LUA_RELEASE);
  fflush(stdout);
}

/* arg = {[-n] = interpreter and options, [0] = script, [1..] = its args} */
static void createargtable(lua_State *L, char **argv, int argc, int script) {
  int narg;
  if (script == argc) script = 0;
  narg = argc - (script + 1);
  lua_createtable(L, narg, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = docall(L, 0, 0);
  return report(L, status);
}

static int dofile(lua_State *L, const char *name) {
  return dochunk(L, luaL_loadfile(L, name));
}

static int dostring(lua_State *L, const char *s, const char *name) {
  return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

/* -l: g = require(mod), for "g=mod" or "mod". */
static int dolibrary(lua_State *L, char *globname) {
  int status;
  char *modname = strchr(globname, '=');
  if (modname == NULL) {
    modname = globname;
  } else {
    *modname = '\0';
    modname++;
  }
  lua_getglobal(L, "require");
  lua_pushstring(L, modname);
  status = docall(L, 1, 1);
  if (status == LUA_OK) lua_setglobal(L, globname);
  return report(L, status);
}

static int pushargs(lua_State *L) {
  int n;
  if (lua_getglobal(L, "arg") != LUA_TTABLE)
    luaL_error(L, "'arg' is not a table");
  n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (int i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -(n + 1));
  return n;
}

static int handle_script(lua_State *L, char **argv) {
  int status;
  const char *fname = argv[0];
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL;
  status = luaL_loadfile(L, fname);
  if (status == LUA_OK) {
    int n = pushargs(L);
    status = docall(L, n, 0);
  }
  return report(L, status);
}

#define has_error 1
#define has_i 2
#define has_v 4
#define has_e 8
#define has_E 16

/* Scans the options: returns what was seen, or has_error with *first at
** the bad one; *first is the script's index (argc if none). */
static int collectargs(char **argv, int *first) {
  int args = 0, i;
  for (i = 1; argv[i] != NULL; i++) {
    *first = i;
    if (argv[i][0] != '-') return args;
    switch (argv[i][1]) {
      case '-':
        if (argv[i][2] != '\0') return has_error;
        *first = i + 1;
        return args;
      case '\0':
        return args;
      case 'E':
        if (argv[i][2] != '\0') return has_error;
        args |= has_E;
        break;
      case 'W':
        if (argv[i][2] != '\0') return has_error;
        break;
      case 'i':
        args |= has_i; /* fall through: -i implies -v */
        /* FALLTHROUGH */
      case 'v':
        if (argv[i][2] != '\0') return has_error;
        args |= has_v;
        break;
      case 'e':
        args |= has_e; /* FALLTHROUGH */
      case 'l':
        if (argv[i][2] == '\0') {
          i++;
          if (argv[i] == NULL || argv[i][0] == '-') return has_error;
        }
        break;
      default:
        return has_error;
    }
  }
  *first = i;
  return args;
}

/* Runs -e, -l and -W in order; 0 if one of them failed. */
static int runargs(lua_State *L, char **argv, int n) {
  for (int i = 1; i < n; i++) {
    int option = argv[i][1];
    switch (option) {
      case 'e':
      case 'l': {
        char *extra = argv[i] + 2;
        int status;
        if (*extra == '\0') extra = argv[++i];
        status = option == 'e' ? dostring(L, extra, "=(command line)")
                               : dolibrary(L, extra);
        if (status != LUA_OK) return 0;
        break;
      }
      case 'W':
        lua_warning(L, "@on", 0);
        break;
    }
  }
  return 1;
}

static int handle_luainit(lua_State *L) {
  const char *name = "=LUA_INIT_" LUA_VERSION_MAJOR "_" LUA_VERSION_MINOR;
  const char *init = getenv(name + 1);
  if (init == NULL) {
    name = "=LUA_INIT";
    init = getenv(name + 1);
  }
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return dofile(L, init + 1);
  return dostring(L, init, name);
}

/* Waits for the workers at the end, Ctrl-C armed; 1 if a Ctrl-C stopped
** them instead (the exit status is then 130). */
static int wait_workers(lua_State *L) {
  cstate *cs = conc_cs_of(L);
  return cs && conc_rt_exit_wait(cs->rt, cs, interrupted, progname) != 0;
}

static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  int script, ok = 1;
  int args = collectargs(argv, &script);
  luaL_checkversion(L);
  if (args == has_error) {
    print_usage(argv[script]);
    lua_pushinteger(L, EXIT_FAILURE);
    return 1;
  }
  if (args & has_E) {
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  luaL_openlibs(L);
  conclua_open(L);
  /* Ctrl-C armed from the first chunk to the end of the wait at exit */
  conc_interrupt_target(conc_cs_of(L));
  conc_interrupt_install(1);
  createargtable(L, argv, argc, script);
  lua_gc(L, LUA_GCRESTART);
  lua_gc(L, LUA_GCGEN, 0, 0);
  if (args & has_v) print_version();
  if (!(args & has_E) && handle_luainit(L) != LUA_OK) ok = 0;
  if (ok && !runargs(L, argv, script)) ok = 0;
  if (ok && script < argc && handle_script(L, argv + script) != LUA_OK) ok = 0;
  if (ok) {
    if (args & has_i) {
      conclua_repl(L);
    } else if (script == argc && !(args & (has_e | has_v))) {
      if (isatty(0)) {
        print_version();
        conclua_repl(L);
      } else if (dofile(L, NULL) != LUA_OK) {
        ok = 0;
      }
    }
  }
  if (wait_workers(L)) lua_pushinteger(L, 128 + SIGINT);
  else lua_pushinteger(L, ok ? EXIT_SUCCESS : EXIT_FAILURE);
  conc_interrupt_install(0);
  return 1;
}

int main(int argc, char **argv) {
  int status, code;
  lua_State *L;
  if (argc >= 2 && strcmp(argv[1], "--conc-child") == 0)
    return conc_process_child_main(argc, argv, conclua_open);
  if (argv[0] && argv[0][0]) progname = argv[0];   /* as lua.c names itself */
  signal(SIGPIPE, SIG_IGN);
  conc_self_exe = "/proc/self/exe";
  L = luaL_newstate();
  if (L == NULL) {
    message(argv[0], "cannot create state: not enough memory");
    return EXIT_FAILURE;
  }
  lua_gc(L, LUA_GCSTOP);
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  status = lua_pcall(L, 2, 1, 0);
  code = status == LUA_OK ? (int)lua_tointeger(L, -1) : EXIT_FAILURE;
  report(L, status);
  lua_close(L);
  return code;
}
