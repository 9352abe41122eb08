-- catalog.lua -- a product page in front of a flaky catalog service.
--
-- What it shows:
--   * a circuit breaker with small numbers, so `resilua call -n 40 --interval 100ms`
--     watches it trip and recover within a few seconds;
--   * business-aware degradation: VIP customers keep the last good answer (a local cache,
--     written through whenever the primary answers ok), free users get a static page;
--   * a 4xx (a business error: no such product, bad request) returned as is, never masked
--     by a fallback.
--
-- Try:
--   resilua call catalog.product id=42 tier=vip
--   resilua call catalog.product id=42 fail=1                 # upstream 5xx -> stub
--   resilua call -n 40 --interval 100ms catalog.product id=42 tier=vip
local r = require "resilua"

-- One breaker per upstream.  Small numbers for the demo: a verdict after 5 calls, trips
-- at 50% failures over the last 10 s, stays open 1 s, then lets one probe through.  A
-- failed probe re-opens it for twice as long (2 s, 4 s, ... at most 8 s).
r.breaker "catalog-api" {
  window = "10s", buckets = 10,
  min_calls = 5,
  failure_rate = 50,
  slow_call = "500ms", slow_rate = 80,
  open_for = "1s",
  backoff = { factor = 2, max = "8s", jitter = 0.1 },
  probes = 1,
  count = { "timeout", "connect", "5xx", "error" },
}

-- The simulated upstream.  Module-level locals live across the calls one worker runs
-- (`resilua call` runs one worker), so this counter scripts an outage: calls 6 to 10
-- that reach the upstream fail with a 5xx, every other call succeeds.  `fail=1` makes any
-- call fail.  Calls the breaker rejects never get here, so they do not move the counter.
local calls = 0
local OUTAGE_FROM, OUTAGE_TO = 6, 10

local function catalog_service(req)
  calls = calls + 1
  if req.fail == "1" or (calls >= OUTAGE_FROM and calls <= OUTAGE_TO) then
    return nil, "5xx"
  end
  if not req.id or not req.id:match("^%d+$") then
    return { status = 400, body = '{"error":"id must be a number"}' }
  end
  return {
    status = 200,
    headers = { ["content-type"] = "application/json" },
    body = string.format('{"id":%s,"name":"Product %s","price":%d.99,"upstream_call":%d}',
                         req.id, req.id, 10 + tonumber(req.id) % 90, calls),
  }
end

-- Paths, built once: route() returns one of them, no table per call.
local VIP  = { "primary", "cache", "stub" }
local FREE = { "primary", "stub" }

r.policy "catalog.product" {
  deadline = "300ms",
  steps = {
    primary = r.lua { run = catalog_service, guards = { "catalog-api" } },
    -- Written through whenever an earlier step of the same call answered ok.
    cache = r.local_cache { key = "product:${id}", ttl = "10m", max_entries = 10000 },
    -- The static page: still a 200, but `degraded` tells the caller it is not the real one.
    stub = r.stub { status = 200, body = '{"name":"Product","price":null,"note":"prices are temporarily unavailable"}' },
  },
  chain = { "primary", "cache", "stub" }, -- used when route() fails
  route = function(req, sig)
    if req.tier == "vip" then
      return VIP
    end
    return FREE
  end,
}
