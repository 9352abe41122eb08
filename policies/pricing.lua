-- pricing.lua -- retries with backoff and a budget, and fault injection to test them.
--
-- What it shows:
--   * `fault` (chaos for testing a policy): this step answers 5xx on 30% of attempts;
--   * `retry`: up to 3 tries on a 5xx with exponential, jittered backoff, within a retry
--     budget (retries are at most 20% of first attempts over 10 s, plus a small floor) so
--     a failing upstream never sees a retry storm;
--   * the policy deadline: every step gets min(its own timeout, what is left).
--   * no route(): the chain is always primary -> cache -> unavailable.
--
-- Try:
--   resilua call -n 20 pricing.quote sku=A100      # watch "attempts" in the path
local r = require "resilua"

r.breaker "pricing-api" {
  window = "30s", buckets = 10,
  min_calls = 10,
  failure_rate = 60,
  open_for = "2s",
  probes = 2,
}

local function pricing_service(req)
  return { status = 200, body = '{"sku":"' .. req.sku .. '","price":"19.99","currency":"EUR"}' }
end

r.policy "pricing.quote" {
  deadline = "400ms",
  steps = {
    primary = r.lua {
      run = pricing_service,
      guards = { "pricing-api" },
      timeout = "100ms",
      retry = { attempts = 3, backoff = "exponential", base = "10ms", max = "80ms",
                jitter = "full", on = { "5xx", "timeout" }, budget = 0.2 },
      fault = { abort = "5xx", abort_percent = 30 },
    },
    cache = r.local_cache { key = "quote:${sku}", ttl = "30s", max_entries = 1000 },
    unavailable = r.stub { status = 503, body = "pricing is unavailable, try again later" },
  },
  chain = { "primary", "cache", "unavailable" },
}
