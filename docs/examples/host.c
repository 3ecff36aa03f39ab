/*
** host.c
** A complete program that embeds conclua: it makes its own Lua state,
** gives it conclua, adds a C function of its own to that state and to
** every state conclua makes for a thread, runs a script, waits for the
** workers, and closes the state.
**
**   cc host.c $(pkg-config --cflags --libs conclua) -o host
**   ./host [script.lua [args...]]      (no script: a built-in demo)
**
** Exit status: 0 if the script ran and no worker failed unnoticed,
** 1 otherwise.
*/

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <conclua.h>

/* What the host shares with every state, whatever thread runs it. */
typedef struct host {
  const char *name;
  atomic_long calls;
} host;

/* host_count(n): adds n (default 1) to a counter of the host's, shared by
** every thread; returns the new total. The host is upvalue 1. */
static int host_count(lua_State *L) {
  host *h = lua_touserdata(L, lua_upvalueindex(1));
  long n = (long)luaL_optinteger(L, 1, 1);
  lua_pushinteger(L, atomic_fetch_add(&h->calls, n) + n);
  return 1;
}

/* Gives a state the host's globals. It runs for the main state below,
** and, through conclua_on_state, in each new thread state (before the
** thread's function runs), threads started by threads included. */
static void add_host_api(lua_State *L, void *ud) {
  host *h = ud;
  lua_pushstring(L, h->name);
  lua_setglobal(L, "host_name");
  lua_pushlightuserdata(L, h);
  lua_pushcclosure(L, host_count, 1);
  lua_setglobal(L, "host_count");
}

static const char demo[] =
    "local ch = conc.channel()\n"
    "local ts = {}\n"
    "for i = 1, 4 do\n"
    "  ts[i] = spawn_thread(function(i)\n"
    "    host_count()\n"
    "    -- a thread of a thread has the host's functions too\n"
    "    spawn_thread(function() host_count() end):join()\n"
    "    ch:send(i * i)\n"
    "  end, i)\n"
    "end\n"
    "local sum = 0\n"
    "for _ = 1, 4 do sum = sum + ch:recv() end\n"
    "for _, t in ipairs(ts) do t:join() end\n"
    "local p = spawn_process(function() return host_name .. ' child' end)\n"
    "print(host_name .. ': sum ' .. sum .. ', calls ' .. host_count(0)"
    " .. ', ' .. p:join())\n";

/* The message handler: the error as a string, with a traceback. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL)
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Everything that may raise runs here, under lua_pcall (see main). */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  host *h = lua_touserdata(L, 3);
  int status, n = 0;
  luaL_openlibs(L);
  conclua_open(L);                    /* raises only when out of memory */
  conclua_on_state(L, add_host_api, h);
  add_host_api(L, h);
  lua_pushcfunction(L, msghandler);
  if (argc > 1) {
    status = luaL_loadfile(L, argv[1]);
    lua_createtable(L, argc, 0);      /* arg, as the lua command makes it */
    for (int i = 0; i < argc; i++) {
      lua_pushstring(L, argv[i]);
      lua_rawseti(L, -2, i - 1);
    }
    lua_setglobal(L, "arg");
    for (int i = 2; i < argc && status == LUA_OK; i++, n++)
      lua_pushstring(L, argv[i]);
  } else {
    status = luaL_loadbuffer(L, demo, sizeof demo - 1, "=demo");
  }
  if (status == LUA_OK) status = lua_pcall(L, n, 0, -(n + 2));
  if (status != LUA_OK) {
    fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
    fflush(stderr);
  }
  lua_pushboolean(L, status == LUA_OK);
  return 1;
}

int main(int argc, char **argv) {
  host h = {"host", 0};
  int ok, failed;
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", argv[0]);
    return EXIT_FAILURE;
  }
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  lua_pushlightuserdata(L, &h);
  ok = lua_pcall(L, 3, 1, 0) == LUA_OK && lua_toboolean(L, -1);
  if (!ok && !lua_isboolean(L, -1))
    fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
  /* Waits for the threads and processes the script left running (and
  ** prints the errors of those that failed and were never joined).
  ** lua_close would wait too; calling it first gives the count. */
  failed = conclua_wait(L);
  lua_close(L);
  return ok && failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
