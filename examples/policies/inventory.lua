-- The policy examples/threaded.c runs: a host C step (the program's own backend, which
-- answers from another thread) behind a breaker, with a local cache for VIP callers and a
-- stub for everyone else when the backend fails.
local r = require "resilua"

r.breaker "inventory-db" {
  window = "10s", buckets = 10, min_calls = 20, failure_rate = 50,
  open_for = "200ms", backoff = { factor = 2, max = "2s", jitter = 0.1 },
}

local VIP  = { "backend", "cache", "stub" }   -- built once: no table per call
local FREE = { "backend", "stub" }

r.policy "inventory.stock" {
  deadline = "500ms",
  steps = {
    backend = r.c { name = "stock_lookup", timeout = "100ms", guards = { "inventory-db" } },
    cache   = r.local_cache { key = "stock:${sku}", ttl = "1m" },
    stub    = r.stub { status = 200, body = '{"stock":"unknown"}' },
  },
  chain = { "backend", "stub" },
  route = function(req, sig)
    if req.tier == "vip" then return VIP end
    return FREE
  end,
}
