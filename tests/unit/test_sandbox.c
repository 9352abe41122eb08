/*
 * The sandbox: what policy code can reach (every escape fails, with its file:line), the
 * run-time limit (a watchdog stops loops, also loops warm enough that LuaJIT would have
 * compiled them, and pcall cannot save them), the memory cap (a memory error, the state
 * usable afterwards), and the per-entry cost against a plain lua_pcall.
 */
// ctest-labels: tsan
#include "sandbox.h"
#include "test.h"

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#define MS     INT64_C(1000000)
#define SECOND (1000 * MS)
#define TICK   (2 * MS)

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* The median of n values (sorts them). */
static int64_t median_ns(int64_t *v, int n) {
    qsort(v, (size_t)n, sizeof(*v), cmp_i64);
    return v[n / 2];
}

/* Writes `code` as NAME in the test directory and runs it as a policy chunk; on success
 * leaves its first result on the stack.  Returns the rsl__sandbox_pcall code, the message
 * (if any) in msg. */
static int run_file(lua_State *L, const char *name, const char *code, int64_t limit, char *msg,
                    size_t msglen) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", rsl_test_tmpdir(), name);
    rsl_test_write(rsl_test_tmpdir(), name, code);
    int rc = rsl__sandbox_loadfile(L, path);
    if (rc == 0) {
        rc = rsl__sandbox_pcall(L, 0, 1, limit);
    }
    if (msg) {
        msg[0] = 0;
    }
    if (rc != 0) {
        if (msg) {
            snprintf(msg, msglen, "%s", lua_tostring(L, -1));
        }
        lua_pop(L, 1);
    }
    return rc;
}

/* The expected message: "DIR/NAME:LINE: text". */
static void expect_error(lua_State *L, const char *code, const char *text) {
    char msg[512], want[512];
    int rc = run_file(L, "e.lua", code, 0, msg, sizeof(msg));
    if (rc == 0) {
        rsl_test_fail(__FILE__, __LINE__, "%s: expected an error, it ran", code);
    }
    snprintf(want, sizeof(want), "%s/e.lua:1: %s", rsl_test_tmpdir(), text);
    if (strcmp(msg, want) != 0) {
        rsl_test_fail(__FILE__, __LINE__, "%s:\n  got  %s\n  want %s", code, msg, want);
    }
}

