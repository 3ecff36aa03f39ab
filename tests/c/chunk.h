/*
** chunk.h
** Lua code run from a C test case (runner.h): a chunk that raises fails
** the case, with the error and its traceback.
*/

#ifndef conclua_test_chunk_h
#define conclua_test_chunk_h

#include <lauxlib.h>
#include <lua.h>

#include "runner.h"

static inline int chunk_traceback(lua_State *L) {
  luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
  return 1;
}

/* Runs code in L and drops what it returns; a Lua error fails the case. */
static inline void run(lua_State *L, const char *code) {
  int base = lua_gettop(L);
  lua_pushcfunction(L, chunk_traceback);
  if (luaL_loadstring(L, code) != LUA_OK ||
      lua_pcall(L, 0, 0, base + 1) != LUA_OK)
    FAIL("lua error: %s", lua_tostring(L, -1));
  lua_settop(L, base);
}

#endif
