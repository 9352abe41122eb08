/*
 * sandbox -- the Lua states policies run in: a capped allocator, an allow-listed
 * environment, and run-time limits that also stop loops LuaJIT has compiled.
 *
 * Layer: Lua, above the base: the policies load into sandboxed states.
 *
 * Limits.  LuaJIT's count hook never fires inside a compiled trace, so an instruction
 * count cannot stop `while true do end` once it is hot, and an armed count hook sends every
 * interpreted bytecode through the hook dispatch.  So: the JIT engine is off for the whole
 * state, and policy chunks are also loaded with the JIT off for the chunk and every
 * function it defines (luaJIT_setmode LUAJIT_MODE_ALLFUNC; the interpreter is still fast),
 * no hook is armed while policy code runs, and a watchdog thread arms a count hook
 * asynchronously (as luajit.c does from its SIGINT handler) on a state whose current entry
 * has run past its limit.  The hook then raises on every instruction until the protected
 * call that armed the limit returns, so policy code cannot catch the limit with pcall and
 * carry on.  A call stuck inside one C function (a huge string.rep, a pathological
 * pattern) is stopped only when it returns to Lua.  Cost on the hot path: one release
 * store on entry, one seq_cst store and two loads on exit (about 5 ns).
 *
 * Environment: each policy file runs in its own environment table whose reads fall
 * through to a frozen, allow-listed base (string, table, math, pairs, ipairs, type,
 * tostring, tonumber, pcall, error, select, unpack, os.time, os.clock, require "resilua"
 * -- tables as read-only proxies made per environment); assigning an undeclared global
 * raises.  `pcall` there rethrows the limit and memory errors.
 *
 * Threads: a state and everything on it belong to one thread (its worker); the watchdog
 * only reads the entry counters and arms the hook.
 */
#ifndef RSL_SANDBOX_H
#define RSL_SANDBOX_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

/* The watchdog: one thread per runtime, ticking every `tick_ns` (default 2 ms). */
typedef struct rsl__watchdog rsl__watchdog;
rsl__watchdog *rsl__watchdog_new(int64_t tick_ns);
void rsl__watchdog_free(rsl__watchdog *wd); /* joins the thread; states must be removed */

/* A new state with an allocator capped at mem_limit bytes (0: no cap; the cap applies while
 * rsl__sandbox_pcall runs, so C code pushing values outside it is never refused), standard
 * libraries opened (for the DSL's own use, not for policies; string.dump removed), watched
 * by `wd` (may be NULL: no time limits). */
lua_State *rsl__sandbox_new(size_t mem_limit, rsl__watchdog *wd);
void rsl__sandbox_free(lua_State *L); /* NULL is a no-op */
size_t rsl__sandbox_mem(lua_State *L); /* bytes in use */
size_t rsl__sandbox_mem_limit(lua_State *L);

/* [-0, +1] Pushes a new policy environment (see above). */
void rsl__sandbox_push_env(lua_State *L);

/* [-0, +1] Loads the file `path` as a policy chunk in a new environment, JIT off for the
 * chunk and all its functions; chunk name "@path" so errors read "path:line: ...".
 * Returns 0 and pushes the chunk, or a LUA_ERR* code and pushes the message. */
int rsl__sandbox_loadfile(lua_State *L, const char *path);

/* Returned by rsl__sandbox_pcall when the run-time limit stopped the call. */
#define RSL_SANDBOX_ELIMIT 100

/*
 * [-(nargs + 1), +(nresults | 1)] lua_pcall with a run-time limit (<= 0: none; a nested call
 * runs under the outermost call's limit) and a
 * traceback-free error message: on success pushes nresults values and returns 0; on
 * failure pushes one message and returns a LUA_ERR* code, LUA_ERRMEM when the memory cap
 * was hit, or RSL_SANDBOX_ELIMIT when the limit stopped it.
 */
int rsl__sandbox_pcall(lua_State *L, int nargs, int nresults, int64_t limit_ns);

#endif
