/*
** conclua.h
** The public C API of conclua: Lua 5.4 with threads and processes.
**
** A host that made its own lua_State (and called luaL_openlibs) calls
** conclua_open to give it spawn_thread, spawn_process, conc and the stdlib
** searcher, conclua_on_state to give the thread states it spawns its own
** C functions, and conclua_wait before lua_close to learn how many
** workers failed unnoticed. lua_close waits for the workers too.
** conclua_open raises only when out of memory: call it under lua_pcall,
** like luaL_openlibs. The other functions never raise. See
** docs/embedding.md, with a complete host program.
*/

#ifndef conclua_h
#define conclua_h

#include <lua.h>

#if defined(__GNUC__)
#define CONCLUA_API __attribute__((visibility("default")))
#else
#define CONCLUA_API
#endif

#define CONCLUA_VERSION_MAJOR 0
#define CONCLUA_VERSION_MINOR 1
#define CONCLUA_VERSION_PATCH 0
#define CONCLUA_VERSION "conclua 0.1.0"

/* Adds spawn_thread, spawn_process, conc (also package.loaded.conc) and
** the stdlib searcher to L, and binds L to a runtime of its own (one per
** state: two states have two independent runtimes). Returns 0, or raises
** like lua_error, which happens only on a memory error: call it under
** lua_pcall. A failed call can be retried; on a state that has a runtime
** it does nothing. Closing L (lua_close) waits for the non-daemon workers,
** stops the daemons and frees the runtime once no worker uses it. */
CONCLUA_API int conclua_open(lua_State *L);

/* Registers a hook that runs in every new state the runtime of L creates
** for a thread (threads of threads too), on that thread, after the
** standard libraries and conc are open and before the thread's function
** runs, so workers can call the host's C functions (set them as globals).
** Hooks run in the order registered, with an empty stack; 'ud' is passed
** back untouched and may be used by several threads at once. A hook may
** raise: the thread fails with that error. No hook runs once lua_close(L)
** returned. Processes started with start = "spawn" run a fresh conclua
** executable: hooks cannot run there. Does nothing if L has no runtime
** (conclua_open not called) or hook is NULL. Never raises. */
typedef void (*conclua_hook)(lua_State *L, void *ud);
CONCLUA_API void conclua_on_state(lua_State *L, conclua_hook hook, void *ud);

/* Waits for every non-daemon thread and process spawned by L's runtime.
** Returns how many of them failed without being joined; their errors and
** tracebacks have been written to stderr, once (unjoined daemons that
** failed are printed too, not counted). Returns 0 if L has no runtime.
** Never raises. */
CONCLUA_API int conclua_wait(lua_State *L);

/* The entry point of the C module conc.so (require "conc" from lua5.4). */
CONCLUA_API int luaopen_conc(lua_State *L);

#endif
