/*
** repl.c
** The interactive loop of the conclua command.
**
** A line that is an expression prints its values; a statement runs
** silently; an incomplete chunk asks for more lines (the second prompt)
** until it compiles. Input comes through GNU readline when stdin is a
** terminal, plain fgets otherwise.
*/

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "internal.h"

int conclua_docall(lua_State *L, int narg, int nres);

#define MAXINPUT 512

static const char *get_prompt(lua_State *L, int first) {
  const char *p;
  if (lua_getglobal(L, first ? "_PROMPT" : "_PROMPT2") == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushstring(L, first ? "> " : ">> ");
    return lua_tostring(L, -1);
  }
  p = luaL_tolstring(L, -1, NULL);
  lua_remove(L, -2);
  return p;                      /* stays on the stack until popped */
}

/* Reads a line into a new string on the stack; 0 at end of input. */
static int pushline(lua_State *L, int first) {
  int tty = isatty(0);
  const char *prmt = get_prompt(L, first);
  char *line;
  size_t l;
  if (tty) {
    line = readline(prmt);
  } else {
    char buf[MAXINPUT];
    line = fgets(buf, sizeof buf, stdin) ? strdup(buf) : NULL;
  }
  lua_pop(L, 1);                 /* the prompt */
  if (line == NULL) return 0;
  l = strlen(line);
  if (l > 0 && line[l - 1] == '\n') line[--l] = '\0';
  lua_pushlstring(L, line, l);
  free(line);
  return 1;
}

static int incomplete(lua_State *L, int status) {
  if (status == LUA_ERRSYNTAX) {
    size_t lmsg;
    const char *msg = lua_tolstring(L, -1, &lmsg);
    const char *eof = "<eof>";
    size_t le = strlen(eof);
    if (lmsg >= le && strcmp(msg + lmsg - le, eof) == 0) {
      lua_pop(L, 1);
      return 1;
    }
  }
  return 0;
}

/* Tries the line as "return <line>", to print an expression's values. */
static int addreturn(lua_State *L) {
  const char *line = lua_tostring(L, -1);
  const char *retline = lua_pushfstring(L, "return %s;", line);
  int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
  if (status == LUA_OK) {
    lua_remove(L, -2);
    if (line[0] != '\0' && isatty(0)) add_history(line);
  } else {
    lua_pop(L, 2);
  }
  return status;
}

static int multiline(lua_State *L) {
  for (;;) {
    size_t len;
    const char *line = lua_tolstring(L, 1, &len);
    int status = luaL_loadbuffer(L, line, len, "=stdin");
    if (!incomplete(L, status) || !pushline(L, 0)) {
      if (isatty(0) && line[0]) add_history(line);
      return status;
    }
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
}

/* Reads a whole chunk and compiles it: its status, function on top. */
static int loadline(lua_State *L) {
  int status;
  lua_settop(L, 0);
  if (!pushline(L, 1)) return -1;
  if ((status = addreturn(L)) != LUA_OK) status = multiline(L);
  lua_remove(L, 1);
  return status;
}

static void print_results(lua_State *L) {
  int n = lua_gettop(L);
  if (n > 0) {
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    lua_getglobal(L, "print");
    lua_insert(L, 1);
    if (lua_pcall(L, n, 0, 0) != LUA_OK)
      fprintf(stderr, "conclua: error calling 'print' (%s)\n",
              lua_tostring(L, -1));
  }
}

int conclua_repl(lua_State *L) {
  int status;
  while ((status = loadline(L)) != -1) {
    if (status == LUA_OK) status = conclua_docall(L, 0, LUA_MULTRET);
    if (status == LUA_OK) {
      print_results(L);
    } else {
      const char *msg = lua_tostring(L, -1);
      fprintf(stderr, "conclua: %s\n", msg ? msg : "(error object)");
      fflush(stderr);
      lua_pop(L, 1);
    }
  }
  lua_settop(L, 0);
  fputc('\n', stdout);
  fflush(stdout);
  return 0;
}
