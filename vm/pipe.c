#include "internal.h"
const kindinfo pipe_kind = {"conc.pipe", "pipe", 0, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
int pipe_new(lua_State *L) { return luaL_error(L, "todo"); }
