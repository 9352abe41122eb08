/* Templates: parse, expand, URL-encode, missing attributes. */
#include "test.h"
#include "req.h"
#include "tmpl.h"

static rsl__tmpl *parse(const char *s) {
    char err[128];
    rsl__tmpl *t = rsl__tmpl_parse(s, strlen(s), err, sizeof(err));
    ASSERT(t != NULL);
    return t;
}

TEST(literal_and_attrs) {
    rsl_req *r = rsl_req_new();
    rsl_req_set(r, "id", "42", 2);
    rsl_req_set(r, "tier", "vip", 3);
    rsl__tmpl *t = parse("user:${id}:${tier}!");
    ASSERT(!rsl__tmpl_is_literal(t));
    rsl__buf b = {0};
    ASSERT_EQ(rsl__tmpl_expand(t, r, 0, &b, NULL), 0);
    ASSERT_STR_EQ(b.p, "user:42:vip!");
    rsl__tmpl_free(t);
    t = parse("plain");
    ASSERT(rsl__tmpl_is_literal(t));
    b.len = 0;
    ASSERT_EQ(rsl__tmpl_expand(t, r, 0, &b, NULL), 0);
    ASSERT_STR_EQ(b.p, "plain");
    rsl__tmpl_free(t);
    rsl__buf_free(&b);
    rsl_req_free(r);
}

TEST(urlencode) {
    rsl_req *r = rsl_req_new();
    rsl_req_set(r, "q", "a b/c?d=é&~", strlen("a b/c?d=é&~"));
    rsl__tmpl *t = parse("/s?q=${q}");
    rsl__buf b = {0};
    ASSERT_EQ(rsl__tmpl_expand(t, r, 1, &b, NULL), 0);
    ASSERT_STR_EQ(b.p, "/s?q=a%20b%2Fc%3Fd%3D%C3%A9%26~");
    rsl__tmpl_free(t);
    rsl__buf_free(&b);
    rsl_req_free(r);
}

TEST(missing_attribute_is_named) {
    rsl_req *r = rsl_req_new();
    rsl__tmpl *t = parse("k:${id}");
    rsl__buf b = {0};
    const char *missing = NULL;
    ASSERT_EQ(rsl__tmpl_expand(t, r, 0, &b, &missing), RSL_EINVAL);
    ASSERT_STR_EQ(missing, "id");
    rsl__tmpl_free(t);
    rsl__buf_free(&b);
    rsl_req_free(r);
}

TEST(malformed) {
    char err[128];
    ASSERT(rsl__tmpl_parse("a${b", 4, err, sizeof(err)) == NULL);
    ASSERT_CONTAINS(err, "unclosed");
    ASSERT(rsl__tmpl_parse("a${}", 4, err, sizeof(err)) == NULL);
    ASSERT_CONTAINS(err, "empty");
}

TEST(request_copy) {
    rsl_req *r = rsl_req_new();
    rsl_req_set(r, "a", "1", 1);
    rsl_req_set(r, "a", "22", 2);
    rsl_req_set_body(r, "xyz", 3);
    rsl_req *c = rsl__req_dup(r);
    rsl_req_free(r);
    size_t n;
    ASSERT_STR_EQ(rsl_req_get(c, "a", &n), "22");
    ASSERT_EQ(n, 2);
    ASSERT_EQ(c->body_len, 3);
    ASSERT(memcmp(c->body, "xyz", 3) == 0);
    ASSERT(rsl_req_set(c, "b", "x", 1) == RSL_EINVAL); /* a frozen copy */
    rsl_req_free(c);
}
