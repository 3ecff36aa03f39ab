#include "internal.h"
const kindinfo queue_kind = {"conc.queue", "queue", 1, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
int queue_new(lua_State *L) { return luaL_error(L, "todo"); }