TEST(escapes_fail) {
    lua_State *L = rsl__sandbox_new(16 << 20, NULL);
    ASSERT(L);
    static const struct {
        const char *code, *error;
    } cases[] = {
        {"io.open('/etc/passwd')", "attempt to index global 'io' (a nil value)"},
        {"os.execute('true')", "attempt to call field 'execute' (a nil value)"},
        {"os.getenv('HOME')", "attempt to call field 'getenv' (a nil value)"},
        {"os.exit(1)", "attempt to call field 'exit' (a nil value)"},
        {"os.remove('/tmp/x')", "attempt to call field 'remove' (a nil value)"},
        {"load('return 1')", "attempt to call global 'load' (a nil value)"},
        {"loadstring('return 1')", "attempt to call global 'loadstring' (a nil value)"},
        {"dofile('/etc/passwd')", "attempt to call global 'dofile' (a nil value)"},
        {"loadfile('/etc/passwd')", "attempt to call global 'loadfile' (a nil value)"},
        {"require 'ffi'", "module \"ffi\" is not available in policies"},
        {"require 'jit'", "module \"jit\" is not available in policies"},
        {"require 'io'", "module \"io\" is not available in policies"},
        {"require 'debug'", "module \"debug\" is not available in policies"},
        {"require 'string'", "module \"string\" is not available in policies"},
        {"string.dump(function() end)", "attempt to call field 'dump' (a nil value)"},
        {"local s = '' return s.dump(function() end)",
         "attempt to call field 'dump' (a nil value)"},
        {"getmetatable('').__index.x = 1", "attempt to call global 'getmetatable' (a nil value)"},
        {"setmetatable({}, {})", "attempt to call global 'setmetatable' (a nil value)"},
        {"rawset({}, 1, 1)", "attempt to call global 'rawset' (a nil value)"},
        {"rawget({}, 1)", "attempt to call global 'rawget' (a nil value)"},
        {"setfenv(1, {})", "attempt to call global 'setfenv' (a nil value)"},
        {"getfenv(1)", "attempt to call global 'getfenv' (a nil value)"},
        {"_G.x = 1", "attempt to index global '_G' (a nil value)"},
        {"collectgarbage()", "attempt to call global 'collectgarbage' (a nil value)"},
        {"coroutine.create(print)", "attempt to index global 'coroutine' (a nil value)"},
        {"newproxy(true)", "attempt to call global 'newproxy' (a nil value)"},
        {"debug.getinfo(1)", "attempt to index global 'debug' (a nil value)"},
        {"jit.off()", "attempt to index global 'jit' (a nil value)"},
        {"ffi.C.system('true')", "attempt to index global 'ffi' (a nil value)"},
        {"module('x')", "attempt to call global 'module' (a nil value)"},
        {"package.loaded.x = 1", "attempt to index global 'package' (a nil value)"},
        {"print('x')", "attempt to call global 'print' (a nil value)"},
        {"string.x = 1", "cannot set \"x\": string is read-only"},
        {"string.rep = nil", "cannot set \"rep\": string is read-only"},
        {"math.pi = 3", "cannot set \"pi\": math is read-only"},
        {"table.insert = nil", "cannot set \"insert\": table is read-only"},
        {"os.time = nil", "cannot set \"time\": os is read-only"},
        {"x = 1", "assignment to undeclared global \"x\""},
        {"pairs = nil", "assignment to undeclared global \"pairs\""},
        {"string = {}", "assignment to undeclared global \"string\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        expect_error(L, cases[i].code, cases[i].error);
        ASSERT_EQ(lua_gettop(L), 0);
    }
    /* A precompiled chunk is refused: LuaJIT does not verify bytecode. */
    char msg[512];
    ASSERT(run_file(L, "b.lua", "\033LJ\002\000garbage", 0, msg, sizeof(msg)) != 0);
    ASSERT_CONTAINS(msg, "attempt to load chunk with wrong mode");
    rsl__sandbox_free(L);
}

TEST(allowed_library_works) {
    lua_State *L = rsl__sandbox_new(16 << 20, NULL);
    char msg[512];
    int rc =
        run_file(L, "ok.lua",
                 "local s = string.format('%d-%s', 4, ('ab'):rep(2)) .. table.concat({1, 2}, ',')\n"
                 "local n = 0 for _ in pairs({a = 1, b = 2}) do n = n + 1 end\n"
                 "for _, v in ipairs({5, 6}) do n = n + v end\n"
                 "local ok, e = pcall(error, 'boom', 0)\n"
                 "assert = nil\n",
                 0, msg, sizeof(msg));
    /* `assert` is not in the list either: assigning it is assigning an undeclared global. */
    ASSERT(rc != 0);
    ASSERT_CONTAINS(msg, "ok.lua:5: assignment to undeclared global \"assert\"");
    rc = run_file(
        L, "ok2.lua",
        "local s = string.format('%d-%s', 4, ('ab'):rep(2)) .. table.concat({1, 2}, ',')\n"
        "local n = 0 for _ in pairs({a = 1, b = 2}) do n = n + 1 end\n"
        "for _, v in ipairs({5, 6}) do n = n + v end\n"
        "local ok, e = pcall(error, 'boom', 0)\n"
        "local t = os.time() > 0 and os.clock() >= 0\n"
        "return s .. '|' .. n .. '|' .. tostring(ok) .. e .. '|' .. type(t) .. '|' ..\n"
        "  select('#', 1, 2, 3) .. '|' .. tonumber('7') .. '|' .. unpack({'u'}) .. '|' ..\n"
        "  math.floor(2.5) .. '|' .. tostring(undeclared_global == nil)\n",
        0, msg, sizeof(msg));
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "%s", msg);
    }
    ASSERT_STR_EQ(lua_tostring(L, -1), "4-abab1,2|13|falseboom|boolean|3|7|u|2|true");
    lua_pop(L, 1);
    rsl__sandbox_free(L);
}

