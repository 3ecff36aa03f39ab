/*
** conclua.h
** The public C API of conclua: Lua 5.4 with threads and processes.
**
** A host that made its own lua_State (and called luaL_openlibs) calls
** conclua_open to give it spawn_thread, spawn_process, conc and the stdlib
** searcher; conclua_wait before lua_close to wait for the workers.
** Every function here is safe to call outside lua_pcall except
** conclua_open, which raises like lua_error (call it under lua_pcall).
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
** the stdlib searcher to L, and binds L to a runtime of its own. Returns 0;
** raises (like lua_error) on failure. Calling it twice on a state is a
** no-op. */
CONCLUA_API int conclua_open(lua_State *L);

/* A hook that runs in every new state the runtime of L creates for a
** thread worker (nested ones too), after its libraries are open and before
** the worker's function runs, so workers see the host's C functions.
** 'ud' is passed back untouched; the hook must not raise. */
typedef void (*conclua_hook)(lua_State *L, void *ud);
CONCLUA_API void conclua_on_state(lua_State *L, conclua_hook hook, void *ud);

/* Waits for every non-daemon thread and process spawned by L's runtime.
** Returns how many of them failed without being joined; their errors and
** tracebacks have been written to stderr. Returns 0 if L has no runtime. */
CONCLUA_API int conclua_wait(lua_State *L);

/* The entry point of the C module conc.so (require "conc" from lua5.4). */
CONCLUA_API int luaopen_conc(lua_State *L);

#endif
