-- storefront.lua -- product pages from a real HTTP upstream, degraded by business rule.
--
-- This is the policy the demo (scripts/demo.sh) serves with `resilua serve`: the
-- upstream is examples/flaky on 127.0.0.1:9000, which the demo starts and then breaks
-- for a stretch.  What it shows:
--   * r.http behind a bulkhead and a circuit breaker, with a retry that has a budget
--     (retries are at most 20% of first attempts: an outage never becomes a storm);
--   * VIP customers keep real data: the last good answer of each product is written
--     through to a local cache whenever the upstream answers, and served from it while
--     the upstream fails or the breaker is open;
--   * free users get the static page instead, at once when the breaker is open, and
--     above 80% of the upstream's concurrency they skip it, so the remaining capacity
--     goes to VIP customers;
--   * a 4xx from the upstream (no such product) is returned as is, never masked.
--
-- Try, with `build/example_flaky --listen 127.0.0.1:9000` and `resilua serve` running:
--   curl -i 'localhost:8700/products/42?tier=vip'
--   curl -i 'localhost:8700/call/storefront.product?id=42&tier=free'
--   curl -X POST 'localhost:9000/_control?fail=100'    # the upstream now fails: watch
--   curl -s localhost:8700/state                        # the breaker open, VIP on cache
local r = require "resilua"

-- Trips at 50% failures once it has seen 10 calls in the last 2 s; open for 1 s, then
-- one probe.  Each failed probe doubles the open period (at most 4 s), so a long outage
-- costs the upstream one probe every few seconds, and recovery is seen within 4 s.
r.breaker "products-api" {
  window = "2s", buckets = 4,
  min_calls = 10,
  failure_rate = 50,
  slow_call = "150ms", slow_rate = 80,
  open_for = "1s",
  backoff = { factor = 2, max = "4s", jitter = 0.1 },
  probes = 1,
  count = { "timeout", "connect", "5xx" },
}
-- At most 32 requests in flight to the upstream from this process.
r.bulkhead "products-conc" { max = 32 }

-- GET /products/42?tier=vip runs storefront.product with id=42, tier=vip.
r.expose { ["GET /products/:id"] = "storefront.product" }

local VIP = { "primary", "cache", "stub" } -- real data as long as there is any
local FREE = { "primary", "stub" }
local STUB = { "stub" }

r.policy "storefront.product" {
  deadline = "400ms",
  steps = {
    primary = r.http {
      url = "http://127.0.0.1:9000/products/${id}",
      timeout = "200ms",
      guards = { "products-conc", "products-api" },
      retry = { attempts = 2, backoff = "exponential", base = "10ms", max = "50ms",
                jitter = "full", on = { "connect", "5xx" }, budget = 0.2 },
    },
    -- Written through, off the request path, whenever the primary answered ok.
    cache = r.local_cache { key = "product:${id}", ttl = "10m", max_entries = 10000 },
    -- Still a 200, but X-Resilua-Degraded: 1 tells the caller it is the static page.
    stub = r.stub { status = 200, body = '{"name":"Product","price":null,"note":"prices are temporarily unavailable"}' },
  },
  chain = { "primary", "cache", "stub" }, -- used when route() fails
  route = function(req, sig)
    if req.tier == "vip" then
      return VIP
    end
    -- Free users: straight to the static page while the breaker is open (no point in
    -- being rejected first), and when the upstream is near its concurrency limit.
    if sig.state("products-api") == "open" or sig.load("products-conc") >= 0.8 then
      return STUB
    end
    return FREE
  end,
}
