#!/usr/bin/env bash
# The shipped policies/ behave as the README and the demo say: the catalog breaker trips
# and recovers over `-n 40 --interval 100ms`, VIP keeps the cache while free users get the
# stub, a bad id is a 4xx returned as is; search answers and rejects a missing query;
# pricing retries injected faults.
source "$(dirname "$0")/lib.sh"
P=$RSL_SOURCE_DIR/policies
REJ='(lambda r: entry(r, "primary")["outcome"] == "rejected")'

t "catalog, VIP, 40 calls 100ms apart: trip, cache while open, recover"
run call -p "$P" -n 40 --interval 100ms catalog.product id=42 tier=vip
expect_rc 0
expect_json 'len(R) == 40 and all(r["outcome"] == "ok" and r["status"] == 200 for r in R)'
expect_json 'all(path(r) == "primary=ok" and not r["degraded"] for r in R[:5])' "calls 1-5 from the upstream"
expect_json 'all(path(r) == "primary=5xx,cache=ok" and r["degraded"] for r in R[5:10])' "calls 6-10: upstream 5xx, served from the cache"
expect_json 'R[5]["body"] == R[4]["body"]' "the cache holds the last good answer"
expect_json "first($REJ) == 10" "the breaker trips after call 10 (5 of 10 failed)"
expect_json "all(path(r) == 'primary=rejected,cache=ok' for r in R if $REJ(r))" "rejected calls are served by the cache"
# Calls are at least 100 ms apart, so the 1 s open period holds at most about 10 of them;
# a loaded machine spaces them further apart (fewer), never closer.
expect_json "1 <= sum(1 for r in R if $REJ(r)) <= 14" "open for at most about 1 s"
expect_json "first(lambda r: path(r) == 'primary=ok', first($REJ)) is not None" "recovers: primary ok after the rejections"
expect_json 'all(path(r) == "primary=ok" for r in R[-5:])' "closed at the end"
ok

t "catalog, free tier, same outage: the stub, never the cache"
run call -p "$P" -n 40 --interval 100ms catalog.product id=42 tier=free
expect_rc 0
expect_json 'all("cache" not in steps(r) for r in R)'
expect_json 'all(path(r) == "primary=5xx,stub=ok" for r in R[5:10])'
expect_json "all(path(r) == 'primary=rejected,stub=ok' and r['degraded'] for r in R if $REJ(r))"
expect_json "first($REJ) is not None and first(lambda r: path(r) == 'primary=ok', first($REJ)) is not None"
ok

t "catalog: fail=1 degrades to the stub; a bad id is a 4xx as is"
run call -p "$P" catalog.product id=42 fail=1
expect_rc 0
expect_json 'path(R[0]) == "primary=5xx,stub=ok" and R[0]["served_by"] == "stub" and R[0]["degraded"]'
run call -p "$P" catalog.product id=abc tier=vip
expect_rc 1
expect_json 'R[0]["outcome"] == "4xx" and R[0]["status"] == 400 and path(R[0]) == "primary=4xx"'
ok

t "search: results, and a missing query is a 400 returned as is"
run call -p "$P" search.query q=shoes
expect_rc 0
expect_json 'R[0]["served_by"] == "primary" and "running shoes" in R[0]["body"]'
run call -p "$P" search.query
expect_rc 1
expect_json 'R[0]["status"] == 400 and steps(R[0]) == ["primary"]'
ok

t "pricing: injected 5xx are retried (attempts > 1), every call answers"
run call -p "$P" -n 40 pricing.quote sku=A100
[ "$rc" -le 1 ] || fail "exit $rc"
expect_json 'len(R) == 40 and all(r["outcome"] in ("ok", "5xx") for r in R)'
expect_json 'any(entry(r, "primary")["attempts"] > 1 for r in R)' "some call was retried"
expect_json 'all(entry(r, "primary")["attempts"] <= 3 for r in R)' "never more than attempts = 3"
ok

done_all
