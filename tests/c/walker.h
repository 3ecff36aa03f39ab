/*
** tests/c/walker.h
** A Lua function, as source, that walks decoded values without running
** any of them: shared by the marshaller's C tests and the decoder's fuzz
** target, which both check that whatever decodes can be traversed.
*/

#ifndef CONCLUA_TEST_WALKER_H
#define CONCLUA_TEST_WALKER_H

/* Walks decoded values without running any of them: tables (keys,
** values, metatables) and the upvalues of functions, each once. Returns
** how many values it met. */
static const char WALKER_LUA[] =
    "local gm, gu = debug.getmetatable, debug.getupvalue\n"
    "return function(...)\n"
    "  local seen, todo, n = {}, table.pack(...), 0\n"
    "  local i = todo.n\n"
    "  while i > 0 do\n"
    "    local v = todo[i]\n"
    "    todo[i] = nil\n"
    "    i = i - 1\n"
    "    n = n + 1\n"
    "    local t = type(v)\n"
    "    if (t == 'table' or t == 'function') and not seen[v] then\n"
    "      seen[v] = true\n"
    "      if t == 'table' then\n"
    "        for k, x in next, v do\n"
    "          todo[i + 1], todo[i + 2] = k, x\n"
    "          i = i + 2\n"
    "        end\n"
    "        local mt = gm(v)\n"
    "        if mt then i = i + 1 todo[i] = mt end\n"
    "      else\n"
    "        for u = 1, 255 do\n"
    "          local name, x = gu(v, u)\n"
    "          if name == nil then break end\n"
    "          i = i + 1 todo[i] = x\n"
    "        end\n"
    "      end\n"
    "    elseif t == 'string' then\n"
    "      n = n + #v % 2\n"
    "    end\n"
    "  end\n"
    "  return n\n"
    "end\n";

#endif
