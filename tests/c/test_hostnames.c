/*
** test_hostnames.c
** A host that defines functions of its own named like common internals
** (bump, fd_close, msg_alloc: names a runtime might well use) links
** against libconclua and runs: every global of the library is public
** (conclua_*, luaopen_conc) or carries the reserved conc_ prefix. The
** Makefile links this file twice, against libconclua.a (test_hostnames)
** and against libconclua.so.0 (test_hostnames_so).
*/

#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#include "conclua.h"
#include "runner.h"

/* The host's own: they must be the ones its calls reach. */
int bump(int x);
int fd_close(int fd);
void *msg_alloc(size_t n);

int bump(int x) { return x + 1; }
int fd_close(int fd) { return fd * 2; }
void *msg_alloc(size_t n) { return calloc(1, n + 7); }

static int t_host_names_are_the_hosts(void) {
  void *p = msg_alloc(1);
  CHECK(bump(41) == 42);
  CHECK(fd_close(21) == 42);
  CHECK(p != NULL);
  free(p);
  return 0;
}

/* The runtime works beside them: a thread, a channel, a process. */
static int t_runtime_works_beside_them(void) {
  lua_State *L = luaL_newstate();
  const char *chunk =
      "local ch = conc.channel(1)\n"
      "local t = spawn_thread(function() ch:send(6 * 7) end)\n"
      "t:join()\n"
      "local p = spawn_process(function(x) return x + 1 end, ch:recv())\n"
      "return p:join()\n";
  CHECK(L != NULL);
  luaL_openlibs(L);
  conclua_open(L);
  if (luaL_dostring(L, chunk) != LUA_OK) FAIL("%s", lua_tostring(L, -1));
  CHECK(lua_tointeger(L, -1) == 43);
  CHECK(conclua_wait(L) == 0);
  lua_close(L);
  return 0;
}

static const tcase cases[] = {
    {"host_names_are_the_hosts", t_host_names_are_the_hosts, 10},
    {"runtime_works_beside_them", t_runtime_works_beside_them, 30},
    {0}};

int main(int argc, char **argv) {
  return run_cases(cases, argc, argv);
}
