/*
 * cli -- the CLI's shared helpers (cli.h).
 *
 * Layer: the CLI.
 */
#include "cli.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

int64_t rsl_cli_duration(const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v >= 0)) {
        return -1;
    }
    static const struct {
        const char *u;
        double ns;
    } units[] = {{"us", 1e3}, {"ms", 1e6}, {"s", 1e9}, {"m", 60e9}, {"h", 3600e9}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].u) == 0) {
            return (int64_t)(v * units[i].ns);
        }
    }
    return -1;
}

struct lua_State *rsl_cli_lua_state(void) {
    lua_State *L = luaL_newstate();
    if (!L) {
        return NULL;
    }
    static const luaL_Reg libs[] = {{"", luaopen_base},
                                    {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_DBLIBNAME, luaopen_debug}};
    for (size_t i = 0; i < sizeof(libs) / sizeof(libs[0]); i++) {
        lua_pushcfunction(L, libs[i].func);
        lua_pushstring(L, libs[i].name);
        lua_call(L, 1, 0);
    }
    lua_getglobal(L, "debug");
    lua_getfield(L, -1, "getinfo");
    lua_remove(L, -2);
    lua_pushnil(L);
    lua_setglobal(L, "debug");
    static const char *const gone[] = {"dofile", "loadfile", "load", "loadstring", "require",
                                       "module", "collectgarbage", "getfenv", "setfenv"};
    for (size_t i = 0; i < sizeof(gone) / sizeof(gone[0]); i++) {
        lua_pushnil(L);
        lua_setglobal(L, gone[i]);
    }
    return L;
}