TEST(module_locals_persist_and_envs_are_separate) {
    lua_State *L = rsl__sandbox_new(16 << 20, NULL);
    /* A file that counts its calls in a module-level local, and scribbles on its proxies
     * the only way left (table.insert writes raw). */
    ASSERT_EQ(run_file(L, "a.lua",
                       "local n = 0\n"
                       "table.insert(math, 'tampered')\n"
                       "return function() n = n + 1 return n end\n",
                       0, NULL, 0),
              0);
    for (int i = 1; i <= 3; i++) {
        lua_pushvalue(L, -1);
        ASSERT_EQ(rsl__sandbox_pcall(L, 0, 1, 0), 0);
        ASSERT_EQ(lua_tointeger(L, -1), i);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    /* Another file does not see what the first did to its own `math`. */
    ASSERT_EQ(run_file(L, "b.lua", "return tostring(math[1])", 0, NULL, 0), 0);
    ASSERT_STR_EQ(lua_tostring(L, -1), "nil");
    lua_pop(L, 1);
    /* require "resilua" is a read-only proxy of the loaded module. */
    ASSERT_EQ(luaL_dostring(L, "package.loaded.resilua = { answer = 42 }"), 0);
    ASSERT_EQ(run_file(L, "c.lua", "local r = require 'resilua' return r.answer", 0, NULL, 0), 0);
    ASSERT_EQ(lua_tointeger(L, -1), 42);
    lua_pop(L, 1);
    char msg[512];
    ASSERT(run_file(L, "d.lua", "local r = require 'resilua'\nr.answer = 1", 0, msg, sizeof(msg)) !=
           0);
    ASSERT_CONTAINS(msg, "d.lua:2: cannot set \"answer\": resilua is read-only");
    ASSERT_EQ(lua_gettop(L), 0);
    rsl__sandbox_free(L);
}

/* ---- time limits ------------------------------------------------------------------------ */

static const char *loop_file = "local function loop(n)\n"
                               "  local i = 0\n"
                               "  while n == 0 or i < n do i = i + 1 end\n"
                               "  return i\n"
                               "end\n"
                               "return loop\n";

/* Calls the function at the top with increasing bounds, far past LuaJIT's hot-loop
 * threshold (56 iterations): a JIT-enabled state would have compiled the loop. */
static void warm(lua_State *L, int (*pcall)(lua_State *L)) {
    for (int k = 1; k <= 300; k++) {
        lua_pushvalue(L, -1);
        lua_pushinteger(L, k * 100);
        ASSERT_EQ(pcall(L), 0);
        ASSERT_EQ(lua_tointeger(L, -1), k * 100);
        lua_pop(L, 1);
    }
}

static int sandbox_call1(lua_State *L) {
    return rsl__sandbox_pcall(L, 1, 1, 0);
}

static int plain_call1(lua_State *L) {
    return lua_pcall(L, 1, 1, 0);
}

/* [-0, +0] Number of traces compiled in L (through the state's own jit.util). */
static int traces(lua_State *L) {
    ASSERT_EQ(
        luaL_dostring(L, "local n = 0 while require('jit.util').traceinfo(n + 1) do n = n + 1 end "
                         "return n"),
        0);
    int n = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return n;
}

/* The premise: in a plain JIT-enabled state the same warm-up compiles the loop. */
TEST(control_plain_state_compiles_the_loop) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    ASSERT_EQ(luaL_loadstring(L, loop_file), 0);
    ASSERT_EQ(lua_pcall(L, 0, 1, 0), 0);
    warm(L, plain_call1);
    ASSERT(traces(L) >= 1);
    lua_close(L);
}

