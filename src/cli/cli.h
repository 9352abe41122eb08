/*
 * cli -- what the CLI's commands share (main.c, policy_test.c, simulate.c): a client of
 * resilua.h only, like any embedder.
 *
 * Layer: the CLI, the top.
 */
#ifndef RSL_CLI_H
#define RSL_CLI_H

#include <stdint.h>

struct lua_State;

/* The commands beside main.c's. */
int rsl_cli_test(int argc, char **argv);     /* policy_test.c */
int rsl_cli_simulate(int argc, char **argv); /* simulate.c */

/* "300ms", "1.5s", "10m", "250us", "2h" in ns; -1 when it is not such a duration. */
int64_t rsl_cli_duration(const char *s);

/* A Lua state for a file the user wrote (tests, scenarios): base, string, table and
 * math, nothing that reads files or loads code; debug.getinfo is left on the stack for
 * the caller's prelude (the global `debug` is gone).  NULL when out of memory. */
struct lua_State *rsl_cli_lua_state(void);

#endif
