-- LuaRocks: `luarocks make` in this folder builds conc.so for the stock
-- lua5.4 from the same sources as the conclua command and installs it
-- with the stdlib modules (conc.pool), and conc.mpi when pkg-config finds
-- an MPI (Debian: libopenmpi-dev), so that require "conc", require
-- "conc.pool" and require "conc.mpi" work from lua5.4
-- (docs/getting-started.md, docs/mpi.md).
rockspec_format = "3.0"
package = "conclua"
version = "dev-1"
-- luarocks make builds this checkout; nothing is fetched
source = {
  url = "file://.",
}
description = {
  summary = "Lua 5.4 with real threads, processes, channels and pools",
  detailed = [[
spawn_thread runs a function on an OS thread with a Lua state of its own
(threads run Lua in parallel, no global lock); spawn_process runs it in a
forked child that talks back through a pipe. Channels, select, pipes,
queues, locks, shared tables and pools (conc.pool) connect them.]],
  labels = {"concurrency", "threads", "multiprocessing"},
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
supported_platforms = {"linux"}
build = {
  type = "make",
  build_target = "rock",
  install_target = "rock-install",
  build_variables = {
    LUA_INCDIR = "$(LUA_INCDIR)",
  },
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
  },
}