static void raise_hook(lua_State *L, lua_Debug *ar) {
    luaL_error(L, "hooked");
}

/* CPU time of a thread (the compiled loop's cost, whatever else the machine runs). */
static int64_t cpu_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct arm_later {
    lua_State *L;
    clockid_t runner;    /* the CPU clock of the thread running the loop */
    int64_t cpu0;        /* its CPU time when the call began */
    int64_t after;       /* arm once it has spent this much CPU in the call */
    _Atomic int in_call; /* 1 while the call runs */
    _Atomic int go;      /* cpu0 is set: start watching */
    int64_t armed_at;    /* runner CPU spent in the call when the hook was in place */
    int armed_during;    /* the call was still running then */
} arm_later;

static void *arm_thread(void *p) {
    arm_later *a = p;
    while (!atomic_load(&a->go)) {
        usleep(200);
    }
    while (atomic_load(&a->in_call) && cpu_ns(a->runner) - a->cpu0 < a->after) {
        usleep(200);
    }
    lua_sethook(a->L, raise_hook, LUA_MASKCOUNT, 1);
    a->armed_at = cpu_ns(a->runner) - a->cpu0;
    a->armed_during = atomic_load(&a->in_call);
    return NULL;
}

/* ...and a count hook armed from another thread does not stop it while it runs compiled:
 * the call lasts until the loop ends, far past the moment the hook was armed.  Measured in
 * the thread's CPU time, so that a loaded machine descheduling it changes nothing; the
 * hook is armed once the call has spent 5 ms of CPU (retried if the arming thread got
 * there too late to tell: after the first quarter of the loop). */
TEST(control_count_hook_misses_a_compiled_loop) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    ASSERT_EQ(luaL_loadstring(L, loop_file), 0);
    ASSERT_EQ(lua_pcall(L, 0, 1, 0), 0);
    warm(L, plain_call1);
    clockid_t self;
    ASSERT_EQ(pthread_getcpuclockid(pthread_self(), &self), 0);
    /* Time 3e8 compiled iterations, then arm 5 ms (CPU) into a run of the same length. */
    lua_pushvalue(L, -1);
    lua_pushinteger(L, 300000000);
    int64_t c0 = cpu_ns(self);
    ASSERT_EQ(lua_pcall(L, 1, 1, 0), 0);
    int64_t full = cpu_ns(self) - c0;
    lua_pop(L, 1);
    ASSERT(full > 40 * MS); /* long enough to tell the two apart */
    int64_t took = 0, armed_at = 0;
    int rc = 0, tries = 0, valid = 0;
    for (; tries < 10 && !valid; tries++) {
        arm_later a = {.L = L, .runner = self, .after = 5 * MS};
        pthread_t th;
        ASSERT_EQ(pthread_create(&th, NULL, arm_thread, &a), 0);
        lua_pushvalue(L, -1);
        lua_pushinteger(L, 300000000);
        atomic_store(&a.in_call, 1);
        a.cpu0 = cpu_ns(self);
        atomic_store(&a.go, 1);
        rc = lua_pcall(L, 1, 1, 0);
        took = cpu_ns(self) - a.cpu0;
        atomic_store(&a.in_call, 0);
        pthread_join(th, NULL);
        lua_sethook(L, NULL, 0, 0); /* armed late or not: gone before the next try */
        lua_pop(L, 1);
        armed_at = a.armed_at;
        valid = a.armed_during && armed_at < full / 4;
    }
    printf("    compiled loop: %.1f ms CPU; with the hook armed after %.1f ms: %.1f ms (rc %d, "
           "%d tries)\n",
           full / 1e6, armed_at / 1e6, took / 1e6, rc, tries);
    if (!valid) {
        rsl_test_fail(__FILE__, __LINE__, "the hook was never armed early in the call");
    }
    ASSERT(took > full / 2);
    lua_close(L);
}

