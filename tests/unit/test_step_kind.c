/* test_step_kind.c -- a step kind added the way a new one is (step.h): its ops with their
 * own declaration (RSL_STEP_OTHER), handed to the loader in a step table, with no change to
 * the DSL, the loader, the chain or the runtime.  The kind, r.echo { text = "..." },
 * answers 200 with its text. */
#include "test.h"

#include "call.h"
#include "policy_int.h"
#include "steps.h"

#include <jansson.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- the kind, as its step_echo.c would hold it ----------------------------------------- */

static const char *const echo_fields[] = {"text", NULL};

static int echo_parse(lua_State *L, rsl__step *s, char *err, size_t errlen) {
    lua_getfield(L, -1, "text");
    int ok = lua_type(L, -1) == LUA_TSTRING;
    lua_pop(L, 1);
    if (!ok) {
        snprintf(err, errlen, "text must be a string");
        return -1;
    }
    s->u.other = rsl__decl_str(L, "text", NULL);
    return s->u.other ? 0 : -1;
}

static void echo_free(rsl__step *s) {
    free(s->u.other);
}

static void echo_describe(const rsl__step *s, json_t *o) {
    json_object_set_new(o, "text", json_string(s->u.other));
}

static int echo_start(rsl__call *c, const rsl__step *s, int64_t now) {
    const char *t = s->u.other;
    c->ans.status = 200;
    c->ans.outcome = RSL_OUTCOME_OK;
    rsl__buf_append(&c->ans.body, t, strlen(t));
    return 1;
}

static const rsl__step_ops echo = {
    .name = "echo",
    .kind = RSL_STEP_OTHER,
    .fields = echo_fields,
    .parse = echo_parse,
    .free = echo_free,
    .describe = echo_describe,
    .start = echo_start,
};

/* ---- the table with it: the runtime's kinds and one line more --------------------------- */

static const rsl__step_ops *table[16];

static rsl__gen_opts opts(void) {
    int n = 0;
    for (const rsl__step_ops *const *k = rsl__step_ops_table; *k; k++) {
        table[n++] = *k;
    }
    table[n++] = &echo;
    table[n] = NULL;
    rsl__gen_opts o = {.nstates = 1, .mem_limit = 32 << 20, .stripes = 1, .step_ops = table};
    return o;
}

static const char *dir_with(const char *text) {
    static char dir[512];
    static int n;
    snprintf(dir, sizeof(dir), "%s/d%d", rsl_test_tmpdir(), n++);
    mkdir(dir, 0700);
    rsl_test_write(dir, "a.lua", text);
    return dir;
}

#define HEAD "local r = require 'resilua'\n"

TEST(new_kind_loads_describes_and_runs) {
    rsl__gen_opts o = opts();
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = NULL;
    char err[1024] = "";
    const char *dir = dir_with(HEAD "r.policy 'p' {\n"
                                    "  steps = { e = r.echo { text = 'hello', timeout = '1s' },\n"
                                    "            s = r.stub {} },\n"
                                    "  chain = { 'e', 's' } }\n");
    int rc = rsl__gen_load(dir, reg, &o, &g, NULL, err, sizeof(err));
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "load: %s", err);
    }
    rsl__policy *p = rsl__gen_policy(g, "p");
    ASSERT(p);
    rsl__step *e = &p->steps[rsl__policy_step(p, "e", 1)];
    ASSERT_EQ(e->kind, RSL_STEP_OTHER);
    ASSERT(e->ops == &echo);
    ASSERT_STR_EQ(e->u.other, "hello");
    ASSERT_EQ(e->timeout_ns, RSL_NS_PER_S); /* the common fields are the loader's */
    rsl__step *s = &p->steps[rsl__policy_step(p, "s", 1)];
    ASSERT(s->ops == &rsl__step_stub);

    json_t *d = rsl__gen_describe(g);
    char *js = json_dumps(d, JSON_COMPACT);
    ASSERT_CONTAINS(js, "\"name\":\"e\",\"kind\":\"echo\"");
    ASSERT_CONTAINS(js, "\"text\":\"hello\"");
    free(js);
    json_decref(d);

    /* The chain runs it through its ops, as every kind: start answers at once. */
    rsl__call *c = calloc(1, sizeof(*c));
    ASSERT(c);
    ASSERT_EQ(e->ops->start(c, e, 0), 1);
    ASSERT_EQ(c->ans.status, 200);
    ASSERT_STR_EQ(c->ans.body.p, "hello");
    rsl__answer_free(&c->ans);
    free(c);
    rsl__gen_free(g);
    rsl__guards_free(reg);
}

static void expect_error(int line, const char *text, const char *want) {
    rsl__gen_opts o = opts();
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = NULL;
    char err[1024] = "";
    const char *dir = dir_with(text);
    int rc = rsl__gen_load(dir, reg, &o, &g, NULL, err, sizeof(err));
    char exp[1024];
    snprintf(exp, sizeof(exp), "%s/a.lua:%s", dir, want);
    if (rc != RSL_ELOAD || strcmp(err, exp) != 0) {
        rsl_test_fail(__FILE__, line, "rc %d\n  got  %s\n  want %s", rc, err, exp);
    }
    ASSERT(g == NULL);
    rsl__guards_free(reg);
}

TEST(new_kind_errors_name_the_step_line) {
    /* Its reader refuses a value: file:line of the step. */
    expect_error(__LINE__,
                 HEAD "r.policy 'p' {\n"
                      "  steps = {\n"
                      "    e = r.echo { text = 5 } } }\n",
                 "4: policy \"p\": step \"e\": text must be a string");
    /* The DSL refuses a field the kind does not take, as for every kind. */
    expect_error(__LINE__,
                 HEAD "r.policy 'p' { steps = { e = r.echo { txt = 'x' } } }\n",
                 "2: policy \"p\": step \"e\": unknown field \"txt\"");
}

TEST(without_the_kind_in_the_table_there_is_no_constructor) {
    rsl__gen_opts o = {.nstates = 1, .mem_limit = 32 << 20, .stripes = 1,
                       .step_ops = rsl__step_ops_table};
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = NULL;
    char err[1024] = "";
    const char *dir = dir_with(HEAD "r.policy 'p' { steps = { e = r.echo { text = 'x' } } }\n");
    ASSERT_EQ(rsl__gen_load(dir, reg, &o, &g, NULL, err, sizeof(err)), RSL_ELOAD);
    ASSERT_CONTAINS(err, "echo");
    rsl__guards_free(reg);
}