/* The sandbox: the same warm-up compiles nothing, and the watchdog stops the loop within
 * its limit plus a few ticks. */
static void stop_warm_loop(int engine_on) {
    rsl__watchdog *wd = rsl__watchdog_new(TICK);
    lua_State *L = rsl__sandbox_new(64 << 20, wd);
    if (engine_on) {
        /* Per-chunk no-JIT alone must hold even if the engine were on. */
        luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_ON);
    }
    ASSERT_EQ(run_file(L, "loop.lua", loop_file, 0, NULL, 0), 0);
    warm(L, sandbox_call1);
    ASSERT_EQ(traces(L), 0);
    const int64_t limit = 50 * MS;
    enum { RUNS = 5 };
    int64_t tooks[RUNS];
    for (int i = 0; i < RUNS; i++) {
        lua_pushvalue(L, -1);
        lua_pushinteger(L, 0); /* forever */
        int64_t t0 = now_ns();
        int rc = rsl__sandbox_pcall(L, 1, 1, limit);
        int64_t took = now_ns() - t0;
        printf("    stopped after %.1f ms (limit 50 ms, tick 2 ms): %s\n", took / 1e6,
               lua_tostring(L, -1));
        ASSERT_EQ(rc, RSL_SANDBOX_ELIMIT);
        ASSERT_CONTAINS(lua_tostring(L, -1), "loop.lua:3: run-time limit exceeded");
        lua_pop(L, 1);
        ASSERT(took >= limit);         /* never early */
        ASSERT(took < limit + SECOND); /* stopped at all: a descheduled test may overrun */
        tooks[i] = took;
    }
    /* 2 ticks by design; slack for a busy box, on the median so one stall cannot fail it */
    ASSERT(median_ns(tooks, RUNS) < limit + 5 * TICK + 20 * MS);
    /* The state is fine afterwards. */
    lua_pushvalue(L, -1);
    lua_pushinteger(L, 1000);
    ASSERT_EQ(rsl__sandbox_pcall(L, 1, 1, limit), 0);
    ASSERT_EQ(lua_tointeger(L, -1), 1000);
    lua_settop(L, 0);
    rsl__sandbox_free(L);
    rsl__watchdog_free(wd);
}

TEST(watchdog_stops_a_warm_loop) {
    stop_warm_loop(0);
}

TEST(watchdog_stops_a_warm_loop_even_with_the_engine_on) {
    stop_warm_loop(1);
}

TEST(pcall_cannot_save_a_runaway) {
    rsl__watchdog *wd = rsl__watchdog_new(TICK);
    lua_State *L = rsl__sandbox_new(64 << 20, wd);
    static const char *const bodies[] = {
        /* catch the limit and return as if nothing happened */
        "return function() local ok = pcall(function() while true do end end) return 'caught' "
        "end\n",
        /* catch it in a loop */
        "return function() while true do pcall(function() while true do end end) end end\n",
        /* a loop of failing pcalls: LuaJIT rewrites the hook mask after each one */
        "return function() while true do pcall(error, 'x') end end\n",
        /* nested */
        "return function() return pcall(pcall, function() while true do end end) end\n",
        /* inside a callback from C */
        "return function() table.sort({3, 2, 1}, function(a, b) while true do end end) end\n",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        ASSERT_EQ(run_file(L, "p.lua", bodies[i], 0, NULL, 0), 0);
        int64_t tooks[5];
        for (int k = 0; k < 5; k++) {
            lua_pushvalue(L, -1);
            int64_t t0 = now_ns();
            int rc = rsl__sandbox_pcall(L, 0, 1, 20 * MS);
            int64_t took = now_ns() - t0;
            if (rc != RSL_SANDBOX_ELIMIT) {
                rsl_test_fail(__FILE__, __LINE__, "case %zu: rc %d (%s)", i, rc,
                              lua_tostring(L, -1));
            }
            /* Stopped, and never early; the upper bound is generous: a descheduled test
             * overruns the limit without the watchdog being at fault. */
            if (took < 20 * MS || took >= 20 * MS + SECOND) {
                rsl_test_fail(__FILE__, __LINE__, "case %zu: stopped after %.1f ms", i, took / 1e6);
            }
            tooks[k] = took;
            lua_pop(L, 1);
        }
        /* On time, on the median of the five. */
        int64_t med = median_ns(tooks, 5);
        if (med >= 20 * MS + 5 * TICK + 20 * MS) {
            rsl_test_fail(__FILE__, __LINE__, "case %zu: median %.1f ms", i, med / 1e6);
        }
        lua_pop(L, 1);
    }
    ASSERT_EQ(lua_gettop(L), 0);
    rsl__sandbox_free(L);
    rsl__watchdog_free(wd);
}

/* Busy for `ms` of CPU under `limit`, then the same function without a limit, which must
 * never see a hook.  Returns the first call's code. */
static int limited_then_free(lua_State *L, double ms, int64_t limit, int i) {
    lua_pushvalue(L, -1);
    lua_pushnumber(L, ms);
    int rc = rsl__sandbox_pcall(L, 1, 1, limit);
    ASSERT(rc == 0 || rc == RSL_SANDBOX_ELIMIT);
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushnumber(L, 0);
    int rc2 = rsl__sandbox_pcall(L, 1, 1, 0);
    if (rc2 != 0) {
        rsl_test_fail(__FILE__, __LINE__, "call %d after a limited one failed: %s", i,
                      lua_tostring(L, -1));
    }
    ASSERT_STR_EQ(lua_tostring(L, -1), "done");
    lua_pop(L, 1);
    return rc;
}

/* Calls that end right around their limit: a hook armed as a call returns must not leak
 * into the next call (the exit path and the watchdog's arming race on purpose here). */
TEST(no_stale_hook_across_calls) {
    rsl__watchdog *wd = rsl__watchdog_new(MS);
    lua_State *L = rsl__sandbox_new(64 << 20, wd);
    ASSERT_EQ(run_file(L, "s.lua",
                       "return function(ms) local t = os.clock() + ms / 1000\n"
                       "  while os.clock() < t do end return 'done' end\n",
                       0, NULL, 0),
              0);
    int stopped = 0, done = 0;
    for (int i = 0; i < 300; i++) {
        /* Busy for 2..4 ms against a 3 ms limit (on a loaded machine all may be stopped:
         * the limit is wall-clock time, the busy loop CPU time). */
        int rc = limited_then_free(L, 2 + (i % 3), 3 * MS, i);
        stopped += rc != 0;
        done += rc == 0;
    }
    printf("    around the limit: %d stopped, %d finished\n", stopped, done);
    /* Both exits for sure: a call far under its limit (no work, 2 s) and one far over it
     * (it would run for days), each followed by the unlimited call. */
    ASSERT_EQ(limited_then_free(L, 0, 2 * SECOND, -1), 0);
    done++;
    ASSERT_EQ(limited_then_free(L, 1e9, 3 * MS, -2), RSL_SANDBOX_ELIMIT);
    stopped++;
    ASSERT(stopped > 0);
    ASSERT(done > 0);
    rsl__sandbox_free(L);
    rsl__watchdog_free(wd);
}

TEST(no_watchdog_no_limit) {
    lua_State *L = rsl__sandbox_new(64 << 20, NULL);
    ASSERT_EQ(run_file(L, "loop.lua", loop_file, 0, NULL, 0), 0);
    lua_pushvalue(L, -1);
    lua_pushinteger(L, 1000000);
    ASSERT_EQ(rsl__sandbox_pcall(L, 1, 1, 1), 0); /* a 1 ns limit nobody enforces */
    lua_settop(L, 0);
    rsl__sandbox_free(L);
}

/* ---- memory ------------------------------------------------------------------------------- */

TEST(memory_cap) {
    const size_t cap = 8 << 20;
    lua_State *L = rsl__sandbox_new(cap, NULL);
    ASSERT_EQ(rsl__sandbox_mem_limit(L), cap);
    size_t base = rsl__sandbox_mem(L);
    ASSERT_EQ(
        run_file(
            L, "m.lua",
            "local function hog() local t = {}\n"
            "  while true do t[#t + 1] = string.rep('x', 4096) .. #t end end\n"
            "return { hog = hog,\n"
            "  caught = function() return pcall(hog) end,\n"
            "  small = function() local t = {} for i = 1, 100 do t[i] = i end return #t end }\n",
            0, NULL, 0),
        0);
    static const char *const fns[] = {"hog", "caught"};
    for (int i = 0; i < 2; i++) {
        lua_getfield(L, -1, fns[i]);
        int rc = rsl__sandbox_pcall(L, 0, 1, 0);
        ASSERT_EQ(rc, LUA_ERRMEM);
        ASSERT_STR_EQ(lua_tostring(L, -1), "not enough memory");
        lua_pop(L, 1);
        /* Under the cap again (the sandbox collected), close to where it started. */
        lua_gc(L, LUA_GCCOLLECT, 0);
        ASSERT(rsl__sandbox_mem(L) < cap);
        ASSERT(rsl__sandbox_mem(L) < base + (256 << 10));
        /* And usable. */
        lua_getfield(L, -1, "small");
        ASSERT_EQ(rsl__sandbox_pcall(L, 0, 1, 0), 0);
        ASSERT_EQ(lua_tointeger(L, -1), 100);
        lua_pop(L, 1);
    }
    /* C pushes outside a call are never refused, even past the cap. */
    lua_pushlstring(L, "", 0);
    for (int i = 0; i < 3; i++) {
        lua_newuserdata(L, cap);
    }
    ASSERT(rsl__sandbox_mem(L) > cap);
    lua_settop(L, 0);
    rsl__sandbox_free(L);
}

/* ---- cost ----------------------------------------------------------------------------- */

/* Median ns per call of rsl__sandbox_pcall on an empty function vs a plain lua_pcall. */
TEST(pcall_overhead) {
    rsl__watchdog *wd = rsl__watchdog_new(0);
    lua_State *L = rsl__sandbox_new(64 << 20, wd);
    ASSERT_EQ(run_file(L, "e.lua", "return function() end", 0, NULL, 0), 0);
    enum { N = 200000, RUNS = 9 };
    int64_t plain[RUNS], sbx[RUNS];
    for (int r = 0; r < RUNS; r++) {
        int64_t t0 = now_ns();
        for (int i = 0; i < N; i++) {
            lua_pushvalue(L, -1);
            lua_pcall(L, 0, 0, 0);
        }
        int64_t t1 = now_ns();
        for (int i = 0; i < N; i++) {
            lua_pushvalue(L, -1);
            rsl__sandbox_pcall(L, 0, 0, 50 * MS);
        }
        int64_t t2 = now_ns();
        plain[r] = t1 - t0;
        sbx[r] = t2 - t1;
    }
    qsort(plain, RUNS, sizeof(int64_t), cmp_i64);
    qsort(sbx, RUNS, sizeof(int64_t), cmp_i64);
    printf(
        "    empty function: lua_pcall %.1f ns, rsl__sandbox_pcall %.1f ns (median of %d x %d)\n",
        (double)plain[RUNS / 2] / N, (double)sbx[RUNS / 2] / N, RUNS, N);
    ASSERT_EQ(lua_gettop(L), 1);
    lua_settop(L, 0);
    rsl__sandbox_free(L);
    rsl__watchdog_free(wd);
}
